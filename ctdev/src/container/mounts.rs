//! Bind mounts into a running container's mount namespace, with the
//! kernel's mount API.
//!
//! **How.** `open_tree(OPEN_TREE_CLONE [| AT_RECURSIVE])` clones the host
//! source into a detached mount tree that holds only that subtree (nothing
//! above the source is reachable through it); `mount_setattr` sets
//! `ro`/`nosuid`/`nodev`/`noexec`/atime and the propagation on the detached
//! tree before anyone in the container can see it; a short-lived thread
//! that unshared its `fs` state then `setns`-es into the container's mount
//! namespace and `move_mount`s the tree onto the target. The target is
//! resolved from the container's root fd with `openat2(RESOLVE_IN_ROOT)`
//! (as [`super::nodes`] does), never through a host path, and its last
//! component is never followed.
//!
//! **Undo.** Missing directories (and, for a file source, the empty file
//! mounted over) are created and recorded; [`unbind`] lazily unmounts the
//! mount — only if the mount at the target still has the mount id recorded
//! at [`bind`] time — and removes what was created, deepest first.
//!
//! **Not done.** Shared propagation (`shared`/`rshared`) would make mounts
//! made in the container appear on the host: refused by
//! [`BindOptions::parse`]. Non-bind mounts (`tmpfs`, ...) are refused too.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use serde::{Deserialize, Serialize};

use super::process::InitProcess;
use nix::fcntl::AtFlags;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x01;
const MOUNT_ATTR_NOSUID: u64 = 0x02;
const MOUNT_ATTR_NODEV: u64 = 0x04;
const MOUNT_ATTR_NOEXEC: u64 = 0x08;
const MOUNT_ATTR__ATIME: u64 = 0x70;
const MOUNT_ATTR_RELATIME: u64 = 0x00;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Debug, Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Why a mount could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A system call failed.
    #[error("{call} for {what}: {errno}")]
    Sys {
        call: &'static str,
        /// The path (host source or container target) it was for.
        what: String,
        errno: Errno,
    },
    /// Something unexpected is at the target.
    #[error("cannot mount {source_path} at {dest} in the container: {reason}")]
    Target {
        /// Host source.
        source_path: PathBuf,
        /// Container target.
        dest: PathBuf,
        /// What is there.
        reason: String,
    },
    /// The mount at the target is not the one ctdev made.
    #[error("the mount at {dest} in the container is not the one ctdev made (mount id {found:?}, recorded {recorded}); left alone")]
    NotOurs {
        /// Container target.
        dest: PathBuf,
        /// Mount id found there (none: no mount root there).
        found: Option<u64>,
        /// Mount id recorded by `bind`.
        recorded: u64,
    },
}

fn sys(call: &'static str, what: &Path, errno: Errno) -> MountError {
    MountError::Sys {
        call,
        what: what.display().to_string(),
        errno,
    }
}

/// Propagation of the new mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// No propagation (the default).
    Private,
    /// Host mounts under the source appear in the container, not back.
    Slave,
    /// Cannot be bind-mounted further.
    Unbindable,
}

/// Validated options of a bind mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindOptions {
    /// `rbind`: submounts of the source come along.
    pub recursive: bool,
    /// `MOUNT_ATTR_*` bits to set.
    pub attr_set: u64,
    /// `MOUNT_ATTR_*` bits to clear.
    pub attr_clr: u64,
    /// Propagation.
    pub propagation: Propagation,
}

