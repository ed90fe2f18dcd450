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
    sync::Arc,
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
/// Cheap to clone (no allocation): every stored object has one, and the
/// inventory's Services, the plan's services and notices copy theirs; kind,
/// namespace and file are shared by all the origins that have them
/// (`config::types::intern`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    pub kind: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub file: Arc<str>,
    pub line: u64,
}

impl Origin {
    /// `Kind namespace/name`, how errors and logs name the resource.
    pub fn resource(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.resource(), self.file, self.line)
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
    pub name: Arc<str>,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// The resource that defines the name (VirtualDestination or RouteTable).
    pub origin: Origin,
    /// Ports served (at L4) on this host.
    pub ports: Vec<u16>,
    /// A workload-scoped host (a RouteTable with `workloadSelectors`): only
    /// the workloads one of these selects see it (its VIPs, its name). Empty:
    /// every caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_selectors: Vec<WorkloadSelectorPlan>,
}

impl HostPlan {
    /// Does `w` (None: a caller that is no workload) see this host?
    pub fn visible_to(&self, w: Option<&WorkloadPlan>) -> bool {
        self.workload_selectors.is_empty()
            || w.is_some_and(|w| self.workload_selectors.iter().any(|s| s.selects(w)))
    }
}

/// One of a RouteTable's `workloadSelectors`: every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkloadSelectorPlan {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl WorkloadSelectorPlan {
    pub fn selects(&self, w: &WorkloadPlan) -> bool {
        self.name.as_ref().is_none_or(|n| *n == w.name)
            && self.namespace.as_ref().is_none_or(|n| *n == w.namespace)
            && self.cluster.as_ref().is_none_or(|c| *c == w.cluster)
            && self
                .labels
                .iter()
                .all(|(k, v)| w.labels.iter().any(|(wk, wv)| wk == k && wv == v))
    }
}

/// A Pod of the inventory in this node's cluster: what `workloadSelectors`
/// match, and what the workloads handed to the daemon are looked up by.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkloadPlan {
    pub namespace: String,
    pub name: String,
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<(String, String)>,
    /// Its addresses (`status.podIPs`): the workload's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

impl WorkloadPlan {
    /// `namespace/name`, as the workloads hand-off names it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One `(VIP, port, protocol)`: a header and a slot table in the kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// Virtual host name.
    pub host: Arc<str>,
    /// The resource (and route, for route tables) that decided this.
    pub origin: Origin,
    pub route: Option<String>,
    pub destinations: Vec<DestinationPlan>,
    /// The slot table, as `(endpoint, number of slots)`, sorted by endpoint.
    /// Empty: no healthy endpoint, connect() fails with EHOSTUNREACH.
    pub slots: Vec<SlotShare>,
    /// Served by the L7 proxy: the kernel hands connections to the proxy's
    /// listener instead of using slots.
    #[serde(default)]
    pub proxied: bool,
    /// Its host is workload-scoped ([`HostPlan::workload_selectors`]): the
    /// kernel serves it only to the workloads that see it.
    #[serde(default)]
    pub scoped: bool,
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
    /// (The reasons are a few fixed texts: borrowed, not one copy per
    /// destination of every service.)
    Off {
        reason: std::borrow::Cow<'static, str>,
    },
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
    pub label: Arc<str>,
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
    pub reason: Arc<str>,
    /// Percentage of the destination's traffic this tier receives (Envoy's
    /// priority load with overprovisioning factor 1.4, or a distribute weight).
    pub load_percent: u32,
    /// Envoy's panic mode: too few of this tier's endpoints are healthy, so
    /// its load goes to all of them, healthy or not.
    #[serde(default)]
    pub panic: bool,
    pub endpoints: Vec<EndpointPlan>,
}

/// What an active health check sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// Healthy when a TCP connection is accepted within the timeout.
    Tcp,
    /// Healthy when `GET path` answers a status in one of the `[start, end)` ranges.
    Http {
        path: String,
        host: Option<String>,
        expected: Vec<(u16, u16)>,
    },
}

