//! Gloo's API as Gloo users write it (issue 14): each test loads resources
//! in the shape Gloo Mesh's API reference documents, written out as YAML,
//! and checks that routerd reads them as Gloo means them. The node and the
//! inventory around them come from the typed builders.
use router_user::{
    compile::{Health, compile},
    config::{Overrides, load_str},
    plan::{ClientCerts, Plan},
    testing::*,
};

/// The node (cluster c1, region r1, zone z1) and `payments` in namespace
/// `payments`: two endpoints in z1, one in z2, port 80 named http.
fn world() -> String {
    Config::new()
        .node("c1", "r1", "z1")
        .with(
            Service::new("c1", "payments")
                .namespace("payments")
                .label("app", "payments")
                .named_port("http", 80, "TCP"),
        )
        .with(
            Slice::new("c1", "payments", "payments-1")
                .namespace("payments")
                .region("r1")
                .named_port("http", 8080, "TCP")
                .endpoint("10.0.0.1", "z1")
                .endpoint("10.0.0.2", "z1")
                .endpoint("10.0.0.3", "z2"),
        )
        .yaml()
}

fn load(gloo: &str) -> Result<Plan, String> {
    let text = format!("{}{gloo}", world());
    let v = load_str("t.yaml", &text, &Overrides::default()).map_err(|e| e.to_string())?;
    compile(&v, &Health::default()).map_err(|e| e.to_string())
}

fn plan(gloo: &str) -> Plan {
    load(gloo).unwrap_or_else(|e| panic!("{e}"))
}

/// Item 1: a delegate `routeTables` selector without a namespace selects in
/// every namespace (Gloo: the workspace), not only the parent's. The app
/// team's table lives in its own namespace, the gateway team's elsewhere.
#[test]
fn a_delegate_selector_without_namespace_finds_tables_in_every_namespace() {
    let p = plan(
        r#"apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata:
  name: shop
  namespace: gateways
spec:
  hosts:
  - shop.mesh
  http:
  - name: payments
    matchers:
    - uri:
        prefix: /pay
    delegate:
      routeTables:
      - labels:
          team: payments
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata:
  name: payments-routes
  namespace: payments
  labels:
    team: payments
spec:
  http:
  - name: pay
    forwardTo:
      destinations:
      - ref:
          name: payments
          namespace: payments
        port:
          number: 80
"#,
    );
    let l7 =
        p.l7.iter()
            .find(|s| s.host == "shop.mesh")
            .expect("shop.mesh is served by the L7 proxy");
    let route = &l7.routes[0];
    assert_eq!(
        (&*route.origin.namespace, &*route.origin.name),
        ("payments", "payments-routes"),
        "the child table in another namespace is the one that routes"
    );
    // With a namespace, only that namespace.
    let e = load(
        r#"apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: shop, namespace: gateways}
spec:
  hosts: [shop.mesh]
  http:
  - name: payments
    delegate:
      routeTables:
      - labels: {team: payments}
        namespace: gateways
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: payments-routes, namespace: payments, labels: {team: payments}}
spec:
  http:
  - name: pay
    forwardTo:
      destinations:
      - ref: {name: payments, namespace: payments}
        port: {number: 80}
"#,
    )
    .expect_err("nothing matches in namespace gateways");
    assert!(
        e.contains("namespace `gateways`, labels team=payments, but none exists"),
        "{e}"
    );
}

/// A route table for `shop.mesh` whose one TCP route forwards to `dests`
/// (Gloo's `forwardTo.destinations` entries, as YAML flow maps).
fn forward_to(dests: &[&str]) -> String {
    let list: String = dests.iter().map(|d| format!("      - {d}\n")).collect();
    format!(
        "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: shop, namespace: payments}}\nspec:\n  hosts: [shop.mesh]\n  tcp:\n  - matchers: [{{port: 80}}]\n    forwardTo:\n      destinations:\n{list}"
    )
}

/// Item 4: weights of 50 and 50 leave no remainder, so a third destination
/// without a weight is invalid in Gloo (it used to be accepted at 0%).
#[test]
fn weights_that_leave_no_remainder_for_an_unweighted_destination_are_errors() {
    let d = "{ref: {name: payments}, port: {number: 80}";
    let e = load(&forward_to(&[
        &format!("{d}, weight: 50}}"),
        &format!("{d}, weight: 50}}"),
        &format!("{d}}}"),
    ]))
    .expect_err("50 + 50 + an unweighted destination");
    assert!(
        e.contains("t.yaml:")
            && e.contains("RouteTable payments/shop")
            && e.contains("leaves nothing for 1 destination(s) without a weight"),
        "{e}"
    );
    // A remainder to share is fine: 40 + 40 + the rest (20).
    plan(&forward_to(&[
        &format!("{d}, weight: 40}}"),
        &format!("{d}, weight: 40}}"),
        &format!("{d}}}"),
    ]));
}

/// `payments` as a VirtualDestination, with outlier detection (locality
/// ranking applies only with it, as in Istio) and `failover` as the
/// FailoverPolicy's config.
fn failover(config: &str) -> String {
    let apply = "  applyToDestinations:\n  - kind: VIRTUAL_DESTINATION\n    selector: {labels: {failover: \"true\"}}";
    format!(
        r#"apiVersion: networking.gloo.solo.io/v2
kind: VirtualDestination
metadata: {{name: payments, namespace: payments, labels: {{failover: "true"}}}}
spec:
  hosts: [payments.mesh]
  services: [{{labels: {{app: payments}}}}]
  ports: [{{number: 80}}]
---
apiVersion: resilience.policy.gloo.solo.io/v2
kind: OutlierDetectionPolicy
metadata: {{name: outliers, namespace: payments}}
spec:
{apply}
  config: {{consecutiveErrors: 5}}
---
apiVersion: resilience.policy.gloo.solo.io/v2
kind: FailoverPolicy
metadata: {{name: failover, namespace: payments}}
spec:
{apply}
  config:
{config}"#
    )
}

