//! The compiled config as units (one per virtual host, one for the
//! gateways) and the plan assembled from them, kept up to date by
//! recompiling only the units a change feeds: a unit records the services
//! whose endpoints it read, and [`Compiled::update`] recompiles the units
//! that read a changed service, then patches the plan (services, backends,
//! checks, notices) where those units' parts were. [`Compiled::build`]
//! compiles every unit; the property test in `tests/incremental.rs` checks
//! that updating gives what building gives, after every step of random
//! changes.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    GatewayUnit, Health, HostUnit, checks::Watch, gateway_unit, host_unit, settings_error, to_diag,
    vip, virtual_hosts,
};
use crate::{
    config::{ConfigError, Validated, inventory::ServiceId},
    plan::*,
};

/// Units are merged in this order (the first visit of an endpoint decides
/// its check, as a whole compile visits hosts in name order, then the
/// gateways).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum UnitKey {
    Host(Arc<str>),
    Gateways,
}

/// A service's key in the kernel.
pub type SvcId = (IpAddr, u16, Proto);

fn svc_id(s: &ServicePlan) -> SvcId {
    (s.vip, s.port, s.proto)
}

/// A notice's place in the plan's sorted list (the origin's shared names,
/// compared as strings).
type NoticeKey = (Arc<str>, u64, String, Arc<str>, Arc<str>, Arc<str>);

fn notice_key(n: &Notice) -> NoticeKey {
    let o = &n.origin;
    (
        o.file.clone(),
        o.line,
        n.message.clone(),
        o.kind.clone(),
        o.namespace.clone(),
        o.name.clone(),
    )
}

/// What an update changed, for the datapath and the listeners.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// Everything may have changed (a build, not an update).
    pub all: bool,
    /// Kernel services whose entry changed, appeared or went away.
    pub services: BTreeSet<SvcId>,
    /// What those services were before (for closing connections to
    /// endpoints that went away).
    pub replaced: Vec<Arc<ServicePlan>>,
    /// Backends that appeared, went away or changed.
    pub backends: BTreeSet<SocketAddr>,
    /// Host names, VIPs or served families changed (DNS).
    pub names: bool,
    /// Proxied services or gateway tables changed.
    pub proxy: bool,
    /// Health checks or outlier detection changed.
    pub watched: bool,
}

impl Delta {
    pub fn everything() -> Self {
        Delta {
            all: true,
            names: true,
            proxy: true,
            watched: true,
            ..Default::default()
        }
    }
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.services.is_empty()
            && self.backends.is_empty()
            && !self.names
            && !self.proxy
            && !self.watched
    }
}

/// The compiled config: its units, what each depends on, and the plan.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// (Boxed: a B-tree node holds eleven entries inline, and a unit is
    /// 272 bytes; at 100,000 hosts the half-empty nodes cost 20 MB more.)
    units: BTreeMap<Arc<str>, Box<HostUnit>>,
    gateways: GatewayUnit,
    /// service -> the hosts that read its endpoints.
    readers: HashMap<ServiceId, Vec<Arc<str>>>,
    /// Host key -> its place in `plan.hosts`.
    host_pos: HashMap<Arc<str>, usize>,
    /// Notices that are no unit's (validation's, host collection's).
    base_notices: Vec<Notice>,
    notice_count: BTreeMap<NoticeKey, (Notice, u32)>,
    /// Backend address -> how many kernel services' slot tables use it.
    backend_refs: HashMap<AddrKey, u32>,
    checks: ByUnit<SocketAddr, HealthCheckPlan>,
    outliers: ByUnit<String, OutlierPlan>,
    plan: Plan,
}

/// Per key (an endpoint's check, a destination's outlier detection), what
/// each unit asks for; the first unit in order decides.
type ByUnit<K, V> = BTreeMap<K, BTreeMap<UnitKey, V>>;

fn add_unit<K: Ord + Clone, V: Clone>(m: &mut ByUnit<K, V>, unit: &UnitKey, from: &BTreeMap<K, V>) {
    for (k, v) in from {
        m.entry(k.clone())
            .or_default()
            .insert(unit.clone(), v.clone());
    }
}

