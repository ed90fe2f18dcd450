//! Reading config: a file or a directory (recursively, `*.yaml`/`*.yml`, in
//! name order) of multi-document YAML. Each document is dispatched by `kind`
//! and parsed strictly; every error carries the file and the line.
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter};

use super::{
    EndpointSliceBody, Resource, Resources, diag::Diags, expected_api, model::*, store::Object,
    supported_kinds,
};
use crate::plan::Origin;

/// A document of a file, with the 1-based line its text starts on. An
/// item of a `List` is a document of its own, its text moved left by
/// `indent` columns (the `- ` and its indentation).
pub(super) struct RawDoc<'a> {
    pub text: std::borrow::Cow<'a, str>,
    pub first_line: u64,
    pub indent: u64,
}

/// Split a YAML stream on `---` / `...` marker lines. Markers must start at
/// column 0 (block scalars cannot contain an unindented line, so a column-0
/// `---` is always a document boundary).
pub(super) fn split_documents(text: &str) -> Vec<RawDoc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (line_no, line) in (1u64..).zip(text.split_inclusive('\n')) {
        let trimmed = line.trim_end_matches(['\n', '\r']);
        let is_marker = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t")
            || trimmed == "...";
        if is_marker {
            docs.push(RawDoc {
                text: text[start..offset].into(),
                first_line: start_line,
                indent: 0,
            });
            // Content after `--- ` on the same line belongs to the next document;
            // blank it out by starting after the marker line.
            start = offset + line.len();
            start_line = line_no + 1;
        }
        offset += line.len();
    }
    docs.push(RawDoc {
        text: text[start..].into(),
        first_line: start_line,
        indent: 0,
    });
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs.into_iter().flat_map(list_items).collect()
}

