//! LXC containers: found by full name.
//!
//! Layouts: `lxc.payload.NAME` (LXC 4 and 5, normally at the top of the
//! hierarchy, but also below a delegated slice), `lxc.payload/NAME` (LXC
//! 3.x) and legacy `lxc/NAME`. The payload cgroup is the one to attach to:
//! LXC runs the container's init there and attached processes in
//! sub-cgroups of it (`lxc.payload.NAME/.lxc`). `lxc.monitor.NAME` holds
//! LXC's own monitor and is not the container.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{dir_name, parent_name, RuntimeError, Visit};

/// Directory name prefix of LXC 4/5 payload cgroups.
pub const PAYLOAD_PREFIX: &str = "lxc.payload.";

/// What an LXC resolver makes of one directory (`rel`, relative to the
/// cgroup2 root) when looking for the container named `name`.
pub fn classify(rel: &Path, name: &str) -> Visit {
    let Some(dir) = dir_name(rel) else {
        return Visit::Descend;
    };
    if name.is_empty() {
        return Visit::Prune;
    }
    if dir.strip_prefix(PAYLOAD_PREFIX) == Some(name) {
        return Visit::Match(name.to_string());
    }
    if dir == name && matches!(parent_name(rel), Some("lxc" | "lxc.payload")) {
        return Visit::Match(name.to_string());
    }
    if dir.starts_with("lxc.monitor.") || dir == "lxc.pivot" {
        // LXC's monitor process only; `lxc.pivot` is where LXC moves its
        // monitor out of the way, never a container's cgroup.
        return Visit::Prune;
    }
    Visit::Descend
}

/// Finds the LXC container `name` under `root`: (name, cgroup directory) pairs.
pub fn scan(root: &Path, name: &str) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    super::walk(root, |rel| classify(rel, name))
}

/// The container's init pid as LXC reports it (`lxc-info -n NAME -p -H
/// [-P LXCPATH]`). `None` when `lxc-info` is missing, fails (not running,
/// unknown container) or prints no pid; the caller then falls back to
/// [`super::oldest_process`] of the payload cgroup.
pub fn init_pid(name: &str, lxcpath: Option<&Path>) -> Option<i32> {
    let mut cmd = Command::new("lxc-info");
    cmd.arg("-n").arg(name).arg("-p").arg("-H");
    if let Some(p) = lxcpath {
        cmd.arg("-P").arg(p);
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            tracing::debug!("cannot run lxc-info for {name}: {e}");
            return None;
        }
    };
    if !out.status.success() {
        tracing::debug!(
            "lxc-info -n {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let pid = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().parse::<i32>().ok())
        .filter(|&p| p > 0);
    if pid.is_none() {
        tracing::debug!("lxc-info -n {name} printed no pid: is it running?");
    }
    pid
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{names, tree};
    use super::*;

    #[test]
    fn finds_payload_cgroups_by_full_name() {
        let t = tree(&[
            "lxc.payload.web/init",
            "lxc.payload.web/.lxc",
            "lxc.monitor.web",
            "lxc.payload.web2",
            "lxc.payload.db",
            "user.slice/user-0.slice/lxc.payload.nested",
        ]);
        assert_eq!(names(&t, scan(t.path(), "web")), ["web:lxc.payload.web"]);
        assert_eq!(
            names(&t, scan(t.path(), "nested")),
            ["nested:user.slice/user-0.slice/lxc.payload.nested"]
        );
        // Full names only: no prefix matching.
        assert!(names(&t, scan(t.path(), "we")).is_empty());
        assert!(names(&t, scan(t.path(), "monitor.web")).is_empty());
    }

    #[test]
    fn finds_legacy_layouts() {
        let t = tree(&["lxc/old", "lxc.payload/mid", "other/old"]);
        assert_eq!(names(&t, scan(t.path(), "old")), ["old:lxc/old"]);
        assert_eq!(names(&t, scan(t.path(), "mid")), ["mid:lxc.payload/mid"]);
    }

    #[test]
    fn same_name_twice_is_reported_twice() {
        let t = tree(&["lxc.payload.a", "lxc/a", "lxc.payload.b/lxc.payload.a"]);
        assert_eq!(
            names(&t, scan(t.path(), "a")),
            [
                "a:lxc.payload.a",
                "a:lxc.payload.b/lxc.payload.a",
                "a:lxc/a"
            ]
        );
    }

    #[test]
    fn does_not_descend_into_a_match() {
        let t = tree(&["lxc.payload.a/lxc.payload.a"]);
        assert_eq!(names(&t, scan(t.path(), "a")), ["a:lxc.payload.a"]);
    }

    #[test]
    fn no_match_and_empty_name() {
        let t = tree(&["lxc.payload.a", "lxc/b"]);
        assert!(names(&t, scan(t.path(), "c")).is_empty());
        assert!(names(&t, scan(t.path(), "")).is_empty());
    }

    #[test]
    fn init_pid_of_unknown_container_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(init_pid("ctdev-no-such-container", Some(dir.path())), None);
    }
}
