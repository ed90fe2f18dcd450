//! Route tables, flattened: delegation expanded in place (children ordered by
//! `TABLE_WEIGHT` or `ROUTE_SPECIFICITY`), parent and child matchers combined
//! (a child route matches only what both allow), parent route labels
//! inherited; bounded ([`MAX_FLAT_ROUTES`], [`MAX_ROUTE_MATCHERS`]).
//! Config-layer code: validation reports what flattening finds, and the
//! compiler works on its result.
use std::collections::BTreeMap;

use super::{Resource, Resources, model::*};
use crate::plan::Origin;

/// One matcher of a flattened route: the conjunction of a parent's matcher
/// and a child's (or just one).
#[derive(Clone, Debug, Default)]
pub struct MatchAll<'a> {
    pub http: Vec<&'a HttpMatcher>,
    pub tcp_ports: Vec<u16>,
}

impl MatchAll<'_> {
    /// Ports this conjunction insists on (all must agree to match anything).
    fn ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .http
            .iter()
            .filter_map(|m| m.port)
            .chain(self.tcp_ports.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }
    pub fn allows_port(&self, p: u16) -> bool {
        self.ports().iter().all(|x| *x == p)
    }
    /// Ports it names, if any (a conjunction naming two ports matches nothing).
    pub fn named_port(&self) -> Option<Option<u16>> {
        match self.ports().as_slice() {
            [] => Some(None),
            [p] => Some(Some(*p)),
            _ => None,
        }
    }
    /// True if some condition needs the HTTP request (path, headers, query, method).
    pub fn needs_l7(&self) -> bool {
        self.http.iter().any(|m| matcher_needs_l7(m))
    }
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.http.iter().map(|m| describe_matcher(m)).collect();
        parts.extend(self.tcp_ports.iter().map(|p| format!("port {p}")));
        if parts.is_empty() {
            "everything".into()
        } else {
            parts.join(" and ")
        }
    }
}

pub fn matcher_needs_l7(m: &HttpMatcher) -> bool {
    let uri_l7 = match &m.uri {
        None => false,
        // `prefix: /` matches every request path: no HTTP decision needed.
        Some(u) => {
            !(u.exact.is_none()
                && u.regex.is_none()
                && u.prefix.as_deref().is_none_or(|p| p == "/"))
        }
    };
    uri_l7 || !m.headers.is_empty() || !m.query_parameters.is_empty() || m.method.is_some()
}

pub fn describe_matcher(m: &HttpMatcher) -> String {
    let mut parts = Vec::new();
    if let Some(u) = &m.uri {
        if let Some(x) = &u.exact {
            parts.push(format!("path = {x}"));
        }
        if let Some(x) = &u.prefix {
            parts.push(format!("path prefix {x}"));
        }
        if let Some(x) = &u.regex {
            parts.push(format!("path ~ {x}"));
        }
    }
    for h in &m.headers {
        parts.push(format!("header {}", h.name));
    }
    for q in &m.query_parameters {
        parts.push(format!("query {}", q.name));
    }
    if let Some(x) = &m.method {
        parts.push(format!("method {x}"));
    }
    if let Some(p) = m.port {
        parts.push(format!("port {p}"));
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(", ")
    }
}

#[derive(Clone, Copy, Debug)]
pub enum RouteKind<'a> {
    Http(&'a HttpRoute),
    Tcp(&'a TcpRoute),
}

/// A route after delegation was expanded.
#[derive(Clone, Debug)]
pub struct FlatRoute<'a> {
    /// The table the route is written in (a child, for delegated routes).
    pub table: &'a Resource<RouteTableSpec>,
    pub origin: Origin,
    pub name: String,
    pub labels: Labels,
    pub kind: RouteKind<'a>,
    /// Any of these matches (empty: the route matches everything).
    pub matchers: Vec<MatchAll<'a>>,
}

