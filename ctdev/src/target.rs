//! What a TARGET argument names: a cgroup path, `pid:N`, `id:N` (a policy
//! id, for containers whose cgroup is gone), `RUNTIME:ID` (`lxc:web`,
//! `docker:3f2a`, `podman:`, `containerd:`, `crio:`), or a bare name tried
//! as a cgroup and against every runtime.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Container runtimes whose cgroup layouts ctdev knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// LXC: `lxc.payload.NAME`.
    Lxc,
    /// Docker: `docker-ID.scope` (systemd driver) or `docker/ID` (cgroupfs driver).
    Docker,
    /// Podman: `libpod-ID.scope` or `libpod_parent/libpod-ID`.
    Podman,
    /// containerd (CRI): `cri-containerd-ID.scope` or `…/ID` under a pod cgroup.
    Containerd,
    /// CRI-O: `crio-ID.scope` or `…/crio-ID`.
    Crio,
}

impl RuntimeKind {
    /// Every runtime, in the order a bare name is tried.
    pub const ALL: [RuntimeKind; 5] = [
        RuntimeKind::Lxc,
        RuntimeKind::Docker,
        RuntimeKind::Podman,
        RuntimeKind::Containerd,
        RuntimeKind::Crio,
    ];

    /// The prefix used in TARGET (`lxc`, `docker`, ...).
    pub fn prefix(self) -> &'static str {
        match self {
            RuntimeKind::Lxc => "lxc",
            RuntimeKind::Docker => "docker",
            RuntimeKind::Podman => "podman",
            RuntimeKind::Containerd => "containerd",
            RuntimeKind::Crio => "crio",
        }
    }

    fn from_prefix(p: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.prefix() == p)
    }
}

/// A container as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A cgroup directory or a path inside the cgroup2 hierarchy (has a `/`).
    Cgroup(PathBuf),
    /// The cgroup of a process (`pid:N`).
    Pid(i32),
    /// A policy id as shown by `ctdev list` (`id:N`): works after the cgroup was removed.
    PolicyId(u64),
    /// A container of one runtime, by name or ID prefix (`lxc:web`, `docker:3f2a`).
    Runtime(RuntimeKind, String),
    /// A bare word: a cgroup relative to the mount, or a name/ID of any runtime.
    Name(String),
    /// A Kubernetes pod container (`k8s:NAMESPACE/POD[/CONTAINER]`), found in
    /// the pod map of `ctdev nri` (see [`crate::runtimes::k8s`]).
    Pod(String),
    /// The cgroup directory `dir` only while it is still the cgroup whose
    /// id is `id` (a program's target, never parsed from text: the daemon's
    /// jobs, so that one queued behind a removal never lands on a container
    /// created again under the name). Shown as the path.
    CgroupOf {
        /// The cgroup directory.
        dir: PathBuf,
        /// The cgroup id (policy id) it must still have.
        id: u64,
    },
}

/// Why a TARGET was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Empty argument.
    #[error("empty target: give a cgroup path, pid:N, id:N, RUNTIME:NAME or a container name")]
    Empty,
    /// `pid:` with something that is not a positive number.
    #[error("invalid pid {0:?} in target: expected pid:N with N > 0")]
    BadPid(String),
    /// `id:` with something that is not a number.
    #[error("invalid policy id {0:?} in target: expected id:N")]
    BadId(String),
    /// `k8s:` without `NAMESPACE/POD`.
    #[error("invalid pod {0:?} in target: expected k8s:NAMESPACE/POD[/CONTAINER]")]
    BadPod(String),
    /// `RUNTIME:` with nothing after it.
    #[error("empty container name in target {0:?}")]
    EmptyName(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(TargetError::Empty);
        }
        if let Some(pid) = s.strip_prefix("pid:") {
            return pid
                .parse::<i32>()
                .ok()
                .filter(|&p| p > 0)
                .map(Target::Pid)
                .ok_or_else(|| TargetError::BadPid(pid.into()));
        }
        if let Some(id) = s.strip_prefix("id:") {
            return id
                .parse::<u64>()
                .map(Target::PolicyId)
                .map_err(|_| TargetError::BadId(id.into()));
        }
        if let Some(spec) = s.strip_prefix("k8s:") {
            let parts: Vec<&str> = spec.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
                return Err(TargetError::BadPod(spec.into()));
            }
            return Ok(Target::Pod(spec.into()));
        }
        if let Some((prefix, name)) = s.split_once(':') {
            if let Some(kind) = RuntimeKind::from_prefix(prefix) {
                if name.is_empty() {
                    return Err(TargetError::EmptyName(s.into()));
                }
                return Ok(Target::Runtime(kind, name.into()));
            }
        }
        if s.contains('/') {
            Ok(Target::Cgroup(PathBuf::from(s)))
        } else {
            Ok(Target::Name(s.into()))
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cgroup(p) => write!(f, "{}", p.display()),
            Target::Pid(p) => write!(f, "pid:{p}"),
            Target::PolicyId(i) => write!(f, "id:{i}"),
            Target::Runtime(k, n) => write!(f, "{}:{n}", k.prefix()),
            Target::Name(n) => f.write_str(n),
            Target::Pod(p) => write!(f, "k8s:{p}"),
            Target::CgroupOf { dir, .. } => write!(f, "{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!("pid:42".parse(), Ok(Target::Pid(42)));
        assert_eq!("id:7".parse(), Ok(Target::PolicyId(7)));
        assert_eq!(
            "/lxc.payload.a".parse(),
            Ok(Target::Cgroup("/lxc.payload.a".into()))
        );
        assert_eq!("a/b".parse(), Ok(Target::Cgroup("a/b".into())));
        assert_eq!("web".parse(), Ok(Target::Name("web".into())));
        assert_eq!(
            "lxc:web".parse(),
            Ok(Target::Runtime(RuntimeKind::Lxc, "web".into()))
        );
        assert_eq!(
            "docker:3f2a".parse(),
            Ok(Target::Runtime(RuntimeKind::Docker, "3f2a".into()))
        );
        assert_eq!(
            "crio:ab".parse(),
            Ok(Target::Runtime(RuntimeKind::Crio, "ab".into()))
        );
    }

    #[test]
    fn pod_targets() {
        assert_eq!("k8s:ns/p".parse(), Ok(Target::Pod("ns/p".into())));
        assert_eq!("k8s:ns/p/c".parse(), Ok(Target::Pod("ns/p/c".into())));
        assert_eq!(Target::Pod("ns/p/c".into()).to_string(), "k8s:ns/p/c");
        for bad in ["k8s:ns", "k8s:ns/", "k8s:/p", "k8s:a/b/c/d"] {
            assert!(
                matches!(bad.parse::<Target>(), Err(TargetError::BadPod(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_bad_targets() {
        assert_eq!(
            "pid:x".parse::<Target>(),
            Err(TargetError::BadPid("x".into()))
        );
        assert_eq!(
            "pid:0".parse::<Target>(),
            Err(TargetError::BadPid("0".into()))
        );
        assert_eq!(
            "pid:-3".parse::<Target>(),
            Err(TargetError::BadPid("-3".into()))
        );
        assert_eq!("id:".parse::<Target>(), Err(TargetError::BadId("".into())));
        assert_eq!("".parse::<Target>(), Err(TargetError::Empty));
        assert_eq!(
            "lxc:".parse::<Target>(),
            Err(TargetError::EmptyName("lxc:".into()))
        );
    }
}
