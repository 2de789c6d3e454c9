//! Where running runtimes keep their state, found from their processes, so
//! that `attach --takeover` and the daemon find a runtime's device rules
//! without `--lxcpath` / `--runtime-root`.
//!
//! - LXC: the monitor of a running container names itself
//!   `[lxc monitor] LXCPATH NAME` (its `/proc/PID/cmdline`), also when it was
//!   started with a non-default `lxc-start -P LXCPATH`.
//! - Docker: runc's state is under `EXEC_ROOT/runtime-runc/moby/<id>`, where
//!   EXEC_ROOT is dockerd's `--exec-root` (default `/var/run/docker`).
//!
//! The parsers are pure; [`processes`] is the only part that reads `/proc`.

use std::fs;
use std::path::{Path, PathBuf};

/// dockerd's default `--exec-root`.
pub const DOCKER_DEFAULT_EXEC_ROOT: &str = "/var/run/docker";

/// The command lines (argv) of every process, read from `/proc`. Processes
/// that vanish while we read are skipped.
pub fn processes() -> Vec<Vec<String>> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|raw| split_cmdline(&raw))
        .filter(|argv| !argv.is_empty())
        .collect()
}

/// A `/proc/PID/cmdline` as argv (NUL-separated, trailing NULs dropped).
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .skip_while(String::is_empty)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// The (lxcpath, name) an LXC monitor process names in its command line
/// (`[lxc monitor] /var/lib/lxc web`; LXC rewrites its argv area, so the
/// title may be one argument or several).
pub fn lxc_monitor(argv: &[String]) -> Option<(PathBuf, String)> {
    let line = argv.join(" ");
    let rest = line.trim().strip_prefix("[lxc monitor] ")?;
    let (path, name) = rest.trim_end().rsplit_once(' ')?;
    if !path.starts_with('/') || name.is_empty() {
        return None;
    }
    Some((PathBuf::from(path), name.to_string()))
}

/// The lxcpath of the running LXC container `name`, from its monitor.
pub fn lxcpath_of(name: &str) -> Option<PathBuf> {
    lxcpath_in(&processes(), name)
}

/// [`lxcpath_of`] over given command lines.
pub fn lxcpath_in(procs: &[Vec<String>], name: &str) -> Option<PathBuf> {
    procs
        .iter()
        .filter_map(|argv| lxc_monitor(argv))
        .find(|(_, n)| n == name)
        .map(|(p, _)| p)
}

/// The `--exec-root` of a dockerd command line (its default when not
/// given); `None` if it is not dockerd.
pub fn dockerd_exec_root(argv: &[String]) -> Option<PathBuf> {
    let prog = Path::new(argv.first()?).file_name()?.to_str()?;
    if prog != "dockerd" {
        return None;
    }
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        if a == "--exec-root" {
            return args.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--exec-root=") {
            return Some(PathBuf::from(v));
        }
    }
    Some(PathBuf::from(DOCKER_DEFAULT_EXEC_ROOT))
}

/// runc state roots of running runtimes besides runc's and crun's own
/// defaults: each dockerd's `EXEC_ROOT/runtime-runc/moby`.
pub fn runc_state_roots() -> Vec<PathBuf> {
    runc_state_roots_in(&processes())
}

/// [`runc_state_roots`] over given command lines.
pub fn runc_state_roots_in(procs: &[Vec<String>]) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = procs
        .iter()
        .filter_map(|argv| dockerd_exec_root(argv))
        .map(|e| e.join("runtime-runc/moby"))
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(split_cmdline(b"a\0b c\0\0\0"), ["a", "b c"]);
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn lxc_monitors() {
        let procs = vec![
            argv("[lxc monitor] /var/lib/lxc web"),
            vec![
                "[lxc monitor] /tmp/my lxc/path db".to_string(),
                String::new(),
            ],
            argv("lxc-start -n web"),
        ];
        assert_eq!(lxcpath_in(&procs, "web"), Some("/var/lib/lxc".into()));
        assert_eq!(lxcpath_in(&procs, "db"), Some("/tmp/my lxc/path".into()));
        assert_eq!(lxcpath_in(&procs, "we"), None);
        assert_eq!(lxc_monitor(&argv("[lxc monitor] relative web")), None);
    }

    #[test]
    fn dockerd_roots() {
        let procs = vec![
            argv("/usr/sbin/dockerd -H unix:///x.sock --exec-root /tmp/e1"),
            argv("dockerd --exec-root=/tmp/e2 --bridge none"),
            argv("dockerd"),
            argv("/usr/bin/containerd --config /tmp/e1/containerd/containerd.toml"),
            argv("dockerd-rootless.sh --exec-root /x"),
        ];
        assert_eq!(
            runc_state_roots_in(&procs),
            [
                PathBuf::from("/tmp/e1/runtime-runc/moby"),
                PathBuf::from("/tmp/e2/runtime-runc/moby"),
                PathBuf::from("/var/run/docker/runtime-runc/moby"),
            ]
        );
    }

    #[test]
    fn real_processes_are_readable() {
        // This test process itself is listed.
        assert!(!processes().is_empty());
    }
}
