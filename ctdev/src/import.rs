//! Importing a runtime's device rules, for `ctdev attach --takeover`.
//!
//! Runtimes describe device access as an ordered list of cgroup v1-style
//! allow/deny rules ([`DeviceRuleSpec`]). The parsers read that list from
//! an OCI `config.json` ([`from_oci_config`]), runc's `state.json`
//! ([`from_runc_state`]) or an LXC config ([`from_lxc_config`]), and
//! [`effective_rules`] turns it into ctdev allow entries with the same
//! verdicts.
//!
//! **Semantics emulated** (cgroup v1 `devices.allow`/`devices.deny` as runc's
//! and youki's device emulators apply them on cgroup v2):
//! - the list starts from deny-all;
//! - any rule of type `a` switches the whole policy: `deny a` to deny-all,
//!   `allow a` to allow-all (`b *:* rwm` + `c *:* rwm`), forgetting every
//!   earlier rule (its numbers and access are ignored, as the kernel and
//!   runc ignore them);
//! - any other rule sets its access bits to allowed or denied for every
//!   device it matches, later rules overriding earlier ones bit by bit.
//!
//! The last point is stricter than cgroup v1 in one corner: v1 silently
//! ignores a deny that punches a hole in a broader allow (`allow c 1:* rw`
//! then `deny c 1:3 w`), and runc refuses it; here it takes effect
//! (`c 1:3 r` narrows the wildcard). Access bits of different rules combine
//! per device (`c 1:* r` and `c 1:3 w` allow `rw` on 1:3), where v1 wants a
//! single rule to cover a multi-bit request.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ctdev_common::{evaluate, PolicyKey, ACCESS_ALL, DEV_BLOCK, DEV_CHAR, WILDCARD};
use serde_json::Value;

use crate::rule::{Access, DevNumber, DeviceType, Rule, RuleSpec, MAX_MAJOR, MAX_MINOR};

