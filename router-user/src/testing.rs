//! Typed fixture builders for tests, benchmarks, drills and the demo: a
//! config is built from Rust values and rendered as block YAML, one
//! document per object, so nobody assembles YAML with `format!`. Defaults follow the test worlds: namespace `t`, Services
//! labelled `app: <name>`, a port named `p`.
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

impl Docs for Config {
    fn docs(&self) -> Vec<Value> {
        self.docs.clone()
    }
}

fn doc(api: &str, kind: &str, metadata: Value, body: (&str, Value)) -> Value {
    let mut m = Map::new();
    m.insert("apiVersion".into(), api.into());
    m.insert("kind".into(), kind.into());
    m.insert("metadata".into(), metadata);
    m.insert(body.0.into(), body.1);
    Value::Object(m)
}

fn meta(name: &str, ns: &str, labels: &Map<String, Value>) -> Value {
    let mut m = json!({"name": name, "namespace": ns});
    if !labels.is_empty() {
        m["labels"] = Value::Object(labels.clone());
    }
    m
}

/// A whole config: documents in order.
#[derive(Clone, Debug, Default)]
pub struct Config {
    docs: Vec<Value>,
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
        let mut spec = json!({"cluster": cluster, "region": region, "zone": zone});
        if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
            s.extend(e);
        }
        self.docs.push(doc(
            "routerd.io/v1alpha1",
            "RouterConfig",
            json!({"name": "node"}),
            ("spec", spec),
        ));
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

/// A Kubernetes Service in one cluster.
#[derive(Clone, Debug)]
pub struct Service {
    cluster: String,
    name: String,
    ns: String,
    labels: Map<String, Value>,
    ports: Vec<Value>,
    publish_not_ready: bool,
}

