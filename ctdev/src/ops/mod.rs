//! The operations on a container's policy: attach, allow, revoke, grant and
//! take back, detach, reset counters. Each one resolves its target
//! (`resolve.rs`), reads the container's typed state (`state.rs`), plans with
//! the pure functions of [`crate::plan`] and [`crate::grants`], and writes
//! the plan. What is only read for operators (`list`, drift, the views) is
//! in [`crate::audit`].
//!
//! Every change runs under the pin-root lock, validates all input before it
//! writes anything, and orders its kernel steps so a container under policy
//! is never without its program (fail-closed): rules are written before the
//! program is attached, and the link is pinned before the process exits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ctdev_common::PolicyKey;
use serde::Serialize;

pub use crate::audit::view::Layout;
use crate::cgroup::{Cgroup, CgroupError, CgroupFs};
use crate::grants::plan_grant;
use crate::grants::{self, Grant, GrantError, Ledger, Owner as GrantOwner, Store, Subject};
use crate::kernel::attachment::{self, AttachmentError};
use crate::kernel::counters::Counters;
use crate::kernel::loader::{ProgramError, ProgramObject};
use crate::kernel::pins::{PinError, PinLock, PinRoot, RootLock};
use crate::kernel::policy_map::{Change, PolicyMap, PolicyMapError};
use crate::plan::{
    attach_entries, entry_text, key_text, plan_attach, plan_revoke, AttachPlan, Plan, RevokeError,
};
use crate::presets::Preset;
use crate::rule::{Access, Rule};
use crate::runtimes::RuntimeError;
use crate::target::Target;

mod lock;
mod resolve;
mod state;

pub use lock::ContainerLock;
pub use resolve::Resolved;
pub use state::{ContainerState, LinkCheck, LinkState};

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
    /// The program layout a fresh attach uses: the shared program (the
    /// default) or a program instance of the container's own
    /// (`CTDEV_SHARED_PROGRAM=0`, see [`layout_from_env`]). Containers
    /// attached either way are read, changed and detached alike.
    pub layout: Layout,
    /// Keep the loaded programs and shared maps pinned when the last
    /// container is detached (a long-running agent, e.g. the NRI plugin:
    /// its next container then does not load and verify them again).
    pub keep_programs: bool,
}

/// The program layout for new attachments, from the environment:
/// `CTDEV_SHARED_PROGRAM=0` (or `false`, `no`, `off`) selects the
/// per-container layout; unset or any other value the shared program.
pub fn layout_from_env() -> Layout {
    layout_from(std::env::var_os("CTDEV_SHARED_PROGRAM").as_deref())
}

/// [`layout_from_env`] for a given value of `CTDEV_SHARED_PROGRAM`.
fn layout_from(value: Option<&std::ffi::OsStr>) -> Layout {
    match value.and_then(|v| v.to_str()).map(str::trim) {
        Some(v) if ["0", "false", "no", "off"].contains(&v.to_ascii_lowercase().as_str()) => {
            Layout::PerContainer
        }
        _ => Layout::Shared,
    }
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
            layout: layout_from_env(),
            keep_programs: false,
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
    /// The target named another container under its lock than when the
    /// lock was taken (its cgroup was removed and created again while the
    /// command waited): nothing was changed.
    #[error("{target} changed while waiting for its lock (it was policy {locked}, now it is policy {found}: its cgroup was created again); nothing was changed, retry")]
    Replaced {
        /// The target as given.
        target: String,
        /// The policy id whose lock is held.
        locked: u64,
        /// The policy id the target names now.
        found: u64,
    },
    /// The cgroup was removed and created again under its path since the
    /// caller named it by id ([`Target::CgroupOf`]): nothing was changed.
    #[error("{target} is no longer the cgroup it was (policy {expected}; the cgroup there now is policy {found}): nothing was changed")]
    Recreated {
        /// The cgroup directory.
        target: String,
        /// The policy id the caller meant.
        expected: u64,
        /// The policy id of the cgroup there now.
        found: u64,
    },
    /// A lock of another pin root was passed to an operation on this one
    /// (a library caller's mistake): nothing was changed.
    #[error("the lock held is for pin root {lock_root}, not for {pin_root}: nothing was changed")]
    ForeignLock {
        /// The pin root the lock is for.
        lock_root: PathBuf,
        /// The pin root of the operation.
        pin_root: PathBuf,
    },
    /// `id:N` was given where a live cgroup is needed.
    #[error("target {target} names a policy id; this command needs a cgroup path or pid:N")]
    NeedsCgroup {
        /// The target as given.
        target: String,
    },
}

