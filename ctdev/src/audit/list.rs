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
use crate::kernel::counters::Counters;
use crate::kernel::policy_map::PolicyMap;
use crate::ops::{ContainerState, Ctdev, Error, LinkState};
use crate::plan::Entries;
use crate::rule::{Access, DevNumber, DeviceType, Rule};
use crate::runtimes;
use crate::target::Target;

/// Host device names per rule's device numbers, for one command.
type DeviceNames = HashMap<(DeviceType, DevNumber, DevNumber), Vec<String>>;

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
        let map_pin = self.pins.policy_map();
        // Every container's entries, hits and statistics in one pass.
        let counters = Counters::open(&self.pins)?;
        let (entries, hits, stats) = if map_pin.exists() {
            let map = PolicyMap::open(&map_pin)?;
            let large_hits = match &counters {
                Some(c) => c.large_hits()?,
                None => BTreeMap::new(),
            };
            let all = map.read_all(&large_hits)?;
            dump.policy_map = Some(MapView {
                pin: map_pin,
                map_id: map.id(),
                entries: all.entries.len(),
                capacity: map.capacity(),
            });
            (all.entries, all.hits, all.stats)
        } else {
            let (hits, stats) = match &counters {
                Some(c) => (c.hits()?, c.stats()?),
                None => Default::default(),
            };
            (BTreeMap::new(), hits, stats)
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
        let rule_views = |entries: &Entries| -> Vec<RuleView> {
            entries
                .iter()
                .map(|(key, bits)| {
                    let mut view = self.rule_view(key, *bits, &names_cache);
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
            // The typed state first; the view is only its output.
            let state = ContainerState {
                cgroup: cg.cloned(),
                policy_id: *id,
                // A removed cgroup lingers in the kernel while the link holds it.
                link: LinkState::of(cg.is_some(), link.is_live_for(*id)),
                program_id: link.info.prog_id,
                entries: by_id.remove(id).unwrap_or_default(),
            };
            let pod = crate::audit::names::pod_of(&pods, *id, cg.map(|c| c.path.as_path()));
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
                cgroup_id: link.info.cgroup_id,
                program_id: state.program_id,
                link_id: link.info.id,
                state: state.link,
                layout: if shared_ids.contains(&link.info.prog_id) {
                    Layout::Shared
                } else {
                    Layout::PerContainer
                },
                link_pin: link.pin,
                rules: rule_views(&state.entries),
                stats: stats.get(id).copied().unwrap_or_default(),
                other_programs: match cg {
                    Some(g) => device_programs_cached(&self.cgroups, g, &names, &attached_at)
                        .map(|all| {
                            all.into_iter()
                                .filter(|p| !p.is_own(link.info.prog_id, &g.path))
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
