//! `ctdev daemon` against the real kernel: real uevents from real devices
//! (loop devices made and removed through /dev/loop-control), real cgroups
//! appearing and disappearing, SIGKILL and restart, SIGHUP with a bad file.
//!
//! Each test runs its own daemon (child process) with the TestEnv's pin
//! root, a scope of the TestEnv's parent cgroup and a state directory in its
//! scratch dir, and selects only devices it created itself, so tests can run
//! in parallel with each other and with other suites.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{proc_kb, wait_until, write_policy, DaemonProc, HotLoop};
use ctdev_tests::*;

/// The cgroup path inside the hierarchy of a directory under the mount.
fn inside(dir: &Path) -> String {
    format!("/{}", dir.strip_prefix(cgroup_mount()).unwrap().display())
}

/// A running container "a" under `--preset none` and a policy file (resync
/// every `resync` s, 0: none) that passes it one loop device (index
/// returned, not created yet) when it is plugged in.
fn container_with_loop_hotplug(env: &TestEnv, resync: f64) -> (TestContainer, u32, PathBuf) {
    let a = TestContainer::start(env, "a", false);
    let index = HotLoop::pick();
    let cfg = write_policy(
        env,
        "policy.toml",
        resync,
        &format!(
            "[[container]]\nname = \"a\"\nselect = {{ target = \"{}\" }}\npreset = \"none\"\n\
             [[container.hotplug]]\ndevname = \"loop{index}\"\n",
            a.cgroup.display()
        ),
    );
    (a, index, cfg)
}

