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
        .with(
            RouteTable::new("shop").host("shop.t.mesh").http(
                HttpRoute::new()
                    .name("api")
                    .prefix("/api")
                    .to(&[Dest::service("api").port(8080)]),
            ),
        )
        .yaml()
}

/// A pod: its own namespace (routes to the world only), its own cgroup
/// under the test's, and its own resolv.conf (the test's resolver).
struct Pod {
    name: String,
    cgroup: Cgroup,
    ns: Netns,
    _etc: EtcNetns,
}

impl Pod {
    fn new(world: &World, n: u8) -> Pod {
        let ns = world.other_node(n).unwrap();
        let cgroup = Cgroup::new(&format!("{}/pod{n}", world.tag)).unwrap();
        let etc = EtcNetns(std::path::PathBuf::from("/etc/netns").join(&ns.name));
        std::fs::create_dir_all(&etc.0).unwrap();
        std::fs::write(
            etc.0.join("resolv.conf"),
            format!("nameserver {RESOLVER}\noptions timeout:1 attempts:2\n"),
        )
        .unwrap();
        Pod {
            name: format!("pod{n}"),
            cgroup,
            ns,
            _etc: etc,
        }
    }

    fn netns(&self) -> String {
        format!("/var/run/netns/{}", self.ns.name)
    }

    /// `program` run inside the pod: its namespace and its cgroup.
    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name, program]);
        self.cgroup.enter(&mut cmd);
        cmd
    }

    /// `dig +short` for `name` through the pod's resolver (captured when
    /// routerd serves the pod).
    fn dig(&self, name: &str) -> String {
        let out = self
            .cmd("dig")
            .args(["+time=1", "+tries=2", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An HTTP GET through curl: status code and body.
    fn get(&self, url: &str) -> (u16, String) {
        let out = self
            .cmd("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The TCP and UDP sockets listening in the pod's namespace.
    fn listening(&self) -> String {
        run(Command::new("ip").args(["netns", "exec", &self.ns.name, "ss", "-Hltun"])).unwrap()
    }
}

fn status(dig_output: &str) -> String {
    dig_output
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// The pod answers virtual names itself and reaches the L7 host by name.
fn assert_served(pod: &Pod) {
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
    let pods: Vec<Pod> = (1..=3).map(|n| Pod::new(&world, n)).collect();
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
        let out = routerd_cli(
            &d,
            &[
                "workload",
                "add",
                "--namespace",
                "t",
                "--name",
                &p.name,
                "--netns",
                &p.netns(),
                "--cgroup",
                &p.cgroup.path.display().to_string(),
            ],
        );
        assert!(out.contains("handed to routerd"), "{out}");
    }
    let dir = d.state_dir.join("workloads");
    let record = serde_json::json!({"namespace": "t", "name": "pod3", "netns": pods[2].netns()});
    std::fs::write(dir.join(".t_pod3.json.tmp"), record.to_string()).unwrap();
    std::fs::rename(dir.join(".t_pod3.json.tmp"), dir.join("t_pod3.json")).unwrap();
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

    // A restart keeps the pods it was handed: their listeners open again.
    d.terminate().unwrap();
    let from = d.log_len();
    d.spawn().unwrap();
    for p in [&pods[0], &pods[2]] {
        served(&d, from, &p.name);
        assert_served(p);
    }
    d.stop().unwrap();
    std::fs::remove_dir_all(d.state_dir.join("workloads")).unwrap();
    for p in &pods {
        let ss = p.listening();
        assert!(!ss.contains(":53 ") && !ss.contains(":1000 "), "{ss}");
    }
}
