//! Validated config (+ endpoint health) -> [`Plan`]. Pure and deterministic:
//! the same inputs give the same plan on every node and after every restart.
//!
//! Layers, each a function under a short driver ([`units::Compiled::build`]):
//! virtual hosts and their VIPs ([`virtual_hosts`], [`vip`]) -> per host,
//! port decisions ([`ports`]: the kernel or the proxy) -> kernel services
//! (a route's destinations, weighted by Gloo's remainder rule, endpoints
//! ranked by locality ([`locality`]), one slot table ([`slots`])) and proxy
//! services ([`l7`]) -> the plan, assembled from one [`HostUnit`] per host
//! (backends, checks and notices merged). A change recompiles only the
//! units it feeds ([`units`]).
pub mod checks;
pub mod l7;
pub mod locality;
pub mod ports;
pub mod slots;
pub mod units;
pub mod vip;

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use crate::{
    config::{
        ConfigError, Diagnostic, Resource, Validated, external,
        inventory::{ServiceId, SvcEntry, SvcPort},
        model::*,
        resolve::{self, Dest},
    },
    plan::*,
};
use locality::{Candidate, Ranking};
use slots::Share;

/// Endpoint health from active checks and outlier detection. Endpoints not
/// listed are healthy.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub unhealthy: BTreeSet<SocketAddr>,
    /// What the daemon's resolver found for the external host names (the
    /// endpoints of ExternalServices that resolve by DNS): like health, an
    /// observation of the world, not config. The compiler reads it through
    /// the inventory (`Resources::resolved`), where `Control` puts it.
    pub resolved: crate::config::Resolved,
}

/// Gloo's remainder rule for `forwardTo` weights (percentages):
/// - a single destination takes 100% whatever its weight;
/// - destinations without a weight (0 counts as unset, as in proto3) share
///   what the weighted ones leave of 100, equally (the first ones get the
///   rounding remainder);
/// - if every destination has a weight and they sum to less than 100, the
///   first destination gets the remainder.
///
/// Sums over 100 are rejected by validation.
pub fn effective_weights(ws: &[Option<u32>]) -> Vec<u32> {
    if ws.len() == 1 {
        return vec![100];
    }
    let set: u32 = ws.iter().map(|w| w.unwrap_or(0)).sum::<u32>().min(100);
    let unset: Vec<usize> = (0..ws.len()).filter(|i| ws[*i].unwrap_or(0) == 0).collect();
    let mut out: Vec<u32> = ws.iter().map(|w| w.unwrap_or(0)).collect();
    let rest = 100 - set;
    if unset.len() == ws.len() || (!unset.is_empty() && rest > 0) {
        let each = rest / unset.len() as u32;
        let mut extra = rest % unset.len() as u32;
        for i in &unset {
            out[*i] = each + u32::from(extra > 0);
            extra = extra.saturating_sub(1);
        }
    } else if unset.is_empty() && rest > 0 {
        out[0] += rest;
    }
    out
}

static NO_SUBSET: Labels = Labels::new();

/// What a host:port forwards to: destinations with their weights.
struct PortRouting<'a> {
    origin: Origin,
    route: Option<String>,
    dests: Vec<(Dest<'a>, u32)>,
}

fn to_diag(o: &Origin, msg: String) -> Diagnostic {
    Diagnostic {
        file: o.file.to_string(),
        line: o.line,
        column: 0,
        resource: Some(o.resource()),
        message: msg,
    }
}

/// Compiles one unit (a virtual host, or the gateways), collecting what the
/// unit says and reads on the way.
struct Compiler<'a> {
    v: &'a Validated,
    health: &'a Health,
    notices: Vec<Notice>,
    /// Filled as destinations are visited (`destination` takes `&self`).
    watch: RefCell<checks::Watch>,
    /// The services whose endpoints the unit read: what it depends on.
    touched: RefCell<BTreeSet<ServiceId>>,
}