impl BindOptions {
    /// Validates an OCI/CDI mount's type and options; the error says what
    /// cannot be done on a running container.
    pub fn parse<S: AsRef<str>>(fs_type: Option<&str>, options: &[S]) -> Result<Self, String> {
        let mut bind = matches!(fs_type, Some("bind"));
        if let Some(t) = fs_type.filter(|t| !matches!(*t, "" | "bind" | "none")) {
            return Err(format!(
                "mount type {t:?} is not a bind mount (only bind mounts are applied to running containers)"
            ));
        }
        let mut o = BindOptions {
            recursive: false,
            attr_set: 0,
            attr_clr: 0,
            propagation: Propagation::Private,
        };
        let set = |o: &mut BindOptions, bit: u64, on: bool| {
            if on {
                o.attr_set |= bit;
                o.attr_clr &= !bit;
            } else {
                o.attr_clr |= bit;
                o.attr_set &= !bit;
            }
        };
        for opt in options {
            match opt.as_ref() {
                "bind" => bind = true,
                "rbind" => {
                    bind = true;
                    o.recursive = true;
                }
                "ro" => set(&mut o, MOUNT_ATTR_RDONLY, true),
                "rw" => set(&mut o, MOUNT_ATTR_RDONLY, false),
                "nosuid" => set(&mut o, MOUNT_ATTR_NOSUID, true),
                "suid" => set(&mut o, MOUNT_ATTR_NOSUID, false),
                "nodev" => set(&mut o, MOUNT_ATTR_NODEV, true),
                "dev" => set(&mut o, MOUNT_ATTR_NODEV, false),
                "noexec" => set(&mut o, MOUNT_ATTR_NOEXEC, true),
                "exec" => set(&mut o, MOUNT_ATTR_NOEXEC, false),
                "nodiratime" => set(&mut o, MOUNT_ATTR_NODIRATIME, true),
                "diratime" => set(&mut o, MOUNT_ATTR_NODIRATIME, false),
                a @ ("relatime" | "noatime" | "strictatime") => {
                    o.attr_clr |= MOUNT_ATTR__ATIME;
                    o.attr_set &= !MOUNT_ATTR__ATIME;
                    o.attr_set |= match a {
                        "noatime" => MOUNT_ATTR_NOATIME,
                        "strictatime" => MOUNT_ATTR_STRICTATIME,
                        _ => MOUNT_ATTR_RELATIME,
                    };
                }
                "private" | "rprivate" => o.propagation = Propagation::Private,
                "slave" | "rslave" => o.propagation = Propagation::Slave,
                "unbindable" | "runbindable" => o.propagation = Propagation::Unbindable,
                "shared" | "rshared" => {
                    return Err(format!(
                        "mount option {:?} (mounts made in the container would reach the host)",
                        opt.as_ref()
                    ))
                }
                "defaults" | "" => {}
                other => return Err(format!("mount option {other:?} is not supported")),
            }
        }
        if !bind {
            return Err("a mount without bind/rbind (and without type bind) is not a bind mount; only bind mounts are applied to running containers".into());
        }
        Ok(o)
    }

    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.attr_set & MOUNT_ATTR_RDONLY != 0
    }
}

/// A mount made by [`bind`], enough for [`unbind`] to take it away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mounted {
    /// Host source.
    pub source: PathBuf,
    /// Target in the container.
    pub dest: PathBuf,
    /// The new mount's id (statx `STATX_MNT_ID`).
    pub mnt_id: u64,
    /// Paths created for the target, outermost first.
    pub created: Vec<PathBuf>,
    /// Whether it is read-only.
    pub read_only: bool,
}

fn components(dest: &Path) -> Vec<&OsStr> {
    dest.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn resolve(root: BorrowedFd<'_>, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    openat2(
        root,
        path,
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

fn mnt_id(fd: BorrowedFd<'_>, what: &Path) -> Result<u64, MountError> {
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on a valid fd with an empty, NUL-terminated path and
    // AT_EMPTY_PATH; `stx` is a valid, writable statx buffer.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    Errno::result(ret).map_err(|e| sys("statx", what, e))?;
    Ok(stx.stx_mnt_id)
}

fn open_mntns(init: &InitProcess) -> Result<OwnedFd, MountError> {
    let path = PathBuf::from(format!("/proc/{}/ns/mnt", init.pid()));
    let fd = nix::fcntl::open(&path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| sys("open", &path, e))?;
    init.check_alive()
        .map_err(|_| sys("open", &path, Errno::ESRCH))?;
    Ok(fd)
}

/// Runs `f` on a fresh thread inside the mount namespace `mntns` (the
/// thread first unshares its `fs` state, as `setns(CLONE_NEWNS)` requires).
fn in_mntns<T: Send>(
    mntns: BorrowedFd<'_>,
    what: &Path,
    f: impl FnOnce() -> Result<T, MountError> + Send,
) -> Result<T, MountError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_FS).map_err(|e| sys("unshare(CLONE_FS)", what, e))?;
            setns(mntns, CloneFlags::CLONE_NEWNS).map_err(|e| sys("setns(mnt)", what, e))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(sys("thread", what, Errno::EIO)))
    })
}

