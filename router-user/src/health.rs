//! Endpoint health at run time: active checks (ActiveHealthCheckPolicy) and
//! outlier ejection from what the L7 proxy sees (OutlierDetectionPolicy,
//! reported through [`Observations`]).
//!
//! The state machines ([`Active`], [`Ejector`]) are pure and tested here;
//! [`run`] drives them: one task per checked endpoint, the proxy's outcome
//! stream, a sweep timer. Whenever the set of endpoints to avoid changes it
//! publishes the new set; the daemon recompiles the last good config with it
//! and writes only the services whose slots changed.
//!
//! The kernel sees handshakes too: for endpoints with outlier detection it
//! counts failed handshakes (a reset answering the SYN, a SYN timeout),
//! ejects an endpoint itself at the policy's threshold and says so through
//! [`KernelSignals`]; [`Ejector::kernel_ejected`] confirms the ejection
//! (the slot tables are recompiled without the endpoint, with the same
//! back-off and maxEjectionPercent as an ejection the proxy caused) or has
//! the kernel lift it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use serde::Serialize;

use crate::{
    datapath::{
        KernelSignals,
        sync::{port_host, words_ip},
    },
    events::Event,
    netns::Sockets,
    plan::{CheckKind, HealthCheckPlan, OutlierPlan},
    telemetry::{OutLabels, SourceLabels, Telemetry},
};

/// What the proxy saw of each endpoint (for outlier detection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointStats {
    pub requests: u64,
    pub connect_failures: u64,
    pub resets: u64,
    pub status_5xx: u64,
    pub consecutive_errors: u64,
}

/// Per-endpoint counters, and (once the daemon subscribes) a stream of
/// every outcome for outlier detection.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    stats: Arc<Mutex<HashMap<SocketAddr, EndpointStats>>>,
    events: Arc<std::sync::OnceLock<mpsc::UnboundedSender<(SocketAddr, Outcome)>>>,
}

/// What one request to an endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A 5xx status (502, 503 and 504 are gateway errors).
    Status5xx(u16),
    ConnectFailure,
    /// Reset, or no answer within the per-try timeout.
    Reset,
}

impl Observations {
    /// The outcomes from now on (one subscriber: the daemon's health task).
    pub fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<(SocketAddr, Outcome)>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.events.set(tx).ok().map(|_| rx)
    }

    /// Count one outcome. The health task hears of it unless it is a
    /// success after a success: that changes nothing for outlier detection
    /// ([`Ejector::record`] only resets the endpoint's error runs, which are
    /// zero then), and sending it woke the daemon's runtime on every request
    /// (a context switch per request in the HTTP bench). Sent under the
    /// lock, so the task hears outcomes in the order they were counted.
    pub fn record(&self, ep: SocketAddr, o: Outcome) {
        let mut m = self.stats.lock().unwrap();
        let s = m.entry(ep).or_default();
        if (o != Outcome::Ok || s.consecutive_errors > 0)
            && let Some(tx) = self.events.get()
        {
            let _ = tx.send((ep, o));
        }
        s.requests += 1;
        match o {
            Outcome::Ok => s.consecutive_errors = 0,
            Outcome::Status5xx(_) => {
                s.status_5xx += 1;
                s.consecutive_errors += 1;
            }
            Outcome::ConnectFailure => {
                s.connect_failures += 1;
                s.consecutive_errors += 1;
            }
            Outcome::Reset => {
                s.resets += 1;
                s.consecutive_errors += 1;
            }
        }
    }
    pub fn snapshot(&self) -> HashMap<SocketAddr, EndpointStats> {
        self.stats.lock().unwrap().clone()
    }
}

/// Ejections last at most this long (Envoy's default max_ejection_time),
/// unless the base ejection time itself is longer.
pub const MAX_EJECTION_MS: u64 = 300_000;

/// One endpoint's active-check state. Endpoints start healthy: Kubernetes
/// already said they are ready, and a daemon restart must not pull every
/// endpoint out of service until its first check.
#[derive(Clone, Debug)]
pub struct Active {
    pub healthy: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// Why it is unhealthy (set by the caller when it turns so).
    pub why: String,
}

impl Default for Active {
    fn default() -> Self {
        Active {
            healthy: true,
            ok_streak: 0,
            fail_streak: 0,
            why: String::new(),
        }
    }
}

