//! What a TARGET argument names: a cgroup path, `pid:N`, or `id:N` (a policy
//! id, for containers whose cgroup is gone).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A container as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A cgroup directory or a path inside the cgroup2 hierarchy.
    Cgroup(PathBuf),
    /// The cgroup of a process (`pid:N`).
    Pid(i32),
    /// A policy id as shown by `ctdev list` (`id:N`): works after the cgroup was removed.
    PolicyId(u64),
}

/// Why a TARGET was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Empty argument.
    #[error("empty target: give a cgroup path, pid:N or id:N")]
    Empty,
    /// `pid:` with something that is not a positive number.
    #[error("invalid pid {0:?} in target: expected pid:N with N > 0")]
    BadPid(String),
    /// `id:` with something that is not a number.
    #[error("invalid policy id {0:?} in target: expected id:N")]
    BadId(String),
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
        Ok(Target::Cgroup(PathBuf::from(s)))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cgroup(p) => write!(f, "{}", p.display()),
            Target::Pid(p) => write!(f, "pid:{p}"),
            Target::PolicyId(i) => write!(f, "id:{i}"),
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
    }
}
