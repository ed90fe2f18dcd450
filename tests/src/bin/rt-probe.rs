//! A real client for tests and the demo. Prints one JSON line ([`Probe`]) per
//! attempt: the peer the application sees (`getpeername`, or the source of a
//! UDP reply), and what the backend answered.
//!
//! - `rt-probe tcp 240.240.1.2:8080 --count 100`: new connection, HTTP GET each time.
//! - `rt-probe tcp ADDR --hold`: one connection; a request, then wait for a line
//!   on stdin, then a second request on the same connection.
//! - `rt-probe udp ADDR [--connected] --count 10`: a new socket per datagram.
use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use router_tests::{Answer, Probe};
use tokio::{
    io::AsyncBufReadExt,
    net::{TcpStream, UdpSocket},
};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Tcp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long)]
        hold: bool,
        #[arg(long, default_value = "/")]
        path: String,
    },
    Udp {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long)]
        connected: bool,
        /// One socket: an exchange, then another after a line on stdin.
        #[arg(long)]
        hold: bool,
    },
    /// HTTP requests on one connection (keep-alive, or HTTP/2 with --http2):
    /// one line per response with status, headers and the backend's answer.
    Http {
        addr: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// `name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long)]
        http2: bool,
    },
    /// HTTP/2 abuse: many concurrent streams, then rapid resets, on one
    /// connection; prints a summary line.
    H2Flood {
        addr: SocketAddr,
        #[arg(long, default_value_t = 300)]
        streams: usize,
        #[arg(long, default_value_t = 2000)]
        resets: usize,
    },
    /// A WebSocket client (tungstenite): the handshake with `Host: HOST`,
    /// then COUNT text messages `m<i>`, each waiting for its reply; prints
    /// one JSON line ([`Ws`]): the handshake's status and the replies.
    Ws {
        addr: SocketAddr,
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// Pause between messages (the tunnel must outlive quiet spells).
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// A gRPC client (tonic, one HTTP/2 connection): COUNT calls of
    /// `router_tests::grpc::SAY` with messages `m<i>`; prints one JSON line
    /// ([`GrpcCalls`]): each call's status code and answer.
    Grpc {
        addr: SocketAddr,
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// Ask the backend to fail each call's first attempt with
        /// UNAVAILABLE (metadata `x-fail-once: <prefix><i>`).
        #[arg(long)]
        fail_once: Option<String>,
        /// Ask the backend to fail every call with this gRPC status.
        #[arg(long)]
        status: Option<i32>,
    },
    /// Raw bytes over TCP (`\r\n` escapes understood); prints what came back
    /// and when the server closed.
    Raw {
        addr: SocketAddr,
        #[arg(long)]
        send: String,
        /// Give up waiting after this long.
        #[arg(long, default_value_t = 5000)]
        wait_ms: u64,
    },
    /// Slow clients: `conns` connections that send a request head one byte a
    /// second; reports how many the server closed, and when.
    Slow {
        addr: SocketAddr,
        #[arg(long, default_value_t = 20)]
        conns: usize,
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
    /// Hostile DNS input against a resolver address; prints a [`Junk`] line.
    DnsJunk { addr: SocketAddr },
    /// HTTP load for a fixed time from `conns` concurrent clients (keep-alive,
    /// or a new connection per request with --new-conn); prints a [`Bench`].
    HttpBench {
        addr: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 16)]
        conns: usize,
        #[arg(long, default_value_t = 2000)]
        millis: u64,
        #[arg(long)]
        new_conn: bool,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Connection churn for the drills: `conns` clients open new connections
    /// (an HTTP GET each, then RST) to the targets in turn, at most `rate`
    /// per second in all, until a line arrives on stdin (or `--millis`);
    /// prints one [`router_tests::Churn`] line.
    /// Start one connection and print the kernel's retransmission timeout
    /// for it while its SYN is out (TCP_INFO `tcpi_rto`, microseconds):
    /// `{"rto_us": N}`.
    SynRto { addr: SocketAddr },
    Churn {
        /// `ADDR=ID,ID,...`: a VIP and the endpoint ids allowed to answer there.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long)]
        millis: Option<u64>,
    },
    /// A local attacker: drop to `uid`, bind every port of `ports`
    /// (`A-B` ranges and single ports, comma-separated) on `addr`, accept
    /// for `millis`; prints a [`Squat`] line.
    Squat {
        #[arg(long, default_value = "127.0.0.1")]
        addr: std::net::IpAddr,
        #[arg(long)]
        ports: String,
        #[arg(long, default_value_t = 65534)]
        uid: u32,
        #[arg(long, default_value_t = 5000)]
        millis: u64,
    },
    /// connect() in a loop for `millis` (every `every_ms`), counting
    /// outcomes by errno; prints a [`Connects`] line.
    Connects {
        addr: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        millis: u64,
        #[arg(long, default_value_t = 1)]
        every_ms: u64,
    },
    /// Uploads that stall: `conns` connections each send a POST announcing
    /// `bytes` of body, send `send` of them, then hold the connection for
    /// `hold_secs`; prints an [`Uploads`] line.
    Uploads {
        addr: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 1 << 20)]
        bytes: usize,
        #[arg(long, default_value_t = 512 * 1024)]
        send: usize,
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
    },
    /// Open `conns` TCP connections and hold them, idle, for `hold_secs`;
    /// prints how many opened.
    Hold {
        addr: SocketAddr,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
    },
    /// Connect-and-close loop for a fixed time; prints one [`Bench`] line.
    Bench {
        addr: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        millis: u64,
        /// Pin to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
}

