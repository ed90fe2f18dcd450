//! Benchmarks that print tables (`cargo xtask bench`), each contender
//! measured side by side in one run, alternating, with the client and the
//! backend pinned to different CPUs. Load stays inside the namespaces the
//! run creates (the client dials from the node namespace; backends live in
//! the world namespace behind a veth; nothing has a default route).
//!
//! - connect: new-connection rate and connect latency through a VIP, against
//!   a direct connection to the backend and against iptables DNAT rules of
//!   the shape kube-proxy writes, at several numbers of services;
//! - http: requests per second and latency over keep-alive connections (the
//!   steady state) and with a new connection per request: direct, the VIP on
//!   the kernel-only path (L4), the VIP through routerd's L7 proxy, and nginx
//!   and haproxy configured with the same routes;
//! - control: compile and apply a large config from scratch, one endpoint
//!   change, routerd's memory and the kernel maps' size.
//!
//! Writes a markdown page (`--out`) and one SVG chart per suite beside it.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use router_tests::*;

#[derive(Parser)]
struct Args {
    /// Suites to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connect,http,control,churn,workloads"
    )]
    suites: Vec<String>,
    /// Workloads (pods, each its own network namespace) in the workloads
    /// suite.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Numbers of services (virtual hosts) to load for the connect suite.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    services: Vec<usize>,
    /// Route tables for the control suite (each its own service).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    route_tables: Vec<usize>,
    /// Endpoints per service in the control suite.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Endpoint changes per second in the churn suite (over the largest
    /// control world).
    #[arg(long, default_value_t = 500)]
    churn_rate: u64,
    /// How long the churn lasts, seconds.
    #[arg(long, default_value_t = 30.0)]
    churn_secs: f64,
    /// Length of one measurement, milliseconds.
    #[arg(long, default_value_t = 2000)]
    millis: u64,
    /// Measurements per contender (alternated).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients in the http suite.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Also write the tables to this markdown file (charts go beside it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the control world of the first --route-tables size to this
    /// directory and exit (to profile routerd on it: `routerd check` or `run`).
    #[arg(long)]
    write_control_world: Option<PathBuf>,
    /// Keep the http suite's `perf record` of routerd (with call graphs)
    /// at this path, for `perf report -i PATH`.
    #[arg(long)]
    perf_data: Option<PathBuf>,
    /// More arguments for the http suite's routerd (e.g.
    /// `--proxy-threads=1`), to compare settings.
    #[arg(long, allow_hyphen_values = true)]
    routerd_arg: Vec<String>,
}

const BACKEND: &str = "10.9.0.1:8080";
const DNAT_CONTENDER: &str = "iptables DNAT (kube-proxy rules)";

/// A route table: `host` forwards every TCP connection to `service`:8080.
fn rt_forward(name: &str, host: &str, service: &str) -> RouteTable {
    RouteTable::new(name)
        .host(host)
        .tcp(TcpRoute::new().to(&[Dest::service(service).port(8080)]))
}

/// The node's RouterConfig (a VIP range big enough for 100,000 hosts: the
/// default /16 does not fit them without collisions).
fn node() -> Config {
    Config::new().node_with(
        "c1",
        "east",
        "e1",
        json!({"vipRanges": {"ipv4": "240.0.0.0/12"}}),
    )
}

/// The node, and the one backend service every benchmark host forwards to.
fn bench_router() -> Config {
    node().with(service_with_slice(
        "c1",
        "east",
        "bench",
        "bench",
        8080,
        &[("10.9.0.1", "e1", true)],
    ))
}

/// The contender whose handshakes the kernel watches: one virtual
/// destination on the bench backend with an OutlierDetectionPolicy (the
/// connect hook reads the backend's health entry, sock_ops asks for the
/// state and RTO callbacks of every connection).
const WATCHED_CONTENDER: &str = "VIP, handshakes watched (outlier detection)";
const METRICS_CONTENDER: &str = "VIP, metrics on (scraped every second)";

/// GET `http://addr/metrics` every second until `stop` (a Prometheus
/// scraping far more often than its default 15 s); the bytes read.
fn scrape_every_second(
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut total = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = write!(
                    s,
                    "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                );
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                total += buf.len();
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        total
    })
}

fn watched_config() -> String {
    bench_router()
        .with(
            VirtualDestination::new("w", "w.bench.mesh")
                .app("bench")
                .port(8080, "TCP")
                .label("lb", "watched"),
        )
        .with(
            Policy::outlier_detection("od", json!({"consecutiveErrors": 5}))
                .virtual_destinations_labelled("lb", "watched"),
        )
        .yaml()
}

/// A config with `n` route tables, each a virtual host forwarding to one backend.
fn connect_config(n: usize) -> String {
    (0..n)
        .fold(bench_router(), |c, i| {
            c.with(rt_forward(
                &format!("h{i}"),
                &format!("h{i}.bench.mesh"),
                "bench",
            ))
        })
        .yaml()
}

/// The `elapsed_ms` and `writes` of an `applied` event.
fn applied_figures(e: &Event) -> Option<(f64, f64)> {
    match e {
        Event::Applied {
            elapsed_ms, writes, ..
        } => Some((*elapsed_ms, *writes as f64)),
        _ => None,
    }
}

/// The ClusterIP kube-proxy would match for service `i`.
fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1)
}

/// `iptables-restore` input with kube-proxy's chains for `n` ClusterIP
/// services of one endpoint each: KUBE-SERVICES matches the ClusterIP and
/// port (one rule per service, scanned in order), jumps to the service's
/// chain, which jumps to the endpoint's chain, which DNATs.
fn kube_proxy_rules(n: usize) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let _ = writeln!(
        rules,
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    );
    for i in 0..n {
        let (svc, sep) = (format!("KUBE-SVC-{i:016X}"), format!("KUBE-SEP-{i:016X}"));
        let _ = writeln!(chains, ":{svc} - [0:0]\n:{sep} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"t/h{i}:p cluster IP\" -m tcp --dport 8080 -j {svc}\n\
             -A {svc} -m comment --comment \"t/h{i}:p -> 10.9.0.1:8080\" -j {sep}\n\
             -A {sep} -p tcp -m comment --comment \"t/h{i}:p\" -m tcp -j DNAT --to-destination 10.9.0.1:8080",
            cluster_ip(i)
        );
    }
    format!("*nat\n:KUBE-SERVICES - [0:0]\n{chains}{rules}COMMIT\n")
}

/// One L4 host (catch-all) and one L7 host whose table has a direct
/// response, a header route with a weighted split, and the path route the
/// benchmark hits (third in match order).
fn http_config() -> String {
    let bench = || Dest::service("bench").port(8080);
    bench_router()
        .with(
            RouteTable::new("l4")
                .host("l4.bench.mesh")
                .http(HttpRoute::new().to(&[bench()])),
        )
        .with(
            RouteTable::new("l7")
                .host("l7.bench.mesh")
                .http(HttpRoute::new().exact("/healthz").direct(200, "ok"))
                .http(
                    HttpRoute::new()
                        .matcher(json!({"uri": {"prefix": "/api"}, "headers": [{"name": "x-canary", "value": "1"}]}))
                        .to(&[bench().weight(90), bench().weight(10)]),
                )
                .http(HttpRoute::new().prefix("/api").to(&[bench()])),
        )
        .yaml()
}

