//! Device nodes inside a container's root directory.
//!
//! **Path safety.** Every path inside the container is resolved from an
//! `O_PATH` fd of `/proc/<pid>/root` with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`: the kernel treats that fd as `/` for the whole
//! lookup, so absolute symlinks and `..` planted by the container (say
//! `/dev/evil -> /etc`) resolve inside the container's root and can never
//! reach the host's, and `/proc/*/root`-style magic links are refused.
//! Only directories are resolved that way; the last component is then
//! handled with `*at()` calls relative to the resolved parent fd and never
//! followed (`AT_SYMLINK_NOFOLLOW`, `O_NOFOLLOW`), so a symlink at DEST is
//! refused rather than written through. DEST itself must be absolute and
//! free of `.`/`..` components.
//!
//! This is the alternative to `setns()`-ing into the container's mount
//! namespace (and `chroot`-ing into its root), which needs a dedicated
//! single-threaded child process; a dirfd needs no namespace change, works
//! from a multi-threaded process, and makes the kernel enforce the boundary
//! for every lookup.
//!
//! Every change is recorded in a [`Journal`] so that a failure later in the
//! operation can put back what was there: created directories and nodes
//! are removed, a replaced or removed node is recreated as it was.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, mknodat, FileStat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use serde::Serialize;

use crate::rule::DeviceType;

/// Why a node could not be created, inspected or removed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// DEST is not an absolute, normalised path.
    #[error("invalid destination {dest:?}: {reason}")]
    BadDest {
        /// DEST as given.
        dest: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A syscall failed on a path inside the container.
    #[error("{call} {path} in the container (root {root}) failed: {errno}")]
    Sys {
        /// The call, e.g. `mknodat`.
        call: &'static str,
        /// The path inside the container.
        path: PathBuf,
        /// The container root (`/proc/<pid>/root`).
        root: PathBuf,
        errno: Errno,
    },
    /// Something that is not a device node is at DEST.
    #[error("{dest} in the container (root {root}) is a {kind}, not a device node: refusing to replace it")]
    Occupied {
        /// The path inside the container.
        dest: PathBuf,
        /// The container root.
        root: PathBuf,
        /// What is there (`directory`, `symlink`, `regular file`, ...).
        kind: &'static str,
    },
    /// DEST is on a `nodev` mount: a node there could never be opened.
    #[error("{dest} in the container (root {root}) is on a nodev mount: a device node there cannot be opened; pick a DEST on another mount (e.g. under /dev)")]
    NoDev {
        /// The path inside the container.
        dest: PathBuf,
        /// The container root.
        root: PathBuf,
    },
    /// A device node at DEST is not the expected device.
    #[error("{dest} in the container is {found}, not {expected}: refusing to remove it")]
    Mismatch {
        /// The path inside the container.
        dest: PathBuf,
        /// What is there (`c 1:3`).
        found: String,
        /// What was expected.
        expected: String,
    },
}

/// The container's root directory: an fd and its `/proc` path for messages.
#[derive(Debug, Clone, Copy)]
pub struct Root<'a> {
    /// `O_PATH` fd of `/proc/<pid>/root`.
    pub fd: BorrowedFd<'a>,
    /// `/proc/<pid>/root` (only for messages).
    pub path: &'a Path,
}

/// A device node as it is (or should be) in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    /// Block or char (never `All`).
    #[serde(rename = "type")]
    pub dev_type: DeviceType,
    pub major: u32,
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid (host view).
    pub uid: u32,
    /// Owner gid (host view).
    pub gid: u32,
}

impl NodeSpec {
    fn kind(&self) -> SFlag {
        if self.dev_type == DeviceType::Block {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        }
    }

    /// `c 1:3`.
    pub fn device(&self) -> String {
        format!("{} {}:{}", self.dev_type.letter(), self.major, self.minor)
    }

    /// Same device (type and numbers), whatever mode and owner.
    pub fn same_device(&self, other: &NodeSpec) -> bool {
        (self.dev_type, self.major, self.minor) == (other.dev_type, other.major, other.minor)
    }

    fn from_stat(st: &FileStat) -> Option<NodeSpec> {
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let dev_type = if fmt == SFlag::S_IFCHR {
            DeviceType::Char
        } else if fmt == SFlag::S_IFBLK {
            DeviceType::Block
        } else {
            return None;
        };
        Some(NodeSpec {
            dev_type,
            major: libc::major(st.st_rdev),
            minor: libc::minor(st.st_rdev),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        })
    }
}

