//! Installing prerequisites on a fresh machine; every step is skipped when
//! what it installs is already there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

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
    // The memlock LD_PRELOAD shim crun 1.8 needs here (tests/src/runtimes.rs),
    // also for Podman with crun.
    "gcc",
    // Real container engines (tests/tests/{docker,podman}.rs): dockerd
    // 20.10 with its containerd, and Podman 4.3 with conmon.
    "docker.io",
    "containerd",
    "podman",
    "conmon",
    "tar",
    // The package test's clean root (tests/tests/dist.rs).
    "debootstrap",
    // The tests' own udevd and udevadm (tests/tests/udev.rs, the hotplug
    // bench on udevd's events).
    "udev",
    // The NRI tests: jq in the runc wrapper.
    "jq",
];

/// Debian packages building the workspace needs: protoc for the tests'
/// CRI client (k8s-cri's build script).
const BUILD_PACKAGES: &[&str] = &["protobuf-compiler"];

/// The target the shipped `ctdev` binary is built for (see
/// `link_static` in main.rs): static, musl.
pub const SHIPPED_TARGET: &str = "x86_64-unknown-linux-musl";

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

/// Rust's standard library for the shipped binary's target (musl's C
/// library comes with it: nothing to install from Debian, no C code is
/// compiled for it).
pub fn musl_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup target list")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == SHIPPED_TARGET)
    {
        step(&format!("rustup target add {SHIPPED_TARGET}"));
        run_checked(Command::new("rustup").args(["target", "add", SHIPPED_TARGET]))?;
    }
    Ok(())
}

/// What building the workspace needs besides the BPF toolchain: protoc and
/// NRI's protocol file (a fresh machine has neither).
pub fn build_prerequisites() -> Result<()> {
    apt_install(BUILD_PACKAGES)?;
    nri_protocol()
}

/// What the integration tests need besides the toolchain.
pub fn test_prerequisites() -> Result<()> {
    apt_install(TEST_PACKAGES)?;
    containerd_with_nri()
}

/// Where packages of Debian's next release (trixie) are unpacked with
/// `dpkg -x`, not installed: installing them would pull that release's libc
/// and toolchain into the machine. ctdev's build.rs and the NRI tests look
/// here.
pub const DEPS_DIR: &str = "/opt/ctdev-deps";
/// The trixie apt source, pinned to priority 1 so that nothing is ever
/// installed from it implicitly (`apt-get download PKG/trixie` only).
const TRIXIE_SOURCES: &str = "/etc/apt/sources.list.d/ctdev-trixie.sources";
const TRIXIE_PIN: &str = "/etc/apt/preferences.d/ctdev-trixie";

/// Unpacks trixie's `pkg` into `DEPS_DIR/into` unless `marker` is there.
fn unpack_from_trixie(pkg: &str, into: &str, marker: &str) -> Result<()> {
    let dest = Path::new(DEPS_DIR).join(into);
    if dest.join(marker).exists() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{} is missing: run `cargo xtask setup` (or any xtask command) as root once to unpack Debian trixie's {pkg} there",
            dest.join(marker).display()
        );
    }
    if !Path::new(TRIXIE_SOURCES).exists() {
        step("adding Debian trixie as an apt source (pin priority 1: download only)");
        std::fs::write(
            TRIXIE_SOURCES,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )?;
        std::fs::write(
            TRIXIE_PIN,
            "Package: *\nPin: release n=trixie\nPin-Priority: 1\n",
        )?;
        run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    }
    let dl = Path::new(DEPS_DIR).join("dl");
    std::fs::create_dir_all(&dl)?;
    step(&format!(
        "apt-get download {pkg}/trixie; dpkg -x into {}",
        dest.display()
    ));
    run_checked(Command::new("apt-get").current_dir(&dl).args([
        "download",
        "-q",
        &format!("{pkg}/trixie"),
    ]))?;
    let prefix = format!("{pkg}_");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dl)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort();
    let Some(deb) = debs.pop() else {
        bail!(
            "apt-get download {pkg}/trixie left no .deb in {}",
            dl.display()
        );
    };
    let _ = std::fs::remove_dir_all(&dest);
    run_checked(Command::new("dpkg").arg("-x").arg(&deb).arg(&dest))?;
    if !dest.join(marker).exists() {
        bail!("{} has no {marker}", deb.display());
    }
    Ok(())
}

/// NRI's protocol definition (Debian: golang-github-containerd-nri-dev,
/// NRI 0.6 in trixie), from which ctdev's build.rs generates the plugin's
/// messages. A machine that has the package installed needs nothing here.
pub fn nri_protocol() -> Result<()> {
    const INSTALLED: &str = "/usr/share/gocode/src/github.com/containerd/nri/pkg/api/api.proto";
    if Path::new(INSTALLED).is_file() || std::env::var_os("CTDEV_NRI_PROTO").is_some() {
        return Ok(());
    }
    unpack_from_trixie(
        "golang-github-containerd-nri-dev",
        "nri",
        "usr/share/gocode/src/github.com/containerd/nri/pkg/api/api.proto",
    )
}

/// containerd 1.7 (NRI) for the NRI tests: bookworm's 1.6 has no NRI;
/// trixie's 1.7 needs only runc and libc6 >= 2.34. Unpacked, never
/// installed: the system's containerd (docker.io's) stays as it is.
pub fn containerd_with_nri() -> Result<()> {
    unpack_from_trixie("containerd", "containerd", "usr/bin/containerd")
}
