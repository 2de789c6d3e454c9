//! Pure planning of policy changes over an in-memory copy of a container's
//! entries, judged with the kernel's own decision function
//! ([`ctdev_common::evaluate`]).
//!
//! Nothing here touches the kernel: every operation (attach, allow, revoke,
//! add, del, the daemon's take-back) first plans here, then the operation (`ops`)
//! writes exactly the plan (or, with `--dry-run`, prints it). The functions
//! hold the never-widen invariants by construction:
//! - removing bits never deletes an entry whose deletion would let a broader
//!   entry apply with more bits: the entry stays with the bits left (0 = an
//!   explicit deny);
//! - revoking bits an entry does not have changes nothing;
//! - a new exact entry for a device a broader entry already allowed starts
//!   from what the device had, so adding never narrows and taking the grant
//!   back (which restores the earlier state) never widens.

use std::collections::BTreeMap;

use ctdev_common::{evaluate, MatchKind, PolicyKey, WILDCARD};
use serde::Serialize;

use crate::rule::Rule;

/// A container's entries: key → access bits.
pub type Entries = BTreeMap<PolicyKey, u32>;

/// One planned change of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryChange {
    pub key: PolicyKey,
    /// Its bits before (`None`: absent).
    pub before: Option<u32>,
    /// Its bits after (`None`: removed).
    pub after: Option<u32>,
}

impl EntryChange {
    /// Human description: `c 1:3 rw` (as it will be), `-c 1:3` (removed),
    /// or `revoked w from b 7:*; left: r`.
    pub fn describe(&self) -> String {
        match (self.before, self.after) {
            (_, None) => format!("-{}", key_text(&self.key)),
            (Some(b), Some(a)) if a & !b == 0 && a != b => format!(
                "revoked {} from {}; left: {}",
                crate::rule::Access::from_bits(b & !a),
                key_text(&self.key),
                crate::rule::Access::from_bits(a)
            ),
            (_, Some(a)) => entry_text(&self.key, a),
        }
    }
}

/// A planned set of changes, with descriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Changes to write, in order.
    pub changes: Vec<EntryChange>,
    /// Entries asked about that already were as asked.
    pub unchanged: Vec<PolicyKey>,
    /// Explanations (an entry kept as a deny so a wildcard does not apply).
    pub notes: Vec<String>,
    /// Rules `revoke --missing-ok` skipped because no entry matched them.
    pub skipped: Vec<String>,
    /// Where each key is in `changes` / that it is in `unchanged`, so that
    /// recording stays O(log n) for policies of tens of thousands of rules.
    index: BTreeMap<PolicyKey, usize>,
    unchanged_seen: std::collections::BTreeSet<PolicyKey>,
}

impl Plan {
    /// Records `key` going from `before` to `after`.
    pub fn record(&mut self, key: PolicyKey, before: Option<u32>, after: Option<u32>) {
        if before == after {
            if self.unchanged_seen.insert(key) {
                self.unchanged.push(key);
            }
            return;
        }
        match self.index.get(&key) {
            Some(&i) => self.changes[i].after = after,
            None => {
                self.index.insert(key, self.changes.len());
                self.changes.push(EntryChange { key, before, after });
            }
        }
    }

    /// Whether `key` has a recorded change.
    pub fn changes_key(&self, key: &PolicyKey) -> bool {
        self.index.contains_key(key)
    }

    /// The entries after the plan.
    pub fn result(&self, entries: &Entries) -> Entries {
        let mut out = entries.clone();
        for c in &self.changes {
            match c.after {
                Some(v) => out.insert(c.key, v),
                None => out.remove(&c.key),
            };
        }
        out
    }

    /// `(key, after)` pairs for [`crate::kernel::policy_map::PolicyMap::apply`].
    pub fn writes(&self) -> Vec<(PolicyKey, Option<u32>)> {
        self.changes.iter().map(|c| (c.key, c.after)).collect()
    }

    /// Descriptions of the changes.
    pub fn changed_text(&self) -> Vec<String> {
        self.changes.iter().map(EntryChange::describe).collect()
    }

    /// Descriptions of the entries left as they were.
    pub fn unchanged_text(&self, entries: &Entries) -> Vec<String> {
        self.unchanged
            .iter()
            .map(|k| match entries.get(k) {
                Some(v) => entry_text(k, *v),
                None => format!("{} (no entry)", key_text(k)),
            })
            .collect()
    }
}

/// `c 1:3 rw` for an entry.
pub fn entry_text(key: &PolicyKey, bits: u32) -> String {
    Rule::from_entry(key, bits)
        .map(|r| r.to_string())
        .unwrap_or_else(|| format!("{key:?}"))
}

/// `c 1:3` for a key.
pub fn key_text(key: &PolicyKey) -> String {
    entry_text(key, 0).trim_end_matches(" ''").to_string()
}

