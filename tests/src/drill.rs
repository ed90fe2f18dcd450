//! The drills (issue: health, failover and staying up): repeatable programs
//! that put routerd under bounded load inside test namespaces while
//! something goes wrong, and check that nothing is lost. `tests/drills.rs`
//! runs them reduced in CI; `cargo xtask drill` runs them in full and
//! writes docs/drills.md.
use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::*;

/// How hard to push.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Config reloads under churn (drill 1).
    pub reloads: usize,
    /// kill -9 and restart cycles (drill 2).
    pub restarts: usize,
    /// Hostile configs (drill 4).
    pub hostile: usize,
    /// New connections per second, in all.
    pub rate: u64,
    /// Drill 6: services churned, endpoint changes per second, seconds.
    pub churn_services: usize,
    pub churn_rate: u64,
    pub churn_secs: f64,
    /// The fleet drill: nodes, publishes measured, seconds a node is cut
    /// off from etcd, new connections per second on each loaded node.
    pub fleet_nodes: usize,
    pub fleet_publishes: usize,
    pub fleet_cut_secs: u64,
    pub fleet_rate: u64,
}

impl Scale {
    pub const CI: Scale = Scale {
        reloads: 40,
        restarts: 3,
        hostile: 60,
        rate: 400,
        churn_services: 500,
        churn_rate: 200,
        churn_secs: 5.0,
        fleet_nodes: 6,
        fleet_publishes: 10,
        fleet_cut_secs: 5,
        fleet_rate: 50,
    };
    pub const FULL: Scale = Scale {
        reloads: 300,
        restarts: 10,
        hostile: 400,
        rate: 1500,
        churn_services: 10_000,
        churn_rate: 500,
        churn_secs: 30.0,
        fleet_nodes: 20,
        fleet_publishes: 100,
        fleet_cut_secs: 30,
        fleet_rate: 100,
    };
}

/// One drill's figures, in order, for the report.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub name: &'static str,
    pub rows: Vec<(&'static str, String)>,
    /// Runs side by side (a header, then one row per run), after the rows.
    pub table: Vec<Vec<String>>,
    /// Files to write beside the report (name, content: a plot), shown
    /// after the table.
    pub files: Vec<(String, String)>,
}

impl Figures {
    pub(crate) fn new(name: &'static str) -> Self {
        Figures {
            name,
            rows: Vec::new(),
            table: Vec::new(),
            files: Vec::new(),
        }
    }
    pub(crate) fn add(&mut self, k: &'static str, v: impl ToString) {
        self.rows.push((k, v.to_string()));
    }
    fn churn(&mut self, c: &Churn) {
        self.add("connections attempted", c.attempted);
        self.add("connections failed", c.failed);
        self.add("connections misrouted", c.misrouted);
    }
}

const WEB: [(&str, &str); 2] = [("10.1.0.1", "e1"), ("10.1.1.1", "e2")];
const API: [(&str, &str); 2] = [("10.1.0.2", "a1"), ("10.1.1.2", "a2")];

/// Churn in the background: stop it to get what it saw.
pub struct Load {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Load {
    pub fn start(world: &World, targets: &[(SocketAddr, &[&str])], rate: u64) -> Result<Load> {
        Self::start_with(world, targets, rate, 4)
    }

    /// `conns` clients, each opening one connection at a time: with many
    /// (rate x the client's 3 s connect timeout), connects that hang on a
    /// blackholed endpoint do not hold the load back.
    pub fn start_with(
        world: &World,
        targets: &[(SocketAddr, &[&str])],
        rate: u64,
        conns: u64,
    ) -> Result<Load> {
        Self::start_cmd(world.client(bin("rt-probe")), targets, rate, conns)
    }

