//! The never-widen invariants against the real kernel: one test per
//! finding of issue #10 (items 1, 2, 3, 5, 6, 7), each reproduction checked
//! with real opens from inside, plus `--dry-run` and a bounded run of random
//! allow/revoke/add/del sequences probed in the kernel.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ctdev_tests::container::{TestContainer, Veth};
use ctdev_tests::*;

// Finding 1: revoke widened access; '' at attach was merged away.
#[test]
fn revoke_never_widens_and_deny_entries_stay() {
    let (env, cg) =
        TestEnv::with_attached("inv-revoke", "c", &["c *:* rwm", "c 1:3 r", "c 1:5 ''"]);
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
    env.attach_rules(&c.cgroup, &["c *:* rwm", "c 1:5 ''"]);
    let before = rules_of(&env, &c.cgroup);
    let zero = env.node("zero", DeviceType::Char, 1, 5);
    env.ok(&["add", cg, s(&zero), "/dev/zero"]);
    c.open_rw("/dev/zero").expect("zero opens after add");
    env.ok(&["del", cg, s(&zero), "/dev/zero"]);
    assert_eq!(rules_of(&env, &c.cgroup), before);
    assert!(c.new_node_denied("/dev/zero", 1, 5), "zero denied again");
}

// Finding 3: del of a directory after the host directory changed.
#[test]
fn del_of_a_directory_takes_back_the_recorded_nodes() {
    let env = TestEnv::new("inv-dir");
    let c = TestContainer::attached(&env, "c");
    let cg = c.cgroup_str();
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
    assert!(c.new_node_denied("/dev/u9", 1, 9), "1:9 closed");
}

