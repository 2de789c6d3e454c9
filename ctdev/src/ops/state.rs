//! A container's policy state as typed values ([`ContainerState`],
//! [`LinkState`]), read for that one container: what the operations plan
//! from, and what the audit views are built from.

use serde::Serialize;

use super::{ContainerLock, Ctdev, Error, Resolved};
use crate::cgroup::Cgroup;
use crate::kernel::attachment::PinnedLink;
use crate::kernel::policy_map::{PolicyMap, PolicyMapError};
use crate::plan::Entries;
use crate::target::Target;

/// State of a container's link, as a typed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The program is attached to the live cgroup.
    Enforcing,
    /// The program is off but the pin is left (an interrupted detach).
    Detached,
    /// The cgroup is gone.
    Defunct,
}

impl LinkState {
    /// The state of a container whose cgroup is there or gone
    /// (`cgroup_live`), whose link holds its program or not (`link_live`).
    pub fn of(cgroup_live: bool, link_live: bool) -> Self {
        match (cgroup_live, link_live) {
            (true, true) => LinkState::Enforcing,
            // Program detached, pin left (an interrupted detach).
            (true, false) => LinkState::Detached,
            (false, _) => LinkState::Defunct,
        }
    }

    /// The name `list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Enforcing => "enforcing",
            LinkState::Detached => "detached",
            LinkState::Defunct => "defunct",
        }
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an operation learns that a container's link still attaches its
/// program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkCheck {
    /// Ask the kernel what the link attaches (`BPF_OBJ_GET_INFO_BY_FD`):
    /// a link detached by hand shows as [`LinkState::Detached`]. The call
    /// waits for the kernel's `cgroup_mutex`, which every cgroup `mkdir`,
    /// `rmdir` and program attach on the host holds.
    #[default]
    Kernel,
    /// The pin stands for the attachment (ctdev removes a link's pin before
    /// it detaches the link), read without any cgroup lock: for the
    /// operations that never read the link's program (rule changes), and
    /// the daemon's device events, whose latency under container churn is
    /// otherwise the wait for that lock. A pinned link is taken as
    /// [`LinkState::Enforcing`] while its cgroup lives.
    Pin,
}

/// One container's policy state, read for that container only.
#[derive(Debug, Clone)]
pub struct ContainerState {
    /// The live cgroup, if any.
    pub cgroup: Option<Cgroup>,
    pub policy_id: u64,
    /// Link state.
    pub link: LinkState,
    /// Program id (0 once detached; `None` when read with [`LinkCheck::Pin`]).
    pub program_id: Option<u32>,
    /// The container's entries.
    pub entries: Entries,
}

impl Ctdev {
    /// One container's state (link and entries), without reading any other
    /// container's. Fails with [`Error::NotUnderPolicy`] when it has no link.
    pub fn container(&self, target: &Target) -> Result<ContainerState, Error> {
        self.container_in(target, &mut None)
    }

    /// The policy map, opened once for a command that passes it down
    /// (`None` when it is not pinned; fails when links are pinned but the
    /// map pin is gone, see [`Ctdev::check_map_pin`]).
    pub(crate) fn open_policy_map(&self) -> Result<Option<PolicyMap>, Error> {
        match PolicyMap::open(&self.pins.policy_map()) {
            Ok(map) => Ok(Some(map)),
            Err(PolicyMapError::Missing { .. }) => {
                self.check_map_pin()?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// [`Ctdev::container`] reading the entries through `map`: the map the
    /// command opened already, or (`None`) opened here and left in `map`
    /// for the command's later steps.
    pub(crate) fn container_in(
        &self,
        target: &Target,
        map: &mut Option<PolicyMap>,
    ) -> Result<ContainerState, Error> {
        let (resolved, link) = self.require_attached(target)?;
        self.container_of(resolved, Some(link), map)
    }

    /// [`Ctdev::container_in`] under the container's lock: the target is
    /// resolved through the lock ([`Ctdev::resolve_locked`]: the
    /// resolution that named it when the cgroup is still there, and never
    /// another container than the one locked), learning the link's state
    /// as `check` says.
    pub(crate) fn container_locked(
        &self,
        lock: &ContainerLock,
        target: &Target,
        map: &mut Option<PolicyMap>,
        check: LinkCheck,
    ) -> Result<ContainerState, Error> {
        let resolved = self.resolve_locked(lock, target)?;
        // The pin root exists while its container lock is held.
        match check {
            LinkCheck::Kernel => {
                let link = self.require_link(target, &resolved)?;
                self.container_of(resolved, Some(link), map)
            }
            LinkCheck::Pin => {
                self.require_pin(target, &resolved)?;
                self.container_of(resolved, None, map)
            }
        }
    }

    /// The state of `resolved`, whose link is `link` as the kernel
    /// describes it (`None`: pinned, not asked).
    fn container_of(
        &self,
        resolved: Resolved,
        link: Option<PinnedLink>,
        map: &mut Option<PolicyMap>,
    ) -> Result<ContainerState, Error> {
        let link_live = link
            .as_ref()
            .is_none_or(|l| l.is_live_for(resolved.policy_id));
        let link_state = LinkState::of(resolved.cgroup.is_some(), link_live);
        if map.is_none() {
            *map = self.open_policy_map()?;
        }
        let entries = match map {
            Some(map) => map.entries_of(resolved.policy_id)?,
            None => Entries::new(),
        };
        Ok(ContainerState {
            cgroup: resolved.cgroup,
            policy_id: resolved.policy_id,
            link: link_state,
            program_id: link.map(|l| l.info.prog_id),
            entries,
        })
    }
}
