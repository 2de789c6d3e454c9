//! `ctdev daemon` as a child process for the tests, hotplugged loop devices
//! (real uevents), and a probe that opens devices from the first instruction
//! of a process started inside a cgroup.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{ctdev_bin, TestEnv};

/// A `kB` field (`key` with its colon, e.g. `VmRSS:`) of a /proc file
/// such as `/proc/PID/status` or `smaps_rollup`.
pub fn proc_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Polls `f` every 10 ms until it returns `Some`, failing the test after `timeout`.
#[track_caller]
pub fn wait_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, what, f, String::new)
}

/// [`wait_until`], with `context()` in the failure message.
#[track_caller]
fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl DaemonProc {
    /// [`wait_until`], with the daemon's log in the failure message.
    #[track_caller]
    pub fn wait_until<T>(&self, timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
        poll(timeout, what, f, || self.log_text())
    }
}

/// Writes a policy file with the env's parent cgroup as scope.
pub fn write_policy(env: &TestEnv, name: &str, resync: f64, entries: &str) -> PathBuf {
    let path = env.scratch.join(name);
    let text = format!(
        "scope = \"{}\"\nresync_interval = {resync}\n{entries}",
        env.cgroup_parent.display()
    );
    fs::write(&path, text).expect("write policy file");
    path
}

/// A running `ctdev daemon` with the env's pin root and a state directory in
/// its scratch dir; SIGKILLed on drop.
pub struct DaemonProc {
    /// The daemon process.
    pub child: Child,
    /// Its log (stderr).
    pub log: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl DaemonProc {
    /// Starts the daemon and waits until it is ready (30 s at most).
    pub fn start(env: &TestEnv, config: &Path) -> Self {
        Self::start_with_failpoint(env, config, None)
    }

    /// Starts the daemon armed to SIGKILL itself at failpoint `step`
    /// (`CTDEV_FAILPOINT`; `cargo xtask test` builds them in).
    pub fn start_with_failpoint(env: &TestEnv, config: &Path, step: Option<&str>) -> Self {
        Self::start_with_env(env, config, step, &[])
    }

    /// Starts the daemon with `CTDEV_TEST_HOLD_DIR` set to a new `holds`
    /// folder of the test's scratch dir (returned): a file named after a
    /// cgroup there holds that container's lane.
    pub fn start_held(env: &TestEnv, config: &Path) -> (Self, PathBuf) {
        let holds = env.scratch.join("holds");
        fs::create_dir_all(&holds).expect("create the holds folder");
        let daemon = Self::start_with_env(
            env,
            config,
            None,
            &[("CTDEV_TEST_HOLD_DIR", holds.as_path())],
        );
        (daemon, holds)
    }

    /// As [`DaemonProc::start_with_failpoint`], with more environment
    /// variables (`CTDEV_TEST_HOLD_DIR`, …).
    pub fn start_with_env(
        env: &TestEnv,
        config: &Path,
        step: Option<&str>,
        vars: &[(&str, &Path)],
    ) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let ready = env.scratch.join(format!("ready-d{n}"));
        let log = env.scratch.join(format!("daemon-d{n}.log"));
        let state_dir = env.scratch.join("state");
        let mut cmd = Command::new(ctdev_bin());
        if let Some(step) = step {
            cmd.env("CTDEV_FAILPOINT", step);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("--pin-root")
            .arg(&env.pin_root)
            .arg("daemon")
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("daemon log file"))
            .spawn()
            .expect("spawn ctdev daemon");
        let mut d = DaemonProc {
            child,
            log,
            state_dir,
        };
        wait_until(Duration::from_secs(30), "the daemon to be ready", || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("daemon exited early ({status}):\n{}", d.log_text());
            }
            ready.exists().then_some(())
        });
        d
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal the daemon");
    }

    /// `status.json` from its state directory.
    pub fn status(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.state_dir.join("status.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Resident set size (kB) and open fds of the daemon now.
    pub fn rss_kb_and_fds(&self) -> (u64, usize) {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let rss = proc_kb(&status, "VmRSS:").unwrap_or(0);
        let fds = fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0);
        (rss, fds)
    }

    /// SIGKILL, wait, and the log.
    pub fn kill(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }

    /// Waits for the daemon to die at its armed failpoint (SIGKILL).
    pub fn wait_killed_at_failpoint(mut self) -> String {
        let status = wait_until(
            Duration::from_secs(10),
            "the daemon to hit its failpoint",
            || self.child.try_wait().expect("wait for the daemon"),
        );
        let log = self.log_text();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the daemon did not die at its failpoint ({status}); failpoints compiled in?\n{log}"
        );
        assert!(log.contains("failpoint"), "{log}");
        log
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGCONT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often one path opened while probing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenCounts {
    /// Opens that succeeded.
    pub ok: u64,
    /// Opens denied (EPERM).
    pub denied: u64,
    /// Opens that failed otherwise.
    pub other: u64,
}

/// A `first-open` process started inside `cgroup` (it joins before exec, so
/// its first instruction already runs there), opening `paths` for `millis`.
pub struct FirstOpen {
    child: Child,
    paths: Vec<PathBuf>,
}

impl FirstOpen {
    /// Starts it.
    pub fn start(cgroup: &Path, millis: u64, paths: &[&Path]) -> Self {
        let procs =
            CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).expect("cgroup path");
        let mut cmd = Command::new(crate::built_binary(
            "first-open",
            "build with `cargo build -p ctdev-tests --bins`",
        ));
        cmd.arg(millis.to_string())
            .args(paths)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions (open, write, close) on data made
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start first-open inside the cgroup");
        FirstOpen {
            child,
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    /// Waits for it and returns the counts per path, in order.
    pub fn finish(self) -> Vec<OpenCounts> {
        let out = self.child.wait_with_output().expect("wait for first-open");
        assert!(out.status.success(), "first-open failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let counts: Vec<OpenCounts> = text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let n = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
                let k = f.len();
                OpenCounts {
                    ok: n(k - 5),
                    denied: n(k - 3),
                    other: n(k - 1),
                }
            })
            .collect();
        assert_eq!(counts.len(), self.paths.len(), "first-open output: {text}");
        counts
    }
}

/// `LOOP_CTL_ADD` ioctl.
pub const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
/// `LOOP_CTL_REMOVE` ioctl.
pub const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;

/// LOOP_CTL_ADD / LOOP_CTL_REMOVE of loop device `index`.
pub fn loop_ctl(op: libc::c_ulong, index: u32) -> Result<(), nix::errno::Errno> {
    let ctl = fs::File::open("/dev/loop-control").expect("open /dev/loop-control");
    // SAFETY: LOOP_CTL_ADD/REMOVE take an integer argument; the fd is open.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&ctl),
            op as _,
            index as libc::c_ulong,
        )
    };
    if rc < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

