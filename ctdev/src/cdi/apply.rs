//! `ctdev add TARGET VENDOR/CLASS=NAME` and `ctdev del`: a CDI device's
//! edits applied to (and taken back from) a running container.
//!
//! [`plan`] is pure: it turns the merged edits into the steps that can be
//! done on a running container (device nodes, bind mounts, interfaces) and
//! names every edit that cannot (`env`, `hooks`, `additionalGids`,
//! `intelRdt`, non-bind mounts, fifos): refused unless
//! `--skip-unsupported`, which lists them as skipped.
//!
//! [`add`] then applies nodes (through [`crate::passthrough::add`], so with
//! its checks, fail-closed order and undo), mounts
//! ([`crate::container::mounts::bind`]) and interfaces; a failure undoes the
//! steps done before it, newest first. What was done is written to a small
//! record file (`STATE_DIR/<policy id>/<name>.json`) so [`del`] undoes
//! exactly that — nodes and rules that were already there are left, a rule
//! that had other bits before gets them back — even if the spec changed or
//! vanished since.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::name::QualifiedName;
use super::registry::{LookupError, Registry};
use super::spec::ContainerEdits;
use crate::container::mounts::{self, BindOptions, MountError, Mounted};
use crate::container::nodes::{NodeAction, NodeSpec};
use crate::container::process::{outside_id_of, InitProcess, ProcessError};
use crate::ops::{Ctdev, Error as ControllerError};
use crate::passthrough::{self, AddOptions, PassthroughError};
use crate::rule::{Access, DevNumber, DeviceNode, DeviceType, Rule, RuleError};
use crate::target::Target;

/// Default directory of the CDI record files.
pub const DEFAULT_STATE_DIR: &str = "/run/ctdev/cdi";

/// Why a CDI add/del failed. What was changed before was undone (unless
/// [`CdiError::Undo`] says otherwise).
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// The device is not (usably) defined.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// Edits that cannot be applied to a running container.
    #[error("CDI device {name} has edits that cannot be applied to a running container: {}; `--skip-unsupported` applies the rest and lists these as skipped", items.join("; "))]
    Unsupported {
        name: String,
        /// Each edit, named.
        items: Vec<String>,
    },
    /// A device node edit does not match the host.
    #[error("CDI device {name}: deviceNodes {path}: {reason}")]
    HostNode {
        name: String,
        /// The node's container path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A node or interface step failed.
    #[error(transparent)]
    Passthrough(Box<PassthroughError>),
    /// A mount step failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The container's init could not be used.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The policy could not be read.
    #[error(transparent)]
    Controller(Box<ControllerError>),
    /// The container is under policy but not running.
    #[error("{0} is not running (its cgroup is gone)")]
    NotRunning(String),
    /// The target's process is in the host's mount namespace: a bind mount
    /// there would change the host, so none is made.
    #[error("CDI device {name} has mounts ({}), but {target} shares the host's mount namespace: ctdev never mounts on the host; nothing was changed", dests.join(", "))]
    HostMounts {
        name: String,
        target: String,
        dests: Vec<String>,
    },
    /// Already added.
    #[error("CDI device {name} was already added to {target} (record {}); `ctdev del` it first", record.display())]
    AlreadyAdded {
        name: String,
        target: String,
        /// The record file.
        record: PathBuf,
    },
    /// `del` of a device that ctdev did not add.
    #[error("CDI device {name} was not added to {target} by ctdev (no record {})", record.display())]
    NotAdded {
        name: String,
        target: String,
        /// The record file looked for.
        record: PathBuf,
    },
    /// The record file could not be used.
    #[error("CDI record {}: {reason}", path.display())]
    Record {
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A step of an add failed (named by the device, the target as the
    /// user gave it and the step); the steps before it were undone.
    #[error("CDI device {name} on {target}: {step}: {source}")]
    Step {
        name: String,
        target: String,
        /// The step, e.g. "node /dev/foo" or "interface eth1".
        step: String,
        source: Box<CdiError>,
    },
    /// Undoing after a failure failed too.
    #[error("{error}; undoing it failed too: {}", failures.join("; "))]
    Undo {
        /// The original error.
        error: Box<CdiError>,
        /// What could not be undone.
        failures: Vec<String>,
    },
}

impl From<PassthroughError> for CdiError {
    fn from(e: PassthroughError) -> Self {
        CdiError::Passthrough(Box::new(e))
    }
}

impl From<ControllerError> for CdiError {
    fn from(e: ControllerError) -> Self {
        CdiError::Controller(Box::new(e))
    }
}

/// A device node to pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNode {
    /// Host node.
    pub host: PathBuf,
    /// Path in the container.
    pub dest: PathBuf,
    /// cgroup access.
    pub access: Access,
    /// Mode (default: the host node's).
    pub mode: Option<u32>,
    /// Owner inside the container (default: its root).
    pub uid: Option<u32>,
    /// Group inside the container (default: its root group).
    pub gid: Option<u32>,
    /// Type the spec insists on.
    pub dev_type: Option<DeviceType>,
    /// Major the spec insists on.
    pub major: Option<u32>,
    /// Minor the spec insists on.
    pub minor: Option<u32>,
}

/// A bind mount to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMount {
    /// Host source.
    pub source: PathBuf,
    /// Container target.
    pub dest: PathBuf,
    /// Options.
    pub options: BindOptions,
}

