//! Host facts the datapath needs: where cgroup v2 and bpffs are, the memlock
//! limit. Never assume a path: hybrid hosts mount cgroup2 at
//! `/sys/fs/cgroup/unified`, most others at `/sys/fs/cgroup`.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo to find the cgroup2 mount")?;
    parse_cgroup2_mount(&info).context(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo). The router \
         attaches to a cgroup v2 directory: mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified` or pass --cgroup",
    )
}

/// Pure part of [`cgroup2_mount`]: mountinfo lines are
/// `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mountpoint = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mountpoint)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Make sure `dir` lives on a bpffs; mount one at `mount_point` if needed.
pub fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    // Walk up to the first existing ancestor.
    let mut probe = pin_root.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            bail!("{} has no existing ancestor", pin_root.display());
        }
    }
    if is_bpffs(&probe) {
        return Ok(());
    }
    // The conventional mount point is /sys/fs/bpf; mount it there if the pin
    // root is under it and nothing is mounted yet.
    let default = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(default) && default.exists() && !is_bpffs(default) {
        nix::mount::mount(
            Some("bpf"),
            default,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .with_context(|| {
            format!(
                "mounting bpffs at {}: the router pins its maps and links there so that \
                 routing survives a daemon restart. Mount it yourself with \
                 `mount -t bpf bpf /sys/fs/bpf`, or pass --pin-root on a bpffs",
                default.display()
            )
        })?;
        tracing::info!("mounted bpffs at {}", default.display());
        return Ok(());
    }
    bail!(
        "{} is not on a bpffs (found no bpf filesystem at {}). Pass a --pin-root under a \
         mounted bpffs (usually /sys/fs/bpf)",
        pin_root.display(),
        probe.display()
    )
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
pub fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    if rc != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Inode number of a cgroup directory: what the kernel calls the cgroup id.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    let md = std::fs::metadata(path).with_context(|| format!("cgroup {}", path.display()))?;
    if !md.is_dir() {
        bail!(
            "{} is not a directory; expected a cgroup v2 directory",
            path.display()
        );
    }
    Ok(md.ino())
}

/// Check that `path` is a directory of the cgroup v2 hierarchy.
pub fn check_cgroup2(path: &Path) -> Result<()> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
    let st = nix::sys::statfs::statfs(path).with_context(|| {
        format!(
            "cgroup {}: does it exist? Create it or pass another --cgroup",
            path.display()
        )
    })?;
    if st.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
        bail!(
            "{} is not on a cgroup v2 filesystem; the router attaches to cgroup v2 \
             directories (the cgroup2 mount on this host is {})",
            path.display(),
            cgroup2_mount()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| e.to_string())
        );
    }
    Ok(())
}

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6; aya has no call for it): write
/// `keys[i] -> values[i]` in one system call per [`BATCH_MAX`] entries
/// instead of one per entry. At start-up that is 200,000 backend and slot
/// writes at the bench's 10,000 services, where the system calls themselves
/// (entry, copying in, the map's lookup) were a fifth of the time to ready.
/// The kernel writes in order and stops at the first failure (no rollback:
/// the caller re-reads the maps on error, as after any failed write).
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::MapData,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    /// `union bpf_attr`'s `batch` member (uapi/linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len(), "one value per key");
    let fd = map.fd().as_fd().as_raw_fd();
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(BATCH_MAX);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr.batch` for its size; the
        // kernel reads `n` keys and values from the slices (Pod, so any
        // bytes are valid) and writes back only `attr.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            bail!(
                "BPF_MAP_UPDATE_BATCH wrote {} of {} entries: {e}",
                done + attr.count as usize,
                keys.len()
            );
        }
        done += n;
    }
    Ok(())
}

/// Entries per `BPF_MAP_UPDATE_BATCH` call (the kernel copies each one in
/// on its own; larger calls only hold the CPU longer between reschedules).
const BATCH_MAX: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let info = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_in_unified_layout_and_unescapes() {
        let info = "30 1 0:26 / /sys/fs/cg\\040root rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cg root"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}

/// The tick rates Linux is built with (CONFIG_HZ).
const HZ_CHOICES: [u32; 4] = [100, 250, 300, 1000];

/// The kernel's tick rate (CONFIG_HZ), which `BPF_SOCK_OPS_TIMEOUT_INIT`
/// counts in (jiffies). Nothing tells a process directly (`CLK_TCK` is
/// USER_HZ, always 100): two samples of `/proc/timer_list` 50 ms apart
/// give jiffies against its nanosecond clock. Unreadable: 1000 is assumed
/// (a timeout computed with it is never shorter than asked).
pub fn kernel_hz() -> u32 {
    static HZ: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        let sample = || {
            std::fs::read_to_string("/proc/timer_list")
                .ok()
                .and_then(|t| parse_timer_list(&t))
        };
        let a = sample();
        std::thread::sleep(std::time::Duration::from_millis(50));
        match (a, sample()) {
            (Some(a), Some(b)) => hz_from_samples(a, b).unwrap_or(1000),
            _ => {
                tracing::warn!(
                    "could not read the kernel's tick rate from /proc/timer_list; assuming \
                     HZ=1000 (synRetransmitTimeout is then at least what it says)"
                );
                1000
            }
        }
    })
}

/// `(now at ... nsecs, jiffies: ...)` of a `/proc/timer_list` text.
pub fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let now = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .parse()
            .ok()
    })?;
    let jiffies = text
        .lines()
        .find_map(|l| l.strip_prefix("jiffies: ")?.trim().parse().ok())?;
    Some((now, jiffies))
}

/// The tick rate two `(ns, jiffies)` samples show, rounded to the nearest
/// rate Linux builds with; `None` if they are too close to tell.
pub fn hz_from_samples(a: (u64, u64), b: (u64, u64)) -> Option<u32> {
    let ns = b.0.checked_sub(a.0)?;
    let ticks = b.1.checked_sub(a.1)?;
    if ns < 10_000_000 {
        return None;
    }
    let hz = ticks as f64 * 1e9 / ns as f64;
    HZ_CHOICES.into_iter().min_by(|x, y| {
        (f64::from(*x) - hz)
            .abs()
            .total_cmp(&(f64::from(*y) - hz).abs())
    })
}

/// `ms` in the kernel's jiffies, rounded up (at least one).
pub fn ms_to_jiffies(ms: u32) -> u32 {
    (u64::from(ms) * u64::from(kernel_hz()))
        .div_ceil(1000)
        .max(1) as u32
}

#[cfg(test)]
mod hz_tests {
    use super::*;

    #[test]
    fn the_tick_rate_comes_from_two_timer_list_samples() {
        let text = "Timer List Version: v0.9\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 34083290580927 nsecs\n\ncpu: 0\n  .idle_jiffies   : 4303413025\njiffies: 4303414045\n";
        let a = parse_timer_list(text).unwrap();
        assert_eq!(a, (34_083_290_580_927, 4_303_414_045));
        // 50 ms at HZ=250: 12 or 13 ticks.
        assert_eq!(hz_from_samples(a, (a.0 + 50_000_000, a.1 + 13)), Some(250));
        assert_eq!(hz_from_samples(a, (a.0 + 50_000_000, a.1 + 50)), Some(1000));
        assert_eq!(hz_from_samples(a, (a.0 + 50_000_000, a.1 + 5)), Some(100));
        assert_eq!(hz_from_samples(a, (a.0 + 1_000, a.1)), None);
        assert_eq!(parse_timer_list("no clock here"), None);
    }
}
