//! `ctdev nri` against a real containerd 1.7 with NRI, pods and containers
//! created through the real CRI API: devices given at start under ctdev's
//! policy (runc's program replaced before the workload runs), requests
//! outside the policy refused, hot-plug into running pod containers, pod
//! names in `list` and `k8s:` targets, and the plugin or containerd
//! restarting.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ctdev_tests::container::LoopDevice;
use ctdev_tests::containerd::{eventually, Containerd, NriPlugin, Pod};
use ctdev_tests::{ctdev_bin, TestEnv};

const ANNOTATION: &str = "devices.ctdev.io/container.work";

/// One test's world: a TestEnv (pin root, parent cgroup), a containerd whose
/// pods live under that cgroup, the policy file and the plugin's state dir.
struct World {
    // Dropped first: pods stopped and containerd gone before the env's
    // cgroups and pins are removed.
    containerd: Containerd,
    env: TestEnv,
    policy: PathBuf,
    state: PathBuf,
}

impl World {
    fn new(name: &str) -> World {
        let env = TestEnv::new(name);
        // `kubepods/pod…` in the path: how kubelet's cgroupfs layout looks,
        // and what the `containerd:ID` resolver recognises.
        let parent = format!("/{}/kubepods/podtest", env.name);
        let containerd = Containerd::start(name, &parent);
        let state = env.scratch.join("nri-state");
        let policy = env.scratch.join("nri.toml");
        fs::write(
            &policy,
            format!(
                r#"
runtime_roots = ["{}"]

[[container]]
name = "ci-loops"
namespace = "ci"
allow = ["/dev/loop-control", "/dev/loop[0-9]*", "b 7:* rw"]

[[container]]
name = "locked"
namespace = "locked"
"#,
                containerd.runc_root.display()
            ),
        )
        .expect("write policy");
        World {
            env,
            containerd,
            policy,
            state,
        }
    }

    fn plugin(&self) -> NriPlugin {
        let p = NriPlugin::start(
            &self.env.pin_root,
            &self.containerd.nri_sock,
            &self.policy,
            &self.state,
        );
        p.wait_registered(1);
        p
    }

    /// ctdev with the plugin's state dir (for `k8s:` targets and pod names).
    fn ctdev(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(ctdev_bin())
            .arg("--pin-root")
            .arg(&self.env.pin_root)
            .args(args)
            .env("CTDEV_NRI_STATE_DIR", &self.state)
            .env_remove("RUST_LOG")
            .output()
            .expect("run ctdev");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ctdev(args);
        assert_eq!(code, 0, "ctdev {args:?} failed:\n{out}\n{err}");
        out
    }

    /// The `list --json` entry of a container, if ctdev enforces on it.
    fn listed(&self, container: &str) -> Option<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["list", "--json"])).expect("list --json");
        let cgroup = self.containerd.cgroup_of(container);
        v["containers"]
            .as_array()?
            .iter()
            .find(|c| c["cgroup"].as_str() == Some(cgroup.as_str()))
            .cloned()
    }

    fn events(&self) -> String {
        fs::read_to_string(self.state.join("events.jsonl")).unwrap_or_default()
    }

    fn pod(&mut self, ns: &str, name: &str, request: Option<&str>) -> Pod {
        let ann: Vec<(&str, &str)> = request.map(|r| (ANNOTATION, r)).into_iter().collect();
        self.containerd.run_pod(ns, name, &ann)
    }

    /// Requires that ctdev enforces on `container` alone: listed, enforcing,
    /// no other device program (runc's is gone).
    #[track_caller]
    fn assert_enforced(&self, container: &str) -> serde_json::Value {
        let c = self
            .listed(container)
            .unwrap_or_else(|| panic!("{container} is not under ctdev:\n{}", self.ok(&["list"])));
        assert_eq!(c["state"], "enforcing", "{c:#}");
        assert_eq!(
            c["other_programs"].as_array().map(Vec::len),
            Some(0),
            "runc's program must be detached: {c:#}"
        );
        c
    }

    /// A block device the policy does not allow (loop 7:0) is EPERM inside,
    /// while /dev/null still works.
    #[track_caller]
    fn assert_denies_others(&self, container: &str) {
        let (code, out) = self.containerd.exec(
            container,
            &["sh", "-c", "mknod /tmp/l0 b 7 0 && : <> /tmp/l0"],
        );
        assert_ne!(code, 0, "b 7:0 must be denied: {out}");
        assert!(out.contains("Operation not permitted"), "{out}");
        assert_eq!(self.containerd.open_rw(container, "/dev/null"), Ok(()));
    }
}