impl<'a> FlatRoute<'a> {
    pub fn forward_to(&self) -> Option<&'a ForwardTo> {
        match self.kind {
            RouteKind::Http(r) => r.forward_to.as_ref(),
            RouteKind::Tcp(r) => r.forward_to.as_ref(),
        }
    }
    /// Why the kernel cannot serve this route's action, if it cannot.
    pub fn action_needs_l7(&self) -> Option<&'static str> {
        match self.kind {
            RouteKind::Tcp(_) => None,
            RouteKind::Http(r) => {
                if r.redirect.is_some() {
                    Some("a redirect")
                } else if r.direct_response.is_some() {
                    Some("a direct response")
                } else if let Some(f) = &r.forward_to {
                    if f.path_rewrite.is_some() || f.regex_rewrite.is_some() {
                        Some("a path rewrite")
                    } else if f.host_rewrite.is_some() || f.auto_host_rewrite == Some(true) {
                        Some("a host rewrite")
                    } else {
                        None
                    }
                } else {
                    None
                }
            }
        }
    }
    /// Matchers relevant on port `p` (None: the route never sees port `p`).
    pub fn on_port(&self, p: u16) -> Option<Vec<&MatchAll<'a>>> {
        if self.matchers.is_empty() {
            return Some(Vec::new());
        }
        let v: Vec<&MatchAll<'a>> = self.matchers.iter().filter(|m| m.allows_port(p)).collect();
        (!v.is_empty()).then_some(v)
    }
    pub fn is_http(&self) -> bool {
        matches!(self.kind, RouteKind::Http(_))
    }
}

/// How delegation went wrong, for validation to report.
#[derive(Clone, Debug)]
pub struct FlattenError {
    pub origin: Origin,
    pub line: u64,
    pub message: String,
}

/// Gloo's RouteTableSelector: without a namespace it selects in every
/// namespace (Gloo: the workspace; routerd's config is one workspace).
fn table_selected(sel: &RouteTableSelector, t: &Resource<RouteTableSpec>) -> bool {
    sel.namespace
        .as_deref()
        .is_none_or(|ns| ns == t.namespace())
        && sel.name.as_ref().is_none_or(|n| n == t.name())
        && sel
            .labels
            .iter()
            .all(|(k, v)| t.meta.labels.get(k) == Some(v))
}

/// `ROUTE_SPECIFICITY` order, in the Gateway API's precedence: an exact
/// path, then a regex, then the longest prefix; then a method; then the most
/// header matches; then the most query matches. Each route counts by its most
/// specific matcher (the child's own conditions; parents are shared). Ties
/// keep table-weight order (the sort is stable).
pub fn specificity(r: &FlatRoute<'_>) -> (u8, usize, bool, usize, usize) {
    r.matchers
        .iter()
        .map(|m| {
            let last = m.http.last();
            let path = last.and_then(|h| h.uri.as_ref()).map(|u| {
                if let Some(x) = &u.exact {
                    (3, x.len())
                } else if let Some(x) = &u.regex {
                    (2, x.len())
                } else if let Some(x) = &u.prefix {
                    (1, x.len())
                } else {
                    (0, 0)
                }
            });
            let (kind, len) = path.unwrap_or((0, 0));
            (
                kind,
                len,
                last.is_some_and(|h| h.method.is_some()),
                last.map_or(0, |h| h.headers.len()),
                last.map_or(0, |h| h.query_parameters.len()),
            )
        })
        .max()
        .unwrap_or((0, 0, false, 0, 0))
}

/// At most this many routes in one flattened table: delegation can repeat
/// (two routes delegating to the same table, chained) and grows
/// exponentially with depth.
pub const MAX_FLAT_ROUTES: usize = 10_000;
/// At most this many matchers in one flattened route: a child route matches
/// the cross-product of its parents' matchers and its own.
pub const MAX_ROUTE_MATCHERS: usize = 1_000;

fn combine<'a>(parent: &[MatchAll<'a>], child: &[MatchAll<'a>]) -> Vec<MatchAll<'a>> {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_vec(),
        (_, true) => parent.to_vec(),
        _ => {
            let mut out = Vec::new();
            for p in parent {
                for c in child {
                    let mut m = p.clone();
                    m.http.extend(c.http.iter().copied());
                    m.tcp_ports.extend(c.tcp_ports.iter().copied());
                    out.push(m);
                }
            }
            out
        }
    }
}

