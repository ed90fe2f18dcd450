//! What the daemon did, as typed values. Each event is logged once: as a
//! line for people (`--log-format text`, the default), or as one JSON
//! object per line (`--log-format json`) that carries the event itself
//! under `"event"`, so log pipelines and the integration tests read
//! `{"event": "applied", "generation": 7, ...}` instead of matching text.
//!
//! Other log lines (warnings, notices) stay free text in both formats; what
//! a caller needs to wait on or count belongs here.
use std::{
    fmt,
    io::Write as _,
    net::SocketAddr,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use tracing::Level;

/// How the daemon writes its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line; events carry their typed fields.
    Json,
}

static JSON: AtomicBool = AtomicBool::new(false);
static INIT: OnceLock<LogFormat> = OnceLock::new();

/// Install the log subscriber (once per process; later calls do nothing).
/// `ROUTERD_LOG` is an `EnvFilter` directive (default `info`).
pub fn init(format: LogFormat) {
    INIT.get_or_init(|| {
        use tracing_subscriber::EnvFilter;
        let filter =
            EnvFilter::try_from_env("ROUTERD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false);
        match format {
            LogFormat::Text => b
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init(),
            LogFormat::Json => {
                JSON.store(true, Ordering::Relaxed);
                b.json().flatten_event(true).init()
            }
        }
        format
    });
}

/// Where an apply's time went, in milliseconds: reading and parsing what
/// changed in the files, validating, compiling, writing the maps (and
/// moving listeners).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub read_ms: f64,
    pub validate_ms: f64,
    pub compile_ms: f64,
    pub write_ms: f64,
}

/// The outcome of one reload (or of the first apply at start-up).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Listening and routing; the first plan is applied.
    Ready {
        /// What happened to the pinned datapath: `loaded` (there was
        /// none), `adopted` (kept as it was), `replaced` (a different build).
        startup: String,
        compile_and_load_ms: f64,
        /// The L7 proxy and gateway listeners (`proxy:127.0.0.1:1000`).
        listeners: Vec<String>,
        fd_limit: u64,
    },
    /// A new plan serves (maps, proxy tables and names).
    Applied {
        /// What triggered it (`start-up`, `SIGHUP`, `config change`, ...).
        reason: String,
        generation: u64,
        services: usize,
        backends: usize,
        hosts: usize,
        added: usize,
        changed: usize,
        removed: usize,
        writes: usize,
        elapsed_ms: f64,
        /// Where the time went.
        #[serde(default)]
        phases: Phases,
    },
    /// The config compiled to the plan that already serves.
    NoChange {
        reason: String,
        generation: u64,
        /// How long finding that out took.
        #[serde(default)]
        elapsed_ms: f64,
    },
    /// The config was refused; the last good plan keeps serving. Each error
    /// names the file, the line and the resource.
    Rejected { reason: String, errors: Vec<String> },
    /// The new plan could not be written whole; the last good one was
    /// written back (`restored`) or could not be (the next reload retries).
    PartialWrite {
        reason: String,
        restored: bool,
        detail: String,
    },
    /// An active health check failed `threshold` times in a row.
    EndpointUnhealthy {
        endpoint: SocketAddr,
        policy: String,
        threshold: u32,
        last_error: String,
    },
    /// An active health check passed `threshold` times in a row.
    EndpointHealthy {
        endpoint: SocketAddr,
        policy: String,
        threshold: u32,
    },
    /// Outlier detection took an endpoint out.
    EndpointEjected {
        endpoint: SocketAddr,
        destination: String,
        for_ms: u64,
        why: String,
    },
    /// An ejection ended.
    EjectionOver { endpoint: SocketAddr },
    /// Clients' connections to endpoints that no longer take traffic were
    /// closed (`failed`: the kernel could not destroy some).
    ConnectionsClosed {
        endpoints: Vec<SocketAddr>,
        tcp: u64,
        udp: u64,
        failed: u64,
    },
    /// The daemon stopped; `removed`: the datapath (pinned in `dir`) went
    /// with it.
    Stopped { removed: bool, dir: String },
    /// A workload's listeners are open inside its network namespace and the
    /// kernel points its DNS and L7 connections there.
    WorkloadServed {
        /// `namespace/name`.
        workload: String,
        netns_cookie: u64,
        /// `dns:127.0.0.153:53`, `proxy:127.0.0.1:1000`.
        listeners: Vec<String>,
        /// From reading its record to the kernel pointing at the listeners.
        elapsed_ms: f64,
    },
    /// A workload's record went away (or changed): its listeners are closed.
    WorkloadForgotten { workload: String },
    /// A workload's record could not be served; the record stays and is
    /// tried again when it changes (or on SIGHUP).
    WorkloadFailed { workload: String, error: String },
}

