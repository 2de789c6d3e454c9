//! Where running runtimes keep their state, found from their processes, so
//! that `attach --takeover` and the daemon find a runtime's device rules
//! without `--lxcpath` / `--runtime-root`.
//!
//! - LXC: the monitor of a running container names itself
//!   `[lxc monitor] LXCPATH NAME` (its `/proc/PID/cmdline`), also when it was
//!   started with a non-default `lxc-start -P LXCPATH`.
//! - Docker: runc's state is under `EXEC_ROOT/runtime-runc/moby/<id>`, where
//!   EXEC_ROOT is dockerd's `--exec-root` (default `/var/run/docker`).
//! - Podman: a runtime root given with `podman --runtime-flag root=DIR`
//!   reaches the OCI runtime through conmon, whose command line carries it
//!   as `--runtime-arg --root=DIR` (or `--runtime-arg --root --runtime-arg
//!   DIR`); runc's `state.json` or crun's `status` is under `DIR/<id>`.
//!
//! - Names: Docker keeps a container's name in
//!   `DATA_ROOT/containers/<id>/config.v2.json` (dockerd's `--data-root`,
//!   default `/var/lib/docker`); Podman's conmon carries it as `-n NAME`
//!   next to `-c <id>`. The daemon's `{ runtime = …, name = GLOB }` matches
//!   these as well as the ID.
//!
//! The parsers are pure; [`processes`] is the only part that reads `/proc`.

use std::fs;
use std::path::{Path, PathBuf};

/// dockerd's default `--data-root`.
pub const DOCKER_DEFAULT_DATA_ROOT: &str = "/var/lib/docker";

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

/// The value of option `name` (`--name V` or `--name=V`) in `args`.
fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

/// Whether argv is the program `name` (by the basename of argv\[0\]).
fn is_program(argv: &[String], name: &str) -> bool {
    argv.first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == name)
}

/// The `--exec-root` of a dockerd command line (its default when not
/// given); `None` if it is not dockerd.
pub fn dockerd_exec_root(argv: &[String]) -> Option<PathBuf> {
    if !is_program(argv, "dockerd") {
        return None;
    }
    Some(PathBuf::from(
        option(&argv[1..], "--exec-root").unwrap_or(DOCKER_DEFAULT_EXEC_ROOT),
    ))
}

/// The `--data-root` of a dockerd command line (its default when not
/// given); `None` if it is not dockerd.
pub fn dockerd_data_root(argv: &[String]) -> Option<PathBuf> {
    if !is_program(argv, "dockerd") {
        return None;
    }
    Some(PathBuf::from(
        option(&argv[1..], "--data-root").unwrap_or(DOCKER_DEFAULT_DATA_ROOT),
    ))
}

/// The container name a conmon command line gives the container `id`
/// (`-c ID … -n NAME`); `None` for another container or program.
pub fn conmon_name(argv: &[String], id: &str) -> Option<String> {
    if !is_program(argv, "conmon") {
        return None;
    }
    let args = &argv[1..];
    let cid = option(args, "-c").or_else(|| option(args, "--cid"))?;
    if cid != id {
        return None;
    }
    option(args, "-n")
        .or_else(|| option(args, "--name"))
        .map(String::from)
}

