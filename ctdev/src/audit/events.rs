//! Denial events: reading the pinned ring buffer and turning raw events into
//! what an operator needs (container, process, device name, deciding rule).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{Map, MapData, RingBuf};
use ctdev_common::{DenyEvent, LOOKUP_ORDER, NO_MATCH};
use serde::Serialize;

use crate::cgroup::CgroupFs;
use crate::devname::device_names;
use crate::kernel::pins::PinRoot;
use crate::kernel::policy_map::PolicyMapError;
use crate::rule::{Access, DevNumber, DeviceType, Rule};
use crate::runtimes::k8s::{self, PodContainer, PodMap};

/// Opens the pinned denial-event ring buffer. Only one reader should
/// consume it at a time: events one reader takes, another does not see.
pub fn open_ring(pins: &PinRoot) -> Result<RingBuf<MapData>, PolicyMapError> {
    let path = pins.events_map();
    if !path.exists() {
        return Err(PolicyMapError::Missing { path });
    }
    crate::kernel::counters::verify_any(pins, &path)?;
    let op = |source| PolicyMapError::Op {
        path: path.clone(),
        op: "open",
        source,
    };
    let data = MapData::from_pin(&path).map_err(op)?;
    RingBuf::try_from(Map::RingBuf(data)).map_err(op)
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<DenyEvent> {
    if bytes.len() < std::mem::size_of::<DenyEvent>() {
        return None;
    }
    // SAFETY: the record holds at least one DenyEvent, which is Pod (any bit
    // pattern is valid); read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DenyEvent>()) })
}

/// The device of an event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceRef {
    /// `b` or `c`.
    #[serde(rename = "type")]
    pub dev_type: DeviceType,
    pub major: u32,
    pub minor: u32,
    /// Host device name, if sysfs knows it.
    pub name: Option<String>,
}

/// A denial as `ctdev monitor` reports it (one JSON line each with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct DenialView {
    /// Always `"denied"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Wall-clock time, RFC 3339 UTC.
    pub time: String,
    /// Policy id of the container that denied it.
    pub policy_id: u64,
    /// The container's cgroup (hierarchy path), if it still exists.
    pub container: Option<PathBuf>,
    /// cgroup of the task (the container's or one of its sub-cgroups).
    pub cgroup: Option<PathBuf>,
    /// cgroup id of the task.
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    /// Real uid (host view).
    pub uid: u32,
    /// Real gid (host view).
    pub gid: u32,
    /// The task's command name (`comm`), recorded by the kernel.
    pub comm: String,
    /// Command line of the process while it runs, else its `comm`.
    pub command: String,
    pub device: DeviceRef,
    /// Requested access.
    pub access: Access,
    /// The entry that decided (`null`: no entry matched).
    pub rule: Option<String>,
    /// The Kubernetes pod container (from the pod map of the NRI plugin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodContainer>,
}

/// A report that the kernel dropped denial events (rate limit or full ring).
#[derive(Debug, Clone, Serialize)]
pub struct DroppedView {
    /// Always `"dropped"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Policy id of the container.
    pub policy_id: u64,
    /// The container's cgroup, if it still exists.
    pub container: Option<PathBuf>,
    /// Events dropped since the previous report.
    pub dropped: u64,
    /// Events dropped in total.
    pub total: u64,
    /// The Kubernetes pod container (from the pod map of the NRI plugin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodContainer>,
}

/// Turns raw events into [`DenialView`]s, caching cgroup paths.
pub struct Enricher<'a> {
    cgroups: &'a CgroupFs,
    sys_dev: PathBuf,
    paths: HashMap<u64, Option<PathBuf>>,
    /// Pods by policy id (the pod map is read again for an id not seen yet).
    pods: HashMap<u64, Option<PodContainer>>,
    /// Wall clock minus monotonic clock, to date kernel timestamps.
    offset: Duration,
}

