//! The Prometheus endpoint (`--metrics-addr`, off by default): `GET
//! /metrics` in Prometheus's text format. The daemon's own counters
//! ([`Telemetry`]) and the kernel's, which are read from the pinned per-CPU
//! maps and summed at scrape time ([`KernelCollector`]): the connect path
//! pays nothing for metrics. Labels are bounded by the config (hosts,
//! ports, endpoint addresses), never by clients.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    datapath::{Maps, Pins, Sizes, counters::Counters},
    plan::{Plan, Proto},
    telemetry::Telemetry,
};

/// The kernel's counters, named by the serving plan.
pub struct KernelCollector {
    maps: Mutex<Option<Maps>>,
    pins: Pins,
    sizes: Sizes,
    /// (VIP:port, proto) -> host, from the applied plan.
    names: RwLock<HashMap<(SocketAddr, Proto), std::sync::Arc<str>>>,
}

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KernelCollector({})", self.pins.dir().display())
    }
}

impl KernelCollector {
    pub fn new(pins: Pins, sizes: Sizes) -> Self {
        KernelCollector {
            maps: Mutex::new(None),
            pins,
            sizes,
            names: RwLock::new(HashMap::new()),
        }
    }

    /// The plan now applied (its service names).
    pub fn set_plan(&self, plan: &Plan) {
        let names = plan
            .services
            .iter()
            .map(|s| ((SocketAddr::new(s.vip, s.port), s.proto), s.host.clone()))
            .collect();
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    fn read(&self) -> Option<Counters> {
        let mut m = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_none() {
            *m = Maps::open(&self.pins).ok();
        }
        Counters::read(m.as_ref()?, false).ok()
    }
}

/// One family of constant values (`rows`: labels and value), encoded as
/// `kind` by `each`.
fn family<V>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(Vec<(&'static str, String)>, V)],
    each: impl Fn(&V, prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        each(v, m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    family(e, name, help, MetricType::Counter, rows, |v, m| {
        ConstCounter::new(*v).encode(m)
    })
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, i64)],
) -> Result<(), std::fmt::Error> {
    family(e, name, help, MetricType::Gauge, rows, |v, m| {
        ConstGauge::new(*v).encode(m)
    })
}

impl Collector for KernelCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(c) = self.read() else {
            return Ok(()); // no datapath (yet): nothing to say
        };
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let svc = |s: &crate::datapath::counters::ServiceCounters| {
            vec![
                (
                    "host",
                    names
                        .get(&(s.vip, s.proto))
                        .map_or_else(String::new, |h| h.to_string()),
                ),
                ("port", s.vip.port().to_string()),
                ("proto", s.proto.to_string()),
                (
                    "family",
                    if s.vip.is_ipv4() { "ipv4" } else { "ipv6" }.to_string(),
                ),
            ]
        };
        let per_service = |f: fn(&crate::datapath::counters::ServiceCounters) -> u64| {
            c.services
                .iter()
                .map(|s| (svc(s), f(s)))
                .collect::<Vec<_>>()
        };
        counter(
            &mut e,
            "service_connects",
            "Connections the kernel sent to a service's backends (connect-time translation)",
            &per_service(|s| s.connects),
        )?;
        counter(
            &mut e,
            "service_datagrams",
            "Unconnected UDP datagrams the kernel translated for a service",
            &per_service(|s| s.datagrams),
        )?;
        counter(
            &mut e,
            "service_no_backend",
            "Connections to a service refused because it had no healthy backend (EHOSTUNREACH)",
            &per_service(|s| s.no_backend),
        )?;
        let per_backend = |f: fn(&crate::datapath::counters::BackendCounters) -> u64| {
            c.backends
                .values()
                .map(|(b, _)| (vec![("backend", b.addr.to_string())], f(b)))
                .collect::<Vec<_>>()
        };
        counter(
            &mut e,
            "backend_connects",
            "Connections the kernel sent to a backend (endpoint address:port)",
            &per_backend(|b| b.connects),
        )?;
        counter(
            &mut e,
            "backend_datagrams",
            "UDP datagrams the kernel sent to a backend",
            &per_backend(|b| b.datagrams),
        )?;
        counter(
            &mut e,
            "backend_handshake_failures",
            "Failed TCP handshakes the kernel saw to a backend under outlier detection",
            &per_backend(|b| b.failures),
        )?;
        counter(
            &mut e,
            "backend_ejected_skips",
            "Connects that found a backend ejected by the kernel and took another slot",
            &per_backend(|b| b.ejected_skips),
        )?;
        let g = &c.global;
        let refused = vec![
            (vec![("reason", "unknown_vip".to_string())], g.unknown_vip),
            (vec![("reason", "no_proxy".to_string())], g.proxy_refused),
        ];
        counter(
            &mut e,
            "kernel_refused",
            "Connections the kernel refused: into the VIP range with no service (unknown_vip), or to an L7 service with no proxy listener or a stale daemon (no_proxy)",
            &refused,
        )?;
        counter(
            &mut e,
            "kernel_dns_captured",
            "DNS messages the kernel sent to routerd's DNS listener",
            &[(vec![], g.dns_captured)],
        )?;
        let errors = vec![
            (vec![("kind", "revnat".to_string())], g.revnat_failed),
            (vec![("kind", "orig_dst".to_string())], g.orig_failed),
            (
                vec![("kind", "ejections_lost".to_string())],
                g.ejections_lost,
            ),
            (
                vec![("kind", "ejected_fallback".to_string())],
                g.ejected_fallback,
            ),
        ];
        counter(
            &mut e,
            "kernel_anomalies",
            "Things the kernel could not do as asked: record a reverse translation (revnat) or an original destination (orig_dst), report an ejection (ring buffer full: ejections_lost), or find a slot not ejected (ejected_fallback)",
            &errors,
        )?;
        let map = |m: &str| vec![("map", m.to_string())];
        gauge(
            &mut e,
            "map_entries",
            "Entries in a pinned map now",
            &[
                (map("services"), c.services.len() as i64),
                (map("backends"), c.backends.len() as i64),
            ],
        )?;
        gauge(
            &mut e,
            "map_capacity",
            "Entries a pinned map holds at most (--max-services, --max-backends)",
            &[
                (map("services"), i64::from(self.sizes.services)),
                (map("backends"), i64::from(self.sizes.backends)),
            ],
        )?;
        Ok(())
    }
}

/// The registry the endpoint serves: `t`'s families and the kernel's.
pub fn registry(t: &Telemetry, kernel: Arc<KernelCollector>) -> Registry {
    let mut r = Registry::with_prefix("routerd");
    t.register(&mut r);
    r.register_collector(Box::new(kernel));
    r
}

/// The exposition text of `r`.
pub fn render(r: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, r);
    out
}

/// Serve `GET /metrics` on `addr` until the task is aborted (the handle).
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<JoinHandle<()>> {
    let l = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics listener {addr} (--metrics-addr): is the port in use?")
    })?;
    let registry = Arc::new(registry);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &registry)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

fn answer(req: &Request<Incoming>, r: &Registry) -> Response<Full<Bytes>> {
    let (status, ctype, body) = if req.uri().path() != "/metrics" {
        (404, "text/plain", "try /metrics\n".to_string())
    } else if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        (405, "text/plain", "GET /metrics\n".to_string())
    } else {
        // Scrapes read the kernel maps: off the serving workers.
        (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            tokio::task::block_in_place(|| render(r)),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = ctype.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
