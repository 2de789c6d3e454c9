//! What the daemon owns, and the plan that turns "what the policy wants"
//! into changes.
//!
//! The daemon only ever takes back what it gave: the state file records,
//! per policy id, the static rules it allowed and the devices it passed in.
//! Rules an operator added with `ctdev allow` are never touched. The plan
//! functions here are pure (desired vs owned → steps), so running them again
//! on a converged state yields no step (idempotent).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing it failed.
    #[error("daemon state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid JSON of the expected shape.
    #[error("daemon state file {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// A device the daemon passed into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct OwnedDevice {
    /// Host node (or interface name) given to `ctdev add`.
    pub host: String,
    /// Where it is in the container (node path or interface name).
    pub dest: String,
    /// DEVPATH of a hotplugged device (`None` for static devices).
    pub devpath: Option<String>,
    /// Whether it is a network interface (moved, not a node).
    pub interface: bool,
    /// udev's names of it made as symlinks to `dest` in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// udev's name of the device when it was selected (a `by-id` link
    /// first), for `ctdev status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udev_name: Option<String>,
}

/// What the daemon gave one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// The cgroup directory when it was managed.
    pub cgroup: PathBuf,
    /// The `[[container]]` entry that selected it.
    pub entry: String,
    /// Static rules it allowed, as rule text.
    pub rules: BTreeSet<String>,
    /// Devices it passed in, by destination.
    pub devices: BTreeMap<String, OwnedDevice>,
}

/// The daemon's state file: policy id → what it owns there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Per policy id.
    pub containers: BTreeMap<u64, Owned>,
}

impl State {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, StateError> {
        match fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
                version: 1,
                ..State::default()
            }),
            Err(source) => Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the state file atomically (temporary file, rename). No
    /// fsync: the file describes kernel objects (pins, links) that do not
    /// survive a reboot, and a crashed process leaves the page cache
    /// intact, so the rename is atomic for every crash the file must
    /// survive. On a disk-backed /run an fsync per hotplug event cost
    /// milliseconds of the event's latency.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }
}

/// A device the policy wants in a container now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedDevice {
    /// What is recorded once it is in.
    pub owned: OwnedDevice,
    /// Access to open.
    pub access: crate::rule::Access,
    /// Node permission bits.
    pub mode: Option<u32>,
    /// Node owner and group (udev's, from the host node), when udevd
    /// processed the device; `None`: the container's root.
    pub owner: Option<(u32, u32)>,
}

/// Steps that bring one container from `owned` to `wanted`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DevicePlan {
    /// Devices to pass in (or re-check: `add` is idempotent, so a node the
    /// container lost is made again).
    pub add: Vec<WantedDevice>,
    /// Owned devices the policy no longer wants (or that are gone).
    pub remove: Vec<OwnedDevice>,
}

/// Plans devices: everything wanted is (re-)added, everything owned and not
/// wanted at the same destination is removed.
pub fn plan_devices(owned: &BTreeMap<String, OwnedDevice>, wanted: &[WantedDevice]) -> DevicePlan {
    let wanted_by_dest: BTreeMap<&str, &WantedDevice> =
        wanted.iter().map(|w| (w.owned.dest.as_str(), w)).collect();
    let remove = owned
        .values()
        .filter(|o| {
            wanted_by_dest
                .get(o.dest.as_str())
                .is_none_or(|w| w.owned != **o)
        })
        .cloned()
        .collect();
    DevicePlan {
        add: wanted.to_vec(),
        remove,
    }
}

/// Plans the devices of one event: only the device at DEVPATH `only` is
/// added, and what is removed is what that device had, or what sits at a
/// destination it now takes (a re-plugged device whose `remove` was
/// missed: the old rule is closed and the new one opened in one pass).
pub fn plan_devices_for(
    owned: &BTreeMap<String, OwnedDevice>,
    wanted: &[WantedDevice],
    only: &str,
) -> DevicePlan {
    let mut plan = plan_devices(owned, wanted);
    let dests: BTreeSet<&str> = wanted.iter().map(|w| w.owned.dest.as_str()).collect();
    plan.remove
        .retain(|o| o.devpath.as_deref() == Some(only) || dests.contains(o.dest.as_str()));
    plan
}

