//! The inventory a mesh learns from its clusters: Services and their
//! endpoints (from EndpointSlices), resolved once and indexed for lookup by
//! reference (`by_name`) and by label selector (`select`, a scan: selectors are
//! evaluated at compile time only, never on the connect path).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{EndpointSliceBody, Resources, diag::Diags, model::*};
use crate::plan::{Locality, Origin, Proto, VipRanges};

/// Why `ip` cannot be an endpoint, if it cannot: the kernel would send the
/// cgroup's connections to the client's own host (loopback), to whatever
/// answers on its link (link-local), nowhere (unspecified, multicast), or in
/// a circle (a VIP). Pure.
pub fn endpoint_address_problem(ip: IpAddr, vips: &VipRanges) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("a loopback address (the client's own host)")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some("not a unicast address")
            } else if vips.v4.contains(&v4) {
                Some("inside the IPv4 VIP range")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("a loopback address (the client's own host)")
            } else if v6.is_unicast_link_local() {
                Some("a link-local address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else if v6.to_ipv4_mapped().is_some() {
                Some("an IPv4-mapped address (write the IPv4 address in an IPv4 slice)")
            } else if vips.v6.contains(&v6) {
                Some("inside the IPv6 VIP range")
            } else {
                None
            }
        }
    }
}

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_SUBZONE: &str = "topology.istio.io/subzone";
pub const LABEL_CLUSTER: &str = "topology.istio.io/cluster";

/// `cluster/namespace/name` of a Service. Cheap to clone (three reference
/// counts, no allocation): ids are keys and values of several indexes
/// (`Inventory`, `Live`, the compiler's readers), each a copy per Service;
/// cluster and namespace names are shared by all the ids that have them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    pub cluster: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceId {
    pub fn new(cluster: &str, namespace: &str, name: &str) -> Self {
        ServiceId {
            cluster: super::types::intern(cluster),
            namespace: super::types::intern(namespace),
            name: Arc::from(name),
        }
    }

    /// An ExternalService's entry (in no cluster; see `config::external`).
    pub fn is_external(&self) -> bool {
        self.cluster.is_empty()
    }
}

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_external() {
            write!(f, "{}/{} (external)", self.namespace, self.name)
        } else {
            write!(f, "{}/{}/{}", self.cluster, self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug)]
pub struct SvcPort {
    pub name: Option<String>,
    pub port: u16,
    pub target: Target,
    pub proto: Proto,
}

/// One endpoint address. What its slice says of all its endpoints (ports,
/// cluster) and what endpoints of one locality share (labels) are shared,
/// not copied: a mesh has 100,000 endpoints and a handful of each.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ip: IpAddr,
    pub ready: bool,
    /// What the endpoints of one slice and locality share.
    pub shared: Arc<EpShared>,
}

/// The part of an [`Ep`] its slice's endpoints of one locality share (an
/// `Ep` is 32 bytes: 100,000 of them at the bench's scale). The inventory
/// keeps one of each distinct value ([`SharedParts`]): slices of different
/// Services often have the same ports, labels and locality.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EpShared {
    /// `(port name, port number, protocol)` from the slice.
    pub ports: Vec<(Option<String>, u16, Proto)>,
    /// The slice's labels plus topology labels derived from the locality.
    pub labels: Labels,
    pub locality: Arc<Locality>,
    pub cluster: Arc<str>,
}

impl std::ops::Deref for Ep {
    type Target = EpShared;
    fn deref(&self) -> &EpShared {
        &self.shared
    }
}

