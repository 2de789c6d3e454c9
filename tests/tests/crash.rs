//! Crash consistency: ctdev is SIGKILLed at every named step
//! (`CTDEV_FAILPOINT`, compiled in by `cargo xtask test`) of attach,
//! allow/revoke, detach, takeover, add and del. After each crash: a container
//! that was under policy still has its program; no device the command did
//! not name is allowed; `ctdev list` agrees with real opens; re-running the
//! command converges to the state a clean run gives.

use std::path::Path;

use ctdev_tests::container::TestContainer;
use ctdev_tests::foreign::ForeignProgram;
use ctdev_tests::*;

/// Checks that what `list` says about the read bit of each `(major, minor)`
/// char device (`/dev/null` 1:3, `/dev/zero` 1:5, `/dev/full` 1:7,
/// `/dev/random` 1:8) is what the kernel does.
#[track_caller]
fn list_matches_kernel(env: &TestEnv, cg: &Path) {
    let listed = listed_rules(env, cg);
    for (dev, minor) in [
        ("/dev/null", 3),
        ("/dev/zero", 5),
        ("/dev/full", 7),
        ("/dev/random", 8),
    ] {
        let says = match &listed {
            Some((state, rules)) if state == "enforcing" => rules
                .iter()
                .any(|r| r.starts_with(&format!("c 1:{minor} ")) && r.contains('r')),
            // Not enforcing: nothing of ctdev's decides.
            _ => true,
        };
        let got = env.try_op(cg, &ProbeOp::read(dev)).is_ok();
        assert_eq!(
            got, says,
            "{dev}: kernel says {got}, list says {says} ({listed:?})"
        );
    }
}

#[test]
fn failpoints_are_compiled_in() {
    // Without this, every crash test below would fail with a clear message;
    // this one says it first.
    let env = TestEnv::new("crash-fp");
    let cg = env.cgroup("c");
    env.crash_at("attach.after_lock", &["attach", s(&cg)]);
}

#[test]
fn attach_killed_at_every_step_converges() {
    for step in [
        "attach.after_lock",
        "attach.after_load",
        "attach.after_rules",
        "attach.after_link_create",
        "attach.after_pin",
    ] {
        let env = TestEnv::new("crash-attach");
        let cg = env.cgroup("c");
        let args = attach_args(&cg, &["c 1:5 r"]);
        env.crash_at(step, &args);
        // Either not under policy yet (all allowed, as before), or under the
        // complete policy: never a partial one.
        match listed_rules(&env, &cg) {
            None => assert_allowed(&env, &cg, ProbeOp::read("/dev/null")),
            Some((state, rules)) => {
                assert_eq!(state, "enforcing", "{step}");
                assert_eq!(rules, ["c 1:5 r"], "{step}");
                assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
            }
        }
        list_matches_kernel(&env, &cg);
        env.ok(&args);
        assert_eq!(
            listed_rules(&env, &cg),
            Some(("enforcing".into(), vec!["c 1:5 r".into()])),
            "{step}"
        );
        let dump = env.list_json();
        assert_eq!(dump["orphaned"], serde_json::json!([]), "{step}: {dump}");
        assert_eq!(dump["policy_map"]["entries"], 1, "{step}");
        assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
        assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
        list_matches_kernel(&env, &cg);
    }
}

#[test]
fn attach_of_an_attached_container_killed_keeps_its_program() {
    let (env, cg) = TestEnv::with_attached("crash-reattach", "c", &["c 1:5 r"]);
    let same = attach_args(&cg, &["c 1:5 r"]);
    env.crash_at("attach.after_lock", &same);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    list_matches_kernel(&env, &cg);
    // Another policy on an attached cgroup is refused and changes nothing.
    let err = env.fails(&["attach", s(&cg), "--rule", "c 1:7 r", "--rule", "c 1:8 r"]);
    assert!(err.contains("ctdev allow"), "{err}");
    env.ok(&same);
    assert_eq!(listed_rules(&env, &cg).unwrap().1, ["c 1:5 r"]);
    list_matches_kernel(&env, &cg);
}

#[test]
fn allow_killed_mid_batch_converges() {
    for step in ["map.apply.after_first_write", "allow.after_write"] {
        let (env, cg) = TestEnv::with_attached("crash-allow", "c", &["c 1:5 r"]);
        let args = ["allow", s(&cg), "c 1:7 r", "c 1:8 r"];
        env.crash_at(step, &args);
        // Still enforcing, /dev/null (not named) still denied.
        assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
        list_matches_kernel(&env, &cg);
        env.ok(&args);
        assert_eq!(
            listed_rules(&env, &cg).unwrap().1,
            ["c 1:5 r", "c 1:7 r", "c 1:8 r"],
            "{step}"
        );
        list_matches_kernel(&env, &cg);
    }
}

#[test]
fn revoke_killed_mid_batch_converges() {
    for step in [
        "map.apply.after_first_write",
        "revoke.after_write",
        "revoke.after_counters",
    ] {
        let (env, cg) =
            TestEnv::with_attached("crash-revoke", "c", &["c 1:5 r", "c 1:7 r", "c 1:8 r"]);
        let args = ["revoke", s(&cg), "c 1:7", "c 1:8"];
        env.crash_at(step, &args);
        assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
        assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
        list_matches_kernel(&env, &cg);
        // A plain re-run either finishes or names the rule already gone;
        // with --missing-ok it always finishes.
        let again = env.ctdev(&args);
        if again.code != 0 {
            assert!(
                again.stderr.contains("not in the policy"),
                "{step}: {again:?}"
            );
            assert!(again.stderr.contains("--missing-ok"), "{step}: {again:?}");
            env.ok(&["revoke", s(&cg), "--missing-ok", "c 1:7", "c 1:8"]);
        }
        assert_eq!(listed_rules(&env, &cg).unwrap().1, ["c 1:5 r"], "{step}");
        list_matches_kernel(&env, &cg);
    }
}

