//! Config validation and compilation, without a kernel: every error names the
//! file, the line and the resource; plans follow Gloo's and Istio's rules.
use router_user::{
    compile::{Health, compile},
    config::{Overrides, load_str},
    plan::{LocalityMode, Plan, Proto},
    testing::*,
};
use serde_json::json;

/// The node: cluster c1, region r1, zone z1.
fn node() -> String {
    node_with(json!({}))
}

fn node_with(settings: serde_json::Value) -> String {
    Config::new().node_with("c1", "r1", "z1", settings).yaml()
}

/// Inventory: `svc` in c1 (z1, z2) and c2 (region r2), port 80 named http.
fn inventory() -> String {
    let svc = |cluster: &str| {
        Service::new(cluster, "svc")
            .namespace("ns")
            .label("app", "svc")
            .named_port("http", 80, "TCP")
    };
    let slice = |cluster: &str, name: &str, region: &str| {
        Slice::new(cluster, "svc", name)
            .namespace("ns")
            .region(region)
            .named_port("http", 8080, "TCP")
    };
    Config::new()
        .with(svc("c1"))
        .with(
            slice("c1", "svc-v1", "r1")
                .label("version", "v1")
                .endpoint("10.0.0.1", "z1")
                .endpoint("10.0.0.2", "z2"),
        )
        .with(
            slice("c1", "svc-v2", "r1")
                .label("version", "v2")
                .endpoint("10.0.0.3", "z1"),
        )
        .with(svc("c2"))
        .with(slice("c2", "svc", "r2").endpoint("10.1.0.1", "z9"))
        .yaml()
}

fn errors(text: &str) -> String {
    match load_str("t.yaml", text, &Overrides::default()) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn plan(text: &str) -> Plan {
    let v = load_str("t.yaml", text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    compile(&v, &Health::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Line number (1-based) of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

fn assert_err(text: &str, needle: &str, line_needle: &str, resource: &str, message: &str) {
    let e = errors(text);
    let line = line_of(text, line_needle);
    let want = format!("t.yaml:{line}");
    let hit = e
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no error containing {needle:?} in:\n{e}"));
    assert!(hit.contains(&want), "error should be at {want}: {hit}");
    assert!(
        hit.contains(resource),
        "error should name {resource}: {hit}"
    );
    assert!(hit.contains(message), "error should say {message:?}: {hit}");
}

fn rt(body: &str) -> String {
    let node = node();
    let inventory = inventory();
    format!(
        "{node}{inventory}apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: rt, namespace: ns}}\nspec:\n{body}"
    )
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let node = node();
    let text = format!("{node}kind: RouteTable\nspec: [\n");
    let e = errors(&text);
    assert!(e.contains("t.yaml:"), "{e}");
}

#[test]
fn unknown_fields_are_errors_with_line_and_column() {
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - forwardTo:\n      destinations:\n      - ref: {name: svc, cluster: c1}\n        wieght: 10\n",
    );
    assert_err(
        &text,
        "wieght",
        "wieght",
        "RouteTable ns/rt",
        "unknown field `wieght`",
    );
}

#[test]
fn unsupported_kinds_and_api_versions_say_what_is_expected() {
    let node = node();
    let e = errors(&format!(
        "{node}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: x}}\n"
    ));
    assert!(
        e.contains("unsupported kind `VirtualService`") && e.contains("RouteTable"),
        "{e}"
    );
    let e = errors(&format!(
        "{node}apiVersion: networking.gloo.solo.io/v1\nkind: RouteTable\nmetadata: {{name: x}}\nspec: {{}}\n"
    ));
    assert!(e.contains("expected `networking.gloo.solo.io/v2`"), "{e}");
}

#[test]
fn dangling_references_are_errors() {
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - forwardTo:\n      destinations:\n      - ref: {name: nope, cluster: c1}\n",
    );
    assert_err(&text, "nope", "nope", "RouteTable ns/rt", "does not exist");
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - forwardTo:\n      destinations:\n      - ref: {name: svc, cluster: c3}\n",
    );
    assert_err(
        &text,
        "c3",
        "c3",
        "RouteTable ns/rt",
        "it exists in cluster(s) c1, c2",
    );
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - forwardTo:\n      destinations:\n      - ref: {name: vd}\n        kind: VIRTUAL_DESTINATION\n",
    );
    assert_err(
        &text,
        "VirtualDestination ns/vd",
        "ref: {name: vd}",
        "RouteTable ns/rt",
        "does not exist",
    );
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - name: d\n    delegate: {routeTables: [{labels: {team: x}}]}\n",
    );
    assert_err(
        &text,
        "none exists",
        "name: d",
        "RouteTable ns/rt",
        "labels team=x",
    );
    let text = rt(
        "  hosts: [a.mesh]\n  virtualGateways: [{name: gw}]\n  http:\n  - forwardTo: {destinations: [{ref: {name: svc}}]}\n",
    );
    assert!(errors(&text).contains("VirtualGateway ns/gw, which does not exist"));
}

#[test]
fn invalid_weights_are_errors() {
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - forwardTo:\n      destinations:\n      - {ref: {name: svc}, weight: 60}\n      - {ref: {name: svc, cluster: c2}, weight: 50}\n",
    );
    assert_err(
        &text,
        "sum to 110",
        "weight: 60",
        "RouteTable ns/rt",
        "at most 100",
    );
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - forwardTo:\n      destinations:\n      - {ref: {name: svc}, weight: 160}\n",
    );
    assert_err(&text, "over 100", "weight: 160", "RouteTable ns/rt", "160");
}

