//! `routerd run` in three steps, as ztunnel's build -> serve -> shutdown:
//! [`Daemon::start`] loads and compiles the config, attaches the datapath,
//! binds the listeners and starts the heartbeat; [`Daemon::serve`] waits
//! for triggers (file changes with their paths, SIGHUP, endpoint health)
//! and applies what they change; [`Daemon::shutdown`] stops the heartbeat
//! and the listeners' entry, and removes the datapath if asked.
//!
//! The config side ([`Control`]) is incremental: the file source reads
//! only what changed, the store takes the changed objects, validation and
//! compilation redo only what those objects feed, and the datapath writes
//! only the entries that differ ([`crate::compile::units::Delta`]). A
//! change that fails anywhere (files, validation, compiler, map writes) is
//! reported, typed, and taken back whole: the last good plan keeps serving.
//!
//! What never waits for a compile: the heartbeat (a thread of its own; the
//! kernel stops capturing DNS and refuses L7 VIPs within seconds of it
//! stopping), DNS and the proxy (tokio tasks; compiles and map writes run
//! with `block_in_place`, so they never hold a worker that serves). Bursts of
//! triggers (health flaps, an editor's several writes) are coalesced into
//! one recompile.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    compile::{Health, units::Delta},
    config::{ConfigError, Overrides, load::LoadOptions},
    control::{Control, Prepared, ms},
    datapath::{self, Datapath, Heartbeat, OrigTable, Pins, Startup, sync::Bound},
    dns::{Dns, Lookups, Names},
    events::{Event, Phases},
    health::{self, Watched},
    limits,
    metrics::KernelCollector,
    netns::Sockets,
    plan::Plan,
    proxy::{Proxy, ProxyOptions},
    state::{self, StateWriter, pid_file, state_dir_ready},
    telemetry::{ReloadLabels, Telemetry},
    workload::{self, Workload},
};

/// A node following etcd (`--store`).
#[derive(Clone, Debug)]
pub struct StoreRun {
    pub store: crate::kvstore::StoreOptions,
    /// The local snapshot's directory (`--store-snapshot`).
    pub snapshot: PathBuf,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The config files (`--config`; `None`: etcd only).
    pub config: Option<PathBuf>,
    /// etcd (`--store`).
    pub store: Option<StoreRun>,
    pub overrides: Overrides,
    pub cgroup: PathBuf,
    pub pins: Pins,
    pub sizes: datapath::Sizes,
    pub state_dir: PathBuf,
    /// Remove everything on exit (instead of leaving the datapath serving).
    pub cleanup: bool,
    pub watch: bool,
    /// Network namespace for the daemon's sockets (None: the daemon's).
    pub listen_netns: Option<PathBuf>,
    /// Accept config files and directories that users other than root could
    /// write (`--allow-untrusted-config`).
    pub allow_untrusted_config: bool,
    /// Serve Prometheus metrics here (`--metrics-addr`; None: off).
    pub metrics_addr: Option<SocketAddr>,
    /// The workloads hand-off directory (`--workloads-dir`; see
    /// [`crate::workload`]).
    pub workloads_dir: PathBuf,
    /// Worker threads of the L7 proxy (`--proxy-threads`).
    pub proxy_threads: usize,
}

/// Load, validate and compile (`routerd check`, `explain`, tests); the
/// error text is what an operator reads.
pub fn build_plan(path: &Path, overrides: &Overrides, health: &Health) -> Result<Plan, String> {
    let v = crate::config::load(path, overrides).map_err(|e| e.to_string())?;
    crate::compile::compile(&v, health).map_err(|e| e.to_string())
}

/// The plan a running daemon serves, with its pid: the state directory's
/// `plan.json` (rewritten within a second of every apply, health changes
/// included) while the pid file names a live `routerd`. `None` when no
/// daemon runs with this state directory.
pub fn served_plan(state_dir: &Path) -> Option<(Plan, i32)> {
    let pid: i32 = std::fs::read_to_string(pid_file(state_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A live process that is a routerd (a stale pid file may name another).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() != "routerd" {
        return None;
    }
    Some((state::read_plan(state_dir)?, pid))
}

/// A refused reload, typed: what was wrong, and with what.
#[derive(Debug)]
pub enum Rejection {
    /// The config: files, validation or the compiler (each error names
    /// the file, the line and the resource).
    Config(ConfigError),
    /// The datapath refused the plan (a map full, a write that failed).
    Datapath(anyhow::Error),
}

impl Rejection {
    fn event(&self, reason: &str) -> Event {
        match self {
            Rejection::Config(e) => Event::Rejected {
                reason: reason.to_string(),
                errors: e.errors.iter().map(ToString::to_string).collect(),
            },
            Rejection::Datapath(e) => Event::rejected(reason, &format!("{e:#}")),
        }
    }
}

fn log_notices(plan: &Plan) {
    for n in &plan.notices {
        tracing::warn!("{n}");
    }
}

/// A watcher that sends the paths of every change it sees (an empty list
/// when events were lost: look at everything).
fn path_watcher(
    tx: mpsc::UnboundedSender<Vec<PathBuf>>,
) -> notify::Result<notify::RecommendedWatcher> {
    notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
        Ok(ev) if !ev.kind.is_access() => {
            let _ = tx.send(ev.paths);
        }
        Ok(_) => {}
        // Events were lost (a queue overflow): look at everything.
        Err(_) => {
            let _ = tx.send(Vec::new());
        }
    })
}

/// Spawn a watcher that sends the paths of every change under `path`.
fn watch(
    path: &Path,
) -> Result<(
    notify::RecommendedWatcher,
    mpsc::UnboundedReceiver<Vec<PathBuf>>,
)> {
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = mpsc::unbounded_channel();
    let mut w = path_watcher(tx)?;
    // Watch the parent of a file: editors replace files by rename.
    let target = if path.is_file() {
        path.parent().unwrap_or(Path::new("."))
    } else {
        path
    };
    w.watch(target, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", target.display()))?;
    Ok((w, rx))
}

fn spawn_logger(dp: &mut Datapath) {
    let Some(ebpf) = dp.ebpf.as_mut() else { return };
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            tokio::spawn(async move {
                // SAFETY: the logger owns its ring buffer fd and keeps it open
                // for as long as the AsyncFd holds the logger.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        logger,
                        tokio::io::Interest::READABLE,
                    )
                };
                let Ok(mut fd) = registered else { return };
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => tracing::debug!("kernel log forwarding unavailable: {e}"),
    }
}

