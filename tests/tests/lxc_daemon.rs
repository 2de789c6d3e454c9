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
    let cfg = env.scratch.join("policy.toml");
    std::fs::write(
        &cfg,
        format!(
            "resync_interval = 0\n\
             [[container]]\nname = \"lxc\"\nselect = {{ target = \"lxc:{}\" }}\n\
             devices = [{{ path = \"/dev/loop-control\" }}]\n\
             [[container.hotplug]]\nsubsystem = \"block\"\ndevname = \"loop{index}\"\n",
            c.name
        ),
    )
    .unwrap();
    let mut daemon = DaemonProc::start(&env, &cfg);
    wait_until(
        Duration::from_secs(10),
        "the daemon to take over LXC's program and pass /dev/loop-control in",
        || (no_foreign_program(&env, &c) && opens(&c, "/dev/loop-control")).then_some(()),
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