/// Rules of the container whose cgroup is `dir` (None: not under policy).
fn rules_of(env: &TestEnv, dir: &Path) -> Option<Vec<String>> {
    let v = env.list_json();
    v["containers"]
        .as_array()?
        .iter()
        .find(|c| c["cgroup_dir"].as_str() == dir.to_str())
        .map(|c| {
            c["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["rule"].as_str().unwrap().to_string())
                .collect()
        })
}

fn denied(r: &Result<(), String>) -> bool {
    matches!(r, Err(e) if e.contains("Operation not permitted"))
}

#[test]
fn hotplug_reaches_the_matching_container_only_and_goes_away_on_remove() {
    let env = TestEnv::new("dm-hotplug");
    let a = TestContainer::start(&env, "a", false);
    let b = TestContainer::start(&env, "b", false);
    env.ok(&["attach", b.cgroup_str()]);
    let index = HotLoop::pick();
    let cfg = write_policy(
        &env,
        "policy.toml", 0.0,
        &format!(
            "[[container]]\nname = \"a\"\nselect = {{ cgroup = \"{}\" }}\n\
             [[container.hotplug]]\nsubsystem = \"block\"\ndevname = \"loop{index}\"\ndest = \"/dev/hot/{{devname}}\"\naccess = \"rw\"\n",
            inside(&a.cgroup)
        ),
    );
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert!(rules_of(&env, &a.cgroup).is_some(), "a attached at start");

    let mut lo = HotLoop::add(index);
    let dest = format!("/dev/hot/{}", lo.name());
    let start = Instant::now();
    wait_until(Duration::from_secs(5), "the node in a to open", || {
        a.host_path(&dest).exists().then_some(())?;
        // No backing file: the open gets past the device controller and
        // fails in the driver (ENXIO), never with EPERM.
        let r = a.open_rw(&dest);
        (!denied(&r)).then_some(())
    });
    eprintln!(
        "hotplug add -> usable in the container: {:?}",
        start.elapsed()
    );
    // `rw` asked; the preset's `b *:* m` stays (a new entry never narrows).
    let rule = format!("b 7:{index} rwm");
    assert!(rules_of(&env, &a.cgroup).unwrap().contains(&rule));
    // b (under policy, not selected) got nothing.
    assert!(!b.host_path(&dest).exists());
    assert!(!rules_of(&env, &b.cgroup).unwrap().contains(&rule));

    lo.remove();
    wait_until(
        Duration::from_secs(5),
        "the node and rule to go on remove",
        || {
            (!a.host_path(&dest).exists() && !rules_of(&env, &a.cgroup).unwrap().contains(&rule))
                .then_some(())
        },
    );
    let log = daemon.kill();
    assert!(log.contains("device added"), "{log}");
    assert!(log.contains("device removed"), "{log}");
}

/// A policy file (no resync) whose one entry, `web`, selects the cgroups
/// `web-*` under the TestEnv's parent; `rest` is the entry's other lines.
fn web_policy(env: &TestEnv, rest: &str) -> PathBuf {
    write_policy(
        env,
        "policy.toml",
        0.0,
        &format!(
            "[[container]]\nname = \"web\"\nselect = {{ cgroup = \"{}/web-*\" }}\n{rest}",
            inside(&env.cgroup_parent)
        ),
    )
}

#[test]
fn a_new_container_gets_its_policy_and_is_detached_when_it_stops() {
    let env = TestEnv::new("dm-lifecycle");
    let cfg = web_policy(
        &env,
        "rules = [\"c 42:7 rw\"]\ndevices = [{ path = \"/dev/net/tun\" }]\n",
    );
    let mut daemon = DaemonProc::start(&env, &cfg);
    let start = Instant::now();
    let web = TestContainer::start(&env, "web-1", false);
    wait_until(
        Duration::from_secs(10),
        "the device node in the new container",
        || web.open_rw("/dev/net/tun").ok(),
    );
    eprintln!("new container -> device usable: {:?}", start.elapsed());
    let rules = rules_of(&env, &web.cgroup).expect("web-1 attached");
    // `rw` asked; the preset's `c *:* m` stays (a new entry never narrows).
    assert!(rules.contains(&"c 42:7 rwm".to_string()), "{rules:?}");
    assert!(rules.contains(&"c 10:200 rwm".to_string()), "{rules:?}");

    // Not selected: never attached.
    let other = TestContainer::start(&env, "other", false);
    std::thread::sleep(Duration::from_millis(300));
    assert!(rules_of(&env, &other.cgroup).is_none());
    assert!(!other.host_path("/dev/net/tun").exists());

    let id = env.list_json()["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup_dir"].as_str() == web.cgroup.to_str())
        .and_then(|c| c["policy_id"].as_u64())
        .unwrap();
    drop(web);
    wait_until(
        Duration::from_secs(5),
        "the stopped container to be detached",
        || {
            let v = env.list_json();
            // The detach runs in the container's lane; its line is logged
            // once the event loop has its outcome.
            (!v["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["policy_id"].as_u64() == Some(id))
                && daemon.log_text().contains("detached (cgroup removed)"))
            .then_some(())
        },
    );
    let log = daemon.kill();
    assert!(log.contains("attached"), "{log}");
    assert!(log.contains("detached (cgroup removed)"), "{log}");
}

/// A `kB` field of a /proc file, which must be there.
fn kb_field(text: &str, key: &str) -> u64 {
    proc_kb(text, key).unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn the_daemon_locks_the_pages_it_uses_and_reads_in_nothing_ahead() {
    let env = TestEnv::new("dm-mlock");
    let cfg = web_policy(&env, "rules = [\"c 42:7 rw\"]\n");
    let daemon = DaemonProc::start(&env, &cfg);
    let web = TestContainer::start(&env, "web-1", false);
    let rules = wait_until(Duration::from_secs(10), "web-1 under policy", || {
        rules_of(&env, &web.cgroup)
    });
    assert!(rules.contains(&"c 42:7 rwm".to_string()), "{rules:?}");
    let pid = daemon.pid();
    // VmLck: the size of the locked mappings; Locked: their resident
    // pages, counted like Pss (a page shared with another process, such
    // as another test's daemon, counts in part). Every mapping is locked
    // (the binary's included), but only what the daemon touched is in
    // memory: on-fault locking.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    let (locked_size, locked_resident, pss) = (
        kb_field(&status, "VmLck:"),
        kb_field(&rollup, "Locked:"),
        kb_field(&rollup, "Pss:"),
    );
    eprintln!("daemon VmLck {locked_size} kB, Locked {locked_resident} kB, Pss {pss} kB");
    assert!(locked_resident > 0, "nothing locked:\n{status}\n{rollup}");
    assert!(
        locked_resident * 10 >= pss * 9,
        "most of the resident set should be locked:\n{rollup}"
    );
    assert!(
        locked_resident < locked_size,
        "the locked mappings were read in whole, not on fault:\n{status}\n{rollup}"
    );
    assert!(
        !daemon.log_text().contains("cannot lock"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn sigkill_keeps_enforcement_and_a_restart_converges() {
    let env = TestEnv::new("dm-restart");
    let (a, index, cfg) = container_with_loop_hotplug(&env, 0.0);
    let mut daemon = DaemonProc::start(&env, &cfg);
    let mut lo = HotLoop::add(index);
    let dest = format!("/dev/{}", lo.name());
    let rule = format!("b 7:{index} rwm");
    wait_until(Duration::from_secs(5), "the hotplugged rule", || {
        rules_of(&env, &a.cgroup)
            .unwrap()
            .contains(&rule)
            .then_some(())
    });
    let before = rules_of(&env, &a.cgroup).unwrap();
    let _ = daemon.kill();

    // Daemon dead: enforcement is unchanged (pins stay).
    assert_eq!(rules_of(&env, &a.cgroup).unwrap(), before);
    assert!(
        !denied(&a.open_rw(&dest)),
        "still usable with the daemon down"
    );
    // The device goes away while the daemon is down: nothing changes yet.
    lo.remove();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rules_of(&env, &a.cgroup).unwrap(),
        before,
        "no change without the daemon"
    );

    let mut daemon = DaemonProc::start(&env, &cfg);
    // Converged during the start-up reconciliation.
    let after = rules_of(&env, &a.cgroup).unwrap();
    assert!(!after.contains(&rule), "{after:?}");
    assert!(!a.host_path(&dest).exists());
    let log = daemon.kill();
    assert!(log.contains("device removed"), "{log}");

    // A second restart finds nothing to change and logs no change.
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert_eq!(rules_of(&env, &a.cgroup).unwrap(), after);
    let log = daemon.kill();
    for change in [
        "device added",
        "device removed",
        "attached",
        "allowed",
        "revoked",
    ] {
        assert!(
            !log.lines()
                .any(|l| l.contains(change) && !l.contains("already")),
            "a converged restart changed something ({change}):\n{log}"
        );
    }
}

#[test]
fn killed_between_passing_a_device_in_and_saving_state_still_takes_it_back() {
    // The daemon dies right after `ctdev add` of a hotplugged device and
    // before its state file is written after it: the device was recorded
    // ahead of the add, so once it is unplugged a restarted daemon revokes
    // its rule and removes its node.
    let env = TestEnv::new("dm-wal-dev");
    let (a, index, cfg) = container_with_loop_hotplug(&env, 0.0);
    let daemon = DaemonProc::start_with_failpoint(&env, &cfg, Some("daemon.add.after_device"));
    let mut lo = HotLoop::add(index);
    let dest = format!("/dev/{}", lo.name());
    let rule = format!("b 7:{index} rwm");
    daemon.wait_killed_at_failpoint();
    assert_eq!(rules_of(&env, &a.cgroup).unwrap(), [rule]);
    assert!(a.host_path(&dest).exists());
    assert!(!denied(&a.open_rw(&dest)), "passed in before the crash");

    lo.remove();
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert_eq!(rules_of(&env, &a.cgroup).unwrap(), Vec::<String>::new());
    assert!(!a.host_path(&dest).exists());
    let log = daemon.kill();
    assert!(log.contains("device removed"), "{log}");
}

#[test]
fn killed_between_attaching_and_saving_state_still_revokes_dropped_rules() {
    // The daemon dies right after attaching a new container with the
    // policy's rules and before its state file records them; the policy
    // then drops one rule. The restarted daemon knows the rule was its own
    // (recorded ahead of the attach) and revokes it.
    let env = TestEnv::new("dm-wal-rule");
    let text = |rule: &str| {
        format!(
            "[[container]]\nname = \"c\"\nselect = {{ cgroup = \"{}/c-*\" }}\npreset = \"none\"\n\
             rules = [\"{rule}\"]\n",
            inside(&env.cgroup_parent)
        )
    };
    let cfg = write_policy(&env, "policy.toml", 0.0, &text("c 42:7 rw"));
    let daemon = DaemonProc::start_with_failpoint(&env, &cfg, Some("daemon.attach.after_attach"));
    let c1 = env.cgroup("c-1");
    daemon.wait_killed_at_failpoint();
    assert_eq!(rules_of(&env, &c1).unwrap(), ["c 42:7 rw"]);

    write_policy(&env, "policy.toml", 0.0, &text("c 42:9 r"));
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert_eq!(rules_of(&env, &c1).unwrap(), ["c 42:9 r"]);
    let log = daemon.kill();
    assert!(log.contains("revoked (gone from the policy)"), "{log}");
}

#[test]
fn sighup_with_a_bad_file_keeps_the_running_policy() {
    let env = TestEnv::new("dm-sighup");
    let text = |rule: &str| {
        format!(
            "[[container]]\nname = \"c\"\nselect = {{ cgroup = \"{}/c-*\" }}\nrules = [\"{rule}\"]\n",
            inside(&env.cgroup_parent)
        )
    };
    let cfg = write_policy(&env, "policy.toml", 0.0, &text("c 42:7 rw"));
    let mut daemon = DaemonProc::start(&env, &cfg);

    write_policy(
        &env,
        "policy.toml",
        0.0,
        &(text("c 42:7 rw") + "bogus_key = 1\n"),
    );
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(5), "the rejection in the log", || {
        daemon.log_text().contains("policy rejected").then_some(())
    });
    assert!(daemon.alive());
    assert!(
        daemon.log_text().contains("bogus_key"),
        "{}",
        daemon.log_text()
    );
    // The old policy still applies to a new container.
    let c1 = env.cgroup("c-1");
    wait_until(Duration::from_secs(5), "c-1 under the old policy", || {
        rules_of(&env, &c1)
            .filter(|r| r.contains(&"c 42:7 rwm".to_string()))
            .map(|_| ())
    });

    // A good file is taken, and applied to the running containers.
    write_policy(&env, "policy.toml", 0.0, &text("c 42:9 r"));
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(5), "the new rule after reload", || {
        // The take-back is logged after its record is saved: wait for it too.
        daemon
            .log_text()
            .contains("revoked (gone from the policy)")
            .then_some(())?;
        rules_of(&env, &c1)
            .filter(|r| {
                r.contains(&"c 42:9 rm".to_string()) && !r.contains(&"c 42:7 rwm".to_string())
            })
            .map(|_| ())
    });
    let log = daemon.kill();
    assert!(log.contains("policy reloaded"), "{log}");
    assert!(log.contains("revoked (gone from the policy)"), "{log}");
}

#[test]
fn check_config_prints_the_resolved_policy_or_names_the_error() {
    let env = TestEnv::new("dm-check");
    let good = write_policy(
        &env,
        "good.toml",
        0.0,
        "[[container]]\nname = \"x\"\nselect = { runtime = \"lxc\", name = \"ha-*\" }\n\
         [[container.hotplug]]\nsubsystem = \"tty\"\nid_vendor_id = \"0403\"\n",
    );
    let out = env.ok(&[
        "daemon",
        "--config",
        good.to_str().unwrap(),
        "--check-config",
    ]);
    assert!(out.contains("lxc containers named ha-*"), "{out}");
    assert!(out.contains("SUBSYSTEM=tty,ID_VENDOR_ID=0403"), "{out}");
    let bad = write_policy(
        &env,
        "bad.toml",
        0.0,
        "[[container]]\nname = \"x\"\nselect = { runtime = \"lxc\" }\nrules = [\"c 1:x\"]\n",
    );
    let err = env.fails(&[
        "daemon",
        "--config",
        bad.to_str().unwrap(),
        "--check-config",
    ]);
    assert!(err.contains("bad.toml:6: container[0].rules[0]"), "{err}");
}

/// A veth pair created on the host for a test (no `dummy` module here),
/// deleted on drop wherever its selected end ended up (the host or the
/// container's netns; deleting one end deletes both).
struct HotLink {
    name: String,
    peer: String,
    container_pid: i32,
}

impl Drop for HotLink {
    fn drop(&mut self) {
        for end in [&self.name, &self.peer] {
            let _ = Command::new("ip")
                .args(["link", "del", end])
                .stderr(Stdio::null())
                .status();
        }
        let pid = self.container_pid.to_string();
        let _ = Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip", "link", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

fn link_in_netns(pid: Option<i32>, name: &str) -> bool {
    let mut cmd = match pid {
        Some(p) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &p.to_string(), "-n", "ip", "link", "show", name]);
            c
        }
        None => {
            let mut c = Command::new("ip");
            c.args(["link", "show", name]);
            c
        }
    };
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_hotplugged_network_interface_moves_into_the_matching_container() {
    let env = TestEnv::new("dm-net");
    let a = TestContainer::start(&env, "a", false);
    let b = TestContainer::start(&env, "b", false);
    let name = format!("ctdh{}", std::process::id() % 100_000);
    // The peer's name must not start with `name` (the selector is a prefix).
    let peer = format!("ctdp{}", std::process::id() % 100_000);
    let cfg = write_policy(
        &env,
        "policy.toml", 0.0,
        &format!(
            "[[container]]\nname = \"a\"\nselect = {{ cgroup = \"{}\" }}\n\
             [[container.hotplug]]\nsubsystem = \"net\"\ndevpath_prefix = \"/devices/virtual/net/{name}\"\n",
            inside(&a.cgroup)
        ),
    );
    let mut daemon = DaemonProc::start(&env, &cfg);
    let _link = HotLink {
        name: name.clone(),
        peer: peer.clone(),
        container_pid: a.pid,
    };
    let status = Command::new("ip")
        .args(["link", "add", &name, "type", "veth", "peer", "name", &peer])
        .status()
        .expect("ip link add");
    assert!(status.success(), "cannot create veth pair {name}/{peer}");
    let start = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the interface to move into a",
        || (link_in_netns(Some(a.pid), &name) && !link_in_netns(None, &name)).then_some(()),
    );
    eprintln!("net hotplug add -> in the container: {:?}", start.elapsed());
    assert!(
        !link_in_netns(Some(b.pid), &name),
        "b (not selected) did not get it"
    );
    assert!(
        link_in_netns(None, &peer),
        "the peer, not selected, stays on the host"
    );
    let log = daemon.kill();
    assert!(log.contains(&name), "the daemon logs the move: {log}");
}

