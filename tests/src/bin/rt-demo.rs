//! The demo (`cargo xtask demo`): a small multi-cluster world in network
//! namespaces, built from the inventory in `configs/`, with `routerd`
//! routing real clients (curl, rt-probe) by VIP. Prints where each
//! connection went and why, shows a live failover and a daemon restart, and
//! removes everything it created.
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use clap::Parser;
use router_tests::*;
use router_user::{config::Overrides, plan::Proto};

#[derive(Parser)]
struct Args {
    /// The example config.
    #[arg(long, default_value = "configs")]
    config: PathBuf,
    /// Serve the config from etcd: a 3-member etcd with TLS, the config
    /// published to it, routerd following it (no config files).
    #[arg(long)]
    store: bool,
}

/// `routerd publish` of the demo's config to the demo's etcd; prints what
/// it says.
fn publish(bin: &std::path::Path, etcd: &etcd::Etcd, config: &std::path::Path) -> Result<()> {
    let out = run(Command::new(bin)
        .arg("publish")
        .args(etcd.store_args(&etcd.url("mesh")))
        .arg("--config")
        .arg(config))?;
    for l in out.lines() {
        println!("  {l}");
    }
    Ok(())
}

/// Copy the example config to a directory of root's that only root can
/// write (routerd refuses config others could write).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// A backend for every endpoint in the inventory (ready or not), named
/// `service@cluster/zone`.
fn listens(config: &std::path::Path) -> Result<Vec<Listen>> {
    let v = router_user::config::load(config, &Overrides::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for svc in v.inventory.by_name.values() {
        for ep in &svc.endpoints {
            for (name, port, proto) in ep.ports.iter() {
                let id = format!("{}@{}/{}", svc.id.name, ep.cluster, ep.locality.zone);
                let addr = SocketAddr::new(ep.ip, *port);
                let proto = match (proto, name.as_deref()) {
                    (Proto::Udp, _) => "udp",
                    // Serves HTTPS with a certificate of its own.
                    (_, Some("https")) => "tls",
                    _ => "tcp",
                };
                out.push(Listen::new(proto, addr, &id));
            }
        }
    }
    out.sort_by_key(|l| (l.addr, l.proto));
    out.dedup_by_key(|l| (l.addr, l.proto));
    Ok(out)
}

/// `curl http://host:port/` by name (resolved through routerd's DNS, which
/// the kernel captures): the backend's answer and the peer curl saw.
fn curl(
    world: &World,
    host: &str,
    port: u16,
    v6: bool,
) -> Result<std::result::Result<(Answer, String), String>> {
    let out = world
        .client("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            if v6 { "-6" } else { "-4" },
            "-w",
            "\\n%{remote_ip}",
        ])
        .arg(format!("http://{host}:{port}/"))
        .output()
        .context("running curl (apt-get install curl)")?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, peer) = text.rsplit_once('\n').unwrap_or((&text, ""));
    Ok(serde_json::from_str(body)
        .map(|a| (a, peer.to_string()))
        .map_err(|e| e.to_string()))
}

const RESOLVER: &str = "10.53.0.1";

/// A name's IPv4 address as a process in the cgroup resolves it (glibc).
fn resolve(world: &World, name: &str) -> Result<std::net::IpAddr> {
    let out = run(world.client("getent").args(["ahostsv4", name]))?;
    out.split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{name} did not resolve: {out:?}"))
}

fn heading(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn show_curls(
    world: &World,
    host: &str,
    port: u16,
    v6: bool,
    n: usize,
) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        match curl(world, host, port, v6)? {
            Ok((a, peer)) => {
                println!(
                    "  curl http://{host}:{port}/ -> connected to {peer} -> answered by {} ({})",
                    a.id, a.local
                );
                *seen.entry(a.id).or_default() += 1;
            }
            Err(e) => {
                println!("  curl http://{host}:{port}/ -> {e}");
                *seen.entry(format!("error: {e}")).or_default() += 1;
            }
        }
    }
    Ok(seen)
}

/// `routerd explain` of what the demo's daemon serves (its state dir), with
/// more arguments, its first `lines` lines.
fn explain_with(
    bin: &std::path::Path,
    routerd: &Routerd,
    config: &std::path::Path,
    args: &[&str],
    lines: usize,
) -> Result<()> {
    let out = run(Command::new(bin)
        .arg("explain")
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(&routerd.state_dir))?;
    for l in out.lines().take(lines) {
        println!("  | {l}");
    }
    Ok(())
}

