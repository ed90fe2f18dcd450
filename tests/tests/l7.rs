//! The L7 path end to end: real clients (curl and rt-probe's hyper client)
//! in the child cgroup dial a virtual host by name; the kernel hands the
//! connection to routerd's proxy, which routes each request. The same route
//! engine serves a VirtualGateway listener (plain and TLS) for clients
//! outside the cgroup.

use router_tests::*;

const RESOLVER: &str = "10.53.0.1";
/// The node namespace's own address: where north-south clients reach the gateway.
const NODE_IP: &str = "10.255.255.1";

/// The shop: `api` (subsets v1 and v2), `flaky`, `shadow`; one table with
/// every kind of HTTP route, the policies on its labelled routes, and a
/// gateway serving `*.example.test` on 8081 and 8443 (TLS with `tls`:
/// certificate and key).
fn config(tls: Option<(&str, &str)>) -> String {
    config_tls(tls.map(
        |(cert, key)| json!({"mode": "SIMPLE", "files": {"serverCert": cert, "privateKey": key}}),
    ))
}

/// Dual-stack gateways: every test reaches them over IPv4, and
/// [`gateways_serve_ipv6_clients_when_asked`] over IPv6.
const GATEWAY_ADDRESSES: [&str; 2] = ["0.0.0.0", "::"];

/// [`config`], with the 8443 listener's `tls` as given.
fn config_tls(tls: Option<serde_json::Value>) -> String {
    config_on(tls, &GATEWAY_ADDRESSES)
}

