//! Runtime coexistence: the daemon replaces a runtime's own device program
//! on the containers it manages, as `ctdev attach --takeover` does, and does
//! it again whenever the runtime attaches a new one.
//!
//! - **Detection**: every [`CHECK_INTERVAL`] the daemon asks the kernel
//!   which device programs are attached to each managed cgroup
//!   (`BPF_PROG_QUERY`, one syscall per cgroup). A program id it has not
//!   seen there before is classified by name; one that is not ctdev's is a
//!   runtime's (runc's programs have no name).
//! - **Order** (fail-closed, never a moment without a program): ctdev's
//!   program is attached (or already is) with the entry's rules, plus the
//!   runtime's own rules with `takeover = "import"`; the kernel must then list
//!   it on the cgroup; only then are the runtime's programs detached. If any
//!   step fails, both programs stay (an access needs both allows), the error
//!   is logged once, the next check tries again, and `ctdev list` reports
//!   the foreign program under `problems`.
//! - **Where**: the event loop only decides (one `BPF_PROG_QUERY`); the
//!   takeover itself runs in the container's lane as the first step of its
//!   attach job ([`super::lanes`]), so it keeps the attach's order (before
//!   the container's devices, first in first out among attaches, not run
//!   on a cgroup gone or re-created under its name) and never holds up the
//!   event loop.
//! - **New runtime cgroups**: a runtime (runc 1.1) that finds exactly one
//!   program on a cgroup asks the kernel to *replace* it, which fails for a
//!   program attached through a link such as ctdev's, and the container
//!   does not start. So a new cgroup that a runtime resolver recognises
//!   (`docker/<id>`, `libpod-<id>`, `lxc.payload.NAME`, …) is left to its
//!   runtime until the runtime's program is there (then taken over) or
//!   [`RUNTIME_GRACE`] has passed with none (then attached as usual). The
//!   runtime's own program enforces in the meantime.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;
use crate::kernel::attached::{Owner, ProgramNames};
use crate::kernel::sys;
use crate::ops::Ctdev;
use crate::rule::Rule;
use crate::takeover::{self, TakeoverOptions};

use super::config::TakeoverMode;
use super::lanes::TakeOver;
use super::Daemon;

/// How often managed cgroups are checked for new foreign programs.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How long a new runtime cgroup without any device program is left alone
/// before the daemon attaches to it anyway.
pub(crate) const RUNTIME_GRACE: Duration = Duration::from_secs(1);

/// What the daemon knows about device programs on the cgroups it manages.
#[derive(Debug, Default)]
pub(crate) struct Coexist {
    /// Program ids last seen on each managed cgroup (after a takeover, only
    /// ctdev's).
    known: BTreeMap<PathBuf, BTreeSet<u32>>,
    /// Runtime cgroups waiting for their runtime's program: entry, first seen.
    waiting: BTreeMap<PathBuf, (usize, Instant)>,
    /// Foreign programs a takeover failed for, since when, and whether the
    /// failure was logged as an error yet.
    failed: BTreeMap<PathBuf, Failing>,
    last_check: Option<Instant>,
}

/// A takeover that keeps failing on one cgroup.
#[derive(Debug)]
struct Failing {
    programs: BTreeSet<u32>,
    since: Instant,
    reported: bool,
}

/// How long a takeover may fail before it is logged as an error: while a
/// runtime creates a container its program is there before its state file
/// (the rule source), so the first tries fail as a matter of course.
pub(crate) const FAILURE_QUIET: Duration = Duration::from_secs(2);

/// The device programs attached to one cgroup itself: ctdev's and others.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct OnCgroup {
    /// Every program id attached there.
    pub all: BTreeSet<u32>,
    /// The ones that are not ctdev's.
    pub foreign: BTreeSet<u32>,
}

impl OnCgroup {
    /// Whether ctdev's program is among them.
    pub(crate) fn has_ctdev(&self) -> bool {
        self.all.len() > self.foreign.len()
    }
}

/// What to do with a cgroup an entry selects, before attaching to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Attach as usual (no runtime program, or takeover is off).
    Attach,
    /// A runtime's program is there: take it over, then attach as usual.
    TakeOver,
    /// Leave the cgroup to its runtime for now (no program of anyone yet).
    Wait,
}

