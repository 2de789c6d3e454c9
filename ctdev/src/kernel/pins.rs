//! ctdev's state in bpffs: where pins live, mounting bpffs when missing, and
//! the locks that order changes (a root lock for global changes, a
//! container lock for changes of one container; see [`PinLock`]).
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
//! <root>/locks                 the turnstile (flock; see [`PinRoot::lock`])
//! <root>/locks/<policy id>     a container's lock, while it is held
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

/// The pin root's lock hierarchy, as a witness: a `&PinLock` is only ever
/// borrowed from a live [`RootLock`] or [`ContainerLock`] (both deref to
/// it), so a function taking one proves its caller holds a lock. Functions
/// that change one container's state take `&PinLock` and check
/// [`PinLock::covers`] against the policy id they resolved under it;
/// functions that change global or cross-container state (attach, detach,
/// removing pins) take `&RootLock`, which a container lock cannot give:
///
/// ```compile_fail
/// use ctdev::kernel::pins::{ContainerLock, RootLock};
/// fn needs_root(_: &RootLock) {}
/// fn has_container(l: &ContainerLock) {
///     needs_root(l); // a container lock is not the root lock
/// }
/// ```
#[derive(Debug)]
pub struct PinLock {
    root: PathBuf,
    /// `None`: the whole root (exclusive); `Some(id)`: one container.
    policy_id: Option<u64>,
}

impl PinLock {
    /// Whether this lock lets its holder change the container `policy_id`
    /// (the root lock covers every container).
    pub fn covers(&self, policy_id: u64) -> bool {
        self.policy_id.is_none_or(|id| id == policy_id)
    }

    /// The container this lock is for (`None`: the root lock).
    pub fn policy_id(&self) -> Option<u64> {
        self.policy_id
    }

    /// The pin root it locks.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The root-exclusive lock: no other change of any container runs while it
/// is held (attach, detach, takeover, counters of every container, cleanup).
/// Released on drop.
#[derive(Debug)]
pub struct RootLock {
    witness: PinLock,
    // Dropped in this order: the turnstile, then the gate, then this
    // process's turn (the flocks are free before the next thread is let in).
    _turnstile: Flock<File>,
    _gate: Flock<File>,
    _local: LocalTurn,
}

impl std::ops::Deref for RootLock {
    type Target = PinLock;
    fn deref(&self) -> &PinLock {
        &self.witness
    }
}

/// A container's lock: the gate shared (no root-exclusive operation, and
/// no older ctdev, runs) and the container's own lock exclusive (no other
/// change of this container runs). Changes of different containers run in
/// parallel. Released on drop (its own lock first).
#[derive(Debug)]
pub struct ContainerLock {
    witness: PinLock,
    _own: OwnLock,
    _gate: Flock<File>,
    _local: LocalTurn,
}

impl std::ops::Deref for ContainerLock {
    type Target = PinLock;
    fn deref(&self) -> &PinLock {
        &self.witness
    }
}

/// The exclusive flock on `<root>/locks/<policy id>`; the directory is
/// removed (while still locked) when the lock is released, so nothing is
/// left per container. A waiter that locked the removed directory sees
/// that it is no longer the one at the path and locks the new one.
#[derive(Debug)]
struct OwnLock {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl Drop for OwnLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
        drop(self.lock.take());
    }
}

/// This process's turn in a pin root's lock hierarchy. Threads of one
/// process (the daemon's lanes) wait for each other here, woken at once,
/// and only then take the flocks (which order processes): the root turn
/// excludes every other turn; container turns of different ids run
/// together. A waiting root turn goes first (new container turns wait for
/// it), so attaches are not starved by a stream of adds.
#[derive(Debug)]
struct LocalTurn {
    root: PathBuf,
    policy_id: Option<u64>,
}

/// The turns of one pin root in this process.
#[derive(Debug, Default)]
struct Turns {
    exclusive: bool,
    roots_waiting: usize,
    containers: std::collections::BTreeSet<u64>,
}

impl Turns {
    fn idle(&self) -> bool {
        !self.exclusive && self.roots_waiting == 0 && self.containers.is_empty()
    }
}

static LOCAL: std::sync::Mutex<std::collections::BTreeMap<PathBuf, Turns>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
static LOCAL_FREE: std::sync::Condvar = std::sync::Condvar::new();

