//! One request through the L7 path, in pingora's phases: match a route
//! (404 if none) -> request filters (CORS preflight, fault injection) ->
//! the action (direct response, redirect, or forward with header
//! manipulation, mirroring, retries and timeouts) -> response filters
//! (header manipulation, CORS) . Failures the proxy sees are reported to
//! [`Observations`] for outlier detection.
use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use tokio::time::Instant;

use super::access_log::AccessLog;
use super::{
    engine::{self, Hit, RegexRewrite, Req, Table},
    upstream::{Body, BoxError, HttpUpstream, UpstreamError, Upstreams},
};
pub use crate::health::{Observations, Outcome};
use crate::limits::{Admission, Ticket};
use crate::plan::{CorsPolicy, L7Action, L7Dest, L7Forward, L7Route, PathKind, RetryPolicy};
use crate::telemetry::{RouteMetrics, Telemetry};

/// Bodies are buffered only when a retry or a mirror needs a copy; one
/// buffered body holds at most this much.
pub const MAX_BUFFERED_BODY: usize = 1 << 20;

/// The `route` label of requests no route matched.
pub const NO_ROUTE: &str = "(no route)";

/// A route table compiled for the engine, with each route's regexes
/// compiled once per plan rather than per request.
#[derive(Debug)]
pub struct Compiled {
    pub routes: Vec<L7Route>,
    pub table: Table,
    extras: Vec<RouteExtras>,
    /// Each route's counters, and those of requests no route matched.
    metrics: Vec<RouteMetrics>,
    unmatched: RouteMetrics,
    /// The service the table serves (the `service` of metrics and logs).
    service: String,
    /// The access log, when an AccessLogPolicy asks for one.
    log: Option<Arc<AccessLog>>,
}

/// What a route needs at request time beyond its matchers.
#[derive(Debug, Default)]
struct RouteExtras {
    /// The forward action's `regexRewrite`.
    rewrite: Option<RegexRewrite>,
    /// The CORS policy's `allowOrigins`, in order: `Some` for a regex.
    cors_origins: Vec<Option<regex::Regex>>,
}

impl RouteExtras {
    fn new(r: &L7Route) -> Result<RouteExtras, String> {
        let rewrite = match &r.action {
            L7Action::Forward(f) => f
                .regex_rewrite
                .as_ref()
                .map(|(re, sub)| RegexRewrite::new(re, sub))
                .transpose()?,
            _ => None,
        };
        let cors_origins = r
            .policies
            .cors
            .iter()
            .flat_map(|c| &c.allow_origins)
            .map(|(kind, v)| match kind {
                PathKind::Regex => engine::full(v, false).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, String>>()?;
        Ok(RouteExtras {
            rewrite,
            cors_origins,
        })
    }
}

impl Compiled {
    /// Fails only on a regex that does not compile, which validation
    /// already rejects.
    pub fn new(routes: Vec<L7Route>) -> Result<Self, String> {
        let table = Table::new(&routes)?;
        let extras = routes
            .iter()
            .map(RouteExtras::new)
            .collect::<Result<_, _>>()?;
        Ok(Compiled {
            metrics: vec![RouteMetrics::default(); routes.len()],
            unmatched: RouteMetrics::default(),
            service: String::new(),
            log: None,
            routes,
            table,
            extras,
        })
    }

    /// [`Compiled::new`], counting into `t` as `service`'s routes, and
    /// logging into `log`.
    pub fn instrumented(
        routes: Vec<L7Route>,
        t: &Telemetry,
        service: &str,
        log: Option<Arc<AccessLog>>,
    ) -> Result<Self, String> {
        let mut c = Compiled::new(routes)?;
        c.service = service.to_string();
        c.log = log;
        c.metrics = c
            .routes
            .iter()
            .map(|r| {
                let dests: Vec<&str> = match &r.action {
                    L7Action::Forward(f) => f.dests.iter().map(|d| d.label.as_str()).collect(),
                    _ => Vec::new(),
                };
                RouteMetrics::new(t, service, &r.name, &dests)
            })
            .collect();
        c.unmatched = RouteMetrics::new(t, service, NO_ROUTE, &[]);
        Ok(c)
    }
}

/// A client's request body as the handler takes it: hyper's `Incoming` in
/// the daemon, any body in tests.
pub trait ClientBodyIn:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<T> ClientBodyIn for T where
    T: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

/// What every request shares.
pub struct Ctx {
    /// Connections to endpoints (TCP routes dial through it).
    pub pool: Arc<Upstreams>,
    /// Where forwarded HTTP requests go: `pool`, except in tests.
    pub http: Arc<dyn HttpUpstream>,
    pub obs: Observations,
    /// Bytes of buffered request bodies, in all and per client address.
    pub bodies: Arc<Admission<IpAddr>>,
    pub timeouts: Timeouts,
    /// Endpoints' answers are counted here.
    pub telemetry: Arc<Telemetry>,
}

/// The proxy's time limits (RouterConfig `spec.proxy`).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Upstream response headers, when no RetryTimeoutPolicy sets a
    /// `requestTimeout` (Envoy's default route timeout is 15 s).
    pub upstream: Duration,
    /// A buffered request body must arrive within this; a streamed one may
    /// pause at most this long between chunks.
    pub body: Duration,
}

impl From<&crate::plan::ProxyPlan> for Timeouts {
    fn from(p: &crate::plan::ProxyPlan) -> Self {
        Timeouts {
            upstream: Duration::from_millis(p.upstream_timeout_ms),
            body: Duration::from_millis(p.body_timeout_ms),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            upstream: Duration::from_secs(15),
            body: Duration::from_secs(30),
        }
    }
}

/// The host a request names: its absolute URI's authority, else its Host
/// header (with the port, if any).
pub(super) fn request_host(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority()
        .map(|a| a.to_string())
        .or_else(|| host_header(headers))
}

pub(super) fn host_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(String::from)
}

