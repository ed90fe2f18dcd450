//! Incremental equals full: random sequences of changes to a config on disk
//! (endpoints added, removed, made unready, moved to another zone, slices
//! and services added and removed, route weights, delegation, policies,
//! ExternalServices, bad input), to endpoint health and to what the
//! resolver found for external host names, applied through the daemon's own
//! [`Control`] (file source, store, units), give after every step exactly
//! what loading and compiling the same files from scratch gives: the same
//! plan when accepted, the same errors when refused (the last good plan
//! then keeps serving, and the oracle keeps it too).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use proptest::prelude::*;
use router_user::{
    compile::{Health, compile},
    config::{Overrides, Validated, load, load::LoadOptions},
    control::{Control, Prepared},
    events::Phases,
    plan::Plan,
    testing::*,
};
use serde_json::json;

const SERVICES: usize = 5;
const ZONES: [&str; 3] = ["z1", "z2", "z3"];
/// An endpoint "host" that stands for service 4's first address (cluster
/// c2) wherever it is listed.
const CONFLICT: u8 = 200;

/// The world the config describes.
#[derive(Clone, Debug)]
struct World {
    /// Per service: present, cluster, slices (each a list of endpoints
    /// (host byte, zone, ready)).
    services: Vec<Svc>,
    /// Route table weights to services 0 and 1 of the `split` host.
    split: (u32, u32),
    /// The `team` table delegates to its children.
    delegate: bool,
    outlier: bool,
    failover: bool,
    checks: bool,
    /// A bad address in service 0's first slice (refused).
    bad_address: bool,
    /// `ext.mesh`, an ExternalService resolved by DNS, and `partner.mesh`,
    /// one over an ExternalEndpoint whose address is a name.
    external: bool,
}

#[derive(Clone, Debug)]
struct Svc {
    present: bool,
    cluster: &'static str,
    slices: Vec<Vec<(u8, usize, bool)>>,
}

fn addr(svc: usize, host: u8) -> String {
    format!("10.{}.{}.{}", 1 + svc / 2, svc, host)
}

impl World {
    fn new() -> World {
        World {
            services: (0..SERVICES)
                .map(|i| Svc {
                    present: true,
                    cluster: if i == 4 { "c2" } else { "c1" },
                    slices: vec![vec![(1, i % 3, true), (2, (i + 1) % 3, true)]],
                })
                .collect(),
            split: (80, 20),
            delegate: true,
            outlier: true,
            failover: false,
            checks: false,
            bad_address: false,
            external: true,
        }
    }

