//! `routerd inspect`: read the pinned maps (no daemon needed): services, slot
//! tables, backends, counters. Names come from the daemon's last applied plan
//! (`<state-dir>/plan.json`) when it is there.
use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, path::Path};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{Maps, Pins, counters::Counters, meta_cgroup_path, monotonic_ns},
    plan::Proto,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendReport {
    pub id: u32,
    pub addr: SocketAddr,
    pub cluster: String,
    pub locality: String,
    pub slots: u32,
    pub connects: u64,
    pub datagrams: u64,
}

/// A backend whose handshakes the kernel watches (its destination has an
/// OutlierDetectionPolicy), whether or not a slot table names it now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchedReport {
    pub id: u32,
    pub addr: SocketAddr,
    /// Failed handshakes in a row that eject it.
    pub eject_after: u32,
    /// Failed handshakes since the last one that succeeded.
    pub fails_in_a_row: u32,
    /// Failed handshakes in all.
    pub failures: u64,
    /// Connects that found it ejected and went to another slot.
    pub ejected_skips: u64,
    /// Milliseconds the kernel's own ejection still runs; 0: not ejected.
    pub ejected_for_ms: u64,
    /// What the last failure was: "reset", "SYN timeout" or "".
    pub last_failure: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceReport {
    pub id: u32,
    pub vip: SocketAddr,
    pub proto: Proto,
    pub host: String,
    pub slots: u32,
    pub connects: u64,
    pub datagrams: u64,
    pub no_backend: u64,
    pub inconsistent: u64,
    pub backends: Vec<BackendReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub dir: String,
    pub cgroup: String,
    pub generation: u64,
    pub applied_unix_ms: u64,
    pub services: Vec<ServiceReport>,
    pub unknown_vip_refused: u64,
    pub revnat_failed: u64,
    pub dns_captured: u64,
    /// L7 connections refused: the daemon was down, or the caller's
    /// network namespace has no proxy listener.
    pub proxy_refused: u64,
    /// Connections handed to a daemon listener whose original destination
    /// could not be recorded.
    pub orig_failed: u64,
    pub watched: Vec<WatchedReport>,
    /// Endpoints the daemon keeps out of the slot tables, and why (its
    /// `health.json`).
    pub out_of_service: BTreeMap<SocketAddr, String>,
    /// Connects that found every probed slot ejected by the kernel.
    pub ejected_fallback: u64,
    /// Kernel ejections the daemon was not told of (ring buffer full).
    pub ejections_lost: u64,
    /// Where the node stands against etcd, when it follows it (`--store`).
    #[serde(default)]
    pub store: Option<crate::state::StoreStatus>,
}