/// `routerd explain` of `target`, whole.
fn explain(
    bin: &std::path::Path,
    routerd: &Routerd,
    config: &std::path::Path,
    target: &str,
) -> Result<()> {
    explain_with(bin, routerd, config, &[target], usize::MAX)
}

/// reviews' connections by version (v2 is the one endpoint 10.1.1.31).
fn reviews_versions(probes: &[Probe]) -> BTreeMap<&'static str, usize> {
    let mut by_version = BTreeMap::new();
    for p in probes {
        let v = match p.answer.as_ref().map(|a| a.local.as_str()) {
            Some("10.1.1.31:9080") => "v2",
            Some(_) => "v1",
            None => "failed",
        };
        *by_version.entry(v).or_default() += 1;
    }
    by_version
}

/// One curl, printed: status, a response header, and who answered.
fn curl_show(world: &World, inside: bool, label: &str, args: &[&str]) -> Result<()> {
    let (code, body, headers, ..) = router_tests::curl(world, args, inside);
    let body = body.as_str();
    let route = headers
        .get("x-route")
        .map(|v| format!(", x-route: {v}"))
        .unwrap_or_default();
    let who = match serde_json::from_str::<Answer>(body) {
        Ok(a) => format!(
            "answered by {} at {} (path {}, x-routed-by: {})",
            a.id,
            a.local,
            a.path,
            a.headers
                .get("x-routed-by")
                .map(String::as_str)
                .unwrap_or("-")
        ),
        Err(_) => format!("body {:?}", body.trim()),
    };
    println!("  {label} -> {code}{route}, {who}");
    Ok(())
}

/// The same route table through both entry points.
fn l7_demo(world: &World) -> Result<()> {
    let url = "http://ratings.shop.mesh.internal:9090";
    curl_show(
        world,
        true,
        "east-west  curl http://ratings.shop.mesh.internal:9090/api/ratings/7",
        &[&format!("{url}/api/ratings/7")],
    )?;
    curl_show(
        world,
        true,
        "east-west  curl .../healthz",
        &[&format!("{url}/healthz")],
    )?;
    curl_show(
        world,
        true,
        "east-west  curl .../unknown",
        &[&format!("{url}/unknown")],
    )?;
    let gw = "http://10.255.255.1:8088";
    curl_show(
        world,
        false,
        "north-south curl -H 'Host: ratings.shop.mesh.internal' http://<node>:8088/api/ratings/7",
        &[
            "-H",
            "Host: ratings.shop.mesh.internal",
            &format!("{gw}/api/ratings/7"),
        ],
    )?;
    curl_show(
        world,
        false,
        "north-south curl -H 'Host: nope.example' http://<node>:8088/",
        &["-H", "Host: nope.example", &format!("{gw}/")],
    )?;
    // TLS passthrough: vault's own certificate (issued to vault, not to
    // routerd, which has none here) answers.
    let resolve = "vault.shop.mesh.internal:8443:10.255.255.1";
    curl_show(
        world,
        false,
        "north-south curl -k https://vault.shop.mesh.internal:8443/ (PASSTHROUGH by SNI)",
        &[
            "-k",
            "--resolve",
            resolve,
            "https://vault.shop.mesh.internal:8443/secret",
        ],
    )?;
    let v = world
        .outside("curl")
        .args([
            "-skv",
            "--resolve",
            resolve,
            "-o",
            "/dev/null",
            "https://vault.shop.mesh.internal:8443/",
        ])
        .output()?;
    let cert: Vec<String> = String::from_utf8_lossy(&v.stderr)
        .lines()
        .filter(|l| l.contains("subject:") || l.contains("subjectAltName"))
        .map(|l| l.trim_start_matches(['*', ' ']).to_string())
        .collect();
    println!(
        "  the certificate curl got is the endpoint's: {}",
        cert.join("; ")
    );
    Ok(())
}

