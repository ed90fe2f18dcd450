//! The README names the binaries' flags and defaults as they are: every
//! `--flag` it mentions is one of `routerd`'s or `cargo xtask`'s (what
//! their `--help` prints), and every "`--flag` (default `value`" is that
//! flag's default.
use std::collections::BTreeMap;

use clap::CommandFactory;

/// Long flag -> its default values, over a command and its subcommands.
fn flags(cmd: &clap::Command, out: &mut BTreeMap<String, Vec<String>>) {
    for a in cmd.get_arguments() {
        for long in a
            .get_long()
            .into_iter()
            .chain(a.get_all_aliases().into_iter().flatten())
        {
            let defaults = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            out.insert(long.to_string(), defaults);
        }
    }
    for sub in cmd.get_subcommands() {
        flags(sub, out);
    }
}

/// `--flags` in `text`, with their line numbers. Lines of fenced code that
/// run something other than routerd or cargo (curl, ip, ...) are skipped:
/// those flags are other programs'.
fn mentioned(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if fenced && !matches!(first, "routerd" | "cargo") {
            continue;
        }
        let b = line.as_bytes();
        let mut j = 0;
        while let Some(k) = line[j..].find("--") {
            let at = j + k;
            let before_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'-');
            let name: String = line[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if before_ok && name.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.push((i + 1, name.clone()));
            }
            j = at + 2 + name.len();
        }
    }
    out
}

/// "`--flag` (default `value`" (wrapped over lines or not): (line, flag,
/// value).
fn defaults(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = text[from..].find("`--") {
        let at = from + k;
        from = at + 3;
        let tail = &text[at + 3..];
        let Some(end) = tail.find('`') else { break };
        let flag = &tail[..end];
        // What follows, with line breaks and indentation as single spaces.
        let after: String = tail[end + 1..]
            .chars()
            .take(200)
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let lead = if tail[end + 1..].starts_with(char::is_whitespace) {
            " "
        } else {
            ""
        };
        let after = format!("{lead}{after}");
        if let Some(v) = after.strip_prefix(" (default `")
            && let Some(e) = v.find('`')
        {
            let line = text[..at].matches('\n').count() + 1;
            out.push((line, flag.to_string(), v[..e].to_string()));
        }
    }
    out
}

#[test]
fn every_flag_and_default_the_readme_names_is_the_binaries() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut routerd = BTreeMap::new();
    flags(&router_user::cli::command(), &mut routerd);
    let mut xtask = BTreeMap::new();
    flags(&crate::Cli::command(), &mut xtask);
    let found = mentioned(&readme);
    assert!(found.len() > 20, "the README names flags: {found:?}");
    let unknown: Vec<String> = found
        .iter()
        .filter(|(_, f)| !routerd.contains_key(f) && !xtask.contains_key(f))
        .map(|(l, f)| format!("README.md:{l}: --{f}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "flags the README names that neither `routerd <cmd> --help` nor `cargo xtask <cmd> \
         --help` knows (rename them in the README, or add them to the binary):\n{}",
        unknown.join("\n")
    );
    let said = defaults(&readme);
    assert!(!said.is_empty(), "the README states defaults");
    for (line, flag, value) in said {
        let d = routerd
            .get(&flag)
            .or_else(|| xtask.get(&flag))
            .unwrap_or_else(|| panic!("README.md:{line}: --{flag} is no flag"));
        assert!(
            d.contains(&value),
            "README.md:{line}: says --{flag} defaults to `{value}`; the binary's default is {d:?}"
        );
    }
}

#[test]
fn flags_in_other_programs_commands_are_not_ours() {
    let text = "use `--pin-root` here\n```\nrouterd run --config x\ncurl --max-time 3 http://x/\n```\n--- (a YAML separator)\n";
    let f: Vec<String> = mentioned(text).into_iter().map(|x| x.1).collect();
    assert_eq!(f, vec!["pin-root", "config"]);
    assert_eq!(
        defaults(
            "`--state-dir` (default `/run/routerd`), `--x`\nunder `--pin-root` (default\n  `/sys/fs/bpf/router`)"
        ),
        vec![
            (1, "state-dir".to_string(), "/run/routerd".to_string()),
            (2, "pin-root".to_string(), "/sys/fs/bpf/router".to_string())
        ]
    );
}

/// The deployment examples run `routerd run` with flags it has.
#[test]
fn the_deploy_examples_use_routerds_flags() {
    let mut routerd = BTreeMap::new();
    flags(&router_user::cli::command(), &mut routerd);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/");
    let mut seen = 0;
    for f in [
        "systemd/routerd.service",
        "kubernetes/routerd-daemonset.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{root}{f}")).expect(f);
        for (i, line) in text.lines().enumerate() {
            // Comments show other programs' commands (kubectl, systemctl).
            if line.trim_start().starts_with('#') {
                continue;
            }
            for word in line.split([' ', '=', '"', '[', ']', ',']) {
                if let Some(flag) = word.strip_prefix("--")
                    && !flag.is_empty()
                {
                    seen += 1;
                    assert!(
                        routerd.contains_key(flag),
                        "deploy/{f}:{}: --{flag} is not a flag of routerd",
                        i + 1
                    );
                }
            }
        }
    }
    assert!(seen > 10, "the examples pass flags ({seen})");
}
