//! The drills in reduced form (`cargo xtask drill` runs them in full): load
//! through VIPs while the config churns, the daemon is killed, an endpoint
//! dies, hostile configs arrive, configs outgrow the maps and endpoints
//! churn over hundreds of services. Each fails on
//! any failed or misrouted connection.
use router_tests::{drill::*, fleet, require_root};

fn run(f: DrillFn) {
    require_root();
    let figures = f(Scale::CI).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{}", markdown(&[figures]));
}

#[test]
fn reloads_under_churn_lose_nothing() {
    run(reload_churn);
}

#[test]
fn kill_9_and_restart_under_load_lose_nothing() {
    run(kill_restart);
}

#[test]
fn a_dead_endpoint_fails_over_within_the_bound() {
    run(endpoint_failover);
}

#[test]
fn hostile_configs_are_rejected_and_the_last_good_one_serves() {
    run(hostile_configs);
}

#[test]
fn configs_that_outgrow_the_maps_are_refused_whole() {
    run(size_limits);
}

#[test]
fn endpoint_churn_under_load_loses_nothing_and_keeps_up() {
    run(endpoint_churn);
}

#[test]
fn a_fleet_on_etcd_converges_through_failures_and_loses_nothing() {
    run(fleet::fleet);
}
