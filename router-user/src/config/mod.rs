//! Config: the model ([`model`]), loading with file:line diagnostics
//! ([`load`]), the resolved inventory of services and endpoints
//! ([`inventory`]) and cross-resource validation ([`validate`]).
//!
//! Two phases, as in ztunnel: everything is converted and validated first,
//! outside any lock; only a config without errors reaches the compiler, and
//! only a compiled plan reaches the kernel. A rejected config changes nothing.
mod block;
pub mod diag;
pub mod etcd;
pub mod external;
pub mod inventory;
pub mod live;
pub mod load;
pub mod model;
pub mod policy;
pub mod resolve;
pub mod routes;
pub mod source;
pub mod store;
pub mod types;
pub mod validate;
pub mod workloads;

use std::path::Path;

pub use diag::{ConfigError, Diagnostic};
use model::*;

use crate::plan::{DnsPlan, Locality, NodeInfo, Notice, Origin, ProxyPlan, VipRanges};

/// One resource with where it came from.
#[derive(Clone, Debug)]
pub struct Resource<S> {
    pub meta: ObjectMeta,
    pub spec: S,
    pub origin: Origin,
    /// Lines before the document in its file: `Spanned` locations are
    /// relative to the document.
    pub line_base: u64,
}

impl<S> Resource<S> {
    /// Absolute line of a value inside this resource.
    pub fn line_of<T>(&self, v: &Spanned<T>) -> u64 {
        let l = v.line();
        if l == 0 {
            self.origin.line
        } else {
            self.line_base + l
        }
    }
    pub fn namespace(&self) -> &str {
        &self.origin.namespace
    }
    pub fn name(&self) -> &str {
        &self.meta.name
    }
    /// `Kind namespace/name` (inventory objects also name their cluster).
    pub fn display(&self) -> String {
        match &self.meta.cluster_name {
            Some(c) => format!(
                "{} {}/{}/{}",
                self.origin.kind, c, self.origin.namespace, self.meta.name
            ),
            None => self.origin.resource(),
        }
    }
}

/// The body of an EndpointSlice (it has no `spec`).
#[derive(Clone, Debug)]
pub struct EndpointSliceBody {
    pub address_type: AddressType,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<EndpointPort>,
}

/// One endpoint of a slice as the store keeps it. There are 100,000 of
/// these at the bench's scale, so it holds only what routerd reads, in 56
/// bytes and (for the usual one address and no topology) no allocation of
/// its own: the parsed `Spanned<Endpoint>` was 136 bytes plus two
/// allocations for its address.
#[derive(Clone, Debug)]
pub struct SliceEndpoint {
    /// Its line in the file.
    pub line: u32,
    /// Kubernetes' reading of `conditions`: a nil `ready` means ready;
    /// a terminating endpoint is not.
    pub ready: bool,
    /// `zone` (shared by the slice's endpoints with the same one).
    pub zone: Option<std::sync::Arc<str>>,
    /// `addresses`: the first (the others are in `rare`).
    first: Option<Address>,
    /// What few endpoints have: more addresses, `deprecatedTopology`.
    rare: Option<Box<Rare>>,
}

#[derive(Clone, Debug)]
struct Rare {
    more: Box<[Address]>,
    deprecated_topology: Labels,
}

const _: () = assert!(std::mem::size_of::<SliceEndpoint>() == 56);

/// An endpoint address as written: an IP, or text that is not one (kept
/// for the error that names it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Ip(std::net::IpAddr),
    NotAnIp(Box<str>),
}

impl SliceEndpoint {
    /// `ep` (at `line`), its zone interned in `zones`.
    pub fn new(ep: Endpoint, line: u64, zones: &mut Vec<std::sync::Arc<str>>) -> Self {
        let cond = ep.conditions.unwrap_or_default();
        let zone = ep.zone.map(|z| {
            if let Some(a) = zones.iter().find(|a| ***a == *z) {
                a.clone()
            } else {
                let a: std::sync::Arc<str> = z.into();
                zones.push(a.clone());
                a
            }
        });
        let mut addresses = ep.addresses.into_iter().map(|a| match a.parse() {
            Ok(ip) => Address::Ip(ip),
            Err(_) => Address::NotAnIp(a.into()),
        });
        let first = addresses.next();
        let more: Box<[Address]> = addresses.collect();
        let rare = (!more.is_empty() || ep.deprecated_topology != Labels::new()).then(|| {
            Box::new(Rare {
                more,
                deprecated_topology: ep.deprecated_topology,
            })
        });
        SliceEndpoint {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            ready: cond.ready.unwrap_or(true) && !cond.terminating.unwrap_or(false),
            zone,
            first,
            rare,
        }
    }