/// The same three routes for nginx (2 workers, upstream keep-alive; no
/// cap on requests per connection, which would otherwise close client
/// connections every 1,000 requests and count as errors).
fn nginx_conf(dir: &Path, listen: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 2;\npid {d}/nginx.pid;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n\
         \x20 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         \x20 upstream bench {{ server {BACKEND}; keepalive 64; keepalive_requests 100000000; }}\n\
         \x20 upstream canary {{ server {BACKEND} weight=90; server {BACKEND} weight=10; keepalive 64; keepalive_requests 100000000; }}\n\
         \x20 map $http_x_canary $up {{ \"1\" canary; default bench; }}\n\
         \x20 server {{\n    listen {listen};\n\
         \x20   location = /healthz {{ return 200 ok; }}\n\
         \x20   location /api {{ proxy_pass http://$up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
         \x20   location / {{ return 404; }}\n  }}\n}}\n"
    )
}

/// The same three routes for haproxy (2 threads, connection reuse).
fn haproxy_conf(dir: &Path, listen: &str) -> String {
    format!(
        "global\n  nbthread 2\n  maxconn 5000\n  pidfile {}/haproxy.pid\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\n\
         frontend fe\n  bind {listen}\n\
         \x20 http-request return status 200 content-type text/plain string ok if {{ path /healthz }}\n\
         \x20 use_backend canary if {{ path_beg /api }} {{ req.hdr(x-canary) -m str 1 }}\n\
         \x20 use_backend bench if {{ path_beg /api }}\n  default_backend none\n\
         backend bench\n  server b1 {BACKEND}\n\
         backend canary\n  balance random\n  server c1 {BACKEND} weight 90\n  server c2 {BACKEND} weight 10\n\
         backend none\n  http-request deny deny_status 404\n",
        dir.display()
    )
}

