//! Map keys, values and constants shared by the kernel programs (`router-ebpf`)
//! and the daemon (`router-user`).
//!
//! Rules for everything in this file (they are what keeps two compilers, for two
//! targets, agreeing on one byte layout):
//! - `#[repr(C)]`, explicit padding fields, no bit fields, no `bool`, no enums.
//! - Every field says its byte order and what 0 means.
//! - Sizes and offsets are asserted at compile time below; changing a layout
//!   means bumping [`ABI_VERSION`] (the bpffs directory and the map names carry
//!   it), because aya reuses a pinned map without checking its layout.
#![cfg_attr(not(any(test, feature = "build")), no_std)]

#[cfg(feature = "build")]
pub mod inputs;

/// The layout version, written once: bump this literal whenever any struct
/// below changes (aya reuses a pinned map without checking its layout, so
/// the version is in the pin directory and in every map name). Everything
/// else (the constants below, and the kernel object's map names, generated
/// by router-ebpf's build script from these constants) follows.
macro_rules! layout {
    () => {
        "3"
    };
}

/// `ROUTER_<base>_V<layout>`.
macro_rules! map_name {
    ($base:literal) => {
        concat!("ROUTER_", $base, "_V", layout!())
    };
}

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0u32;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// Version of the map layouts. Part of every map name and of the pin directory
/// (`<bpffs>/<root>/v3/`).
pub const ABI_VERSION: u32 = parse_u32(layout!());

/// Directory under the pin root that holds this layout's maps and links.
/// Directories of older layouts (`v1` ... `v<ABI_VERSION - 1>`) are removed
/// by a new daemon once its own programs serve (their programs would
/// otherwise keep rewriting VIPs with a stale plan ahead of the new ones).
pub const PIN_SUBDIR: &str = concat!("v", layout!());

// ---------------------------------------------------------------------------
// Map names. The kernel limits object names to 15 bytes; these are also the
// file names under the pin directory.
// ---------------------------------------------------------------------------

/// `SvcKey -> SvcHeader`: one entry per (VIP, port, protocol).
pub const MAP_SERVICES: &str = map_name!("SVC");
/// `SlotKey -> u32 backend id`: the precomputed slot tables.
pub const MAP_SLOTS: &str = map_name!("SLOT");
/// `u32 backend id -> Backend`.
pub const MAP_BACKENDS: &str = map_name!("BE");
/// Array of one `GlobalConfig`.
pub const MAP_CONFIG: &str = map_name!("CFG");
/// `u64 netns cookie -> Listeners`: the daemon's DNS and L7 proxy listeners
/// in each network namespace it serves. DNS is captured and L7 VIPs are
/// handed to the proxy only for sockets of those namespaces.
pub const MAP_LISTENERS: &str = map_name!("LSN");
/// Socket-local storage: `RevNat` for connected sockets (TCP, connected UDP).
pub const MAP_SOCK_REVNAT: &str = map_name!("SOCK");
/// LRU `UdpRevKey -> UdpRevValue` for unconnected UDP (`sendmsg`), and for
/// DNS queries captured on connected UDP sockets (so the daemon can find a
/// query's original resolver from the socket cookie).
pub const MAP_UDP_REVNAT: &str = map_name!("UDPRN");
/// LRU `OrigKey -> OrigDst`: for TCP connections handed to one of the
/// daemon's listeners (the L7 proxy, DNS over TCP), what the client dialled,
/// keyed by the client's own address as the listener sees it. Written by the
/// `tcp_ops` (sock_ops) program when the connection starts; read (and deleted) by the
/// daemon when it accepts it.
pub const MAP_ORIG_DST: &str = map_name!("ODST");
/// Per-CPU array indexed by service id: `SvcStats`.
pub const MAP_SVC_STATS: &str = map_name!("SSTAT");
/// Per-CPU array indexed by backend id: `BackendStats`.
pub const MAP_BACKEND_STATS: &str = map_name!("BSTAT");
/// Per-CPU array of one `GlobalStats`.
pub const MAP_GLOBAL_STATS: &str = map_name!("GSTAT");
/// Array of one `Meta`: written and read by the daemon only.
pub const MAP_META: &str = map_name!("META");
/// Array of one u64: CLOCK_MONOTONIC nanoseconds until which the daemon
/// counts as alive (its heartbeat). The daemon pushes it forward every
/// second from a thread of its own; when it stops (or is killed), within
/// seconds DNS is no longer captured (queries go to the resolver the process
/// asked, as if routerd were not there) and L7 VIPs are refused with
/// [`ERRNO_DAEMON_DOWN`] instead of being handed to a port nobody serves.
pub const MAP_ALIVE: &str = map_name!("ALIVE");
/// Array indexed by backend id: `BackendHealth`, what the kernel saw of
/// connections it sent to each backend (failures in a row, and until when
/// the connect hook avoids it). Written by `tcp_ops` and the connect hook;
/// the daemon lifts an ejection it does not confirm.
pub const MAP_BACKEND_HEALTH: &str = map_name!("BHLTH");
/// Ring buffer of `KernelEjection`: a backend the kernel stopped sending
/// connections to, for the daemon to confirm (slot tables recompiled
/// without it) or lift.
pub const MAP_EJECTIONS: &str = map_name!("EJECT");
/// `VisKey -> u32` (1): which network namespaces see which workload-scoped
/// VIPs (the hosts of RouteTables with `workloadSelectors`). A service
/// whose header has [`SVC_F_SCOPED`] is used only by callers whose
/// namespace has an entry for the VIP; others are refused as if the VIP
/// did not exist.
pub const MAP_VISIBLE: &str = map_name!("VIS");
/// `VisKey -> u32` (1): the workloads' own addresses (their Pods' IPs), by
/// the workload's network namespace. A service whose header has
/// [`SVC_F_OWN`] does not send a workload to its own address when another
/// endpoint can be found.
pub const MAP_OWN: &str = map_name!("OWN");

