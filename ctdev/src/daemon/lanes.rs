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
//! - Then the line is ordered by each job's due time: when it was
//!   submitted plus its place in its own batch ([`Job::rank`]: the
//!   container's place in a device event's fan-out or in a resync pass)
//!   times [`RANK_STEP`] (2 ms), first come first served among equals: a
//!   new event's first containers do not wait for an earlier event's last
//!   ones (the events share the workers, as processor sharing would), yet
//!   a job is overtaken only by jobs submitted before it is due, so none
//!   waits for ever under a stream of events. A container's place is that
//!   of its best job queued (its earlier jobs must run first anyway).
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
    /// The container's place in the batch that queued the job (0: first;
    /// a device event's fan-out, a resync pass): lower goes first among
    /// containers waiting for a worker.
    pub(crate) rank: u32,
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
    /// Containers waiting for a worker when it was taken (itself
    /// included): how long the line was.
    pub(crate) line: usize,
}

/// What a place further down a batch ([`Job::rank`]) adds to a job's due
/// time: a job of rank `r` lets jobs submitted up to `r × RANK_STEP`
/// after it go first, never more. A new event's first containers go
/// before an earlier fan-out's last ones, and no job waits for ever
/// under a steady stream of events (a strict order by rank would keep a
/// young container's removal, which closes its rule, behind every later
/// event's first containers).
const RANK_STEP: Duration = Duration::from_millis(2);

/// A container's place in the line of those waiting for a worker: lower
/// goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    /// 0: a new container's attach; 1: anything else.
    class: u8,
    /// When it is due, in µs from the queue's start: submitted, plus its
    /// rank times [`RANK_STEP`].
    due_us: u64,
    /// When it was submitted (first come, first served among equals).
    seq: u64,
}

/// A job waiting in its lane.
struct Waiting {
    job: Job,
    submitted: Instant,
    place: Place,
}

#[derive(Default)]
struct Queue {
    /// Jobs waiting, per container.
    lanes: HashMap<u64, VecDeque<Waiting>>,
    /// Containers with waiting jobs and no job running, by place: a
    /// container is in it once at most (twice, it could run two of its
    /// jobs at once).
    ready: BTreeSet<(Place, u64)>,
    /// The place of each container in `ready`.
    in_line: HashMap<u64, Place>,
    /// Containers with a job running now.
    running: HashSet<u64>,
    /// Jobs submitted so far.
    seq: u64,
    /// When the first job was submitted (due times count from it).
    epoch: Option<Instant>,
    closed: bool,
}

impl Queue {
    /// Queues `job` at the end of its lane; `true` when its container
    /// came into the line of those waiting for a worker (or moved up).
    fn push(&mut self, job: Job) -> bool {
        self.push_at(job, Instant::now())
    }

    /// [`Queue::push`] of a job submitted at `now`.
    fn push_at(&mut self, job: Job, now: Instant) -> bool {
        self.seq += 1;
        let epoch = *self.epoch.get_or_insert(now);
        let due = now.saturating_duration_since(epoch) + RANK_STEP * job.rank;
        let place = Place {
            class: if matches!(job.work, Work::Attach { .. }) {
                0
            } else {
                1
            },
            due_us: u64::try_from(due.as_micros()).unwrap_or(u64::MAX),
            seq: self.seq,
        };
        let id = job.id;
        self.lanes.entry(id).or_default().push_back(Waiting {
            job,
            submitted: now,
            place,
        });
        self.line_up(id)
    }

    /// Puts container `id` in line, or moves it, at the place of its best
    /// job waiting (nothing while one of its jobs runs: it comes back in
    /// line when that is done). `true` when its place changed.
    fn line_up(&mut self, id: u64) -> bool {
        let best = self
            .lanes
            .get(&id)
            .and_then(|l| l.iter().map(|w| w.place).min());
        let Some(best) = best.filter(|_| !self.running.contains(&id)) else {
            if let Some(old) = self.in_line.remove(&id) {
                self.ready.remove(&(old, id));
            }
            return false;
        };
        match self.in_line.insert(id, best) {
            Some(old) if old == best => false,
            old => {
                if let Some(old) = old {
                    self.ready.remove(&(old, id));
                }
                self.ready.insert((best, id));
                true
            }
        }
    }

