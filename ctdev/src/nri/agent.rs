//! What the plugin does for each container, in ctdev's terms (blocking;
//! the ttrpc handlers call it on tokio's blocking pool).
//!
//! - create: the policy's decision → the device nodes and cgroup rules the
//!   runtime must give at create time (an NRI container adjustment), or a
//!   refusal that fails the container's creation;
//! - start: the runtime created the cgroup and its own device program and
//!   the workload has not run yet: `takeover` puts ctdev's program on,
//!   verifies it and detaches the runtime's; an error aborts the start;
//! - synchronize: running containers the plugin missed (it was down) are
//!   taken over the same way;
//! - remove: the container's policy and pins go, and so does its record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;

use crate::ops::Ctdev;
use crate::rule::{Access, DeviceNode, DeviceType, Rule};
use crate::runtimes::k8s::{PodContainer, PodMap};
use crate::takeover::{takeover, StepTimer, Steps, TakeoverOptions};
use crate::target::Target;

use super::journal::Journal;
use super::policy::{Decision, NriPolicy, PodInfo, PolicyError};
use super::proto::api;

/// A device node to pass in at create time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGrant {
    /// The node as stat'ed on the host.
    pub node: DeviceNode,
    /// The access granted.
    pub access: Access,
}

/// What the runtime must give a container at create time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreatePlan {
    /// Nodes to create inside.
    pub nodes: Vec<NodeGrant>,
    /// cgroup rules to add (for the nodes and the rules granted).
    pub rules: Vec<Rule>,
}

/// One line of `STATE_DIR/events.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event<'a> {
    /// Unix time in seconds.
    pub time: f64,
    /// `refused`, `attached`, `attach-failed`, `detached`, `reloaded`,
    /// `reload-failed`.
    pub event: &'a str,
    /// `namespace/pod/container`.
    pub container: String,
    /// The runtime's container ID.
    pub container_id: &'a str,
    /// The policy entry that selected it.
    pub entry: Option<&'a str>,
    /// What happened, for the operator.
    pub detail: String,
    /// How long the plugin held the container's start (`attached` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took: Option<Took>,
}

/// Time the plugin spent in a container's CreateContainer and
/// StartContainer (the runtime waits for both): what the plugin adds to
/// the container's start, besides the two NRI round trips.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Took {
    /// CreateContainer: the decision and the adjustment.
    pub create_us: u64,
    /// StartContainer: the takeover (attach, verify, detach runc's program).
    pub start_us: u64,
    /// StartContainer's steps (µs), the takeover's among them.
    pub steps: Steps,
}

/// The plugin's state: ctdev, the policy, the pod map.
pub struct Agent {
    ctdev: Ctdev,
    /// Swapped as a whole on reload: each decision sees the old or the new
    /// policy, never a mix.
    policy: RwLock<Arc<NriPolicy>>,
    /// Pod map and events, written off the start path (its directory is
    /// fixed at start; a reload does not move it).
    journal: Journal,
    /// What CreateContainer did per container ID, until its start.
    created: Mutex<HashMap<String, Created>>,
}

/// A container's CreateContainer, kept for its StartContainer.
struct Created {
    /// Time spent in it (µs).
    us: u64,
    /// The policy it decided with, and the plan given to the runtime:
    /// the start reuses the plan when the policy is still the same one.
    policy: Arc<NriPolicy>,
    plan: CreatePlan,
}

/// The pod and container identity of an NRI pod and container.
pub(crate) fn pod_info(pod: &api::PodSandbox, c: &api::Container) -> PodInfo {
    let mut annotations: BTreeMap<String, String> = c
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The pod's own annotations win over a container's of the same key.
    annotations.extend(pod.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    PodInfo {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        labels: pod
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        annotations,
        container: c.name.clone(),
    }
}

/// The cgroup path (inside the hierarchy) of an NRI container: cgroupfs
/// paths as given; the systemd driver's `SLICE:PREFIX:NAME` expanded to
/// `/a.slice/a-b.slice/PREFIX-NAME.scope`.
pub(crate) fn cgroup_path(cgroups_path: &str) -> Option<PathBuf> {
    if cgroups_path.is_empty() {
        return None;
    }
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    match parts.as_slice() {
        [_] => Some(Path::new("/").join(cgroups_path.trim_start_matches('/'))),
        [slice, prefix, name] => {
            let mut path = PathBuf::from("/");
            if let Some(stem) = slice.strip_suffix(".slice") {
                let mut acc = String::new();
                for part in stem.split('-') {
                    if !acc.is_empty() {
                        acc.push('-');
                    }
                    acc.push_str(part);
                    path.push(format!("{acc}.slice"));
                }
            } else if !slice.is_empty() {
                return None;
            }
            path.push(if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            });
            Some(path)
        }
        _ => None,
    }
}

