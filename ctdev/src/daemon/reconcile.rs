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
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::IoError;
use crate::rule::{Rule, RuleSpec};

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing it failed (the operation and the path named).
    #[error("daemon state file: {0}")]
    Io(#[from] IoError),
    /// It is not valid JSON of the expected shape.
    #[error("daemon state file {path} is corrupt: {message}")]
    Corrupt {
        /// The state file's path.
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
    /// Static rules it allowed (typed; version 1 of the file had them as
    /// rule text).
    pub rules: BTreeSet<Rule>,
    /// Devices it passed in, by destination.
    pub devices: BTreeMap<String, OwnedDevice>,
}

/// The state file's format version this daemon writes: 2 stores rules
/// typed ([`Rule`]'s serde form); 1 stored them as rule text and is still
/// read, so a daemon upgraded in place keeps what it owns.
pub const STATE_VERSION: u32 = 2;

/// The daemon's state file: policy id → what it owns there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version ([`STATE_VERSION`] once loaded or saved).
    pub version: u32,
    /// Per policy id.
    pub containers: BTreeMap<u64, Owned>,
}

/// Only the version of a state file, read first to pick its format.
#[derive(Deserialize)]
struct Version {
    /// Files before versions were checked had 1.
    #[serde(default = "version_1")]
    version: u32,
}

fn version_1() -> u32 {
    1
}

/// Version 1 of the state file: rules as text, otherwise as version 2.
#[derive(Deserialize)]
struct StateV1 {
    containers: BTreeMap<u64, OwnedV1>,
}

/// Version 1 of [`Owned`].
#[derive(Deserialize)]
struct OwnedV1 {
    cgroup: PathBuf,
    entry: String,
    rules: BTreeSet<String>,
    devices: BTreeMap<String, OwnedDevice>,
}

impl StateV1 {
    /// The same state with its rule texts parsed; a text that is not a
    /// numeric rule (as version 1 wrote them) is named in the error.
    fn upgrade(self) -> Result<State, String> {
        let mut containers = BTreeMap::new();
        for (id, o) in self.containers {
            let rules = o
                .rules
                .iter()
                .map(|text| match RuleSpec::parse(text) {
                    Ok(RuleSpec::Numbers(r)) => Ok(r),
                    Ok(_) => Err(format!("policy id {id}: rule {text:?} is not numeric")),
                    Err(e) => Err(format!("policy id {id}: {e}")),
                })
                .collect::<Result<_, _>>()?;
            containers.insert(
                id,
                Owned {
                    cgroup: o.cgroup,
                    entry: o.entry,
                    rules,
                    devices: o.devices,
                },
            );
        }
        Ok(State {
            version: STATE_VERSION,
            containers,
        })
    }
}

impl State {
    /// Reads the state file, in either format version; a missing file is an
    /// empty state. The state comes back as [`STATE_VERSION`].
    pub fn load(path: &Path) -> Result<State, StateError> {
        let corrupt = |message: String| StateError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: STATE_VERSION,
                    ..State::default()
                })
            }
            Err(source) => return Err(IoError::new("read", path, source).into()),
        };
        let version = serde_json::from_str::<Version>(&text)
            .map_err(|e| corrupt(e.to_string()))?
            .version;
        match version {
            1 => serde_json::from_str::<StateV1>(&text)
                .map_err(|e| corrupt(e.to_string()))?
                .upgrade()
                .map_err(corrupt),
            STATE_VERSION => serde_json::from_str(&text).map_err(|e| corrupt(e.to_string())),
            v => Err(corrupt(format!(
                "format version {v} is not known (this ctdev reads 1 and {STATE_VERSION})"
            ))),
        }
    }

    /// Writes the state file atomically (temporary file, rename). No
    /// fsync: the file describes kernel objects (pins, links) that do not
    /// survive a reboot, and a crashed process leaves the page cache
    /// intact, so the rename is atomic for every crash the file must
    /// survive. On a disk-backed /run an fsync per hotplug event cost
    /// milliseconds of the event's latency.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        /// What is written: always the current version.
        #[derive(Serialize)]
        struct Current<'a> {
            version: u32,
            containers: &'a BTreeMap<u64, Owned>,
        }
        let current = Current {
            version: STATE_VERSION,
            containers: &self.containers,
        };
        let text = crate::fsio::json_pretty(&current).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(crate::fsio::write_atomic(path, &text)?)
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

