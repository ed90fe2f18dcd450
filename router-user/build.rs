//! Embeds the kernel object built by `cargo xtask build-ebpf`
//! (target/bpf/router-ebpf.o, or $ROUTER_EBPF_OBJ). Without it, routerd still
//! builds (so `cargo clippy`/unit tests work anywhere) but refuses to start
//! the datapath with a message saying how to build the object.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=ROUTER_EBPF_OBJ");
    let src = std::env::var_os("ROUTER_EBPF_OBJ")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
                .join("../target/bpf/router-ebpf.o")
        });
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("router-ebpf.o");
    let bytes = std::fs::read(&src).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=no eBPF object at {}: routerd will not be able to load its datapath \
             (run `cargo xtask build-ebpf`)",
            src.display()
        );
    }
    if std::fs::read(&out).ok() != Some(bytes.clone()) {
        std::fs::write(&out, bytes).unwrap();
    }
}
