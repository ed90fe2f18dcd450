//! Workloads: pods in network namespaces of their own, each in its own child
//! cgroup, handed to routerd through the workloads directory (by `routerd
//! workload add` and by a CNI-style script writing the record itself).
//! routerd opens DNS and L7 listeners inside each pod's namespace; the
//! kernel picks them by the caller's namespace cookie.

use std::process::Command;

use router_tests::*;
use router_user::events::Event;

const RESOLVER: &str = "10.53.0.1";

fn config() -> String {
    Config::new()
        .node("c1", "east", "e1")
        .with(Service::new("c1", "api").named_port("http", 8080, "TCP"))
        .with(
            Slice::new("c1", "api", "api")
                .named_port("http", 8080, "TCP")
                .endpoint("10.1.0.1", "e1"),
        )
        .with(l7_table(
            "shop",
            "shop.t.mesh",
            "/api",
            Dest::service("api").port(8080),
        ))
        .yaml()
}

/// A table for `host` whose one route sends requests under `prefix` to
/// `dest` (a path matcher: the L7 proxy serves it).
fn l7_table(name: &str, host: &str, prefix: &str, dest: Dest) -> RouteTable {
    RouteTable::new(name).host(host).http(
        HttpRoute::new()
            .name(prefix.trim_start_matches('/'))
            .prefix(prefix)
            .to(&[dest]),
    )
}

/// routerd's open descriptors and threads.
fn fds_threads(d: &Routerd) -> (usize, usize) {
    let pid = d.pid().unwrap();
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .unwrap()
            .count()
    };
    (count("fd"), count("task"))
}

