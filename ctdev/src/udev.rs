//! udev's names of a device (DEVLINKS: `/dev/serial/by-id/…`,
//! `/dev/disk/by-id/…`) read from udev's database, and made (or removed)
//! as symlinks inside a container ([`crate::container::links`]). Used by
//! `ctdev add/del --links` and by the daemon's `links = true`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroup::{CgroupError, CgroupFs};
use crate::container::links::{ensure_link, remove_link, LinkAction};
use crate::container::nodes::{NodeError, Root};
use crate::container::process::ProcessError;
use crate::container::InitProcess;

/// udev's database.
pub const UDEV_DATA: &str = "/run/udev/data";

/// Why links could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The container's cgroup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Its init process.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A link inside it.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The container shares the host's mount namespace: its /dev is the
    /// host's, where ctdev makes nothing.
    #[error("container {cgroup} shares the host's mount namespace: no udev links are made there")]
    HostMounts {
        /// Its cgroup directory.
        cgroup: PathBuf,
    },
}

/// One link made or removed.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    /// The link in the container (udev's name).
    pub link: String,
    /// The node it points at there.
    pub dest: PathBuf,
    /// What happened.
    pub action: LinkAction,
}

/// udev's names (absolute) of the device node `node` (a node, or a
/// symlink to one) from its record in `udev_data`; none without udevd.
pub fn links_of_node(node: &Path, udev_data: &Path) -> Vec<String> {
    let Ok(m) = fs::metadata(node) else {
        return Vec::new();
    };
    let letter = if m.file_type().is_block_device() {
        'b'
    } else if m.file_type().is_char_device() {
        'c'
    } else {
        return Vec::new();
    };
    let file = udev_data.join(format!(
        "{letter}{}:{}",
        libc::major(m.rdev()),
        libc::minor(m.rdev())
    ));
    fs::read_to_string(file)
        .map(|t| parse_links(&t))
        .unwrap_or_default()
}

/// The `S:` lines of a udev database record, as absolute paths.
pub fn parse_links(record: &str) -> Vec<String> {
    record
        .lines()
        .filter_map(|l| l.strip_prefix("S:"))
        .filter(|l| !l.is_empty())
        .map(|l| format!("/dev/{l}"))
        .collect()
}

/// Makes (`make`) or removes each of `links` in the container of
/// `cgroup_dir` as a symlink to `dest` there. Stops at the first error.
pub fn sync_links(
    fs_: &CgroupFs,
    cgroup_dir: &Path,
    dest: &Path,
    links: &[String],
    make: bool,
) -> Result<Vec<LinkReport>, LinkError> {
    let g = fs_.cgroup(cgroup_dir)?;
    let init = InitProcess::of_cgroup(fs_, &g)?;
    if init.shares_host_ns("mnt")? {
        return Err(LinkError::HostMounts {
            cgroup: cgroup_dir.to_path_buf(),
        });
    }
    let root_path = init.root_path();
    let root = Root {
        fd: init.root(),
        path: &root_path,
    };
    let mut out = Vec::new();
    for l in links {
        let link = Path::new(l);
        let action = if make {
            ensure_link(root, link, dest)?
        } else {
            remove_link(root, link, dest)?
        };
        out.push(LinkReport {
            link: l.clone(),
            dest: dest.to_path_buf(),
            action,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_come_from_s_lines() {
        let rec = "S:serial/by-id/usb-FTDI_A10K-if00-port0\nS:serial/by-path/pci-0:2\nI:123\nE:ID_SERIAL=FTDI_A10K\nG:systemd\n";
        assert_eq!(
            parse_links(rec),
            [
                "/dev/serial/by-id/usb-FTDI_A10K-if00-port0",
                "/dev/serial/by-path/pci-0:2"
            ]
        );
        assert!(parse_links("I:1\n").is_empty());
        assert!(links_of_node(Path::new("/nonexistent"), Path::new("/run/udev/data")).is_empty());
    }
}