/// The daemon's log lines about entry `name`'s device at `dest` that say
/// how one of its jobs ended, in order: `add` or `del`.
fn outcomes(log: &str, name: &str, dest: &str) -> Vec<&'static str> {
    log.lines()
        .filter(|l| l.contains(&format!("container={name} ")) && l.contains(dest))
        .filter_map(|l| {
            if l.contains("device added") || l.contains("went while passing it in") {
                Some("add")
            } else if l.contains("device removed") || l.contains("its record is dropped") {
                Some("del")
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn a_held_container_does_not_delay_hotplug_into_another_and_keeps_its_own_order() {
    let env = TestEnv::new("dm-lanes");
    let slow = TestContainer::start(&env, "slow", false);
    let fast = TestContainer::start(&env, "fast", false);
    let index = HotLoop::pick();
    let entry = |name: &str, c: &TestContainer| {
        format!(
            "[[container]]\nname = \"{name}\"\nselect = {{ target = \"{}\" }}\npreset = \"none\"\n\
             [[container.hotplug]]\ndevname = \"loop{index}\"\n",
            c.cgroup.display()
        )
    };
    let cfg = write_policy(
        &env,
        "policy.toml",
        0.0,
        &format!("{}{}", entry("slow", &slow), entry("fast", &fast)),
    );
    let (mut daemon, holds) = DaemonProc::start_held(&env, &cfg);
    // `slow` is stuck: its init stopped, and its lane held (the test hook
    // of a failpoints build) until the test lets it go.
    let hold = holds.join(slow.cgroup.file_name().unwrap());
    fs::write(&hold, "").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(slow.pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    struct Cont(i32);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
    let _cont = Cont(slow.pid);
    let rule = format!("b 7:{index} rwm");
    let dest = format!("/dev/loop{index}");

    // 1. Plugged: `fast` gets it while `slow`'s add waits in its lane.
    let mut lo = HotLoop::add(index);
    wait_until(Duration::from_secs(10), "the node in fast to open", || {
        fast.host_path(&dest).exists().then_some(())?;
        (!denied(&fast.open_rw(&dest))).then_some(())
    });
    assert!(
        daemon.status()["jobs"].as_u64().unwrap() >= 1,
        "slow's add queued"
    );
    assert!(!slow.host_path(&dest).exists(), "slow is held: no node yet");
    assert!(!rules_of(&env, &slow.cgroup).unwrap().contains(&rule));

    // 2. Unplugged: `fast` loses it; `slow`'s removal queues behind its add.
    lo.remove();
    wait_until(Duration::from_secs(10), "fast to lose the device", || {
        (!fast.host_path(&dest).exists() && !rules_of(&env, &fast.cgroup).unwrap().contains(&rule))
            .then_some(())
    });
    assert!(
        daemon.status()["jobs"].as_u64().unwrap() >= 1,
        "slow still held"
    );
    assert!(!rules_of(&env, &slow.cgroup).unwrap().contains(&rule));

    // 3. Let go: `slow`'s add, then its removal, in that order; nothing is
    // left (the removal was not overtaken by the older add).
    fs::remove_file(&hold).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(slow.pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), "slow's lane to drain", || {
        (daemon.status()["jobs"].as_u64() == Some(0)).then_some(())
    });
    assert!(!slow.host_path(&dest).exists(), "{}", daemon.log_text());
    assert!(!rules_of(&env, &slow.cgroup).unwrap().contains(&rule));
    let state = fs::read_to_string(daemon.state_dir.join("state.json")).unwrap();
    assert!(!state.contains(&dest), "no record left: {state}");
    let log = daemon.kill();
    assert_eq!(outcomes(&log, "fast", &dest), ["add", "del"], "{log}");
    assert_eq!(outcomes(&log, "slow", &dest), ["add", "del"], "{log}");
    // fast's add was done before slow's add ended.
    let first = |name: &str| {
        log.lines()
            .position(|l| {
                l.contains(&format!("container={name} "))
                    && (l.contains("device added") || l.contains("went while passing it in"))
            })
            .unwrap()
    };
    assert!(first("fast") < first("slow"), "{log}");
    assert!(log.contains("lane held by"), "{log}");
}

#[test]
fn an_attach_held_in_its_lane_comes_before_its_devices_and_a_container_removed_meanwhile_leaves_nothing(
) {
    let env = TestEnv::new("dm-attach-lane");
    let index = HotLoop::pick();
    let dest = format!("/dev/loop{index}");
    let cfg = write_policy(
        &env,
        "policy.toml",
        0.0,
        &format!(
            "[[container]]\nname = \"held\"\nselect = {{ cgroup = \"{}/h-*\" }}\npreset = \"none\"\n\
             [[container.hotplug]]\ndevname = \"loop{index}\"\n",
            inside(&env.cgroup_parent)
        ),
    );
    let (mut daemon, holds) = DaemonProc::start_held(&env, &cfg);
    let jobs = |d: &DaemonProc| d.status()["jobs"].as_u64().unwrap_or(0);

    // 1. A container created and removed while its attach is held in its
    // lane: once let go, nothing of it is left (pin, state, list).
    let gone_hold = holds.join("h-gone");
    fs::write(&gone_hold, "").unwrap();
    let gone = env.cgroup("h-gone");
    let gone_id = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&gone).unwrap().ino()
    };
    wait_until(Duration::from_secs(10), "h-gone's attach queued", || {
        (jobs(&daemon) >= 1).then_some(())
    });
    let link = env.pin_root.join("links").join(gone_id.to_string());
    assert!(!link.exists(), "held: not attached yet");
    fs::remove_dir(&gone).unwrap();
    fs::remove_file(&gone_hold).unwrap();
    let state_file = daemon.state_dir.join("state.json");
    wait_until(Duration::from_secs(10), "h-gone's lane to drain", || {
        let state = fs::read_to_string(&state_file).unwrap_or_default();
        (jobs(&daemon) == 0 && !state.contains(&format!("\"{gone_id}\""))).then_some(())
    });
    assert!(!link.exists(), "no link pin left\n{}", daemon.log_text());
    assert!(
        !env.list_json()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["policy_id"].as_u64() == Some(gone_id)),
        "not listed"
    );

    // 2. A device plugged while a container's attach is held: it arrives
    // only after that attach (the container is covered by the scope
    // program meanwhile, never handed a device before its own program).
    fs::write(holds.join("h-live"), "").unwrap();
    let live = TestContainer::start(&env, "h-live", false);
    wait_until(Duration::from_secs(10), "h-live's attach queued", || {
        (jobs(&daemon) >= 1).then_some(())
    });
    let mut lo = HotLoop::add(index);
    std::thread::sleep(Duration::from_millis(300));
    assert!(rules_of(&env, &live.cgroup).is_none(), "held: not attached");
    assert!(!live.host_path(&dest).exists(), "held: no node yet");
    fs::remove_file(holds.join("h-live")).unwrap();
    wait_until(Duration::from_secs(10), "the device in h-live", || {
        live.host_path(&dest).exists().then_some(())?;
        live.open_rw(&dest).ok()
    });
    let log = daemon.log_text();
    let at = |what: &str| {
        log.lines().position(|l| {
            l.contains("container=held ")
                && l.contains(&*live.cgroup.to_string_lossy())
                && l.contains(what)
        })
    };
    let (attached, added) = (at(" attached"), at("device added"));
    assert!(
        attached.is_some() && added.is_some() && attached < added,
        "attach, then the device:\n{log}"
    );
    lo.remove();
    wait_until(
        Duration::from_secs(10),
        "the device to leave h-live",
        || (!live.host_path(&dest).exists()).then_some(()),
    );

    // 3. A container removed and re-created under its name while its
    // attach is held: the old attach does not land on the new cgroup (jobs
    // name their cgroup by path), the new one is attached by its own job
    // and stays attached when the old one's removal is handled.
    let ino = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(p).unwrap().ino()
    };
    let again_hold = holds.join("h-again");
    fs::write(&again_hold, "").unwrap();
    let again = env.cgroup("h-again");
    let old_id = ino(&again);
    // Its own record (written ahead when its attach is queued), not only a
    // job count: status.json follows on the daemon's tick, so a count of 1
    // can still be step 2's last job.
    daemon.wait_until(Duration::from_secs(10), "h-again's attach queued", || {
        let state = fs::read_to_string(&state_file).unwrap_or_default();
        (jobs(&daemon) >= 1 && state.contains(&format!("\"{old_id}\""))).then_some(())
    });
    fs::remove_dir(&again).unwrap();
    let again = env.cgroup("h-again");
    let new_id = ino(&again);
    assert_ne!(old_id, new_id);
    daemon.wait_until(Duration::from_secs(10), "both attaches queued", || {
        (jobs(&daemon) >= 2).then_some(())
    });
    fs::remove_file(&again_hold).unwrap();
    let listed = |id: u64| {
        env.list_json()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["policy_id"].as_u64() == Some(id))
    };
    wait_until(Duration::from_secs(10), "the new h-again attached", || {
        let state = fs::read_to_string(&state_file).unwrap_or_default();
        (jobs(&daemon) == 0
            && listed(new_id)
            && state.contains(&format!("\"{new_id}\""))
            && !state.contains(&format!("\"{old_id}\"")))
        .then_some(())
    });
    // Settled: a resync pass later, the new container is still attached and
    // the old one left nothing.
    std::thread::sleep(Duration::from_millis(300));
    let log = daemon.log_text();
    assert!(listed(new_id), "the new h-again stays attached\n{log}");
    assert!(
        env.pin_root.join("links").join(new_id.to_string()).exists(),
        "{log}"
    );
    assert!(!listed(old_id), "the old h-again is not listed\n{log}");
    assert!(
        !env.pin_root.join("links").join(old_id.to_string()).exists(),
        "{log}"
    );
    fs::remove_dir(&again).unwrap();

    // 4. The same, with the old attach's outcome back on the event loop
    // before the daemon reads the removal and the re-creation (its cgroup
    // events held): the old attach finds its cgroup gone and does nothing
    // (`cgroup::is_cgroup`); it does not attach the new cgroup, which gets
    // its own attach once the events are read.
    let third_hold = holds.join("h-third");
    fs::write(&third_hold, "").unwrap();
    let third = env.cgroup("h-third");
    let old_id = ino(&third);
    // As in 3: its own record, not a count step 3's detach may still make.
    daemon.wait_until(Duration::from_secs(10), "h-third's attach queued", || {
        let state = fs::read_to_string(&state_file).unwrap_or_default();
        (jobs(&daemon) >= 1 && state.contains(&format!("\"{old_id}\""))).then_some(())
    });
    let events_hold = holds.join("@inotify");
    fs::write(&events_hold, "").unwrap();
    fs::remove_dir(&third).unwrap();
    let third = env.cgroup("h-third");
    let new_id = ino(&third);
    assert_ne!(old_id, new_id);
    fs::remove_file(&third_hold).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the old h-third's attach done",
        || (jobs(&daemon) == 0).then_some(()),
    );
    let link = |id: u64| env.pin_root.join("links").join(id.to_string());
    assert!(
        !link(new_id).exists() && !listed(new_id),
        "the old attach landed on the re-created h-third\n{}",
        daemon.log_text()
    );
    assert!(!link(old_id).exists(), "{}", daemon.log_text());
    fs::remove_file(&events_hold).unwrap();
    daemon.wait_until(Duration::from_secs(10), "the new h-third attached", || {
        let state = fs::read_to_string(&state_file).unwrap_or_default();
        (jobs(&daemon) == 0
            && link(new_id).exists()
            && state.contains(&format!("\"{new_id}\""))
            && !state.contains(&format!("\"{old_id}\"")))
        .then_some(())
    });
    assert!(!listed(old_id), "{}", daemon.log_text());
    fs::remove_dir(&third).unwrap();
    let _ = daemon.kill();
}

