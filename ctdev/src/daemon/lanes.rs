//! Per-container lanes: the kernel work of the daemon for one container
//! (its attach and the policy's rules, `add`/`del` of a device into it:
//! finding its init, the nodes in its mount namespace, the rule, the grant
//! record, its udev links; its CDI devices; its detach once its cgroup is
//! gone) runs on a small set of worker threads, one container at a time per
//! worker.
//!
//! - A container's attach comes first in its lane, then its device jobs,
//!   then its detach: a device never goes into a container before its own
//!   program is attached (until then the scope program covers it), and a
//!   container removed while its attach is queued or running is detached
//!   after that attach, so nothing of it is left.
//! - An attach jumps the line of containers waiting for a worker: a new
//!   container is never queued behind other containers' device work (a
//!   resync's, a burst's).
//!
//! - Jobs of ONE container run in the order they were submitted, one after
//!   the other (a lane): a device's removal is never overtaken by an older
//!   `add` of it, and two jobs of a container never run at once.
//! - Jobs of different containers run concurrently, on up to [`WORKERS`]
//!   threads: a container that is slow (an init stopped or frozen, a slow
//!   mount namespace, a big resync) holds one worker, not the others.
//! - The daemon's own bookkeeping (state file, records, logs of the outcome)
//!   stays on the event loop's thread: each finished job comes back as a
//!   [`Done`] on a channel, in lane order. The write-ahead record of an add
//!   is written (and saved) before its job is submitted; the record of a
//!   removal is dropped only when its job is done.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::cdi::QualifiedName;
use crate::grants::{Owner as GrantOwner, Subject as GrantSubject};
use crate::ops::{AttachReport, ChangeReport, Ctdev, DetachReport, Error as ControllerError};
use crate::passthrough::{self, AddOptions, PassRequest, PassthroughError, PassthroughReport};
use crate::presets::Preset;
use crate::rule::Rule;
use crate::target::Target;

use super::config::TakeoverMode;
use super::reconcile::OwnedDevice;

/// Worker threads: containers whose device work runs at the same time.
pub(crate) const WORKERS: usize = 4;

/// One piece of device work for one container.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// The container's policy id (cgroup inode): the lane.
    pub(crate) id: u64,
    /// Its cgroup directory.
    pub(crate) dir: PathBuf,
    /// The policy entry's name (for logs).
    pub(crate) name: String,
    /// What to do.
    pub(crate) work: Work,
}

/// What a [`Job`] does.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    /// Pass the device in (`add` as the daemon), then its udev links.
    Add {
        /// What is recorded once it is in.
        owned: OwnedDevice,
        /// Access, mode and owner of the node.
        opts: AddOptions,
        /// The record at its dest before this add (put back if it fails).
        recorded_before: Option<OwnedDevice>,
    },
    /// Take the device back (its udev links, then `del` as the daemon; an
    /// interface that left the host is only forgotten).
    Remove {
        /// The record of the device.
        owned: OwnedDevice,
    },
    /// Attach the container with its entry's preset (unless it is attached
    /// already), then grant the policy's rules and take back those gone
    /// from it, in one swap. Its rules were recorded ahead. With
    /// `takeover`, a runtime's device program on the cgroup is replaced
    /// first (fail-closed: ctdev's program is there before it goes).
    Attach {
        /// The runtime's programs to take over first, and how.
        takeover: Option<TakeOver>,
        /// The policy entry (index) as it was when the job was queued.
        entry: usize,
        /// The daemon's policy generation then (a reload makes it stale).
        generation: u64,
        /// The entry's preset.
        preset: Preset,
        /// The policy's rules, as the daemon's grants.
        grant: Vec<(GrantSubject, Vec<Rule>)>,
        /// Rules the daemon granted before and the entry no longer has.
        take_back: Vec<GrantSubject>,
    },
    /// Detach policy `id` (its cgroup is gone): after every earlier job.
    Detach {
        /// Why (for the log line).
        why: &'static str,
    },
    /// Bring the container's CDI devices to what its entry wants.
    Cdi {
        /// The entry's CDI devices.
        wanted: Vec<QualifiedName>,
        /// The CDI spec directories.
        dirs: Vec<PathBuf>,
        /// Where the CDI records are.
        records: PathBuf,
    },
}