    pub fn addresses(&self) -> impl Iterator<Item = &Address> {
        let more = self.rare.as_ref().map_or(&[][..], |r| &r.more[..]);
        self.first.iter().chain(more)
    }

    /// `deprecatedTopology` (empty for most endpoints).
    pub fn deprecated_topology(&self) -> &Labels {
        static NONE: Labels = Labels::new();
        self.rare.as_ref().map_or(&NONE, |r| &r.deprecated_topology)
    }
}

/// Every kind of resource routerd reads, in one table: `Kind, apiVersion,
/// field of [`Resources`], spec type, parser` (`parse_spec` for documents
/// with a `spec`). Adding a kind is one line here and its shape in
/// [`model`]: the loader's dispatch, the `Resources` field, the list of
/// supported kinds and the apiVersion check all come from this table.
#[macro_export]
#[doc(hidden)]
macro_rules! for_each_kind {
    ($then:ident) => {
        $then! {
            RouteTable, GLOO_NETWORKING, route_tables, RouteTableSpec, parse_spec;
            VirtualDestination, GLOO_NETWORKING, virtual_destinations, VirtualDestinationSpec, parse_spec;
            VirtualGateway, GLOO_NETWORKING, virtual_gateways, VirtualGatewaySpec, parse_spec;
            ExternalService, GLOO_NETWORKING, external_services, ExternalServiceSpec, parse_spec;
            ExternalEndpoint, GLOO_NETWORKING, external_endpoints, ExternalEndpointSpec, parse_spec;
            FailoverPolicy, GLOO_RESILIENCE, failover_policies, FailoverPolicySpec, parse_spec;
            OutlierDetectionPolicy, GLOO_RESILIENCE, outlier_policies, OutlierDetectionPolicySpec, parse_spec;
            ActiveHealthCheckPolicy, GLOO_RESILIENCE, health_policies, ActiveHealthCheckPolicySpec, parse_spec;
            RetryTimeoutPolicy, GLOO_RESILIENCE, retry_policies, RoutePolicySpec<RetryTimeoutConfig>, parse_spec;
            FaultInjectionPolicy, GLOO_RESILIENCE, fault_policies, RoutePolicySpec<FaultInjectionConfig>, parse_spec;
            HeaderManipulationPolicy, GLOO_TRAFFIC, header_policies, RoutePolicySpec<HeaderManipulationConfig>, parse_spec;
            MirrorPolicy, GLOO_TRAFFIC, mirror_policies, RoutePolicySpec<MirrorConfig>, parse_spec;
            CORSPolicy, GLOO_SECURITY, cors_policies, RoutePolicySpec<CorsConfig>, parse_spec;
            AccessLogPolicy, GLOO_OBSERVABILITY, access_log_policies, AccessLogPolicySpec, parse_spec;
            Service, K8S_CORE, services, ServiceSpec, parse_service;
            EndpointSlice, K8S_DISCOVERY, endpoint_slices, EndpointSliceBody, parse_endpoint_slice;
            Secret, K8S_CORE, secrets, SecretBody, parse_secret;
            Pod, K8S_CORE, pods, PodBody, parse_pod;
            RouterConfig, ROUTER_API, router_configs, RouterConfigSpec, parse_spec;
        }
    };
}

