//! Podman 4.3.1 (Debian's podman, with runc and conmon) for
//! real: private storage per test (tests/src/engines.rs), ctdev run on the
//! host against its containers' cgroups (`/…/libpod_parent/libpod-<id>`).

use ctdev_tests::engines::{self, Engine, Podman};
use ctdev_tests::{unique, TestEnv};

#[test]
fn podman_takeover_imports_the_engine_rules_and_add_del_work() {
    let env = TestEnv::new("podman-tk");
    let podman = Podman::start(&engines::inside(&env.cgroup_parent));
    let id = podman.run(&unique("c"));
    engines::takeover_add_del(&env, &podman, &id);
}

#[test]
fn podman_restart_gives_the_container_back_to_the_engine_program() {
    let env = TestEnv::new("podman-rs");
    let podman = Podman::start(&engines::inside(&env.cgroup_parent));
    let id = podman.run(&unique("c"));
    engines::restart_loses_a_manual_takeover(&env, &podman, &id);
}

#[test]
fn podman_daemon_takes_over_hotplugs_and_survives_restart() {
    let env = TestEnv::new("podman-dm");
    let podman = Podman::start(&engines::inside(&env.cgroup_parent));
    let name = unique("c");
    let id = podman.run(&name);
    engines::daemon_takes_over_hotplugs_and_survives_restart(&env, &podman, &id, &name);
}