    /// The files: one per service, one per slice, and one each for the
    /// routes and the policies.
    fn files(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(
            "node.yaml".into(),
            Config::new().node("c1", "r1", "z1").yaml(),
        );
        for (i, s) in self.services.iter().enumerate() {
            let name = format!("s{i}");
            if s.present {
                out.insert(
                    format!("svc/{name}.yaml"),
                    Config::new()
                        .with(
                            Service::new(s.cluster, &name)
                                .label("group", if i < 3 { "a" } else { "b" })
                                .named_port("http", 80, "TCP"),
                        )
                        .yaml(),
                );
            }
            for (j, eps) in s.slices.iter().enumerate() {
                let mut slice = Slice::new(s.cluster, &name, &format!("{name}-{j}"))
                    .region(if s.cluster == "c1" { "r1" } else { "r2" })
                    .named_port("http", 8080, "TCP");
                for (k, (host, zone, ready)) in eps.iter().enumerate() {
                    let a = if self.bad_address && i == 0 && j == 0 && k == 0 {
                        "127.0.0.1".to_string()
                    } else if *host == CONFLICT {
                        addr(4, 1) // service 4's, in cluster c2
                    } else {
                        addr(i, *host)
                    };
                    slice = slice.endpoint_ready(&a, ZONES[*zone], *ready);
                }
                out.insert(
                    format!("slices/{name}-{j}.yaml"),
                    Config::new().with(slice).yaml(),
                );
            }
        }
        let to = |svc: &str| Dest::service(svc).port(80);
        let mut routes = Config::new()
            .with(RouteTable::new("split").host("split.mesh").tcp(
                TcpRoute::new().to(&[to("s0").weight(self.split.0), to("s1").weight(self.split.1)]),
            ))
            .with(
                VirtualDestination::new("group-a", "a.mesh")
                    .services(json!({"labels": {"group": "a"}}))
                    .port_spec(json!({"number": 80, "targetPort": {"name": "http"}}))
                    .label("lb", "x"),
            )
            .with(
                VirtualDestination::new("group-b", "b.mesh")
                    .services(json!({"labels": {"group": "b"}}))
                    .port_spec(json!({"number": 80, "targetPort": {"name": "http"}}))
                    .label("lb", "x"),
            )
            .with(
                RouteTable::new("api").host("api.mesh").http(
                    HttpRoute::new()
                        .prefix("/v2")
                        .to(&[to("s2")])
                        .forward_with(json!({"pathRewrite": "/"})),
                ),
            );
        let team = RouteTable::new("team").host("team.mesh");
        routes = if self.delegate {
            routes
                .with(team.http(HttpRoute::new().name("d").delegate(
                    json!({"routeTables": [{"labels": {"team": "t"}}], "sortMethod": "TABLE_WEIGHT"}),
                )))
                .with(
                    RouteTable::new("child-3")
                        .label("team", "t")
                        .http(HttpRoute::new().prefix("/three").to(&[to("s3")])),
                )
                .with(
                    RouteTable::new("child-1")
                        .label("team", "t")
                        .http(HttpRoute::new().prefix("/one").to(&[to("s1")])),
                )
        } else {
            routes.with(team.http(HttpRoute::new().to(&[to("s3")])))
        };
        out.insert("routes.yaml".into(), routes.yaml());
        if self.external {
            out.insert(
                "external.yaml".into(),
                Config::new()
                    .with(
                        ExternalService::new("ext", "ext.mesh")
                            .port(json!({"number": 443, "name": "https"})),
                    )
                    .with(
                        ExternalService::new("partner", "partner.mesh")
                            .port(json!({"number": 443, "name": "https"}))
                            .selector("partner", "yes"),
                    )
                    .with(
                        ExternalEndpoint::new("partner-1", "api.partner.test")
                            .port("https", 8443)
                            .label("partner", "yes"),
                    )
                    .yaml(),
            );
        }
        let mut policies = Config::new();
        if self.outlier {
            policies = policies.with(
                Policy::outlier_detection("od", json!({"consecutiveErrors": 3}))
                    .virtual_destinations_labelled("lb", "x"),
            );
        }
        if self.failover {
            policies = policies.with(
                Policy::failover(
                    "fp",
                    json!({"localityMappings": [{"from": {"region": "r1"}, "to": [{"region": "r2"}]}]}),
                )
                .virtual_destinations_labelled("lb", "x"),
            );
        }
        if self.checks {
            policies = policies.with(
                Policy::active_health_check(
                    "hc",
                    json!({"healthCheck": {"interval": "1s", "tcpHealthCheck": {}}}),
                )
                .virtual_destinations_labelled("lb", "x"),
            );
        }
        if self.outlier || self.failover || self.checks {
            out.insert("policies.yaml".into(), policies.yaml());
        }
        out
    }
}

