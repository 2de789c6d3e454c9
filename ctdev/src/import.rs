//! Importing a runtime's device rules, for `ctdev attach --takeover`.
//!
//! Runtimes describe device access as an ordered list of cgroup v1-style
//! allow/deny rules ([`DeviceRuleSpec`]). The parsers read that list from
//! an OCI `config.json` ([`from_oci_config`]), runc's `state.json`
//! ([`from_runc_state`]) or an LXC config ([`from_lxc_config`]);
//! [`semantics`] replays what each runtime's program makes of the list and
//! [`translate`] turns it into ctdev entries that never allow more (and
//! lists what they allow less).

mod semantics;

pub use semantics::{
    check_size, ctdev_allows, is_lxc_reset, lxc_list, runc_defaults, translate, translate_model,
    verify, ModelError, Narrowed, RuntimeModel, Semantics, Translation, CRUN_DEFAULTS, MAX_NUMBERS,
    REQUESTS, RUNC_DEFAULTS,
};

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::IoError;
use crate::rule::{Access, DevNumber, DeviceType, Rule, RuleSpec, MAX_MAJOR, MAX_MINOR};

/// How deep `lxc.include` may nest before the config is rejected (a loop).
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// Why a runtime's rules could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file or directory could not be read.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A JSON file is not valid JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// One device rule in the file is malformed.
    #[error("{path}: bad device rule {entry}: {reason}")]
    BadEntry {
        path: PathBuf,
        /// Where and what the entry is (`linux.resources.devices[2] = {...}`, `line 7: ...`).
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file has none of the places device rules are kept.
    #[error("{path} has no device rules where expected (looked for {looked_for})")]
    NoRules {
        path: PathBuf,
        /// The JSON paths looked at.
        looked_for: &'static str,
    },
    /// `lxc.include` nests too deeply (an include loop).
    #[error(
        "{path}: lxc.include nests more than {MAX_INCLUDE_DEPTH} levels deep (an include loop?)"
    )]
    IncludeDepth {
        /// The file whose include went too deep.
        path: PathBuf,
    },
}

/// One runtime device rule, in the runtime's order: allow or deny `access`
/// on the devices `dev_type major:minor` stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceRuleSpec {
    /// Allow (`true`) or deny.
    pub allow: bool,
    /// Device type; [`DeviceType::All`] when the runtime gave none.
    pub dev_type: DeviceType,
    /// Major number or `*`.
    pub major: DevNumber,
    /// Minor number or `*`.
    pub minor: DevNumber,
    /// The access bits concerned.
    pub access: Access,
}

impl DeviceRuleSpec {
    /// An allow rule.
    pub fn allow(dev_type: DeviceType, major: DevNumber, minor: DevNumber, access: Access) -> Self {
        DeviceRuleSpec {
            allow: true,
            dev_type,
            major,
            minor,
            access,
        }
    }

    /// A deny rule.
    pub fn deny(dev_type: DeviceType, major: DevNumber, minor: DevNumber, access: Access) -> Self {
        DeviceRuleSpec {
            allow: false,
            ..Self::allow(dev_type, major, minor, access)
        }
    }
}

impl fmt::Display for DeviceRuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}:{} {}",
            if self.allow { "allow" } else { "deny" },
            self.dev_type.letter(),
            self.major,
            self.minor,
            self.access
        )
    }
}

/// The ctdev entries for a runc rule list (the full list, runc's defaults
/// included, as in state.json): [`translate`] with [`Semantics::Runc`].
pub fn effective_rules(specs: &[DeviceRuleSpec]) -> Result<Vec<Rule>, ModelError> {
    Ok(translate(Semantics::Runc, specs)?.rules)
}

fn read(path: &Path) -> Result<String, ImportError> {
    Ok(std::fs::read_to_string(path).map_err(IoError::at("read", path))?)
}

fn parse_json(text: &str, path: &Path) -> Result<Value, ImportError> {
    serde_json::from_str(text).map_err(|source| ImportError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A device number from JSON: absent, `null` or `-1` is `*`.
fn json_number(v: Option<&Value>, what: &str, max: u32) -> Result<DevNumber, String> {
    match v {
        None | Some(Value::Null) => Ok(DevNumber::Any),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(-1) => Ok(DevNumber::Any),
            Some(x) if (0..=i64::from(max)).contains(&x) => Ok(DevNumber::Exact(x as u32)),
            _ => Err(format!("{what} {n} is not -1 (any) or 0..={max}")),
        },
        Some(other) => Err(format!("{what} {other} is not a number")),
    }
}

fn json_access(v: Option<&Value>, what: &str) -> Result<Access, String> {
    match v {
        // runc: no access given means no access (the rule changes nothing).
        None | Some(Value::Null) => Ok(Access::NONE),
        Some(Value::String(s)) => {
            Access::parse(s).ok_or_else(|| format!("{what} {s:?} is not letters from \"rwm\""))
        }
        Some(other) => Err(format!("{what} {other} is not a string")),
    }
}

fn json_allow(v: Option<&Value>) -> Result<bool, String> {
    match v {
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("\"allow\" {other} is not true or false")),
        None => Err("\"allow\" is missing".into()),
    }
}

