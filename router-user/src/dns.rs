//! DNS for virtual hosts: answers A and AAAA for every virtual host with its
//! VIP (NODATA for other types of names it owns), and forwards every other
//! query, relaying the answer byte for byte. UDP and TCP. hickory-proto
//! parses and builds messages.
//!
//! Capture: the kernel programs send port-53 traffic of the attached cgroup,
//! in the network namespace the daemon serves (netns cookie), to this
//! listener (see `LSN_F_DNS` in router-common) and translate replies back to
//! the resolver the process asked. A captured query that is not for a
//! virtual host is forwarded to *that* resolver (its original destination,
//! which the kernel records: by socket cookie for UDP, found with one
//! sock_diag lookup; by client address for TCP), so a local caching
//! resolver (dnsmasq, systemd-resolved) inside the cgroup keeps working and
//! its own upstream queries, captured in turn, go to its upstreams: nothing
//! loops. Only a query whose original destination is unknown (one sent to
//! this listener directly) goes to the fallback upstreams
//! (`spec.dns.upstreams`, else the namespace's resolv.conf). The daemon's
//! own sockets carry `DAEMON_MARK`, which the programs never capture.
//!
//! Sockets can live in another network namespace (`--listen-netns`): see
//! [`crate::netns`].
//!
//! Hostile input: datagrams over 4 KiB and messages that do not parse are
//! dropped (FORMERR when the header is readable); forwarded UDP queries and
//! TCP connections are capped in all and per client address (beyond that UDP
//! queries are dropped, as an overloaded resolver would); every upstream
//! exchange and idle TCP connection times out, and an upstream that answers
//! ICMP port unreachable is given up at once.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
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
    sync::watch,
    task::JoinHandle,
};

use crate::{
    datapath::{OrigTable, sync::Bound},
    limits::Admission,
    netns::Sockets,
    plan::{DnsPlan, Plan, Resolved},
    telemetry::{ResultLabels, Telemetry},
};
use prometheus_client::metrics::counter::Counter;

const MAX_UDP: usize = 4096;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_UDP_FORWARDS: usize = 1024;
const MAX_UDP_FORWARDS_PER_PEER: usize = 256;
const MAX_TCP_CONNS: usize = 256;
const MAX_TCP_CONNS_PER_PEER: usize = 64;

/// Names this server owns, from the applied plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Lower-case name without the trailing dot -> (IPv4 VIP, IPv6 VIP if
    /// the host has an IPv6 service).
    /// (The host's own name when it is lower-case: no copy of it.)
    pub by_name: HashMap<std::sync::Arc<str>, (Ipv4Addr, Option<Ipv6Addr>)>,
    /// Workload-scoped hosts: workload `namespace/name` -> name -> the
    /// VIPs that workload sees under the name (before `by_name`).
    pub scoped: HashMap<String, HashMap<String, (Ipv4Addr, Option<Ipv6Addr>)>>,
    pub ttl: u32,
}

impl Names {
    pub fn from_plan(plan: &Plan) -> Self {
        // One pass over the services (not one per host: 100,000 hosts).
        let with6: std::collections::HashSet<IpAddr> = plan
            .services
            .iter()
            .filter(|s| s.vip.is_ipv6())
            .map(|s| s.vip)
            .collect();
        let vips = |h: &crate::plan::HostPlan| {
            let has6 = with6.contains(&IpAddr::V6(h.vip6));
            (h.vip4, has6.then_some(h.vip6))
        };
        let mut by_name = HashMap::new();
        let mut scoped = HashMap::new();
        for h in &plan.hosts {
            if h.workload_selectors.is_empty() {
                let key = if h.name.bytes().any(|b| b.is_ascii_uppercase()) {
                    h.name.to_ascii_lowercase().into()
                } else {
                    h.name.clone()
                };
                by_name.insert(key, vips(h));
                continue;
            }
            // Hosts of one name are adjacent, in the order `host_for`
            // chooses: the first that selects a workload is its answer.
            for w in plan.workloads.iter().filter(|w| h.visible_to(Some(w))) {
                scoped
                    .entry(w.key())
                    .or_insert_with(HashMap::new)
                    .entry(h.name.to_ascii_lowercase())
                    .or_insert_with(|| vips(h));
            }
        }
        Names {
            by_name,
            scoped,
            ttl: plan.dns.ttl,
        }
    }

