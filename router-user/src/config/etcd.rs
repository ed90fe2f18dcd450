//! The etcd source: routerd's key layout in etcd, and the keys a node
//! watches as a stream of [`Change`]s into the store, as the file source
//! ([`super::source`]) turns files into them. Pure: the client that lists,
//! watches and publishes is `crate::kvstore`.
//!
//! # The layout, version 1
//! One prefix per mesh (`--store etcd://.../<prefix>`), and under it:
//!
//! | key | holds |
//! |---|---|
//! | `<prefix>/v1/config/<Kind>/<namespace>/<name>` | the mesh-wide config (`routerd publish --config`) |
//! | `<prefix>/v1/clusters/<cluster>/<Kind>/<namespace>/<name>` | one cluster's inventory (`routerd publish --cluster C --inventory`) |
//! | `<prefix>/v1/meta/publish` | the last publish (who, when, what); every publish's transaction compares it |
//!
//! A cluster-scoped object (no namespace) has `_` for its namespace. An
//! inventory object in the mesh-wide config (a Service, EndpointSlice or
//! Pod; each names its cluster, and two clusters may hold one name) has its
//! cluster after its name: `config/Service/shop/web@cluster-1`. Each
//! value is one YAML document, as it was in its file, after one comment
//! line that says where it came from:
//! `# routerd-source: line=12 indent=0 file=config/routes/web.yaml`. A node
//! names the object by that origin (`etcd:config/routes/web.yaml:12`), so
//! its errors point at the published file, and the config order (which
//! decides, for instance, which of two policies applies) is the files'
//! order, as `routerd check` saw it. A value written by hand, without the
//! line, is named by its key.
//!
//! A future layout goes under `<prefix>/v2/`; a node reads only the
//! version it knows.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    diag::{ConfigError, Diags},
    load::{RawDoc, parse_doc, split_documents},
    source::doc_hash,
    store::{Change, Kind, Object, Pos},
};

/// The layout's version: the path component after the prefix.
pub const LAYOUT: &str = "v1";

/// What marks a value's origin line.
const SOURCE_TAG: &str = "# routerd-source: ";

/// The kinds a cluster publishes as its inventory.
pub const INVENTORY_KINDS: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Pod];

/// Whose subtree a key is in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The mesh-wide config.
    Mesh,
    /// One cluster's inventory.
    Cluster(String),
}

impl Scope {
    fn path(&self) -> String {
        match self {
            Scope::Mesh => "config".into(),
            Scope::Cluster(c) => format!("clusters/{c}"),
        }
    }

    /// How a node names a file published in this scope (`rel`: its path
    /// relative to the published directory).
    pub fn origin(&self, rel: &str) -> String {
        format!("etcd:{}/{rel}", self.path())
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Mesh => f.write_str("the mesh-wide config"),
            Scope::Cluster(c) => write!(f, "cluster {c}'s inventory"),
        }
    }
}

/// A key, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyIs {
    Object {
        scope: Scope,
        kind: String,
        namespace: String,
        name: String,
        /// After `@` in the mesh scope (an inventory object's cluster).
        cluster: Option<String>,
    },
    /// Under `meta/`: about publishes, not config.
    Meta,
}

/// Is `s` usable as one path component of a key?
fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\0'])
        && !s.contains(char::is_whitespace)
}

