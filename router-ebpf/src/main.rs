//! The router's kernel programs: cgroup sock_addr hooks that send each new
//! connection (or unconnected UDP datagram) aimed at a virtual host's VIP to a
//! backend picked from a slot table the daemon precomputed, and translate the
//! backend back to the VIP wherever the application can see the peer address.
//!
//! Attach points and what each one does:
//! - `connect4/6`: TCP and connected UDP. Rewrite VIP:port -> backend, remember
//!   the pair in socket-local storage (freed with the socket).
//! - `sendmsg4/6`: unconnected UDP. Rewrite per datagram; the backend is chosen
//!   from the socket cookie so one socket sticks to one backend; the pair goes
//!   into an LRU keyed by (cookie, backend).
//! - `recvmsg4/6`: UDP replies: backend source -> VIP.
//! - `getpeername4/6`: backend -> VIP.
//!
//! Rules (see ARCHITECTURE.md, "Kernel side"):
//! - Not a service and not inside a VIP range: pass untouched (fail open).
//! - Inside a VIP range but not a service: refuse with ECONNREFUSED.
//! - A service with no healthy backend: refuse with EHOSTUNREACH.
//! - No loops, no logging on the connect path; O(1) in the number of services:
//!   one header lookup, one slot lookup, one backend lookup.
//! - `user_ip6` is read and written one 32-bit word at a time and `user_port`
//!   as a whole u32: the verifier rejects any other access size on these ctx
//!   fields.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, SkStorage},
    helpers::generated::{
        bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval,
    },
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use router_common::{
    BANK_SLOTS, Backend, BackendStats, CFG_DNS_CAPTURE, CFG_REFUSE_UNKNOWN_VIP, CFG_VALID, Config,
    DNS_PORT, ERRNO_NO_BACKEND, ERRNO_UNKNOWN_VIP, FAMILY_V4, FAMILY_V6, GlobalStats, MAX_BACKENDS,
    MAX_SERVICES, MAX_SLOT_ENTRIES, MAX_UDP_REVNAT, Meta, PROTO_UDP, RevNat, SVC_F_PROXY, SlotKey,
    SvcHeader, SvcKey, SvcStats, UdpRevKey, UdpRevValue, addr,
};

const NO_PREALLOC: usize = aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize;

#[btf_map(name = "ROUTER_SVC_V1")]
static SERVICES: HashMap<SvcKey, SvcHeader, { MAX_SERVICES as usize }, NO_PREALLOC> =
    HashMap::new();
#[btf_map(name = "ROUTER_SLOT_V1")]
static SLOTS: HashMap<SlotKey, u32, { MAX_SLOT_ENTRIES as usize }, NO_PREALLOC> = HashMap::new();
#[btf_map(name = "ROUTER_BE_V1")]
static BACKENDS: HashMap<u32, Backend, { MAX_BACKENDS as usize }, NO_PREALLOC> = HashMap::new();
#[btf_map(name = "ROUTER_CFG_V1")]
static CONFIG: Array<Config, 1> = Array::new();
#[btf_map(name = "ROUTER_SOCK_V1")]
static SOCK_REVNAT: SkStorage<RevNat> = SkStorage::new();
#[btf_map(name = "ROUTER_UDPRN_V1")]
static UDP_REVNAT: LruHashMap<UdpRevKey, UdpRevValue, { MAX_UDP_REVNAT as usize }> =
    LruHashMap::new();
#[btf_map(name = "ROUTER_SSTAT_V1")]
static SVC_STATS: PerCpuArray<SvcStats, { MAX_SERVICES as usize }> = PerCpuArray::new();
#[btf_map(name = "ROUTER_BSTAT_V1")]
static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();
#[btf_map(name = "ROUTER_GSTAT_V1")]
static GLOBAL_STATS: PerCpuArray<GlobalStats, 1> = PerCpuArray::new();
/// Until when (monotonic ns) the daemon's DNS listener is alive.
#[btf_map(name = "ROUTER_DNSOK_V1")]
static DNS_ALIVE: Array<u64, 1> = Array::new();
/// Daemon-only bookkeeping (never read here); declared in the object so that it
/// is created and pinned with the other maps.
#[btf_map(name = "ROUTER_META_V1")]
static META: Array<Meta, 1> = Array::new();

/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