fn status(dig_output: &str) -> String {
    dig_output
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// The pod answers virtual names itself and reaches the L7 host by name.
fn assert_served(pod: &PodNs) {
    let dig = pod.dig("shop.t.mesh");
    assert_eq!(status(&dig), "NOERROR", "{}: {dig}", pod.name);
    assert!(
        dig.contains("240.240."),
        "{}: shop.t.mesh answered with its VIP by the pod's own listener: {dig}",
        pod.name
    );
    let (code, body) = pod.get("http://shop.t.mesh:8080/api/x");
    assert_eq!(code, 200, "{}: {body}", pod.name);
    let a: Answer = serde_json::from_str(&body).unwrap();
    assert_eq!((a.id.as_str(), a.path.as_str()), ("v1", "/api/x"));
}

fn routerd_cli(d: &Routerd, args: &[&str]) -> String {
    run(Command::new(bin("routerd"))
        .args(args)
        .args(["--state-dir", &d.state_dir.display().to_string()]))
    .unwrap()
}

/// `routerd workload add` for pod `p` in namespace `t`, with `extra`
/// arguments: what it printed.
fn add_workload(d: &Routerd, p: &PodNs, extra: &[&str]) -> String {
    let netns = p.netns();
    let mut args = vec![
        "workload",
        "add",
        "--namespace",
        "t",
        "--name",
        &p.name,
        "--netns",
        &netns,
    ];
    args.extend_from_slice(extra);
    routerd_cli(d, &args)
}

fn served(d: &Routerd, from: usize, pod: &str) -> Event {
    d.wait_event(
        from,
        |e| matches!(e, Event::WorkloadServed { workload, .. } if workload == &format!("t/{pod}")),
    )
    .unwrap()
}

#[test]
fn pods_in_their_own_namespaces_get_dns_and_l7_listeners_of_their_own() {
    require_root();
    let world = World::new(&[Listen::tcp("10.1.0.1:8080", "v1")]).unwrap();
    let _dnsmasq = world.dnsmasq(RESOLVER, &[]).unwrap();
    world.resolv_conf(RESOLVER).unwrap();
    world.dir.write("config/all.yaml", &config()).unwrap();
    let pods: Vec<PodNs> = (1..=3).map(|n| world.pod(n, RESOLVER).unwrap()).collect();
    let mut d = Routerd::start(
        &world.tag,
        &world.dir.path.join("config"),
        &world.cgroup.path,
        &[],
    )
    .unwrap();
    // Nothing handed over yet: the pods' port-53 traffic goes to the real
    // resolver (which does not know the name) and the L7 VIP is refused.
    assert_eq!(status(&pods[0].dig("shop.t.mesh")), "NXDOMAIN");

    // Two pods by the CLI, one by a record written as a CNI script would.
    let from = d.log_len();
    for p in &pods[..2] {
        let cgroup = p.cgroup.path.display().to_string();
        let out = add_workload(&d, p, &["--cgroup", &cgroup]);
        assert!(out.contains("handed to routerd"), "{out}");
    }
    let dir = d.state_dir.join("workloads");
    // The shipped CNI plugin, run as a container runtime runs a chained
    // plugin: it passes the previous plugin's result on.
    let conf = r#"{"cniVersion": "1.0.0", "name": "pods", "type": "routerd-workload", "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.255.254.9/30"}]}}"#;
    let cni = |command: &str| {
        let mut c = Command::new(cni_plugin())
            .env("CNI_COMMAND", command)
            .env("CNI_NETNS", pods[2].netns())
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=t;K8S_POD_NAME=pod3",
            )
            .env("ROUTERD_WORKLOADS_DIR", &dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        c.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "CNI {command}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let result = cni("ADD");
    assert!(
        result.contains("10.255.254.9/30"),
        "the previous result passes on: {result}"
    );
    // A record whose namespace does not exist: reported, the others unharmed.
    std::fs::write(
        dir.join("t_ghost.json"),
        serde_json::json!({"namespace": "t", "name": "ghost", "netns": "/var/run/netns/no-such-ns"})
            .to_string(),
    )
    .unwrap();
    let mut cookies = Vec::new();
    for p in &pods {
        match served(&d, from, &p.name) {
            Event::WorkloadServed {
                netns_cookie,
                listeners,
                ..
            } => {
                assert!(
                    listeners.iter().any(|l| l.starts_with("dns:"))
                        && listeners.iter().any(|l| l.starts_with("proxy:")),
                    "{listeners:?}"
                );
                cookies.push(netns_cookie);
            }
            e => panic!("{e:?}"),
        }
    }
    cookies.sort();
    cookies.dedup();
    assert_eq!(cookies.len(), 3, "one namespace (cookie) per pod");
    let failed = d
        .wait_event(
            from,
            |e| matches!(e, Event::WorkloadFailed { workload, .. } if workload == "t/ghost"),
        )
        .unwrap();
    assert!(format!("{failed:?}").contains("no-such-ns"), "{failed:?}");
    for p in &pods {
        assert_served(p);
        let ss = p.listening();
        assert!(
            ss.contains("127.0.0.153:53") && ss.contains("127.0.0.1:1000"),
            "{}: routerd's listeners are inside the pod: {ss}",
            p.name
        );
    }
    let list = routerd_cli(&d, &["workload", "list"]);
    assert!(
        list.contains("t/pod1") && list.contains("t/pod3") && list.contains("served (netns cookie"),
        "{list}"
    );
    assert!(list.contains("t/ghost"), "{list}");
    std::fs::remove_file(dir.join("t_ghost.json")).unwrap();

    // One pod goes away: its listeners close, its namespace is no longer
    // served; the others are untouched.
    let from = d.log_len();
    routerd_cli(
        &d,
        &["workload", "remove", "--namespace", "t", "--name", "pod2"],
    );
    d.wait_event(
        from,
        |e| matches!(e, Event::WorkloadForgotten { workload } if workload == "t/pod2"),
    )
    .unwrap();
    let ss = pods[1].listening();
    assert!(
        !ss.contains(":53 ") && !ss.contains(":1000 "),
        "pod2's listeners are closed: {ss}"
    );
    assert_eq!(status(&pods[1].dig("shop.t.mesh")), "NXDOMAIN");
    let shop = vip(
        &plan(&world.dir.path.join("config")).unwrap(),
        "shop.t.mesh",
        8080,
        false,
    );
    let (code, _) = pods[1].get(&format!("http://{shop}/api/x"));
    assert_eq!(
        code, 0,
        "no proxy in pod2 any more: its L7 VIPs are refused"
    );
    assert_served(&pods[0]);
    assert_served(&pods[2]);

    // Pods leave and come back twice: what routerd holds after they left
    // is the same each time (no descriptor, no thread left behind; the
    // proxy's pooled connections to endpoints stay as they were).
    let leave_and_return = || {
        let from = d.log_len();
        for p in [&pods[0], &pods[2]] {
            std::fs::rename(
                dir.join(format!("t_{}.json", p.name)),
                d.state_dir.join(&p.name),
            )
            .unwrap();
        }
        for p in [&pods[0], &pods[2]] {
            let want = format!("t/{}", p.name);
            d.wait_event(
                from,
                |e| matches!(e, Event::WorkloadForgotten { workload } if *workload == want),
            )
            .unwrap();
        }
        // The listeners' tasks end as they are aborted: let them.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let gone = fds_threads(&d);
        let from = d.log_len();
        for p in [&pods[0], &pods[2]] {
            std::fs::rename(
                d.state_dir.join(&p.name),
                dir.join(format!("t_{}.json", p.name)),
            )
            .unwrap();
            served(&d, from, &p.name);
        }
        gone
    };
    let first = leave_and_return();
    let second = leave_and_return();
    assert_eq!(
        first, second,
        "(descriptors, threads) with every pod gone, twice"
    );
    assert_served(&pods[0]);

    // A restart keeps the pods it was handed: their listeners open again.
    d.terminate().unwrap();
    let from = d.log_len();
    d.spawn().unwrap();
    for p in [&pods[0], &pods[2]] {
        served(&d, from, &p.name);
        assert_served(p);
    }
    // The CNI plugin's CHECK and DEL: the record is there, then gone.
    cni("CHECK");
    let from = d.log_len();
    cni("DEL");
    d.wait_event(
        from,
        |e| matches!(e, Event::WorkloadForgotten { workload } if workload == "t/pod3"),
    )
    .unwrap();
    d.stop().unwrap();
    std::fs::remove_dir_all(d.state_dir.join("workloads")).unwrap();
    for p in &pods {
        let ss = p.listening();
        assert!(!ss.contains(":53 ") && !ss.contains(":1000 "), "{ss}");
    }
}

/// Three pods labelled app=a, b and c (`pod3`'s label given): `shop` for
/// every caller (v1), `shop-b` for app=b (v2, the same host name), and
/// `secret`, an L4 host for app=a only.
/// pod1's address (`World::pod(1)`: `other_node(1)`'s).
const POD1_IP: &str = "10.255.254.5";
/// pod2's address.
const POD2_IP: &str = "10.255.254.9";

fn scoped_config(pod3_app: &str) -> String {
    let api = |v: &str| Dest::service("api").port(8080).subset("version", v);
    let mut c = Config::new()
        .node("c1", "east", "e1")
        .with(Service::new("c1", "api").named_port("http", 8080, "TCP"));
    for (v, ip) in [("v1", "10.1.0.1"), ("v2", "10.1.0.2")] {
        c = c.with(
            Slice::new("c1", "api", &format!("api-{v}"))
                .label("version", v)
                .named_port("http", 8080, "TCP")
                .endpoint(ip, "e1"),
        );
    }
    let l7 = |name: &str, v: &str| l7_table(name, "shop.t.mesh", "/api", api(v));
    // `peer`: one endpoint is pod1 itself (its address, World::pod(1)), the
    // other in the world.
    c = c
        .with(Service::new("c1", "peer").named_port("http", 8080, "TCP"))
        .with(
            Slice::new("c1", "peer", "peer")
                .named_port("http", 8080, "TCP")
                .endpoint(POD1_IP, "e1")
                .endpoint("10.1.0.3", "e1"),
        )
        .with(
            RouteTable::new("peer")
                .host("peer.t.mesh")
                .tcp(TcpRoute::new().to(&[Dest::service("peer").port(8080)])),
        )
        .with(l7_table(
            "peer7",
            "peer7.t.mesh",
            "/x",
            Dest::service("peer").port(8080),
        ));
    c.with(Pod::new("pod1").label("app", "a").ip(POD1_IP))
        .with(Pod::new("pod2").label("app", "b"))
        .with(Pod::new("pod3").label("app", pod3_app))
        .with(l7("shop", "v1"))
        .with(l7("shop-b", "v2").for_workloads(&[("app", "b")]))
        // A gateway pod: the listener opens inside the app=b pods.
        .with(
            Gateway::new("gw")
                .http(8088, "*.gw.test")
                .for_workloads(&[("app", "b")]),
        )
        .with(
            RouteTable::new("gw-shop")
                .host("shop.gw.test")
                .gateway("gw")
                .http(HttpRoute::new().name("api").prefix("/api").to(&[api("v1")])),
        )
        .with(
            RouteTable::new("secret")
                .host("secret.t.mesh")
                .for_workloads(&[("app", "a")])
                .tcp(TcpRoute::new().to(&[api("v1")])),
        )
        .yaml()
}

/// Which backend answered `url` in `pod` ("" when the connection failed).
fn who(pod: &PodNs, url: &str) -> String {
    let (code, body) = pod.get(url);
    if code == 0 {
        return String::new();
    }
    serde_json::from_str::<Answer>(&body)
        .map(|a| a.id)
        .unwrap_or_else(|e| panic!("{}: {url}: {e}: {body}", pod.name))
}

#[test]
fn workload_selectors_decide_what_each_pod_sees() {
    require_root();
    let world = World::new(&[
        Listen::tcp("10.1.0.1:8080", "v1"),
        Listen::tcp("10.1.0.2:8080", "v2"),
        Listen::tcp("10.1.0.3:8080", "far"),
    ])
    .unwrap();
    let _dnsmasq = world.dnsmasq(RESOLVER, &[]).unwrap();
    world.resolv_conf(RESOLVER).unwrap();
    let cfg_dir = world.dir.path.join("config");
    world
        .dir
        .write("config/all.yaml", &scoped_config("c"))
        .unwrap();
    let pods: Vec<PodNs> = (1..=3).map(|n| world.pod(n, RESOLVER).unwrap()).collect();
    let mut d = Routerd::start(&world.tag, &cfg_dir, &world.cgroup.path, &[]).unwrap();
    let from = d.log_len();
    for p in &pods {
        add_workload(&d, p, &[]);
    }
    for p in &pods {
        served(&d, from, &p.name);
    }
    let plan = plan(&cfg_dir).unwrap();
    // Only workloads see it: `vip` (as a caller that is no workload sees
    // the name) knows nothing of it.
    let secret = std::net::SocketAddr::new(plan.hosts_named("secret.t.mesh")[0].vip4.into(), 8080);
    let shop_url = "http://shop.t.mesh:8080/api/x";

    // One name, two tables: pod2 (app=b) gets shop-b's, the others shop's.
    assert_eq!(who(&pods[0], shop_url), "v1");
    assert_eq!(who(&pods[1], shop_url), "v2");
    assert_eq!(who(&pods[2], shop_url), "v1");
    // The node itself (no workload) gets the table for every caller.
    let (code, body, ..) = curl(&world, &[shop_url], true);
    assert_eq!(
        (
            code,
            serde_json::from_str::<Answer>(&body).unwrap().id.as_str()
        ),
        (200, "v1")
    );

    // secret.t.mesh exists for pod1 only: by name and by VIP (L4, kernel).
    assert!(
        pods[0]
            .dig("secret.t.mesh")
            .contains(&secret.ip().to_string())
    );
    assert_eq!(who(&pods[0], "http://secret.t.mesh:8080/x"), "v1");
    for p in &pods[1..] {
        assert_eq!(status(&p.dig("secret.t.mesh")), "NXDOMAIN", "{}", p.name);
        let (code, _) = p.get(&format!("http://{secret}/x"));
        assert_eq!(code, 0, "{}: the scoped VIP is refused", p.name);
    }
    let (code, ..) = curl(&world, &[&format!("http://{secret}/x")], true);
    assert_eq!(code, 0, "the node is no workload: refused");

    // pod1's own address is one of peer's two endpoints: pod1 is never sent
    // to itself, pod2 gets both.
    // (pod2 reaches pod1 through the world, which routes between them.)
    world.world.sysctl("net.ipv4.ip_forward=1").unwrap();
    let _self_backend = world
        .spawn_backend_in(
            &pods[0].ns,
            &[Listen::tcp(&format!("{POD1_IP}:8080"), "self")],
            &[],
        )
        .unwrap();
    let peer = vip(&plan, "peer.t.mesh", 8080, false).to_string();
    let answers = |p: &PodNs, count: u32| {
        let out = run(p
            .cmd(bin("rt-probe"))
            .args(["tcp", &peer, "--count", &count.to_string()]))
        .unwrap();
        tally(&parse_probes(&out).unwrap())
    };
    // Many connects: with random probes only, one in 512 went to pod1
    // itself (every probe found its own slot), which 600 would show more
    // often than not.
    let from_pod1 = answers(&pods[0], 600);
    assert_eq!(
        from_pod1.keys().collect::<Vec<_>>(),
        ["far"],
        "pod1 is not its own peer: {from_pod1:?}"
    );
    let from_pod2 = answers(&pods[1], 40);
    assert!(
        from_pod2.contains_key("self") && from_pod2.contains_key("far"),
        "{from_pod2:?}"
    );
    // The same through the L7 proxy (pod1's own listener picks per request).
    assert!(
        plan.l7.iter().any(|l| l.host == "peer7.t.mesh"),
        "peer7 is an L7 host"
    );
    let l7: Vec<String> = (0..12)
        .map(|_| who(&pods[0], "http://peer7.t.mesh:8080/x"))
        .collect();
    assert!(l7.iter().all(|w| w == "far"), "pod1 through L7: {l7:?}");
    let l7: Vec<String> = (0..12)
        .map(|_| who(&pods[1], "http://peer7.t.mesh:8080/x"))
        .collect();
    assert!(
        l7.iter().any(|w| w == "self"),
        "pod2 through L7 reaches pod1: {l7:?}"
    );

    // The VirtualGateway's listener is inside pod2 (app=b), reached on its
    // address; not in pod1, not in the daemon's namespace.
    assert!(
        pods[1].listening().contains("0.0.0.0:8088"),
        "{}",
        pods[1].listening()
    );
    assert!(!pods[0].listening().contains(":8088"));
    let node_ss =
        run(Command::new("ip").args(["netns", "exec", &world.node.name, "ss", "-Hltn"])).unwrap();
    assert!(!node_ss.contains(":8088"), "{node_ss}");
    let gw = run(Command::new("ip")
        .args([
            "netns",
            "exec",
            &world.world.name,
            "curl",
            "-sS",
            "--max-time",
            "5",
        ])
        .args([
            "-H",
            "Host: shop.gw.test",
            &format!("http://{POD2_IP}:8088/api/x"),
        ]))
    .unwrap();
    assert_eq!(
        serde_json::from_str::<Answer>(&gw).unwrap().id,
        "v1",
        "{gw}"
    );

    // What explain says each sees.
    let explain = |w: &str| {
        Command::new(bin("routerd"))
            .args([
                "explain",
                "shop.t.mesh",
                "--workload",
                w,
                "--files",
                "--config",
            ])
            .arg(&cfg_dir)
            .output()
            .unwrap()
    };
    let out = String::from_utf8_lossy(&explain("t/pod2").stdout).into_owned();
    assert!(out.contains("RouteTable t/shop-b"), "{out}");
    let out = String::from_utf8_lossy(&explain("t/pod1").stdout).into_owned();
    assert!(
        out.contains("RouteTable t/shop ") && out.contains("the table for every caller"),
        "{out}"
    );

    // pod3's labels change in the inventory: it now sees shop-b's table.
    let from = d.log_len();
    world
        .dir
        .write("config/all.yaml", &scoped_config("b"))
        .unwrap();
    assert!(d.wait_outcome(from).unwrap().is_applied());
    assert_eq!(who(&pods[2], shop_url), "v2");
    assert_eq!(who(&pods[0], shop_url), "v1");
    assert!(
        pods[2].listening().contains("0.0.0.0:8088"),
        "the gateway opened in pod3 too"
    );

    // A restart keeps the scoped VIPs working for the pods (L4) while the
    // daemon is away, and serves them again.
    d.kill9();
    assert_eq!(who(&pods[0], &format!("http://{secret}/x")), "v1");
    let (code, _) = pods[1].get(&format!("http://{secret}/x"));
    assert_eq!(code, 0);
    // pod2 goes away while no daemon runs: the next one serves the others
    // and drops pod2's listener entry (its DNS is no longer captured to a
    // listener nobody holds: the real resolver answers).
    std::fs::remove_file(d.state_dir.join("workloads/t_pod2.json")).unwrap();
    d.spawn().unwrap();
    assert_eq!(who(&pods[0], "http://secret.t.mesh:8080/x"), "v1");
    assert_eq!(who(&pods[2], shop_url), "v2");
    assert_eq!(status(&pods[1].dig("shop.t.mesh")), "NXDOMAIN");
    d.stop().unwrap();
}
