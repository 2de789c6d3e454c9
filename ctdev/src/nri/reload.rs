//! The NRI policy file, watched and reloaded while the plugin runs.
//!
//! A Kubernetes ConfigMap mounted as a volume is updated by swapping a
//! symlink: the kubelet writes the new files into a fresh directory, points
//! `..data_tmp` at it and renames that over `..data`, through which the
//! visible file (`nri.toml -> ..data/nri.toml`) resolves. The file itself is
//! never written, so an inotify watch on it would see nothing: the watch is
//! on the file's directory (creates, moves, writes, deletes, attribute
//! changes there). Any event there reads the file again; when its contents
//! changed, [`Agent::reload`] swaps the policy as a whole if it is valid and
//! keeps the old one if not (an event in `events.jsonl` says which).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::agent::Agent;

/// Events in the file's directory that may change what the path reads.
const MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_ONLYDIR);

/// Why the file cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the NRI policy file's directory {dir}: {errno}")]
pub(crate) struct WatchError {
    /// The directory.
    pub dir: PathBuf,
    /// The error.
    pub errno: nix::errno::Errno,
}

/// An inotify watch on the directory of one file.
pub(crate) struct FileWatch {
    inotify: Inotify,
}

impl AsRawFd for FileWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }
}

/// The directory whose events can change what `path` reads.
pub(crate) fn watched_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl FileWatch {
    /// A non-blocking watch on the directory of `path`.
    pub(crate) fn new(path: &Path) -> Result<Self, WatchError> {
        let dir = watched_dir(path);
        let err = |errno| WatchError {
            dir: dir.clone(),
            errno,
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(err)?;
        inotify.add_watch(&dir, MASK).map_err(err)?;
        Ok(Self { inotify })
    }

    /// Reads every pending event; how many there were.
    pub(crate) fn drain(&self) -> usize {
        let mut n = 0;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            n += events.len();
        }
        n
    }
}

/// Whether the contents at `path` differ from `last` (a missing file counts
/// as a change only once); the new contents.
pub(crate) fn changed(path: &Path, last: &Option<Vec<u8>>) -> (bool, Option<Vec<u8>>) {
    let now = std::fs::read(path).ok();
    (&now != last, now)
}

/// Watches the policy file at `path` and reloads `agent` when it changes.
/// Runs until the task is dropped; returns early only if the watch cannot
/// be set up (the plugin then keeps its policy until restarted).
pub(crate) async fn watch(agent: Arc<Agent>, path: PathBuf) -> Result<(), WatchError> {
    let watch = FileWatch::new(&path)?;
    let dir = watched_dir(&path);
    // SAFETY: the watch owns its inotify fd for its whole life and
    // `as_raw_fd` always returns that same fd.
    let mut fd = unsafe { AsyncFd::register_with_interest(watch, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .map_err(|e| WatchError {
            dir: dir.clone(),
            errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    tracing::info!(file = %path.display(), dir = %dir.display(), "watching the NRI policy file");
    let mut last = std::fs::read(&path).ok();
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("NRI policy watch stopped: {e}");
                return Ok(());
            }
        };
        guard.get_inner().drain();
        guard.clear_ready();
        // A ConfigMap update is several steps (files, then the symlink
        // swap): let it finish, then read once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        fd.get_ref().drain();
        let (differs, now) = changed(&path, &last);
        if !differs {
            continue;
        }
        last = now;
        let (agent, path) = (agent.clone(), path.clone());
        // Reading and validating a file: off the async thread.
        let _ = tokio::task::spawn_blocking(move || agent.reload(&path)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_of_a_file() {
        assert_eq!(
            watched_dir(Path::new("/etc/ctdev/nri.toml")),
            PathBuf::from("/etc/ctdev")
        );
        assert_eq!(watched_dir(Path::new("nri.toml")), PathBuf::from("."));
    }

    /// A ConfigMap-style symlink swap is seen through the directory watch,
    /// and `changed` reads what the path resolves to now.
    #[test]
    fn symlink_swap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/nri.toml"), "a").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/nri.toml", d.join("nri.toml")).unwrap();
        let path = d.join("nri.toml");
        let w = FileWatch::new(&path).unwrap();
        let (differs, last) = changed(&path, &None);
        assert!(differs);
        assert_eq!(last.as_deref(), Some(&b"a"[..]));
        assert!(!changed(&path, &last).0);

        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/nri.toml"), "b").unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert!(w.drain() > 0, "the swap must produce events");
        let (differs, now) = changed(&path, &last);
        assert!(differs);
        assert_eq!(now.as_deref(), Some(&b"b"[..]));
        assert_eq!(w.drain(), 0);
    }
}