    /// The VIPs of `name` (lower case, no trailing dot) as `workload`
    /// (`namespace/name`; None: a caller that is no workload) sees them.
    pub fn lookup(
        &self,
        name: &str,
        workload: Option<&str>,
    ) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> {
        workload
            .and_then(|w| self.scoped.get(w)?.get(name))
            .or_else(|| self.by_name.get(name))
            .copied()
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
    respond_for(query, names, None)
}

/// [`respond`] for a query from workload `workload` (`namespace/name`),
/// which also sees the workload-scoped hosts that select it.
pub fn respond_for(query: &[u8], names: &Names, workload: Option<&str>) -> Reply {
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
    let Some((v4, v6)) = names.lookup(key, workload) else {
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
        resp.add_answer(Record::from_rdata(name.clone(), names.ttl, RData::A(A(v4))));
    }
    if let (RecordType::AAAA | RecordType::ANY, Some(v6)) = (want, v6) {
        resp.add_answer(Record::from_rdata(
            name.clone(),
            names.ttl,
            RData::AAAA(AAAA(v6)),
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

// --- forwarding ----------------------------------------------------------------

/// Ask `up` over a connected UDP socket: an ICMP port unreachable ends the
/// wait at once (ECONNREFUSED) instead of after the timeout.
async fn ask_udp(socks: &Sockets, up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let s = socks.udp_connected(up).await.ok()?;
    s.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        loop {
            let n = s.recv(&mut buf).await?;
            // Only the upstream's answer to this query counts.
            if n >= 2 && buf[..2] == query[..2] {
                return Ok::<usize, std::io::Error>(n);
            }
        }
    })
    .await;
    match got {
        Ok(Ok(n)) => {
            buf.truncate(n);
            Some(buf)
        }
        _ => None,
    }
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

async fn ask_tcp(socks: &Sockets, up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        let mut s = socks.connect(up).await?;
        write_framed(&mut s, query).await?;
        read_framed(&mut s).await
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()?
        .ok()
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

/// The fallback upstreams, for queries whose original destination is not
/// known: never one of our own listeners, and (when the original
/// destination of captured queries cannot be found, so a local resolver's
/// own queries would come back to it) never a resolver on this host's
/// loopback. Pure; returns `(kept, dropped with why)`.
pub fn fallback_upstreams(
    configured: &[SocketAddr],
    ours: &[SocketAddr],
    orig_known: bool,
) -> (Vec<SocketAddr>, Vec<(SocketAddr, &'static str)>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for u in configured {
        if ours.contains(u) {
            dropped.push((*u, "it is this DNS listener"));
        } else if !orig_known && u.ip().is_loopback() {
            dropped.push((
                *u,
                "a resolver on loopback whose own queries would be captured and sent back to it",
            ));
        } else {
            kept.push(*u);
        }
    }
    (kept, dropped)
}

// --- resolving ExternalService host names ------------------------------------

/// How often a name is looked up again: its answer's TTL, within these.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// After a failed lookup (no upstream answered): the old addresses stay.
const RETRY: Duration = Duration::from_secs(5);
/// Negative answers without an SOA are cached this long (seconds).
const NEGATIVE_TTL: u32 = 30;

/// What the resolver looks up, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookups {
    pub names: Vec<String>,
    pub upstreams: Vec<SocketAddr>,
}

impl Lookups {
    /// The plan's names, asked of its upstreams (`spec.dns.upstreams`,
    /// else the namespace's resolv.conf). The daemon's own queries are never
    /// captured (`DAEMON_MARK`), so any resolver will do, never our own
    /// listeners.
    pub fn of(plan: &Plan, netns: Option<&Path>) -> Lookups {
        if plan.dns.resolve.is_empty() {
            return Lookups::default(); // no resolv.conf read on every reload
        }
        let configured = if plan.dns.upstreams.is_empty() {
            system_upstreams(netns)
        } else {
            plan.dns.upstreams.clone()
        };
        let ours = if plan.dns.enabled {
            plan.dns.listeners()
        } else {
            Vec::new()
        };
        Lookups {
            names: plan.dns.resolve.clone(),
            upstreams: configured
                .into_iter()
                .filter(|u| !ours.contains(u))
                .collect(),
        }
    }
}

/// A query for `name` of type `t` with id `id`.
fn lookup_query(name: &str, t: RecordType, id: u16) -> Option<Vec<u8>> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    let mut fqdn = Name::from_ascii(name).ok()?;
    fqdn.set_fqdn(true);
    m.add_query(hickory_proto::op::Query::query(fqdn, t));
    m.to_vec().ok()
}

/// The addresses an upstream's reply to query `id` gives (every A and
/// AAAA of the answer, whatever owner: CNAME chains end there) and how long
/// they hold (the lowest TTL; for "no such name" or "no such type", the
/// SOA's). `None`: not an answer (wrong id, SERVFAIL, REFUSED, garbage),
/// and the caller tries elsewhere or later. Pure.
pub fn answer_addresses(reply: &[u8], id: u16) -> Option<(Vec<IpAddr>, u32)> {
    let m = Message::from_vec(reply).ok()?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return None;
    }
    let negative_ttl = || {
        m.authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(NEGATIVE_TTL)
    };
    match m.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Some((Vec::new(), negative_ttl())),
        _ => return None,
    }
    let mut addrs = Vec::new();
    let mut ttl = None::<u32>;
    for r in &m.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs.push(ip);
        ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
    }
    Some((addrs, ttl.unwrap_or_else(negative_ttl)))
}

