//! The kernel-facing test harness, shared by the integration tests, the VM
//! suite and the demo. Real parts only: network namespaces made with `ip`,
//! a child cgroup v2 per test, the real `routerd` binary loading the real
//! programs, real backends (`rt-backend`) and clients (`rt-probe`, curl).
//!
//! Safety rules it enforces:
//! - VIPs are dialled only from a namespace with no default route (`node`),
//!   so a connection the router does not rewrite fails locally.
//! - Programs attach to a per-test child cgroup, never the cgroup2 root; the
//!   harness never moves itself into it (clients join it before `exec`).
//! - Every namespace, cgroup, pinned object and temp dir is removed in `Drop`
//!   (also when a test panics), and leftovers of killed test runs are swept
//!   at the start of the next one.
pub mod churn;
pub mod drill;
pub mod etcd;
pub mod fleet;
pub mod grpc;
pub mod prom;

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Condvar, Mutex, Once,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use router_user::{events::Event, inspect::Report, testing::*};
pub use serde_json::json;

/// What a backend answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Backend identity.
    pub id: String,
    /// Address the backend's socket is bound to.
    pub local: String,
    /// The client as the backend sees it.
    pub peer: String,
    /// HTTP path (with the query), or the UDP payload.
    pub path: String,
    /// HTTP method and request headers (lower-case names; repeated headers
    /// joined with ", ").
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// HTTP version the backend saw ("HTTP/1.1", "HTTP/2.0").
    #[serde(default)]
    pub version: String,
}

/// One client attempt, as `rt-probe` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub ok: bool,
    pub errno: Option<i32>,
    pub error: Option<String>,
    /// The peer the application sees: getpeername(), or a UDP reply's source.
    pub peer: Option<String>,
    pub answer: Option<Answer>,
    /// HTTP status, response headers (lower-case) and body when it is not a
    /// backend's JSON answer (`rt-probe http`).
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

/// One connect-path measurement, as `rt-probe bench` prints it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bench {
    pub connects: u64,
    pub errors: u64,
    /// Connections per second.
    pub rate: f64,
    /// Connect latency percentiles, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub first_error: Option<String>,
}

impl Bench {
    /// The figures for latencies `lat_ns` (nanoseconds, any order) measured
    /// over `secs`.
    pub fn from_latencies(
        mut lat_ns: Vec<u64>,
        secs: f64,
        errors: u64,
        first_error: Option<String>,
    ) -> Bench {
        lat_ns.sort_unstable();
        let pct = |p: f64| {
            lat_ns
                .get(((lat_ns.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        Bench {
            connects: lat_ns.len() as u64,
            errors,
            rate: lat_ns.len() as f64 / secs,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            first_error,
        }
    }
}

/// What `rt-probe churn` saw: new connections (an HTTP GET each) to VIPs,
/// each answer checked against the endpoints allowed to give it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    pub attempted: u64,
    pub ok: u64,
    /// No answer: refused, reset, timed out.
    pub failed: u64,
    /// Answered by an endpoint that does not serve that VIP.
    pub misrouted: u64,
    /// Answers per endpoint id.
    pub by_id: std::collections::BTreeMap<String, u64>,
    /// Unix time (ms) at which the first and the last failed connection
    /// was attempted.
    pub first_failure_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    /// The first few failures and misroutes, with what happened.
    pub samples: Vec<String>,
}

/// Milliseconds since the Unix epoch (comparable across processes).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Pin the calling process to one CPU (benchmarks keep client and server apart).
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// Scale a load for the machine: `n` here, `n / 10` where the tests run
/// under emulation (the VM suite sets `ROUTER_TEST_SLOW`: TCG is roughly
/// twenty times slower).
pub fn scaled(n: usize) -> usize {
    if std::env::var_os("ROUTER_TEST_SLOW").is_some() {
        (n / 10).max(1)
    } else {
        n
    }
}

/// Fail loudly where the tests must run (CI is root with CAP_BPF).
pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        uid, 0,
        "kernel tests load BPF programs, create network namespaces and cgroups: run them as root \
         (`sudo cargo xtask test`). They are not skipped."
    );
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        if let Err(e) = sweep_stale() {
            eprintln!("warning: sweeping leftovers of earlier runs failed: {e:#}");
        }
    });
}