/// A text/plain response.
pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let b: String = body.into();
    let mut r = Response::new(Full::new(Bytes::from(b)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Hop-by-hop headers never cross a proxy (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

// Header names the request path writes, made once (a `&str` name is
// parsed and hashed again on every use).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The items of a comma-separated list header (every line of it), trimmed.
fn list_items(h: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    h.get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = list_items(h, header::CONNECTION)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::TRANSFER_ENCODING);
}

/// What a client connection lends its requests, for an HTTP upgrade: a
/// tunnel keeps `hold` (the connection's task, and with it the
/// connection's admission ticket, waits until every copy is gone) and ends
/// after `idle` with no bytes either way (`activity` watches the client's
/// socket).
/// A client workload's own addresses (its Pod's IPs), on the requests of
/// its connections: [`pick`] sends none there when another endpoint can be
/// picked (what the kernel does for L4: RouterConfig `workloadHairpin`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnAddrs(pub Arc<[IpAddr]>);

impl OwnAddrs {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone)]
pub struct TunnelScope {
    pub hold: tokio::sync::mpsc::Sender<()>,
    pub activity: crate::limits::Activity,
    pub idle: Duration,
}

/// The protocol an HTTP/1.1 request asks to switch to (RFC 9110 7.8:
/// `Upgrade: <protocol>` with `upgrade` among the `Connection` options),
/// e.g. `websocket`. HTTP/2 has no such upgrade.
pub fn upgrade_of(version: http::Version, h: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let asks = list_items(h, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let proto = h.get(header::UPGRADE)?;
    (asks && !proto.is_empty()).then(|| proto.clone())
}

/// The upstream switched protocols: answer the client with the 101 and
/// join the two upgraded connections byte for byte, off the request path.
fn tunnel(
    mut resp: Response<Body>,
    client: hyper::upgrade::OnUpgrade,
    scope: TunnelScope,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut resp);
    let (mut parts, body) = resp.into_parts();
    let proto = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(p) = proto {
        parts.headers.insert(header::UPGRADE, p);
    }
    tokio::spawn(async move {
        let TunnelScope {
            hold,
            activity,
            idle,
        } = scope;
        let _hold = hold;
        let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else {
            return;
        };
        let (mut c, mut u) = (
            hyper_util::rt::TokioIo::new(c),
            hyper_util::rt::TokioIo::new(u),
        );
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
            _ = activity.idle_for(idle) => {}
        }
    });
    Response::from_parts(parts, body)
}

/// A random version-4 UUID, for `x-request-id`.
fn request_id() -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    // 8-4-4-4-12 hex digits, written in place (no formatting machinery
    // on the request path).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(x >> 4)] as char);
        out.push(HEX[usize::from(x & 0xf)] as char);
    }
    out
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

fn origin_allowed(c: &CorsPolicy, p: &RouteExtras, origin: &str) -> bool {
    c.allow_origins
        .iter()
        .zip(&p.cors_origins)
        .any(|((k, v), re)| match k {
            PathKind::Exact => v == origin || v == "*",
            PathKind::Prefix => origin.starts_with(v.as_str()),
            PathKind::Regex => re.as_ref().is_some_and(|r| r.is_match(origin)),
        })
}

fn set(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        h.insert(n, v);
    }
}

fn append(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        h.append(n, v);
    }
}

fn cors_preflight(c: &CorsPolicy, origin: &str) -> Response<Body> {
    let mut r = text(StatusCode::OK, "");
    let h = r.headers_mut();
    set(h, "access-control-allow-origin", origin);
    if !c.allow_methods.is_empty() {
        set(
            h,
            "access-control-allow-methods",
            &c.allow_methods.join(","),
        );
    }
    if !c.allow_headers.is_empty() {
        set(
            h,
            "access-control-allow-headers",
            &c.allow_headers.join(","),
        );
    }
    if let Some(m) = c.max_age_s {
        set(h, "access-control-max-age", &m.to_string());
    }
    if c.allow_credentials {
        set(h, "access-control-allow-credentials", "true");
    }
    r
}