fn own_routes<'a>(t: &'a Resource<RouteTableSpec>) -> Vec<(FlatRoute<'a>, Option<&'a Delegate>)> {
    let route = |line: u64, name: String, labels: &Labels, kind, matchers| {
        let mut origin = t.origin.clone();
        origin.line = line;
        FlatRoute {
            table: t,
            origin,
            name,
            labels: labels.clone(),
            kind,
            matchers,
        }
    };
    let mut out = Vec::new();
    for (i, r) in t.spec.http.iter().enumerate() {
        let (line, r) = (t.line_of(r), &r.value);
        let name = r.name.clone().unwrap_or_else(|| format!("http[{i}]"));
        let matchers = r
            .matchers
            .iter()
            .map(|m| MatchAll {
                http: vec![m],
                tcp_ports: vec![],
            })
            .collect();
        out.push((
            route(line, name, &r.labels, RouteKind::Http(r), matchers),
            r.delegate.as_ref(),
        ));
    }
    for (i, r) in t.spec.tcp.iter().enumerate() {
        let (line, r) = (t.line_of(r), &r.value);
        let name = r.name.clone().unwrap_or_else(|| format!("tcp[{i}]"));
        let matchers = r
            .matchers
            .iter()
            .map(|m| MatchAll {
                http: vec![],
                tcp_ports: m.port.into_iter().collect(),
            })
            .collect();
        out.push((
            route(line, name, &r.labels, RouteKind::Tcp(r), matchers),
            None,
        ));
    }
    out
}

/// Expand `root`'s routes. Errors (cycles, selectors that match no table,
/// expansions past [`MAX_FLAT_ROUTES`] or [`MAX_ROUTE_MATCHERS`]) are returned
/// alongside whatever could be flattened.
pub fn flatten<'a>(
    cfg: &'a Resources,
    root: &'a Resource<RouteTableSpec>,
) -> (Vec<FlatRoute<'a>>, Vec<FlattenError>) {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut stack = vec![(root.namespace().to_string(), root.name().to_string())];
    let mut budget = Budget {
        root,
        routes: 0,
        exceeded: false,
    };
    expand(
        cfg,
        root,
        &[],
        &Labels::new(),
        &mut stack,
        &mut out,
        &mut errors,
        &mut budget,
    );
    (out, errors)
}

/// How much one root table's expansion may still grow.
struct Budget<'a> {
    root: &'a Resource<RouteTableSpec>,
    routes: usize,
    /// Already reported: stop expanding.
    exceeded: bool,
}

impl Budget<'_> {
    fn exceed(&mut self, errors: &mut Vec<FlattenError>, at: &FlatRoute<'_>, what: String) {
        if !self.exceeded {
            errors.push(FlattenError {
                origin: self.root.origin.clone(),
                line: self.root.origin.line,
                message: format!(
                    "delegation from this table expands to {what} (at route `{}` of {} {}/{}): \
                     repeated or chained delegation multiplies routes and matchers; delegate each \
                     table once, or use fewer matchers per level",
                    at.name, at.origin.kind, at.origin.namespace, at.origin.name
                ),
            });
        }
        self.exceeded = true;
    }
}

