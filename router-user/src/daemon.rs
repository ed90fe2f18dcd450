//! `routerd run`: load, compile, attach, apply; then reload on file change
//! and SIGHUP, and recompile the last good config when endpoint health
//! changes ([`crate::health`]). A config that fails to load or compile is
//! reported and changes nothing: the last good plan keeps serving.
//!
//! What never waits for a compile: the heartbeat (a thread of its own; the
//! kernel stops capturing DNS and refuses L7 VIPs within seconds of it
//! stopping), DNS and the proxy (tokio tasks; compiles and map writes run
//! with `block_in_place`, so they never hold a worker that serves). Bursts of
//! triggers (health flaps, an editor's several writes) are coalesced into
//! one recompile.
use std::{
    collections::BTreeSet,
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
    compile::{self, Health},
    config::{Loader, Overrides, Validated, load::LoadOptions},
    datapath::{self, Datapath, Heartbeat, OrigTable, Pins, Startup, sync::Bound},
    dns::{Dns, Names},
    events::Event,
    health::{self, Watched},
    limits,
    netns::Sockets,
    plan::Plan,
    proxy::{Proxy, ProxyOptions},
    state::{self, pid_file, state_dir_ready, write_state},
};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
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
}

/// Load, validate and compile; the error text is what an operator reads.
pub fn build_plan(path: &Path, overrides: &Overrides, health: &Health) -> Result<Plan, String> {
    load_and_compile(path, overrides, health).map(|(_, plan)| plan)
}

/// Load and validate (kept, so health changes recompile without the disk),
/// then compile.
fn load_and_compile(
    path: &Path,
    overrides: &Overrides,
    health: &Health,
) -> Result<(Arc<Validated>, Plan), String> {
    load_and_compile_with(
        &mut Loader::new(LoadOptions::default()),
        path,
        overrides,
        health,
    )
}

fn load_and_compile_with(
    loader: &mut Loader,
    path: &Path,
    overrides: &Overrides,
    health: &Health,
) -> Result<(Arc<Validated>, Plan), String> {
    let v = loader.load(path, overrides).map_err(|e| e.to_string())?;
    let plan = compile::compile(&v, health).map_err(|e| e.to_string())?;
    Ok((Arc::new(v), plan))
}

fn log_notices(plan: &Plan) {
    for n in &plan.notices {
        tracing::warn!("{n}");
    }
}

/// Spawn a watcher that sends a unit on every change under `path`.
fn watch(path: &Path) -> Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = mpsc::unbounded_channel();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
        {
            let _ = tx.send(());
        }
    })?;
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

/// How long to wait after a file event for the editor's other writes.
const FILE_DEBOUNCE: Duration = Duration::from_millis(150);
/// Recompiles for health changes and signals: at most one per this.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Why the daemon looks at its config again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// Endpoint health changed: recompile the config in service (not the
    /// files on disk: a bad edit there waits for its own reload).
    Health,
    /// A file under the config path changed.
    FileChange,
    /// SIGHUP.
    Signal,
}

impl Trigger {
    fn reason(self) -> &'static str {
        match self {
            Trigger::Health => "endpoint health change",
            Trigger::FileChange => "config change",
            Trigger::Signal => "SIGHUP",
        }
    }
    /// Does this trigger read the files again?
    fn reloads(self) -> bool {
        self != Trigger::Health
    }
}

fn watched(plan: &Plan) -> Watched {
    Watched {
        checks: plan.health_checks.clone(),
        outliers: plan.outliers.clone(),
    }
}

