//! NETLINK_SOCK_DIAG, the kernel's socket table: find the socket that owns
//! a 4-tuple (its cookie), and close sockets (`SOCK_DESTROY`, what `ss -K`
//! does). Blocking calls on a netlink socket made in the namespace whose
//! sockets they concern ([`crate::netns::Sockets::diag`]).
use std::{
    collections::{BTreeSet, HashSet},
    io,
    mem::size_of,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
};

// <linux/sock_diag.h>, <linux/inet_diag.h>
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const INET_DIAG_CGROUP_ID: u16 = 21;
const TCP_LISTEN: u32 = 10;
const TCP_ESTABLISHED: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain repr(C) struct of integers without padding holes
    // that matter to the kernel (they are zeroed by Default).
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }
}

fn read_struct<T: Copy + Default>(b: &[u8]) -> Option<T> {
    if b.len() < size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: length checked; T is plain old data.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), &mut v as *mut T as *mut u8, size_of::<T>());
    }
    Some(v)
}

fn send(fd: &OwnedFd, ty: u16, flags: u16, seq: u32, req: &ReqV2) -> io::Result<()> {
    let hdr = NlMsgHdr {
        len: (size_of::<NlMsgHdr>() + size_of::<ReqV2>()) as u32,
        ty,
        flags,
        seq,
        pid: 0,
    };
    let mut buf = Vec::with_capacity(hdr.len as usize);
    buf.extend_from_slice(bytes_of(&hdr));
    buf.extend_from_slice(bytes_of(req));
    // SAFETY: send(2) on our netlink socket with a valid buffer.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receive one datagram of netlink messages: `(type, payload)`.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    // SAFETY: recv(2) into our buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut off = 0usize;
    let n = n as usize;
    while off + size_of::<NlMsgHdr>() <= n {
        let Some(h) = read_struct::<NlMsgHdr>(&buf[off..n]) else {
            break;
        };
        let len = h.len as usize;
        if len < size_of::<NlMsgHdr>() || off + len > n {
            break;
        }
        out.push((h.ty, buf[off + size_of::<NlMsgHdr>()..off + len].to_vec()));
        off += (len + 3) & !3;
    }
    Ok(out)
}

fn addr_of(family: u8, raw: &[u8; 16], port: [u8; 2]) -> SocketAddr {
    let ip: IpAddr = if family == libc::AF_INET as u8 {
        IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
    } else {
        IpAddr::from(*raw)
    };
    SocketAddr::new(ip, u16::from_be_bytes(port))
}

/// The cgroup id attribute that follows an `inet_diag_msg`.
fn cgroup_of(payload: &[u8]) -> Option<u64> {
    let mut off = size_of::<DiagMsg>();
    while off + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[off], payload[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([payload[off + 2], payload[off + 3]]) & 0x3fff;
        if len < 4 || off + len > payload.len() {
            return None;
        }
        if ty == INET_DIAG_CGROUP_ID && len >= 12 {
            let b = &payload[off + 4..off + 12];
            return Some(u64::from_ne_bytes(b.try_into().ok()?));
        }
        off += (len + 3) & !3;
    }
    None
}

/// What [`close_connections`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Closed {
    pub tcp: usize,
    pub udp: usize,
    pub failed: usize,
}