/// A `kind: List` document (what `kubectl get ... -o yaml` prints: `items`
/// in block style, each a whole object) as one document per item, each
/// keeping its lines; any other document as it is. A List routerd cannot
/// split by lines (flow style) stays whole, and `parse_doc` refuses it
/// with its line and what to write instead.
fn list_items(doc: RawDoc<'_>) -> Vec<RawDoc<'_>> {
    let text: &str = match &doc.text {
        std::borrow::Cow::Borrowed(t) => t,
        std::borrow::Cow::Owned(_) => return vec![doc],
    };
    // A key of the List itself (`kind:`, `metadata:`): column 0, not an
    // item's `-` (kubectl prints items at column 0).
    let top = |l: &str| !l.is_empty() && !l.starts_with([' ', '\t', '#', '\r', '\n', '-']);
    let is_list = text.lines().any(|l| {
        l.strip_prefix("kind:")
            .and_then(plain_value)
            .is_some_and(|k| k == "List")
    });
    if !is_list {
        return vec![doc];
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(at) = lines.iter().position(|l| {
        l.trim_end()
            .strip_prefix("items:")
            .is_some_and(|v| v.trim().is_empty())
    }) else {
        // `items: []` holds nothing; anything else on the line is flow style.
        let empty = lines.iter().any(|l| {
            l.trim_end()
                .strip_prefix("items:")
                .is_some_and(|v| v.trim() == "[]")
        });
        return if empty { Vec::new() } else { vec![doc] };
    };
    let end = (at + 1..lines.len())
        .find(|i| top(lines[*i]))
        .unwrap_or(lines.len());
    let block = &lines[at + 1..end];
    // The items' `-` column: the first content line's.
    let Some(dash) = block
        .iter()
        .map(|l| l.trim_end())
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .and_then(|l| {
            let n = l.len() - l.trim_start().len();
            let rest = &l[n..];
            (rest == "-" || rest.starts_with("- ")).then_some(n)
        })
    else {
        return vec![doc];
    };
    let starts_item = |l: &str| {
        let l = l.trim_end();
        l.len() > dash
            && l[..dash].bytes().all(|b| b == b' ')
            && (l[dash..] == *"-" || l[dash..].starts_with("- "))
    };
    let mut items = Vec::new();
    let mut i = 0;
    while i < block.len() {
        if !starts_item(block[i]) {
            i += 1;
            continue;
        }
        let first = i;
        i += 1;
        while i < block.len() && !starts_item(block[i]) {
            i += 1;
        }
        // Every line moved left by the item's indentation and its `- `
        // (a shorter line, a blank or a comment, loses its spaces only); a
        // `-` alone on its line leaves that line empty.
        let cut = dash + 2;
        let moved: String = block[first..i]
            .iter()
            .enumerate()
            .map(|(k, l)| match l.get(cut..) {
                Some(rest) if k == 0 && !rest.is_empty() => rest,
                _ if k == 0 => "\n",
                _ => &l[(l.len() - l.trim_start_matches(' ').len()).min(cut)..],
            })
            .collect();
        items.push(RawDoc {
            text: moved.into(),
            first_line: doc.first_line + (at + 1 + first) as u64,
            indent: cut as u64,
        });
    }
    items
}

/// Line of the first non-blank, non-comment line of a document.
fn content_line(doc: &RawDoc<'_>) -> u64 {
    for (i, l) in doc.text.lines().enumerate() {
        let t = l.trim();
        if !t.is_empty() && !t.starts_with('#') {
            return doc.first_line + i as u64;
        }
    }
    doc.first_line
}

/// Limits on what the config path may hold (a file the daemon reads is
/// memory it spends).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
pub const MAX_TOTAL_BYTES: u64 = 512 << 20;
pub const MAX_FILES: usize = 100_000;

/// How much the daemon trusts the config path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Refuse files and directories that someone other than root (or this
    /// process's user) owns or could write: whoever can write the config
    /// decides where every connection of the cgroup goes.
    pub trusted_only: bool,
}

pub use crate::limits::untrusted;

pub(super) fn check_trust(p: &Path, opts: LoadOptions) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !opts.trusted_only {
        return Ok(());
    }
    let md = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match untrusted(md.uid(), md.mode(), me) {
        Some(why) => Err(format!(
            "refusing {}: {why}. Whoever can write the config decides where every connection \
             of the cgroup goes: `chown root` it and `chmod go-w` it, or pass \
             --allow-untrusted-config to accept it anyway",
            p.display()
        )),
        None => Ok(()),
    }
}

/// Files under `path`, sorted. Only regular files are config (a FIFO or a
/// device named `*.yaml` is an error, never opened); with `trusted_only`
/// every file and directory must pass [`untrusted`].
pub fn config_files(path: &Path, opts: LoadOptions) -> Result<Vec<PathBuf>, String> {
    let io = |e: std::io::Error| {
        format!(
            "cannot read config {}: {e}. Expected a YAML file or a directory of *.yaml files",
            path.display()
        )
    };
    let md = std::fs::metadata(path).map_err(io)?;
    if !md.is_dir() {
        if !md.is_file() {
            return Err(format!(
                "{} is not a regular file or a directory",
                path.display()
            ));
        }
        // The directory holding it could swap it for another.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            check_sticky_parent(parent, opts)?;
        }
        check_trust(path, opts)?;
        return Ok(vec![path.to_path_buf()]);
    }
    check_trust(path, opts)?;
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(io)? {
            let p = e.map_err(io)?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue; // editor swap files, hidden dirs
            }
            let md = std::fs::metadata(&p).map_err(io)?;
            if md.is_dir() {
                check_trust(&p, opts)?;
                stack.push(p);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                if !md.is_file() {
                    return Err(format!(
                        "{} is not a regular file (a FIFO, socket or device?); it is not read",
                        p.display()
                    ));
                }
                check_trust(&p, opts)?;
                out.push(p);
                if out.len() > MAX_FILES {
                    return Err(format!(
                        "{} holds more than {MAX_FILES} config files",
                        path.display()
                    ));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A single config file's directory: others may write into it only if it
/// is sticky (they then cannot replace root's file), like /tmp.
fn check_sticky_parent(dir: &Path, opts: LoadOptions) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !opts.trusted_only {
        return Ok(());
    }
    let md = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if md.mode() & 0o1000 != 0 {
        return Ok(());
    }
    check_trust(dir, opts)
}

/// Read one config file: opened without blocking (a FIFO swapped in after
/// the listing cannot hang the daemon), checked to be a regular file, and
/// read up to [`MAX_FILE_BYTES`].
pub(super) fn read_config_file(p: &Path) -> Result<String, String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| format!("cannot read file: {e}"))?;
    let md = f.metadata().map_err(|e| format!("cannot read file: {e}"))?;
    if !md.is_file() {
        return Err("not a regular file; it is not read".into());
    }
    if md.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes: more than the {} MiB a config file may have",
            md.len(),
            MAX_FILE_BYTES >> 20
        ));
    }
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "more than the {} MiB a config file may have",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(text)
}