/// Pick one of the destinations by weight (those with endpoints), then one
/// endpoint by share, avoiding `avoid` when there is a choice (retries),
/// and the client's `own` addresses when there is another endpoint.
pub(super) fn pick<'a>(
    dests: &'a [L7Dest],
    avoid: Option<SocketAddr>,
    own: &[IpAddr],
) -> Option<(&'a L7Dest, SocketAddr)> {
    let live: Vec<&L7Dest> = dests
        .iter()
        .filter(|d| d.weight > 0 && !d.endpoints.is_empty())
        .collect();
    let total: u64 = live.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = fastrand::u64(0..total);
    let dest = live
        .iter()
        .find(|d| {
            let w = u64::from(d.weight);
            if x < w {
                true
            } else {
                x -= w;
                false
            }
        })
        .copied()?;
    let mut eps: Vec<_> = dest
        .endpoints
        .iter()
        .filter(|e| Some(e.endpoint) != avoid || dest.endpoints.len() == 1)
        .collect();
    let not_own = |e: &&crate::plan::SlotShare| !own.contains(&e.endpoint.ip());
    if !own.is_empty() && eps.iter().any(not_own) {
        eps.retain(not_own);
    }
    let total: u64 = eps.iter().map(|e| u64::from(e.slots)).sum();
    let mut y = fastrand::u64(0..total.max(1));
    let ep = eps
        .iter()
        .find(|e| {
            let s = u64::from(e.slots);
            if y < s {
                true
            } else {
                y -= s;
                false
            }
        })
        .map(|e| e.endpoint)?;
    Some((dest, ep))
}

/// A client's request body on its way upstream: fails (and says so in
/// `failed`) if the client breaks it or pauses longer than `idle`, so the
/// proxy can tell a client's fault from an endpoint's.
struct ClientBody<B> {
    inner: B,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    failed: Arc<AtomicBool>,
}

impl<B> ClientBody<B> {
    fn new(inner: B, idle: Duration, failed: Arc<AtomicBool>) -> Self {
        ClientBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            failed,
        }
    }
}

impl<B: ClientBodyIn> hyper::body::Body for ClientBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                let next = tokio::time::Instant::now() + self.idle;
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.failed.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err("the client's request body stalled".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum ReqBody<B> {
    Stream(ClientBody<B>),
    Buffered(Bytes),
}

struct Prepared<B> {
    method: http::Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: Option<ReqBody<B>>,
    /// Keeps the buffered body's bytes counted against the budget.
    _budget: Option<Ticket<IpAddr>>,
}

/// The upstream request path: always absolute (a leading `/`), so that
/// nothing a rewrite leaves (`""`, `@host:port/x`) can read as an authority.
pub fn upstream_path(path: &str, query: Option<&str>) -> Result<PathAndQuery, String> {
    let mut pq = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1) + 1);
    if !path.starts_with('/') {
        pq.push('/');
    }
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::try_from(pq).map_err(|e| format!("the rewritten path is not valid: {e}"))
}

impl<B: ClientBodyIn> Prepared<B> {
    /// The request for endpoint `ep`. HTTP/1.1 gets an origin-form URI (the
    /// path); HTTP/2 needs `:scheme` and `:authority`, taken from the Host
    /// being sent (or the endpoint). Either way the URI only describes the
    /// request: the connection is made to `ep` by the caller.
    fn request(
        &mut self,
        ep: SocketAddr,
        authority: Option<&str>,
        http2: bool,
    ) -> Result<Request<Body>, String> {
        let mut headers = self.headers.clone();
        if let Some(a) = authority {
            set(&mut headers, "host", a);
        }
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(self.path_and_query.clone());
        if http2 {
            let host = headers
                .get(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| {
                    Authority::try_from(ep.to_string()).expect("a socket address is an authority")
                });
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(host);
            headers.remove(header::HOST);
            headers.remove(header::CONNECTION);
            headers.remove(header::UPGRADE);
        }
        let uri = Uri::from_parts(parts).map_err(|e| e.to_string())?;
        let body: Body = match self.body.take() {
            Some(ReqBody::Stream(b)) => b.boxed(),
            Some(ReqBody::Buffered(b)) => {
                self.body = Some(ReqBody::Buffered(b.clone()));
                Full::new(b).map_err(|e| match e {}).boxed()
            }
            None => return Err("request body already used".into()),
        };
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(uri)
            .body(body)
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// Read a body that a retry or mirror needs whole, within the body timeout
/// and the memory budget. `Err` is the response to send.
async fn buffer_body<B: ClientBodyIn>(
    ctx: &Ctx,
    mut body: B,
    peer: IpAddr,
) -> Result<(Bytes, Ticket<IpAddr>), Response<Body>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body too large to retry or mirror (limit {} KiB)",
                MAX_BUFFERED_BODY / 1024
            ),
        )
    };
    let busy = || {
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies are being buffered; try again",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    };
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n > MAX_BUFFERED_BODY as u64)
    {
        return Err(too_large());
    }
    let Some(mut ticket) = ctx.bodies.try_take(peer, 0) else {
        return Err(busy());
    };
    let mut buf = bytes::BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                text(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_BUFFERED_BODY {
                    return Err(too_large());
                }
                if !ticket.grow(data.len()) {
                    return Err(busy());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(ctx.timeouts.body, read).await {
        Ok(Ok(())) => Ok((buf.freeze(), ticket)),
        Ok(Err(resp)) => Err(resp),
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                ctx.timeouts.body.as_secs()
            ),
        )),
    }
}