/// One endpoint's active health check (the first ActiveHealthCheckPolicy
/// that applies to a destination the endpoint serves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckPlan {
    pub endpoint: SocketAddr,
    /// `ActiveHealthCheckPolicy ns/name`.
    pub policy: String,
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Failures in a row that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Successes in a row that make an unhealthy endpoint healthy again.
    pub healthy_threshold: u32,
}

/// Outlier detection for one destination (Envoy's cluster): what the proxy
/// sees of its endpoints can eject them for a while.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierPlan {
    /// The destination's label (as in [`DestinationPlan::label`]).
    pub destination: String,
    /// `OutlierDetectionPolicy ns/name`.
    pub policy: String,
    pub endpoints: Vec<SocketAddr>,
    /// Errors in a row (5xx, resets, connect failures) that eject; 0: off.
    pub consecutive_errors: u32,
    /// Gateway errors in a row (502, 503, 504, connect failures); 0: off.
    pub consecutive_gateway_errors: u32,
    /// How often ejections are reviewed (and expired ones lifted).
    pub interval_ms: u64,
    /// An endpoint's n-th ejection lasts n times this (capped at 300 s or this, if longer).
    pub base_ejection_ms: u64,
    /// At most this share of the destination's endpoints ejected at once
    /// (Envoy: at least one may always be ejected).
    pub max_ejection_percent: u32,
}

/// An endpoint of a destination's tier. Its address, cluster and locality
/// are the [`BackendPlan`] the plan's backend list shares (a plan lists
/// 100,000 endpoints: 32 bytes each, not 80 beside a copy in the backend
/// list); the service is shared with every endpoint of the same. Written
/// out (plan.json) flat, as `addr`, `cluster`, `locality`, `service`,
/// `healthy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EndpointRepr", into = "EndpointRepr")]
pub struct EndpointPlan {
    pub backend: Arc<BackendPlan>,
    /// Service (cluster/namespace/name) this endpoint belongs to.
    pub service: Arc<str>,
    pub healthy: bool,
}

impl EndpointPlan {
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }
    pub fn cluster(&self) -> &Arc<str> {
        &self.backend.cluster
    }
    pub fn locality(&self) -> &Arc<Locality> {
        &self.backend.locality
    }
}

/// [`EndpointPlan`] as plan.json has it.
#[derive(Serialize, Deserialize)]
struct EndpointRepr {
    addr: SocketAddr,
    cluster: Arc<str>,
    locality: Arc<Locality>,
    service: Arc<str>,
    healthy: bool,
}

impl From<EndpointRepr> for EndpointPlan {
    fn from(r: EndpointRepr) -> Self {
        EndpointPlan {
            backend: Arc::new(BackendPlan {
                addr: r.addr,
                cluster: r.cluster,
                locality: r.locality,
            }),
            service: r.service,
            healthy: r.healthy,
        }
    }
}

impl From<EndpointPlan> for EndpointRepr {
    fn from(e: EndpointPlan) -> Self {
        EndpointRepr {
            addr: e.backend.addr,
            cluster: e.backend.cluster.clone(),
            locality: e.backend.locality.clone(),
            service: e.service,
            healthy: e.healthy,
        }
    }
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

/// An endpoint address as a map key, in 20 bytes: a `SocketAddr` takes 32
/// (room for an IPv6 address's flow label and scope id, which endpoints
/// never have: link-local addresses are refused). At 100,000 endpoints a
/// hash map keyed by address has 131,072 buckets, so 12 bytes less a key
/// is 1.6 MB less a map (the compiler's backend reference counts and the
/// datapath's mirror of the backends map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    ip: [u8; 16],
    port: u16,
    v6: bool,
}

const _: () = assert!(std::mem::size_of::<AddrKey>() == 20);

impl From<SocketAddr> for AddrKey {
    fn from(a: SocketAddr) -> Self {
        let (ip, v6) = match a.ip() {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), false),
            IpAddr::V6(v6) => (v6.octets(), true),
        };
        AddrKey {
            ip,
            port: a.port(),
            v6,
        }
    }
}

