//! Harness for ctdev's real-kernel integration tests.
//!
//! Each [`TestEnv`] owns a unique parent cgroup under the cgroup2 mount and a
//! unique pin root in bpffs, runs the real `ctdev` binary against them, and
//! on drop (also when a test panics) detaches every program, kills every
//! process, and removes every cgroup, pin and node it created.

/// What the churn test and the churn bench share.
pub mod churn;
pub mod container;
/// A real containerd 1.7 with NRI and a CRI client, for the NRI plugin tests.
pub mod containerd;
/// `ctdev daemon` as a child process, hotplugged loop devices, and
/// first-instruction device probes.
pub mod daemon;
/// The differential test of `--takeover` against the real runc and crun.
pub mod difftest;
/// Real Docker and Podman engines (Podman also with crun and with a
/// private CDI spec directory).
pub mod engines;
/// Commands raced as separate processes, and the grants they leave.
pub mod race;
/// Real LXC and runc containers for the runtime tests.
pub mod runtimes;
/// A udevd of the tests' own and rule files standing in for USB adapters.
pub mod udev;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub use ctdev::probe::{probe, ProbeOp};
pub use ctdev::rule::DeviceType;
pub use nix::errno::Errno;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A path as `&str`, for command-line arguments (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A name no other test (in this or a parallel run) uses.
pub fn unique(name: &str) -> String {
    format!(
        "ctdev-test-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        name
    )
}

/// The ctdev binary under test: `CTDEV_BIN`, or the one cargo built next to
/// this test executable. Panics (fails the test) if there is none.
pub fn ctdev_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CTDEV_BIN") {
        return PathBuf::from(p);
    }
    built_binary("ctdev", "run the suite with `cargo xtask test`")
}

/// The binary `name` cargo built with this crate (`target/<profile>/NAME`):
/// a test executable lives in `target/<profile>/deps`, a bench binary (the
/// churn bench) beside it. Panics (fails the test) naming `how` to build it
/// when there is none.
pub fn built_binary(name: &str, how: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("target dir");
    let bin = [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join(name));
    assert!(
        bin.is_file(),
        "{name} binary not found at {}: {how}",
        bin.display()
    );
    bin
}

/// The cgroup2 mount point, found the way ctdev finds it.
pub fn cgroup_mount() -> PathBuf {
    ctdev::cgroup::CgroupFs::discover()
        .expect("cgroup2 must be mounted for the integration tests")
        .mount()
        .to_path_buf()
}

/// Result of one ctdev run.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Run {
            signal: o.status.signal(),
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// One isolated test environment: a parent cgroup, a pin root, scratch nodes.
pub struct TestEnv {
    /// Unique name.
    pub name: String,
    /// Parent cgroup directory of this test's "containers".
    pub cgroup_parent: PathBuf,
    /// Pin root for this test.
    pub pin_root: PathBuf,
    /// Scratch directory for device nodes.
    pub scratch: PathBuf,
}

impl TestEnv {
    /// Creates the parent cgroup, and picks (does not create) the pin root.
    pub fn new(name: &str) -> Self {
        let name = unique(name);
        let cgroup_parent = cgroup_mount().join(&name);
        fs::create_dir(&cgroup_parent).expect("create test parent cgroup");
        let scratch = std::env::temp_dir().join(&name);
        fs::create_dir(&scratch).expect("create scratch dir");
        TestEnv {
            pin_root: PathBuf::from("/sys/fs/bpf").join(&name),
            cgroup_parent,
            scratch,
            name,
        }
    }

    /// Where ctdev keeps this env's grant records (derived from the pin root).
    pub fn state_dir(&self) -> PathBuf {
        ctdev::grants::Store::new(&self.pin_root, None)
            .dir()
            .to_path_buf()
    }

    /// Creates a child cgroup (a "container") under the parent; `rel` may be nested (`a/b`).
    pub fn cgroup(&self, rel: &str) -> PathBuf {
        let dir = self.cgroup_parent.join(rel);
        fs::create_dir_all(&dir).expect("create cgroup");
        dir
    }

    /// Runs ctdev with this env's pin root.
    pub fn ctdev(&self, args: &[&str]) -> Run {
        Command::new(ctdev_bin())
            .arg("--pin-root")
            .arg(&self.pin_root)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run ctdev")
            .into()
    }

