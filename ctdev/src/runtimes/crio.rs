//! CRI-O containers: found by ID prefix.
//!
//! Layouts: `crio-<id>.scope` (systemd cgroup manager, under the pod's
//! `kubepods…pod<uid>.slice`) and `…/pod<uid>/crio-<id>` (cgroupfs
//! manager). `crio-conmon-<id>.scope` (and `crio-conmon-<id>`) hold CRI-O's
//! monitor and are ignored.

use std::path::Path;

use super::{dir_name, id_matches, parent_name, scope_id, Visit};

/// What the CRI-O resolver makes of one directory (`rel`, relative to the
/// cgroup2 root) when looking for IDs starting with `prefix`.
pub(crate) fn classify(rel: &Path, prefix: &str) -> Visit {
    let Some(dir) = dir_name(rel) else {
        return Visit::Descend;
    };
    if dir.starts_with("crio-conmon-") {
        return Visit::Prune;
    }
    if let Some(id) = scope_id(dir, "crio", prefix) {
        return Visit::Match(id.to_string());
    }
    if let Some(id) = dir.strip_prefix("crio-") {
        if parent_name(rel).is_some_and(|p| p.starts_with("pod")) && id_matches(id, prefix) {
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

    const POD: &str = "pod8d3b6c2e-1f4a-4b7e-9c1d-2a3b4c5d6e7f";

    #[test]
    fn systemd_and_cgroupfs_layouts() {
        let (a, b) = (id("a1"), id("b1"));
        let slice = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8d3b.slice";
        let t = tree(&[
            &format!("{slice}/crio-{a}.scope/container"),
            &format!("kubepods/besteffort/{POD}/crio-{b}"),
        ]);
        assert_eq!(
            names(&t, scan(t.path(), "a")),
            [format!("{a}:{slice}/crio-{a}.scope")]
        );
        assert_eq!(
            names(&t, scan(t.path(), "b1")),
            [format!("{b}:kubepods/besteffort/{POD}/crio-{b}")]
        );
    }

    #[test]
    fn conmon_scopes_are_ignored() {
        let a = id("a1");
        let t = tree(&[
            &format!("kubepods.slice/crio-conmon-{a}.scope"),
            &format!("kubepods/{POD}/crio-conmon-{a}"),
        ]);
        assert!(names(&t, scan(t.path(), "a")).is_empty());
    }

    #[test]
    fn ambiguity_and_no_match() {
        let (a, b) = (id("ff1"), id("ff2"));
        let t = tree(&[
            &format!("kubepods.slice/crio-{a}.scope"),
            &format!("kubepods/{POD}/crio-{b}"),
            &format!("elsewhere/crio-{b}"),
        ]);
        assert_eq!(names(&t, scan(t.path(), "ff")).len(), 2);
        assert!(names(&t, scan(t.path(), "f0")).is_empty());
    }
}
