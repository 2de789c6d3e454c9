//! `ctdev set`: whole-policy swaps are atomic. A prober inside the
//! container checks verdicts in a tight loop during 1,000 swaps between two
//! rule sets; a SIGKILL at every step of a swap leaves the old or the new set.
//! `set` then `del` / `revoke` never takes back a rule the set wrote.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use ctdev_tests::*;

/// Probed devices, bit i of a verdict vector = `PATHS[i]` readable.
const PATHS: [&str; 5] = [
    "/dev/null",    // c 1:3
    "/dev/zero",    // c 1:5
    "/dev/full",    // c 1:7
    "/dev/random",  // c 1:8
    "/dev/urandom", // c 1:9
];

/// Set A: a wildcard narrowed by two deny entries. /dev/null is denied by
/// its own entry, which set B does not have: an access judged by A's
/// wildcard and B's (missing) exact entry would allow it, which neither set does.
const SET_A: [&str; 3] = ["c 1:* r", "c 1:3 ''", "c 1:8 ''"];
const MASK_A: u32 = 0b10110;
/// Set B: three exact entries, no wildcard.
const SET_B: [&str; 3] = ["c 1:5 r", "c 1:8 r", "c 1:9 r"];
const MASK_B: u32 = 0b11010;

fn prober_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("verdict-prober");
    assert!(bin.is_file(), "verdict-prober missing at {}", bin.display());
    bin
}

fn set_args<'a>(cg: &'a Path, rules: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["set", s(cg)];
    v.extend(rules);
    v
}

/// Vectors a swap between accesses of one loop iteration can produce: the
/// first k paths judged by one set, the rest by the other.
fn straddles(x: u32, y: u32) -> Vec<u32> {
    (0..=PATHS.len())
        .map(|k| {
            let low = (1u32 << k) - 1;
            (x & low) | (y & !low & 0b11111)
        })
        .collect()
}

