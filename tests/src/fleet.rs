//! The fleet drill (issue 13): many routerd nodes on one machine, each in
//! its own network namespace and cgroup with its own pin root and small
//! maps, all following one 3-member etcd, with real client connections on
//! several of them throughout. What it measures and checks:
//!
//! 1. publish -> applied on every node, over many publishes;
//! 2. the etcd leader killed while publishes go on: nothing fails, every
//!    node converges after the election;
//! 3. one node cut off from etcd (its connection goes through a relay the
//!    drill cuts) while config changes and etcd compacts past its
//!    revision: it keeps serving, then relists and converges once back;
//! 4. a new node joins: ready, at the store's revision;
//! 5. an invalid publish: nothing changes anywhere.
use std::{
    io::Read,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{
    drill::{Figures, Load, Scale, percentile},
    etcd::{Etcd, mesh_listens, publish_mesh, store_node, write_mesh},
    *,
};

/// A TCP relay on loopback to etcd's members (the first that answers),
/// which the drill can cut: the connections through it are shut down and
/// new ones closed at once, as a partitioned network would.
pub struct Relay {
    pub port: u16,
    /// When the first connection after the last mend was relayed.
    reconnected: Arc<Mutex<Option<Instant>>>,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(upstreams: Vec<u16>) -> Result<Relay> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let reconnected: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (c, s, k, r) = (
            cut.clone(),
            stop.clone(),
            conns.clone(),
            reconnected.clone(),
        );
        std::thread::spawn(move || {
            for inbound in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(inbound) = inbound else { continue };
                if c.load(Ordering::Relaxed) {
                    continue; // dropped: closed at once
                }
                let Some(out) = upstreams.iter().find_map(|p| {
                    TcpStream::connect_timeout(
                        &std::net::SocketAddr::from(([127, 0, 0, 1], *p)),
                        Duration::from_millis(300),
                    )
                    .ok()
                }) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), out.try_clone().unwrap()),
                    (out.try_clone().unwrap(), inbound.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                r.lock().unwrap().get_or_insert_with(Instant::now);
                let mut k = k.lock().unwrap();
                k.push(inbound);
                k.push(out);
            }
        });
        Ok(Relay {
            port,
            reconnected,
            cut,
            stop,
            conns,
        })
    }

    /// Cut (every connection through the relay ends; new ones are closed)
    /// or mend.
    pub fn set_cut(&self, on: bool) {
        self.cut.store(on, Ordering::Relaxed);
        *self.reconnected.lock().unwrap() = None;
        if on {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Relay {
    /// When a connection first went through after the last mend.
    pub fn reconnected(&self) -> Option<Instant> {
        *self.reconnected.lock().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set_cut(true);
        // Wake the accept loop.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.read(&mut [0u8; 1]);
        }
    }
}

/// One node of the fleet.
struct Node {
    pod: PodNs,
    routerd: Routerd,
}

fn served(r: &Routerd) -> i64 {
    router_user::state::read_store_status(&r.state_dir).map_or(0, |s| s.served_revision)
}

/// Wait until every node serves `revision`; when each did (from `t0`), ms.
fn converge(nodes: &[Node], revision: i64, t0: Instant, within: Duration) -> Result<Vec<f64>> {
    let mut at: Vec<Option<f64>> = vec![None; nodes.len()];
    while at.iter().any(Option::is_none) {
        for (i, n) in nodes.iter().enumerate() {
            if at[i].is_none() && served(&n.routerd) >= revision {
                at[i] = Some(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        ensure!(
            t0.elapsed() < within,
            "nodes {:?} did not reach revision {revision} within {within:?}",
            at.iter()
                .enumerate()
                .filter(|(_, a)| a.is_none())
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(at.into_iter().map(|a| a.unwrap_or_default()).collect())
}

/// Per node, p50 and p99 of publish -> applied, as an SVG bar chart.
fn convergence_svg(per_node: &[Vec<f64>]) -> String {
    let (w, h, left, bottom, top) = (760.0, 300.0, 50.0, 40.0, 30.0);
    let stats: Vec<(f64, f64)> = per_node
        .iter()
        .map(|v| (percentile(v.clone(), 0.5), percentile(v.clone(), 0.99)))
        .collect();
    let max = stats.iter().map(|s| s.1).fold(1.0, f64::max) * 1.1;
    let y = |ms: f64| top + (h - top - bottom) * (1.0 - ms / max);
    let slot = (w - left - 10.0) / stats.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"13\">publish -> applied, per node (ms): p50 (dark) and p99 (light)</text>\n"
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        svg += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"4\" y=\"{:.1}\">{v:.0}</text>\n",
            w - 10.0,
            y(v),
            y(v),
            y(v) + 4.0
        );
    }
    for (i, (p50, p99)) in stats.iter().enumerate() {
        let x = left + slot * i as f64 + slot * 0.15;
        let bw = slot * 0.35;
        svg += &format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#2a6fb0\"/>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#9cc3e6\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{i}</text>\n",
            y(*p50),
            y(0.0) - y(*p50),
            x + bw,
            y(*p99),
            y(0.0) - y(*p99),
            x + bw,
            h - bottom + 14.0
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">node</text>\n</svg>\n",
        w / 2.0,
        h - 8.0
    );
    svg
}

/// One publish of cluster c1's inventory with e1 ready or not: (revision
/// after it, ms the command took, when it started).
fn flip(etcd: &Etcd, url: &str, dir: &TempDir, ready: bool) -> Result<(i64, f64, Instant)> {
    write_mesh(dir, ready)?;
    let t0 = Instant::now();
    let inv = dir.path.join("inventory/c1").display().to_string();
    etcd.publish_ok(url, &["--cluster", "c1", "--inventory", &inv])?;
    let took = t0.elapsed().as_secs_f64() * 1e3;
    Ok((etcd.revision()?, took, t0))
}

/// Node `i`: pod `i + 1`'s namespace and cgroup, its own pin root and
/// small maps, following `url`.
fn start_node(world: &World, etcd: &Etcd, i: usize, url: &str) -> Result<Node> {
    let pod = world.pod(u8::try_from(i + 1)?, "127.0.0.153")?;
    let tag = format!("{}f{i}", world.tag);
    let netns = pod.netns();
    let snapshot = world.dir.path.join(format!("snapshot-{i}"));
    let routerd = store_node(
        &tag,
        &pod.cgroup.path,
        etcd,
        url,
        &snapshot,
        &[
            "--listen-netns",
            &netns,
            "--max-services",
            "64",
            "--max-backends",
            "256",
            "--proxy-threads",
            "1",
            "--no-dns",
        ],
    )
    .with_context(|| format!("starting node {i}"))?;
    Ok(Node { pod, routerd })
}

pub fn fleet(s: Scale) -> Result<Figures> {
    let mut f = Figures::new("Fleet: routerd nodes on one etcd");
    let world = World::new(&mesh_listens())?;
    let mut etcd = Etcd::start(3, false)?;
    let url = etcd.url("mesh");
    write_mesh(&world.dir, true)?;
    publish_mesh(&etcd, &url, &world.dir)?;
    // The last node reaches etcd through a relay the drill can cut.
    let relay = Relay::start(etcd.client_ports())?;
    let relay_url = format!("etcd://127.0.0.1:{}/mesh", relay.port);
    let n = s.fleet_nodes;
    let mut nodes = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        nodes.push(start_node(
            &world,
            &etcd,
            i,
            if i == n - 1 { &relay_url } else { &url },
        )?);
    }
    f.add("nodes", n);
    f.add("etcd members", etcd.len());
    f.add(
        "nodes started in",
        format!("{:.1} s", t.elapsed().as_secs_f64()),
    );
    let plan = router_user::state::read_plan(&nodes[0].routerd.state_dir)
        .context("node 0 recorded its plan")?;
    let vip = vip(&plan, "web.t.mesh", 8080, false);
    // Real client connections on three nodes throughout (the cut one too).
    let loaded = [0, n / 2, n - 1];
    let allowed: &[&str] = &["e1", "e2", "west"];
    let mut loads = Vec::new();
    for i in loaded {
        loads.push(Load::start_cmd(
            nodes[i].pod.cmd(bin("rt-probe")),
            &[(vip, allowed)],
            s.fleet_rate,
            4,
        )?);
    }

    // 1. publish -> applied on every node.
    let mut per_node: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut took = Vec::new();
    let mut ready = true;
    for _ in 0..s.fleet_publishes {
        ready = !ready;
        let (rev, ms, t0) = flip(&etcd, &url, &world.dir, ready)?;
        took.push(ms);
        for (i, at) in converge(&nodes, rev, t0, Duration::from_secs(10))?
            .into_iter()
            .enumerate()
        {
            per_node[i].push(at);
        }
    }
    let all: Vec<f64> = per_node.iter().flatten().copied().collect();
    f.add("publishes", s.fleet_publishes);
    f.add(
        "publish command (validate, one transaction): p50 / p99",
        format!(
            "{:.0} / {:.0} ms",
            percentile(took.clone(), 0.5),
            percentile(took, 0.99)
        ),
    );
    f.add(
        "publish start -> applied, every node: p50 / p99",
        format!(
            "{:.0} / {:.0} ms",
            percentile(all.clone(), 0.5),
            percentile(all, 0.99)
        ),
    );

    // 2. The leader killed while publishes go on.
    let leader = etcd.leader()?;
    let marks: Vec<usize> = nodes.iter().map(|n| n.routerd.log_len()).collect();
    let t0 = Instant::now();
    let mut last = (0, 0.0, t0);
    for k in 0..6 {
        if k == 2 {
            etcd.kill(leader);
        }
        ready = !ready;
        last = flip(&etcd, &url, &world.dir, ready)?;
    }
    let after_kill = converge(&nodes, last.0, last.2, Duration::from_secs(15))?;
    let lost = nodes
        .iter()
        .zip(&marks)
        .filter(|(n, m)| {
            n.routerd.logs()[**m..]
                .iter()
                .any(|l| l.contains("lost etcd"))
        })
        .count();
    f.add(
        "etcd leader killed during 6 publishes: every node at the last one",
        format!(
            "{:.0} ms after its publish began ({:.1} s for the 6, election included; {lost} node(s) lost their member and reconnected)",
            after_kill.iter().copied().fold(0.0, f64::max),
            t0.elapsed().as_secs_f64()
        ),
    );
    let mut last = last.0;
    etcd.restart(leader)?;
    etcd.wait_healthy(Duration::from_secs(30))?;

    // 3. A node cut off from etcd while config changes and is compacted.
    let cut = &nodes[n - 1];
    let lists_before =
        router_user::state::read_store_status(&cut.routerd.state_dir).map_or(0, |s| s.lists);
    relay.set_cut(true);
    let t_cut = Instant::now();
    for _ in 0..3 {
        ready = !ready;
        last = flip(&etcd, &url, &world.dir, ready)?.0;
    }
    etcd.ctl(&["put", "/elsewhere/compaction-marker", "x"])?;
    let rev = etcd.revision()?;
    etcd.ctl(&["compact", &rev.to_string(), "--physical"])?;
    converge(
        &nodes[..n - 1],
        last,
        Instant::now(),
        Duration::from_secs(10),
    )?;
    let behind = served(&cut.routerd);
    ensure!(behind < last, "the cut node is behind ({behind} < {last})");
    std::thread::sleep(Duration::from_secs(s.fleet_cut_secs).saturating_sub(t_cut.elapsed()));
    let t_mend = Instant::now();
    relay.set_cut(false);
    let back = converge(
        std::slice::from_ref(cut),
        last,
        t_mend,
        Duration::from_secs(10),
    )?[0];
    let relinked = relay
        .reconnected()
        .map_or(0.0, |t| t.duration_since(t_mend).as_secs_f64() * 1e3);
    let lists_after =
        router_user::state::read_store_status(&cut.routerd.state_dir).map_or(0, |s| s.lists);
    ensure!(
        lists_after > lists_before,
        "the cut node listed again after the compaction ({lists_before} -> {lists_after}): {:?}",
        router_user::state::read_store_status(&cut.routerd.state_dir)
    );
    f.add(
        "node cut off from etcd",
        format!(
            "{} s, 3 publishes and a compaction past its revision meanwhile; reconnected {relinked:.0} ms after the link came back, at the store's revision {:.0} ms after reconnecting (a relist: lists {lists_before} -> {lists_after})",
            s.fleet_cut_secs,
            back - relinked
        ),
    );

    // 4. A new node joins.
    let t = Instant::now();
    let joined = start_node(&world, &etcd, n, &url)?;
    let ready_ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(
        served(&joined.routerd) >= last,
        "the new node starts at the store's revision"
    );
    f.add(
        "a new node joins: process start -> ready, at the store's revision",
        format!("{ready_ms:.0} ms"),
    );
    nodes.push(joined);

    // 5. An invalid publish changes nothing anywhere.
    let before = etcd.revision()?;
    let generations: Vec<u64> = nodes
        .iter()
        .map(|n| n.routerd.inspect().map(|r| r.generation))
        .collect::<Result<_>>()?;
    world.dir.write(
        "mesh/bad.yaml",
        "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: x, namespace: t}\nspec:\n  hosts: [x.t.mesh]\n  tcp:\n  - forwardTo: {destinations: [{ref: {name: nope}}]}\n",
    )?;
    let (code, _, err) = etcd.publish(
        &url,
        &[
            "--config",
            &world.dir.path.join("mesh").display().to_string(),
        ],
    )?;
    std::fs::remove_file(world.dir.path.join("mesh/bad.yaml"))?;
    ensure!(
        code == 1 && err.contains("bad.yaml:7"),
        "the invalid publish was refused: {err}"
    );
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        etcd.revision()? == before,
        "the invalid publish wrote nothing"
    );
    for (i, (node, g)) in nodes.iter().zip(&generations).enumerate() {
        ensure!(
            node.routerd.inspect()?.generation == *g,
            "node {i} changed after an invalid publish"
        );
    }
    f.add(
        "invalid publish",
        "refused with file:line; store revision and every node's generation unchanged",
    );

    let mut churns = Vec::new();
    for l in loads {
        churns.push(l.stop()?);
    }
    let attempted: u64 = churns.iter().map(|c| c.attempted).sum();
    let failed: u64 = churns.iter().map(|c| c.failed).sum();
    let misrouted: u64 = churns.iter().map(|c| c.misrouted).sum();
    f.add(
        "connections (nodes 0, n/2 and the cut one, throughout)",
        format!("{attempted} attempted, {failed} failed, {misrouted} misrouted"),
    );
    for c in &churns {
        ensure!(
            c.failed == 0 && c.misrouted == 0,
            "connections failed or misrouted: {:?}",
            c.samples
        );
    }
    ensure!(attempted > 0, "the load ran");
    f.table.push(vec![
        "node".into(),
        "publish -> applied p50".into(),
        "p99".into(),
        "max".into(),
    ]);
    for (i, v) in per_node.iter().enumerate() {
        f.table.push(vec![
            i.to_string(),
            format!("{:.0} ms", percentile(v.clone(), 0.5)),
            format!("{:.0} ms", percentile(v.clone(), 0.99)),
            format!("{:.0} ms", percentile(v.clone(), 1.0)),
        ]);
    }
    f.files
        .push(("drill-fleet.svg".into(), convergence_svg(&per_node)));
    Ok(f)
}