/// Consecutive loop indices reserved for one test or bench: none of them
/// existed when reserved, no other process that reserves through
/// [`reserve_loops`] gets them while this lives (an exclusive lock on a
/// file per block), and every loop device left in the block is removed on
/// drop (a probe that opens an absent loop node may make the kernel create it).
pub struct LoopBlock {
    indices: Vec<u32>,
    _lock: fs::File,
}

impl std::ops::Deref for LoopBlock {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.indices
    }
}

impl Drop for LoopBlock {
    fn drop(&mut self) {
        for &i in &self.indices {
            if Path::new(&format!("/sys/block/loop{i}")).exists() {
                let _ = loop_ctl(LOOP_CTL_REMOVE, i);
            }
        }
    }
}

/// Loop indices are handed out in blocks of this many.
const LOOP_BLOCK: u32 = 64;
/// Where the per-block lock files live.
const LOOP_LOCKS: &str = "/run/ctdev-tests/loops";

/// Reserves `count` (at most 64) consecutive loop indices that no loop
/// device uses now; see [`LoopBlock`]. Blocks whose devices were left behind
/// by an earlier run are passed over, never reused.
pub fn reserve_loops(count: u32) -> LoopBlock {
    assert!(
        count <= LOOP_BLOCK,
        "at most {LOOP_BLOCK} loop indices at once"
    );
    fs::create_dir_all(LOOP_LOCKS).expect("create the loop lock directory");
    // Blocks 100,000..612,000: below udev tests' old range and far above
    // anything a host uses; the start depends on the pid to spread processes.
    const BLOCKS: u32 = 8_000;
    let first = std::process::id() % BLOCKS;
    for k in 0..BLOCKS {
        let base = 100_000 + ((first + k) % BLOCKS) * LOOP_BLOCK;
        let lock_path = format!("{LOOP_LOCKS}/{base}");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("open {lock_path}: {e}"));
        if lock.try_lock().is_err() {
            continue;
        }
        let taken =
            (base..base + LOOP_BLOCK).any(|i| Path::new(&format!("/sys/block/loop{i}")).exists());
        if !taken {
            return LoopBlock {
                indices: (base..base + count).collect(),
                _lock: lock,
            };
        }
    }
    panic!("no free block of {LOOP_BLOCK} loop indices between 100000 and 612000");
}

/// A loop device made with LOOP_CTL_ADD (a real `add` uevent) and removed
/// with LOOP_CTL_REMOVE (also on drop).
pub struct HotLoop {
    /// Its index (`/dev/loopN`).
    pub index: u32,
    removed: bool,
}

impl HotLoop {
    /// An index that is free now (not created yet) and that no other test
    /// of any process picks: one index of a block this process keeps.
    pub fn pick() -> u32 {
        // Blocks are kept for the whole process (a static is never dropped):
        // an earlier pick's device may still be in use.
        static BLOCKS: std::sync::Mutex<(Vec<LoopBlock>, u32)> =
            std::sync::Mutex::new((Vec::new(), LOOP_BLOCK));
        let mut held = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        let (blocks, next) = &mut *held;
        if *next >= LOOP_BLOCK {
            blocks.push(reserve_loops(LOOP_BLOCK));
            *next = 0;
        }
        let block = blocks.last().expect("a block was just reserved");
        *next += 1;
        block[*next as usize - 1]
    }

    /// Adds loop device `index`.
    pub fn add(index: u32) -> Self {
        loop_ctl(LOOP_CTL_ADD, index).unwrap_or_else(|e| panic!("LOOP_CTL_ADD {index}: {e}"));
        HotLoop {
            index,
            removed: false,
        }
    }

    /// `loopN`.
    pub fn name(&self) -> String {
        format!("loop{}", self.index)
    }

    /// Removes it (retrying while something holds it open).
    pub fn remove(&mut self) {
        for _ in 0..300 {
            match loop_ctl(LOOP_CTL_REMOVE, self.index) {
                Ok(()) | Err(nix::errno::Errno::ENODEV) => {
                    self.removed = true;
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        panic!("LOOP_CTL_REMOVE {} kept failing", self.index);
    }
}

impl Drop for HotLoop {
    fn drop(&mut self) {
        if !self.removed {
            let _ = loop_ctl(LOOP_CTL_REMOVE, self.index);
        }
    }
}
