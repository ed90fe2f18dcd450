//! Sockets in another network namespace. A thread enters the namespace once
//! and creates every socket the daemon asks for there (DNS listeners and
//! upstream queries, proxy listeners and upstream connections); a socket
//! stays in the namespace it was created in, whichever thread uses it. Every
//! socket carries `SO_MARK` [`router_common::DAEMON_MARK`], which the kernel
//! programs never capture or redirect.
use std::{net::SocketAddr, os::fd::AsRawFd, path::Path};

use anyhow::{Context, Result};
use router_common::DAEMON_MARK;
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    sync::oneshot,
};

enum SockReq {
    Udp(
        SocketAddr,
        oneshot::Sender<std::io::Result<std::net::UdpSocket>>,
    ),
    /// `n` listeners on one address (more than one: SO_REUSEPORT, the
    /// kernel spreads connections over them).
    Listen(
        SocketAddr,
        usize,
        oneshot::Sender<std::io::Result<Vec<std::net::TcpListener>>>,
    ),
    Stream(bool, oneshot::Sender<std::io::Result<std::net::TcpStream>>),
    Diag(oneshot::Sender<std::io::Result<std::os::fd::OwnedFd>>),
    /// A file under /proc/sys/net, as this namespace sees it.
    Sysctl(&'static str, oneshot::Sender<std::io::Result<String>>),
}

/// Creates sockets in one network namespace, marked with [`DAEMON_MARK`].
#[derive(Clone)]
pub struct Sockets {
    /// The thread in the other namespace; `None`: the daemon's own
    /// namespace, where sockets are made inline (no thread hop on the
    /// proxy's upstream connects).
    tx: Option<std::sync::mpsc::Sender<SockReq>>,
}

fn marked(domain: socket2::Domain, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(domain, ty, None)?;
    s.set_mark(DAEMON_MARK)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn domain(v6: bool) -> socket2::Domain {
    if v6 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    }
}

/// Make the socket `req` asks for, in this thread's namespace.
fn serve(req: SockReq) {
    match req {
        SockReq::Udp(addr, reply) => {
            let s = marked(domain(addr.is_ipv6()), socket2::Type::DGRAM).and_then(|s| {
                s.bind(&addr.into())?;
                Ok(s.into())
            });
            let _ = reply.send(s);
        }
        SockReq::Listen(addr, n, reply) => {
            let one = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
                let s = marked(domain(addr.is_ipv6()), socket2::Type::STREAM)?;
                s.set_reuse_address(true)?;
                if n > 1 {
                    s.set_reuse_port(true)?;
                }
                // `[::]:p` beside `0.0.0.0:p` (a dual-stack gateway): the
                // IPv6 socket must not claim IPv4 too.
                if addr.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Ok(s.into())
            };
            // The others on the first's address (its port, if `addr` asked
            // for any).
            let all = one(addr).and_then(|first| {
                let at = first.local_addr()?;
                let mut all = vec![first];
                for _ in 1..n {
                    all.push(one(at)?);
                }
                Ok(all)
            });
            let _ = reply.send(all);
        }
        SockReq::Stream(v6, reply) => {
            let _ = reply.send(marked(domain(v6), socket2::Type::STREAM).map(Into::into));
        }
        SockReq::Diag(reply) => {
            let _ = reply.send(crate::sockdiag::diag_socket());
        }
        SockReq::Sysctl(name, reply) => {
            let _ = reply.send(
                std::fs::read_to_string(format!("/proc/sys/net/{name}"))
                    .map(|s| s.trim().to_string()),
            );
        }
    }
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the network namespace's cookie, as the
/// kernel programs see it with `bpf_get_netns_cookie`.
pub fn netns_cookie_of(fd: &impl AsRawFd) -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a u64 with its length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

impl Sockets {
    /// Start the socket thread in `netns` (a path like /var/run/netns/x), or
    /// make sockets inline when there is none.
    pub fn start(netns: Option<&Path>) -> Result<Self> {
        let Some(p) = netns else {
            return Ok(Sockets { tx: None });
        };
        let ns = std::fs::File::open(p)
            .with_context(|| format!("opening network namespace {}", p.display()))?;
        let (tx, rx) = std::sync::mpsc::channel::<SockReq>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                // setns affects this thread only; it stays in the namespace.
                if let Err(e) = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(std::io::Error::other(e)));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                for req in rx {
                    serve(req);
                }
            })?;
        ready_rx
            .recv()
            .context("netns socket thread")?
            .context("entering the listen network namespace")?;
        Ok(Sockets { tx: Some(tx) })
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<std::io::Result<T>>) -> SockReq,
    ) -> std::io::Result<T> {
        let (tx, rx) = oneshot::channel();
        match &self.tx {
            Some(thread) => thread
                .send(make(tx))
                .map_err(|_| std::io::Error::other("netns socket thread gone"))?,
            None => serve(make(tx)),
        }
        rx.await
            .map_err(|_| std::io::Error::other("netns socket thread gone"))?
    }

    pub async fn udp(&self, bind: SocketAddr) -> std::io::Result<UdpSocket> {
        UdpSocket::from_std(self.ask(|tx| SockReq::Udp(bind, tx)).await?)
    }
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        let mut one = self.ask(|tx| SockReq::Listen(addr, 1, tx)).await?;
        TcpListener::from_std(one.remove(0))
    }
    /// `n` listeners on `addr` sharing its port (SO_REUSEPORT when `n` > 1:
    /// the kernel spreads connections over them), not yet registered with
    /// any runtime: one per proxy worker ([`crate::proxy::workers`]).
    pub async fn listen_shared(
        &self,
        addr: SocketAddr,
        n: usize,
    ) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.ask(|tx| SockReq::Listen(addr, n.max(1), tx)).await
    }
    /// A NETLINK_SOCK_DIAG socket in the namespace (see [`crate::reap`]).
    pub async fn diag(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.ask(SockReq::Diag).await
    }
    /// A UDP socket connected to `to`: an ICMP port unreachable from the
    /// peer shows as ECONNREFUSED at once, instead of a silent timeout.
    pub async fn udp_connected(&self, to: SocketAddr) -> std::io::Result<UdpSocket> {
        let unspecified: SocketAddr = if to.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let s = self.udp(unspecified).await?;
        s.connect(to).await?;
        Ok(s)
    }
    /// This namespace's cookie (see [`netns_cookie_of`]).
    pub async fn netns_cookie(&self) -> std::io::Result<u64> {
        let s = self.udp((std::net::Ipv4Addr::LOCALHOST, 0).into()).await?;
        netns_cookie_of(&s)
    }
    /// `/proc/sys/net/<name>` as this namespace sees it.
    pub async fn sysctl(&self, name: &'static str) -> std::io::Result<String> {
        self.ask(|tx| SockReq::Sysctl(name, tx)).await
    }
    pub async fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let std = self.ask(|tx| SockReq::Stream(to.is_ipv6(), tx)).await?;
        tokio::net::TcpSocket::from_std_stream(std)
            .connect(to)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a namespace, sockets are made inline, on loopback here, and
    /// carry the mark like the thread's (SO_MARK needs CAP_NET_ADMIN: root).
    #[tokio::test]
    async fn inline_sockets_are_marked_and_work() {
        let socks = Sockets::start(None).unwrap();
        assert!(socks.tx.is_none());
        let l = socks.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(socks.connect(addr), l.accept());
        let c = c.unwrap();
        s.unwrap();
        assert_eq!(socket2::SockRef::from(&c).mark().unwrap(), DAEMON_MARK);
        let u = socks.udp("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(socket2::SockRef::from(&u).mark().unwrap(), DAEMON_MARK);
        assert_ne!(socks.netns_cookie().await.unwrap(), 0);
    }
}
