//! Device passthrough (`ctdev add` / `ctdev del`), like `lxc-device`: open a
//! container's policy for a host device and create its node inside the
//! container, or move a network interface into the container's netns.
//!
//! **Order (fail-closed).** `add` makes the node first and opens the rule
//! last: a crash in between leaves at worst a node without a rule, which the
//! kernel denies. `del` closes the rule first and removes the node after.
//! Every step is recorded; a failure undoes the earlier steps (created
//! directories and nodes removed, replaced or removed nodes restored, rule
//! bits put back as they were), so no rule is left open without the node the
//! user asked for, and no rule is ever opened for a device the user did not
//! name (rules are always for the exact type and numbers of a named node).
//!
//! **Init process.** The container's init (oldest process of its cgroup) is
//! pinned by a pidfd before its `/proc` files are opened and checked again
//! before the rule is committed; if it died (or its PID was reused) the
//! operation fails with "container exited" and is undone.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroup::Cgroup;
use crate::container::netdev::{self, NetdevError};
use crate::container::nodes::{self, Existing, Journal, NodeAction, NodeError, NodeSpec, Root};
use crate::container::process::{InitProcess, ProcessError};
use crate::controller::{Ctdev, Error as ControllerError};
use crate::kernel::pins::PinLock;
use crate::kernel::programs::DeviceProgram;
use crate::rule::{Access, DevNumber, DeviceNode, DeviceType, Rule, RuleError};
use crate::target::Target;

/// Why `add` or `del` failed. What was changed before the failure was undone
/// (unless [`PassthroughError::Undo`] says otherwise).
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The policy could not be read or changed.
    #[error(transparent)]
    Controller(Box<ControllerError>),
    /// The container's init process could not be used.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A node inside the container could not be made or removed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A network interface could not be moved.
    #[error(transparent)]
    Netdev(#[from] NetdevError),
    /// The host device could not be used.
    #[error(transparent)]
    Device(#[from] RuleError),
    /// DEVICE is neither a path nor an interface.
    #[error("{device:?} is neither an absolute device path nor a network interface in ctdev's network namespace (see /sys/class/net)")]
    UnknownDevice {
        /// DEVICE as given.
        device: String,
    },
    /// A directory DEVICE holds no device node.
    #[error("no device node under {0} (symlinks and symlinked directories are not followed)")]
    EmptyDirectory(PathBuf),
    /// Reading a directory DEVICE failed.
    #[error("cannot read directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The container is under policy but its cgroup is gone.
    #[error("{target} is not enforcing (policy state {state}: `defunct` when its cgroup is gone, `detached` when a detach was interrupted; `ctdev detach` finishes it)")]
    NotRunning {
        /// The target as given.
        target: String,
        /// The state `list` reports.
        state: String,
    },
    /// `del` of something that was never added.
    #[error("{device} was not added to {target}: no rule for {rule} and no device node at {dest} in the container")]
    NotAdded {
        /// DEVICE.
        device: String,
        /// The target.
        target: String,
        /// The exact rule looked for.
        rule: String,
        /// DEST.
        dest: PathBuf,
    },
    /// A bad `--mode`.
    #[error("invalid --mode {0:?}: expected octal permission bits such as 0660")]
    BadMode(String),
    /// Options that only apply to device nodes were given with an interface.
    #[error("{0} does not apply to a network interface")]
    NotForInterface(&'static str),
    /// Undoing after a failure failed too: the state needs a look.
    #[error("{error}; undoing it failed too: {}", failures.join("; "))]
    Undo {
        /// The original error.
        error: Box<PassthroughError>,
        /// What could not be undone.
        failures: Vec<String>,
    },
}

impl From<ControllerError> for PassthroughError {
    fn from(e: ControllerError) -> Self {
        PassthroughError::Controller(Box::new(e))
    }
}

/// Options of `add` for device nodes.
#[derive(Debug, Clone, Copy)]
pub struct AddOptions {
    /// Access to allow (default `rwm`).
    pub access: Access,
    /// Permission bits of the node in the container (default: the host node's).
    pub mode: Option<u32>,
    /// Owner uid (default: the container's root, mapped through its userns).
    pub uid: Option<u32>,
    /// Owner gid (default: the container's root group, mapped).
    pub gid: Option<u32>,
}

impl Default for AddOptions {
    fn default() -> Self {
        Self {
            access: Access::ALL,
            mode: None,
            uid: None,
            gid: None,
        }
    }
}

/// Parses an octal `--mode` (`660`, `0660`, `0o660`); at most `0o7777`.
pub fn parse_mode(text: &str) -> Result<u32, PassthroughError> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !digits.is_empty())
        .ok_or_else(|| PassthroughError::BadMode(text.into()))
}