/// What happened to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeAction {
    /// A new node was made.
    Created,
    /// A different device node (or the same one with another mode/owner) was replaced.
    Replaced,
    /// The node already was as asked.
    Unchanged,
    /// The node was removed.
    Removed,
    /// There was no node to remove.
    Absent,
}

/// What is at a path inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// Nothing (or a parent directory is missing).
    Absent,
    /// A device node.
    Device(NodeSpec),
    /// Something else: `directory`, `symlink`, ...
    Other(&'static str),
}

/// Checks that DEST is absolute, normalised, not `/`, and has no NUL byte.
pub fn check_dest(dest: &Path) -> Result<(), NodeError> {
    let bad = |reason| {
        Err(NodeError::BadDest {
            dest: dest.to_path_buf(),
            reason,
        })
    };
    let bytes = dest.as_os_str().as_bytes();
    if !dest.is_absolute() {
        return bad("must be an absolute path inside the container");
    }
    if bytes.contains(&0) {
        return bad("contains a NUL byte");
    }
    if bytes.len() >= libc::PATH_MAX as usize {
        return bad("is too long");
    }
    // `Path::components` drops `.` in the middle; look at the raw bytes.
    if bytes.split(|b| *b == b'/').any(|c| c == b"." || c == b"..") {
        return bad("must not contain '.' or '..' components");
    }
    if dest.file_name().is_none() {
        return bad("names no file");
    }
    Ok(())
}

/// DEST split into its directory components and its last component.
pub(super) fn split(dest: &Path) -> (Vec<&OsStr>, &OsStr) {
    let mut parts: Vec<&OsStr> = dest
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let name = parts.pop().unwrap_or_default();
    (parts, name)
}

/// Opens a directory of the container, resolving `path` with the container
/// Checks DEST and opens its parent directory in the container: the
/// parent's fd and DEST's own name, or `None` when the parent is missing
/// (or not a directory).
fn open_parent<'a>(
    root: Root<'_>,
    dest: &'a Path,
) -> Result<Option<(OwnedFd, &'a OsStr)>, NodeError> {
    check_dest(dest)?;
    let parent_path = dest.parent().unwrap_or(Path::new("/"));
    let (_, name) = split(dest);
    match resolve_dir(root, parent_path) {
        Ok(fd) => Ok(Some((fd, name))),
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(sys(root, "openat2", parent_path, e)),
    }
}