/// The endpoints `payments.mesh:80`'s slot table uses.
fn used(p: &Plan) -> Vec<String> {
    let s = p
        .services
        .iter()
        .find(|s| *s.host == *"payments.mesh" && s.port == 80 && s.vip.is_ipv4())
        .expect("payments.mesh:80");
    s.slots
        .iter()
        .map(|x| x.endpoint.ip().to_string())
        .collect()
}

/// Item 5: `priorityLabels` entries in the `key=value` form (Istio's
/// failoverPriority, which Gloo follows) prefer endpoints whose label has
/// that value, whatever the node's own labels; they used to match nothing
/// and the locality preference was lost. A bare `key` still means "the
/// node's value".
#[test]
fn priority_labels_in_key_value_form_prefer_the_endpoints_with_that_value() {
    // The zone label of each endpoint comes from its slice: z1 for .1 and
    // .2, z2 for .3. Prefer z2 (not the node's zone).
    let p = plan(&failover(
        "    priorityLabels:\n      labels:\n      - topology.kubernetes.io/zone=z2\n",
    ));
    assert_eq!(
        used(&p),
        vec!["10.0.0.3"],
        "z2 first, whatever the node's zone"
    );
    // A bare key: the node's value (z1).
    let p = plan(&failover(
        "    priorityLabels:\n      labels:\n      - topology.kubernetes.io/zone\n",
    ));
    assert_eq!(used(&p), vec!["10.0.0.1", "10.0.0.2"]);
}

/// Item 6: a route policy without `applyToRoutes` applies to every route
/// (Gloo's meaning); it used to be refused. A notice says so.
#[test]
fn a_route_policy_without_apply_to_routes_applies_to_every_route() {
    let v = load_str(
        "t.yaml",
        &format!(
            "{}{}",
            world(),
            r#"apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: shop, namespace: payments}
spec:
  hosts: [shop.mesh]
  http:
  - name: api
    matchers: [{uri: {prefix: /api}}]
    forwardTo:
      destinations: [{ref: {name: payments}, port: {number: 80}}]
  - name: web
    matchers: [{uri: {prefix: /}}, {headers: [{name: x-web, value: "1"}]}]
    forwardTo:
      destinations: [{ref: {name: payments}, port: {number: 80}}]
---
apiVersion: resilience.policy.gloo.solo.io/v2
kind: RetryTimeoutPolicy
metadata: {name: everywhere, namespace: payments}
spec:
  config:
    retries: {attempts: 2}
    requestTimeout: 3s
"#
        ),
        &Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        v.notices
            .iter()
            .any(|n| n.message.contains("applies to every route")),
        "{:?}",
        v.notices
    );
    let p = compile(&v, &Health::default()).unwrap_or_else(|e| panic!("{e}"));
    let l7 =
        p.l7.iter()
            .find(|s| s.host == "shop.mesh")
            .expect("shop.mesh");
    assert_eq!(l7.routes.len(), 2);
    for r in &l7.routes {
        let retry = r
            .policies
            .retry
            .as_ref()
            .unwrap_or_else(|| panic!("route {} has no retry policy", r.name));
        assert_eq!(retry.attempts, 2, "route {}", r.name);
    }
}

