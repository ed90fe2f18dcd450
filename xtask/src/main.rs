//! `cargo xtask <command>`: everything that needs more than one cargo call.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod toolchain;

#[derive(Parser)]
#[command(about = "Build, demo and test tasks for the router")]
struct Cli {
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
    Ok(())
}

fn build_ebpf() -> Result<()> {
    setup()?;
    let root = root();
    let target_dir = root.join("target/ebpf");
    // RUSTC_BOOTSTRAP scoped to this one cargo call: stable rustc only honours
    // -Z build-std with it. --btf emits .BTF/.BTF.ext, which the BTF map
    // definitions (and socket-local storage in particular) require.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("router-ebpf"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir);
    run(&mut cmd)?;
    let built = target_dir.join("bpfel-unknown-none/release/router-ebpf");
    let dest = ebpf_object();
    std::fs::create_dir_all(dest.parent().unwrap())?;
    let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Only touch the file when it changed, so router-user is not rebuilt for nothing.
    if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(&dest, &bytes)?;
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

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Build { release } => build(release),
    }
}
