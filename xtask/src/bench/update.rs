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
use super::stats::{Summary, ROUNDS_PER_BLOCK};
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
    /// `ctdev add` + `ctdev del` (one round trip), ms.
    pub ctdev_add_del_ms: Summary,
    /// `lxc-device add` + `lxc-device del`, ms.
    pub lxc_add_del_ms: Summary,
    /// `ctdev --version`: the process-start share of `ctdev add`.
    pub ctdev_version_ms: Summary,
    /// `/bin/true`, interleaved with `ctdev --version`.
    pub true_ms: Summary,
    /// The same four figures with the spread of the medians of blocks of
    /// `stats::ROUNDS_PER_BLOCK` rounds: what the targets are judged on.
    pub ctdev_add_del_blocks: Summary,
    pub lxc_add_del_blocks: Summary,
    pub ctdev_version_blocks: Summary,
    pub true_blocks: Summary,
    /// `ctdev::passthrough::add` called in this process (no process start), µs.
    pub inproc_add_us: Summary,
    /// `ctdev::passthrough::del` called in this process, µs.
    pub inproc_del_us: Summary,
    /// bpf(2) calls per command (`strace -f -c -e trace=bpf`), by command.
    pub bpf_calls: Vec<(String, u64)>,
    /// Size of the ctdev binary, bytes.
    pub binary_bytes: u64,
    pub samples_ctdev_ms: Vec<f64>,
    pub samples_lxc_ms: Vec<f64>,
    /// How ctdev was attached to the LXC container.
    pub attach: String,
    /// `ctdev del` alone, ms.
    pub ctdev_del_ms: Summary,
    /// A second ctdev binary (`CTDEV_BENCH_BASE`, e.g. main's release
    /// build) run in the same rounds, on the same container: A/B.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseResults>,
}

/// The same commands by the `CTDEV_BENCH_BASE` binary, interleaved with
/// this build's in every round.
#[derive(Debug, Clone, Serialize)]
pub struct BaseResults {
    /// The binary.
    pub binary: String,
    pub add_ms: Summary,
    pub del_ms: Summary,
    pub add_del_ms: Summary,
    pub version_ms: Summary,
    /// bpf(2) calls and all system calls per command (strace -f -c).
    pub calls: Vec<(String, u64, u64)>,
}

