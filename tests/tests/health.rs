//! Endpoint health: active checks move new connections off a dead endpoint
//! and back when it recovers; the proxy's outlier detection ejects an
//! endpoint that fails requests. Real backends are killed and restarted.
use std::time::{Duration, Instant};

use router_tests::*;

const E1: &str = "10.1.0.1:8080";
const E2: &str = "10.1.1.1:8080";

/// `web` with one endpoint in the node's zone (e1) and one in the next
/// zone (e2); locality priorities on (outlier detection applies).
fn inventory() -> Config {
    two_zones(true).with(local_vd("web", "web.t.mesh", "web", 8080, "HTTP"))
}

fn outlier(errors: u32, base: &str) -> Policy {
    Policy::outlier_detection(
        "od",
        json!({"consecutiveErrors": errors, "interval": "100ms", "baseEjectionTime": base, "maxEjectionPercent": 50}),
    )
    .virtual_destinations_labelled("lb", "local")
}

/// An active check every 200 ms (`kind`: `{"tcpHealthCheck": {}}`, ...).
fn active_check(kind: serde_json::Value) -> Policy {
    let mut check = json!({"interval": "200ms", "timeout": "200ms", "unhealthyThreshold": 2, "healthyThreshold": 1});
    if let (Some(c), serde_json::Value::Object(k)) = (check.as_object_mut(), kind) {
        c.extend(k);
    }
    Policy::active_health_check("hc", json!({ "healthCheck": check }))
        .virtual_destinations_labelled("lb", "local")
}

struct Setup {
    world: World,
    e1: Option<Proc>,
    routerd: Routerd,
    vip: std::net::SocketAddr,
}

fn setup(policies: Config) -> Setup {
    setup_with(policies, None)
}

/// [`setup`], with routerd's RLIMIT_NOFILE set to `nofile`.
fn setup_with(policies: Config, nofile: Option<u64>) -> Setup {
    setup_config(inventory().with(policies), nofile)
}

