//! The route engine: a request in, a decision out. Pure: no sockets, no
//! hyper server; every matcher is tested beside it.
//!
//! Gloo's semantics (inherited from Envoy): routes in first-match order; a
//! route matches when any of its matchers does (no matchers: every request);
//! a matcher holds when all its conditions do (for delegated routes the
//! parent's conditions are included). Paths: `exact`, `prefix` (plain string
//! prefix) or `regex` (full match, RE2 syntax), optionally case-insensitive.
//! Headers: exact value, regex (full match), presence, and `invertMatch`.
//! Query parameters: presence, exact value or regex. Method. Port.
use http::{HeaderMap, Method};
use regex::Regex;

use crate::plan::{L7Cond, L7Redirect, L7Route, PathKind};

/// What the engine needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct Req<'a> {
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The port the client dialled (VIP port, or the gateway listener's).
    pub port: u16,
}

#[derive(Debug)]
enum Cond {
    Path {
        kind: PathKind,
        value: String,
        ignore_case: bool,
        re: Option<Regex>,
    },
    Header {
        name: String,
        value: Option<String>,
        re: Option<Regex>,
        invert: bool,
    },
    Query {
        name: String,
        value: Option<String>,
        re: Option<Regex>,
    },
    Method(String),
    Port(u16),
}

/// `re` matching the whole of a value.
pub(super) fn full(re: &str, ignore_case: bool) -> Result<Regex, String> {
    let flags = if ignore_case { "(?i)" } else { "" };
    Regex::new(&format!("{flags}^(?:{re})$")).map_err(|e| format!("regex `{re}`: {e}"))
}

impl Cond {
    fn compile(c: &L7Cond) -> Result<Cond, String> {
        Ok(match c {
            L7Cond::Path {
                kind,
                value,
                ignore_case,
            } => Cond::Path {
                kind: *kind,
                value: if *ignore_case {
                    value.to_ascii_lowercase()
                } else {
                    value.clone()
                },
                ignore_case: *ignore_case,
                re: (*kind == PathKind::Regex)
                    .then(|| full(value, *ignore_case))
                    .transpose()?,
            },
            L7Cond::Header {
                name,
                value,
                regex,
                invert,
            } => Cond::Header {
                name: name.to_ascii_lowercase(),
                value: value.clone(),
                re: match (regex, value) {
                    (true, Some(v)) => Some(full(v, false)?),
                    _ => None,
                },
                invert: *invert,
            },
            L7Cond::Query { name, value, regex } => Cond::Query {
                name: name.clone(),
                value: value.clone(),
                re: match (regex, value) {
                    (true, Some(v)) => Some(full(v, false)?),
                    _ => None,
                },
            },
            L7Cond::Method(m) => Cond::Method(m.clone()),
            L7Cond::Port(p) => Cond::Port(*p),
        })
    }

    fn holds(&self, req: &Req<'_>) -> bool {
        match self {
            Cond::Path {
                kind,
                value,
                ignore_case,
                re,
            } => {
                let lowered;
                let path = if *ignore_case {
                    lowered = req.path.to_ascii_lowercase();
                    &lowered
                } else {
                    req.path
                };
                match kind {
                    PathKind::Exact => path == value,
                    PathKind::Prefix => path.starts_with(value.as_str()),
                    PathKind::Regex => re.as_ref().is_some_and(|r| r.is_match(req.path)),
                }
            }
            Cond::Header {
                name,
                value,
                re,
                invert,
            } => {
                let mut values = req
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                let hit = match (value, re) {
                    (_, Some(re)) => values.any(|v| re.is_match(v)),
                    (Some(want), None) => values.any(|v| v == want),
                    (None, None) => values.next().is_some(),
                };
                hit != *invert
            }
            Cond::Query { name, value, re } => {
                let q = req.query.unwrap_or("");
                form_urlencoded::parse(q.as_bytes()).any(|(k, v)| {
                    k == name.as_str()
                        && match (value, re) {
                            (_, Some(re)) => re.is_match(&v),
                            (Some(want), None) => v == want.as_str(),
                            (None, None) => true,
                        }
                })
            }
            Cond::Method(m) => req.method.as_str() == m,
            Cond::Port(p) => req.port == *p,
        }
    }
}

/// A matcher that held: which one, and the path prefix it matched (for
/// prefix rewrites), if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub route: usize,
    /// The matched path condition: `(kind, value as written)`.
    pub path: Option<(PathKind, String)>,
}

/// A route table ready to match requests.
#[derive(Debug)]
pub struct Table {
    routes: Vec<Vec<Vec<Cond>>>,
    originals: Vec<Vec<Vec<L7Cond>>>,
}