/// The device programs attached to the cgroup `dir` itself.
fn programs_on(dir: &Path) -> Vec<u32> {
    use std::os::fd::AsFd;
    let fd = fs::File::open(dir).expect("open the cgroup");
    ctdev::kernel::sys::query_device_programs(fd.as_fd(), false, dir).expect("query programs")
}

#[test]
fn a_takeover_runs_in_the_containers_lane_after_its_attach_and_not_on_a_removed_cgroup() {
    let env = TestEnv::new("dm-takeover-lane");
    let cfg = write_policy(
        &env,
        "policy.toml",
        0.0,
        &format!(
            "[[container]]\nname = \"tk\"\nselect = {{ cgroup = \"{}/t-*\" }}\npreset = \"none\"\n\
             takeover = \"replace\"\nrules = [\"c 1:3 rwm\"]\n",
            inside(&env.cgroup_parent)
        ),
    );
    let (mut daemon, holds) = DaemonProc::start_held(&env, &cfg);
    let jobs = |d: &DaemonProc| d.status()["jobs"].as_u64().unwrap_or(0);
    let linked = |dir: &Path| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir).is_ok_and(|m| {
            env.pin_root
                .join("links")
                .join(m.ino().to_string())
                .exists()
        })
    };

    // 1. A managed container gets a runtime's program; its takeover is
    // queued in its lane (held there): the program stays until the lane
    // goes on, and meanwhile the event loop attaches another container.
    let a = env.cgroup("t-a");
    wait_until(Duration::from_secs(10), "t-a attached", || {
        (linked(&a) && jobs(&daemon) == 0).then_some(())
    });
    fs::write(holds.join("t-a"), "").unwrap();
    let runtime = ctdev_tests::foreign::ForeignProgram::deny_char(&a, 1, 5);
    wait_until(Duration::from_secs(10), "t-a's takeover queued", || {
        (jobs(&daemon) >= 1).then_some(())
    });
    let b = env.cgroup("t-b");
    wait_until(Duration::from_secs(10), "t-b attached meanwhile", || {
        linked(&b).then_some(())
    });
    assert!(
        programs_on(&a).contains(&runtime.id),
        "held: the runtime's program is still there\n{}",
        daemon.log_text()
    );
    fs::remove_file(holds.join("t-a")).unwrap();
    wait_until(Duration::from_secs(10), "t-a taken over", || {
        (!programs_on(&a).contains(&runtime.id) && jobs(&daemon) == 0).then_some(())
    });
    assert!(linked(&a), "ctdev's program stays on t-a");
    let log = daemon.log_text();
    assert!(
        log.contains("took over from the runtime's device program"),
        "{log}"
    );

    // 2. A container removed while its takeover is held: once let go, the
    // takeover does nothing (its cgroup is gone) and nothing of it is left.
    fs::write(holds.join("t-b"), "").unwrap();
    let runtime_b = ctdev_tests::foreign::ForeignProgram::deny_char(&b, 1, 5);
    wait_until(Duration::from_secs(10), "t-b's takeover queued", || {
        (jobs(&daemon) >= 1).then_some(())
    });
    let b_id = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&b).unwrap().ino()
    };
    drop(runtime_b);
    fs::remove_dir(&b).unwrap();
    fs::remove_file(holds.join("t-b")).unwrap();
    let state_file = daemon.state_dir.join("state.json");
    wait_until(Duration::from_secs(10), "t-b's lane to drain", || {
        let state = fs::read_to_string(&state_file).unwrap_or_default();
        (jobs(&daemon) == 0 && !state.contains(&format!("\"{b_id}\""))).then_some(())
    });
    let log = daemon.log_text();
    assert!(
        !env.pin_root.join("links").join(b_id.to_string()).exists(),
        "no link pin left\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("t-b")),
        "a removed container is no error\n{log}"
    );
    drop(runtime);
    fs::remove_dir(&a).unwrap();
    let _ = daemon.kill();
}