/// Directory holding the workspace's binaries (routerd, rt-backend, rt-probe):
/// `$ROUTER_BIN_DIR`, or the profile directory the running test lives in.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ROUTER_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The shipped CNI plugin (`deploy/cni/routerd-workload`): beside the
/// binaries in a VM, else in the source tree.
pub fn cni_plugin() -> PathBuf {
    let beside = bin_dir().join("routerd-workload");
    if beside.exists() {
        return beside;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni/routerd-workload")
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (`cargo xtask test` does: \
         `cargo build --workspace --bins`), or set ROUTER_BIN_DIR",
        p.display()
    );
    p
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name: `rt<pid hex>x<n>`. Kept short because interface names
/// are limited to 15 bytes.
pub fn unique() -> String {
    format!(
        "rt{:x}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn pid_of(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("rt")?;
    let (hex, _) = rest.split_once('x')?;
    i32::from_str_radix(hex, 16).ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Remove namespaces, cgroups, pins and temp dirs left by test processes
/// that no longer exist (killed runs cannot clean up after themselves).
pub fn sweep_stale() -> Result<()> {
    let mine = |name: &str| pid_of(name).is_some_and(|p| !alive(p));
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if mine(name) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    let cg = router_user::datapath::sys::cgroup2_mount()?;
    for e in std::fs::read_dir(&cg)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if mine(&name) {
            drop(Cgroup { path: e.path() });
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if mine(&name) {
                let _ = router_user::datapath::remove(&router_user::datapath::Pins::new(e.path()));
            }
        }
    }
    for e in std::fs::read_dir(std::env::temp_dir())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if mine(&name) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }
    /// Set a sysctl in the namespace (`net.core.somaxconn=65535`).
    pub fn sysctl(&self, setting: &str) -> Result<()> {
        run(Command::new("ip").args(["netns", "exec", &self.name, "sysctl", "-qw", setting]))
            .map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A child cgroup v2 directory; on drop its processes are killed and it is removed.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(name: &str) -> Result<Self> {
        let path = router_user::datapath::sys::cgroup2_mount()?.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// Make `cmd` join this cgroup before it execs (the harness itself never moves).
    pub fn enter(&self, cmd: &mut Command) {
        let procs = std::ffi::CString::new(
            self.path
                .join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: only async-signal-safe calls (open, write, close, getpid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut buf = [0u8; 16];
                let mut n = libc::getpid() as u32;
                let mut i = buf.len();
                loop {
                    i -= 1;
                    buf[i] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let w = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
                libc::close(fd);
                if w < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    /// Root's, writable by root only whatever the umask (routerd refuses
    /// config that others could write).
    pub fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        set_mode(&path, 0o755)?;
        Ok(TempDir { path })
    }
    pub fn write(&self, rel: &str, text: &str) -> Result<PathBuf> {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
            set_mode(parent, 0o755)?;
        }
        // Write then rename, as an operator's tooling would: readers never see half a file.
        let tmp = p.with_extension("tmp~");
        std::fs::write(&tmp, text)?;
        set_mode(&tmp, 0o644)?;
        std::fs::rename(&tmp, &p)?;
        Ok(p)
    }
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `/etc/netns/<name>/`: files `ip netns exec` bind-mounts over `/etc` for
/// processes in that namespace. Removed on drop.
pub struct EtcNetns(pub PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pod: a network namespace of its own (routes to the world only), its
/// own cgroup under the test's, its own resolv.conf ([`World::pod`]).
/// Fields drop in order: the cgroup's processes are killed before the
/// namespace goes.
pub struct PodNs {
    pub name: String,
    pub cgroup: Cgroup,
    pub ns: Netns,
    _etc: EtcNetns,
}

impl PodNs {
    /// The path routerd is handed (`routerd workload add --netns`).
    pub fn netns(&self) -> String {
        format!("/var/run/netns/{}", self.ns.name)
    }

    /// `program` run inside the pod: its namespace and its cgroup.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name]).arg(program);
        self.cgroup.enter(&mut cmd);
        cmd
    }

    /// `dig` for `name` through the pod's resolver (captured when routerd
    /// serves the pod): its whole output.
    pub fn dig(&self, name: &str) -> String {
        let out = self
            .cmd("dig")
            .args(["+time=1", "+tries=2", name])
            .output()
            .expect("dig runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An HTTP GET through curl: status code (0: no connection) and body.
    pub fn get(&self, url: &str) -> (u16, String) {
        let out = self
            .cmd("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
            .output()
            .expect("curl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The TCP and UDP sockets listening in the pod's namespace (`ss`).
    pub fn listening(&self) -> String {
        run(Command::new("ip").args(["netns", "exec", &self.ns.name, "ss", "-Hltun"]))
            .unwrap_or_default()
    }
}

/// A process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Send it SIGHUP (dnsmasq: read the hosts files again).
    pub fn hangup(&self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backend socket to serve in the world namespace.
#[derive(Clone, Debug)]
pub struct Listen {
    /// `tcp` (HTTP/1.1), `tls` (HTTPS, self-signed), `udp` (echo), `sink`
    /// (accept and drop, for benchmarks) or `hung` (listens, never accepts:
    /// SYNs time out).
    pub proto: &'static str,
    pub addr: SocketAddr,
    pub id: String,
}

impl Listen {
    pub fn new(proto: &'static str, addr: SocketAddr, id: &str) -> Self {
        Listen {
            proto,
            addr,
            id: id.into(),
        }
    }
    pub fn tcp(addr: &str, id: &str) -> Self {
        Listen::new("tcp", addr.parse().expect("socket address"), id)
    }
    pub fn udp(addr: &str, id: &str) -> Self {
        Listen::new("udp", addr.parse().expect("socket address"), id)
    }
    pub fn sink(addr: &str, id: &str) -> Self {
        Listen::new("sink", addr.parse().expect("socket address"), id)
    }
    /// HTTPS with a self-signed certificate for `name` (rt-backend writes
    /// it to its `--cert-dir` as `<name>.pem`).
    pub fn tls(addr: &str, name: &str) -> Self {
        Listen::new("tls", addr.parse().expect("socket address"), name)
    }
    /// gRPC (HTTP/2): [`grpc::SAY`].
    pub fn grpc(addr: &str, id: &str) -> Self {
        Listen::new("grpc", addr.parse().expect("socket address"), id)
    }
}

/// Two namespaces joined by a veth pair: `node` (where clients run; routes to
/// 10.0.0.0/8 and fd00::/8 only, no default route) and `world` (where every
/// backend address lives, on its loopback), plus the test's cgroup and
/// a temp dir.
pub struct World {
    pub tag: String,
    /// `/etc/netns/<node>/` (the node's resolv.conf), removed on drop.
    pub etc: EtcNetns,
    pub backends: Option<Proc>,
    pub cgroup: Cgroup,
    pub node: Netns,
    pub world: Netns,
    pub dir: TempDir,
}

impl World {
    pub fn new(listens: &[Listen]) -> Result<Self> {
        let tag = unique();
        let dir = TempDir::new(&tag)?;
        let node = Netns::new(format!("{tag}n"))?;
        let world = Netns::new(format!("{tag}w"))?;
        let cgroup = Cgroup::new(&tag)?;
        let (va, vb) = (format!("{tag}a"), format!("{tag}b"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &node.name])?;
        ip(&["link", "set", &vb, "netns", &world.name])?;
        node.ip(&["addr", "add", "10.255.255.1/30", "dev", &va])?;
        node.ip(&["-6", "addr", "add", "fd00:ffff::1/64", "dev", &va, "nodad"])?;
        node.ip(&["link", "set", &va, "up"])?;
        node.ip(&["route", "add", "10.0.0.0/8", "via", "10.255.255.2"])?;
        node.ip(&["-6", "route", "add", "fd00::/8", "via", "fd00:ffff::2"])?;
        world.ip(&["addr", "add", "10.255.255.2/30", "dev", &vb])?;
        world.ip(&["-6", "addr", "add", "fd00:ffff::2/64", "dev", &vb, "nodad"])?;
        world.ip(&["link", "set", &vb, "up"])?;
        // Backend addresses go on the world's loopback: local delivery, no
        // extra kernel module (VM kernels ship `dummy` as a module).
        let mut addrs: Vec<IpAddr> = listens.iter().map(|l| l.addr.ip()).collect();
        addrs.sort();
        addrs.dedup();
        for a in addrs {
            match a {
                IpAddr::V4(v4) => {
                    assert!(
                        v4.octets()[0] == 10,
                        "test backends live in 10.0.0.0/8 (got {a})"
                    );
                    world.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
                }
                IpAddr::V6(v6) => {
                    assert!(
                        v6.octets()[0] == 0xfd,
                        "test backends live in fd00::/8 (got {a})"
                    );
                    world.ip(&[
                        "-6",
                        "addr",
                        "add",
                        &format!("{a}/128"),
                        "dev",
                        "lo",
                        "nodad",
                    ])?;
                }
            }
        }
        let etc = EtcNetns(PathBuf::from("/etc/netns").join(&node.name));
        let mut w = World {
            etc,
            tag,
            backends: None,
            cgroup,
            node,
            world,
            dir,
        };
        if !listens.is_empty() {
            w.start_backends(listens)?;
        }
        Ok(w)
    }

    pub fn start_backends(&mut self, listens: &[Listen]) -> Result<()> {
        self.start_backends_with(listens, &[])
    }

    /// Start `rt-backend` with extra arguments (e.g. `--cpu 0`).
    pub fn start_backends_with(&mut self, listens: &[Listen], extra: &[&str]) -> Result<()> {
        self.backends = Some(self.spawn_backend(listens, extra)?);
        Ok(())
    }

    /// One more `rt-backend` process the caller owns (kill it to take its
    /// endpoints down). Its addresses must already be on the world's loopback.
    pub fn spawn_backend(&self, listens: &[Listen], extra: &[&str]) -> Result<Proc> {
        self.spawn_backend_in(&self.world, listens, extra)
    }

    /// [`World::spawn_backend`] in namespace `ns` (a pod serving on its
    /// own address).
    pub fn spawn_backend_in(&self, ns: &Netns, listens: &[Listen], extra: &[&str]) -> Result<Proc> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(bin("rt-backend"))
            .arg("--cert-dir")
            .arg(&self.dir.path)
            .args(extra);
        for l in listens {
            cmd.arg("--listen")
                .arg(format!("{}:{}:{}", l.proto, l.addr, l.id));
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting rt-backend")?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("rt-backend did not start (printed {line:?})");
        }
        Ok(Proc(child))
    }

    /// The self-signed certificate of a `tls` backend named `name`.
    pub fn backend_cert(&self, name: &str) -> PathBuf {
        self.dir
            .path
            .join(format!("{}.pem", name.replace('/', "_")))
    }

    /// Point the node namespace's resolv.conf at `nameserver`.
    pub fn resolv_conf(&self, nameserver: &str) -> Result<()> {
        std::fs::create_dir_all(&self.etc.0)?;
        std::fs::write(
            self.etc.0.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n"),
        )?;
        Ok(())
    }

    /// A real resolver (dnsmasq) in the world namespace on `addr`, serving
    /// `records` (`name,ip` host records) and nothing else (no upstream).
    pub fn dnsmasq(&self, addr: &str, records: &[&str]) -> Result<Proc> {
        // Authoritative for the test domains: unknown names are NXDOMAIN.
        self.world_dnsmasq(
            addr,
            records,
            &["--local=/mesh/", "--local-ttl=30"],
            "dnsmasq.pid",
        )
    }

    /// A real resolver in the world namespace on `addr` answering from
    /// `hosts` (an /etc/hosts-style file, which dnsmasq reads again on
    /// SIGHUP: [`Proc::hangup`]) with answers that live `ttl` seconds.
    pub fn dnsmasq_hosts(&self, addr: &str, hosts: &Path, ttl: u32) -> Result<Proc> {
        self.world_dnsmasq(
            addr,
            &[],
            &[
                &format!("--addn-hosts={}", hosts.display()),
                &format!("--local-ttl={ttl}"),
            ],
            "hosts-dnsmasq.pid",
        )
    }

    /// dnsmasq on `addr` (added to the world's loopback), authoritative
    /// for `.test` and `.invalid` with no upstream, and `extra` options.
    fn world_dnsmasq(
        &self,
        addr: &str,
        records: &[&str],
        extra: &[&str],
        pid_file: &str,
    ) -> Result<Proc> {
        self.world
            .ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.world.name]);
        let mut args = vec!["--no-resolv", "--local=/test/", "--local=/invalid/"];
        args.extend_from_slice(extra);
        self.run_dnsmasq(cmd, &self.world.name, addr, records, &args, pid_file)
    }

    /// A local caching resolver in the node namespace, *inside the test
    /// cgroup* (its own queries are captured like any process's), on `addr`
    /// (a loopback address), with its own `records`, forwarding everything
    /// else to `upstream`.
    pub fn local_dnsmasq(&self, addr: &str, records: &[&str], upstream: &str) -> Result<Proc> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.name]);
        self.cgroup.enter(&mut cmd);
        self.run_dnsmasq(
            cmd,
            &self.node.name,
            addr,
            records,
            &[
                "--no-resolv",
                &format!("--server={upstream}"),
                "--local-ttl=30",
            ],
            "local-dnsmasq.pid",
        )
    }

    fn run_dnsmasq(
        &self,
        mut cmd: Command,
        ns: &str,
        addr: &str,
        records: &[&str],
        extra: &[&str],
        pid_file: &str,
    ) -> Result<Proc> {
        cmd.arg("dnsmasq")
            .args(["--keep-in-foreground", "--no-hosts"])
            .args(["--user=root", "--bind-interfaces", "--port=53"])
            .args(extra)
            .arg(format!("--listen-address={addr}"))
            .arg(format!(
                "--pid-file={}",
                self.dir.path.join(pid_file).display()
            ))
            .args(records.iter().map(|r| format!("--host-record={r}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
        let proc = Proc(child);
        // Wait until it answers (asked from outside the cgroup).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "dig",
                    "+time=1",
                    "+tries=1",
                    "+short",
                    &format!("@{addr}"),
                    "ready.invalid",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(proc);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("dnsmasq did not answer on {addr}")
    }

    /// Another client namespace (`<tag>c<n>`) beside `node`, joined to the
    /// world by its own veth pair: routes to 10.0.0.0/8 only. Not the
    /// namespace routerd serves. Deleted on drop.
    pub fn other_node(&self, n: u8) -> Result<Netns> {
        let ns = Netns::new(format!("{}c{n}", self.tag))?;
        let (va, vb) = (format!("{}o{n}", self.tag), format!("{}p{n}", self.tag));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &ns.name])?;
        ip(&["link", "set", &vb, "netns", &self.world.name])?;
        let base = 4 * u32::from(n);
        let (a, b) = (
            format!("10.255.254.{}/30", base + 1),
            format!("10.255.254.{}/30", base + 2),
        );
        ns.ip(&["addr", "add", &a, "dev", &va])?;
        ns.ip(&["link", "set", &va, "up"])?;
        ns.ip(&[
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            &format!("10.255.254.{}", base + 2),
        ])?;
        self.world.ip(&["addr", "add", &b, "dev", &vb])?;
        self.world.ip(&["link", "set", &vb, "up"])?;
        Ok(ns)
    }

    /// A pod ([`PodNs`]) named `pod<n>`: another namespace beside `node`
    /// (see [`World::other_node`]), a child cgroup of the test's and a
    /// resolv.conf naming `resolver`.
    pub fn pod(&self, n: u8, resolver: &str) -> Result<PodNs> {
        let ns = self.other_node(n)?;
        let cgroup = Cgroup::new(&format!("{}/pod{n}", self.tag))?;
        let etc = EtcNetns(PathBuf::from("/etc/netns").join(&ns.name));
        std::fs::create_dir_all(&etc.0)?;
        std::fs::write(
            etc.0.join("resolv.conf"),
            format!("nameserver {resolver}\noptions timeout:1 attempts:2\n"),
        )?;
        Ok(PodNs {
            name: format!("pod{n}"),
            cgroup,
            ns,
            _etc: etc,
        })
    }

    /// A command run in namespace `ns`, inside the test cgroup.
    pub fn client_in(&self, ns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name]).arg(program);
        self.cgroup.enter(&mut cmd);
        cmd
    }

    /// A command run in the node namespace, inside the test cgroup (so the
    /// router's programs apply to it).
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.outside(program);
        self.cgroup.enter(&mut cmd);
        cmd
    }

    /// A command run in the node namespace but outside the test cgroup.
    pub fn outside(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.name]).arg(program);
        cmd
    }

    /// Run `rt-probe` with `args` in the cgroup and parse its lines.
    pub fn probe(&self, args: &[&str]) -> Result<Vec<Probe>> {
        parse_probes(&run(self.client(bin("rt-probe")).args(args))?)
    }

    /// Same, outside the cgroup.
    pub fn probe_outside(&self, args: &[&str]) -> Result<Vec<Probe>> {
        parse_probes(&run(self.outside(bin("rt-probe")).args(args))?)
    }
}

pub fn parse_probes(out: &str) -> Result<Vec<Probe>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad probe line {l:?}")))
        .collect()
}

/// Count answers per backend id.
/// `n` TCP connections to `vip` from the world's client: the one backend
/// that answered them all (panics if more than one did).
pub fn only(world: &World, vip: SocketAddr, n: usize) -> String {
    let t = tally(
        &world
            .probe(&["tcp", &vip.to_string(), "--count", &n.to_string()])
            .unwrap(),
    );
    assert_eq!(t.len(), 1, "expected one backend: {t:?}");
    t.into_keys().next().unwrap()
}

pub fn tally(probes: &[Probe]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for p in probes {
        let k = match &p.answer {
            Some(a) => a.id.clone(),
            None => format!(
                "error:{}",
                p.errno
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| p.error.clone().unwrap_or_default())
            ),
        };
        *m.entry(k).or_default() += 1;
    }
    m
}

