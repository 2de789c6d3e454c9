//! `cargo xtask test`: the whole suite, with a check that every test ran.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{step, userspace_env};

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

pub fn run(extra: &[String]) -> Result<()> {
    step("running unit and integration tests (root, real kernel)");
    let mut cmd = Command::new("cargo");
    userspace_env(&mut cmd)
        .args(["test", "--workspace", "--no-fail-fast", "--"])
        .args(extra)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut totals = Totals::default();
    let mut integration_ran = 0u64;
    let mut in_integration = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if line.contains("Running") {
            // `Running tests/foo.rs (...)`: an integration test binary
            // (unit tests say `Running unittests ...`).
            in_integration = line.trim_start().starts_with("Running tests/");
        }
        if line.trim_start().starts_with("test result:") {
            let mut one = Totals::default();
            add_result_line(&mut one, &line);
            if in_integration {
                integration_ran += one.passed + one.failed;
            }
            add_result_line(&mut totals, &line);
        }
    }
    let status = child.wait()?;
    println!(
        "xtask: {} passed, {} failed, {} ignored; {} integration tests ran",
        totals.passed, totals.failed, totals.ignored, integration_ran
    );
    if !status.success() || totals.failed > 0 {
        bail!("tests failed");
    }
    if totals.ignored > 0 {
        bail!(
            "{} test(s) were ignored: every test must run",
            totals.ignored
        );
    }
    if extra.is_empty() && integration_ran == 0 {
        bail!("no integration test ran");
    }
    println!("{} passed, {} failed", totals.passed, totals.failed);
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
