//! `cargo xtask vm-test`: the kernel-facing integration tests inside qemu,
//! on Debian's packaged kernels, so the router is proven on more than the
//! host's kernel.
//!
//! Per kernel: fetch the pinned `linux-image-*-cloud-amd64` package with apt
//! (a private apt state under target/vm/apt, so the host's sources are not
//! touched), build the test binaries statically, pack an initramfs (busybox,
//! iproute2's `ip`, curl, the veth module, the binaries, an init script),
//! boot qemu under TCG with no network device, run the suite one test at a
//! time, and read the result from the serial console. The same test code as
//! on the host; nothing is duplicated for the VM.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{root, run, toolchain};

/// A kernel line, the exact package we pin, and how to find a newer one of
/// the same line if a point release removed the pinned package from the mirror.
pub struct KernelSpec {
    pub line: &'static str,
    pub package: &'static str,
    /// Regex (apt-cache search --names-only) for packages of the same line.
    pub same_line: &'static str,
    /// Test binaries to run (None: all). Kernels too old for the datapath run
    /// only the requirements suite, which checks that routerd says so.
    pub tests: Option<&'static [&'static str]>,
}

pub const KERNELS: [KernelSpec; 3] = [
    KernelSpec {
        line: "6.1",
        package: "linux-image-6.1.0-48-cloud-amd64",
        same_line: "^linux-image-6\\.1\\.0-[0-9]+-cloud-amd64$",
        tests: None,
    },
    KernelSpec {
        line: "6.12",
        package: "linux-image-6.12.90+deb12-cloud-amd64",
        same_line: "^linux-image-6\\.12\\.[0-9]+\\+deb12-cloud-amd64$",
        tests: None,
    },
    KernelSpec {
        line: "5.10",
        package: "linux-image-5.10.0-46-cloud-amd64",
        same_line: "^linux-image-5\\.10\\.0-[0-9]+-cloud-amd64$",
        tests: Some(&["requirements"]),
    },
];

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
";

/// Minutes a kernel gets to boot and run the suite under TCG.
const TIMEOUT: Duration = Duration::from_secs(25 * 60);

fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

struct Apt {
    dir: PathBuf,
    updated: bool,
}

impl Apt {
    fn new() -> Result<Self> {
        let dir = vm_dir().join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        std::fs::write(dir.join("sources.list"), SOURCES)?;
        Ok(Apt {
            dir,
            updated: false,
        })
    }
    fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            "-oDir::Etc::SourceParts=-".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oAPT::Sandbox::User=root".into(),
        ]
    }
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            run(Command::new("apt-get")
                .args(self.opts())
                .args(["update", "-qq"]))
            .context("apt-get update (private state under target/vm/apt)")?;
            self.updated = true;
        }
        Ok(())
    }
    fn output(&self, tool: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(tool).args(self.opts()).args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
    /// The pinned package, or the newest of its line if the mirror moved on.
    fn resolve(&mut self, k: &KernelSpec) -> Result<String> {
        self.update()?;
        if !self
            .output("apt-cache", &["madison", k.package])?
            .trim()
            .is_empty()
        {
            return Ok(k.package.to_string());
        }
        let found = self.output("apt-cache", &["search", "--names-only", k.same_line])?;
        let mut names: Vec<String> = found
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect();
        names.sort_by_key(|n| version_key(n));
        let newest = names.pop().with_context(|| {
            format!(
                "no {} cloud kernel on the mirror (looked for {} and {})",
                k.line, k.package, k.same_line
            )
        })?;
        eprintln!(
            "xtask: the pinned {} is no longer on the mirror (a point release moved on); using {newest}. \
             Update the pin in xtask/src/vm.rs",
            k.package
        );
        Ok(newest)
    }
    fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        let mut cmd = Command::new("apt-get");
        cmd.current_dir(into)
            .args(self.opts())
            .args(["download", "-qq", package]);
        run(&mut cmd)?;
        std::fs::read_dir(into)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download produced no .deb")
    }
}

