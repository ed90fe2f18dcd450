//! Plan -> maps, with ordered writes so that a `connect()` running at any
//! moment sees either the old or the new version of a service, never a slot
//! that is not yet valid:
//!
//! 1. backends (new ones get ids; counters zeroed before first use);
//! 2. per service: the slot table into the *inactive* bank, then the header
//!    (one atomic map update switches `count` and `base` together);
//! 3. the config entry (VIP ranges);
//! 4. services that went away: their headers;
//! 5. *retired, not deleted*: the old banks, the slots of removed services
//!    and the backends no slot uses any more are deleted only after a grace
//!    period ([`GRACE`]). A `connect()` that read a header just before it
//!    flipped may still look up a slot of the old bank (or its backend) a
//!    moment later; deleting them at once made it fail ("inconsistent",
//!    EHOSTUNREACH). Ids of retiring services and backends are not reused,
//!    and a bank is not rewritten, until they are gone.
//!
//! Everything is checked against the map sizes *before* the first write, so a
//! plan that does not fit is refused whole. A map write that fails half-way
//! (the kernel out of memory) leaves every service whole (old or new: a header
//! only ever points at a complete table) but the set of services a mix of
//! both; the daemon then re-reads the maps and applies the last good plan
//! again.
//!
//! [`Mirror`] is the daemon's copy of what the kernel holds, read back from
//! the pinned maps at start-up (so a restarted daemon diffs against reality,
//! and deletes what no header reaches: garbage of an interrupted sync) and
//! kept in step with every successful write.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{IterableMap, PerCpuValues};
use router_common::{
    BANK_SLOTS, Backend, BackendHealth, BackendStats, CFG_REFUSE_UNKNOWN_VIP, CFG_VALID, FAMILY_V4,
    FAMILY_V6, GlobalConfig, LSN_F_DNS, LSN_F_PROXY, Listeners, MAX_SLOT_ENTRIES, SlotKey,
    SvcHeader, SvcKey, SvcStats,
};
use serde::Serialize;

use super::Maps;
use crate::plan::{AddrKey, BackendPlan, Locality, OutlierPlan, Plan, Proto, ServicePlan};

/// An IP as the kernel's four network-order words, plus the family tag.
pub fn ip_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The `MAP_VISIBLE` key: namespace `netns` sees the scoped VIP `vip`.
pub fn vis_key(netns: u64, vip: IpAddr) -> router_common::VisKey {
    let (addr, family) = ip_words(vip);
    router_common::VisKey {
        netns,
        addr,
        family,
        _pad: [0; 7],
    }
}