#[derive(Clone, Debug)]
pub struct SvcEntry {
    pub id: ServiceId,
    pub origin: Origin,
    pub labels: Labels,
    pub ports: Vec<SvcPort>,
    pub endpoints: Vec<Ep>,
    pub publish_not_ready: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Why: route destinations name services by cluster/namespace/name.
    pub by_name: BTreeMap<ServiceId, SvcEntry>,
    /// Indexes over `by_name` (built once, at the end of `build`): lookups
    /// by namespace/name without a cluster, and by one label, are per
    /// destination; scanning every service for each would make a config of
    /// 10,000 services cost 10^8 comparisons.
    /// (The ids are the `Arc`s `by_ip` shares.)
    /// (Keyed by the ids' own names: no copy of them.)
    by_ns_name: std::collections::HashMap<NsName, Vec<Arc<ServiceId>>>,
    by_label: std::collections::HashMap<(String, String), Vec<Arc<ServiceId>>>,
    /// Endpoint address -> the services it serves (health changes are
    /// reported by address) and how many endpoint entries of services in
    /// a cluster list it (an incremental slice change checks that an
    /// address stays in one cluster by these counts: `config::live`).
    /// (One `Arc` per service, shared by its addresses: 100,000 entries.)
    by_ip: std::collections::HashMap<IpAddr, IpUse>,
    /// Why: at 10,000 slices of the bench's control world, each slice's
    /// own copy of what its endpoints share (ports, labels with their
    /// strings, locality) was 7 MB; most are equal across slices.
    shared: SharedParts,
}

/// One [`EpShared`] of each distinct value the inventory's endpoints use.
#[derive(Clone, Debug, Default)]
struct SharedParts(super::types::Interner<EpShared>);

impl SharedParts {
    /// `ep` with the inventory's copy of what it shares.
    fn intern(&mut self, mut ep: Ep) -> Ep {
        let mine = Arc::clone(&ep.shared);
        ep.shared = self.0.intern(&mine, || Arc::clone(&mine));
        ep
    }
}

/// `(namespace, name)` of Services, sharing the ids' strings.
type NsName = (Arc<str>, Arc<str>);

/// What [`Inventory`] knows of one endpoint address.
#[derive(Clone, Debug, Default)]
struct IpUse {
    /// A boxed slice (16 bytes, exactly as long as it needs), not a vector
    /// (24): an entry of `by_ip` is 48 bytes instead of 56, 1 MB less at
    /// 100,000 addresses. Most addresses serve one service; changes are rare.
    services: Box<[Arc<ServiceId>]>,
    /// Entries of in-cluster services' endpoint lists with this address
    /// (ExternalServices' addresses are outside every cluster).
    listings: u32,
}

impl IpUse {
    fn add(&mut self, id: &Arc<ServiceId>) {
        if !id.is_external() {
            self.listings += 1;
        }
        if !self.services.iter().any(|x| **x == **id) {
            self.edit_services(|v| v.push(id.clone()));
        }
    }

    /// Change the boxed slice as a vector (it stays exactly as long).
    fn edit_services(&mut self, f: impl FnOnce(&mut Vec<Arc<ServiceId>>)) {
        let mut v = std::mem::take(&mut self.services).into_vec();
        f(&mut v);
        self.services = v.into_boxed_slice();
    }
}

/// A Kubernetes port protocol routerd serves (TCP by default).
pub fn parse_proto(p: Option<K8sProtocol>) -> Result<Proto, String> {
    match p.unwrap_or_default() {
        K8sProtocol::Tcp => Ok(Proto::Tcp),
        K8sProtocol::Udp => Ok(Proto::Udp),
        K8sProtocol::Sctp => Err("protocol SCTP is not supported; expected TCP or UDP".into()),
    }
}

fn valid_port(n: u32) -> Option<u16> {
    (1..=65535).contains(&n).then_some(n as u16)
}