/// A server started in a namespace, stopped with SIGTERM (nginx's master
/// then stops its workers), killed if it lingers.
struct Server(Child, &'static str);

impl Server {
    fn start(name: &'static str, netns: &str, argv: &[&str]) -> Result<Server> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} ({argv:?})"))?;
        Ok(Server(child, name))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("rt-bench: {} did not stop on SIGTERM; killing it", self.1);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until an HTTP GET of `path` through `addr` succeeds from the client side.
fn wait_http(world: &World, addr: &str, path: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = world
            .client(bin("rt-probe"))
            .args(["http", addr, "--path", path])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let good = parse_probes(&text).is_ok_and(|p| {
            p.first()
                .is_some_and(|p| p.ok && (p.status == Some(200) || p.answer.is_some()))
        });
        if out.status.success() && good {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} at {addr} does not answer GET {path} with 200: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
    /// CPU time of the contender's proxy process (and its children) per
    /// request; None: no proxy process.
    cpu: Option<Cpu>,
}

/// CPU time per request, microseconds: in all, and the part of it spent
/// in the kernel (system time).
#[derive(Clone, Copy)]
struct Cpu {
    total_us: f64,
    kernel_us: f64,
}

/// A world with one backend on CPU 0 (`sink`: accept and drop; `tcp`: HTTP).
fn bench_world(kind: &'static str) -> Result<World> {
    let mut world = World::new(&[])?;
    world
        .world
        .ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"])?;
    world.world.sysctl("net.core.somaxconn=65535")?;
    // Client and backend on different CPUs: on this kind of VM a wakeup
    // across a shared CPU costs milliseconds and drowns what we measure.
    world.start_backends_with(
        &[Listen::new(kind, BACKEND.parse()?, "bench")],
        &["--cpu", "0"],
    )?;
    Ok(world)
}

/// Run `rt-probe <args> --cpu 1` in the cgroup and parse its line.
fn measure(world: &World, args: &[String]) -> Result<Bench> {
    let out = run(world
        .client(bin("rt-probe"))
        .args(args)
        .args(["--cpu", "1"]))?;
    eprintln!("  {}: {}", args.join(" "), out.trim());
    serde_json::from_str(out.trim()).with_context(|| format!("bad bench line {out:?}"))
}

/// A contender: its name, the world its client runs in, rt-probe's
/// arguments, and the proxy process whose CPU time it costs (if any).
type Contender<'a> = (&'static str, &'a World, Vec<String>, Option<u32>);

/// Process `pid` and every process below it (nginx's workers are its
/// master's children), each with its CPU time (user and system, clock
/// ticks) from /proc; routerd's and haproxy's threads are in their
/// process's own figures.
fn process_tree(pid: u32) -> Vec<(u32, Ticks)> {
    let stat = |p: u32| -> Option<(u32, Ticks)> {
        let text = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // After the command's closing parenthesis: state, ppid, ... with
        // utime and stime the 12th and 13th fields from there.
        let rest = &text[text.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ppid = f.get(1)?.parse().ok()?;
        let ticks = Ticks {
            user: f.get(11)?.parse().ok()?,
            system: f.get(12)?.parse().ok()?,
        };
        Some((ppid, ticks))
    };
    let mut all: Vec<(u32, u32, Ticks)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
            && let Some((ppid, t)) = stat(p)
        {
            all.push((p, ppid, t));
        }
    }
    let mut todo = vec![pid];
    let mut tree = Vec::new();
    while let Some(p) = todo.pop() {
        for (q, ppid, t) in &all {
            if *q == p {
                tree.push((p, *t));
            }
            if *ppid == p {
                todo.push(*q);
            }
        }
    }
    tree
}

/// CPU time in clock ticks: user and system.
#[derive(Clone, Copy, Default)]
struct Ticks {
    user: u64,
    system: u64,
}

/// CPU time of process `pid` and of every process below it.
fn tree_ticks(pid: u32) -> Ticks {
    process_tree(pid)
        .iter()
        .fold(Ticks::default(), |a, (_, t)| Ticks {
            user: a.user + t.user,
            system: a.system + t.system,
        })
}

/// Alternate the contenders `rounds` times; one row per contender (medians).
fn compare(group: &str, rounds: usize, contenders: &[Contender<'_>]) -> Result<Vec<Row>> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // Per contender and round: the measurement and the proxy's CPU.
    let mut results: Vec<Vec<(Bench, Option<Cpu>)>> = vec![Vec::new(); contenders.len()];
    for _ in 0..rounds {
        for (i, (_, world, args, pid)) in contenders.iter().enumerate() {
            let before = pid.map(tree_ticks);
            let b = measure(world, args)?;
            let cpu = pid.zip(before).map(|(p, t0)| {
                let t1 = tree_ticks(p);
                let per = |ticks: u64| ticks as f64 / hz * 1e6 / (b.connects.max(1) as f64);
                let system = t1.system.saturating_sub(t0.system);
                Cpu {
                    total_us: per(t1.user.saturating_sub(t0.user) + system),
                    kernel_us: per(system),
                }
            });
            results[i].push((b, cpu));
        }
    }
    Ok(contenders
        .iter()
        .zip(results)
        .map(|((name, _, _, pid), bs)| Row {
            group: group.to_string(),
            contender: name,
            rate: median(bs.iter().map(|(b, _)| b.rate).collect()),
            p50: median(bs.iter().map(|(b, _)| b.p50_us).collect()),
            p99: median(bs.iter().map(|(b, _)| b.p99_us).collect()),
            errors: bs.iter().map(|(b, _)| b.errors).sum(),
            cpu: pid.map(|_| {
                let med = |f: fn(&Cpu) -> f64| {
                    median(bs.iter().filter_map(|(_, c)| c.as_ref().map(f)).collect())
                };
                Cpu {
                    total_us: med(|c| c.total_us),
                    kernel_us: med(|c| c.kernel_us),
                }
            }),
        })
        .collect())
}

/// Rows as a markdown table, with the rate of each row as a ratio to each
/// of `baselines` (contender names) in the same group.
fn table(md: &mut String, first: &str, unit: &str, rows: &[Row], baselines: &[(&str, &str)]) {
    let vs: String = baselines
        .iter()
        .map(|(_, l)| format!(" vs {l} |"))
        .collect();
    let cpu = rows.iter().any(|r| r.cpu.is_some());
    let _ = writeln!(
        md,
        "| {first} | contender | {unit}/s |{vs} p50 (us) | p99 (us) | errors |{}",
        if cpu {
            " proxy CPU (us/request) | of which in the kernel |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "|---|---|---:|{}---:|---:|---:|{}",
        "---:|".repeat(baselines.len()),
        if cpu { "---:|---:|" } else { "" }
    );
    for r in rows {
        let ratios: String = baselines
            .iter()
            .map(|(b, _)| {
                match rows
                    .iter()
                    .find(|d| d.group == r.group && d.contender == *b)
                {
                    Some(d) => format!(" {:.2}x |", r.rate / d.rate),
                    None => " - |".to_string(),
                }
            })
            .collect();
        let cpu = match (cpu, r.cpu) {
            (false, _) => String::new(),
            (true, Some(c)) => format!(" {:.1} | {:.1} |", c.total_us, c.kernel_us),
            (true, None) => " - | - |".to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} |{ratios} {:.1} | {:.1} | {} |{cpu}",
            r.group, r.contender, r.rate, r.p50, r.p99, r.errors
        );
    }
}

/// A grouped bar chart of the rows' rates (one group per `group`, one bar
/// per contender), as a standalone SVG.
fn chart(title: &str, unit: &str, rows: &[Row]) -> String {
    let mut groups: Vec<&str> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
        if !names.contains(&r.contender) {
            names.push(r.contender);
        }
    }
    let colors = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2",
    ];
    let (w, h, left, top, bottom) = (860.0, 420.0, 80.0, 60.0, 70.0);
    let plot_h = h - top - bottom;
    let max = rows.iter().map(|r| r.rate).fold(1.0, f64::max) * 1.15;
    let step = 10f64.powf((max / 5.0).log10().floor());
    let tick = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * step)
        .find(|t| max / t <= 6.0)
        .unwrap_or(step * 10.0);
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    );
    let mut t = 0.0;
    while t <= max {
        let (x2, yt, xl, yl, label) = (w - 20.0, y(t), left - 6.0, y(t) + 4.0, si(t));
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yt:.1}\" y2=\"{yt:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{xl}\" y=\"{yl:.1}\" text-anchor=\"end\">{label}</text>"
        );
        t += tick;
    }
    let _ = writeln!(
        s,
        "<text transform=\"translate(18 {}) rotate(-90)\" text-anchor=\"middle\">{unit}/s</text>",
        top + plot_h / 2.0
    );
    let gw = (w - left - 20.0) / groups.len() as f64;
    let bw = (gw * 0.8) / names.len() as f64;
    for (gi, g) in groups.iter().enumerate() {
        let gx = left + gw * gi as f64 + gw * 0.1;
        for (ni, n) in names.iter().enumerate() {
            if let Some(r) = rows.iter().find(|r| r.group == *g && r.contender == *n) {
                let x = gx + bw * ni as f64;
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                    y(r.rate),
                    bw - 2.0,
                    top + plot_h - y(r.rate),
                    colors[ni % colors.len()],
                    x + bw / 2.0 - 1.0,
                    y(r.rate) - 3.0,
                    si(r.rate)
                );
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{g}</text>",
            gx + gw * 0.4,
            top + plot_h + 18.0
        );
    }
    for (ni, n) in names.iter().enumerate() {
        let x = left + 10.0 + (ni % 3) as f64 * 250.0;
        let yy = h - 30.0 + (ni / 3) as f64 * 16.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{yy}\">{n}</text>",
            yy - 9.0,
            colors[ni % colors.len()],
            x + 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 123456 -> "123k".
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// routerd's resident and peak memory (KiB), and the memory the kernel
/// charges for the maps it holds (bytes, from fdinfo `memlock`).
fn memory(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let mut maps = 0.0;
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for fd in fds.flatten() {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            if info.contains("map_type:") {
                maps += info
                    .lines()
                    .find(|l| l.starts_with("memlock:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    (kib("VmRSS:"), kib("VmHWM:"), maps)
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1024.0 * 1024.0))
}

fn write_chart(out: Option<&Path>, file: &str, svg: &str, md: &mut String) -> Result<()> {
    if let Some(dir) = out.and_then(Path::parent) {
        std::fs::write(dir.join(file), svg).with_context(|| format!("writing {file}"))?;
        let _ = writeln!(md, "![{file}]({file})\n");
    }
    Ok(())
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
            .events(0)
            .iter()
            .find_map(applied_figures)
            .map_or(f64::NAN, |f| f.0);
        let mem = memory(routerd.pid().unwrap_or(0));

        // The alternative in its own node namespace: with NAT rules loaded,
        // conntrack tracks every connection there, as on a kube-proxy node.
        let kube = bench_world("sink")?;
        let rules = kube.dir.write("kube-proxy.rules", &kube_proxy_rules(n))?;
        let t = Instant::now();
        run(Command::new("ip")
            .args(["netns", "exec", &kube.node.name, "iptables-restore"])
            .arg(&rules))
        .context("loading kube-proxy-style rules with iptables-restore")?;
        let restore_ms = t.elapsed().as_secs_f64() * 1e3;
        control.push((n, compile_ms, start_ms, applied, mem, restore_ms));

        // The same connects with the kernel watching each handshake, in a
        // twin world of its own (watching is per backend address).
        let watched = bench_world("sink")?;
        watched.dir.write("config/bench.yaml", &watched_config())?;
        let wcfg = watched.dir.path.join("config");
        let wvip = vip(&router_tests::plan(&wcfg)?, "w.bench.mesh", 8080, false).to_string();
        let _wrouterd = Routerd::start(
            &watched.tag,
            &wcfg,
            &watched.cgroup.path,
            &["--no-watch", "--no-dns"],
        )?;

        // The same config in a twin world whose routerd serves metrics,
        // scraped every second throughout.
        let metered = bench_world("sink")?;
        metered.dir.write("config/bench.yaml", &connect_config(n))?;
        let mcfg = metered.dir.path.join("config");
        let metrics_addr = format!(
            "127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
        );
        let _mrouterd = Routerd::start(
            &metered.tag,
            &mcfg,
            &metered.cgroup.path,
            &[
                "--no-watch",
                "--no-dns",
                "--max-services",
                &max,
                "--metrics-addr",
                &metrics_addr,
            ],
        )?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = scrape_every_second(metrics_addr, stop.clone());

        let vip = vip(&plan, &format!("h{}.bench.mesh", n / 2), 8080, false).to_string();
        let clusterip = format!("{}:8080", cluster_ip(n / 2));
        let b = |addr: &str| connect_args(addr, args);
        let contenders = vec![
            ("direct", &world, b(BACKEND), None),
            ("VIP (routerd)", &world, b(&vip), None),
            (WATCHED_CONTENDER, &watched, b(&wvip), None),
            (METRICS_CONTENDER, &metered, b(&vip), None),
            (DNAT_CONTENDER, &kube, b(&clusterip), None),
        ];
        rows.extend(compare(&n.to_string(), args.rounds, &contenders)?);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let scraped = scraper.join().unwrap_or(0);
        anyhow::ensure!(
            scraped > 0,
            "the metrics contender's scraper read nothing from routerd's /metrics"
        );
    }
    let _ = writeln!(md, "## Connect path\n");
    let _ = writeln!(
        md,
        "New connections to service number n/2 of n: blocking connect() + RST close from one client \
         process (CPU 1) in the attached cgroup to a backend on CPU 0 that accepts and drops. \
         `direct` dials the backend's address; `VIP (routerd)` dials the service's VIP, which the \
         cgroup connect hook rewrites; `{DNAT_CONTENDER}` dials a ClusterIP in a twin namespace \
         holding kube-proxy's iptables chains for n services (KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP \
         DNAT; iptables-nft as Debian ships it), where conntrack and NAT handle the first packet. \
         `{WATCHED_CONTENDER}` dials a VIP of a twin routerd whose destination has an \
         OutlierDetectionPolicy: the kernel watches every handshake (issue 17's cost). \
         `{METRICS_CONTENDER}` dials the same VIP of a twin routerd run with `--metrics-addr`, \
         whose `/metrics` a scraper reads every second throughout (issue 16's cost: the kernel's \
         counters are per-CPU maps summed at scrape time, so the connect path does the same work). \
         {} ms per measurement, {} alternated measurements per contender (medians).\n",
        args.millis, args.rounds
    );
    table(
        md,
        "services",
        "connects",
        &rows,
        &[
            ("direct", "direct"),
            ("VIP (routerd)", "VIP"),
            (DNAT_CONTENDER, "iptables"),
        ],
    );
    let _ = writeln!(md);
    write_chart(
        args.out.as_deref(),
        "bench-connect.svg",
        &chart(
            "New connections per second by number of services",
            "connects",
            &rows,
        ),
        md,
    )?;
    let _ = writeln!(md, "### Loading n services from scratch\n");
    let _ = writeln!(
        md,
        "| services | routerd: compile in-process (ms) | routerd: process start to ready (ms) | in routerd: load + compile + programs + attach + map writes (ms) | routerd RSS (MiB) | kernel maps (MiB) | iptables-restore of the kube-proxy rules (ms) |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
    for (n, c, s, a, (rss, _, maps), r) in &control {
        let _ = writeln!(
            md,
            "| {n} | {c:.1} | {s:.0} | {a:.0} | {} | {} | {r:.0} |",
            mib(rss * 1024.0),
            mib(*maps)
        );
    }
    let _ = writeln!(md);
    Ok(())
}

fn http_suite(args: &Args, md: &mut String) -> Result<()> {
    let world = bench_world("tcp")?;
    world.dir.write("config/bench.yaml", &http_config())?;
    let cfg = world.dir.path.join("config");
    let plan = plan(&cfg)?;
    let mut extra = vec!["--no-watch", "--no-dns"];
    extra.extend(args.routerd_arg.iter().map(String::as_str));
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &extra)?;
    let l4 = vip(&plan, "l4.bench.mesh", 8080, false).to_string();
    let l7 = vip(&plan, "l7.bench.mesh", 8080, false).to_string();

    // nginx and haproxy in the client's namespace, on loopback, like
    // routerd's proxy listener.
    let (nginx_at, haproxy_at) = ("127.0.0.1:18080", "127.0.0.1:18081");
    let dir = &world.dir.path;
    let nconf = world.dir.write(
        "nginx/nginx.conf",
        &nginx_conf(&dir.join("nginx"), nginx_at),
    )?;
    let hconf = world.dir.write(
        "haproxy/haproxy.cfg",
        &haproxy_conf(&dir.join("haproxy"), haproxy_at),
    )?;
    let ns = world.node.name.clone();
    let nprefix = dir.join("nginx").display().to_string();
    let nginx = Server::start(
        "nginx",
        &ns,
        &[
            "nginx",
            "-p",
            &nprefix,
            "-e",
            &format!("{nprefix}/error.log"),
            "-c",
            &nconf.display().to_string(),
            "-g",
            "daemon off;",
        ],
    )?;
    let haproxy = Server::start(
        "haproxy",
        &ns,
        &["haproxy", "-db", "-f", &hconf.display().to_string()],
    )?;
    for (addr, what) in [
        (&l7, "routerd's proxy"),
        (&nginx_at.to_string(), "nginx"),
        (&haproxy_at.to_string(), "haproxy"),
    ] {
        wait_http(&world, addr, "/healthz", what)?;
        wait_http(&world, addr, "/api/x", what)?;
    }

    let mut rows = Vec::new();
    for (group, new_conn) in [("keep-alive", false), ("new connection per request", true)] {
        let c = |addr: &str| {
            let mut v = c_keepalive(addr, args);
            if new_conn {
                v.push("--new-conn".into());
            }
            v
        };
        let contenders = vec![
            ("direct", &world, c(BACKEND), None),
            ("VIP, L4 (kernel only)", &world, c(&l4), None),
            ("VIP, L7 (routerd proxy)", &world, c(&l7), routerd.pid()),
            ("nginx", &world, c(nginx_at), Some(nginx.0.id())),
            ("haproxy", &world, c(haproxy_at), Some(haproxy.0.id())),
        ];
        rows.extend(compare(group, args.rounds, &contenders)?);
    }
    let _ = writeln!(md, "## HTTP: steady state and the L7 path\n");
    let _ = writeln!(
        md,
        "GET /api/x from {} concurrent clients (one process, CPU 1) to a hyper backend (CPU 0). \
         `keep-alive` is the steady state: requests over established connections. The L7 route is \
         third in its table (after an exact path with a direct response and a header match with a \
         90/10 weighted split); nginx (2 workers) and haproxy (2 threads), from Debian's packages, \
         listen on loopback in the client's namespace with the same three routes and keep-alive to \
         the backend. Every proxy shares the 2 CPUs with the client and the backend. \
         {} ms per measurement, {} alternated rounds (medians). Proxy CPU is the user and \
         system time of the proxy's processes (/proc) over the measurement, per request.\n",
        args.conns, args.millis, args.rounds
    );
    table(
        md,
        "mode",
        "requests",
        &rows,
        &[
            ("direct", "direct"),
            ("nginx", "nginx"),
            ("haproxy", "haproxy"),
        ],
    );
    let _ = writeln!(md);
    write_chart(
        args.out.as_deref(),
        "bench-http.svg",
        &chart("HTTP requests per second", "requests", &rows),
        md,
    )?;
    if let Some(pid) = routerd.pid() {
        let proxies = [
            ("routerd (L7)", c_keepalive(&l7, args), pid),
            ("nginx", c_keepalive(nginx_at, args), nginx.0.id()),
            ("haproxy", c_keepalive(haproxy_at, args), haproxy.0.id()),
        ];
        profile_section(md, &world, &proxies, args.perf_data.as_deref())?;
    }
    Ok(())
}

/// rt-probe's arguments for one keep-alive measurement of `addr` (the
/// HTTP suite adds `--new-conn` for its other mode).
fn c_keepalive(addr: &str, args: &Args) -> Vec<String> {
    [
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
    .collect()
}

/// Where each proxy's time goes in the keep-alive measurement: system
/// calls and context switches per request (`perf stat` on the proxy's
/// processes during one more run of each), then `perf record` on routerd
/// during one more run, summarised by where the samples fall (the kernel,
/// routerd's code, the C library) and the hottest functions. perf is
/// Debian's `linux-perf` (`cargo xtask bench` installs it). `proxies`:
/// name, rt-probe's arguments, process; routerd first.
fn profile_section(
    md: &mut String,
    world: &World,
    proxies: &[(&str, Vec<String>, u32)],
    keep: Option<&Path>,
) -> Result<()> {
    let _ = writeln!(md, "### Where routerd's time goes (L7, keep-alive)\n");
    let _ = writeln!(
        md,
        "What the profile showed before the proxy had workers of its own (this page at commit \
         1712205: 40,491 requests/s, 21.5 us of CPU per request, 64.5% of routerd's samples in \
         the kernel, `_raw_spin_unlock_irqrestore` and `finish_task_switch` on top, tokio's \
         unbounded channel among routerd's own): threads waking each other. Connections ran \
         on the daemon's work-stealing runtime, every request's outcome went through a channel \
         to the health task (a wake-up of another thread per request), and hyper's header \
         timeout made tokio's timer wake itself through an eventfd on a quarter of the \
         requests. What changed: one single-threaded runtime per CPU accepting on its own \
         SO_REUSEPORT socket (a connection never leaves its thread), only failures (and the \
         success that ends a run of them) reach the health task, a one-second tick per \
         worker keeps the timer from waking itself, and freed pages are purged after 10 ms \
         instead of at once (an madvise and a TLB shootdown on the request path).\n"
    );
    let _ = writeln!(
        md,
        "What is left, in the tables below: the kernel's share (socket writes, reads and \
         waiting for events) is the same work for the three proxies, most of each one's CPU \
         time, since each relays every request over two TCP connections on \
         loopback and a write there runs the receiver's network stack too. routerd differs in \
         user space: hyper's HTTP/1 dispatch on both sides, the endpoint connection's own \
         task (a request and its response cross between two tasks through hyper's channels), \
         header maps, allocation and clock reads, spread thin. A proxy whose whole CPU time per request is below the \
         kernel column of another cannot come from user-space work: it needs the local legs \
         to skip the TCP stack (sockmap redirection between local sockets).\n"
    );
    let _ = writeln!(
        md,
        "`perf stat` on each proxy's processes during one more keep-alive measurement: system \
         calls per request, all of them and by kind (socket reads: {}; socket writes: {}; \
         waits: {}), and context switches (voluntary and not) per request. A proxy that \
         relays each request over two connections needs at least two reads and two writes.\n",
        READ_CALLS.join(", "),
        WRITE_CALLS.join(", "),
        WAIT_CALLS.join(", ")
    );
    let _ = writeln!(
        md,
        "| proxy | requests/s | system calls per request | reads | writes | waits | other | \
         context switches per request |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, args, pid) in proxies {
        let (b, c) = syscall_counts(world, args, *pid)?;
        let n = (b.connects as f64).max(1.0);
        let other = c.calls - c.reads - c.writes - c.waits;
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            b.rate,
            c.calls / n,
            c.reads / n,
            c.writes / n,
            c.waits / n,
            other / n,
            c.switches / n
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Where each proxy's CPU time goes, by what it is doing (`perf record -g` on the proxy's \
         processes during one more keep-alive measurement; a sample counts under the first of \
         these its kernel call chain passes through, the rest is its own code and libraries), \
         in microseconds per request. Writes and reads are the TCP work of sending and \
         receiving on the two connections of each request; on loopback a write also runs the \
         receiving side's network stack.\n"
    );
    let _ = writeln!(
        md,
        "| proxy | requests/s | socket writes | socket reads | waiting for events | other \
         kernel | user space | total |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, args, pid) in proxies {
        let (b, us) = activities(world, args, *pid)?;
        let cells: String = us.iter().map(|u| format!(" {u:.1} |")).collect();
        let total: f64 = us.iter().sum();
        let _ = writeln!(md, "| {name} | {:.0} |{cells} {total:.1} |", b.rate);
    }
    let _ = writeln!(md);
    let (_, args, pid) = &proxies[0];
    let pid = *pid;
    let data = world.dir.path.join("perf.data");
    let data_arg = data.display().to_string();
    let pid_arg = pid.to_string();
    let hz = PERF_HZ.to_string();
    let mut record = vec!["record", "-F", &hz, "-p", &pid_arg, "-o", &data_arg];
    if keep.is_some() {
        // Call graphs from the stack copies (routerd has no frame pointers).
        record.extend(["--call-graph", "dwarf,16384"]);
    }
    let b = measure_under_perf(world, args, &record)?;
    if let Some(to) = keep {
        std::fs::copy(&data, to)
            .with_context(|| format!("copying perf.data to {}", to.display()))?;
    }
    let report = |sort: &str, extra: &[&str]| -> Result<Vec<(f64, String)>> {
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-q",
                "--percent-limit",
                "0.7",
            ])
            .args(["--sort", sort])
            .args(extra)
            .arg("-i")
            .arg(&data)
            .output()
            .context("perf report")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let (pct, rest) = l.split_once('%')?;
                // The name, without perf's trailing columns and `[.]`/`[k]`.
                let name = rest.trim().split("  ").next()?.trim();
                let name = name
                    .trim_start_matches("[.]")
                    .trim_start_matches("[k]")
                    .trim();
                Some((pct.trim().parse().ok()?, name.to_string()))
            })
            .collect())
    };
    let dsos = report("dso", &[])?;
    let syms = report("symbol", &["--dsos", "routerd"])?;
    let kernel = report("symbol", &["--dsos", "[kernel.kallsyms]"])?;
    let _ = writeln!(
        md,
        "`perf record` on routerd during one more keep-alive measurement of the L7 contender \
         ({:.0} requests/s). Samples by where they fall, then routerd's own hottest functions \
         (share of all samples; those under 0.7% left out).\n",
        b.rate
    );
    let _ = writeln!(md, "| where | share of samples |\n|---|---:|");
    for (p, d) in &dsos {
        let _ = writeln!(md, "| {} | {p:.1}% |", d.replace('|', "/"));
    }
    let _ = writeln!(md, "\n| routerd function | share of samples |\n|---|---:|");
    for (p, f) in syms.iter().take(12) {
        let _ = writeln!(md, "| `{}` | {p:.1}% |", f.replace('|', "/"));
    }
    let _ = writeln!(
        md,
        "\n| kernel function (routerd's syscalls, wake-ups, switches) | share of samples |\n|---|---:|"
    );
    for (p, f) in kernel.iter().take(8) {
        let _ = writeln!(md, "| `{}` | {p:.1}% |", f.replace('|', "/"));
    }
    let _ = writeln!(md);
    Ok(())
}

