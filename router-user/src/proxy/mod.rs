//! The L7 proxy: one listener per address family serves every L7 host:port
//! east-west (the kernel hands it the connections clients make to those
//! VIPs, and records what each client dialled, which the proxy reads when it
//! accepts), and one listener per VirtualGateway listener (north-south), all
//! serving route tables with the same engine and handler: one route table,
//! two entry points.
//!
//! hyper does all HTTP (HTTP/1.1, and HTTP/2 by prior knowledge or ALPN);
//! nothing here parses it. Limits against hostile clients: 64 KiB of request
//! headers (431 beyond), 10 s to send them (slow clients are closed), at most
//! 100 concurrent HTTP/2 streams per connection and a cap on reset streams
//! (rapid-reset floods), connections capped in all (from the file
//! descriptor limit) and per client address (per VIP:port east-west), an
//! idle timeout on every connection, 10 s for a TLS handshake, and the body
//! limits of [`handler`] (a memory budget and a deadline).
//!
//! Listener lifecycle ([`Proxy::prepare`] / [`Proxy::retire`]): listeners are
//! bound and the new tables published *before* the kernel points at them, and
//! old listeners are closed only after the kernel moved; accepted
//! connections always finish on the tables they started with or newer. A
//! gateway listener whose TLS settings change keeps its socket.
pub mod access_log;
pub mod engine;
pub mod handler;
pub mod sni;
pub mod upstream;
pub mod workers;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::limits::{self, Activity, Admission, Watched};
use crate::telemetry::Telemetry;
use access_log::AccessLog;
use handler::Ctx;
pub use handler::{Compiled, Observations, Outcome, Timeouts};
use upstream::{Body, UpstreamOptions, Upstreams};
use workers::Workers;

use crate::{
    datapath::{OrigTable, sync::Bound},
    netns::Sockets,
    plan::{
        ClientCerts, GatewayListener, Plan, ProxyPlan, SecretPem, TlsFiles, select_gateway_host,
    },
};

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// Buffered request bodies in memory at once, in all.
const BODY_BUDGET: usize = 64 << 20;

/// A gateway listener's tables, selected by Host.
#[derive(Debug)]
pub struct GatewayTables {
    pub listener: GatewayListener,
    /// `(host patterns, table)`, in plan order.
    pub hosts: Vec<(Vec<String>, Compiled)>,
}

impl GatewayTables {
    /// Exact host names first, then the longest matching wildcard
    /// ([`select_gateway_host`]).
    pub fn select(&self, host: &str) -> Option<&Compiled> {
        let host = engine::split_host_port(host).0.trim_end_matches('.');
        select_gateway_host(self.hosts.iter().map(|(hs, _)| &hs[..]), host)
            .map(|i| &self.hosts[i].1)
    }
}

/// One east-west L7 service.
#[derive(Debug)]
pub struct EastWest {
    pub host: String,
    pub port: u16,
    pub table: Compiled,
}

/// The route tables every listener serves; replaced as a whole on each plan.
#[derive(Debug, Default)]
pub struct Tables {
    /// VIP:port (each VIP of the service) -> the service.
    pub east_west: HashMap<SocketAddr, Arc<EastWest>>,
    /// Gateway port -> tables.
    pub gateways: HashMap<u16, GatewayTables>,
}

impl Tables {
    /// The plan's tables, counting into `t` (east-west services as
    /// `host:port`, gateway tables as `gateway:<port>/<table>`) and logging
    /// into `log`.
    pub fn compile(plan: &Plan, t: &Telemetry, log: Option<Arc<AccessLog>>) -> Result<Tables> {
        let mut r = Tables::default();
        for s in &plan.l7 {
            let service = format!("{}:{}", s.host, s.port);
            let c = Arc::new(EastWest {
                host: s.host.clone(),
                port: s.port,
                table: Compiled::instrumented(s.routes.clone(), t, &service, log.clone())
                    .map_err(anyhow::Error::msg)?,
            });
            for vip in &s.vips {
                r.east_west.insert(SocketAddr::new(*vip, s.port), c.clone());
            }
        }
        for l in &plan.gateways {
            let mut hosts = Vec::new();
            for h in &l.hosts {
                let service = format!("gateway:{}/{}", l.port, h.table);
                hosts.push((
                    h.hosts.clone(),
                    Compiled::instrumented(h.routes.clone(), t, &service, log.clone())
                        .map_err(anyhow::Error::msg)?,
                ));
            }
            r.gateways.insert(
                l.port,
                GatewayTables {
                    listener: l.clone(),
                    hosts,
                },
            );
        }
        Ok(r)
    }
}

