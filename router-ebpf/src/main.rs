//! The router's kernel programs: cgroup sock_addr hooks that send each new
//! connection (or unconnected UDP datagram) aimed at a virtual host's VIP to a
//! backend picked from a slot table the daemon precomputed, and translate the
//! backend back to the VIP wherever the application can see the peer address;
//! and a `sock_ops` program that records, for TCP connections handed to one
//! of the daemon's listeners, what the client dialled, and watches the
//! handshakes of connections sent to backends with outlier detection.
//!
//! Attach points and what each one does:
//! - `connect4/6`: TCP and connected UDP. Rewrite VIP:port -> backend (or ->
//!   the daemon's L7 proxy / DNS listener of the caller's network namespace),
//!   remember the pair in socket-local storage (freed with the socket).
//! - `sendmsg4/6`: unconnected UDP. Rewrite per datagram; the backend is chosen
//!   from the socket cookie so one socket sticks to one backend; the pair goes
//!   into an LRU keyed by (cookie, backend).
//! - `recvmsg4/6`: UDP replies: backend source -> VIP.
//! - `getpeername4/6`: backend -> VIP.
//! - `tcp_ops` (sock_ops):
//!   - TCP_CONNECT_CB (the client's port is known): for a connection handed
//!     to a daemon listener, `(netns, client addr, client port) -> original
//!     destination` into `ROUTER_ODST_V3`, which the daemon reads when it
//!     accepts the connection. One listener serves every L7 service: there
//!     is no per-service port to squat. For a connection sent to a watched
//!     backend (outlier detection), ask for the state and RTO callbacks.
//!   - STATE_CB SYN_SENT -> CLOSE with a segment received (the reset that
//!     answers a SYN nobody listens for), or RTO_CB in SYN_SENT (the SYN went
//!     unanswered): one failure of that backend. At the policy's threshold
//!     of failures in a row the backend is ejected in `ROUTER_BHLTH_V3` and
//!     the daemon told through the `ROUTER_EJECT_V3` ring buffer.
//!   - ACTIVE_ESTABLISHED_CB: a handshake that succeeded resets the count,
//!     and the callbacks are switched off for the rest of the connection.
//!   - TIMEOUT_INIT (before the SYN leaves): with `synRetransmitTimeout`
//!     set, the initial RTO of a connection to a watched backend.
//!
//!   ARCHITECTURE.md ("Kernel-side failure signal") says why sock_ops and
//!   not the tracepoints.
//!
//! Rules (see ARCHITECTURE.md, "Kernel side"):
//! - Not a service and not inside a VIP range: pass untouched (fail open).
//! - Inside a VIP range but not a service: refuse with ECONNREFUSED.
//! - A service with no healthy backend: refuse with EHOSTUNREACH.
//! - DNS is captured, and L7 VIPs are handed to the proxy, only in network
//!   namespaces where the daemon has listeners (netns cookie ->
//!   `ROUTER_LSN_V3`) and only while its heartbeat is fresh. Elsewhere DNS
//!   passes untouched and L7 VIPs are refused with ECONNREFUSED: never handed
//!   to a port nobody (or somebody else) listens on.
//! - An IPv4-mapped IPv6 destination (`::ffff:VIP`, from dual-stack sockets)
//!   is decided as the IPv4 address and rewritten to a mapped address.
//! - No logging on the connect path; O(1) in the number of services: one
//!   header lookup, one slot lookup, one backend lookup, and for a watched
//!   backend one health lookup. Only when that backend is ejected, at most
//!   `EJECT_PROBES` further random slots of the same table (a bounded loop).
//! - `user_ip6` is read and written one 32-bit word at a time and `user_port`
//!   as a whole u32: the verifier rejects any other access size on these ctx
//!   fields.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TIMEOUT_INIT, bpf_sock,
    },
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SkStorage},
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval, bpf_sk_storage_get,
    },
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};
use router_common::{
    BANK_SLOTS, Backend, BackendHealth, BackendStats, CFG_REFUSE_UNKNOWN_VIP, CFG_VALID, DNS_PORT,
    EJECT_PROBES, EJECTIONS_RING_BYTES, ERRNO_DAEMON_DOWN, ERRNO_NO_BACKEND, ERRNO_UNKNOWN_VIP,
    FAIL_RESET, FAIL_SYN_TIMEOUT, FAMILY_V4, FAMILY_V6, GlobalConfig, GlobalStats, KernelEjection,
    LSN_F_DNS, LSN_F_PROXY, Listeners, MAX_BACKENDS, MAX_LISTENER_NETNS, MAX_ORIG_DST, MAX_OWN,
    MAX_SERVICES, MAX_SLOT_ENTRIES, MAX_UDP_REVNAT, MAX_VISIBLE, Meta, OrigDst, OrigKey, PROTO_UDP,
    REV_F_DAEMON, REV_F_FAILED, REV_F_WATCH, RevNat, SVC_F_OWN, SVC_F_PROXY, SVC_F_SCOPED, SlotKey,
    SvcHeader, SvcKey, SvcStats, UdpRevKey, UdpRevValue, VisKey, addr,
};