#[test]
fn swaps_are_atomic_for_a_prober_in_a_tight_loop() {
    let env = TestEnv::new("set-atomic");
    let cg = env.cgroup("c");
    let mut attach = vec!["attach", s(&cg), "--preset", "none"];
    for r in SET_A {
        attach.extend(["--rule", r]);
    }
    env.ok(&attach);
    let stop = env.fresh_path("stop");
    let mut child = Command::new(prober_bin())
        .arg(&cg)
        .arg(&stop)
        .args(PATHS)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start prober");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let (a, b) = (set_args(&cg, &SET_A), set_args(&cg, &SET_B));
    for i in 0..1000 {
        env.ok(if i % 2 == 0 { &b } else { &a });
    }
    std::fs::write(&stop, "").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let seen: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(rest.trim()).expect("prober JSON");
    let mut legal = straddles(MASK_A, MASK_B);
    legal.extend(straddles(MASK_B, MASK_A));
    let mut total = 0;
    for (mask, count) in &seen {
        let mask: u32 = mask.parse().unwrap();
        assert_eq!(
            mask & 1,
            0,
            "/dev/null was allowed: a mixed decision ({seen:?})"
        );
        assert!(
            legal.contains(&mask),
            "vector {mask:#b} matches neither set ({seen:?})"
        );
        total += count.as_u64().unwrap();
    }
    assert!(seen.contains_key(&MASK_A.to_string()), "{seen:?}");
    assert!(seen.contains_key(&MASK_B.to_string()), "{seen:?}");
    assert!(total > 1000, "prober ran {total} iterations");
    // The last swap (to A) is what list and the kernel show.
    // (In any order: list sorts most specific first per device.)
    let mut listed = listed_rules(&env, &cg).unwrap().1;
    listed.sort();
    assert_eq!(listed, ["c 1:* r", "c 1:3 ''", "c 1:8 ''"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    env.ok(&["detach", s(&cg)]);
}

/// The verdicts of the probed devices as the kernel gives them now.
fn kernel_mask(env: &TestEnv, cg: &Path) -> u32 {
    PATHS
        .iter()
        .enumerate()
        .filter(|(_, p)| env.try_op(cg, &ProbeOp::read(p)).is_ok())
        .fold(0, |m, (i, _)| m | 1 << i)
}

fn killed_swaps_leave_old_or_new(name: &str, filler: usize) {
    let env = TestEnv::new(name);
    let cg = env.cgroup("c");
    // `filler` extra rules (majors nothing uses) make the policy large
    // (shared hash map) when they exceed the table.
    let fill: Vec<String> = (0..filler).map(|i| format!("c 300:{i} r")).collect();
    let mut a: Vec<&str> = SET_A.to_vec();
    a.extend(fill.iter().map(String::as_str));
    let b: Vec<&str> = SET_B.to_vec();
    let mut attach = vec!["attach", s(&cg), "--preset", "none"];
    for r in &a {
        attach.extend(["--rule", r]);
    }
    env.ok(&attach);
    let listed = |env: &TestEnv| {
        let mut r = listed_rules(env, &cg).unwrap().1;
        r.retain(|x| !x.starts_with("c 300:"));
        r
    };
    let (rules_a, rules_b): (Vec<String>, Vec<String>) =
        (listed(&env), SET_B.iter().map(|r| r.to_string()).collect());
    for (from, to, mask_from, mask_to) in [(&a, &b, MASK_A, MASK_B), (&b, &a, MASK_B, MASK_A)] {
        env.ok(&set_args(&cg, from));
        for step in ["set.after_write", "set.after_publish"] {
            env.crash_at(step, &set_args(&cg, to));
            let now = listed(&env);
            let mask = kernel_mask(&env, &cg);
            let (want_rules, want_mask) = if step == "set.after_write" {
                (
                    if mask_from == MASK_A {
                        &rules_a
                    } else {
                        &rules_b
                    },
                    mask_from,
                )
            } else {
                (
                    if mask_to == MASK_A {
                        &rules_a
                    } else {
                        &rules_b
                    },
                    mask_to,
                )
            };
            assert_eq!(&now, want_rules, "{name} {step}");
            assert_eq!(mask, want_mask, "{name} {step}: kernel {mask:#b}");
            // Converges: the swap run again lands on the new set.
            env.ok(&set_args(&cg, to));
            assert_eq!(kernel_mask(&env, &cg), mask_to, "{name} {step}");
            env.ok(&set_args(&cg, from));
        }
    }
    env.ok(&["detach", s(&cg)]);
    assert!(!env.pin_root.exists(), "detach left pins");
}

#[test]
fn killed_swap_of_a_small_policy_leaves_old_or_new() {
    killed_swaps_leave_old_or_new("set-kill-small", 0);
}

#[test]
fn killed_swap_of_a_large_policy_leaves_old_or_new() {
    killed_swaps_leave_old_or_new("set-kill-large", 200);
}

#[test]
fn set_from_a_rules_file_then_allow_then_set_again() {
    let env = TestEnv::new("set-file");
    let cg = env.cgroup("c");
    env.ok(&["attach", s(&cg), "--preset", "none", "--rule", "c 1:3 rw"]);
    let file = env.fresh_path("rules");
    std::fs::write(&file, "# new set\nc 1:5 r\n\nc 1:9 r  # urandom\n").unwrap();
    let out = env.ok(&["set", s(&cg), "--rules-file", s(&file)]);
    assert!(out.contains("-c 1:3 rw"), "{out}");
    assert_eq!(listed_rules(&env, &cg).unwrap().1, ["c 1:5 r", "c 1:9 r"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    env.ok(&["allow", s(&cg), "c 1:3 r"]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    // An empty set denies everything.
    env.ok(&["set", s(&cg)]);
    assert_eq!(listed_rules(&env, &cg).unwrap().1, Vec::<String>::new());
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    // Not under policy: refused, nothing changes.
    let other = env.cgroup("other");
    let err = env.fails(&["set", s(&other), "c 1:3 r"]);
    assert!(err.contains("not under ctdev policy"), "{err}");
    env.ok(&["detach", s(&cg)]);
}

/// Rules of `cg` as `list` shows them, sorted.
fn sorted_rules(env: &TestEnv, cg: &Path) -> Vec<String> {
    let mut r = listed_rules(env, cg).unwrap().1;
    r.sort();
    r
}

// `set` goes through the grant records: the set's rules are the
// operator's, so a later `del` of a device added before the set takes back
// its node only (never a rule the set wrote, never widening); an add after
// the set and its del are the identity; `revoke` after `set` still never
// widens.
#[test]
fn set_then_del_takes_back_no_rule_the_set_wrote() {
    use ctdev_tests::container::TestContainer;
    let env = TestEnv::new("set-grants");
    let c = TestContainer::start(&env, "c", false);
    let cg = c.cgroup_str();
    let cgp = c.cgroup.clone();
    env.ok(&["attach", cg, "--preset", "none"]);
    let zero = env.node("zero", DeviceType::Char, 1, 5);

    // 1. add, set keeping the device narrower, del: the set's rule stays.
    env.ok(&["add", cg, s(&zero), "/dev/z/zero"]);
    let out = env.ok(&["set", cg, "c 1:5 r", "c 1:3 rw"]);
    assert!(out.contains("superseded grant"), "{out}");
    env.ok(&["del", cg, s(&zero), "/dev/z/zero"]);
    assert_eq!(sorted_rules(&env, &cgp), ["c 1:3 rw", "c 1:5 r"]);
    assert!(
        !c.host_path("/dev/z").exists(),
        "node and directory removed"
    );
    assert_allowed(&env, &cgp, ProbeOp::read("/dev/zero"));
    assert_denied(&env, &cgp, ProbeOp::write("/dev/zero"));

    // 2. add, set with a wildcard and no entry for it, del: nothing of the
    //    set changes (no deny appears, the wildcard still decides).
    env.ok(&["add", cg, s(&zero), "/dev/zero"]);
    env.ok(&["set", cg, "c *:* rw"]);
    env.ok(&["del", cg, s(&zero), "/dev/zero"]);
    assert_eq!(sorted_rules(&env, &cgp), ["c *:* rw"]);
    assert!(!c.host_path("/dev/zero").exists());
    assert_allowed(&env, &cgp, ProbeOp::read_write("/dev/zero"));

    // 3. add, set with a deny for it, del: the deny stays a deny.
    env.ok(&["add", cg, s(&zero), "/dev/zero"]);
    env.ok(&["set", cg, "c *:* rw", "c 1:5 ''"]);
    env.ok(&["del", cg, s(&zero), "/dev/zero"]);
    assert_eq!(sorted_rules(&env, &cgp), ["c *:* rw", "c 1:5 ''"]);
    assert_denied(&env, &cgp, ProbeOp::read("/dev/zero"));

    // 4. set, add, del: the identity on the set.
    env.ok(&["set", cg, "c 1:3 r"]);
    env.ok(&["add", cg, s(&zero), "/dev/zero"]);
    c.open_rw("/dev/zero").expect("zero opens after add");
    env.ok(&["del", cg, s(&zero), "/dev/zero"]);
    assert_eq!(sorted_rules(&env, &cgp), ["c 1:3 r"]);
    assert_denied(&env, &cgp, ProbeOp::read("/dev/zero"));

    // 5. allow, set, revoke: the operator's allow is superseded; revoke
    //    acts on the set's entries and never widens.
    env.ok(&["allow", cg, "c 1:7 rw"]);
    env.ok(&["set", cg, "c 1:* rw", "c 1:7 r"]);
    let out = env.ok(&["revoke", cg, "c 1:7 r"]);
    assert!(out.contains("left: ''"), "kept as a deny: {out}");
    assert_denied(&env, &cgp, ProbeOp::read("/dev/full"));
    assert_allowed(&env, &cgp, ProbeOp::read("/dev/null"));
    env.ok(&["detach", cg]);
}
