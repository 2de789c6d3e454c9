//! udev's names inside a container: symlinks such as
//! `/dev/serial/by-id/usb-…-if00-port0 -> ../../ttyUSB0`.
//!
//! Same path safety as [`super::nodes`]: the link's directory is resolved
//! from the container root's fd with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` (missing directories made one by one, relative to
//! their resolved parent), the link itself is made with `symlinkat` relative
//! to that fd and never followed. A link is relative to its own directory,
//! so it points at the node inside the container whatever the container's
//! root is on the host. Only symlinks are ever replaced or removed, and only
//! removed when they still point where ctdev made them point.

use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::readlinkat;
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use serde::Serialize;

use super::nodes::{
    check_dest, kind_name, lstat_at, mkdir_p, resolve_dir, split, sys, Journal, NodeError, Root,
};

/// What happened to one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkAction {
    /// Made.
    Created,
    /// Already there, pointing at the node.
    Unchanged,
    /// A symlink pointing elsewhere was replaced.
    Replaced,
    /// Removed.
    Removed,
    /// Nothing there (or something ctdev did not make: left alone).
    Absent,
}

/// The target of a symlink at `link` that points at `node`, relative to
/// the link's directory (`/dev/serial/by-id/x`, `/dev/ttyUSB0` →
/// `../../ttyUSB0`). Both paths are absolute and normalised.
pub(crate) fn relative_target(link: &Path, node: &Path) -> PathBuf {
    let dir: Vec<Component<'_>> = link
        .parent()
        .unwrap_or(Path::new("/"))
        .components()
        .collect();
    let to: Vec<Component<'_>> = node.components().collect();
    let common = dir.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..dir.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Makes `link` in the container a symlink to the node at `node` (both
/// container paths). A symlink pointing elsewhere is replaced (a re-plugged
/// device's name moves to its new node); anything else at `link` is refused.
pub(crate) fn ensure_link(
    root: Root<'_>,
    link: &Path,
    node: &Path,
) -> Result<LinkAction, NodeError> {
    check_dest(link)?;
    check_dest(node)?;
    let target = relative_target(link, node);
    let (parents, name) = split(link);
    // New directories belong to whoever owns the container's root (its
    // root user, mapped).
    let st = fstat(root.fd).map_err(|e| sys(root, "fstat", Path::new("/"), e))?;
    let mut journal = Journal::new();
    let parent = mkdir_p(root, &parents, st.st_uid, st.st_gid, &mut journal)?;
    let existing = lstat_at(parent.as_fd(), name).map_err(|e| sys(root, "fstatat", link, e))?;
    let action = match existing {
        None => LinkAction::Created,
        Some(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            let now = readlinkat(&parent, name).map_err(|e| sys(root, "readlinkat", link, e))?;
            if Path::new(&now) == target {
                return Ok(LinkAction::Unchanged);
            }
            unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| sys(root, "unlinkat", link, e))?;
            LinkAction::Replaced
        }
        Some(st) => {
            return Err(NodeError::Occupied {
                dest: link.to_path_buf(),
                root: root.path.to_path_buf(),
                kind: kind_name(&st),
            })
        }
    };
    if let Err(e) = symlinkat(&target, &parent, name) {
        // Directories made for a link that could not be made go again.
        journal.rollback();
        return Err(sys(root, "symlinkat", link, e));
    }
    Ok(action)
}

/// Removes `link` from the container if it is a symlink to `node` (as
/// [`ensure_link`] made it); anything else is left alone.
pub(crate) fn remove_link(
    root: Root<'_>,
    link: &Path,
    node: &Path,
) -> Result<LinkAction, NodeError> {
    check_dest(link)?;
    let target = relative_target(link, node);
    let parent_path = link.parent().unwrap_or(Path::new("/"));
    let (_, name) = split(link);
    let parent = match resolve_dir(root, parent_path) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(LinkAction::Absent),
        Err(e) => return Err(sys(root, "openat2", parent_path, e)),
    };
    match lstat_at(parent.as_fd(), name).map_err(|e| sys(root, "fstatat", link, e))? {
        Some(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {}
        _ => return Ok(LinkAction::Absent),
    }
    let now = readlinkat(&parent, name).map_err(|e| sys(root, "readlinkat", link, e))?;
    if Path::new(&now) != target {
        return Ok(LinkAction::Absent);
    }
    unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir)
        .map_err(|e| sys(root, "unlinkat", link, e))?;
    Ok(LinkAction::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn targets_are_relative_to_the_link() {
        let t = |l: &str, n: &str| relative_target(Path::new(l), Path::new(n));
        assert_eq!(
            t("/dev/serial/by-id/x", "/dev/ttyUSB0"),
            Path::new("../../ttyUSB0")
        );
        assert_eq!(t("/dev/x", "/dev/ttyUSB0"), Path::new("ttyUSB0"));
        assert_eq!(
            t("/dev/disk/by-id/a", "/dev/hot/loop9"),
            Path::new("../../hot/loop9")
        );
        assert_eq!(t("/x", "/dev/a/b"), Path::new("dev/a/b"));
    }

    fn open_root(dir: &Path) -> OwnedFd {
        nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn links_stay_inside_the_root_and_only_ours_go() {
        let t = tempfile::tempdir().unwrap();
        let fd = open_root(t.path());
        let root = Root {
            fd: fd.as_fd(),
            path: t.path(),
        };
        let link = Path::new("/dev/serial/by-id/usb-x");
        let node = Path::new("/dev/ttyUSB0");
        assert_eq!(ensure_link(root, link, node).unwrap(), LinkAction::Created);
        let on_disk = t.path().join("dev/serial/by-id/usb-x");
        assert_eq!(
            std::fs::read_link(&on_disk).unwrap(),
            Path::new("../../ttyUSB0")
        );
        assert_eq!(
            ensure_link(root, link, node).unwrap(),
            LinkAction::Unchanged
        );
        // Re-plugged at another node: the name moves.
        let node2 = Path::new("/dev/ttyUSB1");
        assert_eq!(
            ensure_link(root, link, node2).unwrap(),
            LinkAction::Replaced
        );
        // Removing for the old node leaves the new link alone.
        assert_eq!(remove_link(root, link, node).unwrap(), LinkAction::Absent);
        assert!(on_disk.symlink_metadata().is_ok());
        assert_eq!(remove_link(root, link, node2).unwrap(), LinkAction::Removed);
        assert!(on_disk.symlink_metadata().is_err());
        // A file at the link's place is refused and kept.
        std::fs::write(t.path().join("dev/serial/by-id/file"), "x").unwrap();
        assert!(ensure_link(root, Path::new("/dev/serial/by-id/file"), node).is_err());
        // A planted absolute symlink directory resolves inside the root.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("dev/evil")).unwrap();
        let _ = ensure_link(root, Path::new("/dev/evil/x"), node);
        assert!(
            !outside.path().join("x").exists(),
            "never written outside the root"
        );
        assert!(ensure_link(root, Path::new("/dev/../x"), node).is_err());
    }
}
