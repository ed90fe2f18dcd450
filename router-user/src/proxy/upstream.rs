//! Connections from the proxy to endpoints: a pool of HTTP/1.1 connections
//! and one shared HTTP/2 connection per endpoint, made by [`Sockets`] in the
//! listen network namespace. Endpoints are addresses, never VIPs, so these
//! connections cannot loop through the connect hook.
//!
//! The pool is keyed by the endpoint the route picked ([`SocketAddr`]) and
//! dials exactly that address: nothing here reads an address out of a URI or
//! a header, so no request can steer the proxy elsewhere (a prefix rewrite to
//! `""` of `/api@127.0.0.1:6379/x` once did, through a URI built as a string).
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::{limits::is_local_errno, netns::Sockets};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Why an exchange with an endpoint failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// The endpoint could not be reached: refused, unreachable, timed out.
    Connect(io::Error),
    /// This host ran out of something (file descriptors, buffers, memory):
    /// not the endpoint's fault, never counted against it.
    Local(io::Error),
    /// The connection broke after it was made (reset, protocol error, or
    /// the request body failed).
    Broken(BoxError),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect failed: {e}"),
            UpstreamError::Local(e) => write!(f, "out of local resources: {e}"),
            UpstreamError::Broken(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// Limits of the upstream side.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    /// Idle pooled HTTP/1.1 connections are dropped after this long.
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_idle_per_endpoint: 64,
        }
    }
}

struct Idle {
    conn: http1::SendRequest<Body>,
    since: Instant,
}