/// Bind-mounts host `source` at `dest` in the container of `init` with
/// `opts`; creates missing directories (and an empty file for a file
/// source) owned by `owner`. On failure whatever was created is removed.
pub(crate) fn bind(
    init: &InitProcess,
    source: &Path,
    dest: &Path,
    opts: &BindOptions,
    owner: (u32, u32),
) -> Result<Mounted, MountError> {
    crate::container::nodes::check_dest(dest).map_err(|e| MountError::Target {
        source_path: source.to_path_buf(),
        dest: dest.to_path_buf(),
        reason: e.to_string(),
    })?;
    // 1. The detached clone of the source, with its attributes.
    let c_source = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| sys("open_tree", source, Errno::EINVAL))?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if opts.recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree with AT_FDCWD, a NUL-terminated path and valid flags;
    // it returns a new fd (or -1) that we own at once.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_source.as_ptr(),
            flags,
        )
    };
    let tree_fd = Errno::result(ret).map_err(|e| sys("open_tree", source, e))?;
    // SAFETY: `tree_fd` is a fresh fd returned by open_tree, owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree_fd as i32) };
    let attr = MountAttr {
        attr_set: opts.attr_set,
        attr_clr: opts.attr_clr,
        propagation: match opts.propagation {
            Propagation::Private => libc::MS_PRIVATE,
            Propagation::Slave => libc::MS_SLAVE,
            Propagation::Unbindable => libc::MS_UNBINDABLE,
        },
        userns_fd: 0,
    };
    let mut at = libc::AT_EMPTY_PATH as libc::c_uint;
    if opts.recursive {
        at |= AT_RECURSIVE;
    }
    // SAFETY: mount_setattr on the detached tree fd with an empty path,
    // AT_EMPTY_PATH, and a valid mount_attr of its declared size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(ret).map_err(|e| sys("mount_setattr", source, e))?;
    let source_is_dir = fstat(&tree)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
        .map_err(|e| sys("fstat", source, e))?;

    // 2. The target, created if missing.
    let mntns = open_mntns(init)?;
    let mut created = Vec::new();
    let target = match make_target(
        init.root(),
        source,
        dest,
        source_is_dir,
        owner,
        &mut created,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            remove_created(init.root(), &created);
            return Err(e);
        }
    };

    // 3. Attach it inside the container's namespace.
    let result = in_mntns(mntns.as_fd(), dest, || {
        // SAFETY: move_mount of the detached tree fd onto the target fd,
        // both with empty paths and the matching *_EMPTY_PATH flags.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        Errno::result(ret)
            .map(|_| ())
            .map_err(|e| sys("move_mount", dest, e))
    })
    .and_then(|()| {
        let fd = resolve(init.root(), dest, OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .map_err(|e| sys("openat2", dest, e))?;
        mnt_id(fd.as_fd(), dest)
    });
    match result {
        Ok(id) => {
            tracing::info!(source = %source.display(), dest = %dest.display(), mnt_id = id, "bind mount added");
            Ok(Mounted {
                source: source.to_path_buf(),
                dest: dest.to_path_buf(),
                mnt_id: id,
                created,
                read_only: opts.read_only(),
            })
        }
        Err(e) => {
            remove_created(init.root(), &created);
            Err(e)
        }
    }
}

/// Opens (creating if missing) the mount target; records what was created.
fn make_target(
    root: BorrowedFd<'_>,
    source: &Path,
    dest: &Path,
    dir: bool,
    (uid, gid): (u32, u32),
    created: &mut Vec<PathBuf>,
) -> Result<OwnedFd, MountError> {
    let target_err = |reason: String| MountError::Target {
        source_path: source.to_path_buf(),
        dest: dest.to_path_buf(),
        reason,
    };
    let parts = components(dest);
    let Some((last, parents)) = parts.split_last() else {
        return Err(target_err("names no file".into()));
    };
    let mut prefix = PathBuf::from("/");
    let mut cur = resolve(root, &prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)
        .map_err(|e| sys("openat2", &prefix, e))?;
    let mkdir = |cur: &OwnedFd, name: &OsStr, path: &Path| -> Result<(), MountError> {
        mkdirat(cur, name, Mode::from_bits_truncate(0o755)).map_err(|e| sys("mkdirat", path, e))?;
        fchownat(
            cur,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| sys("fchownat", path, e))
    };
    for comp in parents {
        prefix.push(comp);
        match resolve(root, &prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => cur = fd,
            Err(Errno::ENOENT) => {
                mkdir(&cur, comp, &prefix)?;
                created.push(prefix.clone());
                cur = resolve(root, &prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|e| sys("openat2", &prefix, e))?;
            }
            Err(e) => return Err(sys("openat2", &prefix, e)),
        }
    }
    match fstatat(&cur, *last, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            let ok = if dir {
                fmt == SFlag::S_IFDIR
            } else {
                fmt != SFlag::S_IFDIR && fmt != SFlag::S_IFLNK
            };
            if !ok {
                return Err(target_err(format!(
                    "a {} is there and the source is a {}",
                    if fmt == SFlag::S_IFLNK {
                        "symlink"
                    } else if fmt == SFlag::S_IFDIR {
                        "directory"
                    } else {
                        "file"
                    },
                    if dir { "directory" } else { "file" }
                )));
            }
        }
        Err(Errno::ENOENT) => {
            if dir {
                mkdir(&cur, last, dest)?;
            } else {
                let fd = openat(
                    &cur,
                    *last,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .map_err(|e| sys("openat(O_CREAT)", dest, e))?;
                drop(fd);
                fchownat(
                    &cur,
                    *last,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| sys("fchownat", dest, e))?;
            }
            created.push(dest.to_path_buf());
        }
        Err(e) => return Err(sys("fstatat", dest, e)),
    }
    openat(
        &cur,
        *last,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys("openat", dest, e))
}

