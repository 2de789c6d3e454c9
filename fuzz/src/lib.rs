//! Oracles shared by the fuzz targets.

use ctdev::import::{effective_rules, sequential_verdict as reference, DeviceRuleSpec};
use ctdev::rule::{DeviceType, Rule};
use ctdev_common::{
    evaluate, PolicyKey, ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE, DEV_BLOCK, DEV_CHAR,
};
use std::collections::{BTreeMap, BTreeSet};

/// More rules than this are only parsed, not emulated (the emulator is
/// quadratic; a runtime's list is a few dozen rules).
pub const MAX_EMULATED: usize = 48;

/// Checks that `effective_rules(specs)`, judged by the kernel program's own
/// lookup (`ctdev_common::evaluate`), gives the reference verdict for every
/// bit of every device on the grid of mentioned numbers (plus one unmentioned
/// major and minor), and that its entries are single-type and unique.
pub fn check_emulation(specs: &[DeviceRuleSpec]) {
    if specs.len() > MAX_EMULATED {
        return;
    }
    let rules: Vec<Rule> = effective_rules(specs);
    let mut map: BTreeMap<PolicyKey, u32> = BTreeMap::new();
    for r in &rules {
        assert_ne!(r.dev_type, DeviceType::All, "entries are single-type: {r}");
        for k in r.keys(1) {
            assert!(
                map.insert(k, r.access.bits()).is_none(),
                "duplicate entry {r}"
            );
        }
    }
    let mut majors: BTreeSet<u32> = specs.iter().filter_map(|s| s.major.exact()).collect();
    let mut minors: BTreeSet<u32> = specs.iter().filter_map(|s| s.minor.exact()).collect();
    for set in [&mut majors, &mut minors] {
        let unused = (0..).find(|n| !set.contains(n)).unwrap_or(0);
        set.insert(unused);
    }
    for t in [DEV_BLOCK, DEV_CHAR] {
        for &ma in &majors {
            for &mi in &minors {
                for bit in [ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE] {
                    let want = reference(specs, t, ma, mi, bit);
                    let got = evaluate(1, t, ma, mi, bit, |k| map.get(k).copied()).allowed;
                    assert_eq!(
                        got, want,
                        "type {t} {ma}:{mi} bit {bit}: specs {specs:?} gave entries {rules:?}"
                    );
                }
            }
        }
    }
}