/// root as `/` (absolute symlinks and `..` cannot leave it) and no magic links.
pub(super) fn resolve_dir(root: Root<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    openat2(
        root.fd,
        path,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

pub(super) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn kind_name(st: &FileStat) -> &'static str {
    let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    match fmt {
        f if f == SFlag::S_IFDIR => "directory",
        f if f == SFlag::S_IFLNK => "symlink",
        f if f == SFlag::S_IFREG => "regular file",
        f if f == SFlag::S_IFIFO => "fifo",
        f if f == SFlag::S_IFSOCK => "socket",
        _ => "special file",
    }
}

/// Creates node `name` in `dir` exactly as `spec` says (type, numbers,
/// owner, mode regardless of umask). On failure the half-made node is removed.
fn make_node(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    spec: &NodeSpec,
) -> Result<(), (&'static str, Errno)> {
    mknodat(
        dir,
        name,
        spec.kind(),
        Mode::from_bits_truncate(spec.mode & 0o777),
        libc::makedev(spec.major, spec.minor),
    )
    .map_err(|e| ("mknodat", e))?;
    let finish = || -> Result<(), (&'static str, Errno)> {
        // Work on the inode we just made, not on the name (which the
        // container could swap).
        let fd = openat(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ("openat", e))?;
        let st = fstat(&fd).map_err(|e| ("fstat", e))?;
        if NodeSpec::from_stat(&st).is_none_or(|got| !got.same_device(spec)) {
            return Err(("mknodat", Errno::EEXIST));
        }
        fchownat(
            &fd,
            "",
            Some(Uid::from_raw(spec.uid)),
            Some(Gid::from_raw(spec.gid)),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| ("fchownat", e))?;
        // chmod through the fd's magic link: the exact mode, without umask
        // (fchmod does not work on O_PATH fds).
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            std::fs::Permissions::from_mode(spec.mode),
        )
        .map_err(|e| {
            (
                "chmod",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
        Ok(())
    };
    finish().inspect_err(|_| {
        let _ = unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
    })
}

/// Makes `name` in `dir` atomically become `spec`: a temporary node renamed over it.
fn replace_node(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    spec: &NodeSpec,
) -> Result<(), (&'static str, Errno)> {
    // A fixed name (changes run under the pin-root lock): a temporary node
    // left by a crash is removed by the next add of the same node.
    let mut tmp = OsString::from(".ctdev-tmp-");
    tmp.push(name);
    if tmp.len() > 255 {
        tmp = OsString::from(".ctdev-tmp");
    }
    let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    make_node(dir, &tmp, spec)?;
    crate::failpoint!("node.after_tmp_node");
    renameat(dir, tmp.as_os_str(), dir, name).map_err(|e| {
        let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        ("renameat", e)
    })
}

/// One undoable change.
#[derive(Debug)]
enum Step {
    /// A directory was created.
    Dir {
        parent: OwnedFd,
        name: OsString,
        path: PathBuf,
    },
    /// A node was created.
    Node {
        parent: OwnedFd,
        name: OsString,
        path: PathBuf,
    },
    /// A node was replaced; `old` was there before.
    Replaced {
        parent: OwnedFd,
        name: OsString,
        path: PathBuf,
        old: NodeSpec,
    },
    /// A node was removed.
    Removed {
        parent: OwnedFd,
        name: OsString,
        path: PathBuf,
        old: NodeSpec,
    },
}

/// The changes made in a container root, to undo them on a later failure.
#[derive(Debug, Default)]
pub struct Journal {
    steps: Vec<Step>,
}

impl Journal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The directories created, parents first.
    pub fn created_dirs(&self) -> Vec<PathBuf> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Dir { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    /// Undoes every change, newest first. Returns what could not be undone
    /// (also logged); the undo goes on past a failure.
    pub fn rollback(self) -> Vec<String> {
        let mut failed = Vec::new();
        for step in self.steps.into_iter().rev() {
            let (what, res) = match &step {
                Step::Dir { parent, name, path } => (
                    format!("remove directory {}", path.display()),
                    unlinkat(parent, name.as_os_str(), UnlinkatFlags::RemoveDir)
                        .map_err(|e| ("unlinkat", e)),
                ),
                Step::Node { parent, name, path } => (
                    format!("remove node {}", path.display()),
                    unlinkat(parent, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| ("unlinkat", e)),
                ),
                Step::Replaced {
                    parent,
                    name,
                    path,
                    old,
                } => (
                    format!("restore node {} ({})", path.display(), old.device()),
                    replace_node(parent.as_fd(), name, old),
                ),
                Step::Removed {
                    parent,
                    name,
                    path,
                    old,
                } => (
                    format!("recreate node {} ({})", path.display(), old.device()),
                    make_node(parent.as_fd(), name, old),
                ),
            };
            match res {
                Ok(()) => tracing::info!("undo: {what}"),
                Err((call, errno)) => {
                    tracing::error!("undo: cannot {what}: {call}: {errno}");
                    failed.push(format!("cannot {what}: {call}: {errno}"));
                }
            }
        }
        failed
    }
}

pub(super) fn sys(root: Root<'_>, call: &'static str, path: &Path, errno: Errno) -> NodeError {
    NodeError::Sys {
        call,
        path: path.to_path_buf(),
        root: root.path.to_path_buf(),
        errno,
    }
}

/// Opens DEST's parent directory, creating missing directories (0755,
/// owned by `uid:gid`) one by one, each relative to its resolved parent.
pub(super) fn mkdir_p(
    root: Root<'_>,
    parents: &[&OsStr],
    uid: u32,
    gid: u32,
    journal: &mut Journal,
) -> Result<OwnedFd, NodeError> {
    let mut prefix = PathBuf::from("/");
    // The directory reached so far; the root itself is opened only when
    // it is DEST's parent or a directory must be made in it.
    let mut cur: Option<OwnedFd> = None;
    for comp in parents {
        let parent_path = prefix.clone();
        prefix.push(comp);
        match resolve_dir(root, &prefix) {
            Ok(fd) => cur = Some(fd),
            Err(Errno::ENOENT) => {
                let cur = match cur.take() {
                    Some(fd) => fd,
                    None => resolve_dir(root, &parent_path)
                        .map_err(|e| sys(root, "openat2", &parent_path, e))?,
                };
                mkdirat(&cur, *comp, Mode::from_bits_truncate(0o755))
                    .map_err(|e| sys(root, "mkdirat", &prefix, e))?;
                let chown = fchownat(
                    &cur,
                    *comp,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                );
                journal.steps.push(Step::Dir {
                    parent: cur,
                    name: comp.to_os_string(),
                    path: prefix.clone(),
                });
                chown.map_err(|e| sys(root, "fchownat", &prefix, e))?;
                tracing::debug!(dir = %prefix.display(), "created directory in container");
            }
            Err(e) => return Err(sys(root, "openat2", &prefix, e)),
        }
        if cur.is_none() {
            cur = Some(resolve_dir(root, &prefix).map_err(|e| sys(root, "openat2", &prefix, e))?);
        }
    }
    match cur {
        Some(fd) => Ok(fd),
        None => resolve_dir(root, &prefix).map_err(|e| sys(root, "openat2", &prefix, e)),
    }
}

/// Makes DEST in the container a device node as `spec` says: creates
/// missing parent directories, creates the node, or replaces a device node
/// that differs. Anything else at DEST is refused. Changes go to `journal`.
pub fn ensure_node(
    root: Root<'_>,
    dest: &Path,
    spec: &NodeSpec,
    journal: &mut Journal,
) -> Result<NodeAction, NodeError> {
    check_dest(dest)?;
    let (parents, name) = split(dest);
    let parent = mkdir_p(root, &parents, spec.uid, spec.gid, journal)?;
    let flags = nix::sys::statvfs::fstatvfs(&parent)
        .map_err(|e| sys(root, "fstatvfs", dest, e))?
        .flags();
    if flags.contains(nix::sys::statvfs::FsFlags::ST_NODEV) {
        return Err(NodeError::NoDev {
            dest: dest.to_path_buf(),
            root: root.path.to_path_buf(),
        });
    }
    let existing = lstat_at(parent.as_fd(), name).map_err(|e| sys(root, "fstatat", dest, e))?;
    let Some(st) = existing else {
        make_node(parent.as_fd(), name, spec).map_err(|(c, e)| sys(root, c, dest, e))?;
        journal.steps.push(Step::Node {
            parent,
            name: name.to_os_string(),
            path: dest.to_path_buf(),
        });
        return Ok(NodeAction::Created);
    };
    let Some(old) = NodeSpec::from_stat(&st) else {
        return Err(NodeError::Occupied {
            dest: dest.to_path_buf(),
            root: root.path.to_path_buf(),
            kind: kind_name(&st),
        });
    };
    if old == *spec {
        return Ok(NodeAction::Unchanged);
    }
    replace_node(parent.as_fd(), name, spec).map_err(|(c, e)| sys(root, c, dest, e))?;
    journal.steps.push(Step::Replaced {
        parent,
        name: name.to_os_string(),
        path: dest.to_path_buf(),
        old,
    });
    Ok(NodeAction::Replaced)
}

/// What `add` plans from, read-only (what [`ensure_node`] would create):
/// the parent directories of DEST missing in the container (parents
/// first) and what is at DEST ([`Existing::Absent`] when a parent is
/// missing; the same as [`inspect`]). One walk: each directory is opened
/// once, and DEST is looked up in the parent's fd.
pub fn survey(root: Root<'_>, dest: &Path) -> Result<(Vec<PathBuf>, Existing), NodeError> {
    check_dest(dest)?;
    let (parents, name) = split(dest);
    let mut prefix = PathBuf::from("/");
    let mut missing = Vec::new();
    let mut parent = None;
    for comp in parents {
        prefix.push(comp);
        if !missing.is_empty() {
            missing.push(prefix.clone());
            continue;
        }
        match resolve_dir(root, &prefix) {
            Ok(fd) => parent = Some(fd),
            Err(Errno::ENOENT) => missing.push(prefix.clone()),
            Err(e) => return Err(sys(root, "openat2", &prefix, e)),
        }
    }
    if !missing.is_empty() {
        return Ok((missing, Existing::Absent));
    }
    let parent = match parent {
        Some(fd) => fd,
        None => resolve_dir(root, &prefix).map_err(|e| sys(root, "openat2", &prefix, e))?,
    };
    let existing =
        match lstat_at(parent.as_fd(), name).map_err(|e| sys(root, "fstatat", dest, e))? {
            None => Existing::Absent,
            Some(st) => match NodeSpec::from_stat(&st) {
                Some(spec) => Existing::Device(spec),
                None => Existing::Other(kind_name(&st)),
            },
        };
    Ok((missing, existing))
}

/// What happened to a directory `del` wanted to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirAction {
    /// It was empty and is gone.
    Removed,
    /// It holds something (the container's own files, another node): kept.
    NotEmpty,
    /// It is no longer there (or no longer a directory).
    Absent,
}

/// Removes directory DIR of the container if it is an empty directory
/// (`unlinkat(AT_REMOVEDIR)` on its name in its resolved parent: a symlink
/// planted there is never followed).
pub fn remove_dir_if_empty(root: Root<'_>, dir: &Path) -> Result<DirAction, NodeError> {
    let Some((parent, name)) = open_parent(root, dir)? else {
        return Ok(DirAction::Absent);
    };
    match unlinkat(&parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) => Ok(DirAction::Removed),
        Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) | Err(Errno::EBUSY) => Ok(DirAction::NotEmpty),
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(DirAction::Absent),
        Err(e) => Err(sys(root, "unlinkat", dir, e)),
    }
}