impl<'a> Compiler<'a> {
    fn notice(&mut self, origin: &Origin, message: String) {
        self.notices.push(Notice {
            origin: origin.clone(),
            message,
        });
    }

    /// A route's destinations (the table's `defaultDestination` when the
    /// route names none) with their effective weights (Gloo's remainder
    /// rule), each resolved or why not.
    pub(super) fn weighted_dests(
        &self,
        rt: &'a Resource<RouteTableSpec>,
        f: &'a ForwardTo,
    ) -> Vec<(Result<Dest<'a>, String>, u32)> {
        let refs: Vec<&'a DestinationRef> = if f.destinations.is_empty() {
            rt.spec
                .default_destination
                .iter()
                .map(|d| &d.value)
                .collect()
        } else {
            f.destinations.iter().map(|d| &d.value).collect()
        };
        let weights = effective_weights(&refs.iter().map(|d| d.weight).collect::<Vec<_>>());
        refs.iter()
            .zip(weights)
            .map(|(d, w)| {
                let d = resolve::resolve_dest(
                    &self.v.config,
                    &self.v.inventory,
                    &self.v.settings,
                    d,
                    rt.namespace(),
                );
                (d, w)
            })
            .collect()
    }

    /// The destinations of [`Self::weighted_dests`] that resolve.
    fn route_dests(
        &self,
        rt: &'a Resource<RouteTableSpec>,
        f: &'a ForwardTo,
    ) -> Vec<(Dest<'a>, u32)> {
        self.weighted_dests(rt, f)
            .into_iter()
            .filter_map(|(d, w)| d.ok().map(|d| (d, w)))
            .collect()
    }

    /// The (service, port, subset) sets behind a destination: one for a
    /// Service, one per selected service with a backing port for a
    /// VirtualDestination.
    fn backing(&self, d: &Dest<'a>) -> Vec<(&'a SvcEntry, &'a SvcPort, &'a Labels)> {
        let out: Vec<_> = match *d {
            Dest::Service { svc, port, subset } => vec![(svc, port, subset)],
            Dest::Virtual { vd, port, subset } => vd
                .spec
                .services
                .iter()
                .flat_map(|sel| self.v.inventory.select(&sel.value))
                .filter_map(|svc| resolve::vd_backing_port(svc, port).map(|p| (svc, p, subset)))
                .collect(),
        };
        let mut touched = self.touched.borrow_mut();
        for (svc, _, _) in &out {
            if !touched.contains(&svc.id) {
                touched.insert(svc.id.clone());
            }
        }
        out
    }

    /// Record the checks and outlier detection that apply to `d`.
    fn watch(&self, d: &Dest<'a>, cands: &[Candidate<'a>]) {
        let applied = crate::config::policy::applied(&self.v.config, d);
        self.watch
            .borrow_mut()
            .visit(d.label(), cands, applied.health, applied.outlier);
    }

    /// Candidate endpoints of one destination in one family.
    fn candidates(&self, d: &Dest<'a>, v6: bool) -> Vec<Candidate<'a>> {
        let mut out: Vec<Candidate<'a>> = self
            .backing(d)
            .into_iter()
            .flat_map(|(svc, port, subset)| {
                let service: Arc<str> = Arc::from(svc.id.to_string());
                svc.endpoints(port, v6, subset)
                    .into_iter()
                    .map(move |(addr, ep)| Candidate {
                        addr,
                        ep,
                        service: service.clone(),
                        healthy: !self.health.unhealthy.contains(&addr),
                    })
            })
            .collect();
        out.sort_by_key(|c| c.addr);
        out.dedup_by_key(|c| c.addr);
        out
    }

    /// Endpoints left out because Kubernetes says they are not ready.
    fn not_ready(&self, d: &Dest<'a>, v6: bool) -> Vec<(SocketAddr, String)> {
        self.backing(d)
            .into_iter()
            .filter(|(svc, _, _)| !svc.publish_not_ready)
            .flat_map(|(svc, port, _)| {
                svc.endpoints_any(port, v6)
                    .into_iter()
                    .filter(|(_, ep)| !ep.ready)
                    .map(move |(addr, ep)| {
                        (
                            addr,
                            format!("not ready ({} {}, {})", svc.id, ep.cluster, ep.locality),
                        )
                    })
            })
            .collect()
    }

    /// Any endpoint (ready or not) of this family behind the destination?
    fn has_family(&self, d: &Dest<'a>, v6: bool) -> bool {
        self.backing(d)
            .iter()
            .any(|(svc, port, _)| !svc.endpoints_any(port, v6).is_empty())
    }

    fn ranking(&self, d: &Dest<'a>) -> Ranking {
        let s = &self.v.settings;
        let applied = crate::config::policy::applied(&self.v.config, d);
        let fp = applied.failover;
        let name = |p: &Resource<FailoverPolicySpec>| {
            format!("FailoverPolicy {}/{}", p.namespace(), p.name())
        };
        if applied.outlier.is_none() && s.locality_requires_outlier_detection {
            return Ranking::Off {
                reason: "no OutlierDetectionPolicy applies, and (as in Istio) locality priorities need \
                         outlier detection; set RouterConfig localityRequiresOutlierDetection: false to \
                         apply them anyway",
            };
        }
        if s.node.locality.region.is_empty() {
            return Ranking::Off {
                reason: "the node's region is not set (RouterConfig spec.region or --region)",
            };
        }
        let Some(fp) = fp else {
            return Ranking::Priority {
                policy: None,
                failover: Vec::new(),
            };
        };
        let cfg = fp.spec.config.clone().unwrap_or_default();
        if let Some(pl) = &cfg.priority_labels {
            return Ranking::Labels {
                policy: name(fp),
                labels: pl.labels.clone(),
            };
        }
        // The first mapping whose `from` matches this node decides.
        let mapping = cfg
            .locality_mappings
            .iter()
            .map(|m| &m.value)
            .find(|m| locality::from_matches(&m.from, &s.node.locality));
        match mapping {
            Some(m) if m.to.iter().any(|t| t.weight.is_some()) => Ranking::Distribute {
                policy: name(fp),
                targets: locality::fill_weights(&m.to),
            },
            Some(m) => Ranking::Priority {
                policy: Some(name(fp)),
                failover: m.to.clone(),
            },
            None => Ranking::Priority {
                policy: Some(name(fp)),
                failover: Vec::new(),
            },
        }
    }

    /// One destination in one family: its tiers (for explain) and each
    /// healthy endpoint's share of the destination's traffic (summing to 1
    /// when any endpoint is healthy, else empty).
    fn destination(
        &self,
        d: &Dest<'a>,
        weight: u32,
        v6: bool,
    ) -> (DestinationPlan, EndpointShares) {
        let cands = self.candidates(d, v6);
        let ranking = self.ranking(d);
        let (mode, tiers) = locality::tiers(
            &self.v.settings.node,
            &cands,
            &ranking,
            self.v.settings.healthy_panic_threshold,
        );
        self.watch(d, &cands);
        let mut shares: BTreeMap<SocketAddr, Share> = BTreeMap::new();
        for t in &tiers {
            let healthy: Vec<&EndpointPlan> = t
                .endpoints
                .iter()
                .filter(|e| e.healthy || t.panic)
                .collect();
            if t.load_percent == 0 || healthy.is_empty() {
                continue;
            }
            let share = Share::new(u128::from(t.load_percent), 100 * healthy.len() as u128);
            for e in healthy {
                let cur = shares.get(&e.addr()).copied().unwrap_or(Share::ZERO);
                shares.insert(e.addr(), cur + share);
            }
        }
        let plan = DestinationPlan {
            label: crate::config::types::intern(&d.label()),
            weight,
            mode,
            tiers,
            excluded: self.not_ready(d, v6),
        };
        (plan, shares.into_iter().collect())
    }

    /// One service (VIP, port, proto) from its routing. Destinations with no
    /// healthy endpoint drop out and the others' weights are renormalised
    /// (a connection cannot be "failed" for a share).
    fn service(
        &self,
        host: &Arc<str>,
        vip: IpAddr,
        port: u16,
        proto: Proto,
        r: &PortRouting<'a>,
    ) -> ServicePlan {
        let v6 = vip.is_ipv6();
        let per_dest: Vec<(DestinationPlan, EndpointShares, u32)> = r
            .dests
            .iter()
            .map(|(d, w)| {
                let (plan, shares) = self.destination(d, *w, v6);
                (plan, shares, *w)
            })
            .collect();
        let live_w: u32 = per_dest
            .iter()
            .filter(|(_, s, w)| *w > 0 && !s.is_empty())
            .map(|(_, _, w)| *w)
            .sum();
        let mut weights: BTreeMap<SocketAddr, Share> = BTreeMap::new();
        for (_, shares, w) in per_dest.iter().filter(|(_, s, w)| *w > 0 && !s.is_empty()) {
            for (addr, s) in shares {
                let scaled = Share::new(s.num * u128::from(*w), s.den * u128::from(live_w));
                let cur = weights.get(addr).copied().unwrap_or(Share::ZERO);
                weights.insert(*addr, cur + scaled);
            }
        }
        let shares: Vec<(SocketAddr, Share)> = weights.into_iter().collect();
        ServicePlan {
            vip,
            port,
            proto,
            host: host.clone(),
            origin: r.origin.clone(),
            route: r.route.clone(),
            destinations: fresh(per_dest.into_iter().map(|(p, _, _)| p)),
            slots: to_slots(&shares),
            proxied: false,
            scoped: false,
        }
    }
}

