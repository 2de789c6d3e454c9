//! Bench helper (`cargo xtask bench`, section "daemon churn"): `ctdev daemon`
//! while namespace containers are created and removed in waves.
//!
//! `churn-bench CONTAINERS LIVE LOOPS IDLE_SAMPLES` (CTDEV_BIN names ctdev):
//! an idle phase (attach and hotplug latency with nothing else going on),
//! then CONTAINERS containers created in 5 waves while about LIVE of them
//! live (15% of the names re-used), loop devices plugged in and pulled at
//! random, the daemon SIGSTOPped for a second or SIGKILLed and restarted
//! between waves. Every new container's cgroup is probed from the first
//! instruction of a process in it (a device outside the policy must never
//! open). After each wave: every live container under policy, nothing of a
//! removed one in the pins or the state, the watch count, RSS and fds.
//! Prints one JSON line with every sample; fails (exit 1) when an invariant
//! breaks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{free_loop_indices, write_policy, DaemonProc, FirstOpen, HotLoop};
use ctdev_tests::TestEnv;
use nix::sys::signal::Signal;

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

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

/// LOOP_CTL_ADD → the node is in the reference container; removed again.
fn hotplug_sample(index: u32, reference: &Path) -> Option<f64> {
    let node = reference.join(format!("dev/loop{index}"));
    let t = Instant::now();
    let mut l = HotLoop::add(index);
    let r = time_until(t, || node.exists());
    l.remove();
    // Wait until it left the container before the next sample.
    let _ = time_until(Instant::now(), || !node.exists());
    r
}

#[derive(Default)]
struct Samples {
    attach: Vec<f64>,
    hotplug: Vec<f64>,
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
            Some(v) => s.hotplug.push(v),
            None => s.missed += 1,
        }
        std::thread::sleep(Duration::from_millis(30));
        n += 1;
    }
    s
}