impl Event {
    /// A refused config: `report` is the loader's or compiler's text (a
    /// summary line, then one line per problem).
    pub fn rejected(reason: &str, report: &str) -> Event {
        let mut lines = report.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default();
        let mut errors: Vec<String> = lines.map(str::to_string).collect();
        if errors.is_empty() {
            // A one-line report is the problem itself.
            errors.push(first.to_string());
        }
        Event::Rejected {
            reason: reason.to_string(),
            errors,
        }
    }

    pub fn level(&self) -> Level {
        match self {
            Event::Rejected { .. } => Level::ERROR,
            Event::PartialWrite {
                restored: false, ..
            } => Level::ERROR,
            Event::PartialWrite { .. }
            | Event::EndpointUnhealthy { .. }
            | Event::EndpointEjected { .. }
            | Event::WorkloadFailed { .. } => Level::WARN,
            Event::ConnectionsClosed { failed, .. } if *failed > 0 => Level::WARN,
            _ => Level::INFO,
        }
    }

    pub fn is_applied(&self) -> bool {
        matches!(self, Event::Applied { .. })
    }

    pub fn is_no_change(&self) -> bool {
        matches!(self, Event::NoChange { .. })
    }

    pub fn is_rejected(&self) -> bool {
        matches!(self, Event::Rejected { .. })
    }

    /// The errors of a rejected config (none for other events).
    pub fn errors(&self) -> &[String] {
        match self {
            Event::Rejected { errors, .. } => errors,
            _ => &[],
        }
    }

    /// Is this the outcome of a reload (what a caller of SIGHUP waits for)?
    pub fn is_outcome(&self) -> bool {
        matches!(
            self,
            Event::Applied { .. } | Event::NoChange { .. } | Event::Rejected { .. }
        )
    }

    /// Log it.
    pub fn emit(&self) {
        let level = self.level();
        if JSON.load(Ordering::Relaxed) {
            self.emit_json(level);
            return;
        }
        if let Event::Rejected { errors, .. } = self {
            // One line per problem (log pipelines split on lines), then
            // the verdict, so a reader of the verdict has seen them all.
            for e in errors {
                tracing::error!("{e}");
            }
        }
        match level {
            Level::ERROR => tracing::error!("{self}"),
            Level::WARN => tracing::warn!("{self}"),
            _ => tracing::info!("{self}"),
        }
    }