/// What `attach` did.
#[derive(Debug, Clone, Serialize)]
pub struct AttachReport {
    /// The cgroup directory.
    pub cgroup_dir: PathBuf,
    pub policy_id: u64,
    /// `true` if the container was already under policy (only rules were added).
    pub already_attached: bool,
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

/// What `detach` removed.
#[derive(Debug, Clone, Serialize)]
pub struct DetachReport {
    pub policy_id: u64,
    /// Link pin removed (if there was one).
    pub link_pin: Option<PathBuf>,
    /// Number of entries removed.
    pub entries_removed: usize,
}

/// ctdev's library entry point: one per command invocation.
#[derive(Debug)]
pub struct Ctdev {
    pub(crate) config: Config,
    pub(crate) pins: PinRoot,
    pub(crate) cgroups: CgroupFs,
    pub(crate) grants: Store,
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

    /// Takes the root-exclusive lock for a command that may create the pin
    /// root (attach): mounts bpffs and creates the directories when
    /// missing. Global changes (attach, detach, takeover, cleanup) hold it
    /// for their whole sequence; the functions that need it take a
    /// `&RootLock` as a witness.
    pub fn lock(&self) -> Result<RootLock, Error> {
        self.pins.prepare()?;
        Ok(self.pins.lock(self.config.lock_timeout)?)
    }

    /// Takes the root-exclusive lock for a command that needs existing
    /// state (detach, resetting every container's counters): when the pin
    /// root does not exist, nothing is under policy and nothing is created.
    pub(crate) fn lock_existing(&self, target: &Target) -> Result<RootLock, Error> {
        if !self.pins.exists() {
            return Err(self.not_under_policy(target));
        }
        self.gone_is_not_under_policy(target, self.pins.lock(self.config.lock_timeout))
    }

    /// Checks that `lock` lets its holder change the container `policy_id`
    /// that the operation resolved under it.
    pub(crate) fn check_lock(
        &self,
        lock: &PinLock,
        target: &Target,
        policy_id: u64,
    ) -> Result<(), Error> {
        if lock.root() != self.pins.root() {
            return Err(Error::ForeignLock {
                lock_root: lock.root().to_path_buf(),
                pin_root: self.pins.root().to_path_buf(),
            });
        }
        match lock.policy_id() {
            Some(locked) if locked != policy_id => Err(Error::Replaced {
                target: target.to_string(),
                locked,
                found: policy_id,
            }),
            _ => Ok(()),
        }
    }