impl SvcEntry {
    /// A service port chosen by a Gloo `PortSelector` (number = the Service's
    /// `port`, or its name). `None` is allowed only for single-port services.
    pub fn port(&self, sel: Option<&PortSelector>) -> Result<&SvcPort, String> {
        let known = || {
            self.ports
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{} ({n})", p.port),
                    None => p.port.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match sel {
            Some(PortSelector {
                number: Some(n), ..
            }) => self.ports.iter().find(|p| p.port == *n).ok_or_else(|| {
                format!(
                    "Service {} has no port {n} (its ports: {})",
                    self.id,
                    known()
                )
            }),
            Some(PortSelector {
                name: Some(name), ..
            }) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .ok_or_else(|| {
                    format!(
                        "Service {} has no port named `{name}` (its ports: {})",
                        self.id,
                        known()
                    )
                }),
            _ => match self.ports.as_slice() {
                [one] => Ok(one),
                [] => Err(format!("Service {} has no ports", self.id)),
                _ => Err(format!(
                    "Service {} has several ports ({}); the destination must say which with \
                     `port: {{number: N}}` or `port: {{name: NAME}}`",
                    self.id,
                    known()
                )),
            },
        }
    }

    /// Endpoints of `port` in the given family whose labels contain `subset`.
    /// Not-ready endpoints are left out (as Kubernetes and Istio do) unless the
    /// Service publishes not-ready addresses.
    pub fn endpoints(&self, port: &SvcPort, v6: bool, subset: &Labels) -> Vec<(SocketAddr, &Ep)> {
        self.endpoints_where(port, v6, |ep| {
            (ep.ready || self.publish_not_ready)
                && subset.iter().all(|(k, v)| ep.labels.get(k) == Some(v))
        })
    }

    /// Every endpoint of `port` in the family, ready or not.
    pub fn endpoints_any(&self, port: &SvcPort, v6: bool) -> Vec<(SocketAddr, &Ep)> {
        self.endpoints_where(port, v6, |_| true)
    }

    fn endpoints_where(
        &self,
        port: &SvcPort,
        v6: bool,
        keep: impl Fn(&Ep) -> bool,
    ) -> Vec<(SocketAddr, &Ep)> {
        let mut out = Vec::new();
        for ep in &self.endpoints {
            if ep.ip.is_ipv6() != v6 || !keep(ep) {
                continue;
            }
            // Slice ports carry the Service port's name and the resolved target
            // number; fall back to the target number for unnamed ports.
            let by_name = ep
                .ports
                .iter()
                .find(|(n, _, pr)| *n == port.name && *pr == port.proto);
            let by_number = || match &port.target {
                Target::Number(t) => ep
                    .ports
                    .iter()
                    .find(|(_, p, pr)| p == t && *pr == port.proto),
                Target::Name(_) => None,
            };
            if let Some((_, p, _)) = by_name.or_else(by_number) {
                out.push((SocketAddr::new(ep.ip, *p), ep));
            }
        }
        out.sort_by_key(|(a, _)| *a);
        out.dedup_by_key(|(a, _)| *a);
        out
    }
}

pub fn selector_matches(sel: &ObjectSelector, id: &ServiceId, labels: &Labels) -> bool {
    sel.name.as_deref().is_none_or(|n| n == &*id.name)
        && sel.namespace.as_deref().is_none_or(|n| n == &*id.namespace)
        && sel.cluster.as_deref().is_none_or(|c| c == &*id.cluster)
        && sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// An inventory object's cluster (`metadata.clusterName`, required).
fn cluster_of<S>(r: &super::Resource<S>, diags: &mut Diags) -> Option<String> {
    let c = r.meta.cluster_name.clone().filter(|c| !c.is_empty());
    if c.is_none() {
        diags.push(
            &r.origin.file,
            r.origin.line,
            Some(r.display()),
            format!(
                "metadata.clusterName is required on inventory objects: name the cluster this {} \
             was discovered in",
                r.origin.kind
            ),
        );
    }
    c
}

impl Inventory {
    pub fn get(&self, id: &ServiceId) -> Option<&SvcEntry> {
        self.by_name.get(id)
    }

    /// The Services (never ExternalServices) `sel` selects.
    pub fn select<'a>(
        &'a self,
        sel: &'a ObjectSelector,
    ) -> Box<dyn Iterator<Item = &'a SvcEntry> + 'a> {
        Box::new(self.select_any(sel).filter(|s| !s.id.is_external()))
    }

    fn select_any<'a>(
        &'a self,
        sel: &'a ObjectSelector,
    ) -> Box<dyn Iterator<Item = &'a SvcEntry> + 'a> {
        let narrowed: Option<&Vec<Arc<ServiceId>>> = match (&sel.namespace, &sel.name) {
            (Some(ns), Some(n)) => Some(
                self.by_ns_name
                    .get(&(Arc::from(ns.as_str()), Arc::from(n.as_str())))
                    .unwrap_or(&NONE),
            ),
            _ => sel
                .labels
                .iter()
                .next()
                .map(|(k, v)| self.by_label.get(&(k.clone(), v.clone())).unwrap_or(&NONE)),
        };
        match narrowed {
            // The index keeps `by_name`'s order (ids sorted).
            Some(ids) => Box::new(
                ids.iter()
                    .filter_map(|id| self.by_name.get(&**id))
                    .filter(move |s| selector_matches(sel, &s.id, &s.labels)),
            ),
            None => Box::new(
                self.by_name
                    .values()
                    .filter(move |s| selector_matches(sel, &s.id, &s.labels)),
            ),
        }
    }

