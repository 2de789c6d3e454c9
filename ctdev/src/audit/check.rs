//! `ctdev check`: the kernel's real verdict for one access from inside a
//! container, and why.
//!
//! A probe process is started in a transient child cgroup of the target, so
//! every device program on the target and its ancestors judges it, as it
//! would judge the container's own processes. It never opens the real
//! device (no driver side effects): it creates a node with the same type and
//! numbers in a private tmpfs and asks `access(R_OK|W_OK)` (the kernel runs
//! the same device check as for `open`), or tries `mknod` for the `m` bit.
//! ctdev's own part of the verdict is then explained from its policy map
//! with the same lookup function the kernel program uses.

use std::path::{Path, PathBuf};

use ctdev_common::{evaluate, ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE};
use serde::Serialize;

use super::events::DeviceRef;
use crate::devname::device_names;
use crate::kernel::attached::{device_programs, DeviceProgram, Owner, ProgramsError};
use crate::kernel::attachment;
use crate::kernel::policy_map::{PolicyMap, PolicyMapError};
use crate::ops::{Ctdev, Error};
use crate::probe::{probe_in, ProbeError, ProbeOp};
use crate::rule::{Access, DevNumber, Rule};
use crate::target::Target;

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The rule names more than one device.
    #[error("check needs one device: {rule:?} has a wildcard; give MAJOR:MINOR or a /dev path")]
    Wildcard { rule: String },
    /// The rule is type `a`.
    #[error("check needs one device type: {rule:?} is for both b and c; check each")]
    BothTypes { rule: String },
    /// The transient probe cgroup could not be made.
    #[error("cannot create probe cgroup {path}: {source}")]
    ProbeCgroup {
        /// The cgroup directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The target is frozen: a probe joining it would freeze too.
    #[error("{cgroup} is frozen ({how}): a probe process there would never run; thaw it first (nothing was changed)")]
    Frozen {
        /// The cgroup directory.
        cgroup: PathBuf,
        /// Where the freeze was seen.
        how: String,
    },
    /// The probe failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The policy map could not be read.
    #[error(transparent)]
    PolicyMap(#[from] PolicyMapError),
    /// The device programs of the cgroup could not be listed.
    #[error(transparent)]
    Programs(#[from] ProgramsError),
    /// The container or policy could not be read.
    #[error(transparent)]
    Ctdev(#[from] Box<Error>),
}

impl From<Error> for CheckError {
    fn from(e: Error) -> Self {
        CheckError::Ctdev(Box::new(e))
    }
}

/// One kernel verdict the probe observed.
#[derive(Debug, Clone, Serialize)]
pub struct OpResult {
    /// `read`, `write`, `read+write` or `mknod`.
    pub op: &'static str,
    /// Whether the kernel allowed it.
    pub allowed: bool,
    /// The error when denied (`EPERM` from the device controller).
    pub error: Option<String>,
}

/// ctdev's own part of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CtdevPart {
    /// The container's policy id.
    pub policy_id: u64,
    /// ctdev's program id.
    pub program_id: u32,
    /// The entry that decided, most specific first; `null`: no entry.
    pub matched: Option<String>,
    /// Whether ctdev's program allows the access.
    pub allowed: bool,
}

/// The result of `ctdev check` (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The target as given.
    pub target: String,
    /// The target's cgroup directory.
    pub cgroup_dir: PathBuf,
    /// The device checked.
    pub device: DeviceRef,
    /// The access checked.
    pub access: Access,
    /// The kernel's verdict: every requested access allowed.
    pub allowed: bool,
    /// Each operation the probe tried.
    pub results: Vec<OpResult>,
    /// ctdev's part, if the target is under ctdev policy.
    pub ctdev: Option<CtdevPart>,
    /// Every device program that judges the target (nearest cgroup first).
    pub programs: Vec<DeviceProgram>,
    /// The cgroup v1 `devices` cgroup the target's processes are also in
    /// (hybrid hosts); the probe joined it, so the verdict includes it.
    pub v1_devices_cgroup: Option<PathBuf>,
    /// One sentence saying who allowed or denied it.
    pub explanation: String,
    /// The Kubernetes pod container (from the pod map of the NRI plugin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::runtimes::k8s::PodContainer>,
}

/// Removes the transient probe cgroup however the check ends.
struct ProbeCgroup(PathBuf);

impl Drop for ProbeCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        tracing::warn!("could not remove probe cgroup {}", self.0.display());
    }
}