fn notices(gloo: &str) -> Vec<String> {
    let text = format!("{}{gloo}", world());
    let v = load_str("t.yaml", &text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    v.notices.iter().map(|n| n.to_string()).collect()
}

/// Item 7: a route policy whose selector matches no route, and a field
/// routerd parses but does not apply (VirtualGateway `workloads`), are
/// notices naming the line, never silence.
#[test]
fn selectors_that_match_nothing_and_ignored_fields_are_notices() {
    let gloo = r#"apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: shop, namespace: payments}
spec:
  hosts: [shop.mesh]
  http:
  - name: api
    labels: {route: api}
    matchers: [{uri: {prefix: /api}}]
    forwardTo:
      destinations: [{ref: {name: payments}, port: {number: 80}}]
---
apiVersion: trafficcontrol.policy.gloo.solo.io/v2
kind: HeaderManipulationPolicy
metadata: {name: headers, namespace: payments}
spec:
  applyToRoutes:
  - route: {labels: {route: api}}
  - route: {labels: {route: typo}}
  config: {appendRequestHeaders: {x-a: "1"}}
---
apiVersion: networking.gloo.solo.io/v2
kind: VirtualGateway
metadata: {name: ingress, namespace: payments}
spec:
  workloads:
  - selector: {labels: {app: istio-ingressgateway}}
  listeners:
  - port: {number: 8080}
    http: {}
"#;
    let n = notices(gloo);
    let typo_line = world().lines().count()
        + gloo
            .lines()
            .position(|l| l.contains("route: typo"))
            .expect("typo")
        + 1;
    let selects_nothing: Vec<&String> = n
        .iter()
        .filter(|l| l.contains("applyToRoutes selects no route"))
        .collect();
    assert_eq!(
        selects_nothing.len(),
        1,
        "only the typo selects nothing: {n:?}"
    );
    assert!(
        selects_nothing[0].contains("HeaderManipulationPolicy payments/headers")
            && selects_nothing[0].starts_with(&format!("t.yaml:{typo_line}:")),
        "{n:?}"
    );
    assert!(
        n.iter()
            .any(|l| l.contains("VirtualGateway payments/ingress")
                && l.contains("spec.workloads selects no Pod")),
        "{n:?}"
    );
}

/// Item 8: what `kubectl get ... -A -o yaml` prints, a `v1 List` whose
/// `items` carry `status`, `managedFields`, `uid`, `resourceVersion`,
/// timestamps and the last-applied annotation, loads unchanged and means
/// what the same objects written one per document mean.
#[test]
fn kubectl_list_output_loads_as_the_objects_it_lists() {
    let node = Config::new().node("c1", "r1", "z1").yaml();
    let objects = [
        r#"apiVersion: v1
kind: Service
metadata:
  clusterName: c1
  name: payments
  namespace: payments
  labels:
    app: payments
spec:
  ports:
  - name: http
    port: 80
    protocol: TCP
"#,
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  clusterName: c1
  name: payments-1
  namespace: payments
  labels:
    kubernetes.io/service-name: payments
    topology.kubernetes.io/region: r1
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses:
  - 10.0.0.1
  zone: z1
- addresses:
  - 10.0.0.3
  zone: z2
"#,
        r#"apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata:
  name: pay
  namespace: payments
spec:
  hosts:
  - pay.mesh
  tcp:
  - forwardTo:
      destinations:
      - ref:
          name: payments
          cluster: c1
        port:
          number: 80
"#,
    ];
    let plain = format!("{node}---\n{}", objects.join("---\n"));
    // The same objects as kubectl prints them: items at column 0 under
    // `items:`, cluster-added fields in metadata, a status, and the List's
    // own kind and metadata after the items.
    let mut list = format!("{node}---\napiVersion: v1\nitems:\n");
    for o in objects {
        let mut lines = o.lines();
        list.push_str(&format!("- {}\n", lines.next().unwrap()));
        for l in lines {
            list.push_str(&format!("  {l}\n"));
            if l == "metadata:" {
                list.push_str(
                    "    annotations:\n      kubectl.kubernetes.io/last-applied-configuration: |\n        {\"apiVersion\":\"v1\",\n         \"kind\":\"x\"}\n    creationTimestamp: \"2026-11-01T10:00:00Z\"\n    generation: 3\n    managedFields:\n    - apiVersion: v1\n      fieldsType: FieldsV1\n      manager: kubectl\n    resourceVersion: \"4711\"\n    uid: 6b1d1e0e-0000-4000-8000-000000000001\n",
                );
            }
        }
        if !o.contains("kind: EndpointSlice") {
            list.push_str("  status:\n    ownerWorkspace: ops\n    observedGeneration: 3\n");
        }
    }
    list.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    let load = |text: &str| {
        let v = load_str("t.yaml", text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        compile(&v, &Health::default()).unwrap_or_else(|e| panic!("{e}"))
    };
    let (a, b) = (load(&plain), load(&list));
    assert_eq!(a.services.len(), 1, "{:?}", a.services);
    // The same services, endpoints and backends; only the lines differ.
    let lineless = |p: &Plan| {
        p.services
            .iter()
            .map(|x| {
                let mut x = (**x).clone();
                x.origin.line = 0;
                x
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(lineless(&a), lineless(&b));
    assert_eq!(a.backends, b.backends);
    // The origin names the route's own line in the List.
    let route_line = list.lines().position(|l| l == "    - forwardTo:").unwrap() as u64 + 1;
    assert_eq!(b.services[0].origin.line, route_line);
    assert_eq!(&*b.services[0].origin.kind, "RouteTable");

    // An error inside an item names its line in the file, and its column
    // as written there (the item's indentation counted).
    let bad = list.replace("    - pay.mesh\n", "    - pay.mesh\n    hostz: 1\n");
    assert_ne!(bad, list);
    let err = load_str("t.yaml", &bad, &Overrides::default()).unwrap_err();
    let line = bad.lines().position(|l| l == "    hostz: 1").unwrap() as u64 + 1;
    let e = &err.errors[0];
    assert_eq!((e.line, e.column), (line, 5), "{err}");
    assert!(e.message.contains("hostz"), "{err}");

    // `items: []` lists nothing; a List in flow style is refused with its line.
    let empty = format!("{plain}---\napiVersion: v1\nitems: []\nkind: List\n");
    assert_eq!(lineless(&load(&empty)), lineless(&a));
    let flow = format!("{plain}---\napiVersion: v1\nitems: [{{kind: Service}}]\nkind: List\n");
    let err = load_str("t.yaml", &flow, &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("block style"), "{err}");
    assert_eq!(
        err.errors[0].line,
        plain.lines().count() as u64 + 2,
        "{err}"
    );
}

/// Item 11, gateways: `routerd explain` of a host served north-south says
/// which gateway and listener, which route table, and its routes in match
/// order; a port no listener of the host has is an error, not silence.
#[test]
fn explain_names_the_gateway_listener_table_and_routes_of_a_host() {
    let p = plan(
        r#"apiVersion: networking.gloo.solo.io/v2
kind: VirtualGateway
metadata: {name: north, namespace: payments}
spec:
  listeners:
  - port: {number: 8081}
    http: {}
    allowedRouteTables: [{host: "*.example.com"}]
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: storefront, namespace: payments}
spec:
  hosts: [shop.example.com]
  virtualGateways: [{name: north}]
  http:
  - name: checkout
    matchers: [{uri: {prefix: /checkout}}]
    forwardTo:
      destinations: [{ref: {name: payments}, port: {number: 80}}]
"#,
    );
    let text =
        router_user::explain::explain(&p, "shop.example.com").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.starts_with(
            "shop.example.com on gateway payments/north (VirtualGateway payments/north"
        ),
        "{text}"
    );
    assert!(text.contains("listener on port 8081 (HTTP)"), "{text}");
    assert!(
        text.contains("route table payments/storefront (hosts shop.example.com)"),
        "{text}"
    );
    assert!(text.contains("checkout"), "{text}");
    assert!(text.contains("/checkout"), "{text}");
    assert_eq!(
        router_user::explain::explain(&p, "shop.example.com:8081").as_deref(),
        Ok(text.as_str())
    );
    let err = router_user::explain::explain(&p, "shop.example.com:9000").unwrap_err();
    assert!(err.contains("no gateway listener serves it"), "{err}");
}

/// `explain` names the table the gateway really picks: an exact host
/// before a wildcard listed earlier (the proxy's rule, one function).
#[test]
fn explain_picks_the_gateway_table_the_proxy_picks() {
    let table = |name: &str, host: &str| {
        format!(
            "---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: {name}, namespace: payments}}\nspec:\n  hosts: [\"{host}\"]\n  virtualGateways: [{{name: north}}]\n  http:\n  - name: {name}\n    forwardTo:\n      destinations: [{{ref: {{name: payments}}, port: {{number: 80}}}}]\n"
        )
    };
    let p = plan(&format!(
        "apiVersion: networking.gloo.solo.io/v2\nkind: VirtualGateway\nmetadata: {{name: north, namespace: payments}}\nspec:\n  listeners:\n  - port: {{number: 8081}}\n    http: {{}}\n    allowedRouteTables: [{{host: \"*.example.com\"}}]\n{}{}",
        table("catchall", "*.example.com"),
        table("exact", "shop.example.com")
    ));
    let text =
        router_user::explain::explain(&p, "shop.example.com").unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("route table payments/exact"), "{text}");
    let text =
        router_user::explain::explain(&p, "www.example.com").unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("route table payments/catchall"), "{text}");
}

/// Item 3: a VirtualGateway listener's TLS in Gloo's `files` form, with
/// MUTUAL and OPTIONAL_MUTUAL (client certificates verified against
/// `rootCa`); what cannot work is an error naming the listener's line.
#[test]
fn gateway_tls_takes_gloos_files_form_and_mutual_modes() {
    let dir = std::env::temp_dir().join(format!("routerd-gloo-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| {
        let p = dir.join(name);
        std::fs::write(&p, "PEM (the loader only checks that it is there)").unwrap();
        p.display().to_string()
    };
    let (cert, key, ca) = (file("cert.pem"), file("key.pem"), file("ca.pem"));
    let gateway = |tls: &str| {
        format!(
            "apiVersion: networking.gloo.solo.io/v2\nkind: VirtualGateway\nmetadata: {{name: north, namespace: payments}}\nspec:\n  listeners:\n  - port: {{number: 8443}}\n    http: {{}}\n    tls: {tls}\n    allowedRouteTables: [{{host: \"*.example.com\"}}]\n"
        )
    };
    let tls_of = |p: &Plan| p.gateways[0].tls.clone().expect("a TLS listener");
    for (mode, want) in [
        ("MUTUAL", ClientCerts::Required),
        ("OPTIONAL_MUTUAL", ClientCerts::Optional),
    ] {
        let t = tls_of(&plan(&gateway(&format!(
            "{{mode: {mode}, files: {{serverCert: {cert}, privateKey: {key}, rootCa: {ca}}}}}"
        ))));
        assert_eq!(
            (
                t.cert.as_str(),
                t.key.as_str(),
                t.ca.as_deref(),
                t.client_certs
            ),
            (cert.as_str(), key.as_str(), Some(ca.as_str()), want)
        );
    }
    let t = tls_of(&plan(&gateway(&format!(
        "{{mode: SIMPLE, files: {{serverCert: {cert}, privateKey: {key}}}}}"
    ))));
    assert_eq!(t.client_certs, ClientCerts::None);
    // MUTUAL without the CA to verify clients with.
    let e = load(&gateway(&format!(
        "{{mode: MUTUAL, files: {{serverCert: {cert}, privateKey: {key}}}}}"
    )))
    .unwrap_err();
    assert!(
        e.contains("VirtualGateway payments/north")
            && e.contains("tls mode Mutual verifies client certificates and needs `files.rootCa`"),
        "{e}"
    );
    // A mode routerd does not serve.
    let e = load(&gateway(&format!(
        "{{mode: ISTIO_MUTUAL, files: {{serverCert: {cert}, privateKey: {key}}}}}"
    )))
    .unwrap_err();
    assert!(
        e.contains("expected SIMPLE, MUTUAL, OPTIONAL_MUTUAL or PASSTHROUGH"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 3: `tls.secretName` names a `kubernetes.io/tls` Secret given with
/// the config (in the gateway's namespace): `tls.crt`, `tls.key` and, for
/// MUTUAL, `ca.crt`, base64 in `data` (or plain in `stringData`).
#[test]
fn gateway_tls_secret_name_resolves_to_a_tls_secret() {
    let gateway = |tls: &str| {
        format!(
            "apiVersion: networking.gloo.solo.io/v2\nkind: VirtualGateway\nmetadata: {{name: north, namespace: payments}}\nspec:\n  listeners:\n  - port: {{number: 8443}}\n    http: {{}}\n    tls: {tls}\n    allowedRouteTables: [{{host: \"*.example.com\"}}]\n"
        )
    };
    let secret = |ty: &str, data: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: north-tls, namespace: payments}}\ntype: {ty}\ndata:\n{data}"
        )
    };
    let full = "  tls.crt: Y2VydC1wZW0=\n  tls.key: a2V5LXBlbQ==\n  ca.crt: Y2EtcGVt\n";
    let p = plan(&format!(
        "{}{}",
        gateway("{mode: MUTUAL, secretName: north-tls}"),
        secret("kubernetes.io/tls", full)
    ));
    let t = p.gateways[0].tls.clone().expect("a TLS listener");
    let s = t.secret.expect("the Secret's contents");
    assert_eq!(
        (
            s.name.as_str(),
            s.cert.as_str(),
            s.key.as_str(),
            s.ca.as_deref()
        ),
        ("payments/north-tls", "cert-pem", "key-pem", Some("ca-pem"))
    );
    assert_eq!(t.client_certs, ClientCerts::Required);
    // What cannot work, each an error naming the gateway.
    for (text, want) in [
        (
            gateway("{mode: SIMPLE, secretName: nowhere}"),
            "there is no Secret nowhere in namespace payments",
        ),
        (
            format!(
                "{}{}",
                gateway("{mode: SIMPLE, secretName: north-tls}"),
                secret("Opaque", full)
            ),
            "Secret payments/north-tls has type Opaque, expected kubernetes.io/tls",
        ),
        (
            format!(
                "{}{}",
                gateway("{mode: SIMPLE, secretName: north-tls}"),
                secret(
                    "kubernetes.io/tls",
                    "  tls.crt: '%%%'\n  tls.key: a2V5LXBlbQ==\n"
                )
            ),
            "data.tls.crt is not base64",
        ),
        (
            format!(
                "{}{}",
                gateway("{mode: MUTUAL, secretName: north-tls}"),
                secret(
                    "kubernetes.io/tls",
                    "  tls.crt: Y2VydC1wZW0=\n  tls.key: a2V5LXBlbQ==\n"
                )
            ),
            "needs `files.rootCa` (PEM: the CA that signs them) or a Secret with ca.crt",
        ),
    ] {
        let e = load(&text).unwrap_err();
        assert!(
            e.contains("VirtualGateway payments/north") && e.contains(want),
            "want {want:?} in:\n{e}"
        );
    }
}

/// A route table for `shop.mesh` with one labelled route (`route: api`)
/// and `policy`, a route policy document, after it.
fn shop_with(policy: &str) -> String {
    format!(
        r#"apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {{name: shop, namespace: payments}}
spec:
  hosts: [shop.mesh]
  http:
  - name: api
    labels: {{route: api}}
    matchers: [{{uri: {{prefix: /api}}}}]
    forwardTo:
      destinations: [{{ref: {{name: payments}}, port: {{number: 80}}}}]
---
{policy}"#
    )
}

/// Item 2: Gloo's RetryPolicy: `retryOn` a comma-separated string whose
/// HTTP status codes are retried besides the named conditions, `attempts`
/// 2 when omitted, `retryRemoteLocalities` parsed (a notice: retries stay
/// in the serving tier); routerd's old `retriableStatusCodes` (not Gloo's)
/// is an error that says where the codes go.
#[test]
fn retry_on_takes_gloos_string_with_status_codes() {
    let retry = |retries: &str| {
        shop_with(&format!(
            "apiVersion: resilience.policy.gloo.solo.io/v2\nkind: RetryTimeoutPolicy\n\
             metadata: {{name: retry, namespace: payments}}\nspec:\n  \
             applyToRoutes: [{{route: {{labels: {{route: api}}}}}}]\n  \
             config:\n    retries: {retries}\n"
        ))
    };
    // The retry policy of shop.mesh's first route.
    let retry_of = |yaml: &str| {
        let p = plan(&retry(yaml));
        let l7 =
            p.l7.iter()
                .find(|s| s.host == "shop.mesh")
                .expect("shop.mesh");
        l7.routes[0].policies.retry.clone().expect("retry policy")
    };
    let r = retry_of("{retryOn: \"5xx,connect-failure,429,retriable-4xx\", perTryTimeout: 1s}");
    assert_eq!(r.attempts, 2, "Gloo's default: 2 retries");
    assert!(r.on_5xx && r.on_connect_failure && !r.on_reset);
    assert_eq!(r.status_codes, vec![409, 429]);
    assert_eq!(r.per_try_timeout_ms, Some(1000));

    let e = load(&retry("{attempts: 1, retriableStatusCodes: [429]}")).unwrap_err();
    assert!(
        e.contains("retriableStatusCodes is not a field of Gloo's RetryTimeoutPolicy")
            && e.contains("`retryOn: 5xx,429`")
            && e.contains("t.yaml:"),
        "{e}"
    );
    // Envoy's gRPC conditions, as their status codes (issue 15).
    let r = retry_of(
        "{retryOn: \"5xx,unavailable,cancelled,deadline-exceeded,internal,resource-exhausted\"}",
    );
    assert_eq!(r.grpc_codes, vec![1, 4, 8, 13, 14]);
    assert!(r.on_5xx && r.status_codes.is_empty());
    let e = load(&retry("{retryOn: \"5xx,unavaliable\"}")).unwrap_err();
    assert!(
        e.contains("unknown retryOn condition `unavaliable`") && e.contains("unavailable)"),
        "{e}"
    );
    let e = load(&retry("{retryOn: \"5xx,700\"}")).unwrap_err();
    assert!(e.contains("`700` is not an HTTP status"), "{e}");

    let n = notices(&retry("{retryOn: 5xx, retryRemoteLocalities: true}"));
    assert!(
        n.iter()
            .any(|l| l.contains("retryRemoteLocalities is not applied")),
        "{n:?}"
    );
}

/// Item 6: `applyToRoutes[].route` is Gloo's ObjectSelector: `cluster` and
/// `workspace` load (a notice says they do not narrow the selection: the
/// route tables here are mesh-wide), labels still select.
#[test]
fn apply_to_routes_takes_gloos_object_selector_fields() {
    let text = shop_with(
        "apiVersion: trafficcontrol.policy.gloo.solo.io/v2\nkind: HeaderManipulationPolicy\n\
         metadata: {name: headers, namespace: payments}\nspec:\n  applyToRoutes:\n  \
         - route: {labels: {route: api}, cluster: c1, workspace: payments-ws}\n  \
         config: {appendRequestHeaders: {x-a: \"1\"}}\n",
    );
    let n = notices(&text);
    for field in ["cluster", "workspace"] {
        assert!(
            n.iter().any(|l| l.contains(&format!(
                "applyToRoutes[].route.{field} does not narrow the selection"
            ))),
            "{field}: {n:?}"
        );
    }
    let p = plan(&text);
    let l7 =
        p.l7.iter()
            .find(|s| s.host == "shop.mesh")
            .expect("shop.mesh");
    assert!(l7.routes[0].policies.headers.is_some(), "the labels select");
}

/// Item 5: FailoverPolicy `to` entries may be partly weighted (a
/// distribution): those without a weight share what the weighted ones
/// leave of 100; a weighted sum of 100 with an unweighted entry left over
/// is an error, as for destinations.
#[test]
fn partially_weighted_failover_targets_share_the_remainder() {
    let p = plan(&failover(
        "    localityMappings:\n    - from: {region: r1}\n      to:\n      \
         - {region: r1, zone: z2, weight: 60}\n      - {region: r1, zone: z1}\n",
    ));
    let s = p
        .services
        .iter()
        .find(|s| *s.host == *"payments.mesh" && s.port == 80 && s.vip.is_ipv4())
        .expect("payments.mesh:80");
    let total: u32 = s.slots.iter().map(|x| x.slots).sum();
    let share = |ip: &str| {
        s.slots
            .iter()
            .filter(|x| x.endpoint.ip().to_string() == ip)
            .map(|x| x.slots)
            .sum::<u32>() as f64
            / total as f64
    };
    let all: Vec<f64> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        .iter()
        .map(|i| share(i))
        .collect();
    assert!((share("10.0.0.3") - 0.6).abs() < 0.01, "z2: 60%: {all:?}");
    assert!((share("10.0.0.1") - 0.2).abs() < 0.01, "z1 shares 40%");
    assert!((share("10.0.0.2") - 0.2).abs() < 0.01, "z1 shares 40%");

    let e = load(&failover(
        "    localityMappings:\n    - from: {region: r1}\n      to:\n      \
         - {region: r1, zone: z2, weight: 100}\n      - {region: r1, zone: z1}\n",
    ))
    .unwrap_err();
    assert!(e.contains("leaves nothing for the 1"), "{e}");
}

/// Item 10: RouteTable `tls` routes (`matchers: [{sniHosts, port}]`) on a
/// VirtualGateway listener with `tls: {mode: PASSTHROUGH}`: the plan's
/// listener routes by SNI (one host entry per route, its SNI names) and
/// has no certificate. A passthrough listener cannot be `http` or carry
/// certificates; `tls` routes that no passthrough listener serves are a
/// notice.
#[test]
fn tls_routes_on_passthrough_listeners_route_by_sni() {
    let with = |listener: &str| {
        format!(
            r#"apiVersion: networking.gloo.solo.io/v2
kind: VirtualGateway
metadata: {{name: edge, namespace: payments}}
spec:
  listeners:
  - port: {{number: 443}}
{listener}
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {{name: passthrough, namespace: payments}}
spec:
  hosts: ["*.pay.test"]
  virtualGateways: [{{name: edge}}]
  tls:
  - name: checkout
    matchers:
    - sniHosts: [checkout.pay.test]
      port: 443
    forwardTo:
      destinations: [{{ref: {{name: payments}}, port: {{number: 80}}}}]
  - name: rest
    forwardTo:
      destinations: [{{ref: {{name: payments}}, port: {{number: 80}}}}]
"#
        )
    };
    let p = plan(&with("    tls: {mode: PASSTHROUGH}\n    tcp: {}"));
    let l = &p.gateways[0];
    assert!(l.passthrough && !l.http && l.tls.is_none(), "{l:?}");
    let hosts: Vec<(&[String], &str)> = l
        .hosts
        .iter()
        .map(|h| (&h.hosts[..], h.routes[0].name.as_str()))
        .collect();
    assert_eq!(
        hosts,
        vec![
            (&["checkout.pay.test".to_string()][..], "checkout"),
            (&["*.pay.test".to_string()][..], "rest"),
        ],
        "a route without sniHosts takes the table's hosts"
    );
    // Without tcp: {} too (the mode says what the listener is).
    assert!(plan(&with("    tls: {mode: PASSTHROUGH}")).gateways[0].passthrough);
    let e = load(&with("    tls: {mode: PASSTHROUGH}\n    http: {}")).unwrap_err();
    assert!(e.contains("cannot be `http: {}`"), "{e}");
    let e = load(&with(
        "    tls: {mode: PASSTHROUGH, secretName: pay-cert}\n    tcp: {}",
    ))
    .unwrap_err();
    assert!(e.contains("PASSTHROUGH does not terminate TLS"), "{e}");
    let n = notices(&with("    tcp: {}"));
    assert!(
        n.iter()
            .any(|l| l.contains("RouteTable payments/passthrough")
                && l.contains("tls routes are served only by VirtualGateway listeners")),
        "{n:?}"
    );
}

/// `api.partner.test` as Gloo's ExternalService on 443, and `extra` (more
/// documents) after it.
fn partner(selector: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: networking.gloo.solo.io/v2
kind: ExternalService
metadata: {{name: partner, namespace: payments, labels: {{external: "true"}}}}
spec:
  hosts: [api.partner.test]
  ports:
  - {{number: 443, name: https, protocol: HTTPS}}
{selector}---
apiVersion: networking.gloo.solo.io/v2
kind: ExternalEndpoint
metadata:
  name: partner-z1
  namespace: payments
  labels: {{partner: api, topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1}}
spec:
  address: 10.9.0.1
  ports: [{{name: https, number: 8443}}]
---
apiVersion: networking.gloo.solo.io/v2
kind: ExternalEndpoint
metadata:
  name: partner-z2
  namespace: payments
  labels: {{partner: api, topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z2}}
spec:
  address: 10.9.0.2
  ports: [{{name: https, number: 8443}}]
---
{extra}"#
    )
}

