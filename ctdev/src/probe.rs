//! Real kernel verdicts: a forked child joins a cgroup and tries one access
//! (open, mknod or access(2)); the errno it got is the answer.
//!
//! Used by `ctdev demo`, by the integration tests, and (later) by `ctdev
//! check`. The child runs only async-signal-safe libc calls, so it is safe to
//! fork from a multi-threaded process such as the test harness.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use crate::rule::DeviceType;

/// Exit code of a child that could not join the cgroup.
const EXIT_JOIN_FAILED: i32 = 200;
/// Exit code of a child that could not prepare its private scratch node.
const EXIT_SETUP_FAILED: i32 = 201;

/// One access to try from inside a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOp {
    /// `open(path)` for reading, writing, or both.
    Open {
        /// The device node.
        path: PathBuf,
        /// Ask for read access.
        read: bool,
        /// Ask for write access.
        write: bool,
    },
    /// `mknod(path)` of a node of that type and numbers (removed again on success).
    Mknod {
        /// Where to create it (must not exist).
        path: PathBuf,
        /// Block or char.
        dev_type: DeviceType,
        major: u32,
        minor: u32,
    },
    /// `access(path, F_OK)`: an access request with no access bits.
    Exists {
        /// The device node.
        path: PathBuf,
    },
    /// The device controller's verdict for a device by its numbers, without
    /// opening it (no driver side effects) and without a node on the host:
    /// the child mounts a private tmpfs on `scratch` (in a mount namespace of
    /// its own), creates the node there, joins the cgroup, then calls
    /// `access(R_OK|W_OK)`, or `mknod()` for the mknod check.
    Device {
        /// An empty directory to mount the private tmpfs on.
        scratch: PathBuf,
        /// Block or char.
        dev_type: DeviceType,
        major: u32,
        minor: u32,
        /// Ask for read access.
        read: bool,
        /// Ask for write access.
        write: bool,
        /// Check mknod instead of read/write.
        mknod: bool,
    },
}

impl ProbeOp {
    /// `open(path, O_RDONLY)`.
    pub fn read(path: impl Into<PathBuf>) -> Self {
        ProbeOp::Open {
            path: path.into(),
            read: true,
            write: false,
        }
    }
    /// `open(path, O_WRONLY)`.
    pub fn write(path: impl Into<PathBuf>) -> Self {
        ProbeOp::Open {
            path: path.into(),
            read: false,
            write: true,
        }
    }
    /// `open(path, O_RDWR)`.
    pub fn read_write(path: impl Into<PathBuf>) -> Self {
        ProbeOp::Open {
            path: path.into(),
            read: true,
            write: true,
        }
    }
}

/// Why a probe could not give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// fork or wait failed.
    #[error("probe: {call} failed: {errno}")]
    Process { call: &'static str, errno: Errno },
    /// The child could not prepare its private tmpfs and scratch node.
    #[error(
        "probe: cannot prepare a private scratch node under {0} (mount namespace, tmpfs, mknod)"
    )]
    Setup(PathBuf),
    /// The child could not move itself into the cgroup.
    #[error("probe: cannot join cgroup {0} (is it a threaded or domain-invalid cgroup?)")]
    Join(PathBuf),
    /// A path contained a NUL byte.
    #[error("probe: path {0:?} contains a NUL byte")]
    BadPath(PathBuf),
    /// The child died by a signal.
    #[error("probe child ended abnormally: {0:?}")]
    Abnormal(String),
}

fn cstr(p: &Path) -> Result<CString, ProbeError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| ProbeError::BadPath(p.to_path_buf()))
}

/// Runs `op` from a new process inside the cgroup directory `cgroup_dir`.
/// `Ok(Ok(()))`: the kernel allowed it; `Ok(Err(errno))`: it failed with
/// errno (EPERM is the device controller's "denied").
pub fn probe(cgroup_dir: &Path, op: &ProbeOp) -> Result<Result<(), Errno>, ProbeError> {
    probe_in(cgroup_dir, None, op)
}

