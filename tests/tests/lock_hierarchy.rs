//! The pin root's lock hierarchy (issue #18): changes of one container take
//! the root shared and that container's lock exclusive, so changes of
//! different containers run in parallel; global changes (attach, takeover,
//! detach, which may remove the root) take the root exclusive, except the
//! daemon's attach of a new container once the shared program is pinned,
//! which takes that container's lock. These tests
//! race commands as separate processes and through the library in this
//! process, and assert end states only (rules, nodes, grant records, pins):
//! each container ends as one serial order of its own commands leaves it,
//! nothing is open without a recorded grant, and a detach of the last
//! container leaves no pin root behind. No timing is asserted: the test
//! that shows containers do not wait for each other holds one container's
//! lock for as long as it likes and requires another container's `add` to
//! finish meanwhile.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use ctdev::kernel::pins::PinRoot;
use ctdev::ops::{Config, Ctdev};
use ctdev::passthrough::{self, AddOptions, PassRequest};
use ctdev::presets::Preset;
use ctdev::target::Target;
use ctdev_tests::container::TestContainer;
use ctdev_tests::foreign::ForeignProgram;
use ctdev_tests::race::{finish, granted, spawn, spawn_timeout, state};
use ctdev_tests::*;

const ROUNDS: usize = 6;
const RULE: &str = "c 202:7 rwm";

fn policy_id(cgroup: &Path) -> u64 {
    cgroup.metadata().expect("stat the cgroup").ino()
}

/// `add` (or `del`) through the library, as the daemon's lanes run it.
fn in_process(env: &TestEnv, cgroup: &Path, node: &Path, dest: &str, add: bool) {
    let ct = Ctdev::new(Config {
        pin_root: env.pin_root.clone(),
        ..Config::default()
    })
    .expect("open ctdev");
    let target = Target::Cgroup(cgroup.to_path_buf());
    let req = PassRequest::Node {
        host: node.to_path_buf(),
        dest: dest.into(),
    };
    let r = if add {
        passthrough::add(&ct, &target, &req, &AddOptions::default()).map(|_| ())
    } else {
        passthrough::del(&ct, &target, &req).map(|_| ())
    };
    r.unwrap_or_else(|e| panic!("in-process {} {dest}: {e}", if add { "add" } else { "del" }));
}

/// Each container holds the rule (kept by the grants at dests 1 and 3),
/// nodes and grants at dests 1 and 3, nothing at 2.
fn assert_one_and_three(
    env: &TestEnv,
    cs: &[&TestContainer],
    ids: &[u64],
    node: &Path,
    dests: &[&str],
    round: usize,
) {
    for (c, id) in cs.iter().zip(ids) {
        assert_eq!(
            state(env, c, *id, node, dests),
            (
                vec![RULE.to_string()],
                vec![true, false, true],
                vec![true, false, true]
            ),
            "round {round}: {}",
            c.cgroup.display()
        );
    }
}

/// Whether a container lock directory of `id` is left under the pin root.
fn lock_dir_left(env: &TestEnv, id: u64) -> bool {
    env.pin_root.join("locks").join(id.to_string()).exists()
}

