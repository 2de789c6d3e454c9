//! `ctdev daemon` under churn, against the real kernel: containers that
//! appear and go in waves (names re-used), loop devices plugged and pulled at
//! random, the daemon stopped (SIGSTOP) and killed in between; and the scope
//! program that holds a new container to its default policy from the first
//! instruction of its first process, before the daemon has attached it.
//!
//! Each test has its own parent cgroup (the policy's scope), pin root, state
//! directory and loop indices, so it runs beside any other suite.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use ctdev_tests::churn::{
    churn_policy, settled_watches, under_policy as attached, wait_converged, Expect, Rng,
};
use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{reserve_loops, wait_until, DaemonProc, FirstOpen, HotLoop, OpenCounts};
use ctdev_tests::*;
use nix::sys::signal::Signal;

/// A char device outside the OCI preset and outside every policy here: no
/// process in a selected container may ever open it.
const OUTSIDE: &str = "/dev/loop-control";
/// Inside the OCI preset (the scope's default).
const IN_PRESET: &str = "/dev/null";
/// Outside the preset, allowed by the entry's own rules ("c 1:11 r").
const OWN_RULE: &str = "/dev/kmsg";

fn probe_fresh(cgroup: &Path, millis: u64) -> Vec<OpenCounts> {
    FirstOpen::start(
        cgroup,
        millis,
        &[
            Path::new(OUTSIDE),
            Path::new(IN_PRESET),
            Path::new(OWN_RULE),
        ],
    )
    .finish()
}

#[test]
fn a_new_container_is_fail_closed_from_its_first_instruction_while_the_daemon_is_slow_or_dead() {
    let env = TestEnv::new("scope");
    let cfg = churn_policy(&env, 0.0, &[], "rules = [\"c 1:11 r\"]\n");
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert_eq!(daemon.status()["scopes"], 1, "{}", daemon.log_text());

    // 1. Daemon running: the probe starts in the cgroup the moment it exists.
    let c1 = env.cgroup("ct-1");
    let first = probe_fresh(&c1, 300);
    assert_eq!(
        first[0].ok, 0,
        "{OUTSIDE} opened from a fresh container: {first:?}"
    );
    assert!(
        first[1].ok > 0,
        "{IN_PRESET} (preset) never opened: {first:?}"
    );
    wait_until(Duration::from_secs(10), "ct-1 attached", || {
        attached(&env).contains_key(&c1).then_some(())
    });
    // Attached: its own policy decides, the scope does not narrow it.
    let after = probe_fresh(&c1, 100);
    assert_eq!(after[0].ok, 0, "{after:?}");
    assert!(
        after[2].ok > 0,
        "own rule c 1:11 r narrowed by the scope: {after:?}"
    );

    // 2. Daemon stopped: a new container is held to the preset.
    daemon.signal(Signal::SIGSTOP);
    let c2 = env.cgroup("ct-2");
    let stopped = probe_fresh(&c2, 1000);
    assert_eq!(stopped[0].ok, 0, "{stopped:?}");
    assert_eq!(
        stopped[2].ok, 0,
        "own rule before attach: only the preset applies: {stopped:?}"
    );
    assert!(stopped[1].ok > 0, "{stopped:?}");
    assert!(!attached(&env).contains_key(&c2));
    daemon.signal(Signal::SIGCONT);
    wait_until(
        Duration::from_secs(10),
        "ct-2 attached after SIGCONT",
        || attached(&env).contains_key(&c2).then_some(()),
    );
    let resumed = probe_fresh(&c2, 100);
    assert!(resumed[2].ok > 0 && resumed[0].ok == 0, "{resumed:?}");

    // 3. Daemon dead: still held; a restarted daemon attaches it.
    let log = daemon.kill();
    let c3 = env.cgroup("ct-3");
    let dead = probe_fresh(&c3, 300);
    assert_eq!(dead[0].ok + dead[2].ok, 0, "{dead:?}\n{log}");
    assert!(dead[1].ok > 0, "{dead:?}");
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert!(attached(&env).contains_key(&c3), "{}", daemon.log_text());
    let restarted = probe_fresh(&c3, 100);
    assert!(restarted[2].ok > 0 && restarted[0].ok == 0, "{restarted:?}");

    // 4. A sibling no entry selects is not held once the daemon saw it.
    let other = env.cgroup("other");
    wait_until(
        Duration::from_secs(10),
        "the unselected sibling released",
        || (probe_fresh(&other, 20)[0].ok > 0).then_some(()),
    );
    assert!(!attached(&env).contains_key(&other));

    // 5. A container detached (its cgroup removed) loses its mark; nothing
    // of it stays in the pins.
    let id2 = attached(&env)[&c2];
    fs::remove_dir(&c2).unwrap();
    wait_until(Duration::from_secs(10), "ct-2 detached", || {
        (!attached(&env).contains_key(&c2)).then_some(())
    });
    assert!(!env.pin_root.join("links").join(id2.to_string()).exists());
    assert!(daemon.alive(), "{}", daemon.log_text());
}

