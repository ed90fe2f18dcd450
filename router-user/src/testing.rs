//! Typed fixture builders for tests, benchmarks, drills and the demo: a
//! config is built from Rust values and rendered as block YAML, one
//! document per object, so nobody assembles YAML with `format!`. Defaults
//! follow the test worlds: namespace `t`, Services labelled `app: <name>`,
//! a port named `p`. Fields a builder has no method for go in as JSON
//! (`serde_json::json!`). This module knows only the YAML shapes (it is in
//! the lowest layer): tests load what it renders like any config.
//!
//! ```
//! use router_user::testing::*;
//! let yaml = Config::new()
//!     .node("c1", "east", "e1")
//!     .with(Service::new("c1", "web").port(8080))
//!     .with(Slice::new("c1", "web", "web").region("east").port(8080).endpoint("10.1.0.1", "e1"))
//!     .with(VirtualDestination::new("web", "web.t.mesh").app("web").port(8080, "HTTP"))
//!     .yaml();
//! assert!(yaml.contains("web.t.mesh"));
//! ```
use serde_json::{Map, Value, json};

const NS: &str = "t";

/// Something that renders to config documents.
pub trait Docs {
    fn docs(&self) -> Vec<Value>;
}

impl Docs for Value {
    fn docs(&self) -> Vec<Value> {
        vec![self.clone()]
    }
}

/// `metadata`: name, namespace, labels and, for inventory, the cluster.
#[derive(Clone, Debug)]
pub struct Meta {
    name: String,
    ns: String,
    labels: Map<String, Value>,
    cluster: Option<String>,
}

impl Meta {
    fn new(name: &str) -> Self {
        Meta {
            name: name.into(),
            ns: NS.into(),
            labels: Map::new(),
            cluster: None,
        }
    }

    fn value(&self) -> Value {
        let mut m = json!({"name": self.name, "namespace": self.ns});
        if !self.labels.is_empty() {
            m["labels"] = Value::Object(self.labels.clone());
        }
        if let Some(c) = &self.cluster {
            m["clusterName"] = c.clone().into();
        }
        m
    }

    /// A document: `apiVersion`, `kind`, `metadata`, then `body`'s fields.
    fn doc(&self, api: &str, kind: &str, body: Map<String, Value>) -> Value {
        let mut m = Map::new();
        m.insert("apiVersion".into(), api.into());
        m.insert("kind".into(), kind.into());
        m.insert("metadata".into(), self.value());
        m.extend(body);
        Value::Object(m)
    }
}

/// An object with metadata: its namespace and labels can be set.
pub trait Object: Sized {
    fn meta(&mut self) -> &mut Meta;
    fn namespace(mut self, ns: &str) -> Self {
        self.meta().ns = ns.into();
        self
    }
    fn label(mut self, k: &str, v: &str) -> Self {
        self.meta().labels.insert(k.into(), v.into());
        self
    }
}

/// Kubernetes ports (a Service's, an EndpointSlice's).
pub trait Ports: Sized {
    fn ports(&mut self) -> &mut Vec<Value>;
    /// A TCP port named `p`.
    fn port(self, port: u16) -> Self {
        self.named_port("p", port, "TCP")
    }
    /// A UDP port named `p`.
    fn udp_port(self, port: u16) -> Self {
        self.named_port("p", port, "UDP")
    }
    fn named_port(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports()
            .push(json!({"name": name, "port": port, "protocol": protocol}));
        self
    }
}

/// A workload selector by labels (`{"selector": {"labels": ...}}`).
fn selector(labels: &[(&str, &str)]) -> Value {
    let labels: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    json!({"selector": {"labels": labels}})
}

/// Append to the list `field` of `m` (created empty).
fn push(m: &mut Map<String, Value>, field: &str, v: Value) {
    m.entry(field)
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("a list field")
        .push(v);
}

/// Merge the object `extra` into the object `field` of `m` (created empty).
fn merge(m: &mut Map<String, Value>, field: &str, extra: Value) {
    let f = m
        .entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("an object field");
    if let Value::Object(e) = extra {
        f.extend(e);
    }
}

