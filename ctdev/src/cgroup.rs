//! cgroup v2 discovery: where the unified hierarchy is mounted, which cgroup
//! a target names, and cgroup ids.
//!
//! The mount point is read from `/proc/self/mountinfo` (never assumed to be
//! `/sys/fs/cgroup`: hybrid hosts mount it at `/sys/fs/cgroup/unified`), or
//! taken from an explicit override.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::fcntl::{open, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};

use crate::error::IoError;

/// Why a cgroup could not be found or used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] io::Error),
    /// No cgroup2 filesystem is mounted.
    #[error("no cgroup2 filesystem is mounted (ctdev needs cgroup v2; see /proc/self/mountinfo)")]
    NoCgroup2,
    /// The override or a resolved path is not on cgroup2.
    #[error("{path} is not a directory on a cgroup2 filesystem")]
    NotCgroup2 {
        /// The offending path.
        path: PathBuf,
    },
    /// `--cgroup-root` is a directory inside the hierarchy, not a mount's root.
    #[error("{path} is not the root of a cgroup2 mount (it is a cgroup inside the hierarchy): pass the cgroup2 mount point, e.g. {hint}; a sub-cgroup as root would make ctdev compute wrong cgroup depths")]
    NotMountRoot {
        /// The path given.
        path: PathBuf,
        /// A cgroup2 mount point found in mountinfo.
        hint: String,
    },
    /// The named cgroup does not exist.
    #[error("cgroup {path} does not exist (cgroup2 is mounted at {mount})")]
    NotFound {
        /// The directory that was looked for.
        path: PathBuf,
        /// The cgroup2 mount point in use.
        mount: PathBuf,
    },
    /// The target path tries to leave the cgroup2 hierarchy.
    #[error("cgroup path {path:?} leaves the cgroup2 hierarchy at {mount}")]
    OutsideHierarchy {
        /// The path as given.
        path: PathBuf,
        /// The cgroup2 mount point in use.
        mount: PathBuf,
    },
    /// A process's cgroup could not be read.
    #[error("cannot read the cgroup of pid {pid}: {reason}")]
    Pid {
        pid: i32,
        /// What went wrong.
        reason: String,
    },
    /// An I/O error on a cgroup directory.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The cgroup2 hierarchy ctdev works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFs {
    mount: PathBuf,
    /// Depth of the mount's root inside the whole hierarchy (0 unless a
    /// sub-tree is mounted, e.g. inside a cgroup namespace).
    root_depth: u32,
}

/// One cgroup: its directory and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Directory of the cgroup under the cgroup2 mount.
    pub dir: PathBuf,
    /// Path inside the hierarchy, as `/proc/PID/cgroup` shows it (`/` for the root).
    pub path: PathBuf,
    /// The cgroup id (the directory's inode number on cgroup2), also the
    /// policy id of a container attached here.
    pub id: u64,
}

impl Cgroup {
    /// Opens the cgroup directory (for attaching and querying programs).
    pub fn open(&self) -> Result<OwnedFd, CgroupError> {
        open(
            &self.dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| IoError::new("open", &self.dir, e.into()).into())
    }

    /// [`Cgroup::open`], with the id of the cgroup opened (the directory's
    /// inode number): when it is not [`Cgroup::id`], the path names another
    /// cgroup now (removed and created again since it was resolved). One
    /// `fstat`, which unlike a link's info after attaching takes no cgroup
    /// lock.
    pub fn open_with_id(&self) -> Result<(OwnedFd, u64), CgroupError> {
        let fd = self.open()?;
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| CgroupError::from(IoError::new("stat", &self.dir, e.into())))?;
        Ok((fd, st.st_ino))
    }
}