/// Collect into a new vector of exactly the items. `collect()` from a
/// vector's `into_iter()` reuses that vector's allocation when it can, so a
/// `Vec<Arc<ServicePlan>>` made from a `Vec<ServicePlan>` keeps the 224
/// bytes per item of the original for its 8: for a plan that lives as long
/// as the config, that was 9 MB at 10,000 hosts.
pub(crate) fn fresh<T>(items: impl ExactSizeIterator<Item = T>) -> Vec<T> {
    let mut v = Vec::with_capacity(items.len());
    v.extend(items);
    v
}

/// Each healthy endpoint's share of a destination's traffic.
type EndpointShares = Vec<(SocketAddr, Share)>;

/// Shares -> the slot table (endpoints with at least one slot).
fn to_slots(shares: &[(SocketAddr, Share)]) -> Vec<SlotShare> {
    slots::apportion(shares)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(endpoint, slots)| SlotShare { endpoint, slots })
        .collect()
}

/// An error about the router's own settings, pinned on the RouterConfig
/// (or on the flags, when there is none).
fn settings_error(v: &Validated, message: String) -> ConfigError {
    let (file, line, resource) = match v.config.router() {
        Some(r) => (r.origin.file.to_string(), r.origin.line, Some(r.display())),
        None => ("<flags>".to_string(), 0, None),
    };
    ConfigError {
        errors: vec![Diagnostic {
            file,
            line,
            column: 0,
            resource,
            message,
        }],
    }
}

