//! Finding containers of real runtimes: their cgroup and init process.
//!
//! One resolver module per runtime (filled in by issue #3's work); this
//! module holds what they share.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cgroup::{Cgroup, CgroupFs};
use crate::target::RuntimeKind;

/// Why a container could not be found.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No container matched.
    #[error("no {what} container matches {name:?} (looked for: {tried})")]
    NotFound {
        /// Runtime(s) searched.
        what: String,
        /// The name or ID prefix.
        name: String,
        /// What was looked for, for the operator.
        tried: String,
    },
    /// Several containers matched.
    #[error("{name:?} is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        /// The name or ID prefix.
        name: String,
        /// The matches, as TARGETs.
        candidates: Vec<String>,
    },
    /// The container's cgroup has no process.
    #[error("cgroup {0} has no process: is the container running?")]
    NoProcess(PathBuf),
    /// Reading /proc or the cgroup tree failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// One container a runtime resolver found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Which runtime.
    pub runtime: RuntimeKind,
    /// Its name or full ID.
    pub name: String,
    /// Its cgroup (the one to attach to).
    pub cgroup: Cgroup,
}

/// Finds containers named `name` (a name, or an ID prefix) of `runtime`, or
/// of every runtime when `None`.
pub fn find(
    _fs: &CgroupFs,
    _runtime: Option<RuntimeKind>,
    _name: &str,
) -> Result<Vec<Candidate>, RuntimeError> {
    Ok(Vec::new())
}

/// The oldest process (earliest start time) in `cgroup_dir` and its
/// sub-cgroups: a container's init. `None` if the cgroup has no process.
pub fn oldest_process(cgroup_dir: &Path) -> Result<Option<i32>, RuntimeError> {
    let mut best: Option<(u64, i32)> = None;
    let mut stack = vec![cgroup_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let procs = dir.join("cgroup.procs");
        let text = match fs::read_to_string(&procs) {
            Ok(t) => t,
            // A sub-cgroup removed while we walk, or a threaded cgroup.
            Err(e) if dir != cgroup_dir => {
                tracing::debug!("skipping {}: {e}", procs.display());
                continue;
            }
            Err(source) => {
                return Err(RuntimeError::Io {
                    op: "read",
                    path: procs,
                    source,
                })
            }
        };
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if let Some(start) = start_time(pid) {
                if best.is_none_or(|(s, p)| (start, pid) < (s, p)) {
                    best = Some((start, pid));
                }
            }
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    Ok(best.map(|(_, pid)| pid))
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_known() {
        assert!(start_time(std::process::id() as i32).is_some());
        assert!(start_time(i32::MAX).is_none());
    }
}