impl Active {
    /// Count one check result; true when the endpoint changed state.
    pub fn observe(&mut self, ok: bool, unhealthy_threshold: u32, healthy_threshold: u32) -> bool {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.healthy && self.ok_streak >= healthy_threshold {
                self.healthy = true;
                return true;
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if self.healthy && self.fail_streak >= unhealthy_threshold {
                self.healthy = false;
                return true;
            }
        }
        false
    }
}

#[derive(Clone, Debug, Default)]
struct EpOutlier {
    errors: u32,
    gateway_errors: u32,
    /// Times ejected (the back-off multiplier); decays while healthy.
    ejections: u32,
    ejected_until_ms: Option<u64>,
    /// When the multiplier last changed (for its decay).
    last_change_ms: u64,
    /// Why it is ejected (while it is).
    why: String,
}

/// What the daemon makes of an ejection the kernel made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelVerdict {
    /// Confirmed: out of the slot tables for as long as the policy says.
    Confirmed(Ejection),
    /// Ejected here already: nothing to do.
    AlreadyOut,
    /// Not confirmed (why): the kernel takes it back.
    Lift(String),
}

/// Outlier detection over every destination that has it. Times are
/// milliseconds on any monotonic clock.
#[derive(Debug, Default)]
pub struct Ejector {
    plans: Vec<OutlierPlan>,
    eps: HashMap<SocketAddr, EpOutlier>,
}

/// Why an endpoint was ejected, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub endpoint: SocketAddr,
    pub destination: String,
    pub reason: String,
    pub for_ms: u64,
}

impl Ejector {
    /// New plans; state of endpoints still watched is kept.
    pub fn set_plans(&mut self, plans: &[OutlierPlan]) {
        self.plans = plans.to_vec();
        let watched: BTreeSet<SocketAddr> = plans
            .iter()
            .flat_map(|p| p.endpoints.iter().copied())
            .collect();
        self.eps.retain(|ep, _| watched.contains(ep));
    }

    /// The plan that decides for `ep`: the first (in label order) that
    /// watches it.
    fn plan_of(&self, ep: &SocketAddr) -> Option<&OutlierPlan> {
        self.plans.iter().find(|p| p.endpoints.contains(ep))
    }

    fn ejected_in(&self, p: &OutlierPlan) -> usize {
        p.endpoints
            .iter()
            .filter(|e| {
                self.eps
                    .get(e)
                    .is_some_and(|s| s.ejected_until_ms.is_some())
            })
            .count()
    }

    /// Count one outcome; `Some` when it ejects the endpoint.
    pub fn record(&mut self, ep: SocketAddr, o: Outcome, now_ms: u64) -> Option<Ejection> {
        // The first destination (in label order) that watches `ep` decides
        // the thresholds; every destination holding it must have room.
        let plan = self.plan_of(&ep)?.clone();
        let s = self.eps.entry(ep).or_default();
        match o {
            Outcome::Ok => {
                s.errors = 0;
                s.gateway_errors = 0;
                return None;
            }
            Outcome::Status5xx(code) => {
                s.errors += 1;
                if (502..=504).contains(&code) {
                    s.gateway_errors += 1;
                } else {
                    s.gateway_errors = 0;
                }
            }
            Outcome::ConnectFailure | Outcome::Reset => {
                s.errors += 1;
                s.gateway_errors += 1;
            }
        }
        if s.ejected_until_ms.is_some() {
            return None;
        }
        let reason = if plan.consecutive_gateway_errors > 0
            && s.gateway_errors >= plan.consecutive_gateway_errors
        {
            format!("{} gateway errors in a row", s.gateway_errors)
        } else if plan.consecutive_errors > 0 && s.errors >= plan.consecutive_errors {
            format!("{} errors in a row", s.errors)
        } else {
            return None;
        };
        self.eject(ep, &plan, reason, now_ms)
    }

    /// The kernel ejected `ep` (`reason`: what it saw): confirm it as if
    /// the proxy had seen the failures, or say why not.
    pub fn kernel_ejected(&mut self, ep: SocketAddr, reason: String, now_ms: u64) -> KernelVerdict {
        let Some(plan) = self.plan_of(&ep).cloned() else {
            return KernelVerdict::Lift("no OutlierDetectionPolicy watches it any more".into());
        };
        let s = self.eps.entry(ep).or_default();
        if s.ejected_until_ms.is_some() {
            return KernelVerdict::AlreadyOut;
        }
        match self.eject(ep, &plan, reason, now_ms) {
            Some(e) => KernelVerdict::Confirmed(e),
            None => KernelVerdict::Lift(format!(
                "maxEjectionPercent {}% of {} reached",
                plan.max_ejection_percent, plan.destination
            )),
        }
    }

