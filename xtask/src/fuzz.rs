//! `cargo xtask fuzz [--seconds N] [--target T]`: runs every cargo-fuzz
//! target in `fuzz/` for N seconds each (nightly, libFuzzer), starting from
//! the committed seeds in `fuzz/seeds/<target>` and the local working corpus
//! `fuzz/corpus/<target>` (not committed; new inputs are written there, so
//! repeated runs keep growing it). Installs cargo-fuzz when it is missing.
//! Fails if any target finds a crash (the input is left in
//! `fuzz/artifacts/<target>/`). fuzz/README.md says how to grow the seeds.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root, run_checked, step};

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 6] = [
    "rule_parse",
    "oci_import",
    "lxc_import",
    "policy_file",
    "cdi_spec",
    "grant_sequences",
];

/// The cargo-fuzz version installed when none is (builds on stable 1.85+).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn install() -> Result<()> {
    if !have_cargo_fuzz() {
        step(&format!("installing cargo-fuzz {CARGO_FUZZ_VERSION}"));
        run_checked(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !nightly {
        step("installing the nightly toolchain (cargo-fuzz needs it)");
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    Ok(())
}

/// Runs each target (or only `only`) for `seconds`.
pub fn run(seconds: u64, only: Option<&str>) -> Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    install()?;
    let dir = root().join("fuzz");
    for t in targets {
        let corpus = dir.join("corpus").join(t);
        let seeds = dir.join("seeds").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        step(&format!("fuzzing {t} for {seconds} s"));
        run_checked(
            Command::new("cargo")
                .current_dir(&dir)
                .args(["+nightly", "fuzz", "run", "-O", t])
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .arg(&corpus)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-rss_limit_mb=2048")
                .arg("-print_final_stats=1"),
        )
        .with_context(|| format!("fuzz target {t} failed (see fuzz/artifacts/{t}/)"))?;
    }
    println!("xtask: fuzzing finished: no crash");
    Ok(())
}