/// One line of routerd's stderr (`--log-format json`).
#[derive(Clone, Debug)]
pub struct LogLine {
    /// `INFO`, `WARN`, ...; empty for a line that is not JSON (a panic,
    /// main's error on exit).
    pub level: String,
    /// For people: `LEVEL message key=value ...`, or the raw line.
    pub text: String,
    /// The typed event, when the line is one.
    pub event: Option<Event>,
    /// When the harness read it.
    pub seen: Instant,
}

impl LogLine {
    fn parse(raw: &str) -> LogLine {
        let Ok(serde_json::Value::Object(mut o)) = serde_json::from_str(raw) else {
            return LogLine {
                level: String::new(),
                text: raw.to_string(),
                event: None,
                seen: Instant::now(),
            };
        };
        let event = o
            .contains_key("event")
            .then(|| serde_json::from_value::<router_user::events::Line>(o.clone().into()))
            .and_then(Result::ok)
            .map(|l| l.event);
        let str_of = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => String::new(),
        };
        o.remove("timestamp");
        let level = str_of(o.remove("level"));
        let mut text = format!("{level} {}", str_of(o.remove("message")));
        match &event {
            None => {
                for (k, v) in o {
                    text.push_str(&format!(" {k}={}", str_of(Some(v))));
                }
            }
            Some(e) => {
                for problem in e.errors() {
                    text.push_str(&format!("\n  {problem}"));
                }
            }
        }
        LogLine {
            level,
            text,
            event,
            seen: Instant::now(),
        }
    }
}