    /// The next job for a worker: the first container in line (for an
    /// `attach_only` worker, the first whose next job is an attach, among
    /// those in line for one). Its container is running from now on.
    fn take(&mut self, attach_only: bool) -> Option<(Waiting, usize)> {
        let line = self.ready.len();
        let (place, id) = if attach_only {
            self.ready
                .iter()
                .take_while(|(p, _)| p.class == 0)
                .find(|(_, id)| {
                    self.lanes
                        .get(id)
                        .and_then(VecDeque::front)
                        .is_some_and(|w| matches!(w.job.work, Work::Attach { .. }))
                })
                .copied()?
        } else {
            self.ready.first().copied()?
        };
        self.ready.remove(&(place, id));
        self.in_line.remove(&id);
        let lane = self.lanes.get_mut(&id)?;
        let next = lane.pop_front();
        if lane.is_empty() {
            self.lanes.remove(&id);
        }
        let next = next?;
        self.running.insert(id);
        Some((next, line))
    }

    /// Container `id`'s job is done: back in line if it has more.
    fn done(&mut self, id: u64) -> bool {
        self.running.remove(&id);
        self.line_up(id)
    }

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
            .rposition(|w| w.job.work.owned().is_some_and(|o| o.dest == owned.dest))?;
        if !matches!(&lane[at].job.work, Work::Add { owned: a, .. } if a == owned) {
            return None;
        }
        let taken = lane.remove(at)?;
        if lane.is_empty() {
            self.lanes.remove(&id);
        }
        // Its place in line follows what is left (out of the line when
        // nothing is).
        self.line_up(id);
        Some((taken.job, taken.submitted))
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
        line: 0,
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
            out.push(run(ct, job, Instant::now(), 0));
            return out;
        }
        let first = matches!(job.work, Work::Attach { .. });
        // A new container's attach goes before containers waiting with
        // device work; device work by its place in its batch.
        let moved = self.shared.queue().push(job);
        if moved {
            if first {
                self.shared.wake_attach.notify_one();
            }
            self.shared.wake.notify_one();
        }
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
        let (next, line) = {
            let mut q = shared.queue();
            loop {
                if let Some(taken) = q.take(attach_only) {
                    break taken;
                }
                if q.closed {
                    return;
                }
                q = wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let id = next.job.id;
        #[cfg(feature = "failpoints")]
        hold(&next.job.dir);
        // Sent before the lane is free again: a lane's outcomes arrive in
        // its order.
        let _ = tx.send(run(ct, next.job, next.submitted, line));
        let back = shared.queue().done(id);
        if back {
            shared.wake.notify_one();
            // Its next job may be an attach (a container re-applied).
            shared.wake_attach.notify_one();
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
/// `submitted`, taken from a line of `line` containers.
fn run(ct: &Ctdev, job: Job, submitted: Instant, line: usize) -> Done {
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
        // Under the container's own lock: other containers' device events
        // do not wait for its cgroup-lock waits.
        Work::Detach { .. } => Outcome::Detach(ct.detach_under_own_lock(&Target::PolicyId(job.id))),
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
                    // As its adds: the pin stands for the link.
                    crate::ops::LinkCheck::Pin,
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
        line,
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

    fn job(id: u64, rank: u32, work: Work) -> Job {
        Job {
            id,
            dir: PathBuf::from(format!("/cg/{id}")),
            name: "ct".into(),
            rank,
            work,
        }
    }

    fn add(o: &OwnedDevice) -> Work {
        Work::Add {
            owned: o.clone(),
            opts: AddOptions::default(),
            recorded_before: None,
            removals: 0,
        }
    }

    fn attach() -> Work {
        Work::Attach {
            takeover: None,
            entry: 0,
            generation: 0,
            preset: Preset::None,
            grant: Vec::new(),
            take_back: Vec::new(),
        }
    }

    /// Containers in line, first first.
    fn line(q: &Queue) -> Vec<u64> {
        q.ready.iter().map(|(_, id)| *id).collect()
    }

    #[test]
    fn a_queued_add_is_taken_out_only_when_it_is_the_last_job_at_its_dest() {
        let a = dev("loop1", "/devices/virtual/block/loop1");
        let b = dev("loop2", "/devices/virtual/block/loop2");
        let mut q = Queue::default();
        // Lane 1: add a, add b. Lane 2: add a, then a removal of a queued.
        q.push(job(1, 0, add(&a)));
        q.push(job(1, 0, add(&b)));
        q.push(job(2, 1, add(&a)));
        q.push(job(2, 1, Work::Remove { owned: a.clone() }));
        assert_eq!(line(&q), [1, 2]);
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
        assert_eq!(line(&q), [1, 2]);
        // Lane 1's last job: the lane and its place in line go (a
        // container twice in line could run two jobs at once).
        assert!(q.cancel_add(1, &b).is_some());
        assert!(!q.lanes.contains_key(&1));
        assert_eq!(line(&q), [2]);
        assert_eq!(q.in_line.len(), 1);
        // An interface is never taken out.
        let mut eth = dev("eth1", "/devices/net/eth1");
        eth.interface = true;
        q.push(job(3, 0, add(&eth)));
        assert!(q.cancel_add(3, &eth).is_none());
    }

    #[test]
    fn the_line_goes_by_place_in_the_fan_out_and_keeps_each_lanes_order() {
        let a = dev("loop1", "/devices/virtual/block/loop1");
        let b = dev("loop2", "/devices/virtual/block/loop2");
        let mut q = Queue::default();
        // Event A fans out to containers 1..=4 (ranks 0..3).
        for (rank, id) in (1..=4).enumerate() {
            q.push(job(id, rank as u32, add(&a)));
        }
        // A worker takes container 1 (rank 0).
        let (w, n) = q.take(false).expect("a job");
        assert_eq!((w.job.id, n), (1, 4));
        // Event B fans out to 1..=4 too: container 1 is running (not in
        // line), 2 keeps its place (its A job is older at rank 1 than its
        // B job at rank 1), and B's rank 0 in 1 comes when 1 is done.
        for (rank, id) in (1..=4).enumerate() {
            q.push(job(id, rank as u32, add(&b)));
        }
        assert_eq!(line(&q), [2, 3, 4]);
        assert!(q.done(1));
        // Container 1's B job (rank 0) before 3's and 4's A jobs (ranks 2, 3).
        assert_eq!(line(&q), [1, 2, 3, 4]);
        // A new container's attach goes before every device job.
        q.push(job(9, 0, attach()));
        assert_eq!(line(&q), [9, 1, 2, 3, 4]);
        // An attach-only worker takes only the attach.
        let (w, _) = q.take(true).expect("the attach");
        assert_eq!(w.job.id, 9);
        assert!(q.take(true).is_none());
        // A lane runs its jobs one at a time, in order: while 1 runs it is
        // not in line; its next job is its own next one.
        let (w, _) = q.take(false).expect("a job");
        assert!(w.job.id == 1 && matches!(&w.job.work, Work::Add { owned, .. } if *owned == b));
        assert!(!line(&q).contains(&1));
        // A lane waiting behind a pass's job (rank 50) moves up when an
        // event's job (rank 0) is queued behind it: its pass job runs first.
        let c = dev("loop3", "/devices/virtual/block/loop3");
        q.push(job(7, 50, add(&c)));
        assert_eq!(line(&q).last(), Some(&7));
        q.push(job(7, 0, add(&a)));
        assert_eq!(line(&q).first(), Some(&7));
        let (w, _) = q.take(false).expect("a job");
        assert!(w.job.id == 7 && matches!(&w.job.work, Work::Add { owned, .. } if *owned == c));
        // Every container in line once, every lane's jobs in order.
        let ids: BTreeSet<u64> = line(&q).into_iter().collect();
        assert_eq!(ids.len(), q.ready.len());
    }

    #[test]
    fn a_job_far_down_a_fan_out_is_overtaken_only_for_a_bounded_time() {
        let a = dev("loop1", "/devices/virtual/block/loop1");
        let mut q = Queue::default();
        let t0 = Instant::now();
        // A removal at rank 50 of an event's fan-out (due 100 ms later).
        q.push_at(job(1, 50, Work::Remove { owned: a.clone() }), t0);
        // Later events' first containers go before it while they come
        // within its rank's allowance...
        q.push_at(job(2, 0, add(&a)), t0 + Duration::from_millis(10));
        q.push_at(job(3, 10, add(&a)), t0 + Duration::from_millis(50));
        assert_eq!(line(&q), [2, 3, 1]);
        // ...never after it: a steady stream of rank-0 jobs submitted
        // later than that all wait behind it.
        for (i, ms) in (101..120).enumerate() {
            q.push_at(
                job(10 + i as u64, 0, add(&a)),
                t0 + Duration::from_millis(ms),
            );
        }
        let first: Vec<u64> = line(&q).into_iter().take(3).collect();
        assert_eq!(first, [2, 3, 1]);
    }
}
