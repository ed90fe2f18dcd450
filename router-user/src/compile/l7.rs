//! Route tables for the L7 proxy: flattened routes -> [`L7Route`]s with
//! resolved destinations (endpoint shares from the same locality tiers as the
//! kernel path) and the winning policy of each type; proxy listener ports;
//! VirtualGateway listeners with the tables bound to them.
use std::net::SocketAddr;

use super::{Compiler, to_slots};
use crate::{
    config::{
        Resource,
        model::*,
        resolve::{self, Dest},
        routes::{FlatRoute, RouteKind},
    },
    plan::*,
};

fn ms(d: &Option<GlooDuration>) -> Option<u64> {
    d.map(GlooDuration::millis)
}

fn string_match(m: &StringMatch) -> Option<(PathKind, String)> {
    if let Some(v) = &m.exact {
        Some((PathKind::Exact, v.clone()))
    } else if let Some(v) = &m.prefix {
        Some((PathKind::Prefix, v.clone()))
    } else {
        m.regex.as_ref().map(|v| (PathKind::Regex, v.clone()))
    }
}

fn conds(m: &HttpMatcher) -> Vec<L7Cond> {
    let mut out = Vec::new();
    if let Some(u) = &m.uri
        && let Some((kind, value)) = string_match(u)
    {
        out.push(L7Cond::Path {
            kind,
            value,
            ignore_case: u.ignore_case,
        });
    }
    for h in &m.headers {
        out.push(L7Cond::Header {
            name: h.name.to_ascii_lowercase(),
            value: h.value.clone(),
            regex: h.regex,
            invert: h.invert_match,
        });
    }
    for q in &m.query_parameters {
        out.push(L7Cond::Query {
            name: q.name.clone(),
            value: q.value.clone(),
            regex: q.regex,
        });
    }
    if let Some(meth) = &m.method {
        out.push(L7Cond::Method(meth.0.clone()));
    }
    if let Some(p) = m.port {
        out.push(L7Cond::Port(p));
    }
    out
}

/// Does a route selector pick this route?
fn selects(sel: &RouteSelector, r: &FlatRoute<'_>) -> bool {
    crate::config::routes::route_selected(sel, &r.labels, r.table.namespace(), r.table.name())
}

fn winner<'c, C>(
    list: &'c [Resource<RoutePolicySpec<C>>],
    r: &FlatRoute<'_>,
) -> Option<&'c Resource<RoutePolicySpec<C>>> {
    // An empty applyToRoutes applies to every route (as in Gloo).
    list.iter().find(|p| {
        p.spec.apply_to_routes.is_empty()
            || p.spec.apply_to_routes.iter().any(|s| selects(&s.value, r))
    })
}