impl CgroupFs {
    /// Finds the cgroup2 mount from `/proc/self/mountinfo`.
    pub fn discover() -> Result<Self, CgroupError> {
        let text =
            crate::fsio::read_small("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
        let (mount, root) = cgroup2_mount_entry(&text).ok_or(CgroupError::NoCgroup2)?;
        Ok(Self {
            mount,
            root_depth: depth(&root),
        })
    }

    /// Uses `mount` as the cgroup2 mount point: it must be on cgroup2 and
    /// be a mount point of it (mountinfo gives the depth of its root), never
    /// a directory inside the hierarchy.
    pub fn at(mount: &Path) -> Result<Self, CgroupError> {
        if !is_cgroup2(mount) {
            return Err(CgroupError::NotCgroup2 {
                path: mount.to_path_buf(),
            });
        }
        let text =
            crate::fsio::read_small("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
        // mountinfo names mount points by their canonical paths: a path
        // given as one of them is one (no symlink can be on the way to a
        // mount point), so the path is canonicalized (a `readlink` per
        // component) only when it is not found as given.
        let root_depth = mount_root_depth(&text, mount)
            .or_else(|| {
                let real = fs::canonicalize(mount).ok()?;
                mount_root_depth(&text, &real)
            })
            .ok_or_else(|| CgroupError::NotMountRoot {
                path: mount.to_path_buf(),
                hint: cgroup2_mount_from_mountinfo(&text)
                    .map(|m| m.display().to_string())
                    .unwrap_or_else(|| "/sys/fs/cgroup".into()),
            })?;
        Ok(Self {
            mount: mount.to_path_buf(),
            root_depth,
        })
    }

    /// The depth of `cgroup` in the kernel's hierarchy (the root is 0): what
    /// `bpf_get_current_ancestor_cgroup_id` takes to name it.
    pub fn level(&self, cgroup: &Cgroup) -> u32 {
        self.root_depth + depth(&cgroup.path)
    }

    /// Discovers the mount, or uses the override when one is given.
    pub fn new(override_mount: Option<&Path>) -> Result<Self, CgroupError> {
        match override_mount {
            Some(m) => Self::at(m),
            None => Self::discover(),
        }
    }

    /// The cgroup2 mount point.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Resolves a cgroup path: absolute under the mount point (a directory),
    /// otherwise a path inside the hierarchy (`/a/b` as in `/proc/PID/cgroup`,
    /// or relative `a/b`). An absolute path that is no such cgroup but is a
    /// cgroup directory under another cgroup2 mount of the same hierarchy
    /// (`/sys/fs/cgroup/app` while ctdev uses `/sys/fs/cgroup/unified`, or
    /// the reverse) names that cgroup.
    pub fn cgroup(&self, given: &Path) -> Result<Cgroup, CgroupError> {
        match self.cgroup_in_mount(given) {
            Err(e @ CgroupError::NotFound { .. }) if given.is_absolute() => {
                self.cgroup_via_other_mount(given).ok_or(e)
            }
            other => other,
        }
    }

    /// `given` as a cgroup directory under another cgroup2 mount point: the
    /// same directory under ours (same device and inode), if it has one.
    fn cgroup_via_other_mount(&self, given: &Path) -> Option<Cgroup> {
        let meta = fs::metadata(given).ok()?;
        if !meta.is_dir() || !is_cgroup2(given) {
            return None;
        }
        let text = crate::fsio::read_small("/proc/self/mountinfo").ok()?;
        let (mount, root) = cgroup2_mount_entries(&text)
            .into_iter()
            .filter(|(m, _)| given.starts_with(m))
            .max_by_key(|(m, _)| m.components().count())?;
        // Path inside the whole hierarchy, then inside our mount's root.
        let whole = root.join(given.strip_prefix(&mount).ok()?);
        let inside: PathBuf = whole
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .skip(self.root_depth as usize)
            .collect();
        let found = self.cgroup_in_mount(&inside).ok()?;
        let ours = fs::metadata(&found.dir).ok()?;
        (ours.ino() == meta.ino() && ours.dev() == meta.dev()).then_some(found)
    }

    /// `given` as a path inside our mount (no `..`: never outside it).
    fn inside_mount(&self, given: &Path) -> Result<PathBuf, CgroupError> {
        let inside = match given.strip_prefix(&self.mount) {
            Ok(rest) if given.is_absolute() => rest.to_path_buf(),
            _ => given.strip_prefix("/").unwrap_or(given).to_path_buf(),
        };
        if inside
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(CgroupError::OutsideHierarchy {
                path: given.to_path_buf(),
                mount: self.mount.clone(),
            });
        }
        Ok(inside)
    }

    fn cgroup_in_mount(&self, given: &Path) -> Result<Cgroup, CgroupError> {
        let inside = self.inside_mount(given)?;
        let dir = self.mount.join(&inside);
        let meta = fs::metadata(&dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => CgroupError::NotFound {
                path: dir.clone(),
                mount: self.mount.clone(),
            },
            _ => IoError::new("stat", &dir, e).into(),
        })?;
        if !meta.is_dir() || !is_cgroup2(&dir) {
            return Err(CgroupError::NotCgroup2 { path: dir });
        }
        Ok(Cgroup {
            path: Path::new("/").join(&inside),
            dir,
            id: meta.ino(),
        })
    }