/// The connect path, measured from the client: blocking `connect()` (the
/// cgroup hook runs inside it), then close with RST so no TIME_WAIT piles up.
fn bench(addr: SocketAddr, millis: u64) -> router_tests::Bench {
    let deadline = std::time::Instant::now() + Duration::from_millis(millis);
    let mut lat_ns: Vec<u64> = Vec::with_capacity(200_000);
    let mut errors = 0u64;
    let mut first_error = None;
    let start = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        let t = std::time::Instant::now();
        match std::net::TcpStream::connect(addr) {
            Ok(s) => {
                lat_ns.push(t.elapsed().as_nanos() as u64);
                let _ = socket_linger_zero(&s);
            }
            Err(e) => {
                errors += 1;
                if first_error.is_none() {
                    first_error = Some(e.to_string());
                }
            }
        }
    }
    router_tests::Bench::from_latencies(lat_ns, start.elapsed().as_secs_f64(), errors, first_error)
}

/// What a DNS server did with bad input.
#[derive(serde::Serialize)]
struct Junk {
    /// Replies to datagrams shorter than a header (should be none).
    random_replies: usize,
    /// A header followed by garbage got FORMERR with the same id.
    formerr: bool,
    /// A 5000-byte datagram got a reply (should not).
    oversized_reply: bool,
    /// The server closed a TCP connection that announced 65535 bytes and sent 3.
    tcp_short_closed_or_idle: bool,
}

fn dns_junk(addr: SocketAddr) -> Junk {
    use std::io::{Read, Write};
    let bind = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let s = std::net::UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut random_replies = 0;
    // Shorter than a DNS header: nothing to answer.
    for len in [1u32, 3, 5, 8, 11] {
        let junk: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = s.send_to(&junk, addr);
        if s.recv_from(&mut buf).is_ok() {
            random_replies += 1;
        }
    }
    // A readable header (id 0xbeef, one question) followed by nonsense.
    let header = [
        0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f, 0xff, 0xff,
    ];
    let _ = s.send_to(&header, addr);
    let formerr = match s.recv_from(&mut buf) {
        Ok((n, _)) => n >= 4 && buf[0] == 0xbe && buf[1] == 0xef && buf[3] & 0x0f == 1,
        Err(_) => false,
    };
    let _ = s.send_to(&vec![0u8; 5000], addr);
    let oversized_reply = s.recv_from(&mut buf).is_ok();
    let tcp_short_closed_or_idle =
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut t) => {
                let _ = t.write_all(&[0xff, 0xff, 1, 2, 3]);
                t.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                // Either the server waits for the rest (read times out) or closes (0 bytes).
                matches!(t.read(&mut buf), Ok(0) | Err(_))
            }
            Err(_) => false,
        };
    Junk {
        random_replies,
        formerr,
        oversized_reply,
        tcp_short_closed_or_idle,
    }
}

