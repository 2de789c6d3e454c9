//! Device discovery: the devices present on the host (sysfs, udev's
//! database) and the host node the daemon hands to `ctdev add`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::rule::DeviceType;

use super::reconcile::OwnedDevice;
use super::uevent::{self, Source};
use super::Daemon;

/// A device as the matcher sees it: uevent properties plus the udev-like
/// ones filled in from udev's database or sysfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// DEVPATH (`/devices/...`, without `/sys`).
    pub devpath: String,
    /// Every property (uevent's KEY=VALUE, then ID_* filled in).
    pub props: BTreeMap<String, String>,
    /// udev tags.
    pub tags: BTreeSet<String>,
    /// Whether udev has processed it (an event from udevd, or a record in
    /// udev's database).
    pub initialized: bool,
}

impl DeviceInfo {
    /// The value of property `key` (`SUBSYSTEM`, `ID_SERIAL`, …), if set.
    pub fn prop(&self, key: &str) -> Option<&String> {
        self.props.get(key)
    }

    /// DEVNAME without `/dev/`.
    pub fn devname(&self) -> Option<&str> {
        self.prop("DEVNAME")
            .map(|n| n.strip_prefix("/dev/").unwrap_or(n))
    }

    /// udev's names of the device (DEVLINKS: `/dev/serial/by-id/…`,
    /// `/dev/disk/by-id/…`), absolute.
    pub fn links(&self) -> Vec<String> {
        self.prop("DEVLINKS")
            .map(|l| {
                l.split_whitespace()
                    .filter(|p| p.starts_with("/dev/"))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The udev name to show for the device: a `by-id` link first, else its
    /// first link.
    pub fn udev_name(&self) -> Option<String> {
        let links = self.links();
        links
            .iter()
            .find(|l| l.contains("/by-id/"))
            .or(links.first())
            .cloned()
    }

    /// The device node's type and numbers, when it has one.
    pub fn numbers(&self) -> Option<(DeviceType, u32, u32)> {
        let major = self.prop("MAJOR")?.parse().ok()?;
        let minor = self.prop("MINOR")?.parse().ok()?;
        let t = if self.prop("SUBSYSTEM").map(String::as_str) == Some("block") {
            DeviceType::Block
        } else {
            DeviceType::Char
        };
        Some((t, major, minor))
    }

    /// A network interface name (SUBSYSTEM=net), if this is one.
    pub fn interface(&self) -> Option<&str> {
        (self.prop("SUBSYSTEM").map(String::as_str) == Some("net"))
            .then(|| self.prop("INTERFACE").map(String::as_str))
            .flatten()
    }

    /// From uevent properties; fills in udev-only properties from `udev_data`
    /// (`/run/udev/data`) or, failing that, from sysfs under `sys`.
    pub fn new(props: BTreeMap<String, String>, sys: &Path, udev_data: &Path) -> DeviceInfo {
        let devpath = props.get("DEVPATH").cloned().unwrap_or_default();
        let initialized = props.contains_key("USEC_INITIALIZED");
        let mut info = DeviceInfo {
            devpath,
            props,
            tags: BTreeSet::new(),
            initialized,
        };
        for key in ["TAGS", "CURRENT_TAGS"] {
            if let Some(t) = info.props.get(key) {
                info.tags
                    .extend(t.split(':').filter(|s| !s.is_empty()).map(String::from));
            }
        }
        if let Some((t, ma, mi)) = info.numbers() {
            let file = udev_data.join(format!("{}{ma}:{mi}", t.letter()));
            if let Ok(text) = fs::read_to_string(&file) {
                info.initialized = true;
                let mut links = Vec::new();
                for line in text.lines() {
                    if let Some(kv) = line.strip_prefix("E:") {
                        if let Some((k, v)) = kv.split_once('=') {
                            info.props.entry(k.into()).or_insert_with(|| v.into());
                        }
                    } else if let Some(tag) = line.strip_prefix("G:").or(line.strip_prefix("Q:")) {
                        info.tags.insert(tag.into());
                    } else if let Some(link) = line.strip_prefix("S:") {
                        // Relative to /dev in the database, absolute in events.
                        links.push(format!("/dev/{link}"));
                    }
                }
                if !links.is_empty() {
                    info.props
                        .entry("DEVLINKS".into())
                        .or_insert_with(|| links.join(" "));
                }
            }
        }
        if !info.props.contains_key("ID_VENDOR_ID") {
            if let Some(usb) = usb_ancestor(sys, &info.devpath) {
                let attr = |n: &str| {
                    fs::read_to_string(usb.join(n))
                        .ok()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                };
                let mut set = |k: &str, v: Option<String>| {
                    if let Some(v) = v {
                        info.props.entry(k.into()).or_insert(v);
                    }
                };
                set("ID_VENDOR_ID", attr("idVendor"));
                set("ID_MODEL_ID", attr("idProduct"));
                set("ID_SERIAL_SHORT", attr("serial"));
                let clean = |s: String| s.split_whitespace().collect::<Vec<_>>().join("_");
                let vendor = attr("manufacturer").map(clean).or(attr("idVendor"));
                let model = attr("product").map(clean).or(attr("idProduct"));
                if let (Some(v), Some(m)) = (vendor, model) {
                    let serial = attr("serial").map(|s| format!("_{s}")).unwrap_or_default();
                    set("ID_SERIAL", Some(format!("{v}_{m}{serial}")));
                }
            }
        }
        info
    }
}

/// The nearest directory at or above `/sys{devpath}` with `idVendor` and
/// `idProduct` (a USB device).
fn usb_ancestor(sys: &Path, devpath: &str) -> Option<PathBuf> {
    let mut dir = sys.join(devpath.trim_start_matches('/'));
    while dir.starts_with(sys) && dir != sys {
        if dir.join("idVendor").is_file() && dir.join("idProduct").is_file() {
            return Some(dir);
        }
        if !dir.pop() {
            break;
        }
    }
    None
}

/// Whether device `t major:minor` exists on the host now, from sysfs
/// (`SYS/dev/{block,char}/MAJOR:MINOR`): a stat, never an open, so asking
/// cannot create a block device through legacy autoload.
pub fn device_present(sys: &Path, t: DeviceType, major: u32, minor: u32) -> bool {
    let kind = if t == DeviceType::Block {
        "block"
    } else {
        "char"
    };
    fs::symlink_metadata(sys.join("dev").join(kind).join(format!("{major}:{minor}"))).is_ok()
}

impl Daemon {
    // ---- devices -----------------------------------------------------------

    /// Every device with a node (`/sys/dev/{block,char}`) or an interface
    /// (`/sys/class/net`) present now.
    pub(super) fn scan_devices(&mut self) {
        let sys = self.opts.sys.clone();
        // A periodic pass on a host whose device list is the one the last
        // scan read needs no scan (the events kept `devices` current): an
        // idle resync costs three directory reads here, not a sysfs walk.
        let listing: BTreeSet<std::ffi::OsString> = ["dev/block", "dev/char", "class/net"]
            .iter()
            .filter_map(|d| fs::read_dir(sys.join(d)).ok())
            .flat_map(|entries| entries.flatten().map(|e| e.path().into_os_string()))
            .collect();
        if !std::mem::take(&mut self.rescan) && self.sys_listing.as_ref() == Some(&listing) {
            return;
        }
        self.sys_listing = Some(listing);
        let mut found = BTreeMap::new();
        for kind in ["block", "char"] {
            let Ok(entries) = fs::read_dir(sys.join("dev").join(kind)) else {
                continue;
            };
            for e in entries.flatten() {
                if let Some(info) = self.read_sysfs_device(&e.path()) {
                    // With udevd, a new device udev has not processed yet
                    // comes with its udev event (owner, mode and links set);
                    // one known already (passed before udevd started) stays.
                    if self.source == Source::Udev
                        && !info.initialized
                        && !self.devices.contains_key(&info.devpath)
                    {
                        tracing::debug!(devpath = %info.devpath, "not processed by udev yet: waiting for its event");
                        continue;
                    }
                    found.insert(info.devpath.clone(), info);
                }
            }
        }
        if let Ok(entries) = fs::read_dir(sys.join("class/net")) {
            for e in entries.flatten() {
                if e.file_name() == "lo" {
                    continue;
                }
                if let Some(info) = self.read_sysfs_device(&e.path()) {
                    found.insert(info.devpath.clone(), info);
                }
            }
        }
        self.devices = found;
    }

    pub(super) fn read_sysfs_device(&self, link: &Path) -> Option<DeviceInfo> {
        let real = fs::canonicalize(link).ok()?;
        let devpath = Path::new("/").join(real.strip_prefix(&self.opts.sys).ok()?);
        let subsystem = fs::read_link(real.join("subsystem")).ok()?;
        let subsystem = subsystem.file_name()?.to_str()?.to_string();
        let text = fs::read_to_string(real.join("uevent")).ok()?;
        let props = uevent::parse_sysfs(&text, devpath.to_str()?, &subsystem);
        Some(DeviceInfo::new(props, &self.opts.sys, &self.opts.udev_data))
    }

    /// The host node to hand to `ctdev add` for a device: `/dev/DEVNAME`
    /// when it is that device, else a node the daemon makes in its state
    /// directory from the event's numbers.
    pub(super) fn host_node(&self, dev: &DeviceInfo) -> Option<PathBuf> {
        let (t, major, minor) = dev.numbers()?;
        let name = dev.devname()?;
        // A node is only ever made (or handed on) for a device present now:
        // a node of a gone block device, once opened, can make the kernel
        // create the device again (CONFIG_BLOCK_LEGACY_AUTOLOAD).
        if !self.present(t, major, minor) {
            tracing::debug!(
                device = name,
                "{}{major}:{minor} is gone: no node",
                t.letter()
            );
            return None;
        }
        let host = Path::new("/dev").join(name);
        if let Ok(m) = fs::metadata(&host) {
            let ft = m.file_type();
            let is_type = match t {
                DeviceType::Block => ft.is_block_device(),
                _ => ft.is_char_device(),
            };
            let rdev = m.rdev();
            if is_type && libc::major(rdev) == major && libc::minor(rdev) == minor {
                return Some(host);
            }
        }
        let private = self.node_dir.join(format!("{}{major}:{minor}", t.letter()));
        if fs::symlink_metadata(&private).is_ok() {
            return Some(private);
        }
        let kind = if t == DeviceType::Block {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            nix::sys::stat::SFlag::S_IFCHR
        };
        let made = fs::create_dir_all(&self.node_dir).is_ok()
            && nix::sys::stat::mknod(
                &private,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(major.into(), minor.into()),
            )
            .is_ok();
        if !made {
            tracing::warn!(
                device = name,
                "no host node /dev/{name} and cannot make one in {}",
                self.node_dir.display()
            );
            return None;
        }
        // Gone while the node was made: the node goes too.
        if !self.present(t, major, minor) {
            let _ = fs::remove_file(&private);
            tracing::debug!(
                device = name,
                "{}{major}:{minor} left while its node was made",
                t.letter()
            );
            return None;
        }
        Some(private)
    }

    /// Whether the device `t major:minor` exists on the host now
    /// (`/sys/dev/{block,char}/MAJOR:MINOR`; a stat, never an open).
    pub(super) fn present(&self, t: DeviceType, major: u32, minor: u32) -> bool {
        device_present(&self.opts.sys, t, major, minor)
    }

    /// Whether the device a hotplug record stands for is still there: its
    /// DEVPATH is still known and its numbers still exist in sysfs.
    pub(super) fn still_present(&self, o: &OwnedDevice) -> bool {
        let Some(devpath) = &o.devpath else {
            return true;
        };
        let Some(dev) = self.devices.get(devpath) else {
            return false;
        };
        if o.interface {
            return true;
        }
        match dev.numbers() {
            Some((t, major, minor)) => self.present(t, major, minor),
            None => false,
        }
    }

    /// udev's names (DEVLINKS) of the device whose node `path` is.
    pub(super) fn links_of_node(&self, path: &Path) -> Vec<String> {
        let Ok(m) = fs::metadata(path) else {
            return Vec::new();
        };
        let t = if m.file_type().is_block_device() {
            DeviceType::Block
        } else {
            DeviceType::Char
        };
        let want = (t, libc::major(m.rdev()), libc::minor(m.rdev()));
        self.devices
            .values()
            .find(|d| d.numbers() == Some(want))
            .map(|d| d.links())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| Path::new(l) != path)
            .collect()
    }

    /// The owner and group udev gave the host node `host`, when udevd
    /// processes events (`None`: the container's root owns the node).
    pub(super) fn udev_owner(&self, host: &Path) -> Option<(u32, u32)> {
        if self.source != Source::Udev || !host.starts_with("/dev") {
            return None;
        }
        fs::metadata(host).ok().map(|m| (m.uid(), m.gid()))
    }
}
