//! The daemon's hotplug latency (issue #5): from the kernel's uevent (a loop
//! device created with LOOP_CTL_ADD) to the node being usable by a process
//! inside a matching container. Runs `hotplug-latency` (tests/src/bin), which
//! starts a test container and `ctdev daemon` with a hotplug selector for
//! that device, and prints every sample. Run twice: on the kernel's events
//! (no udevd), and on udevd's processed events (`--udev`: the tests' own
//! udevd with a rule giving the device an ID_SERIAL, a by-id link, owner
//! and mode; the daemon recreates the link), where udevd's own processing
//! time (LOOP_CTL_ADD → udevd's event) is reported separately.
//!
//! The node is probed by one process in the container's cgroup (polling
//! every 100 µs); the daemon's timing lines give the steps of each event
//! (`steps`: kernel delivery, event loop, lane wait, the add, the way back),
//! and `probe_ms` is what one fresh `probe()` (fork + cgroup move) costs:
//! the earlier bench polled with those, so it measured its own probing.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Result};

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
    /// Where the time goes, per step (kernel events run): `deliver`,
    /// `handle`, `wait`, `run`, `back`, `daemon` (ms).
    pub steps: BTreeMap<String, Step>,
    /// One fresh `probe()` (fork, join the cgroup, open), as the earlier
    /// bench polled with (ms).
    pub probe_ms: Summary,
    /// The same on udevd's processed events (node and link usable).
    pub udev: Option<UdevHotplug>,
}

/// One step of the daemon's handling of an event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// Median, min, max (ms).
    pub ms: Summary,
    /// 99th percentile (ms).
    pub p99_ms: f64,
}

/// Hotplug latency on udevd's events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UdevHotplug {
    /// Events measured.
    pub events: usize,
    /// LOOP_CTL_ADD → node and udev link usable in the container (ms).
    pub ms: Summary,
    /// 99th percentile of that (ms).
    pub p99_ms: f64,
    /// Of which udevd's own processing: LOOP_CTL_ADD → udevd's event (ms).
    pub udevd_ms: Summary,
    /// Every total sample (ms).
    pub samples_ms: Vec<f64>,
    /// Every udevd sample (ms).
    pub udevd_samples_ms: Vec<f64>,
}

/// The measuring binary, built by [`super::run`] next to the release xtask.
pub fn binary() -> std::path::PathBuf {
    crate::root().join("target/release/hotplug-latency")
}

fn p99(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 * 0.99) as usize).min(sorted.len() - 1)]
}

pub fn run(env: &Env) -> Result<HotplugResults> {
    let (samples_ms, _, v) = measure(env, false)?;
    let (u, udevd, _) = measure(env, true)?;
    if udevd.len() != u.len() {
        bail!(
            "hotplug-latency --udev: {} samples but {} udevd times",
            u.len(),
            udevd.len()
        );
    }
    let steps = v["steps"]
        .as_object()
        .map(|o| {
            o.keys()
                .map(|k| {
                    let s = super::json_samples(&v["steps"], k);
                    let step = Step {
                        ms: Summary::of(&s),
                        p99_ms: if s.is_empty() { 0.0 } else { p99(&s) },
                    };
                    (k.clone(), step)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(HotplugResults {
        events: samples_ms.len(),
        ms: Summary::of(&samples_ms),
        p99_ms: p99(&samples_ms),
        samples_ms,
        steps,
        probe_ms: Summary::of(&super::json_samples(&v, "probe_ms")),
        udev: Some(UdevHotplug {
            events: u.len(),
            ms: Summary::of(&u),
            p99_ms: p99(&u),
            udevd_ms: Summary::of(&udevd),
            samples_ms: u,
            udevd_samples_ms: udevd,
        }),
    })
}

/// One run of the binary: total samples, udevd's (empty without udev),
/// and its whole output.
fn measure(env: &Env, udev: bool) -> Result<(Vec<f64>, Vec<f64>, serde_json::Value)> {
    let bin = binary();
    let mut cmd = Command::new(&bin);
    cmd.arg(env.plan.hotplug_events.to_string());
    if udev {
        cmd.arg("--udev");
    }
    let v = super::run_json_bin(cmd, &env.ctdev_bin)?;
    let list = |key: &str| super::json_samples(&v, key);
    let samples_ms = list("samples_ms");
    if samples_ms.is_empty() {
        bail!("hotplug-latency measured nothing");
    }
    let udevd = list("udevd_ms");
    Ok((samples_ms, udevd, v))
}

/// One line per source, for the terminal.
pub fn summary(r: &HotplugResults) -> String {
    let mut s = format!(
        "hotplug, kernel events: median {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events)",
        r.ms.median, r.p99_ms, r.ms.max, r.events
    );
    if !r.steps.is_empty() {
        let order = ["deliver", "handle", "wait", "run", "back", "daemon"];
        let parts: Vec<String> = order
            .iter()
            .filter_map(|k| {
                let st = r.steps.get(*k)?;
                Some(format!("{k} {:.2}/{:.2}", st.ms.median, st.p99_ms))
            })
            .collect();
        s.push_str(&format!(
            "; steps p50/p99 ms: {}; one fresh probe() {:.1} ms",
            parts.join(", "),
            r.probe_ms.median
        ));
    }
    if let Some(u) = &r.udev {
        s.push_str(&format!(
            "; udevd's events (node + link): median {:.1} ms, p99 {:.1} ms, of which udevd median {:.1} ms ({} events)",
            u.ms.median, u.p99_ms, u.udevd_ms.median, u.events
        ));
    }
    s
}