/// One step.
#[derive(Clone, Debug)]
enum Op {
    AddEndpoint {
        svc: usize,
        slice: usize,
        host: u8,
        zone: usize,
    },
    RemoveEndpoint {
        svc: usize,
        slice: usize,
        k: usize,
    },
    ToggleReady {
        svc: usize,
        slice: usize,
        k: usize,
    },
    MoveZone {
        svc: usize,
        slice: usize,
        k: usize,
        zone: usize,
    },
    AddSlice {
        svc: usize,
    },
    RemoveSlice {
        svc: usize,
    },
    ToggleService {
        svc: usize,
    },
    /// An address service 4 (cluster c2) lists, in a c1 slice (refused).
    Conflict {
        svc: usize,
    },
    BadAddress(bool),
    Split(u32, u32),
    ToggleDelegate,
    ToggleOutlier,
    ToggleFailover,
    ToggleChecks,
    Health {
        svc: usize,
        host: u8,
        healthy: bool,
    },
    /// The resolver's answer for one of the external names: `n` addresses.
    Resolve {
        name: usize,
        n: u8,
    },
    ToggleExternal,
    Sighup,
}

/// The names the external services resolve.
const EXTERNAL_NAMES: [&str; 2] = ["ext.mesh", "api.partner.test"];

fn op() -> impl Strategy<Value = Op> {
    let svc = 0..SERVICES;
    prop_oneof![
        6 => (svc.clone(), 0..2usize, 1..6u8, 0..3usize)
            .prop_map(|(svc, slice, host, zone)| Op::AddEndpoint { svc, slice, host, zone }),
        4 => (svc.clone(), 0..2usize, 0..4usize)
            .prop_map(|(svc, slice, k)| Op::RemoveEndpoint { svc, slice, k }),
        6 => (svc.clone(), 0..2usize, 0..4usize)
            .prop_map(|(svc, slice, k)| Op::ToggleReady { svc, slice, k }),
        3 => (svc.clone(), 0..2usize, 0..4usize, 0..3usize)
            .prop_map(|(svc, slice, k, zone)| Op::MoveZone { svc, slice, k, zone }),
        2 => svc.clone().prop_map(|svc| Op::AddSlice { svc }),
        2 => svc.clone().prop_map(|svc| Op::RemoveSlice { svc }),
        1 => svc.clone().prop_map(|svc| Op::ToggleService { svc }),
        1 => (0..4usize).prop_map(|svc| Op::Conflict { svc }),
        1 => any::<bool>().prop_map(Op::BadAddress),
        1 => (0..100u32, 0..100u32).prop_map(|(a, b)| Op::Split(a.min(100 - b.min(100)), b)),
        1 => Just(Op::ToggleDelegate),
        1 => Just(Op::ToggleOutlier),
        1 => Just(Op::ToggleFailover),
        1 => Just(Op::ToggleChecks),
        5 => (svc.clone(), 1..6u8, any::<bool>())
            .prop_map(|(svc, host, healthy)| Op::Health { svc, host, healthy }),
        3 => (0..2usize, 0..4u8).prop_map(|(name, n)| Op::Resolve { name, n }),
        1 => Just(Op::ToggleExternal),
        1 => Just(Op::Sighup),
    ]
}

