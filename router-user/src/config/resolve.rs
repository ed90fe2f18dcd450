//! Reference resolution, shared by validation (which reports failures) and
//! the compiler (which only sees configs where it succeeded).
use super::{
    Resource, Resources, Settings,
    inventory::{Inventory, ServiceId, SvcEntry, SvcPort, Target},
    model::*,
};
use crate::plan::Proto;

/// A `forwardTo` destination, resolved.
#[derive(Clone, Debug)]
pub enum Dest<'a> {
    Service {
        svc: &'a SvcEntry,
        port: &'a SvcPort,
        subset: &'a Labels,
    },
    Virtual {
        vd: &'a Resource<VirtualDestinationSpec>,
        port: &'a VdPort,
        subset: &'a Labels,
    },
}

impl Dest<'_> {
    /// The port number a client dials when this destination has no matcher port.
    pub fn front_port(&self) -> u16 {
        match self {
            Dest::Service { port, .. } => port.port,
            Dest::Virtual { port, .. } => port.number,
        }
    }
    pub fn proto(&self) -> Proto {
        match self {
            Dest::Service { port, .. } => port.proto,
            Dest::Virtual { port, .. } => vd_proto(port),
        }
    }
    pub fn label(&self) -> String {
        let subset = |s: &Labels| {
            if s.is_empty() {
                String::new()
            } else {
                let v: Vec<String> = s.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(" subset {}", v.join(","))
            }
        };
        match self {
            Dest::Service {
                svc,
                port,
                subset: s,
            } if svc.id.is_external() => format!(
                "ExternalService {}/{} port {}{}",
                svc.id.namespace,
                svc.id.name,
                port.port,
                subset(s)
            ),
            Dest::Service {
                svc,
                port,
                subset: s,
            } => format!("Service {} port {}{}", svc.id, port.port, subset(s)),
            Dest::Virtual {
                vd,
                port,
                subset: s,
            } => format!(
                "VirtualDestination {}/{} port {}{}",
                vd.namespace(),
                vd.name(),
                port.number,
                subset(s)
            ),
        }
    }
}

/// VirtualDestination port protocol -> transport. HTTP-family protocols ride TCP.
pub fn vd_proto(p: &VdPort) -> Proto {
    transport(p.protocol)
}

/// A Gloo port protocol's transport: UDP, or TCP for everything else.
pub fn transport(p: Option<PortProtocol>) -> Proto {
    if p.is_some_and(PortProtocol::is_udp) {
        Proto::Udp
    } else {
        Proto::Tcp
    }
}

/// Find the Service a destination names. Without a cluster: the node's
/// cluster if it has the Service, else the only cluster that has it.
pub fn find_service<'a>(
    inv: &'a Inventory,
    settings: &Settings,
    r: &ObjectRef,
    ns: &str,
) -> Result<&'a SvcEntry, String> {
    let namespace = r.namespace.clone().unwrap_or_else(|| ns.to_string());
    if let Some(c) = r.cluster.as_ref().filter(|c| !c.is_empty()) {
        let id = ServiceId::new(c, &namespace, &r.name);
        return inv.get(&id).ok_or_else(|| {
            let elsewhere: Vec<String> = inv
                .named(&namespace, &r.name)
                .map(|s| s.id.cluster.to_string())
                .collect();
            let hint = if elsewhere.is_empty() {
                "check the name and namespace, or add the Service and its EndpointSlices to the inventory".to_string()
            } else {
                format!("it exists in cluster(s) {}", elsewhere.join(", "))
            };
            format!("refers to Service {id}, which does not exist: {hint}")
        });
    }
    let matches: Vec<&SvcEntry> = inv.named(&namespace, &r.name).collect();
    if let Some(s) = matches
        .iter()
        .find(|s| !settings.node.cluster.is_empty() && *s.id.cluster == *settings.node.cluster)
    {
        return Ok(s);
    }
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "refers to Service {namespace}/{} (no cluster given), which does not exist in any \
             cluster: check the name and namespace, or add it to the inventory",
            r.name
        )),
        many => Err(format!(
            "refers to Service {namespace}/{} without a cluster, and it exists in several ({}) \
             none of which is this node's cluster: add `cluster:` to the ref",
            r.name,
            many.iter()
                .map(|s| &*s.id.cluster)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The ExternalService a destination names (its inventory entry).
pub fn find_external<'a>(
    inv: &'a Inventory,
    r: &ObjectRef,
    ns: &str,
) -> Result<&'a SvcEntry, String> {
    let id = ServiceId::new("", r.namespace.as_deref().unwrap_or(ns), &r.name);
    inv.get(&id).ok_or_else(|| {
        format!(
            "refers to ExternalService {}/{}, which does not exist: check the name and namespace",
            id.namespace, id.name
        )
    })
}