/// A whole config: documents in order.
#[derive(Clone, Debug, Default)]
pub struct Config {
    docs: Vec<Value>,
}

impl Docs for Config {
    fn docs(&self) -> Vec<Value> {
        self.docs.clone()
    }
}

impl Config {
    pub fn new() -> Self {
        Config::default()
    }

    /// The RouterConfig of a node in `cluster` at `region`/`zone`.
    pub fn node(self, cluster: &str, region: &str, zone: &str) -> Self {
        self.node_with(cluster, region, zone, json!({}))
    }

    /// The same, with more `spec` fields (a JSON object: `{"proxy": {...}}`).
    pub fn node_with(mut self, cluster: &str, region: &str, zone: &str, extra: Value) -> Self {
        let mut body = Map::new();
        body.insert(
            "spec".into(),
            json!({"cluster": cluster, "region": region, "zone": zone}),
        );
        merge(&mut body, "spec", extra);
        let mut meta = Meta::new("node");
        meta.ns = "default".into();
        self.docs
            .push(meta.doc("routerd.io/v1alpha1", "RouterConfig", body));
        self
    }

    /// Add objects.
    pub fn with(mut self, d: impl Docs) -> Self {
        self.docs.extend(d.docs());
        self
    }

    /// The documents, as YAML text.
    pub fn yaml(&self) -> String {
        let mut out = String::new();
        for d in &self.docs {
            out.push_str(&serde_saphyr::to_string(d).expect("JSON values serialize as YAML"));
            out.push_str("---\n");
        }
        out
    }
}

/// A Kubernetes Service in one cluster, labelled `app: <name>`.
#[derive(Clone, Debug)]
pub struct Service {
    meta: Meta,
    ports: Vec<Value>,
    publish_not_ready: bool,
}

impl Service {
    pub fn new(cluster: &str, name: &str) -> Self {
        let mut meta = Meta::new(name);
        meta.cluster = Some(cluster.into());
        meta.labels.insert("app".into(), name.into());
        Service {
            meta,
            ports: Vec::new(),
            publish_not_ready: false,
        }
    }
    pub fn publish_not_ready(mut self) -> Self {
        self.publish_not_ready = true;
        self
    }
}

impl Object for Service {
    fn meta(&mut self) -> &mut Meta {
        &mut self.meta
    }
}

impl Ports for Service {
    fn ports(&mut self) -> &mut Vec<Value> {
        &mut self.ports
    }
}

impl Docs for Service {
    fn docs(&self) -> Vec<Value> {
        let mut spec = json!({"ports": self.ports});
        if self.publish_not_ready {
            spec["publishNotReadyAddresses"] = true.into();
        }
        let mut body = Map::new();
        body.insert("spec".into(), spec);
        vec![self.meta.doc("v1", "Service", body)]
    }
}

/// A `v1 Pod` of the inventory (namespace `t`, no cluster: the node's),
/// with labels for `workloadSelectors`.
#[derive(Clone, Debug)]
pub struct Pod {
    meta: Meta,
    ips: Vec<String>,
}

impl Pod {
    pub fn new(name: &str) -> Self {
        Pod {
            meta: Meta::new(name),
            ips: Vec::new(),
        }
    }
    /// An address of the Pod (`status.podIPs`).
    pub fn ip(mut self, ip: &str) -> Self {
        self.ips.push(ip.into());
        self
    }
    /// A Pod of another cluster than the node's.
    pub fn cluster(mut self, c: &str) -> Self {
        self.meta.cluster = Some(c.into());
        self
    }
}

impl Object for Pod {
    fn meta(&mut self) -> &mut Meta {
        &mut self.meta
    }
}

impl Docs for Pod {
    fn docs(&self) -> Vec<Value> {
        let mut body = Map::new();
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self.ips.iter().map(|ip| json!({"ip": ip})).collect();
            body.insert(
                "status".into(),
                json!({"podIP": self.ips[0], "podIPs": ips}),
            );
        }
        vec![self.meta.doc("v1", "Pod", body)]
    }
}