macro_rules! resources_struct {
    ($($kind:ident, $api:ident, $field:ident, $spec:ty, $parse:ident;)*) => {
        /// Everything loaded from the config path, by kind.
        #[derive(Clone, Debug, Default)]
        pub struct Resources {
            $(
                #[doc = concat!("`", stringify!($kind), "` resources, in config order.")]
                pub $field: Vec<Resource<$spec>>,
            )*
            /// Files read, in order.
            pub files: Vec<String>,
            /// What the daemon's resolver found for the host names of
            /// ExternalServices and ExternalEndpoints (name -> addresses,
            /// sorted): not config, but what the inventory builds on.
            pub resolved: Resolved,
        }

        impl Resources {
            /// No resource of any kind was read.
            pub fn is_empty(&self) -> bool {
                true $(&& self.$field.is_empty())*
            }
        }

        /// `Kind (apiVersion)` for every supported kind, for error messages.
        pub fn supported_kinds() -> String {
            [$(format!("{} ({})", stringify!($kind), $api)),*].join(", ")
        }

        /// The apiVersion a kind must have, if routerd reads the kind.
        pub fn expected_api(kind: &str) -> Option<&'static str> {
            match kind {
                $(stringify!($kind) => Some($api),)*
                _ => None,
            }
        }
    };
}
for_each_kind!(resources_struct);

pub use crate::plan::Resolved;

impl Resources {
    /// Any route policy (they select routes by labels).
    pub fn has_route_policies(&self) -> bool {
        !(self.header_policies.is_empty()
            && self.retry_policies.is_empty()
            && self.fault_policies.is_empty()
            && self.mirror_policies.is_empty()
            && self.cors_policies.is_empty())
    }
}

/// Command-line settings that override the RouterConfig resource.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub cluster: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub subzone: Option<String>,
    pub vip_v4: Option<ipnet::Ipv4Net>,
    pub vip_v6: Option<ipnet::Ipv6Net>,
    /// `--no-dns`: do not serve DNS.
    pub no_dns: bool,
    /// `--no-dns-capture`: serve DNS but leave port 53 alone.
    pub no_dns_capture: bool,
    /// `--dns-upstream`: replaces spec.dns.upstreams.
    pub dns_upstreams: Vec<types::Upstream>,
}

/// The router's settings after merging RouterConfig and overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub node: NodeInfo,
    pub vip_ranges: VipRanges,
    pub locality_requires_outlier_detection: bool,
    pub refuse_unknown_vips: bool,
    /// Percent; 0: no panic mode.
    pub healthy_panic_threshold: u32,
    pub close_connections_to_removed_endpoints: bool,
    /// `spec.workloadHairpin`.
    pub workload_hairpin: bool,
    /// `spec.synRetransmitTimeout` in ms; 0: Linux's initial RTO.
    pub syn_timeout_ms: u32,
    pub dns: DnsPlan,
    pub proxy: ProxyPlan,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node: NodeInfo::default(),
            vip_ranges: VipRanges::default(),
            locality_requires_outlier_detection: true,
            refuse_unknown_vips: true,
            healthy_panic_threshold: 50,
            close_connections_to_removed_endpoints: false,
            workload_hairpin: false,
            syn_timeout_ms: 0,
            dns: DnsPlan::default(),
            proxy: ProxyPlan::default(),
        }
    }
}

/// A config that passed validation, with what validation noticed.
#[derive(Clone, Debug)]
pub struct Validated {
    pub config: Resources,
    pub inventory: inventory::Inventory,
    pub settings: Settings,
    pub notices: Vec<Notice>,
}

impl Resources {
    pub fn router(&self) -> Option<&Resource<RouterConfigSpec>> {
        self.router_configs.first()
    }

    /// The Secret `name` in `namespace` (a gateway's `tls.secretName` names
    /// one in the gateway's namespace, as in Kubernetes).
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Resource<SecretBody>> {
        self.secrets
            .iter()
            .find(|s| s.name() == name && s.namespace() == namespace)
    }
}

/// Load and validate everything under `path`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Validated, ConfigError> {
    load_with(path, overrides, load::LoadOptions::default())
}

/// [`load`], with the daemon's trust policy for the files.
pub fn load_with(
    path: &Path,
    overrides: &Overrides,
    opts: load::LoadOptions,
) -> Result<Validated, ConfigError> {
    let source = source::FileSource::new(path, opts);
    let mut reading = source.read()?;
    let mut cfg = Resources::default();
    cfg.apply(std::mem::take(&mut reading.changes));
    cfg.files = reading.names.take().unwrap_or_default();
    validate_all(cfg, overrides)
}

