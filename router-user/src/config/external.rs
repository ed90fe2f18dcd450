//! Gloo's ExternalServices as inventory services: hosts outside the mesh,
//! backed by the ExternalEndpoints an ExternalService selects (static
//! addresses, or host names), else by the addresses its own hosts resolve
//! to. Host names are resolved by the daemon (`dns::Resolver`), which hands
//! the answers in as [`Resources::resolved`]; without an answer (yet) a
//! name gives no endpoint.
//!
//! An external service is an inventory [`SvcEntry`] whose id has no
//! cluster ([`ServiceId::is_external`]), so destinations, locality,
//! failover, outlier detection and health checks treat it as any service.
//! Each of its ports is named (its own name, else `port-<number>`) and
//! every endpoint lists, under that name, the port it is dialled on.
use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use super::{
    Resource, Resources,
    inventory::{
        Ep, EpShared, LABEL_CLUSTER, LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE, ServiceId, SvcEntry,
        SvcPort, Target, endpoint_address_problem,
    },
    model::*,
};
use crate::plan::{Locality, Proto, VipRanges};

/// An ExternalService's inventory id (no cluster: it is in none).
pub fn service_id(es: &Resource<ExternalServiceSpec>) -> ServiceId {
    ServiceId::new("", es.namespace(), es.name())
}

/// The name an ExternalService port goes by in its entry.
pub fn port_name(p: &ExternalPort) -> String {
    p.name
        .clone()
        .unwrap_or_else(|| format!("port-{}", p.number))
}

pub fn proto(p: &ExternalPort) -> Proto {
    super::resolve::transport(p.protocol)
}

/// The ExternalEndpoints `es` selects (by labels, in every namespace, as
/// Gloo's workspace; an empty selector selects none).
pub fn selected<'a>(
    cfg: &'a Resources,
    es: &'a Resource<ExternalServiceSpec>,
) -> impl Iterator<Item = &'a Resource<ExternalEndpointSpec>> {
    cfg.external_endpoints.iter().filter(move |ee| {
        !es.spec.selector.is_empty()
            && es
                .spec
                .selector
                .iter()
                .all(|(k, v)| ee.meta.labels.get(k) == Some(v))
    })
}

/// The port number an ExternalEndpoint serves an ExternalService port on:
/// `targetPort` by name or number, else the endpoint port of the same name,
/// else of the same number, else its only port, else the service port's
/// number. `Err` says why there is none.
pub fn endpoint_port(p: &ExternalPort, ee: &ExternalEndpointSpec) -> Result<u16, String> {
    let by_name = |n: &str| ee.ports.iter().find(|x| x.name.as_deref() == Some(n));
    match &p.target_port {
        Some(PortSelector { name: Some(n), .. }) => by_name(n)
            .map(|x| x.number)
            .ok_or_else(|| format!("has no port named `{n}` (targetPort)")),
        Some(PortSelector {
            number: Some(n), ..
        }) => Ok(*n),
        _ => p
            .name
            .as_deref()
            .and_then(by_name)
            .or_else(|| ee.ports.iter().find(|x| x.number == p.number))
            .or(match ee.ports.as_slice() {
                [one] => Some(one),
                _ => None,
            })
            .map(|x| x.number)
            .or(ee.ports.is_empty().then_some(p.number))
            .ok_or_else(|| {
                format!(
                    "has no port matching port {} (by name or number); give the ExternalService \
                     port a targetPort",
                    p.number
                )
            }),
    }
}

/// An address that is a host name (to resolve), not an IP.
pub fn is_name(address: &str) -> bool {
    address.parse::<IpAddr>().is_err()
}

/// The host names the resolver must look up: the addresses of selected
/// ExternalEndpoints that are names, and the hosts of ExternalServices that
/// select no ExternalEndpoint (sorted, lower case).
pub fn dns_names(cfg: &Resources) -> BTreeSet<String> {
    cfg.external_services
        .iter()
        .flat_map(|es| names_of(cfg, es))
        .collect()
}