/// Close clients' connections to endpoints `new` no longer routes to (in
/// the background; the kernel already sends new connections elsewhere).
fn close_removed(socks: &Sockets, old: &Plan, new: &Plan, cgroup: &Path) {
    let gone = crate::reap::endpoints_to_close(old, new);
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

/// Everything that serves: the datapath and the listeners, driven by plans.
struct Serving {
    dp: Datapath,
    proxy: Proxy,
    dns: Dns,
    netns: u64,
    socks: Sockets,
    state_dir: PathBuf,
    cgroup: PathBuf,
    names: watch::Sender<Arc<Names>>,
    watched: watch::Sender<Watched>,
    /// What is applied, and the config it came from.
    plan: Option<Plan>,
    valid: Option<Arc<Validated>>,
}

impl Serving {
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

    /// Listeners, maps, then the listener entry and the old listeners; on
    /// a failed map write, restore the last good plan.
    async fn apply(&mut self, plan: Plan, valid: Option<Arc<Validated>>, why: &str) -> Result<()> {
        let t = Instant::now();
        let bound = self.prepare(&plan).await?;
        let report = match tokio::task::block_in_place(|| self.dp.apply(&plan)) {
            Ok(r) => r,
            Err(e) if e.is::<datapath::sync::DoesNotFit>() => return Err(e),
            Err(e) => {
                self.restore(why, &e);
                return Err(e);
            }
        };
        self.dp.set_listeners(self.netns, Some(&bound))?;
        self.proxy.retire(&plan);
        self.dns.retire();
        let elapsed = t.elapsed();
        if plan.close_removed
            && let Some(old) = &self.plan
        {
            close_removed(&self.socks, old, &plan, &self.cgroup);
        }
        self.watched.send_if_modified(|w| {
            let new = watched(&plan);
            let changed = *w != new;
            *w = new;
            changed
        });
        self.names.send_replace(Arc::new(Names::from_plan(&plan)));
        // Everything serves the new plan now (maps, proxy tables, names).
        Event::Applied {
            reason: why.to_string(),
            generation: self.dp.generation(),
            services: plan.services.len(),
            backends: plan.backends.len(),
            hosts: plan.hosts.len(),
            added: report.services_added,
            changed: report.services_changed,
            removed: report.services_removed,
            writes: report.writes,
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
        }
        .emit();
        tokio::task::block_in_place(|| write_state(&self.state_dir, &plan));
        self.plan = Some(plan);
        if valid.is_some() {
            self.valid = valid;
        }
        Ok(())
    }

    /// After a map write failed half-way: every service is whole (a header
    /// only ever points at a complete table), but some may be new and some
    /// old. Read the maps back and write the last good plan again.
    fn restore(&mut self, why: &str, failure: &anyhow::Error) {
        let restored = self.dp.resync().and_then(|()| match &self.plan {
            Some(p) => tokio::task::block_in_place(|| self.dp.apply(p)).map(|_| ()),
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
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let started = Instant::now();
    // Handlers first: a SIGHUP that arrives while we start must not kill us.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let fds = limits::raise_nofile();
    let mut loader = Loader::new(LoadOptions {
        trusted_only: !opts.allow_untrusted_config,
    });
    let first = tokio::task::block_in_place(|| {
        load_and_compile_with(
            &mut loader,
            &opts.config,
            &opts.overrides,
            &Health::default(),
        )
    });
    if let Err(e) = &first {
        if !opts.pins.exists() {
            // Nothing is serving: refuse to start rather than attach an empty datapath.
            anyhow::bail!("{e}");
        }
        Event::rejected("start-up", e).emit();
        tracing::warn!("keeping the pinned datapath as it is until the config is fixed");
    }
    let mut dp = Datapath::open(opts.pins.clone(), &opts.cgroup, opts.sizes)?;
    spawn_logger(&mut dp);
    let socks = Sockets::start(opts.listen_netns.as_deref())?;
    let netns = socks
        .netns_cookie()
        .await
        .context("reading the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+)")?;
    // The plan to serve: this config's, or the last applied one if this
    // config is bad (the datapath was adopted as it is).
    let last_applied: Option<Plan> = std::fs::read(state::plan_file(&opts.state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let serving_plan = first
        .as_ref()
        .ok()
        .map(|(_, p)| p)
        .or(last_applied.as_ref())
        .cloned()
        .unwrap_or_default();
    check_privileged_port(&socks, serving_plan.proxy.port).await;
    let orig = Arc::new(OrigTable::open(&opts.pins)?);
    let (names_tx, names_rx) = watch::channel(Arc::new(Names::from_plan(&serving_plan)));
    let dns = Dns::new(
        socks.clone(),
        orig.clone(),
        netns,
        opts.listen_netns.clone(),
        names_rx,
    )
    .await;
    let proxy = Proxy::new(
        socks.clone(),
        orig,
        &serving_plan.proxy,
        ProxyOptions {
            max_conns: fds.proxy_conns,
            netns,
        },
    );
    // Health: checks and ejections publish the endpoints to avoid.
    let (watched_tx, watched_rx) = watch::channel(watched(&serving_plan));
    let (avoid_tx, mut avoid) = watch::channel(BTreeSet::<SocketAddr>::new());
    let outcomes = proxy
        .observations()
        .subscribe()
        .context("the proxy's outcomes have a subscriber already")?;
    tokio::spawn(health::run(socks.clone(), watched_rx, outcomes, avoid_tx));
    let mut s = Serving {
        dp,
        proxy,
        dns,
        netns,
        socks: socks.clone(),
        state_dir: opts.state_dir.clone(),
        cgroup: opts.cgroup.clone(),
        names: names_tx,
        watched: watched_tx,
        plan: None,
        valid: None,
    };
    let startup = s.dp.startup;
    match first {
        Ok((v, plan)) => {
            log_notices(&plan);
            s.apply(plan, Some(v), "start-up").await?;
        }
        Err(_) => {
            // A bad config on a restart: serve the pinned datapath with the
            // listeners of the last applied plan.
            let bound = s.prepare(&serving_plan).await?;
            s.dp.set_listeners(netns, Some(&bound))?;
            s.proxy.retire(&serving_plan);
            s.dns.retire();
            s.plan = last_applied;
        }
    }
    // Listeners are bound and the kernel points at them: now let it send there.
    let stop_beat = Arc::new(AtomicBool::new(false));
    let beat = Heartbeat::open(&opts.pins)?.spawn(stop_beat.clone())?;
    s.dp.retire_old_layouts();
    Event::Ready {
        startup: startup.to_string(),
        compile_and_load_ms: started.elapsed().as_secs_f64() * 1e3,
        listeners: s.proxy.ports(),
        fd_limit: fds.limit,
    }
    .emit();
    state_dir_ready(&opts.state_dir)?;
    std::fs::write(pid_file(&opts.state_dir), std::process::id().to_string())?;

    let (_watcher, mut changes) = if opts.watch {
        let (w, rx) = watch(&opts.config)?;
        (Some(w), rx)
    } else {
        (None, mpsc::unbounded_channel().1)
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_compile = Instant::now() - MIN_INTERVAL;
    loop {
        let first_trigger = tokio::select! {
            _ = tick.tick() => {
                s.dp.retire();
                continue;
            }
            _ = hup.recv() => Trigger::Signal,
            Ok(()) = avoid.changed() => Trigger::Health,
            Some(()) = changes.recv() => Trigger::FileChange,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        // Coalesce: editors write in several steps (wait a moment for the
        // last one), and health flaps come in bursts (at most one recompile
        // per MIN_INTERVAL; an isolated change goes at once). Whatever
        // arrives in the window is served by one compile.
        let mut trigger = first_trigger;
        let wait = if trigger == Trigger::FileChange {
            FILE_DEBOUNCE
        } else {
            MIN_INTERVAL.saturating_sub(last_compile.elapsed())
        };
        let window = tokio::time::sleep(wait);
        tokio::pin!(window);
        loop {
            tokio::select! {
                _ = &mut window => break,
                _ = hup.recv() => trigger = trigger.max(Trigger::Signal),
                Ok(()) = avoid.changed() => {}
                Some(()) = changes.recv() => trigger = trigger.max(Trigger::FileChange),
            }
        }
        let why = trigger.reason();
        last_compile = Instant::now();
        let health = Health {
            unhealthy: avoid.borrow_and_update().clone(),
        };
        let compiled = if trigger.reloads() {
            tokio::task::block_in_place(|| {
                load_and_compile_with(&mut loader, &opts.config, &opts.overrides, &health)
            })
        } else {
            match &s.valid {
                // The config did not change; recompile the one serving.
                Some(v) => tokio::task::block_in_place(|| compile::compile(v, &health))
                    .map(|p| (v.clone(), p))
                    .map_err(|e| e.to_string()),
                None => continue,
            }
        };
        let (valid, plan) = match compiled {
            Err(e) => {
                Event::rejected(why, &e).emit();
                continue;
            }
            Ok(x) => x,
        };
        if s.plan.as_ref() == Some(&plan) {
            s.valid = Some(valid);
            Event::NoChange {
                reason: why.to_string(),
                generation: s.dp.generation(),
            }
            .emit();
            continue;
        }
        log_notices(&plan);
        if let Err(e) = s.apply(plan, Some(valid), why).await {
            Event::rejected(why, &format!("{e:#}")).emit();
        }
    }
    let _ = std::fs::remove_file(pid_file(&opts.state_dir));
    // No listener any more: stop capturing DNS and handing over L7 VIPs now
    // rather than in 3 s.
    stop_beat.store(true, Ordering::Relaxed);
    let _ = beat.join();
    let _ = s.dp.set_listeners(netns, None);
    if opts.cleanup {
        drop(s);
        cleanup(&opts.pins, &opts.state_dir)?;
    }
    Event::Stopped {
        removed: opts.cleanup,
        dir: opts.pins.dir().display().to_string(),
    }
    .emit();
    Ok(())
}

/// Remove pins and state. Idempotent.
pub fn cleanup(pins: &Pins, state_dir: &Path) -> Result<()> {
    datapath::remove(pins)?;
    for f in [state::plan_file(state_dir), pid_file(state_dir)] {
        let _ = std::fs::remove_file(f);
    }
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