fn under_policy(env: &TestEnv) -> BTreeMap<PathBuf, u64> {
    let v = env.list_json();
    v["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    Some((
                        PathBuf::from(c["cgroup_dir"].as_str()?),
                        c["policy_id"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cgroup_count(dir: &Path) -> usize {
    1 + fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| cgroup_count(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn fail(msg: String, daemon: &DaemonProc) -> ! {
    eprintln!("churn-bench: {msg}\n--- daemon log (tail) ---");
    let log = daemon.log_text();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    for l in tail.into_iter().rev() {
        eprintln!("{l}");
    }
    std::process::exit(1);
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let (total, live_target, nloops, idle) = match args[..] {
        [a, b, c, d] => (a as usize, b as usize, c as u32, d as usize),
        _ => {
            eprintln!("usage: churn-bench CONTAINERS LIVE LOOPS IDLE_SAMPLES");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let env = TestEnv::new("churn-bench");
    let indices = free_loop_indices(nloops + 1);
    let (probe_index, churn_loops) = (indices[0], &indices[1..]);
    let never = indices[0] + 12;
    let never_node = env.node("never", ctdev_tests::DeviceType::Block, 7, never);
    let hotplug: String = indices
        .iter()
        .map(|i| format!("[[container.hotplug]]\ndevname = \"loop{i}\"\n"))
        .collect();
    let inside = format!(
        "/{}",
        env.cgroup_parent
            .strip_prefix(ctdev_tests::cgroup_mount())
            .expect("parent under the mount")
            .display()
    );
    let cfg = write_policy(
        &env,
        "policy.toml",
        2.0,
        &format!(
            "[[container]]\nname = \"ct\"\nselect = {{ cgroup = \"{inside}/ct-*\" }}\npreset = \"oci\"\n{hotplug}"
        ),
    );
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

    // Churn.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    let mut live: BTreeMap<String, TestContainer> = BTreeMap::new();
    let mut gone_names: Vec<String> = Vec::new();
    let mut removed_ids: Vec<u64> = Vec::new();
    let mut loops: BTreeMap<u32, HotLoop> = BTreeMap::new();
    let mut created = 0usize;
    let mut reused = 0usize;
    let mut probes = 0u64;
    let mut outside_opens = 0u64;
    let mut churn = Samples::default();
    let mut waves = Vec::new();
    let per_wave = total.div_ceil(5);
    let mut next_id = 0usize;
    for wave in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (p, pins, r, s) = (
                env.cgroup_parent.clone(),
                env.pin_root.clone(),
                ref_root.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || sample_loop(p, pins, r, probe_index, s, "m", usize::MAX))
        };
        let wave_start = Instant::now();
        let mut made = 0;
        while made < per_wave && created < total {
            // Name: 15% a re-used one, else fresh.
            let name = if !gone_names.is_empty() && rng.next(100) < 15 {
                reused += 1;
                gone_names.swap_remove(rng.next(gone_names.len() as u64) as usize)
            } else {
                next_id += 1;
                format!("ct-{next_id}")
            };
            if live.contains_key(&name) {
                continue;
            }
            let dir = env.cgroup(&name);
            let c =
                FirstOpen::start(&dir, 15, &[Path::new("/dev/loop-control"), &never_node]).finish();
            probes += 1;
            outside_opens += c[0].ok + c[1].ok;
            live.insert(name.clone(), TestContainer::start(&env, &name, false));
            created += 1;
            made += 1;
            while live.len() > live_target {
                let keys: Vec<String> = live.keys().cloned().collect();
                let k = keys[rng.next(keys.len() as u64) as usize].clone();
                let c = live.remove(&k).expect("live container");
                if let Ok(m) = fs::metadata(&c.cgroup) {
                    removed_ids.push(m.ino());
                }
                drop(c);
                gone_names.push(k);
            }
            if rng.next(10) == 0 {
                let i = churn_loops[rng.next(churn_loops.len() as u64) as usize];
                match loops.remove(&i) {
                    Some(mut l) => l.remove(),
                    None => {
                        loops.insert(i, HotLoop::add(i));
                    }
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        let s = sampler.join().expect("sampler thread");
        churn.attach.extend(s.attach);
        churn.hotplug.extend(s.hotplug);
        churn.missed += s.missed;
        let churn_s = wave_start.elapsed().as_secs_f64();

        // Converged? (10 s at most)
        let converge_start = Instant::now();
        let mut last = String::new();
        let ok = (0..1000).any(|_| {
            let att = under_policy(&env);
            let missing = live.values().filter(|c| !att.contains_key(&c.cgroup)).count();
            let stale_pins = removed_ids
                .iter()
                .filter(|id| env.pin_root.join("links").join(id.to_string()).exists())
                .count();
            let stale_nodes = live
                .values()
                .map(|c| {
                    churn_loops
                        .iter()
                        .filter(|i| !loops.contains_key(i))
                        .filter(|i| c.host_path(&format!("/dev/loop{i}")).exists())
                        .count()
                })
                .sum::<usize>();
            if missing == 0 && stale_pins == 0 && stale_nodes == 0 {
                return true;
            }
            last = format!("{missing} live not under policy, {stale_pins} stale pins, {stale_nodes} stale nodes");
            std::thread::sleep(Duration::from_millis(10));
            false
        });
        if !ok {
            fail(format!("wave {wave} did not converge: {last}"), &daemon);
        }
        let converge_ms = ms(converge_start.elapsed());
        let state = fs::read_to_string(daemon.state_dir.join("state.json")).unwrap_or_default();
        if let Some(id) = removed_ids
            .iter()
            .find(|id| state.contains(&format!("\"{id}\"")))
        {
            fail(
                format!("wave {wave}: state of removed container {id} remains"),
                &daemon,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        let status = daemon.status();
        let watches = status["watches"].as_u64().unwrap_or(0) as usize;
        let cgroups = cgroup_count(&env.cgroup_parent);
        if watches > cgroups + live.len() + 1 {
            fail(
                format!(
                    "wave {wave}: {watches} watches for {cgroups} cgroups and {} containers",
                    live.len() + 1
                ),
                &daemon,
            );
        }
        if Path::new(&format!("/sys/block/loop{never}")).exists() {
            fail(format!("loop{never} was created on the host"), &daemon);
        }
        let (rss, fds) = daemon.rss_kb_and_fds();
        eprintln!(
            "churn-bench: wave {wave}: {created} created, {} live, {watches} watches ({cgroups} cgroups), rss {rss} kB, {fds} fds, converged in {converge_ms:.0} ms",
            live.len()
        );
        waves.push(serde_json::json!({
            "wave": wave, "created": created, "live": live.len(), "churn_s": churn_s,
            "converge_ms": converge_ms, "watches": watches, "cgroups": cgroups,
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
                daemon.kill();
                daemon = DaemonProc::start(&env, &cfg);
            }
            _ => {}
        }
    }
    let errors = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .count();
    drop(live);
    drop(loops);
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
            "attach_churn_ms": churn.attach,
            "hotplug_churn_ms": churn.hotplug,
            "missed": idle_samples.missed + churn.missed,
            "waves": waves,
            "daemon_error_lines": errors,
            "wall_s": started.elapsed().as_secs_f64(),
        })
    );
    if outside_opens > 0 {
        eprintln!("churn-bench: {outside_opens} opens of devices outside the policy");
        std::process::exit(1);
    }
}
