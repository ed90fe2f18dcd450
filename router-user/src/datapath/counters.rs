//! The kernel's counters as they are now: every service (its VIP, slot
//! table and per-CPU counters summed), the backends its slots name, and the
//! global counters. Read from the pinned maps, no daemon needed: `routerd
//! inspect` renders them, the metrics endpoint exports them at scrape time.
use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::Result;
use router_common::{Backend, BackendHealth, BackendStats, GlobalStats, SlotKey, SvcStats};

use super::{
    Maps,
    sync::{backend_addr, key_addr},
};
use crate::plan::Proto;

/// A per-CPU value summed over the CPUs (`f` picks up to four fields).
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

#[derive(Clone, Debug)]
pub struct BackendCounters {
    pub id: u32,
    pub addr: SocketAddr,
    pub backend: Backend,
    /// Slots of the service's table that name it.
    pub slots: u32,
    pub connects: u64,
    pub datagrams: u64,
    /// Failed handshakes the kernel saw (watched backends only).
    pub failures: u64,
    /// Connects that found it ejected and went to another slot.
    pub ejected_skips: u64,
}

#[derive(Clone, Debug)]
pub struct ServiceCounters {
    pub svc_id: u32,
    pub vip: SocketAddr,
    pub proto: Proto,
    pub slots: u32,
    pub connects: u64,
    pub datagrams: u64,
    pub no_backend: u64,
    pub inconsistent: u64,
    pub backends: Vec<BackendCounters>,
}

/// Everything the kernel counts, by service, plus every backend the
/// backends map holds (by id) and its health entry.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub services: Vec<ServiceCounters>,
    /// Summed over the CPUs.
    pub global: GlobalStats,
    pub backends: BTreeMap<u32, (BackendCounters, BackendHealth)>,
}

impl Counters {
    /// Every counter; with `slot_tables`, also which backends each
    /// service's slots name (one lookup per slot: `inspect` shows them, the
    /// metrics endpoint, which scrapes often, does not need them).
    pub fn read(maps: &Maps, slot_tables: bool) -> Result<Counters> {
        let mut backends = BTreeMap::new();
        for item in maps.backends.iter() {
            let (id, b) = item?;
            let bs = sum(maps.backend_stats.get(&id, 0), |s: &BackendStats| {
                [s.connects, s.datagrams, s.failures, s.ejected_skips]
            });
            let health = maps.backend_health.get(&id, 0).unwrap_or_default();
            let c = BackendCounters {
                id,
                addr: backend_addr(&b),
                backend: b,
                slots: 0,
                connects: bs[0],
                datagrams: bs[1],
                failures: bs[2],
                ejected_skips: bs[3],
            };
            backends.insert(id, (c, health));
        }
        let mut services = Vec::new();
        for item in maps.services.iter() {
            let (k, h) = item?;
            let st = sum(maps.svc_stats.get(&h.svc_id, 0), |s: &SvcStats| {
                [s.connects, s.datagrams, s.no_backend, s.inconsistent]
            });
            let mut per_backend: BTreeMap<u32, u32> = BTreeMap::new();
            let walked = if slot_tables { h.count } else { 0 };
            for i in 0..walked {
                let key = SlotKey {
                    svc_id: h.svc_id,
                    slot: h.base + i,
                };
                if let Ok(id) = maps.slots.get(&key, 0) {
                    *per_backend.entry(id).or_default() += 1;
                }
            }
            services.push(ServiceCounters {
                svc_id: h.svc_id,
                vip: key_addr(&k),
                proto: Proto::from_number(k.proto).unwrap_or(Proto::Tcp),
                slots: h.count,
                connects: st[0],
                datagrams: st[1],
                no_backend: st[2],
                inconsistent: st[3],
                backends: per_backend
                    .into_iter()
                    .filter_map(|(id, slots)| {
                        let (b, _) = backends.get(&id)?;
                        Some(BackendCounters { slots, ..b.clone() })
                    })
                    .collect(),
            });
        }
        let g = sum(maps.global_stats.get(&0, 0), |s: &GlobalStats| {
            [
                s.unknown_vip,
                s.revnat_failed,
                s.dns_captured,
                s.proxy_refused,
            ]
        });
        let g2 = sum(maps.global_stats.get(&0, 0), |s: &GlobalStats| {
            [s.orig_failed, s.ejected_fallback, s.ejections_lost, 0]
        });
        Ok(Counters {
            services,
            global: GlobalStats {
                unknown_vip: g[0],
                revnat_failed: g[1],
                dns_captured: g[2],
                proxy_refused: g[3],
                orig_failed: g2[0],
                ejected_fallback: g2[1],
                ejections_lost: g2[2],
            },
            backends,
        })
    }
}
