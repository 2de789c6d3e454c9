//! CDI devices hot-added into a running Podman container, compared with
//! the view Podman itself gives a container started with the same device.
//!
//! One spec: two device nodes (loop devices from LOOP_CTL_ADD), a
//! read-only directory bind mount and an env entry. `podman run --device`
//! is the reference; `ctdev add` of the same device into a second, already
//! running container (under ctdev policy with `attach --takeover`) must
//! give the same nodes, mount and access; `ctdev del` must give back the
//! container's previous view exactly.

use std::fs;
use std::path::Path;

use ctdev_tests::container::TestContainer;
use ctdev_tests::daemon::{write_policy, DaemonProc, HotLoop};
use ctdev_tests::engines::{self, Engine, Podman, PodmanOptions};
use ctdev_tests::{field_strs, rules_of, unique, Parked, TestEnv};

/// What a container shows of the CDI device (and of its /dev and mounts).
#[derive(Debug, PartialEq, Eq)]
struct View {
    /// `stat` of the two nodes: name, type, numbers, mode, owner.
    nodes: String,
    /// The shared file's contents.
    share: String,
    /// Mount options of /opt/share (`ro,nosuid,nodev,relatime`).
    share_opts: Option<String>,
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn view(pod: &Podman, id: &str) -> View {
    let nodes = out(&pod.sh(
        id,
        "stat -c '%n %F %t:%T %a %u:%g' /dev/cdi-a /dev/cdi-b 2>&1",
    ));
    let share = out(&pod.sh(id, "cat /opt/share/file.txt 2>&1"));
    let share_opts = mount_options(&out(&pod.sh(id, "cat /proc/self/mountinfo")), "/opt/share");
    View {
        nodes,
        share,
        share_opts,
    }
}

/// Field 6 (per-mount options) of the mountinfo line mounted at `at`.
fn mount_options(mountinfo: &str, at: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&at)).then(|| f[5].to_string())
    })
}

/// Everything `del` must give back: /dev listing, /opt, mount points.
fn whole_view(pod: &Podman, id: &str) -> String {
    let mounts: Vec<String> = out(&pod.sh(id, "cat /proc/self/mountinfo"))
        .lines()
        .map(|l| l.split(' ').skip(3).take(3).collect::<Vec<_>>().join(" "))
        .collect();
    format!(
        "{}\n{}\n{}",
        out(&pod.sh(id, "ls -ln /dev 2>&1")),
        out(&pod.sh(id, "ls -lnR /opt 2>&1")),
        mounts.join("\n")
    )
}

/// A loop device made with `LOOP_CTL_ADD` (no backing file), once its
/// node is there; removed on drop.
struct LoopDev {
    hot: HotLoop,
    path: String,
    number: u32,
}

impl LoopDev {
    fn new() -> LoopDev {
        let hot = HotLoop::add(HotLoop::pick());
        let path = format!("/dev/{}", hot.name());
        engines::poll(std::time::Duration::from_secs(5), || {
            Path::new(&path).exists().then_some(())
        })
        .unwrap_or_else(|| panic!("{path} did not appear"));
        LoopDev {
            number: hot.index,
            hot,
            path,
        }
    }

    fn path_str(&self) -> &str {
        &self.path
    }
}

fn spec(dir: &Path, kind: &str, a: &LoopDev, b: &LoopDev, share: &Path) {
    let text = format!(
        "cdiVersion: 0.5.0
kind: {kind}
devices:
- name: pair
  containerEdits:
    deviceNodes:
    - path: /dev/cdi-a
      hostPath: {a}
      permissions: rw
      fileMode: 0o640
      uid: 5
      gid: 6
    - path: /dev/cdi-b
      hostPath: {b}
      fileMode: 0o600
    mounts:
    - hostPath: {share}
      containerPath: /opt/share
      options: [ro, nosuid, nodev, rbind]
- name: broken
  containerEdits:
    deviceNodes:
    - path: /dev/cdi-a
      hostPath: {a}
    mounts:
    - hostPath: {share}/missing
      containerPath: /opt/missing
      options: [rbind]
containerEdits:
  env: [CDI_TEST=1]
",
        a = a.path_str(),
        b = b.path_str(),
        share = share.display()
    );
    fs::write(dir.join("test.yaml"), text).expect("write the spec");
}

