//! The resource shapes, field for field. Gloo Mesh's
//! `networking.gloo.solo.io/v2` and `resilience.policy.gloo.solo.io/v2`
//! (camelCase), Kubernetes `v1 Service` and `discovery.k8s.io/v1
//! EndpointSlice` for the inventory, and our own `RouterConfig`.
//!
//! Every struct denies unknown fields: a typo or an unsupported feature is an
//! error that names the field, not a silent no-op. Kubernetes objects list the
//! standard fields we do not use as `Ignored`, so `kubectl get -o yaml` output
//! loads unchanged.
use serde::{Deserialize, de::IgnoredAny};

pub use super::types::*;

pub type Ignored = Option<IgnoredAny>;

pub const GLOO_NETWORKING: &str = "networking.gloo.solo.io/v2";
pub const GLOO_RESILIENCE: &str = "resilience.policy.gloo.solo.io/v2";
pub const K8S_CORE: &str = "v1";
pub const K8S_DISCOVERY: &str = "discovery.k8s.io/v1";
pub const ROUTER_API: &str = "routerd.io/v1alpha1";

/// Kubernetes ObjectMeta. `clusterName` names the cluster an inventory object
/// was discovered in.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: std::sync::Arc<str>,
    #[serde(default)]
    pub namespace: Option<std::sync::Arc<str>>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    #[serde(default)]
    pub cluster_name: Option<String>,
    // Standard fields present in exported objects; not used.
    #[serde(default)]
    pub uid: Ignored,
    #[serde(default)]
    pub resource_version: Ignored,
    #[serde(default)]
    pub generation: Ignored,
    #[serde(default)]
    pub creation_timestamp: Ignored,
    #[serde(default)]
    pub deletion_timestamp: Ignored,
    #[serde(default)]
    pub deletion_grace_period_seconds: Ignored,
    #[serde(default)]
    pub managed_fields: Ignored,
    #[serde(default)]
    pub owner_references: Ignored,
    #[serde(default)]
    pub finalizers: Ignored,
    #[serde(default)]
    pub generate_name: Ignored,
    #[serde(default)]
    pub self_link: Ignored,
}

/// A whole document: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Doc<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default)]
    pub status: Ignored,
}

/// Just enough to dispatch a document by kind (unknown fields allowed).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Option<HeaderMeta>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HeaderMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

// ----------------------------------------------------------------------------
// networking.gloo.solo.io/v2
// ----------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
}

/// Selects objects by labels and/or name, namespace, cluster (all optional; all
/// given must match).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectSelector {
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    #[serde(default, deserialize_with = "opt_port")]
    pub number: Option<u16>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRef {
    #[serde(rename = "ref")]
    pub ref_: ObjectRef,
    /// `SERVICE` (default) or `VIRTUAL_DESTINATION`.
    #[serde(default)]
    pub kind: Option<DestinationKind>,
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// Label subset of the destination's endpoints.
    #[serde(default)]
    pub subset: Labels,
    /// Share of traffic, see the remainder rule in `compile::effective_weights`.
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub regex: bool,
    #[serde(default)]
    pub invert_match: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryMatcher {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub regex: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatcher {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default)]
    pub query_parameters: Vec<QueryMatcher>,
    #[serde(default)]
    pub method: Option<HttpMethod>,
    #[serde(default, deserialize_with = "opt_port")]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegexPattern {
    pub regex: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegexRewrite {
    pub pattern: RegexPattern,
    pub substitution: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwardTo {
    #[serde(default)]
    pub destinations: Vec<Spanned<DestinationRef>>,
    #[serde(default)]
    pub path_rewrite: Option<String>,
    #[serde(default)]
    pub regex_rewrite: Option<RegexRewrite>,
    #[serde(default)]
    pub host_rewrite: Option<String>,
    #[serde(default)]
    pub auto_host_rewrite: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTableSelector {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    /// Gloo's ObjectSelector fields with no meaning here (route tables are
    /// mesh-wide; no workspaces): parsed, with a notice.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub workspace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delegate {
    #[serde(default)]
    pub route_tables: Vec<RouteTableSelector>,
    /// `TABLE_WEIGHT` (default) or `ROUTE_SPECIFICITY`.
    #[serde(default)]
    pub sort_method: Option<SortMethod>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default)]
    pub host_redirect: Option<String>,
    #[serde(default)]
    pub path_redirect: Option<String>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub response_code: Option<RedirectCode>,
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default, deserialize_with = "opt_port")]
    pub port_redirect: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub matchers: Vec<HttpMatcher>,
    #[serde(default)]
    pub forward_to: Option<ForwardTo>,
    #[serde(default)]
    pub delegate: Option<Delegate>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpMatcher {
    #[serde(default, deserialize_with = "opt_port")]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub matchers: Vec<TcpMatcher>,
    #[serde(default)]
    pub forward_to: Option<ForwardTo>,
}

