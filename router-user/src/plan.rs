//! The Plan: everything the datapath needs, computed from config (and, later,
//! endpoint health). A plain, deterministic, serialisable value: the seam for
//! tests (compile config to a Plan and assert on it without a kernel; sync a
//! Plan to maps and assert on the kernel's behaviour).
//!
//! Layers, in linkerd's words: a *logical* target is a virtual host and port
//! ([`ServicePlan`]); it resolves to *concrete* backend sets
//! ([`DestinationPlan`], one per `forwardTo` destination); each of those to
//! *endpoints* ranked in locality tiers ([`TierPlan`]). The kernel sees only
//! the flattened result: a slot table per service ([`ServicePlan::slots`]).
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Where a node or endpoint is. Empty strings mean "not set".
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &str| {
            if s.is_empty() {
                "*".to_string()
            } else {
                s.to_string()
            }
        };
        write!(
            f,
            "{}/{}/{}",
            part(&self.region),
            part(&self.zone),
            part(&self.subzone)
        )
    }
}

/// The node the daemon runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub cluster: String,
    pub locality: Locality,
    /// Labels of the node's workloads, for `priorityLabels` failover.
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => router_common::PROTO_TCP,
            Proto::Udp => router_common::PROTO_UDP,
        }
    }
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            router_common::PROTO_TCP => Some(Proto::Tcp),
            router_common::PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Where a piece of the plan came from: `Kind namespace/name` at `file:line`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub file: String,
    pub line: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} ({}:{})",
            self.kind, self.namespace, self.name, self.file, self.line
        )
    }
}

/// The two VIP ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRanges {
    pub v4: Ipv4Net,
    pub v6: Ipv6Net,
}

impl Default for VipRanges {
    fn default() -> Self {
        VipRanges {
            // Istio's auto-allocation ranges (class E and the IPv6 benchmarking
            // prefix): never routed on the internet.
            v4: "240.240.0.0/16".parse().unwrap(),
            v6: "2001:2::/48".parse().unwrap(),
        }
    }
}

/// One virtual host name and its VIPs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// The resource that defines the name (VirtualDestination or RouteTable).
    pub origin: Origin,
    /// Ports served (at L4) on this host.
    pub ports: Vec<u16>,
}

/// One `(VIP, port, protocol)`: a header and a slot table in the kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// Virtual host name.
    pub host: String,
    /// The resource (and route, for route tables) that decided this.
    pub origin: Origin,
    pub route: Option<String>,
    pub destinations: Vec<DestinationPlan>,
    /// The slot table, as `(endpoint, number of slots)`, sorted by endpoint.
    /// Empty: no healthy endpoint, connect() fails with EHOSTUNREACH.
    pub slots: Vec<SlotShare>,
}

impl ServicePlan {
    pub fn total_slots(&self) -> u32 {
        self.slots.iter().map(|s| s.slots).sum()
    }
    pub fn label(&self) -> String {
        format!(
            "{}:{}/{} ({})",
            self.host,
            self.port,
            self.proto,
            sock(self.vip, self.port)
        )
    }
}

pub fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotShare {
    pub endpoint: SocketAddr,
    pub slots: u32,
}

/// How locality was applied to one destination, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalityMode {
    /// No locality preference: every healthy endpoint gets an equal share.
    Off { reason: String },
    /// Istio's priorities (P0 same subzone ... Pn anywhere), with failover
    /// mappings when a FailoverPolicy gives them.
    Priority { policy: Option<String> },
    /// `priorityLabels`: ranked by how many of the node's labels match.
    Labels { policy: String, labels: Vec<String> },
    /// `localityMappings` with weights: traffic distributed across localities.
    Distribute { policy: String },
}