    /// Services called `name` in `namespace`, in any cluster (sorted; not
    /// ExternalServices).
    pub fn named(&self, namespace: &str, name: &str) -> impl Iterator<Item = &SvcEntry> {
        self.by_ns_name
            .get(&(Arc::from(namespace), Arc::from(name)))
            .unwrap_or(&NONE)
            .iter()
            .filter(|id| !id.is_external())
            .filter_map(|id| self.by_name.get(&**id))
    }

    /// The services `ip` is an endpoint of.
    pub fn services_with_ip(&self, ip: IpAddr) -> impl Iterator<Item = &ServiceId> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flat_map(|u| &u.services)
            .map(|id| &**id)
    }

    /// The cluster an endpoint address is in, and how many endpoint
    /// entries of services in clusters list it (None: none does).
    pub fn listings(&self, ip: IpAddr) -> Option<(&str, u32)> {
        let u = self.by_ip.get(&ip).filter(|u| u.listings > 0)?;
        let id = u.services.iter().find(|id| !id.is_external())?;
        Some((&id.cluster, u.listings))
    }

    /// Replace a service's endpoints (its slices changed); the old ones.
    pub fn set_endpoints(&mut self, id: &ServiceId, endpoints: Vec<Ep>) -> Vec<Ep> {
        let Some(entry) = self.by_name.get_mut(id) else {
            return Vec::new();
        };
        for ep in &entry.endpoints {
            if let Some(u) = self.by_ip.get_mut(&ep.ip) {
                if u.services.iter().any(|x| **x == *id) {
                    u.edit_services(|v| v.retain(|x| **x != *id));
                }
                if !id.is_external() {
                    u.listings -= 1;
                }
                if u.services.is_empty() && u.listings == 0 {
                    self.by_ip.remove(&ep.ip);
                }
            }
        }
        let shared = Arc::new(id.clone());
        for ep in &endpoints {
            self.by_ip.entry(ep.ip).or_default().add(&shared);
        }
        let endpoints = endpoints
            .into_iter()
            .map(|ep| self.shared.intern(ep))
            .collect();
        std::mem::replace(&mut entry.endpoints, endpoints)
    }

    fn index(&mut self) {
        for (id, s) in &self.by_name {
            let shared = Arc::new(id.clone());
            for ep in &s.endpoints {
                self.by_ip.entry(ep.ip).or_default().add(&shared);
            }
            self.by_ns_name
                .entry((id.namespace.clone(), id.name.clone()))
                .or_default()
                .push(shared.clone());
            for (k, v) in &s.labels {
                self.by_label
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .push(shared.clone());
            }
        }
        // Most namespace/name pairs and many labels (`app`) name one
        // service: a vector of one, not of four.
        for ids in self
            .by_ns_name
            .values_mut()
            .chain(self.by_label.values_mut())
        {
            ids.shrink_to_fit();
        }
    }

    /// Build from Services and EndpointSlices, reporting malformed ones.
    pub fn build(cfg: &Resources, vips: &VipRanges, diags: &mut Diags) -> Inventory {
        let mut inv = Inventory::default();
        for svc in &cfg.services {
            let o = &svc.origin;
            let res = Some(svc.display());
            let Some(cluster) = cluster_of(svc, diags) else {
                continue;
            };
            let id = ServiceId::new(&cluster, &o.namespace, &svc.meta.name);
            // Exactly as many as written: pushed one by one into an empty
            // vector, one port took the room of four (2 MB at 10,000
            // Services).
            let mut ports = Vec::with_capacity(svc.spec.ports.len());
            let mut names = BTreeSet::new();
            for p in &svc.spec.ports {
                let line = svc.line_of(p);
                let p = &p.value;
                let Some(port) = valid_port(u32::from(p.port)) else {
                    diags.push(
                        &o.file,
                        line,
                        res.clone(),
                        format!("port {} is out of range 1-65535", p.port),
                    );
                    continue;
                };
                let proto = match parse_proto(p.protocol) {
                    Ok(pr) => pr,
                    Err(e) => {
                        diags.push(&o.file, line, res.clone(), e);
                        continue;
                    }
                };
                if !names.insert(p.name.clone()) {
                    diags.push(
                        &o.file,
                        line,
                        res.clone(),
                        format!(
                            "port name {:?} is used twice; each port needs a distinct name",
                            p.name
                        ),
                    );
                }
                let target = match &p.target_port {
                    None => Target::Number(port),
                    Some(IntOrString::Int(n)) => match valid_port(*n) {
                        Some(t) => Target::Number(t),
                        None => {
                            diags.push(
                                &o.file,
                                line,
                                res.clone(),
                                format!("targetPort {n} is out of range 1-65535"),
                            );
                            continue;
                        }
                    },
                    Some(IntOrString::Str(s)) => match s.parse::<u32>().ok().and_then(valid_port) {
                        Some(t) => Target::Number(t),
                        None => Target::Name(s.clone()),
                    },
                };
                ports.push(SvcPort {
                    name: p.name.clone(),
                    port,
                    target,
                    proto,
                });
            }
            if inv.by_name.contains_key(&id) {
                diags.push(
                    &o.file,
                    o.line,
                    res,
                    format!("Service {id} is defined twice"),
                );
                continue;
            }
            inv.by_name.insert(
                id.clone(),
                SvcEntry {
                    id,
                    origin: o.clone(),
                    labels: svc.meta.labels.clone(),
                    ports,
                    endpoints: Vec::new(),
                    publish_not_ready: svc.spec.publish_not_ready_addresses.unwrap_or(false),
                },
            );
        }

        let mut owners = IpOwners::default();
        for es in &cfg.endpoint_slices {
            let Some((id, eps)) = slice_endpoints(es, vips, diags) else {
                continue;
            };
            let Some(entry) = inv.by_name.get_mut(&id) else {
                diags.push(
                    &es.origin.file,
                    es.origin.line,
                    Some(es.display()),
                    format!(
                        "belongs to Service {id} (label {LABEL_SERVICE_NAME}), which is not in the \
                     inventory: add the Service or fix the label"
                    ),
                );
                continue;
            };
            for (line, ep) in eps {
                match owners.claim(ep.ip, &ep.cluster, es) {
                    Ok(()) => entry.endpoints.push(inv.shared.intern(ep)),
                    Err(e) => diags.push(&es.origin.file, line, Some(es.display()), e),
                }
            }
        }
        for e in super::external::entries(cfg, vips) {
            inv.by_name.insert(e.id.clone(), e);
        }
        for s in inv.by_name.values_mut() {
            s.endpoints.shrink_to_fit();
        }
        inv.index();
        inv
    }
}

