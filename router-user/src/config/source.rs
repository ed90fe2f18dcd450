//! The file source: the config path on disk as a stream of [`Change`]s.
//! It remembers, for every file, its fingerprint (size, times, inode) and
//! its documents (first line and a hash of the text, never the text), as
//! last accepted. A read looks only at the paths that changed (the
//! watcher's) or, on a full rescan, at files whose fingerprint moved, and
//! parses only documents that are new or moved: an endpoint edited in one
//! file is one upsert.
//!
//! Reads are transactional with the store: [`FileSource::read`] leaves the
//! source as it was; [`FileSource::commit`] records a read once the store
//! accepted its changes. A rejected read's files stay pending and are read
//! again with the next trigger, so a bad file keeps the whole config
//! rejected until it is fixed, as a full reload would.
use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{
    diag::{ConfigError, Diags},
    load::{
        LoadOptions, MAX_FILES, MAX_TOTAL_BYTES, check_trust, config_files, parse_doc,
        read_config_file, split_documents,
    },
    store::{Change, Kind, Object, Pos},
};

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Fingerprint {
    fn of(md: &std::fs::Metadata) -> Self {
        Fingerprint {
            len: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
            ino: md.ino(),
        }
    }
}

/// One document as last accepted.
#[derive(Clone, Debug)]
struct DocState {
    first_line: u64,
    hash: u64,
    kind: Kind,
    at: Pos,
}

#[derive(Clone, Debug)]
struct FileState {
    fingerprint: Option<Fingerprint>,
    docs: Vec<DocState>,
}

/// The changes a read found, and the file states to record if accepted.
#[derive(Debug, Default)]
pub struct Reading {
    pub changes: Vec<Change>,
    /// Files read: their new state (`None`: gone).
    files: BTreeMap<PathBuf, Option<FileState>>,
    /// Every config file, in order, after this read (when the set of
    /// files changed).
    pub names: Option<Vec<String>>,
    /// Their size in all.
    total: u64,
}

/// The config path as a source of changes.
#[derive(Debug)]
pub struct FileSource {
    root: PathBuf,
    opts: LoadOptions,
    files: BTreeMap<PathBuf, FileState>,
    /// Changed paths not yet accepted (a rejected read's, and the watcher's).
    pending: BTreeSet<PathBuf>,
    /// A full rescan is owed (start, SIGHUP, a directory event).
    rescan: bool,
    /// The accepted files' size in all.
    total: u64,
}

