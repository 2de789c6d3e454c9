//! The audit views: what `ctdev list` prints and `list --json` serialises
//! (format version 1). Output only: no operation reads a view back.

use std::path::PathBuf;

use serde::Serialize;

use crate::audit::drift::Drift;
use crate::kernel::attached::DeviceProgram;
use crate::kernel::counters::Stats;
use crate::ops::LinkState;
use crate::rule::{Access, DevNumber, DeviceType, Rule};
use crate::runtimes;

/// One policy entry as shown to operators.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleView {
    /// The entry in rule syntax, e.g. `c 10:200 rw`.
    pub rule: String,
    /// `b` or `c`.
    #[serde(rename = "type")]
    pub dev_type: DeviceType,
    /// Major number or `"*"`.
    pub major: DevNumber,
    /// Minor number or `"*"`.
    pub minor: DevNumber,
    /// Allowed access letters (`""` for an explicit deny entry).
    pub access: Access,
    /// Host device nodes this entry covers (`/dev/...`), where sysfs names them.
    pub devices: Vec<String>,
    /// Accesses this entry allowed since it was created or counters were reset.
    pub hits: u64,
    /// CDI devices (`vendor/class=name`) whose `ctdev add` gave this entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cdi: Vec<String>,
}

impl RuleView {
    /// The view of `rule` with the host nodes it covers, no hits and no
    /// CDI source yet (`list` adds those).
    pub fn of(rule: &Rule, devices: Vec<String>) -> Self {
        RuleView {
            rule: rule.to_string(),
            dev_type: rule.dev_type,
            major: rule.major,
            minor: rule.minor,
            access: rule.access,
            devices,
            hits: 0,
            cdi: Vec::new(),
        }
    }
}

/// Which program layout enforces a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Its own program instance and maps (`tables/`, `counters/`).
    PerContainer,
    /// The shared program (`shared-*/`), its policy in cgroup storage.
    Shared,
}

/// A container under policy, as `ctdev list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    /// Policy id (= cgroup id at attach time).
    pub policy_id: u64,
    /// cgroup path inside the hierarchy; `null` if the cgroup is gone.
    pub cgroup: Option<PathBuf>,
    /// cgroup directory; `null` if the cgroup is gone.
    pub cgroup_dir: Option<PathBuf>,
    /// cgroup id the link is attached to (0 once the cgroup is gone).
    pub cgroup_id: u64,
    /// Kernel id of the program instance (0 once detached).
    pub program_id: u32,
    /// Kernel id of the bpf link.
    pub link_id: u32,
    /// Where the link is pinned.
    pub link_pin: PathBuf,
    /// `per_container` or `shared`: which program the link attaches.
    pub layout: Layout,
    /// `enforcing`; `detached` when the program is off but the pin is left
    /// (an interrupted detach: run `ctdev detach` again); or `defunct` when
    /// the cgroup was removed (detach with `id:N`).
    pub state: LinkState,
    /// Policy entries, most specific first per device.
    pub rules: Vec<RuleView>,
    /// Denials and denial events of this container.
    #[serde(flatten)]
    pub stats: Stats,
    /// Device programs besides this container's ctdev program that also
    /// decide for it (attached to its cgroup or an ancestor): the kernel
    /// allows an access only if all of them allow it.
    pub other_programs: Vec<DeviceProgram>,
    /// Differences between the container's /dev and its policy (`list --drift`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    /// The Kubernetes pod container this is, from the pod map of `ctdev nri`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<runtimes::k8s::PodContainer>,
    /// A defunct entry's cgroup as it was at attach time (recorded by
    /// ctdev; absent when the cgroup still exists or nothing recorded it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub former_cgroup: Option<PathBuf>,
    /// CDI devices added to this container (`ctdev add TARGET
    /// vendor/class=name`), with the nodes and mounts each gave.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cdi: Vec<crate::cdi::apply::CdiSource>,
}

/// The whole audit dump (`ctdev list --json`), format version 1.
#[derive(Debug, Clone, Serialize)]
pub struct Dump {
    /// Format version of this JSON document.
    pub version: u32,
    /// The pin root that was read.
    pub pin_root: PathBuf,
    /// The shared policy map, if it exists.
    pub policy_map: Option<MapView>,
    /// Containers under policy.
    pub containers: Vec<ContainerView>,
    /// Entries whose container has no link (left by a crash; `ctdev detach id:N` clears them).
    pub orphaned: Vec<OrphanView>,
    /// Files in the pin root that ctdev did not create (never touched).
    pub foreign_pins: Vec<PathBuf>,
    /// What is wrong with the pins (a pin removed by hand, entries without
    /// a link), each with what to do about it.
    pub problems: Vec<String>,
}

/// Summary of the policy map.
#[derive(Debug, Clone, Serialize)]
pub struct MapView {
    /// Pin path (for `bpftool map dump pinned PATH`).
    pub pin: PathBuf,
    /// Kernel map id.
    pub map_id: u32,
    /// Entries in use.
    pub entries: usize,
    /// Capacity.
    pub capacity: u32,
}

/// Entries of a policy id that has no link.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanView {
    /// The policy id.
    pub policy_id: u64,
    /// Its entries.
    pub rules: Vec<RuleView>,
}