/// Pure: what to do with a selected cgroup.
pub(crate) fn decide(
    mode: TakeoverMode,
    on: &OnCgroup,
    runtime_cgroup: bool,
    waited: Option<Duration>,
) -> Decision {
    if mode == TakeoverMode::Off {
        return Decision::Attach;
    }
    if !on.foreign.is_empty() {
        return Decision::TakeOver;
    }
    if on.has_ctdev() || !runtime_cgroup {
        return Decision::Attach;
    }
    match waited {
        Some(w) if w >= RUNTIME_GRACE => Decision::Attach,
        _ => Decision::Wait,
    }
}

/// The programs attached to `cgroup` itself. Names are only looked up for
/// ids not in `known` (listing names is the expensive part).
fn programs_on(cgroup: &Cgroup, known: Option<&BTreeSet<u32>>) -> Option<OnCgroup> {
    let fd = cgroup.open().ok()?;
    let ids: BTreeSet<u32> = sys::query_device_programs(fd.as_fd(), false, &cgroup.dir)
        .ok()?
        .into_iter()
        .collect();
    let mut on = OnCgroup {
        all: ids.clone(),
        foreign: BTreeSet::new(),
    };
    if known.is_some_and(|k| *k == ids) {
        // Nothing new; what was foreign before still is (a failed takeover).
        return Some(on);
    }
    let names = ProgramNames::load();
    on.foreign = ids
        .into_iter()
        .filter(|id| Owner::from_name(&names.get(*id)) != Owner::Ctdev)
        .collect();
    Some(on)
}

/// What to do with a selected cgroup before its attach is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Before {
    /// Leave it to its runtime for now (do not attach yet).
    Wait,
    /// Attach as usual.
    Attach,
    /// Take over these foreign programs in its lane, then attach.
    TakeOver(BTreeSet<u32>),
}

/// Replaces the foreign programs on `dir` by ctdev's (fail-closed), as
/// `t` says. Runs in the container's lane (the first step of its attach
/// job); what it did, or why not, goes back to the event loop.
/// `target` names the cgroup `dir` by its id too
/// ([`crate::target::Target::CgroupOf`]).
pub(crate) fn take_over(
    ct: &Ctdev,
    dir: &Path,
    target: &crate::target::Target,
    preset: crate::presets::Preset,
    t: &TakeOver,
) -> Result<String, String> {
    match t.mode {
        TakeoverMode::Import => {
            takeover::takeover(ct, target, &TakeoverOptions::default(), &t.rules)
                .map(|r| {
                    format!(
                        "imported {} rule(s) from {} ({}), detached {:?}",
                        r.imported.len(),
                        r.source
                            .as_deref()
                            .map_or_else(|| "nowhere".to_string(), |p| p.display().to_string()),
                        r.format,
                        r.detached.iter().map(|p| p.id).collect::<Vec<_>>()
                    )
                })
                .map_err(|e| e.to_string())
        }
        TakeoverMode::Replace => replace(ct, dir, target, preset, &t.rules),
        TakeoverMode::Off => Err("takeover is off for this entry".to_string()),
    }
}

/// `takeover = "replace"`: ctdev attached with the entry's preset only,
/// verified, then every other program on the cgroup itself detached.
fn replace(
    ct: &Ctdev,
    dir: &Path,
    target: &crate::target::Target,
    preset: crate::presets::Preset,
    rules: &[Rule],
) -> Result<String, String> {
    let report = ct
        .attach(target, preset, rules)
        .map_err(|e| e.to_string())?;
    let _lock = ct.lock().map_err(|e| e.to_string())?;
    // Under the lock: the cgroup at `dir` is still the one attached (not
    // created again under its name meanwhile), and its own link is live
    // (the program id alone is every container's on the shared program).
    let cgroup = ct.cgroups().cgroup(dir).map_err(|e| e.to_string())?;
    if cgroup.id != report.policy_id {
        return Err(format!(
            "{} was created again while it was taken over (policy {} attached, now {}); its runtime's program was left in place",
            dir.display(),
            report.policy_id,
            cgroup.id
        ));
    }
    let live = crate::kernel::attachment::open(ct.pins(), report.policy_id)
        .map_err(|e| e.to_string())?
        .is_some_and(|l| l.is_live_for(report.policy_id));
    let fd = cgroup.open().map_err(|e| e.to_string())?;
    let ids = sys::query_device_programs(fd.as_fd(), false, dir).map_err(|e| e.to_string())?;
    if !live || !ids.contains(&report.program_id) {
        return Err(format!(
            "ctdev's program {} is not attached to {} after attach; the runtime's program was left in place",
            report.program_id,
            dir.display()
        ));
    }
    let names = ProgramNames::load();
    let mut detached = Vec::new();
    for id in ids
        .into_iter()
        .filter(|id| *id != report.program_id && Owner::from_name(&names.get(*id)) != Owner::Ctdev)
    {
        let prog = sys::prog_fd_by_id(id).map_err(|e| e.to_string())?;
        sys::prog_detach_device(fd.as_fd(), prog.as_fd(), dir).map_err(|e| {
            format!("ctdev is attached, but the runtime's program {id} could not be detached (both now apply): {e}")
        })?;
        detached.push(id);
    }
    Ok(format!("replaced, detached {detached:?}"))
}

