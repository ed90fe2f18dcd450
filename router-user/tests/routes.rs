//! The HTTP route engine over real configs: config -> plan -> engine, then
//! requests in, routes out. Matchers, delegation order, label inheritance,
//! weights and failure modes, plus property tests of the matchers.
use std::collections::BTreeMap;

use http::{HeaderMap, Method};
use proptest::prelude::*;
use router_user::{
    compile::{Health, compile},
    config::{Overrides, load_str},
    plan::{L7Action, L7Cond, L7Match, L7Policies, L7Route, Origin, PathKind, Plan},
    proxy::engine::{Req, Table},
    testing::{Config, Object, Ports, Service, Slice},
};

/// The node (c1, r1, z1) and `svc` (port 80 named http) with two slices,
/// `version: a` (10.0.0.1) and `version: b` (10.0.0.2).
fn base() -> String {
    let slice = |name: &str, ip: &str| {
        Slice::new("c1", "svc", name)
            .namespace("ns")
            .label("version", name)
            .named_port("http", 80, "TCP")
            .endpoint(ip, "")
    };
    Config::new()
        .node("c1", "r1", "z1")
        .with(
            Service::new("c1", "svc")
                .namespace("ns")
                .named_port("http", 80, "TCP"),
        )
        .with(slice("a", "10.0.0.1"))
        .with(slice("b", "10.0.0.2"))
        .yaml()
}

fn plan(docs: &str) -> Plan {
    let text = format!("{}{docs}", base());
    let v = load_str("t.yaml", &text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    compile(&v, &Health::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Route names in the L7 table of `host`.
fn table(p: &Plan, host: &str) -> (Vec<L7Route>, Table) {
    let l7 =
        p.l7.iter()
            .find(|l| l.host == host)
            .unwrap_or_else(|| panic!("{host} is not an L7 host: {:?}", p.l7));
    (l7.routes.clone(), Table::new(&l7.routes).unwrap())
}

fn route_for(
    t: &(Vec<L7Route>, Table),
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    t.1.select_plain(method, uri, headers, 80)
        .map(|hit| t.0[hit.route].name.clone())
}

fn rt(name: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name}\nspec:\n{body}---\n"
    )
}

/// (method, uri, headers, expected route)
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);

const FWD: &str = "forwardTo: {destinations: [{ref: {name: svc}}]}";

#[test]
fn gloo_documented_matchers() {
    // The matcher examples of Gloo's route table docs, as one table.
    let p = plan(&rt(
        "{name: rt, namespace: ns}",
        &format!(
            "  hosts: [www.example.com]\n  http:\n\
             \x20 - {{name: exact, matchers: [{{uri: {{exact: /ratings/1}}}}], {FWD}}}\n\
             \x20 - {{name: regex, matchers: [{{uri: {{regex: '/ratings/[1-5]'}}}}], {FWD}}}\n\
             \x20 - {{name: header, matchers: [{{uri: {{prefix: /ratings}}, headers: [{{name: version, value: v2}}]}}], {FWD}}}\n\
             \x20 - {{name: query, matchers: [{{uri: {{prefix: /ratings}}, queryParameters: [{{name: user, value: jason}}]}}], {FWD}}}\n\
             \x20 - {{name: method, matchers: [{{uri: {{prefix: /ratings}}, method: POST}}], {FWD}}}\n\
             \x20 - {{name: prefix, matchers: [{{uri: {{prefix: /ratings}}}}], {FWD}}}\n\
             \x20 - {{name: ci, matchers: [{{uri: {{prefix: /Reviews, ignoreCase: true}}}}], {FWD}}}\n"
        ),
    ));
    let t = table(&p, "www.example.com");
    let cases: &[Case] = &[
        ("GET", "/ratings/1", &[], Some("exact")),
        ("GET", "/ratings/3", &[], Some("regex")),
        ("GET", "/ratings/9", &[], Some("prefix")),
        ("GET", "/ratings/9", &[("version", "v2")], Some("header")),
        ("GET", "/ratings/9?user=jason", &[], Some("query")),
        ("GET", "/ratings/9?user=jasonx", &[], Some("prefix")),
        ("POST", "/ratings/9", &[], Some("method")),
        ("GET", "/ratingsfoo", &[], Some("prefix")),
        ("GET", "/reviews/1", &[], Some("ci")),
        ("GET", "/details", &[], None),
    ];
    for (m, uri, h, want) in cases {
        assert_eq!(
            route_for(&t, m, uri, h).as_deref(),
            *want,
            "{m} {uri} {h:?}"
        );
    }
}

