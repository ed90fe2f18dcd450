//! `cargo xtask <command>`: everything that needs more than one cargo call.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod layers;
#[cfg(test)]
mod readme;
mod toolchain;
mod vm;

#[derive(Parser)]
#[command(about = "Build, demo and test tasks for the router")]
pub(crate) struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent): rust-src,
    /// bpf-linker against rustc's LLVM.
    Setup,
    /// Build the kernel programs into target/bpf/router-ebpf.o.
    BuildEbpf,
    /// Build the kernel programs, then the daemon and test binaries.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// The demo: a two-cluster world in network namespaces, routerd on
    /// configs/, real clients by VIP; cleans up after itself.
    Demo {
        /// The same demo with the config in etcd: a 3-member etcd with TLS,
        /// `routerd publish`, and routerd following it (no config files).
        #[arg(long)]
        store: bool,
    },
    /// Formatting and clippy (-D warnings) for both workspaces.
    Lint,
    /// Benchmarks, side by side with the alternatives; writes docs/benchmarks.md.
    Bench {
        /// Arguments for rt-bench (e.g. --services 1,1000 --millis 1000).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// The Grafana dashboard (deploy/grafana/routerd.json) on real data:
    /// a minute of traffic through routerd, scraped by a real Prometheus;
    /// every panel's query drawn to docs/dashboard.svg.
    Dashboard {
        /// Arguments for rt-dashboard (e.g. --secs 30).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// The drills at full scale (load through VIPs while configs churn, the
    /// daemon is killed, endpoints die, hostile configs arrive, maps fill);
    /// writes docs/drills.md. `cargo xtask test` runs them reduced.
    Drill {
        /// Arguments for rt-drill (e.g. --only reload_churn, --ci).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Fuzz the config loader and the HTTP route engine (cargo-fuzz,
    /// libFuzzer with AddressSanitizer); installs cargo-fuzz if missing.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Targets (default: all): config_load, route_engine, client_hello.
        targets: Vec<String>,
    },
    /// The kernel tests inside qemu on Debian's packaged kernels (6.1, 6.12).
    VmTest {
        /// Kernel lines or packages to test (default: all pinned ones).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Test suites to run (tests/tests/<suite>.rs; default: all).
        #[arg(long = "suite")]
        suites: Vec<String>,
    },
    /// Everything CI runs: set-up, lint, build, unit and kernel tests on this
    /// kernel, then the kernel tests in VMs (6.1, 6.12, and 5.10 for the
    /// requirements checks).
    Test {
        /// Skip the VM suite (quicker local runs; CI runs it).
        #[arg(long)]
        no_vm: bool,
        /// Arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where `build-ebpf` leaves the object; router-user's build script embeds it.
pub fn ebpf_object() -> PathBuf {
    root().join("target/bpf/router-ebpf.o")
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn setup() -> Result<()> {
    toolchain::ensure_rust_src()?;
    toolchain::ensure_bpf_linker()?;
    toolchain::ensure_packages(&[
        ("ip", "iproute2"),
        ("curl", "curl"),
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "bind9-dnsutils"),
        // Drill 3 blackholes an endpoint with a DROP rule in a test namespace.
        ("iptables", "iptables"),
        // The metrics test scrapes routerd with a real Prometheus and lints
        // the exposition with promtool (installed, never started as a
        // service).
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        // routerd's etcd client compiles etcd's protos at build time.
        ("protoc", "protobuf-compiler"),
        // The etcd tests and the fleet drill start real members (never
        // as a service), and read them with etcdctl.
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
    ])?;
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bail!(
            "{what} loads BPF programs and creates network namespaces: run it as root (sudo -E cargo xtask ...)"
        );
    }
    Ok(())
}

fn ebpf_cargo(sub: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("router-ebpf"))
        .env("RUSTC_BOOTSTRAP", "1")
        // The same flags for build and clippy, so they share one cache.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .args([
            sub,
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root().join("target/ebpf"));
    cmd
}

/// The layer rule (ARCHITECTURE.md, "Layers").
fn lint_layers() -> Result<()> {
    let violations = layers::check(&root().join("router-user/src"))?;
    for v in &violations {
        eprintln!("xtask: {}: {}", v.file.display(), v.why);
    }
    if !violations.is_empty() {
        bail!(
            "{} import(s) break the layer rule (ARCHITECTURE.md, \"Layers\"): move the code \
             used to a lower layer, or the user to a higher one",
            violations.len()
        );
    }
    Ok(())
}

