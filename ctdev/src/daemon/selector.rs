//! Matching: which devices a hotplug rule wants, which cgroups a
//! `[[container]]` entry selects.
//!
//! Device properties come from the kernel uevent (SUBSYSTEM, DEVTYPE,
//! DEVNAME, DEVPATH, MAJOR/MINOR). The udev-only ones are filled in as udev
//! would: from `/run/udev/data/{b,c}MAJ:MIN` when udevd keeps it (ID_*,
//! tags), otherwise from sysfs attributes of the nearest USB device ancestor
//! (`idVendor` → ID_VENDOR_ID, `idProduct` → ID_MODEL_ID, `serial` →
//! ID_SERIAL_SHORT, `manufacturer_product_serial` → ID_SERIAL).

use std::fmt;
use std::path::Path;

use globset::GlobMatcher;

use crate::runtimes::{self, Visit};
use crate::target::{RuntimeKind, Target};

pub use super::devices::DeviceInfo;

/// A 16-bit USB id (vendor or product), compared as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexId(pub u16);

impl HexId {
    /// Parses `0403` (1-4 hex digits, optional `0x`).
    pub fn parse(s: &str) -> Option<HexId> {
        let d = s.trim().trim_start_matches("0x");
        if d.is_empty() || d.len() > 4 {
            return None;
        }
        u16::from_str_radix(d, 16).ok().map(HexId)
    }
}

/// What a hotplug rule matches on; every key given must match.
#[derive(Debug, Clone, Default)]
pub struct DeviceSelector {
    /// SUBSYSTEM, exactly (`block`, `tty`, `net`, `usb`).
    pub subsystem: Option<String>,
    /// DEVTYPE, exactly (`disk`, `partition`, `usb_device`).
    pub devtype: Option<String>,
    /// ID_VENDOR_ID.
    pub id_vendor_id: Option<HexId>,
    /// ID_MODEL_ID.
    pub id_model_id: Option<HexId>,
    /// ID_SERIAL, exactly.
    pub id_serial: Option<String>,
    /// ID_SERIAL_SHORT, exactly.
    pub id_serial_short: Option<String>,
    /// DEVPATH equal to or below this path (a USB hub port: `/devices/.../usb1/1-1`).
    pub devpath_prefix: Option<String>,
    /// DEVNAME glob (without `/dev/`; `*` does not cross `/`).
    pub devname: Option<GlobMatcher>,
    /// The devname glob as written (for messages).
    pub devname_text: Option<String>,
    /// A udev tag (TAGS / CURRENT_TAGS).
    pub tag: Option<String>,
    /// Any property (ID_PATH, ID_FS_LABEL, an ENV key a udev rule set):
    /// name, glob over the value (`*` crosses `/`), the glob as written.
    pub properties: Vec<(String, GlobMatcher, String)>,
}

impl DeviceSelector {
    /// Whether no key is set (would match everything: refused by the config).
    pub fn is_empty(&self) -> bool {
        self.subsystem.is_none()
            && self.devtype.is_none()
            && self.id_vendor_id.is_none()
            && self.id_model_id.is_none()
            && self.id_serial.is_none()
            && self.id_serial_short.is_none()
            && self.devpath_prefix.is_none()
            && self.devname.is_none()
            && self.tag.is_none()
            && self.properties.is_empty()
    }

