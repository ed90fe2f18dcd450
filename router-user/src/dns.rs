//! DNS for virtual hosts: answers A and AAAA for every virtual host with its
//! VIP (NODATA for other types of names it owns), and forwards every other
//! query to the node's upstream resolvers, relaying their answers byte for
//! byte. UDP and TCP. hickory-proto parses and builds messages.
//!
//! Capture: the kernel programs send port-53 traffic of the attached cgroup
//! to this listener (see `CFG_DNS_CAPTURE` in router-common) and translate
//! replies back to the resolver the process asked. The daemon's own sockets
//! carry `DNS_MARK`, which the programs never capture: forwarding cannot loop.
//!
//! Sockets can live in another network namespace (`--listen-netns`): see
//! [`crate::netns`].
//!
//! Hostile input: datagrams over 4 KiB and messages that do not parse are
//! dropped (FORMERR when the header is readable); at most 1,024 forwarded
//! UDP queries and 256 TCP connections at once (beyond that UDP queries are
//! dropped, as an overloaded resolver would); every upstream exchange and
//! idle TCP connection times out.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, SOA},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, watch},
};

use crate::{netns::Sockets, plan::Plan};

/// `SO_MARK` on every socket the DNS server opens; the kernel programs leave
/// such sockets alone.
pub use router_common::DNS_MARK;

const MAX_UDP: usize = 4096;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_UDP_FORWARDS: usize = 1024;
const MAX_TCP_CONNS: usize = 256;

/// Names this server owns, from the applied plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Lower-case name without the trailing dot -> (IPv4 VIP, IPv6 VIP if
    /// the host has an IPv6 service).
    pub by_name: HashMap<String, (Ipv4Addr, Option<Ipv6Addr>)>,
    pub ttl: u32,
}

impl Names {
    pub fn from_plan(plan: &Plan) -> Self {
        // One pass over the services (not one per host: 100,000 hosts).
        let with6: std::collections::HashSet<String> = plan
            .services
            .iter()
            .filter(|s| s.vip.is_ipv6())
            .map(|s| s.host.to_ascii_lowercase())
            .collect();
        let by_name = plan
            .hosts
            .iter()
            .map(|h| {
                let has6 = with6.contains(&h.name.to_ascii_lowercase());
                (
                    h.name.to_ascii_lowercase(),
                    (h.vip4, has6.then_some(h.vip6)),
                )
            })
            .collect();
        Names {
            by_name,
            ttl: plan.dns.ttl,
        }
    }
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer with these bytes.
    Local(Vec<u8>),
    /// Not ours: relay to an upstream resolver unchanged.
    Forward,
    /// Unreadable: say nothing.
    Drop,
}

fn soa(name: &Name, ttl: u32) -> Record {
    let soa = SOA::new(
        Name::from_ascii("routerd.invalid.").unwrap(),
        Name::from_ascii("hostmaster.routerd.invalid.").unwrap(),
        1,
        3600,
        600,
        86400,
        ttl,
    );
    Record::from_rdata(name.clone(), ttl, RData::SOA(soa))
}