/// Look `name` up (A, then AAAA) at the first upstream that answers each.
/// `None` if neither type got an answer.
async fn lookup(
    socks: &Sockets,
    upstreams: &[SocketAddr],
    name: &str,
) -> Option<(Vec<IpAddr>, u32)> {
    let mut out: Option<(Vec<IpAddr>, u32)> = None;
    for t in [RecordType::A, RecordType::AAAA] {
        let id = fastrand::u16(..);
        let q = lookup_query(name, t, id)?;
        for up in upstreams {
            let mut reply = ask_udp(socks, *up, &q).await;
            // Truncated: ask again over TCP.
            if reply
                .as_ref()
                .is_some_and(|r| r.len() > 2 && r[2] & 0x02 != 0)
            {
                reply = ask_tcp(socks, *up, &q).await;
            }
            if let Some((addrs, ttl)) = reply.as_deref().and_then(|r| answer_addresses(r, id)) {
                let (all, min) = out.get_or_insert((Vec::new(), u32::MAX));
                all.extend(addrs);
                *min = (*min).min(ttl);
                break;
            }
        }
    }
    out.map(|(mut a, t)| {
        a.sort();
        a.dedup();
        (a, t)
    })
}

/// Resolve `want`'s names, each again when its answer expires (its TTL,
/// within 1 s to 5 min; 5 s after a failure, keeping the old addresses),
/// and publish every name's addresses whenever any changed. Stops when the
/// sender of `want` is dropped.
pub fn spawn_resolver(
    socks: Sockets,
    mut want: watch::Receiver<Lookups>,
) -> watch::Receiver<Arc<Resolved>> {
    let (tx, rx) = watch::channel(Arc::new(Resolved::new()));
    tokio::spawn(async move {
        use tokio::time::Instant;
        // name -> (addresses, when to look again)
        let mut state: BTreeMap<String, (Option<Vec<IpAddr>>, Instant)> = BTreeMap::new();
        loop {
            let lookups = want.borrow_and_update().clone();
            state.retain(|n, _| lookups.names.contains(n));
            for n in &lookups.names {
                state.entry(n.clone()).or_insert((None, Instant::now()));
            }
            let now = Instant::now();
            for (name, (addrs, due)) in state.iter_mut().filter(|(_, (_, d))| *d <= now) {
                match lookup(&socks, &lookups.upstreams, name).await {
                    Some((a, ttl)) => {
                        let ttl = Duration::from_secs(u64::from(ttl));
                        *due = Instant::now() + ttl.clamp(MIN_REFRESH, MAX_REFRESH);
                        if addrs.as_ref() != Some(&a) {
                            tracing::info!(%name, addresses = ?a, "external host resolved");
                        }
                        *addrs = Some(a);
                    }
                    None => {
                        tracing::warn!(%name, upstreams = ?lookups.upstreams, "external host name did not resolve (no upstream answered); keeping its last addresses, trying again in 5 s");
                        *due = Instant::now() + RETRY;
                    }
                }
            }
            let now_map: Resolved = state
                .iter()
                .filter_map(|(n, (a, _))| Some((n.clone(), a.clone()?)))
                .collect();
            tx.send_if_modified(|cur| {
                let changed = **cur != now_map;
                if changed {
                    *cur = Arc::new(now_map);
                }
                changed
            });
            let next = state
                .values()
                .map(|(_, d)| *d)
                .min()
                .unwrap_or_else(|| Instant::now() + MAX_REFRESH);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                r = want.changed() => if r.is_err() { return },
            }
        }
    });
    rx
}

