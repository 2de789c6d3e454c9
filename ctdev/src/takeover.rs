//! `ctdev attach --takeover`: replace the runtime's own device program by
//! ctdev's while keeping what the runtime allowed, and give it back on
//! `ctdev detach`.
//!
//! Order (never a moment without a program): import the runtime's rules →
//! attach ctdev with them (or add them if already attached) → verify the
//! kernel lists ctdev's program on the cgroup → pin each runtime program
//! (`<pin root>/takeover/<policy id>/prog-<id>-flags-<attach flags>`) →
//! only then detach it from the target cgroup. `ctdev detach` calls
//! [`restore_on_detach`] first: the kept programs are attached again with
//! their flags before ctdev's own program goes, so the container's access
//! is exactly the runtime's again. Programs on ancestor cgroups belong to
//! other cgroups and are left alone (and reported).
//!
//! What the rules mean: [`crate::import::translate`] replays the runtime's
//! own semantics (runc for its state.json and for a plain OCI config.json,
//! with runc's default devices; crun for a crun container's config.json,
//! with crun's defaults; LXC for an LXC config) and never allows more than
//! the runtime did; every access it had to narrow is listed in the report.
//! When there is nothing to import (no runtime program on the cgroup, or a
//! config without device rules), the takeover starts from the preset
//! (`--preset`, default `oci`) and says so.
//!
//! Where the rules come from: `--import FILE` (an OCI config.json, a runc
//! state.json, or an LXC config), else the LXC container's config
//! (`lxc:NAME` or an `lxc.payload.NAME` cgroup, under `--lxcpath`), else the
//! runc/crun state whose init process lives in the target cgroup (under the
//! runtime state roots, default /run/runc and /run/crun).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroup::Cgroup;
use crate::import::{self, DeviceRuleSpec, ImportError, ModelError, Semantics};
use crate::kernel::attached::{device_programs, DeviceProgram, Owner, ProgramsError};
use crate::kernel::attachment::AttachmentError;
use crate::kernel::loader::ProgramObject;
use crate::kernel::pins::PinRoot;
use crate::kernel::sys::{self, SysError};
use crate::ops::{AttachReport, Ctdev, Error};
use crate::presets::Preset;
use crate::rule::Rule;
use crate::target::{RuntimeKind, Target};

/// Default state directories of runc and crun.
pub const DEFAULT_RUNTIME_ROOTS: [&str; 2] = ["/run/runc", "/run/crun"];
/// Default LXC container path.
pub const DEFAULT_LXCPATH: &str = "/var/lib/lxc";

/// Where to look for the runtime's rules, and what to start from when
/// there are none.
#[derive(Debug, Clone, Default)]
pub struct TakeoverOptions {
    /// An explicit rule file (`--import`).
    pub import: Option<PathBuf>,
    /// LXC's container path (`--lxcpath`).
    pub lxcpath: Option<PathBuf>,
    /// runc/crun state roots (`--runtime-root`, repeatable).
    pub runtime_roots: Vec<PathBuf>,
    /// The starting rules when there is nothing to import (`--preset`;
    /// `None` is [`Preset::Oci`]).
    pub preset: Option<Preset>,
    /// The runtime's container ID, when the caller knows it (the NRI
    /// plugin): its state under each runtime root is looked at first (and
    /// still must have its init process in the cgroup), before a scan of
    /// every container's.
    pub container_id: Option<String>,
}