/// Compile a validated config into a plan.
pub fn compile(v: &Validated, health: &Health) -> Result<Plan, ConfigError> {
    units::Compiled::build(v, health).map(units::Compiled::into_plan)
}

impl<'a> Compiler<'a> {
    fn new(v: &'a Validated, health: &'a Health) -> Self {
        Compiler {
            v,
            health,
            notices: Vec::new(),
            watch: Default::default(),
            touched: Default::default(),
        }
    }
}

/// The key of a host's entry in [`virtual_hosts`]: its lower-cased name,
/// and for a workload-scoped table's host, the table after a space (which
/// sorts before every character of a host name, so that a name's entries
/// stay together, the one for every caller first).
pub fn host_key(name: &str, scoped_by: Option<&Resource<RouteTableSpec>>) -> String {
    match scoped_by {
        None => name.to_ascii_lowercase(),
        Some(rt) => format!(
            "{} {}/{}",
            name.to_ascii_lowercase(),
            rt.namespace(),
            rt.name()
        ),
    }
}

/// Where a virtual host's config comes from.
pub struct HostSrc<'a> {
    /// As first spelled (host names are case-insensitive).
    pub name: String,
    pub vd: Option<&'a Resource<VirtualDestinationSpec>>,
    pub es: Option<&'a Resource<ExternalServiceSpec>>,
    pub rt: Option<&'a Resource<RouteTableSpec>>,
}

