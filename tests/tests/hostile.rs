//! Hostile input against the running proxy: oversized headers, malformed
//! requests, slow clients, HTTP/2 abuse. Each gets the right status or a
//! closed connection, and other clients keep being served.
use router_tests::*;

/// The route most of these tests use: every GET to `web`.
fn get_to_web() -> HttpRoute {
    HttpRoute::new()
        .matcher(json!({"uri": {"prefix": "/"}, "method": "GET"}))
        .to(&[Dest::service("web").port(8080)])
}

/// A node (with `node` settings) and the `web` backend on 10.1.0.1.
fn web_node(node: serde_json::Value) -> Config {
    Config::new().node_with("c1", "east", "e1", node).with(web(
        "c1",
        "east",
        "web",
        &[("10.1.0.1", "e1", true)],
    ))
}

fn setup() -> (World, Routerd, String) {
    let y = web_node(json!({})).with(RouteTable::new("web").host("web.t.mesh").http(get_to_web()));
    start_with(&y.yaml(), None)
}

/// A world with `web` on 10.1.0.1 and routerd (no DNS, RLIMIT_NOFILE
/// `nofile`) on `config`; the VIP:port of `web.t.mesh:8080`.
fn start_with(config: &str, nofile: Option<u64>) -> (World, Routerd, String) {
    require_root();
    let world = World::new(&[Listen::tcp("10.1.0.1:8080", "web")]).unwrap();
    world.dir.write("config/all.yaml", config).unwrap();
    let cfg = world.dir.path.join("config");
    let vip = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false).to_string();
    let mut d = Routerd::new(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--no-watch", "--no-dns"],
    );
    d.nofile = nofile;
    d.spawn().unwrap();
    (world, d, vip)
}

/// `rt-probe raw` in the cgroup: send `send` to `vip`, read for `wait_ms`.
fn raw(world: &World, vip: &str, send: &str, wait_ms: u64) -> serde_json::Value {
    raw_with(world.client(bin("rt-probe")), vip, send, wait_ms)
}