const NO_PREALLOC: usize = aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize;

// `router_map!`: the map names, from router-common (see build.rs).
include!(concat!(env!("OUT_DIR"), "/maps.rs"));

router_map!(
    services,
    static SERVICES: HashMap<SvcKey, SvcHeader, { MAX_SERVICES as usize }, NO_PREALLOC> =
        HashMap::new();
);
router_map!(
    slots,
    static SLOTS: HashMap<SlotKey, u32, { MAX_SLOT_ENTRIES as usize }, NO_PREALLOC> =
        HashMap::new();
);
router_map!(
    backends,
    static BACKENDS: HashMap<u32, Backend, { MAX_BACKENDS as usize }, NO_PREALLOC> = HashMap::new();
);
router_map!(
    config,
    static CONFIG: Array<GlobalConfig, 1> = Array::new();
);
router_map!(
    listeners,
    static LISTENERS: HashMap<u64, Listeners, { MAX_LISTENER_NETNS as usize }, NO_PREALLOC> =
        HashMap::new();
);
router_map!(
    sock_revnat,
    static SOCK_REVNAT: SkStorage<RevNat> = SkStorage::new();
);
router_map!(
    udp_revnat,
    static UDP_REVNAT: LruHashMap<UdpRevKey, UdpRevValue, { MAX_UDP_REVNAT as usize }> =
        LruHashMap::new();
);
router_map!(
    orig_dst,
    static ORIG_DST: LruHashMap<OrigKey, OrigDst, { MAX_ORIG_DST as usize }> = LruHashMap::new();
);
router_map!(
    svc_stats,
    static SVC_STATS: PerCpuArray<SvcStats, { MAX_SERVICES as usize }> = PerCpuArray::new();
);
router_map!(
    backend_stats,
    static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();
);
router_map!(
    global_stats,
    static GLOBAL_STATS: PerCpuArray<GlobalStats, 1> = PerCpuArray::new();
);
// Until when (monotonic ns) the daemon counts as alive.
router_map!(alive, static ALIVE: Array<u64, 1> = Array::new(););
// Daemon-only bookkeeping (never read here); declared in the object so that it
// is created and pinned with the other maps.
router_map!(meta, static META: Array<Meta, 1> = Array::new(););
router_map!(
    backend_health,
    static BACKEND_HEALTH: Array<BackendHealth, { MAX_BACKENDS as usize }> = Array::new();
);
router_map!(
    visible,
    static VISIBLE: HashMap<VisKey, u32, { MAX_VISIBLE as usize }, NO_PREALLOC> = HashMap::new();
);
router_map!(
    own,
    static OWN: HashMap<VisKey, u32, { MAX_OWN as usize }, NO_PREALLOC> = HashMap::new();
);
router_map!(
    ejections,
    static EJECTIONS: RingBuf<KernelEjection, { EJECTIONS_RING_BYTES as usize }> = RingBuf::new();
);

/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

/// Where a rewritten call goes.
#[derive(Clone, Copy)]
struct Target {
    addr: [u32; 4],
    /// Network byte order.
    port: u16,
    /// One of the daemon's listeners (the L7 proxy or DNS).
    daemon: bool,
    /// The backend's id (0 for a daemon listener).
    backend_id: u32,
    /// The backend has outlier detection: watch the handshake.
    watch: bool,
}

/// What the lookup decided for one address.
enum Verdict {
    /// Not ours: leave the call alone.
    Pass,
    /// Fail the call with this errno.
    Refuse(i32),
    /// Rewrite the destination.
    Rewrite(Target),
}

/// Which counter a successful rewrite bumps.
#[derive(Clone, Copy)]
enum Kind {
    Connect,
    Datagram,
}

#[inline(always)]
fn bump_global(f: impl FnOnce(&mut GlobalStats)) {
    if let Some(p) = GLOBAL_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, valid for the duration of the program.
        f(unsafe { &mut *p });
    }
}

#[inline(always)]
fn bump_svc(id: u32, f: impl FnOnce(&mut SvcStats)) {
    if let Some(p) = SVC_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU value, valid for the duration of the program.
        f(unsafe { &mut *p });
    }
}

#[inline(always)]
fn bump_backend(id: u32, f: impl FnOnce(&mut BackendStats)) {
    if let Some(p) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU value, valid for the duration of the program.
        f(unsafe { &mut *p });
    }
}

/// Is the daemon's heartbeat fresh?
#[inline(always)]
fn daemon_alive() -> bool {
    let until = ALIVE.get(0).copied().unwrap_or(0);
    // SAFETY: helper call.
    until != 0 && unsafe { bpf_ktime_get_ns() } <= until
}