pub fn read(pins: &Pins, state_dir: &Path) -> Result<Report> {
    let maps = Maps::open(pins)?;
    let meta = maps.read_meta()?;
    let c = Counters::read(&maps, true)?;
    let plan = crate::state::read_plan(state_dir);
    let clusters = plan.as_ref().map(|p| p.clusters()).unwrap_or_default();
    let localities = plan.as_ref().map(|p| p.localities()).unwrap_or_default();
    let hosts: BTreeMap<(SocketAddr, Proto), std::sync::Arc<str>> = plan
        .iter()
        .flat_map(|p| p.services.iter())
        .map(|s| ((SocketAddr::new(s.vip, s.port), s.proto), s.host.clone()))
        .collect();
    let name = |list: &Vec<String>, i: u16| {
        list.get(usize::from(i).wrapping_sub(1))
            .cloned()
            .unwrap_or_default()
    };
    let mut services: Vec<ServiceReport> = c
        .services
        .iter()
        .map(|s| ServiceReport {
            id: s.svc_id,
            vip: s.vip,
            proto: s.proto,
            host: hosts
                .get(&(s.vip, s.proto))
                .map_or_else(String::new, |h| h.to_string()),
            slots: s.slots,
            connects: s.connects,
            datagrams: s.datagrams,
            no_backend: s.no_backend,
            inconsistent: s.inconsistent,
            backends: s
                .backends
                .iter()
                .map(|b| BackendReport {
                    id: b.id,
                    addr: b.addr,
                    cluster: name(&clusters, b.backend.cluster_id),
                    locality: localities
                        .get(usize::from(b.backend.locality_id).wrapping_sub(1))
                        .map(|l| l.to_string())
                        .unwrap_or_default(),
                    slots: b.slots,
                    connects: b.connects,
                    datagrams: b.datagrams,
                })
                .collect(),
        })
        .collect();
    services.sort_by_key(|s| (s.host.clone(), s.vip, s.proto));
    let now = monotonic_ns();
    let watched = c
        .backends
        .values()
        .filter(|(b, _)| b.backend.eject_after != 0)
        .map(|(b, h)| WatchedReport {
            id: b.id,
            addr: b.addr,
            eject_after: b.backend.eject_after,
            fails_in_a_row: h.fails,
            failures: b.failures,
            ejected_skips: b.ejected_skips,
            ejected_for_ms: h.ejected_until.saturating_sub(now).div_ceil(1_000_000),
            last_failure: match h.last_reason as u8 {
                router_common::FAIL_RESET => "reset".into(),
                router_common::FAIL_SYN_TIMEOUT => "SYN timeout".into(),
                _ => String::new(),
            },
        })
        .collect();
    let g = &c.global;
    Ok(Report {
        dir: pins.dir().display().to_string(),
        cgroup: meta_cgroup_path(&meta),
        generation: meta.generation,
        applied_unix_ms: meta.applied_unix_ms,
        services,
        unknown_vip_refused: g.unknown_vip,
        revnat_failed: g.revnat_failed,
        dns_captured: g.dns_captured,
        proxy_refused: g.proxy_refused,
        orig_failed: g.orig_failed,
        watched,
        out_of_service: crate::state::read_health(state_dir),
        ejected_fallback: g.ejected_fallback,
        ejections_lost: g.ejections_lost,
        store: crate::state::read_store_status(state_dir),
    })
}