/// A mesh's keys under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// `prefix`: a path such as `/routerd` or `mesh-a` (no trailing `/`
    /// needed).
    pub fn new(prefix: &str) -> Result<Layout, String> {
        let p = prefix.trim_end_matches('/');
        if p.is_empty() {
            return Err(format!(
                "the etcd prefix `{prefix}` is empty; name one, such as /routerd (one prefix per mesh)"
            ));
        }
        if p.split('/')
            .skip(usize::from(p.starts_with('/')))
            .any(|s| !segment_ok(s))
        {
            return Err(format!(
                "the etcd prefix `{prefix}` has an empty, `.`, `..` or blank component; write it as a path such as /routerd/mesh-a"
            ));
        }
        Ok(Layout { prefix: p.into() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every key of this layout starts with this.
    pub fn root(&self) -> String {
        format!("{}/{LAYOUT}/", self.prefix)
    }

    /// Every key of one scope starts with this.
    pub fn scope_root(&self, s: &Scope) -> String {
        format!("{}{}/", self.root(), s.path())
    }

    /// The key every publish writes and compares.
    pub fn marker(&self) -> String {
        format!("{}meta/publish", self.root())
    }

    /// The key of an object (`cluster`: an inventory object's, in the
    /// mesh scope).
    pub fn key(
        &self,
        s: &Scope,
        kind: &str,
        namespace: &str,
        name: &str,
        cluster: Option<&str>,
    ) -> Result<String, String> {
        let ns = if namespace.is_empty() { "_" } else { namespace };
        let cluster = cluster.filter(|_| *s == Scope::Mesh);
        for (what, v) in [
            ("kind", kind),
            ("namespace", ns),
            ("name", name),
            ("cluster", cluster.unwrap_or("x")),
        ] {
            if !segment_ok(v) || v.contains('@') {
                return Err(format!(
                    "its {what} `{v}` cannot be part of an etcd key (empty, `.`, `..`, or holding `/`, `@` or blanks); rename it"
                ));
            }
        }
        Ok(match cluster {
            Some(c) => format!("{}{kind}/{ns}/{name}@{c}", self.scope_root(s)),
            None => format!("{}{kind}/{ns}/{name}", self.scope_root(s)),
        })
    }

    /// What a key under [`Layout::root`] is.
    pub fn parse(&self, key: &str) -> Result<KeyIs, String> {
        let root = self.root();
        let Some(rel) = key.strip_prefix(&root) else {
            return Err(format!("not under {root}"));
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let object = |scope: Scope, p: &[&str]| match p {
            [kind, ns, name] if [kind, ns, name].iter().all(|s| segment_ok(s)) => {
                let (name, cluster) = match name.split_once('@') {
                    Some((n, c)) if scope == Scope::Mesh && segment_ok(n) && segment_ok(c) => {
                        (n, Some(c.to_string()))
                    }
                    Some(_) => {
                        return Err(format!(
                            "`{name}`: expected <name> or, for an inventory object of the mesh-wide config, <name>@<cluster>"
                        ));
                    }
                    None => (*name, None),
                };
                Ok(KeyIs::Object {
                    scope,
                    kind: kind.to_string(),
                    namespace: if *ns == "_" {
                        String::new()
                    } else {
                        ns.to_string()
                    },
                    name: name.to_string(),
                    cluster,
                })
            }
            _ => Err(format!(
                "expected <Kind>/<namespace>/<name> after {}",
                scope.path()
            )),
        };
        match parts.as_slice() {
            ["meta", ..] => Ok(KeyIs::Meta),
            ["config", rest @ ..] => object(Scope::Mesh, rest),
            ["clusters", c, rest @ ..] if segment_ok(c) => {
                object(Scope::Cluster(c.to_string()), rest)
            }
            _ => Err(format!(
                "expected config/<Kind>/<namespace>/<name>, clusters/<cluster>/<Kind>/<namespace>/<name> or meta/... after {root}"
            )),
        }
    }
}

/// The value of an object's key: its origin line, then its document.
pub fn encode(origin_file: &str, first_line: u64, indent: u64, text: &str) -> String {
    format!("{SOURCE_TAG}line={first_line} indent={indent} file={origin_file}\n{text}")
}

/// A value, read: where its document came from, and the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub file: String,
    pub first_line: u64,
    pub indent: u64,
    pub text: &'a str,
}

/// Read a value; one without a well-formed origin line (written by hand)
/// is named by its key, from its first line.
pub fn decode<'a>(key: &str, value: &'a str) -> Decoded<'a> {
    let by_key = || Decoded {
        file: format!("etcd:{key}"),
        first_line: 1,
        indent: 0,
        text: value,
    };
    let Some(rest) = value.strip_prefix(SOURCE_TAG) else {
        return by_key();
    };
    let (head, text) = rest.split_once('\n').unwrap_or((rest, ""));
    let mut it = head.splitn(3, ' ');
    let field = |s: Option<&str>, k: &str| s.and_then(|s| s.strip_prefix(k)).map(str::to_string);
    let (Some(line), Some(indent), Some(file)) = (
        field(it.next(), "line=").and_then(|v| v.parse::<u64>().ok()),
        field(it.next(), "indent=").and_then(|v| v.parse::<u64>().ok()),
        field(it.next(), "file="),
    ) else {
        return by_key();
    };
    if line == 0 || file.is_empty() {
        return by_key();
    }
    Decoded {
        file,
        // The document's lines start one line into the value.
        first_line: line,
        indent,
        text,
    }
}

