//! The operations behind the CLI: attach, allow, revoke, list, detach.
//!
//! Every change runs under the pin-root lock, validates all input before it
//! writes anything, and orders its kernel steps so a container under policy
//! is never without its program (fail-closed): rules are written before the
//! program is attached, and the link is pinned before the process exits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use ctdev_common::PolicyKey;
use serde::Serialize;

use crate::audit::drift::{self, Drift};
use crate::cgroup::{Cgroup, CgroupError, CgroupFs};
use crate::devname::device_names;
use crate::grants::plan_grant;
use crate::grants::{self, Grant, GrantError, Ledger, Owner as GrantOwner, Store, Subject};
use crate::kernel::attachment::{self, AttachmentError, PinnedLink};
use crate::kernel::counters::{Counters, Stats};
use crate::kernel::pins::{PinError, PinLock, PinRoot};
use crate::kernel::policy_map::{Change, PolicyMap, PolicyMapError};
use crate::kernel::program::{ProgramError, ProgramObject};
use crate::kernel::programs::{device_programs_named, DeviceProgram, Owner, ProgramNames};
use crate::plan::{
    attach_entries, entry_text, key_text, plan_attach, plan_revoke, AttachPlan, Entries, Plan,
    RevokeError,
};
use crate::presets::Preset;
use crate::rule::{Access, DevNumber, DeviceType, Rule};
use crate::runtimes::{self, RuntimeError};
use crate::target::{RuntimeKind, Target};

/// Settings every operation needs (validated from CLI flags / environment).
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory in bpffs that holds ctdev's pins.
    pub pin_root: PathBuf,
    /// cgroup2 mount point; discovered from mountinfo when `None`.
    pub cgroup_mount: Option<PathBuf>,
    /// eBPF object file; the embedded one when `None`.
    pub bpf_object: Option<PathBuf>,
    /// How long to wait for another ctdev's lock.
    pub lock_timeout: Duration,
    /// Where device numbers are resolved to names (`/sys/dev`).
    pub sys_dev: PathBuf,
    /// Where grant records live (default: derived from the pin root under
    /// `/run/ctdev/pinroots`).
    pub state_dir: Option<PathBuf>,
    /// Plan only: print what would change, change nothing.
    pub dry_run: bool,
    /// Allow attaching the root cgroup or a cgroup holding PID 1.
    pub force_host: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(crate::kernel::pins::DEFAULT_PIN_ROOT),
            cgroup_mount: None,
            bpf_object: None,
            lock_timeout: Duration::from_secs(10),
            sys_dev: PathBuf::from("/sys/dev"),
            state_dir: None,
            dry_run: false,
            force_host: false,
        }
    }
}