/// How deep `lxc.include` may nest before the config is rejected (a loop).
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// Why a runtime's rules could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// One device rule in the file is malformed.
    #[error("{path}: bad device rule {entry}: {reason}")]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// Where and what the entry is (`linux.resources.devices[2] = {...}`, `line 7: ...`).
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file has none of the places device rules are kept.
    #[error("{path} has no device rules where expected (looked for {looked_for})")]
    NoRules {
        /// The file.
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

/// The ctdev allow entries that give the same verdicts as the ordered rule
/// list `specs` (see the module doc for the semantics). Entries are
/// single-type (`b` or `c`), in policy-map key order; redundant entries
/// (ones the lookup order would give the same answer without) are left out.
pub fn effective_rules(specs: &[DeviceRuleSpec]) -> Vec<Rule> {
    let mut map: BTreeMap<PolicyKey, u32> = BTreeMap::new();
    for spec in specs {
        let types: &[u32] = match spec.dev_type {
            DeviceType::All => {
                map.clear();
                if spec.allow {
                    for t in [DEV_BLOCK, DEV_CHAR] {
                        map.insert(key(t, WILDCARD, WILDCARD), ACCESS_ALL);
                    }
                }
                continue;
            }
            t => t.kernel_types(),
        };
        if spec.access.is_empty() {
            continue;
        }
        for &t in types {
            apply(
                &mut map,
                key(t, spec.major.to_kernel(), spec.minor.to_kernel()),
                spec.access.bits(),
                spec.allow,
            );
        }
    }
    prune(&mut map);
    map.iter()
        .filter_map(|(k, &bits)| Rule::from_entry(k, bits))
        .collect()
}

fn key(dev_type: u32, major: u32, minor: u32) -> PolicyKey {
    PolicyKey::new(0, dev_type, major, minor)
}

/// The bits ctdev's lookup would allow for `(t, major, minor)` (numbers may
/// be wildcards: then the most specific entry covering that whole pattern).
fn lookup(map: &BTreeMap<PolicyKey, u32>, t: u32, major: u32, minor: u32) -> u32 {
    evaluate(0, t, major, minor, ACCESS_ALL, |k| map.get(k).copied())
        .matched
        .map_or(0, |(_, bits)| bits)
}

/// Whether the devices of `inner` are all devices of `outer` (same type).
fn covers(outer: &PolicyKey, inner: &PolicyKey) -> bool {
    outer.dev_type == inner.dev_type
        && (outer.major == WILDCARD || outer.major == inner.major)
        && (outer.minor == WILDCARD || outer.minor == inner.minor)
}

/// Applies one rule to the entry map, keeping the invariant that the map's
/// verdicts (under ctdev's lookup order) are those of the rules so far.
fn apply(map: &mut BTreeMap<PolicyKey, u32>, p: PolicyKey, bits: u32, allow: bool) {
    // 1. Devices in both `p` and a partially overlapping wildcard entry
    //    (`(M,*)` vs `(*,m)`) get an exact entry first: once `p` exists,
    //    the lookup order would otherwise pick the wrong one of the two.
    let mut exact = Vec::new();
    for k in map.keys() {
        if k.dev_type != p.dev_type || covers(k, &p) || covers(&p, k) {
            continue;
        }
        let major = if p.major == WILDCARD {
            k.major
        } else {
            p.major
        };
        let minor = if p.minor == WILDCARD {
            k.minor
        } else {
            p.minor
        };
        if (k.major == WILDCARD || k.major == major) && (k.minor == WILDCARD || k.minor == minor) {
            exact.push(key(p.dev_type, major, minor));
        }
    }
    // 2. `p` itself, holding what the lookup gives its devices now.
    exact.push(p);
    for k in exact {
        if !map.contains_key(&k) {
            let now = lookup(map, k.dev_type, k.major, k.minor);
            map.insert(k, now);
        }
    }
    // 3. Every entry within `p` decides for devices of `p` only: update them.
    for (k, v) in map.iter_mut() {
        if covers(&p, k) {
            *v = if allow { *v | bits } else { *v & !bits };
        }
    }
}

/// Beyond this many (grid devices × entries), pruning is skipped: the
/// result stays correct, only not minimal.
const PRUNE_BUDGET: usize = 4_000_000;

/// Drops entries whose removal changes no verdict. Verdicts depend only on
/// which of the numbers in the map a device's numbers equal, so checking a
/// grid of every mentioned major and minor plus one unmentioned each covers
/// every device.
fn prune(map: &mut BTreeMap<PolicyKey, u32>) {
    let mut majors: BTreeSet<u32> = map.keys().map(|k| k.major).collect();
    let mut minors: BTreeSet<u32> = map.keys().map(|k| k.minor).collect();
    let types: BTreeSet<u32> = map.keys().map(|k| k.dev_type).collect();
    for set in [&mut majors, &mut minors] {
        set.remove(&WILDCARD);
        let unused = (0..).find(|n| !set.contains(n)).unwrap_or(0);
        set.insert(unused);
    }
    let mut grid = Vec::with_capacity(types.len() * majors.len() * minors.len());
    for &t in &types {
        for &ma in &majors {
            for &mi in &minors {
                grid.push((t, ma, mi));
            }
        }
    }
    if grid.len().saturating_mul(map.len()) > PRUNE_BUDGET {
        tracing::debug!(
            "not pruning {} imported entries (grid of {} devices)",
            map.len(),
            grid.len()
        );
        return;
    }
    let want: Vec<u32> = grid
        .iter()
        .map(|&(t, ma, mi)| lookup(map, t, ma, mi))
        .collect();
    // Exact entries first, then (M,*), (*,m), (*,*).
    let mut order: Vec<PolicyKey> = map.keys().copied().collect();
    order.sort_by_key(|k| (k.major == WILDCARD, k.minor == WILDCARD, *k));
    for k in order {
        let Some(bits) = map.remove(&k) else { continue };
        let same = grid
            .iter()
            .zip(&want)
            .all(|(&(t, ma, mi), &w)| lookup(map, t, ma, mi) == w);
        if !same {
            map.insert(k, bits);
        }
    }
}

fn read(path: &Path) -> Result<String, ImportError> {
    std::fs::read_to_string(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })
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
    json_array(path, devices, "linux.resources.devices")?
        .iter()
        .enumerate()
        .map(|(i, e)| {
            oci_entry(e).map_err(|reason| ImportError::BadEntry {
                path: path.to_path_buf(),
                entry: format!("linux.resources.devices[{i}] = {e}"),
                reason,
            })
        })
        .collect()
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
    Ok(DeviceRuleSpec {
        allow: json_allow(e.get("allow"))?,
        dev_type,
        major: json_number(e.get("major"), "\"major\"", MAX_MAJOR)?,
        minor: json_number(e.get("minor"), "\"minor\"", MAX_MINOR)?,
        access: json_access(e.get("access"), "\"access\"")?,
    })
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
    let json = parse_json(text, path)?;
    let (where_, devices) = RUNC_RULE_PATHS
        .iter()
        .find_map(|p| json.pointer(p).map(|v| (*p, v)))
        .ok_or_else(|| ImportError::NoRules {
            path: path.to_path_buf(),
            looked_for: "config.cgroups.devices, config.cgroups.resources.devices",
        })?;
    let where_ = where_.trim_start_matches('/').replace('/', ".");
    json_array(path, devices, &where_)?
        .iter()
        .enumerate()
        .map(|(i, e)| {
            runc_entry(e).map_err(|reason| ImportError::BadEntry {
                path: path.to_path_buf(),
                entry: format!("{where_}[{i}] = {e}"),
                reason,
            })
        })
        .collect()
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
    Ok(DeviceRuleSpec {
        allow: json_allow(e.get("allow"))?,
        dev_type,
        major: json_number(e.get("major"), "\"major\"", MAX_MAJOR)?,
        minor: json_number(e.get("minor"), "\"minor\"", MAX_MINOR)?,
        access: json_access(e.get("permissions"), "\"permissions\"")?,
    })
}

