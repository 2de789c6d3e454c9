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
//!   resync's, a burst's). One more worker takes only attaches, so an
//!   attach does not wait for a worker to finish a device job either.
//! - A removal queued behind a still-queued `add` of the same device at
//!   the same dest cancels that add, and is itself not run when nothing
//!   was given there before ([`Lanes::submit`]): a device plugged and
//!   pulled again costs nothing in the containers its fan-out had not
//!   reached yet.
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

/// Of which taking only new containers' attaches (the rest take any job,
/// attaches first): an attach never waits for a worker to finish another
/// container's device job, only for the root lock.
const ATTACH_WORKERS: usize = 1;

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
        /// The daemon's count of device removals when it was queued: a
        /// removal of its device after that makes a failure a race.
        removals: u64,
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
    /// Not run: an `add` still queued when a removal of the same device
    /// at the same dest was queued behind it (nothing of it was done), or
    /// that removal itself when the add had nothing before it to take
    /// back ([`Lanes::submit`]).
    Canceled,
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

impl Queue {
    /// Takes out of container `id`'s lane the `add` of `owned` when it is
    /// the last job queued at its dest (not running yet; never an
    /// interface's: moving one in is not undone by a removal).
    fn cancel_add(&mut self, id: u64, owned: &OwnedDevice) -> Option<(Job, Instant)> {
        if owned.interface {
            return None;
        }
        let lane = self.lanes.get_mut(&id)?;
        let at = lane
            .iter()
            .rposition(|(j, _)| j.work.owned().is_some_and(|o| o.dest == owned.dest))?;
        if !matches!(&lane[at].0.work, Work::Add { owned: a, .. } if a == owned) {
            return None;
        }
        let taken = lane.remove(at)?;
        if lane.is_empty() {
            // Nothing left for a worker: out of the line too (a container
            // twice in `ready` could run two of its jobs at once).
            self.lanes.remove(&id);
            if let Some(i) = self.ready.iter().position(|x| *x == id) {
                self.ready.remove(i);
                if i < self.attaches_first {
                    self.attaches_first -= 1;
                }
            }
        }
        Some(taken)
    }
}