/// Numeric parts of a package name, for "newest" ordering.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A kernel unpacked under target/vm/kernels/<package>/.
struct Kernel {
    package: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

fn fetch_kernel(apt: &mut Apt, k: &KernelSpec) -> Result<Kernel> {
    let cached = |package: &str| -> Option<Kernel> {
        let dir = vm_dir().join("kernels").join(package);
        let boot = dir.join("root/boot");
        let vmlinuz = std::fs::read_dir(&boot)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })?;
        let release = vmlinuz
            .file_name()?
            .to_string_lossy()
            .trim_start_matches("vmlinuz-")
            .to_string();
        Some(Kernel {
            package: package.to_string(),
            vmlinuz,
            modules: dir.join("root/lib/modules").join(release),
        })
    };
    if let Some(k) = cached(k.package) {
        return Ok(k);
    }
    let package = apt.resolve(k)?;
    if let Some(k) = cached(&package) {
        return Ok(k);
    }
    let dir = vm_dir().join("kernels").join(&package);
    let deb = apt.download(&package, &dir)?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root")))?;
    let _ = std::fs::remove_file(deb);
    cached(&package).with_context(|| format!("{package} has no boot/vmlinuz-*"))
}

/// Static builds of routerd, the test helpers and the integration tests.
struct Binaries {
    bins: Vec<PathBuf>,
    tests: Vec<PathBuf>,
}

fn build_static() -> Result<Binaries> {
    let root = root();
    let target_dir = root.join("target/vm-build");
    let flags = "-C target-feature=+crt-static";
    let target = "x86_64-unknown-linux-gnu";
    // An explicit --target keeps the flag away from build scripts and proc macros.
    run(Command::new("cargo")
        .current_dir(&root)
        .env("RUSTFLAGS", flags)
        // No debug info: it would make the initramfs ~1 GB (it unpacks into RAM).
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .args([
            "build",
            "--target",
            target,
            "-p",
            "router-user",
            "-p",
            "router-tests",
            "--bins",
            "--target-dir",
        ])
        .arg(&target_dir))?;
    let out = Command::new("cargo")
        .current_dir(&root)
        .env("RUSTFLAGS", flags)
        // No debug info: it would make the initramfs ~1 GB (it unpacks into RAM).
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .args([
            "test",
            "--no-run",
            "--target",
            target,
            "-p",
            "router-tests",
            "--tests",
            "--message-format=json",
            "--target-dir",
        ])
        .arg(&target_dir)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the static test binaries failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_integration = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "test"))
            && !HOST_ONLY.iter().any(|n| v["target"]["name"] == *n);
        if let (true, Some(exe)) = (is_integration, v["executable"].as_str()) {
            tests.push(PathBuf::from(exe));
        }
    }
    if tests.is_empty() {
        bail!("found no integration test executables in cargo's output");
    }
    let dir = target_dir.join(target).join("debug");
    let bins = ["routerd", "rt-backend", "rt-probe"]
        .iter()
        .map(|b| dir.join(b))
        .collect();
    Ok(Binaries { bins, tests })
}

/// Integration tests that run on the host only. The drills hold timing
/// bounds under load (failover within interval x threshold + timeout + slack)
/// that TCG's 10-50x slowdown would turn into noise; the kernel behaviour they
/// rely on is covered in the VMs by the l4, lifecycle and health suites.
///
/// `metrics` runs a real Prometheus, and `etcd` a real etcd cluster, which
/// the VM images do not carry; what `etcd` tests is the control plane in
/// user space (the kernel side it feeds is the l4 suite's).
const HOST_ONLY: &[&str] = &["drills", "metrics", "etcd"];

/// Copy `bin` to `root/<dest>` and every shared library it needs (from ldd)
/// to the same path under `root`.
fn copy_with_libs(bin: &Path, dest: &str, root: &Path) -> Result<()> {
    let target = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap())?;
    std::fs::copy(bin, &target).with_context(|| format!("copying {}", bin.display()))?;
    let ldd = Command::new("ldd").arg(bin).output()?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(p) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let to = root.join(p.trim_start_matches('/'));
        if !to.exists() {
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(p, &to).with_context(|| format!("copying {p}"))?;
        }
    }
    Ok(())
}