#[test]
fn podman_cdi_hot_add_matches_podman_run_and_del_restores() {
    let env = TestEnv::new("cdi");
    let pod = Podman::start_with(
        &engines::inside(&env.cgroup_parent),
        PodmanOptions {
            cdi: true,
            ..PodmanOptions::default()
        },
    );
    let a = LoopDev::new();
    let b = LoopDev::new();
    let other = LoopDev::new();
    let share = env.scratch.join("share");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("file.txt"), "cdi share\n").unwrap();
    // A class of its own: no other test's spec can collide with it.
    let class = format!("c{}", unique("").replace('-', ""));
    let kind = format!("example.com/{class}");
    spec(&pod.cdi_dir(), &kind, &a, &b, &share);
    let name = format!("{kind}=pair");
    let state = env.scratch.join("cdi-state");
    let cdi_dir = pod.cdi_dir().to_str().unwrap().to_string();
    let state_s = state.to_str().unwrap().to_string();

    // The reference: Podman gives the device at start.
    let reference = pod.run_with(&unique("ref"), &["--device", &name]);
    let want = view(&pod, &reference);
    assert!(want.nodes.contains("block special file 7:"), "{want:?}");
    assert_eq!(want.share, "cdi share\n");
    assert!(
        want.share_opts.as_deref().unwrap_or("").starts_with("ro,"),
        "{want:?}"
    );

    // A second container, already running, under ctdev policy.
    let id = pod.run_with(&unique("c"), &[]);
    let target = format!("podman:{id}");
    env.ok(&["attach", &target, "--takeover"]);
    let before = whole_view(&pod, &id);
    assert_ne!(view(&pod, &id), want);

    // The env entry is refused by name; nothing changes.
    let refused = env.fails(&[
        "add",
        &target,
        &name,
        "--cdi-dir",
        &cdi_dir,
        "--cdi-state",
        &state_s,
    ]);
    assert!(refused.contains("env CDI_TEST"), "{refused}");
    assert!(refused.contains("--skip-unsupported"), "{refused}");
    assert_eq!(whole_view(&pod, &id), before);

    // A device whose mount source is missing: all or nothing.
    let broken = format!("{kind}=broken");
    let failed = env.fails(&[
        "add",
        &target,
        &broken,
        "--cdi-dir",
        &cdi_dir,
        "--cdi-state",
        &state_s,
        "--skip-unsupported",
    ]);
    assert!(failed.contains("missing"), "{failed}");
    assert_eq!(whole_view(&pod, &id), before, "a failed add left changes");
    let rules = env.ok(&["list", "--json"]);
    assert!(!rules.contains(&format!("7:{}", a.number)), "{rules}");

    // With --skip-unsupported: the same view as Podman's.
    let added = env.ok(&[
        "add",
        &target,
        &name,
        "--cdi-dir",
        &cdi_dir,
        "--cdi-state",
        &state_s,
        "--skip-unsupported",
    ]);
    assert!(
        added.contains("skipped") && added.contains("env CDI_TEST"),
        "{added}"
    );
    assert_eq!(view(&pod, &id), want);
    // Access: both nodes open, another block device is still denied.
    let opened = pod.sh(
        &id,
        "head -c1 /dev/cdi-a >/dev/null && head -c1 /dev/cdi-b >/dev/null && echo ok",
    );
    // Loop devices without a backing file fail reads with ENXIO after open:
    // what matters is that open() is not EPERM.
    let opened_err = String::from_utf8_lossy(&opened.stderr).to_string();
    assert!(
        !opened_err.contains("Operation not permitted"),
        "{opened_err}"
    );
    let ref_open = pod.sh(
        &reference,
        "head -c1 /dev/cdi-a >/dev/null && head -c1 /dev/cdi-b >/dev/null && echo ok",
    );
    assert_eq!(
        out(&opened),
        out(&ref_open),
        "open results differ from podman's"
    );
    let denied = pod.sh(
        &id,
        &format!("mknod /tmp/x b 7 {} && head -c1 /tmp/x", other.number),
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Operation not permitted"),
        "another device was not denied: {denied:?}"
    );
    // The mount is read-only and only shows the shared directory.
    let write = pod.sh(&id, "echo x > /opt/share/new");
    assert!(!write.status.success(), "wrote into a read-only mount");
    assert!(!share.join("new").exists());
    // Adding twice is refused.
    let again = env.fails(&[
        "add",
        &target,
        &name,
        "--cdi-dir",
        &cdi_dir,
        "--cdi-state",
        &state_s,
        "--skip-unsupported",
    ]);
    assert!(again.contains("already added"), "{again}");

    // `del` gives the previous view back exactly, rules included.
    env.ok(&["del", &target, &name, "--cdi-state", &state_s]);
    assert_eq!(whole_view(&pod, &id), before);
    let rules = env.ok(&["list", "--json"]);
    assert!(!rules.contains(&format!("7:{}", a.number)), "{rules}");
    assert!(!rules.contains(&format!("7:{}", b.number)), "{rules}");
    // And again: add/del is repeatable; a second del is refused.
    env.ok(&[
        "add",
        &target,
        &name,
        "--cdi-dir",
        &cdi_dir,
        "--cdi-state",
        &state_s,
        "--skip-unsupported",
    ]);
    assert_eq!(view(&pod, &id), want);
    env.ok(&["del", &target, &name, "--cdi-state", &state_s]);
    assert_eq!(whole_view(&pod, &id), before);
    let twice = env.fails(&["del", &target, &name, "--cdi-state", &state_s]);
    assert!(twice.contains("was not added"), "{twice}");
}

