//! The daemon's hotplug latency (issue #5): from the kernel's uevent (a loop
//! device created with LOOP_CTL_ADD) to the node being usable by a process
//! inside a matching container. Runs `hotplug-latency` (tests/src/bin), which
//! starts a test container and `ctdev daemon` with a hotplug selector for
//! that device, and prints every sample.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::stats::Summary;
use super::Env;

/// Hotplug latency samples and their summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HotplugResults {
    /// Hotplug add events measured.
    pub events: usize,
    /// Median, min, max (ms).
    pub ms: Summary,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Every sample (ms), in order.
    pub samples_ms: Vec<f64>,
}

/// The measuring binary, built by [`super::run`] next to the release xtask.
pub fn binary() -> std::path::PathBuf {
    crate::root().join("target/release/hotplug-latency")
}

pub fn run(env: &Env) -> Result<HotplugResults> {
    let bin = binary();
    let out = Command::new(&bin)
        .arg(env.plan.hotplug_events.to_string())
        .env("CTDEV_BIN", &env.ctdev_bin)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .context("hotplug-latency printed no samples")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let samples_ms: Vec<f64> = v["samples_ms"]
        .as_array()
        .context("no samples_ms")?
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    if samples_ms.is_empty() {
        bail!("hotplug-latency measured nothing");
    }
    let mut sorted = samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let p99_ms = sorted[((sorted.len() as f64 * 0.99) as usize).min(sorted.len() - 1)];
    Ok(HotplugResults {
        events: samples_ms.len(),
        ms: Summary::of(&samples_ms),
        p99_ms,
        samples_ms,
    })
}