/// What can be done on a running container, and what is skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes, in spec order (a later edit of the same path wins).
    pub nodes: Vec<PlannedNode>,
    /// Mounts, in spec order (a later edit of the same target wins).
    pub mounts: Vec<PlannedMount>,
    /// Interfaces: (host name, name in the container).
    pub netdevs: Vec<(String, String)>,
    /// Edits not applied (with `--skip-unsupported`).
    pub skipped: Vec<String>,
}

/// Plans `edits` for a running container (pure).
pub fn plan(
    name: &QualifiedName,
    edits: &ContainerEdits,
    skip_unsupported: bool,
) -> Result<Plan, CdiError> {
    let mut p = Plan::default();
    let mut unsupported = Vec::new();
    for e in &edits.env {
        let var = e.split('=').next().unwrap_or(e);
        unsupported.push(format!(
            "env {var} (a running process's environment cannot be changed)"
        ));
    }
    for h in &edits.hooks {
        unsupported.push(format!(
            "hook {} {} (OCI hooks run at container creation)",
            h.hook_name, h.path
        ));
    }
    if !edits.additional_gids.is_empty() {
        let gids: Vec<String> = edits
            .additional_gids
            .iter()
            .map(|g| g.to_string())
            .collect();
        unsupported.push(format!(
            "additionalGids {} (running processes keep their groups)",
            gids.join(",")
        ));
    }
    if edits.intel_rdt.is_some() {
        unsupported.push("intelRdt (resctrl is set when the container is created)".into());
    }
    let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
    for n in &edits.device_nodes {
        let dev_type = match n.dev_type.as_deref() {
            Some("b") => Some(DeviceType::Block),
            Some("c") | Some("u") => Some(DeviceType::Char),
            Some("p") => {
                unsupported.push(format!("deviceNodes {} (a fifo, not a device)", n.path));
                continue;
            }
            _ => None,
        };
        let planned = PlannedNode {
            host: PathBuf::from(n.host()),
            dest: PathBuf::from(&n.path),
            access: n.access(),
            mode: n.file_mode.map(|m| m & 0o7777),
            uid: n.uid,
            gid: n.gid,
            dev_type,
            major: n.major.map(|v| v as u32),
            minor: n.minor.map(|v| v as u32),
        };
        match nodes.get(&n.path) {
            Some(&i) => p.nodes[i] = planned,
            None => {
                nodes.insert(n.path.clone(), p.nodes.len());
                p.nodes.push(planned);
            }
        }
    }
    let mut mounts_at: BTreeMap<String, usize> = BTreeMap::new();
    for m in &edits.mounts {
        match BindOptions::parse(m.fs_type.as_deref(), &m.options) {
            Ok(options) => {
                let planned = PlannedMount {
                    source: PathBuf::from(&m.host_path),
                    dest: PathBuf::from(&m.container_path),
                    options,
                };
                match mounts_at.get(&m.container_path) {
                    Some(&i) => p.mounts[i] = planned,
                    None => {
                        mounts_at.insert(m.container_path.clone(), p.mounts.len());
                        p.mounts.push(planned);
                    }
                }
            }
            Err(reason) => unsupported.push(format!("mount {}: {reason}", m.container_path)),
        }
    }
    for n in &edits.net_devices {
        p.netdevs
            .push((n.host_interface_name.clone(), n.name.clone()));
    }
    if !unsupported.is_empty() {
        if !skip_unsupported {
            return Err(CdiError::Unsupported {
                name: name.to_string(),
                items: unsupported,
            });
        }
        p.skipped = unsupported;
    }
    Ok(p)
}