/// (a) and (d): adds and dels on two containers at once, from separate
/// processes and from threads of this process: each container ends exactly
/// as its own commands leave it in any serial order.
#[test]
fn lock_two_containers_adds_and_dels_race_to_each_ones_serial_result() {
    let env = TestEnv::new("lock-two");
    let a = TestContainer::attached(&env, "a");
    let b = TestContainer::attached(&env, "b");
    let node = env.node("n", DeviceType::Char, 202, 7);
    let dests = ["/dev/lk-1", "/dev/lk-2", "/dev/lk-3"];
    let cs = [&a, &b];
    let ids = [policy_id(&a.cgroup), policy_id(&b.cgroup)];
    for round in 0..ROUNDS {
        for c in cs {
            env.ok(&["add", c.cgroup_str(), s(&node), dests[1]]);
        }
        // Per container: `add` at 1 and `del` at 2 from processes, `add`
        // at 3 from a thread of this process; all six at once.
        let mut children = Vec::new();
        for c in cs {
            children.push(spawn(&env, &["add", c.cgroup_str(), s(&node), dests[0]]));
            children.push(spawn(&env, &["del", c.cgroup_str(), s(&node), dests[1]]));
        }
        std::thread::scope(|scope| {
            for c in cs {
                let (env, node) = (&env, &node);
                scope.spawn(move || in_process(env, &c.cgroup, node, dests[2], true));
            }
        });
        for child in children {
            let (ok, err) = finish(child);
            assert!(ok, "round {round}: {err}");
        }
        // Whichever order: the rule (kept by the grants at 1 and 3),
        // nodes and grants at 1 and 3, nothing at 2.
        assert_one_and_three(&env, &cs, &ids, &node, &dests, round);
        // Taking both grants back closes the rule in each: never wider.
        for c in cs {
            env.ok(&["del", c.cgroup_str(), s(&node), dests[0]]);
            in_process(&env, &c.cgroup, &node, dests[2], false);
        }
        for (c, id) in cs.iter().zip(ids) {
            assert_eq!(
                state(&env, c, id, &node, &dests),
                (Vec::new(), vec![false; 3], vec![false; 3]),
                "round {round}: left after the clean-up in {}",
                c.cgroup.display()
            );
            assert!(!lock_dir_left(&env, id), "round {round}: lock dir left");
        }
    }
    for c in cs {
        assert!(
            c.new_node_denied(dests[0], 202, 7),
            "c 202:7 still opens in {} after the last del",
            c.cgroup.display()
        );
    }
}

/// `add` (or `del`) through one library handle shared by the caller's
/// threads.
fn through(ct: &Ctdev, cgroup: &Path, node: &Path, dest: &str, add: bool) {
    let target = Target::Cgroup(cgroup.to_path_buf());
    let req = PassRequest::Node {
        host: node.to_path_buf(),
        dest: dest.into(),
    };
    let r = if add {
        passthrough::add(ct, &target, &req, &AddOptions::default()).map(|_| ())
    } else {
        passthrough::del(ct, &target, &req).map(|_| ())
    };
    r.unwrap_or_else(|e| panic!("shared {} {dest}: {e}", if add { "add" } else { "del" }));
}

/// One `Ctdev` shared by threads, as the daemon's lanes share theirs: adds
/// and dels on two containers at once, each resolving its target through
/// its own container lock (the resolution reused under a lock used to be
/// one slot in the handle that every thread overwrote), end as each
/// container's own commands leave it.
#[test]
fn lock_one_handle_shared_by_threads_changes_each_container_as_asked() {
    let env = TestEnv::new("lock-shared");
    let a = TestContainer::attached(&env, "a");
    let b = TestContainer::attached(&env, "b");
    let node = env.node("n", DeviceType::Char, 202, 7);
    let dests = ["/dev/lk-1", "/dev/lk-2", "/dev/lk-3"];
    let cs = [&a, &b];
    let ids = [policy_id(&a.cgroup), policy_id(&b.cgroup)];
    let ct = Ctdev::new(Config {
        pin_root: env.pin_root.clone(),
        ..Config::default()
    })
    .expect("open ctdev");
    for round in 0..ROUNDS {
        for c in cs {
            through(&ct, &c.cgroup, &node, dests[1], true);
        }
        std::thread::scope(|scope| {
            for c in cs {
                let (ct, node) = (&ct, &node);
                scope.spawn(move || through(ct, &c.cgroup, node, dests[0], true));
                scope.spawn(move || through(ct, &c.cgroup, node, dests[1], false));
                scope.spawn(move || through(ct, &c.cgroup, node, dests[2], true));
            }
        });
        assert_one_and_three(&env, &cs, &ids, &node, &dests, round);
        std::thread::scope(|scope| {
            for c in cs {
                for dest in [dests[0], dests[2]] {
                    let (ct, node) = (&ct, &node);
                    scope.spawn(move || through(ct, &c.cgroup, node, dest, false));
                }
            }
        });
        for (c, id) in cs.iter().zip(ids) {
            assert_eq!(
                state(&env, c, id, &node, &dests),
                (Vec::new(), vec![false; 3], vec![false; 3]),
                "round {round}: left after the clean-up in {}",
                c.cgroup.display()
            );
        }
    }
}

