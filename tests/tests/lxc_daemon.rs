//! `ctdev daemon` and a real LXC 5 container that attaches its own device
//! program (`lxc.cgroup2.devices.deny = a` plus LXC's standard allows, from
//! common.conf), started with a private lxcpath (`lxc-start -P`): the daemon
//! finds the container's config through its running monitor, takes over
//! LXC's program (import), and both a static device and a hotplugged loop
//! device then open inside. Without the takeover both stayed EPERM.

use std::time::{Duration, Instant};

use ctdev_tests::daemon::{wait_until, DaemonProc, HotLoop};
use ctdev_tests::engines::listed;
use ctdev_tests::runtimes::LxcContainer;
use ctdev_tests::*;

/// Whether `dev` is a device node inside and opens O_RDWR.
fn opens(c: &LxcContainer, dev: &str) -> bool {
    let o = c.exec(&[
        "/bin/sh",
        "-c",
        &format!("[ -c {dev} -o -b {dev} ] && exec 3<>{dev} && echo opened"),
    ]);
    String::from_utf8_lossy(&o.stdout).contains("opened")
}

/// Whether the payload cgroup has only ctdev's program left.
fn no_foreign_program(env: &TestEnv, c: &LxcContainer) -> bool {
    listed(env, c.payload_cgroup())
        .is_some_and(|v| v["other_programs"] == serde_json::json!([]) && v["state"] == "enforcing")
}

/// Starts a daemon whose policy selects `c`, passes /dev/loop-control in,
/// plus `more` policy lines; waits until it took over LXC's program and
/// the node opens.
fn start_daemon(env: &TestEnv, c: &LxcContainer, more: &str) -> DaemonProc {
    let cfg = env.scratch.join("policy.toml");
    std::fs::write(
        &cfg,
        format!(
            "resync_interval = 0\n\
             [[container]]\nname = \"lxc\"\nselect = {{ target = \"lxc:{}\" }}\n\
             devices = [{{ path = \"/dev/loop-control\" }}]\n{more}",
            c.name
        ),
    )
    .unwrap();
    let daemon = DaemonProc::start(env, &cfg);
    wait_until(
        Duration::from_secs(10),
        "the daemon to take over LXC's program and pass /dev/loop-control in",
        || (no_foreign_program(env, c) && opens(c, "/dev/loop-control")).then_some(()),
    );
    daemon
}

#[test]
fn lxc_daemon_takes_over_and_passes_static_and_hotplugged_devices() {
    let env = TestEnv::new("lxc-dm");
    let c = LxcContainer::start("dm");
    assert!(opens(&c, "/dev/null"), "LXC allows /dev/null");
    assert!(!opens(&c, "/dev/loop-control"), "no such node inside yet");
    let config = std::fs::read_to_string(c.config_path()).unwrap();
    assert!(
        !config.contains("lxc.cgroup2.devices"),
        "rules come from common.conf"
    );

    let index = HotLoop::pick();
    let mut daemon = start_daemon(
        &env,
        &c,
        &format!("[[container.hotplug]]\nsubsystem = \"block\"\ndevname = \"loop{index}\"\n"),
    );
    let view = listed(&env, c.payload_cgroup()).unwrap();
    let rules: Vec<String> = view["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_string())
        .collect();
    assert!(
        rules.contains(&"c 1:3 rwm".to_string()),
        "LXC's rules imported: {rules:?}"
    );
    assert!(rules.contains(&"c 10:237 rwm".to_string()), "{rules:?}");
    assert!(opens(&c, "/dev/null") && opens(&c, "/dev/zero"));
    assert_eq!(env.list_json()["problems"], serde_json::json!([]));

    let lo = HotLoop::add(index);
    let dest = format!("/dev/{}", lo.name());
    let start = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the hotplugged loop device inside",
        || opens(&c, &dest).then_some(()),
    );
    eprintln!("lxc: hotplug -> usable inside: {:?}", start.elapsed());
    let log = daemon.kill();
    assert!(log.contains("took over"), "{log}");
    assert!(
        log.contains(&c.lxcpath.display().to_string()),
        "config found via the monitor: {log}"
    );
}

