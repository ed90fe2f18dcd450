//! The daemon's life: reloads (SIGHUP and file changes), bad configs, kill -9
//! and restart with adoption of the pinned datapath.
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use router_tests::{yaml, *};

/// `web` with endpoints in the node's zone (e1), another zone (e2) and
/// another region; `ready_e1` says whether the node's zone has ready ones.
fn config(ready_e1: bool) -> String {
    let mut y = yaml::router("c1", "east", "e1", "");
    y += &yaml::web(
        "c1",
        "east",
        "web-1",
        &[("10.1.0.1", "e1", ready_e1), ("10.1.1.1", "e2", true)],
    );
    y += &yaml::web("c2", "west", "web-2", &[("10.2.0.1", "w1", true)]);
    y += &yaml::vd("web", "web.t.mesh", "web", 8080, "HTTP", "lb: local");
    y += &yaml::outlier();
    y
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

fn only(world: &World, vip: std::net::SocketAddr, n: usize) -> String {
    let t = tally(
        &world
            .probe(&["tcp", &vip.to_string(), "--count", &n.to_string()])
            .unwrap(),
    );
    assert_eq!(t.len(), 1, "expected one backend: {t:?}");
    t.into_keys().next().unwrap()
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
    assert!(outcome.contains("applied"), "{outcome}");
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
    let gen_line = |l: &str| {
        l.split("generation=")
            .nth(1)
            .and_then(|x| x.split_whitespace().next())
            .map(str::to_string)
    };
    let before = routerd
        .logs()
        .iter()
        .rev()
        .find_map(|l| gen_line(l))
        .unwrap();
    for bad in [
        "kind: RouteTable\nspec: [\n", // malformed YAML
        "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: x, namespace: t}\nspec:\n  hostz: [a]\n", // unknown field
        "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: x, namespace: t}\nspec:\n  hosts: [x.t.mesh]\n  tcp:\n  - forwardTo: {destinations: [{ref: {name: nope}}]}\n", // dangling
    ] {
        world.dir.write("config/bad.yaml", bad).unwrap();
        let outcome = routerd.reload().unwrap();
        assert!(outcome.contains("reload rejected"), "{outcome}");
        let logs = routerd.logs().join("\n");
        assert!(
            logs.contains("bad.yaml:"),
            "the error names the file and line:\n{logs}"
        );
        assert_eq!(
            only(&world, vip, 5),
            "e1",
            "still serving the last good config"
        );
    }
    let after = routerd
        .logs()
        .iter()
        .rev()
        .find_map(|l| gen_line(l))
        .unwrap();
    assert_eq!(before, after, "nothing was applied");
    std::fs::remove_file(world.dir.path.join("config/bad.yaml")).unwrap();
    assert!(routerd.reload().unwrap().contains("no change"));
}

#[test]
fn a_file_change_is_picked_up_without_a_signal() {
    let (world, routerd, vip) = start(true);
    assert_eq!(only(&world, vip, 5), "e1");
    let mark = routerd.log_len();
    world.dir.write("config/web.yaml", &config(false)).unwrap();
    routerd.wait_for(mark, |l| l.contains("applied")).unwrap();
    assert_eq!(only(&world, vip, 10), "e2");
}

#[test]
fn kill_9_does_not_stop_routing_and_a_restart_adopts_the_maps() {
    let (world, mut routerd, vip) = start(false);
    assert_eq!(only(&world, vip, 5), "e1");
    let counted = |r: &Routerd| -> u64 {
        let j = r.inspect().unwrap();
        j["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vip"] == vip.to_string())
            .unwrap()["connects"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(counted(&routerd), 5);
    routerd.kill9();
    // Routing goes on with nobody home.
    assert_eq!(only(&world, vip, 10), "e1");
    assert_eq!(counted(&routerd), 15, "the kernel kept counting");
    // A new daemon adopts what is pinned: no flush (counters kept), no gap.
    let mark = routerd.log_len();
    routerd.spawn().unwrap();
    let logs = routerd.logs()[mark..].join("\n");
    assert!(logs.contains("adopted the pinned datapath"), "{logs}");
    assert_eq!(counted(&routerd), 15);
    assert_eq!(only(&world, vip, 5), "e1");
    // And it serves reloads as before.
    world.dir.write("config/web.yaml", &config(false)).unwrap();
    assert!(routerd.reload().unwrap().contains("applied"));
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
    let mut y = yaml::router("c1", "east", "e1", "");
    y += &yaml::web("c1", "east", "web", &[("10.1.0.1", "e1", true)]);
    y += "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: web, namespace: t}\n\
          spec:\n  hosts: [web.t.mesh]\n  http:\n  - matchers: [{uri: {prefix: /api}}]\n    \
          forwardTo: {destinations: [{ref: {name: web}, port: {number: 8080}}]}\n---\n";
    y
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
    require_root();
    let world = World::new(&[Listen::tcp("10.1.0.1:8080", "web")]).unwrap();
    world.dir.write("config/web.yaml", &l7_config()).unwrap();
    let cfg = world.dir.path.join("config");
    let plan = plan(&cfg).unwrap();
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
    let refused = routerd.inspect().unwrap()["proxy_refused"]
        .as_u64()
        .unwrap_or(0);
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