#[test]
fn duplicate_hosts_are_errors() {
    let node = node();
    let inventory = inventory();
    let text = format!(
        "{}---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: other, namespace: ns}}\nspec:\n  hosts: [a.mesh]\n  tcp:\n  - forwardTo: {{destinations: [{{ref: {{name: svc}}}}]}}\n",
        rt("  hosts: [a.mesh]\n  tcp:\n  - forwardTo: {destinations: [{ref: {name: svc}}]}\n")
    );
    let e = errors(&text);
    assert!(
        e.contains(
            "RouteTable ns/other: host `a.mesh` is already served (east-west) by RouteTable ns/rt"
        ),
        "{e}"
    );
    let vd = "apiVersion: networking.gloo.solo.io/v2\nkind: VirtualDestination\nmetadata: {name: NAME, namespace: ns}\nspec:\n  hosts: [v.mesh]\n  services: [{labels: {app: svc}}]\n  ports: [{number: 80}]\n---\n";
    let text = format!(
        "{node}{inventory}{}{}",
        vd.replace("NAME", "one"),
        vd.replace("NAME", "two")
    );
    let e = errors(&text);
    assert!(e.contains("VirtualDestination ns/two: host `v.mesh` is already claimed by VirtualDestination ns/one"), "{e}");
}

#[test]
fn delegation_cycles_are_errors() {
    let text = format!(
        "{}---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: child, namespace: ns}}\nspec:\n  http:\n  - name: back\n    delegate: {{routeTables: [{{name: rt}}]}}\n",
        rt(
            "  hosts: [a.mesh]\n  http:\n  - name: down\n    delegate: {routeTables: [{name: child}]}\n"
        )
    );
    let e = errors(&text);
    assert!(
        e.contains("delegation cycle: ns/rt -> ns/child -> ns/rt"),
        "{e}"
    );
}

#[test]
fn conflicting_routes_are_errors() {
    let text = rt(
        "  hosts: [a.mesh]\n  tcp:\n  - name: one\n    matchers: [{port: 80}]\n    forwardTo: {destinations: [{ref: {name: svc}}]}\n  - name: two\n    matchers: [{port: 80}]\n    forwardTo: {destinations: [{ref: {name: svc, cluster: c2}}]}\n",
    );
    assert_err(
        &text,
        "conflicts",
        "name: two",
        "RouteTable ns/rt",
        "route `two` conflicts with route `one`",
    );
}

#[test]
fn inventory_errors_name_the_object() {
    let node = node();
    let inventory = inventory();
    let text = format!(
        "{node}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s, namespace: ns, clusterName: c1, labels: {{kubernetes.io/service-name: ghost}}}}\naddressType: IPv4\nendpoints: []\n"
    );
    assert!(errors(&text).contains("EndpointSlice c1/ns/s: belongs to Service c1/ns/ghost"));
    let text = format!(
        "{node}apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec: {{ports: [{{port: 80}}]}}\n"
    );
    assert!(errors(&text).contains("metadata.clusterName is required"));
    let text = format!(
        "{node}{inventory}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dup, namespace: ns, clusterName: c2, labels: {{kubernetes.io/service-name: svc}}}}\naddressType: IPv4\nendpoints:\n- {{addresses: [10.0.0.1]}}\n"
    );
    assert!(errors(&text).contains("endpoint 10.0.0.1 also appears in cluster c1"));
}