impl Daemon {
    /// Before attaching the cgroup `dir` for `entry`: whether a runtime's
    /// program is there to take over (in the attach job), or the cgroup is
    /// left to its runtime for now.
    pub(super) fn coexist_before_attach(&mut self, dir: &Path, entry: usize) -> Before {
        let c = &self.policy.containers[entry];
        let mode = c.takeover;
        if mode == TakeoverMode::Off {
            return Before::Attach;
        }
        let Ok(cgroup) = self.ct.cgroups().cgroup(dir) else {
            return Before::Attach;
        };
        let Some(on) = programs_on(&cgroup, None) else {
            return Before::Attach;
        };
        let inside = self.inside(dir);
        let rel = inside.strip_prefix("/").unwrap_or(&inside);
        let runtime_cgroup =
            !super::selector::runtime_names(rel).is_empty() || c.select.is_runtime();
        let waited = self
            .coexist
            .waiting
            .get(dir)
            .map(|(_, since)| since.elapsed());
        match decide(mode, &on, runtime_cgroup, waited) {
            Decision::Attach => {
                self.coexist.waiting.remove(dir);
                Before::Attach
            }
            Decision::Wait => {
                if waited.is_none() {
                    tracing::info!(container = %c.name, cgroup = %dir.display(), "runtime container without a device program yet: waiting for its runtime before attaching");
                    self.coexist
                        .waiting
                        .insert(dir.to_path_buf(), (entry, Instant::now()));
                }
                Before::Wait
            }
            Decision::TakeOver => {
                self.coexist.waiting.remove(dir);
                Before::TakeOver(on.foreign)
            }
        }
    }

    /// What a takeover for `entry` on `dir` is to do with `foreign`. It
    /// attaches with the preset's rules only: the entry's own rules come
    /// with the attach job's `regrant`, as the daemon's grants, so that a
    /// reload that drops one takes it back (attached as base entries they
    /// could never be taken back).
    pub(super) fn takeover_job(&self, entry: usize, foreign: BTreeSet<u32>) -> TakeOver {
        let c = &self.policy.containers[entry];
        let rules: Vec<Rule> = c.preset.rules();
        TakeOver {
            mode: c.takeover,
            rules,
            foreign,
        }
    }

    /// A takeover done in the lane of `dir` (still the container it was
    /// for): logged, failures counted (an error once it keeps failing past
    /// [`FAILURE_QUIET`]), and what is on the cgroup now remembered.
    pub(super) fn took_over(
        &mut self,
        dir: &Path,
        name: &str,
        t: &TakeOver,
        result: Result<String, String>,
    ) {
        let foreign = &t.foreign;
        match result {
            Ok(what) => {
                self.coexist.failed.remove(dir);
                tracing::info!(container = %name, cgroup = %dir.display(), mode = t.mode.as_str(), "took over from the runtime's device program: {what}");
                if self.managed.contains_key(dir) {
                    if let Ok(cgroup) = self.ct.cgroups().cgroup(dir) {
                        let after = programs_on(&cgroup, None)
                            .map(|o| o.all)
                            .unwrap_or_default();
                        self.coexist.known.insert(dir.to_path_buf(), after);
                    }
                }
            }
            Err(e) => {
                let f = self
                    .coexist
                    .failed
                    .entry(dir.to_path_buf())
                    .or_insert_with(|| Failing {
                        programs: foreign.clone(),
                        since: Instant::now(),
                        reported: false,
                    });
                if f.programs != *foreign {
                    f.programs = foreign.clone();
                    f.reported = false;
                }
                if !f.reported && f.since.elapsed() >= FAILURE_QUIET {
                    f.reported = true;
                    tracing::error!(container = %name, cgroup = %dir.display(), programs = ?foreign, "cannot take over from the runtime's device program (both stay; retrying): {e}");
                } else {
                    tracing::debug!(container = %name, cgroup = %dir.display(), "takeover not done yet (both programs stay; retrying): {e}");
                }
            }
        }
    }