// --- the server ----------------------------------------------------------------

/// The DNS listener's counters by result (taken once: a query formats
/// nothing).
struct Counts {
    answered: Counter,
    forwarded: Counter,
    failed: Counter,
    dropped: Counter,
}

impl Counts {
    fn new(t: &Telemetry) -> Counts {
        let c = |r: &str| {
            t.dns_queries
                .get_or_create(&ResultLabels {
                    result: r.to_string(),
                })
                .clone()
        };
        Counts {
            answered: c("answered"),
            forwarded: c("forwarded"),
            failed: c("failed"),
            dropped: c("dropped"),
        }
    }
}

/// What every listener task shares. Queries are relayed from the
/// daemon's namespace (`socks`), whichever namespace they came from.
struct Shared {
    counts: Counts,
    socks: Sockets,
    names: watch::Receiver<Arc<Names>>,
    fallback: watch::Receiver<Arc<Vec<SocketAddr>>>,
    orig: Arc<OrigTable>,
    udp_forwards: Arc<Admission<IpAddr>>,
    tcp_conns: Arc<Admission<IpAddr>>,
}

/// One network namespace the server listens in: the daemon's (or
/// `--listen-netns`), or a workload's.
struct Space {
    /// Makes the listener sockets there.
    socks: Sockets,
    /// The workload (`namespace/name`) whose namespace it is; None: the
    /// daemon's.
    workload: Option<String>,
    /// Its cookie: how the kernel keys what clients there dialled.
    netns: u64,
    /// sock_diag there (a socket is found only from its own namespace), for
    /// the original resolver of captured UDP queries.
    diag: Mutex<Option<OwnedFd>>,
}

impl Space {
    async fn new(socks: Sockets, netns: u64, workload: Option<String>) -> Arc<Space> {
        let diag = socks.diag().await.ok();
        Arc::new(Space {
            socks,
            workload,
            netns,
            diag: Mutex::new(diag),
        })
    }
}

impl Shared {
    /// Where a captured UDP query from `client` to our `listener` in
    /// `space` was going.
    fn udp_origin(
        &self,
        space: &Space,
        client: SocketAddr,
        listener: SocketAddr,
    ) -> Option<SocketAddr> {
        let cookie = {
            let g = space.diag.lock().unwrap_or_else(|e| e.into_inner());
            crate::sockdiag::udp_cookie(g.as_ref()?, client, listener).ok()??
        };
        self.orig.udp(cookie, listener)
    }

    /// Where to send a query that is not ours: its original destination
    /// (unless that is one of our listeners), else the fallback upstreams.
    fn targets(&self, origin: Option<SocketAddr>, ours: SocketAddr) -> Vec<SocketAddr> {
        match origin {
            Some(o) if o != ours => vec![o],
            _ => self.fallback.borrow().as_ref().clone(),
        }
    }

    async fn forward_udp(&self, targets: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
        for up in targets {
            if let Some(r) = ask_udp(&self.socks, *up, query).await {
                return Some(r);
            }
        }
        None
    }

    async fn forward_tcp(&self, targets: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
        for up in targets {
            if let Some(r) = ask_tcp(&self.socks, *up, query).await {
                return Some(r);
            }
        }
        None
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, ours: SocketAddr, space: Arc<Space>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_UDP + 1];
    let mut logged = None;
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                crate::limits::accept_backoff(&e, "DNS (UDP)", &mut logged).await;
                continue;
            }
        };
        if n > MAX_UDP {
            shared.counts.dropped.inc();
            continue; // oversized: no resolver sends these
        }
        let query = buf[..n].to_vec();
        let reply = respond_for(&query, &shared.names.borrow(), space.workload.as_deref());
        match reply {
            Reply::Local(b) => {
                shared.counts.answered.inc();
                let _ = sock.send_to(&b, client).await;
            }
            Reply::Drop => {
                shared.counts.dropped.inc();
            }
            Reply::Forward => {
                let Some(ticket) = shared.udp_forwards.try_take(client.ip(), 1) else {
                    shared.counts.dropped.inc();
                    continue;
                };
                let (sock, shared, space) = (sock.clone(), shared.clone(), space.clone());
                tokio::spawn(async move {
                    let origin = shared.udp_origin(&space, client, ours);
                    let targets = shared.targets(origin, ours);
                    let resp = match shared.forward_udp(&targets, &query).await {
                        Some(r) => {
                            shared.counts.forwarded.inc();
                            Some(r)
                        }
                        None => {
                            shared.counts.failed.inc();
                            servfail(&query)
                        }
                    };
                    if let Some(b) = resp {
                        let _ = sock.send_to(&b, client).await;
                    }
                    drop(ticket);
                });
            }
        }
    }
}