/// A world with e1 and e2 serving `config`.
fn setup_config(config: Config, nofile: Option<u64>) -> Setup {
    require_root();
    let mut world = World::new(&[]).unwrap();
    for a in ["10.1.0.1/32", "10.1.1.1/32"] {
        world.world.ip(&["addr", "add", a, "dev", "lo"]).unwrap();
    }
    world.start_backends(&[Listen::tcp(E2, "e2")]).unwrap();
    let e1 = world.spawn_backend(&[Listen::tcp(E1, "e1")], &[]).unwrap();
    world.dir.write("config/web.yaml", &config.yaml()).unwrap();
    let cfg = world.dir.path.join("config");
    let vip = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
    let mut routerd = Routerd::new(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"]);
    routerd.nofile = nofile;
    routerd.spawn().unwrap();
    Setup {
        world,
        e1: Some(e1),
        routerd,
        vip,
    }
}

/// New connections, one at a time, until `want` answers `n` times in a
/// row; returns (elapsed, failed connections, connections to others).
fn until_only(s: &Setup, want: &str, n: usize, bound: Duration) -> (Duration, usize, usize) {
    let t = Instant::now();
    let (mut failed, mut other, mut streak) = (0, 0, 0);
    while streak < n {
        assert!(
            t.elapsed() < bound,
            "no switch to {want} within {bound:?} ({failed} failed, {other} elsewhere); routerd logged:\n{}",
            s.routerd.logs().join("\n")
        );
        let p = &s.world.probe(&["tcp", &s.vip.to_string()]).unwrap()[0];
        match &p.answer {
            Some(a) if a.id == want => streak += 1,
            Some(_) => {
                other += 1;
                streak = 0;
            }
            None => {
                failed += 1;
                streak = 0;
            }
        }
    }
    (t.elapsed(), failed, other)
}

#[test]
fn active_checks_move_connections_off_a_dead_endpoint_and_back() {
    // consecutiveErrors 0: locality on, nothing ejected (the kernel would
    // otherwise see the resets and eject e1 before the checks do).
    let mut s = setup(
        Config::new()
            .with(outlier(0, "30s"))
            .with(active_check(json!({"tcpHealthCheck": {}}))),
    );
    until_only(&s, "e1", 10, Duration::from_secs(5));

    // Kill the closest endpoint: connect() to it is refused until two
    // checks (200 ms apart, 200 ms timeout) fail and the plan is rewritten.
    drop(s.e1.take());
    let (took, failed, _) = until_only(&s, "e2", 10, Duration::from_secs(5));
    eprintln!("failover: {took:?}, {failed} connections failed before it");
    let e1: std::net::SocketAddr = E1.parse().unwrap();
    let events = s.routerd.events(0);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::EndpointUnhealthy { endpoint, .. } if *endpoint == e1)),
        "no health transition: {events:?}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Applied { reason, .. } if reason == "endpoint health change")
        ),
        "the health change was not applied: {events:?}"
    );

    // `routerd explain` reads what the daemon serves (its plan.json follows
    // every apply within a second): e1 unhealthy, no share; `--files`
    // compiles the files, where every endpoint counts healthy.
    let cfg = s.world.dir.path.join("config");
    let explain = |extra: &[&str]| {
        let out = std::process::Command::new(bin("routerd"))
            .args(["explain", "web.t.mesh:8080", "--config"])
            .arg(&cfg)
            .arg("--state-dir")
            .arg(&s.routerd.state_dir)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let e1_line = |text: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(E1))
            .unwrap_or_else(|| panic!("no line for {E1} in:\n{text}"))
            .to_string()
    };
    let t = Instant::now();
    let served = loop {
        let text = explain(&[]);
        if e1_line(&text).contains("UNHEALTHY") || t.elapsed() > Duration::from_secs(5) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        served.starts_with("# as served by routerd (pid "),
        "{served}"
    );
    assert!(e1_line(&served).contains("UNHEALTHY"), "{served}");
    assert!(
        e1_line(&served).ends_with(" 0.0% of connections"),
        "{served}"
    );
    let files = explain(&["--files"]);
    assert!(files.starts_with("# from the config files at "), "{files}");
    assert!(e1_line(&files).contains(" healthy "), "{files}");

    // It comes back: one passing check returns it to its tier.
    s.e1 = Some(
        s.world
            .spawn_backend(&[Listen::tcp(E1, "e1")], &[])
            .unwrap(),
    );
    let (took, failed, _) = until_only(&s, "e1", 10, Duration::from_secs(5));
    eprintln!("failback: {took:?} ({failed} failed)");
    assert_eq!(failed, 0, "nothing should fail while an endpoint returns");
}

