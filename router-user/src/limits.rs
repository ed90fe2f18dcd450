//! What one client (or a crowd of them) may take from the daemon's
//! listeners (the L7 proxy, gateways, DNS): connections per peer and in all,
//! bytes of request bodies held in memory, how long a connection may sit
//! idle, and what an accept loop does when the host runs out of descriptors.
//! The caps are sized from the daemon's file descriptor limit
//! ([`fd_budget`]), so that a flood of connections runs into a closed socket,
//! never into EMFILE in the health checks or DNS.
use std::{
    collections::HashMap,
    hash::Hash,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counted admissions: at most `total` in all and `per_key` for any one key.
pub struct Admission<K: Hash + Eq + Clone> {
    total: usize,
    per_key: usize,
    inner: Mutex<(usize, HashMap<K, usize>)>,
}

/// One admitted connection (or body byte budget); released on drop.
pub struct Ticket<K: Hash + Eq + Clone> {
    owner: Arc<Admission<K>>,
    key: K,
    n: usize,
}

impl<K: Hash + Eq + Clone> Admission<K> {
    pub fn new(total: usize, per_key: usize) -> Arc<Self> {
        Arc::new(Admission {
            total,
            per_key: per_key.max(1),
            inner: Mutex::new((0, HashMap::new())),
        })
    }

    /// Take `n` units for `key`, or `None` if that would pass a cap.
    pub fn try_take(self: &Arc<Self>, key: K, n: usize) -> Option<Ticket<K>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (used, per) = &mut *g;
        let mine = per.get(&key).copied().unwrap_or(0);
        if *used + n > self.total || mine + n > self.per_key {
            return None;
        }
        *used += n;
        per.insert(key.clone(), mine + n);
        Some(Ticket {
            owner: self.clone(),
            key,
            n,
        })
    }

    /// Units in use.
    pub fn used(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl<K: Hash + Eq + Clone> Ticket<K> {
    /// Take `n` more units on this ticket; false (and nothing taken) if a
    /// cap would be passed.
    pub fn grow(&mut self, n: usize) -> bool {
        let mut g = self.owner.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (used, per) = &mut *g;
        let mine = per.get(&self.key).copied().unwrap_or(0);
        if *used + n > self.owner.total || mine + n > self.owner.per_key {
            return false;
        }
        *used += n;
        per.insert(self.key.clone(), mine + n);
        self.n += n;
        true
    }
}

impl<K: Hash + Eq + Clone> Drop for Ticket<K> {
    fn drop(&mut self) {
        let mut g = self.owner.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (used, per) = &mut *g;
        *used -= self.n;
        if let Some(m) = per.get_mut(&self.key) {
            *m -= self.n;
            if *m == 0 {
                per.remove(&self.key);
            }
        }
    }
}

/// The last time bytes moved on a connection, shared with a watchdog
/// (tokio's clock, so tests can pause it).
#[derive(Clone, Debug)]
pub struct Activity {
    start: tokio::time::Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Resolves once nothing has moved for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let idle = self.idle();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// An IO stream that records activity (for idle timeouts).
pub struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        activity.touch();
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Errors that say this host is short of resources, not that a peer failed:
/// never counted against an endpoint.
pub fn is_local_errno(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// How the daemon's file descriptors are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft RLIMIT_NOFILE after raising it.
    pub limit: u64,
    /// Proxy and gateway connections at once (two descriptors each).
    pub proxy_conns: usize,
}

/// Descriptors kept for everything but proxied connections: maps, program
/// links, the config watcher, health checks, DNS listeners and their
/// forwards (1,024 UDP + 256 TCP at most), sock_diag, logs.
pub const FD_RESERVE: u64 = 2048;

/// Share out `limit` descriptors (pure).
pub fn fd_budget(limit: u64) -> FdBudget {
    let spare = limit.saturating_sub(FD_RESERVE);
    FdBudget {
        limit,
        proxy_conns: ((spare / 2) as usize).clamp(16, 1 << 20),
    }
}

/// Raise the soft RLIMIT_NOFILE to the hard limit and share it out. A
/// limit too small for the reserve is reported, not fatal.
pub fn raise_nofile() -> FdBudget {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    let b = fd_budget(lim.rlim_cur);
    if lim.rlim_cur < FD_RESERVE * 2 {
        tracing::warn!(
            limit = lim.rlim_cur,
            "the file descriptor limit is low: the proxy takes at most {} connections at once; \
             raise it (LimitNOFILE= in a systemd unit, `ulimit -Hn`)",
            b.proxy_conns
        );
    }
    b
}

/// Sleep after an accept error: briefly for errors of one connection, longer
/// when the host is out of descriptors or memory (retrying at once would
/// spin a core and starve everything else). Logs the latter at most once
/// per `quiet` per listener.
pub async fn accept_backoff(e: &io::Error, what: &str, last_log: &mut Option<Instant>) {
    if is_local_errno(e) {
        if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(
                "{what}: cannot accept connections: {e}; pausing accepts (raise the file \
                 descriptor limit, LimitNOFILE=, if this is normal load)"
            );
            *last_log = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Give the memory that start-up freed back to the system: parsing and the
/// first compile allocate far more than the daemon keeps, and the allocator
/// would otherwise hold the freed pages (tens of MiB at 100,000 endpoints).
/// From now on freed pages are purged after `PURGE_DELAY_MS`, not at once
/// as during start-up ([`tune_allocator`]).
pub fn return_freed_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect only walks the allocator's own state.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
    #[cfg(feature = "mimalloc")]
    set_purge_delay(PURGE_DELAY_MS);
}

/// mimalloc's `mi_option_purge_delay` and `mi_option_arena_purge_mult`
/// (v3's option list, 0-based; the defaults are 1000 ms and 1).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
#[cfg(feature = "mimalloc")]
const MI_OPTION_ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;
/// How long a freed page stays with the allocator once start-up is done
/// ([`return_freed_memory`]).
#[cfg(feature = "mimalloc")]
const PURGE_DELAY_MS: std::ffi::c_long = 10;
/// Whether options 15 and 24 held v3's defaults when [`tune_allocator`]
/// looked (another mimalloc version, or a `MIMALLOC_PURGE_DELAY` set by
/// hand, is left alone).
#[cfg(feature = "mimalloc")]
static PURGE_OPTIONS_KNOWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// When freed pages go back to the system. mimalloc returns a free page to
/// its arena and purges it (`madvise`) only after `purge_delay x
/// arena_purge_mult` (1 s by default), and only when the allocator runs
/// again, so a daemon that went idle kept what it had freed.
/// - During start-up, at once (0): the garbage of parsing and of the first
///   compile is purged as it is freed, on whichever thread frees it. With the
///   default, the daemon kept 15 MiB more at the bench's 10,000 route tables
///   (`RssAnon` 151 against 136 MiB once ready, five alternated runs), and
///   `mi_collect(true)` afterwards, even on every thread, gave back only
///   3 MiB of it. The price is start-up time: about 150 ms there (medians
///   1726 against 1877 ms; validation and compile fault in again pages that
///   were purged), less than one in ten of start-up. Purging at once during
///   reading only (the parsers' garbage) kept half of the gain.
/// - Once start-up is done, after `PURGE_DELAY_MS`: purging at once put an
///   `madvise`, a TLB shootdown across CPUs and a page fault on the L7
///   proxy's request path whenever a page of its per-request objects emptied
///   (about 5% of its CPU time in the HTTP bench's profile); a page reused
///   within the delay is never purged.
#[cfg(feature = "mimalloc")]
fn set_purge_delay(ms: std::ffi::c_long) {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: reading and setting an option only touches mimalloc's table.
    unsafe {
        use libmimalloc_sys::{mi_option_get, mi_option_set};
        if !PURGE_OPTIONS_KNOWN.load(Relaxed)
            && mi_option_get(MI_OPTION_PURGE_DELAY) == 1000
            && mi_option_get(MI_OPTION_ARENA_PURGE_MULT) == 1
        {
            PURGE_OPTIONS_KNOWN.store(true, Relaxed);
        }
        if PURGE_OPTIONS_KNOWN.load(Relaxed) {
            mi_option_set(MI_OPTION_PURGE_DELAY, ms);
        } else {
            tracing::debug!(
                "mimalloc: options 15 and 24 are not the purge delays here; left alone"
            );
        }
    }
}

/// Back the daemon's heap with 4 KiB pages only. The allocator asks for
/// transparent huge pages where the host allows them (`madvise`): a 2 MiB
/// page then stays resident while any object on it lives, and every first
/// touch zeroes 2 MiB. At the bench's 10,000 services that held about 12 MiB
/// more RSS after start-up and made start-up vary by 400 ms from run to run
/// (a fifth of its CPU time in the kernel's `clear_page`). A failure (an old
/// kernel) changes nothing else. Also: freed pages are purged at once until
/// start-up is done (`set_purge_delay`).
pub fn tune_allocator() {
    #[cfg(feature = "mimalloc")]
    set_purge_delay(0);
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!("prctl(PR_SET_THP_DISABLE): {}", io::Error::last_os_error());
    }
}

/// Why `md` (of `p`) is not to be trusted, if it is not: not owned by root
/// or this user, or writable by group or others. Pure. (Config files and
/// the workloads directory are held to it.)
pub fn untrusted(md_uid: u32, md_mode: u32, me: u32) -> Option<String> {
    if md_uid != 0 && md_uid != me {
        return Some(format!("it is owned by uid {md_uid}, not root"));
    }
    if md_mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by {} (mode {:o})",
            if md_mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            md_mode & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_shared_out_with_headroom() {
        let b = fd_budget(1 << 20);
        assert_eq!(b.proxy_conns, ((1 << 20) - FD_RESERVE as usize) / 2);
        assert_eq!(fd_budget(1024).proxy_conns, 16, "a floor, even when tiny");
        assert_eq!(fd_budget(4096).proxy_conns, 1024);
    }

    #[test]
    fn admission_caps_in_all_and_per_key() {
        let a = Admission::<u8>::new(10, 4);
        let t1 = a.try_take(1, 4).unwrap();
        assert!(a.try_take(1, 1).is_none(), "per-key cap");
        let mut t2 = a.try_take(2, 3).unwrap();
        assert!(t2.grow(1));
        assert!(!t2.grow(1), "per-key cap on growth");
        assert!(a.try_take(3, 3).is_none(), "total cap: 8 + 3 > 10");
        assert_eq!(a.used(), 8);
        drop(t1);
        assert_eq!(a.used(), 4);
        assert!(a.try_take(1, 4).is_some());
        drop(t2);
        assert_eq!(a.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_for_waits_for_quiet() {
        let act = Activity::default();
        act.touch();
        let t = tokio::time::Instant::now();
        act.idle_for(Duration::from_secs(5)).await;
        assert!(t.elapsed() >= Duration::from_secs(5));
    }
}