/// Which table a connection is served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    /// The VIP:port the client dialled.
    EastWest(SocketAddr),
    Gateway(u16),
}

/// What connections are counted by, for the per-key cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ConnKey {
    /// East-west clients are all local: fairness is between services.
    Service(SocketAddr),
    /// Gateway clients, by address.
    Peer(IpAddr),
}

/// How a gateway listener serves (TLS acceptor, HTTP or TCP).
#[derive(Clone)]
struct Shape {
    http: bool,
    passthrough: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    files: Option<TlsFiles>,
}

impl Shape {
    /// How `g` serves (its TLS files read now).
    fn of(g: &GatewayListener) -> Result<Shape> {
        let tls = g
            .tls
            .as_ref()
            .map(load_tls)
            .transpose()
            .with_context(|| format!("gateway {} port {}", g.gateway, g.port))?;
        Ok(Shape {
            http: g.http,
            passthrough: g.passthrough,
            tls,
            files: g.tls.clone(),
        })
    }
}

/// The accept tasks of one listening address (one per worker); aborted on
/// drop.
struct Running {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Gateway {
    /// One socket per address of `spec.proxy.gatewayAddresses`.
    running: Vec<Running>,
    shape: watch::Sender<Shape>,
}

/// What a workload's gateway listeners were opened for (opened again when
/// it changes).
#[derive(Debug, PartialEq)]
struct GatewaySig {
    addrs: Vec<IpAddr>,
    /// (port, http, passthrough, TLS files) of each listener.
    listeners: Vec<(u16, bool, bool, Option<TlsFiles>)>,
}

/// Settings that do not come from the plan.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Connections at once, in all (sized from the descriptor limit: each
    /// takes two descriptors, the client's and the endpoint's).
    pub max_conns: usize,
    /// The network namespace the listeners are in (its cookie), for the
    /// original destinations the kernel records.
    pub netns: u64,
    /// Where requests are counted.
    pub telemetry: Arc<Telemetry>,
    /// Worker threads serving connections ([`workers`]).
    pub threads: usize,
}

pub struct Proxy {
    workers: Arc<Workers>,
    socks: Sockets,
    ctx: Arc<Ctx>,
    routing: watch::Sender<Arc<Tables>>,
    conns: Arc<Admission<ConnKey>>,
    orig: Arc<OrigTable>,
    opts: ProxyOptions,
    idle: watch::Sender<(Duration, Duration)>,
    /// The east-west listeners serving, and those bound for the next plan.
    east_west: Vec<Running>,
    next_east_west: Option<Vec<Running>>,
    /// East-west listeners inside workloads' namespaces, by cookie, and the
    /// workload's own addresses they were opened with.
    workloads: BTreeMap<u64, (Vec<Running>, handler::OwnAddrs)>,
    /// Gateway listeners inside workloads' namespaces (gateway pods), by
    /// cookie, with what they were opened for.
    workload_gateways: BTreeMap<u64, (GatewaySig, Vec<Running>)>,
    gateways: BTreeMap<u16, Gateway>,
    /// The access log's writer (its path; None: stdout) and queue, while a
    /// plan asks for one.
    log_writer: Option<(
        Option<String>,
        tokio::sync::mpsc::Sender<String>,
        JoinHandle<()>,
    )>,
}

fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(64 * 1024)
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// PEM text and what messages call it.
struct Pem {
    bytes: Vec<u8>,
    what: String,
}

impl Pem {
    fn file(path: &str, what: &str) -> Result<Pem> {
        Ok(Pem {
            bytes: std::fs::read(path).with_context(|| format!("reading {what} {path}"))?,
            what: format!("{what} {path}"),
        })
    }
    fn secret(text: &str, key: &str, s: &SecretPem) -> Pem {
        Pem {
            bytes: text.as_bytes().to_vec(),
            what: format!("{key} of Secret {}", s.name),
        }
    }
    fn certs(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", self.what))
    }
}