fn raw_with(
    mut probe: std::process::Command,
    to: &str,
    send: &str,
    wait_ms: u64,
) -> serde_json::Value {
    let wait = wait_ms.to_string();
    let out = run(probe.args(["raw", to, "--send", send, "--wait-ms", &wait])).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// The peer closed an idle connection after about a second.
fn closed_idle_in_a_second(r: &serde_json::Value, who: &str) {
    let closed = r["closed_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("not closed by {who}: {r}"));
    assert!(
        (900..3000).contains(&closed),
        "{who} closed an idle connection after {closed} ms: {r}"
    );
}

fn healthy(world: &World, vip: &str) {
    let p = world.probe(&["http", vip, "--path", "/still-ok"]).unwrap();
    assert_eq!(
        p[0].status,
        Some(200),
        "the proxy still serves others: {p:?}"
    );
}

#[test]
fn the_proxy_is_never_an_open_proxy() {
    let (world, _d, vip) = setup();
    // CONNECT to anywhere: refused.
    let r = raw(
        &world,
        &vip,
        "CONNECT 198.51.100.7:443 HTTP/1.1\\r\\nHost: 198.51.100.7:443\\r\\n\\r\\n",
        3000,
    );
    assert_eq!(
        r["first_line"].as_str(),
        Some("HTTP/1.1 405 Method Not Allowed"),
        "{r}"
    );
    // An absolute URI and a foreign Host: routed by the table like any
    // request, to the configured endpoint (the node namespace has no route
    // to 198.51.100.7 at all, so only that endpoint can answer).
    let r = raw(
        &world,
        &vip,
        "GET http://198.51.100.7/steal HTTP/1.1\\r\\nHost: 198.51.100.7\\r\\nConnection: close\\r\\n\\r\\n",
        3000,
    );
    assert_eq!(r["first_line"].as_str(), Some("HTTP/1.1 200 OK"), "{r}");
    let text = r["text"].as_str().unwrap();
    assert!(
        text.contains("\"id\":\"web\"") && text.contains("/steal"),
        "not answered by the configured endpoint: {text}"
    );
    healthy(&world, &vip);
}

#[test]
fn oversized_headers_get_431() {
    let (world, _d, vip) = setup();
    let big = "a".repeat(100 * 1024);
    let r = raw(
        &world,
        &vip,
        &format!("GET / HTTP/1.1\\r\\nHost: web\\r\\nX-Big: {big}\\r\\n\\r\\n"),
        5000,
    );
    assert_eq!(
        r["first_line"].as_str(),
        Some("HTTP/1.1 431 Request Header Fields Too Large"),
        "{r}"
    );
    healthy(&world, &vip);
}

#[test]
fn malformed_requests_get_400_and_a_closed_connection() {
    let (world, _d, vip) = setup();
    for junk in [
        "GARBAGE\\r\\n\\r\\n",
        "GET / HTTP/9.9\\r\\n\\r\\n",
        "GET / HTTP/1.1\\r\\nBad Header Line\\r\\n\\r\\n",
    ] {
        let r = raw(&world, &vip, junk, 5000);
        assert!(
            r["first_line"]
                .as_str()
                .is_some_and(|l| l.starts_with("HTTP/1.1 400")),
            "{junk}: {r}"
        );
        assert!(
            r["closed_after_ms"].is_u64(),
            "{junk}: connection left open: {r}"
        );
    }
    healthy(&world, &vip);
}

#[test]
fn slow_clients_are_cut_off_without_stalling_others() {
    let (world, _d, vip) = setup();
    let slow = world
        .client(bin("rt-probe"))
        .args(["slow", &vip, "--conns", "40", "--seconds", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While they dribble, others are served promptly.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let t = std::time::Instant::now();
    healthy(&world, &vip);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    let out = slow.wait_with_output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["opened"], 40, "{s}");
    assert_eq!(
        s["closed_by_server"], 40,
        "header read timeout (10 s) closes them: {s}"
    );
    assert!(s["last_closed_after_s"].as_u64().unwrap() <= 13, "{s}");
}

#[test]
fn http2_stream_floods_and_rapid_resets_are_contained() {
    let (world, d, vip) = setup();
    let out = run(world.client(bin("rt-probe")).args([
        "h2-flood",
        &vip,
        "--streams",
        "300",
        "--resets",
        "3000",
    ]))
    .unwrap();
    let f: serde_json::Value = serde_json::from_str(&out).unwrap();
    // All served, but at most 100 streams at a time (300 x 200 ms >= 600 ms).
    assert_eq!(f["ok"], 300, "{f}");
    assert!(
        f["streams_ms"].as_u64().unwrap() >= 550,
        "stream concurrency is capped: {f}"
    );
    // Rapid resets: the server ends that connection (GOAWAY) long before
    // 3,000 cancelled streams, and serves others.
    assert_eq!(f["closed_by_server"], true, "{f}");
    assert!(f["resets_sent"].as_u64().unwrap() < 3000, "{f}");
    healthy(&world, &vip);
    assert!(d.logs().iter().all(|l| !l.contains("panicked")), "{f}");
    eprintln!("h2 flood: {f}");
}

/// Issue 10, item 2. A prefix rewrite to "" turns `/api@127.0.0.1:6379/x`
/// into `@127.0.0.1:6379/x`; the upstream request must still go to the
/// endpoint the route picked (with the path made absolute), never to an
/// address read out of it. A canary on 127.0.0.1:6379 in the proxy's
/// namespace must see nothing, through a VIP and through a gateway.
#[test]
fn a_rewritten_path_never_chooses_the_upstream() {
    let route = || {
        HttpRoute::new()
            .prefix("/api")
            .to(&[Dest::service("web").port(8080)])
            .forward_with(json!({"pathRewrite": ""}))
    };
    let y = web_node(json!({}))
        .with(RouteTable::new("web").host("web.t.mesh").http(route()))
        .with(Gateway::new("gw").http(8082, "*.example.test"))
        .with(
            RouteTable::new("north")
                .host("ssrf.example.test")
                .gateway("gw")
                .http(route()),
        );
    let (world, _d, vip) = start_with(&y.yaml(), None);
    let canary = world
        .outside(bin("rt-probe"))
        .args(["squat", "--ports", "6379", "--millis", "6000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let attack =
        "GET /api@127.0.0.1:6379/x HTTP/1.1\\r\\nHost: HOST\\r\\nConnection: close\\r\\n\\r\\n";
    // East-west, through the VIP.
    let r = raw(&world, &vip, &attack.replace("HOST", "web.t.mesh"), 3000);
    let text = r["text"].as_str().unwrap_or("");
    assert!(
        text.contains("\"id\":\"web\"") && text.contains("\"path\":\"/@127.0.0.1:6379/x\""),
        "not answered by the configured endpoint with an absolute path: {r}"
    );
    // North-south, through the gateway.
    let out = run(world.outside(bin("rt-probe")).args([
        "raw",
        "10.255.255.1:8082",
        "--send",
        &attack.replace("HOST", "ssrf.example.test"),
        "--wait-ms",
        "3000",
    ]))
    .unwrap();
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = r["text"].as_str().unwrap_or("");
    assert!(
        text.contains("\"id\":\"web\""),
        "the gateway did not answer from the configured endpoint: {r}"
    );
    let out = canary.wait_with_output().unwrap();
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["bound"], serde_json::json!([6379]), "canary up: {c}");
    assert_eq!(c["accepted"], 0, "the proxy dialled the canary: {c}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Issue 10, item 3. A retry policy makes the proxy buffer request bodies;
/// hundreds of uploads that stall half-way must not grow the daemon's
/// memory without bound (one global byte budget, per-client caps, a body
/// deadline), and other clients keep getting 200.
#[test]
fn stalled_uploads_cannot_exhaust_the_daemons_memory() {
    let y = web_node(json!({"proxy": {"bodyTimeout": "4s"}}))
        .with(
            RouteTable::new("web")
                .host("web.t.mesh")
                .http(
                    HttpRoute::new()
                        .name("upload")
                        .label("route", "upload")
                        .prefix("/upload")
                        .to(&[Dest::service("web").port(8080)]),
                )
                .http(get_to_web()),
        )
        .with(
            Policy::retry_timeout(
                "retry",
                json!({"retries": {"attempts": 2, "retryOn": ["5xx"]}}),
            )
            .routes_labelled("route", "upload"),
        );
    let (world, d, vip) = start_with(&y.yaml(), None);
    healthy(&world, &vip);
    let pid = d.pid().unwrap();
    let before = rss_kib(pid);
    let uploads = world
        .client(bin("rt-probe"))
        .args([
            "uploads",
            &vip,
            "--path",
            "/upload",
            "--conns",
            "400",
            "--bytes",
            "1048576",
            "--send",
            "524288",
            "--hold-secs",
            "8",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While 400 uploads of 512 KiB each (200 MiB) hang in the proxy:
    let mut peak = before;
    for _ in 0..12 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        peak = peak.max(rss_kib(pid));
        healthy(&world, &vip);
    }
    let out = uploads.wait_with_output().unwrap();
    let u: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("uploads: {u}; rss before {before} KiB, peak {peak} KiB");
    assert_eq!(u["opened"], 400, "{u}");
    assert!(
        peak - before < 120 * 1024,
        "the daemon grew by {} MiB under stalled uploads ({u})",
        (peak - before) / 1024
    );
    // Every stalled upload was answered: 503 (over the budget) at once, or
    // 408 at the body deadline.
    let answered = u["answered"].as_object().unwrap();
    let n: u64 = answered.values().map(|v| v.as_u64().unwrap()).sum();
    assert!(
        n as usize + u["closed"].as_u64().unwrap() as usize == 400
            && answered.keys().all(|k| k == "503" || k == "408"),
        "{u}"
    );
    healthy(&world, &vip);
}

/// A table on a TCP gateway listener (port 8090) and one on an HTTP one
/// (8082), both to `web`.
fn gateway_config(node: serde_json::Value) -> String {
    let to_web = || HttpRoute::new().to(&[Dest::service("web").port(8080)]);
    web_node(node)
        .with(RouteTable::new("web").host("web.t.mesh").http(get_to_web()))
        .with(
            Gateway::new("gw")
                .http(8082, "*.example.test")
                .tcp(8090, "*.example.test"),
        )
        .with(
            RouteTable::new("north")
                .host("www.example.test")
                .gateway("gw")
                .http(to_web()),
        )
        .with(
            RouteTable::new("tcp")
                .host("tcp.example.test")
                .gateway("gw")
                .tcp(TcpRoute::new().to(&[Dest::service("web").port(8080)])),
        )
        .yaml()
}

fn gateway_setup(node: serde_json::Value, nofile: Option<u64>) -> (World, Routerd, String) {
    start_with(&gateway_config(node), nofile)
}

/// Issue 10, item 9. Nothing waits for ever: an idle HTTP connection (east
/// or north), an idle TCP gateway connection and an upstream that does not
/// answer are all cut at their timeouts.
#[test]
fn idle_connections_and_silent_upstreams_time_out() {
    let (world, _d, vip) = gateway_setup(
        json!({"proxy": {"idleTimeout": "1s", "tcpIdleTimeout": "1s", "upstreamTimeout": "1s"}}),
        None,
    );
    // A keep-alive HTTP/1.1 connection, one request, then silence.
    let r = raw(
        &world,
        &vip,
        "GET /one HTTP/1.1\\r\\nHost: web.t.mesh\\r\\n\\r\\n",
        5000,
    );
    assert_eq!(r["first_line"].as_str(), Some("HTTP/1.1 200 OK"), "{r}");
    closed_idle_in_a_second(&r, "the proxy");
    // The same on the gateway, and an idle TCP gateway connection.
    let outside = || world.outside(bin("rt-probe"));
    let r = raw_with(
        outside(),
        "10.255.255.1:8082",
        "GET / HTTP/1.1\\r\\nHost: www.example.test\\r\\n\\r\\n",
        5000,
    );
    closed_idle_in_a_second(&r, "the gateway");
    let r = raw_with(outside(), "10.255.255.1:8090", "", 5000);
    closed_idle_in_a_second(&r, "the TCP gateway");
    // An upstream that takes 3 s to answer: 504 after the default 1 s.
    let t = std::time::Instant::now();
    let p = world
        .probe(&["http", &vip, "--path", "/slow/3000"])
        .unwrap();
    assert_eq!(p[0].status, Some(504), "{p:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}

/// Issue 10, item 9 (fairness). One client address flooding a gateway with
/// thousands of connections takes at most its share: a client at another
/// address is still served.
#[test]
fn one_client_cannot_take_every_gateway_connection() {
    let (world, d, _vip) = gateway_setup(json!({}), Some(4096));
    world.world.sysctl("net.ipv4.ip_forward=1").unwrap();
    let other = world.other_node(1).unwrap();
    let flood = world
        .outside(bin("rt-probe"))
        .args([
            "hold",
            "10.255.255.1:8082",
            "--conns",
            "4500",
            "--hold-secs",
            "6",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let out = run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &other.name,
        "curl",
        "-sS",
        "--max-time",
        "3",
        "-H",
        "Host: www.example.test",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://10.255.255.1:8082/",
    ]));
    let flooded = flood.wait_with_output().unwrap();
    assert_eq!(
        out.as_deref().unwrap_or("error"),
        "200",
        "another client was not served during the flood ({}); routerd logged:\n{}",
        String::from_utf8_lossy(&flooded.stdout),
        d.logs().join("\n")
    );
}
