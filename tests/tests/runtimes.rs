//! Runtime resolvers and rule import against real LXC and runc containers.

use std::collections::BTreeMap;
use std::path::Path;

use ctdev::cgroup::CgroupFs;
use ctdev::import::{
    effective_rules, from_lxc_config, from_oci_config, from_runc_state, translate, Semantics,
};
use ctdev::rule::Rule;
use ctdev::runtimes::{self, lxc};
use ctdev::target::RuntimeKind;
use ctdev_common::{evaluate, PolicyKey, ACCESS_READ, ACCESS_WRITE, DEV_BLOCK, DEV_CHAR};
use ctdev_tests::runtimes::{LxcContainer, RuncContainer};
use ctdev_tests::TestEnv;

/// One device access tried from inside a container.
#[derive(Debug, Clone, Copy)]
struct Case {
    dev_type: char,
    major: u32,
    minor: u32,
    write: bool,
}

const fn case(dev_type: char, major: u32, minor: u32, write: bool) -> Case {
    Case {
        dev_type,
        major,
        minor,
        write,
    }
}

const CASES: [Case; 14] = [
    case('c', 1, 3, false),
    case('c', 1, 3, true),
    case('c', 1, 5, false),
    case('c', 1, 5, true),
    case('c', 10, 229, false),
    case('c', 10, 229, true),
    case('c', 10, 201, false),
    case('c', 1, 11, false),
    case('c', 136, 7, true),
    case('c', 4, 64, false),
    case('b', 7, 0, false),
    case('b', 7, 0, true),
    case('b', 7, 1, false),
    case('b', 8, 0, false),
];

/// Which of `cases` the container's device programs deny (EPERM on open),
/// found with one shell script run by `exec`.
fn kernel_denies(exec: impl Fn(&[&str]) -> std::process::Output, cases: &[Case]) -> Vec<bool> {
    let mut script = String::from("mkdir -p /tmp; ");
    for (i, c) in cases.iter().enumerate() {
        let redir = if c.write { ">" } else { "<" };
        script.push_str(&format!(
            "echo @{i}; rm -f /tmp/ctdev-n; mknod /tmp/ctdev-n {} {} {} || echo MKNOD-FAILED; \
             ( : {redir} /tmp/ctdev-n ) 2>&1; ",
            c.dev_type, c.major, c.minor
        ));
    }
    script.push_str("rm -f /tmp/ctdev-n; echo @end");
    let out = exec(&["sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("@end") && !text.contains("MKNOD-FAILED"),
        "probe script failed: {}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (0..cases.len())
        .map(|i| {
            let start = text.find(&format!("@{i}\n")).expect("marker");
            let rest = &text[start..];
            let chunk = &rest[..rest[1..].find('@').map_or(rest.len(), |e| e + 1)];
            chunk.contains("not permitted")
        })
        .collect()
}

/// What ctdev's lookup decides for `cases` under `rules`.
fn ctdev_denies(rules: &[Rule], cases: &[Case]) -> Vec<bool> {
    let map: BTreeMap<PolicyKey, u32> = rules
        .iter()
        .flat_map(|r| r.keys(1).map(move |k| (k, r.access.bits())))
        .collect();
    cases
        .iter()
        .map(|c| {
            let t = if c.dev_type == 'b' {
                DEV_BLOCK
            } else {
                DEV_CHAR
            };
            let req = if c.write { ACCESS_WRITE } else { ACCESS_READ };
            !evaluate(1, t, c.major, c.minor, req, |k| map.get(k).copied()).allowed
        })
        .collect()
}

fn texts(rules: &[Rule]) -> Vec<String> {
    rules.iter().map(|r| r.to_string()).collect()
}

/// Asserts the imported `rules` hold each of `wants` and decide every one of
/// [`CASES`] as `who`'s program does in the container (`exec` runs there).
/// Returns the rules as text.
#[track_caller]
fn assert_imported(
    who: &str,
    rules: &[Rule],
    wants: &[&str],
    exec: impl Fn(&[&str]) -> std::process::Output,
) -> Vec<String> {
    let got = texts(rules);
    for want in wants {
        assert!(got.iter().any(|r| r == want), "{want} missing from {got:?}");
    }
    assert_eq!(
        kernel_denies(exec, &CASES),
        ctdev_denies(rules, &CASES),
        "{who}'s program and the imported rules disagree on {CASES:?}\nrules: {got:?}"
    );
    got
}

#[test]
fn lxc_container_resolves_to_its_payload_cgroup() {
    let c = LxcContainer::start("lxc-find");
    let fs = CgroupFs::discover().expect("cgroup2");
    let payload = c.payload_cgroup();
    assert_eq!(
        payload.file_name().and_then(|n| n.to_str()),
        Some(format!("lxc.payload.{}", c.name).as_str())
    );
    for runtime in [Some(RuntimeKind::Lxc), None] {
        let found = runtimes::find(&fs, runtime, &c.name).expect("find");
        assert_eq!(found.len(), 1, "{runtime:?}: {found:?}");
        assert_eq!(found[0].runtime, RuntimeKind::Lxc);
        assert_eq!(found[0].name, c.name);
        assert_eq!(found[0].cgroup.dir, payload);
    }
    // Full names only.
    let prefix = &c.name[..c.name.len() - 1];
    assert!(runtimes::find(&fs, Some(RuntimeKind::Lxc), prefix)
        .expect("find")
        .is_empty());
    // The init: from lxc-info, and from the payload cgroup.
    assert_eq!(lxc::init_pid(&c.name, Some(&c.lxcpath)), Some(c.init_pid()));
    assert_eq!(
        runtimes::oldest_process(payload).expect("oldest"),
        Some(c.init_pid())
    );
    assert_eq!(
        lxc::init_pid(&c.name, None),
        None,
        "not in the default lxcpath"
    );
}

#[test]
fn lxc_attached_processes_are_in_the_container_cgroup() {
    let c = LxcContainer::start("lxc-attach");
    let out = c.exec(&["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo started"]);
    assert!(out.status.success(), "{out:?}");
    // On the host, the sleep is somewhere in the payload cgroup's tree.
    let mut stack = vec![c.payload_cgroup().to_path_buf()];
    let mut found = None;
    while let Some(dir) = stack.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmd.starts_with(b"sleep\x00300") {
                found = Some(dir.clone());
            }
        }
        for e in std::fs::read_dir(&dir).expect("read cgroup").flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
    }
    let dir = found.expect("the attached process is in the payload cgroup tree");
    assert!(dir.starts_with(c.payload_cgroup()), "{}", dir.display());
}

