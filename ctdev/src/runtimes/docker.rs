//! Docker containers: found by ID prefix.
//!
//! Layouts: `docker-<id>.scope` (systemd cgroup driver, normally under
//! `system.slice`) and `docker/<id>` (cgroupfs driver; `docker` may itself
//! sit below a `--cgroup-parent`).

use std::path::Path;

use super::{classify_id, full_id_dir, is_full_id, parent_name, Visit};

/// What the Docker resolver makes of one directory (`rel`, relative to the
/// cgroup2 root) when looking for IDs starting with `prefix`.
pub(crate) fn classify(rel: &Path, prefix: &str) -> Visit {
    classify_id(rel, prefix, "docker", |dir| {
        if parent_name(rel) == Some("docker") && is_full_id(dir) {
            full_id_dir(dir, prefix)
        } else {
            Visit::Descend
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{expect, hit, id, nothing};
    use super::*;

    #[test]
    fn systemd_and_cgroupfs_layouts() {
        let (a, b) = (id("3f2a"), id("77"));
        let (sa, db) = (
            format!("system.slice/docker-{a}.scope"),
            format!("docker/{b}"),
        );
        let dirs = [
            sa.clone(),
            db.clone(),
            "system.slice/docker.service".into(),
            "docker/notanid".into(),
        ];
        let cases = [
            ("3f", vec![hit(&a, &sa)]),
            ("77", vec![hit(&b, &db)]),
            (b.as_str(), vec![hit(&b, &db)]),
        ];
        expect(classify, &dirs, &cases);
    }

    #[test]
    fn ambiguous_prefix_returns_all() {
        let (a, b) = (id("ab1"), id("ab2"));
        let sa = format!("system.slice/docker-{a}.scope");
        let sb = format!("system.slice/docker-{b}.scope");
        let both = vec![hit(&a, &sa), hit(&b, &sb)];
        expect(
            classify,
            &[sa, sb.clone()],
            &[("ab", both), ("ab2", vec![hit(&b, &sb)])],
        );
    }

    #[test]
    fn no_match() {
        let a = id("ab1");
        let sa = format!("system.slice/docker-{a}.scope");
        let dirs = [
            sa.clone(),
            format!("other/{a}"),
            format!("system.slice/libpod-{a}.scope"),
        ];
        nothing(classify, &dirs, &["cd", "xyz", ""]);
        expect(classify, &dirs, &[("a", vec![hit(&a, &sa)])]);
    }

    #[test]
    fn does_not_descend_into_a_container() {
        let (a, b) = (id("ab1"), id("ab2"));
        let dirs = [
            format!("system.slice/docker-{a}.scope/docker-{b}.scope"),
            format!("docker/{a}/docker/{b}"),
        ];
        let outer = [
            format!("docker/{a}"),
            format!("system.slice/docker-{a}.scope"),
        ];
        expect(
            classify,
            &dirs,
            &[("ab", outer.map(|d| hit(&a, &d)).to_vec())],
        );
    }
}
