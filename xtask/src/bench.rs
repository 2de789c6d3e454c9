//! `cargo xtask bench`: ctdev's map against the linear programs real runc and
//! crun generate, and `ctdev add` against `lxc-device add`, measured side by
//! side in one run on this machine. Writes docs/BENCHMARKS.md, its SVG plots
//! under docs/bench/ and the raw samples (docs/bench/results.json); with
//! `--quick` (CI smoke: same code paths, tiny counts) everything goes to
//! target/bench-quick/ instead.
//!
//! One job per submodule: `probe` (the measuring process), `programs`
//! (allow-all, bpftool facts), `cgroups` (scratch cgroups), `oci` (runc/crun),
//! `lxc`, `cost` (check cost per access), `update` (policy write and `add`
//! latency), `scale` (1,000 containers), `report` (doc and plots).

pub mod cgroups;
pub mod churn;
pub mod cost;
pub mod hotplug;
pub mod lxc;
pub mod nri;
pub mod oci;
pub mod probe;
pub mod programs;
pub mod report;
pub mod scale;
pub mod stats;
pub mod update;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ctdev::cgroup::CgroupFs;
use ctdev::{Config, Ctdev};

use crate::step;
use cgroups::ScratchCgroup;
use programs::TempDir;

/// Iteration counts: the full run or the CI smoke.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    /// Rule-set sizes for the check-cost comparison.
    pub sizes: Vec<usize>,
    /// open()+close() per round.
    pub iters: u64,
    /// Rounds per scenario (the median of them is reported).
    pub rounds: usize,
    /// open()+close() per stats round, while kernel run-time statistics are on.
    pub stats_iters: u64,
    /// Interleaved rounds with kernel run-time statistics on.
    pub stats_rounds: usize,
    /// Whole-policy swaps timed (`Ctdev::set_rules`).
    pub swaps: usize,
    /// Verdict flips per writer for the policy-write latency.
    pub flips: usize,
    /// `ctdev add` and `lxc-device add` runs each.
    pub add_runs: usize,
    /// Containers for the scale test.
    pub containers: usize,
    /// Rules per container in the scale test.
    pub scale_rules: usize,
    /// CLI attaches timed in the scale test (on top of the library ones).
    pub cli_attaches: usize,
    /// Hotplug events through `ctdev daemon`.
    pub hotplug_events: usize,
    /// Containers created in the daemon churn scenario.
    pub churn_containers: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                quick,
                sizes: vec![1, 10, 200],
                iters: 2_000,
                rounds: 3,
                stats_iters: 1_000,
                stats_rounds: 2,
                swaps: 20,
                flips: 10,
                add_runs: 5,
                containers: 10,
                scale_rules: 20,
                cli_attaches: 3,
                hotplug_events: 20,
                churn_containers: 20,
            }
        } else {
            Plan {
                quick,
                sizes: vec![1, 3, 10, 100, 1_000, 10_000],
                iters: 100_000,
                rounds: 11,
                stats_iters: 100_000,
                stats_rounds: 5,
                swaps: 1_000,
                flips: 200,
                add_runs: 100,
                containers: 10_000,
                scale_rules: 20,
                cli_attaches: 20,
                hotplug_events: 1_000,
                churn_containers: 500,
            }
        }
    }
}

/// The device every access goes to, and its numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Device {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
}

impl Device {
    fn stat(path: &Path) -> Result<Device> {
        let md = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        if !md.file_type().is_char_device() {
            bail!("{} is not a char device", path.display());
        }
        let rdev = md.rdev();
        Ok(Device {
            path: path.to_path_buf(),
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        })
    }

    /// /dev/cpu/0/cpuid (c 203:0): a real char device whose major sorts after
    /// every default rule of the runtimes, so their programs test it last.
    /// Falls back to /dev/null where the cpuid driver is missing.
    fn pick() -> Result<Device> {
        let cpuid = Path::new("/dev/cpu/0/cpuid");
        if !cpuid.exists() {
            let _ = std::process::Command::new("modprobe").arg("cpuid").status();
        }
        Device::stat(cpuid).or_else(|_| Device::stat(Path::new("/dev/null")))
    }
}

/// Runs a measuring binary (`CTDEV_BIN` = the ctdev under test) that
/// prints its figures as one JSON object line; its stderr is passed on.
pub fn run_json_bin(mut cmd: std::process::Command, ctdev_bin: &Path) -> Result<serde_json::Value> {
    let what = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .env("CTDEV_BIN", ctdev_bin)
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no result"))?;
    Ok(serde_json::from_str(line)?)
}

/// The numbers of the JSON array `key` of `v` (empty when absent).
pub fn json_samples(v: &serde_json::Value, key: &str) -> Vec<f64> {
    v[key]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default()
}