/// Watches the directories of the gateway listeners' TLS files (a
/// certificate renewed in place, by an editor or a tool that renames a new
/// file over the old one, is served without a reload).
struct TlsWatch {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
    files: BTreeSet<PathBuf>,
    tx: mpsc::UnboundedSender<Vec<PathBuf>>,
    rx: mpsc::UnboundedReceiver<Vec<PathBuf>>,
}

impl TlsWatch {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        TlsWatch {
            watcher: None,
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
            tx,
            rx,
        }
    }

    /// Watch the TLS files `plan`'s gateway listeners read.
    fn follow(&mut self, plan: &Plan) {
        self.files = plan
            .gateways
            .iter()
            .filter_map(|g| g.tls.as_ref())
            .flat_map(|t| [Some(&t.cert), Some(&t.key), t.ca.as_ref()])
            .flatten()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .collect();
        let dirs: BTreeSet<PathBuf> = self
            .files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        if dirs == self.dirs {
            return;
        }
        self.watcher = None;
        self.dirs = dirs;
        if self.dirs.is_empty() {
            return;
        }
        use notify::{RecursiveMode, Watcher};
        let mut w = match path_watcher(self.tx.clone()) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch the TLS files ({e}); SIGHUP reads them again");
                return;
            }
        };
        for d in &self.dirs {
            if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                tracing::warn!(
                    dir = %d.display(),
                    "cannot watch the TLS files there ({e}); SIGHUP reads them again"
                );
            }
        }
        self.watcher = Some(w);
    }

    /// The next change of a watched TLS file (or events lost).
    async fn changed(&mut self) {
        loop {
            let paths = self.rx.recv().await.unwrap_or_default();
            if paths.is_empty() || paths.iter().any(|p| self.files.contains(p)) {
                return;
            }
        }
    }
}

/// How long a burst of file events may be quiet before it is read (an
/// editor's several writes, a tool writing many files), and the longest a
/// burst is waited for (under sustained churn, a batch every this often:
/// the staleness budget).
const FILE_QUIET: Duration = Duration::from_millis(5);
const FILE_DEBOUNCE_MAX: Duration = Duration::from_millis(20);
/// Recompiles for health changes and signals: at most one per this.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Why the daemon looks at its config again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// Endpoint health changed: recompile the config in service (not the
    /// files on disk: a bad edit there waits for its own reload).
    Health,
    /// An external host name resolved to other addresses: likewise.
    Resolved,
    /// A file under the config path changed.
    FileChange,
    /// etcd's keys changed (a publish, a cluster's inventory).
    StoreChange,
    /// SIGHUP.
    Signal,
}

impl Trigger {
    fn reason(self) -> &'static str {
        match self {
            Trigger::Health => "endpoint health change",
            Trigger::Resolved => "external host resolved",
            Trigger::FileChange => "config change",
            Trigger::StoreChange => "store change",
            Trigger::Signal => "SIGHUP",
        }
    }
    /// Does this trigger read the files again?
    fn reloads(self) -> bool {
        !matches!(self, Trigger::Health | Trigger::Resolved)
    }
}

fn watched(plan: &Plan) -> Watched {
    Watched {
        checks: plan.health_checks.clone(),
        outliers: plan.outliers.clone(),
    }
}

/// Close clients' connections to the endpoints `gone` (no longer routed
/// to; in the background: the kernel already sends new connections
/// elsewhere).
fn close_removed(socks: &Sockets, gone: BTreeSet<SocketAddr>, cgroup: &Path) {
    if gone.is_empty() {
        return;
    }
    let (socks, cgroup) = (socks.clone(), cgroup.to_path_buf());
    tokio::spawn(async move {
        let fd = match socks.diag().await {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(
                    "cannot close connections to removed endpoints: sock_diag socket: {e}"
                );
                return;
            }
        };
        let list: Vec<String> = gone.iter().map(|a| a.to_string()).collect();
        let gone_list: Vec<_> = gone.iter().copied().collect();
        let done = tokio::task::spawn_blocking(move || {
            crate::sockdiag::close_connections(&fd, &gone, &crate::reap::cgroup_ids(&cgroup))
        })
        .await;
        match done {
            Ok(Ok(c)) => Event::ConnectionsClosed {
                endpoints: gone_list,
                tcp: c.tcp as u64,
                udp: c.udp as u64,
                failed: c.failed as u64,
            }
            .emit(),
            Ok(Err(e)) => {
                tracing::warn!(endpoints = ?list, "closing connections to removed endpoints: {e}")
            }
            Err(e) => tracing::warn!("closing connections to removed endpoints: {e}"),
        }
    });
}

/// Warn when the proxy's port is one an unprivileged process could bind in
/// the namespace (`net.ipv4.ip_unprivileged_port_start` lowered).
async fn check_privileged_port(socks: &Sockets, port: u16) {
    if let Ok(v) = socks.sysctl("ipv4/ip_unprivileged_port_start").await
        && let Ok(start) = v.parse::<u32>()
        && u32::from(port) >= start
    {
        tracing::warn!(
            "the L7 proxy's port {port} is not privileged in its network namespace \
             (net.ipv4.ip_unprivileged_port_start = {start}): while routerd is down, an \
             unprivileged process could bind it (the kernel refuses L7 VIPs within 3 s of the \
             daemon stopping, but raise that sysctl above {port} to close the gap)"
        );
    }
}

/// A workload served: its namespace (the thread that makes sockets there,
/// its cookie) and the listeners open in it.
struct Pod {
    workload: Workload,
    /// Kept for the life of the workload: its thread stays in the namespace.
    socks: Sockets,
    netns: u64,
    listeners: Vec<String>,
}

/// The listener settings in force: what workloads' namespaces get (DNS,
/// the east-west proxy, and the gateway listeners whose VirtualGateway
/// selects them).
struct Listening {
    dns: crate::plan::DnsPlan,
    proxy: crate::plan::ProxyPlan,
    gateways: Vec<crate::plan::GatewayListener>,
}

impl Listening {
    fn of(plan: &Plan) -> Listening {
        Listening {
            dns: plan.dns.clone(),
            proxy: plan.proxy.clone(),
            gateways: plan
                .gateways
                .iter()
                .filter(|g| !g.workload_selectors.is_empty())
                .cloned()
                .collect(),
        }
    }
}

