//! A real backend for tests and the demo: HTTP/1.1 (hyper) on TCP listeners
//! and an echo on UDP sockets, each answering with who it is, where it
//! listens, and who it sees as the client. Prints `ready` once every socket
//! is bound.
//!
//! `rt-backend --listen tcp:10.1.1.10:8080:app-a-1 --listen udp:10.1.1.40:9000:echo-1`
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
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
    if proto != "tcp" && proto != "udp" && proto != "sink" {
        bail!("proto must be tcp, udp or sink in {spec}");
    }
    Ok((proto.to_string(), addr, id.to_string()))
}

async fn serve_tcp(l: TcpListener, id: Arc<String>) {
    loop {
        let Ok((stream, peer)) = l.accept().await else {
            continue;
        };
        let local = stream.local_addr().ok();
        let id = id.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let a = Answer {
                    id: id.to_string(),
                    local: local.map(|l| l.to_string()).unwrap_or_default(),
                    peer: peer.to_string(),
                    path: req.uri().path().to_string(),
                };
                async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                        serde_json::to_vec(&a).unwrap(),
                    ))))
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
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

async fn serve() -> Result<()> {
    let args = Args::parse();
    if let Some(cpu) = args.cpu {
        router_tests::pin_to_cpu(cpu)?;
    }
    let mut tasks = Vec::new();
    for spec in &args.listen {
        let (proto, addr, id) = parse(spec)?;
        let id = Arc::new(id);
        if proto == "sink" {
            sink(addr)?;
        } else if proto == "tcp" {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding tcp {addr}"))?;
            tasks.push(tokio::spawn(serve_tcp(l, id)));
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