fn load_tls(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
    // From a Secret (PEM text) or from files.
    let (cert, key) = match &files.secret {
        Some(s) => (
            Pem::secret(&s.cert, "tls.crt", s),
            Pem::secret(&s.key, "tls.key", s),
        ),
        None => (
            Pem::file(&files.cert, "certificate")?,
            Pem::file(&files.key, "private key")?,
        ),
    };
    // The client CA: files.rootCa, else the Secret's ca.crt.
    let ca = match (&files.ca, &files.secret) {
        (Some(path), _) => Some(Pem::file(path, "the client CA")?),
        (None, Some(s)) => s.ca.as_deref().map(|ca| Pem::secret(ca, "ca.crt", s)),
        _ => None,
    };
    let certs = cert.certs()?;
    let private_key = PrivateKeyDer::from_pem_slice(&key.bytes)
        .with_context(|| format!("parsing {}", key.what))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (ca, files.client_certs) {
        (Some(ca), ClientCerts::Required | ClientCerts::Optional) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in ca.certs()? {
                roots
                    .add(c)
                    .with_context(|| format!("{} is not a usable CA certificate", ca.what))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if files.client_certs == ClientCerts::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .with_context(|| format!("verifying client certificates with {}", ca.what))?,
            )
        }
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, private_key)
        .with_context(|| format!("{} does not go with {}", cert.what, key.what))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

#[allow(clippy::too_many_arguments)]
async fn serve_http<I>(
    io: I,
    activity: Activity,
    (idle, tunnel_idle): (Duration, Duration),
    peer: SocketAddr,
    key: Key,
    scheme: &'static str,
    routing: watch::Receiver<Arc<Tables>>,
    ctx: Arc<Ctx>,
    // The client workload's own addresses (none: not a workload, or hairpin
    // allowed), on each request for the handler's pick.
    own: handler::OwnAddrs,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Each request may take the connection over (an HTTP upgrade: a
    // WebSocket); its tunnel holds a sender, and this task, which holds
    // the connection's admission ticket, lasts until every sender is gone.
    let (hold, mut tunnels) = tokio::sync::mpsc::channel::<()>(1);
    let scope = handler::TunnelScope {
        hold,
        activity: activity.clone(),
        idle: tunnel_idle,
    };
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let routing = routing.borrow().clone();
        let ctx = ctx.clone();
        req.extensions_mut().insert(scope.clone());
        if !own.is_empty() {
            req.extensions_mut().insert(own.clone());
        }
        async move { Ok::<_, Infallible>(route_request(&routing, &ctx, key, scheme, peer, req).await) }
    });
    let builder = http_builder();
    let mut conn = Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(io), svc));
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = activity.idle_for(idle) => {
            // Idle: say goodbye politely (GOAWAY on HTTP/2), then give the
            // connection a moment to finish what is in flight.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
        }
    }
    drop(conn);
    let _ = tunnels.recv().await;
}

async fn route_request(
    routing: &Tables,
    ctx: &Ctx,
    key: Key,
    scheme: &str,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    match key {
        Key::EastWest(vip) => match routing.east_west.get(&vip) {
            Some(s) => handler::handle(ctx, &s.table, req, s.port, scheme, peer).await,
            None => handler::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "this service is no longer served by the proxy",
            ),
        },
        Key::Gateway(p) => {
            let Some(gw) = routing.gateways.get(&p) else {
                return handler::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this gateway listener is no longer configured",
                );
            };
            if gw.listener.https_redirect && scheme == "http" {
                let host = handler::request_host(req.uri(), req.headers());
                let host = engine::split_host_port(host.as_deref().unwrap_or(""))
                    .0
                    .to_string();
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let mut r = handler::text(StatusCode::MOVED_PERMANENTLY, "");
                if let Ok(v) = format!("https://{host}{pq}").parse() {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                return r;
            }
            let host = req
                .uri()
                .authority()
                .map(|a| a.host().to_string())
                .or_else(|| handler::host_header(req.headers()))
                .unwrap_or_default();
            match gw.select(&host) {
                Some(table) => handler::handle(ctx, table, req, p, scheme, peer).await,
                None => handler::text(
                    StatusCode::NOT_FOUND,
                    format!("no route table for host `{host}` on this gateway"),
                ),
            }
        }
    }
}