    /// The same, with `cmd` (rt-probe, in the namespace and cgroup it
    /// should run in).
    pub fn start_cmd(
        mut cmd: std::process::Command,
        targets: &[(SocketAddr, &[&str])],
        rate: u64,
        conns: u64,
    ) -> Result<Load> {
        cmd.args([
            "churn",
            "--conns",
            &conns.to_string(),
            "--rate",
            &rate.to_string(),
        ]);
        for (addr, ids) in targets {
            cmd.arg("--target").arg(format!("{addr}={}", ids.join(",")));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting rt-probe churn")?;
        let out = BufReader::new(child.stdout.take().unwrap());
        Ok(Load { child, out })
    }

    pub fn stop(mut self) -> Result<Churn> {
        self.child.stdin.as_mut().unwrap().write_all(b"stop\n")?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        self.child.wait()?;
        serde_json::from_str(line.trim()).with_context(|| format!("bad churn line {line:?}"))
    }
}

/// `web` and `api`, each on two endpoints in two zones; `variant` 1 takes
/// e1 and a2 out (not ready) and adds `extra` hosts, so every reload
/// changes slots and allocates or frees service ids. (No node: see
/// [`churn_config`].)
fn churn_world(variant: usize, extra: usize) -> Config {
    let mut c = Config::new();
    for (svc, eps) in [("web", WEB), ("api", API)] {
        let ready = |id: &str| variant.is_multiple_of(2) || (id != "e1" && id != "a2");
        let list: Vec<Ep<'_>> = eps
            .iter()
            .map(|(a, id)| {
                let zone = if *id == "e1" || *id == "a1" {
                    "e1"
                } else {
                    "e2"
                };
                (*a, zone, ready(id))
            })
            .collect();
        c = c
            .with(service_with_slice("c1", "east", svc, svc, 8080, &list))
            .with(
                VirtualDestination::new(svc, &format!("{svc}.t.mesh"))
                    .app(svc)
                    .port(8080, "HTTP")
                    .label("lb", "local"),
            );
    }
    if !variant.is_multiple_of(2) {
        for i in 0..extra {
            c = c.with(
                VirtualDestination::new(&format!("x{i}"), &format!("x{i}.t.mesh"))
                    .app("api")
                    .port(8080, "HTTP"),
            );
        }
    }
    c.with(locality_policy())
}

/// The churn world on a node in c1, east, e1.
fn churn_config(variant: usize, extra: usize) -> String {
    Config::new()
        .node("c1", "east", "e1")
        .with(churn_world(variant, extra))
        .yaml()
}

struct Drill {
    world: World,
    routerd: Routerd,
    web: SocketAddr,
    api: SocketAddr,
    cfg: std::path::PathBuf,
}

fn listens() -> Vec<Listen> {
    WEB.iter()
        .chain(API.iter())
        .map(|(a, id)| Listen::tcp(&format!("{a}:8080"), id))
        .collect()
}

impl Drill {
    fn start(config: &str, extra: &[&str]) -> Result<Drill> {
        let world = World::new(&listens())?;
        world.dir.write("config/mesh.yaml", config)?;
        let cfg = world.dir.path.join("config");
        let plan = plan(&cfg)?;
        let web = vip(&plan, "web.t.mesh", 8080, false);
        let api = vip(&plan, "api.t.mesh", 8080, false);
        let mut args = vec!["--no-watch"];
        args.extend_from_slice(extra);
        let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &args)?;
        Ok(Drill {
            world,
            routerd,
            web,
            api,
            cfg,
        })
    }

    fn load(&self, rate: u64) -> Result<Load> {
        Load::start(
            &self.world,
            &[(self.web, &["e1", "e2"]), (self.api, &["a1", "a2"])],
            rate,
        )
    }