/// The name in a Docker `config.v2.json` (`"Name": "/web"` → `web`).
pub fn docker_config_name(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let name = v.get("Name")?.as_str()?.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

/// The names Docker (every running dockerd's data root) or Podman (its
/// conmon) gave the container with full ID `id`.
pub fn engine_names(kind: crate::target::RuntimeKind, id: &str) -> Vec<String> {
    use crate::target::RuntimeKind;
    let procs = processes();
    let mut names: Vec<String> = match kind {
        RuntimeKind::Docker => procs
            .iter()
            .filter_map(|argv| dockerd_data_root(argv))
            .filter_map(|root| {
                fs::read_to_string(root.join("containers").join(id).join("config.v2.json")).ok()
            })
            .filter_map(|text| docker_config_name(&text))
            .collect(),
        RuntimeKind::Podman => procs
            .iter()
            .filter_map(|argv| conmon_name(argv, id))
            .collect(),
        _ => Vec::new(),
    };
    names.sort();
    names.dedup();
    names
}

/// The OCI runtime's `--root` that a conmon command line passes on with
/// `--runtime-arg` (`--runtime-arg --root=DIR`, or `--runtime-arg --root
/// --runtime-arg DIR`, also written `--runtime-arg=…`); `None` if it is not
/// conmon or passes no root.
pub fn conmon_runtime_root(argv: &[String]) -> Option<PathBuf> {
    if !is_program(argv, "conmon") {
        return None;
    }
    // The values of every `--runtime-arg`, in order: the runtime's own argv.
    let mut runtime_args = Vec::new();
    let mut it = argv[1..].iter();
    while let Some(a) = it.next() {
        if a == "--runtime-arg" {
            if let Some(v) = it.next() {
                runtime_args.push(v.clone());
            }
        } else if let Some(v) = a.strip_prefix("--runtime-arg=") {
            runtime_args.push(v.to_string());
        }
    }
    option(&runtime_args, "--root")
        .filter(|r| r.starts_with('/'))
        .map(PathBuf::from)
}

/// runc/crun state roots of running runtimes besides runc's and crun's own
/// defaults: each dockerd's `EXEC_ROOT/runtime-runc/moby`, and each root a
/// conmon passes to its runtime (Podman's `--runtime-flag root=DIR`).
pub fn runc_state_roots() -> Vec<PathBuf> {
    runc_state_roots_in(&processes())
}

/// [`runc_state_roots`] over given command lines.
pub fn runc_state_roots_in(procs: &[Vec<String>]) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = procs
        .iter()
        .filter_map(|argv| dockerd_exec_root(argv))
        .map(|e| e.join("runtime-runc/moby"))
        .chain(procs.iter().filter_map(|argv| conmon_runtime_root(argv)))
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
    fn conmon_runtime_roots() {
        let id = "cd".repeat(32);
        let joined = argv(&format!(
            "/usr/bin/conmon --api-version 1 -c {id} -r /usr/bin/runc -n web \
             --runtime-arg --root=/tmp/p1/oci --runtime-arg --log-format=json"
        ));
        let split = argv("conmon -c x --runtime-arg --root --runtime-arg /tmp/p2/oci");
        let eq_form = argv("conmon -c x --runtime-arg=--root=/tmp/p3/oci");
        let no_root = argv("conmon -c x --runtime-arg --log-format=json -r /usr/bin/crun");
        let relative = argv("conmon -c x --runtime-arg --root=oci");
        let not_conmon = argv("runc --root /tmp/p4 run x");
        assert_eq!(conmon_runtime_root(&joined), Some("/tmp/p1/oci".into()));
        assert_eq!(conmon_runtime_root(&split), Some("/tmp/p2/oci".into()));
        assert_eq!(conmon_runtime_root(&eq_form), Some("/tmp/p3/oci".into()));
        assert_eq!(conmon_runtime_root(&no_root), None);
        assert_eq!(conmon_runtime_root(&relative), None);
        assert_eq!(conmon_runtime_root(&not_conmon), None);
        let procs = vec![joined, split.clone(), split, no_root, not_conmon];
        assert_eq!(
            runc_state_roots_in(&procs),
            [PathBuf::from("/tmp/p1/oci"), PathBuf::from("/tmp/p2/oci")]
        );
    }

    #[test]
    fn engine_names_from_command_lines_and_config() {
        let id = "ab".repeat(32);
        let conmon = argv(&format!(
            "/usr/bin/conmon --api-version 1 -c {id} -u {id} -r /usr/bin/runc -n web --exit-dir /x"
        ));
        assert_eq!(conmon_name(&conmon, &id), Some("web".into()));
        assert_eq!(conmon_name(&conmon, "other"), None);
        assert_eq!(conmon_name(&argv("conmon -c x"), "x"), None);
        assert_eq!(
            dockerd_data_root(&argv("dockerd --data-root=/d")),
            Some("/d".into())
        );
        assert_eq!(
            dockerd_data_root(&argv("/usr/sbin/dockerd")),
            Some("/var/lib/docker".into())
        );
        assert_eq!(dockerd_data_root(&argv("containerd")), None);
        assert_eq!(
            docker_config_name(r#"{"ID":"x","Name":"/homeassistant"}"#),
            Some("homeassistant".into())
        );
        assert_eq!(docker_config_name(r#"{"Name":"/"}"#), None);
        assert_eq!(docker_config_name("{"), None);
    }

    #[test]
    fn real_processes_are_readable() {
        // This test process itself is listed.
        assert!(!processes().is_empty());
    }
}