/// The bits the kernel gives `(type, major, minor)` (0 when no entry decides).
pub fn decide(entries: &Entries, policy_id: u64, dev_type: u32, major: u32, minor: u32) -> u32 {
    evaluate(policy_id, dev_type, major, minor, 0, |k| {
        entries.get(k).copied()
    })
    .matched
    .map(|(_, b)| b)
    .unwrap_or(0)
}

fn kind_of(key: &PolicyKey) -> MatchKind {
    match (key.major == WILDCARD, key.minor == WILDCARD) {
        (false, false) => MatchKind::Exact,
        (false, true) => MatchKind::AnyMinor,
        (true, false) => MatchKind::AnyMajor,
        (true, true) => MatchKind::Any,
    }
}

/// Every access the devices decided by `key` could get if `key` were not
/// there (one value per distinct fallback; 0 for "no entry": deny).
pub fn fallbacks(entries: &Entries, key: &PolicyKey) -> Vec<u32> {
    let id = key.policy_id;
    let t = key.dev_type;
    let get = |ma: u32, mi: u32| entries.get(&PolicyKey::new(id, t, ma, mi)).copied();
    let any = get(WILDCARD, WILDCARD).unwrap_or(0);
    match kind_of(key) {
        MatchKind::Exact => vec![evaluate(id, t, key.major, key.minor, 0, |k| {
            if k == key {
                None
            } else {
                entries.get(k).copied()
            }
        })
        .matched
        .map(|(_, b)| b)
        .unwrap_or(0)],
        MatchKind::AnyMinor => {
            // Device (M, m) without an exact entry falls to (*, m), else (*, *).
            let mut out = vec![any];
            for (k, v) in entries.range(PolicyKey::new(id, t, WILDCARD, 0)..) {
                if k.policy_id != id || k.dev_type != t || k.major != WILDCARD {
                    break;
                }
                if k.minor != WILDCARD
                    && !entries.contains_key(&PolicyKey::new(id, t, key.major, k.minor))
                {
                    out.push(*v);
                }
            }
            out
        }
        MatchKind::AnyMajor => vec![any],
        MatchKind::Any => vec![0],
    }
}

/// Keys of `rules` with their bits OR-ed per key.
pub fn merge_rules<'a>(policy_id: u64, rules: impl IntoIterator<Item = &'a Rule>) -> Entries {
    let mut out = Entries::new();
    for rule in rules {
        for key in rule.keys(policy_id) {
            *out.entry(key).or_insert(0) |= rule.access.bits();
        }
    }
    out
}

/// The bits a new entry at `key` starts from so that the devices it will
/// decide keep what they had: the exact device's verdict for an exact key,
/// the `(*, *)` entry's bits for a wildcard (for `(M, *)`, the devices that
/// `(*, m)` entries decided get exact entries of their own: see
/// [`crate::grants::plan_grant`]).
pub fn inherited(entries: &Entries, key: &PolicyKey) -> u32 {
    match kind_of(key) {
        MatchKind::Exact => decide(entries, key.policy_id, key.dev_type, key.major, key.minor),
        MatchKind::AnyMinor | MatchKind::AnyMajor => entries
            .get(&PolicyKey::new(
                key.policy_id,
                key.dev_type,
                WILDCARD,
                WILDCARD,
            ))
            .copied()
            .unwrap_or(0),
        MatchKind::Any => 0,
    }
}

/// Plans `allow`: existing entries get the rule's bits OR-ed in; a new
/// entry starts from what its devices had, so no device loses access
/// (see [`crate::grants::plan_grant`], which also says what was added).
pub fn plan_allow(entries: &Entries, policy_id: u64, rules: &[Rule]) -> Plan {
    crate::grants::plan_grant(entries, policy_id, rules).0
}

/// Why a revoke cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// No entry for the rule.
    #[error("rule {0:?} has no entry")]
    NotPresent(String),
}

/// Sets `key` (present, with bits `cur`) to `left`, deleting the entry only
/// when that gives no device more than `left` (never widens).
fn narrow(plan: &mut Plan, now: &mut Entries, key: PolicyKey, left: u32, allow_delete: bool) {
    let cur = now.get(&key).copied();
    let delete = allow_delete && fallbacks(now, &key).into_iter().all(|f| f & !left == 0);
    if delete {
        plan.record(key, cur, None);
        now.remove(&key);
    } else {
        if cur.is_some_and(|c| c != left) && left == 0 {
            plan.notes.push(format!(
                "kept {} as an explicit deny: removing it would let a broader entry allow more",
                key_text(&key)
            ));
        }
        plan.record(key, cur, Some(left));
        now.insert(key, left);
    }
}

