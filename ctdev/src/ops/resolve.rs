//! Target resolution: what a [`Target`] names (a cgroup path, `pid:N`, a
//! policy id, a runtime's container, a pod), the checks that refuse the
//! host's own cgroup, and the "not under policy" error with its hint.
//! Reads cgroupfs and the runtimes' state; changes nothing.

use std::path::PathBuf;

use super::{Ctdev, Error};
use crate::cgroup::Cgroup;
use crate::kernel::attachment::{self, PinnedLink};
use crate::runtimes::{self, RuntimeError};
use crate::target::{RuntimeKind, Target};

/// A resolved target: the policy id, and the cgroup when it exists.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub policy_id: u64,
    /// The live cgroup.
    pub cgroup: Option<Cgroup>,
}

impl Ctdev {
    /// Refuses the root cgroup and any cgroup holding PID 1 (or an ancestor
    /// of PID 1's cgroup) unless `force_host`.
    pub(crate) fn check_not_host(&self, target: &Target, cgroup: &Cgroup) -> Result<(), Error> {
        if self.config.force_host {
            return Ok(());
        }
        let why = if self.cgroups.level(cgroup) == 0 || cgroup.path == std::path::Path::new("/") {
            Some("it is the root cgroup".to_string())
        } else {
            match self.cgroups.cgroup_of_pid(1) {
                Ok(init) if init.path.starts_with(&cgroup.path) => Some(format!(
                    "PID 1 (the host's init) is in {} under it",
                    init.path.display()
                )),
                _ => None,
            }
        };
        match why {
            Some(why) => Err(Error::HostCgroup {
                target: target.to_string(),
                why,
            }),
            None => Ok(()),
        }
    }

    /// Resolves a target to its policy id (and cgroup, when it exists).
    /// Under a container lock, [`Ctdev::resolve_locked`] resolves through
    /// the lock instead.
    pub fn resolve(&self, target: &Target) -> Result<Resolved, Error> {
        let cgroup = match target {
            Target::Cgroup(p) => self.cgroups.cgroup(p)?,
            Target::Pid(pid) => self.cgroups.cgroup_of_pid(*pid)?,
            Target::PolicyId(id) => {
                return Ok(Resolved {
                    policy_id: *id,
                    cgroup: self.cgroups.find_ids(&[*id]).remove(id),
                })
            }
            Target::Runtime(kind, name) => self.one_container(Some(*kind), name)?,
            Target::Name(name) => self.cgroup_or_container(name)?,
            Target::Pod(spec) => {
                let map = runtimes::k8s::PodMap::load(&runtimes::k8s::state_dir())?;
                let found = map.find(spec)?;
                self.cgroups.cgroup(&found.cgroup)?
            }
            Target::CgroupOf { dir, id } => {
                let cgroup = self.cgroups.cgroup(dir)?;
                if cgroup.id != *id {
                    return Err(Error::Recreated {
                        target: target.to_string(),
                        expected: *id,
                        found: cgroup.id,
                    });
                }
                cgroup
            }
        };
        Ok(Resolved {
            policy_id: cgroup.id,
            cgroup: Some(cgroup),
        })
    }

    /// The one container of `runtime` (or of any runtime) named `name`.
    fn one_container(&self, runtime: Option<RuntimeKind>, name: &str) -> Result<Cgroup, Error> {
        let mut found = runtimes::find(&self.cgroups, runtime, name)?;
        match found.len() {
            1 => Ok(found.remove(0).cgroup),
            0 => Err(RuntimeError::NotFound {
                what: runtime
                    .map(|r| r.prefix().to_string())
                    .unwrap_or_else(|| "lxc, docker, podman, containerd or crio".into()),
                name: name.into(),
                tried: "cgroup scopes under the cgroup2 mount".into(),
            }
            .into()),
            _ => Err(RuntimeError::Ambiguous {
                name: name.into(),
                candidates: found
                    .iter()
                    .map(|c| format!("{}:{}", c.runtime.prefix(), c.name))
                    .collect(),
            }
            .into()),
        }
    }

