//! `ctdev cdi generate`: a CDI spec for host devices picked with the
//! daemon's hotplug selectors ([`DeviceSelector`]), so engines can give
//! them at start and `ctdev add` can hot-add them later under one name.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::name::{check_device_name, Kind};
use super::spec::{self, ContainerEdits, Device, DeviceNodeEdit, Spec, CURRENT_VERSION};
use crate::daemon::selector::{DeviceInfo, DeviceSelector};
use crate::daemon::uevent;

/// Why no spec could be made.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A bad kind or device name.
    #[error("{0}")]
    Name(String),
    /// No device matched.
    #[error("no device with a node under /dev matches {0}")]
    NoMatch(String),
    /// The selector is empty.
    #[error("give at least one selector (--subsystem, --id-vendor-id, --id-model-id, --serial, --devname)")]
    EmptySelector,
    /// The made spec does not validate (a bug).
    #[error("generated spec is invalid: {0}")]
    Invalid(#[from] spec::SpecError),
}

/// Every device with a node under `/sys/dev/{block,char}`.
pub fn scan(sys: &Path, udev_data: &Path) -> Vec<DeviceInfo> {
    let mut found = BTreeMap::new();
    for kind in ["block", "char"] {
        let Ok(entries) = fs::read_dir(sys.join("dev").join(kind)) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(real) = fs::canonicalize(e.path()) else {
                continue;
            };
            let Some(devpath) = real.strip_prefix(sys).ok().map(|p| Path::new("/").join(p)) else {
                continue;
            };
            let Some(subsystem) = fs::read_link(real.join("subsystem"))
                .ok()
                .and_then(|s| s.file_name().and_then(|n| n.to_str()).map(String::from))
            else {
                continue;
            };
            let (Ok(text), Some(dp)) = (fs::read_to_string(real.join("uevent")), devpath.to_str())
            else {
                continue;
            };
            let props = uevent::parse_sysfs(&text, dp, &subsystem);
            let info = DeviceInfo::new(props, sys, udev_data);
            found.insert(info.devpath.clone(), info);
        }
    }
    found.into_values().collect()
}

/// A device name from a DEVNAME: `/` → `-`, other bad characters → `_`.
pub fn device_name_of(devname: &str) -> String {
    devname
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || "-_.:".contains(c) => c,
            _ => '_',
        })
        .collect()
}

/// The spec for the devices of `devices` that `selector` matches: one CDI
/// device per node (named after its DEVNAME), or one device `all_as`
/// holding every node.
pub fn generate(
    kind: &str,
    selector: &DeviceSelector,
    devices: &[DeviceInfo],
    all_as: Option<&str>,
    access: Option<&str>,
) -> Result<Spec, GenerateError> {
    Kind::parse(kind).map_err(|e| GenerateError::Name(e.to_string()))?;
    if selector.is_empty() {
        return Err(GenerateError::EmptySelector);
    }
    let mut nodes = Vec::new();
    for d in devices.iter().filter(|d| selector.matches(d)) {
        let (Some(devname), Some((t, major, minor))) = (d.devname(), d.numbers()) else {
            continue;
        };
        let path = PathBuf::from("/dev").join(devname);
        nodes.push((
            devname.to_string(),
            DeviceNodeEdit {
                path: path.display().to_string(),
                dev_type: Some(t.letter().to_string()),
                major: Some(major.into()),
                minor: Some(minor.into()),
                permissions: access.map(String::from),
                ..Default::default()
            },
        ));
    }
    if nodes.is_empty() {
        return Err(GenerateError::NoMatch(selector.to_string()));
    }
    let devices = match all_as {
        Some(name) => {
            check_device_name(name)
                .map_err(|r| GenerateError::Name(format!("device name {name:?}: {r}")))?;
            vec![Device {
                name: name.into(),
                annotations: Default::default(),
                container_edits: ContainerEdits {
                    device_nodes: nodes.into_iter().map(|(_, n)| n).collect(),
                    ..Default::default()
                },
            }]
        }
        None => nodes
            .into_iter()
            .map(|(devname, n)| Device {
                name: device_name_of(&devname),
                annotations: Default::default(),
                container_edits: ContainerEdits {
                    device_nodes: vec![n],
                    ..Default::default()
                },
            })
            .collect(),
    };
    let spec = Spec {
        cdi_version: CURRENT_VERSION.into(),
        kind: kind.into(),
        annotations: Default::default(),
        devices,
        container_edits: ContainerEdits::default(),
    };
    spec::validate(&spec)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(subsystem: &str, devname: &str, major: u32, minor: u32) -> DeviceInfo {
        let mut props = BTreeMap::new();
        props.insert("SUBSYSTEM".into(), subsystem.into());
        props.insert("DEVNAME".into(), devname.into());
        props.insert("MAJOR".into(), major.to_string());
        props.insert("MINOR".into(), minor.to_string());
        DeviceInfo {
            devpath: format!("/devices/virtual/{devname}"),
            props,
            ..Default::default()
        }
    }

    #[test]
    fn one_device_per_node_or_all_in_one() {
        let devs = [
            dev("block", "loop3", 7, 3),
            dev("block", "loop4", 7, 4),
            dev("tty", "ttyS0", 4, 64),
        ];
        let sel = DeviceSelector {
            subsystem: Some("block".into()),
            ..Default::default()
        };
        let s = generate("v.com/loop", &sel, &devs, None, None).unwrap();
        let names: Vec<_> = s.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop3", "loop4"]);
        let n = &s.devices[0].container_edits.device_nodes[0];
        assert_eq!(
            (n.path.as_str(), n.dev_type.as_deref(), n.major, n.minor),
            ("/dev/loop3", Some("b"), Some(7), Some(3))
        );
        let s = generate("v.com/loop", &sel, &devs, Some("all"), Some("rw")).unwrap();
        assert_eq!(s.devices.len(), 1);
        assert_eq!(s.devices[0].container_edits.device_nodes.len(), 2);
        // The output parses back.
        let text = serde_json::to_vec(&s).unwrap();
        spec::parse(&text, spec::Format::Json).unwrap();
    }

    #[test]
    fn refusals() {
        let devs = [dev("block", "loop3", 7, 3)];
        let none = DeviceSelector::default();
        assert!(matches!(
            generate("v.com/l", &none, &devs, None, None),
            Err(GenerateError::EmptySelector)
        ));
        let tty = DeviceSelector {
            subsystem: Some("tty".into()),
            ..Default::default()
        };
        assert!(matches!(
            generate("v.com/l", &tty, &devs, None, None),
            Err(GenerateError::NoMatch(_))
        ));
        assert!(generate("bad", &tty, &devs, None, None).is_err());
        assert_eq!(device_name_of("dri/card0"), "dri-card0");
    }
}
