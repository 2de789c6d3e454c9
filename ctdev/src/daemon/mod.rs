//! `ctdev daemon`: declarative device policy for containers that come and
//! go, and devices that come and go.
//!
//! - **Policy** ([`config`]): `[[container]]` entries select cgroups and give
//!   them a preset, static rules, devices and hotplug rules.
//! - **Lifecycle** ([`lifecycle`]): inotify on the cgroup2 tree under the
//!   scope. A new cgroup that an entry selects is attached at once (before
//!   any process runs in it); its devices are passed in as soon as its init
//!   has its own root. A removed cgroup the daemon managed is detached.
//! - **Hotplug** ([`uevent`], [`selector`]): kernel uevents; on `add` of a
//!   matching device (numbers from MAJOR/MINOR of the event) the node is
//!   created and its exact rule opened in every selected running container;
//!   on `remove`, the rule is closed and the node unlinked.
//! - **Restart** ([`reconcile`]): the pins are the enforcement and stay when
//!   the daemon exits or dies. On start (and SIGHUP, and every
//!   `resync_interval`) the daemon reconciles what the policy and the
//!   present devices want with what it gave before (its state file), and
//!   logs one line per change. The state file is written ahead: a rule or
//!   device is recorded before it is given, so a daemon killed in between
//!   still takes it back later.
//!
//! The event loop runs on one thread (a current-thread tokio runtime
//! multiplexing the uevent socket, inotify, signals, timers and the lanes'
//! outcomes): events are read, recorded and decided in event order. The
//! device work of each container runs in its lane ([`lanes`]): in order for
//! one container, concurrently across containers.

pub(crate) mod cdi_watch;
pub mod check;
pub mod config;
pub(crate) mod devices;
mod event_loop;
pub(crate) mod lanes;
pub(crate) mod lifecycle;
pub(crate) mod notify;
pub mod reconcile;
pub(crate) mod scope;
pub mod selector;
pub(crate) mod takeover;
pub(crate) mod template;
pub(crate) mod timing;
test_support_mod!(uevent);

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::grants::{Owner as GrantOwner, Subject as GrantSubject};
use crate::kernel::loader::ProgramObject;
use crate::kernel::pins::RootLock;
use crate::kernel::scope::{self as kscope, DeferMarks, DEFER_NOT_SELECTED, DEFER_OWN_POLICY};
use crate::ops::{Ctdev, Error as ControllerError};
use crate::passthrough::{self, AddOptions, PassthroughError};
use crate::runtimes;
use crate::target::Target;

use config::{ConfigError, Policy};
use lifecycle::{CgroupEvent, LifecycleError, Watcher};
use reconcile::{OwnedDevice, State, StateError, WantedDevice};
use selector::DeviceInfo;
use uevent::{Source, Uevent, UeventError, UeventSocket};

pub use devices::device_present;
pub use event_loop::run;

/// Default directory of the state file and private device nodes.
pub const DEFAULT_STATE_DIR: &str = "/run/ctdev";

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The policy file was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The library could not start.
    #[error(transparent)]
    Controller(Box<ControllerError>),
    /// The uevent socket failed.
    #[error(transparent)]
    Uevent(#[from] UeventError),
    /// The cgroup watcher failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The state file could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The scope is not a cgroup.
    #[error("scope {scope} of policy file {file}: {source}")]
    Scope {
        /// The scope as configured.
        scope: PathBuf,
        /// The policy file that names the scope.
        file: PathBuf,
        /// Why the scope is no cgroup2 directory ctdev can use.
        #[source]
        source: crate::cgroup::CgroupError,
    },
    /// The tokio runtime or a signal handler could not be set up.
    #[error("{what}: {source}")]
    Runtime {
        /// The part being set up (`tokio runtime`, `SIGHUP handler`,
        /// `uevent socket`, …).
        what: &'static str,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
}

impl From<ControllerError> for DaemonError {
    fn from(e: ControllerError) -> Self {
        DaemonError::Controller(Box::new(e))
    }
}

/// How the daemon is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The policy file to apply (TOML, see `contrib/policy.example.toml`).
    pub config: PathBuf,
    /// State directory (overrides the file's `state_dir`).
    pub state_dir: Option<PathBuf>,
    /// Written (with `ready`) once the first reconciliation is done.
    pub ready_file: Option<PathBuf>,
    /// sysfs (for device scans and USB attributes).
    pub sys: PathBuf,
    /// udev's database (`/run/udev/data`), read for ID_* properties and
    /// tags of devices udevd processed.
    pub udev_data: PathBuf,
    /// udevd's control socket (whether udevd runs).
    pub udev_control: PathBuf,
}

impl Options {
    /// Options for `config` with the default paths.
    pub fn new(config: PathBuf) -> Self {
        Self {
            config,
            state_dir: None,
            ready_file: None,
            sys: PathBuf::from("/sys"),
            udev_data: PathBuf::from("/run/udev/data"),
            udev_control: PathBuf::from(uevent::UDEV_CONTROL),
        }
    }
}

/// A container the daemon manages now.
#[derive(Debug, Clone)]
struct Managed {
    policy_id: u64,
    entry: usize,
    ready: bool,
}

/// The daemon's status, as written to `status.json` in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// The daemon's pid.
    pub pid: u32,
    /// inotify watches held (cgroup directories and `cgroup.events` files).
    pub watches: usize,
    /// Of which cgroup directories under the scope.
    pub watched_cgroups: usize,
    /// Containers under the daemon's policy.
    pub containers: usize,
    /// Of which waiting for their init's root before their devices go in.
    pub pending: usize,
    /// Devices present on the host (with a node or an interface).
    pub devices: usize,
    /// Scope cgroups covered by a scope program.
    pub scopes: usize,
    /// Where device events come from: `udev` or `kernel`.
    pub events: Source,
    /// Device jobs queued or running in the containers' lanes.
    pub jobs: usize,
}

/// The daemon's state while it runs.
pub struct Daemon {
    ct: Arc<Ctdev>,
    opts: Options,
    policy: Policy,
    scope_dir: PathBuf,
    state: State,
    state_path: PathBuf,
    node_dir: PathBuf,
    /// Present devices with a node or an interface, by DEVPATH.
    devices: BTreeMap<String, DeviceInfo>,
    /// Managed containers by cgroup directory.
    managed: BTreeMap<PathBuf, Managed>,
    /// Managed containers whose devices wait for their init's root.
    pending: BTreeSet<PathBuf>,
    own_root: (u64, u64),
    last_status: Option<Status>,
    /// Scope cgroups covered by a scope program: directory → cgroup id.
    scopes: BTreeMap<PathBuf, u64>,
    /// Children of a scope that no entry selects: directory → cgroup id.
    skipped: BTreeMap<PathBuf, u64>,
    /// The scope programs' defer marks, once set up.
    marks: Option<DeferMarks>,
    /// Runtime device programs on managed cgroups ([`takeover`]).
    coexist: takeover::Coexist,
    /// Devices (policy id, dest) whose `add` failed and was logged once.
    failing: BTreeSet<(u64, String)>,
    /// Where device events come from now (udevd when it runs).
    source: Source,
    /// Devices (policy id, dest) recorded ahead for the event being handled.
    prerecorded: BTreeSet<(u64, String)>,
    /// The state changed since it was last written.
    dirty: bool,
    /// The state as last written (debug builds only: checks `dirty`).
    saved: Option<State>,
    /// Device work per container, on worker threads ([`lanes`]).
    lanes: lanes::Lanes,
    /// The kernel's uevent socket (read by [`Daemon::take_uevents`]).
    kernel_events: Option<UeventSocket>,
    /// uevents were lost (ENOBUFS): the event loop rescans.
    lost_events: bool,
    /// Where the lanes' finished jobs arrive (taken by the event loop).
    done_rx: Option<tokio::sync::mpsc::UnboundedReceiver<lanes::Done>>,
    /// Containers whose attach is queued or running in their lane:
    /// directory → policy id (their cgroup's id).
    attaching: BTreeMap<PathBuf, u64>,
    /// The policy's generation (one more per reload): an attach queued
    /// before a reload is applied again once it is done.
    generation: u64,
    /// The next pass reads every device in sysfs again (start, reload, lost
    /// events, a new event source); otherwise only when the host's device
    /// list differs from `sys_listing`.
    rescan: bool,
    /// The device directories in sysfs as the last full scan saw them.
    sys_listing: Option<BTreeSet<std::ffi::OsString>>,
    /// Device events being handled, for the timing lines ([`timing`]).
    timings: timing::Timings,
    /// While a device `add` event is handled: its DEVPATH and what each
    /// policy entry wants of it ([`Daemon::wanted_devices`]).
    event_wanted: Option<(String, BTreeMap<usize, Vec<WantedDevice>>)>,
    /// Device removals seen (`remove` events), and the last one of each
    /// DEVPATH: an add that fails after its device left is a race.
    removals: u64,
    removed_at: BTreeMap<String, u64>,
    /// The lanes drained since the last [`release_free_memory`].
    trim_due: bool,
    /// While a pass runs: what each entry wants (all devices), worked out
    /// once per entry; emptied when a device event changes the devices.
    pass_wanted: std::cell::RefCell<Option<BTreeMap<usize, Vec<WantedDevice>>>>,
    /// The place of the container being handled in the batch that is
    /// queuing its jobs now (a device event's fan-out, a resync pass; 0
    /// otherwise): device jobs wait for a worker in that order across
    /// batches ([`lanes::Job::rank`]).
    rank: u32,
    /// Devices whose removal finished while they were back on the host:
    /// (container directory, dest) → the record taken back, passed in
    /// again by [`Daemon::readd_waiting`].
    readd: BTreeMap<(PathBuf, String), (u64, OwnedDevice)>,
}

