//! CRI-O containers: found by ID prefix.
//!
//! Layouts: `crio-<id>.scope` (systemd cgroup manager, under the pod's
//! `kubepods…pod<uid>.slice`) and `…/pod<uid>/crio-<id>` (cgroupfs
//! manager). `crio-conmon-<id>.scope` (and `crio-conmon-<id>`) hold CRI-O's
//! monitor and are ignored.

use std::path::Path;

use super::{classify_id, kind_id_dir, parent_name, Visit};

/// What the CRI-O resolver makes of one directory (`rel`, relative to the
/// cgroup2 root) when looking for IDs starting with `prefix`.
pub(crate) fn classify(rel: &Path, prefix: &str) -> Visit {
    classify_id(rel, prefix, "crio", |dir| {
        if dir.starts_with("crio-conmon-") {
            return Visit::Prune;
        }
        let in_pod = parent_name(rel).is_some_and(|p| p.starts_with("pod"));
        kind_id_dir(dir, "crio", prefix, in_pod)
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{expect, hit, id};
    use super::*;

    const POD: &str = "pod8d3b6c2e-1f4a-4b7e-9c1d-2a3b4c5d6e7f";

    /// Both layouts; the conmon scopes beside them are ignored.
    #[test]
    fn systemd_and_cgroupfs_layouts() {
        let (a, b) = (id("a1"), id("b1"));
        let slice = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8d3b.slice";
        let sa = format!("{slice}/crio-{a}.scope");
        let pb = format!("kubepods/besteffort/{POD}/crio-{b}");
        let dirs = [
            format!("{sa}/container"),
            format!("{slice}/crio-conmon-{a}.scope"),
            pb.clone(),
            format!("kubepods/besteffort/{POD}/crio-conmon-{b}"),
        ];
        expect(
            classify,
            &dirs,
            &[("a", vec![hit(&a, &sa)]), ("b1", vec![hit(&b, &pb)])],
        );
    }

    #[test]
    fn ambiguity_and_no_match() {
        let (a, b) = (id("ff1"), id("ff2"));
        let sa = format!("kubepods.slice/crio-{a}.scope");
        let pb = format!("kubepods/{POD}/crio-{b}");
        let dirs = [sa.clone(), pb.clone(), format!("elsewhere/crio-{b}")];
        let both = vec![hit(&a, &sa), hit(&b, &pb)];
        expect(classify, &dirs, &[("ff", both), ("f0", vec![])]);
    }
}