/// An object's cluster (`metadata.clusterName`), for the inventory kinds.
pub fn cluster_of(o: &Object) -> Option<&str> {
    match o {
        Object::Service(r) => r.meta.cluster_name.as_deref(),
        Object::EndpointSlice(r) => r.meta.cluster_name.as_deref(),
        Object::Pod(r) => r.meta.cluster_name.as_deref(),
        _ => None,
    }
}

/// Parse one key's value into its object, checking that the key names it.
/// Errors go to `diags`, naming the origin and the key.
pub fn parse_value(layout: &Layout, key: &str, value: &str, diags: &mut Diags) -> Option<Object> {
    let d = decode(key, value);
    let what = match layout.parse(key) {
        Ok(KeyIs::Object {
            scope,
            kind,
            namespace,
            name,
            cluster,
        }) => (scope, kind, namespace, name, cluster),
        Ok(KeyIs::Meta) => return None,
        Err(e) => {
            diags.push(
                &d.file,
                d.first_line,
                None,
                format!("etcd key {key}: {e}; delete the key or move it where routerd's layout puts it (README, \"Many nodes: etcd\")"),
            );
            return None;
        }
    };
    let (scope, kind, namespace, name, cluster) = what;
    let mut docs = split_documents(d.text);
    if docs.len() != 1 {
        diags.push(
            &d.file,
            d.first_line,
            None,
            format!(
                "etcd key {key} holds {} documents; expected exactly one (publish with `routerd publish`, which writes one per key)",
                docs.len()
            ),
        );
        return None;
    }
    let doc = docs.pop().expect("one");
    let doc = RawDoc {
        first_line: doc.first_line + d.first_line - 1,
        indent: d.indent,
        text: doc.text,
    };
    let o = parse_doc(&d.file, &doc, diags)?;
    let origin = o.origin();
    let ns_ok = *origin.namespace == *namespace
        || (namespace.is_empty() && &*origin.namespace == "default");
    if *origin.kind != *kind || !ns_ok || *origin.name != *name {
        diags.push(
            &origin.file,
            origin.line,
            Some(origin.resource()),
            format!(
                "etcd key {key} names {kind} {}/{name}, but holds {}; each object goes under its own kind, namespace and name (`routerd publish` writes them so)",
                if namespace.is_empty() { "_" } else { &namespace },
                origin.resource()
            ),
        );
        return None;
    }
    if scope == Scope::Mesh && cluster.as_deref() != cluster_of(&o).filter(|c| !c.is_empty()) {
        diags.push(
            &origin.file,
            origin.line,
            Some(origin.resource()),
            format!(
                "etcd key {key} names cluster {}, but the object's metadata.clusterName is {}; an inventory object's key ends in @<its cluster> (`routerd publish` writes them so)",
                cluster.as_deref().unwrap_or("(none)"),
                cluster_of(&o).unwrap_or("(none)")
            ),
        );
        return None;
    }
    if let Scope::Cluster(c) = &scope {
        if !INVENTORY_KINDS.contains(&o.kind()) {
            diags.push(
                &origin.file,
                origin.line,
                Some(origin.resource()),
                format!(
                    "etcd key {key} is in cluster {c}'s inventory, which holds Services, EndpointSlices and Pods only; publish {kind} with the mesh-wide config (`routerd publish --config`)"
                ),
            );
            return None;
        }
        if cluster_of(&o).is_some_and(|oc| oc != c) {
            diags.push(
                &origin.file,
                origin.line,
                Some(origin.resource()),
                format!(
                    "etcd key {key} is in cluster {c}'s inventory, but the object's metadata.clusterName is {}; each cluster publishes its own objects",
                    cluster_of(&o).unwrap_or_default()
                ),
            );
            return None;
        }
    }
    Some(o)
}

