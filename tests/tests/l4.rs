//! The L4 datapath against the real kernel: real programs attached to a child
//! cgroup, real clients in a namespace with no default route, real backends.
use std::collections::BTreeMap;

use router_tests::*;

const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
const ENETUNREACH: i32 = 101;

/// Node in cluster c1, region east, zone e1. `web` has two endpoints in the
/// node's zone, one in another zone, one in another region (and one IPv6);
/// `split` is an 80/20 TCP route; `echo` is UDP; `down` has no ready endpoint.
fn scenario() -> (String, Vec<Listen>) {
    scenario_split(80, 20)
}

/// The scenario with `split` weighted `a`/`b`.
fn scenario_split(a: u32, b: u32) -> (String, Vec<Listen>) {
    let one = |name: &str, port: u16, ep: Ep<'_>| {
        service_with_slice("c1", "east", name, name, port, &[ep])
    };
    let y = Config::new()
        .node("c1", "east", "e1")
        .with(web(
            "c1",
            "east",
            "web-1",
            &[
                ("10.1.0.1", "e1", true),
                ("10.1.0.2", "e1", true),
                ("10.1.1.1", "e2", true),
            ],
        ))
        .with(
            Slice::new("c1", "web", "web-1-v6")
                .region("east")
                .port(8080)
                .endpoints(&[("fd00:1::1", "e1", true), ("fd00:1::2", "e2", true)]),
        )
        .with(web("c2", "west", "web-2", &[("10.2.0.1", "w1", true)]))
        .with(local_vd("web", "web.t.mesh", "web", 8080, "HTTP"))
        .with(locality_policy())
        .with(one("a", 7000, ("10.3.0.1", "e1", true)))
        .with(one("b", 7000, ("10.3.0.2", "e2", true)))
        .with(RouteTable::new("split").host("split.t.mesh").tcp(
            TcpRoute::new().name("canary").on_port(7000).to(&[
                Dest::service("a").cluster("c1").port(7000).weight(a),
                Dest::service("b").cluster("c1").port(7000).weight(b),
            ]),
        ))
        .with(Service::new("c1", "echo").udp_port(9000))
        .with(
            Slice::new("c1", "echo", "echo")
                .region("east")
                .udp_port(9000)
                .endpoints(&[("10.4.0.1", "e1", true), ("10.4.0.2", "e1", true)]),
        )
        .with(local_vd("echo", "echo.t.mesh", "echo", 9000, "UDP"))
        .with(one("down", 8000, ("10.5.0.1", "e1", false)))
        .with(
            VirtualDestination::new("down", "down.t.mesh")
                .app("down")
                .port(8000, "TCP"),
        )
        .yaml();
    let listens = vec![
        Listen::tcp("10.1.0.1:8080", "web-e1-a"),
        Listen::tcp("10.1.0.2:8080", "web-e1-b"),
        Listen::tcp("10.1.1.1:8080", "web-e2"),
        Listen::tcp("10.2.0.1:8080", "web-west"),
        Listen::tcp("[fd00:1::1]:8080", "web-v6-e1"),
        Listen::tcp("[fd00:1::2]:8080", "web-v6-e2"),
        Listen::tcp("10.3.0.1:7000", "a"),
        Listen::tcp("10.3.0.2:7000", "b"),
        Listen::udp("10.4.0.1:9000", "echo-1"),
        Listen::udp("10.4.0.2:9000", "echo-2"),
        Listen::tcp("10.5.0.1:8000", "down"),
    ];
    (y, listens)
}

struct Setup {
    world: World,
    routerd: Routerd,
    plan: router_user::plan::Plan,
}

fn setup_with(yaml_text: &str, listens: &[Listen], extra: &[&str]) -> Setup {
    require_root();
    let world = World::new(listens).expect("world");
    let cfg = world
        .dir
        .write("config/all.yaml", yaml_text)
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let plan = plan(&cfg).expect("plan");
    let mut args = vec!["--no-watch"];
    args.extend_from_slice(extra);
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &args).expect("routerd");
    Setup {
        world,
        routerd,
        plan,
    }
}

fn setup() -> Setup {
    let (y, l) = scenario();
    setup_with(&y, &l, &[])
}

fn ids(probes: &[Probe]) -> BTreeMap<String, usize> {
    tally(probes)
}

