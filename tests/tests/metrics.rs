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

use router_tests::{
    prom::{Prometheus, free_port, grafana_expr},
    *,
};

/// A world whose `web` endpoints (10.1.0.1, 10.1.1.1 on 8080) serve.
fn web_world() -> World {
    World::new(&[
        Listen::tcp("10.1.0.1:8080", "e1"),
        Listen::tcp("10.1.1.1:8080", "e2"),
    ])
    .unwrap()
}

/// `config` written into `world` and routerd serving it with `args`: the
/// config directory and the daemon.
fn serve(world: &World, config: &Config, args: &[&str]) -> (std::path::PathBuf, Routerd) {
    world.dir.write("config/all.yaml", &config.yaml()).unwrap();
    let cfg = world.dir.path.join("config");
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, args).unwrap();
    (cfg, routerd)
}

fn get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn prometheus_scrapes_what_real_traffic_did() {
    require_root();
    let world = web_world();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (cfg, routerd) = serve(
        &world,
        &web_and_shop(),
        &["--no-watch", "--metrics-addr", &metrics_addr],
    );
    let web = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
    let shop = vip(&plan(&cfg).unwrap(), "shop.t.mesh", 8080, false);
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
    // The three requests' answers, by the endpoint that gave them.
    let upstream_2xx: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("routerd_http_upstream_responses_total{upstream=\"10.1.")
                && l.contains("code=\"2xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(upstream_2xx, 3.0, "{text}");
    assert!(
        text.contains("routerd_http_destination_requests_total{service=\"shop.t.mesh:8080\",route=\"api\",destination=\"Service c1/t/web port 8080\"} 3"),
        "{text}"
    );
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
    let prom = Prometheus::start(&dir, &metrics_addr).unwrap();
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
        let last: Vec<Option<f64>> = wanted.iter().map(|(q, _)| prom.query(q)).collect();
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
    // Every panel of the Grafana dashboard (deploy/grafana) is a query
    // Prometheus accepts and, with this traffic, answers with data (series
    // of things that did not happen are there, at zero).
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/routerd.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // More traffic and a reload while Prometheus watches (a quantile of
    // rates needs observations inside its window; rates need two samples).
    for _ in 0..3 {
        let (code, ..) = curl(&world, &[&format!("http://{}:8080/api/y", shop.ip())], true);
        assert_eq!(code, 200);
    }
    let mark = routerd.log_len();
    routerd.signal(libc::SIGHUP);
    routerd.wait_outcome(mark).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut empty = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        let expr = grafana_expr(p["targets"][0]["expr"].as_str().unwrap());
        let series = prom
            .range(&expr, now - 60.0, now, 1.0)
            .unwrap_or_else(|| panic!("panel {}: Prometheus refused `{expr}`", p["title"]));
        if series.iter().all(|s| s.points.is_empty()) {
            empty.push(p["title"].as_str().unwrap().to_string());
        }
    }
    assert!(empty.is_empty(), "panels with no data: {empty:?}");
    drop(routerd);
}

/// `routerd inspect --watch`: a live view of connects/s per service from
/// the pinned maps (no Prometheus needed); `--count` frames, then it exits.
#[test]
fn inspect_watch_shows_connects_per_second() {
    require_root();
    let world = web_world();
    let (cfg, routerd) = serve(&world, &web_and_shop(), &["--no-watch"]);
    let web = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
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

/// Access logs (Gloo's AccessLogPolicy): the proxy writes one JSON line per
/// request its filters let through (any of them: here a status of 400 or
/// more, or a request header `x-team` matching `pay.*`), with the headers
/// it names, to `spec.proxy.accessLogPath`; the lines are counted.
#[test]
fn access_log_policies_write_json_lines_for_what_their_filters_let_through() {
    require_root();
    let world = web_world();
    let log = world.dir.path.join("access.log");
    let node = Config::new().node_with(
        "c1",
        "east",
        "e1",
        json!({"proxy": {"accessLogPath": log.display().to_string()}}),
    );
    let config = web_and_shop_on(node).with(Policy::access_log(
        "log",
        json!({
            "filters": [
                {"statusCodeMatcher": {"value": 400, "comparator": "GE"}},
                {"headerMatcher": {"name": "x-team", "value": "pay.*", "regex": true}}
            ],
            "includedRequestHeaders": ["x-team"],
            "includedResponseHeaders": ["content-type"]
        }),
    ));
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (cfg, _routerd) = serve(
        &world,
        &config,
        &["--no-watch", "--metrics-addr", &metrics_addr],
    );
    let shop = vip(&plan(&cfg).unwrap(), "shop.t.mesh", 8080, false);
    let url = |path: &str| format!("http://{}:8080{path}", shop.ip());
    // Not logged: a 200 without the header, and one with another team.
    for args in [
        vec![url("/api/quiet")],
        vec!["-H".into(), "x-team: shop".into(), url("/api/other")],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(&world, &args, true).0, 200);
    }
    // Logged: a 404 (no route), and a 200 whose x-team matches.
    assert_eq!(curl(&world, &[&url("/nowhere")], true).0, 404);
    assert_eq!(
        curl(&world, &["-H", "x-team: payments", &url("/api/paid")], true).0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(
        (
            lines[0]["path"].as_str(),
            lines[0]["status"].as_u64(),
            lines[0]["route"].as_str()
        ),
        (Some("/nowhere"), Some(404), Some("(no route)"))
    );
    assert_eq!(lines[1]["path"], "/api/paid");
    assert_eq!(lines[1]["route"], "api");
    assert_eq!(lines[1]["service"], "shop.t.mesh:8080");
    assert_eq!(lines[1]["request_headers"]["x-team"], "payments");
    assert_eq!(
        lines[1]["response_headers"]["content-type"],
        "application/json"
    );
    let text = get(&format!("http://{metrics_addr}/metrics"));
    assert!(
        text.contains("routerd_access_log_lines_total{result=\"written\"} 2"),
        "{text}"
    );
}

/// An endpoint an active health check takes out shows as a series of
/// `routerd_endpoint_out_of_service` (and counts in
/// `routerd_avoided_endpoints`).
#[test]
fn endpoints_out_of_service_are_series() {
    require_root();
    // Only e1 serves: e2 (10.1.1.1) has no process, so its checks fail.
    let world = World::new(&[Listen::tcp("10.1.0.1:8080", "e1")]).unwrap();
    world
        .world
        .ip(&["addr", "add", "10.1.1.1/32", "dev", "lo"])
        .unwrap();
    let config = web_and_shop().with(
        Policy::active_health_check(
            "hc",
            json!({"healthCheck": {"interval": "200ms", "timeout": "200ms", "unhealthyThreshold": 1, "tcpHealthCheck": {}}}),
        )
        .virtual_destinations_labelled("lb", "local"),
    );
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (_cfg, _routerd) = serve(
        &world,
        &config,
        &["--no-watch", "--metrics-addr", &metrics_addr],
    );
    let want = "routerd_endpoint_out_of_service{endpoint=\"10.1.1.1:8080\",by=\"health_check\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = get(&format!("http://{metrics_addr}/metrics"));
        if text.contains(want) {
            assert!(text.contains("routerd_avoided_endpoints 1"), "{text}");
            assert!(
                !text.contains("endpoint=\"10.1.0.1:8080\""),
                "the serving endpoint is not out: {text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no `{want}` within 10 s: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