impl From<AddrKey> for SocketAddr {
    fn from(k: AddrKey) -> Self {
        let v6 = Ipv6Addr::from(k.ip);
        let ip = match (k.v6, v6.to_ipv4_mapped()) {
            (false, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, k.port)
    }
}

/// One endpoint as the kernel's backend table knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendPlan {
    pub addr: SocketAddr,
    pub cluster: Arc<str>,
    pub locality: Arc<Locality>,
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
    /// Host names the daemon resolves (A and AAAA, again when the answers
    /// expire) for the ExternalServices backed by DNS, sorted.
    #[serde(default)]
    pub resolve: Vec<String>,
}

/// Host names and the addresses they resolved to (sorted, deduplicated).
pub type Resolved = std::collections::BTreeMap<String, Vec<IpAddr>>;

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
            resolve: Vec::new(),
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

/// The default port of the L7 proxy's listeners: privileged, so that no
/// unprivileged process can bind it, even while the daemon is down.
pub const DEFAULT_PROXY_PORT: u16 = 1000;

/// Where the L7 proxy listens: one listener per address family serves every
/// L7 host:port (the kernel records what each client dialled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyPlan {
    pub listen4: Ipv4Addr,
    /// IPv6 listener (None: IPv6 clients of L7 services are refused). If
    /// the namespace has no IPv6 (`::1` cannot be bound), the daemon goes on
    /// without it and says so.
    pub listen6: Option<Ipv6Addr>,
    /// A privileged port (below 1024).
    pub port: u16,
    /// Upstream response headers, when no RetryTimeoutPolicy sets a
    /// requestTimeout.
    pub upstream_timeout_ms: u64,
    /// A buffered request body arrives within this; a streamed one pauses
    /// at most this long.
    pub body_timeout_ms: u64,
    /// HTTP connections (both sides of the proxy) with nothing moving are
    /// closed after this long.
    pub idle_timeout_ms: u64,
    /// The same for TCP gateway connections.
    pub tcp_idle_timeout_ms: u64,
    /// Where access log lines go (None: the daemon's stdout).
    #[serde(default)]
    pub access_log_path: Option<String>,
    /// The addresses every VirtualGateway listener binds (its port on
    /// each): `0.0.0.0` by default; `::` too for dual-stack gateways. An
    /// IPv6 socket takes IPv6 only (`IPV6_V6ONLY`), beside the IPv4 one.
    #[serde(default = "default_gateway_addresses")]
    pub gateway_addresses: Vec<IpAddr>,
}

fn default_gateway_addresses() -> Vec<IpAddr> {
    vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
}

/// Which L7 requests are logged (the first AccessLogPolicy), and with what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLogPlan {
    /// `AccessLogPolicy ns/name`.
    pub policy: String,
    /// Any of them matches (empty: every request).
    pub filters: Vec<LogFilter>,
    pub request_headers: Vec<String>,
    pub response_headers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFilter {
    /// The response status compared with `value` (`Ordering` of status to
    /// value that matches: Equal, Greater-or-Equal as `ge`, ...).
    Status { value: u16, ge: bool, le: bool },
    /// A request header (Gloo's HeaderMatcher): present, with `value`
    /// (a full-match regex when `regex`), inverted by `invert`.
    Header {
        name: String,
        value: Option<String>,
        regex: bool,
        invert: bool,
    },
}

impl Default for ProxyPlan {
    fn default() -> Self {
        ProxyPlan {
            listen4: Ipv4Addr::LOCALHOST,
            listen6: Some(Ipv6Addr::LOCALHOST),
            port: DEFAULT_PROXY_PORT,
            upstream_timeout_ms: 15_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 300_000,
            tcp_idle_timeout_ms: 3_600_000,
            access_log_path: None,
            gateway_addresses: default_gateway_addresses(),
        }
    }
}

