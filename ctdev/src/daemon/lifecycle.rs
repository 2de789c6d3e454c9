//! Container lifecycle from the cgroup2 tree: an inotify watch on every
//! directory under the daemon's scope (added as directories appear), and on
//! the `cgroup.events` file of managed containers (`populated` changes).
//!
//! Watches are tied to the cgroup's life, not to the kernel's `IN_IGNORED`:
//! on kernel 6.18 removing a cgroup directory delivers neither
//! `IN_DELETE_SELF` nor `IN_IGNORED` for the watches on it, so a watch is
//! removed (`inotify_rm_watch`) when its parent reports the directory gone
//! (`IN_DELETE`/`IN_MOVED_FROM`) and, as a backstop, when a full walk no
//! longer finds it ([`Watcher::prune`]). Watches are keyed by path both
//! ways, so a directory re-created under the same name gets a fresh watch.
//!
//! A walk that cannot read the tree is an error, never an empty tree: the
//! daemon must not mistake "cannot see" for "no containers".

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// Why the watcher failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// inotify could not be set up, or a watch could not be added
    /// (`ENOSPC`: `fs.inotify.max_user_watches` reached).
    #[error("inotify on {path}: {errno}")]
    Inotify {
        /// The directory or `cgroup.events` file being watched.
        path: PathBuf,
        /// The kernel's errno (`ENOSPC`: out of watches).
        errno: Errno,
    },
    /// A directory of the tree could not be listed (the directory named).
    #[error("cgroup tree: {0}")]
    List(#[from] crate::error::IoError),
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

/// Watches of one kind, keyed both ways.
#[derive(Debug, Default)]
struct Watches {
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
}

impl Watches {
    /// Records `wd` for `path`. Returns the watch it displaced: the one of
    /// an earlier directory of the same name (removed, its `IN_DELETE` not
    /// read yet), which the caller must remove from the kernel too, or it
    /// would stay there, counted against `fs.inotify.max_user_watches`.
    #[must_use]
    fn insert(&mut self, wd: WatchDescriptor, path: PathBuf) -> Option<WatchDescriptor> {
        let displaced = self
            .by_path
            .insert(path.clone(), wd)
            .filter(|old| *old != wd);
        if let Some(old) = displaced {
            self.by_wd.remove(&old);
        }
        self.by_wd.insert(wd, path);
        displaced
    }

    fn remove_wd(&mut self, wd: WatchDescriptor) -> Option<PathBuf> {
        let path = self.by_wd.remove(&wd)?;
        if self.by_path.get(&path) == Some(&wd) {
            self.by_path.remove(&path);
        }
        Some(path)
    }

    /// Removes and returns every watch whose path is `dir` or below it.
    fn take_under(&mut self, dir: &Path) -> Vec<WatchDescriptor> {
        let gone: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        self.take_paths(gone)
    }

    /// Removes and returns every watch whose path `keep` rejects.
    fn take_unless(&mut self, keep: impl Fn(&Path) -> bool) -> Vec<WatchDescriptor> {
        let gone: Vec<PathBuf> = self.by_path.keys().filter(|p| !keep(p)).cloned().collect();
        self.take_paths(gone)
    }

    fn take_paths(&mut self, paths: Vec<PathBuf>) -> Vec<WatchDescriptor> {
        let mut out = Vec::new();
        for p in paths {
            if let Some(wd) = self.by_path.remove(&p) {
                self.by_wd.remove(&wd);
                out.push(wd);
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.by_wd.len()
    }
}

/// The inotify instance and what each watch is for.
pub struct Watcher {
    inotify: Inotify,
    dirs: Watches,
    events_files: Watches,
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
            dirs: Watches::default(),
            events_files: Watches::default(),
        })
    }

    /// How many watches the daemon holds now (directories and
    /// `cgroup.events` files). Bounded by the live cgroups under the scope
    /// plus the managed containers.
    pub fn count(&self) -> usize {
        self.dirs.len() + self.events_files.len()
    }

    /// Watched directories.
    pub fn dir_count(&self) -> usize {
        self.dirs.len()
    }

    /// Watches `dir` and every directory below it (found now; later ones are
    /// added by [`Watcher::read`]). Returns the directories found, `dir`
    /// first. A directory that vanished during the walk is skipped; any
    /// other failure (a watch refused, a directory that cannot be listed)
    /// is an error: the caller must not take a partial walk for the tree.
    pub fn watch_tree(&mut self, dir: &Path) -> Result<Vec<PathBuf>, LifecycleError> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            // Watch before listing, so a child made in between is not missed.
            match self.inotify.add_watch(&d, DIR_MASK) {
                Ok(wd) => {
                    if let Some(old) = self.dirs.insert(wd, d.clone()) {
                        self.rm_watches(vec![old]);
                    }
                }
                // Removed meanwhile.
                Err(Errno::ENOENT | Errno::ENOTDIR) if d != dir => continue,
                Err(errno) => return Err(LifecycleError::Inotify { path: d, errno }),
            }
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => {
                    self.forget_tree(&d);
                    continue;
                }
                Err(source) => return Err(crate::error::IoError::new("list", d, source).into()),
            };
            for e in entries {
                let e = e.map_err(crate::error::IoError::at("list", &d))?;
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
            found.push(d);
        }
        Ok(found)
    }

    /// Removes the watches of every directory that is not in `live` (the
    /// result of a full [`Watcher::watch_tree`] walk), and of the
    /// `cgroup.events` files of cgroups not in it. Returns how many went.
    pub fn prune(&mut self, live: &BTreeSet<PathBuf>) -> usize {
        let mut gone = self.dirs.take_unless(|p| live.contains(p));
        gone.extend(self.events_files.take_unless(|p| live.contains(p)));
        let n = gone.len();
        self.rm_watches(gone);
        n
    }

    /// Forgets the watches on `dir` and below it (the directory is gone).
    pub fn forget_tree(&mut self, dir: &Path) {
        let mut gone = self.dirs.take_under(dir);
        gone.extend(self.events_files.take_under(dir));
        self.rm_watches(gone);
    }

    fn rm_watches(&mut self, wds: Vec<WatchDescriptor>) {
        for wd in wds {
            // EINVAL: the kernel already dropped it (IN_IGNORED on its way).
            if let Err(e) = self.inotify.rm_watch(wd) {
                if e != Errno::EINVAL {
                    tracing::debug!("inotify_rm_watch: {e}");
                }
            }
        }
    }

    /// Watches `cgroup.events` of a managed container's cgroup.
    pub fn watch_events(&mut self, cgroup_dir: &Path) {
        if self.events_files.by_path.contains_key(cgroup_dir) {
            return;
        }
        match self
            .inotify
            .add_watch(&cgroup_dir.join("cgroup.events"), AddWatchFlags::IN_MODIFY)
        {
            Ok(wd) => {
                if let Some(old) = self.events_files.insert(wd, cgroup_dir.to_path_buf()) {
                    self.rm_watches(vec![old]);
                }
            }
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                tracing::debug!(cgroup = %cgroup_dir.display(), "cgroup gone before its cgroup.events could be watched")
            }
            Err(e) => tracing::warn!(
                "cannot watch {}/cgroup.events (the 50 ms timer covers it): {e}",
                cgroup_dir.display()
            ),
        }
    }

    /// Reads every pending inotify event. New directories are watched (with
    /// their subtrees) before their `Created` is returned; removed ones lose
    /// their watches before their `Removed` is returned.
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
                    self.dirs.remove_wd(ev.wd);
                    self.events_files.remove_wd(ev.wd);
                    continue;
                }
                if let Some(dir) = self.events_files.by_wd.get(&ev.wd) {
                    out.push(CgroupEvent::EventsChanged(dir.clone()));
                    continue;
                }
                let (Some(parent), Some(name)) = (self.dirs.by_wd.get(&ev.wd), ev.name.as_ref())
                else {
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
                    // A name re-used before its removal was seen: the old
                    // watches belong to the old directory.
                    self.forget_tree(&path);
                    match self.watch_tree(&path) {
                        Ok(all) => out.extend(all.into_iter().map(CgroupEvent::Created)),
                        // Removed again before it could be watched: a
                        // race with a cgroup already gone, not news.
                        Err(e) if !path.exists() => {
                            tracing::debug!("{e}");
                        }
                        Err(e) => {
                            // The directory still counts: it is handled
                            // (attached) without a watch; the periodic
                            // resync walks its subtree.
                            tracing::warn!("{e}");
                            out.push(CgroupEvent::Created(path));
                        }
                    }
                } else if ev
                    .mask
                    .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                {
                    self.forget_tree(&path);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Real inotify on a scratch directory tree (plain directories stand in
    /// for cgroups: the bookkeeping is the same).
    #[test]
    fn watches_follow_directories_and_a_reused_name_gets_a_fresh_watch() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let mut w = Watcher::new().unwrap();
        assert_eq!(w.watch_tree(&root).unwrap(), vec![root.clone()]);
        assert_eq!(w.count(), 1);
        let a = root.join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("cgroup.events"), "populated 0\n").unwrap();
        let ev = w.read();
        assert_eq!(ev, vec![CgroupEvent::Created(a.clone())]);
        w.watch_events(&a);
        w.watch_events(&a);
        assert_eq!(w.count(), 3);
        std::fs::remove_dir_all(&a).unwrap();
        let ev = w.read();
        assert!(ev.contains(&CgroupEvent::Removed(a.clone())), "{ev:?}");
        assert_eq!(w.count(), 1, "watches of a removed directory stay");
        // Same name again: a fresh watch, events of the new one seen.
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("cgroup.events"), "populated 0\n").unwrap();
        assert_eq!(w.read(), vec![CgroupEvent::Created(a.clone())]);
        w.watch_events(&a);
        assert_eq!(w.count(), 3);
        std::fs::write(a.join("cgroup.events"), "populated 1\n").unwrap();
        assert!(w.read().contains(&CgroupEvent::EventsChanged(a.clone())));
    }

    /// A walk that finds a re-created directory before the removal of the
    /// old one was read: the count stays what the kernel holds (the inotify
    /// fd's fdinfo), once the removal is read.
    #[test]
    fn a_walk_over_a_recreated_name_keeps_the_count_equal_to_the_kernels() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let a = root.join("a");
        std::fs::create_dir(&a).unwrap();
        let mut w = Watcher::new().unwrap();
        w.watch_tree(&root).unwrap();
        std::fs::write(a.join("cgroup.events"), "populated 0\n").unwrap();
        w.watch_events(&a);
        assert_eq!((w.count(), kernel_watches(&w)), (3, 3));
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("cgroup.events"), "populated 0\n").unwrap();
        w.watch_tree(&root).unwrap();
        w.watch_events(&a);
        let _ = w.read();
        w.watch_events(&a);
        assert_eq!((w.count(), kernel_watches(&w)), (3, 3));
    }

    /// Watches the kernel holds for this inotify fd (`inotify wd:` lines of
    /// its fdinfo).
    fn kernel_watches(w: &Watcher) -> usize {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", w.as_raw_fd()))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count()
    }

    #[test]
    fn prune_drops_watches_of_directories_a_walk_no_longer_finds() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        for d in ["x", "x/y", "z"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        let mut w = Watcher::new().unwrap();
        let found = w.watch_tree(&root).unwrap();
        assert_eq!(found.len(), 4);
        std::fs::write(root.join("z/cgroup.events"), "populated 0\n").unwrap();
        w.watch_events(&root.join("z"));
        assert_eq!(w.count(), 5);
        // Simulate a missed removal: the walk says only root and z live.
        let live: BTreeSet<PathBuf> = [root.clone(), root.join("z")].into();
        assert_eq!(w.prune(&live), 2);
        assert_eq!(w.count(), 3);
    }

    #[test]
    fn an_unreadable_tree_is_an_error_not_an_empty_tree() {
        let mut w = Watcher::new().unwrap();
        let e = w
            .watch_tree(Path::new("/nonexistent/ctdev-scope"))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ctdev-scope"), "{e}");
    }
}