async fn serve_tcp_conn(
    mut s: TcpStream,
    origin: Option<SocketAddr>,
    ours: SocketAddr,
    space: Arc<Space>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut s)).await else {
            return;
        };
        let reply = respond_for(&query, &shared.names.borrow(), space.workload.as_deref());
        let out = match reply {
            Reply::Local(b) => {
                shared.counts.answered.inc();
                b
            }
            Reply::Drop => {
                shared.counts.dropped.inc();
                return;
            }
            Reply::Forward => {
                let targets = shared.targets(origin, ours);
                let got = shared.forward_tcp(&targets, &query).await;
                match &got {
                    Some(_) => shared.counts.forwarded.inc(),
                    None => shared.counts.failed.inc(),
                };
                match got.or_else(|| servfail(&query)) {
                    Some(b) => b,
                    None => return,
                }
            }
        };
        if write_framed(&mut s, &out).await.is_err() {
            return;
        }
    }
}

async fn serve_tcp(l: TcpListener, ours: SocketAddr, space: Arc<Space>, shared: Arc<Shared>) {
    let mut logged = None;
    loop {
        let (s, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                crate::limits::accept_backoff(&e, "DNS (TCP)", &mut logged).await;
                continue;
            }
        };
        let origin = shared.orig.take_tcp(space.netns, peer);
        let Some(ticket) = shared.tcp_conns.try_take(peer.ip(), 1) else {
            continue;
        };
        let (shared, space) = (shared.clone(), space.clone());
        tokio::spawn(async move {
            serve_tcp_conn(s, origin, ours, space, shared).await;
            drop(ticket);
        });
    }
}

/// The tasks serving one listener address (UDP and TCP); stopped on drop.
struct Listening {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The DNS server: listeners that follow the plan's settings (new ones are
/// bound before the kernel is pointed at them, old ones closed after).
pub struct Dns {
    shared: Arc<Shared>,
    fallback: watch::Sender<Arc<Vec<SocketAddr>>>,
    listen_netns: Option<PathBuf>,
    orig_known: bool,
    /// The daemon's namespace (or `--listen-netns`).
    main: Arc<Space>,
    serving: Vec<Listening>,
    next: Option<Vec<Listening>>,
    /// Workloads' namespaces, by cookie, with their listeners (moved in
    /// place: see [`Dns::serve_in`]).
    workloads: BTreeMap<u64, (Arc<Space>, Vec<Listening>)>,
}

impl Dns {
    /// A server with no listeners yet (see [`Dns::prepare`]).
    pub async fn new(
        socks: Sockets,
        orig: Arc<OrigTable>,
        netns: u64,
        listen_netns: Option<PathBuf>,
        names: watch::Receiver<Arc<Names>>,
        telemetry: &Telemetry,
    ) -> Dns {
        let main = Space::new(socks.clone(), netns, None).await;
        let (fallback, fallback_rx) = watch::channel(Arc::new(Vec::new()));
        let shared = Arc::new(Shared {
            counts: Counts::new(telemetry),
            socks,
            names,
            fallback: fallback_rx,
            orig,
            udp_forwards: Admission::new(MAX_UDP_FORWARDS, MAX_UDP_FORWARDS_PER_PEER),
            tcp_conns: Admission::new(MAX_TCP_CONNS, MAX_TCP_CONNS_PER_PEER),
        });
        Dns {
            shared,
            fallback,
            listen_netns,
            orig_known: false,
            main,
            serving: Vec::new(),
            next: None,
            workloads: BTreeMap::new(),
        }
    }