/// Plans static rules: owned rule texts the policy no longer has are revoked.
pub fn plan_rules(owned: &BTreeSet<String>, wanted: &BTreeSet<String>) -> Vec<String> {
    owned.difference(wanted).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::Access;

    fn dev(dest: &str, devpath: Option<&str>) -> OwnedDevice {
        OwnedDevice {
            host: format!("/dev/{dest}"),
            dest: format!("/dev/{dest}"),
            devpath: devpath.map(String::from),
            interface: false,
            links: Vec::new(),
            udev_name: None,
        }
    }

    fn want(owned: OwnedDevice) -> WantedDevice {
        WantedDevice {
            owned,
            access: Access::ALL,
            mode: None,
            owner: None,
        }
    }

    #[test]
    fn a_replug_at_the_same_name_closes_the_old_device_in_the_same_pass() {
        // ttyUSB0 (serial A) was passed in at /dev/serial/A; its `remove`
        // was missed; the same adapter is back as ttyUSB1.
        let mut old = dev("serial/A", Some("/devices/usb1/1-2/ttyUSB0"));
        old.host = "/dev/ttyUSB0".into();
        let other = dev("serial/B", Some("/devices/usb1/1-3/ttyUSB2"));
        let owned: BTreeMap<String, OwnedDevice> = [old.clone(), other.clone()]
            .into_iter()
            .map(|d| (d.dest.clone(), d))
            .collect();
        let mut new = dev("serial/A", Some("/devices/usb1/1-2/ttyUSB1"));
        new.host = "/dev/ttyUSB1".into();
        new.links = vec!["/dev/serial/by-id/usb-A".into()];
        let plan = plan_devices_for(&owned, &[want(new.clone())], "/devices/usb1/1-2/ttyUSB1");
        assert_eq!(
            plan.remove,
            vec![old],
            "the old device at the name goes, the other stays"
        );
        assert_eq!(plan.add, vec![want(new.clone())]);
        // An unrelated device's event touches nothing else.
        let plan = plan_devices_for(&owned, &[], "/devices/usb1/1-4/ttyUSB3");
        assert!(plan.remove.is_empty() && plan.add.is_empty());
        // Its own remove: only its record goes.
        let plan = plan_devices_for(&owned, &[], "/devices/usb1/1-3/ttyUSB2");
        assert_eq!(plan.remove, vec![other]);
    }

    #[test]
    fn device_plan_is_idempotent_and_removes_what_is_gone() {
        let a = dev("a", None);
        let b = dev("b", Some("/devices/virtual/block/loop9"));
        let wanted = vec![want(a.clone())];
        let owned: BTreeMap<String, OwnedDevice> = [a.clone(), b.clone()]
            .into_iter()
            .map(|d| (d.dest.clone(), d))
            .collect();
        let plan = plan_devices(&owned, &wanted);
        assert_eq!(plan.remove, vec![b]);
        assert_eq!(plan.add.len(), 1);
        // Converged: nothing to remove.
        let owned: BTreeMap<String, OwnedDevice> = [(a.dest.clone(), a)].into_iter().collect();
        assert!(plan_devices(&owned, &wanted).remove.is_empty());
    }

    #[test]
    fn a_different_device_at_the_same_dest_replaces_the_old_one() {
        let old = dev("x", Some("/devices/a"));
        let mut new = old.clone();
        new.devpath = Some("/devices/b".into());
        let owned = [(old.dest.clone(), old.clone())].into_iter().collect();
        let plan = plan_devices(&owned, &[want(new)]);
        assert_eq!(plan.remove, vec![old]);
    }

    #[test]
    fn rule_plan_revokes_only_owned_rules_gone_from_the_policy() {
        let owned: BTreeSet<String> = ["c 1:3 rw".into(), "c 10:200 rwm".into()].into();
        let wanted: BTreeSet<String> = ["c 1:3 rw".into()].into();
        assert_eq!(
            plan_rules(&owned, &wanted),
            vec!["c 10:200 rwm".to_string()]
        );
        assert!(plan_rules(&wanted, &wanted).is_empty());
    }

    #[test]
    fn state_round_trips_atomically() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("sub/state.json");
        assert_eq!(State::load(&path).unwrap().containers.len(), 0);
        let mut s = State {
            version: 1,
            ..Default::default()
        };
        s.containers.insert(
            7,
            Owned {
                cgroup: "/sys/fs/cgroup/x".into(),
                entry: "x".into(),
                rules: ["c 1:3 rw".into()].into(),
                devices: [("/dev/a".into(), dev("a", None))].into(),
            },
        );
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        fs::write(&path, "{").unwrap();
        assert!(State::load(&path)
            .unwrap_err()
            .to_string()
            .contains("corrupt"));
    }
}