/// Load and validate YAML text (tests, fuzzing). `file` names it in errors.
pub fn load_str(file: &str, text: &str, overrides: &Overrides) -> Result<Validated, ConfigError> {
    let mut cfg = Resources::default();
    let mut diags = diag::Diags::default();
    load::load_text(file, text, &mut cfg, &mut diags);
    cfg.files.push(file.to_string());
    match (diags.is_empty(), check_all(&cfg, overrides)) {
        (true, Ok((settings, inventory, notices))) => Ok(Validated {
            config: cfg,
            inventory,
            settings,
            notices,
        }),
        // Parse errors with what the rest of the config says.
        (_, other) => {
            if let Err(e) = other {
                diags.errors.extend(e.errors);
            }
            diags
                .into_result(())
                .map(|()| unreachable!("there are errors"))
        }
    }
}

/// Validate a whole config.
pub fn validate_all(cfg: Resources, overrides: &Overrides) -> Result<Validated, ConfigError> {
    let (settings, inventory, notices) = check_all(&cfg, overrides)?;
    Ok(Validated {
        config: cfg,
        inventory,
        settings,
        notices,
    })
}

/// Everything a whole validation derives: settings, inventory, notices.
fn check_all(
    cfg: &Resources,
    overrides: &Overrides,
) -> Result<(Settings, inventory::Inventory, Vec<Notice>), ConfigError> {
    let mut diags = diag::Diags::default();
    if cfg.is_empty() {
        // An empty or truncated file must not wipe out what is serving.
        let file = if cfg.files.is_empty() {
            "<config>".to_string()
        } else {
            cfg.files.join(", ")
        };
        diags.push(
            &file,
            1,
            None,
            "no resources at all: refusing to replace the config with an empty one (a truncated \
             or emptied file?). To route nothing on purpose, keep the RouterConfig and remove the \
             routes; to remove the datapath, run `routerd stop`"
                .to_string(),
        );
    }
    let settings = settings(cfg, overrides, &mut diags);
    let inventory = inventory::Inventory::build(cfg, &settings.vip_ranges, &mut diags);
    let notices = validate::validate(cfg, &inventory, &settings, &mut diags);
    diags.into_result((settings, inventory, notices))
}

fn settings(cfg: &Resources, o: &Overrides, diags: &mut diag::Diags) -> Settings {
    let mut s = Settings::default();
    for extra in cfg.router_configs.iter().skip(1) {
        let first = &cfg.router_configs[0];
        diags.push(
            &extra.origin.file,
            extra.origin.line,
            Some(extra.display()),
            format!(
                "a second RouterConfig; there must be at most one (the first is {} at {}:{})",
                first.display(),
                first.origin.file,
                first.origin.line
            ),
        );
    }
    let rc = cfg.router().map(|r| &r.spec).cloned().unwrap_or_default();
    let pick = |flag: &Option<String>, spec: &Option<String>| {
        flag.clone().or_else(|| spec.clone()).unwrap_or_default()
    };
    s.node = NodeInfo {
        cluster: pick(&o.cluster, &rc.cluster),
        locality: Locality {
            region: pick(&o.region, &rc.region),
            zone: pick(&o.zone, &rc.zone),
            subzone: pick(&o.subzone, &rc.subzone),
        },
        labels: rc.labels.clone().into(),
    };
    // The node's own topology labels, for `priorityLabels`.
    for (k, v) in [
        (inventory::LABEL_CLUSTER, &s.node.cluster),
        (inventory::LABEL_REGION, &s.node.locality.region),
        (inventory::LABEL_ZONE, &s.node.locality.zone),
        (inventory::LABEL_SUBZONE, &s.node.locality.subzone),
    ] {
        if !v.is_empty() {
            s.node
                .labels
                .entry(k.to_string())
                .or_insert_with(|| v.clone());
        }
    }
    let (file, line, res) = match cfg.router() {
        Some(r) => (r.origin.file.to_string(), r.origin.line, Some(r.display())),
        None => ("<flags>".to_string(), 0, None),
    };
    let ranges = rc.vip_ranges.clone().unwrap_or_default();
    if let Some(n) = o.vip_v4.or(ranges.ipv4) {
        match vip_range_error(n.into(), 8..=30) {
            Some(e) => diags.push(&file, line, res.clone(), e),
            None => s.vip_ranges.v4 = n.trunc(),
        }
    }
    if let Some(n) = o.vip_v6.or(ranges.ipv6) {
        match vip_range_error(n.into(), 16..=120) {
            Some(e) => diags.push(&file, line, res.clone(), e),
            None => s.vip_ranges.v6 = n.trunc(),
        }
    }
    s.locality_requires_outlier_detection = rc.locality_requires_outlier_detection.unwrap_or(true);
    s.refuse_unknown_vips = rc.refuse_unknown_vips.unwrap_or(true);
    s.healthy_panic_threshold = match rc.healthy_panic_threshold {
        Some(p) if p > 100 => {
            diags.push(
                &file,
                line,
                res.clone(),
                format!("spec.healthyPanicThreshold {p} is not a percentage (0-100; 0 turns panic mode off)"),
            );
            50
        }
        Some(p) => p,
        None => 50,
    };
    s.close_connections_to_removed_endpoints =
        rc.close_connections_to_removed_endpoints.unwrap_or(false);
    s.workload_hairpin = rc.workload_hairpin.unwrap_or(false);
    if let Some(d) = rc.syn_retransmit_timeout {
        match syn_timeout_error(d.millis()) {
            Some(e) => diags.push(&file, line, res.clone(), e),
            None => s.syn_timeout_ms = d.millis() as u32,
        }
    }
    s.proxy = proxy_settings(&rc.proxy.clone().unwrap_or_default(), |msg| {
        diags.push(&file, line, res.clone(), msg)
    });
    s.dns = dns_settings(&rc.dns.clone().unwrap_or_default(), o, |msg| {
        diags.push(&file, line, res.clone(), msg)
    });
    s
}