/// The daemon's listeners in the caller's network namespace.
#[inline(always)]
fn listeners(ctx: &SockAddrContext) -> Option<Listeners> {
    // SAFETY: helper call on the sock_addr ctx.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // SAFETY: the value is copied at once.
    unsafe { LISTENERS.get(netns) }.copied()
}

/// An L7 service: the connection goes to the daemon's proxy listener in the
/// caller's network namespace, or is refused when there is none or the
/// daemon is down.
#[inline(always)]
fn proxy(ctx: &SockAddrContext, key: &SvcKey, svc_id: u32, kind: Kind) -> Verdict {
    let target = match listeners(ctx) {
        Some(l) if l.flags & LSN_F_PROXY != 0 && l.proxy_port != 0 && daemon_alive() => {
            let addr = if key.family == FAMILY_V4 {
                [l.proxy4, 0, 0, 0]
            } else {
                l.proxy6
            };
            (addr != [0, 0, 0, 0]).then_some(Target {
                addr,
                port: l.proxy_port,
                daemon: true,
                backend_id: 0,
                watch: false,
            })
        }
        _ => None,
    };
    let Some(t) = target else {
        bump_svc(svc_id, |s| s.no_backend += 1);
        bump_global(|s| s.proxy_refused += 1);
        return Verdict::Refuse(ERRNO_DAEMON_DOWN);
    };
    bump_svc(svc_id, |s| match kind {
        Kind::Connect => s.connects += 1,
        Kind::Datagram => s.datagrams += 1,
    });
    Verdict::Rewrite(t)
}

/// An address that is no service: capture DNS, refuse inside the VIP
/// ranges, or pass. One config lookup, only on this (miss) path.
#[inline(always)]
fn miss(ctx: &SockAddrContext, key: &SvcKey) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    if cfg.flags & CFG_VALID == 0 {
        return Verdict::Pass;
    }
    if key.port == DNS_PORT.to_be()
        && let Some(t) = dns_listener(ctx, cfg, key)
    {
        bump_global(|s| s.dns_captured += 1);
        return Verdict::Rewrite(t);
    }
    if cfg.flags & CFG_REFUSE_UNKNOWN_VIP != 0 {
        let inside = if key.family == FAMILY_V4 {
            addr::in_v4_range(cfg, key.addr[0])
        } else {
            addr::in_v6_range(cfg, &key.addr)
        };
        if inside {
            bump_global(|s| s.unknown_vip += 1);
            return Verdict::Refuse(ERRNO_UNKNOWN_VIP);
        }
    }
    Verdict::Pass
}

/// The daemon's DNS listener in the caller's namespace, unless there is
/// none, the daemon is down, the query is already going there, or it comes
/// from the daemon itself (its sockets carry `cfg.mark`).
#[inline(always)]
fn dns_listener(ctx: &SockAddrContext, cfg: &GlobalConfig, key: &SvcKey) -> Option<Target> {
    if cfg.mark != 0 {
        // SAFETY: ctx->sk is a valid bpf_sock for sock_addr programs; 4-byte load.
        let mark =
            unsafe { core::ptr::read_volatile(&(*(*ctx.sock_addr).__bindgen_anon_1.sk).mark) };
        if mark == cfg.mark {
            return None;
        }
    }
    let l = listeners(ctx)?;
    if l.flags & LSN_F_DNS == 0 {
        return None;
    }
    let addr = if key.family == FAMILY_V4 {
        [l.dns4, 0, 0, 0]
    } else {
        l.dns6
    };
    if addr == [0, 0, 0, 0] || (addr == key.addr && l.dns_port == key.port) {
        return None;
    }
    // A dead daemon must not take DNS down with it: capture only while its
    // heartbeat is fresh.
    if !daemon_alive() {
        return None;
    }
    Some(Target {
        addr,
        port: l.dns_port,
        daemon: true,
        backend_id: 0,
        watch: false,
    })
}

/// Does the caller's network namespace see this workload-scoped VIP? (One
/// more hash lookup, only for scoped services.)
#[inline(always)]
fn visible(ctx: &SockAddrContext, key: &SvcKey) -> bool {
    // SAFETY: helper call on the sock_addr ctx.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // SAFETY: only the presence is read.
    unsafe { VISIBLE.get(ns_key(netns, key.addr, key.family)) }.is_some()
}

/// `(a network namespace, an address)`: the key of the workloads' maps.
#[inline(always)]
fn ns_key(netns: u64, addr: [u32; 4], family: u8) -> VisKey {
    VisKey {
        netns,
        addr,
        family,
        _pad: [0; 7],
    }
}