/// One round of the (b) races: `a` attached, then `add` of `node` at
/// `dest` and `detach` of `a` started together. The detach always
/// succeeds; the add either succeeded or found nothing under policy.
/// Returns whether the add succeeded.
fn race_add_and_detach(
    env: &TestEnv,
    a: &TestContainer,
    node: &Path,
    dest: &str,
    round: usize,
) -> bool {
    env.ok(&["attach", a.cgroup_str(), "--preset", "none"]);
    let add = spawn(env, &["add", a.cgroup_str(), s(node), dest]);
    let detach = spawn(env, &["detach", a.cgroup_str()]);
    let (add_ok, add_err) = finish(add);
    let (detach_ok, detach_err) = finish(detach);
    assert!(detach_ok, "round {round}: detach: {detach_err}");
    assert!(
        add_ok || add_err.contains("not under ctdev policy"),
        "round {round}: add failed otherwise: {add_err}"
    );
    add_ok
}

/// (b): `add` on A racing `detach` of A (B keeps the root): the detach
/// always succeeds, and the add either ran before it or found nothing.
#[test]
fn lock_an_add_racing_the_detach_of_its_container_ends_serially() {
    let env = TestEnv::new("lock-detach");
    let a = TestContainer::start(&env, "a", false);
    let b = TestContainer::attached(&env, "b");
    let node = env.node("n", DeviceType::Char, 202, 7);
    let dest = "/dev/lk-d";
    let id = policy_id(&a.cgroup);
    let mut orders = [0usize; 2];
    for round in 0..ROUNDS {
        let add_ok = race_add_and_detach(&env, &a, &node, dest, round);
        // Nothing of A is left in the policy, the grants or the locks.
        assert!(listed_rules(&env, &a.cgroup).is_none(), "round {round}");
        assert_eq!(granted(&env, id, &node, &[dest]), [false], "round {round}");
        assert!(!lock_dir_left(&env, id), "round {round}: lock dir left");
        // A failed add made nothing; B is untouched.
        let made = a.host_path(dest).exists();
        assert!(add_ok || !made, "round {round}: a refused add made {dest}");
        assert_eq!(rules_of(&env, &b.cgroup), Vec::<String>::new());
        if made {
            std::fs::remove_file(a.host_path(dest)).expect("remove the node");
        }
        orders[usize::from(add_ok)] += 1;
    }
    eprintln!("orders seen (detach first, add first): {orders:?}");
}

/// (b): `add` on the last container racing its `detach`, which removes the
/// pin root: the root is gone afterwards whichever ran first (a waiting
/// add never creates it again), and nothing is left in the state.
#[test]
fn lock_an_add_racing_the_detach_of_the_last_container_leaves_no_pin_root() {
    let env = TestEnv::new("lock-last");
    let a = TestContainer::start(&env, "a", false);
    let node = env.node("n", DeviceType::Char, 202, 7);
    let dest = "/dev/lk-l";
    let id = policy_id(&a.cgroup);
    for round in 0..ROUNDS {
        let add_ok = race_add_and_detach(&env, &a, &node, dest, round);
        assert!(
            !env.pin_root.exists(),
            "round {round}: pin root left after the last detach (add ok {add_ok})"
        );
        assert_eq!(granted(&env, id, &node, &[dest]), [false], "round {round}");
        let made = a.host_path(dest).exists();
        assert!(add_ok || !made, "round {round}: a refused add made {dest}");
        if made {
            std::fs::remove_file(a.host_path(dest)).expect("remove the node");
        }
    }
}