/// Everything that serves: the datapath and the listeners, driven by plans.
struct Serving {
    dp: Datapath,
    proxy: Proxy,
    dns: Dns,
    netns: u64,
    socks: Sockets,
    cgroup: PathBuf,
    names: watch::Sender<Arc<Names>>,
    watched: watch::Sender<Watched>,
    /// Where the kernel sends DNS and L7 connections now.
    bound: Bound,
    /// The listener settings in force (what workloads' namespaces get).
    listening: Listening,
    /// The workloads served, by `namespace/name`.
    workloads: BTreeMap<workload::Key, Pod>,
    /// Which workloads see which hosts, as the applied plan says.
    scopes: crate::plan::Scopes,
    /// The workloads were read once: `MAP_VISIBLE` may be written (until
    /// then it keeps what the previous daemon left, so that a restart does
    /// not take scoped L4 VIPs from the workloads for a moment).
    visible_ready: bool,
    state: StateWriter,
    telemetry: Arc<Telemetry>,
    /// With `--metrics-addr`: the kernel's counters named by the applied
    /// plan, and the endpoint's accept task.
    metrics: Option<(Arc<KernelCollector>, tokio::task::JoinHandle<()>)>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.metrics {
            task.abort();
        }
    }
}

impl Serving {
    /// Count a reload's outcome (`result`: applied, unchanged, rejected,
    /// failed); an applied plan also names the kernel's counters.
    fn count_reload(&self, why: &str, result: &str, since: Instant, plan: Option<&Plan>) {
        let t = &self.telemetry;
        t.reloads
            .get_or_create(&ReloadLabels {
                trigger: why.to_string(),
                result: result.to_string(),
            })
            .inc();
        t.reload_duration.observe(since.elapsed().as_secs_f64());
        if let Some(plan) = plan {
            t.generation.set(self.dp.generation() as i64);
            t.last_applied.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_default(),
            );
            if let Some((k, _)) = &self.metrics {
                k.set_plan(plan);
            }
        }
    }
}

impl Serving {
    /// Open `w`'s listeners inside its namespace and point the kernel at
    /// them.
    async fn serve_workload(&mut self, w: &Workload) -> Result<Pod> {
        let socks = Sockets::start(Some(&w.netns))?;
        let netns = socks.netns_cookie().await.with_context(|| {
            format!(
                "reading the cookie of network namespace {}",
                w.netns.display()
            )
        })?;
        if netns == self.netns {
            anyhow::bail!(
                "{} is the daemon's own listening namespace: a workload needs a network \
                 namespace of its own (processes in the daemon's are served already)",
                w.netns.display()
            );
        }
        if let Some(other) = self.workloads.values().find(|p| p.netns == netns) {
            anyhow::bail!(
                "{} is workload {}'s network namespace too: one record per namespace",
                w.netns.display(),
                other.workload.key()
            );
        }
        let bound = self.open_in(netns, &socks, &w.key()).await?;
        Ok(Pod {
            workload: w.clone(),
            socks,
            netns,
            listeners: self.listener_names(netns, &bound),
        })
    }

    /// DNS and proxy listeners in namespace `netns` as `listening` says,
    /// and the kernel's entry for it; nothing left open on failure.
    async fn open_in(&mut self, netns: u64, socks: &Sockets, workload: &str) -> Result<Bound> {
        let l = &self.listening;
        let w = self.scopes.workload(workload);
        // Its own addresses: the proxy avoids them as the kernel does.
        let own = crate::proxy::handler::OwnAddrs(
            w.filter(|_| !self.scopes.hairpin)
                .map(|w| w.ips.clone())
                .unwrap_or_default()
                .into(),
        );
        let gateways: Vec<&crate::plan::GatewayListener> = l
            .gateways
            .iter()
            .filter(|g| w.is_some() && g.opens_in(w))
            .collect();
        let opened = match self.dns.serve_in(netns, socks, &l.dns, workload).await {
            Ok(d) => self
                .proxy
                .serve_in(netns, socks, &l.proxy, &gateways, own)
                .await
                .map(|p| Bound {
                    proxy4: p.proxy4,
                    proxy6: p.proxy6,
                    ..d
                }),
            Err(e) => Err(e),
        }
        .and_then(|b| self.dp.set_listeners(netns, Some(&b)).map(|()| b));
        if opened.is_err() {
            self.close_in(netns);
        }
        opened
    }

    /// The kernel's `MAP_VISIBLE` and `MAP_OWN` for the workloads served,
    /// the plan's scoped hosts and its Pods' addresses.
    fn sync_visible(&mut self) -> Result<()> {
        if !self.visible_ready {
            return Ok(());
        }
        let served = || self.workloads.iter().map(|(k, p)| (k.as_str(), p.netns));
        let keys = |pairs: std::collections::BTreeSet<(u64, std::net::IpAddr)>| {
            pairs
                .into_iter()
                .map(|(netns, ip)| datapath::sync::vis_key(netns, ip))
                .collect()
        };
        let visible = keys(self.scopes.visibility(served()));
        let own = keys(self.scopes.own_addresses(served()));
        self.dp.set_workload_keys(visible, own)
    }

    /// What listens in namespace `netns`: DNS, the proxy, gateways.
    fn listener_names(&self, netns: u64, b: &Bound) -> Vec<String> {
        let dns = [b.dns4, b.dns6]
            .into_iter()
            .flatten()
            .map(|a| format!("dns:{a}"));
        let proxy = [b.proxy4, b.proxy6]
            .into_iter()
            .flatten()
            .map(|a| format!("proxy:{a}"));
        let gateways = self
            .proxy
            .gateways_in(netns)
            .into_iter()
            .map(|a| format!("gateway:{a}"));
        dns.chain(proxy).chain(gateways).collect()
    }

    fn close_in(&mut self, netns: u64) {
        let _ = self.dp.set_listeners(netns, None);
        self.dns.leave(netns);
        self.proxy.leave(netns);
    }

    /// After the plan moved the listeners: the workloads' follow.
    async fn move_workloads(&mut self) {
        let pods: Vec<(workload::Key, u64)> = self
            .workloads
            .iter()
            .map(|(k, p)| (k.clone(), p.netns))
            .collect();
        for (key, netns) in pods {
            let socks = self.workloads[&key].socks.clone();
            match self.open_in(netns, &socks, &key).await {
                Ok(b) => {
                    let names = self.listener_names(netns, &b);
                    if let Some(p) = self.workloads.get_mut(&key) {
                        p.listeners = names;
                    }
                }
                Err(e) => Event::WorkloadFailed {
                    workload: key,
                    error: format!("{e:#}"),
                }
                .emit(),
            }
        }
    }