/// One measurement (rt-probe's `args`) while `perf <perf_args>` watches,
/// started 300 ms before it and stopped (SIGINT: perf writes what it has
/// and exits) after it.
fn measure_under_perf(world: &World, args: &[String], perf_args: &[&str]) -> Result<Bench> {
    let mut perf = Command::new("perf")
        .args(perf_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf (Debian's linux-perf; `cargo xtask bench` installs it)")?;
    std::thread::sleep(Duration::from_millis(300));
    let b = measure(world, args);
    // SAFETY: SIGINT to our own child.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    perf.wait()?;
    b
}

/// Process `pid` and every process below it, as perf's `-p` takes them.
fn tree_pid_list(pid: u32) -> String {
    let pids: Vec<String> = process_tree(pid)
        .iter()
        .map(|(p, _)| p.to_string())
        .collect();
    pids.join(",")
}

/// Sampling rate of the profiles (per second of CPU time).
const PERF_HZ: f64 = 999.0;

/// One measurement with `perf record -g` on process `pid` and its
/// children: the result, and the microseconds of their CPU time per
/// request in socket writes, socket reads, waiting for events (epoll and
/// the switches it sleeps in), the rest of the kernel, and user space.
fn activities(world: &World, args: &[String], pid: u32) -> Result<(Bench, [f64; 5])> {
    let pids = tree_pid_list(pid);
    let data = world.dir.path.join(format!("perf-activity-{pid}.data"));
    let b = measure_under_perf(
        world,
        args,
        &[
            "record",
            "-g",
            "-F",
            &PERF_HZ.to_string(),
            "-p",
            &pids,
            "-o",
            &data.display().to_string(),
        ],
    )?;
    // Kernel entry points, in the order a sample is counted (a write that
    // ends in a switch is a write).
    const CLASSES: [&[&str]; 3] = [
        &["sock_write_iter", "__sys_sendto", "__sys_sendmsg"],
        &["sock_read_iter", "__sys_recvfrom", "__sys_recvmsg"],
        &["do_epoll_wait"],
    ];
    let out = Command::new("perf")
        .args(["script", "-F", "ip,sym,dso", "-i"])
        .arg(&data)
        .output()
        .context("perf script")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = [0u64; 5];
    for sample in text.split("\n\n").filter(|s| !s.trim().is_empty()) {
        let i = CLASSES
            .iter()
            .position(|names| {
                sample
                    .lines()
                    .any(|l| names.iter().any(|n| l.split_whitespace().nth(1) == Some(n)))
            })
            .unwrap_or_else(|| {
                // The sample's own frame: in the kernel, or not.
                let leaf = sample.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                if leaf.contains("[kernel.kallsyms]") {
                    3
                } else {
                    4
                }
            });
        counts[i] += 1;
    }
    let n = (b.connects as f64).max(1.0);
    Ok((b, counts.map(|c| c as f64 / PERF_HZ * 1e6 / n)))
}

/// System calls and context switches of a proxy's processes over one
/// measurement, counted by `perf stat` on the kernel's tracepoints.
struct SyscallCounts {
    calls: f64,
    reads: f64,
    writes: f64,
    waits: f64,
    switches: f64,
}

/// The system calls a proxy reads a socket with, writes one with, and
/// waits for events with (the tracepoints' names after `sys_enter_`).
const READ_CALLS: [&str; 4] = ["read", "readv", "recvfrom", "recvmsg"];
const WRITE_CALLS: [&str; 4] = ["write", "writev", "sendto", "sendmsg"];
const WAIT_CALLS: [&str; 3] = ["epoll_wait", "epoll_pwait", "epoll_pwait2"];

/// The tracepoint `perf stat` counts entries to system call `call` with.
fn syscall_tracepoint(call: &str) -> String {
    format!("syscalls:sys_enter_{call}")
}

/// One measurement (rt-probe's `args`) with `perf stat` counting the
/// system calls (all, and by kind) and context switches of process `pid`
/// and its children.
fn syscall_counts(world: &World, args: &[String], pid: u32) -> Result<(Bench, SyscallCounts)> {
    let pids = tree_pid_list(pid);
    let out = world.dir.path.join(format!("perf-stat-{pid}.csv"));
    let events: Vec<String> = [
        "raw_syscalls:sys_enter".to_string(),
        "context-switches".into(),
    ]
    .into_iter()
    .chain(
        READ_CALLS
            .iter()
            .chain(&WRITE_CALLS)
            .chain(&WAIT_CALLS)
            .map(|c| syscall_tracepoint(c)),
    )
    .collect();
    let b = measure_under_perf(
        world,
        args,
        &[
            "stat",
            "-x",
            ",",
            "-e",
            &events.join(","),
            "-p",
            &pids,
            "-o",
            &out.display().to_string(),
        ],
    )?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let count = |event: &str| -> Result<f64> {
        text.lines()
            .find(|l| l.split(',').nth(2) == Some(event))
            .and_then(|l| l.split(',').next()?.parse().ok())
            .with_context(|| format!("no count of {event} in perf stat's output:\n{text}"))
    };
    let sum = |calls: &[&str]| -> Result<f64> {
        calls.iter().map(|c| count(&syscall_tracepoint(c))).sum()
    };
    let counts = SyscallCounts {
        calls: count("raw_syscalls:sys_enter")?,
        reads: sum(&READ_CALLS)?,
        writes: sum(&WRITE_CALLS)?,
        waits: sum(&WAIT_CALLS)?,
        switches: count("context-switches")?,
    };
    Ok((b, counts))
}

/// `n` route tables `r<i>`, each the only route of host `r<i>.bench.mesh`
/// to its own service `s<i>`; the services in one file each
/// ([`churn::EndpointFiles`]), as a per-object source (Kubernetes, a
/// distributed store) would feed them.
fn control_config(dir: &Path, n: usize, eps: usize) -> Result<churn::EndpointFiles> {
    let rt = (0..n).fold(node(), |c, i| {
        c.with(rt_forward(
            &format!("r{i}"),
            &format!("r{i}.bench.mesh"),
            &format!("s{i}"),
        ))
    });
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("routes.yaml"), rt.yaml())?;
    churn::EndpointFiles::create(dir, n, eps)
}

/// routerd on a control world of `n` tables (file watcher on).
fn control_routerd(cfg: &Path, n: usize, eps: usize) -> Result<(Cgroup, Routerd, f64)> {
    let cgroup = Cgroup::new(&unique())?;
    let max_s = (n + 16).next_power_of_two().max(16_384).to_string();
    let max_b = (n * eps + 16).next_power_of_two().max(65_536).to_string();
    let t = Instant::now();
    let routerd = Routerd::start(
        &unique(),
        cfg,
        &cgroup.path,
        &[
            "--no-dns",
            "--max-services",
            &max_s,
            "--max-backends",
            &max_b,
        ],
    )?;
    Ok((cgroup, routerd, t.elapsed().as_secs_f64() * 1e3))
}

/// The phases and figures of an `applied` event.
fn applied_of(e: &Event) -> Option<(f64, f64, router_user::events::Phases)> {
    match e {
        Event::Applied {
            elapsed_ms,
            writes,
            phases,
            ..
        } => Some((*elapsed_ms, *writes as f64, *phases)),
        _ => None,
    }
}

fn control_suite(args: &Args, md: &mut String) -> Result<()> {
    let _ = writeln!(md, "## Control plane at scale\n");
    let _ = writeln!(
        md,
        "n route tables, each the only route of its own service with {} endpoints; one file per \
         service. From scratch: `routerd run` on the config until ready (reading, validating, \
         compiling, loading and attaching the programs, writing the maps); the phases are those of \
         the first apply. One endpoint change: one endpoint of one service turns unready (or ready \
         again) in its file (written whole and renamed over the old one); \"file change to applied\" \
         is from the rename to routerd's `applied` event, through the file watcher; \"in routerd\" is \
         the apply itself, from the watcher's event (read, validate, compile, write). Medians of {} \
         changes. Memory after the changes.\n",
        args.endpoints,
        args.rounds.max(5)
    );
    let _ = writeln!(
        md,
        "| route tables | endpoints | start to ready (ms) | first apply: read / validate / compile / write (ms) | one endpoint change: file change to applied (ms) | in routerd (ms) | read / validate / compile / write (ms) | map writes | routerd RSS (MiB) | routerd peak RSS (MiB) | kernel maps (MiB) |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|");
    for &n in &args.route_tables {
        let eps = args.endpoints;
        let dir = TempDir::new(&unique())?;
        let cfg = dir.path.join("config");
        let mut files = control_config(&cfg, n, eps)?;
        let (_cgroup, routerd, start_ms) = control_routerd(&cfg, n, eps)?;
        let first = routerd
            .events(0)
            .iter()
            .find_map(applied_of)
            .context("no applied event")?;
        let mut change = Vec::new();
        for _ in 0..args.rounds.max(5) {
            let mark = routerd.log_len();
            let t = files.change(n / 2)?;
            routerd.wait_event(mark, Event::is_applied)?;
            let (seen, _) = *routerd
                .served_times(mark)
                .first()
                .context("no applied event")?;
            let e = routerd
                .events(mark)
                .iter()
                .find_map(applied_of)
                .context("no applied event")?;
            change.push((seen.duration_since(t).as_secs_f64() * 1e3, e));
            std::thread::sleep(Duration::from_millis(50));
        }
        let (rss, hwm, maps) = memory(routerd.pid().unwrap_or(0));
        type Change = (f64, (f64, f64, router_user::events::Phases));
        let med = |f: &dyn Fn(&Change) -> f64| median(change.iter().map(f).collect());
        let p = first.2;
        let _ = writeln!(
            md,
            "| {n} | {} | {start_ms:.0} | {:.0} / {:.0} / {:.0} / {:.0} | {:.1} | {:.2} | {:.2} / {:.2} / {:.2} / {:.2} | {:.0} | {} | {} | {} |",
            n * eps,
            p.read_ms,
            p.validate_ms,
            p.compile_ms,
            p.write_ms,
            med(&|c| c.0),
            med(&|c| c.1.0),
            med(&|c| c.1.2.read_ms),
            med(&|c| c.1.2.validate_ms),
            med(&|c| c.1.2.compile_ms),
            med(&|c| c.1.2.write_ms),
            med(&|c| c.1.1),
            mib(rss * 1024.0),
            mib(hwm * 1024.0),
            mib(maps)
        );
    }
    let _ = writeln!(md);
    Ok(())
}

/// rt-probe's arguments for the connect measurement against `addr`.
fn connect_args(addr: &str, args: &Args) -> Vec<String> {
    vec![
        "bench".into(),
        addr.into(),
        "--millis".into(),
        args.millis.to_string(),
    ]
}

/// The workloads suite's config: the bench service under a host for every
/// caller and a host for the `app: bench` workload only, and `pods` Pods
/// (`pod0`..) besides the `bench` one.
fn workloads_config(pods: usize) -> String {
    let mut c = bench_router()
        .with(rt_forward("open", "open.bench.mesh", "bench"))
        .with(rt_forward("scoped", "scoped.bench.mesh", "bench").for_workloads(&[("app", "bench")]))
        .with(Pod::new("bench").label("app", "bench"));
    for i in 0..pods {
        c = c.with(Pod::new(&format!("pod{i}")).label("app", "other"));
    }
    c.yaml()
}

/// A workload's hand-off record, written as a CNI plugin would (a
/// temporary file, then a rename).
fn hand_off(dir: &Path, name: &str, netns: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let rec = serde_json::json!({"namespace": "t", "name": name, "netns": netns});
    let tmp = dir.join(format!(".t_{name}.json.tmp"));
    std::fs::write(&tmp, rec.to_string())?;
    std::fs::rename(&tmp, dir.join(format!("t_{name}.json")))?;
    Ok(())
}

/// routerd's descriptors and threads now.
fn fds_threads(pid: u32) -> (usize, usize) {
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    (count("fd"), count("task"))
}

/// Many workloads on one node: start to ready with their records waiting,
/// each one added while routerd runs, what they cost, and the connect path
/// with per-workload visibility (a scoped VIP) beside one without.
fn workloads_suite(args: &Args, md: &mut String) -> Result<()> {
    let n = args.pods;
    let world = bench_world("sink")?;
    world.dir.write("config/bench.yaml", &workloads_config(n))?;
    let cfg = world.dir.path.join("config");
    // The daemon's own listeners in an empty namespace: the bench client's
    // (the node's) is handed over as the workload `t/bench`.
    let daemon_ns = Netns::new(format!("{}d", world.tag))?;
    let daemon_ns_path = format!("/var/run/netns/{}", daemon_ns.name);
    let pods: Vec<Netns> = (0..n)
        .map(|i| Netns::new(format!("{}p{i}", world.tag)))
        .collect::<Result<_>>()?;
    let node_ns = format!("/var/run/netns/{}", world.node.name);
    let start = |records: bool| -> Result<(Routerd, f64)> {
        let mut d = Routerd::new(
            &world.tag,
            &cfg,
            &world.cgroup.path,
            &["--no-watch", "--listen-netns", &daemon_ns_path],
        );
        d.echo.store(false, std::sync::atomic::Ordering::Relaxed);
        let dir = d.state_dir.join("workloads");
        let _ = std::fs::remove_dir_all(&dir);
        hand_off(&dir, "bench", &node_ns)?;
        if records {
            for (i, p) in pods.iter().enumerate() {
                hand_off(
                    &dir,
                    &format!("pod{i}"),
                    &format!("/var/run/netns/{}", p.name),
                )?;
            }
        }
        let t = Instant::now();
        d.spawn()?;
        Ok((d, t.elapsed().as_secs_f64() * 1e3))
    };
    let served = |d: &Routerd| {
        d.events(0)
            .iter()
            .filter(|e| matches!(e, Event::WorkloadServed { .. }))
            .count()
    };
    // Start to ready with every record waiting (all served before ready).
    let (mut full, full_ms) = start(true)?;
    anyhow::ensure!(
        served(&full) == n + 1,
        "routerd served {} of {} workloads",
        served(&full),
        n + 1
    );
    let full_mem = memory(full.pid().unwrap_or(0));
    let full_ft = fds_threads(full.pid().unwrap_or(0));
    full.stop()?;
    drop(full);
    // One workload, then the others added one by one while it runs.
    let (d, one_ms) = start(false)?;
    let pid = d.pid().unwrap_or(0);
    let one_mem = memory(pid);
    let one_ft = fds_threads(pid);
    let dir = d.state_dir.join("workloads");
    let mut add_ms = Vec::new();
    let mut in_routerd = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let from = d.log_len();
        let t = Instant::now();
        hand_off(
            &dir,
            &format!("pod{i}"),
            &format!("/var/run/netns/{}", p.name),
        )?;
        let want = format!("t/pod{i}");
        let e = d.wait_event(
            from,
            |e| matches!(e, Event::WorkloadServed { workload, .. } if *workload == want),
        )?;
        add_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if let Event::WorkloadServed { elapsed_ms, .. } = e {
            in_routerd.push(elapsed_ms);
        }
    }
    let all_mem = memory(pid);
    let all_ft = fds_threads(pid);

    let plan = plan(&cfg)?;
    let open = vip(&plan, "open.bench.mesh", 8080, false).to_string();
    let scoped =
        std::net::SocketAddr::new(plan.hosts_named("scoped.bench.mesh")[0].vip4.into(), 8080)
            .to_string();
    let b = |addr: &str| connect_args(addr, args);
    let contenders = vec![
        ("direct", &world, b(BACKEND), None),
        ("VIP for every caller", &world, b(&open), None),
        ("workload-scoped VIP", &world, b(&scoped), None),
    ];
    let rows = compare("connect", args.rounds, &contenders)?;
    drop(d);

    let pct = |v: &[f64], p: f64| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let _ = writeln!(
        md,
        "## Workloads: pods in network namespaces of their own
"
    );
    let _ = writeln!(
        md,
        "{n} pods, each its own network namespace, handed to routerd through the workloads \
         directory (a JSON record written whole, as a CNI plugin would), plus the bench client's \
         namespace as the workload `t/bench`. routerd opens a DNS (UDP+TCP) and an L7 proxy \
         (IPv4+IPv6, one socket of each per proxy worker) listener inside each, a thread per \
         namespace makes them there.\n"
    );
    let _ = writeln!(
        md,
        "| | start to ready (ms) | RSS (MiB) | descriptors | threads |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let rows_of = [
        (
            "1 workload".to_string(),
            format!("{one_ms:.0}"),
            one_mem,
            one_ft,
        ),
        (
            format!("{} workloads, records waiting at start", n + 1),
            format!("{full_ms:.0}"),
            full_mem,
            full_ft,
        ),
        (
            format!("{} workloads, added one by one while running", n + 1),
            String::new(),
            all_mem,
            all_ft,
        ),
    ];
    for (what, ready, mem, (fds, threads)) in rows_of {
        let rss = mib(mem.0 * 1024.0);
        let _ = writeln!(md, "| {what} | {ready} | {rss} | {fds} | {threads} |");
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Adding a workload while routerd runs ({n} adds, one at a time): record written to \
         `workload_served` seen (inotify, listeners opened in the pod, the kernel's entry, the \
         event through routerd's log) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; inside routerd \
         p50 {:.1} ms, p99 {:.1} ms.\n",
        pct(&add_ms, 0.5),
        pct(&add_ms, 0.99),
        pct(&add_ms, 1.0),
        pct(&in_routerd, 0.5),
        pct(&in_routerd, 0.99)
    );
    let _ = writeln!(
        md,
        "Connect path from the workload `t/bench` (as the connect suite: blocking connect + RST \
         close, one client process): a VIP for every caller, and a VIP of a RouteTable with \
         workloadSelectors that select it (one more hash lookup, `ROUTER_VIS_V3`, keyed by the \
         caller's namespace cookie and the VIP).\n"
    );
    table(
        md,
        "",
        "connects",
        &rows,
        &[
            ("VIP for every caller", "unscoped VIP"),
            ("direct", "direct"),
        ],
    );
    let _ = writeln!(md);
    Ok(())
}