/// The kernel object's maps: `(key the eBPF sources name it by, map name)`.
/// router-ebpf's build script turns this table into the `router_map!`
/// macro that puts each name on its map definition, so the names exist
/// here only.
pub const KERNEL_MAPS: [(&str, &str); 17] = [
    ("services", MAP_SERVICES),
    ("slots", MAP_SLOTS),
    ("backends", MAP_BACKENDS),
    ("config", MAP_CONFIG),
    ("listeners", MAP_LISTENERS),
    ("sock_revnat", MAP_SOCK_REVNAT),
    ("udp_revnat", MAP_UDP_REVNAT),
    ("orig_dst", MAP_ORIG_DST),
    ("svc_stats", MAP_SVC_STATS),
    ("backend_stats", MAP_BACKEND_STATS),
    ("global_stats", MAP_GLOBAL_STATS),
    ("meta", MAP_META),
    ("alive", MAP_ALIVE),
    ("backend_health", MAP_BACKEND_HEALTH),
    ("ejections", MAP_EJECTIONS),
    ("visible", MAP_VISIBLE),
    ("own", MAP_OWN),
];

/// Every map the daemon pins, in the order it creates them.
pub const PINNED_MAPS: [&str; 17] = [
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_CONFIG,
    MAP_LISTENERS,
    MAP_SOCK_REVNAT,
    MAP_UDP_REVNAT,
    MAP_ORIG_DST,
    MAP_SVC_STATS,
    MAP_BACKEND_STATS,
    MAP_GLOBAL_STATS,
    MAP_META,
    MAP_ALIVE,
    MAP_BACKEND_HEALTH,
    MAP_EJECTIONS,
    MAP_VISIBLE,
    MAP_OWN,
];

/// The cgroup sock_addr programs, by ELF symbol name.
pub const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

/// The `sock_ops` program: records the original destination of TCP
/// connections handed to the daemon's listeners, and watches the handshake
/// of connections sent to backends that have outlier detection.
pub const SOCK_OPS_PROGRAM: &str = "tcp_ops";

/// Every program the daemon attaches to the cgroup (one pinned link each).
pub const PROGRAMS: [&str; 9] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
    SOCK_OPS_PROGRAM,
];

// ---------------------------------------------------------------------------
// Sizes.
// ---------------------------------------------------------------------------

