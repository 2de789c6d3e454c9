//! What the NRI plugin adds to a container's start (issue #15): runs
//! `nri-bench` (tests/src/bin) against a real containerd 1.7 with NRI
//! (/opt/ctdev-deps/containerd, as `cargo xtask test` uses it) and
//! summarises its samples: the plugin's own time per container (median,
//! p99; target p99 ≤ 5 ms), and CRI create+start with and without the
//! plugin managing the container, for context.
//!
//! `cargo xtask bench --only nri` runs this section alone.

use std::process::Command;

use anyhow::{bail, Result};

use super::churn::Pct;
use super::Env;

/// The target for the plugin's p99 (ms).
pub const TARGET_P99_MS: f64 = 5.0;

/// One run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NriResults {
    pub containers: u64,
    /// CreateContainer + StartContainer inside the plugin, per container.
    pub plugin: Pct,
    pub plugin_median: f64,
    pub create: Pct,
    pub start: Pct,
    /// CRI CreateContainer + StartContainer seen by the client.
    pub managed: Pct,
    pub unmanaged: Pct,
    pub managed_median: f64,
    pub unmanaged_median: f64,
    /// The raw output of `nri-bench`.
    pub raw: serde_json::Value,
}

/// The measuring binary, built by [`super::run`] next to the release xtask.
pub fn binary() -> std::path::PathBuf {
    crate::root().join("target/release/nri-bench")
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

pub fn run(env: &Env) -> Result<NriResults> {
    let n = if env.plan.quick { 10 } else { 200 };
    let bin = binary();
    let mut cmd = Command::new(&bin);
    cmd.arg(n.to_string());
    // The takeover on the shared, verified-once program (the per-container
    // program is loaded and verified at every start); `CTDEV_SHARED_PROGRAM=0`
    // measures that instead.
    cmd.env(
        "CTDEV_SHARED_PROGRAM",
        std::env::var("CTDEV_SHARED_PROGRAM").unwrap_or_else(|_| "1".into()),
    );
    let v = super::run_json_bin(cmd, &env.ctdev_bin)?;
    let samples = |k: &str| super::json_samples(&v, k);
    let plugin = samples("plugin_ms");
    if plugin.is_empty() {
        bail!("nri-bench measured nothing");
    }
    Ok(NriResults {
        containers: v["containers"].as_u64().unwrap_or(0),
        plugin: Pct::of(&plugin),
        plugin_median: median(&plugin),
        create: Pct::of(&samples("create_ms")),
        start: Pct::of(&samples("start_ms")),
        managed: Pct::of(&samples("managed_ms")),
        unmanaged: Pct::of(&samples("unmanaged_ms")),
        managed_median: median(&samples("managed_ms")),
        unmanaged_median: median(&samples("unmanaged_ms")),
        raw: v,
    })
}

/// The figures, for the terminal and the closing note.
pub fn summary(r: &NriResults) -> String {
    [
        format!(
            "nri: plugin time per container start (create + start handlers), {} containers: median {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= {TARGET_P99_MS} ms: {})",
            r.plugin.n,
            r.plugin_median,
            r.plugin.p99,
            r.plugin.max,
            if r.plugin.p99 <= TARGET_P99_MS { "met" } else { "missed" }
        ),
        format!(
            "nri: of which CreateContainer p50 {:.2} / p99 {:.2} ms, StartContainer (takeover) p50 {:.2} / p99 {:.2} ms",
            r.create.p50, r.create.p99, r.start.p50, r.start.p99
        ),
        format!(
            "nri: CRI create+start seen by the client: managed median {:.1} ms (p99 {:.1}), unmanaged median {:.1} ms (p99 {:.1})",
            r.managed_median, r.managed.p99, r.unmanaged_median, r.unmanaged.p99
        ),
    ]
    .into_iter()
    .chain(steps_summary(&r.raw))
    .collect::<Vec<_>>()
    .join("\n")
}

/// StartContainer's steps as `nri-bench` reports them, one line.
fn steps_summary(raw: &serde_json::Value) -> Option<String> {
    let steps = raw["steps"].as_array().filter(|s| !s.is_empty())?;
    let parts: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "{} {:.2}/{:.2}",
                s["step"].as_str().unwrap_or("?"),
                s["p50_ms"].as_f64().unwrap_or(f64::NAN),
                s["p99_ms"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    Some(format!(
        "nri: StartContainer steps, p50/p99 ms: {}",
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
