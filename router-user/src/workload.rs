//! Workloads on this node: the node-local hand-off that tells routerd each
//! local pod's network namespace and cgroup, the way a CNI plugin hands a
//! pod to ztunnel.
//!
//! The hand-off is a directory (`<state-dir>/workloads` by default,
//! `routerd run --workloads-dir`): one JSON file per workload, named
//! `<namespace>_<name>.json` (`_` is in neither a namespace nor a pod
//! name), written whole (a temporary file, then a rename: what `routerd
//! workload add` does, and what a CNI-side script should do). The daemon
//! watches the directory: a file that appears is served (DNS and L7
//! listener sockets opened inside the pod's namespace, the kernel told
//! where they are by the namespace's cookie), one that goes away is
//! forgotten (its listeners closed). Files whose names start with `.` or
//! end in `.tmp` are someone's writes in progress and are skipped.
//!
//! Whoever can write this directory makes a root daemon open sockets in a
//! namespace of their choice: like the config, it must be root's and
//! writable by nobody else (checked on every read).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// One workload (a pod): who it is, and where it lives on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The pod's Kubernetes namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Its network namespace: a path such as `/var/run/netns/<name>` or
    /// `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    /// Its cgroup v2 directory (informational: the programs already apply
    /// to it when it is under the attached cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// `namespace/name`, how logs and events name a workload.
pub type Key = String;

/// A DNS label (RFC 1123), as Kubernetes namespaces are.
fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Workload {
    pub fn key(&self) -> Key {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The hand-off file's name.
    pub fn file_name(namespace: &str, name: &str) -> String {
        format!("{namespace}_{name}.json")
    }

    /// What is wrong with the record, if anything (names as Kubernetes
    /// spells them; absolute paths).
    pub fn problem(&self) -> Option<String> {
        if !label_ok(&self.namespace) {
            return Some(format!(
                "namespace `{}` is not a DNS label (lower-case letters, digits and `-`, at most \
                 63)",
                self.namespace
            ));
        }
        // Pod names are DNS subdomains: labels joined by dots.
        if self.name.len() > 253 || !self.name.split('.').all(label_ok) {
            return Some(format!(
                "name `{}` is not a DNS subdomain (lower-case labels joined by `.`)",
                self.name
            ));
        }
        if !self.netns.is_absolute() {
            return Some(format!(
                "netns `{}` is not an absolute path (e.g. /var/run/netns/NAME or \
                 /proc/PID/ns/net)",
                self.netns.display()
            ));
        }
        if let Some(c) = &self.cgroup
            && !c.is_absolute()
        {
            return Some(format!("cgroup `{}` is not an absolute path", c.display()));
        }
        None
    }
}

/// Is `file_name` a finished hand-off record (not a write in progress)?
fn is_record(file_name: &str) -> bool {
    !file_name.starts_with('.') && file_name.ends_with(".json")
}

/// Every record in `dir` by key, and the files that could not be used
/// (each with what is wrong and what to do). A missing directory holds no
/// workloads. With `trusted_only`, a directory or file that someone other
/// than root could write is refused whole.
pub fn read_dir(dir: &Path, trusted_only: bool) -> (BTreeMap<Key, Workload>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, problems),
        Err(e) => {
            problems.push(format!("{}: cannot read the directory: {e}", dir.display()));
            return (out, problems);
        }
    };
    if trusted_only && let Some(why) = untrusted(dir) {
        problems.push(why);
        return (out, problems);
    }
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_record)
        })
        .collect();
    files.sort();
    for f in files {
        match read_one(&f, trusted_only) {
            Ok(w) => {
                let expected = Workload::file_name(&w.namespace, &w.name);
                if f.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
                    problems.push(format!(
                        "{}: names workload {} but the file for it is {expected}: rename the \
                         file (one file per workload, named after it)",
                        f.display(),
                        w.key()
                    ));
                    continue;
                }
                out.insert(w.key(), w);
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    (out, problems)
}

fn untrusted(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(p).ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    crate::limits::untrusted(md.uid(), md.mode(), me).map(|why| {
        format!(
            "{}: refused, {why}. Whoever can write the workloads directory makes routerd open \
             sockets in a namespace of their choice: `chown root` it and `chmod go-w` it (or \
             pass --allow-untrusted-config)",
            p.display()
        )
    })
}

fn read_one(f: &Path, trusted_only: bool) -> Result<Workload> {
    if trusted_only && let Some(why) = untrusted(f) {
        bail!("{why}");
    }
    let md = std::fs::symlink_metadata(f).with_context(|| format!("{}", f.display()))?;
    if !md.is_file() || md.len() > 64 * 1024 {
        bail!(
            "{}: expected a regular JSON file of at most 64 KiB; remove it",
            f.display()
        );
    }
    let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
    let w: Workload = serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: {e}: expected {{\"namespace\": ..., \"name\": ..., \"netns\": \
             \"/var/run/netns/...\", \"cgroup\": \"/sys/fs/cgroup/...\"}}; fix or remove the file",
            f.display(),
            e.line(),
            e.column()
        )
    })?;
    if let Some(p) = w.problem() {
        bail!("{}: workload {}: {p}", f.display(), w.key());
    }
    Ok(w)
}