/// Why a takeover did not happen (or not completely).
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// No rule source was found.
    #[error("cannot find the runtime's device rules for {target}: looked for {looked}; pass --import FILE (an OCI config.json, runc state.json or LXC config)")]
    NoSource {
        target: String,
        /// What was looked for.
        looked: String,
    },
    /// The rule source could not be read.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The runtime would not have accepted the rules (or they are too many).
    #[error("{}: {error}; nothing was changed", file.display())]
    Model {
        /// The rule file.
        file: PathBuf,
        error: ModelError,
    },
    /// An entry of the current policy did not read back as a rule.
    #[error("entry {entry:?} of the policy of {}: {error}; nothing was changed", cgroup.display())]
    Entry {
        /// The entry as text.
        entry: String,
        /// The container's cgroup.
        cgroup: PathBuf,
        error: String,
    },
    /// Attaching ctdev failed: nothing was detached.
    #[error(transparent)]
    Ctdev(#[from] Box<Error>),
    /// Listing programs failed.
    #[error(transparent)]
    Programs(#[from] ProgramsError),
    /// ctdev's program is not listed on the cgroup after attaching: the
    /// runtime's program was left in place.
    #[error("ctdev's program {program_id} is not attached to {cgroup} after attach; the runtime's program was left in place")]
    NotVerified {
        /// ctdev's program id.
        program_id: u32,
        cgroup: PathBuf,
    },
    /// Keeping (pinning) a runtime program failed; it stays attached and
    /// ctdev's program is attached too.
    #[error("ctdev is attached, but the runtime's program {program_id} could not be kept for a later detach, so it was left attached (both now apply): {source}")]
    Keep {
        /// The program left attached.
        program_id: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Detaching a runtime program failed; ctdev's program is attached too.
    #[error("ctdev is attached, but the runtime's program {program_id} could not be detached (both now apply): {source}")]
    Detach {
        /// The program left attached.
        program_id: u32,
        /// The syscall error.
        #[source]
        source: SysError,
    },
}

impl From<Error> for TakeoverError {
    fn from(e: Error) -> Self {
        TakeoverError::Ctdev(Box::new(e))
    }
}

/// A runtime program kept (pinned) by a takeover, to be attached again on
/// `ctdev detach`.
#[derive(Debug, Clone, Serialize)]
pub struct KeptProgram {
    /// Kernel program id.
    pub id: u32,
    /// Its pin.
    pub pin: PathBuf,
    /// The cgroup-level attach flags it had (`BPF_F_ALLOW_MULTI` = 2).
    pub attach_flags: u32,
}

/// What `attach --takeover` did.
#[derive(Debug, Clone, Serialize)]
pub struct TakeoverReport {
    /// The attach itself.
    pub attach: AttachReport,
    /// The file the rules were imported from (none when nothing was found
    /// and the runtime attached no program).
    pub source: Option<PathBuf>,
    /// Its format: `oci`, `runc-state` or `lxc` (`none` without a source).
    pub format: &'static str,
    /// Whose semantics the rules were read with (`runc`, `crun`, `lxc`).
    pub semantics: Semantics,
    /// The rules imported (as ctdev entries).
    pub imported: Vec<String>,
    /// Requests the runtime allowed that ctdev's model cannot express and
    /// now denies (`c 200:1 rw`; a `*` number: every number no rule names).
    pub narrowed: Vec<String>,
    /// Set when there was nothing to import: why, and the preset used.
    pub started_from_preset: Option<String>,
    /// Runtime programs detached from the target cgroup.
    pub detached: Vec<DeviceProgram>,
    /// The detached programs as kept for `ctdev detach`.
    pub kept: Vec<KeptProgram>,
    /// Other programs still deciding (on ancestors, or other ctdev roots).
    pub remaining: Vec<DeviceProgram>,
    /// Time per step, in order (µs): what a takeover costs, and where.
    pub steps: Steps,
}

/// Time per step of an operation (µs), in order.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Steps(pub Vec<(&'static str, u64)>);

/// Measures consecutive steps: each [`StepTimer::mark`] records the time
/// since the previous one.
#[derive(Debug)]
pub struct StepTimer {
    last: std::time::Instant,
    steps: Steps,
}

impl Default for StepTimer {
    fn default() -> Self {
        Self {
            last: std::time::Instant::now(),
            steps: Steps::default(),
        }
    }
}

impl StepTimer {
    /// Ends the step `name`.
    pub fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        let us = u64::try_from(now.duration_since(self.last).as_micros()).unwrap_or(u64::MAX);
        self.steps.0.push((name, us));
        self.last = now;
    }

    /// The steps so far.
    pub fn finish(self) -> Steps {
        self.steps
    }
}

/// The rules found for a takeover.
struct Imported {
    source: Option<PathBuf>,
    format: &'static str,
    semantics: Semantics,
    rules: Vec<Rule>,
    narrowed: Vec<String>,
    started_from_preset: Option<String>,
}

/// Where the runtime's rules come from, found before the lock.
struct Source {
    path: PathBuf,
    format: &'static str,
    semantics: Semantics,
    /// The rules when the file was read already (runc's state.json, read
    /// once to find whose it is and what it allows).
    specs: Option<Result<Vec<DeviceRuleSpec>, ImportError>>,
}

/// The runtime's rules read and translated before the lock: whether they
/// are used depends on whether the runtime attached a program, which the
/// one listing under the lock tells ([`Candidate::decide`]).
struct Candidate {
    preset: Preset,
    read: Result<Read, TakeoverError>,
}

/// A rule file read (and translated, when it had rules).
struct Read {
    source: PathBuf,
    format: &'static str,
    semantics: Semantics,
    /// `None`: the file has no device rules.
    translated: Option<Result<import::Translation, TakeoverError>>,
}

/// Reads and translates the runtime's rules (no lock needed: files only).
fn read_rules(
    ctdev: &Ctdev,
    target: &Target,
    cgroup: &Cgroup,
    options: &TakeoverOptions,
) -> Candidate {
    let read = (|| {
        let found = find_source(ctdev, target, cgroup, options)?;
        let specs = match found.specs {
            Some(specs) => specs?,
            None => match (found.format, found.semantics) {
                ("runc-state", _) => import::from_runc_state(&found.path)?,
                ("oci", Semantics::Crun) => import::from_oci_config(&found.path)?,
                ("oci", _) => import::oci_config_for_runc(&found.path)?,
                _ => import::from_lxc_config(&found.path)?,
            },
        };
        let translated = (!specs.is_empty()).then(|| {
            import::translate(found.semantics, &specs).map_err(|error| TakeoverError::Model {
                file: found.path.clone(),
                error,
            })
        });
        Ok(Read {
            source: found.path,
            format: found.format,
            semantics: found.semantics,
            translated,
        })
    })();
    Candidate {
        preset: options.preset.unwrap_or(Preset::Oci),
        read,
    }
}

impl Candidate {
    /// The rules to take over with: the runtime's, or the preset when
    /// there is nothing to import (no rule file and no runtime program, a
    /// file without device rules, or no runtime program on the cgroup).
    fn decide(self, runtime_has_program: bool) -> Result<Imported, TakeoverError> {
        let preset = self.preset;
        let fallback = |source, format, semantics, why: String| Imported {
            source,
            format,
            semantics,
            rules: preset.rules(),
            narrowed: Vec::new(),
            started_from_preset: Some(format!(
                "{why}: nothing to import, started from preset {}",
                preset_name(preset)
            )),
        };
        let read = match self.read {
            Ok(read) => read,
            Err(TakeoverError::NoSource { .. }) if !runtime_has_program => {
                return Ok(fallback(
                    None,
                    "none",
                    Semantics::Runc,
                    "no runtime device program on the cgroup and no rule file found".into(),
                ))
            }
            Err(e) => return Err(e),
        };
        let Some(translated) = read.translated else {
            let why = format!("{} has no device rules", read.source.display());
            return Ok(fallback(
                Some(read.source),
                read.format,
                read.semantics,
                why,
            ));
        };
        if !runtime_has_program {
            return Ok(fallback(
                Some(read.source),
                read.format,
                read.semantics,
                "the runtime attached no device program to the cgroup".into(),
            ));
        }
        let tr = translated?;
        Ok(Imported {
            source: Some(read.source),
            format: read.format,
            semantics: read.semantics,
            rules: tr.rules,
            narrowed: tr.narrowed.iter().map(|n| n.to_string()).collect(),
            started_from_preset: None,
        })
    }
}

impl Candidate {
    /// Whether [`Candidate::decide`] is an error when the runtime has a
    /// program on the cgroup.
    fn fails_with_runtime_program(&self) -> bool {
        match &self.read {
            Err(_) => true,
            Ok(r) => matches!(r.translated, Some(Err(_))),
        }
    }
}

/// The rules, decided before the lock (an error found early) or after the
/// listing under it.
enum Rules {
    Decided(Imported),
    Pending(Candidate),
}

impl Rules {
    fn decide(self, runtime_has_program: bool) -> Result<Imported, TakeoverError> {
        match self {
            Rules::Decided(i) => Ok(i),
            Rules::Pending(c) => c.decide(runtime_has_program),
        }
    }
}

fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::Oci => "oci",
        Preset::None => "none",
    }
}