/// [`config_tls`], with the gateways on `addrs`.
fn config_on(tls: Option<serde_json::Value>, addrs: &[&str]) -> String {
    let mut y = Config::new()
        .node_with(
            "c1",
            "east",
            "e1",
            json!({"proxy": {"gatewayAddresses": addrs}}),
        )
        .with(Service::new("c1", "api").named_port("http", 8080, "TCP"));
    for (v, ip) in [("v1", "10.1.0.1"), ("v2", "10.1.0.2")] {
        y = y.with(
            Slice::new("c1", "api", &format!("api-{v}"))
                .label("version", v)
                .named_port("http", 8080, "TCP")
                .endpoint(ip, "e1"),
        );
    }
    for (name, ip, port) in [
        ("flaky", "10.1.0.3", 8080),
        ("shadow", "10.1.0.4", 8080),
        ("pass-a", "10.1.0.5", 8443),
        ("pass-b", "10.1.0.6", 8443),
    ] {
        y = y.with(service_with_slice(
            "c1",
            "east",
            name,
            name,
            port,
            &[(ip, "e1", true)],
        ));
    }
    // gRPC: the port's name says HTTP/2 to the endpoints.
    y = y.with(Service::new("c1", "echo").named_port("grpc", 9090, "TCP"));
    y = y.with(
        Slice::new("c1", "echo", "echo")
            .named_port("grpc", 9090, "TCP")
            .endpoint("10.1.0.7", "e1")
            .endpoint("10.1.0.8", "e1"),
    );
    let api = |subset: &str| Dest::service("api").port(8080).subset("version", subset);
    let labelled = |name: &str| HttpRoute::new().name(name).label("route", name);
    let shop = RouteTable::new("shop")
        .host("shop.t.mesh")
        .http(
            HttpRoute::new()
                .name("v2-by-header")
                .matcher(json!({"uri": {"prefix": "/api"}, "headers": [{"name": "x-version", "value": "v2"}]}))
                .to(&[api("v2")]),
        )
        .http(
            HttpRoute::new()
                .name("v2-by-query")
                .matcher(json!({"uri": {"prefix": "/api"}, "queryParameters": [{"name": "canary", "value": "true"}]}))
                .to(&[api("v2")]),
        )
        .http(
            labelled("api")
                .prefix("/api")
                .to(&[api("v1")])
                .forward_with(json!({"pathRewrite": "/v1"})),
        )
        .http(
            labelled("flaky")
                .prefix("/flaky")
                .to(&[Dest::service("flaky").port(8080)]),
        )
        .http(labelled("delay").prefix("/delay").to(&[api("v1")]))
        .http(labelled("abort").prefix("/abort").to(&[api("v1")]))
        .http(labelled("mirror").prefix("/mirror").to(&[api("v1")]))
        .http(
            HttpRoute::new()
                .name("old")
                .exact("/old")
                .redirect(json!({"pathRedirect": "/new", "responseCode": "FOUND"})),
        )
        .http(
            HttpRoute::new()
                .name("teapot")
                .exact("/teapot")
                .direct(418, "short and stout"),
        )
        .http(labelled("cors").prefix("/cors").to(&[api("v1")]))
        .http(
            HttpRoute::new()
                .name("split")
                .prefix("/split")
                .to(&[api("v1").weight(70), api("v2").weight(30)]),
        );
    let gateway = Gateway::new("gw")
        .http(8081, "*.example.test")
        .tcp(8082, "tcp.example.test")
        .passthrough(8444, "*.pass.test");
    let gateway = match tls {
        Some(tls) => gateway.https_with(8443, "*.example.test", tls),
        None => gateway.http(8443, "*.example.test"),
    };
    let echo = RouteTable::new("echo").host("echo.t.mesh").http(
        HttpRoute::new()
            .name("grpc")
            .label("route", "grpc")
            .prefix("/")
            .to(&[Dest::service("echo").port(9090)]),
    );
    y.with(shop)
        .with(echo)
        .with(
            Policy::retry_timeout(
                "grpc-retry",
                json!({"retries": {"attempts": 2, "retryOn": "unavailable"}}),
            )
            .routes_labelled("route", "grpc"),
        )
        .with(
            Policy::header_manipulation(
                "headers",
                json!({
                    "appendRequestHeaders": {"x-added": "yes"},
                    "removeRequestHeaders": ["x-remove-me"],
                    "appendResponseHeaders": {"x-served-by": "routerd"}
                }),
            )
            .routes_labelled("route", "api"),
        )
        .with(
            Policy::retry_timeout(
                "retry",
                json!({"retries": {"attempts": 2, "retryOn": ["5xx"]}, "requestTimeout": "5s"}),
            )
            .routes_labelled("route", "flaky"),
        )
        .with(
            Policy::fault_injection(
                "delay",
                json!({"delay": {"fixedDelay": "300ms", "percentage": 100}}),
            )
            .routes_labelled("route", "delay"),
        )
        .with(
            Policy::fault_injection(
                "abort",
                json!({"abort": {"httpStatus": 503, "percentage": 50}}),
            )
            .routes_labelled("route", "abort"),
        )
        .with(
            Policy::mirror(
                "mirror",
                json!({"destination": {"ref": {"name": "shadow"}, "port": {"number": 8080}}, "percentage": 100}),
            )
            .routes_labelled("route", "mirror"),
        )
        .with(
            Policy::cors(
                "cors",
                json!({
                    "allowOrigins": [{"exact": "https://app.example.test"}],
                    "allowMethods": ["GET", "POST"],
                    "allowHeaders": ["x-token"],
                    "maxAge": "1h"
                }),
            )
            .routes_labelled("route", "cors"),
        )
        .with(gateway)
        .with(
            RouteTable::new("north")
                .host("www.example.test")
                .gateway("gw")
                .http(
                    HttpRoute::new()
                        .name("teapot")
                        .exact("/teapot")
                        .direct(418, "short and stout"),
                )
                .http(
                    HttpRoute::new()
                        .name("api")
                        .prefix("/api")
                        .to(&[api("v1")])
                        .forward_with(json!({"pathRewrite": "/v1"})),
                ),
        )
        .with(
            RouteTable::new("tcp-north")
                .host("tcp.example.test")
                .gateway("gw")
                .tcp(TcpRoute::new().to(&[api("v1").weight(90), api("v2").weight(10)])),
        )
        .with(
            RouteTable::new("pass")
                .host("*.pass.test")
                .gateway("gw")
                .tls(
                    TlsRoute::new()
                        .name("a")
                        .sni(&["a.pass.test"])
                        .to(&[Dest::service("pass-a").port(8443)]),
                )
                .tls(
                    TlsRoute::new()
                        .name("b")
                        .sni(&["b.pass.test", "*.b.pass.test"])
                        .to(&[Dest::service("pass-b").port(8443)]),
                ),
        )
        .with(
            RouteTable::new("not-allowed")
                .host("other.test")
                .gateway("gw")
                .http(HttpRoute::new().to(&[api("v1")])),
        )
        .yaml()
}

struct L7 {
    world: World,
    routerd: Routerd,
    _dnsmasq: Proc,
    ca: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn setup() -> L7 {
    setup_args(&["--no-watch"])
}

/// [`setup`], routerd run with `args`.
fn setup_args(args: &[&str]) -> L7 {
    require_root();
    let world = World::new(&[
        Listen::tcp("10.1.0.1:8080", "v1"),
        Listen::tcp("10.1.0.2:8080", "v2"),
        Listen::tcp("10.1.0.3:8080", "flaky"),
        Listen::tcp("10.1.0.4:8080", "shadow"),
        Listen::tls("10.1.0.5:8443", "a.pass.test"),
        Listen::tls("10.1.0.6:8443", "b.pass.test"),
        Listen::grpc("10.1.0.7:9090", "g1"),
        Listen::grpc("10.1.0.8:9090", "g2"),
    ])
    .unwrap();
    let dnsmasq = world.dnsmasq(RESOLVER, &[]).unwrap();
    world.resolv_conf(RESOLVER).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["www.example.test".to_string()]).unwrap();
    let cert = world.dir.write("tls/cert.pem", &ck.cert.pem()).unwrap();
    let key = world
        .dir
        .write("tls/key.pem", &ck.signing_key.serialize_pem())
        .unwrap();
    world
        .dir
        .write(
            "config/all.yaml",
            &config(Some((
                &cert.display().to_string(),
                &key.display().to_string(),
            ))),
        )
        .unwrap();
    let cfg = world.dir.path.join("config");
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, args).unwrap();
    L7 {
        world,
        routerd,
        _dnsmasq: dnsmasq,
        ca: cert,
        key,
    }
}

