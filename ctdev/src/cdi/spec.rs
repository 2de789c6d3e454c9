//! One CDI spec file: its serde model, parsing (JSON or YAML) and checks.
//!
//! Parsing and validation are pure (bytes in, [`Spec`] or [`SpecError`]
//! out) so the table tests and the `cdi_spec` fuzz target exercise them
//! without touching the file system. Unknown fields are ignored, as the
//! reference implementation does; a field newer than the file's
//! `cdiVersion` makes the file invalid (the version must say what the
//! file uses).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::name::{check_device_name, Kind};
use crate::rule::Access;

/// Every released spec version, oldest first. Newer versions are refused:
/// a file may use fields this ctdev does not know.
pub const VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// The newest spec version understood (and written by `ctdev cdi generate`).
pub const CURRENT_VERSION: &str = "1.1.0";

/// Why a spec file is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not JSON/YAML of the spec's shape.
    #[error("cannot parse: {0}")]
    Parse(String),
    /// An unknown or unsupported `cdiVersion`.
    #[error("cdiVersion {0:?} is not a CDI version this ctdev knows (0.1.0 to 1.1.0)")]
    Version(String),
    /// A field that needs a newer `cdiVersion` than the file declares.
    #[error("{feature} needs cdiVersion {needs} or newer, the file declares {declared}")]
    TooNew {
        /// What was used.
        feature: String,
        /// The version it came with.
        needs: &'static str,
        /// `cdiVersion` of the file.
        declared: String,
    },
    /// A bad `kind`.
    #[error("kind {kind:?}: {reason}")]
    Kind {
        /// The kind as written.
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// No devices.
    #[error("a spec must list at least one device")]
    NoDevices,
    /// A bad device name.
    #[error("device name {name:?}: {reason}")]
    DeviceName {
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Two devices with the same name in one file.
    #[error("device {0:?} is listed twice")]
    Duplicate(String),
    /// A bad edit.
    #[error("{place}: {reason}")]
    Edit {
        /// `device "x" deviceNodes[0]`, `containerEdits mounts[1]`.
        place: String,
        /// What is wrong.
        reason: String,
    },
}

/// A CDI spec file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The spec version the file is written for.
    pub cdi_version: String,
    /// `vendor/class`.
    pub kind: String,
    /// Free-form annotations (0.6.0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Edits applied once when any device of this file is used.
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One device of a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Its name within the kind.
    pub name: String,
    /// Free-form annotations (0.6.0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The device's own edits.
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// Edits to a container (the OCI spec, at creation time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    /// `NAME=VALUE` environment entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Device nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNodeEdit>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountEdit>,
    /// OCI hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    /// Supplementary groups of the container process (0.7.0).
    #[serde(
        default,
        rename = "additionalGids",
        alias = "additionalGIDs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub additional_gids: Vec<u32>,
    /// resctrl settings (0.7.0), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel_rdt: Option<serde_json::Value>,
    /// Network interfaces moved into the container (1.1.0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<NetDevice>,
}

impl ContainerEdits {
    /// Whether there is no edit at all.
    pub fn is_empty(&self) -> bool {
        *self == ContainerEdits::default()
    }

    /// Appends `other`'s edits after this one's.
    pub fn append(&mut self, other: &ContainerEdits) {
        self.env.extend(other.env.iter().cloned());
        self.device_nodes.extend(other.device_nodes.iter().cloned());
        self.mounts.extend(other.mounts.iter().cloned());
        self.hooks.extend(other.hooks.iter().cloned());
        self.additional_gids
            .extend(other.additional_gids.iter().copied());
        if other.intel_rdt.is_some() {
            self.intel_rdt.clone_from(&other.intel_rdt);
        }
        self.net_devices.extend(other.net_devices.iter().cloned());
    }
}