fn device_type_letter(t: DeviceType) -> &'static str {
    match t {
        DeviceType::Block => "b",
        _ => "c",
    }
}

/// The NRI adjustment for a create plan.
pub(crate) fn adjustment(plan: &CreatePlan) -> api::ContainerAdjustment {
    let mut linux = api::LinuxContainerAdjustment::new();
    for g in &plan.nodes {
        let mut d = api::LinuxDevice::new();
        d.path = g.node.path.display().to_string();
        d.type_ = device_type_letter(g.node.dev_type).into();
        d.major = i64::from(g.node.major);
        d.minor = i64::from(g.node.minor);
        let mut mode = api::OptionalFileMode::new();
        mode.value = g.node.mode & 0o7777;
        d.file_mode = protobuf::MessageField::some(mode);
        linux.devices.push(d);
    }
    let mut res = api::LinuxResources::new();
    for r in &plan.rules {
        let mut d = api::LinuxDeviceCgroup::new();
        d.allow = true;
        d.type_ = match r.dev_type {
            DeviceType::Block => "b",
            DeviceType::Char => "c",
            _ => "a",
        }
        .into();
        if let Some(m) = r.major.exact() {
            let mut v = api::OptionalInt64::new();
            v.value = i64::from(m);
            d.major = protobuf::MessageField::some(v);
        }
        if let Some(m) = r.minor.exact() {
            let mut v = api::OptionalInt64::new();
            v.value = i64::from(m);
            d.minor = protobuf::MessageField::some(v);
        }
        d.access = r.access.to_string().replace("''", "");
        res.devices.push(d);
    }
    if !res.devices.is_empty() {
        linux.resources = protobuf::MessageField::some(res);
    }
    let mut adjust = api::ContainerAdjustment::new();
    if !linux.devices.is_empty() || linux.resources.is_some() {
        adjust.linux = protobuf::MessageField::some(linux);
    }
    adjust
}

