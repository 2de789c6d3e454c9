//! The enforcement core against the real kernel: real cgroups, the real
//! program, real open()/mknod() from processes inside the cgroups.

use ctdev_tests::*;

#[test]
fn preset_none_denies_everything() {
    let env = TestEnv::new("deny-all");
    let cg = env.cgroup("c");
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    env.ok(&["attach", s(&cg), "--preset", "none"]);
    for dev in ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"] {
        assert_denied(&env, &cg, ProbeOp::read(dev));
    }
}

#[test]
fn oci_preset_allows_the_default_devices_only() {
    let env = TestEnv::new("oci");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg)]);
    for dev in [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
    ] {
        assert_allowed(&env, &cg, ProbeOp::read_write(dev));
    }
    let tun = env.node("tun", DeviceType::Char, 10, 200);
    assert_denied(&env, &cg, ProbeOp::read_write(&tun));
    let kmsg = env.node("kmsg", DeviceType::Char, 1, 11);
    assert_denied(&env, &cg, ProbeOp::read(&kmsg));
    // runc's defaults allow mknod of anything.
    let p = env.fresh_path("made-by-mknod");
    assert_allowed(
        &env,
        &cg,
        ProbeOp::Mknod {
            path: p,
            dev_type: DeviceType::Char,
            major: 10,
            minor: 200,
        },
    );
}

#[test]
fn allow_takes_effect_at_once_and_revoke_takes_it_away() {
    let env = TestEnv::new("allow-revoke");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg), "--preset", "none"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    // Several words form one rule.
    env.ok(&["allow", s(&cg), "c", "1:5", "r"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cg, ProbeOp::write("/dev/zero"));
    // Widening ORs the bits in.
    env.ok(&["allow", s(&cg), "c 1:5 w"]);
    assert_allowed(&env, &cg, ProbeOp::read_write("/dev/zero"));
    env.ok(&["revoke", s(&cg), "c 1:5 w"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cg, ProbeOp::write("/dev/zero"));
    env.ok(&["revoke", s(&cg), "c 1:5"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
}

#[test]
fn device_path_rules_and_several_rules_in_one_command() {
    let env = TestEnv::new("path-rules");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg), "--preset", "none", "--rule", "/dev/null"]);
    assert_allowed(&env, &cg, ProbeOp::read_write("/dev/null"));
    env.ok(&["allow", s(&cg), "/dev/zero", "r", "c 1:7 rw"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cg, ProbeOp::write("/dev/zero"));
    assert_allowed(&env, &cg, ProbeOp::read_write("/dev/full"));
}

#[test]
fn wildcard_major_and_minor() {
    let env = TestEnv::new("wildcards");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg), "--preset", "none", "--rule", "c 1:* r"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cg, ProbeOp::write("/dev/zero"));
    let other_major = env.node("m10", DeviceType::Char, 10, 5);
    assert_denied(&env, &cg, ProbeOp::read(&other_major));

    let cg2 = env.cgroup("d");
    env.ok(&["attach", s(&cg2), "--preset", "none", "--rule", "c *:5 r"]);
    assert_allowed(&env, &cg2, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cg2, ProbeOp::read("/dev/null"));
    assert_not_denied(&env, &cg2, ProbeOp::read(&other_major));
}