    /// Listeners for `plan` (bound beside the old ones when they moved).
    async fn prepare(&mut self, plan: &Plan) -> Result<Bound> {
        // DNS first: it only binds; the proxy also publishes its tables, so
        // it goes last, when nothing can fail any more before the maps.
        let dns = self.dns.prepare(plan).await?;
        let proxy = self.proxy.prepare(plan).await?;
        Ok(Bound {
            proxy4: proxy.proxy4,
            proxy6: proxy.proxy6,
            ..dns
        })
    }

    /// Serve `plan`, of which `delta` changed: listeners (when the proxy or
    /// the settings changed), the map entries that differ, then the kernel
    /// pointed at the listeners and the old ones closed. Names, watched
    /// endpoints and the state file follow.
    async fn apply(&mut self, plan: &Plan, delta: &Delta) -> Result<datapath::sync::SyncReport> {
        if delta.all || delta.proxy {
            self.bound = self.prepare(plan).await?;
        }
        let report = tokio::task::block_in_place(|| {
            if delta.all {
                self.dp.apply(plan)
            } else {
                self.dp
                    .apply_changes(plan, &delta.services, &delta.backends)
            }
        })?;
        if delta.all {
            // Workload-scoped hosts: their VIPs for the workloads that
            // select them (before their names are answered, below).
            self.scopes = crate::plan::Scopes::of(plan);
            self.sync_visible()?;
        }
        if delta.all || delta.proxy {
            self.dp.set_listeners(self.netns, Some(&self.bound))?;
            self.proxy.retire(plan);
            self.dns.retire();
            self.listening = Listening::of(plan);
            self.move_workloads().await;
        }
        if delta.all || delta.watched {
            self.watched.send_if_modified(|w| {
                let new = watched(plan);
                let changed = *w != new;
                *w = new;
                changed
            });
        }
        if delta.all || delta.names {
            self.names.send_replace(Arc::new(Names::from_plan(plan)));
        }
        self.state.send(plan.clone());
        Ok(report)
    }
}

/// What `routerd run` holds while it serves.
pub struct Daemon {
    opts: RunOptions,
    serving: Serving,
    control: Control,
    /// Endpoints the health task says to avoid, and the resolver's
    /// answers, as last applied.
    health: Health,
    avoid: watch::Receiver<BTreeSet<SocketAddr>>,
    /// The external host names to resolve (from the applied plan), and
    /// what the resolver found.
    lookups: watch::Sender<Lookups>,
    resolved: watch::Receiver<Arc<crate::plan::Resolved>>,
    changes: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    _watcher: Option<notify::RecommendedWatcher>,
    /// The gateway listeners' TLS files (followed with `--watch` only).
    tls: TlsWatch,
    beat: (Arc<AtomicBool>, std::thread::JoinHandle<()>),
    workloads: WorkloadWatch,
    /// etcd, when followed.
    store: Option<StoreFollow>,
}

/// A node's link to etcd: the watch task's batches and state, and the
/// local snapshot's writer.
struct StoreFollow {
    url: String,
    rx: mpsc::UnboundedReceiver<crate::config::etcd::Batch>,
    link: watch::Receiver<crate::kvstore::Link>,
    snapshot: std::sync::mpsc::Sender<crate::config::etcd::Accepted>,
    /// Started from the snapshot, and etcd has not been listed since.
    from_snapshot: bool,
}

/// What etcd's side brought: a batch, or (`None`) a change of the link.
async fn next_from_store(
    s: &mut Option<StoreFollow>,
) -> Option<Option<crate::config::etcd::Batch>> {
    let Some(s) = s else {
        return std::future::pending().await;
    };
    tokio::select! {
        b = s.rx.recv() => b.map(Some),
        Ok(()) = s.link.changed() => Some(None),
    }
}

/// Write the snapshot's changes in order, off the serving path.
fn spawn_snapshot_writer(
    snap: crate::kvstore::Snapshot,
) -> Result<std::sync::mpsc::Sender<crate::config::etcd::Accepted>> {
    let (tx, rx) = std::sync::mpsc::channel::<crate::config::etcd::Accepted>();
    std::thread::Builder::new()
        .name("store-snapshot".into())
        .spawn(move || {
            while let Ok(a) = rx.recv() {
                if let Err(e) = snap.write(&a.values, a.revision) {
                    tracing::warn!(
                        "could not write the local snapshot of etcd's keys in {}: {e:#}; a \
                         restart while etcd is down would start from an older one",
                        snap.dir().display()
                    );
                }
            }
        })?;
    Ok(tx)
}