impl<'a> Compiler<'a> {
    /// One `forwardTo` destination for the proxy: endpoints of the IPv4
    /// family if it has any, else IPv6.
    pub(super) fn l7_dest(&self, d: &Dest<'a>, weight: u32) -> L7Dest {
        let (_, mut shares) = self.destination(d, weight, false);
        if shares.is_empty() {
            shares = self.destination(d, weight, true).1;
        }
        let (http2, authority) = match d {
            Dest::Service { svc, port, .. } => (
                port.name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("http2") || n.starts_with("grpc")),
                format!("{}.{}.svc.cluster.local", svc.id.name, svc.id.namespace),
            ),
            Dest::Virtual { vd, port, .. } => (
                port.protocol.is_some_and(PortProtocol::is_http2),
                vd.spec
                    .hosts
                    .first()
                    .map(|h| h.value.clone())
                    .unwrap_or_default(),
            ),
        };
        L7Dest {
            label: d.label(),
            weight,
            http2,
            endpoints: to_slots(&shares),
            authority,
        }
    }

    /// Resolve a route's destinations, or say why not.
    pub(super) fn resolved(
        &self,
        table: &'a Resource<RouteTableSpec>,
        f: &'a ForwardTo,
    ) -> Result<Vec<(Dest<'a>, u32)>, String> {
        self.weighted_dests(table, f)
            .into_iter()
            .map(|(d, w)| d.map(|d| (d, w)))
            .collect()
    }

    /// The first HTTP-level policy that applies to route `r` (which then
    /// needs the proxy), as `RetryTimeoutPolicy ns/name`.
    pub(super) fn http_policy(&self, r: &FlatRoute<'_>) -> Option<String> {
        let cfg = &self.v.config;
        None.or_else(|| winner(&cfg.retry_policies, r).map(|p| p.origin.resource()))
            .or_else(|| winner(&cfg.fault_policies, r).map(|p| p.origin.resource()))
            .or_else(|| winner(&cfg.mirror_policies, r).map(|p| p.origin.resource()))
            .or_else(|| winner(&cfg.header_policies, r).map(|p| p.origin.resource()))
            .or_else(|| winner(&cfg.cors_policies, r).map(|p| p.origin.resource()))
    }

    fn policies(&self, r: &FlatRoute<'_>) -> L7Policies {
        let cfg = &self.v.config;
        let headers = winner(&cfg.header_policies, r).map(|p| {
            let c = &p.spec.config;
            HeaderPolicy {
                from: p.origin.resource(),
                add_request: c
                    .append_request_headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                remove_request: c.remove_request_headers.clone(),
                add_response: c
                    .append_response_headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                remove_response: c.remove_response_headers.clone(),
            }
        });
        let retry = winner(&cfg.retry_policies, r).map(|p| {
            let c = &p.spec.config;
            let r = c.retries.clone().unwrap_or_default();
            let on = |k: RetryOn| r.retry_on.has(k);
            RetryPolicy {
                from: p.origin.resource(),
                attempts: if c.retries.is_some() {
                    r.attempts.unwrap_or(2)
                } else {
                    0
                },
                per_try_timeout_ms: ms(&r.per_try_timeout),
                // Without retryOn, Envoy's default for Gloo: 5xx and connect failures.
                on_5xx: on(RetryOn::Status5xx) || r.retry_on.0.is_empty(),
                on_gateway_error: on(RetryOn::GatewayError),
                on_reset: on(RetryOn::Reset),
                on_connect_failure: on(RetryOn::ConnectFailure) || r.retry_on.0.is_empty(),
                status_codes: r.retry_on.status_codes(),
                grpc_codes: r.retry_on.grpc_codes(),
                request_timeout_ms: ms(&c.request_timeout),
            }
        });
        let fault = winner(&cfg.fault_policies, r).map(|p| {
            let c = &p.spec.config;
            FaultPolicy {
                from: p.origin.resource(),
                delay: c
                    .delay
                    .as_ref()
                    .map(|d| (d.fixed_delay.millis(), d.percentage.map_or(100.0, |p| p.0))),
                abort: c
                    .abort
                    .as_ref()
                    .map(|a| (a.http_status, a.percentage.map_or(100.0, |p| p.0))),
            }
        });
        let mirror = winner(&cfg.mirror_policies, r).and_then(|p| {
            let c = &p.spec.config;
            let d = resolve::resolve_dest(
                cfg,
                &self.v.inventory,
                &self.v.settings,
                &c.destination.value,
                p.namespace(),
            )
            .ok()?;
            Some(MirrorPolicy {
                from: p.origin.resource(),
                dest: self.l7_dest(&d, 100),
                percent: c.percentage.map_or(100.0, |p| p.0),
            })
        });
        let cors = winner(&cfg.cors_policies, r).map(|p| {
            let c = &p.spec.config;
            CorsPolicy {
                from: p.origin.resource(),
                allow_origins: c.allow_origins.iter().filter_map(string_match).collect(),
                allow_methods: c.allow_methods.clone(),
                allow_headers: c.allow_headers.clone(),
                expose_headers: c.expose_headers.clone(),
                max_age_s: ms(&c.max_age).map(|m| m / 1000),
                allow_credentials: c.allow_credentials.unwrap_or(false),
            }
        });
        L7Policies {
            headers,
            retry,
            fault,
            mirror,
            cors,
        }
    }

    /// The HTTP routes of a flattened table (those that can see `port`, if
    /// given), in first-match order, ready for the engine.
    pub(super) fn l7_routes(&self, flat: &[FlatRoute<'a>], port: Option<u16>) -> Vec<L7Route> {
        let mut out = Vec::new();
        for r in flat.iter().filter(|r| r.is_http()) {
            if port.is_some_and(|p| r.on_port(p).is_none()) {
                continue;
            }
            let RouteKind::Http(h) = r.kind else { continue };
            let action = if let Some(f) = &h.forward_to {
                match self.resolved(r.table, f) {
                    Ok(dests) => L7Action::Forward(L7Forward {
                        dests: dests.iter().map(|(d, w)| self.l7_dest(d, *w)).collect(),
                        path_rewrite: f.path_rewrite.clone(),
                        regex_rewrite: f
                            .regex_rewrite
                            .as_ref()
                            .map(|rr| (rr.pattern.regex.clone(), rr.substitution.clone())),
                        host_rewrite: f.host_rewrite.clone(),
                        auto_host_rewrite: f.auto_host_rewrite.unwrap_or(false),
                    }),
                    Err(e) => L7Action::Broken {
                        reason: format!("destination {e}"),
                    },
                }
            } else if let Some(rd) = &h.redirect {
                L7Action::Redirect(L7Redirect {
                    host: rd.host_redirect.clone(),
                    path: rd.path_redirect.clone(),
                    prefix_rewrite: rd.prefix_rewrite.clone(),
                    code: rd.response_code.unwrap_or_default().status(),
                    https: rd.https_redirect,
                    port: rd.port_redirect,
                })
            } else if let Some(d) = &h.direct_response {
                L7Action::Direct {
                    status: d.status,
                    body: d.body.clone().unwrap_or_default(),
                }
            } else {
                continue; // delegate routes were flattened away
            };
            out.push(L7Route {
                name: r.name.clone(),
                origin: r.origin.clone(),
                labels: r.labels.clone().into(),
                matchers: r
                    .matchers
                    .iter()
                    .map(|m| L7Match {
                        conds: m.http.iter().flat_map(|h| conds(h)).collect(),
                    })
                    .collect(),
                action,
                policies: self.policies(r),
            });
        }
        out
    }

    /// A route that only forwards (to `f`'s destinations), as the gateway
    /// listeners that do not speak HTTP serve it.
    fn forward_route(
        &self,
        table: &'a Resource<RouteTableSpec>,
        name: String,
        origin: Origin,
        labels: &Labels,
        f: &'a ForwardTo,
    ) -> L7Route {
        let action = match self.resolved(table, f) {
            Ok(dests) => L7Action::Forward(L7Forward {
                dests: dests.iter().map(|(d, w)| self.l7_dest(d, *w)).collect(),
                path_rewrite: None,
                regex_rewrite: None,
                host_rewrite: None,
                auto_host_rewrite: false,
            }),
            Err(e) => L7Action::Broken {
                reason: format!("destination {e}"),
            },
        };
        L7Route {
            name,
            origin,
            labels: labels.clone().into(),
            matchers: Vec::new(),
            action,
            policies: L7Policies::default(),
        }
    }

    /// TCP routes of a table as forward-only routes (for TCP gateway listeners).
    pub(super) fn tcp_routes(&self, flat: &[FlatRoute<'a>], port: u16) -> Vec<L7Route> {
        flat.iter()
            .filter(|r| !r.is_http() && r.on_port(port).is_some())
            .filter_map(|r| {
                let f = r.forward_to()?;
                Some(self.forward_route(r.table, r.name.clone(), r.origin.clone(), &r.labels, f))
            })
            .collect()
    }

    /// A table's `tls` routes on passthrough listener `port`: one host entry
    /// per route (its SNI names, else the table's hosts), in route order.
    fn tls_hosts(&self, rt: &'a Resource<RouteTableSpec>, port: u16) -> Vec<GatewayHost> {
        let table = format!("{}/{}", rt.namespace(), rt.name());
        rt.spec
            .tls
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.value.matchers.is_empty()
                    || r.value
                        .matchers
                        .iter()
                        .any(|m| m.port.is_none_or(|p| p == port))
            })
            .filter_map(|(i, r)| {
                let f = r.value.forward_to.as_ref()?;
                let mut sni: Vec<String> = r
                    .value
                    .matchers
                    .iter()
                    .filter(|m| m.port.is_none_or(|p| p == port))
                    .flat_map(|m| m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()))
                    .collect();
                if sni.is_empty() {
                    sni = rt
                        .spec
                        .hosts
                        .iter()
                        .map(|h| h.value.to_ascii_lowercase())
                        .collect();
                }
                let mut origin = rt.origin.clone();
                origin.line = rt.line_of(r);
                let name = r.value.name.clone().unwrap_or_else(|| format!("tls[{i}]"));
                Some(GatewayHost {
                    hosts: sni,
                    table: table.clone(),
                    routes: vec![self.forward_route(rt, name, origin, &r.value.labels, f)],
                })
            })
            .collect()
    }

    /// VirtualGateway listeners with the route tables bound and allowed there.
    pub(super) fn gateways(&self) -> Vec<GatewayListener> {
        let cfg = &self.v.config;
        let mut out = Vec::new();
        for gw in &cfg.virtual_gateways {
            for l in &gw.spec.listeners {
                let lv = &l.value;
                let Some(port) = lv.port.number else {
                    continue;
                };
                let mut origin = gw.origin.clone();
                origin.line = gw.line_of(l);
                let bound = cfg.route_tables.iter().filter(|rt| {
                    rt.spec.virtual_gateways.iter().any(|g| {
                        g.name == gw.name()
                            && g.namespace.as_deref().unwrap_or(rt.namespace()) == gw.namespace()
                    })
                });
                let mut hosts = Vec::new();
                for rt in bound {
                    if !allowed(lv, rt) {
                        continue;
                    }
                    if lv.passthrough() {
                        hosts.extend(self.tls_hosts(rt, port));
                        continue;
                    }
                    let (flat, _) = crate::config::routes::flatten(cfg, rt);
                    let routes = if lv.tcp.is_some() {
                        self.tcp_routes(&flat, port)
                    } else {
                        self.l7_routes(&flat, None)
                    };
                    if routes.is_empty() && !rt.spec.tls.is_empty() {
                        continue; // a table of tls routes: for passthrough listeners
                    }
                    hosts.push(GatewayHost {
                        hosts: rt
                            .spec
                            .hosts
                            .iter()
                            .map(|h| h.value.to_ascii_lowercase())
                            .collect(),
                        table: format!("{}/{}", rt.namespace(), rt.name()),
                        routes,
                    });
                }
                out.push(GatewayListener {
                    workload_selectors: gw
                        .spec
                        .workload_scope()
                        .map(crate::config::workloads::selector_plans)
                        .unwrap_or_default(),
                    gateway: format!("{}/{}", gw.namespace(), gw.name()),
                    origin,
                    port,
                    http: lv.http.is_some(),
                    passthrough: lv.passthrough(),
                    tls: lv.tls.as_ref().filter(|_| !lv.passthrough()).and_then(|t| {
                        let secret = match &t.secret_name {
                            Some(name) => {
                                let s = cfg.secret(gw.namespace(), name)?;
                                let (cert, key, ca) = s.spec.tls().ok()?;
                                Some(SecretPem {
                                    name: format!("{}/{}", s.namespace(), s.name()),
                                    cert,
                                    key,
                                    ca,
                                })
                            }
                            None => None,
                        };
                        let (cert, key) = t.cert_and_key();
                        if secret.is_none() && (cert.is_none() || key.is_none()) {
                            return None;
                        }
                        Some(TlsFiles {
                            cert: cert.cloned().unwrap_or_default(),
                            key: key.cloned().unwrap_or_default(),
                            secret,
                            ca: t.root_ca().cloned(),
                            client_certs: match t.mode.unwrap_or_default() {
                                TlsMode::Mutual => ClientCerts::Required,
                                TlsMode::OptionalMutual => ClientCerts::Optional,
                                _ => ClientCerts::None,
                            },
                        })
                    }),
                    https_redirect: lv.https_redirect.unwrap_or(false),
                    hosts,
                });
            }
        }
        out.sort_by_key(|l| l.port);
        out
    }
}

/// A gateway listener's `allowedRouteTables`: none means every bound table;
/// otherwise a table must match one entry (its host pattern and selector).
pub fn allowed(l: &Listener, rt: &Resource<RouteTableSpec>) -> bool {
    l.allowed_route_tables.is_empty()
        || l.allowed_route_tables.iter().any(|a| {
            let host_ok = a.host.as_ref().is_none_or(|pat| {
                rt.spec
                    .hosts
                    .iter()
                    .any(|h| crate::plan::host_matches(pat, &h.value))
            });
            let sel_ok = a.selector.as_ref().is_none_or(|s| {
                s.name.as_ref().is_none_or(|n| n == rt.name())
                    && s.namespace.as_ref().is_none_or(|n| n == rt.namespace())
                    && s.labels
                        .iter()
                        .all(|(k, v)| rt.meta.labels.get(k) == Some(v))
            });
            host_ok && sel_ok
        })
}

pub fn sock_of(vip: std::net::IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(vip, port)
}