/// One node as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Host node.
    pub host: PathBuf,
    /// Path in the container.
    pub dest: PathBuf,
    /// `b` or `c`.
    pub dev_type: char,
    pub major: u32,
    pub minor: u32,
    /// Mode as made.
    pub mode: u32,
    /// Owner (host id).
    pub uid: u32,
    /// Group (host id).
    pub gid: u32,
    /// What `add` did to it (`created`, `replaced`, `unchanged`).
    pub action: String,
    /// Whether `add` changed something (node or rule) that `del` undoes.
    pub changed: bool,
    /// The exact rule's access before `add` (`None`: there was none).
    pub rule_before: Option<String>,
}

/// One interface as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetdevRecord {
    /// Name on the host.
    pub host_name: String,
    /// Name in the container.
    pub container_name: String,
}

/// What `add` did (also the record file and the `--json` output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdiRecord {
    pub name: String,
    /// The spec file it came from.
    pub file: PathBuf,
    /// The target as given.
    pub target: String,
    pub policy_id: u64,
    /// The container's cgroup directory.
    pub cgroup_dir: PathBuf,
    /// Nodes.
    pub nodes: Vec<NodeRecord>,
    /// Bind mounts.
    pub mounts: Vec<Mounted>,
    /// Interfaces.
    pub netdevs: Vec<NetdevRecord>,
    /// Edits not applied.
    pub skipped: Vec<String>,
    /// Warnings (other device programs...).
    pub warnings: Vec<String>,
    /// The merged edits as they were when added (to notice a changed spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edits: Option<ContainerEdits>,
}

/// Options of a CDI `add`.
#[derive(Debug, Clone)]
pub struct CdiOptions {
    /// Spec directories, lowest priority first.
    pub dirs: Vec<PathBuf>,
    /// Apply what can be applied, list the rest.
    pub skip_unsupported: bool,
    /// Directory of the record files.
    pub state_dir: PathBuf,
}

fn record_path(state_dir: &Path, policy_id: u64, name: &QualifiedName) -> PathBuf {
    let file: String = name
        .to_string()
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    state_dir
        .join(policy_id.to_string())
        .join(format!("{file}.json"))
}

