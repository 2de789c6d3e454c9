//! `ctdev attach --takeover` against real runtimes: LXC and runc attach
//! their own device programs; ctdev imports their rules, replaces their
//! programs, and `ctdev add`/`del` then work inside the containers.

use ctdev_tests::foreign::ForeignProgram;
use ctdev_tests::runtimes::{LxcContainer, RuncContainer};
use ctdev_tests::*;

/// Whether `dev` is a char device inside and `open(dev, O_RDWR)` succeeds,
/// via the container's shell.
fn opens(exec: impl Fn(&[&str]) -> std::process::Output, dev: &str) -> bool {
    // `<>` alone would create a regular file where no node exists.
    let o = exec(&[
        "/bin/sh",
        "-c",
        &format!("[ -c {dev} ] && exec 3<>{dev} && echo opened"),
    ]);
    String::from_utf8_lossy(&o.stdout).contains("opened")
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).expect("ctdev prints JSON")
}

#[test]
fn lxc_takeover_keeps_lxc_rules_and_add_del_work() {
    let env = TestEnv::new("lxc-takeover");
    let c = LxcContainer::start("tk");
    let exec = |cmd: &[&str]| c.exec(cmd);
    let target = format!("lxc:{}", c.name);
    assert!(opens(exec, "/dev/null"), "LXC allows /dev/null");

    // Without takeover, LXC's own program still decides: ctdev says so,
    // and a device ctdev adds stays denied.
    let r = env.ctdev(&["attach", &target]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("also decides") && r.stderr.contains("--takeover"),
        "{}",
        r.stderr
    );
    let r = env.ctdev(&["add", &target, "/dev/loop-control"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning"),
        "add warns about LXC's program: {}",
        r.stderr
    );
    assert!(
        !opens(exec, "/dev/loop-control"),
        "LXC's program denies what ctdev allows"
    );

    let report = json(&env.ok(&[
        "--json",
        "attach",
        &target,
        "--takeover",
        "--lxcpath",
        s(&c.lxcpath),
    ]));
    assert_eq!(report["format"], "lxc");
    assert_eq!(report["source"], s(&c.config_path()));
    assert_eq!(report["detached"].as_array().unwrap().len(), 1, "{report}");
    assert!(
        report["imported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "c 1:3 rwm"),
        "{report}"
    );
    // Only ctdev decides now: the added device works, and what LXC granted still does.
    let dump = env.list_json();
    assert_eq!(
        dump["containers"][0]["other_programs"],
        serde_json::json!([])
    );
    assert!(
        opens(exec, "/dev/loop-control"),
        "works once LXC's program is replaced"
    );
    assert!(opens(exec, "/dev/null"));
    assert!(opens(exec, "/dev/zero"));

    env.ok(&["del", &target, "/dev/loop-control"]);
    assert!(!opens(exec, "/dev/loop-control"), "gone after del");
    env.ok(&["add", &target, "/dev/loop-control"]);
    assert!(
        opens(exec, "/dev/loop-control"),
        "the added device works inside at once"
    );
    env.ok(&["del", &target, "/dev/loop-control"]);
    assert!(!opens(exec, "/dev/loop-control"));
    assert!(
        opens(exec, "/dev/null"),
        "LXC's rules keep working throughout"
    );
}

#[test]
fn runc_takeover_keeps_runc_rules_and_add_del_work() {
    let env = TestEnv::new("runc-takeover");
    let c = RuncContainer::start("tk", None);
    let exec = |cmd: &[&str]| c.exec(cmd);
    let cg = c.cgroup_dir();
    assert!(opens(exec, "/dev/null"));
    assert!(!opens(exec, "/dev/loop-control"));

    let report = json(&env.ok(&[
        "--json",
        "attach",
        s(&cg),
        "--takeover",
        "--runtime-root",
        s(&c.state_root()),
    ]));
    assert_eq!(report["format"], "runc-state");
    assert_eq!(report["detached"].as_array().unwrap().len(), 1, "{report}");
    assert!(opens(exec, "/dev/null"));

    env.ok(&["add", s(&cg), "/dev/loop-control"]);
    assert!(opens(exec, "/dev/loop-control"));
    env.ok(&["del", s(&cg), "/dev/loop-control"]);
    assert!(!opens(exec, "/dev/loop-control"));
    assert!(
        opens(exec, "/dev/zero"),
        "runc's rules keep working throughout"
    );
}

#[test]
fn takeover_with_an_oci_config_replaces_a_foreign_program() {
    let env = TestEnv::new("import");
    let cg = env.cgroup("c");
    let _foreign = ForeignProgram::deny_char(&cg, 1, 5);
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    let config = env.scratch.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"linux": {"resources": {"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "r"}
        ]}}})
        .to_string(),
    )
    .unwrap();
    let report = json(&env.ok(&[
        "--json",
        "attach",
        s(&cg),
        "--takeover",
        "--import",
        s(&config),
    ]));
    assert_eq!(report["format"], "oci");
    assert_eq!(report["semantics"], "runc");
    // A plain config.json gets runc's default devices after its rules, as
    // runc gives them: /dev/null rwm, /dev/zero rwm, mknod of anything.
    let imported: Vec<&str> = report["imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in [
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 10:229 rm",
        "c *:* m",
        "b *:* m",
    ] {
        assert!(imported.contains(&want), "{want} missing: {imported:?}");
    }
    assert_eq!(report["detached"][0]["name"], "foreign_dev");
    assert_allowed(&env, &cg, ProbeOp::read_write("/dev/zero"));
    assert_allowed(&env, &cg, ProbeOp::read_write("/dev/null"));
    let fuse = env.node("fuse", DeviceType::Char, 10, 229);
    assert_not_denied(&env, &cg, ProbeOp::read(fuse.to_str().unwrap()));
    assert_denied(&env, &cg, ProbeOp::write(fuse.to_str().unwrap()));
    let other = env.node("other", DeviceType::Char, 10, 1);
    assert_denied(&env, &cg, ProbeOp::read(other.to_str().unwrap()));
}