/// The names `es`'s endpoints come from (what a resolver answer changes).
pub fn names_of(cfg: &Resources, es: &Resource<ExternalServiceSpec>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut any = false;
    for ee in selected(cfg, es) {
        any = true;
        if is_name(&ee.spec.address) {
            out.insert(ee.spec.address.to_ascii_lowercase());
        }
    }
    if !any {
        out.extend(es.spec.hosts.iter().map(|h| h.value.to_ascii_lowercase()));
    }
    out
}

/// The ports of `es`'s entry (invalid ones are validation's to report).
pub fn ports(es: &Resource<ExternalServiceSpec>) -> Vec<SvcPort> {
    es.spec
        .ports
        .iter()
        .map(|p| {
            let p = &p.value;
            let name = port_name(p);
            SvcPort {
                name: Some(name.clone()),
                port: p.number,
                target: Target::Name(name),
                proto: proto(p),
            }
        })
        .collect()
}

/// What endpoints of one source share: the ports (by the service's port
/// names) and the labels and locality.
fn shared(
    es: &Resource<ExternalServiceSpec>,
    port_of: impl Fn(&ExternalPort) -> Option<u16>,
    labels: &Labels,
    cluster: &str,
) -> Arc<EpShared> {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let locality = Locality {
        region: get(LABEL_REGION),
        zone: get(LABEL_ZONE),
        subzone: get(LABEL_SUBZONE),
    };
    let mut labels = labels.clone();
    if !cluster.is_empty() {
        labels.insert(LABEL_CLUSTER.into(), cluster.to_string());
    }
    Arc::new(EpShared {
        ports: es
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                Some((
                    Some(port_name(&p.value)),
                    port_of(&p.value)?,
                    proto(&p.value),
                ))
            })
            .collect(),
        labels,
        locality: Arc::new(locality),
        cluster: Arc::from(cluster),
    })
}

/// `es`'s endpoints: its ExternalEndpoints' addresses (names as resolved),
/// else its hosts' resolved addresses. Addresses that cannot be endpoints
/// (loopback, a VIP, ...) are left out; validation reports static ones.
pub fn endpoints(cfg: &Resources, es: &Resource<ExternalServiceSpec>, vips: &VipRanges) -> Vec<Ep> {
    let ok = |ip: &IpAddr| endpoint_address_problem(*ip, vips).is_none();
    let mut out = Vec::new();
    let mut any = false;
    for ee in selected(cfg, es) {
        any = true;
        let cluster = ee.meta.cluster_name.clone().unwrap_or_default();
        let common = shared(
            es,
            |p| endpoint_port(p, &ee.spec).ok(),
            &ee.meta.labels,
            &cluster,
        );
        let addrs: Vec<IpAddr> = match ee.spec.address.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => cfg
                .resolved
                .get(&ee.spec.address.to_ascii_lowercase())
                .cloned()
                .unwrap_or_default(),
        };
        out.extend(addrs.into_iter().filter(ok).map(|ip| Ep {
            ip,
            ready: true,
            shared: common.clone(),
        }));
    }
    if !any {
        let target = |p: &ExternalPort| match &p.target_port {
            Some(PortSelector {
                number: Some(n), ..
            }) => Some(*n),
            Some(PortSelector { name: Some(_), .. }) => None,
            _ => Some(p.number),
        };
        let common = shared(es, target, &Labels::new(), "");
        for h in &es.spec.hosts {
            let addrs = cfg.resolved.get(&h.value.to_ascii_lowercase());
            out.extend(
                addrs
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(ok)
                    .map(|ip| Ep {
                        ip,
                        ready: true,
                        shared: common.clone(),
                    }),
            );
        }
    }
    out.sort_by_key(|e| e.ip);
    out.dedup_by_key(|e| e.ip);
    out
}

/// Every ExternalService as an inventory entry.
pub fn entries(cfg: &Resources, vips: &VipRanges) -> Vec<SvcEntry> {
    cfg.external_services
        .iter()
        .map(|es| SvcEntry {
            id: service_id(es),
            origin: es.origin.clone(),
            labels: es.meta.labels.clone(),
            ports: ports(es),
            endpoints: endpoints(cfg, es, vips),
            publish_not_ready: false,
        })
        .collect()
}
