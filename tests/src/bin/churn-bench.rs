//! Bench helper (`cargo xtask bench`, section "daemon churn"): `ctdev daemon`
//! while namespace containers are created and removed in waves.
//!
//! `churn-bench CONTAINERS LIVE LOOPS IDLE_SAMPLES [PACED PACED_SECONDS]`
//! (CTDEV_BIN names ctdev): an idle phase (attach and hotplug latency with
//! nothing else going on); then, when asked, a paced phase at the rate of
//! issue #18's load test (PACED containers created evenly over
//! PACED_SECONDS in overlapping waves, loop devices plugged and pulled at
//! random); then the stress: CONTAINERS containers created back to back in
//! 5 waves while about LIVE of them live (15% of the names re-used), loop
//! devices plugged in and pulled at random, the daemon SIGSTOPped for a
//! second or SIGKILLed and restarted between waves. Every new container's
//! cgroup is probed from the first instruction of a process in it (a device
//! outside the policy must never open). After the paced phase and each
//! wave: every live container under policy, nothing of a removed one in the
//! pins or the state; after each wave also the watch count, RSS and fds.
//! Prints one JSON line with every sample; fails (exit 1) when an invariant
//! breaks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctdev_tests::churn::{
    cgroup_count, churn_policy, kernel_watches, settled_watches, wait_converged, Expect, Rng,
};
use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{reserve_loops, DaemonProc, FirstOpen, HotLoop};
use ctdev_tests::TestEnv;
use nix::sys::signal::Signal;

/// The daemon's resync interval in this scenario (s).
const RESYNC_S: f64 = 2.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Polls (every 0.2 ms) until `f` holds; the time it took, or `None` after 5 s.
fn time_until(start: Instant, mut f: impl FnMut() -> bool) -> Option<f64> {
    while start.elapsed() < Duration::from_secs(5) {
        if f() {
            return Some(ms(start.elapsed()));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

/// mkdir of a selected cgroup → its link pin exists; the cgroup is removed again.
fn attach_sample(parent: &Path, pins: &Path, name: &str) -> Option<f64> {
    let dir = parent.join(name);
    let t = Instant::now();
    fs::create_dir(&dir).ok()?;
    let id = fs::metadata(&dir).ok()?.ino();
    let pin = pins.join("links").join(id.to_string());
    let r = time_until(t, || pin.exists());
    let _ = fs::remove_dir(&dir);
    r
}

/// CLOCK_MONOTONIC now, in µs (the clock of the daemon's `read_mono_us`).
fn mono_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| (ts.tv_sec() as u64) * 1_000_000 + (ts.tv_nsec() as u64) / 1_000)
        .unwrap_or(0)
}

/// LOOP_CTL_ADD → the node is in the reference container; removed again.
/// With when it was plugged (CLOCK_MONOTONIC µs), to match the daemon's
/// `hotplug timing` lines. The node is watched from another thread while
/// the plug's ioctl runs: the kernel sends the device's uevent from inside
/// that ioctl, which can go on for milliseconds after it (setting up the
/// disk), and a watch started only once the ioctl returned counted that
/// remainder as the daemon's (the daemon's own timing lines showed the
/// node made ~10 ms before some samples ended). The clock still starts
/// before the ioctl, so the kernel's time until the uevent is counted.
fn hotplug_sample(index: u32, reference: &Path) -> (u64, Option<f64>) {
    let node = reference.join(format!("dev/loop{index}"));
    let at = mono_us();
    let t = Instant::now();
    let (mut l, r) = std::thread::scope(|s| {
        let watch = s.spawn(|| time_until(t, || node.exists()));
        let l = HotLoop::add(index);
        (l, watch.join().ok().flatten())
    });
    l.remove();
    // Wait until it left the container before the next sample.
    let _ = time_until(Instant::now(), || !node.exists());
    (at, r)
}

#[derive(Default)]
struct Samples {
    attach: Vec<f64>,
    hotplug: Vec<f64>,
    /// When each hotplug sample's device was plugged (µs, CLOCK_MONOTONIC).
    hotplug_at: Vec<u64>,
    missed: usize,
}

fn sample_loop(
    parent: PathBuf,
    pins: PathBuf,
    reference: PathBuf,
    index: u32,
    stop: Arc<AtomicBool>,
    tag: &'static str,
    max: usize,
) -> Samples {
    let mut s = Samples::default();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && n < max {
        match attach_sample(&parent, &pins, &format!("ct-{tag}{n}")) {
            Some(v) => s.attach.push(v),
            None => s.missed += 1,
        }
        std::thread::sleep(Duration::from_millis(30));
        match hotplug_sample(index, &reference) {
            (at, Some(v)) => {
                s.hotplug.push(v);
                s.hotplug_at.push(at);
            }
            (_, None) => s.missed += 1,
        }
        std::thread::sleep(Duration::from_millis(30));
        n += 1;
    }
    s
}

/// Appends the daemon's whole log to `$CTDEV_CHURN_LOG` when set (before a
/// restart and at the end), so a run's log can be read afterwards.
fn keep_log(daemon: &DaemonProc, what: &str) {
    let Some(f) = std::env::var_os("CTDEV_CHURN_LOG") else {
        return;
    };
    use std::io::Write;
    let kept = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f)
        .and_then(|mut out| write!(out, "=== {what} ===\n{}", daemon.log_text()));
    if let Err(e) = kept {
        eprintln!("churn-bench: cannot save the daemon log: {e}");
    }
}