fn saphyr_error(
    diags: &mut Diags,
    file: &str,
    doc: &RawDoc<'_>,
    resource: Option<String>,
    e: &serde_saphyr::Error,
) {
    let msg = DefaultMessageFormatter.format_message(e).into_owned();
    let (line, column) = match e.location() {
        Some(l) if l.line() > 0 => (doc.first_line + l.line() - 1, l.column() + doc.indent),
        _ => (content_line(doc), 0),
    };
    diags.errors.push(super::diag::Diagnostic {
        file: file.to_string(),
        line,
        column,
        resource,
        message: msg.escape_debug().to_string().replace("\\'", "'"),
    });
}

struct DocCtx<'a, 'b> {
    file: &'a str,
    doc: &'a RawDoc<'b>,
    resource: String,
}

fn parse_typed<T: DeserializeOwned>(cx: &DocCtx<'_, '_>, diags: &mut Diags) -> Option<T> {
    match serde_saphyr::from_str::<T>(&cx.doc.text) {
        Ok(v) => Some(v),
        Err(e) => {
            saphyr_error(diags, cx.file, cx.doc, Some(cx.resource.clone()), &e);
            None
        }
    }
}

/// Where the object is, sharing its name with `meta` (and its namespace,
/// interned in `meta` too).
fn origin(cx: &DocCtx<'_, '_>, kind: &str, meta: &mut ObjectMeta) -> Origin {
    use super::types::intern;
    let namespace = intern(meta.namespace.as_deref().unwrap_or("default"));
    if meta.namespace.is_some() {
        meta.namespace = Some(namespace.clone());
    }
    Origin {
        kind: intern(kind),
        namespace,
        name: meta.name.clone(),
        file: intern(cx.file),
        line: content_line(cx.doc),
    }
}

fn resource<S>(cx: &DocCtx<'_, '_>, mut d: Doc<S>) -> Resource<S> {
    Resource {
        origin: origin(cx, &d.kind, &mut d.metadata),
        meta: d.metadata,
        spec: d.spec,
        line_base: cx.doc.first_line - 1,
    }
}

macro_rules! parse_kind {
    ($($kind:ident, $api:ident, $field:ident, $spec:ty, $parse:ident;)*) => {
        /// Parse a document of `kind` (a kind [`expected_api`] knows).
        fn parse_kind(kind: &str, cx: &DocCtx<'_, '_>, diags: &mut Diags) -> Option<Object> {
            match kind {
                $(stringify!($kind) => $parse::<$spec>(cx, diags).map(Object::$kind),)*
                _ => None,
            }
        }
    };
}
crate::for_each_kind!(parse_kind);

/// A document whose body is under `spec`.
fn parse_spec<S: DeserializeOwned>(cx: &DocCtx<'_, '_>, diags: &mut Diags) -> Option<Resource<S>> {
    parse_typed::<Doc<S>>(cx, diags).map(|d| resource(cx, d))
}