const LXC_ALLOW: &str = "lxc.cgroup2.devices.allow";
const LXC_DENY: &str = "lxc.cgroup2.devices.deny";

/// The cgroup2 device rules of an LXC container config, in order:
/// `lxc.cgroup2.devices.allow = c 1:3 rwm`, `lxc.cgroup2.devices.deny = a`.
/// `lxc.include` is followed when the file (or directory of `*.conf`
/// files) exists. As LXC does, an empty value clears the earlier entries of
/// that key, and `lxc.cgroup2 =` clears all. Comments, other keys and the
/// cgroup v1 `lxc.cgroup.devices.*` keys (which LXC ignores on cgroup2)
/// are skipped.
pub fn from_lxc_config(path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    let mut entries = Vec::new();
    lxc_file(path, 0, &mut entries)?;
    Ok(entries.into_iter().map(|(_, spec)| spec).collect())
}

/// [`from_lxc_config`] on one file's text, without following `lxc.include`
/// (includes are skipped); `path` only names the file in errors.
pub fn parse_lxc_config(text: &str, path: &Path) -> Result<Vec<DeviceRuleSpec>, ImportError> {
    let mut entries = Vec::new();
    lxc_text(text, path, None, &mut entries)?;
    Ok(entries.into_iter().map(|(_, spec)| spec).collect())
}