/// Sustained endpoint churn against the largest control world.
fn churn_suite(args: &Args, md: &mut String) -> Result<()> {
    let n = *args
        .route_tables
        .last()
        .context("--route-tables is empty")?;
    let eps = args.endpoints;
    let dir = TempDir::new(&unique())?;
    let cfg = dir.path.join("config");
    let mut files = control_config(&cfg, n, eps)?;
    let (_cgroup, routerd, _) = control_routerd(&cfg, n, eps)?;
    let mark = routerd.log_len();
    let (rss0, _, _) = memory(routerd.pid().unwrap_or(0));
    let written = churn::drive(&mut files, args.churn_rate, args.churn_secs)?;
    std::thread::sleep(Duration::from_millis(500));
    let stale = churn::staleness(&written, &routerd.served_times(mark));
    let (rss1, _, _) = memory(routerd.pid().unwrap_or(0));
    let all: Vec<f64> = stale.iter().flatten().copied().collect();
    let missing = stale.iter().filter(|s| s.is_none()).count();
    let applies = routerd.served_times(mark).len();
    let windows = churn::windows(&written, &stale, 5.0);
    let _ = writeln!(md, "## Sustained endpoint churn\n");
    let _ = writeln!(
        md,
        "{} endpoint changes per second for {} s, spread over the {n} services of the control world \
         above ({} endpoints): each change rewrites one service's file. Staleness: from the rename \
         to the end of the first apply that began after it (through the file watcher). {} changes \
         were served by {applies} applies (bursts coalesce); {missing} were never applied. \
         Overall staleness p50 {:.1} ms, p99 {:.1} ms. routerd RSS {} MiB before, {} MiB after.\n",
        args.churn_rate,
        args.churn_secs,
        n * eps,
        written.len(),
        churn::quantile(&all, 0.5),
        churn::quantile(&all, 0.99),
        mib(rss0 * 1024.0),
        mib(rss1 * 1024.0),
    );
    let _ = writeln!(
        md,
        "| seconds | changes | never applied | staleness p50 (ms) | p99 (ms) | max (ms) |\n|---:|---:|---:|---:|---:|---:|"
    );
    for (t, c, m, p50, p99, max) in &windows {
        let _ = writeln!(
            md,
            "| {t:.0}-{:.0} | {c} | {m} | {p50:.1} | {p99:.1} | {max:.1} |",
            t + 5.0
        );
    }
    let _ = writeln!(md);
    write_chart(
        args.out.as_deref(),
        "bench-churn.svg",
        &line_chart(
            &format!(
                "Staleness under {} endpoint changes/s ({n} services)",
                args.churn_rate
            ),
            "ms",
            &windows.iter().map(|w| (w.0, w.3, w.4)).collect::<Vec<_>>(),
        ),
        md,
    )?;
    Ok(())
}