static NONE: Vec<Arc<ServiceId>> = Vec::new();

/// Which cluster an endpoint address belongs to: the first slice (in config
/// order) that lists it. The router reaches endpoints by address, so one
/// address in two clusters is an error, reported on the later slice.
#[derive(Default)]
struct IpOwners(std::collections::HashMap<IpAddr, (String, String)>);

impl IpOwners {
    fn claim(
        &mut self,
        ip: IpAddr,
        cluster: &str,
        es: &super::Resource<EndpointSliceBody>,
    ) -> Result<(), String> {
        match self.0.get(&ip) {
            Some((other_cluster, _)) if other_cluster == cluster => Ok(()),
            Some((other_cluster, other_res)) => Err(ip_conflict(ip, other_cluster, other_res)),
            None => {
                self.0.insert(ip, (cluster.to_string(), es.display()));
                Ok(())
            }
        }
    }
}

pub fn ip_conflict(ip: IpAddr, other_cluster: &str, other_res: &str) -> String {
    format!(
        "endpoint {ip} also appears in cluster {other_cluster} ({other_res}); the router \
         reaches endpoints by address, so clusters need non-overlapping endpoint addresses"
    )
}

/// The Service a slice belongs to (by its cluster, namespace and service
/// label), if it names one.
pub fn slice_service(es: &super::Resource<EndpointSliceBody>) -> Option<ServiceId> {
    Some(ServiceId::new(
        es.meta.cluster_name.as_deref().filter(|c| !c.is_empty())?,
        &es.origin.namespace,
        es.meta.labels.get(LABEL_SERVICE_NAME)?,
    ))
}

