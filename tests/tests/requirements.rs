//! What routerd needs from the host, and that it says so plainly when
//! something is missing. Runs on the host and in every VM kernel, including
//! one too old for the datapath (5.10), where the daemon must refuse with a
//! message naming the missing feature and the version that has it.
use std::process::Command;

use router_tests::*;

fn config(world: &World) -> std::path::PathBuf {
    let y = Config::new()
        .node("c1", "east", "e1")
        .with(web("c1", "east", "web", &[("10.1.0.1", "e1", true)]))
        .with(
            VirtualDestination::new("web", "web.t.mesh")
                .app("web")
                .port(8080, "HTTP"),
        );
    world
        .dir
        .write("config/web.yaml", &y.yaml())
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `routerd run` on `config` with this cgroup and pin root, in the
/// foreground: did it succeed, and what did it say.
fn run_routerd(config: &std::path::Path, cgroup: &str, pins: &str) -> (bool, String) {
    let out = Command::new(bin("routerd"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--cgroup", cgroup, "--pin-root", pins, "--no-watch"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[test]
fn a_cgroup_that_is_not_cgroup_v2_is_refused_with_a_clear_message() {
    require_root();
    let world = World::new(&[]).unwrap();
    let cfg = config(&world);
    let pins = format!("/sys/fs/bpf/{}", world.tag);
    let (ok, err) = run_routerd(&cfg, "/tmp", &pins);
    assert!(!ok);
    assert!(
        err.contains("/tmp is not on a cgroup v2 filesystem"),
        "{err}"
    );
    assert!(
        !std::path::Path::new(&pins).join("v1").exists(),
        "nothing left behind"
    );
}

#[test]
fn a_pin_root_outside_bpffs_is_refused_with_a_clear_message() {
    require_root();
    let world = World::new(&[]).unwrap();
    let cfg = config(&world);
    let pins = world.dir.path.join("pins");
    std::fs::create_dir_all(&pins).unwrap();
    let (ok, err) = run_routerd(
        &cfg,
        &world.cgroup.path.display().to_string(),
        &pins.display().to_string(),
    );
    assert!(!ok);
    assert!(
        err.contains("is not on a bpffs") && err.contains("--pin-root"),
        "{err}"
    );
}

#[test]
fn the_datapath_loads_here_or_names_the_missing_kernel_feature() {
    require_root();
    let world = World::new(&[Listen::tcp("10.1.0.1:8080", "web")]).unwrap();
    let cfg = config(&world);
    if kernel_at_least(5, 18) {
        let routerd = Routerd::start(&world.tag, &cfg, &world.cgroup.path, &["--no-watch"])
            .expect("routerd starts on >= 5.18");
        let plan = plan(&cfg).unwrap();
        let vip = vip(&plan, "web.t.mesh", 8080, false);
        let p = &world.probe(&["tcp", &vip.to_string()]).unwrap()[0];
        assert_eq!(
            p.answer.as_ref().map(|a| a.id.as_str()),
            Some("web"),
            "{p:?}"
        );
        drop(routerd);
    } else {
        let pins = format!("/sys/fs/bpf/{}", world.tag);
        let (ok, err) = run_routerd(&cfg, &world.cgroup.path.display().to_string(), &pins);
        let _ = router_user::datapath::remove(&router_user::datapath::Pins::new(&pins));
        eprintln!("routerd on this kernel said: {err}");
        assert!(!ok, "routerd must refuse to run on this kernel");
        assert!(
            err.contains("routerd needs Linux 5.18 or later") && err.contains("lacks bpf_"),
            "{err}"
        );
        // Nothing was attached: VIPs are simply not rewritten.
        let p = &world.probe(&["tcp", "240.240.1.1:8080"]).unwrap()[0];
        assert_eq!(p.errno, Some(101), "{p:?}");
    }
}