impl Service {
    pub fn new(cluster: &str, name: &str) -> Self {
        let mut labels = Map::new();
        labels.insert("app".into(), name.into());
        Service {
            cluster: cluster.into(),
            name: name.into(),
            ns: NS.into(),
            labels,
            ports: Vec::new(),
            publish_not_ready: false,
        }
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.ns = ns.into();
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    /// A TCP port named `p`.
    pub fn port(self, port: u16) -> Self {
        self.named_port("p", port, "TCP")
    }
    /// A UDP port named `p`.
    pub fn udp_port(self, port: u16) -> Self {
        self.named_port("p", port, "UDP")
    }
    pub fn named_port(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports
            .push(json!({"name": name, "port": port, "protocol": protocol}));
        self
    }
    pub fn publish_not_ready(mut self) -> Self {
        self.publish_not_ready = true;
        self
    }
}

impl Docs for Service {
    fn docs(&self) -> Vec<Value> {
        let mut m = meta(&self.name, &self.ns, &self.labels);
        m["clusterName"] = self.cluster.clone().into();
        let mut spec = json!({"ports": self.ports});
        if self.publish_not_ready {
            spec["publishNotReadyAddresses"] = true.into();
        }
        vec![doc("v1", "Service", m, ("spec", spec))]
    }
}

/// An EndpointSlice of a Service.
#[derive(Clone, Debug)]
pub struct Slice {
    cluster: String,
    service: String,
    name: String,
    ns: String,
    labels: Map<String, Value>,
    ports: Vec<Value>,
    endpoints: Vec<Value>,
    v6: bool,
}

impl Slice {
    pub fn new(cluster: &str, service: &str, name: &str) -> Self {
        let mut labels = Map::new();
        labels.insert("kubernetes.io/service-name".into(), service.into());
        Slice {
            cluster: cluster.into(),
            service: service.into(),
            name: name.into(),
            ns: NS.into(),
            labels,
            ports: Vec::new(),
            endpoints: Vec::new(),
            v6: false,
        }
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.ns = ns.into();
        self
    }
    /// The region of the slice's endpoints.
    pub fn region(self, region: &str) -> Self {
        self.label("topology.kubernetes.io/region", region)
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    /// A TCP port named `p` (the Service's).
    pub fn port(self, port: u16) -> Self {
        self.named_port("p", port, "TCP")
    }
    pub fn udp_port(self, port: u16) -> Self {
        self.named_port("p", port, "UDP")
    }
    pub fn named_port(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports
            .push(json!({"name": name, "port": port, "protocol": protocol}));
        self
    }
    /// A ready endpoint in `zone` (empty: none given).
    pub fn endpoint(self, addr: &str, zone: &str) -> Self {
        self.endpoint_ready(addr, zone, true)
    }
    /// An endpoint (`zone` empty: none given).
    pub fn endpoint_ready(mut self, addr: &str, zone: &str, ready: bool) -> Self {
        self.v6 |= addr.contains(':');
        let mut e = json!({"addresses": [addr], "conditions": {"ready": ready}});
        if !zone.is_empty() {
            e["zone"] = zone.into();
        }
        self.endpoints.push(e);
        self
    }
    /// Endpoints `(address, zone, ready)`.
    pub fn endpoints(self, eps: &[Ep<'_>]) -> Self {
        eps.iter()
            .fold(self, |s, (a, z, r)| s.endpoint_ready(a, z, *r))
    }
}

impl Docs for Slice {
    fn docs(&self) -> Vec<Value> {
        let _ = &self.service;
        let mut m = meta(&self.name, &self.ns, &self.labels);
        m["clusterName"] = self.cluster.clone().into();
        let mut d = doc(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            m,
            ("addressType", if self.v6 { "IPv6" } else { "IPv4" }.into()),
        );
        d["ports"] = Value::Array(self.ports.clone());
        d["endpoints"] = Value::Array(self.endpoints.clone());
        vec![d]
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

/// A VirtualDestination.
#[derive(Clone, Debug)]
pub struct VirtualDestination {
    name: String,
    ns: String,
    labels: Map<String, Value>,
    hosts: Vec<String>,
    services: Vec<Value>,
    ports: Vec<Value>,
}

impl VirtualDestination {
    pub fn new(name: &str, host: &str) -> Self {
        VirtualDestination {
            name: name.into(),
            ns: NS.into(),
            labels: Map::new(),
            hosts: vec![host.into()],
            services: Vec::new(),
            ports: Vec::new(),
        }
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    /// Back it with the services labelled `app: <app>`.
    pub fn app(mut self, app: &str) -> Self {
        self.services.push(json!({"labels": {"app": app}}));
        self
    }
    /// Back it with services a selector picks (a JSON object).
    pub fn services(mut self, selector: Value) -> Self {
        self.services.push(selector);
        self
    }
    pub fn port(self, number: u16, protocol: &str) -> Self {
        self.port_spec(json!({"number": number, "protocol": protocol}))
    }
    /// A port as Gloo writes it (`{"number": 80, "targetPort": {"name": "http"}}`).
    pub fn port_spec(mut self, port: Value) -> Self {
        self.ports.push(port);
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.ns = ns.into();
        self
    }
}

impl Docs for VirtualDestination {
    fn docs(&self) -> Vec<Value> {
        vec![doc(
            "networking.gloo.solo.io/v2",
            "VirtualDestination",
            meta(&self.name, &self.ns, &self.labels),
            (
                "spec",
                json!({"hosts": self.hosts, "services": self.services, "ports": self.ports}),
            ),
        )]
    }
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

/// An HTTP route of a route table.
#[derive(Clone, Debug, Default)]
pub struct HttpRoute(Map<String, Value>);

impl HttpRoute {
    pub fn new() -> Self {
        HttpRoute::default()
    }
    pub fn name(mut self, n: &str) -> Self {
        self.0.insert("name".into(), n.into());
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .entry("labels")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("labels is an object")
            .insert(k.into(), v.into());
        self
    }
    /// One more matcher (any matcher may match).
    pub fn matcher(mut self, m: Value) -> Self {
        self.0
            .entry("matchers")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("matchers is a list")
            .push(m);
        self
    }
    pub fn prefix(self, p: &str) -> Self {
        self.matcher(json!({"uri": {"prefix": p}}))
    }
    pub fn exact(self, p: &str) -> Self {
        self.matcher(json!({"uri": {"exact": p}}))
    }
    pub fn on_port(self, p: u16) -> Self {
        self.matcher(json!({"port": p}))
    }
    /// Forward to these destinations.
    pub fn to(mut self, dests: &[Dest]) -> Self {
        let list: Vec<Value> = dests.iter().map(Dest::value).collect();
        self.0
            .insert("forwardTo".into(), json!({"destinations": list}));
        self
    }
    /// More `forwardTo` fields (a JSON object: `{"pathRewrite": "/v1"}`).
    pub fn forward_with(mut self, extra: Value) -> Self {
        let f = self
            .0
            .entry("forwardTo")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("forwardTo is an object");
        if let Value::Object(e) = extra {
            f.extend(e);
        }
        self
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

impl TcpRoute {
    pub fn new() -> Self {
        TcpRoute::default()
    }
    pub fn name(mut self, n: &str) -> Self {
        self.0.insert("name".into(), n.into());
        self
    }
    pub fn on_port(mut self, p: u16) -> Self {
        self.0.insert("matchers".into(), json!([{"port": p}]));
        self
    }
    pub fn to(mut self, dests: &[Dest]) -> Self {
        let list: Vec<Value> = dests.iter().map(Dest::value).collect();
        self.0
            .insert("forwardTo".into(), json!({"destinations": list}));
        self
    }
}

/// A RouteTable.
#[derive(Clone, Debug)]
pub struct RouteTable {
    name: String,
    ns: String,
    labels: Map<String, Value>,
    spec: Map<String, Value>,
}

impl RouteTable {
    pub fn new(name: &str) -> Self {
        RouteTable {
            name: name.into(),
            ns: NS.into(),
            labels: Map::new(),
            spec: Map::new(),
        }
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.ns = ns.into();
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    fn push(mut self, field: &str, v: Value) -> Self {
        self.spec
            .entry(field)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("a list field")
            .push(v);
        self
    }
    pub fn host(self, h: &str) -> Self {
        self.push("hosts", h.into())
    }
    /// Serve it on the VirtualGateway `name` (same namespace).
    pub fn gateway(self, name: &str) -> Self {
        self.push("virtualGateways", json!({"name": name}))
    }
    pub fn http(self, r: HttpRoute) -> Self {
        self.push("http", Value::Object(r.0))
    }
    pub fn tcp(self, r: TcpRoute) -> Self {
        self.push("tcp", Value::Object(r.0))
    }
    /// Any other `spec` field (`weight`, `failureMode`, `defaultDestination`).
    pub fn set(mut self, field: &str, v: Value) -> Self {
        self.spec.insert(field.into(), v);
        self
    }
}

impl Docs for RouteTable {
    fn docs(&self) -> Vec<Value> {
        vec![doc(
            "networking.gloo.solo.io/v2",
            "RouteTable",
            meta(&self.name, &self.ns, &self.labels),
            ("spec", Value::Object(self.spec.clone())),
        )]
    }
}

/// A VirtualGateway.
#[derive(Clone, Debug)]
pub struct Gateway {
    name: String,
    ns: String,
    listeners: Vec<Value>,
}

impl Gateway {
    pub fn new(name: &str) -> Self {
        Gateway {
            name: name.into(),
            ns: NS.into(),
            listeners: Vec::new(),
        }
    }
    /// A plain HTTP listener serving tables whose hosts match `host`.
    pub fn http(mut self, port: u16, host: &str) -> Self {
        self.listeners.push(
            json!({"port": {"number": port}, "http": {}, "allowedRouteTables": [{"host": host}]}),
        );
        self
    }
    /// An HTTPS listener (TLS from PEM files).
    pub fn https(mut self, port: u16, host: &str, cert: &str, key: &str) -> Self {
        self.listeners.push(json!({
            "port": {"number": port}, "http": {},
            "tls": {"mode": "SIMPLE", "certFile": cert, "keyFile": key},
            "allowedRouteTables": [{"host": host}]
        }));
        self
    }
    /// A TCP listener.
    pub fn tcp(mut self, port: u16, host: &str) -> Self {
        self.listeners.push(
            json!({"port": {"number": port}, "tcp": {}, "allowedRouteTables": [{"host": host}]}),
        );
        self
    }
}

impl Docs for Gateway {
    fn docs(&self) -> Vec<Value> {
        vec![doc(
            "networking.gloo.solo.io/v2",
            "VirtualGateway",
            meta(&self.name, &self.ns, &Map::new()),
            ("spec", json!({"listeners": self.listeners})),
        )]
    }
}

/// A policy of any kind Gloo has: what it applies to and its `config`.
#[derive(Clone, Debug)]
pub struct Policy {
    api: &'static str,
    kind: &'static str,
    name: String,
    ns: String,
    spec: Map<String, Value>,
}

impl Policy {
    fn new(api: &'static str, kind: &'static str, name: &str, config: Value) -> Self {
        let mut spec = Map::new();
        spec.insert("config".into(), config);
        Policy {
            api,
            kind,
            name: name.into(),
            ns: NS.into(),
            spec,
        }
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
    pub fn namespace(mut self, ns: &str) -> Self {
        self.ns = ns.into();
        self
    }
    /// `applyToDestinations` as Gloo writes it (a list).
    pub fn apply_to_destinations(mut self, list: Value) -> Self {
        self.spec.insert("applyToDestinations".into(), list);
        self
    }
    /// Apply to routes carrying the label `k: v`.
    pub fn routes_labelled(mut self, k: &str, v: &str) -> Self {
        self.spec.insert(
            "applyToRoutes".into(),
            json!([{"route": {"labels": {k: v}}}]),
        );
        self
    }
    /// Apply to VirtualDestinations labelled `k: v`.
    pub fn virtual_destinations_labelled(self, k: &str, v: &str) -> Self {
        self.apply_to_destinations(
            json!([{"kind": "VIRTUAL_DESTINATION", "selector": {"labels": {k: v}}}]),
        )
    }
}

impl Docs for Policy {
    fn docs(&self) -> Vec<Value> {
        vec![doc(
            self.api,
            self.kind,
            meta(&self.name, &self.ns, &Map::new()),
            ("spec", Value::Object(self.spec.clone())),
        )]
    }
}

/// An endpoint: address, zone, ready.
pub type Ep<'a> = (&'a str, &'a str, bool);

/// Service `web` (TCP 8080, `app: web`) in `cluster` with one slice: the
/// backend most tests use.
pub fn web(cluster: &str, region: &str, slice: &str, eps: &[Ep<'_>]) -> Config {
    service_with_slice(cluster, region, "web", slice, 8080, eps)
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

/// Outlier detection for the VirtualDestinations labelled `lb: local`,
/// which turns locality priorities on (as in Istio): the test worlds'
/// usual policy.
pub fn locality_policy() -> Policy {
    Policy::outlier_detection("od", json!({"consecutiveErrors": 1}))
        .virtual_destinations_labelled("lb", "local")
}