pub fn find_vd<'a>(
    cfg: &'a Resources,
    r: &ObjectRef,
    ns: &str,
) -> Result<&'a Resource<VirtualDestinationSpec>, String> {
    let namespace = r.namespace.clone().unwrap_or_else(|| ns.to_string());
    cfg.virtual_destinations
        .iter()
        .find(|v| v.name() == r.name && v.namespace() == namespace)
        .ok_or_else(|| {
            format!(
                "refers to VirtualDestination {namespace}/{}, which does not exist: check the \
                 name and namespace",
                r.name
            )
        })
}

/// The VirtualDestination port a destination selects.
pub fn vd_port<'a>(
    vd: &'a Resource<VirtualDestinationSpec>,
    sel: Option<&PortSelector>,
) -> Result<&'a VdPort, String> {
    let ports: Vec<&VdPort> = vd.spec.ports.iter().map(|p| &p.value).collect();
    let known = ports
        .iter()
        .map(|p| p.number.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match sel {
        Some(PortSelector {
            number: Some(n), ..
        }) => ports.into_iter().find(|p| p.number == *n).ok_or_else(|| {
            format!(
                "VirtualDestination {}/{} has no port {n} (its ports: {known})",
                vd.namespace(),
                vd.name()
            )
        }),
        Some(PortSelector { name: Some(n), .. }) => Err(format!(
            "VirtualDestination ports have no names; select port `{n}` by number (its ports: {known})"
        )),
        _ => match ports.as_slice() {
            [one] => Ok(one),
            _ => Err(format!(
                "VirtualDestination {}/{} has several ports ({known}); say which with `port: {{number: N}}`",
                vd.namespace(),
                vd.name()
            )),
        },
    }
}

pub fn resolve_dest<'a>(
    cfg: &'a Resources,
    inv: &'a Inventory,
    settings: &Settings,
    d: &'a DestinationRef,
    ns: &str,
) -> Result<Dest<'a>, String> {
    match d.kind.unwrap_or_default() {
        DestinationKind::Service => {
            let svc = find_service(inv, settings, &d.ref_, ns)?;
            let port = svc.port(d.port.as_ref())?;
            Ok(Dest::Service {
                svc,
                port,
                subset: &d.subset,
            })
        }
        DestinationKind::ExternalService => {
            let svc = find_external(inv, &d.ref_, ns)?;
            let port = svc.port(d.port.as_ref())?;
            Ok(Dest::Service {
                svc,
                port,
                subset: &d.subset,
            })
        }
        DestinationKind::VirtualDestination => {
            let vd = find_vd(cfg, &d.ref_, ns)?;
            let port = vd_port(vd, d.port.as_ref())?;
            Ok(Dest::Virtual {
                vd,
                port,
                subset: &d.subset,
            })
        }
    }
}

/// The port of a service backing a VirtualDestination port: `targetPort` by
/// name or number, else the service port numbered like the VD port, else the
/// service's only port.
pub fn vd_backing_port<'a>(svc: &'a SvcEntry, vp: &VdPort) -> Option<&'a SvcPort> {
    let proto = vd_proto(vp);
    let ok = |p: &&SvcPort| p.proto == proto;
    match &vp.target_port {
        Some(PortSelector { name: Some(n), .. }) => svc
            .ports
            .iter()
            .filter(ok)
            .find(|p| p.name.as_deref() == Some(n) || p.target == Target::Name(n.clone())),
        Some(PortSelector {
            number: Some(n), ..
        }) => svc
            .ports
            .iter()
            .filter(ok)
            .find(|p| p.port == *n || p.target == Target::Number(*n)),
        _ => svc
            .ports
            .iter()
            .filter(ok)
            .find(|p| p.port == vp.number)
            .or_else(
                || match svc.ports.iter().filter(ok).collect::<Vec<_>>().as_slice() {
                    [one] => Some(*one),
                    _ => None,
                },
            ),
    }
}
