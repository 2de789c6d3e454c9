//! Where a hotplug's time goes: one debug line (target `ctdev::timing`) per
//! device added to a container by a device event, with the time of each
//! step. `RUST_LOG=warn,ctdev::timing=debug` prints only these; the hotplug
//! bench reads them to say where the median goes.
//!
//! Steps of one `add` event, for one container:
//! - `handle_us`: on the event loop, from reading the event until its jobs
//!   are queued and the state is written (device properties from
//!   sysfs/udev, the write-ahead state write, planning); the jobs run
//!   meanwhile;
//! - `wait_us`: in the container's lane, queued until a worker took it;
//! - `run_us`: the job itself (`add`: node, rule, grant record; links);
//! - `back_us`: its outcome waiting for the event loop;
//! - `total_us`: from reading the event to the outcome on the event loop.
//!
//! With `cgroup` (which container), `rank` (its place in the event's
//! fan-out) and `line` (containers waiting for a worker when its job was
//! taken, itself included).
//!
//! `read_mono_us` is when the event was read (CLOCK_MONOTONIC, µs), so a
//! measuring process can tell the kernel's delivery apart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The log target of the timing lines.
pub(crate) const TARGET: &str = "ctdev::timing";

/// When one device event was read, and how long the event loop took to
/// queue its jobs.
#[derive(Debug, Clone, Copy)]
struct Started {
    read: Instant,
    read_mono_us: u64,
    handled: Option<Duration>,
}

/// Device events being handled, by DEVPATH (one entry per present device at
/// most: an entry goes with its device's `remove`, or is replaced by the
/// device's next `add`).
#[derive(Debug, Default)]
pub(crate) struct Timings {
    events: BTreeMap<String, Started>,
}

/// CLOCK_MONOTONIC now, in µs (the clock `Instant` uses on Linux).
fn mono_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| (ts.tv_sec() as u64) * 1_000_000 + (ts.tv_nsec() as u64) / 1_000)
        .unwrap_or(0)
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl Timings {
    /// An `add` event for `devpath` was read now. Only kept when the timing
    /// lines are on (nothing is kept otherwise).
    pub(crate) fn read(&mut self, devpath: &str) -> Option<Instant> {
        if !tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
            return None;
        }
        let now = Instant::now();
        self.events.insert(
            devpath.to_string(),
            Started {
                read: now,
                read_mono_us: mono_us(),
                handled: None,
            },
        );
        Some(now)
    }

    /// The event's jobs are queued.
    pub(crate) fn queued(&mut self, devpath: &str) {
        if let Some(s) = self.events.get_mut(devpath) {
            s.handled = Some(s.read.elapsed());
        }
    }

    /// The device left: its entry goes.
    pub(crate) fn forget(&mut self, devpath: &str) {
        self.events.remove(devpath);
    }

    /// A job that added `devpath` to `container` is back on the event loop:
    /// one line with its steps.
    pub(crate) fn added(&self, devpath: &str, done: &super::lanes::Done) {
        let Some(s) = self.events.get(devpath) else {
            return;
        };
        let now = Instant::now();
        let (waited, took, finished) = (done.waited, done.took, done.finished);
        tracing::debug!(
            target: TARGET,
            devpath,
            container = %done.job.name,
            cgroup = %done.job.dir.display(),
            rank = done.job.rank,
            line = done.line,
            read_mono_us = s.read_mono_us,
            handle_us = s.handled.map_or(0, us),
            wait_us = us(waited),
            run_us = us(took),
            back_us = us(now.saturating_duration_since(finished)),
            total_us = us(now.saturating_duration_since(s.read)),
            "hotplug timing"
        );
    }
}
