//! `ctdev daemon` with udevd: udevd's processed events (udev's owner, mode,
//! properties and names), udev's names inside the container (`links`),
//! `dest` templates over udev properties, re-plugging an adapter, coldplug
//! from udev's database, and the kernel-events path with udevd stopped.
//!
//! Each test runs the tests' own udevd (tests/src/udev.rs: one at a time,
//! under a file lock) with a rule file that makes the test's loop devices
//! look like a USB serial adapter: `ID_SERIAL`, a property only this rule
//! sets (`CTDEV_TEST`), `serial/by-id/usb-ctdev-test-<serial>`, owner
//! `daemon`, group `bin`, mode 0640.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{reserve_loops, wait_until, write_policy, DaemonProc, HotLoop};
use ctdev_tests::udev::{Adapter, Plugged, UdevRule, Udevd, GROUP_GID, MODE, OWNER_UID};
use ctdev_tests::*;

/// A policy selecting `a` with one hotplug rule on the test rule's own
/// property, nodes at `/dev/ctdev/{ID_SERIAL}`, udev's links recreated.
fn policy(env: &TestEnv, a: &TestContainer, tag: &str) -> PathBuf {
    write_policy(
        env,
        "policy.toml",
        0.0,
        &format!(
            "[[container]]\nname = \"ha\"\nselect = {{ target = \"{}\" }}\npreset = \"none\"\n\
             [[container.hotplug]]\nproperty = {{ CTDEV_TEST = \"{tag}\" }}\n\
             dest = \"/dev/ctdev/{{ID_SERIAL}}\"\nlinks = true\naccess = \"rw\"\n",
            a.cgroup.display()
        ),
    )
}

#[test]
fn udev_events_bring_udevs_owner_mode_and_names_and_a_replug_keeps_them() {
    let env = TestEnv::new("udev-hotplug");
    let _udevd = Udevd::start(&env.scratch);
    let idx = reserve_loops(3);
    let adapter = Adapter::new(&idx[..2], "serial-a");
    let other = Adapter::new(&idx[2..], "serial-b");
    let serial = adapter.serial.clone();
    let rule = UdevRule::new(&[&adapter, &other]);
    let a = TestContainer::start(&env, "a", false);
    let cfg = policy(&env, &a, &rule.tag);
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert_eq!(
        daemon.status()["events"],
        "udev",
        "udevd runs: its events are the source"
    );

    let node = format!("/dev/ctdev/{serial}");
    let link = format!("/dev/serial/by-id/usb-ctdev-test-{serial}");
    // Plug: udev's owner, group and mode; udev's name as a symlink.
    let mut first = HotLoop::add(idx[0]);
    let start = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the adapter's node and link in a",
        || {
            (node_numbers(&a.host_path(&node))? == (7, idx[0] as u64)).then_some(())?;
            fs::read_link(a.host_path(&link)).ok()
        },
    );
    eprintln!(
        "udev hotplug add -> node and link in the container: {:?}",
        start.elapsed()
    );
    let m = fs::symlink_metadata(a.host_path(&node)).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (OWNER_UID, GROUP_GID),
        "udev's OWNER/GROUP"
    );
    assert_eq!(m.permissions().mode() & 0o7777, MODE, "udev's MODE");
    assert_eq!(
        fs::read_link(a.host_path(&link)).unwrap(),
        Path::new(&format!("../../ctdev/{serial}"))
    );
    let r = a.open_rw(&link);
    assert!(!denied(&r), "open through udev's name: {r:?}");
    assert!(rules_of(&env, &a.cgroup).contains(&format!("b 7:{} rw", idx[0])));

    // Unplug: the rule closes, node and link go.
    first.remove();
    wait_until(Duration::from_secs(10), "node, link and rule to go", || {
        (fs::symlink_metadata(a.host_path(&link)).is_err()
            && fs::symlink_metadata(a.host_path(&node)).is_err()
            && !rules_of(&env, &a.cgroup).contains(&format!("b 7:{} rw", idx[0])))
        .then_some(())
    });

    // Re-plug the same adapter (another minor): the same names inside.
    let _second = HotLoop::add(idx[1]);
    wait_until(
        Duration::from_secs(10),
        "the re-plugged adapter at the same names",
        || {
            (node_numbers(&a.host_path(&node))? == (7, idx[1] as u64)).then_some(())?;
            fs::read_link(a.host_path(&link)).ok()
        },
    );
    let now = rules_of(&env, &a.cgroup);
    assert!(now.contains(&format!("b 7:{} rw", idx[1])), "{now:?}");
    // `ctdev list` shows the device the daemon passed in, with the udev
    // name it was selected by (JSON and text).
    let state_dir = daemon.state_dir.to_str().unwrap().to_string();
    let json: serde_json::Value = serde_json::from_str(&env.ok(&[
        "--json",
        "list",
        a.cgroup_str(),
        "--state-dir",
        &state_dir,
    ]))
    .unwrap();
    let passed = &json["containers"][0]["passed_in"];
    let by_id = format!("/dev/serial/by-id/usb-ctdev-test-{serial}");
    assert!(
        passed.as_array().is_some_and(|p| p
            .iter()
            .any(|d| d["dest"] == node.as_str() && d["udev_name"] == by_id.as_str())),
        "list --json passed_in: {passed:#}"
    );
    let text = env.ok(&["list", a.cgroup_str(), "--state-dir", &state_dir]);
    assert!(
        text.lines()
            .any(|l| l.contains("passed in:") && l.contains(&node) && l.contains(&by_id)),
        "list:\n{text}"
    );
    assert!(!now.contains(&format!("b 7:{} rw", idx[0])), "{now:?}");
    let r = a.open_rw(&link);
    assert!(
        !denied(&r),
        "open the re-plugged adapter through its name: {r:?}"
    );

    // Another adapter (another serial) lands at its own names, not these.
    let _third = HotLoop::add(idx[2]);
    let other_node = format!("/dev/ctdev/{}", other.serial);
    wait_until(
        Duration::from_secs(10),
        "the other adapter at its own name",
        || (node_numbers(&a.host_path(&other_node))? == (7, idx[2] as u64)).then_some(()),
    );
    assert_eq!(node_numbers(&a.host_path(&node)), Some((7, idx[1] as u64)));
    let log = daemon.kill();
    assert!(log.contains("device added"), "{log}");
}