/// What the lookup decided for one address.
enum Verdict {
    /// Not ours: leave the call alone.
    Pass,
    /// Fail the call with this errno.
    Refuse(i32),
    /// Rewrite the destination to this backend.
    Rewrite(Backend),
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

/// An L7 service: the connection goes to the daemon's proxy listener for it.
#[inline(always)]
fn proxy(key: &SvcKey, svc_id: u32, port: u16, kind: Kind) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Refuse(ERRNO_NO_BACKEND);
    };
    let addr = if key.family == FAMILY_V4 {
        [cfg.proxy4, 0, 0, 0]
    } else {
        cfg.proxy6
    };
    if addr == [0, 0, 0, 0] || port == 0 {
        bump_svc(svc_id, |s| s.no_backend += 1);
        return Verdict::Refuse(ERRNO_NO_BACKEND);
    }
    bump_svc(svc_id, |s| match kind {
        Kind::Connect => s.connects += 1,
        Kind::Datagram => s.datagrams += 1,
    });
    Verdict::Rewrite(Backend {
        addr,
        port,
        family: key.family,
        ..Backend::default()
    })
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
    if cfg.flags & CFG_DNS_CAPTURE != 0
        && key.port == DNS_PORT.to_be()
        && let Some(b) = dns_listener(ctx, cfg, key)
    {
        bump_global(|s| s.dns_captured += 1);
        return Verdict::Rewrite(b);
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

/// The daemon's DNS listener for this family, unless the query is already
/// going there or comes from the daemon itself (its sockets carry `cfg.mark`).
#[inline(always)]
fn dns_listener(ctx: &SockAddrContext, cfg: &Config, key: &SvcKey) -> Option<Backend> {
    let addr = if key.family == FAMILY_V4 {
        [cfg.dns4, 0, 0, 0]
    } else {
        cfg.dns6
    };
    if addr == [0, 0, 0, 0] || (addr == key.addr && cfg.dns_port == key.port) {
        return None;
    }
    // A dead daemon must not take DNS down with it: capture only while its
    // heartbeat is fresh.
    let alive_until = DNS_ALIVE.get(0).copied().unwrap_or(0);
    // SAFETY: helper call.
    if unsafe { bpf_ktime_get_ns() } > alive_until {
        return None;
    }
    if cfg.mark != 0 {
        // SAFETY: ctx->sk is a valid bpf_sock for sock_addr programs; 4-byte load.
        let mark =
            unsafe { core::ptr::read_volatile(&(*(*ctx.sock_addr).__bindgen_anon_1.sk).mark) };
        if mark == cfg.mark {
            return None;
        }
    }
    Some(Backend {
        addr,
        port: cfg.dns_port,
        family: key.family,
        ..Backend::default()
    })
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
    let (svc_id, count, base) = (hdr.svc_id, hdr.count, hdr.base);
    if hdr.flags & SVC_F_PROXY != 0 {
        return proxy(key, svc_id, hdr.proxy_port, kind);
    }
    if count == 0 {
        bump_svc(svc_id, |s| s.no_backend += 1);
        return Verdict::Refuse(ERRNO_NO_BACKEND);
    }
    let slot = SlotKey {
        svc_id,
        slot: base + pick % count,
    };
    let backend = match unsafe { SLOTS.get(slot) } {
        Some(id) => {
            let id = *id;
            unsafe { BACKENDS.get(id) }.map(|b| (id, *b))
        }
        None => None,
    };
    let Some((backend_id, backend)) = backend else {
        // The daemon writes backends, then slots, then the header: this can
        // only happen if the maps were edited by hand. Never send a VIP out.
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
    bump_svc(svc_id, |s| match kind {
        Kind::Connect => s.connects += 1,
        Kind::Datagram => s.datagrams += 1,
    });
    if let Some(p) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        let s = unsafe { &mut *p };
        match kind {
            Kind::Connect => s.connects += 1,
            Kind::Datagram => s.datagrams += 1,
        }
    }
    Verdict::Rewrite(backend)
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

// --- the four operations, shared by both families ----------------------------

#[inline(always)]
fn do_connect(ctx: &SockAddrContext, family: u8) -> i32 {
    let (ip, port) = read_addr(ctx, family);
    let key = SvcKey {
        addr: ip,
        port,
        proto: protocol(ctx),
        family,
    };
    // SAFETY: helper call.
    let pick = unsafe { bpf_get_prandom_u32() };
    match decide(ctx, &key, pick, Kind::Connect) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse(errno) => refuse(errno),
        Verdict::Rewrite(b) => {
            write_addr(ctx, family, &b.addr, b.port);
            // SAFETY: ctx->sk is a valid socket for sock_addr programs.
            let rev = unsafe { SOCK_REVNAT.get_or_insert_ptr_mut(ctx, None) };
            if rev.is_null() {
                bump_global(|s| s.revnat_failed += 1);
            } else {
                // SAFETY: non-null storage owned by this socket.
                let rev = unsafe { &mut *rev };
                rev.vip = ip;
                rev.vip_port = port;
                rev.backend = b.addr;
                rev.backend_port = b.port;
                rev.family = family;
            }
            ALLOW
        }
    }
}

#[inline(always)]
fn do_sendmsg(ctx: &SockAddrContext, family: u8) -> i32 {
    let (ip, port) = read_addr(ctx, family);
    let key = SvcKey {
        addr: ip,
        port,
        proto: PROTO_UDP,
        family,
    };
    // SAFETY: helper call on the sock_addr ctx.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // Cookies are sequential; fold both halves so consecutive sockets spread.
    let pick = (cookie ^ (cookie >> 32)) as u32;
    match decide(ctx, &key, pick, Kind::Datagram) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse(errno) => refuse(errno),
        Verdict::Rewrite(b) => {
            write_addr(ctx, family, &b.addr, b.port);
            let rk = UdpRevKey {
                cookie,
                addr: b.addr,
                port: b.port,
                family,
                _pad: [0; 5],
            };
            let rv = UdpRevValue {
                vip: ip,
                port,
                _pad: [0; 6],
            };
            if UDP_REVNAT.insert(rk, rv, 0).is_err() {
                bump_global(|s| s.revnat_failed += 1);
            }
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
        let rk = UdpRevKey {
            cookie,
            addr: ip,
            port,
            family,
            _pad: [0; 5],
        };
        // SAFETY: value copied immediately.
        if let Some(v) = unsafe { UDP_REVNAT.get(rk) } {
            let (vip, vport) = (v.vip, v.port);
            write_addr(ctx, family, &vip, vport);
        }
    }
    ALLOW
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