    /// Can captured UDP queries be traced to their socket? (sock_diag for
    /// UDP: the udp_diag module.) Checked with a socket of our own.
    async fn check_udp_origin(&self) -> bool {
        let Ok(server) = self.shared.socks.udp((Ipv4Addr::LOCALHOST, 0).into()).await else {
            return false;
        };
        let Ok(server_addr) = server.local_addr() else {
            return false;
        };
        let Ok(client) = self.shared.socks.udp_connected(server_addr).await else {
            return false;
        };
        let Ok(client_addr) = client.local_addr() else {
            return false;
        };
        let g = self.main.diag.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().is_some_and(|fd| {
            matches!(
                crate::sockdiag::udp_cookie(fd, client_addr, server_addr),
                Ok(Some(_))
            )
        })
    }

    /// Bind the listeners `plan` asks for (if they are not the ones
    /// serving) and take its upstream settings. Returns the DNS part of
    /// what the kernel should point at.
    pub async fn prepare(&mut self, plan: &Plan) -> Result<Bound> {
        let dns = &plan.dns;
        if !dns.enabled {
            self.next = Some(Vec::new());
            return Ok(Bound::default());
        }
        let want = dns.listeners();
        let serving: Vec<SocketAddr> = self.serving.iter().map(|l| l.addr).collect();
        if want != serving {
            let mut bound = Vec::new();
            for addr in &want {
                bound.push(self.bind(&self.main, *addr).await?);
            }
            self.next = Some(bound);
        }
        if self.serving.is_empty() && self.next.as_ref().is_some_and(|n| !n.is_empty()) {
            self.orig_known = self.check_udp_origin().await;
            if !self.orig_known {
                tracing::warn!(
                    "captured DNS queries over UDP cannot be traced to their socket (sock_diag \
                     for UDP answers nothing: is the udp_diag module loaded? `modprobe \
                     udp_diag`): names that are not virtual hosts go to the fallback upstreams"
                );
            }
        }
        self.set_upstreams(dns, &want);
        Ok(dns_bound(dns, &want))
    }

    fn set_upstreams(&self, dns: &DnsPlan, ours: &[SocketAddr]) {
        let configured = if dns.upstreams.is_empty() {
            system_upstreams(self.listen_netns.as_deref())
        } else {
            dns.upstreams.clone()
        };
        let (kept, dropped) = fallback_upstreams(&configured, ours, self.orig_known);
        for (u, why) in &dropped {
            tracing::warn!("not forwarding DNS to {u}: {why}");
        }
        if kept.is_empty() {
            tracing::warn!(
                "no fallback upstream resolvers (spec.dns.upstreams and resolv.conf give none \
                 usable): queries sent to the DNS listener directly that are not for virtual \
                 hosts get SERVFAIL"
            );
        }
        self.fallback.send_if_modified(|cur| {
            let changed = **cur != kept;
            if changed {
                *cur = Arc::new(kept);
            }
            changed
        });
    }

    async fn bind(&self, space: &Arc<Space>, addr: SocketAddr) -> Result<Listening> {
        let hint = || {
            format!(
                "binding the DNS listener {addr}: is another resolver there? Set RouterConfig \
                 spec.dns.listen/port, or --no-dns"
            )
        };
        let udp = Arc::new(space.socks.udp(addr).await.with_context(hint)?);
        let tcp = space.socks.listen(addr).await.with_context(hint)?;
        let tasks = vec![
            tokio::spawn(serve_udp(udp, addr, space.clone(), self.shared.clone())),
            tokio::spawn(serve_tcp(tcp, addr, space.clone(), self.shared.clone())),
        ];
        tracing::info!(listen = %addr, netns = space.netns, "DNS serving virtual hosts");
        Ok(Listening { addr, tasks })
    }

    /// Close listeners the kernel no longer points at.
    pub fn retire(&mut self) {
        if let Some(next) = self.next.take() {
            self.serving = next;
        }
    }