/// What every scenario needs; everything it made is removed on drop.
pub struct Env {
    pub plan: Plan,
    pub ctdev_bin: PathBuf,
    pub device: Device,
    pub cgroups: CgroupFs,
    pub ct: Ctdev,
    pub pin_root: PathBuf,
    /// The bench's parent cgroup, as the hierarchy names it (`/ctdev-bench-PID`).
    pub parent_path: String,
    // Drop order: pins, then cgroups, then files.
    _pins: TempDir,
    pub parent: ScratchCgroup,
    pub tmp: TempDir,
}

impl Env {
    fn new(ctdev_bin: &Path, plan: Plan) -> Result<Env> {
        let pid = std::process::id();
        let cgroups = CgroupFs::discover().context("no cgroup2 mount")?;
        let tmp = TempDir::new(PathBuf::from(format!("/tmp/ctdev-bench-{pid}")))?;
        let parent_path = format!("/ctdev-bench-{pid}");
        let parent = ScratchCgroup::create(cgroups.mount().join(&parent_path[1..]))?;
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/ctdev-bench-{pid}"));
        let pins = TempDir {
            path: pin_root.clone(),
        };
        let ct = Ctdev::new(Config {
            pin_root: pin_root.clone(),
            cgroup_mount: Some(cgroups.mount().to_path_buf()),
            bpf_object: Some(crate::ebpf_object()),
            ..Config::default()
        })?;
        Ok(Env {
            device: Device::pick()?,
            plan,
            ctdev_bin: ctdev_bin.to_path_buf(),
            cgroups,
            ct,
            pin_root,
            parent_path,
            _pins: pins,
            parent,
            tmp,
        })
    }

    /// `ctdev` (the release CLI) with this bench's private pin root.
    pub fn ctdev_cli(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.ctdev_bin);
        c.env("CTDEV_PIN_ROOT", &self.pin_root)
            .env("CTDEV_CGROUP_ROOT", self.cgroups.mount());
        c
    }
}

/// Everything measured in one run.
#[derive(Debug, Default, serde::Serialize)]
pub struct Results {
    pub cost: Option<cost::CostResults>,
    pub update: Option<update::UpdateResults>,
    pub add: Option<update::AddResults>,
    pub scale: Option<scale::ScaleResults>,
    pub hotplug: Option<hotplug::HotplugResults>,
    pub churn: Option<churn::ChurnResults>,
    pub nri: Option<nri::NriResults>,
    /// Sections that failed, with why.
    pub errors: Vec<String>,
}