/// Gloo's `TLSRoute.TLSMatcher`: the SNI names (exact or `*.` wildcards)
/// and the gateway port a passthrough connection matches.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsMatcher {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default, deserialize_with = "opt_port")]
    pub port: Option<u16>,
}

/// A `tls` route: TLS connections on a PASSTHROUGH gateway listener,
/// matched by the ClientHello's SNI and forwarded undecrypted.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub matchers: Vec<TlsMatcher>,
    #[serde(default)]
    pub forward_to: Option<ForwardTo>,
}

impl RouteTableSpec {
    /// The selectors that scope the table to some workloads, when they do:
    /// `None` when there are none or one selects everything (Gloo: the table
    /// applies to every workload; here, to every caller in the cgroup).
    pub fn workload_scope(&self) -> Option<&[WorkloadSelector]> {
        scope_of(self.workload_selectors.as_deref())
    }
}

/// Selectors that select some workloads only: not none, and none of them
/// selecting everything.
fn scope_of(sels: Option<&[WorkloadSelector]>) -> Option<&[WorkloadSelector]> {
    let s = sels?;
    (!s.is_empty() && !s.iter().any(WorkloadSelector::selects_all)).then_some(s)
}

impl VirtualGatewaySpec {
    /// The gateway workloads its listeners open in, when `workloads`
    /// selects some (none, or a selector that selects everything: the
    /// node's namespace).
    pub fn workload_scope(&self) -> Option<&[WorkloadSelector]> {
        scope_of(self.workloads.as_deref())
    }
}

/// One of a RouteTable's `workloadSelectors`: the Pods it selects.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub selector: ObjectSelector,
    /// `KUBE` (the default): Pods. Others (`VM`, `EXTERNAL_WORKLOAD`) select
    /// nothing on this node.
    #[serde(default)]
    pub kind: Option<String>,
    /// Parsed (a notice): the whole workload is selected, not one port.
    #[serde(default)]
    pub port: Ignored,
}