#[test]
fn a_rule_dropped_by_a_reload_is_taken_back_from_a_container_taken_over() {
    // The takeover attaches with the preset only; the entry's rules are the
    // daemon's grants, so a reload that drops one takes it back (attached
    // as base entries they stayed until detach).
    let env = TestEnv::new("dm-takeover-reload");
    let entry = |rules: &str| {
        format!(
            "[[container]]\nname = \"tk\"\nselect = {{ cgroup = \"{}/t-*\" }}\npreset = \"none\"\n\
             takeover = \"replace\"\nrules = [{rules}]\n",
            inside(&env.cgroup_parent)
        )
    };
    let cfg = write_policy(&env, "policy.toml", 0.0, &entry("\"c 1:3 r\", \"c 1:5 r\""));
    let mut daemon = DaemonProc::start(&env, &cfg);
    let a = env.cgroup("t-a");
    wait_until(Duration::from_secs(10), "t-a attached", || {
        env.try_op(&a, &ProbeOp::read("/dev/zero"))
            .is_ok()
            .then_some(())
    });
    let runtime = ctdev_tests::foreign::ForeignProgram::deny_char(&a, 1, 5);
    wait_until(Duration::from_secs(10), "t-a taken over", || {
        (!programs_on(&a).contains(&runtime.id)
            && env.try_op(&a, &ProbeOp::read("/dev/zero")).is_ok())
        .then_some(())
    });
    write_policy(&env, "policy.toml", 0.0, &entry("\"c 1:3 r\""));
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        "c 1:5 taken back after the reload",
        || {
            (env.try_op(&a, &ProbeOp::read("/dev/zero")) == Err(nix::errno::Errno::EPERM))
                .then_some(())
        },
    );
    assert_allowed(&env, &a, ProbeOp::read("/dev/null"));
    let log = daemon.log_text();
    assert!(
        log.contains("took over from the runtime's device program"),
        "{log}"
    );
    drop(runtime);
    let _ = daemon.kill();
    fs::remove_dir(&a).unwrap();
}