async fn http_bench(
    addr: SocketAddr,
    path: &str,
    conns: usize,
    millis: u64,
    new_conn: bool,
) -> router_tests::Bench {
    let deadline = std::time::Instant::now() + Duration::from_millis(millis);
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            let mut first_error = None;
            let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
            while std::time::Instant::now() < deadline {
                let t = std::time::Instant::now();
                if sender.is_none() || new_conn {
                    match TcpStream::connect(addr).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            if new_conn {
                                // Close with RST: thousands of TIME_WAITs per second would
                                // exhaust the ports to the backend and skew what follows.
                                let _ = socket_linger_zero(&s);
                            }
                            match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                                Ok((snd, conn)) => {
                                    tokio::spawn(conn);
                                    sender = Some(snd);
                                }
                                Err(e) => {
                                    errors += 1;
                                    first_error.get_or_insert(e.to_string());
                                    continue;
                                }
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e.to_string());
                            continue;
                        }
                    }
                }
                let snd = sender.as_mut().unwrap();
                let req = Request::get(path.as_str())
                    .header("host", "bench")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let ok = match snd.send_request(req).await {
                    Ok(r) => {
                        let good = r.status().is_success();
                        good && r.into_body().collect().await.is_ok()
                    }
                    Err(e) => {
                        first_error.get_or_insert(e.to_string());
                        false
                    }
                };
                if ok {
                    lat.push(t.elapsed().as_nanos() as u64);
                } else {
                    errors += 1;
                    sender = None;
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        if let Ok((l, e, fe)) = t.await {
            lat.extend(l);
            errors += e;
            first_error = first_error.or(fe);
        }
    }
    router_tests::Bench::from_latencies(lat, start.elapsed().as_secs_f64(), errors, first_error)
}

/// SO_LINGER 0: close() sends a RST (no TIME_WAIT) on a std or tokio socket.
fn socket_linger_zero(s: &impl std::os::fd::AsRawFd) -> std::io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

const TIMEOUT: Duration = Duration::from_secs(3);

fn failed(e: &std::io::Error) -> Probe {
    Probe {
        errno: e.raw_os_error(),
        error: Some(e.to_string()),
        ..Probe::default()
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn get(sender: &mut Sender, addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| "timeout waiting for the response".to_string())?
        .map_err(|e| e.to_string())?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("bad answer: {e}"))
}

async fn churn(
    targets: Vec<(SocketAddr, Vec<String>)>,
    conns: usize,
    rate: u64,
    millis: Option<u64>,
) -> router_tests::Churn {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    };
    raise_nofile();
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(router_tests::Churn::default()));
    let targets = Arc::new(targets);
    // Each client waits this long between connections (bounded load); the
    // clients start spread over one gap, so the load is even.
    let gap = Duration::from_micros(1_000_000 * conns.max(1) as u64 / rate.max(1));
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (stop, out, targets) = (stop.clone(), out.clone(), targets.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            let mut tick = tokio::time::interval_at(t0 + gap * c as u32 / conns as u32, gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (addr, allowed) = &targets[i % targets.len()];
                i += 1;
                // A failure counts from when the connection was attempted
                // (a connect to a blackholed endpoint fails seconds later).
                let started = router_tests::epoch_ms();
                let (p, sender) = tcp_once(*addr, "/churn").await;
                drop(sender);
                let mut o = out.lock().unwrap();
                o.attempted += 1;
                match &p.answer {
                    Some(a) if allowed.contains(&a.id) => {
                        o.ok += 1;
                        *o.by_id.entry(a.id.clone()).or_default() += 1;
                    }
                    Some(a) => {
                        o.misrouted += 1;
                        *o.by_id.entry(a.id.clone()).or_default() += 1;
                        if o.samples.len() < 20 {
                            let m = format!(
                                "misrouted: {addr} answered by {} (allowed {allowed:?})",
                                a.id
                            );
                            o.samples.push(m);
                        }
                    }
                    None => {
                        o.failed += 1;
                        o.first_failure_ms.get_or_insert(started);
                        o.last_failure_ms = Some(o.last_failure_ms.unwrap_or(0).max(started));
                        if o.samples.len() < 20 {
                            let m =
                                format!("failed: {addr}: {}", p.error.clone().unwrap_or_default());
                            o.samples.push(m);
                        }
                    }
                }
            }
        }));
    }
    match millis {
        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        None => {
            let mut line = String::new();
            let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let _ = stdin.read_line(&mut line).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    out.lock().unwrap().clone()
}

async fn tcp_once(addr: SocketAddr, path: &str) -> (Probe, Option<Sender>) {
    let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => {
            return (
                Probe {
                    error: Some("connect timeout".into()),
                    ..Probe::default()
                },
                None,
            );
        }
        Ok(Err(e)) => return (failed(&e), None),
        Ok(Ok(s)) => s,
    };
    // Close with RST: churn opens thousands per second.
    let _ = socket_linger_zero(&stream);
    let peer = stream.peer_addr().ok().map(|p| p.to_string());
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => {
            return (
                Probe {
                    peer,
                    error: Some(e.to_string()),
                    ..Probe::default()
                },
                None,
            );
        }
    };
    tokio::spawn(conn);
    match get(&mut sender, addr, path).await {
        Ok(a) => (
            Probe {
                ok: true,
                peer,
                answer: Some(a),
                ..Probe::default()
            },
            Some(sender),
        ),
        Err(e) => (
            Probe {
                peer,
                error: Some(e),
                ..Probe::default()
            },
            None,
        ),
    }
}