/// Default size of the service map and its per-CPU counters: largest service
/// id + 1 (ids start at 1; 0 means "none"). The counters are preallocated
/// (32 bytes x this x CPUs), so the default is moderate; the daemon sets the
/// real size when it first loads the datapath (`--max-services`).
pub const MAX_SERVICES: u32 = 16_384;
/// Default size of the backend map and its per-CPU counters (32 bytes x this
/// x CPUs); `--max-backends` at first load.
pub const MAX_BACKENDS: u32 = 65_536;
/// Slots per bank. A service's slot table lives in one of two banks
/// (`1..=BANK_SLOTS` or `BANK_SLOTS+1..=2*BANK_SLOTS`); the daemon writes the
/// inactive bank, then flips the header, so a reader never sees a mix.
pub const BANK_SLOTS: u32 = 16_384;
/// Entries of the slot map (hash, not preallocated).
pub const MAX_SLOT_ENTRIES: u32 = 1_048_576;
/// Entries of the UDP reverse-translation LRU.
pub const MAX_UDP_REVNAT: u32 = 65_536;
/// Entries of the original-destination LRU (TCP connections between the
/// client's connect() and the daemon's accept()).
pub const MAX_ORIG_DST: u32 = 65_536;
/// Network namespaces with listeners.
pub const MAX_LISTENER_NETNS: u32 = 4_096;
/// (workload namespace, scoped VIP) pairs: e.g. 200 pods each seeing 160
/// scoped VIPs (both families).
pub const MAX_VISIBLE: u32 = 65_536;
/// (workload namespace, own address) pairs.
pub const MAX_OWN: u32 = 16_384;
/// Bytes of the kernel-ejection ring buffer (a page multiple; 32-byte events
/// plus an 8-byte header: 1,600 ejections before the daemon reads).
pub const EJECTIONS_RING_BYTES: u32 = 65_536;
/// Slots the connect hook tries after one whose backend the kernel ejected
/// (each a fresh random pick from the same slot table, so weights and the
/// locality tier hold). With a third of a table ejected, 1 connect in 6,561
/// still lands on an ejected backend until the daemon recompiles the table.
pub const EJECT_PROBES: u32 = 8;

// ---------------------------------------------------------------------------
// Flags and constants.
// ---------------------------------------------------------------------------

/// `SvcKey::family` / `Backend::family` value for IPv4.
pub const FAMILY_V4: u8 = 4;
/// `SvcKey::family` / `Backend::family` value for IPv6.
pub const FAMILY_V6: u8 = 6;
/// IP protocol numbers as they appear in `bpf_sock_addr.protocol`.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `Config::flags`: the entry has been written by the daemon. While this bit is
/// clear the programs never refuse anything (fail open), so a zeroed map can
/// not black-hole traffic.
pub const CFG_VALID: u32 = 1;
/// `Config::flags`: refuse connections to addresses inside the VIP ranges that
/// are not a known service (instead of letting them leave the host).
pub const CFG_REFUSE_UNKNOWN_VIP: u32 = 2;
/// `Listeners::flags`: send DNS (port 53, UDP and TCP) of this namespace to
/// the daemon's listener.
pub const LSN_F_DNS: u32 = 1;
/// `Listeners::flags`: the L7 proxy listens in this namespace.
pub const LSN_F_PROXY: u32 = 2;
/// The DNS port, host byte order.
pub const DNS_PORT: u16 = 53;
/// `SO_MARK` on every socket the daemon makes; `Config::mark` carries it.
/// The programs never capture or redirect such sockets.
pub const DAEMON_MARK: u32 = 0x5244_4e53; // "RDNS"
/// How far ahead the daemon sets `MAP_ALIVE` (it refreshes every second).
pub const ALIVE_NS: u64 = 3_000_000_000;

/// `SvcHeader::flags`: connections go to the daemon's L7 proxy (the
/// listener of the caller's network namespace in `MAP_LISTENERS`); there are
/// no slots.
pub const SVC_F_PROXY: u16 = 1;
/// `SvcHeader::flags`: the service's host is workload-scoped (a RouteTable
/// with `workloadSelectors`): only callers whose network namespace has an
/// entry in [`MAP_VISIBLE`] for the VIP may use it; the others are refused
/// with [`ERRNO_UNKNOWN_VIP`], as if it did not exist.
pub const SVC_F_SCOPED: u16 = 2;
/// `SvcHeader::flags`: some endpoint of the service is a workload's own
/// address (a Pod's IP): the connect hook checks [`MAP_OWN`] for the
/// endpoint it picked and the caller's namespace, and picks again (up to
/// [`EJECT_PROBES`] slots, as for ejected endpoints) when it is the
/// caller's own; the only endpoint left, it keeps it.
pub const SVC_F_OWN: u16 = 4;