/// Apply `op` to the world and the health; is it a change of files?
fn step(w: &mut World, health: &mut Health, op: &Op) -> bool {
    fn slice(w: &mut World, svc: usize, slice: usize) -> Option<&mut Vec<(u8, usize, bool)>> {
        let n = w.services[svc].slices.len();
        (n > 0).then(move || &mut w.services[svc].slices[slice % n])
    }
    match *op {
        Op::AddEndpoint {
            svc,
            slice: s,
            host,
            zone,
        } => {
            if let Some(eps) = slice(w, svc, s)
                && !eps.iter().any(|e| e.0 == host)
            {
                eps.push((host, zone, true));
            }
        }
        Op::RemoveEndpoint { svc, slice: s, k } => {
            if let Some(eps) = slice(w, svc, s)
                && !eps.is_empty()
            {
                let i = k % eps.len();
                eps.remove(i);
            }
        }
        Op::ToggleReady { svc, slice: s, k } => {
            if let Some(eps) = slice(w, svc, s)
                && !eps.is_empty()
            {
                let i = k % eps.len();
                eps[i].2 = !eps[i].2;
            }
        }
        Op::MoveZone {
            svc,
            slice: s,
            k,
            zone,
        } => {
            if let Some(eps) = slice(w, svc, s)
                && !eps.is_empty()
            {
                let i = k % eps.len();
                eps[i].1 = zone;
            }
        }
        Op::AddSlice { svc } => {
            if w.services[svc].slices.len() < 2 {
                w.services[svc].slices.push(vec![(7, svc % 3, true)]);
            }
        }
        Op::RemoveSlice { svc } => {
            w.services[svc].slices.pop();
        }
        Op::ToggleService { svc } => w.services[svc].present = !w.services[svc].present,
        Op::Conflict { svc } => {
            if let Some(eps) = slice(w, svc, 0)
                && !eps.iter().any(|e| e.0 == CONFLICT)
            {
                eps.push((CONFLICT, 0, true));
            }
        }
        Op::BadAddress(b) => w.bad_address = b,
        Op::Split(a, b) => w.split = (a, b),
        Op::ToggleDelegate => w.delegate = !w.delegate,
        Op::ToggleOutlier => w.outlier = !w.outlier,
        Op::ToggleFailover => w.failover = !w.failover,
        Op::ToggleChecks => w.checks = !w.checks,
        Op::Health { svc, host, healthy } => {
            let a: SocketAddr = format!("{}:8080", addr(svc, host)).parse().unwrap();
            if healthy {
                health.unhealthy.remove(&a);
            } else {
                health.unhealthy.insert(a);
            }
            return false;
        }
        Op::Resolve { name, n } => {
            let addrs = (0..n)
                .map(|i| format!("10.9.{name}.{}", 1 + i).parse().unwrap())
                .collect();
            health
                .resolved
                .insert(EXTERNAL_NAMES[name].to_string(), addrs);
            return false;
        }
        Op::ToggleExternal => w.external = !w.external,
        Op::Sighup => {}
    }
    true
}

/// `v` with the resolver's answers (a whole validation of the same config).
fn with_resolved(v: &Validated, health: &Health) -> Validated {
    let mut cfg = v.config.clone();
    cfg.resolved = health.resolved.clone();
    router_user::config::validate_all(cfg, &Overrides::default()).unwrap()
}

/// Write the world's files: the changed ones, and remove the ones gone.
/// The paths touched, as the watcher would report them.
fn write(
    dir: &Path,
    w: &World,
    old: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<PathBuf>) {
    let new = w.files();
    let mut touched = Vec::new();
    for (f, text) in &new {
        if old.get(f) != Some(text) {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            touched.push(p);
        }
    }
    for f in old.keys().filter(|f| !new.contains_key(*f)) {
        let p = dir.join(f);
        std::fs::remove_file(&p).unwrap();
        touched.push(p);
    }
    (new, touched)
}

/// Take the conflicting addresses out again.
fn fix_conflict_address(w: &mut World) {
    for s in &mut w.services {
        for eps in &mut s.slices {
            eps.retain(|e| e.0 != CONFLICT);
        }
    }
}

