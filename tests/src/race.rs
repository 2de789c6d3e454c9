//! What the race tests share (`add_race`, `lock_*`): ctdev commands started
//! together as separate processes, and the grant records they leave.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use ctdev::grants::{Owner, Store, Subject};

use crate::container::TestContainer;
use crate::{ctdev_bin, rules_of, s, TestEnv};

/// `ctdev --pin-root ROOT --lock-timeout 60 ARGS` started now (not waited
/// for), so several race for the locks.
pub fn spawn(env: &TestEnv, args: &[&str]) -> Child {
    spawn_timeout(env, 60, args)
}

/// [`spawn`] with `--lock-timeout SECS`.
pub fn spawn_timeout(env: &TestEnv, secs: u32, args: &[&str]) -> Child {
    Command::new(ctdev_bin())
        .arg("--pin-root")
        .arg(&env.pin_root)
        .args(["--lock-timeout", &secs.to_string()])
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctdev")
}

/// Exit success and stderr of a started ctdev.
pub fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().expect("wait for ctdev");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI grants recorded in container `id` for `node` at each of `dests`.
pub fn granted(env: &TestEnv, id: u64, node: &Path, dests: &[&str]) -> Vec<bool> {
    let ledger = Store::new(&env.pin_root, None)
        .load(id)
        .expect("grant records readable");
    dests
        .iter()
        .map(|d| {
            let subject = Subject::Device {
                device: s(node).to_string(),
                dest: d.to_string(),
            };
            ledger.find(Owner::Cli, &subject).is_some()
        })
        .collect()
}

/// The state after a round: the container's rules, which of `dests` hold
/// a node, and which have a grant.
pub fn state(
    env: &TestEnv,
    c: &TestContainer,
    id: u64,
    node: &Path,
    dests: &[&str],
) -> (Vec<String>, Vec<bool>, Vec<bool>) {
    let nodes = dests.iter().map(|d| c.host_path(d).exists()).collect();
    (
        rules_of(env, &c.cgroup),
        nodes,
        granted(env, id, node, dests),
    )
}