fn remove_unit<'k, K: Ord + 'k, V>(
    m: &mut ByUnit<K, V>,
    unit: &UnitKey,
    keys: impl Iterator<Item = &'k K>,
) {
    for k in keys {
        if let Some(by) = m.get_mut(k) {
            by.remove(unit);
            if by.is_empty() {
                m.remove(k);
            }
        }
    }
}

/// The backends a service's slot table uses, with where they are (the
/// endpoints' own, shared).
fn service_backends(s: &ServicePlan) -> impl Iterator<Item = &Arc<BackendPlan>> + '_ {
    s.destinations
        .iter()
        .flat_map(|d| &d.tiers)
        .flat_map(|t| &t.endpoints)
        .filter(|e| s.slots.iter().any(|x| x.endpoint == e.addr()))
        .map(|e| &e.backend)
}

/// A unit's key: its host's lower-cased name, the same `Arc` as the
/// host's name when that is lower-case already (one copy of the name for
/// the key, the host, its services and the indexes below).
fn unit_key(key: &str, u: &HostUnit) -> Arc<str> {
    if *u.host.name == *key {
        u.host.name.clone()
    } else {
        key.into()
    }
}

impl Compiled {
    /// Compile every unit and assemble the plan.
    pub fn build(v: &Validated, health: &Health) -> Result<Compiled, ConfigError> {
        let (hosts, host_notices) = virtual_hosts(v);
        let names: Vec<String> = hosts.keys().cloned().collect();
        let vips = vip::allocate(&names, &v.settings.vip_ranges).map_err(|e| {
            settings_error(
                v,
                format!("{e}: use a larger VIP range (RouterConfig spec.vipRanges)"),
            )
        })?;
        let mut units = BTreeMap::new();
        let mut errors = Vec::new();
        // Each host compiles on its own (a unit reads only the validated
        // config and health): on every CPU.
        let each: Vec<_> = hosts.iter().collect();
        let compiled = crate::par::map(&each, |(key, src)| host_unit(v, health, src, vips[*key]));
        for ((key, _), u) in each.into_iter().zip(compiled) {
            match u {
                Ok(u) => {
                    units.insert(unit_key(key, &u), Box::new(u));
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError { errors });
        }
        let gateways = gateway_unit(v, health);
        if let Some(g) = gateways
            .listeners
            .iter()
            .find(|g| g.port == v.settings.proxy.port)
        {
            return Err(ConfigError {
                errors: vec![to_diag(
                    &g.origin,
                    format!(
                        "VirtualGateway {} listens on port {}, the L7 proxy's port (RouterConfig \
                         spec.proxy.port): choose another port for one of them",
                        g.gateway, g.port
                    ),
                )],
            });
        }
        let mut base_notices = v.notices.clone();
        base_notices.extend(host_notices);
        Ok(Compiled::assemble(v, units, gateways, base_notices))
    }

    fn assemble(
        v: &Validated,
        units: BTreeMap<Arc<str>, Box<HostUnit>>,
        gateways: GatewayUnit,
        base_notices: Vec<Notice>,
    ) -> Compiled {
        let mut readers: HashMap<ServiceId, Vec<Arc<str>>> = HashMap::new();
        let mut host_pos = HashMap::new();
        let mut hosts = Vec::with_capacity(units.len());
        let mut services = Vec::new();
        let mut l7 = Vec::new();
        for (i, (key, u)) in units.iter().enumerate() {
            host_pos.insert(key.clone(), i);
            hosts.push(u.host.clone());
            services.extend(u.services.iter().cloned());
            l7.extend(u.l7.iter().cloned());
            for d in &u.deps {
                readers.entry(d.clone()).or_default().push(key.clone());
            }
        }
        // Most services have one reader: a vector of one, not of four.
        for hosts in readers.values_mut() {
            hosts.shrink_to_fit();
        }
        services.sort_by_key(|s| svc_id(s));
        let mut c = Compiled {
            units,
            gateways,
            readers,
            host_pos,
            base_notices,
            notice_count: BTreeMap::new(),
            backend_refs: HashMap::new(),
            checks: BTreeMap::new(),
            outliers: BTreeMap::new(),
            plan: Plan {
                l7,
                gateways: Vec::new(),
                proxy: v.settings.proxy.clone(),
                node: v.settings.node.clone(),
                vip_ranges: v.settings.vip_ranges,
                refuse_unknown_vips: v.settings.refuse_unknown_vips,
                syn_timeout_ms: v.settings.syn_timeout_ms,
                dns: DnsPlan {
                    resolve: crate::config::external::dns_names(&v.config)
                        .into_iter()
                        .collect(),
                    ..v.settings.dns.clone()
                },
                hosts,
                services,
                backends: Vec::new(),
                health_checks: Vec::new(),
                outliers: Vec::new(),
                close_removed: v.settings.close_connections_to_removed_endpoints,
                access_log: access_log(v),
                workloads: crate::config::workloads::pods(&v.config, &v.settings.node.cluster),
                workload_hairpin: v.settings.workload_hairpin,
                notices: Vec::new(),
            },
        };
        c.plan.gateways = c.gateways.listeners.clone();
        // Backends: every endpoint some kernel slot table uses.
        let mut backends: BTreeMap<SocketAddr, Arc<BackendPlan>> = BTreeMap::new();
        for s in &c.plan.services {
            for b in service_backends(s) {
                *c.backend_refs.entry(b.addr.into()).or_insert(0) += 1;
                backends.entry(b.addr).or_insert_with(|| Arc::clone(b));
            }
        }
        c.plan.backends = backends.into_values().collect();
        // Checks, outliers and notices, merged in unit order.
        let keyed: Vec<(UnitKey, &Watch)> = c
            .units
            .iter()
            .map(|(k, u)| (UnitKey::Host(k.clone()), &u.watch))
            .chain(std::iter::once((UnitKey::Gateways, &c.gateways.watch)))
            .collect();
        for (k, w) in keyed {
            add_unit(&mut c.checks, &k, &w.checks);
            add_unit(&mut c.outliers, &k, &w.outliers);
        }
        c.plan.health_checks = c.checks.keys().map(|a| c.merged_check(a)).collect();
        c.plan.outliers = c.outliers.keys().map(|l| c.merged_outlier(l)).collect();
        let all: Vec<Notice> = c
            .base_notices
            .iter()
            .chain(c.units.values().flat_map(|u| &u.notices))
            .cloned()
            .collect();
        for n in all {
            c.count_notice(n, 1);
        }
        c.plan.notices = c.notice_list();
        c
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn into_plan(self) -> Plan {
        self.plan
    }

    /// The hosts that read any of `services`' endpoints.
    pub fn readers_of<'s>(
        &self,
        services: impl IntoIterator<Item = &'s ServiceId>,
    ) -> BTreeSet<Arc<str>> {
        let mut out = BTreeSet::new();
        for s in services {
            if let Some(hosts) = self.readers.get(s) {
                out.extend(hosts.iter().cloned());
            }
        }
        out
    }

    fn merged_check(&self, addr: &SocketAddr) -> HealthCheckPlan {
        self.checks[addr]
            .values()
            .next()
            .cloned()
            .expect("an entry has a source")
    }

    fn merged_outlier(&self, label: &str) -> OutlierPlan {
        let mut it = self.outliers[label].values();
        let mut out = it.next().cloned().expect("an entry has a source");
        for p in it {
            out.endpoints.extend(p.endpoints.iter().copied());
        }
        out.endpoints.sort();
        out.endpoints.dedup();
        out
    }

    fn count_notice(&mut self, n: Notice, add: i32) {
        let key = notice_key(&n);
        let e = self.notice_count.entry(key.clone()).or_insert((n, 0));
        e.1 = (e.1 as i32 + add) as u32;
        if e.1 == 0 {
            self.notice_count.remove(&key);
        }
    }

    fn notice_list(&self) -> Vec<Notice> {
        // Sorted by (file, line, message, resource); equal notices once.
        self.notice_count.values().map(|(n, _)| n.clone()).collect()
    }

    /// Recompile the units that read any of `services` (their endpoints or
    /// health changed), with the same validated config otherwise, and patch
    /// the plan. A unit that no longer compiles rejects the update whole
    /// (nothing changes).
    pub fn update(
        &mut self,
        v: &Validated,
        health: &Health,
        services: &BTreeSet<ServiceId>,
    ) -> Result<Delta, ConfigError> {
        let dirty = self.readers_of(services);
        let gateways_dirty = self.gateways.deps.iter().any(|d| services.contains(d));
        let mut fresh = BTreeMap::new();
        let mut errors = Vec::new();
        for key in &dirty {
            let Some(old) = self.units.get(key) else {
                continue; // the host set changes only with a build
            };
            let Some(src) = old.at.find(v) else {
                continue;
            };
            match host_unit(v, health, &src, (old.host.vip4, old.host.vip6)) {
                Ok(u) => {
                    fresh.insert(key.clone(), u);
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError { errors });
        }
        let gateways = gateways_dirty.then(|| gateway_unit(v, health));
        let mut delta = Delta::default();
        for (key, unit) in fresh {
            self.replace_unit(key, unit, &mut delta);
        }
        if let Some(g) = gateways {
            self.replace_gateways(g, &mut delta);
        }
        if delta.watched {
            self.plan.health_checks = self.checks.keys().map(|a| self.merged_check(a)).collect();
            self.plan.outliers = self
                .outliers
                .keys()
                .map(|l| self.merged_outlier(l))
                .collect();
        }
        Ok(delta)
    }

    fn replace_unit(&mut self, key: Arc<str>, new: HostUnit, delta: &mut Delta) {
        let old = self
            .units
            .remove(&key)
            .expect("only known hosts are updated");
        // Dependencies (sorted lists: most units read one service).
        for d in old
            .deps
            .iter()
            .filter(|d| new.deps.binary_search(d).is_err())
        {
            if let Some(h) = self.readers.get_mut(d) {
                h.retain(|k| *k != key);
                if h.is_empty() {
                    self.readers.remove(d);
                }
            }
        }
        for d in new
            .deps
            .iter()
            .filter(|d| old.deps.binary_search(d).is_err())
        {
            let h = self.readers.entry(d.clone()).or_default();
            if let Err(i) = h.binary_search(&key) {
                h.insert(i, key.clone());
            }
        }
        // The host entry.
        if old.host != new.host {
            let i = self.host_pos[&key];
            self.plan.hosts[i] = new.host.clone();
        }
        let families = |u: &HostUnit| -> Vec<(u16, bool)> {
            u.services
                .iter()
                .map(|s| (s.port, s.vip.is_ipv6()))
                .collect()
        };
        if old.host.ports != new.host.ports || families(&old) != families(&new) {
            delta.names = true;
        }
        // Services and the backends their slot tables use.
        let old_map: BTreeMap<SvcId, &Arc<ServicePlan>> =
            old.services.iter().map(|s| (svc_id(s), s)).collect();
        let new_map: BTreeMap<SvcId, &Arc<ServicePlan>> =
            new.services.iter().map(|s| (svc_id(s), s)).collect();
        let mut touched_backends: BTreeMap<SocketAddr, Option<Arc<BackendPlan>>> = BTreeMap::new();
        for (id, s) in &old_map {
            if new_map.get(id).is_some_and(|n| n == s) {
                continue;
            }
            delta.services.insert(*id);
            delta.replaced.push(Arc::clone(s));
            if s.proxied {
                delta.proxy = true;
            }
            for b in service_backends(s) {
                let k = AddrKey::from(b.addr);
                let n = self.backend_refs.get_mut(&k).expect("counted");
                *n -= 1;
                if *n == 0 {
                    self.backend_refs.remove(&k);
                }
                touched_backends.entry(b.addr).or_insert(None);
            }
            let i = self
                .plan
                .services
                .binary_search_by_key(id, |x| svc_id(x))
                .expect("a unit's services are in the plan");
            self.plan.services.remove(i);
        }
        for (id, s) in &new_map {
            if old_map.get(id).is_some_and(|o| o == s) {
                continue;
            }
            delta.services.insert(*id);
            if s.proxied {
                delta.proxy = true;
            }
            for b in service_backends(s) {
                *self.backend_refs.entry(b.addr.into()).or_insert(0) += 1;
                touched_backends.insert(b.addr, Some(Arc::clone(b)));
            }
            let i = self
                .plan
                .services
                .binary_search_by_key(id, |x| svc_id(x))
                .expect_err("removed above or new");
            self.plan.services.insert(i, Arc::clone(s));
        }
        for (addr, info) in touched_backends {
            let pos = self.plan.backends.binary_search_by_key(&addr, |b| b.addr);
            let live = self.backend_refs.contains_key(&addr.into());
            match (pos, live) {
                (Ok(i), false) => {
                    self.plan.backends.remove(i);
                    delta.backends.insert(addr);
                }
                (Ok(i), true) => {
                    if let Some(b) = info {
                        if self.plan.backends[i] != b {
                            delta.backends.insert(addr);
                        }
                        // The new endpoints' own (the old ones may go).
                        self.plan.backends[i] = b;
                    }
                }
                (Err(i), true) => {
                    let b = info.expect("a new backend comes from a new service");
                    self.plan.backends.insert(i, b);
                    delta.backends.insert(addr);
                }
                (Err(_), false) => {}
            }
        }
        // Proxied host:ports (few: rebuilt whole when one changes).
        if old.l7 != new.l7 {
            delta.proxy = true;
        }
        // Checks, outliers, notices.
        let unit = UnitKey::Host(key.clone());
        if old.watch != new.watch {
            delta.watched = true;
            self.swap_watch(&unit, &old.watch, &new.watch);
        }
        if old.notices != new.notices {
            for n in &old.notices {
                self.count_notice(n.clone(), -1);
            }
            for n in &new.notices {
                self.count_notice(n.clone(), 1);
            }
            self.plan.notices = self.notice_list();
        }
        let l7_changed = old.l7 != new.l7;
        self.units.insert(key, Box::new(new));
        if l7_changed {
            self.plan.l7 = self
                .units
                .values()
                .flat_map(|u| u.l7.iter().cloned())
                .collect();
        }
    }

    fn replace_gateways(&mut self, new: GatewayUnit, delta: &mut Delta) {
        let old = std::mem::replace(&mut self.gateways, new);
        if old.listeners != self.gateways.listeners {
            delta.proxy = true;
            self.plan.gateways = self.gateways.listeners.clone();
        }
        if old.watch != self.gateways.watch {
            delta.watched = true;
            let w = self.gateways.watch.clone();
            self.swap_watch(&UnitKey::Gateways, &old.watch, &w);
        }
    }

    fn swap_watch(&mut self, unit: &UnitKey, old: &Watch, new: &Watch) {
        remove_unit(&mut self.checks, unit, old.checks.keys());
        add_unit(&mut self.checks, unit, &new.checks);
        remove_unit(&mut self.outliers, unit, old.outliers.keys());
        add_unit(&mut self.outliers, unit, &new.outliers);
    }
}

/// The first AccessLogPolicy (in config order) as the proxy applies it.
fn access_log(v: &Validated) -> Option<AccessLogPlan> {
    let p = v.config.access_log_policies.first()?;
    let c = p.spec.config.clone().unwrap_or_default();
    Some(AccessLogPlan {
        policy: p.origin.resource(),
        filters: c
            .filters
            .iter()
            .filter_map(|f| {
                let f = &f.value;
                if let Some(s) = &f.status_code_matcher {
                    use crate::config::model::Comparator;
                    return Some(LogFilter::Status {
                        value: u16::try_from(s.value).unwrap_or(u16::MAX),
                        ge: s.comparator == Comparator::Ge,
                        le: s.comparator == Comparator::Le,
                    });
                }
                let h = f.header_matcher.as_ref()?;
                Some(LogFilter::Header {
                    name: h.name.to_ascii_lowercase(),
                    value: h.value.clone(),
                    regex: h.regex,
                    invert: h.invert_match,
                })
            })
            .collect(),
        request_headers: c
            .included_request_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        response_headers: c
            .included_response_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    })
}