/// One device node handled by `add` or `del`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// The host node.
    pub device: PathBuf,
    /// Where the host path led when it was a symlink.
    pub resolved: Option<PathBuf>,
    /// Path inside the container.
    pub dest: PathBuf,
    /// The node (type, numbers, mode, owner as created or found).
    pub node: NodeSpec,
    /// What happened to it.
    pub action: NodeAction,
}

/// One network interface handled by `add` or `del`.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceReport {
    /// Name in ctdev's (the host's) network namespace.
    pub host_name: String,
    /// Name in the container's network namespace.
    pub container_name: String,
    /// `moved-in` or `moved-out`.
    pub action: &'static str,
}

/// What `add` or `del` did.
#[derive(Debug, Clone, Serialize)]
pub struct PassthroughReport {
    /// The target as given.
    pub target: String,
    /// The container's cgroup directory.
    pub cgroup_dir: PathBuf,
    /// Policy id.
    pub policy_id: u64,
    /// The init process used.
    pub init_pid: i32,
    /// Device nodes (empty for an interface).
    pub nodes: Vec<NodeReport>,
    /// The interface (for an interface DEVICE).
    pub interface: Option<InterfaceReport>,
    /// Rules changed (as they are now, or `-c 1:3` when removed).
    pub rules_changed: Vec<String>,
    /// Rules that already were as asked.
    pub rules_unchanged: Vec<String>,
    /// Things the operator should know (other device programs, wildcards).
    pub warnings: Vec<String>,
}

/// What DEVICE names.
enum Device {
    /// One or more host device nodes with their path relative to DEVICE
    /// (empty for a single node).
    Nodes(Vec<(DeviceNode, PathBuf)>),
    /// A network interface.
    Interface(String),
}

/// Device nodes under `dir`, recursively, without following symlinks; sorted.
fn walk(dir: &Path) -> Result<Vec<(DeviceNode, PathBuf)>, PassthroughError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        let entries = fs::read_dir(&here).map_err(|source| PassthroughError::ReadDir {
            path: here.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| PassthroughError::ReadDir {
                path: here.clone(),
                source,
            })?;
            let ft = entry
                .file_type()
                .map_err(|source| PassthroughError::ReadDir {
                    path: entry.path(),
                    source,
                })?;
            let rel = rel.join(entry.file_name());
            if ft.is_dir() {
                stack.push(rel);
            } else if ft.is_char_device() || ft.is_block_device() {
                out.push((DeviceNode::stat(&entry.path())?, rel));
            } else {
                tracing::debug!(path = %entry.path().display(), "skipping (not a device node)");
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    if out.is_empty() {
        return Err(PassthroughError::EmptyDirectory(dir.to_path_buf()));
    }
    Ok(out)
}

fn classify_for_add(device: &str) -> Result<Device, PassthroughError> {
    if !device.starts_with('/') {
        if netdev::is_host_interface(device) {
            return Ok(Device::Interface(device.into()));
        }
        return Err(PassthroughError::UnknownDevice {
            device: device.into(),
        });
    }
    let path = Path::new(device);
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(Device::Nodes(walk(path)?)),
        _ => Ok(Device::Nodes(vec![(
            DeviceNode::stat(path)?,
            PathBuf::new(),
        )])),
    }
}

