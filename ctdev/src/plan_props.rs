//! Property tests of the never-widen invariants: thousands of random
//! policies and random sequences of attach / allow / revoke / add / del /
//! daemon take-back / detach against the pure planning code, judged with
//! the kernel's decision function over a grid of devices × every access.
//!
//! After every step: revoke, del and take-back never widened anything;
//! allow and add never narrowed anything; add followed at once by its del
//! is the identity; a refused attach changed nothing. A seeded generator
//! (xorshift) keeps runs reproducible; `CTDEV_PROPTEST_SEQUENCES` makes a
//! longer run.

use ctdev_common::{DEV_BLOCK, DEV_CHAR, WILDCARD};

use crate::grants::{self, Grant, Ledger, Owner, Subject};
use crate::plan::{
    attach_entries, decide, plan_allow, plan_attach, plan_revoke, widened, AttachPlan, Entries,
};
use crate::rule::{Access, DevNumber, DeviceType, Rule};

const ID: u64 = 42;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const MAJORS: [u32; 3] = [1, 7, 10];
const MINORS: [u32; 3] = [3, 5, 200];

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

fn number(rng: &mut Rng, xs: &[u32]) -> DevNumber {
    if rng.below(4) == 0 {
        DevNumber::Any
    } else {
        DevNumber::Exact(rng.pick(xs))
    }
}

fn access(rng: &mut Rng) -> Access {
    Access::from_bits(rng.below(8) as u32)
}

fn rule(rng: &mut Rng) -> Rule {
    Rule {
        dev_type: rng.pick(&[DeviceType::Block, DeviceType::Char, DeviceType::All]),
        major: number(rng, &MAJORS),
        minor: number(rng, &MINORS),
        access: access(rng),
    }
}

fn device_rule(rng: &mut Rng) -> Rule {
    let mut a = access(rng);
    if a.is_empty() {
        a = Access::ALL;
    }
    Rule::device(
        rng.pick(&[DeviceType::Block, DeviceType::Char]),
        rng.pick(&MAJORS),
        rng.pick(&MINORS),
        a,
    )
}

fn rules(rng: &mut Rng, max: u64) -> Vec<Rule> {
    (0..rng.below(max + 1)).map(|_| rule(rng)).collect()
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

struct Model {
    entries: Option<Entries>,
    ledger: Ledger,
}

fn grant_of(owner: Owner, subject: Subject, entries: Vec<grants::EntryGrant>) -> Grant {
    Grant {
        owner,
        subject,
        entries,
        nodes: Vec::new(),
        pending: false,
    }
}

/// Runs one random sequence; returns the number of steps checked.
fn sequence(rng: &mut Rng, steps: usize) -> usize {
    let mut m = Model {
        entries: None,
        ledger: Ledger::new(ID),
    };
    let g = grid();
    let mut checked = 0;
    for _ in 0..steps {
        let op = rng.below(8);
        let Some(entries) = m.entries.clone() else {
            // Not attached: attach with a random preset and rules.
            let preset = if rng.below(2) == 0 {
                crate::presets::Preset::Oci.rules()
            } else {
                Vec::new()
            };
            let rs = rules(rng, 5);
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
                let rs = rules(rng, 3);
                match plan_attach(Some(&entries), ID, &preset, &rs) {
                    AttachPlan::Fresh { .. } => panic!("fresh plan on an attached container"),
                    AttachPlan::Satisfied | AttachPlan::Differs { .. } => {}
                }
            }
            1 => {
                // Operator allow: recorded, never narrows.
                let rs = rules(rng, 2);
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
                        grant_of(
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
                let rs = rules(rng, 2);
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
                // never narrows, and its del right after is the identity.
                let owner = if op == 3 { Owner::Cli } else { Owner::Daemon };
                let r = device_rule(rng);
                let subject = Subject::Device {
                    device: format!("/dev/d{}", rng.below(3)),
                    dest: format!("/dev/x{}", rng.below(2)),
                };
                let (plan, eg) = grants::plan_grant(&entries, ID, &[r]);
                let after = plan.result(&entries);
                assert_eq!(narrowed(&entries, &after), None, "add {r} on {entries:?}");
                let mut ledger = m.ledger.clone();
                let fresh = ledger.find(owner, &subject).is_none();
                grants::record(&mut ledger, grant_of(owner, subject.clone(), eg));
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
                }
                m.entries = Some(after);
                m.ledger = ledger;
            }
            5 | 6 => {
                // del / daemon take-back of a random recorded grant.
                if m.ledger.grants.is_empty() {
                    continue;
                }
                let i = rng.below(m.ledger.grants.len() as u64) as usize;
                let (plan, after_ledger) = grants::plan_take_back(&entries, &m.ledger, i);
                let after = plan.result(&entries);
                assert_eq!(
                    widened(&entries, &after, ID, &g),
                    None,
                    "take-back of {:?} on {entries:?} gave {after:?}",
                    m.ledger.grants[i]
                );
                m.entries = Some(after);
                m.ledger = after_ledger;
            }
            _ => {
                // Detach: everything goes, records too.
                m.entries = None;
                m.ledger = Ledger::new(ID);
            }
        }
        checked += 1;
    }
    // Taking back every grant, newest first, never widens and ends with no record.
    if let Some(mut entries) = m.entries {
        while !m.ledger.grants.is_empty() {
            let i = m.ledger.grants.len() - 1;
            let (plan, l) = grants::plan_take_back(&entries, &m.ledger, i);
            let after = plan.result(&entries);
            assert_eq!(widened(&entries, &after, ID, &g), None);
            entries = after;
            m.ledger = l;
            checked += 1;
        }
    }
    checked
}

#[test]
fn random_sequences_never_widen_and_add_del_is_identity() {
    let n: u64 = std::env::var("CTDEV_PROPTEST_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut steps = 0;
    for _ in 0..n {
        steps += sequence(&mut rng, 12);
    }
    println!("checked {n} random sequences ({steps} steps)");
    assert!(steps > n as usize);
}

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
                grant_of(Owner::Cli, Subject::Rule { rule: "x".into() }, eg),
            );
            let (back, _) = grants::plan_take_back(&after, &l, 0);
            assert_eq!(back.result(&after), e, "{r} on {e:?}");
            count += 1;
        }
    }
    println!("checked {count} add/del pairs exhaustively");
}