/// A running `routerd run` process with its own pin root and state dir.
pub struct Routerd {
    child: Option<Child>,
    pub args: Vec<String>,
    pub pin_root: PathBuf,
    pub state_dir: PathBuf,
    logs: Arc<(Mutex<Vec<LogLine>>, Condvar)>,
    /// Copy routerd's log lines to our stderr (tests: yes; the demo: no).
    pub echo: Arc<std::sync::atomic::AtomicBool>,
    /// RLIMIT_NOFILE (soft and hard) for the process; None: inherited.
    pub nofile: Option<u64>,
}

impl Routerd {
    /// Start `routerd run` on `config` attached to `cgroup`; wait until ready.
    pub fn start(tag: &str, config: &Path, cgroup: &Path, extra: &[&str]) -> Result<Self> {
        let mut d = Routerd::new(tag, config, cgroup, extra);
        d.spawn()?;
        Ok(d)
    }

    /// The same, not started yet (set fields, then [`Routerd::spawn`]).
    pub fn new(tag: &str, config: &Path, cgroup: &Path, extra: &[&str]) -> Self {
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
        let state_dir = std::env::temp_dir().join(format!("{tag}-state"));
        let mut args: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--cgroup".into(),
            cgroup.display().to_string(),
            "--pin-root".into(),
            pin_root.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            // Events (ready, applied, rejected, ...) arrive typed.
            "--log-format".into(),
            "json".into(),
        ];
        // DNS sockets live in the test's client namespace (World names it
        // `<tag>n`), where the captured queries arrive and upstreams are.
        let node_ns = PathBuf::from(format!("/var/run/netns/{tag}n"));
        if node_ns.exists() && !extra.contains(&"--listen-netns") {
            args.push("--listen-netns".into());
            args.push(node_ns.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Routerd {
            child: None,
            args,
            pin_root,
            state_dir,
            logs: Arc::default(),
            echo: Arc::new(std::sync::atomic::AtomicBool::new(
                std::env::var_os("ROUTERD_QUIET").is_none(),
            )),
            nofile: None,
        }
    }

    /// Read no config files: the store (`--store`, among `extra`) is the
    /// only source.
    pub fn without_config(&mut self) {
        if let Some(at) = self.args.iter().position(|a| a == "--config") {
            self.args.drain(at..at + 2);
        }
    }

    /// (Re)start the process with the same arguments and wait until ready.
    pub fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin("routerd"));
        cmd.args(&self.args)
            .env("ROUTERD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = self.nofile {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("starting routerd")?;
        let stderr = child.stderr.take().unwrap();
        let logs = self.logs.clone();
        let start = logs.0.lock().unwrap().len();
        let echo = self.echo.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = LogLine::parse(&line);
                if echo.load(Ordering::Relaxed) {
                    eprintln!("[routerd] {}", line.text);
                }
                let (m, cv) = &*logs;
                m.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        self.child = Some(child);
        // Generous: 100,000 services (the benchmarks) take ~15 s to load.
        self.wait_line(start, Duration::from_secs(60), |l| {
            matches!(l.event, Some(Event::Ready { .. }))
        })
        .context("routerd did not become ready")?;
        Ok(())
    }