fn run(ops: &[Op]) {
    let dir = std::env::temp_dir().join(format!(
        "rt-incremental-{}-{}",
        std::process::id(),
        std::thread::current()
            .name()
            .unwrap_or("t")
            .replace("::", "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut world = World::new();
    let (mut files, _) = write(&dir, &world, &BTreeMap::new());
    let mut control = Control::new(&dir, LoadOptions::default(), &Overrides::default());
    let mut health = Health::default();
    let mut applied = Health::default();
    let mut phases = Phases::default();
    let r = control.prepare(true, &applied, &health, &mut phases);
    assert!(
        r.refused.is_none(),
        "the first config is valid: {:?}",
        r.refused
    );
    control.commit();
    // The oracle: the last config a whole load accepted.
    let mut good: Validated = load(&dir, &Overrides::default()).unwrap();
    for (n, op) in ops.iter().enumerate() {
        let files_changed = step(&mut world, &mut health, op);
        let (new_files, touched) = write(&dir, &world, &files);
        files = new_files;
        if matches!(op, Op::Sighup) {
            control.rescan();
        } else {
            control.changed(touched);
        }
        let r = control.prepare(files_changed, &applied, &health, &mut phases);
        let full = if files_changed {
            load(&dir, &Overrides::default())
        } else {
            Ok(good.clone())
        };
        match (&r.refused, &full) {
            (None, Ok(v)) => good = v.clone(),
            (Some(e), Err(f)) => assert_eq!(
                e.errors, f.errors,
                "step {n} ({op:?}): refused, but not as a whole load is"
            ),
            (Some(e), Ok(_)) => panic!("step {n} ({op:?}): refused what a whole load accepts: {e}"),
            (None, Err(f)) => panic!("step {n} ({op:?}): accepted what a whole load refuses: {f}"),
        }
        let want: Plan = compile(&with_resolved(&good, &health), &health).unwrap();
        if let Prepared::Changes(_) = r.prepared {
            control.commit();
        }
        applied = health.clone();
        let got = control.plan().expect("a plan serves");
        assert_plans_equal(got, &want, n, op);
        // Conflicts and bad input are fixed for the next step half the time.
        if n % 2 == 1 {
            fix_conflict_address(&mut world);
            world.bad_address = false;
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn assert_plans_equal(got: &Plan, want: &Plan, n: usize, op: &Op) {
    if got == want {
        return;
    }
    let keys = |p: &Plan| -> BTreeSet<String> {
        p.services
            .iter()
            .map(|s| format!("{}:{}/{} {:?}", s.vip, s.port, s.proto, s.slots))
            .collect()
    };
    let (g, w) = (keys(got), keys(want));
    panic!(
        "step {n} ({op:?}): the incremental plan differs from a whole compile\n\
         services only incremental: {:?}\nservices only whole: {:?}\n\
         backends equal: {}; hosts equal: {}; checks equal: {}; outliers equal: {}; notices equal: {}; l7 equal: {}",
        g.difference(&w).collect::<Vec<_>>(),
        w.difference(&g).collect::<Vec<_>>(),
        got.backends == want.backends,
        got.hosts == want.hosts,
        got.health_checks == want.health_checks,
        got.outliers == want.outliers,
        got.notices == want.notices,
        got.l7 == want.l7,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn incremental_equals_full_after_every_step(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}

/// The same on a fixed sequence that touches every kind of step once.
#[test]
fn every_kind_of_step_once() {
    run(&[
        Op::ToggleReady {
            svc: 0,
            slice: 0,
            k: 0,
        },
        Op::Health {
            svc: 1,
            host: 1,
            healthy: false,
        },
        Op::AddEndpoint {
            svc: 2,
            slice: 0,
            host: 5,
            zone: 1,
        },
        Op::MoveZone {
            svc: 2,
            slice: 0,
            k: 0,
            zone: 2,
        },
        Op::AddSlice { svc: 3 },
        Op::Conflict { svc: 1 },
        Op::RemoveEndpoint {
            svc: 2,
            slice: 0,
            k: 1,
        },
        Op::BadAddress(true),
        Op::Health {
            svc: 1,
            host: 1,
            healthy: true,
        },
        Op::BadAddress(false),
        Op::Split(30, 70),
        Op::ToggleChecks,
        Op::ToggleReady {
            svc: 0,
            slice: 0,
            k: 1,
        },
        Op::ToggleFailover,
        Op::ToggleDelegate,
        Op::RemoveSlice { svc: 3 },
        Op::ToggleService { svc: 3 },
        Op::ToggleService { svc: 3 },
        Op::ToggleOutlier,
        Op::Resolve { name: 0, n: 2 },
        Op::Resolve { name: 1, n: 1 },
        Op::Resolve { name: 0, n: 1 },
        Op::ToggleExternal,
        Op::Resolve { name: 1, n: 3 },
        Op::ToggleExternal,
        Op::Resolve { name: 0, n: 0 },
        Op::Sighup,
    ]);
}