fn fail(msg: String, daemon: &DaemonProc) -> ! {
    eprintln!("churn-bench: {msg}\n--- daemon log (tail) ---");
    let log = daemon.log_text();
    // The whole log, when asked for (`CTDEV_CHURN_LOG=FILE`): the env and
    // its scratch directory are removed while unwinding.
    keep_log(daemon, &format!("failed: {msg}"));
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    for l in tail.into_iter().rev() {
        eprintln!("{l}");
    }
    // Every line of the whole log about the device the message names.
    if let Some(dev) = msg.split_whitespace().find_map(|w| w.strip_prefix("/dev/")) {
        eprintln!("--- daemon log lines naming {dev} ---");
        for l in log.lines().filter(|l| l.contains(dev)) {
            eprintln!("{l}");
        }
    }
    // A panic, not `exit`: unwinding drops the containers, the loop
    // devices, the daemon and the env (cgroups, pins), which `exit` would
    // leave behind, their processes holding the caller's output pipes.
    panic!("churn-bench: {msg}");
}

/// The churn itself: containers created (15% under a re-used name) and
/// removed, loop devices plugged and pulled; shared by both phases.
struct Churner {
    rng: Rng,
    live: BTreeMap<String, TestContainer>,
    gone_names: Vec<String>,
    removed_ids: Vec<u64>,
    loops: BTreeMap<u32, HotLoop>,
    next_id: usize,
    reused: usize,
    probes: u64,
    outside_opens: u64,
}

impl Churner {
    /// Creates one container (its cgroup probed from the first
    /// instruction), then removes random ones until at most `live_bound` live.
    fn create(&mut self, env: &TestEnv, never_node: &Path, live_bound: usize) {
        // Name: 15% a re-used one (never a live one: a name goes back to
        // `gone_names` only when its container is removed), else fresh.
        let name = if !self.gone_names.is_empty() && self.rng.next(100) < 15 {
            self.reused += 1;
            let i = self.rng.next(self.gone_names.len() as u64) as usize;
            self.gone_names.swap_remove(i)
        } else {
            self.next_id += 1;
            format!("ct-{}", self.next_id)
        };
        let dir = env.cgroup(&name);
        let c = FirstOpen::start(&dir, 15, &[Path::new("/dev/loop-control"), never_node]).finish();
        self.probes += 1;
        self.outside_opens += c[0].ok + c[1].ok;
        let c = TestContainer::start(env, &name, false);
        self.live.insert(name, c);
        while self.live.len() > live_bound {
            self.remove_random();
        }
    }

    fn remove_random(&mut self) {
        let keys: Vec<String> = self.live.keys().cloned().collect();
        let k = keys[self.rng.next(keys.len() as u64) as usize].clone();
        let c = self.live.remove(&k).expect("live container");
        if let Ok(m) = fs::metadata(&c.cgroup) {
            self.removed_ids.push(m.ino());
        }
        drop(c);
        self.gone_names.push(k);
    }

    /// With probability 1/`one_in`, plugs or pulls one of `churn_loops`.
    fn maybe_toggle_loop(&mut self, churn_loops: &[u32], one_in: u64) {
        if self.rng.next(one_in) != 0 {
            return;
        }
        let i = churn_loops[self.rng.next(churn_loops.len() as u64) as usize];
        match self.loops.remove(&i) {
            Some(mut l) => l.remove(),
            None => {
                self.loops.insert(i, HotLoop::add(i));
            }
        }
    }

    /// What a converged daemon must show now.
    fn converged(
        &self,
        env: &TestEnv,
        daemon: &DaemonProc,
        churn_loops: &[u32],
    ) -> Result<f64, String> {
        let present: Vec<u32> = self.loops.keys().copied().collect();
        let absent: Vec<u32> = churn_loops
            .iter()
            .copied()
            .filter(|i| !self.loops.contains_key(i))
            .collect();
        let expect = Expect {
            live: &self.live,
            present: &present,
            absent: &absent,
            removed_ids: &self.removed_ids,
            open_devices: false,
        };
        wait_converged(env, daemon, &expect, Duration::from_secs(30)).map(ms)
    }
}