    /// Whether `dev` matches every key given.
    pub fn matches(&self, dev: &DeviceInfo) -> bool {
        let eq = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|w| have.is_some_and(|h| h == w))
        };
        let hex = |want: &Option<HexId>, have: Option<&String>| {
            want.is_none_or(|w| have.and_then(|h| HexId::parse(h)) == Some(w))
        };
        eq(&self.subsystem, dev.prop("SUBSYSTEM"))
            && eq(&self.devtype, dev.prop("DEVTYPE"))
            && hex(&self.id_vendor_id, dev.prop("ID_VENDOR_ID"))
            && hex(&self.id_model_id, dev.prop("ID_MODEL_ID"))
            && eq(&self.id_serial, dev.prop("ID_SERIAL"))
            && eq(&self.id_serial_short, dev.prop("ID_SERIAL_SHORT"))
            && self.devpath_prefix.as_ref().is_none_or(|p| {
                dev.devpath == *p
                    || dev
                        .devpath
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            && self
                .devname
                .as_ref()
                .is_none_or(|g| dev.devname().is_some_and(|n| g.is_match(n)))
            && self
                .tag
                .as_ref()
                .is_none_or(|t| dev.tags.contains(t.as_str()))
            && self
                .properties
                .iter()
                .all(|(k, g, _)| dev.prop(k).is_some_and(|v| g.is_match(v)))
    }
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let mut s = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        s("SUBSYSTEM", &self.subsystem);
        s("DEVTYPE", &self.devtype);
        s(
            "ID_VENDOR_ID",
            &self.id_vendor_id.map(|h| format!("{:04x}", h.0)),
        );
        s(
            "ID_MODEL_ID",
            &self.id_model_id.map(|h| format!("{:04x}", h.0)),
        );
        s("ID_SERIAL", &self.id_serial);
        s("ID_SERIAL_SHORT", &self.id_serial_short);
        s(
            "DEVPATH",
            &self.devpath_prefix.as_ref().map(|p| format!("{p}/*")),
        );
        s("DEVNAME", &self.devname_text);
        s("TAG", &self.tag);
        for (k, _, text) in &self.properties {
            parts.push(format!("{k}={text}"));
        }
        f.write_str(&parts.join(","))
    }
}

/// The (runtime, name) of a cgroup, if a runtime resolver recognises it.
pub(crate) fn runtime_names(rel: &Path) -> Vec<(RuntimeKind, String)> {
    let Some(dir) = rel.file_name().and_then(|d| d.to_str()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for kind in RuntimeKind::ALL {
        // A candidate name from the directory's own name, confirmed by the
        // runtime's resolver (which knows the layouts).
        let candidate = match kind {
            RuntimeKind::Lxc => dir.strip_prefix("lxc.payload.").unwrap_or(dir),
            RuntimeKind::Docker => strip_scope(dir, "docker-"),
            RuntimeKind::Podman => strip_scope(dir, "libpod-"),
            RuntimeKind::Containerd => strip_scope(dir, "cri-containerd-"),
            RuntimeKind::Crio => strip_scope(dir, "crio-"),
        };
        if candidate.is_empty() {
            continue;
        }
        if let Visit::Match(n) = runtimes::classify(kind, rel, candidate) {
            // Docker and Podman also know the container by its name.
            let names = match kind {
                RuntimeKind::Docker | RuntimeKind::Podman => {
                    runtimes::discover::engine_names(kind, &n)
                }
                _ => Vec::new(),
            };
            out.push((kind, n));
            out.extend(names.into_iter().map(|name| (kind, name)));
        }
    }
    out
}

fn strip_scope<'a>(dir: &'a str, prefix: &str) -> &'a str {
    dir.strip_prefix(prefix)
        .map(|d| d.strip_suffix(".scope").unwrap_or(d))
        .unwrap_or(dir)
}

/// How a `[[container]]` picks its cgroups.
#[derive(Debug, Clone)]
pub enum ContainerSelector {
    /// TARGET syntax (`lxc:web`, `docker:3f2a`, `/path`, a bare name).
    Target(Target),
    /// A glob over the cgroup path inside the hierarchy (`/lxc.payload.ha-*`);
    /// `*` does not cross `/`, `**` does.
    Cgroup(GlobMatcher),
    /// Containers of a runtime whose name or ID matches a glob.
    Runtime(RuntimeKind, GlobMatcher),
}

