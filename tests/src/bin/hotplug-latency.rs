//! Standalone measurement for `cargo xtask bench`: uevent → node usable in
//! the container, over N hotplug events (default 1000).
//!
//! Starts a test container and `ctdev daemon` (child process, `--ready-file`)
//! with a hotplug rule for one loop index, then N times: LOOP_CTL_ADD (the
//! kernel emits the `add` uevent), time until the node exists in the
//! container and opening it gets past the device controller (not EPERM),
//! then LOOP_CTL_REMOVE and wait until the node is gone. Prints p50/p99/max.
//!
//! With `--udev`, the tests' own udevd runs (tests/src/udev.rs) with a rule
//! that gives the loop device an `ID_SERIAL`, a `serial/by-id` link, owner
//! and mode, the daemon takes udevd's processed events and recreates the
//! link (`links = true`), and the time from LOOP_CTL_ADD to udevd's event
//! (udevd's own processing, seen on the udev netlink group) is reported
//! beside the total.
//!
//! Run (root): `cargo build -p ctdev-tests --bins && target/debug/hotplug-latency [N] [--udev]`

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctdev::daemon::uevent::{Source, UeventSocket};
use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{loop_ctl, reserve_loops, LOOP_CTL_ADD, LOOP_CTL_REMOVE};
use ctdev_tests::udev::{Adapter, UdevRule, Udevd};
use ctdev_tests::{cgroup_mount, ctdev_bin, probe, Errno, ProbeOp, TestEnv};

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::yield_now();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let udev = args.iter().any(|a| a == "--udev");
    let n: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|s| s.parse().expect("N"))
        .unwrap_or(1000);
    let env = TestEnv::new("bench-hotplug");
    let c = TestContainer::start(&env, "c", false);
    let block = reserve_loops(1);
    let index = block[0];
    // With --udev: udevd, the rule, and a monitor of udevd's events.
    let udevd = udev.then(|| Udevd::start(&env.scratch));
    let adapter = Adapter {
        indices: vec![index],
        serial: format!("bench_{index}"),
    };
    let _rule = udev.then(|| UdevRule::new(&[&adapter]));
    let mut monitor =
        udev.then(|| UeventSocket::open_for(Source::Udev).expect("udev monitor socket"));
    let devpath = format!("/devices/virtual/block/loop{index}");
    let extra = if udev { "links = true\n" } else { "" };
    let inside = c
        .cgroup
        .strip_prefix(cgroup_mount())
        .unwrap()
        .display()
        .to_string();
    let cfg = env.scratch.join("policy.toml");
    fs::write(
        &cfg,
        format!(
            "scope = \"{}\"\nresync_interval = 0\n[[container]]\nname = \"c\"\nselect = {{ cgroup = \"/{inside}\" }}\n\
             [[container.hotplug]]\nsubsystem = \"block\"\ndevname = \"loop{index}\"\n{extra}",
            env.cgroup_parent.display()
        ),
    )
    .unwrap();
    let ready = env.scratch.join("ready");
    let mut daemon = Command::new(ctdev_bin())
        .arg("--pin-root")
        .arg(&env.pin_root)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(env.scratch.join("state"))
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ctdev daemon");
    wait("daemon ready", || ready.exists());
    let node = c.host_path(&format!("/dev/loop{index}"));
    let link = c.host_path(&format!("/dev/serial/by-id/usb-ctdev-test-bench_{index}"));
    let mut samples = Vec::with_capacity(n);
    let mut udevd_samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        loop_ctl(LOOP_CTL_ADD, index).expect("LOOP_CTL_ADD");
        let mut processed = None;
        let op = ProbeOp::Open {
            path: node.clone(),
            read: true,
            write: false,
        };
        wait("node usable", || {
            // A real open from a process in the container's cgroup: the
            // device controller judges it (the node has no backing file, so
            // past the controller the driver says ENXIO).
            if let (Some(m), None) = (monitor.as_mut(), processed) {
                let seen = m
                    .read_all()
                    .unwrap_or_default()
                    .iter()
                    .any(|e| e.action == "add" && e.props.get("DEVPATH") == Some(&devpath));
                if seen {
                    processed = Some(start.elapsed());
                }
            }
            (!udev || fs::symlink_metadata(&link).is_ok())
                && node.exists()
                && !matches!(
                    probe(&c.cgroup, &op),
                    Ok(Err(Errno::EPERM)) | Ok(Err(Errno::ENOENT))
                )
        });
        samples.push(start.elapsed());
        if let Some(m) = monitor.as_mut() {
            // The daemon can only act after udevd's event: it was seen.
            while processed.is_none() {
                if m.read_all()
                    .unwrap_or_default()
                    .iter()
                    .any(|e| e.action == "add" && e.props.get("DEVPATH") == Some(&devpath))
                {
                    processed = Some(start.elapsed());
                }
                std::thread::yield_now();
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "udevd's event never seen"
                );
            }
            udevd_samples.push(processed.unwrap_or_default());
        }
        while loop_ctl(LOOP_CTL_REMOVE, index).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        wait("node removed", || !node.exists());
        if let Some(u) = &udevd {
            u.settle();
            if let Some(m) = monitor.as_mut() {
                let _ = m.read_all();
            }
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "hotplug uevent -> node usable in container ({}): n={} p50={:?} p99={:?} max={:?}",
        if udev {
            "udevd's events, links"
        } else {
            "kernel events"
        },
        samples.len(),
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1]
    );
    // The raw samples, one JSON line, for `cargo xtask bench`.
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let udevd_ms: Vec<f64> = udevd_samples
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    println!(
        "{}",
        serde_json::json!({ "samples_ms": ms, "udevd_ms": udevd_ms })
    );
}
