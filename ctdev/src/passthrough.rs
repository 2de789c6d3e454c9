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

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroup::Cgroup;
use crate::container::netdev::{self, NetdevError};
use crate::container::nodes::{
    self, DirAction, Existing, Journal, NodeAction, NodeError, NodeSpec, Root,
};
use crate::container::process::{InitProcess, ProcessError};
use crate::grants::{self, Grant, Ledger, NodeChange, NodeGrant, Owner, Subject};
use crate::kernel::attached::{other_device_programs, DeviceProgram};
use crate::kernel::pins::PinLock;
use crate::kernel::policy_map::PolicyMap;
use crate::ops::{
    ContainerLock, ContainerState, Ctdev, Error as ControllerError, LinkCheck, LinkState,
};
use crate::plan::Plan;
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
        path: PathBuf,
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
    /// `del` of something that was never added (by this owner).
    #[error("{device} was not added to {target} by {owner} (no record of such an add; nothing changed){}", if other_owners.is_empty() { String::new() } else { format!("; it was added by: {other_owners}") })]
    NotAdded {
        /// DEVICE.
        device: String,
        target: String,
        /// Whose add was looked for.
        owner: &'static str,
        /// Owners that did add it.
        other_owners: String,
    },
    /// An interface operation on a target without its own network namespace.
    #[error("{target}: process {pid} shares the host's network namespace (no container netns): refusing to move an interface")]
    NoContainerNetns {
        target: String,
        /// The process used.
        pid: i32,
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

impl PassthroughError {
    /// Whether it failed because the container has stopped: its cgroup
    /// has no process, or its init went during the operation (a race with
    /// a container going away, not a fault).
    pub fn container_stopped(&self) -> bool {
        matches!(
            self,
            PassthroughError::Process(
                ProcessError::NoProcess(_)
                    | ProcessError::Exited { .. }
                    | ProcessError::Runtime(crate::runtimes::RuntimeError::NoProcess(_))
            )
        )
    }
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
    /// What the kernel is asked about the container before the device
    /// goes in. [`LinkCheck::Kernel`] (default): the link's state (an
    /// add to a container whose program was detached by hand is refused)
    /// and the other device programs that judge the container's accesses
    /// too, named in a warning. Both queries wait for the kernel's
    /// `cgroup_mutex`, the lock every cgroup `mkdir`/`rmdir` and program
    /// attach takes: the daemon, which watches other programs itself
    /// (takeover, coexist), uses [`LinkCheck::Pin`] (neither query; the
    /// link's pin stands for it) so that a device event's fan-out does not
    /// queue on that lock once per container.
    pub link: LinkCheck,
}

impl Default for AddOptions {
    fn default() -> Self {
        Self {
            access: Access::ALL,
            mode: None,
            uid: None,
            gid: None,
            link: LinkCheck::Kernel,
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
    /// Whose grant this is (`cli`, `daemon`).
    pub owner: Owner,
    /// Directories in the container created (`add`) or removed (`del`).
    pub dirs: Vec<PathBuf>,
    /// No node was touched: the target shares the host's mount namespace.
    pub rules_only: bool,
    /// Things the operator should know (other device programs, wildcards).
    pub warnings: Vec<String>,
    /// Nothing was changed (`--dry-run`): this is the plan.
    pub dry_run: bool,
}

/// What `add` passes in (or `del` takes back), already classified by the
/// caller: the CLI from its words (a leading `/` is a path; CDI names are
/// resolved before), the daemon and CDI from their own records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassRequest {
    /// A host device node, or a directory of nodes (recursively), at DEST
    /// in the container (nodes under a directory keep their relative path).
    Node {
        /// The host path (absolute).
        host: PathBuf,
        /// Where it lands in the container (absolute).
        dest: PathBuf,
    },
    /// A network interface in ctdev's network namespace, moved into the
    /// container's and named `name` there.
    Interface {
        /// Its name in ctdev's network namespace.
        host: String,
        /// Its name in the container.
        name: String,
    },
}

impl PassRequest {
    /// A node (or directory) at the same path inside.
    pub fn node(host: impl Into<PathBuf>) -> Self {
        let host = host.into();
        PassRequest::Node {
            dest: host.clone(),
            host,
        }
    }

    /// From a record that says which kind it is (the daemon's).
    pub fn from_record(host: &str, dest: &str, interface: bool) -> Self {
        if interface {
            PassRequest::Interface {
                host: host.into(),
                name: dest.into(),
            }
        } else {
            PassRequest::Node {
                host: host.into(),
                dest: dest.into(),
            }
        }
    }

    /// The host side as text (for messages and records).
    pub fn device(&self) -> String {
        match self {
            PassRequest::Node { host, .. } => host.display().to_string(),
            PassRequest::Interface { host, .. } => host.clone(),
        }
    }

    /// The grant this request is recorded as.
    pub fn subject(&self) -> Subject {
        match self {
            PassRequest::Node { host, dest } => Subject::Device {
                device: host.display().to_string(),
                dest: dest.display().to_string(),
            },
            PassRequest::Interface { host, name } => Subject::Interface {
                host: host.clone(),
                inside: name.clone(),
            },
        }
    }
}

/// What DEVICE names.
enum Device {
    /// One or more host device nodes with their path relative to DEVICE
    /// (empty for a single node).
    Nodes(Vec<(DeviceNode, PathBuf)>),
    /// A network interface: its host name and its name inside.
    Interface(String, String),
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

fn classify_for_add(req: &PassRequest) -> Result<Device, PassthroughError> {
    let path = match req {
        PassRequest::Interface { host, name } => {
            if netdev::is_host_interface(host) {
                return Ok(Device::Interface(host.clone(), name.clone()));
            }
            return Err(PassthroughError::UnknownDevice {
                device: host.clone(),
            });
        }
        PassRequest::Node { host, .. } if !host.is_absolute() => {
            return Err(PassthroughError::UnknownDevice {
                device: host.display().to_string(),
            })
        }
        PassRequest::Node { host, .. } => host.as_path(),
    };
    // One `lstat` (and a `stat` through a symlink) for both questions.
    let (meta, via_symlink) = DeviceNode::metadata(path)?;
    if meta.is_dir() {
        return Ok(Device::Nodes(walk(path)?));
    }
    Ok(Device::Nodes(vec![(
        DeviceNode::of_metadata(path, &meta, via_symlink)?,
        PathBuf::new(),
    )]))
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
    state: ContainerState,
    cgroup: Cgroup,
}

impl PassthroughReport {
    /// A report of nothing done yet, for `target`'s container.
    fn empty(ct: &Ctdev, target: &Target, at: &Attached, init: &InitProcess, owner: Owner) -> Self {
        PassthroughReport {
            target: target.to_string(),
            cgroup_dir: at.cgroup.dir.clone(),
            policy_id: at.state.policy_id,
            init_pid: init.pid(),
            owner,
            nodes: Vec::new(),
            interface: None,
            rules_changed: Vec::new(),
            rules_unchanged: Vec::new(),
            dirs: Vec::new(),
            rules_only: false,
            warnings: Vec::new(),
            dry_run: ct.config().dry_run,
        }
    }
}

/// The container's state (one typed query, its entries only), resolved
/// through the container's lock, required live and enforcing.
fn attached(
    ct: &Ctdev,
    lock: &ContainerLock,
    target: &Target,
    map: &mut Option<PolicyMap>,
    check: LinkCheck,
) -> Result<Attached, PassthroughError> {
    let state = ct.container_locked(lock, target, map, check)?;
    let cgroup = match (&state.cgroup, state.link) {
        (Some(c), LinkState::Enforcing) => c.clone(),
        (_, link) => {
            return Err(PassthroughError::NotRunning {
                target: target.to_string(),
                state: link.as_str().into(),
            })
        }
    };
    Ok(Attached { state, cgroup })
}

/// What `add` and `del` start from, all under the container's lock held
/// for the whole command (no other ctdev changes this container's policy
/// between reading the entries and writing the rule; other containers'
/// adds and dels run meanwhile, global changes such as attach or detach
/// do not): the container's state (live and enforcing, resolved under the
/// lock and checked to be the container locked), its init process, the
/// report, its grants, and the policy map, opened once for the whole
/// command.
struct Begun {
    lock: ContainerLock,
    map: Option<PolicyMap>,
    at: Attached,
    init: InitProcess,
    report: PassthroughReport,
    id: u64,
    ledger: Ledger,
}

fn begin(
    ct: &Ctdev,
    owner: Owner,
    target: &Target,
    check: LinkCheck,
) -> Result<Begun, PassthroughError> {
    let lock = ct.lock_container(target)?;
    let mut map = None;
    let at = attached(ct, &lock, target, &mut map, check)?;
    let id = at.state.policy_id;
    let init = init_of(ct, target, &at.cgroup)?;
    let report = PassthroughReport::empty(ct, target, &at, &init, owner);
    let ledger = ct.grants().load(id).map_err(ControllerError::from)?;
    Ok(Begun {
        lock,
        map,
        at,
        init,
        report,
        id,
        ledger,
    })
}

/// The process whose namespaces are used: N for `pid:N`, else the oldest
/// process of the cgroup.
pub(crate) fn init_of(
    ct: &Ctdev,
    target: &Target,
    cgroup: &Cgroup,
) -> Result<InitProcess, ProcessError> {
    match target {
        Target::Pid(pid) => InitProcess::of_process(ct.cgroups(), *pid, cgroup),
        _ => InitProcess::of_cgroup(ct.cgroups(), cgroup),
    }
}

/// A warning when device programs besides ctdev's (attached to the cgroup
/// or an ancestor) may still deny the device. Only `add` warns: one
/// effective-list query of the cgroup, and the walk up the ancestors only
/// when someone else's program is in it.
fn foreign_warning(ct: &Ctdev, at: &Attached, target: &Target) -> Option<String> {
    // Read with `LinkCheck::Pin`: the kernel is not asked.
    let own = at.state.program_id?;
    let others: Vec<DeviceProgram> =
        other_device_programs(ct.cgroups(), &at.cgroup, own).unwrap_or_default();
    if others.is_empty() {
        return None;
    }
    let names: Vec<String> = others
        .iter()
        .map(|p| {
            format!(
                "id {} ({}) on {}",
                p.id,
                p.display_name(),
                p.attached_at.display()
            )
        })
        .collect();
    Some(format!(
        "other device program(s) {} also judge device access in {} and may still deny the device; `ctdev attach --takeover {target}` replaces them",
        names.join(", "),
        at.cgroup.dir.display()
    ))
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

/// Puts the entries `plan` changed back as they were (under the lock).
fn undo_plan(
    ct: &Ctdev,
    lock: &PinLock,
    map: &mut Option<PolicyMap>,
    at: &Attached,
    plan: &Plan,
) -> Vec<String> {
    let mut back = Plan::default();
    for c in plan.changes.iter().rev() {
        back.record(c.key, c.after, c.before);
    }
    match ct.apply_plan_in(lock, map.as_mut(), &at.state, &back, None) {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("cannot restore the rules: {e}")],
    }
}

fn save_ledger(ct: &Ctdev, ledger: &Ledger) -> Result<(), PassthroughError> {
    if ct.config().dry_run {
        return Ok(());
    }
    ct.grants()
        .save(ledger)
        .map_err(|e| PassthroughError::from(ControllerError::from(e)))
}

const NO_ROOT: &str = "no container root: the target's process shares the host's mount namespace, so no node was created, replaced or removed (rules only)";

/// Passes a device into the container `target` as a CLI grant (see [`add_as`]).
pub fn add(
    ct: &Ctdev,
    target: &Target,
    req: &PassRequest,
    opts: &AddOptions,
) -> Result<PassthroughReport, PassthroughError> {
    add_as(ct, Owner::Cli, target, req, opts)
}

/// Passes DEVICE into the container `target`: a device node (or every node
/// under a directory) at DEST with its exact rule opened, or a network
/// interface moved into the container's netns (renamed to DEST). What it
/// changes is recorded as a grant of `owner` (written ahead), so [`del_as`]
/// takes back exactly that. Nodes and interfaces are only touched in the
/// container's own namespaces: a target sharing the host's mount namespace
/// gets rules only (and is told so); an interface needs the container's own
/// network namespace.
pub fn add_as(
    ct: &Ctdev,
    owner: Owner,
    target: &Target,
    req: &PassRequest,
    opts: &AddOptions,
) -> Result<PassthroughReport, PassthroughError> {
    let kind = classify_for_add(req)?;
    let device = req.device();
    let device = device.as_str();
    let Begun {
        lock,
        mut map,
        at,
        init,
        mut report,
        id,
        ledger: before_ledger,
    } = begin(ct, owner, target, opts.link)?;
    let node_seq = grants::next_node_seq(&before_ledger);
    let nodes = match kind {
        Device::Interface(name, new_name) => {
            if opts.mode.is_some() || opts.uid.is_some() || opts.gid.is_some() {
                return Err(PassthroughError::NotForInterface("--mode/--uid/--gid"));
            }
            netdev::check_name(&new_name)?;
            if init.shares_host_ns("net")? {
                return Err(PassthroughError::NoContainerNetns {
                    target: target.to_string(),
                    pid: init.pid(),
                });
            }
            report.interface = Some(InterfaceReport {
                host_name: name.clone(),
                container_name: new_name.clone(),
                action: "moved-in",
            });
            if ct.config().dry_run {
                return Ok(report);
            }
            let mut ledger = before_ledger.clone();
            grants::record(
                &mut ledger,
                Grant::of_entries(
                    owner,
                    Subject::Interface {
                        host: name.clone(),
                        inside: new_name.clone(),
                    },
                    Vec::new(),
                ),
            );
            save_ledger(ct, &ledger)?;
            let netns = init.open_netns()?;
            if let Err(e) = netdev::move_into(&name, netns.as_fd(), &new_name) {
                let _ = save_ledger(ct, &before_ledger);
                return Err(e.into());
            }
            crate::failpoint!("add.netdev.after_move");
            return Ok(report);
        }
        Device::Nodes(nodes) => nodes,
    };

    // Plan: every node's spec and DEST, all checked before anything changes.
    let base = match req {
        PassRequest::Node { dest, .. } => dest.clone(),
        PassRequest::Interface { .. } => PathBuf::from(device),
    };
    nodes::check_dest(&base)?;
    let rules_only = init.shares_host_ns("mnt")?;
    let (root_uid, root_gid) = match (opts.uid, opts.gid) {
        (Some(u), Some(g)) => (u, g),
        _ => init.root_ids()?,
    };
    let root_path = init.root_path();
    let root = Root {
        fd: init.root(),
        path: &root_path,
    };
    let mut plan_nodes = Vec::new();
    let mut node_grants = Vec::new();
    // Directories this add will create (recorded ahead; the final record
    // has the ones it did create).
    let mut new_dirs: Vec<PathBuf> = Vec::new();
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
        if !rules_only {
            let (missing, existing) = nodes::survey(root, &dest)?;
            for d in missing {
                if !new_dirs.contains(&d) {
                    new_dirs.push(d);
                }
            }
            if let Existing::Other(kind) = existing {
                return Err(NodeError::Occupied {
                    dest,
                    root: root_path.clone(),
                    kind,
                }
                .into());
            }
            // A path other grants made a node at keeps their base; else
            // what is there now is the base (a node already as wanted
            // that no grant made is the container's own: no record).
            let change = match (grants::node_base(&before_ledger, &dest), existing) {
                (Some(base), _) => Some(base),
                (None, Existing::Device(found)) if found == spec => None,
                (None, Existing::Device(found)) => Some(NodeChange::Replaced { old: found.into() }),
                (None, _) => Some(NodeChange::Created),
            };
            if let Some(change) = change {
                node_grants.push(NodeGrant {
                    dest: dest.clone(),
                    node: spec.into(),
                    change,
                    seq: node_seq,
                });
            }
        }
        plan_nodes.push((host.path, resolved, dest, spec));
    }
    if let Some(w) = foreign_warning(ct, &at, target) {
        report.warnings.push(w);
    }
    if rules_only {
        report.rules_only = true;
        report.warnings.push(NO_ROOT.into());
    }

    // The rules: exact entries, starting from what each device had.
    let mut rules: Vec<Rule> = Vec::new();
    for (_, _, _, spec) in &plan_nodes {
        let r = exact_rule(spec, opts.access);
        if !rules.contains(&r) {
            rules.push(r);
        }
    }
    let (plan, granted) = grants::plan_grant(&at.state.entries, id, &rules);
    report.rules_changed = plan.changed_text();
    report.rules_unchanged = plan.unchanged_text(&at.state.entries);
    let mut ledger = before_ledger.clone();
    // Directories other grants created that this add's nodes sit in are
    // shared: the last grant using one removes it.
    let shared = grants::shared_dirs(
        &before_ledger,
        plan_nodes.iter().map(|(_, _, d, _)| d.as_path()),
    );
    let grant_dirs = |made: &[PathBuf]| -> Vec<PathBuf> {
        let mut all = shared.clone();
        all.extend(made.iter().filter(|d| !shared.contains(d)).cloned());
        all
    };
    report.dirs = new_dirs.clone();
    let subject = Subject::Device {
        device: device.into(),
        dest: base.display().to_string(),
    };
    grants::record(
        &mut ledger,
        Grant {
            owner,
            subject: subject.clone(),
            entries: granted,
            nodes: node_grants,
            dirs: grant_dirs(&new_dirs),
            pending: true,
        },
    );
    if ct.config().dry_run {
        for (device, resolved, dest, spec) in plan_nodes {
            report.nodes.push(NodeReport {
                device,
                resolved,
                dest,
                node: spec,
                action: if rules_only {
                    NodeAction::Unchanged
                } else {
                    NodeAction::Created
                },
            });
        }
        return Ok(report);
    }
    // Written ahead: a crash from here on leaves a record whose take-back
    // removes at most what this add made.
    save_ledger(ct, &ledger)?;

    // 1. Nodes (journaled).
    let mut journal = Journal::new();
    let fail = |e: PassthroughError, journal: Journal| {
        let mut failures = journal.rollback();
        if let Err(e) = save_ledger(ct, &before_ledger) {
            failures.push(e.to_string());
        }
        with_undo(e, failures)
    };
    if !rules_only {
        for (device, resolved, dest, spec) in &plan_nodes {
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
    }
    crate::failpoint!("add.after_nodes");

    // 2. The container must still be the one we looked at, then the rules.
    if let Err(e) = init.check_alive() {
        return Err(fail(e.into(), journal));
    }
    if let Err(e) = ct.apply_plan_in(&lock, map.as_mut(), &at.state, &plan, None) {
        return Err(fail(e.into(), journal));
    }
    crate::failpoint!("add.after_rules");
    // The init died while the rule was written: undo everything.
    if let Err(e) = init.check_alive() {
        let mut failures = undo_plan(ct, &lock, &mut map, &at, &plan);
        failures.extend(journal.rollback());
        if let Err(e) = save_ledger(ct, &before_ledger) {
            failures.push(e.to_string());
        }
        return Err(with_undo(e.into(), failures));
    }
    // The final record lists the directories this add did create.
    let made = journal.created_dirs();
    if let Some(i) = ledger.find(owner, &subject) {
        let g = &mut ledger.grants[i];
        g.dirs.retain(|d| !new_dirs.contains(d) || made.contains(d));
        for d in grant_dirs(&made) {
            if !g.dirs.contains(&d) {
                g.dirs.push(d);
            }
        }
    }
    report.dirs = made;
    for g in ledger.grants.iter_mut() {
        g.pending = false;
    }
    save_ledger(ct, &ledger)?;
    tracing::debug!(target = %target, nodes = plan_nodes.len(), "device passthrough added");
    Ok(report)
}

/// Takes a CLI grant back (see [`del_as`]).
pub fn del(
    ct: &Ctdev,
    target: &Target,
    req: &PassRequest,
) -> Result<PassthroughReport, PassthroughError> {
    del_as(ct, Owner::Cli, target, req, LinkCheck::Kernel)
}

/// Undoes `add` of DEVICE at DEST by `owner`, by its record: the bits that
/// grant added are taken away (kept when another grant asked for them; an
/// entry it created is removed only if no broader entry would then allow
/// more), the nodes it created are removed and the nodes it replaced are
/// put back, and the directories it created are removed when empty and no
/// other grant still lists them; an interface moves back to ctdev's netns
/// under its name. The host directory is not read again: what was recorded
/// is taken back even if the host changed since. Nothing recorded: an
/// error, nothing changed. `check`: how the container's link state is
/// learnt (see [`AddOptions::link`]).
pub fn del_as(
    ct: &Ctdev,
    owner: Owner,
    target: &Target,
    req: &PassRequest,
    check: LinkCheck,
) -> Result<PassthroughReport, PassthroughError> {
    let device = req.device();
    let device = device.as_str();
    let Begun {
        lock,
        mut map,
        at,
        init,
        mut report,
        id,
        ledger,
    } = begin(ct, owner, target, check)?;
    match req {
        PassRequest::Interface { host, name } => {
            netdev::check_name(host)?;
            netdev::check_name(name)?;
        }
        PassRequest::Node { dest, .. } => nodes::check_dest(dest)?,
    }
    let subject = req.subject();
    let Some(index) = ledger.find(owner, &subject) else {
        let others: Vec<&str> = ledger
            .grants
            .iter()
            .filter(|g| g.subject == subject)
            .map(|g| g.owner.as_str())
            .collect();
        return Err(PassthroughError::NotAdded {
            device: device.into(),
            target: target.to_string(),
            owner: owner.as_str(),
            other_owners: others.join(", "),
        });
    };
    let grant = ledger.grants[index].clone();

    if let Subject::Interface { host, inside } = &subject {
        if init.shares_host_ns("net")? {
            return Err(PassthroughError::NoContainerNetns {
                target: target.to_string(),
                pid: init.pid(),
            });
        }
        report.interface = Some(InterfaceReport {
            host_name: host.clone(),
            container_name: inside.clone(),
            action: "moved-out",
        });
        if ct.config().dry_run {
            return Ok(report);
        }
        let netns = init.open_netns()?;
        let own = netdev::open_own_netns()?;
        netdev::move_out(netns.as_fd(), inside, own.as_fd(), host)?;
        crate::failpoint!("del.netdev.after_move");
        let (_, after) = grants::plan_take_back(&at.state.entries, &ledger, index);
        save_ledger(ct, &after)?;
        return Ok(report);
    }

    // 1. Rules first (closing access is the safe direction).
    let (plan, after) = grants::plan_take_back(&at.state.entries, &ledger, index);
    report.rules_changed = plan.changed_text();
    report.rules_unchanged = plan.unchanged_text(&at.state.entries);
    let rules_only = init.shares_host_ns("mnt")?;
    let root_path = init.root_path();
    // The nodes to undo (shared ones stay; replaced ones pass their record on).
    let undo_nodes = if rules_only {
        Vec::new()
    } else {
        let root = Root {
            fd: init.root(),
            path: &root_path,
        };
        grants::release_nodes(&grant, &after, |dest| match nodes::inspect(root, dest) {
            Ok(Existing::Device(found)) => Some(found.into()),
            _ => None,
        })
    };
    if ct.config().dry_run {
        if !rules_only {
            report.dirs = grants::dirs_to_remove(&grant, &after);
        }
        for n in &undo_nodes {
            report.nodes.push(NodeReport {
                device: PathBuf::from(device),
                resolved: None,
                dest: n.dest.clone(),
                node: n.node.spec(),
                action: match n.change {
                    NodeChange::Created => NodeAction::Removed,
                    NodeChange::Replaced { .. } => NodeAction::Replaced,
                },
            });
        }
        return Ok(report);
    }
    init.check_alive()?;
    ct.apply_plan_in(&lock, map.as_mut(), &at.state, &plan, None)?;
    crate::failpoint!("del.after_revoke");

    // 2. Nodes: only the ones this grant made, only if they are still its.
    let mut journal = Journal::new();
    if rules_only {
        report.rules_only = true;
        report.warnings.push(NO_ROOT.into());
    } else {
        let root = Root {
            fd: init.root(),
            path: &root_path,
        };
        for n in &undo_nodes {
            let spec = n.node.spec();
            let result = match n.change {
                NodeChange::Created => match nodes::remove_node(root, &n.dest, &spec, &mut journal)
                {
                    Err(NodeError::Mismatch { found, .. }) => {
                        report.warnings.push(format!(
                            "{} is now {found}, not the {} this add made: left as it is",
                            n.dest.display(),
                            spec.device()
                        ));
                        Ok(NodeAction::Unchanged)
                    }
                    other => other,
                },
                NodeChange::Replaced { old } => {
                    nodes::restore_node(root, &n.dest, &spec, &old.spec(), &mut journal)
                }
            };
            match result {
                Ok(action) => report.nodes.push(NodeReport {
                    device: PathBuf::from(device),
                    resolved: None,
                    dest: n.dest.clone(),
                    node: spec,
                    action,
                }),
                Err(e) => {
                    let mut failures = journal.rollback();
                    failures.extend(undo_plan(ct, &lock, &mut map, &at, &plan));
                    return Err(with_undo(e.into(), failures));
                }
            }
        }
    }
    crate::failpoint!("del.after_nodes");
    // 3. Directories this grant created that no other grant lists, deepest
    // first, each only if empty (the container's own files keep it).
    if !rules_only {
        let root = Root {
            fd: init.root(),
            path: &root_path,
        };
        for dir in grants::dirs_to_remove(&grant, &after) {
            match nodes::remove_dir_if_empty(root, &dir) {
                Ok(DirAction::Removed) => report.dirs.push(dir),
                Ok(DirAction::Absent) => {}
                Ok(DirAction::NotEmpty) => report.warnings.push(format!(
                    "directory {} (made by this add) is not empty: left in place",
                    dir.display()
                )),
                Err(e) => report
                    .warnings
                    .push(format!("cannot remove directory {}: {e}", dir.display())),
            }
        }
    }
    save_ledger(ct, &after)?;
    // Wildcards that still let the device through.
    let now = plan.result(&at.state.entries);
    let all: Vec<Rule> = now
        .iter()
        .filter_map(|(k, v)| Rule::from_entry(k, *v))
        .collect();
    for eg in &grant.entries {
        let node = NodeSpec {
            dev_type: DeviceType::from_kernel(eg.dev_type).unwrap_or(DeviceType::Char),
            major: eg.major,
            minor: eg.minor,
            mode: 0,
            uid: 0,
            gid: 0,
        };
        if now.contains_key(&eg.key(id)) {
            continue;
        }
        if let Some(w) = wildcard_left(&all, &node) {
            report.warnings.push(format!(
                "{} is still allowed by the wildcard entry {w} (as before the add)",
                node.device()
            ));
        }
    }
    tracing::debug!(target = %target, nodes = grant.nodes.len(), "device passthrough removed");
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
