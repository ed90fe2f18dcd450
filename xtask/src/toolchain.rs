//! The toolchain the eBPF build needs, set up automatically and idempotently:
//! the `rust-src` component and a `bpf-linker` linked against rustc's own LLVM.
//!
//! Why it is done this way (measured; see ARCHITECTURE.md, "Building"):
//! - bpf-linker must use the same LLVM major as rustc, or linking fails with
//!   `ERROR llvm: Invalid record`. No distribution package has rustc's LLVM,
//!   but rustc ships it as `libLLVM.so.<ver>-rust-<ver>` in its sysroot.
//! - bpf-linker 0.13 links against `<prefix>/lib/libLLVM.so` and finds it at run
//!   time through its RUNPATH by the library's soname, so the prefix gets two
//!   symlinks: `libLLVM.so` and one named exactly like the soname.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

pub fn sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(output(
        Command::new("rustc").args(["--print", "sysroot"]),
    )?))
}

/// `rustup component add rust-src` unless it is already there.
pub fn ensure_rust_src() -> Result<()> {
    let core = sysroot()?.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.exists() {
        return Ok(());
    }
    eprintln!("xtask: installing the rust-src component (needed for -Z build-std=core)");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src"])
        .status()
        .context("failed to run rustup: is the Rust toolchain installed with rustup?")?;
    if !status.success() || !core.exists() {
        bail!(
            "`rustup component add rust-src` failed ({status}); the eBPF build needs it. \
             Check that rustup can reach its download server, then run `cargo xtask setup` again."
        );
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

fn bpf_linker_path() -> PathBuf {
    cargo_home().join("bin/bpf-linker")
}

/// True if `bpf-linker --version` runs in a plain environment.
fn bpf_linker_works(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

/// The LLVM major version rustc was built with (`rustc -vV`).
fn rustc_llvm_major() -> Result<String> {
    let vv = output(Command::new("rustc").arg("-vV"))?;
    let line = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc -vV` printed no `LLVM version:` line")?;
    Ok(line.split('.').next().unwrap_or(line).to_string())
}

/// Install bpf-linker against rustc's libLLVM unless a working one exists.
pub fn ensure_bpf_linker() -> Result<PathBuf> {
    let bin = bpf_linker_path();
    if bpf_linker_works(&bin) {
        return Ok(bin);
    }
    let major = rustc_llvm_major()?;
    let libdir = sysroot()?.join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.{major}* in {}: this rustc does not ship its LLVM as a shared \
                 library, so bpf-linker cannot be linked against it",
                libdir.display()
            )
        })?;
    let soname = lib.file_name().unwrap().to_owned();
    let prefix = cargo_home().join(format!("router-llvm-prefix-{major}"));
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("symlink {} -> {}", link.display(), lib.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} \
         ({}); this takes about a minute, once",
        lib.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("failed to run cargo install")?;
    if !status.success() {
        bail!("installing bpf-linker failed ({status}); see cargo's output above");
    }
    if !bpf_linker_works(&bin) {
        bail!(
            "bpf-linker was installed at {} but `bpf-linker --version` does not run; \
             check that {} still exists",
            bin.display(),
            lib.display()
        );
    }
    Ok(bin)
}

/// Install Debian packages for commands that are missing: `(command, package)`.
pub fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let on_path = |c: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(c).is_file()))
            .unwrap_or(false)
    };
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(c, _)| !on_path(c))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let install: Vec<&str> = ["install", "-y", "-qq"]
        .into_iter()
        .chain(missing.iter().copied())
        .collect();
    // Servers we install only to benchmark against (nginx, haproxy) must not
    // start on the host: Debian's policy-rc.d hook (exit 101) stops the
    // packages' scripts from starting them. Ours only if there is none.
    let _no_start = NoServiceStart::new();
    // Package lists may be missing on a fresh machine: update once and retry.
    let installed = apt(&install) || (apt(&["update", "-qq"]) && apt(&install));
    if !installed {
        bail!(
            "could not install {} with apt-get; install them by hand and run again",
            missing.join(" ")
        );
    }
    Ok(())
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action forbidden") while alive.
struct NoServiceStart(Option<PathBuf>);

impl NoServiceStart {
    fn new() -> Self {
        let p = PathBuf::from("/usr/sbin/policy-rc.d");
        if p.exists() {
            return NoServiceStart(None);
        }
        use std::os::unix::fs::PermissionsExt;
        let ok = std::fs::write(
            &p,
            "#!/bin/sh\n# written by cargo xtask while installing packages\nexit 101\n",
        )
        .and_then(|_| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)));
        NoServiceStart(ok.ok().map(|_| p))
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
