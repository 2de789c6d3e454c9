//! Per-container attachment: a bpf link from a program instance to the
//! container's cgroup, pinned at `<root>/links/<policy id>` so it outlives
//! the ctdev process and a later ctdev can find it again.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use super::loader::ProgramError;
use super::pins::PinRoot;
use super::sys::{self, LinkInfo, SysError, BPF_CGROUP_DEVICE, BPF_LINK_TYPE_CGROUP};
use crate::cgroup::Cgroup;

/// Why an attachment could not be made, found or removed.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// A bpf syscall failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The program instance could not be used.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The kernel attached the link somewhere else than asked (should not happen).
    #[error("link for {cgroup} reports cgroup id {got}, expected {want}; detached it again")]
    WrongCgroup {
        /// The cgroup directory.
        cgroup: PathBuf,
        /// The id the kernel reported.
        got: u64,
        /// The id we computed.
        want: u64,
    },
    /// Something that is not a cgroup device link is pinned where ctdev's link should be.
    #[error("{path} is not a ctdev cgroup device link; refusing to touch it")]
    Foreign {
        /// The pin path.
        path: PathBuf,
    },
    /// The cgroup already has the kernel's maximum of device programs.
    #[error("{cgroup} already has {max} device programs attached, the kernel's limit per cgroup (BPF_CGROUP_MAX_PROGS): detach one (see `bpftool cgroup show {cgroup}`); nothing was attached or pinned")]
    TooManyPrograms {
        /// The cgroup directory.
        cgroup: PathBuf,
        max: u32,
    },
    /// Removing a pin failed.
    #[error("cannot remove pin {path}: {source}")]
    Unpin {
        /// The pin path.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A pinned link, opened.
#[derive(Debug)]
pub(crate) struct PinnedLink {
    /// The link fd.
    pub fd: OwnedFd,
    /// Where it is pinned.
    pub pin: PathBuf,
    /// What the kernel says about it.
    pub info: LinkInfo,
}

impl PinnedLink {
    /// Whether the link still attaches a program to the cgroup `policy_id`.
    /// A link goes defunct when its cgroup is removed.
    pub(crate) fn is_live_for(&self, policy_id: u64) -> bool {
        self.info.is_live_for(policy_id)
    }
}

/// Attaches `program` to `cgroup` and pins the link. If pinning fails the
/// link is dropped, which detaches it: either both happen or neither.
pub(crate) fn attach(
    program: BorrowedFd<'_>,
    cgroup: &Cgroup,
    pins: &PinRoot,
) -> Result<PinnedLink, AttachmentError> {
    let cgroup_fd = cgroup.open().map_err(|e| SysError {
        call: "BPF_LINK_CREATE",
        what: cgroup.dir.display().to_string(),
        source: io::Error::other(e.to_string()),
    })?;
    let link = sys::link_create_cgroup_device(program, cgroup_fd.as_fd(), &cgroup.dir).map_err(
        |e| match e.errno() {
            Some(libc::E2BIG) => AttachmentError::TooManyPrograms {
                cgroup: cgroup.dir.clone(),
                max: 64,
            },
            _ => e.into(),
        },
    )?;
    let info = sys::link_info(link.as_fd(), &cgroup.dir)?;
    if info.cgroup_id != cgroup.id {
        return Err(AttachmentError::WrongCgroup {
            cgroup: cgroup.dir.clone(),
            got: info.cgroup_id,
            want: cgroup.id,
        });
    }
    // A crash here closes the only link fd: the kernel detaches it.
    crate::failpoint!("attach.after_link_create");
    let pin = pins.link(cgroup.id);
    sys::obj_pin(link.as_fd(), &pin)?;
    // Attached, verified and pinned: a scope program above may now leave
    // the decision to this container's own program.
    if let Err(e) = super::scope::mark_own_policy(pins, cgroup.id) {
        tracing::warn!(cgroup = %cgroup.dir.display(), "scope default stays in force: {e}");
    }
    Ok(PinnedLink {
        fd: link,
        pin,
        info,
    })
}

/// The object pinned at `pin`, if any (`Foreign` when the kernel says it
/// is not a bpf object ctdev may open).
fn get(pin: PathBuf) -> Result<Option<(OwnedFd, PathBuf)>, AttachmentError> {
    // No stat first: BPF_OBJ_GET says ENOENT when there is no pin (one
    // system call less per container in `list`).
    match sys::obj_get(&pin) {
        Ok(fd) => Ok(Some((fd, pin))),
        Err(e) => match e.errno() {
            Some(libc::ENOENT) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EPERM) | Some(libc::EACCES) => {
                Err(AttachmentError::Foreign { path: pin })
            }
            _ => Err(AttachmentError::Sys(e)),
        },
    }
}