/// A job taken out of its lane before it ran.
fn canceled(job: Job, submitted: Instant) -> Done {
    let now = Instant::now();
    Done {
        job,
        outcome: Outcome::Canceled,
        took: Duration::ZERO,
        waited: now.saturating_duration_since(submitted),
        finished: now,
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes a worker that takes any job.
    wake: Condvar,
    /// Wakes a worker that takes only attaches.
    wake_attach: Condvar,
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
            wake_attach: Condvar::new(),
        });
        let mut general = 0;
        let workers = (0..WORKERS + ATTACH_WORKERS)
            .filter_map(|i| {
                // An attach-only worker only beside a general one: alone it
                // would leave device and detach jobs queued for ever.
                let attach_only = i >= WORKERS && general > 0;
                let shared = shared.clone();
                let ct = ct.clone();
                let tx = tx.clone();
                let started = std::thread::Builder::new()
                    .name(format!("ctdev-lane-{i}"))
                    .spawn(move || worker(&shared, &ct, &tx, attach_only))
                    .map_err(|e| tracing::error!("cannot start lane worker {i}: {e}"))
                    .ok();
                if started.is_some() && !attach_only {
                    general += 1;
                }
                started
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
    ///
    /// A removal whose device's `add` is still queued (not running) as the
    /// last job at that dest cancels that add: a device plugged and pulled
    /// again before its add reached the container costs nothing there
    /// (in a fan-out to many containers, those not reached yet). When that
    /// add had no record before it (the daemon had given nothing at the
    /// dest) and no other job of the dest is queued or running, nothing
    /// was given there, so the removal is not run either. Canceled jobs
    /// come back at once, add first ([`Outcome::Canceled`]).
    pub(crate) fn submit(&mut self, ct: &Ctdev, job: Job) -> Vec<Done> {
        let mut out = Vec::new();
        if let (Work::Remove { owned }, false) = (&job.work, self.workers.is_empty()) {
            let add = self.shared.queue().cancel_add(job.id, owned);
            if let Some((add, submitted)) = add {
                let nothing_before = matches!(
                    &add.work,
                    Work::Add {
                        recorded_before: None,
                        ..
                    }
                );
                // The add was the dest's only job queued or running.
                let alone = self.in_flight.get(&(job.id, owned.dest.clone())) == Some(&1);
                out.push(canceled(add, submitted));
                if nothing_before && alone {
                    self.count(&job);
                    out.push(canceled(job, Instant::now()));
                    return out;
                }
            }
        }
        self.count(&job);
        if self.workers.is_empty() {
            out.push(run(ct, job, Instant::now()));
            return out;
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
        if first {
            self.shared.wake_attach.notify_one();
        }
        self.shared.wake.notify_one();
        out
    }

    /// Counts `job` as submitted (until [`Lanes::finished`]).
    fn count(&mut self, job: &Job) {
        if let Some(o) = job.work.owned() {
            *self.in_flight.entry((job.id, o.dest.clone())).or_default() += 1;
        }
        *self.per_container.entry(job.id).or_default() += 1;
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
        self.shared.wake_attach.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker: takes the next container with a job and no job running, runs
/// its next job, hands the outcome back, and puts the container back in
/// line if it has more. An `attach_only` worker takes only a container at
/// the front of the line for its attach.
fn worker(shared: &Shared, ct: &Ctdev, tx: &UnboundedSender<Done>, attach_only: bool) {
    let wake = if attach_only {
        &shared.wake_attach
    } else {
        &shared.wake
    };
    loop {
        let (job, submitted) = {
            let mut q = shared.queue();
            loop {
                let front = if attach_only && q.attaches_first == 0 {
                    None
                } else {
                    q.ready.pop_front()
                };
                if let Some(id) = front {
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
                q = wake.wait(q).unwrap_or_else(|p| p.into_inner());
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
        _ if !crate::cgroup::is_cgroup(&job.dir, job.id) => Outcome::Gone,
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
        Err(e) if !crate::cgroup::is_cgroup(dir, job.id) => {
            tracing::debug!(container = %name, cgroup = %dir.display(), "container gone: {e}")
        }
        Err(e) => {
            tracing::warn!(container = %name, cgroup = %dir.display(), dest = %o.dest, "udev links: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(dest: &str, devpath: &str) -> OwnedDevice {
        OwnedDevice {
            host: format!("/dev/{dest}"),
            dest: format!("/dev/{dest}"),
            devpath: Some(devpath.into()),
            interface: false,
            links: Vec::new(),
            udev_name: None,
        }
    }

    fn job(id: u64, work: Work) -> (Job, Instant) {
        let j = Job {
            id,
            dir: PathBuf::from(format!("/cg/{id}")),
            name: "ct".into(),
            work,
        };
        (j, Instant::now())
    }

    fn add(o: &OwnedDevice) -> Work {
        Work::Add {
            owned: o.clone(),
            opts: AddOptions::default(),
            recorded_before: None,
            removals: 0,
        }
    }

    #[test]
    fn a_queued_add_is_taken_out_only_when_it_is_the_last_job_at_its_dest() {
        let a = dev("loop1", "/devices/virtual/block/loop1");
        let b = dev("loop2", "/devices/virtual/block/loop2");
        let mut q = Queue::default();
        // Lane 1: add a, add b. Lane 2: add a, then a removal of a queued.
        q.lanes
            .insert(1, VecDeque::from([job(1, add(&a)), job(1, add(&b))]));
        q.lanes.insert(
            2,
            VecDeque::from([job(2, add(&a)), job(2, Work::Remove { owned: a.clone() })]),
        );
        q.ready = VecDeque::from([1, 2]);
        // Lane 2's last job at a's dest is a removal: nothing taken.
        assert!(q.cancel_add(2, &a).is_none());
        // Another device at the same dest (a replug): not this add.
        let other = OwnedDevice {
            devpath: Some("/devices/other".into()),
            ..a.clone()
        };
        assert!(q.cancel_add(1, &other).is_none());
        // Lane 1: a's add goes, b's stays and lane 1 stays in line.
        let (taken, _) = q.cancel_add(1, &a).expect("a's add");
        assert!(matches!(taken.work, Work::Add { owned, .. } if owned == a));
        assert_eq!(q.lanes[&1].len(), 1);
        assert_eq!(q.ready, VecDeque::from([1, 2]));
        // Lane 1's last job: the lane and its place in line go (a
        // container twice in line could run two jobs at once).
        assert!(q.cancel_add(1, &b).is_some());
        assert!(!q.lanes.contains_key(&1));
        assert_eq!(q.ready, VecDeque::from([2]));
        // An interface is never taken out.
        let mut eth = dev("eth1", "/devices/net/eth1");
        eth.interface = true;
        q.lanes.insert(3, VecDeque::from([job(3, add(&eth))]));
        assert!(q.cancel_add(3, &eth).is_none());
    }
}