fn answer(body: &str) -> Answer {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a backend answer ({e}): {body:?}"))
}

#[test]
fn requests_route_by_path_header_and_query_with_rewrites() {
    let l = setup();
    let (code, body, _, _, remote) =
        curl(&l.world, &["http://shop.t.mesh:8080/api/items?x=1"], true);
    assert_eq!(code, 200);
    let a = answer(&body);
    assert_eq!(
        (a.id.as_str(), a.path.as_str()),
        ("v1", "/v1/items?x=1"),
        "pathRewrite replaced the matched prefix"
    );
    assert!(
        remote.starts_with("240.240.") || remote.starts_with("2001:2:"),
        "the application still sees the VIP: {remote}"
    );
    let a = answer(
        &curl(
            &l.world,
            &["-H", "x-version: v2", "http://shop.t.mesh:8080/api/items"],
            true,
        )
        .1,
    );
    assert_eq!((a.id.as_str(), a.path.as_str()), ("v2", "/api/items"));
    let a = answer(
        &curl(
            &l.world,
            &["http://shop.t.mesh:8080/api/items?canary=true"],
            true,
        )
        .1,
    );
    assert_eq!(a.id, "v2");
    let (code, body, ..) = curl(&l.world, &["http://shop.t.mesh:8080/nothing-here"], true);
    assert_eq!(code, 404, "{body}");
}

#[test]
fn header_manipulation_is_visible_at_the_backend_and_the_client() {
    let l = setup();
    let (code, body, headers, ..) = curl(
        &l.world,
        &["-H", "x-remove-me: secret", "http://shop.t.mesh:8080/api/h"],
        true,
    );
    assert_eq!(code, 200);
    let a = answer(&body);
    assert_eq!(
        a.headers.get("x-added").map(String::as_str),
        Some("yes"),
        "{:?}",
        a.headers
    );
    assert!(!a.headers.contains_key("x-remove-me"), "{:?}", a.headers);
    assert_eq!(
        headers.get("x-served-by").map(String::as_str),
        Some("routerd")
    );
}