    /// Whether process `pid` is in the cgroup directory `dir` or below it,
    /// from `/proc/PID/cgroup` alone (the path it names is not looked up:
    /// a process is in an existing cgroup). `false` when it cannot be
    /// read or names a cgroup outside this mount.
    pub fn pid_is_under(&self, pid: i32, dir: &Path) -> bool {
        let Ok(text) = crate::fsio::read_small(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .filter(|p| !p.ends_with(" (deleted)"))
            .and_then(|p| self.inside_mount(Path::new(p)).ok())
            .is_some_and(|inside| self.mount.join(inside).starts_with(dir))
    }

    /// The cgroup a process is in, from `/proc/PID/cgroup`.
    pub fn cgroup_of_pid(&self, pid: i32) -> Result<Cgroup, CgroupError> {
        let text = crate::fsio::read_small(format!("/proc/{pid}/cgroup")).map_err(|e| {
            CgroupError::Pid {
                pid,
                reason: if e.kind() == io::ErrorKind::NotFound {
                    "no such process".into()
                } else {
                    e.to_string()
                },
            }
        })?;
        let path = unified_path_from_proc_cgroup(&text).ok_or_else(|| CgroupError::Pid {
            pid,
            reason: "it has no cgroup2 (\"0::\") entry".into(),
        })?;
        self.cgroup(Path::new(&path))
    }

    /// Maps cgroup ids to their cgroups. Only the ids asked for are
    /// returned; missing ones are simply absent.
    ///
    /// A few ids are looked up by file handle (cgroup2 exports a cgroup's
    /// id as its handle: one `open_by_handle_at`, and a cgroup that is gone
    /// is known gone at once: the daemon's detach of a removed container
    /// walked every cgroup of the host for an id never found); many ids, or
    /// ids the kernel does not answer that way (no CAP_DAC_READ_SEARCH, a
    /// cgroup outside this mount), by walking the hierarchy once.
    ///
    /// The walk opens and reads only directories that have subdirectories,
    /// and stats each cgroup once relative to its open parent: its inode
    /// number is the cgroup id, and on cgroup2 (kernfs) a directory's link
    /// count is 2 plus its subdirectories, so a leaf (most containers'
    /// cgroups) is never opened. At 10,000 cgroups that is about 10,000
    /// system calls where a stat, an open, an fstat, two `getdents64` and a
    /// close per cgroup made 60,000.
    pub fn find_ids(&self, ids: &[u64]) -> HashMap<u64, Cgroup> {
        let mut found = HashMap::new();
        let mut wanted: std::collections::HashSet<u64> = ids.iter().copied().collect();
        let at = |dir: &Path, id: u64| self.cgroup_at(dir, id);
        // The cgroup2 file system's device: a node of another file system
        // mounted somewhere under the tree never matches an id by chance.
        let Ok(mount_meta) = fs::metadata(&self.mount) else {
            return found;
        };
        let mount_dev = mount_meta.dev();
        if ids.len() <= BY_HANDLE_MAX {
            let mount_fd = open(
                &self.mount,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            if let Ok(mount_fd) = mount_fd {
                wanted.retain(|&id| match self.by_handle(&mount_fd, mount_dev, id) {
                    ById::Found(cgroup) => {
                        found.insert(id, cgroup);
                        false
                    }
                    ById::Gone => false,
                    ById::Unknown => true,
                });
            }
        }
        if wanted.remove(&mount_meta.ino()) {
            found.insert(mount_meta.ino(), at(&self.mount, mount_meta.ino()));
        }
        let mut stack = vec![self.mount.clone()];
        while let Some(dir) = stack.pop() {
            if wanted.is_empty() {
                break;
            }
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let Ok(mut handle) = Dir::open(&dir, flags, Mode::empty()) else {
                continue;
            };
            // Subdirectories (entries the file system says are directories,
            // or says nothing about); the stat below decides.
            let subdirs: Vec<std::ffi::CString> = handle
                .iter()
                // A read error ends this directory (nix's iterator would
                // return the same error again and again).
                .map_while(Result::ok)
                .filter(|e| {
                    let n = e.file_name().to_bytes();
                    n != b"." && n != b".."
                })
                .filter(|e| matches!(e.file_type(), Some(Type::Directory) | None))
                .map(|e| e.file_name().to_owned())
                .collect();
            for name in subdirs {
                let st = fstatat(
                    handle.as_fd(),
                    name.as_c_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                );
                // Gone since the read (or unreadable): not a cgroup that is
                // there, so not reported as present.
                let Ok(st) = st else { continue };
                let (ino, is_dir, leaf) = (
                    st.st_ino,
                    st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                    st.st_nlink == 2,
                );
                if !is_dir || st.st_dev != mount_dev {
                    continue;
                }
                let child = dir.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
                if wanted.remove(&ino) {
                    found.insert(ino, at(&child, ino));
                }
                if !leaf {
                    stack.push(child);
                }
            }
        }
        found
    }
}

/// Up to this many ids, [`CgroupFs::find_ids`] asks by file handle. Each
/// id costs four system calls (`open_by_handle_at`, `fstat`, `readlink`,
/// `stat`) where the walk costs about one per cgroup of the host: the
/// bound keeps the handle path cheaper than a walk of even a small host
/// (a few hundred cgroups). Not tuned further: the callers ask for one id
/// (a detach, a daemon job) or for every container (`list`).
const BY_HANDLE_MAX: usize = 16;

/// `FILEID_KERNFS` (`include/linux/exportfs.h`): the handle type kernfs,
/// and so cgroup2, exports; its 8 bytes are the node's id, which is the
/// cgroup id and its inode number.
const FILEID_KERNFS: libc::c_int = 0xfe;

/// A `struct file_handle` holding a kernfs id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    id: [u8; 8],
}

/// What a lookup by file handle found.
enum ById {
    Found(Cgroup),
    /// No cgroup has the id (the kernel says the handle is stale).
    Gone,
    /// Not answered this way: ask the walk.
    Unknown,
}

impl CgroupFs {
    /// The cgroup `id` at the directory `dir` of this mount.
    fn cgroup_at(&self, dir: &Path, id: u64) -> Cgroup {
        let inside = dir.strip_prefix(&self.mount).unwrap_or(Path::new(""));
        Cgroup {
            path: Path::new("/").join(inside),
            dir: dir.to_path_buf(),
            id,
        }
    }