/// The O(1) lookup: header, one slot, one backend. `pick` is a 32-bit value
/// (random for connect, the socket cookie for unconnected UDP).
#[inline(always)]
fn decide(ctx: &SockAddrContext, key: &SvcKey, pick: u32, kind: Kind) -> Verdict {
    // SAFETY: values of hash maps are read once, copied, before any update
    // from this program could invalidate them.
    let Some(hdr) = (unsafe { SERVICES.get(key) }) else {
        return miss(ctx, key);
    };
    let (svc_id, count, base, flags) = (hdr.svc_id, hdr.count, hdr.base, hdr.flags);
    if flags & SVC_F_SCOPED != 0 && !visible(ctx, key) {
        // A workload-scoped host this caller's namespace does not see: as
        // if the VIP did not exist.
        bump_global(|s| s.unknown_vip += 1);
        return Verdict::Refuse(ERRNO_UNKNOWN_VIP);
    }
    if flags & SVC_F_PROXY != 0 {
        return proxy(ctx, key, svc_id, kind);
    }
    if count == 0 {
        bump_svc(svc_id, |s| s.no_backend += 1);
        return Verdict::Refuse(ERRNO_NO_BACKEND);
    }
    let slot = SlotKey {
        svc_id,
        slot: base + pick % count,
    };
    let Some((backend_id, backend)) = slot_backend(slot) else {
        // The daemon writes backends, then slots, then the header, and deletes
        // an old bank only after a grace period: this can only happen if the
        // maps were edited by hand. Never send a VIP out.
        // (The one log line on this path: it is never taken in normal operation.)
        bump_svc(svc_id, |s| s.inconsistent += 1);
        aya_log_ebpf::error!(
            ctx,
            "service {} slot {} has no backend: refusing",
            svc_id,
            slot.slot
        );
        return Verdict::Refuse(ERRNO_NO_BACKEND);
    };
    // The caller's namespace, read once, when the service has a workload's
    // own address among its endpoints.
    let own_ns = if flags & SVC_F_OWN != 0 {
        // SAFETY: helper call on the sock_addr ctx.
        Some(unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) })
    } else {
        None
    };
    let first = (backend_id, backend);
    let (backend_id, backend) = if backend.eject_after != 0 && ejected(backend_id) {
        bump_backend(backend_id, |s| s.ejected_skips += 1);
        pick_again(own_ns, svc_id, base, count).unwrap_or_else(|| {
            bump_global(|s| s.ejected_fallback += 1);
            first
        })
    } else if let Some(ns) = own_ns.filter(|ns| is_own(*ns, &backend)) {
        pick_again(own_ns, svc_id, base, count)
            .or_else(|| walk_for_other(ns, svc_id, base, count, pick % count))
            .unwrap_or(first)
    } else {
        first
    };
    bump_svc(svc_id, |s| match kind {
        Kind::Connect => s.connects += 1,
        Kind::Datagram => s.datagrams += 1,
    });
    bump_backend(backend_id, |s| match kind {
        Kind::Connect => s.connects += 1,
        Kind::Datagram => s.datagrams += 1,
    });
    Verdict::Rewrite(Target {
        addr: backend.addr,
        port: backend.port,
        daemon: false,
        backend_id,
        watch: backend.eject_after != 0,
    })
}

/// The backend a slot names, copied.
#[inline(always)]
fn slot_backend(slot: SlotKey) -> Option<(u32, Backend)> {
    // SAFETY: values of hash maps are copied at once.
    let id = *unsafe { SLOTS.get(slot) }?;
    unsafe { BACKENDS.get(id) }.map(|b| (id, *b))
}

/// Has the kernel ejected this backend (and is the ejection still running)?
#[inline(always)]
fn ejected(id: u32) -> bool {
    match BACKEND_HEALTH.get(id) {
        // SAFETY: helper call.
        Some(h) => h.ejected_until != 0 && unsafe { bpf_ktime_get_ns() } < h.ejected_until,
        None => false,
    }
}

/// The first pick's backend is ejected: try up to `EJECT_PROBES` other
/// random slots of the same table (so the weights and the locality tier the
/// daemon compiled still hold); if every one is ejected too, keep the first
/// pick (None here: the kernel never refuses on its own, the daemon decides
/// whether a whole tier is out).
///
/// The same for a workload's own address (`own_ns`: the caller's namespace,
/// when the service has a workload's address among its endpoints): a caller
/// is not sent to itself when another endpoint can be found.
#[inline(always)]
fn pick_again(own_ns: Option<u64>, svc_id: u32, base: u32, count: u32) -> Option<(u32, Backend)> {
    for _ in 0..EJECT_PROBES {
        // SAFETY: helper call.
        let pick = unsafe { bpf_get_prandom_u32() };
        let slot = SlotKey {
            svc_id,
            slot: base + pick % count,
        };
        if let Some((id, b)) = slot_backend(slot)
            && (b.eject_after == 0 || !ejected(id))
            && !own_ns.is_some_and(|ns| is_own(ns, &b))
        {
            return Some((id, b));
        }
    }
    None
}