/// A `kubernetes.io/tls` Secret (values as `stringData`: PEM text).
#[derive(Clone, Debug)]
pub struct TlsSecret {
    meta: Meta,
    data: Map<String, Value>,
}

impl TlsSecret {
    pub fn new(name: &str, cert: &str, key: &str) -> Self {
        let mut data = Map::new();
        data.insert("tls.crt".into(), cert.into());
        data.insert("tls.key".into(), key.into());
        TlsSecret {
            meta: Meta::new(name),
            data,
        }
    }
    /// The CA that signs client certificates (`ca.crt`).
    pub fn ca(mut self, ca: &str) -> Self {
        self.data.insert("ca.crt".into(), ca.into());
        self
    }
}

impl Object for TlsSecret {
    fn meta(&mut self) -> &mut Meta {
        &mut self.meta
    }
}

impl Docs for TlsSecret {
    fn docs(&self) -> Vec<Value> {
        let mut body = Map::new();
        body.insert("type".into(), "kubernetes.io/tls".into());
        body.insert("stringData".into(), Value::Object(self.data.clone()));
        vec![self.meta.doc("v1", "Secret", body)]
    }
}

/// An endpoint: address, zone (empty: none given), ready.
pub type Ep<'a> = (&'a str, &'a str, bool);

/// An EndpointSlice of a Service.
#[derive(Clone, Debug)]
pub struct Slice {
    meta: Meta,
    ports: Vec<Value>,
    endpoints: Vec<Value>,
    v6: bool,
}