/// An endpoint with several addresses is one backend per address, and
/// `deprecatedTopology` gives its locality where the slice's labels do not;
/// a bad second address is an error on the endpoint's line.
#[test]
fn every_address_of_an_endpoint_serves_with_its_topology() {
    let node = node();
    let slice = |second: &str| {
        format!(
            "{node}apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: ns, clusterName: c1}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s, namespace: ns, clusterName: c1, labels: {{kubernetes.io/service-name: svc}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [10.0.0.1, {second}]\n  zone: z1\n  deprecatedTopology: {{topology.kubernetes.io/region: r9}}\n"
        )
    };
    let v = load_str("t.yaml", &slice("10.0.0.2"), &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let eps: Vec<String> = v
        .inventory
        .by_name
        .values()
        .flat_map(|s| &s.endpoints)
        .map(|e| format!("{} {}", e.ip, e.locality))
        .collect();
    assert_eq!(eps, ["10.0.0.1 r9/z1/*", "10.0.0.2 r9/z1/*"], "{eps:?}");
    let text = slice("ten");
    let line = text.lines().position(|l| l.contains("ten]")).unwrap() + 1;
    let e = errors(&text);
    assert!(
        e.contains(&format!("t.yaml:{line}:")) && e.contains("`ten` is not an IP address"),
        "{e}"
    );
}

#[test]
fn bad_settings_are_errors() {
    let text = "apiVersion: routerd.io/v1alpha1\nkind: RouterConfig\nmetadata: {name: node}\nspec:\n  vipRanges: {ipv4: 240.240.0.0/4}\n";
    assert!(errors(text).contains("IPv4 VIP range 240.240.0.0/4 has prefix length 4"));
}

#[test]
fn multi_port_services_need_a_port() {
    let node = node();
    let inv = Config::new()
        .with(
            Service::new("c1", "svc")
                .namespace("ns")
                .named_port("http", 80, "TCP")
                .named_port("admin", 81, "TCP"),
        )
        .with(
            Slice::new("c1", "svc", "svc")
                .namespace("ns")
                .named_port("http", 8080, "TCP")
                .endpoint("10.0.0.1", "z1"),
        )
        .yaml();
    let text = format!(
        "{node}{inv}apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: rt, namespace: ns}}\nspec:\n  hosts: [a.mesh]\n  tcp:\n  - forwardTo: {{destinations: [{{ref: {{name: svc}}}}]}}\n"
    );
    assert!(errors(&text).contains("has several ports (80 (http), 81 (admin))"));
}

// ---------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------

fn shares(p: &Plan, host: &str, port: u16) -> Vec<(String, u32)> {
    let h = p.host(host).unwrap();
    let s = p
        .service(h.vip4.into(), port, Proto::Tcp)
        .unwrap_or_else(|| panic!("no service {host}:{port}"));
    s.slots
        .iter()
        .map(|x| (x.endpoint.ip().to_string(), x.slots))
        .collect()
}

#[test]
fn delegation_flattens_in_table_weight_order_and_combines_matchers() {
    let child = |name: &str, weight: i32, port: u16, cluster: &str| {
        format!(
            "---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: {name}, namespace: ns, labels: {{team: t}}}}\nspec:\n  weight: {weight}\n  tcp:\n  - matchers: [{{port: {port}}}]\n    forwardTo: {{destinations: [{{ref: {{name: svc, cluster: {cluster}}}, port: {{number: 80}}}}]}}\n"
        )
    };
    // Both children claim port 80; the heavier table comes first and wins.
    let text = format!(
        "{}{}{}",
        rt(
            "  hosts: [a.mesh]\n  http:\n  - name: d\n    delegate: {routeTables: [{labels: {team: t}}]}\n"
        ),
        child("light", 1, 80, "c2"),
        child("heavy", 10, 80, "c1")
    );
    let p = plan(&text);
    let s = shares(&p, "a.mesh", 80);
    assert!(
        s.iter().all(|(ip, _)| ip.starts_with("10.0.0.")),
        "heavy (c1) wins: {s:?}"
    );
    let svc = p
        .service(p.host("a.mesh").unwrap().vip4.into(), 80, Proto::Tcp)
        .unwrap();
    assert_eq!(&*svc.origin.name, "heavy");
}

#[test]
fn routes_that_need_l7_go_to_the_proxy_and_l4_ones_stay_in_the_kernel() {
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - name: api\n    matchers: [{uri: {prefix: /api}}]\n    forwardTo: {destinations: [{ref: {name: svc}}]}\n",
    );
    let p = plan(&text);
    // a.mesh:80's VIP goes to the proxy's one listener; no slots. Only the
    // IPv4 VIP: `svc` has no IPv6 endpoint (as for an L4 host).
    assert_eq!(p.services.len(), 1);
    assert!(p.services[0].vip.is_ipv4());
    assert!(p.services.iter().all(|s| s.proxied && s.slots.is_empty()));
    assert!(p.proxy.port < 1024, "a privileged port: {}", p.proxy.port);
    let l7 = &p.l7[0];
    assert_eq!((l7.host.as_str(), l7.port), ("a.mesh", 80));
    let mut vips = l7.vips.clone();
    vips.sort();
    let mut served: Vec<_> = p.services.iter().map(|s| s.vip).collect();
    served.sort();
    assert_eq!(vips, served, "the proxy knows the service by its VIPs");
    assert_eq!(
        l7.routes[0].origin.line as usize,
        line_of(&text, "name: api")
    );
    assert_eq!(
        l7.routes[0].matchers[0].conds,
        vec![router_user::plan::L7Cond::Path {
            kind: router_user::plan::PathKind::Prefix,
            value: "/api".into(),
            ignore_case: false
        }]
    );
    // A catch-all prefix needs no HTTP decision: the kernel serves it.
    let text = rt(
        "  hosts: [a.mesh]\n  http:\n  - matchers: [{uri: {prefix: /}}]\n    forwardTo: {destinations: [{ref: {name: svc}}]}\n",
    );
    let p = plan(&text);
    assert_eq!(p.services.len(), 1);
    assert!(!p.services[0].proxied && p.l7.is_empty());
    // The same route with an HTTP-level policy on it (retries here) needs
    // the proxy: the kernel cannot retry (it used to stay in the kernel,
    // the policy silently not applied).
    let retry = "---\napiVersion: resilience.policy.gloo.solo.io/v2\nkind: RetryTimeoutPolicy\nmetadata: {name: r, namespace: ns}\nspec:\n  config:\n    retries: {attempts: 2, retryOn: unavailable}\n";
    let p = plan(&format!("{text}{retry}"));
    assert!(p.services.iter().all(|s| s.proxied), "{:?}", p.services);
    let r = p.l7[0].routes[0]
        .policies
        .retry
        .as_ref()
        .expect("the retry policy");
    assert_eq!(r.grpc_codes, vec![14]);
}

#[test]
fn route_weights_become_slot_shares() {
    let text = rt(
        "  hosts: [a.mesh]\n  tcp:\n  - forwardTo:\n      destinations:\n      - {ref: {name: svc, cluster: c1}, port: {number: 80}, subset: {version: v2}, weight: 75}\n      - {ref: {name: svc, cluster: c2}, port: {number: 80}}\n",
    );
    let p = plan(&text);
    assert_eq!(
        shares(&p, "a.mesh", 80),
        vec![("10.0.0.3".into(), 3), ("10.1.0.1".into(), 1)]
    );
}

