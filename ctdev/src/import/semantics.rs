//! What a runtime's device rule list really allows, and the ctdev entries
//! that allow no more.
//!
//! Each runtime turns its ordered allow/deny list into a device program its
//! own way; the same list means different things to runc, crun and LXC.
//! [`RuntimeModel`] replays one runtime's construction (learnt from their
//! sources, see docs/SECURITY.md "Takeover equivalence"):
//!
//! - **runc 1.1** (libcontainer's devices emulator, then its device filter):
//!   the list starts from deny-all; a type-`a` rule resets it to deny-all or
//!   allow-all (its numbers and access are ignored). Other rules edit a set
//!   of exceptions keyed by exact (type, major, minor): an allow in
//!   deny-all mode, or a deny in allow-all mode, adds its bits to the
//!   exception with the same key; the opposite removes them from that key
//!   only, and runc refuses the list when a broader wildcard exception of
//!   the same type shares bits with it ("cannot punch hole"). A request is
//!   an exception only if ONE exception covers every requested bit. runc
//!   appends its default devices after the config's rules.
//! - **crun 1.8.1**: a first-match chain, crun's default devices first
//!   (they cannot be denied), then the config's rules last to first; a rule
//!   matches when its type (any for `a`), numbers and access (covering
//!   every requested bit) match; no match denies. A config without device
//!   rules gets no program at all.
//! - **LXC 5**: `a` alone switches between an allow list and a deny list
//!   and clears the rules; in allow-list mode deny rules are ignored (and
//!   the other way round), except that a rule with the same type, numbers
//!   and access text as an earlier one of the opposite kind flips it. A
//!   request is allowed (deny list: denied) when one kept rule covers every
//!   requested bit.
//!
//! [`translate`] then computes ctdev entries from the model. ctdev's lookup
//! (most specific entry decides, every requested bit must be in it) cannot
//! express every verdict: runc can allow `r` and `w` on a device but not
//! `rw` (two rules), or deny `r` while allowing `rw` (a deny exception
//! covering only `r`). There ctdev takes the narrower side and lists each
//! access it denies although the runtime allowed it ([`Narrowed`]). It
//! never allows a request the runtime denied, for the requests the kernel
//! makes: `r`, `w`, `rw` (open) and `m` (mknod).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ctdev_common::{
    evaluate, PolicyKey, ACCESS_ALL, ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE, DEV_BLOCK, DEV_CHAR,
    WILDCARD,
};
use serde::Serialize;

use super::DeviceRuleSpec;
use crate::rule::{Access, DevNumber, DeviceType, Rule};

/// Whose semantics a rule list has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Semantics {
    /// runc 1.1 (also the reading of a plain OCI config.json).
    #[default]
    Runc,
    /// crun 1.8.
    Crun,
    /// LXC 5 (`lxc.cgroup2.devices.*`).
    Lxc,
}

impl fmt::Display for Semantics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Semantics::Runc => "runc",
            Semantics::Crun => "crun",
            Semantics::Lxc => "lxc",
        })
    }
}

/// The requests the kernel's device controller makes: `open` for reading,
/// writing or both, and `mknod`.
pub const REQUESTS: [u32; 4] = [
    ACCESS_READ,
    ACCESS_WRITE,
    ACCESS_READ | ACCESS_WRITE,
    ACCESS_MKNOD,
];

/// runc 1.1's default devices (`specconv.AllowedDevices`), appended after
/// a config's rules. The node path is the one whose presence in the
/// config's `linux.devices` drops the default (runc's `createDevices`).
pub const RUNC_DEFAULTS: [(char, i64, i64, &str, Option<&str>); 11] = [
    ('c', -1, -1, "m", None),
    ('b', -1, -1, "m", None),
    ('c', 1, 3, "rwm", Some("/dev/null")),
    ('c', 1, 8, "rwm", Some("/dev/random")),
    ('c', 1, 7, "rwm", Some("/dev/full")),
    ('c', 5, 0, "rwm", Some("/dev/tty")),
    ('c', 1, 5, "rwm", Some("/dev/zero")),
    ('c', 1, 9, "rwm", Some("/dev/urandom")),
    ('c', 136, -1, "rwm", None),
    ('c', 5, 2, "rwm", None),
    ('c', 10, 200, "rwm", None),
];