/// `RevNat::flags`: the connection was handed to one of the daemon's
/// listeners (the L7 proxy or DNS); `tcp_ops` records its original
/// destination in [`MAP_ORIG_DST`].
pub const REV_F_DAEMON: u8 = 1;
/// `RevNat::flags`: the backend has outlier detection; `tcp_ops` watches
/// the handshake (state and retransmission callbacks) and counts a failure.
pub const REV_F_WATCH: u8 = 2;
/// `RevNat::flags`: this connection's failure was counted already (a SYN
/// retransmission, then the close that follows, count once).
pub const REV_F_FAILED: u8 = 4;

/// `KernelEjection::reason` / `BackendHealth::last_reason`: the backend
/// answered the SYN with a reset (nothing listens: the process died).
pub const FAIL_RESET: u8 = 1;
/// The SYN went unanswered for a retransmission timeout (host down,
/// packets dropped).
pub const FAIL_SYN_TIMEOUT: u8 = 2;

/// errno values the programs set with `bpf_set_retval` (as negatives).
pub const ERRNO_NO_BACKEND: i32 = 113; // EHOSTUNREACH: a known service, no healthy backend
pub const ERRNO_UNKNOWN_VIP: i32 = 111; // ECONNREFUSED: inside a VIP range, not a service
/// ECONNREFUSED: an L7 service while the daemon is down, or from a network
/// namespace where the daemon has no proxy listener.
pub const ERRNO_DAEMON_DOWN: i32 = 111;

/// The third 32-bit word of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
/// as it sits in memory (network byte order); words 0 and 1 are zero and
/// word 3 is the IPv4 address.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

// ---------------------------------------------------------------------------
// Map types.
// ---------------------------------------------------------------------------

/// Key of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    /// VIP, network byte order, as the 32-bit words of `bpf_sock_addr.user_ip4`
    /// / `user_ip6`. IPv4 uses `addr[0]` and leaves the rest 0.
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol: [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// Value of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SvcHeader {
    /// Service id, `1..MAX_SERVICES`; index into [`MAP_SVC_STATS`] and the
    /// first half of every [`SlotKey`] of this service. Never 0.
    pub svc_id: u32,
    /// Number of slots in the active bank. 0: the service has no healthy
    /// backend and `connect()` fails with [`ERRNO_NO_BACKEND`].
    pub count: u32,
    /// Slot number of the first slot of the active bank: 1 or `BANK_SLOTS + 1`.
    pub base: u32,
    /// `SVC_F_*` bits.
    pub flags: u16,
    pub _pad: u16,
}

/// Key of [`MAP_SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// [`SvcHeader::svc_id`] of the owning service.
    pub svc_id: u32,
    /// `base .. base + count` of the owning header. Never 0.
    pub slot: u32,
}

/// Value of [`MAP_BACKENDS`] (key: backend id, `u32`, `1..MAX_BACKENDS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Endpoint address, network byte order, same layout as [`SvcKey::addr`].
    pub addr: [u32; 4],
    /// Endpoint port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`]. Always the family of the services that use it.
    pub family: u8,
    pub _pad: u8,
    /// Cluster index in the daemon's applied plan (for `routerd inspect`); the
    /// kernel never reads it. 0: unknown.
    pub cluster_id: u16,
    /// Locality index in the daemon's applied plan (for `routerd inspect`); the
    /// kernel never reads it. 0: unknown.
    pub locality_id: u16,
    /// Failed handshakes in a row after which the connect hook stops
    /// choosing this backend (the OutlierDetectionPolicy's threshold). 0:
    /// the kernel does not watch it.
    pub eject_after: u32,
    /// For how long (milliseconds) the kernel avoids it once ejected; the
    /// daemon then recompiles the slot tables without it for as long as
    /// the policy says (with back-off).
    pub eject_ms: u32,
}

