//! Races on one container at one destination: `add` and `del` of the same
//! device from two processes at once, and two `add`s of one device at two
//! destinations, many rounds. After each round the rules, the nodes and the
//! grant records must be exactly what one serial order of the two commands
//! gives, and never wider: no rule is open without a recorded grant that
//! asked for it. (The commands serialise on the container's lock, each
//! holding it for its whole sequence.) No timing is asserted.

use ctdev_tests::container::TestContainer;
use ctdev_tests::race::{finish, spawn, state};
use ctdev_tests::*;

const ROUNDS: usize = 12;
const RULE: &str = "c 202:7 rwm";

/// The container's policy id (from `list --json`).
fn policy_id(env: &TestEnv) -> u64 {
    env.list_json()["containers"][0]["policy_id"]
        .as_u64()
        .expect("policy id listed")
}

#[test]
fn add_and_del_of_one_device_race_to_a_serial_outcome() {
    let env = TestEnv::new("race-adddel");
    let c = TestContainer::attached(&env, "c");
    let cg = c.cgroup_str().to_string();
    let node = env.node("n", DeviceType::Char, 202, 7);
    let dest = "/dev/racer";
    let id = policy_id(&env);
    let mut orders = [0usize; 2];
    for round in 0..ROUNDS {
        // Every other round starts with the device added, so `del` has
        // something to take back whichever runs first.
        let added_before = round % 2 == 1;
        if added_before {
            env.ok(&["add", &cg, s(&node), dest]);
        }
        let add = spawn(&env, &["add", &cg, s(&node), dest]);
        let del = spawn(&env, &["del", &cg, s(&node), dest]);
        let (add_ok, add_err) = finish(add);
        let (del_ok, del_err) = finish(del);
        assert!(add_ok, "round {round}: add failed: {add_err}");
        let (rules, nodes, grants) = state(&env, &c, id, &node, &[dest]);
        // add then del: nothing left (del took back the one grant).
        let add_first = (rules.is_empty(), nodes[0], grants[0]) == (true, false, false);
        // del then add: the device is there, with its grant.
        let del_first = (rules == [RULE], nodes[0], grants[0]) == (true, true, true);
        assert!(
            add_first || del_first,
            "round {round} (added before: {added_before}): not a serial outcome: rules {rules:?}, node {}, grant {}; add: {add_err}; del ok {del_ok}: {del_err}",
            nodes[0],
            grants[0]
        );
        if add_first {
            assert!(
                del_ok,
                "round {round}: del failed yet took the grant back: {del_err}"
            );
        } else if added_before {
            // del took back the earlier add, then add gave it again.
            assert!(del_ok, "round {round}: {del_err}");
        } else {
            // del ran first on nothing: refused, nothing changed.
            assert!(
                !del_ok && del_err.contains("was not added"),
                "round {round}: {del_err}"
            );
        }
        orders[usize::from(del_first)] += 1;
        // Never wider: a rule is open only with the grant that asked for it,
        // and taking that grant back closes it.
        if !rules.is_empty() {
            env.ok(&["del", &cg, s(&node), dest]);
        }
        let (rules, nodes, grants) = state(&env, &c, id, &node, &[dest]);
        assert_eq!(
            (rules, nodes, grants),
            (Vec::<String>::new(), vec![false], vec![false]),
            "round {round}: left after the clean-up"
        );
    }
    // The kernel agrees: the device is closed again.
    assert!(
        c.new_node_denied(dest, 202, 7),
        "c 202:7 still opens after the last del"
    );
    eprintln!("orders seen (add first, del first): {orders:?}");
}

#[test]
fn two_adds_of_one_device_at_two_paths_race_to_a_serial_outcome() {
    let env = TestEnv::new("race-addadd");
    let c = TestContainer::attached(&env, "c");
    let cg = c.cgroup_str().to_string();
    let node = env.node("n", DeviceType::Char, 202, 7);
    let dests = ["/dev/racer-a", "/dev/racer-b"];
    let id = policy_id(&env);
    for round in 0..ROUNDS {
        let a = spawn(&env, &["add", &cg, s(&node), dests[0]]);
        let b = spawn(&env, &["add", &cg, s(&node), dests[1]]);
        let (a_ok, a_err) = finish(a);
        let (b_ok, b_err) = finish(b);
        assert!(a_ok && b_ok, "round {round}: {a_err} / {b_err}");
        // Either order gives both nodes, one rule and two grants.
        assert_eq!(
            state(&env, &c, id, &node, &dests),
            (vec![RULE.to_string()], vec![true, true], vec![true, true]),
            "round {round}: after both adds"
        );
        // Racing the two dels: either order leaves nothing; one alone
        // (checked below, in turn) keeps the rule for the other's node.
        let (first, second) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        env.ok(&["del", &cg, s(&node), dests[first]]);
        let mut want_nodes = vec![true, true];
        want_nodes[first] = false;
        assert_eq!(
            state(&env, &c, id, &node, &dests),
            (vec![RULE.to_string()], want_nodes.clone(), want_nodes),
            "round {round}: the other grant keeps the rule"
        );
        let x = spawn(&env, &["del", &cg, s(&node), dests[second]]);
        let y = spawn(&env, &["add", &cg, s(&node), dests[first]]);
        let (x_ok, x_err) = finish(x);
        let (y_ok, y_err) = finish(y);
        assert!(x_ok && y_ok, "round {round}: {x_err} / {y_err}");
        // Serial outcomes: del then add, or add then del; both leave only
        // `first`'s node, its grant and the rule.
        let mut want_nodes = vec![false, false];
        want_nodes[first] = true;
        assert_eq!(
            state(&env, &c, id, &node, &dests),
            (vec![RULE.to_string()], want_nodes.clone(), want_nodes),
            "round {round}: after del/add raced"
        );
        env.ok(&["del", &cg, s(&node), dests[first]]);
        assert_eq!(
            state(&env, &c, id, &node, &dests),
            (Vec::<String>::new(), vec![false, false], vec![false, false]),
            "round {round}: left after the clean-up"
        );
    }
    assert!(
        c.new_node_denied(dests[0], 202, 7),
        "c 202:7 still opens after the last del"
    );
}