    fn generation(&self) -> Result<u64> {
        Ok(self.routerd.inspect()?.generation)
    }
}

fn clean(c: &Churn, what: &str) -> Result<()> {
    ensure!(c.attempted > 0, "{what}: no connections were attempted");
    ensure!(
        c.failed == 0 && c.misrouted == 0,
        "{what}: {} of {} connections failed and {} were misrouted: {:?}",
        c.failed,
        c.attempted,
        c.misrouted,
        c.samples
    );
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

pub(crate) fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Drill 1: reload the config many times under connection churn.
pub fn reload_churn(s: Scale) -> Result<Figures> {
    let d = Drill::start(&churn_config(0, 0), &[])?;
    let load = d.load(s.rate)?;
    let mut took = Vec::new();
    for i in 1..=s.reloads {
        d.world
            .dir
            .write("config/mesh.yaml", &churn_config(i, 50))?;
        let t = Instant::now();
        let outcome = d.routerd.reload()?;
        ensure!(
            matches!(outcome, Event::Applied { .. }),
            "reload {i} was not applied: {outcome}"
        );
        took.push(t.elapsed().as_secs_f64() * 1e3);
        // A reload takes a few ms; let connections flow between them, so
        // that the churn runs through every generation.
        std::thread::sleep(Duration::from_millis(30));
    }
    let c = load.stop()?;
    let mut f = Figures::new("1. config reloaded under connection churn");
    f.add(
        "reloads (each changes slots, adds or removes 50 hosts)",
        s.reloads,
    );
    f.churn(&c);
    f.add(
        "reload, signal to applied: p50 / max (ms)",
        format!(
            "{:.0} / {:.0}",
            percentile(took.clone(), 0.5),
            percentile(took, 1.0)
        ),
    );
    clean(&c, "reload churn")?;
    Ok(f)
}

/// Drill 2: kill -9 the daemon under load, and restart it, several times.
pub fn kill_restart(s: Scale) -> Result<Figures> {
    let mut d = Drill::start(&churn_config(0, 0), &[])?;
    let load = d.load(s.rate)?;
    let mut ready = Vec::new();
    for _ in 0..s.restarts {
        std::thread::sleep(Duration::from_millis(300));
        d.routerd.kill9();
        // Nobody home: the pinned datapath keeps routing.
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        d.routerd.spawn()?;
        ready.push(t.elapsed().as_secs_f64() * 1e3);
    }
    std::thread::sleep(Duration::from_millis(300));
    let c = load.stop()?;
    let mut f = Figures::new("2. kill -9 and restart of routerd under load");
    f.add(
        "kill -9 + restart cycles (0.5 s with no daemon each)",
        s.restarts,
    );
    f.churn(&c);
    f.add(
        "restart to ready, adopting the pinned maps: p50 (ms)",
        format!("{:.0}", percentile(ready, 0.5)),
    );
    clean(&c, "kill -9 and restart")?;
    Ok(f)
}

/// How the closest endpoint goes away in drill 3.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Its process dies: the kernel answers SYNs to it with resets.
    Killed,
    /// Every packet to it is dropped (iptables in the backends' namespace):
    /// SYNs go unanswered.
    Blackholed,
}

/// What one failover run saw.
struct FailoverRun {
    load: Churn,
    /// From the loss to the last failed connection.
    failover_ms: u64,
}

/// One run of drill 3: `web` on e1 (the node's zone) and e2 (the next),
/// active checks, and with `kernel` an OutlierDetectionPolicy (the kernel
/// watches handshakes), with `syn_timeout` the node's
/// `synRetransmitTimeout`; e1 is lost under load.
fn failover_once(
    s: Scale,
    loss: Loss,
    kernel: bool,
    syn_timeout: Option<&str>,
    hc: &Policy,
) -> Result<FailoverRun> {
    // e1 runs in its own process so it can die alone.
    let mut world = World::new(&[])?;
    for (a, _) in WEB {
        world
            .world
            .ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
    }
    world.start_backends(&[Listen::tcp("10.1.1.1:8080", "e2")])?;
    let e1 = world.spawn_backend(&[Listen::tcp("10.1.0.1:8080", "e1")], &[])?;
    let node = match syn_timeout {
        Some(t) => json!({ "synRetransmitTimeout": t }),
        None => json!({}),
    };
    let y = Config::new()
        .node_with("c1", "east", "e1", node)
        .with(service_with_slice(
            "c1",
            "east",
            "web",
            "web",
            8080,
            &[("10.1.0.1", "e1", true), ("10.1.1.1", "e2", true)],
        ))
        .with(
            VirtualDestination::new("web", "web.t.mesh")
                .app("web")
                .port(8080, "HTTP")
                .label("lb", "local"),
        )
        .with(hc.clone())
        // Locality failover needs an OutlierDetectionPolicy (as in Gloo);
        // with 0 errors it ejects nothing, and the kernel watches nothing.
        .with(
            Policy::outlier_detection(
                "od",
                json!({"consecutiveErrors": if kernel { KERNEL_THRESHOLD } else { 0 },
                       "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 50}),
            )
            .virtual_destinations_labelled("lb", "local"),
        );
    world.dir.write("config/web.yaml", &y.yaml())?;
    let cfg = world.dir.path.join("config");
    let web = vip(&plan(&cfg)?, "web.t.mesh", 8080, false);
    let _routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"])?;
    let load = Load::start_with(&world, &[(web, &["e1", "e2"])], s.rate, s.rate * 3)?;
    std::thread::sleep(Duration::from_millis(1000));
    let lost = epoch_ms();
    let _e1 = match loss {
        Loss::Killed => {
            drop(e1);
            None
        }
        Loss::Blackholed => {
            run(Command::new("ip").args([
                "netns",
                "exec",
                &world.world.name,
                "iptables",
                "-I",
                "INPUT",
                "-d",
                "10.1.0.1",
                "-j",
                "DROP",
            ]))
            .context("dropping e1's packets with iptables")?;
            Some(e1)
        }
    };
    std::thread::sleep(Duration::from_millis(3000));
    let c = load.stop()?;
    ensure!(c.misrouted == 0, "misrouted connections: {:?}", c.samples);
    ensure!(
        c.by_id.get("e1").copied().unwrap_or(0) > 0,
        "e1 never took traffic before it was lost"
    );
    // Afterwards: nothing fails, all on e2.
    let after = Load::start(&world, &[(web, &["e2"])], s.rate)?;
    std::thread::sleep(Duration::from_millis(500));
    clean(&after.stop()?, "after failover")?;
    Ok(FailoverRun {
        failover_ms: c.last_failure_ms.map_or(0, |l| l.saturating_sub(lost)),
        load: c,
    })
}

/// Failed handshakes in a row after which the kernel ejects (drill 3).
const KERNEL_THRESHOLD: u64 = 3;

/// Drill 3: the closest endpoint dies (or is blackholed) under load; active
/// checks move traffic to the next tier within the configured bound, and
/// with outlier detection the kernel, seeing the failed handshakes, does so
/// after a few failed connections.
pub fn endpoint_failover(s: Scale) -> Result<Figures> {
    let (interval, timeout, threshold) = (200u64, 200u64, 2u64);
    let hc = Policy::active_health_check(
        "hc",
        json!({"healthCheck": {
            "interval": format!("{interval}ms"), "timeout": format!("{timeout}ms"),
            "unhealthyThreshold": threshold, "tcpHealthCheck": {}
        }}),
    )
    .virtual_destinations_labelled("lb", "local");
    let bound = interval * threshold + timeout + 500;
    let mut f = Figures::new("3. the closest endpoint lost under load");
    f.add(
        "active check (every run)",
        format!("TCP every {interval} ms, timeout {timeout} ms, unhealthy after {threshold}"),
    );
    f.add(
        "kernel signal (runs marked so)",
        format!(
            "OutlierDetectionPolicy consecutiveErrors {KERNEL_THRESHOLD} (0 in the other \
             runs): the kernel ejects after {KERNEL_THRESHOLD} failed handshakes"
        ),
    );
    f.add("load (connections/s)", s.rate);
    let killed = failover_once(s, Loss::Killed, false, None, &hc)?;
    let killed_k = failover_once(s, Loss::Killed, true, None, &hc)?;
    let holed = failover_once(s, Loss::Blackholed, false, None, &hc)?;
    let holed_k = failover_once(s, Loss::Blackholed, true, None, &hc)?;
    let holed_k100 = failover_once(s, Loss::Blackholed, true, Some("100ms"), &hc)?;
    f.add(
        "bound: interval x threshold + timeout + 500 ms recompile slack (ms)",
        bound,
    );
    f.table.push(
        [
            "e1 lost by",
            "failure signal",
            "connections attempted",
            "failed",
            "misrouted",
            "loss to the last failed connection (ms)",
        ]
        .map(String::from)
        .to_vec(),
    );
    for (loss, signal, r) in [
        ("kill (RST)", "active check only", &killed),
        ("kill (RST)", "active check + kernel", &killed_k),
        ("blackhole (drop)", "active check only", &holed),
        ("blackhole (drop)", "active check + kernel", &holed_k),
        (
            "blackhole (drop)",
            "active check + kernel, synRetransmitTimeout 100ms",
            &holed_k100,
        ),
    ] {
        f.table.push(vec![
            loss.into(),
            signal.into(),
            r.load.attempted.to_string(),
            r.load.failed.to_string(),
            r.load.misrouted.to_string(),
            r.failover_ms.to_string(),
        ]);
    }
    for (what, r) in [
        ("killed", &killed),
        ("killed (kernel signal)", &killed_k),
        ("blackholed", &holed),
        ("blackholed (kernel signal)", &holed_k),
        (
            "blackholed (kernel signal, 100 ms SYN timeout)",
            &holed_k100,
        ),
    ] {
        ensure!(
            r.failover_ms <= bound,
            "{what}: failover took {} ms, over the {bound} ms bound ({} failed)",
            r.failover_ms,
            r.load.failed
        );
    }
    // The kernel's signal: the threshold, plus the connections already on
    // their way and those the connect hook sends to the only endpoint of
    // the tier until the daemon recompiles the table (a few ms alone; tens
    // when the CI runs the drills side by side on two cores, where 14
    // failed at 400/s): at most 50 ms of the load past the threshold, and
    // a tenth of what the active check alone lets fail in the same drill.
    let most = KERNEL_THRESHOLD + s.rate / 20;
    ensure!(
        killed_k.load.failed <= most && killed_k.load.failed * 10 <= killed.load.failed,
        "with the kernel signal, {} connections failed after the kill (at most {most}, and a \
         tenth of the {} that failed with the active check alone, expected)",
        killed_k.load.failed,
        killed.load.failed
    );
    Ok(f)
}

/// A hostile variant of `good`: one random mutation (the drill keeps only
/// those that are invalid).
fn mutate(good: &str, rng: &mut fastrand::Rng) -> String {
    let lines: Vec<&str> = good.lines().collect();
    let i = rng.usize(0..lines.len());
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match rng.u8(0..10) {
        0 => {
            // Break the indentation of one line.
            out[i] = format!("   {}", out[i]);
        }
        1 => {
            // Misspell a key.
            if let Some((k, v)) = out[i].split_once(':') {
                out[i] = format!("{k}x:{v}");
            }
        }
        2 => {
            // Cut the file in the middle of a line.
            out.truncate(i + 1);
            let l = out[i].len();
            out[i].truncate(l / 2);
        }
        3 => {
            // A dangling reference.
            out[i] = out[i]
                .replace("app: web", "app: nosuch")
                .replace("name: web", "name: nosuch");
            if out[i] == lines[i] {
                out.push("---\napiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: dangling, namespace: t}\nspec:\n  hosts: [d.t.mesh]\n  http:\n  - forwardTo: {destinations: [{ref: {name: nosuch}, port: {number: 1}}]}".into());
            }
        }
        4 => {
            // Wrong types.
            out[i] = out[i].replace("8080", "eighty").replace("true", "[yes]");
            if out[i] == lines[i] {
                out.push("---\nkind: Service\napiVersion: v1\nmetadata: {name: z, namespace: t}\nspec: {ports: [{port: -1}]}".into());
            }
        }
        5 => {
            // Random bytes spliced in.
            let junk: String = (0..rng.usize(1..40)).map(|_| rng.char('!'..='~')).collect();
            out[i] = format!("{}{junk}", out[i]);
            out.push(format!("{junk}: [{{"));
        }
        6 => {
            // A conflicting duplicate: the same host on a second table.
            out.push("---\napiVersion: networking.gloo.solo.io/v2\nkind: VirtualDestination\nmetadata: {name: dup, namespace: t}\nspec:\n  hosts: [web.t.mesh]\n  services: [{labels: {app: web}}]\n  ports: [{number: 8080, protocol: HTTP}]".into());
        }
        7 => {
            // An unknown kind or apiVersion.
            out.push(format!("---\napiVersion: networking.gloo.solo.io/v{}\nkind: RouteTable\nmetadata: {{name: v, namespace: t}}\nspec: {{}}", rng.u8(3..9)));
        }
        8 => {
            // Out-of-range numbers.
            out.push(format!("---\napiVersion: resilience.policy.gloo.solo.io/v2\nkind: OutlierDetectionPolicy\nmetadata: {{name: o{i}, namespace: t}}\nspec:\n  applyToDestinations: [{{selector: {{labels: {{lb: local}}}}}}]\n  config: {{maxEjectionPercent: {}, interval: -{}s}}", rng.u32(101..100000), rng.u8(1..9)));
        }
        _ => {
            // A tab where YAML wants spaces.
            out[i] = out[i].replacen("  ", "\t", 1);
            if out[i] == lines[i] {
                out.insert(i, "\tkey: value".into());
            }
        }
    }
    out.join("\n") + "\n"
}

/// Hand-made hostile files: a YAML alias bomb, deep nesting, junk, a huge file.
fn curated() -> Vec<(&'static str, Vec<u8>)> {
    let mut bomb = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for (i, prev) in ["b", "c", "d", "e", "f", "g", "h", "i", "j"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb += &format!(
            "{}: &{} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n",
            i, i
        );
    }
    let deep = format!(
        "kind: RouteTable\nspec: {}{}\n",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let mut big = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: t}\nspec:\n  ports:\n",
    );
    while big.len() < 8 << 20 {
        big += "  - {name: p, port: 1, protocol: TCP, bogus: 1}\n";
    }
    vec![
        ("YAML alias bomb (billion laughs)", bomb.into_bytes()),
        ("20,000 nested sequences", deep.into_bytes()),
        ("binary junk", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect()),
        ("invalid UTF-8", b"kind: RouteTable\nmetadata: {name: \xff\xfe}\n".to_vec()),
        ("8 MiB of unknown fields", big.into_bytes()),
        ("duplicate keys", b"apiVersion: v1\nkind: Service\nkind: Service\nmetadata: {name: d, namespace: t}\nspec: {ports: []}\n".to_vec()),
        ("empty document list", b"---\n---\n---\n".to_vec()),
    ]
}

/// Drill 4: hundreds of malformed and hostile configs while the last good
/// one keeps serving.
pub fn hostile_configs(s: Scale) -> Result<Figures> {
    let good = churn_config(0, 0);
    let d = Drill::start(&good, &[])?;
    let gen0 = d.generation()?;
    let scratch = TempDir::new(&unique())?;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut cases: Vec<(String, Vec<u8>)> = curated()
        .into_iter()
        .map(|(n, b)| (n.to_string(), b))
        .collect();
    let mut still_valid = 0;
    while cases.len() < s.hostile {
        let text = mutate(&good, &mut rng);
        scratch.write("c/mesh.yaml", &text)?;
        if plan(&scratch.path.join("c")).is_ok() {
            still_valid += 1; // a harmless mutation: not hostile, not used
            continue;
        }
        cases.push((format!("mutation {}", cases.len()), text.into_bytes()));
    }
    let load = d.load(s.rate)?;
    let mut slowest = Duration::ZERO;
    for (name, bytes) in &cases {
        std::fs::write(d.cfg.join("mesh.yaml"), bytes)?;
        let t = Instant::now();
        let verdict = d
            .routerd
            .reload()
            .with_context(|| format!("{name}: no verdict"))?;
        slowest = slowest.max(t.elapsed());
        let Event::Rejected { errors, .. } = &verdict else {
            anyhow::bail!("{name} was not rejected: {verdict}");
        };
        ensure!(
            errors.iter().any(|l| l.contains("mesh.yaml:")),
            "{name}: the error does not name the file and line: {errors:#?}"
        );
    }
    std::fs::write(d.cfg.join("mesh.yaml"), &good)?;
    let back = d.routerd.reload()?;
    let c = load.stop()?;
    ensure!(
        d.generation()? == gen0,
        "the generation moved: something was applied"
    );
    let mut f = Figures::new("4. malformed and hostile configs");
    f.add("configs tried (7 hand-made: alias bomb, 20k-deep nesting, binary, bad UTF-8, 8 MiB, duplicate keys, empty)", cases.len());
    f.add("rejected with file:line", cases.len());
    f.add(
        "random mutations that were still valid (skipped)",
        still_valid,
    );
    f.churn(&c);
    f.add("slowest verdict (ms)", ms(slowest));
    f.add("generation before / after", format!("{gen0} / {gen0}"));
    ensure!(
        matches!(back, Event::NoChange { .. }),
        "restoring the good config: {back}"
    );
    clean(&c, "hostile configs")?;
    Ok(f)
}

/// Drill 5: configs that do not fit the maps (or the VIP or port ranges)
/// are refused whole: nothing partial, the old plan keeps serving.
pub fn size_limits(s: Scale) -> Result<Figures> {
    let good = churn_config(0, 0);
    let d = Drill::start(&good, &["--max-services", "64", "--max-backends", "64"])?;
    let gen0 = d.generation()?;
    let services0 = d.routerd.inspect()?.services.len();
    let load = d.load(s.rate)?;
    let mut f = Figures::new("5. maps near their size limits");
    let many_hosts = churn_config(1, 70);
    let eps: Vec<String> = (0..70).map(|i| format!("10.3.0.{}", i + 1)).collect();
    let list: Vec<Ep<'_>> = eps.iter().map(|a| (a.as_str(), "e1", true)).collect();
    let many_eps = Config::new()
        .node("c1", "east", "e1")
        .with(churn_world(0, 0))
        .with(service_with_slice(
            "c1", "east", "wide", "wide", 8080, &list,
        ))
        .with(
            VirtualDestination::new("wide", "wide.t.mesh")
                .app("wide")
                .port(8080, "HTTP"),
        )
        .yaml();
    let tiny_vips = Config::new()
        .node_with(
            "c1",
            "east",
            "e1",
            json!({"vipRanges": {"ipv4": "240.240.0.0/30"}}),
        )
        .with(churn_world(1, 3))
        .yaml();
    let cases = [
        (
            "72 hosts with --max-services 64",
            many_hosts,
            "larger --max-services",
        ),
        (
            "70 more endpoints with --max-backends 64",
            many_eps,
            "larger --max-backends",
        ),
        (
            "5 hosts in a /30 VIP range (2 addresses)",
            tiny_vips,
            "larger VIP range",
        ),
    ];
    for (name, text, hint) in cases {
        d.world.dir.write("config/mesh.yaml", &text)?;
        let verdict = d.routerd.reload()?;
        ensure!(verdict.is_rejected(), "{name}: not refused: {verdict}");
        let said = verdict
            .errors()
            .iter()
            .find(|l| l.contains(hint))
            .with_context(|| {
                format!("{name}: the error does not say what to do ({hint}): {verdict:?}")
            })?
            .chars()
            .take(160)
            .collect::<String>();
        f.add(name, format!("refused: \"{said}...\""));
        ensure!(d.generation()? == gen0, "{name}: the generation moved");
        let services = d.routerd.inspect()?.services.len();
        ensure!(
            services == services0,
            "{name}: {services} services in the maps, {services0} before: partial state"
        );
    }
    let c = load.stop()?;
    f.churn(&c);
    f.add(
        "generation and service count before / after",
        format!("{gen0}, {services0} / unchanged"),
    );
    clean(&c, "size limits")?;
    Ok(f)
}

/// `web`'s four endpoints (real backends), one file: endpoint `unready`
/// (if any) is not ready.
fn churned_web(dir: &std::path::Path, unready: Option<usize>) -> Result<Instant> {
    let eps: Vec<(String, bool)> = (0..4)
        .map(|j| (format!("10.1.0.{}", j + 1), unready != Some(j)))
        .collect();
    let list: Vec<Ep<'_>> = eps.iter().map(|(a, r)| (a.as_str(), "e1", *r)).collect();
    let tmp = dir.join(".web.yaml.tmp");
    std::fs::write(&tmp, web("c1", "east", "web", &list).yaml())?;
    std::fs::rename(&tmp, dir.join("web.yaml"))?;
    Ok(Instant::now())
}

/// Drill 6: endpoints change all the time (a rollout, autoscaling, failing
/// probes) over many services, `web`'s own among them (one of its four
/// endpoints out at a time), while clients connect through `web`'s VIP:
/// nothing fails, nothing goes astray, and every change is served within
/// a bounded staleness without a backlog.
pub fn endpoint_churn(s: Scale) -> Result<Figures> {
    let ids = ["w1", "w2", "w3", "w4"];
    let listens: Vec<Listen> = ids
        .iter()
        .enumerate()
        .map(|(j, id)| Listen::tcp(&format!("10.1.0.{}:8080", j + 1), id))
        .collect();
    let world = World::new(&listens)?;
    let cfg = world.dir.path.join("config");
    std::fs::create_dir_all(&cfg)?;
    world.dir.write(
        "config/node.yaml",
        &Config::new()
            .node("c1", "east", "e1")
            .with(
                VirtualDestination::new("web", "web.t.mesh")
                    .app("web")
                    .port(8080, "TCP"),
            )
            .yaml(),
    )?;
    churned_web(&cfg, None)?;
    let mut files = crate::churn::EndpointFiles::create(&cfg, s.churn_services, 4)?;
    let vip = vip(&plan(&cfg)?, "web.t.mesh", 8080, false);
    let max = (s.churn_services * 4 + 64)
        .next_power_of_two()
        .max(65_536)
        .to_string();
    let routerd = Routerd::start(
        &world.tag,
        &cfg,
        &world.cgroup.path,
        &["--no-dns", "--max-backends", &max],
    )?;
    let mark = routerd.log_len();
    let load = Load::start(&world, &[(vip, &ids)], s.rate)?;
    let mut web_unready = None;
    let n = files.len();
    let written = crate::churn::paced(s.churn_rate, s.churn_secs, |k| {
        if k % 10 == 0 {
            // web: the next endpoint out, the one before back.
            web_unready = match web_unready {
                None => Some(0),
                Some(j) if j < 3 => Some(j + 1),
                Some(_) => None,
            };
            churned_web(&cfg, web_unready)
        } else {
            files.change((k * 7919) % n)
        }
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let c = load.stop()?;
    let stale = crate::churn::staleness(&written, &routerd.served_times(mark));
    let all: Vec<f64> = stale.iter().flatten().copied().collect();
    let missing = stale.iter().filter(|x| x.is_none()).count();
    let windows = crate::churn::windows(&written, &stale, (s.churn_secs / 3.0).max(1.0));
    let mut f = Figures::new("6. endpoint churn under load");
    f.add(
        "services churned (4 endpoints each), changes per second, seconds",
        format!("{}, {}, {}", s.churn_services, s.churn_rate, s.churn_secs),
    );
    f.add(
        "endpoint changes (1 in 10 to web, whose VIP is loaded)",
        written.len(),
    );
    f.add("changes never applied", missing);
    f.add(
        "staleness, change to applied: p50 / p99 / max (ms)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            crate::churn::quantile(&all, 0.5),
            crate::churn::quantile(&all, 0.99),
            all.iter().copied().fold(0.0, f64::max)
        ),
    );
    f.add(
        "staleness p99 in the first / last third (ms)",
        format!(
            "{:.1} / {:.1}",
            windows.first().map_or(f64::NAN, |w| w.4),
            windows.last().map_or(f64::NAN, |w| w.4)
        ),
    );
    f.churn(&c);
    clean(&c, "endpoint churn")?;
    ensure!(missing == 0, "{missing} changes were never applied");
    // No backlog: the last third is served as fast as the first (within
    // a factor and a margin for noise).
    if let (Some(a), Some(b)) = (windows.first(), windows.last()) {
        ensure!(
            b.4 <= a.4 * 3.0 + 100.0,
            "staleness grows: p99 {:.1} ms at first, {:.1} ms at the end (a backlog)",
            a.4,
            b.4
        );
    }
    ensure!(
        c.by_id.get("w1").copied().unwrap_or(0) > 0,
        "web's endpoints took no traffic"
    );
    Ok(f)
}

/// Every drill, in order.
pub type DrillFn = fn(Scale) -> Result<Figures>;
pub const ALL: [(&str, DrillFn); 7] = [
    ("reload_churn", reload_churn),
    ("kill_restart", kill_restart),
    ("endpoint_failover", endpoint_failover),
    ("hostile_configs", hostile_configs),
    ("size_limits", size_limits),
    ("endpoint_churn", endpoint_churn),
    ("fleet", crate::fleet::fleet),
];

/// Markdown for the report.
pub fn markdown(results: &[Figures]) -> String {
    let mut md = String::new();
    for f in results {
        md += &format!("### {}\n\n| | |\n|---|---:|\n", f.name);
        for (k, v) in &f.rows {
            md += &format!("| {k} | {v} |\n");
        }
        md += "\n";
        if let Some((head, rows)) = f.table.split_first() {
            md += &format!("| {} |\n", head.join(" | "));
            md += &format!("|---|{}\n", "---:|".repeat(head.len().saturating_sub(1)));
            for r in rows {
                md += &format!("| {} |\n", r.join(" | "));
            }
            md += "\n";
        }
        for (name, _) in &f.files {
            md += &format!("![{}]({name})\n\n", f.name);
        }
    }
    md
}
