//! Embeds the kernel object built by `cargo xtask build-ebpf`
//! (target/bpf/router-ebpf.o, or $ROUTER_EBPF_OBJ). Without it, routerd still
//! builds (so `cargo clippy`/unit tests work anywhere) but refuses to start
//! the datapath with a message saying how to build the object. With an
//! object built from other sources than `router-ebpf/` and `router-common/`
//! hold now (its recorded input fingerprint differs), the build fails: a
//! stale kernel object is never embedded.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=ROUTER_EBPF_OBJ");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_path_buf();
    let explicit = std::env::var_os("ROUTER_EBPF_OBJ").map(PathBuf::from);
    let src = explicit
        .clone()
        .unwrap_or_else(|| workspace.join("target/bpf/router-ebpf.o"));
    println!("cargo:rerun-if-changed={}", src.display());
    let stamp = router_common::inputs::stamp_path(&src);
    println!("cargo:rerun-if-changed={}", stamp.display());
    for input in router_common::inputs::EBPF_INPUTS {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("router-ebpf.o");
    let bytes = std::fs::read(&src).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=no eBPF object at {}: routerd will not be able to load its datapath \
             (run `cargo xtask build-ebpf`)",
            src.display()
        );
    } else if explicit.is_none() {
        check_fresh(&workspace, &src, &stamp);
    }
    if std::fs::read(&out).ok() != Some(bytes.clone()) {
        std::fs::write(&out, bytes).unwrap();
    }
}

/// Fail the build if the object was built from other sources.
fn check_fresh(workspace: &Path, object: &Path, stamp: &Path) {
    let now = router_common::inputs::fingerprint(workspace)
        .expect("reading the kernel object's sources")
        .to_string();
    let recorded = std::fs::read_to_string(stamp).unwrap_or_default();
    if recorded.trim() != now {
        panic!(
            "\n\nthe eBPF object {} was built from other sources than router-ebpf/ and \
             router-common/ hold now (or its input record {} is missing): routerd would embed \
             a stale kernel object. Rebuild it with `cargo xtask build-ebpf` (or `cargo xtask \
             build`), then build again.\n",
            object.display(),
            stamp.display()
        );
    }
}
