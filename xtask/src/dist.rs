//! `cargo xtask dist`: the Debian package.
//!
//! Builds ctdev (release, eBPF object embedded), generates man pages for
//! `ctdev` and every subcommand (clap_mangen) and bash/zsh/fish completions
//! (clap_complete) from the CLI's own clap definition (`ctdev
//! generate-docs`, run on the built binary), then lets cargo-deb (installed with `cargo
//! install --locked cargo-deb` when missing) assemble the package from
//! `[package.metadata.deb]` in ctdev/Cargo.toml: /usr/bin/ctdev, the man
//! pages, completions where the shells look, the systemd unit (not enabled,
//! not started: installing the package enforces nothing), the example
//! policy as a conffile in /etc/ctdev/, docs in /usr/share/doc/ctdev/.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root, run_checked, step};

/// Where the generated files go (the deb assets point here).
pub fn out_dir() -> PathBuf {
    root().join("target/dist")
}

/// Which userspace build the package holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `--release`: what `cargo xtask dist` ships.
    Release,
    /// The debug build `cargo xtask test` already made (same files, faster).
    Debug,
}

/// Generates man pages and completions, then builds the .deb from the
/// already-built ctdev binary of `profile`; returns the package path.
pub fn package(profile: Profile) -> Result<PathBuf> {
    let out = out_dir();
    let ctdev = root().join(match profile {
        Profile::Release => "target/release/ctdev",
        Profile::Debug => "target/debug/ctdev",
    });
    generate(&out, &ctdev)?;
    install_cargo_deb()?;
    step("cargo deb (assembling the Debian package)");
    let deb_dir = out.join("deb");
    let _ = fs::remove_dir_all(&deb_dir);
    fs::create_dir_all(&deb_dir)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["deb", "-p", "ctdev", "--no-build"])
        .arg("--output")
        .arg(&deb_dir);
    if profile == Profile::Debug {
        // Stripped (as the release one) and quickly compressed: xz of the
        // 120 MB unstripped debug binary takes minutes.
        cmd.args(["--profile", "dev", "--fast"]);
    }
    run_checked(&mut cmd)?;
    let deb = fs::read_dir(&deb_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("cargo deb wrote no .deb into {}", deb_dir.display()))?;
    let size = fs::metadata(&deb)?.len();
    step(&format!(
        "package {} ({} bytes, {:.1} MiB)",
        deb.display(),
        size,
        size as f64 / (1024.0 * 1024.0)
    ));
    Ok(deb)
}

/// Installs `deb` into a copy of the clean root through the package test
/// (tests/tests/dist.rs: `dpkg -i`, `ctdev demo` from /usr/bin, man pages
/// and completions, `dpkg --purge`) and prints its transcript, the one the
/// test writes to target/dist/install-transcript.txt.
pub fn install_test(deb: &Path) -> Result<()> {
    let clean = clean_root()?;
    step("package test: dpkg -i into a clean root, ctdev demo, dpkg --purge");
    let mut cmd = Command::new("cargo");
    crate::userspace_env(&mut cmd)
        .env("CTDEV_DEB", deb)
        .env("CTDEV_CLEAN_ROOT", &clean)
        .args(["test", "-p", "ctdev-tests", "--test", "dist"])
        // The features of `cargo xtask test`'s build: no rebuild after it.
        .args(crate::Features::Failpoints.args())
        .args(["--", "--nocapture"]);
    run_checked(&mut cmd)?;
    let transcript = out_dir().join("install-transcript.txt");
    let text = fs::read_to_string(&transcript)
        .with_context(|| format!("the package test wrote no {}", transcript.display()))?;
    println!("{text}");
    step(&format!("install transcript in {}", transcript.display()));
    Ok(())
}

/// Man pages (`man/*.1.gz`) and completions (`completions/*`) under `out`,
/// written by the built binary `ctdev` itself (`ctdev generate-docs`: the
/// CLI lives in the binary, not in the library this xtask links).
pub fn generate(out: &Path, ctdev: &Path) -> Result<()> {
    step("generating man pages and shell completions from the clap definition");
    let man = out.join("man");
    let _ = fs::remove_dir_all(&man);
    run_checked(Command::new(ctdev).arg("generate-docs").arg(out))?;
    for page in fs::read_dir(&man)?.flatten().map(|e| e.path()) {
        if page.extension().is_some_and(|e| e == "1") {
            // Debian ships man pages gzip'd (-n: no name or time in the
            // header, so the package is reproducible).
            run_checked(Command::new("gzip").arg("-9nf").arg(&page))?;
        }
    }
    Ok(())
}

fn install_cargo_deb() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    step("cargo install --locked cargo-deb (once)");
    run_checked(Command::new("cargo").args(["install", "--locked", "cargo-deb"]))?;
    if !Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!("cargo-deb was installed but `cargo deb --version` fails");
    }
    Ok(())
}

/// A clean Debian root (debootstrap `--variant=minbase` of bookworm, from
/// Debian's packages; no Rust toolchain) for the package test, made once
/// and kept under target/dist/clean-root; the test installs into a copy.
/// Where the clean Debian root for the package test is cached.
const CLEAN_ROOT_CACHE: &str = "/var/cache/ctdev-xtask/clean-root-bookworm";

pub fn clean_root() -> Result<PathBuf> {
    // Kept outside the checkout: a machine makes it once (debootstrap takes
    // minutes) and every clone on it (CI's included) reuses it; the test
    // never modifies it (it installs into a copy).
    let dir = PathBuf::from(CLEAN_ROOT_CACHE);
    let done = dir.join(".ctdev-clean-root-done");
    if done.is_file() {
        return Ok(dir);
    }
    crate::setup::apt_install(&["debootstrap"])?;
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    step("debootstrap --variant=minbase bookworm (a clean root for the package test; once)");
    run_checked(
        Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&dir)
            .arg("http://deb.debian.org/debian"),
    )?;
    fs::write(&done, "")?;
    Ok(dir)
}