/// Connect to etcd and list the layout's keys (at most `wait`); or, when
/// etcd cannot be reached, the local snapshot (with a warning). The source
/// gets the list; returns the revision listed (`None`: from the snapshot).
async fn first_list(
    run: &StoreRun,
    src: &mut crate::config::etcd::EtcdSource,
    wait: Duration,
) -> Result<Option<i64>> {
    use crate::{config::etcd::Batch, kvstore};
    let listed = tokio::time::timeout(wait, async {
        let c = kvstore::connect(&run.store).await?;
        kvstore::list(&c, &run.store.layout).await
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {wait:?}")));
    match listed {
        Ok((revision, kvs)) => {
            src.received(Batch::List { revision, kvs });
            Ok(Some(revision))
        }
        Err(e) => {
            let snap = kvstore::Snapshot::new(&run.snapshot);
            match snap.read(&run.store.layout) {
                Ok(b) => {
                    let rev = match &b {
                        Batch::List { revision, .. } => *revision,
                        _ => 0,
                    };
                    tracing::warn!(
                        store = %run.store.url(),
                        "etcd cannot be reached ({e:#}): starting from the local snapshot in {} \
                         (revision {rev}); the node catches up when etcd is back",
                        run.snapshot.display()
                    );
                    src.received(b);
                    Ok(None)
                }
                Err(s) => Err(e.context(format!(
                    "etcd cannot be reached, and there is no local snapshot to start from ({s:#}); \
                     start etcd (or fix --store), then routerd"
                ))),
            }
        }
    }
}

/// The workloads hand-off directory, watched.
struct WorkloadWatch {
    dir: PathBuf,
    trusted_only: bool,
    /// Records that could not be served, and why: tried again when the
    /// record changes (or on SIGHUP), not on every event in the directory.
    failed: BTreeMap<workload::Key, (Workload, String)>,
    /// Problems with files of the directory, as last reported.
    problems: Vec<String>,
    rx: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    _watcher: notify::RecommendedWatcher,
}

impl WorkloadWatch {
    fn new(dir: &Path, trusted_only: bool) -> Result<Self> {
        use notify::{RecursiveMode, Watcher};
        workload::ensure_dir(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = path_watcher(tx)?;
        w.watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching the workloads directory {}", dir.display()))?;
        Ok(WorkloadWatch {
            dir: dir.to_path_buf(),
            trusted_only,
            failed: BTreeMap::new(),
            problems: Vec::new(),
            rx,
            _watcher: w,
        })
    }
}

/// The signals `routerd run` handles (registered before anything else, so
/// that a SIGHUP arriving during start-up does not kill it).
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Result<Self> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let mut signals = Signals::new()?;
    let mut d = Daemon::start(opts).await?;
    d.serve(&mut signals).await;
    d.shutdown()
}

impl Daemon {
    /// Load and compile the config, open (or adopt) the datapath, bind the
    /// listeners, apply, start the heartbeat: ready.
    pub async fn start(opts: RunOptions) -> Result<Daemon> {
        let started = Instant::now();
        let fds = limits::raise_nofile();
        let mut control = match &opts.config {
            Some(path) => Control::new(
                path,
                LoadOptions {
                    trusted_only: !opts.allow_untrusted_config,
                },
                &opts.overrides,
            ),
            None => Control::without_files(&opts.overrides),
        };
        // etcd: the keys listed before the first compile (or the snapshot).
        let mut store_from = None;
        let mut from_snapshot = false;
        if let Some(run) = &opts.store {
            let mut src = crate::config::etcd::EtcdSource::new(run.store.layout.clone());
            store_from = first_list(run, &mut src, Duration::from_secs(3)).await?;
            from_snapshot = store_from.is_none();
            control.follow(src);
        }
        let mut phases = Phases::default();
        // The datapath opens (programs verified, maps created: 150 ms at the
        // bench's sizes) while the config is read and compiled.
        let pinned = opts.pins.exists();
        let opening = {
            let (pins, cgroup, sizes) = (opts.pins.clone(), opts.cgroup.clone(), opts.sizes);
            std::thread::spawn(move || Datapath::open(pins, &cgroup, sizes))
        };
        let first = tokio::task::block_in_place(|| {
            let none = Health::default();
            match control.prepare(true, &none, &none, &mut phases).refused {
                Some(e) => Err(e),
                None => Ok(()),
            }
        });
        let opened = tokio::task::block_in_place(|| opening.join())
            .map_err(|_| anyhow::anyhow!("opening the datapath panicked"))?;
        if let Err(e) = &first {
            if !pinned {
                // Nothing was serving: refuse to start rather than leave an
                // empty datapath attached.
                if opened.is_ok() {
                    let _ = datapath::remove(&opts.pins);
                }
                anyhow::bail!("{e}");
            }
            Rejection::Config(e.clone()).event("start-up").emit();
            tracing::warn!("keeping the pinned datapath as it is until the config is fixed");
        }
        let mut dp = opened?;
        spawn_logger(&mut dp);
        let socks = Sockets::start(opts.listen_netns.as_deref())?;
        let netns = socks
            .netns_cookie()
            .await
            .context("reading the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+)")?;
        // External host names resolve before the first apply (at most 3 s),
        // so a restart does not take their endpoints away for a moment.
        let (lookups, lookups_rx) = watch::channel(Lookups::of(
            control.plan().unwrap_or(&Plan::default()),
            opts.listen_netns.as_deref(),
        ));
        let mut resolved = crate::dns::spawn_resolver(socks.clone(), lookups_rx);
        let mut health0 = Health::default();
        if first.is_ok() && !lookups.borrow().names.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(3), resolved.changed()).await;
            health0.resolved = (**resolved.borrow_and_update()).clone();
            if !health0.resolved.is_empty() {
                let none = Health::default();
                let r = tokio::task::block_in_place(|| {
                    control.prepare(false, &none, &health0, &mut phases)
                });
                if let Some(e) = r.refused {
                    Rejection::Config(e).event("start-up").emit();
                    health0.resolved.clear();
                }
            }
        }
        // The plan to serve: this config's, or the last applied one if this
        // config is bad (the datapath was adopted as it is).
        // (Read only when needed: plan.json is 36 MiB at the bench's 10,000
        // services, all of it parsed for nothing when the config is good.)
        let serving_plan = control
            .plan()
            .cloned()
            .or_else(|| state::read_plan(&opts.state_dir))
            .unwrap_or_default();
        check_privileged_port(&socks, serving_plan.proxy.port).await;
        let orig = Arc::new(OrigTable::open(&opts.pins)?);
        let telemetry = Telemetry::new();
        telemetry.init_reloads(&[
            "start-up",
            Trigger::Health.reason(),
            Trigger::Resolved.reason(),
            Trigger::FileChange.reason(),
            Trigger::StoreChange.reason(),
            Trigger::Signal.reason(),
        ]);
        let (names_tx, names_rx) = watch::channel(Arc::new(Names::from_plan(&serving_plan)));
        let dns = Dns::new(
            socks.clone(),
            orig.clone(),
            netns,
            opts.listen_netns.clone(),
            names_rx,
            &telemetry,
        )
        .await;
        let proxy = Proxy::new(
            socks.clone(),
            orig,
            &serving_plan.proxy,
            ProxyOptions {
                max_conns: fds.proxy_conns,
                netns,
                telemetry: telemetry.clone(),
                threads: opts.proxy_threads,
            },
        )?;
        // Health: checks and ejections publish the endpoints to avoid.
        let (watched_tx, watched_rx) = watch::channel(watched(&serving_plan));
        let (avoid_tx, avoid) = watch::channel(BTreeSet::<SocketAddr>::new());
        let outcomes = proxy
            .observations()
            .subscribe()
            .context("the proxy's outcomes have a subscriber already")?;
        let kernel = datapath::KernelSignals::open(&opts.pins)?;
        tokio::spawn(health::run(
            socks.clone(),
            watched_rx,
            outcomes,
            Some(kernel),
            avoid_tx,
            Some(opts.state_dir.clone()),
            telemetry.clone(),
        ));
        let mut serving = Serving {
            dp,
            proxy,
            dns,
            netns,
            socks,
            cgroup: opts.cgroup.clone(),
            names: names_tx,
            watched: watched_tx,
            bound: Bound::default(),
            listening: Listening::of(&serving_plan),
            workloads: BTreeMap::new(),
            scopes: crate::plan::Scopes::of(&serving_plan),
            visible_ready: false,
            state: StateWriter::spawn(opts.state_dir.clone())?,
            telemetry: telemetry.clone(),
            metrics: None,
        };
        if let Some(addr) = opts.metrics_addr {
            let kernel = Arc::new(KernelCollector::new(opts.pins.clone(), opts.sizes));
            let registry = crate::metrics::registry(&telemetry, kernel.clone());
            let task = crate::metrics::serve(addr, registry).await?;
            tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
            serving.metrics = Some((kernel, task));
        }
        let startup = serving.dp.startup;
        match &first {
            Ok(_) => {
                let plan = control.plan().expect("compiled").clone();
                log_notices(&plan);
                let t = Instant::now();
                match serving.apply(&plan, &Delta::everything()).await {
                    Ok(report) => {
                        control.commit();
                        phases.write_ms = ms(t);
                        applied_event("start-up", &serving, &plan, &report, phases, started);
                        serving.count_reload("start-up", "applied", started, Some(&plan));
                        crate::limits::return_freed_memory();
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(_) => {
                // A bad config on a restart: serve the pinned datapath with the
                // listeners of the last applied plan.
                serving.bound = serving.prepare(&serving_plan).await?;
                serving.dp.set_listeners(netns, Some(&serving.bound))?;
                serving.proxy.retire(&serving_plan);
                serving.dns.retire();
            }
        }
        // Listeners are bound and the kernel points at them: now let it send there.
        let stop_beat = Arc::new(AtomicBool::new(false));
        let beat = Heartbeat::open(&opts.pins)?.spawn(stop_beat.clone())?;
        serving.dp.retire_old_layouts();
        state_dir_ready(&opts.state_dir)?;
        std::fs::write(pid_file(&opts.state_dir), std::process::id().to_string())?;
        let (watcher, changes) = if let (true, Some(path)) = (opts.watch, &opts.config) {
            let (w, rx) = watch(path)?;
            (Some(w), rx)
        } else {
            (None, mpsc::unbounded_channel().1)
        };
        let mut tls = TlsWatch::new();
        if opts.watch {
            tls.follow(control.plan().unwrap_or(&serving_plan));
        }
        let mut workloads = WorkloadWatch::new(&opts.workloads_dir, !opts.allow_untrusted_config)?;
        sync_workloads(&mut serving, &mut workloads, false, &opts.state_dir).await;
        let store = match &opts.store {
            Some(run) => {
                let (tx, rx) = mpsc::unbounded_channel();
                // (The first list was start-up's, unless from the snapshot.)
                let (link_tx, link) = watch::channel(crate::kvstore::Link {
                    lists: u64::from(store_from.is_some()),
                    ..Default::default()
                });
                tokio::spawn(crate::kvstore::follow(
                    run.store.clone(),
                    store_from,
                    tx,
                    link_tx,
                ));
                let snapshot = spawn_snapshot_writer(crate::kvstore::Snapshot::new(&run.snapshot))?;
                if let Some(w) = control.take_store_writes()
                    && !from_snapshot
                {
                    let _ = snapshot.send(w);
                }
                Some(StoreFollow {
                    url: run.store.url(),
                    rx,
                    link,
                    snapshot,
                    from_snapshot,
                })
            }
            None => None,
        };
        let mut d = Daemon {
            opts,
            serving,
            control,
            health: health0,
            avoid,
            lookups,
            resolved,
            changes,
            _watcher: watcher,
            tls,
            beat: (stop_beat, beat),
            workloads,
            store,
        };
        // (Where it stands against etcd is recorded before it says ready.)
        d.store_status();
        Event::Ready {
            startup: startup.to_string(),
            compile_and_load_ms: started.elapsed().as_secs_f64() * 1e3,
            listeners: d.serving.proxy.ports(),
            fd_limit: fds.limit,
        }
        .emit();
        Ok(d)
    }

    /// Take in a batch from etcd; whether it has keys to read.
    fn take_batch(&mut self, b: crate::config::etcd::Batch) -> bool {
        if let (Some(st), crate::config::etcd::Batch::List { .. }) = (&mut self.store, &b) {
            st.from_snapshot = false;
        }
        let more = self.control.etcd_mut().is_some_and(|s| s.received(b));
        if !more {
            self.store_status();
        }
        more
    }

    /// Record where the node stands against etcd, and send what was
    /// accepted to the snapshot.
    fn store_status(&mut self) {
        let Some(st) = &self.store else { return };
        if let Some(w) = self.control.take_store_writes() {
            let _ = st.snapshot.send(w);
        }
        let Some(src) = self.control.etcd() else {
            return;
        };
        let link = st.link.borrow().clone();
        let status = state::StoreStatus {
            store: st.url.clone(),
            served_revision: src.served(),
            store_revision: src.seen(),
            connected: link.connected,
            error: link.error,
            lists: link.lists,
            objects: src.len(),
            pending: src.pending_len(),
            from_snapshot: st.from_snapshot,
        };
        let t = &self.serving.telemetry;
        t.store_served_revision.set(status.served_revision);
        t.store_revision.set(status.store_revision);
        t.store_connected.set(i64::from(status.connected));
        t.store_pending_keys
            .set(i64::try_from(status.pending).unwrap_or(i64::MAX));
        t.store_lists
            .inc_by(status.lists.saturating_sub(t.store_lists.get()));
        state::write_store_status(&self.opts.state_dir, &status);
    }

    /// Apply triggers until SIGTERM or SIGINT. Bursts are coalesced: file
    /// events until they are quiet for a moment (an editor's several
    /// writes, a tool writing many files), health changes and signals at
    /// most once per [`MIN_INTERVAL`] (an isolated one goes at once).
    pub async fn serve(&mut self, signals: &mut Signals) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_compile = Instant::now() - MIN_INTERVAL;
        loop {
            let first = tokio::select! {
                _ = tick.tick() => {
                    self.serving.dp.retire();
                    continue;
                }
                _ = signals.hup.recv() => Trigger::Signal,
                Ok(()) = self.avoid.changed() => Trigger::Health,
                Ok(()) = self.resolved.changed() => Trigger::Resolved,
                Some(paths) = self.changes.recv() => {
                    self.note_paths(paths);
                    Trigger::FileChange
                }
                Some(got) = next_from_store(&mut self.store) => {
                    match got {
                        Some(b) => {
                            if !self.take_batch(b) {
                                continue;
                            }
                            Trigger::StoreChange
                        }
                        None => {
                            self.store_status();
                            continue;
                        }
                    }
                }
                () = self.tls.changed() => {
                    // A tool may write the certificate, then the key: let
                    // the burst pass, then read both.
                    tokio::time::sleep(FILE_DEBOUNCE_MAX).await;
                    while self.tls.rx.try_recv().is_ok() {}
                    if let Some(plan) = self.control.plan() {
                        tracing::info!("a gateway listener's TLS file changed: read again");
                        self.serving.proxy.reload_tls(plan);
                    }
                    continue;
                }
                Some(_) = self.workloads.rx.recv() => {
                    // `add` writes a temporary file, then renames it: let
                    // the pair pass, then read the directory once.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    while self.workloads.rx.try_recv().is_ok() {}
                    sync_workloads(&mut self.serving, &mut self.workloads, false, &self.opts.state_dir).await;
                    continue;
                }
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
            };
            let mut trigger = first;
            let start = Instant::now();
            let mut quiet = if matches!(trigger, Trigger::FileChange | Trigger::StoreChange) {
                FILE_QUIET
            } else {
                MIN_INTERVAL.saturating_sub(last_compile.elapsed())
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(quiet) => break,
                    _ = signals.hup.recv() => trigger = trigger.max(Trigger::Signal),
                    Ok(()) = self.avoid.changed() => {}
                    Ok(()) = self.resolved.changed() => trigger = trigger.max(Trigger::Resolved),
                    Some(paths) = self.changes.recv() => {
                        self.note_paths(paths);
                        trigger = trigger.max(Trigger::FileChange);
                        // Still busy: wait until quiet, within the cap.
                        quiet = FILE_QUIET.min(FILE_DEBOUNCE_MAX.saturating_sub(start.elapsed()));
                    }
                    // (A change of the link alone waits: the status is
                    // written after the reload.)
                    Some(Some(b)) = next_from_store(&mut self.store) => {
                        if self.take_batch(b) {
                            trigger = trigger.max(Trigger::StoreChange);
                            quiet = FILE_QUIET.min(FILE_DEBOUNCE_MAX.saturating_sub(start.elapsed()));
                        }
                    }
                }
            }
            last_compile = Instant::now();
            self.reload(trigger).await;
            if trigger == Trigger::Signal {
                // Events may have been lost: read the hand-off again, and
                // retry the records that failed.
                sync_workloads(
                    &mut self.serving,
                    &mut self.workloads,
                    true,
                    &self.opts.state_dir,
                )
                .await;
            }
        }
    }

    fn note_paths(&mut self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            self.control.rescan();
        } else {
            self.control.changed(paths);
        }
    }

    /// One reload: prepare (files or health), apply, commit; or report
    /// why not and take it back.
    async fn reload(&mut self, trigger: Trigger) {
        let why = trigger.reason();
        let t = Instant::now();
        let mut phases = Phases::default();
        let health = Health {
            unhealthy: self.avoid.borrow_and_update().clone(),
            resolved: (**self.resolved.borrow_and_update()).clone(),
        };
        if trigger == Trigger::Signal {
            self.control.rescan();
        }
        // A health change alone recompiles the config in service: a bad
        // edit on disk waits for its own trigger.
        let read_files = trigger.reloads();
        let applied = self.health.clone();
        let reload = tokio::task::block_in_place(|| {
            self.control
                .prepare(read_files, &applied, &health, &mut phases)
        });
        let refused = reload.refused.is_some();
        if let Some(e) = reload.refused {
            Rejection::Config(e).event(why).emit();
            self.serving.count_reload(why, "rejected", t, None);
        }
        let delta = match reload.prepared {
            Prepared::Nothing => {
                self.health = health;
                self.store_status();
                if trigger == Trigger::Signal
                    && let Some(plan) = self.control.plan()
                {
                    self.serving.proxy.reload_tls(plan);
                }
                if !refused {
                    self.serving.count_reload(why, "unchanged", t, None);
                    Event::NoChange {
                        reason: why.to_string(),
                        generation: self.serving.dp.generation(),
                        elapsed_ms: ms(t),
                    }
                    .emit();
                }
                return;
            }
            Prepared::Changes(d) => d,
        };
        let plan = self.control.plan().expect("prepared").clone();
        log_notices_of(&plan, &delta);
        let w = Instant::now();
        match self.serving.apply(&plan, &delta).await {
            Ok(report) => {
                phases.write_ms = ms(w);
                self.control.commit();
                self.health = health;
                if plan.close_removed {
                    let gone = crate::reap::closed_endpoints(
                        delta.replaced.iter().map(|s| &**s),
                        delta
                            .services
                            .iter()
                            .filter_map(|(v, p, pr)| plan.service(*v, *p, *pr)),
                        &plan,
                    );
                    close_removed(&self.serving.socks, gone, &self.serving.cgroup);
                }
                applied_event(why, &self.serving, &plan, &report, phases, t);
                self.serving.count_reload(why, "applied", t, Some(&plan));
                self.store_status();
                let want = Lookups::of(&plan, self.opts.listen_netns.as_deref());
                self.lookups.send_if_modified(|cur| {
                    let changed = *cur != want;
                    if changed {
                        *cur = want;
                    }
                    changed
                });
                if self.opts.watch {
                    self.tls.follow(&plan);
                }
            }
            Err(e) => {
                // The maps may hold some of the new plan: read them back and
                // write the last good plan again.
                self.control.rollback(&self.health);
                self.serving.count_reload(why, "failed", t, None);
                self.restore(why, &e);
                Rejection::Datapath(e).event(why).emit();
            }
        }
    }

    /// After a failed map write: every service is whole (a header only ever
    /// points at a complete table), but some may be new and some old. Read
    /// the maps back and write the last good plan again.
    fn restore(&mut self, why: &str, failure: &anyhow::Error) {
        if failure.is::<datapath::sync::DoesNotFit>() {
            return; // nothing was written
        }
        let dp = &mut self.serving.dp;
        let restored = dp.resync().and_then(|()| match self.control.plan() {
            Some(p) => tokio::task::block_in_place(|| dp.apply(p)).map(|_| ()),
            None => Ok(()),
        });
        Event::PartialWrite {
            reason: why.to_string(),
            restored: restored.is_ok(),
            detail: match restored {
                Ok(()) => format!("{failure:#}"),
                Err(e) => format!("{failure:#}; then: {e:#}"),
            },
        }
        .emit();
    }

    /// Stop: the heartbeat and the listeners' entry now (DNS capture and
    /// L7 hand-over stop at once rather than in 3 s), the state written,
    /// the datapath removed if asked.
    pub fn shutdown(self) -> Result<()> {
        let opts = self.opts;
        let _ = std::fs::remove_file(pid_file(&opts.state_dir));
        let (stop_beat, beat) = self.beat;
        stop_beat.store(true, Ordering::Relaxed);
        let _ = beat.join();
        let mut serving = self.serving;
        let _ = serving.dp.set_listeners(serving.netns, None);
        // The workloads' listeners go; their scoped VIPs stay (L4 keeps
        // routing while no daemon runs, as for every other caller).
        for pod in std::mem::take(&mut serving.workloads).into_values() {
            serving.close_in(pod.netns);
        }
        let _ = std::fs::remove_file(workload::status_file(&opts.state_dir));
        serving.state.finish();
        if opts.cleanup {
            drop(serving);
            cleanup(&opts.pins, &opts.state_dir)?;
        }
        Event::Stopped {
            removed: opts.cleanup,
            dir: opts.pins.dir().display().to_string(),
        }
        .emit();
        Ok(())
    }
}

