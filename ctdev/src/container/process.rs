//! A container's init process, pinned by a pidfd.
//!
//! The init is the oldest process of the container's cgroup. ctdev opens a
//! pidfd for it first, then the `/proc/<pid>/...` files it needs, then checks
//! through the pidfd that the process is still alive: if it is, the PID was
//! not reused in between, so the files belong to the same process. The check
//! is repeated before anything is committed ([`InitProcess::check_alive`]).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::cgroup::{Cgroup, CgroupFs};
use crate::runtimes::{self, RuntimeError};

/// Why the init process could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The cgroup has no process.
    #[error("cgroup {0} has no process: is the container running?")]
    NoProcess(PathBuf),
    /// Finding the oldest process failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The init process exited (or its PID was reused) during the operation.
    #[error("container exited: init process {pid} of {cgroup} is gone")]
    Exited {
        /// The PID.
        pid: i32,
        /// The cgroup directory.
        cgroup: PathBuf,
    },
    /// The process found is not (or no longer) in the container's cgroup.
    #[error("process {pid} is not in cgroup {cgroup} any more (container restarting?)")]
    LeftCgroup {
        /// The PID.
        pid: i32,
        /// The cgroup directory.
        cgroup: PathBuf,
    },
    /// A syscall on the process failed.
    #[error("{call} on {what} failed: {errno}")]
    Sys {
        /// The call, e.g. `pidfd_open`.
        call: &'static str,
        /// What it was applied to.
        what: String,
        errno: Errno,
    },
    /// A /proc file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The container's root user has no id outside its user namespace.
    #[error("{path} maps no outside id to the container's root (0); pass --uid/--gid")]
    RootUnmapped {
        /// The map file.
        path: PathBuf,
    },
}

/// The init process of a container: pidfd, root directory, PID.
#[derive(Debug)]
pub struct InitProcess {
    pid: i32,
    pidfd: OwnedFd,
    root: OwnedFd,
    cgroup_dir: PathBuf,
}

impl InitProcess {
    /// Finds the init (oldest process) of `cgroup`, pins it with a pidfd,
    /// opens its root directory, and checks it is still alive and in the cgroup.
    pub fn of_cgroup(fs: &CgroupFs, cgroup: &Cgroup) -> Result<Self, ProcessError> {
        let pid = runtimes::oldest_process(&cgroup.dir)?
            .ok_or_else(|| ProcessError::NoProcess(cgroup.dir.clone()))?;
        Self::of_process(fs, pid, cgroup)
    }

    /// Pins process `pid` (which must be in `cgroup` or below it) as the
    /// process whose namespaces and root are used (`pid:N` targets).
    pub fn of_process(fs: &CgroupFs, pid: i32, cgroup: &Cgroup) -> Result<Self, ProcessError> {
        let pidfd = pidfd_open(pid)?;
        let root_path = PathBuf::from(format!("/proc/{pid}/root"));
        let root = open(
            &root_path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| ProcessError::Sys {
            call: "open",
            what: root_path.display().to_string(),
            errno,
        })?;
        let init = InitProcess {
            pid,
            pidfd,
            root,
            cgroup_dir: cgroup.dir.clone(),
        };
        // /proc/<pid>/cgroup is read after the pidfd was opened: if the
        // process is alive afterwards, it is the process we pinned. The
        // path is then checked to be the same cgroup still (its id): the
        // process was at that path when read, the path has held that
        // cgroup since (ids are never reused, cgroup2 has no rename), so
        // it was in this cgroup, not one created again under its name.
        let inside =
            fs.pid_is_under(pid, &cgroup.dir) && crate::cgroup::is_cgroup(&cgroup.dir, cgroup.id);
        init.check_alive()?;
        if !inside {
            return Err(ProcessError::LeftCgroup {
                pid,
                cgroup: cgroup.dir.clone(),
            });
        }
        tracing::debug!(pid, cgroup = %cgroup.dir.display(), "pinned container init");
        Ok(init)
    }