    /// Eject `ep` if every destination holding it has room; `Some` when it did.
    fn eject(
        &mut self,
        ep: SocketAddr,
        plan: &OutlierPlan,
        reason: String,
        now_ms: u64,
    ) -> Option<Ejection> {
        // maxEjectionPercent, as Envoy checks it: eject while the ejected
        // share is below the limit (so one may always go, if the limit > 0).
        let room = self
            .plans
            .iter()
            .filter(|p| p.endpoints.contains(&ep))
            .all(|p| {
                100 * self.ejected_in(p) < p.max_ejection_percent as usize * p.endpoints.len()
            });
        let s = self.eps.entry(ep).or_default();
        if !room {
            return None;
        }
        s.ejections += 1;
        s.last_change_ms = now_ms;
        let for_ms = (plan.base_ejection_ms * u64::from(s.ejections))
            .min(MAX_EJECTION_MS.max(plan.base_ejection_ms));
        s.ejected_until_ms = Some(now_ms + for_ms);
        s.why = format!("ejected by {} for {} ms: {reason}", plan.policy, for_ms);
        s.errors = 0;
        s.gateway_errors = 0;
        Some(Ejection {
            endpoint: ep,
            destination: plan.destination.clone(),
            reason,
            for_ms,
        })
    }

    /// Lift ejections that have run their time; decay the back-off of
    /// endpoints that stayed in for a whole base ejection time. Returns the
    /// endpoints brought back.
    pub fn sweep(&mut self, now_ms: u64) -> Vec<SocketAddr> {
        let base = |ep: &SocketAddr| self.plan_of(ep).map_or(0, |p| p.base_ejection_ms);
        let mut back = Vec::new();
        let bases: HashMap<SocketAddr, u64> = self.eps.keys().map(|e| (*e, base(e))).collect();
        for (ep, s) in self.eps.iter_mut() {
            match s.ejected_until_ms {
                Some(until) if now_ms >= until => {
                    s.ejected_until_ms = None;
                    s.last_change_ms = now_ms;
                    back.push(*ep);
                }
                None if s.ejections > 0 && now_ms >= s.last_change_ms + bases[ep] => {
                    s.ejections -= 1;
                    s.last_change_ms = now_ms;
                }
                _ => {}
            }
        }
        back.sort();
        back
    }

    pub fn ejected(&self) -> BTreeSet<SocketAddr> {
        self.ejected_why().into_keys().collect()
    }

    /// The endpoints ejected now, and why.
    pub fn ejected_why(&self) -> BTreeMap<SocketAddr, String> {
        self.eps
            .iter()
            .filter(|(_, s)| s.ejected_until_ms.is_some())
            .map(|(e, s)| (*e, s.why.clone()))
            .collect()
    }

    /// How often to sweep: the shortest interval of any plan.
    pub fn interval(&self) -> Option<Duration> {
        self.plans
            .iter()
            .map(|p| p.interval_ms)
            .min()
            .map(Duration::from_millis)
    }
}

/// Why a check did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The endpoint failed the check (what failed, for the log).
    Failed(String),
    /// This host could not run the check (out of file descriptors, buffers
    /// or memory): says nothing about the endpoint, and is not counted.
    Local(String),
}