/// Starts the latency sampler thread (tag `tag`); `stop` ends it.
fn start_sampler(
    env: &TestEnv,
    reference: &Path,
    probe_index: u32,
    tag: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Samples>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (p, pins, r, s) = (
        env.cgroup_parent.clone(),
        env.pin_root.clone(),
        reference.to_path_buf(),
        stop.clone(),
    );
    let handle =
        std::thread::spawn(move || sample_loop(p, pins, r, probe_index, s, tag, usize::MAX));
    (stop, handle)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let (total, live_target, nloops, idle, paced, paced_s) = match args[..] {
        [a, b, c, d] => (a as usize, b as usize, c as u32, d as usize, 0, 0),
        [a, b, c, d, e, f] => (a as usize, b as usize, c as u32, d as usize, e as usize, f),
        _ => {
            eprintln!(
                "usage: churn-bench CONTAINERS LIVE LOOPS IDLE_SAMPLES [PACED PACED_SECONDS]"
            );
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let env = TestEnv::new("churn-bench");
    let block = reserve_loops(nloops + 2);
    let indices = &block[..=nloops as usize];
    let (probe_index, churn_loops) = (indices[0], &indices[1..]);
    // Never plugged: its node is probed from inside and must stay denied.
    let never = block[nloops as usize + 1];
    let never_node = env.node("never", ctdev_tests::DeviceType::Block, 7, never);
    let cfg = churn_policy(&env, RESYNC_S, indices, "");
    let mut daemon = DaemonProc::start(&env, &cfg);
    let reference = TestContainer::start(&env, "ct-ref", false);
    let ref_root = PathBuf::from(format!("/proc/{}/root", reference.pid));

    // Idle.
    let stop = Arc::new(AtomicBool::new(false));
    let idle_samples = sample_loop(
        env.cgroup_parent.clone(),
        env.pin_root.clone(),
        ref_root.clone(),
        probe_index,
        stop.clone(),
        "idle",
        idle,
    );

    let mut ch = Churner {
        rng: Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id())),
        live: BTreeMap::new(),
        gone_names: Vec::new(),
        removed_ids: Vec::new(),
        loops: BTreeMap::new(),
        next_id: 0,
        reused: 0,
        probes: 0,
        outside_opens: 0,
    };

    // Paced churn, at the rate of the load test: PACED containers
    // created evenly over PACED_SECONDS, in overlapping waves (at most 30%
    // of a minute's creations live at once: 30 at the 100 a
    // minute, however long the phase), a loop device plugged or pulled at
    // about every other creation; the latency samples of this phase are
    // the targets'.
    let mut paced_samples = Samples::default();
    let mut paced_converge_ms = 0.0;
    if paced > 0 {
        let (stop, sampler) = start_sampler(&env, &ref_root, probe_index, "p");
        let phase = Instant::now();
        let step = Duration::from_secs(paced_s).div_f64(paced as f64);
        let per_minute = paced as u64 * 60 / paced_s.max(1);
        let bound = ((per_minute * 3 / 10) as usize).clamp(1, paced);
        for k in 0..paced {
            if let Some(wait) = (step * k as u32).checked_sub(phase.elapsed()) {
                std::thread::sleep(wait);
            }
            ch.create(&env, &never_node, bound);
            ch.maybe_toggle_loop(churn_loops, 2);
        }
        // Its containers stay: the stress starts from them.
        stop.store(true, Ordering::SeqCst);
        paced_samples = sampler.join().expect("sampler thread");
        paced_converge_ms = match ch.converged(&env, &daemon, churn_loops) {
            Ok(v) => v,
            Err(last) => fail(format!("the paced phase did not converge: {last}"), &daemon),
        };
        eprintln!(
            "churn-bench: paced: {paced} containers in {:.1} s, converged in {paced_converge_ms:.0} ms",
            phase.elapsed().as_secs_f64()
        );
    }
    let paced_probes = ch.probes;

    // Churn.
    let mut created = 0usize;
    let mut churn = Samples::default();
    let mut waves = Vec::new();
    let per_wave = total.div_ceil(5);
    for wave in 0..5 {
        let (stop, sampler) = start_sampler(&env, &ref_root, probe_index, "m");
        let wave_start = Instant::now();
        let mut made = 0;
        while made < per_wave && created < total {
            ch.create(&env, &never_node, live_target);
            created += 1;
            made += 1;
            ch.maybe_toggle_loop(churn_loops, 10);
        }
        stop.store(true, Ordering::SeqCst);
        let s = sampler.join().expect("sampler thread");
        churn.attach.extend(s.attach);
        churn.hotplug.extend(s.hotplug);
        churn.hotplug_at.extend(s.hotplug_at);
        churn.missed += s.missed;
        let churn_s = wave_start.elapsed().as_secs_f64();

        // Converged? (30 s at most)
        let converge_ms = match ch.converged(&env, &daemon, churn_loops) {
            Ok(v) => v,
            Err(last) => fail(format!("wave {wave} did not converge: {last}"), &daemon),
        };
        // Watches: bounded by every cgroup under the scope plus one
        // cgroup.events per managed container (the live ones and the
        // reference). Read when the wave converged and again once within
        // the bound, for up to two resync intervals (the resync's walk
        // prunes what a missed removal left): above the bound then is a leak.
        let w = settled_watches(
            &daemon,
            &env.cgroup_parent,
            ch.live.len() + 1,
            Duration::from_secs_f64(2.0 * RESYNC_S + 1.0),
        );
        if !w.bounded() {
            fail(
                format!(
                    "wave {wave}: watch leak: {} watches for a bound of {} after {:.0} ms",
                    w.settled, w.bound, w.settle_ms
                ),
                &daemon,
            );
        }
        let (watches, cgroups) = (w.settled, cgroup_count(&env.cgroup_parent));
        // The kernel's own list: the daemon's count plus its CDI spec
        // directories (at most 2 here) and no watch it lost track of.
        let in_kernel = kernel_watches(daemon.pid());
        if in_kernel > w.bound + 2 {
            fail(
                format!("wave {wave}: the kernel holds {in_kernel} watches of the daemon for a bound of {}", w.bound),
                &daemon,
            );
        }
        if Path::new(&format!("/sys/block/loop{never}")).exists() {
            fail(format!("loop{never} was created on the host"), &daemon);
        }
        let (rss, fds) = daemon.rss_kb_and_fds();
        eprintln!(
            "churn-bench: wave {wave}: {created} created, {} live, {watches} watches ({cgroups} cgroups, bound {}; {} at convergence, settled in {:.0} ms; {in_kernel} in the kernel), rss {rss} kB, {fds} fds, converged in {converge_ms:.0} ms",
            ch.live.len(),
            w.bound,
            w.at_converge,
            w.settle_ms
        );
        waves.push(serde_json::json!({
            "wave": wave, "created": created, "live": ch.live.len(), "churn_s": churn_s,
            "converge_ms": converge_ms, "watches": watches, "cgroups": cgroups,
            "watch_bound": w.bound, "watches_at_converge": w.at_converge,
            "watch_settle_ms": w.settle_ms, "kernel_watches": in_kernel,
            "rss_kb": rss, "fds": fds,
        }));
        // Trouble between waves.
        match wave {
            0 | 2 => {
                daemon.signal(Signal::SIGSTOP);
                std::thread::sleep(Duration::from_secs(1));
                daemon.signal(Signal::SIGCONT);
            }
            1 | 3 => {
                keep_log(&daemon, &format!("daemon killed after wave {wave}"));
                daemon.kill();
                daemon = DaemonProc::start(&env, &cfg);
            }
            _ => {}
        }
    }
    keep_log(&daemon, "end");
    let log = daemon.log_text();
    let error_lines: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    // Named, not only counted: the log goes with the run's scratch dir.
    for line in error_lines.iter().take(20) {
        eprintln!("churn-bench: daemon {line}");
    }
    let errors = error_lines.len();
    let (reused, probes, outside_opens) = (ch.reused, ch.probes, ch.outside_opens);
    drop(ch);
    println!(
        "{}",
        serde_json::json!({
            "containers": created,
            "reused_names": reused,
            "live_target": live_target,
            "probes": probes,
            "outside_opens": outside_opens,
            "attach_idle_ms": idle_samples.attach,
            "hotplug_idle_ms": idle_samples.hotplug,
            "paced_containers": paced,
            "paced_seconds": paced_s,
            "paced_probes": paced_probes,
            "paced_converge_ms": paced_converge_ms,
            "attach_paced_ms": paced_samples.attach,
            "hotplug_paced_ms": paced_samples.hotplug,
            "hotplug_paced_at_us": paced_samples.hotplug_at,
            "attach_churn_ms": churn.attach,
            "hotplug_churn_ms": churn.hotplug,
            "hotplug_churn_at_us": churn.hotplug_at,
            "missed": idle_samples.missed + paced_samples.missed + churn.missed,
            "waves": waves,
            "daemon_error_lines": errors,
            "wall_s": started.elapsed().as_secs_f64(),
        })
    );
    if outside_opens > 0 {
        // Unwinds: the daemon and the env are dropped (cleaned up).
        panic!("churn-bench: {outside_opens} opens of devices outside the policy");
    }
}
