//! Grant records (the ledger): what each `add`, each daemon grant and each
//! operator `allow` changed, so that taking a grant back (`del`, the
//! daemon's take-back) undoes exactly that and nothing else.
//!
//! One JSON file per container (policy id) in a state directory outside
//! bpffs (bpffs holds only pins): by default `/run/ctdev/pinroots/<pin
//! root>/`, so a test with its own pin root has its own records. Files are
//! written ahead (before the change they describe) and atomically (temporary
//! file, rename; see [`Store::save`]), under the pin-root lock every change holds. A grant
//! written ahead of a change that never happened is harmless to take back:
//! the take-back only ever removes bits that are there and nodes that are
//! the grant's, and never deletes an entry when a broader one would widen.
//!
//! The planning here is pure ([`plan_grant`], [`plan_take_back`]) over an
//! in-memory copy of the entries.

use std::fs;
use std::path::{Path, PathBuf};

use ctdev_common::{PolicyKey, WILDCARD};
use serde::{Deserialize, Serialize};

use crate::error::IoError;
use crate::kernel::pins::RootLock;
use crate::plan::{decide, fallbacks, inherited, merge_rules, Entries, Plan};
use crate::rule::{DeviceType, Rule};

/// Root of the default state directories.
pub const DEFAULT_STATE_BASE: &str = "/run/ctdev/pinroots";

/// Why the records could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// Reading or writing failed (the operation and the path named).
    #[error("grant records: {0}")]
    Io(#[from] IoError),
    /// Not valid JSON of the expected shape.
    #[error("grant records {path} are corrupt: {message}")]
    Corrupt {
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// Who made a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// `ctdev add`.
    Cli,
    /// `ctdev daemon`.
    Daemon,
    /// `ctdev allow`.
    Operator,
}

impl Owner {
    /// The name used in messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Cli => "cli",
            Owner::Daemon => "daemon",
            Owner::Operator => "operator",
        }
    }
}

/// What a grant was for: its identity among a container's grants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Subject {
    /// A device node or directory passed in (`add DEVICE DEST`).
    Device {
        /// DEVICE as given.
        device: String,
        /// DEST in the container.
        dest: String,
    },
    /// A network interface moved in.
    Interface {
        /// Host name.
        host: String,
        /// Name in the container.
        inside: String,
    },
    /// A rule (operator `allow`, daemon static rule).
    Rule {
        /// The rule text.
        rule: String,
    },
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Device { device, dest } if device == dest => write!(f, "{device}"),
            Subject::Device { device, dest } => write!(f, "{device} at {dest}"),
            Subject::Interface { host, inside } => write!(f, "interface {host} as {inside}"),
            Subject::Rule { rule } => write!(f, "rule {rule}"),
        }
    }
}

/// What a grant did to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryGrant {
    /// Kernel device type code.
    pub dev_type: u32,
    /// Major (or the wildcard).
    pub major: u32,
    /// Minor (or the wildcard).
    pub minor: u32,
    /// The entry did not exist: this grant created it.
    pub created: bool,
    /// Bits the grant asked for.
    pub requested: u32,
    /// Bits it added (not there, nor given by a broader entry, before).
    pub added: u32,
}

impl EntryGrant {
    /// The key of the entry under `policy_id`.
    pub fn key(&self, policy_id: u64) -> PolicyKey {
        PolicyKey::new(policy_id, self.dev_type, self.major, self.minor)
    }
}

/// A device node as saved in the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNode {
    /// Kernel device type code.
    pub dev_type: u32,
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl From<crate::container::nodes::NodeSpec> for SavedNode {
    fn from(n: crate::container::nodes::NodeSpec) -> Self {
        SavedNode {
            dev_type: n.dev_type.kernel_types()[0],
            major: n.major,
            minor: n.minor,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
        }
    }
}

