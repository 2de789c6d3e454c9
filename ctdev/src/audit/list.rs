//! `ctdev list` and drift: every container under policy (or one) with its
//! rules, counters and the other device programs that decide for it, read
//! from the pinned links and the policy map. Reads only.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use ctdev_common::PolicyKey;

use crate::audit::drift::{self, Drift};
use crate::audit::view::{ContainerView, Dump, Layout, MapView, OrphanView, RuleView};
use crate::devname::device_names;
use crate::kernel::attached::{device_programs_cached, AttachedAt, Owner, ProgramNames};
use crate::kernel::attachment::{self, AttachmentError};
use crate::kernel::counters::{Counters, Stats};
use crate::kernel::policy_map::PolicyMap;
use crate::ops::{ContainerState, Ctdev, Error, LinkState};
use crate::plan::Entries;
use crate::rule::{Access, DevNumber, DeviceType, Rule};
use crate::runtimes;
use crate::target::Target;

/// What [`Ctdev::read_policies`] reads: the policy map's summary, every
/// entry, its hits, and each container's statistics.
type Policies = (
    Option<MapView>,
    BTreeMap<PolicyKey, u32>,
    BTreeMap<PolicyKey, u64>,
    BTreeMap<u64, Stats>,
);

/// Host device names per rule's device numbers, for one command.
type DeviceNames = HashMap<(DeviceType, DevNumber, DevNumber), Vec<String>>;

/// The view of each distinct entry (key without its policy id, access
/// bits) built so far, for one command: containers mostly share their
/// rules, and formatting each of 200,000 entries again showed at 10,000
/// containers.
type EntryViews = HashMap<(u32, u32, u32, u32), RuleView>;