/// Virtual hosts: VirtualDestination hosts and east-west route table hosts,
/// by lower-cased name; and notices about hosts that are not served.
pub fn virtual_hosts(v: &Validated) -> (BTreeMap<String, HostSrc<'_>>, Vec<Notice>) {
    let cfg = &v.config;
    let delegated = crate::config::routes::delegated_tables(cfg);
    let mut notices = Vec::new();
    /// Host names are case-insensitive; the first spelling is kept.
    fn host<'m, 'a>(
        hosts: &'m mut BTreeMap<String, HostSrc<'a>>,
        name: &str,
    ) -> &'m mut HostSrc<'a> {
        hosts
            .entry(host_key(name, None))
            .or_insert_with(|| HostSrc {
                name: name.to_string(),
                vd: None,
                es: None,
                rt: None,
            })
    }
    let mut hosts: BTreeMap<String, HostSrc<'_>> = BTreeMap::new();
    for vd in &cfg.virtual_destinations {
        for h in &vd.spec.hosts {
            host(&mut hosts, &h.value).vd = Some(vd);
        }
    }
    for es in &cfg.external_services {
        for h in &es.spec.hosts {
            host(&mut hosts, &h.value).es = Some(es);
        }
    }
    for rt in &cfg.route_tables {
        let key = (rt.namespace().to_string(), rt.name().to_string());
        if delegated.contains_key(&key) {
            continue;
        }
        // Gloo: a table bound to gateways is north-south only, unless it also
        // selects workloads, in which case it serves both entry points.
        if !rt.spec.virtual_gateways.is_empty() && rt.spec.workload_selectors.is_none() {
            continue; // served on its gateways only (see l7::gateways)
        }
        for h in &rt.spec.hosts {
            if h.value.starts_with("*.") {
                let mut o = rt.origin.clone();
                o.line = rt.line_of(h);
                notices.push(Notice {
                    origin: o,
                    message: format!("wildcard host `{}` has no single VIP, so it is not served east-west (it is on a VirtualGateway)", h.value),
                });
                continue;
            }
            match rt.spec.workload_scope() {
                None => host(&mut hosts, &h.value).rt = Some(rt),
                Some(_) => {
                    // A host of its own, with its own VIPs, seen by the
                    // selected workloads only; it shares the name's
                    // VirtualDestination or ExternalService, if any.
                    let shared = hosts.get(&host_key(&h.value, None));
                    let (vd, es) = (shared.and_then(|s| s.vd), shared.and_then(|s| s.es));
                    hosts.insert(
                        host_key(&h.value, Some(rt)),
                        HostSrc {
                            name: h.value.clone(),
                            vd,
                            es,
                            rt: Some(rt),
                        },
                    );
                }
            }
        }
    }
    (hosts, notices)
}

/// Where a host's config is, by position (an update finds it again
/// without collecting every host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAt {
    /// The same `Arc` as the unit's `HostPlan::name`.
    pub name: Arc<str>,
    pub vd: Option<crate::config::store::Pos>,
    pub es: Option<crate::config::store::Pos>,
    pub rt: Option<crate::config::store::Pos>,
}