fn letter_type(c: char) -> Option<DeviceType> {
    match c {
        'a' => Some(DeviceType::All),
        'b' => Some(DeviceType::Block),
        'c' => Some(DeviceType::Char),
        _ => None,
    }
}

fn json_array<'a>(path: &Path, v: &'a Value, where_: &str) -> Result<&'a [Value], ImportError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(&[]),
        other => Err(ImportError::BadEntry {
            path: path.to_path_buf(),
            entry: format!("{where_} = {other}"),
            reason: "not a list".into(),
        }),
    }
}

/// Each entry of the list `v` (at `where_` in the file) read by `entry`; an
/// entry it refuses is an error naming the file, `where_[i]` and the entry.
fn json_entries<T>(
    path: &Path,
    v: &Value,
    where_: &str,
    entry: fn(&Value) -> Result<T, String>,
) -> Result<Vec<T>, ImportError> {
    json_array(path, v, where_)?
        .iter()
        .enumerate()
        .map(|(i, e)| {
            entry(e).map_err(|reason| ImportError::BadEntry {
                path: path.to_path_buf(),
                entry: format!("{where_}[{i}] = {e}"),
                reason,
            })
        })
        .collect()
}

/// The device rules of an OCI runtime `config.json`
/// (`linux.resources.devices`: `{allow, type?, major?, minor?, access?}`;
/// no type is `a`, no number is `*`, no access is none). A config without
/// device rules gives an empty list.
pub fn from_oci_config(path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    parse_oci_config(&read(path)?, path)
}

/// [`from_oci_config`] on the file's text; `path` only names it in errors.
pub fn parse_oci_config(text: &str, path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    let json = parse_json(text, path)?;
    let Some(devices) = json.pointer("/linux/resources/devices") else {
        return Ok(Vec::new());
    };
    json_entries(path, devices, "linux.resources.devices", oci_entry)
}

/// The node paths of an OCI config's `linux.devices` (runc drops a default
/// device whose path is listed there).
pub fn oci_device_paths(text: &str, path: &Path) -> Result<Vec<String>, ImportError> {
    let json = parse_json(text, path)?;
    Ok(json
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| d.get("path").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// What runc 1.1 applies for an OCI config.json: its
/// `linux.resources.devices` followed by runc's default devices (minus
/// those whose node path the config's `linux.devices` lists).
pub fn oci_config_for_runc(path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    let text = read(path)?;
    let mut specs = parse_oci_config(&text, path)?;
    specs.extend(runc_defaults(&oci_device_paths(&text, path)?));
    Ok(specs)
}

fn oci_entry(e: &Value) -> Result<DeviceRuleSpec, String> {
    if !e.is_object() {
        return Err("not an object".into());
    }
    let dev_type = match e.get("type") {
        None | Some(Value::Null) => DeviceType::All,
        Some(Value::String(s)) => {
            let mut chars = s.chars();
            match (chars.next().and_then(letter_type), chars.next()) {
                (Some(t), None) => t,
                _ => return Err(format!("\"type\" {s:?} is not \"a\", \"b\" or \"c\"")),
            }
        }
        Some(other) => return Err(format!("\"type\" {other} is not a string")),
    };
    json_rule(e, dev_type, "access")
}

/// Where runc keeps the cgroup device rules in `state.json`: runc 1.0/1.1
/// embed the resources in `config.cgroups`; a separate `resources` object
/// is accepted too.
const RUNC_RULE_PATHS: [&str; 2] = [
    "/config/cgroups/devices",
    "/config/cgroups/resources/devices",
];

/// The device rules runc applied to a container, from its
/// `/run/runc/<id>/state.json` (`config.cgroups.devices`: libcontainer
/// rules `{type: 97|98|99 ('a','b','c'), major, minor (-1 = *),
/// permissions, allow}`, the container's own rules followed by runc's
/// defaults).
pub fn from_runc_state(path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    parse_runc_state(&read(path)?, path)
}

/// [`from_runc_state`] on the file's text; `path` only names it in errors.
pub fn parse_runc_state(text: &str, path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    RuncState::parse(text, path)?.rules
}

/// runc's `state.json` read once: its init process (to tell whose state it
/// is) and its device rules. A container's start reads it once for both.
#[derive(Debug)]
pub struct RuncState {
    /// `init_process_pid`, when it is an integer.
    pub init_pid: Option<i64>,
    /// The device rules, or why they cannot be read ([`parse_runc_state`]).
    pub rules: Result<Vec<DeviceRuleSpec>, ImportError>,
}

impl RuncState {
    /// Parses the text of a `state.json` (`path` only names it in errors):
    /// only the fields needed are kept (the rest, most of the file, is
    /// skipped, not built); a file of another shape than runc writes is
    /// read the general way, with the same result.
    pub fn parse(text: &str, path: &Path) -> Result<RuncState, ImportError> {
        if let Ok(doc) = serde_json::from_str::<RuncStateDoc>(text) {
            let devices = doc.config.and_then(|c| c.cgroups).and_then(|c| {
                c.devices
                    .map(|d| (RUNC_RULE_PATHS[0], d))
                    .or_else(|| c.resources?.devices.map(|d| (RUNC_RULE_PATHS[1], d)))
            });
            return Ok(RuncState {
                init_pid: doc.init_process_pid,
                rules: runc_rules(path, devices.as_ref().map(|(w, d)| (*w, d))),
            });
        }
        let json = parse_json(text, path)?;
        let devices = RUNC_RULE_PATHS
            .iter()
            .find_map(|p| json.pointer(p).map(|v| (*p, v)));
        Ok(RuncState {
            init_pid: json["init_process_pid"].as_i64(),
            rules: runc_rules(path, devices),
        })
    }
}

/// The fields of runc's `state.json` a takeover reads.
#[derive(serde::Deserialize)]
struct RuncStateDoc {
    #[serde(default)]
    init_process_pid: Option<i64>,
    #[serde(default)]
    config: Option<RuncConfigDoc>,
}

#[derive(serde::Deserialize)]
struct RuncConfigDoc {
    #[serde(default)]
    cgroups: Option<RuncCgroupsDoc>,
}

#[derive(serde::Deserialize)]
struct RuncCgroupsDoc {
    #[serde(default, deserialize_with = "present")]
    devices: Option<Value>,
    #[serde(default)]
    resources: Option<RuncResourcesDoc>,
}

#[derive(serde::Deserialize)]
struct RuncResourcesDoc {
    #[serde(default, deserialize_with = "present")]
    devices: Option<Value>,
}

/// A key that is present is `Some`, even with `null` (as a JSON pointer
/// finds it); only a missing key is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

/// runc's rule list found at `devices` (its JSON pointer and value).
fn runc_rules(
    path: &Path,
    devices: Option<(&str, &Value)>,
) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    let (where_, devices) = devices.ok_or_else(|| ImportError::NoRules {
            path: path.to_path_buf(),
            looked_for: "config.cgroups.devices, config.cgroups.resources.devices",
        })?;
    let where_ = where_.trim_start_matches('/').replace('/', ".");
    json_entries(path, devices, &where_, runc_entry)
}

/// The rule of a JSON entry of type `dev_type`: its `allow`, `major`,
/// `minor`, and its access under the key `access`.
fn json_rule(e: &Value, dev_type: DeviceType, access: &str) -> Result<DeviceRuleSpec, String> {
    Ok(DeviceRuleSpec {
        allow: json_allow(e.get("allow"))?,
        dev_type,
        major: json_number(e.get("major"), "\"major\"", MAX_MAJOR)?,
        minor: json_number(e.get("minor"), "\"minor\"", MAX_MINOR)?,
        access: json_access(e.get(access), &format!("{access:?}"))?,
    })
}

fn runc_entry(e: &Value) -> Result<DeviceRuleSpec, String> {
    if !e.is_object() {
        return Err("not an object".into());
    }
    let dev_type = match e.get("type") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|c| u8::try_from(c).ok())
            .and_then(|c| letter_type(char::from(c)))
            .ok_or_else(|| format!("\"type\" {n} is not 97 (a), 98 (b) or 99 (c)"))?,
        Some(Value::String(s)) if s.chars().count() == 1 => s
            .chars()
            .next()
            .and_then(letter_type)
            .ok_or_else(|| format!("\"type\" {s:?} is not \"a\", \"b\" or \"c\""))?,
        Some(other) => return Err(format!("\"type\" {other} is not a device type code")),
        None => return Err("\"type\" is missing".into()),
    };
    json_rule(e, dev_type, "permissions")
}