/// The destinations of the first forwarding route of `table`.
fn first_forward(table: &Compiled) -> Option<Vec<crate::plan::L7Dest>> {
    table.routes.iter().find_map(|route| match &route.action {
        crate::plan::L7Action::Forward(f) => Some(f.dests.clone()),
        _ => None,
    })
}

/// A TCP gateway listener: each connection to an endpoint of the first
/// route's destinations.
async fn serve_tcp(
    client: tokio::net::TcpStream,
    port: u16,
    idle: Duration,
    routing: watch::Receiver<Arc<Tables>>,
    ctx: Arc<Ctx>,
) {
    let target = {
        let r = routing.borrow();
        r.gateways
            .get(&port)
            .and_then(|gw| gw.hosts.iter().find_map(|(_, c)| first_forward(c)))
    };
    if let Some(dests) = target {
        forward_raw(client, &[], &dests, idle, &ctx).await;
    }
}

/// A PASSTHROUGH gateway listener: read the ClientHello (within the TLS
/// handshake timeout, at most [`sni::MAX_HELLO`] bytes), pick the `tls`
/// route by its SNI (exact names first, then the longest wildcard), and
/// forward the connection undecrypted, the bytes already read first. No
/// SNI, no matching route, or not TLS: the connection is closed.
async fn serve_passthrough(
    mut client: tokio::net::TcpStream,
    port: u16,
    idle: Duration,
    routing: watch::Receiver<Arc<Tables>>,
    ctx: Arc<Ctx>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + TLS_HANDSHAKE;
    let name = loop {
        match tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        match sni::client_hello(&buf) {
            sni::Hello::NeedMore if buf.len() < sni::MAX_HELLO => continue,
            sni::Hello::Sni(Some(name)) => break name,
            _ => return,
        }
    };
    let target = {
        let r = routing.borrow();
        r.gateways
            .get(&port)
            .and_then(|gw| gw.select(&name))
            .and_then(first_forward)
    };
    if let Some(dests) = target {
        forward_raw(client, &buf, &dests, idle, &ctx).await;
    }
}

/// Connect to an endpoint of `dests` (by weight, then by share) and copy
/// bytes both ways until either side closes or both are idle for `idle`;
/// `first` (what was read from the client already) goes ahead.
async fn forward_raw(
    client: tokio::net::TcpStream,
    first: &[u8],
    dests: &[crate::plan::L7Dest],
    idle: Duration,
    ctx: &Ctx,
) {
    use tokio::io::AsyncWriteExt;
    let Some((_, ep)) = handler::pick(dests, None, &[]) else {
        return;
    };
    match ctx.pool.connect(ep).await {
        Ok(up) => {
            ctx.obs.record(ep, handler::Outcome::Ok);
            let activity = Activity::default();
            let mut a = Watched::new(client, activity.clone());
            let mut b = Watched::new(up, activity.clone());
            if !first.is_empty() && b.write_all(first).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                _ = activity.idle_for(idle) => {}
            }
        }
        Err(upstream::UpstreamError::Local(_)) => {}
        Err(_) => ctx.obs.record(ep, handler::Outcome::ConnectFailure),
    }
}

/// Everything an accept loop needs.
#[derive(Clone)]
struct Acceptor {
    routing: watch::Receiver<Arc<Tables>>,
    ctx: Arc<Ctx>,
    conns: Arc<Admission<ConnKey>>,
    idle: watch::Receiver<(Duration, Duration)>,
    workers: Arc<Workers>,
}

/// Accept on `ls` (one listener per worker, [`Sockets::listen_shared`]),
/// each on its worker, until the tasks are aborted, backing off on resource
/// errors (`what` names the listener in the log), and hand each connection
/// to `each`, on the worker that accepted it (a `tokio::spawn` there stays
/// there).
fn accept_loop(
    ls: Vec<std::net::TcpListener>,
    what: &'static str,
    workers: &Workers,
    each: impl Fn(tokio::net::TcpStream, SocketAddr) + Send + Sync + 'static,
) -> Result<Running> {
    let addr = ls
        .first()
        .context("no listener bound")?
        .local_addr()
        .context("a bound listener has an address")?;
    let each = Arc::new(each);
    let tasks = ls
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let each = each.clone();
            workers.spawn_on(i, async move {
                let l = match TcpListener::from_std(l) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("{what} {addr}: cannot accept connections: {e}");
                        return;
                    }
                };
                let mut logged = None;
                loop {
                    match l.accept().await {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            each(stream, peer);
                        }
                        Err(e) => limits::accept_backoff(&e, what, &mut logged).await,
                    }
                }
            })
        })
        .collect();
    Ok(Running { addr, tasks })
}