/// crun 1.8.1's default devices, checked before the config's rules (later
/// crun releases add `c 10:200 rwm`).
pub const CRUN_DEFAULTS: [(char, i64, i64, &str); 11] = [
    ('c', -1, -1, "m"),
    ('b', -1, -1, "m"),
    ('c', 1, 3, "rwm"),
    ('c', 1, 8, "rwm"),
    ('c', 1, 7, "rwm"),
    ('c', 5, 0, "rwm"),
    ('c', 1, 5, "rwm"),
    ('c', 1, 9, "rwm"),
    ('c', 5, 1, "rwm"),
    ('c', 136, -1, "rwm"),
    ('c', 5, 2, "rwm"),
];

fn default_spec(t: char, major: i64, minor: i64, access: &str) -> DeviceRuleSpec {
    let num = |n: i64| u32::try_from(n).map_or(DevNumber::Any, DevNumber::Exact);
    DeviceRuleSpec::allow(
        if t == 'b' {
            DeviceType::Block
        } else {
            DeviceType::Char
        },
        num(major),
        num(minor),
        Access::parse(access).unwrap_or(Access::NONE),
    )
}

/// runc's default rules for a config whose `linux.devices` has these node
/// paths (a default whose path is listed is dropped, as runc does).
pub fn runc_defaults(linux_device_paths: &[String]) -> Vec<DeviceRuleSpec> {
    RUNC_DEFAULTS
        .iter()
        .filter(|d| {
            d.4.is_none_or(|p| !linux_device_paths.iter().any(|l| l == p))
        })
        .map(|&(t, ma, mi, a, _)| default_spec(t, ma, mi, a))
        .collect()
}

/// Why a runtime would not have accepted a rule list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// runc refuses a deny (or an allow in allow-all mode) that punches a
    /// hole in a broader wildcard rule.
    #[error(
        "runc refuses rule {index} ({rule}): it punches a hole in the wildcard rule {wildcard}"
    )]
    PunchesHole {
        /// Index of the rule in the list.
        index: usize,
        rule: DeviceRuleSpec,
        /// The wildcard exception it overlaps.
        wildcard: String,
    },
    /// More distinct numbers than the translation handles.
    #[error("the rule list names {numbers} distinct device numbers; at most {MAX_NUMBERS} are supported")]
    TooLarge {
        /// Distinct majors plus minors.
        numbers: usize,
    },
}

/// At most this many distinct majors plus minors (the translation checks
/// every combination).
pub const MAX_NUMBERS: usize = 2048;

/// One rule of a compiled runtime program: matches a request when its type
/// (`None`: any), numbers (`WILDCARD`: any) and access (every requested
/// bit) match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Check {
    dev_type: Option<u32>,
    major: u32,
    minor: u32,
    bits: u32,
    allow: bool,
}

impl Check {
    /// The check a runtime compiles one rule of its list into.
    fn of(s: &DeviceRuleSpec) -> Check {
        Check {
            dev_type: types_of(s.dev_type),
            major: s.major.to_kernel(),
            minor: s.minor.to_kernel(),
            bits: s.access.bits(),
            allow: s.allow,
        }
    }

    fn matches(&self, t: u32, major: u32, minor: u32, req: u32) -> bool {
        self.dev_type.is_none_or(|x| x == t)
            && (self.major == WILDCARD || self.major == major)
            && (self.minor == WILDCARD || self.minor == minor)
            && req & !self.bits == 0
    }
}

/// A runtime's device program, as the runtime compiles a rule list: the
/// first matching check decides, else the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeModel {
    checks: Vec<Check>,
    default_allow: bool,
}

fn types_of(t: DeviceType) -> Option<u32> {
    match t {
        DeviceType::All => None,
        DeviceType::Block => Some(DEV_BLOCK),
        DeviceType::Char => Some(DEV_CHAR),
    }
}

impl RuntimeModel {
    /// The program `semantics`' runtime builds from `specs` (for runc: the
    /// full list with its defaults, as in state.json; for crun: the
    /// config's rules, crun's defaults are added here; for LXC: the rules
    /// in config order).
    pub fn new(semantics: Semantics, specs: &[DeviceRuleSpec]) -> Result<Self, ModelError> {
        match semantics {
            Semantics::Runc => runc(specs),
            Semantics::Crun => Ok(crun(specs)),
            Semantics::Lxc => Ok(lxc(specs)),
        }
    }

    /// Whether the runtime's program allows request `req` (`ACCESS_*`
    /// bits) on device `t major:minor`. [`WILDCARD`] as a number stands for
    /// a number no rule names.
    pub fn allows(&self, t: u32, major: u32, minor: u32, req: u32) -> bool {
        self.checks
            .iter()
            .find(|c| c.matches(t, major, minor, req))
            .map_or(self.default_allow, |c| c.allow)
    }