/// Decide and, for our names, build the answer. Pure: no sockets.
pub fn respond(query: &[u8], names: &Names) -> Reply {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        // The header is there and says "standard query": tell the client it
        // sent garbage (a reply no larger than the request: no amplification).
        Err(_) if query.len() >= 12 && query[2] & 0xf8 == 0 => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            return match Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec() {
                Ok(b) => Reply::Local(b),
                Err(_) => Reply::Drop,
            };
        }
        Err(_) => return Reply::Drop,
    };
    if msg.metadata.message_type != MessageType::Query {
        return Reply::Drop; // a response sent to a server
    }
    if msg.metadata.op_code != OpCode::Query || msg.queries.len() != 1 {
        return Reply::Forward;
    }
    let q = &msg.queries[0];
    let key = q.name().to_lowercase().to_ascii();
    let key = key.trim_end_matches('.');
    let Some((v4, v6)) = names.by_name.get(key) else {
        return Reply::Forward;
    };
    let mut resp = Message::response(msg.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    let name = q.name().clone();
    let want = q.query_type();
    if matches!(want, RecordType::A | RecordType::ANY) {
        resp.add_answer(Record::from_rdata(
            name.clone(),
            names.ttl,
            RData::A(A(*v4)),
        ));
    }
    if let (RecordType::AAAA | RecordType::ANY, Some(v6)) = (want, v6) {
        resp.add_answer(Record::from_rdata(
            name.clone(),
            names.ttl,
            RData::AAAA(AAAA(*v6)),
        ));
    }
    if resp.answers.is_empty() {
        // NODATA: the name exists, this type does not (RFC 2308: SOA for
        // negative caching).
        resp.add_authority(soa(&name, names.ttl));
    }
    if let Some(e) = &msg.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(e.max_payload().clamp(512, 1232));
        resp.set_edns(edns);
    }
    match resp.to_vec() {
        Ok(b) => Reply::Local(b),
        Err(_) => Reply::Drop,
    }
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    (query.len() >= 2).then(|| {
        let id = u16::from_be_bytes([query[0], query[1]]);
        Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
            .to_vec()
            .ok()
    })?
}

// --- forwarding ----------------------------------------------------------------

fn unspecified(v6: bool) -> SocketAddr {
    if v6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

async fn forward_udp(socks: &Sockets, upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let Ok(s) = socks.udp(unspecified(up.is_ipv6())).await else {
            continue;
        };
        if s.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let (n, from) = s.recv_from(&mut buf).await?;
                // Only the upstream's answer to this query counts.
                if from == *up && n >= 2 && buf[..2] == query[..2] {
                    return Ok::<usize, std::io::Error>(n);
                }
            }
        })
        .await;
        if let Ok(Ok(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

async fn read_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

async fn forward_tcp(socks: &Sockets, upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let exchange = async {
            let mut s = socks.connect(*up).await?;
            write_framed(&mut s, query).await?;
            read_framed(&mut s).await
        };
        if let Ok(Ok(resp)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(resp);
        }
    }
    None
}

// --- the server ----------------------------------------------------------------

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
}