/// A device is passed in only once its write-ahead record is on disk:
/// while the daemon's state file cannot be written (a directory where its
/// temporary file goes), a hotplugged device gets no node and no rule,
/// and the daemon says why; once the state can be written again, the next
/// resync passes it in.
#[test]
fn a_device_whose_record_cannot_be_written_ahead_is_not_passed_in() {
    let env = TestEnv::new("dm-nowrite");
    let (a, index, cfg) = container_with_loop_hotplug(&env, 1.0);
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert!(rules_of(&env, &a.cgroup).is_some(), "a attached at start");
    let blocker = daemon.state_dir.join("state.json.tmp");
    fs::create_dir(&blocker).expect("block the state file's writes");

    let mut lo = HotLoop::add(index);
    let dest = format!("/dev/{}", lo.name());
    let rule = format!("b 7:{index} rwm");
    daemon.wait_until(
        Duration::from_secs(5),
        "the daemon to refuse the device",
        || {
            daemon
                .log_text()
                .contains("could not be written ahead")
                .then_some(())
        },
    );
    // Over a resync or two: still nothing given.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!a.host_path(&dest).exists(), "{dest} made without a record");
    assert!(
        !rules_of(&env, &a.cgroup).unwrap().contains(&rule),
        "{rule} granted without a record"
    );

    fs::remove_dir(&blocker).expect("unblock");
    daemon.wait_until(
        Duration::from_secs(10),
        "the device passed in once the state can be written",
        || {
            (a.host_path(&dest).exists() && rules_of(&env, &a.cgroup).unwrap().contains(&rule))
                .then_some(())
        },
    );
    let state = fs::read_to_string(daemon.state_dir.join("state.json")).expect("state file");
    assert!(state.contains(&dest), "{dest} not recorded: {state}");
    lo.remove();
    daemon.kill();
}
