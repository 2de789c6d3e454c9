//! Check cost per access: ns per open()+close() of the device from inside a
//! cgroup with no program, the allow-all floor, ctdev with N rules, and the
//! linear programs runc and crun generate for the same N rules; plus the
//! kernel's own per-program run time (bpf_stats_enabled).

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
    /// Sum of the programs' kernel run time per access.
    pub kernel_ns_per_run: Option<f64>,
    pub programs: Vec<Program>,
}

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

fn measure(env: &Env, scenario: &str, rules: Option<usize>, dir: &Path) -> Result<Point> {
    let p = &env.plan;
    let out = probe::cost(dir, &env.device.path, p.iters, p.rounds)?;
    if out.errno != 0 {
        bail!(
            "{scenario}: open({}) failed with errno {} inside {}: the rules do not allow it",
            env.device.path.display(),
            out.errno,
            dir.display()
        );
    }
    // Kernel run time: a separate run, because the statistics themselves
    // cost time per program run.
    let (before, after) = {
        let _stats = StatsEnabled::on()?;
        let before = programs::effective(dir)?;
        probe::cost(dir, &env.device.path, p.stats_iters, 1)?;
        (before, programs::effective(dir)?)
    };
    let mut progs = Vec::new();
    let mut total = None;
    for a in &after {
        let b = before.iter().find(|b| b.id == a.id);
        let runs = a.run_cnt - b.map_or(0, |b| b.run_cnt);
        let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
        let per = (runs > 0).then(|| ns as f64 / runs as f64);
        if let Some(x) = per {
            *total.get_or_insert(0.0) += x;
        }
        let match_at_insn = if scenario == "runc" || scenario == "crun" {
            programs::first_compare_with(a.id, env.device.major)?
        } else {
            None
        };
        progs.push(Program {
            id: a.id,
            name: a.name.clone(),
            insns: a.insns,
            ns_per_run: per,
            match_at_insn,
        });
    }
    let s = Summary::of(&out.ns_per_op);
    step(&format!(
        "bench:   {scenario:9} {:>6} rules: {:7.1} ns/op (min {:.1}, max {:.1}); kernel {} ns/run; {} program(s), {} insns",
        rules.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
        s.median,
        s.min,
        s.max,
        total.map(|t: f64| format!("{t:.1}")).unwrap_or_else(|| "-".into()),
        progs.len(),
        progs.iter().map(|p| p.insns).sum::<u64>()
    ));
    Ok(Point {
        scenario: scenario.into(),
        rules,
        rounds: out.ns_per_op,
        ns_per_op: s,
        kernel_ns_per_run: total,
        programs: progs,
    })
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

    let none = env.parent.child("none")?;
    res.points.push(measure(env, "none", None, &none.dir)?);
    drop(none);

    let aa = env.parent.child("allow-all")?;
    let prog = AllowAll::attach(&aa.dir)?;
    res.points.push(measure(env, "allow-all", None, &aa.dir)?);
    drop(prog);
    drop(aa);

    for &n in &env.plan.sizes {
        let cg = env.parent.child(&format!("ctdev-{n}"))?;
        let rs: Vec<Rule> = rules(&env.device, n)
            .into_iter()
            .map(|(ma, mi)| Rule::device(DeviceType::Char, ma, mi, Access::ALL))
            .collect();
        let target = Target::Cgroup(cg.dir.clone());
        env.ct
            .attach(&target, Preset::None, &rs)
            .with_context(|| format!("ctdev attach with {n} rules"))?;
        let point = measure(env, "ctdev", Some(n), &cg.dir);
        if point.is_ok() && n == env.plan.sizes[0] {
            denial(env, "ctdev", &cg.dir, &mut res.denials)?;
        }
        env.ct.detach(&target)?;
        res.points.push(point?);
        drop(cg);
    }

    let oci_dir = TempDir::new(env.tmp.path.join("oci"))?;
    let oci = Oci::prepare(&oci_dir.path)?;
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
            let container = oci.start(rt, &id, &cg_path, &devices)?;
            let dir = env.cgroups.mount().join(&cg_path[1..]);
            let point = measure(env, rt.name(), Some(n), &dir);
            if point.is_ok() && n == env.plan.sizes[0] {
                denial(env, rt.name(), &dir, &mut res.denials)?;
            }
            drop(container);
            res.points.push(point?);
        }
    }
    Ok(res)
}
