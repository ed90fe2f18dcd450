//! etcd as the config's source of truth: the client side of
//! [`crate::config::etcd`] (which holds the key layout and turns keys into
//! store changes). Three jobs:
//!
//! - [`follow`]: a node's task. List the layout's keys, then watch them from
//!   the next revision; after a disconnect, watch again from the last
//!   revision seen; when that revision was compacted, list again (the
//!   source diffs the list against what it accepted: no flush). Every 500 ms
//!   it asks the store for a progress notice, so the node knows how far
//!   behind it is.
//! - [`publish`]: validate a directory with what the store holds of the
//!   other scopes, exactly as `routerd check` validates, then write the
//!   difference in one transaction that also bumps the publish marker, and
//!   only if no key of the layout changed since the revision it read
//!   (two publishers never interleave).
//! - The node's local snapshot ([`Snapshot`]): the accepted keys in 256
//!   shard files, so a node that starts while etcd is down serves its last
//!   state.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use crate::config::{
    self, ConfigError, Overrides, Resources,
    diag::Diags,
    etcd::{Batch, INVENTORY_KINDS, Layout, Scope, encode, parse_value},
    load::LoadOptions,
    store::Change,
};

/// Where the store is and how to reach it.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    pub layout: Layout,
    /// TLS: the CA that signed the members' certificates, and the client's
    /// certificate and key (production etcd asks for them).
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl StoreOptions {
    /// `etcd://h1:2379,h2:2379/<prefix>`.
    pub fn parse(url: &str) -> Result<StoreOptions, String> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            format!("--store `{url}`: expected etcd://host:port[,host:port...]/<prefix>")
        })?;
        let (hosts, prefix) = rest.split_once('/').ok_or_else(|| {
            format!(
                "--store `{url}` names no prefix; add one, such as etcd://127.0.0.1:2379/routerd (one prefix per mesh)"
            )
        })?;
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(format!(
                "--store `{url}` names no member; expected host:port"
            ));
        }
        for e in &endpoints {
            if e.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!(
                    "--store `{url}`: member `{e}` has no port; write host:port (etcd's client port is 2379)"
                ));
            }
        }
        Ok(StoreOptions {
            endpoints,
            layout: Layout::new(&format!("/{prefix}"))?,
            ca: None,
            cert: None,
            key: None,
        })
    }

    fn tls(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    /// How the store is named in messages.
    pub fn url(&self) -> String {
        format!(
            "etcd://{}{}",
            self.endpoints.join(","),
            self.layout.prefix()
        )
    }
}

/// Large enough for a list page or a publish of 10,000 objects.
const MAX_MESSAGE: usize = 512 << 20;
/// Keys per list request.
const PAGE: i64 = 2000;

/// Connect (members tried in turn by the client's balancer).
pub async fn connect(o: &StoreOptions) -> Result<Client> {
    let scheme = if o.tls() { "https" } else { "http" };
    let eps: Vec<String> = o
        .endpoints
        .iter()
        .map(|e| format!("{scheme}://{e}"))
        .collect();
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // A dead member or a cut link is noticed in seconds, not when TCP
        // gives up.
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if o.tls() {
        let read = |p: &PathBuf| {
            std::fs::read(p).with_context(|| format!("reading {} (for the etcd TLS)", p.display()))
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &o.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&o.cert, &o.key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            (None, None) => {}
            _ => bail!("--store-cert and --store-key go together: give both, or neither"),
        }
        opts = opts.with_tls(tls);
    }
    let c = Client::connect(&eps, Some(opts))
        .await
        .with_context(|| format!("connecting to etcd at {}", o.url()))?;
    Ok(c)
}

fn prefix_end(p: &str) -> Vec<u8> {
    let mut end = p.as_bytes().to_vec();
    // The layout's root ends in `/`: the next byte value ends the range.
    *end.last_mut().expect("non-empty") += 1;
    end
}