    /// The first line after position `start` satisfying `pred`; fails when
    /// routerd exits with an error first, or after `timeout`.
    fn wait_line(
        &self,
        start: usize,
        timeout: Duration,
        pred: impl Fn(&LogLine) -> bool,
    ) -> Result<LogLine> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.logs;
        let mut logs = m.lock().unwrap();
        let mut i = start;
        loop {
            while i < logs.len() {
                if pred(&logs[i]) {
                    return Ok(logs[i].clone());
                }
                // Not a log line: main's error on exit.
                let raw = &logs[i].text;
                if logs[i].level.is_empty()
                    && (raw.starts_with("Error:") || raw.starts_with("routerd:"))
                {
                    bail!("routerd failed: {raw}");
                }
                i += 1;
            }
            let now = Instant::now();
            if now > deadline {
                let all: Vec<&str> = logs.iter().map(|l| l.text.as_str()).collect();
                bail!(
                    "timed out after {timeout:?}; routerd logged:\n{}",
                    all.join("\n")
                );
            }
            logs = cv.wait_timeout(logs, deadline - now).unwrap().0;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How many lines routerd has logged: a mark for the `wait_*` calls.
    pub fn log_len(&self) -> usize {
        self.logs.0.lock().unwrap().len()
    }

    /// Wait for an event after position `start` satisfying `pred`.
    pub fn wait_event(&self, start: usize, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        self.wait_line(start, Duration::from_secs(15), |l| {
            l.event.as_ref().is_some_and(&pred)
        })
        .map(|l| l.event.expect("matched an event"))
    }

    /// Wait for the next reload outcome after `start`: applied, no change
    /// or rejected.
    pub fn wait_outcome(&self, start: usize) -> Result<Event> {
        self.wait_event(start, Event::is_outcome)
    }

    /// Wait for a free-text log line (a warning) after `start` containing
    /// `needle`. Prefer [`Routerd::wait_event`] for what an event covers.
    pub fn wait_log(&self, start: usize, needle: &str) -> Result<String> {
        self.wait_line(start, Duration::from_secs(15), |l| l.text.contains(needle))
            .map(|l| l.text)
    }

    /// SIGHUP and wait for the outcome.
    pub fn reload(&self) -> Result<Event> {
        let start = self.log_len();
        self.signal(libc::SIGHUP);
        self.wait_outcome(start)
    }

    /// Reloads that served what they read (applied, or found nothing to
    /// change), from position `start`: when each was seen and how long
    /// routerd took (so it began at `seen - elapsed`).
    pub fn served_times(&self, start: usize) -> Vec<(Instant, f64)> {
        self.logs.0.lock().unwrap()[start..]
            .iter()
            .filter_map(|l| match &l.event {
                Some(Event::Applied { elapsed_ms, .. } | Event::NoChange { elapsed_ms, .. }) => {
                    Some((l.seen, *elapsed_ms))
                }
                _ => None,
            })
            .collect()
    }

    /// Every event so far, from position `start`.
    pub fn events(&self, start: usize) -> Vec<Event> {
        self.logs.0.lock().unwrap()[start..]
            .iter()
            .filter_map(|l| l.event.clone())
            .collect()
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGKILL: the datapath stays pinned and attached.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (the datapath stays unless started with --cleanup).
    pub fn terminate(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait()?;
            if !status.success() {
                bail!("routerd exited with {status}");
            }
        }
        Ok(())
    }

    /// `routerd stop`: remove everything.
    pub fn stop(&mut self) -> Result<()> {
        self.terminate()?;
        run(Command::new(bin("routerd")).args([
            "stop",
            "--pin-root",
            &self.pin_root.display().to_string(),
            "--state-dir",
            &self.state_dir.display().to_string(),
        ]))?;
        Ok(())
    }

    /// `routerd inspect --json`.
    pub fn inspect(&self) -> Result<Report> {
        let out = run(Command::new(bin("routerd")).args([
            "inspect",
            "--json",
            "--pin-root",
            &self.pin_root.display().to_string(),
            "--state-dir",
            &self.state_dir.display().to_string(),
        ]))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Every line so far, as text (`LEVEL message key=value ...`).
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.text.clone())
            .collect()
    }
}

