//! Access logs (Gloo's AccessLogPolicy): one JSON line per L7 request the
//! policy's filters let through, written by a task of its own to a file or
//! the daemon's stdout. A request never waits for the disk: lines go
//! through a bounded queue, and a line that finds it full is dropped and
//! counted (`routerd_access_log_lines_total{result="dropped"}`).
use std::{net::SocketAddr, time::Duration};

use http::{HeaderMap, HeaderName, Request, Response};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::{io::AsyncWriteExt, sync::mpsc, task::JoinHandle};

use crate::plan::{AccessLogPlan, LogFilter};

/// Lines waiting for the writer, at most.
pub const QUEUE: usize = 4096;

#[derive(Debug)]
enum Value {
    Exact(String),
    Regex(regex::Regex),
}

#[derive(Debug)]
enum Filter {
    Status {
        value: u16,
        ge: bool,
        le: bool,
    },
    Header {
        name: HeaderName,
        value: Option<Value>,
        invert: bool,
    },
}

/// A plan's access log, compiled, with the queue to the writer.
#[derive(Debug)]
pub struct AccessLog {
    filters: Vec<Filter>,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    tx: mpsc::Sender<String>,
    dropped: Counter,
}

/// What a logged request keeps until its response.
#[derive(Debug)]
pub struct Pending {
    start_ms: u64,
    method: String,
    path: String,
    authority: String,
    protocol: String,
    client: SocketAddr,
    headers: Vec<(String, String)>,
    /// A header filter matched the request.
    header_hit: bool,
}

/// One line, as written.
#[derive(Serialize)]
struct Line<'a> {
    start_time_ms: u64,
    service: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    protocol: &'a str,
    status: u16,
    duration_ms: f64,
    client: String,
    request_headers: serde_json::Map<String, serde_json::Value>,
    response_headers: serde_json::Map<String, serde_json::Value>,
}

