//! The daemon's policy file (TOML) → a validated [`Policy`].
//!
//! Everything is checked before the policy is used: unknown keys, bad
//! globs, bad rules, bad selectors and duplicate names are errors naming the
//! file, the key and its line. A file with any error is rejected whole.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;
use toml::Spanned;

use crate::error::IoError;
use crate::passthrough::parse_mode;
use crate::presets::Preset;
use crate::rule::{Access, RuleSpec};
use crate::target::{RuntimeKind, Target};

pub use super::selector::ContainerSelector;
use super::selector::{DeviceSelector, HexId};
use super::template::DestTemplate;

/// Default policy file.
pub const DEFAULT_CONFIG: &str = "/etc/ctdev/policy.toml";

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (its path named).
    #[error("policy file: {0}")]
    Read(#[from] IoError),
    /// TOML syntax or a key/type the format does not have.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The policy file's path.
        path: PathBuf,
        /// 1-based line (0 when the parser gave no position).
        line: usize,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value that parsed but is not valid.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The policy file's path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Dotted key, e.g. `container[1].hotplug[0].devname`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

// ---- raw file model ---------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    scope: Option<Spanned<String>>,
    resync_interval: Option<Spanned<f64>>,
    state_dir: Option<Spanned<String>>,
    /// CDI spec directories, lowest priority first (default /etc/cdi, /var/run/cdi).
    cdi_dirs: Option<Vec<Spanned<String>>>,
    /// Run the NRI plugin in the daemon's process (see `crate::nri::section`).
    nri: Option<Spanned<crate::nri::section::NriSection>>,
    #[serde(default)]
    container: Vec<Spanned<RawContainer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: Spanned<String>,
    select: Spanned<RawSelect>,
    preset: Option<Spanned<String>>,
    takeover: Option<Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<String>>,
    #[serde(default)]
    devices: Vec<Spanned<RawDevice>>,
    #[serde(default)]
    hotplug: Vec<Spanned<RawHotplug>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelect {
    target: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    runtime: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    path: Option<Spanned<String>>,
    /// A CDI device (`vendor.com/class=name`) instead of a host path.
    cdi: Option<Spanned<String>>,
    dest: Option<Spanned<String>>,
    access: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    links: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHotplug {
    subsystem: Option<Spanned<String>>,
    devtype: Option<Spanned<String>>,
    id_vendor_id: Option<Spanned<String>>,
    id_model_id: Option<Spanned<String>>,
    id_serial: Option<Spanned<String>>,
    id_serial_short: Option<Spanned<String>>,
    devpath_prefix: Option<Spanned<String>>,
    devname: Option<Spanned<String>>,
    tag: Option<Spanned<String>>,
    /// Any udev property: `property = { ID_PATH = "pci-*", MY_ENV = "1" }`.
    property: Option<std::collections::BTreeMap<String, Spanned<String>>>,
    dest: Option<Spanned<String>>,
    access: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    links: Option<bool>,
}

// ---- resolved model ---------------------------------------------------------

/// A device node to pass into every selected container.
#[derive(Debug, Clone)]
pub struct StaticDevice {
    /// Host node (or directory of nodes).
    pub path: PathBuf,
    /// Where it lands in the container (default: `path`).
    pub dest: Option<PathBuf>,
    /// Access to open.
    pub access: Access,
    /// Node permission bits (default: the host node's).
    pub mode: Option<u32>,
    /// Also recreate the device's udev names (DEVLINKS) as symlinks.
    pub links: bool,
}

/// A hotplug rule: devices matching `selector` are passed in while present.
#[derive(Debug, Clone)]
pub struct Hotplug {
    /// Which devices.
    pub selector: DeviceSelector,
    /// Where the node lands: a template over udev properties
    /// (default `/dev/{devname}`).
    pub dest: DestTemplate,
    /// Access to open.
    pub access: Access,
    /// Node permission bits (default: the host node's, or 0600).
    pub mode: Option<u32>,
    /// Also recreate the device's udev names (DEVLINKS) as symlinks.
    pub links: bool,
}

/// What the daemon does about a runtime's own device program on a cgroup
/// it manages (`takeover = "import" | "replace" | "off"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TakeoverMode {
    /// Replace the runtime's program by ctdev's, adding the runtime's own
    /// rules (found as `ctdev attach --takeover` finds them) to the entry's.
    #[default]
    Import,
    /// Replace the runtime's program by ctdev's with only the entry's
    /// preset and rules.
    Replace,
    /// Leave the runtime's program in place (both decide).
    Off,
}

impl TakeoverMode {
    /// The file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TakeoverMode::Import => "import",
            TakeoverMode::Replace => "replace",
            TakeoverMode::Off => "off",
        }
    }
}

