//! Audit features against the real kernel: denial events, rate limiting,
//! counters, `ctdev check` versus real opens, `ctdev monitor`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ctdev_tests::foreign::ForeignProgram;
use ctdev_tests::*;

/// A running `ctdev monitor --json`, its lines read on a thread; killed on drop.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Monitor {
    fn start(env: &TestEnv, extra: &[&str]) -> Monitor {
        let mut child = Command::new(ctdev_bin())
            .arg("--pin-root")
            .arg(&env.pin_root)
            .args(["--json", "monitor"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ctdev monitor");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut monitor_guard = Monitor {
            child,
            lines: mpsc::channel().1,
        };
        // Wait for the ready line on stderr.
        let mut ready = String::new();
        BufReader::new(stderr).read_line(&mut ready).unwrap();
        assert!(
            ready.contains("watching denials"),
            "monitor did not start: {ready:?}"
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value =
                    serde_json::from_str(&line).expect("monitor prints JSON lines");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        monitor_guard.lines = rx;
        monitor_guard
    }

    fn next(&self, within: Duration) -> Option<serde_json::Value> {
        self.lines.recv_timeout(within).ok()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a shell loop inside `cgroup`, pinned to CPU 0: `body` repeated `n` times.
fn shell_loop(cgroup: &Path, n: u32, body: &str) {
    let script = format!(
        "echo $$ > {}/cgroup.procs && i=0; while [ $i -lt {n} ]; do {body}; i=$((i+1)); done",
        cgroup.display()
    );
    let status = Command::new("taskset")
        .args(["-c", "0", "sh", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .expect("run shell loop");
    assert!(
        status.success() || status.code().is_some(),
        "shell loop died"
    );
}

fn container(dump: &serde_json::Value) -> &serde_json::Value {
    &dump["containers"][0]
}

#[test]
fn a_denied_open_gives_exactly_one_event_with_the_right_fields() {
    let (env, cg) = TestEnv::with_attached("event", "c", &["c 1:3 r"]);
    let mon = Monitor::start(&env, &[]);
    assert_denied(&env, &cg, ProbeOp::write("/dev/null"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    // A second, different denial marks the end of what the first produced.
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    let first = mon
        .next(Duration::from_secs(5))
        .expect("an event for the denied write");
    let second = mon
        .next(Duration::from_secs(5))
        .expect("an event for the marker");
    let cg_id = std::fs::metadata(&cg).unwrap().ino();
    assert_eq!(first["type"], "denied");
    assert_eq!(first["policy_id"], cg_id);
    assert_eq!(first["cgroup_id"], cg_id);
    assert_eq!(first["container"], format!("/{}/c", env.name));
    assert_eq!(
        first["device"],
        serde_json::json!({"type": "c", "major": 1, "minor": 3, "name": "/dev/null"})
    );
    assert_eq!(first["access"], "w");
    assert_eq!(first["rule"], "c 1:3 r");
    assert_eq!(first["uid"], 0);
    assert_eq!(first["gid"], 0);
    assert!(first["tgid"].as_u64().unwrap() > 0 && first["pid"] == first["tgid"]);
    assert!(!first["comm"].as_str().unwrap().is_empty());
    assert!(first["time"].as_str().unwrap().starts_with("20"));
    assert_eq!(second["device"]["minor"], 5);
    assert_eq!(second["rule"], serde_json::Value::Null);
    assert!(
        mon.next(Duration::from_millis(300)).is_none(),
        "more events than denials"
    );
}

#[test]
fn events_beyond_the_rate_limit_are_dropped_and_counted() {
    let (env, cg) = TestEnv::with_attached("ratelimit", "c", &[]);
    let mon = Monitor::start(&env, &[]);
    // 300 denied opens from one process on one CPU, in far less than a second.
    shell_loop(&cg, 300, "true < /dev/zero");
    let c = container(&env.list_json()).clone();
    assert_eq!(c["denied"], 300);
    let (events, dropped) = (
        c["events"].as_u64().unwrap(),
        c["events_dropped"].as_u64().unwrap(),
    );
    assert_eq!(events + dropped, 300);
    assert_eq!(
        events,
        ctdev_common::EVENTS_PER_SECOND_PER_CPU,
        "one CPU, one window: the limit exactly"
    );
    // The monitor delivers the events that were kept and reports the drops.
    let mut denied = 0;
    let mut reported_drops = 0;
    while let Some(v) = mon.next(Duration::from_secs(3)) {
        match v["type"].as_str() {
            Some("denied") => denied += 1,
            Some("dropped") => reported_drops += v["dropped"].as_u64().unwrap(),
            other => panic!("unexpected line {other:?}"),
        }
        if denied == events && reported_drops == dropped {
            break;
        }
    }
    assert_eq!((denied, reported_drops), (events, dropped));
}

#[test]
fn counters_count_allowed_and_denied_exactly_and_reset() {
    let (env, cg) = TestEnv::with_attached("counters", "c", &["c 1:3 r", "c 1:* ''"]);
    shell_loop(&cg, 7, "true < /dev/null");
    shell_loop(&cg, 3, "true > /dev/null");
    shell_loop(&cg, 2, "true < /dev/zero");
    let dump = env.list_json();
    let c = container(&dump);
    let hits = |rule: &str| {
        c["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .unwrap()["hits"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(hits("c 1:3 r"), 7);
    assert_eq!(hits("c 1:* ''"), 0);
    assert_eq!(c["denied"], 5);
    let text = env.ok(&["list", s(&cg)]);
    assert!(
        text.contains("hits 7") && text.contains("denied 5"),
        "{text}"
    );
    env.ok(&["reset-counters", s(&cg)]);
    let c = container(&env.list_json()).clone();
    assert_eq!(c["denied"], 0);
    assert!(c["rules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["hits"] == 0));
    // Counting resumes from zero.
    shell_loop(&cg, 2, "true < /dev/null");
    let c = container(&env.list_json()).clone();
    assert_eq!(
        c["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == "c 1:3 r")
            .unwrap()["hits"],
        2
    );
}

/// The real verdict of opening (or mknod-ing) `dev` with `access` in `cg`.
fn real_verdict(env: &TestEnv, cg: &Path, dev: &str, access: &str, n: usize) -> bool {
    let op = if access == "m" {
        let meta = std::fs::metadata(dev).unwrap();
        ProbeOp::Mknod {
            path: env.fresh_path(&format!("mk{n}")),
            dev_type: DeviceType::Char,
            major: libc::major(meta.rdev()),
            minor: libc::minor(meta.rdev()),
        }
    } else {
        ProbeOp::Open {
            path: dev.into(),
            read: access.contains('r'),
            write: access.contains('w'),
        }
    };
    match env.try_op(cg, &op) {
        Ok(()) => true,
        Err(Errno::EPERM) => false,
        Err(e) => panic!("{op:?} failed with {e}, not a device-controller verdict"),
    }
}

#[test]
fn check_agrees_with_real_opens_in_every_case() {
    let env = TestEnv::new("check");
    let plain = env.cgroup("plain");
    let with_foreign = env.cgroup("foreign");
    let ancestor = env.cgroup("anc");
    let under_ancestor = env.cgroup("anc/c");
    for cg in [&plain, &with_foreign, &under_ancestor] {
        env.attach_rules(cg, &["c 1:3 rw", "c 1:5 r", "c 1:7 m", "c 10:200 rwm"]);
    }
    // A second, non-ctdev program on the cgroup denies what ctdev allows,
    // and one on an ancestor denies too.
    let _same = ForeignProgram::deny_char(&with_foreign, 10, 200);
    let _up = ForeignProgram::deny_char(&ancestor, 1, 3);
    let devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/net/tun"];
    let accesses = ["r", "w", "rw", "m"];
    let mut n = 0;
    let mut cases = 0;
    for cg in [&plain, &with_foreign, &under_ancestor] {
        for dev in devices {
            for access in accesses {
                n += 1;
                let real = real_verdict(&env, cg, dev, access, n);
                let r = env.ctdev(&["--json", "check", s(cg), dev, access]);
                assert!(r.code == 0 || r.code == 1, "check failed: {}", r.stderr);
                let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
                assert_eq!(
                    r.code == 0,
                    real,
                    "check {dev} {access} in {}: {}",
                    cg.display(),
                    report["explanation"]
                );
                assert_eq!(report["allowed"], real);
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 48);
    // The explanations name who denied.
    let r = env.ctdev(&["--json", "check", s(&with_foreign), "/dev/net/tun", "rw"]);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let why = report["explanation"].as_str().unwrap();
    assert!(
        why.starts_with("denied by program")
            && why.contains("foreign_dev")
            && why.contains("ctdev allows it"),
        "{why}"
    );
    let r = env.ctdev(&["--json", "check", s(&under_ancestor), "/dev/null", "r"]);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let why = report["explanation"].as_str().unwrap();
    assert!(why.contains(&format!("/{}/anc", env.name)), "{why}");
    let r = env.ctdev(&["--json", "check", s(&plain), "/dev/zero", "w"]);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        report["explanation"],
        "denied: ctdev denies it (entry `c 1:5 r` lacks the access)"
    );
    // Nothing is left behind by check: no probe cgroup, no node.
    for cg in [&plain, &with_foreign, &under_ancestor] {
        let subs: Vec<_> = std::fs::read_dir(cg)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(subs.is_empty(), "left behind in {}: {subs:?}", cg.display());
    }
}

#[test]
fn check_rejects_what_is_not_one_device() {
    let (env, cg) = TestEnv::with_attached("check-bad", "c", &[]);
    let before = env.list_json();
    for (args, want) in [
        (vec!["check", s(&cg), "c 1:* r"], "wildcard"),
        (vec!["check", s(&cg), "a 1:3 r"], "one device type"),
        (vec!["check", s(&cg), "/nonexistent"], "/nonexistent"),
        (vec!["check", s(&cg), "c 1:3 r", "c 1:5 r"], "one device"),
    ] {
        let r = env.ctdev(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    assert_eq!(
        env.list_json()["containers"][0]["rules"],
        before["containers"][0]["rules"]
    );
}

#[test]
fn monitor_started_after_the_fact_sees_new_events() {
    let (env, cg) = TestEnv::with_attached("monitor-late", "c", &[]);
    // Programs are loaded and denying before any monitor exists.
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    let mon = Monitor::start(&env, &[]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/full"));
    let mut saw_new = false;
    while let Some(v) = mon.next(Duration::from_secs(5)) {
        if v["device"]["minor"] == 7 {
            saw_new = true;
            break;
        }
    }
    assert!(saw_new, "the late monitor did not see the new denial");
}

#[test]
fn drift_names_nodes_without_rules_and_rules_without_nodes() {
    let env = TestEnv::new("drift");
    let cg = env.cgroup("c");
    let parked = Parked::in_cgroup(&cg);
    env.ok(&[
        "attach",
        &format!("pid:{}", parked.pid()),
        "--preset",
        "none",
        "--rule",
        "c 1:3 rw",
        "--rule",
        "c 4000:1 rw",
    ]);
    let dump: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "list", "--drift"])).unwrap();
    let drift = &dump["containers"][0]["drift"];
    assert_eq!(drift["init_pid"], parked.pid());
    // The parked process shares the host's /dev: /dev/zero has no rule.
    let nodes = field_strs(&drift["nodes_without_rule"], "path");
    assert!(nodes.contains(&"/dev/zero"), "{nodes:?}");
    assert!(!nodes.contains(&"/dev/null"), "{nodes:?}");
    assert_eq!(
        drift["rules_without_node"],
        serde_json::json!(["c 4000:1 rw"])
    );
}

/// Issue #10 item 8: `monitor` started before anything is attached waits
/// for the maps; after the last detach and a new attach (maps recreated)
/// it follows the new ring buffer; a closed output pipe ends it with 0.
#[test]
fn monitor_waits_follows_recreated_maps_and_exits_on_a_closed_pipe() {
    let env = TestEnv::new("monitor-recreate");
    let cg = env.cgroup("c");
    let mon = Monitor::start(&env, &[]);
    env.attach_rules(&cg, &[]);
    let saw = |minor: u64| {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            assert_denied(&env, &cg, ProbeOp::read("/dev/full"));
            if let Some(v) = mon.next(Duration::from_millis(500)) {
                if v["device"]["minor"] == minor {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        saw(7),
        "the waiting monitor sees the first attach's denials"
    );
    env.ok(&["detach", s(&cg)]);
    assert!(!env.pin_root.join("CTDEV_EVENTS").exists(), "maps removed");
    env.attach_rules(&cg, &[]);
    assert!(saw(7), "the monitor follows the recreated maps");

    // A closed pipe: the reader goes away, the monitor exits 0.
    let mut child = Command::new(ctdev_bin())
        .arg("--pin-root")
        .arg(&env.pin_root)
        .args(["monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ctdev monitor");
    drop(child.stdout.take());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        assert_denied(&env, &cg, ProbeOp::read("/dev/full"));
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            std::time::Instant::now() < end,
            "monitor kept running on a closed pipe"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "closed pipe ends the monitor cleanly: {status:?}"
    );
}

/// Issue #10 item 8: `check` on a frozen container fails at once with a
/// clear error instead of hanging, and leaves no probe cgroup; a probe
/// cgroup a killed `check` left behind (dead pid) is removed by the next.
#[test]
fn check_refuses_a_frozen_container_and_cleans_up_leftover_probes() {
    let env = TestEnv::new("check-frozen");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg), "--preset", "oci"]);
    let mut sleeper = Command::new("sh")
        .args([
            "-c",
            &format!("echo $$ > {}/cgroup.procs && exec sleep 300", cg.display()),
        ])
        .spawn()
        .expect("start a process in the cgroup");
    std::fs::write(cg.join("cgroup.freeze"), "1").expect("freeze");
    let start = std::time::Instant::now();
    let err = env.fails(&["check", s(&cg), "c 1:3 r"]);
    assert!(err.contains("frozen"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20), "check returned");
    std::fs::write(cg.join("cgroup.freeze"), "0").expect("thaw");

    // A leftover of a killed check (pid 999999 does not exist here).
    let leftover = cg.join("ctdev-check-999999");
    std::fs::create_dir(&leftover).expect("plant a leftover probe cgroup");
    let out = env.ok(&["--json", "check", s(&cg), "c 1:3 r"]);
    assert!(out.contains("\"allowed\": true"), "{out}");
    assert!(!leftover.exists(), "the leftover probe cgroup was removed");
    let left: Vec<_> = std::fs::read_dir(&cg)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ctdev-check-"))
        .collect();
    assert!(left.is_empty(), "no probe cgroup stays: {left:?}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// Issue #10 item 8: on this hybrid host a container can also be in a
/// cgroup v1 `devices` cgroup that denies what ctdev allows; `check` joins
/// it too, so it says DENIED exactly when a real open is EPERM.
#[test]
fn check_judges_with_the_v1_devices_cgroup_too() {
    let env = TestEnv::new("check-v1");
    let cg = env.cgroup("c");
    let v1 = std::path::PathBuf::from("/sys/fs/cgroup/devices").join(&env.name);
    assert!(
        v1.parent().unwrap().join("devices.list").exists(),
        "this host mounts the v1 devices controller at /sys/fs/cgroup/devices"
    );
    std::fs::create_dir(&v1).expect("create a v1 devices cgroup");
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
            for p in procs.lines() {
                let _ = std::fs::write("/sys/fs/cgroup/devices/cgroup.procs", p);
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(v1.clone());
    std::fs::write(v1.join("devices.deny"), "c 1:5 rwm").expect("v1 deny");
    let mut sleeper = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && exec sleep 300",
                cg.display(),
                v1.display()
            ),
        ])
        .spawn()
        .expect("start a process in both cgroups");
    std::thread::sleep(Duration::from_millis(300));
    env.ok(&["attach", s(&cg), "--preset", "oci"]);
    // A real open from a process in both cgroups is EPERM.
    let real = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && exec cat /dev/zero | head -c1 >/dev/null",
                cg.display(),
                v1.display()
            ),
        ])
        .output()
        .expect("real open");
    assert!(
        String::from_utf8_lossy(&real.stderr).contains("not permitted"),
        "the v1 cgroup denies /dev/zero: {real:?}"
    );
    let r = env.ctdev(&["--json", "check", s(&cg), "c 1:5 r"]);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["allowed"], false, "{report}");
    assert!(report["v1_devices_cgroup"].as_str().is_some(), "{report}");
    let report: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "check", s(&cg), "c 1:3 r"])).unwrap();
    assert_eq!(report["allowed"], true, "{report}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn list_json_streamed_from_typed_views_is_the_value_tree_document_on_a_real_policy() {
    use ctdev::audit::view::{dump_json_via_value, write_dump_json};
    use ctdev::ops::{Config, Ctdev};
    use std::collections::BTreeMap;

    let env = TestEnv::new("list-json");
    let a = env.cgroup("a");
    let b = env.cgroup("b");
    let d = env.cgroup("c/d");
    env.attach_rules(&a, &["c 1:3 rw", "c 1:5 r", "b 7:* m"]);
    env.attach_rules(&b, &["c 1:3 r"]);
    env.attach_rules(&d, &["c 1:* rwm", "c 1:3 ''"]);
    shell_loop(&a, 3, "true < /dev/null");
    // Another program above one container: its `other_programs` is not empty.
    let _foreign = ForeignProgram::deny_char(&env.cgroup("c"), 250, 1);
    let ct = Ctdev::new(Config {
        pin_root: env.pin_root.clone(),
        ..Config::default()
    })
    .expect("open ctdev");
    let dump = ct.list(None).expect("list");
    assert_eq!(dump.containers.len(), 3);
    assert!(dump.containers.iter().any(|c| !c.other_programs.is_empty()));
    let none: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
    let old = dump_json_via_value(&dump, &none).unwrap();
    let mut streamed = Vec::new();
    write_dump_json(&dump, &none, &mut streamed).unwrap();
    assert_eq!(String::from_utf8(streamed).unwrap(), old);
    // The CLI streams the same document (no device passed in, no CDI
    // record: both read from this test's own scratch directories).
    let scratch = env.scratch.display().to_string();
    let cli = env.ok(&[
        "list",
        "--json",
        "--state-dir",
        &scratch,
        "--cdi-state",
        &scratch,
    ]);
    assert_eq!(cli, format!("{old}\n"));
}

/// `list` holds a bounded number of descriptors however many containers
/// there are (RLIMIT_NOFILE is often 1024): 300 containers, which `list`
/// reads on several threads, are listed under a limit of 64.
#[test]
fn list_of_many_containers_needs_few_file_descriptors() {
    let env = TestEnv::new("list-fds");
    let n = 300;
    for i in 0..n {
        let cg = env.cgroup(&format!("c{i}"));
        env.attach_rules(&cg, &["c 1:3 rw"]);
    }
    let out = Command::new("prlimit")
        .arg("--nofile=64")
        .arg("--")
        .arg(ctdev_bin())
        .arg("--pin-root")
        .arg(&env.pin_root)
        .args(["--json", "list"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "list under RLIMIT_NOFILE 64 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    assert_eq!(v["containers"].as_array().map(Vec::len), Some(n), "{v:#}");
}

/// A nested tree: a container on a leaf, one on a cgroup that has child
/// cgroups, and one under that one. `list` finds all three (the walk opens
/// only directories with subdirectories, so the one with children and the
/// one under it are on different paths of it), and `detach id:N` finds
/// each by its id, the deepest first and the leaf last.
#[test]
fn list_and_detach_find_containers_at_every_level_of_a_nested_tree() {
    let env = TestEnv::new("list-nested");
    let leaf = env.cgroup("leaf");
    let parent = env.cgroup("parent");
    let child = env.cgroup("parent/child");
    // A cgroup with children but no policy of its own, beside the others.
    env.cgroup("plain/inner");
    for cg in [&leaf, &parent, &child] {
        env.attach_rules(cg, &["c 1:3 rw"]);
    }
    let id_of = |cg: &Path| std::fs::metadata(cg).expect("stat cgroup").ino();
    let listed = |env: &TestEnv| -> Vec<u64> {
        let v = env.list_json();
        let mut ids: Vec<u64> = v["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .map(|c| {
                assert_eq!(c["state"], "enforcing", "{c:#}");
                c["policy_id"].as_u64().expect("policy_id")
            })
            .collect();
        ids.sort_unstable();
        ids
    };
    let mut want: Vec<u64> = [&leaf, &parent, &child].iter().map(|c| id_of(c)).collect();
    want.sort_unstable();
    assert_eq!(listed(&env), want);
    for (cg, left) in [(&child, 2), (&parent, 1), (&leaf, 0)] {
        let id = id_of(cg);
        env.ok(&["detach", &format!("id:{id}")]);
        let now = listed(&env);
        assert_eq!(now.len(), left, "after detach of {}: {now:?}", cg.display());
        assert!(
            !now.contains(&id),
            "{} still listed after detach id:{id}",
            cg.display()
        );
    }
}