#[test]
fn specific_entry_narrows_a_wildcard() {
    let env = TestEnv::new("narrow");
    let cg = env.cgroup("c");
    env.ok(&[
        "attach",
        s(&cg),
        "--preset",
        "none",
        "--rule",
        "c *:* rwm",
        "--rule",
        "c 1:3 ''",
    ]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    // Revoking cannot remove the narrowing entry: the wildcard would widen.
    env.ok(&["revoke", s(&cg), "c 1:3"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    // Allowing does.
    env.ok(&["allow", s(&cg), "c 1:3 r"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
}

#[test]
fn access_bits_are_checked_separately() {
    let env = TestEnv::new("subsets");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg), "--preset", "none", "--rule", "c 1:3 r"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    assert_denied(&env, &cg, ProbeOp::write("/dev/null"));
    assert_denied(&env, &cg, ProbeOp::read_write("/dev/null"));
    // access(F_OK) asks for no bits: allowed by any entry (runc#2796), denied without one.
    assert_allowed(
        &env,
        &cg,
        ProbeOp::Exists {
            path: "/dev/null".into(),
        },
    );
    assert_denied(
        &env,
        &cg,
        ProbeOp::Exists {
            path: "/dev/zero".into(),
        },
    );
}

#[test]
fn mknod_bit_controls_node_creation_only() {
    let env = TestEnv::new("mknod");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg), "--preset", "none"]);
    let mk = |name: &str| ProbeOp::Mknod {
        path: env.fresh_path(name),
        dev_type: DeviceType::Char,
        major: 1,
        minor: 3,
    };
    assert_denied(&env, &cg, mk("n1"));
    env.ok(&["allow", s(&cg), "c 1:3 m"]);
    assert_allowed(&env, &cg, mk("n2"));
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    // `a` covers block devices too.
    env.ok(&["allow", s(&cg), "a 7:* m"]);
    let blk = ProbeOp::Mknod {
        path: env.fresh_path("b1"),
        dev_type: DeviceType::Block,
        major: 7,
        minor: 0,
    };
    assert_allowed(&env, &cg, blk);
    let blk = ProbeOp::Mknod {
        path: env.fresh_path("b2"),
        dev_type: DeviceType::Block,
        major: 8,
        minor: 0,
    };
    assert_denied(&env, &cg, blk);
}

#[test]
fn nested_sub_cgroups_are_governed_by_the_container_policy() {
    let env = TestEnv::new("nested");
    let cg = env.cgroup("c");
    let child = env.cgroup("c/payload/init");
    env.ok(&["attach", s(&cg), "--preset", "none", "--rule", "c 1:5 r"]);
    assert_denied(&env, &child, ProbeOp::read("/dev/null"));
    assert_allowed(&env, &child, ProbeOp::read("/dev/zero"));
    env.ok(&["allow", s(&cg), "c 1:3 r"]);
    assert_allowed(&env, &child, ProbeOp::read("/dev/null"));
}

#[test]
fn two_containers_do_not_affect_each_other() {
    let env = TestEnv::new("two");
    let a = env.cgroup("a");
    let b = env.cgroup("b");
    env.ok(&["attach", s(&a), "--preset", "none", "--rule", "c 1:3 rw"]);
    env.ok(&["attach", s(&b), "--preset", "none", "--rule", "c 1:5 rw"]);
    assert_allowed(&env, &a, ProbeOp::read("/dev/null"));
    assert_denied(&env, &a, ProbeOp::read("/dev/zero"));
    assert_allowed(&env, &b, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &b, ProbeOp::read("/dev/null"));
    env.ok(&["revoke", s(&a), "c 1:3"]);
    assert_denied(&env, &a, ProbeOp::read("/dev/null"));
    assert_allowed(&env, &b, ProbeOp::read("/dev/zero"));
    env.ok(&["detach", s(&a)]);
    assert_allowed(&env, &a, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &b, ProbeOp::read("/dev/null"));
}

#[test]
fn policy_outlives_ctdev_and_reattach_adopts_it() {
    let env = TestEnv::new("persist");
    let cg = env.cgroup("c");
    let out = env.ok(&[
        "--json",
        "attach",
        s(&cg),
        "--preset",
        "none",
        "--rule",
        "c 1:3 r",
    ]);
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["already_attached"], false);
    // Every ctdev process above has exited; the pinned link keeps enforcing.
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    let out = env.ok(&["attach", s(&cg), "--preset", "none", "--rule", "c 1:3 r"]);
    assert!(out.contains("already attached"), "{out}");
    // Another policy (here the default preset) is refused: allow/revoke change it.
    let err = env.fails(&["attach", s(&cg), "--rule", "c 1:5 r"]);
    assert!(err.contains("ctdev allow"), "{err}");
    env.ok(&["allow", s(&cg), "c 1:5 r"]);
    let out = env.ok(&[
        "--json",
        "attach",
        s(&cg),
        "--preset",
        "none",
        "--rule",
        "c 1:3 r",
    ]);
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["already_attached"], true);
    assert_eq!(
        again["program_id"], first["program_id"],
        "same program adopted"
    );
    // The second attach did not apply the OCI preset over the existing policy.
    assert_denied(&env, &cg, ProbeOp::read("/dev/full"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    let dump = env.list_json();
    assert_eq!(dump["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn detach_restores_access_and_leaves_nothing_pinned() {
    let env = TestEnv::new("detach");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg), "--preset", "none"]);
    assert!(env.pin_root.join("CTDEV_POLICY").exists());
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    let out = env.ok(&["detach", s(&cg)]);
    assert!(out.contains("detached"), "{out}");
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    assert!(
        !env.pin_root.exists(),
        "pin root left behind: {:?}",
        std::fs::read_dir(&env.pin_root).map(|d| d.count())
    );
    // Detaching again is a clear error.
    let err = env.fails(&["detach", s(&cg)]);
    assert!(err.contains("not under ctdev policy"), "{err}");
}

