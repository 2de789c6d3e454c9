//! Which device programs decide for a cgroup: its own and its ancestors'
//! (the kernel runs all of them; every one must allow). Used to tell
//! operators when something besides ctdev may deny an access.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::sys::{self, SysError};
use crate::cgroup::{Cgroup, CgroupError, CgroupFs};

/// Who probably attached a program, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// ctdev (this pin root or another one).
    Ctdev,
    /// systemd (`sd_devices`).
    Systemd,
    /// crun.
    Crun,
    /// LXC.
    Lxc,
    /// Unknown: runc's programs carry no name, for instance.
    Unknown,
}

impl Owner {
    /// The owner's name, as in the JSON (`ctdev`, `systemd`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Ctdev => "ctdev",
            Owner::Systemd => "systemd",
            Owner::Crun => "crun",
            Owner::Lxc => "lxc",
            Owner::Unknown => "unknown",
        }
    }

    /// Guesses the owner from a program name.
    pub fn from_name(name: &str) -> Self {
        match name {
            "ctdev_device" | "ctdev_scope" | "ctdev_shared" => Owner::Ctdev,
            n if n.starts_with("sd_devices") => Owner::Systemd,
            n if n.contains("crun") => Owner::Crun,
            n if n.contains("lxc") => Owner::Lxc,
            _ => Owner::Unknown,
        }
    }
}

/// One device program that applies to a cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceProgram {
    /// Kernel program id.
    pub id: u32,
    /// Program name (may be empty).
    pub name: String,
    /// The cgroup (hierarchy path) it is attached to: the target or an ancestor.
    pub attached_at: PathBuf,
    /// Best guess at who attached it.
    pub owner: Owner,
}

impl DeviceProgram {
    /// Whether this is the container's own program: program `own` attached
    /// at the container's cgroup `at` (hierarchy path). The same program
    /// attached to an ancestor (the shared program serves every container)
    /// decides too, with the ancestor's policy: it is not the container's own.
    pub fn is_own(&self, own: u32, at: &Path) -> bool {
        self.id == own && self.attached_at == at
    }

    /// Its name for messages: `unnamed` when the program has none.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() {
            "unnamed"
        } else {
            &self.name
        }
    }
}

/// Why the programs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ProgramsError {
    /// A cgroup could not be opened.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// BPF_PROG_QUERY failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// Names of programs by id, each read when first asked for (two bpf()
/// calls per program: `BPF_PROG_GET_FD_BY_ID`, `BPF_OBJ_GET_INFO_BY_FD`)
/// and kept for the command. Nothing lists every program loaded on the
/// system (that made every query O(programs on the system)), and aya's
/// feature probes never run.
#[derive(Debug, Default)]
pub struct ProgramNames(Mutex<HashMap<u32, String>>);

impl ProgramNames {
    /// An empty cache; names are read on demand by [`ProgramNames::get`].
    pub fn load() -> Self {
        Self::default()
    }

    /// The name of program `id` (empty if unnamed, or gone since it was
    /// found: it is then `unknown` to [`Owner::from_name`]).
    pub fn get(&self, id: u32) -> String {
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .entry(id)
            .or_insert_with(|| {
                sys::prog_name_by_id(id).unwrap_or_else(|e| {
                    tracing::debug!(id, error = %e, "cannot read the program's name");
                    String::new()
                })
            })
            .clone()
    }
}

/// Every device program that decides for `cgroup`: attached to it or to one
/// of its ancestors up to the cgroup2 root, nearest first.
pub fn device_programs(
    fs: &CgroupFs,
    cgroup: &Cgroup,
) -> Result<Vec<DeviceProgram>, ProgramsError> {
    device_programs_named(fs, cgroup, &ProgramNames::load())
}

/// [`device_programs`] with names already loaded.
pub fn device_programs_named(
    fs: &CgroupFs,
    cgroup: &Cgroup,
    names: &ProgramNames,
) -> Result<Vec<DeviceProgram>, ProgramsError> {
    device_programs_cached(fs, cgroup, names, &AttachedAt::default())
}