fn target_of(dir: &Path) -> Target {
    Target::Cgroup(dir.to_path_buf())
}

impl Daemon {
    /// Loads the policy and state; sets nothing up in the kernel yet.
    pub fn new(ct: Ctdev, opts: Options) -> Result<Self, DaemonError> {
        let policy = Self::load_policy(&ct, &opts.config)?;
        let scope_dir = ct
            .cgroups()
            .cgroup(&policy.scope)
            .map_err(|source| DaemonError::Scope {
                scope: policy.scope.clone(),
                file: policy.path.clone(),
                source,
            })?
            .dir;
        let state_dir = opts
            .state_dir
            .clone()
            .or_else(|| policy.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let state_path = state_dir.join("state.json");
        let state = State::load(&state_path)?;
        let own_root = fs::metadata("/")
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, 0));
        let ct = Arc::new(ct);
        let (lanes, done_rx) = lanes::Lanes::start(ct.clone());
        Ok(Self {
            lanes,
            done_rx: Some(done_rx),
            attaching: BTreeMap::new(),
            generation: 0,
            rescan: true,
            sys_listing: None,
            timings: timing::Timings::default(),
            event_wanted: None,
            removals: 0,
            removed_at: BTreeMap::new(),
            trim_due: false,
            pass_wanted: std::cell::RefCell::new(None),
            rank: 0,
            readd: BTreeMap::new(),
            kernel_events: None,
            lost_events: false,
            ct,
            policy,
            scope_dir,
            state,
            state_path,
            node_dir: state_dir.join("nodes"),
            devices: BTreeMap::new(),
            managed: BTreeMap::new(),
            pending: BTreeSet::new(),
            own_root,
            last_status: None,
            scopes: BTreeMap::new(),
            skipped: BTreeMap::new(),
            marks: None,
            coexist: takeover::Coexist::default(),
            failing: BTreeSet::new(),
            prerecorded: BTreeSet::new(),
            dirty: true,
            saved: None,
            source: if uevent::udevd_running(&opts.udev_control) {
                Source::Udev
            } else {
                Source::Kernel
            },
            opts,
        })
    }

    fn load_policy(ct: &Ctdev, path: &Path) -> Result<Policy, ConfigError> {
        let mut policy = config::load(path)?;
        policy.normalize(ct.cgroups().mount());
        Ok(policy)
    }

    /// The path of `dir` inside the hierarchy (`/a/b`).
    fn inside(&self, dir: &Path) -> PathBuf {
        Path::new("/").join(dir.strip_prefix(self.ct.cgroups().mount()).unwrap_or(dir))
    }

    /// The entry that selects the cgroup `dir`, if any (first match wins).
    fn entry_for(&self, dir: &Path) -> Option<usize> {
        if !dir.starts_with(&self.scope_dir) {
            return None;
        }
        // Inside a managed container: its sub-cgroups are its own.
        if self
            .managed
            .keys()
            .chain(self.attaching.keys())
            .any(|m| dir != m.as_path() && dir.starts_with(m))
        {
            return None;
        }
        let inside = self.inside(dir);
        self.policy
            .containers
            .iter()
            .position(|c| c.select.matches(&inside))
    }

    /// The devices the policy wants in the container selected by `entry`
    /// (for a device event, what [`Daemon::event_wanted`] holds: worked out
    /// once per entry and event, not once per container).
    fn wanted_devices(&self, entry: usize, only: Option<&str>) -> Vec<WantedDevice> {
        if let (Some(only), Some((devpath, per_entry))) = (only, &self.event_wanted) {
            if only == devpath {
                if let Some(w) = per_entry.get(&entry) {
                    return w.clone();
                }
            }
        }
        if only.is_none() {
            // In a pass: once per entry (every host device matched against
            // its selectors), not once per container.
            if let Some(per_entry) = self.pass_wanted.borrow_mut().as_mut() {
                return per_entry
                    .entry(entry)
                    .or_insert_with(|| self.find_wanted_devices(entry, None))
                    .clone();
            }
        }
        self.find_wanted_devices(entry, only)
    }

    /// [`Daemon::wanted_devices`], worked out now (the host node looked up,
    /// or made, and checked present).
    fn find_wanted_devices(&self, entry: usize, only: Option<&str>) -> Vec<WantedDevice> {
        let c = &self.policy.containers[entry];
        let mut out = Vec::new();
        if only.is_none() {
            for d in &c.devices {
                let links = if d.links {
                    self.links_of_node(&d.path)
                } else {
                    Vec::new()
                };
                out.push(WantedDevice {
                    owned: OwnedDevice {
                        host: d.path.display().to_string(),
                        dest: d.dest.as_ref().unwrap_or(&d.path).display().to_string(),
                        devpath: None,
                        interface: false,
                        links,
                        udev_name: None,
                    },
                    access: d.access,
                    mode: d.mode,
                    owner: self.udev_owner(&d.path),
                });
            }
        }
        for (devpath, dev) in &self.devices {
            if only.is_some_and(|o| o != devpath) {
                continue;
            }
            let Some(h) = c.hotplug.iter().find(|h| h.selector.matches(dev)) else {
                continue;
            };
            if let Some(ifname) = dev.interface() {
                let dest = if h.dest.is_default() {
                    Some(ifname.to_string())
                } else {
                    h.dest
                        .render_with(|k| match k {
                            "devname" | "DEVNAME" | "INTERFACE" => Some(ifname),
                            _ => dev.prop(k).map(String::as_str),
                        })
                        .map(|d| d.trim_start_matches("/dev/").to_string())
                };
                let Some(dest) = dest else {
                    tracing::debug!(interface = ifname, dest = %h.dest, "a property of the dest template is missing: not passed");
                    continue;
                };
                out.push(WantedDevice {
                    owned: OwnedDevice {
                        host: ifname.to_string(),
                        dest,
                        devpath: Some(devpath.clone()),
                        interface: true,
                        links: Vec::new(),
                        udev_name: None,
                    },
                    access: h.access,
                    mode: None,
                    owner: None,
                });
                continue;
            }
            let Some(dest) = h.dest.render(dev) else {
                tracing::debug!(device = ?dev.devname(), dest = %h.dest, "a property of the dest template is missing: not passed");
                continue;
            };
            let Some(host) = self.host_node(dev) else {
                continue;
            };
            let links = if h.links {
                dev.links().into_iter().filter(|l| *l != dest).collect()
            } else {
                Vec::new()
            };
            out.push(WantedDevice {
                owner: self.udev_owner(&host),
                owned: OwnedDevice {
                    host: host.display().to_string(),
                    dest,
                    devpath: Some(devpath.clone()),
                    interface: false,
                    links,
                    udev_name: dev.udev_name(),
                },
                access: h.access,
                mode: h.mode,
            });
        }
        out
    }

    // ---- containers --------------------------------------------------------

    /// Whether the container's init has its own root yet (runtimes put the
    /// init in the cgroup before they pivot into the container's root).
    fn is_ready(&self, dir: &Path) -> bool {
        match runtimes::oldest_process(dir) {
            Ok(Some(pid)) => fs::metadata(format!("/proc/{pid}/root"))
                .map(|m| (m.dev(), m.ino()) != self.own_root)
                .unwrap_or(false),
            _ => false,
        }
    }

    /// Attaches the container and applies its static rules, in its lane;
    /// its devices follow when that is done and it is ready
    /// ([`Daemon::attached`]). Until then the scope program covers it.
    fn apply_container(&mut self, dir: &Path, entry: usize) {
        let c = self.policy.containers[entry].clone();
        let g = match self.ct.cgroups().cgroup(dir) {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(container = %c.name, cgroup = %dir.display(), "cgroup gone before it could be attached: {e}");
                return;
            }
        };
        // Its attach is queued or running already (a repeated event).
        if self.attaching.get(dir) == Some(&g.id) {
            return;
        }
        // A runtime's program is taken over in the lane, first thing.
        let takeover = match self.coexist_before_attach(dir, entry) {
            takeover::Before::Wait => return,
            takeover::Before::Attach => None,
            takeover::Before::TakeOver(foreign) => Some(self.takeover_job(entry, foreign)),
        };
        let mut rules = Vec::new();
        let mut rule_texts = BTreeSet::new();
        for spec in &c.rules {
            match spec.resolve() {
                Ok(r) => {
                    rule_texts.insert(r);
                    rules.push(r);
                }
                Err(e) => {
                    tracing::error!(container = %c.name, cgroup = %dir.display(), "rule not applied: {e}")
                }
            }
        }
        // Write-ahead: what the daemon is about to allow is recorded as its
        // own before it is allowed, so a daemon killed between the two still
        // knows to take it back (a record of a rule never written only costs
        // a no-op revoke later). The record also makes a container removed
        // while its attach is queued known to `container_gone`.
        let owned = self.state.containers.entry(g.id).or_default();
        let owned_rules = owned.rules.clone();
        if !rule_texts.is_subset(&owned.rules) || owned.cgroup != dir {
            owned.cgroup = dir.to_path_buf();
            owned.entry = c.name.clone();
            owned.rules.extend(rule_texts.iter().cloned());
            self.dirty = true;
            if !self.save_state() {
                // Not recorded: attached (that only narrows) without its
                // rules; the next pass tries again.
                if let Some(owned) = self.state.containers.get_mut(&g.id) {
                    owned.rules = owned_rules.clone();
                }
                rules.clear();
                tracing::error!(container = %c.name, cgroup = %dir.display(), "the policy's rules are not granted: the daemon's state could not be written ahead");
            }
        }
        // The policy's rules granted and the ones gone from it taken back
        // in one atomic swap (`Ctdev::regrant`): a reload never shows the
        // container a mix of its old and new rules.
        let stale = reconcile::plan_rules(&owned_rules, &rule_texts);
        let grant: Vec<(GrantSubject, Vec<crate::rule::Rule>)> = rules
            .iter()
            .map(|r| {
                let rule = r.to_string();
                (GrantSubject::Rule { rule }, vec![*r])
            })
            .collect();
        let take_back: Vec<GrantSubject> = stale
            .iter()
            .map(|text| GrantSubject::Rule {
                rule: text.to_string(),
            })
            .collect();
        self.attaching.insert(dir.to_path_buf(), g.id);
        self.submit(lanes::Job {
            id: g.id,
            dir: dir.to_path_buf(),
            name: c.name.clone(),
            rank: 0,
            work: lanes::Work::Attach {
                takeover,
                entry,
                generation: self.generation,
                preset: c.preset,
                grant,
                take_back,
            },
        });
    }

    /// A container's attach finished in its lane: the outcome logged, the
    /// scope program told to defer to it, its record and its devices.
    #[allow(clippy::too_many_arguments)]
    fn attached(
        &mut self,
        job: &lanes::Job,
        entry: usize,
        generation: u64,
        take_back: &[GrantSubject],
        attach: Result<crate::ops::AttachReport, ControllerError>,
        rules: Option<Result<crate::ops::ChangeReport, ControllerError>>,
        (waited, took): (std::time::Duration, std::time::Duration),
    ) {
        let (dir, name) = (job.dir.as_path(), job.name.as_str());
        if self.attaching.get(dir) != Some(&job.id) {
            // Removed (or re-created under its name) meanwhile: its detach
            // is queued behind this attach (`container_gone`).
            tracing::debug!(container = %name, cgroup = %dir.display(), "cgroup went while it was being attached");
            return;
        }
        self.attaching.remove(dir);
        if generation != self.generation {
            // Queued before a reload: applied again with the policy now.
            if let Some(entry) = self.entry_for(dir) {
                self.apply_container(dir, entry);
            }
            return;
        }
        // Gone, or its name re-created as another cgroup already.
        let gone = !crate::cgroup::is_cgroup(dir, job.id);
        let report = match attach {
            Ok(r) if r.policy_id != job.id => {
                // The name was re-created between the job's check and its
                // attach: not this job's container to mark or record.
                tracing::debug!(container = %name, cgroup = %dir.display(), "cgroup re-created while it was being attached");
                return;
            }
            Ok(r) => r,
            Err(e) if gone => {
                tracing::debug!(container = %name, cgroup = %dir.display(), "cgroup gone before it could be attached: {e}");
                return;
            }
            Err(e) => {
                tracing::error!(container = %name, cgroup = %dir.display(), "cannot attach: {e}");
                return;
            }
        };
        if !report.already_attached {
            tracing::info!(container = %name, cgroup = %dir.display(), policy_id = report.policy_id, rules = report.changed.len(), waited_us = waited.as_micros() as u64, took_us = took.as_micros() as u64, "attached");
        }
        match rules {
            Some(Ok(ch)) => {
                for line in &ch.changed {
                    tracing::info!(container = %name, cgroup = %dir.display(), change = %line, "policy entry changed");
                }
                for text in take_back {
                    if let GrantSubject::Rule { rule } = text {
                        tracing::info!(container = %name, cgroup = %dir.display(), rule = %rule, "revoked (gone from the policy)");
                    }
                }
            }
            Some(Err(e)) if gone || !crate::cgroup::is_cgroup(dir, job.id) => {
                tracing::debug!(container = %name, cgroup = %dir.display(), "cgroup gone before its rules could be applied: {e}");
                return;
            }
            Some(Err(e)) => {
                tracing::error!(container = %name, cgroup = %dir.display(), "cannot apply the policy's rules: {e}")
            }
            None => {}
        }
        let id = report.policy_id;
        // The scope program's mark (it may defer to the container's own
        // program) was set by the library under a lock (the container's
        // for a new container, else the root lock) with the link verified
        // (`ensure_attached`, or the attach itself): set here without a
        // lock, it could mark a container an operator detached meanwhile.
        let rule_texts: BTreeSet<crate::rule::Rule> = self.policy.containers[entry]
            .rules
            .iter()
            .filter_map(|spec| spec.resolve().ok())
            .collect();
        let owned = self.state.containers.entry(id).or_default();
        if owned.cgroup != dir || owned.entry != name || owned.rules != rule_texts {
            owned.cgroup = dir.to_path_buf();
            owned.entry = name.to_string();
            owned.rules = rule_texts;
            self.dirty = true;
        }
        let was_ready = self
            .managed
            .get(dir)
            .is_some_and(|m| m.ready && m.entry == entry);
        self.managed.insert(
            dir.to_path_buf(),
            Managed {
                policy_id: id,
                entry,
                ready: was_ready,
            },
        );
        if self.is_ready(dir) {
            self.sync_devices(dir, None);
        } else {
            self.pending.insert(dir.to_path_buf());
        }
    }

    /// Whether the container at `dir`, managed as `m` before this resync,
    /// needs nothing from it but a device comparison: same entry, same
    /// cgroup (not a re-created name), still linked, and its recorded rules
    /// are the entry's rules.
    fn unchanged(&self, dir: &Path, entry: usize, m: &Managed) -> bool {
        if m.entry != entry || !self.ct.pins().link(m.policy_id).exists() {
            return false;
        }
        if !fs::metadata(dir).is_ok_and(|md| md.ino() == m.policy_id) {
            return false;
        }
        let Some(owned) = self.state.containers.get(&m.policy_id) else {
            return false;
        };
        let wanted: Option<BTreeSet<crate::rule::Rule>> = self.policy.containers[entry]
            .rules
            .iter()
            .map(|spec| spec.resolve().ok())
            .collect();
        owned.cgroup == dir && wanted.is_some_and(|w| w == owned.rules)
    }

    /// Brings the container's devices to what the policy wants (all of
    /// them, or only the device at DEVPATH `only`).
    fn sync_devices(&mut self, dir: &Path, only: Option<&str>) {
        let Some(m) = self.managed.get(dir).cloned() else {
            return;
        };
        self.pending.remove(dir);
        if let Some(mm) = self.managed.get_mut(dir) {
            mm.ready = true;
        }
        let name = self.policy.containers[m.entry].name.clone();
        let wanted = self.wanted_devices(m.entry, only);
        let owned = self
            .state
            .containers
            .get(&m.policy_id)
            .map(|o| o.devices.clone())
            .unwrap_or_default();
        let mut plan = match only {
            Some(devpath) => reconcile::plan_devices_for(&owned, &wanted, devpath),
            None => reconcile::plan_devices(&owned, &wanted),
        };
        // A device already given, whose node is still there, is left alone:
        // a resync that changes nothing does nothing.
        // (The container's root is looked up only when a record says so: a
        // device event's fan-out, recorded ahead, needs none.)
        let mut root: Option<Option<PathBuf>> = None;
        // A device event with a job still queued at the dest (a removal of
        // the same numbers just before): the new add goes behind it.
        let event = only.is_some();
        let lanes = &self.lanes;
        let prerecorded = &self.prerecorded;
        plan.add.retain(|w| {
            owned.get(&w.owned.dest) != Some(&w.owned)
                || w.owned.interface
                || prerecorded.contains(&(m.policy_id, w.owned.dest.clone()))
                || (event && lanes.busy_at(m.policy_id, &w.owned.dest))
                || !root
                    .get_or_insert_with(|| {
                        runtimes::oldest_process(dir)
                            .ok()
                            .flatten()
                            .map(|pid| PathBuf::from(format!("/proc/{pid}/root")))
                    })
                    .as_ref()
                    .is_some_and(|r| {
                        let inside = r.join(w.owned.dest.trim_start_matches('/'));
                        fs::symlink_metadata(inside).is_ok_and(|m| {
                            let ft = m.file_type();
                            ft.is_block_device() || ft.is_char_device()
                        }) && w.owned.links.iter().all(|l| {
                            fs::symlink_metadata(r.join(l.trim_start_matches('/')))
                                .is_ok_and(|m| m.file_type().is_symlink())
                        })
                    })
        });
        // In a pass (not an event), a dest with a job queued or running is
        // left to that job (its record is written ahead; the next pass
        // sees how it ended). An event's jobs queue behind earlier ones.
        for o in plan.remove {
            if event || !self.lanes.busy_at(m.policy_id, &o.dest) {
                self.remove_device(dir, m.policy_id, &name, &o);
            }
        }
        let adds: Vec<WantedDevice> = plan
            .add
            .into_iter()
            .filter(|w| event || !self.lanes.busy_at(m.policy_id, &w.owned.dest))
            .collect();
        if !event && adds.len() > 1 {
            // Write-ahead for the whole sync in one state write (a new
            // container's devices used to cost one whole-state write each),
            // as a device event does for its fan-out ([`Daemon::prerecord`]):
            // only dests with nothing recorded yet.
            if let Some(s) = self.state.containers.get_mut(&m.policy_id) {
                for w in adds.iter().filter(|w| !w.owned.interface) {
                    if !s.devices.contains_key(&w.owned.dest) {
                        s.devices.insert(w.owned.dest.clone(), w.owned.clone());
                        self.prerecorded.insert((m.policy_id, w.owned.dest.clone()));
                        self.dirty = true;
                    }
                }
            }
            if !self.save_state() {
                self.unrecord_prerecorded();
            }
        }
        for w in adds {
            self.add_device(dir, m.policy_id, &name, &w);
        }
        if only.is_none() {
            // CDI devices (`devices = [{ cdi = ... }]`), with their own records.
            self.sync_cdi(dir, m.policy_id, m.entry);
        }
    }

    /// Queues the container's CDI sync in its lane, when its entry names
    /// CDI devices or it has CDI records (nothing to do otherwise: an idle
    /// resync costs one stat here).
    fn sync_cdi(&mut self, dir: &Path, id: u64, entry: usize) {
        let c = &self.policy.containers[entry];
        let records = self.state_path.with_file_name("cdi");
        if c.cdi.is_empty() && !records.join(id.to_string()).exists() {
            return;
        }
        let job = lanes::Job {
            id,
            dir: dir.to_path_buf(),
            name: c.name.clone(),
            rank: self.rank,
            work: lanes::Work::Cdi {
                wanted: c.cdi.clone(),
                dirs: self.policy.cdi_dirs.clone(),
                records,
            },
        };
        self.submit(job);
    }

    fn add_device(&mut self, dir: &Path, id: u64, name: &str, w: &WantedDevice) {
        let o = &w.owned;
        if o.interface {
            // An interface is in one container at most: a moved one is no
            // longer in the host's namespace.
            if self
                .state
                .containers
                .get(&id)
                .is_some_and(|s| s.devices.contains_key(&o.dest))
            {
                return;
            }
        }
        let opts = AddOptions {
            access: w.access,
            mode: if o.interface { None } else { w.mode },
            uid: w.owner.map(|(u, _)| u),
            gid: w.owner.map(|(_, g)| g),
            // Other programs are the takeover's business here, and the
            // resync the judge of the link (see `AddOptions::link`).
            link: crate::ops::LinkCheck::Pin,
        };
        // Write-ahead, as for rules: recorded before it is passed in, so a
        // daemon killed mid-way takes it back on restart if it is no longer
        // wanted (removing a device that never got in is a no-op).
        // Recorded ahead for the whole event ([`Daemon::prerecord`]): there
        // was nothing at this dest before.
        let pre = self.prerecorded.remove(&(id, o.dest.clone()));
        let recorded_before = if pre {
            None
        } else {
            self.state
                .containers
                .get(&id)
                .and_then(|s| s.devices.get(&o.dest))
                .cloned()
        };
        if !pre && recorded_before.as_ref() != Some(o) {
            match self.state.containers.get_mut(&id) {
                Some(s) => {
                    s.devices.insert(o.dest.clone(), o.clone());
                    self.dirty = true;
                    if !self.save_state() {
                        // Not recorded ahead: not passed in.
                        if let Some(s) = self.state.containers.get_mut(&id) {
                            set_record(&mut s.devices, &o.dest, recorded_before);
                        }
                        tracing::error!(container = %name, cgroup = %dir.display(), device = %o.host, "not passed in: the daemon's state could not be written ahead");
                        return;
                    }
                }
                None => {
                    tracing::warn!(container = %name, cgroup = %dir.display(), policy_id = id, device = %o.host, "no state record for the container: the device is not recorded")
                }
            }
        }
        // The work itself runs in the container's lane (after its earlier
        // jobs, beside other containers' jobs); [`Daemon::on_done`] finishes it.
        let job = lanes::Job {
            id,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            rank: self.rank,
            work: lanes::Work::Add {
                owned: o.clone(),
                opts,
                recorded_before,
                removals: self.removals,
            },
        };
        self.submit(job);
    }

    /// Queues `job` in its container's lane (handled at once when there is
    /// no worker thread).
    fn submit(&mut self, job: lanes::Job) {
        for done in self.lanes.submit(&self.ct, job) {
            self.on_done(done);
        }
    }

    /// A job of a lane finished: records, logs and follow-ups on the event
    /// loop's thread, in the lane's order.
    pub(crate) fn on_done(&mut self, done: lanes::Done) {
        self.lanes.finished(&done);
        if self.lanes.pending() == 0 {
            self.trim_due = true;
        }
        if let (lanes::Work::Add { owned, .. }, lanes::Outcome::Device(_)) =
            (&done.job.work, &done.outcome)
        {
            if let Some(devpath) = &owned.devpath {
                self.timings.added(devpath, &done);
            }
        }
        let lanes::Done {
            job,
            outcome,
            took,
            waited,
            ..
        } = done;
        let (dir, id, name) = (job.dir.as_path(), job.id, job.name.as_str());
        match (&job.work, outcome) {
            (
                lanes::Work::Add {
                    owned: o,
                    recorded_before,
                    removals,
                    ..
                },
                lanes::Outcome::Device(outcome),
            ) => {
                let left = self.left_since(o, *removals);
                self.added(
                    dir,
                    id,
                    name,
                    o,
                    recorded_before.clone(),
                    outcome,
                    took,
                    left,
                )
            }
            (lanes::Work::Remove { owned: o }, lanes::Outcome::Device(outcome)) => {
                self.removed(dir, id, name, o, outcome)
            }
            (
                lanes::Work::Attach {
                    takeover,
                    entry,
                    generation,
                    take_back,
                    ..
                },
                lanes::Outcome::Attach {
                    takeover: took_over,
                    attach,
                    rules,
                },
            ) => {
                if let (Some(t), Some(r)) = (takeover, took_over) {
                    if self.attaching.get(dir) == Some(&id) {
                        self.took_over(dir, name, t, r);
                    } else if let Err(e) = r {
                        tracing::debug!(container = %name, cgroup = %dir.display(), "cgroup went while its runtime's program was being taken over: {e}");
                    }
                }
                self.attached(
                    &job,
                    *entry,
                    *generation,
                    take_back,
                    attach,
                    rules,
                    (waited, took),
                )
            }
            (lanes::Work::Detach { why }, lanes::Outcome::Detach(r)) => self.detached(id, why, r),
            (
                lanes::Work::Add {
                    owned: o,
                    recorded_before,
                    ..
                },
                lanes::Outcome::Canceled,
            ) => {
                tracing::debug!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, "removed before its add ran: the add is not run");
                // Nothing of it was done: its record goes back to what it
                // was, unless a newer job at the dest wrote its own.
                if !self.lanes.busy_at(id, &o.dest) {
                    if let Some(s) = self.state.containers.get_mut(&id) {
                        self.dirty |= set_record(&mut s.devices, &o.dest, recorded_before.clone());
                    }
                }
            }
            (lanes::Work::Remove { owned: o }, lanes::Outcome::Canceled) => {
                tracing::debug!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, "its add never ran: nothing to take back");
                self.removed(dir, id, name, o, Ok(None));
            }
            (work, lanes::Outcome::Gone) => {
                tracing::debug!(container = %name, cgroup = %dir.display(), "cgroup gone before its job ran: skipped");
                match work {
                    lanes::Work::Attach { .. } if self.attaching.get(dir) == Some(&id) => {
                        self.attaching.remove(dir);
                    }
                    lanes::Work::Remove { owned: o } => self.removed(dir, id, name, o, Ok(None)),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn added(
        &mut self,
        dir: &Path,
        id: u64,
        name: &str,
        o: &OwnedDevice,
        recorded_before: Option<OwnedDevice>,
        outcome: Result<Option<passthrough::PassthroughReport>, PassthroughError>,
        took: std::time::Duration,
        left: bool,
    ) {
        let newer = self.lanes.busy_at(id, &o.dest);
        match outcome {
            Ok(report) => {
                let changed = report.as_ref().is_some_and(|report| {
                    !report.rules_changed.is_empty()
                        || report.interface.is_some()
                        || report.nodes.iter().any(|n| {
                            !matches!(n.action, crate::container::nodes::NodeAction::Unchanged)
                        })
                });
                if changed {
                    let rules = report.map(|r| r.rules_changed).unwrap_or_default();
                    tracing::info!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, rules = ?rules, took_us = took.as_micros() as u64, "device added");
                }
                self.failing.remove(&(id, o.dest.clone()));
                // A newer job at this dest (queued behind this one) wrote
                // its own record ahead: it is not this older job's to replace.
                if !newer {
                    if let Some(s) = self.state.containers.get_mut(&id) {
                        self.dirty |= set_record(&mut s.devices, &o.dest, Some(o.clone()));
                    }
                }
                // Left while it was being passed in: close it again now
                // (its `remove` event may have come before the record did).
                if !o.interface && o.devpath.is_some() && !self.still_present(o) {
                    tracing::debug!(container = %name, device = %o.host, "device left while it was passed in: taking it back");
                    self.remove_device(dir, id, name, o);
                }
            }
            // A race with the device or the container already gone (or its
            // name re-created as another cgroup): not news.
            // (`left`: it was pulled while the add was queued or running,
            // even if it is back by now.)
            // A hotplugged device's host node already gone: it is leaving
            // (the kernel removes the node before its sysfs entry, and the
            // `remove` event may not be read yet).
            Err(e)
                if left
                    || (o.devpath.is_some()
                        && !o.interface
                        && fs::symlink_metadata(&o.host).is_err())
                    || !self.still_present(o)
                    || !crate::cgroup::is_cgroup(dir, id)
                    || !self.is_ready(dir) =>
            {
                tracing::debug!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, "device or container went while passing it in: {e}");
                if let Some(s) = self.state.containers.get_mut(&id).filter(|_| !newer) {
                    self.dirty |= set_record(&mut s.devices, &o.dest, recorded_before);
                }
            }
            Err(e) => {
                // One warning when it starts failing (a configured device
                // missing), not one per resync; debug after that.
                if self.failing.insert((id, o.dest.clone())) {
                    tracing::warn!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, "cannot add device (said once until it works): {e}");
                } else {
                    tracing::debug!(container = %name, device = %o.host, dest = %o.dest, "still cannot add device: {e}");
                }
                // `add` undid its own steps: the record goes back to what it was.
                if let Some(s) = self.state.containers.get_mut(&id).filter(|_| !newer) {
                    self.dirty |= set_record(&mut s.devices, &o.dest, recorded_before);
                }
            }
        }
    }

    /// Records, ahead and in one state write, the device at DEVPATH
    /// `devpath` in every container of `dirs` that wants it at a dest where
    /// nothing is recorded yet (a dest holding another record is left to
    /// [`Daemon::add_device`], after the old one is taken back).
    fn prerecord(&mut self, dirs: &[PathBuf], devpath: &str) {
        self.prerecorded.clear();
        for dir in dirs {
            let Some(m) = self.managed.get(dir).cloned() else {
                continue;
            };
            for w in self.wanted_devices(m.entry, Some(devpath)) {
                if w.owned.interface {
                    continue;
                }
                let Some(s) = self.state.containers.get_mut(&m.policy_id) else {
                    continue;
                };
                if !s.devices.contains_key(&w.owned.dest) {
                    s.devices.insert(w.owned.dest.clone(), w.owned.clone());
                    self.dirty = true;
                    self.prerecorded.insert((m.policy_id, w.owned.dest));
                }
            }
        }
        if !self.prerecorded.is_empty() && !self.save_state() {
            self.unrecord_prerecorded();
        }
    }

    /// Takes back the records written ahead in memory that could not be
    /// saved ([`Daemon::prerecord`]): each device's own `add_device` then
    /// records it again, and passes it in only once that is on disk.
    fn unrecord_prerecorded(&mut self) {
        for (id, dest) in std::mem::take(&mut self.prerecorded) {
            if let Some(s) = self.state.containers.get_mut(&id) {
                s.devices.remove(&dest);
            }
        }
    }

    /// Takes a device back: queued in the container's lane, behind any
    /// `add` of it; its record goes when that is done ([`Daemon::removed`]).
    fn remove_device(&mut self, dir: &Path, id: u64, name: &str, o: &OwnedDevice) {
        let job = lanes::Job {
            id,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            rank: self.rank,
            work: lanes::Work::Remove { owned: o.clone() },
        };
        self.submit(job);
    }

    fn removed(
        &mut self,
        dir: &Path,
        id: u64,
        name: &str,
        o: &OwnedDevice,
        outcome: Result<Option<passthrough::PassthroughReport>, PassthroughError>,
    ) {
        match outcome {
            Ok(Some(report)) => {
                tracing::info!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, rules = ?report.rules_changed, "device removed")
            }
            Ok(None) if o.interface => {
                // Moving an interface in makes it leave the host: expected, not news.
                tracing::debug!(container = %name, cgroup = %dir.display(), interface = %o.dest, "interface forgotten (gone from the host)");
            }
            // Not run: its add never ran either (logged by the caller).
            Ok(None) => {}
            Err(PassthroughError::NotAdded { .. }) => {
                tracing::debug!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, "no grant of the daemon for the device: its record is dropped");
            }
            Err(e) if !crate::cgroup::is_cgroup(dir, id) => {
                tracing::debug!(container = %name, cgroup = %dir.display(), device = %o.host, "container gone while taking its device back: {e}");
            }
            Err(e) if e.container_stopped() => {
                // Its processes are gone and its cgroup is going: a race,
                // not a fault. The record stays (the cgroup's removal, or
                // the next resync if it runs again, takes the device back).
                tracing::debug!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, "container stopped while taking its device back: {e}");
                return;
            }
            Err(e) => {
                tracing::error!(container = %name, cgroup = %dir.display(), device = %o.host, dest = %o.dest, "cannot remove device: {e}");
                return;
            }
        }
        if let Some(s) = self.state.containers.get_mut(&id) {
            // A newer add at the dest (queued after this removal) keeps
            // its record, written ahead.
            if !self.lanes.busy_at(id, &o.dest) {
                self.dirty |= s.devices.remove(&o.dest).is_some();
            }
        }
        // A private node of a device that is gone goes too.
        if o.devpath.is_some()
            && !self.still_present(o)
            && Path::new(&o.host).starts_with(&self.node_dir)
        {
            let _ = fs::remove_file(&o.host);
        }
        self.readd_if_back(dir, id, o);
        self.finish_unselected(id);
    }

    /// The device whose removal just finished is present again (plugged
    /// back while the removal was queued or running) and nothing is queued
    /// at its dest: it goes in now. A resync pass that met the dest busy
    /// left it to this job, and the device's `add` event, read during that
    /// pass before the pass reached this container, went only to the
    /// containers the pass had already seen (found by the churn bench: the
    /// device then waited for the next resync, ~2 s).
    ///
    /// Only noted here: this runs when a removal's outcome comes back,
    /// which can be inside a fan-out or a sync of the same container (a
    /// removal canceled at once by [`lanes::Lanes::submit`]); the device
    /// goes in from [`Daemon::readd_waiting`], after that.
    fn readd_if_back(&mut self, dir: &Path, id: u64, o: &OwnedDevice) {
        if o.devpath.is_some() && !o.interface {
            self.readd
                .insert((dir.to_path_buf(), o.dest.clone()), (id, o.clone()));
        }
    }

    /// The devices [`Daemon::readd_if_back`] noted: each goes in now if it
    /// is still back, free and wanted (called by the event loop after the
    /// outcomes it read, after a device event, and on the tick).
    pub(crate) fn readd_waiting(&mut self) {
        for ((dir, _), (id, o)) in std::mem::take(&mut self.readd) {
            self.readd_now(&dir, id, &o);
        }
    }

    fn readd_now(&mut self, dir: &Path, id: u64, o: &OwnedDevice) {
        let Some(devpath) = &o.devpath else {
            return;
        };
        // Nothing recorded at the dest now (another device there, recorded
        // ahead, is that device's to keep: no back-and-forth between two).
        let free = self
            .state
            .containers
            .get(&id)
            .is_some_and(|s| !s.devices.contains_key(&o.dest));
        if o.interface
            || !free
            || !self.devices.contains_key(devpath)
            || self.lanes.busy_at(id, &o.dest)
        {
            return;
        }
        if !self
            .managed
            .get(dir)
            .is_some_and(|m| m.policy_id == id && m.ready)
        {
            return;
        }
        tracing::debug!(cgroup = %dir.display(), devpath = %devpath, dest = %o.dest, "device back while its removal was in flight: passing it in again");
        self.sync_devices(dir, Some(devpath));
    }

    /// A cgroup the daemon managed was removed: detach its policy (in its
    /// lane, after its attach or device jobs still queued).
    ///
    /// Only what belongs to a cgroup that is really gone: the name may
    /// already be a new cgroup (created again and found by a walk before
    /// this removal was read), whose record, managed entry and queued
    /// attach are matched by path too but carry the new id.
    fn container_gone(&mut self, dir: &Path) {
        let gone = |d: &Path, id: u64| !d.starts_with(dir) || !crate::cgroup::is_cgroup(d, id);
        let ids: Vec<u64> = self
            .state
            .containers
            .iter()
            .filter(|(id, o)| o.cgroup.starts_with(dir) && gone(&o.cgroup, **id))
            .map(|(id, _)| *id)
            .collect();
        self.managed
            .retain(|d, m| !d.starts_with(dir) || !gone(d, m.policy_id));
        let managed = &self.managed;
        self.pending
            .retain(|d| !d.starts_with(dir) || managed.contains_key(d));
        self.attaching
            .retain(|d, id| !d.starts_with(dir) || !gone(d, *id));
        self.coexist_forget(dir);
        for id in ids {
            self.forget(id, "cgroup removed");
        }
    }

    /// Detaches policy `id` (its cgroup is gone) and forgets it: queued in
    /// its lane, so a running attach or device job of it ends first; its
    /// record goes when the detach is done ([`Daemon::detached`]).
    fn forget(&mut self, id: u64, why: &'static str) {
        let Some(o) = self.state.containers.get(&id) else {
            return;
        };
        let job = lanes::Job {
            id,
            dir: o.cgroup.clone(),
            name: o.entry.clone(),
            rank: 0,
            work: lanes::Work::Detach { why },
        };
        self.submit(job);
    }

    /// A detach finished in its lane: its record goes (unless it failed).
    fn detached(
        &mut self,
        id: u64,
        why: &str,
        r: Result<crate::ops::DetachReport, ControllerError>,
    ) {
        let (name, cgroup, devices) = match self.state.containers.get(&id) {
            Some(o) => (
                o.entry.clone(),
                o.cgroup.display().to_string(),
                o.devices.keys().cloned().collect::<Vec<_>>(),
            ),
            None => Default::default(),
        };
        match r {
            Ok(r) => {
                tracing::info!(container = %name, policy_id = id, cgroup = %cgroup, devices = ?devices, entries = r.entries_removed, "detached ({why})")
            }
            Err(ControllerError::NotUnderPolicy { .. }) => {}
            Err(e) => {
                tracing::error!(container = %name, policy_id = id, "cannot detach: {e}");
                return;
            }
        }
        if let Some(m) = &mut self.marks {
            let _ = m.unmark(id);
        }
        self.dirty |= self.state.containers.remove(&id).is_some();
    }

    // ---- scopes (fail-closed before the daemon's attach) --------------------

    /// Sets up the scope programs the policy asks for (default policy, marks
    /// of the children present, then the link) and removes those it no
    /// longer asks for. On failure the containers there are covered from
    /// the daemon's attach on, as without a scope; it is logged.
    fn sync_scopes(&mut self) {
        let wanted = scope::wanted_scopes(&self.policy);
        let mut now = BTreeMap::new();
        let mut object = None;
        // The scope programs' pins, defaults and marks are global state:
        // written under the root lock, as the library's global operations
        // (attach and detach mark and unmark too), taken only when there
        // is something to write (an idle resync takes no lock).
        let mut lock: Option<RootLock> = None;
        let linked: BTreeSet<u64> = kscope::linked_scopes(self.ct.pins()).into_iter().collect();
        let found: Vec<_> = wanted
            .iter()
            .filter_map(|(inside, preset)| match self.ct.cgroups().cgroup(inside) {
                Ok(g) => Some((g, *preset)),
                Err(_) => {
                    tracing::debug!(scope = %inside.display(), "scope cgroup not there yet");
                    None
                }
            })
            .collect();
        // Every wanted scope cgroup there is, covered now or not: a scope
        // whose cover failed or was not tried this time keeps the program
        // it has.
        let wanted_ids: BTreeSet<u64> = found.iter().map(|(g, _)| g.id).collect();
        let mut lock_failed = false;
        for (g, preset) in &found {
            if self.scopes.get(&g.dir) == Some(&g.id) && linked.contains(&g.id) {
                // Covered already (a reload starts over): only children
                // that came without an event (an overflow) are marked.
                let children: Vec<PathBuf> = fs::read_dir(&g.dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .filter(|c| {
                        !self.skipped.contains_key(c)
                            && !self.managed.contains_key(c)
                            && !self.attaching.contains_key(c)
                    })
                    .collect();
                if !children.is_empty() && self.hold_root(&mut lock) {
                    for child in children {
                        self.mark_child(&child);
                    }
                }
                now.insert(g.dir.clone(), g.id);
                continue;
            }
            let object = match &object {
                Some(o) => o,
                None => {
                    match ProgramObject::new(self.ct.config().bpf_object.as_deref()) {
                        Ok(o) => object.insert(o),
                        Err(e) => {
                            tracing::error!("no scope programs (containers are covered from their attach on): {e}");
                            return;
                        }
                    }
                }
            };
            if !self.hold_root(&mut lock) {
                // Not covered now: tried again at the next resync (the
                // others too: each try waits for the lock's timeout).
                lock_failed = true;
                break;
            }
            match self.cover_scope(object, g, *preset) {
                Ok(linked) => {
                    if linked {
                        tracing::info!(scope = %g.dir.display(), preset = ?preset, "scope covered: new children get the default policy until their own is attached");
                    }
                    now.insert(g.dir.clone(), g.id);
                }
                Err(e) => {
                    tracing::error!(scope = %g.dir.display(), "cannot cover the scope (its containers are covered from their attach on): {e}")
                }
            }
        }
        let pins = self.ct.pins();
        let unlink: Vec<u64> = kscope::linked_scopes(pins)
            .into_iter()
            .filter(|id| !wanted_ids.contains(id))
            .collect();
        if !unlink.is_empty() && !lock_failed && self.hold_root(&mut lock) {
            let pins = self.ct.pins();
            for id in unlink {
                match kscope::detach(pins, id) {
                    Ok(()) => tracing::info!(
                        scope_id = id,
                        "scope no longer in the policy: its program is unlinked"
                    ),
                    Err(e) => {
                        tracing::error!(scope_id = id, "cannot unlink the scope program: {e}")
                    }
                }
            }
        }
        self.scopes = now;
        self.skipped
            .retain(|d, _| d.parent().is_some_and(|p| self.scopes.contains_key(p)));
        self.prune_marks(&mut lock);
    }

    /// Takes the root lock into `lock` unless it is held already; `false`
    /// (logged) when it cannot be taken: the global write is not made.
    fn hold_root(&self, lock: &mut Option<RootLock>) -> bool {
        if lock.is_some() {
            return true;
        }
        match self.ct.lock() {
            Ok(l) => {
                *lock = Some(l);
                true
            }
            Err(e) => {
                tracing::warn!("scope programs not updated (retried at the next resync): cannot take the root lock: {e}");
                false
            }
        }
    }

    /// One scope: program, default, marks of the children present, link.
    /// `Ok(true)` when the link was made now. The caller holds the root
    /// lock.
    fn cover_scope(
        &mut self,
        object: &ProgramObject,
        g: &crate::cgroup::Cgroup,
        preset: crate::presets::Preset,
    ) -> Result<bool, kscope::ScopeError> {
        let pins = self.ct.pins().clone();
        let level = self.ct.cgroups().level(g) + 1;
        let program = kscope::program_for_level(object, level, &pins)?;
        kscope::set_default(&pins, g.id, &preset.rules())?;
        if self.marks.is_none() {
            self.marks = DeferMarks::open(&pins)?;
        }
        let children: Vec<PathBuf> = std::fs::read_dir(&g.dir)
            .map_err(crate::error::IoError::at("list", &g.dir))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        for child in children {
            self.mark_child(&child);
        }
        Ok(kscope::attach(&program, g, &pins)? == kscope::ScopeAttach::Linked)
    }

    /// Marks a child of a scope that no entry selects, so the scope's
    /// default does not hold it; a selected child with its own link is
    /// marked as such (its attach marks it too). The caller holds the root
    /// lock.
    fn mark_child(&mut self, child: &Path) {
        let Ok(g) = self.ct.cgroups().cgroup(child) else {
            return;
        };
        let kind = if self.entry_for(child).is_none() {
            self.skipped.insert(child.to_path_buf(), g.id);
            DEFER_NOT_SELECTED
        } else if self.ct.pins().link(g.id).exists() {
            DEFER_OWN_POLICY
        } else {
            return;
        };
        if let Some(m) = &mut self.marks {
            if let Err(e) = m.mark(g.id, kind) {
                tracing::error!(cgroup = %child.display(), "cannot mark for the scope program: {e}");
            }
        }
    }

    /// Drops marks of cgroups that are gone (own-policy marks whose link pin
    /// is gone, not-selected marks of children no longer seen), under the
    /// root lock (taken into `lock` when there is one to drop).
    fn prune_marks(&mut self, lock: &mut Option<RootLock>) {
        let Some(m) = &self.marks else {
            return;
        };
        let all = match m.all() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("cannot list scope marks: {e}");
                return;
            }
        };
        let skipped: BTreeSet<u64> = self.skipped.values().copied().collect();
        let stale = |pins: &crate::kernel::pins::PinRoot, id: u64, kind: u32| match kind {
            DEFER_OWN_POLICY => !pins.link(id).exists(),
            _ => !skipped.contains(&id),
        };
        let candidates: Vec<(u64, u32)> = all
            .into_iter()
            .filter(|(id, kind)| stale(self.ct.pins(), *id, *kind))
            .collect();
        if candidates.is_empty() || !self.hold_root(lock) {
            return;
        }
        let pins = self.ct.pins().clone();
        let Some(m) = &mut self.marks else {
            return;
        };
        for (id, kind) in candidates {
            // Looked at again under the lock: an attach may have linked it
            // meanwhile.
            if stale(&pins, id, kind) {
                let _ = m.unmark(id);
            }
        }
    }

    /// What `status.json` in the state directory says now.
    fn status(&self, watcher: &Watcher) -> Status {
        Status {
            pid: std::process::id(),
            watches: watcher.count(),
            watched_cgroups: watcher.dir_count(),
            containers: self.managed.len(),
            pending: self.pending.len(),
            devices: self.devices.len(),
            scopes: self.scopes.len(),
            events: self.source,
            jobs: self.lanes.pending(),
        }
    }

    /// Writes `status.json` next to the state file when it changed (the
    /// watch count is what an operator checks against
    /// `fs.inotify.max_user_watches`).
    fn write_status(&mut self, watcher: &Watcher) {
        let now = self.status(watcher);
        if self.last_status.as_ref() == Some(&now) {
            return;
        }
        let path = self.state_path.with_file_name("status.json");
        let tmp = path.with_extension("json.tmp");
        let text = crate::fsio::json_pretty(&now).unwrap_or_default();
        let written = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &path));
        match written {
            Ok(()) => self.last_status = Some(now),
            Err(e) => tracing::warn!("cannot write {}: {e}", path.display()),
        }
    }

    /// On the tick: once the lanes drained after a burst, the heap's free
    /// pages go back to the system.
    pub(crate) fn trim_if_drained(&mut self) {
        if self.trim_due && self.lanes.pending() == 0 {
            self.trim_due = false;
            release_free_memory();
        }
    }

    /// Writes the state file if the state changed; `false` when it could
    /// not be written. A write-ahead record that is not on disk must not be
    /// acted on: the callers that record ahead of a grant then take the
    /// record back and do not grant (a daemon killed afterwards would not
    /// know to take the grant back).
    fn save_state(&mut self) -> bool {
        // Nothing changed since the last write: nothing to write (a resync
        // that changes nothing does nothing). Every change of `state` sets
        // `dirty` (a debug build checks it against the state written).
        if !self.dirty {
            debug_assert!(
                self.saved.as_ref().is_none_or(|s| *s == self.state),
                "the daemon's state changed without being marked dirty"
            );
            return true;
        }
        match self.state.save(&self.state_path) {
            Ok(()) => {
                self.dirty = false;
                if cfg!(debug_assertions) {
                    self.saved = Some(self.state.clone());
                }
                true
            }
            Err(e) => {
                tracing::error!("{e}");
                false
            }
        }
    }

    /// A running container no longer selected whose devices are all back
    /// (no record, no job in its lane): the policy's rules are taken back
    /// and its record goes. Anything else: nothing (not yet, or selected).
    fn finish_unselected(&mut self, id: u64) {
        let Some(owned) = self.state.containers.get(&id).cloned() else {
            return;
        };
        if !owned.devices.is_empty()
            || self.lanes.busy(id)
            || self.managed.values().any(|m| m.policy_id == id)
            || self.attaching.values().any(|a| *a == id)
            || !self
                .ct
                .cgroups()
                .cgroup(&owned.cgroup)
                .is_ok_and(|g| g.id == id)
        {
            return;
        }
        let mut failed = false;
        for text in &owned.rules {
            let subject = GrantSubject::Rule {
                rule: text.to_string(),
            };
            match self
                .ct
                .take_back(&target_of(&owned.cgroup), GrantOwner::Daemon, &subject)
            {
                Ok(_) => {
                    tracing::info!(container = %owned.entry, cgroup = %owned.cgroup.display(), rule = %text, "revoked (no longer selected)");
                }
                Err(crate::ops::Error::NotGranted { .. }) => {}
                Err(e) => {
                    // The record stays: the next resync takes it back again
                    // (dropping it would leave the grant for good).
                    failed = true;
                    tracing::warn!(container = %owned.entry, cgroup = %owned.cgroup.display(), rule = %text, "cannot take back a rule no longer selected (retried at the next resync): {e}");
                }
            }
        }
        if failed {
            return;
        }
        self.dirty |= self.state.containers.remove(&id).is_some();
        tracing::info!(container = %owned.entry, cgroup = %owned.cgroup.display(), "no longer selected by the policy; left attached with its other rules");
    }

    /// Compares everything with the policy and converges.
    pub fn reconcile_all(&mut self, watcher: &mut Watcher) {
        self.sync_scopes();
        self.scan_devices();
        let dirs = match watcher.watch_tree(&self.scope_dir) {
            Ok(d) => d,
            Err(e) => {
                // Not seeing the tree is not "no containers": taking back
                // what running containers were given would be wrong.
                tracing::error!(scope = %self.scope_dir.display(), "cannot read the cgroup tree, nothing changed (retried at the next resync): {e}");
                return;
            }
        };
        let live: BTreeSet<PathBuf> = dirs.iter().cloned().collect();
        let pruned = watcher.prune(&live);
        if pruned > 0 {
            tracing::debug!(pruned, "dropped watches of cgroups that are gone");
        }
        // `managed` stays whole while the pass runs: a device event read
        // between its steps goes to every container, also those the pass
        // has not reached yet (it used to go only to those already seen,
        // and the rest got the device from the pass, one state write
        // each). Those the walk no longer finds selected go at the end.
        let before = self.managed.clone();
        let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
        self.pending.clear();
        *self.pass_wanted.get_mut() = Some(BTreeMap::new());
        // Parents come before children in the walk order of watch_tree? Not
        // guaranteed: sort so a container is seen before its sub-cgroups.
        let mut dirs = dirs;
        dirs.sort();
        for dir in dirs {
            // A container created meanwhile is attached now, not after the
            // whole pass (its processes may already run).
            self.take_cgroup_events(watcher);
            // A device plugged meanwhile goes in now, not after the pass.
            self.take_uevents();
            if !dir.exists() {
                continue;
            }
            if let Some(entry) = self.entry_for(&dir) {
                watcher.watch_events(&dir);
                seen.insert(dir.clone());
                if self.attaching.contains_key(&dir) {
                    // Its attach is in its lane: that job finishes it (and
                    // applies it again if the policy changed meanwhile).
                    continue;
                }
                match before.get(&dir).filter(|m| self.unchanged(&dir, entry, m)) {
                    // A resync that changes nothing does nothing: no attach
                    // check, no rule swap, no log line; only the devices
                    // are compared (cheap when nothing differs).
                    Some(m) => {
                        // As it is now (an event during the pass may have
                        // made it ready).
                        let ready = self
                            .managed
                            .entry(dir.clone())
                            .or_insert_with(|| m.clone())
                            .ready;
                        if ready {
                            // Its jobs wait behind those of a device event
                            // queued meanwhile at a better place.
                            let rank = seen.len() as u32;
                            self.with_rank(rank, |d| d.sync_devices(&dir, None));
                        } else {
                            self.pending.insert(dir.clone());
                        }
                    }
                    None => {
                        self.managed.remove(&dir);
                        self.apply_container(&dir, entry)
                    }
                }
            }
        }
        self.take_cgroup_events(watcher);
        *self.pass_wanted.get_mut() = None;
        // What the walk did not see goes, except a container first managed
        // during the pass (found by an event and attached meanwhile).
        self.managed
            .retain(|d, _| seen.contains(d) || !before.contains_key(d));
        // What the daemon gave earlier and nothing selects any more.
        let live: BTreeSet<u64> = self
            .managed
            .values()
            .map(|m| m.policy_id)
            .chain(self.attaching.values().copied())
            .collect();
        let stale: Vec<(u64, PathBuf)> = self
            .state
            .containers
            .iter()
            // A container with a job in its lane is left to that job (a
            // detach queued, an attach finishing): the next pass sees it.
            .filter(|(id, _)| !live.contains(id) && !self.lanes.busy(**id))
            .map(|(id, o)| (*id, o.cgroup.clone()))
            .collect();
        for (id, cgroup) in stale {
            let alive = self.ct.cgroups().cgroup(&cgroup).is_ok_and(|g| g.id == id);
            if !alive {
                self.forget(id, "cgroup gone");
                continue;
            }
            // Still running but no longer selected: take back what the daemon
            // gave; the container stays under policy (fail-closed). Devices
            // first (in its lane), then its rules once they are all back.
            let owned = self.state.containers.get(&id).cloned().unwrap_or_default();
            for o in owned.devices.values() {
                if !self.lanes.busy_at(id, &o.dest) {
                    self.remove_device(&cgroup, id, &owned.entry, o);
                }
            }
            self.finish_unselected(id);
        }
        self.save_state();
    }

    /// Handles the kernel's device events waiting now (non-blocking): from
    /// the event loop, and between the steps of a long pass or a burst of
    /// new containers, so a hotplug does not wait for them. Lost events
    /// set `lost_events` (the event loop rescans).
    fn take_uevents(&mut self) {
        // Taken out while its events are handled: a nested call reads nothing.
        let Some(mut socket) = self.kernel_events.take() else {
            return;
        };
        match socket.read_all() {
            Ok(events) => {
                for ev in events {
                    self.on_uevent(ev, Source::Kernel);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.lost_events = true,
            Err(e) => tracing::error!("reading uevents: {e}"),
        }
        self.kernel_events = Some(socket);
    }

    /// Handles the cgroup events waiting now (non-blocking), during a long
    /// pass. An overflow is left to the pass itself (it rescans anyway).
    fn take_cgroup_events(&mut self, watcher: &mut Watcher) {
        if event_loop::inotify_held() {
            return;
        }
        let events = watcher.read();
        let any = !events.is_empty();
        for ev in events {
            if ev != CgroupEvent::Overflow {
                self.on_cgroup_event(ev, watcher);
            }
        }
        if any {
            // status.json follows removals handled during a long pass too.
            self.write_status(watcher);
        }
    }

    fn on_cgroup_event(&mut self, ev: CgroupEvent, watcher: &mut Watcher) {
        match ev {
            CgroupEvent::Created(dir) => {
                if dir.parent().is_some_and(|p| self.scopes.contains_key(p))
                    && self.entry_for(&dir).is_none()
                {
                    let mut lock = None;
                    if self.hold_root(&mut lock) {
                        self.mark_child(&dir);
                    }
                    return;
                }
                if scope::wanted_scopes(&self.policy).contains_key(&self.inside(&dir)) {
                    self.sync_scopes();
                }
                if let Some(entry) = self.entry_for(&dir) {
                    watcher.watch_events(&dir);
                    self.apply_container(&dir, entry);
                    self.save_state();
                }
            }
            CgroupEvent::Removed(dir) => {
                let gone: Vec<(PathBuf, u64)> = self
                    .skipped
                    .iter()
                    .filter(|(d, _)| d.starts_with(&dir))
                    .map(|(d, id)| (d.clone(), *id))
                    .collect();
                let scope = self.scopes.remove(&dir);
                // The marks of cgroups that are gone go without the root
                // lock: their ids are never used again, so no operation
                // can be changing them (and the event loop does not wait
                // behind the lanes' work for them). A scope's link is
                // global: under the root lock (not taken: the next
                // resync unlinks it).
                for (d, id) in gone {
                    self.skipped.remove(&d);
                    if let Some(m) = &mut self.marks {
                        let _ = m.unmark(id);
                    }
                }
                if let Some(id) = scope {
                    let mut lock = None;
                    if self.hold_root(&mut lock) {
                        let _ = kscope::detach(self.ct.pins(), id);
                    }
                }
                self.container_gone(&dir);
                self.save_state();
            }
            CgroupEvent::EventsChanged(dir) => {
                if self.pending.contains(&dir) && self.is_ready(&dir) {
                    self.sync_devices(&dir, None);
                    self.save_state();
                }
            }
            CgroupEvent::Overflow => {
                tracing::warn!("inotify queue overflowed: rescanning");
                self.rescan = true;
                self.reconcile_all(watcher);
            }
        }
    }

    /// Switches where device events come from (udevd started or stopped)
    /// and rescans, so nothing that happened in between is missed.
    fn switch_source(&mut self, to: Source, watcher: &mut Watcher) {
        if self.source == to {
            return;
        }
        tracing::info!(
            from = self.source.as_str(),
            to = to.as_str(),
            "device events now come from {}",
            match to {
                Source::Udev => "udevd (processed: udev's properties, owner, mode and links)",
                Source::Kernel => "the kernel (udevd is not running)",
            }
        );
        self.source = to;
        self.rescan = true;
        self.reconcile_all(watcher);
    }

    /// One device event from `from`. With udevd running, a device comes in
    /// with udevd's event (after its rules ran); the kernel's `remove` is
    /// acted on at once either way (closing a rule waits for nobody).
    fn on_uevent(&mut self, ev: Uevent, from: Source) {
        let action = match (from, self.source, ev.action.as_str()) {
            (Source::Kernel, _, "remove") => "remove",
            (Source::Kernel, Source::Kernel, "add") => "add",
            (Source::Udev, Source::Udev, "add" | "change") => "add",
            (Source::Udev, Source::Udev, "remove") => "remove",
            _ => return,
        };
        let Some(devpath) = ev.props.get("DEVPATH").cloned() else {
            return;
        };
        let has_node = ev.props.contains_key("MAJOR") && ev.props.contains_key("DEVNAME");
        let is_net = ev.props.get("SUBSYSTEM").map(String::as_str) == Some("net");
        if !has_node && !is_net {
            return;
        }
        // The devices change: what a pass worked out goes.
        if let Some(per_entry) = self.pass_wanted.get_mut() {
            per_entry.clear();
        }
        match action {
            "add" => {
                self.timings.read(&devpath);
                let info = DeviceInfo::new(ev.props, &self.opts.sys, &self.opts.udev_data);
                self.devices.insert(devpath.clone(), info);
                let dirs = self.fan_out_order(|m| m.ready);
                // What each entry wants of the device, once for the event
                // (the host node, its presence, its owner, its dest).
                let entries: BTreeSet<usize> = dirs
                    .iter()
                    .filter_map(|d| self.managed.get(d).map(|m| m.entry))
                    .collect();
                let per_entry = entries
                    .into_iter()
                    .map(|e| (e, self.find_wanted_devices(e, Some(&devpath))))
                    .collect();
                self.event_wanted = Some((devpath.clone(), per_entry));
                // Write-ahead for the whole event in one state write (not
                // one per container): every container the device is about
                // to go to records it first.
                self.prerecord(&dirs, &devpath);
                // Each container's job waits for a worker at its place in
                // this fan-out, not behind the rest of an earlier one.
                for (rank, dir) in dirs.into_iter().enumerate() {
                    self.with_rank(rank as u32, |d| d.sync_devices(&dir, Some(&devpath)));
                }
                self.event_wanted = None;
                // Records of adds that were not attempted go again.
                for (id, dest) in std::mem::take(&mut self.prerecorded) {
                    if let Some(s) = self.state.containers.get_mut(&id) {
                        self.dirty |= s.devices.remove(&dest).is_some();
                    }
                }
                self.save_state();
                self.timings.queued(&devpath);
                self.readd_waiting();
            }
            "remove" => {
                self.timings.forget(&devpath);
                self.removals += 1;
                // Only jobs queued or running compare against these (their
                // snapshot of `removals` is older): with none, every entry
                // is older than any later job's snapshot, so the map is
                // bounded by the removals seen while jobs are in flight.
                if self.lanes.pending() == 0 {
                    self.removed_at.clear();
                }
                self.removed_at.insert(devpath.clone(), self.removals);
                if let Some(dev) = self.devices.remove(&devpath) {
                    // Its private node goes whoever had it.
                    if let Some((t, major, minor)) = dev.numbers() {
                        let private = self.node_dir.join(format!("{}{major}:{minor}", t.letter()));
                        if !self.present(t, major, minor) {
                            let _ = fs::remove_file(private);
                        }
                    }
                }
                let owners: Vec<(PathBuf, u64, String, OwnedDevice)> = self
                    .managed
                    .iter()
                    .filter_map(|(d, m)| {
                        let o = self.state.containers.get(&m.policy_id)?;
                        Some(
                            o.devices
                                .values()
                                .filter(|od| od.devpath.as_deref() == Some(devpath.as_str()))
                                .map(|od| (d.clone(), m.policy_id, o.entry.clone(), od.clone()))
                                .collect::<Vec<_>>(),
                        )
                    })
                    .flatten()
                    .collect();
                // Oldest cgroup first, as for an add ([`Daemon::fan_out_order`]).
                let mut owners = owners;
                owners.sort_by_key(|(_, id, _, _)| *id);
                tracing::debug!(devpath = %devpath, containers = owners.len(), managed = self.managed.len(), "device left the host: taking it back");
                for (rank, (dir, id, name, o)) in owners.into_iter().enumerate() {
                    self.with_rank(rank as u32, |d| d.remove_device(&dir, id, &name, &o));
                }
                self.save_state();
            }
            _ => {}
        }
    }

    /// The managed containers `keep` accepts, in the order a device event
    /// goes to them: oldest cgroup first (cgroup ids, the inode numbers
    /// kernfs hands out, grow with each new cgroup). A fan-out to N
    /// containers reaches its last one after N jobs whatever the order;
    /// this one gives each container the same place in every fan-out
    /// (by age, not by how its name sorts), and containers that came
    /// meanwhile, which get every present device in their own first sync
    /// anyway, come last.
    fn fan_out_order(&self, keep: impl Fn(&Managed) -> bool) -> Vec<PathBuf> {
        let mut dirs: Vec<(u64, PathBuf)> = self
            .managed
            .iter()
            .filter(|(_, m)| keep(m))
            .map(|(d, m)| (m.policy_id, d.clone()))
            .collect();
        dirs.sort();
        dirs.into_iter().map(|(_, d)| d).collect()
    }

    /// Runs `f` with the jobs it queues at place `rank` of their batch
    /// ([`lanes::Job::rank`]); the place outside it is kept (a device event
    /// handled between two steps of a pass).
    fn with_rank<R>(&mut self, rank: u32, f: impl FnOnce(&mut Self) -> R) -> R {
        let outer = std::mem::replace(&mut self.rank, rank);
        let r = f(self);
        self.rank = outer;
        r
    }

    /// Whether the device of `o` (a hotplugged one) was removed from the
    /// host after the daemon's `removals`-th removal.
    fn left_since(&self, o: &OwnedDevice, removals: u64) -> bool {
        o.devpath
            .as_ref()
            .and_then(|d| self.removed_at.get(d))
            .is_some_and(|&at| at > removals)
    }

    /// Re-reads the policy file: a file with an error is rejected whole and
    /// the running policy stays.
    fn reload(&mut self, watcher: &mut Watcher) {
        match Self::load_policy(&self.ct, &self.opts.config) {
            Ok(p) => {
                match self.ct.cgroups().cgroup(&p.scope) {
                    Ok(g) => self.scope_dir = g.dir,
                    Err(e) => {
                        tracing::error!(file = %self.opts.config.display(), "policy rejected, keeping the running one: scope {}: {e}", p.scope.display());
                        return;
                    }
                }
                self.policy = p;
                self.generation += 1;
                // Every scope is set up again (its preset may have changed).
                self.scopes.clear();
                self.rescan = true;
                tracing::info!(file = %self.opts.config.display(), "policy reloaded");
                // Every container is applied again in full: its entry's
                // preset, rules or takeover mode may have changed.
                self.managed.clear();
                self.reconcile_all(watcher);
            }
            Err(e) => tracing::error!("policy rejected, keeping the running one: {e}"),
        }
    }
}

/// Puts `record` at `dest` in a container's device records (`None`: takes
/// the record there away); whether that changed them.
fn set_record(
    devices: &mut BTreeMap<String, OwnedDevice>,
    dest: &str,
    record: Option<OwnedDevice>,
) -> bool {
    match record {
        Some(r) if devices.get(dest) == Some(&r) => false,
        Some(r) => {
            devices.insert(dest.to_string(), r);
            true
        }
        None => devices.remove(dest).is_some(),
    }
}

/// Loads and prints the resolved policy (`--check-config`).
pub fn check_config(ct: &Ctdev, path: &Path) -> Result<String, DaemonError> {
    check::check_config(ct, path, false, None)
}

/// Gives the heap's free pages back to the system. glibc keeps what a
/// burst of jobs freed in each lane thread's arena, so without this the
/// daemon's RSS stays at its largest burst (a long-running daemon under
/// churn must stay flat).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer; it only returns the allocator's
    // own free pages (every arena) to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