impl SavedNode {
    /// Back to a node spec.
    pub fn spec(&self) -> crate::container::nodes::NodeSpec {
        crate::container::nodes::NodeSpec {
            dev_type: DeviceType::from_kernel(self.dev_type).unwrap_or(DeviceType::Char),
            major: self.major,
            minor: self.minor,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// What a grant did to one node in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "action")]
pub enum NodeChange {
    /// The node was created (nothing was there).
    Created,
    /// Another device node was there, saved to be put back.
    Replaced {
        /// The node that was there.
        old: SavedNode,
    },
}

/// One node a grant made.
///
/// Every grant with a node at one path records the same `change`: what was
/// there before the first of them (the path's base). The node at the path
/// is the one of the grant with the highest `seq` (the latest add); `del`
/// of that grant puts back the node of the next one, and the last `del`
/// puts back the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGrant {
    /// Path in the container.
    pub dest: PathBuf,
    /// The node made.
    pub node: SavedNode,
    /// What was at the path before any grant made a node there.
    pub change: NodeChange,
    /// When the node was made, in the container's ledger (higher: later).
    #[serde(default)]
    pub seq: u64,
}

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Who made it.
    pub owner: Owner,
    /// What for.
    pub subject: Subject,
    /// Entries it changed.
    pub entries: Vec<EntryGrant>,
    /// Nodes it made or replaced.
    #[serde(default)]
    pub nodes: Vec<NodeGrant>,
    /// Directories in the container this grant depends on that a grant
    /// created (the ones it created, and ancestors of its nodes another
    /// grant created): `del` removes each, if empty, once no other grant
    /// lists it. A directory that existed before any grant is never listed.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Written ahead of a change that has not been confirmed yet.
    #[serde(default)]
    pub pending: bool,
}

impl Grant {
    /// A confirmed grant of `entries` only: no node, no directory (a rule,
    /// or an interface, whose entries are none).
    pub fn of_entries(owner: Owner, subject: Subject, entries: Vec<EntryGrant>) -> Self {
        Grant {
            owner,
            subject,
            entries,
            nodes: Vec::new(),
            dirs: Vec::new(),
            pending: false,
        }
    }
}

/// A container's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub version: u32,
    /// The container's policy id.
    pub policy_id: u64,
    /// Grants, oldest first.
    pub grants: Vec<Grant>,
}

impl Ledger {
    /// An empty ledger for `policy_id`.
    pub fn new(policy_id: u64) -> Self {
        Ledger {
            version: 1,
            policy_id,
            grants: Vec::new(),
        }
    }

    /// The index of the grant of `owner` for `subject`.
    pub fn find(&self, owner: Owner, subject: &Subject) -> Option<usize> {
        self.grants
            .iter()
            .position(|g| g.owner == owner && &g.subject == subject)
    }
}

