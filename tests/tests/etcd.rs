//! routerd on etcd (issue 13): `routerd publish` writes a validated config
//! to a real 3-member etcd in one transaction, and a node started with
//! `--store` (no config files) follows it: publishes apply incrementally,
//! an invalid publish writes nothing, a member killed under the node is
//! survived, a node whose member is down starts from its snapshot, and a
//! compaction past its revision is a relist, not a flush.
use std::time::Duration;

use router_tests::{etcd::*, *};

fn web_vip(r: &Routerd) -> std::net::SocketAddr {
    let plan = router_user::state::read_plan(&r.state_dir).expect("the node recorded its plan");
    vip(&plan, "web.t.mesh", 8080, false)
}

/// Where the node stands against etcd, as `routerd inspect --json` says.
fn status(r: &Routerd) -> router_user::state::StoreStatus {
    r.inspect()
        .unwrap()
        .store
        .expect("inspect shows the store of a node that follows etcd")
}

/// Wait until the node says it serves `revision` (and is connected).
fn wait_served(r: &Routerd, revision: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(r);
        if s.served_revision >= revision && s.connected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not reach revision {revision}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_follows_publishes_and_an_invalid_publish_writes_nothing() {
    require_root();
    let world = World::new(&mesh_listens()).unwrap();
    let mut etcd = Etcd::start(3, false).unwrap();
    let url = etcd.url("mesh");
    write_mesh(&world.dir, true).unwrap();
    publish_mesh(&etcd, &url, &world.dir).unwrap();
    let snap = world.dir.path.join("snapshot");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let r = store_node(
        &world.tag,
        &world.cgroup.path,
        &etcd,
        &url,
        &snap,
        &["--metrics-addr", &metrics],
    )
    .unwrap();
    let vip = web_vip(&r);
    assert_eq!(only(&world, vip, 10), "e1");
    let s = status(&r);
    assert_eq!(s.served_revision, etcd.revision().unwrap(), "{s:?}");
    assert!(s.objects >= 5, "{s:?}");
    let text = run(std::process::Command::new(bin("routerd")).args([
        "inspect",
        "--pin-root",
        &r.pin_root.display().to_string(),
        "--state-dir",
        &r.state_dir.display().to_string(),
    ]))
    .unwrap();
    assert!(
        text.contains(&format!(
            "config from {url}: serving revision {0} (store at {0}); connected, up to date",
            s.served_revision
        )),
        "{text}"
    );

    // The same as metrics.
    let text = run(std::process::Command::new("curl").args([
        "-sS",
        "--max-time",
        "5",
        &format!("http://{metrics}/metrics"),
    ]))
    .unwrap();
    for want in [
        format!("routerd_store_served_revision {}", s.served_revision),
        "routerd_store_connected 1".to_string(),
        "routerd_store_pending_keys 0".to_string(),
        "routerd_store_lists_total 1".to_string(),
    ] {
        assert!(text.lines().any(|l| l == want), "{want} in:\n{text}");
    }

    // Cluster c1's inventory changes (e1 not ready): applied, incrementally.
    write_mesh(&world.dir, false).unwrap();
    let mark = r.log_len();
    let out = etcd
        .publish_ok(
            &url,
            &[
                "--cluster",
                "c1",
                "--inventory",
                world.dir.path.join("inventory/c1").to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(out.contains("1 changed"), "{out}");
    r.wait_event(mark, Event::is_applied).unwrap();
    assert_eq!(only(&world, vip, 10), "e2");

    // An invalid mesh-wide config: the same file:line errors as check,
    // and nothing written anywhere.
    let before = etcd.revision().unwrap();
    let generation = r.inspect().unwrap().generation;
    world
        .dir
        .write(
            "mesh/bad.yaml",
            "apiVersion: networking.gloo.solo.io/v2\nkind: RouteTable\nmetadata: {name: x, namespace: t}\nspec:\n  hosts: [x.t.mesh]\n  tcp:\n  - forwardTo: {destinations: [{ref: {name: nope}}]}\n",
        )
        .unwrap();
    let (code, out, err) = etcd
        .publish(
            &url,
            &["--config", world.dir.path.join("mesh").to_str().unwrap()],
        )
        .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("bad.yaml:7"), "names the file and line: {err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(etcd.revision().unwrap(), before, "nothing was written");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        r.inspect().unwrap().generation,
        generation,
        "nothing changed on the node"
    );
    std::fs::remove_file(world.dir.path.join("mesh/bad.yaml")).unwrap();

    // A bad key written by hand (not through publish): the node refuses
    // it, naming the key, keeps serving, and says it holds a key it did
    // not apply; the key deleted, it is up to date again.
    let bad = "/mesh/v1/config/RouteTable/t/bad";
    let mark = r.log_len();
    etcd.ctl(&["put", bad, "kind: RouteTable\nspec: [\n"])
        .unwrap();
    let refused = r.wait_event(mark, Event::is_rejected).unwrap();
    assert!(
        refused
            .errors()
            .iter()
            .any(|e| e.contains(&format!("etcd:{bad}:"))),
        "{refused:?}"
    );
    assert_eq!(only(&world, vip, 5), "e2");
    std::thread::sleep(Duration::from_millis(1200));
    let st = status(&r);
    assert_eq!(st.pending, 1, "{st:?}");
    assert_eq!(
        r.events(mark).iter().filter(|e| e.is_rejected()).count(),
        1,
        "refused once, not again on every progress notice"
    );
    let mark = r.log_len();
    etcd.ctl(&["del", bad]).unwrap();
    r.wait_event(mark, |e| e.is_no_change() || e.is_applied())
        .unwrap();
    wait_served(&r, etcd.revision().unwrap());
    assert_eq!(status(&r).pending, 0);

    // A member killed under the node (whichever it follows): the node
    // keeps serving, and follows the next publish through the others.
    etcd.kill(0);
    assert_eq!(only(&world, vip, 5), "e2");
    write_mesh(&world.dir, true).unwrap();
    let mark = r.log_len();
    let url12 = etcd.url_of(&[1, 2], "mesh");
    etcd.publish_ok(
        &url12,
        &[
            "--cluster",
            "c1",
            "--inventory",
            world.dir.path.join("inventory/c1").to_str().unwrap(),
        ],
    )
    .unwrap();
    r.wait_event(mark, Event::is_applied).unwrap();
    assert_eq!(only(&world, vip, 10), "e1");
    wait_served(&r, etcd.revision().unwrap());
    // The snapshot holds every key the node accepted.
    let files = std::fs::read_dir(&snap).unwrap().count();
    assert!(files > s.objects, "{files} files in the snapshot");
}

#[test]
fn tls_a_node_starts_from_its_snapshot_and_a_compaction_is_a_relist() {
    require_root();
    let world = World::new(&mesh_listens()).unwrap();
    let mut etcd = Etcd::start(3, true).unwrap();
    let url = etcd.url("mesh");
    write_mesh(&world.dir, true).unwrap();
    publish_mesh(&etcd, &url, &world.dir).unwrap();
    // The node follows member 2 only.
    let url2 = etcd.url_of(&[2], "mesh");
    let snap = world.dir.path.join("snapshot");
    let mut r = store_node(&world.tag, &world.cgroup.path, &etcd, &url2, &snap, &[]).unwrap();
    let vip = web_vip(&r);
    assert_eq!(only(&world, vip, 10), "e1");
    wait_served(&r, etcd.revision().unwrap());

    // Its member goes; config changes and is compacted meanwhile.
    etcd.kill(2);
    let url01 = etcd.url_of(&[0, 1], "mesh");
    let c1 = world.dir.path.join("inventory/c1");
    let c1 = c1.to_str().unwrap();
    write_mesh(&world.dir, false).unwrap();
    etcd.publish_ok(&url01, &["--cluster", "c1", "--inventory", c1])
        .unwrap();
    // (A key outside the prefix moves the revision on, so that compacting
    // at the latest one removes the publish's revision too.)
    etcd.ctl(&["put", "/elsewhere/key", "x"]).unwrap();
    let rev = etcd.revision().unwrap();
    etcd.ctl(&["compact", &rev.to_string(), "--physical"])
        .unwrap();
    assert_eq!(
        only(&world, vip, 5),
        "e1",
        "the last accepted config keeps serving"
    );
    // The member is back: the node's watch resumes from a compacted
    // revision, so it lists again and applies what changed (no flush).
    let mark = r.log_len();
    etcd.restart(2).unwrap();
    r.wait_log(mark, "compacted past this node's revision")
        .unwrap();
    let applied = r.wait_event(mark, Event::is_applied).unwrap();
    assert!(
        matches!(&applied, Event::Applied { removed: 0, .. }),
        "{applied:?}"
    );
    assert_eq!(only(&world, vip, 10), "e2");
    wait_served(&r, rev);
    let s = status(&r);
    assert!(
        s.lists >= 2,
        "listed at start and after the compaction: {s:?}"
    );

    // A restart while its member is down: from the snapshot, with a
    // warning, serving what the node last accepted.
    etcd.kill(2);
    write_mesh(&world.dir, true).unwrap();
    etcd.publish_ok(&url01, &["--cluster", "c1", "--inventory", c1])
        .unwrap();
    let mark = r.log_len();
    r.terminate().unwrap();
    r.spawn().unwrap();
    r.wait_log(mark, "starting from the local snapshot")
        .unwrap();
    assert_eq!(only(&world, vip, 5), "e2");
    assert!(status(&r).from_snapshot);
    // The member is back: the node catches up.
    let mark = r.log_len();
    etcd.restart(2).unwrap();
    r.wait_event(mark, Event::is_applied).unwrap();
    assert_eq!(only(&world, vip, 10), "e1");
    wait_served(&r, etcd.revision().unwrap());
    assert!(!status(&r).from_snapshot);
}

/// Two publishers: one reads and validates, another publishes meanwhile;
/// the first one's transaction is refused (it was validated against a
/// store that is gone) and writes nothing.
#[test]
fn a_publish_validated_before_another_one_landed_writes_nothing() {
    use router_user::{config::etcd::Scope, kvstore};
    let etcd = Etcd::start(1, false).unwrap();
    let url = etcd.url("mesh");
    let dir = TempDir::new(&format!("{}-race", unique())).unwrap();
    write_mesh(&dir, true).unwrap();
    publish_mesh(&etcd, &url, &dir).unwrap();
    write_mesh(&dir, false).unwrap();
    let c1 = dir.path.join("inventory/c1");
    let o = kvstore::StoreOptions::parse(&url).unwrap();
    let p = kvstore::Publish {
        dir: c1.clone(),
        scope: Scope::Cluster("c1".into()),
        dry_run: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = kvstore::connect(&o).await.unwrap();
        let staged = kvstore::stage(&c, &o, &p).await.unwrap();
        assert!(
            !staged.is_empty(),
            "e1 turned not ready: one slice to write"
        );
        // The other publisher lands first.
        etcd.publish_ok(
            &url,
            &["--cluster", "c1", "--inventory", c1.to_str().unwrap()],
        )
        .unwrap();
        let before = etcd.revision().unwrap();
        match kvstore::write(&c, &o, &p, staged).await {
            Err(kvstore::PublishError::Other(e)) => {
                assert!(e.to_string().contains("another publish wrote"), "{e:#}")
            }
            other => panic!(
                "the stale publish was written: {:?}",
                other.map(|r| r.revision)
            ),
        }
        assert_eq!(etcd.revision().unwrap(), before, "nothing was written");
    });
}
