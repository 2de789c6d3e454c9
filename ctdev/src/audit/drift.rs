//! Drift between a container's /dev and its ctdev policy: device nodes that
//! no entry lets the container use, and entries for devices the container
//! has no node for.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ctdev_common::{evaluate, PolicyKey, ACCESS_MKNOD};
use serde::Serialize;

use crate::rule::{DeviceType, Rule};

/// A device node seen in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// Path inside the container.
    pub path: PathBuf,
    /// `b` or `c` and numbers, as a rule without access (`c 1:3`).
    pub device: String,
}

/// What differs between a container's /dev and its policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The container's init process whose /dev was read.
    pub init_pid: Option<i32>,
    /// Nodes no entry allows reading or writing.
    pub nodes_without_rule: Vec<NodeView>,
    /// Exact entries allowing read or write of a device with no node in /dev.
    pub rules_without_node: Vec<String>,
    /// Why /dev could not be read, if it could not.
    pub error: Option<String>,
}

/// At most this many nodes are reported.
const MAX_NODES: usize = 100_000;
/// At most this many directories are read.
const MAX_DIRS: usize = 10_000;
/// Directories deeper than this below /dev are not read.
const MAX_DEPTH: usize = 16;

/// Device nodes under `dev`, a directory below the container root `root`
/// (`/proc/PID/root`), shown as absolute container paths.
///
/// The walk never leaves the container: `dev` is opened with
/// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` relative to an fd of
/// `root` (a planted `/dev -> /` symlink resolves to the container's own
/// root, never the host's), every step below goes through directory fds
/// with `O_NOFOLLOW` and `fstatat(AT_SYMLINK_NOFOLLOW)`, only directories
/// on the same filesystem as `dev` are entered, and the walk is bounded
/// in nodes, directories and depth.
pub fn device_nodes(
    root: &Path,
    dev: &Path,
) -> std::io::Result<Vec<(PathBuf, DeviceType, u32, u32)>> {
    use nix::fcntl::{open, openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
    use std::os::fd::AsFd;

    let rel = dev.strip_prefix(root).unwrap_or(dev);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let root_fd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let top = openat2(
        root_fd.as_fd(),
        rel,
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )?;
    let fs_dev = fstat(top.as_fd())?.st_dev;
    let shown = Path::new("/").join(rel);
    let mut out = Vec::new();
    let mut dirs = 0usize;
    let mut stack = vec![(top, shown, 0usize)];
    while let Some((fd, path, depth)) = stack.pop() {
        dirs += 1;
        if dirs > MAX_DIRS {
            tracing::warn!(
                "drift: stopped after {MAX_DIRS} directories under {}",
                dev.display()
            );
            break;
        }
        let Ok(mut dir) = nix::dir::Dir::from_fd(fd) else {
            continue;
        };
        let dir_fd = dir.as_fd().try_clone_to_owned()?;
        let names: Vec<std::ffi::OsString> = dir
            .iter()
            .flatten()
            .map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect();
        for name in names {
            let Ok(st) = fstatat(
                dir_fd.as_fd(),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            let dev_type = if kind == SFlag::S_IFCHR {
                DeviceType::Char
            } else if kind == SFlag::S_IFBLK {
                DeviceType::Block
            } else {
                if kind == SFlag::S_IFDIR && st.st_dev == fs_dev && depth < MAX_DEPTH {
                    if let Ok(sub) = openat(
                        dir_fd.as_fd(),
                        name.as_os_str(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    ) {
                        stack.push((sub, path.join(&name), depth + 1));
                    }
                }
                continue;
            };
            out.push((
                path.join(&name),
                dev_type,
                libc::major(st.st_rdev),
                libc::minor(st.st_rdev),
            ));
            if out.len() >= MAX_NODES {
                out.sort();
                return Ok(out);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Compares the nodes of a container with its entries.
pub fn compare(
    policy_id: u64,
    entries: &BTreeMap<PolicyKey, u32>,
    nodes: &[(PathBuf, DeviceType, u32, u32)],
) -> (Vec<NodeView>, Vec<String>) {
    let usable = |t: u32, ma: u32, mi: u32| {
        let v = evaluate(policy_id, t, ma, mi, 0, |k| entries.get(k).copied());
        v.matched.is_some_and(|(_, bits)| bits & !ACCESS_MKNOD != 0)
    };
    let mut without_rule = Vec::new();
    for (path, ty, ma, mi) in nodes {
        let Some(&t) = ty.kernel_types().first() else {
            continue;
        };
        if !usable(t, *ma, *mi) {
            without_rule.push(NodeView {
                path: path.clone(),
                device: format!("{} {ma}:{mi}", ty.letter()),
            });
        }
    }
    let mut without_node = Vec::new();
    for (key, bits) in entries {
        if key.policy_id != policy_id || bits & !ACCESS_MKNOD == 0 {
            continue;
        }
        let Some(rule) = Rule::from_entry(key, *bits) else {
            continue;
        };
        let (Some(ma), Some(mi)) = (rule.major.exact(), rule.minor.exact()) else {
            continue;
        };
        if !nodes
            .iter()
            .any(|(_, t, a, b)| *t == rule.dev_type && *a == ma && *b == mi)
        {
            without_node.push(rule.to_string());
        }
    }
    (without_rule, without_node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdev_common::{ACCESS_READ, DEV_CHAR, WILDCARD};

    #[test]
    fn finds_both_kinds_of_drift() {
        let entries: BTreeMap<PolicyKey, u32> = [
            (PolicyKey::new(1, DEV_CHAR, 1, 3), ACCESS_READ),
            (PolicyKey::new(1, DEV_CHAR, 10, 200), ACCESS_READ),
            (PolicyKey::new(1, DEV_CHAR, 136, WILDCARD), ACCESS_READ),
            (
                PolicyKey::new(1, DEV_CHAR, WILDCARD, WILDCARD),
                ACCESS_MKNOD,
            ),
        ]
        .into_iter()
        .collect();
        let nodes = vec![
            (PathBuf::from("/dev/null"), DeviceType::Char, 1, 3),
            (PathBuf::from("/dev/zero"), DeviceType::Char, 1, 5),
            (PathBuf::from("/dev/pts/0"), DeviceType::Char, 136, 0),
        ];
        let (no_rule, no_node) = compare(1, &entries, &nodes);
        assert_eq!(
            no_rule,
            vec![NodeView {
                path: "/dev/zero".into(),
                device: "c 1:5".into()
            }]
        );
        assert_eq!(no_node, vec!["c 10:200 r".to_string()]);
    }

    #[test]
    fn reads_nodes_without_following_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("dev");
        std::fs::create_dir_all(dev.join("sub")).unwrap();
        nix::sys::stat::mknod(
            &dev.join("sub/n"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev", dev.join("host")).unwrap();
        std::os::unix::fs::symlink("/", dev.join("up")).unwrap();
        let nodes = device_nodes(t.path(), &dev).unwrap();
        assert_eq!(
            nodes,
            vec![(PathBuf::from("/dev/sub/n"), DeviceType::Char, 1, 3)]
        );
    }

    /// Issue #10 item 8: a container whose `/dev` is a symlink to `/` must
    /// not make the walk read the host: it resolves inside the container
    /// root.
    #[test]
    fn a_planted_dev_symlink_stays_in_the_container_root() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        nix::sys::stat::mknod(
            &t.path().join("etc/n"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 5),
        )
        .unwrap();
        std::os::unix::fs::symlink("/", t.path().join("dev")).unwrap();
        let nodes = device_nodes(t.path(), &t.path().join("dev")).unwrap();
        // Only the container root's own node, never the host's /dev/null.
        assert_eq!(
            nodes,
            vec![(PathBuf::from("/dev/etc/n"), DeviceType::Char, 1, 5)]
        );
    }
}