async fn udp_once(addr: SocketAddr, connected: bool) -> Probe {
    match udp_socket(addr, connected).await {
        Ok(s) => udp_exchange(&s, addr, connected).await,
        Err(p) => p,
    }
}

/// A UDP socket, connected to `addr` if asked.
async fn udp_socket(addr: SocketAddr, connected: bool) -> Result<UdpSocket, Probe> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let s = UdpSocket::bind(bind).await.map_err(|e| failed(&e))?;
    if connected {
        s.connect(addr).await.map_err(|e| failed(&e))?;
    }
    Ok(s)
}

/// One datagram out, one reply back.
async fn udp_exchange(s: &UdpSocket, addr: SocketAddr, connected: bool) -> Probe {
    let sent = if connected {
        s.send(b"ping").await
    } else {
        s.send_to(b"ping", addr).await
    };
    if let Err(e) = sent {
        return failed(&e);
    }
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(TIMEOUT, s.recv_from(&mut buf)).await {
        Err(_) => Probe {
            error: Some("no reply".into()),
            ..Probe::default()
        },
        Ok(Err(e)) => failed(&e),
        Ok(Ok((n, from))) => Probe {
            ok: true,
            peer: Some(from.to_string()),
            answer: serde_json::from_slice(&buf[..n]).ok(),
            ..Probe::default()
        },
    }
}

async fn http(
    addr: SocketAddr,
    path: &str,
    count: usize,
    headers: &[String],
    method: &str,
    http2: bool,
) -> Vec<Probe> {
    let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return vec![failed(&e)],
        Err(_) => {
            return vec![Probe {
                error: Some("connect timeout".into()),
                ..Probe::default()
            }];
        }
    };
    let peer = stream.peer_addr().ok().map(|p| p.to_string());
    type Sender = Box<
        dyn FnMut(
                Request<Empty<Bytes>>,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<
                            Output = Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
                        > + Send,
                >,
            > + Send,
    >;
    let mut send: Sender = if http2 {
        match hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        {
            Ok((s, conn)) => {
                tokio::spawn(conn);
                Box::new(move |r| {
                    let mut s = s.clone();
                    Box::pin(async move { s.send_request(r).await })
                })
            }
            Err(e) => {
                return vec![Probe {
                    error: Some(e.to_string()),
                    ..Probe::default()
                }];
            }
        }
    } else {
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok((s, conn)) => {
                tokio::spawn(conn);
                let s = std::sync::Arc::new(tokio::sync::Mutex::new(s));
                Box::new(move |r| {
                    let s = s.clone();
                    Box::pin(async move {
                        let mut s = s.lock().await;
                        s.ready().await?;
                        s.send_request(r).await
                    })
                })
            }
            Err(e) => {
                return vec![Probe {
                    error: Some(e.to_string()),
                    ..Probe::default()
                }];
            }
        }
    };
    let mut out = Vec::new();
    for _ in 0..count {
        let mut b = Request::builder().method(method).uri(if http2 {
            format!("http://{addr}{path}")
        } else {
            path.to_string()
        });
        if !http2 {
            b = b.header("host", addr.to_string());
        }
        for h in headers {
            if let Some((k, v)) = h.split_once(':') {
                b = b.header(k.trim(), v.trim());
            }
        }
        let req = b.body(Empty::<Bytes>::new()).unwrap();
        let resp = match tokio::time::timeout(TIMEOUT, send(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                out.push(Probe {
                    peer: peer.clone(),
                    error: Some(e.to_string()),
                    ..Probe::default()
                });
                break;
            }
            Err(_) => {
                out.push(Probe {
                    peer: peer.clone(),
                    error: Some("timeout".into()),
                    ..Probe::default()
                });
                break;
            }
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let answer: Option<Answer> = serde_json::from_slice(&body).ok();
        let body = if answer.is_none() {
            Some(String::from_utf8_lossy(&body).into_owned())
        } else {
            None
        };
        out.push(Probe {
            ok: true,
            peer: peer.clone(),
            answer,
            status: Some(status),
            headers,
            body,
            ..Probe::default()
        });
    }
    out
}