/// `v.mesh` over `svc` (VirtualDestination `vd`, labelled `lb: x`) with
/// `policies`, on a node with `settings`.
fn vd_with(policies: Config, settings: serde_json::Value) -> Plan {
    plan(&vd_text(policies, settings))
}

fn vd_text(policies: Config, settings: serde_json::Value) -> String {
    let vd = VirtualDestination::new("vd", "v.mesh")
        .namespace("ns")
        .label("lb", "x")
        .app("svc")
        .port_spec(json!({"number": 80, "targetPort": {"name": "http"}}));
    format!(
        "{}{}{}",
        node_with(settings),
        inventory(),
        Config::new().with(vd).with(policies).yaml()
    )
}

/// Outlier detection for `lb: x` (which turns locality priorities on).
fn od() -> Config {
    Config::new().with(
        Policy::outlier_detection("od", json!({}))
            .namespace("ns")
            .apply_to_destinations(json!([{"selector": {"labels": {"lb": "x"}}}])),
    )
}

#[test]
fn without_outlier_detection_locality_is_off_as_in_istio() {
    let p = vd_with(Config::new(), json!({}));
    let s = &p.services[0];
    assert!(matches!(s.destinations[0].mode, LocalityMode::Off { .. }));
    assert_eq!(shares(&p, "v.mesh", 80).len(), 4, "every endpoint shares");
    // The documented switch applies priorities without outlier detection.
    let p = vd_with(
        Config::new(),
        json!({"localityRequiresOutlierDetection": false}),
    );
    assert_eq!(
        shares(&p, "v.mesh", 80),
        vec![("10.0.0.1".into(), 1), ("10.0.0.3".into(), 1)]
    );
}

#[test]
fn with_outlier_detection_the_closest_tier_takes_everything() {
    let p = vd_with(od(), json!({}));
    assert_eq!(
        shares(&p, "v.mesh", 80),
        vec![("10.0.0.1".into(), 1), ("10.0.0.3".into(), 1)]
    );
    let d = &p.services[0].destinations[0];
    let tiers: Vec<(u32, usize, &str)> = d
        .tiers
        .iter()
        .map(|t| (t.load_percent, t.endpoints.len(), &*t.reason))
        .collect();
    assert_eq!(
        tiers,
        vec![
            (100, 2, "same region, zone and subzone"),
            (0, 1, "same region"),
            (0, 1, "other localities")
        ]
    );
}

#[test]
fn unhealthy_endpoints_spill_with_the_overprovisioning_factor() {
    let text = vd_text(od(), json!({}));
    let v = load_str("t.yaml", &text, &Overrides::default()).unwrap();
    let mut h = Health::default();
    h.unhealthy.insert("10.0.0.1:8080".parse().unwrap());
    let p = compile(&v, &h).unwrap();
    // P0 has 1 of 2 healthy: health 70, so 70% stays and 30% spills to P1.
    let loads: Vec<u32> = p.services[0].destinations[0]
        .tiers
        .iter()
        .map(|t| t.load_percent)
        .collect();
    assert_eq!(loads, vec![70, 30, 0]);
    assert_eq!(
        shares(&p, "v.mesh", 80),
        vec![("10.0.0.2".into(), 3), ("10.0.0.3".into(), 7)]
    );
}

#[test]
fn failover_policies_order_regions_distribute_and_priority_labels() {
    let fp = |config: serde_json::Value| {
        od().with(
            Policy::failover("fp", config)
                .namespace("ns")
                .apply_to_destinations(
                    json!([{"kind": "VIRTUAL_DESTINATION", "selector": {"name": "vd"}}]),
                ),
        )
    };
    // Failover: region r2 ranks before "other localities".
    let p = vd_with(
        fp(json!({"localityMappings": [{"from": {"region": "r1"}, "to": [{"region": "r2"}]}]})),
        json!({}),
    );
    let reasons: Vec<String> = p.services[0].destinations[0]
        .tiers
        .iter()
        .map(|t| t.reason.to_string())
        .collect();
    assert_eq!(reasons[2], "failover target 1 (region r2)");
    // Distribute: 80% to z1, 20% to region r2, whatever the health order.
    let p = vd_with(
        fp(
            json!({"localityMappings": [{"from": {"region": "r1"}, "to": [
                {"region": "r1", "zone": "z1", "weight": 80},
                {"region": "r2", "weight": 20}
            ]}]}),
        ),
        json!({}),
    );
    assert!(matches!(
        p.services[0].destinations[0].mode,
        LocalityMode::Distribute { .. }
    ));
    assert_eq!(
        shares(&p, "v.mesh", 80),
        vec![
            ("10.0.0.1".into(), 2),
            ("10.0.0.3".into(), 2),
            ("10.1.0.1".into(), 1)
        ]
    );
    // Priority labels: the node is in cluster c1; endpoints of c1 first.
    let p = vd_with(
        fp(json!({"priorityLabels": {"labels": ["topology.istio.io/cluster"]}})),
        json!({}),
    );
    assert_eq!(shares(&p, "v.mesh", 80).len(), 3);
    assert!(
        shares(&p, "v.mesh", 80)
            .iter()
            .all(|(ip, _)| ip.starts_with("10.0.0."))
    );
}

