//! routerd as a library: everything lives here so that tests, benchmarks and
//! the thin `routerd` binary link the same code. See ARCHITECTURE.md.
pub mod cli;
pub mod compile;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dns;
pub mod events;
pub mod explain;
pub mod health;
pub mod inspect;
pub mod kvstore;
pub mod limits;
pub mod metrics;
pub mod netns;
pub mod par;
pub mod plan;
pub mod proxy;
pub mod reap;
pub mod report;
pub mod sockdiag;
pub mod state;
pub mod telemetry;
pub mod testing;
pub mod workload;