    /// A bare word: a cgroup relative to the mount, or a container of any
    /// runtime; more than one match is an error listing them.
    fn cgroup_or_container(&self, name: &str) -> Result<Cgroup, Error> {
        let as_cgroup = self.cgroups.cgroup(std::path::Path::new(name)).ok();
        let mut found = runtimes::find(&self.cgroups, None, name)?;
        found.retain(|c| as_cgroup.as_ref().is_none_or(|g| g.id != c.cgroup.id));
        match (as_cgroup, found.len()) {
            (Some(g), 0) => Ok(g),
            (None, 1) => Ok(found.remove(0).cgroup),
            (None, 0) => Err(RuntimeError::NotFound {
                what: "cgroup, lxc, docker, podman, containerd or crio".into(),
                name: name.into(),
                tried: format!(
                    "{}/{name} and the runtimes' cgroup scopes",
                    self.cgroups.mount().display()
                ),
            }
            .into()),
            (g, _) => {
                let mut candidates: Vec<String> =
                    g.iter().map(|g| g.path.display().to_string()).collect();
                candidates.extend(
                    found
                        .iter()
                        .map(|c| format!("{}:{}", c.runtime.prefix(), c.name)),
                );
                Err(RuntimeError::Ambiguous {
                    name: name.into(),
                    candidates,
                }
                .into())
            }
        }
    }

    /// [`Error::NotUnderPolicy`] for `target`, with a hint that fits it:
    /// `ctdev attach TARGET` only for a cgroup that is not the root (the
    /// host's own cgroup is never a container), `ctdev list` for an id.
    pub fn not_under_policy(&self, target: &Target) -> Error {
        let hint = match target {
            Target::PolicyId(_) => {
                " (no container has this policy id; `ctdev list` shows the ids in use)".to_string()
            }
            _ => match self.resolve(target).ok().and_then(|r| r.cgroup) {
                Some(c) if c.path == std::path::Path::new("/") => format!(
                    " ({target} is the root cgroup of the cgroup2 hierarchy ({}), not a container: name a container's cgroup)",
                    c.dir.display()
                ),
                _ => format!(" (run `ctdev attach {target}` first)"),
            },
        };
        Error::NotUnderPolicy {
            target: target.to_string(),
            hint,
        }
    }

    /// Opens the live link of a target or fails with [`Error::NotUnderPolicy`].
    pub(crate) fn require_attached(
        &self,
        target: &Target,
    ) -> Result<(Resolved, PinnedLink), Error> {
        let resolved = self.resolve(target)?;
        if !self.pins.exists() {
            return Err(self.not_under_policy(target));
        }
        let link = self.require_link(target, &resolved)?;
        Ok((resolved, link))
    }

    /// The link of a resolved target, or [`Error::NotUnderPolicy`]. The
    /// pin root must exist (a container lock holds it; else the caller
    /// checked).
    pub(crate) fn require_link(
        &self,
        target: &Target,
        resolved: &Resolved,
    ) -> Result<PinnedLink, Error> {
        attachment::open(&self.pins, resolved.policy_id)?
            .ok_or_else(|| self.not_under_policy(target))
    }

    /// [`Ctdev::require_link`] by the pin alone (`attachment::pinned`: no
    /// cgroup lock; see [`super::LinkCheck::Pin`]), or
    /// [`Error::NotUnderPolicy`].
    pub(crate) fn require_pin(&self, target: &Target, resolved: &Resolved) -> Result<(), Error> {
        if attachment::pinned(&self.pins, resolved.policy_id)? {
            Ok(())
        } else {
            Err(self.not_under_policy(target))
        }
    }

    /// The directory of a live cgroup target (for probes and the demo).
    pub fn cgroup_dir(&self, target: &Target) -> Result<PathBuf, Error> {
        self.resolve(target)?
            .cgroup
            .map(|c| c.dir)
            .ok_or_else(|| Error::NeedsCgroup {
                target: target.to_string(),
            })
    }
}
