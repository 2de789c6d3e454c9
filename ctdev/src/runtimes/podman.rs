//! Podman containers: found by ID prefix.
//!
//! Layouts: `libpod-<id>.scope` (systemd cgroup manager: under
//! `machine.slice`, a pod's `machine-libpod_pod_<pod>.slice`, or a user's
//! slices for rootless Podman) and `libpod_parent/…/libpod-<id>` (cgroupfs
//! manager). `libpod-conmon-<id>.scope` and `libpod_parent/conmon` hold
//! Podman's monitor, not the container, and are ignored.

use std::path::Path;

use super::{classify_id, kind_id_dir, Visit};

/// What the Podman resolver makes of one directory (`rel`, relative to the
/// cgroup2 root) when looking for IDs starting with `prefix`.
pub(crate) fn classify(rel: &Path, prefix: &str) -> Visit {
    classify_id(rel, prefix, "libpod", |dir| {
        if dir.starts_with("libpod-conmon-") {
            return Visit::Prune;
        }
        let under_parent = rel
            .parent()
            .is_some_and(|p| p.components().any(|c| c.as_os_str() == "libpod_parent"));
        kind_id_dir(dir, "libpod", prefix, under_parent)
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{expect, hit, id, nothing};
    use super::*;

    #[test]
    fn systemd_and_cgroupfs_layouts() {
        let (a, b, c) = (id("a1"), id("b1"), id("c1"));
        let sa = format!("machine.slice/libpod-{a}.scope");
        let sb =
            format!("user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{b}.scope");
        let pc = format!("libpod_parent/libpod-{c}");
        let dirs = [
            format!("{sa}/container"),
            sb.clone(),
            pc.clone(),
            "libpod_parent/conmon".into(),
        ];
        let cases = [
            ("a", vec![hit(&a, &sa)]),
            ("b1", vec![hit(&b, &sb)]),
            ("c", vec![hit(&c, &pc)]),
        ];
        expect(classify, &dirs, &cases);
    }

    #[test]
    fn conmon_scopes_are_ignored() {
        let a = id("a1");
        let conmon = format!("machine.slice/libpod-conmon-{a}.scope");
        let sa = format!("machine.slice/libpod-{a}.scope");
        expect(
            classify,
            &[conmon.clone(), sa.clone()],
            &[("a1", vec![hit(&a, &sa)])],
        );
        nothing(classify, &[conmon], &["a"]);
    }

    #[test]
    fn ambiguity_and_no_match() {
        let (a, b) = (id("dd1"), id("dd2"));
        let pod = "machine.slice/machine-libpod_pod_x.slice";
        let (sa, sb) = (
            format!("{pod}/libpod-{a}.scope"),
            format!("{pod}/libpod-{b}.scope"),
        );
        let dirs = [sa.clone(), sb.clone(), format!("elsewhere/libpod-{a}")];
        let both = vec![hit(&a, &sa), hit(&b, &sb)];
        expect(classify, &dirs, &[("dd", both), ("de", vec![])]);
    }
}