/// Serve the workloads the hand-off directory names now, forget those it
/// no longer names; `retry`: try the failed records again even if they did
/// not change. Records what is served in the state directory.
async fn sync_workloads(
    serving: &mut Serving,
    watch: &mut WorkloadWatch,
    retry: bool,
    state_dir: &Path,
) {
    let started = Instant::now();
    let (want, problems) = workload::read_dir(&watch.dir, watch.trusted_only);
    if problems != watch.problems {
        for p in &problems {
            tracing::warn!("workloads directory: {p}");
        }
        watch.problems = problems;
    }
    let gone: Vec<workload::Key> = serving
        .workloads
        .iter()
        .filter(|(k, p)| want.get(*k) != Some(&p.workload))
        .map(|(k, _)| k.clone())
        .collect();
    let mut events = Vec::new();
    for key in gone {
        if let Some(pod) = serving.workloads.remove(&key) {
            serving.close_in(pod.netns);
            events.push(Event::WorkloadForgotten { workload: key });
        }
    }
    watch
        .failed
        .retain(|k, (w, _)| !retry && want.get(k) == Some(&*w));
    for (key, w) in &want {
        if serving.workloads.contains_key(key) || watch.failed.contains_key(key) {
            continue;
        }
        match serving.serve_workload(w).await {
            Ok(pod) => {
                if !serving.scopes.hosts.is_empty() && !serving.scopes.knows(key) {
                    tracing::warn!(
                        "workload {key} has no Pod in the inventory (a `v1 Pod` named {key} \
                         in this node's cluster): it sees only the route tables without \
                         workloadSelectors"
                    );
                }
                events.push(Event::WorkloadServed {
                    workload: key.clone(),
                    netns_cookie: pod.netns,
                    listeners: pod.listeners.clone(),
                    elapsed_ms: 0.0,
                });
                serving.workloads.insert(key.clone(), pod);
            }
            Err(e) => {
                let error = format!("{e:#}");
                events.push(Event::WorkloadFailed {
                    workload: key.clone(),
                    error: error.clone(),
                });
                watch.failed.insert(key.clone(), (w.clone(), error));
            }
        }
    }
    // The scoped VIPs of every workload served, once (at start-up, the
    // previous daemon's entries stay until every workload is back).
    if !serving.visible_ready {
        // And the listener entries of namespaces no workload has any more.
        let keep: BTreeSet<u64> = std::iter::once(serving.netns)
            .chain(serving.workloads.values().map(|p| p.netns))
            .collect();
        match serving.dp.keep_listeners(&keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "removed the listener entries of {n} namespace(s) no workload has any more"
            ),
            Err(e) => tracing::warn!("could not remove stale listener entries: {e:#}"),
        }
    }
    serving.visible_ready = true;
    if let Err(e) = serving.sync_visible() {
        tracing::warn!("could not write the workloads' scoped VIPs: {e:#}");
    }
    for mut e in events {
        if let Event::WorkloadServed { elapsed_ms, .. } = &mut e {
            *elapsed_ms = ms(started);
        }
        e.emit();
    }
    let served: Vec<workload::Served> = serving
        .workloads
        .values()
        .map(|p| workload::Served {
            workload: p.workload.clone(),
            netns_cookie: p.netns,
            listeners: p.listeners.clone(),
            error: None,
        })
        .chain(watch.failed.values().map(|(w, e)| workload::Served {
            workload: w.clone(),
            netns_cookie: 0,
            listeners: Vec::new(),
            error: Some(e.clone()),
        }))
        .collect();
    workload::write_status(state_dir, &served);
}