/// One `[[container]]` entry.
#[derive(Debug, Clone)]
pub struct ContainerPolicy {
    /// Its name (for logs and state).
    pub name: String,
    /// Which cgroups it applies to.
    pub select: ContainerSelector,
    /// The rules the container starts with when the daemon attaches it.
    pub preset: Preset,
    /// Extra static rules (parsed; device paths resolved when applied).
    pub rules: Vec<RuleSpec>,
    /// Devices passed through.
    pub devices: Vec<StaticDevice>,
    /// Hotplug rules.
    pub hotplug: Vec<Hotplug>,
    /// What to do about a runtime's own device program.
    pub takeover: TakeoverMode,
    /// CDI devices (`devices = [{ cdi = "vendor.com/class=name" }]`).
    pub cdi: Vec<crate::cdi::QualifiedName>,
}

/// A validated policy file.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it came from.
    pub path: PathBuf,
    /// Only cgroups under this path inside the hierarchy are managed (`/`: all).
    pub scope: PathBuf,
    /// Seconds between full reconciliations (0: only on events and SIGHUP).
    pub resync_interval: f64,
    /// Where the daemon keeps its state file and private nodes.
    pub state_dir: Option<PathBuf>,
    /// Entries in file order; the first one that selects a cgroup wins.
    pub containers: Vec<ContainerPolicy>,
    /// CDI spec directories for `devices = [{ cdi = ... }]`, lowest priority first.
    pub cdi_dirs: Vec<PathBuf>,
    /// The `[nri]` section: the daemon also runs the NRI plugin.
    pub nri: Option<crate::nri::section::NriSection>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map(|s| s.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(0)
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            key: key.into(),
            message: message.into(),
        }
    }

    fn glob(
        &self,
        s: &Spanned<String>,
        key: &str,
        literal_separator: bool,
    ) -> Result<GlobMatcher, ConfigError> {
        GlobBuilder::new(s.get_ref())
            .literal_separator(literal_separator)
            .build()
            .map(|g: Glob| g.compile_matcher())
            .map_err(|e| {
                self.err(
                    s.span(),
                    key,
                    format!("invalid glob {:?}: {e}", s.get_ref()),
                )
            })
    }

    fn access(&self, s: &Option<Spanned<String>>, key: &str) -> Result<Access, ConfigError> {
        match s {
            None => Ok(Access::ALL),
            Some(a) => match Access::parse(a.get_ref()) {
                Some(acc) if !acc.is_empty() => Ok(acc),
                _ => Err(self.err(
                    a.span(),
                    key,
                    format!("invalid access {:?}: expected letters from \"rwm\", each once, at least one", a.get_ref()),
                )),
            },
        }
    }

    fn mode(&self, s: &Option<Spanned<String>>, key: &str) -> Result<Option<u32>, ConfigError> {
        s.as_ref()
            .map(|m| parse_mode(m.get_ref()).map_err(|e| self.err(m.span(), key, e.to_string())))
            .transpose()
    }

    fn abs_path(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let p = PathBuf::from(s.get_ref());
        if !p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(self.err(
                s.span(),
                key,
                format!("{:?} must be an absolute path without `..`", s.get_ref()),
            ));
        }
        Ok(p)
    }
}

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, ConfigError> {
    let text = fs::read_to_string(path).map_err(IoError::at("read", path))?;
    parse(path, &text)
}