/// Run one check.
pub async fn probe(socks: &Sockets, c: &HealthCheckPlan) -> Result<(), ProbeError> {
    let timeout = Duration::from_millis(c.timeout_ms);
    let attempt = async {
        let s = socks.connect(c.endpoint).await.map_err(|e| {
            if crate::limits::is_local_errno(&e) {
                ProbeError::Local(format!("connect: {e}"))
            } else {
                ProbeError::Failed(format!("connect: {e}"))
            }
        })?;
        let CheckKind::Http {
            path,
            host,
            expected,
        } = &c.kind
        else {
            return Ok(());
        };
        let host = host.clone().unwrap_or_else(|| c.endpoint.to_string());
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "routerd-health-check")
            .header(http::header::CONNECTION, "close")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| ProbeError::Failed(format!("the request for {path}: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .map_err(|e| ProbeError::Failed(format!("HTTP handshake: {e}")))?;
        // The connection is driven here, not spawned: it goes with this
        // check (once the status is known, or at the timeout). If it ends
        // first, the answer it read is already with `answer`.
        let mut answer = std::pin::pin!(sender.send_request(req));
        let answer = tokio::select! {
            biased;
            r = &mut answer => r,
            _ = conn => answer.await,
        };
        let status = answer
            .map_err(|e| ProbeError::Failed(format!("GET {path}: {e}")))?
            .status()
            .as_u16();
        if expected.iter().any(|(a, b)| (*a..*b).contains(&status)) {
            Ok(())
        } else {
            Err(ProbeError::Failed(format!("GET {path} answered {status}")))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Failed(format!(
            "no answer within {} ms",
            c.timeout_ms
        ))),
    }
}

/// What to watch (from the plan in service).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Watched {
    pub checks: Vec<HealthCheckPlan>,
    pub outliers: Vec<OutlierPlan>,
}

