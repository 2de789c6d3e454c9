//! Standalone measurement for `cargo xtask bench`: uevent → node usable in
//! the container, over N hotplug events (default 1000).
//!
//! Starts a test container and `ctdev daemon` (child process, `--ready-file`)
//! with a hotplug rule for one loop index, then N times: LOOP_CTL_ADD (the
//! kernel emits the `add` uevent), time until the node exists in the
//! container and opening it gets past the device controller (not EPERM),
//! then LOOP_CTL_REMOVE and wait until the node is gone. Prints p50/p99/max.
//!
//! The opens come from one prober process that joined the container's
//! cgroup once (this binary with `--prober`), polling every 100 µs, and
//! tells the CLOCK_MONOTONIC time it first got past the controller. (Until
//! session 7 each poll was a fresh `probe()`: a fork plus a move into the
//! cgroup, several ms each, which also holds the kernel's cgroup
//! migration lock against the daemon's own forks: the bench measured its
//! own probing, see `probe_ms` in the output.)
//!
//! The daemon runs with `RUST_LOG=warn,ctdev::timing=debug`: its timing
//! line per event (see ctdev's `daemon::timing`) gives the steps (`steps`
//! in the output, ms): `deliver` (LOOP_CTL_ADD → the daemon read the
//! event), `handle` (event loop), `wait` (lane queue), `run` (the add),
//! `back` (outcome to the event loop), `daemon` (read → outcome back).
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
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use ctdev::daemon::uevent::{Source, UeventSocket};
use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{loop_ctl, reserve_loops, LOOP_CTL_ADD, LOOP_CTL_REMOVE};
use ctdev_tests::udev::{Adapter, UdevRule, Udevd};
use ctdev_tests::{cgroup_mount, ctdev_bin, probe, Errno, ProbeOp, TestEnv};

/// How long one event may take before the run fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The prober's polling interval.
const POLL: Duration = Duration::from_micros(100);

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < TIMEOUT, "timed out: {what}");
        std::thread::yield_now();
    }
}

