//! containerd (CRI) containers: found by ID prefix.
//!
//! Layouts: `cri-containerd-<id>.scope` (systemd cgroup driver, under the
//! `kubepods…pod<uid>.slice` of its pod) and `kubepods/…/pod<uid>/<id>`
//! (cgroupfs driver: a 64-hex-digit directory directly under a pod
//! directory). Plain containerd namespaces (`<namespace>/<id>`) are not
//! recognised: nothing in such a path says it is containerd's.

use std::path::{Component, Path};

use super::{classify_id, full_id_dir, is_full_id, parent_name, Visit};

/// What the containerd resolver makes of one directory (`rel`, relative to
/// the cgroup2 root) when looking for IDs starting with `prefix`.
pub(crate) fn classify(rel: &Path, prefix: &str) -> Visit {
    classify_id(rel, prefix, "cri-containerd", |dir| {
        if is_full_id(dir) && in_pod(rel) {
            full_id_dir(dir, prefix)
        } else {
            Visit::Descend
        }
    })
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
    use super::super::fixture::{expect, hit, id, nothing};
    use super::*;

    const POD: &str = "pod8d3b6c2e-1f4a-4b7e-9c1d-2a3b4c5d6e7f";

    #[test]
    fn systemd_and_cgroupfs_layouts() {
        let (a, b, c) = (id("a1"), id("b1"), id("c1"));
        let slice = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8d3b.slice";
        let sa = format!("{slice}/cri-containerd-{a}.scope");
        let (pb, pc) = (
            format!("kubepods/besteffort/{POD}/{b}"),
            format!("kubepods/{POD}/{c}"),
        );
        let cases = [
            ("a1", vec![hit(&a, &sa)]),
            ("b", vec![hit(&b, &pb)]),
            ("c1", vec![hit(&c, &pc)]),
        ];
        expect(classify, &[sa.clone(), pb.clone(), pc.clone()], &cases);
    }

    #[test]
    fn ids_outside_pods_do_not_match() {
        let a = id("a1");
        let dirs = [
            format!("default/{a}"),
            format!("kubepods/{a}"),
            format!("other/{POD}/{a}"),
        ];
        nothing(classify, &dirs, &["a"]);
    }

    #[test]
    fn ambiguity_and_no_match() {
        let (a, b) = (id("ee1"), id("ee2"));
        let (pa, pb) = (format!("kubepods/{POD}/{a}"), format!("kubepods/{POD}/{b}"));
        let both = vec![hit(&a, &pa), hit(&b, &pb)];
        expect(classify, &[pa.clone(), pb.clone()], &[("ee", both)]);
        nothing(classify, &[pa, pb], &["ef"]);
    }
}