impl Ctdev {
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
        let ids: Vec<u64> = ids
            .into_iter()
            .filter(|i| only.is_none_or(|o| o == *i))
            .collect();
        // The cgroup walk and the policy reads do not depend on each other:
        // at 10,000 containers each takes a good part of the command, so
        // they run side by side (a short list is not worth a thread).
        let (policies, cgroups) = if ids.len() < PARALLEL_FROM {
            (self.read_policies(), self.cgroups.find_ids(&ids))
        } else {
            std::thread::scope(|s| {
                // No thread to be had (pids.max, RLIMIT_NPROC): one after the other.
                let walk = std::thread::Builder::new()
                    .spawn_scoped(s, || self.cgroups.find_ids(&ids))
                    .ok();
                let policies = self.read_policies();
                let cgroups = match walk {
                    Some(walk) => walk
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    None => self.cgroups.find_ids(&ids),
                };
                (policies, cgroups)
            })
        };
        let (map_view, entries, hits, stats) = policies?;
        dump.policy_map = map_view;
        if let Err(e) = self.check_map_pin() {
            dump.problems.push(e.to_string());
        }
        if let Some(o) = only {
            if ids.is_empty() {
                return Err(self.not_under_policy(&target.cloned().unwrap_or(Target::PolicyId(o))));
            }
        }
        let mut by_id: BTreeMap<u64, Entries> = BTreeMap::new();
        for (key, bits) in entries {
            if only.is_some_and(|o| o != key.policy_id) {
                continue;
            }
            by_id.entry(key.policy_id).or_default().insert(key, bits);
        }
        // Host names per device number, read from /sys/dev once per command
        // (containers mostly share their rules).
        let names_cache: RefCell<DeviceNames> = RefCell::default();
        let views_cache: RefCell<EntryViews> = RefCell::default();
        let rule_views = |entries: &Entries| -> Vec<RuleView> {
            entries
                .iter()
                .map(|(key, bits)| {
                    let mut view = views_cache
                        .borrow_mut()
                        .entry((key.dev_type, key.major, key.minor, *bits))
                        .or_insert_with(|| self.rule_view(key, *bits, &names_cache))
                        .clone();
                    view.hits = hits.get(key).copied().unwrap_or(0);
                    view
                })
                .collect()
        };
        let linked: BTreeSet<u64> = ids.iter().copied().collect();
        let names = ProgramNames::load();
        let attached_at = AttachedAt::default();
        let mut shared_ids: Vec<u32> = Vec::new();
        match crate::kernel::shared::all(&self.pins) {
            Ok(all) => {
                for p in all {
                    match p.prog_id() {
                        Ok(id) => shared_ids.push(id),
                        Err(e) => dump.problems.push(e.to_string()),
                    }
                }
            }
            Err(e) => dump.problems.push(e.to_string()),
        }
        // Pod names, where `ctdev nri` recorded them (a bad map names none).
        let pods = runtimes::k8s::PodMap::load(&runtimes::k8s::state_dir()).unwrap_or_default();
        // Each container's link and the programs on its cgroup: three
        // system calls each, on every CPU (up to 4) for a long list.
        // Only what the view needs leaves the worker: the link's fd is
        // closed there, so the command holds O(1) descriptors however many
        // containers there are (RLIMIT_NOFILE is often 1024).
        let probed = in_parallel(&ids, |id| {
            let link = attachment::open(&self.pins, id).map(|l| l.map(|l| (l.pin, l.info)));
            let programs = match (&link, cgroups.get(&id)) {
                (Ok(Some(_)), Some(g)) => Some(device_programs_cached(
                    &self.cgroups,
                    g,
                    &names,
                    &attached_at,
                )),
                _ => None,
            };
            (link, programs)
        });
        for (id, (link, programs)) in ids.iter().zip(probed) {
            let (link_pin, link) = match link {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(AttachmentError::Foreign { path }) => {
                    dump.foreign_pins.push(path);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let cg = cgroups.get(id);
            // The typed state first; the view is only its output.
            let state = ContainerState {
                cgroup: cg.cloned(),
                policy_id: *id,
                // A removed cgroup lingers in the kernel while the link holds it.
                link: LinkState::of(cg.is_some(), link.is_live_for(*id)),
                program_id: Some(link.prog_id),
                entries: by_id.remove(id).unwrap_or_default(),
            };
            let pod = crate::audit::names::pod_of(&pods, *id, cg.map(|c| c.path.as_path()));
            // A failed query is a problem of the dump, never "no other
            // programs": that would hide a runtime's program beside ctdev's.
            let other_programs = match (cg, programs) {
                (Some(g), Some(Ok(all))) => all
                    .into_iter()
                    .filter(|p| !p.is_own(link.prog_id, &g.path))
                    .collect(),
                (Some(g), Some(Err(e))) => {
                    dump.problems.push(format!(
                        "container {} (policy id {id}): cannot list the device programs on its cgroup: {e}",
                        g.path.display()
                    ));
                    Vec::new()
                }
                _ => Vec::new(),
            };
            dump.containers.push(ContainerView {
                pod,
                former_cgroup: match cg {
                    Some(_) => None,
                    None => crate::audit::names::recorded(self.grants().dir(), *id),
                },
                cdi: Vec::new(),
                policy_id: state.policy_id,
                cgroup: state.cgroup.as_ref().map(|c| c.path.clone()),
                cgroup_dir: state.cgroup.as_ref().map(|c| c.dir.clone()),
                cgroup_id: link.cgroup_id,
                program_id: link.prog_id,
                link_id: link.id,
                state: state.link,
                layout: if shared_ids.contains(&link.prog_id) {
                    Layout::Shared
                } else {
                    Layout::PerContainer
                },
                link_pin,
                rules: rule_views(&state.entries),
                stats: stats.get(id).copied().unwrap_or_default(),
                other_programs,
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
            .map(|(policy_id, entries)| OrphanView {
                policy_id,
                rules: rule_views(&entries),
            })
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

    /// Every container's entries, hits and statistics in one pass, and the
    /// policy map's summary when it exists.
    fn read_policies(&self) -> Result<Policies, Error> {
        let map_pin = self.pins.policy_map();
        let counters = Counters::open(&self.pins)?;
        if map_pin.exists() {
            let map = PolicyMap::open(&map_pin)?;
            let large_hits = match &counters {
                Some(c) => c.large_hits()?,
                None => BTreeMap::new(),
            };
            let all = map.read_all(&large_hits)?;
            let view = MapView {
                pin: map_pin,
                map_id: map.id(),
                entries: all.entries.len(),
                capacity: map.capacity(),
            };
            Ok((Some(view), all.entries, all.hits, all.stats))
        } else {
            let (hits, stats) = match &counters {
                Some(c) => (c.hits()?, c.stats()?),
                None => Default::default(),
            };
            Ok((None, BTreeMap::new(), hits, stats))
        }
    }

    fn rule_view(&self, key: &PolicyKey, bits: u32, names: &RefCell<DeviceNames>) -> RuleView {
        let rule = Rule::from_entry(key, bits).unwrap_or(Rule {
            dev_type: DeviceType::All,
            major: DevNumber::from_kernel(key.major),
            minor: DevNumber::from_kernel(key.minor),
            access: Access::from_bits(bits),
        });
        let devices = names
            .borrow_mut()
            .entry((rule.dev_type, rule.major, rule.minor))
            .or_insert_with(|| {
                device_names(&self.config.sys_dev, rule.dev_type, rule.major, rule.minor)
            })
            .clone();
        RuleView::of(&rule, devices)
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
}

/// Containers from which `list` reads on several threads.
const PARALLEL_FROM: usize = 256;

/// `f` of each of `ids`, in order, spread over up to 4 scoped threads
/// (one per CPU) when there are many (each call is a few system calls).
fn in_parallel<T: Send>(ids: &[u64], f: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    if threads < 2 || ids.len() < PARALLEL_FROM {
        return ids.iter().map(|id| f(*id)).collect();
    }
    let run = |part: &[u64]| part.iter().map(|id| f(*id)).collect::<Vec<T>>();
    let run = &run;
    std::thread::scope(|s| {
        let parts: Vec<_> = ids
            .chunks(ids.len().div_ceil(threads))
            .map(|part| {
                let thread = std::thread::Builder::new().spawn_scoped(s, move || run(part));
                (part, thread)
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(part, thread)| match thread {
                Ok(t) => t
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to be had (pids.max, RLIMIT_NPROC): this part here.
                Err(_) => run(part),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_parallel_keeps_the_order_of_ids() {
        for n in [0, 1, PARALLEL_FROM - 1, PARALLEL_FROM, 1_000, 1_001] {
            let ids: Vec<u64> = (0..n as u64).map(|i| i * 7 + 3).collect();
            let out = in_parallel(&ids, |id| id * 2);
            let want: Vec<u64> = ids.iter().map(|id| id * 2).collect();
            assert_eq!(out, want, "{n} ids");
        }
    }
}