/// A takeover of a runtime's device program, done in the container's lane
/// as the first step of its attach ([`super::takeover`]).
#[derive(Debug, Clone)]
pub(crate) struct TakeOver {
    /// `import` or `replace`.
    pub(crate) mode: TakeoverMode,
    /// The entry's preset and rules (what ctdev's program allows).
    pub(crate) rules: Vec<Rule>,
    /// The foreign programs seen on the cgroup when it was queued.
    pub(crate) foreign: BTreeSet<u32>,
}

impl Work {
    /// The device record the job is about (device jobs only).
    pub(crate) fn owned(&self) -> Option<&OwnedDevice> {
        match self {
            Work::Add { owned, .. } | Work::Remove { owned } => Some(owned),
            Work::Attach { .. } | Work::Detach { .. } | Work::Cdi { .. } => None,
        }
    }
}

/// How a job ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// What `add`/`del` said (`Ok(None)`: nothing to call, an interface
    /// forgotten).
    Device(Result<Option<PassthroughReport>, PassthroughError>),
    /// The takeover (when asked: what it did, or why not), the attach,
    /// and (when it worked) the rules' swap.
    Attach {
        takeover: Option<Result<String, String>>,
        attach: Result<AttachReport, ControllerError>,
        rules: Option<Result<ChangeReport, ControllerError>>,
    },
    /// The detach.
    Detach(Result<DetachReport, ControllerError>),
    /// The CDI sync (it logs its own changes).
    Cdi,
    /// Not run: the job's cgroup is gone, or its name is another cgroup
    /// now (a re-created container is not the one the job was for).
    Gone,
}

/// A finished job, back on the event loop.
#[derive(Debug)]
pub(crate) struct Done {
    /// The job.
    pub(crate) job: Job,
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// How long the job ran (not counting its wait in the lane).
    pub(crate) took: Duration,
    /// How long it waited in its lane (submitted → started).
    pub(crate) waited: Duration,
    /// When it finished (its outcome then waits for the event loop).
    pub(crate) finished: Instant,
}

#[derive(Default)]
struct Queue {
    /// Jobs waiting, per container, with when each was submitted.
    lanes: HashMap<u64, VecDeque<(Job, Instant)>>,
    /// Containers with waiting jobs and no job running.
    ready: VecDeque<u64>,
    /// Containers with a job running now.
    running: HashSet<u64>,
    /// How many containers at the front of `ready` are there for a new
    /// container's attach: attaches go before device work, in the order
    /// they came (first in, first out among themselves).
    attaches_first: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A worker that panicked left the queue consistent (every change
        // is a single step): go on with it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The lanes and their workers. Owned by the event loop's thread.
pub(crate) struct Lanes {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Jobs submitted and not done yet, per (policy id, dest).
    in_flight: BTreeMap<(u64, String), usize>,
    /// Jobs submitted and not done yet, per policy id.
    per_container: BTreeMap<u64, usize>,
}

impl Lanes {
    /// Starts the workers; finished jobs are sent to the returned receiver.
    pub(crate) fn start(ct: Arc<Ctdev>) -> (Lanes, UnboundedReceiver<Done>) {
        let (tx, rx) = unbounded_channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let workers = (0..WORKERS)
            .filter_map(|i| {
                let shared = shared.clone();
                let ct = ct.clone();
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name(format!("ctdev-lane-{i}"))
                    .spawn(move || worker(&shared, &ct, &tx))
                    .map_err(|e| tracing::error!("cannot start lane worker {i}: {e}"))
                    .ok()
            })
            .collect::<Vec<_>>();
        let lanes = Lanes {
            shared,
            workers,
            in_flight: BTreeMap::new(),
            per_container: BTreeMap::new(),
        };
        if lanes.workers.is_empty() {
            // No thread at all: jobs run on the event loop (see `submit`).
            tracing::error!("no lane worker: device work runs one container at a time");
        }
        (lanes, rx)
    }

    /// Queues `job` behind the container's earlier jobs. Without any
    /// worker thread it runs now and its outcome is returned at once.
    pub(crate) fn submit(&mut self, ct: &Ctdev, job: Job) -> Option<Done> {
        if let Some(o) = job.work.owned() {
            *self.in_flight.entry((job.id, o.dest.clone())).or_default() += 1;
        }
        *self.per_container.entry(job.id).or_default() += 1;
        if self.workers.is_empty() {
            return Some(run(ct, job, Instant::now()));
        }
        let mut q = self.shared.queue();
        let id = job.id;
        let first = matches!(job.work, Work::Attach { .. });
        let lane = q.lanes.entry(id).or_default();
        lane.push_back((job, Instant::now()));
        if lane.len() == 1 && !q.running.contains(&id) {
            // A new container's attach goes before containers waiting with
            // device work.
            if first {
                let at = q.attaches_first.min(q.ready.len());
                q.ready.insert(at, id);
                q.attaches_first = at + 1;
            } else {
                q.ready.push_back(id);
            }
        }
        drop(q);
        self.shared.wake.notify_one();
        None
    }

    /// Counts `done` as finished (call once per [`Done`] received).
    pub(crate) fn finished(&mut self, done: &Done) {
        if let Some(o) = done.job.work.owned() {
            let key = (done.job.id, o.dest.clone());
            if let Some(n) = self.in_flight.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.in_flight.remove(&key);
                }
            }
        }
        if let Some(n) = self.per_container.get_mut(&done.job.id) {
            *n -= 1;
            if *n == 0 {
                self.per_container.remove(&done.job.id);
            }
        }
    }

