//! Property model of the never-widen invariants: random sequences of
//! attach / allow / revoke / set / add / del / daemon take-back / detach
//! against the pure planning code and the grant records, judged with the
//! kernel's decision function over a grid of devices × every access, with
//! a model of the container's `/dev` (directories, nodes, the container's
//! own files) for what `add` makes and `del` removes.
//!
//! After every step: revoke, del and take-back never widened anything;
//! allow and add never narrowed anything; add followed at once by its del
//! is the identity (entries and files); a take-back of a grant made before
//! a `set` changes no entry; a directory or file that was there before any
//! add is never removed; taking every grant back restores the files.
//!
//! Driven by a [`Source`] of choices: a seeded generator in the unit tests
//! (`CTDEV_PROPTEST_SEQUENCES` makes a longer run) and the fuzzer's bytes
//! in the `grant_sequences` fuzz target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[cfg(test)]
use ctdev_common::WILDCARD;
use ctdev_common::{DEV_BLOCK, DEV_CHAR};

use crate::grants::{self, Grant, Ledger, NodeChange, NodeGrant, Owner, SavedNode, Subject};
use crate::plan::{
    attach_entries, decide, merge_rules, plan_allow, plan_attach, plan_revoke, widened, AttachPlan,
    Entries,
};
use crate::rule::{Access, DevNumber, DeviceType, Rule};

const ID: u64 = 42;

/// Where the model's choices come from.
pub trait Source {
    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64;
}

/// A seeded xorshift generator.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

impl Source for Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The fuzzer's bytes, one per choice (0 once they run out).
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// Choices read from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }

    /// Whether every byte was used.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
}

impl Source for Bytes<'_> {
    fn below(&mut self, n: u64) -> u64 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        u64::from(b) % n
    }
}

fn pick<T: Copy>(src: &mut impl Source, xs: &[T]) -> T {
    xs[src.below(xs.len() as u64) as usize]
}

const MAJORS: [u32; 3] = [1, 7, 10];
const MINORS: [u32; 3] = [3, 5, 200];
/// Where added nodes land: nested paths share parents.
const DESTS: [&str; 5] = [
    "/dev/x0",
    "/dev/a/x1",
    "/dev/a/b/x2",
    "/dev/a/b/x3",
    "/dev/c/x4",
];

fn grid() -> Vec<(u32, u32, u32)> {
    let mut g = Vec::new();
    for t in [DEV_BLOCK, DEV_CHAR] {
        for ma in [1, 7, 10, 11] {
            for mi in [3, 5, 200, 201] {
                g.push((t, ma, mi));
            }
        }
    }
    g
}

fn number(src: &mut impl Source, xs: &[u32]) -> DevNumber {
    if src.below(4) == 0 {
        DevNumber::Any
    } else {
        DevNumber::Exact(pick(src, xs))
    }
}

fn access(src: &mut impl Source) -> Access {
    Access::from_bits(src.below(8) as u32)
}

fn rule(src: &mut impl Source) -> Rule {
    Rule {
        dev_type: pick(src, &[DeviceType::Block, DeviceType::Char, DeviceType::All]),
        major: number(src, &MAJORS),
        minor: number(src, &MINORS),
        access: access(src),
    }
}

fn device_rule(src: &mut impl Source) -> Rule {
    let mut a = access(src);
    if a.is_empty() {
        a = Access::ALL;
    }
    Rule::device(
        pick(src, &[DeviceType::Block, DeviceType::Char]),
        pick(src, &MAJORS),
        pick(src, &MINORS),
        a,
    )
}

fn rules(src: &mut impl Source, max: u64) -> Vec<Rule> {
    (0..src.below(max + 1)).map(|_| rule(src)).collect()
}

/// `after` allows at least what `before` did (never narrowed).
fn narrowed(before: &Entries, after: &Entries) -> Option<(u32, u32, u32, u32)> {
    for (t, ma, mi) in grid() {
        let (b, a) = (decide(before, ID, t, ma, mi), decide(after, ID, t, ma, mi));
        if b & !a != 0 {
            return Some((t, ma, mi, b & !a));
        }
    }
    None
}

/// What is at a path of the model container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    Dir,
    /// A device node (of the device rule's numbers).
    Node(SavedNode),
    /// The container's own file.
    Own,
}