/// (c): `add` and `del` on A racing the attach of a new container B and a
/// takeover of C (both global changes): A ends as its serial result, B and
/// C are attached with their rules.
#[test]
fn lock_adds_racing_an_attach_and_a_takeover_end_serially() {
    let env = TestEnv::new("lock-attach");
    let a = TestContainer::attached(&env, "a");
    let node = env.node("n", DeviceType::Char, 202, 7);
    let dests = ["/dev/lk-a1", "/dev/lk-a2"];
    let id = policy_id(&a.cgroup);
    let config = env.scratch.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"linux": {"resources": {"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}
        ]}}})
        .to_string(),
    )
    .expect("write config.json");
    let mut foreign = Vec::new();
    for round in 0..ROUNDS {
        let b = env.cgroup(&format!("b{round}"));
        let c = env.cgroup(&format!("c{round}"));
        foreign.push(ForeignProgram::deny_char(&c, 1, 5));
        env.ok(&["add", a.cgroup_str(), s(&node), dests[1]]);
        let children = vec![
            spawn(&env, &["add", a.cgroup_str(), s(&node), dests[0]]),
            spawn(&env, &attach_args(&b, &["c 1:3 rw"])),
            spawn(
                &env,
                &["attach", s(&c), "--takeover", "--import", s(&config)],
            ),
            spawn(&env, &["del", a.cgroup_str(), s(&node), dests[1]]),
        ];
        for child in children {
            let (ok, err) = finish(child);
            assert!(ok, "round {round}: {err}");
        }
        assert_eq!(
            state(&env, &a, id, &node, &dests),
            (vec![RULE.to_string()], vec![true, false], vec![true, false]),
            "round {round}: A"
        );
        assert_eq!(rules_of(&env, &b), ["c 1:3 rw"], "round {round}: B");
        let c_rules = rules_of(&env, &c);
        assert!(
            c_rules.iter().any(|r| r == "c 1:3 rwm"),
            "round {round}: C took over: {c_rules:?}"
        );
        env.ok(&["del", a.cgroup_str(), s(&node), dests[0]]);
        assert_eq!(
            state(&env, &a, id, &node, &dests),
            (Vec::new(), vec![false, false], vec![false, false]),
            "round {round}: A after the clean-up"
        );
    }
    assert!(a.new_node_denied(dests[0], 202, 7), "c 202:7 still opens");
}

/// (a) without timing: while this process holds A's lock, B's `add` (a
/// separate process) finishes, and A's `add`, an attach and a detach are
/// busy and change nothing; while it holds the root lock, B's `add` is busy
/// too. Released, all of them work.
#[test]
fn lock_held_for_one_container_holds_up_it_and_global_changes_only() {
    let env = TestEnv::new("lock-held");
    let a = TestContainer::attached(&env, "a");
    let b = TestContainer::attached(&env, "b");
    let c = env.cgroup("c");
    let node = env.node("n", DeviceType::Char, 202, 7);
    let dest = "/dev/lk-h";
    let (ida, idb) = (policy_id(&a.cgroup), policy_id(&b.cgroup));
    let pins = PinRoot::new(&env.pin_root);
    let busy = |args: &[&str], what: &str| {
        let (ok, err) = finish(spawn_timeout(&env, 1, args));
        assert!(!ok && err.contains("busy"), "{what} was not busy: {err}");
    };
    {
        let held = pins
            .lock_container(ida, Duration::from_secs(10))
            .expect("lock A");
        assert!(lock_dir_left(&env, ida), "A's lock directory while held");
        // B does not wait for A.
        let (ok, err) = finish(spawn(&env, &["add", b.cgroup_str(), s(&node), dest]));
        assert!(ok, "add to B while A is locked: {err}");
        busy(&["add", a.cgroup_str(), s(&node), dest], "add to A");
        busy(&attach_args(&c, &[]), "attach of C");
        busy(&["detach", b.cgroup_str()], "detach of B");
        drop(held);
    }
    assert!(
        !lock_dir_left(&env, ida),
        "A's lock directory after release"
    );
    assert_eq!(
        state(&env, &a, ida, &node, &[dest]),
        (Vec::new(), vec![false], vec![false]),
        "the busy add changed A"
    );
    assert_eq!(
        state(&env, &b, idb, &node, &[dest]),
        (vec![RULE.to_string()], vec![true], vec![true]),
        "B after its add"
    );
    assert!(
        listed_rules(&env, &c).is_none(),
        "the busy attach attached C"
    );
    {
        let _root = pins.lock(Duration::from_secs(10)).expect("lock the root");
        busy(&["del", b.cgroup_str(), s(&node), dest], "del in B");
    }
    assert_eq!(rules_of(&env, &b.cgroup), [RULE], "the busy del changed B");
    env.ok(&["add", a.cgroup_str(), s(&node), dest]);
    env.attach_rules(&c, &[]);
    for cg in [&a.cgroup, &b.cgroup, &c] {
        env.ok(&["detach", s(cg)]);
    }
    assert!(
        !env.pin_root.exists(),
        "pin root left after the last detach"
    );
}

