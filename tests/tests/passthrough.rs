//! `ctdev add` / `ctdev del` against real test containers (namespaces,
//! chroot, own cgroup): nodes appear inside and work at once, access is
//! gone after del, paths cannot escape the root, bad input changes nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ctdev_tests::container::{LoopDevice, TestContainer, Veth};
use ctdev_tests::foreign::ForeignProgram;
use ctdev_tests::*;

fn out(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Rules of the (only) container in `list --json`, as strings.
fn rules(env: &TestEnv) -> Vec<String> {
    let v = env.list_json();
    v["containers"][0]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn char_device_add_then_del() {
    let env = TestEnv::new("pt-char");
    let c = TestContainer::start(&env, "c", false);
    env.ok(&["attach", c.cgroup_str()]);
    assert!(c.open_rw("/dev/net/tun").is_err(), "no node before add");

    let stdout = env.ok(&["add", c.cgroup_str(), "/dev/net/tun"]);
    assert!(stdout.contains("created"), "{stdout}");
    // Parent directory created, node is the host's 10:200, usable at once.
    assert_eq!(rdev(&c.host_path("/dev/net/tun")), (false, 10, 200));
    assert!(c.host_path("/dev/net").is_dir());
    c.open_rw("/dev/net/tun")
        .expect("tun opens right after add");
    assert!(rules(&env).contains(&"c 10:200 rwm".to_string()));

    env.ok(&["del", c.cgroup_str(), "/dev/net/tun"]);
    assert!(!c.host_path("/dev/net/tun").exists(), "node removed");
    assert!(
        !c.host_path("/dev/net").exists(),
        "the directory add made too"
    );
    assert!(!rules(&env).iter().any(|r| r.starts_with("c 10:200")));
    // A node made behind ctdev's back is denied: the rule is gone.
    std::fs::create_dir(c.host_path("/dev/net")).unwrap();
    assert!(
        c.new_node_denied("/dev/net/tun", 10, 200),
        "EPERM after del"
    );
}

#[test]
fn block_device_at_another_dest_reads_and_writes() {
    let env = TestEnv::new("pt-block");
    let c = TestContainer::attached(&env, "c");
    let lo = LoopDevice::new(&env, "disk");

    env.ok(&["add", c.cgroup_str(), lo.path_str(), "/dev/disks/d0"]);
    let node = c.host_path("/dev/disks/d0");
    let (is_blk, ..) = rdev(&node);
    assert!(is_blk);
    assert!(!c.host_path(lo.path_str()).exists(), "only DEST is created");
    let w = c.sh("echo hello-ctdev | dd of=/dev/disks/d0 conv=notrunc 2>&1 && sync");
    assert!(w.status.success(), "{}", out(&w));
    let r = c.exec(&["head", "-c", "11", "/dev/disks/d0"]);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "hello-ctdev",
        "{}",
        out(&r)
    );

    env.ok(&["del", c.cgroup_str(), lo.path_str(), "/dev/disks/d0"]);
    assert!(!node.exists());
    assert!(
        !c.host_path("/dev/disks").exists(),
        "the directory add made too"
    );
    std::fs::create_dir(c.host_path("/dev/disks")).unwrap();
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        std::fs::metadata(&lo.path).unwrap().rdev(),
    )
    .unwrap();
    assert!(denied(&c.open_rw("/dev/disks/d0")), "EPERM after del");
}