impl WorkloadSelector {
    /// Selects every workload: no label, name, namespace or cluster.
    pub fn selects_all(&self) -> bool {
        let s = &self.selector;
        s.labels.is_empty()
            && s.name.is_none()
            && s.namespace.is_none()
            && s.cluster.is_none()
            && self.kind.as_deref().is_none_or(|k| k == "KUBE")
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTableSpec {
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub virtual_gateways: Vec<ObjectRef>,
    /// The workloads (Pods handed to routerd) the table applies to; none,
    /// or a selector that selects everything (`{}`): every caller. See
    /// [`RouteTableSpec::workload_scope`].
    #[serde(default)]
    pub workload_selectors: Option<Vec<WorkloadSelector>>,
    #[serde(default)]
    /// (Boxed: most tables have none, and the store keeps every table.)
    pub default_destination: Option<Box<Spanned<DestinationRef>>>,
    /// Order among sibling delegated tables (higher first).
    #[serde(default)]
    pub weight: Option<i32>,
    /// `ROUTE_REPLACEMENT` (default) or `FREEZE_CONFIG`.
    #[serde(default)]
    pub failure_mode: Option<FailureMode>,
    #[serde(default)]
    pub http: Vec<Spanned<HttpRoute>>,
    #[serde(default)]
    pub tcp: Vec<Spanned<TcpRoute>>,
    /// Served only by gateway listeners in PASSTHROUGH mode.
    #[serde(default)]
    pub tls: Vec<Spanned<TlsRoute>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VdPort {
    #[serde(deserialize_with = "port")]
    pub number: u16,
    /// HTTP, HTTP2, GRPC, TCP, TLS, HTTPS or UDP (default TCP).
    #[serde(default)]
    pub protocol: Option<PortProtocol>,
    #[serde(default)]
    pub target_port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualDestinationSpec {
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub services: Vec<Spanned<ObjectSelector>>,
    #[serde(default)]
    pub ports: Vec<Spanned<VdPort>>,
}

/// A port of an ExternalService (Gloo's `ExternalServiceSpec.Port`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalPort {
    #[serde(deserialize_with = "port")]
    pub number: u16,
    #[serde(default)]
    pub name: Option<String>,
    /// HTTP, HTTP2, GRPC, HTTPS, TLS, TCP or UDP (default TCP).
    #[serde(default)]
    pub protocol: Option<PortProtocol>,
    /// The port of the ExternalEndpoints (by number or name); with DNS
    /// resolution, the number dialled at the resolved addresses.
    #[serde(default)]
    pub target_port: Option<PortSelector>,
    /// TLS origination: refused (routerd forwards the client's bytes).
    #[serde(default)]
    pub clientside_tls: Ignored,
}

/// Gloo's ExternalService: hosts outside the mesh, served like a
/// VirtualDestination (a VIP and a name on the node), backed by the
/// ExternalEndpoints its `selector` selects, else by the addresses its
/// hosts resolve to in DNS.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalServiceSpec {
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Refused: routerd gives an ExternalService a VIP by host name.
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<Spanned<ExternalPort>>,
    /// Labels of the ExternalEndpoints that back it (any namespace).
    #[serde(default)]
    pub selector: Labels,
    /// Parsed, not applied (routerd does not originate TLS): a notice.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// A port of an ExternalEndpoint.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalEndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(deserialize_with = "port")]
    pub number: u16,
}

/// Gloo's ExternalEndpoint: one address (an IP, or a host name resolved by
/// DNS) with its ports. Its locality is in its labels, as on a Kubernetes
/// node (`topology.kubernetes.io/region`, `topology.kubernetes.io/zone`,
/// `topology.istio.io/subzone`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalEndpointSpec {
    pub address: String,
    #[serde(default)]
    pub ports: Vec<ExternalEndpointPort>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerTls {
    #[serde(default)]
    pub mode: Option<TlsMode>,
    #[serde(default)]
    pub secret_name: Option<String>,
    /// Gloo's form: PEM files on the node.
    #[serde(default)]
    pub files: Option<ListenerTlsFiles>,
    /// routerd's older spelling of `files.serverCert` / `files.privateKey`.
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
}

/// `tls.files` of a VirtualGateway listener (Gloo's `TLSConfig.files`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerTlsFiles {
    #[serde(default)]
    pub server_cert: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    /// The CA that signs client certificates (MUTUAL, OPTIONAL_MUTUAL).
    #[serde(default)]
    pub root_ca: Option<String>,
}

impl ListenerTls {
    /// The certificate and key files, from `files` or the older spelling.
    pub fn cert_and_key(&self) -> (Option<&String>, Option<&String>) {
        let f = self.files.as_ref();
        (
            f.and_then(|f| f.server_cert.as_ref())
                .or(self.cert_file.as_ref()),
            f.and_then(|f| f.private_key.as_ref())
                .or(self.key_file.as_ref()),
        )
    }
    pub fn root_ca(&self) -> Option<&String> {
        self.files.as_ref().and_then(|f| f.root_ca.as_ref())
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowedRouteTable {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub selector: Option<ObjectSelector>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listener {
    pub port: PortSelector,
    #[serde(default)]
    pub http: Option<IgnoredAny>,
    #[serde(default)]
    pub tcp: Option<IgnoredAny>,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    #[serde(default)]
    pub https_redirect: Option<bool>,
    #[serde(default)]
    pub allowed_route_tables: Vec<AllowedRouteTable>,
}

impl Listener {
    /// `tls: {mode: PASSTHROUGH}`: connections routed by SNI, undecrypted.
    pub fn passthrough(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.mode == Some(TlsMode::Passthrough))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualGatewaySpec {
    /// The workloads (Pods handed to routerd: gateway pods) whose network
    /// namespaces the listeners open in; none, or a selector that selects
    /// everything: the node's (the daemon's listening namespace).
    #[serde(default)]
    pub workloads: Option<Vec<WorkloadSelector>>,
    #[serde(default)]
    pub listeners: Vec<Spanned<Listener>>,
}

// ----------------------------------------------------------------------------
// resilience.policy.gloo.solo.io/v2
// ----------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSelector {
    /// `SERVICE` or `VIRTUAL_DESTINATION` (default: both).
    #[serde(default)]
    pub kind: Option<DestinationKind>,
    #[serde(default)]
    pub selector: Option<ObjectSelector>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalitySelector {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub sub_zone: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityTarget {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub sub_zone: Option<String>,
    /// With weights on every target, traffic is *distributed* by weight
    /// (Istio's `distribute`); without, targets are failover order.
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityMapping {
    pub from: LocalitySelector,
    #[serde(default)]
    pub to: Vec<LocalityTarget>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PriorityLabels {
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverConfig {
    #[serde(default)]
    pub locality_mappings: Vec<Spanned<LocalityMapping>>,
    #[serde(default)]
    pub priority_labels: Option<PriorityLabels>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverPolicySpec {
    #[serde(default)]
    pub apply_to_destinations: Vec<Spanned<DestinationSelector>>,
    #[serde(default)]
    pub config: Option<FailoverConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierConfig {
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<GlooDuration>,
    #[serde(default)]
    pub base_ejection_time: Option<GlooDuration>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetectionPolicySpec {
    #[serde(default)]
    pub apply_to_destinations: Vec<Spanned<DestinationSelector>>,
    #[serde(default)]
    pub config: Option<OutlierConfig>,
}

/// `[start, end)` of HTTP statuses (Envoy's Int64Range).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusRange {
    pub start: u32,
    pub end: u32,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// Path of the GET (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// Host header (default: the endpoint's address).
    #[serde(default)]
    pub host: Option<String>,
    /// Healthy statuses (default 200-399).
    #[serde(default)]
    pub expected_statuses: Vec<StatusRange>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpHealthCheck {}

/// Envoy's HealthCheck fields, as Gloo's ActiveHealthCheckPolicy carries them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckSpec {
    #[serde(default)]
    pub timeout: Option<GlooDuration>,
    #[serde(default)]
    pub interval: Option<GlooDuration>,
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    #[serde(default)]
    pub http_health_check: Option<HttpHealthCheck>,
    #[serde(default)]
    pub tcp_health_check: Option<TcpHealthCheck>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActiveHealthCheckConfig {
    #[serde(default)]
    pub health_check: Option<HealthCheckSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActiveHealthCheckPolicySpec {
    #[serde(default)]
    pub apply_to_destinations: Vec<Spanned<DestinationSelector>>,
    #[serde(default)]
    pub config: Option<ActiveHealthCheckConfig>,
}

// ----------------------------------------------------------------------------
// Kubernetes inventory
// ----------------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u32),
    Str(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// TCP (default) or UDP.
    #[serde(default)]
    pub protocol: Option<K8sProtocol>,
    #[serde(default)]
    pub app_protocol: Option<String>,
    #[serde(default)]
    pub node_port: Ignored,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub ports: Vec<Spanned<ServicePort>>,
    #[serde(default)]
    pub selector: Labels,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub publish_not_ready_addresses: Option<bool>,
    // Standard fields we do not use.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Ignored,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Ignored,
    #[serde(default, rename = "externalIPs")]
    pub external_ips: Ignored,
    #[serde(default)]
    pub external_name: Ignored,
    #[serde(default)]
    pub session_affinity: Ignored,
    #[serde(default)]
    pub session_affinity_config: Ignored,
    #[serde(default, rename = "loadBalancerIP")]
    pub load_balancer_ip: Ignored,
    #[serde(default)]
    pub load_balancer_source_ranges: Ignored,
    #[serde(default)]
    pub load_balancer_class: Ignored,
    #[serde(default)]
    pub allocate_load_balancer_node_ports: Ignored,
    #[serde(default)]
    pub ip_families: Ignored,
    #[serde(default)]
    pub ip_family_policy: Ignored,
    #[serde(default)]
    pub internal_traffic_policy: Ignored,
    #[serde(default)]
    pub external_traffic_policy: Ignored,
    #[serde(default)]
    pub health_check_node_port: Ignored,
    #[serde(default)]
    pub traffic_distribution: Ignored,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    // Read by nothing (kept as `Ignored`: 48 bytes less on each of
    // 100,000 endpoints).
    #[serde(default)]
    pub hostname: Ignored,
    #[serde(default)]
    pub node_name: Ignored,
    #[serde(default)]
    pub zone: Option<String>,
    /// `topology.kubernetes.io/region`, `topology.istio.io/subzone` live here
    /// (or on the slice's labels).
    #[serde(default)]
    pub deprecated_topology: Labels,
    #[serde(default)]
    pub target_ref: Ignored,
    #[serde(default)]
    pub hints: Ignored,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    #[serde(default)]
    pub protocol: Option<K8sProtocol>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// A `v1 Pod` of the inventory: a workload, by name, namespace, cluster
/// (`metadata.clusterName`; none: this node's) and labels, for
/// `workloadSelectors`. Its spec and status are not read.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Ignored,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

/// A Pod's `status`: its addresses. Written by the cluster, so its other
/// fields (phase, conditions, container statuses, ...) are accepted and
/// not read, as `kubectl get -o yaml` prints them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<std::net::IpAddr>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIp {
    pub ip: std::net::IpAddr,
}

/// What routerd keeps of a Pod besides its metadata: its addresses (the
/// workload's own: see `spec.workloadHairpin` of RouterConfig).
#[derive(Clone, Debug, Default)]
pub struct PodBody {
    pub ips: Vec<std::net::IpAddr>,
}

/// EndpointSlice has no `spec`: its fields are at the top level.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSliceDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub address_type: AddressType,
    #[serde(default)]
    pub endpoints: Vec<Spanned<Endpoint>>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// A `v1 Secret`: its fields are at the top level.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Values base64-encoded, as Kubernetes stores them.
    #[serde(default)]
    pub data: std::collections::BTreeMap<String, String>,
    /// Values as they are (Kubernetes merges them into `data`).
    #[serde(default)]
    pub string_data: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub immutable: Option<bool>,
}

/// A Secret's type and values (still encoded: decoded where used, so that
/// a bad value is an error naming the resource that uses it).
#[derive(Clone, Default)]
pub struct SecretBody {
    pub type_: Option<String>,
    pub data: std::collections::BTreeMap<String, String>,
    pub string_data: std::collections::BTreeMap<String, String>,
}

/// Never prints the values.
impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBody")
            .field("type", &self.type_)
            .field(
                "keys",
                &self
                    .data
                    .keys()
                    .chain(self.string_data.keys())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The Kubernetes type of TLS secrets.
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

impl SecretBody {
    /// The value of `key`, decoded (`stringData` wins, as in Kubernetes).
    pub fn value(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine as _;
        if let Some(v) = self.string_data.get(key) {
            return Ok(Some(v.as_bytes().to_vec()));
        }
        let Some(v) = self.data.get(key) else {
            return Ok(None);
        };
        let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map(Some)
            .map_err(|e| format!("data.{key} is not base64 ({e})"))
    }

    /// The certificate, key and optional CA of a `kubernetes.io/tls` Secret
    /// (`tls.crt`, `tls.key`, `ca.crt`), as PEM text.
    pub fn tls(&self) -> Result<(String, String, Option<String>), String> {
        if self.type_.as_deref() != Some(SECRET_TYPE_TLS) {
            return Err(format!(
                "has type {}, expected {SECRET_TYPE_TLS} (with tls.crt and tls.key)",
                self.type_.as_deref().unwrap_or("Opaque (unset)")
            ));
        }
        let text = |key: &str| -> Result<Option<String>, String> {
            self.value(key)?
                .map(|b| String::from_utf8(b).map_err(|_| format!("{key} is not PEM text")))
                .transpose()
        };
        let cert = text("tls.crt")?.ok_or("has no tls.crt")?;
        let key = text("tls.key")?.ok_or("has no tls.key")?;
        Ok((cert, key, text("ca.crt")?))
    }
}

// ----------------------------------------------------------------------------
// routerd.io/v1alpha1
// ----------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VipRangesSpec {
    #[serde(default)]
    pub ipv4: Option<ipnet::Ipv4Net>,
    #[serde(default)]
    pub ipv6: Option<ipnet::Ipv6Net>,
}

/// The node's identity and the router's own settings. Flags override it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouterConfigSpec {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub subzone: Option<String>,
    /// Labels of this node's workloads (for `priorityLabels`).
    #[serde(default)]
    pub labels: Labels,
    /// A workload (a Pod handed to routerd) that dials a VIP whose
    /// endpoints include its own address may be sent to itself. Default
    /// false: the kernel picks another endpoint when there is one.
    #[serde(default)]
    pub workload_hairpin: Option<bool>,
    #[serde(default)]
    pub vip_ranges: Option<VipRangesSpec>,
    /// Istio applies locality priorities only to destinations with outlier
    /// detection. Default true (Istio's behaviour); false applies them always.
    #[serde(default)]
    pub locality_requires_outlier_detection: Option<bool>,
    /// Refuse connections into the VIP ranges that match no service (default true).
    #[serde(default)]
    pub refuse_unknown_vips: Option<bool>,
    /// Envoy's healthy panic threshold, percent (default 50; 0 turns panic
    /// off): when a locality tier that takes traffic has fewer healthy
    /// endpoints than this and the tiers together are short of capacity,
    /// the tier's traffic goes to all its endpoints, healthy or not.
    #[serde(default)]
    pub healthy_panic_threshold: Option<u32>,
    /// When an endpoint is removed, turns unready, fails its health checks or
    /// is ejected: close the connections clients in the cgroup have open to
    /// it (TCP reset; connected UDP sockets get an error), so they reconnect
    /// to a live one. Default false: established connections are kept.
    #[serde(default)]
    pub close_connections_to_removed_endpoints: Option<bool>,
    /// The first SYN retransmission timeout of connections the kernel
    /// watches (to backends with outlier detection), instead of Linux's 1 s:
    /// a blackholed endpoint counts a failure after this. Unset: Linux's.
    #[serde(default)]
    pub syn_retransmit_timeout: Option<GlooDuration>,
    #[serde(default)]
    pub dns: Option<DnsSpec>,
    #[serde(default)]
    pub proxy: Option<ProxySpec>,
}

/// `spec.proxy` of the RouterConfig: the L7 proxy's listeners.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxySpec {
    /// The listeners' port: privileged (below 1024), default 1000.
    #[serde(default, deserialize_with = "opt_port")]
    pub port: Option<u16>,
    /// Gone (one listener serves every L7 service now); parsed only to say so.
    #[serde(default)]
    pub port_range: Option<String>,
    /// Default upstream response timeout (a duration like `15s`).
    #[serde(default)]
    pub upstream_timeout: Option<GlooDuration>,
    /// Request body deadline (buffered) / longest pause (streamed).
    #[serde(default)]
    pub body_timeout: Option<GlooDuration>,
    /// Idle HTTP connections are closed after this.
    #[serde(default)]
    pub idle_timeout: Option<GlooDuration>,
    /// Idle TCP gateway connections are closed after this.
    #[serde(default)]
    pub tcp_idle_timeout: Option<GlooDuration>,
    /// IPv4 listener address (default 127.0.0.1).
    #[serde(default)]
    pub listen: Option<std::net::Ipv4Addr>,
    /// IPv6 listener address (default ::1; empty string: none).
    #[serde(default)]
    pub listen6: Option<OptionalIpv6>,
    /// Where an AccessLogPolicy's lines go: a file (appended to), or `-`
    /// for the daemon's stdout (the default).
    #[serde(default)]
    pub access_log_path: Option<String>,
    /// What VirtualGateway listeners bind (default `["0.0.0.0"]`; add
    /// `"::"` for dual-stack).
    #[serde(default)]
    pub gateway_addresses: Option<Vec<std::net::IpAddr>>,
}

// ----------------------------------------------------------------------------
// observability.policy.gloo.solo.io/v2
// ----------------------------------------------------------------------------

pub const GLOO_OBSERVABILITY: &str = "observability.policy.gloo.solo.io/v2";

/// Gloo's `StatusCodeMatcher.Comparator`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Comparator {
    #[default]
    #[serde(rename = "EQ")]
    Eq,
    #[serde(rename = "GE")]
    Ge,
    #[serde(rename = "LE")]
    Le,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusCodeMatcher {
    #[serde(default)]
    pub value: u32,
    #[serde(default)]
    pub comparator: Comparator,
}

/// One of `filters`: a status code or a header (exactly one).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogFilter {
    #[serde(default)]
    pub status_code_matcher: Option<StatusCodeMatcher>,
    #[serde(default)]
    pub header_matcher: Option<HeaderMatcher>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConfig {
    /// Any of them (none: every request).
    #[serde(default)]
    pub filters: Vec<Spanned<AccessLogFilter>>,
    #[serde(default)]
    pub included_request_headers: Vec<String>,
    #[serde(default)]
    pub included_response_headers: Vec<String>,
    /// Parsed, not logged (a notice).
    #[serde(default)]
    pub included_response_trailers: Vec<String>,
    /// Envoy's filter state: none here (a notice).
    #[serde(default)]
    pub included_filter_state_objects: Vec<String>,
}

/// Gloo's AccessLogPolicy: which L7 requests the node's proxy logs, and
/// what with.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogPolicySpec {
    /// Parsed (a notice): the node's proxy and gateways are the workload.
    #[serde(default)]
    pub apply_to_workloads: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    pub config: Option<AccessLogConfig>,
}

/// `spec.dns` of the RouterConfig.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSpec {
    /// Serve DNS for virtual hosts (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Steer port-53 traffic of the attached cgroup to routerd (default true).
    #[serde(default)]
    pub capture: Option<bool>,
    /// TTL of answers for virtual hosts, seconds (default 5).
    #[serde(default)]
    pub ttl: Option<u32>,
    /// IPv4 listener address (default 127.0.0.153).
    #[serde(default)]
    pub listen: Option<std::net::Ipv4Addr>,
    /// IPv6 listener address (default: none, IPv6 DNS is not captured).
    #[serde(default)]
    pub listen6: Option<std::net::Ipv6Addr>,
    /// Listener port (default 53).
    #[serde(default, deserialize_with = "opt_port")]
    pub port: Option<u16>,
    /// Upstream resolvers, `ip` or `ip:port` (default: the node's resolv.conf).
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
}

// ----------------------------------------------------------------------------
// Route policies (applyToRoutes): trafficcontrol, resilience, security
// ----------------------------------------------------------------------------

pub const GLOO_TRAFFIC: &str = "trafficcontrol.policy.gloo.solo.io/v2";
pub const GLOO_SECURITY: &str = "security.policy.gloo.solo.io/v2";

/// Selects routes by the labels a route carries (its own and, for delegated
/// routes, its parents').
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSelector {
    #[serde(default)]
    pub route: Option<RouteRef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRef {
    #[serde(default)]
    pub labels: Labels,
    /// Route table name and namespace (optional).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Gloo's ObjectSelector fields that routerd's config has no use for
    /// (route tables are mesh-wide; there are no workspaces): parsed, and a
    /// notice says they do not narrow the selection.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub workspace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderManipulationConfig {
    #[serde(default)]
    pub append_request_headers: Labels,
    #[serde(default)]
    pub remove_request_headers: Vec<String>,
    #[serde(default)]
    pub append_response_headers: Labels,
    #[serde(default)]
    pub remove_response_headers: Vec<String>,
}

/// Gloo's `RetryTimeoutPolicySpec.Config.RetryPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries after the first attempt (Gloo's default: 2).
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub per_try_timeout: Option<GlooDuration>,
    /// `5xx`, `gateway-error`, `reset`, `connect-failure`, `retriable-4xx`,
    /// `retriable-status-codes` and HTTP status codes: a comma-separated
    /// string (Gloo) or a list.
    #[serde(default)]
    pub retry_on: RetryOnList,
    /// Parsed; retries stay in the locality tier that serves (a notice).
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    /// Not Gloo's (an earlier routerd field): refused with the way to say it.
    #[serde(default, deserialize_with = "not_gloo_retriable_status_codes")]
    pub retriable_status_codes: (),
}

fn not_gloo_retriable_status_codes<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(
        "retriableStatusCodes is not a field of Gloo's RetryTimeoutPolicy; list the status \
         codes in retryOn instead, e.g. `retryOn: 5xx,429`",
    ))
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryTimeoutConfig {
    #[serde(default)]
    pub retries: Option<RetrySpec>,
    #[serde(default)]
    pub request_timeout: Option<GlooDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    pub fixed_delay: GlooDuration,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    pub http_status: u16,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjectionConfig {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorConfig {
    pub destination: Spanned<DestinationRef>,
    /// Percentage of requests mirrored (default 100).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsConfig {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<GlooDuration>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
}

/// The shape every route policy shares: selectors plus a kind-specific config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutePolicySpec<C> {
    #[serde(default)]
    pub apply_to_routes: Vec<Spanned<RouteSelector>>,
    pub config: C,
}