    /// The cgroup whose id is `id`, by file handle under `mount_fd` (the
    /// cgroup2 file system on device `mount_dev`).
    fn by_handle(&self, mount_fd: &OwnedFd, mount_dev: u64, id: u64) -> ById {
        use std::os::fd::{AsRawFd, FromRawFd};
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id: id.to_ne_bytes(),
        };
        // SAFETY: `handle` is a `struct file_handle` header followed by
        // its `handle_bytes` (8) bytes, valid and writable for the call;
        // `mount_fd` is an open directory fd.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount_fd.as_raw_fd(),
                (&raw mut handle).cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return match io::Error::last_os_error().raw_os_error() {
                Some(libc::ESTALE) => ById::Gone,
                _ => ById::Unknown,
            };
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The node opened is the cgroup `id` of this file system.
        let opened = nix::sys::stat::fstat(fd.as_fd());
        if !opened.is_ok_and(|st| st.st_ino == id && st.st_dev == mount_dev) {
            return ById::Unknown;
        }
        // Its path through this mount, checked to name that node still
        // (not removed or renamed meanwhile, inside this mount).
        let Ok(dir) = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            return ById::Unknown;
        };
        if !dir.starts_with(&self.mount) {
            return ById::Unknown;
        }
        let still =
            fs::metadata(&dir).is_ok_and(|m| m.is_dir() && m.ino() == id && m.dev() == mount_dev);
        if !still {
            return ById::Unknown;
        }
        ById::Found(self.cgroup_at(&dir, id))
    }
}

/// Whether the directory `dir` is still the cgroup whose id (inode) is
/// `id`: not removed, not created again under its name.
pub fn is_cgroup(dir: &Path, id: u64) -> bool {
    fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.ino() == id)
}

/// Whether `path` is on a cgroup2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The first cgroup2 mount point in a mountinfo text.
pub fn cgroup2_mount_from_mountinfo(text: &str) -> Option<PathBuf> {
    cgroup2_mount_entry(text).map(|(mount, _)| mount)
}

/// Number of normal components of a path (`/` is 0, `/a/b` is 2).
fn depth(path: &Path) -> u32 {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count() as u32
}

/// The depth of the hierarchy root of the cgroup2 mount at `mount` (the
/// last such mount in mountinfo: a later mount hides an earlier one), or
/// `None` when `mount` is not a cgroup2 mount point.
fn mount_root_depth(text: &str, mount: &Path) -> Option<u32> {
    text.lines()
        .rev()
        .filter_map(cgroup2_mount_entry)
        .find(|(m, _)| m == mount)
        .map(|(_, root)| depth(&root))
}

/// The first cgroup2 mount in a mountinfo text: (mount point, root of the
/// mount inside the hierarchy).
fn cgroup2_mount_entry(text: &str) -> Option<(PathBuf, PathBuf)> {
    cgroup2_mount_entries(text).into_iter().next()
}