impl Table {
    /// Compile (regexes) once per plan; fails only on a regex that did not
    /// compile, which validation already rejects.
    pub fn new(routes: &[L7Route]) -> Result<Table, String> {
        let mut compiled = Vec::with_capacity(routes.len());
        for r in routes {
            let ms: Result<Vec<Vec<Cond>>, String> = r
                .matchers
                .iter()
                .map(|m| m.conds.iter().map(Cond::compile).collect())
                .collect();
            compiled.push(ms?);
        }
        Ok(Table {
            routes: compiled,
            originals: routes
                .iter()
                .map(|r| r.matchers.iter().map(|m| m.conds.clone()).collect())
                .collect(),
        })
    }

    /// [`Self::select`] for a request written as plain strings (`uri` with
    /// its query), for tests and tools. Panics on an invalid method or
    /// header, which a real request cannot have.
    pub fn select_plain(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        port: u16,
    ) -> Option<Hit> {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
                http::HeaderValue::from_str(v).expect("a header value"),
            );
        }
        let method: Method = method.parse().expect("a method");
        self.select(&Req {
            method: &method,
            path,
            query,
            headers: &h,
            port,
        })
    }

    /// First route that matches; `None`: 404.
    pub fn select(&self, req: &Req<'_>) -> Option<Hit> {
        for (i, matchers) in self.routes.iter().enumerate() {
            if matchers.is_empty() {
                return Some(Hit {
                    route: i,
                    path: None,
                });
            }
            for (j, conds) in matchers.iter().enumerate() {
                if conds.iter().all(|c| c.holds(req)) {
                    let path = self.originals[i][j].iter().rev().find_map(|c| match c {
                        L7Cond::Path { kind, value, .. } => Some((*kind, value.clone())),
                        _ => None,
                    });
                    return Some(Hit { route: i, path });
                }
            }
        }
        None
    }
}

/// `pathRewrite`: replaces the matched prefix (the whole path for exact and
/// regex matches, or when no path condition matched).
pub fn rewrite_prefix(path: &str, hit: &Hit, to: &str) -> String {
    match &hit.path {
        Some((PathKind::Prefix, prefix)) if path.len() >= prefix.len() => {
            let rest = &path[prefix.len()..];
            if to.ends_with('/') && rest.starts_with('/') {
                format!("{to}{}", &rest[1..])
            } else {
                format!("{to}{rest}")
            }
        }
        _ => to.to_string(),
    }
}

/// A `regexRewrite`, compiled once per plan: every match of the pattern in
/// the path replaced by the substitution (Envoy's `\1` capture references
/// become Rust's `${1}`).
#[derive(Debug)]
pub struct RegexRewrite {
    re: Regex,
    sub: String,
}

impl RegexRewrite {
    pub fn new(pattern: &str, substitution: &str) -> Result<RegexRewrite, String> {
        let re = Regex::new(pattern).map_err(|e| format!("regexRewrite `{pattern}`: {e}"))?;
        let mut sub = String::new();
        let mut chars = substitution.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                sub.push_str(&format!("${{{}}}", chars.next().unwrap()));
            } else if c == '$' {
                sub.push_str("$$");
            } else {
                sub.push(c);
            }
        }
        Ok(RegexRewrite { re, sub })
    }

    pub fn apply(&self, path: &str) -> String {
        self.re.replace_all(path, self.sub.as_str()).into_owned()
    }
}

/// [`RegexRewrite`] in one call; a pattern that does not compile leaves the
/// path as it is.
pub fn rewrite_regex(path: &str, pattern: &str, substitution: &str) -> String {
    RegexRewrite::new(pattern, substitution)
        .map(|r| r.apply(path))
        .unwrap_or_else(|_| path.to_string())
}

/// `host[:port]` or `[v6][:port]` -> (host, port).
pub fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[')
        && let Some(end) = host.find(']')
    {
        return (&host[..=end], host[end + 1..].strip_prefix(':'));
    }
    match host.rsplit_once(':') {
        Some((h, p))
            if !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (h, Some(p))
        }
        _ => (host, None),
    }
}

