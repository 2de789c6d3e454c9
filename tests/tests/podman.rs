//! Podman 4.3.1 (Debian's podman, with conmon and runc or crun) for
//! real: private storage per test (tests/src/engines.rs), ctdev run on the
//! host against its containers' cgroups (`/…/libpod_parent/libpod-<id>`).

use ctdev_tests::engine_tests;
use ctdev_tests::engines::{self, Engine, OneContainer, Podman, PodmanOptions};
use ctdev_tests::runtimes::OciRuntime;

fn crun() -> PodmanOptions {
    PodmanOptions {
        runtime: OciRuntime::Crun,
        ..PodmanOptions::default()
    }
}

engine_tests! {
    Podman::start;
    podman_takeover_imports_the_engine_rules_and_add_del_work("podman-tk") => takeover_add_del;
    podman_restart_gives_the_container_back_to_the_engine_program("podman-rs") => restart_loses_a_manual_takeover;
    podman_daemon_takes_over_hotplugs_and_survives_restart("podman-dm") => daemon_takes_over_hotplugs_and_survives_restart(restarts 3);
}

// Podman with crun as its OCI runtime: `attach --takeover` finds crun's
// state (`/run/crun/<id>/status` → the bundle's config.json) and imports it
// with crun's semantics, add/del work inside; the daemon takes over crun's
// program, hotplug works inside, and after `podman restart` (a new cgroup
// with crun's program again) the daemon takes over again with the devices
// it gave.
engine_tests! {
    |parent: &std::path::Path| Podman::start_with(parent, crun());
    podman_crun_takeover_imports_the_engine_rules_and_add_del_work("podman-crun-tk") => takeover_add_del;
    podman_crun_daemon_takes_over_hotplugs_and_survives_restart("podman-crun-dm") => daemon_takes_over_hotplugs_and_survives_restart(restarts 3);
}

/// A runtime root given to Podman with `--runtime-flag root=DIR` reaches
/// runc through conmon's `--runtime-arg --root=DIR`: ctdev finds runc's
/// state.json there without `--runtime-root`, for the CLI and the daemon.
#[test]
fn podman_runtime_root_passed_through_conmon_is_found() {
    use ctdev_tests::daemon::{wait_until, DaemonProc};
    let root = |parent: &std::path::Path| {
        let options = PodmanOptions {
            runtime_root: true,
            ..PodmanOptions::default()
        };
        Podman::start_with(parent, options)
    };
    let one = OneContainer::start("podman-root", root);
    let (env, podman, id) = (&one.env, &one.engine, &one.id);
    let state = podman.runtime_root().join(id).join("state.json");
    let report = one.takeover_reads_state_in(&podman.runtime_root());
    assert_eq!(report["format"], "runc-state", "{report}");
    assert!(engines::opens_in(podman, id, "/dev/null"));
    env.ok(&["detach", &podman.target(id)]);

    // The daemon finds it the same way.
    let cfg = env.scratch.join("policy.toml");
    std::fs::write(
        &cfg,
        format!(
            "scope = \"{}\"\nresync_interval = 0\n\
             [[container]]\nname = \"pod\"\nselect = {{ runtime = \"podman\", name = \"{id}\" }}\n\
             devices = [{{ path = \"/dev/loop-control\" }}]\n",
            engines::inside(&env.cgroup_parent).display(),
        ),
    )
    .unwrap();
    let mut daemon = DaemonProc::start(env, &cfg);
    wait_until(
        std::time::Duration::from_secs(10),
        "the daemon to take over with the rules of the private runtime root",
        || {
            let view = engines::listed(env, &podman.cgroup_dir(id))?;
            (view["other_programs"] == serde_json::json!([])
                && engines::opens_in(podman, id, "/dev/loop-control"))
            .then_some(())
        },
    );
    assert!(engines::opens_in(podman, id, "/dev/null"));
    let log = daemon.kill();
    assert!(log.contains(&state.display().to_string()), "{log}");
}