impl Slice {
    pub fn new(cluster: &str, service: &str, name: &str) -> Self {
        let mut meta = Meta::new(name);
        meta.cluster = Some(cluster.into());
        meta.labels
            .insert("kubernetes.io/service-name".into(), service.into());
        Slice {
            meta,
            ports: Vec::new(),
            endpoints: Vec::new(),
            v6: false,
        }
    }
    /// The region of the slice's endpoints.
    pub fn region(self, region: &str) -> Self {
        self.label("topology.kubernetes.io/region", region)
    }
    /// A ready endpoint in `zone` (empty: none given).
    pub fn endpoint(self, addr: &str, zone: &str) -> Self {
        self.endpoint_ready(addr, zone, true)
    }
    pub fn endpoint_ready(mut self, addr: &str, zone: &str, ready: bool) -> Self {
        self.v6 |= addr.contains(':');
        let mut e = json!({"addresses": [addr], "conditions": {"ready": ready}});
        if !zone.is_empty() {
            e["zone"] = zone.into();
        }
        self.endpoints.push(e);
        self
    }
    pub fn endpoints(self, eps: &[Ep<'_>]) -> Self {
        eps.iter()
            .fold(self, |s, (a, z, r)| s.endpoint_ready(a, z, *r))
    }
}

impl Object for Slice {
    fn meta(&mut self) -> &mut Meta {
        &mut self.meta
    }
}

impl Ports for Slice {
    fn ports(&mut self) -> &mut Vec<Value> {
        &mut self.ports
    }
}

impl Docs for Slice {
    fn docs(&self) -> Vec<Value> {
        let mut body = Map::new();
        body.insert(
            "addressType".into(),
            if self.v6 { "IPv6" } else { "IPv4" }.into(),
        );
        body.insert("ports".into(), Value::Array(self.ports.clone()));
        body.insert("endpoints".into(), Value::Array(self.endpoints.clone()));
        vec![self.meta.doc("discovery.k8s.io/v1", "EndpointSlice", body)]
    }
}

/// A Service with one TCP port and one slice: the test worlds' usual backend.
pub fn service_with_slice(
    cluster: &str,
    region: &str,
    name: &str,
    slice: &str,
    port: u16,
    eps: &[Ep<'_>],
) -> Config {
    Config::new()
        .with(Service::new(cluster, name).port(port))
        .with(
            Slice::new(cluster, name, slice)
                .region(region)
                .port(port)
                .endpoints(eps),
        )
}

/// Service `web` (TCP 8080, `app: web`) in `cluster` with one slice: the
/// backend most tests use.
pub fn web(cluster: &str, region: &str, slice: &str, eps: &[Ep<'_>]) -> Config {
    service_with_slice(cluster, region, "web", slice, 8080, eps)
}

const GLOO: &str = "networking.gloo.solo.io/v2";

/// A Gloo object: metadata and a `spec`.
#[derive(Clone, Debug)]
struct Spec {
    api: &'static str,
    kind: &'static str,
    meta: Meta,
    spec: Map<String, Value>,
}

impl Spec {
    fn new(api: &'static str, kind: &'static str, name: &str) -> Self {
        Spec {
            api,
            kind,
            meta: Meta::new(name),
            spec: Map::new(),
        }
    }
    fn docs(&self) -> Vec<Value> {
        let mut body = Map::new();
        body.insert("spec".into(), Value::Object(self.spec.clone()));
        vec![self.meta.doc(self.api, self.kind, body)]
    }
}

/// Builders of Gloo objects share their metadata and spec handling.
macro_rules! gloo_object {
    ($t:ident) => {
        impl Object for $t {
            fn meta(&mut self) -> &mut Meta {
                &mut self.0.meta
            }
        }
        impl Docs for $t {
            fn docs(&self) -> Vec<Value> {
                self.0.docs()
            }
        }
        impl $t {
            /// Any other `spec` field, as Gloo writes it.
            pub fn set(mut self, field: &str, v: Value) -> Self {
                self.0.spec.insert(field.into(), v);
                self
            }
        }
    };
}

/// A VirtualDestination.
#[derive(Clone, Debug)]
pub struct VirtualDestination(Spec);
gloo_object!(VirtualDestination);

impl VirtualDestination {
    pub fn new(name: &str, host: &str) -> Self {
        let mut s = Spec::new(GLOO, "VirtualDestination", name);
        push(&mut s.spec, "hosts", host.into());
        VirtualDestination(s)
    }
    /// Back it with the services labelled `app: <app>`.
    pub fn app(self, app: &str) -> Self {
        self.services(json!({"labels": {"app": app}}))
    }
    /// Back it with services a selector picks (a JSON object).
    pub fn services(mut self, selector: Value) -> Self {
        push(&mut self.0.spec, "services", selector);
        self
    }
    pub fn port(self, number: u16, protocol: &str) -> Self {
        self.port_spec(json!({"number": number, "protocol": protocol}))
    }
    /// A port as Gloo writes it (`{"number": 80, "targetPort": {"name": "http"}}`).
    pub fn port_spec(mut self, port: Value) -> Self {
        push(&mut self.0.spec, "ports", port);
        self
    }
}

/// An ExternalService: `host` served with a VIP and a name, backed by the
/// ExternalEndpoints its selector picks, else by `host` as DNS resolves it.
#[derive(Clone, Debug)]
pub struct ExternalService(Spec);
gloo_object!(ExternalService);

impl ExternalService {
    pub fn new(name: &str, host: &str) -> Self {
        let mut s = Spec::new(GLOO, "ExternalService", name);
        push(&mut s.spec, "hosts", host.into());
        ExternalService(s)
    }
    /// A port as Gloo writes it (`{"number": 443, "name": "https", "protocol": "HTTPS"}`).
    pub fn port(mut self, port: Value) -> Self {
        push(&mut self.0.spec, "ports", port);
        self
    }
    /// Back it with the ExternalEndpoints labelled so.
    pub fn selector(mut self, k: &str, v: &str) -> Self {
        merge(&mut self.0.spec, "selector", json!({ k: v }));
        self
    }
}

/// An ExternalEndpoint: an address (IP or host name) and its ports.
#[derive(Clone, Debug)]
pub struct ExternalEndpoint(Spec);
gloo_object!(ExternalEndpoint);

impl ExternalEndpoint {
    pub fn new(name: &str, address: &str) -> Self {
        let mut s = Spec::new(GLOO, "ExternalEndpoint", name);
        s.spec.insert("address".into(), address.into());
        ExternalEndpoint(s)
    }
    pub fn port(mut self, name: &str, number: u16) -> Self {
        push(
            &mut self.0.spec,
            "ports",
            json!({"name": name, "number": number}),
        );
        self
    }
}

/// A VirtualDestination for `host` over the services labelled `app: <app>`,
/// on one port, labelled `lb: local` (so [`locality_policy`] applies).
pub fn local_vd(
    name: &str,
    host: &str,
    app: &str,
    port: u16,
    protocol: &str,
) -> VirtualDestination {
    VirtualDestination::new(name, host)
        .app(app)
        .port(port, protocol)
        .label("lb", "local")
}

/// A `forwardTo` destination.
#[derive(Clone, Debug)]
pub struct Dest(Value);

impl Dest {
    /// A Service by name (in the route table's namespace).
    pub fn service(name: &str) -> Self {
        Dest(json!({"ref": {"name": name}}))
    }
    /// A VirtualDestination by name.
    pub fn virtual_destination(name: &str) -> Self {
        Dest(json!({"ref": {"name": name}, "kind": "VIRTUAL_DESTINATION"}))
    }
    /// An ExternalService by name.
    pub fn external_service(name: &str) -> Self {
        Dest(json!({"ref": {"name": name}, "kind": "EXTERNAL_SERVICE"}))
    }
    pub fn cluster(mut self, c: &str) -> Self {
        self.0["ref"]["cluster"] = c.into();
        self
    }
    pub fn port(mut self, n: u16) -> Self {
        self.0["port"] = json!({"number": n});
        self
    }
    pub fn subset(mut self, k: &str, v: &str) -> Self {
        if self.0.get("subset").is_none() {
            self.0["subset"] = json!({});
        }
        self.0["subset"][k] = v.into();
        self
    }
    pub fn weight(mut self, w: u32) -> Self {
        self.0["weight"] = w.into();
        self
    }
    pub fn value(&self) -> Value {
        self.0.clone()
    }
}

/// What HTTP and TCP routes share: a name, matchers, `forwardTo`.
pub trait Route: Sized {
    fn fields(&mut self) -> &mut Map<String, Value>;
    fn name(mut self, n: &str) -> Self {
        self.fields().insert("name".into(), n.into());
        self
    }
    /// One more matcher (any matcher may match).
    fn matcher(mut self, m: Value) -> Self {
        push(self.fields(), "matchers", m);
        self
    }
    fn on_port(self, p: u16) -> Self {
        self.matcher(json!({"port": p}))
    }
    /// Forward to these destinations.
    fn to(mut self, dests: &[Dest]) -> Self {
        let list: Vec<Value> = dests.iter().map(Dest::value).collect();
        merge(self.fields(), "forwardTo", json!({"destinations": list}));
        self
    }
    /// More `forwardTo` fields (a JSON object: `{"pathRewrite": "/v1"}`).
    fn forward_with(mut self, extra: Value) -> Self {
        merge(self.fields(), "forwardTo", extra);
        self
    }
}

/// An HTTP route of a route table.
#[derive(Clone, Debug, Default)]
pub struct HttpRoute(Map<String, Value>);

impl Route for HttpRoute {
    fn fields(&mut self) -> &mut Map<String, Value> {
        &mut self.0
    }
}

impl HttpRoute {
    pub fn new() -> Self {
        HttpRoute::default()
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        merge(&mut self.0, "labels", json!({ k: v }));
        self
    }
    pub fn prefix(self, p: &str) -> Self {
        self.matcher(json!({"uri": {"prefix": p}}))
    }
    pub fn exact(self, p: &str) -> Self {
        self.matcher(json!({"uri": {"exact": p}}))
    }
    pub fn redirect(mut self, r: Value) -> Self {
        self.0.insert("redirect".into(), r);
        self
    }
    pub fn direct(mut self, status: u16, body: &str) -> Self {
        self.0.insert(
            "directResponse".into(),
            json!({"status": status, "body": body}),
        );
        self
    }
    pub fn delegate(mut self, d: Value) -> Self {
        self.0.insert("delegate".into(), d);
        self
    }
}

/// A TCP route of a route table.
#[derive(Clone, Debug, Default)]
pub struct TcpRoute(Map<String, Value>);

impl Route for TcpRoute {
    fn fields(&mut self) -> &mut Map<String, Value> {
        &mut self.0
    }
}

impl TcpRoute {
    pub fn new() -> Self {
        TcpRoute::default()
    }
}

/// A `tls` route of a route table (served by PASSTHROUGH gateway listeners).
#[derive(Clone, Debug, Default)]
pub struct TlsRoute(Map<String, Value>);

impl Route for TlsRoute {
    fn fields(&mut self) -> &mut Map<String, Value> {
        &mut self.0
    }
}

impl TlsRoute {
    pub fn new() -> Self {
        TlsRoute::default()
    }
    /// Match connections whose ClientHello names one of `hosts`.
    pub fn sni(self, hosts: &[&str]) -> Self {
        self.matcher(json!({ "sniHosts": hosts }))
    }
}

/// A RouteTable.
#[derive(Clone, Debug)]
pub struct RouteTable(Spec);
gloo_object!(RouteTable);

impl RouteTable {
    pub fn new(name: &str) -> Self {
        RouteTable(Spec::new(GLOO, "RouteTable", name))
    }
    pub fn host(mut self, h: &str) -> Self {
        push(&mut self.0.spec, "hosts", h.into());
        self
    }
    /// Serve it on the VirtualGateway `name` (same namespace).
    pub fn gateway(mut self, name: &str) -> Self {
        push(&mut self.0.spec, "virtualGateways", json!({"name": name}));
        self
    }
    pub fn http(mut self, r: HttpRoute) -> Self {
        push(&mut self.0.spec, "http", Value::Object(r.0));
        self
    }
    pub fn tcp(mut self, r: TcpRoute) -> Self {
        push(&mut self.0.spec, "tcp", Value::Object(r.0));
        self
    }
    pub fn tls(mut self, r: TlsRoute) -> Self {
        push(&mut self.0.spec, "tls", Value::Object(r.0));
        self
    }
    /// Apply only to the workloads whose Pods have these labels (one
    /// `workloadSelectors` entry).
    pub fn for_workloads(mut self, labels: &[(&str, &str)]) -> Self {
        push(&mut self.0.spec, "workloadSelectors", selector(labels));
        self
    }
}

/// A VirtualGateway.
#[derive(Clone, Debug)]
pub struct Gateway(Spec);
gloo_object!(Gateway);

impl Gateway {
    pub fn new(name: &str) -> Self {
        Gateway(Spec::new(GLOO, "VirtualGateway", name))
    }
    /// A listener on `port` serving the tables whose hosts match `host`;
    /// `kind` is its protocol's fields (`{"http": {}}`, `{"tcp": {}}`, ...).
    pub fn listener(mut self, port: u16, host: &str, kind: Value) -> Self {
        let mut l = json!({"port": {"number": port}});
        if let (Some(m), Value::Object(k)) = (l.as_object_mut(), kind) {
            m.extend(k);
            m.insert("allowedRouteTables".into(), json!([{ "host": host }]));
        }
        push(&mut self.0.spec, "listeners", l);
        self
    }
    /// Open the listeners in the namespaces of the workloads (gateway
    /// pods) with these labels (one `workloads` entry).
    pub fn for_workloads(mut self, labels: &[(&str, &str)]) -> Self {
        push(&mut self.0.spec, "workloads", selector(labels));
        self
    }
    /// A plain HTTP listener.
    pub fn http(self, port: u16, host: &str) -> Self {
        self.listener(port, host, json!({"http": {}}))
    }
    /// An HTTPS listener (TLS from PEM files, Gloo's `files` form).
    pub fn https(self, port: u16, host: &str, cert: &str, key: &str) -> Self {
        self.https_with(
            port,
            host,
            json!({"mode": "SIMPLE", "files": {"serverCert": cert, "privateKey": key}}),
        )
    }
    /// An HTTPS listener with this `tls` (e.g. `{"mode": "MUTUAL", "files": {...}}`).
    pub fn https_with(self, port: u16, host: &str, tls: Value) -> Self {
        self.listener(port, host, json!({"http": {}, "tls": tls}))
    }
    /// A TCP listener.
    pub fn tcp(self, port: u16, host: &str) -> Self {
        self.listener(port, host, json!({"tcp": {}}))
    }
    /// A TLS PASSTHROUGH listener: connections routed by SNI to the
    /// tables' `tls` routes, undecrypted.
    pub fn passthrough(self, port: u16, host: &str) -> Self {
        self.listener(port, host, json!({"tls": {"mode": "PASSTHROUGH"}}))
    }
}

/// A policy of any kind Gloo has: what it applies to and its `config`.
#[derive(Clone, Debug)]
pub struct Policy(Spec);
gloo_object!(Policy);

impl Policy {
    fn new(api: &'static str, kind: &'static str, name: &str, config: Value) -> Self {
        let mut s = Spec::new(api, kind, name);
        s.spec.insert("config".into(), config);
        Policy(s)
    }
    const RESILIENCE: &'static str = "resilience.policy.gloo.solo.io/v2";
    const TRAFFIC: &'static str = "trafficcontrol.policy.gloo.solo.io/v2";
    const SECURITY: &'static str = "security.policy.gloo.solo.io/v2";

    pub fn outlier_detection(name: &str, config: Value) -> Self {
        Policy::new(Self::RESILIENCE, "OutlierDetectionPolicy", name, config)
    }
    pub fn failover(name: &str, config: Value) -> Self {
        Policy::new(Self::RESILIENCE, "FailoverPolicy", name, config)
    }
    /// An AccessLogPolicy (observability.policy.gloo.solo.io/v2).
    pub fn access_log(name: &str, config: Value) -> Self {
        Policy::new(
            "observability.policy.gloo.solo.io/v2",
            "AccessLogPolicy",
            name,
            config,
        )
    }
    pub fn active_health_check(name: &str, config: Value) -> Self {
        Policy::new(Self::RESILIENCE, "ActiveHealthCheckPolicy", name, config)
    }
    pub fn retry_timeout(name: &str, config: Value) -> Self {
        Policy::new(Self::RESILIENCE, "RetryTimeoutPolicy", name, config)
    }
    pub fn fault_injection(name: &str, config: Value) -> Self {
        Policy::new(Self::RESILIENCE, "FaultInjectionPolicy", name, config)
    }
    pub fn header_manipulation(name: &str, config: Value) -> Self {
        Policy::new(Self::TRAFFIC, "HeaderManipulationPolicy", name, config)
    }
    pub fn mirror(name: &str, config: Value) -> Self {
        Policy::new(Self::TRAFFIC, "MirrorPolicy", name, config)
    }
    pub fn cors(name: &str, config: Value) -> Self {
        Policy::new(Self::SECURITY, "CORSPolicy", name, config)
    }
    /// `applyToDestinations` as Gloo writes it (a list).
    pub fn apply_to_destinations(self, list: Value) -> Self {
        self.set("applyToDestinations", list)
    }
    /// Apply to routes carrying the label `k: v`.
    pub fn routes_labelled(self, k: &str, v: &str) -> Self {
        self.set("applyToRoutes", json!([{"route": {"labels": {k: v}}}]))
    }
    /// Apply to VirtualDestinations labelled `k: v`.
    pub fn virtual_destinations_labelled(self, k: &str, v: &str) -> Self {
        self.apply_to_destinations(
            json!([{"kind": "VIRTUAL_DESTINATION", "selector": {"labels": {k: v}}}]),
        )
    }
}

/// Outlier detection for the VirtualDestinations labelled `lb: local`,
/// which turns locality priorities on (as in Istio): the test worlds'
/// usual policy.
pub fn locality_policy() -> Policy {
    Policy::outlier_detection("od", json!({"consecutiveErrors": 1}))
        .virtual_destinations_labelled("lb", "local")
}
