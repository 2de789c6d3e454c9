//! `cargo xtask dist`: the Debian package.
//!
//! Builds ctdev (release, eBPF object embedded), generates man pages for
//! `ctdev` and every subcommand (clap_mangen) and bash/zsh/fish completions
//! (clap_complete) from the CLI's own clap definition
//! ([`ctdev::cli::command`]), then lets cargo-deb (installed with `cargo
//! install --locked cargo-deb` when missing) assemble the package from
//! `[package.metadata.deb]` in ctdev/Cargo.toml: /usr/bin/ctdev, the man
//! pages, completions where the shells look, the systemd unit (not enabled,
//! not started: installing the package enforces nothing), the example
//! policy as a conffile in /etc/ctdev/, docs in /usr/share/doc/ctdev/.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap_complete::Shell;

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
    generate(&out)?;
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

/// Man pages (`man/*.1.gz`) and completions (`completions/*`) under `out`.
pub fn generate(out: &Path) -> Result<()> {
    step("generating man pages and shell completions from the clap definition");
    let man = out.join("man");
    let comp = out.join("completions");
    let _ = fs::remove_dir_all(&man);
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&comp)?;
    let cmd = ctdev::cli::command().version(env!("CARGO_PKG_VERSION"));
    let mut pages = vec![("ctdev".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("ctdev-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone().name(name).version(env!("CARGO_PKG_VERSION")),
        ));
    }
    for (name, page) in pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .section("1")
            .manual("ctdev manual")
            .render(&mut text)?;
        let path = man.join(format!("{name}.1"));
        fs::write(&path, text)?;
        // Debian ships man pages gzip'd (-n: no name or time in the header,
        // so the package is reproducible).
        let _ = fs::remove_file(path.with_extension("1.gz"));
        run_checked(Command::new("gzip").arg("-9n").arg(&path))?;
    }
    for (shell, file) in [
        (Shell::Bash, "ctdev.bash"),
        (Shell::Zsh, "_ctdev"),
        (Shell::Fish, "ctdev.fish"),
    ] {
        let mut cmd = ctdev::cli::command();
        let mut f = fs::File::create(comp.join(file))?;
        clap_complete::generate(shell, &mut cmd, "ctdev", &mut f);
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