impl Acceptor {
    /// East-west: the kernel recorded what each client dialled; a
    /// connection it did not hand over (someone dialling the port directly)
    /// has no entry and is closed.
    ///
    /// `own`: the client workload's own addresses (the proxy sends none of
    /// its requests there when another endpoint can be picked).
    fn spawn_east_west(
        self,
        l: Vec<std::net::TcpListener>,
        orig: Arc<OrigTable>,
        netns: u64,
        own: handler::OwnAddrs,
    ) -> Result<Running> {
        let workers = self.workers.clone();
        accept_loop(l, "L7 proxy", &workers, move |stream, peer| {
            let Some(vip) = orig.take_tcp(netns, peer) else {
                tracing::debug!(%peer, "closing a proxy connection the kernel did not hand over");
                return;
            };
            let Some(ticket) = self.conns.try_take(ConnKey::Service(vip), 1) else {
                return; // over a cap: closed
            };
            let (routing, ctx, own) = (self.routing.clone(), self.ctx.clone(), own.clone());
            let idle = *self.idle.borrow();
            tokio::spawn(async move {
                let activity = Activity::default();
                let io = Watched::new(stream, activity.clone());
                let key = Key::EastWest(vip);
                serve_http(io, activity, idle, peer, key, "http", routing, ctx, own).await;
                drop(ticket);
            });
        })
    }

    fn spawn_gateway(
        self,
        l: Vec<std::net::TcpListener>,
        port: u16,
        shape: watch::Receiver<Shape>,
    ) -> Result<Running> {
        let workers = self.workers.clone();
        accept_loop(l, "gateway listener", &workers, move |stream, peer| {
            let Some(ticket) = self.conns.try_take(ConnKey::Peer(peer.ip()), 1) else {
                return; // over a cap: closed
            };
            let (routing, ctx, shape) = (
                self.routing.clone(),
                self.ctx.clone(),
                shape.borrow().clone(),
            );
            let (idle, tcp_idle) = *self.idle.borrow();
            let key = Key::Gateway(port);
            tokio::spawn(async move {
                let activity = Activity::default();
                match (shape.http, shape.tls) {
                    _ if shape.passthrough => {
                        serve_passthrough(stream, port, tcp_idle, routing, ctx).await
                    }
                    (false, _) => serve_tcp(stream, port, tcp_idle, routing, ctx).await,
                    (true, Some(acc)) => {
                        let io = Watched::new(stream, activity.clone());
                        if let Ok(Ok(s)) = tokio::time::timeout(TLS_HANDSHAKE, acc.accept(io)).await
                        {
                            let idle = (idle, tcp_idle);
                            serve_http(
                                s,
                                activity,
                                idle,
                                peer,
                                key,
                                "https",
                                routing,
                                ctx,
                                Default::default(),
                            )
                            .await;
                        }
                    }
                    (true, None) => {
                        let io = Watched::new(stream, activity.clone());
                        let idle = (idle, tcp_idle);
                        serve_http(
                            io,
                            activity,
                            idle,
                            peer,
                            key,
                            "http",
                            routing,
                            ctx,
                            Default::default(),
                        )
                        .await
                    }
                }
                drop(ticket);
            });
        })
    }
}

