//! Rule syntax: cgroup v1 `devices.allow` lines and device paths.
//!
//! Parsing is pure and separate from resolution: [`RuleSpec::parse`] turns
//! text into a [`RuleSpec`] without touching the filesystem, and
//! [`RuleSpec::resolve`] stats a device path when the spec names one. Errors
//! quote the offending field and the whole rule.

use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use ctdev_common::{
    PolicyKey, ACCESS_ALL, ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE, DEV_BLOCK, DEV_CHAR, WILDCARD,
};
use serde::{Deserialize, Serialize};

/// Largest major number the kernel can represent (12 bits).
pub const MAX_MAJOR: u32 = (1 << 12) - 1;
/// Largest minor number the kernel can represent (20 bits).
pub const MAX_MINOR: u32 = (1 << 20) - 1;

/// Why a rule was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// The rule was empty or only whitespace.
    #[error("empty rule")]
    Empty,
    /// The type field is not `a`, `b` or `c`.
    #[error("invalid type {token:?} in rule {rule:?}: expected a, b or c")]
    InvalidType {
        /// The field as written.
        token: String,
        /// The whole rule.
        rule: String,
    },
    /// `MAJOR:MINOR` is missing or has no colon.
    #[error("invalid device numbers {token:?} in rule {rule:?}: expected MAJOR:MINOR")]
    InvalidNumbers {
        /// The field as written.
        token: String,
        /// The whole rule.
        rule: String,
    },
    /// The major number is not `*` or a number the kernel can hold.
    #[error("invalid major {token:?} in rule {rule:?}: expected * or 0..={MAX_MAJOR}")]
    InvalidMajor {
        /// The field as written.
        token: String,
        /// The whole rule.
        rule: String,
    },
    /// The minor number is not `*` or a number the kernel can hold.
    #[error("invalid minor {token:?} in rule {rule:?}: expected * or 0..={MAX_MINOR}")]
    InvalidMinor {
        /// The field as written.
        token: String,
        /// The whole rule.
        rule: String,
    },
    /// The access field has a letter other than r, w, m, or a repeated one.
    #[error("invalid access {token:?} in rule {rule:?}: expected letters from \"rwm\", each once (or '' for none)")]
    InvalidAccess {
        /// The field as written.
        token: String,
        /// The whole rule.
        rule: String,
    },
    /// More fields than `TYPE MAJOR:MINOR ACCESS`.
    #[error("unexpected {token:?} in rule {rule:?}: a rule is TYPE MAJOR:MINOR [ACCESS] or /dev/PATH [ACCESS]")]
    TrailingField {
        /// The first extra field.
        token: String,
        /// The whole rule.
        rule: String,
    },
    /// A device path could not be examined.
    #[error("cannot use {path:?} in a rule: {reason}")]
    DevicePath {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Device type of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DeviceType {
    /// `a`: block and character devices (stored as both).
    #[serde(rename = "a")]
    All,
    /// `b`: block devices.
    #[serde(rename = "b")]
    Block,
    /// `c`: character devices.
    #[serde(rename = "c")]
    Char,
}

impl DeviceType {
    /// The kernel type codes this type stands for.
    pub fn kernel_types(self) -> &'static [u32] {
        match self {
            DeviceType::All => &[DEV_BLOCK, DEV_CHAR],
            DeviceType::Block => &[DEV_BLOCK],
            DeviceType::Char => &[DEV_CHAR],
        }
    }

    /// The type of a kernel type code, if it is one.
    pub fn from_kernel(code: u32) -> Option<Self> {
        match code {
            DEV_BLOCK => Some(DeviceType::Block),
            DEV_CHAR => Some(DeviceType::Char),
            _ => None,
        }
    }

    /// The single letter used in rules.
    pub fn letter(self) -> char {
        match self {
            DeviceType::All => 'a',
            DeviceType::Block => 'b',
            DeviceType::Char => 'c',
        }
    }
}

/// A major or minor number, or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DevNumber {
    /// `*`: any number.
    Any,
    /// One number.
    Exact(u32),
}

impl DevNumber {
    /// The number as stored in the policy map.
    pub fn to_kernel(self) -> u32 {
        match self {
            DevNumber::Any => WILDCARD,
            DevNumber::Exact(n) => n,
        }
    }

    /// Decodes a number stored in the policy map.
    pub fn from_kernel(n: u32) -> Self {
        if n == WILDCARD {
            DevNumber::Any
        } else {
            DevNumber::Exact(n)
        }
    }