/// Drive the checks and the ejector; publish the endpoints to avoid.
pub async fn run(
    socks: Sockets,
    mut watched: watch::Receiver<Watched>,
    mut outcomes: mpsc::UnboundedReceiver<(SocketAddr, Outcome)>,
    mut kernel: Option<KernelSignals>,
    avoid: watch::Sender<BTreeSet<SocketAddr>>,
    state_dir: Option<std::path::PathBuf>,
    telemetry: Arc<Telemetry>,
) {
    let ejected = |source: &str| {
        telemetry
            .ejections
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .inc();
    };
    // The plan in service when we start counts as a change.
    watched.mark_changed();
    let t0 = Instant::now();
    let now_ms = move || t0.elapsed().as_millis() as u64;
    let (results_tx, mut results) =
        mpsc::unbounded_channel::<(SocketAddr, Result<(), ProbeError>)>();
    let mut tasks: BTreeMap<SocketAddr, (HealthCheckPlan, JoinHandle<()>)> = BTreeMap::new();
    let mut active: BTreeMap<SocketAddr, Active> = BTreeMap::new();
    let mut ejector = Ejector::default();
    let mut sweep = tokio::time::interval(Duration::from_secs(3600));
    let mut recorded = crate::state::Avoided::new();
    let mut out_series: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut publish = |active: &BTreeMap<SocketAddr, Active>, ejector: &Ejector| {
        let mut why = ejector.ejected_why();
        for (e, a) in active.iter().filter(|(_, a)| !a.healthy) {
            why.entry(*e).or_insert_with(|| a.why.clone());
        }
        let set: BTreeSet<SocketAddr> = why.keys().copied().collect();
        telemetry.avoided_endpoints.set(set.len() as i64);
        // One series per endpoint out of service, by who took it out.
        let ejected = ejector.ejected_why();
        let now_out: BTreeMap<SocketAddr, &str> = set
            .iter()
            .map(|e| {
                (
                    *e,
                    if ejected.contains_key(e) {
                        "ejected"
                    } else {
                        "health_check"
                    },
                )
            })
            .collect();
        for (e, by) in &out_series {
            if now_out.get(e).copied() != Some(by.as_str()) {
                telemetry.out_of_service.remove(&OutLabels {
                    endpoint: e.to_string(),
                    by: by.to_string(),
                });
            }
        }
        for (e, by) in &now_out {
            telemetry
                .out_of_service
                .get_or_create(&OutLabels {
                    endpoint: e.to_string(),
                    by: by.to_string(),
                })
                .set(1);
        }
        out_series = now_out
            .into_iter()
            .map(|(e, b)| (e, b.to_string()))
            .collect();
        avoid.send_if_modified(|cur| {
            let changed = *cur != set;
            *cur = set;
            changed
        });
        if let Some(dir) = &state_dir
            && why != recorded
        {
            crate::state::write_health(dir, &why);
            recorded = why;
        }
    };
    loop {
        tokio::select! {
            changed = watched.changed() => {
                if changed.is_err() {
                    break;
                }
                let w = watched.borrow_and_update().clone();
                let want: BTreeMap<SocketAddr, HealthCheckPlan> =
                    w.checks.iter().map(|c| (c.endpoint, c.clone())).collect();
                tasks.retain(|ep, (plan, handle)| {
                    let keep = want.get(ep) == Some(plan);
                    if !keep {
                        handle.abort();
                    }
                    keep
                });
                active.retain(|ep, _| want.contains_key(ep));
                for (ep, c) in want {
                    if tasks.contains_key(&ep) {
                        continue;
                    }
                    let (socks, tx, plan) = (socks.clone(), results_tx.clone(), c.clone());
                    let handle = tokio::spawn(async move {
                        // Spread the first checks over the interval.
                        let jitter = fastrand::u64(0..plan.interval_ms.max(1));
                        tokio::time::sleep(Duration::from_millis(jitter.min(plan.interval_ms / 4))).await;
                        let mut tick = tokio::time::interval(Duration::from_millis(plan.interval_ms));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tick.tick().await;
                            let r = probe(&socks, &plan).await;
                            if tx.send((plan.endpoint, r)).is_err() {
                                return;
                            }
                        }
                    });
                    active.entry(ep).or_default();
                    tasks.insert(ep, (c, handle));
                }
                ejector.set_plans(&w.outliers);
                if let Some(i) = ejector.interval() {
                    sweep = tokio::time::interval_at(tokio::time::Instant::now() + i, i);
                }
                publish(&active, &ejector);
            }
            Some((ep, r)) = results.recv() => {
                let Some((plan, _)) = tasks.get(&ep) else { continue };
                let r = match r {
                    Err(ProbeError::Local(why)) => {
                        tracing::debug!(endpoint = %ep, "health check not run: {why}");
                        continue;
                    }
                    Err(ProbeError::Failed(why)) => Err(why),
                    Ok(()) => Ok(()),
                };
                let a = active.entry(ep).or_default();
                if a.observe(r.is_ok(), plan.unhealthy_threshold, plan.healthy_threshold) {
                    if a.healthy {
                        Event::EndpointHealthy { endpoint: ep, policy: plan.policy.to_string(), threshold: plan.healthy_threshold }.emit();
                    } else {
                        let last_error = r.err().unwrap_or_default();
                        a.why = format!("{} checks in a row failed ({}): {last_error}", plan.unhealthy_threshold, plan.policy);
                        Event::EndpointUnhealthy { endpoint: ep, policy: plan.policy.to_string(), threshold: plan.unhealthy_threshold, last_error }.emit();
                    }
                    publish(&active, &ejector);
                }
            }
            batch = kernel_ejections(&mut kernel) => {
                let mut changed = false;
                for ev in batch {
                    let ep = SocketAddr::new(words_ip(ev.addr, ev.family), port_host(ev.port));
                    let why = kernel_reason(ev.reason, ev.fails);
                    match ejector.kernel_ejected(ep, why, now_ms()) {
                        KernelVerdict::Confirmed(e) => {
                            ejected("kernel");
                            Event::EndpointEjected { endpoint: e.endpoint, destination: e.destination.to_string(), for_ms: e.for_ms, why: e.reason.to_string() }.emit();
                            changed = true;
                        }
                        KernelVerdict::AlreadyOut => {}
                        KernelVerdict::Lift(why_not) => {
                            tracing::info!(endpoint = %ep, "the kernel's ejection is lifted: {why_not}");
                            if let Some(k) = kernel.as_mut()
                                && let Err(e) = k.lift(ev.backend_id)
                            {
                                tracing::warn!(endpoint = %ep, "could not lift the kernel's ejection: {e:#}");
                            }
                        }
                    }
                }
                if changed {
                    publish(&active, &ejector);
                }
            }
            Some((ep, o)) = outcomes.recv() => {
                if let Some(e) = ejector.record(ep, o, now_ms()) {
                    ejected("proxy");
                    Event::EndpointEjected { endpoint: e.endpoint, destination: e.destination.to_string(), for_ms: e.for_ms, why: e.reason.to_string() }.emit();
                    publish(&active, &ejector);
                }
            }
            _ = sweep.tick() => {
                let back = ejector.sweep(now_ms());
                if !back.is_empty() {
                    for ep in &back {
                        Event::EjectionOver { endpoint: *ep }.emit();
                    }
                    publish(&active, &ejector);
                }
            }
        }
    }
    for (_, (_, h)) in tasks {
        h.abort();
    }
}