    /// The init's PID (in ctdev's PID namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The container's root directory (an `O_PATH` fd of `/proc/<pid>/root`).
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// `/proc/<pid>/root`, for messages.
    pub fn root_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// Fails with [`ProcessError::Exited`] if the init process is gone.
    pub fn check_alive(&self) -> Result<(), ProcessError> {
        // SAFETY: pidfd_send_signal with a valid pidfd, signal 0 (existence
        // check only), a null siginfo and no flags.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match Errno::result(ret) {
            Ok(_) => Ok(()),
            Err(Errno::ESRCH) => Err(ProcessError::Exited {
                pid: self.pid,
                cgroup: self.cgroup_dir.clone(),
            }),
            Err(errno) => Err(ProcessError::Sys {
                call: "pidfd_send_signal",
                what: format!("pid {}", self.pid),
                errno,
            }),
        }
    }

    /// Opens the init's network namespace (then checks it is still alive).
    pub fn open_netns(&self) -> Result<OwnedFd, ProcessError> {
        let path = PathBuf::from(format!("/proc/{}/ns/net", self.pid));
        let fd =
            open(&path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| {
                ProcessError::Sys {
                    call: "open",
                    what: path.display().to_string(),
                    errno,
                }
            })?;
        self.check_alive()?;
        Ok(fd)
    }

    /// The host uid and gid of the container's root user: the outside ids
    /// of inside id 0 in `/proc/<pid>/{uid,gid}_map` (identity without a
    /// user namespace, where the map is `0 0 4294967295`).
    pub fn root_ids(&self) -> Result<(u32, u32), ProcessError> {
        let read = |file: &str| -> Result<u32, ProcessError> {
            let path = PathBuf::from(format!("/proc/{}/{file}", self.pid));
            let text = crate::fsio::read_small(&path).map_err(|source| ProcessError::Read {
                path: path.clone(),
                source,
            })?;
            outside_id_of(&text, 0).ok_or(ProcessError::RootUnmapped { path })
        };
        let ids = (read("uid_map")?, read("gid_map")?);
        self.check_alive()?;
        Ok(ids)
    }

    /// Whether the process shares its `kind` namespace (`mnt`, `net`) with
    /// ctdev itself or with PID 1: then it is the host's, not a container's.
    pub fn shares_host_ns(&self, kind: &str) -> Result<bool, ProcessError> {
        use std::os::unix::fs::MetadataExt;
        let id = |path: String| -> Result<(u64, u64), ProcessError> {
            fs::metadata(&path)
                .map(|m| (m.dev(), m.ino()))
                .map_err(|source| ProcessError::Read {
                    path: PathBuf::from(path),
                    source,
                })
        };
        let own = id(format!("/proc/{}/ns/{kind}", self.pid))?;
        self.check_alive()?;
        if own == id(format!("/proc/self/ns/{kind}"))? {
            return Ok(true);
        }
        // PID 1's namespaces may be unreadable (ctdev in a sandbox whose
        // PID 1 is not ours to inspect): then ctdev's own are the host's.
        Ok(id(format!("/proc/1/ns/{kind}")).is_ok_and(|one| one == own))
    }

    /// The cgroup directory the init was found in.
    pub fn cgroup_dir(&self) -> &Path {
        &self.cgroup_dir
    }
}

/// `pidfd_open(pid, 0)`.
fn pidfd_open(pid: i32) -> Result<OwnedFd, ProcessError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    match Errno::result(ret) {
        // SAFETY: the kernel returned a new, owned file descriptor.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(Errno::ESRCH) => Err(ProcessError::Exited {
            pid,
            cgroup: PathBuf::new(),
        }),
        Err(errno) => Err(ProcessError::Sys {
            call: "pidfd_open",
            what: format!("pid {pid}"),
            errno,
        }),
    }
}

/// The outside id of `inside` in a `uid_map`/`gid_map` text
/// (`INSIDE OUTSIDE COUNT` per line).
pub(crate) fn outside_id_of(map: &str, inside: u32) -> Option<u32> {
    map.lines().find_map(|line| {
        let mut f = line.split_whitespace().map(|t| t.parse::<u64>().ok());
        let (start, outside, count) = (f.next()??, f.next()??, f.next()??);
        let inside = u64::from(inside);
        (inside >= start && inside < start + count)
            .then(|| u32::try_from(outside + (inside - start)).ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_root_through_uid_map() {
        assert_eq!(
            outside_id_of("         0          0 4294967295\n", 0),
            Some(0)
        );
        assert_eq!(outside_id_of("0 100000 65536\n", 0), Some(100000));
        assert_eq!(
            outside_id_of("1000 1000 1\n0 100000 1000\n", 0),
            Some(100000)
        );
        assert_eq!(outside_id_of("1 100001 65535\n", 0), None);
        assert_eq!(outside_id_of("", 0), None);
    }
}
