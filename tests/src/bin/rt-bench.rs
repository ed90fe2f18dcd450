//! Benchmarks that print tables (`cargo xtask bench`), each contender
//! measured side by side in one run, alternating, with the client and the
//! backend pinned to different CPUs. Load stays inside the namespaces the
//! run creates.
//!
//! - connect: new-connection rate and connect latency through a VIP against
//!   a direct connection to the backend, at several numbers of services;
//! - http: requests per second and latency, direct against the VIP on the
//!   kernel-only path (L4) and the VIP through the L7 proxy, with keep-alive
//!   and with a new connection per request.
use std::{fmt::Write as _, path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use clap::Parser;
use router_tests::*;

#[derive(Parser)]
struct Args {
    /// Suites to run.
    #[arg(long, value_delimiter = ',', default_value = "connect,http")]
    suites: Vec<String>,
    /// Numbers of services (virtual hosts) to load for the connect suite.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<usize>,
    /// Length of one measurement, milliseconds.
    #[arg(long, default_value_t = 2000)]
    millis: u64,
    /// Measurements per contender (alternated).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients in the http suite.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Also write the tables to this markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
}

const BACKEND: &str = "10.9.0.1:8080";

/// A config with `n` route tables, each a virtual host forwarding to one backend.
fn connect_config(n: usize) -> String {
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

/// One L4 host (catch-all) and one L7 host whose table has a direct
/// response, a header route with a weighted split, and the path route the
/// benchmark hits (third in match order).
fn http_config() -> String {
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
    let fwd = "forwardTo: {destinations: [{ref: {name: bench}, port: {number: 8080}}]}";
    y += &format!(
        "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: l4, namespace: t}}\nspec:\n  hosts: [l4.bench.mesh]\n  http:\n  - {fwd}\n---\n\
         apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {{name: l7, namespace: t}}\nspec:\n  hosts: [l7.bench.mesh]\n  http:\n\
         \x20 - matchers: [{{uri: {{exact: /healthz}}}}]\n    directResponse: {{status: 200, body: ok}}\n\
         \x20 - matchers: [{{uri: {{prefix: /api}}, headers: [{{name: x-canary, value: \"1\"}}]}}]\n    forwardTo:\n      destinations:\n      - {{ref: {{name: bench}}, port: {{number: 8080}}, weight: 90}}\n      - {{ref: {{name: bench}}, port: {{number: 8080}}, weight: 10}}\n\
         \x20 - matchers: [{{uri: {{prefix: /api}}}}]\n    {fwd}\n---\n"
    );
    y
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    group: String,
    contender: &'static str,
    rate: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

/// A world with one backend on CPU 0 (`sink`: accept and drop; `tcp`: HTTP).
fn bench_world(kind: &'static str) -> Result<World> {
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
    // Client and backend on different CPUs: on this kind of VM a wakeup
    // across a shared CPU costs milliseconds and drowns what we measure.
    world.start_backends_with(
        &[Listen::new(kind, BACKEND.parse()?, "bench")],
        &["--cpu", "0"],
    )?;
    Ok(world)
}

/// Run `rt-probe <args> --cpu 1` in the cgroup and parse its line.
fn measure(world: &World, args: &[&str]) -> Result<Bench> {
    let out = run(world
        .client(bin("rt-probe"))
        .args(args)
        .args(["--cpu", "1"]))?;
    eprintln!("  {}: {}", args.join(" "), out.trim());
    serde_json::from_str(out.trim()).with_context(|| format!("bad bench line {out:?}"))
}

/// Alternate the contenders `rounds` times; one row per contender (medians).
fn compare(
    world: &World,
    group: &str,
    rounds: usize,
    contenders: &[(&'static str, Vec<String>)],
) -> Result<Vec<Row>> {
    let mut results: Vec<Vec<Bench>> = vec![Vec::new(); contenders.len()];
    for _ in 0..rounds {
        for (i, (_, args)) in contenders.iter().enumerate() {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            results[i].push(measure(world, &a)?);
        }
    }
    Ok(contenders
        .iter()
        .zip(results)
        .map(|((name, _), bs)| Row {
            group: group.to_string(),
            contender: name,
            rate: median(bs.iter().map(|b| b.rate).collect()),
            p50: median(bs.iter().map(|b| b.p50_us).collect()),
            p99: median(bs.iter().map(|b| b.p99_us).collect()),
            errors: bs.iter().map(|b| b.errors).sum(),
        })
        .collect())
}

fn table(md: &mut String, first: &str, unit: &str, rows: &[Row]) {
    let _ = writeln!(
        md,
        "| {first} | contender | {unit}/s | vs direct | p50 (us) | p99 (us) | errors |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let direct = rows
            .iter()
            .find(|d| d.group == r.group && d.contender == "direct")
            .unwrap();
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2}x | {:.1} | {:.1} | {} |",
            r.group,
            r.contender,
            r.rate,
            r.rate / direct.rate,
            r.p50,
            r.p99,
            r.errors
        );
    }
}

fn connect_suite(args: &Args, md: &mut String) -> Result<()> {
    let mut rows = Vec::new();
    let mut control = Vec::new();
    for &n in &args.services {
        let world = bench_world("sink")?;
        world.dir.write("config/bench.yaml", &connect_config(n))?;
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
            &["--no-watch", "--no-dns", "--max-services", &max],
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
        let ms = args.millis.to_string();
        let contenders = vec![
            (
                "direct",
                vec![
                    "bench".into(),
                    BACKEND.into(),
                    "--millis".into(),
                    ms.clone(),
                ],
            ),
            (
                "VIP (routerd)",
                vec!["bench".into(), vip, "--millis".into(), ms],
            ),
        ];
        rows.extend(compare(&world, &n.to_string(), args.rounds, &contenders)?);
    }
    let _ = writeln!(
        md,
        "## Connect path: VIP through routerd vs a direct connection\n"
    );
    let _ = writeln!(
        md,
        "Blocking connect() + RST close from one client process in the attached cgroup, {} ms per \
         measurement, {} alternated measurements per contender (medians).\n",
        args.millis, args.rounds
    );
    table(md, "services", "connects", &rows);
    let _ = writeln!(md, "\n## Control plane\n");
    let _ = writeln!(
        md,
        "| services | compile in-process (ms) | process start to ready (ms) | in routerd: config load + compile + program load + attach + map writes (ms) |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|");
    for (n, c, s, a) in &control {
        let _ = writeln!(md, "| {n} | {c:.1} | {s:.0} | {a:.0} |");
    }
    let _ = writeln!(md);
    Ok(())
}

fn http_suite(args: &Args, md: &mut String) -> Result<()> {
    let world = bench_world("tcp")?;
    world.dir.write("config/bench.yaml", &http_config())?;
    let cfg = world.dir.path.join("config");
    let plan = plan(&cfg)?;
    let _routerd = Routerd::start(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--no-watch", "--no-dns"],
    )?;
    let l4 = vip(&plan, "l4.bench.mesh", 8080, false).to_string();
    let l7 = vip(&plan, "l7.bench.mesh", 8080, false).to_string();
    let mut rows = Vec::new();
    for (group, new_conn) in [("keep-alive", false), ("new connection per request", true)] {
        let c = |addr: &str| {
            let mut v: Vec<String> = [
                "http-bench",
                addr,
                "--path",
                "/api/x",
                "--conns",
                &args.conns.to_string(),
                "--millis",
                &args.millis.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if new_conn {
                v.push("--new-conn".into());
            }
            v
        };
        let contenders = vec![
            ("direct", c(BACKEND)),
            ("VIP, L4 (kernel only)", c(&l4)),
            ("VIP, L7 (routerd proxy)", c(&l7)),
        ];
        rows.extend(compare(&world, group, args.rounds, &contenders)?);
    }
    let _ = writeln!(md, "## HTTP: direct vs the kernel path vs the L7 proxy\n");
    let _ = writeln!(
        md,
        "GET /api/x from {} concurrent clients (one process, CPU 1) to a hyper backend (CPU 0); the L7 \
         route is third in its table (after an exact path and a header route). routerd's proxy runs on \
         the same 2 CPUs. {} ms per measurement, {} alternated rounds (medians).\n",
        args.conns, args.millis, args.rounds
    );
    table(md, "mode", "requests", &rows);
    let _ = writeln!(md);
    Ok(())
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
        "Machine: {} CPUs ({cpu}), kernel {}, routerd {} (release build). Command: `cargo xtask bench{}`.\n",
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
    if args.suites.iter().any(|s| s == "connect") {
        connect_suite(&args, &mut md)?;
    }
    if args.suites.iter().any(|s| s == "http") {
        http_suite(&args, &mut md)?;
    }
    print!("{md}");
    if let Some(out) = args.out {
        std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