/// The one entry of [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GlobalConfig {
    /// `CFG_*` bits. 0 (never written): the programs pass everything untouched.
    pub flags: u32,
    /// IPv4 VIP range: network and mask, network byte order.
    pub v4_net: u32,
    pub v4_mask: u32,
    /// `SO_MARK` of the daemon's own sockets, which are never captured or
    /// redirected (host byte order). 0: no exemption.
    pub mark: u32,
    /// IPv6 VIP range: network and mask, as four network-byte-order words.
    pub v6_net: [u32; 4],
    pub v6_mask: [u32; 4],
    /// Initial SYN retransmission timeout, in the kernel's jiffies, of
    /// connections to watched backends (`BPF_SOCK_OPS_TIMEOUT_INIT`); 0:
    /// Linux's own (1 s).
    pub syn_rto_jiffies: u32,
    pub _pad: u32,
}

/// Value of [`MAP_LISTENERS`] (key: the network namespace's cookie, `u64`,
/// as `bpf_get_netns_cookie` and `SO_NETNS_COOKIE` give it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Listeners {
    /// `LSN_F_*` bits.
    pub flags: u32,
    /// The DNS listener for IPv4 clients, network byte order. 0: IPv4 DNS is
    /// not captured.
    pub dns4: u32,
    /// The DNS listener for IPv6 clients. All zero: IPv6 DNS is not captured.
    pub dns6: [u32; 4],
    /// The L7 proxy's listener for IPv4 clients, network byte order. 0:
    /// IPv4 clients of L7 services are refused.
    pub proxy4: u32,
    /// The DNS listeners' port, network byte order.
    pub dns_port: u16,
    /// The L7 proxy listeners' port, network byte order (a privileged port:
    /// no unprivileged process can take it over while the daemon is down).
    pub proxy_port: u16,
    /// The proxy's listener for IPv6 clients. All zero: IPv6 clients of L7
    /// services are refused.
    pub proxy6: [u32; 4],
}

/// Value of [`MAP_SOCK_REVNAT`] (socket-local storage, freed with the socket):
/// what a connected socket dialled and where it was sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    /// The VIP the application dialled, network byte order.
    pub vip: [u32; 4],
    /// The backend the connection was rewritten to, network byte order.
    pub backend: [u32; 4],
    /// VIP port, network byte order.
    pub vip_port: u16,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`]; 0: entry unused.
    pub family: u8,
    /// `REV_F_*` bits.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Id of the backend in [`MAP_BACKENDS`]; 0: a daemon listener.
    pub backend_id: u32,
}

/// Value of [`MAP_BACKEND_HEALTH`] (index: backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendHealth {
    /// Failed handshakes since the last one that succeeded (racy across
    /// CPUs: an approximate count is enough for a threshold).
    pub fails: u32,
    /// `FAIL_*` of the last failure; 0: none.
    pub last_reason: u32,
    /// CLOCK_MONOTONIC ns until which the connect hook avoids this backend;
    /// 0: not ejected.
    pub ejected_until: u64,
}

/// An event of [`MAP_EJECTIONS`]: the kernel ejected a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelEjection {
    /// The backend's address, network byte order.
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    /// `FAIL_*` of the failure that crossed the threshold.
    pub reason: u8,
    pub backend_id: u32,
    /// Failures in a row counted.
    pub fails: u32,
    pub _pad: u32,
}

/// Key of [`MAP_UDP_REVNAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct UdpRevKey {
    /// Socket cookie (`bpf_get_socket_cookie`), host byte order.
    pub cookie: u64,
    /// Backend address a datagram was sent to, network byte order.
    pub addr: [u32; 4],
    /// Backend port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Value of [`MAP_UDP_REVNAT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UdpRevValue {
    /// The VIP the application sent to, network byte order.
    pub vip: [u32; 4],
    /// VIP port, network byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Key of [`MAP_VISIBLE`]: a workload's network namespace and a scoped VIP
/// it sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VisKey {
    /// Cookie of the workload's network namespace (host byte order).
    pub netns: u64,
    /// The VIP, network byte order (IPv4 in the first word).
    pub addr: [u32; 4],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 7],
}