/// The endpoints (with slot counts) of `host`:`port`'s IPv4 service.
fn slots_of(p: &Plan, host: &str, port: u16) -> Vec<(String, u32)> {
    let s = p
        .services
        .iter()
        .find(|s| *s.host == *host && s.port == port && s.vip.is_ipv4())
        .unwrap_or_else(|| panic!("no service {host}:{port}"));
    s.slots
        .iter()
        .map(|x| (x.endpoint.to_string(), x.slots))
        .collect()
}

/// Item 9: an ExternalService (Gloo's shape) is a virtual host with a VIP
/// and a name, backed by the ExternalEndpoints its selector picks (ports
/// by name, locality from their labels), and a destination of kind
/// EXTERNAL_SERVICE; policies select it by kind EXTERNAL_SERVICE, and
/// locality and failover apply as to any destination.
#[test]
fn external_services_are_virtual_hosts_backed_by_external_endpoints() {
    let p = plan(&partner(
        "  selector: {partner: api}\n",
        r#"apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: partner-routes, namespace: payments}
spec:
  hosts: [partner.mesh]
  tcp:
  - forwardTo:
      destinations: [{ref: {name: partner}, kind: EXTERNAL_SERVICE, port: {number: 443}}]
"#,
    ));
    let h = p.host("api.partner.test").expect("a virtual host");
    assert!(p.vip_ranges.v4.contains(&h.vip4), "a VIP: {}", h.vip4);
    assert_eq!(
        slots_of(&p, "api.partner.test", 443),
        vec![("10.9.0.1:8443".into(), 1), ("10.9.0.2:8443".into(), 1)]
    );
    assert_eq!(
        slots_of(&p, "partner.mesh", 443).len(),
        2,
        "the route table's destination"
    );
    // Outlier detection and failover select it by kind: its own zone first.
    let policies = r#"apiVersion: resilience.policy.gloo.solo.io/v2
kind: OutlierDetectionPolicy
metadata: {name: od, namespace: payments}
spec:
  applyToDestinations: [{kind: EXTERNAL_SERVICE, selector: {labels: {external: "true"}}}]
  config: {consecutiveErrors: 5}
---
apiVersion: resilience.policy.gloo.solo.io/v2
kind: FailoverPolicy
metadata: {name: fo, namespace: payments}
spec:
  applyToDestinations: [{kind: EXTERNAL_SERVICE}]
  config:
    localityMappings: [{from: {region: r1}, to: [{region: r1, zone: z2}]}]
"#;
    let p = plan(&partner("  selector: {partner: api}\n", policies));
    assert_eq!(
        slots_of(&p, "api.partner.test", 443),
        vec![("10.9.0.1:8443".into(), 1)],
        "the node's zone (z1) first"
    );
    // A policy of kind SERVICE does not select it.
    let p = plan(&partner(
        "  selector: {partner: api}\n",
        &policies.replace("kind: EXTERNAL_SERVICE", "kind: SERVICE"),
    ));
    assert_eq!(slots_of(&p, "api.partner.test", 443).len(), 2);
}