/// [`probe`], the process also joining the cgroup v1 directory `v1_dir`
/// (a hybrid host's `devices` cgroup, which judges too) before the access.
pub fn probe_in(
    cgroup_dir: &Path,
    v1_dir: Option<&Path>,
    op: &ProbeOp,
) -> Result<Result<(), Errno>, ProbeError> {
    let procs = cstr(&cgroup_dir.join("cgroup.procs"))?;
    let v1_procs = v1_dir.map(|d| cstr(&d.join("cgroup.procs"))).transpose()?;
    // Everything the child needs is prepared before fork.
    enum Prepared {
        Open(CString, libc::c_int),
        Mknod(CString, libc::mode_t, libc::dev_t),
        Exists(CString),
        Device {
            scratch: CString,
            node: CString,
            mode: libc::mode_t,
            dev: libc::dev_t,
            check: libc::c_int,
            mknod: bool,
        },
    }
    let prepared = match op {
        ProbeOp::Open { path, read, write } => {
            let mode = match (read, write) {
                (true, true) => libc::O_RDWR,
                (false, true) => libc::O_WRONLY,
                _ => libc::O_RDONLY,
            };
            Prepared::Open(
                cstr(path)?,
                mode | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
            )
        }
        ProbeOp::Mknod {
            path,
            dev_type,
            major,
            minor,
        } => {
            let kind = if *dev_type == DeviceType::Block {
                libc::S_IFBLK
            } else {
                libc::S_IFCHR
            };
            Prepared::Mknod(cstr(path)?, kind | 0o600, libc::makedev(*major, *minor))
        }
        ProbeOp::Exists { path } => Prepared::Exists(cstr(path)?),
        ProbeOp::Device {
            scratch,
            dev_type,
            major,
            minor,
            read,
            write,
            mknod,
        } => {
            let kind = if *dev_type == DeviceType::Block {
                libc::S_IFBLK
            } else {
                libc::S_IFCHR
            };
            let mut check = 0;
            if *read {
                check |= libc::R_OK;
            }
            if *write {
                check |= libc::W_OK;
            }
            Prepared::Device {
                scratch: cstr(scratch)?,
                node: cstr(&scratch.join("node"))?,
                mode: kind | 0o600,
                dev: libc::makedev(*major, *minor),
                check,
                mknod: *mknod,
            }
        }
    };

    // SAFETY: the child only calls async-signal-safe functions (unshare,
    // mount, open, write, close, mknod, unlink, access, _exit) on data
    // prepared before fork.
    match unsafe { fork() }.map_err(|errno| ProbeError::Process {
        call: "fork",
        errno,
    })? {
        ForkResult::Child => {
            // SAFETY: async-signal-safe libc calls on valid NUL-terminated strings.
            unsafe {
                if let Prepared::Device {
                    scratch,
                    node,
                    mode,
                    dev,
                    mknod,
                    ..
                } = &prepared
                {
                    // Private mount namespace and tmpfs: nothing is visible
                    // outside this process, nothing to clean up.
                    let ok = libc::unshare(libc::CLONE_NEWNS) == 0
                        && libc::mount(
                            c"none".as_ptr(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) == 0
                        && libc::mount(
                            c"tmpfs".as_ptr(),
                            scratch.as_ptr(),
                            c"tmpfs".as_ptr(),
                            libc::MS_NOSUID,
                            c"mode=0700".as_ptr().cast(),
                        ) == 0
                        && (*mknod || libc::mknod(node.as_ptr(), *mode, *dev) == 0);
                    if !ok {
                        libc::_exit(EXIT_SETUP_FAILED);
                    }
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(EXIT_JOIN_FAILED);
                }
                libc::close(fd);
                if let Some(v1) = &v1_procs {
                    let fd = libc::open(v1.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        libc::_exit(EXIT_JOIN_FAILED);
                    }
                    libc::close(fd);
                }
                let ok = match &prepared {
                    Prepared::Open(path, flags) => {
                        let fd = libc::open(path.as_ptr(), *flags);
                        if fd >= 0 {
                            libc::close(fd);
                        }
                        fd >= 0
                    }
                    Prepared::Mknod(path, mode, dev) => {
                        let r = libc::mknod(path.as_ptr(), *mode, *dev);
                        if r == 0 {
                            libc::unlink(path.as_ptr());
                        }
                        r == 0
                    }
                    Prepared::Exists(path) => libc::access(path.as_ptr(), libc::F_OK) == 0,
                    Prepared::Device {
                        node,
                        mode,
                        dev,
                        check,
                        mknod,
                        ..
                    } => {
                        if *mknod {
                            libc::mknod(node.as_ptr(), *mode, *dev) == 0
                        } else {
                            libc::access(node.as_ptr(), *check) == 0
                        }
                    }
                };
                let code = if ok {
                    0
                } else {
                    (*libc::__errno_location()).clamp(1, 199)
                };
                libc::_exit(code);
            }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(Ok(())),
                Ok(WaitStatus::Exited(_, EXIT_JOIN_FAILED)) => {
                    return Err(ProbeError::Join(cgroup_dir.to_path_buf()))
                }
                Ok(WaitStatus::Exited(_, EXIT_SETUP_FAILED)) => {
                    let scratch = match op {
                        ProbeOp::Device { scratch, .. } => scratch.clone(),
                        _ => PathBuf::new(),
                    };
                    return Err(ProbeError::Setup(scratch));
                }
                Ok(WaitStatus::Exited(_, code)) => return Ok(Err(Errno::from_raw(code))),
                Ok(other) => return Err(ProbeError::Abnormal(format!("{other:?}"))),
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(ProbeError::Process {
                        call: "waitpid",
                        errno,
                    })
                }
            }
        },
    }
}