impl ProxyPlan {
    pub fn listeners(&self) -> Vec<SocketAddr> {
        let mut v = vec![SocketAddr::new(self.listen4.into(), self.port)];
        v.extend(self.listen6.map(|a| SocketAddr::new(a.into(), self.port)));
        v
    }
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn tcp_idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.tcp_idle_timeout_ms)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub node: NodeInfo,
    pub vip_ranges: VipRanges,
    /// Refuse connections into the VIP ranges that match no service.
    pub refuse_unknown_vips: bool,
    /// First SYN retransmission timeout (ms) of connections the kernel
    /// watches; 0: Linux's (1 s).
    #[serde(default)]
    pub syn_timeout_ms: u32,
    pub dns: DnsPlan,
    pub proxy: ProxyPlan,
    /// Sorted by lower-cased name. (Shared with the compiler's units, as
    /// are services and backends: an update copies only what changed.)
    pub hosts: Vec<Arc<HostPlan>>,
    /// Sorted by (vip, port, proto).
    pub services: Vec<Arc<ServicePlan>>,
    /// Every endpoint some slot table uses, sorted by address.
    pub backends: Vec<Arc<BackendPlan>>,
    /// Host:ports the L7 proxy serves (east-west).
    pub l7: Vec<L7Service>,
    /// VirtualGateway listeners (north-south).
    pub gateways: Vec<GatewayListener>,
    /// Active health checks, sorted by endpoint.
    #[serde(default)]
    pub health_checks: Vec<HealthCheckPlan>,
    /// Outlier detection per destination, sorted by destination.
    #[serde(default)]
    pub outliers: Vec<OutlierPlan>,
    /// Close clients' connections to endpoints that stop taking traffic.
    #[serde(default)]
    pub close_removed: bool,
    /// The access log (an AccessLogPolicy), if any.
    #[serde(default)]
    pub access_log: Option<AccessLogPlan>,
    /// The inventory's Pods in this node's cluster, sorted by (namespace,
    /// name): what workload-scoped hosts are matched against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadPlan>,
    /// A workload may be sent to its own address through a VIP
    /// (RouterConfig `spec.workloadHairpin`); false: the kernel picks
    /// another endpoint of the service when there is one.
    #[serde(default)]
    pub workload_hairpin: bool,
    pub notices: Vec<Notice>,
}

impl Plan {
    /// The host `name` as a caller that is no workload sees it.
    pub fn host(&self, name: &str) -> Option<&HostPlan> {
        self.host_for(name, None)
    }

    /// Every host named `name`: the one for every caller and the
    /// workload-scoped ones (adjacent: hosts sort by name, then scope).
    pub fn hosts_named(&self, name: &str) -> &[Arc<HostPlan>] {
        let key = name.to_ascii_lowercase();
        let lower = |h: &Arc<HostPlan>| h.name.to_ascii_lowercase();
        let from = self.hosts.partition_point(|h| lower(h) < key);
        let to = from + self.hosts[from..].partition_point(|h| lower(h) == key);
        &self.hosts[from..to]
    }

    /// The host `name` as workload `w` (None: a caller that is no workload)
    /// sees it: the first scoped one that selects it, else the one for
    /// every caller.
    pub fn host_for(&self, name: &str, w: Option<&WorkloadPlan>) -> Option<&HostPlan> {
        let all = self.hosts_named(name);
        all.iter()
            .find(|h| !h.workload_selectors.is_empty() && h.visible_to(w))
            .or_else(|| all.iter().find(|h| h.workload_selectors.is_empty()))
            .map(|h| &**h)
    }

    /// The inventory's Pod `namespace/name`.
    pub fn workload(&self, key: &str) -> Option<&WorkloadPlan> {
        find_workload(&self.workloads, key)
    }
    pub fn service(&self, vip: IpAddr, port: u16, proto: Proto) -> Option<&ServicePlan> {
        self.services
            .binary_search_by_key(&(vip, port, proto), |s| (s.vip, s.port, s.proto))
            .ok()
            .map(|i| &*self.services[i])
    }
    /// Clusters in the order `Backend::cluster_id` numbers them (1-based).
    pub fn clusters(&self) -> Vec<String> {
        let mut v: Vec<&str> = self.backends.iter().map(|b| &*b.cluster).collect();
        v.sort_unstable();
        v.dedup();
        v.into_iter().map(str::to_string).collect()
    }
    /// Localities in the order `Backend::locality_id` numbers them (1-based).
    pub fn localities(&self) -> Vec<Locality> {
        // Backends share their localities: compare by reference first, and
        // copy each distinct one once (not one per backend).
        let mut v: Vec<&Locality> = self.backends.iter().map(|b| &*b.locality).collect();
        v.sort();
        v.dedup();
        v.into_iter().cloned().collect()
    }
}