/// Item 9: without ExternalEndpoints, the hosts' addresses come from DNS
/// (the daemon's resolver hands them in as `Resources::resolved`; here set
/// by hand); the plan lists the names to resolve. What routerd cannot do
/// is an error naming the line.
#[test]
fn external_services_without_endpoints_resolve_their_hosts() {
    let text = format!("{}{}", world(), partner("", ""));
    let v = load_str("t.yaml", &text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    let p = compile(&v, &Health::default()).unwrap();
    assert_eq!(p.dns.resolve, vec!["api.partner.test".to_string()]);
    assert!(
        slots_of(&p, "api.partner.test", 443).is_empty(),
        "not resolved yet"
    );
    let mut cfg = v.config.clone();
    cfg.resolved.insert(
        "api.partner.test".into(),
        vec!["10.9.1.1".parse().unwrap(), "10.9.1.2".parse().unwrap()],
    );
    let v = router_user::config::validate_all(cfg, &Overrides::default()).unwrap();
    let p = compile(&v, &Health::default()).unwrap();
    assert_eq!(
        slots_of(&p, "api.partner.test", 443),
        vec![("10.9.1.1:443".into(), 1), ("10.9.1.2:443".into(), 1)]
    );
    for (bad, says) in [
        (
            "  addresses: [192.0.2.10]\n",
            "spec.addresses is not supported",
        ),
        (
            "  selector: {partner: none}\n",
            "", // a notice, not an error
        ),
    ] {
        let r = load(&partner(bad, ""));
        if says.is_empty() {
            assert!(r.is_ok(), "{r:?}");
        } else {
            let e = r.unwrap_err();
            assert!(
                e.contains(says) && e.contains("ExternalService payments/partner"),
                "{e}"
            );
        }
    }
    let e = load(&partner("", "").replace(
        "name: https, protocol: HTTPS}",
        "name: https, protocol: HTTPS, clientsideTls: {}}",
    ))
    .unwrap_err();
    assert!(e.contains("clientsideTls is not supported"), "{e}");
    let e =
        load(&partner("", "").replace("[api.partner.test]", "[\"*.partner.test\"]")).unwrap_err();
    assert!(e.contains("wildcards are not allowed"), "{e}");
    let n = notices(&partner("  selector: {partner: none}\n", ""));
    assert!(
        n.iter().any(|l| l.contains("selects no ExternalEndpoint")),
        "{n:?}"
    );
}

/// Item 7 (and the conformance table's `notice` rows): Gloo's selector
/// fields with no meaning on a node (`cluster`, `workspace` of route table
/// selectors and gateway references) and a mirror's `weight` load with a
/// notice each; a destination selector's port by name selects a Service
/// port of that name.
#[test]
fn fields_without_meaning_here_are_notices_and_ports_select_by_name() {
    let gloo = r#"apiVersion: networking.gloo.solo.io/v2
kind: VirtualGateway
metadata: {name: edge, namespace: payments}
spec:
  listeners:
  - port: {number: 8080}
    http: {}
    allowedRouteTables: [{selector: {cluster: c1}}]
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: root, namespace: payments}
spec:
  hosts: [shop.mesh]
  virtualGateways: [{name: edge, cluster: c1}]
  http:
  - name: team
    delegate:
      routeTables: [{labels: {team: shop}, cluster: c1, workspace: shop}]
---
apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {name: child, namespace: payments, labels: {team: shop}}
spec:
  http:
  - name: api
    labels: {route: api}
    forwardTo:
      destinations: [{ref: {name: payments}, port: {number: 80}}]
---
apiVersion: trafficcontrol.policy.gloo.solo.io/v2
kind: MirrorPolicy
metadata: {name: mirror, namespace: payments}
spec:
  applyToRoutes: [{route: {labels: {route: api}}}]
  config:
    destination: {ref: {name: payments}, port: {number: 80}, weight: 50}
"#;
    let n = notices(gloo);
    for want in [
        "allowedRouteTables[].selector.cluster is not applied",
        "virtualGateways entry edge: `cluster` is not applied",
        "delegate.routeTables[].cluster does not narrow",
        "delegate.routeTables[].workspace does not narrow",
        "destination.weight is not used by a mirror",
    ] {
        assert!(n.iter().any(|l| l.contains(want)), "{want}: {n:?}");
    }
    // applyToDestinations port by name: `http` is payments' port 80.
    let od = |port: &str| {
        format!(
            r#"apiVersion: networking.gloo.solo.io/v2
kind: RouteTable
metadata: {{name: svc, namespace: payments}}
spec:
  hosts: [svc.mesh]
  tcp:
  - forwardTo:
      destinations: [{{ref: {{name: payments}}, port: {{number: 80}}}}]
---
apiVersion: resilience.policy.gloo.solo.io/v2
kind: OutlierDetectionPolicy
metadata: {{name: od, namespace: payments}}
spec:
  applyToDestinations: [{{kind: SERVICE, port: {{name: {port}}}}}]
  config: {{consecutiveErrors: 5}}
"#
        )
    };
    assert_eq!(plan(&od("http")).outliers.len(), 1, "port http is selected");
    assert!(plan(&od("grpc")).outliers.is_empty(), "no port grpc");
}