/// Every key under the layout's root, at one revision (paged).
pub async fn list(c: &Client, layout: &Layout) -> Result<(i64, Vec<(String, String)>)> {
    let root = layout.root();
    let end = prefix_end(&root);
    let mut kv = c.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut out = Vec::new();
    let mut from: Vec<u8> = root.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let r = kv
            .get(from.clone(), Some(opts))
            .await
            .context("listing the etcd keys")?;
        if revision == 0 {
            revision = r.header().map_or(0, |h| h.revision());
        }
        for kv in r.kvs() {
            out.push((
                kv.key_str()
                    .context("an etcd key that is not UTF-8")?
                    .to_string(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            ));
        }
        match (r.more(), r.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((revision, out))
}

/// What the node's link to the store is doing, for `inspect` and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    pub connected: bool,
    /// The last failure, while not connected.
    pub error: Option<String>,
    /// Lists since start (1 at start; each compaction past the node's
    /// revision adds one).
    pub lists: u64,
}

/// A node's task: list, then watch, for as long as the daemon runs;
/// batches go to `tx`, the link's state to `link`. `from`: the revision
/// already listed (`None`: list first).
pub async fn follow(
    o: StoreOptions,
    mut from: Option<i64>,
    tx: mpsc::UnboundedSender<Batch>,
    link: tokio::sync::watch::Sender<Link>,
) {
    let mut backoff = Duration::from_millis(100);
    let down = |e: &anyhow::Error| {
        link.send_modify(|l| {
            if l.connected {
                tracing::warn!(store = %o.url(), "lost etcd: {e:#}; serving the last accepted config until it is back");
            }
            l.connected = false;
            l.error = Some(format!("{e:#}"));
        });
    };
    loop {
        let r = follow_once(&o, &mut from, &tx, &link).await;
        if tx.is_closed() {
            return;
        }
        match r {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                down(&e);
                tokio::time::sleep(backoff).await;
                // At most a second: a node cut off converges within about
                // a second of the link coming back.
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// One connection's worth of following: returns when it must reconnect
/// (`Ok`: at once, e.g. to list after a compaction).
async fn follow_once(
    o: &StoreOptions,
    from: &mut Option<i64>,
    tx: &mpsc::UnboundedSender<Batch>,
    link: &tokio::sync::watch::Sender<Link>,
) -> Result<()> {
    let c = connect(o).await?;
    let root = o.layout.root();
    let start = match *from {
        Some(r) => r,
        None => {
            let (revision, kvs) = list(&c, &o.layout).await?;
            link.send_modify(|l| l.lists += 1);
            if tx.send(Batch::List { revision, kvs }).is_err() {
                return Ok(());
            }
            *from = Some(revision);
            revision
        }
    };
    let mut w = c.watch_client().max_decoding_message_size(MAX_MESSAGE);
    let mut stream = w
        .watch(
            root.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start + 1),
            ),
        )
        .await
        .context("watching the etcd keys")?;
    let mut progress = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = progress.tick() => {
                stream.request_progress().await.context("asking etcd for progress")?;
            }
            m = stream.message() => {
                let Some(resp) = m.context("the etcd watch")? else {
                    bail!("etcd closed the watch");
                };
                if resp.compact_revision() > 0 {
                    tracing::warn!(
                        store = %o.url(),
                        revision = start,
                        compacted = resp.compact_revision(),
                        "etcd compacted past this node's revision: listing again (the datapath keeps serving; only what changed is applied)"
                    );
                    *from = None;
                    return Ok(());
                }
                if resp.canceled() {
                    bail!("etcd cancelled the watch: {}", resp.cancel_reason());
                }
                if resp.created() {
                    link.send_modify(|l| {
                        if !l.connected {
                            tracing::info!(store = %o.url(), revision = start, "following etcd");
                        }
                        l.connected = true;
                        l.error = None;
                    });
                    continue;
                }
                let revision = resp.header().map_or(0, |h| h.revision());
                if resp.events().is_empty() {
                    let _ = tx.send(Batch::Progress { revision });
                    continue;
                }
                let mut last = 0;
                let events = resp
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = e.kv()?;
                        last = last.max(kv.mod_revision());
                        let key = kv.key_str().ok()?.to_string();
                        Some(match e.event_type() {
                            etcd_client::EventType::Put => {
                                (key, Some(String::from_utf8_lossy(kv.value()).into_owned()))
                            }
                            etcd_client::EventType::Delete => (key, None),
                        })
                    })
                    .collect();
                *from = Some(last.max(*from.as_ref().unwrap_or(&0)));
                if tx.send(Batch::Events { revision: last, events }).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The node's copy of the accepted keys, in a directory: the keys spread
/// over 256 shard files by a hash of the key (a change rewrites only the
/// shards of its keys, each whole, by a rename; 10,000 route tables' 30,000
/// keys are 256 files, not 30,000), and `revision`, written last.
#[derive(Clone, Debug)]
pub struct Snapshot {
    dir: PathBuf,
}

fn shard_of(key: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    format!("shard-{:02x}", h.finish() & 0xff)
}

/// A shard's records: `<key bytes> <value bytes>\n<key><value>\n`, each.
fn read_shard(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (head, tail) = rest.split_once('\n').context("a shard record's header")?;
        let (k, v) = head.split_once(' ').context("a shard record's lengths")?;
        let (k, v): (usize, usize) = (k.parse()?, v.parse()?);
        let body = tail.get(..k + v).context("a shard record cut short")?;
        ensure!(body.is_char_boundary(k), "a shard record's key length");
        out.insert(body[..k].to_string(), body[k..].to_string());
        rest = tail.get(k + v + 1..).context("a shard record's end")?;
    }
    Ok(out)
}

impl Snapshot {
    pub fn new(dir: &Path) -> Self {
        Snapshot {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record accepted keys (`None`: gone) and the revision they are at.
    pub fn write(&self, values: &[(String, Option<String>)], revision: i64) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut shards: BTreeMap<String, Vec<&(String, Option<String>)>> = BTreeMap::new();
        for kv in values {
            shards.entry(shard_of(&kv.0)).or_default().push(kv);
        }
        for (shard, changes) in shards {
            let f = self.dir.join(&shard);
            let mut records = match std::fs::read_to_string(&f) {
                Ok(t) => read_shard(&t).unwrap_or_default(),
                Err(_) => BTreeMap::new(),
            };
            for (k, v) in changes {
                match v {
                    Some(v) => records.insert(k.clone(), v.clone()),
                    None => records.remove(k),
                };
            }
            let mut text = String::new();
            for (k, v) in &records {
                text.push_str(&format!("{} {}\n{k}{v}\n", k.len(), v.len()));
            }
            let tmp = self.dir.join(format!(".{shard}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &f)?;
        }
        let tmp = self.dir.join(".revision.tmp");
        std::fs::write(&tmp, revision.to_string())?;
        std::fs::rename(&tmp, self.dir.join("revision"))?;
        Ok(())
    }

    /// The keys as last recorded, for a layout (keys of another prefix are
    /// not read), as a list at its revision.
    pub fn read(&self, layout: &Layout) -> Result<Batch> {
        let revision: i64 = std::fs::read_to_string(self.dir.join("revision"))
            .with_context(|| format!("no snapshot in {}", self.dir.display()))?
            .trim()
            .parse()
            .context("the snapshot's revision file")?;
        let root = layout.root();
        let mut kvs = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            if !name.to_string_lossy().starts_with("shard-") {
                continue;
            }
            let text = std::fs::read_to_string(e.path())?;
            let records = read_shard(&text)
                .with_context(|| format!("reading the snapshot's {}", e.path().display()))?;
            kvs.extend(records.into_iter().filter(|(k, _)| k.starts_with(&root)));
        }
        kvs.sort();
        Ok(Batch::List { revision, kvs })
    }
}

/// What `routerd publish` writes.
#[derive(Clone, Debug)]
pub struct Publish {
    /// The directory (or file) to publish.
    pub dir: PathBuf,
    pub scope: Scope,
    /// Validate and show what would change; write nothing.
    pub dry_run: bool,
}

/// What a publish did.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub objects: usize,
    /// The store's revision after the transaction (before, if nothing was
    /// written).
    pub revision: i64,
}

/// Why a publish wrote nothing.
#[derive(Debug)]
pub enum PublishError {
    /// The config (with what the store holds of the other scopes) is
    /// invalid: the same errors `routerd check` prints.
    Invalid(ConfigError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for PublishError {
    fn from(e: anyhow::Error) -> Self {
        PublishError::Other(e)
    }
}

/// One local document to publish.
struct LocalDoc {
    key: String,
    value: String,
}

/// Read the directory as `check` does; each object's key and value.
fn local_docs(
    p: &Publish,
    layout: &Layout,
    cfg: &mut Resources,
    diags: &mut Diags,
) -> Result<Vec<LocalDoc>, PublishError> {
    let (docs, files) =
        config::load::documents(&p.dir, LoadOptions::default()).map_err(PublishError::Invalid)?;
    cfg.files.extend(files);
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for d in docs {
        let origin = d.object.origin().clone();
        if let Scope::Cluster(c) = &p.scope {
            if !INVENTORY_KINDS.contains(&d.object.kind()) {
                diags.push(
                    &origin.file,
                    origin.line,
                    Some(origin.resource()),
                    format!(
                        "--inventory publishes Services, EndpointSlices and Pods (cluster {c}'s own); publish {} with the mesh-wide config (`routerd publish --config`)",
                        origin.kind
                    ),
                );
                continue;
            }
            let oc = config::etcd::cluster_of(&d.object).unwrap_or_default();
            if oc != c {
                diags.push(
                    &origin.file,
                    origin.line,
                    Some(origin.resource()),
                    format!(
                        "its metadata.clusterName is `{oc}`, but this publishes cluster {c}'s inventory: each cluster publishes its own objects (fix the clusterName, or publish it with --cluster {oc})"
                    ),
                );
                continue;
            }
        }
        let cluster = config::etcd::cluster_of(&d.object).filter(|c| !c.is_empty());
        let key = match layout.key(
            &p.scope,
            &origin.kind,
            &origin.namespace,
            &origin.name,
            cluster,
        ) {
            Ok(k) => k,
            Err(e) => {
                diags.push(&origin.file, origin.line, Some(origin.resource()), e);
                continue;
            }
        };
        let here = format!("{}:{}", origin.file, origin.line);
        if let Some(first) = seen.insert(key.clone(), here) {
            diags.push(
                &origin.file,
                origin.line,
                Some(origin.resource()),
                format!("{} is defined twice (first at {first}); each object has one key in etcd, so keep one", origin.resource()),
            );
            continue;
        }
        let value = encode(&p.scope.origin(&d.rel), d.first_line, d.indent, &d.text);
        cfg.upsert(d.object);
        out.push(LocalDoc { key, value });
    }
    Ok(out)
}

/// How long a publish retries while etcd elects a leader or a member is
/// unreachable.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(20);

/// Is this a failure that passes (an election, a member restarting)?
fn transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        match c.downcast_ref::<etcd_client::Error>() {
            // A connection that broke (a member restarting, an election).
            Some(etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_)) => {
                return true;
            }
            Some(etcd_client::Error::GRpcStatus(s)) => {
                return s.code() == tonic::Code::Unavailable
                    || (s.code() == tonic::Code::Unknown
                        && s.message().contains("transport error"));
            }
            _ => {}
        }
        let t = c.to_string();
        t.contains("leader changed") || t.contains("no leader") || t.contains("tcp connect error")
    })
}

