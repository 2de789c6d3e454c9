//! Installing prerequisites on a fresh machine; every step is skipped when
//! what it installs is already there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::{run_checked, step};

/// LLVM that bpf-linker 0.13 links against.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// apt option: wait up to 15 minutes for the dpkg lock.
const APT_LOCK_WAIT: &str = "-oDPkg::Lock::Timeout=900";

/// Debian packages the integration tests and benchmarks use.
const TEST_PACKAGES: &[&str] = &[
    "busybox-static",
    "bpftool",
    "iproute2",
    "kmod",
    "util-linux",
    "lxc",
    "runc",
    "crun",
    // Real container engines (tests/tests/{docker,podman}.rs): dockerd
    // 20.10 with its containerd, and Podman 4.3 with conmon.
    "docker.io",
    "containerd",
    "podman",
    "conmon",
    "tar",
    // The package test's clean root (tests/tests/dist.rs).
    "debootstrap",
];

fn home_cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || home_cargo_bin(name).is_file()
}

/// Whether a Debian package is installed.
fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs missing Debian packages (root only).
pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing packages {missing:?}: install them as root (apt-get install -y {})",
            missing.join(" ")
        );
    }
    step(&format!("apt-get install {}", missing.join(" ")));
    // Another apt (unattended upgrades, a parallel job) may hold the dpkg
    // lock for a while: wait for it instead of failing the whole run.
    run_checked(Command::new("apt-get").args([APT_LOCK_WAIT, "update", "-q"]))?;
    run_checked(
        Command::new("apt-get")
            .args([
                APT_LOCK_WAIT,
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// rust-src for nightly, LLVM 22 and bpf-linker.
pub fn bpf_toolchain() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        step("rustup component add rust-src --toolchain nightly");
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !on_path("bpf-linker") {
        if !Path::new(LLVM_PREFIX).join("bin/llvm-config").is_file() {
            apt_install(&["llvm-22-dev"])?;
        }
        step("cargo install bpf-linker (LLVM 22; takes a few minutes, once)");
        run_checked(
            Command::new("cargo")
                .args([
                    "install",
                    "--locked",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
        )?;
    }
    Ok(())
}

/// What the integration tests need besides the toolchain.
pub fn test_prerequisites() -> Result<()> {
    apt_install(TEST_PACKAGES)
}
