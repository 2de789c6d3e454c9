//! The daemon under churn (issue #18): namespace containers created and
//! removed in waves while loop devices come and go and the daemon is stopped
//! and killed between waves. Runs `churn-bench` (tests/src/bin), which
//! checks the invariants after every wave and prints every sample; here the
//! samples are summarised (p50/p99 idle and under churn).
//!
//! `cargo xtask bench --only churn` runs this section alone (twice in a row
//! is what the issue asks for: `--only churn --repeat 2`).

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Env;

/// p50 and p99 of a set of samples (ms).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Pct {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Pct {
    pub fn of(samples: &[f64]) -> Pct {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Pct::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Pct {
            n: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// One churn run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChurnResults {
    pub containers: u64,
    pub live_target: u64,
    pub reused_names: u64,
    /// First-instruction probes run, and opens of a device outside the
    /// policy among them (must be 0).
    pub probes: u64,
    pub outside_opens: u64,
    pub attach_idle: Pct,
    pub hotplug_idle: Pct,
    pub attach_churn: Pct,
    pub hotplug_churn: Pct,
    pub max_watches: u64,
    pub rss_kb: Vec<u64>,
    pub fds: Vec<u64>,
    pub daemon_error_lines: u64,
    pub wall_s: f64,
    /// The raw output of `churn-bench` (every sample, every wave).
    pub raw: serde_json::Value,
}

/// The measuring binary, built by [`super::run`] next to the release xtask.
pub fn binary() -> std::path::PathBuf {
    crate::root().join("target/release/churn-bench")
}

pub fn run(env: &Env) -> Result<ChurnResults> {
    let (containers, live, loops, idle) = if env.plan.quick {
        (20, 8, 2, 5)
    } else {
        (env.plan.churn_containers, 100, 6, 50)
    };
    let bin = binary();
    let out = Command::new(&bin)
        .args([containers, live, loops, idle].map(|n| n.to_string()))
        .env("CTDEV_BIN", &env.ctdev_bin)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{} failed ({})", bin.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .context("churn-bench printed no result")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let samples = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    };
    let waves = v["waves"].as_array().cloned().unwrap_or_default();
    let per_wave = |k: &str| -> Vec<u64> { waves.iter().filter_map(|w| w[k].as_u64()).collect() };
    Ok(ChurnResults {
        containers: v["containers"].as_u64().unwrap_or(0),
        live_target: v["live_target"].as_u64().unwrap_or(0),
        reused_names: v["reused_names"].as_u64().unwrap_or(0),
        probes: v["probes"].as_u64().unwrap_or(0),
        outside_opens: v["outside_opens"].as_u64().unwrap_or(0),
        attach_idle: Pct::of(&samples("attach_idle_ms")),
        hotplug_idle: Pct::of(&samples("hotplug_idle_ms")),
        attach_churn: Pct::of(&samples("attach_churn_ms")),
        hotplug_churn: Pct::of(&samples("hotplug_churn_ms")),
        max_watches: per_wave("watches").into_iter().max().unwrap_or(0),
        rss_kb: per_wave("rss_kb"),
        fds: per_wave("fds"),
        daemon_error_lines: v["daemon_error_lines"].as_u64().unwrap_or(0),
        wall_s: v["wall_s"].as_f64().unwrap_or(0.0),
        raw: v,
    })
}

/// One line per figure, for the terminal and the closing note.
pub fn summary(r: &ChurnResults) -> String {
    let p = |name: &str, x: &Pct| {
        format!(
            "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
            x.p50, x.p99, x.max, x.n
        )
    };
    [
        format!(
            "churn: {} containers ({} live, {} names re-used) in {:.0} s; {} first-instruction probes, {} opens outside the policy",
            r.containers, r.live_target, r.reused_names, r.wall_s, r.probes, r.outside_opens
        ),
        p("attach idle", &r.attach_idle),
        p("attach under churn", &r.attach_churn),
        p("hotplug idle", &r.hotplug_idle),
        p("hotplug under churn", &r.hotplug_churn),
        format!(
            "watches max {}; RSS per wave {:?} kB; fds per wave {:?}; daemon ERROR lines {}",
            r.max_watches, r.rss_kb, r.fds, r.daemon_error_lines
        ),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Pct::of(&v);
        assert_eq!((p.p50, p.p99, p.max, p.n), (50.0, 99.0, 100.0, 100));
        assert_eq!(Pct::of(&[]).n, 0);
        assert_eq!(Pct::of(&[7.0]).p99, 7.0);
    }
}