fn headers(map: &HeaderMap, names: &[HeaderName]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| {
            let v = map.get(n)?.to_str().ok()?;
            Some((n.as_str().to_string(), v.to_string()))
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl AccessLog {
    /// `plan` compiled (validation checked its names and regexes; one that
    /// does not compile matches nothing), writing to `tx`.
    pub fn new(plan: &AccessLogPlan, tx: mpsc::Sender<String>, dropped: Counter) -> AccessLog {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).ok();
        AccessLog {
            filters: plan
                .filters
                .iter()
                .filter_map(|f| match f {
                    LogFilter::Status { value, ge, le } => Some(Filter::Status {
                        value: *value,
                        ge: *ge,
                        le: *le,
                    }),
                    LogFilter::Header {
                        name: n,
                        value,
                        regex,
                        invert,
                    } => Some(Filter::Header {
                        name: name(n)?,
                        value: match (value, regex) {
                            (None, _) => None,
                            (Some(v), false) => Some(Value::Exact(v.clone())),
                            (Some(v), true) => {
                                Some(Value::Regex(regex::Regex::new(&format!("^(?:{v})$")).ok()?))
                            }
                        },
                        invert: *invert,
                    }),
                })
                .collect(),
            request_headers: plan
                .request_headers
                .iter()
                .filter_map(|n| name(n))
                .collect(),
            response_headers: plan
                .response_headers
                .iter()
                .filter_map(|n| name(n))
                .collect(),
            tx,
            dropped,
        }
    }

    /// What to keep of `req` for its line.
    pub fn begin<B>(&self, req: &Request<B>, client: SocketAddr) -> Pending {
        let header_hit = self.filters.iter().any(|f| match f {
            Filter::Header {
                name,
                value,
                invert,
            } => {
                let hit = req.headers().get_all(name).iter().any(|v| {
                    let v = v.to_str().unwrap_or("");
                    match value {
                        None => true,
                        Some(Value::Exact(x)) => v == x,
                        Some(Value::Regex(re)) => re.is_match(v),
                    }
                });
                hit != *invert
            }
            Filter::Status { .. } => false,
        });
        Pending {
            start_ms: now_ms(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            authority: req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(String::from)
                })
                .unwrap_or_default(),
            protocol: format!("{:?}", req.version()),
            client,
            headers: headers(req.headers(), &self.request_headers),
            header_hit,
        }
    }

    /// Does a request with status `status` pass the filters? (None: all.)
    fn wanted(&self, p: &Pending, status: u16) -> bool {
        self.filters.is_empty()
            || p.header_hit
            || self.filters.iter().any(|f| match f {
                Filter::Status { value, ge, le } => {
                    status == *value || (*ge && status > *value) || (*le && status < *value)
                }
                Filter::Header { .. } => false,
            })
    }

    /// The line of a finished request, queued (or dropped and counted).
    pub fn finish<B>(
        &self,
        p: Pending,
        service: &str,
        route: &str,
        resp: &Response<B>,
        took: Duration,
    ) {
        let status = resp.status().as_u16();
        if !self.wanted(&p, status) {
            return;
        }
        let map = |v: Vec<(String, String)>| {
            v.into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect()
        };
        let line = Line {
            start_time_ms: p.start_ms,
            service,
            route,
            method: &p.method,
            path: &p.path,
            authority: &p.authority,
            protocol: &p.protocol,
            status,
            duration_ms: took.as_secs_f64() * 1e3,
            client: p.client.to_string(),
            request_headers: map(p.headers),
            response_headers: map(headers(resp.headers(), &self.response_headers)),
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        if self.tx.try_send(text).is_err() {
            self.dropped.inc();
        }
    }
}

/// The writer: lines from the queue to `path` (appended; None: stdout),
/// flushed whenever the queue runs dry. Stops when every sender is gone.
pub fn spawn_writer(
    path: Option<String>,
    written: Counter,
    dropped: Counter,
) -> (mpsc::Sender<String>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
    let task = tokio::spawn(async move {
        let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &path {
            None => Box::new(tokio::io::stdout()),
            Some(p) => match tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .await
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    tracing::warn!(path = %p, "cannot open the access log ({e}); its lines are dropped and counted");
                    while rx.recv().await.is_some() {
                        dropped.inc();
                    }
                    return;
                }
            },
        };
        let mut out = tokio::io::BufWriter::new(&mut out);
        while let Some(line) = rx.recv().await {
            let mut batch = vec![line];
            while let Ok(l) = rx.try_recv() {
                batch.push(l);
                if batch.len() >= 256 {
                    break;
                }
            }
            for l in &batch {
                if out.write_all(l.as_bytes()).await.is_err() {
                    dropped.inc();
                } else {
                    written.inc();
                }
            }
            let _ = out.flush().await;
        }
    });
    (tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(filters: Vec<LogFilter>) -> (AccessLog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(4);
        let plan = AccessLogPlan {
            policy: "AccessLogPolicy ns/p".into(),
            filters,
            request_headers: vec!["x-team".into()],
            response_headers: vec!["content-type".into()],
        };
        (AccessLog::new(&plan, tx, Counter::default()), rx)
    }

    fn req(team: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .uri("/api/x?y=1")
            .header("host", "shop.mesh");
        if let Some(t) = team {
            b = b.header("x-team", t);
        }
        b.body(()).unwrap()
    }

    fn resp(status: u16) -> Response<()> {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(())
            .unwrap()
    }

    #[test]
    fn filters_are_any_of_status_and_request_headers() {
        let client: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let (l, mut rx) = log(vec![
            LogFilter::Status {
                value: 500,
                ge: true,
                le: false,
            },
            LogFilter::Header {
                name: "x-team".into(),
                value: Some("pay.*".into()),
                regex: true,
                invert: false,
            },
        ]);
        let d = Duration::from_millis(3);
        l.finish(l.begin(&req(None), client), "s", "r", &resp(200), d);
        assert!(rx.try_recv().is_err(), "200 without the header: not logged");
        l.finish(l.begin(&req(None), client), "s", "r", &resp(503), d);
        let line: serde_json::Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(line["status"], 503);
        assert_eq!(line["path"], "/api/x?y=1");
        assert_eq!(line["authority"], "shop.mesh");
        assert_eq!(line["response_headers"]["content-type"], "text/plain");
        l.finish(
            l.begin(&req(Some("payments")), client),
            "s",
            "r",
            &resp(200),
            d,
        );
        let line: serde_json::Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(line["request_headers"]["x-team"], "payments");
        l.finish(l.begin(&req(Some("shop")), client), "s", "r", &resp(200), d);
        assert!(rx.try_recv().is_err(), "the regex is a full match");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let client: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let (l, _rx) = log(Vec::new());
        for _ in 0..6 {
            l.finish(
                l.begin(&req(None), client),
                "s",
                "r",
                &resp(200),
                Duration::ZERO,
            );
        }
        assert_eq!(l.dropped.get(), 2, "a queue of 4");
    }
}
