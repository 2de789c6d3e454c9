//! Drift between a container's /dev and its ctdev policy: device nodes that
//! no entry lets the container use, and entries for devices the container
//! has no node for.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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

/// Device nodes under `dev` (not following symlinks), paths made relative
/// to `root` and shown as absolute container paths. Bounded in count.
pub fn device_nodes(
    root: &Path,
    dev: &Path,
) -> std::io::Result<Vec<(PathBuf, DeviceType, u32, u32)>> {
    const MAX_NODES: usize = 100_000;
    let mut out = Vec::new();
    let mut stack = vec![dev.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if dir == dev => return Err(e),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let ft = meta.file_type();
            let dev_type = if ft.is_char_device() {
                DeviceType::Char
            } else if ft.is_block_device() {
                DeviceType::Block
            } else {
                if ft.is_dir() {
                    stack.push(entry.path());
                }
                continue;
            };
            let inside =
                Path::new("/").join(entry.path().strip_prefix(root).unwrap_or(&entry.path()));
            out.push((
                inside,
                dev_type,
                libc::major(meta.rdev()),
                libc::minor(meta.rdev()),
            ));
            if out.len() >= MAX_NODES {
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
        let nodes = device_nodes(t.path(), &dev).unwrap();
        assert_eq!(
            nodes,
            vec![(PathBuf::from("/dev/sub/n"), DeviceType::Char, 1, 3)]
        );
    }
}
