//! CDI spec directories watched with inotify: a spec file written, renamed
//! into place, moved away or removed re-applies the policy's
//! `devices = [{ cdi = "…" }]` entries at once, instead of at the next
//! resync or SIGHUP.
//!
//! What a change does is [`crate::cdi::daemon::sync`]'s job (a device whose
//! merged edits changed is taken back and added again; one whose spec is
//! gone, or no longer parses, is taken back: fail closed). This module only
//! says *when*: a file closed after writing (`IN_CLOSE_WRITE`, not
//! `IN_MODIFY`, so a half-written file is never read), renamed in or out,
//! or deleted. A spec directory that does not exist yet is watched from the
//! moment it appears ([`CdiWatcher::ensure`], called on the daemon's timer);
//! one that is removed or renamed loses its watch and is watched again when
//! it comes back.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::lifecycle::LifecycleError;
use super::Daemon;

const SPEC_MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// One inotify instance on the policy's `cdi_dirs`.
pub(crate) struct CdiWatcher {
    inotify: Inotify,
    /// Watched directories by watch descriptor.
    dirs: BTreeMap<PathBuf, WatchDescriptor>,
}

impl CdiWatcher {
    /// A non-blocking inotify instance; no directory watched yet.
    pub(crate) fn new() -> Result<Self, LifecycleError> {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|errno| {
                LifecycleError::Inotify {
                    path: PathBuf::from("(CDI spec directories)"),
                    errno,
                }
            })?;
        Ok(Self {
            inotify,
            dirs: BTreeMap::new(),
        })
    }

    /// Directories watched now.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.dirs.len()
    }

    /// Watches each of `dirs` that exists and is not watched yet, and drops
    /// the watches of directories no longer in `dirs` (a reloaded policy).
    /// Returns whether a directory was newly watched: its specs may have
    /// appeared while it was not, so the caller re-applies.
    pub(crate) fn ensure(&mut self, dirs: &[PathBuf]) -> bool {
        let stale: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| !dirs.contains(d))
            .cloned()
            .collect();
        for d in stale {
            if let Some(wd) = self.dirs.remove(&d) {
                let _ = self.inotify.rm_watch(wd);
            }
        }
        let mut added = false;
        for d in dirs {
            if self.dirs.contains_key(d) || !d.is_dir() {
                continue;
            }
            match self.inotify.add_watch(d, SPEC_MASK) {
                Ok(wd) => {
                    tracing::debug!(dir = %d.display(), "watching CDI spec directory");
                    self.dirs.insert(d.clone(), wd);
                    added = true;
                }
                Err(Errno::ENOENT | Errno::ENOTDIR) => {}
                Err(e) => tracing::warn!(
                    dir = %d.display(),
                    "cannot watch CDI spec directory (its changes apply at the next resync): {e}"
                ),
            }
        }
        added
    }

    /// Reads every pending event; whether a spec may have changed.
    pub(crate) fn read(&mut self) -> bool {
        let mut changed = false;
        loop {
            let events = match self.inotify.read_events() {
                Ok(ev) if !ev.is_empty() => ev,
                Ok(_) | Err(Errno::EAGAIN) => return changed,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("reading CDI inotify events: {e}");
                    return changed;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    changed = true;
                    continue;
                }
                if ev.mask.intersects(
                    AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF,
                ) {
                    // The directory itself went: its specs with it.
                    self.dirs.retain(|_, wd| *wd != ev.wd);
                    changed = true;
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                    continue;
                }
                let is_spec = ev
                    .name
                    .as_ref()
                    .is_some_and(|n| crate::cdi::spec::Format::of(Path::new(n)).is_some());
                changed |= is_spec;
            }
        }
    }
}

impl AsRawFd for CdiWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }
}

impl Daemon {
    /// Re-applies the CDI devices of every ready managed container (a spec
    /// changed). Containers with no CDI device and no record cost a
    /// directory listing each, nothing more.
    pub(super) fn sync_cdi_all(&mut self) {
        let dirs: Vec<(PathBuf, u64, usize)> = self
            .managed
            .iter()
            .filter(|(_, m)| m.ready)
            .map(|(d, m)| (d.clone(), m.policy_id, m.entry))
            .collect();
        let records = self.state_path.with_file_name("cdi");
        for (dir, policy_id, entry) in dirs {
            crate::cdi::daemon::sync(
                &self.ct,
                &super::target_of(&dir),
                policy_id,
                &self.policy.containers[entry].cdi,
                &self.policy.cdi_dirs,
                &records,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real inotify on a scratch directory: spec writes, renames and removals
    /// are seen, other files and subdirectories are not, and a directory
    /// that appears later is watched once `ensure` runs again.
    #[test]
    fn spec_changes_are_seen_and_late_directories_are_watched() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        std::fs::create_dir(&a).unwrap();
        let mut w = CdiWatcher::new().unwrap();
        let dirs = vec![a.clone(), b.clone()];
        assert!(w.ensure(&dirs));
        assert_eq!(w.count(), 1);
        assert!(!w.read());
        std::fs::write(a.join("notes.txt"), "x").unwrap();
        std::fs::create_dir(a.join("sub")).unwrap();
        assert!(!w.read(), "not a spec file");
        std::fs::write(a.join("x.json"), "{}").unwrap();
        assert!(w.read());
        std::fs::rename(a.join("x.json"), a.join("y.yaml")).unwrap();
        assert!(w.read());
        std::fs::remove_file(a.join("y.yaml")).unwrap();
        assert!(w.read());
        // b appears later.
        assert!(!w.ensure(&dirs));
        std::fs::create_dir(&b).unwrap();
        assert!(w.ensure(&dirs));
        std::fs::write(b.join("z.json"), "{}").unwrap();
        assert!(w.read());
        // a removed: its watch goes; re-created, it is watched again.
        std::fs::remove_dir_all(&a).unwrap();
        assert!(w.read());
        assert_eq!(w.count(), 1);
        std::fs::create_dir(&a).unwrap();
        assert!(w.ensure(&dirs));
        assert_eq!(w.count(), 2);
        // A reloaded policy without b: b's watch goes.
        assert!(!w.ensure(std::slice::from_ref(&a)));
        assert_eq!(w.count(), 1);
    }
}