    /// The last container was detached (and the root removed) while we
    /// waited: the target is not under policy.
    fn gone_is_not_under_policy<L>(
        &self,
        target: &Target,
        taken: Result<L, PinError>,
    ) -> Result<L, Error> {
        match taken {
            Ok(l) => Ok(l),
            Err(PinError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
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
        if let Some(report) = self.attach_new_under_own_lock(target, &object, preset)? {
            return Ok(report);
        }
        let lock = self.lock()?;
        if let Some(link) = attachment::open(&self.pins, cgroup.id)? {
            if link.is_live_for(cgroup.id) {
                // Attached and verified, under the root lock: a scope
                // program above may leave the decision to it (a scope
                // covered after the attach has no mark for it yet).
                if let Err(e) = crate::kernel::scope::mark_own_policy(&self.pins, cgroup.id) {
                    tracing::warn!(cgroup = %cgroup.dir.display(), "scope default stays in force: {e}");
                }
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

    /// [`Ctdev::ensure_attached`] of a container that has nothing pinned,
    /// under the container's own lock instead of the root lock, when the
    /// attach creates nothing shared with other containers: the layout is
    /// shared, this object's shared program is pinned already, and the
    /// preset fits the container's table. An attach waits for the
    /// kernel's `cgroup_mutex` (its links' creation and the stub's
    /// release), tens of milliseconds while other cgroups are made and
    /// removed; under the root lock, every other container's add and del
    /// waited with it. Here they run meanwhile, as do other such attaches.
    /// `None`: not such a case, nothing done (the caller takes the root
    /// lock).
    fn attach_new_under_own_lock(
        &self,
        target: &Target,
        object: &ProgramObject,
        preset: Preset,
    ) -> Result<Option<AttachReport>, Error> {
        if self.config.layout != Layout::Shared || self.config.dry_run || !self.pins.exists() {
            return Ok(None);
        }
        let lock = match self.lock_container(target) {
            Ok(lock) => lock,
            // The pin root went meanwhile: the root lock's path makes it.
            Err(Error::NotUnderPolicy { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Under the lock, no root-exclusive change (a cleanup unpinning the
        // shared program, another attach or detach of this container) runs.
        let resolved = self.resolve_locked(&lock, target)?;
        let cgroup = resolved.cgroup.ok_or_else(|| Error::NeedsCgroup {
            target: target.to_string(),
        })?;
        let pinned_program = crate::kernel::shared::SharedProgram::pinned(object, &self.pins)
            .map_err(|e| ProgramError::Load {
                source: Box::new(e),
            })?;
        if !pinned_program || attachment::pinned(&self.pins, cgroup.id)? {
            // A first attach, or a link to verify or replace: root lock.
            return Ok(None);
        }
        self.check_map_pin()?;
        let id = cgroup.id;
        crate::kernel::shared::clear(&self.pins, id).map_err(|e| ProgramError::Load {
            source: Box::new(e),
        })?;
        self.attach_shared(&cgroup, object, preset, &[])
    }

    /// [`Ctdev::attach`] of a resolved cgroup, under a lock the caller holds.
    /// A failed attach leaves no pins made for nobody: when no container is
    /// left under policy, what it made (the pin root's maps, directories,
    /// a program the kernel refused to take) is removed again.
    pub(crate) fn attach_locked(
        &self,
        lock: &RootLock,
        cgroup: Cgroup,
        object: &ProgramObject,
        preset: Preset,
        rules: &[Rule],
    ) -> Result<AttachReport, Error> {
        let attached = self.attach_locked_once(cgroup, object, preset, rules);
        if attached.is_err() && !self.config.dry_run {
            if let Err(cleanup) = self.remove_pins_if_unused(lock) {
                tracing::warn!("cannot remove unused pins after a failed attach: {cleanup}");
            }
        }
        attached
    }

    /// [`Ctdev::attach_locked`] without the cleanup after a failure.
    fn attach_locked_once(
        &self,
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
        // Storage that a killed shared attach wrote but never linked:
        // nothing decides with it; it must not look like a policy.
        crate::kernel::shared::clear(&self.pins, id).map_err(|e| ProgramError::Load {
            source: Box::new(e),
        })?;
        if self.config.layout == Layout::Shared {
            if let Some(report) = self.attach_shared(&cgroup, object, preset, rules)? {
                return Ok(report);
            }
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
                // Maps this attach created for nobody are unpinned again
                // by `attach_locked`, once these are closed.
                drop(map);
                drop(program);
                Err(e.into())
            }
        }
    }

    /// Adds access to the target's policy (bits are OR-ed into existing entries).
    pub fn allow(&self, target: &Target, rules: &[Rule]) -> Result<ChangeReport, Error> {
        let lock = self.lock_container(target)?;
        self.allow_locked(&lock, target, rules)
    }

    /// [`Ctdev::allow`] under a lock the caller holds. Each rule is
    /// recorded as an operator grant (so the daemon's take-back of the same
    /// rule leaves it).
    pub(crate) fn allow_locked(
        &self,
        lock: &ContainerLock,
        target: &Target,
        rules: &[Rule],
    ) -> Result<ChangeReport, Error> {
        // One policy map for the read and the write (the write's read then
        // finds the container's storage in one lookup).
        let mut map = None;
        let state = self.container_locked(lock, target, &mut map, LinkCheck::Pin)?;
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
            granted_all.push(Grant::of_entries(
                GrantOwner::Operator,
                Subject::Rule {
                    rule: rule.to_string(),
                },
                granted,
            ));
        }
        grants::record_all(&mut ledger, granted_all);
        self.apply_plan_in(lock, map.as_mut(), &state, &total, Some(&ledger))?;
        crate::failpoint!("allow.after_write");
        Ok(self.change_report(&state, &total))
    }

    /// Writes `plan` to the container's entries (nothing under `--dry-run`),
    /// the ledger first when one is given (write-ahead).
    pub(crate) fn apply_plan(
        &self,
        lock: &PinLock,
        state: &ContainerState,
        plan: &Plan,
        ledger: Option<&Ledger>,
    ) -> Result<(), Error> {
        self.apply_plan_in(lock, None, state, plan, ledger)
    }

    /// [`Ctdev::apply_plan`] through a policy map the caller opened for
    /// the command (`None`: opened here when there is something to write).
    pub(crate) fn apply_plan_in(
        &self,
        lock: &PinLock,
        map: Option<&mut PolicyMap>,
        state: &ContainerState,
        plan: &Plan,
        ledger: Option<&Ledger>,
    ) -> Result<(), Error> {
        self.check_lock(lock, &Target::PolicyId(state.policy_id), state.policy_id)?;
        if self.config.dry_run {
            return Ok(());
        }
        if let Some(l) = ledger {
            self.grants.save(l)?;
        }
        if plan.changes.is_empty() {
            return Ok(());
        }
        let mut opened;
        let map = match map {
            Some(m) => m,
            None => {
                opened = PolicyMap::open(&self.pins.policy_map())?;
                &mut opened
            }
        };
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
    pub(crate) fn change_report(&self, state: &ContainerState, plan: &Plan) -> ChangeReport {
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
        let lock = self.lock_container(target)?;
        self.revoke_locked(&lock, target, rules, missing_ok)
    }

    /// [`Ctdev::revoke`] under a lock the caller holds.
    pub(crate) fn revoke_locked(
        &self,
        lock: &ContainerLock,
        target: &Target,
        rules: &[Rule],
        missing_ok: bool,
    ) -> Result<ChangeReport, Error> {
        let mut map = None;
        let state = self.container_locked(lock, target, &mut map, LinkCheck::Pin)?;
        let plan = plan_revoke(&state.entries, state.policy_id, rules, missing_ok).map_err(
            |RevokeError::NotPresent(rule)| Error::RuleNotPresent {
                rule,
                target: target.to_string(),
            },
        )?;
        // Revoked bits are no grant's any more (written ahead).
        let mut ledger = self.grants.load(state.policy_id)?;
        grants::forget_revoked(&mut ledger, &plan);
        self.apply_plan_in(lock, map.as_mut(), &state, &plan, Some(&ledger))?;
        crate::failpoint!("revoke.after_write");
        crate::failpoint!("revoke.after_counters");
        Ok(self.change_report(&state, &plan))
    }

    /// Takes back the grant of `owner` for `subject` on the target's
    /// entries (rules only; nodes are the caller's). Returns the report and
    /// the grant taken back; [`Error::NotGranted`] if there is none.
    pub(crate) fn take_back_locked(
        &self,
        lock: &ContainerLock,
        target: &Target,
        owner: GrantOwner,
        subject: &Subject,
    ) -> Result<(ChangeReport, Grant), Error> {
        let state = self.container_locked(lock, target, &mut None, LinkCheck::Pin)?;
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
    pub(crate) fn grant_locked(
        &self,
        lock: &ContainerLock,
        target: &Target,
        owner: GrantOwner,
        subject: Subject,
        rules: &[Rule],
    ) -> Result<ChangeReport, Error> {
        let state = self.container_locked(lock, target, &mut None, LinkCheck::Pin)?;
        let mut ledger = self.grants.load(state.policy_id)?;
        let (plan, granted) = plan_grant(&state.entries, state.policy_id, rules);
        grants::record(&mut ledger, Grant::of_entries(owner, subject, granted));
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
        let lock = self.lock_container(target)?;
        self.grant_locked(&lock, target, owner, subject, rules)
    }

    /// [`Ctdev::take_back_locked`] taking the lock.
    pub fn take_back(
        &self,
        target: &Target,
        owner: GrantOwner,
        subject: &Subject,
    ) -> Result<ChangeReport, Error> {
        let lock = self.lock_container(target)?;
        self.take_back_locked(&lock, target, owner, subject)
            .map(|(r, _)| r)
    }

    /// A fresh attach on the shared program (the default layout):
    /// the policy fits a table and no entries of an earlier container with
    /// this id are left, else `None` (the per-container program is used).
    /// Called under the root lock ([`Ctdev::attach_locked`], which unpins
    /// what a failed attach loaded for nobody) or under the container's
    /// lock, where the program was pinned before
    /// ([`Ctdev::attach_new_under_own_lock`]).
    fn attach_shared(
        &self,
        cgroup: &Cgroup,
        object: &ProgramObject,
        preset: Preset,
        rules: &[Rule],
    ) -> Result<Option<AttachReport>, Error> {
        use crate::kernel::shared::SharedProgram;
        let id = cgroup.id;
        let wanted = attach_entries(id, &preset.rules(), rules);
        if wanted.len() > ctdev_common::TABLE_CAP {
            return Ok(None);
        }
        let map = PolicyMap::open(&self.pins.policy_map());
        if let Ok(map) = &map {
            if !map.entries_of(id)?.is_empty() {
                return Ok(None);
            }
        }
        let shared_err = |e| ProgramError::Load {
            source: Box::new(e),
        };
        // Opened once per process (a library caller attaching many
        // containers pays the six bpf() calls of the open once).
        let shared = SharedProgram::cached(object, &self.pins).map_err(shared_err)?;
        crate::failpoint!("attach.after_load");
        let table = SharedProgram::table_for(id, &wanted, None).map_err(shared_err)?;
        // Grants of an earlier container with this id are void.
        self.grants.remove(id)?;
        crate::failpoint!("attach.after_rules");
        let link = match shared.attach(cgroup, &self.pins, &table) {
            Ok(link) => link,
            Err(e) => {
                // Program and maps this attach loaded for nobody are
                // unpinned again by `attach_locked` (under a container
                // lock, the attach loaded nothing).
                drop(shared);
                return Err(match e {
                    crate::kernel::shared::SharedError::TooManyPrograms { cgroup, max } => {
                        Error::from(AttachmentError::TooManyPrograms { cgroup, max })
                    }
                    e => shared_err(e).into(),
                });
            }
        };
        tracing::info!(cgroup = %cgroup.dir.display(), policy_id = id, prog_id = link.prog_id, "attached (shared program)");
        crate::audit::names::record(self.grants.dir(), id, &cgroup.path);
        Ok(Some(AttachReport {
            cgroup_dir: cgroup.dir.clone(),
            policy_id: id,
            already_attached: false,
            program_id: link.prog_id,
            link_pin: link.pin,
            changed: describe(&wanted),
            dry_run: false,
        }))
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
        let lock = self.lock_existing(target)?;
        self.detach_locked(Held::Root(&lock), target, &resolved)
    }

    /// [`Ctdev::detach`] under the container's own lock instead of the
    /// root lock: the daemon's detach of a removed container, whose waits
    /// for the kernel's `cgroup_mutex` (the link's info and its detach)
    /// then hold up no other container's add or del. The root lock is
    /// taken after it only when no link is left pinned, for the cleanup
    /// that may remove the pin root.
    pub fn detach_under_own_lock(&self, target: &Target) -> Result<DetachReport, Error> {
        let lock = self.lock_container(target)?;
        let resolved = self.resolve_locked(&lock, target)?;
        let detached = self.detach_locked(Held::Own(&lock), target, &resolved);
        drop(lock);
        // The container is detached either way: a cleanup that cannot run
        // now is done by the next detach (or attach that fails).
        if let Err(e) = self.clean_up_if_last() {
            tracing::warn!(pin_root = %self.pins.root().display(), "cannot remove the unused pins after the last detach: {e}");
        }
        detached
    }

    /// The detach itself, under `held`.
    fn detach_locked(
        &self,
        held: Held<'_>,
        target: &Target,
        resolved: &Resolved,
    ) -> Result<DetachReport, Error> {
        let id = resolved.policy_id;
        let witness: &PinLock = match held {
            Held::Root(lock) => lock,
            Held::Own(lock) => lock,
        };
        self.check_lock(witness, target, id)?;
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
            if let Held::Root(lock) = held {
                self.remove_pins_if_unused(lock)?;
            }
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
        if let Some(map) = map.as_mut() {
            let changes: Vec<Change> = entries.keys().map(|k| (*k, None)).collect();
            map.apply(&changes)?;
        }
        crate::failpoint!("detach.after_entries");
        // Every grant of this container is void with its entries.
        crate::audit::names::forget(self.grants.dir(), id);
        match held {
            Held::Root(lock) => self.grants.remove_at_detach(id, lock)?,
            Held::Own(_) => self.grants.remove(id)?,
        }
        if let Some(mut counters) = Counters::open(&self.pins)? {
            counters.reset(id)?;
        }
        if let Some(map) = map.as_mut() {
            map.forget(id)?;
        }
        crate::failpoint!("detach.after_counters");
        drop(map);
        if let Held::Root(lock) = held {
            self.remove_pins_if_unused(lock)?;
        }
        Ok(DetachReport {
            policy_id: id,
            link_pin,
            entries_removed: entries.len(),
        })
    }

    /// After a detach under a container lock: when no link is pinned any
    /// more, the root lock's cleanup ([`Ctdev::remove_pins_if_unused`],
    /// which looks again under that lock). Of two last detaches at once,
    /// each removed its own pin before it looks here, so the later one
    /// finds none and cleans up.
    fn clean_up_if_last(&self) -> Result<(), Error> {
        let links = self.pins.links_dir();
        if crate::fsio::dir_has_entries(&links)
            .map_err(PinError::from)?
            .unwrap_or(false)
        {
            return Ok(());
        }
        let lock = match self.pins.lock(self.config.lock_timeout) {
            Ok(lock) => lock,
            // Cleaned up already (the pin root is gone).
            Err(PinError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.grants.remove_dir_if_empty(&lock);
        self.remove_pins_if_unused(&lock)
    }

    /// Fails when links are pinned but the policy map pin is gone (removed
    /// by hand): writing a new map would not reach their programs.
    pub(crate) fn check_map_pin(&self) -> Result<(), Error> {
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
    /// nothing pinned. Called under the root lock (it may remove the root).
    fn remove_pins_if_unused(&self, _lock: &RootLock) -> Result<(), Error> {
        if self.config.keep_programs {
            return Ok(());
        }
        // Any file in the links directory (a link pin, or a foreign file)
        // keeps the pins; asked without listing it (10,000 links are ~2 ms
        // to list, on every detach).
        let links = self.pins.links_dir();
        if crate::fsio::dir_has_entries(&links)
            .map_err(PinError::from)?
            .unwrap_or(false)
        {
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
        crate::kernel::loader::remove_program_pins(&self.pins)?;
        crate::kernel::shared::remove_pins(&self.pins).map_err(|e| ProgramError::Load {
            source: Box::new(e),
        })?;
        self.pins.remove_if_empty();
        Ok(())
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
        // One container's counters under its lock; every container's
        // under the root lock (the set of containers is global).
        let (_root_lock, one_lock);
        let ids = match target {
            Some(t) => {
                one_lock = self.lock_container(t)?;
                let resolved = self.resolve_locked(&one_lock, t)?;
                self.require_link(t, &resolved)?;
                vec![resolved.policy_id]
            }
            None => {
                _root_lock = self.lock()?;
                self.pins.link_entries()?.0
            }
        };
        if let Some(mut counters) = Counters::open(&self.pins)? {
            for id in &ids {
                counters.reset(*id)?;
            }
        }
        Ok(ids)
    }
}

/// The lock a detach holds: the root lock (its cleanup, which may remove
/// the pin root, runs in the same turn), or the container's own
/// ([`Ctdev::detach_under_own_lock`]: the cleanup comes after it).
#[derive(Clone, Copy)]
enum Held<'a> {
    Root(&'a RootLock),
    Own(&'a ContainerLock),
}

fn describe(entries: &BTreeMap<PolicyKey, u32>) -> Vec<String> {
    entries.iter().map(|(k, v)| entry_text(k, *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::{layout_from, Layout};
    use std::ffi::OsStr;

    #[test]
    fn the_shared_program_is_the_default_and_0_opts_out() {
        assert_eq!(layout_from(None), Layout::Shared);
        for on in ["1", "", "yes", "shared"] {
            assert_eq!(layout_from(Some(OsStr::new(on))), Layout::Shared, "{on:?}");
        }
        for off in ["0", "false", "No", " off "] {
            assert_eq!(
                layout_from(Some(OsStr::new(off))),
                Layout::PerContainer,
                "{off:?}"
            );
        }
    }
}
