//! The bad-input matrix and privilege boundaries not already covered by
//! enforcement.rs (`bad_input_fails_clearly_and_changes_nothing`,
//! `removed_cgroup_shows_defunct_and_detaches_by_id`) and passthrough.rs
//! (`bad_inputs_change_nothing`: missing path, regular file, unknown
//! interface, bad --access/--mode, relative DEST, del of what was never
//! added; `paths_cannot_escape_the_container_root`: `..`, `.`, absolute and
//! magic symlinks). Each case: a clear error naming the problem, and the
//! state (`list --json`, the container's /dev) unchanged.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ctdev_tests::container::TestContainer;
use ctdev_tests::foreign::ForeignProgram;
use ctdev_tests::*;

/// Fails with an error containing every one of `want`, and `list --json`
/// is the same before and after.
#[track_caller]
fn refused(env: &TestEnv, args: &[&str], want: &[&str]) -> String {
    let before = env.ctdev(&["list", "--json"]).stdout;
    let err = env.fails(args);
    for w in want {
        assert!(err.contains(w), "ctdev {args:?}: expected {w:?} in:\n{err}");
    }
    assert_eq!(
        env.ctdev(&["list", "--json"]).stdout,
        before,
        "ctdev {args:?} changed the policy"
    );
    err
}

#[test]
fn malformed_rules_name_the_bad_field() {
    let (env, cg) = TestEnv::with_attached("hd-rules", "c", &[]);
    let c = s(&cg);
    for (rule, want) in [
        ("c 1 r", "invalid device numbers \"1\""),
        ("c 1:3 r extra", "unexpected \"extra\""),
        ("c 4096:1 r", "invalid major \"4096\""),
        ("c 1:1048576 r", "invalid minor \"1048576\""),
        ("c -1:3 r", "invalid major \"-1\""),
        ("c 1:+3 r", "invalid minor \"+3\""),
        ("c 1:3 rr", "invalid access \"rr\""),
        ("b", "invalid device numbers \"\""),
        ("x 1:3", "invalid type \"x\""),
        ("/dev/null rx", "invalid access \"rx\""),
        ("/dev/null r w", "unexpected \"w\""),
    ] {
        refused(&env, &["allow", c, rule], &[want]);
    }
}

#[test]
fn device_arguments_that_are_not_devices() {
    let env = TestEnv::new("hd-dev");
    let c = TestContainer::attached(&env, "c");
    let listing = c.listing("/dev");
    // A directory with no device nodes.
    let empty = env.scratch.join("empty-dir");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    std::fs::write(empty.join("sub/file"), "x").unwrap();
    refused(
        &env,
        &["add", c.cgroup_str(), s(&empty)],
        &["no device node under", s(&empty)],
    );
    // A rule path that is a regular file or a directory.
    refused(
        &env,
        &["allow", c.cgroup_str(), "/etc/hostname"],
        &["/etc/hostname"],
    );
    refused(&env, &["allow", c.cgroup_str(), s(&empty)], &[s(&empty)]);
    assert_eq!(c.listing("/dev"), listing);
}