    /// The exact number, if not a wildcard.
    pub fn exact(self) -> Option<u32> {
        match self {
            DevNumber::Any => None,
            DevNumber::Exact(n) => Some(n),
        }
    }
}

impl fmt::Display for DevNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevNumber::Any => f.write_str("*"),
            DevNumber::Exact(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for DevNumber {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DevNumber::Any => s.serialize_str("*"),
            DevNumber::Exact(n) => s.serialize_u32(*n),
        }
    }
}

/// `"*"` or a number, as [`DevNumber`] serializes; the policy map's
/// wildcard value is refused as a number.
impl<'de> Deserialize<'de> for DevNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(u32),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) if t == "*" => Ok(DevNumber::Any),
            Repr::Number(n) if n != WILDCARD => Ok(DevNumber::Exact(n)),
            Repr::Number(n) => Err(serde::de::Error::custom(format!(
                "device number {n} is the wildcard's encoding; write \"*\""
            ))),
            Repr::Text(t) => Err(serde::de::Error::custom(format!(
                "device number {t:?}: expected a number or \"*\""
            ))),
        }
    }
}

/// A set of access bits (`r`, `w`, `m`), in the kernel's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Access(u32);

impl Access {
    /// No access: an entry that narrows a wildcard to deny.
    pub const NONE: Access = Access(0);
    /// `rwm`.
    pub const ALL: Access = Access(ACCESS_ALL);

    /// From kernel bits (unknown bits are dropped).
    pub fn from_bits(bits: u32) -> Self {
        Access(bits & ACCESS_ALL)
    }

    /// The kernel bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Bits in `self` or `other`.
    pub fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    /// Bits in `self` but not in `other`.
    pub fn difference(self, other: Access) -> Access {
        Access(self.0 & !other.0)
    }

    /// Parses `rwm`-style letters; `''` or `""` (as typed in a shell rule) is the empty set.
    pub fn parse(token: &str) -> Option<Access> {
        let token = match token {
            "''" | "\"\"" | "-" => "",
            t => t,
        };
        let mut bits = 0;
        for ch in token.chars() {
            let bit = match ch {
                'r' => ACCESS_READ,
                'w' => ACCESS_WRITE,
                'm' => ACCESS_MKNOD,
                _ => return None,
            };
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        Some(Access(bits))
    }

    /// The letters of the set in `rwm` order, in `buf` (no allocation:
    /// `list --json` writes 200,000 of them at 10,000 containers).
    fn letters(self, buf: &mut [u8; 3]) -> &str {
        let mut n = 0;
        for (bit, ch) in [
            (ACCESS_READ, b'r'),
            (ACCESS_WRITE, b'w'),
            (ACCESS_MKNOD, b'm'),
        ] {
            if self.0 & bit != 0 {
                buf[n] = ch;
                n += 1;
            }
        }
        std::str::from_utf8(&buf[..n]).unwrap_or_default()
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("''");
        }
        f.write_str(self.letters(&mut [0; 3]))
    }
}

impl Serialize for Access {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // "" rather than "''" in JSON: the empty set.
        s.serialize_str(self.letters(&mut [0; 3]))
    }
}

/// The letters [`Access`] serializes to (`""` is the empty set).
impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Access::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("access {text:?}: expected letters of rwm"))
        })
    }
}

/// One device rule: type, major, minor and the access it grants.
///
/// Serialized typed (`{"type":"c","major":1,"minor":3,"access":"rw"}`, a
/// wildcard number as `"*"`), as the daemon's state file stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Block, char, or both.
    #[serde(rename = "type")]
    pub dev_type: DeviceType,
    /// Major number or `*`.
    pub major: DevNumber,
    /// Minor number or `*`.
    pub minor: DevNumber,
    /// Access bits.
    pub access: Access,
}

impl Rule {
    /// A rule for one exact device.
    pub fn device(dev_type: DeviceType, major: u32, minor: u32, access: Access) -> Self {
        Rule {
            dev_type,
            major: DevNumber::Exact(major),
            minor: DevNumber::Exact(minor),
            access,
        }
    }

    /// The policy map keys this rule occupies for `policy_id` (two for `a`).
    pub fn keys(&self, policy_id: u64) -> impl Iterator<Item = PolicyKey> + '_ {
        self.dev_type.kernel_types().iter().map(move |&t| {
            PolicyKey::new(policy_id, t, self.major.to_kernel(), self.minor.to_kernel())
        })
    }

    /// Rebuilds a (single-type) rule from a policy map entry.
    pub fn from_entry(key: &PolicyKey, access: u32) -> Option<Self> {
        Some(Rule {
            dev_type: DeviceType::from_kernel(key.dev_type)?,
            major: DevNumber::from_kernel(key.major),
            minor: DevNumber::from_kernel(key.minor),
            access: Access::from_bits(access),
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{} {}",
            self.dev_type.letter(),
            self.major,
            self.minor,
            self.access
        )
    }
}

