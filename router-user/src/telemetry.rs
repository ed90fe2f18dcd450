//! What the daemon counts for Prometheus, besides the kernel's own
//! counters (read from the per-CPU maps at scrape time, `metrics`): the L7
//! proxy's requests, DNS queries, reloads, ejections. Label sets are
//! bounded by the config (services, routes, reasons), never by clients.
//!
//! The request path touches no map and formats nothing: the handles of a
//! route's counters are taken once per plan ([`RouteMetrics::new`]) and a
//! request increments one counter and observes one histogram.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// An L7 route of a service (east-west `host:port`, or a gateway listener
/// and table).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub service: String,
    pub route: String,
}

/// A route's responses by class (`2xx` ... `5xx`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub service: String,
    pub route: String,
    pub code: String,
}

/// A route's requests sent to one of its destinations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub service: String,
    pub route: String,
    pub destination: String,
}

/// An endpoint's answers by class (`error`: none, the exchange failed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub trigger: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// An endpoint out of service, and what took it out (`health_check`,
/// `ejected`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutLabels {
    pub endpoint: String,
    pub by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

fn latency() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

type Latencies = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The daemon's counters, shared by the proxy, the DNS server, the health
/// task and the reload loop.
#[derive(Debug)]
pub struct Telemetry {
    pub http_requests: Family<ResponseLabels, Counter>,
    pub http_duration: Latencies,
    pub http_retries: Family<RouteLabels, Counter>,
    pub http_timeouts: Family<RouteLabels, Counter>,
    pub http_destinations: Family<DestinationLabels, Counter>,
    pub http_upstream: Family<UpstreamLabels, Counter>,
    /// Each endpoint's `http_upstream` counters by class, taken once.
    upstreams: RwLock<HashMap<SocketAddr, Arc<UpstreamCounters>>>,
    pub dns_queries: Family<ResultLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub reload_duration: Histogram,
    pub generation: Gauge,
    pub last_applied: Gauge<f64, AtomicU64>,
    pub ejections: Family<SourceLabels, Counter>,
    pub avoided_endpoints: Gauge,
    pub out_of_service: Family<OutLabels, Gauge>,
    pub access_log_lines: Family<ResultLabels, Counter>,
    /// With `--store`: where the node stands against etcd (0 without).
    pub store_served_revision: Gauge,
    pub store_revision: Gauge,
    pub store_connected: Gauge,
    pub store_pending_keys: Gauge,
    pub store_lists: Counter,
    build: Family<BuildLabels, Gauge>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let t = Telemetry {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            http_retries: Family::default(),
            http_timeouts: Family::default(),
            http_destinations: Family::default(),
            http_upstream: Family::default(),
            upstreams: RwLock::new(HashMap::new()),
            dns_queries: Family::default(),
            reloads: Family::default(),
            reload_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            generation: Gauge::default(),
            last_applied: Gauge::default(),
            ejections: Family::default(),
            avoided_endpoints: Gauge::default(),
            out_of_service: Family::default(),
            access_log_lines: Family::default(),
            store_served_revision: Gauge::default(),
            store_revision: Gauge::default(),
            store_connected: Gauge::default(),
            store_pending_keys: Gauge::default(),
            store_lists: Counter::default(),
            build: Family::default(),
        };
        t.build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        // Series of things that have not happened yet exist at zero, so a
        // rate or increase sees their first event.
        for source in ["proxy", "kernel"] {
            let _ = t.ejections.get_or_create(&SourceLabels {
                source: source.to_string(),
            });
        }
        t
    }
}

/// An endpoint's answers: 1xx .. 5xx, then no answer.
pub type UpstreamCounters = [Counter; 6];

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

impl Telemetry {
    /// The access log's counters: written, dropped.
    pub fn access_log_counters(&self) -> (Counter, Counter) {
        let c = |r: &str| {
            self.access_log_lines
                .get_or_create(&ResultLabels {
                    result: r.to_string(),
                })
                .clone()
        };
        (c("written"), c("dropped"))
    }

    /// `ep`'s counters (made on its first request; an endpoint that goes
    /// away keeps its series, as Prometheus expects of counters).
    pub fn upstream(&self, ep: SocketAddr) -> Arc<UpstreamCounters> {
        if let Some(c) = self
            .upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ep)
        {
            return c.clone();
        }
        let c = Arc::new(CLASSES.map(|class| {
            self.http_upstream
                .get_or_create(&UpstreamLabels {
                    upstream: ep.to_string(),
                    code: class.to_string(),
                })
                .clone()
        }));
        self.upstreams
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ep)
            .or_insert(c)
            .clone()
    }

    /// One answer from `ep` (`None`: the exchange failed).
    pub fn upstream_answered(&self, ep: SocketAddr, status: Option<u16>) {
        let i = status.map_or(5, |s| usize::from(s / 100).clamp(1, 5) - 1);
        // Counted under the read lock when the endpoint is known: no
        // reference count taken and dropped per request.
        if let Some(c) = self
            .upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ep)
        {
            c[i].inc();
            return;
        }
        self.upstream(ep)[i].inc();
    }

    /// The reload series of every trigger and result, at zero.
    pub fn init_reloads(&self, triggers: &[&str]) {
        for trigger in triggers {
            for result in ["applied", "unchanged", "rejected", "failed"] {
                let _ = self.reloads.get_or_create(&ReloadLabels {
                    trigger: trigger.to_string(),
                    result: result.to_string(),
                });
            }
        }
    }
}