#[test]
fn symlink_to_a_device_is_followed_and_said() {
    let env = TestEnv::new("hd-symlink");
    let c = TestContainer::attached(&env, "c");
    let link = env.scratch.join("zero-link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let out = env.ok(&["add", c.cgroup_str(), s(&link), "/dev/z"]);
    assert!(
        out.contains("/dev/zero"),
        "names where the symlink led: {out}"
    );
    let json = env.ok(&["--json", "add", c.cgroup_str(), s(&link), "/dev/z"]);
    assert!(json.contains("\"resolved\": \"/dev/zero\""), "{json}");
    c.open_rw("/dev/z").expect("node opens");
}

#[test]
fn dest_on_read_only_or_nodev_mount_is_refused() {
    let env = TestEnv::new("hd-mounts");
    let c = TestContainer::attached(&env, "c");
    // Mounts inside the container's mount namespace only.
    let mk = |dir: &str, opts: &str| {
        let o = Command::new("nsenter")
            .args(["-t", &c.pid.to_string(), "-m", "--", "sh", "-c"])
            .arg(format!(
                "mkdir -p '{root}/{dir}' && mount -t tmpfs -o {opts} ctdev-test '{root}/{dir}'",
                root = c.root.display()
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    };
    mk("ro", "ro");
    mk("nodev", "nodev");
    let before = c.listing("/ro /nodev /dev");
    refused(
        &env,
        &["add", c.cgroup_str(), "/dev/zero", "/ro/zero"],
        &["/ro/zero", "Read-only file system"],
    );
    refused(
        &env,
        &["add", c.cgroup_str(), "/dev/zero", "/nodev/sub/zero"],
        &["/nodev/sub/zero", "nodev"],
    );
    assert_eq!(c.listing("/ro /nodev /dev"), before, "nothing created");
}

#[test]
fn unknown_and_ambiguous_targets() {
    let env = TestEnv::new("hd-target");
    let id = format!("{:x}", std::process::id() as u64 * 7919 + 0xabc000);
    let full = |last: char| format!("{id:0<63}{last}");
    // Two runtimes' scopes whose (64-hex-digit) IDs share a prefix.
    let d = env.cgroup(&format!("docker-{}.scope", full('1')));
    let p = env.cgroup(&format!("libpod-{}.scope", full('2')));
    refused(&env, &["attach", &id], &["ambiguous", "docker", "podman"]);
    refused(&env, &["attach", &format!("nosuch{id}")], &["nosuch"]);
    refused(
        &env,
        &["attach", "docker:ffffffffffffdead"],
        &["ffffffffffffdead"],
    );
    assert_allowed(&env, &d, ProbeOp::read("/dev/null"));
    assert_allowed(&env, &p, ProbeOp::read("/dev/null"));
    assert!(!env.pin_root.exists(), "nothing pinned");
}

#[test]
fn container_exited_before_and_during_add() {
    let env = TestEnv::new("hd-exited");
    // No process at all.
    let empty = env.cgroup("empty");
    env.ok(&["attach", s(&empty), "--preset", "none"]);
    refused(&env, &["add", s(&empty), "/dev/zero"], &["no process"]);

    // The init exits between resolution and the rule: stop ctdev right
    // after it made the node, kill the container, let ctdev go on.
    let c = TestContainer::attached(&env, "c");
    let before = env.ctdev(&["list", "--json"]).stdout;
    let child = stopped_at(
        &env,
        "add.after_nodes",
        &["add", c.cgroup_str(), "/dev/zero", "/dev/z"],
    );
    assert!(c.host_path("/dev/z").exists(), "node made before the stop");
    let _ = std::fs::write(c.cgroup.join("cgroup.kill"), "1");
    wait_until(|| !Path::new(&format!("/proc/{}", c.pid)).exists());
    let err = resume_failing(child);
    assert!(err.contains("container exited"), "{err}");
    assert_eq!(env.ctdev(&["list", "--json"]).stdout, before, "rule undone");
}

#[test]
fn cgroup_removed_mid_attach() {
    let env = TestEnv::new("hd-rmcg");
    let cg = env.cgroup("c");
    let child = stopped_at(&env, "attach.after_rules", &attach_args(&cg, &[]));
    std::fs::remove_dir(&cg).unwrap();
    let err = resume_failing(child);
    assert!(err.contains(s(&cg)), "names the cgroup: {err}");
    let dump = env.list_json();
    assert_eq!(dump["containers"], serde_json::json!([]), "{dump}");
    assert_eq!(
        dump["orphaned"],
        serde_json::json!([]),
        "entries restored: {dump}"
    );
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached in 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Continues a ctdev stopped at a failpoint; it must fail with exit 2.
/// Returns its stderr.
fn resume_failing(child: std::process::Child) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGCONT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

/// Starts ctdev with `args` and waits until it stops at the failpoint
/// `step` (SIGSTOP); resume it with [`resume_failing`].
fn stopped_at(env: &TestEnv, step: &str, args: &[&str]) -> std::process::Child {
    let child = Command::new(ctdev_bin())
        .arg("--pin-root")
        .arg(&env.pin_root)
        .args(args)
        .env("CTDEV_FAILPOINT", format!("{step}=stop"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(child.id());
    child
}

fn wait_stopped(pid: u32) {
    wait_until(|| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('T')
            })
            .unwrap_or(false)
    });
}

#[test]
fn the_kernels_64_program_limit_is_a_clear_error() {
    let env = TestEnv::new("hd-64");
    let cg = env.cgroup("c");
    let progs: Vec<ForeignProgram> = (0..64)
        .map(|i| ForeignProgram::deny_char(&cg, 250, i))
        .collect();
    refused(&env, &["attach", s(&cg)], &["64 device programs", s(&cg)]);
    assert!(
        std::fs::read_dir(env.pin_root.join("links"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "no link pinned"
    );
    drop(progs);
    env.ok(&["attach", s(&cg)]);
}

#[test]
fn without_root_or_capabilities_every_command_refuses() {
    let (env, cg) = TestEnv::with_attached("hd-caps", "c", &[]);
    let before = env.list_json();
    let bin = ctdev_bin();
    for (who, pre) in [
        (
            "root without capabilities",
            vec!["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"],
        ),
        (
            "nobody",
            vec![
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ],
        ),
    ] {
        for args in [
            vec!["allow", s(&cg), "c 1:3 r"],
            vec!["detach", s(&cg)],
            vec!["list"],
        ] {
            let out = Command::new(pre[0])
                .args(&pre[1..])
                .arg(&bin)
                .arg("--pin-root")
                .arg(&env.pin_root)
                .args(&args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{who} {args:?}: {err}");
            assert!(
                err.contains("must run as root") && err.contains("CAP_"),
                "{who} {args:?}: {err}"
            );
        }
    }
    assert_eq!(env.list_json(), before);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
}

#[test]
fn no_cgroup2_and_no_bpffs_are_clear_errors() {
    let env = TestEnv::new("hd-fs");
    let cg = env.cgroup("c");
    refused(
        &env,
        &["--cgroup-root", s(&env.scratch), "attach", s(&cg)],
        &["cgroup2", s(&env.scratch)],
    );
    let outside = env.scratch.join("pins");
    let r = Command::new(ctdev_bin())
        .arg("--pin-root")
        .arg(&outside)
        .args(["attach", s(&cg)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not on a bpf filesystem") && err.contains(s(&outside)),
        "{err}"
    );
    assert!(!outside.exists());
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
}

/// ctdev's own eBPF object (the one `cargo xtask` embeds) with every
/// `exit` of its device programs made an invalid opcode: it parses, and
/// the kernel refuses each program at load.
fn object_the_kernel_refuses() -> Vec<u8> {
    let path = std::env::var_os("CTDEV_EBPF_OBJECT")
        .expect("CTDEV_EBPF_OBJECT is not set: run the tests with `cargo xtask test`");
    let mut elf = std::fs::read(&path).expect("read the eBPF object");
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    // ELF64 section headers: name at 0, offset at 0x18, size at 0x20.
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&elf, 0x28),
        u16_at(&elf, 0x3a),
        u16_at(&elf, 0x3c),
        u16_at(&elf, 0x3e),
    );
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(&elf, header(shstrndx) + 0x18);
    let mut exits = 0;
    for i in 0..shnum {
        let name = names + u32_at(&elf, header(i));
        if !elf[name..].starts_with(b"cgroup/dev\0") {
            continue;
        }
        let (off, size) = (
            u64_at(&elf, header(i) + 0x18),
            u64_at(&elf, header(i) + 0x20),
        );
        for insn in (off..off + size).step_by(8) {
            // BPF_JMP | BPF_EXIT; opcode 0 is no instruction.
            if elf[insn] == 0x95 {
                elf[insn] = 0;
                exits += 1;
            }
        }
    }
    assert!(exits > 0, "no cgroup/dev program found in {path:?}");
    elf
}

#[test]
fn an_object_ctdev_cannot_load_is_refused_and_leaves_no_pins() {
    let env = TestEnv::new("hd-obj");
    let cg = env.cgroup("c");
    // Not an eBPF object at all: refused before anything is made.
    let junk = env.scratch.join("junk.o");
    std::fs::write(&junk, b"not an ELF object").unwrap();
    let err = env.fails(&["--bpf-object", s(&junk), "attach", s(&cg)]);
    assert!(
        err.contains(s(&junk)) && err.contains("is not an eBPF object"),
        "{err}"
    );
    assert!(!env.pin_root.exists(), "a pin root was made for {err}");
    // An object that parses, whose programs the kernel refuses after the
    // pin root and its maps were made: they are removed again.
    let refused_obj = env.scratch.join("refused.o");
    std::fs::write(&refused_obj, object_the_kernel_refuses()).unwrap();
    for layout in ["1", "0"] {
        let r = env.ctdev_env(
            &["--bpf-object", s(&refused_obj), "attach", s(&cg)],
            &[("CTDEV_SHARED_PROGRAM", layout)],
        );
        assert_ne!(r.code, 0, "layout {layout}: attach succeeded: {}", r.stdout);
        assert!(
            r.stderr.contains("loading the ctdev program"),
            "layout {layout}: {}",
            r.stderr
        );
        assert!(
            !env.pin_root.exists(),
            "layout {layout}: left behind: {:?}",
            std::fs::read_dir(&env.pin_root)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
    }
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    // The sequence goes on: the embedded object attaches as on a new host.
    env.ok(&["attach", s(&cg), "--preset", "none"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
}

#[test]
fn map_pin_removed_by_hand_is_reported_and_refused() {
    let (env, cg) = TestEnv::with_attached("hd-mappin", "c", &["c 1:5 r"]);
    std::fs::remove_file(env.pin_root.join("CTDEV_POLICY")).unwrap();
    // The program still enforces its (now unpinned) map.
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    assert_allowed(&env, &cg, ProbeOp::read("/dev/zero"));
    let dump = env.list_json();
    assert!(
        dump["problems"]
            .to_string()
            .contains("CTDEV_POLICY is missing"),
        "{dump}"
    );
    let other = env.cgroup("d");
    for args in [vec!["allow", s(&cg), "c 1:3 r"], vec!["attach", s(&other)]] {
        refused(&env, &args, &["CTDEV_POLICY is missing", "refusing"]);
    }
    assert_allowed(&env, &other, ProbeOp::read("/dev/null"));
    // Detach still works (the link is there) and clears the root.
    env.ok(&["detach", s(&cg)]);
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
}

#[test]
fn link_pin_removed_by_hand_is_reported_and_attach_repairs() {
    let env = TestEnv::new("hd-linkpin");
    let cg = env.cgroup("c");
    let id = env.attach_rules_json(&cg, &["c 1:5 r"])["policy_id"]
        .as_u64()
        .unwrap();
    std::fs::remove_file(env.pin_root.join("links").join(id.to_string())).unwrap();
    // The last reference is gone: the kernel detaches the program, from a
    // workqueue (bpf_link_put defers the release), so not always before
    // the next open.
    ctdev_tests::daemon::wait_until(
        Duration::from_secs(5),
        "the kernel to release the unpinned link",
        || {
            env.try_op(&cg, &ProbeOp::read("/dev/null"))
                .is_ok()
                .then_some(())
        },
    );
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    let dump = env.list_json();
    assert!(
        dump["problems"].to_string().contains("no link pin"),
        "{dump}"
    );
    refused(
        &env,
        &["allow", s(&cg), "c 1:3 r"],
        &["not under ctdev policy", "ctdev attach"],
    );
    env.attach_rules(&cg, &["c 1:5 r"]);
    assert_denied(&env, &cg, ProbeOp::read("/dev/null"));
    let dump = env.list_json();
    assert_eq!(dump["problems"], serde_json::json!([]), "{dump}");
}

/// Pins a 1-entry array map (not ctdev's) at `path`.
fn pin_foreign_map(path: &Path) -> OwnedFd {
    let fd = ctdev::kernel::container_maps::create_foreign_array(4, "foreign")
        .unwrap_or_else(|e| panic!("creating a foreign map: {e}"));
    ctdev::kernel::sys::obj_pin(fd.as_fd(), path)
        .unwrap_or_else(|e| panic!("pinning the foreign map: {e}"));
    fd
}

#[test]
fn foreign_objects_where_pins_should_be_are_never_touched() {
    let env = TestEnv::new("hd-foreign");
    let cg = env.cgroup("c");
    std::fs::create_dir_all(env.pin_root.join("links")).unwrap();
    let map_pin = env.pin_root.join("CTDEV_POLICY");
    let _m = pin_foreign_map(&map_pin);
    refused(
        &env,
        &["attach", s(&cg)],
        &["is not ctdev's policy map", "refusing"],
    );
    assert!(map_pin.exists(), "foreign map left alone");
    assert_allowed(&env, &cg, ProbeOp::read("/dev/null"));
    std::fs::remove_file(&map_pin).unwrap();

    // A foreign object at links/<id>.
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg).unwrap());
    let link_pin = env.pin_root.join("links").join(id.to_string());
    let _l = pin_foreign_map(&link_pin);
    refused(
        &env,
        &["attach", s(&cg)],
        &["not a ctdev cgroup device link", "refusing"],
    );
    refused(
        &env,
        &["detach", s(&cg)],
        &["not a ctdev cgroup device link"],
    );
    assert!(link_pin.exists(), "foreign pin left alone");
    assert!(env.list_json()["foreign_pins"]
        .to_string()
        .contains(&id.to_string()));
    std::fs::remove_file(&link_pin).unwrap();
}

#[test]
fn policy_map_full_is_refused_whole() {
    let (env, cg) = TestEnv::with_attached("hd-full", "c", &[]);
    // 65,536 entries fill the map (its capacity, POLICY_MAP_CAPACITY).
    let mut args: Vec<String> = vec!["allow".into(), s(&cg).into()];
    for ma in 0..64 {
        for mi in 0..1024 {
            args.push(format!("c {}:{mi} r", 300 + ma));
        }
    }
    let mut first: Vec<&str> = args.iter().map(String::as_str).collect();
    let last = first.split_off(first.len() - 6);
    env.ok(&first);
    // A batch of 6 with room for 5: refused, and none of it stays.
    let mut batch = vec!["allow", s(&cg)];
    batch.extend(&last);
    batch.push("c 999:1 r");
    let before = env.ctdev(&["list", "--json"]).stdout;
    let err = env.fails(&batch);
    assert!(err.contains("is full (65536 entries)"), "{err}");
    assert_eq!(env.ctdev(&["list", "--json"]).stdout, before);
    env.ok(&["detach", s(&cg)]);
}

/// Runs the bpf-poke helper inside a user-namespaced container (its user,
/// mount and net namespaces and its cgroup).
fn poke(env: &TestEnv, c: &TestContainer, ops: &[String]) -> String {
    let helper = built_binary("bpf-poke", "build with `cargo build -p ctdev-tests --bins`");
    let copy = env.scratch.join("bpf-poke");
    std::fs::copy(&helper, &copy).unwrap();
    let script = format!(
        "echo $$ > \"$1/cgroup.procs\" && shift && exec nsenter -t {} -U -m -n -- \"$@\"",
        c.pid
    );
    let out = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(&c.cgroup)
        .arg(&copy)
        .args(ops)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_container_cannot_reach_ctdevs_objects() {
    let env = TestEnv::new("hd-priv");
    let c = TestContainer::start(&env, "c", true);
    let other = env.cgroup("other");
    env.ok(&["attach", c.cgroup_str(), "--preset", "none"]);
    env.ok(&["attach", s(&other), "--preset", "none"]);
    let dump = env.list_json();
    let ct = dump["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["cgroup_dir"] == c.cgroup_str())
        .unwrap()
        .clone();
    // Pins are 0600/0700 and root's.
    use std::os::unix::fs::MetadataExt;
    for (p, mode) in [
        (env.pin_root.clone(), 0o700),
        (env.pin_root.join("links"), 0o700),
        (env.pin_root.join("CTDEV_POLICY"), 0o600),
        (
            std::path::PathBuf::from(ct["link_pin"].as_str().unwrap()),
            0o600,
        ),
    ] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (mode, 0), "{}", p.display());
    }
    let ops: Vec<String> = [
        ("obj_get", s(&env.pin_root.join("CTDEV_POLICY")).to_string()),
        ("obj_get", ct["link_pin"].as_str().unwrap().to_string()),
        ("map_id", dump["policy_map"]["map_id"].to_string()),
        ("prog_id", ct["program_id"].to_string()),
        ("link_id", ct["link_id"].to_string()),
        ("unlink", ct["link_pin"].as_str().unwrap().to_string()),
        ("prog_detach", c.cgroup_str().to_string()),
    ]
    .into_iter()
    .flat_map(|(a, b)| [a.to_string(), b])
    .chain([
        "write".to_string(),
        s(&other.join("cgroup.procs")).to_string(),
        "1".to_string(),
    ])
    .collect();
    let out = poke(&env, &c, &ops);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    for l in &lines {
        assert!(!l.ends_with(": ok"), "the container could: {l}\n{out}");
    }
    // Still enforcing, nothing changed.
    assert_eq!(env.list_json()["containers"], dump["containers"]);
    assert!(c.open_rw("/dev/null").is_err() || !c.host_path("/dev/null").exists());
    assert_denied(&env, &c.cgroup, ProbeOp::read("/dev/null"));
}