/// Where the records of one pin root live.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The records of `pin_root`, under `state_dir` if given, else derived
    /// from the pin root's path under [`DEFAULT_STATE_BASE`].
    pub fn new(pin_root: &Path, state_dir: Option<&Path>) -> Self {
        let dir = match state_dir {
            Some(d) => d.to_path_buf(),
            None => {
                Path::new(DEFAULT_STATE_BASE).join(pin_root.strip_prefix("/").unwrap_or(pin_root))
            }
        };
        Store { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, policy_id: u64) -> PathBuf {
        self.dir.join(Self::file_name(policy_id))
    }

    /// The name of `policy_id`'s ledger file in [`Self::dir`] (`list`
    /// reads the directory once instead of trying each container's file).
    pub fn file_name(policy_id: u64) -> String {
        format!("grants-{policy_id}.json")
    }

    /// The ledger of `policy_id` (empty when there is none).
    pub fn load(&self, policy_id: u64) -> Result<Ledger, GrantError> {
        let path = self.path(policy_id);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| GrantError::Corrupt {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::new(policy_id)),
            Err(source) => Err(IoError::new("read", path, source).into()),
        }
    }

    /// Writes the ledger atomically (temporary file, rename; an empty one
    /// removes the file). No fsync: the grants are on pinned maps, which a
    /// reboot removes anyway, and a killed process leaves the page cache
    /// intact (see the daemon's state file).
    pub fn save(&self, ledger: &Ledger) -> Result<(), GrantError> {
        let path = self.path(ledger.policy_id);
        if ledger.grants.is_empty() {
            // Only the file: the directory is shared by every container,
            // and this runs under one container's lock while others may be
            // writing theirs; it goes with `remove_at_detach` (root lock).
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(IoError::new("remove", path, e).into())
                }
                _ => Ok(()),
            };
        }
        let text = crate::fsio::json_pretty(ledger).map_err(|e| GrantError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(crate::fsio::write_atomic(&path, &text)?)
    }

    /// Forgets every grant of `policy_id` (a fresh attach). Only the
    /// file: an attach may run under its container's lock while other
    /// containers write theirs ([`Store::save`]).
    pub fn remove(&self, policy_id: u64) -> Result<(), GrantError> {
        let path = self.path(policy_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IoError::new("remove", path, source).into()),
        }
    }

    /// [`Store::remove`] at detach, under the root lock (no other
    /// container writes its file meanwhile): the directory goes with its
    /// last file.
    pub fn remove_at_detach(&self, policy_id: u64, root: &RootLock) -> Result<(), GrantError> {
        self.remove(policy_id)?;
        self.remove_dir_if_empty(root);
        Ok(())
    }

    /// Removes the directory if no container has a file in it, under the
    /// root lock (no container writes its file meanwhile).
    pub fn remove_dir_if_empty(&self, _root: &RootLock) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Plans a grant of `rules` (merged per key): an existing entry gets the
/// bits OR-ed in; a new entry starts from what its devices had (so adding
/// never narrows). Returns the plan and what the grant added per entry.
pub fn plan_grant(entries: &Entries, policy_id: u64, rules: &[Rule]) -> (Plan, Vec<EntryGrant>) {
    let mut now = entries.clone();
    plan_grant_into(&mut now, policy_id, rules)
}

/// [`plan_grant`] on entries that are updated in place to the plan's
/// result (no copy: `allow` plans one grant per rule, for many rules).
pub fn plan_grant_into(
    now: &mut Entries,
    policy_id: u64,
    rules: &[Rule],
) -> (Plan, Vec<EntryGrant>) {
    let mut plan = Plan::default();
    let mut out = Vec::new();
    for (key, bits) in merge_rules(policy_id, rules) {
        let before = now.get(&key).copied();
        let had = match before {
            Some(b) => b,
            None => inherited(now, &key),
        };
        let after = had | bits;
        if before.is_none() && key.major != WILDCARD && key.minor == WILDCARD {
            // A new (M, *) would take the devices (M, m) from the (*, m)
            // entries deciding them: each whose verdict would change gets an
            // exact entry (what it had plus the bits), so every device ends
            // with exactly what it had plus what was asked.
            let helpers: Vec<(PolicyKey, u32)> = now
                .range(PolicyKey::new(policy_id, key.dev_type, WILDCARD, 0)..)
                .take_while(|(k, _)| {
                    k.policy_id == policy_id && k.dev_type == key.dev_type && k.major == WILDCARD
                })
                .filter(|(k, b)| {
                    k.minor != WILDCARD
                        && (**b | bits) != after
                        && !now.contains_key(&PolicyKey::new(
                            policy_id,
                            key.dev_type,
                            key.major,
                            k.minor,
                        ))
                })
                .map(|(k, b)| {
                    (
                        PolicyKey::new(policy_id, key.dev_type, key.major, k.minor),
                        *b,
                    )
                })
                .collect();
            for (hk, b) in helpers {
                plan.record(hk, None, Some(b | bits));
                now.insert(hk, b | bits);
                out.push(EntryGrant {
                    dev_type: hk.dev_type,
                    major: hk.major,
                    minor: hk.minor,
                    created: true,
                    requested: bits,
                    added: bits & !b,
                });
            }
        }
        plan.record(key, before, Some(after));
        now.insert(key, after);
        out.push(EntryGrant {
            dev_type: key.dev_type,
            major: key.major,
            minor: key.minor,
            created: before.is_none(),
            requested: bits,
            added: bits & !had,
        });
    }
    (plan, out)
}