fn delegating(sort: &str, children: &str) -> Plan {
    let parent = rt(
        "{name: parent, namespace: ns}",
        &format!(
            "  hosts: [shop.mesh]\n  http:\n  - name: to-teams\n    labels: {{team: platform}}\n    matchers: [{{uri: {{prefix: /reviews}}}}]\n    delegate: {{routeTables: [{{labels: {{delegated: \"yes\"}}}}], sortMethod: {sort}}}\n"
        ),
    );
    plan(&format!("{parent}{children}"))
}

fn child(name: &str, weight: i32, routes: &str) -> String {
    rt(
        &format!("{{name: {name}, namespace: ns, labels: {{delegated: \"yes\"}}}}"),
        &format!("  weight: {weight}\n  http:\n{routes}"),
    )
}

#[test]
fn delegated_routes_match_only_what_parent_and_child_allow() {
    let p = delegating(
        "TABLE_WEIGHT",
        &child(
            "c",
            0,
            &format!(
                "  - {{name: v1, matchers: [{{uri: {{prefix: /reviews/v1}}}}], {FWD}}}\n  - {{name: other, matchers: [{{uri: {{prefix: /other}}}}], {FWD}}}\n"
            ),
        ),
    );
    let t = table(&p, "shop.mesh");
    assert_eq!(
        route_for(&t, "GET", "/reviews/v1/1", &[]).as_deref(),
        Some("v1")
    );
    // The child route names /other, but the parent only delegates /reviews.
    assert_eq!(route_for(&t, "GET", "/other", &[]), None);
    assert_eq!(route_for(&t, "GET", "/reviews/other", &[]), None);
    // Route labels are inherited: the child route carries team=platform.
    assert_eq!(
        t.0[0].labels.get("team").map(String::as_str),
        Some("platform")
    );
}

#[test]
fn table_weight_orders_children_heavier_first_then_by_name() {
    let routes =
        |n: &str| format!("  - {{name: {n}, matchers: [{{uri: {{prefix: /reviews}}}}], {FWD}}}\n");
    let p = delegating(
        "TABLE_WEIGHT",
        &format!(
            "{}{}{}",
            child("b-light", 1, &routes("light")),
            child("a-heavy", 5, &routes("heavy")),
            child("c-heavy", 5, &routes("heavy2"))
        ),
    );
    let t = table(&p, "shop.mesh");
    let names: Vec<&str> = t.0.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["heavy", "heavy2", "light"],
        "weight desc, then namespace/name"
    );
    assert_eq!(
        route_for(&t, "GET", "/reviews/x", &[]).as_deref(),
        Some("heavy")
    );
}

