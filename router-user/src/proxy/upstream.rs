//! Connections from the proxy to endpoints: pooled hyper clients (HTTP/1.1,
//! and HTTP/2 for destinations that speak it) whose sockets are created in
//! the listen network namespace by [`Sockets`]. Endpoints are addresses, never
//! VIPs, so these connections cannot loop through the connect hook.
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpStream;

use crate::netns::Sockets;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Marks a connect failure, so retries can tell it from a reset.
#[derive(Debug)]
pub struct ConnectFailed(pub std::io::Error);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connect failed: {}", self.0)
    }
}
impl std::error::Error for ConnectFailed {}

#[derive(Clone)]
pub struct Connector {
    socks: Sockets,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let socks = self.socks.clone();
        Box::pin(async move {
            let auth = uri.authority().ok_or("upstream URI without an address")?;
            let host = auth.host().trim_start_matches('[').trim_end_matches(']');
            let addr = SocketAddr::new(host.parse()?, auth.port_u16().unwrap_or(80));
            match tokio::time::timeout(CONNECT_TIMEOUT, socks.connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(TokioIo::new(s))
                }
                Ok(Err(e)) => Err(Box::new(ConnectFailed(e)) as BoxError),
                Err(_) => Err(Box::new(ConnectFailed(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))) as BoxError),
            }
        })
    }
}

/// One pooled client per protocol.
#[derive(Clone)]
pub struct Upstreams {
    pub http1: Client<Connector, Body>,
    pub http2: Client<Connector, Body>,
    pub socks: Sockets,
}

impl Upstreams {
    pub fn new(socks: Sockets) -> Self {
        let connector = Connector {
            socks: socks.clone(),
        };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Upstreams {
            http1,
            http2,
            socks,
        }
    }

    pub fn client(&self, http2: bool) -> &Client<Connector, Body> {
        if http2 { &self.http2 } else { &self.http1 }
    }
}

/// Was this client error a failure to connect (vs. a reset or protocol error)?
pub fn is_connect_failure(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<ConnectFailed>() {
            return true;
        }
        src = s.source();
    }
    false
}