/// Slots [`walk_for_other`] looks at, at most. Each one is verified as
/// its own copy of the loop body (in both connect programs): 32 added
/// about 100 ms to loading the programs, 8 adds a few.
const OWN_WALK: u32 = 8;

/// Every random probe found the caller's own address too: walk the table
/// from the first pick (`from`, its offset), at most `OWN_WALK` slots, for
/// any other endpoint. Random probes alone left a pod its own peer now and
/// then (two endpoints of equal weight: one connect in 512, seen in the
/// workloads test), which the rule forbids while another endpoint exists;
/// the walk finds one in every table of up to `OWN_WALK + 1` slots (equal
/// shares take one slot per endpoint), and in larger ones unless the
/// `OWN_WALK` slots after the first pick are all the caller's.
#[inline(always)]
fn walk_for_other(
    ns: u64,
    svc_id: u32,
    base: u32,
    count: u32,
    from: u32,
) -> Option<(u32, Backend)> {
    for i in 1..=OWN_WALK {
        if i >= count {
            return None;
        }
        let slot = SlotKey {
            svc_id,
            slot: base + (from + i) % count,
        };
        if let Some((id, b)) = slot_backend(slot)
            && (b.eject_after == 0 || !ejected(id))
            && !is_own(ns, &b)
        {
            return Some((id, b));
        }
    }
    None
}

/// Is `b` the caller's own address (its namespace is a workload's, and the
/// address one of its Pod's)?
#[inline(always)]
fn is_own(netns: u64, b: &Backend) -> bool {
    // SAFETY: only the presence is read.
    unsafe { OWN.get(ns_key(netns, b.addr, b.family)) }.is_some()
}

#[inline(always)]
fn refuse(errno: i32) -> i32 {
    // SAFETY: helper call; sets the errno the syscall returns when we reject.
    unsafe { bpf_set_retval(-errno) };
    REJECT
}

// --- context accessors: exact-width loads and stores only -------------------

#[inline(always)]
fn sa(ctx: &SockAddrContext) -> *mut aya_ebpf::bindings::bpf_sock_addr {
    ctx.sock_addr
}

#[inline(always)]
fn read_v4(ctx: &SockAddrContext) -> ([u32; 4], u16) {
    // SAFETY: ctx is the kernel-provided bpf_sock_addr; 4-byte loads.
    unsafe {
        let s = sa(ctx);
        let ip = core::ptr::read_volatile(&(*s).user_ip4);
        let port = core::ptr::read_volatile(&(*s).user_port);
        ([ip, 0, 0, 0], port as u16)
    }
}

#[inline(always)]
fn read_v6(ctx: &SockAddrContext) -> ([u32; 4], u16) {
    // SAFETY: as above, one 4-byte load per word.
    unsafe {
        let s = sa(ctx);
        let ip = [
            core::ptr::read_volatile(&(*s).user_ip6[0]),
            core::ptr::read_volatile(&(*s).user_ip6[1]),
            core::ptr::read_volatile(&(*s).user_ip6[2]),
            core::ptr::read_volatile(&(*s).user_ip6[3]),
        ];
        let port = core::ptr::read_volatile(&(*s).user_port);
        (ip, port as u16)
    }
}

#[inline(always)]
fn write_addr(ctx: &SockAddrContext, family: u8, ip: &[u32; 4], port: u16) {
    // SAFETY: 4-byte stores into the writable user_ip4/user_ip6/user_port.
    unsafe {
        let s = sa(ctx);
        if family == FAMILY_V4 {
            core::ptr::write_volatile(&mut (*s).user_ip4, ip[0]);
        } else {
            core::ptr::write_volatile(&mut (*s).user_ip6[0], ip[0]);
            core::ptr::write_volatile(&mut (*s).user_ip6[1], ip[1]);
            core::ptr::write_volatile(&mut (*s).user_ip6[2], ip[2]);
            core::ptr::write_volatile(&mut (*s).user_ip6[3], ip[3]);
        }
        core::ptr::write_volatile(&mut (*s).user_port, u32::from(port));
    }
}

#[inline(always)]
fn read_addr(ctx: &SockAddrContext, family: u8) -> ([u32; 4], u16) {
    if family == FAMILY_V4 {
        read_v4(ctx)
    } else {
        read_v6(ctx)
    }
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: 4-byte load of a readable ctx field.
    unsafe { core::ptr::read_volatile(&(*sa(ctx)).protocol) as u8 }
}

/// The address as the service maps key it: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) is looked up as IPv4. Returns `(key addr, key
/// family, mapped)`.
#[inline(always)]
fn key_of(ip: &[u32; 4], family: u8) -> ([u32; 4], u8, bool) {
    if family == FAMILY_V6 && addr::is_v4_mapped(ip) {
        ([ip[3], 0, 0, 0], FAMILY_V4, true)
    } else {
        (*ip, family, false)
    }
}