/// The records of devices added to `policy_id`.
pub fn records(state_dir: &Path, policy_id: u64) -> Vec<CdiRecord> {
    let dir = state_dir.join(policy_id.to_string());
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<CdiRecord> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A CDI device added to a container, as `ctdev list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CdiSource {
    /// The device (`vendor/class=name`).
    pub name: String,
    /// The spec file it came from.
    pub file: PathBuf,
    /// Device nodes it gave (paths in the container).
    pub nodes: Vec<PathBuf>,
    /// Bind mounts it made (targets in the container).
    pub mounts: Vec<PathBuf>,
    /// Interfaces it moved in (names in the container).
    pub netdevs: Vec<String>,
}

impl From<&CdiRecord> for CdiSource {
    fn from(r: &CdiRecord) -> Self {
        CdiSource {
            name: r.name.clone(),
            file: r.file.clone(),
            nodes: r.nodes.iter().map(|n| n.dest.clone()).collect(),
            mounts: r.mounts.iter().map(|m| m.dest.clone()).collect(),
            netdevs: r.netdevs.iter().map(|n| n.container_name.clone()).collect(),
        }
    }
}

/// Names, on each container of `dump` and on each of its rules, the CDI
/// devices whose `add` gave them (from the records in `state_dir`). A rule
/// is named when it is the exact entry (`TYPE MAJOR:MINOR`) of a node the
/// device gave. Records of another cgroup with the same policy id (a
/// re-used id) are left out.
pub fn annotate(dump: &mut crate::audit::view::Dump, state_dir: &Path) {
    // The directory is read once: only containers with a record directory
    // are looked at (at 10,000 containers, one read instead of 10,000
    // failed opens).
    let with_records = crate::fsio::file_names(state_dir);
    for c in &mut dump.containers {
        if !with_records.contains(&c.policy_id.to_string()) {
            annotate_container(c, &[]);
            continue;
        }
        let recs: Vec<CdiRecord> = records(state_dir, c.policy_id)
            .into_iter()
            .filter(|r| c.cgroup_dir.as_ref().is_none_or(|d| d == &r.cgroup_dir))
            .collect();
        annotate_container(c, &recs);
    }
}

/// [`annotate`] for one container and its records (pure).
pub fn annotate_container(c: &mut crate::audit::view::ContainerView, recs: &[CdiRecord]) {
    c.cdi = recs.iter().map(CdiSource::from).collect();
    for rule in &mut c.rules {
        rule.cdi = recs
            .iter()
            .filter(|r| {
                r.nodes.iter().any(|n| {
                    let t = match n.dev_type {
                        'b' => DeviceType::Block,
                        _ => DeviceType::Char,
                    };
                    rule.dev_type == t
                        && rule.major == DevNumber::Exact(n.major)
                        && rule.minor == DevNumber::Exact(n.minor)
                })
            })
            .map(|r| r.name.clone())
            .collect();
    }
}

fn write_record(path: &Path, record: &CdiRecord) -> Result<(), CdiError> {
    let err = |reason: String| CdiError::Record {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = crate::fsio::json_pretty(record).map_err(|e| err(e.to_string()))?;
    fs::write(&tmp, bytes).map_err(|e| err(e.to_string()))?;
    fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

struct Live {
    policy_id: u64,
    cgroup_dir: PathBuf,
    /// The target pinned to the cgroup resolved once (or `pid:N` itself):
    /// every step of a CDI add or del acts on this cgroup, and fails
    /// (`Recreated`) if the path was removed and created again between two
    /// steps, so rules, nodes and the record never land on different
    /// containers.
    pinned: Target,
    init: InitProcess,
    exact: BTreeMap<(DeviceType, u32, u32), Access>,
}

fn live(ct: &Ctdev, target: &Target) -> Result<Live, CdiError> {
    // Fails with "not under ctdev policy" first.
    let state = ct.container(target)?;
    let cgroup = state
        .cgroup
        .ok_or_else(|| CdiError::NotRunning(target.to_string()))?;
    let mut exact = BTreeMap::new();
    for r in state
        .entries
        .iter()
        .filter_map(|(key, bits)| Rule::from_entry(key, *bits))
    {
        if let (DevNumber::Exact(ma), DevNumber::Exact(mi)) = (r.major, r.minor) {
            exact.insert((r.dev_type, ma, mi), r.access);
        }
    }
    // The process `passthrough` uses too: N for `pid:N`, else the oldest.
    let init = passthrough::init_of(ct, target, &cgroup)?;
    Ok(Live {
        policy_id: state.policy_id,
        // `pid:N` stays itself (its namespaces are N's, as for `ctdev add`);
        // anything else is pinned to the cgroup resolved here.
        pinned: match target {
            Target::Pid(_) => target.clone(),
            _ => Target::CgroupOf {
                dir: cgroup.dir.clone(),
                id: cgroup.id,
            },
        },
        cgroup_dir: cgroup.dir,
        init,
        exact,
    })
}

fn map_id(init: &InitProcess, file: &str, inside: u32) -> Result<u32, CdiError> {
    let path = PathBuf::from(format!("/proc/{}/{file}", init.pid()));
    let text = fs::read_to_string(&path).map_err(|source| ProcessError::Read {
        path: path.clone(),
        source,
    })?;
    outside_id_of(&text, inside).ok_or_else(|| ProcessError::RootUnmapped { path }.into())
}

/// Adds CDI device `name` to the running container `target`.
pub fn add(
    ct: &Ctdev,
    target: &Target,
    name: &QualifiedName,
    opts: &CdiOptions,
) -> Result<CdiRecord, CdiError> {
    let registry = Registry::scan(&opts.dirs);
    let device = registry.get(name)?;
    let plan = plan(name, &device.edits, opts.skip_unsupported)?;
    let lv = live(ct, target)?;
    let record_file = record_path(&opts.state_dir, lv.policy_id, name);
    if record_file.exists() {
        return Err(CdiError::AlreadyAdded {
            name: name.to_string(),
            target: target.to_string(),
            record: record_file,
        });
    }
    // Check every node against the host before changing anything.
    let mut nodes = Vec::new();
    for n in &plan.nodes {
        let host = DeviceNode::stat(&n.host).map_err(|e: RuleError| CdiError::HostNode {
            name: name.to_string(),
            path: n.dest.display().to_string(),
            reason: e.to_string(),
        })?;
        let mismatch = n.dev_type.is_some_and(|t| t != host.dev_type)
            || n.major.is_some_and(|m| m != host.major)
            || n.minor.is_some_and(|m| m != host.minor);
        if mismatch {
            return Err(CdiError::HostNode {
                name: name.to_string(),
                path: n.dest.display().to_string(),
                reason: format!(
                    "the spec says {}{}:{} but host node {} is {} {}:{}",
                    n.dev_type
                        .map(|t| t.letter().to_string())
                        .unwrap_or("?".into()),
                    n.major.map(|v| v.to_string()).unwrap_or("?".into()),
                    n.minor.map(|v| v.to_string()).unwrap_or("?".into()),
                    n.host.display(),
                    host.dev_type.letter(),
                    host.major,
                    host.minor
                ),
            });
        }
        let uid = n.uid.map(|u| map_id(&lv.init, "uid_map", u)).transpose()?;
        let gid = n.gid.map(|g| map_id(&lv.init, "gid_map", g)).transpose()?;
        nodes.push((n, host, uid, gid));
    }
    let owner = lv.init.root_ids()?;
    if !plan.mounts.is_empty() && lv.init.shares_host_ns("mnt")? {
        return Err(CdiError::HostMounts {
            name: name.to_string(),
            target: target.to_string(),
            dests: plan
                .mounts
                .iter()
                .map(|m| m.dest.display().to_string())
                .collect(),
        });
    }

    let mut rec = CdiRecord {
        name: name.to_string(),
        file: device.file.clone(),
        target: target.to_string(),
        policy_id: lv.policy_id,
        cgroup_dir: lv.cgroup_dir.clone(),
        nodes: Vec::new(),
        mounts: Vec::new(),
        netdevs: Vec::new(),
        skipped: plan.skipped.clone(),
        warnings: Vec::new(),
        edits: Some(device.edits.clone()),
    };
    let undo_all = |rec: &CdiRecord, e: CdiError| -> CdiError {
        let failures = undo(ct, &lv.pinned, &lv.init, rec);
        if failures.is_empty() {
            e
        } else {
            CdiError::Undo {
                error: Box::new(e),
                failures,
            }
        }
    };
    // 1. Nodes.
    for (n, host, uid, gid) in nodes {
        let add_opts = AddOptions {
            access: n.access,
            mode: n.mode,
            uid,
            gid,
            ..AddOptions::default()
        };
        let before = lv
            .exact
            .get(&(host.dev_type, host.major, host.minor))
            .copied();
        let req = passthrough::PassRequest::Node {
            host: n.host.clone(),
            dest: n.dest.clone(),
        };
        match passthrough::add(ct, &lv.pinned, &req, &add_opts) {
            Ok(report) => {
                for w in report.warnings {
                    if !rec.warnings.contains(&w) {
                        rec.warnings.push(w);
                    }
                }
                let Some(node) = report.nodes.into_iter().next() else {
                    continue;
                };
                let spec: NodeSpec = node.node;
                rec.nodes.push(NodeRecord {
                    host: n.host.clone(),
                    dest: n.dest.clone(),
                    dev_type: spec.dev_type.letter(),
                    major: spec.major,
                    minor: spec.minor,
                    mode: spec.mode,
                    uid: spec.uid,
                    gid: spec.gid,
                    action: serde_json::to_value(node.action)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    changed: node.action != NodeAction::Unchanged
                        || !report.rules_changed.is_empty(),
                    rule_before: before.map(|a| a.to_string()),
                });
            }
            Err(e) => {
                return Err(undo_all(
                    &rec,
                    step_error(name, target, "node", &n.dest, e.into()),
                ))
            }
        }
    }
    // 2. Mounts.
    for m in &plan.mounts {
        match mounts::bind(&lv.init, &m.source, &m.dest, &m.options, owner) {
            Ok(done) => rec.mounts.push(done),
            Err(e) => {
                return Err(undo_all(
                    &rec,
                    step_error(name, target, "mount", &m.dest, e.into()),
                ))
            }
        }
    }
    // 3. Interfaces.
    for (host, inside) in &plan.netdevs {
        let req = passthrough::PassRequest::Interface {
            host: host.clone(),
            name: inside.clone(),
        };
        match passthrough::add(ct, &lv.pinned, &req, &AddOptions::default()) {
            Ok(_) => rec.netdevs.push(NetdevRecord {
                host_name: host.clone(),
                container_name: inside.clone(),
            }),
            Err(e) => {
                let step = format!("interface {host} (as {inside})");
                return Err(undo_all(
                    &rec,
                    CdiError::Step {
                        name: name.to_string(),
                        target: target.to_string(),
                        step,
                        source: Box::new(e.into()),
                    },
                ));
            }
        }
    }
    if let Err(e) = lv.init.check_alive() {
        return Err(undo_all(&rec, e.into()));
    }
    if let Err(e) = write_record(&record_file, &rec) {
        return Err(undo_all(&rec, e));
    }
    tracing::info!(target = %target, device = %name, "CDI device added");
    Ok(rec)
}

/// `e`, the failure of the step on `what` at `dest`, named for the user.
fn step_error(
    name: &QualifiedName,
    target: &Target,
    what: &str,
    dest: &Path,
    e: CdiError,
) -> CdiError {
    CdiError::Step {
        name: name.to_string(),
        target: target.to_string(),
        step: format!("{what} {}", dest.display()),
        source: Box::new(e),
    }
}

/// Whether the container `target` pins is gone (its cgroup removed, or
/// removed and created again): what was done inside it went with it.
fn container_gone(target: &Target) -> bool {
    match target {
        Target::CgroupOf { dir, id } => !crate::cgroup::is_cgroup(dir, *id),
        _ => false,
    }
}

/// Undoes what `rec` says was done, newest first; returns what failed.
/// Once the container is gone there is nothing left to undo in it: its
/// nodes, mounts and namespaces went with it, and its policy with its
/// cgroup. That is not reported as a failure.
fn undo(ct: &Ctdev, target: &Target, init: &InitProcess, rec: &CdiRecord) -> Vec<String> {
    let mut failed = undo_steps(ct, target, init, rec);
    if !failed.is_empty() && container_gone(target) {
        tracing::info!(
            container = %target,
            device = %rec.name,
            "container gone while undoing a CDI add: nothing left to undo"
        );
        failed.clear();
    }
    failed
}

/// [`undo`]'s steps.
fn undo_steps(ct: &Ctdev, target: &Target, init: &InitProcess, rec: &CdiRecord) -> Vec<String> {
    let mut failed = Vec::new();
    for n in rec.netdevs.iter().rev() {
        let req = passthrough::PassRequest::Interface {
            host: n.host_name.clone(),
            name: n.container_name.clone(),
        };
        if let Err(e) = passthrough::del(ct, target, &req) {
            failed.push(format!("interface {}: {e}", n.container_name));
        }
    }
    for m in rec.mounts.iter().rev() {
        match mounts::unbind(init, m) {
            Ok(left) => failed.extend(left),
            Err(e) => failed.push(format!("mount {}: {e}", m.dest.display())),
        }
    }
    for n in rec.nodes.iter().rev().filter(|n| n.changed) {
        let dest = n.dest.display().to_string();
        let req = passthrough::PassRequest::Node {
            host: n.host.clone(),
            dest: n.dest.clone(),
        };
        if let Err(e) = passthrough::del(ct, target, &req) {
            failed.push(format!("node {dest}: {e}"));
            continue;
        }
        let before = n.rule_before.as_deref().and_then(Access::parse);
        if let Some(bits) = before.filter(|b| !b.is_empty()) {
            let t = if n.dev_type == 'b' {
                DeviceType::Block
            } else {
                DeviceType::Char
            };
            let rule = Rule::device(t, n.major, n.minor, bits);
            if let Err(e) = ct.allow(target, &[rule]) {
                failed.push(format!("rule {rule}: {e}"));
            }
        }
    }
    failed
}

/// Takes CDI device `name` away from `target`: undoes what the record of
/// its `add` says, then removes the record.
pub fn del(
    ct: &Ctdev,
    target: &Target,
    name: &QualifiedName,
    state_dir: &Path,
) -> Result<CdiRecord, CdiError> {
    let lv = live(ct, target)?;
    let path = record_path(state_dir, lv.policy_id, name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CdiError::NotAdded {
                name: name.to_string(),
                target: target.to_string(),
                record: path,
            })
        }
        Err(e) => {
            return Err(CdiError::Record {
                path,
                reason: e.to_string(),
            })
        }
    };
    let rec: CdiRecord = serde_json::from_slice(&bytes).map_err(|e| CdiError::Record {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if rec.cgroup_dir != lv.cgroup_dir {
        return Err(CdiError::Record {
            path,
            reason: format!(
                "recorded for cgroup {}, the target is {} now",
                rec.cgroup_dir.display(),
                lv.cgroup_dir.display()
            ),
        });
    }
    let failures = undo(ct, &lv.pinned, &lv.init, &rec);
    if !failures.is_empty() {
        return Err(CdiError::Record {
            path,
            reason: format!("kept: could not undo everything: {}", failures.join("; ")),
        });
    }
    fs::remove_file(&path).map_err(|e| CdiError::Record {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent() {
        // The container's directory goes with its last record.
        let _ = fs::remove_dir(dir);
    }
    tracing::info!(target = %target, device = %name, "CDI device removed");
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::spec::{parse, Format};

    fn container(rules: &[&str]) -> crate::audit::view::ContainerView {
        crate::audit::view::ContainerView {
            policy_id: 1,
            cgroup: Some("/c".into()),
            cgroup_dir: Some("/sys/fs/cgroup/c".into()),
            cgroup_id: 1,
            program_id: 1,
            link_id: 1,
            link_pin: PathBuf::new(),
            layout: crate::audit::view::Layout::PerContainer,
            state: crate::ops::LinkState::Enforcing,
            rules: crate::rule::parse_rules(rules)
                .unwrap()
                .into_iter()
                .map(|r| crate::audit::view::RuleView::of(&r, vec![]))
                .collect(),
            stats: Default::default(),
            other_programs: vec![],
            drift: None,
            pod: None,
            former_cgroup: None,
            cdi: vec![],
        }
    }

    fn record(name: &str, nodes: &[(char, u32, u32, &str)]) -> CdiRecord {
        CdiRecord {
            name: name.into(),
            file: "/etc/cdi/x.yaml".into(),
            target: "/c".into(),
            policy_id: 1,
            cgroup_dir: "/sys/fs/cgroup/c".into(),
            nodes: nodes
                .iter()
                .map(|(t, ma, mi, dest)| NodeRecord {
                    host: PathBuf::from("/dev/x"),
                    dest: PathBuf::from(dest),
                    dev_type: *t,
                    major: *ma,
                    minor: *mi,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                    action: "created".into(),
                    changed: true,
                    rule_before: None,
                })
                .collect(),
            mounts: vec![],
            netdevs: vec![NetdevRecord {
                host_name: "veth1".into(),
                container_name: "eth1".into(),
            }],
            skipped: vec![],
            warnings: vec![],
            edits: None,
        }
    }

    /// Exact rules of a record's nodes name the device; wildcard rules and
    /// rules of another type or number do not; two devices sharing a node
    /// are both named.
    #[test]
    fn rules_and_nodes_name_their_cdi_device() {
        let mut c = container(&["b 7:5 rwm", "c 7:5 rwm", "b 7:* r", "c 10:200 rw"]);
        let recs = [
            record("a.com/x=1", &[('b', 7, 5, "/dev/a")]),
            record(
                "a.com/x=2",
                &[('b', 7, 5, "/dev/b"), ('c', 10, 200, "/dev/t")],
            ),
        ];
        annotate_container(&mut c, &recs);
        let names: Vec<Vec<String>> = c.rules.iter().map(|r| r.cdi.clone()).collect();
        assert_eq!(
            names,
            vec![
                vec!["a.com/x=1".to_string(), "a.com/x=2".to_string()],
                vec![],
                vec![],
                vec!["a.com/x=2".to_string()],
            ]
        );
        assert_eq!(c.cdi.len(), 2);
        assert_eq!(
            c.cdi[1].nodes,
            vec![PathBuf::from("/dev/b"), PathBuf::from("/dev/t")]
        );
        assert_eq!(c.cdi[1].netdevs, vec!["eth1".to_string()]);
        annotate_container(&mut c, &[]);
        assert!(c.cdi.is_empty() && c.rules.iter().all(|r| r.cdi.is_empty()));
    }

    fn edits(text: &str) -> ContainerEdits {
        let s = parse(text.as_bytes(), Format::Json).unwrap();
        super::super::registry::merged_edits(&s, &s.devices[0])
    }

    fn q() -> QualifiedName {
        QualifiedName::parse("v.com/c=d").unwrap()
    }

    const SPEC: &str = r#"{"cdiVersion":"0.7.0","kind":"v.com/c","devices":[{"name":"d","containerEdits":{
        "deviceNodes":[{"path":"/dev/a","permissions":"rw"},{"path":"/dev/b","hostPath":"/dev/loop3","type":"b","major":7,"minor":3,"fileMode":8630},{"path":"/dev/a","permissions":"r"}],
        "mounts":[{"hostPath":"/srv","containerPath":"/srv","options":["rbind","ro"]},{"hostPath":"/t","containerPath":"/t","type":"tmpfs"}],
        "env":["GPU=1"],"additionalGids":[44]}}],
        "containerEdits":{"hooks":[{"hookName":"createContainer","path":"/bin/hook"}]}}"#;

    #[test]
    fn unsupported_edits_are_named() {
        let err = plan(&q(), &edits(SPEC), false).unwrap_err().to_string();
        for what in [
            "env GPU",
            "hook createContainer /bin/hook",
            "additionalGids 44",
            "mount /t",
        ] {
            assert!(err.contains(what), "{what} missing in: {err}");
        }
    }

    #[test]
    fn skip_unsupported_applies_the_rest() {
        let p = plan(&q(), &edits(SPEC), true).unwrap();
        assert_eq!(p.skipped.len(), 4);
        // The later /dev/a wins, in the first one's place.
        assert_eq!(p.nodes.len(), 2);
        assert_eq!(p.nodes[0].access, Access::parse("r").unwrap());
        let b = &p.nodes[1];
        assert_eq!(b.host, Path::new("/dev/loop3"));
        assert_eq!(
            (b.dev_type, b.major, b.minor),
            (Some(DeviceType::Block), Some(7), Some(3))
        );
        // fileMode keeps only permission bits (8630 = 0o20666).
        assert_eq!(b.mode, Some(0o666));
        assert_eq!(p.mounts.len(), 1);
        assert!(p.mounts[0].options.recursive && p.mounts[0].options.read_only());
    }

    #[test]
    fn plain_devices_plan_without_skips() {
        let text = r#"{"cdiVersion":"1.1.0","kind":"v.com/c","devices":[{"name":"d","containerEdits":{"deviceNodes":[{"path":"/dev/x"}],"netDevices":[{"hostInterfaceName":"veth9","name":"eth1"}]}}]}"#;
        let p = plan(&q(), &edits(text), false).unwrap();
        assert!(p.skipped.is_empty());
        assert_eq!(p.nodes[0].access, Access::ALL);
        assert_eq!(p.netdevs, [("veth9".to_string(), "eth1".to_string())]);
    }

    #[test]
    fn record_paths_are_per_container_and_name() {
        let p = record_path(Path::new("/run/x"), 42, &q());
        assert_eq!(p, Path::new("/run/x/42/v.com_c=d.json"));
    }
}
