//! The daemon's life: reloads (SIGHUP and file changes), bad configs, kill -9
//! and restart with adoption of the pinned datapath.
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use router_tests::*;

/// `web` with endpoints in the node's zone (e1), another zone (e2) and
/// another region; `ready_e1` says whether the node's zone has ready ones.
fn web_world(ready_e1: bool) -> Config {
    two_zones(ready_e1)
        .with(web("c2", "west", "web-2", &[("10.2.0.1", "w1", true)]))
        .with(local_vd("web", "web.t.mesh", "web", 8080, "HTTP"))
        .with(locality_policy())
}

fn config(ready_e1: bool) -> String {
    web_world(ready_e1).yaml()
}

/// `host` on the `web` services, added to a world.
fn another_host(name: &str, host: &str) -> VirtualDestination {
    VirtualDestination::new(name, host)
        .app("web")
        .port(8080, "HTTP")
}

fn listens() -> Vec<Listen> {
    vec![
        Listen::tcp("10.1.0.1:8080", "e1"),
        Listen::tcp("10.1.1.1:8080", "e2"),
        Listen::tcp("10.2.0.1:8080", "west"),
    ]
}

fn start(watch: bool) -> (World, Routerd, std::net::SocketAddr) {
    require_root();
    let world = World::new(&listens()).unwrap();
    world.dir.write("config/web.yaml", &config(true)).unwrap();
    let cfg = world.dir.path.join("config");
    let vip = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
    let extra: &[&str] = if watch { &[] } else { &["--no-watch"] };
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, extra).unwrap();
    (world, routerd, vip)
}

#[test]
fn reload_moves_new_connections_to_the_next_tier_and_keeps_established_ones() {
    let (world, routerd, vip) = start(false);
    assert_eq!(only(&world, vip, 20), "e1");

    // An established connection to the closest endpoint.
    let mut held = world
        .client(bin("rt-probe"))
        .args(["tcp", &vip.to_string(), "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let first: Probe = serde_json::from_str(&line).unwrap();
    assert_eq!(first.answer.unwrap().id, "e1");

    // The closest endpoint stops being ready: new connections go to the next tier.
    world.dir.write("config/web.yaml", &config(false)).unwrap();
    let outcome = routerd.reload().unwrap();
    assert!(outcome.is_applied(), "{outcome}");
    assert_eq!(only(&world, vip, 20), "e2");

    // The established connection keeps working, on the same backend.
    held.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let second: Probe = serde_json::from_str(&line).unwrap();
    assert!(second.ok, "{second:?}");
    assert_eq!(second.answer.unwrap().id, "e1");
    held.wait().unwrap();
}

#[test]
fn a_bad_config_is_reported_and_the_last_good_one_keeps_serving() {
    let (world, routerd, vip) = start(false);
    let before = routerd.inspect().unwrap().generation;
    for bad in [
        "kind: RouteTable\nspec: [\n", // malformed YAML
        "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: x, namespace: t}\nspec:\n  hostz: [a]\n", // unknown field
        "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: x, namespace: t}\nspec:\n  hosts: [x.t.mesh]\n  tcp:\n  - forwardTo: {destinations: [{ref: {name: nope}}]}\n", // dangling
    ] {
        world.dir.write("config/bad.yaml", bad).unwrap();
        let outcome = routerd.reload().unwrap();
        assert!(
            outcome.errors().iter().any(|e| e.contains("bad.yaml:")),
            "rejected, naming the file and line: {outcome:?}"
        );
        assert_eq!(
            only(&world, vip, 5),
            "e1",
            "still serving the last good config"
        );
    }
    let after = routerd.inspect().unwrap().generation;
    assert_eq!(before, after, "nothing was applied");
    std::fs::remove_file(world.dir.path.join("config/bad.yaml")).unwrap();
    assert!(routerd.reload().unwrap().is_no_change());
}

#[test]
fn a_file_change_is_picked_up_without_a_signal() {
    let (world, routerd, vip) = start(true);
    assert_eq!(only(&world, vip, 5), "e1");
    let mark = routerd.log_len();
    world.dir.write("config/web.yaml", &config(false)).unwrap();
    routerd.wait_event(mark, Event::is_applied).unwrap();
    assert_eq!(only(&world, vip, 10), "e2");
}

#[test]
fn kill_9_does_not_stop_routing_and_a_restart_adopts_the_maps() {
    let (world, mut routerd, vip) = start(false);
    assert_eq!(only(&world, vip, 5), "e1");
    let counted = |r: &Routerd| -> u64 {
        let report = r.inspect().unwrap();
        report
            .services
            .iter()
            .find(|s| s.vip == vip)
            .unwrap()
            .connects
    };
    assert_eq!(counted(&routerd), 5);
    routerd.kill9();
    // Routing goes on with nobody home.
    assert_eq!(only(&world, vip, 10), "e1");
    assert_eq!(counted(&routerd), 15, "the kernel kept counting");
    // A new daemon adopts what is pinned: no flush (counters kept), no gap.
    let mark = routerd.log_len();
    routerd.spawn().unwrap();
    let ready = routerd
        .wait_event(mark, |e| matches!(e, Event::Ready { .. }))
        .unwrap();
    assert!(
        matches!(&ready, Event::Ready { startup, .. } if startup == "adopted"),
        "{ready:?}"
    );
    assert_eq!(counted(&routerd), 15);
    assert_eq!(only(&world, vip, 5), "e1");
    // And it serves reloads as before.
    world.dir.write("config/web.yaml", &config(false)).unwrap();
    assert!(routerd.reload().unwrap().is_applied());
    assert_eq!(only(&world, vip, 5), "e2");
}

#[test]
fn pins_and_state_are_for_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let (_world, routerd, _vip) = start(false);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&routerd.pin_root), 0o700, "pin root");
    assert_eq!(mode(&routerd.state_dir), 0o700, "state dir");
    let mut pins = 0;
    let mut stack = vec![routerd.pin_root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                pins += 1;
                assert_eq!(mode(&p) & 0o077, 0, "{} is readable by others", p.display());
            }
        }
    }
    assert!(pins >= 10, "found only {pins} pins");
}