/// Plans `revoke`: clears the rule's bits (an empty access means all) from
/// its entries. An entry left with no bit is deleted only if no broader
/// entry would then allow more; otherwise it stays as a deny. Bits an entry
/// does not have change nothing. A rule with no entry is an error unless
/// `missing_ok`.
pub fn plan_revoke(
    entries: &Entries,
    policy_id: u64,
    rules: &[Rule],
    missing_ok: bool,
) -> Result<Plan, RevokeError> {
    let mut plan = Plan::default();
    let mut now = entries.clone();
    for rule in rules {
        let bits = if rule.access.is_empty() {
            ctdev_common::ACCESS_ALL
        } else {
            rule.access.bits()
        };
        let mut present = false;
        for key in rule.keys(policy_id) {
            let Some(cur) = now.get(&key).copied() else {
                continue;
            };
            present = true;
            if cur & bits == 0 && !(cur == 0 && rule.access.is_empty()) {
                // Nothing to take away (a deny entry stays a deny entry).
                plan.record(key, Some(cur), Some(cur));
                continue;
            }
            let left = cur & !bits;
            narrow(&mut plan, &mut now, key, left, left == 0);
        }
        if !present {
            if !missing_ok {
                return Err(RevokeError::NotPresent(rule.to_string()));
            }
            plan.skipped.push(rule.to_string());
        }
    }
    Ok(plan)
}

/// What `attach` will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachPlan {
    /// Not attached: write these entries (stale ones of the id removed), then attach.
    Fresh {
        /// The container's entries after.
        wanted: Entries,
    },
    /// Attached, and every wanted entry already has exactly the wanted bits.
    Satisfied,
    /// Attached with a different policy: these wanted entries differ.
    Differs {
        /// `(key, wanted bits, current bits)`.
        diffs: Vec<(PolicyKey, u32, Option<u32>)>,
    },
}

/// The entries a fresh attach writes: preset ∪ rules, where a rule with no
/// access (`''`) is a deny entry that replaces the preset's bits on its key.
pub fn attach_entries(policy_id: u64, preset: &[Rule], rules: &[Rule]) -> Entries {
    let mut wanted = merge_rules(policy_id, preset);
    for (k, v) in merge_rules(policy_id, rules) {
        let explicit_deny = rules
            .iter()
            .any(|r| r.access.is_empty() && r.keys(policy_id).any(|rk| rk == k));
        let from_preset = wanted.get(&k).copied().unwrap_or(0);
        wanted.insert(k, if explicit_deny { v } else { v | from_preset });
    }
    wanted
}

/// Plans `attach`: a fresh attach writes preset ∪ rules (a rule with no
/// access, `''`, is a deny entry and stays one: it is not merged into the
/// preset's bits for the same key); on an attached cgroup, the request must
/// already be satisfied (idempotent) or it is refused.
pub fn plan_attach(
    current: Option<&Entries>,
    policy_id: u64,
    preset: &[Rule],
    rules: &[Rule],
) -> AttachPlan {
    let wanted = attach_entries(policy_id, preset, rules);
    match current {
        None => AttachPlan::Fresh { wanted },
        Some(cur) => {
            let diffs: Vec<_> = wanted
                .iter()
                .filter(|(k, v)| cur.get(k) != Some(v))
                .map(|(k, v)| (*k, *v, cur.get(k).copied()))
                .collect();
            if diffs.is_empty() {
                AttachPlan::Satisfied
            } else {
                AttachPlan::Differs { diffs }
            }
        }
    }
}

/// Whether `after` allows anything `before` did not, over `grid`
/// (type, major, minor) × every access: the never-widen check.
pub fn widened(
    before: &Entries,
    after: &Entries,
    policy_id: u64,
    grid: &[(u32, u32, u32)],
) -> Option<(u32, u32, u32, u32)> {
    for &(t, ma, mi) in grid {
        let b = decide(before, policy_id, t, ma, mi);
        let a = decide(after, policy_id, t, ma, mi);
        let (b_any, a_any) = (
            has_entry(before, policy_id, t, ma, mi),
            has_entry(after, policy_id, t, ma, mi),
        );
        // F_OK (no bits) is allowed by any entry: gaining an entry widens it.
        if a & !b != 0 || (a_any && !b_any) {
            return Some((t, ma, mi, a & !b));
        }
    }
    None
}

fn has_entry(e: &Entries, id: u64, t: u32, ma: u32, mi: u32) -> bool {
    evaluate(id, t, ma, mi, 0, |k| e.get(k).copied())
        .matched
        .is_some()
}

/// Serializable view of a plan for `--dry-run --json`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    /// Entries that would change (as they would be, `-c 1:3` removed).
    pub changed: Vec<String>,
    /// Entries already as asked.
    pub unchanged: Vec<String>,
    /// Explanations.
    pub notes: Vec<String>,
}