fn micros(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Agent {
    /// An agent over `ctdev` with `policy`; reads the pod map left by a
    /// previous run.
    pub fn new(ctdev: Ctdev, policy: NriPolicy) -> Self {
        let pods = PodMap::load(&policy.state_dir).unwrap_or_else(|e| {
            tracing::warn!("ignoring unreadable pod map: {e}");
            PodMap::default()
        });
        Self {
            ctdev,
            journal: Journal::new(policy.state_dir.clone(), pods),
            policy: RwLock::new(Arc::new(policy)),
            created: Mutex::new(HashMap::new()),
        }
    }

    /// Loads (or opens) the shared program when attaches use it, so that
    /// the first container's start does not pay for its verification. The
    /// plugin's `Ctdev` keeps it pinned when its last container goes
    /// ([`crate::ops::Config::keep_programs`]). A failure is only logged:
    /// the first start then loads it, or fails closed.
    pub fn preload(&self) {
        if self.ctdev.config().layout != crate::ops::Layout::Shared {
            return;
        }
        let res = (|| -> Result<u32, String> {
            let object = crate::kernel::loader::ProgramObject::new(
                self.ctdev.config().bpf_object.as_deref(),
            )
            .map_err(|e| e.to_string())?;
            let _lock = self.ctdev.lock().map_err(|e| e.to_string())?;
            let shared =
                crate::kernel::shared::SharedProgram::open_or_load(&object, self.ctdev.pins())
                    .map_err(|e| e.to_string())?;
            shared.prog_id().map_err(|e| e.to_string())
        })();
        match res {
            Ok(id) => tracing::debug!(program = id, "shared program loaded before the first start"),
            Err(e) => {
                tracing::warn!("shared program not preloaded (the first start loads it): {e}")
            }
        }
    }

    /// The policy in use (a snapshot: a reload does not change it).
    pub fn policy(&self) -> Arc<NriPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the policy file at `path` again. A valid file replaces the
    /// policy for every later decision (containers already running keep
    /// what they got); an invalid or missing one keeps the policy in use.
    /// Either way an event says so. The state directory stays where it was.
    pub fn reload(&self, path: &Path) -> Result<(), PolicyError> {
        let who = path.display().to_string();
        match NriPolicy::load(path) {
            Ok(mut new) => {
                if new.state_dir != self.journal.dir() {
                    // Fixed at start (and possibly given by --state-dir).
                    tracing::debug!(
                        "state dir stays {} (the file says {})",
                        self.journal.dir().display(),
                        new.state_dir.display()
                    );
                    new.state_dir = self.journal.dir().to_path_buf();
                }
                let entries = new.entries.len();
                *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                tracing::info!(file = %who, entries, "NRI policy reloaded");
                self.event(&Event {
                    time: now(),
                    took: None,
                    event: "reloaded",
                    container: String::new(),
                    container_id: "",
                    entry: None,
                    detail: format!("{who}: {entries} entries"),
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!("NRI policy not reloaded, the previous one stays in use: {e}");
                self.event(&Event {
                    time: now(),
                    took: None,
                    event: "reload-failed",
                    container: String::new(),
                    container_id: "",
                    entry: None,
                    detail: format!("{e}; the previous policy stays in use"),
                });
                Err(e)
            }
        }
    }

    /// Writes an event (and what the journal has queued) now.
    fn event(&self, event: &Event<'_>) {
        self.event_later(event);
        self.journal.flush();
    }

    /// Queues an event: written after the reply to the runtime.
    fn event_later(&self, event: &Event<'_>) {
        if let Ok(line) = serde_json::to_string(event) {
            self.journal.event(line);
        }
    }

    /// Writes the pod map and events queued (for a clean exit: dropping the
    /// agent does too).
    pub fn flush(&self) {
        self.journal.flush();
    }

    /// CreateContainer: the adjustment, or the refusal (already logged).
    pub fn create(&self, info: &PodInfo, container_id: &str) -> Result<CreatePlan, String> {
        let t = Instant::now();
        let policy = self.policy();
        let plan = self.create_with(&policy, info, container_id)?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                container_id.to_string(),
                Created {
                    us: micros(t),
                    policy,
                    plan: plan.clone(),
                },
            );
        Ok(plan)
    }

    fn create_with(
        &self,
        policy: &NriPolicy,
        info: &PodInfo,
        container_id: &str,
    ) -> Result<CreatePlan, String> {
        let who = format!("{}/{}/{}", info.namespace, info.pod, info.container);
        match policy.decide(info) {
            Decision::Unmanaged => Ok(CreatePlan::default()),
            Decision::Refused { entry, reason } => {
                tracing::warn!(container = %who, "refused: {reason}");
                self.event(&Event {
                    time: now(),
                    took: None,
                    event: "refused",
                    container: who,
                    container_id,
                    entry: entry.as_deref(),
                    detail: reason.clone(),
                });
                Err(format!("ctdev: {reason}"))
            }
            Decision::Managed { devices, rules, .. } => {
                let mut plan = CreatePlan {
                    rules,
                    ..Default::default()
                };
                for (path, access) in devices {
                    match DeviceNode::stat(&path) {
                        Ok(node) => {
                            plan.rules.push(Rule::device(
                                node.dev_type,
                                node.major,
                                node.minor,
                                access,
                            ));
                            plan.nodes.push(NodeGrant { node, access });
                        }
                        // Not present at start: hot-plug it later (`ctdev add`).
                        Err(e) => tracing::warn!(container = %who, "device not passed in: {e}"),
                    }
                }
                Ok(plan)
            }
        }
    }

    /// StartContainer: take the container over (fail-closed: an error aborts
    /// the start). `Ok(false)` when the policy leaves it to the runtime.
    pub fn start(
        &self,
        info: &PodInfo,
        pod_uid: &str,
        container_id: &str,
        cgroups_path: &str,
    ) -> Result<bool, String> {
        let t = Instant::now();
        let mut timer = StepTimer::default();
        let created = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(container_id);
        let who = format!("{}/{}/{}", info.namespace, info.pod, info.container);
        // One policy for the whole start, even if a reload lands meanwhile.
        let policy = self.policy();
        let entry = match policy.decide(info) {
            Decision::Unmanaged => return Ok(false),
            Decision::Refused { reason, .. } => return Err(format!("ctdev: {reason}")),
            Decision::Managed { entry, .. } => entry,
        };
        timer.mark("decide");
        let fail = |detail: String| {
            tracing::error!(container = %who, "{detail}");
            self.event(&Event {
                time: now(),
                took: None,
                event: "attach-failed",
                container: who.clone(),
                container_id,
                entry: Some(&entry),
                detail: detail.clone(),
            });
            Err(format!("ctdev: {who}: {detail}"))
        };
        let Some(cgroup) = cgroup_path(cgroups_path) else {
            return fail(format!("cannot use cgroups path {cgroups_path:?}"));
        };
        // The rules granted at create time are in the runtime's own state
        // (the adjustment), which `takeover` imports; they are added as
        // given. The create's plan when it was made with this policy (no
        // second stat of the nodes), else the plan again.
        let create_us = created.as_ref().map(|c| c.us);
        let plan = match created {
            Some(c) if Arc::ptr_eq(&c.policy, &policy) => c.plan,
            _ => self.create_with(&policy, info, container_id)?,
        };
        timer.mark("plan");
        let options = TakeoverOptions {
            runtime_roots: policy.runtime_roots.clone(),
            container_id: Some(container_id.to_string()),
            ..Default::default()
        };
        let report = match takeover(
            &self.ctdev,
            &Target::Cgroup(cgroup.clone()),
            &options,
            &plan.rules,
        ) {
            Ok(r) => r,
            Err(e) => return fail(format!("takeover of {} failed: {e}", cgroup.display())),
        };
        timer.mark("takeover");
        tracing::info!(container = %who, cgroup = %cgroup.display(), policy_id = report.attach.policy_id,
            detached = report.detached.len(), "attached");
        // The pod map is saved after the reply (it only names containers).
        self.journal.change(|pods| {
            pods.upsert(pod_record(
                info,
                pod_uid,
                container_id,
                cgroup.clone(),
                report.attach.policy_id,
                entry.clone(),
            ))
        });
        timer.mark("record");
        // create_us is absent for a container the plugin did not see
        // created (taken over at Synchronize).
        let mut steps = timer.finish();
        steps
            .0
            .extend(report.steps.0.iter().map(|(name, us)| (*name, *us)));
        let took = create_us.map(|create_us| Took {
            create_us,
            start_us: micros(t),
            steps,
        });
        self.event_later(&Event {
            time: now(),
            took,
            event: "attached",
            container: who,
            container_id,
            entry: Some(&entry),
            detail: format!(
                "{} (policy {}, program {}; runtime program(s) detached: {})",
                cgroup.display(),
                report.attach.policy_id,
                report.attach.program_id,
                report
                    .detached
                    .iter()
                    .map(|p| p.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        Ok(true)
    }

    /// Records a container the policy leaves alone (so `k8s:` targets and
    /// `list` still name it).
    pub fn record(&self, info: &PodInfo, pod_uid: &str, container_id: &str, cgroups_path: &str) {
        let Some(cgroup) = cgroup_path(cgroups_path) else {
            return;
        };
        self.journal.change(|pods| {
            pods.upsert(pod_record(
                info,
                pod_uid,
                container_id,
                cgroup,
                0,
                String::new(),
            ))
        });
    }

    /// RemoveContainer: forget it, detach its policy.
    pub fn remove(&self, container_id: &str) {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(container_id);
        let Some(rec) = self.journal.change(|pods| pods.remove(container_id)) else {
            return;
        };
        if rec.policy_id == 0 {
            return;
        }
        match self.ctdev.detach(&Target::PolicyId(rec.policy_id)) {
            Ok(_) => {
                tracing::info!(container = %rec.name(), policy_id = rec.policy_id, "detached");
                self.event(&Event {
                    time: now(),
                    took: None,
                    event: "detached",
                    container: rec.name(),
                    container_id,
                    entry: Some(&rec.entry),
                    detail: format!("policy {}", rec.policy_id),
                });
            }
            Err(e) => tracing::debug!(container = %rec.name(), "nothing to detach: {e}"),
        }
    }

    /// Synchronize: take over running containers that are not under ctdev
    /// yet (started while the plugin was away), record every container,
    /// forget containers that are gone.
    pub fn synchronize(&self, pods: &[api::PodSandbox], containers: &[api::Container]) {
        let by_id: std::collections::HashMap<&str, &api::PodSandbox> =
            pods.iter().map(|p| (p.id.as_str(), p)).collect();
        let live: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        let gone: Vec<String> = self.journal.read(|map| {
            map.containers
                .iter()
                .filter(|c| !live.contains(c.container_id.as_str()))
                .map(|c| c.container_id.clone())
                .collect()
        });
        for id in gone {
            self.remove(&id);
        }
        // Plans of creates whose container the runtime no longer lists (a
        // RemoveContainer missed across a reconnect) are dropped.
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live.contains(id.as_str()));
        for c in containers {
            let Some(pod) = by_id.get(c.pod_sandbox_id.as_str()) else {
                continue;
            };
            let info = pod_info(pod, c);
            let cgroups_path = c
                .linux
                .as_ref()
                .map(|l| l.cgroups_path.as_str())
                .unwrap_or("");
            let running = c.state.enum_value() == Ok(api::ContainerState::CONTAINER_RUNNING);
            if !running {
                self.record(&info, &pod.uid, &c.id, cgroups_path);
                continue;
            }
            match self.start(&info, &pod.uid, &c.id, cgroups_path) {
                Ok(true) => {}
                Ok(false) => self.record(&info, &pod.uid, &c.id, cgroups_path),
                Err(e) => tracing::error!("synchronize: {e}"),
            }
        }
    }
}

/// The pod map's record of one container (`policy_id` 0 and no `entry`:
/// one the policy leaves alone).
fn pod_record(
    info: &PodInfo,
    pod_uid: &str,
    container_id: &str,
    cgroup: PathBuf,
    policy_id: u64,
    entry: String,
) -> PodContainer {
    PodContainer {
        namespace: info.namespace.clone(),
        pod: info.pod.clone(),
        pod_uid: pod_uid.into(),
        container: info.container.clone(),
        container_id: container_id.into(),
        cgroup,
        policy_id,
        entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths() {
        assert_eq!(cgroup_path(""), None);
        assert_eq!(
            cgroup_path("/kubepods/besteffort/podX/abc"),
            Some(PathBuf::from("/kubepods/besteffort/podX/abc"))
        );
        assert_eq!(cgroup_path("a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(
            cgroup_path("kubepods-besteffort-pod12.slice:cri-containerd:ab"),
            Some(PathBuf::from(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-ab.scope"
            ))
        );
        assert_eq!(cgroup_path("x:y"), None);
        assert_eq!(cgroup_path("bad:p:n"), None);
    }

    #[test]
    fn adjustment_of_a_plan() {
        let node = DeviceNode {
            path: "/dev/loop-control".into(),
            dev_type: DeviceType::Char,
            major: 10,
            minor: 237,
            mode: 0o20660,
            via_symlink: false,
        };
        let plan = CreatePlan {
            nodes: vec![NodeGrant {
                node,
                access: Access::ALL,
            }],
            rules: vec![
                Rule::device(DeviceType::Char, 10, 237, Access::ALL),
                Rule {
                    dev_type: DeviceType::Block,
                    major: crate::rule::DevNumber::Exact(7),
                    minor: crate::rule::DevNumber::Any,
                    access: Access::parse("r").unwrap(),
                },
            ],
        };
        let a = adjustment(&plan);
        let l = a.linux.as_ref().unwrap();
        assert_eq!(l.devices[0].path, "/dev/loop-control");
        assert_eq!(l.devices[0].type_, "c");
        assert_eq!(l.devices[0].file_mode.value, 0o660);
        let r = &l.resources.devices;
        assert_eq!((r[0].major.value, r[0].minor.value), (10, 237));
        assert_eq!(r[0].access, "rwm");
        assert_eq!(r[1].type_, "b");
        assert!(r[1].minor.is_none());
        assert!(adjustment(&CreatePlan::default()).linux.is_none());
    }
}
