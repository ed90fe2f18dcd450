//! Virtual hostnames resolve on the node: real resolver (dnsmasq) upstream,
//! real clients (getent through glibc, dig, curl), DNS captured by the
//! kernel hooks with no resolv.conf change.
use std::process::Command;

use router_tests::*;

const RESOLVER: &str = "10.53.0.1";

fn dns_world(extra_host: bool) -> Config {
    let host = |name: &str| {
        VirtualDestination::new(name, &format!("{name}.t.mesh"))
            .app("web")
            .port(8080, "HTTP")
    };
    let y = Config::new()
        .node("c1", "east", "e1")
        .with(web("c1", "east", "web", &[("10.1.0.1", "e1", true)]))
        .with(host("web"));
    if extra_host { y.with(host("new")) } else { y }
}

fn config(extra_host: bool) -> String {
    dns_world(extra_host).yaml()
}

struct Dns {
    world: World,
    routerd: Routerd,
    _dnsmasq: Proc,
    vip: std::net::SocketAddr,
}

fn setup(extra: &[&str]) -> Dns {
    require_root();
    let world = World::new(&[
        Listen::tcp("10.1.0.1:8080", "web"),
        Listen::tcp("10.7.0.1:8080", "outside-web"),
    ])
    .unwrap();
    let dnsmasq = world
        .dnsmasq(
            RESOLVER,
            &["up.test,10.7.0.1", "both.test,10.7.0.2,fd00:7::2"],
        )
        .unwrap();
    world.resolv_conf(RESOLVER).unwrap();
    world.dir.write("config/all.yaml", &config(false)).unwrap();
    let cfg = world.dir.path.join("config");
    let vip = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
    let mut args = vec!["--no-watch"];
    args.extend_from_slice(extra);
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &args).unwrap();
    Dns {
        world,
        routerd,
        _dnsmasq: dnsmasq,
        vip,
    }
}

