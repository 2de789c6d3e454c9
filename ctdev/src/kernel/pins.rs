//! ctdev's state in bpffs: where pins live, mounting bpffs when missing, and
//! the lock that serialises changes.
//!
//! Layout under the pin root (default `/sys/fs/bpf/ctdev`):
//!
//! ```text
//! <root>/CTDEV_POLICY          entries of large policies (all containers)
//! <root>/CTDEV_HITS            per-CPU allowed-access counters of those
//! <root>/CTDEV_EVENTS          ring buffer of denial events
//! <root>/tables/<cgroup id>    a container's rule table (two generations)
//! <root>/counters/<cgroup id>  a container's per-CPU counters
//! <root>/links/<cgroup id>     one bpf link per container under policy
//! ```
//!
//! The directories are 0700 and the pins 0600 (the kernel's default for
//! BPF_OBJ_PIN), so only root on the host can reach them.

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

use ctdev_common::{EVENTS_MAP, HITS_MAP, POLICY_MAP, STATS_MAP};

use crate::error::IoError;

/// Default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ctdev";
/// Where ctdev mounts bpffs when no bpffs holds the pin root.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Why the pin root could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The pin root is not on bpffs and ctdev may not mount one there.
    #[error("pin root {root} is not on a bpf filesystem (mount one with `mount -t bpf bpf DIR`, or use a root under {BPFFS_MOUNT})")]
    NotBpffs {
        /// The pin root.
        root: PathBuf,
    },
    /// Mounting bpffs failed.
    #[error("cannot mount bpffs at {BPFFS_MOUNT}: {source}")]
    Mount {
        #[source]
        source: io::Error,
    },
    /// Another ctdev held the lock for longer than the timeout.
    #[error("busy: another ctdev is changing {root} (lock held for more than {waited:?}); retry")]
    Busy {
        /// The pin root.
        root: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// A filesystem operation on the pin root failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io(IoError::new(op, path, source))
}

/// The pin root directory and the paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRoot {
    root: PathBuf,
}

/// An exclusive lock on the pin root, released on drop.
#[derive(Debug)]
pub struct PinLock {
    // Dropped first: the flock is free before the next thread of this
    // process is let in.
    _lock: Flock<File>,
    _local: LocalTurn,
}

/// This process's turn at a pin root's lock. Threads of one process (the
/// daemon's lanes) wait for each other here, woken at once, instead of
/// polling the flock (which serialises processes).
#[derive(Debug)]
struct LocalTurn(PathBuf);

/// Pin roots whose lock a thread of this process holds or is taking.
static LOCAL_HELD: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
static LOCAL_FREE: std::sync::Condvar = std::sync::Condvar::new();