/// The container's files: path → what is there.
type Files = BTreeMap<PathBuf, File>;

fn saved(r: &Rule) -> SavedNode {
    SavedNode {
        dev_type: r.dev_type.kernel_types()[0],
        major: r.major.to_kernel(),
        minor: r.minor.to_kernel(),
        mode: 0o666,
        uid: 0,
        gid: 0,
    }
}

/// The container's files at the start: `/dev`, and at random a
/// pre-existing `/dev/a` (with the container's own file), and a node of
/// its own at `/dev/x0` (which an add replaces and its del puts back).
fn initial_files(src: &mut impl Source) -> Files {
    let mut f = Files::new();
    f.insert("/dev".into(), File::Dir);
    if src.below(2) == 0 {
        f.insert("/dev/a".into(), File::Dir);
        if src.below(2) == 0 {
            f.insert("/dev/a/own".into(), File::Own);
        }
    }
    if src.below(3) == 0 {
        f.insert(
            "/dev/x0".into(),
            File::Node(SavedNode {
                dev_type: DEV_CHAR,
                major: 5,
                minor: 0,
                mode: 0o666,
                uid: 0,
                gid: 0,
            }),
        );
    }
    f
}

/// Ancestors of `dest` below `/`, parents first.
fn ancestors(dest: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = dest
        .ancestors()
        .skip(1)
        .filter(|a| a.parent().is_some())
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

/// `add` in the model container (what `passthrough::add_as` does): the
/// missing directories are made, the node made or replaced; the grant's
/// node and directory records as `add_as` writes them. `None`: refused
/// (something that is not a node is at DEST).
fn model_add(files: &mut Files, ledger: &Ledger, dest: &Path, node: SavedNode) -> Option<Grant> {
    let change = match (grants::node_base(ledger, dest), files.get(dest)) {
        (_, Some(File::Dir) | Some(File::Own)) => return None,
        (Some(base), _) => Some(base),
        (None, None) => Some(NodeChange::Created),
        (None, Some(File::Node(found))) if *found == node => None,
        (None, Some(File::Node(found))) => Some(NodeChange::Replaced { old: *found }),
    };
    let mut made = Vec::new();
    for a in ancestors(dest) {
        match files.get(&a) {
            None => {
                files.insert(a.clone(), File::Dir);
                made.push(a);
            }
            Some(File::Dir) => {}
            Some(_) => panic!("model: {} is not a directory", a.display()),
        }
    }
    files.insert(dest.to_path_buf(), File::Node(node));
    let mut dirs = grants::shared_dirs(ledger, [dest]);
    dirs.extend(
        made.into_iter()
            .filter(|d| !dirs.contains(d))
            .collect::<Vec<_>>(),
    );
    Some(Grant {
        owner: Owner::Cli,
        subject: Subject::Rule {
            rule: String::new(),
        },
        entries: Vec::new(),
        nodes: change
            .map(|change| NodeGrant {
                dest: dest.to_path_buf(),
                node,
                change,
                seq: grants::next_node_seq(ledger),
            })
            .into_iter()
            .collect(),
        dirs,
        pending: false,
    })
}

/// `del` in the model container (what `passthrough::del_as` does) of
/// `grant`, with `after` the ledger without it.
fn model_del(files: &mut Files, grant: &Grant, after: &Ledger) {
    let current = |p: &Path| match files.get(p) {
        Some(File::Node(n)) => Some(*n),
        _ => None,
    };
    for n in grants::release_nodes(grant, after, current) {
        if files.get(&n.dest) == Some(&File::Node(n.node)) {
            match n.change {
                NodeChange::Created => {
                    files.remove(&n.dest);
                }
                NodeChange::Replaced { old } => {
                    files.insert(n.dest.clone(), File::Node(old));
                }
            }
        }
    }
    for d in grants::dirs_to_remove(grant, after) {
        let empty = !files.keys().any(|k| k.parent() == Some(d.as_path()));
        if empty && files.get(&d) == Some(&File::Dir) {
            files.remove(&d);
        }
    }
}

struct Model {
    entries: Option<Entries>,
    ledger: Ledger,
    files: Files,
    /// The files present before any add (never removed).
    first: Files,
}

fn check_first_kept(m: &Model, what: &str) {
    for (p, f) in &m.first {
        let now = m.files.get(p);
        let kept = match f {
            // The container's own node may be replaced by an add (and put back by its del).
            File::Node(_) => matches!(now, Some(File::Node(_))),
            _ => now == Some(f),
        };
        assert!(
            kept,
            "{what} removed {} ({f:?}); files {:?}",
            p.display(),
            m.files
        );
    }
}

/// Runs one sequence of up to `steps` choices from `src`; panics on a
/// broken invariant. Returns the number of steps checked.
pub fn sequence(src: &mut impl Source, steps: usize) -> usize {
    let first = initial_files(src);
    let mut m = Model {
        entries: None,
        ledger: Ledger::new(ID),
        files: first.clone(),
        first,
    };
    let g = grid();
    let mut checked = 0;
    for _ in 0..steps {
        let op = src.below(10);
        let Some(entries) = m.entries.clone() else {
            // Not attached: attach with a random preset and rules.
            let preset = if src.below(2) == 0 {
                crate::presets::Preset::Oci.rules()
            } else {
                Vec::new()
            };
            let rs = rules(src, 5);
            let wanted = attach_entries(ID, &preset, &rs);
            // A rule with '' stays a deny entry.
            for r in rs.iter().filter(|r| r.access.is_empty()) {
                if !rs.iter().any(|o| {
                    !o.access.is_empty() && o.keys(ID).any(|k| r.keys(ID).any(|rk| rk == k))
                }) {
                    for k in r.keys(ID) {
                        assert_eq!(wanted.get(&k), Some(&0), "{rs:?}");
                    }
                }
            }
            m.entries = Some(wanted);
            m.ledger = Ledger::new(ID);
            continue;
        };
        match op {
            0 => {
                // Re-attach: satisfied (no change) or refused (no change).
                let preset = crate::presets::Preset::Oci.rules();
                let rs = rules(src, 3);
                match plan_attach(Some(&entries), ID, &preset, &rs) {
                    AttachPlan::Fresh { .. } => panic!("fresh plan on an attached container"),
                    AttachPlan::Satisfied | AttachPlan::Differs { .. } => {}
                }
            }
            1 => {
                // Operator allow: recorded, never narrows.
                let rs = rules(src, 2);
                let plan = plan_allow(&entries, ID, &rs);
                let after = plan.result(&entries);
                assert_eq!(
                    narrowed(&entries, &after),
                    None,
                    "allow {rs:?} on {entries:?}"
                );
                let mut now = entries.clone();
                for r in &rs {
                    let (p, eg) = grants::plan_grant(&now, ID, std::slice::from_ref(r));
                    now = p.result(&now);
                    grants::record(
                        &mut m.ledger,
                        Grant::of_entries(
                            Owner::Operator,
                            Subject::Rule {
                                rule: r.to_string(),
                            },
                            eg,
                        ),
                    );
                }
                assert_eq!(narrowed(&entries, &now), None);
                m.entries = Some(now);
            }
            2 => {
                // Revoke: never widens; bits an entry lacks change nothing.
                let rs = rules(src, 2);
                if let Ok(plan) = plan_revoke(&entries, ID, &rs, true) {
                    let after = plan.result(&entries);
                    assert_eq!(
                        widened(&entries, &after, ID, &g),
                        None,
                        "revoke {rs:?} on {entries:?} gave {after:?}"
                    );
                    for r in rs.iter().take(usize::from(rs.len() == 1)) {
                        for k in r.keys(ID) {
                            if let Some(v) = entries.get(&k) {
                                if !r.access.is_empty() && v & r.access.bits() == 0 {
                                    assert_eq!(after.get(&k), Some(v), "{r} on {entries:?}");
                                }
                            }
                        }
                    }
                    grants::forget_revoked(&mut m.ledger, &plan);
                    m.entries = Some(after);
                }
            }
            3 | 4 => {
                // add (CLI or daemon) of a device at one of a few paths:
                // never narrows, and its del right after is the identity
                // (entries and files).
                let owner = if op == 3 { Owner::Cli } else { Owner::Daemon };
                let r = device_rule(src);
                let dest = PathBuf::from(pick(src, &DESTS));
                // The host path names the device (one path, one node).
                let subject = Subject::Device {
                    device: format!(
                        "/dev/{}",
                        crate::plan::key_text(&r.keys(ID).next().expect("a device rule has a key"))
                            .replace([' ', ':'], "-")
                    ),
                    dest: dest.display().to_string(),
                };
                let mut files = m.files.clone();
                let Some(made) = model_add(&mut files, &m.ledger, &dest, saved(&r)) else {
                    continue;
                };
                let (plan, eg) = grants::plan_grant(&entries, ID, &[r]);
                let after = plan.result(&entries);
                assert_eq!(narrowed(&entries, &after), None, "add {r} on {entries:?}");
                let mut ledger = m.ledger.clone();
                let fresh = ledger.find(owner, &subject).is_none();
                let mut grant = Grant::of_entries(owner, subject.clone(), eg);
                grant.nodes = made.nodes;
                grant.dirs = made.dirs;
                grants::record(&mut ledger, grant);
                if fresh {
                    let i = ledger.find(owner, &subject).expect("recorded");
                    let (back, after_ledger) = grants::plan_take_back(&after, &ledger, i);
                    assert_eq!(
                        back.result(&after),
                        entries,
                        "add {r} then del is not the identity on {entries:?} (ledger {:?})",
                        m.ledger
                    );
                    assert_eq!(after_ledger.grants.len(), m.ledger.grants.len());
                    let mut undone = files.clone();
                    model_del(&mut undone, &ledger.grants[i], &after_ledger);
                    assert_eq!(
                        undone,
                        m.files,
                        "add at {} then del did not restore the files (ledger {:?})",
                        dest.display(),
                        m.ledger
                    );
                }
                m.entries = Some(after);
                m.ledger = ledger;
                m.files = files;
            }
            5 | 6 => {
                // del / daemon take-back of a random recorded grant.
                if m.ledger.grants.is_empty() {
                    continue;
                }
                let i = src.below(m.ledger.grants.len() as u64) as usize;
                let (plan, after_ledger) = grants::plan_take_back(&entries, &m.ledger, i);
                let after = plan.result(&entries);
                assert_eq!(
                    widened(&entries, &after, ID, &g),
                    None,
                    "take-back of {:?} on {entries:?} gave {after:?}",
                    m.ledger.grants[i]
                );
                if m.ledger.grants[i].entries.is_empty() {
                    // Made before a set (or an interface): no entry is its.
                    assert_eq!(after, entries, "{:?}", m.ledger.grants[i]);
                }
                model_del(&mut m.files, &m.ledger.grants[i], &after_ledger);
                check_first_kept(&m, "del");
                m.entries = Some(after);
                m.ledger = after_ledger;
            }
            7 | 8 => {
                // set: the whole rule set replaced; no grant owns a bit of it.
                let rs = rules(src, 4);
                let after = merge_rules(ID, &rs);
                m.ledger = grants::after_set(&m.ledger);
                assert!(m.ledger.grants.iter().all(|g| g.entries.is_empty()));
                m.entries = Some(after);
            }
            _ => {
                // Detach: every rule and record goes; nodes stay (as a
                // detach leaves them), so the files are the new first state.
                m.entries = None;
                m.ledger = Ledger::new(ID);
                m.first = m.files.clone();
            }
        }
        checked += 1;
    }
    // Taking back every grant, in a random order, never widens, ends with
    // no record, and restores the files.
    if let Some(mut entries) = m.entries {
        while !m.ledger.grants.is_empty() {
            let i = src.below(m.ledger.grants.len() as u64) as usize;
            let (plan, l) = grants::plan_take_back(&entries, &m.ledger, i);
            let after = plan.result(&entries);
            assert_eq!(widened(&entries, &after, ID, &g), None);
            model_del(&mut m.files, &m.ledger.grants[i], &l);
            entries = after;
            m.ledger = l;
            checked += 1;
        }
        assert_eq!(
            m.files, m.first,
            "taking every grant back did not restore the files"
        );
    }
    checked
}

#[cfg(test)]
#[test]
fn random_sequences_never_widen_and_add_del_is_identity() {
    let n: u64 = std::env::var("CTDEV_PROPTEST_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    // CTDEV_PROPTEST_STEPS: longer sequences (the fuzz target runs 64).
    let len: usize = std::env::var("CTDEV_PROPTEST_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut steps = 0;
    for _ in 0..n {
        steps += sequence(&mut rng, len);
    }
    println!("checked {n} random sequences ({steps} steps)");
    assert!(steps > n as usize);
}

#[cfg(test)]
#[test]
fn add_then_del_of_every_small_policy_is_identity() {
    // Exhaustive over entries on one device's lookup chain.
    let keys = [(1, 5), (1, WILDCARD), (WILDCARD, 5), (WILDCARD, WILDCARD)];
    let mut count = 0;
    for mask in 0..(5u32.pow(4)) {
        let mut e = Entries::new();
        let mut m = mask;
        for (ma, mi) in keys {
            let v = m % 5;
            m /= 5;
            if v > 0 {
                e.insert(
                    ctdev_common::PolicyKey::new(ID, DEV_CHAR, ma, mi),
                    [0, 2, 4, 6, 7][v as usize],
                );
            }
        }
        for req in 1..8u32 {
            let r = Rule::device(DeviceType::Char, 1, 5, Access::from_bits(req));
            let (plan, eg) = grants::plan_grant(&e, ID, &[r]);
            let after = plan.result(&e);
            assert_eq!(narrowed(&e, &after), None);
            let mut l = Ledger::new(ID);
            grants::record(
                &mut l,
                Grant::of_entries(Owner::Cli, Subject::Rule { rule: "x".into() }, eg),
            );
            let (back, _) = grants::plan_take_back(&after, &l, 0);
            assert_eq!(back.result(&after), e, "{r} on {e:?}");
            count += 1;
        }
    }
    println!("checked {count} add/del pairs exhaustively");
}

#[cfg(test)]
#[test]
fn the_fuzz_seeds_replay() {
    // The committed seeds of the `grant_sequences` fuzz target, run as the
    // target runs them (so the target's entry point is exercised here too).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/grant_sequences");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed directory") {
        let data = std::fs::read(entry.expect("seed").path()).expect("read seed");
        let mut src = Bytes::new(&data);
        sequence(&mut src, (data.len() / 4).min(64));
        n += 1;
    }
    assert!(n >= 10, "only {n} seeds in {}", dir.display());
}

#[cfg(test)]
#[test]
fn a_stack_of_nodes_at_one_path_unwinds_in_every_order() {
    // The container's own node at /dev/x0, then three adds at that path,
    // the second one making a node equal to the container's own (the case
    // that once handed the wrong record over), taken back in every order:
    // after each del the node there is the latest remaining grant's (or the
    // container's own), and at the end the files are as at the start.
    let node = |major, minor| SavedNode {
        dev_type: DEV_CHAR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    let own = node(5, 0);
    let dest = Path::new("/dev/x0");
    let adds = [node(1, 3), own, node(1, 5)];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut files = Files::new();
        files.insert("/dev".into(), File::Dir);
        files.insert(dest.into(), File::Node(own));
        let first = files.clone();
        let mut ledger = Ledger::new(ID);
        for (k, n) in adds.iter().enumerate() {
            let mut grant = model_add(&mut files, &ledger, dest, *n).expect("a node path");
            grant.subject = Subject::Rule {
                rule: k.to_string(),
            };
            grants::record(&mut ledger, grant);
        }
        let mut left: Vec<usize> = vec![0, 1, 2];
        for k in order {
            let i = ledger
                .grants
                .iter()
                .position(|g| {
                    g.subject
                        == Subject::Rule {
                            rule: k.to_string(),
                        }
                })
                .expect("recorded");
            let (_, after) = grants::plan_take_back(&Entries::new(), &ledger, i);
            model_del(&mut files, &ledger.grants[i], &after);
            ledger = after;
            left.retain(|x| *x != k);
            let want = left.iter().max().map_or(own, |x| adds[*x]);
            assert_eq!(
                files.get(dest),
                Some(&File::Node(want)),
                "order {order:?}, after del of add {k}"
            );
        }
        assert_eq!(files, first, "order {order:?}");
    }
}