/// A parsed but not yet resolved rule: either numbers, or a device path to stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSpec {
    /// `TYPE MAJOR:MINOR [ACCESS]`.
    Numbers(Rule),
    /// `/dev/PATH [ACCESS]`: type and numbers come from the node.
    Path {
        /// The device node.
        path: PathBuf,
        /// Access bits (`rwm` when not given).
        access: Access,
    },
}

/// The rule's last, optional field, its access (every access when absent),
/// and nothing after it.
fn access_then_end<'a>(
    fields: &mut impl Iterator<Item = &'a str>,
    rule: impl Fn() -> String,
) -> Result<Access, RuleError> {
    let access = match fields.next() {
        None => Access::ALL,
        Some(tok) => Access::parse(tok).ok_or_else(|| RuleError::InvalidAccess {
            token: tok.into(),
            rule: rule(),
        })?,
    };
    if let Some(extra) = fields.next() {
        return Err(RuleError::TrailingField {
            token: extra.into(),
            rule: rule(),
        });
    }
    Ok(access)
}

impl RuleSpec {
    /// Parses one rule from its words. The words may come as one argument
    /// (`"c 10:200 rw"`) or several (`c 10:200 rw`); pass them joined by spaces.
    pub fn parse(text: &str) -> Result<RuleSpec, RuleError> {
        let rule = || text.trim().to_string();
        let mut fields = text.split_whitespace();
        let first = fields.next().ok_or(RuleError::Empty)?;
        if first.starts_with('/') {
            let access = access_then_end(&mut fields, rule)?;
            return Ok(RuleSpec::Path {
                path: PathBuf::from(first),
                access,
            });
        }
        let dev_type = match first {
            "a" => DeviceType::All,
            "b" => DeviceType::Block,
            "c" => DeviceType::Char,
            _ => {
                return Err(RuleError::InvalidType {
                    token: first.into(),
                    rule: rule(),
                })
            }
        };
        // `a` alone means every device (cgroup v1 accepts it).
        let (major, minor) = match fields.next() {
            None if dev_type == DeviceType::All => (DevNumber::Any, DevNumber::Any),
            None => {
                return Err(RuleError::InvalidNumbers {
                    token: String::new(),
                    rule: rule(),
                })
            }
            Some(tok) => {
                let (ma, mi) = tok
                    .split_once(':')
                    .ok_or_else(|| RuleError::InvalidNumbers {
                        token: tok.into(),
                        rule: rule(),
                    })?;
                let major = parse_number(ma, MAX_MAJOR).ok_or_else(|| RuleError::InvalidMajor {
                    token: ma.into(),
                    rule: rule(),
                })?;
                let minor = parse_number(mi, MAX_MINOR).ok_or_else(|| RuleError::InvalidMinor {
                    token: mi.into(),
                    rule: rule(),
                })?;
                (major, minor)
            }
        };
        let access = access_then_end(&mut fields, rule)?;
        Ok(RuleSpec::Numbers(Rule {
            dev_type,
            major,
            minor,
            access,
        }))
    }

    /// Turns the spec into a rule, statting the device node for the path form.
    /// A symlink is followed (the rule is for the device it points to).
    pub fn resolve(&self) -> Result<Rule, RuleError> {
        match self {
            RuleSpec::Numbers(rule) => Ok(*rule),
            RuleSpec::Path { path, access } => {
                let node = DeviceNode::stat(path)?;
                Ok(Rule::device(node.dev_type, node.major, node.minor, *access))
            }
        }
    }
}

/// Parses and resolves every rule, failing on the first bad one (nothing is applied).
pub fn parse_rules<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Rule>, RuleError> {
    texts
        .iter()
        .map(|t| RuleSpec::parse(t.as_ref())?.resolve())
        .collect()
}

fn parse_number(token: &str, max: u32) -> Option<DevNumber> {
    if token == "*" {
        return Some(DevNumber::Any);
    }
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token
        .parse::<u32>()
        .ok()
        .filter(|&n| n <= max)
        .map(DevNumber::Exact)
}

/// A device node on the host: what `stat` says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// The path as given.
    pub path: PathBuf,
    /// Block or char.
    pub dev_type: DeviceType,
    pub major: u32,
    pub minor: u32,
    /// Permission bits of the node.
    pub mode: u32,
    /// Whether `path` was a symlink that was followed.
    pub via_symlink: bool,
}