/// Name prefix of the transient probe cgroups (and scratch dirs); the
/// suffix is the checking process's pid.
const PROBE_PREFIX: &str = "ctdev-check-";

/// Whether `dir` (cgroup2; hierarchy path `path`) or an ancestor is frozen:
/// `frozen 1` in `cgroup.events`, or `cgroup.freeze` set on the way up;
/// also the v1 freezer of the same path on hybrid hosts.
fn frozen(dir: &Path, path: &Path) -> Option<String> {
    let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
    if events.lines().any(|l| l.trim() == "frozen 1") {
        return Some(format!("{}: frozen 1", dir.join("cgroup.events").display()));
    }
    let mut d = Some(dir);
    while let Some(cur) = d {
        let f = cur.join("cgroup.freeze");
        if std::fs::read_to_string(&f).is_ok_and(|v| v.trim() == "1") {
            return Some(format!("{}: 1", f.display()));
        }
        d = cur
            .parent()
            .filter(|p| p.join("cgroup.freeze").exists() || p.join("cgroup.procs").exists());
    }
    let rel = path.strip_prefix("/").unwrap_or(path);
    let v1 = Path::new("/sys/fs/cgroup/freezer")
        .join(rel)
        .join("freezer.state");
    match std::fs::read_to_string(&v1) {
        Ok(state) if state.trim() != "THAWED" => {
            Some(format!("{}: {}", v1.display(), state.trim()))
        }
        _ => None,
    }
}

/// The cgroup v1 `devices` directory the processes of the cgroup2
/// directory `dir` are in, when it is not the v1 root (hybrid hosts):
/// from `/proc/PID/cgroup` of a process in `dir` (or below) and the v1
/// `devices` mount in `/proc/self/mountinfo`.
fn v1_devices_dir(dir: &Path) -> Option<PathBuf> {
    let pid = first_pid(dir, 0)?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "devices")
            .then(|| path.to_string())
    })?;
    if path == "/" {
        return None;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _, opts) = (r.next()?, r.next()?, r.next()?);
        (fstype == "cgroup" && opts.split(',').any(|o| o == "devices"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })?;
    let full = mount.join(path.trim_start_matches('/'));
    full.is_dir().then_some(full)
}

/// A process in `dir` or below (depth-first, bounded).
fn first_pid(dir: &Path, depth: usize) -> Option<i32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
        return Some(pid);
    }
    if depth > 8 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| first_pid(&e.path(), depth + 1))
}

/// Removes probe cgroups (and scratch dirs) a killed `check` left in `dir`:
/// those whose pid is no longer alive. Their processes are killed first
/// (`cgroup.kill` also ends frozen ones).
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PROBE_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        drop(ProbeCgroup(path.clone()));
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&name));
        tracing::info!(
            "removed the probe cgroup {} left by a killed check",
            path.display()
        );
    }
}

