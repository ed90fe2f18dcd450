//! `cargo xtask drill`: every drill at full scale; prints the figures and
//! writes them to `--out` (docs/drills.md).
use std::{fmt::Write as _, path::PathBuf};

use clap::Parser;
use router_tests::{drill::*, require_root};

#[derive(Parser)]
struct Args {
    /// Drills to run (default: all): reload_churn, kill_restart,
    /// endpoint_failover, hostile_configs, size_limits.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The reduced scale CI uses.
    #[arg(long)]
    ci: bool,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    require_root();
    let scale = if args.ci { Scale::CI } else { Scale::FULL };
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for (name, f) in ALL {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("rt-drill: {name} ...");
        match f(scale) {
            Ok(figures) => {
                eprint!("{}", markdown(std::slice::from_ref(&figures)));
                results.push(figures);
            }
            Err(e) => {
                eprintln!("rt-drill: {name} FAILED: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    let mut md = String::from("# Drills\n\n");
    let _ = writeln!(
        md,
        "Kernel {}, {} CPUs. Command: `cargo xtask drill{}` ({} scale: {} reloads, {} restarts, {} hostile configs, {} new connections/s). \
         Load is `rt-probe churn`: 4 clients in the attached cgroup opening new connections (an HTTP GET each) to VIPs, \
         every answer checked against the endpoints allowed to give it; in drill 3, 3 clients per connection/s \
         (each waits up to 3 s for a connect, so connects that hang on a blackholed endpoint do not slow the load), \
         and a failed connection counts at the time it was attempted.\n",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if args.ci { " --ci" } else { "" },
        if args.ci { "CI" } else { "full" },
        scale.reloads,
        scale.restarts,
        scale.hostile,
        scale.rate
    );
    md += &markdown(&results);
    for f in &failed {
        let _ = writeln!(md, "**FAILED** {f}\n");
    }
    print!("{md}");
    if let Some(out) = &args.out {
        let dir = out.parent().unwrap_or(std::path::Path::new("."));
        let files = results.iter().flat_map(|f| &f.files);
        for (name, text) in files
            .map(|(n, t)| (dir.join(n), t))
            .chain([(out.clone(), &md)])
        {
            if let Err(e) = std::fs::write(&name, text) {
                eprintln!("rt-drill: writing {}: {e}", name.display());
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    if failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