/// Adds (or merges) a grant into the ledger: a second grant of the same
/// owner and subject extends the first (idempotent).
pub fn record(ledger: &mut Ledger, grant: Grant) {
    match ledger.find(grant.owner, &grant.subject) {
        Some(i) => merge(&mut ledger.grants[i], grant),
        None => ledger.grants.push(grant),
    }
}

/// [`record`] for many grants at once, with an index instead of a search
/// per grant (`allow` of tens of thousands of rules).
pub fn record_all(ledger: &mut Ledger, grants: Vec<Grant>) {
    let mut index: std::collections::BTreeMap<(Owner, Subject), usize> = ledger
        .grants
        .iter()
        .enumerate()
        .map(|(i, g)| ((g.owner, g.subject.clone()), i))
        .collect();
    for grant in grants {
        match index.get(&(grant.owner, grant.subject.clone())) {
            Some(&i) => merge(&mut ledger.grants[i], grant),
            None => {
                index.insert((grant.owner, grant.subject.clone()), ledger.grants.len());
                ledger.grants.push(grant);
            }
        }
    }
}

/// Merges `grant` into `g` (same owner and subject).
fn merge(g: &mut Grant, grant: Grant) {
    for e in grant.entries {
        match g
            .entries
            .iter_mut()
            .find(|x| (x.dev_type, x.major, x.minor) == (e.dev_type, e.major, e.minor))
        {
            Some(x) => {
                x.requested |= e.requested;
                x.added |= e.added;
                x.created |= e.created;
            }
            None => g.entries.push(e),
        }
    }
    for n in grant.nodes {
        match g.nodes.iter_mut().find(|x| x.dest == n.dest) {
            // Made again by the same grant: it is the latest at the path.
            Some(x) => {
                x.node = n.node;
                x.seq = x.seq.max(n.seq);
            }
            None => g.nodes.push(n),
        }
    }
    for d in grant.dirs {
        if !g.dirs.contains(&d) {
            g.dirs.push(d);
        }
    }
    g.pending = grant.pending;
}

/// An operator's revoke overrides grants: the bits it took away are no
/// longer any grant's (a later grant that adds them again owns them).
pub fn forget_revoked(ledger: &mut Ledger, plan: &Plan) {
    let id = ledger.policy_id;
    for c in &plan.changes {
        let left = c.after.unwrap_or(0);
        for g in ledger.grants.iter_mut() {
            for e in g.entries.iter_mut().filter(|e| e.key(id) == c.key) {
                e.requested &= left;
                e.added &= left;
                if c.after.is_none() {
                    e.created = false;
                }
            }
        }
    }
}

