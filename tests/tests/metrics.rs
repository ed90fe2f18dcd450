//! Prometheus metrics (issue 16): routerd serves `/metrics` on
//! `--metrics-addr` (loopback of its own namespace here), a real Prometheus
//! scrapes it, and its HTTP API returns the series real traffic made: the
//! kernel's per-service connects (summed from the per-CPU maps at scrape
//! time), the proxy's requests by route and class, reloads. `promtool check
//! metrics` lints the exposition. Host-only: the VMs carry no Prometheus.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use router_tests::*;

/// A port nothing listens on now, on loopback of this namespace.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `web.t.mesh:8080` routed in the kernel, `shop.t.mesh:8080` by the proxy.
fn config() -> String {
    two_zones(true)
        .with(local_vd("web", "web.t.mesh", "web", 8080, "TCP"))
        .with(
            RouteTable::new("shop").host("shop.t.mesh").http(
                HttpRoute::new()
                    .name("api")
                    .prefix("/api")
                    .to(&[Dest::service("web").port(8080)]),
            ),
        )
        .yaml()
}

fn get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the one series `query` returns (Prometheus's HTTP API).
fn query(prom: u16, q: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-G"])
        .arg(format!("http://127.0.0.1:{prom}/api/v1/query"))
        .args(["--data-urlencode", &format!("query={q}")])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_what_real_traffic_did() {
    require_root();
    let world = World::new(&[
        Listen::tcp("10.1.0.1:8080", "e1"),
        Listen::tcp("10.1.1.1:8080", "e2"),
    ])
    .unwrap();
    world.dir.write("config/all.yaml", &config()).unwrap();
    let cfg = world.dir.path.join("config");
    let web = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
    let shop = vip(&plan(&cfg).unwrap(), "shop.t.mesh", 8080, false);
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let routerd = Routerd::start(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--no-watch", "--metrics-addr", &metrics_addr],
    )
    .unwrap();
    // Real traffic: 7 connections through the kernel, 3 requests through
    // the proxy (each a connection to the L7 VIP, which the kernel hands
    // to the proxy).
    let probes = world
        .probe(&["tcp", &web.to_string(), "--count", "7"])
        .unwrap();
    assert!(probes.iter().all(|p| p.answer.is_some()), "{probes:?}");
    for _ in 0..3 {
        let (code, body, ..) = curl(&world, &[&format!("http://{}:8080/api/x", shop.ip())], true);
        assert_eq!(code, 200, "{body}");
    }
    // Two names asked of the node's resolver (an address nothing serves:
    // the kernel captures the queries and routerd answers them).
    world.resolv_conf("10.53.0.1").unwrap();
    for _ in 0..2 {
        let out = world
            .client("dig")
            .args(["+short", "+time=2", "+tries=1", "web.t.mesh"])
            .output()
            .unwrap();
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(ip, web.ip().to_string());
    }
    let text = get(&format!("http://{metrics_addr}/metrics"));
    assert!(
        text.contains("routerd_dns_queries_total{result=\"answered\"} 2"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("routerd_service_connects_total{")
                && l.contains("host=\"web.t.mesh\"")
                && l.contains("family=\"ipv4\"")
                && l.ends_with(" 7")),
        "{text}"
    );
    assert!(
        text.contains(
            "routerd_http_requests_total{service=\"shop.t.mesh:8080\",route=\"api\",code=\"2xx\"} 3"
        ),
        "{text}"
    );
    assert!(text.contains("routerd_build_info{version="), "{text}");
    // The exposition passes Prometheus's own linter.
    let dir = world.dir.path.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let scrape = dir.join("scrape.txt");
    std::fs::write(&scrape, &text).unwrap();
    let lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scrape).unwrap())
        .output()
        .expect("promtool (apt-get install prometheus; cargo xtask setup installs it)");
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // A real Prometheus scrapes it every second.
    let prom = free_port();
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: routerd\n  static_configs: [{{targets: ['{metrics_addr}']}}]\n"
        ),
    )
    .unwrap();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt-get install prometheus)"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = [
        (
            "routerd_service_connects_total{host=\"web.t.mesh\",family=\"ipv4\"}",
            7.0,
        ),
        (
            "sum(routerd_http_requests_total{route=\"api\",code=\"2xx\"})",
            3.0,
        ),
        (
            "routerd_config_reloads_total{trigger=\"start-up\",result=\"applied\"}",
            1.0,
        ),
        ("routerd_build_info", 1.0),
        ("routerd_map_capacity{map=\"services\"}", 16384.0),
    ];
    loop {
        let last: Vec<Option<f64>> = wanted.iter().map(|(q, _)| query(prom, q)).collect();
        if wanted
            .iter()
            .zip(&last)
            .all(|((_, want), got)| *got == Some(*want))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not get the series within 30 s: {:?}",
            wanted.iter().map(|(q, _)| q).zip(&last).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(routerd);
}

/// `routerd inspect --watch`: a live view of connects/s per service from
/// the pinned maps (no Prometheus needed); `--count` frames, then it exits.
#[test]
fn inspect_watch_shows_connects_per_second() {
    require_root();
    let world = World::new(&[
        Listen::tcp("10.1.0.1:8080", "e1"),
        Listen::tcp("10.1.1.1:8080", "e2"),
    ])
    .unwrap();
    world.dir.write("config/all.yaml", &config()).unwrap();
    let cfg = world.dir.path.join("config");
    let web = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"]).unwrap();
    let watch = Command::new(bin("routerd"))
        .args(["inspect", "--watch", "--interval", "2s", "--count", "1"])
        .arg("--pin-root")
        .arg(&routerd.pin_root)
        .arg("--state-dir")
        .arg(&routerd.state_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // 20 connections within the frame's two seconds.
    std::thread::sleep(Duration::from_millis(300));
    let probes = world
        .probe(&["tcp", &web.to_string(), "--count", "20"])
        .unwrap();
    assert!(probes.iter().all(|p| p.answer.is_some()), "{probes:?}");
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains(&web.to_string()) && l.contains("web.t.mesh"))
        .unwrap_or_else(|| panic!("no web.t.mesh row: {text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    let per_s: f64 = cols[2].parse().unwrap();
    let total: u64 = cols[5].parse().unwrap();
    assert_eq!(total, 20, "{line}");
    assert!(
        (8.0..=12.0).contains(&per_s),
        "20 connections in ~2 s: {line}"
    );
    drop(routerd);
}
