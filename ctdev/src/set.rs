//! `set`: atomic whole-policy replacement. The container's new rule set is
//! written beside the live one and published with one store
//! ([`crate::kernel::policy_map::PolicyMap::set_entries`]): every access is
//! judged entirely by the old set or entirely by the new one, and a crash
//! at any step leaves one of the two.
//!
//! **Grants.** The new set is the operator's whole policy: after it, no
//! grant owns a rule bit ([`crate::grants::after_set`]). A later `del` (or
//! the daemon's take-back) of a device added before the set removes the
//! nodes and directories that add made but changes no entry the set wrote;
//! rule grants (`allow`, the daemon's static rules) are superseded and
//! forgotten. Grants made after the set are recorded as usual, so `add`
//! then `del` after a set is still the identity. The records are written
//! after the publish: a crash in between leaves grants that still claim
//! bits, whose take-back can only narrow (never widen) the set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ctdev_common::PolicyKey;
use serde::Serialize;

use crate::grants::{self, Grant, Owner as GrantOwner, Subject};
use crate::kernel::counters::Counters;
use crate::kernel::policy_map::PolicyMap;
use crate::ops::{ChangeReport, ContainerLock, Ctdev, Error};
use crate::plan::Plan;
use crate::rule::Rule;
use crate::target::Target;

/// What `set` changed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SetReport {
    /// The cgroup directory, if it exists.
    pub cgroup_dir: Option<PathBuf>,
    pub policy_id: u64,
    /// Entries of the new set that were not in the old one, or had other bits.
    pub added: Vec<String>,
    /// Entries of the old set that the new one drops.
    pub removed: Vec<String>,
    /// Entries in both sets, unchanged.
    pub unchanged: Vec<String>,
    /// Grants whose rule bits the set took over (the set's rules are now
    /// the operator's: `del` of these takes back their nodes only).
    pub grants_superseded: Vec<String>,
}

/// The entries `rules` make for `policy_id` (bits of rules on one key OR-ed).
pub(crate) fn entries_for(policy_id: u64, rules: &[Rule]) -> BTreeMap<PolicyKey, u32> {
    let mut out = BTreeMap::new();
    for rule in rules {
        for key in rule.keys(policy_id) {
            *out.entry(key).or_insert(0) |= rule.access.bits();
        }
    }
    out
}

/// Plans the report of replacing `before` by `after` (pure).
pub(crate) fn plan(
    before: &BTreeMap<PolicyKey, u32>,
    after: &BTreeMap<PolicyKey, u32>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let text = |k: &PolicyKey, v: u32| {
        Rule::from_entry(k, v)
            .map(|r| r.to_string())
            .unwrap_or_else(|| format!("{k:?}"))
    };
    let mut added = Vec::new();
    let mut unchanged = Vec::new();
    for (k, v) in after {
        if before.get(k) == Some(v) {
            unchanged.push(text(k, *v));
        } else {
            added.push(text(k, *v));
        }
    }
    let removed = before
        .iter()
        .filter(|(k, _)| !after.contains_key(k))
        .map(|(k, v)| text(k, *v))
        .collect();
    (added, removed, unchanged)
}

impl Ctdev {
    /// Replaces the target's whole rule set with `rules`, atomically.
    pub fn set_rules(&self, target: &Target, rules: &[Rule]) -> Result<SetReport, Error> {
        let lock = self.lock_container(target)?;
        self.set_rules_locked(&lock, target, rules)
    }

    /// [`Ctdev::set_rules`] under the container lock the caller holds
    /// (the daemon's reload holds it already).
    pub(crate) fn set_rules_locked(
        &self,
        lock: &ContainerLock,
        target: &Target,
        rules: &[Rule],
    ) -> Result<SetReport, Error> {
        let resolved = self.resolve_locked(lock, target)?;
        let id = resolved.policy_id;
        // The pin, not the kernel's word on the link: a rule change does
        // not read the program, and needs no cgroup lock (see `LinkCheck`).
        self.require_pin(target, &resolved)?;
        let mut map = PolicyMap::open(&self.pins().policy_map())?;
        let before = map.entries_of(id)?;
        let after = entries_for(id, rules);
        let (added, removed, unchanged) = plan(&before, &after);
        if before != after {
            map.set_entries(id, &after)?;
        }
        let gone: Vec<PolicyKey> = before
            .keys()
            .filter(|k| !after.contains_key(k))
            .copied()
            .collect();
        if !gone.is_empty() {
            if let Some(mut counters) = Counters::open(self.pins())? {
                counters.forget_hits(&gone)?;
            }
        }
        // The set's rules are the operator's now: no grant owns a bit of them.
        let ledger = self.grants().load(id)?;
        let superseded = ledger
            .grants
            .iter()
            .filter(|g| !g.entries.is_empty() || matches!(g.subject, Subject::Rule { .. }))
            .map(|g| format!("{} ({})", g.subject, g.owner.as_str()))
            .collect();
        let after_ledger = grants::after_set(&ledger);
        if after_ledger != ledger {
            self.grants().save(&after_ledger)?;
        }
        Ok(SetReport {
            cgroup_dir: resolved.cgroup.map(|c| c.dir),
            policy_id: id,
            added,
            removed,
            unchanged,
            grants_superseded: superseded,
        })
    }
}

