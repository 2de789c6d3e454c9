//! The shared device program (`ctdev::kernel::shared`): one program loaded
//! and verified once, each container's policy in cgroup local storage.
//! Real kernel, real cgroups, real opens from processes inside them.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ctdev::cgroup::CgroupFs;
use ctdev::kernel::loader::ProgramObject;
use ctdev::kernel::pins::PinRoot;
use ctdev::kernel::raw_program::{deny_char, RawProgram};
use ctdev::kernel::shared::SharedProgram;
use ctdev::kernel::sys;
use ctdev_tests::*;

/// The steps of the shared attach sequence, in order.
const STEPS: [&str; 4] = [
    "shared.after_stub",
    "shared.after_write",
    "shared.after_link",
    "shared.after_pin",
];

fn helper(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(bin.is_file(), "{name} missing at {}", bin.display());
    bin
}

fn shared_attach(env: &TestEnv, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = Command::new(helper("shared-attach"));
    cmd.arg(args[0]).arg(&env.pin_root).args(&args[1..]);
    if let Some(step) = failpoint {
        cmd.env("CTDEV_FAILPOINT", step);
    }
    cmd.output().expect("run shared-attach")
}

fn attach_ok(env: &TestEnv, cg: &Path, rules: &[&str]) -> u32 {
    let mut args = vec!["attach", s(cg)];
    args.extend(rules);
    let out = shared_attach(env, &args, None);
    assert!(
        out.status.success(),
        "shared-attach {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("prog_id ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no prog_id in {text:?}"))
}

fn open_shared(env: &TestEnv) -> (PinRoot, SharedProgram) {
    let pins = PinRoot::new(&env.pin_root);
    pins.prepare().expect("pin root");
    let object = ProgramObject::new(None).expect("embedded object");
    let shared = SharedProgram::open_or_load(&object, &pins).expect("shared program");
    (pins, shared)
}

fn id_of(cg: &Path) -> u64 {
    CgroupFs::discover().unwrap().cgroup(cg).unwrap().id
}

fn read(path: &str) -> ProbeOp {
    ProbeOp::Open {
        path: path.into(),
        read: true,
        write: false,
    }
}

#[test]
fn shared_zero_storage_denies_everything_until_written() {
    let env = TestEnv::new("shared-zero");
    let cg = env.cgroup("c");
    let (_pins, shared) = open_shared(&env);
    let id = id_of(&cg);
    assert_eq!(
        shared.read(id).unwrap(),
        None,
        "no storage before an attach"
    );
    // The pinned program attached by hand, its storage never written.
    let dir = std::fs::File::open(&cg).unwrap();
    let link = sys::link_create_cgroup_device(shared.fd().unwrap(), dir.as_fd(), &cg).unwrap();
    let zero = shared
        .read(id)
        .unwrap()
        .expect("the attach allocated the storage");
    assert_eq!(zero.state, 0, "the kernel zero-fills it");
    assert_denied(&env, &cg, read("/dev/null"));
    assert_denied(&env, &cg, read("/dev/zero"));
    // Written: its policy decides.
    let entries =
        ctdev::plan::attach_entries(id, &[], &ctdev::rule::parse_rules(&["c 1:3 r"]).unwrap());
    assert!(shared
        .write(id, &SharedProgram::table_for(id, &entries, None).unwrap())
        .unwrap());
    assert_allowed(&env, &cg, read("/dev/null"));
    assert_denied(&env, &cg, read("/dev/zero"));
    let counters = shared.counters(id).unwrap().unwrap();
    assert!(counters.stats.denied >= 3, "{:?}", counters.stats);
    assert!(counters.hits[0] >= 1, "the /dev/null entry counted its hit");
    drop(link);
    assert_allowed(&env, &cg, read("/dev/zero"));
}

/// A handle that opened the storage maps before the shared program was
/// replaced (unpinned and loaded again, with new maps) refuses the new
/// program pin: it would attach a program reading maps it never wrote.
#[test]
fn shared_program_replaced_after_open_is_refused() {
    let env = TestEnv::new("shared-replaced");
    let (pins, loaded) = open_shared(&env);
    let dir = loaded.dir().to_path_buf();
    drop(loaded);
    let early = SharedProgram::open(&dir).expect("open the pinned maps");
    ctdev::kernel::shared::remove_pins(&pins).expect("unpin");
    let (_pins, again) = open_shared(&env);
    let err = early.prog_id().expect_err("another program's maps");
    assert!(
        matches!(err, ctdev::kernel::shared::SharedError::Replaced { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("replaced"), "{err}");
    let fresh = SharedProgram::open(&dir).expect("open the new pins");
    assert_eq!(fresh.prog_id().unwrap(), again.prog_id().unwrap());
}

#[test]
fn shared_two_containers_one_program_each_its_own_policy() {
    let env = TestEnv::new("shared-two");
    let (a, b) = (env.cgroup("a"), env.cgroup("b"));
    // Two processes: the second re-uses the pinned program (no new load).
    let pa = attach_ok(&env, &a, &["c 1:3 rw"]);
    let pb = attach_ok(&env, &b, &["c 1:5 rw"]);
    assert_eq!(pa, pb, "both containers run the one pinned program");
    let (pins, shared) = open_shared(&env);
    assert_eq!(
        shared.prog_id().unwrap(),
        pa,
        "a third opener finds the same program"
    );
    assert_allowed(&env, &a, read("/dev/null"));
    assert_denied(&env, &a, read("/dev/zero"));
    assert_denied(&env, &b, read("/dev/null"));
    assert_allowed(&env, &b, read("/dev/zero"));
    let (ia, ib) = (id_of(&a), id_of(&b));
    assert_eq!(shared.attached_ids().unwrap(), {
        let mut v = vec![ia, ib];
        v.sort_unstable();
        v
    });
    // Detaching one leaves the other as it was.
    let out = shared_attach(&env, &["detach", s(&a)], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_allowed(&env, &a, read("/dev/zero"));
    assert_denied(&env, &b, read("/dev/null"));
    assert_allowed(&env, &b, read("/dev/zero"));
    assert_eq!(shared.attached_ids().unwrap(), vec![ib]);
    assert_eq!(
        shared.entries_of(ia).unwrap(),
        None,
        "detach cleared the storage"
    );
    // Attached again, with another policy: the new one, nothing of the old.
    assert_eq!(attach_ok(&env, &a, &["c 1:5 r"]), pa);
    assert_denied(&env, &a, read("/dev/null"));
    assert_allowed(&env, &a, read("/dev/zero"));
    assert!(shared.detach(&pins, ib).unwrap());
    assert_allowed(&env, &b, read("/dev/null"));
}

/// A runtime's program is attached (it denies /dev/zero, allows /dev/null);
/// ctdev's policy allows /dev/null only. A prober inside opens both in a
/// tight loop while the attach stops at each step of the sequence, and the
/// runtime's program is detached afterwards (a takeover): /dev/null must
/// never be refused, /dev/zero never allowed.
#[test]
fn shared_takeover_window_has_no_spurious_eperm() {
    let env = TestEnv::new("shared-window");
    for step in STEPS {
        let cg = env.cgroup(step.trim_start_matches("shared."));
        let runtime =
            RawProgram::attach(&cg, "runtime", &deny_char(1, 5)).expect("runtime program");
        let stop = env.fresh_path(&format!("stop-{step}"));
        let mut prober = Command::new(helper("verdict-prober"))
            .arg(&cg)
            .arg(&stop)
            .args(["/dev/null", "/dev/zero"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start prober");
        let mut out = BufReader::new(prober.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let mut attach = Command::new(helper("shared-attach"))
            .arg("attach")
            .arg(&env.pin_root)
            .arg(&cg)
            .arg("c 1:3 r")
            .env("CTDEV_FAILPOINT", format!("{step}=stop"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start attach");
        let stat = format!("/proc/{}/stat", attach.id());
        let mut stopped = false;
        for _ in 0..2000 {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            if text.rsplit(") ").next().is_some_and(|r| r.starts_with('T')) {
                stopped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(stopped, "attach never stopped at {step}");
        // The prober runs inside the window for a while.
        std::thread::sleep(Duration::from_millis(150));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(attach.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
        assert!(attach.wait().unwrap().success(), "attach after {step}");
        std::thread::sleep(Duration::from_millis(50));
        drop(runtime);
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(&stop, "").unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert!(prober.wait().unwrap().success());
        let seen: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(rest.trim()).expect("prober JSON");
        assert!(!seen.is_empty());
        for mask in seen.keys() {
            assert_eq!(
                mask, "1",
                "stopped at {step}: a verdict other than (null allowed, zero denied): {seen:?}"
            );
        }
        assert_allowed(&env, &cg, read("/dev/null"));
        assert_denied(&env, &cg, read("/dev/zero"));
    }
}

/// SIGKILL at every step of the attach: what is left never allows more than
/// before (the runtime's program still decides, or ctdev's with its written
/// policy), nothing of a half-done attach stays attached, and a re-run works.
#[test]
fn shared_sigkill_at_every_step_leaves_fail_closed_state() {
    let env = TestEnv::new("shared-crash");
    for step in STEPS {
        let cg = env.cgroup(step.trim_start_matches("shared."));
        let runtime =
            RawProgram::attach(&cg, "runtime", &deny_char(1, 5)).expect("runtime program");
        let out = shared_attach(&env, &["attach", s(&cg), "c 1:3 r"], Some(step));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "not killed at {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_allowed(&env, &cg, read("/dev/null"));
        assert_denied(&env, &cg, read("/dev/zero"));
        drop(runtime);
        if step == "shared.after_pin" {
            // Pinned: ctdev's program with its written policy decides.
            assert_denied(&env, &cg, read("/dev/zero"));
        } else {
            // The stub and an unpinned link went with the process.
            assert_allowed(&env, &cg, read("/dev/zero"));
        }
        assert_allowed(&env, &cg, read("/dev/null"));
        attach_ok(&env, &cg, &["c 1:3 r"]);
        assert_allowed(&env, &cg, read("/dev/null"));
        assert_denied(&env, &cg, read("/dev/zero"));
    }
}

/// Through the CLI: attach puts containers on the one shared program by
/// default (and with `CTDEV_SHARED_PROGRAM=1`); list, allow, revoke, set and
/// detach work on them as on a container of the per-container layout
/// (`CTDEV_SHARED_PROGRAM=0`) attached beside them; the last detach leaves
/// no pins.
#[test]
fn shared_program_through_the_cli_beside_the_per_container_layout() {
    let env = TestEnv::new("shared-cli");
    let (a, b, old) = (env.cgroup("a"), env.cgroup("b"), env.cgroup("old"));
    let attach = |cg: &Path, rule: &str, layout: Option<&str>| {
        let args = ["attach", s(cg), "--preset", "none", "--rule", rule];
        let r = match layout {
            Some(v) => env.ctdev_env(&args, &[("CTDEV_SHARED_PROGRAM", v)]),
            None => env.ctdev(&args),
        };
        assert_eq!(r.code, 0, "attach {}: {}", cg.display(), r.stderr);
    };
    attach(&a, "c 1:3 r", None);
    attach(&b, "c 1:5 r", Some("1"));
    attach(&old, "c 1:3 r", Some("0"));
    let dump = env.list_json();
    let entry = |cg: &Path| {
        dump["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["policy_id"].as_u64() == Some(id_of(cg)))
            .unwrap_or_else(|| panic!("{} not listed: {dump}", cg.display()))
            .clone()
    };
    let prog = |cg: &Path| entry(cg)["program_id"].as_u64().unwrap();
    let layout = |cg: &Path| entry(cg)["layout"].as_str().unwrap().to_string();
    assert_eq!(layout(&a), "shared", "{dump}");
    assert_eq!(layout(&b), "shared", "{dump}");
    assert_eq!(prog(&a), prog(&b), "one program for both: {dump}");
    // The opt-out: `old` has a program instance and maps of its own.
    assert_eq!(layout(&old), "per_container", "{dump}");
    assert_ne!(prog(&a), prog(&old), "the per-container one is its own");
    assert!(env
        .pin_root
        .join("tables")
        .join(id_of(&old).to_string())
        .exists());
    assert_eq!(listed_rules(&env, &a).unwrap().1, ["c 1:3 r"]);
    assert_eq!(listed_rules(&env, &b).unwrap().1, ["c 1:5 r"]);
    assert_eq!(listed_rules(&env, &old).unwrap().1, ["c 1:3 r"]);
    assert_allowed(&env, &a, read("/dev/null"));
    assert_denied(&env, &a, read("/dev/zero"));
    // allow / revoke / set on a shared container.
    env.ok(&["allow", s(&a), "c 1:5 r"]);
    assert_allowed(&env, &a, read("/dev/zero"));
    env.ok(&["revoke", s(&a), "c 1:3 r"]);
    assert_denied(&env, &a, read("/dev/null"));
    env.ok(&["set", s(&a), "c 1:3 rw", "c 1:7 r"]);
    assert_allowed(&env, &a, read("/dev/null"));
    assert_denied(&env, &a, read("/dev/zero"));
    let mut rules = listed_rules(&env, &a).unwrap().1;
    rules.sort();
    assert_eq!(rules, ["c 1:3 rw", "c 1:7 r"]);
    // b never saw any of it.
    assert_eq!(listed_rules(&env, &b).unwrap().1, ["c 1:5 r"]);
    assert_denied(&env, &b, read("/dev/null"));
    for cg in [&a, &b, &old] {
        env.ok(&["detach", s(cg)]);
        assert_allowed(&env, cg, read("/dev/zero"));
    }
    assert!(!env.pin_root.exists(), "pins left behind");
}

/// The per-container layout (`CTDEV_SHARED_PROGRAM=0`) keeps its crash
/// guarantees now that the shared program is the default: an attach killed
/// at each of its steps leaves either no policy (all allowed, as before) or
/// the complete one; attaching again with the opt-out repairs it onto the
/// per-container layout, where allow, revoke and detach keep working.
#[test]
fn per_container_opt_out_killed_at_every_step_converges() {
    for step in [
        "attach.after_load",
        "attach.after_rules",
        "attach.after_link_create",
        "attach.after_pin",
    ] {
        let env = TestEnv::new("shared-optout-crash");
        let cg = env.cgroup("c");
        let args = ["attach", s(&cg), "--preset", "none", "--rule", "c 1:5 r"];
        let r = env.ctdev_env(
            &args,
            &[("CTDEV_FAILPOINT", step), ("CTDEV_SHARED_PROGRAM", "0")],
        );
        assert_eq!(r.signal, Some(libc::SIGKILL), "{step}: {}", r.stderr);
        match listed_rules(&env, &cg) {
            None => assert_allowed(&env, &cg, read("/dev/null")),
            Some((state, rules)) => {
                assert_eq!(state, "enforcing", "{step}");
                assert_eq!(rules, ["c 1:5 r"], "{step}");
                assert_denied(&env, &cg, read("/dev/null"));
            }
        }
        let r = env.ctdev_env(&args, &[("CTDEV_SHARED_PROGRAM", "0")]);
        assert_eq!(r.code, 0, "{step}: {}", r.stderr);
        let dump = env.list_json();
        assert_eq!(dump["orphaned"], serde_json::json!([]), "{step}: {dump}");
        let layout = dump["containers"][0]["layout"].as_str().unwrap_or_default();
        assert_eq!(layout, "per_container", "{step}: {dump}");
        assert_denied(&env, &cg, read("/dev/null"));
        assert_allowed(&env, &cg, read("/dev/zero"));
        env.ok(&["allow", s(&cg), "c 1:3 r"]);
        env.ok(&["revoke", s(&cg), "c 1:5 r"]);
        assert_allowed(&env, &cg, read("/dev/null"));
        assert_denied(&env, &cg, read("/dev/zero"));
        env.ok(&["detach", s(&cg)]);
        assert_allowed(&env, &cg, read("/dev/zero"));
    }
}