/// The address to write back: mapped again when the caller dialled a mapped one.
#[inline(always)]
fn out_addr(t: &Target, mapped: bool) -> [u32; 4] {
    if mapped {
        addr::v4_mapped(t.addr[0])
    } else {
        t.addr
    }
}

// --- the operations, shared by both families ---------------------------------

#[inline(always)]
fn do_connect(ctx: &SockAddrContext, family: u8) -> i32 {
    let (ip, port) = read_addr(ctx, family);
    let (kaddr, kfamily, mapped) = key_of(&ip, family);
    let proto = protocol(ctx);
    let key = SvcKey {
        addr: kaddr,
        port,
        proto,
        family: kfamily,
    };
    // SAFETY: helper call.
    let pick = unsafe { bpf_get_prandom_u32() };
    match decide(ctx, &key, pick, Kind::Connect) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse(errno) => refuse(errno),
        Verdict::Rewrite(t) => {
            let to = out_addr(&t, mapped);
            write_addr(ctx, family, &to, t.port);
            // SAFETY: ctx->sk is a valid socket for sock_addr programs.
            let rev = unsafe { SOCK_REVNAT.get_or_insert_ptr_mut(ctx, None) };
            if rev.is_null() {
                bump_global(|s| s.revnat_failed += 1);
            } else {
                // SAFETY: non-null storage owned by this socket.
                let rev = unsafe { &mut *rev };
                rev.vip = ip;
                rev.vip_port = port;
                rev.backend = to;
                rev.backend_port = t.port;
                rev.family = family;
                rev.flags = if t.daemon {
                    REV_F_DAEMON
                } else if t.watch && proto != PROTO_UDP {
                    REV_F_WATCH
                } else {
                    0
                };
                rev.backend_id = t.backend_id;
            }
            if t.daemon && proto == PROTO_UDP {
                // A DNS query on a connected UDP socket: the daemon finds its
                // original resolver by the socket's cookie.
                remember_udp(ctx, family, &to, t.port, &ip, port);
            }
            ALLOW
        }
    }
}

/// `(cookie, where it was sent) -> what the application dialled`, for
/// UDP replies and for the daemon's DNS forwarding.
#[inline(always)]
fn remember_udp(
    ctx: &SockAddrContext,
    family: u8,
    to: &[u32; 4],
    to_port: u16,
    vip: &[u32; 4],
    vip_port: u16,
) -> u64 {
    // SAFETY: helper call on the sock_addr ctx.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let rk = UdpRevKey {
        cookie,
        addr: *to,
        port: to_port,
        family,
        _pad: [0; 5],
    };
    let rv = UdpRevValue {
        vip: *vip,
        port: vip_port,
        _pad: [0; 6],
    };
    if UDP_REVNAT.insert(rk, rv, 0).is_err() {
        bump_global(|s| s.revnat_failed += 1);
    }
    cookie
}

#[inline(always)]
fn do_sendmsg(ctx: &SockAddrContext, family: u8) -> i32 {
    let (ip, port) = read_addr(ctx, family);
    let (kaddr, kfamily, mapped) = key_of(&ip, family);
    let key = SvcKey {
        addr: kaddr,
        port,
        proto: PROTO_UDP,
        family: kfamily,
    };
    // SAFETY: helper call on the sock_addr ctx.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // Cookies are sequential; fold both halves so consecutive sockets spread.
    let pick = (cookie ^ (cookie >> 32)) as u32;
    match decide(ctx, &key, pick, Kind::Datagram) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse(errno) => refuse(errno),
        Verdict::Rewrite(t) => {
            let to = out_addr(&t, mapped);
            write_addr(ctx, family, &to, t.port);
            remember_udp(ctx, family, &to, t.port, &ip, port);
            ALLOW
        }
    }
}

/// Backend -> VIP for the peer address the application is about to see.
/// `udp` also consults the unconnected-UDP LRU.
#[inline(always)]
fn do_reverse(ctx: &SockAddrContext, family: u8, udp: bool) -> i32 {
    let (ip, port) = read_addr(ctx, family);
    // SAFETY: lookup only (no create).
    let rev = unsafe { SOCK_REVNAT.get_ptr_mut(ctx) };
    if !rev.is_null() {
        // SAFETY: non-null storage owned by this socket.
        let rev = unsafe { &*rev };
        if rev.family == family && rev.backend == ip && rev.backend_port == port {
            let (vip, vport) = (rev.vip, rev.vip_port);
            write_addr(ctx, family, &vip, vport);
            return ALLOW;
        }
    }
    if udp {
        // SAFETY: helper call.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        // A dual-stack socket's datagram to `::ffff:VIP` went through the
        // IPv4 path (sendmsg4 saw it, and keyed it as IPv4); its reply shows
        // here as `::ffff:backend`.
        let (kaddr, kfamily, mapped) = key_of(&ip, family);
        let rk = UdpRevKey {
            cookie,
            addr: kaddr,
            port,
            family: kfamily,
            _pad: [0; 5],
        };
        // SAFETY: value copied immediately.
        if let Some(v) = unsafe { UDP_REVNAT.get(rk) } {
            let (vip, vport) = (v.vip, v.port);
            let vip = if mapped { addr::v4_mapped(vip[0]) } else { vip };
            write_addr(ctx, family, &vip, vport);
        }
    }
    ALLOW
}