impl<'a> Enricher<'a> {
    /// An enricher resolving names with `cgroups` and `/sys/dev`.
    pub fn new(cgroups: &'a CgroupFs, sys_dev: PathBuf) -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            cgroups,
            sys_dev,
            paths: HashMap::new(),
            pods: HashMap::new(),
            offset: wall.saturating_sub(mono),
        }
    }

    /// The hierarchy path of cgroup `id` (looked up once, then cached).
    pub fn cgroup_path(&mut self, id: u64) -> Option<PathBuf> {
        if let Some(p) = self.paths.get(&id) {
            return p.clone();
        }
        let path = self.cgroups.find_ids(&[id]).remove(&id).map(|c| c.path);
        self.paths.insert(id, path.clone());
        path
    }

    /// The pod container of policy `id`, if the NRI plugin's pod map names
    /// it (read again for each id not seen yet).
    pub fn pod(&mut self, id: u64) -> Option<PodContainer> {
        if let Some(p) = self.pods.get(&id) {
            return p.clone();
        }
        let map = PodMap::load(&k8s::state_dir()).unwrap_or_default();
        let cgroup = self.cgroup_path(id);
        let pod = super::names::pod_of(&map, id, cgroup.as_deref());
        self.pods.insert(id, pod.clone());
        pod
    }

    /// The operator's view of one event.
    pub fn denial(&mut self, e: &DenyEvent) -> DenialView {
        let dev_type = DeviceType::from_kernel(e.dev_type).unwrap_or(DeviceType::All);
        let time = UNIX_EPOCH + self.offset + Duration::from_nanos(e.ktime_ns);
        let rule = LOOKUP_ORDER
            .iter()
            .find(|k| **k as u32 == e.matched_kind && e.matched_kind != NO_MATCH)
            .and_then(|k| {
                Rule::from_entry(
                    &k.key(e.policy_id, e.dev_type, e.major, e.minor),
                    e.matched_access,
                )
            })
            .map(|r| r.to_string());
        let comm = String::from_utf8_lossy(e.comm.split(|b| *b == 0).next().unwrap_or_default())
            .into_owned();
        DenialView {
            kind: "denied",
            time: humantime::format_rfc3339_millis(time).to_string(),
            policy_id: e.policy_id,
            container: self.cgroup_path(e.policy_id),
            cgroup: self.cgroup_path(e.cgroup_id),
            cgroup_id: e.cgroup_id,
            pid: e.pid,
            tgid: e.tgid,
            uid: e.uid,
            gid: e.gid,
            command: command_line(e.tgid).unwrap_or_else(|| comm.clone()),
            comm,
            device: DeviceRef {
                dev_type,
                major: e.major,
                minor: e.minor,
                name: device_names(
                    &self.sys_dev,
                    dev_type,
                    DevNumber::Exact(e.major),
                    DevNumber::Exact(e.minor),
                )
                .into_iter()
                .next(),
            },
            access: Access::from_bits(e.access),
            rule,
            pod: self.pod(e.policy_id),
        }
    }
}

/// The command line of a process (NUL-separated in /proc), space-joined.
fn command_line(tgid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{tgid}/cmdline")).ok()?;
    let text: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!text.is_empty()).then(|| text.join(" "))
}

/// One line of text for a denial (`ctdev monitor` without `--json`).
pub fn render_denial(d: &DenialView) -> String {
    let numbers = format!(
        "{} {}:{}",
        d.device.dev_type.letter(),
        d.device.major,
        d.device.minor
    );
    let device = match &d.device.name {
        Some(name) => format!("{name} ({numbers})"),
        None => numbers,
    };
    let mut container = d
        .container
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("policy {}", d.policy_id));
    if let Some(p) = &d.pod {
        container = format!("{container} (pod {})", p.name());
    }
    let why = match &d.rule {
        Some(r) => format!("entry `{r}` does not allow it"),
        None => "no entry matches".into(),
    };
    format!(
        "{} denied {} on {device} to pid {} uid {} `{}` in {container}: {why}",
        d.time, d.access, d.tgid, d.uid, d.command,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_whole_events() {
        let e = DenyEvent {
            policy_id: 7,
            major: 1,
            minor: 3,
            access: 2,
            ..Default::default()
        };
        // SAFETY: DenyEvent is a plain #[repr(C)] struct of integers.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const DenyEvent).cast::<u8>(),
                std::mem::size_of::<DenyEvent>(),
            )
        };
        assert_eq!(decode(bytes), Some(e));
        assert_eq!(decode(&bytes[..10]), None);
    }
}