#[test]
fn vip_connect_lands_on_the_closest_tier_and_getpeername_shows_the_vip() {
    let s = setup();
    let vip = vip(&s.plan, "web.t.mesh", 8080, false);
    let probes = s
        .world
        .probe(&["tcp", &vip.to_string(), "--count", "60"])
        .unwrap();
    let t = ids(&probes);
    assert_eq!(
        t.keys().cloned().collect::<Vec<_>>(),
        vec!["web-e1-a", "web-e1-b"],
        "only the node's zone: {t:?}"
    );
    // Both same-zone endpoints share (p = 1/2, 60 tries: each gets some).
    assert!(t.values().all(|n| *n >= 10), "{t:?}");
    for p in &probes {
        assert_eq!(
            p.peer.as_deref(),
            Some(vip.to_string().as_str()),
            "getpeername must return the VIP"
        );
        let a = p.answer.as_ref().unwrap();
        assert!(
            a.local.starts_with("10.1.0."),
            "backend saw the connection on its own address: {a:?}"
        );
        assert!(
            a.peer.starts_with("10.255.255.1:"),
            "client address is kept: {a:?}"
        );
    }
    // The kernel's counters agree with what the clients saw.
    let r = s.routerd.inspect().unwrap();
    let svc = r.services.iter().find(|x| x.vip == vip).unwrap();
    assert_eq!(svc.connects, 60);
    let per: u64 = svc.backends.iter().map(|b| b.connects).sum();
    assert_eq!(per, 60);
}

#[test]
fn weights_split_within_a_statistical_bound() {
    let s = setup();
    let vip = vip(&s.plan, "split.t.mesh", 7000, false);
    let n = 1000usize;
    let probes = s
        .world
        .probe(&["tcp", &vip.to_string(), "--count", &n.to_string()])
        .unwrap();
    let t = ids(&probes);
    assert_eq!(t.values().sum::<usize>(), n);
    let a = *t.get("a").unwrap_or(&0) as f64 / n as f64;
    // p = 0.8, sigma = sqrt(p(1-p)/n) = 0.0126; 5 sigma = 0.063.
    assert!(
        (a - 0.8).abs() < 0.063,
        "share of a = {a} (expected 0.8 +- 0.063): {t:?}"
    );
    assert_eq!(t.len(), 2, "{t:?}");
    // The slot table is exactly 4:1.
    let svc = s
        .plan
        .service(vip.ip(), 7000, router_user::plan::Proto::Tcp)
        .unwrap();
    let mut slots: Vec<u32> = svc.slots.iter().map(|x| x.slots).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 4]);
}