fn set_app_b_ready(config: &std::path::Path, ready: bool) -> Result<()> {
    let f = config.join("inventory/cluster-1.yaml");
    let text = std::fs::read_to_string(&f)?;
    let line = |r: bool| {
        format!("- {{addresses: [10.1.1.20], zone: us-east-1a, conditions: {{ready: {r}}}}}")
    };
    let new = text.replacen(&line(!ready), &line(ready), 1);
    if new == text {
        bail!(
            "could not find app-b's cluster-1 endpoint in {}",
            f.display()
        );
    }
    let tmp = f.with_extension("yaml.tmp~");
    std::fs::write(&tmp, new)?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(tmp, f)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match demo() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    let args = Args::parse();
    require_root();
    let routerd_bin = bin("routerd");
    println!(
        "routerd demo: the example config in {}, a node in cluster-1 (us-east/us-east-1a)",
        args.config.display()
    );
    let mut backends = listens(&args.config)?;
    // Outside the mesh, reached by names the upstream resolver knows: a
    // status page (plain DNS) and the partner API (an ExternalService).
    backends.push(Listen::tcp("10.9.9.9:8080", "status-page@outside"));
    backends.push(Listen::tcp("10.9.9.10:8080", "partner-api@outside"));
    let world = World::new(&backends)?;
    let _resolver = world.dnsmasq(
        RESOLVER,
        &[
            "status.example.test,10.9.9.9",
            "api.partner.example.test,10.9.9.10",
        ],
    )?;
    world.resolv_conf(RESOLVER)?;
    println!(
        "world: namespaces {} (clients; no default route; resolv.conf: nameserver {RESOLVER}) and {} \
         ({} backends in 2 clusters and two outside, and a dnsmasq resolver), cgroup {}",
        world.node.name,
        world.world.name,
        backends.len() - 2,
        world.cgroup.path.display()
    );
    let config = world.dir.path.join("configs");
    copy_dir(&args.config, &config)?;
    let t = std::time::Instant::now();
    // Prometheus metrics on loopback of the daemon's namespace.
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut extra = vec!["--metrics-addr".to_string(), metrics_addr.clone()];
    let etcd = if args.store {
        heading("etcd: a 3-member cluster on loopback with TLS; the config is published to it");
        let etcd = etcd::Etcd::start(3, true)?;
        println!(
            "  etcd members at {} (client certificates signed by a CA made for the demo)",
            etcd.url("mesh")
        );
        publish(&routerd_bin, &etcd, &config)?;
        extra.extend(etcd.store_args(&etcd.url("mesh")));
        extra.push("--store-snapshot".into());
        extra.push(world.dir.path.join("store-snapshot").display().to_string());
        Some(etcd)
    } else {
        None
    };
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut routerd = Routerd::new(&world.tag, &config, &world.cgroup.path, &extra);
    if etcd.is_some() {
        routerd.without_config();
    }
    routerd.spawn()?;
    println!(
        "started: routerd {} (ready in {:.0} ms)",
        routerd.args.join(" "),
        t.elapsed().as_secs_f64() * 1e3
    );

    heading(
        "names: routerd answers for virtual hosts; everything else goes to the node's resolver",
    );
    for name in [
        "app-a.shop.mesh.internal",
        "app-b.shop.mesh.internal",
        "status.example.test",
    ] {
        let got = run(world.client("getent").args(["ahosts", name])).unwrap_or_default();
        let addrs: std::collections::BTreeSet<&str> = got
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        println!(
            "  getent ahosts {name} -> {}",
            addrs.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let dig = run(world.client("dig").args([
        "+noall",
        "+comments",
        "+answer",
        "app-b.shop.mesh.internal",
        "AAAA",
    ]))?;
    let status = dig
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("?");
    println!(
        "  dig app-b.shop.mesh.internal AAAA -> {status}, no answer (app-b has no IPv6 endpoints: NODATA, not NXDOMAIN)"
    );
    show_curls(&world, "status.example.test", 8080, false, 1)?;

    heading("routerd check: what the config compiles to");
    for l in run(Command::new(&routerd_bin)
        .args(["check", "--config"])
        .arg(&config))?
    .lines()
    {
        println!("  {l}");
    }

    heading("app-a: a route straight to app-a's Service in cluster-1");
    let a = show_curls(&world, "app-a.shop.mesh.internal", 8080, false, 6)?;
    println!("  => {a:?}");
    explain(
        &routerd_bin,
        &routerd,
        &config,
        "app-a.shop.mesh.internal:8080",
    )?;

    heading(
        "app-b: a route to a VirtualDestination whose closest healthy instance is in cluster-2",
    );
    let b = show_curls(&world, "app-b.shop.mesh.internal", 8080, false, 6)?;
    println!("  => {b:?}");
    explain(&routerd_bin, &routerd, &config, "app-b.shop.mesh.internal")?;

    heading(
        "reviews: delegated to the reviews team's table, 80/20 between v1 and v2 (200 connections)",
    );
    let vip_r = SocketAddr::new(resolve(&world, "reviews.shop.mesh.internal")?, 9080);
    let probes = world.probe(&["tcp", &vip_r.to_string(), "--count", "200"])?;
    println!(
        "  rt-probe tcp {vip_r} x200 -> {:?} by backend, {:?} by version",
        tally(&probes),
        reviews_versions(&probes)
    );

    heading(
        "workloads: two pods, each in its own network namespace; one name, two route tables \
         (workloadSelectors)",
    );
    let pods = [world.pod(1, RESOLVER)?, world.pod(2, RESOLVER)?];
    let names = ["frontend-1", "frontend-preview"];
    for (p, name) in pods.iter().zip(names) {
        let mark = routerd.log_len();
        run(Command::new(&routerd_bin)
            .args(["workload", "add", "--namespace", "shop", "--name", name])
            .args(["--netns", &p.netns(), "--cgroup"])
            .arg(&p.cgroup.path)
            .arg("--state-dir")
            .arg(&routerd.state_dir))?;
        let want = format!("shop/{name}");
        let e = routerd.wait_event(
            mark,
            |e| matches!(e, Event::WorkloadServed { workload, .. } if *workload == want),
        )?;
        if let Event::WorkloadServed { listeners, .. } = e {
            println!(
                "  routerd workload add --name {name} --netns {} -> listeners inside the pod: {}",
                p.netns(),
                listeners.join(", ")
            );
        }
    }
    for (p, name) in pods.iter().zip(names) {
        let out = run(p
            .cmd("getent")
            .args(["ahostsv4", "reviews.shop.mesh.internal"]))?;
        let ip = out.split_whitespace().next().unwrap_or("?").to_string();
        let probes = parse_probes(&run(p.cmd(bin("rt-probe")).args([
            "tcp",
            &format!("{ip}:9080"),
            "--count",
            "50",
        ]))?)?;
        println!(
            "  in {name}: reviews.shop.mesh.internal -> {ip}; rt-probe x50 -> {:?} by version",
            reviews_versions(&probes)
        );
    }
    println!("  routerd explain reviews.shop.mesh.internal --workload shop/frontend-preview:");
    explain_with(
        &routerd_bin,
        &routerd,
        &config,
        &[
            "reviews.shop.mesh.internal",
            "--workload",
            "shop/frontend-preview",
        ],
        6,
    )?;

    heading("echo: UDP through a VIP; the reply comes from the VIP");
    let vip_e = SocketAddr::new(resolve(&world, "echo.shop.mesh.internal")?, 9000);
    for p in world.probe(&["udp", &vip_e.to_string(), "--count", "3"])? {
        let a = p.answer.clone().unwrap_or_default();
        println!(
            "  sendto {vip_e} -> answered by {} ({}), reply source seen by the app: {}",
            a.id,
            a.local,
            p.peer.unwrap_or_default()
        );
    }

    heading(
        "partner: an ExternalService; routerd gives it a VIP and resolves its host upstream itself",
    );
    show_curls(&world, "api.partner.example.test", 8080, false, 2)?;
    explain(
        &routerd_bin,
        &routerd,
        &config,
        "api.partner.example.test:8080",
    )?;

    heading("IPv6: app-a's IPv6 VIP");
    show_curls(&world, "app-a.shop.mesh.internal", 8080, true, 2)?;

    heading("getpeername: the application sees the VIP, the backend sees the client");
    let p = &world.probe(&[
        "tcp",
        &SocketAddr::new(resolve(&world, "app-a.shop.mesh.internal")?, 8080).to_string(),
    ])?[0];
    let a = p.answer.clone().unwrap_or_default();
    println!(
        "  client's getpeername() = {}, backend {} bound to {} saw client {}",
        p.peer.clone().unwrap_or_default(),
        a.id,
        a.local,
        a.peer
    );

    heading(
        "ratings: routes on the request path, so the kernel hands the connection to routerd's L7 proxy",
    );
    explain(
        &routerd_bin,
        &routerd,
        &config,
        "ratings.shop.mesh.internal",
    )?;
    l7_demo(&world)?;
    let p = &world.probe(&["tcp", "240.240.255.254:80"])?[0];
    println!(
        "  connect 240.240.255.254:80 (in the VIP range, no such service) -> {}",
        p.error.clone().unwrap_or_default()
    );

    heading(if etcd.is_some() {
        "live failover: app-b's cluster-1 instance becomes ready (config edited and published; \
         routerd follows etcd)"
    } else {
        "live failover: app-b's cluster-1 instance becomes ready (config edited, routerd reloads)"
    });
    let mark = routerd.log_len();
    set_app_b_ready(&config, true)?;
    if let Some(etcd) = &etcd {
        publish(&routerd_bin, etcd, &config)?;
    }
    routerd.wait_event(mark, |e| matches!(e, Event::Applied { .. }))?;
    let b = show_curls(&world, "app-b.shop.mesh.internal", 8080, false, 3)?;
    println!("  => {b:?} (the same zone is preferred again)");
    let mark = routerd.log_len();
    set_app_b_ready(&config, false)?;
    if let Some(etcd) = &etcd {
        publish(&routerd_bin, etcd, &config)?;
    }
    routerd.wait_event(mark, |e| matches!(e, Event::Applied { .. }))?;
    let b = show_curls(&world, "app-b.shop.mesh.internal", 8080, false, 3)?;
    println!("  => {b:?} (back to cluster-2)");

    heading(&format!(
        "metrics: Prometheus scrapes http://{metrics_addr}/metrics (a few live series)"
    ));
    let text = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "5",
        &format!("http://{metrics_addr}/metrics"),
    ]))?;
    let shown = [
        "routerd_service_connects_total{host=\"app-a.shop.mesh.internal\"",
        "routerd_service_connects_total{host=\"reviews.shop.mesh.internal\"",
        "routerd_http_requests_total{service=\"ratings.shop.mesh.internal:9090\"",
        "routerd_dns_queries_total",
        "routerd_config_reloads_total",
        "routerd_map_entries",
    ];
    for l in text
        .lines()
        .filter(|l| shown.iter().any(|p| l.starts_with(p)) && !l.ends_with(" 0"))
    {
        println!("  {l}");
    }

    heading("kill -9 routerd: routing goes on; a restart adopts the pinned maps");
    let vip_a = SocketAddr::new(resolve(&world, "app-a.shop.mesh.internal")?, 8080);
    routerd.kill9();
    for p in world.probe(&["tcp", &vip_a.to_string(), "--count", "2"])? {
        let a = p.answer.unwrap_or_default();
        println!(
            "  connect {vip_a} (app-a's VIP) with routerd dead -> answered by {} ({})",
            a.id, a.local
        );
    }
    // DNS capture follows a heartbeat: within 3 s queries go back to the
    // node's resolver, which knows the outside names but not the mesh's.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    for name in ["status.example.test", "app-a.shop.mesh.internal"] {
        match resolve(&world, name) {
            Ok(ip) => println!("  getent {name} with routerd dead -> {ip}"),
            Err(_) => println!(
                "  getent {name} with routerd dead -> not found (virtual host names need routerd)"
            ),
        }
    }
    let mark = routerd.log_len();
    routerd.spawn()?;
    if routerd.logs()[mark..]
        .iter()
        .any(|l| l.contains("adopted the pinned datapath"))
    {
        println!("  restarted routerd adopted the pinned datapath (no flush, counters kept)");
    }
    show_curls(&world, "app-a.shop.mesh.internal", 8080, false, 1)?;

    heading("routerd inspect: the kernel's maps and per-CPU counters");
    let out = run(Command::new(&routerd_bin).args([
        "inspect",
        "--pin-root",
        &routerd.pin_root.display().to_string(),
        "--state-dir",
        &routerd.state_dir.display().to_string(),
    ]))?;
    for l in out.lines() {
        println!("  {l}");
    }

    heading("cleanup");
    routerd.stop()?;
    drop(routerd);
    drop(pods);
    drop(world);
    drop(etcd);
    println!("  removed the namespaces, the cgroup, the pinned maps and links, and the temp files");
    Ok(())
}