    fn numbers(&self) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let exact = |n: u32| (n != WILDCARD).then_some(n);
        (
            self.checks.iter().filter_map(|c| exact(c.major)).collect(),
            self.checks.iter().filter_map(|c| exact(c.minor)).collect(),
        )
    }
}

/// runc's emulator: reset on `a`, exceptions keyed by exact meta.
fn runc(specs: &[DeviceRuleSpec]) -> Result<RuntimeModel, ModelError> {
    let mut default_allow = false;
    let mut rules: BTreeMap<(u32, u32, u32), u32> = BTreeMap::new();
    for (index, s) in specs.iter().enumerate() {
        let Some(t) = types_of(s.dev_type) else {
            default_allow = s.allow;
            rules.clear();
            continue;
        };
        let meta = (t, s.major.to_kernel(), s.minor.to_kernel());
        let bits = s.access.bits();
        if s.allow != default_allow {
            *rules.entry(meta).or_insert(0) |= bits;
            continue;
        }
        // Removing bits from an exception: refused where a broader
        // wildcard exception of the type shares bits (runc's rmRule).
        for partial in [
            (t, WILDCARD, meta.2),
            (t, meta.1, WILDCARD),
            (t, WILDCARD, WILDCARD),
        ] {
            if partial == meta {
                continue;
            }
            if let Some(&p) = rules.get(&partial) {
                if p & bits != 0 {
                    return Err(ModelError::PunchesHole {
                        index,
                        rule: *s,
                        wildcard: Rule::from_entry(
                            &PolicyKey::new(0, partial.0, partial.1, partial.2),
                            p,
                        )
                        .map_or_else(String::new, |r| r.to_string()),
                    });
                }
            }
        }
        if let Some(v) = rules.get_mut(&meta) {
            *v &= !bits;
            if *v == 0 {
                rules.remove(&meta);
            }
        }
    }
    Ok(RuntimeModel {
        checks: rules
            .into_iter()
            .map(|((t, major, minor), bits)| Check {
                dev_type: Some(t),
                major,
                minor,
                bits,
                allow: !default_allow,
            })
            .collect(),
        default_allow,
    })
}

/// crun: defaults first (last to first), then the rules last to first.
/// Without rules crun attaches no program at all: everything is allowed.
fn crun(specs: &[DeviceRuleSpec]) -> RuntimeModel {
    if specs.is_empty() {
        return RuntimeModel {
            checks: Vec::new(),
            default_allow: true,
        };
    }
    let defaults = CRUN_DEFAULTS
        .iter()
        .rev()
        .map(|&(t, ma, mi, a)| default_spec(t, ma, mi, a));
    let checks = defaults
        .chain(specs.iter().rev().copied())
        .map(|s| Check::of(&s))
        .collect();
    RuntimeModel {
        checks,
        default_allow: false,
    }
}

/// Whether an LXC rule is the bare `a` that switches list modes.
pub fn is_lxc_reset(s: &DeviceRuleSpec) -> bool {
    s.dev_type == DeviceType::All
        && s.major == DevNumber::Any
        && s.minor == DevNumber::Any
        && s.access.is_empty()
}

/// LXC's device list (`bpf_list_add_device`) over rules and their access
/// text as written (LXC compares the text): the deny-list mode and the
/// rules its program checks.
pub fn lxc_list<'a>(
    rules: impl IntoIterator<Item = (DeviceRuleSpec, &'a str)>,
) -> (bool, Vec<DeviceRuleSpec>) {
    let mut deny_list = false;
    let mut items: Vec<(DeviceRuleSpec, &str)> = Vec::new();
    for (s, text) in rules {
        if is_lxc_reset(&s) {
            deny_list = s.allow;
            items.clear();
            continue;
        }
        // Only rules of the mode's kind count (allows in an allow list).
        let kept = |r: &DeviceRuleSpec| r.allow != deny_list;
        let same = items.iter_mut().find(|(r, t)| {
            r.dev_type == s.dev_type
                && r.major == s.major
                && r.minor == s.minor
                && *t == text
                && kept(r)
        });
        match same {
            Some((r, _)) => r.allow = s.allow,
            None => items.push((s, text)),
        }
    }
    let kept = items
        .into_iter()
        .map(|(r, _)| r)
        .filter(|r| r.allow != deny_list)
        .collect();
    (deny_list, kept)
}

