//! The kernel side, from user space: load the programs, pin maps and links
//! under a versioned bpffs directory, attach to a cgroup, adopt what a previous
//! daemon left there, and write plans into the maps ([`sync`]).
//!
//! Pinned layout (`<pin-root>/v3/`):
//! - one file per map, named like the map (`ROUTER_SVC_V3`, ...);
//! - `links/<program>`: one bpf_link per program, attached to the cgroup.
//!
//! Links and maps outlive the daemon: while it is down, routing goes on with
//! the last plan; a restarted daemon adopts them instead of flushing them.
//! aya reuses a pinned map without checking its layout, which is why the
//! version is in the directory name and in every map name.
pub mod counters;
pub mod sync;
pub mod sys;

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use router_common::{
    Backend, BackendHealth, BackendStats, GlobalConfig, GlobalStats, KernelEjection, Listeners,
    META_PATH_LEN, Meta, OrigDst, OrigKey, PIN_SUBDIR, PINNED_MAPS, PROGRAMS, SOCK_ADDR_PROGRAMS,
    SOCK_OPS_PROGRAM, SlotKey, SvcHeader, SvcKey, SvcStats, UdpRevKey, UdpRevValue, VisKey,
};

/// The kernel object, embedded at build time by build.rs from
/// `target/bpf/router-ebpf.o` (`cargo xtask build-ebpf`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf.o"));

pub fn object() -> Result<&'static [u8]> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this routerd was built without its eBPF object. Build it with \
             `cargo xtask build-ebpf` and rebuild routerd (or use `cargo xtask build`); \
             the object is embedded from target/bpf/router-ebpf.o"
        );
    }
    Ok(EBPF_OBJECT)
}

/// FNV-1a 64: identifies the object the attached programs came from.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Where things are pinned.
#[derive(Clone, Debug)]
pub struct Pins {
    /// e.g. `/sys/fs/bpf/router`
    pub root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }
    /// `<root>/v3`
    pub fn dir(&self) -> PathBuf {
        self.root.join(PIN_SUBDIR)
    }
    /// Directories of older layouts under the same root (`<root>/v1` ...).
    pub fn old_dirs(&self) -> Vec<PathBuf> {
        (1..router_common::ABI_VERSION)
            .map(|v| self.root.join(format!("v{v}")))
            .filter(|d| d.exists())
            .collect()
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
    pub fn links_dir(&self) -> PathBuf {
        self.dir().join("links")
    }
    pub fn link(&self, prog: &str) -> PathBuf {
        self.links_dir().join(prog)
    }
    pub fn exists(&self) -> bool {
        self.dir().exists()
    }
}

/// Typed handles on the pinned maps.
pub struct Maps {
    pub services: HashMap<MapData, SvcKey, SvcHeader>,
    pub slots: HashMap<MapData, SlotKey, u32>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub config: Array<MapData, GlobalConfig>,
    pub listeners: HashMap<MapData, u64, Listeners>,
    pub meta: Array<MapData, Meta>,
    pub alive: Array<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, SvcStats>,
    pub backend_stats: PerCpuArray<MapData, BackendStats>,
    pub global_stats: PerCpuArray<MapData, GlobalStats>,
    pub backend_health: Array<MapData, BackendHealth>,
    pub visible: HashMap<MapData, VisKey, u32>,
    pub own: HashMap<MapData, VisKey, u32>,
}

fn open_pinned<T>(pins: &Pins, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = pins.map(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is routerd running, or has it run on this host?)",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
    T::try_from(map).with_context(|| {
        format!(
            "pinned map {} has an unexpected type or layout; it was probably left by \
             another version: run `routerd stop --pin-root {}` and start again",
            path.display(),
            pins.root.display()
        )
    })
}

