//! A real backend for tests and the demo: HTTP/1.1 (hyper) on TCP listeners
//! and an echo on UDP sockets, each answering with who it is, where it
//! listens, and who it sees as the client. Prints `ready` once every socket
//! is bound.
//!
//! `tls:ADDR:name` serves the same HTTP over TLS with a self-signed
//! certificate for `name`, written to `--cert-dir` as `<name>.pem`.
//!
//! A WebSocket upgrade (`Upgrade: websocket`, any path) is accepted and each
//! text message is answered with `<id>:<message>`.
//!
//! `grpc:ADDR:id` serves gRPC (tonic, HTTP/2): `router_tests::grpc::SAY`.
//!
//! `rt-backend --listen tcp:10.1.1.10:8080:app-a-1 --listen udp:10.1.1.40:9000:echo-1`
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use router_tests::Answer;
use tokio::net::{TcpListener, UdpSocket};

#[derive(Parser)]
struct Args {
    /// Pin the process to this CPU (benchmarks).
    #[arg(long)]
    cpu: Option<usize>,
    /// proto:ip:port:id (IPv6 as tcp:[fd00::1]:80:id)
    #[arg(long = "listen", required = true)]
    listen: Vec<String>,
    /// Where `tls` listeners write their self-signed certificate
    /// (`<id>.pem`, for clients to verify against).
    #[arg(long, default_value = "/tmp")]
    cert_dir: std::path::PathBuf,
}

fn parse(spec: &str) -> Result<(String, SocketAddr, String)> {
    let (proto, rest) = spec
        .split_once(':')
        .context("expected proto:addr:port:id")?;
    let (addr, id) = rest
        .rsplit_once(':')
        .context("expected proto:addr:port:id")?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address in {spec}"))?;
    if !["tcp", "tls", "udp", "sink", "hung", "grpc"].contains(&proto) {
        bail!("proto must be tcp, tls, udp, sink, hung or grpc in {spec}");
    }
    Ok((proto.to_string(), addr, id.to_string()))
}

/// What the HTTP backend remembers: requests seen (for `/__log`) and the
/// keys of `/flaky/<key>` requests already failed once.
#[derive(Default)]
struct Memory {
    log: Mutex<Vec<serde_json::Value>>,
    flaky: Mutex<std::collections::HashSet<String>>,
}

fn respond(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// Answer one request. Besides echoing it back (who, where, method, headers),
/// a few paths change behaviour, for tests: `/status/<code>`,
/// `/flaky/<key>` (503 the first time per key, then 200), `/slow/<ms>`, and
/// `/__log` (the requests seen so far).
async fn answer(
    mut req: Request<Incoming>,
    id: Arc<String>,
    local: String,
    peer: SocketAddr,
    mem: Arc<Memory>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let mut headers = std::collections::BTreeMap::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("").to_string();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|x: &mut String| x.push_str(&format!(", {v}")))
            .or_insert(v);
    }
    let a = Answer {
        id: id.to_string(),
        local,
        peer: peer.to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        method: req.method().to_string(),
        headers,
        version: format!("{:?}", req.version()),
    };
    if let Some(resp) = websocket(&mut req, &id) {
        return resp;
    }
    if path == "/__log" {
        let log = mem.log.lock().unwrap().clone();
        return respond(200, serde_json::to_vec(&log).unwrap());
    }
    {
        let mut log = mem.log.lock().unwrap();
        if log.len() < 10_000 {
            log.push(serde_json::to_value(&a).unwrap());
        }
    }
    let body = serde_json::to_vec(&a).unwrap();
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return respond(code, body);
    }
    if let Some(key) = path.strip_prefix("/flaky/")
        && mem.flaky.lock().unwrap().insert(key.to_string())
    {
        return respond(503, body);
    }
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|c| c.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    respond(200, body)
}

/// A WebSocket handshake (RFC 6455 4.2): answer 101 and echo text
/// messages on the upgraded connection as `<id>:<message>`. None: not a
/// WebSocket request.
fn websocket(req: &mut Request<Incoming>, id: &Arc<String>) -> Option<Response<Full<Bytes>>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};
    let wants = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get("sec-websocket-key")?.as_bytes().to_vec();
    if !wants {
        return None;
    }
    let on = hyper::upgrade::on(req);
    let id = id.clone();
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) if ws.send(Message::text(format!("{id}:{t}"))).await.is_err() => {
                    return;
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(&key).parse().unwrap(),
    );
    Some(r)
}

/// HTTP on `l`, over TLS with `tls` (HTTPS with ALPN h2 and http/1.1).
async fn serve_tcp(l: TcpListener, id: Arc<String>, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mem = Arc::new(Memory::default());
    loop {
        let Ok((stream, peer)) = l.accept().await else {
            continue;
        };
        let local = stream
            .local_addr()
            .map(|l| l.to_string())
            .unwrap_or_default();
        let (id, mem, tls) = (id.clone(), mem.clone(), tls.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (id, local, mem) = (id.clone(), local.clone(), mem.clone());
                async move { Ok::<_, Infallible>(answer(req, id, local, peer, mem).await) }
            });
            // HTTP/1.1 and HTTP/2 (prior knowledge), like a real service.
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = match tls {
                None => {
                    http.serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await
                }
                Some(acc) => match acc.accept(stream).await {
                    Ok(s) => {
                        http.serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await
                    }
                    Err(_) => return,
                },
            };
        });
    }
}

