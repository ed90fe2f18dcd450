//! Closing clients' connections to endpoints that stopped taking traffic
//! (RouterConfig `closeConnectionsToRemovedEndpoints`). The kernel path
//! chooses an endpoint once, at connect(); a connection (or a connected UDP
//! socket) then stays on it however the plan changes. When asked, the daemon
//! closes them with the kernel's sock_diag SOCK_DESTROY (what `ss -K` does):
//! TCP sockets are reset, connected UDP sockets get ECONNABORTED, and the
//! application reconnects through the VIP to a live endpoint.
//!
//! Only sockets whose cgroup is the attached cgroup or one below it are
//! touched (sock_diag reports each socket's cgroup id, the cgroup2
//! directory's inode number; see [`crate::sockdiag::close_connections`]).
//! Needs CONFIG_INET_DIAG_DESTROY (Debian's kernels have it); without it the
//! daemon logs what it could not close.
use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddr,
    path::Path,
};

use crate::plan::{Plan, ServicePlan};

/// Endpoints the old plan knew that the new one does not route to any more:
/// gone from the inventory, not ready, failing checks or ejected. Endpoints
/// that are healthy but no longer preferred (traffic moved back to a closer
/// tier) keep their connections.
pub fn endpoints_to_close(old: &Plan, new: &Plan) -> BTreeSet<SocketAddr> {
    closed_endpoints(
        old.services.iter().map(|s| &**s),
        new.services.iter().map(|s| &**s),
        new,
    )
}

/// The same, for the services of a plan that changed: `old` as they were,
/// `new` as they are in `plan`. An endpoint some kernel slot table of
/// `plan` uses stays open whatever service it came through.
pub fn closed_endpoints<'a>(
    old: impl IntoIterator<Item = &'a ServicePlan>,
    new: impl IntoIterator<Item = &'a ServicePlan>,
    plan: &Plan,
) -> BTreeSet<SocketAddr> {
    let endpoints = |s: &'a ServicePlan| {
        s.destinations
            .iter()
            .flat_map(|d| &d.tiers)
            .flat_map(|t| &t.endpoints)
    };
    let healthy: BTreeSet<SocketAddr> = new
        .into_iter()
        .flat_map(endpoints)
        .filter(|e| e.healthy)
        .map(|e| e.addr())
        .collect();
    old.into_iter()
        .flat_map(endpoints)
        .map(|e| e.addr())
        .filter(|a| {
            !healthy.contains(a) && plan.backends.binary_search_by_key(a, |b| b.addr).is_err()
        })
        .collect()
}

/// Cgroup ids (inode numbers on cgroup2) of `root` and every cgroup below.
pub fn cgroup_ids(root: &Path) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(m) = std::fs::metadata(&dir) {
            out.insert(m.ino());
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::*;

    fn plan(eps: &[(&str, bool, u32)]) -> Plan {
        let endpoints: Vec<EndpointPlan> = eps
            .iter()
            .map(|(a, healthy, _)| EndpointPlan {
                backend: std::sync::Arc::new(BackendPlan {
                    addr: a.parse().unwrap(),
                    cluster: "c".into(),
                    locality: Locality::default().into(),
                }),
                service: "s".into(),
                healthy: *healthy,
            })
            .collect();
        let backends = eps
            .iter()
            .filter(|e| e.2 > 0)
            .map(|(a, _, _)| {
                std::sync::Arc::new(BackendPlan {
                    addr: a.parse().unwrap(),
                    cluster: "c".into(),
                    locality: Locality::default().into(),
                })
            })
            .collect();
        Plan {
            backends,
            services: vec![std::sync::Arc::new(ServicePlan {
                vip: "240.0.0.1".parse().unwrap(),
                port: 80,
                proto: Proto::Tcp,
                host: "h".into(),
                origin: Origin::default(),
                route: None,
                destinations: vec![DestinationPlan {
                    label: "d".into(),
                    weight: 100,
                    mode: LocalityMode::Off { reason: "".into() },
                    tiers: vec![TierPlan {
                        priority: 0,
                        reason: "".into(),
                        load_percent: 100,
                        panic: false,
                        endpoints,
                    }],
                    excluded: Vec::new(),
                }],
                slots: eps
                    .iter()
                    .filter(|e| e.2 > 0)
                    .map(|(a, _, n)| SlotShare {
                        endpoint: a.parse().unwrap(),
                        slots: *n,
                    })
                    .collect(),
                proxied: false,
                scoped: false,
            })],
            ..Plan::default()
        }
    }

    #[test]
    fn only_endpoints_that_went_away_or_unhealthy_are_closed() {
        let old = plan(&[
            ("10.0.0.1:80", true, 1),
            ("10.0.0.2:80", true, 0),
            ("10.0.0.3:80", true, 1),
        ]);
        // .1 unhealthy, .2 healthy but still unused, .3 gone.
        let new = plan(&[("10.0.0.1:80", false, 0), ("10.0.0.2:80", true, 1)]);
        let got: Vec<String> = endpoints_to_close(&old, &new)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.1:80", "10.0.0.3:80"]);
        // Failing back: the farther endpoint keeps its connections.
        assert!(endpoints_to_close(&new, &old).is_empty());
        // Unhealthy but routed to anyway (panic): kept.
        let panic = plan(&[("10.0.0.1:80", false, 1)]);
        assert!(
            endpoints_to_close(&old, &panic)
                .iter()
                .all(|a| a.to_string() != "10.0.0.1:80")
        );
    }
}
