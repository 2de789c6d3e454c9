//! Check cost per access: ns per open()+close() of the device from inside a
//! cgroup with no program, the allow-all floor, ctdev with N rules (its
//! default layout, `ctdev`, and the per-container layout, `per-container`,
//! where they differ), and the linear programs runc and crun generate for
//! the same N rules; plus the kernel's own per-program run time
//! (bpf_stats_enabled).

use std::path::Path;

use anyhow::{bail, Context, Result};
use ctdev::presets::Preset;
use ctdev::rule::{Access, DeviceType, Rule};
use ctdev::target::Target;
use serde::Serialize;

use super::oci::{self, Oci, Runtime};
use super::programs::{self, AllowAll, StatsEnabled, TempDir};
use super::stats::Summary;
use super::{probe, Env};
use crate::step;

/// Scenario names of the [`STEPS`] objects while they run.
const STEP_PREFIX: &str = "step:";

/// Major of the N-1 rules that do not match (sorts before the device's).
pub const FILLER_MAJOR: u32 = 200;

/// A device program that judged the accesses of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Program {
    pub id: u64,
    pub name: String,
    pub insns: u64,
    /// Kernel run time per run (run_time_ns / run_cnt) during the stats probe.
    pub ns_per_run: Option<f64>,
    /// For runc/crun: index of the first instruction of the matching rule's block.
    pub match_at_insn: Option<usize>,
}

/// One scenario of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// `none`, `allow-all`, `ctdev`, `runc`, `crun`.
    pub scenario: String,
    /// Rules in the policy / config (None for none and allow-all).
    pub rules: Option<usize>,
    /// ns per open()+close(), per round.
    pub rounds: Vec<f64>,
    pub ns_per_op: Summary,
    /// Sum of the programs' kernel run time per access (median of the stats rounds).
    pub kernel_ns_per_run: Option<f64>,
    /// The same per stats round: median, min, max.
    pub kernel: Option<Summary>,
    pub programs: Vec<Program>,
}

/// One bench-only object of [`STEPS`], measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepPoint {
    /// The step's name (`CTDEV_EBPF_STEP` is its number).
    pub step: String,
    /// What the object does before it returns 1.
    pub what: String,
    pub point: Point,
}

/// A bench-only object: ctdev-ebpf built with `CTDEV_EBPF_STEP=number`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Its name in the report.
    pub name: &'static str,
    /// The constant of ctdev-ebpf's `steps` module that is `number`.
    pub ebpf_const: &'static str,
    pub number: u32,
    /// Attached on the per-container layout (else the shared program).
    pub per_container: bool,
    /// What runs before it returns 1.
    pub what: &'static str,
}

/// The bench-only objects. The first five cut the shared program's
/// allowed path after each step; the shipped program (the `ctdev` point
/// at 1 rule) is the last step. The last two do nothing but count a hit,
/// per CPU, as every counting program must: what a counter alone costs,
/// against runc's whole program.
pub const STEPS: [Step; 7] = [
    Step {
        name: "return",
        ebpf_const: "RETURN",
        number: 1,
        per_container: false,
        what: "reads the access, returns 1 (ctdev's loader, no map read)",
    },
    Step {
        name: "storage",
        ebpf_const: "STORAGE",
        number: 2,
        per_container: false,
        what: "+ `bpf_get_local_storage` of the table (the helper call only)",
    },
    Step {
        name: "state",
        ebpf_const: "STATE",
        number: 3,
        per_container: false,
        what: "+ the table's state word",
    },
    Step {
        name: "probe",
        ebpf_const: "PROBE",
        number: 4,
        per_container: false,
        what: "+ the exact entry's bucket probe (allows, counts nothing)",
    },
    Step {
        name: "counter-ptr",
        ebpf_const: "COUNTER_PTR",
        number: 5,
        per_container: false,
        what: "+ `bpf_get_local_storage` of the per-CPU counters (no increment)",
    },
    Step {
        name: "counter-only",
        ebpf_const: "COUNTER_ONLY",
        number: 6,
        per_container: false,
        what: "only a per-CPU hit counter: the helper and the increment, no table",
    },
    Step {
        name: "counter-only, per-container",
        ebpf_const: "PC_COUNTER_ONLY",
        number: 7,
        per_container: true,
        what: "only a per-CPU hit counter in a per-container program: an inlined per-CPU array \
               lookup and the increment",
    },
];