impl ContainerSelector {
    /// Whether it selects containers of a runtime (`runtime = …` or a
    /// `RUNTIME:NAME` target).
    pub fn is_runtime(&self) -> bool {
        matches!(
            self,
            ContainerSelector::Runtime(..) | ContainerSelector::Target(Target::Runtime(..))
        )
    }
}
impl ContainerSelector {
    /// Whether the cgroup at `path` (inside the hierarchy, `/a/b`) is selected.
    pub fn matches(&self, path: &Path) -> bool {
        let rel = path.strip_prefix("/").unwrap_or(path);
        match self {
            ContainerSelector::Cgroup(g) => g.is_match(path),
            ContainerSelector::Runtime(kind, g) => runtime_names(rel)
                .iter()
                .any(|(k, n)| k == kind && g.is_match(n)),
            ContainerSelector::Target(Target::Cgroup(p)) => {
                // Directories under the mount were made relative by
                // `Policy::normalize`.
                rel == p.strip_prefix("/").unwrap_or(p)
            }
            ContainerSelector::Target(Target::Runtime(kind, name)) => {
                matches!(runtimes::classify(*kind, rel, name), Visit::Match(_))
            }
            ContainerSelector::Target(Target::Name(name)) => {
                rel == Path::new(name)
                    || RuntimeKind::ALL
                        .into_iter()
                        .any(|k| matches!(runtimes::classify(k, rel, name), Visit::Match(_)))
            }
            ContainerSelector::Target(Target::Pod(spec)) => {
                // The pod map of `ctdev nri` says which cgroup the pod's container is.
                runtimes::k8s::PodMap::load(&runtimes::k8s::state_dir())
                    .ok()
                    .and_then(|m| {
                        m.find(spec)
                            .ok()
                            .map(|c| c.cgroup == Path::new("/").join(rel))
                    })
                    .unwrap_or(false)
            }
            ContainerSelector::Target(
                Target::Pid(_) | Target::PolicyId(_) | Target::CgroupOf { .. },
            ) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::DeviceType;
    use globset::GlobBuilder;
    use std::collections::BTreeMap;
    use std::fs;

    fn glob(g: &str, sep: bool) -> GlobMatcher {
        GlobBuilder::new(g)
            .literal_separator(sep)
            .build()
            .unwrap()
            .compile_matcher()
    }

    fn dev(pairs: &[(&str, &str)]) -> DeviceInfo {
        let props: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DeviceInfo::new(
            props,
            Path::new("/nonexistent-sys"),
            Path::new("/nonexistent-udev"),
        )
    }

    #[test]
    fn device_keys_all_must_match() {
        let d = dev(&[
            ("SUBSYSTEM", "tty"),
            ("DEVNAME", "ttyUSB0"),
            (
                "DEVPATH",
                "/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/ttyUSB0/tty/ttyUSB0",
            ),
            ("MAJOR", "188"),
            ("MINOR", "0"),
            ("ID_VENDOR_ID", "0403"),
            ("ID_MODEL_ID", "6001"),
            ("TAGS", ":systemd:uaccess:"),
        ]);
        let mut s = DeviceSelector {
            subsystem: Some("tty".into()),
            ..Default::default()
        };
        assert!(s.matches(&d));
        s.id_vendor_id = HexId::parse("403");
        s.id_model_id = HexId::parse("0x6001");
        assert!(s.matches(&d));
        s.devpath_prefix = Some("/devices/pci0000:00/0000:00:14.0/usb1/1-2".into());
        assert!(s.matches(&d));
        s.devpath_prefix = Some("/devices/pci0000:00/0000:00:14.0/usb1/1-".into());
        assert!(!s.matches(&d), "a prefix stops at a path component");
        s.devpath_prefix = None;
        s.devname = Some(glob("ttyUSB*", true));
        s.tag = Some("uaccess".into());
        assert!(s.matches(&d));
        s.tag = Some("seat".into());
        assert!(!s.matches(&d));
        s.tag = None;
        s.id_serial_short = Some("A1".into());
        assert!(!s.matches(&d), "a key the device lacks does not match");
        assert_eq!(d.numbers(), Some((DeviceType::Char, 188, 0)));
    }

    #[test]
    fn any_udev_property_matches_by_glob() {
        let d = dev(&[
            ("SUBSYSTEM", "tty"),
            ("ID_PATH", "pci-0000:00:14.0-usb-0:2:1.0"),
            ("CTDEV_ZIGBEE", "1"),
        ]);
        let mut s = DeviceSelector {
            properties: vec![("ID_PATH".into(), glob("pci-*-usb-0:2:*", false), "x".into())],
            ..Default::default()
        };
        assert!(!s.is_empty());
        assert!(s.matches(&d));
        s.properties
            .push(("CTDEV_ZIGBEE".into(), glob("1", false), "1".into()));
        assert!(s.matches(&d));
        s.properties
            .push(("ID_MODEL".into(), glob("*", false), "*".into()));
        assert!(
            !s.matches(&d),
            "a property the device lacks does not match, even with *"
        );
        assert!(s.to_string().contains("CTDEV_ZIGBEE=1"));
    }

    #[test]
    fn devname_glob_and_block_numbers() {
        let d = dev(&[
            ("SUBSYSTEM", "block"),
            ("DEVTYPE", "disk"),
            ("DEVNAME", "loop12"),
            ("DEVPATH", "/devices/virtual/block/loop12"),
            ("MAJOR", "7"),
            ("MINOR", "12"),
        ]);
        let s = DeviceSelector {
            devname: Some(glob("loop1?", true)),
            devtype: Some("disk".into()),
            ..Default::default()
        };
        assert!(s.matches(&d));
        assert_eq!(d.numbers(), Some((DeviceType::Block, 7, 12)));
        let s = DeviceSelector {
            devname: Some(glob("loop2", true)),
            ..Default::default()
        };
        assert!(!s.matches(&d));
        let bus = dev(&[("DEVNAME", "bus/usb/001/002")]);
        let s = DeviceSelector {
            devname: Some(glob("bus/*", true)),
            ..Default::default()
        };
        assert!(!s.matches(&bus), "* does not cross /");
    }

    #[test]
    fn usb_ids_come_from_sysfs_without_udev() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let usb = sys.join("devices/pci0000:00/usb1/1-2");
        let tty = usb.join("1-2:1.0/ttyUSB0/tty/ttyUSB0");
        fs::create_dir_all(&tty).unwrap();
        fs::write(usb.join("idVendor"), "0403\n").unwrap();
        fs::write(usb.join("idProduct"), "6001\n").unwrap();
        fs::write(usb.join("serial"), "A10K\n").unwrap();
        fs::write(usb.join("manufacturer"), "FTDI\n").unwrap();
        fs::write(usb.join("product"), "FT232R USB UART\n").unwrap();
        let props = [
            (
                "DEVPATH",
                "/devices/pci0000:00/usb1/1-2/1-2:1.0/ttyUSB0/tty/ttyUSB0",
            ),
            ("SUBSYSTEM", "tty"),
            ("MAJOR", "188"),
            ("MINOR", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let udev = t.path().join("udev");
        fs::create_dir_all(&udev).unwrap();
        fs::write(
            udev.join("c188:0"),
            "E:ID_VENDOR_ID=0403\nG:uaccess\nQ:seat\n",
        )
        .unwrap();
        let d = DeviceInfo::new(props, &sys, &udev);
        assert_eq!(d.prop("ID_VENDOR_ID").unwrap(), "0403");
        // Filled from sysfs: udev data had no model/serial, but sysfs fills
        // only when udev gave no vendor id at all.
        assert!(d.tags.contains("uaccess") && d.tags.contains("seat"));
        let mut props2 = d.props.clone();
        props2.remove("ID_VENDOR_ID");
        let d2 = DeviceInfo::new(props2, &sys, t.path().join("none").as_path());
        assert_eq!(d2.prop("ID_MODEL_ID").unwrap(), "6001");
        assert_eq!(d2.prop("ID_SERIAL_SHORT").unwrap(), "A10K");
        assert_eq!(d2.prop("ID_SERIAL").unwrap(), "FTDI_FT232R_USB_UART_A10K");
    }

    #[test]
    fn containers_are_selected() {
        let g = ContainerSelector::Cgroup(glob("/lxc.payload.ha-*", true));
        assert!(g.matches(Path::new("/lxc.payload.ha-1")));
        assert!(!g.matches(Path::new("/lxc.payload.ha-1/init")));
        let r = ContainerSelector::Runtime(RuntimeKind::Lxc, glob("ha-*", false));
        assert!(r.matches(Path::new("/lxc.payload.ha-2")));
        assert!(!r.matches(Path::new("/lxc.payload.web")));
        let id = "3f2a".to_string() + &"0".repeat(60);
        let d = ContainerSelector::Runtime(RuntimeKind::Docker, glob("3f2a*", false));
        assert!(d.matches(&Path::new("/system.slice").join(format!("docker-{id}.scope"))));
        let t = ContainerSelector::Target("lxc:web".parse().unwrap());
        assert!(t.matches(Path::new("/lxc.payload.web")));
        let t = ContainerSelector::Target("/a/b".parse().unwrap());
        assert!(t.matches(Path::new("/a/b")));
        assert!(!t.matches(Path::new("/a/b/c")));
    }
}