/// LXC: the kept rules all have the mode's opposite verdict.
fn lxc(specs: &[DeviceRuleSpec]) -> RuntimeModel {
    let texts: Vec<String> = specs.iter().map(|s| s.access.to_string()).collect();
    let (deny_list, kept) = lxc_list(specs.iter().copied().zip(texts.iter().map(String::as_str)));
    RuntimeModel {
        checks: kept.iter().map(Check::of).collect(),
        default_allow: deny_list,
    }
}

/// A request the runtime allowed that ctdev's entries deny, because
/// ctdev's model cannot express the runtime's verdicts on that device.
/// A `*` number stands for every number no rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Narrowed {
    /// `b` or `c`.
    pub dev_type: DeviceType,
    /// Major number, or `*` for every major no rule names.
    pub major: DevNumber,
    /// Minor number, or `*` for every minor no rule names.
    pub minor: DevNumber,
    /// The request (`r`, `w`, `rw` or `m`).
    pub access: Access,
}

/// As the rule of the same fields (`c 1:* rw`).
impl fmt::Display for Narrowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Rule {
            dev_type: self.dev_type,
            major: self.major,
            minor: self.minor,
            access: self.access,
        }
        .fmt(f)
    }
}

/// The ctdev entries for a runtime's rules, and what they narrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    /// Whose semantics the rules were read with.
    pub semantics: Semantics,
    /// Single-type ctdev entries, in policy-map key order.
    pub rules: Vec<Rule>,
    /// Requests the runtime allowed and the entries deny.
    pub narrowed: Vec<Narrowed>,
}

/// The bits ctdev gives a device the runtime judges with `allows`: every
/// single bit it allows, except that when it allows `r` and `w` but not
/// `rw`, write is dropped (ctdev cannot allow both alone but not together).
fn target_bits(allows: impl Fn(u32) -> bool) -> u32 {
    let mut bits = [ACCESS_READ, ACCESS_WRITE, ACCESS_MKNOD]
        .into_iter()
        .filter(|&b| allows(b))
        .fold(0, |acc, b| acc | b);
    let rw = ACCESS_READ | ACCESS_WRITE;
    if bits & rw == rw && !allows(rw) {
        bits &= !ACCESS_WRITE;
    }
    bits
}

/// The ctdev entries that allow, for every device and request in
/// [`REQUESTS`], at most what `semantics`' runtime allows with `specs`,
/// and exactly that wherever ctdev's model can say it.
pub fn translate(
    semantics: Semantics,
    specs: &[DeviceRuleSpec],
) -> Result<Translation, ModelError> {
    let model = RuntimeModel::new(semantics, specs)?;
    check_size(&model)?;
    Ok(translate_model(semantics, &model))
}

/// [`translate`] of an already built model.
pub fn translate_model(semantics: Semantics, model: &RuntimeModel) -> Translation {
    let (mut majors, mut minors) = model.numbers();
    // Verdicts only depend on which named number a device's equals, so the
    // named numbers plus "any other" (WILDCARD) cover every device.
    majors.insert(WILDCARD);
    minors.insert(WILDCARD);
    let mut map: BTreeMap<PolicyKey, u32> = BTreeMap::new();
    let mut narrowed = Vec::new();
    let key = |t, ma, mi| PolicyKey::new(0, t, ma, mi);
    for t in [DEV_BLOCK, DEV_CHAR] {
        let want = |ma: u32, mi: u32| target_bits(|req| model.allows(t, ma, mi, req));
        // Most general first, so each entry is only added where the lookup
        // would otherwise give a different answer.
        let mut order: Vec<(u32, u32)> = Vec::new();
        order.push((WILDCARD, WILDCARD));
        order.extend(
            majors
                .iter()
                .filter(|&&m| m != WILDCARD)
                .map(|&m| (m, WILDCARD)),
        );
        order.extend(
            minors
                .iter()
                .filter(|&&m| m != WILDCARD)
                .map(|&m| (WILDCARD, m)),
        );
        for &ma in majors.iter().filter(|&&m| m != WILDCARD) {
            for &mi in minors.iter().filter(|&&m| m != WILDCARD) {
                order.push((ma, mi));
            }
        }
        for (ma, mi) in order {
            let bits = want(ma, mi);
            let now = evaluate(0, t, ma, mi, ACCESS_ALL, |k| map.get(k).copied())
                .matched
                .map_or(0, |(_, b)| b);
            if now != bits {
                map.insert(key(t, ma, mi), bits);
            }
            for req in REQUESTS {
                if model.allows(t, ma, mi, req) && req & !bits != 0 {
                    narrowed.push(Narrowed {
                        dev_type: DeviceType::from_kernel(t).unwrap_or(DeviceType::Char),
                        major: DevNumber::from_kernel(ma),
                        minor: DevNumber::from_kernel(mi),
                        access: Access::from_bits(req),
                    });
                }
            }
        }
    }
    narrowed.sort_by_key(|n| (n.dev_type, n.major, n.minor, n.access.bits()));
    Translation {
        semantics,
        rules: map
            .iter()
            .filter_map(|(k, &bits)| Rule::from_entry(k, bits))
            .collect(),
        narrowed,
    }
}

