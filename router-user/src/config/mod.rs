//! Config: the model ([`model`]), loading with file:line diagnostics
//! ([`load`]), the resolved inventory of services and endpoints
//! ([`inventory`]) and cross-resource validation ([`validate`]).
//!
//! Two phases, as in ztunnel: everything is converted and validated first,
//! outside any lock; only a config without errors reaches the compiler, and
//! only a compiled plan reaches the kernel. A rejected config changes nothing.
pub mod diag;
pub mod inventory;
pub mod load;
pub mod model;
pub mod policy;
pub mod resolve;
pub mod routes;
pub mod types;
pub mod validate;

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
        let l = v.referenced.line();
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
    pub address_type: String,
    pub endpoints: Vec<Spanned<Endpoint>>,
    pub ports: Vec<EndpointPort>,
}

/// Everything loaded from the config path.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub route_tables: Vec<Resource<RouteTableSpec>>,
    pub virtual_destinations: Vec<Resource<VirtualDestinationSpec>>,
    pub virtual_gateways: Vec<Resource<VirtualGatewaySpec>>,
    pub failover_policies: Vec<Resource<FailoverPolicySpec>>,
    pub outlier_policies: Vec<Resource<OutlierDetectionPolicySpec>>,
    pub health_policies: Vec<Resource<ActiveHealthCheckPolicySpec>>,
    pub services: Vec<Resource<ServiceSpec>>,
    pub endpoint_slices: Vec<Resource<EndpointSliceBody>>,
    pub router_configs: Vec<Resource<RouterConfigSpec>>,
    pub header_policies: Vec<Resource<RoutePolicySpec<HeaderManipulationConfig>>>,
    pub retry_policies: Vec<Resource<RoutePolicySpec<RetryTimeoutConfig>>>,
    pub fault_policies: Vec<Resource<RoutePolicySpec<FaultInjectionConfig>>>,
    pub mirror_policies: Vec<Resource<RoutePolicySpec<MirrorConfig>>>,
    pub cors_policies: Vec<Resource<RoutePolicySpec<CorsConfig>>>,
    /// Files read, in order.
    pub files: Vec<String>,
}

impl Resources {
    /// No resource of any kind was read.
    pub fn is_empty(&self) -> bool {
        self.route_tables.is_empty()
            && self.virtual_destinations.is_empty()
            && self.virtual_gateways.is_empty()
            && self.failover_policies.is_empty()
            && self.outlier_policies.is_empty()
            && self.health_policies.is_empty()
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
            && self.router_configs.is_empty()
            && self.header_policies.is_empty()
            && self.retry_policies.is_empty()
            && self.fault_policies.is_empty()
            && self.mirror_policies.is_empty()
            && self.cors_policies.is_empty()
    }
}

/// Command-line settings that override the RouterConfig resource.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub cluster: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub subzone: Option<String>,
    pub vip_v4: Option<String>,
    pub vip_v6: Option<String>,
    /// `--no-dns`: do not serve DNS.
    pub no_dns: bool,
    /// `--no-dns-capture`: serve DNS but leave port 53 alone.
    pub no_dns_capture: bool,
    /// `--dns-upstream`: replaces spec.dns.upstreams.
    pub dns_upstreams: Vec<String>,
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
    let mut cfg = Resources::default();
    let mut diags = diag::Diags::default();
    load::load_path(path, opts, &mut cfg, &mut diags);
    finish(cfg, overrides, diags)
}

/// Load and validate YAML text (tests, fuzzing). `file` names it in errors.
pub fn load_str(file: &str, text: &str, overrides: &Overrides) -> Result<Validated, ConfigError> {
    let mut cfg = Resources::default();
    let mut diags = diag::Diags::default();
    load::load_text(file, text, &mut cfg, &mut diags);
    cfg.files.push(file.to_string());
    finish(cfg, overrides, diags)
}

