//! The never-widen invariants against the real kernel: one test per
//! finding of issue #10 (items 1, 2, 3, 5, 6, 7), each reproduction checked
//! with real opens from inside, plus `--dry-run` and a bounded run of random
//! allow/revoke/add/del sequences probed in the kernel.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use ctdev_tests::container::{TestContainer, Veth};
use ctdev_tests::*;

/// Rules of the container at `cg` in `list --json`.
fn rules_of(env: &TestEnv, cg: &Path) -> Vec<String> {
    let v = env.list_json();
    v["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["cgroup_dir"].as_str() == Some(s(cg)))
        .map(|c| {
            c["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["rule"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn denied(r: Result<(), String>) -> bool {
    matches!(r, Err(e) if e.contains("Operation not permitted"))
}

fn rdev(p: &Path) -> (bool, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (
        m.file_type().is_block_device(),
        libc::major(m.rdev()),
        libc::minor(m.rdev()),
    )
}

fn mknod(p: &Path, major: u32, minor: u32) {
    nix::sys::stat::mknod(
        p,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(major.into(), minor.into()),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
}

// Finding 1: revoke widened access; '' at attach was merged away.
#[test]
fn revoke_never_widens_and_deny_entries_stay() {
    let env = TestEnv::new("inv-revoke");
    let cg = env.cgroup("c");
    env.ok(&[
        "attach",
        s(&cg),
        "--preset",
        "none",
        "--rule",
        "c *:* rwm",
        "--rule",
        "c 1:3 r",
        "--rule",
        "c 1:5 ''",
    ]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    assert_denied(&env, &cg, ProbeOp::write("/dev/null"));
    // The last bit of 1:3 goes: the entry stays as a deny (the wildcard
    // would give rw), and the output says exactly that.
    let out = env.ok(&["revoke", s(&cg), "c 1:3 r"]);
    assert!(out.contains("revoked r from c 1:3; left: ''"), "{out}");
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    assert_denied(&env, &cg, ProbeOp::read_write("/dev/null"));
    // A bit the deny entry never had: nothing changes.
    let out = env.ok(&["revoke", s(&cg), "c 1:5 m"]);
    assert!(out.contains("unchanged"), "{out}");
    assert_denied(&env, &cg, ProbeOp::read("/dev/zero"));
    assert!(rules_of(&env, &cg).contains(&"c 1:5 ''".to_string()));
    // Revoking part of a wildcard keeps the rest.
    let out = env.ok(&["revoke", s(&cg), "c *:* w"]);
    assert!(out.contains("revoked w from c *:*; left: rm"), "{out}");
    assert_allowed(&env, &cg, ProbeOp::read("/dev/full"));
    assert_denied(&env, &cg, ProbeOp::write("/dev/full"));

    // '' at attach with the default preset stays a deny.
    let cg2 = env.cgroup("d");
    env.ok(&["attach", s(&cg2), "--rule", "c 1:5 ''"]);
    assert_denied(&env, &cg2, ProbeOp::read("/dev/zero"));
    assert_allowed(&env, &cg2, ProbeOp::read("/dev/null"));
}

// Finding 2: del took back more than add gave.
#[test]
fn del_takes_back_exactly_what_add_gave() {
    let env = TestEnv::new("inv-del");
    let c = TestContainer::start(&env, "c", false);
    let cg = c.cgroup_str();
    env.ok(&["attach", cg]);
    // (a) The preset already allows /dev/zero: add then del keeps it.
    mknod(&c.host_path("/dev/zero"), 1, 5);
    let before = rules_of(&env, &c.cgroup);
    env.ok(&["add", cg, "/dev/zero", "/dev/z2"]);
    env.ok(&["del", cg, "/dev/zero", "/dev/z2"]);
    assert_eq!(rules_of(&env, &c.cgroup), before);
    c.open_rw("/dev/zero")
        .expect("zero still opens after add+del");
    assert!(!c.host_path("/dev/z2").exists());
    // (b) del of something never added: an error, nothing changes.
    mknod(&c.host_path("/dev/null"), 1, 3);
    let err = env.fails(&["del", cg, "/dev/null"]);
    assert!(err.contains("was not added"), "{err}");
    assert_eq!(rules_of(&env, &c.cgroup), before);
    assert!(c.host_path("/dev/null").exists(), "node left alone");
    c.open_rw("/dev/null").expect("null still opens");
    // (c) add replaces the container's own /dev/tty; del puts it back.
    mknod(&c.host_path("/dev/tty"), 5, 0);
    env.ok(&["add", cg, "/dev/zero", "/dev/tty"]);
    assert_eq!(rdev(&c.host_path("/dev/tty")), (false, 1, 5));
    env.ok(&["del", cg, "/dev/zero", "/dev/tty"]);
    assert_eq!(rdev(&c.host_path("/dev/tty")), (false, 5, 0), "restored");
    assert_eq!(rules_of(&env, &c.cgroup), before);
    // (d) One device at two paths: del of one keeps the other's rule.
    let full = env.node("full", DeviceType::Char, 1, 7);
    env.ok(&["add", cg, s(&full), "/dev/f1"]);
    env.ok(&["add", cg, s(&full), "/dev/f2"]);
    env.ok(&["del", cg, s(&full), "/dev/f1"]);
    assert!(!c.host_path("/dev/f1").exists());
    let w = c.sh("echo x > /dev/f2");
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("No space left"),
        "f2 still reaches /dev/full: {:?}",
        w
    );
    env.ok(&["del", cg, s(&full), "/dev/f2"]);
    assert_eq!(rules_of(&env, &c.cgroup), before);
}

// Finding 2, with a wildcard and a deny: add+del of /dev/zero is the identity.
#[test]
fn add_then_del_under_a_wildcard_with_a_deny_is_the_identity() {
    let env = TestEnv::new("inv-ident");
    let c = TestContainer::start(&env, "c", false);
    let cg = c.cgroup_str();
    env.ok(&[
        "attach",
        cg,
        "--preset",
        "none",
        "--rule",
        "c *:* rwm",
        "--rule",
        "c 1:5 ''",
    ]);
    let before = rules_of(&env, &c.cgroup);
    let zero = env.node("zero", DeviceType::Char, 1, 5);
    env.ok(&["add", cg, s(&zero), "/dev/zero"]);
    c.open_rw("/dev/zero").expect("zero opens after add");
    env.ok(&["del", cg, s(&zero), "/dev/zero"]);
    assert_eq!(rules_of(&env, &c.cgroup), before);
    mknod(&c.host_path("/dev/zero"), 1, 5);
    assert!(denied(c.open_rw("/dev/zero")), "zero denied again");
}

// Finding 3: del of a directory after the host directory changed.
#[test]
fn del_of_a_directory_takes_back_the_recorded_nodes() {
    let env = TestEnv::new("inv-dir");
    let c = TestContainer::start(&env, "c", false);
    let cg = c.cgroup_str();
    env.ok(&["attach", cg, "--preset", "none"]);
    let dir = env.scratch.join("hp");
    std::fs::create_dir(&dir).unwrap();
    mknod(&dir.join("urandom"), 1, 9);
    mknod(&dir.join("random"), 1, 8);
    env.ok(&["add", cg, s(&dir), "/dev/hp"]);
    c.open_rw("/dev/hp/urandom").expect("opens after add");
    // Hotplug on the host: one node gone, another appeared.
    std::fs::remove_file(dir.join("urandom")).unwrap();
    mknod(&dir.join("full"), 1, 7);
    env.ok(&["del", cg, s(&dir), "/dev/hp"]);
    assert_eq!(rules_of(&env, &c.cgroup), Vec::<String>::new());
    assert!(!c.host_path("/dev/hp/urandom").exists());
    assert!(!c.host_path("/dev/hp/random").exists());
    mknod(&c.host_path("/dev/u9"), 1, 9);
    assert!(denied(c.open_rw("/dev/u9")), "1:9 closed");
}

// Finding 5: re-running attach with another policy changed meaning silently.
#[test]
fn attach_with_another_policy_is_refused() {
    let env = TestEnv::new("inv-reattach");
    let cg = env.cgroup("c");
    let args = ["attach", s(&cg), "--preset", "none", "--rule", "c *:* rwm"];
    env.ok(&args);
    let before = rules_of(&env, &cg);
    let err = env.fails(&[
        "attach",
        s(&cg),
        "--preset",
        "none",
        "--rule",
        "c *:* rwm",
        "--rule",
        "c 10:200 ''",
    ]);
    assert!(
        err.contains("ctdev allow") && err.contains("revoke"),
        "{err}"
    );
    assert_eq!(rules_of(&env, &cg), before);
    // The same request is idempotent.
    let out = env.ok(&args);
    assert!(out.contains("already attached"), "{out}");
    assert_eq!(rules_of(&env, &cg), before);
}

// Finding 6: the host's /dev and interfaces were touched.
#[test]
fn a_target_in_the_hosts_namespaces_gets_rules_only() {
    let env = TestEnv::new("inv-host");
    let cg = env.cgroup("svc");
    let parked = Parked::in_cgroup(&cg);
    env.ok(&["attach", s(&cg)]);
    let node = env.node("n", DeviceType::Char, 1, 7);
    let dest = format!("/dev/{}", unique("x"));
    let out = env.ok(&["add", s(&cg), s(&node), &dest]);
    assert!(out.contains("no container root"), "{out}");
    assert!(
        !Path::new(&dest).exists(),
        "nothing created in the host's /dev"
    );
    // del of something never added: an error; the host node stays.
    let err = env.fails(&["del", s(&cg), s(&env.node("m", DeviceType::Char, 1, 8))]);
    assert!(err.contains("was not added"), "{err}");
    assert!(env.scratch.join("m").exists());
    // del of what was added takes back the rule only.
    let out = env.ok(&["del", s(&cg), s(&node), &dest]);
    assert!(out.contains("no container root"), "{out}");
    // Interfaces: refused in the host's netns; the interface stays.
    let veth = Veth::new();
    let err = env.fails(&["add", s(&cg), &veth.name, "net0"]);
    assert!(err.contains("network namespace"), "{err}");
    assert!(Path::new("/sys/class/net").join(&veth.name).exists());
    let err = env.fails(&["del", s(&cg), &veth.name]);
    assert!(err.contains("was not added"), "{err}");
    drop(parked);
}

// Finding 6: pid:N uses N's namespaces, not the oldest process's.
#[test]
fn pid_target_uses_that_process() {
    let env = TestEnv::new("inv-pid");
    let c = TestContainer::start(&env, "c", false);
    env.ok(&["attach", c.cgroup_str()]);
    // A host process in the container's cgroup, younger than its init.
    let host_proc = Parked::in_cgroup(&c.cgroup);
    let node = env.node("n", DeviceType::Char, 1, 7);
    let out = env.ok(&[
        "add",
        &format!("pid:{}", host_proc.pid()),
        s(&node),
        "/dev/pidx",
    ]);
    assert!(out.contains("no container root"), "{out}");
    assert!(!c.host_path("/dev/pidx").exists(), "not in the init's root");
    assert!(!Path::new("/dev/pidx").exists(), "not in the host's /dev");
    // The init's own pid: the node lands in the container.
    env.ok(&["add", &c.target(), s(&node), "/dev/pidy"]);
    assert!(c.host_path("/dev/pidy").exists());
}

// Finding 7: the root cgroup, PID 1's cgroup, a non-root --cgroup-root.
#[test]
fn the_host_cgroups_and_a_sub_cgroup_root_are_refused() {
    let env = TestEnv::new("inv-root");
    for t in ["/", "pid:1"] {
        let err = env.fails(&["attach", t]);
        assert!(err.contains("--force-host"), "{t}: {err}");
        let err = env.fails(&["attach", t, "--dry-run"]);
        assert!(err.contains("--force-host"), "{t}: {err}");
    }
    assert!(!env.pin_root.exists(), "nothing pinned");
    let cg = env.cgroup("sub/c");
    let err = env.fails(&["--cgroup-root", s(&env.cgroup_parent), "attach", s(&cg)]);
    assert!(err.contains("not the root of a cgroup2 mount"), "{err}");
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
}

// Issue #14 / item 7: --dry-run changes nothing.
#[test]
fn dry_run_changes_nothing() {
    let env = TestEnv::new("inv-dry");
    let c = TestContainer::start(&env, "c", false);
    let cg = c.cgroup_str();
    let out = env.ok(&["attach", cg, "--preset", "none", "--dry-run"]);
    assert!(out.contains("would attach"), "{out}");
    assert!(
        env.ctdev(&["list", cg]).code != 0,
        "not attached after a dry run"
    );
    env.ok(&["attach", cg, "--preset", "none", "--rule", "c 1:3 rw"]);
    let before = rules_of(&env, &c.cgroup);
    let out = env.ok(&["allow", "--dry-run", cg, "c 1:5 r"]);
    assert!(out.contains("would allow"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["revoke", "--dry-run", "--json", cg, "c 1:3 w"])).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["changed"][0], "revoked w from c 1:3; left: r");
    let zero = env.node("zero", DeviceType::Char, 1, 5);
    let out = env.ok(&["add", cg, s(&zero), "/dev/zero", "--dry-run"]);
    assert!(out.contains("would add"), "{out}");
    assert!(!c.host_path("/dev/zero").exists());
    assert_eq!(rules_of(&env, &c.cgroup), before);
    env.ok(&["add", cg, s(&zero), "/dev/zero"]);
    let added = rules_of(&env, &c.cgroup);
    env.ok(&["del", cg, s(&zero), "/dev/zero", "--dry-run"]);
    env.ok(&["detach", cg, "--dry-run"]);
    assert_eq!(rules_of(&env, &c.cgroup), added);
    assert!(c.host_path("/dev/zero").exists());
    c.open_rw("/dev/zero").expect("still open after dry runs");
}

/// A small seeded generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

/// Random allow/revoke/add/del sequences against the real kernel: after
/// every step, `list` equals the model (the pure planner fed the same
/// steps) and real opens agree with it; revoke and del never opened
/// anything that was denied before.
#[test]
fn random_sequences_against_the_kernel() {
    use ctdev::grants::{self, Grant, Ledger, Owner, Subject};
    use ctdev::plan::{self, Entries};
    use ctdev::rule::{parse_rules, Rule};

    let env = TestEnv::new("inv-random");
    let cg = env.cgroup("c");
    let _parked = Parked::in_cgroup(&cg);
    let minors = [3u32, 5, 7, 8];
    let names = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random"];
    let accesses = ["r", "w", "rw", "m", "rwm"];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let start = Instant::now();
    let (mut sequences, mut steps) = (0u32, 0u32);
    while start.elapsed() < Duration::from_secs(40) && sequences < 300 {
        sequences += 1;
        // Attach with a random small policy (a wildcard sometimes).
        let mut attach_rules = vec![];
        if rng.below(2) == 0 {
            attach_rules.push(format!("c *:* {}", accesses[rng.below(5) as usize]));
        }
        for _ in 0..rng.below(3) {
            let a = if rng.below(4) == 0 {
                "''"
            } else {
                accesses[rng.below(5) as usize]
            };
            attach_rules.push(format!("c 1:{} {a}", minors[rng.below(4) as usize]));
        }
        let mut args = vec!["attach", s(&cg), "--preset", "none"];
        for r in &attach_rules {
            args.push("--rule");
            args.push(r);
        }
        env.ok(&args);
        let parsed: Vec<Rule> = parse_rules(&attach_rules).unwrap();
        let id = cg.metadata().unwrap().ino();
        let mut model: Entries = plan::attach_entries(id, &[], &parsed);
        let mut ledger = Ledger::new(id);
        for _ in 0..3 {
            steps += 1;
            let minor = minors[rng.below(4) as usize];
            let acc = accesses[rng.below(5) as usize];
            let rule_text = format!("c 1:{minor} {acc}");
            let rule = parse_rules(&[rule_text.as_str()]).unwrap();
            let before = model.clone();
            let op = rng.below(3);
            match op {
                0 => {
                    env.ok(&["allow", s(&cg), &rule_text]);
                    let (p, eg) = grants::plan_grant(&model, id, &rule);
                    model = p.result(&model);
                    grants::record(
                        &mut ledger,
                        Grant {
                            owner: Owner::Operator,
                            subject: Subject::Rule { rule: rule_text },
                            entries: eg,
                            nodes: vec![],
                            pending: false,
                        },
                    );
                }
                1 => {
                    let r = env.ctdev(&["revoke", "--missing-ok", s(&cg), &rule_text]);
                    assert_eq!(r.code, 0, "{}", r.stderr);
                    let p = plan::plan_revoke(&model, id, &rule, true).unwrap();
                    model = p.result(&model);
                    grants::forget_revoked(&mut ledger, &p);
                    assert_eq!(plan::widened(&before, &model, id, &grid(id)), None);
                }
                _ => {
                    // add then del of a scratch node (rules only: the
                    // parked process shares the host's mount namespace).
                    let node = env.scratch.join(format!("n{steps}"));
                    let _ = std::fs::remove_file(&node);
                    mknod(&node, 1, minor);
                    let dest = format!("/dev/ctdev-inv-{steps}");
                    env.ok(&["add", s(&cg), s(&node), &dest, "--access", acc]);
                    let access = ctdev::rule::Access::parse(acc).unwrap();
                    let r = Rule::device(DeviceType::Char, 1, minor, access);
                    let (p, _) = grants::plan_grant(&model, id, &[r]);
                    let added = p.result(&model);
                    assert_eq!(
                        rules_of(&env, &cg),
                        added
                            .iter()
                            .map(|(k, v)| plan::entry_text(k, *v))
                            .collect::<Vec<_>>(),
                        "list equals the model after add at step {steps}"
                    );
                    assert!(!Path::new(&dest).exists());
                    env.ok(&["del", s(&cg), s(&node), &dest]);
                    // add + del is the identity: the model stays `before`.
                }
            }
            assert_eq!(
                rules_of(&env, &cg),
                model
                    .iter()
                    .map(|(k, v)| plan::entry_text(k, *v))
                    .collect::<Vec<_>>(),
                "list equals the model after step {steps}"
            );
            // Real opens agree with the model (one random device per step).
            let i = rng.below(4) as usize;
            let want = plan::decide(&model, id, ctdev_common::DEV_CHAR, 1, minors[i]);
            let got = env.try_op(&cg, &ProbeOp::read(names[i]));
            assert_eq!(
                got.is_ok(),
                want & ctdev_common::ACCESS_READ != 0,
                "{} read: kernel {got:?}, model {want}",
                names[i]
            );
        }
        env.ok(&["detach", s(&cg)]);
    }
    println!("checked {sequences} random sequences ({steps} steps) against the kernel");
    assert!(sequences >= 20, "too few sequences: {sequences}");
}

fn grid(id: u64) -> Vec<(u32, u32, u32)> {
    let _ = id;
    [3, 5, 7, 8, 9]
        .iter()
        .map(|m| (ctdev_common::DEV_CHAR, 1, *m))
        .collect()
}