const ECONNREFUSED: i32 = 111;

/// An L7 host (a path match sends `web.t.mesh:8080` to the proxy).
fn l7_config() -> String {
    l7_config_with(json!({}))
}

/// The same with more RouterConfig settings (e.g. listeners).
fn l7_config_with(node: serde_json::Value) -> String {
    Config::new()
        .node_with("c1", "east", "e1", node)
        .with(web("c1", "east", "web", &[("10.1.0.1", "e1", true)]))
        .with(
            RouteTable::new("web").host("web.t.mesh").http(
                HttpRoute::new()
                    .prefix("/api")
                    .to(&[Dest::service("web").port(8080)]),
            ),
        )
        .yaml()
}

/// A world with `web` on 10.1.0.1 and the L7 config written (routerd not
/// started): the config directory and its plan.
fn l7_world() -> (World, std::path::PathBuf, router_user::plan::Plan) {
    require_root();
    let world = World::new(&[Listen::tcp("10.1.0.1:8080", "web")]).unwrap();
    world.dir.write("config/web.yaml", &l7_config()).unwrap();
    let cfg = world.dir.path.join("config");
    let plan = plan(&cfg).unwrap();
    (world, cfg, plan)
}

fn l7_ok(world: &World, vip: &str) -> bool {
    let p = world.probe(&["http", vip, "--path", "/api/x"]).unwrap();
    p[0].status == Some(200) && p[0].answer.as_ref().is_some_and(|a| a.id == "web")
}

