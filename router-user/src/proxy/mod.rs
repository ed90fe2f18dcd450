//! The L7 proxy: one listener per L7 host:port (east-west; the kernel hands
//! it the connections clients make to the VIP) and one per VirtualGateway
//! listener (north-south), all serving route tables with the same engine and
//! handler: one route table, two entry points.
//!
//! hyper does all HTTP (HTTP/1.1, and HTTP/2 by prior knowledge or ALPN);
//! nothing here parses it. Limits against hostile clients: 64 KiB of request
//! headers (431 beyond), 10 s to send them (slow clients are closed), at most
//! 100 concurrent HTTP/2 streams per connection and a cap on reset streams
//! (rapid-reset floods), 4,096 connections per listener, 10 s for a TLS
//! handshake.
//!
//! Listener lifecycle ([`Proxy::prepare`] / [`Proxy::retire`]): new listeners
//! are bound and the new tables published *before* the kernel points VIPs at
//! them, and old listeners are closed only after the kernel stopped; accepted
//! connections always finish on the tables they started with or newer.
pub mod engine;
pub mod handler;
pub mod upstream;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
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
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinHandle,
};

use handler::Ctx;
pub use handler::{Compiled, Observations, Outcome};
use upstream::{Body, Upstreams};

use crate::{
    compile::l7::host_matches,
    netns::Sockets,
    plan::{GatewayListener, Plan, TlsFiles},
};

const MAX_CONNS: usize = 4096;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// A gateway listener's tables, selected by Host.
#[derive(Debug)]
pub struct GatewayTables {
    pub listener: GatewayListener,
    /// `(host patterns, table)`, in plan order.
    pub hosts: Vec<(Vec<String>, Compiled)>,
}

impl GatewayTables {
    /// Exact host names first, then the longest matching wildcard.
    pub fn select(&self, host: &str) -> Option<&Compiled> {
        let host = engine::split_host_port(host).0.trim_end_matches('.');
        if let Some((_, c)) = self.hosts.iter().find(|(hs, _)| {
            hs.iter()
                .any(|h| !h.starts_with('*') && host_matches(h, host))
        }) {
            return Some(c);
        }
        self.hosts
            .iter()
            .filter_map(|(hs, c)| {
                hs.iter()
                    .filter(|h| h.starts_with('*') && host_matches(h, host))
                    .map(|h| h.len())
                    .max()
                    .map(|l| (l, c))
            })
            .max_by_key(|(l, _)| *l)
            .map(|(_, c)| c)
    }
}

/// What every listener routes with; replaced as a whole on each plan.
#[derive(Debug, Default)]
pub struct Routing {
    /// Proxy port -> (host, port, table).
    pub east_west: HashMap<u16, (String, u16, Compiled)>,
    /// Gateway port -> tables.
    pub gateways: HashMap<u16, GatewayTables>,
}

impl Routing {
    pub fn compile(plan: &Plan) -> Result<Routing> {
        let mut r = Routing::default();
        for s in &plan.l7 {
            let c = Compiled::new(s.routes.clone()).map_err(anyhow::Error::msg)?;
            r.east_west
                .insert(s.proxy_port, (s.host.clone(), s.port, c));
        }
        for l in &plan.gateways {
            let mut hosts = Vec::new();
            for h in &l.hosts {
                hosts.push((
                    h.hosts.clone(),
                    Compiled::new(h.routes.clone()).map_err(anyhow::Error::msg)?,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    EastWest(u16),
    Gateway(u16),
}

struct Running {
    tasks: Vec<JoinHandle<()>>,
    /// For gateways: what the listener was bound with (TLS files, kind).
    shape: Option<(bool, Option<TlsFiles>)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Proxy {
    socks: Sockets,
    ctx: Arc<Ctx>,
    routing: watch::Sender<Arc<Routing>>,
    running: BTreeMap<Key, Running>,
    listen4: Ipv4Addr,
    listen6: Option<std::net::Ipv6Addr>,
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
        .keep_alive_interval(Duration::from_secs(30));
    b
}

fn load_tls(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading certificate {}", files.cert))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", files.cert))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading private key {}", files.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "certificate {} does not go with key {}",
                files.cert, files.key
            )
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    key: Key,
    scheme: &'static str,
    routing: watch::Receiver<Arc<Routing>>,
    ctx: Arc<Ctx>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let routing = routing.borrow().clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route_request(&routing, &ctx, key, scheme, peer, req).await) }
    });
    let _ = http_builder().serve_connection(TokioIo::new(io), svc).await;
}