#[test]
fn existing_node_is_replaced_and_repeated_add_converges() {
    let env = TestEnv::new("pt-replace");
    let c = TestContainer::attached(&env, "c");
    let full = env.node("full", DeviceType::Char, 1, 7);
    // The container already has a node there (zero, 1:5): it gets replaced.
    mknod(&c.host_path("/dev/x"), 1, 5);
    let add_full = |extra: &[&str]| {
        let args = ["add", c.cgroup_str(), s(&full), "/dev/x", "--mode", "0620"];
        env.ok(&[&args[..], extra].concat())
    };
    let stdout = add_full(&[]);
    assert!(stdout.contains("replaced"), "{stdout}");
    assert_eq!(rdev(&c.host_path("/dev/x")), (false, 1, 7));
    let meta = std::fs::metadata(c.host_path("/dev/x")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o620, "exact mode, no umask");
    let w = c.sh("echo x > /dev/x");
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("No space left"),
        "writes reach /dev/full: {}",
        out(&w)
    );

    let before = (rules(&env), c.listing("/dev"));
    let again = add_full(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(v["nodes"][0]["action"], "unchanged", "{again}");
    assert_eq!(v["rules_changed"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!((rules(&env), c.listing("/dev")), before);
}

#[test]
fn something_else_at_dest_is_refused_and_nothing_changes() {
    let env = TestEnv::new("pt-occupied");
    let c = TestContainer::start(&env, "c", false);
    env.ok(&["attach", c.cgroup_str()]);
    std::fs::write(c.host_path("/dev/file"), "data").unwrap();
    std::fs::create_dir(c.host_path("/dev/dir")).unwrap();
    std::os::unix::fs::symlink("/tmp/somewhere", c.host_path("/dev/lnk")).unwrap();
    let before = (rules(&env), c.listing("/dev /etc /tmp"));
    for (dest, kind) in [
        ("/dev/file", "regular file"),
        ("/dev/dir", "directory"),
        ("/dev/lnk", "symlink"),
    ] {
        let err = env.fails(&["add", c.cgroup_str(), "/dev/zero", dest]);
        assert!(err.contains(kind), "{dest}: {err}");
    }
    assert_eq!((rules(&env), c.listing("/dev /etc /tmp")), before);
    assert_eq!(
        std::fs::read_to_string(c.host_path("/dev/file")).unwrap(),
        "data"
    );
}

#[test]
fn directory_device_adds_every_node_all_or_nothing() {
    let env = TestEnv::new("pt-dir");
    let c = TestContainer::attached(&env, "c");
    let dir = env.scratch.join("devdir");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    mknod(&dir.join("n1"), 1, 3);
    mknod(&dir.join("sub/n2"), 1, 5);
    std::os::unix::fs::symlink("n1", dir.join("link")).unwrap();
    std::os::unix::fs::symlink("/dev", dir.join("linkdir")).unwrap();
    let d = dir.to_str().unwrap();

    // All-or-nothing: the second node's DEST is occupied by a file.
    std::fs::create_dir_all(c.host_path("/dev/bad/sub")).unwrap();
    std::fs::write(c.host_path("/dev/bad/sub/n2"), "").unwrap();
    let before = (rules(&env), c.listing("/dev /etc /tmp"));
    let err = env.fails(&["add", c.cgroup_str(), d, "/dev/bad"]);
    assert!(err.contains("regular file"), "{err}");
    assert_eq!(
        (rules(&env), c.listing("/dev /etc /tmp")),
        before,
        "first node rolled back"
    );

    env.ok(&["add", c.cgroup_str(), d, "/dev/stuff"]);
    assert_eq!(rdev(&c.host_path("/dev/stuff/n1")), (false, 1, 3));
    assert_eq!(rdev(&c.host_path("/dev/stuff/sub/n2")), (false, 1, 5));
    assert!(
        !c.host_path("/dev/stuff/link").exists(),
        "symlinks are not passed"
    );
    assert!(
        !c.host_path("/dev/stuff/linkdir").exists(),
        "symlinked dirs are not followed"
    );
    c.open_rw("/dev/stuff/sub/n2").expect("zero opens");
    let r = rules(&env);
    assert!(
        r.contains(&"c 1:3 rwm".into()) && r.contains(&"c 1:5 rwm".into()),
        "{r:?}"
    );

    env.ok(&["del", c.cgroup_str(), d, "/dev/stuff"]);
    assert!(!c.host_path("/dev/stuff/n1").exists());
    assert!(!c.host_path("/dev/stuff/sub/n2").exists());
    assert!(rules(&env).is_empty());
}

#[test]
fn paths_cannot_escape_the_container_root() {
    let env = TestEnv::new("pt-escape");
    let c = TestContainer::start(&env, "c", false);
    env.ok(&["attach", c.cgroup_str()]);
    let name = env.name.clone();
    // The container plants an absolute symlink to /etc and a magic link.
    std::os::unix::fs::symlink("/etc", c.host_path("/dev/evil")).unwrap();
    std::os::unix::fs::symlink("/proc/1/root/etc", c.host_path("/dev/magic")).unwrap();
    let before = (rules(&env), c.listing("/dev /etc /tmp"));
    for dest in [
        format!("../../etc/{name}"),
        format!("/dev/../../etc/{name}"),
        format!("/dev/./{name}"),
        format!("/dev/magic/{name}"),
    ] {
        env.fails(&["add", c.cgroup_str(), "/dev/zero", &dest]);
        assert!(!Path::new("/etc").join(&name).exists(), "{dest} escaped");
    }
    assert_eq!(
        (rules(&env), c.listing("/dev /etc /tmp")),
        before,
        "refusals change nothing"
    );
    // The absolute symlink resolves inside the container's root, never the host's.
    env.ok(&[
        "add",
        c.cgroup_str(),
        "/dev/zero",
        &format!("/dev/evil/{name}"),
    ]);
    assert!(
        !Path::new("/etc").join(&name).exists(),
        "host /etc untouched"
    );
    assert_eq!(rdev(&c.root.join("etc").join(&name)), (false, 1, 5));
}

#[test]
fn bad_inputs_change_nothing() {
    let env = TestEnv::new("pt-bad");
    let c = TestContainer::start(&env, "c", false);
    let other = TestContainer::start(&env, "not-attached", false);
    let err = env.fails(&["add", other.cgroup_str(), "/dev/zero"]);
    assert!(err.contains("ctdev attach"), "{err}");
    assert!(!other.host_path("/dev/zero").exists());

    env.ok(&["attach", c.cgroup_str()]);
    let file = env.scratch.join("plain");
    std::fs::write(&file, "x").unwrap();
    let before = (rules(&env), c.listing("/dev /etc /tmp"));
    let cg = c.cgroup_str();
    for (args, why) in [
        (vec!["add", cg, "/dev/nonexistent-ctdev"], "No such file"),
        (vec!["add", cg, file.to_str().unwrap()], "not a device node"),
        (vec!["add", cg, "nosuchif0"], "network interface"),
        (vec!["add", cg, "/dev/zero", "--access", "rwx"], "--access"),
        (vec!["add", cg, "/dev/zero", "--mode", "999"], "--mode"),
        (vec!["add", cg, "/dev/zero", "relative/dest"], "absolute"),
        (vec!["del", cg, "/dev/net/tun"], "was not added"),
        (vec!["del", cg, "/dev/net/tun", "/dev/zz"], "was not added"),
    ] {
        let err = env.fails(&args);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert_eq!((rules(&env), c.listing("/dev /etc /tmp")), before);
}

#[test]
fn ownership_is_mapped_through_the_user_namespace() {
    let env = TestEnv::new("pt-userns");
    let c = TestContainer::start(&env, "c", true);
    env.ok(&["attach", c.cgroup_str(), "--preset", "none"]);
    let zero = env.node("zero", DeviceType::Char, 1, 5);
    env.ok(&[
        "add",
        c.cgroup_str(),
        zero.to_str().unwrap(),
        "/dev/sub/zero",
        "--mode",
        "600",
    ]);
    let m = std::fs::metadata(c.host_path("/dev/sub/zero")).unwrap();
    assert_eq!((m.uid(), m.gid()), (100000, 100000));
    let d = std::fs::metadata(c.host_path("/dev/sub")).unwrap();
    assert_eq!((d.uid(), d.mode() & 0o777), (100000, 0o755));
    let ls = c.exec(&["ls", "-ln", "/dev/sub/zero"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(" 0 "),
        "{}",
        out(&ls)
    );
    c.open_rw("/dev/sub/zero")
        .expect("container root owns its node");

    env.ok(&[
        "add",
        c.cgroup_str(),
        zero.to_str().unwrap(),
        "/dev/z2",
        "--uid",
        "100005",
        "--gid",
        "100006",
    ]);
    let m = std::fs::metadata(c.host_path("/dev/z2")).unwrap();
    assert_eq!((m.uid(), m.gid()), (100005, 100006));
}

#[test]
fn interface_moves_in_and_back_out() {
    let env = TestEnv::new("pt-netdev");
    let c = TestContainer::start(&env, "c", false);
    env.ok(&["attach", c.cgroup_str()]);
    let veth = Veth::new();
    let sys = |n: &str| Path::new("/sys/class/net").join(n);

    env.ok(&["add", c.cgroup_str(), &veth.name, "eth7"]);
    assert!(!sys(&veth.name).exists(), "gone from the host");
    let ip = c.exec(&["ip", "link", "show", "eth7"]);
    assert!(ip.status.success(), "{}", out(&ip));

    env.ok(&["del", c.cgroup_str(), &veth.name, "eth7"]);
    assert!(sys(&veth.name).exists(), "back under its original name");
    assert!(!c.exec(&["ip", "link", "show", "eth7"]).status.success());
    // Nothing to move back now.
    env.fails(&["del", c.cgroup_str(), &veth.name, "eth7"]);
}

#[test]
fn other_device_programs_are_warned_about() {
    let env = TestEnv::new("pt-foreign");
    let other = TestEnv::new("pt-foreign-other");
    let c = TestContainer::start(&env, "c", false);
    env.ok(&["attach", c.cgroup_str()]);
    // A second ctdev (another pin root) is "somebody else's" program.
    other.ok(&["attach", c.cgroup_str(), "--preset", "none"]);
    let r = env.ctdev(&["add", c.cgroup_str(), "/dev/zero", "/dev/zz"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("--takeover"),
        "{}",
        r.stderr
    );
    // And indeed the other program still denies it.
    assert!(denied(&c.open_rw("/dev/zz")));
}

/// Programs that are not ctdev's are named by `list`, `check` and `add`
/// from their own kernel info (one read per program found on the cgroup
/// chain, no listing of every program on the system): one on the
/// container's cgroup, one on its parent.
#[test]
fn foreign_programs_are_named_by_list_check_and_add() {
    let env = TestEnv::new("pt-names");
    let c = TestContainer::start(&env, "c", false);
    env.ok(&["attach", c.cgroup_str()]);
    let here = ForeignProgram::deny_char(&c.cgroup, 1, 7);
    let up = ForeignProgram::deny_char(&env.cgroup_parent, 1, 9);
    let at_c = format!("/{}/c", env.name);
    let at_parent = format!("/{}", env.name);

    let v = env.list_json();
    let others = v["containers"][0]["other_programs"].as_array().unwrap();
    let named: Vec<(u64, &str, &str, &str)> = others
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p["name"].as_str().unwrap(),
                p["owner"].as_str().unwrap(),
                p["attached_at"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            (here.id.into(), "foreign_dev", "unknown", at_c.as_str()),
            (up.id.into(), "foreign_dev", "unknown", at_parent.as_str()),
        ],
        "{others:?}"
    );

    let r = env.ctdev(&["--json", "check", c.cgroup_str(), "/dev/full", "r"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let why = report["explanation"].as_str().unwrap();
    assert!(why.contains("foreign_dev"), "{why}");

    let r = env.ctdev(&["add", c.cgroup_str(), "/dev/net/tun"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (id, at) in [(here.id, &at_c), (up.id, &at_parent)] {
        let want = format!("id {id} (foreign_dev) on {at}");
        assert!(r.stderr.contains(&want), "{want}: {}", r.stderr);
    }
    env.ok(&["del", c.cgroup_str(), "/dev/net/tun"]);
    assert!(!c.host_path("/dev/net/tun").exists());

    // The daemon's adds (`LinkCheck::Pin`) skip the queries and the
    // warning, and pass the device in all the same.
    let ct = ctdev::ops::Ctdev::new(ctdev::ops::Config {
        pin_root: env.pin_root.clone(),
        ..ctdev::ops::Config::default()
    })
    .expect("open ctdev");
    let target = ctdev::target::Target::Cgroup(c.cgroup.clone());
    let req = ctdev::passthrough::PassRequest::node("/dev/net/tun");
    let quiet = ctdev::passthrough::AddOptions {
        link: ctdev::ops::LinkCheck::Pin,
        ..Default::default()
    };
    let report = ctdev::passthrough::add(&ct, &target, &req, &quiet).expect("library add");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    c.open_rw("/dev/net/tun")
        .expect("tun opens after the quiet add");
    let report = ctdev::passthrough::add(
        &ct,
        &target,
        &req,
        &ctdev::passthrough::AddOptions::default(),
    )
    .expect("library add, warning");
    assert!(
        report.warnings.iter().any(|w| w.contains("foreign_dev")),
        "{:?}",
        report.warnings
    );
    ctdev::passthrough::del(&ct, &target, &req).expect("library del");
    assert!(!c.host_path("/dev/net/tun").exists());
}

/// `add` and `del` with many device programs loaded on the system, none on
/// the container's cgroup chain: both work, none of them is named, and
/// the node works (they do not decide for the container).
#[test]
fn add_and_del_with_many_unrelated_device_programs() {
    let env = TestEnv::new("pt-many");
    let c = TestContainer::start(&env, "c", false);
    env.ok(&["attach", c.cgroup_str()]);
    // Each denies the very device added, on a sibling cgroup.
    let elsewhere: Vec<ForeignProgram> = (0..40)
        .map(|i| ForeignProgram::deny_char(&env.cgroup(&format!("x{i}")), 10, 200))
        .collect();

    let r = env.ctdev(&["add", c.cgroup_str(), "/dev/net/tun"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    c.open_rw("/dev/net/tun")
        .expect("tun opens: no unrelated program judges it");
    let v = env.list_json();
    assert_eq!(
        v["containers"][0]["other_programs"],
        serde_json::json!([]),
        "{v}"
    );
    let r = env.ctdev(&["del", c.cgroup_str(), "/dev/net/tun"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!c.host_path("/dev/net/tun").exists(), "node removed");
    assert!(!rules(&env).iter().any(|r| r.starts_with("c 10:200")));
    drop(elsewhere);
}