/// CLOCK_MONOTONIC now, in µs (the daemon's timing lines use the same clock).
fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Whether `fd` becomes readable within `ms` milliseconds.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// `--prober CGROUP NODE [LINK]`: joins the cgroup once, then for every
/// `go` line on stdin polls until NODE (and LINK) exist and an open of
/// NODE gets past the device controller, and prints the CLOCK_MONOTONIC
/// time (µs) it did (`timeout` after 10 s).
fn prober(args: &[String]) {
    let cgroup = Path::new(&args[0]);
    let node = PathBuf::from(&args[1]);
    let link = args.get(2).map(PathBuf::from);
    fs::write(cgroup.join("cgroup.procs"), "0").expect("prober joins the container's cgroup");
    // Ok: usable; Err: why not yet.
    let usable = || -> Result<(), String> {
        if let Some(l) = &link {
            fs::symlink_metadata(l).map_err(|e| format!("link {}: {e}", l.display()))?;
        }
        // The node has no backing file: past the controller the driver
        // says ENXIO.
        match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&node)
        {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOENT)) => {
                Err(format!("{}: {e}", node.display()))
            }
            _ => Ok(()),
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").expect("stdout");
    out.flush().expect("stdout");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() != "go" {
            continue;
        }
        let start = Instant::now();
        let reply = loop {
            let r = usable();
            if r.is_ok() {
                break mono_us().to_string();
            }
            if start.elapsed() > TIMEOUT {
                break format!("timeout: {r:?}");
            }
            std::thread::sleep(POLL);
        };
        writeln!(out, "{reply}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// The prober process in the container's cgroup.
struct Prober {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Prober {
    fn start(cgroup: &Path, node: &Path, link: Option<&Path>) -> Self {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.arg("--prober").arg(cgroup).arg(node);
        if let Some(l) = link {
            cmd.arg(l);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn prober");
        let stdin = child.stdin.take().expect("prober stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("prober stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("prober ready");
        assert_eq!(line.trim(), "ready", "prober did not start");
        Prober {
            child,
            stdin,
            stdout,
        }
    }

    fn go(&mut self) {
        self.stdin.write_all(b"go\n").expect("prober go");
        self.stdin.flush().expect("prober go");
    }

    fn fd(&self) -> i32 {
        self.stdout.get_ref().as_raw_fd()
    }

    /// The time (CLOCK_MONOTONIC, µs) the node became usable (the daemon's
    /// log is shown if it never did).
    fn reply(&mut self, log: &Path) -> u64 {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("prober reply");
        line.trim().parse().unwrap_or_else(|_| {
            let log = fs::read_to_string(log).unwrap_or_default();
            panic!("prober: {line:?} (node never usable)\n--- daemon log ---\n{log}")
        })
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon child: killed on drop (also when a step fails).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `key=value` numbers of the daemon's `hotplug timing` lines.
fn timing_lines(log: &str) -> Vec<std::collections::BTreeMap<String, u64>> {
    log.lines()
        .filter(|l| l.contains("hotplug timing"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--prober") {
        prober(&args[1..]);
        return;
    }
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
    let log_path = env.scratch.join("daemon.log");
    let daemon = Command::new(ctdev_bin())
        .arg("--pin-root")
        .arg(&env.pin_root)
        .args(["daemon", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(env.scratch.join("state"))
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "warn,ctdev::timing=debug")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).expect("daemon log"))
        .spawn()
        .expect("spawn ctdev daemon");
    let daemon = Daemon(daemon);
    wait("daemon ready", || ready.exists());
    let node = c.host_path(&format!("/dev/loop{index}"));
    let link = c.host_path(&format!("/dev/serial/by-id/usb-ctdev-test-bench_{index}"));
    let mut prober = Prober::start(&c.cgroup, &node, udev.then_some(link.as_path()));
    let mut samples = Vec::with_capacity(n);
    let mut udevd_samples = Vec::with_capacity(n);
    let mut added_at = Vec::with_capacity(n);
    let seen = |m: &mut UeventSocket| {
        m.read_all()
            .unwrap_or_default()
            .iter()
            .any(|e| e.action == "add" && e.props.get("DEVPATH") == Some(&devpath))
    };
    for _ in 0..n {
        let start = mono_us();
        loop_ctl(LOOP_CTL_ADD, index).expect("LOOP_CTL_ADD");
        prober.go();
        added_at.push(start);
        let mut processed = None;
        let usable = loop {
            // udevd's event, when it comes before the node is usable.
            if let (Some(m), None) = (monitor.as_mut(), processed) {
                if readable(m.as_raw_fd(), 0) && seen(m) {
                    processed = Some(mono_us() - start);
                }
                if readable(prober.fd(), 1) {
                    break prober.reply(&log_path);
                }
            } else {
                assert!(readable(prober.fd(), 10_000), "prober silent for 10 s");
                break prober.reply(&log_path);
            }
        };
        samples.push(usable.saturating_sub(start));
        if let Some(m) = monitor.as_mut() {
            // The daemon can only act after udevd's event: it was seen.
            while processed.is_none() {
                assert!(readable(m.as_raw_fd(), 10_000), "udevd's event never seen");
                if seen(m) {
                    processed = Some(mono_us() - start);
                }
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
    // What one poll of the earlier bench cost: a fresh probe() (fork, join
    // the cgroup, open) of the absent node.
    let op = ProbeOp::Open {
        path: node.clone(),
        read: true,
        write: false,
    };
    let mut probe_us: Vec<u64> = (0..20)
        .map(|_| {
            let t = mono_us();
            let r = probe(&c.cgroup, &op);
            assert!(
                matches!(r, Ok(Err(Errno::ENOENT))),
                "probe of the absent node: {r:?}"
            );
            mono_us() - t
        })
        .collect();
    probe_us.sort_unstable();
    drop(prober);
    drop(daemon);
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let lines = timing_lines(&log);
    // Each line belongs to the last event started before the daemon read it.
    let mut steps: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for l in &lines {
        let Some(read) = l.get("read_mono_us") else {
            continue;
        };
        if let Some(at) = added_at.iter().rev().find(|a| **a <= *read) {
            steps
                .entry("deliver")
                .or_default()
                .push((read - at) as f64 / 1e3);
        }
        for (key, name) in [
            ("handle_us", "handle"),
            ("wait_us", "wait"),
            ("run_us", "run"),
            ("back_us", "back"),
            ("total_us", "daemon"),
        ] {
            if let Some(v) = l.get(key) {
                steps.entry(name).or_default().push(*v as f64 / 1e3);
            }
        }
    }
    for line in log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
    {
        eprintln!("hotplug-latency: daemon {line}");
    }
    let mut sorted = samples.clone();
    sorted.sort_unstable();
    let pct =
        |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1e3;
    println!(
        "hotplug uevent -> node usable in container ({}): n={} p50={:.2} ms p99={:.2} ms max={:.2} ms; one probe() {:.2} ms; {} timing lines",
        if udev {
            "udevd's events, links"
        } else {
            "kernel events"
        },
        sorted.len(),
        pct(0.50),
        pct(0.99),
        sorted[sorted.len() - 1] as f64 / 1e3,
        probe_us[probe_us.len() / 2] as f64 / 1e3,
        lines.len(),
    );
    // The raw samples, one JSON line, for `cargo xtask bench`.
    let ms = |v: &[u64]| v.iter().map(|u| *u as f64 / 1e3).collect::<Vec<f64>>();
    println!(
        "{}",
        serde_json::json!({
            "samples_ms": ms(&samples),
            "udevd_ms": ms(&udevd_samples),
            "probe_ms": ms(&probe_us),
            "steps": steps,
        })
    );
}
