//! Bench helper (`cargo xtask bench`, section "nri"): what the NRI plugin
//! adds to a container's start, on a real containerd 1.7 driven through
//! the CRI API (the harness of tests/tests/nri.rs).
//!
//! `nri-bench N` (CTDEV_BIN names ctdev): one pod in a namespace the
//! plugin's policy manages (each container asks for /dev/loop-control by
//! annotation, so the plugin passes a node in at create and takes the
//! container over at start) and one in a namespace it leaves alone. N
//! containers are created and started in each, interleaved, each removed
//! again before the next. Samples:
//! - `plugin_ms`: the plugin's own time per managed container, as it
//!   reports it in its `attached` event (CreateContainer + StartContainer
//!   handlers; the runtime waits for both);
//! - `managed_ms` / `unmanaged_ms`: CRI CreateContainer + StartContainer as
//!   the kubelet sees it, for context (the difference of the medians is
//!   the plugin's cost including the NRI round trips);
//! - `steps`: StartContainer's steps (the plugin's and the takeover's),
//!   p50/p99/max each, in ms.
//!
//! Prints one JSON line; exits 1 when a container fails to start or is not
//! taken over.

use std::fs;
use std::time::Instant;

use ctdev_tests::containerd::{Containerd, NriPlugin};
use ctdev_tests::TestEnv;

const ANNOTATION: &str = "devices.ctdev.io/container.";

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let env = TestEnv::new("nri-bench");
    let parent = format!("/{}/kubepods/podbench", env.name);
    let mut containerd = Containerd::start("nri-bench", &parent);
    let state = env.scratch.join("nri-state");
    let policy = env.scratch.join("nri.toml");
    fs::write(
        &policy,
        format!(
            "runtime_roots = [\"{}\"]\n\n[[container]]\nname = \"bench\"\nnamespace = \"managed\"\nallow = [\"/dev/loop-control\"]\n",
            containerd.runc_root.display()
        ),
    )
    .expect("write policy");
    let plugin = NriPlugin::start(&env.pin_root, &containerd.nri_sock, &policy, &state);
    plugin.wait_registered(1);

    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let keys: Vec<String> = names.iter().map(|c| format!("{ANNOTATION}{c}")).collect();
    let ann: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| (k.as_str(), "/dev/loop-control"))
        .collect();
    let managed = containerd.run_pod("managed", "bench", &ann);
    let unmanaged = containerd.run_pod("plain", "bench", &[]);

    let mut managed_ms = Vec::with_capacity(n);
    let mut unmanaged_ms = Vec::with_capacity(n);
    let mut failed = 0usize;
    for (i, name) in names.iter().enumerate() {
        // Alternate which goes first, so drift in the machine's load hits both.
        let order = if i & 1 == 0 {
            [(&managed, true), (&unmanaged, false)]
        } else {
            [(&unmanaged, false), (&managed, true)]
        };
        for (pod, is_managed) in order {
            let t = Instant::now();
            match containerd.run_container(pod, name) {
                Ok(id) => {
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    if is_managed {
                        managed_ms.push(ms);
                    } else {
                        unmanaged_ms.push(ms);
                    }
                    containerd.remove_container(&id);
                }
                Err(e) => {
                    eprintln!("nri-bench: {name} failed: {e}\nplugin:\n{}", plugin.log());
                    failed += 1;
                }
            }
        }
    }

    let events = fs::read_to_string(state.join("events.jsonl")).unwrap_or_default();
    let mut plugin_ms = Vec::new();
    let mut create_ms = Vec::new();
    let mut start_ms = Vec::new();
    // StartContainer's steps, in the order first seen: name → samples (ms).
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    for line in events.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["event"] != "attached" {
            continue;
        }
        let (Some(c), Some(s)) = (
            v["took"]["create_us"].as_u64(),
            v["took"]["start_us"].as_u64(),
        ) else {
            continue;
        };
        for step in v["took"]["steps"].as_array().into_iter().flatten() {
            let (Some(name), Some(us)) = (step[0].as_str(), step[1].as_u64()) else {
                continue;
            };
            match steps.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => s.push(us as f64 / 1000.0),
                None => steps.push((name.to_string(), vec![us as f64 / 1000.0])),
            }
        }
        create_ms.push(c as f64 / 1000.0);
        start_ms.push(s as f64 / 1000.0);
        plugin_ms.push((c + s) as f64 / 1000.0);
    }
    let attached = plugin_ms.len();
    let steps: Vec<serde_json::Value> = steps
        .into_iter()
        .map(|(name, mut s)| {
            s.sort_by(f64::total_cmp);
            let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
            serde_json::json!({"step": name, "n": s.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)})
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "containers": n,
            "failed": failed,
            "attached": attached,
            "plugin_ms": plugin_ms,
            "create_ms": create_ms,
            "start_ms": start_ms,
            "managed_ms": managed_ms,
            "unmanaged_ms": unmanaged_ms,
            "steps": steps,
        })
    );
    drop(plugin);
    drop(containerd);
    drop(env);
    if failed > 0 || attached != n {
        eprintln!("nri-bench: {failed} failed, {attached} of {n} attached");
        std::process::exit(1);
    }
}