/// Replaces the runtime's device program on `target` by ctdev's.
///
/// The cgroup's programs are listed once, under the pin-root lock (other
/// ctdev commands cannot attach or detach meanwhile); that listing decides
/// which programs are the runtime's and is what gets detached. The rule
/// file is read before the lock (files only). A program that shows up
/// between the listing and ctdev's attach (only a runtime could attach
/// one) is never detached: the query that verifies ctdev's attach lists
/// the cgroup's programs again, and any id the listing did not have is
/// left attached (it can only narrow access) and reported in `remaining`.
pub fn takeover(
    ctdev: &Ctdev,
    target: &Target,
    options: &TakeoverOptions,
    extra: &[Rule],
) -> Result<TakeoverReport, TakeoverError> {
    let mut timer = StepTimer::default();
    let resolved = ctdev.resolve(target)?;
    let cgroup = resolved.cgroup.ok_or_else(|| Error::NeedsCgroup {
        target: target.to_string(),
    })?;
    let is_runtime = |p: &DeviceProgram| p.attached_at == cgroup.path && p.owner != Owner::Ctdev;
    timer.mark("resolve");
    let candidate = read_rules(ctdev, target, &cgroup, options);
    // Errors are reported before the lock (which creates the pin root), so
    // nothing changes: a rule file that cannot be read, or none found (or
    // rules runc would not take) while the runtime has a program (a listing
    // without the lock, only on this path).
    let found = if candidate.fails_with_runtime_program()
        && (matches!(&candidate.read, Err(e) if !matches!(e, TakeoverError::NoSource { .. }))
            || device_programs(ctdev.cgroups(), &cgroup)?
                .iter()
                .any(is_runtime))
    {
        Rules::Decided(candidate.decide(true)?)
    } else {
        Rules::Pending(candidate)
    };
    timer.mark("import");
    let object = ProgramObject::new(ctdev.config().bpf_object.as_deref()).map_err(Error::from)?;
    timer.mark("object");

    // One critical section: list, attach, verify, keep and detach the
    // runtime's.
    let mut lock = ctdev.lock()?;
    timer.mark("lock");
    let mut before = device_programs(ctdev.cgroups(), &cgroup)?;
    timer.mark("list_programs");
    let imported = found.decide(before.iter().any(is_runtime))?;
    // Already under ctdev's policy (a plain attach before, a takeover
    // interrupted after its attach, or a runtime that attached its program
    // again): the imported rules are added with `allow` (which never
    // narrows) below, and the policy then is what the attach must find.
    // Only asked when a ctdev program is on the cgroup.
    let already = before
        .iter()
        .any(|p| p.attached_at == cgroup.path && p.owner == Owner::Ctdev)
        && ctdev
            .container(target)
            .ok()
            .is_some_and(|s| s.link == crate::ops::LinkState::Enforcing);
    if let Some(why) = &imported.started_from_preset {
        tracing::warn!(cgroup = %cgroup.dir.display(), "{why}");
    }
    let mut rules = imported.rules.clone();
    rules.extend_from_slice(extra);
    if already {
        // `allow` takes the lock itself: a rare path (a takeover of a
        // container ctdev enforces on already), so it lists again.
        drop(lock);
        tracing::info!(cgroup = %cgroup.dir.display(), "already under ctdev policy: adding the runtime's rules to it");
        if !rules.is_empty() {
            ctdev.allow(target, &rules).map_err(Box::new)?;
        }
        let state = ctdev.container(target).map_err(Box::new)?;
        let texts: Vec<String> = state
            .entries
            .iter()
            .map(|(k, b)| crate::plan::entry_text(k, *b))
            .collect();
        rules = crate::rule::parse_rules(&texts).map_err(|e| TakeoverError::Entry {
            entry: texts.join(", "),
            cgroup: cgroup.dir.clone(),
            error: e.to_string(),
        })?;
        // The rules were decided from the first listing: a program that
        // came while the lock was dropped is not detached (it is left
        // attached and named below, as one appearing after the listing).
        let first: Vec<u32> = before.iter().map(|p| p.id).collect();
        lock = ctdev.lock()?;
        before = device_programs(ctdev.cgroups(), &cgroup)?;
        before.retain(|p| first.contains(&p.id));
        timer.mark("current_policy");
    }
    let attach = ctdev.attach_locked(&lock, cgroup.clone(), &object, Preset::None, &rules)?;
    timer.mark("attach");
    crate::failpoint!("takeover.after_attach");

    // Verify: the kernel lists ctdev's program on the cgroup itself.
    let fd = cgroup.open().map_err(Error::from)?;
    let attached = sys::query_device_programs(fd.as_fd(), false, &cgroup.dir).map_err(|e| {
        TakeoverError::Detach {
            program_id: attach.program_id,
            source: e,
        }
    })?;
    if !attached.contains(&attach.program_id) {
        return Err(TakeoverError::NotVerified {
            program_id: attach.program_id,
            cgroup: cgroup.dir.clone(),
        });
    }
    // Programs on the cgroup that the listing did not have: left attached
    // (never detached unkept), named below.
    let appeared = attached.iter().any(|id| {
        *id != attach.program_id
            && !before
                .iter()
                .any(|p| p.id == *id && p.attached_at == cgroup.path)
    });
    timer.mark("verify");
    let flags =
        sys::device_attach_flags(fd.as_fd(), &cgroup.dir).map_err(|e| TakeoverError::Detach {
            program_id: attach.program_id,
            source: e,
        })?;
    let mut detached = Vec::new();
    let mut kept = Vec::new();
    let mut remaining = Vec::new();
    for prog in before.into_iter().filter(|p| p.id != attach.program_id) {
        // Only what is still attached here is the runtime's to detach.
        if !is_runtime(&prog) || !attached.contains(&prog.id) {
            if !is_runtime(&prog) {
                remaining.push(prog);
            }
            continue;
        }
        let prog_fd = sys::prog_fd_by_id(prog.id).map_err(|source| TakeoverError::Detach {
            program_id: prog.id,
            source,
        })?;
        let pin = keep_program(
            ctdev.pins(),
            attach.policy_id,
            prog.id,
            flags,
            prog_fd.as_fd(),
        )
        .map_err(|source| TakeoverError::Keep {
            program_id: prog.id,
            source,
        })?;
        timer.mark("keep");
        crate::failpoint!("takeover.after_keep");
        sys::prog_detach_device(fd.as_fd(), prog_fd.as_fd(), &cgroup.dir).map_err(|source| {
            TakeoverError::Detach {
                program_id: prog.id,
                source,
            }
        })?;
        tracing::info!(program = prog.id, cgroup = %cgroup.dir.display(), pin = %pin.display(), "detached and kept the runtime device program");
        kept.push(KeptProgram {
            id: prog.id,
            pin,
            attach_flags: flags,
        });
        detached.push(prog);
        timer.mark("detach_runtime");
    }
    crate::failpoint!("takeover.after_detach_runtime");
    drop(lock);
    if appeared {
        // Rare: list again to say what they are and where.
        remaining = device_programs(ctdev.cgroups(), &cgroup)?
            .into_iter()
            .filter(|p| p.id != attach.program_id)
            .collect();
        tracing::warn!(cgroup = %cgroup.dir.display(), "a device program was attached to the cgroup during the takeover: left attached (it only narrows)");
        timer.mark("list_remaining");
    }
    Ok(TakeoverReport {
        attach,
        source: imported.source,
        format: imported.format,
        semantics: imported.semantics,
        imported: imported.rules.iter().map(|r| r.to_string()).collect(),
        narrowed: imported.narrowed,
        started_from_preset: imported.started_from_preset,
        detached,
        kept,
        remaining,
        steps: timer.finish(),
    })
}