// --- sock_ops: the original destination of connections to daemon listeners --

const AF_INET: u32 = 2;

/// TCP states as `tcp_set_state` numbers them (include/net/tcp_states.h).
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;

/// The socket's `RevNat` (set by the connect hook), if it has one: storage
/// owned by the socket, valid for this program run.
#[inline(always)]
fn revnat(ctx: &SockOpsContext) -> Option<core::ptr::NonNull<RevNat>> {
    // SAFETY: ctx->sk is PTR_TO_SOCKET_OR_NULL; 8-byte load, checked below.
    let sk: *mut bpf_sock = unsafe { core::ptr::read_volatile(&(*ctx.ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    let map = core::ptr::from_ref(&SOCK_REVNAT).cast_mut().cast();
    // SAFETY: lookup without create on a full socket.
    let rev =
        unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.cast::<RevNat>();
    core::ptr::NonNull::new(rev)
}

/// At TCP_CONNECT_CB the client's port is bound: record what a connection
/// handed to a daemon listener dialled, or ask to see the handshake of a
/// connection to a watched backend.
#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    let Some(rev) = revnat(ctx) else { return };
    // SAFETY: see `revnat`; copied at once.
    let rev = unsafe { *rev.as_ptr() };
    if rev.flags & REV_F_DAEMON != 0 {
        record_orig_dst(ctx, &rev);
    } else if rev.flags & REV_F_WATCH != 0 {
        let _ = ctx.set_cb_flags((BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG) as i32);
    }
}

/// Before the SYN leaves: the initial retransmission timeout of a
/// connection to a watched backend, when the node config sets one (the
/// reply, in jiffies; no reply keeps Linux's 1 s).
#[inline(always)]
fn on_timeout_init(ctx: &SockOpsContext) {
    let Some(cfg) = CONFIG.get(0) else { return };
    let rto = cfg.syn_rto_jiffies;
    if rto == 0 {
        return;
    }
    let Some(rev) = revnat(ctx) else { return };
    // SAFETY: see `revnat`; one byte read.
    if unsafe { (*rev.as_ptr()).flags } & REV_F_WATCH != 0 {
        ctx.set_reply(rto);
    }
}

/// The handshake succeeded: the backend's failures in a row are over, and
/// nothing more of this connection needs watching.
#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    // Only connections to watched backends asked for callbacks: the others
    // (nearly all) leave without a storage lookup.
    if ctx.cb_flags() & BPF_SOCK_OPS_STATE_CB_FLAG == 0 {
        return;
    }
    let Some(rev) = revnat(ctx) else { return };
    // SAFETY: see `revnat`; copied at once.
    let rev = unsafe { *rev.as_ptr() };
    if rev.flags & REV_F_WATCH == 0 {
        return;
    }
    let id = rev.backend_id;
    let _ = ctx.set_cb_flags(0);
    if let Some(h) = BACKEND_HEALTH.get_ptr_mut(id) {
        // SAFETY: array value; plain loads and stores (a lost update between
        // CPUs only makes the count approximate).
        unsafe {
            if core::ptr::read_volatile(&(*h).fails) != 0 {
                core::ptr::write_volatile(&mut (*h).fails, 0);
            }
        }
    }
}

/// A state change: SYN_SENT -> CLOSE after a segment came back is the reset
/// that answers a SYN nobody listens for; after a retransmitted SYN it is
/// the SYN timing out (counted at the first RTO already). Closed by the
/// application before any answer: not the backend's failure.
#[inline(always)]
fn on_state(ctx: &SockOpsContext) {
    if ctx.arg(0) != TCP_SYN_SENT || ctx.arg(1) != TCP_CLOSE {
        return;
    }
    // SAFETY: 4-byte loads of readable sock_ops fields.
    let (segs_in, retrans) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ops).segs_in),
            core::ptr::read_volatile(&(*ctx.ops).total_retrans),
        )
    };
    let reason = if segs_in > 0 {
        FAIL_RESET
    } else if retrans > 0 {
        FAIL_SYN_TIMEOUT
    } else {
        return;
    };
    failed(ctx, reason);
}

/// A retransmission timeout while the SYN is out: the backend does not
/// answer (host down, packets dropped).
#[inline(always)]
fn on_rto(ctx: &SockOpsContext) {
    // SAFETY: 4-byte load of a readable sock_ops field.
    if unsafe { core::ptr::read_volatile(&(*ctx.ops).state) } != TCP_SYN_SENT {
        return;
    }
    failed(ctx, FAIL_SYN_TIMEOUT);
}