/// What is at DEST in the container (read-only: creates nothing).
pub fn inspect(root: Root<'_>, dest: &Path) -> Result<Existing, NodeError> {
    let Some((parent, name)) = open_parent(root, dest)? else {
        return Ok(Existing::Absent);
    };
    Ok(
        match lstat_at(parent.as_fd(), name).map_err(|e| sys(root, "fstatat", dest, e))? {
            None => Existing::Absent,
            Some(st) => match NodeSpec::from_stat(&st) {
                Some(spec) => Existing::Device(spec),
                None => Existing::Other(kind_name(&st)),
            },
        },
    )
}

/// Removes DEST from the container if it is a device node of `expected`'s
/// type and numbers; [`NodeAction::Absent`] if nothing is there; an error if
/// something else is. The removal goes to `journal`.
pub fn remove_node(
    root: Root<'_>,
    dest: &Path,
    expected: &NodeSpec,
    journal: &mut Journal,
) -> Result<NodeAction, NodeError> {
    let Some((parent, name)) = open_parent(root, dest)? else {
        return Ok(NodeAction::Absent);
    };
    let Some(st) = lstat_at(parent.as_fd(), name).map_err(|e| sys(root, "fstatat", dest, e))?
    else {
        return Ok(NodeAction::Absent);
    };
    let old = match NodeSpec::from_stat(&st) {
        Some(old) if old.same_device(expected) => old,
        Some(other) => {
            return Err(NodeError::Mismatch {
                dest: dest.to_path_buf(),
                found: other.device(),
                expected: expected.device(),
            })
        }
        None => {
            return Err(NodeError::Occupied {
                dest: dest.to_path_buf(),
                root: root.path.to_path_buf(),
                kind: kind_name(&st),
            })
        }
    };
    unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir)
        .map_err(|e| sys(root, "unlinkat", dest, e))?;
    journal.steps.push(Step::Removed {
        parent,
        name: name.to_os_string(),
        path: dest.to_path_buf(),
        old,
    });
    Ok(NodeAction::Removed)
}