/// The next ejections the kernel made; never, without a kernel.
async fn kernel_ejections(k: &mut Option<KernelSignals>) -> Vec<router_common::KernelEjection> {
    match k {
        Some(k) => k.next().await,
        None => std::future::pending().await,
    }
}

/// Why the kernel ejected an endpoint, for the log and `explain`.
pub fn kernel_reason(reason: u8, fails: u32) -> String {
    match reason {
        router_common::FAIL_RESET => {
            format!("kernel: {fails} connection attempts in a row answered with a reset")
        }
        router_common::FAIL_SYN_TIMEOUT => {
            format!("kernel: {fails} connection attempts in a row without an answer to the SYN")
        }
        _ => format!("kernel: {fails} failed connection attempts in a row"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    /// The health task hears every failure and the success that ends a
    /// run of them; successes after successes are only counted.
    #[test]
    fn observations_send_what_outlier_detection_needs() {
        let obs = Observations::default();
        let mut rx = obs.subscribe().expect("the first subscriber");
        let mut heard = || std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<_>>();
        obs.record(ep(1), Outcome::Ok);
        assert_eq!(heard(), vec![]);
        obs.record(ep(1), Outcome::Status5xx(503));
        obs.record(ep(2), Outcome::Ok);
        obs.record(ep(1), Outcome::Reset);
        obs.record(ep(1), Outcome::Ok);
        obs.record(ep(1), Outcome::Ok);
        assert_eq!(
            heard(),
            vec![
                (ep(1), Outcome::Status5xx(503)),
                (ep(1), Outcome::Reset),
                (ep(1), Outcome::Ok),
            ]
        );
        let s = obs.snapshot();
        assert_eq!((s[&ep(1)].requests, s[&ep(1)].consecutive_errors), (5, 0));
        assert_eq!(s[&ep(2)].requests, 1);
    }

    fn od(n: u8, errors: u32, gw: u32, max_pct: u32) -> OutlierPlan {
        OutlierPlan {
            destination: "d".into(),
            policy: "OutlierDetectionPolicy t/od".into(),
            endpoints: (1..=n).map(ep).collect(),
            consecutive_errors: errors,
            consecutive_gateway_errors: gw,
            interval_ms: 1000,
            base_ejection_ms: 10_000,
            max_ejection_percent: max_pct,
        }
    }

    #[test]
    fn thresholds_flip_state_only_after_streaks() {
        let mut a = Active::default();
        assert!(a.healthy);
        assert!(!a.observe(false, 3, 2));
        assert!(!a.observe(false, 3, 2));
        assert!(
            !a.observe(true, 3, 2),
            "a success resets the failure streak"
        );
        assert!(!a.observe(false, 3, 2));
        assert!(!a.observe(false, 3, 2));
        assert!(a.observe(false, 3, 2));
        assert!(!a.healthy);
        assert!(!a.observe(true, 3, 2));
        assert!(a.observe(true, 3, 2));
        assert!(a.healthy);
    }

    #[test]
    fn consecutive_errors_eject_and_success_resets_the_count() {
        let mut e = Ejector::default();
        e.set_plans(&[od(2, 3, 0, 100)]);
        assert!(e.record(ep(1), Outcome::Status5xx(500), 0).is_none());
        assert!(e.record(ep(1), Outcome::Status5xx(500), 0).is_none());
        assert!(e.record(ep(1), Outcome::Ok, 0).is_none());
        assert!(e.record(ep(1), Outcome::Status5xx(500), 0).is_none());
        assert!(e.record(ep(1), Outcome::ConnectFailure, 0).is_none());
        let j = e.record(ep(1), Outcome::Reset, 5).unwrap();
        assert_eq!((j.endpoint, j.for_ms), (ep(1), 10_000));
        assert_eq!(e.ejected(), BTreeSet::from([ep(1)]));
        // Lifted only once the time is up.
        assert!(e.sweep(10_004).is_empty());
        assert_eq!(e.sweep(10_005), vec![ep(1)]);
        assert!(e.ejected().is_empty());
    }

    #[test]
    fn gateway_errors_count_only_502_to_504_and_connect_failures() {
        let mut e = Ejector::default();
        e.set_plans(&[od(2, 0, 2, 100)]);
        assert!(e.record(ep(1), Outcome::Status5xx(503), 0).is_none());
        assert!(
            e.record(ep(1), Outcome::Status5xx(500), 0).is_none(),
            "500 breaks the streak"
        );
        assert!(e.record(ep(1), Outcome::Status5xx(502), 0).is_none());
        assert!(e.record(ep(1), Outcome::ConnectFailure, 0).is_some());
    }

    #[test]
    fn repeated_ejections_back_off_and_the_multiplier_decays() {
        let mut e = Ejector::default();
        e.set_plans(&[od(2, 1, 0, 100)]);
        assert_eq!(e.record(ep(1), Outcome::Reset, 0).unwrap().for_ms, 10_000);
        assert_eq!(e.sweep(10_000), vec![ep(1)]);
        assert_eq!(
            e.record(ep(1), Outcome::Reset, 10_001).unwrap().for_ms,
            20_000
        );
        assert_eq!(e.sweep(30_001), vec![ep(1)]);
        // Two base times in service: the multiplier drops twice.
        e.sweep(40_001);
        e.sweep(50_001);
        assert_eq!(
            e.record(ep(1), Outcome::Reset, 50_002).unwrap().for_ms,
            10_000
        );
    }

    #[test]
    fn the_kernels_ejections_are_confirmed_with_back_off_or_lifted() {
        let mut e = Ejector::default();
        e.set_plans(&[od(4, 5, 0, 50)]);
        // Confirmed: the base ejection time, the reason kept for explain.
        match e.kernel_ejected(ep(1), "kernel: 3 resets".into(), 0) {
            KernelVerdict::Confirmed(j) => {
                assert_eq!((j.endpoint, j.for_ms), (ep(1), 10_000));
                assert_eq!(j.reason, "kernel: 3 resets");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.ejected_why()[&ep(1)],
            "ejected by OutlierDetectionPolicy t/od for 10000 ms: kernel: 3 resets"
        );
        // Told again while out: nothing to do.
        assert_eq!(
            e.kernel_ejected(ep(1), "again".into(), 1),
            KernelVerdict::AlreadyOut
        );
        // The proxy's ejection and the kernel's share maxEjectionPercent.
        assert!(e.record(ep(2), Outcome::Reset, 0).is_none());
        assert!(
            matches!(
                e.kernel_ejected(ep(2), "k".into(), 2),
                KernelVerdict::Confirmed(_)
            ),
            "25% < 50%: a second may go"
        );
        assert!(
            matches!(e.kernel_ejected(ep(3), "k".into(), 3), KernelVerdict::Lift(w) if w.contains("maxEjectionPercent 50%")),
            "50% is not below 50%: the kernel lifts it"
        );
        // No policy watches an endpoint: lifted.
        assert!(matches!(
            e.kernel_ejected(ep(9), "k".into(), 4),
            KernelVerdict::Lift(_)
        ));
        // Back after the ejection time; a second ejection lasts twice as long.
        assert_eq!(e.sweep(10_000), vec![ep(1)]);
        match e.kernel_ejected(ep(1), "k".into(), 10_001) {
            KernelVerdict::Confirmed(j) => assert_eq!(j.for_ms, 20_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn max_ejection_percent_limits_but_one_may_always_go() {
        let mut e = Ejector::default();
        e.set_plans(&[od(4, 1, 0, 10)]);
        assert!(
            e.record(ep(1), Outcome::Reset, 0).is_some(),
            "0% < 10%: one goes"
        );
        assert!(
            e.record(ep(2), Outcome::Reset, 0).is_none(),
            "25% is not below 10%"
        );
        let mut e = Ejector::default();
        e.set_plans(&[od(4, 1, 0, 50)]);
        assert!(e.record(ep(1), Outcome::Reset, 0).is_some());
        assert!(e.record(ep(2), Outcome::Reset, 0).is_some());
        assert!(e.record(ep(3), Outcome::Reset, 0).is_none());
        let mut e = Ejector::default();
        e.set_plans(&[od(4, 1, 0, 0)]);
        assert!(
            e.record(ep(1), Outcome::Reset, 0).is_none(),
            "0% ejects nothing"
        );
    }

    #[test]
    fn endpoints_not_watched_are_ignored_and_forgotten() {
        let mut e = Ejector::default();
        e.set_plans(&[od(1, 1, 0, 100)]);
        assert!(e.record(ep(9), Outcome::Reset, 0).is_none());
        assert!(e.record(ep(1), Outcome::Reset, 0).is_some());
        e.set_plans(&[]);
        assert!(e.ejected().is_empty());
    }
}