/// One key as last accepted (its value's hash; what it put in the store).
#[derive(Clone, Debug)]
struct KeyState {
    hash: u64,
    kind: Kind,
    at: Pos,
}

/// What the watch (or a list) brought.
#[derive(Clone, Debug)]
pub enum Batch {
    /// Every key under the layout's root at `revision` (a start, or a
    /// relist after a compaction): keys not in it are gone.
    List {
        revision: i64,
        kvs: Vec<(String, String)>,
    },
    /// Changes up to `revision` (`None`: the key was deleted).
    Events {
        revision: i64,
        events: Vec<(String, Option<String>)>,
    },
    /// The store is at `revision`, and every change up to it was sent.
    Progress { revision: i64 },
}

/// Keys as accepted (`None`: gone) and the revision they bring the node
/// to: what the node's local snapshot records.
#[derive(Clone, Debug, Default)]
pub struct Accepted {
    pub values: Vec<(String, Option<String>)>,
    pub revision: i64,
}

/// The changes a read found, and what to record if they are accepted.
#[derive(Debug, Default)]
pub struct EtcdReading {
    pub changes: Vec<Change>,
    /// Keys read: their new state (`None`: gone, or a key that holds no
    /// object), and the hash of the value read (`None`: deleted).
    keys: Vec<(String, Option<KeyState>, Option<u64>)>,
    /// The revision the store is at once these are applied.
    pub revision: i64,
}

/// The keys under a layout's root as a source of changes.
#[derive(Debug)]
pub struct EtcdSource {
    layout: Layout,
    accepted: HashMap<String, KeyState>,
    /// Keys changed and not yet accepted, with their value (`None`: gone).
    pending: BTreeMap<String, Option<String>>,
    /// The revision of the config accepted: of the last list or events
    /// accepted (a progress notice moves nothing here: etcd may send one
    /// before it says that a resumed watch's revision was compacted).
    served: i64,
    /// The highest revision a list or events brought.
    brought: i64,
    /// The latest revision the store said it is at (progress notices too).
    seen: i64,
}