#[test]
fn cdi_list_shows_devices_files_and_invalid_files() {
    let env = TestEnv::new("cdilist");
    let dir = env.scratch.join("cdi");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("good.json"),
        r#"{"cdiVersion":"0.5.0","kind":"example.com/x","devices":[{"name":"null","containerEdits":{"deviceNodes":[{"path":"/dev/null"}],"mounts":[{"hostPath":"/srv","containerPath":"/srv","options":["rbind","ro"]}]}}]}"#,
    )
    .unwrap();
    fs::write(dir.join("bad.yaml"), "cdiVersion: 9.9.9\nkind: x\n").unwrap();
    let d = dir.to_str().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "cdi", "list", "--cdi-dir", d])).unwrap();
    let devs = json["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0]["name"], "example.com/x=null");
    assert_eq!(devs[0]["nodes"][0], "/dev/null");
    assert!(devs[0]["file"].as_str().unwrap().ends_with("good.json"));
    assert!(json["invalid_files"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("bad.yaml"));
    // generate → list: the generated spec names the device.
    let lo = LoopDev::new();
    let devname = lo.hot.name();
    let gen = dir.join("gen.json");
    env.ok(&[
        "cdi",
        "generate",
        "--kind",
        "example.com/gen",
        "--subsystem",
        "block",
        "--devname",
        &devname,
        "-o",
        gen.to_str().unwrap(),
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "cdi", "list", "--cdi-dir", d])).unwrap();
    let names = field_strs(&json["devices"], "name");
    assert!(
        names.contains(&format!("example.com/gen={devname}").as_str()),
        "{names:?}"
    );
}

/// Polls `f` every 50 ms for up to 20 s; panics with `what` (and the log).
fn wait_until(what: &str, log: &Path, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}; daemon log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A container with a hot-added loop device, an empty share directory and
/// an empty CDI spec directory, all in `env`'s scratch.
struct Fixture {
    c: TestContainer,
    lo: LoopDev,
    share: std::path::PathBuf,
    specs: std::path::PathBuf,
}

impl Fixture {
    fn new(env: &TestEnv, userns: bool) -> Fixture {
        let c = TestContainer::start(env, "a", userns);
        let lo = LoopDev::new();
        let share = env.scratch.join("share");
        fs::create_dir_all(&share).unwrap();
        let specs = env.scratch.join("cdi");
        fs::create_dir_all(&specs).unwrap();
        Fixture {
            c,
            lo,
            share,
            specs,
        }
    }
}