impl Maps {
    pub fn open(pins: &Pins) -> Result<Self> {
        use router_common::*;
        Ok(Maps {
            services: open_pinned(pins, MAP_SERVICES)?,
            slots: open_pinned(pins, MAP_SLOTS)?,
            backends: open_pinned(pins, MAP_BACKENDS)?,
            config: open_pinned(pins, MAP_CONFIG)?,
            listeners: open_pinned(pins, MAP_LISTENERS)?,
            meta: open_pinned(pins, MAP_META)?,
            alive: open_pinned(pins, MAP_ALIVE)?,
            svc_stats: open_pinned(pins, MAP_SVC_STATS)?,
            backend_stats: open_pinned(pins, MAP_BACKEND_STATS)?,
            global_stats: open_pinned(pins, MAP_GLOBAL_STATS)?,
            backend_health: open_pinned(pins, MAP_BACKEND_HEALTH)?,
            visible: open_pinned(pins, MAP_VISIBLE)?,
            own: open_pinned(pins, MAP_OWN)?,
        })
    }

    pub fn read_meta(&self) -> Result<Meta> {
        Ok(self.meta.get(&0, 0)?)
    }
}

/// What [`Datapath::open`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Startup {
    /// Nothing usable was pinned: programs loaded, attached and pinned.
    Loaded,
    /// A previous daemon's programs (same object, same cgroup) were adopted as
    /// they are: nothing was detached, no connection saw a gap.
    Adopted,
    /// Pinned programs came from another build: the new ones were attached
    /// first, then the old links released (maps and their contents kept).
    Replaced,
}

pub struct Datapath {
    pub pins: Pins,
    pub maps: Maps,
    pub cgroup: PathBuf,
    pub startup: Startup,
    /// Kept while the daemon runs so aya-log can read the programs' log ring.
    pub ebpf: Option<Ebpf>,
    mirror: sync::Mirror,
    /// What `MAP_VISIBLE` and `MAP_OWN` hold (None: not read back yet).
    visible: Option<std::collections::BTreeSet<VisKey>>,
    own: Option<std::collections::BTreeSet<VisKey>>,
}

/// Read the maps back and delete what no header reaches (garbage of a sync
/// a previous daemon did not finish).
fn read_and_collect(maps: &mut Maps) -> Result<sync::Mirror> {
    let mut mirror = sync::Mirror::read(maps)?;
    let (slots, backends) = mirror.collect_garbage(maps)?;
    if slots + backends > 0 {
        tracing::info!(
            slots,
            backends,
            "deleted map entries no service reaches (left by an interrupted update)"
        );
    }
    Ok(mirror)
}

fn cgroup_path_bytes(p: &Path) -> [u8; META_PATH_LEN] {
    let mut out = [0u8; META_PATH_LEN];
    let s = p.as_os_str().as_encoded_bytes();
    let n = s.len().min(META_PATH_LEN - 1);
    out[..n].copy_from_slice(&s[..n]);
    out
}

pub fn meta_cgroup_path(m: &Meta) -> String {
    let end = m
        .cgroup_path
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(META_PATH_LEN);
    String::from_utf8_lossy(&m.cgroup_path[..end]).into_owned()
}

/// Map sizes chosen when the datapath is first loaded (pinned maps keep
/// theirs; a restart with other sizes adopts the existing ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub services: u32,
    pub backends: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            services: router_common::MAX_SERVICES,
            backends: router_common::MAX_BACKENDS,
        }
    }
}