#[test]
fn plans_are_deterministic_and_vips_ignore_document_order() {
    let node = node();
    let inventory = inventory();
    let docs = [
        rt("  hosts: [a.mesh]\n  tcp:\n  - forwardTo: {destinations: [{ref: {name: svc}}]}\n"),
        "apiVersion: networking.gloo.solo.io/v2\nkind: VirtualDestination\nmetadata: {name: vd, namespace: ns}\nspec:\n  hosts: [v.mesh]\n  services: [{labels: {app: svc}}]\n  ports: [{number: 80}]\n".to_string(),
    ];
    let a = plan(&format!("{}---\n{}", docs[0], docs[1]));
    let b = plan(&format!(
        "{}---\n{node}{inventory}{}",
        docs[1],
        docs[0].trim_start_matches(&format!("{node}{inventory}"))
    ));
    assert_eq!(
        a.hosts
            .iter()
            .map(|h| (&h.name, h.vip4, h.vip6))
            .collect::<Vec<_>>(),
        b.hosts
            .iter()
            .map(|h| (&h.name, h.vip4, h.vip6))
            .collect::<Vec<_>>()
    );
    assert_eq!(a.services.len(), b.services.len());
    for (x, y) in a.services.iter().zip(&b.services) {
        assert_eq!((x.vip, x.port, &x.slots), (y.vip, y.port, &y.slots));
    }
    assert_eq!(plan(&format!("{}---\n{}", docs[0], docs[1])), a);
}

#[test]
fn the_example_config_compiles_with_the_textbook_pair() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let v =
        router_user::config::load(&dir, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    let p = compile(&v, &Health::default()).unwrap();
    // app-a forwards straight to its service in cluster 1.
    let a = shares(&p, "app-a.shop.mesh.internal", 8080);
    assert!(
        !a.is_empty() && a.iter().all(|(ip, _)| ip.starts_with("10.1.")),
        "{a:?}"
    );
    // app-b's closest healthy instances are in cluster 2.
    let b = shares(&p, "app-b.shop.mesh.internal", 8080);
    assert!(
        !b.is_empty() && b.iter().all(|(ip, _)| ip.starts_with("10.2.")),
        "{b:?}"
    );
}

/// Issue 10, item 11. Endpoints that would send the cgroup's connections
/// to the client's own host, to its link, nowhere, or back into the VIP
/// range are refused with file:line; so are VIP ranges over loopback,
/// link-local or multicast.
#[test]
fn endpoints_and_vip_ranges_that_point_home_are_refused() {
    let node = node();
    let inventory = inventory();
    for (addr, why) in [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("240.240.0.9", "inside the IPv4 VIP range"),
        ("0.0.0.0", "not a unicast address"),
        ("224.0.0.1", "not a unicast address"),
    ] {
        let text = format!(
            "{node}apiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: ns, clusterName: c1}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: bad, namespace: ns, clusterName: c1, labels: {{kubernetes.io/service-name: bad}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 80}}]\nendpoints:\n- {{addresses: [{addr}]}}\n"
        );
        assert_err(
            &text,
            addr,
            &format!("addresses: [{addr}]"),
            "EndpointSlice c1/ns/bad",
            why,
        );
    }
    for (addr, why) in [("::1", "loopback"), ("fe80::1", "link-local")] {
        let text = format!(
            "{node}apiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: ns, clusterName: c1}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: bad, namespace: ns, clusterName: c1, labels: {{kubernetes.io/service-name: bad}}}}\n\
             addressType: IPv6\nports: [{{name: http, port: 80}}]\nendpoints:\n- {{addresses: [\"{addr}\"]}}\n"
        );
        assert_err(&text, addr, addr, "EndpointSlice c1/ns/bad", why);
    }
    for (range, why) in [
        ("{ipv4: 127.0.0.0/16}", "loopback"),
        ("{ipv4: 169.254.0.0/16}", "link-local"),
        ("{ipv6: \"fe80::/16\"}", "link-local"),
    ] {
        let text = format!(
            "apiVersion: routerd.io/v1alpha1\nkind: RouterConfig\nmetadata: {{name: node}}\nspec: {{cluster: c1, region: r1, zone: z1, vipRanges: {range}}}\n---\n{inventory}"
        );
        assert_err(
            &text,
            "VIP range",
            "apiVersion: routerd.io",
            "RouterConfig",
            why,
        );
    }
}