impl LocalTurn {
    /// Waits until `deadline` for this process's other threads: for all of
    /// them (`policy_id` `None`) or for the root turn and the turn of the
    /// same container.
    fn take(root: &Path, policy_id: Option<u64>, deadline: Instant) -> Option<LocalTurn> {
        let mut all = LOCAL.lock().unwrap_or_else(|p| p.into_inner());
        if policy_id.is_none() {
            all.entry(root.to_path_buf()).or_default().roots_waiting += 1;
        }
        loop {
            let turns = all.entry(root.to_path_buf()).or_default();
            let free = match policy_id {
                None => !turns.exclusive && turns.containers.is_empty(),
                Some(id) => {
                    !turns.exclusive && turns.roots_waiting == 0 && !turns.containers.contains(&id)
                }
            };
            if free {
                match policy_id {
                    None => {
                        turns.roots_waiting -= 1;
                        turns.exclusive = true;
                    }
                    Some(id) => {
                        turns.containers.insert(id);
                    }
                }
                return Some(LocalTurn {
                    root: root.to_path_buf(),
                    policy_id,
                });
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                if policy_id.is_none() {
                    turns.roots_waiting -= 1;
                    if turns.idle() {
                        all.remove(root);
                    }
                    // Container turns that waited behind this one go on.
                    LOCAL_FREE.notify_all();
                }
                return None;
            };
            all = LOCAL_FREE
                .wait_timeout(all, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for LocalTurn {
    fn drop(&mut self) {
        let mut all = LOCAL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(turns) = all.get_mut(&self.root) {
            match self.policy_id {
                None => turns.exclusive = false,
                Some(id) => {
                    turns.containers.remove(&id);
                }
            }
            if turns.idle() {
                all.remove(&self.root);
            }
        }
        drop(all);
        LOCAL_FREE.notify_all();
    }
}

/// Takes a flock (`arg` is a non-blocking kind), waiting until `deadline`:
/// retried after 100 µs, doubling up to 2 ms, so a waiter wakes soon after
/// the holder is done. `Ok(None)` when the deadline passed.
fn flock_until(
    mut file: File,
    arg: FlockArg,
    path: &Path,
    deadline: Instant,
) -> Result<Option<Flock<File>>, PinError> {
    let mut pause = Duration::from_micros(100);
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(Some(lock)),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    return Ok(None);
                };
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(2));
                file = f;
            }
            Err((_, e)) => return Err(io_err("flock", path)(e.into())),
        }
    }
}