impl PlanView {
    /// The view of `plan` over `entries`.
    pub fn of(plan: &Plan, entries: &Entries) -> Self {
        PlanView {
            changed: plan.changed_text(),
            unchanged: plan.unchanged_text(entries),
            notes: plan.notes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{parse_rules, Access};
    use ctdev_common::{DEV_BLOCK, DEV_CHAR};

    const ID: u64 = 7;

    fn rules(texts: &[&str]) -> Vec<Rule> {
        parse_rules(texts).unwrap()
    }

    fn attach(texts: &[&str]) -> Entries {
        match plan_attach(None, ID, &[], &rules(texts)) {
            AttachPlan::Fresh { wanted } => wanted,
            other => panic!("{other:?}"),
        }
    }

    fn grid() -> Vec<(u32, u32, u32)> {
        let mut g = Vec::new();
        for t in [DEV_BLOCK, DEV_CHAR] {
            for ma in [1, 7, 10, 136] {
                for mi in [0, 3, 5, 200] {
                    g.push((t, ma, mi));
                }
            }
        }
        g
    }

    #[test]
    fn revoking_the_last_bit_keeps_a_deny_when_a_wildcard_would_apply() {
        let e = attach(&["c *:* rwm", "c 1:3 r", "c 1:5 ''"]);
        let plan = plan_revoke(&e, ID, &rules(&["c 1:3 r"]), false).unwrap();
        let after = plan.result(&e);
        assert_eq!(after.get(&PolicyKey::new(ID, DEV_CHAR, 1, 3)), Some(&0));
        assert_eq!(widened(&e, &after, ID, &grid()), None);
        assert_eq!(plan.changed_text(), vec!["revoked r from c 1:3; left: ''"]);
    }

    #[test]
    fn revoking_a_bit_a_deny_entry_never_had_changes_nothing() {
        let e = attach(&["c *:* rwm", "c 1:5 ''"]);
        let plan = plan_revoke(&e, ID, &rules(&["c 1:5 m"]), false).unwrap();
        assert!(plan.changes.is_empty());
        assert_eq!(plan.result(&e), e);
    }

    #[test]
    fn revoke_deletes_when_nothing_broader_applies() {
        let e = attach(&["c 1:3 r"]);
        let plan = plan_revoke(&e, ID, &rules(&["c 1:3 r"]), false).unwrap();
        assert!(plan.result(&e).is_empty());
        assert_eq!(plan.changed_text(), vec!["-c 1:3"]);
    }

    #[test]
    fn revoking_a_wildcard_keeps_it_if_minor_wildcards_would_apply() {
        let e = attach(&["b 7:* rw", "b *:3 rwm"]);
        let plan = plan_revoke(&e, ID, &rules(&["b 7:* rw"]), false).unwrap();
        let after = plan.result(&e);
        assert_eq!(
            after.get(&PolicyKey::new(ID, DEV_BLOCK, 7, WILDCARD)),
            Some(&0)
        );
        let plan = plan_revoke(&e, ID, &rules(&["b 7:* w"]), false).unwrap();
        assert_eq!(plan.changed_text(), vec!["revoked w from b 7:*; left: r"]);
    }

    #[test]
    fn deny_at_attach_is_not_merged_into_the_preset() {
        let preset = crate::presets::Preset::Oci.rules();
        let AttachPlan::Fresh { wanted } = plan_attach(None, ID, &preset, &rules(&["c 1:5 ''"]))
        else {
            panic!()
        };
        assert_eq!(wanted.get(&PolicyKey::new(ID, DEV_CHAR, 1, 5)), Some(&0));
        // A rule with bits still adds to the preset's.
        let AttachPlan::Fresh { wanted } = plan_attach(None, ID, &preset, &rules(&["c 1:3 r"]))
        else {
            panic!()
        };
        assert_eq!(
            wanted.get(&PolicyKey::new(ID, DEV_CHAR, 1, 3)),
            Some(&Access::ALL.bits())
        );
    }

    #[test]
    fn reattach_is_idempotent_or_refused() {
        let e = attach(&["c *:* rwm"]);
        assert_eq!(
            plan_attach(Some(&e), ID, &[], &rules(&["c *:* rwm"])),
            AttachPlan::Satisfied
        );
        assert!(matches!(
            plan_attach(Some(&e), ID, &[], &rules(&["c *:* rwm", "c 10:200 ''"])),
            AttachPlan::Differs { .. }
        ));
    }

    #[test]
    fn allow_of_a_new_entry_inherits_what_the_device_had() {
        let e = attach(&["c *:* rwm"]);
        let plan = plan_allow(&e, ID, &rules(&["c 1:5 r"]));
        assert_eq!(
            plan.result(&e).get(&PolicyKey::new(ID, DEV_CHAR, 1, 5)),
            Some(&Access::ALL.bits())
        );
    }
}