/// The gRPC method ([`router_tests::grpc`]).
#[derive(Clone)]
struct Say {
    id: Arc<String>,
    failed: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl tonic::server::UnaryService<Bytes> for Say {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let meta = |k: &str| req.metadata().get(k).and_then(|v| v.to_str().ok());
        if let Some(code) = meta("x-status").and_then(|c| c.parse::<i32>().ok()) {
            let status =
                tonic::Status::new(tonic::Code::from(code), format!("asked by {}", self.id));
            return std::future::ready(Err(status));
        }
        if let Some(key) = meta("x-fail-once")
            && self.failed.lock().unwrap().insert(key.to_string())
        {
            let status = tonic::Status::unavailable(format!("{} fails {key} once", self.id));
            return std::future::ready(Err(status));
        }
        let mut out = format!("{}:", self.id).into_bytes();
        out.extend_from_slice(req.get_ref());
        std::future::ready(Ok(tonic::Response::new(Bytes::from(out))))
    }
}

/// gRPC on `l` (HTTP/2 with prior knowledge, as gRPC clients speak it).
async fn serve_grpc(l: TcpListener, id: Arc<String>) {
    let say = Say {
        id,
        failed: Arc::default(),
    };
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let say = say.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let say = say.clone();
                async move {
                    let resp = if req.uri().path() == router_tests::grpc::SAY {
                        tonic::server::Grpc::new(router_tests::grpc::RawCodec)
                            .unary(say, req)
                            .await
                    } else {
                        tonic::Status::unimplemented(req.uri().path().to_string()).into_http()
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let http =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// A TLS acceptor with a fresh self-signed certificate for `name`, which
/// is written to `dir/<name>.pem` (`/` in the name as `_`).
fn self_signed(name: &str, dir: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor> {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
    let pem = ck.cert.pem();
    let path = dir.join(format!("{}.pem", name.replace('/', "_")));
    std::fs::write(&path, &pem).with_context(|| format!("writing {}", path.display()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn serve_udp(s: UdpSocket, id: Arc<String>) {
    let local = s.local_addr().map(|l| l.to_string()).unwrap_or_default();
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, peer)) = s.recv_from(&mut buf).await else {
            continue;
        };
        let a = Answer {
            id: id.to_string(),
            local: local.clone(),
            peer: peer.to_string(),
            path: String::from_utf8_lossy(&buf[..n]).into_owned(),
            ..Answer::default()
        };
        let _ = s.send_to(&serde_json::to_vec(&a).unwrap(), peer).await;
    }
}

fn main() -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(serve()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rt-backend: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `sink:ADDR:id`: accept and drop connections as fast as possible on a
/// thread of its own (for connect-rate benchmarks, where a slow accept loop
/// would overflow the backlog and turn SYN drops into 1 s retransmits).
fn sink(addr: SocketAddr) -> Result<()> {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding sink {addr}"))?;
    // SAFETY: re-listen with a larger backlog on our own socket.
    unsafe { libc::listen(l.as_raw_fd(), 65535) };
    std::thread::spawn(move || {
        loop {
            let _ = l.accept();
        }
    });
    Ok(())
}

/// `hung:ADDR:id`: a process that listens and never accepts (stuck). The
/// accept queue (backlog 0) holds one connection, which the process makes
/// to itself; the kernel drops every later SYN silently, so clients see
/// SYN timeouts, as from a blackholed host, with no firewall needed (the
/// VM images have none).
fn hung(addr: SocketAddr) -> Result<(std::net::TcpListener, std::net::TcpStream)> {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding hung {addr}"))?;
    // SAFETY: re-listen with backlog 0 on our own socket.
    unsafe { libc::listen(l.as_raw_fd(), 0) };
    let own = std::net::TcpStream::connect(addr)
        .with_context(|| format!("filling the accept queue of {addr}"))?;
    Ok((l, own))
}

async fn serve() -> Result<()> {
    let args = Args::parse();
    if let Some(cpu) = args.cpu {
        router_tests::pin_to_cpu(cpu)?;
    }
    let mut tasks = Vec::new();
    let mut stuck = Vec::new();
    for spec in &args.listen {
        let (proto, addr, id) = parse(spec)?;
        let id = Arc::new(id);
        if proto == "hung" {
            stuck.push(hung(addr)?);
        } else if proto == "sink" {
            sink(addr)?;
        } else if proto == "grpc" {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding grpc {addr}"))?;
            tasks.push(tokio::spawn(serve_grpc(l, id)));
        } else if proto == "tcp" || proto == "tls" {
            let tls = (proto == "tls")
                .then(|| self_signed(&id, &args.cert_dir))
                .transpose()?;
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {proto} {addr}"))?;
            tasks.push(tokio::spawn(serve_tcp(l, id, tls)));
        } else {
            let s = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding udp {addr}"))?;
            tasks.push(tokio::spawn(serve_udp(s, id)));
        }
    }
    println!("ready");
    for t in tasks {
        let _ = t.await;
    }
    // Sinks run on threads of their own: stay alive for them.
    std::future::pending::<()>().await;
    Ok(())
}