impl Datapath {
    /// Load (or adopt) the datapath pinned under `pins`, attached to `cgroup`.
    pub fn open(pins: Pins, cgroup: &Path, sizes: Sizes) -> Result<Self> {
        let object = object()?;
        sys::raise_memlock();
        sys::ensure_bpffs(&pins.root)?;
        sys::check_cgroup2(cgroup)?;
        let cgroup_id = sys::cgroup_id(cgroup)?;
        let hash = fnv1a(object);

        let links_present = PROGRAMS.iter().all(|p| pins.link(p).exists());
        let existing = if links_present {
            Maps::open(&pins).ok()
        } else {
            None
        };
        if let Some(maps) = existing {
            let meta = maps.read_meta()?;
            if meta.cgroup_id != 0 && meta.cgroup_id != cgroup_id {
                bail!(
                    "the datapath pinned at {} is attached to cgroup {} (id {}), not to {}. \
                     One pin root serves one cgroup: run `routerd stop --pin-root {}` first, \
                     or pass --cgroup {} (or another --pin-root)",
                    pins.dir().display(),
                    meta_cgroup_path(&meta),
                    meta.cgroup_id,
                    cgroup.display(),
                    pins.root.display(),
                    meta_cgroup_path(&meta),
                );
            }
            if meta.object_hash == hash {
                let mut maps = maps;
                let mirror = read_and_collect(&mut maps)?;
                tracing::info!(
                    dir = %pins.dir().display(),
                    generation = meta.generation,
                    services = mirror.service_count(),
                    "adopted the pinned datapath (programs, links and maps kept as they are)"
                );
                return Ok(Datapath {
                    pins,
                    maps,
                    cgroup: cgroup.to_path_buf(),
                    startup: Startup::Adopted,
                    ebpf: None,
                    mirror,
                    visible: None,
                    own: None,
                });
            }
        }
        let replacing = links_present;
        // Counter arrays not pinned yet are created by this load: all zero.
        let counters_created = [
            router_common::MAP_SVC_STATS,
            router_common::MAP_BACKEND_STATS,
        ]
        .iter()
        .all(|m| !pins.map(m).exists());
        let ebpf = match Self::load_and_attach(&pins, cgroup, object, sizes) {
            Ok(e) => e,
            Err(e) => {
                // A first load that fails leaves nothing behind; a failed
                // replacement leaves the previous datapath serving.
                if !replacing {
                    let _ = remove(&pins);
                }
                return Err(e);
            }
        };
        let mut maps = Maps::open(&pins)?;
        let mut meta = maps.read_meta()?;
        meta.object_hash = hash;
        meta.cgroup_id = cgroup_id;
        meta.cgroup_path = cgroup_path_bytes(cgroup);
        maps.meta.set(0, meta, 0)?;
        let mut mirror = read_and_collect(&mut maps)?;
        if counters_created {
            mirror.counters_created();
        }
        let startup = if replacing {
            Startup::Replaced
        } else {
            Startup::Loaded
        };
        tracing::info!(
            dir = %pins.dir().display(),
            cgroup = %cgroup.display(),
            ?startup,
            "datapath attached"
        );
        Ok(Datapath {
            pins,
            maps,
            cgroup: cgroup.to_path_buf(),
            startup,
            ebpf: Some(ebpf),
            mirror,
            visible: None,
            own: None,
        })
    }