impl Proxy {
    pub fn new(
        socks: Sockets,
        orig: Arc<OrigTable>,
        plan: &ProxyPlan,
        opts: ProxyOptions,
    ) -> Result<Self> {
        let workers = Arc::new(Workers::start(opts.threads)?);
        let pool = Upstreams::new(socks.clone(), UpstreamOptions::default(), workers.slots());
        let ctx = Arc::new(Ctx {
            http: Arc::new(pool.clone()),
            pool,
            obs: Observations::default(),
            bodies: Admission::new(BODY_BUDGET, BODY_BUDGET / 8),
            timeouts: Timeouts::from(plan),
            telemetry: opts.telemetry.clone(),
        });
        let (routing, _) = watch::channel(Arc::new(Tables::default()));
        let (idle, _) = watch::channel((plan.idle(), plan.tcp_idle()));
        Ok(Proxy {
            workers,
            socks,
            ctx,
            routing,
            conns: Admission::new(opts.max_conns, (opts.max_conns / 8).max(16)),
            orig,
            opts,
            idle,
            east_west: Vec::new(),
            next_east_west: None,
            workloads: BTreeMap::new(),
            workload_gateways: BTreeMap::new(),
            gateways: BTreeMap::new(),
            log_writer: None,
        })
    }

    pub fn observations(&self) -> Observations {
        self.ctx.obs.clone()
    }

    fn acceptor(&self) -> Acceptor {
        Acceptor {
            routing: self.routing.subscribe(),
            ctx: self.ctx.clone(),
            conns: self.conns.clone(),
            idle: self.idle.subscribe(),
            workers: self.workers.clone(),
        }
    }

