//! The command line as operators type it, against the real binary and
//! kernel: options after rule words, messages that fit the target, "did you
//! mean", `status`, the text `list`, paths under another cgroup2 mount,
//! `monitor` on buffered events.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ctdev_tests::*;

#[test]
fn options_after_rule_words_are_options() {
    let (env, cg) = TestEnv::with_attached("cli-opts", "c", &[]);
    // --json after the rule words of allow.
    let out = env.ok(&[
        "allow",
        s(&cg),
        "c",
        "1:3",
        "rw",
        "b",
        "7:*",
        "rw",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("allow --json after rules");
    assert_eq!(v["changed"].as_array().unwrap().len(), 2, "{v}");
    // The README's synopsis: revoke TARGET RULE… --missing-ok; it says what
    // it took, what is left and what it skipped.
    let out = env.ok(&[
        "revoke",
        s(&cg),
        "b",
        "7:*",
        "w",
        "c",
        "5:1",
        "r",
        "--missing-ok",
    ]);
    assert!(
        out.contains(&format!("{}: revoked w from b 7:*; left: r", s(&cg))),
        "{out}"
    );
    assert!(
        out.contains("skipped") && out.contains("c 5:1 r") && out.contains("--missing-ok"),
        "{out}"
    );
    // --json after check's device words; exit 0 = allowed.
    let r = env.ctdev(&["check", s(&cg), "/dev/null", "r", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("check --json");
    assert_eq!(v["allowed"], true);
    // A misspelt option is an error, not a rule word, and changes nothing.
    let before = env.ok(&["list", "--json"]);
    let err = env.fails(&["revoke", s(&cg), "c", "1:3", "r", "--missing-okay"]);
    assert!(err.contains("--missing-okay"), "{err}");
    assert!(!err.contains("invalid access"), "{err}");
    assert_eq!(env.ok(&["list", "--json"]), before);
    // The empty access is still a rule word.
    env.ok(&["revoke", s(&cg), "c", "1:3", "-"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
}

#[test]
fn demo_rejects_json() {
    let env = TestEnv::new("cli-demo-json");
    let err = env.fails(&["--json", "demo"]);
    assert!(err.contains("no JSON output"), "{err}");
    assert!(!env.pin_root.exists(), "a rejected demo touched nothing");
}

#[test]
fn not_under_policy_hints_fit_the_target() {
    let env = TestEnv::new("cli-hints");
    // Nothing attached yet (no pin root), then with something attached.
    for attach_first in [false, true] {
        if attach_first {
            let cg = env.cgroup("c");
            env.ok(&["attach", s(&cg)]);
        }
        for root in ["/", "pid:1"] {
            let err = env.fails(&["list", root]);
            assert!(
                err.contains("root cgroup") && !err.contains("ctdev attach"),
                "{root}: {err}"
            );
        }
        let err = env.fails(&["detach", "id:1"]);
        assert!(
            err.contains("ctdev list") && !err.contains("attach id:"),
            "{err}"
        );
        let fresh = env.cgroup(&format!("fresh{attach_first}"));
        let err = env.fails(&["allow", s(&fresh), "c", "1:3", "r"]);
        assert!(
            err.contains(&format!("run `ctdev attach {}` first", s(&fresh))),
            "{err}"
        );
    }
}

#[test]
fn unknown_names_get_a_did_you_mean() {
    let env = TestEnv::new("cli-dym");
    let name = format!("{}x", env.name.replace('-', ""));
    env.cgroup(&format!("lxc.payload.{name}"));
    let typo = format!("{}y", &name[..name.len() - 1]);
    let err = env.fails(&["list", &format!("lxc:{typo}")]);
    assert!(
        err.contains("did you mean") && err.contains(&format!("lxc:{name}")),
        "{err}"
    );
    // A bare word too; and nothing for a name close to nothing.
    let err = env.fails(&["status", &typo]);
    assert!(err.contains(&format!("lxc:{name}")), "{err}");
    let err = env.fails(&["status", "lxc:qqqqqqqqqqqqqqqqqqqqqqqq"]);
    assert!(!err.contains("did you mean"), "{err}");
}

#[test]
fn absolute_paths_under_another_cgroup2_mount_work() {
    let env = TestEnv::new("cli-mount");
    let cg = env.cgroup("c");
    // A second cgroup2 mount of the same hierarchy, in a private mount
    // namespace (nothing global is mounted), as on a host where the
    // operator's cgroup2 is elsewhere than the one ctdev finds first.
    let other = env.fresh_path("cg2");
    std::fs::create_dir(&other).unwrap();
    let rel = cg.strip_prefix(cgroup_mount()).unwrap();
    let there = other.join(rel);
    let r: Run = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t cgroup2 none \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(&other)
        .arg(ctdev_bin())
        .arg("--pin-root")
        .arg(&env.pin_root)
        .args(["attach", s(&there), "--preset", "none"])
        .output()
        .expect("run ctdev in a mount namespace")
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(s(&cg)),
        "resolved to ctdev's own mount: {r:?}"
    );
    let dump = env.list_json();
    assert_eq!(
        dump["containers"][0]["policy_id"],
        std::fs::metadata(&cg).unwrap().ino()
    );
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
}

#[test]
fn status_shows_one_container_and_list_shows_other_programs() {
    let env = TestEnv::new("cli-status");
    let parent = env.cgroup("p");
    let cg = env.cgroup("p/c");
    let parked = Parked::in_cgroup(&cg);
    env.ok(&["attach", s(&parent)]);
    env.attach_rules(&cg, &["c 1:3 rw"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", s(&cg), "--json"])).expect("status --json");
    assert_eq!(v["under_policy"], true);
    assert_eq!(v["init_pid"], parked.pid());
    assert_eq!(v["policy"]["state"], "enforcing");
    assert_eq!(v["policy"]["denied"], 1);
    assert_eq!(v["policy"]["rules"][0]["hits"], 1);
    let programs = v["programs"].as_array().unwrap();
    assert_eq!(programs.len(), 2, "its own and its parent's: {v}");
    let text = env.ok(&["show", s(&cg)]);
    assert!(
        text.contains("enforcing")
            && text.contains("c 1:3 rw")
            && text.contains("hits 1")
            && text.contains(&format!("init pid:   {}", parked.pid())),
        "{text}"
    );
    // The text list names the parent's program deciding for the child.
    let text = env.ok(&["list", s(&cg)]);
    assert!(text.contains("also decides: program"), "{text}");
    // Colour only on a terminal: never in a pipe.
    assert!(!text.contains('\x1b'), "{text:?}");
    // Not under policy: status still shows what there is.
    let other = env.cgroup("other");
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", s(&other), "--json"])).unwrap();
    assert_eq!(v["under_policy"], false);
    assert_eq!(v["programs"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn monitor_skips_buffered_denials_unless_replay() {
    let (env, cg) = TestEnv::with_attached("cli-monitor", "c", &[]);
    // A denial nobody watched: --replay shows it, with `command` a string.
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    let out = env.ok(&["--json", "monitor", "--replay", "--count", "1"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["command"].is_string(), "{v}");
    // Another unwatched one; a monitor without --replay skips it, says so,
    // and shows the next fresh one.
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    let mut child = Command::new(ctdev_bin())
        .arg("--pin-root")
        .arg(&env.pin_root)
        .args(["--json", "monitor", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        said.push(line);
        if said.iter().any(|l| l.contains("skipped 1 denial")) {
            break;
        }
    }
    assert!(
        said.iter().any(|l| l.contains("skipped 1 denial")),
        "{said:?}"
    );
    assert_denied(&env, &cg, ProbeOp::read("/dev/full"));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["device"]["minor"], 7, "the fresh denial (/dev/full): {v}");
}

/// A defunct entry (its cgroup was removed) still names the cgroup it was
/// attached to, in the text `list` and in the JSON; `detach id:N` forgets it.
#[test]
fn defunct_entries_name_their_former_cgroup() {
    let env = TestEnv::new("cli-defunct");
    let cg = env.cgroup("gone");
    let out = env.ok(&["--json", "attach", s(&cg), "--preset", "none"]);
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["policy_id"]
        .as_u64()
        .unwrap();
    let json = env.list_json();
    assert!(
        json["containers"][0].get("former_cgroup").is_none(),
        "a live cgroup has no former name: {json:#}"
    );
    std::fs::remove_dir(&cg).unwrap();
    let was = format!("/{}/gone", env.name);

    let json = env.list_json();
    let c = &json["containers"][0];
    assert_eq!(c["state"], "defunct", "{c:#}");
    assert_eq!(c["cgroup"], serde_json::Value::Null);
    assert_eq!(c["former_cgroup"], was.as_str(), "{c:#}");
    let text = env.ok(&["list"]);
    let head = text
        .lines()
        .find(|l| l.contains("  defunct  "))
        .unwrap_or_else(|| panic!("no defunct line:\n{text}"));
    assert!(
        head.starts_with(&format!("{was} (cgroup removed)")),
        "{text}"
    );

    // The record lives beside the grant records and goes with the entry.
    let record = env.state_dir().join(format!("cgroup-{id}"));
    assert!(record.is_file(), "{} missing", record.display());
    env.ok(&["detach", &format!("id:{id}")]);
    assert!(!record.exists(), "{} left after detach", record.display());
}