#[test]
fn an_http_check_that_answers_the_wrong_status_takes_the_endpoint_out() {
    // /status/503 answers 503 on every backend; expected 200 only. Both
    // endpoints fail their checks: panic mode (Envoy's) keeps routing to
    // the first tier rather than failing every connection.
    let s = setup(Config::new().with(outlier(5, "30s")).with(active_check(
        json!({"httpHealthCheck": {"path": "/status/503", "expectedStatuses": [{"start": 200, "end": 201}]}}),
    )));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = s.routerd.events(0);
        let down = events
            .iter()
            .filter(|e| matches!(e, Event::EndpointUnhealthy { last_error, .. } if last_error.contains("answered 503")))
            .count();
        if down == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checks did not fail: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The second endpoint's recompile lands just after its log line (under
    // TCG, noticeably after): wait for the plan that has both down.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tiers = loop {
        let plan: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(s.routerd.state_dir.join("plan.json")).unwrap(),
        )
        .unwrap();
        let svc = plan["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["vip"] == s.vip.ip().to_string())
            .unwrap()
            .clone();
        let tiers = svc["destinations"][0]["tiers"].clone();
        if tiers[0]["panic"] == true || Instant::now() >= deadline {
            break tiers;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(tiers[0]["panic"], true, "{tiers}");
    assert_eq!(tiers[0]["load_percent"], 100, "{tiers}");
    assert_eq!(until_only(&s, "e1", 5, Duration::from_secs(5)).1, 0);
}

/// An L7 route (a path match) to the same destination: the proxy's
/// requests see the failures.
fn l7_route() -> RouteTable {
    RouteTable::new("web").host("web.t.mesh").http(
        HttpRoute::new()
            .prefix("/api")
            .to(&[Dest::virtual_destination("web").port(8080)]),
    )
}

#[test]
fn the_proxy_ejects_an_endpoint_that_fails_and_takes_it_back_later() {
    // baseEjectionTime 3 s: under TCG, the ejection can take over a second
    // to show, and it must still hold while the next requests are checked.
    let mut s = setup(Config::new().with(outlier(2, "3s")).with(l7_route()));
    let get = |n: usize| -> Vec<Probe> {
        s.world
            .probe(&[
                "http",
                &s.vip.to_string(),
                "--path",
                "/api/x",
                "--count",
                &n.to_string(),
            ])
            .unwrap()
    };
    let ids = |ps: &[Probe]| -> Vec<String> {
        ps.iter()
            .map(|p| match (&p.answer, p.status) {
                (Some(a), _) => a.id.clone(),
                (None, Some(code)) => code.to_string(),
                (None, None) => "error".into(),
            })
            .collect()
    };
    assert!(ids(&get(5)).iter().all(|i| i == "e1"));

    // e1 dies: the proxy answers 503 (connect failure) twice, ejects it,
    // and the plan moves the destination to e2.
    drop(s.e1.take());
    let t = Instant::now();
    let mut failed = 0;
    loop {
        let r = ids(&get(1));
        if r[0] == "e2" {
            break;
        }
        failed += 1;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still {r:?} after {failed} requests"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "ejection: {:?}, {failed} requests failed before it",
        t.elapsed()
    );
    assert!(
        failed <= 3,
        "{failed} failed requests; consecutiveErrors is 2"
    );
    assert!(ids(&get(10)).iter().all(|i| i == "e2"));
    let e1: std::net::SocketAddr = E1.parse().unwrap();
    assert!(
        s.routerd
            .events(0)
            .iter()
            .any(|e| matches!(e, Event::EndpointEjected { endpoint, .. } if *endpoint == e1))
    );

    // e1 returns; after baseEjectionTime (3 s) it takes traffic again.
    s.e1 = Some(
        s.world
            .spawn_backend(&[Listen::tcp(E1, "e1")], &[])
            .unwrap(),
    );
    let t = Instant::now();
    while !ids(&get(1)).iter().all(|i| i == "e1") {
        assert!(t.elapsed() < Duration::from_secs(10), "e1 never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let over = s.routerd.wait_event(
        0,
        |e| matches!(e, Event::EjectionOver { endpoint } if *endpoint == e1),
    );
    assert!(over.is_ok(), "{over:?}");
}

/// The kernel sees the handshakes of L4 connections: with outlier
/// detection and no active check, an endpoint whose process died (its
/// address answers every SYN with a reset) is ejected after the policy's
/// failures in a row, by the connect hook at once and by the daemon's slot
/// tables a moment later; it takes traffic again after the ejection time.
/// (Without the kernel's signal nothing would ever move the traffic: no
/// active check runs and the proxy never sees these connections.)
#[test]
fn the_kernel_ejects_an_endpoint_that_resets_handshakes_and_takes_it_back() {
    // baseEjectionTime 10 s: the ejection must hold while the test sees e2
    // take over (ten connections in a row) and asks `inspect` why e1 is out.
    // Under TCG a probe takes 0.25 s, and up to 0.8 s while the other VM
    // runs beside it: with 3 s the ejection sometimes ended first (e1 back,
    // failing again, before e2 had its ten; or `inspect` showing nothing).
    let mut s = setup(Config::new().with(outlier(3, "10s")));
    until_only(&s, "e1", 10, Duration::from_secs(5));
    let e1: std::net::SocketAddr = E1.parse().unwrap();
    // The kernel watches e1's handshakes (the policy's threshold is in its
    // backend entry); all of them succeeded so far.
    let r = s.routerd.inspect().unwrap();
    let w = r
        .watched
        .iter()
        .find(|w| w.addr == e1)
        .unwrap_or_else(|| panic!("inspect does not show {e1} as watched: {r:?}"));
    assert_eq!(
        (
            w.eject_after,
            w.fails_in_a_row,
            w.failures,
            w.ejected_for_ms
        ),
        (3, 0, 0, 0),
        "{w:?}"
    );

    drop(s.e1.take());
    let (took, failed, _) = until_only(&s, "e2", 10, Duration::from_secs(9));
    eprintln!("kernel ejection: {took:?}, {failed} connections failed before it");
    // Three failures eject; one more may start before the daemon has
    // recompiled the table (e1 is the only endpoint of its tier, so the
    // connect hook has nowhere else to send it until then).
    assert!(
        (3..=5).contains(&failed),
        "{failed} connections failed; consecutiveErrors is 3"
    );
    let events = s.routerd.events(0);
    let why = events
        .iter()
        .find_map(|e| match e {
            Event::EndpointEjected { endpoint, why, .. } if *endpoint == e1 => Some(why.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ejection of {e1}: {events:?}"));
    assert_eq!(
        why, "kernel: 3 connection attempts in a row answered with a reset",
        "one connection at a time: the count is exact"
    );
    let out = s.routerd.inspect().unwrap().out_of_service;
    assert!(
        out.get(&e1).is_some_and(|w| w.ends_with(&why)),
        "inspect does not say why {e1} is out: {out:?}"
    );

    // e1 returns; after baseEjectionTime (10 s) it takes traffic again.
    s.e1 = Some(
        s.world
            .spawn_backend(&[Listen::tcp(E1, "e1")], &[])
            .unwrap(),
    );
    let (took, failed, _) = until_only(&s, "e1", 10, Duration::from_secs(25));
    eprintln!("back after {took:?} ({failed} failed)");
    assert_eq!(failed, 0, "nothing should fail while an endpoint returns");
    let over = s.routerd.wait_event(
        0,
        |e| matches!(e, Event::EjectionOver { endpoint } if *endpoint == e1),
    );
    assert!(over.is_ok(), "{over:?}");
}

/// A stuck endpoint (it listens and never accepts: its SYNs go unanswered)
/// is ejected by the kernel at the first retransmission timeout of the
/// policy's number of connection attempts: Linux's 1 s, or the node's
/// `synRetransmitTimeout`.
fn syns_go_unanswered(node: serde_json::Value, rto_us: u64) {
    let config = Config::new()
        .node_with("c1", "east", "e1", node)
        .with(web(
            "c1",
            "east",
            "web-1",
            &[("10.1.0.1", "e1", true), ("10.1.1.1", "e2", true)],
        ))
        .with(local_vd("web", "web.t.mesh", "web", 8080, "HTTP"))
        .with(outlier(3, "30s"));
    let mut s = setup_config(config, None);
    until_only(&s, "e1", 10, Duration::from_secs(5));
    drop(s.e1.take());
    s.e1 = Some(
        s.world
            .spawn_backend(&[Listen::new("hung", E1.parse().unwrap(), "e1")], &[])
            .unwrap(),
    );
    let vip = s.vip.to_string();
    // The retransmission timeout of a connection to e1 while its SYN is out.
    let out = run(s.world.client(bin("rt-probe")).args(["syn-rto", &vip])).unwrap();
    let rto: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(rto["rto_us"], rto_us, "{out}");
    // Six connection attempts at once: one fills the accept queue (if the
    // one above did not), the others' SYNs are dropped and retransmitted
    // after the RTO: each such attempt is one failure.
    let t = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| s.world.probe(&["tcp", &vip]).unwrap());
        }
    });
    let e1: std::net::SocketAddr = E1.parse().unwrap();
    let ejected = s.routerd.wait_event(
        0,
        |e| matches!(e, Event::EndpointEjected { endpoint, .. } if *endpoint == e1),
    );
    let why = match ejected {
        Ok(Event::EndpointEjected { why, .. }) => why,
        other => panic!("no ejection of {e1}: {other:?}"),
    };
    eprintln!("ejected within {:?}: {why}", t.elapsed());
    // Three or more: attempts whose timeouts fire on two CPUs at once may
    // both count before the ejection.
    assert!(
        why.starts_with("kernel: ")
            && why.ends_with(" connection attempts in a row without an answer to the SYN"),
        "{why}"
    );
    let (_, failed, _) = until_only(&s, "e2", 10, Duration::from_secs(5));
    assert_eq!(failed, 0, "e1 is out already");
    // `explain` says why e1 is out (what the daemon recorded).
    let out = std::process::Command::new(bin("routerd"))
        .args(["explain", "web.t.mesh:8080", "--state-dir"])
        .arg(&s.routerd.state_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "out: ejected by OutlierDetectionPolicy t/od for 30000 ms: {why}"
        )),
        "{text}"
    );
}

