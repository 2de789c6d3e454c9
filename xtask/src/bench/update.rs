//! Update latency: (a) a policy write, from the call returning to a prober
//! inside the cgroup seeing the new verdict; (b) `ctdev add` end to end
//! against `lxc-device add` on the same running LXC container.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ctdev::kernel::policy_map::PolicyMap;
use ctdev::presets::Preset;
use ctdev::rule::{Access, DeviceType, Rule};
use ctdev::target::Target;
use ctdev_common::{PolicyKey, ACCESS_ALL, DEV_CHAR};
use serde::Serialize;

use super::lxc::Lxc;
use super::probe::{clock_ns, Watcher};
use super::stats::Summary;
use super::Env;
use crate::step;

/// Non-matching rules in the container during the policy-write test.
pub const UPDATE_FILLERS: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub struct Writer {
    pub name: String,
    /// Duration of the write call, µs.
    pub call_us: Summary,
    /// From the call returning to the prober's first new verdict, µs
    /// (negative: the prober saw it before the call returned).
    pub after_return_us: Summary,
    /// From the call starting to the prober's first new verdict, µs.
    pub after_start_us: Summary,
    pub samples_after_start_us: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpdateResults {
    pub fillers: usize,
    pub flips: usize,
    pub writers: Vec<Writer>,
}

fn flips(
    env: &Env,
    name: &str,
    watcher: &mut Watcher,
    mut write: impl FnMut(bool) -> Result<()>,
) -> Result<Writer> {
    let mut call = Vec::new();
    let mut after_return = Vec::new();
    let mut after_start = Vec::new();
    let mut state = watcher.initial;
    for _ in 0..env.plan.flips {
        std::thread::sleep(Duration::from_millis(1));
        let want = !state;
        let t0 = clock_ns(libc::CLOCK_MONOTONIC);
        write(want)?;
        let t1 = clock_ns(libc::CLOCK_MONOTONIC);
        let (seen, t2) = watcher.next_change()?;
        if seen != want {
            bail!("{name}: the prober saw {seen}, expected {want}");
        }
        state = want;
        call.push((t1 - t0) as f64 / 1e3);
        after_return.push((t2 as f64 - t1 as f64) / 1e3);
        after_start.push((t2 as f64 - t0 as f64) / 1e3);
    }
    let w = Writer {
        name: name.into(),
        call_us: Summary::of(&call),
        after_return_us: Summary::of(&after_return),
        after_start_us: Summary::of(&after_start),
        samples_after_start_us: after_start,
    };
    step(&format!(
        "bench:   {name}: call {:.1} µs, visible {:.1} µs after return, {:.1} µs after start (medians; max {:.1})",
        w.call_us.median, w.after_return_us.median, w.after_start_us.median, w.after_start_us.max
    ));
    Ok(w)
}

pub fn policy_write(env: &Env) -> Result<UpdateResults> {
    let dev = &env.device;
    let cg = env.parent.child("update")?;
    let target = Target::Cgroup(cg.dir.clone());
    let fillers: Vec<Rule> = (0..UPDATE_FILLERS as u32)
        .map(|i| Rule::device(DeviceType::Char, super::cost::FILLER_MAJOR, i, Access::ALL))
        .collect();
    let report = env.ct.attach(&target, Preset::None, &fillers)?;
    let result = (|| {
        let mut watcher = Watcher::start(&cg.dir, &dev.path)?;
        if watcher.initial {
            bail!("{} is allowed before any write", dev.path.display());
        }
        let mut writers = Vec::new();
        let key = PolicyKey::new(report.policy_id, DEV_CHAR, dev.major, dev.minor);
        let mut map = PolicyMap::open(&env.ct.pins().policy_map())?;
        writers.push(flips(
            env,
            "PolicyMap::apply (1 entry)",
            &mut watcher,
            |allow| {
                map.apply(&[(key, allow.then_some(ACCESS_ALL))])?;
                Ok(())
            },
        )?);
        let rule = [Rule::device(
            DeviceType::Char,
            dev.major,
            dev.minor,
            Access::ALL,
        )];
        writers.push(flips(
            env,
            "Ctdev::allow / Ctdev::revoke",
            &mut watcher,
            |allow| {
                if allow {
                    env.ct.allow(&target, &rule)?;
                } else {
                    env.ct.revoke(&target, &rule, false)?;
                }
                Ok(())
            },
        )?);
        let with_device: Vec<Rule> = fillers.iter().chain(&rule).copied().collect();
        writers.push(flips(
            env,
            "Ctdev::set_rules (whole set swapped, one publish)",
            &mut watcher,
            |allow| {
                env.ct
                    .set_rules(&target, if allow { &with_device } else { &fillers })?;
                Ok(())
            },
        )?);
        Ok(UpdateResults {
            fillers: UPDATE_FILLERS,
            flips: env.plan.flips,
            writers,
        })
    })();
    env.ct.detach(&target)?;
    result
}

#[derive(Debug, Clone, Serialize)]
pub struct AddResults {
    pub device: String,
    pub runs: usize,
    pub lxc_version: String,
    /// `ctdev add lxc:NAME DEVICE`, ms, process start included.
    pub ctdev_add_ms: Summary,
    /// `lxc-device -n NAME add DEVICE`, ms.
    pub lxc_device_add_ms: Summary,
    /// `ctdev --version`: the process-start share of `ctdev add`.
    pub ctdev_version_ms: Summary,
    pub samples_ctdev_ms: Vec<f64>,
    pub samples_lxc_ms: Vec<f64>,
    /// How ctdev was attached to the LXC container.
    pub attach: String,
}

fn timed(cmd: &mut Command, what: &str) -> Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

fn quiet(cmd: &mut Command) {
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn add_vs_lxc(env: &Env) -> Result<AddResults> {
    let device = ["/dev/loop-control", "/dev/net/tun", "/dev/fuse"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("no /dev/loop-control, /dev/net/tun or /dev/fuse to pass through")?;
    let name = format!("ctdev-bench-{}", std::process::id());
    let lxc = Lxc::start(&env.tmp.path, &name)?;
    let pid = lxc.init_pid()?;
    let inside = PathBuf::from(format!("/proc/{pid}/root")).join(device.strip_prefix("/")?);
    let target = format!("lxc:{name}");
    let lxcpath = lxc.lxcpath.display().to_string();
    let attach = format!("ctdev attach {target} --takeover --lxcpath {lxcpath}");
    timed(
        env.ctdev_cli()
            .args(["attach", &target, "--takeover", "--lxcpath", &lxcpath]),
        &attach,
    )?;
    let result = (|| {
        let mut c_ms = Vec::new();
        let mut l_ms = Vec::new();
        let mut v_ms = Vec::new();
        for _ in 0..env.plan.add_runs {
            let _ = std::fs::remove_file(&inside);
            c_ms.push(timed(
                env.ctdev_cli().arg("add").arg(&target).arg(device),
                "ctdev add",
            )?);
            if !inside.exists() {
                bail!("ctdev add did not create {}", inside.display());
            }
            timed(
                env.ctdev_cli().arg("del").arg(&target).arg(device),
                "ctdev del",
            )?;
            let _ = std::fs::remove_file(&inside);
            l_ms.push(timed(&mut lxc.device("add", device), "lxc-device add")?);
            if !inside.exists() {
                bail!("lxc-device add did not create {}", inside.display());
            }
            quiet(&mut lxc.device("del", device));
            let _ = std::fs::remove_file(&inside);
            v_ms.push(timed(env.ctdev_cli().arg("--version"), "ctdev --version")?);
        }
        let r = AddResults {
            device: device.display().to_string(),
            runs: env.plan.add_runs,
            lxc_version: super::oci::version("lxc-start"),
            ctdev_add_ms: Summary::of(&c_ms),
            lxc_device_add_ms: Summary::of(&l_ms),
            ctdev_version_ms: Summary::of(&v_ms),
            samples_ctdev_ms: c_ms,
            samples_lxc_ms: l_ms,
            attach: attach.clone(),
        };
        step(&format!(
            "bench:   ctdev add {:.2} ms, lxc-device add {:.2} ms (medians), ctdev --version {:.2} ms",
            r.ctdev_add_ms.median, r.lxc_device_add_ms.median, r.ctdev_version_ms.median
        ));
        Ok(r)
    })();
    quiet(env.ctdev_cli().args(["detach", &target]));
    drop(lxc);
    result
}