const LXC_ALLOW: &str = "lxc.cgroup2.devices.allow";
const LXC_DENY: &str = "lxc.cgroup2.devices.deny";

/// The cgroup2 device rules of an LXC container config
/// (`lxc.cgroup2.devices.allow = c 1:3 rwm`, `lxc.cgroup2.devices.deny = a`),
/// as LXC's device list keeps them: an `a` alone becomes the first rule
/// (`deny a`: allow list, `allow a`: deny list) and clears the earlier
/// ones; then the rules of that list's kind LXC compiles, a later rule of
/// the other kind with the same type, numbers and access text having
/// flipped (removed) an earlier one. A config without device rules gives
/// an empty list. `lxc.include` is followed when the file (or directory of
/// `*.conf` files) exists. As LXC does, an empty value clears the earlier
/// entries of that key, and `lxc.cgroup2 =` clears all. Comments, other
/// keys and the cgroup v1 `lxc.cgroup.devices.*` keys (which LXC ignores on
/// cgroup2) are skipped.
pub fn from_lxc_config(path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    let mut entries = Vec::new();
    lxc_file(path, 0, &mut entries)?;
    Ok(lxc_device_list(&entries))
}

/// LXC's list from config entries (with their access text).
fn lxc_device_list(entries: &[LxcEntry]) -> Vec<DeviceRuleSpec> {
    if entries.is_empty() {
        return Vec::new();
    }
    let (deny_list, kept) = lxc_list(entries.iter().map(|(_, s, t)| (*s, t.as_str())));
    let mode = DeviceRuleSpec {
        allow: deny_list,
        dev_type: DeviceType::All,
        major: DevNumber::Any,
        minor: DevNumber::Any,
        access: Access::NONE,
    };
    std::iter::once(mode).chain(kept).collect()
}

/// One LXC device line: allow or deny, the rule, its access text as written.
type LxcEntry = (bool, DeviceRuleSpec, String);

/// [`from_lxc_config`] on one file's text, without following `lxc.include`
/// (includes are skipped); `path` only names the file in errors.
pub fn parse_lxc_config(text: &str, path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    let mut entries = Vec::new();
    lxc_text(text, path, None, &mut entries)?;
    Ok(lxc_device_list(&entries))
}