/// Why an operation failed. The state is as it was before the command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target could not be resolved.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The pin root could not be used.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// The policy map could not be used.
    #[error(transparent)]
    PolicyMap(#[from] PolicyMapError),
    /// The program could not be loaded.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The program could not be attached or detached.
    #[error(transparent)]
    Attachment(#[from] AttachmentError),
    /// A runtime container could not be found.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The target is not under ctdev policy.
    #[error("{target} is not under ctdev policy{hint}")]
    NotUnderPolicy {
        /// The target as given.
        target: String,
        /// What to do about it (` (run \`ctdev attach T\` first)`), chosen by
        /// [`Ctdev::not_under_policy`]; empty when there is nothing to suggest.
        hint: String,
    },
    /// A rule to revoke is not in the container's policy.
    #[error("rule {rule:?} is not in the policy of {target}: nothing to revoke (see `ctdev list {target}`; `revoke --missing-ok` treats it as already revoked)")]
    RuleNotPresent {
        /// The rule.
        rule: String,
        /// The target as given.
        target: String,
    },
    /// The policy map pin was removed while containers are attached: their
    /// programs still use the unpinned map, which ctdev can no longer reach.
    #[error("policy map pin {path} is missing but {links} container(s) are attached (links in {links_dir}): their programs still enforce the unpinned map, which ctdev cannot change; refusing (detach them with `ctdev detach id:N`, then attach again)")]
    MapPinMissing {
        /// The map pin path.
        path: PathBuf,
        /// How many link pins exist.
        links: usize,
        /// The links directory.
        links_dir: PathBuf,
    },
    /// The grant records could not be used.
    #[error(transparent)]
    Grants(#[from] GrantError),
    /// `attach` on an attached cgroup asked for a different policy.
    #[error("{target} is already attached with a different policy ({}); `attach` never changes an attached policy: use `ctdev allow {target} RULE` / `ctdev revoke {target} RULE` (or `ctdev detach` first)", diffs.join(", "))]
    AttachDiffers {
        /// The target as given.
        target: String,
        /// `c 1:5: wants '', has rwm` per differing entry.
        diffs: Vec<String>,
    },
    /// The target is the host itself.
    #[error("refusing to attach {target}: {why}; this would judge the host's own device access (pass --force-host if you really mean it)")]
    HostCgroup {
        /// The target as given.
        target: String,
        /// Why it is the host.
        why: String,
    },
    /// Nothing was granted for this subject.
    #[error("{subject} was not added to {target} by {owner}: no record of it, nothing to take back (see `ctdev list {target}`)")]
    NotGranted {
        /// The target as given.
        target: String,
        /// Whose grant was looked for.
        owner: &'static str,
        /// What was looked for.
        subject: String,
    },
    /// `id:N` was given where a live cgroup is needed.
    #[error("target {target} names a policy id; this command needs a cgroup path or pid:N")]
    NeedsCgroup {
        /// The target as given.
        target: String,
    },
}

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
    /// `enforcing`; `detached` when the program is off but the pin is left
    /// (an interrupted detach: run `ctdev detach` again); or `defunct` when
    /// the cgroup was removed (detach with `id:N`).
    pub state: &'static str,
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

/// What `attach` did.
#[derive(Debug, Clone, Serialize)]
pub struct AttachReport {
    /// The cgroup directory.
    pub cgroup_dir: PathBuf,
    /// Policy id.
    pub policy_id: u64,
    /// `true` if the container was already under policy (only rules were added).
    pub already_attached: bool,
    /// Program id.
    pub program_id: u32,
    /// Link pin.
    pub link_pin: PathBuf,
    /// Entries written (new or widened).
    pub changed: Vec<String>,
    /// Nothing was changed (`--dry-run`): `changed` is the plan.
    pub dry_run: bool,
}

/// What `allow` or `revoke` changed.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    /// The cgroup directory, if it still exists.
    pub cgroup_dir: Option<PathBuf>,
    /// Policy id.
    pub policy_id: u64,
    /// Entries as they are now (`c 1:3 rw`), or removed (`-c 1:3`).
    pub changed: Vec<String>,
    /// Entries that already were as asked.
    pub unchanged: Vec<String>,
    /// Explanations (an entry kept as a deny, ...).
    pub notes: Vec<String>,
    /// Nothing was changed (`--dry-run`): `changed` is the plan.
    pub dry_run: bool,
    /// Rules `revoke --missing-ok` skipped because no entry matched them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

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
    /// The name `list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Enforcing => "enforcing",
            LinkState::Detached => "detached",
            LinkState::Defunct => "defunct",
        }
    }
}

/// One container's policy state, read for that container only.
#[derive(Debug, Clone)]
pub struct ContainerState {
    /// The live cgroup, if any.
    pub cgroup: Option<Cgroup>,
    /// Policy id.
    pub policy_id: u64,
    /// Link state.
    pub link: LinkState,
    /// Program id (0 once detached).
    pub program_id: u32,
    /// The container's entries.
    pub entries: Entries,
}

/// What `detach` removed.
#[derive(Debug, Clone, Serialize)]
pub struct DetachReport {
    /// Policy id.
    pub policy_id: u64,
    /// Link pin removed (if there was one).
    pub link_pin: Option<PathBuf>,
    /// Number of entries removed.
    pub entries_removed: usize,
}

/// ctdev's library entry point: one per command invocation.
#[derive(Debug)]
pub struct Ctdev {
    config: Config,
    pins: PinRoot,
    cgroups: CgroupFs,
    grants: Store,
}

/// A resolved target: the policy id, and the cgroup when it exists.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Policy id.
    pub policy_id: u64,
    /// The live cgroup.
    pub cgroup: Option<Cgroup>,
}

impl Ctdev {
    /// Validates the configuration (finds cgroup2).
    pub fn new(config: Config) -> Result<Self, Error> {
        let cgroups = CgroupFs::new(config.cgroup_mount.as_deref())?;
        Ok(Self {
            pins: PinRoot::new(&config.pin_root),
            grants: Store::new(&config.pin_root, config.state_dir.as_deref()),
            cgroups,
            config,
        })
    }