/// Directory of the runtime programs a takeover of `policy_id` kept.
fn kept_dir(pins: &PinRoot, policy_id: u64) -> PathBuf {
    pins.root().join("takeover").join(policy_id.to_string())
}

/// Pins a runtime program before it is detached; its name records the
/// attach flags to restore it with.
fn keep_program(
    pins: &PinRoot,
    policy_id: u64,
    id: u32,
    flags: u32,
    prog: std::os::fd::BorrowedFd<'_>,
) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let dir = kept_dir(pins, policy_id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let pin = dir.join(format!("prog-{id}-flags-{flags}"));
    if !pin.exists() {
        sys::obj_pin(prog, &pin)?;
    }
    Ok(pin)
}

/// The runtime programs a takeover kept for `policy_id`: (pin, id, flags).
pub fn kept_programs(pins: &PinRoot, policy_id: u64) -> Vec<KeptProgram> {
    let Ok(entries) = std::fs::read_dir(kept_dir(pins, policy_id)) else {
        return Vec::new();
    };
    let mut kept: Vec<KeptProgram> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (id, flags) = name.strip_prefix("prog-")?.split_once("-flags-")?;
            Some(KeptProgram {
                id: id.parse().ok()?,
                pin: e.path(),
                attach_flags: flags.parse().ok()?,
            })
        })
        .collect();
    kept.sort_by_key(|k| k.id);
    kept
}