/// A line chart of p50 and p99 over time: `(x, p50, p99)`.
fn line_chart(title: &str, unit: &str, points: &[(f64, f64, f64)]) -> String {
    let (w, h, left, top, bottom) = (860.0, 360.0, 70.0, 50.0, 50.0);
    let plot_w = w - left - 30.0;
    let plot_h = h - top - bottom;
    let xmax = points.last().map_or(1.0, |p| p.0 + 5.0);
    let ymax = points
        .iter()
        .map(|p| p.2)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.2;
    let x = |v: f64| left + plot_w * v / xmax;
    let y = |v: f64| top + plot_h * (1.0 - v / ymax);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{unit}</text>\n",
        w / 2.0,
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h,
        left + plot_w / 2.0,
        h - 12.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text>\n",
            left - 6.0,
            y(v) + 4.0
        );
    }
    for (i, (name, color)) in [("p50", "#4e79a7"), ("p99", "#e15759")].iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|p| {
                let v = if i == 0 { p.1 } else { p.2 };
                format!("{:.1},{:.1}", x(p.0 + 2.5), y(v))
            })
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n",
            pts.join(" "),
            left + plot_w - 40.0,
            top + 14.0 * (i as f64 + 1.0)
        );
    }
    s += "</svg>\n";
    s
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

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let t = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            t.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|_| format!("{cmd}: not found"))
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
        "Machine: {} CPUs ({cpu}), kernel {}, routerd {} (release build). Contenders: {}; {}; {}.\n\n\
         Command: `cargo xtask bench{}` (about 10 minutes; `--suites`, `--services`, `--millis` and \
         `--rounds` shorten it).\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim(),
        env!("CARGO_PKG_VERSION"),
        version("iptables", "--version"),
        version("nginx", "-v"),
        version("haproxy", "-v"),
        std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--out") && !a.ends_with(".md"))
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    if let Some(dir) = &args.write_control_world {
        let n = args.route_tables.first().copied().unwrap_or(1000);
        control_config(dir, n, args.endpoints)?;
        eprintln!(
            "wrote a control world of {n} route tables to {}",
            dir.display()
        );
        return Ok(());
    }
    for suite in &args.suites {
        match suite.as_str() {
            "connect" => connect_suite(&args, &mut md)?,
            "http" => http_suite(&args, &mut md)?,
            "control" => control_suite(&args, &mut md)?,
            "churn" => churn_suite(&args, &mut md)?,
            "workloads" => workloads_suite(&args, &mut md)?,
            other => bail!(
                "unknown suite {other:?}: expected connect, http, control, churn or workloads"
            ),
        }
    }
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