/// The node against etcd, in one line.
pub fn render_store(s: &crate::state::StoreStatus) -> String {
    format!(
        "config from {}: serving revision {} (store at {}); {}; {} objects, {} list(s){}",
        s.store,
        s.served_revision,
        s.store_revision,
        if !s.connected {
            format!(
                "NOT CONNECTED ({}): serving the last accepted config",
                s.error.as_deref().unwrap_or("connecting")
            )
        } else if s.pending > 0 {
            format!(
                "connected, {} key(s) received and not applied (refused? see the log)",
                s.pending
            )
        } else {
            "connected, up to date".to_string()
        },
        s.objects,
        s.lists,
        if s.from_snapshot {
            "; started from the local snapshot"
        } else {
            ""
        }
    )
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "datapath {} attached to cgroup {} (generation {})",
        r.dir, r.cgroup, r.generation
    );
    if let Some(s) = &r.store {
        let _ = writeln!(o, "{}", render_store(s));
    }
    let _ = writeln!(
        o,
        "{:<44} {:<30} {:>6} {:>9} {:>9} {:>10}",
        "SERVICE", "HOST", "SLOTS", "CONNECTS", "DGRAMS", "NO-BACKEND"
    );
    let _ = writeln!(
        o,
        "  -> BACKEND (connects and datagrams: the backend's totals over all services)"
    );
    for s in &r.services {
        let _ = writeln!(
            o,
            "{:<44} {:<30} {:>6} {:>9} {:>9} {:>10}",
            format!("{}/{}", s.vip, s.proto),
            s.host,
            s.slots,
            s.connects,
            s.datagrams,
            s.no_backend
        );
        for b in &s.backends {
            let _ = writeln!(
                o,
                "  -> {:<39} {:<30} {:>6} {:>9} {:>9}",
                b.addr.to_string(),
                format!("{} {}", b.cluster, b.locality),
                b.slots,
                b.connects,
                b.datagrams
            );
        }
    }
    let _ = writeln!(
        o,
        "refused (VIP range, no such service): {}",
        r.unknown_vip_refused
    );
    let _ = writeln!(o, "reverse translation not stored: {}", r.revnat_failed);
    let _ = writeln!(o, "DNS queries captured: {}", r.dns_captured);
    let _ = writeln!(
        o,
        "L7 connections refused (daemon down, or no proxy in the caller's namespace): {}",
        r.proxy_refused
    );
    if !r.watched.is_empty() {
        let _ = writeln!(
            o,
            "handshakes the kernel watches (outlier detection), per backend:"
        );
        let _ = writeln!(
            o,
            "  {:<39} {:>12} {:>9} {:>9} {:>8} {:<12} KERNEL-EJECTED",
            "BACKEND", "EJECT-AFTER", "IN-A-ROW", "FAILURES", "SKIPPED", "LAST"
        );
        for w in &r.watched {
            let _ = writeln!(
                o,
                "  {:<39} {:>12} {:>9} {:>9} {:>8} {:<12} {}",
                w.addr.to_string(),
                w.eject_after,
                w.fails_in_a_row,
                w.failures,
                w.ejected_skips,
                if w.last_failure.is_empty() {
                    "-"
                } else {
                    &w.last_failure
                },
                if w.ejected_for_ms > 0 {
                    format!("yes, {} ms more", w.ejected_for_ms)
                } else {
                    "no".into()
                }
            );
        }
    }
    if !r.out_of_service.is_empty() {
        let _ = writeln!(o, "endpoints the daemon keeps out of service:");
        for (addr, why) in &r.out_of_service {
            let _ = writeln!(o, "  {addr}: {why}");
        }
    }
    if r.ejected_fallback > 0 || r.ejections_lost > 0 {
        let _ = writeln!(
            o,
            "connects that found every probed slot kernel-ejected: {}; kernel ejections \
             the daemon missed (ring buffer full): {}",
            r.ejected_fallback, r.ejections_lost
        );
    }
    if r.orig_failed > 0 {
        let _ = writeln!(
            o,
            "connections handed to the daemon without a recorded destination: {}",
            r.orig_failed
        );
    }
    o
}

/// One service's rates between two reports (`routerd inspect --watch`).
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    pub service: String,
    pub host: String,
    pub connects_per_s: f64,
    pub datagrams_per_s: f64,
    pub no_backend_per_s: f64,
    pub connects: u64,
}

