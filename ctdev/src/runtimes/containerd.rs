//! containerd (CRI) containers: found by ID prefix.
//!
//! Layouts: `cri-containerd-<id>.scope` (systemd cgroup driver, under the
//! `kubepods…pod<uid>.slice` of its pod) and `kubepods/…/pod<uid>/<id>`
//! (cgroupfs driver: a 64-hex-digit directory directly under a pod
//! directory). Plain containerd namespaces (`<namespace>/<id>`) are not
//! recognised: nothing in such a path says it is containerd's.

use std::path::{Component, Path};

use super::{dir_name, id_matches, is_full_id, parent_name, scope_id, Visit};

/// What the containerd resolver makes of one directory (`rel`, relative to
/// the cgroup2 root) when looking for IDs starting with `prefix`.
pub(crate) fn classify(rel: &Path, prefix: &str) -> Visit {
    let Some(dir) = dir_name(rel) else {
        return Visit::Descend;
    };
    if let Some(id) = scope_id(dir, "cri-containerd", prefix) {
        return Visit::Match(id.to_string());
    }
    if is_full_id(dir) && in_pod(rel) {
        if id_matches(dir, prefix) {
            return Visit::Match(dir.to_string());
        }
        return Visit::Prune;
    }
    Visit::Descend
}

/// Whether `rel`'s parent is a pod cgroup (`pod<uid>`) below `kubepods…`.
pub(crate) fn in_pod(rel: &Path) -> bool {
    let Some(parent) = parent_name(rel) else {
        return false;
    };
    parent.starts_with("pod")
        && rel.components().any(|c| match c {
            Component::Normal(n) => n.to_str().is_some_and(|s| s.starts_with("kubepods")),
            _ => false,
        })
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
        let (a, b, c) = (id("a1"), id("b1"), id("c1"));
        let t = tree(&[
            &format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8d3b.slice/cri-containerd-{a}.scope"
            ),
            &format!("kubepods/besteffort/{POD}/{b}"),
            &format!("kubepods/{POD}/{c}"),
        ]);
        assert_eq!(names(&t, scan(t.path(), "a1")).len(), 1);
        assert_eq!(
            names(&t, scan(t.path(), "b")),
            [format!("{b}:kubepods/besteffort/{POD}/{b}")]
        );
        assert_eq!(
            names(&t, scan(t.path(), "c1")),
            [format!("{c}:kubepods/{POD}/{c}")]
        );
    }

    #[test]
    fn ids_outside_pods_do_not_match() {
        let a = id("a1");
        let t = tree(&[
            &format!("default/{a}"),
            &format!("kubepods/{a}"),
            &format!("other/{POD}/{a}"),
        ]);
        assert!(names(&t, scan(t.path(), "a")).is_empty());
    }

    #[test]
    fn ambiguity_and_no_match() {
        let (a, b) = (id("ee1"), id("ee2"));
        let t = tree(&[
            &format!("kubepods/{POD}/{a}"),
            &format!("kubepods/{POD}/{b}"),
        ]);
        assert_eq!(names(&t, scan(t.path(), "ee")).len(), 2);
        assert!(names(&t, scan(t.path(), "ef")).is_empty());
    }
}
