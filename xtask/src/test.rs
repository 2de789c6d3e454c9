//! `cargo xtask test`: the whole suite, with a check that every test ran.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{step, userspace_env, Features};

/// Totals of every `test result:` line cargo printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub filtered: u64,
}

/// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; ...` line.
pub fn add_result_line(t: &mut Totals, line: &str) {
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return;
    };
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let n = words
            .iter()
            .find_map(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
        if part.contains("passed") {
            t.passed += n;
        } else if part.contains("failed") {
            t.failed += n;
        } else if part.contains("ignored") {
            t.ignored += n;
        } else if part.contains("filtered out") {
            t.filtered += n;
        }
    }
}

/// Runs `cargo test ARGS -- EXTRA`, echoing its output; returns the totals.
fn cargo_test(args: &[&str], extra: &[String], dist: &Dist) -> Result<(bool, Totals)> {
    let mut cmd = Command::new("cargo");
    userspace_env(&mut cmd)
        // tests/tests/dist.rs installs this package into a copy of this root.
        .env("CTDEV_DEB", &dist.deb)
        .env("CTDEV_CLEAN_ROOT", &dist.clean_root)
        .arg("test")
        .args(args)
        // Same features as the build, so the failpoint binary stays.
        .args(Features::Failpoints.args())
        .args(["--no-fail-fast", "--"])
        .args(extra)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        add_result_line(&mut totals, &line);
    }
    Ok((child.wait()?.success(), totals))
}

/// The takeover differential test with `cases` random lists from `seed`
/// (`cargo xtask difftest`).
pub fn difftest(cases: u64, seed: u64) -> Result<()> {
    let mut cmd = Command::new("cargo");
    userspace_env(&mut cmd)
        .arg("test")
        .args(["-p", "ctdev-tests", "--test", "takeover_diff"])
        .args(Features::Failpoints.args())
        .args(["--", "--nocapture"])
        .env("CTDEV_DIFFTEST_CASES", cases.to_string())
        .env("CTDEV_DIFFTEST_SEED", seed.to_string());
    let status = cmd.status().context("cannot start cargo test")?;
    if !status.success() {
        bail!("difftest failed (seed {seed}); rerun with `cargo xtask difftest --cases {cases} --seed {seed}`");
    }
    Ok(())
}

/// What the package test gets: the package and a clean root to install it in.
pub struct Dist {
    /// The .deb.
    pub deb: PathBuf,
    /// A debootstrap'd root (never modified by the test: it copies it).
    pub clean_root: PathBuf,
}

pub fn run(extra: &[String], dist: &Dist) -> Result<()> {
    step("running unit tests");
    let (unit_ok, unit) = cargo_test(&["--workspace", "--exclude", "ctdev-tests"], extra, dist)?;
    step("running integration tests (root, real kernel)");
    let (int_ok, integration) = cargo_test(&["-p", "ctdev-tests"], extra, dist)?;
    let passed = unit.passed + integration.passed;
    // A test binary that crashed (abort, signal) prints no result line:
    // count it as a failure so the summary never says "0 failed" then.
    let crashed =
        u64::from(!unit_ok && unit.failed == 0) + u64::from(!int_ok && integration.failed == 0);
    if crashed > 0 {
        println!("xtask: {crashed} test run(s) ended without a result (a test binary crashed or failed to build)");
    }
    let failed = unit.failed + integration.failed + crashed;
    let ignored = unit.ignored + integration.ignored;
    println!(
        "xtask: unit {} passed, {} failed; integration {} passed, {} failed; {} ignored",
        unit.passed, unit.failed, integration.passed, integration.failed, ignored
    );
    println!("{passed} passed, {failed} failed");
    if !unit_ok || !int_ok || failed > 0 {
        bail!("tests failed");
    }
    if ignored > 0 {
        bail!("{ignored} test(s) were ignored: every test must run");
    }
    if extra.is_empty() && integration.passed == 0 {
        bail!("no integration test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines() {
        let mut t = Totals::default();
        add_result_line(&mut t, "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s");
        add_result_line(
            &mut t,
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        add_result_line(&mut t, "running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 4,
                failed: 2,
                ignored: 1,
                filtered: 2
            }
        );
    }
}
