//! Podman 4.3.1 (Debian's podman, with conmon and runc or crun) for
//! real: private storage per test (tests/src/engines.rs), ctdev run on the
//! host against its containers' cgroups (`/…/libpod_parent/libpod-<id>`).

use ctdev_tests::engines::{self, Engine, Podman, PodmanOptions};
use ctdev_tests::runtimes::OciRuntime;
use ctdev_tests::{unique, TestEnv};

fn crun() -> PodmanOptions {
    PodmanOptions {
        runtime: OciRuntime::Crun,
        ..PodmanOptions::default()
    }
}

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
    engines::daemon_takes_over_hotplugs_and_survives_restart(&env, &podman, &id, &name, 3);
}

/// Podman with crun as its OCI runtime: `attach --takeover` finds crun's
/// state (`/run/crun/<id>/status` → the bundle's config.json) and imports
/// it with crun's semantics; add/del work inside.
#[test]
fn podman_crun_takeover_imports_the_engine_rules_and_add_del_work() {
    let env = TestEnv::new("podman-crun-tk");
    let podman = Podman::start_with(&engines::inside(&env.cgroup_parent), crun());
    let id = podman.run(&unique("c"));
    engines::takeover_add_del(&env, &podman, &id);
}

/// Podman with crun: the daemon takes over crun's program, hotplug works
/// inside, and after `podman restart` (a new cgroup with crun's program
/// again) the daemon takes over again with the devices it gave.
#[test]
fn podman_crun_daemon_takes_over_hotplugs_and_survives_restart() {
    let env = TestEnv::new("podman-crun-dm");
    let podman = Podman::start_with(&engines::inside(&env.cgroup_parent), crun());
    let name = unique("c");
    let id = podman.run(&name);
    engines::daemon_takes_over_hotplugs_and_survives_restart(&env, &podman, &id, &name, 3);
}

/// A runtime root given to Podman with `--runtime-flag root=DIR` reaches
/// runc through conmon's `--runtime-arg --root=DIR`: ctdev finds runc's
/// state.json there without `--runtime-root`, for the CLI and the daemon.
#[test]
fn podman_runtime_root_passed_through_conmon_is_found() {
    use ctdev_tests::daemon::{wait_until, DaemonProc};
    let env = TestEnv::new("podman-root");
    let podman = Podman::start_with(
        &engines::inside(&env.cgroup_parent),
        PodmanOptions {
            runtime_root: true,
            ..PodmanOptions::default()
        },
    );
    let id = podman.run(&unique("c"));
    let state = podman.runtime_root().join(&id).join("state.json");
    assert!(state.is_file(), "{}", state.display());
    let roots = ctdev::runtimes::discover::runc_state_roots();
    assert!(roots.contains(&podman.runtime_root()), "{roots:?}");
    let report: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "attach", &podman.target(&id), "--takeover"]))
            .unwrap();
    assert_eq!(report["source"], state.to_str().unwrap(), "{report}");
    assert_eq!(report["format"], "runc-state", "{report}");
    assert!(engines::opens_in(&podman, &id, "/dev/null"));
    env.ok(&["detach", &podman.target(&id)]);

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
    let mut daemon = DaemonProc::start(&env, &cfg);
    wait_until(
        std::time::Duration::from_secs(10),
        "the daemon to take over with the rules of the private runtime root",
        || {
            let view = engines::listed(&env, &podman.cgroup_dir(&id))?;
            (view["other_programs"] == serde_json::json!([])
                && engines::opens_in(&podman, &id, "/dev/loop-control"))
            .then_some(())
        },
    );
    assert!(engines::opens_in(&podman, &id, "/dev/null"));
    let log = daemon.kill();
    assert!(log.contains(&state.display().to_string()), "{log}");
}