/// Issue 15: a request without `x-request-id` reaches the endpoint with a
/// fresh one (a UUID); one with an id keeps it, and trace context
/// (W3C `traceparent`/`tracestate`, B3) passes through unchanged.
#[test]
fn request_ids_are_added_and_trace_context_passes_through() {
    let l = setup();
    let (code, body, ..) = curl(&l.world, &["http://shop.t.mesh:8080/api/id"], true);
    assert_eq!(code, 200, "{body}");
    let id = answer(&body)
        .headers
        .get("x-request-id")
        .cloned()
        .expect("an x-request-id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let trace = [
        ("x-request-id", "client-chosen-17"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ];
    let mut args: Vec<String> = Vec::new();
    for (k, v) in trace {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    args.push("http://shop.t.mesh:8080/api/trace".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, body, ..) = curl(&l.world, &args, true);
    assert_eq!(code, 200, "{body}");
    let seen = answer(&body).headers;
    for (k, v) in trace {
        assert_eq!(seen.get(k).map(String::as_str), Some(v), "{k}: {seen:?}");
    }
}

/// `te: trailers` (what gRPC clients send) reaches the endpoint; any other
/// TE is hop-by-hop and does not.
#[test]
fn te_trailers_crosses_the_proxy_and_other_te_does_not() {
    let l = setup();
    let seen = |te: &str| {
        let (code, body, ..) = curl(
            &l.world,
            &["-H", &format!("te: {te}"), "http://shop.t.mesh:8080/api/te"],
            true,
        );
        assert_eq!(code, 200, "{body}");
        answer(&body).headers.get("te").cloned()
    };
    assert_eq!(seen("trailers").as_deref(), Some("trailers"));
    assert_eq!(seen("gzip"), None);
}

/// What `rt-probe ws` prints.
#[derive(serde::Deserialize, Debug)]
struct Ws {
    status: u16,
    replies: Vec<String>,
    error: Option<String>,
}

fn ws(cmd: &mut std::process::Command) -> Ws {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "rt-probe ws printed no result ({e}): {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Issue 15 (WebSockets): a real WebSocket client (tungstenite) through an
/// east-west L7 host and a gateway listener to a real WebSocket server:
/// the upgrade crosses the proxy (it used to be dropped as a hop-by-hop
/// header), messages go both ways on the tunnel and across quiet spells,
/// and a route that answers directly refuses the upgrade with its status.
#[test]
fn websockets_upgrade_through_l7_hosts_and_gateways() {
    let l = setup();
    let cfg = l.world.dir.path.join("config");
    let shop = vip(&plan(&cfg).unwrap(), "shop.t.mesh", 8080, false).to_string();
    let expect: Vec<String> = (0..3).map(|i| format!("v1:m{i}")).collect();
    let east = ws(l.world.client(bin("rt-probe")).args([
        "ws",
        &shop,
        "--host",
        "shop.t.mesh",
        "--path",
        "/api/chat",
        "--pause-ms",
        "300",
    ]));
    assert_eq!((east.status, &east.error), (101, &None), "{east:?}");
    assert_eq!(
        east.replies, expect,
        "east-west, through the api route (v1)"
    );
    let gw = format!("{NODE_IP}:8081");
    let north = ws(l.world.outside(bin("rt-probe")).args([
        "ws",
        &gw,
        "--host",
        "www.example.test",
        "--path",
        "/api/chat",
    ]));
    assert_eq!((north.status, &north.error), (101, &None), "{north:?}");
    assert_eq!(north.replies, expect, "through the gateway listener");
    let direct = ws(l.world.client(bin("rt-probe")).args([
        "ws",
        &shop,
        "--host",
        "shop.t.mesh",
        "--path",
        "/teapot",
    ]));
    assert_eq!(direct.status, 418, "{direct:?}");
    assert!(
        direct.replies.is_empty() && direct.error.is_some(),
        "{direct:?}"
    );
    // Plain requests on the same host are unaffected.
    let (code, body, ..) = curl(&l.world, &["http://shop.t.mesh:8080/api/after"], true);
    assert_eq!(code, 200, "{body}");
}

/// What `rt-probe grpc` prints.
#[derive(serde::Deserialize, Debug)]
struct GrpcCalls {
    calls: Vec<(i32, String)>,
    error: Option<String>,
}

fn grpc(l: &L7, extra: &[&str]) -> GrpcCalls {
    let cfg = l.world.dir.path.join("config");
    let echo = vip(&plan(&cfg).unwrap(), "echo.t.mesh", 9090, false).to_string();
    let out = l
        .world
        .client(bin("rt-probe"))
        .args(["grpc", &echo])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("rt-probe grpc: {e}: {text:?}"))
}

/// Issue 15 (gRPC): a real gRPC client and server (tonic) through an
/// east-west L7 host: HTTP/2 to the endpoints (the port is named `grpc`),
/// the status in the trailers (a call without them fails), calls spread
/// over both endpoints, a status the server chose passes through, and
/// `retryOn: unavailable` retries a call the server failed with
/// UNAVAILABLE before answering.
#[test]
fn grpc_calls_cross_the_proxy_with_trailers_and_status_retries() {
    let l = setup();
    // Each call picks an endpoint at random: 32 calls all land on one of
    // the two with odds of 2^-31 (with 6 the odds were 1 in 32, and CI
    // hit it).
    let ok = grpc(&l, &["--count", "32"]);
    assert_eq!(ok.error, None, "{ok:?}");
    assert!(ok.calls.iter().all(|(code, _)| *code == 0), "{ok:?}");
    let served: std::collections::BTreeSet<&str> = ok
        .calls
        .iter()
        .map(|(_, a)| a.split(':').next().unwrap())
        .collect();
    assert_eq!(served, ["g1", "g2"].into(), "{ok:?}");
    for (i, (_, a)) in ok.calls.iter().enumerate() {
        assert!(a.ends_with(&format!(":m{i}")), "{a}");
    }
    // NOT_FOUND (5) is the call's answer: passed on, not retried.
    let nf = grpc(&l, &["--status", "5", "--count", "6"]);
    assert!(
        nf.calls
            .iter()
            .all(|(code, m)| *code == 5 && m.starts_with("asked by")),
        "{nf:?}"
    );
    // Every call fails once with UNAVAILABLE; the retry answers it.
    let retried = grpc(&l, &["--fail-once", "k", "--count", "6"]);
    assert_eq!(retried.error, None, "{retried:?}");
    assert!(
        retried.calls.iter().all(|(code, _)| *code == 0),
        "{retried:?}"
    );
}

#[test]
fn retries_recover_from_a_backend_that_fails_once() {
    let l = setup();
    for i in 0..10 {
        let (code, body, ..) = curl(
            &l.world,
            &[&format!("http://shop.t.mesh:8080/flaky/key-{i}")],
            true,
        );
        assert_eq!(code, 200, "attempt {i}: {body}");
    }
    // The backend saw each key twice: the failure and the retry.
    let log = curl(&l.world, &["http://10.1.0.3:8080/__log"], true).1;
    let seen: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    assert_eq!(seen.len(), 20, "{log}");
}

#[test]
fn fault_injection_delays_and_aborts_at_the_configured_rate() {
    let l = setup();
    let t = std::time::Instant::now();
    let (code, ..) = curl(&l.world, &["http://shop.t.mesh:8080/delay/x"], true);
    assert_eq!(code, 200);
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let vip = resolve(&l.world, "shop.t.mesh");
    let probes = l
        .world
        .probe(&[
            "http",
            &format!("{vip}:8080"),
            "--path",
            "/abort/x",
            "--count",
            "400",
        ])
        .unwrap();
    let aborted = probes.iter().filter(|p| p.status == Some(503)).count();
    let ok = probes.iter().filter(|p| p.status == Some(200)).count();
    assert_eq!(aborted + ok, 400);
    // p = 0.5, n = 400: sigma 0.025; 5 sigma.
    let share = aborted as f64 / 400.0;
    assert!((share - 0.5).abs() < 0.125, "aborted share {share}");
}

fn resolve(world: &World, name: &str) -> String {
    run(world.client("getent").args(["ahostsv4", name]))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn mirrored_traffic_arrives() {
    let l = setup();
    for i in 0..3 {
        assert_eq!(
            curl(
                &l.world,
                &[&format!("http://shop.t.mesh:8080/mirror/{i}")],
                true
            )
            .0,
            200
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log: Vec<serde_json::Value> =
            serde_json::from_str(&curl(&l.world, &["http://10.1.0.4:8080/__log"], true).1).unwrap();
        let mirrored: Vec<&serde_json::Value> = log
            .iter()
            .filter(|e| {
                e["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/mirror/"))
            })
            .collect();
        if mirrored.len() == 3 {
            assert!(
                mirrored.iter().all(|e| e["headers"]["host"]
                    .as_str()
                    .is_some_and(|h| h.ends_with("-shadow"))),
                "{mirrored:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mirror saw {mirrored:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn redirects_direct_responses_and_cors() {
    let l = setup();
    let (code, _, headers, ..) = curl(&l.world, &["http://shop.t.mesh:8080/old"], true);
    assert_eq!(code, 302);
    assert_eq!(
        headers.get("location").map(String::as_str),
        Some("http://shop.t.mesh:8080/new")
    );
    let (code, body, ..) = curl(&l.world, &["http://shop.t.mesh:8080/teapot"], true);
    assert_eq!((code, body.as_str()), (418, "short and stout"));
    // CORS preflight is answered by the proxy; real requests get the headers.
    let (code, _, headers, ..) = curl(
        &l.world,
        &[
            "-X",
            "OPTIONS",
            "-H",
            "origin: https://app.example.test",
            "-H",
            "access-control-request-method: POST",
            "http://shop.t.mesh:8080/cors/x",
        ],
        true,
    );
    assert_eq!(code, 200);
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://app.example.test")
    );
    assert_eq!(
        headers
            .get("access-control-allow-methods")
            .map(String::as_str),
        Some("GET,POST")
    );
    assert_eq!(
        headers.get("access-control-max-age").map(String::as_str),
        Some("3600")
    );
    let (_, _, headers, ..) = curl(
        &l.world,
        &[
            "-H",
            "origin: https://evil.example",
            "http://shop.t.mesh:8080/cors/x",
        ],
        true,
    );
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "{headers:?}"
    );
}

#[test]
fn weighted_splits_are_per_request_and_http2_works() {
    let l = setup();
    let vip = resolve(&l.world, "shop.t.mesh");
    // 500 requests on ONE connection: the split is per request.
    let probes = l
        .world
        .probe(&[
            "http",
            &format!("{vip}:8080"),
            "--path",
            "/split/x",
            "--count",
            "500",
        ])
        .unwrap();
    let v1 = probes
        .iter()
        .filter(|p| p.answer.as_ref().is_some_and(|a| a.id == "v1"))
        .count();
    let v2 = probes
        .iter()
        .filter(|p| p.answer.as_ref().is_some_and(|a| a.id == "v2"))
        .count();
    assert_eq!(v1 + v2, 500);
    let share = v1 as f64 / 500.0;
    assert!((share - 0.7).abs() < 0.1, "v1 share {share}");
    // HTTP/2 with prior knowledge, through the VIP.
    let (code, body, _, version, _) = curl(
        &l.world,
        &["--http2-prior-knowledge", "http://shop.t.mesh:8080/api/h2"],
        true,
    );
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let probes = l
        .world
        .probe(&[
            "http",
            &format!("{vip}:8080"),
            "--path",
            "/api/z",
            "--count",
            "20",
            "--http2",
        ])
        .unwrap();
    assert!(probes.iter().all(|p| p.status == Some(200)), "{probes:?}");
}

/// Issue 15 (IPv6 gateway listeners): with `gatewayAddresses: ["0.0.0.0",
/// "::"]` every gateway listener (HTTP, TCP) also serves IPv6 clients, on a
/// socket of its own beside the IPv4 one; a reload that drops `::` closes
/// the IPv6 sockets only, and one that adds it back opens them on the
/// ports that serve on.
#[test]
fn gateways_serve_ipv6_clients_when_asked() {
    let l = setup();
    let get = |url: &str, host: &str| {
        let (code, body, ..) = curl(
            &l.world,
            &["-g", "-H", &format!("host: {host}"), url],
            false,
        );
        (code, body)
    };
    let v6 = "http://[fd00:ffff::1]";
    let v4 = format!("http://{NODE_IP}");
    let (code, body) = get(&format!("{v6}:8081/api/six"), "www.example.test");
    assert_eq!(code, 200, "{body}");
    let a = answer(&body);
    assert_eq!((a.id.as_str(), a.path.as_str()), ("v1", "/v1/six"));
    // The TCP gateway listener too (its route splits 90/10 over v1/v2).
    let (code, body) = get(&format!("{v6}:8082/tcp"), "tcp.example.test");
    assert_eq!(code, 200, "{body}");
    assert!(["v1", "v2"].contains(&answer(&body).id.as_str()), "{body}");
    // IPv4 only: the IPv6 sockets close, the IPv4 ones serve on.
    let (cert, key) = (l.ca.display().to_string(), l.key.display().to_string());
    let tls = json!({"mode": "SIMPLE", "files": {"serverCert": cert, "privateKey": key}});
    l.world
        .dir
        .write(
            "config/all.yaml",
            &config_on(Some(tls.clone()), &["0.0.0.0"]),
        )
        .unwrap();
    let r = l.routerd.reload().unwrap();
    assert!(r.is_applied(), "{r}");
    let (code, body) = get(&format!("{v6}:8081/api/six"), "www.example.test");
    assert_eq!(code, 0, "nothing listens on IPv6 any more: {body}");
    let (code, body) = get(&format!("{v4}:8081/api/four"), "www.example.test");
    assert_eq!(code, 200, "{body}");
    // And back.
    l.world
        .dir
        .write("config/all.yaml", &config_on(Some(tls), &GATEWAY_ADDRESSES))
        .unwrap();
    let r = l.routerd.reload().unwrap();
    assert!(r.is_applied(), "{r}");
    let (code, body) = get(&format!("{v6}:8081/api/six"), "www.example.test");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn the_same_kind_of_table_serves_a_virtual_gateway_plain_and_tls() {
    let l = setup();
    let gw = format!("http://{NODE_IP}:8081");
    let (code, body, ..) = curl(
        &l.world,
        &["-H", "host: www.example.test", &format!("{gw}/api/north")],
        false,
    );
    assert_eq!(code, 200, "{body}");
    let a = answer(&body);
    assert_eq!((a.id.as_str(), a.path.as_str()), ("v1", "/v1/north"));
    let (code, body, ..) = curl(
        &l.world,
        &["-H", "host: www.example.test", &format!("{gw}/teapot")],
        false,
    );
    assert_eq!((code, body.as_str()), (418, "short and stout"));
    // Bound to the gateway but not allowed by its allowedRouteTables: not served.
    let (code, ..) = curl(
        &l.world,
        &["-H", "host: other.test", &format!("{gw}/")],
        false,
    );
    assert_eq!(code, 404);
    // TLS with ALPN: HTTP/2 and HTTP/1.1.
    let resolve_arg = format!("www.example.test:8443:{NODE_IP}");
    let ca = l.ca.display().to_string();
    let (code, body, _, version, _) = curl(
        &l.world,
        &[
            "--cacert",
            &ca,
            "--resolve",
            &resolve_arg,
            "https://www.example.test:8443/teapot",
        ],
        false,
    );
    assert_eq!(
        (code, body.as_str(), version.as_str()),
        (418, "short and stout", "2")
    );
    let (code, body, _, version, _) = curl(
        &l.world,
        &[
            "--http1.1",
            "--cacert",
            &ca,
            "--resolve",
            &resolve_arg,
            "https://www.example.test:8443/api/tls",
        ],
        false,
    );
    assert_eq!((code, version.as_str()), (200, "1.1"), "{body}");
    assert_eq!(answer(&body).path, "/v1/tls");
}

/// A TCP gateway listener splits connections by the route's weights (it
/// used to pick a destination uniformly): 90/10 over 60 connections.
#[test]
fn tcp_gateway_listeners_split_connections_by_weight() {
    let l = setup();
    let probes = l
        .world
        .probe_outside(&["tcp", &format!("{NODE_IP}:8082"), "--count", "60"])
        .unwrap();
    let by = tally(&probes);
    let v1 = by.get("v1").copied().unwrap_or(0);
    assert_eq!(by.values().sum::<usize>(), 60, "{by:?}");
    // Binomial(60, 0.9) is below 45 with probability ~1e-4; a uniform
    // choice reaches 45 with about the same.
    assert!(v1 >= 45, "90% to v1: {by:?}");
}

/// Issue 14, item 10: a PASSTHROUGH gateway listener routes each TLS
/// connection by the SNI of its ClientHello to the `tls` route that names
/// it, without decrypting: curl verifies the endpoint's own certificate
/// (which routerd does not have). No route for the name, no SNI, or not
/// TLS at all: the connection is closed.
#[test]
fn passthrough_listeners_route_tls_by_sni_undecrypted() {
    let l = setup();
    let get = |name: &str, cert: &str| {
        let resolve = format!("{name}:8444:{NODE_IP}");
        let ca = l.world.backend_cert(cert).display().to_string();
        let url = format!("https://{name}:8444/hello");
        curl(
            &l.world,
            &["--cacert", &ca, "--resolve", &resolve, &url],
            false,
        )
    };
    for (name, cert) in [
        ("a.pass.test", "a.pass.test"),
        ("b.pass.test", "b.pass.test"),
    ] {
        let (code, body, _, version, _) = get(name, cert);
        assert_eq!(code, 200, "{name}: {body}");
        let a = answer(&body);
        assert_eq!((a.id.as_str(), a.path.as_str()), (name, "/hello"));
        assert_eq!(version, "2", "ALPN is the endpoint's: {name}");
    }
    // The wildcard SNI of route b: the endpoint's certificate is for
    // b.pass.test only, so curl (verifying) refuses it; -k shows it was
    // routed there.
    let resolve = format!("x.b.pass.test:8444:{NODE_IP}");
    let (code, body, ..) = curl(
        &l.world,
        &["-k", "--resolve", &resolve, "https://x.b.pass.test:8444/w"],
        false,
    );
    assert_eq!((code, answer(&body).id.as_str()), (200, "b.pass.test"));
    // No tls route names c.pass.test: closed (curl gets no response).
    let (code, ..) = get("c.pass.test", "a.pass.test");
    assert_eq!(code, 0, "no route: the connection is closed");
    // No SNI (an IP address) and plain HTTP: closed.
    let (code, ..) = curl(
        &l.world,
        &["-k", &format!("https://{NODE_IP}:8444/")],
        false,
    );
    assert_eq!(code, 0);
    let (code, ..) = curl(&l.world, &[&format!("http://{NODE_IP}:8444/")], false);
    assert_eq!(code, 0);
    // routerd is still serving after the rejected connections.
    assert_eq!(get("a.pass.test", "a.pass.test").0, 200);
}

/// Issue 14, item 3: MUTUAL and OPTIONAL_MUTUAL (Gloo's `files` with
/// `rootCa`): curl with a client certificate the CA signed gets through,
/// one without is refused by MUTUAL and served by OPTIONAL_MUTUAL, one the
/// CA did not sign is refused by both.
#[test]
fn mutual_tls_gateway_listeners_verify_client_certificates() {
    let l = setup();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "routerd test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let signed = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let dir = &l.world.dir;
    let path = |name: &str, text: &str| dir.write(name, text).unwrap().display().to_string();
    let ca_pem = path("mtls/ca.pem", &ca.pem());
    let (server_cert, server_key) = signed("www.example.test");
    let (server_cert, server_key) = (
        path("mtls/server.pem", &server_cert),
        path("mtls/server-key.pem", &server_key),
    );
    let (client_cert, client_key) = signed("client.example.test");
    let (client_cert, client_key) = (
        path("mtls/client.pem", &client_cert),
        path("mtls/client-key.pem", &client_key),
    );
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger.test".to_string()]).unwrap();
    let (stranger_cert, stranger_key) = (
        path("mtls/stranger.pem", &stranger.cert.pem()),
        path(
            "mtls/stranger-key.pem",
            &stranger.signing_key.serialize_pem(),
        ),
    );
    let resolve_arg = format!("www.example.test:8443:{NODE_IP}");
    let get = |client: Option<(&str, &str)>| {
        let mut args = vec![
            "--cacert",
            &ca_pem,
            "--resolve",
            &resolve_arg,
            "https://www.example.test:8443/teapot",
        ];
        if let Some((c, k)) = client {
            args.extend(["--cert", c, "--key", k]);
        }
        curl(&l.world, &args, false).0
    };
    // Serve `text`; a client with the signed certificate gets through, one
    // without gets `without` (0: the handshake fails).
    let serve = |text: &str, what: &str, without: u16| {
        dir.write("config/all.yaml", text).unwrap();
        let r = l.routerd.reload().unwrap();
        assert!(r.is_applied(), "{r}");
        let signed = get(Some((&client_cert, &client_key)));
        assert_eq!(signed, 418, "{what}: signed client");
        assert_eq!(get(None), without, "{what}: no client certificate");
    };
    for (mode, without) in [("MUTUAL", 0), ("OPTIONAL_MUTUAL", 418)] {
        let tls = json!({"mode": mode, "files": {
            "serverCert": server_cert, "privateKey": server_key, "rootCa": ca_pem}});
        serve(&config_tls(Some(tls)), mode, without);
        assert_eq!(
            get(Some((&stranger_cert, &stranger_key))),
            0,
            "{mode}: a certificate the CA did not sign"
        );
    }
    // The server's certificate renewed in place (a self-signed one now):
    // SIGHUP, with nothing else to change, serves it.
    let renewed = rcgen::generate_simple_self_signed(vec!["www.example.test".into()]).unwrap();
    dir.write("mtls/server.pem", &renewed.cert.pem()).unwrap();
    dir.write("mtls/server-key.pem", &renewed.signing_key.serialize_pem())
        .unwrap();
    let r = l.routerd.reload().unwrap();
    assert!(matches!(r, Event::NoChange { .. }), "{r}");
    let renewed_pem = path("mtls/renewed.pem", &renewed.cert.pem());
    let (code, ..) = curl(
        &l.world,
        &[
            "--cacert",
            &renewed_pem,
            "--cert",
            &client_cert,
            "--key",
            &client_key,
            "--resolve",
            &resolve_arg,
            "https://www.example.test:8443/teapot",
        ],
        false,
    );
    assert_eq!(code, 418, "the renewed certificate is served");
    assert_eq!(
        get(Some((&client_cert, &client_key))),
        0,
        "the old CA no longer verifies the server"
    );
    // The same from a kubernetes.io/tls Secret given with the config
    // (`stringData`; the CA for client certificates in ca.crt).
    let (secret_cert, secret_key) = signed("www.example.test");
    let secret = Config::new()
        .with(TlsSecret::new("gw-tls", &secret_cert, &secret_key).ca(&ca.pem()))
        .yaml();
    let text = config_tls(Some(json!({"mode": "MUTUAL", "secretName": "gw-tls"})));
    serve(&format!("{text}---\n{secret}"), "Secret, MUTUAL", 0);
}

/// Issue 14, item 3: with the config watched, a certificate renewed in
/// place (a new file renamed over the old one, as certificate tools do) is
/// served without a reload.
#[test]
fn a_renewed_certificate_file_is_served_without_a_reload() {
    let l = setup_args(&[]);
    let renewed = rcgen::generate_simple_self_signed(vec!["www.example.test".into()]).unwrap();
    let dir = &l.world.dir;
    let renewed_ca = dir.write("renewed.pem", &renewed.cert.pem()).unwrap();
    for (file, text) in [
        (&l.key, renewed.signing_key.serialize_pem()),
        (&l.ca, renewed.cert.pem()),
    ] {
        let tmp = file.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, file).unwrap();
    }
    let args = [
        "--cacert",
        &renewed_ca.display().to_string(),
        "--resolve",
        &format!("www.example.test:8443:{NODE_IP}"),
        "https://www.example.test:8443/teapot",
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = std::time::Instant::now();
    while curl(&l.world, &args, false).0 != 418 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "the renewed certificate is not served; routerd logged:\n{}",
            l.routerd.logs().join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Issue 10, item 1 (gateways). Turning a gateway listener's TLS off and on
/// again keeps its socket: connections arriving during the reloads are
/// never refused, and each reload's setting takes effect.
#[test]
fn a_gateway_listener_keeps_its_socket_across_tls_changes() {
    let l = setup();
    let (cert, key) = (l.ca.display().to_string(), l.key.display().to_string());
    let tls = config(Some((&cert, &key)));
    let plain = config(None);
    let connects = l
        .world
        .outside(bin("rt-probe"))
        .args([
            "connects",
            &format!("{NODE_IP}:8443"),
            "--millis",
            "3000",
            "--every-ms",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for i in 0..6 {
        let text = if i % 2 == 0 { &plain } else { &tls };
        l.world.dir.write("config/all.yaml", text).unwrap();
        let r = l.routerd.reload().unwrap();
        assert!(r.is_applied(), "{r}");
        let url = if i % 2 == 0 {
            "http://www.example.test:8443/teapot"
        } else {
            "https://www.example.test:8443/teapot"
        };
        let (code, ..) = curl(
            &l.world,
            &[
                "--cacert",
                &cert,
                "--resolve",
                &format!("www.example.test:8443:{NODE_IP}"),
                url,
            ],
            false,
        );
        assert_eq!(code, 418, "{url} after reload {i}");
    }
    let out = connects.wait_with_output().unwrap();
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        c["errors"],
        serde_json::json!({}),
        "connections refused while the listener changed: {c}"
    );
    assert!(c["ok"].as_u64().unwrap() > 100, "{c}");
}