/// A denial sanity check: a device outside the rules must get EPERM.
#[derive(Debug, Clone, Serialize)]
pub struct DenialCheck {
    pub scenario: String,
    pub path: String,
    pub errno: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostResults {
    pub device: super::Device,
    pub points: Vec<Point>,
    pub denials: Vec<DenialCheck>,
    /// Scenarios that could not run (crun without a C compiler, ...).
    pub skipped: Vec<String>,
    /// The fast path step by step: objects that return 1 after each step
    /// ([`STEPS`]), 1 rule, measured in the same interleaved rounds.
    pub steps: Vec<StepPoint>,
    pub runc_version: String,
    pub crun_version: String,
    pub probe_command: String,
}

/// The N rules: N-1 non-matching `c 200:i`, then the device's. Minors equal
/// to the device's major are skipped, so that the only compare with that
/// number in a runtime's program is the device block's major check.
pub fn rules(dev: &super::Device, n: usize) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = (0..u32::MAX)
        .filter(|&i| i != dev.major)
        .take(n.saturating_sub(1))
        .map(|i| (FILLER_MAJOR, i))
        .collect();
    v.push((dev.major, dev.minor));
    v
}

/// One scenario set up and kept alive while the rounds run interleaved.
struct Live {
    scenario: String,
    rules: Option<usize>,
    dir: std::path::PathBuf,
    rounds: Vec<f64>,
    /// Kernel ns per run of each stats round (sum over the cgroup's programs).
    kernel_rounds: Vec<f64>,
    programs: Vec<Program>,
}

/// One interleaved round of `live`: `iters` open()+close() in each scenario.
fn round(env: &Env, live: &mut Live, iters: u64) -> Result<f64> {
    let out = probe::cost(&live.dir, &env.device.path, iters, 1)?;
    if out.errno != 0 {
        bail!(
            "{}: open({}) failed with errno {} inside {}: the rules do not allow it",
            live.scenario,
            env.device.path.display(),
            out.errno,
            live.dir.display()
        );
    }
    Ok(out.ns_per_op.first().copied().unwrap_or(f64::NAN))
}

/// One stats round: the kernel's run time per program run during `iters`
/// accesses (bpf_stats must be on).
fn kernel_round(env: &Env, live: &mut Live, iters: u64) -> Result<()> {
    let before = programs::effective(&live.dir)?;
    probe::cost(&live.dir, &env.device.path, iters, 1)?;
    let after = programs::effective(&live.dir)?;
    let mut total = None;
    let mut progs = Vec::new();
    for a in &after {
        let b = before.iter().find(|b| b.id == a.id);
        let runs = a.run_cnt - b.map_or(0, |b| b.run_cnt);
        let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
        let per = (runs > 0).then(|| ns as f64 / runs as f64);
        if let Some(x) = per {
            *total.get_or_insert(0.0) += x;
        }
        progs.push(Program {
            id: a.id,
            name: a.name.clone(),
            insns: a.insns,
            ns_per_run: per,
            match_at_insn: None,
        });
    }
    if let Some(t) = total {
        live.kernel_rounds.push(t);
    }
    if live.programs.is_empty() {
        if live.scenario == "runc" || live.scenario == "crun" {
            for p in progs.iter_mut() {
                p.match_at_insn = programs::first_compare_with(p.id, env.device.major)?;
            }
        }
        live.programs = progs;
    }
    Ok(())
}

fn finish(live: Live) -> Point {
    let s = Summary::of(&live.rounds);
    let kernel = (!live.kernel_rounds.is_empty()).then(|| Summary::of(&live.kernel_rounds));
    step(&format!(
        "bench:   {:9} {:>6} rules: {:7.1} ns/op (min {:.1}, max {:.1}); kernel {} ns/run; {} program(s), {} insns",
        live.scenario,
        live.rules.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
        s.median,
        s.min,
        s.max,
        kernel
            .as_ref()
            .map(|k| format!("{:.1} ({:.1}..{:.1})", k.median, k.min, k.max))
            .unwrap_or_else(|| "-".into()),
        live.programs.len(),
        live.programs.iter().map(|p| p.insns).sum::<u64>()
    ));
    Point {
        scenario: live.scenario,
        rules: live.rules,
        rounds: live.rounds,
        ns_per_op: s,
        kernel_ns_per_run: kernel.as_ref().map(|k| k.median),
        kernel,
        programs: live.programs,
    }
}

/// EPERM check with a device that no scenario allows.
fn denial(env: &Env, scenario: &str, dir: &Path, out: &mut Vec<DenialCheck>) -> Result<()> {
    let path = Path::new("/dev/loop-control");
    if !path.exists() {
        return Ok(());
    }
    let r = probe::cost(dir, path, 1, 1)?;
    out.push(DenialCheck {
        scenario: scenario.into(),
        path: path.display().to_string(),
        errno: r.errno,
    });
    if r.errno != libc::EPERM {
        bail!(
            "{scenario}: {} was not denied (errno {}): the policy is not enforced",
            path.display(),
            r.errno
        );
    }
    let _ = env;
    Ok(())
}