/// Shortest and longest `spec.synRetransmitTimeout` (ms).
pub const SYN_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 10..=3000;

/// Why a `spec.synRetransmitTimeout` cannot be used, if it cannot.
fn syn_timeout_error(ms: u64) -> Option<String> {
    (!SYN_TIMEOUT_MS.contains(&ms)).then(|| {
        format!(
            "spec.synRetransmitTimeout {ms} ms is outside {} ms to {} ms; expected e.g. \
             `synRetransmitTimeout: 100ms` (longer than the round trip to any backend: a \
             SYN retransmitted counts as a failed handshake), or leave it unset for Linux's 1 s",
            SYN_TIMEOUT_MS.start(),
            SYN_TIMEOUT_MS.end()
        )
    })
}

/// Why a VIP range cannot be used, if it cannot: its prefix length, or
/// what it overlaps.
fn vip_range_error(n: ipnet::IpNet, lengths: std::ops::RangeInclusive<u8>) -> Option<String> {
    let (fam, like) = match n {
        ipnet::IpNet::V4(_) => ("IPv4", "240.240.0.0/16"),
        ipnet::IpNet::V6(_) => ("IPv6", "2001:2::/48"),
    };
    if !lengths.contains(&n.prefix_len()) {
        return Some(format!(
            "{fam} VIP range {n} has prefix length {}; expected /{} to /{}",
            n.prefix_len(),
            lengths.start(),
            lengths.end()
        ));
    }
    vip_range_problem(n.trunc()).map(|why| {
        format!(
            "{fam} VIP range {n} overlaps {why}: choose a range no real address is in, like {like}"
        )
    })
}