/// Plans taking grant `index` back: for each of its entries, the bits it
/// added that no other grant asked for are removed; an entry it created is
/// deleted when no other grant needs it and deleting gives no device more
/// than the bits left, otherwise it stays with those bits. Bits and
/// creation still wanted by other grants pass to them. Returns the plan
/// and the ledger after.
pub fn plan_take_back(entries: &Entries, ledger: &Ledger, index: usize) -> (Plan, Ledger) {
    let id = ledger.policy_id;
    let mut after = ledger.clone();
    let grant = after.grants.remove(index);
    let mut plan = Plan::default();
    let mut now = entries.clone();
    // Most general entries first: a wildcard goes before the exact entries
    // that kept its devices' bits, so those can go too.
    let mut order: Vec<&EntryGrant> = grant.entries.iter().collect();
    order.sort_by_key(|e| {
        std::cmp::Reverse((e.major == WILDCARD) as u8 * 2 + (e.minor == WILDCARD) as u8)
    });
    for eg in order {
        let key = eg.key(id);
        let same =
            |x: &EntryGrant| (x.dev_type, x.major, x.minor) == (eg.dev_type, eg.major, eg.minor);
        let claimed: u32 = after
            .grants
            .iter()
            .flat_map(|g| g.entries.iter())
            .filter(|x| same(x))
            .fold(0, |a, x| a | x.requested);
        // Grants still asking for bits of the entry (a record a revoke
        // emptied asks for nothing and keeps nothing).
        let wants = |x: &EntryGrant| same(x) && x.requested != 0;
        let others = after.grants.iter().any(|g| g.entries.iter().any(wants));
        // Hand what others still want over to them.
        let mut keep = eg.added & claimed;
        let mut creator_passed = !eg.created;
        for g in after.grants.iter_mut() {
            for x in g.entries.iter_mut().filter(|x| wants(x)) {
                let give = keep & x.requested;
                x.added |= give;
                keep &= !give;
                if !creator_passed {
                    x.created = true;
                    creator_passed = true;
                }
            }
        }
        let remove = eg.added & !claimed;
        let Some(cur) = now.get(&key).copied() else {
            // Someone removed it since: nothing to take back.
            continue;
        };
        let left = cur & !remove;
        let may_delete = eg.created && !others;
        let delete = may_delete && fallbacks(&now, &key).into_iter().all(|f| f & !left == 0);
        if delete {
            plan.record(key, Some(cur), None);
            now.remove(&key);
        } else {
            plan.record(key, Some(cur), Some(left));
            now.insert(key, left);
        }
    }
    (plan, after)
}

/// Directories recorded by grants of `ledger` that are ancestors of one of
/// `dests`: a new grant with nodes under them shares them, so the last
/// grant using a directory is the one whose `del` removes it.
pub fn shared_dirs<'a>(ledger: &Ledger, dests: impl IntoIterator<Item = &'a Path>) -> Vec<PathBuf> {
    let dests: Vec<&Path> = dests.into_iter().collect();
    let mut out: Vec<PathBuf> = Vec::new();
    for d in ledger.grants.iter().flat_map(|g| g.dirs.iter()) {
        if !out.contains(d) && dests.iter().any(|p| p.starts_with(d) && *p != d.as_path()) {
            out.push(d.clone());
        }
    }
    out
}

/// The base of `dest`: what was there before the first grant of `ledger`
/// that made a node there (`None`: no grant has a node there). A new node
/// at a path that has grants' nodes records the same base, so whichever
/// grant goes last puts back what was there first.
pub fn node_base(ledger: &Ledger, dest: &Path) -> Option<NodeChange> {
    ledger
        .grants
        .iter()
        .flat_map(|g| g.nodes.iter())
        .find(|n| n.dest == dest)
        .map(|n| n.change)
}

/// The sequence number of a node made now (after every recorded one).
pub fn next_node_seq(ledger: &Ledger) -> u64 {
    ledger
        .grants
        .iter()
        .flat_map(|g| g.nodes.iter())
        .map(|n| n.seq + 1)
        .max()
        .unwrap_or(1)
}