/// The daemon's attach of a new container (`ensure_attached`, once the
/// shared program is pinned) takes that container's lock, not the root
/// lock (its wait for the kernel's cgroup lock no longer holds up every
/// other container's add): it finishes while another container's lock is
/// held, and is busy, attaching nothing, while the root lock is held.
/// Attaches of several new containers from threads of one handle, beside
/// adds and dels in an attached container, all land: each new container
/// is enforcing its preset alone, and the adds end as asked. The same for
/// the daemon's detach; the last one's cleanup removes the pin root.
#[test]
fn lock_daemon_attach_of_a_new_container_takes_its_own_lock() {
    let env = TestEnv::new("lock-own-attach");
    // Its attach (CLI, root lock) pins the shared program.
    let a = TestContainer::attached(&env, "a");
    let ida = policy_id(&a.cgroup);
    let node = env.node("n", DeviceType::Char, 202, 7);
    let pins = PinRoot::new(&env.pin_root);
    let ct = Ctdev::new(Config {
        pin_root: env.pin_root.clone(),
        lock_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .expect("open ctdev");
    let attach = |cg: &Path| {
        ct.ensure_attached(&Target::Cgroup(cg.to_path_buf()), Preset::None)
            .map_err(|e| e.to_string())
    };

    let b = env.cgroup("b");
    {
        let _held = pins
            .lock_container(ida, Duration::from_secs(10))
            .expect("lock A");
        let report = attach(&b).expect("attach B while A is locked");
        assert!(!report.already_attached, "{report:?}");
    }
    let c = env.cgroup("c");
    {
        let _root = pins.lock(Duration::from_secs(10)).expect("lock the root");
        let err = attach(&c).expect_err("attach of C under the root lock");
        assert!(err.contains("busy"), "{err}");
    }
    assert!(
        listed_rules(&env, &c).is_none(),
        "the busy attach attached C"
    );

    let news: Vec<_> = (0..6).map(|i| env.cgroup(&format!("n{i}"))).collect();
    std::thread::scope(|scope| {
        for cg in news.iter().chain([&c]) {
            let attach = &attach;
            scope.spawn(move || {
                let r = attach(cg).unwrap_or_else(|e| panic!("attach {}: {e}", cg.display()));
                assert!(!r.already_attached, "{r:?}");
            });
        }
        let (ct, node, a) = (&ct, &node, &a);
        scope.spawn(move || {
            for _ in 0..3 {
                through(ct, &a.cgroup, node, "/dev/lk-o", true);
                through(ct, &a.cgroup, node, "/dev/lk-o", false);
            }
            through(ct, &a.cgroup, node, "/dev/lk-o", true);
        });
    });
    for cg in news.iter().chain([&b, &c]) {
        assert_eq!(
            listed_rules(&env, cg),
            Some(("enforcing".to_string(), Vec::new())),
            "{}",
            cg.display()
        );
        assert_denied(&env, cg, ProbeOp::read("/dev/null"));
        // Attached once: the same call again finds it.
        assert!(attach(cg).expect("attach again").already_attached);
    }
    assert_eq!(
        state(&env, &a, ida, &node, &["/dev/lk-o"]),
        (vec![RULE.to_string()], vec![true], vec![true]),
        "A after its adds"
    );

    // The daemon's detach (`detach_under_own_lock`) takes the container's
    // lock too: B's finishes while A is locked; the others race each
    // other and A's dels; the last one's cleanup removes the pin root.
    let detach = |cg: &Path| {
        ct.detach_under_own_lock(&Target::Cgroup(cg.to_path_buf()))
            .map_err(|e| e.to_string())
    };
    {
        let _held = pins
            .lock_container(ida, Duration::from_secs(10))
            .expect("lock A");
        detach(&b).expect("detach B while A is locked");
    }
    assert!(listed_rules(&env, &b).is_none(), "B after its detach");
    std::thread::scope(|scope| {
        for cg in news.iter().chain([&c]) {
            let detach = &detach;
            scope.spawn(move || {
                detach(cg).unwrap_or_else(|e| panic!("detach {}: {e}", cg.display()))
            });
        }
        let (ct, node, a) = (&ct, &node, &a);
        scope.spawn(move || through(ct, &a.cgroup, node, "/dev/lk-o", false));
    });
    for cg in news.iter().chain([&c]) {
        assert!(listed_rules(&env, cg).is_none(), "{}", cg.display());
        assert_allowed(&env, cg, ProbeOp::read("/dev/null"));
    }
    assert!(
        env.pin_root.exists(),
        "pin root removed while A is attached"
    );
    detach(&a.cgroup).expect("detach A");
    assert!(
        !env.pin_root.exists(),
        "pin root left after the last detach"
    );
}