/// What decides which workloads see which hosts: the workload-scoped
/// hosts and the inventory's Pods, as a plan has them (what the daemon keeps
/// to answer for workloads that come and go between plans).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scopes {
    pub hosts: Vec<Arc<HostPlan>>,
    pub workloads: Vec<WorkloadPlan>,
    pub hairpin: bool,
}

impl Scopes {
    pub fn of(plan: &Plan) -> Scopes {
        Scopes {
            hosts: plan
                .hosts
                .iter()
                .filter(|h| !h.workload_selectors.is_empty())
                .cloned()
                .collect(),
            workloads: plan.workloads.clone(),
            hairpin: plan.workload_hairpin,
        }
    }

    /// The served workloads' own addresses, by namespace cookie: what the
    /// kernel avoids sending a workload to (none with hairpin allowed).
    pub fn own_addresses<'a>(
        &self,
        served: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> std::collections::BTreeSet<(u64, IpAddr)> {
        if self.hairpin {
            return Default::default();
        }
        served
            .into_iter()
            .filter_map(|(key, cookie)| Some((self.workload(key)?, cookie)))
            .flat_map(|(w, cookie)| w.ips.iter().map(move |ip| (cookie, *ip)))
            .collect()
    }

    /// Which workload namespaces (cookies) see which workload-scoped VIPs:
    /// for each workload served (`namespace/name` and its namespace's
    /// cookie), the VIPs of every scoped host that selects it. A workload
    /// the inventory has no Pod for sees none.
    pub fn visibility<'a>(
        &self,
        served: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> std::collections::BTreeSet<(u64, IpAddr)> {
        let mut out = std::collections::BTreeSet::new();
        if self.hosts.is_empty() {
            return out;
        }
        for (key, cookie) in served {
            let Some(w) = self.workload(key) else {
                continue;
            };
            for h in self.hosts.iter().filter(|h| h.visible_to(Some(w))) {
                out.insert((cookie, IpAddr::V4(h.vip4)));
                out.insert((cookie, IpAddr::V6(h.vip6)));
            }
        }
        out
    }

    /// Is `namespace/name` a Pod of the inventory?
    pub fn knows(&self, key: &str) -> bool {
        self.workload(key).is_some()
    }

    /// The inventory's Pod `namespace/name`.
    pub fn workload(&self, key: &str) -> Option<&WorkloadPlan> {
        find_workload(&self.workloads, key)
    }
}

/// Pod `namespace/name` in `ws` (sorted by namespace and name).
fn find_workload<'a>(ws: &'a [WorkloadPlan], key: &str) -> Option<&'a WorkloadPlan> {
    let (ns, name) = key.split_once('/')?;
    ws.binary_search_by(|w| (w.namespace.as_str(), w.name.as_str()).cmp(&(ns, name)))
        .ok()
        .map(|i| &ws[i])
}

/// `*.example.com` matches `a.example.com` and `a.b.example.com` (one or more
/// left-most labels), not `example.com`; otherwise exact, case-insensitive.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if p == "*" {
        return true;
    }
    match p.strip_prefix("*.") {
        Some(suffix) => h.len() > suffix.len() + 1 && h.ends_with(&format!(".{suffix}")),
        None => p == h,
    }
}

