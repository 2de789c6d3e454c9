//! Scale: N containers (cgroups) with 20 rules each, attached through the
//! library (`ctdev::Ctdev::attach`, one call per container, in ctdev's
//! default layout: the shared program, each container's table written to its
//! cgroup storage), plus a few through the CLI; kernel memory per container
//! from bpftool's bytes_memlock plus the cgroup storage the kernel allocates
//! per container (which bytes_memlock does not count); check cost with 1 vs
//! N attached.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ctdev::presets::Preset;
use ctdev::rule::{Access, DeviceType, Rule};
use ctdev::target::Target;
use serde::Serialize;

use super::cgroups::ScratchCgroup;
use super::programs;
use super::stats::Summary;
use super::{cost, probe, Env};
use crate::step;

#[derive(Debug, Clone, Serialize)]
pub struct ScaleResults {
    pub containers: usize,
    pub rules_per_container: usize,
    /// Total of the library attach calls, s.
    pub total_attach_s: f64,
    /// Per library attach call, ms.
    pub attach_ms: Summary,
    pub samples_attach_ms: Vec<f64>,
    /// Per CLI `ctdev attach` (process start included), ms.
    pub cli_attach_ms: Summary,
    /// Total of the library detach calls, s.
    pub total_detach_s: f64,
    pub prog_memlock_total: u64,
    pub map_memlock_total: u64,
    pub maps: Vec<(u64, u64)>,
    pub bytes_per_container: f64,
    /// Containers that are on the shared program (the rest have program
    /// instances of their own).
    pub shared_containers: usize,
    /// Cgroup storage per shared container (table buffer, its storage
    /// records, per-CPU counters), computed from the kernel's allocation
    /// sizes; included in `bytes_per_container`.
    pub storage_bytes_per_container: u64,
    pub policy_entries: usize,
    /// ns per open()+close() in the first container with 1 container attached.
    pub cost_at_1: Summary,
    /// The same with all N attached.
    pub cost_at_n: Summary,
    /// Wall time of `ctdev list --json` with all N attached, s.
    pub list_json_s: f64,
    /// Containers that listing showed.
    pub listed: usize,
    /// Library attaches per second.
    pub attach_rate: f64,
}

/// Overrides the plan's container count (for profiling a shorter run).
const CONTAINERS_ENV: &str = "CTDEV_BENCH_SCALE_CONTAINERS";

