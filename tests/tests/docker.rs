//! Docker Engine 20.10 (Debian's docker.io: dockerd, containerd, runc) for
//! real: a private dockerd per test (tests/src/engines.rs), ctdev run on the
//! host against its containers' cgroups (`/…/docker/<id>`).

use ctdev_tests::engine_tests;
use ctdev_tests::engines::{Docker, OneContainer};

engine_tests! {
    Docker::start;
    docker_takeover_imports_the_engine_rules_and_add_del_work("docker-tk") => takeover_add_del;
    docker_restart_gives_the_container_back_to_the_engine_program("docker-rs") => restart_loses_a_manual_takeover;
    docker_daemon_takes_over_hotplugs_and_survives_restart("docker-dm") => daemon_takes_over_hotplugs_and_survives_restart(restarts 5);
    docker_daemon_replace_keeps_only_the_policy("docker-rp") => daemon_replace_keeps_only_the_policy;
}

#[test]
fn docker_runc_state_is_found_under_the_exec_root() {
    let one = OneContainer::start("docker-root", Docker::start);
    one.takeover_reads_state_in(&one.engine.runc_root());
}
