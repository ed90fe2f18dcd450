//! `routerd run`: load, compile, attach, apply; then reload on file change
//! and SIGHUP, and recompile the last good config when endpoint health
//! changes ([`crate::health`]). A config that fails to load or compile is
//! reported and changes nothing: the last good plan keeps serving.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    compile::{self, Health},
    config::{self, Overrides, Validated},
    datapath::{self, Datapath, Pins, Startup},
    dns::{self, DnsOptions, Names},
    health::{self, Watched},
    netns::Sockets,
    plan::Plan,
    proxy::Proxy,
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
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Files the daemon keeps in its state directory.
pub fn plan_file(state_dir: &Path) -> PathBuf {
    state_dir.join("plan.json")
}
pub fn pid_file(state_dir: &Path) -> PathBuf {
    state_dir.join("routerd.pid")
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
    let v = config::load(path, overrides).map_err(|e| e.to_string())?;
    let plan = compile::compile(&v, health).map_err(|e| e.to_string())?;
    Ok((Arc::new(v), plan))
}

/// The state directory, root only (the plan names every endpoint).
fn state_dir_ready(state_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to root", state_dir.display()))
}

fn write_state(state_dir: &Path, plan: &Plan) -> Result<()> {
    state_dir_ready(state_dir)?;
    let tmp = state_dir.join("plan.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(plan)?)?;
    std::fs::rename(&tmp, plan_file(state_dir))?;
    Ok(())
}

fn log_notices(plan: &Plan) {
    for n in &plan.notices {
        tracing::warn!("{n}");
    }
}

fn apply(
    dp: &mut Datapath,
    plan: &Plan,
    state_dir: &Path,
    started: Instant,
    why: &str,
) -> Result<()> {
    let report = dp.apply(plan)?;
    write_state(state_dir, plan)?;
    tracing::info!(
        reason = why,
        generation = dp.generation(),
        services = plan.services.len(),
        backends = plan.backends.len(),
        hosts = plan.hosts.len(),
        added = report.services_added,
        changed = report.services_changed,
        removed = report.services_removed,
        writes = report.writes,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "applied"
    );
    Ok(())
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

/// Log a rejected config: one event per problem (log pipelines split on
/// lines), then the verdict, so a reader of the verdict has seen them all.
fn log_rejected(e: &str, why: &str) {
    let problems: Vec<&str> = e
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for p in &problems {
        tracing::error!("{p}");
    }
    tracing::error!(
        reason = why,
        errors = problems.len(),
        "reload rejected: the last good config keeps serving"
    );
}

/// The maps, then the proxy listeners the new plan no longer needs (the
/// listeners it needs were made by `Proxy::prepare` before: they must exist
/// before the kernel points at them).
fn apply_all(
    dp: &mut Datapath,
    proxy: &mut Proxy,
    plan: &Plan,
    state_dir: &Path,
    t: Instant,
    why: &str,
) -> Result<()> {
    apply(dp, plan, state_dir, t, why)?;
    proxy.retire(plan);
    Ok(())
}

fn watched(plan: &Plan) -> Watched {
    Watched {
        checks: plan.health_checks.clone(),
        outliers: plan.outliers.clone(),
    }
}

const HEALTH_CHANGE: &str = "endpoint health change";

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
        let done = tokio::task::spawn_blocking(move || {
            crate::reap::close_connections(&fd, &gone, &crate::reap::cgroup_ids(&cgroup))
        })
        .await;
        match done {
            Ok(Ok(c)) if c.failed == 0 => tracing::info!(
                endpoints = ?list, tcp = c.tcp, udp = c.udp,
                "closed connections to endpoints that no longer take traffic"
            ),
            Ok(Ok(c)) => tracing::warn!(
                endpoints = ?list, tcp = c.tcp, udp = c.udp, failed = c.failed,
                "some connections to removed endpoints could not be closed (kernel without CONFIG_INET_DIAG_DESTROY?)"
            ),
            Ok(Err(e)) => {
                tracing::warn!(endpoints = ?list, "closing connections to removed endpoints: {e}")
            }
            Err(e) => tracing::warn!("closing connections to removed endpoints: {e}"),
        }
    });
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let started = Instant::now();
    // Handlers first: a SIGHUP that arrives while we start must not kill us.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let first = load_and_compile(&opts.config, &opts.overrides, &Health::default());
    if let Err(e) = &first {
        if !opts.pins.exists() {
            // Nothing is serving: refuse to start rather than attach an empty datapath.
            anyhow::bail!("{e}");
        }
        log_rejected(e, "start-up");
        tracing::warn!("keeping the pinned datapath as it is until the config is fixed");
    }
    let mut dp = Datapath::open(opts.pins.clone(), &opts.cgroup, opts.sizes)?;
    spawn_logger(&mut dp);
    let socks = Sockets::start(opts.listen_netns.as_deref())?;
    // The plan to serve: this config's, or the last applied one if this
    // config is bad (the datapath was adopted as it is).
    let last_applied: Option<Plan> = std::fs::read(plan_file(&opts.state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let serving = first
        .as_ref()
        .ok()
        .map(|(_, p)| p)
        .or(last_applied.as_ref())
        .cloned()
        .unwrap_or_default();
    // DNS listeners are bound before the heartbeat that lets the datapath
    // capture DNS, so capture never points at a socket that is not there.
    let dns_plan = serving.dns.clone();
    let (names_tx, names_rx) = watch::channel(Arc::new(Names::from_plan(&serving)));
    if dns_plan.enabled {
        let upstreams = if dns_plan.upstreams.is_empty() {
            dns::system_upstreams(opts.listen_netns.as_deref())
        } else {
            dns_plan.upstreams.clone()
        };
        dns::start(
            DnsOptions {
                listen: dns_plan.listeners(),
                upstreams,
            },
            socks.clone(),
            names_rx,
        )
        .await?;
    }
    let mut proxy = Proxy::new(socks.clone(), serving.proxy.listen4, serving.proxy.listen6);
    proxy.prepare(&serving).await?;
    // Health: checks and ejections publish the endpoints to avoid.
    let (watched_tx, watched_rx) = watch::channel(watched(&serving));
    let (avoid_tx, mut avoid) = watch::channel(BTreeSet::<SocketAddr>::new());
    let outcomes = proxy
        .observations()
        .subscribe()
        .context("the proxy's outcomes have a subscriber already")?;
    tokio::spawn(health::run(socks.clone(), watched_rx, outcomes, avoid_tx));
    let startup = dp.startup;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let heartbeat = |dp: &mut Datapath| {
        let until = if dns_plan.enabled {
            monotonic_ns() + router_common::DNS_ALIVE_NS
        } else {
            0
        };
        if let Err(e) = dp.set_dns_alive(until) {
            tracing::warn!("could not refresh the DNS heartbeat: {e:#}");
        }
    };
    heartbeat(&mut dp);
    if let Ok((_, plan)) = &first {
        log_notices(plan);
        apply_all(
            &mut dp,
            &mut proxy,
            plan,
            &opts.state_dir,
            started,
            "start-up",
        )?;
    }
    tracing::info!(?startup, compile_and_load_ms = compile_ms, listeners = ?proxy.ports(), "routerd ready");
    state_dir_ready(&opts.state_dir)?;
    std::fs::write(pid_file(&opts.state_dir), std::process::id().to_string())?;

    let (_watcher, mut changes) = if opts.watch {
        let (w, rx) = watch(&opts.config)?;
        (Some(w), rx)
    } else {
        (None, mpsc::unbounded_channel().1)
    };
    let (mut last_valid, mut last_plan) = match first {
        Ok((v, p)) => (Some(v), Some(p)),
        Err(_) => (None, None),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let why = tokio::select! {
            _ = tick.tick() => {
                heartbeat(&mut dp);
                continue;
            }
            _ = hup.recv() => "SIGHUP",
            Ok(()) = avoid.changed() => HEALTH_CHANGE,
            Some(()) = changes.recv() => {
                // Debounce: editors write in several steps.
                tokio::time::sleep(Duration::from_millis(150)).await;
                while changes.try_recv().is_ok() {}
                "config change"
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let t = Instant::now();
        let health = Health {
            unhealthy: avoid.borrow_and_update().clone(),
        };
        let compiled = match (&last_valid, why) {
            // Health changed: the config did not; recompile the one serving.
            (Some(v), HEALTH_CHANGE) => compile::compile(v, &health)
                .map(|p| (v.clone(), p))
                .map_err(|e| e.to_string()),
            (None, HEALTH_CHANGE) => continue,
            _ => load_and_compile(&opts.config, &opts.overrides, &health),
        };
        let (valid, plan) = match compiled {
            Err(e) => {
                log_rejected(&e, why);
                continue;
            }
            Ok(x) => x,
        };
        if last_plan.as_ref() == Some(&plan) {
            tracing::info!(
                reason = why,
                generation = dp.generation(),
                "reload: no change"
            );
            continue;
        }
        if let Err(e) = proxy.prepare(&plan).await {
            log_rejected(&format!("config rejected\n{e:#}"), why);
            continue;
        }
        log_notices(&plan);
        match apply_all(&mut dp, &mut proxy, &plan, &opts.state_dir, t, why) {
            Ok(()) => {
                if plan.close_removed
                    && let Some(old) = &last_plan
                {
                    close_removed(&socks, old, &plan, &opts.cgroup);
                }
                watched_tx.send_if_modified(|w| {
                    let new = watched(&plan);
                    let changed = *w != new;
                    *w = new;
                    changed
                });
                last_valid = Some(valid);
                if plan.dns.listeners() != dns_plan.listeners()
                    || plan.dns.enabled != dns_plan.enabled
                {
                    tracing::warn!(
                        "DNS listener settings changed: they take effect at the next restart"
                    );
                }
                names_tx.send_replace(Arc::new(Names::from_plan(&plan)));
                last_plan = Some(plan);
            }
            Err(e) => tracing::error!(
                reason = why,
                "applying the new plan failed (nothing partial was left): {e:#}"
            ),
        }
    }
    let _ = std::fs::remove_file(pid_file(&opts.state_dir));
    // No listener any more: stop capturing DNS now rather than in 3 s.
    let _ = dp.set_dns_alive(0);
    if opts.cleanup {
        drop(dp);
        cleanup(&opts.pins, &opts.state_dir)?;
        tracing::info!("stopped; datapath removed (--cleanup)");
    } else {
        tracing::info!(
            "stopped; the datapath keeps routing from {} (run `routerd stop` to remove it)",
            opts.pins.dir().display()
        );
    }
    Ok(())
}

/// Remove pins and state. Idempotent.
pub fn cleanup(pins: &Pins, state_dir: &Path) -> Result<()> {
    datapath::remove(pins)?;
    for f in [plan_file(state_dir), pid_file(state_dir)] {
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