/// Nameservers from a resolv.conf text, as `ip:53`.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The resolvers a namespace uses: `/etc/netns/<name>/resolv.conf` (what
/// `ip netns exec` shows processes there), else `/etc/resolv.conf`.
pub fn system_upstreams(netns: Option<&Path>) -> Vec<SocketAddr> {
    let per_ns = netns
        .and_then(|p| p.file_name())
        .map(|n| Path::new("/etc/netns").join(n).join("resolv.conf"))
        .filter(|p| p.exists());
    let path = per_ns.unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
    std::fs::read_to_string(path)
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

async fn serve_udp(
    sock: Arc<UdpSocket>,
    socks: Sockets,
    upstreams: Arc<Vec<SocketAddr>>,
    names: watch::Receiver<Arc<Names>>,
) {
    let limit = Arc::new(Semaphore::new(MAX_UDP_FORWARDS));
    let mut buf = vec![0u8; MAX_UDP + 1];
    loop {
        let Ok((n, client)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if n > MAX_UDP {
            continue; // oversized: no resolver sends these
        }
        let query = buf[..n].to_vec();
        let reply = respond(&query, &names.borrow());
        match reply {
            Reply::Local(b) => {
                let _ = sock.send_to(&b, client).await;
            }
            Reply::Drop => {}
            Reply::Forward => {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let (sock, socks, upstreams) = (sock.clone(), socks.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let resp = forward_udp(&socks, &upstreams, &query)
                        .await
                        .or_else(|| servfail(&query));
                    if let Some(b) = resp {
                        let _ = sock.send_to(&b, client).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp_conn(
    mut s: TcpStream,
    socks: Sockets,
    upstreams: Arc<Vec<SocketAddr>>,
    names: watch::Receiver<Arc<Names>>,
) {
    loop {
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut s)).await else {
            return;
        };
        let reply = respond(&query, &names.borrow());
        let out = match reply {
            Reply::Local(b) => b,
            Reply::Drop => return,
            Reply::Forward => match forward_tcp(&socks, &upstreams, &query)
                .await
                .or_else(|| servfail(&query))
            {
                Some(b) => b,
                None => return,
            },
        };
        if write_framed(&mut s, &out).await.is_err() {
            return;
        }
    }
}

async fn serve_tcp(
    l: TcpListener,
    socks: Sockets,
    upstreams: Arc<Vec<SocketAddr>>,
    names: watch::Receiver<Arc<Names>>,
) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNS));
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (socks, upstreams, names) = (socks.clone(), upstreams.clone(), names.clone());
        tokio::spawn(async move {
            serve_tcp_conn(s, socks, upstreams, names).await;
            drop(permit);
        });
    }
}

/// Bind every listener (so errors surface at start-up), then serve forever.
pub async fn start(
    opts: DnsOptions,
    socks: Sockets,
    names: watch::Receiver<Arc<Names>>,
) -> Result<()> {
    let upstreams: Vec<SocketAddr> = opts
        .upstreams
        .iter()
        .filter(|u| !opts.listen.contains(u))
        .copied()
        .collect();
    if upstreams.is_empty() {
        tracing::warn!(
            "no upstream resolvers (resolv.conf has none, or only this server): names that are not virtual hosts will get SERVFAIL"
        );
    }
    let upstreams = Arc::new(upstreams);
    for addr in &opts.listen {
        let hint = || {
            format!(
                "binding the DNS listener {addr}: is another resolver there? Set RouterConfig \
                 spec.dns.listen/port, or --no-dns"
            )
        };
        let udp = Arc::new(socks.udp(*addr).await.with_context(hint)?);
        let tcp = socks.listen(*addr).await.with_context(hint)?;
        tokio::spawn(serve_udp(
            udp,
            socks.clone(),
            upstreams.clone(),
            names.clone(),
        ));
        tokio::spawn(serve_tcp(
            tcp,
            socks.clone(),
            upstreams.clone(),
            names.clone(),
        ));
    }
    tracing::info!(listen = ?opts.listen, upstreams = ?upstreams, "DNS serving virtual hosts");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn names() -> Names {
        let mut by_name = HashMap::new();
        by_name.insert(
            "web.mesh".to_string(),
            ("240.240.0.1".parse().unwrap(), None),
        );
        by_name.insert(
            "dual.mesh".to_string(),
            (
                "240.240.0.2".parse().unwrap(),
                Some("2001:2::2".parse().unwrap()),
            ),
        );
        Names { by_name, ttl: 7 }
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn local(r: Reply) -> Message {
        match r {
            Reply::Local(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a local answer, got {other:?}"),
        }
    }

    #[test]
    fn answers_virtual_hosts_case_insensitively() {
        let m = local(respond(&query("WEB.Mesh.", RecordType::A), &names()));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, 7);
        assert_eq!(
            m.answers[0].data,
            RData::A(A("240.240.0.1".parse().unwrap()))
        );
        let m = local(respond(&query("dual.mesh.", RecordType::AAAA), &names()));
        assert_eq!(
            m.answers[0].data,
            RData::AAAA(AAAA("2001:2::2".parse().unwrap()))
        );
    }

    #[test]
    fn owned_names_without_the_type_are_nodata_not_nxdomain() {
        for t in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let m = local(respond(&query("web.mesh.", t), &names()));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
            assert!(m.answers.is_empty(), "{t}");
            assert!(matches!(m.authorities[0].data, RData::SOA(_)), "{t}");
        }
    }

    #[test]
    fn other_names_are_forwarded_and_garbage_is_refused() {
        assert_eq!(
            respond(&query("example.org.", RecordType::A), &names()),
            Reply::Forward
        );
        assert_eq!(respond(b"\x00\x01", &names()), Reply::Drop);
        let garbage = [
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
        ];
        let m = local(respond(&garbage, &names()));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn reads_resolv_conf() {
        let t = "# c\nsearch x\nnameserver 10.53.0.1\nnameserver fe80::1%eth0\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                "10.53.0.1:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