/// Plans static rules: owned rules the policy no longer has are revoked.
pub fn plan_rules(owned: &BTreeSet<Rule>, wanted: &BTreeSet<Rule>) -> Vec<Rule> {
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

    fn rule(text: &str) -> Rule {
        match RuleSpec::parse(text).unwrap() {
            RuleSpec::Numbers(r) => r,
            other => panic!("{text}: {other:?}"),
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
        let owned: BTreeSet<Rule> = [rule("c 1:3 rw"), rule("c 10:200 rwm")].into();
        let wanted: BTreeSet<Rule> = [rule("c 1:3 rw")].into();
        assert_eq!(plan_rules(&owned, &wanted), vec![rule("c 10:200 rwm")]);
        assert!(plan_rules(&wanted, &wanted).is_empty());
    }

    #[test]
    fn state_round_trips_atomically() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("sub/state.json");
        assert_eq!(State::load(&path).unwrap().containers.len(), 0);
        let mut s = State {
            version: STATE_VERSION,
            ..Default::default()
        };
        s.containers.insert(
            7,
            Owned {
                cgroup: "/sys/fs/cgroup/x".into(),
                entry: "x".into(),
                rules: [rule("c 1:3 rw"), rule("b 7:* rwm")].into(),
                devices: [("/dev/a".into(), dev("a", None))].into(),
            },
        );
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""version": 2"#), "{text}");
        assert!(text.contains(r#""minor": "*""#), "rules are typed: {text}");
        fs::write(&path, "{").unwrap();
        assert!(State::load(&path)
            .unwrap_err()
            .to_string()
            .contains("corrupt"));
    }

    /// A version 1 file, as the daemon before typed rules wrote it.
    const STATE_V1: &str = r#"{
  "version": 1,
  "containers": {
    "7": {
      "cgroup": "/sys/fs/cgroup/x",
      "entry": "x",
      "rules": ["b 7:* rwm", "c 1:3 rw"],
      "devices": {
        "/dev/a": {"host": "/dev/a", "dest": "/dev/a", "devpath": null, "interface": false}
      }
    }
  }
}"#;

    #[test]
    fn a_version_1_file_is_read_and_saved_as_version_2() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("state.json");
        fs::write(&path, STATE_V1).unwrap();
        let s = State::load(&path).unwrap();
        assert_eq!(s.version, STATE_VERSION);
        let owned = &s.containers[&7];
        assert_eq!(
            owned.rules,
            [rule("c 1:3 rw"), rule("b 7:* rwm")].into(),
            "rule texts parsed"
        );
        assert_eq!(owned.devices["/dev/a"], dev("a", None));
        // Saved again, it is version 2 and reads back the same.
        s.save(&path).unwrap();
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains(r#""version": 2"#));
        assert_eq!(State::load(&path).unwrap(), s);
    }

    #[test]
    fn bad_versions_and_bad_old_rules_are_named() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("state.json");
        let err = |text: &str| {
            fs::write(&path, text).unwrap();
            State::load(&path).unwrap_err().to_string()
        };
        let e = err(r#"{"version": 3, "containers": {}}"#);
        assert!(e.contains("format version 3"), "{e}");
        let e = err(&STATE_V1.replace("c 1:3 rw", "c 1:x rw"));
        assert!(e.contains("policy id 7") && e.contains("1:x"), "{e}");
        let e = err(&STATE_V1.replace("c 1:3 rw", "/dev/null rw"));
        assert!(e.contains("not numeric"), "{e}");
        // A version 2 file with a rule as text is corrupt, not guessed at.
        let e = err(&STATE_V1.replace(r#""version": 1"#, r#""version": 2"#));
        assert!(e.contains("corrupt"), "{e}");
    }
}