fn which(cmd: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(cmd))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("`{cmd}` is not installed"))
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# What udev/systemd would provide (tests use `curl -D /dev/stderr`).
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /sys/fs/cgroup /sys/fs/bpf /run/netns
mount -t cgroup2 none /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
for m in /lib/modules/*.ko; do insmod "$m" || echo "VMTEST cannot load $m"; done
# What a service manager gives a daemon (LimitNOFILE); the kernel's default
# hard limit for init is 4096.
ulimit -n 65536
# Tests that size their load by the machine's speed: TCG is ~20x slower.
export ROUTER_TEST_SLOW=1
export ROUTER_BIN_DIR=/bin RUST_BACKTRACE=0 ROUTERD_QUIET=1 HOME=/tmp
echo "VMTEST kernel $(uname -r)"
status=0
for t in /tests/*; do
  echo "VMTEST running $(basename "$t")"
  "$t" --test-threads 1 --nocapture || status=1
done
echo "VMTEST RESULT $status"
poweroff -f
"#;

fn build_initramfs(
    kernel: &Kernel,
    spec: &KernelSpec,
    bins: &Binaries,
    work: &Path,
    suites: &[String],
) -> Result<PathBuf> {
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "tests",
        "lib/modules",
        "etc",
        "var",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    std::fs::copy(which("busybox")?, root.join("bin/busybox"))?;
    copy_with_libs(&which("ip")?, "/usr/sbin/ip", &root)?;
    copy_with_libs(&which("curl")?, "/usr/bin/curl", &root)?;
    // The DNS tests: a real resolver, dig, and glibc's getent.
    copy_with_libs(&which("dnsmasq")?, "/usr/sbin/dnsmasq", &root)?;
    copy_with_libs(&which("dig")?, "/usr/bin/dig", &root)?;
    copy_with_libs(&which("getent")?, "/usr/bin/getent", &root)?;
    // The workloads tests: what listens in a pod's namespace, and the
    // shipped CNI plugin (a busybox sh script).
    copy_with_libs(&which("ss")?, "/usr/bin/ss", &root)?;
    for (file, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/nsswitch.conf", "hosts: files dns\n"),
        ("etc/hosts", "127.0.0.1 localhost\n"),
        // `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over it.
        ("etc/resolv.conf", ""),
    ] {
        std::fs::write(root.join(file), text)?;
    }
    for b in &bins.bins {
        std::fs::copy(b, root.join("bin").join(b.file_name().unwrap()))?;
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni/routerd-workload"),
        root.join("bin/routerd-workload"),
    )?;
    for t in &bins.tests {
        // l4-<hash> -> l4
        let name = t.file_name().unwrap().to_string_lossy();
        let short = name.rsplit_once('-').map(|(n, _)| n).unwrap_or(&name);
        if spec.tests.is_some_and(|only| !only.contains(&short))
            || (!suites.is_empty() && !suites.iter().any(|s| s == short))
        {
            continue;
        }
        std::fs::copy(t, root.join("tests").join(short))?;
    }
    // The modules the tests need, in load order (init insmods them in name
    // order; there is no modprobe to autoload them): veth for the test
    // namespaces, the sock_diag handlers for closing connections to removed
    // endpoints. 6.12 ships modules xz-compressed.
    for (i, m) in [
        "drivers/net/veth",
        "net/ipv4/inet_diag",
        "net/ipv4/tcp_diag",
        "net/ipv4/udp_diag",
    ]
    .iter()
    .enumerate()
    {
        let src = ["ko", "ko.xz"]
            .iter()
            .map(|ext| kernel.modules.join(format!("kernel/{m}.{ext}")))
            .find(|p| p.exists())
            .with_context(|| format!("the kernel package has no {m} module"))?;
        let name = m.rsplit('/').next().unwrap_or(m);
        let dest = root.join(format!("lib/modules/{i}-{name}.ko"));
        if src.extension().is_some_and(|e| e == "xz") {
            let out = Command::new("xz").arg("-dc").arg(&src).output()?;
            std::fs::write(&dest, out.stdout)?;
        } else {
            std::fs::copy(&src, &dest)?;
        }
    }
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let image = work.join("initramfs.gz");
    run(Command::new("sh").current_dir(&root).arg("-c").arg(format!(
        "find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > {}",
        image.display()
    )))?;
    Ok(image)
}

#[derive(Debug)]
pub enum Outcome {
    Passed { tests: u32 },
    Failed { passed: u32, failed: u32 },
    Crashed(String),
}

/// Boot and read the console; the log goes to `log`.
fn boot(kernel: &Kernel, initramfs: &Path, log: &Path) -> Result<Outcome> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut file = std::fs::File::create(log)?;
    let deadline = Instant::now() + TIMEOUT;
    let (mut passed, mut failed, mut result, mut panic) = (0u32, 0u32, None, None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(5))) {
            Ok(line) => {
                writeln!(file, "{line}")?;
                if let Some(rest) = line.split("test result: ").nth(1) {
                    let num = |tag: &str| {
                        rest.split(';')
                            .find(|p| p.trim_end().ends_with(tag))
                            .and_then(|p| p.split_whitespace().rev().nth(1))
                            .and_then(|n| n.parse::<u32>().ok())
                            .unwrap_or(0)
                    };
                    passed += num("passed");
                    failed += num("failed");
                }
                if line.contains("Kernel panic") && panic.is_none() {
                    panic = Some(line.trim().to_string());
                }
                if let Some(r) = line.trim().strip_prefix("VMTEST RESULT ") {
                    result = Some(r.trim() == "0");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Outcome::Crashed(format!(
                        "timed out after {} minutes",
                        TIMEOUT.as_secs() / 60
                    )));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.wait();
    Ok(match (result, panic) {
        (_, Some(p)) => Outcome::Crashed(p),
        (None, None) => Outcome::Crashed("the guest stopped without a result line".into()),
        (Some(true), None) if failed == 0 && passed > 0 => Outcome::Passed { tests: passed },
        (Some(_), None) => Outcome::Failed {
            passed,
            failed: failed.max(1),
        },
    })
}

pub fn vm_test(selected: &[String], suites: &[String]) -> Result<()> {
    toolchain::ensure_packages(&[
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "bind9-dnsutils"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
        ("xz", "xz-utils"),
        ("curl", "curl"),
        ("ip", "iproute2"),
    ])?;
    let specs: Vec<&KernelSpec> = KERNELS
        .iter()
        .filter(|k| selected.is_empty() || selected.iter().any(|s| s == k.line || s == k.package))
        .collect();
    if specs.is_empty() {
        let known: BTreeSet<&str> = KERNELS.iter().flat_map(|k| [k.line, k.package]).collect();
        bail!(
            "no kernel matches {selected:?}; known: {}",
            known.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let bins = build_static()?;
    let mut apt = Apt::new()?;
    let mut rows = Vec::new();
    for k in specs {
        let kernel = fetch_kernel(&mut apt, k)?;
        let work = vm_dir().join(&kernel.package);
        std::fs::create_dir_all(&work)?;
        let image = build_initramfs(&kernel, k, &bins, &work, suites)?;
        let log = work.join("console.log");
        eprintln!(
            "xtask: booting {} under TCG (console: {})",
            kernel.package,
            log.display()
        );
        let t = Instant::now();
        let outcome = boot(&kernel, &image, &log)?;
        let scope = match k.tests {
            Some(only) => format!(" ({} only)", only.join(", ")),
            None => String::new(),
        };
        rows.push((
            format!("{}{scope}", kernel.package),
            outcome,
            t.elapsed(),
            log,
        ));
    }
    println!("\n| kernel | result | time |");
    println!("|---|---|---:|");
    let mut ok = true;
    for (package, outcome, took, log) in &rows {
        let text = match outcome {
            Outcome::Passed { tests } => format!("passed ({tests} tests)"),
            Outcome::Failed { passed, failed } => {
                ok = false;
                format!(
                    "FAILED ({failed} failed, {passed} passed); console log: {}",
                    log.display()
                )
            }
            Outcome::Crashed(why) => {
                ok = false;
                format!("DID NOT FINISH: {why}; console log: {}", log.display())
            }
        };
        println!("| {package} | {text} | {:.0} s |", took.as_secs_f64());
    }
    if !ok {
        bail!("the VM suite failed on at least one kernel (see the console logs above)");
    }
    Ok(())
}