pub fn run(env: &Env) -> Result<CostResults> {
    let mut res = CostResults {
        device: env.device.clone(),
        points: Vec::new(),
        denials: Vec::new(),
        skipped: Vec::new(),
        steps: Vec::new(),
        runc_version: oci::version("runc"),
        crun_version: oci::version("crun"),
        probe_command: format!(
            "{:?}",
            probe::cost_command(
                Path::new("CGROUP_DIR"),
                &env.device.path,
                env.plan.iters,
                env.plan.rounds
            )?
        ),
    };

    // Every scenario is set up first and kept alive, so that the rounds
    // can run interleaved (A B C … A B C …): a noisy stretch of time then
    // hits every scenario alike instead of one.
    let mut live: Vec<Live> = Vec::new();
    let mut keep_cgroups = Vec::new();
    let mut keep_progs = Vec::new();
    let mut keep_ctdev = Vec::new();
    let mut add = |scenario: &str, rules: Option<usize>, dir: std::path::PathBuf| {
        live.push(Live {
            scenario: scenario.into(),
            rules,
            dir,
            rounds: Vec::new(),
            kernel_rounds: Vec::new(),
            programs: Vec::new(),
        })
    };
    let none = env.parent.child("none")?;
    add("none", None, none.dir.clone());
    keep_cgroups.push(none);
    let aa = env.parent.child("allow-all")?;
    keep_progs.push(AllowAll::attach(&aa.dir)?);
    add("allow-all", None, aa.dir.clone());
    keep_cgroups.push(aa);

    // ctdev with N rules, and with runc's default list plus the device
    // (what runc's own smallest program holds).
    let mut ctdev_sets: Vec<(String, usize, Vec<Rule>, Preset)> = Vec::new();
    for &n in &env.plan.sizes {
        let rs: Vec<Rule> = rules(&env.device, n)
            .into_iter()
            .map(|(ma, mi)| Rule::device(DeviceType::Char, ma, mi, Access::ALL))
            .collect();
        ctdev_sets.push(("ctdev".into(), n, rs, Preset::None));
    }
    let dev_rule = Rule::device(
        DeviceType::Char,
        env.device.major,
        env.device.minor,
        Access::ALL,
    );
    ctdev_sets.push((
        "ctdev+oci".into(),
        Preset::Oci.rules().len() + 1,
        vec![dev_rule],
        Preset::Oci,
    ));
    // ctdev as a user gets it (the default layout: the shared program for
    // policies that fit a container table, the per-container program for
    // larger ones), and the per-container layout (`CTDEV_SHARED_PROGRAM=0`)
    // at the sizes where the default differs from it.
    let per_container = ctdev::Ctdev::new(ctdev::Config {
        layout: ctdev::ops::Layout::PerContainer,
        ..env.ct.config().clone()
    })?;
    let fits = |preset: Preset, rs: &[Rule]| {
        ctdev::plan::attach_entries(0, &preset.rules(), rs).len() <= ctdev_common::TABLE_CAP
    };
    let mut sets: Vec<(String, usize, Vec<Rule>, Preset, &ctdev::Ctdev)> = Vec::new();
    for (scenario, n, rs, preset) in ctdev_sets {
        if fits(preset, &rs) {
            let name = scenario.replacen("ctdev", "per-container", 1);
            sets.push((name, n, rs.clone(), preset, &per_container));
        }
        sets.push((scenario, n, rs, preset, &env.ct));
    }
    let mut denied = std::collections::BTreeSet::new();
    for (i, (scenario, n, rs, preset, ct)) in sets.into_iter().enumerate() {
        let cg = env.parent.child(&format!("ctdev-{i}-{n}"))?;
        let target = Target::Cgroup(cg.dir.clone());
        ct.attach(&target, preset, &rs)
            .with_context(|| format!("{scenario} attach with {n} rules"))?;
        let layout = scenario.split('+').next().unwrap_or_default().to_string();
        if denied.insert(layout.clone()) {
            denial(env, &layout, &cg.dir, &mut res.denials)?;
        }
        add(&scenario, Some(n), cg.dir.clone());
        keep_ctdev.push(target);
        keep_cgroups.push(cg);
    }

    // The fast path step by step, each object on a pin root of its own.
    let mut step_cts = Vec::new();
    for (i, each) in STEPS.iter().enumerate() {
        let Step {
            name,
            ebpf_const,
            number,
            per_container,
            ..
        } = *each;
        let obj = crate::build_ebpf_step(&format!("step-{number}"), number).with_context(|| {
            format!("build the bench-only object of step {name} (steps::{ebpf_const})")
        })?;
        let pins = TempDir {
            path: env.pin_root.with_file_name(format!(
                "{}-step-{number}",
                env.pin_root
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
            )),
        };
        let ct = ctdev::Ctdev::new(ctdev::Config {
            pin_root: pins.path.clone(),
            bpf_object: Some(obj),
            layout: if per_container {
                ctdev::ops::Layout::PerContainer
            } else {
                ctdev::ops::Layout::Shared
            },
            ..env.ct.config().clone()
        })?;
        let cg = env.parent.child(&format!("step-{i}"))?;
        let target = Target::Cgroup(cg.dir.clone());
        let rs: Vec<Rule> = rules(&env.device, 1)
            .into_iter()
            .map(|(ma, mi)| Rule::device(DeviceType::Char, ma, mi, Access::ALL))
            .collect();
        ct.attach(&target, Preset::None, &rs)
            .with_context(|| format!("attach the bench-only object of step {name}"))?;
        add(&format!("{STEP_PREFIX}{name}"), Some(1), cg.dir.clone());
        // Detached before its pins and cgroup go (reverse drop order).
        step_cts.push((cg, pins, ct, target));
    }

    let oci_dir = TempDir::new(env.tmp.path.join("oci"))?;
    let oci = Oci::prepare(&oci_dir.path)?;
    let mut containers = Vec::new();
    for rt in [Runtime::Runc, Runtime::Crun] {
        if rt == Runtime::Crun {
            if let Some(why) = &oci.shim_error {
                res.skipped.push(format!("crun: {why}"));
                continue;
            }
        }
        for &n in &env.plan.sizes {
            let id = format!("ctdev-bench-{}-{n}", rt.name());
            let cg_path = format!("{}/{}-{n}", env.parent_path, rt.name());
            let mut devices: Vec<_> = rules(&env.device, n)
                .into_iter()
                .map(|(ma, mi)| oci::char_rule(ma, mi))
                .collect();
            // crun tests the rules last to first: list the device's rule
            // first so that its block is again the last one reached (the
            // "match at" column shows where it landed).
            if rt == Runtime::Crun {
                devices.rotate_right(1);
            }
            containers.push(oci.start(rt, &id, &cg_path, &devices)?);
            let dir = env.cgroups.mount().join(&cg_path[1..]);
            if n == env.plan.sizes[0] {
                denial(env, rt.name(), &dir, &mut res.denials)?;
            }
            add(rt.name(), Some(n), dir);
        }
    }

    let p = &env.plan;
    for r in 0..p.rounds {
        step(&format!("bench:   round {}/{}", r + 1, p.rounds));
        for l in live.iter_mut() {
            let ns = round(env, l, p.iters)?;
            l.rounds.push(ns);
        }
    }
    {
        let _stats = StatsEnabled::on()?;
        for _ in 0..p.stats_rounds {
            for l in live.iter_mut() {
                kernel_round(env, l, p.stats_iters)?;
            }
        }
    }
    for point in live.into_iter().map(finish) {
        match point.scenario.strip_prefix(STEP_PREFIX) {
            Some(name) => res.steps.push(StepPoint {
                step: name.into(),
                what: STEPS
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.what.to_string())
                    .unwrap_or_default(),
                point,
            }),
            None => res.points.push(point),
        }
    }
    drop(containers);
    for (_, _, ct, target) in &step_cts {
        ct.detach(target)?;
    }
    drop(step_cts);
    for t in &keep_ctdev {
        env.ct.detach(t)?;
    }
    drop(keep_progs);
    drop(keep_cgroups);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::STEPS;

    /// The bench's step numbers are the ones ctdev-ebpf stops at, and the
    /// shipped build (no `CTDEV_EBPF_STEP`) is none of them.
    #[test]
    fn steps_match_the_ebpf_source() {
        let src = std::fs::read_to_string(crate::root().join("ctdev-ebpf/src/main.rs"))
            .expect("read ctdev-ebpf/src/main.rs");
        for step in STEPS {
            let decl = format!("pub const {}: u32 = {};", step.ebpf_const, step.number);
            assert!(
                src.contains(&decl),
                "ctdev-ebpf has no `{decl}` ({})",
                step.name
            );
            assert_ne!(step.number, 0, "{}: 0 is the shipped program", step.name);
        }
        let mut numbers: Vec<u32> = STEPS.iter().map(|s| s.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), STEPS.len(), "two steps share a number");
    }
}