pub(super) fn doc_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn is_config_name(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

impl FileSource {
    pub fn new(root: &Path, opts: LoadOptions) -> Self {
        FileSource {
            root: root.to_path_buf(),
            opts,
            files: BTreeMap::new(),
            pending: BTreeSet::new(),
            rescan: true,
            total: 0,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The watcher saw these paths change (files, or directories).
    pub fn changed(&mut self, paths: impl IntoIterator<Item = PathBuf>) {
        for p in paths {
            let under = p.starts_with(&self.root);
            if !under {
                continue;
            }
            if self.root.is_file() {
                if p == self.root {
                    self.pending.insert(p);
                }
            } else if is_config_name(&p)
                && !p
                    .strip_prefix(&self.root)
                    .is_ok_and(|rel| rel.iter().any(|c| c.to_string_lossy().starts_with('.')))
            {
                self.pending.insert(p);
            } else if p.is_dir()
                || self
                    .files
                    .range(p.clone()..)
                    .next()
                    .is_some_and(|(f, _)| f.starts_with(&p))
            {
                // A directory appeared, or one holding config files went or
                // moved: look at everything. (Anything else, such as an
                // editor's or a tool's temporary file, is not config.)
                self.rescan = true;
            }
        }
    }

    /// Look at every file again (SIGHUP).
    pub fn rescan(&mut self) {
        self.rescan = true;
    }

    /// Is there anything to read?
    pub fn has_pending(&self) -> bool {
        self.rescan || !self.pending.is_empty()
    }

    /// Read what changed since the last accepted read. Errors (unreadable
    /// or untrusted files, YAML and schema errors) fail the read whole.
    pub fn read(&self) -> Result<Reading, ConfigError> {
        let mut diags = Diags::default();
        let shown = self.root.display().to_string();
        let mut candidates: BTreeSet<PathBuf> = self.pending.clone();
        let listed: BTreeSet<PathBuf>;
        if self.rescan {
            listed = match config_files(&self.root, self.opts) {
                Ok(f) => f.into_iter().collect(),
                Err(e) => {
                    diags.push(&shown, 0, None, e);
                    return Err(ConfigError {
                        errors: diags.errors,
                    });
                }
            };
            candidates.extend(listed.iter().cloned());
            // Files that went away.
            candidates.extend(self.files.keys().cloned());
        } else {
            listed = BTreeSet::new();
        }
        let mut r = Reading::default();
        // Each candidate looked at (and read, if it moved) in parallel: at
        // start-up that is every file, 10,000 opens and reads at scale.
        enum Look {
            Gone,
            Unchanged,
            Read(String, Fingerprint),
            Failed(String),
        }
        let candidates: Vec<PathBuf> = candidates.into_iter().collect();
        let looks = crate::par::map(&candidates, |f| {
            let Ok(md) = std::fs::metadata(f) else {
                return Look::Gone;
            };
            if self.rescan && !listed.contains(f) {
                // Not a config file any more (renamed to .bak, hidden).
                return Look::Gone;
            }
            let fp = Fingerprint::of(&md);
            let old = self.files.get(f);
            if old.is_some_and(|o| o.fingerprint == Some(fp)) && !self.pending.contains(f) {
                return Look::Unchanged;
            }
            if !self.rescan {
                // One file outside a full listing: the same checks.
                if let Err(e) = self.check_one(f, &md) {
                    return Look::Failed(e);
                }
            }
            match read_config_file(f) {
                Ok(t) => Look::Read(t, fp),
                Err(e) => Look::Failed(e),
            }
        });
        let mut texts: Vec<(PathBuf, String, String, Fingerprint)> = Vec::new();
        for (f, look) in candidates.into_iter().zip(looks) {
            let name = f.display().to_string();
            match look {
                Look::Gone => {
                    if self.files.contains_key(&f) {
                        r.files.insert(f, None);
                    }
                }
                Look::Unchanged => {}
                Look::Read(t, fp) => texts.push((f, name, t, fp)),
                Look::Failed(e) => diags.push(&name, 0, None, e),
            }
        }
        // The documents that are new or moved, parsed in parallel (YAML is
        // most of a start-up's cost), then each file diffed in order.
        // Each document with the hash of its text (computed once, here).
        let split: Vec<Vec<(super::load::RawDoc<'_>, u64)>> = texts
            .iter()
            .map(|(_, _, t, _)| {
                split_documents(t)
                    .into_iter()
                    .map(|d| {
                        let h = doc_hash(&d.text);
                        (d, h)
                    })
                    .collect()
            })
            .collect();
        let mut jobs: Vec<(usize, usize)> = Vec::new();
        for (i, docs) in split.iter().enumerate() {
            let known: std::collections::HashSet<(u64, u64)> = self
                .files
                .get(&texts[i].0)
                .map(|o| o.docs.iter().map(|d| (d.first_line, d.hash)).collect())
                .unwrap_or_default();
            for (j, (doc, hash)) in docs.iter().enumerate() {
                if !known.contains(&(doc.first_line, *hash)) {
                    jobs.push((i, j));
                }
            }
        }
        let parsed = crate::par::map(&jobs, |(i, j)| {
            let mut d = Diags::default();
            // A clone is compact: what the parser built has the slack of
            // growing vectors (about half again, for a store that lives as
            // long as the daemon). Cloning on this thread instead, so that
            // the parsers' pages hold only garbage, kept 3 MB less at
            // 10,000 services and cost 80 ms of start-up: not worth it.
            let o = parse_doc(&texts[*i].1, &split[*i][*j].0, &mut d).clone();
            (o, d)
        });
        let mut parsed: BTreeMap<(usize, usize), (Option<Object>, Diags)> =
            jobs.into_iter().zip(parsed).collect();
        for (i, (f, _, _, fp)) in texts.iter().enumerate() {
            let st = self.diff_file(
                i,
                &split[i],
                self.files.get(f),
                *fp,
                &mut parsed,
                &mut r.changes,
                &mut diags,
            );
            r.files.insert(f.clone(), Some(st));
        }
        // Deletions of the documents of files that went away.
        for (f, st) in &r.files {
            if st.is_none()
                && let Some(old) = self.files.get(f)
            {
                for d in &old.docs {
                    r.changes.push(Change::Delete {
                        kind: d.kind,
                        at: d.at.clone(),
                    });
                }
            }
        }
        // The resulting set of files, and its limits (kept as running
        // totals: a one-file change must not walk 10,000 files).
        let mut count = self.files.len();
        let mut total = self.total;
        let mut set_changed = false;
        for (f, st) in &r.files {
            let old = self.files.get(f);
            total -= old.and_then(|o| o.fingerprint).map_or(0, |p| p.len);
            match st {
                Some(s) => {
                    total += s.fingerprint.map_or(0, |p| p.len);
                    if old.is_none() {
                        count += 1;
                        set_changed = true;
                    }
                }
                None => {
                    if old.is_some() {
                        count -= 1;
                        set_changed = true;
                    }
                }
            }
        }
        if count > MAX_FILES {
            diags.push(
                &shown,
                0,
                None,
                format!("{shown} holds more than {MAX_FILES} config files"),
            );
        }
        if count == 0 && diags.is_empty() {
            diags.push(
                &shown,
                0,
                None,
                "no *.yaml or *.yml files found; expected at least one",
            );
        }
        if total > MAX_TOTAL_BYTES {
            diags.push(
                &shown,
                0,
                None,
                format!(
                    "the config adds up to more than {} MiB; split it, or trim it",
                    MAX_TOTAL_BYTES >> 20
                ),
            );
        }
        if !diags.is_empty() {
            return diags.into_result(r);
        }
        if set_changed || self.rescan {
            let mut all: BTreeSet<&PathBuf> = self.files.keys().collect();
            for (f, st) in &r.files {
                if st.is_some() {
                    all.insert(f);
                } else {
                    all.remove(f);
                }
            }
            r.names = Some(all.iter().map(|f| f.display().to_string()).collect());
        }
        r.total = total;
        Ok(r)
    }

    /// A file read on its own (not in a listing): a regular file the
    /// trust policy accepts, in directories it accepts.
    fn check_one(&self, f: &Path, md: &std::fs::Metadata) -> Result<(), String> {
        if !md.is_file() {
            return Err(
                "not a regular file (a FIFO, socket or device?); it is not read".to_string(),
            );
        }
        check_trust(f, self.opts)?;
        let mut dir = f.parent();
        while let Some(d) = dir {
            check_trust(d, self.opts)?;
            if d == self.root || !d.starts_with(&self.root) {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// One file's documents against its accepted state: upserts for new
    /// or moved documents (parsed already, in `parsed` by (file, doc)),
    /// deletes for documents gone.
    #[allow(clippy::too_many_arguments)]
    fn diff_file(
        &self,
        file: usize,
        split: &[(super::load::RawDoc<'_>, u64)],
        old: Option<&FileState>,
        fp: Fingerprint,
        parsed: &mut BTreeMap<(usize, usize), (Option<Object>, Diags)>,
        changes: &mut Vec<Change>,
        diags: &mut Diags,
    ) -> FileState {
        let mut kept: BTreeMap<(u64, u64), &DocState> = old
            .map(|o| o.docs.iter().map(|d| ((d.first_line, d.hash), d)).collect())
            .unwrap_or_default();
        let mut docs = Vec::new();
        let mut now: BTreeSet<(Kind, Pos)> = BTreeSet::new();
        for (j, (doc, hash)) in split.iter().enumerate() {
            let hash = *hash;
            if let Some(d) = kept.remove(&(doc.first_line, hash)) {
                now.insert((d.kind, d.at.clone()));
                docs.push(d.clone());
                continue;
            }
            let Some((o, d)) = parsed.remove(&(file, j)) else {
                continue;
            };
            diags.errors.extend(d.errors);
            let Some(o) = o else {
                continue;
            };
            let (kind, at) = (o.kind(), Pos::of(o.origin()));
            now.insert((kind, at.clone()));
            docs.push(DocState {
                first_line: doc.first_line,
                hash,
                kind,
                at,
            });
            changes.push(Change::Upsert(Box::new(o)));
        }
        for d in kept.values() {
            if !now.contains(&(d.kind, d.at.clone())) {
                changes.push(Change::Delete {
                    kind: d.kind,
                    at: d.at.clone(),
                });
            }
        }
        docs.shrink_to_fit();
        FileState {
            fingerprint: Some(fp),
            docs,
        }
    }

    /// The store accepted `r`'s changes: record the files as read.
    pub fn commit(&mut self, r: &mut Reading) {
        for (f, st) in std::mem::take(&mut r.files) {
            match st {
                Some(s) => {
                    self.files.insert(f, s);
                }
                None => {
                    self.files.remove(&f);
                }
            }
        }
        self.pending.clear();
        self.rescan = false;
        self.total = r.total;
    }
}