/// Issue 16: Gloo's AccessLogPolicy loads in its documented shape and
/// becomes the plan's access log (the first one); what routerd does not
/// apply is a notice, what cannot work an error naming the line.
#[test]
fn access_log_policies_load_in_gloos_shape() {
    let policy = |name: &str, config: &str| {
        format!(
            "apiVersion: observability.policy.gloo.solo.io/v2\nkind: AccessLogPolicy\n\
             metadata: {{name: {name}, namespace: payments}}\nspec:\n  \
             applyToWorkloads: [{{selector: {{labels: {{app: gateway}}}}}}]\n  config:\n{config}---\n"
        )
    };
    let good = policy(
        "errors",
        "    filters:\n    - statusCodeMatcher: {value: 500, comparator: GE}\n    \
         - headerMatcher: {name: x-debug, value: \"1\"}\n    includedRequestHeaders: [x-request-id]\n    \
         includedResponseTrailers: [grpc-status]\n",
    );
    let p = plan(&format!("{good}{}", policy("second", "    filters: []\n")));
    let log = p.access_log.expect("an access log");
    assert_eq!(log.policy, "AccessLogPolicy payments/errors");
    assert_eq!(log.filters.len(), 2);
    assert_eq!(log.request_headers, vec!["x-request-id".to_string()]);
    let n = notices(&format!("{good}{}", policy("second", "    filters: []\n")));
    for want in [
        "spec.applyToWorkloads is not applied",
        "includedResponseTrailers is not logged",
        "the first AccessLogPolicy in config order decides",
    ] {
        assert!(n.iter().any(|l| l.contains(want)), "{want}: {n:?}");
    }
    let e = load(&policy(
        "bad",
        "    filters:\n    - statusCodeMatcher: {value: 700}\n    - {}\n",
    ))
    .unwrap_err();
    assert!(
        e.contains("statusCodeMatcher value 700 is not an HTTP status"),
        "{e}"
    );
    assert!(
        e.contains("exactly one of statusCodeMatcher or headerMatcher"),
        "{e}"
    );
}
