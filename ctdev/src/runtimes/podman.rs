//! Podman containers: found by ID prefix.
//!
//! Layouts: `libpod-<id>.scope` (systemd cgroup manager: under
//! `machine.slice`, a pod's `machine-libpod_pod_<pod>.slice`, or a user's
//! slices for rootless Podman) and `libpod_parent/…/libpod-<id>` (cgroupfs
//! manager). `libpod-conmon-<id>.scope` and `libpod_parent/conmon` hold
//! Podman's monitor, not the container, and are ignored.

use std::path::Path;

use super::{dir_name, id_matches, scope_id, Visit};

/// What the Podman resolver makes of one directory (`rel`, relative to the
/// cgroup2 root) when looking for IDs starting with `prefix`.
pub(crate) fn classify(rel: &Path, prefix: &str) -> Visit {
    let Some(dir) = dir_name(rel) else {
        return Visit::Descend;
    };
    if dir.starts_with("libpod-conmon-") {
        return Visit::Prune;
    }
    if let Some(id) = scope_id(dir, "libpod", prefix) {
        return Visit::Match(id.to_string());
    }
    if let Some(id) = dir.strip_prefix("libpod-") {
        let under_parent = rel
            .parent()
            .is_some_and(|p| p.components().any(|c| c.as_os_str() == "libpod_parent"));
        if under_parent && id_matches(id, prefix) {
            return Visit::Match(id.to_string());
        }
    }
    Visit::Descend
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{id, names, tree};
    use super::*;

    fn scan(root: &Path, prefix: &str) -> super::super::fixture::Found {
        super::super::fixture::scan(root, prefix, classify)
    }

    #[test]
    fn systemd_and_cgroupfs_layouts() {
        let (a, b, c) = (id("a1"), id("b1"), id("c1"));
        let t = tree(&[
            &format!("machine.slice/libpod-{a}.scope/container"),
            &format!("user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{b}.scope"),
            &format!("libpod_parent/libpod-{c}"),
            "libpod_parent/conmon",
        ]);
        assert_eq!(
            names(&t, scan(t.path(), "a")),
            [format!("{a}:machine.slice/libpod-{a}.scope")]
        );
        assert_eq!(names(&t, scan(t.path(), "b1")).len(), 1);
        assert_eq!(
            names(&t, scan(t.path(), "c")),
            [format!("{c}:libpod_parent/libpod-{c}")]
        );
    }

    #[test]
    fn conmon_scopes_are_ignored() {
        let a = id("a1");
        let t = tree(&[
            &format!("machine.slice/libpod-conmon-{a}.scope"),
            &format!("machine.slice/libpod-{a}.scope"),
        ]);
        assert_eq!(
            names(&t, scan(t.path(), "a1")),
            [format!("{a}:machine.slice/libpod-{a}.scope")]
        );
        let only_conmon = tree(&[&format!("machine.slice/libpod-conmon-{a}.scope")]);
        assert!(names(&only_conmon, scan(only_conmon.path(), "a")).is_empty());
    }

    #[test]
    fn ambiguity_and_no_match() {
        let (a, b) = (id("dd1"), id("dd2"));
        let t = tree(&[
            &format!("machine.slice/machine-libpod_pod_x.slice/libpod-{a}.scope"),
            &format!("machine.slice/machine-libpod_pod_x.slice/libpod-{b}.scope"),
            &format!("elsewhere/libpod-{a}"),
        ]);
        assert_eq!(names(&t, scan(t.path(), "dd")).len(), 2);
        assert!(names(&t, scan(t.path(), "de")).is_empty());
    }
}