fn section<T>(name: &str, errors: &mut Vec<String>, f: impl FnOnce() -> Result<T>) -> Option<T> {
    step(&format!("bench: {name}"));
    let t = Instant::now();
    match f() {
        Ok(v) => {
            step(&format!(
                "bench: {name} done in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
            Some(v)
        }
        Err(e) => {
            let msg = format!("{name}: {e:#}");
            eprintln!("xtask: bench: FAILED {msg}");
            errors.push(msg);
            None
        }
    }
}

/// Builds the xtask optimised (the library calls and the probe loop are
/// measured, so they must not run unoptimised) and runs the bench in it.
pub fn run(ctdev: &Path, quick: bool, only: Option<&str>, repeat: u32) -> Result<()> {
    step("building the optimised xtask for the bench");
    let mut build = std::process::Command::new("cargo");
    crate::userspace_env(&mut build).args(["build", "--release", "-p", "xtask"]);
    crate::run_checked(&mut build)?;
    let mut hotplug = std::process::Command::new("cargo");
    crate::userspace_env(&mut hotplug).args([
        "build",
        "--release",
        "-p",
        "ctdev-tests",
        "--bin",
        "hotplug-latency",
        "--bin",
        "churn-bench",
        "--bin",
        "nri-bench",
    ]);
    crate::run_checked(&mut hotplug)?;
    let xtask = crate::root().join("target/release/xtask");
    let mut cmd = std::process::Command::new(&xtask);
    cmd.arg("bench-run").arg("--ctdev").arg(ctdev);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(only) = only {
        cmd.arg("--only").arg(only);
    }
    cmd.arg("--repeat").arg(repeat.to_string());
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", xtask.display()))?;
    if !status.success() {
        bail!("the bench failed ({status})");
    }
    Ok(())
}

/// Sections `--only` can name.
pub const SECTIONS: [&str; 7] = ["cost", "update", "add", "scale", "hotplug", "churn", "nri"];

/// The bench proper (in the optimised xtask).
pub fn run_here(ctdev: &Path, quick: bool, only: Option<&str>, repeat: u32) -> Result<()> {
    match only {
        None => {}
        Some("churn") => {
            let churn = Repeated {
                name: "churn",
                label: "churn",
                title: "daemon churn",
                run: churn::run,
                summary: churn::summary,
                all: Some(churn::table),
            };
            return run_repeated(ctdev, quick, repeat, churn);
        }
        Some("nri") => {
            let nri = Repeated {
                name: "nri",
                label: "NRI",
                title: "NRI plugin start cost",
                run: nri::run,
                summary: nri::summary,
                all: None,
            };
            return run_repeated(ctdev, quick, repeat, nri);
        }
        Some(s) if SECTIONS.contains(&s) => {}
        Some(other) => bail!("--only {other}: the sections are {}", SECTIONS.join(", ")),
    }
    let want = |s: &str| only.is_none_or(|o| o == s);
    let started = Instant::now();
    let plan = Plan::new(quick);
    // One section alone never overwrites the full report.
    let out_dir = match (only, quick) {
        (Some(s), _) => crate::root().join(format!("target/bench-only-{s}")),
        (None, true) => crate::root().join("target/bench-quick"),
        (None, false) => crate::root().join("docs"),
    };
    let machine = report::Machine::read();
    let mut results = Results::default();
    {
        let env = Env::new(ctdev, plan.clone())?;
        step(&format!(
            "bench: device {} (c {}:{}), cgroup {}, pins {}",
            env.device.path.display(),
            env.device.major,
            env.device.minor,
            env.parent.dir.display(),
            env.pin_root.display()
        ));
        let mut errors = Vec::new();
        if want("cost") {
            results.cost = section("check cost per access", &mut errors, || cost::run(&env));
        }
        if want("update") {
            results.update = section("policy write latency", &mut errors, || {
                update::policy_write(&env)
            });
        }
        if want("add") {
            results.add = section("ctdev add vs lxc-device add", &mut errors, || {
                update::add_vs_lxc(&env)
            });
        }
        if want("scale") {
            results.scale = section("scale", &mut errors, || scale::run(&env));
        }
        if want("hotplug") {
            results.hotplug = section("daemon hotplug latency", &mut errors, || hotplug::run(&env));
        }
        if want("churn") {
            results.churn = section("daemon churn", &mut errors, || churn::run(&env));
        }
        if let Some(h) = &results.hotplug {
            step(&hotplug::summary(h));
        }
        if let Some(c) = &results.churn {
            step(&churn::summary(c));
        }
        if want("nri") {
            results.nri = section("NRI plugin start cost", &mut errors, || nri::run(&env));
        }
        if let Some(n) = &results.nri {
            step(&nri::summary(n));
        }
        results.errors = errors;
        step("bench: cleaning up");
    }
    let wall = started.elapsed().as_secs_f64();
    let doc = report::write(&out_dir, &machine, &plan, &results, wall)?;
    step(&format!("bench: wrote {} in {wall:.0} s", doc.display()));
    if !results.errors.is_empty() {
        bail!(
            "{} bench section(s) failed: {}",
            results.errors.len(),
            results.errors.join("; ")
        );
    }
    Ok(())
}

/// A section `--only` runs alone, `repeat` times in a row (`nri`, `churn`).
struct Repeated<R> {
    /// Its name in paths: the figures go to target/bench-NAME/results.json
    /// (the doc is not rewritten).
    name: &'static str,
    /// Its name in messages.
    label: &'static str,
    /// The title of one run.
    title: &'static str,
    /// One run.
    run: fn(&Env) -> Result<R>,
    /// One run's summary, printed after it.
    summary: fn(&R) -> String,
    /// What is printed of all runs (when there are several to compare).
    all: Option<fn(&[R]) -> String>,
}

/// Runs `section` alone `repeat` times; one failed run fails the whole, after
/// the figures of the others are written.
fn run_repeated<R: serde::Serialize>(
    ctdev: &Path,
    quick: bool,
    repeat: u32,
    only: Repeated<R>,
) -> Result<()> {
    let env = Env::new(ctdev, Plan::new(quick))?;
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    for i in 0..repeat.max(1) {
        let title = format!("{}, run {}", only.title, i + 1);
        if let Some(r) = section(&title, &mut errors, || (only.run)(&env)) {
            step(&(only.summary)(&r));
            runs.push(r);
        }
    }
    if let (Some(all), false) = (only.all, runs.is_empty()) {
        step(&format!("bench: {}, all runs\n{}", only.label, all(&runs)));
    }
    let dir = crate::root().join(format!("target/bench-{}", only.name));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&runs)?)?;
    step(&format!(
        "bench: {} figures in {}",
        only.label,
        path.display()
    ));
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}