/// A device node edit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNodeEdit {
    /// Path in the container.
    pub path: String,
    /// Path on the host (default: `path`) (0.5.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// `b`, `c`, `u` or `p` (default: the host node's).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub dev_type: Option<String>,
    /// Major number (default: the host node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    /// Minor number (default: the host node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// Permission bits (default: the host node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    /// cgroup access, letters from `rwm` (default `rwm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// Owner in the container's user namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group in the container's user namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl DeviceNodeEdit {
    /// The host node (`hostPath`, else `path`).
    pub fn host(&self) -> &str {
        self.host_path.as_deref().unwrap_or(&self.path)
    }

    /// The cgroup access (`permissions`, default `rwm`).
    pub fn access(&self) -> Access {
        self.permissions
            .as_deref()
            .filter(|p| !p.is_empty())
            .and_then(Access::parse)
            .unwrap_or(Access::ALL)
    }
}

/// A mount edit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountEdit {
    /// Source on the host.
    pub host_path: String,
    /// Destination in the container.
    pub container_path: String,
    /// Filesystem type (0.4.0); `bind`/`none`/absent for bind mounts.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// Mount options (`ro`, `nosuid`, `rbind`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An OCI hook edit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// `createRuntime`, `createContainer`, `startContainer`, `poststart`, `poststop`, `prestart`.
    pub hook_name: String,
    /// Absolute path of the program.
    pub path: String,
    /// argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// environ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// A network device edit (1.1.0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetDevice {
    /// The interface's name on the host.
    pub host_interface_name: String,
    /// Its name in the container.
    pub name: String,
}

/// The file format, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `.json`.
    Json,
    /// `.yaml` / `.yml`.
    Yaml,
}

impl Format {
    /// The format of a spec file, `None` if the file is not one (ignored).
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Parses and validates a spec file's contents.
pub fn parse(bytes: &[u8], format: Format) -> Result<Spec, SpecError> {
    let spec: Spec = match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| SpecError::Parse(e.to_string())),
        // YAML is a superset of JSON: a `.yaml` file may hold either.
        Format::Yaml => {
            serde_norway::from_slice(bytes).map_err(|e| SpecError::Parse(e.to_string()))
        }
    }?;
    validate(&spec)?;
    Ok(spec)
}

fn version_index(v: &str) -> Option<usize> {
    VERSIONS.iter().position(|k| *k == v)
}

/// The spec's checks: version, kind, device names, edits, and that the
/// declared version covers every field used.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let declared = version_index(&spec.cdi_version)
        .ok_or_else(|| SpecError::Version(spec.cdi_version.clone()))?;
    let need = |feature: &str, needs: &'static str| -> Result<(), SpecError> {
        let idx = version_index(needs).unwrap_or(0);
        if declared < idx {
            return Err(SpecError::TooNew {
                feature: feature.into(),
                needs,
                declared: spec.cdi_version.clone(),
            });
        }
        Ok(())
    };
    let kind = Kind::parse(&spec.kind).map_err(|e| SpecError::Kind {
        kind: spec.kind.clone(),
        reason: e.reason,
    })?;
    if kind.class.contains('.') {
        need("a '.' in the class of kind", "0.6.0")?;
    }
    if !spec.annotations.is_empty() {
        need("spec annotations", "0.6.0")?;
    }
    if spec.devices.is_empty() {
        return Err(SpecError::NoDevices);
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &spec.devices {
        check_device_name(&d.name).map_err(|reason| SpecError::DeviceName {
            name: d.name.clone(),
            reason,
        })?;
        if !seen.insert(d.name.as_str()) {
            return Err(SpecError::Duplicate(d.name.clone()));
        }
        if !d.annotations.is_empty() {
            need("device annotations", "0.6.0")?;
        }
        check_edits(&d.container_edits, &format!("device {:?}", d.name), &need)?;
    }
    check_edits(&spec.container_edits, "containerEdits", &need)
}