/// Which of a gateway listener's host entries (each a list of patterns, in
/// plan order) serves `host`: the first with an exact name, else the one
/// with the longest matching wildcard. The proxy chooses by it, and
/// `explain` says what it chose.
pub fn select_gateway_host<'a>(
    entries: impl Iterator<Item = &'a [String]> + Clone,
    host: &str,
) -> Option<usize> {
    entries
        .clone()
        .position(|hs| {
            hs.iter()
                .any(|h| !h.starts_with('*') && host_matches(h, host))
        })
        .or_else(|| {
            entries
                .enumerate()
                .filter_map(|(i, hs)| {
                    hs.iter()
                        .filter(|h| h.starts_with('*') && host_matches(h, host))
                        .map(|h| h.len())
                        .max()
                        .map(|l| (l, i))
                })
                .max_by_key(|(l, _)| *l)
                .map(|(_, i)| i)
        })
}

// ----------------------------------------------------------------------------
// The L7 path: route tables the proxy applies per request.
// ----------------------------------------------------------------------------

/// How a path condition compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    Exact,
    Prefix,
    Regex,
}

/// One condition of a matcher; a matcher holds when all its conditions do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L7Cond {
    Path {
        kind: PathKind,
        value: String,
        ignore_case: bool,
    },
    /// `value` None: the header must be present. `invert` negates the result.
    Header {
        name: String,
        value: Option<String>,
        regex: bool,
        invert: bool,
    },
    Query {
        name: String,
        value: Option<String>,
        regex: bool,
    },
    Method(String),
    Port(u16),
}

/// A matcher: all conditions (a delegated route carries its parent's too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Match {
    pub conds: Vec<L7Cond>,
}

