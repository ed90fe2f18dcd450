//! Policies attached to destinations (`applyToDestinations`). One winner per
//! policy type per destination, as Gloo does: the first in config order (files
//! in name order, documents in file order); the others get a notice.
use super::{
    Resource, Resources,
    inventory::{Inventory, selector_matches},
    model::*,
    resolve::Dest,
};

fn selector_hits_dest(sel: &DestinationSelector, d: &Dest<'_>) -> bool {
    let kind_ok = match (sel.kind, d) {
        (None, _) => true,
        (Some(DestinationKind::Service), Dest::Service { svc, .. }) => !svc.id.is_external(),
        (Some(DestinationKind::ExternalService), Dest::Service { svc, .. }) => svc.id.is_external(),
        (Some(DestinationKind::VirtualDestination), Dest::Virtual { .. }) => true,
        _ => false,
    };

    let port_ok = match &sel.port {
        Some(PortSelector {
            number: Some(n), ..
        }) => d.front_port() == *n,
        // By name: a Service's (or ExternalService's) port name;
        // VirtualDestination ports have none.
        Some(PortSelector { name: Some(n), .. }) => match d {
            Dest::Service { port, .. } => port.name.as_deref() == Some(n.as_str()),
            Dest::Virtual { .. } => false,
        },
        _ => true,
    };
    let obj_ok = match (&sel.selector, d) {
        (None, _) => true,
        (Some(s), Dest::Service { svc, .. }) => selector_matches(s, &svc.id, &svc.labels),
        (Some(s), Dest::Virtual { vd, .. }) => {
            s.name.as_ref().is_none_or(|n| n == vd.name())
                && s.namespace.as_ref().is_none_or(|n| n == vd.namespace())
                && s.labels
                    .iter()
                    .all(|(k, v)| vd.meta.labels.get(k) == Some(v))
        }
    };
    kind_ok && port_ok && obj_ok
}

/// Does `sel` select anything at all (for a validation notice)?
pub fn selector_hits(cfg: &Resources, inv: &Inventory, sel: &DestinationSelector) -> bool {
    let svc_hit = || {
        inv.by_name.values().any(|svc| {
            svc.ports.iter().any(|port| {
                selector_hits_dest(
                    sel,
                    &Dest::Service {
                        svc,
                        port,
                        subset: &EMPTY,
                    },
                )
            })
        })
    };
    let vd_hit = || {
        cfg.virtual_destinations.iter().any(|vd| {
            vd.spec.ports.iter().any(|p| {
                selector_hits_dest(
                    sel,
                    &Dest::Virtual {
                        vd,
                        port: &p.value,
                        subset: &EMPTY,
                    },
                )
            })
        })
    };
    svc_hit() || vd_hit()
}

static EMPTY: Labels = Labels::new();

/// The policies that apply to one destination.
#[derive(Clone, Copy, Debug, Default)]
pub struct Applied<'a> {
    pub failover: Option<&'a Resource<FailoverPolicySpec>>,
    pub outlier: Option<&'a Resource<OutlierDetectionPolicySpec>>,
    pub health: Option<&'a Resource<ActiveHealthCheckPolicySpec>>,
}

fn first<'a, S>(
    list: &'a [Resource<S>],
    sels: impl Fn(&'a Resource<S>) -> &'a [Spanned<DestinationSelector>],
    d: &Dest<'_>,
) -> Option<&'a Resource<S>> {
    list.iter()
        .find(|p| sels(p).iter().any(|s| selector_hits_dest(&s.value, d)))
}

pub fn applied<'a>(cfg: &'a Resources, d: &Dest<'_>) -> Applied<'a> {
    Applied {
        failover: first(&cfg.failover_policies, |p| &p.spec.apply_to_destinations, d),
        outlier: first(&cfg.outlier_policies, |p| &p.spec.apply_to_destinations, d),
        health: first(&cfg.health_policies, |p| &p.spec.apply_to_destinations, d),
    }
}