pub fn words_ip(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

/// Host-order port -> the network-order u16 the kernel stores.
pub fn port_be(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}
pub fn port_host(be: u16) -> u16 {
    u16::from_be_bytes(be.to_ne_bytes())
}

pub fn svc_key(s: &ServicePlan) -> SvcKey {
    key_of(s.vip, s.port, s.proto)
}

pub fn key_of(vip: IpAddr, port: u16, proto: Proto) -> SvcKey {
    let (addr, family) = ip_words(vip);
    SvcKey {
        addr,
        port: port_be(port),
        proto: proto.number(),
        family,
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d` (what an IPv4 listener sees of a
/// dual-stack client); any other address unchanged.
pub fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

pub fn key_addr(k: &SvcKey) -> SocketAddr {
    SocketAddr::new(words_ip(k.addr, k.family), port_host(k.port))
}

pub fn backend_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(words_ip(b.addr, b.family), port_host(b.port))
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SvcState {
    header: SvcHeader,
    /// Backend ids of the active bank, in slot order.
    slots: Vec<u32>,
}

/// How long retired slots and backends stay in the maps after no header
/// points at them: far longer than a program takes between reading a header
/// and reading its slot (microseconds; programs run to completion under RCU).
pub const GRACE: Duration = Duration::from_millis(50);

/// Entries no header reaches any more, deleted once their grace is over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Retiring {
    since: Option<Instant>,
    slots: Vec<SlotKey>,
    /// Backend ids (kept out of reuse until deleted).
    backends: Vec<u32>,
    /// Service ids of removed services (kept out of reuse until their slots
    /// are deleted: a new service with the same id would lose its slots).
    svc_ids: Vec<u32>,
}

/// What the kernel holds, as far as this daemon knows.
#[derive(Debug, Default)]
pub struct Mirror {
    /// By endpoint address. A hash map: at 100,000 backends a B-tree's
    /// nodes of eleven 64-byte entries cost a third more, and nothing
    /// needs them in order.
    backends: HashMap<AddrKey, Held>,
    backend_ids: BTreeSet<u32>,
    services: BTreeMap<SvcKey, SvcState>,
    svc_ids: BTreeSet<u32>,
    retiring: VecDeque<Retiring>,
    /// The cluster and locality lists of the last whole apply (backends
    /// number their cluster and locality by them).
    clusters: Vec<String>,
    localities: Vec<Locality>,
    /// Ids from which the per-CPU counters are known to be zero (never
    /// handed out since this daemon created the arrays); `u32::MAX` when
    /// unknown (adopted maps). A fresh start then skips 110,000 zeroing
    /// writes at the bench's scale.
    zero_from: StatIds,
    /// The outlier plans the backends' kernel ejection thresholds were
    /// written from, and those thresholds by endpoint.
    outliers: Vec<OutlierPlan>,
    eject: HashMap<SocketAddr, Eject>,
}

/// A backend as the mirror keeps it: its id and what its map value holds
/// besides the address (the key already is the address): 16 bytes, not
/// 36, times 100,000 endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    id: u32,
    cluster_id: u16,
    locality_id: u16,
    eject_after: u32,
    eject_ms: u32,
}

impl Held {
    fn of(id: u32, b: &Backend) -> Self {
        Held {
            id,
            cluster_id: b.cluster_id,
            locality_id: b.locality_id,
            eject_after: b.eject_after,
            eject_ms: b.eject_ms,
        }
    }
    /// With the kernel's ejection threshold of `e` (none: not watched).
    fn eject(self, e: Option<Eject>) -> Self {
        Held {
            eject_after: e.map_or(0, |e| e.after),
            eject_ms: e.map_or(0, |e| e.ms),
            ..self
        }
    }
    /// The map value again.
    fn backend(&self, addr: SocketAddr) -> Backend {
        let (words, family) = ip_words(addr.ip());
        Backend {
            addr: words,
            port: port_be(addr.port()),
            family,
            _pad: 0,
            cluster_id: self.cluster_id,
            locality_id: self.locality_id,
            eject_after: self.eject_after,
            eject_ms: self.eject_ms,
        }
    }
}

/// What the kernel does with failed handshakes of one endpoint
/// ([`Backend::eject_after`], [`Backend::eject_ms`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eject {
    pub after: u32,
    pub ms: u32,
}

/// The kernel's ejection thresholds, from the outlier plans: a failed
/// handshake is a connect failure, which counts both as an error and as a
/// gateway error, so the lower of the two thresholds set decides. The first
/// plan (in label order) that watches an endpoint decides, as in
/// [`crate::health::Ejector`]'s bookkeeping.
pub fn eject_params(plans: &[OutlierPlan]) -> HashMap<SocketAddr, Eject> {
    let mut out = HashMap::new();
    for p in plans {
        let after = [p.consecutive_errors, p.consecutive_gateway_errors]
            .into_iter()
            .filter(|n| *n > 0)
            .min();
        let Some(after) = after else { continue };
        let e = Eject {
            after,
            ms: p.base_ejection_ms.clamp(1, u64::from(u32::MAX)) as u32,
        };
        for ep in &p.endpoints {
            out.entry(*ep).or_insert(e);
        }
    }
    out
}

/// First ids of the counter arrays that are still as created (all zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatIds {
    pub services: u32,
    pub backends: u32,
}

impl Default for StatIds {
    fn default() -> Self {
        StatIds {
            services: u32::MAX,
            backends: u32::MAX,
        }
    }
}

/// Writes gathered for one `BPF_MAP_UPDATE_BATCH`.
struct Batch<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K: aya::Pod, V: aya::Pod> Batch<K, V> {
    fn new() -> Self {
        Batch {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
    fn push(&mut self, k: K, v: V) {
        self.keys.push(k);
        self.values.push(v);
    }
    fn flush(&mut self, map: &aya::maps::MapData) -> Result<usize> {
        super::sys::update_batch(map, &self.keys, &self.values)?;
        let n = self.keys.len();
        self.keys.clear();
        self.values.clear();
        Ok(n)
    }
}

/// The lowest id at or above `from` (ids below it are known to be taken)
/// that `used` lacks. Ids are dense from 1; the first gap (or the next
/// number) is free. Allocating many ids in one apply passes the last one
/// + 1 as `from`, so adding n services costs O(n log n), not O(n^2).
fn lowest_free(used: &BTreeSet<u32>, from: u32, max: u32) -> Option<u32> {
    let mut expect = from.max(1);
    for id in used.range(expect..) {
        if *id != expect {
            break;
        }
        expect += 1;
    }
    (expect < max).then_some(expect)
}

impl Mirror {
    /// Read the pinned maps. Slots outside any service's active bank (left by
    /// an interrupted sync) are deleted here.
    pub fn read(maps: &Maps) -> Result<Self> {
        let mut m = Mirror::default();
        debug_assert_eq!(m.zero_from, StatIds::default());
        for item in maps.backends.iter() {
            let (id, b) = item.context("reading the backends map")?;
            m.backends.insert(backend_addr(&b).into(), Held::of(id, &b));
            m.backend_ids.insert(id);
        }
        for item in maps.services.iter() {
            let (k, h) = item.context("reading the services map")?;
            let mut slots = Vec::with_capacity(h.count as usize);
            for i in 0..h.count {
                let slot = SlotKey {
                    svc_id: h.svc_id,
                    slot: h.base + i,
                };
                slots.push(maps.slots.get(&slot, 0).with_context(|| {
                    format!(
                        "service {} lacks slot {} of its active bank",
                        key_addr(&k),
                        slot.slot
                    )
                })?);
            }
            m.svc_ids.insert(h.svc_id);
            m.services.insert(k, SvcState { header: h, slots });
        }
        Ok(m)
    }

    /// The counter arrays were created by this daemon (nothing was pinned):
    /// every id's counters are zero until first handed out.
    pub fn counters_created(&mut self) {
        self.zero_from = StatIds {
            services: 1,
            backends: 1,
        };
    }

    /// Delete what no header reaches: slot entries outside every active
    /// bank and backends no active slot names (left by a sync that was
    /// interrupted, e.g. by `kill -9`). Only call this when no apply of this
    /// daemon is retiring anything (at start-up). Returns `(slots, backends)`.
    pub fn collect_garbage(&mut self, maps: &mut Maps) -> Result<(usize, usize)> {
        let active: BTreeMap<u32, (u32, u32)> = self
            .services
            .values()
            .map(|s| {
                (
                    s.header.svc_id,
                    (s.header.base, s.header.base + s.header.count),
                )
            })
            .collect();
        let stale: Vec<SlotKey> = maps
            .slots
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| match active.get(&k.svc_id) {
                Some((lo, hi)) => k.slot < *lo || k.slot >= *hi,
                None => true,
            })
            .collect();
        for k in &stale {
            let _ = maps.slots.remove(k);
        }
        let used: BTreeSet<u32> = self
            .services
            .values()
            .flat_map(|s| s.slots.iter().copied())
            .collect();
        let orphans: Vec<AddrKey> = self
            .backends
            .iter()
            .filter(|(_, h)| !used.contains(&h.id))
            .map(|(a, _)| *a)
            .collect();
        for a in &orphans {
            if let Some(Held { id, .. }) = self.backends.remove(a) {
                let _ = maps.backends.remove(&id);
                self.backend_ids.remove(&id);
            }
        }
        Ok((stale.len(), orphans.len()))
    }

    /// Delete retired entries whose grace is over at `now`. With `wait`,
    /// first sleep until all of them are due (the caller is about to reuse
    /// what they hold). Returns how many map entries were deleted.
    pub fn retire(&mut self, maps: &mut Maps, now: Instant, wait: bool) -> usize {
        if wait && let Some(last) = self.retiring.back().and_then(|r| r.since) {
            let due = last + GRACE;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.delete_due(maps, now, wait)
    }

    /// [`Mirror::retire`] before rewriting the services `ids`: wait only for
    /// retired banks of those services (under churn, applies come faster
    /// than the grace; most touch other services).
    pub fn retire_for(&mut self, maps: &mut Maps, ids: &BTreeSet<u32>) -> usize {
        let last = self
            .retiring
            .iter()
            .filter(|r| r.slots.iter().any(|k| ids.contains(&k.svc_id)))
            .filter_map(|r| r.since)
            .max();
        if let Some(last) = last {
            let due = last + GRACE;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.delete_due(maps, Instant::now(), false)
    }

    fn delete_due(&mut self, maps: &mut Maps, now: Instant, wait: bool) -> usize {
        let mut deleted = 0;
        let now = if wait { Instant::now().max(now) } else { now };
        while let Some(r) = self.retiring.front() {
            if r.since.is_some_and(|t| t + GRACE > now) {
                break;
            }
            let r = self.retiring.pop_front().expect("front exists");
            for k in &r.slots {
                let _ = maps.slots.remove(k);
            }
            for id in &r.backends {
                let _ = maps.backends.remove(id);
                self.backend_ids.remove(id);
            }
            for id in &r.svc_ids {
                self.svc_ids.remove(id);
            }
            deleted += r.slots.len() + r.backends.len();
        }
        deleted
    }

    /// Anything retired and not yet deleted?
    pub fn retiring(&self) -> bool {
        !self.retiring.is_empty()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }
    fn slot_entries(&self) -> usize {
        self.services.values().map(|s| s.slots.len()).sum::<usize>()
            + self.retiring.iter().map(|r| r.slots.len()).sum::<usize>()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub services_added: usize,
    pub services_changed: usize,
    pub services_unchanged: usize,
    pub services_removed: usize,
    pub backends_added: usize,
    pub backends_changed: usize,
    pub backends_removed: usize,
    /// Map updates and deletes issued.
    pub writes: usize,
}

impl SyncReport {
    pub fn is_noop(&self) -> bool {
        self.services_added
            + self.services_changed
            + self.services_removed
            + self.backends_added
            + self.backends_changed
            + self.backends_removed
            == 0
    }
}

fn index_of<T: PartialEq<U>, U: ?Sized>(list: &[T], x: &U) -> u16 {
    list.iter()
        .position(|y| y == x)
        .map(|i| i as u16 + 1)
        .unwrap_or(0)
}

fn zeroed<T: aya::Pod + Default>() -> Result<PerCpuValues<T>> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    Ok(PerCpuValues::try_from(vec![T::default(); n])?)
}

/// A plan refused before anything was written: the maps are as they were.
#[derive(Debug)]
pub struct DoesNotFit(pub anyhow::Error);

impl std::fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for DoesNotFit {}

/// Refuse a plan that cannot fit, before writing anything.
fn check_capacity(
    mirror: &Mirror,
    plan: &Plan,
    max_services: u32,
    max_backends: u32,
) -> Result<()> {
    let backends: BTreeSet<AddrKey> = plan.backends.iter().map(|b| b.addr.into()).collect();
    let union_backends = backends.len()
        + mirror
            .backends
            .keys()
            .filter(|a| !backends.contains(a))
            .count();
    let new_backends = backends
        .iter()
        .filter(|a| !mirror.backends.contains_key(a))
        .count();
    // A plan that needs no new entry always fits (writing the last good
    // plan back after a failure must not be refused by whatever filled the
    // map).
    if new_backends > 0 && union_backends >= max_backends as usize {
        bail!(
            "the plan needs {} backends (old and new ones coexist while it is applied) but the \
             backend maps hold {}: reduce the number of endpoints, or re-create the datapath \
             with a larger --max-backends (sizes are fixed when it is first loaded: \
             `routerd stop`, then `routerd run --max-backends N`)",
            union_backends,
            max_backends - 1
        );
    }
    let keys: BTreeSet<SvcKey> = plan.services.iter().map(|s| svc_key(s)).collect();
    let union_services = keys.len() + mirror.services.keys().filter(|k| !keys.contains(k)).count();
    let new_services = keys
        .iter()
        .filter(|k| !mirror.services.contains_key(k))
        .count();
    if new_services > 0 && union_services >= max_services as usize {
        bail!(
            "the plan needs {} services (old and new coexist while it is applied) but the \
             service maps hold {}: reduce the number of virtual hosts or ports, or re-create \
             the datapath with a larger --max-services (`routerd stop`, then \
             `routerd run --max-services N`)",
            union_services,
            max_services - 1
        );
    }
    let mut peak = mirror.slot_entries();
    for s in &plan.services {
        let n = s.total_slots();
        if n > BANK_SLOTS {
            bail!(
                "service {} needs {} slots; at most {} fit (compiler bug)",
                s.label(),
                n,
                BANK_SLOTS
            );
        }
        peak += n as usize;
    }
    if peak > MAX_SLOT_ENTRIES as usize {
        bail!(
            "applying this plan needs up to {} slot entries at once but the slot map holds {}; \
             reduce endpoints per service or the number of services",
            peak,
            MAX_SLOT_ENTRIES
        );
    }
    Ok(())
}

pub fn config_entry(plan: &Plan) -> GlobalConfig {
    let (v4_net, _) = ip_words(IpAddr::V4(plan.vip_ranges.v4.network()));
    let (v4_mask, _) = ip_words(IpAddr::V4(plan.vip_ranges.v4.netmask()));
    let (v6_net, _) = ip_words(IpAddr::V6(plan.vip_ranges.v6.network()));
    let (v6_mask, _) = ip_words(IpAddr::V6(plan.vip_ranges.v6.netmask()));
    GlobalConfig {
        mark: router_common::DAEMON_MARK,
        flags: CFG_VALID
            | if plan.refuse_unknown_vips {
                CFG_REFUSE_UNKNOWN_VIP
            } else {
                0
            },
        v4_net: v4_net[0],
        v4_mask: v4_mask[0],
        v6_net,
        v6_mask,
        syn_rto_jiffies: match plan.syn_timeout_ms {
            0 => 0,
            ms => super::sys::ms_to_jiffies(ms),
        },
        _pad: 0,
    }
}

/// The daemon's listeners as bound in one network namespace: what the
/// kernel may send there. `None` for a listener that is not bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    /// DNS listeners, and whether port-53 traffic is captured to them.
    pub dns4: Option<SocketAddr>,
    pub dns6: Option<SocketAddr>,
    pub capture: bool,
    /// L7 proxy listeners (same port).
    pub proxy4: Option<SocketAddr>,
    pub proxy6: Option<SocketAddr>,
}

/// [`Bound`] as the kernel's `Listeners` entry.
pub fn listeners_entry(b: &Bound) -> Listeners {
    let words = |a: Option<SocketAddr>| a.map(|a| ip_words(a.ip()).0).unwrap_or([0; 4]);
    let dns_port = b.dns4.or(b.dns6).map_or(0, |a| port_be(a.port()));
    let proxy_port = b.proxy4.or(b.proxy6).map_or(0, |a| port_be(a.port()));
    let mut flags = 0;
    if b.capture && dns_port != 0 {
        flags |= LSN_F_DNS;
    }
    if proxy_port != 0 {
        flags |= LSN_F_PROXY;
    }
    Listeners {
        flags,
        dns4: words(b.dns4)[0],
        dns6: words(b.dns6),
        proxy4: words(b.proxy4)[0],
        dns_port,
        proxy_port,
        proxy6: words(b.proxy6),
    }
}

/// One apply's running state: ids handed out, entries to retire.
struct Writer<'m> {
    maps: &'m mut Maps,
    mirror: &'m mut Mirror,
    /// Backends, slots and headers written in batches, in that order (see
    /// [`Writer::flush_backends`], [`Writer::flush_services`]).
    backends: Batch<u32, Backend>,
    slots: Batch<SlotKey, u32>,
    headers: Batch<SvcKey, SvcHeader>,
    r: SyncReport,
    retire: Retiring,
    max_services: u32,
    max_backends: u32,
    next_backend: u32,
    next_svc: u32,
    /// The workloads' own addresses (the plan's Pods' IPs, none with
    /// hairpin allowed): a service with one among its endpoints gets
    /// `SVC_F_OWN`.
    own: std::collections::HashSet<IpAddr>,
}

/// The plan's workloads' own addresses the kernel avoids sending them to.
fn own_addresses(plan: &Plan) -> std::collections::HashSet<IpAddr> {
    if plan.workload_hairpin {
        return Default::default();
    }
    plan.workloads
        .iter()
        .flat_map(|w| w.ips.iter().copied())
        .collect()
}

impl<'m> Writer<'m> {
    fn new(maps: &'m mut Maps, mirror: &'m mut Mirror, plan: &Plan) -> Self {
        // Ids index the per-CPU counter arrays, whose sizes were fixed at load.
        let (max_services, max_backends) = (maps.svc_stats.len(), maps.backend_stats.len());
        Writer {
            maps,
            mirror,
            backends: Batch::new(),
            slots: Batch::new(),
            headers: Batch::new(),
            r: SyncReport::default(),
            retire: Retiring::default(),
            max_services,
            max_backends,
            next_backend: 1,
            next_svc: 1,
            own: own_addresses(plan),
        }
    }

    /// Write a backend (new, or changed in place); its id.
    fn backend(
        &mut self,
        b: &BackendPlan,
        clusters: &[String],
        localities: &[Locality],
    ) -> Result<u32> {
        let want = |id| {
            Held {
                id,
                cluster_id: index_of(clusters, &*b.cluster),
                locality_id: index_of(localities, &*b.locality),
                eject_after: 0,
                eject_ms: 0,
            }
            .eject(self.mirror.eject.get(&b.addr).copied())
        };
        let key = AddrKey::from(b.addr);
        match self.mirror.backends.get(&key).copied() {
            Some(old) => {
                let new = want(old.id);
                if old != new {
                    self.backends.push(new.id, new.backend(b.addr));
                    self.r.backends_changed += 1;
                    self.mirror.backends.insert(key, new);
                }
                Ok(new.id)
            }
            None => {
                let id = lowest_free(
                    &self.mirror.backend_ids,
                    self.next_backend,
                    self.max_backends,
                )
                .context("no free backend id (capacity was checked: bug)")?;
                self.next_backend = id + 1;
                let zero = &mut self.mirror.zero_from.backends;
                if id >= *zero {
                    *zero = id + 1;
                } else {
                    // A reused id: counters and the kernel's health of the
                    // endpoint that had it start over.
                    self.maps
                        .backend_stats
                        .set(id, zeroed::<BackendStats>()?, 0)?;
                    self.maps
                        .backend_health
                        .set(id, BackendHealth::default(), 0)?;
                    self.r.writes += 2;
                }
                let new = want(id);
                self.backends.push(id, new.backend(b.addr));
                self.r.backends_added += 1;
                self.mirror.backend_ids.insert(id);
                self.mirror.backends.insert(key, new);
                Ok(id)
            }
        }
    }

    /// New outlier plans: new kernel ejection thresholds, and the backends
    /// already in the maps whose thresholds change rewritten (with the
    /// other backend writes of this apply).
    fn outliers(&mut self, plan: &Plan) {
        if self.mirror.outliers == plan.outliers {
            return;
        }
        let eject = eject_params(&plan.outliers);
        let touched: BTreeSet<SocketAddr> = self
            .mirror
            .eject
            .keys()
            .chain(eject.keys())
            .copied()
            .collect();
        self.mirror.eject = eject;
        self.mirror.outliers = plan.outliers.clone();
        for a in touched {
            let Some(old) = self.mirror.backends.get(&a.into()).copied() else {
                continue;
            };
            let new = old.eject(self.mirror.eject.get(&a).copied());
            if new != old {
                self.backends.push(new.id, new.backend(a));
                self.r.backends_changed += 1;
                self.mirror.backends.insert(a.into(), new);
            }
        }
    }

    /// Retire a backend nothing points at any more.
    fn retire_backend(&mut self, key: AddrKey) {
        if let Some(Held { id, .. }) = self.mirror.backends.remove(&key) {
            self.retire.backends.push(id);
            self.r.backends_removed += 1;
        }
    }

    /// Write a service: its slots into the inactive bank, then the header
    /// flip; the old bank is retired.
    fn service(&mut self, s: &ServicePlan) -> Result<()> {
        let key = svc_key(s);
        let ids: Result<Vec<u32>> = s
            .slots
            .iter()
            .map(|share| {
                self.mirror
                    .backends
                    .get(&share.endpoint.into())
                    .map(|h| (h.id, share.slots))
                    .with_context(|| {
                        format!(
                            "plan bug: endpoint {} of {} is not in plan.backends",
                            share.endpoint,
                            s.label()
                        )
                    })
            })
            .collect::<Result<Vec<(u32, u32)>>>()
            .map(|v| {
                v.into_iter()
                    .flat_map(|(id, n)| std::iter::repeat_n(id, n as usize))
                    .collect()
            });
        let slots = ids?;
        let flags = if s.proxied {
            router_common::SVC_F_PROXY
        } else {
            0
        } | if s.scoped {
            router_common::SVC_F_SCOPED
        } else {
            0
        } | if !self.own.is_empty()
            && s.slots.iter().any(|x| self.own.contains(&x.endpoint.ip()))
        {
            router_common::SVC_F_OWN
        } else {
            0
        };
        let (svc_id, old) = match self.mirror.services.get(&key) {
            Some(st) => {
                if st.slots == slots
                    && st.header.count as usize == slots.len()
                    && st.header.flags == flags
                {
                    self.r.services_unchanged += 1;
                    return Ok(());
                }
                (st.header.svc_id, Some(st.clone()))
            }
            None => {
                let id = lowest_free(&self.mirror.svc_ids, self.next_svc, self.max_services)
                    .context("no free service id (capacity was checked: bug)")?;
                self.next_svc = id + 1;
                let zero = &mut self.mirror.zero_from.services;
                if id >= *zero {
                    *zero = id + 1;
                } else {
                    self.maps.svc_stats.set(id, zeroed::<SvcStats>()?, 0)?;
                    self.r.writes += 1;
                }
                self.mirror.svc_ids.insert(id);
                (id, None)
            }
        };
        let base = match &old {
            Some(st) if st.header.base == 1 => BANK_SLOTS + 1,
            _ => 1,
        };
        for (i, id) in slots.iter().enumerate() {
            self.slots.push(
                SlotKey {
                    svc_id,
                    slot: base + i as u32,
                },
                *id,
            );
        }
        let header = SvcHeader {
            svc_id,
            count: slots.len() as u32,
            base,
            flags,
            _pad: 0,
        };
        self.headers.push(key, header);
        if let Some(st) = &old {
            self.retire
                .slots
                .extend((0..st.header.count).map(|i| SlotKey {
                    svc_id,
                    slot: st.header.base + i,
                }));
            self.r.services_changed += 1;
        } else {
            self.r.services_added += 1;
        }
        self.mirror.services.insert(key, SvcState { header, slots });
        Ok(())
    }

    /// A service that went away: the header now, the slots after the grace.
    fn remove_service(&mut self, key: &SvcKey) -> Result<()> {
        let Some(st) = self.mirror.services.remove(key) else {
            return Ok(());
        };
        self.maps.services.remove(key)?;
        self.r.writes += 1;
        self.retire
            .slots
            .extend((0..st.header.count).map(|i| SlotKey {
                svc_id: st.header.svc_id,
                slot: st.header.base + i,
            }));
        self.retire.svc_ids.push(st.header.svc_id);
        self.r.services_removed += 1;
        Ok(())
    }

    /// Write the gathered backends (before any slot names them).
    fn flush_backends(&mut self) -> Result<()> {
        self.r.writes += self
            .backends
            .flush(self.maps.backends.map())
            .context("writing the backends map")?;
        Ok(())
    }

    /// Write the gathered slot tables, then the headers that switch to them:
    /// a `connect()` sees a header only once every slot it counts is there.
    fn flush_services(&mut self) -> Result<()> {
        self.r.writes += self
            .slots
            .flush(self.maps.slots.map())
            .context("writing the slots map")?;
        self.r.writes += self
            .headers
            .flush(self.maps.services.map())
            .context("writing the services map")?;
        Ok(())
    }

    fn finish(mut self) -> SyncReport {
        debug_assert!(
            self.backends.keys.is_empty()
                && self.slots.keys.is_empty()
                && self.headers.keys.is_empty(),
            "writes gathered and never flushed"
        );
        self.r.writes += self.retire.slots.len() + self.retire.backends.len();
        if self.retire != Retiring::default() {
            self.retire.since = Some(Instant::now());
            self.mirror.retiring.push_back(self.retire);
        }
        self.r
    }
}

/// Write the whole plan: every backend and service, then what went away.
pub fn apply(maps: &mut Maps, mirror: &mut Mirror, plan: &Plan) -> Result<SyncReport> {
    // What was retired by the last apply must be gone before this one may
    // rewrite a bank or reuse an id (usually it is: applies are further
    // apart than the grace).
    mirror.retire(maps, Instant::now(), true);
    check_capacity(mirror, plan, maps.svc_stats.len(), maps.backend_stats.len())
        .map_err(DoesNotFit)?;
    let clusters = plan.clusters();
    let localities = plan.localities();
    let mut w = Writer::new(maps, mirror, plan);
    // 1. Backends.
    w.outliers(plan);
    let mut used: BTreeSet<AddrKey> = BTreeSet::new();
    for b in &plan.backends {
        w.backend(b, &clusters, &localities)?;
        used.insert(b.addr.into());
    }
    w.flush_backends()?;
    // 2. Services.
    let mut wanted: BTreeSet<SvcKey> = BTreeSet::new();
    for s in &plan.services {
        wanted.insert(svc_key(s));
        w.service(s)?;
    }
    w.flush_services()?;
    // 3. Config.
    let cfg = config_entry(plan);
    if w.maps.config.get(&0, 0).ok() != Some(cfg) {
        w.maps.config.set(0, cfg, 0)?;
        w.r.writes += 1;
    }
    // 4. Services that went away.
    let gone: Vec<SvcKey> = w
        .mirror
        .services
        .keys()
        .filter(|k| !wanted.contains(k))
        .copied()
        .collect();
    for key in gone {
        w.remove_service(&key)?;
    }
    // 5. Backends nothing points at any more: retired too.
    let unused: Vec<AddrKey> = w
        .mirror
        .backends
        .keys()
        .filter(|a| !used.contains(a))
        .copied()
        .collect();
    for key in unused {
        w.retire_backend(key);
    }
    w.mirror.clusters = clusters;
    w.mirror.localities = localities;
    Ok(w.finish())
}

/// Write only what an update changed: the backends in `backends`, the
/// services in `services` (written if in the plan, removed if not). The
/// rest of the plan is what the maps hold already. Falls back to
/// [`apply`] when a backend's cluster or locality is new (their ids would
/// move).
pub fn apply_changes(
    maps: &mut Maps,
    mirror: &mut Mirror,
    plan: &Plan,
    services: &BTreeSet<(IpAddr, u16, Proto)>,
    backends: &BTreeSet<SocketAddr>,
) -> Result<SyncReport> {
    let known = |b: &BackendPlan| {
        mirror.clusters.iter().any(|c| **c == *b.cluster) && mirror.localities.contains(&b.locality)
    };
    let find_backend = |a: &SocketAddr| {
        plan.backends
            .binary_search_by_key(a, |b| b.addr)
            .ok()
            .map(|i| &*plan.backends[i])
    };
    if backends.iter().filter_map(find_backend).any(|b| !known(b)) {
        return apply(maps, mirror, plan);
    }
    let rewritten: BTreeSet<u32> = services
        .iter()
        .filter_map(|(v, p, pr)| mirror.services.get(&key_of(*v, *p, *pr)))
        .map(|st| st.header.svc_id)
        .collect();
    mirror.retire_for(maps, &rewritten);
    // Capacity: what is new here against what the maps hold.
    let new_backends = backends
        .iter()
        .filter(|a| find_backend(a).is_some() && !mirror.backends.contains_key(&AddrKey::from(**a)))
        .count();
    if new_backends > 0 && mirror.backends.len() + new_backends >= maps.backend_stats.len() as usize
    {
        return Err(DoesNotFit(anyhow::anyhow!(
            "the plan needs {} backends but the backend maps hold {}: reduce the number of \
             endpoints, or re-create the datapath with a larger --max-backends (`routerd \
             stop`, then `routerd run --max-backends N`)",
            mirror.backends.len() + new_backends,
            maps.backend_stats.len() - 1
        ))
        .into());
    }
    let (clusters, localities) = (mirror.clusters.clone(), mirror.localities.clone());
    let mut w = Writer::new(maps, mirror, plan);
    w.outliers(plan);
    for a in backends {
        if let Some(b) = find_backend(a) {
            w.backend(b, &clusters, &localities)?;
        }
    }
    w.flush_backends()?;
    for (vip, port, proto) in services {
        match plan.service(*vip, *port, *proto) {
            Some(s) => {
                if s.total_slots() > BANK_SLOTS {
                    bail!(
                        "service {} needs {} slots; at most {} fit (compiler bug)",
                        s.label(),
                        s.total_slots(),
                        BANK_SLOTS
                    );
                }
                w.service(s)?
            }
            None => w.remove_service(&key_of(*vip, *port, *proto))?,
        }
    }
    w.flush_services()?;
    for a in backends {
        if find_backend(a).is_none() {
            w.retire_backend(AddrKey::from(*a));
        }
    }
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_ejection_thresholds_come_from_the_first_outlier_plan() {
        let ep = |i: u8| SocketAddr::from(([10, 0, 0, i], 80));
        let od = |errors, gw, base, eps: &[u8]| OutlierPlan {
            destination: "d".into(),
            policy: "p".into(),
            endpoints: eps.iter().map(|i| ep(*i)).collect(),
            consecutive_errors: errors,
            consecutive_gateway_errors: gw,
            interval_ms: 1000,
            base_ejection_ms: base,
            max_ejection_percent: 10,
        };
        let e = eject_params(&[
            od(5, 3, 30_000, &[1, 2]),
            od(2, 0, 1_000, &[2, 3]),
            od(0, 0, 1_000, &[4]),
        ]);
        // A failed handshake is an error and a gateway error: the lower one.
        assert_eq!(
            e[&ep(1)],
            Eject {
                after: 3,
                ms: 30_000
            }
        );
        // The first plan watching an endpoint decides.
        assert_eq!(
            e[&ep(2)],
            Eject {
                after: 3,
                ms: 30_000
            }
        );
        assert_eq!(
            e[&ep(3)],
            Eject {
                after: 2,
                ms: 1_000
            }
        );
        // No threshold: the kernel does not watch it.
        assert!(!e.contains_key(&ep(4)));
    }

    #[test]
    fn words_round_trip() {
        for ip in ["240.240.1.2", "10.0.0.1", "2001:2::1", "fd00::abcd:1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let (w, f) = ip_words(ip);
            assert_eq!(words_ip(w, f), ip);
        }
        // Network byte order in memory: 10.0.0.1 is bytes 0a 00 00 01.
        let (w, _) = ip_words("10.0.0.1".parse().unwrap());
        assert_eq!(w[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(port_be(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_host(port_be(8080)), 8080);
    }

    #[test]
    fn lowest_free_fills_gaps() {
        let used: BTreeSet<u32> = [1, 2, 4].into_iter().collect();
        assert_eq!(lowest_free(&used, 1, 10), Some(3));
        assert_eq!(lowest_free(&used, 4, 10), Some(5));
        let used: BTreeSet<u32> = [1, 2, 3].into_iter().collect();
        assert_eq!(lowest_free(&used, 1, 4), None);
        assert_eq!(lowest_free(&BTreeSet::new(), 1, 4), Some(1));
    }
}