#[test]
fn daemon_keeps_cdi_devices_in_sync_with_the_spec() {
    let env = TestEnv::new("cdi-daemon");
    // A user namespace: the spec's uid/gid are ids inside it.
    let Fixture {
        c,
        lo,
        share,
        specs,
    } = Fixture::new(&env, true);
    fs::write(share.join("f"), "daemon share\n").unwrap();
    let write_spec = |mode: &str| {
        fs::write(
            specs.join("d.json"),
            format!(
                r#"{{"cdiVersion":"0.5.0","kind":"example.com/daemon","devices":[{{"name":"x","containerEdits":{{
                "deviceNodes":[{{"path":"/dev/cdi-x","hostPath":"{}","fileMode":{mode},"uid":5,"gid":6}}],
                "mounts":[{{"hostPath":"{}","containerPath":"/mnt/share","options":["rbind","ro"]}}]}}}}],
                "containerEdits":{{"env":["SKIPPED=1"]}}}}"#,
                lo.path_str(),
                share.display()
            ),
        )
        .unwrap()
    };
    write_spec("416"); // 0o640
    let config = write_policy(
        &env,
        "policy.toml",
        0.0,
        &format!(
            "cdi_dirs = [\"{}\"]\n[[container]]\nname = \"a\"\nselect = {{ target = \"{}\" }}\npreset = \"none\"\ndevices = [{{ cdi = \"example.com/daemon=x\" }}]\n",
            specs.display(),
            c.cgroup.display()
        ),
    );
    let daemon = DaemonProc::start(&env, &config);
    let log = daemon.log.clone();
    let node = |c: &TestContainer| -> String {
        String::from_utf8_lossy(&c.sh("stat -c '%t:%T %a %u:%g' /dev/cdi-x 2>&1").stdout)
            .into_owned()
    };
    wait_until("the CDI device in the container", &log, || {
        c.sh("cat /mnt/share/f").stdout == b"daemon share\n"
    });
    // Mode and owner as the spec says, ids inside the user namespace.
    assert_eq!(node(&c), format!("7:{:x} 640 5:6\n", lo.number));
    c.open_rw("/dev/cdi-x").expect("the CDI node opens");
    assert!(fs::read_to_string(&log)
        .unwrap()
        .contains("CDI edit skipped"));

    // The spec changes: the daemon re-applies it on SIGHUP.
    write_spec("384"); // 0o600
    let hup = || daemon.signal(nix::sys::signal::Signal::SIGHUP);
    hup();
    wait_until("the changed spec applied", &log, || {
        node(&c) == format!("7:{:x} 600 5:6\n", lo.number)
    });
    // The spec disappears: the device is taken back.
    fs::remove_file(specs.join("d.json")).unwrap();
    hup();
    wait_until("the device taken back", &log, || {
        node(&c).contains("No such file") && !c.sh("test -e /mnt/share").status.success()
    });
    drop(daemon);
}

/// `ctdev list` names the CDI device each rule and node came from (JSON and
/// text), `status` says the CDI device passed them in, and after `del`
/// neither names it any more.
#[test]
fn list_names_the_cdi_device_of_rules_and_nodes() {
    let env = TestEnv::new("cdi-source");
    let Fixture {
        c,
        lo,
        share,
        specs,
    } = Fixture::new(&env, false);
    let (class, name) = unique_device();
    fs::write(
        specs.join("s.json"),
        format!(
            r#"{{"cdiVersion":"0.5.0","kind":"example.com/{class}","devices":[{{"name":"x","containerEdits":{{
            "deviceNodes":[{{"path":"/dev/cdi-x","hostPath":"{}"}}],
            "mounts":[{{"hostPath":"{}","containerPath":"/mnt/share","options":["rbind","ro"]}}]}}}}]}}"#,
            lo.path_str(),
            share.display()
        ),
    )
    .unwrap();
    let state = env.scratch.join("cdi-state");
    let (d, s) = (specs.to_str().unwrap(), state.to_str().unwrap());
    let target = c.cgroup_str();
    env.ok(&["attach", target, "--preset", "none"]);
    env.ok(&["add", target, &name, "--cdi-dir", d, "--cdi-state", s]);

    // JSON: the container lists the device with what it gave; the node's
    // rule names it.
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "list", target, "--cdi-state", s])).unwrap();
    let ct = &json["containers"][0];
    assert_eq!(ct["cdi"][0]["name"], name.as_str(), "{ct:#}");
    assert_eq!(ct["cdi"][0]["nodes"][0], "/dev/cdi-x", "{ct:#}");
    assert_eq!(ct["cdi"][0]["mounts"][0], "/mnt/share", "{ct:#}");
    assert!(ct["cdi"][0]["file"].as_str().unwrap().ends_with("s.json"));
    let rule = format!("b 7:{} rwm", lo.number);
    let r = ct["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule.as_str())
        .unwrap_or_else(|| panic!("no rule {rule}: {ct:#}"));
    assert_eq!(r["cdi"][0], name.as_str(), "{r:#}");

    // Text: a column on the rule, a line for the device; `status` too.
    let text = env.ok(&["list", target, "--cdi-state", s]);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&rule))
        .unwrap_or_else(|| panic!("no rule line:\n{text}"));
    assert!(line.ends_with(&format!("cdi {name}")), "{text}");
    assert!(
        text.contains(&format!("cdi {name} (from "))
            && text.contains("nodes /dev/cdi-x; mounts /mnt/share"),
        "{text}"
    );
    let status = env.ok(&["status", target, "--cdi-state", s]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("/dev/cdi-x") && l.contains(&format!("by cdi {name}"))),
        "{status}"
    );

    // After del nothing names it.
    env.ok(&["del", target, &name, "--cdi-state", s]);
    let after = env.ok(&["--json", "list", target, "--cdi-state", s]);
    assert!(!after.contains(&name), "{after}");
}

