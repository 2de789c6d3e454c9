//! `ctdev daemon` as a child process, and hotplugged loop devices (real
//! uevents), for the daemon tests.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{ctdev_bin, Errno, TestEnv};

/// Polls `f` every 10 ms until it returns `Some`, failing the test after `timeout`.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ctdev daemon` as a child process, SIGKILLed on drop.
pub struct DaemonProc {
    /// The daemon process.
    pub child: Child,
    /// Its log file (stderr, RUST_LOG=info).
    pub log: PathBuf,
}

impl DaemonProc {
    pub fn start(env: &TestEnv, config: &Path) -> Self {
        Self::start_with_failpoint(env, config, None)
    }

    /// Starts the daemon armed to SIGKILL itself at failpoint `step`
    /// (`CTDEV_FAILPOINT`; `cargo xtask test` builds them in).
    pub fn start_with_failpoint(env: &TestEnv, config: &Path, step: Option<&str>) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let ready = env.scratch.join(format!("ready-{n}"));
        let log = env.scratch.join(format!("daemon-{n}.log"));
        let mut cmd = Command::new(ctdev_bin());
        if let Some(step) = step {
            cmd.env("CTDEV_FAILPOINT", step);
        }
        let child = cmd
            .arg("--pin-root")
            .arg(&env.pin_root)
            .arg("daemon")
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(env.scratch.join("state"))
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("daemon log file"))
            .spawn()
            .expect("spawn ctdev daemon");
        let mut d = DaemonProc { child, log };
        wait_for(Duration::from_secs(30), "the daemon to be ready", || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("daemon exited early ({status}):\n{}", d.log_text());
            }
            ready.exists().then_some(())
        });
        d
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal the daemon");
    }

    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }

    /// Waits for the daemon to die at its armed failpoint (SIGKILL).
    pub fn wait_killed_at_failpoint(mut self) -> String {
        let status = wait_for(
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

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `LOOP_CTL_ADD` ioctl.
pub const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
/// `LOOP_CTL_REMOVE` ioctl.
pub const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;

/// A loop device created with LOOP_CTL_ADD at an index no one else uses:
/// the kernel emits a real `add` uevent (block, DEVNAME=loopN, MAJOR=7),
/// and `remove` with LOOP_CTL_REMOVE (also on drop).
pub struct HotLoop {
    /// The loop device index (`loopN`).
    pub index: u32,
    removed: bool,
}

pub fn loop_ctl(op: libc::c_ulong, index: u32) -> Result<(), Errno> {
    let ctl = fs::File::open("/dev/loop-control").expect("open /dev/loop-control");
    // SAFETY: LOOP_CTL_ADD/REMOVE take an integer argument; the fd is open.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), op as _, index as libc::c_ulong) };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

impl HotLoop {
    /// An index that is free now (not created yet).
    pub fn pick() -> u32 {
        static N: AtomicU32 = AtomicU32::new(0);
        loop {
            let i = 4000 + (std::process::id() % 1000) * 50 + N.fetch_add(1, Ordering::SeqCst) % 50;
            if !Path::new(&format!("/sys/block/loop{i}")).exists() {
                return i;
            }
        }
    }

    pub fn add(index: u32) -> Self {
        loop_ctl(LOOP_CTL_ADD, index).unwrap_or_else(|e| panic!("LOOP_CTL_ADD {index}: {e}"));
        HotLoop {
            index,
            removed: false,
        }
    }

    pub fn name(&self) -> String {
        format!("loop{}", self.index)
    }

    pub fn remove(&mut self) {
        // EBUSY while something still holds it open: retry briefly.
        for _ in 0..200 {
            match loop_ctl(LOOP_CTL_REMOVE, self.index) {
                Ok(()) | Err(Errno::ENODEV) => {
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