/// Count one failed handshake of the connection's backend (once per
/// connection); at the backend's threshold, eject it and tell the daemon.
#[inline(always)]
fn failed(ctx: &SockOpsContext, reason: u8) {
    let Some(mut rev) = revnat(ctx) else { return };
    // SAFETY: see `revnat`.
    let rev = unsafe { rev.as_mut() };
    if rev.flags & (REV_F_WATCH | REV_F_FAILED) != REV_F_WATCH {
        return;
    }
    rev.flags |= REV_F_FAILED;
    let id = rev.backend_id;
    // SAFETY: copied at once.
    let Some(b) = (unsafe { BACKENDS.get(id) }).copied() else {
        return;
    };
    // The id may have been handed to another endpoint since the connect
    // (ids are reused after a grace period): the port must still match.
    if b.eject_after == 0 || b.port != rev.backend_port {
        return;
    }
    bump_backend(id, |s| s.failures += 1);
    let Some(h) = BACKEND_HEALTH.get_ptr_mut(id) else {
        return;
    };
    // SAFETY: array value, valid for this run; plain loads and stores
    // (atomics with a result need Linux 5.12, and an approximate count is
    // enough for a threshold).
    let h = unsafe { &mut *h };
    let fails = h.fails + 1;
    h.fails = fails;
    h.last_reason = u32::from(reason);
    if fails < b.eject_after {
        return;
    }
    // SAFETY: helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if h.ejected_until > now {
        return;
    }
    h.ejected_until = now + u64::from(b.eject_ms) * 1_000_000;
    h.fails = 0;
    let ev = KernelEjection {
        addr: b.addr,
        port: b.port,
        family: b.family,
        reason,
        backend_id: id,
        fails,
        _pad: 0,
    };
    if EJECTIONS.output(ev, 0).is_err() {
        bump_global(|s| s.ejections_lost += 1);
    }
}

/// Record what a connection handed to a daemon listener dialled, keyed the
/// way the listener sees the client (an IPv4-mapped client address as IPv4).
#[inline(always)]
fn record_orig_dst(ctx: &SockOpsContext, rev: &RevNat) {
    // SAFETY: 4-byte loads of readable sock_ops fields.
    let (family, local) = unsafe {
        let o = ctx.ops;
        if core::ptr::read_volatile(&(*o).family) == AF_INET {
            (
                FAMILY_V4,
                [core::ptr::read_volatile(&(*o).local_ip4), 0, 0, 0],
            )
        } else {
            (
                FAMILY_V6,
                [
                    core::ptr::read_volatile(&(*o).local_ip6[0]),
                    core::ptr::read_volatile(&(*o).local_ip6[1]),
                    core::ptr::read_volatile(&(*o).local_ip6[2]),
                    core::ptr::read_volatile(&(*o).local_ip6[3]),
                ],
            )
        }
    };
    let (kaddr, kfamily, _) = key_of(&local, family);
    // SAFETY: 4-byte load; `local_port` is in host byte order.
    let lport = unsafe { core::ptr::read_volatile(&(*ctx.ops).local_port) } as u16;
    let (vaddr, vfamily, _) = key_of(&rev.vip, rev.family);
    let key = OrigKey {
        // SAFETY: helper call on the sock_ops ctx (Linux 5.15+).
        netns: unsafe { bpf_get_netns_cookie(ctx.ops.cast()) },
        addr: kaddr,
        port: lport.to_be(),
        family: kfamily,
        _pad: [0; 5],
    };
    let value = OrigDst {
        addr: vaddr,
        port: rev.vip_port,
        family: vfamily,
        _pad: [0; 5],
    };
    if ORIG_DST.insert(key, value, 0).is_err() {
        bump_global(|s| s.orig_failed += 1);
    }
}

// --- entry points -----------------------------------------------------------

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    do_connect(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    do_connect(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    do_sendmsg(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    do_sendmsg(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    do_reverse(&ctx, FAMILY_V4, true)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    do_reverse(&ctx, FAMILY_V6, true)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    do_reverse(&ctx, FAMILY_V4, false)
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    do_reverse(&ctx, FAMILY_V6, false)
}

#[sock_ops]
pub fn tcp_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB => on_state(&ctx),
        BPF_SOCK_OPS_RTO_CB => on_rto(&ctx),
        BPF_SOCK_OPS_TIMEOUT_INIT => on_timeout_init(&ctx),
        _ => {}
    }
    1
}

// Keep BANK_SLOTS referenced so the shared constant and the kernel agree on
// what "base" means (the daemon writes base = 1 or BANK_SLOTS + 1).
const _: () = assert!(BANK_SLOTS > 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