fn lxc_file(path: &Path, depth: usize, out: &mut Vec<LxcEntry>) -> Result<(), ImportError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(ImportError::IncludeDepth {
            path: path.to_path_buf(),
        });
    }
    let text = read(path)?;
    lxc_text(&text, path, Some(depth), out)
}

/// One LXC config file's lines; `depth` is `None` when includes are skipped.
fn lxc_text(
    text: &str,
    path: &Path,
    depth: Option<usize>,
    out: &mut Vec<LxcEntry>,
) -> Result<(), ImportError> {
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let bad = |reason: String| ImportError::BadEntry {
            path: path.to_path_buf(),
            entry: format!("line {}: {trimmed}", n + 1),
            reason,
        };
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "lxc.include" => match depth {
                Some(depth) => lxc_include(path, Path::new(value), depth, out)?,
                None => tracing::debug!("{}: lxc.include {value} skipped", path.display()),
            },
            "lxc.cgroup2" if value.is_empty() => out.clear(),
            LXC_ALLOW | LXC_DENY => {
                let allow = key == LXC_ALLOW;
                if value.is_empty() {
                    out.retain(|(a, _, _)| *a != allow);
                    continue;
                }
                // LXC: `a` alone switches list modes; it compares access
                // as written, so keep the text.
                if value == "a" {
                    out.push((
                        allow,
                        DeviceRuleSpec {
                            allow,
                            dev_type: DeviceType::All,
                            major: DevNumber::Any,
                            minor: DevNumber::Any,
                            access: Access::NONE,
                        },
                        String::new(),
                    ));
                    continue;
                }
                let rule = match RuleSpec::parse(value) {
                    Ok(RuleSpec::Numbers(rule)) => rule,
                    Ok(RuleSpec::Path { .. }) => {
                        return Err(bad(
                            "LXC rules are TYPE MAJOR:MINOR ACCESS, not a path".into()
                        ))
                    }
                    Err(e) => return Err(bad(e.to_string())),
                };
                let text = value.split_whitespace().nth(2).unwrap_or("").to_string();
                out.push((
                    allow,
                    DeviceRuleSpec {
                        allow,
                        dev_type: rule.dev_type,
                        major: rule.major,
                        minor: rule.minor,
                        access: rule.access,
                    },
                    text,
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn lxc_include(
    from: &Path,
    target: &Path,
    depth: usize,
    out: &mut Vec<LxcEntry>,
) -> Result<(), ImportError> {
    let target = match from.parent() {
        Some(dir) if target.is_relative() => dir.join(target),
        _ => target.to_path_buf(),
    };
    if target.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&target)
            .map_err(IoError::at("read directory", &target))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
            .collect();
        files.sort();
        for f in files {
            lxc_file(&f, depth + 1, out)?;
        }
    } else if target.is_file() {
        lxc_file(&target, depth + 1, out)?;
    } else {
        tracing::warn!(
            "{}: lxc.include {} does not exist, skipped",
            from.display(),
            target.display()
        );
    }
    Ok(())
}

/// The reference verdict: whether runc 1.1 allows request `req`
/// (`ACCESS_*` bits, all of them needed) on device `t major:minor` with the
/// rule list `specs` (runc's defaults included), replaying runc's emulator
/// literally; `None` when runc refuses the list. The oracle the unit tests,
/// the fuzzers and the differential test against the real runc hold
/// [`translate`] to.
pub fn sequential_verdict(
    specs: &[DeviceRuleSpec],
    t: u32,
    major: u32,
    minor: u32,
    req: u32,
) -> Option<bool> {
    RuntimeModel::new(Semantics::Runc, specs)
        .ok()
        .map(|m| m.allows(t, major, minor, req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdev_common::{ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE, DEV_BLOCK, DEV_CHAR};

    fn spec(allow: bool, rule: &str) -> DeviceRuleSpec {
        let r = match RuleSpec::parse(rule).unwrap() {
            RuleSpec::Numbers(r) => r,
            p => panic!("{p:?}"),
        };
        DeviceRuleSpec {
            allow,
            dev_type: r.dev_type,
            major: r.major,
            minor: r.minor,
            access: r.access,
        }
    }
    fn allow(rule: &str) -> DeviceRuleSpec {
        spec(true, rule)
    }
    /// LXC's list-mode rule: `deny a` (allow list) or `allow a` (deny list).
    fn lxc_mode(deny_list: bool) -> DeviceRuleSpec {
        DeviceRuleSpec {
            access: Access::NONE,
            ..spec(deny_list, "a")
        }
    }
    fn deny(rule: &str) -> DeviceRuleSpec {
        spec(false, rule)
    }

    /// Translates with runc's semantics and holds the result to the
    /// oracle; `None` when runc refuses the list.
    fn check_as(
        semantics: Semantics,
        specs: &[DeviceRuleSpec],
        extra: &[u32],
    ) -> Option<Translation> {
        let model = RuntimeModel::new(semantics, specs).ok()?;
        let tr = translate(semantics, specs).unwrap();
        if let Err(e) = verify(&model, &tr, extra) {
            panic!(
                "{e}\nspecs: {}\nrules: {}",
                specs
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
                texts(&tr.rules).join("; ")
            );
        }
        Some(tr)
    }

    fn check(specs: &[DeviceRuleSpec], majors: &[u32], minors: &[u32]) -> Vec<Rule> {
        let extra: Vec<u32> = majors.iter().chain(minors).copied().collect();
        check_as(Semantics::Runc, specs, &extra)
            .expect("runc accepts the list")
            .rules
    }

    fn texts(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(|r| r.to_string()).collect()
    }

    const MAJ: [u32; 5] = [1, 5, 7, 10, 4095];
    const MIN: [u32; 6] = [0, 3, 5, 200, 9, 77];

    #[test]
    fn default_is_deny_all() {
        assert!(check(&[], &MAJ, &MIN).is_empty());
        assert!(check(&[deny("a")], &MAJ, &MIN).is_empty());
    }

    #[test]
    fn allow_all_is_two_wildcards() {
        let rules = check(&[allow("a")], &MAJ, &MIN);
        assert_eq!(texts(&rules), ["b *:* rwm", "c *:* rwm"]);
        // Numbers and access of an `a` rule are ignored, as v1 and runc do.
        let rules = check(&[deny("a"), allow("a 1:3 r")], &MAJ, &MIN);
        assert_eq!(texts(&rules), ["b *:* rwm", "c *:* rwm"]);
    }

    #[test]
    fn type_a_resets_earlier_rules() {
        let rules = check(
            &[
                allow("c 1:3 rwm"),
                allow("a"),
                deny("c 5:0 w"),
                deny("a"),
                allow("c 1:5 r"),
            ],
            &MAJ,
            &MIN,
        );
        assert_eq!(texts(&rules), ["c 1:5 r"]);
    }

    #[test]
    fn allows_merge_bits() {
        let rules = check(&[allow("c 1:3 r"), allow("c 1:3 w")], &MAJ, &MIN);
        assert_eq!(texts(&rules), ["c 1:3 rw"]);
    }

    #[test]
    fn deny_in_allow_all_narrows() {
        let rules = check(
            &[allow("a"), deny("c 10:200 rwm"), deny("b 7:* w")],
            &MAJ,
            &MIN,
        );
        assert_eq!(
            texts(&rules),
            ["b 7:* rm", "b *:* rwm", "c 10:200 ''", "c *:* rwm"]
        );
    }

    #[test]
    fn runc_refuses_a_hole_in_a_wildcard() {
        // runc's emulator refuses a deny that punches a hole in a broader
        // allow (cgroup v1 would silently ignore it).
        let specs = [deny("a"), allow("c 1:* rw"), deny("c 1:3 w")];
        assert!(matches!(
            translate(Semantics::Runc, &specs),
            Err(ModelError::PunchesHole { index: 2, .. })
        ));
        // A broader deny after a narrower allow only edits its own key.
        let rules = check(&[allow("c 1:3 rw"), deny("c 1:* r")], &MAJ, &MIN);
        assert_eq!(texts(&rules), ["c 1:3 rw"]);
    }

    #[test]
    fn crossing_wildcards_are_exact() {
        // (1,*) and (*,3) both cover 1:3, but ctdev looks at (1,*) first.
        for specs in [
            vec![allow("c *:3 r"), allow("c 1:* w")],
            vec![allow("c 1:* w"), allow("c *:3 r")],
            vec![allow("c *:* rw"), allow("c 1:* m")],
            vec![
                allow("a"),
                deny("c 1:* r"),
                deny("c *:3 w"),
                deny("c 1:3 r"),
            ],
        ] {
            check_as(Semantics::Runc, &specs, &MAJ);
        }
    }

    /// The five reproductions of issue #10 (item 9), by runc's semantics.
    #[test]
    fn issue_reproductions() {
        let defaults = runc_defaults(&[]);
        let with = |mut v: Vec<DeviceRuleSpec>| {
            v.extend(defaults.iter().copied());
            v
        };
        let allows = |specs: &[DeviceRuleSpec], t, ma, mi, req| {
            let tr = check_as(Semantics::Runc, specs, &[]).unwrap();
            (ctdev_allows(&tr.rules, t, ma, mi, req), tr)
        };
        let (r, w, m) = (ACCESS_READ, ACCESS_WRITE, ACCESS_MKNOD);
        // 1. runc's later `c *:* m` does not reopen the denied 10:229.
        let specs = with(vec![allow("a"), deny("c 10:229 rwm")]);
        assert!(!allows(&specs, DEV_CHAR, 10, 229, m).0);
        // 2. A later broader allow does not undo a narrower deny.
        let specs = with(vec![allow("a"), deny("c 200:1 r"), allow("c 200:* r")]);
        let (ok, tr) = allows(&specs, DEV_CHAR, 200, 1, r);
        assert!(!ok);
        // runc allows rw there (no deny covers both bits): narrowed.
        assert!(
            tr.narrowed.iter().any(|n| n.to_string() == "c 200:1 rw"),
            "{:?}",
            tr.narrowed
        );
        // 3. Two rules do not make one `rw` allow.
        let specs = with(vec![allow("c 200:* r"), allow("c 200:1 w")]);
        assert!(!allows(&specs, DEV_CHAR, 200, 1, r | w).0);
        // 4. A later broader deny does not take the narrower allow.
        let specs = with(vec![allow("c 200:1 r"), deny("c 200:* r")]);
        assert!(allows(&specs, DEV_CHAR, 200, 1, r).0);
        // 5. `deny b r` in allow-all mode denies only requests within `r`.
        let specs = with(vec![allow("a"), deny("b *:* r")]);
        let (ok, tr) = allows(&specs, DEV_BLOCK, 8, 0, w);
        assert!(ok);
        assert!(!allows(&specs, DEV_BLOCK, 8, 0, r).0);
        assert!(
            tr.narrowed.iter().any(|n| n.to_string() == "b *:* rw"),
            "{:?}",
            tr.narrowed
        );
    }

    #[test]
    fn crun_defaults_come_first() {
        // crun checks its defaults before the config's rules: they cannot
        // be denied; the config's last matching rule wins otherwise.
        let specs = [
            deny("a"),
            deny("c 1:3 rwm"),
            allow("c 7:* r"),
            deny("c 7:1 r"),
        ];
        let tr = check_as(Semantics::Crun, &specs, &[2]).unwrap();
        assert!(ctdev_allows(
            &tr.rules,
            DEV_CHAR,
            1,
            3,
            ACCESS_READ | ACCESS_WRITE
        ));
        assert!(!ctdev_allows(&tr.rules, DEV_CHAR, 7, 1, ACCESS_READ));
        assert!(ctdev_allows(&tr.rules, DEV_CHAR, 7, 2, ACCESS_READ));
        assert!(ctdev_allows(&tr.rules, DEV_CHAR, 5, 1, ACCESS_READ));
    }

    #[test]
    fn lxc_ignores_denies_in_an_allow_list() {
        let specs = [
            lxc_mode(false),
            allow("c 1:3 rw"),
            deny("c 1:3 w"),
            allow("c 1:5 rw"),
            deny("c 1:5 rw"),
        ];
        let tr = check_as(Semantics::Lxc, &specs, &[]).unwrap();
        assert_eq!(texts(&tr.rules), ["c 1:3 rw"]);
    }

    #[test]
    fn runc_default_devices() {
        let mut specs = vec![deny("a"), allow("c *:* m"), allow("b *:* m")];
        for d in [
            "1:3", "1:8", "1:7", "5:0", "1:5", "1:9", "136:*", "5:2", "10:200",
        ] {
            specs.push(allow(&format!("c {d} rwm")));
        }
        let rules = check(
            &specs,
            &[1, 5, 136, 10, 7, 8],
            &[0, 2, 3, 5, 7, 8, 9, 200, 1],
        );
        assert_eq!(rules.len(), 11, "{:?}", texts(&rules));
        assert_eq!(runc_defaults(&[]), specs[1..]);
    }

    #[test]
    fn empty_access_changes_nothing() {
        let rules = check(
            &[
                allow("c 1:3 ''"),
                deny("a"),
                allow("c 1:5 r"),
                deny("c 1:5 ''"),
            ],
            &MAJ,
            &MIN,
        );
        assert_eq!(texts(&rules), ["c 1:5 r"]);
    }

    /// Random rule lists over a small universe, against the reference.
    #[test]
    fn random_lists_match_the_reference() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let nums = ["1", "2", "*"];
        let mins = ["3", "4", "*"];
        for _ in 0..1000 {
            let len = 1 + next(7) as usize;
            let specs: Vec<DeviceRuleSpec> = (0..len)
                .map(|_| {
                    let t = ["a", "b", "c", "c", "b", "c"][next(6) as usize];
                    let text = if t == "a" {
                        "a".to_string()
                    } else {
                        let access: String = ["r", "w", "m"]
                            .iter()
                            .filter(|_| next(2) == 1)
                            .copied()
                            .collect();
                        let access = if access.is_empty() {
                            "''".into()
                        } else {
                            access
                        };
                        format!(
                            "{t} {}:{} {access}",
                            nums[next(3) as usize],
                            mins[next(3) as usize]
                        )
                    };
                    spec(next(2) == 1, &text)
                })
                .collect();
            for semantics in [Semantics::Runc, Semantics::Crun, Semantics::Lxc] {
                check_as(semantics, &specs, &[1, 2, 9, 3, 4]);
            }
        }
    }

    /// Asserts `r` is an error whose message names `path` and says each of
    /// `wants`.
    #[track_caller]
    fn refused<T: std::fmt::Debug>(r: Result<T, ImportError>, path: &Path, wants: &[&str]) {
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        for want in wants {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
    }

    fn fixture(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn oci_config_rules() {
        let (_d, path) = fixture(
            "config.json",
            r#"{"ociVersion": "1.0.2", "linux": {"resources": {"devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                {"allow": true, "type": "b", "major": 7, "access": "r"},
                {"allow": true, "type": "c", "major": 10, "minor": null}
            ]}}}"#,
        );
        let specs = from_oci_config(&path).unwrap();
        assert_eq!(
            specs,
            [
                deny("a"),
                allow("c 1:3 rw"),
                allow("b 7:* r"),
                allow("c 10:* ''"),
            ]
        );
        assert_eq!(
            texts(&effective_rules(&specs).unwrap()),
            ["b 7:* r", "c 1:3 rw"]
        );
    }

    #[test]
    fn oci_config_without_devices_is_empty() {
        let (_d, path) = fixture("config.json", r#"{"linux": {"resources": {}}}"#);
        assert!(from_oci_config(&path).unwrap().is_empty());
        let (_d, path) = fixture("config.json", r#"{"process": {}}"#);
        assert!(from_oci_config(&path).unwrap().is_empty());
    }

    #[test]
    fn oci_config_bad_entries_are_named() {
        let cases = [
            (r#"{"type": "c", "major": 1}"#, "\"allow\" is missing"),
            (r#"{"allow": true, "type": "x"}"#, "\"type\" \"x\""),
            (
                r#"{"allow": true, "type": "c", "major": 5000}"#,
                "\"major\" 5000",
            ),
            (
                r#"{"allow": true, "type": "c", "minor": -2}"#,
                "\"minor\" -2",
            ),
            (
                r#"{"allow": true, "type": "c", "access": "rwx"}"#,
                "\"access\" \"rwx\"",
            ),
            (r#"{"allow": "yes"}"#, "\"allow\" \"yes\""),
            (r#""c 1:3 rwm""#, "not an object"),
        ];
        for (entry, why) in cases {
            let (_d, path) = fixture(
                "config.json",
                &format!(
                    r#"{{"linux": {{"resources": {{"devices": [{{"allow": false}}, {entry}]}}}}}}"#
                ),
            );
            refused(from_oci_config(&path), &path, &[why, "linux.resources.devices[1]"]);
        }
        let (_d, path) = fixture("config.json", "{not json");
        let not_json = from_oci_config(&path);
        assert!(matches!(not_json, Err(ImportError::Json { .. })));
        let missing = from_oci_config(Path::new("/nonexistent/config.json"));
        assert!(matches!(missing, Err(ImportError::Io(_))));
    }

    /// Trimmed from a real runc 1.1.5 state.json.
    const RUNC_STATE: &str = r#"{"id": "x", "init_process_pid": 1, "config": {
        "devices": [{"type": 99, "major": 1, "minor": 3, "permissions": "rwm", "allow": true,
                     "path": "/dev/null", "file_mode": 438, "uid": 0, "gid": 0}],
        "cgroups": {"path": "/x", "scope_prefix": "", "devices": [
            {"type": 97, "major": -1, "minor": -1, "permissions": "rwm", "allow": false},
            {"type": 99, "major": 1, "minor": 3, "permissions": "rw", "allow": true},
            {"type": 98, "major": 7, "minor": -1, "permissions": "r", "allow": true},
            {"type": 99, "major": -1, "minor": -1, "permissions": "m", "allow": true},
            {"type": 99, "major": 136, "minor": -1, "permissions": "rwm", "allow": true}
        ], "memory": 0}}}"#;

    #[test]
    fn runc_state_rules() {
        let (_d, path) = fixture("state.json", RUNC_STATE);
        let specs = from_runc_state(&path).unwrap();
        assert_eq!(
            specs,
            [
                deny("a"),
                allow("c 1:3 rw"),
                allow("b 7:* r"),
                allow("c *:* m"),
                allow("c 136:* rwm"),
            ]
        );
        let nested = RUNC_STATE
            .replace(
                r#""cgroups": {"path": "/x", "scope_prefix": "", "devices""#,
                r#""cgroups": {"path": "/x", "resources": {"devices""#,
            )
            .replace(r#"], "memory": 0}}}"#, r#"]}}}}"#);
        let (_d, path) = fixture("state.json", &nested);
        assert_eq!(from_runc_state(&path).unwrap(), specs);
    }

    #[test]
    fn runc_state_read_once() {
        let path = Path::new("state.json");
        let with_pid = RUNC_STATE.replace(r#""init_process_pid": 1"#, r#""init_process_pid": 4242"#);
        let st = RuncState::parse(&with_pid, path).unwrap();
        assert_eq!(st.init_pid, Some(4242));
        assert_eq!(st.rules.unwrap().len(), 5);
        // Shapes the typed reader does not take are read the general way,
        // with what a JSON pointer finds: same answers.
        for (text, pid, rules) in [
            (r#"{"init_process_pid": "7", "config": {"cgroups": {"devices": []}}}"#, None, Some(0)),
            (r#"{"init_process_pid": 7, "config": 5}"#, Some(7), None),
            (r#"{"init_process_pid": 7, "config": {"cgroups": {"devices": null}}}"#, Some(7), Some(0)),
            (r#"{"config": {"cgroups": {"devices": null, "resources": {"devices": [{}]}}}}"#, None, Some(0)),
            (r#"{"config": {"cgroups": {"resources": {"devices": []}}}}"#, None, Some(0)),
            (r#"{"init_process_pid": 1, "init_process_pid": 2}"#, Some(2), None),
        ] {
            let st = RuncState::parse(text, path).unwrap();
            assert_eq!(st.init_pid, pid, "{text}");
            assert_eq!(st.rules.ok().map(|r| r.len()), rules, "{text}");
        }
        assert!(matches!(
            RuncState::parse("{", path),
            Err(ImportError::Json { .. })
        ));
    }

    #[test]
    fn runc_state_bad_input() {
        let (_d, path) = fixture("state.json", r#"{"config": {"cgroups": {"path": "/x"}}}"#);
        let err = from_runc_state(&path).unwrap_err();
        assert!(matches!(err, ImportError::NoRules { .. }), "{err}");
        for (entry, why) in [
            (
                r#"{"type": 112, "major": 1, "minor": 3, "permissions": "rwm", "allow": true}"#,
                "\"type\" 112",
            ),
            (
                r#"{"major": 1, "minor": 3, "permissions": "rwm", "allow": true}"#,
                "\"type\" is missing",
            ),
            (
                r#"{"type": 99, "major": 1, "minor": 3, "permissions": "rwq", "allow": true}"#,
                "\"permissions\" \"rwq\"",
            ),
            (
                r#"{"type": 99, "major": "1", "minor": 3, "permissions": "r", "allow": true}"#,
                "\"major\" \"1\"",
            ),
        ] {
            let (_d, path) = fixture(
                "state.json",
                &format!(r#"{{"config": {{"cgroups": {{"devices": [{entry}]}}}}}}"#),
            );
            let msg = from_runc_state(&path).unwrap_err().to_string();
            assert!(msg.contains(why), "{entry}: {msg}");
            assert!(msg.contains("config.cgroups.devices[0]"), "{msg}");
        }
    }

    #[test]
    fn lxc_config_rules_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let common = dir.path().join("common.conf");
        std::fs::write(
            &common,
            "# common\nlxc.cgroup2.devices.deny = a\nlxc.cgroup2.devices.allow = c *:* m\n\
             lxc.cgroup.devices.allow = c 4:* rwm\nlxc.include = common.conf.d/\n",
        )
        .unwrap();
        let d = dir.path().join("common.conf.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("10-a.conf"),
            "lxc.cgroup2.devices.allow = c 1:3 rwm\n",
        )
        .unwrap();
        std::fs::write(
            d.join("20-b.conf"),
            "lxc.cgroup2.devices.allow = c 1:5 rw\n",
        )
        .unwrap();
        std::fs::write(d.join("README"), "lxc.cgroup2.devices.allow = c 9:9 rw\n").unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            format!(
                "lxc.uts.name = x\nlxc.include = {}\n  lxc.cgroup2.devices.allow=b 7:* rwm\n\
                 lxc.include = /nonexistent/ctdev.conf\nlxc.cgroup2.devices.deny = c 1:5 w\n",
                common.display()
            ),
        )
        .unwrap();
        let specs = from_lxc_config(&config).unwrap();
        // The deny of `w` on 1:5 has other access text than the allow and
        // LXC ignores denies in an allow list: it changes nothing.
        assert_eq!(
            specs,
            [
                lxc_mode(false),
                allow("c *:* m"),
                allow("c 1:3 rwm"),
                allow("c 1:5 rw"),
                allow("b 7:* rwm"),
            ]
        );
        let tr = translate(Semantics::Lxc, &specs).unwrap();
        assert_eq!(
            texts(&tr.rules),
            ["b 7:* rwm", "c 1:3 rwm", "c 1:5 rwm", "c *:* m"]
        );
    }

    #[test]
    fn lxc_empty_values_clear() {
        let (_d, path) = fixture(
            "config",
            "lxc.cgroup2.devices.allow = c 1:3 rwm\nlxc.cgroup2.devices.deny = c 1:5 rwm\n\
             lxc.cgroup2.devices.allow =\nlxc.cgroup2.devices.allow = c 1:7 r\n",
        );
        assert_eq!(
            from_lxc_config(&path).unwrap(),
            [lxc_mode(false), allow("c 1:7 r")]
        );
        let (_d, path) = fixture(
            "config",
            "lxc.cgroup2.devices.allow = c 1:3 rwm\nlxc.cgroup2 =\nlxc.cgroup2.devices.deny = a\n",
        );
        assert_eq!(from_lxc_config(&path).unwrap(), [lxc_mode(false)]);
        // Flipping needs the same access text: `rw` then `wr` is no flip.
        let (_d, path) = fixture(
            "config",
            "lxc.cgroup2.devices.allow = a\nlxc.cgroup2.devices.deny = c 1:3 rw\n\
             lxc.cgroup2.devices.allow = c 1:3 wr\nlxc.cgroup2.devices.deny = c 1:5 r\n\
             lxc.cgroup2.devices.allow = c 1:5 r\n",
        );
        assert_eq!(
            from_lxc_config(&path).unwrap(),
            [lxc_mode(true), deny("c 1:3 rw")]
        );
    }

    #[test]
    fn lxc_bad_input() {
        for (line, why) in [
            ("lxc.cgroup2.devices.allow = x 1:3 rwm", "invalid type"),
            ("lxc.cgroup2.devices.allow = c 1:3 rwz", "invalid access"),
            ("lxc.cgroup2.devices.deny = /dev/null", "not a path"),
        ] {
            let (_d, path) = fixture("config", &format!("lxc.uts.name = x\n{line}\n"));
            refused(from_lxc_config(&path), &path, &[why, &format!("line 2: {line}")]);
        }
        let (_d, path) = fixture("config", "lxc.include = config\n");
        let looped = from_lxc_config(&path);
        assert!(matches!(looped, Err(ImportError::IncludeDepth { .. })));
        let missing = from_lxc_config(Path::new("/nonexistent/config"));
        assert!(matches!(missing, Err(ImportError::Io(_))));
    }
}
