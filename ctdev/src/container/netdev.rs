//! Network interfaces: moving one into a container's network namespace and
//! back, with rtnetlink (no `ip` subprocess).
//!
//! Each move is one `RTM_SETLINK` carrying both the target namespace
//! (`IFLA_NET_NS_FD`) and, when renaming, the new name (`IFLA_IFNAME`): the
//! kernel moves and renames in one step, or does neither (e.g. `EEXIST` when
//! the name is taken in the target namespace).
//!
//! A netlink socket talks to the namespace it was created in. Moving out
//! therefore runs on a dedicated thread that first `setns()`es into the
//! container's netns (only that thread changes namespace), opens the socket
//! there, and names the host netns by an fd opened beforehand.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use futures_util::TryStreamExt;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::Mode;
use rtnetlink::LinkUnspec;

/// Why an interface could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    /// Not a usable interface name.
    #[error("invalid interface name {name:?}: {reason}")]
    BadName {
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No interface of that name in the namespace searched.
    #[error("no network interface {name:?} in {netns}")]
    NotFound {
        name: String,
        /// Which namespace (`ctdev's network namespace`, `the container's ...`).
        netns: String,
    },
    /// A syscall failed.
    #[error("{call} {what} failed: {errno}")]
    Sys {
        call: &'static str,
        /// What it was applied to.
        what: String,
        errno: Errno,
    },
    /// A netlink request failed.
    #[error("netlink {op} of {name:?} failed: {reason}")]
    Netlink {
        /// The request (`get link`, `move`).
        op: &'static str,
        name: String,
        /// The kernel's answer.
        reason: String,
    },
    /// The worker thread could not run.
    #[error("netlink worker thread: {0}")]
    Worker(String),
}

/// Checks an interface name as the kernel would (`dev_valid_name`).
pub(crate) fn check_name(name: &str) -> Result<(), NetdevError> {
    let bad = |reason| {
        Err(NetdevError::BadName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() >= libc::IFNAMSIZ {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return bad("contains '/', ':', whitespace or NUL");
    }
    Ok(())
}

/// Whether `name` is a network interface in ctdev's own network namespace
/// (a name without `/` that `/sys/class/net` lists), as lxc-device decides.
pub(crate) fn is_host_interface(name: &str) -> bool {
    !name.starts_with('/')
        && check_name(name).is_ok()
        && Path::new("/sys/class/net").join(name).exists()
}

/// Opens the network namespace of the calling thread (to name it as a target).
pub(crate) fn open_own_netns() -> Result<OwnedFd, NetdevError> {
    let path = "/proc/thread-self/ns/net";
    open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| {
        NetdevError::Sys {
            call: "open",
            what: path.into(),
            errno,
        }
    })
}

/// Moves interface `name` from ctdev's netns into the netns `target`,
/// renamed to `new_name` when given.
pub(crate) fn move_into(
    name: &str,
    target: BorrowedFd<'_>,
    new_name: &str,
) -> Result<(), NetdevError> {
    check_name(name)?;
    check_name(new_name)?;
    let target = dup(target)?;
    let (name, new_name) = (name.to_string(), new_name.to_string());
    run_on_thread(None, move || async move {
        let handle = connect()?;
        let index = link_index(&handle, &name, "ctdev's network namespace").await?;
        set_netns(&handle, index, target.as_raw_fd(), &name, &new_name).await
    })
    .map(|_| ())
}

/// From inside the netns `container`, moves interface `name` to the netns
/// `host`, renamed to `host_name`.
pub(crate) fn move_out(
    container: BorrowedFd<'_>,
    name: &str,
    host: BorrowedFd<'_>,
    host_name: &str,
) -> Result<(), NetdevError> {
    check_name(name)?;
    check_name(host_name)?;
    let host = dup(host)?;
    let enter = dup(container)?;
    let (name, host_name) = (name.to_string(), host_name.to_string());
    run_on_thread(Some(enter), move || async move {
        let handle = connect()?;
        let index = link_index(&handle, &name, "the container's network namespace").await?;
        set_netns(&handle, index, host.as_raw_fd(), &name, &host_name).await
    })
    .map(|_| ())
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, NetdevError> {
    fd.try_clone_to_owned().map_err(|e| NetdevError::Sys {
        call: "dup",
        what: "netns fd".into(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)),
    })
}

/// Runs an async netlink job on a fresh thread with its own current-thread
/// runtime, first entering the netns `enter` when given. The thread ends
/// with the job, so its namespace change never leaks to other work.
fn run_on_thread<F, Fut, T>(enter: Option<OwnedFd>, job: F) -> Result<T, NetdevError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetdevError>> + 'static,
    T: Send + 'static,
{
    let worker = std::thread::Builder::new()
        .name("ctdev-netlink".into())
        .spawn(move || -> Result<T, NetdevError> {
            if let Some(ns) = enter {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|errno| NetdevError::Sys {
                    call: "setns(CLONE_NEWNET)",
                    what: "the container's network namespace".into(),
                    errno,
                })?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| NetdevError::Worker(format!("tokio runtime: {e}")))?;
            rt.block_on(job())
        })
        .map_err(|e| NetdevError::Worker(e.to_string()))?;
    worker
        .join()
        .map_err(|_| NetdevError::Worker("panicked".into()))?
}

/// A netlink connection in the calling thread's netns; its driver task runs
/// on the current runtime.
fn connect() -> Result<rtnetlink::Handle, NetdevError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetdevError::Sys {
        call: "socket(NETLINK_ROUTE)",
        what: "rtnetlink".into(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn netlink_reason(e: &rtnetlink::Error) -> (Option<i32>, String) {
    match e {
        rtnetlink::Error::NetlinkError(msg) => {
            let code = msg.raw_code().abs();
            (Some(code), Errno::from_raw(code).to_string())
        }
        other => (None, other.to_string()),
    }
}

async fn link_index(
    handle: &rtnetlink::Handle,
    name: &str,
    netns: &str,
) -> Result<u32, NetdevError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(msg.header.index),
        Ok(None) => Err(NetdevError::NotFound {
            name: name.into(),
            netns: netns.into(),
        }),
        Err(e) => match netlink_reason(&e) {
            (Some(libc::ENODEV), _) => Err(NetdevError::NotFound {
                name: name.into(),
                netns: netns.into(),
            }),
            (_, reason) => Err(NetdevError::Netlink {
                op: "get link",
                name: name.into(),
                reason,
            }),
        },
    }
}

async fn set_netns(
    handle: &rtnetlink::Handle,
    index: u32,
    netns_fd: i32,
    name: &str,
    new_name: &str,
) -> Result<bool, NetdevError> {
    let mut msg = LinkUnspec::new_with_index(index).setns_by_fd(netns_fd);
    if new_name != name {
        msg = msg.name(new_name.to_string());
    }
    handle
        .link()
        .set(msg.build())
        .execute()
        .await
        .map_err(|e| NetdevError::Netlink {
            op: "move",
            name: name.into(),
            reason: match netlink_reason(&e) {
                (Some(libc::EEXIST), r) => {
                    format!("{r} (an interface named {new_name:?} already exists there)")
                }
                (_, r) => r,
            },
        })?;
    tracing::info!(name, new_name, "moved network interface");
    Ok(true)
}