/// Every cgroup2 mount in a mountinfo text, in order: (mount point, root of
/// the mount inside the hierarchy).
fn cgroup2_mount_entries(text: &str) -> Vec<(PathBuf, PathBuf)> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mountpoint options [optional...] - fstype source superopts
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup2" {
                return None;
            }
            let mut fields = pre.split_whitespace().skip(3);
            let root = fields.next()?;
            let mountpoint = fields.next()?;
            Some((
                PathBuf::from(unescape_mountinfo(mountpoint)),
                PathBuf::from(unescape_mountinfo(root)),
            ))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &field[i + 1..i + 4];
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 path (`0::/path`) in a `/proc/PID/cgroup` text.
pub fn unified_path_from_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_cgroup2_on_hybrid_hosts() {
        assert_eq!(
            cgroup2_mount_from_mountinfo(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn levels_count_from_the_hierarchy_root() {
        assert_eq!(
            cgroup2_mount_entry(HYBRID).map(|e| e.1),
            Some(PathBuf::from("/"))
        );
        let nested = "60 1 0:40 /lxc.payload.a /sys/fs/cgroup rw - cgroup2 none rw\n";
        let (mount, root) = cgroup2_mount_entry(nested).unwrap();
        assert_eq!((mount, depth(&root)), (PathBuf::from("/sys/fs/cgroup"), 1));
        let fs = CgroupFs::discover().expect("cgroup2 mounted");
        assert_eq!(fs.level(&fs.cgroup(Path::new("/")).unwrap()), 0);
    }

    #[test]
    fn cgroup_root_must_be_a_mount_point() {
        assert_eq!(
            mount_root_depth(HYBRID, Path::new("/sys/fs/cgroup/unified")),
            Some(0)
        );
        assert_eq!(
            mount_root_depth(HYBRID, Path::new("/sys/fs/cgroup/unified/a")),
            None
        );
        let nested = "60 1 0:40 /lxc.payload.a /sys/fs/cgroup rw - cgroup2 none rw\n";
        assert_eq!(
            mount_root_depth(nested, Path::new("/sys/fs/cgroup")),
            Some(1)
        );
        // The real mount point works, a sub-cgroup of it is refused.
        let fs = CgroupFs::discover().expect("cgroup2 mounted");
        assert!(CgroupFs::at(fs.mount()).is_ok());
    }

    #[test]
    fn finds_nothing_without_cgroup2() {
        let v1_only = HYBRID.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(cgroup2_mount_from_mountinfo(&v1_only), None);
    }

    #[test]
    fn unescapes_mount_points() {
        let text = "50 1 0:40 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount_from_mountinfo(text),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn reads_unified_line_of_proc_cgroup() {
        let text = "12:devices:/lxc/x\n0::/lxc.payload.x/init\n";
        assert_eq!(
            unified_path_from_proc_cgroup(text).as_deref(),
            Some("/lxc.payload.x/init")
        );
        assert_eq!(unified_path_from_proc_cgroup("3:cpu:/\n"), None);
    }

    #[test]
    fn rejects_paths_that_leave_the_hierarchy() {
        let fs = CgroupFs::discover().expect("cgroup2 mounted");
        for p in ["../etc", "/a/../../etc", "a/../.."] {
            assert!(
                matches!(
                    fs.cgroup(Path::new(p)),
                    Err(CgroupError::OutsideHierarchy { .. })
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn resolves_root_and_reports_missing() {
        let fs = CgroupFs::discover().expect("cgroup2 mounted");
        let root = fs.cgroup(Path::new("/")).unwrap();
        assert_eq!(root.dir, fs.mount());
        assert_eq!(root.path, Path::new("/"));
        let same = fs.cgroup(fs.mount()).unwrap();
        assert_eq!(same.id, root.id);
        let err = fs.cgroup(Path::new("no-such-cgroup-ctdev")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn a_process_is_under_its_own_cgroup_and_its_ancestors_only() {
        let fs = CgroupFs::discover().expect("cgroup2 mounted");
        let me = std::process::id() as i32;
        let own = fs.cgroup_of_pid(me).unwrap();
        assert!(fs.pid_is_under(me, &own.dir));
        assert!(fs.pid_is_under(me, fs.mount()));
        assert!(!fs.pid_is_under(me, &own.dir.join("no-such-child-ctdev")));
        assert!(!fs.pid_is_under(i32::MAX, fs.mount()), "no such process");
    }
}