#[test]
fn nri_pod_gets_its_requested_device_at_start() {
    let mut w = World::new("nri-start");
    let plugin = w.plugin();
    let pod = w.pod("ci", "builder", Some("/dev/loop-control"));
    let id = w
        .containerd
        .run_container(&pod, "work")
        .unwrap_or_else(|e| panic!("{e}\nplugin:\n{}", plugin.log()));

    // The pod map is written after the reply to containerd, before the
    // `attached` event line.
    assert!(
        eventually(Duration::from_secs(10), || w
            .events()
            .contains("\"attached\"")),
        "no attached event:\n{}",
        plugin.log()
    );
    // The node is there and opens; nothing else does; ctdev alone decides.
    assert_eq!(w.containerd.open_rw(&id, "/dev/loop-control"), Ok(()));
    w.assert_denies_others(&id);
    let c = w.assert_enforced(&id);
    assert!(
        c["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule"] == "c 10:237 rwm"),
        "{c:#}"
    );

    // `list` names the pod; `k8s:` targets resolve to the same container.
    assert_eq!(c["pod"]["namespace"], "ci", "{c:#}");
    assert_eq!(c["pod"]["pod"], "builder");
    assert_eq!(c["pod"]["container"], "work");
    assert_eq!(c["pod"]["container_id"], id.as_str());
    let one: serde_json::Value =
        serde_json::from_str(&w.ok(&["list", "--json", "k8s:ci/builder/work"])).unwrap();
    assert_eq!(one["containers"][0]["policy_id"], c["policy_id"]);
    assert!(w.events().contains("\"attached\""), "{}", w.events());

    // Removing the pod detaches ctdev and forgets the container.
    w.containerd.remove_pod(&pod);
    assert!(
        eventually(Duration::from_secs(10), || w.listed(&id).is_none()),
        "still listed after the pod was removed"
    );
    let (code, _, err) = w.ctdev(&["list", "k8s:ci/builder/work"]);
    assert_ne!(code, 0);
    assert!(err.contains("no k8s container matches"), "{err}");
}

#[test]
fn nri_refuses_requests_outside_the_policy() {
    let mut w = World::new("nri-refuse");
    let plugin = w.plugin();
    // A namespace whose entry allows no requests.
    let locked = w.pod("locked", "p1", Some("/dev/loop-control"));
    let err = w.containerd.run_container(&locked, "work").unwrap_err();
    assert!(
        err.contains("not allowed by policy entry \"locked\""),
        "{err}\nplugin:\n{}",
        plugin.log()
    );
    // A device outside what the namespace may ask for.
    let ci = w.pod("ci", "p2", Some("/dev/loop-control, /dev/mem"));
    let err = w.containerd.run_container(&ci, "work").unwrap_err();
    assert!(err.contains("/dev/mem"), "{err}");
    // A namespace no entry selects.
    let other = w.pod("web", "p3", Some("/dev/loop-control"));
    let err = w.containerd.run_container(&other, "work").unwrap_err();
    assert!(
        err.contains("no policy entry selects namespace \"web\""),
        "{err}"
    );
    let events = w.events();
    assert_eq!(events.matches("\"refused\"").count(), 3, "{events}");
    assert!(events.contains("web/p3/work"), "{events}");

    // Without a request, an unselected pod starts with runc's own program.
    let plain = w.pod("web", "p4", None);
    let id = w
        .containerd
        .run_container(&plain, "work")
        .expect("plain pod starts");
    assert!(w.listed(&id).is_none());
    let (code, _) = w
        .containerd
        .exec(&id, &["sh", "-c", "test -c /dev/loop-control"]);
    assert_ne!(code, 0, "an unmanaged pod must not get /dev/loop-control");
}

#[test]
fn nri_hotplug_into_a_running_pod() {
    let mut w = World::new("nri-hotplug");
    let _plugin = w.plugin();
    let a = w.pod("ci", "a", None);
    let a_id = w.containerd.run_container(&a, "work").expect("pod a");
    let b = w.pod("ci", "b", None);
    let b_id = w.containerd.run_container(&b, "work").expect("pod b");
    w.assert_enforced(&a_id);

    let lo = LoopDevice::new(&w.env, "hot");
    let dev = lo.path_str();
    w.ok(&["add", &format!("containerd:{}", &a_id[..12]), dev]);
    assert_eq!(w.containerd.open_rw(&a_id, dev), Ok(()));
    // Only the selected pod gets it.
    let (code, out) = w
        .containerd
        .exec(&b_id, &["sh", "-c", &format!("test -e {dev}")]);
    assert_ne!(code, 0, "pod b must not see {dev}: {out}");

    // Gone again on del (through the pod's name this time).
    w.ok(&["del", "k8s:ci/a/work", dev]);
    let (code, out) = w
        .containerd
        .exec(&a_id, &["sh", "-c", &format!("test -e {dev}")]);
    assert_ne!(code, 0, "{dev} still inside after del: {out}");
}