/// Puts `old` back at DEST if DEST is still the device node `expected`
/// (a node `add` replaced); if nothing is there, makes `old` again. Any
/// other node is left alone ([`NodeAction::Unchanged`]). Changes go to
/// `journal`.
pub fn restore_node(
    root: Root<'_>,
    dest: &Path,
    expected: &NodeSpec,
    old: &NodeSpec,
    journal: &mut Journal,
) -> Result<NodeAction, NodeError> {
    let Some((parent, name)) = open_parent(root, dest)? else {
        return Ok(NodeAction::Unchanged);
    };
    match lstat_at(parent.as_fd(), name).map_err(|e| sys(root, "fstatat", dest, e))? {
        None => {
            make_node(parent.as_fd(), name, old).map_err(|(c, e)| sys(root, c, dest, e))?;
            journal.steps.push(Step::Node {
                parent,
                name: name.to_os_string(),
                path: dest.to_path_buf(),
            });
            Ok(NodeAction::Created)
        }
        Some(st) => match NodeSpec::from_stat(&st) {
            Some(now) if now.same_device(expected) => {
                replace_node(parent.as_fd(), name, old).map_err(|(c, e)| sys(root, c, dest, e))?;
                journal.steps.push(Step::Replaced {
                    parent,
                    name: name.to_os_string(),
                    path: dest.to_path_buf(),
                    old: now,
                });
                Ok(NodeAction::Replaced)
            }
            _ => Ok(NodeAction::Unchanged),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_must_be_absolute_and_normalised() {
        for ok in ["/dev/null", "/dev/a/b/c", "/x"] {
            check_dest(Path::new(ok)).unwrap();
        }
        for bad in [
            "dev/null",
            "../../etc/x",
            "/dev/../etc/x",
            "/dev/./x",
            "/",
            "/dev/x/..",
        ] {
            assert!(check_dest(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn splits_dest() {
        let (p, n) = split(Path::new("/dev/dri/card0"));
        assert_eq!(p, [OsStr::new("dev"), OsStr::new("dri")]);
        assert_eq!(n, "card0");
    }
}