/// What `del` of `grant` does to its nodes, with `after` the ledger
/// without the grant and `current` the node now at a path. Each returned
/// record says: if the node at `dest` is still `node`, undo `change`.
/// - No other grant has a node at the path: the base is put back (the node
///   removed, or the node that was there first restored).
/// - Other grants do and the node there is this grant's: the node of the
///   latest of them is put back (nothing to do when it is the same node).
/// - Otherwise (the node there is another grant's, or was changed outside
///   ctdev) nothing is done.
pub fn release_nodes(
    grant: &Grant,
    after: &Ledger,
    current: impl Fn(&Path) -> Option<SavedNode>,
) -> Vec<NodeGrant> {
    let mut out = Vec::new();
    for n in &grant.nodes {
        let latest = after
            .grants
            .iter()
            .flat_map(|g| g.nodes.iter())
            .filter(|x| x.dest == n.dest)
            .max_by_key(|x| x.seq);
        match latest {
            None => out.push(n.clone()),
            Some(top) if top.node != n.node && current(&n.dest) == Some(n.node) => {
                out.push(NodeGrant {
                    change: NodeChange::Replaced { old: top.node },
                    ..n.clone()
                })
            }
            Some(_) => {}
        }
    }
    out
}

/// The directories of `grant` to remove when it is taken back (if empty):
/// those no grant of `others` (the ledger after the take-back) lists,
/// deepest first.
pub fn dirs_to_remove(grant: &Grant, others: &Ledger) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = grant
        .dirs
        .iter()
        .filter(|d| !others.grants.iter().any(|g| g.dirs.contains(d)))
        .cloned()
        .collect();
    out.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    out.dedup();
    out
}

/// The ledger after `ctdev set` replaced the container's whole rule set:
/// the new set is the operator's, so no grant owns a rule bit any more
/// (a later `del` or daemon take-back changes no entry the set wrote).
/// Operator and daemon rule grants go (they were only rules); device and
/// interface grants stay with their nodes and directories, so `del` still
/// removes what `add` made in the container.
pub fn after_set(ledger: &Ledger) -> Ledger {
    let mut out = ledger.clone();
    out.grants
        .retain(|g| !matches!(g.subject, Subject::Rule { .. }));
    for g in out.grants.iter_mut() {
        g.entries.clear();
    }
    out
}