/// Issue 10, item 1. While the daemon is down, its proxy's port is not
/// something a local user can take over: L7 VIPs are refused by the kernel
/// (explicit ECONNREFUSED, counted), nobody unprivileged can bind the port
/// the kernel would send them to, and a restart gets its listener back.
#[test]
fn a_dead_daemon_refuses_l7_vips_and_nobody_can_take_its_port() {
    let (world, cfg, plan) = l7_world();
    let vip = vip(&plan, "web.t.mesh", 8080, false).to_string();
    let mut routerd = Routerd::start(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--no-watch", "--no-dns"],
    )
    .unwrap();
    assert!(l7_ok(&world, &vip), "the L7 route works");

    routerd.kill9();
    // A local user (nobody, outside the cgroup) grabs every port the kernel
    // could hand L7 connections to: the proxy's, and any unprivileged one a
    // per-service design might use.
    let ports = format!("15000-15999,{}", plan.proxy.port);
    let squatter = world
        .outside(bin("rt-probe"))
        .args(["squat", "--ports", &ports, "--millis", "12000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Past the heartbeat (3 s): the kernel itself refuses L7 VIPs.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let p = &world.probe(&["tcp", &vip, "--path", "/api/x"]).unwrap()[0];
    assert!(
        !p.ok && p.errno == Some(ECONNREFUSED),
        "an L7 VIP with the daemon down must be refused: {p:?}"
    );
    let refused = routerd.inspect().unwrap().proxy_refused;
    assert!(
        refused >= 1,
        "refused in the kernel (proxy_refused {refused})"
    );

    // The restart gets its listener back, squatter or not.
    routerd.spawn().unwrap();
    assert!(l7_ok(&world, &vip), "L7 serves again after the restart");
    let out = squatter.wait_with_output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["accepted"], 0, "the squatter received connections: {s}");
    assert!(
        !s["bound"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(plan.proxy.port)),
        "an unprivileged user bound the proxy's port: {s}"
    );
}

/// `getent ahostsv4 NAME` in the cgroup (the IPv4 answers through glibc).
fn getent(world: &World, name: &str) -> String {
    String::from_utf8_lossy(
        &world
            .client("getent")
            .args(["ahostsv4", name])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

/// Issue 10, item 6. Moving the DNS or proxy listeners in the config is
/// applied on reload: the new sockets are bound first, then the kernel is
/// pointed at them, then the old ones close (no outage, no port left for
/// anyone to bind while the kernel still sends there).
#[test]
fn listeners_move_on_reload_bound_before_the_kernel_points_there() {
    let (world, cfg, plan) = l7_world();
    let vip = vip(&plan, "web.t.mesh", 8080, false);
    let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"]).unwrap();
    let got = getent(&world, "web.t.mesh");
    assert!(got.starts_with(&vip.ip().to_string()), "{got:?}");
    assert!(l7_ok(&world, &vip.to_string()));

    world
        .dir
        .write(
            "config/web.yaml",
            &l7_config_with(json!({"dns": {"listen": "127.0.0.154"}})),
        )
        .unwrap();
    let r = routerd.reload().unwrap();
    assert!(r.is_applied(), "{r}");
    let got = getent(&world, "web.t.mesh");
    assert!(
        got.starts_with(&vip.ip().to_string()),
        "names resolve through the moved DNS listener: {got:?}"
    );
    let direct = String::from_utf8_lossy(
        &world
            .outside("dig")
            .args([
                "+time=1",
                "+tries=1",
                "+short",
                "@127.0.0.154",
                "web.t.mesh",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert_eq!(direct.trim(), vip.ip().to_string());
    let old = world
        .outside("dig")
        .args([
            "+time=1",
            "+tries=1",
            "+short",
            "@127.0.0.153",
            "web.t.mesh",
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&old.stdout).contains(&vip.ip().to_string()),
        "the old DNS listener is closed"
    );

    world
        .dir
        .write(
            "config/web.yaml",
            &l7_config_with(json!({"dns": {"listen": "127.0.0.154"}, "proxy": {"port": 1001}})),
        )
        .unwrap();
    let r = routerd.reload().unwrap();
    assert!(r.is_applied(), "{r}");
    assert!(
        l7_ok(&world, &vip.to_string()),
        "L7 through the moved proxy"
    );
    let out =
        run(world
            .outside(bin("rt-probe"))
            .args(["connects", "127.0.0.1:1000", "--millis", "50"]))
        .unwrap();
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["ok"], 0, "the old proxy listener is closed: {c}");
}

/// Issue 10, item 14. A namespace without IPv6 (`::1` cannot be bound):
/// the default IPv6 proxy listener is skipped with a warning, not fatal.
#[test]
fn a_namespace_without_ipv6_still_gets_an_l7_proxy() {
    let (world, cfg, plan) = l7_world();
    for setting in [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.lo.disable_ipv6=1",
    ] {
        world.node.sysctl(setting).unwrap();
    }
    let vip = vip(&plan, "web.t.mesh", 8080, false);
    let routerd = Routerd::start(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--no-watch", "--no-dns"],
    )
    .unwrap();
    assert!(l7_ok(&world, &vip.to_string()));
    assert!(
        routerd
            .logs()
            .iter()
            .any(|l| l.contains("no IPv6 L7 proxy listener")),
        "says why there is no IPv6 listener"
    );
}

/// Issue 10, item 10 (a state directory that is full). The plan is applied
/// and serves (names included) even when it cannot be recorded on disk.
#[test]
fn a_full_state_directory_does_not_freeze_updates() {
    require_root();
    let world = World::new(&listens()).unwrap();
    world.dir.write("config/web.yaml", &config(true)).unwrap();
    let cfg = world.dir.path.join("config");
    let state = world.dir.path.join("state");
    std::fs::create_dir_all(&state).unwrap();
    run(std::process::Command::new("mount").args([
        "-t",
        "tmpfs",
        "-o",
        "size=64k",
        "tmpfs",
        &state.display().to_string(),
    ]))
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(state.clone());
    let mut routerd = Routerd::new(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"]);
    routerd.state_dir = state.clone();
    let pos = routerd
        .args
        .iter()
        .position(|a| a == "--state-dir")
        .unwrap();
    routerd.args[pos + 1] = state.display().to_string();
    routerd.spawn().unwrap();
    // Fill the disk.
    let _ = std::fs::write(state.join("filler"), vec![0u8; 256 * 1024]);
    let more = web_world(true).with(another_host("new", "new.t.mesh"));
    world.dir.write("config/web.yaml", &more.yaml()).unwrap();
    let r = routerd.reload().unwrap();
    assert!(r.is_applied(), "{r}");
    let new = vip(&plan(&cfg).unwrap(), "new.t.mesh", 8080, false);
    assert!(
        getent(&world, "new.t.mesh").starts_with(&new.ip().to_string()),
        "the new name resolves"
    );
    assert!(world.probe(&["tcp", &new.to_string()]).unwrap()[0].ok);
    // (The plan is recorded in the background, after it applies.)
    routerd
        .wait_log(0, "could not record the applied plan")
        .expect("says the plan could not be recorded");
}

/// Issue 10, item 10 (garbage). Entries no service reaches, left in the
/// maps while no daemon ran (an interrupted update), are deleted when a
/// daemon adopts the datapath.
#[test]
fn garbage_left_in_the_maps_is_collected_when_adopted() {
    let (world, mut routerd, vip) = start(false);
    assert_eq!(only(&world, vip, 5), "e1");
    routerd.kill9();
    let pins = router_user::datapath::Pins::new(&routerd.pin_root);
    {
        let mut maps = router_user::datapath::Maps::open(&pins).unwrap();
        let stray = router_common::SlotKey {
            svc_id: 9_999,
            slot: 1,
        };
        maps.slots.insert(stray, 9_998, 0).unwrap();
        let b = router_common::Backend {
            addr: [u32::from_ne_bytes([10, 9, 9, 9]), 0, 0, 0],
            port: 80u16.to_be(),
            family: router_common::FAMILY_V4,
            ..Default::default()
        };
        maps.backends.insert(9_998, b, 0).unwrap();
    }
    routerd.spawn().unwrap();
    let maps = router_user::datapath::Maps::open(&pins).unwrap();
    assert!(
        maps.slots
            .get(
                &router_common::SlotKey {
                    svc_id: 9_999,
                    slot: 1
                },
                0
            )
            .is_err(),
        "the stray slot is gone"
    );
    assert!(
        maps.backends.get(&9_998, 0).is_err(),
        "the stray backend is gone"
    );
    assert_eq!(only(&world, vip, 5), "e1");
}

/// Issue 10, item 10 (a write that fails half-way). Another process has
/// filled the service map, so the daemon's writes run out of room in the
/// middle of a reload (after the changed service flipped, before the new one
/// fits): the daemon says so, writes the last good plan back, keeps serving
/// it, and applies the new one once there is room.
#[test]
fn a_map_write_that_fails_half_way_restores_the_last_good_plan() {
    require_root();
    let world = World::new(&listens()).unwrap();
    world.dir.write("config/web.yaml", &config(true)).unwrap();
    let cfg = world.dir.path.join("config");
    let vip = vip(&plan(&cfg).unwrap(), "web.t.mesh", 8080, false);
    let routerd = Routerd::start(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--no-watch", "--max-services", "64"],
    )
    .unwrap();
    assert_eq!(only(&world, vip, 5), "e1");
    let pins = router_user::datapath::Pins::new(&routerd.pin_root);
    let mut maps = router_user::datapath::Maps::open(&pins).unwrap();
    // Fill the service map with entries of nobody's (outside the VIP range).
    let mut filled = Vec::new();
    for i in 0..1000u32 {
        let k = router_common::SvcKey {
            addr: [
                u32::from_ne_bytes([10, 200, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ],
            port: 1u16.to_be(),
            proto: router_common::PROTO_TCP,
            family: router_common::FAMILY_V4,
        };
        let h = router_common::SvcHeader {
            svc_id: 20_000 + i,
            ..Default::default()
        };
        if maps.services.insert(k, h, 0).is_err() {
            break;
        }
        filled.push(k);
    }
    assert!(
        !filled.is_empty() && filled.len() < 1000,
        "{}",
        filled.len()
    );
    // web's slots change (e1 not ready) and a new host needs a new service.
    let more = web_world(false).with(another_host("new", "new.t.mesh"));
    world.dir.write("config/web.yaml", &more.yaml()).unwrap();
    let mark = routerd.log_len();
    let r = routerd.reload().unwrap();
    assert!(r.is_rejected(), "{r}");
    assert!(
        routerd
            .events(mark)
            .iter()
            .any(|e| matches!(e, Event::PartialWrite { restored: true, .. })),
        "the last good plan was written back: {:?}",
        routerd.events(mark)
    );
    assert_eq!(only(&world, vip, 10), "e1", "the last good plan serves");
    for k in &filled {
        let _ = maps.services.remove(k);
    }
    let r = routerd.reload().unwrap();
    assert!(r.is_applied(), "{r}");
    assert_eq!(only(&world, vip, 10), "e2");
    let new = vip_of(&world, "new.t.mesh");
    assert!(world.probe(&["tcp", &new]).unwrap()[0].ok);
}

fn vip_of(world: &World, host: &str) -> String {
    vip(
        &plan(&world.dir.path.join("config")).unwrap(),
        host,
        8080,
        false,
    )
    .to_string()
}

/// Issue 10, item 13 (coalescing). A burst of triggers (here 30 SIGHUPs
/// in 300 ms, as a flapping endpoint or a busy editor would cause) is served
/// by a few recompiles, not one per trigger.
#[test]
fn a_burst_of_reload_triggers_is_coalesced() {
    let (world, routerd, vip) = start(false);
    let mark = routerd.log_len();
    for _ in 0..30 {
        routerd.signal(libc::SIGHUP);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let outcomes = routerd
        .events(mark)
        .iter()
        .filter(|e| e.is_outcome())
        .count();
    assert!(
        (1..=8).contains(&outcomes),
        "30 triggers in 300 ms gave {outcomes} recompiles"
    );
    assert_eq!(only(&world, vip, 5), "e1");
}

/// SIGHUP: the reload is rejected with an error naming `file` and saying
/// `says`.
fn reload_is_rejected_saying(routerd: &Routerd, file: &str, says: &str) {
    let r = routerd.reload().unwrap();
    assert!(
        r.errors()
            .iter()
            .any(|l| l.contains(file) && l.contains(says)),
        "expected an error naming {file} and saying {says:?}: {r:?}"
    );
}

/// Issue 10, item 11. Whoever can write the config steers every connection
/// of the cgroup: files and directories that users other than root could
/// write are refused (unless allowed explicitly); a FIFO among the files
/// never hangs the daemon; an oversized file is refused without being read.
/// Each is reported with the file, and the last good config keeps serving.
#[test]
fn the_config_must_be_root_owned_regular_and_bounded() {
    use std::os::unix::fs::PermissionsExt;
    let (world, routerd, vip) = start(false);
    let cfg = world.dir.path.join("config");
    let file = cfg.join("web.yaml");
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // A file anyone can write.
    chmod(&file, 0o666);
    reload_is_rejected_saying(&routerd, "web.yaml", "writable by everyone");
    assert_eq!(only(&world, vip, 3), "e1", "the last good config serves");
    chmod(&file, 0o644);
    // A directory its group can write.
    chmod(&cfg, 0o775);
    assert!(routerd.reload().unwrap().is_rejected());
    chmod(&cfg, 0o755);
    // A FIFO named like a config file: reported, never opened.
    let fifo = cfg.join("fifo.yaml");
    run(std::process::Command::new("mkfifo").arg(&fifo)).unwrap();
    let t = std::time::Instant::now();
    reload_is_rejected_saying(&routerd, "fifo.yaml", "not a regular file");
    assert!(t.elapsed() < std::time::Duration::from_secs(3));
    std::fs::remove_file(&fifo).unwrap();
    // An oversized file.
    let big = cfg.join("big.yaml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(router_user::config::load::MAX_FILE_BYTES + 1)
        .unwrap();
    reload_is_rejected_saying(&routerd, "big.yaml", "MiB");
    std::fs::remove_file(&big).unwrap();
    let r = routerd.reload().unwrap();
    assert!(r.is_no_change(), "{r}");

    // The same config, not root's: refused at start, unless allowed.
    let mut other = Routerd::new(
        &format!("{}u", world.tag),
        &cfg,
        &world.cgroup.path,
        &["--no-watch", "--no-dns"],
    );
    std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
    let err = other.spawn().unwrap_err();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        other
            .logs()
            .iter()
            .any(|l| l.contains("owned by uid 65534")),
        "{err:#}: {:?}",
        other.logs()
    );
    other.args.push("--allow-untrusted-config".into());
    other.spawn().unwrap();
}