#[derive(serde::Serialize)]
struct Raw {
    /// First line of what the server sent, if anything.
    first_line: Option<String>,
    bytes: usize,
    /// Milliseconds until the server closed (None: still open at the end).
    closed_after_ms: Option<u64>,
    /// The first 4 KiB of the response, lossily decoded.
    text: String,
}

/// What `rt-probe grpc` saw.
#[derive(serde::Serialize)]
struct GrpcCalls {
    /// Per call: the gRPC status code (0: OK) and the answer or message.
    calls: Vec<(i32, String)>,
    error: Option<String>,
}

async fn grpc(
    addr: SocketAddr,
    count: usize,
    fail_once: Option<&str>,
    status: Option<i32>,
) -> GrpcCalls {
    let mut out = GrpcCalls {
        calls: Vec::new(),
        error: None,
    };
    let run = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let mut client = tonic::client::Grpc::new(channel);
        for i in 0..count {
            let mut req = tonic::Request::new(Bytes::from(format!("m{i}")));
            if let Some(p) = fail_once {
                req.metadata_mut()
                    .insert("x-fail-once", format!("{p}{i}").parse().unwrap());
            }
            if let Some(c) = status {
                req.metadata_mut()
                    .insert("x-status", c.to_string().parse().unwrap());
            }
            client.ready().await.map_err(|e| format!("ready: {e}"))?;
            let path = http::uri::PathAndQuery::from_static(router_tests::grpc::SAY);
            let r = client.unary(req, path, router_tests::grpc::RawCodec).await;
            out.calls.push(match r {
                Ok(resp) => (0, String::from_utf8_lossy(resp.get_ref()).into_owned()),
                Err(s) => (s.code() as i32, s.message().to_string()),
            });
        }
        Ok::<(), String>(())
    };
    out.error = match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("no answer within 20 s".to_string()),
    };
    out
}

/// What `rt-probe ws` saw.
#[derive(serde::Serialize)]
struct Ws {
    /// The handshake's HTTP status (0: no response).
    status: u16,
    replies: Vec<String>,
    error: Option<String>,
}

async fn ws(addr: SocketAddr, host: &str, path: &str, count: usize, pause_ms: u64) -> Ws {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut out = Ws {
        status: 0,
        replies: Vec::new(),
        error: None,
    };
    let run = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!("ws://{host}{path}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let (mut ws, resp) = match tokio_tungstenite::client_async(req, stream).await {
            Ok(x) => x,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                out.status = r.status().as_u16();
                return Err("the server refused the upgrade".to_string());
            }
            Err(e) => return Err(format!("handshake: {e}")),
        };
        out.status = resp.status().as_u16();
        for i in 0..count {
            if i > 0 && pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            ws.send(Message::text(format!("m{i}")))
                .await
                .map_err(|e| format!("send: {e}"))?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        out.replies.push(t.to_string());
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("receive: {e}")),
                    None => return Err("closed before the reply".to_string()),
                }
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    };
    let r = tokio::time::timeout(Duration::from_secs(20), run).await;
    out.error = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("no answer within 20 s".to_string()),
    };
    out
}

async fn raw(addr: SocketAddr, send: &str, wait_ms: u64) -> Raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let payload = send.replace("\\r", "\r").replace("\\n", "\n");
    let start = std::time::Instant::now();
    let mut r = Raw {
        first_line: None,
        bytes: 0,
        closed_after_ms: None,
        text: String::new(),
    };
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return r;
    };
    let _ = s.write_all(payload.as_bytes()).await;
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    let deadline = start + Duration::from_millis(wait_ms);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                r.closed_after_ms = Some(start.elapsed().as_millis() as u64);
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    r.bytes = got.len();
    r.text = String::from_utf8_lossy(&got[..got.len().min(4096)]).into_owned();
    r.first_line = String::from_utf8_lossy(&got)
        .lines()
        .next()
        .map(String::from);
    r
}

#[derive(serde::Serialize)]
struct Slow {
    opened: usize,
    closed_by_server: usize,
    /// Seconds until the last one was closed.
    last_closed_after_s: Option<u64>,
}