fn check_edits(
    edits: &ContainerEdits,
    place: &str,
    need: &dyn Fn(&str, &'static str) -> Result<(), SpecError>,
) -> Result<(), SpecError> {
    let bad = |what: String, reason: &str| SpecError::Edit {
        place: format!("{place} {what}"),
        reason: reason.into(),
    };
    for (i, e) in edits.env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(bad(format!("env[{i}]"), "must be NAME=VALUE"));
        }
    }
    for (i, n) in edits.device_nodes.iter().enumerate() {
        let at = || format!("deviceNodes[{i}] ({})", n.path);
        if n.path.is_empty() {
            return Err(bad(format!("deviceNodes[{i}]"), "path is required"));
        }
        if !n.path.starts_with('/') {
            return Err(bad(at(), "path must be absolute"));
        }
        if let Some(h) = &n.host_path {
            need("deviceNodes hostPath", "0.5.0")?;
            if !h.starts_with('/') {
                return Err(bad(at(), "hostPath must be absolute"));
            }
        }
        match n.dev_type.as_deref() {
            None | Some("") | Some("b") | Some("c") | Some("u") => {}
            Some("p") => {
                if n.major.is_some() || n.minor.is_some() {
                    return Err(bad(at(), "a fifo (type p) has no major/minor"));
                }
            }
            Some(_) => return Err(bad(at(), "type must be b, c, u or p")),
        }
        for v in [n.major, n.minor].into_iter().flatten() {
            if !(0..=u32::MAX as i64).contains(&v) {
                return Err(bad(at(), "major/minor out of range"));
            }
        }
        if let Some(p) = n.permissions.as_deref().filter(|p| !p.is_empty()) {
            if Access::parse(p).is_none() {
                return Err(bad(at(), "permissions must be letters from rwm"));
            }
        }
    }
    for (i, m) in edits.mounts.iter().enumerate() {
        let at = format!("mounts[{i}] ({})", m.container_path);
        if m.host_path.is_empty() || m.container_path.is_empty() {
            return Err(bad(at, "hostPath and containerPath are required"));
        }
        if !m.container_path.starts_with('/') {
            return Err(bad(at, "containerPath must be absolute"));
        }
        if m.fs_type.is_some() {
            need("mounts type", "0.4.0")?;
        }
    }
    for (i, h) in edits.hooks.iter().enumerate() {
        let at = format!("hooks[{i}] ({})", h.hook_name);
        const NAMES: &[&str] = &[
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ];
        if !NAMES.contains(&h.hook_name.as_str()) {
            return Err(bad(at, "unknown hookName"));
        }
        if !h.path.starts_with('/') {
            return Err(bad(at, "path must be absolute"));
        }
        if h.timeout.is_some_and(|t| t <= 0) {
            return Err(bad(at, "timeout must be greater than zero"));
        }
    }
    if !edits.additional_gids.is_empty() {
        need("additionalGids", "0.7.0")?;
    }
    if edits.intel_rdt.is_some() {
        need("intelRdt", "0.7.0")?;
    }
    for (i, n) in edits.net_devices.iter().enumerate() {
        need("netDevices", "1.1.0")?;
        if n.host_interface_name.is_empty() || n.name.is_empty() {
            return Err(bad(
                format!("netDevices[{i}]"),
                "hostInterfaceName and name are required",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Result<Spec, SpecError> {
        parse(text.as_bytes(), Format::Json)
    }

    const GOOD_JSON: &str = r#"{
        "cdiVersion": "0.6.0", "kind": "vendor.com/class",
        "devices": [{"name": "dev0", "containerEdits": {
            "deviceNodes": [{"path": "/dev/loop7", "hostPath": "/dev/loop7", "permissions": "rw", "fileMode": 432}],
            "mounts": [{"hostPath": "/srv/x", "containerPath": "/x", "options": ["ro", "rbind"]}]}}],
        "containerEdits": {"env": ["A=1"]}
    }"#;

    #[test]
    fn table_of_specs() {
        // (contents, format, Ok or the start of the error)
        let good_yaml = "cdiVersion: 1.1.0\nkind: vendor.com/net\ndevices:\n- name: eth\n  containerEdits:\n    netDevices:\n    - hostInterfaceName: veth0\n      name: eth1\n";
        let cases: &[(&str, Format, Result<(), &str>)] = &[
            (GOOD_JSON, Format::Json, Ok(())),
            (GOOD_JSON, Format::Yaml, Ok(())),
            (good_yaml, Format::Yaml, Ok(())),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"deviceNodes":[{"path":"/dev/null"}]}}]}"#,
                Format::Json,
                Ok(()),
            ),
            // Unknown fields are ignored.
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","extra":1,"devices":[{"name":"a","containerEdits":{}}]}"#,
                Format::Json,
                Ok(()),
            ),
            ("{", Format::Json, Err("cannot parse")),
            ("devices: [", Format::Yaml, Err("cannot parse")),
            (
                r#"{"cdiVersion":"1.2.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{}}]}"#,
                Format::Json,
                Err("cdiVersion"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"vcom","devices":[{"name":"a","containerEdits":{}}]}"#,
                Format::Json,
                Err("kind"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[]}"#,
                Format::Json,
                Err("a spec must list"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a-","containerEdits":{}}]}"#,
                Format::Json,
                Err("device name"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{}},{"name":"a","containerEdits":{}}]}"#,
                Format::Json,
                Err("device \"a\" is listed twice"),
            ),
            // hostPath came with 0.5.0.
            (
                r#"{"cdiVersion":"0.4.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/dev/y"}]}}]}"#,
                Format::Json,
                Err("deviceNodes hostPath needs"),
            ),
            // netDevices came with 1.1.0.
            (
                r#"{"cdiVersion":"1.0.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"netDevices":[{"hostInterfaceName":"x","name":"y"}]}}]}"#,
                Format::Json,
                Err("netDevices needs"),
            ),
            (
                r#"{"cdiVersion":"0.6.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"additionalGids":[5]}}]}"#,
                Format::Json,
                Err("additionalGids needs"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"deviceNodes":[{"path":"dev/x"}]}}]}"#,
                Format::Json,
                Err("device \"a\" deviceNodes[0]"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"deviceNodes":[{"path":"/dev/x","permissions":"rwx"}]}}]}"#,
                Format::Json,
                Err("device \"a\" deviceNodes[0]"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"deviceNodes":[{"path":"/dev/x","type":"z"}]}}]}"#,
                Format::Json,
                Err("device \"a\" deviceNodes[0]"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"mounts":[{"hostPath":"/a","containerPath":"b"}]}}]}"#,
                Format::Json,
                Err("device \"a\" mounts[0]"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a"}],"containerEdits":{"env":["NOVALUE"]}}"#,
                Format::Json,
                Err("containerEdits env[0]"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a"}],"containerEdits":{"hooks":[{"hookName":"later","path":"/bin/true"}]}}"#,
                Format::Json,
                Err("containerEdits hooks[0]"),
            ),
            (
                r#"{"cdiVersion":"0.3.0","kind":"v.com/c.x","devices":[{"name":"a"}]}"#,
                Format::Json,
                Err("a '.' in the class"),
            ),
        ];
        for (i, (text, format, want)) in cases.iter().enumerate() {
            let got = parse(text.as_bytes(), *format);
            match (want, got) {
                (Ok(()), Ok(_)) => {}
                (Err(prefix), Err(e)) => {
                    assert!(e.to_string().starts_with(prefix), "case {i}: {e}")
                }
                (want, got) => panic!("case {i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn fields_are_read() {
        let s = json(GOOD_JSON).unwrap();
        let n = &s.devices[0].container_edits.device_nodes[0];
        assert_eq!(n.host(), "/dev/loop7");
        assert_eq!(n.file_mode, Some(0o660));
        assert_eq!(n.access(), Access::parse("rw").unwrap());
        assert_eq!(s.container_edits.env, ["A=1"]);
        let m = &s.devices[0].container_edits.mounts[0];
        assert_eq!(m.options, ["ro", "rbind"]);
    }

    #[test]
    fn yaml_octal_file_modes() {
        let y = "cdiVersion: 0.5.0\nkind: v.com/c\ndevices:\n- name: a\n  containerEdits:\n    deviceNodes:\n    - path: /dev/a\n      fileMode: 0o640\n";
        let s = parse(y.as_bytes(), Format::Yaml).unwrap();
        assert_eq!(
            s.devices[0].container_edits.device_nodes[0].file_mode,
            Some(0o640)
        );
    }

    #[test]
    fn json_round_trips() {
        let s = json(GOOD_JSON).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(json(&text).unwrap(), s);
    }

    #[test]
    fn append_keeps_order() {
        let mut a = ContainerEdits {
            env: vec!["A=1".into()],
            ..Default::default()
        };
        let b = ContainerEdits {
            env: vec!["B=2".into()],
            additional_gids: vec![3],
            ..Default::default()
        };
        a.append(&b);
        assert_eq!(a.env, ["A=1", "B=2"]);
        assert_eq!(a.additional_gids, [3]);
    }
}
