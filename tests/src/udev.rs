//! A udevd of the test's own (Debian's `systemd-udevd`, run in the
//! foreground as a child) and udev rule files that stand in for a USB
//! serial adapter: a loop device the rule names gets an `ID_SERIAL`, a
//! `serial/by-id/…` symlink, an owner, a group and a mode.
//!
//! udevd is host-global: every udev test holds one file lock for its whole
//! run (so they never overlap), a rule only matches loop devices of the
//! test's own indices (never another test's devices), and udevd is stopped
//! (and what it left in /run/udev removed) only by the test that started it.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::daemon::wait_until;
use crate::unique;

/// udevd's control socket.
pub const CONTROL: &str = "/run/udev/control";
/// Where the tests' rule files go (udevd reads it beside /etc/udev/rules.d).
pub const RULES_DIR: &str = "/run/udev/rules.d";
const LOCK: &str = "/run/ctdev-tests-udev.lock";

/// Whether a udevd is bound to its control socket now.
pub fn udevd_running() -> bool {
    ctdev::daemon::uevent::udevd_running(Path::new(CONTROL))
}

fn udevadm(args: &[&str]) {
    let st = Command::new("udevadm")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run udevadm (Debian package `udev`)");
    assert!(st.success(), "udevadm {args:?}: {st}");
}

/// Holds the udev tests' lock; udevd runs (started by this test when it
/// did not) until [`Udevd::stop`] or drop.
pub struct Udevd {
    child: Option<Child>,
    made_run_udev: bool,
    /// udevd's log.
    pub log: PathBuf,
    _lock: fs::File,
}

impl Udevd {
    /// Takes the lock and makes sure udevd runs.
    pub fn start(scratch: &Path) -> Self {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .expect("open the udev test lock");
        // SAFETY: flock on an fd we own; blocks until the other test is done.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {LOCK}");
        let mut u = Udevd {
            child: None,
            made_run_udev: false,
            log: scratch.join("udevd.log"),
            _lock: lock,
        };
        u.ensure_running();
        u
    }

    /// Starts udevd if none runs.
    pub fn ensure_running(&mut self) {
        if udevd_running() {
            return;
        }
        self.made_run_udev |= !Path::new("/run/udev").exists();
        let log = fs::File::create(&self.log).expect("udevd log");
        let mut udevd = Command::new("/lib/systemd/systemd-udevd");
        udevd.arg("--debug");
        let what = "systemd-udevd (Debian package `udev`)";
        self.child = Some(crate::spawn_logged(&mut udevd, log, what));
        wait_until(Duration::from_secs(10), "udevd's control socket", || {
            udevd_running().then_some(())
        });
    }

    /// Stops the udevd this test started (fails if another one runs: the
    /// kernel-events path cannot be tested then).
    pub fn stop(&mut self) {
        let mut child = self
            .child
            .take()
            .expect("udevd was started by someone else: cannot test without it");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
        wait_until(Duration::from_secs(10), "udevd to stop", || {
            (!udevd_running()).then_some(())
        });
    }

    /// Waits until udevd has handled every queued event.
    pub fn settle(&self) {
        udevadm(&["settle", "--timeout=10"]);
    }
}

impl Drop for Udevd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        if self.made_run_udev && !udevd_running() {
            let _ = fs::remove_dir_all("/run/udev");
        }
    }
}

/// One adapter the rule stands in for: loop devices that get `serial`.
pub struct Adapter {
    /// The loop indices that are this adapter (one per plug).
    pub indices: Vec<u32>,
    /// Its ID_SERIAL.
    pub serial: String,
}

impl Adapter {
    /// The adapter of the loop `indices`, with a serial unique to this run
    /// that starts with `label`.
    pub fn new(indices: &[u32], label: &str) -> Self {
        Adapter {
            indices: indices.to_vec(),
            serial: crate::unique(label).replace('-', "_"),
        }
    }
}

/// A udevd of the test's own with one adapter of one reserved loop index
/// plugged in and settled (udev's database has it). Fields drop in order:
/// unplugged, its rule removed, the index freed, udevd stopped.
pub struct Plugged {
    /// The loop device, attached.
    pub device: crate::daemon::HotLoop,
    /// The adapter's udev rule.
    pub rule: UdevRule,
    /// The adapter.
    pub adapter: Adapter,
    /// The reserved index (`idx[0]`).
    pub idx: crate::daemon::LoopBlock,
    /// The udevd.
    pub udevd: Udevd,
}

impl Plugged {
    /// Starts udevd (state under `scratch`), makes the adapter (serial
    /// starting with `label`) and plugs it in.
    pub fn start(scratch: &Path, label: &str) -> Self {
        let udevd = Udevd::start(scratch);
        let idx = crate::daemon::reserve_loops(1);
        let adapter = Adapter::new(&idx, label);
        let rule = UdevRule::new(&[&adapter]);
        let device = crate::daemon::HotLoop::add(idx[0]);
        udevd.settle();
        Plugged {
            device,
            rule,
            adapter,
            idx,
            udevd,
        }
    }
}

/// A rule file in [`RULES_DIR`], removed (and udevd told) on drop.
pub struct UdevRule {
    path: PathBuf,
    /// The value of `ENV{CTDEV_TEST}` it sets on its devices (a property
    /// only this rule sets).
    pub tag: String,
}

/// `OWNER` the rule gives (`daemon`, uid 1).
pub const OWNER_UID: u32 = 1;
/// `GROUP` the rule gives (`bin`, gid 2).
pub const GROUP_GID: u32 = 2;
/// `MODE` the rule gives.
pub const MODE: u32 = 0o640;

impl UdevRule {
    /// Writes the rule for `adapters` and reloads udevd's rules.
    pub fn new(adapters: &[&Adapter]) -> Self {
        let tag = unique("udev");
        let mut text = String::new();
        for a in adapters {
            let kernels: Vec<String> = a.indices.iter().map(|i| format!("loop{i}")).collect();
            let m = format!(
                "ACTION!=\"remove\", SUBSYSTEM==\"block\", KERNEL==\"{}\"",
                kernels.join("|")
            );
            text.push_str(&format!(
                "{m}, ENV{{ID_SERIAL}}=\"{}\", ENV{{CTDEV_TEST}}=\"{tag}\"\n",
                a.serial
            ));
            text.push_str(&format!(
                "{m}, SYMLINK+=\"serial/by-id/usb-ctdev-test-$env{{ID_SERIAL}}\", OWNER=\"daemon\", GROUP=\"bin\", MODE=\"0640\"\n"
            ));
        }
        fs::create_dir_all(RULES_DIR).expect("mkdir /run/udev/rules.d");
        let path = Path::new(RULES_DIR).join(format!("99-{tag}.rules"));
        fs::write(&path, text).expect("write the udev rule");
        udevadm(&["control", "--reload"]);
        UdevRule { path, tag }
    }
}

impl Drop for UdevRule {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if udevd_running() {
            let _ = Command::new("udevadm")
                .args(["control", "--reload"])
                .status();
        }
    }
}