async fn slow(addr: SocketAddr, conns: usize, seconds: u64) -> Slow {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return None;
            };
            let mut buf = [0u8; 1024];
            for b in head.iter().chain(std::iter::repeat(&b'a')) {
                if s.write_all(&[*b]).await.is_err() {
                    return Some(Some(start.elapsed().as_secs()));
                }
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                {
                    // Any answer (a 408 or a close) ends the connection.
                    if matches!(r, Ok(0) | Err(_) | Ok(_)) {
                        return Some(Some(start.elapsed().as_secs()));
                    }
                }
                if start.elapsed().as_secs() >= seconds {
                    return Some(None);
                }
            }
            Some(None)
        }));
    }
    let mut out = Slow {
        opened: 0,
        closed_by_server: 0,
        last_closed_after_s: None,
    };
    for t in tasks {
        match t.await.ok().flatten() {
            Some(Some(at)) => {
                out.opened += 1;
                out.closed_by_server += 1;
                out.last_closed_after_s = Some(out.last_closed_after_s.unwrap_or(0).max(at));
            }
            Some(None) => out.opened += 1,
            None => {}
        }
    }
    out
}

#[derive(serde::Serialize)]
struct Flood {
    ok: usize,
    refused_or_failed: usize,
    resets_sent: usize,
    /// The connection was closed by the server (GOAWAY) during the resets.
    closed_by_server: bool,
    /// How long the concurrent streams took (bounded concurrency makes this
    /// a multiple of the backend's 200 ms).
    streams_ms: u64,
}

async fn h2_flood(addr: SocketAddr, streams: usize, resets: usize) -> Flood {
    let mut f = Flood {
        ok: 0,
        refused_or_failed: 0,
        resets_sent: 0,
        closed_by_server: false,
        streams_ms: 0,
    };
    // Many concurrent slow requests: the server's SETTINGS cap how many run at once.
    if let Ok(stream) = TcpStream::connect(addr).await
        && let Ok((s, conn)) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
    {
        tokio::spawn(conn);
        let start = std::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..streams {
            let mut s = s.clone();
            tasks.push(tokio::spawn(async move {
                    let req = Request::get(format!("http://{addr}/slow/200?i={i}")).body(Empty::<Bytes>::new()).unwrap();
                    matches!(tokio::time::timeout(Duration::from_secs(20), s.send_request(req)).await, Ok(Ok(r)) if r.status().is_success())
                }));
        }
        for t in tasks {
            if t.await.unwrap_or(false) {
                f.ok += 1;
            } else {
                f.refused_or_failed += 1;
            }
        }
        f.streams_ms = start.elapsed().as_millis() as u64;
    }
    // Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, over and over,
    // with the raw h2 client so every stream really is opened and cancelled.
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return f;
    };
    let Ok((client, conn)) = h2::client::handshake(tcp).await else {
        return f;
    };
    let conn = tokio::spawn(conn);
    let mut client = client;
    for i in 0..resets {
        let ready = match client.clone().ready().await {
            Ok(r) => r,
            Err(_) => {
                f.closed_by_server = true;
                break;
            }
        };
        client = ready;
        let req = http::Request::get(format!("http://{addr}/slow/1000?r={i}"))
            .body(())
            .unwrap();
        match client.send_request(req, true) {
            Ok((resp, _)) => drop(resp), // cancels the stream: RST_STREAM(CANCEL)
            Err(_) => {
                f.closed_by_server = true;
                break;
            }
        }
        f.resets_sent += 1;
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.closed_by_server |= conn.is_finished();
    f
}

/// What `squat` got.
#[derive(serde::Serialize)]
struct Squat {
    uid: u32,
    bound: Vec<u16>,
    /// errno -> ports that failed with it.
    refused: std::collections::BTreeMap<i32, usize>,
    accepted: usize,
}

fn parse_ports(spec: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
                out.extend(a..=b);
            }
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

async fn squat(addr: std::net::IpAddr, ports: &str, uid: u32, millis: u64) -> Result<Squat> {
    // Unprivileged from here on: no capabilities, no root.
    nix::unistd::setgroups(&[])?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(uid))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
    let mut bound = Vec::new();
    let mut refused = std::collections::BTreeMap::new();
    let mut listeners = Vec::new();
    for port in parse_ports(ports) {
        match tokio::net::TcpListener::bind(SocketAddr::new(addr, port)).await {
            Ok(l) => {
                bound.push(port);
                listeners.push(l);
            }
            Err(e) => *refused.entry(e.raw_os_error().unwrap_or(0)).or_insert(0) += 1,
        }
    }
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for l in listeners {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                use tokio::io::AsyncWriteExt;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsquatted")
                    .await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(Squat {
        uid,
        bound,
        refused,
        accepted: accepted.load(std::sync::atomic::Ordering::SeqCst),
    })
}