impl HostAt {
    pub fn of(src: &HostSrc<'_>, name: &Arc<str>) -> Self {
        HostAt {
            name: name.clone(),
            vd: src.vd.map(|r| crate::config::store::Pos::of(&r.origin)),
            es: src.es.map(|r| crate::config::store::Pos::of(&r.origin)),
            rt: src.rt.map(|r| crate::config::store::Pos::of(&r.origin)),
        }
    }

    /// The host's sources in `v` (`None` if one is not there any more).
    pub fn find<'a>(&self, v: &'a Validated) -> Option<HostSrc<'a>> {
        use crate::config::store::at;
        let vd = match &self.vd {
            Some(p) => Some(at(&v.config.virtual_destinations, p)?),
            None => None,
        };
        let es = match &self.es {
            Some(p) => Some(at(&v.config.external_services, p)?),
            None => None,
        };
        let rt = match &self.rt {
            Some(p) => Some(at(&v.config.route_tables, p)?),
            None => None,
        };
        Some(HostSrc {
            name: self.name.to_string(),
            vd,
            es,
            rt,
        })
    }
}

/// One virtual host compiled: everything the plan holds for it, and what
/// it depends on.
#[derive(Clone, Debug)]
pub struct HostUnit {
    pub at: HostAt,
    pub host: Arc<HostPlan>,
    /// Its kernel services and its proxied ones.
    pub services: Vec<Arc<ServicePlan>>,
    /// Its host:ports the proxy serves.
    pub l7: Vec<L7Service>,
    pub notices: Vec<Notice>,
    pub watch: checks::Watch,
    /// The services whose endpoints it read (sorted).
    pub deps: Vec<ServiceId>,
}

/// The VirtualGateway listeners compiled (one unit: they are few).
#[derive(Clone, Debug, Default)]
pub struct GatewayUnit {
    pub listeners: Vec<GatewayListener>,
    pub watch: checks::Watch,
    pub deps: Vec<ServiceId>,
}

/// The gateways' unit.
fn gateway_unit(v: &Validated, health: &Health) -> GatewayUnit {
    let c = Compiler::new(v, health);
    let listeners = c.gateways();
    GatewayUnit {
        listeners,
        watch: c.watch.into_inner(),
        deps: c.touched.into_inner().into_iter().collect(),
    }
}