#[test]
fn lxc_config_import_matches_what_lxc_enforces() {
    let c = LxcContainer::start("lxc-import");
    let specs = from_lxc_config(&c.config_path()).expect("import LXC config");
    let rules = translate(Semantics::Lxc, &specs).expect("LXC rules").rules;
    let wants = [
        "b *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
        "c 10:229 rwm",
        "c *:* m",
    ];
    let got = assert_imported("LXC", &rules, &wants, |cmd| c.exec(cmd));
    assert!(!got.iter().any(|r| r.starts_with("c 10:200")), "{got:?}");
}

#[test]
fn ctdev_attaches_to_an_lxc_container_by_name() {
    let c = LxcContainer::start("lxc-cli");
    let env = TestEnv::new("lxc-cli");
    env.ok(&["attach", &format!("lxc:{}", c.name), "--preset", "oci"]);
    let list = env.list_json();
    let containers = list["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{list}");
    assert_eq!(
        containers[0]["cgroup_dir"].as_str().map(Path::new),
        Some(c.payload_cgroup()),
        "{list}"
    );
    // A bare name works too and finds the same container.
    let stdout = env.ok(&["list", &c.name, "--json"]);
    assert!(
        stdout.contains(&format!("lxc.payload.{}", c.name)),
        "{stdout}"
    );
    // Both programs judge now: ctdev's OCI preset denies 10:229 (fuse),
    // which LXC allows; both allow 1:3.
    let denied = kernel_denies(
        |cmd| c.exec(cmd),
        &[case('c', 10, 229, false), case('c', 1, 3, false)],
    );
    assert_eq!(denied, [true, false]);
}

fn runc_rules() -> serde_json::Value {
    serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        {"allow": true, "type": "b", "major": 7, "access": "r"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "r"},
        {"allow": false, "type": "c", "major": 1, "minor": 5, "access": "w"}
    ])
}

#[test]
fn runc_state_rules_are_the_config_rules_plus_defaults() {
    let c = RuncContainer::start("runc-state", Some(runc_rules()));
    let from_config = from_oci_config(&c.config_path()).expect("import config.json");
    assert_eq!(from_config.len(), 5);
    let from_state = from_runc_state(&c.state_json_path()).expect("import state.json");
    assert_eq!(
        from_state[..from_config.len()],
        from_config[..],
        "state.json starts with the config's rules"
    );
    // Then runc's defaults: allows only.
    let defaults = &from_state[from_config.len()..];
    assert!(
        !defaults.is_empty() && defaults.iter().all(|s| s.allow),
        "{defaults:?}"
    );
    let rules = effective_rules(&from_state).expect("runc accepted these rules");
    // runc's default c 1:5 rwm comes after our deny of w.
    let wants = [
        "b 7:* rm",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 10:229 rm",
        "c *:* m",
        "b *:* m",
    ];
    assert_imported("runc", &rules, &wants, |cmd| c.exec(cmd));
}

#[test]
fn runc_container_found_by_its_cgroup() {
    let c = RuncContainer::start("runc-find", None);
    let fs = CgroupFs::discover().expect("cgroup2");
    let dir = c.cgroup_dir();
    assert!(dir.is_dir(), "{}", dir.display());
    assert_eq!(
        runtimes::oldest_process(&dir).expect("oldest"),
        Some(c.init_pid())
    );
    // The harness puts it in Docker's cgroupfs layout (…/docker/<id>).
    for prefix in [&c.hex_id[..1], &c.hex_id[..12], &c.hex_id[..]] {
        let found = runtimes::find(&fs, Some(RuntimeKind::Docker), prefix).expect("find");
        let ours: Vec<_> = found.iter().filter(|f| f.cgroup.dir == dir).collect();
        assert_eq!(ours.len(), 1, "{prefix}: {found:?}");
        assert_eq!(ours[0].name, c.hex_id);
    }
    let found = runtimes::find(&fs, None, &c.hex_id[..16]).expect("find");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].runtime, RuntimeKind::Docker);
    assert!(runtimes::find(&fs, Some(RuntimeKind::Podman), &c.hex_id)
        .expect("find")
        .is_empty());
}