/// Key of [`MAP_ORIG_DST`]: a TCP client as the daemon's listener sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OrigKey {
    /// Cookie of the client's network namespace (host byte order).
    pub netns: u64,
    /// The client's own address, network byte order. An IPv4-mapped IPv6
    /// address is stored as IPv4 (that is how an IPv4 listener sees it).
    pub addr: [u32; 4],
    /// The client's own port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Value of [`MAP_ORIG_DST`]: what the client dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    /// Address, network byte order (IPv4-mapped addresses as IPv4).
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`]; 0: entry unused.
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Value of [`MAP_SVC_STATS`] (per CPU; sum over CPUs to read).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SvcStats {
    /// `connect()` calls rewritten (TCP and connected UDP).
    pub connects: u64,
    /// Unconnected UDP datagrams rewritten by `sendmsg`.
    pub datagrams: u64,
    /// Calls refused because the service had no healthy backend (or, for an
    /// L7 service, because no proxy serves the caller right now).
    pub no_backend: u64,
    /// Calls refused because a slot or backend was missing (should stay 0).
    pub inconsistent: u64,
}

/// Value of [`MAP_BACKEND_STATS`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendStats {
    /// Connections sent to this backend.
    pub connects: u64,
    /// Unconnected UDP datagrams sent to this backend.
    pub datagrams: u64,
    /// Handshakes that failed (reset, SYN timeout), counted for backends
    /// with outlier detection.
    pub failures: u64,
    /// Connects that found this backend ejected by the kernel and went to
    /// another slot.
    pub ejected_skips: u64,
}

/// Value of [`MAP_GLOBAL_STATS`] (per CPU, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GlobalStats {
    /// Calls refused because the address was in a VIP range but not a service.
    pub unknown_vip: u64,
    /// Connections rewritten whose reverse translation could not be stored
    /// (getpeername then shows the backend).
    pub revnat_failed: u64,
    /// DNS connects and datagrams sent to the daemon's listener.
    pub dns_captured: u64,
    /// L7 connections refused: the daemon was down, or the caller's network
    /// namespace has no proxy listener.
    pub proxy_refused: u64,
    /// Connections handed to a daemon listener whose original destination
    /// could not be recorded (the daemon then closes them).
    pub orig_failed: u64,
    /// Connects whose first pick and every further probe found a backend
    /// the kernel ejected: they went to the first pick (the daemon
    /// recompiles the table without it within milliseconds).
    pub ejected_fallback: u64,
    /// Kernel ejections the daemon was not told of (its ring buffer was
    /// full): they last the policy's base ejection time, unconfirmed.
    pub ejections_lost: u64,
}

/// Length of [`Meta::cgroup_path`].
pub const META_PATH_LEN: usize = 224;

/// The one entry of [`MAP_META`]: what the daemon needs to adopt a pinned
/// datapath after a restart. The kernel programs never read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// FNV-1a 64 of the eBPF object the attached programs were loaded from.
    /// 0: never written.
    pub object_hash: u64,
    /// Inode number of the cgroup v2 directory the programs are attached to.
    pub cgroup_id: u64,
    /// Incremented by every applied plan.
    pub generation: u64,
    /// Wall-clock time of the last applied plan, milliseconds since the epoch.
    pub applied_unix_ms: u64,
    /// The cgroup path, UTF-8, NUL-padded (for error messages).
    pub cgroup_path: [u8; META_PATH_LEN],
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            object_hash: 0,
            cgroup_id: 0,
            generation: 0,
            applied_unix_ms: 0,
            cgroup_path: [0; META_PATH_LEN],
        }
    }
}

// ---------------------------------------------------------------------------
// Layout assertions.
// ---------------------------------------------------------------------------

macro_rules! assert_layout {
    ($t:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
    };
}
assert_layout!(SvcKey, 20);
assert_layout!(SvcHeader, 16);
assert_layout!(SlotKey, 8);
assert_layout!(Backend, 32);
assert_layout!(GlobalConfig, 56);
assert_layout!(Listeners, 48);
assert_layout!(RevNat, 44);
assert_layout!(BackendHealth, 16);
assert_layout!(KernelEjection, 32);
assert_layout!(UdpRevKey, 32);
assert_layout!(UdpRevValue, 24);
assert_layout!(OrigKey, 32);
assert_layout!(VisKey, 32);
assert_layout!(OrigDst, 24);
assert_layout!(SvcStats, 32);
assert_layout!(BackendStats, 32);
assert_layout!(GlobalStats, 56);
assert_layout!(Meta, 256);
const _: () = assert!(core::mem::offset_of!(SvcKey, port) == 16);
const _: () = assert!(core::mem::offset_of!(SvcKey, family) == 19);
const _: () = assert!(core::mem::offset_of!(Backend, cluster_id) == 20);
const _: () = assert!(core::mem::offset_of!(GlobalConfig, v6_net) == 16);
const _: () = assert!(core::mem::offset_of!(Listeners, dns_port) == 28);
const _: () = assert!(core::mem::offset_of!(Listeners, proxy6) == 32);
const _: () = assert!(core::mem::offset_of!(RevNat, vip_port) == 32);
const _: () = assert!(core::mem::offset_of!(RevNat, flags) == 37);
const _: () = assert!(core::mem::offset_of!(RevNat, backend_id) == 40);
const _: () = assert!(core::mem::offset_of!(KernelEjection, backend_id) == 20);
const _: () = assert!(core::mem::offset_of!(UdpRevKey, addr) == 8);
const _: () = assert!(core::mem::offset_of!(OrigKey, port) == 24);
const _: () = assert!(2 * BANK_SLOTS < u32::MAX);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, have no implicit padding (the
    // sizes above equal the sum of the fields) and every bit pattern is valid.
    unsafe impl aya::Pod for SvcKey {}
    unsafe impl aya::Pod for SvcHeader {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for GlobalConfig {}
    unsafe impl aya::Pod for Listeners {}
    unsafe impl aya::Pod for OrigKey {}
    unsafe impl aya::Pod for VisKey {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for UdpRevKey {}
    unsafe impl aya::Pod for UdpRevValue {}
    unsafe impl aya::Pod for SvcStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for GlobalStats {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for BackendHealth {}
    unsafe impl aya::Pod for KernelEjection {}
}

/// IPv4 and IPv6 helpers shared by both sides (pure, no allocation).
pub mod addr {
    use super::{GlobalConfig, V4_MAPPED_WORD};

    /// True for an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), what a
    /// dual-stack socket (Java's default) dials for an IPv4 destination.
    #[inline(always)]
    pub fn is_v4_mapped(ip: &[u32; 4]) -> bool {
        ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD
    }

    /// `::ffff:a.b.c.d` for the IPv4 address `v4` (network byte order).
    #[inline(always)]
    pub fn v4_mapped(v4: u32) -> [u32; 4] {
        [0, 0, V4_MAPPED_WORD, v4]
    }

    /// True when `ip` (network byte order) is inside the configured IPv4 range.
    #[inline(always)]
    pub fn in_v4_range(cfg: &GlobalConfig, ip: u32) -> bool {
        ip & cfg.v4_mask == cfg.v4_net
    }

    /// True when `ip` (network byte order words) is inside the IPv6 range.
    #[inline(always)]
    pub fn in_v6_range(cfg: &GlobalConfig, ip: &[u32; 4]) -> bool {
        ip[0] & cfg.v6_mask[0] == cfg.v6_net[0]
            && ip[1] & cfg.v6_mask[1] == cfg.v6_net[1]
            && ip[2] & cfg.v6_mask[2] == cfg.v6_net[2]
            && ip[3] & cfg.v6_mask[3] == cfg.v6_net[3]
    }
}

#[cfg(test)]
mod tests {
    use super::addr::*;

    #[test]
    fn names_follow_the_one_layout_version() {
        let v = super::ABI_VERSION;
        assert!(v >= 2);
        assert_eq!(super::PIN_SUBDIR, format!("v{v}"));
        for (_, name) in super::KERNEL_MAPS {
            assert!(name.ends_with(&format!("_V{v}")), "{name}");
            assert!(name.len() <= 15, "{name}: the kernel keeps 15 bytes");
        }
    }

    #[test]
    fn v4_mapped_addresses_round_trip() {
        let v4 = u32::from_ne_bytes([240, 240, 0, 7]);
        let m = v4_mapped(v4);
        let mut bytes = [0u8; 16];
        for (i, w) in m.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(
            std::net::Ipv6Addr::from(bytes),
            "::ffff:240.240.0.7".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert!(is_v4_mapped(&m));
        assert!(!is_v4_mapped(&[0, 0, 0, v4]));
    }
}