#[test]
fn a_daemon_started_with_devices_present_takes_them_from_udevs_database() {
    let env = TestEnv::new("udev-coldplug");
    let plugged = Plugged::start(&env.scratch, "cold");
    let (idx, serial) = (&plugged.idx, &plugged.adapter.serial);
    let db = PathBuf::from(format!("/run/udev/data/b7:{}", idx[0]));
    let text = fs::read_to_string(&db).expect("udev's database has the device");
    assert!(text.contains(&format!("E:ID_SERIAL={serial}")), "{text}");

    let a = TestContainer::start(&env, "a", false);
    let cfg = policy(&env, &a, &plugged.rule.tag);
    let mut daemon = DaemonProc::start(&env, &cfg);
    let node = format!("/dev/ctdev/{serial}");
    let link = format!("/dev/serial/by-id/usb-ctdev-test-{serial}");
    wait_until(Duration::from_secs(10), "the present adapter in a", || {
        (node_numbers(&a.host_path(&node))? == (7, idx[0] as u64)).then_some(())?;
        fs::read_link(a.host_path(&link)).ok()
    });
    let m = fs::symlink_metadata(a.host_path(&node)).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
        (OWNER_UID, GROUP_GID, MODE)
    );
    daemon.kill();
}

#[test]
fn kernel_events_without_udevd_and_udevs_once_it_starts() {
    let env = TestEnv::new("udev-kernel");
    let mut udevd = Udevd::start(&env.scratch);
    udevd.stop();
    let idx = reserve_loops(2);
    let a = TestContainer::start(&env, "a", false);
    let cfg = write_policy(
        &env,
        "policy.toml",
        0.0,
        &format!(
            "[[container]]\nname = \"a\"\nselect = {{ target = \"{}\" }}\npreset = \"none\"\n\
             [[container.hotplug]]\ndevname = \"loop{{{},{}}}\"\ndest = \"/dev/hot/{{devname}}\"\naccess = \"rw\"\n",
            a.cgroup.display(),
            idx[0],
            idx[1]
        ),
    );
    let mut daemon = DaemonProc::start(&env, &cfg);
    assert_eq!(
        daemon.status()["events"],
        "kernel",
        "no udevd: the kernel's events"
    );
    let _lo = HotLoop::add(idx[0]);
    let dest = format!("/dev/hot/loop{}", idx[0]);
    wait_until(
        Duration::from_secs(10),
        "the device from the kernel's event",
        || (node_numbers(&a.host_path(&dest))? == (7, idx[0] as u64)).then_some(()),
    );
    let r = a.open_rw(&dest);
    assert!(!denied(&r), "{r:?}");

    // udevd starts: its events become the source.
    udevd.ensure_running();
    wait_until(
        Duration::from_secs(10),
        "the daemon to follow udevd",
        || (daemon.status()["events"] == "udev").then_some(()),
    );
    let _lo2 = HotLoop::add(idx[1]);
    let dest2 = format!("/dev/hot/loop{}", idx[1]);
    wait_until(
        Duration::from_secs(10),
        "the device from udev's event",
        || (node_numbers(&a.host_path(&dest2))? == (7, idx[1] as u64)).then_some(()),
    );
    let log = daemon.kill();
    assert!(log.contains("device events now come from udevd"), "{log}");
}

#[test]
fn ctdev_add_of_a_udev_name_with_links_and_del_takes_both_back() {
    let env = TestEnv::new("udev-cli");
    let plugged = Plugged::start(&env.scratch, "cli");
    let (idx, serial) = (&plugged.idx, &plugged.adapter.serial);
    let by_id = format!("/dev/serial/by-id/usb-ctdev-test-{serial}");
    assert!(Path::new(&by_id).exists(), "udev made {by_id}");
    let a = TestContainer::attached(&env, "a");
    let out = env.ok(&["add", a.cgroup_str(), &by_id, "--links"]);
    let node = format!("/dev/loop{}", idx[0]);
    assert_eq!(
        node_numbers(&a.host_path(&node)),
        Some((7, idx[0] as u64)),
        "{out}"
    );
    assert_eq!(
        fs::read_link(a.host_path(&by_id)).unwrap(),
        Path::new(&format!("../../loop{}", idx[0])),
        "{out}"
    );
    let r = a.open_rw(&by_id);
    assert!(!denied(&r), "{r:?}");
    env.ok(&["del", a.cgroup_str(), &by_id, "--links"]);
    assert!(fs::symlink_metadata(a.host_path(&by_id)).is_err());
    assert!(fs::symlink_metadata(a.host_path(&node)).is_err());
    let rule = format!("b 7:{} rw", idx[0]);
    assert!(
        !rules_of(&env, &a.cgroup)
            .iter()
            .any(|r| r.starts_with(&format!("b 7:{} ", idx[0]))),
        "{rule} closed"
    );
}
