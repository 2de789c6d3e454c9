//! The event loop: one thread multiplexing uevents, inotify, signals and
//! timers, so changes are applied in event order.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, SignalKind};

use crate::ops::Ctdev;

use super::cdi_watch::CdiWatcher;
use super::lifecycle::Watcher;
use super::uevent::{self, Source, UeventSocket};
use super::{notify, Daemon, DaemonError, Options};

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
    // Events first, then the scan: nothing that happens during the scan is lost.
    let io = |what| move |source| DaemonError::Runtime { what, source };
    // SAFETY: both wrappers own their fd (socket / inotify instance) for
    // their whole life and `as_raw_fd` always returns that same fd.
    let mut uevents =
        unsafe { AsyncFd::register_with_interest(UeventSocket::open()?, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .map_err(io("uevent socket"))?;
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
    loop {
        tokio::select! {
            r = uevents.readable_mut() => {
                let mut guard = r.map_err(io("uevent socket"))?;
                match guard.get_inner_mut().read_all() {
                    Ok(events) => {
                        for ev in events {
                            daemon.on_uevent(ev, Source::Kernel);
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        tracing::warn!("uevents were lost (ENOBUFS): rescanning");
                        daemon.reconcile_all(watcher.get_mut());
                    }
                    Err(e) => tracing::error!("reading uevents: {e}"),
                }
                guard.clear_ready();
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
                let events = guard.get_inner_mut().read();
                guard.clear_ready();
                for ev in events {
                    daemon.on_cgroup_event(ev, watcher.get_mut());
                }
                daemon.write_status(watcher.get_ref());
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
                let pending: Vec<PathBuf> = daemon.pending.iter().cloned().collect();
                let mut changed = false;
                for dir in pending {
                    if !dir.exists() {
                        daemon.pending.remove(&dir);
                    } else if daemon.is_ready(&dir) {
                        daemon.sync_devices(&dir, None);
                        changed = true;
                    }
                }
                changed |= daemon.check_foreign();
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
                        daemon.write_status(watcher.get_ref());
                    }
                }
                if changed {
                    daemon.save_state();
                }
                let resync = daemon.policy.resync_interval;
                if resync > 0.0 && Instant::now() >= next_resync {
                    daemon.reconcile_all(watcher.get_mut());
                    tracing::debug!(watches = watcher.get_ref().count(), containers = daemon.managed.len(), "periodic resync done");
                    daemon.write_status(watcher.get_ref());
                    next_resync = Instant::now() + Duration::from_secs_f64(resync);
                }
            }
        }
    }
    tracing::info!("exiting; the pinned policy keeps being enforced");
    Ok(())
}