/// bpf(2) calls `cmd` makes, from `strace -f -c -e trace=bpf`.
/// `program` with the environment `template` sets.
fn same_env(program: &std::ffi::OsStr, template: &Command) -> Command {
    let mut c = Command::new(program);
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

fn bpf_calls(cmd: &Command, what: &str) -> Result<u64> {
    Ok(syscall_counts(cmd, what)?.0)
}

/// bpf(2) calls and all system calls of one run of `cmd` (`strace -f -c`).
fn syscall_counts(cmd: &Command, what: &str) -> Result<(u64, u64)> {
    let log = std::env::temp_dir().join(format!("ctdev-bench-strace-{}", std::process::id()));
    let mut st = Command::new("strace");
    st.args(["-f", "-c", "-o"]).arg(&log);
    st.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => st.env(k, v),
            None => st.env_remove(k),
        };
    }
    timed(&mut st, what)?;
    let text = std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    let _ = std::fs::remove_file(&log);
    // "% time  seconds  usecs/call  calls  errors syscall": the calls of
    // the bpf row and of the "total" row.
    let calls = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(3).and_then(|c| c.parse().ok())
            })
            .unwrap_or(0)
    };
    Ok((calls("bpf"), calls("total")))
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
    // A/B: a second ctdev binary (main's release build) in the same
    // rounds, same container, same environment.
    let base_bin = std::env::var_os("CTDEV_BENCH_BASE").map(PathBuf::from);
    let base_cli = || match &base_bin {
        Some(b) => same_env(b.as_os_str(), &env.ctdev_cli()),
        None => env.ctdev_cli(),
    };
    let result = (|| {
        let mut c_ms = Vec::new();
        let mut c_del = Vec::new();
        let mut b_add = Vec::new();
        let mut b_del = Vec::new();
        let mut b_pair = Vec::new();
        let mut b_ver = Vec::new();
        let mut l_ms = Vec::new();
        let mut c_pair = Vec::new();
        let mut l_pair = Vec::new();
        let mut v_ms = Vec::new();
        let mut t_ms = Vec::new();
        // Interleaved: ctdev add, ctdev del, lxc-device add, lxc-device del,
        // ctdev --version, /bin/true, then again.
        for _ in 0..env.plan.add_runs {
            let _ = std::fs::remove_file(&inside);
            let add = timed(
                env.ctdev_cli().arg("add").arg(&target).arg(device),
                "ctdev add",
            )?;
            if !inside.exists() {
                bail!("ctdev add did not create {}", inside.display());
            }
            let del = timed(
                env.ctdev_cli().arg("del").arg(&target).arg(device),
                "ctdev del",
            )?;
            c_ms.push(add);
            c_del.push(del);
            c_pair.push(add + del);
            if base_bin.is_some() {
                let _ = std::fs::remove_file(&inside);
                let add = timed(
                    base_cli().arg("add").arg(&target).arg(device),
                    "base ctdev add",
                )?;
                if !inside.exists() {
                    bail!("base ctdev add did not create {}", inside.display());
                }
                let del = timed(
                    base_cli().arg("del").arg(&target).arg(device),
                    "base ctdev del",
                )?;
                b_add.push(add);
                b_del.push(del);
                b_pair.push(add + del);
            }
            let _ = std::fs::remove_file(&inside);
            let add = timed(&mut lxc.device("add", device), "lxc-device add")?;
            if !inside.exists() {
                bail!("lxc-device add did not create {}", inside.display());
            }
            let del = timed(&mut lxc.device("del", device), "lxc-device del")?;
            l_ms.push(add);
            l_pair.push(add + del);
            let _ = std::fs::remove_file(&inside);
            v_ms.push(timed(env.ctdev_cli().arg("--version"), "ctdev --version")?);
            if base_bin.is_some() {
                b_ver.push(timed(base_cli().arg("--version"), "base ctdev --version")?);
            }
            t_ms.push(timed(&mut Command::new("/bin/true"), "/bin/true")?);
        }
        // In-process: the library calls `ctdev add` / `ctdev del` make.
        let t: Target = target.parse().context("lxc target")?;
        let dev = ctdev::passthrough::PassRequest::node(device);
        let mut a_us = Vec::new();
        let mut d_us = Vec::new();
        for _ in 0..env.plan.add_runs {
            let _ = std::fs::remove_file(&inside);
            let t0 = Instant::now();
            ctdev::passthrough::add(&env.ct, &t, &dev, &Default::default())
                .context("passthrough::add")?;
            a_us.push(t0.elapsed().as_secs_f64() * 1e6);
            let t0 = Instant::now();
            ctdev::passthrough::del(&env.ct, &t, &dev).context("passthrough::del")?;
            d_us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        let _ = std::fs::remove_file(&inside);
        let mut calls = Vec::new();
        for (verb, what) in [
            ("add", "ctdev add"),
            ("del", "ctdev del"),
            ("list", "ctdev list --json"),
        ] {
            let mut cmd = env.ctdev_cli();
            match verb {
                "list" => cmd.args(["list", "--json"]),
                _ => cmd.arg(verb).arg(&target).arg(device),
            };
            calls.push((what.to_string(), bpf_calls(&cmd, what)?));
        }
        let _ = std::fs::remove_file(&inside);
        let base = match &base_bin {
            Some(b) => {
                let mut counts = Vec::new();
                for (name, cli) in [("new", env.ctdev_cli()), ("base", base_cli())] {
                    for verb in ["add", "del"] {
                        let mut cmd = same_env(cli.get_program(), &cli);
                        cmd.arg(verb).arg(&target).arg(device);
                        let what = format!("{name} ctdev {verb}");
                        let (bpf, all) = syscall_counts(&cmd, &what)?;
                        counts.push((what, bpf, all));
                    }
                }
                let _ = std::fs::remove_file(&inside);
                Some(BaseResults {
                    binary: b.display().to_string(),
                    add_ms: Summary::of(&b_add),
                    del_ms: Summary::of(&b_del),
                    add_del_ms: Summary::of(&b_pair),
                    version_ms: Summary::of(&b_ver),
                    calls: counts,
                })
            }
            None => None,
        };
        let r = AddResults {
            device: device.display().to_string(),
            runs: env.plan.add_runs,
            lxc_version: super::oci::version("lxc-start"),
            ctdev_add_ms: Summary::of(&c_ms),
            lxc_device_add_ms: Summary::of(&l_ms),
            ctdev_add_del_ms: Summary::of(&c_pair),
            lxc_add_del_ms: Summary::of(&l_pair),
            ctdev_version_ms: Summary::of(&v_ms),
            true_ms: Summary::of(&t_ms),
            ctdev_add_del_blocks: Summary::of_blocks(&c_pair, ROUNDS_PER_BLOCK),
            lxc_add_del_blocks: Summary::of_blocks(&l_pair, ROUNDS_PER_BLOCK),
            ctdev_version_blocks: Summary::of_blocks(&v_ms, ROUNDS_PER_BLOCK),
            true_blocks: Summary::of_blocks(&t_ms, ROUNDS_PER_BLOCK),
            inproc_add_us: Summary::of(&a_us),
            inproc_del_us: Summary::of(&d_us),
            bpf_calls: calls,
            binary_bytes: std::fs::metadata(&env.ctdev_bin)
                .map(|m| m.len())
                .unwrap_or(0),
            samples_ctdev_ms: c_pair,
            samples_lxc_ms: l_pair,
            attach: attach.clone(),
            ctdev_del_ms: Summary::of(&c_del),
            base,
        };
        step(&format!(
            "bench:   add+del: ctdev {:.2} ms, lxc-device {:.2} ms; in-process add {:.0} µs, del {:.0} µs; \
             ctdev --version {:.2} ms vs /bin/true {:.2} ms; bpf() calls {:?} (medians)",
            r.ctdev_add_del_ms.median,
            r.lxc_add_del_ms.median,
            r.inproc_add_us.median,
            r.inproc_del_us.median,
            r.ctdev_version_ms.median,
            r.true_ms.median,
            r.bpf_calls
        ));
        if let Some(b) = &r.base {
            let line = |what: &str, new: &Summary, base: &Summary| {
                format!(
                    "{what} new {:.2} [{:.2}, {:.2}] / base {:.2} [{:.2}, {:.2}] ms",
                    new.median, new.min, new.max, base.median, base.min, base.max
                )
            };
            step(&format!(
                "bench:   A/B against {} (median [min, max]): {}; {}; {}; {}; lxc-device add+del {:.2} [{:.2}, {:.2}] ms; in-process add {:.0} [{:.0}, {:.0}] µs, del {:.0} [{:.0}, {:.0}] µs; calls (bpf, all) {:?}",
                b.binary,
                line("add", &r.ctdev_add_ms, &b.add_ms),
                line("del", &r.ctdev_del_ms, &b.del_ms),
                line("add+del", &r.ctdev_add_del_ms, &b.add_del_ms),
                line("--version", &r.ctdev_version_ms, &b.version_ms),
                r.lxc_add_del_ms.median,
                r.lxc_add_del_ms.min,
                r.lxc_add_del_ms.max,
                r.inproc_add_us.median,
                r.inproc_add_us.min,
                r.inproc_add_us.max,
                r.inproc_del_us.median,
                r.inproc_del_us.min,
                r.inproc_del_us.max,
                b.calls
            ));
        }
        Ok(r)
    })();
    quiet(env.ctdev_cli().args(["detach", &target]));
    drop(lxc);
    result
}