/// A CDI device with mounts is refused for a target whose process shares
/// the host's mount namespace (a bind mount there would change the host),
/// before anything changes: no rule, no record, nothing mounted.
#[test]
fn cdi_mounts_are_refused_for_a_target_in_the_hosts_mount_namespace() {
    let env = TestEnv::new("cdi-hostmnt");
    let cg = env.cgroup("c");
    let parked = Parked::in_cgroup(&cg);
    let target = format!("pid:{}", parked.pid());
    let specs = env.scratch.join("cdi");
    fs::create_dir_all(&specs).unwrap();
    let share = env.scratch.join("share");
    fs::create_dir_all(&share).unwrap();
    let dest = format!("/ctdev-never-{}", unique("m"));
    let (class, name) = unique_device();
    fs::write(
        specs.join("s.json"),
        format!(
            r#"{{"cdiVersion":"0.5.0","kind":"example.com/{class}","devices":[{{"name":"x","containerEdits":{{
            "deviceNodes":[{{"path":"/dev/null"}}],
            "mounts":[{{"hostPath":"{}","containerPath":"{dest}","options":["rbind","ro"]}}]}}}}]}}"#,
            share.display()
        ),
    )
    .unwrap();
    let state = env.scratch.join("cdi-state");
    let (d, s) = (specs.to_str().unwrap(), state.to_str().unwrap());
    env.ok(&["attach", &target, "--preset", "none"]);
    let before = env.ok(&["--json", "list", &target]);
    let err = env.fails(&["add", &target, &name, "--cdi-dir", d, "--cdi-state", s]);
    assert!(
        err.contains("shares the host's mount namespace") && err.contains(&dest),
        "{err}"
    );
    assert!(!Path::new(&dest).exists(), "{dest} was created on the host");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&dest), "{mountinfo}");
    assert_eq!(env.ok(&["--json", "list", &target]), before);
    assert!(
        !state.exists() || fs::read_dir(&state).unwrap().next().is_none(),
        "a record was written"
    );
}

/// A CDI class no other test uses, and its device `x`'s qualified name.
fn unique_device() -> (String, String) {
    let class = format!("c{}", unique("").replace('-', ""));
    let name = format!("example.com/{class}=x");
    (class, name)
}

/// `pid:N` stays `pid:N` through a CDI add and del: the node is made in
/// N's mount namespace (the container's /dev, not the host's), the record
/// names the target as given, and del takes the node and rule away again.
#[test]
fn cdi_add_and_del_by_pid_act_in_that_process_namespaces() {
    let env = TestEnv::new("cdi-pid");
    let Fixture { c, lo, specs, .. } = Fixture::new(&env, false);
    let (class, name) = unique_device();
    let inside = format!("/dev/cdi-{}", unique("p"));
    fs::write(
        specs.join("s.json"),
        format!(
            r#"{{"cdiVersion":"0.5.0","kind":"example.com/{class}","devices":[{{"name":"x","containerEdits":{{
            "deviceNodes":[{{"path":"{inside}","hostPath":"{}"}}]}}}}]}}"#,
            lo.path_str()
        ),
    )
    .unwrap();
    let state = env.scratch.join("cdi-state");
    let (d, s) = (specs.to_str().unwrap(), state.to_str().unwrap());
    let target = c.target();
    env.ok(&["attach", &target, "--preset", "none"]);
    assert!(
        !c.host_path(&inside).exists(),
        "{inside} there before the add"
    );
    env.ok(&["add", &target, &name, "--cdi-dir", d, "--cdi-state", s]);
    assert!(
        c.host_path(&inside).exists(),
        "{inside} not made in the container"
    );
    assert!(
        !Path::new(&inside).exists(),
        "{inside} was made in the host's /dev"
    );
    c.open_rw(&inside)
        .unwrap_or_else(|e| panic!("{inside} not usable inside after the add: {e}"));
    // The record: STATE/POLICY_ID/FILE.
    let records: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let rec: serde_json::Value = serde_json::from_slice(&fs::read(&records[0]).unwrap()).unwrap();
    assert_eq!(rec["target"], target.as_str(), "{rec:#}");

    env.ok(&["del", &target, &name, "--cdi-state", s]);
    assert!(
        !c.host_path(&inside).exists(),
        "{inside} left in the container after del"
    );
    let rule = format!("b 7:{} rwm", lo.number);
    assert!(
        !rules_of(&env, &c.cgroup).contains(&rule),
        "{rule} left after del"
    );
}