/// One virtual host: its ports decided (kernel or proxy), its kernel and
/// proxied services, with the VIPs `vips`.
fn host_unit(
    v: &Validated,
    health: &Health,
    src: &HostSrc<'_>,
    (v4, v6): (Ipv4Addr, Ipv6Addr),
) -> Result<HostUnit, Vec<Diagnostic>> {
    let cfg = &v.config;
    let mut c = Compiler::new(v, health);
    let mut services: Vec<ServicePlan> = Vec::new();
    let mut l7 = Vec::new();
    let mut errors = Vec::new();
    // (port, proto) -> routing
    let mut ports: BTreeMap<(u16, Proto), PortRouting<'_>> = BTreeMap::new();
    // One copy of the name for the host and each of its services.
    let name: Arc<str> = src.name.as_str().into();
    let origin;
    if let Some(rt) = src.rt {
        origin = rt.origin.clone();
        let (flat, _) = crate::config::routes::flatten(cfg, rt);
        // Ports: matcher ports, then the destination ports of routes that
        // name no port, then (for a VirtualDestination host) its ports.
        let mut candidates: BTreeSet<u16> = BTreeSet::new();
        for r in &flat {
            let mut any_unported = r.matchers.is_empty();
            for m in &r.matchers {
                match m.named_port() {
                    Some(Some(p)) => {
                        candidates.insert(p);
                    }
                    Some(None) => any_unported = true,
                    None => {}
                }
            }
            if any_unported && let Some(f) = r.forward_to() {
                for (d, _) in c.route_dests(r.table, f) {
                    if d.proto() == Proto::Tcp {
                        candidates.insert(d.front_port());
                    }
                }
            }
        }
        if let Some(vd) = src.vd {
            for p in &vd.spec.ports {
                if resolve::vd_proto(&p.value) == Proto::Tcp {
                    candidates.insert(p.value.number);
                }
            }
        }
        if let Some(es) = src.es {
            for p in &es.spec.ports {
                if external::proto(&p.value) == Proto::Tcp {
                    candidates.insert(p.value.number);
                }
            }
        }
        for p in candidates {
            // A route whose destinations do not resolve (possible only
            // under failureMode ROUTE_REPLACEMENT) answers 500: that takes
            // the proxy.
            let decision = match ports::decide_port(&flat, p, |r| c.http_policy(r)) {
                ports::PortDecision::L4(r)
                    if r.forward_to()
                        .is_some_and(|f| c.resolved(r.table, f).is_err()) =>
                {
                    ports::PortDecision::NeedsL7 {
                        route: r,
                        why: "it is broken (ROUTE_REPLACEMENT)".into(),
                    }
                }
                d => d,
            };
            match decision {
                ports::PortDecision::L4(r) => {
                    let dests = r
                        .forward_to()
                        .map(|f| c.route_dests(r.table, f))
                        .unwrap_or_default();
                    ports.insert(
                        (p, Proto::Tcp),
                        PortRouting {
                            origin: r.origin.clone(),
                            route: Some(r.name.clone()),
                            dests,
                        },
                    );
                }
                ports::PortDecision::NeedsL7 { route, why } => {
                    tracing::debug!(host = %src.name, port = p, route = %route.name, "L7: {why}");
                    // As for L4: the IPv6 VIP serves only if some
                    // route here forwards to IPv6 endpoints.
                    let has6 = flat.iter().filter(|r| r.on_port(p).is_some()).any(|r| {
                        r.forward_to().is_some_and(|f| {
                            c.route_dests(r.table, f)
                                .iter()
                                .any(|(d, _)| c.has_family(d, true))
                        })
                    });
                    let mut vips = vec![IpAddr::V4(v4)];
                    if has6 {
                        vips.push(IpAddr::V6(v6));
                    }
                    // The L7 proxy: a kernel header per VIP that hands
                    // connections to the proxy's one listener; the proxy
                    // recognises the service by VIP:port.
                    for vip in &vips {
                        services.push(ServicePlan {
                            vip: *vip,
                            port: p,
                            proto: Proto::Tcp,
                            host: name.clone(),
                            origin: route.origin.clone(),
                            route: Some(route.name.clone()),
                            destinations: Vec::new(),
                            slots: Vec::new(),
                            proxied: true,
                            scoped: false,
                        });
                    }
                    l7.push(L7Service {
                        host: src.name.clone(),
                        port: p,
                        vips,
                        routes: c.l7_routes(&flat, Some(p)),
                    });
                }
                ports::PortDecision::None => {}
            }
        }
    } else {
        origin = src
            .vd
            .map(|vd| vd.origin.clone())
            .or(src.es.map(|es| es.origin.clone()))
            .unwrap_or_default();
    }
    // VirtualDestination ports the route table does not decide.
    if let Some(vd) = src.vd {
        for p in &vd.spec.ports {
            let proto = resolve::vd_proto(&p.value);
            let key = (p.value.number, proto);
            if src.rt.is_some() && proto == Proto::Tcp {
                continue; // the route table decided (or refused) every TCP port
            }
            ports.entry(key).or_insert_with(|| PortRouting {
                origin: vd.origin.clone(),
                route: None,
                dests: vec![(
                    Dest::Virtual {
                        vd,
                        port: &p.value,
                        subset: &NO_SUBSET,
                    },
                    100,
                )],
            });
        }
    }
    // ExternalService ports the route table does not decide.
    if let Some(svc) = src
        .es
        .and_then(|es| c.v.inventory.get(&external::service_id(es)))
    {
        for sp in &svc.ports {
            if src.rt.is_some() && sp.proto == Proto::Tcp {
                continue;
            }
            ports
                .entry((sp.port, sp.proto))
                .or_insert_with(|| PortRouting {
                    origin: svc.origin.clone(),
                    route: None,
                    dests: vec![(
                        Dest::Service {
                            svc,
                            port: sp,
                            subset: &NO_SUBSET,
                        },
                        100,
                    )],
                });
        }
    }
    let mut served = Vec::new();
    for ((port, proto), r) in &ports {
        let mut made = false;
        for (vip, is6) in [(IpAddr::V4(v4), false), (IpAddr::V6(v6), true)] {
            let family_known = r.dests.iter().any(|(d, _)| c.has_family(d, is6));
            // A v4 service always exists (so a host with no endpoints at all
            // answers EHOSTUNREACH); a v6 one only if v6 endpoints exist.
            if family_known || (!is6 && !r.dests.iter().any(|(d, _)| c.has_family(d, true))) {
                services.push(c.service(&name, vip, *port, *proto, r));
                made = true;
            }
        }
        if made {
            served.push(*port);
        }
        if r.dests.is_empty() {
            errors.push(to_diag(
                &r.origin,
                format!("{}:{port}: no destination resolved", src.name),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    served.extend(l7.iter().map(|l| l.port));
    served.sort();
    served.dedup();
    // An ExternalService whose names have no addresses (yet): resolved by
    // the daemon at run time, so `check` always, and the daemon until an
    // answer comes, serve it without endpoints.
    let unresolved: Vec<String> = src
        .es
        .map(|es| {
            external::names_of(&c.v.config, es)
                .into_iter()
                .filter(|n| c.v.config.resolved.get(n).is_none_or(Vec::is_empty))
                .collect()
        })
        .unwrap_or_default();
    for s in services.iter().filter(|s| !s.proxied && s.slots.is_empty()) {
        let msg = if unresolved.is_empty() {
            format!(
                "{}:{}/{} has no healthy endpoint ({}); connections to it fail with EHOSTUNREACH",
                s.host, s.port, s.proto, s.vip
            )
        } else {
            format!(
                "{}:{}/{} has no endpoint until {} resolve(s): the daemon looks the names up \
                 upstream when it runs (check and explain from files do not); meanwhile \
                 connections to it fail with EHOSTUNREACH",
                s.host,
                s.port,
                s.proto,
                unresolved.join(", ")
            )
        };
        c.notice(&s.origin, msg);
    }
    services.sort_by_key(|a| (a.vip, a.port, a.proto));
    let workload_selectors = src
        .rt
        .and_then(|rt| rt.spec.workload_scope())
        .map(crate::config::workloads::selector_plans)
        .unwrap_or_default();
    if !workload_selectors.is_empty() {
        for s in &mut services {
            s.scoped = true;
        }
    }
    Ok(HostUnit {
        at: HostAt::of(src, &name),
        host: Arc::new(HostPlan {
            name,
            vip4: v4,
            vip6: v6,
            origin,
            ports: served,
            workload_selectors,
        }),
        services: fresh(services.into_iter().map(Arc::new)),
        l7,
        notices: c.notices,
        watch: c.watch.into_inner(),
        deps: c.touched.into_inner().into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remainder_rule() {
        assert_eq!(effective_weights(&[Some(30)]), vec![100]);
        assert_eq!(effective_weights(&[None, None]), vec![50, 50]);
        assert_eq!(effective_weights(&[None, None, None]), vec![34, 33, 33]);
        assert_eq!(effective_weights(&[Some(80), None]), vec![80, 20]);
        assert_eq!(effective_weights(&[Some(60), None, None]), vec![60, 20, 20]);
        assert_eq!(effective_weights(&[Some(50), Some(30)]), vec![70, 30]);
        assert_eq!(effective_weights(&[Some(100), None]), vec![100, 0]);
        assert_eq!(effective_weights(&[Some(0), Some(0)]), vec![50, 50]);
    }
}