#[test]
fn detach_killed_at_every_step_converges() {
    for step in [
        // The pin is gone, the link not yet detached: closing the killed
        // process's fd, the link's last reference, detached it.
        "detach.after_unpin",
        "detach.after_link_detach",
        "detach.after_entries",
        "detach.after_counters",
    ] {
        let (env, cg) = TestEnv::with_attached("crash-detach", "c", &["c 1:5 r"]);
        env.crash_at(step, &["detach", s(&cg)]);
        // The program is off (the user asked for that), and list says so.
        assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
        if let Some((state, _)) = listed_rules(&env, &cg) {
            assert_eq!(state, "detached", "{step}");
        }
        list_matches_kernel(&env, &cg);
        // Re-running finishes (or says there is nothing left) and leaves nothing pinned.
        let again = env.ctdev(&["detach", s(&cg)]);
        assert!(
            again.code == 0 || again.stderr.contains("not under ctdev policy"),
            "{step}: {again:?}"
        );
        assert!(!env.pin_root.exists(), "{step}: pins left behind");
    }
}

#[test]
fn takeover_killed_never_leaves_the_container_without_a_program() {
    for step in [
        "attach.after_rules",
        "attach.after_link_create",
        "takeover.after_attach",
        "takeover.after_keep",
        "takeover.after_detach_runtime",
    ] {
        let env = TestEnv::new("crash-takeover");
        let cg = env.cgroup("c");
        // The "runtime": denies c 10:229, allows the rest; its rules: c 1:5
        // r only (plus runc's defaults, which a plain config.json gets).
        let runtime = ForeignProgram::deny_char(&cg, 10, 229);
        let fuse = env.node("fuse", DeviceType::Char, 10, 229);
        let fuse = fuse.to_str().unwrap();
        let config = env.scratch.join("config.json");
        std::fs::write(
            &config,
            r#"{"linux":{"resources":{"devices":[{"allow":false,"access":"rwm"},
               {"allow":true,"type":"c","major":1,"minor":5,"access":"r"}]}}}"#,
        )
        .unwrap();
        let args = ["attach", s(&cg), "--takeover", "--import", s(&config)];
        env.crash_at(step, &args);
        // Some program still decides: 10:229 is denied throughout.
        assert_denied(&env, &cg, ProbeOp::read(fuse));
        env.ok(&args);
        assert_denied(&env, &cg, ProbeOp::read(fuse));
        assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
        assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
        let rules = listed_rules(&env, &cg).unwrap().1;
        assert!(rules.iter().any(|r| r == "c 1:5 rwm"), "{step}: {rules:?}");
        let dump = env.list_json();
        let others = &dump["containers"][0]["other_programs"];
        assert!(
            !others
                .to_string()
                .contains(&format!("\"id\":{}", runtime.id)),
            "{step}: runtime program {} still attached: {others}",
            runtime.id
        );
        list_matches_kernel(&env, &cg);
    }
}

#[test]
fn add_and_del_killed_at_every_step_converge() {
    for step in [
        "add.after_nodes",
        "add.after_rules",
        "node.after_tmp_node",
        "del.after_revoke",
        "del.after_nodes",
    ] {
        let env = TestEnv::new("crash-add");
        let c = TestContainer::attached(&env, "c");
        let zero = env.node("zero", DeviceType::Char, 1, 5);
        // An older node at DEST, so `add` replaces it (temporary node + rename).
        nix::sys::stat::mknod(
            &c.host_path("/dev/z"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 7),
        )
        .unwrap();
        let add = ["add", c.cgroup_str(), zero.to_str().unwrap(), "/dev/z"];
        let del = ["del", c.cgroup_str(), zero.to_str().unwrap(), "/dev/z"];
        if step.starts_with("del.") {
            env.ok(&add);
            env.crash_at(step, &del);
            // Access is closed first: a node left behind is denied.
            if node_numbers(&c.host_path("/dev/z")).is_some() {
                assert!(c.open_rw("/dev/z").is_err(), "{step}");
            }
            let again = env.ctdev(&del);
            assert!(
                again.code == 0 || again.stderr.contains("was not added"),
                "{step}: {again:?}"
            );
            // The node add replaced (1:7) is back.
            assert!(
                node_numbers(&c.host_path("/dev/z")) == Some((1, 7)),
                "{step}: {:?} {:?} {}",
                node_numbers(&c.host_path("/dev/z")),
                again,
                c.listing("/dev")
            );
            assert_eq!(
                listed_rules(&env, &c.cgroup).unwrap().1,
                Vec::<String>::new()
            );
        } else {
            env.crash_at(step, &add);
            // Never a rule for anything but 1:5.
            let rules = listed_rules(&env, &c.cgroup).unwrap().1;
            assert!(rules.iter().all(|r| r == "c 1:5 rwm"), "{step}: {rules:?}");
            env.ok(&add);
            assert_eq!(node_numbers(&c.host_path("/dev/z")), Some((1, 5)), "{step}");
            assert_eq!(listed_rules(&env, &c.cgroup).unwrap().1, ["c 1:5 rwm"]);
            c.open_rw("/dev/z").expect("added node opens");
            // No temporary node is left behind.
            let litter: Vec<_> = std::fs::read_dir(c.host_path("/dev"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".ctdev"))
                .collect();
            assert!(litter.is_empty(), "{step}: {litter:?}");
        }
        list_matches_kernel(&env, &c.cgroup);
    }
}