/// The `Location` of a redirect.
pub fn redirect_location(
    r: &L7Redirect,
    scheme: &str,
    host: &str,
    path_and_query: &str,
    hit: &Hit,
) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let scheme = if r.https { "https" } else { scheme };
    let (bare_host, port) = split_host_port(host);
    let host_part = r.host.clone().unwrap_or_else(|| bare_host.to_string());
    let port_part = match (r.port, port) {
        (Some(p), _) => format!(":{p}"),
        // A new scheme or host drops the old port; otherwise it is kept.
        _ if r.https || r.host.is_some() => String::new(),
        (None, Some(p)) => format!(":{p}"),
        (None, None) => String::new(),
    };
    let new_path = if let Some(p) = &r.path {
        p.clone()
    } else if let Some(to) = &r.prefix_rewrite {
        rewrite_prefix(path, hit, to)
    } else {
        path.to_string()
    };
    let q = if r.path.is_some() { None } else { query };
    match q {
        Some(q) => format!("{scheme}://{host_part}{port_part}{new_path}?{q}"),
        None => format!("{scheme}://{host_part}{port_part}{new_path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{L7Action, L7Match, L7Policies, Origin};

    fn route(name: &str, matchers: Vec<Vec<L7Cond>>) -> L7Route {
        L7Route {
            name: name.into(),
            origin: Origin::default(),
            labels: Default::default(),
            matchers: matchers
                .into_iter()
                .map(|conds| L7Match { conds })
                .collect(),
            action: L7Action::Direct {
                status: 200,
                body: name.into(),
            },
            policies: L7Policies::default(),
        }
    }

    fn path(kind: PathKind, v: &str) -> L7Cond {
        L7Cond::Path {
            kind,
            value: v.into(),
            ignore_case: false,
        }
    }

    fn header(name: &str, value: Option<&str>, regex: bool, invert: bool) -> L7Cond {
        L7Cond::Header {
            name: name.into(),
            value: value.map(Into::into),
            regex,
            invert,
        }
    }

    fn pick(
        t: &Table,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        port: u16,
    ) -> Option<usize> {
        t.select_plain(method, uri, headers, port).map(|h| h.route)
    }

    #[test]
    fn first_match_wins_in_order() {
        let t = Table::new(&[
            route("exact", vec![vec![path(PathKind::Exact, "/api/v1")]]),
            route("prefix", vec![vec![path(PathKind::Prefix, "/api")]]),
            route("all", vec![]),
        ])
        .unwrap();
        assert_eq!(pick(&t, "GET", "/api/v1", &[], 80), Some(0));
        assert_eq!(pick(&t, "GET", "/api/v1/x", &[], 80), Some(1));
        assert_eq!(
            pick(&t, "GET", "/apiary", &[], 80),
            Some(1),
            "Envoy prefixes are plain string prefixes"
        );
        assert_eq!(pick(&t, "GET", "/", &[], 80), Some(2));
    }

    #[test]
    fn no_match_is_none() {
        let t = Table::new(&[route("a", vec![vec![path(PathKind::Prefix, "/a")]])]).unwrap();
        assert_eq!(pick(&t, "GET", "/b", &[], 80), None);
    }

    #[test]
    fn paths_exact_prefix_regex_and_case() {
        let t = Table::new(&[
            route("regex", vec![vec![path(PathKind::Regex, "/users/[0-9]+")]]),
            route(
                "ci",
                vec![vec![L7Cond::Path {
                    kind: PathKind::Prefix,
                    value: "/Docs".into(),
                    ignore_case: true,
                }]],
            ),
        ])
        .unwrap();
        assert_eq!(pick(&t, "GET", "/users/42", &[], 80), Some(0));
        assert_eq!(
            pick(&t, "GET", "/users/42/x", &[], 80),
            None,
            "regex is a full match"
        );
        assert_eq!(pick(&t, "GET", "/DOCS/intro", &[], 80), Some(1));
        assert_eq!(
            pick(&t, "GET", "/docs?x=1", &[], 80),
            Some(1),
            "the query is not part of the path"
        );
    }

    #[test]
    fn headers_value_regex_presence_and_invert() {
        let t = Table::new(&[
            route(
                "value",
                vec![vec![header("x-user", Some("jason"), false, false)]],
            ),
            route(
                "regex",
                vec![vec![header("x-version", Some("v[12]"), true, false)]],
            ),
            route(
                "present-not-debug",
                vec![vec![
                    header("x-canary", None, false, false),
                    header("x-debug", None, false, true),
                ]],
            ),
        ])
        .unwrap();
        assert_eq!(
            pick(&t, "GET", "/", &[("X-User", "jason")], 80),
            Some(0),
            "header names are case-insensitive"
        );
        assert_eq!(
            pick(&t, "GET", "/", &[("x-user", "Jason")], 80),
            None,
            "values are not"
        );
        assert_eq!(pick(&t, "GET", "/", &[("x-version", "v2")], 80), Some(1));
        assert_eq!(pick(&t, "GET", "/", &[("x-version", "v22")], 80), None);
        assert_eq!(pick(&t, "GET", "/", &[("x-canary", "")], 80), Some(2));
        assert_eq!(
            pick(&t, "GET", "/", &[("x-canary", "1"), ("x-debug", "1")], 80),
            None
        );
    }

    #[test]
    fn query_parameters_method_and_port() {
        let t = Table::new(&[
            route(
                "q",
                vec![vec![L7Cond::Query {
                    name: "env".into(),
                    value: Some("prod".into()),
                    regex: false,
                }]],
            ),
            route(
                "qre",
                vec![vec![L7Cond::Query {
                    name: "id".into(),
                    value: Some("[0-9]+".into()),
                    regex: true,
                }]],
            ),
            route(
                "post-8080",
                vec![vec![L7Cond::Method("POST".into()), L7Cond::Port(8080)]],
            ),
        ])
        .unwrap();
        assert_eq!(pick(&t, "GET", "/?a=1&env=prod", &[], 80), Some(0));
        assert_eq!(pick(&t, "GET", "/?env=production", &[], 80), None);
        assert_eq!(pick(&t, "GET", "/?id=123", &[], 80), Some(1));
        assert_eq!(pick(&t, "POST", "/", &[], 8080), Some(2));
        assert_eq!(pick(&t, "POST", "/", &[], 80), None);
        assert_eq!(pick(&t, "GET", "/", &[], 8080), None);
    }

    #[test]
    fn any_matcher_may_match_all_conditions_must() {
        let t = Table::new(&[route(
            "r",
            vec![
                vec![path(PathKind::Prefix, "/a"), L7Cond::Method("GET".into())],
                vec![path(PathKind::Prefix, "/b")],
            ],
        )])
        .unwrap();
        assert_eq!(pick(&t, "GET", "/a", &[], 80), Some(0));
        assert_eq!(pick(&t, "POST", "/a", &[], 80), None);
        assert_eq!(pick(&t, "POST", "/b", &[], 80), Some(0));
    }

    #[test]
    fn delegated_routes_need_parent_and_child_conditions() {
        // Parent `/reviews` prefix, child `/reviews/v2` prefix plus a header:
        // the flattened matcher carries all three conditions.
        let t = Table::new(&[route(
            "child",
            vec![vec![
                path(PathKind::Prefix, "/reviews"),
                path(PathKind::Prefix, "/reviews/v2"),
                header("x-beta", None, false, false),
            ]],
        )])
        .unwrap();
        assert_eq!(
            pick(&t, "GET", "/reviews/v2/1", &[("x-beta", "1")], 80),
            Some(0)
        );
        assert_eq!(pick(&t, "GET", "/reviews/v1", &[("x-beta", "1")], 80), None);
        assert_eq!(pick(&t, "GET", "/reviews/v2", &[], 80), None);
    }

    #[test]
    fn rewrites() {
        let hit = Hit {
            route: 0,
            path: Some((PathKind::Prefix, "/api".into())),
        };
        assert_eq!(rewrite_prefix("/api/users", &hit, "/v2"), "/v2/users");
        assert_eq!(rewrite_prefix("/api/users", &hit, "/"), "/users");
        let exact = Hit {
            route: 0,
            path: Some((PathKind::Exact, "/old".into())),
        };
        assert_eq!(rewrite_prefix("/old", &exact, "/new"), "/new");
        assert_eq!(
            rewrite_regex(
                "/service/foo/v1/api",
                "^/service/([^/]+)(/.*)$",
                "\\2/instance/\\1"
            ),
            "/v1/api/instance/foo"
        );
    }

    #[test]
    fn redirects() {
        let hit = Hit {
            route: 0,
            path: Some((PathKind::Prefix, "/old".into())),
        };
        let r = |f: fn(&mut L7Redirect)| {
            let mut r = L7Redirect {
                host: None,
                path: None,
                prefix_rewrite: None,
                code: 301,
                https: false,
                port: None,
            };
            f(&mut r);
            r
        };
        assert_eq!(
            redirect_location(
                &r(|r| r.https = true),
                "http",
                "a.mesh:8080",
                "/x?y=1",
                &hit
            ),
            "https://a.mesh/x?y=1"
        );
        assert_eq!(
            redirect_location(
                &r(|r| r.host = Some("b.mesh".into())),
                "http",
                "a.mesh",
                "/x",
                &hit
            ),
            "http://b.mesh/x"
        );
        assert_eq!(
            redirect_location(
                &r(|r| r.prefix_rewrite = Some("/new".into())),
                "http",
                "a.mesh:80",
                "/old/x",
                &hit
            ),
            "http://a.mesh:80/new/x"
        );
        assert_eq!(
            redirect_location(
                &r(|r| r.path = Some("/moved".into())),
                "http",
                "a.mesh",
                "/old?q=1",
                &hit
            ),
            "http://a.mesh/moved"
        );
    }
}