#[test]
fn the_kernel_ejects_an_endpoint_whose_syns_go_unanswered() {
    syns_go_unanswered(serde_json::json!({}), 1_000_000);
}

/// `synRetransmitTimeout: 100ms`: the kernel sets that initial RTO on
/// connections to watched backends, so a blackholed endpoint counts its
/// failures after 100 ms, not a second.
#[test]
fn a_shorter_syn_timeout_applies_to_watched_connections() {
    syns_go_unanswered(
        serde_json::json!({"synRetransmitTimeout": "100ms"}),
        100_000,
    );
}

/// `web` (TCP 8080) and `echo` (UDP 9000) on e1 and e2; `e1_ready` says
/// whether e1 is ready; connections to removed endpoints are closed.
fn closing_config(e1_ready: bool) -> String {
    let eps = [("10.1.0.1", "e1", e1_ready), ("10.1.1.1", "e2", true)];
    Config::new()
        .node_with(
            "c1",
            "east",
            "e1",
            json!({"closeConnectionsToRemovedEndpoints": true}),
        )
        .with(web("c1", "east", "web", &eps))
        .with(local_vd("web", "web.t.mesh", "web", 8080, "HTTP"))
        .with(Service::new("c1", "echo").udp_port(9000))
        .with(
            Slice::new("c1", "echo", "echo")
                .region("east")
                .udp_port(9000)
                .endpoints(&eps),
        )
        .with(local_vd("echo", "echo.t.mesh", "echo", 9000, "UDP"))
        .with(outlier(5, "30s"))
        .yaml()
}