    /// Listen in a workload's namespace (cookie `netns`, sockets made by
    /// `socks`) on the addresses `dns` asks for; again after the plan moved
    /// them (the old ones are closed first: the workload's DNS is down for
    /// the moment in between, where the daemon's own namespace binds the new
    /// ones beside the old). Returns the addresses bound (none with DNS off).
    pub async fn serve_in(
        &mut self,
        netns: u64,
        socks: &Sockets,
        dns: &DnsPlan,
        workload: &str,
    ) -> Result<Bound> {
        let want = if dns.enabled {
            dns.listeners()
        } else {
            Vec::new()
        };
        let space = match self.workloads.get_mut(&netns) {
            Some((space, serving)) => {
                if serving.iter().map(|l| l.addr).eq(want.iter().copied()) {
                    return Ok(dns_bound(dns, &want));
                }
                serving.clear();
                space.clone()
            }
            None => Space::new(socks.clone(), netns, Some(workload.to_string())).await,
        };
        let mut bound = Vec::new();
        for addr in &want {
            match self.bind(&space, *addr).await {
                Ok(l) => bound.push(l),
                Err(e) => {
                    self.workloads.remove(&netns);
                    return Err(e);
                }
            }
        }
        self.workloads.insert(netns, (space, bound));
        Ok(dns_bound(dns, &want))
    }

    /// Stop listening in a workload's namespace.
    pub fn leave(&mut self, netns: u64) {
        self.workloads.remove(&netns);
    }
}

/// The DNS part of what the kernel points at: the listeners `want`.
fn dns_bound(dns: &DnsPlan, want: &[SocketAddr]) -> Bound {
    Bound {
        dns4: want.iter().copied().find(SocketAddr::is_ipv4),
        dns6: want.iter().copied().find(SocketAddr::is_ipv6),
        capture: dns.capture && !want.is_empty(),
        ..Bound::default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn names() -> Names {
        let mut by_name = HashMap::new();
        by_name.insert("web.mesh".into(), ("240.240.0.1".parse().unwrap(), None));
        by_name.insert(
            "dual.mesh".into(),
            (
                "240.240.0.2".parse().unwrap(),
                Some("2001:2::2".parse().unwrap()),
            ),
        );
        Names {
            by_name,
            scoped: HashMap::new(),
            ttl: 7,
        }
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
    fn fallback_never_points_at_ourselves_or_a_loop() {
        let ours: SocketAddr = "127.0.0.153:53".parse().unwrap();
        let local: SocketAddr = "127.0.0.53:53".parse().unwrap();
        let remote: SocketAddr = "10.53.0.1:53".parse().unwrap();
        let (kept, dropped) = fallback_upstreams(&[ours, local, remote], &[ours], true);
        assert_eq!(kept, vec![local, remote]);
        assert_eq!(dropped.len(), 1);
        let (kept, dropped) = fallback_upstreams(&[ours, local, remote], &[ours], false);
        assert_eq!(kept, vec![remote]);
        assert_eq!(dropped.len(), 2);
    }

    #[test]
    fn resolver_answers_give_addresses_and_how_long_they_hold() {
        let name = Name::from_ascii("api.partner.test.").unwrap();
        let reply = |code: ResponseCode, records: Vec<Record>, soa_ttl: Option<u32>| {
            let mut m = Message::response(7, OpCode::Query);
            m.metadata.response_code = code;
            for r in records {
                m.add_answer(r);
            }
            if let Some(t) = soa_ttl {
                m.add_authority(soa(&name, t));
            }
            m.to_vec().unwrap()
        };
        let a =
            |ip: &str, ttl| Record::from_rdata(name.clone(), ttl, RData::A(A(ip.parse().unwrap())));
        let cname = Record::from_rdata(
            name.clone(),
            300,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(
                Name::from_ascii("lb.partner.test.").unwrap(),
            )),
        );
        // A CNAME chain: the addresses at its end, the lowest TTL of them.
        let r = reply(
            ResponseCode::NoError,
            vec![cname, a("10.9.0.2", 60), a("10.9.0.1", 20)],
            None,
        );
        assert_eq!(
            answer_addresses(&r, 7),
            Some((
                vec!["10.9.0.2".parse().unwrap(), "10.9.0.1".parse().unwrap()],
                20
            ))
        );
        assert_eq!(answer_addresses(&r, 8), None, "another query's answer");
        // No such name, no such type: no addresses, for the SOA's TTL.
        let r = reply(ResponseCode::NXDomain, vec![], Some(15));
        assert_eq!(answer_addresses(&r, 7), Some((vec![], 15)));
        let r = reply(ResponseCode::NoError, vec![], None);
        assert_eq!(answer_addresses(&r, 7), Some((vec![], NEGATIVE_TTL)));
        // A failure is not an answer: the caller keeps what it had.
        let r = reply(ResponseCode::ServFail, vec![], None);
        assert_eq!(answer_addresses(&r, 7), None);
        assert_eq!(answer_addresses(b"garbage", 7), None);
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
