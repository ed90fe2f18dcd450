//! Gloo's API, field by field (issue 14, item 12). The README's conformance
//! table has a row for every field of every Gloo kind routerd reads: what
//! routerd does with it (`supported`, `partial`, `notice`: parsed and not
//! applied, with a notice that says so; `error`: parsed and refused with an
//! error that says why) and the fields of Gloo's API routerd does not have
//! (`unknown`: refused as an unknown field, naming it).
//!
//! This test walks the model as the loader sees it: every struct denies
//! unknown fields, and the loader's error for one lists the fields the
//! struct has. Probing `__probe__` at `spec`, then inside every field that
//! turns out to be a struct (or a list of structs), finds every field
//! path. The table must list exactly those (and `unknown` rows must be
//! refused as unknown fields): a field added to the model without a row,
//! or a row for a field that is gone, fails here.
use std::collections::BTreeMap;

use router_user::config::{Overrides, load_str};
use serde_json::{Value, json};

/// The Gloo kinds routerd reads.
const KINDS: &[(&str, &str)] = &[
    ("RouteTable", "networking.gloo.solo.io/v2"),
    ("VirtualDestination", "networking.gloo.solo.io/v2"),
    ("VirtualGateway", "networking.gloo.solo.io/v2"),
    ("ExternalService", "networking.gloo.solo.io/v2"),
    ("ExternalEndpoint", "networking.gloo.solo.io/v2"),
    ("FailoverPolicy", "resilience.policy.gloo.solo.io/v2"),
    (
        "OutlierDetectionPolicy",
        "resilience.policy.gloo.solo.io/v2",
    ),
    (
        "ActiveHealthCheckPolicy",
        "resilience.policy.gloo.solo.io/v2",
    ),
    ("RetryTimeoutPolicy", "resilience.policy.gloo.solo.io/v2"),
    ("FaultInjectionPolicy", "resilience.policy.gloo.solo.io/v2"),
    (
        "HeaderManipulationPolicy",
        "trafficcontrol.policy.gloo.solo.io/v2",
    ),
    ("MirrorPolicy", "trafficcontrol.policy.gloo.solo.io/v2"),
    ("CORSPolicy", "security.policy.gloo.solo.io/v2"),
    ("AccessLogPolicy", "observability.policy.gloo.solo.io/v2"),
];

const PROBE: &str = "__probe__";

/// `spec` with `leaf` at `path` (`http[]` is a list of one element).
fn nest(path: &[String], leaf: Value) -> Value {
    match path.split_first() {
        None => leaf,
        Some((seg, rest)) => {
            let inner = nest(rest, leaf);
            match seg.strip_suffix("[]") {
                Some(name) => json!({ name: [inner] }),
                None => json!({ seg.as_str(): inner }),
            }
        }
    }
}

/// The loader's errors for a `kind` document whose spec is `spec`.
fn errors(kind: &str, api: &str, spec: Value) -> Vec<String> {
    let doc = format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: probe, namespace: ns}}\nspec: {spec}\n"
    );
    match load_str("probe.yaml", &doc, &Overrides::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(|d| d.to_string()).collect(),
    }
}

/// The fields of the struct at `path`, if a struct is there (the loader
/// names them when it meets a field the struct does not have).
fn struct_fields(kind: &str, api: &str, path: &[String]) -> Option<Vec<String>> {
    let errs = errors(kind, api, nest(path, json!({ PROBE: 1 })));
    let marker = format!("unknown field `{PROBE}`, ");
    let rest = errs
        .iter()
        .find_map(|e| e.split_once(&marker).map(|(_, r)| r.to_string()))?;
    let rest = rest.trim();
    if rest.starts_with("there are no fields") || rest == "expected one of" {
        return Some(Vec::new());
    }
    let list = rest
        .strip_prefix("expected one of ")
        .or_else(|| rest.strip_prefix("expected "))?;
    Some(
        list.split(", ")
            .map(|f| f.trim().trim_matches('`').to_string())
            .filter(|f| !f.is_empty())
            .collect(),
    )
}

/// Every field path of `kind` as the table names it
/// (`spec.http.matchers.uri`), with the path as a document nests it
/// (`http[]`, `matchers[]`, `uri`), walked from `spec`.
fn walk(kind: &str, api: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        assert!(path.len() < 10, "{kind}: too deep at {path:?}");
        let fields = struct_fields(kind, api, &path)
            .unwrap_or_else(|| panic!("{kind}: no struct at spec.{}", path.join(".")));
        for f in fields {
            let mut child = path.clone();
            child.push(f.clone());
            let name = display(&child);
            let mut list = path.clone();
            list.push(format!("{f}[]"));
            let nested = if struct_fields(kind, api, &child).is_some() {
                child
            } else if struct_fields(kind, api, &list).is_some() {
                list
            } else {
                child
            };
            out.insert(name, nested.clone());
            if out.len() < 1000 && nested_is_struct(kind, api, &nested) {
                todo.push(nested);
            }
        }
    }
    out
}