/// Validate `p.dir` with what the store holds of the other scopes, then
/// write the difference in one transaction. While etcd is between leaders
/// (or a member is down) it tries again, from the read, for up to 20 s.
pub async fn publish(o: &StoreOptions, p: &Publish) -> Result<Published, PublishError> {
    let deadline = std::time::Instant::now() + PUBLISH_PATIENCE;
    loop {
        match publish_once(o, p).await {
            Err(PublishError::Other(e))
                if transient(&e) && std::time::Instant::now() < deadline =>
            {
                tracing::debug!("publish: {e:#}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r,
        }
    }
}

async fn publish_once(o: &StoreOptions, p: &Publish) -> Result<Published, PublishError> {
    let c = connect(o).await?;
    let staged = stage(&c, o, p).await?;
    if staged.ops.is_empty() || p.dry_run {
        return Ok(staged.out);
    }
    write(&c, o, p, staged).await
}

/// A publish read and validated, not written yet.
pub struct Staged {
    ops: Vec<TxnOp>,
    /// The revision the store was read at.
    revision: i64,
    out: Published,
}

impl Staged {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Read the store, validate `p.dir` with what it holds of the other
/// scopes, and compute the difference to write.
pub async fn stage(c: &Client, o: &StoreOptions, p: &Publish) -> Result<Staged, PublishError> {
    let layout = &o.layout;
    let (revision, kvs) = list(c, layout).await?;
    let mut cfg = Resources::default();
    let mut diags = Diags::default();
    let local = local_docs(p, layout, &mut cfg, &mut diags)?;
    // The other scopes, as a node reads them.
    let scope_root = layout.scope_root(&p.scope);
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    let mut others = Vec::new();
    for (k, v) in kvs {
        if k.starts_with(&scope_root) {
            current.insert(k, v);
        } else if let Some(obj) = parse_value(layout, &k, &v, &mut diags) {
            // (The other scopes as a node reads them: a stray key there
            // fails the publish as it fails every node.)
            others.push(Change::Upsert(Box::new(obj)));
        }
    }
    cfg.apply(others);
    if !diags.is_empty() {
        return Err(PublishError::Invalid(ConfigError {
            errors: diags.errors,
        }));
    }
    config::validate_all(cfg, &Overrides::default()).map_err(PublishError::Invalid)?;
    // The difference.
    let mut ops = Vec::new();
    let mut out = Published {
        objects: local.len(),
        revision,
        ..Default::default()
    };
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    for d in &local {
        kept.insert(&d.key);
        match current.get(&d.key) {
            Some(v) if *v == d.value => continue,
            Some(_) => out.changed += 1,
            None => out.added += 1,
        }
        ops.push(TxnOp::put(d.key.clone(), d.value.clone(), None));
    }
    for k in current.keys() {
        if !kept.contains(k.as_str()) {
            out.removed += 1;
            ops.push(TxnOp::delete(k.clone(), None));
        }
    }
    Ok(Staged { ops, revision, out })
}

/// Write a staged publish in one transaction, only if no key of the layout
/// changed since the read it was validated against (every publish writes
/// the marker, so a publish in between always shows).
pub async fn write(
    c: &Client,
    o: &StoreOptions,
    p: &Publish,
    staged: Staged,
) -> Result<Published, PublishError> {
    let layout = &o.layout;
    let Staged {
        mut ops,
        revision,
        mut out,
    } = staged;
    let marker = layout.marker();
    let mut kv = c.kv_client();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let note = serde_json::json!({
        "layout": config::etcd::LAYOUT,
        "scope": p.scope.to_string(),
        "from": p.dir.display().to_string(),
        "host": host,
        "objects": out.objects,
        "added": out.added,
        "changed": out.changed,
        "removed": out.removed,
    });
    ops.push(TxnOp::put(marker, note.to_string(), None));
    let n = ops.len();
    let txn = Txn::new()
        .when([Compare::mod_revision(layout.root(), CompareOp::Less, revision + 1).with_prefix()])
        .and_then(ops);
    let r = kv.txn(txn).await.map_err(|e| {
        let s = e.to_string();
        if s.contains("too many operations") {
            anyhow::anyhow!(
                "etcd refused the transaction of {n} operations: too many for its --max-txn-ops. One publish is one transaction (so that nodes never see half of it): start every member with --max-txn-ops of at least {n} (README, \"Many nodes: etcd\")"
            )
        } else if s.contains("too large") {
            anyhow::anyhow!(
                "etcd refused the transaction as too large ({s}): start every member with a larger --max-request-bytes (README, \"Many nodes: etcd\")"
            )
        } else {
            anyhow::Error::new(e).context("writing the publish transaction")
        }
    })?;
    if !r.succeeded() {
        return Err(PublishError::Other(anyhow::anyhow!(
            "another publish wrote to {} after this one read it at revision {revision} (the marker {} moved); nothing was written: run the publish again",
            o.url(),
            layout.marker()
        )));
    }
    out.revision = r.header().map_or(revision, |h| h.revision());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_keeps_what_was_accepted_across_writes() {
        let dir =
            std::env::temp_dir().join(format!("routerd-snapshot-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let snap = Snapshot::new(&dir);
        let layout = Layout::new("/m").unwrap();
        let key = |i: usize| format!("/m/v1/config/RouteTable/t/r{i}");
        // Values with newlines, spaces and multi-byte characters.
        let value = |i: usize| {
            format!("# routerd-source: line=1 indent=0 file=a b.yaml\nkind: RouteTable # é {i}\n")
        };
        let first: Vec<(String, Option<String>)> =
            (0..600).map(|i| (key(i), Some(value(i)))).collect();
        snap.write(&first, 7).unwrap();
        // Another prefix's key is not read back.
        snap.write(&[("/other/v1/config/X/t/y".into(), Some("x".into()))], 7)
            .unwrap();
        let mut second: Vec<(String, Option<String>)> = (0..300).map(|i| (key(i), None)).collect();
        second.push((key(500), Some("changed\n".into())));
        snap.write(&second, 9).unwrap();
        let Batch::List { revision, kvs } = snap.read(&layout).unwrap() else {
            panic!("a list")
        };
        assert_eq!(revision, 9);
        assert_eq!(kvs.len(), 300);
        let got: BTreeMap<String, String> = kvs.into_iter().collect();
        assert_eq!(got[&key(500)], "changed\n");
        assert_eq!(got[&key(599)], value(599));
        assert!(!got.contains_key(&key(0)));
        assert!(
            std::fs::read_dir(&dir).unwrap().count() <= 257,
            "256 shards and the revision"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
