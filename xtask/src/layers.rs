//! The layer rule of router-user (ARCHITECTURE.md, "Layers"): a module may
//! use modules of lower layers only, never a module of its own layer or a
//! higher one. `cargo xtask lint` checks every `crate::` and `super::` path
//! in `router-user/src` against this table, so the import graph between
//! modules stays a DAG that points one way: config -> compile -> plan ->
//! runtime -> daemon -> cli.
use std::path::{Path, PathBuf};

/// Lowest first. Each entry: the top-level modules of `router-user/src` in
/// that layer (peers: they may not use each other).
pub const LAYERS: &[&[&str]] = &[
    // Host plumbing with no knowledge of routing.
    // Fixtures: YAML shapes only, no knowledge of the code.
    &["limits", "par", "sockdiag", "telemetry", "testing"],
    &["netns"],
    // The plan: plain values, the seam between config and kernel.
    &["plan", "events"],
    // The state directory, and the workloads hand-off beside it.
    &["state", "workload"],
    // Config: load, validate, resolve (routes and selectors included).
    &["config"],
    &["compile"],
    // The config side, incremental: source, store, units.
    &["control", "kvstore"],
    // Runtime: the datapath, then what serves on top of it.
    &["datapath"],
    &["health"],
    &["proxy", "dns", "reap", "metrics"],
    &["daemon"],
    // Reading and rendering for people.
    &["inspect", "explain", "report"],
    &["cli"],
];

/// The layer of a top-level module, if the table knows it.
pub fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Top-level modules named by `crate::` or `super::` paths in `text`, a
/// file whose module path is `module` (e.g. `["proxy", "handler"]`; a
/// `mod.rs` has its directory's path). Comments are skipped.
pub fn referenced(text: &str, module: &[String]) -> Vec<String> {
    // Whole text, comments dropped: a `use crate::{...}` group spans lines.
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::").or_else(|| rest.find("super::")) {
        // Take whichever comes first.
        let (at, is_crate) = match (rest.find("crate::"), rest.find("super::")) {
            (Some(c), Some(s)) if s < c => (s, false),
            (Some(c), _) => (c, true),
            (None, Some(s)) => (s, false),
            (None, None) => unreachable!("found one above: {i}"),
        };
        // Not part of a longer identifier (`$crate::`, `mycrate::`).
        let before = rest[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            rest = &rest[at + 7..];
            continue;
        }
        let mut tail = &rest[at..];
        let mut depth_up = 0usize;
        if is_crate {
            tail = &tail[7..];
            depth_up = usize::MAX;
        } else {
            while let Some(t) = tail.strip_prefix("super::") {
                depth_up += 1;
                tail = t;
            }
        }
        // `super::` from inside a top-level module stays in it unless it
        // climbs past the module's depth.
        let stays = depth_up != usize::MAX && depth_up < module.len();
        if !stays {
            out.extend(first_idents(tail));
        }
        rest = &rest[at + 7..];
    }
    out.sort();
    out.dedup();
    out
}

/// The leading identifier of a path, or each item's of a `{...}` group.
fn first_idents(tail: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = tail.strip_prefix('{') else {
        return vec![ident(tail)]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
    };
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.into_iter()
        .filter(|s| !s.is_empty() && s != "self")
        .collect()
}

/// A use of a module the rule forbids.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    pub from: String,
    pub to: String,
    pub why: String,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            rs_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// Check every file under `src`.
pub fn check(src: &Path) -> anyhow::Result<Vec<Violation>> {
    let mut files = Vec::new();
    rs_files(src, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src)?;
        let mut module: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        let Some(top) = module.first().cloned() else {
            continue;
        };
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(mine) = layer_of(&top) else {
            out.push(Violation {
                file: f.clone(),
                from: top.clone(),
                to: String::new(),
                why: format!(
                    "module `{top}` is in no layer: add it to xtask/src/layers.rs and to \
                     ARCHITECTURE.md"
                ),
            });
            continue;
        };
        let text = std::fs::read_to_string(&f)?;
        for used in referenced(&text, &module) {
            if used == top {
                continue;
            }
            let why = match layer_of(&used) {
                None => continue, // not a module (a macro or a crate-root item)
                Some(l) if l < mine => continue,
                Some(l) if l == mine => format!("`{top}` and `{used}` are peers (layer {l})"),
                Some(l) => {
                    format!("`{top}` (layer {mine}) uses `{used}` (layer {l}), a higher layer")
                }
            };
            out.push(Violation {
                file: f.clone(),
                from: top.clone(),
                to: used,
                why,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &[&str]) -> Vec<String> {
        path.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_paths_groups_and_super_escapes() {
        let text = "use crate::{config::{self, Overrides}, plan::Plan};\n\
                    use super::engine::Req;\n\
                    use super::super::netns::Sockets;\n\
                    let x = crate::limits::fd_budget(3); // crate::cli::main\n\
                    macro_rules! m { () => { $crate::x } }\n";
        assert_eq!(
            referenced(text, &m(&["proxy", "handler"])),
            vec!["config", "limits", "netns", "plan"]
        );
        // From a top-level module's own file, `super::` is the crate root.
        assert_eq!(
            referenced("use super::plan::X;", &m(&["dns"])),
            vec!["plan"]
        );
    }

    /// rustfmt writes long groups over several lines: each item counts.
    #[test]
    fn groups_over_several_lines_count() {
        let text = "use crate::{\n    config::Overrides, // crate::cli\n    datapath::{self, Pins},\n    explain,\n};\n";
        assert_eq!(
            referenced(text, &m(&["daemon"])),
            vec!["config", "datapath", "explain"]
        );
    }

    #[test]
    fn every_layer_is_distinct() {
        let mut all: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a module in two layers");
    }
}