impl LocalTurn {
    /// Waits up to `timeout` for the other threads of the process.
    fn take(root: &Path, timeout: Duration) -> Option<LocalTurn> {
        let start = Instant::now();
        let mut held = LOCAL_HELD.lock().unwrap_or_else(|p| p.into_inner());
        while held.contains(root) {
            let left = timeout.checked_sub(start.elapsed())?;
            held = LOCAL_FREE
                .wait_timeout(held, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        held.insert(root.to_path_buf());
        Some(LocalTurn(root.to_path_buf()))
    }
}

impl Drop for LocalTurn {
    fn drop(&mut self) {
        LOCAL_HELD
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
        LOCAL_FREE.notify_all();
    }
}

impl PinRoot {
    /// A pin root at `root`, not touched yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pin of the shared policy map.
    pub fn policy_map(&self) -> PathBuf {
        self.root.join(POLICY_MAP)
    }

    /// Pin of the per-CPU hit counters.
    pub fn hits_map(&self) -> PathBuf {
        self.root.join(HITS_MAP)
    }

    /// Pin of the per-container statistics.
    pub fn stats_map(&self) -> PathBuf {
        self.root.join(STATS_MAP)
    }

    /// Pin of the denial-event ring buffer.
    pub fn events_map(&self) -> PathBuf {
        self.root.join(EVENTS_MAP)
    }

    /// Every shared map pin, with its name in the object file.
    pub fn map_pins(&self) -> [(&'static str, PathBuf); 3] {
        [
            (POLICY_MAP, self.policy_map()),
            (HITS_MAP, self.hits_map()),
            (EVENTS_MAP, self.events_map()),
        ]
    }

    /// Directory of the per-container rule tables.
    pub fn tables_dir(&self) -> PathBuf {
        self.root.join("tables")
    }

    /// Pin of the rule table of `policy_id`.
    pub fn table(&self, policy_id: u64) -> PathBuf {
        self.tables_dir().join(policy_id.to_string())
    }

    /// Directory of the per-container counters.
    pub fn counters_dir(&self) -> PathBuf {
        self.root.join("counters")
    }

    /// Pin of the counters of `policy_id`.
    pub fn counters(&self, policy_id: u64) -> PathBuf {
        self.counters_dir().join(policy_id.to_string())
    }

    /// Directory of the pinned program instances, one per cgroup depth.
    pub fn programs_dir(&self) -> PathBuf {
        self.root.join("programs")
    }

    /// Pin of the program instance serving containers at cgroup depth `level`.
    pub fn program(&self, level: u32) -> PathBuf {
        self.programs_dir().join(format!("level-{level}"))
    }

    /// Directory of per-container link pins.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Link pin of the container whose policy id is `policy_id`.
    pub fn link(&self, policy_id: u64) -> PathBuf {
        self.links_dir().join(policy_id.to_string())
    }

    /// Whether the pin root exists (read-only commands do not create it).
    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Makes the pin root usable for changes: mounts bpffs at
    /// [`BPFFS_MOUNT`] when the root lies under it and nothing is mounted
    /// there, then creates the 0700 directories.
    pub fn prepare(&self) -> Result<(), PinError> {
        if !self.on_bpffs() {
            let default_mount = Path::new(BPFFS_MOUNT);
            if !self.root.starts_with(default_mount) || is_bpffs(default_mount) {
                return Err(PinError::NotBpffs {
                    root: self.root.clone(),
                });
            }
            tracing::info!("mounting bpffs at {BPFFS_MOUNT}");
            mount(
                Some("bpf"),
                default_mount,
                Some("bpf"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0700"),
            )
            .map_err(|e| PinError::Mount { source: e.into() })?;
            if !self.on_bpffs() {
                return Err(PinError::NotBpffs {
                    root: self.root.clone(),
                });
            }
        }
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for dir in [
            self.root.clone(),
            self.links_dir(),
            self.tables_dir(),
            self.counters_dir(),
        ] {
            builder
                .create(&dir)
                .map_err(io_err("create directory", &dir))?;
        }
        Ok(())
    }

    /// Whether the root (or its nearest existing ancestor) is on bpffs.
    fn on_bpffs(&self) -> bool {
        self.root
            .ancestors()
            .find(|p| p.exists())
            .map(is_bpffs)
            .unwrap_or(false)
    }

    /// Takes the exclusive lock that serialises every change to this pin
    /// root, waiting up to `timeout` for another ctdev to finish.
    pub fn lock(&self, timeout: Duration) -> Result<PinLock, PinError> {
        let start = Instant::now();
        let busy = || PinError::Busy {
            root: self.root.clone(),
            waited: timeout,
        };
        let local = LocalTurn::take(&self.root, timeout).ok_or_else(busy)?;
        let mut file = File::open(&self.root).map_err(io_err("open", &self.root))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    // The last detach removes the root directory; a waiter
                    // that opened it before then holds a lock on a removed
                    // directory that excludes nobody. Lock the root that is
                    // there now instead.
                    if same_inode(&lock, &self.root)? {
                        return Ok(PinLock {
                            _lock: lock,
                            _local: local,
                        });
                    }
                    drop(lock);
                    file = File::open(&self.root).map_err(io_err("open", &self.root))?;
                    continue;
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    if start.elapsed() >= timeout {
                        return Err(PinError::Busy {
                            root: self.root.clone(),
                            waited: timeout,
                        });
                    }
                    file = f;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, e)) => return Err(io_err("flock", &self.root)(e.into())),
            }
        }
    }

    /// Policy ids that have a link pin (sorted). Names that are not ids are
    /// reported by the caller as foreign files, never touched.
    pub fn link_entries(&self) -> Result<(Vec<u64>, Vec<PathBuf>), PinError> {
        let dir = self.links_dir();
        let mut ids = Vec::new();
        let mut foreign = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((ids, foreign)),
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            match entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(id) => ids.push(id),
                None => foreign.push(entry.path()),
            }
        }
        ids.sort_unstable();
        Ok((ids, foreign))
    }

    /// Removes the pin root if nothing is left in it (after the last detach).
    pub fn remove_if_empty(&self) {
        let _ = fs::remove_dir(self.links_dir());
        let _ = fs::remove_dir(self.programs_dir());
        let _ = fs::remove_dir(self.tables_dir());
        let _ = fs::remove_dir(self.counters_dir());
        let _ = fs::remove_dir(&self.root);
    }
}

/// Whether the locked directory is still the one at `path`.
fn same_inode(lock: &Flock<File>, path: &Path) -> Result<bool, PinError> {
    use std::os::unix::fs::MetadataExt;
    let held = lock.metadata().map_err(io_err("stat", path))?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) => Err(io_err("open", path)(e)),
    }
}

/// Whether `path` is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = PinRoot::new("/sys/fs/bpf/x");
        assert_eq!(p.policy_map(), Path::new("/sys/fs/bpf/x/CTDEV_POLICY"));
        assert_eq!(p.link(42), Path::new("/sys/fs/bpf/x/links/42"));
    }

    #[test]
    fn refuses_roots_outside_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        let err = PinRoot::new(dir.path().join("pins")).prepare().unwrap_err();
        assert!(matches!(err, PinError::NotBpffs { .. }), "{err}");
    }
}
