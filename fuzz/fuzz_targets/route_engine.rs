//! The HTTP route engine on arbitrary requests against the route tables of
//! the example config (configs/): never panic; the same request always
//! picks the same route; rewrites and redirects of a hit never panic.
#![no_main]
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use router_user::{
    compile, config,
    plan::L7Action,
    proxy::engine::{Req, Table, rewrite_prefix, rewrite_regex},
};

#[derive(Arbitrary, Debug)]
struct Input {
    table: u8,
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    port: u16,
}

fn tables() -> &'static Vec<(Table, Vec<router_user::plan::L7Route>)> {
    static T: OnceLock<Vec<(Table, Vec<router_user::plan::L7Route>)>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let v = config::load(&dir, &Default::default()).expect("configs/ loads");
        let plan = compile::compile(&v, &Default::default()).expect("configs/ compiles");
        let mut out: Vec<_> = plan
            .l7
            .iter()
            .map(|s| (Table::new(&s.routes).expect("table"), s.routes.clone()))
            .collect();
        for g in &plan.gateways {
            for h in &g.hosts {
                out.push((Table::new(&h.routes).expect("table"), h.routes.clone()));
            }
        }
        assert!(!out.is_empty(), "configs/ has no L7 routes to fuzz");
        out
    })
}

fuzz_target!(|input: Input| {
    let tables = tables();
    let (table, routes) = &tables[input.table as usize % tables.len()];
    let method = http::Method::from_bytes(input.method.as_bytes()).unwrap_or(http::Method::GET);
    let mut headers = http::HeaderMap::new();
    for (k, v) in &input.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let req = Req {
        method: &method,
        path: &input.path,
        query: input.query.as_deref(),
        headers: &headers,
        port: input.port,
    };
    let hit = table.select(&req);
    let again = table.select(&req);
    assert_eq!(hit.as_ref().map(|h| h.route), again.as_ref().map(|h| h.route));
    if let Some(h) = hit {
        assert!(h.route < routes.len());
        match &routes[h.route].action {
            L7Action::Forward(f) => {
                if let Some(to) = &f.path_rewrite {
                    let _ = rewrite_prefix(&input.path, &h, to);
                }
                if let Some((re, sub)) = &f.regex_rewrite {
                    let _ = rewrite_regex(&input.path, re, sub);
                }
            }
            L7Action::Redirect(r) => {
                if let Some(to) = &r.prefix_rewrite {
                    let _ = rewrite_prefix(&input.path, &h, to);
                }
            }
            _ => {}
        }
    }
});
