//! `ctdev attach --takeover` against real runtimes: LXC and runc attach
//! their own device programs; ctdev imports their rules, replaces their
//! programs, and `ctdev add`/`del` then work inside the containers.

use std::path::Path;

use ctdev_tests::foreign::ForeignProgram;
use ctdev_tests::runtimes::{LxcContainer, RuncContainer};
use ctdev_tests::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

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
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"}
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
    assert_eq!(
        report["imported"],
        serde_json::json!(["c 1:3 rw", "c 1:5 r"])
    );
    assert_eq!(report["detached"][0]["name"], "foreign_dev");
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cg, ProbeOp::write("/dev/zero"));
    assert_allowed(&env, &cg, ProbeOp::read_write("/dev/null"));
    assert_denied(&env, &cg, ProbeOp::read("/dev/full"));
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
