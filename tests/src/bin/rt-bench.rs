//! Benchmarks that print tables (`cargo xtask bench`): the connect path
//! through a VIP against a direct connection to the same backend, side by
//! side in one run, alternating the contenders, at several numbers of
//! services. Load stays inside the namespaces the run creates.
use std::{fmt::Write as _, path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use clap::Parser;
use router_tests::*;

#[derive(Parser)]
struct Args {
    /// Numbers of services (virtual hosts) to load.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<usize>,
    /// Length of one measurement, milliseconds.
    #[arg(long, default_value_t = 2000)]
    millis: u64,
    /// Measurements per contender (alternated).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also write the table to this markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A config with `n` route tables, each a virtual host forwarding to one backend.
fn config(n: usize) -> String {
    let mut y = yaml::router("c1", "east", "e1", "");
    y += &yaml::service("c1", "bench", 8080, "TCP");
    y += &yaml::slice(
        "c1",
        "east",
        "bench",
        "bench",
        8080,
        "TCP",
        &[("10.9.0.1", "e1", true)],
    );
    for i in 0..n {
        let _ = write!(
            y,
            "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: h{i}, namespace: t}}\n\
             spec:\n  hosts: [h{i}.bench.mesh]\n  tcp:\n  - forwardTo: {{destinations: [{{ref: {{name: bench}}, port: {{number: 8080}}}}]}}\n---\n"
        );
    }
    y
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    services: usize,
    contender: &'static str,
    rate: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rt-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<()> {
    let args = Args::parse();
    require_root();
    let mut rows = Vec::new();
    let mut control = Vec::new();
    for &n in &args.services {
        // Client and backend on different CPUs: on this kind of VM a wakeup
        // across a shared CPU costs milliseconds and drowns what we measure.
        let mut world = World::new(&[])?;
        world
            .world
            .ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"])?;
        run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &world.world.name,
            "sysctl",
            "-qw",
            "net.core.somaxconn=65535",
        ]))?;
        world.start_backends_with(&[Listen::sink("10.9.0.1:8080", "bench")], &["--cpu", "0"])?;
        world.dir.write("config/bench.yaml", &config(n))?;
        let cfg = world.dir.path.join("config");
        let t = Instant::now();
        let plan = plan(&cfg)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let max = (n + 16).next_power_of_two().max(16_384).to_string();
        let t = Instant::now();
        let routerd = Routerd::start(
            &world.tag,
            &cfg,
            &world.cgroup.path,
            &["--no-watch", "--max-services", &max],
        )?;
        let start_ms = t.elapsed().as_secs_f64() * 1e3;
        let applied = routerd
            .logs()
            .iter()
            .find(|l| l.contains(" applied "))
            .and_then(|l| l.split("elapsed_ms=").nth(1))
            .and_then(|x| x.split_whitespace().next())
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        control.push((n, compile_ms, start_ms, applied));
        let vip = vip(&plan, &format!("h{}.bench.mesh", n / 2), 8080, false).to_string();
        let direct = "10.9.0.1:8080".to_string();
        let mut results: Vec<(&'static str, Vec<Bench>)> =
            vec![("direct", vec![]), ("VIP (routerd)", vec![])];
        for _ in 0..args.rounds {
            for (i, addr) in [&direct, &vip].into_iter().enumerate() {
                let out = run(world.client(bin("rt-probe")).args([
                    "bench",
                    addr,
                    "--millis",
                    &args.millis.to_string(),
                ]))?;
                let b: Bench = serde_json::from_str(out.trim())
                    .with_context(|| format!("bad bench line {out:?}"))?;
                eprintln!("  {n} services, {addr}: {}", out.trim());
                results[i].1.push(b);
            }
        }
        for (name, bs) in results {
            rows.push(Row {
                services: n,
                contender: name,
                rate: median(bs.iter().map(|b| b.rate).collect()),
                p50: median(bs.iter().map(|b| b.p50_us).collect()),
                p99: median(bs.iter().map(|b| b.p99_us).collect()),
                errors: bs.iter().map(|b| b.errors).sum(),
            });
        }
        drop(routerd);
        drop(world);
    }
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({cpu}), kernel {}, routerd {} (release build). \
         Command: `cargo xtask bench{}`.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim(),
        env!("CARGO_PKG_VERSION"),
        std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--out") && !a.ends_with(".md"))
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    let _ = writeln!(
        md,
        "### Connect path: VIP through routerd vs a direct connection\n"
    );
    let _ = writeln!(
        md,
        "Blocking connect() + RST close from one client process in the attached cgroup, \
         {} ms per measurement, {} alternated measurements per contender (medians).\n",
        args.millis, args.rounds
    );
    let _ = writeln!(
        md,
        "| services | contender | connects/s | vs direct | p50 connect (us) | p99 connect (us) | errors |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let direct = rows
            .iter()
            .find(|d| d.services == r.services && d.contender == "direct")
            .unwrap();
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2}x | {:.1} | {:.1} | {} |",
            r.services,
            r.contender,
            r.rate,
            r.rate / direct.rate,
            r.p50,
            r.p99,
            r.errors
        );
    }
    let _ = writeln!(md, "\n### Control plane\n");
    let _ = writeln!(
        md,
        "| services | compile in-process (ms) | process start to ready (ms) | in routerd: config load + compile + program load + attach + map writes (ms) |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|");
    for (n, c, s, a) in &control {
        let _ = writeln!(md, "| {n} | {c:.1} | {s:.0} | {a:.0} |");
    }
    print!("{md}");
    if let Some(out) = args.out {
        std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