fn lint() -> Result<()> {
    let root = root();
    lint_layers()?;
    // Clippy builds router-user, whose build script refuses a stale kernel
    // object: bring it up to date first.
    build_ebpf()?;
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo")
        .current_dir(root.join("router-ebpf"))
        .args(["fmt", "--check"]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(ebpf_cargo("clippy").args(["--", "-D", "warnings"]))?;
    Ok(())
}

/// Free bytes on the filesystem that holds `path` (statvfs).
fn free_bytes(path: &std::path::Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context("statvfs");
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// What a fresh `cargo xtask test` writes under target/ (host build ~1.6 GiB,
/// static VM build ~3 GiB, kernels and initramfs ~1.5 GiB), with margin.
const TEST_DISK_NEEDED: u64 = 8 << 30;

fn test(no_vm: bool, rest: &[String]) -> Result<()> {
    require_root("the test suite")?;
    // A full disk shows up as a linker "Bus error" deep in the build; say so first.
    let free = free_bytes(&root())?;
    if free < TEST_DISK_NEEDED {
        eprintln!(
            "xtask: warning: {:.1} GiB free under {}; a fresh test run needs about {} GiB \
             (free space, or `cargo clean` an old target/)",
            free as f64 / (1u64 << 30) as f64,
            root().display(),
            TEST_DISK_NEEDED >> 30
        );
    }
    build(false)?;
    lint()?;
    let root = root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--workspace"])
        .env("ROUTER_BIN_DIR", root.join("target/debug"))
        .env("RUST_BACKTRACE", "0");
    if !rest.is_empty() {
        cmd.arg("--").args(rest);
    }
    run(&mut cmd)?;
    if no_vm {
        eprintln!("xtask: skipped the VM suite (--no-vm)");
        return Ok(());
    }
    vm::vm_test(&[], &[])
}

fn bench(rest: &[String]) -> Result<()> {
    require_root("the benchmarks")?;
    build(true)?;
    // The contenders: iptables DNAT rules of kube-proxy's shape, nginx and
    // haproxy from Debian's packages (installed, never started as services).
    toolchain::ensure_packages(&[
        ("iptables-restore", "iptables"),
        ("nginx", "nginx"),
        ("haproxy", "haproxy"),
        // routerd's L7 path profiled (perf record).
        ("perf", "linux-perf"),
    ])?;
    let root = root();
    std::fs::create_dir_all(root.join("docs"))?;
    run(Command::new(root.join("target/release/rt-bench"))
        .current_dir(&root)
        .arg("--out")
        .arg(root.join("docs/benchmarks.md"))
        .args(rest)
        .env("RUST_BACKTRACE", "0"))
}

fn dashboard(rest: &[String]) -> Result<()> {
    require_root("the dashboard picture")?;
    build(true)?;
    setup()?;
    let root = root();
    std::fs::create_dir_all(root.join("docs"))?;
    run(Command::new(root.join("target/release/rt-dashboard"))
        .current_dir(&root)
        .args(rest)
        .env("RUST_BACKTRACE", "0"))
}

fn drill(rest: &[String]) -> Result<()> {
    require_root("the drills")?;
    build(true)?;
    let root = root();
    std::fs::create_dir_all(root.join("docs"))?;
    run(Command::new(root.join("target/release/rt-drill"))
        .current_dir(&root)
        .arg("--out")
        .arg(root.join("docs/drills.md"))
        .args(rest)
        .env("RUST_BACKTRACE", "0")
        .env("ROUTERD_QUIET", "1"))
}

fn fuzz(secs: u64, targets: &[String]) -> Result<()> {
    // router-user's build needs the kernel object and protoc (set-up).
    build_ebpf()?;
    let root = root();
    let works = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
    if !works(Command::new("cargo").args(["fuzz", "--version"])) {
        eprintln!("xtask: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    // Seeds: every example config file.
    let seeds = root.join("fuzz/corpus/config_load");
    std::fs::create_dir_all(&seeds)?;
    let mut stack = vec![root.join("configs")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                let name = p.strip_prefix(&root)?.to_string_lossy().replace('/', "_");
                std::fs::copy(&p, seeds.join(name))?;
            }
        }
    }
    let all = ["config_load", "route_engine", "client_hello"];
    for t in all
        .iter()
        .filter(|t| targets.is_empty() || targets.iter().any(|x| x == *t))
    {
        eprintln!("xtask: fuzzing {t} for {secs} s");
        // cargo-fuzz passes -Z flags (sanitizers); stable rustc accepts them
        // with RUSTC_BOOTSTRAP, so no nightly toolchain is needed.
        run(Command::new("cargo")
            .current_dir(root.join("fuzz"))
            .env("RUSTC_BOOTSTRAP", "1")
            .args([
                "fuzz",
                "run",
                t,
                "--",
                &format!("-max_total_time={secs}"),
                "-rss_limit_mb=4096",
            ]))?;
    }
    Ok(())
}

fn demo(store: bool) -> Result<()> {
    require_root("the demo")?;
    build(false)?;
    let root = root();
    run(Command::new(root.join("target/debug/rt-demo"))
        .current_dir(&root)
        .args(["--config", "configs"])
        .args(store.then_some("--store"))
        .env("RUST_BACKTRACE", "0")
        .env("ROUTERD_QUIET", "1"))
}

fn build_ebpf() -> Result<()> {
    setup()?;
    let root = root();
    let target_dir = root.join("target/ebpf");
    // RUSTC_BOOTSTRAP scoped to this one cargo call: stable rustc only honours
    // -Z build-std with it. --btf emits .BTF/.BTF.ext, which the BTF map
    // definitions (and socket-local storage in particular) require.
    run(&mut ebpf_cargo("build"))?;
    let built = target_dir.join("bpfel-unknown-none/release/router-ebpf");
    let dest = ebpf_object();
    std::fs::create_dir_all(dest.parent().unwrap())?;
    let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Only touch the file when it changed, so router-user is not rebuilt for nothing.
    if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(&dest, &bytes)?;
    }
    // What it was built from: router-user's build script refuses a stale object.
    let stamp = router_common::inputs::stamp_path(&dest);
    let fp = router_common::inputs::fingerprint(&root)?.to_string();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(fp.as_str()) {
        std::fs::write(&stamp, fp)?;
    }
    eprintln!("xtask: eBPF object at {}", dest.display());
    Ok(())
}

fn build(release: bool) -> Result<()> {
    build_ebpf()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Build { release } => build(release),
        Cmd::Demo { store } => demo(store),
        Cmd::Lint => lint(),
        Cmd::VmTest { kernels, suites } => {
            build_ebpf()?;
            vm::vm_test(&kernels, &suites)
        }
        Cmd::Bench { rest } => bench(&rest),
        Cmd::Drill { rest } => drill(&rest),
        Cmd::Dashboard { rest } => dashboard(&rest),
        Cmd::Fuzz { secs, targets } => fuzz(secs, &targets),
        Cmd::Test { no_vm, rest } => test(no_vm, &rest),
    }
}