/// Checks the size limit before building the grid.
pub fn check_size(model: &RuntimeModel) -> Result<(), ModelError> {
    let (ma, mi) = model.numbers();
    let numbers = ma.len() + mi.len();
    if numbers > MAX_NUMBERS {
        return Err(ModelError::TooLarge { numbers });
    }
    Ok(())
}

impl RuntimeModel {
    /// How [`Narrowed`] names device `major:minor`: its own numbers where a
    /// rule names them, `*` where none does.
    pub fn representative(&self, major: u32, minor: u32) -> (DevNumber, DevNumber) {
        let (majors, minors) = self.numbers();
        let pick = |set: &BTreeSet<u32>, n: u32| {
            if set.contains(&n) {
                DevNumber::Exact(n)
            } else {
                DevNumber::Any
            }
        };
        (pick(&majors, major), pick(&minors, minor))
    }

    /// The numbers the model's rules name (majors, minors).
    pub fn named_numbers(&self) -> (Vec<u32>, Vec<u32>) {
        let (a, b) = self.numbers();
        (a.into_iter().collect(), b.into_iter().collect())
    }
}

/// Whether ctdev's entries `rules` allow request `req` on a device
/// (`ctdev_common::evaluate`, the kernel program's own decision).
pub fn ctdev_allows(rules: &[Rule], t: u32, major: u32, minor: u32, req: u32) -> bool {
    map_allows(&entry_map(rules), t, major, minor, req)
}

fn entry_map(rules: &[Rule]) -> BTreeMap<PolicyKey, u32> {
    rules
        .iter()
        .flat_map(|r| r.keys(1).map(move |k| (k, r.access.bits())))
        .collect()
}

fn map_allows(map: &BTreeMap<PolicyKey, u32>, t: u32, major: u32, minor: u32, req: u32) -> bool {
    evaluate(1, t, major, minor, req, |k| map.get(k).copied()).allowed
}

/// The oracle: on every device of the grid (the named numbers, `extra`
/// numbers, and one number no rule names) and every request in
/// [`REQUESTS`], ctdev's entries never allow what the model denies, and
/// every request the model allows and the entries deny is in the
/// translation's narrowed list. Returns the first violation.
pub fn verify(model: &RuntimeModel, tr: &Translation, extra: &[u32]) -> Result<(), String> {
    let (mut majors, mut minors) = model.numbers();
    for set in [&mut majors, &mut minors] {
        set.extend(extra.iter().copied());
        let unused = (0..).find(|n| !set.contains(n)).unwrap_or(0);
        set.insert(unused);
    }
    let mut seen = BTreeSet::new();
    for r in &tr.rules {
        if r.dev_type == DeviceType::All {
            return Err(format!("entry {r} is not single-type"));
        }
        if !seen.insert((r.dev_type, r.major, r.minor)) {
            return Err(format!("duplicate entry {r}"));
        }
    }
    let map = entry_map(&tr.rules);
    for t in [DEV_BLOCK, DEV_CHAR] {
        for &ma in &majors {
            for &mi in &minors {
                for req in REQUESTS {
                    let runtime = model.allows(t, ma, mi, req);
                    let ours = map_allows(&map, t, ma, mi, req);
                    let dev_type = DeviceType::from_kernel(t).unwrap_or(DeviceType::Char);
                    let cell =
                        || format!("{} {ma}:{mi} {}", dev_type.letter(), Access::from_bits(req));
                    if ours && !runtime {
                        return Err(format!("ctdev allows {} which the runtime denies", cell()));
                    }
                    if runtime && !ours {
                        let (major, minor) = model.representative(ma, mi);
                        let n = Narrowed {
                            dev_type,
                            major,
                            minor,
                            access: Access::from_bits(req),
                        };
                        if !tr.narrowed.contains(&n) {
                            return Err(format!(
                                "ctdev denies {} which the runtime allows, and the narrowed list lacks {n}",
                                cell()
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