    /// Whether a job for the container's `dest` is queued or running.
    pub(crate) fn busy_at(&self, id: u64, dest: &str) -> bool {
        self.in_flight.contains_key(&(id, dest.to_string()))
    }

    /// Whether any job of the container is queued or running.
    pub(crate) fn busy(&self, id: u64) -> bool {
        self.per_container.contains_key(&id)
    }

    /// Jobs queued or running, all containers.
    pub(crate) fn pending(&self) -> usize {
        self.per_container.values().sum()
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.shared.queue().closed = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker: takes the next container with a job and no job running, runs
/// its next job, hands the outcome back, and puts the container back in
/// line if it has more.
fn worker(shared: &Shared, ct: &Ctdev, tx: &UnboundedSender<Done>) {
    loop {
        let (job, submitted) = {
            let mut q = shared.queue();
            loop {
                if let Some(id) = q.ready.pop_front() {
                    q.attaches_first = q.attaches_first.saturating_sub(1);
                    let job = q.lanes.get_mut(&id).and_then(VecDeque::pop_front);
                    if let Some(job) = job {
                        q.running.insert(id);
                        break job;
                    }
                    q.lanes.remove(&id);
                    continue;
                }
                if q.closed {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let id = job.id;
        #[cfg(feature = "failpoints")]
        hold(&job.dir);
        // Sent before the lane is free again: a lane's outcomes arrive in
        // its order.
        let _ = tx.send(run(ct, job, submitted));
        let mut q = shared.queue();
        q.running.remove(&id);
        if q.lanes.get(&id).is_some_and(|l| !l.is_empty()) {
            q.ready.push_back(id);
            drop(q);
            shared.wake.notify_one();
        } else {
            q.lanes.remove(&id);
        }
    }
}

/// Test hook (only in a `failpoints` build): while the file
/// `$CTDEV_TEST_HOLD_DIR/<cgroup name>` exists, the container's next job
/// waits (its lane is held; the other lanes go on). Lets a test make one
/// container slow without any timing.
#[cfg(feature = "failpoints")]
fn hold(dir: &Path) {
    let Some(holds) = std::env::var_os("CTDEV_TEST_HOLD_DIR") else {
        return;
    };
    let Some(name) = dir.file_name() else {
        return;
    };
    let file = Path::new(&holds).join(name);
    if file.exists() {
        tracing::debug!(cgroup = %dir.display(), "lane held by {}", file.display());
        while file.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether `dir` is still the cgroup whose id (inode) is `id`.
pub(crate) fn is_cgroup(dir: &Path, id: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.ino() == id)
}

/// Runs one job (no state of the daemon is touched here), submitted at
/// `submitted`.
fn run(ct: &Ctdev, job: Job, submitted: Instant) -> Done {
    let start = Instant::now();
    // Every operation re-checks, under its lock, that the path is still
    // this job's cgroup (the check below is only the cheap early exit).
    let target = Target::CgroupOf {
        dir: job.dir.clone(),
        id: job.id,
    };
    let outcome = match &job.work {
        // Jobs name their cgroup by path: one queued behind a removal must
        // not land on a container re-created under that name.
        Work::Detach { .. } => Outcome::Detach(ct.detach(&Target::PolicyId(job.id))),
        _ if !is_cgroup(&job.dir, job.id) => Outcome::Gone,
        Work::Add { owned, opts, .. } => {
            let r = passthrough::add_as(
                ct,
                GrantOwner::Daemon,
                &target,
                &PassRequest::from_record(&owned.host, &owned.dest, owned.interface),
                opts,
            );
            crate::failpoint!("daemon.add.after_device");
            if r.is_ok() && !owned.links.is_empty() {
                links(ct, &job, owned, true);
            }
            Outcome::Device(r.map(Some))
        }
        Work::Remove { owned } if owned.interface => Outcome::Device(Ok(None)),
        Work::Remove { owned } => {
            if !owned.links.is_empty() {
                links(ct, &job, owned, false);
            }
            Outcome::Device(
                passthrough::del_as(
                    ct,
                    GrantOwner::Daemon,
                    &target,
                    &PassRequest::from_record(&owned.host, &owned.dest, false),
                )
                .map(Some),
            )
        }
        Work::Attach {
            takeover,
            preset,
            grant,
            take_back,
            ..
        } => {
            // A runtime's program first: ctdev's with the entry's preset
            // (and the runtime's, with `import`) replaces it; if that
            // fails both stay, and the attach below goes on as usual.
            let takeover = takeover
                .as_ref()
                .map(|t| super::takeover::take_over(ct, &job.dir, &target, *preset, t));
            // The preset at attach; the policy's rules are daemon grants,
            // so taking one back leaves what the preset or an operator gave.
            let attach = ct.ensure_attached(&target, *preset);
            let rules = attach
                .is_ok()
                .then(|| ct.regrant(&target, GrantOwner::Daemon, grant, take_back));
            crate::failpoint!("daemon.attach.after_attach");
            Outcome::Attach {
                takeover,
                attach,
                rules,
            }
        }
        Work::Cdi {
            wanted,
            dirs,
            records,
        } => {
            crate::cdi::daemon::sync(ct, &target, job.id, wanted, dirs, records);
            Outcome::Cdi
        }
    };
    let finished = Instant::now();
    Done {
        job,
        outcome,
        took: finished - start,
        waited: start - submitted,
        finished,
    }
}

/// Makes (`make`) or removes the device's udev names in the container:
/// symlinks to its node there, with the nodes' path safety. Never in a
/// container that shares the host's mount namespace (that would be the
/// host's /dev). A failure is logged; the device stays passed in.
fn links(ct: &Ctdev, job: &Job, o: &OwnedDevice, make: bool) {
    let (dir, name) = (&job.dir, &job.name);
    match crate::udev::sync_links(ct.cgroups(), dir, Path::new(&o.dest), &o.links, make) {
        Ok(done) => {
            for l in done {
                tracing::debug!(container = %name, link = %l.link, dest = %o.dest, action = ?l.action, "udev link");
            }
        }
        Err(crate::udev::LinkError::HostMounts { .. }) => {}
        Err(e) if !is_cgroup(dir, job.id) => {
            tracing::debug!(container = %name, cgroup = %dir.display(), "container gone: {e}")
        }
        Err(e) => {
            tracing::warn!(container = %name, cgroup = %dir.display(), dest = %o.dest, "udev links: {e}")
        }
    }
}