/// Checks `rule` (one exact device) from inside `target`.
pub fn check(ctdev: &Ctdev, target: &Target, rule: &Rule) -> Result<CheckReport, CheckError> {
    let (Some(major), Some(minor)) = (rule.major.exact(), rule.minor.exact()) else {
        return Err(CheckError::Wildcard {
            rule: rule.to_string(),
        });
    };
    let kernel_type = match rule.dev_type.kernel_types() {
        [t] => *t,
        _ => {
            return Err(CheckError::BothTypes {
                rule: rule.to_string(),
            })
        }
    };
    let resolved = ctdev.resolve(target)?;
    let cgroup = resolved.cgroup.ok_or_else(|| Error::NeedsCgroup {
        target: target.to_string(),
    })?;
    let pods =
        crate::runtimes::k8s::PodMap::load(&crate::runtimes::k8s::state_dir()).unwrap_or_default();
    let pod = super::names::pod_of(&pods, resolved.policy_id, Some(&cgroup.path));

    if let Some(how) = frozen(&cgroup.dir, cgroup.path.as_path()) {
        return Err(CheckError::Frozen {
            cgroup: cgroup.dir,
            how,
        });
    }
    remove_leftovers(&cgroup.dir);
    // On hybrid hosts the container's processes may also be in a cgroup
    // v1 `devices` cgroup, which judges too: the probe joins it as well.
    let v1_devices = v1_devices_dir(&cgroup.dir);
    let tag = format!("{PROBE_PREFIX}{}", std::process::id());
    let probe_dir = cgroup.dir.join(&tag);
    std::fs::create_dir(&probe_dir).map_err(|source| CheckError::ProbeCgroup {
        path: probe_dir.clone(),
        source,
    })?;
    let _guard = ProbeCgroup(probe_dir.clone());
    let scratch = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&scratch).map_err(|source| CheckError::ProbeCgroup {
        path: scratch.clone(),
        source,
    })?;

    let bits = rule.access.bits();
    let (read, write) = (bits & ACCESS_READ != 0, bits & ACCESS_WRITE != 0);
    let mut ops: Vec<(&'static str, bool, bool, bool)> = Vec::new();
    match (read, write) {
        (true, true) => ops.push(("read+write", true, true, false)),
        (true, false) => ops.push(("read", true, false, false)),
        (false, true) => ops.push(("write", false, true, false)),
        (false, false) if bits & ACCESS_MKNOD == 0 => ops.push(("exists", false, false, false)),
        _ => {}
    }
    if bits & ACCESS_MKNOD != 0 {
        ops.push(("mknod", false, false, true));
    }
    let mut results = Vec::new();
    for (name, read, write, mknod) in ops {
        let op = ProbeOp::Device {
            scratch: scratch.clone(),
            dev_type: rule.dev_type,
            major,
            minor,
            read,
            write,
            mknod,
        };
        let verdict = probe_in(&probe_dir, v1_devices.as_deref(), &op);
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir(&scratch);
                return Err(e.into());
            }
        };
        results.push(OpResult {
            op: name,
            allowed: verdict.is_ok(),
            error: verdict.err().map(|e| format!("{e:?}: {}", e.desc())),
        });
    }
    let _ = std::fs::remove_dir(&scratch);
    let allowed = results.iter().all(|r| r.allowed);

    // ctdev's part, from its map, with the kernel's lookup function.
    let pins = ctdev.pins();
    let ctdev_part = match attachment::open(pins, cgroup.id).ok().flatten() {
        Some(link) => {
            let map = PolicyMap::open(&pins.policy_map())?;
            let entries = map.entries_of(cgroup.id)?;
            let v = evaluate(cgroup.id, kernel_type, major, minor, bits, |k| {
                entries.get(k).copied()
            });
            Some(CtdevPart {
                policy_id: cgroup.id,
                program_id: link.info.prog_id,
                matched: v
                    .matched
                    .and_then(|(kind, b)| {
                        Rule::from_entry(&kind.key(cgroup.id, kernel_type, major, minor), b)
                    })
                    .map(|r| r.to_string()),
                allowed: v.allowed,
            })
        }
        None => None,
    };
    let programs =
        device_programs(ctdev.cgroups(), &cgroup).map_err(|e| CheckError::ProbeCgroup {
            path: cgroup.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let mut explanation = explain(allowed, ctdev_part.as_ref(), &cgroup.path, &programs);
    if let Some(v1) = &v1_devices {
        explanation.push_str(&format!(
            " (its processes are also in the cgroup v1 devices cgroup {}, which judges too; the probe joined it)",
            v1.display()
        ));
    }
    Ok(CheckReport {
        target: target.to_string(),
        cgroup_dir: cgroup.dir,
        device: DeviceRef {
            dev_type: rule.dev_type,
            major,
            minor,
            name: device_names(
                Path::new("/sys/dev"),
                rule.dev_type,
                DevNumber::Exact(major),
                DevNumber::Exact(minor),
            )
            .into_iter()
            .next(),
        },
        access: rule.access,
        allowed,
        results,
        ctdev: ctdev_part,
        programs,
        v1_devices_cgroup: v1_devices,
        explanation,
        pod,
    })
}

fn describe(p: &DeviceProgram) -> String {
    let owner = match p.owner {
        Owner::Unknown => String::new(),
        o => format!(", {}", o.as_str()),
    };
    let name = p.display_name();
    format!(
        "program {} ({name}{owner}) on {}",
        p.id,
        p.attached_at.display()
    )
}

/// Who decided, in one sentence.
fn explain(
    allowed: bool,
    ctdev: Option<&CtdevPart>,
    at: &std::path::Path,
    programs: &[DeviceProgram],
) -> String {
    // Only the attachment at the container's own cgroup is its own: the
    // shared program on an ancestor judges with the ancestor's policy.
    let others: Vec<&DeviceProgram> = programs
        .iter()
        .filter(|p| !ctdev.is_some_and(|c| p.is_own(c.program_id, at)))
        .collect();
    let ctdev_text = match ctdev {
        None => "the target is not under ctdev policy".to_string(),
        Some(c) => match (&c.matched, c.allowed) {
            (Some(r), true) => format!("ctdev allows it (entry `{r}`)"),
            (Some(r), false) => format!("ctdev denies it (entry `{r}` lacks the access)"),
            (None, _) => "ctdev denies it (no entry matches)".to_string(),
        },
    };
    if allowed {
        let rest = if others.is_empty() {
            String::new()
        } else {
            format!(" and {} other program(s) allow it too", others.len())
        };
        return format!("allowed: {ctdev_text}{rest}");
    }
    match ctdev {
        Some(c) if !c.allowed => format!("denied: {ctdev_text}"),
        _ if others.is_empty() => format!("denied: {ctdev_text}, and no other device program is attached (a non-BPF device policy, e.g. cgroup v1?)"),
        _ => {
            let list: Vec<String> = others.iter().map(|p| describe(p)).collect();
            let who = if others.len() == 1 { "by ".to_string() } else { "by one of: ".to_string() };
            format!("denied {who}{}; {ctdev_text}", list.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(id: u32, name: &str) -> DeviceProgram {
        DeviceProgram {
            id,
            name: name.into(),
            attached_at: "/x".into(),
            owner: Owner::from_name(name),
        }
    }

    #[test]
    fn explains_who_denied() {
        let c = CtdevPart {
            policy_id: 1,
            program_id: 10,
            matched: Some("c 1:3 r".into()),
            allowed: true,
        };
        let progs = [prog(10, "ctdev_device"), prog(11, "")];
        let e = explain(false, Some(&c), std::path::Path::new("/x"), &progs);
        assert!(e.starts_with("denied by program 11 (unnamed) on /x"), "{e}");
        let denied = CtdevPart {
            allowed: false,
            ..c.clone()
        };
        assert!(
            explain(false, Some(&denied), std::path::Path::new("/x"), &progs)
                .starts_with("denied: ctdev denies it (entry `c 1:3 r`")
        );
        let none = CtdevPart {
            matched: None,
            allowed: false,
            ..c.clone()
        };
        assert!(
            explain(false, Some(&none), std::path::Path::new("/x"), &progs)
                .contains("no entry matches")
        );
        assert!(explain(true, Some(&c), std::path::Path::new("/x"), &progs)
            .starts_with("allowed: ctdev allows it"));
        assert!(explain(
            false,
            None,
            std::path::Path::new("/x"),
            &[prog(5, "sd_devices")]
        )
        .contains("program 5 (sd_devices, systemd)"));
        // The same (shared) program on an ancestor judges with the
        // ancestor's policy: it is another program, not the container's own.
        let ancestor = DeviceProgram {
            attached_at: "/".into(),
            ..prog(10, "ctdev_shared")
        };
        let e = explain(
            false,
            Some(&c),
            std::path::Path::new("/x"),
            &[prog(10, "ctdev_shared"), ancestor],
        );
        assert!(
            e.starts_with("denied by program 10 (ctdev_shared, ctdev) on /;"),
            "{e}"
        );
    }
}
