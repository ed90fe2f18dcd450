//! `routerd inspect`: read the pinned maps (no daemon needed): services, slot
//! tables, backends, counters. Names come from the daemon's last applied plan
//! (`<state-dir>/plan.json`) when it is there.
use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, path::Path};

use anyhow::Result;
use router_common::{BackendStats, GlobalStats, SlotKey, SvcStats};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{
        Maps, Pins, meta_cgroup_path,
        sync::{backend_addr, key_addr},
    },
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
}

fn sum<T: aya::Pod + Default + Copy>(
    v: Result<aya::maps::PerCpuValues<T>, aya::maps::MapError>,
    f: impl Fn(&T) -> [u64; 4],
) -> [u64; 4] {
    let mut out = [0u64; 4];
    if let Ok(v) = v {
        for x in v.iter() {
            for (o, n) in out.iter_mut().zip(f(x)) {
                *o += n;
            }
        }
    }
    out
}

pub fn read(pins: &Pins, state_dir: &Path) -> Result<Report> {
    let maps = Maps::open(pins)?;
    let meta = maps.read_meta()?;
    let plan = crate::state::read_plan(state_dir);
    let clusters = plan.as_ref().map(|p| p.clusters()).unwrap_or_default();
    let localities = plan.as_ref().map(|p| p.localities()).unwrap_or_default();
    let hosts: BTreeMap<(SocketAddr, Proto), String> = plan
        .iter()
        .flat_map(|p| p.services.iter())
        .map(|s| ((SocketAddr::new(s.vip, s.port), s.proto), s.host.clone()))
        .collect();
    let mut backends = BTreeMap::new();
    for item in maps.backends.iter() {
        let (id, b) = item?;
        backends.insert(id, b);
    }
    let mut services = Vec::new();
    for item in maps.services.iter() {
        let (k, h) = item?;
        let vip = key_addr(&k);
        let proto = Proto::from_number(k.proto).unwrap_or(Proto::Tcp);
        let st = sum(maps.svc_stats.get(&h.svc_id, 0), |s: &SvcStats| {
            [s.connects, s.datagrams, s.no_backend, s.inconsistent]
        });
        let mut per_backend: BTreeMap<u32, u32> = BTreeMap::new();
        for i in 0..h.count {
            if let Ok(id) = maps.slots.get(
                &SlotKey {
                    svc_id: h.svc_id,
                    slot: h.base + i,
                },
                0,
            ) {
                *per_backend.entry(id).or_default() += 1;
            }
        }
        let mut brs = Vec::new();
        for (id, slots) in per_backend {
            let Some(b) = backends.get(&id) else { continue };
            let bs = sum(maps.backend_stats.get(&id, 0), |s: &BackendStats| {
                [s.connects, s.datagrams, 0, 0]
            });
            let name = |list: &Vec<String>, i: u16| {
                list.get(usize::from(i).wrapping_sub(1))
                    .cloned()
                    .unwrap_or_default()
            };
            brs.push(BackendReport {
                id,
                addr: backend_addr(b),
                cluster: name(&clusters, b.cluster_id),
                locality: localities
                    .get(usize::from(b.locality_id).wrapping_sub(1))
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
                slots,
                connects: bs[0],
                datagrams: bs[1],
            });
        }
        services.push(ServiceReport {
            id: h.svc_id,
            vip,
            proto,
            host: hosts.get(&(vip, proto)).cloned().unwrap_or_default(),
            slots: h.count,
            connects: st[0],
            datagrams: st[1],
            no_backend: st[2],
            inconsistent: st[3],
            backends: brs,
        });
    }
    services.sort_by_key(|s| (s.host.clone(), s.vip, s.proto));
    let g = sum(maps.global_stats.get(&0, 0), |s: &GlobalStats| {
        [
            s.unknown_vip,
            s.revnat_failed,
            s.dns_captured,
            s.proxy_refused,
        ]
    });
    let g2 = sum(maps.global_stats.get(&0, 0), |s: &GlobalStats| {
        [s.orig_failed, 0, 0, 0]
    });
    Ok(Report {
        dir: pins.dir().display().to_string(),
        cgroup: meta_cgroup_path(&meta),
        generation: meta.generation,
        applied_unix_ms: meta.applied_unix_ms,
        services,
        unknown_vip_refused: g[0],
        revnat_failed: g[1],
        dns_captured: g[2],
        proxy_refused: g[3],
        orig_failed: g2[0],
    })
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "datapath {} attached to cgroup {} (generation {})",
        r.dir, r.cgroup, r.generation
    );
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
    if r.orig_failed > 0 {
        let _ = writeln!(
            o,
            "connections handed to the daemon without a recorded destination: {}",
            r.orig_failed
        );
    }
    o
}