#[test]
fn churn_waves_leave_nothing_behind_and_keep_every_container_under_policy() {
    let env = TestEnv::new("churn");
    let block = reserve_loops(4);
    let indices = &block[..3];
    // One never exists: its node is probed from inside (must be denied, and
    // must not make the kernel create it).
    let never = block[3];
    let never_node = env.node("never", DeviceType::Block, 7, never);
    let cfg = churn_policy(&env, 1.0, indices, "");
    let mut daemon = DaemonProc::start(&env, &cfg);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
    let mut live: BTreeMap<String, TestContainer> = BTreeMap::new();
    let mut loops: BTreeMap<u32, HotLoop> = BTreeMap::new();
    let mut removed_ids: Vec<u64> = Vec::new();
    let mut baseline: Option<(u64, usize)> = None;
    let mut probes = 0u64;
    let mut outside_opens = 0u64;
    let start = Instant::now();
    let waves = 6;
    for wave in 0..waves {
        // Daemon trouble in some waves: stopped during the wave, or killed
        // and restarted.
        let stopped = wave == 2;
        if stopped {
            daemon.signal(Signal::SIGSTOP);
        }
        if wave == 4 {
            daemon.kill();
        }
        // Remove a few (their ids are checked gone later).
        let names: Vec<String> = live.keys().cloned().collect();
        for n in names {
            if rng.next(3) == 0 {
                let c = live.remove(&n).unwrap();
                if let Some(id) = attached(&env).get(&c.cgroup) {
                    removed_ids.push(*id);
                }
                drop(c);
            }
        }
        // New ones, from a pool of 8 names (re-used across waves); each
        // probed from its first instruction before its init starts.
        for _ in 0..4 {
            let name = format!("ct-{}", rng.next(8));
            if live.contains_key(&name) {
                continue;
            }
            let dir = env.cgroup(&name);
            let c = FirstOpen::start(&dir, 40, &[Path::new(OUTSIDE), &never_node]).finish();
            probes += 1;
            outside_opens += c[0].ok + c[1].ok;
            assert_eq!(
                c[0].ok + c[1].ok,
                0,
                "wave {wave}: {name} opened a device outside its policy: {c:?}"
            );
            live.insert(name.clone(), TestContainer::start(&env, &name, false));
        }
        // Devices come and go at random.
        for &i in indices {
            if rng.next(2) == 0 {
                match loops.remove(&i) {
                    Some(mut l) => l.remove(),
                    None => {
                        loops.insert(i, HotLoop::add(i));
                    }
                }
            }
        }
        if stopped {
            std::thread::sleep(Duration::from_millis(500));
            daemon.signal(Signal::SIGCONT);
        }
        if wave == 4 {
            daemon = DaemonProc::start(&env, &cfg);
        }
        let present: Vec<u32> = loops.keys().copied().collect();
        let mut absent: Vec<u32> = indices
            .iter()
            .copied()
            .filter(|i| !loops.contains_key(i))
            .collect();
        absent.push(never);
        let expect = Expect {
            live: &live,
            present: &present,
            absent: &absent,
            removed_ids: &removed_ids,
            open_devices: true,
        };
        if let Err(last) = wait_converged(&env, &daemon, &expect, Duration::from_secs(30)) {
            panic!(
                "wave {wave} did not converge: {last}\n{}",
                daemon.log_text()
            );
        }
        // Watches bounded by what lives (every cgroup under the scope plus
        // one cgroup.events per container), given one resync to prune.
        let w = settled_watches(
            &daemon,
            &env.cgroup_parent,
            live.len(),
            Duration::from_secs(3),
        );
        assert!(w.bounded(), "wave {wave}: {w:?}\n{}", daemon.log_text());
        assert!(daemon.alive(), "{}", daemon.log_text());
        let (rss, fds) = daemon.rss_kb_and_fds();
        eprintln!(
            "wave {wave}: {} containers, {} loops, watches {} (bound {}), rss {rss} kB, fds {fds}",
            live.len(),
            present.len(),
            w.settled,
            w.bound
        );
        // RSS and fds flat (after the restart the baseline starts again).
        if wave == 4 {
            baseline = None;
        }
        match baseline {
            None => baseline = Some((rss, fds)),
            Some((r0, f0)) => {
                assert!(fds <= f0 + 2, "fds grew from {f0} to {fds}");
                assert!(
                    rss <= r0 + r0 / 2 + 4096,
                    "RSS grew from {r0} kB to {rss} kB"
                );
            }
        }
    }
    let log = daemon.log_text();
    assert!(!log.contains("ERROR"), "errors in the daemon log:\n{log}");
    eprintln!(
        "churn: {waves} waves in {:?}, {probes} first-instruction probes, {outside_opens} opens outside the policy",
        start.elapsed()
    );
    assert!(!Path::new(&format!("/sys/block/loop{never}")).exists());
}