// #10 (left item 1): `del` removes exactly the directories `add` made:
// a parent two adds share stays until the last of them goes; a directory
// that was there before, or that holds the container's own files, stays.
#[test]
fn del_removes_the_directories_add_made_and_no_others() {
    let env = TestEnv::new("inv-dirs");
    let c = TestContainer::attached(&env, "c");
    let cg = c.cgroup_str();
    let null = env.node("null", DeviceType::Char, 1, 3);
    let zero = env.node("zero", DeviceType::Char, 1, 5);
    std::fs::create_dir(c.host_path("/dev/pre")).unwrap();
    std::fs::write(c.host_path("/dev/pre/own"), "x").unwrap();
    let out = env.ok(&["add", cg, s(&null), "/dev/a/b/c/n1"]);
    for d in ["/dev/a", "/dev/a/b", "/dev/a/b/c"] {
        assert!(out.contains(&format!("directory {d} created")), "{out}");
        assert!(c.host_path(d).is_dir(), "{d}");
    }
    // A second add under the same parents (creates nothing).
    let out = env.ok(&["add", cg, s(&zero), "/dev/a/b/z"]);
    assert!(!out.contains("directory"), "{out}");
    // Under a directory that was there before: only /dev/pre/x is made.
    let out = env.ok(&["add", cg, s(&zero), "/dev/pre/x/z"]);
    assert!(out.contains("directory /dev/pre/x created"), "{out}");
    assert!(!out.contains("directory /dev/pre created"), "{out}");
    c.open_rw("/dev/a/b/c/n1").expect("n1 opens");
    c.open_rw("/dev/a/b/z").expect("z opens");
    // del of the first: its own /dev/a/b/c goes; the shared parents stay.
    let out = env.ok(&["del", cg, s(&null), "/dev/a/b/c/n1"]);
    assert!(out.contains("directory /dev/a/b/c removed"), "{out}");
    assert!(!c.host_path("/dev/a/b/c").exists());
    assert!(c.host_path("/dev/a/b").is_dir(), "shared parent stays");
    c.open_rw("/dev/a/b/z").expect("z still opens");
    // del of the other: the parents it shared go now.
    let out = env.ok(&["del", cg, s(&zero), "/dev/a/b/z"]);
    assert!(out.contains("directory /dev/a removed"), "{out}");
    assert!(!c.host_path("/dev/a").exists());
    // The pre-existing directory and its file stay.
    env.ok(&["del", cg, s(&zero), "/dev/pre/x/z"]);
    assert!(!c.host_path("/dev/pre/x").exists());
    assert!(c.host_path("/dev/pre/own").is_file(), "pre-existing kept");
    // A directory add made that the container then used stays.
    env.ok(&["add", cg, s(&null), "/dev/q/n"]);
    std::fs::write(c.host_path("/dev/q/mine"), "x").unwrap();
    let r = env.ctdev(&["del", cg, s(&null), "/dev/q/n"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert!(c.host_path("/dev/q/mine").is_file());
    assert!(!c.host_path("/dev/q/n").exists());
    // --dry-run names the directories del would remove.
    env.ok(&["add", cg, s(&null), "/dev/r/s/n"]);
    let out = env.ok(&["del", cg, s(&null), "/dev/r/s/n", "--dry-run"]);
    assert!(out.contains("directory /dev/r removed"), "{out}");
    assert!(
        c.host_path("/dev/r/s/n").exists(),
        "dry run changed nothing"
    );
    env.ok(&["del", cg, s(&null), "/dev/r/s/n"]);
    assert!(!c.host_path("/dev/r").exists());
    assert_eq!(rules_of(&env, &c.cgroup), Vec::<String>::new());
}

// Two grants of one node at one path share it: del of one keeps the node;
// a node replaced by a later add passes its record on, so the last del
// leaves the path as it was before the first add.
#[test]
fn grants_sharing_a_node_path_keep_it_until_the_last_del() {
    let env = TestEnv::new("inv-share");
    let c = TestContainer::attached(&env, "c");
    let cg = c.cgroup_str();
    let n1 = env.node("n1", DeviceType::Char, 1, 5);
    let n2 = env.node("n2", DeviceType::Char, 1, 5);
    let full = env.node("full", DeviceType::Char, 1, 7);
    // Same device at the same path from two host paths.
    env.ok(&["add", cg, s(&n1), "/dev/sh/z"]);
    env.ok(&["add", cg, s(&n2), "/dev/sh/z"]);
    env.ok(&["del", cg, s(&n1), "/dev/sh/z"]);
    c.open_rw("/dev/sh/z")
        .expect("the other grant's node and rule stay");
    env.ok(&["del", cg, s(&n2), "/dev/sh/z"]);
    assert!(!c.host_path("/dev/sh").exists(), "node and directory gone");
    // A later add replaces the node; the first del leaves the new one.
    env.ok(&["add", cg, s(&n1), "/dev/rp"]);
    env.ok(&["add", cg, s(&full), "/dev/rp"]);
    assert_eq!(rdev(&c.host_path("/dev/rp")), (false, 1, 7));
    env.ok(&["del", cg, s(&n1), "/dev/rp"]);
    assert_eq!(rdev(&c.host_path("/dev/rp")), (false, 1, 7), "still full");
    env.ok(&["del", cg, s(&full), "/dev/rp"]);
    assert!(!c.host_path("/dev/rp").exists(), "nothing was there first");
    assert_eq!(rules_of(&env, &c.cgroup), Vec::<String>::new());
}

// Finding 5: re-running attach with another policy changed meaning silently.
#[test]
fn attach_with_another_policy_is_refused() {
    let (env, cg) = TestEnv::with_attached("inv-reattach", "c", &["c *:* rwm"]);
    let before = rules_of(&env, &cg);
    let err = env.fails(&attach_args(&cg, &["c *:* rwm", "c 10:200 ''"]));
    assert!(
        err.contains("ctdev allow") && err.contains("revoke"),
        "{err}"
    );
    assert_eq!(rules_of(&env, &cg), before);
    // The same request is idempotent.
    let out = env.attach_rules(&cg, &["c *:* rwm"]);
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

/// Random allow / revoke / set / add / del sequences against the real
/// kernel, many per cgroup (one pin root, one attach; `set` starts each
/// sequence from a random policy, and every 50th sequence re-attaches).
/// The operations run in-process through the library (as the CLI does),
/// so a few hundred sequences stay fast. After every step: the entries the
/// library reads back and the grant records equal the model (the pure
/// planner fed the same steps), real opens agree with the model, and
/// revoke, set-then-del and del never opened anything that was denied.
/// `CTDEV_KERNEL_SEQUENCES` changes the count (default 300).
#[test]
fn random_sequences_against_the_kernel() {
    use ctdev::grants::{self, Grant, Ledger, Owner, Subject};
    use ctdev::ops::{Config, Ctdev};
    use ctdev::passthrough::{self, AddOptions, PassRequest};
    use ctdev::plan::{self, Entries};
    use ctdev::presets::Preset;
    use ctdev::rule::{parse_rules, Access, Rule};
    use ctdev::target::Target;

    let n: u32 = std::env::var("CTDEV_KERNEL_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let env = TestEnv::new("inv-random");
    let cg = env.cgroup("c");
    let _parked = Parked::in_cgroup(&cg);
    let ct = Ctdev::new(Config {
        pin_root: env.pin_root.clone(),
        ..Config::default()
    })
    .expect("open ctdev");
    let target = Target::Cgroup(cg.clone());
    let id = cg.metadata().unwrap().ino();
    let minors = [3u32, 5, 7, 8];
    let names = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random"];
    let accesses = ["r", "w", "rw", "m", "rwm"];
    // Scratch nodes, one per minor (rules only: the parked process shares
    // the host's mount namespace, so no node is made anywhere).
    let nodes: Vec<_> = minors
        .iter()
        .map(|m| env.node(&format!("n{m}"), DeviceType::Char, 1, *m))
        .collect();
    // `del` of a kept add, in the kernel and in the model: never widens.
    let del_kept = |(kmi, dest): (usize, String), model: &mut Entries, ledger: &mut Ledger| {
        let before = model.clone();
        let req = PassRequest::Node {
            host: nodes[kmi].clone(),
            dest: dest.into(),
        };
        passthrough::del(&ct, &target, &req).expect("del of the kept add");
        let i = ledger.find(Owner::Cli, &req.subject()).expect("recorded");
        let (p, after) = grants::plan_take_back(model, ledger, i);
        *model = p.result(model);
        *ledger = after;
        assert_eq!(plan::widened(&before, model, id, &grid(id)), None);
    };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut ledger = Ledger::new(id);
    let mut model: Entries;
    let random_rules = |rng: &mut Rng| -> Vec<String> {
        let mut out = vec![];
        if rng.below(2) == 0 {
            out.push(format!("c *:* {}", accesses[rng.below(5) as usize]));
        }
        if rng.below(4) == 0 {
            out.push(format!("c 1:* {}", accesses[rng.below(5) as usize]));
        }
        for _ in 0..rng.below(3) {
            let a = if rng.below(4) == 0 {
                "''"
            } else {
                accesses[rng.below(5) as usize]
            };
            out.push(format!("c 1:{} {a}", minors[rng.below(4) as usize]));
        }
        out
    };
    let (mut sequences, mut steps, mut probes) = (0u32, 0u32, 0u32);
    for seq in 0..n {
        sequences += 1;
        if seq % 50 == 0 {
            // (Re-)attach from nothing: records start empty.
            if seq > 0 {
                ct.detach(&target).expect("detach");
            }
            let texts = random_rules(&mut rng);
            let parsed: Vec<Rule> = parse_rules(&texts).unwrap();
            ct.attach(&target, Preset::None, &parsed).expect("attach");
            model = plan::attach_entries(id, &[], &parsed);
            ledger = Ledger::new(id);
        } else {
            // A new sequence starts from a random whole set.
            let texts = random_rules(&mut rng);
            let parsed: Vec<Rule> = parse_rules(&texts).unwrap();
            ct.set_rules(&target, &parsed).expect("set");
            model = plan::merge_rules(id, &parsed);
            ledger = grants::after_set(&ledger);
        }
        // A device added in this sequence and taken back at its end.
        let mut kept: Option<(usize, String)> = None;
        for _ in 0..4 {
            steps += 1;
            let mi = rng.below(4) as usize;
            let acc = accesses[rng.below(5) as usize];
            let rule_text = format!("c 1:{} {acc}", minors[mi]);
            let rule = parse_rules(&[rule_text.as_str()]).unwrap();
            let before = model.clone();
            match rng.below(6) {
                0 => {
                    ct.allow(&target, &rule).expect("allow");
                    let (p, eg) = grants::plan_grant(&model, id, &rule);
                    model = p.result(&model);
                    grants::record(
                        &mut ledger,
                        Grant {
                            owner: Owner::Operator,
                            subject: Subject::Rule {
                                rule: rule[0].to_string(),
                            },
                            entries: eg,
                            nodes: vec![],
                            dirs: vec![],
                            pending: false,
                        },
                    );
                }
                1 => {
                    ct.revoke(&target, &rule, true).expect("revoke");
                    let p = plan::plan_revoke(&model, id, &rule, true).unwrap();
                    model = p.result(&model);
                    grants::forget_revoked(&mut ledger, &p);
                    assert_eq!(plan::widened(&before, &model, id, &grid(id)), None);
                }
                2 => {
                    // A set in the middle: the grants made before own nothing.
                    let texts = random_rules(&mut rng);
                    let parsed: Vec<Rule> = parse_rules(&texts).unwrap();
                    ct.set_rules(&target, &parsed).expect("set");
                    model = plan::merge_rules(id, &parsed);
                    ledger = grants::after_set(&ledger);
                }
                3 if kept.is_none() => {
                    // add, kept until a later step or the sequence's end.
                    let dest = format!("/dev/ctdev-inv-{}", unique("k"));
                    let req = PassRequest::Node {
                        host: nodes[mi].clone(),
                        dest: dest.clone().into(),
                    };
                    let opts = AddOptions {
                        access: Access::parse(acc).unwrap(),
                        ..AddOptions::default()
                    };
                    passthrough::add(&ct, &target, &req, &opts).expect("add");
                    let r = Rule::device(DeviceType::Char, 1, minors[mi], opts.access);
                    let (p, eg) = grants::plan_grant(&model, id, &[r]);
                    model = p.result(&model);
                    grants::record(
                        &mut ledger,
                        Grant {
                            owner: Owner::Cli,
                            subject: req.subject(),
                            entries: eg,
                            nodes: vec![],
                            dirs: vec![],
                            pending: false,
                        },
                    );
                    kept = Some((mi, dest));
                }
                _ => {
                    // add then del at once: the identity.
                    let dest = format!("/dev/ctdev-inv-{steps}");
                    let req = PassRequest::Node {
                        host: nodes[mi].clone(),
                        dest: dest.clone().into(),
                    };
                    let opts = AddOptions {
                        access: Access::parse(acc).unwrap(),
                        ..AddOptions::default()
                    };
                    let rep = passthrough::add(&ct, &target, &req, &opts).expect("add");
                    assert!(rep.rules_only, "no node outside a container");
                    let r = Rule::device(DeviceType::Char, 1, minors[mi], opts.access);
                    let (p, eg) = grants::plan_grant(&model, id, &[r]);
                    let added = p.result(&model);
                    assert_eq!(
                        ct.container(&target).unwrap().entries,
                        added,
                        "entries after add at step {steps}"
                    );
                    assert!(!Path::new(&dest).exists());
                    passthrough::del(&ct, &target, &req).expect("del");
                    grants::record(
                        &mut ledger,
                        Grant {
                            owner: Owner::Cli,
                            subject: req.subject(),
                            entries: eg,
                            nodes: vec![],
                            dirs: vec![],
                            pending: false,
                        },
                    );
                    let i = ledger.find(Owner::Cli, &req.subject()).expect("recorded");
                    let (back, after) = grants::plan_take_back(&added, &ledger, i);
                    assert_eq!(back.result(&added), model, "add+del is the identity");
                    ledger = after;
                }
            }
            // A kept add goes at a random later step.
            if rng.below(3) == 0 {
                if let Some(k) = kept.take() {
                    del_kept(k, &mut model, &mut ledger);
                }
            }
            let state = ct.container(&target).expect("state");
            assert_eq!(
                state.entries, model,
                "entries equal the model after step {steps}"
            );
            let real = ct.grants().load(id).expect("records");
            assert_eq!(
                real.grants
                    .iter()
                    .map(|g| (g.owner, g.subject.clone(), g.entries.clone()))
                    .collect::<Vec<_>>(),
                ledger
                    .grants
                    .iter()
                    .map(|g| (g.owner, g.subject.clone(), g.entries.clone()))
                    .collect::<Vec<_>>(),
                "records equal the model after step {steps}"
            );
            // Real opens agree with the model (one random device per step).
            let i = rng.below(4) as usize;
            let want = plan::decide(&model, id, ctdev_common::DEV_CHAR, 1, minors[i]);
            let (op, bit) = if rng.below(2) == 0 {
                (ProbeOp::read(names[i]), ctdev_common::ACCESS_READ)
            } else {
                (ProbeOp::write(names[i]), ctdev_common::ACCESS_WRITE)
            };
            let got = env.try_op(&cg, &op);
            probes += 1;
            assert_eq!(
                got.is_ok(),
                want & bit != 0,
                "{} {op:?}: kernel {got:?}, model {want:#b}, step {steps}",
                names[i]
            );
        }
        if let Some(k) = kept.take() {
            del_kept(k, &mut model, &mut ledger);
            assert_eq!(ct.container(&target).unwrap().entries, model);
        }
    }
    ct.detach(&target).expect("detach");
    println!(
        "checked {sequences} random sequences ({steps} steps, {probes} kernel probes) against the kernel"
    );
    assert_eq!(sequences, n);
}

fn grid(id: u64) -> Vec<(u32, u32, u32)> {
    let _ = id;
    [3, 5, 7, 8, 9]
        .iter()
        .map(|m| (ctdev_common::DEV_CHAR, 1, *m))
        .collect()
}