#[test]
fn takeover_without_a_rule_source_changes_nothing() {
    let env = TestEnv::new("takeover-nosource");
    let cg = env.cgroup("c");
    let _foreign = ForeignProgram::deny_char(&cg, 1, 5);
    let err = env.fails(&[
        "attach",
        s(&cg),
        "--takeover",
        "--runtime-root",
        s(&env.scratch),
    ]);
    assert!(
        err.contains("cannot find the runtime's device rules") && err.contains("--import"),
        "{err}"
    );
    assert!(!env.pin_root.exists(), "nothing was attached");
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    let bad = env.scratch.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"linux": {"resources": {"devices": [{"allow": true, "type": "q"}]}}}"#,
    )
    .unwrap();
    let err = env.fails(&["attach", s(&cg), "--takeover", "--import", s(&bad)]);
    assert!(err.contains("bad.json"), "{err}");
    assert!(!env.pin_root.exists());
}

#[test]
fn plain_attach_warns_about_other_programs() {
    let env = TestEnv::new("warn");
    let cg = env.cgroup("c");
    let foreign = ForeignProgram::deny_char(&cg, 1, 5);
    let r = env.ctdev(&["attach", s(&cg)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("device program {} (foreign_dev)", foreign.id))
            && r.stderr.contains("--takeover"),
        "{}",
        r.stderr
    );
    let dump = env.list_json();
    assert_eq!(dump["containers"][0]["other_programs"][0]["id"], foreign.id);
}

/// Issue #10 item 4: `detach` after a takeover gives the runtime's program
/// back (re-attached before ctdev's goes), so the container's access is
/// exactly the runtime's again; a second takeover + detach works too.
#[test]
fn detach_after_takeover_restores_the_runtime_program() {
    let env = TestEnv::new("takeover-restore");
    let c = RuncContainer::start("restore", None);
    let exec = |cmd: &[&str]| c.exec(cmd);
    let cg = c.cgroup_dir();
    let runc_programs = |env: &TestEnv| -> Vec<u64> {
        env.list_json()["containers"]
            .as_array()
            .map(|a| a.to_vec())
            .unwrap_or_default()
            .iter()
            .flat_map(|c| c["other_programs"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["id"].as_u64())
            .collect()
    };
    assert!(!opens(exec, "/dev/loop-control"), "runc denies it");
    for round in 0..2 {
        let report = json(&env.ok(&[
            "--json",
            "attach",
            s(&cg),
            "--takeover",
            "--runtime-root",
            s(&c.state_root()),
        ]));
        let kept = report["kept"].as_array().unwrap();
        assert_eq!(kept.len(), 1, "round {round}: {report}");
        let id = kept[0]["id"].as_u64().unwrap();
        assert!(
            runc_programs(&env).is_empty(),
            "runc's program is off the cgroup"
        );
        env.ok(&["add", s(&cg), "/dev/loop-control"]);
        assert!(opens(exec, "/dev/loop-control"), "ctdev allows it now");
        let out = env.ok(&["detach", s(&cg)]);
        assert!(out.contains("detached"), "{out}");
        // runc's program is back on the cgroup and decides alone.
        assert!(
            !opens(exec, "/dev/loop-control"),
            "round {round}: runc's rules again"
        );
        assert!(opens(exec, "/dev/null"), "round {round}");
        let out = std::process::Command::new("bpftool")
            .args(["-j", "cgroup", "show", s(&cg)])
            .output()
            .expect("bpftool");
        let shown: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON");
        let ids: Vec<u64> = shown
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .collect();
        assert_eq!(
            ids,
            [id],
            "round {round}: only runc's program {id} is attached again"
        );
        assert!(!env.pin_root.join("takeover").exists(), "kept pins dropped");
    }
}

/// Issue #10 item 4: a takeover with nothing to import (the runtime
/// attached no program; LXC's config has no device lines) starts from the
/// preset, honours `--preset`, and warns.
#[test]
fn takeover_with_nothing_to_import_starts_from_the_preset() {
    let env = TestEnv::new("takeover-preset");
    let cg = env.cgroup("c");
    let r = env.ctdev(&[
        "--json",
        "attach",
        s(&cg),
        "--takeover",
        "--runtime-root",
        s(&env.scratch),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report = json(&r.stdout);
    assert!(
        report["started_from_preset"]
            .as_str()
            .is_some_and(|w| w.contains("preset oci")),
        "{report}"
    );
    assert_allowed(&env, &cg, ProbeOp::read_write("/dev/null"));
    let loopc = env.node("loopc", DeviceType::Char, 10, 237);
    assert_denied(&env, &cg, ProbeOp::read(loopc.to_str().unwrap()));
    env.ok(&["detach", s(&cg)]);

    let r = env.ctdev(&[
        "attach",
        s(&cg),
        "--takeover",
        "--preset",
        "none",
        "--runtime-root",
        s(&env.scratch),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("preset none"),
        "{}",
        r.stderr
    );
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
}