    /// Bind the east-west listeners for `want`. The IPv6 one is optional:
    /// where IPv6 is off (`::1` cannot be bound) the proxy goes on without it.
    async fn bind_east_west(
        &self,
        socks: &Sockets,
        netns: u64,
        want: &ProxyPlan,
        own: &handler::OwnAddrs,
    ) -> Result<Vec<Running>> {
        let mut out = Vec::new();
        for a in want.listeners() {
            match socks.listen_shared(a, self.workers.threads()).await {
                Ok(l) => out.push(self.acceptor().spawn_east_west(
                    l,
                    self.orig.clone(),
                    netns,
                    own.clone(),
                )?),
                Err(e)
                    if a.is_ipv6()
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
                        ) =>
                {
                    tracing::warn!(
                        "no IPv6 L7 proxy listener: {a} cannot be bound here ({e}); IPv6 \
                         clients of L7 services are refused. Set RouterConfig \
                         spec.proxy.listen6: \"\" to say so"
                    );
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "binding the L7 proxy listener {a}: is another process using the port? \
                         Set RouterConfig spec.proxy.port (a privileged port)"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Compile the plan's tables, bind the listeners it needs that are not
    /// open yet (new east-west addresses are bound beside the old ones), and
    /// publish the tables. Fails, changing nothing that serves, when a table
    /// does not compile or a port cannot be bound. Returns the east-west
    /// listeners the kernel should point at.
    /// Read the TLS files of the gateway listeners serving `plan` again
    /// (SIGHUP with nothing else to change: a certificate renewed in place).
    /// A listener whose files do not load keeps what it has.
    pub fn reload_tls(&self, plan: &Plan) {
        for g in &plan.gateways {
            let (Some(files), Some(running)) = (&g.tls, self.gateways.get(&g.port)) else {
                continue;
            };
            match load_tls(files) {
                Ok(tls) => {
                    running.shape.send_modify(|s| s.tls = Some(tls));
                }
                Err(e) => tracing::warn!(
                    gateway = %g.gateway,
                    port = g.port,
                    "could not read the listener's TLS files again ({e:#}); it keeps serving \
                     the certificate it has"
                ),
            }
        }
    }

    /// The plan's access log (its writer started, or moved when the path
    /// changed; stopped when no policy asks for one).
    fn access_log(&mut self, plan: &Plan) -> Option<Arc<AccessLog>> {
        let Some(p) = &plan.access_log else {
            if let Some((_, _, task)) = self.log_writer.take() {
                task.abort();
            }
            return None;
        };
        let path = plan.proxy.access_log_path.clone();
        let (written, dropped) = self.opts.telemetry.access_log_counters();
        if self.log_writer.as_ref().is_none_or(|(p, _, _)| *p != path) {
            if let Some((_, _, old)) = self.log_writer.take() {
                old.abort();
            }
            let (tx, task) = access_log::spawn_writer(path.clone(), written, dropped.clone());
            self.log_writer = Some((path, tx, task));
        }
        let tx = self.log_writer.as_ref().map(|(_, tx, _)| tx.clone())?;
        Some(Arc::new(AccessLog::new(p, tx, dropped)))
    }

    pub async fn prepare(&mut self, plan: &Plan) -> Result<Bound> {
        let log = self.access_log(plan);
        let routing = Tables::compile(plan, &self.opts.telemetry, log)?;
        let want: Vec<SocketAddr> = plan.proxy.listeners();
        let serving: Vec<SocketAddr> = self.east_west.iter().map(|r| r.addr).collect();
        let needs_bind = !want.iter().all(|a| serving.contains(a)) || self.east_west.is_empty();
        let next = if needs_bind {
            Some(
                self.bind_east_west(
                    &self.socks,
                    self.opts.netns,
                    &plan.proxy,
                    &handler::OwnAddrs::default(),
                )
                .await?,
            )
        } else {
            None
        };
        let mut opened: Vec<(u16, Gateway)> = Vec::new();
        // Sockets for addresses a serving port does not have yet.
        let mut added: Vec<(u16, Running)> = Vec::new();
        let addrs = &plan.proxy.gateway_addresses;
        // Gateways whose `workloads` select gateway pods open there (see
        // `gateways_inside`), not here.
        for g in plan.gateways.iter().filter(|g| g.opens_in(None)) {
            let shape = Shape::of(g)?;
            let workers = self.workers.threads();
            let bind = |a: SocketAddr| {
                let socks = self.socks.clone();
                async move {
                    socks.listen_shared(a, workers).await.with_context(|| {
                        format!(
                            "binding gateway {} listener {a}: is the port in use, or is {} \
                             not an address of this namespace (spec.proxy.gatewayAddresses)?",
                            g.gateway,
                            a.ip()
                        )
                    })
                }
            };
            if let Some(running) = self.gateways.get(&g.port) {
                // The same sockets serve on; new connections get the new
                // TLS settings (certificates, on/off) or protocol. With TLS
                // on, the files were read again above: a certificate renewed
                // in place is served from this reload on.
                let old = running.shape.borrow();
                let same = old.http == shape.http
                    && old.passthrough == shape.passthrough
                    && old.files == shape.files
                    && shape.tls.is_none();
                drop(old);
                if !same {
                    running.shape.send_replace(shape);
                }
                for ip in addrs {
                    let a = SocketAddr::new(*ip, g.port);
                    if running.running.iter().all(|r| r.addr != a) {
                        let l = bind(a).await?;
                        let rx = running.shape.subscribe();
                        added.push((g.port, self.acceptor().spawn_gateway(l, g.port, rx)?));
                    }
                }
                continue;
            }
            let (tx, _) = watch::channel(shape);
            let mut running = Vec::new();
            for ip in addrs {
                let l = bind(SocketAddr::new(*ip, g.port)).await?;
                running.push(self.acceptor().spawn_gateway(l, g.port, tx.subscribe())?);
            }
            opened.push((g.port, Gateway { running, shape: tx }));
        }
        self.idle
            .send_replace((plan.proxy.idle(), plan.proxy.tcp_idle()));
        self.routing.send_replace(Arc::new(routing));
        self.gateways.extend(opened);
        for (port, r) in added {
            if let Some(g) = self.gateways.get_mut(&port) {
                g.running.push(r);
            }
        }
        let bound_on: Vec<SocketAddr> = match &next {
            Some(n) => n.iter().map(|r| r.addr).collect(),
            None => serving,
        };
        if next.is_some() {
            self.next_east_west = next;
        }
        Ok(Bound {
            proxy4: bound_on.iter().copied().find(SocketAddr::is_ipv4),
            proxy6: bound_on.iter().copied().find(SocketAddr::is_ipv6),
            ..Bound::default()
        })
    }

    /// Serve east-west connections from inside a workload's namespace
    /// (cookie `netns`, sockets made by `socks`) on the addresses `proxy`
    /// asks for; again after the plan moved them (closed first, then bound:
    /// the workload's L7 VIPs are refused for the moment in between). The
    /// connections to endpoints leave from the daemon's namespace, as the
    /// node's other proxied connections do. Returns the addresses bound.
    pub async fn serve_in(
        &mut self,
        netns: u64,
        socks: &Sockets,
        proxy: &ProxyPlan,
        gateways: &[&GatewayListener],
        own: handler::OwnAddrs,
    ) -> Result<Bound> {
        self.gateways_inside(netns, socks, &proxy.gateway_addresses, gateways)
            .await?;
        let want = proxy.listeners();
        let same = self
            .workloads
            .get(&netns)
            .is_some_and(|(r, o)| *o == own && r.iter().map(|r| r.addr).eq(want.iter().copied()));
        if !same {
            self.workloads.remove(&netns);
            let running = self.bind_east_west(socks, netns, proxy, &own).await?;
            self.workloads.insert(netns, (running, own));
        }
        let on = &self.workloads[&netns].0;
        Ok(Bound {
            proxy4: on.iter().map(|r| r.addr).find(SocketAddr::is_ipv4),
            proxy6: on.iter().map(|r| r.addr).find(SocketAddr::is_ipv6),
            ..Bound::default()
        })
    }

    /// Stop serving in a workload's namespace (connections already accepted
    /// go on).
    pub fn leave(&mut self, netns: u64) {
        self.workloads.remove(&netns);
        self.workload_gateways.remove(&netns);
    }

    /// The gateway listeners of a gateway workload (a VirtualGateway whose
    /// `workloads` select it), opened in its namespace on
    /// `spec.proxy.gatewayAddresses`; opened again (closed first) when they
    /// change. They serve the same tables as the node's gateway listeners
    /// would (by port). A certificate renewed in place is read on the next
    /// plan that changes the listener, not on SIGHUP.
    async fn gateways_inside(
        &mut self,
        netns: u64,
        socks: &Sockets,
        addrs: &[IpAddr],
        gateways: &[&GatewayListener],
    ) -> Result<()> {
        let sig = GatewaySig {
            addrs: addrs.to_vec(),
            listeners: gateways
                .iter()
                .map(|g| (g.port, g.http, g.passthrough, g.tls.clone()))
                .collect(),
        };
        if self
            .workload_gateways
            .get(&netns)
            .is_some_and(|(s, _)| *s == sig)
        {
            return Ok(());
        }
        self.workload_gateways.remove(&netns);
        if gateways.is_empty() {
            return Ok(());
        }
        let mut running = Vec::new();
        for g in gateways {
            let (tx, _) = watch::channel(Shape::of(g)?);
            for ip in addrs {
                let a = SocketAddr::new(*ip, g.port);
                let l = socks.listen_shared(a, self.workers.threads()).await.with_context(|| {
                    format!(
                        "binding gateway {} listener {a} in the workload's network namespace: is \
                         the port in use there?",
                        g.gateway
                    )
                })?;
                running.push(self.acceptor().spawn_gateway(l, g.port, tx.subscribe())?);
            }
        }
        self.workload_gateways.insert(netns, (sig, running));
        Ok(())
    }

    /// The gateway listeners open in a workload's namespace.
    pub fn gateways_in(&self, netns: u64) -> Vec<SocketAddr> {
        self.workload_gateways
            .get(&netns)
            .map(|(_, r)| r.iter().map(|r| r.addr).collect())
            .unwrap_or_default()
    }

    /// Close what the plan no longer uses (call after the kernel moved).
    pub fn retire(&mut self, plan: &Plan) {
        if let Some(next) = self.next_east_west.take() {
            self.east_west = next;
        }
        let keep: std::collections::BTreeSet<u16> = plan
            .gateways
            .iter()
            .filter(|g| g.opens_in(None))
            .map(|g| g.port)
            .collect();
        self.gateways.retain(|p, _| keep.contains(p));
        let addrs = &plan.proxy.gateway_addresses;
        for g in self.gateways.values_mut() {
            g.running.retain(|r| addrs.contains(&r.addr.ip()));
        }
    }

    /// Listening addresses, for logs and tests.
    pub fn ports(&self) -> Vec<String> {
        self.east_west
            .iter()
            .map(|r| format!("proxy:{}", r.addr))
            .chain(
                self.gateways
                    .values()
                    .flat_map(|g| &g.running)
                    .map(|r| format!("gateway:{}", r.addr)),
            )
            .collect()
    }

    /// Connections in the proxy now (all listeners).
    pub fn connections(&self) -> usize {
        self.conns.used()
    }
}