/// A Service: by the block fast path when it can, else by serde.
#[expect(
    clippy::extra_unused_type_parameters,
    reason = "the kind table calls every parser as `parse::<Spec>`"
)]
fn parse_service<S>(cx: &DocCtx<'_, '_>, diags: &mut Diags) -> Option<Resource<ServiceSpec>> {
    match super::block::service(&cx.doc.text) {
        Some(d) => Some(resource(cx, d)),
        None => parse_spec::<ServiceSpec>(cx, diags),
    }
}

/// A Secret: its fields are at the top level.
#[expect(
    clippy::extra_unused_type_parameters,
    reason = "the kind table calls every parser as `parse::<Spec>`"
)]
fn parse_secret<S>(cx: &DocCtx<'_, '_>, diags: &mut Diags) -> Option<Resource<SecretBody>> {
    let mut d = parse_typed::<SecretDoc>(cx, diags)?;
    Some(Resource {
        origin: origin(cx, &d.kind, &mut d.metadata),
        line_base: cx.doc.first_line - 1,
        meta: d.metadata,
        spec: SecretBody {
            type_: d.type_,
            data: d.data,
            string_data: d.string_data,
        },
    })
}

/// A Pod: only its metadata is kept.
#[expect(
    clippy::extra_unused_type_parameters,
    reason = "the kind table calls every parser as `parse::<Spec>`"
)]
fn parse_pod<S>(cx: &DocCtx<'_, '_>, diags: &mut Diags) -> Option<Resource<PodBody>> {
    let mut d = parse_typed::<PodDoc>(cx, diags)?;
    let mut ips: Vec<std::net::IpAddr> = d
        .status
        .iter()
        .flat_map(|s| s.pod_ip.into_iter().chain(s.pod_ips.iter().map(|p| p.ip)))
        .collect();
    ips.sort();
    ips.dedup();
    Some(Resource {
        origin: origin(cx, &d.kind, &mut d.metadata),
        line_base: cx.doc.first_line - 1,
        meta: d.metadata,
        spec: PodBody { ips },
    })
}

/// An EndpointSlice: its fields are at the top level.
#[expect(
    clippy::extra_unused_type_parameters,
    reason = "the kind table calls every parser as `parse::<Spec>`"
)]
fn parse_endpoint_slice<S>(
    cx: &DocCtx<'_, '_>,
    diags: &mut Diags,
) -> Option<Resource<EndpointSliceBody>> {
    let mut d = match super::block::endpoint_slice(&cx.doc.text) {
        Some(d) => d,
        None => parse_typed::<EndpointSliceDoc>(cx, diags)?,
    };
    let origin = origin(cx, &d.kind, &mut d.metadata);
    let line_base = cx.doc.first_line - 1;
    let mut zones = Vec::new();
    let endpoints = d
        .endpoints
        .into_iter()
        .map(|ep| {
            let line = match ep.line() {
                0 => origin.line,
                l => line_base + l,
            };
            super::SliceEndpoint::new(ep.value, line, &mut zones)
        })
        .collect();
    Some(Resource {
        origin,
        line_base,
        meta: d.metadata,
        spec: EndpointSliceBody {
            address_type: d.address_type,
            endpoints,
            ports: d.ports,
        },
    })
}

/// Parse one file's text into `cfg`. `file` is how errors name it.
pub fn load_text(file: &str, text: &str, cfg: &mut Resources, diags: &mut Diags) {
    for doc in split_documents(text) {
        if let Some(o) = parse_doc(file, &doc, diags) {
            cfg.upsert(o);
        }
    }
}