/// Creates the directory `path` (0700) unless it is there.
fn ensure_dir(path: &Path) -> Result<(), PinError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create directory", path)(e)),
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

    /// Directory of the lock hierarchy's own directories: `locks` itself is
    /// the turnstile (exclusive under the root lock, shared by a container
    /// lock while it takes the gate), `locks/<policy id>` a container's
    /// lock while held.
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The gate: the flock on the root directory itself, the lock every
    /// ctdev took (exclusive) before the hierarchy. A root lock holds it
    /// exclusive and a container lock shared, each for its whole operation,
    /// so an older binary still running (a daemon not yet restarted after
    /// an upgrade) is excluded by both, and excludes both. `arg` is
    /// [`FlockArg::LockExclusiveNonblock`] or [`FlockArg::LockSharedNonblock`].
    fn gate(
        &self,
        arg: FlockArg,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Flock<File>, PinError> {
        loop {
            let file = File::open(&self.root).map_err(io_err("open", &self.root))?;
            let lock =
                flock_until(file, arg, &self.root, deadline)?.ok_or_else(|| self.busy(timeout))?;
            // The last detach removes the root directory; a waiter that
            // opened it before then holds a lock on a removed directory
            // that excludes nobody. Lock the root that is there now instead.
            if same_inode(&lock, &self.root)? == Some(true) {
                return Ok(lock);
            }
            if !self.root.exists() {
                return Err(io_err("open", &self.root)(io::ErrorKind::NotFound.into()));
            }
        }
    }

    /// The turnstile: the flock on `<root>/locks`, exclusive for a root
    /// lock's whole operation, shared by a container lock only while it
    /// takes the gate.
    fn turnstile(
        &self,
        arg: FlockArg,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Flock<File>, PinError> {
        let dir = self.locks_dir();
        ensure_dir(&dir)?;
        let file = File::open(&dir).map_err(io_err("open", &dir))?;
        flock_until(file, arg, &dir, deadline)?.ok_or_else(|| self.busy(timeout))
    }

    fn busy(&self, timeout: Duration) -> PinError {
        PinError::Busy {
            root: self.root.clone(),
            waited: timeout,
        }
    }

    /// Takes the root-exclusive lock: every change to this pin root waits
    /// (the turnstile, then the gate exclusive once the container locks
    /// held now are released), waiting up to `timeout` in all.
    pub fn lock(&self, timeout: Duration) -> Result<RootLock, PinError> {
        let deadline = Instant::now() + timeout;
        let local =
            LocalTurn::take(&self.root, None, deadline).ok_or_else(|| self.busy(timeout))?;
        // The turnstile first: from now on no new container lock gets in,
        // then the gate once the container locks held now are released.
        let turnstile = self.turnstile(FlockArg::LockExclusiveNonblock, deadline, timeout)?;
        let gate = self.gate(FlockArg::LockExclusiveNonblock, deadline, timeout)?;
        Ok(RootLock {
            witness: PinLock {
                root: self.root.clone(),
                policy_id: None,
            },
            _turnstile: turnstile,
            _gate: gate,
            _local: local,
        })
    }

    /// Takes the lock of the container `policy_id`: the gate shared (taken
    /// through the turnstile, so after any root lock waiting or held), then
    /// the container's own lock exclusive, waiting up to
    /// `timeout` in all. Always in this order (root, then container), and
    /// a holder never takes a second lock, so locks cannot deadlock.
    pub fn lock_container(
        &self,
        policy_id: u64,
        timeout: Duration,
    ) -> Result<ContainerLock, PinError> {
        let deadline = Instant::now() + timeout;
        let local = LocalTurn::take(&self.root, Some(policy_id), deadline)
            .ok_or_else(|| self.busy(timeout))?;
        let gate = {
            // Through the turnstile (held exclusive by a root lock from
            // before it waits for the gate until it is done: a waiting root
            // lock is not starved by a stream of container locks), then
            // the gate shared, kept.
            let _turnstile = self.turnstile(FlockArg::LockSharedNonblock, deadline, timeout)?;
            self.gate(FlockArg::LockSharedNonblock, deadline, timeout)?
        };
        let path = self.locks_dir().join(policy_id.to_string());
        let own = loop {
            ensure_dir(&path)?;
            let file = match File::open(&path) {
                Ok(f) => f,
                // Removed by the holder before us between mkdir and open.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let lock = flock_until(file, FlockArg::LockExclusiveNonblock, &path, deadline)?
                .ok_or_else(|| self.busy(timeout))?;
            // The holder before us removed the directory it held: lock the
            // one at the path now (or create it again).
            if same_inode(&lock, &path)? == Some(true) {
                break lock;
            }
        };
        Ok(ContainerLock {
            witness: PinLock {
                root: self.root.clone(),
                policy_id: Some(policy_id),
            },
            _own: OwnLock {
                path,
                lock: Some(own),
            },
            _gate: gate,
            _local: local,
        })
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
        // The lock directories (the caller holds the root lock, so no
        // container lock is held or awaited: only a killed holder's
        // directory can be left in `locks`).
        if let Ok(entries) = fs::read_dir(self.locks_dir()) {
            for e in entries.flatten() {
                let _ = fs::remove_dir(e.path());
            }
        }
        let _ = fs::remove_dir(self.locks_dir());
        let _ = fs::remove_dir(self.links_dir());
        let _ = fs::remove_dir(self.programs_dir());
        let _ = fs::remove_dir(self.tables_dir());
        let _ = fs::remove_dir(self.counters_dir());
        let _ = fs::remove_dir(&self.root);
    }
}

/// Whether the locked directory is still the one at `path` (`None`: no
/// directory is there any more).
fn same_inode(lock: &Flock<File>, path: &Path) -> Result<Option<bool>, PinError> {
    use std::os::unix::fs::MetadataExt;
    let held = lock.metadata().map_err(io_err("stat", path))?;
    match fs::metadata(path) {
        Ok(now) => Ok(Some(now.dev() == held.dev() && now.ino() == held.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("stat", path)(e)),
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

    const SHORT: Duration = Duration::from_millis(30);
    const LONG: Duration = Duration::from_secs(20);

    fn busy<T: std::fmt::Debug>(r: Result<T, PinError>) -> bool {
        matches!(r, Err(PinError::Busy { .. }))
    }

    /// A flock as another process would hold it (its own open file).
    fn raw_flock(path: &Path, arg: FlockArg) -> Flock<File> {
        Flock::lock(File::open(path).unwrap(), arg)
            .map_err(|(_, e)| e)
            .unwrap()
    }

    #[test]
    fn containers_lock_apart_and_the_root_lock_excludes_them() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinRoot::new(dir.path());
        let a = pins.lock_container(1, SHORT).unwrap();
        let b = pins.lock_container(2, SHORT).unwrap();
        assert!(a.covers(1) && !a.covers(2) && b.policy_id() == Some(2));
        assert!(dir.path().join("locks/1").is_dir());
        std::thread::scope(|s| {
            assert!(busy(
                s.spawn(|| pins.lock_container(1, SHORT)).join().unwrap()
            ));
            assert!(busy(s.spawn(|| pins.lock(SHORT)).join().unwrap()));
        });
        drop((a, b));
        // Nothing is left per container once released.
        assert!(!dir.path().join("locks/1").exists());
        let root = pins.lock(SHORT).unwrap();
        assert!(root.covers(1) && root.covers(7) && root.policy_id().is_none());
        std::thread::scope(|s| {
            assert!(busy(
                s.spawn(|| pins.lock_container(3, SHORT)).join().unwrap()
            ));
        });
        drop(root);
        pins.remove_if_empty();
        assert!(
            !dir.path().exists(),
            "the lock directories went with the root"
        );
    }

    #[test]
    fn other_processes_locks_order_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinRoot::new(dir.path());
        // Another process's root lock (or an older ctdev's): the gate.
        let gate = raw_flock(dir.path(), FlockArg::LockExclusive);
        assert!(busy(pins.lock_container(1, SHORT)));
        assert!(busy(pins.lock(SHORT)));
        drop(gate);
        // Another process's container lock of 1: the gate shared and its
        // own directory exclusive.
        fs::create_dir_all(dir.path().join("locks/1")).unwrap();
        let shared = raw_flock(dir.path(), FlockArg::LockShared);
        let own = raw_flock(&dir.path().join("locks/1"), FlockArg::LockExclusive);
        assert!(busy(pins.lock_container(1, SHORT)));
        assert!(busy(pins.lock(SHORT)));
        drop(pins.lock_container(2, SHORT).unwrap());
        drop((shared, own));
        drop(pins.lock(SHORT).unwrap());
        // An older ctdev (the gate exclusive, nothing else) cannot get in
        // while this process holds a container lock, nor a root lock.
        let older = || {
            Flock::lock(
                File::open(dir.path()).unwrap(),
                FlockArg::LockExclusiveNonblock,
            )
            .is_err()
        };
        let one = pins.lock_container(1, SHORT).unwrap();
        assert!(older(), "a container lock excludes an older binary");
        drop(one);
        let root = pins.lock(SHORT).unwrap();
        assert!(older(), "the root lock excludes an older binary");
        drop(root);
        assert!(!older());
    }

    #[test]
    fn a_waiting_root_lock_goes_before_new_container_locks() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinRoot::new(dir.path());
        let held = pins.lock_container(1, SHORT).unwrap();
        std::thread::scope(|s| {
            let root = s.spawn(|| pins.lock(LONG).map(drop));
            // Until the root lock is waiting in this process.
            while LOCAL
                .lock()
                .unwrap()
                .get(dir.path())
                .is_none_or(|t| t.roots_waiting == 0)
            {
                std::thread::yield_now();
            }
            assert!(busy(
                s.spawn(|| pins.lock_container(2, SHORT)).join().unwrap()
            ));
            drop(held);
            root.join().unwrap().unwrap();
        });
        drop(pins.lock_container(2, SHORT).unwrap());
        assert!(LOCAL.lock().unwrap().get(dir.path()).is_none());
    }

    #[test]
    fn a_waiter_on_a_removed_root_locks_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pins");
        fs::create_dir(&root).unwrap();
        let pins = PinRoot::new(&root);
        // Another process holds the root while this one waits for it,
        // then removes it and a new root is made (a last detach, then an
        // attach).
        let other = raw_flock(&root, FlockArg::LockExclusive);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let pins = &pins;
            s.spawn(move || {
                let lock = pins.lock(LONG);
                tx.send(lock.is_ok()).unwrap();
                done_rx.recv().unwrap();
            });
            std::thread::sleep(Duration::from_millis(20));
            fs::rename(&root, dir.path().join("old")).unwrap();
            fs::create_dir(&root).unwrap();
            drop(other);
            assert!(rx.recv().unwrap(), "the waiter got a lock");
            // It holds the new root, not the removed one.
            let new = File::open(&root).unwrap();
            assert!(Flock::lock(new, FlockArg::LockExclusiveNonblock).is_err());
            let old = File::open(dir.path().join("old")).unwrap();
            assert!(Flock::lock(old, FlockArg::LockExclusiveNonblock).is_ok());
            done_tx.send(()).unwrap();
        });
    }

    #[test]
    fn refuses_roots_outside_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        let err = PinRoot::new(dir.path().join("pins")).prepare().unwrap_err();
        assert!(matches!(err, PinError::NotBpffs { .. }), "{err}");
    }
}