impl Drop for Routerd {
    fn drop(&mut self) {
        self.kill9();
        // The workloads handed to this test's daemon (records a real node's
        // CNI plugin would keep across restarts).
        let _ = std::fs::remove_dir_all(self.state_dir.join("workloads"));
        let _ = router_user::daemon::cleanup(
            &router_user::datapath::Pins::new(&self.pin_root),
            &self.state_dir,
        );
    }
}

/// curl in the cgroup (`inside`) or beside it, headers dumped to stderr:
/// (status, body, response headers lower-cased, HTTP version, remote IP).
/// Panics if curl cannot run.
pub fn curl(
    world: &World,
    args: &[&str],
    inside: bool,
) -> (
    u16,
    String,
    std::collections::BTreeMap<String, String>,
    String,
    String,
) {
    let mut cmd = if inside {
        world.client("curl")
    } else {
        world.outside("curl")
    };
    let out = cmd
        .args([
            "-sS",
            "--max-time",
            "8",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code} %{http_version} %{remote_ip}",
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut m = meta.split_whitespace();
    let code = m.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let version = m.next().unwrap_or("").to_string();
    let remote = m.next().unwrap_or("").to_string();
    let headers = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (code, body.to_string(), headers, version, remote)
}

/// YAML builders for test configs (the same shapes as configs/).
/// A node in c1, east, e1 and `web` on two endpoints: 10.1.0.1 in the
/// node's zone (e1, ready if `e1_ready`) and 10.1.1.1 in the next (e2).
pub fn two_zones(e1_ready: bool) -> Config {
    Config::new().node("c1", "east", "e1").with(web(
        "c1",
        "east",
        "web-1",
        &[("10.1.0.1", "e1", e1_ready), ("10.1.1.1", "e2", true)],
    ))
}

/// [`two_zones`] with `web.t.mesh:8080` (a VirtualDestination routed in
/// the kernel) and `shop.t.mesh:8080` (a route table whose `api` route
/// the proxy serves), both over `web`.
pub fn web_and_shop() -> Config {
    web_and_shop_on(Config::new().node("c1", "east", "e1"))
}

/// [`web_and_shop`] on `node` (a RouterConfig of c1, east, e1, e.g. with
/// more settings from `Config::node_with`).
pub fn web_and_shop_on(node: Config) -> Config {
    node.with(web(
        "c1",
        "east",
        "web-1",
        &[("10.1.0.1", "e1", true), ("10.1.1.1", "e2", true)],
    ))
    .with(local_vd("web", "web.t.mesh", "web", 8080, "TCP"))
    .with(
        RouteTable::new("shop").host("shop.t.mesh").http(
            HttpRoute::new()
                .name("api")
                .prefix("/api")
                .to(&[Dest::service("web").port(8080)]),
        ),
    )
}

/// The plan routerd will compute for `config` (to learn VIPs in tests).
pub fn plan(config: &Path) -> Result<router_user::plan::Plan> {
    router_user::daemon::build_plan(config, &Default::default(), &Default::default())
        .map_err(anyhow::Error::msg)
}

/// `VIP:port` of `host` (IPv4 or IPv6).
pub fn vip(plan: &router_user::plan::Plan, host: &str, port: u16, v6: bool) -> SocketAddr {
    let h = plan
        .host(host)
        .unwrap_or_else(|| panic!("no host {host} in plan"));
    let ip: IpAddr = if v6 { h.vip6.into() } else { h.vip4.into() };
    SocketAddr::new(ip, port)
}