/// Called by `ctdev detach` before it removes ctdev's program: attaches the
/// runtime programs a takeover kept again, with their flags (so the
/// container is never without a program, and its access is the runtime's
/// again), then drops their pins. With the cgroup gone (`None`), only the
/// pins are dropped. Returns the ids restored.
pub fn restore_on_detach(
    pins: &PinRoot,
    policy_id: u64,
    cgroup: Option<&Cgroup>,
) -> Result<Vec<u32>, Error> {
    let kept = kept_programs(pins, policy_id);
    let mut restored = Vec::new();
    if let Some(cgroup) = cgroup {
        let fd = cgroup.open()?;
        let attached = sys::query_device_programs(fd.as_fd(), false, &cgroup.dir)
            .map_err(AttachmentError::from)?;
        for k in &kept {
            let prog = sys::obj_get(&k.pin).map_err(AttachmentError::from)?;
            if !attached.contains(&k.id) {
                sys::prog_attach_device(fd.as_fd(), prog.as_fd(), k.attach_flags, &cgroup.dir)
                    .map_err(AttachmentError::from)?;
            }
            tracing::info!(program = k.id, cgroup = %cgroup.dir.display(), "re-attached the runtime device program kept by the takeover");
            restored.push(k.id);
        }
    }
    for k in &kept {
        crate::kernel::attachment::remove_pin(&k.pin)?;
    }
    let dir = kept_dir(pins, policy_id);
    let _ = std::fs::remove_dir(&dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(restored)
}

/// Finds the file holding the runtime's device rules, and its format.
fn find_source(
    ctdev: &Ctdev,
    target: &Target,
    cgroup: &Cgroup,
    options: &TakeoverOptions,
) -> Result<Source, TakeoverError> {
    if let Some(file) = &options.import {
        let format = detect_format(file)?;
        let semantics = if format == "lxc" {
            Semantics::Lxc
        } else {
            Semantics::Runc
        };
        return Ok(Source {
            path: file.clone(),
            format,
            semantics,
            specs: None,
        });
    }
    let mut looked = Vec::new();
    let lxc_name = match target {
        Target::Runtime(RuntimeKind::Lxc, name) => Some(name.clone()),
        _ => cgroup
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("lxc.payload."))
            .map(String::from),
    };
    if let Some(name) = lxc_name {
        // A running container's monitor names its lxcpath (`lxc-start -P`).
        let lxcpath = options
            .lxcpath
            .clone()
            .or_else(|| crate::runtimes::discover::lxcpath_of(&name))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LXCPATH));
        let config = lxcpath.join(&name).join("config");
        if config.is_file() {
            return Ok(Source {
                path: config,
                format: "lxc",
                semantics: Semantics::Lxc,
                specs: None,
            });
        }
        looked.push(config.display().to_string());
    }
    let roots: Vec<PathBuf> = if options.runtime_roots.is_empty() {
        // runc's and crun's defaults, and where running engines keep
        // runc's state (each dockerd's exec-root).
        DEFAULT_RUNTIME_ROOTS
            .iter()
            .map(PathBuf::from)
            .chain(crate::runtimes::discover::runc_state_roots())
            .collect()
    } else {
        options.runtime_roots.clone()
    };
    let hint = options
        .container_id
        .as_deref()
        .filter(|id| !id.is_empty() && !id.contains('/') && *id != "." && *id != "..");
    if let Some(id) = hint {
        for root in &roots {
            if let Some(found) = runtime_state(ctdev, &root.join(id), cgroup) {
                return Ok(found);
            }
        }
    }
    for root in &roots {
        looked.push(format!("{}/*/state.json", root.display()));
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Some(found) = runtime_state(ctdev, &dir, cgroup) {
                return Ok(found);
            }
        }
    }
    Err(TakeoverError::NoSource {
        target: target.to_string(),
        looked: looked.join(", "),
    })
}