/// Start `rt-probe <args> --hold`; return it with its first answer.
fn hold(world: &World, args: &[&str]) -> (std::process::Child, Box<dyn std::io::BufRead>, Probe) {
    use std::io::BufRead;
    let mut child = world
        .client(bin("rt-probe"))
        .args(args)
        .arg("--hold")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out: Box<dyn BufRead> = Box::new(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    (child, out, serde_json::from_str(&line).unwrap())
}

/// Tell a held probe to go again; its second answer.
fn again(child: &mut std::process::Child, out: &mut Box<dyn std::io::BufRead>) -> Probe {
    use std::io::Write;
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    child.wait().unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn connections_to_a_removed_endpoint_are_closed_when_asked() {
    require_root();
    let world = World::new(&[
        Listen::tcp(E1, "e1"),
        Listen::tcp(E2, "e2"),
        Listen::udp("10.1.0.1:9000", "u1"),
        Listen::udp("10.1.1.1:9000", "u2"),
    ])
    .unwrap();
    world
        .dir
        .write("config/c.yaml", &closing_config(true))
        .unwrap();
    let cfg = world.dir.path.join("config");
    let plan = plan(&cfg).unwrap();
    let web = vip(&plan, "web.t.mesh", 8080, false).to_string();
    let echo = vip(&plan, "echo.t.mesh", 9000, false).to_string();
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"]).unwrap();

    let (mut tcp, mut tcp_out, first) = hold(&world, &["tcp", &web]);
    assert_eq!(first.answer.unwrap().id, "e1");
    let (mut udp, mut udp_out, first) = hold(&world, &["udp", &echo, "--connected"]);
    assert_eq!(first.answer.unwrap().id, "u1");

    // e1 stops being ready.
    world
        .dir
        .write("config/c.yaml", &closing_config(false))
        .unwrap();
    let start = routerd.log_len();
    assert!(routerd.reload().unwrap().is_applied());
    let closed = routerd
        .wait_event(start, |e| matches!(e, Event::ConnectionsClosed { .. }))
        .unwrap();
    assert!(
        matches!(
            closed,
            Event::ConnectionsClosed {
                tcp: 1,
                udp: 1,
                failed: 0,
                ..
            }
        ),
        "{closed:?}"
    );

    // The TCP connection was reset; the connected UDP socket got an error
    // instead of talking to the removed endpoint forever.
    let second = again(&mut tcp, &mut tcp_out);
    assert!(!second.ok, "the TCP connection still works: {second:?}");
    let second = again(&mut udp, &mut udp_out);
    assert!(!second.ok, "the UDP socket still reaches u1: {second:?}");
    // New ones go to e2.
    let p = &world.probe(&["tcp", &web]).unwrap()[0];
    assert_eq!(p.answer.as_ref().unwrap().id, "e2");
    let p = &world.probe(&["udp", &echo, "--connected"]).unwrap()[0];
    assert_eq!(p.answer.as_ref().unwrap().id, "u2");
}

/// CPU time (user + system) of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Issue 10, item 4. With few file descriptors, a flood of connections to
/// the proxy must not make the daemon spin on accept errors, and running out
/// of descriptors (a local errno) must never count against an endpoint:
/// no false health-check failure, no ejection. The daemon serves again
/// once the flood is gone.
#[test]
fn running_out_of_descriptors_neither_spins_nor_blames_endpoints() {
    let s = setup_with(
        Config::new()
            .with(active_check(
                json!({"httpHealthCheck": {"path": "/health"}}),
            ))
            .with(outlier(2, "30s"))
            .with(l7_route()),
        Some(256),
    );
    let vip = s.vip.to_string();
    let ok = |n: usize| -> bool {
        s.world
            .probe(&["http", &vip, "--path", "/api/x", "--count", &n.to_string()])
            .unwrap()
            .iter()
            .all(|p| p.status == Some(200))
    };
    assert!(ok(3));
    let pid = s.routerd.pid().unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let flood = s
        .world
        .client(bin("rt-probe"))
        .args(["hold", &vip, "--conns", "600", "--hold-secs", "5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let busy = cpu_ticks(pid) - t0;
    let out = flood.wait_with_output().unwrap();
    eprintln!(
        "{fds} descriptors at rest; flood: {}; {busy} ticks of CPU in 2 s",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(
        busy < 60,
        "routerd used {busy}/200 ticks of CPU during the flood: spinning on accept errors"
    );
    let t = Instant::now();
    while !ok(3) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "not serving after the flood; routerd logged:\n{}",
            s.routerd.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = s.routerd.events(0);
    assert!(
        !events.iter().any(|e| matches!(
            e,
            Event::EndpointUnhealthy { .. } | Event::EndpointEjected { .. }
        )),
        "running out of descriptors was blamed on an endpoint: {events:#?}"
    );
}

/// Issue 10, item 8. Requests whose own bodies are broken (bad chunked
/// encoding) or stall past the body deadline are the client's fault: with
/// outlier detection at 2 consecutive errors, a client sending a dozen of
/// them ejects nobody, and everybody else keeps reaching the closest
/// endpoint.
#[test]
fn a_client_that_breaks_its_own_requests_ejects_nobody() {
    let s = setup(Config::new().with(outlier(2, "30s")).with(l7_route()));
    let vip = s.vip.to_string();
    let get = || -> Vec<String> {
        s.world
            .probe(&["http", &vip, "--path", "/api/x", "--count", "5"])
            .unwrap()
            .iter()
            .map(|p| p.answer.as_ref().map_or("none".into(), |a| a.id.clone()))
            .collect()
    };
    assert!(get().iter().all(|i| i == "e1"));
    for _ in 0..12 {
        let out = run(s.world.client(bin("rt-probe")).args([
            "raw",
            &vip,
            "--send",
            "POST /api/upload HTTP/1.1\\r\\nHost: web.t.mesh\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\nzz-not-hex\\r\\n\\r\\n",
            "--wait-ms",
            "2000",
        ]))
        .unwrap();
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(
            !r["text"].as_str().unwrap_or("").contains("503"),
            "a broken body is not an upstream failure: {r}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(get().iter().all(|i| i == "e1"), "e1 must still serve");
    let events = s.routerd.events(0);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::EndpointEjected { .. })),
        "a client's broken bodies ejected an endpoint: {events:#?}"
    );
}
