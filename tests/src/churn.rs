//! What the churn test (tests/tests/churn.rs) and the churn bench
//! (src/bin/churn-bench.rs) share: the policy that selects `ct-*` under the
//! env's parent with hotplugged loop devices, a seeded random source, what
//! is under policy, the convergence check made after every wave, and the
//! daemon's watch count read after it settled.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::container::TestContainer;
use crate::daemon::{write_policy, DaemonProc};
use crate::{cgroup_mount, TestEnv};

/// xorshift64: reproducible from its seed (printed by the callers).
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The env's parent cgroup as seen inside the hierarchy (`/ctdev-test-…`).
pub fn scope_inside(env: &TestEnv) -> String {
    format!(
        "/{}",
        env.cgroup_parent
            .strip_prefix(cgroup_mount())
            .expect("parent cgroup under the cgroup2 mount")
            .display()
    )
}

/// Writes the churn policy: one entry selecting `ct-*` under the env's
/// parent with preset `oci`, `extra` lines (rules), and a hotplug rule per
/// loop index.
pub fn churn_policy(env: &TestEnv, resync: f64, loops: &[u32], extra: &str) -> PathBuf {
    let hotplug: String = loops
        .iter()
        .map(|i| format!("[[container.hotplug]]\ndevname = \"loop{i}\"\n"))
        .collect();
    write_policy(
        env,
        "policy.toml",
        resync,
        &format!(
            "[[container]]\nname = \"ct\"\nselect = {{ cgroup = \"{}/ct-*\" }}\npreset = \"oci\"\n{extra}{hotplug}",
            scope_inside(env)
        ),
    )
}

/// Cgroup directory → policy id of everything under ctdev policy in the
/// env's pin root (`ctdev list --json`).
pub fn under_policy(env: &TestEnv) -> BTreeMap<PathBuf, u64> {
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

/// `dir` and every cgroup below it.
pub fn cgroup_count(dir: &Path) -> usize {
    1 + fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| cgroup_count(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// What must hold once the daemon caught up with a wave.
pub struct Expect<'a> {
    /// Live containers (all selected).
    pub live: &'a BTreeMap<String, TestContainer>,
    /// Loop indices present on the host now.
    pub present: &'a [u32],
    /// Loop indices absent from the host now.
    pub absent: &'a [u32],
    /// Policy ids (cgroup inodes) of removed containers.
    pub removed_ids: &'a [u64],
    /// Also open every present device from inside every container (the
    /// test does; the bench, with 100 containers, only checks the nodes).
    pub open_devices: bool,
}

/// `Err` says what does not hold yet: a live container not under policy, a
/// present device missing or unusable in one, a gone device still in one,
/// a pin or state record of a removed container, a private node of a gone
/// device, or a gone loop device back on the host.
pub fn check_converged(env: &TestEnv, daemon: &DaemonProc, e: &Expect) -> Result<(), String> {
    let att = under_policy(env);
    for (name, c) in e.live {
        if !att.contains_key(&c.cgroup) {
            return Err(format!("{name} not under policy"));
        }
        for i in e.present {
            let dev = format!("/dev/loop{i}");
            // Not there yet: `open_rw` (`<>`) would create a regular file.
            let node = fs::symlink_metadata(c.host_path(&dev));
            if !node.is_ok_and(|m| m.file_type().is_block_device()) {
                return Err(format!("{dev} not (yet) in {name}"));
            }
            if e.open_devices {
                if let Err(err) = c.open_rw(&dev) {
                    return Err(format!("{dev} not usable in {name}: {err}"));
                }
            }
        }
        for i in e.absent {
            if c.host_path(&format!("/dev/loop{i}")).exists() {
                return Err(format!("/dev/loop{i} still in {name} after it left"));
            }
        }
    }
    let state = fs::read_to_string(daemon.state_dir.join("state.json")).unwrap_or_default();
    for id in e.removed_ids {
        if env.pin_root.join("links").join(id.to_string()).exists() {
            return Err(format!("link pin of removed container {id} remains"));
        }
        if state.contains(&format!("\"{id}\"")) {
            return Err(format!("state of removed container {id} remains"));
        }
    }
    for i in e.absent {
        if Path::new(&format!("/sys/block/loop{i}")).exists() {
            return Err(format!("loop{i} exists on the host again"));
        }
        if daemon
            .state_dir
            .join("nodes")
            .join(format!("b7:{i}"))
            .exists()
        {
            return Err(format!("private node of gone loop{i} remains"));
        }
    }
    Ok(())
}

/// Polls [`check_converged`] every 10 ms for up to `timeout`: how long it
/// took, or the last reason it did not hold.
pub fn wait_converged(
    env: &TestEnv,
    daemon: &DaemonProc,
    e: &Expect,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        match check_converged(env, daemon, e) {
            Ok(()) => return Ok(start.elapsed()),
            Err(why) if start.elapsed() >= timeout => return Err(why),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The daemon's watch count against its bound (every cgroup under the
/// scope, plus one `cgroup.events` per managed container).
#[derive(Debug, Clone, Copy)]
pub struct WatchCount {
    /// Watches in `status.json` right when the wave converged.
    pub at_converge: usize,
    /// Watches once at or under the bound (or at the end of the wait).
    pub settled: usize,
    /// The bound.
    pub bound: usize,
    /// How long until it was at or under the bound (ms).
    pub settle_ms: f64,
}

impl WatchCount {
    /// Whether the count came back within its bound.
    pub fn bounded(&self) -> bool {
        self.settled <= self.bound
    }
}

/// Reads the watch count until it is within `containers` managed containers
/// plus the cgroups under `scope` (re-counted each time), for up to `max`
/// (give it more than one resync interval: the resync's walk is the
/// backstop that prunes a watch whose removal was not seen).
pub fn settled_watches(
    daemon: &DaemonProc,
    scope: &Path,
    containers: usize,
    max: Duration,
) -> WatchCount {
    let start = Instant::now();
    let read = || daemon.status()["watches"].as_u64().unwrap_or(u64::MAX) as usize;
    let at_converge = read();
    loop {
        let bound = cgroup_count(scope) + containers;
        let now = read();
        if now <= bound || start.elapsed() >= max {
            return WatchCount {
                at_converge,
                settled: now,
                bound,
                settle_ms: start.elapsed().as_secs_f64() * 1000.0,
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// inotify watches the kernel holds for process `pid` (the `inotify wd:`
/// lines of its fds' fdinfo): the ground truth beside the daemon's own
/// count in `status.json`.
pub fn kernel_watches(pid: i32) -> usize {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .map(|t| t.lines().filter(|l| l.starts_with("inotify wd:")).count())
        .sum()
}