/// The rule file of the runc (`state.json`, read once: its rules come
/// along) or crun (`status` → bundle's `config.json`) container in `dir`,
/// if its init process is in `cgroup`.
fn runtime_state(ctdev: &Ctdev, dir: &Path, cgroup: &Cgroup) -> Option<Source> {
    let in_cgroup = |pid: i64| {
        i32::try_from(pid)
            .ok()
            .and_then(|p| ctdev.cgroups().cgroup_of_pid(p).ok())
            .is_some_and(|c| c.dir.starts_with(&cgroup.dir))
    };
    let state = dir.join("state.json");
    if let Ok(text) = std::fs::read_to_string(&state) {
        let parsed = import::RuncState::parse(&text, &state).ok()?;
        if parsed.init_pid.is_some_and(in_cgroup) {
            return Some(Source {
                path: state,
                format: "runc-state",
                semantics: Semantics::Runc,
                specs: Some(parsed.rules),
            });
        }
        return None;
    }
    let status = dir.join("status");
    let text = std::fs::read_to_string(status).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v["pid"].as_i64().is_some_and(in_cgroup) {
        let config = Path::new(v["bundle"].as_str()?).join("config.json");
        return config.is_file().then_some(Source {
            path: config,
            format: "oci",
            semantics: Semantics::Crun,
            specs: None,
        });
    }
    None
}

/// The format of an `--import` file, from its content.
fn detect_format(file: &Path) -> Result<&'static str, TakeoverError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ImportError::from(crate::error::IoError::new("read", file, e)))?;
    if !text.trim_start().starts_with('{') {
        return Ok("lxc");
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| ImportError::Json {
        path: file.to_path_buf(),
        source,
    })?;
    if v.get("config").is_some() {
        Ok("runc-state")
    } else {
        Ok("oci")
    }
}