/// A response's `grpc-status` header: the status of a gRPC call that
/// failed before any message (a trailers-only response). A call that
/// answered carries its status in the trailers, after the body, too late
/// to retry (Envoy's rule as well).
fn grpc_status(h: &HeaderMap) -> Option<u8> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Should this outcome be retried under `p`?
fn retriable(p: &RetryPolicy, o: &Result<StatusCode, (Outcome, bool)>) -> bool {
    match o {
        Ok(s) => {
            let code = s.as_u16();
            (p.on_5xx && code >= 500)
                || (p.on_gateway_error && (502..=504).contains(&code))
                || p.status_codes.contains(&code)
        }
        Err((Outcome::ConnectFailure, _)) => p.on_connect_failure || p.on_5xx || p.on_gateway_error,
        // (reset or per-try timeout)
        Err((_, timeout)) => p.on_reset || p.on_5xx || (*timeout && p.on_gateway_error),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward<B: ClientBodyIn>(
    ctx: &Ctx,
    f: &L7Forward,
    route: &L7Route,
    extras: &RouteExtras,
    metrics: &RouteMetrics,
    hit: &Hit,
    req: Request<B>,
    peer: SocketAddr,
) -> Response<Body> {
    let retry = route.policies.retry.clone();
    let mirror = route.policies.mirror.clone().filter(|m| chance(m.percent));
    let (mut parts, body) = req.into_parts();
    let own = parts.extensions.remove::<OwnAddrs>().unwrap_or_default();
    // An upgrade (a WebSocket) when the client's connection can hand
    // itself over (HTTP/1.1, served with upgrades).
    let upgrade = upgrade_of(parts.version, &parts.headers).and_then(|p| {
        let scope = parts.extensions.get::<TunnelScope>()?.clone();
        let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        Some((p, client, scope))
    });
    let mirror = mirror.filter(|_| upgrade.is_none());
    let path = parts.uri.path();
    let new_path = if let Some(to) = &f.path_rewrite {
        Cow::Owned(engine::rewrite_prefix(path, hit, to))
    } else if let Some(r) = &extras.rewrite {
        Cow::Owned(r.apply(path))
    } else {
        Cow::Borrowed(path)
    };
    let path_and_query = match upstream_path(&new_path, parts.uri.query()) {
        Ok(pq) => pq,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let mut headers = parts.headers;
    // `te: trailers` is the one TE that crosses (HTTP/2 allows no other):
    // gRPC clients send it to say they take trailers.
    let te_trailers = list_items(&headers, header::TE).any(|t| t.eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(&mut headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some((proto, ..)) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    let mut upgrade = upgrade.map(|(_, client, scope)| (client, scope));
    // The Host sent: an absolute URI's authority, or the (first) Host
    // header, once. Nothing to write when there is one Host header and no
    // authority.
    let rewrite_host =
        parts.uri.authority().is_some() || headers.get_all(header::HOST).iter().nth(1).is_some();
    let original_host = if mirror.is_some() || rewrite_host {
        request_host(&parts.uri, &headers)
    } else {
        None
    };
    if rewrite_host && let Some(h) = &original_host {
        set(&mut headers, "host", h);
    }
    if let Ok(v) = HeaderValue::try_from(peer.ip().to_string()) {
        headers.append(X_FORWARDED_FOR, v);
    }
    // Envoy's convention: a request without an id gets one; trace context
    // (traceparent, tracestate, B3) passes through untouched.
    if !headers.contains_key(&X_REQUEST_ID)
        && let Ok(v) = HeaderValue::try_from(request_id())
    {
        headers.insert(X_REQUEST_ID, v);
    }
    if let Some(hp) = &route.policies.headers {
        for n in &hp.remove_request {
            headers.remove(n.as_str());
        }
        for (k, v) in &hp.add_request {
            append(&mut headers, k, v);
        }
    }
    let needs_copy = retry.as_ref().is_some_and(|r| r.attempts > 0) || mirror.is_some();
    let client_failed = Arc::new(AtomicBool::new(false));
    let (body, budget) = if needs_copy {
        match buffer_body(ctx, body, peer.ip()).await {
            Ok((b, ticket)) => (ReqBody::Buffered(b), Some(ticket)),
            Err(resp) => return resp,
        }
    } else {
        (
            ReqBody::Stream(ClientBody::new(
                body,
                ctx.timeouts.body,
                client_failed.clone(),
            )),
            None,
        )
    };
    let mut prep = Prepared {
        method: parts.method,
        path_and_query,
        headers,
        body: Some(body),
        _budget: budget,
    };

    if let (Some(m), Some(ReqBody::Buffered(b))) = (&mirror, &prep.body) {
        // Envoy's shadow convention: the mirrored request's host gets "-shadow".
        if let Some((dest, ep)) = pick(std::slice::from_ref(&m.dest), None, &[]) {
            let mut copy = Prepared {
                method: prep.method.clone(),
                path_and_query: prep.path_and_query.clone(),
                headers: prep.headers.clone(),
                body: Some(ReqBody::<B>::Buffered(b.clone())),
                _budget: None,
            };
            let shadow = original_host.clone().map(|h| format!("{h}-shadow"));
            if let Ok(r) = copy.request(ep, shadow.as_deref(), dest.http2) {
                let (up, http2) = (ctx.http.clone(), dest.http2);
                tokio::spawn(async move {
                    if let Ok(Ok(resp)) =
                        tokio::time::timeout(Duration::from_secs(5), up.send(ep, http2, r)).await
                    {
                        let _ = resp.into_body().collect().await;
                    }
                });
            }
        }
    }

    let attempts = 1 + retry.as_ref().map_or(0, |r| r.attempts);
    let per_try = retry
        .as_ref()
        .and_then(|r| r.per_try_timeout_ms)
        .map(Duration::from_millis);
    // Without a requestTimeout the default upstream timeout bounds the wait.
    let overall = retry
        .as_ref()
        .and_then(|r| r.request_timeout_ms)
        .map(Duration::from_millis)
        .unwrap_or(ctx.timeouts.upstream);
    let deadline = Instant::now() + overall;
    let mut last_ep = None;
    let mut last_err = text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    for attempt in 0..attempts {
        if attempt > 0 {
            metrics.retries.inc();
        }
        let Some((dest, ep)) = pick(&f.dests, last_ep, &own.0) else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        };
        if let Some(c) = f
            .dests
            .iter()
            .position(|d| std::ptr::eq(d, dest))
            .and_then(|i| metrics.destinations.get(i))
        {
            c.inc();
        }
        last_ep = Some(ep);
        let authority = f
            .host_rewrite
            .clone()
            .or_else(|| f.auto_host_rewrite.then(|| dest.authority.clone()));
        let upstream_req = match prep.request(ep, authority.as_deref(), dest.http2) {
            Ok(r) => r,
            Err(e) => return text(StatusCode::BAD_GATEWAY, e),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
        }
        let budget = per_try.map_or(left, |b| b.min(left));
        // (An HTTP/2 endpoint has no upgrade: it gets the request without
        // the upgrade headers, as `request` strips them for HTTP/2.)
        let call = if upgrade.is_some() && !dest.http2 {
            ctx.http.send_upgrade(ep, upstream_req)
        } else {
            ctx.http.send(ep, dest.http2, upstream_req)
        };
        let result = match tokio::time::timeout(budget, call).await {
            Ok(r) => r,
            Err(_) => {
                ctx.obs.record(ep, Outcome::Reset);
                ctx.telemetry.upstream_answered(ep, None);
                metrics.timeouts.inc();
                let o: Result<StatusCode, (Outcome, bool)> = Err((Outcome::Reset, true));
                let over = Instant::now() >= deadline;
                last_err = text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
                if over
                    || attempt + 1 == attempts
                    || !retry.as_ref().is_some_and(|p| retriable(p, &o))
                {
                    return last_err;
                }
                continue;
            }
        };
        match result {
            Ok(resp) => {
                let code = resp.status();
                ctx.telemetry.upstream_answered(ep, Some(code.as_u16()));
                ctx.obs.record(
                    ep,
                    if code.is_server_error() {
                        Outcome::Status5xx(code.as_u16())
                    } else {
                        Outcome::Ok
                    },
                );
                if code == StatusCode::SWITCHING_PROTOCOLS {
                    return match upgrade.take() {
                        Some((client, scope)) if !dest.http2 => tunnel(resp, client, scope),
                        _ => text(
                            StatusCode::BAD_GATEWAY,
                            "the upstream switched protocols unasked",
                        ),
                    };
                }
                let grpc = grpc_status(resp.headers());
                let again = attempt + 1 < attempts
                    && retry.as_ref().is_some_and(|p| {
                        retriable(p, &Ok(code)) || grpc.is_some_and(|g| p.grpc_codes.contains(&g))
                    });
                if !again {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    return Response::from_parts(parts, body);
                }
            }
            Err(UpstreamError::Local(e)) => {
                // This host is out of descriptors or memory: not the
                // endpoint's fault, and not counted against it.
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the proxy is out of local resources: {e}"),
                );
            }
            Err(_) if client_failed.load(Ordering::Relaxed) => {
                // The client broke or stalled its own body: its fault, not
                // the endpoint's (one client must not eject endpoints that
                // serve everybody).
                return text(
                    StatusCode::BAD_REQUEST,
                    "the request body broke off or stalled",
                );
            }
            Err(e) => {
                let outcome = if matches!(e, UpstreamError::Connect(_)) {
                    Outcome::ConnectFailure
                } else {
                    Outcome::Reset
                };
                ctx.obs.record(ep, outcome);
                ctx.telemetry.upstream_answered(ep, None);
                last_err = match outcome {
                    Outcome::ConnectFailure => {
                        text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error")
                    }
                    _ => text(StatusCode::BAD_GATEWAY, format!("upstream reset: {e}")),
                };
                let o = Err((outcome, false));
                if attempt + 1 == attempts
                    || !retry.as_ref().is_some_and(|p| retriable(p, &o))
                    || prep.body.is_none()
                {
                    return last_err;
                }
            }
        }
    }
    last_err
}

/// Serve one request with a compiled table. `scheme` is how the client came
/// (for redirects), `port` the port it dialled.
pub async fn handle<B: ClientBodyIn>(
    ctx: &Ctx,
    t: &Compiled,
    req: Request<B>,
    port: u16,
    scheme: &str,
    peer: SocketAddr,
) -> Response<Body> {
    let start = Instant::now();
    let pending = t.log.as_ref().map(|l| l.begin(&req, peer));
    let (resp, route) = route_request(ctx, t, req, port, scheme, peer).await;
    let took = start.elapsed();
    route
        .and_then(|i| t.metrics.get(i))
        .unwrap_or(&t.unmatched)
        .observe(resp.status().as_u16(), took.as_secs_f64());
    if let (Some(l), Some(p)) = (&t.log, pending) {
        let name = route.map_or(NO_ROUTE, |i| t.routes[i].name.as_str());
        l.finish(p, &t.service, name, &resp, took);
    }
    resp
}

/// A request routed by `t`: the response, and the route that answered
/// (`None`: none matched).
async fn route_request<B: ClientBodyIn>(
    ctx: &Ctx,
    t: &Compiled,
    req: Request<B>,
    port: u16,
    scheme: &str,
    peer: SocketAddr,
) -> (Response<Body>, Option<usize>) {
    // Never a forward proxy: the upstream is always an endpoint of a route.
    if req.method() == http::Method::CONNECT {
        let r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served: this proxy routes configured hosts only",
        );
        return (r, None);
    }
    let hit = {
        let r = Req {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            port,
        };
        t.table.select(&r)
    };
    let Some(hit) = hit else {
        let r = text(
            StatusCode::NOT_FOUND,
            format!("no route for {} {}", req.method(), req.uri().path()),
        );
        return (r, None);
    };
    let i = hit.route;
    (handle_route(ctx, t, hit, req, scheme, peer).await, Some(i))
}

/// One request to the route `hit` matched.
async fn handle_route<B: ClientBodyIn>(
    ctx: &Ctx,
    t: &Compiled,
    hit: Hit,
    req: Request<B>,
    scheme: &str,
    peer: SocketAddr,
) -> Response<Body> {
    let (route, extras) = (&t.routes[hit.route], &t.extras[hit.route]);
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let cors = route.policies.cors.as_ref().filter(|c| {
        origin
            .as_deref()
            .is_some_and(|o| origin_allowed(c, extras, o))
    });
    if let (Some(c), Some(o)) = (cors, &origin)
        && req.method() == http::Method::OPTIONS
        && req.headers().contains_key("access-control-request-method")
    {
        return cors_preflight(c, o);
    }
    if let Some(fault) = &route.policies.fault {
        if let Some((code, pct)) = fault.abort
            && chance(pct)
        {
            return text(status(code), "fault filter abort");
        }
        if let Some((ms, pct)) = fault.delay
            && chance(pct)
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    let mut resp = match &route.action {
        L7Action::Direct { status: s, body } => text(status(*s), body.clone()),
        L7Action::Broken { reason } => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("route `{}` is broken: {reason}", route.name),
        ),
        L7Action::Redirect(r) => {
            let host = request_host(req.uri(), req.headers()).unwrap_or_default();
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let mut resp = text(status(r.code), "");
            set(
                resp.headers_mut(),
                "location",
                &engine::redirect_location(r, scheme, &host, pq, &hit),
            );
            resp
        }
        L7Action::Forward(f) => {
            let m = &t.metrics[hit.route];
            forward(ctx, f, route, extras, m, &hit, req, peer).await
        }
    };
    let h = resp.headers_mut();
    if let Some(hp) = &route.policies.headers {
        for n in &hp.remove_response {
            h.remove(n.as_str());
        }
        for (k, v) in &hp.add_response {
            append(h, k, v);
        }
    }
    if let (Some(c), Some(o)) = (cors, &origin) {
        set(h, "access-control-allow-origin", o);
        if !c.expose_headers.is_empty() {
            set(
                h,
                "access-control-expose-headers",
                &c.expose_headers.join(","),
            );
        }
        if c.allow_credentials {
            set(h, "access-control-allow-credentials", "true");
        }
    }
    resp
}

/// The handler on paused time: a scripted upstream stands in for the
/// connection pool (the pool itself, and real peers, are exercised by the
/// integration tests), so timeouts, retries and fault delays are checked to
/// the millisecond without waiting for them.
#[cfg(test)]
mod tests {
    use std::{collections::HashMap, future::Future, sync::Mutex};

    use http_body_util::Empty;
    use serde_json::json;

    use super::*;
    use crate::{
        compile::{Health, compile},
        config::{Overrides, load_str},
        netns::Sockets,
        proxy::upstream::UpstreamOptions,
        testing::*,
    };

    #[test]
    fn upgrades_are_http_1_1_requests_naming_upgrade_in_connection() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let v11 = http::Version::HTTP_11;
        let ws = h(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_of(v11, &ws).unwrap(), "websocket");
        // Two Connection lines are one list.
        let split = h(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(upgrade_of(v11, &split).unwrap(), "h2c");
        // Upgrade without the Connection option, or the option alone, or
        // an empty protocol, or HTTP/2 or 1.0: no upgrade.
        assert!(upgrade_of(v11, &h(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_of(v11, &h(&[("connection", "upgrade")])).is_none());
        assert!(upgrade_of(v11, &h(&[("connection", "upgrade"), ("upgrade", "")])).is_none());
        assert!(upgrade_of(http::Version::HTTP_2, &ws).is_none());
        assert!(upgrade_of(http::Version::HTTP_10, &ws).is_none());
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!("89ab".contains(&parts[3][..1]), "{a}");
    }

    /// What the scripted upstream does with its n-th request.
    #[derive(Clone, Copy, Debug)]
    enum Peer {
        Status(u16),
        /// Never answers.
        Hang,
        Refused,
        /// This host is out of descriptors.
        Local,
        /// Reads the whole request body, then answers 200.
        ReadBody,
        /// A trailers-only gRPC answer: 200 with this `grpc-status`.
        Grpc(u8),
    }

    #[derive(Default)]
    struct Scripted {
        /// By call index; the last one repeats.
        script: Vec<Peer>,
        calls: Mutex<Vec<SocketAddr>>,
    }

    impl HttpUpstream for Scripted {
        fn send(
            &self,
            ep: SocketAddr,
            _http2: bool,
            req: Request<Body>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_>>
        {
            let n = {
                let mut c = self.calls.lock().unwrap();
                c.push(ep);
                c.len() - 1
            };
            let peer = self.script[n.min(self.script.len() - 1)];
            Box::pin(async move {
                let ok = || Response::new(Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
                match peer {
                    Peer::Status(code) => {
                        let mut r = ok();
                        *r.status_mut() = StatusCode::from_u16(code).unwrap();
                        Ok(r)
                    }
                    Peer::Grpc(g) => {
                        let mut r = ok();
                        r.headers_mut()
                            .insert("grpc-status", HeaderValue::from(u16::from(g)));
                        Ok(r)
                    }
                    Peer::Hang => std::future::pending().await,
                    Peer::Refused => Err(UpstreamError::Connect(std::io::Error::from(
                        std::io::ErrorKind::ConnectionRefused,
                    ))),
                    Peer::Local => Err(UpstreamError::Local(std::io::Error::from_raw_os_error(
                        libc::EMFILE,
                    ))),
                    Peer::ReadBody => match req.into_body().collect().await {
                        Ok(_) => Ok(ok()),
                        Err(e) => Err(UpstreamError::Broken(e)),
                    },
                }
            })
        }
    }

    /// A client body that sends one chunk, then nothing, for ever.
    struct Stalls(bool);

    impl hyper::body::Body for Stalls {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part of it")))))
            }
        }
    }

    /// `web.t.mesh`'s `/api` route to `web` (two endpoints), with `policies`.
    fn table(policies: Config) -> Compiled {
        let text = Config::new()
            .node("c1", "east", "e1")
            .with(web(
                "c1",
                "east",
                "web",
                &[("10.1.0.1", "e1", true), ("10.1.0.2", "e1", true)],
            ))
            .with(
                RouteTable::new("web").host("web.t.mesh").http(
                    HttpRoute::new()
                        .name("api")
                        .label("route", "api")
                        .prefix("/api")
                        .to(&[Dest::service("web").port(8080)]),
                ),
            )
            .with(policies)
            .yaml();
        let v = load_str("t.yaml", &text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        let plan = compile(&v, &Health::default()).unwrap();
        Compiled::new(plan.l7[0].routes.clone()).unwrap()
    }

    fn ctx(up: Arc<Scripted>, timeouts: Timeouts) -> Ctx {
        let pool = Upstreams::new(Sockets::start(None).unwrap(), UpstreamOptions::default(), 1);
        Ctx {
            pool,
            http: up,
            obs: Observations::default(),
            bodies: Admission::new(8 << 20, 1 << 20),
            timeouts,
            telemetry: Telemetry::new(),
        }
    }

    fn scripted(script: &[Peer]) -> Arc<Scripted> {
        Arc::new(Scripted {
            script: script.to_vec(),
            ..Default::default()
        })
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::get(path)
            .header("host", "web.t.mesh")
            .body(Empty::new())
            .unwrap()
    }

    const PEER: &str = "10.255.255.1:40000";

    async fn run<B: ClientBodyIn>(ctx: &Ctx, t: &Compiled, req: Request<B>) -> (u16, Duration) {
        let start = Instant::now();
        let resp = handle(ctx, t, req, 8080, "http", PEER.parse().unwrap()).await;
        (resp.status().as_u16(), start.elapsed())
    }

    /// Outcomes recorded per endpoint: (requests, consecutive errors).
    fn recorded(ctx: &Ctx) -> HashMap<SocketAddr, (u64, u64)> {
        ctx.obs
            .snapshot()
            .into_iter()
            .map(|(ep, s)| (ep, (s.requests, s.consecutive_errors)))
            .collect()
    }

    fn retry(config: serde_json::Value) -> Config {
        Config::new().with(Policy::retry_timeout("retry", config).routes_labelled("route", "api"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_gets_504_at_the_default_upstream_timeout() {
        let up = scripted(&[Peer::Hang]);
        let c = ctx(up.clone(), Timeouts::default());
        let (status, took) = run(&c, &table(Config::new()), get("/api/x")).await;
        assert_eq!(status, 504);
        assert_eq!(
            took,
            Duration::from_secs(15),
            "Envoy's default route timeout"
        );
        let ep = up.calls.lock().unwrap()[0];
        assert_eq!(
            recorded(&c)[&ep],
            (1, 1),
            "a timeout counts against the endpoint"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_try_timeout_moves_the_retry_to_another_endpoint() {
        let up = scripted(&[Peer::Hang, Peer::Status(200)]);
        let c = ctx(up.clone(), Timeouts::default());
        let t = table(retry(json!({
            "retries": {"attempts": 2, "perTryTimeout": "1s", "retryOn": "reset"},
            "requestTimeout": "5s"
        })));
        let (status, took) = run(&c, &t, get("/api/x")).await;
        assert_eq!(status, 200);
        assert_eq!(took, Duration::from_secs(1));
        let calls = up.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_ne!(
            calls[0], calls[1],
            "the retry avoids the endpoint that failed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_bounds_every_attempt_together() {
        let up = scripted(&[Peer::Hang]);
        let c = ctx(up.clone(), Timeouts::default());
        let t = table(retry(json!({
            "retries": {"attempts": 5, "perTryTimeout": "2s", "retryOn": "reset,5xx"},
            "requestTimeout": "3s"
        })));
        let (status, took) = run(&c, &t, get("/api/x")).await;
        assert_eq!(status, 504);
        assert_eq!(
            took,
            Duration::from_secs(3),
            "2 s, then what is left of 3 s"
        );
        assert_eq!(up.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_5xx_is_retried_and_each_attempt_is_recorded() {
        let up = scripted(&[Peer::Status(503), Peer::Status(200)]);
        let c = ctx(up.clone(), Timeouts::default());
        let t = table(retry(json!({"retries": {"attempts": 1, "retryOn": "5xx"}})));
        let (status, took) = run(&c, &t, get("/api/x")).await;
        assert_eq!((status, took), (200, Duration::ZERO));
        let calls = up.calls.lock().unwrap().clone();
        let r = recorded(&c);
        assert_eq!(r[&calls[0]], (1, 1), "the 503");
        assert_eq!(r[&calls[1]], (1, 0), "the 200");
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_statuses_in_headers_are_retried_as_retry_on_says() {
        let t = table(retry(
            json!({"retries": {"attempts": 2, "retryOn": "unavailable,cancelled"}}),
        ));
        // UNAVAILABLE (14), then CANCELLED (1), then OK.
        let up = scripted(&[Peer::Grpc(14), Peer::Grpc(1), Peer::Status(200)]);
        let c = ctx(up.clone(), Timeouts::default());
        assert_eq!(run(&c, &t, get("/api/x")).await.0, 200);
        assert_eq!(up.calls.lock().unwrap().len(), 3);
        // NOT_FOUND (5) is the call's answer: not retried, passed on.
        let up = scripted(&[Peer::Grpc(5), Peer::Status(200)]);
        let c = ctx(up.clone(), Timeouts::default());
        assert_eq!(run(&c, &t, get("/api/x")).await.0, 200);
        assert_eq!(up.calls.lock().unwrap().len(), 1);
        // Without a gRPC condition, a gRPC status is not retried.
        let t = table(retry(json!({"retries": {"attempts": 2, "retryOn": "5xx"}})));
        let up = scripted(&[Peer::Grpc(14), Peer::Status(200)]);
        let c = ctx(up.clone(), Timeouts::default());
        run(&c, &t, get("/api/x")).await;
        assert_eq!(up.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_connect_counts_and_a_local_shortage_does_not() {
        let up = scripted(&[Peer::Refused]);
        let c = ctx(up.clone(), Timeouts::default());
        let (status, _) = run(&c, &table(Config::new()), get("/api/x")).await;
        assert_eq!(status, 503);
        let ep = up.calls.lock().unwrap()[0];
        assert_eq!(recorded(&c)[&ep], (1, 1));

        let up = scripted(&[Peer::Local]);
        let c = ctx(up.clone(), Timeouts::default());
        let (status, _) = run(&c, &table(Config::new()), get("/api/x")).await;
        assert_eq!(status, 503);
        assert!(
            recorded(&c).is_empty(),
            "out of descriptors is nobody's fault"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_body_that_stalls_is_the_clients_fault() {
        let up = scripted(&[Peer::ReadBody]);
        let timeouts = Timeouts {
            body: Duration::from_secs(2),
            ..Timeouts::default()
        };
        let c = ctx(up.clone(), timeouts);
        let req = Request::post("/api/upload")
            .header("host", "web.t.mesh")
            .body(Stalls(false))
            .unwrap();
        let (status, took) = run(&c, &table(Config::new()), req).await;
        assert_eq!(status, 400);
        assert_eq!(took, Duration::from_secs(2), "the body's idle timeout");
        assert!(recorded(&c).is_empty(), "the endpoint is not blamed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffered_body_that_stalls_gets_408_before_any_upstream() {
        let up = scripted(&[Peer::Status(200)]);
        let timeouts = Timeouts {
            body: Duration::from_secs(4),
            ..Timeouts::default()
        };
        let c = ctx(up.clone(), timeouts);
        // A retry policy needs the body whole.
        let t = table(retry(json!({"retries": {"attempts": 2, "retryOn": "5xx"}})));
        let req = Request::post("/api/upload")
            .header("host", "web.t.mesh")
            .body(Stalls(false))
            .unwrap();
        let (status, took) = run(&c, &t, req).await;
        assert_eq!((status, took), (408, Duration::from_secs(4)));
        assert!(up.calls.lock().unwrap().is_empty());
        let peer: SocketAddr = PEER.parse().unwrap();
        assert!(
            c.bodies.try_take(peer.ip(), 1 << 20).is_some(),
            "the stalled body's bytes were given back to the budget"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fault_delay_waits_exactly_its_time() {
        let up = scripted(&[Peer::Status(200)]);
        let c = ctx(up, Timeouts::default());
        let t = table(
            Config::new().with(
                Policy::fault_injection(
                    "delay",
                    json!({"delay": {"fixedDelay": "300ms", "percentage": 100}}),
                )
                .routes_labelled("route", "api"),
            ),
        );
        let (status, took) = run(&c, &t, get("/api/x")).await;
        assert_eq!((status, took), (200, Duration::from_millis(300)));
    }
}