/// The proxy's connections to endpoints.
/// Where the handler sends a forwarded request: the connection pool
/// ([`Upstreams`]) in the daemon, a scripted peer in the handler's tests.
pub trait HttpUpstream: Send + Sync {
    fn send(
        &self,
        ep: SocketAddr,
        http2: bool,
        req: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_>>;

    /// An HTTP/1.1 request that asks to upgrade the connection (a
    /// WebSocket): a 101 response carries the upstream side of the tunnel
    /// (`hyper::upgrade::on`).
    fn send_upgrade(
        &self,
        ep: SocketAddr,
        req: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_>> {
        self.send(ep, false, req)
    }
}

impl HttpUpstream for Arc<Upstreams> {
    fn send(
        &self,
        ep: SocketAddr,
        http2: bool,
        req: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_>> {
        Box::pin(Upstreams::send(self, ep, http2, req))
    }

    fn send_upgrade(
        &self,
        ep: SocketAddr,
        req: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_>> {
        Box::pin(Upstreams::send_upgrade(self, ep, req))
    }
}

fn broken(e: hyper::Error) -> UpstreamError {
    UpstreamError::Broken(e.into())
}

pub struct Upstreams {
    pub socks: Sockets,
    opts: UpstreamOptions,
    /// Idle HTTP/1.1 connections, one pool per proxy worker
    /// ([`super::workers::current`]): a connection's driver runs on the
    /// worker that opened it, and only that worker takes it again.
    h1: Vec<Mutex<HashMap<SocketAddr, Vec<Idle>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl Upstreams {
    /// `slots`: how many pools of idle connections ([`super::workers::Workers::slots`]).
    pub fn new(socks: Sockets, opts: UpstreamOptions, slots: usize) -> Arc<Self> {
        Arc::new(Upstreams {
            socks,
            opts,
            h1: (0..slots.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            h2: Mutex::new(HashMap::new()),
        })
    }

    /// A TCP connection to `ep`, with the connect timeout.
    pub async fn connect(&self, ep: SocketAddr) -> Result<tokio::net::TcpStream, UpstreamError> {
        match tokio::time::timeout(self.opts.connect_timeout, self.socks.connect(ep)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) if is_local_errno(&e) => Err(UpstreamError::Local(e)),
            Ok(Err(e)) => Err(UpstreamError::Connect(e)),
            Err(_) => Err(UpstreamError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no connection within {} ms",
                    self.opts.connect_timeout.as_millis()
                ),
            ))),
        }
    }

    /// Send `req` to the endpoint `ep` (HTTP/2 if `http2`). The request's
    /// URI must be origin-form for HTTP/1.1 and absolute for HTTP/2 (see
    /// [`crate::proxy::handler`]); it is never used to choose where to go.
    pub async fn send(
        self: &Arc<Self>,
        ep: SocketAddr,
        http2: bool,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let resp = if http2 {
            self.send_h2(ep, req).await
        } else {
            self.send_h1(ep, req).await
        }?;
        Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
    }

    /// An upgrade request goes on a connection of its own, which the
    /// upgrade takes over: never one from the pool, never back into it.
    pub async fn send_upgrade(
        self: &Arc<Self>,
        ep: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let mut conn = self.open_h1(ep, true).await?;
        let resp = conn.send_request(req).await.map_err(broken)?;
        Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
    }

    /// A new HTTP/1.1 connection to `ep`, its driver on a task of its own
    /// (`upgrades`: able to hand itself over after a 101).
    async fn open_h1(
        &self,
        ep: SocketAddr,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = TokioIo::new(self.connect(ep).await?);
        let (conn, driver) = http1::Builder::new().handshake(io).await.map_err(broken)?;
        tokio::spawn(async move {
            let _ = if upgrades {
                driver.with_upgrades().await
            } else {
                driver.await
            };
        });
        Ok(conn)
    }

    /// The calling worker's pool of idle HTTP/1.1 connections.
    fn pool(&self) -> &Mutex<HashMap<SocketAddr, Vec<Idle>>> {
        &self.h1[super::workers::current() % self.h1.len()]
    }

    /// A pooled connection to `ep` that can take a request now. One still
    /// reading its last response stays for later; closed and expired ones
    /// go. (One clock read per call, not one per entry.)
    fn take_idle(&self, ep: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut pool = self.pool().lock().unwrap_or_else(|e| e.into_inner());
        let list = pool.get_mut(&ep)?;
        let now = Instant::now();
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let idle = &list[i];
            if idle.conn.is_closed()
                || now.saturating_duration_since(idle.since) >= self.opts.idle_timeout
            {
                list.swap_remove(i);
            } else if idle.conn.is_ready() {
                return Some(list.swap_remove(i).conn);
            }
        }
        None
    }

    /// Back into the pool as soon as the response's head is here: the
    /// connection takes the next request once it has read this response to
    /// its end ([`Self::take_idle`] looks). No task per request waits for
    /// that (one did: a spawn, a wake-up and a lock per request, a few per
    /// cent of the proxy's time in the HTTP bench).
    fn recycle(&self, ep: SocketAddr, conn: http1::SendRequest<Body>) {
        let mut pool = self.pool().lock().unwrap_or_else(|e| e.into_inner());
        let list = pool.entry(ep).or_default();
        if list.len() < self.opts.max_idle_per_endpoint {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        ep: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // A pooled connection may have been closed by the endpoint a moment
        // ago; a request it did not take is sent again on another.
        while let Some(mut conn) = self.take_idle(ep) {
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    self.recycle(ep, conn);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(UpstreamError::Broken(e.into_error().into())),
                },
            }
        }
        let mut conn = self.open_h1(ep, false).await?;
        let resp = conn.send_request(req).await.map_err(broken)?;
        self.recycle(ep, conn);
        Ok(resp)
    }

    async fn send_h2(
        self: &Arc<Self>,
        ep: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let shared = {
            let pool = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            pool.get(&ep)
                .filter(|c| !c.is_closed() && c.is_ready())
                .cloned()
        };
        let mut conn = match shared {
            Some(c) => c,
            None => {
                let io = TokioIo::new(self.connect(ep).await?);
                let (conn, driver) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    // Find dead endpoints on idle connections too.
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .keep_alive_while_idle(true)
                    .handshake(io)
                    .await
                    .map_err(broken)?;
                tokio::spawn(async move {
                    let _ = driver.await;
                });
                self.h2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ep, conn.clone());
                conn
            }
        };
        conn.send_request(req).await.map_err(broken)
    }
}
