//! What the kernel object is built from, as one number: `cargo xtask
//! build-ebpf` records it next to the object, and router-user's build script
//! compares it with the sources on disk, so that a plain `cargo build` after
//! an edit under `router-ebpf/` or `router-common/` never embeds a stale
//! object (it fails and says to rebuild it).
use std::path::{Path, PathBuf};

/// Paths, relative to the workspace root, whose contents make the object.
pub const EBPF_INPUTS: [&str; 6] = [
    "router-ebpf/src",
    "router-ebpf/build.rs",
    "router-ebpf/Cargo.toml",
    "router-ebpf/Cargo.lock",
    "router-common/src",
    "router-common/Cargo.toml",
];

/// Where `build-ebpf` records the fingerprint, next to the object.
pub fn stamp_path(object: &Path) -> PathBuf {
    object.with_extension("inputs")
}

fn files(root: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let md = std::fs::metadata(root)?;
    if md.is_file() {
        out.push(root.to_path_buf());
        return Ok(());
    }
    for e in std::fs::read_dir(root)? {
        files(&e?.path(), out)?;
    }
    Ok(())
}

/// FNV-1a 64 over the relative path and contents of every input file, in
/// path order. Missing inputs (a lock file not made yet) count as empty.
pub fn fingerprint(workspace: &Path) -> std::io::Result<u64> {
    let mut all = Vec::new();
    for p in EBPF_INPUTS {
        let full = workspace.join(p);
        if full.exists() {
            files(&full, &mut all)?;
        }
    }
    all.sort();
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for f in all {
        let rel = f.strip_prefix(workspace).unwrap_or(&f);
        eat(rel.as_os_str().as_encoded_bytes());
        eat(&[0]);
        eat(&std::fs::read(&f)?);
        eat(&[0]);
    }
    Ok(h)
}
