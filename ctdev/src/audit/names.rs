//! The cgroup each policy id was attached to, remembered so that `ctdev
//! list` can name the cgroup of a defunct entry (its cgroup was removed and
//! the kernel no longer knows its path).
//!
//! One small file per container, `cgroup-<policy id>`, holding the path
//! inside the hierarchy, in the same state directory as the grant records
//! (outside bpffs). Written after a successful attach, removed at detach.
//! The record is advisory: failing to write it only warns.

use std::fs;
use std::path::{Path, PathBuf};

use crate::runtimes::k8s::{PodContainer, PodMap};

fn file(dir: &Path, policy_id: u64) -> PathBuf {
    dir.join(format!("cgroup-{policy_id}"))
}

/// Remembers that `policy_id` is the container at `cgroup` (a path inside
/// the hierarchy).
pub(crate) fn record(dir: &Path, policy_id: u64, cgroup: &Path) {
    let path = file(dir, policy_id);
    let tmp = path.with_extension("tmp");
    let res = fs::create_dir_all(dir)
        .and_then(|()| fs::write(&tmp, cgroup.as_os_str().as_encoded_bytes()))
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = res {
        tracing::warn!("cannot record the cgroup name in {}: {e}", path.display());
    }
}

/// The cgroup `policy_id` was attached to, if it was recorded.
pub(crate) fn recorded(dir: &Path, policy_id: u64) -> Option<PathBuf> {
    let bytes = fs::read(file(dir, policy_id)).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// Forgets the record of `policy_id` (detach). Only the file: the
/// directory is the grant records' and goes with them, under the root lock
/// ([`crate::grants::Store::remove_dir_if_empty`]).
pub(crate) fn forget(dir: &Path, policy_id: u64) {
    let _ = fs::remove_file(file(dir, policy_id));
}

/// The pod container of policy `policy_id` (or of the container at
/// `cgroup`) in the NRI plugin's pod map.
pub(crate) fn pod_of(map: &PodMap, policy_id: u64, cgroup: Option<&Path>) -> Option<PodContainer> {
    map.containers
        .iter()
        .find(|p| p.policy_id != 0 && p.policy_id == policy_id)
        .or_else(|| cgroup.and_then(|c| map.by_cgroup(c)))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_read_forget() {
        let base = std::env::temp_dir().join(format!("ctdev-names-{}", std::process::id()));
        let dir = base.join("state");
        assert_eq!(recorded(&dir, 7), None);
        record(&dir, 7, Path::new("/lxc.payload.web"));
        assert_eq!(recorded(&dir, 7), Some(PathBuf::from("/lxc.payload.web")));
        record(&dir, 7, Path::new("/other"));
        assert_eq!(recorded(&dir, 7), Some(PathBuf::from("/other")));
        forget(&dir, 7);
        assert_eq!(recorded(&dir, 7), None);
        // Only the file: the directory is the grant records' (removed
        // under the root lock).
        assert!(!file(&dir, 7).exists());
        assert!(dir.exists());
        let _ = fs::remove_dir_all(&base);
    }
}