    fn emit_json(&self, level: Level) {
        let enabled = match level {
            Level::ERROR => tracing::enabled!(Level::ERROR),
            Level::WARN => tracing::enabled!(Level::WARN),
            _ => tracing::enabled!(Level::INFO),
        };
        if !enabled {
            return;
        }
        use tracing_subscriber::fmt::{format::Writer, time::FormatTime};
        let mut timestamp = String::new();
        let _ =
            tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut timestamp));
        let line = Line {
            timestamp,
            level: level.to_string(),
            message: self.to_string(),
            event: self.clone(),
        };
        if let Ok(mut text) = serde_json::to_string(&line) {
            text.push('\n');
            // One write per line: lines from other threads do not interleave.
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

/// One line of `--log-format json` (what [`Event::emit`] writes; other log
/// lines have the same `timestamp`, `level` and `message` and no `event`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Line {
    pub timestamp: String,
    pub level: String,
    pub message: String,
    #[serde(flatten)]
    pub event: Event,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Ready {
                startup,
                compile_and_load_ms,
                listeners,
                fd_limit,
            } => write!(
                f,
                "routerd ready (datapath {startup}, {compile_and_load_ms:.1} ms; L7 proxy on {listeners:?}; descriptor limit {fd_limit})"
            ),
            Event::Applied {
                reason,
                generation,
                services,
                backends,
                hosts,
                added,
                changed,
                removed,
                writes,
                elapsed_ms,
                phases,
            } => write!(
                f,
                "applied generation {generation} ({reason}): {hosts} hosts, {services} services, {backends} backends; \
                 {added} added, {changed} changed, {removed} removed; {writes} map writes in {elapsed_ms:.1} ms \
                 (read {:.1}, validate {:.1}, compile {:.1}, write {:.1})",
                phases.read_ms, phases.validate_ms, phases.compile_ms, phases.write_ms
            ),
            Event::NoChange {
                reason,
                generation,
                elapsed_ms,
            } => write!(
                f,
                "reload ({reason}): no change ({elapsed_ms:.1} ms); generation {generation} keeps serving"
            ),
            Event::Rejected { reason, errors } => write!(
                f,
                "reload rejected ({reason}, {} error(s)): the last good config keeps serving",
                errors.len()
            ),
            Event::PartialWrite {
                reason,
                restored: true,
                detail,
            } => write!(
                f,
                "the new plan ({reason}) could not be written whole ({detail}); the last good plan was written back"
            ),
            Event::PartialWrite {
                reason,
                restored: false,
                detail,
            } => write!(
                f,
                "the new plan ({reason}) could not be written whole, nor the last good one again ({detail}): \
                 some services may serve the new plan; the next reload retries"
            ),
            Event::EndpointUnhealthy {
                endpoint,
                policy,
                threshold,
                last_error,
            } => write!(
                f,
                "endpoint unhealthy: {endpoint}: {threshold} check(s) of {policy} failed in a row (last: {last_error})"
            ),
            Event::EndpointHealthy {
                endpoint,
                policy,
                threshold,
            } => write!(
                f,
                "endpoint healthy again: {endpoint}: {threshold} check(s) of {policy} passed in a row"
            ),
            Event::EndpointEjected {
                endpoint,
                destination,
                for_ms,
                why,
            } => write!(
                f,
                "endpoint ejected: {endpoint} of {destination} for {for_ms} ms: {why}"
            ),
            Event::EjectionOver { endpoint } => {
                write!(f, "ejection over: {endpoint} takes traffic again")
            }
            Event::ConnectionsClosed {
                endpoints,
                tcp,
                udp,
                failed: 0,
            } => write!(
                f,
                "closed connections to endpoints that no longer take traffic: {tcp} TCP, {udp} UDP ({endpoints:?})"
            ),
            Event::ConnectionsClosed {
                endpoints,
                tcp,
                udp,
                failed,
            } => write!(
                f,
                "closed connections to endpoints that no longer take traffic: {tcp} TCP, {udp} UDP; \
                 {failed} could not be closed (kernel without CONFIG_INET_DIAG_DESTROY?) ({endpoints:?})"
            ),
            Event::Stopped { removed: true, dir } => {
                write!(f, "stopped; datapath removed from {dir} (--cleanup)")
            }
            Event::Stopped {
                removed: false,
                dir,
            } => write!(
                f,
                "stopped; the datapath keeps routing from {dir} (run `routerd stop` to remove it)"
            ),
            Event::WorkloadServed {
                workload,
                netns_cookie,
                listeners,
                elapsed_ms,
            } => write!(
                f,
                "serving workload {workload} in its network namespace (cookie {netns_cookie}): \
                 {} in {elapsed_ms:.1} ms",
                listeners.join(", ")
            ),
            Event::WorkloadForgotten { workload } => {
                write!(f, "workload {workload} is gone: its listeners are closed")
            }
            Event::WorkloadFailed { workload, error } => write!(
                f,
                "cannot serve workload {workload}: {error} (its L4 VIPs still work; DNS capture \
                 and L7 VIPs do not there until its record is fixed)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_reads_back_as_the_event() {
        let e = Event::Rejected {
            reason: "SIGHUP".into(),
            errors: vec!["a.yaml:3:5: RouteTable t/x: unknown field `wieght`".into()],
        };
        let line = Line {
            timestamp: "now".into(),
            level: e.level().to_string(),
            message: e.to_string(),
            event: e.clone(),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains(r#""event":"rejected""#), "{text}");
        let back: Line = serde_json::from_str(&text).unwrap();
        assert_eq!(back.event, e);
        assert_eq!(back.level, "ERROR");
        assert!(e.is_outcome());
    }
}
