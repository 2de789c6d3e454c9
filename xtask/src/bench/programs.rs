//! Device programs that are not ctdev's: the 2-instruction allow-all floor
//! (raw `bpf(2)`, attached like runc does with `BPF_PROG_ATTACH` +
//! `BPF_F_ALLOW_MULTI`), and what bpftool says about any program: run-time
//! statistics, instruction count, memory.

use ctdev::kernel::raw_program::{Insn, RawProgram};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// `r0 = 1; exit`: allows everything, attached in multi mode; detached on drop.
pub struct AllowAll {
    _raw: RawProgram,
}

impl AllowAll {
    /// Loads the program and attaches it to `cgroup_dir`.
    pub fn attach(cgroup_dir: &Path) -> Result<Self> {
        let raw = RawProgram::attach(cgroup_dir, "allow_all", &Insn::ret(1))
            .context("load and attach the allow-all program")?;
        Ok(AllowAll { _raw: raw })
    }
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `bpf_stats_enabled = 1` while alive; the previous value is restored on drop.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    /// Turns kernel BPF run-time statistics on.
    pub fn on() -> Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("read {BPF_STATS}"))?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("write 1 to {BPF_STATS}"))?;
        Ok(StatsEnabled { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

fn bpftool(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("cannot run bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        // `bpftool -j cgroup show` prints nothing when nothing is attached.
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool {}: bad JSON", args.join(" ")))
}

fn num(v: &Value, field: &str) -> u64 {
    v.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// One program as bpftool shows it.
#[derive(Debug, Clone, Default)]
pub struct ProgInfo {
    pub id: u64,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub insns: u64,
    pub bytes_memlock: u64,
    pub map_ids: Vec<u64>,
}

/// `bpftool prog show id N`.
pub fn prog(id: u64) -> Result<ProgInfo> {
    Ok(prog_info(&bpftool(&[
        "prog",
        "show",
        "id",
        &id.to_string(),
    ])?))
}

/// `bpftool prog show`: every loaded program.
pub fn all_progs() -> Result<Vec<ProgInfo>> {
    Ok(bpftool(&["prog", "show"])?
        .as_array()
        .map(|a| a.iter().map(prog_info).collect())
        .unwrap_or_default())
}

fn prog_info(v: &Value) -> ProgInfo {
    ProgInfo {
        id: num(v, "id"),
        name: v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        run_time_ns: num(v, "run_time_ns"),
        run_cnt: num(v, "run_cnt"),
        insns: num(v, "bytes_xlated") / 8,
        bytes_memlock: num(v, "bytes_memlock"),
        map_ids: v
            .get("map_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
    }
}

/// `bpftool map show id N`: bytes_memlock.
/// bytes_memlock of every loaded map, by id (one bpftool call).
pub fn all_map_memlock() -> Result<std::collections::BTreeMap<u64, u64>> {
    Ok(bpftool(&["map", "show"])?
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| (num(v, "id"), num(v, "bytes_memlock")))
                .collect()
        })
        .unwrap_or_default())
}

/// Device programs that judge accesses in `cgroup_dir` (its own and its ancestors').
pub fn effective(cgroup_dir: &Path) -> Result<Vec<ProgInfo>> {
    let dir = cgroup_dir.to_string_lossy();
    let v = bpftool(&["cgroup", "show", &dir, "effective"])?;
    let mut out = Vec::new();
    for p in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        if p.get("attach_type").and_then(Value::as_str) == Some("cgroup_device") {
            out.push(prog(num(p, "id"))?);
        }
    }
    Ok(out)
}

/// Index of the first instruction that compares a register with `imm`
/// (the start of the block for major `imm` in a runtime's linear program).
pub fn first_compare_with(id: u64, imm: u32) -> Result<Option<usize>> {
    let v = bpftool(&["prog", "dump", "xlated", "id", &id.to_string()])?;
    let needle = format!("!= {imm:#x} ");
    Ok(v.as_array().and_then(|insns| {
        insns.iter().position(|i| {
            i.get("disasm")
                .and_then(Value::as_str)
                .is_some_and(|d| d.contains(&needle))
        })
    }))
}

/// A directory created for the bench and removed (recursively) on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(path: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