/// A container whose init is stopped (SIGSTOP, as a debugger or a frozen
/// workload would leave it) does not hold back the hotplug of another
/// container, and each container sees its device events in order: after an
/// add then a remove, the device is gone from both.
#[test]
fn a_stopped_container_does_not_hold_back_another_containers_hotplug() {
    let env = TestEnv::new("churn-stop");
    let index = HotLoop::pick();
    let cfg = churn_policy(&env, 0.0, &[index], "");
    let mut daemon = DaemonProc::start(&env, &cfg);
    let stuck = TestContainer::start(&env, "ct-stuck", false);
    let other = TestContainer::start(&env, "ct-other", false);
    wait_until(Duration::from_secs(30), "both attached", || {
        let a = attached(&env);
        (a.contains_key(&stuck.cgroup) && a.contains_key(&other.cgroup)).then_some(())
    });
    let stop = |sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(stuck.pid), sig)
            .expect("signal the stuck container's init")
    };
    stop(Signal::SIGSTOP);
    let dev = format!("/dev/loop{index}");
    let is_node = |c: &TestContainer| {
        fs::symlink_metadata(c.host_path(&dev))
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
    };
    // 1. Plugged while one container is stopped: the other gets it and can
    // use it (the stopped one gets its node too: nothing waits for it).
    let mut l = HotLoop::add(index);
    wait_until(
        Duration::from_secs(10),
        "the device in the running container",
        || is_node(&other).then_some(()),
    );
    other.open_rw(&dev).expect("hotplugged device usable");
    wait_until(
        Duration::from_secs(10),
        "the device in the stopped container",
        || is_node(&stuck).then_some(()),
    );
    // 2. Pulled, still stopped: gone from both, in order (never re-added).
    l.remove();
    wait_until(Duration::from_secs(10), "the device gone from both", || {
        (!other.host_path(&dev).exists() && !stuck.host_path(&dev).exists()).then_some(())
    });
    // 3. Resumed: nothing comes back, the daemon is healthy.
    stop(Signal::SIGCONT);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!stuck.host_path(&dev).exists() && !other.host_path(&dev).exists());
    assert!(daemon.alive(), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn a_resync_that_changes_nothing_does_nothing_and_one_that_does_still_acts() {
    let env = TestEnv::new("churn-noop");
    let index = HotLoop::pick();
    let cfg = churn_policy(&env, 0.2, &[index], "rules = [\"c 1:11 r\"]\n");
    let mut daemon = DaemonProc::start(&env, &cfg);
    let c = TestContainer::start(&env, "ct-a", false);
    let dev = format!("/dev/loop{index}");
    let is_node = || {
        fs::symlink_metadata(c.host_path(&dev))
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
    };
    let mut l = HotLoop::add(index);
    wait_until(
        Duration::from_secs(30),
        "the device in the container",
        || is_node().then_some(()),
    );
    c.open_rw(&dev).expect("hotplugged device usable");
    let resyncs = |log: &str| log.matches("periodic resync done").count();
    // Settled: one full resync after the device went in.
    let n0 = resyncs(&daemon.log_text());
    wait_until(Duration::from_secs(30), "a resync", || {
        (resyncs(&daemon.log_text()) >= n0 + 2).then_some(())
    });
    let state = daemon.state_dir.join("state.json");
    let written = fs::metadata(&state).and_then(|m| m.modified()).unwrap();
    let log_before = daemon.log_text();
    let n1 = resyncs(&log_before);

    // 1. Five resyncs with nothing to do: no line above debug, the state
    // file not rewritten, the device still there and usable.
    wait_until(Duration::from_secs(30), "five more resyncs", || {
        (resyncs(&daemon.log_text()) >= n1 + 5).then_some(())
    });
    let log = daemon.log_text();
    let new_lines: Vec<&str> = log[log_before.len()..]
        .lines()
        .filter(|l| !l.contains("DEBUG"))
        .collect();
    assert!(
        new_lines.is_empty(),
        "a resync that changes nothing logged: {new_lines:#?}"
    );
    assert_eq!(
        fs::metadata(&state).and_then(|m| m.modified()).unwrap(),
        written,
        "state file rewritten by resyncs that changed nothing"
    );
    assert!(is_node());
    c.open_rw(&dev).expect("device still usable");

    // 2. A change the events did not report (the node removed by hand
    // inside): the next resync puts it back.
    fs::remove_file(c.host_path(&dev)).expect("remove the node inside");
    wait_until(Duration::from_secs(30), "the node back", || {
        is_node().then_some(())
    });
    c.open_rw(&dev).expect("device usable again");

    // 3. Unplugged: gone from the container, and nothing left.
    l.remove();
    wait_until(Duration::from_secs(30), "the device gone", || {
        (!c.host_path(&dev).exists()).then_some(())
    });
    assert!(daemon.alive(), "{}", daemon.log_text());
    assert!(
        !daemon.log_text().contains("ERROR"),
        "{}",
        daemon.log_text()
    );
}