impl Ctdev {
    /// Grants and takes back grants of one `owner` on the target in one
    /// atomic swap: the entries after every grant (in order) and then every
    /// take-back (a subject `owner` never granted is skipped) are planned in
    /// memory with the same planners as [`Ctdev::grant`] and
    /// [`Ctdev::take_back`], then published at once
    /// ([`PolicyMap::set_entries`]), so no access sees a state in between
    /// (the daemon's reload changes a container's rules this way). The
    /// ledger is written ahead (new grants recorded before the entries
    /// change, the taken-back ones dropped after).
    pub fn regrant(
        &self,
        target: &Target,
        owner: GrantOwner,
        grant: &[(Subject, Vec<Rule>)],
        take_back: &[Subject],
    ) -> Result<ChangeReport, Error> {
        let lock = self.lock_container(target)?;
        self.regrant_locked(&lock, target, owner, grant, take_back)
    }

    /// [`Ctdev::regrant`] under a lock the caller holds.
    pub fn regrant_locked(
        &self,
        lock: &ContainerLock,
        target: &Target,
        owner: GrantOwner,
        grant: &[(Subject, Vec<Rule>)],
        take_back: &[Subject],
    ) -> Result<ChangeReport, Error> {
        let state = self.container_locked(lock, target, &mut None, crate::ops::LinkCheck::Pin)?;
        let id = state.policy_id;
        let mut ledger = self.grants().load(id)?;
        let mut entries = state.entries.clone();
        for (subject, rules) in grant {
            let (_, granted) = grants::plan_grant_into(&mut entries, id, rules);
            grants::record(
                &mut ledger,
                Grant::of_entries(owner, subject.clone(), granted),
            );
        }
        let ahead = ledger.clone();
        for subject in take_back {
            if let Some(i) = ledger.find(owner, subject) {
                let (plan, after) = grants::plan_take_back(&entries, &ledger, i);
                entries = plan.result(&entries);
                ledger = after;
            }
        }
        let mut total = Plan::default();
        for (k, v) in &entries {
            if state.entries.get(k) != Some(v) {
                total.record(*k, state.entries.get(k).copied(), Some(*v));
            }
        }
        let gone: Vec<PolicyKey> = state
            .entries
            .keys()
            .filter(|k| !entries.contains_key(k))
            .copied()
            .collect();
        for k in &gone {
            total.record(*k, state.entries.get(k).copied(), None);
        }
        if !self.config().dry_run {
            self.grants().save(&ahead)?;
            if !total.changes.is_empty() {
                PolicyMap::open(&self.pins().policy_map())?.set_entries(id, &entries)?;
                if !gone.is_empty() {
                    if let Some(mut counters) = Counters::open(self.pins())? {
                        counters.forget_hits(&gone)?;
                    }
                }
            }
            self.grants().save(&ledger)?;
        }
        Ok(self.change_report(&state, &total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::parse_rules;

    fn rules(words: &[&str]) -> Vec<Rule> {
        parse_rules(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn plans_added_removed_unchanged() {
        let old = entries_for(7, &rules(&["c 1:3 rw", "c 1:5 r", "b 8:* r"]));
        let new = entries_for(7, &rules(&["c 1:3 rw", "c 1:5 rw", "c 1:7 r"]));
        let (added, removed, unchanged) = plan(&old, &new);
        assert_eq!(added, ["c 1:5 rw", "c 1:7 r"]);
        assert_eq!(removed, ["b 8:* r"]);
        assert_eq!(unchanged, ["c 1:3 rw"]);
    }

    #[test]
    fn rules_on_one_key_merge_and_a_expands() {
        let e = entries_for(7, &rules(&["c 1:3 r", "c 1:3 w", "a 5:* m"]));
        assert_eq!(e.len(), 3);
        assert_eq!(e[&PolicyKey::new(7, 2, 1, 3)], 6);
    }
}