/// The programs attached at each cgroup directory asked about so far, for
/// one command that asks about many cgroups (`list`): containers share
/// their ancestors, so each ancestor is queried once (one `BPF_PROG_QUERY`
/// per cgroup instead of one per cgroup and level).
#[derive(Debug, Default)]
pub struct AttachedAt(Mutex<HashMap<PathBuf, (PathBuf, Vec<u32>)>>);

impl AttachedAt {
    /// The hierarchy path of the cgroup at `dir` and the programs attached
    /// there (not inherited), queried when first asked for.
    fn get(&self, fs: &CgroupFs, dir: &Path) -> Result<(PathBuf, Vec<u32>), ProgramsError> {
        let cached = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dir)
            .cloned();
        if let Some(hit) = cached {
            return Ok(hit);
        }
        self.query(&fs.cgroup(dir)?)
    }

    /// The programs attached at `cgroup` (already resolved: no stat of its
    /// directory again), queried when first asked for.
    fn query(&self, cgroup: &Cgroup) -> Result<(PathBuf, Vec<u32>), ProgramsError> {
        let lock = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = lock().get(&cgroup.dir) {
            return Ok(hit.clone());
        }
        // Not locked while the kernel answers (`list` asks from several
        // threads; two may ask about the same ancestor once each).
        let fd = cgroup.open()?;
        let ids = sys::query_device_programs(fd.as_fd(), false, &cgroup.dir)?;
        // The first answer stored is the one every container sees (a
        // second thread's later answer is dropped): one snapshot per
        // ancestor in a dump.
        let out = lock()
            .entry(cgroup.dir.clone())
            .or_insert((cgroup.path.clone(), ids))
            .clone();
        Ok(out)
    }
}

/// [`device_programs_named`] with ancestors' queries kept in `cache`.
pub fn device_programs_cached(
    fs: &CgroupFs,
    cgroup: &Cgroup,
    names: &ProgramNames,
    cache: &AttachedAt,
) -> Result<Vec<DeviceProgram>, ProgramsError> {
    let mut out = Vec::new();
    let mut dir: Option<&Path> = Some(&cgroup.dir);
    while let Some(d) = dir {
        if !d.starts_with(fs.mount()) {
            break;
        }
        // The container's own cgroup is resolved already; its ancestors
        // are resolved (and cached) by directory.
        let (path, ids) = if d == cgroup.dir {
            cache.query(cgroup)?
        } else {
            cache.get(fs, d)?
        };
        for id in ids {
            let name = names.get(id);
            out.push(DeviceProgram {
                id,
                owner: Owner::from_name(&name),
                name,
                attached_at: path.clone(),
            });
        }
        if d == fs.mount() {
            break;
        }
        dir = d.parent();
    }
    Ok(out)
}

/// The device programs besides `own` attached at `cgroup` itself that
/// decide for `cgroup` (see [`device_programs`]). Asks the kernel for the cgroup's effective list
/// first (one open and one bpf() call): when `own` is all there is, that is
/// the answer; otherwise the chain is walked to say where each one sits.
pub fn other_device_programs(
    fs: &CgroupFs,
    cgroup: &Cgroup,
    own: u32,
) -> Result<Vec<DeviceProgram>, ProgramsError> {
    let fd = cgroup.open()?;
    let effective = sys::query_device_programs(fd.as_fd(), true, &cgroup.dir)?;
    // `own` once is the container's own attachment; twice or more, an
    // ancestor has the same (shared) program attached.
    if effective.iter().all(|id| *id == own) && effective.len() <= 1 {
        return Ok(Vec::new());
    }
    let mut all = device_programs(fs, cgroup)?;
    all.retain(|p| !p.is_own(own, &cgroup.path));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_from_names() {
        assert_eq!(Owner::from_name("ctdev_device"), Owner::Ctdev);
        assert_eq!(Owner::from_name("sd_devices"), Owner::Systemd);
        assert_eq!(Owner::from_name("crun"), Owner::Crun);
        assert_eq!(Owner::from_name(""), Owner::Unknown);
        // The text form is the JSON form.
        for o in [
            Owner::Ctdev,
            Owner::Systemd,
            Owner::Crun,
            Owner::Lxc,
            Owner::Unknown,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