#[test]
fn udp_through_a_vip_replies_come_from_the_vip() {
    let s = setup();
    let vip = vip(&s.plan, "echo.t.mesh", 9000, false);
    for mode in [&[][..], &["--connected"][..]] {
        let mut args = vec!["udp", &vip.to_string() as &str, "--count", "20"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(mode.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let probes = s.world.probe(&args).unwrap();
        assert_eq!(probes.len(), 20);
        for p in &probes {
            assert!(p.ok, "{mode:?}: {p:?}");
            assert_eq!(
                p.peer.as_deref(),
                Some(vip.to_string().as_str()),
                "{mode:?}: reply source must be the VIP"
            );
            assert!(p.answer.as_ref().unwrap().id.starts_with("echo-"));
        }
        // Unconnected sends pick by socket cookie: new sockets spread over both.
        assert_eq!(ids(&probes).len(), 2, "{mode:?}: {:?}", ids(&probes));
    }
}

#[test]
fn a_service_without_ready_endpoints_fails_with_ehostunreach() {
    let s = setup();
    let vip = vip(&s.plan, "down.t.mesh", 8000, false);
    let p = &s.world.probe(&["tcp", &vip.to_string()]).unwrap()[0];
    assert_eq!(p.errno, Some(EHOSTUNREACH), "{p:?}");
}

#[test]
fn unknown_vips_and_ports_are_refused_not_routed_out() {
    let s = setup();
    // An address in the VIP range that is no service.
    let p = &s.world.probe(&["tcp", "240.240.255.254:80"]).unwrap()[0];
    assert_eq!(p.errno, Some(ECONNREFUSED), "{p:?}");
    // A known VIP on a port it does not serve.
    let vip = vip(&s.plan, "web.t.mesh", 9999, false);
    let p = &s.world.probe(&["tcp", &vip.to_string()]).unwrap()[0];
    assert_eq!(p.errno, Some(ECONNREFUSED), "{p:?}");
    let r = s.routerd.inspect().unwrap();
    assert_eq!(r.unknown_vip_refused, 2);
}

#[test]
fn ipv6_vips_route_to_ipv6_endpoints() {
    let s = setup();
    let vip = vip(&s.plan, "web.t.mesh", 8080, true);
    let probes = s
        .world
        .probe(&["tcp", &vip.to_string(), "--count", "10"])
        .unwrap();
    for p in &probes {
        assert!(p.ok, "{p:?}");
        assert_eq!(p.peer.as_deref(), Some(vip.to_string().as_str()));
        assert_eq!(
            p.answer.as_ref().unwrap().id,
            "web-v6-e1",
            "closest tier only"
        );
    }
}

#[test]
fn processes_outside_the_cgroup_are_untouched() {
    let s = setup();
    let vip = vip(&s.plan, "web.t.mesh", 8080, false);
    let p = &s.world.probe_outside(&["tcp", &vip.to_string()]).unwrap()[0];
    assert_eq!(
        p.errno,
        Some(ENETUNREACH),
        "not rewritten, so no route: {p:?}"
    );
    // And plain traffic from inside the cgroup is untouched too.
    let p = &s.world.probe(&["tcp", "10.2.0.1:8080"]).unwrap()[0];
    assert_eq!(p.answer.as_ref().map(|a| a.id.as_str()), Some("web-west"));
    assert_eq!(p.peer.as_deref(), Some("10.2.0.1:8080"));
}

#[test]
fn curl_by_host_name_reaches_the_closest_tier() {
    let s = setup();
    let vip = vip(&s.plan, "web.t.mesh", 8080, false);
    let out = run(s.world.client("curl").args([
        "-sS",
        "--max-time",
        "3",
        "--resolve",
        &format!("web.t.mesh:8080:{}", vip.ip()),
        "http://web.t.mesh:8080/hello",
    ]))
    .expect("curl");
    let a: Answer = serde_json::from_str(&out).expect("backend answer");
    assert!(a.id.starts_with("web-e1-"), "{a:?}");
    assert_eq!(a.path, "/hello");
}

#[test]
fn a_new_build_replaces_the_programs_without_a_gap() {
    let mut s = setup();
    let vip = vip(&s.plan, "web.t.mesh", 8080, false);
    s.routerd.terminate().unwrap();
    // Pretend the pinned programs came from another build.
    let pins = router_user::datapath::Pins::new(&s.routerd.pin_root);
    let mut maps = router_user::datapath::Maps::open(&pins).unwrap();
    let mut meta = maps.read_meta().unwrap();
    meta.object_hash ^= 1;
    maps.meta.set(0, meta, 0).unwrap();
    // Still routing with nobody home, then the restart swaps the programs.
    assert!(s.world.probe(&["tcp", &vip.to_string()]).unwrap()[0].ok);
    let mark = s.routerd.log_len();
    s.routerd.spawn().unwrap();
    let ready = s.routerd.events(mark);
    assert!(
        ready
            .iter()
            .any(|e| matches!(e, Event::Ready { startup, .. } if startup == "replaced")),
        "{ready:?}"
    );
    let probes = s
        .world
        .probe(&["tcp", &vip.to_string(), "--count", "10"])
        .unwrap();
    assert!(
        probes
            .iter()
            .all(|p| p.ok && p.answer.as_ref().unwrap().id.starts_with("web-e1-")),
        "{probes:?}"
    );
    // Exactly one set of programs stays attached.
    let links: Vec<_> = std::fs::read_dir(pins.links_dir()).unwrap().collect();
    assert_eq!(links.len(), router_common::PROGRAMS.len());
}

#[test]
fn detaching_restores_plain_behaviour() {
    let mut s = setup();
    let vip = vip(&s.plan, "web.t.mesh", 8080, false);
    assert!(s.world.probe(&["tcp", &vip.to_string()]).unwrap()[0].ok);
    s.routerd.stop().unwrap();
    assert!(
        !s.routerd.pin_root.join(router_common::PIN_SUBDIR).exists(),
        "pins removed"
    );
    let p = &s.world.probe(&["tcp", &vip.to_string()]).unwrap()[0];
    assert_eq!(p.errno, Some(ENETUNREACH), "{p:?}");
    let p = &s.world.probe(&["tcp", "10.1.0.1:8080"]).unwrap()[0];
    assert!(p.ok, "direct connections still work: {p:?}");
}

/// `::ffff:a.b.c.d` for an IPv4 socket address.
fn mapped(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a.ip() {
        std::net::IpAddr::V4(v4) => std::net::SocketAddr::new(v4.to_ipv6_mapped().into(), a.port()),
        _ => a,
    }
}

/// Issue 10, item 7. A dual-stack socket (Java's default) dials
/// `::ffff:VIP`: it is routed like the IPv4 VIP (TCP, connected and
/// unconnected UDP), the application sees the mapped VIP as its peer, and a
/// mapped address in the VIP range that is no service is refused, never
/// routed out.
#[test]
fn ipv4_mapped_vips_from_dual_stack_sockets_are_routed_like_ipv4() {
    let s = setup();
    let web = mapped(vip(&s.plan, "web.t.mesh", 8080, false));
    let probes = s
        .world
        .probe(&["tcp", &web.to_string(), "--count", "10"])
        .unwrap();
    for p in &probes {
        assert!(p.ok, "{p:?}");
        assert_eq!(p.peer.as_deref(), Some(web.to_string().as_str()), "{p:?}");
        assert!(
            p.answer.as_ref().unwrap().id.starts_with("web-e1-"),
            "{p:?}"
        );
    }
    let echo = mapped(vip(&s.plan, "echo.t.mesh", 9000, false)).to_string();
    for mode in [&[][..], &["--connected"][..]] {
        let mut args = vec!["udp", echo.as_str(), "--count", "5"];
        args.extend_from_slice(mode);
        for p in s.world.probe(&args).unwrap() {
            assert!(p.ok, "{mode:?}: {p:?}");
            assert_eq!(p.peer.as_deref(), Some(echo.as_str()));
        }
    }
    let p = &s
        .world
        .probe(&["tcp", "[::ffff:240.240.255.254]:80"])
        .unwrap()[0];
    assert_eq!(p.errno, Some(ECONNREFUSED), "{p:?}");
}

/// Issue 10, item 10 (the old bank). Slot tables flip back and forth under a
/// stream of new connections: a `connect()` that read a header just before
/// a flip must still find its slot and backend (the old bank is deleted only
/// after a grace period), so nothing is ever refused as inconsistent.
#[test]
fn slot_tables_flip_under_load_without_a_half_deleted_bank() {
    let s = setup();
    let vip = vip(&s.plan, "split.t.mesh", 7000, false);
    let (y, _) = scenario();
    let (flipped, _) = scenario_split(30, 70);
    // One flip: the old bank is still there right after (a connect that
    // read the old header may still need it), and gone after the grace.
    let pins = router_user::datapath::Pins::new(&s.routerd.pin_root);
    let maps = router_user::datapath::Maps::open(&pins).unwrap();
    let key = router_user::datapath::sync::svc_key(
        s.plan
            .service(vip.ip(), 7000, router_user::plan::Proto::Tcp)
            .unwrap(),
    );
    let before = maps.services.get(&key, 0).unwrap();
    s.world.dir.write("config/all.yaml", &flipped).unwrap();
    assert!(s.routerd.reload().unwrap().is_applied());
    let after = maps.services.get(&key, 0).unwrap();
    assert_ne!(before.base, after.base, "the table flipped banks");
    let old_slot = |i: u32| router_common::SlotKey {
        svc_id: before.svc_id,
        slot: before.base + i,
    };
    assert!(
        (0..before.count).all(|i| maps.slots.get(&old_slot(i), 0).is_ok()),
        "the old bank was deleted at the flip"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        (0..before.count).all(|i| maps.slots.get(&old_slot(i), 0).is_err()),
        "the old bank was never deleted"
    );
    let load = s
        .world
        .client(bin("rt-probe"))
        .args(["bench", &vip.to_string(), "--millis", "5000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let mut flips = 0;
    while t.elapsed() < std::time::Duration::from_millis(4500) {
        // (`flipped` is serving now.)
        let text = if flips % 2 == 0 { &y } else { &flipped };
        s.world.dir.write("config/all.yaml", text).unwrap();
        let r = s.routerd.reload().unwrap();
        assert!(r.is_applied(), "{r}");
        flips += 1;
    }
    let out = load.wait_with_output().unwrap();
    let b: Bench = serde_json::from_slice(&out.stdout).unwrap();
    let r = s.routerd.inspect().unwrap();
    let inconsistent: u64 = r.services.iter().map(|s| s.inconsistent).sum();
    eprintln!("{flips} flips under {} connects/s: {b:?}", b.rate as u64);
    assert!(flips >= 10, "{flips}");
    assert_eq!(inconsistent, 0, "connects saw a half-deleted bank");
    assert_eq!(b.errors, 0, "{b:?}");
}