/// What a VIP range must not overlap (connections into it are rewritten or
/// refused by the kernel): loopback, link-local, unspecified, multicast,
/// IPv4-mapped. Pure.
pub fn vip_range_problem(net: ipnet::IpNet) -> Option<&'static str> {
    const V4: [(&str, &str); 5] = [
        ("0.0.0.0/8", "the unspecified/this-network range"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local addresses"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
    ];
    const V6: [(&str, &str); 5] = [
        ("::/128", "the unspecified address"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local addresses"),
        ("ff00::/8", "multicast"),
        ("::ffff:0:0/96", "IPv4-mapped addresses"),
    ];
    let table: &[(&str, &str)] = match net {
        ipnet::IpNet::V4(_) => &V4,
        ipnet::IpNet::V6(_) => &V6,
    };
    table.iter().find_map(|(r, why)| {
        let r: ipnet::IpNet = r.parse().expect("a valid range");
        (r.contains(&net.network()) || net.contains(&r.network())).then_some(*why)
    })
}

fn proxy_settings(p: &ProxySpec, mut err: impl FnMut(String)) -> ProxyPlan {
    let mut out = ProxyPlan::default();
    if let Some(r) = &p.port_range {
        err(format!(
            "spec.proxy.portRange `{r}` is no longer used: one listener on spec.proxy.port \
             (default {}) serves every L7 service. Remove portRange",
            crate::plan::DEFAULT_PROXY_PORT
        ));
    }
    match p.port {
        None => {}
        Some(port) if (1..1024).contains(&port) => out.port = port,
        Some(port) => err(format!(
            "spec.proxy.port {port} is not a privileged port: expected 1-1023, so that no \
             unprivileged process can take the port over while routerd is down"
        )),
    }
    for (field, value, slot) in [
        (
            "upstreamTimeout",
            p.upstream_timeout,
            &mut out.upstream_timeout_ms,
        ),
        ("bodyTimeout", p.body_timeout, &mut out.body_timeout_ms),
        ("idleTimeout", p.idle_timeout, &mut out.idle_timeout_ms),
        (
            "tcpIdleTimeout",
            p.tcp_idle_timeout,
            &mut out.tcp_idle_timeout_ms,
        ),
    ] {
        match value {
            Some(d) if d.is_zero() => err(format!("spec.proxy.{field} must be more than 0")),
            Some(d) => *slot = d.millis(),
            None => {}
        }
    }
    if let Some(l) = p.listen {
        out.listen4 = l;
    }
    if let Some(l) = p.listen6 {
        out.listen6 = l.0;
    }
    if let Some(a) = &p.gateway_addresses {
        match gateway_addresses_error(a) {
            Some(e) => err(format!("spec.proxy.gatewayAddresses {a:?}: {e}")),
            None => out.gateway_addresses = a.clone(),
        }
    }
    match p.access_log_path.as_deref() {
        None | Some("-") => {}
        Some(path) if std::path::Path::new(path).is_absolute() => {
            out.access_log_path = Some(path.to_string())
        }
        Some(path) => err(format!(
            "spec.proxy.accessLogPath `{path}` is not an absolute path; give one (e.g. \
             /var/log/routerd/access.log) or `-` for the daemon's stdout"
        )),
    }
    out
}

/// What is wrong with a list of gateway addresses: empty, an address
/// twice, or a wildcard (`0.0.0.0`, `::`) beside another address of its
/// family (the wildcard already takes that port on every address).
fn gateway_addresses_error(a: &[std::net::IpAddr]) -> Option<String> {
    if a.is_empty() {
        return Some(
            "no address: list at least one (0.0.0.0 for IPv4, :: for IPv6, both for \
             dual-stack)"
                .into(),
        );
    }
    for (i, x) in a.iter().enumerate() {
        for y in &a[i + 1..] {
            if x == y {
                return Some(format!("{x} is listed twice"));
            }
            if x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified()) {
                return Some(format!(
                    "{x} and {y} overlap (a wildcard takes the port on every address of its \
                     family): keep one"
                ));
            }
        }
    }
    None
}

fn dns_settings(d: &DnsSpec, o: &Overrides, mut err: impl FnMut(String)) -> DnsPlan {
    let mut p = DnsPlan {
        enabled: d.enabled.unwrap_or(true) && !o.no_dns,
        capture: d.capture.unwrap_or(true) && !o.no_dns_capture,
        ttl: d.ttl.unwrap_or(5),
        port: d.port.unwrap_or(53),
        ..DnsPlan::default()
    };
    if let Some(l) = d.listen {
        p.listen4 = l;
    }
    p.listen6 = d.listen6;
    if p.port == 0 {
        err("spec.dns.port must be 1-65535".into());
    }
    let ups = if o.dns_upstreams.is_empty() {
        &d.upstreams
    } else {
        &o.dns_upstreams
    };
    p.upstreams = ups.iter().map(|u| u.0).collect();
    p
}
