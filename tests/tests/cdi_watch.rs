//! `ctdev daemon` watches its CDI spec directories: a spec file edited,
//! added or removed while the daemon runs re-applies the policy's
//! `devices = [{ cdi = "…" }]` entries at once (no SIGHUP, no resync: the
//! policy here has `resync_interval = 0`).

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{wait_until, write_policy, DaemonProc, HotLoop};
use ctdev_tests::*;

/// Writes the spec of `example.com/watch=x` with one device node per
/// `(container path, host loop)`.
fn write_spec(path: &Path, nodes: &[(&str, &HotLoop)]) {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(p, l)| format!(r#"{{"path":"{p}","hostPath":"/dev/{}"}}"#, l.name()))
        .collect();
    // Written aside and renamed in, as tools do (IN_MOVED_TO).
    let tmp = path.with_extension("tmp");
    fs::write(
        &tmp,
        format!(
            r#"{{"cdiVersion":"0.5.0","kind":"example.com/watch","devices":[{{"name":"x","containerEdits":{{"deviceNodes":[{}]}}}}]}}"#,
            nodes.join(",")
        ),
    )
    .unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn is_node(c: &TestContainer, inside: &str) -> bool {
    fs::symlink_metadata(c.host_path(inside)).is_ok_and(|m| m.file_type().is_block_device())
}

fn open_op(l: &HotLoop) -> ProbeOp {
    ProbeOp::Open {
        path: PathBuf::from(format!("/dev/{}", l.name())),
        read: true,
        write: true,
    }
}

fn plugged() -> HotLoop {
    let l = HotLoop::add(HotLoop::pick());
    let dev = PathBuf::from(format!("/dev/{}", l.name()));
    wait_until(Duration::from_secs(5), "the loop node on the host", || {
        dev.exists().then_some(())
    });
    l
}

#[test]
fn a_cdi_spec_edited_or_removed_while_the_daemon_runs_applies_at_once() {
    let env = TestEnv::new("cdi-watch");
    let c = TestContainer::start(&env, "a", false);
    let (la, lb) = (plugged(), plugged());
    let specs = env.scratch.join("cdi");
    fs::create_dir_all(&specs).unwrap();
    let spec = specs.join("watch.json");
    write_spec(&spec, &[("/dev/cdi-a", &la)]);
    let cfg = write_policy(
        &env,
        "policy.toml",
        0.0,
        &format!(
            "cdi_dirs = [\"{}\"]\n[[container]]\nname = \"a\"\nselect = {{ target = \"{}\" }}\npreset = \"none\"\ndevices = [{{ cdi = \"example.com/watch=x\" }}]\n",
            specs.display(),
            c.cgroup.display()
        ),
    );
    let daemon = DaemonProc::start(&env, &cfg);
    wait_until(Duration::from_secs(10), "cdi-a in the container", || {
        is_node(&c, "/dev/cdi-a").then_some(())
    });
    c.open_rw("/dev/cdi-a").expect("the CDI node opens");
    assert_denied(&env, &c.cgroup, open_op(&lb));

    // 1. The spec gains a node: the container gets it, without a SIGHUP.
    write_spec(&spec, &[("/dev/cdi-a", &la), ("/dev/cdi-b", &lb)]);
    wait_until(Duration::from_secs(10), "cdi-b after the spec edit", || {
        is_node(&c, "/dev/cdi-b").then_some(())
    });
    c.open_rw("/dev/cdi-b").expect("the new CDI node opens");
    c.open_rw("/dev/cdi-a")
        .expect("the old CDI node still opens");

    // 2. The spec is removed: what it gave is taken back (nodes and rules:
    // fail closed, even through a node made by hand).
    fs::remove_file(&spec).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the nodes gone after the removal",
        || {
            (!c.host_path("/dev/cdi-a").exists() && !c.host_path("/dev/cdi-b").exists())
                .then_some(())
        },
    );
    assert_denied(&env, &c.cgroup, open_op(&la));
    assert_denied(&env, &c.cgroup, open_op(&lb));

    // 3. Added again (a new file, written in place): back at once.
    fs::write(
        specs.join("again.json"),
        format!(
            r#"{{"cdiVersion":"0.5.0","kind":"example.com/watch","devices":[{{"name":"x","containerEdits":{{"deviceNodes":[{{"path":"/dev/cdi-a","hostPath":"/dev/{}"}}]}}}}]}}"#,
            la.name()
        ),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "cdi-a after the spec came back",
        || is_node(&c, "/dev/cdi-a").then_some(()),
    );
    c.open_rw("/dev/cdi-a").expect("the CDI node opens again");
    assert!(!c.host_path("/dev/cdi-b").exists());
    let log = daemon.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}