/// Per-service rates from `prev` to `now`, `secs` apart, busiest first
/// (services that are new in `now` count from zero). Pure.
pub fn rates(prev: &Report, now: &Report, secs: f64) -> Vec<Rate> {
    let key = |s: &ServiceReport| (s.vip, s.proto);
    let before: BTreeMap<_, &ServiceReport> = prev.services.iter().map(|s| (key(s), s)).collect();
    let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs.max(1e-9);
    let mut out: Vec<Rate> = now
        .services
        .iter()
        .map(|s| {
            let p = before.get(&key(s));
            let was = |f: fn(&ServiceReport) -> u64| p.map_or(0, |p| f(p));
            Rate {
                service: format!("{}/{}", s.vip, s.proto),
                host: s.host.clone(),
                connects_per_s: per_s(s.connects, was(|p| p.connects)),
                datagrams_per_s: per_s(s.datagrams, was(|p| p.datagrams)),
                no_backend_per_s: per_s(s.no_backend, was(|p| p.no_backend)),
                connects: s.connects,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (b.connects_per_s + b.datagrams_per_s)
            .total_cmp(&(a.connects_per_s + a.datagrams_per_s))
            .then(a.host.cmp(&b.host))
            .then(a.service.cmp(&b.service))
    });
    out
}

/// One frame of `inspect --watch`: the rates, and what the datapath is.
pub fn render_rates(now: &Report, rates: &[Rate], secs: f64) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "datapath {} (generation {}), per second over the last {secs:.1} s, busiest first",
        now.dir, now.generation
    );
    let _ = writeln!(
        o,
        "{:<44} {:<30} {:>10} {:>10} {:>11} {:>10}",
        "SERVICE", "HOST", "CONNECTS/S", "DGRAMS/S", "NO-BACKEND/S", "CONNECTS"
    );
    for r in rates {
        let _ = writeln!(
            o,
            "{:<44} {:<30} {:>10.1} {:>10.1} {:>11.1} {:>10}",
            r.service, r.host, r.connects_per_s, r.datagrams_per_s, r.no_backend_per_s, r.connects
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(services: &[(&str, u64, u64)]) -> Report {
        Report {
            dir: "/sys/fs/bpf/router/v3".into(),
            cgroup: String::new(),
            generation: 1,
            applied_unix_ms: 0,
            services: services
                .iter()
                .map(|(host, connects, dgrams)| ServiceReport {
                    id: 1,
                    vip: format!("240.240.0.{}:80", host.len()).parse().unwrap(),
                    proto: Proto::Tcp,
                    host: host.to_string(),
                    slots: 1,
                    connects: *connects,
                    datagrams: *dgrams,
                    no_backend: 0,
                    inconsistent: 0,
                    backends: Vec::new(),
                })
                .collect(),
            unknown_vip_refused: 0,
            revnat_failed: 0,
            dns_captured: 0,
            proxy_refused: 0,
            orig_failed: 0,
            watched: Vec::new(),
            out_of_service: BTreeMap::new(),
            ejected_fallback: 0,
            ejections_lost: 0,
            store: None,
        }
    }

    #[test]
    fn the_store_line_says_how_far_behind_and_why() {
        let mut s = crate::state::StoreStatus {
            store: "etcd://a:2379/mesh".into(),
            served_revision: 40,
            store_revision: 42,
            connected: false,
            error: Some("tcp connect error".into()),
            lists: 2,
            objects: 7,
            pending: 0,
            from_snapshot: true,
        };
        assert_eq!(
            render_store(&s),
            "config from etcd://a:2379/mesh: serving revision 40 (store at 42); NOT CONNECTED \
             (tcp connect error): serving the last accepted config; 7 objects, 2 list(s); \
             started from the local snapshot"
        );
        s.connected = true;
        s.from_snapshot = false;
        assert!(render_store(&s).contains("(store at 42); connected, up to date; 7 objects"));
        s.pending = 3;
        assert!(render_store(&s).contains("connected, 3 key(s) received and not applied"));
        let mut r = report(&[]);
        r.store = Some(s);
        assert!(
            render(&r)
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("config from etcd://a:2379/mesh")
        );
    }

    #[test]
    fn rates_are_differences_over_time_busiest_first() {
        let prev = report(&[("a.mesh", 10, 0), ("bb.mesh", 100, 0)]);
        let now = report(&[("a.mesh", 30, 0), ("bb.mesh", 110, 0), ("ccc.mesh", 5, 0)]);
        let r = rates(&prev, &now, 2.0);
        let got: Vec<(&str, f64)> = r
            .iter()
            .map(|r| (r.host.as_str(), r.connects_per_s))
            .collect();
        // A service new since the last frame counts from zero.
        assert_eq!(
            got,
            vec![("a.mesh", 10.0), ("bb.mesh", 5.0), ("ccc.mesh", 2.5)]
        );
        // Counters never go backwards in a rate (a restart with new maps).
        let r = rates(&now, &prev, 1.0);
        assert!(r.iter().all(|r| r.connects_per_s == 0.0), "{r:?}");
    }
}