/// Write `w`'s record into `dir` (created root-only if missing): a
/// temporary file, then a rename, so the daemon never reads half of it.
pub fn add(dir: &Path, w: &Workload) -> Result<PathBuf> {
    if let Some(p) = w.problem() {
        bail!("workload {}: {p}", w.key());
    }
    if !w.netns.exists() {
        bail!(
            "workload {}: network namespace {} does not exist",
            w.key(),
            w.netns.display()
        );
    }
    ensure_dir(dir)?;
    let path = dir.join(Workload::file_name(&w.namespace, &w.name));
    let tmp = dir.join(format!(
        ".{}.tmp",
        Workload::file_name(&w.namespace, &w.name)
    ));
    std::fs::write(&tmp, serde_json::to_vec_pretty(w)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

/// Remove a workload's record; whether there was one.
pub fn remove(dir: &Path, namespace: &str, name: &str) -> Result<bool> {
    let path = dir.join(Workload::file_name(namespace, name));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The hand-off directory, root only.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// What the daemon serves for one workload, as it records it in
/// `<state-dir>/workloads.json` for `routerd workload list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Served {
    pub workload: Workload,
    /// The namespace's cookie (what the kernel programs key its listeners
    /// by); 0 when it could not be served.
    pub netns_cookie: u64,
    /// Its listener addresses (`dns:127.0.0.153:53`, `proxy:127.0.0.1:1000`).
    pub listeners: Vec<String>,
    /// Why it is not served, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn status_file(state_dir: &Path) -> PathBuf {
    state_dir.join("workloads.json")
}

/// The daemon's record of what it serves (empty when none runs).
pub fn read_status(state_dir: &Path) -> Vec<Served> {
    std::fs::read(status_file(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Record what is served (best effort, a temporary file then a rename).
pub fn write_status(state_dir: &Path, served: &[Served]) {
    let path = status_file(state_dir);
    let tmp = state_dir.join(".workloads.json.tmp");
    let r = serde_json::to_vec_pretty(served)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = r {
        tracing::warn!(
            "could not record the workloads served in {}: {e}",
            path.display()
        );
    }
}

/// `routerd workload list`: the records, and what the daemon made of each.
pub fn render(records: &BTreeMap<Key, Workload>, problems: &[String], served: &[Served]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if records.is_empty() {
        s.push_str("no workloads\n");
    }
    for (key, w) in records {
        let status = match served.iter().find(|x| x.workload == *w) {
            Some(Served { error: Some(e), .. }) => format!("not served: {e}"),
            Some(x) => format!(
                "served (netns cookie {}; {})",
                x.netns_cookie,
                x.listeners.join(", ")
            ),
            None => "not served (no routerd runs with this state directory, or it has not read \
                     the record yet)"
                .to_string(),
        };
        let _ = writeln!(s, "{key}  netns {}  {status}", w.netns.display());
    }
    for p in problems {
        let _ = writeln!(s, "problem: {p}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ns: &str, name: &str) -> Workload {
        Workload {
            namespace: ns.into(),
            name: name.into(),
            netns: "/var/run/netns/x".into(),
            cgroup: None,
        }
    }

    #[test]
    fn names_are_kubernetes_names() {
        assert_eq!(w("default", "web-1").problem(), None);
        assert_eq!(w("default", "web.v1").problem(), None);
        assert!(w("Default", "web").problem().unwrap().contains("namespace"));
        assert!(w("a_b", "web").problem().is_some());
        assert!(w("default", "web_1").problem().unwrap().contains("name"));
        assert!(w("default", "").problem().is_some());
        let mut rel = w("default", "web");
        rel.netns = "netns/x".into();
        assert!(rel.problem().unwrap().contains("absolute"));
    }

    #[test]
    fn records_round_trip_and_bad_ones_name_their_file() {
        let dir = std::env::temp_dir().join(format!("rt-wl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // /proc/self/ns/net always exists.
        let mut a = w("default", "web-1");
        a.netns = "/proc/self/ns/net".into();
        add(&dir, &a).unwrap();
        std::fs::write(dir.join("default_bad.json"), b"{\"namespace\": 3}").unwrap();
        std::fs::write(dir.join(".default_x.json.tmp"), b"half").unwrap();
        let mut other = a.clone();
        other.name = "other".into();
        std::fs::write(
            dir.join("default_wrong.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        let (got, problems) = read_dir(&dir, false);
        assert_eq!(got.len(), 1, "{problems:?}");
        assert_eq!(got["default/web-1"], a);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("default_bad.json:1:")));
        assert!(problems.iter().any(|p| p.contains("rename the file")));
        assert!(remove(&dir, "default", "web-1").unwrap());
        assert!(!remove(&dir, "default", "web-1").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
