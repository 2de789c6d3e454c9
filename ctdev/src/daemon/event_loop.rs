//! The event loop: one thread multiplexing uevents, inotify, signals,
//! timers and the lanes' finished jobs, so changes are decided in event
//! order (the device work itself runs in per-container lanes).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, SignalKind};

use crate::ops::Ctdev;

use super::cdi_watch::CdiWatcher;
use super::lifecycle::{CgroupEvent, Watcher};
use super::uevent::{self, Source, UeventSocket};
use super::{notify, Daemon, DaemonError, Options};

/// A file descriptor the reactor watches; owned elsewhere.
struct Watched(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for Watched {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Never detaches on exit: the
/// pinned programs keep enforcing.
pub fn run(ct: Ctdev, opts: Options) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Runtime {
            what: "tokio runtime",
            source,
        })?;
    rt.block_on(run_async(ct, opts))
}

async fn run_async(ct: Ctdev, opts: Options) -> Result<(), DaemonError> {
    let sig = |kind, what| signal(kind).map_err(|source| DaemonError::Runtime { what, source });
    let mut hup = sig(SignalKind::hangup(), "SIGHUP handler")?;
    let mut term = sig(SignalKind::terminate(), "SIGTERM handler")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT handler")?;
    let ready_file = opts.ready_file.clone();
    let mut daemon = Daemon::new(ct, opts)?;
    let Some(mut done_rx) = daemon.done_rx.take() else {
        return Err(DaemonError::Runtime {
            what: "device lanes",
            source: std::io::Error::other("lanes started twice"),
        });
    };
    // Events first, then the scan: nothing that happens during the scan is lost.
    let io = |what| move |source| DaemonError::Runtime { what, source };
    // The kernel's uevents are read by the daemon itself (also between the
    // steps of a long pass: a hotplug is not queued behind it); the
    // reactor only watches the fd, which the daemon keeps open for longer
    // than `uevents` lives (dropped first: declared after).
    let kernel = UeventSocket::open()?;
    let kernel_fd = Watched(kernel.as_raw_fd());
    daemon.kernel_events = Some(kernel);
    // SAFETY: the socket behind `kernel_fd` is owned by `daemon`, which
    // outlives `uevents` (declared before it, so dropped after it): the fd
    // stays open and the same for the registration's whole life.
    let mut uevents = unsafe { AsyncFd::register_with_interest(kernel_fd, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .map_err(io("uevent socket"))?;
    // SAFETY: both wrappers own their fd (socket / inotify instance) for
    // their whole life and `as_raw_fd` always returns that same fd.
    // SAFETY: as above. udevd's events: read whether or not udevd runs now
    // (it may start later); used while it runs.
    let mut udev_events = unsafe {
        AsyncFd::register_with_interest(UeventSocket::open_for(Source::Udev)?, Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
    .map_err(io("udev event socket"))?;
    // SAFETY: as above.
    let mut watcher =
        unsafe { AsyncFd::register_with_interest(Watcher::new()?, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .map_err(io("inotify"))?;
    // SAFETY: as above.
    let mut cdi_watch =
        unsafe { AsyncFd::register_with_interest(CdiWatcher::new()?, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .map_err(io("CDI inotify"))?;
    cdi_watch.get_mut().ensure(&daemon.policy.cdi_dirs);
    tracing::info!(file = %daemon.opts.config.display(), scope = %daemon.scope_dir.display(), state = %daemon.state_path.display(), events = daemon.source.as_str(), "starting: reconciling");
    daemon.reconcile_all(watcher.get_mut());
    // The start-up pass is done once its lanes are (attaches, then devices):
    // "ready" means converged. Bounded: a container whose lane hangs does
    // not keep the daemon from serving the others.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while daemon.lanes.pending() > 0 {
            match done_rx.recv().await {
                Some(done) => daemon.on_done(done),
                None => break,
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            jobs = daemon.lanes.pending(),
            "start-up jobs still running after 30 s: ready without them"
        );
    }
    daemon.save_state();
    tracing::info!(
        containers = daemon.managed.len(),
        devices = daemon.devices.len(),
        watches = watcher.get_ref().count(),
        "ready"
    );
    daemon.write_status(watcher.get_ref());
    eprintln!("ctdev daemon: ready");
    if let Some(f) = &ready_file {
        if let Err(e) = fs::write(f, "ready\n") {
            tracing::error!("cannot write ready file {}: {e}", f.display());
        }
    }
    notify::ready();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let resync = daemon.policy.resync_interval;
    let mut next_resync = Instant::now() + Duration::from_secs_f64(resync.max(1.0));
    let mut next_udev_check = Instant::now() + Duration::from_secs(1);
    // cgroup events left unread while a test held them ([`inotify_held`]).
    let mut inotify_unread = false;
    loop {
        tokio::select! {
            // Device work finished in a container's lane: its records and
            // logs (every outcome waiting now). The state file and
            // status.json follow at the next tick (50 ms): an outcome only
            // confirms, shrinks or reverts a record written ahead, so a
            // crash before that write leaves at most a record of something
            // not given (taken back as a no-op on restart), and a fan-out
            // to N containers no longer writes the whole state N times.
            Some(done) = done_rx.recv() => {
                daemon.on_done(done);
                while let Ok(done) = done_rx.try_recv() {
                    daemon.on_done(done);
                }
                // Devices back while their removal ran go in now (not
                // from inside the outcome of that removal).
                daemon.readd_waiting();
            }
            r = uevents.readable_mut() => {
                // Readiness cleared first, then read until empty: nothing
                // that arrives meanwhile is missed.
                r.map_err(io("uevent socket"))?.clear_ready();
                daemon.take_uevents();
                if std::mem::take(&mut daemon.lost_events) {
                    tracing::warn!("uevents were lost (ENOBUFS): rescanning");
                    daemon.rescan = true;
                    daemon.reconcile_all(watcher.get_mut());
                }
                daemon.write_status(watcher.get_ref());
            }
            r = udev_events.readable_mut() => {
                let mut guard = r.map_err(io("udev event socket"))?;
                match guard.get_inner_mut().read_all() {
                    Ok(events) => {
                        if !events.is_empty() && daemon.source == Source::Kernel {
                            // udevd started: its events are the source now.
                            daemon.switch_source(Source::Udev, watcher.get_mut());
                        }
                        for ev in events {
                            daemon.on_uevent(ev, Source::Udev);
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        if daemon.source == Source::Udev {
                            tracing::warn!("udev events were lost (ENOBUFS): rescanning");
                            daemon.rescan = true;
                            daemon.reconcile_all(watcher.get_mut());
                        }
                    }
                    Err(e) => tracing::error!("reading udev events: {e}"),
                }
                guard.clear_ready();
                daemon.write_status(watcher.get_ref());
            }
            r = watcher.readable_mut() => {
                let mut guard = r.map_err(io("inotify"))?;
                if inotify_held() {
                    // Read by the tick once the test lets go.
                    guard.clear_ready();
                    inotify_unread = true;
                    continue;
                }
                let events = guard.get_inner_mut().read();
                guard.clear_ready();
                cgroup_events(&mut daemon, watcher.get_mut(), events);
            }
            r = cdi_watch.readable_mut() => {
                let mut guard = r.map_err(io("CDI inotify"))?;
                let changed = guard.get_inner_mut().read();
                guard.clear_ready();
                if changed {
                    daemon.sync_cdi_all();
                }
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the policy file");
                daemon.reload(watcher.get_mut());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                if inotify_unread && !inotify_held() {
                    inotify_unread = false;
                    let events = watcher.get_mut().read();
                    cgroup_events(&mut daemon, watcher.get_mut(), events);
                }
                if std::mem::take(&mut daemon.lost_events) {
                    tracing::warn!("uevents were lost (ENOBUFS): rescanning");
                    daemon.rescan = true;
                    daemon.reconcile_all(watcher.get_mut());
                }
                let pending: Vec<PathBuf> = daemon.pending.iter().cloned().collect();
                for dir in pending {
                    if !dir.exists() {
                        daemon.pending.remove(&dir);
                    } else if daemon.is_ready(&dir) {
                        daemon.sync_devices(&dir, None);
                    }
                }
                daemon.check_foreign();
                daemon.readd_waiting();
                if cdi_watch.get_mut().ensure(&daemon.policy.cdi_dirs) {
                    daemon.sync_cdi_all();
                }
                if Instant::now() >= next_udev_check {
                    next_udev_check = Instant::now() + Duration::from_secs(1);
                    let to = if uevent::udevd_running(&daemon.opts.udev_control) {
                        Source::Udev
                    } else {
                        Source::Kernel
                    };
                    if to != daemon.source {
                        daemon.switch_source(to, watcher.get_mut());
                    }
                }
                // Changes of this tick and the outcomes of jobs since the
                // last one (nothing is written when nothing changed).
                daemon.save_state();
                daemon.trim_if_drained();
                let resync = daemon.policy.resync_interval;
                if resync > 0.0 && Instant::now() >= next_resync {
                    daemon.reconcile_all(watcher.get_mut());
                    tracing::debug!(watches = watcher.get_ref().count(), containers = daemon.managed.len(), "periodic resync done");
                    next_resync = Instant::now() + Duration::from_secs_f64(resync);
                }
                // What the tick did (a takeover queued, a pending container
                // synced, the event source switched, a resync) shows in
                // status.json; unchanged, nothing is written.
                daemon.write_status(watcher.get_ref());
            }
        }
    }
    // Jobs already queued finish (a kill here is a crash: the records
    // written ahead cover it); their records are written.
    while daemon.lanes.pending() > 0 {
        match done_rx.recv().await {
            Some(done) => daemon.on_done(done),
            None => break,
        }
    }
    daemon.save_state();
    tracing::info!("exiting; the pinned policy keeps being enforced");
    Ok(())
}

/// Handles cgroup events read from the watcher.
fn cgroup_events(daemon: &mut Daemon, watcher: &mut Watcher, events: Vec<CgroupEvent>) {
    for ev in events {
        daemon.on_cgroup_event(ev, watcher);
        // Device events that came meanwhile go first.
        daemon.take_uevents();
    }
    daemon.write_status(watcher);
}

/// The test hook's file that holds the cgroup events: `@inotify` in
/// `$CTDEV_TEST_HOLD_DIR` (the folder of the lanes' holds).
#[cfg(feature = "failpoints")]
const INOTIFY_HOLD: &str = "@inotify";

/// Test hook (only in a `failpoints` build): while the file
/// `$CTDEV_TEST_HOLD_DIR/@inotify` exists, the event loop reads no cgroup
/// (inotify) events; everything else (device events, the lanes' outcomes,
/// timers) goes on. Lets a test make a lane's outcome reach the event loop
/// before the removal or re-creation of its cgroup does, without timing.
#[cfg(feature = "failpoints")]
pub(crate) fn inotify_held() -> bool {
    std::env::var_os("CTDEV_TEST_HOLD_DIR")
        .is_some_and(|d| std::path::Path::new(&d).join(INOTIFY_HOLD).exists())
}

/// Without the `failpoints` feature, never held.
#[cfg(not(feature = "failpoints"))]
pub(crate) fn inotify_held() -> bool {
    false
}