/// A plain scalar as it stands on a line (quotes removed), or `None` when
/// it needs a YAML parser (flow collections, escapes, anchors...).
fn plain_value(v: &str) -> Option<String> {
    let v = v.trim();
    let v = match v.find(" #") {
        Some(i) => v[..i].trim_end(),
        None => v,
    };
    if v.is_empty() || v.contains(['{', '[', '&', '*', '!', '|', '>', '\\', '#']) {
        return None;
    }
    let unquoted = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')));
    match unquoted {
        Some(u) if !u.contains(['"', '\'']) => Some(u.to_string()),
        Some(_) => None,
        None if !v.contains(['"', '\'']) => Some(v.to_string()),
        None => None,
    }
}

/// `kind`, `apiVersion` and `metadata.name`/`namespace` read off a block
/// style document's lines (top-level keys start at column 0; metadata's at
/// column 2), so that dispatching by kind does not parse the document
/// twice. `None` when the document is written otherwise: then YAML parses
/// the header.
fn quick_header(text: &str) -> Option<Header> {
    let (mut kind, mut api, mut name, mut ns) = (None, None, None, None);
    let mut in_meta = false;
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            in_meta = false;
            if let Some(v) = line.strip_prefix("kind:") {
                kind = Some(plain_value(v)?);
            } else if let Some(v) = line.strip_prefix("apiVersion:") {
                api = Some(plain_value(v)?);
            } else if let Some(v) = line.strip_prefix("metadata:") {
                if !v.trim().is_empty() {
                    return None; // flow style
                }
                in_meta = true;
            }
        } else if in_meta && !line.starts_with("   ") {
            if let Some(v) = line.strip_prefix("  name:") {
                name = Some(plain_value(v)?);
            } else if let Some(v) = line.strip_prefix("  namespace:") {
                ns = Some(plain_value(v)?);
            }
        }
    }
    Some(Header {
        kind: Some(kind?),
        api_version: Some(api?),
        metadata: Some(HeaderMeta {
            name: Some(name?),
            namespace: ns,
        }),
    })
}