/// Bits the kernel gives `key`'s device now (exact keys only; for notes).
pub fn effective(entries: &Entries, key: &PolicyKey) -> u32 {
    decide(entries, key.policy_id, key.dev_type, key.major, key.minor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan_attach, widened, AttachPlan};
    use crate::rule::parse_rules;
    use ctdev_common::{DEV_BLOCK, DEV_CHAR};

    const ID: u64 = 9;

    fn attach(texts: &[&str]) -> Entries {
        match plan_attach(None, ID, &[], &parse_rules(texts).unwrap()) {
            AttachPlan::Fresh { wanted } => wanted,
            other => panic!("{other:?}"),
        }
    }

    fn grid() -> Vec<(u32, u32, u32)> {
        let mut g = Vec::new();
        for t in [DEV_BLOCK, DEV_CHAR] {
            for ma in [1, 4, 7] {
                for mi in [3, 5, 9] {
                    g.push((t, ma, mi));
                }
            }
        }
        g
    }

    fn grant(entries: &mut Entries, ledger: &mut Ledger, owner: Owner, subject: &str, rule: &str) {
        let (plan, eg) = plan_grant(entries, ID, &parse_rules(&[rule]).unwrap());
        *entries = plan.result(entries);
        record(
            ledger,
            Grant::of_entries(
                owner,
                Subject::Rule {
                    rule: subject.into(),
                },
                eg,
            ),
        );
    }

    fn take_back(entries: &mut Entries, ledger: &mut Ledger, owner: Owner, subject: &str) {
        let i = ledger
            .find(
                owner,
                &Subject::Rule {
                    rule: subject.into(),
                },
            )
            .unwrap();
        let (plan, after) = plan_take_back(entries, ledger, i);
        let next = plan.result(entries);
        assert_eq!(widened(entries, &next, ID, &grid()), None);
        *entries = next;
        *ledger = after;
    }

    /// One step of a grant scenario.
    #[derive(Clone, Copy)]
    enum Step {
        /// A grant of `rule` by `owner` for the subject.
        Grant(Owner, &'static str, &'static str),
        /// Its take-back (which must widen nothing).
        Back(Owner, &'static str),
        /// The char entry `major:minor` has these access bits now.
        Bits(u32, u32, u32),
    }

    /// Runs `steps` from the entries `start` with a new ledger; returns the
    /// entries at the end.
    fn replay(start: &Entries, steps: &[Step]) -> Entries {
        let (mut e, mut l) = (start.clone(), Ledger::new(ID));
        for step in steps {
            match *step {
                Step::Grant(owner, subject, rule) => grant(&mut e, &mut l, owner, subject, rule),
                Step::Back(owner, subject) => take_back(&mut e, &mut l, owner, subject),
                Step::Bits(major, minor, bits) => {
                    let key = PolicyKey::new(ID, DEV_CHAR, major, minor);
                    assert_eq!(e.get(&key), Some(&bits), "{major}:{minor} in {steps:?}");
                }
            }
        }
        e
    }

    impl std::fmt::Debug for Step {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Step::Grant(o, subject, rule) => write!(f, "grant {o:?} {subject} {rule}"),
                Step::Back(o, subject) => write!(f, "take back {o:?} {subject}"),
                Step::Bits(ma, mi, bits) => write!(f, "{ma}:{mi} = {bits}"),
            }
        }
    }

    /// Grants taken back leave the entries as they were: an already allowed
    /// device; one under a wildcard with a deny; one under a wildcard only
    /// (the new entry inherits, del removes it); two grants of one device
    /// (separate); the daemon's and the operator's grant of one rule in both
    /// orders (the daemon takes back only what it gave).
    #[test]
    fn grants_taken_back_are_the_identity() {
        use Owner::{Cli, Daemon, Operator};
        use Step::{Back, Bits, Grant};
        const TUN: &str = "c 10:200 rw";
        let (zero, a, b) = (Back(Cli, "zero"), Back(Cli, "a"), Back(Cli, "b"));
        let cases: [(&[&str], &[Step]); 4] = [
            (&["c 1:5 rwm"], &[Grant(Cli, "zero", "c 1:5 rwm"), zero]),
            (
                &["c *:* rwm", "c 1:5 ''"],
                &[Grant(Cli, "zero", "c 1:5 rwm"), zero],
            ),
            (
                &["c *:* rw"],
                &[Grant(Cli, "zero", "c 1:5 m"), Bits(1, 5, 7), zero],
            ),
            (
                &[],
                &[
                    Grant(Cli, "a", "c 1:5 rw"),
                    Grant(Cli, "b", "c 1:5 rw"),
                    a,
                    Bits(1, 5, 6),
                    b,
                ],
            ),
        ];
        for (attached, steps) in cases {
            let start = attach(attached);
            assert_eq!(replay(&start, steps), start, "{steps:?}");
        }
        // The daemon takes back only what it gave, whoever granted first.
        for (first, second) in [(Operator, Daemon), (Daemon, Operator)] {
            let steps = [
                Grant(first, TUN, TUN),
                Grant(second, TUN, TUN),
                Back(Daemon, TUN),
                Bits(10, 200, 6),
                Back(Operator, TUN),
            ];
            assert_eq!(replay(&attach(&[]), &steps), attach(&[]), "{steps:?}");
        }
        // A policy rule overlapping the preset leaves the preset's bits.
        let preset = crate::presets::Preset::Oci.rules();
        let AttachPlan::Fresh { wanted } = plan_attach(None, ID, &preset, &[]) else {
            panic!()
        };
        let steps = [
            Grant(Daemon, "c 1:3 rw", "c 1:3 rw"),
            Back(Daemon, "c 1:3 rw"),
        ];
        assert_eq!(replay(&wanted, &steps), wanted);
    }

    #[test]
    fn a_grant_a_revoke_emptied_does_not_keep_a_new_entry() {
        // The daemon's entry was revoked away; a later add of the device
        // creates the entry again, and its del removes it (no deny left).
        let mut e = attach(&[]);
        let start = e.clone();
        let mut l = Ledger::new(ID);
        grant(&mut e, &mut l, Owner::Daemon, "d", "b 1:5 rw");
        let plan =
            crate::plan::plan_revoke(&e, ID, &parse_rules(&["b 1:5 rw"]).unwrap(), false).unwrap();
        e = plan.result(&e);
        forget_revoked(&mut l, &plan);
        assert_eq!(e, start);
        grant(&mut e, &mut l, Owner::Cli, "a", "b 1:5 rw");
        take_back(&mut e, &mut l, Owner::Cli, "a");
        assert_eq!(e, start);
    }

    #[test]
    fn after_set_no_grant_owns_a_bit_and_nodes_and_dirs_stay() {
        let mut e = attach(&[]);
        let mut l = Ledger::new(ID);
        grant(&mut e, &mut l, Owner::Operator, "c 1:3 r", "c 1:3 r");
        grant(&mut e, &mut l, Owner::Cli, "zero", "c 1:5 rw");
        l.grants[1].dirs.push(PathBuf::from("/dev/z"));
        l.grants[1].subject = Subject::Device {
            device: "/dev/zero".into(),
            dest: "/dev/z/zero".into(),
        };
        let after = after_set(&l);
        assert_eq!(after.grants.len(), 1, "the operator's rule grant goes");
        assert!(after.grants[0].entries.is_empty());
        assert_eq!(after.grants[0].dirs, [PathBuf::from("/dev/z")]);
        // Its take-back changes no entry of the new set.
        let set: Entries = crate::plan::merge_rules(ID, &parse_rules(&["c 1:5 r"]).unwrap());
        let (plan, _) = plan_take_back(&set, &after, 0);
        assert!(plan.changes.is_empty());
    }

    #[test]
    fn directories_are_removed_by_the_last_grant_listing_them() {
        let g = |dirs: &[&str]| Grant {
            owner: Owner::Cli,
            subject: Subject::Rule {
                rule: dirs.join(","),
            },
            entries: Vec::new(),
            nodes: Vec::new(),
            dirs: dirs.iter().map(PathBuf::from).collect(),
            pending: false,
        };
        let mut l = Ledger::new(ID);
        l.grants.push(g(&["/dev/a", "/dev/a/b", "/dev/a/b/c"]));
        assert_eq!(
            shared_dirs(&l, [Path::new("/dev/a/b/z"), Path::new("/dev/a/b")]),
            [PathBuf::from("/dev/a"), PathBuf::from("/dev/a/b")]
        );
        let second = g(&["/dev/a", "/dev/a/b"]);
        l.grants.push(second.clone());
        let first = l.grants.remove(0);
        assert_eq!(dirs_to_remove(&first, &l), [PathBuf::from("/dev/a/b/c")]);
        l.grants.clear();
        assert_eq!(
            dirs_to_remove(&second, &l),
            [PathBuf::from("/dev/a/b"), PathBuf::from("/dev/a")]
        );
    }

    #[test]
    fn ledger_round_trips_and_empty_removes_the_file() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::new(Path::new("/x"), Some(&t.path().join("s")));
        let mut l = Ledger::new(ID);
        let mut e = attach(&[]);
        grant(&mut e, &mut l, Owner::Cli, "a", "c 1:5 rw");
        store.save(&l).unwrap();
        assert_eq!(store.load(ID).unwrap(), l);
        store.save(&Ledger::new(ID)).unwrap();
        assert!(store.load(ID).unwrap().grants.is_empty());
        // The file goes; the directory is shared by every container (it
        // goes with `remove`, under the root lock).
        assert!(!store.path(ID).exists());
        assert!(t.path().join("s").is_dir());
        assert_eq!(
            Store::new(Path::new("/sys/fs/bpf/t1"), None).dir(),
            Path::new("/run/ctdev/pinroots/sys/fs/bpf/t1")
        );
    }
}