    /// The periodic check: runtime cgroups that waited long enough (or got
    /// their runtime's program) are attached; managed cgroups with a new
    /// foreign program are taken over again. Returns whether anything changed.
    pub(super) fn check_foreign(&mut self) -> bool {
        if self
            .coexist
            .last_check
            .is_some_and(|t| t.elapsed() < CHECK_INTERVAL)
        {
            return false;
        }
        self.coexist.last_check = Some(Instant::now());
        let mut changed = false;
        let waiting: Vec<(PathBuf, usize)> = self
            .coexist
            .waiting
            .iter()
            .map(|(d, (e, _))| (d.clone(), *e))
            .collect();
        for (dir, entry) in waiting {
            if !dir.exists() {
                self.coexist.waiting.remove(&dir);
                continue;
            }
            let before = self.managed.contains_key(&dir);
            self.apply_container(&dir, entry);
            changed |= self.managed.contains_key(&dir) != before;
        }
        let managed: Vec<(PathBuf, usize)> = self
            .managed
            .iter()
            .map(|(d, m)| (d.clone(), m.entry))
            .collect();
        self.coexist
            .known
            .retain(|d, _| managed.iter().any(|(m, _)| m == d));
        for (dir, entry) in managed {
            if self.policy.containers[entry].takeover == TakeoverMode::Off {
                continue;
            }
            let Ok(cgroup) = self.ct.cgroups().cgroup(&dir) else {
                continue;
            };
            let known = self.coexist.known.get(&dir);
            let Some(on) = programs_on(&cgroup, known) else {
                continue;
            };
            if known.is_some_and(|k| *k == on.all) {
                continue;
            }
            if !on.foreign.is_empty() {
                if self.attaching.contains_key(&dir) {
                    // Its attach (a takeover perhaps) is queued or running:
                    // the next check sees how it ended.
                    continue;
                }
                let name = self.policy.containers[entry].name.clone();
                let retry = self
                    .coexist
                    .failed
                    .get(&dir)
                    .is_some_and(|f| f.programs == on.foreign);
                if !retry {
                    tracing::info!(container = %name, cgroup = %dir.display(), programs = ?on.foreign, "a runtime attached a device program: taking over");
                }
                // The takeover, then the attach with the policy's rules (and
                // its devices: they come back if the runtime's program
                // replaced anything of ours), in the container's lane; what
                // is on the cgroup is remembered when it is done.
                self.apply_container(&dir, entry);
                changed |= self.attaching.contains_key(&dir);
            } else {
                self.coexist.known.insert(dir, on.all);
            }
        }
        changed
    }

    /// Forgets what it knew about `dir` (its cgroup is gone).
    pub(super) fn coexist_forget(&mut self, dir: &Path) {
        self.coexist.known.retain(|d, _| !d.starts_with(dir));
        self.coexist.waiting.retain(|d, _| !d.starts_with(dir));
        self.coexist.failed.retain(|d, _| !d.starts_with(dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(all: &[u32], foreign: &[u32]) -> OnCgroup {
        OnCgroup {
            all: all.iter().copied().collect(),
            foreign: foreign.iter().copied().collect(),
        }
    }

    #[test]
    fn off_always_attaches() {
        assert_eq!(
            decide(TakeoverMode::Off, &on(&[7], &[7]), true, None),
            Decision::Attach
        );
    }

    #[test]
    fn a_foreign_program_is_taken_over_in_both_modes() {
        for mode in [TakeoverMode::Import, TakeoverMode::Replace] {
            assert_eq!(
                decide(mode, &on(&[7, 9], &[9]), false, None),
                Decision::TakeOver
            );
            assert_eq!(
                decide(mode, &on(&[9], &[9]), true, None),
                Decision::TakeOver
            );
        }
    }

    #[test]
    fn a_new_runtime_cgroup_waits_for_its_runtime_then_is_attached() {
        let empty = on(&[], &[]);
        let m = TakeoverMode::Import;
        assert_eq!(decide(m, &empty, true, None), Decision::Wait);
        assert_eq!(
            decide(m, &empty, true, Some(Duration::from_millis(100))),
            Decision::Wait
        );
        assert_eq!(
            decide(m, &empty, true, Some(RUNTIME_GRACE)),
            Decision::Attach
        );
        // A plain cgroup is attached at once, before any process runs.
        assert_eq!(decide(m, &empty, false, None), Decision::Attach);
        // Already ours (a daemon restart): converge at once.
        assert_eq!(decide(m, &on(&[7], &[]), true, None), Decision::Attach);
    }
}
