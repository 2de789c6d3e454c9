//! Docker containers: found by ID prefix.
//!
//! Layouts: `docker-<id>.scope` (systemd cgroup driver, normally under
//! `system.slice`) and `docker/<id>` (cgroupfs driver; `docker` may itself
//! sit below a `--cgroup-parent`).

use std::path::Path;

use super::{dir_name, id_matches, is_full_id, parent_name, scope_id, Visit};

/// What the Docker resolver makes of one directory (`rel`, relative to the
/// cgroup2 root) when looking for IDs starting with `prefix`.
pub(crate) fn classify(rel: &Path, prefix: &str) -> Visit {
    let Some(dir) = dir_name(rel) else {
        return Visit::Descend;
    };
    if let Some(id) = scope_id(dir, "docker", prefix) {
        return Visit::Match(id.to_string());
    }
    if parent_name(rel) == Some("docker") && is_full_id(dir) {
        if id_matches(dir, prefix) {
            return Visit::Match(dir.to_string());
        }
        // Another container: its sub-cgroups are its own.
        return Visit::Prune;
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
        let (a, b) = (id("3f2a"), id("77"));
        let t = tree(&[
            &format!("system.slice/docker-{a}.scope"),
            &format!("docker/{b}"),
            "system.slice/docker.service",
            "docker/notanid",
        ]);
        assert_eq!(
            names(&t, scan(t.path(), "3f")),
            [format!("{a}:system.slice/docker-{a}.scope")]
        );
        assert_eq!(names(&t, scan(t.path(), "77")), [format!("{b}:docker/{b}")]);
        assert_eq!(names(&t, scan(t.path(), &b)), [format!("{b}:docker/{b}")]);
    }

    #[test]
    fn ambiguous_prefix_returns_all() {
        let (a, b) = (id("ab1"), id("ab2"));
        let t = tree(&[
            &format!("system.slice/docker-{a}.scope"),
            &format!("system.slice/docker-{b}.scope"),
        ]);
        assert_eq!(names(&t, scan(t.path(), "ab")).len(), 2);
        assert_eq!(names(&t, scan(t.path(), "ab2")).len(), 1);
    }

    #[test]
    fn no_match() {
        let a = id("ab1");
        let t = tree(&[
            &format!("system.slice/docker-{a}.scope"),
            &format!("other/{a}"),
            &format!("system.slice/libpod-{a}.scope"),
        ]);
        assert!(names(&t, scan(t.path(), "cd")).is_empty());
        assert!(names(&t, scan(t.path(), "xyz")).is_empty());
        assert!(names(&t, scan(t.path(), "")).is_empty());
        assert_eq!(names(&t, scan(t.path(), "a")).len(), 1);
    }

    #[test]
    fn does_not_descend_into_a_container() {
        let (a, b) = (id("ab1"), id("ab2"));
        let t = tree(&[
            &format!("system.slice/docker-{a}.scope/docker-{b}.scope"),
            &format!("docker/{a}/docker/{b}"),
        ]);
        let found = names(&t, scan(t.path(), "ab"));
        assert_eq!(
            found,
            [
                format!("{a}:docker/{a}"),
                format!("{a}:system.slice/docker-{a}.scope")
            ]
        );
    }
}