/// Notices are logged when the config changed (an update of endpoints
/// changes no notice worth repeating).
fn log_notices_of(plan: &Plan, delta: &Delta) {
    if delta.all {
        log_notices(plan);
    }
}

fn applied_event(
    why: &str,
    s: &Serving,
    plan: &Plan,
    report: &datapath::sync::SyncReport,
    phases: Phases,
    since: Instant,
) {
    Event::Applied {
        reason: why.to_string(),
        generation: s.dp.generation(),
        services: plan.services.len(),
        backends: plan.backends.len(),
        hosts: plan.hosts.len(),
        added: report.services_added,
        changed: report.services_changed,
        removed: report.services_removed,
        writes: report.writes,
        elapsed_ms: ms(since),
        phases,
    }
    .emit();
}

/// Remove pins and state. Idempotent.
pub fn cleanup(pins: &Pins, state_dir: &Path) -> Result<()> {
    datapath::remove(pins)?;
    for f in [
        state::plan_file(state_dir),
        state::health_file(state_dir),
        pid_file(state_dir),
    ] {
        let _ = std::fs::remove_file(f);
    }
    // The workloads directory goes only when it is empty: its records are
    // the CNI plugin's, kept for the next daemon.
    let _ = std::fs::remove_dir(state_dir.join("workloads"));
    let _ = std::fs::remove_dir(state_dir);
    Ok(())
}

/// `routerd stop`: signal a running daemon, wait for it, remove everything.
pub fn stop(pins: &Pins, state_dir: &Path) -> Result<()> {
    if let Ok(pid) = std::fs::read_to_string(pid_file(state_dir))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        let pid = nix::unistd::Pid::from_raw(pid);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    cleanup(pins, state_dir)?;
    Ok(())
}

impl std::fmt::Display for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Startup::Loaded => "loaded",
            Startup::Adopted => "adopted",
            Startup::Replaced => "replaced",
        })
    }
}