/// Removes created paths, deepest first (best effort; failures returned).
fn remove_created(root: BorrowedFd<'_>, created: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for path in created.iter().rev() {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let Some(name) = path.file_name() else {
            continue;
        };
        let res = resolve(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY).and_then(|dir| {
            let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            unlinkat(
                &dir,
                name,
                if is_dir {
                    UnlinkatFlags::RemoveDir
                } else {
                    UnlinkatFlags::NoRemoveDir
                },
            )
        });
        match res {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove what ctdev created: {e}");
                failed.push(format!("cannot remove {}: {e}", path.display()));
            }
        }
    }
    failed
}

/// Takes a mount made by [`bind`] away again: lazily unmounts it (only if
/// the mount at its target is still the one recorded) and removes the
/// paths created for it. Returns what could not be removed.
pub(crate) fn unbind(init: &InitProcess, m: &Mounted) -> Result<Vec<String>, MountError> {
    let fd = match resolve(init.root(), &m.dest, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
        Ok(fd) => Some(fd),
        Err(Errno::ENOENT) => None,
        Err(e) => return Err(sys("openat2", &m.dest, e)),
    };
    if let Some(fd) = fd {
        let found = mnt_id(fd.as_fd(), &m.dest)?;
        if found == m.mnt_id {
            let mntns = open_mntns(init)?;
            in_mntns(mntns.as_fd(), &m.dest, || {
                nix::unistd::fchdir(&fd).map_err(|e| sys("fchdir", &m.dest, e))?;
                nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| sys("umount2", &m.dest, e))
            })?;
            tracing::info!(dest = %m.dest.display(), mnt_id = m.mnt_id, "bind mount removed");
        } else {
            // Not mounted any more (or something else is there): only
            // remove what we created if nothing is mounted over it.
            let parent_id = m
                .dest
                .parent()
                .map(|p| resolve(init.root(), p, OFlag::O_PATH | OFlag::O_DIRECTORY))
                .transpose()
                .map_err(|e| sys("openat2", &m.dest, e))?
                .map(|p| mnt_id(p.as_fd(), &m.dest))
                .transpose()?;
            if parent_id != Some(found) {
                return Err(MountError::NotOurs {
                    dest: m.dest.clone(),
                    found: Some(found),
                    recorded: m.mnt_id,
                });
            }
        }
    }
    Ok(remove_created(init.root(), &m.created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let o = BindOptions::parse(None, &["rbind", "ro", "nosuid", "nodev"]).unwrap();
        assert!(o.recursive && o.read_only());
        assert_eq!(
            o.attr_set,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        );
        let o = BindOptions::parse(Some("bind"), &["ro", "rw"]).unwrap();
        assert!(!o.recursive && !o.read_only());
        assert_eq!(o.attr_clr, MOUNT_ATTR_RDONLY);
        let o = BindOptions::parse(Some("none"), &["bind", "noatime", "rslave"]).unwrap();
        assert_eq!(o.attr_set, MOUNT_ATTR_NOATIME);
        assert_eq!(o.attr_clr, MOUNT_ATTR__ATIME);
        assert_eq!(o.propagation, Propagation::Slave);
        for (t, opts) in [
            (Some("tmpfs"), vec!["bind"]),
            (None, vec!["ro"]),
            (None, vec!["bind", "rshared"]),
            (None, vec!["bind", "mode=0755"]),
        ] {
            assert!(BindOptions::parse(t, &opts).is_err(), "{t:?} {opts:?}");
        }
    }
}
