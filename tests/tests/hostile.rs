//! Hostile input against the running proxy: oversized headers, malformed
//! requests, slow clients, HTTP/2 abuse. Each gets the right status or a
//! closed connection, and other clients keep being served.
use router_tests::{yaml, *};

fn setup() -> (World, Routerd, String) {
    require_root();
    let world = World::new(&[Listen::tcp("10.1.0.1:8080", "web")]).unwrap();
    let mut y = yaml::router("c1", "east", "e1", "");
    y += &yaml::web("c1", "east", "web", &[("10.1.0.1", "e1", true)]);
    y += "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: web, namespace: t}\nspec:\n  hosts: [web.t.mesh]\n  http:\n  - matchers: [{uri: {prefix: /}, method: GET}]\n    forwardTo: {destinations: [{ref: {name: web}, port: {number: 8080}}]}\n---\n";
    world.dir.write("config/all.yaml", &y).unwrap();
    let cfg = world.dir.path.join("config");
    let vip = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false).to_string();
    let routerd = Routerd::start(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--no-watch", "--no-dns"],
    )
    .unwrap();
    (world, routerd, vip)
}

fn raw(world: &World, vip: &str, send: &str, wait_ms: u64) -> serde_json::Value {
    let out = run(world.client(bin("rt-probe")).args([
        "raw",
        vip,
        "--send",
        send,
        "--wait-ms",
        &wait_ms.to_string(),
    ]))
    .unwrap();
    serde_json::from_str(&out).unwrap()
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