    /// The cgroup2 hierarchy in use.
    pub fn cgroups(&self) -> &CgroupFs {
        &self.cgroups
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The pin root in use.
    pub fn pins(&self) -> &PinRoot {
        &self.pins
    }

    /// The grant records in use.
    pub fn grants(&self) -> &Store {
        &self.grants
    }

    /// One container's state (link and entries), without reading any other
    /// container's. Fails with [`Error::NotUnderPolicy`] when it has no link.
    pub fn container(&self, target: &Target) -> Result<ContainerState, Error> {
        let (resolved, link) = self.require_attached(target)?;
        let link_state = match (&resolved.cgroup, link.is_live_for(resolved.policy_id)) {
            (Some(_), true) => LinkState::Enforcing,
            (Some(_), false) => LinkState::Detached,
            (None, _) => LinkState::Defunct,
        };
        self.check_map_pin()?;
        let map_pin = self.pins.policy_map();
        let entries = if map_pin.exists() {
            PolicyMap::open(&map_pin)?.entries_of(resolved.policy_id)?
        } else {
            Entries::new()
        };
        Ok(ContainerState {
            cgroup: resolved.cgroup,
            policy_id: resolved.policy_id,
            link: link_state,
            program_id: link.info.prog_id,
            entries,
        })
    }

    /// Refuses the root cgroup and any cgroup holding PID 1 (or an ancestor
    /// of PID 1's cgroup) unless `force_host`.
    fn check_not_host(&self, target: &Target, cgroup: &Cgroup) -> Result<(), Error> {
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

    /// Takes the pin-root lock for a command that may create the pin root
    /// (attach): mounts bpffs and creates the directories when missing.
    /// Every change to the policy holds this lock for its whole sequence;
    /// the `*_locked` operations take it as a witness.
    pub fn lock(&self) -> Result<PinLock, Error> {
        self.pins.prepare()?;
        Ok(self.pins.lock(self.config.lock_timeout)?)
    }

    /// Takes the pin-root lock for a command that needs existing state
    /// (allow, revoke, detach, add, del): when the pin root does not exist,
    /// nothing is under policy and nothing is created.
    pub fn lock_existing(&self, target: &Target) -> Result<PinLock, Error> {
        if !self.pins.exists() {
            return Err(self.not_under_policy(target));
        }
        match self.pins.lock(self.config.lock_timeout) {
            Ok(l) => Ok(l),
            // The last container was detached while we waited.
            Err(PinError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(self.not_under_policy(target))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Puts the target under a default-deny policy made of `preset` plus
    /// `rules`. If it already is, only adds `rules` and says so.
    pub fn attach(
        &self,
        target: &Target,
        preset: Preset,
        rules: &[Rule],
    ) -> Result<AttachReport, Error> {
        let resolved = self.resolve(target)?;
        let cgroup = resolved.cgroup.ok_or_else(|| Error::NeedsCgroup {
            target: target.to_string(),
        })?;
        self.check_not_host(target, &cgroup)?;
        // Load the object before touching anything: a missing object changes nothing.
        let object = ProgramObject::new(self.config.bpf_object.as_deref())?;
        let lock = self.lock()?;
        self.attach_locked(&lock, cgroup, &object, preset, rules)
    }

    /// Attaches the target with `preset` unless it is already attached (then
    /// its policy is left as it is): for the daemon, whose rules are grants
    /// made after the attach ([`Ctdev::grant`]).
    pub fn ensure_attached(&self, target: &Target, preset: Preset) -> Result<AttachReport, Error> {
        let resolved = self.resolve(target)?;
        let cgroup = resolved.cgroup.ok_or_else(|| Error::NeedsCgroup {
            target: target.to_string(),
        })?;
        self.check_not_host(target, &cgroup)?;
        let object = ProgramObject::new(self.config.bpf_object.as_deref())?;
        let lock = self.lock()?;
        if let Some(link) = attachment::open(&self.pins, cgroup.id)? {
            if link.is_live_for(cgroup.id) {
                return Ok(AttachReport {
                    cgroup_dir: cgroup.dir,
                    policy_id: cgroup.id,
                    already_attached: true,
                    program_id: link.info.prog_id,
                    link_pin: link.pin,
                    changed: Vec::new(),
                    dry_run: self.config.dry_run,
                });
            }
        }
        self.attach_locked(&lock, cgroup, &object, preset, &[])
    }

    /// [`Ctdev::attach`] of a resolved cgroup, under a lock the caller holds.
    pub fn attach_locked(
        &self,
        _lock: &PinLock,
        cgroup: Cgroup,
        object: &ProgramObject,
        preset: Preset,
        rules: &[Rule],
    ) -> Result<AttachReport, Error> {
        crate::failpoint!("attach.after_lock");
        let id = cgroup.id;
        // A foreign object at the link pin is refused before anything else.
        let existing = attachment::open(&self.pins, id)?;
        self.check_map_pin()?;

        if let Some(link) = existing {
            if link.is_live_for(id) {
                let map = PolicyMap::open(&self.pins.policy_map())?;
                let current = map.entries_of(id)?;
                match plan_attach(Some(&current), id, &preset.rules(), rules) {
                    AttachPlan::Differs { diffs } => {
                        return Err(Error::AttachDiffers {
                            target: cgroup.dir.display().to_string(),
                            diffs: diffs
                                .iter()
                                .map(|(k, want, has)| {
                                    format!(
                                        "{}: wants {}, has {}",
                                        key_text(k),
                                        Access::from_bits(*want),
                                        has.map(|h| Access::from_bits(h).to_string())
                                            .unwrap_or_else(|| "no entry".into())
                                    )
                                })
                                .collect(),
                        })
                    }
                    AttachPlan::Satisfied | AttachPlan::Fresh { .. } => {}
                }
                tracing::info!(cgroup = %cgroup.dir.display(), policy_id = id, "already attached");
                return Ok(AttachReport {
                    cgroup_dir: cgroup.dir,
                    policy_id: id,
                    already_attached: true,
                    program_id: link.info.prog_id,
                    link_pin: link.pin,
                    changed: Vec::new(),
                    dry_run: self.config.dry_run,
                });
            }
            if self.config.dry_run {
                return Ok(self.fresh_attach_report(cgroup, preset, rules));
            }
            // The cgroup this pin was for is gone and a new one got its id.
            tracing::warn!(pin = %link.pin.display(), "removing defunct link pin");
            attachment::detach(link)?;
        }

        if self.config.dry_run {
            return Ok(self.fresh_attach_report(cgroup, preset, rules));
        }
        // The container's own program instance and maps (the shared maps
        // are created and pinned on first use).
        let program = object.program_for_container(id, &self.pins)?;
        crate::failpoint!("attach.after_load");
        let mut map = PolicyMap::open(&self.pins.policy_map())?;
        // Counters of an earlier container with this id start from zero.
        if let Some(mut counters) = Counters::open(&self.pins)? {
            counters.reset(id)?;
        }
        let before = map.entries_of(id)?;
        // Stale entries of this id (a crash before attaching) go first.
        let mut changes: Vec<Change> = before.keys().map(|k| (*k, None)).collect();
        let wanted = attach_entries(id, &preset.rules(), rules);
        let changed = describe(&wanted);
        // Grants of an earlier container with this id are void.
        self.grants.remove(id)?;
        changes.extend(wanted.into_iter().map(|(k, v)| (k, Some(v))));
        map.apply(&changes)?;
        crate::failpoint!("attach.after_rules");

        match attachment::attach(program.fd(), &cgroup, &self.pins) {
            Ok(link) => {
                crate::failpoint!("attach.after_pin");
                tracing::info!(cgroup = %cgroup.dir.display(), policy_id = id, prog_id = link.info.prog_id, "attached");
                crate::audit::names::record(self.grants.dir(), id, &cgroup.path);
                Ok(AttachReport {
                    cgroup_dir: cgroup.dir,
                    policy_id: id,
                    already_attached: false,
                    program_id: link.info.prog_id,
                    link_pin: link.pin,
                    changed,
                    dry_run: false,
                })
            }
            Err(e) => {
                // Nothing was attached: put the entries back as they were.
                let restore: Vec<Change> = map
                    .entries_of(id)?
                    .into_keys()
                    .map(|k| (k, before.get(&k).copied()))
                    .chain(before.iter().map(|(k, v)| (*k, Some(*v))))
                    .collect();
                map.apply(&restore)?;
                drop(map);
                drop(program);
                // Maps this attach created for nobody are unpinned again.
                if let Err(cleanup) = self.remove_pins_if_unused() {
                    tracing::warn!("cannot remove unused pins after a failed attach: {cleanup}");
                }
                Err(e.into())
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
    fn require_attached(&self, target: &Target) -> Result<(Resolved, PinnedLink), Error> {
        let resolved = self.resolve(target)?;
        let not_under = || self.not_under_policy(target);
        if !self.pins.exists() {
            return Err(not_under());
        }
        let link = attachment::open(&self.pins, resolved.policy_id)?.ok_or_else(not_under)?;
        Ok((resolved, link))
    }

    /// Adds access to the target's policy (bits are OR-ed into existing entries).
    pub fn allow(&self, target: &Target, rules: &[Rule]) -> Result<ChangeReport, Error> {
        let lock = self.lock_existing(target)?;
        self.allow_locked(&lock, target, rules)
    }

    /// [`Ctdev::allow`] under a lock the caller holds. Each rule is
    /// recorded as an operator grant (so the daemon's take-back of the same
    /// rule leaves it).
    pub fn allow_locked(
        &self,
        lock: &PinLock,
        target: &Target,
        rules: &[Rule],
    ) -> Result<ChangeReport, Error> {
        let state = self.container(target)?;
        let mut ledger = self.grants.load(state.policy_id)?;
        let mut entries = state.entries.clone();
        let mut total = Plan::default();
        let mut granted_all = Vec::with_capacity(rules.len());
        for rule in rules {
            let (plan, granted) =
                grants::plan_grant_into(&mut entries, state.policy_id, std::slice::from_ref(rule));
            for c in plan.changes {
                total.record(c.key, state.entries.get(&c.key).copied(), c.after);
            }
            for k in plan.unchanged {
                if !total.changes_key(&k) {
                    total.record(
                        k,
                        state.entries.get(&k).copied(),
                        state.entries.get(&k).copied(),
                    );
                }
            }
            granted_all.push(Grant {
                owner: GrantOwner::Operator,
                subject: Subject::Rule {
                    rule: rule.to_string(),
                },
                entries: granted,
                nodes: Vec::new(),
                pending: false,
            });
        }
        grants::record_all(&mut ledger, granted_all);
        self.apply_plan(lock, &state, &total, Some(&ledger))?;
        crate::failpoint!("allow.after_write");
        Ok(self.change_report(&state, &total))
    }

    /// Writes `plan` to the container's entries (nothing under `--dry-run`),
    /// the ledger first when one is given (write-ahead).
    pub fn apply_plan(
        &self,
        _lock: &PinLock,
        state: &ContainerState,
        plan: &Plan,
        ledger: Option<&Ledger>,
    ) -> Result<(), Error> {
        if self.config.dry_run {
            return Ok(());
        }
        if let Some(l) = ledger {
            self.grants.save(l)?;
        }
        if plan.changes.is_empty() {
            return Ok(());
        }
        let mut map = PolicyMap::open(&self.pins.policy_map())?;
        map.apply(&plan.writes())?;
        let removed: Vec<PolicyKey> = plan
            .changes
            .iter()
            .filter(|c| c.after.is_none())
            .map(|c| c.key)
            .collect();
        if !removed.is_empty() {
            if let Some(mut counters) = Counters::open(&self.pins)? {
                counters.forget_hits(&removed)?;
            }
        }
        let _ = state;
        Ok(())
    }

    /// A report of `plan` for `state`'s container.
    pub fn change_report(&self, state: &ContainerState, plan: &Plan) -> ChangeReport {
        ChangeReport {
            cgroup_dir: state.cgroup.as_ref().map(|c| c.dir.clone()),
            policy_id: state.policy_id,
            changed: plan.changed_text(),
            unchanged: plan.unchanged_text(&state.entries),
            notes: plan.notes.clone(),
            dry_run: self.config.dry_run,
            skipped: plan.skipped.clone(),
        }
    }

    /// Removes access from the target's policy: the rule's bits are cleared
    /// from its entry. An entry with no bit left is deleted only when no
    /// broader entry would then allow more (otherwise it stays as a deny);
    /// bits an entry never had change nothing. A rule with no entry is an
    /// error unless `missing_ok` (then it is reported unchanged).
    pub fn revoke(
        &self,
        target: &Target,
        rules: &[Rule],
        missing_ok: bool,
    ) -> Result<ChangeReport, Error> {
        let lock = self.lock_existing(target)?;
        self.revoke_locked(&lock, target, rules, missing_ok)
    }

    /// [`Ctdev::revoke`] under a lock the caller holds.
    pub fn revoke_locked(
        &self,
        lock: &PinLock,
        target: &Target,
        rules: &[Rule],
        missing_ok: bool,
    ) -> Result<ChangeReport, Error> {
        let state = self.container(target)?;
        let plan = plan_revoke(&state.entries, state.policy_id, rules, missing_ok).map_err(
            |RevokeError::NotPresent(rule)| Error::RuleNotPresent {
                rule,
                target: target.to_string(),
            },
        )?;
        // Revoked bits are no grant's any more (written ahead).
        let mut ledger = self.grants.load(state.policy_id)?;
        grants::forget_revoked(&mut ledger, &plan);
        self.apply_plan(lock, &state, &plan, Some(&ledger))?;
        crate::failpoint!("revoke.after_write");
        crate::failpoint!("revoke.after_counters");
        Ok(self.change_report(&state, &plan))
    }

    /// Takes back the grant of `owner` for `subject` on the target's
    /// entries (rules only; nodes are the caller's). Returns the report and
    /// the grant taken back; [`Error::NotGranted`] if there is none.
    pub fn take_back_locked(
        &self,
        lock: &PinLock,
        target: &Target,
        owner: GrantOwner,
        subject: &Subject,
    ) -> Result<(ChangeReport, Grant), Error> {
        let state = self.container(target)?;
        let ledger = self.grants.load(state.policy_id)?;
        let index = ledger
            .find(owner, subject)
            .ok_or_else(|| Error::NotGranted {
                target: target.to_string(),
                owner: owner.as_str(),
                subject: subject.to_string(),
            })?;
        let grant = ledger.grants[index].clone();
        let (plan, after) = grants::plan_take_back(&state.entries, &ledger, index);
        // Rules closed first, then the record goes (a crash in between
        // leaves a record whose take-back is a no-op).
        self.apply_plan(lock, &state, &plan, None)?;
        if !self.config.dry_run {
            self.grants.save(&after)?;
        }
        Ok((self.change_report(&state, &plan), grant))
    }

    /// Records and applies a grant of `rules` by `owner` for `subject`
    /// (write-ahead: the record is saved before the entries change).
    pub fn grant_locked(
        &self,
        lock: &PinLock,
        target: &Target,
        owner: GrantOwner,
        subject: Subject,
        rules: &[Rule],
    ) -> Result<ChangeReport, Error> {
        let state = self.container(target)?;
        let mut ledger = self.grants.load(state.policy_id)?;
        let (plan, granted) = plan_grant(&state.entries, state.policy_id, rules);
        grants::record(
            &mut ledger,
            Grant {
                owner,
                subject,
                entries: granted,
                nodes: Vec::new(),
                pending: false,
            },
        );
        self.apply_plan(lock, &state, &plan, Some(&ledger))?;
        Ok(self.change_report(&state, &plan))
    }

    /// [`Ctdev::grant_locked`] taking the lock.
    pub fn grant(
        &self,
        target: &Target,
        owner: GrantOwner,
        subject: Subject,
        rules: &[Rule],
    ) -> Result<ChangeReport, Error> {
        let lock = self.lock_existing(target)?;
        self.grant_locked(&lock, target, owner, subject, rules)
    }

    /// [`Ctdev::take_back_locked`] taking the lock.
    pub fn take_back(
        &self,
        target: &Target,
        owner: GrantOwner,
        subject: &Subject,
    ) -> Result<ChangeReport, Error> {
        let lock = self.lock_existing(target)?;
        self.take_back_locked(&lock, target, owner, subject)
            .map(|(r, _)| r)
    }

    /// What a fresh attach of `cgroup` would write (`--dry-run`).
    fn fresh_attach_report(&self, cgroup: Cgroup, preset: Preset, rules: &[Rule]) -> AttachReport {
        let wanted = attach_entries(cgroup.id, &preset.rules(), rules);
        AttachReport {
            policy_id: cgroup.id,
            link_pin: self.pins.link(cgroup.id),
            cgroup_dir: cgroup.dir,
            already_attached: false,
            program_id: 0,
            changed: describe(&wanted),
            dry_run: true,
        }
    }

    /// Stops enforcing on the target: detaches the program, removes its
    /// link pin and its entries. Works with `id:N` after the cgroup is gone.
    pub fn detach(&self, target: &Target) -> Result<DetachReport, Error> {
        let resolved = self.resolve(target)?;
        let id = resolved.policy_id;
        let _lock = self.lock_existing(target)?;
        let link = attachment::open(&self.pins, id)?;
        let map_pin = self.pins.policy_map();
        let mut map = if map_pin.exists() {
            Some(PolicyMap::open(&map_pin)?)
        } else {
            None
        };
        let entries = match &map {
            Some(m) => m.entries_of(id)?,
            None => BTreeMap::new(),
        };
        if link.is_none() && entries.is_empty() {
            // A detach killed after deleting the entries left the map pins
            // of an otherwise empty root: finish that cleanup, then say so.
            drop(map);
            self.remove_pins_if_unused()?;
            return Err(self.not_under_policy(target));
        }
        if self.config.dry_run {
            return Ok(DetachReport {
                policy_id: id,
                link_pin: link.as_ref().map(|l| l.pin.clone()),
                entries_removed: entries.len(),
            });
        }
        // Program off first, then its entries: the container is never
        // judged by a half-removed policy.
        let link_pin = link.as_ref().map(|l| l.pin.clone());
        // A takeover's runtime program goes back on before ctdev's comes off.
        crate::takeover::restore_on_detach(&self.pins, id, resolved.cgroup.as_ref())?;
        if let Some(link) = link {
            attachment::detach(link)?;
        }
        crate::failpoint!("detach.after_link_detach");
        // (Restoring a runtime program a takeover replaced goes here: one
        // call into takeover.rs, before the entries are removed.)
        if let Some(map) = map.as_mut() {
            let changes: Vec<Change> = entries.keys().map(|k| (*k, None)).collect();
            map.apply(&changes)?;
        }
        crate::failpoint!("detach.after_entries");
        // Every grant of this container is void with its entries.
        self.grants.remove(id)?;
        crate::audit::names::forget(self.grants.dir(), id);
        if let Some(mut counters) = Counters::open(&self.pins)? {
            counters.reset(id)?;
        }
        if let Some(map) = map.as_mut() {
            map.forget(id)?;
        }
        crate::failpoint!("detach.after_counters");
        drop(map);
        self.remove_pins_if_unused()?;
        Ok(DetachReport {
            policy_id: id,
            link_pin,
            entries_removed: entries.len(),
        })
    }

    /// Fails when links are pinned but the policy map pin is gone (removed
    /// by hand): writing a new map would not reach their programs.
    fn check_map_pin(&self) -> Result<(), Error> {
        let path = self.pins.policy_map();
        if path.exists() {
            return Ok(());
        }
        let (ids, _) = self.pins.link_entries()?;
        if ids.is_empty() {
            return Ok(());
        }
        Err(Error::MapPinMissing {
            path,
            links: ids.len(),
            links_dir: self.pins.links_dir(),
        })
    }

    /// Last container gone (no link pin, no foreign file, no entry): leaves
    /// nothing pinned. Called under the lock.
    fn remove_pins_if_unused(&self) -> Result<(), Error> {
        let (ids, foreign) = self.pins.link_entries()?;
        if !ids.is_empty() || !foreign.is_empty() {
            return Ok(());
        }
        let map_pin = self.pins.policy_map();
        if map_pin.exists() && !PolicyMap::open(&map_pin)?.entries()?.is_empty() {
            return Ok(());
        }
        for (_, pin) in self.pins.map_pins() {
            // Never remove a pin that is not ctdev's map.
            if pin.exists() {
                crate::kernel::counters::verify_any(&self.pins, &pin)?;
            }
        }
        for (_, pin) in self.pins.map_pins() {
            attachment::remove_pin(&pin)?;
        }
        crate::kernel::program::remove_program_pins(&self.pins)?;
        self.pins.remove_if_empty();
        Ok(())
    }

    /// The audit dump: every container under policy (or only `target`) with
    /// its rules, straight from the pinned links and the policy map.
    pub fn list(&self, target: Option<&Target>) -> Result<Dump, Error> {
        let mut dump = Dump {
            version: 1,
            pin_root: self.pins.root().to_path_buf(),
            policy_map: None,
            containers: Vec::new(),
            orphaned: Vec::new(),
            foreign_pins: Vec::new(),
            problems: Vec::new(),
        };
        let only = match target {
            Some(t) => Some(self.resolve(t)?.policy_id),
            None => None,
        };
        if !self.pins.exists() {
            if let Some(t) = target {
                return Err(self.not_under_policy(t));
            }
            return Ok(dump);
        }
        let (ids, foreign) = self.pins.link_entries()?;
        dump.foreign_pins = foreign;
        let map_pin = self.pins.policy_map();
        let entries = if map_pin.exists() {
            let map = PolicyMap::open(&map_pin)?;
            let entries = map.entries()?;
            dump.policy_map = Some(MapView {
                pin: map_pin,
                map_id: map.id(),
                entries: entries.len(),
                capacity: map.capacity(),
            });
            entries
        } else {
            BTreeMap::new()
        };
        if let Err(e) = self.check_map_pin() {
            dump.problems.push(e.to_string());
        }
        let ids: Vec<u64> = ids
            .into_iter()
            .filter(|i| only.is_none_or(|o| o == *i))
            .collect();
        if let Some(o) = only {
            if ids.is_empty() {
                return Err(self.not_under_policy(&target.cloned().unwrap_or(Target::PolicyId(o))));
            }
        }
        let cgroups = self.cgroups.find_ids(&ids);
        let (hits, stats) = match Counters::open(&self.pins)? {
            Some(c) => (c.hits()?, c.stats()?),
            None => Default::default(),
        };
        let mut by_id: BTreeMap<u64, Vec<RuleView>> = BTreeMap::new();
        for (key, bits) in &entries {
            if only.is_some_and(|o| o != key.policy_id) {
                continue;
            }
            let mut view = self.rule_view(key, *bits);
            view.hits = hits.get(key).copied().unwrap_or(0);
            by_id.entry(key.policy_id).or_default().push(view);
        }
        let linked: BTreeSet<u64> = ids.iter().copied().collect();
        let names = ProgramNames::load();
        // Pod names, where `ctdev nri` recorded them (a bad map names none).
        let pods = runtimes::k8s::PodMap::load(&runtimes::k8s::state_dir()).unwrap_or_default();
        for id in &ids {
            let link = match attachment::open(&self.pins, *id) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(AttachmentError::Foreign { path }) => {
                    dump.foreign_pins.push(path);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let cg = cgroups.get(id);
            let pod = crate::audit::names::pod_of(&pods, *id, cg.map(|c| c.path.as_path()));
            dump.containers.push(ContainerView {
                pod,
                former_cgroup: match cg {
                    Some(_) => None,
                    None => crate::audit::names::recorded(self.grants.dir(), *id),
                },
                cdi: Vec::new(),
                policy_id: *id,
                cgroup: cg.map(|c| c.path.clone()),
                cgroup_dir: cg.map(|c| c.dir.clone()),
                cgroup_id: link.info.cgroup_id,
                program_id: link.info.prog_id,
                link_id: link.info.id,
                // A removed cgroup lingers in the kernel while the link holds it.
                state: if link.is_live_for(*id) && cg.is_some() {
                    "enforcing"
                } else if cg.is_some() {
                    // Program detached, pin left (an interrupted detach).
                    "detached"
                } else {
                    "defunct"
                },
                link_pin: link.pin,
                rules: by_id.remove(id).unwrap_or_default(),
                stats: stats.get(id).copied().unwrap_or_default(),
                other_programs: match cg {
                    Some(g) => device_programs_named(&self.cgroups, g, &names)
                        .map(|all| {
                            all.into_iter()
                                .filter(|p| p.id != link.info.prog_id)
                                .collect()
                        })
                        .unwrap_or_default(),
                    None => Vec::new(),
                },
                drift: None,
            });
        }
        // A runtime's program on the container's own cgroup (a failed or
        // undone takeover, or a runtime that attached it again).
        for c in &dump.containers {
            let Some(cg) = &c.cgroup else { continue };
            for p in c
                .other_programs
                .iter()
                .filter(|p| &p.attached_at == cg && p.owner != Owner::Ctdev)
            {
                dump.problems.push(format!(
                    "container {} (policy id {}): device program {} ({}) of another manager is attached to its cgroup too, and an access needs both allows; `ctdev attach {} --takeover` replaces it (the daemon does for entries with takeover = \"import\" or \"replace\")",
                    cg.display(),
                    c.policy_id,
                    p.id,
                    p.owner.as_str(),
                    cg.display()
                ));
            }
        }
        dump.orphaned = by_id
            .into_iter()
            .filter(|(id, _)| !linked.contains(id))
            .map(|(policy_id, rules)| OrphanView { policy_id, rules })
            .collect();
        for o in &dump.orphaned {
            dump.problems.push(format!(
                "policy id {} has {} entries but no link pin (not enforced: an attach was interrupted or the link pin was removed by hand); `ctdev attach` its cgroup again, or `ctdev detach id:{}` to clear them",
                o.policy_id,
                o.rules.len(),
                o.policy_id
            ));
        }
        Ok(dump)
    }

    /// Sets the hit and denial counters of `target` (or of every container)
    /// back to zero. Returns the policy ids reset.
    pub fn reset_counters(&self, target: Option<&Target>) -> Result<Vec<u64>, Error> {
        if !self.pins.exists() {
            return match target {
                Some(t) => Err(self.not_under_policy(t)),
                None => Ok(Vec::new()),
            };
        }
        let _lock = match target {
            Some(t) => self.lock_existing(t)?,
            None => self.lock()?,
        };
        let ids = match target {
            Some(t) => {
                let (resolved, _link) = self.require_attached(t)?;
                vec![resolved.policy_id]
            }
            None => self.pins.link_entries()?.0,
        };
        if let Some(mut counters) = Counters::open(&self.pins)? {
            for id in &ids {
                counters.reset(*id)?;
            }
        }
        Ok(ids)
    }

    /// Compares the /dev of the container under `cgroup_dir` (read through
    /// its init process's root) with its policy entries.
    pub fn drift(&self, policy_id: u64, cgroup_dir: &std::path::Path) -> Drift {
        let mut out = Drift::default();
        let pid = match runtimes::oldest_process(cgroup_dir) {
            Ok(Some(pid)) => pid,
            Ok(None) => {
                out.error = Some("no process in the cgroup: is the container running?".into());
                return out;
            }
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        };
        out.init_pid = Some(pid);
        let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
        let nodes = match drift::device_nodes(&root, &root.join("dev")) {
            Ok(n) => n,
            Err(e) => {
                out.error = Some(format!("cannot read {}/dev: {e}", root.display()));
                return out;
            }
        };
        let entries = PolicyMap::open(&self.pins.policy_map())
            .and_then(|m| m.entries_of(policy_id))
            .unwrap_or_default();
        let (no_rule, no_node) = drift::compare(policy_id, &entries, &nodes);
        out.nodes_without_rule = no_rule;
        out.rules_without_node = no_node;
        out
    }

    fn rule_view(&self, key: &PolicyKey, bits: u32) -> RuleView {
        let rule = Rule::from_entry(key, bits).unwrap_or(Rule {
            dev_type: DeviceType::All,
            major: DevNumber::from_kernel(key.major),
            minor: DevNumber::from_kernel(key.minor),
            access: Access::from_bits(bits),
        });
        RuleView {
            rule: rule.to_string(),
            dev_type: rule.dev_type,
            major: rule.major,
            minor: rule.minor,
            access: rule.access,
            devices: device_names(&self.config.sys_dev, rule.dev_type, rule.major, rule.minor),
            hits: 0,
            cdi: Vec::new(),
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

fn describe(entries: &BTreeMap<PolicyKey, u32>) -> Vec<String> {
    entries.iter().map(|(k, v)| entry_text(k, *v)).collect()
}