fn out(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `dig` in the cgroup (captured) or outside it.
fn dig(d: &Dns, inside: bool, args: &[&str]) -> String {
    let mut cmd = if inside {
        d.world.client("dig")
    } else {
        d.world.outside("dig")
    };
    out(cmd.args(["+time=2", "+tries=1"]).args(args))
}

fn status(dig_output: &str) -> String {
    dig_output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_string()
}

#[test]
fn getent_resolves_virtual_hosts_and_upstream_names() {
    let d = setup(&[]);
    let vh = out(d.world.client("getent").args(["hosts", "web.t.mesh"]));
    assert!(vh.starts_with(&format!("{} ", d.vip.ip())), "{vh:?}");
    let up = out(d.world.client("getent").args(["hosts", "up.test"]));
    assert!(up.starts_with("10.7.0.1 "), "{up:?}");
    // Outside the cgroup nothing is captured: the resolver does not know the mesh.
    let outside = out(d.world.outside("getent").args(["hosts", "web.t.mesh"]));
    assert!(outside.is_empty(), "{outside:?}");
}

#[test]
fn answers_appear_to_come_from_the_resolver_asked() {
    let d = setup(&[]);
    let a = dig(&d, true, &["web.t.mesh", "A"]);
    assert!(
        a.contains(&format!("web.t.mesh.\t\t5\tIN\tA\t{}", d.vip.ip())),
        "{a}"
    );
    assert!(
        a.contains(&format!("SERVER: {RESOLVER}#53")),
        "the reply comes from the resolver the client asked:\n{a}"
    );
    // An owned name without the type: NODATA, not NXDOMAIN.
    let aaaa = dig(&d, true, &["web.t.mesh", "AAAA"]);
    assert_eq!(status(&aaaa), "NOERROR", "{aaaa}");
    assert!(aaaa.contains("ANSWER: 0"), "{aaaa}");
    // Names nobody has: the upstream's NXDOMAIN.
    assert_eq!(status(&dig(&d, true, &["nope.t.mesh"])), "NXDOMAIN");
    // Over TCP too.
    let tcp = dig(&d, true, &["+tcp", "+short", "web.t.mesh"]);
    assert_eq!(tcp.trim(), d.vip.ip().to_string());
}

#[test]
fn upstream_answers_pass_through_unchanged() {
    let d = setup(&[]);
    for q in [
        ["both.test", "A"],
        ["both.test", "AAAA"],
        ["up.test", "TXT"],
    ] {
        let inside = dig(
            &d,
            true,
            &["+noall", "+answer", "+authority", "+comments", q[0], q[1]],
        );
        let direct = dig(
            &d,
            false,
            &["+noall", "+answer", "+authority", "+comments", q[0], q[1]],
        );
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("id:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&inside), strip(&direct), "{q:?}");
    }
}

#[test]
fn curl_by_name_reaches_the_backend() {
    let d = setup(&[]);
    let body = out(d.world.client("curl").args([
        "-sS",
        "--max-time",
        "5",
        "http://web.t.mesh:8080/by-name",
    ]));
    let a: Answer = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!((a.id.as_str(), a.path.as_str()), ("web", "/by-name"));
    let body = out(d
        .world
        .client("curl")
        .args(["-sS", "--max-time", "5", "http://up.test:8080/"]));
    assert!(body.contains("outside-web"), "{body}");
}

#[test]
fn with_capture_off_queries_go_to_the_upstream_untouched() {
    let d = setup(&["--no-dns-capture"]);
    assert_eq!(
        status(&dig(&d, true, &["web.t.mesh"])),
        "NXDOMAIN",
        "the resolver answered itself"
    );
    // routerd still answers when asked directly.
    let direct = dig(&d, true, &["+short", "@127.0.0.153", "web.t.mesh"]);
    assert_eq!(direct.trim(), d.vip.ip().to_string());
    let r = d.routerd.inspect().unwrap();
    assert_eq!(r.dns_captured, 0);
}

#[test]
fn hostile_input_does_not_disturb_the_server() {
    let d = setup(&[]);
    let junk = out(d
        .world
        .client(bin("rt-probe"))
        .args(["dns-junk", &format!("{RESOLVER}:53")]));
    let j: serde_json::Value = serde_json::from_str(&junk).unwrap();
    assert_eq!(j["random_replies"], 0, "{j}");
    assert_eq!(j["formerr"], true, "{j}");
    assert_eq!(j["oversized_reply"], false, "{j}");
    assert_eq!(j["tcp_short_closed_or_idle"], true, "{j}");
    // A flood of forwarded queries (300, 30 at a time: a dig process takes
    // ~20 MB, and the VM tests have 2 GB), then normal service.
    let flood = d.world.client("sh").arg("-c").arg(format!(
        "for b in $(seq 1 10); do for i in $(seq 1 30); do dig +time=1 +tries=1 @{RESOLVER} flood$b-$i.test >/dev/null & done; wait; done"
    )).status().unwrap();
    assert!(flood.success());
    let a = dig(&d, true, &["+short", "web.t.mesh"]);
    assert_eq!(a.trim(), d.vip.ip().to_string());
    assert!(d.routerd.logs().iter().all(|l| !l.contains("panicked")));
}

#[test]
fn a_reload_adds_and_removes_names() {
    let d = setup(&[]);
    assert_eq!(status(&dig(&d, true, &["new.t.mesh"])), "NXDOMAIN");
    d.world.dir.write("config/all.yaml", &config(true)).unwrap();
    assert!(d.routerd.reload().unwrap().is_applied());
    let new = dig(&d, true, &["+short", "new.t.mesh"]);
    assert!(new.trim().starts_with("240.240."), "{new}");
    d.world
        .dir
        .write("config/all.yaml", &config(false))
        .unwrap();
    assert!(d.routerd.reload().unwrap().is_applied());
    assert_eq!(status(&dig(&d, true, &["new.t.mesh"])), "NXDOMAIN");
}

#[test]
fn a_dead_daemon_gives_dns_back_to_the_resolver() {
    let mut d = setup(&[]);
    assert_eq!(
        dig(&d, true, &["+short", "web.t.mesh"]).trim(),
        d.vip.ip().to_string()
    );
    d.routerd.kill9();
    // Within the heartbeat (3 s) capture stops; DNS keeps working meanwhile
    // or right after, never for long against a dead socket.
    let start = std::time::Instant::now();
    loop {
        let up = dig(&d, true, &["+short", "up.test"]);
        if up.trim() == "10.7.0.1" && status(&dig(&d, true, &["web.t.mesh"])) == "NXDOMAIN" {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 8,
            "capture still on after {:?}: {up}",
            start.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Routing (not DNS) goes on, and a restart captures again.
    assert!(d.world.probe(&["tcp", &d.vip.to_string()]).unwrap()[0].ok);
    d.routerd.spawn().unwrap();
    assert_eq!(
        dig(&d, true, &["+short", "web.t.mesh"]).trim(),
        d.vip.ip().to_string()
    );
}

fn timed(cmd: &mut Command) -> (String, std::time::Duration) {
    let t = std::time::Instant::now();
    let o = out(cmd);
    (o, t.elapsed())
}

/// Issue 10, item 5 (a). A local caching resolver inside the attached
/// cgroup (dnsmasq here; systemd-resolved at 127.0.0.53 is the same case) is
/// the clients' resolver: virtual hosts resolve, its own records resolve,
/// and names it forwards upstream resolve, promptly: its upstream queries
/// are captured too and must go on to its upstream, never back to it.
#[test]
fn a_caching_resolver_inside_the_cgroup_keeps_working_and_nothing_loops() {
    require_root();
    let world = World::new(&[Listen::tcp("10.1.0.1:8080", "web")]).unwrap();
    let _upstream = world.dnsmasq(RESOLVER, &["up.test,10.7.0.1"]).unwrap();
    let _local = world
        .local_dnsmasq("127.0.0.2", &["local.test,10.8.0.1"], RESOLVER)
        .unwrap();
    world.resolv_conf("127.0.0.2").unwrap();
    world.dir.write("config/all.yaml", &config(false)).unwrap();
    let cfg = world.dir.path.join("config");
    let vip = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"]).unwrap();
    for (name, want) in [
        ("web.t.mesh", vip.ip().to_string()),
        ("local.test", "10.8.0.1".to_string()),
        ("up.test", "10.7.0.1".to_string()),
    ] {
        let (got, took) = timed(world.client("getent").args(["hosts", name]));
        assert!(
            got.starts_with(&format!("{want} ")),
            "{name}: {got:?} after {took:?}; routerd logged:\n{}",
            routerd.logs().join("\n")
        );
        assert!(
            took < std::time::Duration::from_millis(1500),
            "{name} took {took:?}: a loop or a timeout"
        );
        // dig too (its own UDP sockets), and over TCP.
        for tcp in [false, true] {
            let mut args = vec!["+time=2", "+tries=1", "+short", "@127.0.0.2", name];
            if tcp {
                args.insert(0, "+tcp");
            }
            let (got, took) = timed(world.client("dig").args(&args));
            assert_eq!(got.trim(), want, "{name} (tcp: {tcp}) after {took:?}");
        }
    }
}

/// Issue 10, item 5 (b). DNS is captured only in the network namespace
/// routerd serves: a process of the cgroup in another namespace, with its
/// own resolver, talks to that resolver (never to a loopback address where
/// nothing listens).
#[test]
fn another_namespace_keeps_its_own_resolver() {
    let d = setup(&[]);
    let other = d.world.other_node(1).unwrap();
    let captured0 = d.routerd.inspect().unwrap().dns_captured;
    for (args, want) in [
        (
            vec!["+short", &format!("@{RESOLVER}") as &str, "up.test"],
            "10.7.0.1",
        ),
        (
            vec!["+short", "+tcp", &format!("@{RESOLVER}"), "up.test"],
            "10.7.0.1",
        ),
    ] {
        let got = out(d
            .world
            .client_in(&other, "dig")
            .args(["+time=2", "+tries=1"])
            .args(&args));
        assert_eq!(got.trim(), want, "{args:?}");
    }
    // The resolver there does not know the mesh: its own NXDOMAIN, not ours.
    let nx = out(d.world.client_in(&other, "dig").args([
        "+time=2",
        "+tries=1",
        &format!("@{RESOLVER}"),
        "web.t.mesh",
    ]));
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    let captured = d.routerd.inspect().unwrap().dns_captured;
    assert_eq!(
        captured, captured0,
        "queries of another namespace were captured"
    );
    // The served namespace is still captured.
    assert_eq!(
        dig(&d, true, &["+short", "web.t.mesh"]).trim(),
        d.vip.ip().to_string()
    );
}

/// `n` more virtual hosts (a Service, an EndpointSlice and a
/// VirtualDestination each): a config that takes seconds to compile.
fn many_hosts(n: usize) -> Config {
    (0..n).fold(Config::new(), |c, i| {
        let name = format!("bulk{i}");
        let addr = format!("10.{}.{}.{}", 20 + i / 65536, (i / 256) % 256, i % 256);
        c.with(service_with_slice(
            "c1",
            "east",
            &name,
            &name,
            80,
            &[(&addr, "e1", true)],
        ))
        .with(
            VirtualDestination::new(&name, &format!("{name}.t.mesh"))
                .app(&name)
                .port(80, "TCP"),
        )
    })
}

/// Issue 10, item 13. A reload whose compile takes longer than the
/// heartbeat's 3 s must not stop DNS: names keep resolving (captured and
/// answered) all through it.
#[test]
fn a_long_compile_does_not_stop_dns() {
    let d = setup(&[]);
    d.world
        .dir
        .write(
            "config/all.yaml",
            &dns_world(false).with(many_hosts(scaled(3000))).yaml(),
        )
        .unwrap();
    let mark = d.routerd.log_len();
    d.routerd.signal(libc::SIGHUP);
    let t = std::time::Instant::now();
    let (mut asked, mut failed) = (0, Vec::new());
    loop {
        let done = d.routerd.events(mark).iter().any(Event::is_outcome);
        if done {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(300),
            "the reload never finished"
        );
        let (got, took) =
            timed(
                d.world
                    .client("dig")
                    .args(["+time=1", "+tries=1", "+short", "web.t.mesh"]),
            );
        asked += 1;
        if got.trim() != d.vip.ip().to_string() || took > std::time::Duration::from_millis(900) {
            failed.push(format!("{:?}: {got:?} in {took:?}", t.elapsed()));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!("reload took {:?}; {asked} queries during it", t.elapsed());
    assert!(
        asked >= 5,
        "the compile was too quick to tell ({asked} queries)"
    );
    assert!(
        failed.is_empty(),
        "DNS failed during the compile: {failed:?}"
    );
    assert!(
        dig(&d, true, &["+short", "bulk0.t.mesh"]).starts_with("240.240."),
        "the new names resolve"
    );
}

/// Issue 10, item 15. A resolver address where nothing listens answers
/// ICMP port unreachable: a forwarded query gets SERVFAIL at once, not
/// after the 2 s upstream timeout.
#[test]
fn an_upstream_that_refuses_gets_servfail_at_once() {
    let d = setup(&[]);
    d.world
        .world
        .ip(&["addr", "add", "10.53.0.9/32", "dev", "lo"])
        .unwrap();
    d.world.resolv_conf("10.53.0.9").unwrap();
    let (got, took) = timed(
        d.world
            .client("dig")
            .args(["+time=5", "+tries=1", "up.test"]),
    );
    assert_eq!(status(&got), "SERVFAIL", "{got}");
    assert!(
        took < std::time::Duration::from_millis(700),
        "SERVFAIL took {took:?}: the port unreachable was not noticed"
    );
    // Virtual hosts are answered as ever.
    assert_eq!(
        dig(&d, true, &["+short", "web.t.mesh"]).trim(),
        d.vip.ip().to_string()
    );
}

/// Issue 14, item 9: an ExternalService without ExternalEndpoints is
/// served by name and VIP like any virtual host, its endpoints being what
/// its host resolves to upstream (routerd's own queries are not captured),
/// looked up again when the answer's TTL runs out: a changed DNS record
/// moves new connections to the new address, with no reload.
#[test]
fn external_services_follow_their_hosts_dns_answers() {
    require_root();
    let world = World::new(&[
        Listen::tcp("10.7.0.1:8080", "partner-old"),
        Listen::tcp("10.7.0.2:8080", "partner-new"),
    ])
    .unwrap();
    let hosts = world
        .dir
        .write("partner.hosts", "10.7.0.1 api.partner.test\n")
        .unwrap();
    let dnsmasq = world.dnsmasq_hosts(RESOLVER, &hosts, 1).unwrap();
    world.resolv_conf(RESOLVER).unwrap();
    let config = Config::new()
        .node("c1", "east", "e1")
        .with(
            ExternalService::new("partner", "api.partner.test")
                .port(json!({"number": 8080, "name": "http", "protocol": "HTTP"})),
        )
        .yaml();
    world.dir.write("config/all.yaml", &config).unwrap();
    let cfg = world.dir.path.join("config");
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"]).unwrap();
    let get = || {
        let body = out(world.client("curl").args([
            "-sS",
            "--max-time",
            "5",
            "http://api.partner.test:8080/ext",
        ]));
        serde_json::from_str::<Answer>(&body)
            .unwrap_or_else(|e| panic!("{e}: {body:?}"))
            .id
    };
    // Resolved before the first apply: served from the start.
    assert_eq!(get(), "partner-old");
    // The name is a virtual host: the cgroup's resolver answers its VIP.
    let ip = out(world.client("getent").args(["hosts", "api.partner.test"]));
    assert!(ip.starts_with("240.240."), "{ip:?}");
    // The record changes upstream; routerd looks again within the TTL.
    let mark = routerd.log_len();
    std::fs::write(&hosts, "10.7.0.2 api.partner.test\n").unwrap();
    dnsmasq.hangup();
    routerd
        .wait_event(
            mark,
            |e| matches!(e, Event::Applied { reason, .. } if reason == "external host resolved"),
        )
        .unwrap();
    assert_eq!(get(), "partner-new");
}