/// Issue 10, item 12. Repeated, chained delegation multiplies routes
/// exponentially (2^25 here), and nested matchers multiply too (40^3): both
/// are cut off with an error naming the table, at once.
#[test]
fn delegation_that_would_explode_is_refused_naming_the_table() {
    let mut text = rt(
        "  hosts: [a.mesh]\n  http:\n  - matchers: [{uri: {prefix: /a}}]\n    delegate: {routeTables: [{name: d0}]}\n  - matchers: [{uri: {prefix: /b}}]\n    delegate: {routeTables: [{name: d0}]}\n",
    );
    for i in 0..25 {
        text += &format!(
            "---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: d{i}, namespace: ns}}\nspec:\n  http:\n  - matchers: [{{uri: {{prefix: /a}}}}]\n    delegate: {{routeTables: [{{name: d{}}}]}}\n  - matchers: [{{uri: {{prefix: /b}}}}]\n    delegate: {{routeTables: [{{name: d{}}}]}}\n",
            i + 1,
            i + 1
        );
    }
    text += "---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: d25, namespace: ns}\nspec:\n  http:\n  - forwardTo: {destinations: [{ref: {name: svc, cluster: c1}}]}\n";
    let t = std::time::Instant::now();
    let e = errors(&text);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
    assert!(
        e.contains("RouteTable ns/rt") && e.contains("more than 10000 routes"),
        "{e}"
    );

    let many = |n: usize| -> String {
        let m: Vec<String> = (0..n)
            .map(|i| format!("{{uri: {{prefix: /p{i}}}}}"))
            .collect();
        format!("[{}]", m.join(", "))
    };
    let mut text = rt(&format!(
        "  hosts: [b.mesh]\n  http:\n  - matchers: {}\n    delegate: {{routeTables: [{{name: c1t}}]}}\n",
        many(40)
    ));
    text += &format!(
        "---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: c1t, namespace: ns}}\nspec:\n  http:\n  - matchers: {}\n    delegate: {{routeTables: [{{name: c2t}}]}}\n",
        many(40)
    );
    text += &format!(
        "---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: c2t, namespace: ns}}\nspec:\n  http:\n  - matchers: {}\n    forwardTo: {{destinations: [{{ref: {{name: svc, cluster: c1}}}}]}}\n",
        many(40)
    );
    let e = errors(&text);
    assert!(
        e.contains("RouteTable ns/rt") && e.contains("matchers in one route, more than 1000"),
        "{e}"
    );
}

/// Durations, enums and ports are typed: a bad value is reported by the
/// loader on the field itself, with what was expected.
#[test]
fn bad_values_are_reported_on_the_field_with_what_was_expected() {
    let node = node();
    let inventory = inventory();
    let cases = [
        (
            "  hosts: [a.mesh]\n  http:\n  - forwardTo:\n      destinations:\n      - ref: {name: svc, cluster: c1}\n        port: {number: 70000}\n",
            "number: 70000",
            "70000",
        ),
        (
            "  hosts: [a.mesh]\n  failureMode: SOMETIMES\n  http:\n  - forwardTo:\n      destinations:\n      - ref: {name: svc, cluster: c1}\n",
            "SOMETIMES",
            "SOMETIMES",
        ),
        (
            "  hosts: [a.mesh]\n  http:\n  - redirect: {hostRedirect: b.mesh, responseCode: TELEPORT}\n",
            "TELEPORT",
            "TELEPORT",
        ),
    ];
    for (body, line_needle, shown) in cases {
        let text = rt(body);
        let e = errors(&text);
        let line = line_of(&text, line_needle);
        assert!(
            e.contains(&format!("t.yaml:{line}:")),
            "the error should point at line {line} (the field) with a column:\n{e}"
        );
        assert!(e.contains(shown), "the error should show the value:\n{e}");
        assert!(
            e.contains("RouteTable ns/rt"),
            "the error should name the table:\n{e}"
        );
    }
    // A duration in a policy: Gloo's syntax is `5s`, `100ms`, `1m30s`.
    let text = format!(
        "{node}{inventory}apiVersion: resilience.policy.gloo.solo.io/v2\nkind: RetryTimeoutPolicy\nmetadata: {{name: slow, namespace: ns}}\nspec:\n  config:\n    requestTimeout: 5 seconds\n"
    );
    let e = errors(&text);
    let line = line_of(&text, "5 seconds");
    assert!(e.contains(&format!("t.yaml:{line}:")), "{e}");
    assert!(
        e.contains("5 seconds") && e.contains("use ms, s, m or h"),
        "the error should say what a duration looks like:\n{e}"
    );
}

