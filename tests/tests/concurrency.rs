//! Concurrency: 16 ctdev processes at once adding and revoking different
//! rules and devices on the same container and on different ones. Every rule
//! that should be there is, none that should not; nobody deadlocks (every
//! process is waited for with a deadline); "busy" only when the lock is held
//! past --lock-timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctdev_tests::container::TestContainer;
use ctdev_tests::*;

/// Starts `ctdev --pin-root ROOT ARGS` (a sequence of commands run one
/// after the other by a shell, stopping at the first failure).
fn spawn_seq(env: &TestEnv, cmds: &[Vec<String>]) -> Child {
    let bin = ctdev_bin();
    let mut script = String::from("set -e\n");
    for c in cmds {
        script.push_str(&format!(
            "'{}' --pin-root '{}' --lock-timeout 60",
            bin.display(),
            env.pin_root.display()
        ));
        for a in c {
            script.push_str(&format!(" '{a}'"));
        }
        script.push('\n');
    }
    Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

/// Waits for every child, failing (after killing the rest) if one takes
/// longer than `deadline` in total or fails.
fn wait_all(children: Vec<Child>, deadline: Duration) {
    let start = Instant::now();
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    loop {
        let mut running = 0;
        for slot in children.iter_mut() {
            let Some(child) = slot else { continue };
            match child.try_wait().expect("try_wait") {
                Some(status) => {
                    let out = slot.take().unwrap().wait_with_output().expect("output");
                    assert!(
                        status.success(),
                        "a concurrent ctdev failed: {status}\nstdout: {}\nstderr: {}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                None => running += 1,
            }
        }
        if running == 0 {
            return;
        }
        if start.elapsed() > deadline {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
            }
            panic!("{running} ctdev process(es) still running after {deadline:?}: deadlock?");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The rules listed for the container at `cg`, sorted (it must be listed).
fn sorted_rules(env: &TestEnv, cg: &Path) -> Vec<String> {
    let (_, mut rules) =
        listed_rules(env, cg).unwrap_or_else(|| panic!("{} not listed", cg.display()));
    rules.sort();
    rules
}

fn w(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sixteen_processes_on_one_container() {
    let (env, cg) = TestEnv::with_attached("conc-one", "c", &[]);
    let c = s(&cg).to_string();
    // Process i allows c 200:i rw and b 7:i r; the even ones then revoke
    // their char rule again.
    let mut children = Vec::new();
    for i in 0..16 {
        let mut cmds = vec![
            w(&["allow", &c, &format!("c 200:{i} rw")]),
            w(&["allow", &c, &format!("b 7:{i} r")]),
        ];
        if i % 2 == 0 {
            cmds.push(w(&["revoke", &c, &format!("c 200:{i}")]));
        }
        children.push(spawn_seq(&env, &cmds));
    }
    wait_all(children, Duration::from_secs(120));
    let mut want: Vec<String> = (0..16)
        .flat_map(|i| {
            let mut v = vec![format!("b 7:{i} r")];
            if i % 2 == 1 {
                v.push(format!("c 200:{i} rw"));
            }
            v
        })
        .collect();
    want.sort();
    assert_eq!(sorted_rules(&env, &cg), want);
    // The kernel agrees on a sample.
    let odd = env.node("odd", DeviceType::Char, 200, 3);
    let even = env.node("even", DeviceType::Char, 200, 4);
    assert_not_denied(&env, &cg, ProbeOp::read(&odd));
    assert_denied(&env, &cg, ProbeOp::read(&even));
}

#[test]
fn sixteen_processes_on_sixteen_containers() {
    let env = TestEnv::new("conc-many");
    let cgs: Vec<PathBuf> = (0..16).map(|i| env.cgroup(&format!("c{i}"))).collect();
    // All start from a pin root that does not exist yet: the first attaches
    // race to create it and the maps.
    let children: Vec<Child> = cgs
        .iter()
        .enumerate()
        .map(|(i, cg)| {
            let c = s(cg).to_string();
            let mut cmds = vec![
                w(&[
                    "attach",
                    &c,
                    "--preset",
                    "none",
                    "--rule",
                    &format!("c 1:{} r", 3 + (i % 2) * 2),
                ]),
                w(&["allow", &c, &format!("c 201:{i} rw"), "c 1:7 r"]),
                w(&["revoke", &c, "c 1:7"]),
            ];
            if i % 4 == 3 {
                cmds.push(w(&["detach", &c]));
            }
            spawn_seq(&env, &cmds)
        })
        .collect();
    wait_all(children, Duration::from_secs(180));
    let dump = env.list_json();
    assert_eq!(dump["containers"].as_array().unwrap().len(), 12, "{dump}");
    assert_eq!(dump["orphaned"], serde_json::json!([]));
    for (i, cg) in cgs.iter().enumerate() {
        if i % 4 == 3 {
            assert_allowed(&env, cg, ProbeOp::read("/dev/null"));
            continue;
        }
        let mut want = vec![
            format!("c 1:{} r", 3 + (i % 2) * 2),
            format!("c 201:{i} rw"),
        ];
        want.sort();
        assert_eq!(sorted_rules(&env, cg), want, "container {i}");
        assert_denied(&env, cg, ProbeOp::read("/dev/full"));
    }
    assert_eq!(dump["policy_map"]["entries"], 24);
}

#[test]
fn concurrent_add_del_and_allow_revoke_on_one_container() {
    let env = TestEnv::new("conc-add");
    let c = TestContainer::attached(&env, "c");
    let cg = c.cgroup_str().to_string();
    let mut children = Vec::new();
    for i in 0..8u32 {
        let node = env.node(&format!("n{i}"), DeviceType::Char, 202, i);
        let node = s(&node).to_string();
        let dest = format!("/dev/n{i}");
        let mut cmds = vec![w(&["add", &cg, &node, &dest])];
        if i % 2 == 0 {
            cmds.push(w(&["del", &cg, &node, &dest]));
        }
        children.push(spawn_seq(&env, &cmds));
    }
    for i in 0..8u32 {
        let mut cmds = vec![w(&["allow", &cg, &format!("c 203:{i} r")])];
        if i % 2 == 0 {
            cmds.push(w(&["revoke", &cg, &format!("c 203:{i} r")]));
        }
        children.push(spawn_seq(&env, &cmds));
    }
    wait_all(children, Duration::from_secs(180));
    let mut want: Vec<String> = (0..8)
        .filter(|i| i % 2 == 1)
        .flat_map(|i| [format!("c 202:{i} rwm"), format!("c 203:{i} r")])
        .collect();
    want.sort();
    assert_eq!(sorted_rules(&env, &c.cgroup), want);
    for i in 0..8 {
        let there = c.host_path(&format!("/dev/n{i}")).exists();
        assert_eq!(there, i % 2 == 1, "/dev/n{i}");
    }
}

#[test]
fn busy_only_when_the_lock_is_held_past_the_timeout() {
    use nix::fcntl::{Flock, FlockArg};
    let (env, cg) = TestEnv::with_attached("conc-busy", "c", &[]);
    let before = env.list_json();
    // Hold the lock as another ctdev would.
    let dir = std::fs::File::open(&env.pin_root).unwrap();
    let held = Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let start = Instant::now();
    let r = env.ctdev(&["--lock-timeout", "0.5", "allow", s(&cg), "c 1:3 r"]);
    let took = start.elapsed();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("busy"), "{}", r.stderr);
    assert!(
        r.stderr.contains(s(&env.pin_root)),
        "names the pin root: {}",
        r.stderr
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(env.list_json(), before, "a busy allow changes nothing");
    // Released while a ctdev waits within its timeout: it goes through.
    let waiter = spawn_seq(&env, &[w(&["allow", s(&cg), "c 1:3 r"])]);
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    wait_all(vec![waiter], Duration::from_secs(30));
    assert_eq!(sorted_rules(&env, &cg), ["c 1:3 r"]);
    // list takes no lock: it works while the lock is held.
    let dir = std::fs::File::open(&env.pin_root).unwrap();
    let _held = Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    env.ok(&["--lock-timeout", "0", "list"]);
}
