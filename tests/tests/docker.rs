//! Docker Engine 20.10 (Debian's docker.io: dockerd, containerd, runc) for
//! real: a private dockerd per test (tests/src/engines.rs), ctdev run on the
//! host against its containers' cgroups (`/…/docker/<id>`).

use ctdev_tests::engines::{self, Docker, Engine};
use ctdev_tests::{unique, TestEnv};

#[test]
fn docker_takeover_imports_the_engine_rules_and_add_del_work() {
    let env = TestEnv::new("docker-tk");
    let docker = Docker::start(&engines::inside(&env.cgroup_parent));
    let id = docker.run(&unique("c"));
    engines::takeover_add_del(&env, &docker, &id);
}

#[test]
fn docker_restart_gives_the_container_back_to_the_engine_program() {
    let env = TestEnv::new("docker-rs");
    let docker = Docker::start(&engines::inside(&env.cgroup_parent));
    let id = docker.run(&unique("c"));
    engines::restart_loses_a_manual_takeover(&env, &docker, &id);
}

#[test]
fn docker_daemon_takes_over_hotplugs_and_survives_restart() {
    let env = TestEnv::new("docker-dm");
    let docker = Docker::start(&engines::inside(&env.cgroup_parent));
    let name = unique("c");
    let id = docker.run(&name);
    engines::daemon_takes_over_hotplugs_and_survives_restart(&env, &docker, &id, &name, 5);
}

#[test]
fn docker_daemon_replace_keeps_only_the_policy() {
    let env = TestEnv::new("docker-rp");
    let docker = Docker::start(&engines::inside(&env.cgroup_parent));
    let id = docker.run(&unique("c"));
    engines::daemon_replace_keeps_only_the_policy(&env, &docker, &id);
}

#[test]
fn docker_runc_state_is_found_under_the_exec_root() {
    let env = TestEnv::new("docker-root");
    let docker = Docker::start(&engines::inside(&env.cgroup_parent));
    let id = docker.run(&unique("c"));
    let state = docker.runc_root().join(&id).join("state.json");
    assert!(state.is_file(), "{}", state.display());
    let roots = ctdev::runtimes::discover::runc_state_roots();
    assert!(roots.contains(&docker.runc_root()), "{roots:?}");
    let report: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "attach", &docker.target(&id), "--takeover"]))
            .unwrap();
    assert_eq!(report["source"], state.to_str().unwrap(), "{report}");
}