fn lxc_file(
    path: &Path,
    depth: usize,
    out: &mut Vec<(bool, DeviceRuleSpec)>,
) -> Result<(), ImportError> {
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
    out: &mut Vec<(bool, DeviceRuleSpec)>,
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
                    out.retain(|(a, _)| *a != allow);
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
                out.push((
                    allow,
                    DeviceRuleSpec {
                        allow,
                        dev_type: rule.dev_type,
                        major: rule.major,
                        minor: rule.minor,
                        access: rule.access,
                    },
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
    out: &mut Vec<(bool, DeviceRuleSpec)>,
) -> Result<(), ImportError> {
    let target = match from.parent() {
        Some(dir) if target.is_relative() => dir.join(target),
        _ => target.to_path_buf(),
    };
    if target.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&target)
            .map_err(|source| ImportError::Io {
                path: target.clone(),
                source,
            })?
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

/// The import semantics replayed literally, for one device (kernel type
/// code and numbers) and one access bit: the last rule that concerns them
/// decides, and an `a` rule switches everything. Too slow for the policy
/// itself; it is the oracle that unit tests and fuzzers hold
/// [`effective_rules`] to.
pub fn sequential_verdict(
    specs: &[DeviceRuleSpec],
    t: u32,
    major: u32,
    minor: u32,
    bit: u32,
) -> bool {
    let mut allowed = false;
    for s in specs {
        if s.dev_type == DeviceType::All {
            allowed = s.allow;
            continue;
        }
        let matches = s.dev_type.kernel_types().contains(&t)
            && s.major.exact().is_none_or(|m| m == major)
            && s.minor.exact().is_none_or(|m| m == minor)
            && s.access.bits() & bit != 0;
        if matches {
            allowed = s.allow;
        }
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdev_common::{ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE};

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
    fn deny(rule: &str) -> DeviceRuleSpec {
        spec(false, rule)
    }

    use super::sequential_verdict as reference;

    fn ctdev_allows(rules: &[Rule], t: u32, major: u32, minor: u32, req: u32) -> bool {
        let map: BTreeMap<PolicyKey, u32> = rules
            .iter()
            .flat_map(|r| r.keys(7).map(move |k| (k, r.access.bits())))
            .collect();
        evaluate(7, t, major, minor, req, |k| map.get(k).copied()).allowed
    }

    const BITS: [u32; 3] = [ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE];

    /// Compares every non-empty request on a grid of devices.
    fn check(specs: &[DeviceRuleSpec], majors: &[u32], minors: &[u32]) -> Vec<Rule> {
        let rules = effective_rules(specs);
        for t in [DEV_BLOCK, DEV_CHAR] {
            for &ma in majors {
                for &mi in minors {
                    for req in 1..=ACCESS_ALL {
                        let want = BITS
                            .iter()
                            .filter(|&&b| req & b != 0)
                            .all(|&b| reference(specs, t, ma, mi, b));
                        let got = ctdev_allows(&rules, t, ma, mi, req);
                        assert_eq!(
                            got,
                            want,
                            "type {t} {ma}:{mi} request {req:#b}\nspecs: {}\nrules: {}",
                            specs
                                .iter()
                                .map(|s| s.to_string())
                                .collect::<Vec<_>>()
                                .join("; "),
                            rules
                                .iter()
                                .map(|r| r.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        );
                    }
                }
            }
        }
        rules
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
    fn deny_after_a_broader_allow_leaves_the_remaining_bits() {
        let rules = check(&[deny("a"), allow("c 1:* rw"), deny("c 1:3 w")], &MAJ, &MIN);
        assert_eq!(texts(&rules), ["c 1:3 r", "c 1:* rw"]);
        // A broader deny after a narrower allow wins over it.
        let rules = check(&[allow("c 1:3 rw"), deny("c 1:* r")], &MAJ, &MIN);
        assert_eq!(texts(&rules), ["c 1:3 w"]);
    }

    #[test]
    fn crossing_wildcards_get_an_exact_entry() {
        // (1,*) and (*,3) both cover 1:3, but ctdev looks at (1,*) first.
        check(&[allow("c *:3 r"), allow("c 1:* w")], &MAJ, &MIN);
        check(&[allow("c 1:* w"), allow("c *:3 r")], &MAJ, &MIN);
        check(
            &[allow("c *:* rw"), deny("c *:3 w"), allow("c 1:* m")],
            &MAJ,
            &MIN,
        );
        check(
            &[
                allow("a"),
                deny("c 1:* r"),
                deny("c *:3 w"),
                allow("c 1:3 r"),
            ],
            &MAJ,
            &MIN,
        );
    }

    #[test]
    fn runc_default_devices() {
        let mut specs = vec![deny("a"), allow("c *:* m"), allow("b *:* m")];
        for d in [
            "1:3", "1:5", "1:7", "1:8", "1:9", "5:0", "5:2", "136:*", "10:200",
        ] {
            specs.push(allow(&format!("c {d} rwm")));
        }
        let rules = check(
            &specs,
            &[1, 5, 136, 10, 7, 8],
            &[0, 2, 3, 5, 7, 8, 9, 200, 1],
        );
        assert_eq!(rules.len(), 11, "{:?}", texts(&rules));
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
        for _ in 0..3000 {
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
            check(&specs, &[1, 2, 9], &[3, 4, 9]);
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
        assert_eq!(texts(&effective_rules(&specs)), ["b 7:* r", "c 1:3 rw"]);
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
            let msg = from_oci_config(&path).unwrap_err().to_string();
            assert!(msg.contains(why), "{entry}: {msg}");
            assert!(msg.contains("linux.resources.devices[1]"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        let (_d, path) = fixture("config.json", "{not json");
        assert!(matches!(
            from_oci_config(&path),
            Err(ImportError::Json { .. })
        ));
        assert!(matches!(
            from_oci_config(Path::new("/nonexistent/config.json")),
            Err(ImportError::Io { .. })
        ));
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
        assert_eq!(
            specs,
            [
                deny("a"),
                allow("c *:* m"),
                allow("c 1:3 rwm"),
                allow("c 1:5 rw"),
                allow("b 7:* rwm"),
                deny("c 1:5 w"),
            ]
        );
        assert_eq!(
            texts(&effective_rules(&specs)),
            ["b 7:* rwm", "c 1:3 rwm", "c 1:5 rm", "c *:* m"]
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
            [deny("c 1:5 rwm"), allow("c 1:7 r")]
        );
        let (_d, path) = fixture(
            "config",
            "lxc.cgroup2.devices.allow = c 1:3 rwm\nlxc.cgroup2 =\nlxc.cgroup2.devices.deny = a\n",
        );
        assert_eq!(from_lxc_config(&path).unwrap(), [deny("a")]);
    }

    #[test]
    fn lxc_bad_input() {
        for (line, why) in [
            ("lxc.cgroup2.devices.allow = x 1:3 rwm", "invalid type"),
            ("lxc.cgroup2.devices.allow = c 1:3 rwz", "invalid access"),
            ("lxc.cgroup2.devices.deny = /dev/null", "not a path"),
        ] {
            let (_d, path) = fixture("config", &format!("lxc.uts.name = x\n{line}\n"));
            let msg = from_lxc_config(&path).unwrap_err().to_string();
            assert!(msg.contains(why), "{line}: {msg}");
            assert!(msg.contains(&format!("line 2: {line}")), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        let (_d, path) = fixture("config", "lxc.include = config\n");
        assert!(matches!(
            from_lxc_config(&path),
            Err(ImportError::IncludeDepth { .. })
        ));
        assert!(matches!(
            from_lxc_config(Path::new("/nonexistent/config")),
            Err(ImportError::Io { .. })
        ));
    }
}
