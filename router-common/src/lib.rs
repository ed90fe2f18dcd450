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
#![no_std]

/// Version of the map layouts. Part of every map name and of the pin directory
/// (`<bpffs>/<root>/v1/`). Bump it whenever any struct below changes.
pub const ABI_VERSION: u32 = 1;

/// Directory under the pin root that holds this layout's maps and links.
pub const PIN_SUBDIR: &str = "v1";

// ---------------------------------------------------------------------------
// Map names. The kernel limits object names to 15 bytes; these are also the
// file names under the pin directory.
// ---------------------------------------------------------------------------

/// `SvcKey -> SvcHeader`: one entry per (VIP, port, protocol).
pub const MAP_SERVICES: &str = "ROUTER_SVC_V1";
/// `SlotKey -> u32 backend id`: the precomputed slot tables.
pub const MAP_SLOTS: &str = "ROUTER_SLOT_V1";
/// `u32 backend id -> Backend`.
pub const MAP_BACKENDS: &str = "ROUTER_BE_V1";
/// Array of one `Config`.
pub const MAP_CONFIG: &str = "ROUTER_CFG_V1";
/// Socket-local storage: `RevNat` for connected sockets (TCP, connected UDP).
pub const MAP_SOCK_REVNAT: &str = "ROUTER_SOCK_V1";
/// LRU `UdpRevKey -> UdpRevValue` for unconnected UDP (`sendmsg`).
pub const MAP_UDP_REVNAT: &str = "ROUTER_UDPRN_V1";
/// Per-CPU array indexed by service id: `SvcStats`.
pub const MAP_SVC_STATS: &str = "ROUTER_SSTAT_V1";
/// Per-CPU array indexed by backend id: `BackendStats`.
pub const MAP_BACKEND_STATS: &str = "ROUTER_BSTAT_V1";
/// Per-CPU array of one `GlobalStats`.
pub const MAP_GLOBAL_STATS: &str = "ROUTER_GSTAT_V1";
/// Array of one `Meta`: written and read by the daemon only.
pub const MAP_META: &str = "ROUTER_META_V1";
/// Array of one u64: CLOCK_MONOTONIC nanoseconds until which the daemon's DNS
/// listener counts as alive. The daemon pushes it forward every second; when
/// it stops (or is killed), DNS capture stops within seconds and queries go
/// to the resolver the process asked, as if routerd were not there.
pub const MAP_DNS_ALIVE: &str = "ROUTER_DNSOK_V1";

/// Every map the daemon pins, in the order it creates them.
pub const PINNED_MAPS: [&str; 11] = [
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_CONFIG,
    MAP_SOCK_REVNAT,
    MAP_UDP_REVNAT,
    MAP_SVC_STATS,
    MAP_BACKEND_STATS,
    MAP_GLOBAL_STATS,
    MAP_META,
    MAP_DNS_ALIVE,
];

/// The programs, by ELF symbol name, with the cgroup attach point each one uses.
pub const PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

// ---------------------------------------------------------------------------
// Sizes.
// ---------------------------------------------------------------------------

/// Default size of the service map and its per-CPU counters: largest service
/// id + 1 (ids start at 1; 0 means "none"). The counters are preallocated
/// (32 bytes x this x CPUs), so the default is moderate; the daemon sets the
/// real size when it first loads the datapath (`--max-services`).
pub const MAX_SERVICES: u32 = 16_384;
/// Default size of the backend map and its per-CPU counters (16 bytes x this
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
/// `Config::flags`: send DNS (port 53, UDP and TCP) to the daemon's listener.
pub const CFG_DNS_CAPTURE: u32 = 4;
/// The DNS port, host byte order.
pub const DNS_PORT: u16 = 53;
/// `SO_MARK` on the daemon's DNS sockets; `Config::mark` carries it.
pub const DNS_MARK: u32 = 0x5244_4e53; // "RDNS"
/// How far ahead the daemon sets `MAP_DNS_ALIVE` (it refreshes every second).
pub const DNS_ALIVE_NS: u64 = 3_000_000_000;

/// `SvcHeader::flags`: connections go to the daemon's L7 proxy (on
/// `Config::proxy4/6`, port `SvcHeader::proxy_port`); there are no slots.
pub const SVC_F_PROXY: u16 = 1;