pub fn run(env: &Env) -> Result<ScaleResults> {
    let n = match std::env::var(CONTAINERS_ENV) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{CONTAINERS_ENV}={v:?}: expected a count"))?,
        Err(_) => env.plan.containers,
    };
    let k = env.plan.scale_rules;
    let rules: Vec<Rule> = cost::rules(&env.device, k)
        .into_iter()
        .map(|(ma, mi)| Rule::device(DeviceType::Char, ma, mi, Access::ALL))
        .collect();
    let top = env.parent.child("scale")?;
    let mut cgs: Vec<ScratchCgroup> = Vec::with_capacity(n);
    for i in 0..n {
        cgs.push(top.child(&format!("c{i}"))?);
    }
    let targets: Vec<Target> = cgs.iter().map(|c| Target::Cgroup(c.dir.clone())).collect();
    let mut attached = 0;
    let result = (|| {
        let mut ms = Vec::with_capacity(n);
        let mut prog_ids = BTreeSet::new();
        let mut cost_at_1 = Summary::default();
        for (i, t) in targets.iter().enumerate() {
            let t0 = Instant::now();
            let r = env
                .ct
                .attach(t, Preset::None, &rules)
                .with_context(|| format!("attach container {i}"))?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
            attached = i + 1;
            prog_ids.insert(r.program_id as u64);
            if i == 0 {
                let c = probe::cost(
                    &cgs[0].dir,
                    &env.device.path,
                    env.plan.iters,
                    env.plan.rounds,
                )?;
                cost_at_1 = Summary::of(&c.ns_per_op);
            }
        }
        let total_attach_s = ms.iter().sum::<f64>() / 1e3;
        step(&format!(
            "bench:   {n} containers attached in {total_attach_s:.2} s (library)"
        ));
        let c = probe::cost(
            &cgs[0].dir,
            &env.device.path,
            env.plan.iters,
            env.plan.rounds,
        )?;
        let cost_at_n = Summary::of(&c.ns_per_op);

        // Memory: the program instances (one per cgroup depth, shared by
        // every container at that depth), and the maps they share.
        let progs: Vec<_> = programs::all_progs()?
            .into_iter()
            .filter(|p| prog_ids.contains(&p.id))
            .collect();
        if progs.len() != prog_ids.len() {
            bail!(
                "bpftool shows {} of the {} ctdev program instances",
                progs.len(),
                prog_ids.len()
            );
        }
        let prog_memlock_total: u64 = progs.iter().map(|p| p.bytes_memlock).sum();
        let map_ids: BTreeSet<u64> = progs.iter().flat_map(|p| p.map_ids.clone()).collect();
        let all_maps = programs::all_map_memlock()?;
        let mut maps = Vec::new();
        for id in &map_ids {
            maps.push((*id, all_maps.get(id).copied().unwrap_or(0)));
        }
        let map_memlock_total: u64 = maps.iter().map(|m| m.1).sum();
        let shared_containers = ctdev::kernel::shared::attached_ids(env.ct.pins())?.len();
        let storage_bytes_per_container = storage_bytes()?;
        let policy_entries =
            ctdev::kernel::policy_map::PolicyMap::open(&env.ct.pins().policy_map())?
                .entries()?
                .len();

        // `ctdev list --json` of all of them (process start included).
        let t0 = Instant::now();
        let out = env
            .ctdev_cli()
            .args(["list", "--json"])
            .output()
            .context("cannot run ctdev list --json")?;
        let list_json_s = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("ctdev list --json failed with {}", out.status);
        }
        let listed = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["containers"].as_array().map(Vec::len))
            .unwrap_or(0);
        step(&format!(
            "bench:   ctdev list --json of {listed} containers: {list_json_s:.2} s"
        ));

        // A few CLI attaches, for the process-per-container figure.
        let mut cli = Vec::new();
        for i in 0..env.plan.cli_attaches {
            let cg = top.child(&format!("cli{i}"))?;
            let mut cmd = env.ctdev_cli();
            cmd.arg("attach").arg(&cg.dir).args(["--preset", "none"]);
            for r in &rules {
                cmd.arg("--rule").arg(r.to_string());
            }
            let t0 = Instant::now();
            let st = cmd
                .stdout(Stdio::null())
                .status()
                .context("cannot run ctdev attach")?;
            cli.push(t0.elapsed().as_secs_f64() * 1e3);
            if !st.success() {
                bail!("ctdev attach (CLI) failed with {st}");
            }
            env.ct.detach(&Target::Cgroup(cg.dir.clone()))?;
        }

        let t0 = Instant::now();
        for t in &targets {
            env.ct.detach(t)?;
        }
        attached = 0;
        let total_detach_s = t0.elapsed().as_secs_f64();
        let r = ScaleResults {
            containers: n,
            rules_per_container: k,
            total_attach_s,
            attach_ms: Summary::of(&ms),
            samples_attach_ms: ms,
            cli_attach_ms: Summary::of(&cli),
            total_detach_s,
            prog_memlock_total,
            map_memlock_total,
            maps,
            bytes_per_container: (prog_memlock_total
                + map_memlock_total
                + shared_containers as u64 * storage_bytes_per_container)
                as f64
                / n as f64,
            shared_containers,
            storage_bytes_per_container,
            policy_entries,
            cost_at_1,
            cost_at_n,
            list_json_s,
            listed,
            attach_rate: n as f64 / total_attach_s,
        };
        step(&format!(
            "bench:   {} of {n} on the shared program; {:.0} bytes/container; cost {:.1} ns/op at 1, {:.1} at {n}; detach all {:.2} s",
            r.shared_containers, r.bytes_per_container, r.cost_at_1.median, r.cost_at_n.median, r.total_detach_s
        ));
        Ok(r)
    })();
    // On error, whatever is still attached goes (the pin root's removal
    // would also do it).
    for t in targets.iter().take(attached) {
        let _ = env.ct.detach(t);
    }
    result
}

/// Kernel memory of one container's cgroup storage on the shared program,
/// as `kernel/bpf/local_storage.c` allocates it (bytes_memlock of a cgroup
/// storage map counts only the map itself): the table buffer (an rcu head
/// and the value, from a kmalloc size class), one `struct bpf_cgroup_storage`
/// record (kmalloc-128) per storage map, and the counters once per possible
/// CPU.
fn storage_bytes() -> Result<u64> {
    // The kmalloc size classes: powers of two, and 96 and 192.
    let kmalloc = |n: u64| match n {
        0..=64 => n.next_power_of_two().max(8),
        65..=96 => 96,
        97..=128 => 128,
        129..=192 => 192,
        _ => n.next_power_of_two(),
    };
    let round8 = |n: usize| (n as u64).div_ceil(8) * 8;
    let table = kmalloc(16 + round8(std::mem::size_of::<ctdev_common::SharedTable>()));
    let counters = round8(std::mem::size_of::<ctdev_common::ContainerCounters>());
    let cpus = possible_cpus()?;
    Ok(table + 2 * 128 + cpus * counters)
}

/// The number of possible CPUs (per-CPU memory is allocated for each).
fn possible_cpus() -> Result<u64> {
    let path = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut n = 0;
    for part in text.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u64, u64) = (
            a.parse().with_context(|| format!("{path}: {text}"))?,
            b.parse().with_context(|| format!("{path}: {text}"))?,
        );
        n += b.saturating_sub(a) + 1;
    }
    Ok(n)
}