#[allow(clippy::too_many_arguments)]
fn expand<'a>(
    cfg: &'a Resources,
    table: &'a Resource<RouteTableSpec>,
    parent_match: &[MatchAll<'a>],
    parent_labels: &Labels,
    stack: &mut Vec<(String, String)>,
    out: &mut Vec<FlatRoute<'a>>,
    errors: &mut Vec<FlattenError>,
    budget: &mut Budget<'a>,
) {
    for (mut route, delegate) in own_routes(table) {
        if budget.exceeded {
            return;
        }
        let n = parent_match.len().max(1) * route.matchers.len().max(1);
        if n > MAX_ROUTE_MATCHERS {
            budget.exceed(
                errors,
                &route,
                format!("{n} matchers in one route, more than {MAX_ROUTE_MATCHERS}"),
            );
            return;
        }
        route.matchers = combine(parent_match, &route.matchers);
        let mut labels = parent_labels.clone();
        labels.extend(route.labels.clone());
        route.labels = labels;
        let Some(d) = delegate else {
            budget.routes += 1;
            if budget.routes > MAX_FLAT_ROUTES {
                budget.exceed(
                    errors,
                    &route,
                    format!("more than {MAX_FLAT_ROUTES} routes"),
                );
                return;
            }
            out.push(route);
            continue;
        };
        // Children, each selected table once, in delegation order.
        let mut children: Vec<&'a Resource<RouteTableSpec>> = Vec::new();
        for sel in &d.route_tables {
            let matched: Vec<_> = cfg
                .route_tables
                .iter()
                .filter(|t| table_selected(sel, t))
                .collect();
            if matched.is_empty() {
                errors.push(FlattenError {
                    origin: table.origin.clone(),
                    line: route.origin.line,
                    message: format!(
                        "route `{}` delegates to route tables matching {}, but none exists; \
                         check the name/namespace/labels",
                        route.name,
                        describe_rt_selector(sel)
                    ),
                });
            }
            for t in matched {
                if !children.iter().any(|c| std::ptr::eq(*c, t)) {
                    children.push(t);
                }
            }
        }
        // TABLE_WEIGHT: heavier tables first, then by namespace/name for determinism.
        children.sort_by(|a, b| {
            b.spec
                .weight
                .unwrap_or(0)
                .cmp(&a.spec.weight.unwrap_or(0))
                .then_with(|| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())))
        });
        let mut child_routes = Vec::new();
        for child in children {
            let key = (child.namespace().to_string(), child.name().to_string());
            if stack.contains(&key) {
                let chain: Vec<String> = stack
                    .iter()
                    .chain(std::iter::once(&key))
                    .map(|(n, m)| format!("{n}/{m}"))
                    .collect();
                errors.push(FlattenError {
                    origin: table.origin.clone(),
                    line: route.origin.line,
                    message: format!(
                        "delegation cycle: {}; a table may not delegate to itself or an ancestor",
                        chain.join(" -> ")
                    ),
                });
                continue;
            }
            stack.push(key);
            expand(
                cfg,
                child,
                &route.matchers,
                &route.labels,
                stack,
                &mut child_routes,
                errors,
                budget,
            );
            stack.pop();
        }
        if d.sort_method == Some(SortMethod::RouteSpecificity) {
            child_routes.sort_by_key(|r| std::cmp::Reverse(specificity(r)));
        }
        out.extend(child_routes);
    }
}

/// Does a route policy's `applyToRoutes[]` entry pick a route with these
/// labels, written in table `namespace/name`? (No `route`: every route.)
pub fn route_selected(sel: &RouteSelector, labels: &Labels, namespace: &str, name: &str) -> bool {
    let Some(rr) = &sel.route else { return true };
    rr.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && rr.name.as_ref().is_none_or(|n| n == name)
        && rr.namespace.as_ref().is_none_or(|n| n == namespace)
}

pub fn describe_rt_selector(sel: &RouteTableSelector) -> String {
    let mut parts = Vec::new();
    if let Some(n) = &sel.name {
        parts.push(format!("name `{n}`"));
    }
    parts.push(match &sel.namespace {
        Some(ns) => format!("namespace `{ns}`"),
        None => "any namespace".to_string(),
    });
    if !sel.labels.is_empty() {
        let l: Vec<String> = sel.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("labels {}", l.join(",")));
    }
    parts.join(", ")
}

/// Route tables some other table delegates to (children are not roots).
pub fn delegated_tables(cfg: &Resources) -> BTreeMap<(String, String), ()> {
    let mut out = BTreeMap::new();
    for t in &cfg.route_tables {
        for r in &t.spec.http {
            if let Some(d) = &r.value.delegate {
                for sel in &d.route_tables {
                    for c in cfg.route_tables.iter().filter(|c| table_selected(sel, c)) {
                        out.insert((c.namespace().to_string(), c.name().to_string()), ());
                    }
                }
            }
        }
    }
    out
}