/// Close every TCP connection and connected UDP socket from the cgroups
/// `cgroups` to one of `endpoints`, through the NETLINK_SOCK_DIAG socket
/// `fd` (made in the clients' network namespace). Blocking.
pub fn close_connections(
    fd: &OwnedFd,
    endpoints: &BTreeSet<SocketAddr>,
    cgroups: &HashSet<u64>,
) -> io::Result<Closed> {
    let mut closed = Closed::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut seq = 1u32;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for (protocol, states) in [
            (libc::IPPROTO_TCP as u8, !(1u32 << TCP_LISTEN)),
            (libc::IPPROTO_UDP as u8, 1u32 << TCP_ESTABLISHED),
        ] {
            let req = ReqV2 {
                family,
                protocol,
                states,
                ..Default::default()
            };
            seq += 1;
            send(
                fd,
                SOCK_DIAG_BY_FAMILY,
                (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
                seq,
                &req,
            )?;
            let mut victims = Vec::new();
            'dump: loop {
                for (ty, payload) in recv(fd, &mut buf)? {
                    if ty == libc::NLMSG_DONE as u16 {
                        break 'dump;
                    }
                    if ty == libc::NLMSG_ERROR as u16 {
                        let code = i32::from_ne_bytes(payload[..4].try_into().unwrap_or([0; 4]));
                        return Err(dump_error(-code, protocol));
                    }
                    let Some(m) = read_struct::<DiagMsg>(&payload) else {
                        continue;
                    };
                    let dst = addr_of(m.family, &m.id.dst, m.id.dport);
                    if endpoints.contains(&dst)
                        && cgroup_of(&payload).is_some_and(|c| cgroups.contains(&c))
                    {
                        victims.push(m.id);
                    }
                }
            }
            for id in victims {
                seq += 1;
                let req = ReqV2 {
                    family,
                    protocol,
                    states: !0,
                    id,
                    ..Default::default()
                };
                send(
                    fd,
                    SOCK_DESTROY,
                    (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                    seq,
                    &req,
                )?;
                let ok = recv(fd, &mut buf)?.iter().any(|(ty, p)| {
                    *ty == libc::NLMSG_ERROR as u16
                        && p.len() >= 4
                        && i32::from_ne_bytes(p[..4].try_into().unwrap_or([1; 4])) == 0
                });
                match (ok, protocol == libc::IPPROTO_TCP as u8) {
                    (true, true) => closed.tcp += 1,
                    (true, false) => closed.udp += 1,
                    (false, _) => closed.failed += 1,
                }
            }
        }
    }
    Ok(closed)
}

fn raw_of(ip: IpAddr) -> [u8; 16] {
    let mut raw = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => raw = v6.octets(),
    }
    raw
}

/// The cookie of the UDP socket that owns `client` and would receive a
/// datagram from `server` (the client socket of a DNS query the kernel
/// sent to the daemon's listener `server`): one exact sock_diag lookup, in
/// the namespace of `fd`. `Ok(None)`: no such socket (it closed).
pub fn udp_cookie(fd: &OwnedFd, client: SocketAddr, server: SocketAddr) -> io::Result<Option<u64>> {
    if client.is_ipv4() != server.is_ipv4() {
        return Ok(None);
    }
    let family = if client.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    // For UDP the kernel looks up "a datagram from src to dst" (the fields
    // are swapped for historical reasons): src is the server, dst the client.
    let req = ReqV2 {
        family,
        protocol: libc::IPPROTO_UDP as u8,
        states: !0,
        id: SockId {
            sport: server.port().to_be_bytes(),
            dport: client.port().to_be_bytes(),
            src: raw_of(server.ip()),
            dst: raw_of(client.ip()),
            ifindex: 0,
            cookie: [!0, !0],
        },
        ..Default::default()
    };
    send(fd, SOCK_DIAG_BY_FAMILY, libc::NLM_F_REQUEST as u16, 1, &req)?;
    let mut buf = vec![0u8; 8192];
    for (ty, payload) in recv(fd, &mut buf)? {
        if ty == libc::NLMSG_ERROR as u16 {
            let code = i32::from_ne_bytes(payload[..4].try_into().unwrap_or([0; 4]));
            return match -code {
                0 | libc::ENOENT => Ok(None),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        if ty == SOCK_DIAG_BY_FAMILY
            && let Some(m) = read_struct::<DiagMsg>(&payload)
        {
            return Ok(Some(
                u64::from(m.id.cookie[0]) | (u64::from(m.id.cookie[1]) << 32),
            ));
        }
    }
    Ok(None)
}

/// A NETLINK_SOCK_DIAG socket in the calling thread's network namespace.
pub fn diag_socket() -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A failed sock_diag dump, said so that the operator can fix it. ENOENT
/// means the kernel has no handler for the protocol: the inet_diag modules
/// are not loaded (a full system autoloads them through modprobe; a minimal
/// one, like the VM tests' initramfs, must load them itself).
fn dump_error(errno: i32, protocol: u8) -> io::Error {
    let proto = if protocol == libc::IPPROTO_TCP as u8 {
        "tcp_diag"
    } else {
        "udp_diag"
    };
    let e = io::Error::from_raw_os_error(errno);
    if errno == libc::ENOENT {
        io::Error::new(
            e.kind(),
            format!(
                "the kernel cannot list sockets ({e}): expected the sock_diag handler from the {proto} module (CONFIG_INET_DIAG); load it with `modprobe inet_diag {proto}`"
            ),
        )
    } else {
        e
    }
}