#[test]
fn nri_plugin_restart_keeps_pods_enforced_and_catches_up() {
    let mut w = World::new("nri-restart");
    let mut plugin = w.plugin();
    let a = w.pod("ci", "a", Some("/dev/loop-control"));
    let a_id = w.containerd.run_container(&a, "work").expect("pod a");
    w.assert_enforced(&a_id);

    // The plugin dies: what it attached stays enforced.
    plugin.kill();
    w.assert_enforced(&a_id);
    assert_eq!(w.containerd.open_rw(&a_id, "/dev/loop-control"), Ok(()));
    w.assert_denies_others(&a_id);

    // A pod started meanwhile runs under runc's program only...
    let b = w.pod("ci", "b", None);
    let b_id = w.containerd.run_container(&b, "work").expect("pod b");
    assert!(w.listed(&b_id).is_none());

    // ...until the plugin is back: Synchronize takes it over.
    let plugin = w.plugin();
    // Attached, and named in the pod map (written just after).
    assert!(
        eventually(Duration::from_secs(20), || w
            .listed(&b_id)
            .is_some_and(|c| c["pod"]["pod"] == "b")),
        "pod b not attached after the plugin came back:\n{}",
        plugin.log()
    );
    w.assert_enforced(&b_id);
    w.assert_denies_others(&b_id);
    w.assert_enforced(&a_id);
    let c = w.listed(&b_id).unwrap();
    assert_eq!(c["pod"]["pod"], "b", "{c:#}");
}

#[test]
fn nri_plugin_reconnects_when_containerd_restarts() {
    let mut w = World::new("nri-ctrd-restart");
    let plugin = w.plugin();
    let a = w.pod("ci", "a", None);
    let a_id = w.containerd.run_container(&a, "work").expect("pod a");
    w.assert_enforced(&a_id);

    w.containerd.restart();
    plugin.wait_registered(2);
    w.assert_enforced(&a_id);
    let b = w.pod("ci", "b", Some("/dev/loop-control"));
    let b_id = w
        .containerd
        .run_container(&b, "work")
        .unwrap_or_else(|e| panic!("{e}\nplugin:\n{}", plugin.log()));
    w.assert_enforced(&b_id);
    assert_eq!(w.containerd.open_rw(&b_id, "/dev/loop-control"), Ok(()));
}

/// A directory laid out as the kubelet mounts a ConfigMap: `NAME ->
/// ..data/NAME`, `..data -> ..vN`; [`ConfigMapDir::update`] swaps `..data`
/// as the kubelet does (new directory, `..data_tmp` symlink renamed over
/// `..data`).
struct ConfigMapDir {
    dir: PathBuf,
    name: &'static str,
    version: u32,
}

impl ConfigMapDir {
    fn new(dir: PathBuf, name: &'static str, text: &str) -> ConfigMapDir {
        fs::create_dir_all(&dir).unwrap();
        let mut c = ConfigMapDir {
            dir,
            name,
            version: 0,
        };
        c.update(text);
        std::os::unix::fs::symlink(format!("..data/{name}"), c.path()).unwrap();
        c
    }

    fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    fn update(&mut self, text: &str) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        fs::create_dir(self.dir.join(&v)).unwrap();
        fs::write(self.dir.join(&v).join(self.name), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

#[test]
fn nri_policy_change_is_reloaded_without_a_restart() {
    let mut w = World::new("nri-reload");
    let roots = format!(
        "runtime_roots = [\"{}\"]\n",
        w.containerd.runc_root.display()
    );
    let mut cm = ConfigMapDir::new(
        w.env.scratch.join("configmap"),
        "nri.toml",
        &format!("{roots}[[container]]\nname = \"ci\"\nnamespace = \"ci\"\n"),
    );
    w.policy = cm.path();
    let plugin = w.plugin();

    // The first policy does not select namespace "late": a request is refused.
    let p1 = w.pod("late", "p1", Some("/dev/loop-control"));
    let err = w.containerd.run_container(&p1, "work").unwrap_err();
    assert!(
        err.contains("no policy entry selects namespace \"late\""),
        "{err}\nplugin:\n{}",
        plugin.log()
    );

    // The ConfigMap changes (symlink swap): the plugin reloads it, and the
    // next pod of "late" gets its device, under ctdev.
    cm.update(&format!(
        "{roots}[[container]]\nname = \"late\"\nnamespace = \"late\"\nallow = [\"/dev/loop-control\"]\n"
    ));
    assert!(
        eventually(Duration::from_secs(10), || w
            .events()
            .contains("\"reloaded\"")),
        "no reload:\n{}\n{}",
        w.events(),
        plugin.log()
    );
    let p2 = w.pod("late", "p2", Some("/dev/loop-control"));
    let id2 = w
        .containerd
        .run_container(&p2, "work")
        .unwrap_or_else(|e| panic!("{e}\nplugin:\n{}", plugin.log()));
    assert_eq!(w.containerd.open_rw(&id2, "/dev/loop-control"), Ok(()));
    w.assert_enforced(&id2);

    // A file that does not parse: reported, and the policy in use stays.
    cm.update("[[container]]\nname = 7\n");
    assert!(
        eventually(Duration::from_secs(10), || w
            .events()
            .contains("\"reload-failed\"")),
        "bad file not reported:\n{}\n{}",
        w.events(),
        plugin.log()
    );
    assert!(w.events().contains("previous policy stays in use"));
    let p3 = w.pod("late", "p3", Some("/dev/loop-control"));
    let id3 = w
        .containerd
        .run_container(&p3, "work")
        .unwrap_or_else(|e| panic!("{e}\nplugin:\n{}", plugin.log()));
    w.assert_enforced(&id3);
    assert_eq!(w.containerd.open_rw(&id3, "/dev/loop-control"), Ok(()));
}

/// `ctdev monitor` with a timeout (it runs until `--count` events).
fn monitor_json(w: &World, target: &str) -> serde_json::Value {
    let out = Command::new("timeout")
        .arg("20")
        .arg(ctdev_bin())
        .arg("--pin-root")
        .arg(&w.env.pin_root)
        .args(["--json", "monitor", "--replay", "--count", "1", target])
        .env("CTDEV_NRI_STATE_DIR", &w.state)
        .env_remove("RUST_LOG")
        .output()
        .expect("run ctdev monitor");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "monitor printed no event ({}): {text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("monitor --json line")
}

/// One node agent: `ctdev daemon` with an `[nri]` section runs the plugin
/// in its own process. Its pods show by name in `monitor` and `check`.
#[test]
fn nri_runs_inside_the_daemon_and_pods_show_in_monitor_and_check() {
    use ctdev_tests::daemon::{write_policy, DaemonProc};
    let mut w = World::new("nri-daemon");
    let config = write_policy(
        &w.env,
        "policy.toml",
        0.0,
        &format!(
            "[nri]\nsocket = \"{}\"\npolicy = \"nri.toml\"\nstate_dir = \"{}\"\nreconnect_interval = 0.2\n",
            w.containerd.nri_sock.display(),
            w.state.display()
        ),
    );
    let check = w.ok(&[
        "daemon",
        "--config",
        config.to_str().unwrap(),
        "--check-config",
    ]);
    assert!(check.contains("nri plugin \"ctdev\""), "{check}");
    assert!(check.contains("nri policy file"), "{check}");
    let daemon = DaemonProc::start(&w.env, &config);
    assert!(
        eventually(Duration::from_secs(20), || daemon
            .log_text()
            .contains("registered")),
        "the daemon's NRI plugin did not register:\n{}",
        daemon.log_text()
    );
    // Only the daemon: no `ctdev nri` process of this test.
    let pod = w.pod("ci", "d", Some("/dev/loop-control"));
    let id = w
        .containerd
        .run_container(&pod, "work")
        .unwrap_or_else(|e| panic!("{e}\ndaemon:\n{}", daemon.log_text()));
    assert_eq!(w.containerd.open_rw(&id, "/dev/loop-control"), Ok(()));
    // The pod map is written just after the reply, before the event line.
    assert!(
        eventually(Duration::from_secs(10), || w
            .events()
            .contains("\"attached\"")),
        "no attached event:\n{}",
        daemon.log_text()
    );
    let c = w.assert_enforced(&id);
    assert_eq!(c["pod"]["pod"], "d", "{c:#}");

    // A denial in the pod: monitor names the pod.
    w.assert_denies_others(&id);
    let ev = monitor_json(&w, "k8s:ci/d/work");
    assert_eq!(ev["type"], "denied", "{ev:#}");
    assert_eq!(ev["pod"]["namespace"], "ci", "{ev:#}");
    assert_eq!(ev["pod"]["pod"], "d");
    assert_eq!(ev["pod"]["container"], "work");

    // check names it too, in JSON and text.
    let json: serde_json::Value =
        serde_json::from_str(&w.ok(&["--json", "check", "k8s:ci/d/work", "/dev/loop-control"]))
            .unwrap();
    assert_eq!(json["allowed"], true, "{json:#}");
    assert_eq!(json["pod"]["container_id"], id.as_str(), "{json:#}");
    let text = w.ok(&["check", "k8s:ci/d/work", "/dev/loop-control"]);
    assert!(text.contains("(pod ci/d/work)"), "{text}");
    drop(daemon);
}