/// Where a node lands: DEST (or DEVICE) joined with its relative path.
fn dest_of(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

fn exact_rule(node: &NodeSpec, access: Access) -> Rule {
    Rule::device(node.dev_type, node.major, node.minor, access)
}

/// The container's cgroup and policy, required live and enforcing.
struct Attached {
    cgroup: Cgroup,
    policy_id: u64,
    /// Exact entries: (type, major, minor) → access.
    exact: BTreeMap<(DeviceType, u32, u32), Access>,
    /// Every entry, for wildcard warnings.
    all: Vec<Rule>,
    /// Device programs besides ctdev's on the cgroup and its ancestors.
    others: Vec<DeviceProgram>,
}

impl PassthroughReport {
    /// A report of nothing done yet, for `target`'s container.
    fn empty(target: &Target, at: &Attached, init: &InitProcess) -> Self {
        PassthroughReport {
            target: target.to_string(),
            cgroup_dir: at.cgroup.dir.clone(),
            policy_id: at.policy_id,
            init_pid: init.pid(),
            nodes: Vec::new(),
            interface: None,
            rules_changed: Vec::new(),
            rules_unchanged: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

fn attached(ct: &Ctdev, target: &Target) -> Result<Attached, PassthroughError> {
    // `list` fails with "not under ctdev policy (run `ctdev attach ...` first)".
    let dump = ct.list(Some(target))?;
    let resolved = ct.resolve(target)?;
    let view = dump
        .containers
        .into_iter()
        .find(|c| c.policy_id == resolved.policy_id)
        .ok_or_else(|| ct.not_under_policy(target))?;
    let cgroup = match (resolved.cgroup, view.state) {
        (Some(c), "enforcing") => c,
        (_, state) => {
            return Err(PassthroughError::NotRunning {
                target: target.to_string(),
                state: state.into(),
            })
        }
    };
    let mut exact = BTreeMap::new();
    let mut all = Vec::new();
    for r in &view.rules {
        let rule = Rule {
            dev_type: r.dev_type,
            major: r.major,
            minor: r.minor,
            access: r.access,
        };
        all.push(rule);
        if let (DevNumber::Exact(ma), DevNumber::Exact(mi)) = (r.major, r.minor) {
            exact.insert((r.dev_type, ma, mi), r.access);
        }
    }
    Ok(Attached {
        cgroup,
        policy_id: view.policy_id,
        exact,
        all,
        others: view.other_programs,
    })
}

/// A warning when device programs besides ctdev's (from `list`, attached
/// to the cgroup or an ancestor) may still deny the device.
fn foreign_warning(at: &Attached, target: &Target) -> Option<String> {
    if at.others.is_empty() {
        return None;
    }
    let names: Vec<String> = at
        .others
        .iter()
        .map(|p| {
            let name = if p.name.is_empty() {
                "unnamed"
            } else {
                &p.name
            };
            format!("id {} ({name}) on {}", p.id, p.attached_at.display())
        })
        .collect();
    Some(format!(
        "other device program(s) {} also judge device access in {} and may still deny the device; `ctdev attach --takeover {target}` replaces them",
        names.join(", "),
        at.cgroup.dir.display()
    ))
}

/// A rule change to undo: the entry's access before, `None` if there was none.
struct RuleUndo {
    node: NodeSpec,
    before: Option<Access>,
}

/// Puts the exact entries back as they were (best effort; failures listed).
fn restore_rules(ct: &Ctdev, lock: &PinLock, target: &Target, undo: &[RuleUndo]) -> Vec<String> {
    let mut failed = Vec::new();
    for u in undo {
        let result = match u.before {
            // There was no entry: delete it whatever its bits.
            None => ct
                .revoke_locked(lock, target, &[exact_rule(&u.node, Access::NONE)], true)
                .map(|_| ()),
            Some(bits) => {
                // Take away what is there now beyond `bits`, then put `bits` back.
                let now = ct
                    .list(Some(target))
                    .ok()
                    .and_then(|d| d.containers.into_iter().next())
                    .and_then(|c| {
                        c.rules.into_iter().find(|r| {
                            r.dev_type == u.node.dev_type
                                && r.major == DevNumber::Exact(u.node.major)
                                && r.minor == DevNumber::Exact(u.node.minor)
                        })
                    })
                    .map(|r| r.access);
                let extra = now.map(|n| n.difference(bits)).unwrap_or(Access::NONE);
                let mut res = Ok(());
                if !extra.is_empty() {
                    res = ct
                        .revoke_locked(lock, target, &[exact_rule(&u.node, extra)], true)
                        .map(|_| ());
                }
                if res.is_ok() && now.is_none_or(|n| n.difference(extra) != bits) {
                    res = ct
                        .allow_locked(lock, target, &[exact_rule(&u.node, bits)])
                        .map(|_| ());
                }
                res
            }
        };
        if let Err(e) = result {
            tracing::error!("undo: cannot restore the rule for {}: {e}", u.node.device());
            failed.push(format!(
                "cannot restore the rule for {}: {e}",
                u.node.device()
            ));
        }
    }
    failed
}

fn with_undo(error: PassthroughError, failures: Vec<String>) -> PassthroughError {
    if failures.is_empty() {
        error
    } else {
        PassthroughError::Undo {
            error: Box::new(error),
            failures,
        }
    }
}

/// Passes DEVICE into the container `target`: a device node (or every node
/// under a directory) at DEST with its exact rule opened, or a network
/// interface moved into the container's netns (renamed to DEST).
pub fn add(
    ct: &Ctdev,
    target: &Target,
    device: &str,
    dest: Option<&str>,
    opts: &AddOptions,
) -> Result<PassthroughReport, PassthroughError> {
    let kind = classify_for_add(device)?;
    // One critical section: no other ctdev changes the policy between
    // reading the entries (for undo) and writing the rule.
    let lock = ct.lock_existing(target)?;
    let at = attached(ct, target)?;
    let init = InitProcess::of_cgroup(ct.cgroups(), &at.cgroup)?;
    let mut report = PassthroughReport::empty(target, &at, &init);
    let nodes = match kind {
        Device::Interface(name) => {
            if opts.mode.is_some() || opts.uid.is_some() || opts.gid.is_some() {
                return Err(PassthroughError::NotForInterface("--mode/--uid/--gid"));
            }
            let new_name = dest.unwrap_or(&name).to_string();
            netdev::check_name(&new_name)?;
            let netns = init.open_netns()?;
            netdev::move_into(&name, netns.as_fd(), &new_name)?;
            crate::failpoint!("add.netdev.after_move");
            report.interface = Some(InterfaceReport {
                host_name: name,
                container_name: new_name,
                action: "moved-in",
            });
            return Ok(report);
        }
        Device::Nodes(nodes) => nodes,
    };

    // Plan: every node's spec and DEST, all checked before anything changes.
    let base = PathBuf::from(dest.unwrap_or(device));
    nodes::check_dest(&base)?;
    let (root_uid, root_gid) = match (opts.uid, opts.gid) {
        (Some(u), Some(g)) => (u, g),
        _ => init.root_ids()?,
    };
    let mut plan = Vec::new();
    for (host, rel) in nodes {
        let spec = NodeSpec {
            dev_type: host.dev_type,
            major: host.major,
            minor: host.minor,
            mode: opts.mode.unwrap_or(host.mode),
            uid: opts.uid.unwrap_or(root_uid),
            gid: opts.gid.unwrap_or(root_gid),
        };
        let dest = dest_of(&base, &rel);
        nodes::check_dest(&dest)?;
        let resolved = host
            .via_symlink
            .then(|| fs::canonicalize(&host.path).ok())
            .flatten();
        plan.push((host.path, resolved, dest, spec));
    }
    if let Some(w) = foreign_warning(&at, target) {
        report.warnings.push(w);
    }

    // 1. Nodes (journaled).
    let root_path = init.root_path();
    let root = Root {
        fd: init.root(),
        path: &root_path,
    };
    let mut journal = Journal::new();
    let fail = |e: PassthroughError, journal: Journal| with_undo(e, journal.rollback());
    for (device, resolved, dest, spec) in &plan {
        match nodes::ensure_node(root, dest, spec, &mut journal) {
            Ok(action) => report.nodes.push(NodeReport {
                device: device.clone(),
                resolved: resolved.clone(),
                dest: dest.clone(),
                node: *spec,
                action,
            }),
            Err(e) => return Err(fail(e.into(), journal)),
        }
    }
    crate::failpoint!("add.after_nodes");

    // 2. The container must still be the one we looked at, then the rules.
    if let Err(e) = init.check_alive() {
        return Err(fail(e.into(), journal));
    }
    let mut undo: Vec<RuleUndo> = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    for (_, _, _, spec) in &plan {
        let key = (spec.dev_type, spec.major, spec.minor);
        if undo
            .iter()
            .any(|u| (u.node.dev_type, u.node.major, u.node.minor) == key)
        {
            continue;
        }
        undo.push(RuleUndo {
            node: *spec,
            before: at.exact.get(&key).copied(),
        });
        rules.push(exact_rule(spec, opts.access));
    }
    match ct.allow_locked(&lock, target, &rules) {
        Ok(change) => {
            report.rules_changed = change.changed;
            report.rules_unchanged = change.unchanged;
        }
        Err(e) => return Err(fail(e.into(), journal)),
    }
    crate::failpoint!("add.after_rules");
    // The init died while the rule was written: undo everything.
    if let Err(e) = init.check_alive() {
        let mut failures = restore_rules(ct, &lock, target, &undo);
        failures.extend(journal.rollback());
        return Err(with_undo(e.into(), failures));
    }
    tracing::debug!(target = %target, nodes = plan.len(), "device passthrough added");
    Ok(report)
}

/// Undoes `add`: closes the exact rule of DEVICE (every node under a
/// directory) and removes the node at DEST in the container, or moves an
/// interface back to ctdev's netns under its original name.
pub fn del(
    ct: &Ctdev,
    target: &Target,
    device: &str,
    dest: Option<&str>,
) -> Result<PassthroughReport, PassthroughError> {
    let lock = ct.lock_existing(target)?;
    let at = attached(ct, target)?;
    let init = InitProcess::of_cgroup(ct.cgroups(), &at.cgroup)?;
    let mut report = PassthroughReport::empty(target, &at, &init);
    if !device.starts_with('/') {
        netdev::check_name(device)?;
        let inside = dest.unwrap_or(device).to_string();
        netdev::check_name(&inside)?;
        let netns = init.open_netns()?;
        let host = netdev::open_own_netns()?;
        netdev::move_out(netns.as_fd(), &inside, host.as_fd(), device)?;
        crate::failpoint!("del.netdev.after_move");
        report.interface = Some(InterfaceReport {
            host_name: device.into(),
            container_name: inside,
            action: "moved-out",
        });
        return Ok(report);
    }

    let base = PathBuf::from(dest.unwrap_or(device));
    nodes::check_dest(&base)?;
    let root_path = init.root_path();
    let root = Root {
        fd: init.root(),
        path: &root_path,
    };
    let host_path = Path::new(device);
    let host_nodes: Vec<(PathBuf, PathBuf, Option<NodeSpec>)> = match fs::metadata(host_path) {
        Ok(m) if m.is_dir() => walk(host_path)?
            .into_iter()
            .map(|(n, rel)| (n.path, rel, None::<NodeSpec>))
            .collect(),
        Ok(_) => vec![(host_path.to_path_buf(), PathBuf::new(), None)],
        // The host node is gone (e.g. a detached loop device): the node in
        // the container says which device it was.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match nodes::inspect(root, &base)? {
            Existing::Device(spec) => vec![(host_path.to_path_buf(), PathBuf::new(), Some(spec))],
            _ => {
                return Err(RuleError::DevicePath {
                    path: host_path.to_path_buf(),
                    reason: format!(
                        "{e}, and there is no device node at {} in the container",
                        base.display()
                    ),
                }
                .into())
            }
        },
        Err(e) => {
            return Err(RuleError::DevicePath {
                path: host_path.to_path_buf(),
                reason: e.to_string(),
            }
            .into())
        }
    };

    // Plan and check everything before changing anything.
    struct Item {
        device: PathBuf,
        dest: PathBuf,
        spec: NodeSpec,
        rule_present: bool,
    }
    let mut items = Vec::new();
    for (path, rel, known) in host_nodes {
        let spec = match known {
            Some(s) => s,
            None => {
                let n = DeviceNode::stat(&path)?;
                NodeSpec {
                    dev_type: n.dev_type,
                    major: n.major,
                    minor: n.minor,
                    mode: n.mode,
                    uid: 0,
                    gid: 0,
                }
            }
        };
        let dest = dest_of(&base, &rel);
        let rule_present = at
            .exact
            .get(&(spec.dev_type, spec.major, spec.minor))
            .is_some_and(|a| !a.is_empty());
        let node_present = match nodes::inspect(root, &dest)? {
            Existing::Absent => false,
            Existing::Device(found) if found.same_device(&spec) => true,
            Existing::Device(found) => {
                return Err(NodeError::Mismatch {
                    dest,
                    found: found.device(),
                    expected: spec.device(),
                }
                .into())
            }
            Existing::Other(kind) => {
                return Err(NodeError::Occupied {
                    dest,
                    root: root_path.clone(),
                    kind,
                }
                .into())
            }
        };
        if !rule_present && !node_present {
            return Err(PassthroughError::NotAdded {
                device: path.display().to_string(),
                target: target.to_string(),
                rule: exact_rule(&spec, Access::ALL).to_string(),
                dest,
            });
        }
        items.push(Item {
            device: path,
            dest,
            spec,
            rule_present,
        });
    }

    // 1. Rules first (closing access is the safe direction).
    let mut undo: Vec<RuleUndo> = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    for it in items.iter().filter(|i| i.rule_present) {
        let key = (it.spec.dev_type, it.spec.major, it.spec.minor);
        if undo
            .iter()
            .any(|u| (u.node.dev_type, u.node.major, u.node.minor) == key)
        {
            continue;
        }
        undo.push(RuleUndo {
            node: it.spec,
            before: at.exact.get(&key).copied(),
        });
        rules.push(exact_rule(&it.spec, Access::ALL));
    }
    init.check_alive()?;
    if !rules.is_empty() {
        let change = ct.revoke_locked(&lock, target, &rules, false)?;
        report.rules_changed = change.changed;
        report.rules_unchanged = change.unchanged;
    }
    crate::failpoint!("del.after_revoke");

    // 2. Nodes.
    let mut journal = Journal::new();
    for it in &items {
        match nodes::remove_node(root, &it.dest, &it.spec, &mut journal) {
            Ok(action) => report.nodes.push(NodeReport {
                device: it.device.clone(),
                resolved: None,
                dest: it.dest.clone(),
                node: it.spec,
                action,
            }),
            Err(e) => {
                let mut failures = journal.rollback();
                failures.extend(restore_rules(ct, &lock, target, &undo));
                return Err(with_undo(e.into(), failures));
            }
        }
    }
    crate::failpoint!("del.after_nodes");
    // Wildcards that still let the device through.
    for it in &items {
        if let Some(w) = wildcard_left(&at.all, &it.spec) {
            report.warnings.push(format!(
                "{} is still allowed by the wildcard entry {w}",
                it.device.display()
            ));
        }
    }
    tracing::debug!(target = %target, nodes = items.len(), "device passthrough removed");
    Ok(report)
}

/// A wildcard entry that still grants read or write on `node`, if any.
fn wildcard_left(all: &[Rule], node: &NodeSpec) -> Option<String> {
    let matches = |r: &&Rule, major: DevNumber, minor: DevNumber| {
        r.dev_type == node.dev_type && r.major == major && r.minor == minor
    };
    let order = [
        (DevNumber::Exact(node.major), DevNumber::Any),
        (DevNumber::Any, DevNumber::Exact(node.minor)),
        (DevNumber::Any, DevNumber::Any),
    ];
    for (ma, mi) in order {
        if let Some(r) = all.iter().find(|r| matches(r, ma, mi)) {
            let rw = Access::parse("rw").unwrap_or(Access::ALL);
            let left = Access::from_bits(r.access.bits() & rw.bits());
            return (!left.is_empty()).then(|| r.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("660").unwrap(), 0o660);
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("0o1777").unwrap(), 0o1777);
        for bad in ["", "9", "rw", "17777", "0o"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dest_joins_relative_paths() {
        assert_eq!(
            dest_of(Path::new("/dev/x"), Path::new("")),
            Path::new("/dev/x")
        );
        assert_eq!(
            dest_of(Path::new("/dev/dri"), Path::new("by/card0")),
            Path::new("/dev/dri/by/card0")
        );
    }

    #[test]
    fn wildcards_that_still_allow_are_found() {
        let node = NodeSpec {
            dev_type: DeviceType::Char,
            major: 10,
            minor: 200,
            mode: 0o666,
            uid: 0,
            gid: 0,
        };
        let r = |t: &str| match crate::rule::RuleSpec::parse(t).unwrap() {
            crate::rule::RuleSpec::Numbers(r) => r,
            _ => unreachable!(),
        };
        assert_eq!(wildcard_left(&[r("c *:* m")], &node), None);
        assert_eq!(
            wildcard_left(&[r("c *:* rwm")], &node).as_deref(),
            Some("c *:* rwm")
        );
        // The more specific wildcard decides.
        assert_eq!(wildcard_left(&[r("c 10:* m"), r("c *:* rwm")], &node), None);
    }
}