/// Parse one document: dispatched by `kind`, checked against its
/// apiVersion, parsed strictly. `None` (with the reason in `diags`) if it
/// is not a resource routerd reads.
pub(super) fn parse_doc(file: &str, doc: &RawDoc<'_>, diags: &mut Diags) -> Option<Object> {
    let header: Header = match quick_header(&doc.text) {
        Some(h) => h,
        None => match serde_saphyr::from_str(&doc.text) {
            Ok(h) => h,
            Err(e) => {
                saphyr_error(diags, file, doc, None, &e);
                return None;
            }
        },
    };
    let line = content_line(doc);
    let Some(kind) = header.kind.clone() else {
        diags.push(
            file,
            line,
            None,
            format!(
                "document has no `kind`; expected one of: {}",
                supported_kinds()
            ),
        );
        return None;
    };
    let name = header.metadata.as_ref().and_then(|m| m.name.clone());
    let ns = header
        .metadata
        .as_ref()
        .and_then(|m| m.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let resource_name = format!("{kind} {ns}/{}", name.as_deref().unwrap_or("<unnamed>"));
    if kind == "List" {
        // Block-style Lists were split into their items already.
        diags.push(
            file,
            line,
            Some(resource_name),
            "a List is read item by item when its `items` are in block style, as \
             `kubectl get -o yaml` prints them; these are not: write each item as \
             `- apiVersion: ...` on lines of its own, or each resource as a document",
        );
        return None;
    }
    let Some(api) = expected_api(&kind) else {
        diags.push(
            file,
            line,
            Some(resource_name),
            format!(
                "unsupported kind `{kind}`; supported kinds are: {}",
                supported_kinds()
            ),
        );
        return None;
    };
    match header.api_version.as_deref() {
        Some(v) if v == api => {}
        other => {
            diags.push(
                file,
                line,
                Some(resource_name),
                format!(
                    "apiVersion is {}, expected `{api}` for kind {kind}",
                    other
                        .map(|v| format!("`{v}`"))
                        .unwrap_or_else(|| "missing".into())
                ),
            );
            return None;
        }
    }
    if name.as_deref().is_none_or(str::is_empty) {
        diags.push(file, line, Some(resource_name), "metadata.name is required");
        return None;
    }
    let cx = DocCtx {
        file,
        doc,
        resource: resource_name,
    };
    parse_kind(&kind, &cx, diags)
}

/// One document of a config path, parsed, with its text: what `routerd
/// publish` writes, one key each.
pub struct Document {
    pub object: Object,
    /// Its file's path relative to the config path (a single file: its name).
    pub rel: String,
    pub first_line: u64,
    pub indent: u64,
    pub text: String,
}

/// Every document under `path`, read and parsed as the file source reads
/// them, with the files' names; any error fails the whole.
pub fn documents(
    path: &Path,
    opts: LoadOptions,
) -> Result<(Vec<Document>, Vec<String>), super::ConfigError> {
    let mut diags = Diags::default();
    let shown = path.display().to_string();
    let files = match config_files(path, opts) {
        Ok(f) => f,
        Err(e) => {
            diags.push(&shown, 0, None, e);
            return diags.into_result(Default::default());
        }
    };
    let mut out = Vec::new();
    let mut names = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        let text = match read_config_file(f) {
            Ok(t) => t,
            Err(e) => {
                diags.push(&name, 0, None, e);
                continue;
            }
        };
        let rel = if path.is_dir() {
            f.strip_prefix(path).unwrap_or(f).display().to_string()
        } else {
            f.file_name()
                .map_or(name.clone(), |n| n.to_string_lossy().into_owned())
        };
        for doc in split_documents(&text) {
            if let Some(object) = parse_doc(&name, &doc, &mut diags) {
                out.push(Document {
                    object,
                    rel: rel.clone(),
                    first_line: doc.first_line,
                    indent: doc.indent,
                    text: doc.text.into_owned(),
                });
            }
        }
        names.push(name);
    }
    if files.is_empty() {
        diags.push(
            &shown,
            0,
            None,
            "no *.yaml or *.yml files found; expected at least one",
        );
    }
    diags.into_result((out, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_owned_files_nobody_else_can_write_are_trusted() {
        assert_eq!(untrusted(0, 0o100644, 0), None);
        assert_eq!(
            untrusted(1000, 0o100644, 1000),
            None,
            "the daemon's own user"
        );
        assert!(untrusted(1000, 0o100644, 0).unwrap().contains("uid 1000"));
        assert!(untrusted(0, 0o100664, 0).unwrap().contains("its group"));
        assert!(untrusted(0, 0o040777, 0).unwrap().contains("everyone"));
    }

    #[test]
    fn block_headers_are_read_off_the_lines_and_others_parsed() {
        let h = quick_header(
            "# c\napiVersion: v1\nkind: Service\nmetadata:\n  name: \"web\"\n  labels:\n    name: x\n  namespace: t\nspec: {}\n",
        )
        .unwrap();
        assert_eq!(h.kind.as_deref(), Some("Service"));
        assert_eq!(h.api_version.as_deref(), Some("v1"));
        let m = h.metadata.unwrap();
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref()),
            (Some("web"), Some("t"))
        );
        // Flow style, anchors, a missing name: YAML decides.
        assert!(quick_header("kind: Service\napiVersion: v1\nmetadata: {name: a}\n").is_none());
        assert!(quick_header("kind: &k Service\napiVersion: v1\nmetadata:\n  name: a\n").is_none());
        assert!(quick_header("kind: Service\napiVersion: v1\nmetadata:\n  labels: {}\n").is_none());
    }

    #[test]
    fn splits_documents_and_tracks_lines() {
        let text = "# c\n---\nkind: A\n---\n\n---   \n--- # x\nkind: B\nmetadata: {}\n...\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(content_line(&docs[0]), 3);
        assert_eq!(content_line(&docs[1]), 8);
        let one = split_documents("kind: A\n");
        assert_eq!(one.len(), 1);
        assert_eq!(content_line(&one[0]), 1);
    }
}