/// The fixture builders render configs the loader takes as they are.
#[test]
fn built_configs_load() {
    let text = Config::new()
        .node_with("c1", "east", "e1", json!({"proxy": {"bodyTimeout": "4s"}}))
        .with(service_with_slice(
            "c1",
            "east",
            "web",
            "web-1",
            8080,
            &[("10.1.0.1", "e1", true)],
        ))
        .with(
            VirtualDestination::new("web", "web.t.mesh")
                .app("web")
                .port(8080, "HTTP")
                .label("lb", "local"),
        )
        .with(
            RouteTable::new("api").host("api.t.mesh").http(
                HttpRoute::new()
                    .name("api")
                    .label("route", "api")
                    .prefix("/api")
                    .to(&[Dest::service("web").port(8080)])
                    .forward_with(json!({"pathRewrite": "/v1"})),
            ),
        )
        .with(
            Policy::retry_timeout(
                "retry",
                json!({"retries": {"attempts": 2, "retryOn": "5xx"}}),
            )
            .routes_labelled("route", "api"),
        )
        .with(
            Policy::outlier_detection("od", json!({"consecutiveErrors": 1}))
                .virtual_destinations_labelled("lb", "local"),
        )
        .yaml();
    let v = load_str("built.yaml", &text, &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(v.config.route_tables.len(), 1);
    assert_eq!(v.config.retry_policies.len(), 1);
    assert_eq!(v.settings.proxy.body_timeout_ms, 4000);
}

/// Issue 11, item 7. An L7 host gets an IPv6 VIP (and so an AAAA record)
/// only when one of its routes forwards to IPv6 endpoints, as an L4 host.
#[test]
fn an_l7_host_has_an_ipv6_vip_only_with_ipv6_endpoints() {
    let l7 = |eps: &[Ep<'_>]| {
        let text = Config::new()
            .node("c1", "r1", "z1")
            .with(service_with_slice("c1", "r1", "web", "web", 80, eps))
            .with(
                RouteTable::new("web").host("web.mesh").http(
                    HttpRoute::new()
                        .prefix("/api")
                        .to(&[Dest::service("web").port(80)]),
                ),
            )
            .yaml();
        let p = plan(&text);
        let names = router_user::dns::Names::from_plan(&p);
        (p.l7[0].vips.clone(), names.by_name["web.mesh"].1)
    };
    let (vips, aaaa) = l7(&[("10.0.0.1", "z1", true)]);
    assert!(vips.len() == 1 && vips[0].is_ipv4(), "{vips:?}");
    assert_eq!(aaaa, None, "no AAAA without IPv6 endpoints");
    let (vips, aaaa) = l7(&[("fd00::1", "z1", true)]);
    assert_eq!(vips.len(), 2, "{vips:?}");
    assert!(aaaa.is_some());
}

#[test]
fn the_syn_retransmit_timeout_is_a_bounded_duration() {
    let p = vd_with(od(), json!({"synRetransmitTimeout": "100ms"}));
    assert_eq!(p.syn_timeout_ms, 100);
    assert_eq!(vd_with(od(), json!({})).syn_timeout_ms, 0, "unset: Linux's");
    let e = errors(&vd_text(od(), json!({"synRetransmitTimeout": "5ms"})));
    assert!(
        e.contains("RouterConfig default/node")
            && e.contains("spec.synRetransmitTimeout 5 ms is outside 10 ms to 3000 ms"),
        "{e}"
    );
}

/// Issue 15 (IPv6 gateway listeners): `spec.proxy.gatewayAddresses` lists
/// what gateway listeners bind; IPv4's wildcard by default.
#[test]
fn gateway_addresses_default_to_ipv4_and_take_a_dual_stack_list() {
    let p = plan(&node());
    assert_eq!(
        p.proxy.gateway_addresses,
        ["0.0.0.0".parse::<std::net::IpAddr>().unwrap()]
    );
    let p = plan(&node_with(
        json!({"proxy": {"gatewayAddresses": ["0.0.0.0", "::"]}}),
    ));
    let want: Vec<std::net::IpAddr> = vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()];
    assert_eq!(p.proxy.gateway_addresses, want);
    for (bad, says) in [
        (json!([]), "no address"),
        (json!(["::", "::"]), ":: is listed twice"),
        (
            json!(["0.0.0.0", "10.0.0.1"]),
            "0.0.0.0 and 10.0.0.1 overlap",
        ),
    ] {
        let e = errors(&node_with(json!({"proxy": {"gatewayAddresses": bad}})));
        assert!(
            e.contains("spec.proxy.gatewayAddresses") && e.contains(says) && e.contains("t.yaml:"),
            "{says}: {e}"
        );
    }
    // An IPv6 address beside IPv4's wildcard is fine (different families).
    let p = plan(&node_with(
        json!({"proxy": {"gatewayAddresses": ["0.0.0.0", "fd00::1"]}}),
    ));
    assert_eq!(p.proxy.gateway_addresses.len(), 2);
}