/// One `forwardTo` destination (a concrete backend set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestinationPlan {
    /// E.g. `VirtualDestination bookinfo/app-b port 8080` or
    /// `Service cluster-1/default/app-a port 8080`.
    pub label: String,
    /// Share of the service's traffic, out of the sum over its destinations.
    pub weight: u32,
    pub mode: LocalityMode,
    pub tiers: Vec<TierPlan>,
    /// Endpoints of the destination that take no traffic, and why (not ready).
    pub excluded: Vec<(SocketAddr, String)>,
}

/// A group of endpoints with the same rank.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierPlan {
    /// Rank after compaction (0 is preferred).
    pub priority: u32,
    /// Why these endpoints share this rank (e.g. "same region and zone").
    pub reason: String,
    /// Percentage of the destination's traffic this tier receives (Envoy's
    /// priority load with overprovisioning factor 1.4, or a distribute weight).
    pub load_percent: u32,
    pub endpoints: Vec<EndpointPlan>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPlan {
    pub addr: SocketAddr,
    pub cluster: String,
    pub locality: Locality,
    /// Service (cluster/namespace/name) this endpoint belongs to.
    pub service: String,
    pub healthy: bool,
}

/// Something in the config the plan does not serve, or a warning about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} {}/{}: {}",
            self.origin.file,
            self.origin.line,
            self.origin.kind,
            self.origin.namespace,
            self.origin.name,
            self.message
        )
    }
}

/// One endpoint as the kernel's backend table knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendPlan {
    pub addr: SocketAddr,
    pub cluster: String,
    pub locality: Locality,
}

/// DNS for virtual hosts (README, "Names").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsPlan {
    /// Serve DNS at all.
    pub enabled: bool,
    /// Send port-53 traffic of the attached cgroup to the listener.
    pub capture: bool,
    /// Listener addresses (IPv4 always; IPv6 optional) and port.
    pub listen4: Ipv4Addr,
    pub listen6: Option<Ipv6Addr>,
    pub port: u16,
    /// TTL of answers for virtual hosts, seconds.
    pub ttl: u32,
    /// Upstream resolvers; empty: the node's resolv.conf.
    pub upstreams: Vec<SocketAddr>,
}

impl Default for DnsPlan {
    fn default() -> Self {
        DnsPlan {
            enabled: true,
            capture: true,
            listen4: Ipv4Addr::new(127, 0, 0, 153),
            listen6: None,
            port: 53,
            ttl: 5,
            upstreams: Vec::new(),
        }
    }
}

impl DnsPlan {
    pub fn listeners(&self) -> Vec<SocketAddr> {
        let mut v = vec![SocketAddr::new(self.listen4.into(), self.port)];
        v.extend(self.listen6.map(|a| SocketAddr::new(a.into(), self.port)));
        v
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub node: NodeInfo,
    pub vip_ranges: VipRanges,
    /// Refuse connections into the VIP ranges that match no service.
    pub refuse_unknown_vips: bool,
    pub dns: DnsPlan,
    /// Sorted by name.
    pub hosts: Vec<HostPlan>,
    /// Sorted by (vip, port, proto).
    pub services: Vec<ServicePlan>,
    /// Every endpoint some slot table uses, sorted by address.
    pub backends: Vec<BackendPlan>,
    pub notices: Vec<Notice>,
}

impl Plan {
    pub fn host(&self, name: &str) -> Option<&HostPlan> {
        self.hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
    pub fn service(&self, vip: IpAddr, port: u16, proto: Proto) -> Option<&ServicePlan> {
        self.services
            .iter()
            .find(|s| s.vip == vip && s.port == port && s.proto == proto)
    }
    /// Clusters in the order `Backend::cluster_id` numbers them (1-based).
    pub fn clusters(&self) -> Vec<String> {
        let mut v: Vec<String> = self.backends.iter().map(|b| b.cluster.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
    /// Localities in the order `Backend::locality_id` numbers them (1-based).
    pub fn localities(&self) -> Vec<Locality> {
        let mut v: Vec<Locality> = self.backends.iter().map(|b| b.locality.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}