/// Validates the text of a policy file (`path` is only used in messages).
pub fn parse(path: &Path, text: &str) -> Result<Policy, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
        message: e.message().trim().to_string(),
    })?;
    let cx = Ctx { path, text };
    let scope = match &raw.scope {
        None => PathBuf::from("/"),
        Some(s) => cx.abs_path(s, "scope")?,
    };
    let resync_interval = match &raw.resync_interval {
        None => 30.0,
        Some(r) if r.get_ref().is_finite() && *r.get_ref() >= 0.0 => *r.get_ref(),
        Some(r) => {
            return Err(cx.err(
                r.span(),
                "resync_interval",
                "must be a number of seconds >= 0",
            ))
        }
    };
    let state_dir = raw
        .state_dir
        .as_ref()
        .map(|s| cx.abs_path(s, "state_dir"))
        .transpose()?;
    let mut containers: Vec<ContainerPolicy> = Vec::new();
    for (i, c) in raw.container.iter().enumerate() {
        let key = |k: &str| format!("container[{i}].{k}");
        let c_span = c.span();
        let c = c.get_ref();
        let name = c.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(cx.err(c.name.span(), key("name"), "must not be empty"));
        }
        if containers.iter().any(|o| o.name == name) {
            return Err(cx.err(
                c.name.span(),
                key("name"),
                format!("duplicate container name {name:?}"),
            ));
        }
        let sel = c.select.get_ref();
        let select = match (&sel.target, &sel.cgroup, &sel.runtime, &sel.name) {
            (Some(t), None, None, None) => {
                let target: Target = t
                    .get_ref()
                    .parse()
                    .map_err(|e: crate::target::TargetError| cx.err(t.span(), key("select.target"), e.to_string()))?;
                if matches!(target, Target::Pid(_) | Target::PolicyId(_)) {
                    return Err(cx.err(
                        t.span(),
                        key("select.target"),
                        "pid:N and id:N name one process or policy, not a container to follow: use a cgroup path, RUNTIME:NAME or a name",
                    ));
                }
                ContainerSelector::Target(target)
            }
            (None, Some(g), None, None) => {
                if !g.get_ref().starts_with('/') {
                    return Err(cx.err(
                        g.span(),
                        key("select.cgroup"),
                        "a cgroup glob is a path inside the hierarchy and starts with `/` (as /proc/PID/cgroup shows it)",
                    ));
                }
                ContainerSelector::Cgroup(cx.glob(g, &key("select.cgroup"), true)?)
            }
            (None, None, Some(r), n) => {
                let kind = RuntimeKind::ALL
                    .into_iter()
                    .find(|k| k.prefix() == r.get_ref())
                    .ok_or_else(|| {
                        cx.err(r.span(), key("select.runtime"), format!("unknown runtime {:?}: expected lxc, docker, podman, containerd or crio", r.get_ref()))
                    })?;
                let glob = match n {
                    Some(n) => cx.glob(n, &key("select.name"), false)?,
                    None => Glob::new("*").map(|g| g.compile_matcher()).map_err(|e| cx.err(r.span(), key("select"), e.to_string()))?,
                };
                ContainerSelector::Runtime(kind, glob)
            }
            (None, None, None, Some(n)) => {
                return Err(cx.err(n.span(), key("select.name"), "`name` needs `runtime` (the name glob is matched against that runtime's containers)"))
            }
            _ => {
                return Err(cx.err(
                    c.select.span(),
                    key("select"),
                    "give exactly one of `target`, `cgroup`, or `runtime` (with an optional `name` glob)",
                ))
            }
        };
        let preset = match &c.preset {
            None => Preset::Oci,
            Some(p) => match p.get_ref().as_str() {
                "oci" => Preset::Oci,
                "none" => Preset::None,
                other => {
                    return Err(cx.err(
                        p.span(),
                        key("preset"),
                        format!("unknown preset {other:?}: expected \"oci\" or \"none\""),
                    ))
                }
            },
        };
        let takeover = match &c.takeover {
            None => TakeoverMode::Import,
            Some(t) => [
                TakeoverMode::Import,
                TakeoverMode::Replace,
                TakeoverMode::Off,
            ]
            .into_iter()
            .find(|m| m.as_str() == t.get_ref())
            .ok_or_else(|| {
                cx.err(
                    t.span(),
                    key("takeover"),
                    format!(
                        "unknown takeover {:?}: expected \"import\", \"replace\" or \"off\"",
                        t.get_ref()
                    ),
                )
            })?,
        };
        let mut rules = Vec::new();
        for (j, r) in c.rules.iter().enumerate() {
            rules.push(
                RuleSpec::parse(r.get_ref())
                    .map_err(|e| cx.err(r.span(), key(&format!("rules[{j}]")), e.to_string()))?,
            );
        }
        let mut devices = Vec::new();
        let mut cdi = Vec::new();
        for (j, d) in c.devices.iter().enumerate() {
            let dk = |k: &str| key(&format!("devices[{j}].{k}"));
            let span = d.span();
            let d = d.get_ref();
            let path = match (&d.path, &d.cdi) {
                (None, Some(name)) => {
                    if d.dest.is_some() || d.access.is_some() || d.mode.is_some() {
                        return Err(cx.err(
                            span,
                            key(&format!("devices[{j}]")),
                            "a cdi device takes no dest, access or mode: its spec says them",
                        ));
                    }
                    cdi.push(
                        crate::cdi::QualifiedName::parse(name.get_ref())
                            .map_err(|e| cx.err(name.span(), dk("cdi"), e.to_string()))?,
                    );
                    continue;
                }
                (Some(path), None) => path,
                _ => {
                    return Err(cx.err(
                        span,
                        key(&format!("devices[{j}]")),
                        "give either path (a host device) or cdi (vendor.com/class=name)",
                    ))
                }
            };
            devices.push(StaticDevice {
                path: cx.abs_path(path, &dk("path"))?,
                dest: d
                    .dest
                    .as_ref()
                    .map(|s| cx.abs_path(s, &dk("dest")))
                    .transpose()?,
                access: cx.access(&d.access, &dk("access"))?,
                mode: cx.mode(&d.mode, &dk("mode"))?,
                links: d.links.unwrap_or(false),
            });
        }
        let mut hotplug = Vec::new();
        for (j, h) in c.hotplug.iter().enumerate() {
            let hk = |k: &str| key(&format!("hotplug[{j}].{k}"));
            let span = h.span();
            let h = h.get_ref();
            let s = |o: &Option<Spanned<String>>| o.as_ref().map(|v| v.get_ref().clone());
            let hex =
                |o: &Option<Spanned<String>>, k: &str| -> Result<Option<HexId>, ConfigError> {
                    o.as_ref()
                        .map(|v| {
                            HexId::parse(v.get_ref()).ok_or_else(|| {
                                cx.err(
                                    v.span(),
                                    hk(k),
                                    format!(
                                        "{:?} is not a 4-digit hex id such as \"0403\"",
                                        v.get_ref()
                                    ),
                                )
                            })
                        })
                        .transpose()
                };
            let devname = h
                .devname
                .as_ref()
                .map(|g| {
                    let stripped = g
                        .get_ref()
                        .strip_prefix("/dev/")
                        .unwrap_or(g.get_ref())
                        .to_string();
                    cx.glob(&Spanned::new(g.span(), stripped), &hk("devname"), true)
                })
                .transpose()?;
            let devpath_prefix =
                match &h.devpath_prefix {
                    Some(p) if !p.get_ref().starts_with("/devices/") => return Err(cx.err(
                        p.span(),
                        hk("devpath_prefix"),
                        "a DEVPATH starts with /devices/ (as in /sys/devices/..., without /sys)",
                    )),
                    p => s(p).map(|p| p.trim_end_matches('/').to_string()),
                };
            let selector = DeviceSelector {
                subsystem: s(&h.subsystem),
                devtype: s(&h.devtype),
                id_vendor_id: hex(&h.id_vendor_id, "id_vendor_id")?,
                id_model_id: hex(&h.id_model_id, "id_model_id")?,
                id_serial: s(&h.id_serial),
                id_serial_short: s(&h.id_serial_short),
                devpath_prefix,
                devname,
                devname_text: s(&h.devname),
                tag: s(&h.tag),
                properties: Vec::new(),
            };
            let mut selector = selector;
            for (k, v) in h.property.iter().flatten() {
                let pk = hk(&format!("property.{k}"));
                if k.is_empty()
                    || !k
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(cx.err(
                        v.span(),
                        pk,
                        "a udev property name is upper case (A-Z, 0-9, _), as `udevadm info` shows it",
                    ));
                }
                let g = cx.glob(v, &pk, false)?;
                selector
                    .properties
                    .push((k.clone(), g, v.get_ref().clone()));
            }
            if selector.is_empty() {
                return Err(cx.err(span, key(&format!("hotplug[{j}]")), "a hotplug rule needs at least one match key (subsystem, devtype, id_vendor_id, id_model_id, id_serial, id_serial_short, devpath_prefix, devname, tag, property)"));
            }
            let dest = match &h.dest {
                None => DestTemplate::default(),
                Some(d) => {
                    let t = DestTemplate::parse(d.get_ref())
                        .map_err(|e| cx.err(d.span(), hk("dest"), e.to_string()))?;
                    let probe = t
                        .render_with(|_| Some("x"))
                        .unwrap_or_else(|| d.get_ref().clone());
                    cx.abs_path(&Spanned::new(d.span(), probe), &hk("dest"))?;
                    t
                }
            };
            hotplug.push(Hotplug {
                selector,
                dest,
                access: cx.access(&h.access, &hk("access"))?,
                mode: cx.mode(&h.mode, &hk("mode"))?,
                links: h.links.unwrap_or(false),
            });
        }
        let _ = c_span;
        containers.push(ContainerPolicy {
            name,
            select,
            preset,
            rules,
            devices,
            hotplug,
            takeover,
            cdi,
        });
    }
    let cdi_dirs = match &raw.cdi_dirs {
        None => crate::cdi::DEFAULT_DIRS.iter().map(PathBuf::from).collect(),
        Some(dirs) => dirs
            .iter()
            .enumerate()
            .map(|(i, d)| cx.abs_path(d, &format!("cdi_dirs[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let nri = match raw.nri {
        None => None,
        Some(section) => {
            let span = section.span();
            let base = path.parent().unwrap_or(Path::new("/"));
            Some(
                section
                    .into_inner()
                    .resolve(base)
                    .map_err(|(key, message)| cx.err(span, key, message))?,
            )
        }
    };
    Ok(Policy {
        path: path.to_path_buf(),
        scope,
        resync_interval,
        state_dir,
        containers,
        cdi_dirs,
        nri,
    })
}

impl Policy {
    /// A human-readable summary of the resolved policy (`--check-config`).
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "policy file {}", self.path.display());
        let _ = writeln!(out, "scope {}", self.scope.display());
        let _ = writeln!(out, "resync every {}s", self.resync_interval);
        if let Some(n) = &self.nri {
            let _ = writeln!(
                out,
                "nri plugin {:?} (index {}) on {}, policy file {}",
                n.name,
                n.index,
                n.socket.display(),
                n.policy.display()
            );
        }
        for c in &self.containers {
            let sel = match &c.select {
                ContainerSelector::Target(t) => format!("target {t}"),
                ContainerSelector::Cgroup(g) => format!("cgroup glob {}", g.glob()),
                ContainerSelector::Runtime(k, g) => {
                    format!("{} containers named {}", k.prefix(), g.glob())
                }
            };
            let _ = writeln!(
                out,
                "container {:?}: {sel}, preset {}, takeover {}",
                c.name,
                c.preset.name(),
                c.takeover.as_str()
            );
            for r in &c.rules {
                let text = match r {
                    RuleSpec::Numbers(r) => r.to_string(),
                    RuleSpec::Path { path, access } => format!("{} {access}", path.display()),
                };
                let _ = writeln!(out, "  rule {text}");
            }
            for d in &c.devices {
                let _ = writeln!(
                    out,
                    "  device {} -> {} access {}",
                    d.path.display(),
                    d.dest.as_ref().unwrap_or(&d.path).display(),
                    d.access
                );
            }
            for h in &c.hotplug {
                let _ = writeln!(
                    out,
                    "  hotplug {} -> {} access {}{}",
                    h.selector,
                    h.dest,
                    h.access,
                    if h.links { " links" } else { "" }
                );
            }
        }
        out
    }
}

