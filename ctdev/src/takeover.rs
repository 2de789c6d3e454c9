//! `ctdev attach --takeover`: replace the runtime's own device program by
//! ctdev's while keeping what the runtime allowed.
//!
//! Order (never a moment without a program): import the runtime's rules →
//! attach ctdev with them (or add them if already attached) → verify the
//! kernel lists ctdev's program on the cgroup → only then detach the
//! runtime's program(s) from the target cgroup. Programs on ancestor
//! cgroups belong to other cgroups and are left alone (and reported).
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
use crate::controller::{AttachReport, Ctdev, Error};
use crate::import::{self, ImportError};
use crate::kernel::program::ProgramObject;
use crate::kernel::programs::{device_programs, DeviceProgram, Owner, ProgramsError};
use crate::kernel::sys::{self, SysError};
use crate::presets::Preset;
use crate::rule::Rule;
use crate::target::{RuntimeKind, Target};

/// Default state directories of runc and crun.
pub const DEFAULT_RUNTIME_ROOTS: [&str; 2] = ["/run/runc", "/run/crun"];
/// Default LXC container path.
pub const DEFAULT_LXCPATH: &str = "/var/lib/lxc";

/// Where to look for the runtime's rules.
#[derive(Debug, Clone, Default)]
pub struct TakeoverOptions {
    /// An explicit rule file (`--import`).
    pub import: Option<PathBuf>,
    /// LXC's container path (`--lxcpath`).
    pub lxcpath: Option<PathBuf>,
    /// runc/crun state roots (`--runtime-root`, repeatable).
    pub runtime_roots: Vec<PathBuf>,
}

/// Why a takeover did not happen (or not completely).
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// No rule source was found.
    #[error("cannot find the runtime's device rules for {target}: looked for {looked}; pass --import FILE (an OCI config.json, runc state.json or LXC config)")]
    NoSource {
        /// The target.
        target: String,
        /// What was looked for.
        looked: String,
    },
    /// The rule source could not be read.
    #[error(transparent)]
    Import(#[from] ImportError),
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
        /// The cgroup.
        cgroup: PathBuf,
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

/// What `attach --takeover` did.
#[derive(Debug, Clone, Serialize)]
pub struct TakeoverReport {
    /// The attach itself.
    pub attach: AttachReport,
    /// The file the rules were imported from.
    pub source: PathBuf,
    /// Its format: `oci`, `runc-state` or `lxc`.
    pub format: &'static str,
    /// The rules imported (as ctdev entries).
    pub imported: Vec<String>,
    /// Runtime programs detached from the target cgroup.
    pub detached: Vec<DeviceProgram>,
    /// Other programs still deciding (on ancestors, or other ctdev roots).
    pub remaining: Vec<DeviceProgram>,
}

/// Replaces the runtime's device program on `target` by ctdev's.
pub fn takeover(
    ctdev: &Ctdev,
    target: &Target,
    options: &TakeoverOptions,
    extra: &[Rule],
) -> Result<TakeoverReport, TakeoverError> {
    let resolved = ctdev.resolve(target)?;
    let cgroup = resolved.cgroup.ok_or_else(|| Error::NeedsCgroup {
        target: target.to_string(),
    })?;
    let (source, format) = find_source(ctdev, target, &cgroup, options)?;
    let specs = match format {
        "oci" => import::from_oci_config(&source)?,
        "runc-state" => import::from_runc_state(&source)?,
        _ => import::from_lxc_config(&source)?,
    };
    let mut rules = import::effective_rules(&specs);
    rules.extend_from_slice(extra);
    let imported = rules.iter().map(|r| r.to_string()).collect();

    // One critical section: attach, verify and the runtime's detach.
    let object = ProgramObject::new(ctdev.config().bpf_object.as_deref()).map_err(Error::from)?;
    let lock = ctdev.lock()?;
    let before = device_programs(ctdev.cgroups(), &cgroup)?;
    let attach = ctdev.attach_locked(&lock, cgroup.clone(), &object, Preset::None, &rules)?;
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

    let mut detached = Vec::new();
    for prog in before.into_iter().filter(|p| {
        p.attached_at == cgroup.path && p.id != attach.program_id && p.owner != Owner::Ctdev
    }) {
        let prog_fd = sys::prog_fd_by_id(prog.id).map_err(|source| TakeoverError::Detach {
            program_id: prog.id,
            source,
        })?;
        sys::prog_detach_device(fd.as_fd(), prog_fd.as_fd(), &cgroup.dir).map_err(|source| {
            TakeoverError::Detach {
                program_id: prog.id,
                source,
            }
        })?;
        tracing::info!(program = prog.id, cgroup = %cgroup.dir.display(), "detached runtime device program");
        detached.push(prog);
    }
    crate::failpoint!("takeover.after_detach_runtime");
    drop(lock);
    let remaining = device_programs(ctdev.cgroups(), &cgroup)?
        .into_iter()
        .filter(|p| p.id != attach.program_id)
        .collect();
    Ok(TakeoverReport {
        attach,
        source,
        format,
        imported,
        detached,
        remaining,
    })
}

/// Finds the file holding the runtime's device rules, and its format.
fn find_source(
    ctdev: &Ctdev,
    target: &Target,
    cgroup: &Cgroup,
    options: &TakeoverOptions,
) -> Result<(PathBuf, &'static str), TakeoverError> {
    if let Some(file) = &options.import {
        return Ok((file.clone(), detect_format(file)?));
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
            return Ok((config, "lxc"));
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

/// The rule file of the runc (`state.json`) or crun (`status` → bundle's
/// `config.json`) container in `dir`, if its init process is in `cgroup`.
fn runtime_state(ctdev: &Ctdev, dir: &Path, cgroup: &Cgroup) -> Option<(PathBuf, &'static str)> {
    let in_cgroup = |pid: i64| {
        i32::try_from(pid)
            .ok()
            .and_then(|p| ctdev.cgroups().cgroup_of_pid(p).ok())
            .is_some_and(|c| c.dir.starts_with(&cgroup.dir))
    };
    let state = dir.join("state.json");
    if let Ok(text) = std::fs::read_to_string(&state) {
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        if v["init_process_pid"].as_i64().is_some_and(in_cgroup) {
            return Some((state, "runc-state"));
        }
        return None;
    }
    let status = dir.join("status");
    let text = std::fs::read_to_string(status).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v["pid"].as_i64().is_some_and(in_cgroup) {
        let config = Path::new(v["bundle"].as_str()?).join("config.json");
        return config.is_file().then_some((config, "oci"));
    }
    None
}

/// The format of an `--import` file, from its content.
fn detect_format(file: &Path) -> Result<&'static str, TakeoverError> {
    let text = std::fs::read_to_string(file).map_err(|source| ImportError::Io {
        path: file.to_path_buf(),
        source,
    })?;
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