/// `workloadSelectors`: a scoped table's host is a host of its own (its own
/// VIPs), seen by the workloads it selects; a name served by a scoped table
/// and by one for every caller resolves per workload; a host only scoped
/// tables serve does not exist for anyone else. The kernel's, the DNS
/// server's and `explain`'s answers all come from these plan functions.
#[test]
fn workload_selectors_give_the_selected_pods_hosts_of_their_own() {
    let api = |v: &str| Dest::service("api").port(8080).subset("version", v);
    // A table for `host`, to api `v`, for the workloads labelled `label`.
    let scoped = |name: &str, host: &str, label: (&str, &str), v: &str| {
        RouteTable::new(name)
            .host(host)
            .for_workloads(&[label])
            .tcp(TcpRoute::new().to(&[api(v)]))
    };
    let text = Config::new()
        .node("c1", "r1", "z1")
        .with(Service::new("c1", "api").named_port("http", 8080, "TCP"))
        .with(
            Slice::new("c1", "api", "api-v1")
                .label("version", "v1")
                .named_port("http", 8080, "TCP")
                .endpoint("10.0.0.1", "z1"),
        )
        .with(
            Slice::new("c1", "api", "api-v2")
                .label("version", "v2")
                .named_port("http", 8080, "TCP")
                .endpoint("10.0.0.2", "z1"),
        )
        .with(
            Pod::new("p1")
                .label("app", "a")
                .ip("10.0.0.9")
                .ip("fd00::9"),
        )
        .with(Pod::new("p2").label("app", "b").label("tier", "web"))
        .with(Pod::new("elsewhere").label("app", "b").cluster("c2"))
        .with(
            RouteTable::new("shop")
                .host("shop.mesh")
                .tcp(TcpRoute::new().to(&[api("v1")])),
        )
        .with(scoped("shop-b", "shop.mesh", ("app", "b"), "v2"))
        .with(scoped("secret", "secret.mesh", ("app", "a"), "v1"))
        .with(scoped("nobody", "nobody.mesh", ("app", "z"), "v1"))
        .yaml();
    let p = plan(&text);
    let keys: Vec<String> = p.workloads.iter().map(|w| w.key()).collect();
    assert_eq!(keys, ["t/p1", "t/p2"], "only this cluster's Pods");
    let (p1, p2) = (p.workload("t/p1").cloned(), p.workload("t/p2").cloned());
    let shop = p.hosts_named("shop.mesh");
    assert_eq!(shop.len(), 2);
    assert_ne!(
        shop[0].vip4, shop[1].vip4,
        "a scoped host has VIPs of its own"
    );
    let for_all = p.host("shop.mesh").unwrap();
    assert!(for_all.workload_selectors.is_empty());
    assert_eq!(
        p.host_for("shop.mesh", p1.as_ref()).unwrap().vip4,
        for_all.vip4
    );
    let for_b = p.host_for("shop.mesh", p2.as_ref()).unwrap();
    assert_ne!(for_b.vip4, for_all.vip4, "p2 is selected by shop-b");
    let svc = p
        .service(for_b.vip4.into(), 8080, Proto::Tcp)
        .expect("shop-b's service");
    assert!(svc.scoped);
    assert_eq!(svc.slots[0].endpoint.to_string(), "10.0.0.2:8080");
    assert!(
        !p.service(for_all.vip4.into(), 8080, Proto::Tcp)
            .unwrap()
            .scoped
    );
    assert!(
        p.host("secret.mesh").is_none(),
        "no table serves it to every caller"
    );
    let secret = p.host_for("secret.mesh", p1.as_ref()).expect("p1 sees it");
    assert!(p.host_for("secret.mesh", p2.as_ref()).is_none());

    // What the kernel gets: each served workload's namespace and the scoped
    // VIPs it sees (a workload without a Pod sees none).
    let vis =
        router_user::plan::Scopes::of(&p).visibility([("t/p1", 11), ("t/p2", 22), ("t/ghost", 33)]);
    let want: std::collections::BTreeSet<(u64, std::net::IpAddr)> = [
        (11, secret.vip4.into()),
        (11, secret.vip6.into()),
        (22, for_b.vip4.into()),
        (22, for_b.vip6.into()),
    ]
    .into();
    assert_eq!(vis, want);

    // Their own addresses (the Pods' IPs), unless hairpin is allowed.
    let own = router_user::plan::Scopes::of(&p).own_addresses([("t/p1", 11), ("t/p2", 22)]);
    let want: std::collections::BTreeSet<(u64, std::net::IpAddr)> = [
        (11, "10.0.0.9".parse().unwrap()),
        (11, "fd00::9".parse().unwrap()),
    ]
    .into();
    assert_eq!(own, want);
    let hairpin = plan(&text.replacen("zone: z1", "zone: z1\n  workloadHairpin: true", 1));
    assert!(hairpin.workload_hairpin);
    assert!(
        router_user::plan::Scopes::of(&hairpin)
            .own_addresses([("t/p1", 11)])
            .is_empty()
    );

    // What the DNS server answers each.
    let names = router_user::dns::Names::from_plan(&p);
    assert_eq!(names.lookup("shop.mesh", None).unwrap().0, for_all.vip4);
    assert_eq!(
        names.lookup("shop.mesh", Some("t/p1")).unwrap().0,
        for_all.vip4
    );
    assert_eq!(
        names.lookup("shop.mesh", Some("t/p2")).unwrap().0,
        for_b.vip4
    );
    assert_eq!(
        names.lookup("secret.mesh", Some("t/p1")).unwrap().0,
        secret.vip4
    );
    assert!(names.lookup("secret.mesh", Some("t/p2")).is_none());
    assert!(names.lookup("secret.mesh", None).is_none());

    let notice = p
        .notices
        .iter()
        .find(|n| &*n.origin.name == "nobody")
        .expect("a notice for the table that selects no Pod");
    assert!(
        notice.message.contains("select no Pod of cluster c1"),
        "{}",
        notice.message
    );
    assert!(
        !p.notices
            .iter()
            .any(|n| n.message.contains("not applied one by one")),
        "selectors are applied now"
    );

    // Two scoped tables for one host that select the same Pod: a notice.
    let also = Config::new().with(scoped("shop-all-pods", "shop.mesh", ("tier", "web"), "v1"));
    let overlap = plan(&format!("{text}{}", also.yaml()));
    let for_p2 = overlap
        .host_for("shop.mesh", overlap.workload("t/p2"))
        .unwrap();
    assert_eq!(
        &*for_p2.origin.name, "shop-all-pods",
        "the notice says what DNS does"
    );
    let n: Vec<&String> = overlap
        .notices
        .iter()
        .map(|n| &n.message)
        .filter(|m| m.contains("is also selected by"))
        .collect();
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(
        n[0].contains("Pod t/p2 is also selected by RouteTable t/shop-all-pods"),
        "{}",
        n[0]
    );

    // Two tables for every caller still may not share a host.
    let twice = Config::new()
        .node("c1", "r1", "z1")
        .with(Service::new("c1", "api").named_port("http", 8080, "TCP"))
        .with(
            RouteTable::new("a")
                .host("x.mesh")
                .tcp(TcpRoute::new().to(&[Dest::service("api").port(8080)])),
        )
        .with(
            RouteTable::new("b")
                .host("x.mesh")
                .tcp(TcpRoute::new().to(&[Dest::service("api").port(8080)])),
        )
        .yaml();
    assert!(errors(&twice).contains("host `x.mesh` is already served (east-west)"));
}
