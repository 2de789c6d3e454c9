//! Container lifecycle from the cgroup2 tree: an inotify watch on every
//! directory under the daemon's scope (added as directories appear), and on
//! the `cgroup.events` file of managed containers (`populated` changes).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// Why the watcher failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// inotify could not be set up.
    #[error("inotify on {path}: {errno}")]
    Inotify {
        /// What was being watched.
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
}

/// What happened in the cgroup tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupEvent {
    /// A cgroup directory appeared.
    Created(PathBuf),
    /// A cgroup directory was removed.
    Removed(PathBuf),
    /// The `cgroup.events` of this cgroup changed (processes came or went).
    EventsChanged(PathBuf),
    /// The kernel's event queue overflowed: rescan everything.
    Overflow,
}

/// The inotify instance and what each watch is for.
pub struct Watcher {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    events_files: HashMap<WatchDescriptor, PathBuf>,
}

const DIR_MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ONLYDIR);

impl Watcher {
    /// A non-blocking inotify instance with no watches yet.
    pub fn new() -> Result<Self, LifecycleError> {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|errno| {
                LifecycleError::Inotify {
                    path: PathBuf::from("(init)"),
                    errno,
                }
            })?;
        Ok(Self {
            inotify,
            dirs: HashMap::new(),
            events_files: HashMap::new(),
        })
    }

    /// Watches `dir` and every directory below it (found now; later ones are
    /// added by [`Watcher::read`]). Returns the directories found, `dir` first.
    pub fn watch_tree(&mut self, dir: &Path) -> Result<Vec<PathBuf>, LifecycleError> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            // Watch before listing, so a child made in between is not missed.
            match self.inotify.add_watch(&d, DIR_MASK) {
                Ok(wd) => {
                    self.dirs.insert(wd, d.clone());
                }
                // Removed meanwhile.
                Err(Errno::ENOENT | Errno::ENOTDIR) if d != dir => continue,
                Err(errno) => return Err(LifecycleError::Inotify { path: d, errno }),
            }
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
            found.push(d);
        }
        Ok(found)
    }

    /// Watches `cgroup.events` of a managed container's cgroup.
    pub fn watch_events(&mut self, cgroup_dir: &Path) {
        if self.events_files.values().any(|p| p == cgroup_dir) {
            return;
        }
        match self
            .inotify
            .add_watch(&cgroup_dir.join("cgroup.events"), AddWatchFlags::IN_MODIFY)
        {
            Ok(wd) => {
                self.events_files.insert(wd, cgroup_dir.to_path_buf());
            }
            Err(e) => tracing::debug!("cannot watch {}/cgroup.events: {e}", cgroup_dir.display()),
        }
    }

    /// Reads every pending inotify event. New directories are watched (with
    /// their subtrees) before their `Created` is returned.
    pub fn read(&mut self) -> Vec<CgroupEvent> {
        let mut out = Vec::new();
        loop {
            let events = match self.inotify.read_events() {
                Ok(ev) => ev,
                Err(Errno::EAGAIN) => return out,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("reading inotify events: {e}");
                    return out;
                }
            };
            if events.is_empty() {
                return out;
            }
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    out.push(CgroupEvent::Overflow);
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dirs.remove(&ev.wd);
                    self.events_files.remove(&ev.wd);
                    continue;
                }
                if let Some(dir) = self.events_files.get(&ev.wd) {
                    out.push(CgroupEvent::EventsChanged(dir.clone()));
                    continue;
                }
                let (Some(parent), Some(name)) = (self.dirs.get(&ev.wd), ev.name.as_ref()) else {
                    continue;
                };
                if !ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                    continue;
                }
                let path = parent.join(name);
                if ev
                    .mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                {
                    match self.watch_tree(&path) {
                        Ok(all) => out.extend(all.into_iter().map(CgroupEvent::Created)),
                        Err(e) => tracing::warn!("{e}"),
                    }
                } else if ev
                    .mask
                    .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                {
                    out.push(CgroupEvent::Removed(path));
                }
            }
        }
    }
}

impl AsRawFd for Watcher {
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }
}