/// A destination of a per-request split, with the endpoints it resolves to
/// (shares from the same locality tiers as the kernel path).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L7Dest {
    pub label: String,
    /// Out of the sum over the route's destinations.
    pub weight: u32,
    /// Speak HTTP/2 to the endpoints (destination port protocol HTTP2 or GRPC).
    pub http2: bool,
    /// `(endpoint, share)`; empty: no healthy endpoint (503).
    pub endpoints: Vec<SlotShare>,
    /// Host header for `autoHostRewrite`: the destination's own name.
    pub authority: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L7Forward {
    pub dests: Vec<L7Dest>,
    /// Replace the matched prefix (or the whole path for exact/regex matches).
    pub path_rewrite: Option<String>,
    /// `(regex, substitution)` applied to the whole path.
    pub regex_rewrite: Option<(String, String)>,
    pub host_rewrite: Option<String>,
    pub auto_host_rewrite: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Redirect {
    pub host: Option<String>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub code: u16,
    pub https: bool,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L7Action {
    Forward(L7Forward),
    Redirect(L7Redirect),
    Direct {
        status: u16,
        body: String,
    },
    /// failureMode ROUTE_REPLACEMENT: the route is broken; it answers 500.
    Broken {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderPolicy {
    pub from: String,
    pub add_request: Vec<(String, String)>,
    pub remove_request: Vec<String>,
    pub add_response: Vec<(String, String)>,
    pub remove_response: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub from: String,
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout_ms: Option<u64>,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_reset: bool,
    pub on_connect_failure: bool,
    pub status_codes: Vec<u16>,
    /// gRPC status codes retried when a response's headers carry them.
    #[serde(default)]
    pub grpc_codes: Vec<u8>,
    pub request_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultPolicy {
    pub from: String,
    /// `(delay ms, percent of requests)`.
    pub delay: Option<(u64, f64)>,
    /// `(status, percent of requests)`.
    pub abort: Option<(u16, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirrorPolicy {
    pub from: String,
    pub dest: L7Dest,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorsPolicy {
    pub from: String,
    /// `(kind, value)`: exact, prefix or regex origin matches.
    pub allow_origins: Vec<(PathKind, String)>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_s: Option<u64>,
    pub allow_credentials: bool,
}

/// The winning policy of each type for one route (`from` names the policy).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct L7Policies {
    pub headers: Option<HeaderPolicy>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
    pub mirror: Option<MirrorPolicy>,
    pub cors: Option<CorsPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L7Route {
    pub name: String,
    pub origin: Origin,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Any of these (empty: every request).
    pub matchers: Vec<L7Match>,
    pub action: L7Action,
    pub policies: L7Policies,
}

/// A host:port served by the proxy (east-west), in first-match order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L7Service {
    pub host: String,
    pub port: u16,
    /// The VIPs whose connections the kernel hands to the proxy for this
    /// service (the proxy recognises the service by VIP and port).
    pub vips: Vec<IpAddr>,
    pub routes: Vec<L7Route>,
}

/// Route tables bound to one gateway listener, selected by Host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayHost {
    /// Host patterns (`*.example.com` matches one or more left labels).
    pub hosts: Vec<String>,
    pub table: String,
    pub routes: Vec<L7Route>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    /// PEM files (empty with `secret`).
    pub cert: String,
    pub key: String,
    /// PEM file of the CA that signs client certificates.
    #[serde(default)]
    pub ca: Option<String>,
    /// Whether clients must present a certificate the CA signed.
    #[serde(default)]
    pub client_certs: ClientCerts,
    /// The certificate, key and CA from a `kubernetes.io/tls` Secret, as
    /// PEM text (plan.json keeps them: the state directory is root's only,
    /// like the config that holds the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretPem>,
}

/// A TLS Secret's contents.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPem {
    /// `namespace/name`, for messages.
    pub name: String,
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub ca: Option<String>,
}

/// Never prints the key.
impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretPem({})", self.name)
    }
}

/// What a TLS gateway listener asks of clients' certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCerts {
    /// SIMPLE: none asked for.
    #[default]
    None,
    /// MUTUAL: required, and verified against the CA.
    Required,
    /// OPTIONAL_MUTUAL: verified if presented.
    Optional,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayListener {
    pub gateway: String,
    pub origin: Origin,
    pub port: u16,
    /// false: a TCP listener (forwards per `tcp` routes).
    pub http: bool,
    /// TLS PASSTHROUGH: each connection forwarded undecrypted by the SNI of
    /// its ClientHello (`hosts` are the `tls` routes' SNI names).
    #[serde(default)]
    pub passthrough: bool,
    pub tls: Option<TlsFiles>,
    pub https_redirect: bool,
    pub hosts: Vec<GatewayHost>,
    /// The VirtualGateway's `workloads`: the listener opens inside the
    /// network namespace of each workload served that one selects; empty:
    /// in the daemon's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_selectors: Vec<WorkloadSelectorPlan>,
}

impl GatewayListener {
    /// Does it open in workload `w`'s namespace (None: the daemon's)?
    pub fn opens_in(&self, w: Option<&WorkloadPlan>) -> bool {
        match w {
            None => self.workload_selectors.is_empty(),
            Some(w) => self.workload_selectors.iter().any(|s| s.selects(w)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_addr_key_gives_back_the_address_and_tells_families_apart() {
        let addrs: [SocketAddr; 4] = [
            "10.0.0.1:80".parse().unwrap(),
            "[::ffff:10.0.0.1]:80".parse().unwrap(),
            "[fd00::1]:8080".parse().unwrap(),
            "10.0.0.1:81".parse().unwrap(),
        ];
        let keys: Vec<AddrKey> = addrs.iter().map(|a| AddrKey::from(*a)).collect();
        for (a, k) in addrs.iter().zip(&keys) {
            assert_eq!(SocketAddr::from(*k), *a);
        }
        let distinct: std::collections::HashSet<AddrKey> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), addrs.len());
    }

    #[test]
    fn a_gateway_picks_an_exact_host_then_the_longest_wildcard() {
        let entries: Vec<Vec<String>> = [
            vec!["*.com"],
            vec!["*.example.com"],
            vec!["api.example.com"],
        ]
        .iter()
        .map(|e| e.iter().map(|h| h.to_string()).collect())
        .collect();
        let pick = |host| select_gateway_host(entries.iter().map(|e| &e[..]), host);
        assert_eq!(pick("api.example.com"), Some(2));
        assert_eq!(pick("www.example.com"), Some(1));
        assert_eq!(pick("www.other.com"), Some(0));
        assert_eq!(pick("example.org"), None);
    }

    #[test]
    fn wildcard_hosts_match_left_labels() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.Example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("API.example.com", "api.example.com"));
        assert!(!host_matches("api.example.com", "www.example.com"));
    }
}