/// One slice's endpoints with the line each is on, or `None` (with the
/// reason in `diags`) for a slice that gives none. Addresses that cannot be
/// endpoints are reported and left out. The slice's Service is `id`.
pub fn slice_endpoints(
    es: &super::Resource<EndpointSliceBody>,
    vips: &VipRanges,
    diags: &mut Diags,
) -> Option<(ServiceId, Vec<(u64, Ep)>)> {
    let o = &es.origin;
    let res = Some(es.display());
    let cluster = cluster_of(es, diags)?;
    let Some(svc_name) = es.meta.labels.get(LABEL_SERVICE_NAME) else {
        diags.push(
            &o.file,
            o.line,
            res,
            format!(
                "missing label `{LABEL_SERVICE_NAME}`: an EndpointSlice names its Service with it"
            ),
        );
        return None;
    };
    let id = ServiceId::new(&cluster, &o.namespace, svc_name);
    let v6 = match es.spec.address_type {
        AddressType::IPv4 => false,
        AddressType::IPv6 => true,
        AddressType::Fqdn => {
            diags.push(
                &o.file,
                o.line,
                res,
                "addressType FQDN is not supported; expected IPv4 or IPv6".to_string(),
            );
            return None;
        }
    };
    let mut ports = Vec::new();
    for p in &es.spec.ports {
        match (valid_port(u32::from(p.port)), parse_proto(p.protocol)) {
            (Some(n), Ok(pr)) => ports.push((p.name.clone(), n, pr)),
            (None, _) => diags.push(
                &o.file,
                o.line,
                res.clone(),
                format!("port {} is out of range 1-65535", p.port),
            ),
            (_, Err(e)) => diags.push(&o.file, o.line, res.clone(), e),
        }
    }
    let slice_locality = |key: &str, ep: &super::SliceEndpoint| {
        ep.deprecated_topology()
            .get(key)
            .or_else(|| es.meta.labels.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let cluster_arc: Arc<str> = Arc::from(cluster.as_str());
    // Endpoints of one locality share their ports, locality and labels.
    let mut shared: BTreeMap<Locality, Arc<EpShared>> = BTreeMap::new();
    let mut out = Vec::new();
    for ep in &es.spec.endpoints {
        let line = u64::from(ep.line);
        let locality = Locality {
            region: slice_locality(LABEL_REGION, ep),
            zone: ep
                .zone
                .as_deref()
                .map_or_else(|| slice_locality(LABEL_ZONE, ep), str::to_string),
            subzone: slice_locality(LABEL_SUBZONE, ep),
        };
        let common = shared
            .entry(locality)
            .or_insert_with_key(|locality| {
                let mut labels = es.meta.labels.clone();
                labels.remove(LABEL_SERVICE_NAME);
                labels.insert(LABEL_CLUSTER.into(), cluster.clone());
                for (k, v) in [
                    (LABEL_REGION, &locality.region),
                    (LABEL_ZONE, &locality.zone),
                    (LABEL_SUBZONE, &locality.subzone),
                ] {
                    if !v.is_empty() {
                        labels.insert(k.into(), v.clone());
                    }
                }
                Arc::new(EpShared {
                    ports: ports.clone(),
                    labels,
                    locality: Arc::new(locality.clone()),
                    cluster: cluster_arc.clone(),
                })
            })
            .clone();
        let ready = ep.ready;
        if ep.addresses().next().is_none() {
            diags.push(&o.file, line, res.clone(), "endpoint has no addresses");
        }
        for a in ep.addresses() {
            let ip: IpAddr = match a {
                super::Address::Ip(ip) => *ip,
                super::Address::NotAnIp(a) => {
                    diags.push(
                        &o.file,
                        line,
                        res.clone(),
                        format!("`{a}` is not an IP address"),
                    );
                    continue;
                }
            };
            if let Some(why) = endpoint_address_problem(ip, vips) {
                diags.push(
                    &o.file,
                    line,
                    res.clone(),
                    format!(
                        "endpoint address {ip} is {why}: the router would send \
                         connections there; endpoints must be unicast addresses of pods \
                         or hosts"
                    ),
                );
                continue;
            }
            if ip.is_ipv6() != v6 {
                diags.push(
                    &o.file,
                    line,
                    res.clone(),
                    format!(
                        "address {ip} does not match addressType {}",
                        es.spec.address_type
                    ),
                );
                continue;
            }
            out.push((
                line,
                Ep {
                    ip,
                    ready,
                    shared: common.clone(),
                },
            ));
        }
    }
    Some((id, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, zone: &str) -> Ep {
        Ep {
            ip: ip.parse().unwrap(),
            ready: true,
            shared: Arc::new(EpShared {
                ports: vec![(Some("http".into()), 8080, Proto::Tcp)],
                labels: Labels::default(),
                locality: Arc::new(Locality {
                    region: "r1".into(),
                    zone: zone.into(),
                    subzone: String::new(),
                }),
                cluster: Arc::from("c1"),
            }),
        }
    }

    #[test]
    fn equal_shared_parts_are_kept_once_and_unused_ones_are_swept() {
        let mut parts = SharedParts::default();
        let a = parts.intern(ep("10.0.0.1", "z1"));
        let b = parts.intern(ep("10.0.0.2", "z1"));
        let c = parts.intern(ep("10.0.0.3", "z2"));
        assert!(Arc::ptr_eq(&a.shared, &b.shared), "equal values: one copy");
        assert!(!Arc::ptr_eq(&a.shared, &c.shared), "z2 is another value");
        assert_eq!(parts.0.len(), 2);
        // Values that no endpoint keeps (churn through many zones) do not
        // pile up: the set is swept when it has doubled.
        for i in 0..1000 {
            drop(parts.intern(ep("10.0.0.9", &format!("gone{i}"))));
        }
        assert!(parts.0.len() <= 2 * 2 + 64 + 1, "{}", parts.0.len());
        for kept in [&a, &c] {
            assert!(parts.0.contains(&kept.shared), "values in use stay");
        }
        let again = parts.intern(ep("10.0.0.4", "z2"));
        assert!(Arc::ptr_eq(&again.shared, &c.shared));
    }
}