/// The rules of ctdev's policy on the payload cgroup, as `ctdev list` shows them.
fn ctdev_rules(env: &TestEnv, c: &LxcContainer) -> Vec<String> {
    let mut rules: Vec<String> = listed(env, c.payload_cgroup()).expect("under policy")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_string())
        .collect();
    rules.sort();
    rules
}

/// `lxc-device -P PATH -n NAME VERB DEV`, required to succeed.
fn lxc_device(c: &LxcContainer, verb: &str, dev: &str) {
    let out = std::process::Command::new("lxc-device")
        .arg("-P")
        .arg(&c.lxcpath)
        .args(["-n", &c.name, verb, dev])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run lxc-device");
    assert!(
        out.status.success(),
        "lxc-device {verb} {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lxc-device add` makes LXC build and attach a new program (its rules
/// plus the added device): the daemon notices the new foreign program and
/// takes over again, keeping exactly the rules it had (LXC's imported ones
/// and the policy's), so nothing is widened or lost. The device LXC added
/// is in no rule ctdev knows (LXC keeps it only in its monitor's memory and
/// in the program), so after the re-takeover it is denied: on a container
/// the daemon manages, add devices with ctdev (or the policy file).
#[test]
fn lxc_daemon_takes_over_again_after_lxc_device_add() {
    let env = TestEnv::new("lxc-dev");
    let c = LxcContainer::start("dev");
    let mut daemon = start_daemon(&env, &c, "");
    let before = ctdev_rules(&env, &c);
    let took_over = |log: &str| log.matches("took over").count();
    assert_eq!(took_over(&daemon.log_text()), 1);

    // A device LXC adds itself: LXC attaches a new program.
    let lo = HotLoop::add(HotLoop::pick());
    let dev = format!("/dev/{}", lo.name());
    wait_until(Duration::from_secs(5), "the loop device node", || {
        std::path::Path::new(&dev).exists().then_some(())
    });
    let start = Instant::now();
    lxc_device(&c, "add", &dev);
    wait_until(
        Duration::from_secs(10),
        "the daemon to take over LXC's new program",
        || (took_over(&daemon.log_text()) >= 2 && no_foreign_program(&env, &c)).then_some(()),
    );
    eprintln!(
        "lxc: lxc-device add -> taken over again: {:?}",
        start.elapsed()
    );
    assert_eq!(ctdev_rules(&env, &c), before, "nothing widened or lost");
    assert!(opens(&c, "/dev/loop-control"), "ctdev's grant kept");
    assert!(opens(&c, "/dev/null"), "LXC's imported rules kept");
    let inside = c.exec(&["/bin/sh", "-c", &format!("[ -b {dev} ] && echo node")]);
    assert!(
        String::from_utf8_lossy(&inside.stdout).contains("node"),
        "lxc-device made the node inside"
    );
    assert!(
        !opens(&c, &dev),
        "LXC's own addition is not in ctdev's rules"
    );
    assert_eq!(env.list_json()["problems"], serde_json::json!([]));

    // The same device given through ctdev works.
    env.ok(&["add", &format!("lxc:{}", c.name), &dev]);
    assert!(opens(&c, &dev), "added with ctdev");
    assert!(opens(&c, "/dev/loop-control"));
    let log = daemon.kill();
    assert!(!log.contains("ERROR"), "{log}");
    drop(lo);
}

#[test]
fn lxc_takeover_finds_a_private_lxcpath_without_flags() {
    let env = TestEnv::new("lxc-path");
    let c = LxcContainer::start("path");
    let report: serde_json::Value = serde_json::from_str(&env.ok(&[
        "--json",
        "attach",
        &format!("lxc:{}", c.name),
        "--takeover",
    ]))
    .unwrap();
    assert_eq!(report["format"], "lxc");
    assert_eq!(
        report["source"],
        c.config_path().to_str().unwrap(),
        "{report}"
    );
    assert_eq!(report["detached"].as_array().unwrap().len(), 1, "{report}");
    assert!(opens(&c, "/dev/null"));
}
