//! Differential test of `ctdev attach --takeover` against the real runc
//! 1.1 and crun 1.8 (see `ctdev_tests::difftest`): the five lists of issue
//! #10 and a seeded set of random lists, each in a real container probed
//! cell by cell before the takeover, after it, and after `ctdev detach`.
//! `cargo xtask difftest --cases N --seed S` runs the same test longer
//! (`CTDEV_DIFFTEST_CASES`, `CTDEV_DIFFTEST_SEED`).

use ctdev_tests::difftest;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

#[test]
fn takeover_never_allows_more_than_runc_or_crun() {
    let cases = env_or("CTDEV_DIFFTEST_CASES", 16) as usize;
    let seed = env_or("CTDEV_DIFFTEST_SEED", 0x2026_1130);
    let t = difftest::run(cases, seed, true);
    assert_eq!(t.lists, cases + 10);
    assert!(
        t.lists - t.refused - t.start_failed >= t.lists / 2,
        "most lists must run to compare anything: {t:?}"
    );
}