    /// Runs ctdev with extra environment variables (e.g. `CTDEV_FAILPOINT`).
    pub fn ctdev_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        Command::new(ctdev_bin())
            .arg("--pin-root")
            .arg(&self.pin_root)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(envs.iter().copied())
            .output()
            .expect("run ctdev")
            .into()
    }

    /// Runs ctdev with `CTDEV_FAILPOINT=step` and requires that it was
    /// killed there (SIGKILL): fails loudly when the binary was built
    /// without the `failpoints` feature or the step was not reached.
    #[track_caller]
    pub fn crash_at(&self, step: &str, args: &[&str]) -> Run {
        let r = self.ctdev_env(args, &[("CTDEV_FAILPOINT", step)]);
        assert_eq!(
            r.signal,
            Some(libc::SIGKILL),
            "ctdev {args:?} with CTDEV_FAILPOINT={step} was not killed at the step \
             (is the binary built with --features ctdev/failpoints, as `cargo xtask test` does?):\n\
             code {} stdout: {}\nstderr: {}",
            r.code,
            r.stdout,
            r.stderr
        );
        r
    }

    /// Runs ctdev and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.ctdev(args);
        assert_eq!(
            r.code, 0,
            "ctdev {args:?} failed:\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    /// A new environment (see [`TestEnv::new`]) with its cgroup `cgroup`
    /// attached with exactly `rules` ([`TestEnv::attach_rules`]): the start
    /// of most single-cgroup tests. Returns the environment and the cgroup.
    pub fn with_attached(name: &str, cgroup: &str, rules: &[&str]) -> (Self, PathBuf) {
        let env = Self::new(name);
        let cg = env.cgroup(cgroup);
        env.attach_rules(&cg, rules);
        (env, cg)
    }

    /// `ctdev attach CGROUP --preset none --rule R…` (exactly `rules`, no
    /// preset); requires success and returns stdout.
    pub fn attach_rules(&self, cgroup: &Path, rules: &[&str]) -> String {
        self.ok(&attach_args(cgroup, rules))
    }

    /// [`TestEnv::attach_rules`] with `--json`: the attach report.
    pub fn attach_rules_json(&self, cgroup: &Path, rules: &[&str]) -> serde_json::Value {
        let out = self.ok(&[&["--json"][..], &attach_args(cgroup, rules)].concat());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("attach --json: {e}: {out}"))
    }

    /// Runs ctdev and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let r = self.ctdev(args);
        assert_ne!(
            r.code, 0,
            "ctdev {args:?} should have failed:\nstdout: {}",
            r.stdout
        );
        assert!(
            r.stderr.contains("error"),
            "no error message from {args:?}: {}",
            r.stderr
        );
        r.stderr
    }

    /// `ctdev list --json` as a value.
    pub fn list_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["list", "--json"])).expect("list --json is JSON")
    }

    /// The kernel's verdict for `op` from a process inside `cgroup`.
    pub fn try_op(&self, cgroup: &Path, op: &ProbeOp) -> Result<(), Errno> {
        probe(cgroup, op).expect("probe ran")
    }

    /// Creates a device node in the scratch dir (host side, outside any test cgroup).
    pub fn node(&self, name: &str, dev_type: DeviceType, major: u32, minor: u32) -> PathBuf {
        let path = self.scratch.join(name);
        make_node(&path, dev_type, major, minor);
        path
    }

    /// A path in the scratch dir that does not exist yet (for mknod probes).
    pub fn fresh_path(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }
}

/// Asserts the kernel allowed `op` in `cgroup`.
#[track_caller]
pub fn assert_allowed(env: &TestEnv, cgroup: &Path, op: ProbeOp) {
    assert_verdict(env, cgroup, op, Ok(()), "allowed");
}

/// Asserts the device controller denied `op` in `cgroup` (EPERM).
#[track_caller]
pub fn assert_denied(env: &TestEnv, cgroup: &Path, op: ProbeOp) {
    assert_verdict(env, cgroup, op, Err(Errno::EPERM), "denied");
}

/// Asserts the kernel's verdict for `op` in `cgroup` is `want` (`what` in
/// the message).
#[track_caller]
fn assert_verdict(env: &TestEnv, cgroup: &Path, op: ProbeOp, want: Result<(), Errno>, what: &str) {
    let got = env.try_op(cgroup, &op);
    assert_eq!(got, want, "expected {op:?} {what} in {}", cgroup.display());
}

/// Asserts the device controller let `op` through (any result but EPERM:
/// a node with no driver behind it fails later, with ENXIO/ENODEV).
#[track_caller]
pub fn assert_not_denied(env: &TestEnv, cgroup: &Path, op: ProbeOp) {
    let got = env.try_op(cgroup, &op);
    assert_ne!(
        got,
        Err(Errno::EPERM),
        "expected {op:?} past the device controller in {}",
        cgroup.display()
    );
}