fn finish(
    cfg: Resources,
    overrides: &Overrides,
    mut diags: diag::Diags,
) -> Result<Validated, ConfigError> {
    if cfg.is_empty() && diags.errors.is_empty() {
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
    let settings = settings(&cfg, overrides, &mut diags);
    let inventory = inventory::Inventory::build(&cfg, &settings.vip_ranges, &mut diags);
    let notices = validate::validate(&cfg, &inventory, &settings, &mut diags);
    diags.into_result(Validated {
        config: cfg,
        inventory,
        settings,
        notices,
    })
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
        labels: rc.labels.clone(),
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
        Some(r) => (r.origin.file.clone(), r.origin.line, Some(r.display())),
        None => ("<flags>".to_string(), 0, None),
    };
    let ranges = rc.vip_ranges.clone().unwrap_or_default();
    if let Some(v4) = o.vip_v4.clone().or(ranges.ipv4) {
        match v4.parse::<ipnet::Ipv4Net>() {
            Ok(n) if (8..=30).contains(&n.prefix_len()) => match vip_range_problem(n.trunc().into()) {
                Some(why) => diags.push(
                    &file,
                    line,
                    res.clone(),
                    format!("IPv4 VIP range {n} overlaps {why}: choose a range no real address is in, like 240.240.0.0/16"),
                ),
                None => s.vip_ranges.v4 = n.trunc(),
            },
            Ok(n) => diags.push(
                &file,
                line,
                res.clone(),
                format!(
                    "IPv4 VIP range {n} has prefix length {}; expected /8 to /30",
                    n.prefix_len()
                ),
            ),
            Err(_) => diags.push(
                &file,
                line,
                res.clone(),
                format!("IPv4 VIP range `{v4}` is not a CIDR like 240.240.0.0/16"),
            ),
        }
    }
    if let Some(v6) = o.vip_v6.clone().or(ranges.ipv6) {
        match v6.parse::<ipnet::Ipv6Net>() {
            Ok(n) if (16..=120).contains(&n.prefix_len()) => match vip_range_problem(n.trunc().into()) {
                Some(why) => diags.push(
                    &file,
                    line,
                    res.clone(),
                    format!("IPv6 VIP range {n} overlaps {why}: choose a range no real address is in, like 2001:2::/48"),
                ),
                None => s.vip_ranges.v6 = n.trunc(),
            },
            Ok(n) => diags.push(
                &file,
                line,
                res.clone(),
                format!(
                    "IPv6 VIP range {n} has prefix length {}; expected /16 to /120",
                    n.prefix_len()
                ),
            ),
            Err(_) => diags.push(
                &file,
                line,
                res.clone(),
                format!("IPv6 VIP range `{v6}` is not a CIDR like 2001:2::/48"),
            ),
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
    s.proxy = proxy_settings(&rc.proxy.clone().unwrap_or_default(), |msg| {
        diags.push(&file, line, res.clone(), msg)
    });
    s.dns = dns_settings(&rc.dns.clone().unwrap_or_default(), o, |msg| {
        diags.push(&file, line, res.clone(), msg)
    });
    s
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
            &p.upstream_timeout,
            &mut out.upstream_timeout_ms,
        ),
        ("bodyTimeout", &p.body_timeout, &mut out.body_timeout_ms),
        ("idleTimeout", &p.idle_timeout, &mut out.idle_timeout_ms),
        (
            "tcpIdleTimeout",
            &p.tcp_idle_timeout,
            &mut out.tcp_idle_timeout_ms,
        ),
    ] {
        if let Some(v) = value {
            match types::parse_duration(v) {
                Ok(d) if !d.is_zero() => *slot = d.as_millis() as u64,
                Ok(_) => err(format!("spec.proxy.{field} must be more than 0")),
                Err(e) => err(format!("spec.proxy.{field}: {e}")),
            }
        }
    }
    if let Some(l) = &p.listen {
        match l.parse() {
            Ok(a) => out.listen4 = a,
            Err(_) => err(format!("spec.proxy.listen `{l}` is not an IPv4 address")),
        }
    }
    match p.listen6.as_deref() {
        None => {}
        Some("") => out.listen6 = None,
        Some(l) => match l.parse() {
            Ok(a) => out.listen6 = Some(a),
            Err(_) => err(format!("spec.proxy.listen6 `{l}` is not an IPv6 address")),
        },
    }
    out
}

fn dns_settings(d: &DnsSpec, o: &Overrides, mut err: impl FnMut(String)) -> DnsPlan {
    let mut p = DnsPlan {
        enabled: d.enabled.unwrap_or(true) && !o.no_dns,
        capture: d.capture.unwrap_or(true) && !o.no_dns_capture,
        ttl: d.ttl.unwrap_or(5),
        port: d.port.unwrap_or(53),
        ..DnsPlan::default()
    };
    if let Some(l) = &d.listen {
        match l.parse() {
            Ok(a) => p.listen4 = a,
            Err(_) => err(format!("spec.dns.listen `{l}` is not an IPv4 address")),
        }
    }
    if let Some(l) = &d.listen6 {
        match l.parse() {
            Ok(a) => p.listen6 = Some(a),
            Err(_) => err(format!("spec.dns.listen6 `{l}` is not an IPv6 address")),
        }
    }
    if p.port == 0 {
        err("spec.dns.port must be 1-65535".into());
    }
    let ups = if o.dns_upstreams.is_empty() {
        &d.upstreams
    } else {
        &o.dns_upstreams
    };
    for u in ups {
        let parsed = u
            .parse::<std::net::SocketAddr>()
            .or_else(|_| u.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()));
        match parsed {
            Ok(a) => p.upstreams.push(a),
            Err(_) => err(format!(
                "DNS upstream `{u}` is not an address like 10.0.0.2 or 10.0.0.2:53"
            )),
        }
    }
    p
}