#[test]
fn route_specificity_follows_gateway_api_precedence() {
    let routes = format!(
        "  - {{name: short-prefix, matchers: [{{uri: {{prefix: /reviews}}}}], {FWD}}}\n\
         \x20 - {{name: long-prefix, matchers: [{{uri: {{prefix: /reviews/v1}}}}], {FWD}}}\n\
         \x20 - {{name: exact, matchers: [{{uri: {{exact: /reviews/v1/1}}}}], {FWD}}}\n\
         \x20 - {{name: long-prefix-method, matchers: [{{uri: {{prefix: /reviews/v1}}, method: GET}}], {FWD}}}\n\
         \x20 - {{name: long-prefix-header, matchers: [{{uri: {{prefix: /reviews/v1}}, headers: [{{name: x-a, value: \"1\"}}]}}], {FWD}}}\n"
    );
    let p = delegating("ROUTE_SPECIFICITY", &child("c", 0, &routes));
    let t = table(&p, "shop.mesh");
    let names: Vec<&str> = t.0.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "exact",
            "long-prefix-method",
            "long-prefix-header",
            "long-prefix",
            "short-prefix"
        ]
    );
    assert_eq!(
        route_for(&t, "GET", "/reviews/v1/1", &[]).as_deref(),
        Some("exact")
    );
    assert_eq!(
        route_for(&t, "GET", "/reviews/v1/2", &[]).as_deref(),
        Some("long-prefix-method")
    );
    assert_eq!(
        route_for(&t, "PUT", "/reviews/v1/2", &[("x-a", "1")]).as_deref(),
        Some("long-prefix-header")
    );
    assert_eq!(
        route_for(&t, "PUT", "/reviews/v1/2", &[]).as_deref(),
        Some("long-prefix")
    );
    assert_eq!(
        route_for(&t, "PUT", "/reviews/v2", &[]).as_deref(),
        Some("short-prefix")
    );
    // Ties keep table order: two equal routes, the first table's first.
    let tie = format!(
        "  - {{name: first, matchers: [{{uri: {{prefix: /reviews/x}}}}], {FWD}}}\n  - {{name: second, matchers: [{{uri: {{prefix: /reviews/y}}}}], {FWD}}}\n"
    );
    let p = delegating("ROUTE_SPECIFICITY", &child("c", 0, &tie));
    let names: Vec<String> = table(&p, "shop.mesh")
        .0
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(names, vec!["first", "second"]);
}

#[test]
fn policies_select_routes_by_inherited_labels() {
    let policy = "apiVersion: resilience.policy.gloo.solo.io/v2\nkind: RetryTimeoutPolicy\nmetadata: {name: retry, namespace: ns}\nspec:\n  applyToRoutes: [{route: {labels: {team: platform}}}]\n  config: {retries: {attempts: 3}}\n---\n";
    let p = delegating(
        "TABLE_WEIGHT",
        &format!(
            "{}{policy}",
            child(
                "c",
                0,
                &format!("  - {{name: v1, matchers: [{{uri: {{prefix: /reviews/v1}}}}], {FWD}}}\n")
            )
        ),
    );
    let (routes, _) = table(&p, "shop.mesh");
    let retry = routes[0]
        .policies
        .retry
        .as_ref()
        .expect("retry policy applies through the parent's label");
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.from, "RetryTimeoutPolicy ns/retry");
}

#[test]
fn per_request_weights_follow_the_remainder_rule() {
    let p = plan(&rt(
        "{name: rt, namespace: ns}",
        "  hosts: [w.mesh]\n  http:\n  - name: split\n    matchers: [{uri: {prefix: /}, method: GET}]\n    forwardTo:\n      destinations:\n      - {ref: {name: svc}, subset: {version: a}, weight: 30}\n      - {ref: {name: svc}, subset: {version: b}}\n",
    ));
    let (routes, _) = table(&p, "w.mesh");
    let L7Action::Forward(f) = &routes[0].action else {
        panic!()
    };
    let w: Vec<u32> = f.dests.iter().map(|d| d.weight).collect();
    assert_eq!(w, vec![30, 70]);
    assert_eq!(f.dests[0].endpoints[0].endpoint.to_string(), "10.0.0.1:80");
}

#[test]
fn route_replacement_turns_a_broken_route_into_a_500_and_freeze_rejects() {
    let body = |mode: &str| {
        format!(
            "  hosts: [b.mesh]\n  failureMode: {mode}\n  http:\n  - name: broken\n    matchers: [{{uri: {{prefix: /x}}}}]\n    forwardTo: {{destinations: [{{ref: {{name: gone}}}}]}}\n  - name: fine\n    matchers: [{{uri: {{prefix: /}}, method: GET}}]\n    {FWD}\n"
        )
    };
    let p = plan(&rt("{name: rt, namespace: ns}", &body("ROUTE_REPLACEMENT")));
    let (routes, _) = table(&p, "b.mesh");
    assert!(
        matches!(&routes[0].action, L7Action::Broken { reason } if reason.contains("gone")),
        "{:?}",
        routes[0].action
    );
    assert!(matches!(routes[1].action, L7Action::Forward(_)));
    assert!(p.notices.iter().any(|n| n.message.contains("answers 500")));
    let text = format!(
        "{}{}",
        base(),
        rt("{name: rt, namespace: ns}", &body("FREEZE_CONFIG"))
    );
    let e = load_str("t.yaml", &text, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("refers to Service ns/gone"), "{e}");
}