fn kill_and_remove_cgroups(dir: &Path) {
    // Children first.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_and_remove_cgroups(&e.path());
            }
        }
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..200 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    eprintln!("warning: could not remove test cgroup {}", dir.display());
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Detach whatever is still attached (removing the pins detaches too,
        // but this also exercises the normal path and clears the entries).
        if let Ok(v) =
            serde_json::from_str::<serde_json::Value>(&self.ctdev(&["list", "--json"]).stdout)
        {
            let ids = v["containers"].as_array().cloned().unwrap_or_default();
            for c in ids {
                if let Some(id) = c["policy_id"].as_u64() {
                    let _ = self.ctdev(&["detach", &format!("id:{id}")]);
                }
            }
        }
        if self.pin_root.exists() {
            let _ = fs::remove_dir_all(&self.pin_root);
        }
        let _ = fs::remove_dir_all(self.state_dir());
        kill_and_remove_cgroups(&self.cgroup_parent);
        let _ = fs::remove_dir_all(&self.scratch);
    }
}

/// A process parked in a cgroup (for pid:N targets), killed on drop.
pub struct Parked {
    child: std::process::Child,
}

impl Parked {
    /// Starts `sleep` inside `cgroup`.
    pub fn in_cgroup(cgroup: &Path) -> Self {
        let procs = cgroup.join("cgroup.procs");
        let parked = Parked {
            child: Command::new("sh")
                .arg("-c")
                .arg("echo $$ > \"$1\" && exec sleep 600")
                .arg("sh")
                .arg(&procs)
                .spawn()
                .expect("spawn parked process"),
        };
        let pid = parked.pid().to_string();
        for _ in 0..500 {
            if fs::read_to_string(&procs)
                .unwrap_or_default()
                .lines()
                .any(|l| l == pid)
            {
                return parked;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("process {pid} did not join {}", cgroup.display());
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
pub mod foreign;

/// The state and rules `ctdev list --json` shows for the container at `cg`.
pub fn listed_rules(env: &TestEnv, cg: &Path) -> Option<(String, Vec<String>)> {
    let v = env.list_json();
    v["containers"].as_array()?.iter().find_map(|c| {
        (c["cgroup_dir"].as_str() == cg.to_str()).then(|| {
            (
                c["state"].as_str().unwrap_or("").to_string(),
                c["rules"]
                    .as_array()
                    .map(|rs| {
                        rs.iter()
                            .filter_map(|r| r["rule"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
    })
}

/// The rules `ctdev list --json` shows for the container at `cg`, in the
/// listed order (empty when it is not listed).
pub fn rules_of(env: &TestEnv, cg: &Path) -> Vec<String> {
    listed_rules(env, cg).map(|(_, r)| r).unwrap_or_default()
}

/// Whether an open from inside failed with EPERM (the device policy's
/// refusal, not a missing node).
pub fn denied(r: &Result<(), String>) -> bool {
    matches!(r, Err(e) if e.contains("Operation not permitted"))
}

/// Makes a character device node `major:minor` (mode 0666) at `p`.
pub fn mknod(p: &Path, major: u32, minor: u32) {
    make_node(p, DeviceType::Char, major, minor);
}

/// Makes a device node `major:minor` of `dev_type` (a block node for
/// [`DeviceType::Block`], else a character node; mode 0666) at `p`.
pub fn make_node(p: &Path, dev_type: DeviceType, major: u32, minor: u32) {
    let kind = if dev_type == DeviceType::Block {
        nix::sys::stat::SFlag::S_IFBLK
    } else {
        nix::sys::stat::SFlag::S_IFCHR
    };
    nix::sys::stat::mknod(
        p,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(major.into(), minor.into()),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
}

/// The device numbers of the node at `p` (not followed), `None` when there
/// is nothing there.
pub fn node_numbers(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p).ok()?;
    Some((libc::major(m.rdev()) as u64, libc::minor(m.rdev()) as u64))
}

/// The node at `p` (not followed): (is a block device, major, minor).
pub fn rdev(p: &Path) -> (bool, u64, u64) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let r = m.rdev();
    (
        m.file_type().is_block_device(),
        libc::major(r) as u64,
        libc::minor(r) as u64,
    )
}

/// Starts `cmd` with no stdin and its stdout and stderr going to `log` (the
/// engines' and daemons' logs); panics naming `what` when it cannot start.
pub fn spawn_logged(cmd: &mut Command, log: fs::File, what: &str) -> std::process::Child {
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"))
}

/// The words of `ctdev attach CGROUP --preset none --rule R…` (exactly
/// `rules`, no preset).
pub fn attach_args<'a>(cgroup: &'a Path, rules: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["attach", s(cgroup), "--preset", "none"];
    for r in rules {
        args.extend(["--rule", r]);
    }
    args
}

/// The string `field` of each object in the JSON list `list` (`list --json`
/// rules, `check` nodes, `cdi list` devices); panics on another shape.
pub fn field_strs<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    let items = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"));
    items
        .iter()
        .map(|i| {
            i[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field}: {i}"))
        })
        .collect()
}