    /// Detach and remove datapaths of older layouts under the same pin root
    /// (call once this one serves the plan: until then the old one routes).
    pub fn retire_old_layouts(&self) {
        for dir in self.pins.old_dirs() {
            match remove_layout(&dir) {
                Ok(_) => tracing::info!(
                    dir = %dir.display(),
                    "removed the datapath of an older layout (this one serves now)"
                ),
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    "could not remove the datapath of an older layout: {e:#}; remove it with \
                     `routerd stop --pin-root {}`",
                    self.pins.root.display()
                ),
            }
        }
    }

    fn load_and_attach(pins: &Pins, cgroup: &Path, object: &[u8], sizes: Sizes) -> Result<Ebpf> {
        std::fs::create_dir_all(pins.links_dir())
            .with_context(|| format!("creating {}", pins.links_dir().display()))?;
        restrict_dir(&pins.root);
        let map_paths: Vec<(String, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|m| (m.to_string(), pins.map(m)))
            .collect();
        let mut loader = EbpfLoader::new();
        // Sizes only take effect for maps created now (not yet pinned).
        use router_common::{
            MAP_BACKEND_HEALTH, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_SERVICES, MAP_SVC_STATS,
        };
        loader
            .map_max_entries(MAP_SERVICES, sizes.services)
            .map_max_entries(MAP_SVC_STATS, sizes.services)
            .map_max_entries(MAP_BACKENDS, sizes.backends)
            .map_max_entries(MAP_BACKEND_STATS, sizes.backends)
            .map_max_entries(MAP_BACKEND_HEALTH, sizes.backends);
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).map_err(|e| {
            anyhow::anyhow!(
                "loading the eBPF object failed: {e:#}. The router needs a kernel with BTF, \
                 cgroup BPF, socket-local storage and bpf_set_retval (Linux 6.1 or later is \
                 tested); see README.md, 'Requirements'"
            )
        })?;
        let cg =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        // Load (verify) every program before attaching any: a kernel that
        // rejects one must not be left with half a datapath attached.
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().map_err(|e| verifier_error(name, e))?;
        }
        {
            let prog: &mut SockOps = ebpf
                .program_mut(SOCK_OPS_PROGRAM)
                .with_context(|| format!("program {SOCK_OPS_PROGRAM} missing from the object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| verifier_error(SOCK_OPS_PROGRAM, e))?;
        }
        for name in PROGRAMS {
            // With bpf_link (kernel >= 5.7, which aya uses when it can) a cgroup
            // attachment is always multi-program and link_create must get flags
            // 0: passing AllowMultiple makes the kernel answer EINVAL.
            let attach_err = || format!("attaching {name} to {}", cgroup.display());
            let link: FdLink = if name == SOCK_OPS_PROGRAM {
                let prog: &mut SockOps =
                    ebpf.program_mut(name).expect("loaded above").try_into()?;
                let id = prog
                    .attach(&cg, CgroupAttachMode::Single)
                    .with_context(attach_err)?;
                prog.take_link(id)?.try_into()?
            } else {
                let prog: &mut CgroupSockAddr =
                    ebpf.program_mut(name).expect("loaded above").try_into()?;
                let id = prog
                    .attach(&cg, CgroupAttachMode::Single)
                    .with_context(attach_err)?;
                prog.take_link(id)?.try_into()?
            };
            let path = pins.link(name);
            // Replace an old pin without a gap: keep the old link alive (our fd)
            // until the new one is pinned, then let it go.
            let old = if path.exists() {
                Some(PinnedLink::from_pin(&path)?.unpin()?)
            } else {
                None
            };
            link.pin(&path)
                .with_context(|| format!("pinning link {}", path.display()))?;
            drop(old);
        }
        Ok(ebpf)
    }

    /// Write `plan` into the maps with ordered writes; see [`sync`].
    pub fn apply(&mut self, plan: &crate::plan::Plan) -> Result<sync::SyncReport> {
        let report = sync::apply(&mut self.maps, &mut self.mirror, plan)?;
        self.bump_generation()?;
        Ok(report)
    }

    /// Write only the entries an update changed (see
    /// [`sync::apply_changes`]).
    pub fn apply_changes(
        &mut self,
        plan: &crate::plan::Plan,
        services: &std::collections::BTreeSet<(std::net::IpAddr, u16, crate::plan::Proto)>,
        backends: &std::collections::BTreeSet<std::net::SocketAddr>,
    ) -> Result<sync::SyncReport> {
        let report =
            sync::apply_changes(&mut self.maps, &mut self.mirror, plan, services, backends)?;
        self.bump_generation()?;
        Ok(report)
    }

    /// After a failed apply: forget what this daemon thought the maps held
    /// and read them back (the next apply diffs against what is really there).
    pub fn resync(&mut self) -> Result<()> {
        self.mirror = sync::Mirror::read(&self.maps)?;
        Ok(())
    }

    /// Delete retired slots and backends whose grace is over (call now and
    /// then; every apply does it too).
    pub fn retire(&mut self) -> usize {
        self.mirror
            .retire(&mut self.maps, std::time::Instant::now(), false)
    }

    /// Point the kernel at the daemon's listeners in the network namespace
    /// `netns` (cookie), or stop sending anything there (`None`).
    pub fn set_listeners(&mut self, netns: u64, bound: Option<&sync::Bound>) -> Result<()> {
        match bound {
            Some(b) => self
                .maps
                .listeners
                .insert(netns, sync::listeners_entry(b), 0)?,
            None => match self.maps.listeners.remove(&netns) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    /// Make `MAP_VISIBLE` hold exactly `visible` (which workload namespaces
    /// see which scoped VIPs) and `MAP_OWN` exactly `own` (each workload
    /// namespace's own addresses): new pairs written first, then the ones
    /// gone deleted. The first call reads the maps back, so that pairs a
    /// previous daemon left for workloads that are gone are deleted too.
    pub fn set_workload_keys(
        &mut self,
        visible: std::collections::BTreeSet<VisKey>,
        own: std::collections::BTreeSet<VisKey>,
    ) -> Result<()> {
        use router_common::{MAP_OWN, MAP_VISIBLE, MAX_OWN, MAX_VISIBLE};
        let m = &mut self.maps;
        sync_keys(
            &mut m.visible,
            &mut self.visible,
            visible,
            MAP_VISIBLE,
            MAX_VISIBLE,
        )?;
        sync_keys(&mut m.own, &mut self.own, own, MAP_OWN, MAX_OWN)
    }

    /// Delete the listener entries of every namespace but `keep` (entries a
    /// previous daemon left for workloads that went away while it was not
    /// running: their namespaces are gone, and cookies are never reused, but
    /// the map has room for 4,096). How many went.
    pub fn keep_listeners(&mut self, keep: &std::collections::BTreeSet<u64>) -> Result<usize> {
        let stale: Vec<u64> = self
            .maps
            .listeners
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(k))
            .collect();
        for k in &stale {
            self.set_listeners(*k, None)?;
        }
        Ok(stale.len())
    }

    fn bump_generation(&mut self) -> Result<()> {
        let mut meta = self.maps.read_meta()?;
        meta.generation += 1;
        meta.applied_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.maps.meta.set(0, meta, 0)?;
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.maps.read_meta().map(|m| m.generation).unwrap_or(0)
    }
}

/// A set of keys in `map` (value 1), written to be `want`: new keys first,
/// then the ones gone deleted. `held` is what the map holds (None: read it
/// back first, so that keys a previous daemon left are deleted too).
fn sync_keys(
    map: &mut HashMap<MapData, VisKey, u32>,
    held: &mut Option<std::collections::BTreeSet<VisKey>>,
    want: std::collections::BTreeSet<VisKey>,
    name: &str,
    max: u32,
) -> Result<()> {
    let had = match held.take() {
        Some(h) => h,
        None => map.keys().filter_map(|k| k.ok()).collect(),
    };
    for k in want.difference(&had) {
        map.insert(*k, 1, 0)
            .with_context(|| format!("writing {name} ({max} entries at most)"))?;
    }
    for k in had.difference(&want) {
        match map.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    *held = Some(want);
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The daemon's heartbeat ([`router_common::MAP_ALIVE`]), on a map handle
/// of its own so that a thread can beat it whatever the daemon is busy with.
pub struct Heartbeat {
    alive: Array<MapData, u64>,
}

impl Heartbeat {
    pub fn open(pins: &Pins) -> Result<Self> {
        Ok(Heartbeat {
            alive: open_pinned(pins, router_common::MAP_ALIVE)?,
        })
    }

    /// Alive for [`router_common::ALIVE_NS`] from now.
    pub fn beat(&mut self) -> Result<()> {
        Ok(self
            .alive
            .set(0, monotonic_ns() + router_common::ALIVE_NS, 0)?)
    }

    /// Dead from now: DNS is no longer captured and L7 VIPs are refused.
    pub fn stop(&mut self) -> Result<()> {
        Ok(self.alive.set(0, 0, 0)?)
    }

    /// Start a thread that beats every second until `stop` is set.
    pub fn spawn(
        mut self,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<std::thread::JoinHandle<()>> {
        use std::sync::atomic::Ordering;
        self.beat()?;
        Ok(std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let mut warned = false;
                while !stop.load(Ordering::Relaxed) {
                    match self.beat() {
                        Ok(()) => warned = false,
                        Err(e) if !warned => {
                            tracing::warn!("could not refresh the heartbeat: {e:#}");
                            warned = true;
                        }
                        Err(_) => {}
                    }
                    // Short sleeps so that a stop is seen quickly.
                    for _ in 0..10 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
                let _ = self.stop();
            })?)
    }
}

/// What the kernel says about backends: the ejections it made
/// ([`router_common::MAP_EJECTIONS`]), for the daemon to confirm or lift
/// ([`router_common::MAP_BACKEND_HEALTH`]). Handles of its own, for the
/// health task.
pub struct KernelSignals {
    ring: tokio::io::unix::AsyncFd<RingBuf<MapData>>,
    health: Array<MapData, BackendHealth>,
}

impl KernelSignals {
    /// Open the pinned ring buffer (inside a tokio runtime).
    pub fn open(pins: &Pins) -> Result<Self> {
        let ring: RingBuf<MapData> = open_pinned(pins, router_common::MAP_EJECTIONS)?;
        // SAFETY: the ring buffer owns its fd and keeps it open for as long
        // as the AsyncFd holds it.
        let ring = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
        };
        Ok(KernelSignals {
            ring: ring.context("watching the kernel's ejection ring buffer")?,
            health: open_pinned(pins, router_common::MAP_BACKEND_HEALTH)?,
        })
    }

    /// The next ejections the kernel made (waits for at least one).
    pub async fn next(&mut self) -> Vec<KernelEjection> {
        loop {
            let Ok(mut guard) = self.ring.readable_mut().await else {
                return std::future::pending().await;
            };
            let mut out = Vec::new();
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<KernelEjection>() {
                    // SAFETY: the kernel wrote a KernelEjection (a Pod) here;
                    // read unaligned, copied.
                    out.push(unsafe { item.as_ptr().cast::<KernelEjection>().read_unaligned() });
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return out;
            }
        }
    }

    /// Take back the kernel's ejection of backend `id` (and its count of
    /// failures): the daemon does not confirm it.
    pub fn lift(&mut self, id: u32) -> Result<()> {
        Ok(self.health.set(id, BackendHealth::default(), 0)?)
    }
}

/// Read and remove the entry `key` of a hash map in one system call
/// (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, Linux 5.14 for hash maps; routerd
/// needs 5.18), which aya offers for queues and stacks only. The L7 proxy
/// takes each accepted connection's original destination this way: one
/// system call instead of a lookup and a delete, and no lock (the proxy's
/// workers accept at the same time).
fn lookup_and_delete<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
) -> std::io::Result<V> {
    use aya::maps::IterableMap;
    use std::os::fd::{AsFd, AsRawFd};
    /// The map-element member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let attr = ElemAttr {
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    // SAFETY: `attr` points at a key and a value buffer of the map's sizes
    // (aya checked them against K and V when it opened the typed map),
    // both live for the call; the kernel reads `size_of::<ElemAttr>()`
    // bytes of `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote the value (V is plain data; zeroed anyway).
    Ok(unsafe { value.assume_init() })
}

/// What clients handed to one of the daemon's listeners originally dialled:
/// TCP connections by the client's address ([`router_common::MAP_ORIG_DST`],
/// filled by the `tcp_ops` sock_ops program), captured UDP DNS queries by
/// the client socket's cookie ([`router_common::MAP_UDP_REVNAT`]).
pub struct OrigTable {
    tcp: HashMap<MapData, OrigKey, OrigDst>,
    udp: HashMap<MapData, UdpRevKey, UdpRevValue>,
}

impl OrigTable {
    pub fn open(pins: &Pins) -> Result<Self> {
        Ok(OrigTable {
            tcp: open_pinned(pins, router_common::MAP_ORIG_DST)?,
            udp: open_pinned(pins, router_common::MAP_UDP_REVNAT)?,
        })
    }

    /// The destination the TCP client `peer` (in the namespace `netns`)
    /// dialled; the entry is consumed.
    pub fn take_tcp(&self, netns: u64, peer: SocketAddr) -> Option<SocketAddr> {
        let peer = sync::unmap(peer);
        let (addr, family) = sync::ip_words(peer.ip());
        let key = OrigKey {
            netns,
            addr,
            port: sync::port_be(peer.port()),
            family,
            _pad: [0; 5],
        };
        let v = lookup_and_delete(&self.tcp, &key).ok()?;
        (v.family != 0)
            .then(|| SocketAddr::new(sync::words_ip(v.addr, v.family), sync::port_host(v.port)))
    }

    /// The destination a UDP socket (by cookie) meant for a datagram the
    /// kernel sent to `listener` instead.
    pub fn udp(&self, cookie: u64, listener: SocketAddr) -> Option<SocketAddr> {
        let (addr, family) = sync::ip_words(listener.ip());
        let mut key = UdpRevKey {
            cookie,
            addr,
            port: sync::port_be(listener.port()),
            family,
            _pad: [0; 5],
        };
        let v = self.udp.get(&key, 0).ok().or_else(|| {
            // An IPv4 listener reached from a dual-stack socket.
            let IpAddr::V4(v4) = listener.ip() else {
                return None;
            };
            key.addr = sync::ip_words(IpAddr::V6(v4.to_ipv6_mapped())).0;
            key.family = router_common::FAMILY_V6;
            self.udp.get(&key, 0).ok()
        })?;
        Some(sync::unmap(SocketAddr::new(
            sync::words_ip(v.vip, key.family),
            sync::port_host(v.port),
        )))
    }
}

/// Kernel helpers the programs call, with the Linux version that made each
/// available to `cgroup/sock_addr` programs (README, "Requirements").
pub const REQUIRED_HELPERS: [(&str, u32, &str, &str); 3] = [
    (
        "bpf_set_retval",
        187,
        "5.18",
        "refusing connect() with an explicit errno (EHOSTUNREACH, ECONNREFUSED)",
    ),
    (
        "bpf_sk_storage_get",
        107,
        "5.10",
        "socket-local storage, which lets getpeername/recvmsg show the VIP",
    ),
    (
        "bpf_get_socket_cookie",
        46,
        "5.7",
        "sticking unconnected UDP sockets to one backend",
    ),
];

/// If a verifier log says a helper is missing, which one. Kernels that know
/// the helper but not for this program type say `unknown func NAME#ID` or
/// `cannot use helper NAME#ID`; kernels older than the helper say
/// `invalid func unknown#ID`.
pub fn missing_helper(log: &str) -> Option<(&'static str, u32, &'static str, &'static str)> {
    let line = log.lines().find(|l| {
        l.contains("unknown func") || l.contains("cannot use helper") || l.contains("invalid func")
    })?;
    REQUIRED_HELPERS
        .iter()
        .copied()
        .find(|(_, id, _, _)| line.trim_end().ends_with(&format!("#{id}")))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn verifier_error(name: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    if let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e {
        let log = verifier_log.to_string();
        if let Some((helper, _, since, what)) = missing_helper(&log) {
            return anyhow::anyhow!(
                "this kernel ({}) lacks {helper} in cgroup/sock_addr programs, which routerd uses for \
                 {what}; it appeared in Linux {since}. routerd needs Linux 5.18 or later (6.1 and 6.12 \
                 are tested): upgrade the kernel. (The kernel rejected program {name}.)",
                kernel_release()
            );
        }
    }
    // Anything else: the verifier log is the only useful part; keep it whole.
    anyhow::anyhow!("the kernel rejected program {name}: {e:#?}")
}

fn restrict_dir(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
}

/// Detach everything pinned under `pins` (this layout and older ones) and
/// remove the pins. Idempotent.
pub fn remove(pins: &Pins) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !pins.root.exists() {
        return Ok(removed);
    }
    sys::ensure_bpffs(&pins.root)?;
    removed.extend(remove_layout(&pins.dir())?);
    for old in pins.old_dirs() {
        removed.extend(remove_layout(&old)?);
    }
    // The root only if we leave it empty (it may hold other layout versions).
    let _ = std::fs::remove_dir(&pins.root);
    Ok(removed)
}

/// Detach the links pinned under `dir/links` and remove `dir` with its maps.
fn remove_layout(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let links = dir.join("links");
    if links.exists() {
        for e in std::fs::read_dir(&links)? {
            let path = e?.path();
            match PinnedLink::from_pin(&path) {
                // Unpinning drops the last reference: the link detaches.
                Ok(link) => drop(link.unpin()?),
                Err(_) => std::fs::remove_file(&path)?,
            }
            removed.push(path);
        }
        std::fs::remove_dir(&links)?;
    }
    if dir.exists() {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(p);
        }
        std::fs::remove_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_helper() {
        let log = "0: R1=ctx() R10=fp0\n; bpf_set_retval\n12: (85) call unknown#187\nunknown func bpf_set_retval#187\n";
        assert_eq!(missing_helper(log).map(|m| m.0), Some("bpf_set_retval"));
        let log = "program of this type cannot use helper bpf_sk_storage_get#107\n";
        assert_eq!(missing_helper(log).map(|m| m.2), Some("5.10"));
        assert_eq!(
            missing_helper("invalid func unknown#187\n").map(|m| m.0),
            Some("bpf_set_retval")
        );
        assert_eq!(missing_helper("R1 invalid mem access 'scalar'\n"), None);
    }
}