/// What `connects` saw.
#[derive(serde::Serialize)]
struct Connects {
    ok: u64,
    /// errno -> count.
    errors: std::collections::BTreeMap<i32, u64>,
}

fn connects(addr: SocketAddr, millis: u64, every_ms: u64) -> Connects {
    let deadline = std::time::Instant::now() + Duration::from_millis(millis);
    let mut out = Connects {
        ok: 0,
        errors: Default::default(),
    };
    while std::time::Instant::now() < deadline {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => {
                out.ok += 1;
                let _ = socket_linger_zero(&s);
            }
            Err(e) => *out.errors.entry(e.raw_os_error().unwrap_or(0)).or_insert(0) += 1,
        }
        std::thread::sleep(Duration::from_millis(every_ms));
    }
    out
}

/// What `uploads` saw.
#[derive(serde::Serialize)]
struct Uploads {
    opened: usize,
    /// Responses the server sent before the hold ended, by status.
    answered: std::collections::BTreeMap<u16, usize>,
    /// Connections the server closed without an answer.
    closed: usize,
}

async fn uploads(
    addr: SocketAddr,
    path: &str,
    conns: usize,
    bytes: usize,
    send: usize,
    hold_secs: u64,
) -> Uploads {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return (false, None, false);
            };
            let head =
                format!("POST {path} HTTP/1.1\r\nhost: upload\r\ncontent-length: {bytes}\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return (true, None, true);
            }
            let chunk = vec![b'x'; 16 * 1024];
            let mut sent = 0;
            while sent < send {
                let n = chunk.len().min(send - sent);
                if s.write_all(&chunk[..n]).await.is_err() {
                    return (true, None, true);
                }
                sent += n;
            }
            // Stall: hold the connection, read whatever the server says.
            let mut buf = vec![0u8; 4096];
            let got = tokio::time::timeout(Duration::from_secs(hold_secs), s.read(&mut buf)).await;
            match got {
                Ok(Ok(0)) | Ok(Err(_)) => (true, None, true),
                Ok(Ok(n)) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let status = text
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse::<u16>().ok());
                    (true, status, false)
                }
                Err(_) => (true, None, false),
            }
        }));
    }
    let mut out = Uploads {
        opened: 0,
        answered: Default::default(),
        closed: 0,
    };
    for t in tasks {
        if let Ok((opened, status, closed)) = t.await {
            out.opened += usize::from(opened);
            if let Some(s) = status {
                *out.answered.entry(s).or_insert(0) += 1;
            }
            out.closed += usize::from(closed && status.is_none());
        }
    }
    out
}

/// Connect without waiting (the connect hook has run when connect()
/// returns EINPROGRESS, and the SYN is out) and read the socket's RTO.
fn syn_rto(addr: SocketAddr) -> std::io::Result<u32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: zeroed sockaddr_storage is valid; the family's struct is
    // written into it below, within its size.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let family = i32::from(ss.ss_family);
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own (closed on drop).
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid fd and address of `len` bytes.
    let rc = unsafe { libc::connect(socket.as_raw_fd(), (&raw const ss).cast(), len as u32) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most len bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_rto)
}

/// Raise this process's soft RLIMIT_NOFILE to the hard limit.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn hold(addr: SocketAddr, conns: usize, hold_secs: u64) -> usize {
    raise_nofile();
    let mut held = Vec::new();
    for _ in 0..conns {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    let n = held.len();
    println!("{}", serde_json::json!({ "opened": n }));
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    n
}