#[test]
fn pid_and_relative_targets() {
    let env = TestEnv::new("targets");
    let cg = env.cgroup("c");
    let parked = Parked::in_cgroup(&cg);
    let pid_target = format!("pid:{}", parked.pid());
    env.ok(&["attach", &pid_target, "--preset", "none"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    // Relative to the cgroup2 mount, and as /proc/PID/cgroup shows it.
    let rel = format!("{}/c", env.name);
    env.ok(&["allow", &rel, "c 1:3 r"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    let hier = format!("/{}/c", env.name);
    env.ok(&["revoke", &hier, "c 1:3 r"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    let dump = env.list_json();
    assert_eq!(dump["containers"][0]["cgroup"], hier);
}

#[test]
fn list_json_is_the_documented_audit_format() {
    let env = TestEnv::new("list");
    let cg = env.cgroup("c");
    env.ok(&[
        "attach",
        s(&cg),
        "--preset",
        "none",
        "--rule",
        "c 1:3 rw",
        "--rule",
        "c 136:* rwm",
        "--rule",
        "a *:* m",
    ]);
    let dump = env.list_json();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["pin_root"], s(&env.pin_root));
    assert_eq!(dump["policy_map"]["entries"], 4);
    assert!(dump["policy_map"]["map_id"].as_u64().unwrap() > 0);
    let c = &dump["containers"][0];
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg).unwrap());
    assert_eq!(c["policy_id"], cgroup_id);
    assert_eq!(c["cgroup_id"], cgroup_id);
    assert_eq!(c["cgroup_dir"], s(&cg));
    assert_eq!(c["cgroup"], format!("/{}/c", env.name));
    assert_eq!(c["state"], "enforcing");
    assert!(c["program_id"].as_u64().unwrap() > 0);
    assert!(c["link_id"].as_u64().unwrap() > 0);
    assert_eq!(
        c["link_pin"],
        s(&env.pin_root.join("links").join(cgroup_id.to_string()))
    );
    let rules: Vec<&str> = c["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["b *:* m", "c 1:3 rw", "c 136:* rwm", "c *:* m"]);
    let null = &c["rules"][1];
    assert_eq!(null["type"], "c");
    assert_eq!(null["major"], 1);
    assert_eq!(null["minor"], 3);
    assert_eq!(null["access"], "rw");
    assert_eq!(null["devices"], serde_json::json!(["/dev/null"]));
    assert_eq!(c["rules"][0]["major"], "*");
    // The text dump names the device too.
    let text = env.ok(&["list", s(&cg)]);
    assert!(
        text.contains("c 1:3 rw") && text.contains("/dev/null"),
        "{text}"
    );
}

#[test]
fn bad_input_fails_clearly_and_changes_nothing() {
    let env = TestEnv::new("bad-input");
    let cg = env.cgroup("c");
    let other = env.cgroup("not-attached");
    env.ok(&["attach", s(&cg), "--preset", "none", "--rule", "c 1:3 r"]);
    let before = env.list_json();

    let missing = env.cgroup_parent.join("missing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["allow", s(&cg), "c x:1 rw"],
            "invalid major \"x\" in rule \"c x:1 rw\"",
        ),
        (
            vec!["allow", s(&cg), "c 1:5 r", "c 1:7 rz"],
            "invalid access \"rz\"",
        ),
        (vec!["allow", s(&cg), "q 1:5 r"], "invalid type \"q\""),
        (
            vec!["allow", s(&cg), "/nonexistent/dev r"],
            "/nonexistent/dev",
        ),
        (vec!["allow", s(&missing), "c 1:5 r"], "does not exist"),
        (
            vec!["allow", s(&other), "c 1:5 r"],
            "not under ctdev policy",
        ),
        (vec!["revoke", s(&cg), "c 1:5 r"], "not in the policy"),
        (
            vec!["revoke", s(&cg), "c 1:3 r", "c 1:9"],
            "not in the policy",
        ),
        (vec!["allow", "pid:abc", "c 1:5 r"], "invalid pid"),
        (vec!["allow", "pid:999999999", "c 1:5 r"], "pid 999999999"),
        (vec!["attach", s(&missing)], "does not exist"),
        (
            vec!["attach", s(&cg), "--rule", "c 1:99999999 r"],
            "invalid minor",
        ),
        (vec!["detach", s(&other)], "not under ctdev policy"),
        (
            vec!["allow", "../../etc", "c 1:5 r"],
            "leaves the cgroup2 hierarchy",
        ),
    ];
    for (args, want) in cases {
        let err = env.fails(&args);
        assert!(
            err.contains(want),
            "ctdev {args:?}: expected {want:?} in:\n{err}"
        );
        assert_eq!(env.list_json(), before, "ctdev {args:?} changed the policy");
    }
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    assert_allowed(&env, &other, ProbeOp::read("/dev/zero"));
}

#[test]
fn removed_cgroup_shows_defunct_and_detaches_by_id() {
    let env = TestEnv::new("defunct");
    let cg = env.cgroup("c");
    let out = env.ok(&["--json", "attach", s(&cg), "--preset", "none"]);
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["policy_id"]
        .as_u64()
        .unwrap();
    std::fs::remove_dir(&cg).unwrap();
    let dump = env.list_json();
    assert_eq!(dump["containers"][0]["state"], "defunct");
    assert_eq!(dump["containers"][0]["cgroup"], serde_json::Value::Null);
    env.ok(&["detach", &format!("id:{id}")]);
    assert!(!env.pin_root.exists());
}

#[test]
fn nested_containers_are_each_judged_by_their_own_policy() {
    let env = TestEnv::new("nested-policies");
    let outer = env.cgroup("outer");
    let inner = env.cgroup("outer/inner");
    let beside = env.cgroup("outer/beside");
    env.ok(&["attach", s(&outer), "--preset", "none", "--rule", "c 1:3 r"]);
    env.ok(&[
        "attach",
        s(&inner),
        "--preset",
        "none",
        "--rule",
        "c 1:3 r",
        "--rule",
        "c 1:5 r",
    ]);
    // Both programs run for the inner container: each asks its own policy.
    assert_allowed(&env, &inner, ProbeOp::read("/dev/null"));
    assert_denied(&env, &inner, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &beside, ProbeOp::read("/dev/zero"));
    env.ok(&["allow", s(&outer), "c 1:5 r"]);
    assert_allowed(&env, &inner, ProbeOp::read("/dev/zero"));
    assert_allowed(&env, &beside, ProbeOp::read("/dev/zero"));
    env.ok(&["revoke", s(&inner), "c 1:5"]);
    assert_denied(&env, &inner, ProbeOp::read("/dev/zero"));
    assert_allowed(&env, &beside, ProbeOp::read("/dev/zero"));
    // Different depths: the per-container layout has a program instance
    // per container; the shared layout one program attached at both, each
    // attachment with its own policy. Either way the outer container's
    // attachment is listed as another program deciding for the inner one.
    let dump = env.list_json();
    let find = |cg: &std::path::Path| {
        dump["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cgroup_dir"].as_str() == cg.to_str())
            .unwrap_or_else(|| panic!("{} not listed: {dump}", cg.display()))
            .clone()
    };
    let (o, i) = (find(&outer), find(&inner));
    match (o["layout"].as_str(), i["layout"].as_str()) {
        (Some("per_container"), Some("per_container")) => {
            assert_ne!(o["program_id"], i["program_id"], "{dump}")
        }
        (Some("shared"), Some("shared")) => {
            assert_eq!(o["program_id"], i["program_id"], "{dump}")
        }
        (a, b) => panic!("layouts {a:?} / {b:?}: {dump}"),
    }
    let others = i["other_programs"].as_array().unwrap();
    assert!(
        others
            .iter()
            .any(|p| p["id"] == o["program_id"] && p["attached_at"] == o["cgroup"]),
        "the outer container's program decides for the inner one: {dump}"
    );
    assert!(
        others.iter().all(|p| p["attached_at"] != i["cgroup"]),
        "its own attachment is not another program: {dump}"
    );
}

#[test]
fn containers_at_one_depth_have_their_own_programs_and_detach_leaves_no_pin() {
    let env = TestEnv::new("shared-program");
    let cgs: Vec<_> = (0..5).map(|i| env.cgroup(&format!("c{i}"))).collect();
    for (i, cg) in cgs.iter().enumerate() {
        env.ok(&[
            "attach",
            s(cg),
            "--preset",
            "none",
            "--rule",
            &format!("c 1:{} r", [3, 5, 7, 8, 9][i]),
        ]);
    }
    let dump = env.list_json();
    let containers = dump["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 5, "{dump}");
    let ids: std::collections::BTreeSet<u64> = containers
        .iter()
        .map(|c| c["program_id"].as_u64().unwrap())
        .collect();
    let layouts: std::collections::BTreeSet<&str> = containers
        .iter()
        .map(|c| c["layout"].as_str().unwrap())
        .collect();
    let tables = std::fs::read_dir(env.pin_root.join("tables"))
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    match layouts.into_iter().collect::<Vec<_>>()[..] {
        // One program instance per container, each with its own rule table.
        ["per_container"] => {
            assert_eq!(ids.len(), 5, "one program instance per container: {dump}");
            assert_eq!(tables, 5);
        }
        // One program for all, each container's policy in its own storage.
        ["shared"] => {
            assert_eq!(ids.len(), 1, "one shared program: {dump}");
            assert_eq!(tables, 0);
        }
        ref l => panic!("layouts {l:?}: {dump}"),
    }
    // Either way each container lists its own rule, and none of the others
    // (same depth: nothing else decides for it).
    for (i, cg) in cgs.iter().enumerate() {
        let c = containers
            .iter()
            .find(|c| c["cgroup_dir"].as_str() == cg.to_str())
            .unwrap();
        assert_eq!(c["rules"].as_array().unwrap().len(), 1, "{dump}");
        assert_eq!(
            c["rules"][0]["rule"],
            format!("c 1:{} r", [3, 5, 7, 8, 9][i]),
            "{dump}"
        );
        assert_eq!(c["other_programs"], serde_json::json!([]), "{dump}");
    }
    assert_allowed(&env, &cgs[0], ProbeOp::read("/dev/null"));
    assert_denied(&env, &cgs[0], ProbeOp::read("/dev/zero"));
    assert_allowed(&env, &cgs[1], ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cgs[1], ProbeOp::read("/dev/null"));
    // Detaching one leaves the others enforced by their own programs.
    env.ok(&["detach", s(&cgs[0])]);
    assert_allowed(&env, &cgs[0], ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cgs[1], ProbeOp::read("/dev/null"));
    for cg in &cgs[1..] {
        env.ok(&["detach", s(cg)]);
    }
    assert!(
        !env.pin_root.exists(),
        "program, map and link pins are all gone"
    );
}

#[test]
fn a_foreign_program_pinned_where_ctdevs_belongs_is_refused() {
    let env = TestEnv::new("foreign-program-pin");
    let a = env.cgroup("a");
    let b = env.cgroup("b");
    env.ok(&["attach", s(&a), "--preset", "none"]);
    env.ok(&["detach", s(&a)]);
    // Plant a non-ctdev program where b's link (its own program's
    // attachment) belongs.
    let stranger = env.cgroup("stranger");
    let foreign = ctdev_tests::foreign::ForeignProgram::deny_char(&stranger, 1, 5);
    std::fs::create_dir_all(env.pin_root.join("links")).unwrap();
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&b).unwrap());
    let planted = env.pin_root.join("links").join(id.to_string());
    foreign.pin(&planted);
    let err = env.fails(&["attach", s(&b), "--preset", "none"]);
    assert!(err.contains("is not a ctdev"), "{err}");
    assert!(planted.exists(), "the foreign pin is left alone");
    assert_allowed(&env, &b, ProbeOp::read("/dev/null"));
    std::fs::remove_file(&planted).unwrap();
}