impl Policy {
    /// Makes cgroup-directory targets relative to the mount.
    pub fn normalize(&mut self, mount: &Path) {
        for c in &mut self.containers {
            if let ContainerSelector::Target(Target::Cgroup(p)) = &mut c.select {
                if let Ok(rest) = p.strip_prefix(mount) {
                    *p = Path::new("/").join(rest);
                }
            }
        }
        if let Ok(rest) = self.scope.strip_prefix(mount) {
            self.scope = Path::new("/").join(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Policy, ConfigError> {
        parse(Path::new("policy.toml"), text)
    }

    const GOOD: &str = r#"
scope = "/machine"
resync_interval = 5

[[container]]
name = "ha"
select = { runtime = "docker", name = "ha-*" }
rules = ["c 10:200 rw", "/dev/null r"]
devices = [{ path = "/dev/net/tun", dest = "/dev/net/tun", access = "rw", mode = "0660" }]

[[container.hotplug]]
subsystem = "tty"
id_vendor_id = "0403"
id_model_id = "6001"
dest = "/dev/serial/{devname}"

[[container]]
name = "lxc"
select = { target = "lxc:web" }
preset = "none"

[[container]]
name = "glob"
select = { cgroup = "/lxc.payload.*" }
[[container.hotplug]]
devname = "/dev/loop1*"
devpath_prefix = "/devices/virtual/block/"
"#;

    #[test]
    fn good_file_resolves() {
        let pol = p(GOOD).unwrap();
        assert_eq!(pol.scope, Path::new("/machine"));
        assert_eq!(pol.resync_interval, 5.0);
        assert_eq!(pol.containers.len(), 3);
        let ha = &pol.containers[0];
        assert!(matches!(
            ha.select,
            ContainerSelector::Runtime(RuntimeKind::Docker, _)
        ));
        assert_eq!(ha.rules.len(), 2);
        assert_eq!(ha.devices[0].mode, Some(0o660));
        assert_eq!(ha.hotplug[0].dest.as_str(), "/dev/serial/{devname}");
        assert_eq!(ha.hotplug[0].selector.id_vendor_id, HexId::parse("0403"));
        assert_eq!(pol.containers[1].preset, Preset::None);
        let g = &pol.containers[2].hotplug[0];
        assert_eq!(g.dest.as_str(), "/dev/{devname}");
        assert_eq!(
            g.selector.devpath_prefix.as_deref(),
            Some("/devices/virtual/block")
        );
        assert!(g.selector.devname.as_ref().unwrap().is_match("loop12"));
        assert!(pol.describe().contains("docker containers named ha-*"));
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    #[test]
    fn cdi_devices_parse() {
        let base = "[[container]]\nname = \"a\"\nselect = { target = \"x\" }\n";
        let ok = p(&format!("cdi_dirs = [\"/srv/cdi\"]\n{base}devices = [{{ cdi = \"vendor.com/gpu=0\" }}, {{ path = \"/dev/null\" }}]\n")).unwrap();
        assert_eq!(ok.cdi_dirs, [PathBuf::from("/srv/cdi")]);
        assert_eq!(ok.containers[0].cdi[0].to_string(), "vendor.com/gpu=0");
        assert_eq!(ok.containers[0].devices.len(), 1);
        let default = p(&format!(
            "{base}devices = [{{ cdi = \"vendor.com/gpu=0\" }}]\n"
        ))
        .unwrap();
        assert_eq!(default.cdi_dirs.len(), 2);
        for (bad, what) in [
            ("devices = [{ cdi = \"gpu0\" }]", "devices[0].cdi"),
            (
                "devices = [{ cdi = \"v.com/g=0\", path = \"/dev/x\" }]",
                "either path",
            ),
            (
                "devices = [{ cdi = \"v.com/g=0\", mode = \"0600\" }]",
                "takes no dest",
            ),
            ("devices = [{ access = \"r\" }]", "either path"),
        ] {
            let e = err(&format!("{base}{bad}\n"));
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_files_name_key_and_line() {
        let e = err("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\nrulez = []\n");
        assert!(e.starts_with("policy.toml:4:"), "{e}");
        assert!(e.contains("rulez"), "{e}");

        let e =
            err("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\nrules = [\"q 1:3\"]\n");
        assert!(
            e.starts_with("policy.toml:4: container[0].rules[0]:"),
            "{e}"
        );
        assert!(e.contains("invalid type"), "{e}");

        let e = err("[[container]]\nname = \"a\"\nselect = { target = \"x\", cgroup = \"/y\" }\n");
        assert!(e.starts_with("policy.toml:3: container[0].select:"), "{e}");

        let e = err("[[container]]\nname = \"a\"\nselect = { runtime = \"rkt\" }\n");
        assert!(
            e.contains("container[0].select.runtime: unknown runtime \"rkt\""),
            "{e}"
        );

        let e = err("[[container]]\nname = \"a\"\nselect = { cgroup = \"/a/[b\" }\n");
        assert!(
            e.contains("container[0].select.cgroup: invalid glob"),
            "{e}"
        );

        let e = err("[[container]]\nname = \"a\"\nselect = { target = \"pid:3\" }\n");
        assert!(e.contains("select.target"), "{e}");

        let e = err("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\n[[container.hotplug]]\ndest = \"/dev/x\"\n");
        assert!(
            e.contains("policy.toml:4: container[0].hotplug[0]: a hotplug rule needs"),
            "{e}"
        );

        let e = err("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\n[[container.hotplug]]\nid_vendor_id = \"zz\"\n");
        assert!(
            e.contains("policy.toml:5: container[0].hotplug[0].id_vendor_id"),
            "{e}"
        );

        let e = err("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\n[[container]]\nname = \"a\"\nselect = { target = \"y\" }\n");
        assert!(
            e.contains("policy.toml:5: container[1].name: duplicate"),
            "{e}"
        );

        let e = err("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\ndevices = [{ path = \"dev/x\" }]\n");
        assert!(e.contains("container[0].devices[0].path"), "{e}");

        let e = err("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\n[[container.hotplug]]\nsubsystem = \"block\"\naccess = \"rwx\"\n");
        assert!(
            e.contains("policy.toml:6: container[0].hotplug[0].access"),
            "{e}"
        );

        let e = err("scope = 3\n");
        assert!(e.starts_with("policy.toml:1:"), "{e}");

        let e = err("[[container]]\nselect = { target = \"x\" }\n");
        assert!(e.contains("name"), "{e}");
    }

    #[test]
    fn udev_properties_templates_and_links() {
        let pol = p(r#"
[[container]]
name = "ha"
select = { target = "lxc:ha" }
[[container.hotplug]]
property = { ID_PATH = "pci-*-usb-0:2:*", CTDEV_ZIGBEE = "1" }
dest = "/dev/zigbee/{ID_SERIAL}"
links = true
"#)
        .unwrap();
        let h = &pol.containers[0].hotplug[0];
        assert!(h.links);
        assert_eq!(h.dest.keys().collect::<Vec<_>>(), ["ID_SERIAL"]);
        assert_eq!(h.selector.properties.len(), 2);
        assert!(
            pol.describe().contains("CTDEV_ZIGBEE=1"),
            "{}",
            pol.describe()
        );
        let bad = |body: &str| {
            err(&format!(
                "[[container]]\nname = \"x\"\nselect = {{ target = \"lxc:x\" }}\n[[container.hotplug]]\n{body}\n"
            ))
        };
        let e = bad("property = { id_path = \"x\" }");
        assert!(
            e.contains("hotplug[0].property.id_path") && e.contains("upper case"),
            "{e}"
        );
        let e = bad("subsystem = \"tty\"\ndest = \"/dev/{ID_SERIAL\"");
        assert!(e.contains("hotplug[0].dest") && e.contains("braces"), "{e}");
        let e = bad("subsystem = \"tty\"\ndest = \"zigbee/{ID_SERIAL}\"");
        assert!(e.contains("hotplug[0].dest"), "{e}");
        let e = bad("subsystem = \"tty\"\nlinks = \"yes\"");
        assert!(
            e.contains("policy.toml:"),
            "a bad links value is refused: {e}"
        );
    }

    #[test]
    fn takeover_key() {
        let pol = p("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\n\
                     [[container]]\nname = \"b\"\nselect = { target = \"y\" }\ntakeover = \"replace\"\n\
                     [[container]]\nname = \"c\"\nselect = { target = \"z\" }\ntakeover = \"off\"\n")
        .unwrap();
        let modes: Vec<TakeoverMode> = pol.containers.iter().map(|c| c.takeover).collect();
        assert_eq!(
            modes,
            [
                TakeoverMode::Import,
                TakeoverMode::Replace,
                TakeoverMode::Off
            ]
        );
        assert!(pol.describe().contains("takeover replace"));
        let e =
            err("[[container]]\nname = \"a\"\nselect = { target = \"x\" }\ntakeover = \"yes\"\n");
        assert!(
            e.contains("policy.toml:4: container[0].takeover: unknown takeover \"yes\""),
            "{e}"
        );
    }
}
