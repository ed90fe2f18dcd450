//! The daemon's state directory (`/run/routerd` by default, root only: the
//! plan names every endpoint): its pid, the last applied plan (for
//! `routerd inspect`, and for a restart whose config is bad), and why each
//! endpoint it avoids is out (for `explain` and `inspect`).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::plan::Plan;

/// Files the daemon keeps in its state directory.
pub fn plan_file(state_dir: &Path) -> PathBuf {
    state_dir.join("plan.json")
}
pub fn pid_file(state_dir: &Path) -> PathBuf {
    state_dir.join("routerd.pid")
}
pub fn health_file(state_dir: &Path) -> PathBuf {
    state_dir.join("health.json")
}

pub fn store_file(state_dir: &Path) -> PathBuf {
    state_dir.join("store.json")
}

/// Where a node that follows etcd stands (`routerd inspect` shows it).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreStatus {
    /// `etcd://members/prefix`.
    pub store: String,
    /// The revision of the config this node serves.
    pub served_revision: i64,
    /// The latest revision the store reported.
    pub store_revision: i64,
    pub connected: bool,
    /// The last failure, while not connected.
    pub error: Option<String>,
    /// Lists of the whole prefix (at start, and after each compaction
    /// past this node's revision).
    pub lists: u64,
    /// Objects the node holds from the store.
    pub objects: usize,
    /// Keys received and not applied yet (a change being applied, or one
    /// the node refused: its errors are in the log).
    #[serde(default)]
    pub pending: usize,
    /// Started from the local snapshot, not yet caught up with etcd.
    pub from_snapshot: bool,
}

/// Record where the node stands against etcd (best effort).
pub fn write_store_status(state_dir: &Path, s: &StoreStatus) {
    if let Err(e) = write_json(state_dir, &store_file(state_dir), s) {
        tracing::warn!(
            "could not record the store status in {}: {e:#}",
            store_file(state_dir).display()
        );
    }
}

pub fn read_store_status(state_dir: &Path) -> Option<StoreStatus> {
    let text = std::fs::read_to_string(store_file(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Why the daemon's health task keeps each endpoint it avoids out of the
/// slot tables (an active check, an ejection by the proxy or the kernel).
pub type Avoided = BTreeMap<SocketAddr, String>;

/// Record the endpoints avoided and why (best effort, like the plan).
pub fn write_health(state_dir: &Path, avoided: &Avoided) {
    if let Err(e) = write_json(state_dir, &health_file(state_dir), avoided) {
        tracing::warn!(
            "could not record why endpoints are out in {}: {e:#}",
            health_file(state_dir).display()
        );
    }
}

/// What the running daemon last recorded with [`write_health`].
pub fn read_health(state_dir: &Path) -> Avoided {
    std::fs::read(health_file(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Write `value` as JSON to `path` in `state_dir`: a temporary file, then a
/// rename (a reader sees the old file or the new one, whole).
fn write_json(state_dir: &Path, path: &Path, value: &impl serde::Serialize) -> Result<()> {
    state_dir_ready(state_dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Streamed: at 10,000 hosts the plan is tens of MiB of JSON.
    let written = std::fs::File::create(&tmp)
        .map_err(anyhow::Error::from)
        .and_then(|f| {
            let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
            serde_json::to_writer(&mut w, value)?;
            std::io::Write::flush(&mut w)?;
            Ok(())
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The last applied plan recorded in `state_dir`, if there is a readable one.
pub fn read_plan(state_dir: &Path) -> Option<Plan> {
    serde_json::from_slice(&std::fs::read(plan_file(state_dir)).ok()?).ok()
}

/// The state directory, root only (the plan names every endpoint).
pub fn state_dir_ready(state_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to root", state_dir.display()))
}

/// Record the applied plan for `inspect` and for a restart with a bad
/// config. Best effort: a full disk must not stop the daemon from applying
/// plans (the maps are what serves).
pub fn write_state(state_dir: &Path, plan: &Plan) {
    if let Err(e) = write_json(state_dir, &plan_file(state_dir), plan) {
        tracing::warn!(
            "could not record the applied plan in {}: {e:#}; the plan is applied and serving, \
             but `routerd inspect` shows the previous one (free space there)",
            plan_file(state_dir).display()
        );
    }
}

/// The state file is rewritten at most this often.
pub const STATE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the applied plan in the background (serialising 10,000 hosts
/// takes longer than applying a change), the latest one when several queue
/// up.
pub struct StateWriter {
    tx: Option<std::sync::mpsc::Sender<Plan>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StateWriter {
    pub fn spawn(state_dir: PathBuf) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Plan>();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || {
                while let Ok(mut plan) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        plan = newer;
                    }
                    write_state(&state_dir, &plan);
                    // Under churn, one write a second (of the latest plan)
                    // rather than one per apply: at 10,000 hosts a write
                    // costs more than an apply.
                    std::thread::sleep(STATE_INTERVAL);
                }
            })?;
        Ok(StateWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Record `plan` (soon).
    pub fn send(&self, plan: Plan) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(plan);
        }
    }

    /// Write what is queued, then stop.
    pub fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