async fn route_request(
    routing: &Routing,
    ctx: &Ctx,
    key: Key,
    scheme: &str,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    match key {
        Key::EastWest(p) => match routing.east_west.get(&p) {
            Some((_, port, table)) => handler::handle(ctx, table, req, *port, scheme, peer).await,
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

/// A TCP gateway listener: each connection to an endpoint of the first
/// route's destinations (per-connection weighted choice).
async fn serve_tcp(
    mut client: tokio::net::TcpStream,
    port: u16,
    routing: watch::Receiver<Arc<Routing>>,
    ctx: Arc<Ctx>,
) {
    let target = {
        let r = routing.borrow();
        r.gateways.get(&port).and_then(|gw| {
            gw.hosts
                .iter()
                .flat_map(|(_, c)| c.routes.iter())
                .find_map(|route| match &route.action {
                    crate::plan::L7Action::Forward(f) => Some(f.dests.clone()),
                    _ => None,
                })
        })
    };
    let Some(dests) = target else { return };
    let live: Vec<_> = dests.iter().filter(|d| !d.endpoints.is_empty()).collect();
    let Some(dest) = live.get(fastrand::usize(0..live.len().max(1))) else {
        return;
    };
    let ep = dest.endpoints[fastrand::usize(0..dest.endpoints.len())].endpoint;
    match ctx.upstreams.socks.connect(ep).await {
        Ok(mut up) => {
            ctx.obs.record(ep, handler::Outcome::Ok);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        }
        Err(_) => ctx.obs.record(ep, handler::Outcome::ConnectFailure),
    }
}

fn spawn_accept(
    l: TcpListener,
    key: Key,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tcp: bool,
    routing: watch::Receiver<Arc<Routing>>,
    ctx: Arc<Ctx>,
) -> JoinHandle<()> {
    let limit = Arc::new(Semaphore::new(MAX_CONNS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = l.accept().await else {
                continue;
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                continue;
            }; // over the cap: drop it
            let (routing, ctx, tls) = (routing.clone(), ctx.clone(), tls.clone());
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                match (key, tls, tcp) {
                    (Key::Gateway(p), _, true) => serve_tcp(stream, p, routing, ctx).await,
                    (_, Some(acc), _) => {
                        if let Ok(Ok(s)) =
                            tokio::time::timeout(TLS_HANDSHAKE, acc.accept(stream)).await
                        {
                            serve_http(s, peer, key, "https", routing, ctx).await;
                        }
                    }
                    (_, None, _) => serve_http(stream, peer, key, "http", routing, ctx).await,
                }
                drop(permit);
            });
        }
    })
}

impl Proxy {
    pub fn new(socks: Sockets, listen4: Ipv4Addr, listen6: Option<std::net::Ipv6Addr>) -> Self {
        let ctx = Arc::new(Ctx {
            upstreams: Upstreams::new(socks.clone()),
            obs: Observations::default(),
        });
        let (routing, _) = watch::channel(Arc::new(Routing::default()));
        Proxy {
            socks,
            ctx,
            routing,
            running: BTreeMap::new(),
            listen4,
            listen6,
        }
    }

    pub fn observations(&self) -> Observations {
        self.ctx.obs.clone()
    }

    /// Compile the plan's tables, bind listeners it needs that are not open
    /// yet, and publish the tables. Fails (changing nothing that serves)
    /// when a table does not compile or a port cannot be bound.
    pub async fn prepare(&mut self, plan: &Plan) -> Result<()> {
        let routing = Routing::compile(plan)?;
        let mut opened: Vec<(Key, Running)> = Vec::new();
        for s in &plan.l7 {
            let key = Key::EastWest(s.proxy_port);
            if self.running.contains_key(&key) {
                continue;
            }
            let mut addrs = vec![SocketAddr::new(IpAddr::V4(self.listen4), s.proxy_port)];
            addrs.extend(
                self.listen6
                    .map(|a| SocketAddr::new(IpAddr::V6(a), s.proxy_port)),
            );
            let mut tasks = Vec::new();
            for a in addrs {
                let l = self.socks.listen(a).await.with_context(|| {
                    format!("binding the proxy listener {a} for {}:{}: is the port in use? Change RouterConfig spec.proxy.portRange", s.host, s.port)
                })?;
                tasks.push(spawn_accept(
                    l,
                    key,
                    None,
                    false,
                    self.routing.subscribe(),
                    self.ctx.clone(),
                ));
            }
            opened.push((key, Running { tasks, shape: None }));
        }
        for g in &plan.gateways {
            let key = Key::Gateway(g.port);
            let shape = (g.http, g.tls.clone());
            if self
                .running
                .get(&key)
                .is_some_and(|r| r.shape.as_ref() == Some(&shape))
            {
                continue;
            }
            let tls = g
                .tls
                .as_ref()
                .map(load_tls)
                .transpose()
                .with_context(|| format!("gateway {} port {}", g.gateway, g.port))?;
            // A changed listener (TLS on/off, new files) is rebound in place.
            self.running.remove(&key);
            let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), g.port);
            let l = self.socks.listen(a).await.with_context(|| {
                format!(
                    "binding gateway {} listener {a}: is the port in use?",
                    g.gateway
                )
            })?;
            let task = spawn_accept(
                l,
                key,
                tls,
                !g.http,
                self.routing.subscribe(),
                self.ctx.clone(),
            );
            opened.push((
                key,
                Running {
                    tasks: vec![task],
                    shape: Some(shape),
                },
            ));
        }
        self.routing.send_replace(Arc::new(routing));
        self.running.extend(opened);
        Ok(())
    }

    /// Close listeners the plan no longer has (call after the kernel moved).
    pub fn retire(&mut self, plan: &Plan) {
        let keep: std::collections::BTreeSet<Key> = plan
            .l7
            .iter()
            .map(|s| Key::EastWest(s.proxy_port))
            .chain(plan.gateways.iter().map(|g| Key::Gateway(g.port)))
            .collect();
        self.running.retain(|k, _| keep.contains(k));
    }

    /// Listening ports, for logs and tests.
    pub fn ports(&self) -> Vec<String> {
        self.running
            .keys()
            .map(|k| match k {
                Key::EastWest(p) => format!("proxy:{p}"),
                Key::Gateway(p) => format!("gateway:{p}"),
            })
            .collect()
    }
}