impl EtcdSource {
    pub fn new(layout: Layout) -> Self {
        EtcdSource {
            layout,
            accepted: HashMap::new(),
            pending: BTreeMap::new(),
            served: 0,
            brought: 0,
            seen: 0,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The revision the accepted config is from.
    pub fn served(&self) -> i64 {
        self.served
    }

    /// The latest revision the store said it is at.
    pub fn seen(&self) -> i64 {
        self.seen
    }

    /// Objects accepted.
    pub fn len(&self) -> usize {
        self.accepted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
    }

    /// Are there keys to read?
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Keys received and not accepted yet.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Take in what the watch brought; whether it brought keys to read
    /// (with none after a list or events, the node serves their revision
    /// already). A progress notice never asks for a read: keys a refused
    /// read left pending wait for the next change, not for the next
    /// notice (every 500 ms, each a whole validation and a log line).
    pub fn received(&mut self, b: Batch) -> bool {
        let progress = matches!(b, Batch::Progress { .. });
        self.take(b);
        if progress {
            return false;
        }
        if self.pending.is_empty() {
            self.served = self.served.max(self.brought);
        }
        !self.pending.is_empty()
    }

    fn take(&mut self, b: Batch) {
        match b {
            Batch::List { revision, kvs } => {
                let listed: BTreeSet<&String> = kvs.iter().map(|(k, _)| k).collect();
                let gone: Vec<String> = self
                    .accepted
                    .keys()
                    .filter(|k| !listed.contains(k))
                    .cloned()
                    .collect();
                self.pending.retain(|k, _| listed.contains(k));
                for k in gone {
                    self.pending.insert(k, None);
                }
                for (k, v) in kvs {
                    if self
                        .accepted
                        .get(&k)
                        .is_some_and(|a| a.hash == doc_hash(&v))
                    {
                        self.pending.remove(&k);
                    } else {
                        self.pending.insert(k, Some(v));
                    }
                }
                self.brought = self.brought.max(revision);
                self.seen = self.seen.max(revision);
            }
            Batch::Events { revision, events } => {
                for (k, v) in events {
                    self.pending.insert(k, v);
                }
                self.brought = self.brought.max(revision);
                self.seen = self.seen.max(revision);
            }
            Batch::Progress { revision } => self.seen = self.seen.max(revision),
        }
    }

    /// What the pending keys change. Errors fail the read whole; the keys
    /// stay pending (the next batch reads them again).
    pub fn read(&self) -> Result<EtcdReading, ConfigError> {
        let mut diags = Diags::default();
        let mut r = EtcdReading {
            revision: self.brought,
            ..Default::default()
        };
        let items: Vec<(&String, &Option<String>)> = self.pending.iter().collect();
        let parsed = crate::par::map(&items, |(k, v)| {
            let mut d = Diags::default();
            let o = v
                .as_deref()
                .and_then(|v| parse_value(&self.layout, k, v, &mut d));
            (o, d)
        });
        // Positions taken by keys that stay, and by keys read here.
        let mut taken: HashMap<(Kind, Pos), &str> = HashMap::new();
        let changing: BTreeSet<&String> = self.pending.keys().collect();
        for ((key, value), (o, d)) in items.into_iter().zip(parsed) {
            diags.errors.extend(d.errors);
            let old = self.accepted.get(key);
            if let Some(a) = old {
                r.changes.push(Change::Delete {
                    kind: a.kind,
                    at: a.at.clone(),
                });
            }
            let read_hash = value.as_deref().map(doc_hash);
            match (value, o) {
                (None, _) => r.keys.push((key.clone(), None, None)),
                (Some(v), Some(o)) => {
                    let (kind, at) = (o.kind(), Pos::of(o.origin()));
                    if let Some(other) = taken.insert((kind, at.clone()), key) {
                        diags.push(
                            &at.file,
                            at.line,
                            None,
                            format!(
                                "etcd keys {other} and {key} both say they hold the {kind:?} at {}:{}; publish again with `routerd publish`, or delete one",
                                at.file, at.line
                            ),
                        );
                    }
                    r.keys.push((
                        key.clone(),
                        Some(KeyState {
                            hash: doc_hash(v),
                            kind,
                            at,
                        }),
                        read_hash,
                    ));
                    r.changes.push(Change::Upsert(Box::new(o)));
                }
                (Some(_), None) => {
                    // Errors were reported (the read fails), or a meta key,
                    // which holds no object: read, and done with.
                    r.keys.push((key.clone(), None, read_hash));
                }
            }
        }
        if !taken.is_empty() {
            for (k, a) in &self.accepted {
                if changing.contains(k) {
                    continue;
                }
                if let Some(other) = taken.get(&(a.kind, a.at.clone())) {
                    diags.push(
                        &a.at.file,
                        a.at.line,
                        None,
                        format!(
                            "etcd keys {k} and {other} both say they hold the {:?} at {}:{}; publish again with `routerd publish`, or delete one",
                            a.kind, a.at.file, a.at.line
                        ),
                    );
                }
            }
        }
        // Deletes first (a key's object may move to a position another
        // key just left).
        r.changes.sort_by_key(|c| matches!(c, Change::Upsert(_)));
        diags.into_result(r)
    }

    /// The store accepted `r`'s changes: the keys as accepted, with their
    /// values (`None`: gone) moved out of the pending set, for the node's
    /// snapshot. (A key that changed again since it was read stays
    /// pending.)
    pub fn commit(&mut self, r: &mut EtcdReading) -> Vec<(String, Option<String>)> {
        let mut values = Vec::with_capacity(r.keys.len());
        for (k, a, read) in std::mem::take(&mut r.keys) {
            let same = self
                .pending
                .get(&k)
                .is_some_and(|v| v.as_deref().map(doc_hash) == read);
            // The store holds what was read, whatever came since.
            match a {
                Some(a) => {
                    self.accepted.insert(k.clone(), a);
                }
                None => {
                    self.accepted.remove(&k);
                }
            }
            if same {
                let v = self.pending.remove(&k).flatten();
                values.push((k, v));
            }
        }
        self.served = self.served.max(r.revision);
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RT: &str = "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata:\n  name: web\n  namespace: apps\nspec:\n  hosts: [web.mesh.internal]\n";

    fn svc(cluster: &str, name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: apps\n  clusterName: {cluster}\nspec:\n  ports:\n  - port: 80\n"
        )
    }

    #[test]
    fn keys_follow_the_layout_and_read_back() {
        let l = Layout::new("/routerd/").unwrap();
        assert_eq!(l.root(), "/routerd/v1/");
        let k = l
            .key(&Scope::Mesh, "RouteTable", "apps", "web", None)
            .unwrap();
        assert_eq!(k, "/routerd/v1/config/RouteTable/apps/web");
        assert_eq!(
            l.parse(&k).unwrap(),
            KeyIs::Object {
                scope: Scope::Mesh,
                kind: "RouteTable".into(),
                namespace: "apps".into(),
                name: "web".into(),
                cluster: None,
            }
        );
        let k = l
            .key(&Scope::Mesh, "Service", "apps", "web", Some("c1"))
            .unwrap();
        assert_eq!(k, "/routerd/v1/config/Service/apps/web@c1");
        assert!(
            matches!(l.parse(&k).unwrap(), KeyIs::Object { cluster: Some(c), name, .. } if c == "c1" && name == "web")
        );
        // In a cluster's subtree the cluster is the subtree's.
        let k = l
            .key(
                &Scope::Cluster("c1".into()),
                "Service",
                "apps",
                "web",
                Some("c1"),
            )
            .unwrap();
        assert_eq!(k, "/routerd/v1/clusters/c1/Service/apps/web");
        assert!(
            l.parse("/routerd/v1/clusters/c1/Service/apps/web@c1")
                .is_err()
        );
        let k = l
            .key(
                &Scope::Cluster("c1".into()),
                "RouterConfig",
                "",
                "node",
                None,
            )
            .unwrap();
        assert_eq!(k, "/routerd/v1/clusters/c1/RouterConfig/_/node");
        assert!(
            matches!(l.parse(&k).unwrap(), KeyIs::Object { namespace, .. } if namespace.is_empty())
        );
        assert_eq!(l.parse("/routerd/v1/meta/publish").unwrap(), KeyIs::Meta);
        assert!(l.parse("/routerd/v1/config/RouteTable/apps").is_err());
        assert!(l.parse("/routerd/v1/other/x").is_err());
        assert!(
            l.key(&Scope::Mesh, "RouteTable", "apps", "a/b", None)
                .is_err()
        );
        assert!(Layout::new("/").is_err());
        assert!(Layout::new("/a//b").is_err());
    }

    #[test]
    fn values_carry_their_origin_and_hand_written_ones_their_key() {
        let v = encode("etcd:config/routes/web.yaml", 12, 0, RT);
        let d = decode("k", &v);
        assert_eq!(
            (d.file.as_str(), d.first_line, d.indent, d.text),
            ("etcd:config/routes/web.yaml", 12, 0, RT)
        );
        let d = decode("/p/v1/config/RouteTable/apps/web", RT);
        assert_eq!(
            (d.file.as_str(), d.first_line),
            ("etcd:/p/v1/config/RouteTable/apps/web", 1)
        );
    }

    fn source() -> (Layout, EtcdSource) {
        let l = Layout::new("/m").unwrap();
        (l.clone(), EtcdSource::new(l))
    }

    fn kinds(r: &EtcdReading) -> Vec<String> {
        r.changes
            .iter()
            .map(|c| match c {
                Change::Upsert(o) => format!(
                    "+{}@{}:{}",
                    o.origin().name,
                    o.origin().file,
                    o.origin().line
                ),
                Change::Delete { at, .. } => format!("-{}:{}", at.file, at.line),
            })
            .collect()
    }

    #[test]
    fn a_list_then_events_give_upserts_and_deletes_with_the_published_origin() {
        let (l, mut s) = source();
        let k = l
            .key(&Scope::Mesh, "RouteTable", "apps", "web", None)
            .unwrap();
        s.received(Batch::List {
            revision: 5,
            kvs: vec![(k.clone(), encode("etcd:config/a.yaml", 3, 0, RT))],
        });
        let mut r = s.read().unwrap();
        assert_eq!(kinds(&r), ["+web@etcd:config/a.yaml:3"]);
        s.commit(&mut r);
        assert_eq!((s.served(), s.has_pending()), (5, false));
        // The same list again (a relist): nothing to do.
        s.received(Batch::List {
            revision: 9,
            kvs: vec![(k.clone(), encode("etcd:config/a.yaml", 3, 0, RT))],
        });
        let mut r = s.read().unwrap();
        assert!(r.changes.is_empty());
        s.commit(&mut r);
        assert_eq!(s.served(), 9);
        // Moved within its file: the old position goes, the new one comes.
        s.received(Batch::Events {
            revision: 10,
            events: vec![(k.clone(), Some(encode("etcd:config/a.yaml", 7, 0, RT)))],
        });
        let mut r = s.read().unwrap();
        assert_eq!(
            kinds(&r),
            ["-etcd:config/a.yaml:3", "+web@etcd:config/a.yaml:7"]
        );
        s.commit(&mut r);
        // A relist without it: deleted.
        s.received(Batch::List {
            revision: 12,
            kvs: vec![],
        });
        let r = s.read().unwrap();
        assert_eq!(kinds(&r), ["-etcd:config/a.yaml:7"]);
    }

    #[test]
    fn a_refused_read_stays_pending_and_wrong_keys_are_named() {
        let (l, mut s) = source();
        let k = l
            .key(&Scope::Mesh, "RouteTable", "apps", "other", None)
            .unwrap();
        s.received(Batch::Events {
            revision: 3,
            events: vec![(k.clone(), Some(RT.to_string()))],
        });
        let e = s.read().unwrap_err().to_string();
        assert!(e.contains("etcd key /m/v1/config/RouteTable/apps/other names RouteTable apps/other, but holds RouteTable apps/web"), "{e}");
        assert!(s.has_pending());
        // Progress notices do not ask to read the refused keys again, and
        // move nothing served.
        assert!(!s.received(Batch::Progress { revision: 9 }));
        assert_eq!((s.served(), s.seen()), (0, 9));
        // The fix arrives: read whole again.
        s.received(Batch::Events {
            revision: 4,
            events: vec![(k, None)],
        });
        let r = s.read().unwrap();
        assert!(r.changes.is_empty());
        // A cluster's subtree holds its own inventory only.
        let k = l
            .key(&Scope::Cluster("c1".into()), "Service", "apps", "web", None)
            .unwrap();
        s.received(Batch::Events {
            revision: 5,
            events: vec![(k.clone(), Some(svc("c2", "web")))],
        });
        let e = s.read().unwrap_err().to_string();
        assert!(e.contains("metadata.clusterName is c2"), "{e}");
        s.received(Batch::Events {
            revision: 6,
            events: vec![(k, Some(svc("c1", "web")))],
        });
        assert_eq!(s.read().unwrap().changes.len(), 1);
        let k = l
            .key(
                &Scope::Cluster("c1".into()),
                "RouteTable",
                "apps",
                "web",
                None,
            )
            .unwrap();
        s.received(Batch::Events {
            revision: 7,
            events: vec![(k, Some(RT.to_string()))],
        });
        let e = s.read().unwrap_err().to_string();
        assert!(
            e.contains("holds Services, EndpointSlices and Pods only"),
            "{e}"
        );
    }

    #[test]
    fn two_keys_claiming_one_origin_are_refused() {
        let (l, mut s) = source();
        let a = l
            .key(&Scope::Cluster("c1".into()), "Service", "apps", "a", None)
            .unwrap();
        let b = l
            .key(&Scope::Cluster("c1".into()), "Service", "apps", "b", None)
            .unwrap();
        s.received(Batch::List {
            revision: 2,
            kvs: vec![
                (a, encode("etcd:clusters/c1/s.yaml", 1, 0, &svc("c1", "a"))),
                (b, encode("etcd:clusters/c1/s.yaml", 1, 0, &svc("c1", "b"))),
            ],
        });
        let e = s.read().unwrap_err().to_string();
        assert!(
            e.contains("both say they hold the Service at etcd:clusters/c1/s.yaml:1"),
            "{e}"
        );
    }
}