/// Opens the link pinned for `policy_id`, if there is one, and asks the
/// kernel what it attaches (`BPF_OBJ_GET_INFO_BY_FD`, which on a cgroup
/// link waits for the kernel's `cgroup_mutex`: see [`pinned`]).
pub(crate) fn open(pins: &PinRoot, policy_id: u64) -> Result<Option<PinnedLink>, AttachmentError> {
    let Some((fd, pin)) = get(pins.link(policy_id))? else {
        return Ok(None);
    };
    let info = sys::link_info(fd.as_fd(), &pin)
        .map_err(|_| AttachmentError::Foreign { path: pin.clone() })?;
    if info.link_type != BPF_LINK_TYPE_CGROUP || info.attach_type != BPF_CGROUP_DEVICE {
        return Err(AttachmentError::Foreign { path: pin });
    }
    Ok(Some(PinnedLink { fd, pin, info }))
}

/// Whether a link is pinned for `policy_id`, without asking the kernel
/// what the link attaches: `BPF_OBJ_GET` and the fd's kind, neither of
/// which waits for `cgroup_mutex` (every cgroup `mkdir`, `rmdir` and
/// program attach on the host holds it, for tens of milliseconds under
/// container churn). ctdev removes a link's pin before it detaches the
/// link ([`detach`]), so a pin it left stands for an attached link. What
/// this does not see: a link detached by another root process through
/// ctdev's pin (`BPF_LINK_DETACH`), which [`open`] reports as detached.
pub(crate) fn pinned(pins: &PinRoot, policy_id: u64) -> Result<bool, AttachmentError> {
    let Some((fd, pin)) = get(pins.link(policy_id))? else {
        return Ok(false);
    };
    match sys::fd_is_bpf_link(fd.as_fd()) {
        Some(true) => Ok(true),
        Some(false) => Err(AttachmentError::Foreign { path: pin }),
        // No /proc to tell: the kernel's word, as `open` asks for it.
        None => {
            drop(fd);
            Ok(open(pins, policy_id)?.is_some())
        }
    }
}

/// Detaches the program now (even if another process holds the link open)
/// and removes the pin: the pin first, so that a pin ctdev leaves always
/// stands for an attached link ([`pinned`]). Killed between the two, the
/// link is detached when this process's fd, then its last reference
/// (the pin gone), is closed by the kernel.
pub(crate) fn detach(link: PinnedLink) -> Result<(), AttachmentError> {
    // Before the container's program goes, a scope program above covers
    // the container again (fail-closed). The pin's name is the policy id.
    let policy_id = link
        .pin
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<u64>().ok());
    if let (Some(id), Some(root)) = (policy_id, link.pin.parent().and_then(|l| l.parent())) {
        if let Err(e) = super::scope::unmark(&PinRoot::new(root), id) {
            tracing::warn!(policy_id = id, "cannot remove the scope mark: {e}");
        }
    }
    remove_pin(&link.pin)?;
    crate::failpoint!("detach.after_unpin");
    if link.info.prog_id != 0 {
        if let Err(e) = sys::link_detach(link.fd.as_fd(), &link.pin) {
            // ENOLINK: already detached (its cgroup was removed).
            if e.errno() != Some(libc::ENOLINK) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Removes a pin; a pin that is already gone is fine.
pub(crate) fn remove_pin(pin: &std::path::Path) -> Result<(), AttachmentError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AttachmentError::Unpin {
            path: pin.to_path_buf(),
            source,
        }),
    }
}