impl Telemetry {
    pub fn new() -> Arc<Telemetry> {
        Arc::new(Telemetry::default())
    }

    /// Add every family to `r` (names get the registry's `routerd_` prefix).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "http_requests",
            "Requests the L7 proxy answered, by service, route and response class",
            self.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from a request's headers to the response's headers, by service and route",
            Unit::Seconds,
            self.http_duration.clone(),
        );
        r.register(
            "http_retries",
            "Requests the L7 proxy sent again under a RetryTimeoutPolicy",
            self.http_retries.clone(),
        );
        r.register(
            "http_timeouts",
            "Upstream attempts that ran out of time (perTryTimeout, requestTimeout or the proxy's upstream timeout)",
            self.http_timeouts.clone(),
        );
        r.register(
            "http_destination_requests",
            "Requests (attempts, retries included) a route sent to each of its destinations",
            self.http_destinations.clone(),
        );
        r.register(
            "http_upstream_responses",
            "What each endpoint the proxy sent a request to answered, by class (error: no answer: connect failure, reset, timeout)",
            self.http_upstream.clone(),
        );
        r.register(
            "dns_queries",
            "DNS queries the listener took, by result (answered: a virtual host; forwarded; failed: no upstream answered; dropped: unreadable or over a cap)",
            self.dns_queries.clone(),
        );
        r.register(
            "config_reloads",
            "Reloads, by trigger and result (applied, unchanged, rejected, failed)",
            self.reloads.clone(),
        );
        r.register_with_unit(
            "config_reload_duration",
            "Time from a reload's trigger to the maps written",
            Unit::Seconds,
            self.reload_duration.clone(),
        );
        r.register(
            "config_generation",
            "Generation of the plan the datapath serves",
            self.generation.clone(),
        );
        r.register_with_unit(
            "config_last_applied_timestamp",
            "When the serving plan was applied (Unix time)",
            Unit::Seconds,
            self.last_applied.clone(),
        );
        r.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by who saw the failures (proxy, kernel)",
            self.ejections.clone(),
        );
        r.register(
            "avoided_endpoints",
            "Endpoints kept out of the slot tables now (health checks and ejections)",
            self.avoided_endpoints.clone(),
        );
        r.register(
            "endpoint_out_of_service",
            "1 for each endpoint kept out of the slot tables now, by what took it out (health_check, ejected); gone when it is back",
            self.out_of_service.clone(),
        );
        r.register(
            "access_log_lines",
            "Access log lines (AccessLogPolicy), by result: written, or dropped (the queue to the writer was full, or the file could not be written)",
            self.access_log_lines.clone(),
        );
        r.register(
            "store_served_revision",
            "With --store: the etcd revision of the config this node serves (of the last change to its keys it applied)",
            self.store_served_revision.clone(),
        );
        r.register(
            "store_revision",
            "With --store: the latest revision etcd reported (progress is asked for every 500 ms)",
            self.store_revision.clone(),
        );
        r.register(
            "store_connected",
            "With --store: 1 while the node follows etcd, 0 while it cannot reach it (it serves its last accepted config)",
            self.store_connected.clone(),
        );
        r.register(
            "store_pending_keys",
            "With --store: keys received from etcd and not applied (a change being applied, or one refused: see the log)",
            self.store_pending_keys.clone(),
        );
        r.register(
            "store_lists",
            "With --store: lists of the whole prefix (at start, and after each compaction past this node's revision)",
            self.store_lists.clone(),
        );
        r.register(
            "build_info",
            "The routerd version serving (always 1)",
            self.build.clone(),
        );
    }
}

/// One route's counters, taken once per plan.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    /// Responses by class: 1xx .. 5xx.
    by_class: [Counter; 5],
    duration: Histogram,
    pub retries: Counter,
    pub timeouts: Counter,
    /// Attempts sent to each of the route's destinations, in its order.
    pub destinations: Vec<Counter>,
}

impl Default for RouteMetrics {
    /// Counters no registry exports (tests, tools).
    fn default() -> Self {
        RouteMetrics {
            by_class: Default::default(),
            duration: latency(),
            retries: Counter::default(),
            timeouts: Counter::default(),
            destinations: Vec::new(),
        }
    }
}

impl RouteMetrics {
    /// `route` of `service`, forwarding to `destinations` (their labels).
    pub fn new(t: &Telemetry, service: &str, route: &str, destinations: &[&str]) -> Self {
        let class = |c: &str| {
            t.http_requests
                .get_or_create(&ResponseLabels {
                    service: service.to_string(),
                    route: route.to_string(),
                    code: c.to_string(),
                })
                .clone()
        };
        let labels = RouteLabels {
            service: service.to_string(),
            route: route.to_string(),
        };
        RouteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: t.http_duration.get_or_create(&labels).clone(),
            retries: t.http_retries.get_or_create(&labels).clone(),
            timeouts: t.http_timeouts.get_or_create(&labels).clone(),
            destinations: destinations
                .iter()
                .map(|d| {
                    t.http_destinations
                        .get_or_create(&DestinationLabels {
                            service: service.to_string(),
                            route: route.to_string(),
                            destination: d.to_string(),
                        })
                        .clone()
                })
                .collect(),
        }
    }

    /// One response of `status` after `seconds`.
    pub fn observe(&self, status: u16, seconds: f64) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[i].inc();
        self.duration.observe(seconds);
    }
}