fn nested_is_struct(kind: &str, api: &str, path: &[String]) -> bool {
    struct_fields(kind, api, path).is_some()
}

/// `spec.a.b[].c` without the `[]`: how the table names a field.
fn display(path: &[String]) -> String {
    let parts: Vec<&str> = path.iter().map(|s| s.trim_end_matches("[]")).collect();
    format!("spec.{}", parts.join("."))
}

/// A row of the table.
#[derive(Debug)]
struct Row {
    kind: String,
    field: String,
    status: String,
    line: usize,
}

const BEGIN: &str = "<!-- conformance:begin -->";
const END: &str = "<!-- conformance:end -->";
const STATUSES: [&str; 5] = ["supported", "partial", "notice", "error", "unknown"];

/// The README's table rows (`| Kind | spec.field | status | notes |`).
fn rows() -> Vec<Row> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find(BEGIN)
        .expect("README has the conformance table markers");
    let end = text
        .find(END)
        .expect("README has the conformance table end marker");
    let first_line = text[..start].lines().count() + 1;
    let mut out = Vec::new();
    for (i, l) in text[start..end].lines().enumerate() {
        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
        if cells.len() < 5 || cells[1] == "kind" || cells[1].starts_with("---") {
            continue;
        }
        let field = cells[2].trim_matches('`').to_string();
        out.push(Row {
            kind: cells[1].to_string(),
            field,
            status: cells[3].to_string(),
            line: first_line + i,
        });
    }
    out
}

#[test]
fn the_conformance_table_lists_every_field_of_the_model_and_nothing_else() {
    let rows = rows();
    let mut problems = Vec::new();
    for r in &rows {
        if !STATUSES.contains(&r.status.as_str()) {
            problems.push(format!(
                "README.md:{}: {} {}: status `{}` is not one of {STATUSES:?}",
                r.line, r.kind, r.field, r.status
            ));
        }
        if !KINDS.iter().any(|(k, _)| *k == r.kind) {
            problems.push(format!(
                "README.md:{}: kind `{}` is not one routerd reads",
                r.line, r.kind
            ));
        }
    }
    for (kind, api) in KINDS {
        let model = walk(kind, api);
        let table: BTreeMap<&str, &Row> = rows
            .iter()
            .filter(|r| r.kind == *kind)
            .map(|r| (r.field.as_str(), r))
            .collect();
        for f in model.keys() {
            match table.get(f.as_str()) {
                None => problems.push(format!(
                    "{kind} {f}: in the model, not in the README's conformance table (add a row)"
                )),
                Some(r) if r.status == "unknown" => problems.push(format!(
                    "README.md:{}: {kind} {f} is marked unknown, but the model has it",
                    r.line
                )),
                Some(_) => {}
            }
        }
        for (f, r) in &table {
            if r.status == "unknown" {
                // Gloo's field routerd does not have: refused, by name.
                let (parent, name) = f.rsplit_once('.').unwrap_or(("spec", f));
                let mut path = match parent {
                    "spec" => Vec::new(),
                    p => match model.get(p) {
                        Some(raw) => raw.clone(),
                        None => {
                            problems.push(format!(
                                "README.md:{}: {kind} {f}: its parent {p} is not in the model",
                                r.line
                            ));
                            continue;
                        }
                    },
                };
                path.push(name.to_string());
                let errs = errors(kind, api, nest(&path, json!({})));
                let want = format!("unknown field `{name}`");
                if !errs.iter().any(|e| e.contains(&want)) {
                    problems.push(format!(
                        "README.md:{}: {kind} {f} is marked unknown, but loading it does not say \
                         `{want}`: {errs:?}",
                        r.line
                    ));
                }
            } else if !model.contains_key(*f) {
                problems.push(format!(
                    "README.md:{}: {kind} {f}: no such field in the model (remove the row or \
                     mark it unknown)",
                    r.line
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the conformance table and the model differ:\n{}",
        problems.join("\n")
    );
}

/// Prints the model's field paths (run with `--nocapture` when adding
/// rows): `cargo test -p router-user --test conformance -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_the_model() {
    for (kind, api) in KINDS {
        for f in walk(kind, api).keys() {
            println!("| {kind} | `{f}` |  |  |");
        }
    }
}