// ---------------------------------------------------------------------------
// Properties of the matchers
// ---------------------------------------------------------------------------

fn one(conds: Vec<L7Cond>) -> Table {
    Table::new(&[L7Route {
        name: "r".into(),
        origin: Origin::default(),
        labels: BTreeMap::new(),
        matchers: vec![L7Match { conds }],
        action: L7Action::Direct {
            status: 200,
            body: String::new(),
        },
        policies: L7Policies::default(),
    }])
    .unwrap()
}

fn hits(t: &Table, path: &str, headers: &HeaderMap) -> bool {
    t.select(&Req {
        method: &Method::GET,
        path,
        query: None,
        headers,
        port: 80,
    })
    .is_some()
}

proptest! {
    #[test]
    fn prefix_is_a_plain_string_prefix(path in "/[a-z/]{0,12}", prefix in "/[a-z/]{0,6}") {
        let t = one(vec![L7Cond::Path { kind: PathKind::Prefix, value: prefix.clone(), ignore_case: false }]);
        prop_assert_eq!(hits(&t, &path, &HeaderMap::new()), path.starts_with(&prefix));
    }

    #[test]
    fn exact_and_ignore_case(path in "/[a-zA-Z]{0,8}") {
        let t = one(vec![L7Cond::Path { kind: PathKind::Exact, value: path.to_ascii_uppercase(), ignore_case: true }]);
        prop_assert!(hits(&t, &path.to_ascii_lowercase(), &HeaderMap::new()));
        let strict = one(vec![L7Cond::Path { kind: PathKind::Exact, value: path.clone(), ignore_case: false }]);
        prop_assert!(hits(&strict, &path, &HeaderMap::new()));
        prop_assert_eq!(hits(&strict, &format!("{path}x"), &HeaderMap::new()), false);
    }

    #[test]
    fn invert_negates_a_header_match(value in "[a-z]{1,5}", sent in proptest::option::of("[a-z]{1,5}")) {
        let mut h = HeaderMap::new();
        if let Some(s) = &sent {
            h.insert("x-k", s.parse().unwrap());
        }
        let plain = one(vec![L7Cond::Header { name: "x-k".into(), value: Some(value.clone()), regex: false, invert: false }]);
        let inverted = one(vec![L7Cond::Header { name: "x-k".into(), value: Some(value.clone()), regex: false, invert: true }]);
        prop_assert_eq!(hits(&plain, "/", &h), sent.as_deref() == Some(value.as_str()));
        prop_assert_eq!(hits(&inverted, "/", &h), !hits(&plain, "/", &h));
    }

    #[test]
    fn first_match_wins(paths in proptest::collection::vec("/[a-c]{1,3}", 1..8), probe in "/[a-c]{1,3}") {
        let routes: Vec<L7Route> = paths.iter().enumerate().map(|(i, p)| L7Route {
            name: i.to_string(),
            origin: Origin::default(),
            labels: BTreeMap::new(),
            matchers: vec![L7Match { conds: vec![L7Cond::Path { kind: PathKind::Exact, value: p.clone(), ignore_case: false }] }],
            action: L7Action::Direct { status: 200, body: String::new() },
            policies: L7Policies::default(),
        }).collect();
        let t = Table::new(&routes).unwrap();
        let got = t.select(&Req { method: &Method::GET, path: &probe, query: None, headers: &HeaderMap::new(), port: 80 }).map(|h| h.route);
        prop_assert_eq!(got, paths.iter().position(|p| *p == probe));
    }
}