impl DeviceNode {
    /// Stats `path` (following symlinks) and requires a block or char device.
    pub fn stat(path: &Path) -> Result<DeviceNode, RuleError> {
        let (meta, via_symlink) = Self::metadata(path)?;
        Self::of_metadata(path, &meta, via_symlink)
    }

    /// The metadata of `path` following symlinks, and whether `path` itself
    /// is a symlink: one `lstat`, and a `stat` only for a symlink.
    pub fn metadata(path: &Path) -> Result<(std::fs::Metadata, bool), RuleError> {
        let err = |e: std::io::Error| RuleError::DevicePath {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let meta = std::fs::symlink_metadata(path).map_err(err)?;
        if meta.file_type().is_symlink() {
            Ok((std::fs::metadata(path).map_err(err)?, true))
        } else {
            Ok((meta, false))
        }
    }

    /// The device node `path` with metadata `meta` (symlinks followed; see
    /// [`DeviceNode::metadata`]): a block or char device, else an error.
    pub fn of_metadata(
        path: &Path,
        meta: &std::fs::Metadata,
        via_symlink: bool,
    ) -> Result<DeviceNode, RuleError> {
        use std::os::unix::fs::MetadataExt;
        let err = |reason: String| RuleError::DevicePath {
            path: path.to_path_buf(),
            reason,
        };
        let ft = meta.file_type();
        let dev_type = if ft.is_char_device() {
            DeviceType::Char
        } else if ft.is_block_device() {
            DeviceType::Block
        } else if ft.is_dir() {
            return Err(err("is a directory, not a device node".into()));
        } else {
            return Err(err("is not a device node".into()));
        };
        let rdev = meta.rdev();
        Ok(DeviceNode {
            path: path.to_path_buf(),
            dev_type,
            major: libc::major(rdev),
            minor: libc::minor(rdev),
            mode: meta.mode() & 0o7777,
            via_symlink,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(rule: &str) -> Rule {
        match RuleSpec::parse(rule).expect(rule) {
            RuleSpec::Numbers(r) => r,
            other => panic!("{rule}: {other:?}"),
        }
    }

    #[test]
    fn access_letters_display_and_json() {
        assert_eq!(Access(0).to_string(), "''");
        assert_eq!(serde_json::to_string(&Access(0)).unwrap(), "\"\"");
        let back: Access = serde_json::from_str("\"\"").unwrap();
        assert_eq!(back, Access(0));
        for text in ["r", "w", "m", "rw", "rm", "wm", "rwm"] {
            let a = Access::parse(text).unwrap();
            assert_eq!(a.to_string(), text);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{text}\""));
            let back: Access = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(back, a);
        }
        // Any order in, rwm order out.
        assert_eq!(Access::parse("mwr").unwrap().to_string(), "rwm");
    }

    #[test]
    fn rules_serialize_typed_and_read_back() {
        for text in ["c 1:3 rw", "b 8:* r", "a *:* m", "c 10:200 ''", "a"] {
            let r = num(text);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), r, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&num("c 1:* rw")).unwrap(),
            r#"{"type":"c","major":1,"minor":"*","access":"rw"}"#
        );
        for bad in [
            r#"{"type":"x","major":1,"minor":3,"access":"rw"}"#,
            r#"{"type":"c","major":"1","minor":3,"access":"rw"}"#,
            r#"{"type":"c","major":1,"minor":3,"access":"rx"}"#,
            r#"{"type":"c","major":4294967295,"minor":3,"access":"r"}"#,
            r#"{"type":"c","major":1,"minor":3}"#,
        ] {
            assert!(serde_json::from_str::<Rule>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_v1_rules() {
        let r = num("c 10:200 rw");
        assert_eq!(r.dev_type, DeviceType::Char);
        assert_eq!(r.major, DevNumber::Exact(10));
        assert_eq!(r.minor, DevNumber::Exact(200));
        assert_eq!(r.access.bits(), ACCESS_READ | ACCESS_WRITE);
        assert_eq!(num("b 8:* r").minor, DevNumber::Any);
        let all = num("a *:* m");
        assert_eq!(all.dev_type, DeviceType::All);
        assert_eq!(all.access.bits(), ACCESS_MKNOD);
    }

    #[test]
    fn access_defaults_to_rwm_and_may_be_empty() {
        assert_eq!(num("c 1:3").access, Access::ALL);
        assert_eq!(num("c 10:200 ''").access, Access::NONE);
        assert_eq!(num("a").major, DevNumber::Any);
    }

    #[test]
    fn extra_whitespace_is_fine() {
        assert_eq!(num("  c   1:3\trwm "), num("c 1:3 rwm"));
        assert_eq!(num("c 1:3 mwr").access, Access::ALL);
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "c 10:200 rw",
            "b 8:* r",
            "a *:* m",
            "c 1:3 rwm",
            "c 10:200 ''",
        ] {
            assert_eq!(num(text).to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_rules_precisely() {
        let cases: &[(&str, RuleError)] = &[
            ("", RuleError::Empty),
            (
                "x 1:3 rw",
                RuleError::InvalidType {
                    token: "x".into(),
                    rule: "x 1:3 rw".into(),
                },
            ),
            (
                "c x:1 rw",
                RuleError::InvalidMajor {
                    token: "x".into(),
                    rule: "c x:1 rw".into(),
                },
            ),
            (
                "c 1:y rw",
                RuleError::InvalidMinor {
                    token: "y".into(),
                    rule: "c 1:y rw".into(),
                },
            ),
            (
                "c 4096:1 rw",
                RuleError::InvalidMajor {
                    token: "4096".into(),
                    rule: "c 4096:1 rw".into(),
                },
            ),
            (
                "c 1:1048576 rw",
                RuleError::InvalidMinor {
                    token: "1048576".into(),
                    rule: "c 1:1048576 rw".into(),
                },
            ),
            (
                "c -1:1 rw",
                RuleError::InvalidMajor {
                    token: "-1".into(),
                    rule: "c -1:1 rw".into(),
                },
            ),
            (
                "c 13 rw",
                RuleError::InvalidNumbers {
                    token: "13".into(),
                    rule: "c 13 rw".into(),
                },
            ),
            (
                "c",
                RuleError::InvalidNumbers {
                    token: "".into(),
                    rule: "c".into(),
                },
            ),
            (
                "c 1:3 rwx",
                RuleError::InvalidAccess {
                    token: "rwx".into(),
                    rule: "c 1:3 rwx".into(),
                },
            ),
            (
                "c 1:3 rr",
                RuleError::InvalidAccess {
                    token: "rr".into(),
                    rule: "c 1:3 rr".into(),
                },
            ),
            (
                "c 1:3 rw extra",
                RuleError::TrailingField {
                    token: "extra".into(),
                    rule: "c 1:3 rw extra".into(),
                },
            ),
            (
                "/dev/null rz",
                RuleError::InvalidAccess {
                    token: "rz".into(),
                    rule: "/dev/null rz".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(RuleSpec::parse(text).unwrap_err(), *want, "rule {text:?}");
        }
    }

    #[test]
    fn error_message_names_field_and_rule() {
        let msg = RuleSpec::parse("c x:1 rw").unwrap_err().to_string();
        assert!(
            msg.starts_with("invalid major \"x\" in rule \"c x:1 rw\""),
            "{msg}"
        );
    }

    #[test]
    fn path_rules_stat_the_node() {
        let spec = RuleSpec::parse("/dev/null r").unwrap();
        assert_eq!(
            spec,
            RuleSpec::Path {
                path: "/dev/null".into(),
                access: Access::parse("r").unwrap()
            }
        );
        let rule = spec.resolve().unwrap();
        assert_eq!(rule.to_string(), "c 1:3 r");
        assert_eq!(
            RuleSpec::parse("/dev/zero")
                .unwrap()
                .resolve()
                .unwrap()
                .to_string(),
            "c 1:5 rwm"
        );
    }

    #[test]
    fn path_rules_reject_non_devices() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        for (p, why) in [
            (dir.path().join("missing"), "No such file"),
            (file.clone(), "is not a device node"),
            (dir.path().to_path_buf(), "is a directory"),
        ] {
            let err = RuleSpec::Path {
                path: p.clone(),
                access: Access::ALL,
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains(why), "{p:?}: {err}");
        }
    }

    #[test]
    fn symlinks_to_devices_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("nul");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let node = DeviceNode::stat(&link).unwrap();
        assert!(node.via_symlink);
        assert_eq!((node.major, node.minor), (1, 3));
    }

    #[test]
    fn all_type_occupies_two_keys() {
        let keys: Vec<_> = num("a 1:3 r").keys(9).collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].dev_type, DEV_BLOCK);
        assert_eq!(keys[1].dev_type, DEV_CHAR);
        let w: Vec<_> = num("c *:5 r").keys(9).collect();
        assert_eq!((w[0].major, w[0].minor), (WILDCARD, 5));
    }
}