/// errno values the programs set with `bpf_set_retval` (as negatives).
pub const ERRNO_NO_BACKEND: i32 = 113; // EHOSTUNREACH: a known service, no healthy backend
pub const ERRNO_UNKNOWN_VIP: i32 = 111; // ECONNREFUSED: inside a VIP range, not a service

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
    /// With [`SVC_F_PROXY`]: the L7 proxy's listener port for this service,
    /// network byte order. 0: no proxy.
    pub proxy_port: u16,
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
}

/// The one entry of [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// `CFG_*` bits. 0 (never written): the programs pass everything untouched.
    pub flags: u32,
    /// IPv4 VIP range: network and mask, network byte order.
    pub v4_net: u32,
    pub v4_mask: u32,
    /// `SO_MARK` of the daemon's own DNS sockets, which are never captured
    /// (host byte order). 0: no exemption.
    pub mark: u32,
    /// IPv6 VIP range: network and mask, as four network-byte-order words.
    pub v6_net: [u32; 4],
    pub v6_mask: [u32; 4],
    /// The daemon's DNS listener for IPv4 clients, network byte order.
    /// 0: IPv4 DNS is not captured.
    pub dns4: u32,
    /// The DNS listener's port, network byte order.
    pub dns_port: u16,
    pub _pad: u16,
    /// The DNS listener for IPv6 clients. All zero: IPv6 DNS is not captured.
    pub dns6: [u32; 4],
    /// The L7 proxy's listener address for IPv4 clients, network byte order
    /// (the port is per service, in `SvcHeader::proxy_port`).
    pub proxy4: u32,
    pub _pad2: u32,
    /// The proxy's listener for IPv6 clients. All zero: IPv6 clients of L7
    /// services are refused (EHOSTUNREACH).
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
    pub _pad: [u8; 3],
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

/// Value of [`MAP_SVC_STATS`] (per CPU; sum over CPUs to read).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SvcStats {
    /// `connect()` calls rewritten (TCP and connected UDP).
    pub connects: u64,
    /// Unconnected UDP datagrams rewritten by `sendmsg`.
    pub datagrams: u64,
    /// Calls refused because the service had no healthy backend.
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
assert_layout!(Backend, 24);
assert_layout!(Config, 96);
assert_layout!(RevNat, 40);
assert_layout!(UdpRevKey, 32);
assert_layout!(UdpRevValue, 24);
assert_layout!(SvcStats, 32);
assert_layout!(BackendStats, 16);
assert_layout!(GlobalStats, 24);
assert_layout!(Meta, 256);
const _: () = assert!(core::mem::offset_of!(SvcKey, port) == 16);
const _: () = assert!(core::mem::offset_of!(SvcKey, family) == 19);
const _: () = assert!(core::mem::offset_of!(Backend, cluster_id) == 20);
const _: () = assert!(core::mem::offset_of!(Config, v6_net) == 16);
const _: () = assert!(core::mem::offset_of!(Config, dns6) == 56);
const _: () = assert!(core::mem::offset_of!(Config, proxy6) == 80);
const _: () = assert!(core::mem::offset_of!(RevNat, vip_port) == 32);
const _: () = assert!(core::mem::offset_of!(UdpRevKey, addr) == 8);
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
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for UdpRevKey {}
    unsafe impl aya::Pod for UdpRevValue {}
    unsafe impl aya::Pod for SvcStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for GlobalStats {}
    unsafe impl aya::Pod for Meta {}
}

/// IPv4 and IPv6 helpers shared by both sides (pure, no allocation).
pub mod addr {
    use super::Config;

    /// True when `ip` (network byte order) is inside the configured IPv4 range.
    #[inline(always)]
    pub fn in_v4_range(cfg: &Config, ip: u32) -> bool {
        ip & cfg.v4_mask == cfg.v4_net
    }

    /// True when `ip` (network byte order words) is inside the IPv6 range.
    #[inline(always)]
    pub fn in_v6_range(cfg: &Config, ip: &[u32; 4]) -> bool {
        ip[0] & cfg.v6_mask[0] == cfg.v6_net[0]
            && ip[1] & cfg.v6_mask[1] == cfg.v6_net[1]
            && ip[2] & cfg.v6_mask[2] == cfg.v6_net[2]
            && ip[3] & cfg.v6_mask[3] == cfg.v6_net[3]
    }
}