fn emit(p: &Probe) {
    println!("{}", serde_json::to_string(p).unwrap());
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Tcp {
            addr,
            count,
            hold,
            path,
        } => {
            if hold {
                let (p, sender) = tcp_once(addr, &path).await;
                emit(&p);
                let mut line = String::new();
                let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
                let _ = stdin.read_line(&mut line).await;
                let second = match sender {
                    Some(mut s) => match get(&mut s, addr, &path).await {
                        Ok(a) => Probe {
                            ok: true,
                            peer: p.peer.clone(),
                            answer: Some(a),
                            ..Probe::default()
                        },
                        Err(e) => Probe {
                            error: Some(e),
                            ..Probe::default()
                        },
                    },
                    None => Probe {
                        error: Some("no connection".into()),
                        ..Probe::default()
                    },
                };
                emit(&second);
            } else {
                for _ in 0..count {
                    emit(&tcp_once(addr, &path).await.0);
                }
            }
        }
        Cmd::Http {
            addr,
            path,
            count,
            headers,
            method,
            http2,
        } => {
            for p in http(addr, &path, count, &headers, &method, http2).await {
                emit(&p);
            }
        }
        Cmd::H2Flood {
            addr,
            streams,
            resets,
        } => {
            println!(
                "{}",
                serde_json::to_string(&h2_flood(addr, streams, resets).await).unwrap()
            );
        }
        Cmd::Ws {
            addr,
            host,
            path,
            count,
            pause_ms,
        } => {
            let w = ws(addr, &host, &path, count, pause_ms).await;
            println!("{}", serde_json::to_string(&w).unwrap());
        }
        Cmd::Grpc {
            addr,
            count,
            fail_once,
            status,
        } => {
            let g = grpc(addr, count, fail_once.as_deref(), status).await;
            println!("{}", serde_json::to_string(&g).unwrap());
        }
        Cmd::Raw {
            addr,
            send,
            wait_ms,
        } => {
            println!(
                "{}",
                serde_json::to_string(&raw(addr, &send, wait_ms).await).unwrap()
            );
        }
        Cmd::Slow {
            addr,
            conns,
            seconds,
        } => {
            println!(
                "{}",
                serde_json::to_string(&slow(addr, conns, seconds).await).unwrap()
            );
        }
        Cmd::DnsJunk { addr } => {
            println!("{}", serde_json::to_string(&dns_junk(addr)).unwrap());
        }
        Cmd::HttpBench {
            addr,
            path,
            conns,
            millis,
            new_conn,
            cpu,
        } => {
            if let Some(cpu) = cpu {
                router_tests::pin_to_cpu(cpu)?;
            }
            println!(
                "{}",
                serde_json::to_string(&http_bench(addr, &path, conns, millis, new_conn).await)
                    .unwrap()
            );
        }
        Cmd::Squat {
            addr,
            ports,
            uid,
            millis,
        } => {
            println!(
                "{}",
                serde_json::to_string(&squat(addr, &ports, uid, millis).await?)?
            );
        }
        Cmd::Connects {
            addr,
            millis,
            every_ms,
        } => {
            println!(
                "{}",
                serde_json::to_string(&connects(addr, millis, every_ms))?
            );
        }
        Cmd::Uploads {
            addr,
            path,
            conns,
            bytes,
            send,
            hold_secs,
        } => {
            println!(
                "{}",
                serde_json::to_string(&uploads(addr, &path, conns, bytes, send, hold_secs).await)?
            );
        }
        Cmd::Hold {
            addr,
            conns,
            hold_secs,
        } => {
            hold(addr, conns, hold_secs).await;
        }
        Cmd::Bench { addr, millis, cpu } => {
            if let Some(cpu) = cpu {
                router_tests::pin_to_cpu(cpu)?;
            }
            println!("{}", serde_json::to_string(&bench(addr, millis)).unwrap());
        }
        Cmd::SynRto { addr } => match syn_rto(addr) {
            Ok(rto) => println!("{}", serde_json::json!({ "rto_us": rto })),
            Err(e) => {
                eprintln!("rt-probe syn-rto: {e}");
                std::process::exit(1);
            }
        },
        Cmd::Churn {
            targets,
            conns,
            rate,
            millis,
        } => {
            let mut parsed = Vec::new();
            for t in &targets {
                let (addr, ids) = t
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--target {t:?}: expected ADDR=ID,ID"))?;
                parsed.push((addr.parse()?, ids.split(',').map(String::from).collect()));
            }
            println!(
                "{}",
                serde_json::to_string(&churn(parsed, conns, rate, millis).await)?
            );
        }
        Cmd::Udp {
            addr,
            count,
            connected,
            hold,
        } => {
            if hold {
                // One socket: an exchange, wait for a line on stdin, another.
                match udp_socket(addr, connected).await {
                    Ok(s) => {
                        emit(&udp_exchange(&s, addr, connected).await);
                        let mut line = String::new();
                        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
                        let _ = stdin.read_line(&mut line).await;
                        emit(&udp_exchange(&s, addr, connected).await);
                    }
                    Err(p) => emit(&p),
                }
            } else {
                for _ in 0..count {
                    emit(&udp_once(addr, connected).await);
                }
            }
        }
    }
    Ok(())
}
