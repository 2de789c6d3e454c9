//! The audit views: what `ctdev list` prints and `list --json` serialises
//! (format version 1). Output only: no operation reads a view back.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::audit::drift::Drift;
use crate::kernel::attached::DeviceProgram;
use crate::kernel::counters::Stats;
use crate::ops::LinkState;
use crate::rule::{Access, DevNumber, DeviceType, Rule};
use crate::runtimes;

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

impl RuleView {
    /// The view of `rule` with the host nodes it covers, no hits and no
    /// CDI source yet (`list` adds those).
    pub fn of(rule: &Rule, devices: Vec<String>) -> Self {
        RuleView {
            rule: rule.to_string(),
            dev_type: rule.dev_type,
            major: rule.major,
            minor: rule.minor,
            access: rule.access,
            devices,
            hits: 0,
            cdi: Vec::new(),
        }
    }
}

/// Which program layout enforces a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Its own program instance and maps (`tables/`, `counters/`).
    PerContainer,
    /// The shared program (`shared-*/`), its policy in cgroup storage.
    Shared,
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
    /// `per_container` or `shared`: which program the link attaches.
    pub layout: Layout,
    /// `enforcing`; `detached` when the program is off but the pin is left
    /// (an interrupted detach: run `ctdev detach` again); or `defunct` when
    /// the cgroup was removed (detach with `id:N`).
    pub state: LinkState,
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

/// A value serialised as `serde_json` orders it through its `Value` tree
/// (object keys sorted): for the small, rare parts of the dump (drift, pod,
/// CDI sources, other programs, devices passed in), so the whole document
/// stays byte-identical to the one built through a `Value` tree.
struct AsValue<'a, T>(&'a T);

impl<T: Serialize> Serialize for AsValue<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_value(self.0)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

/// [`RuleView`] with its keys in sorted order.
#[derive(Serialize)]
struct SortedRule<'a> {
    access: &'a Access,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cdi: &'a Vec<String>,
    devices: &'a [String],
    hits: u64,
    major: &'a DevNumber,
    minor: &'a DevNumber,
    rule: &'a str,
    #[serde(rename = "type")]
    dev_type: &'a DeviceType,
}

impl<'a> From<&'a RuleView> for SortedRule<'a> {
    fn from(r: &'a RuleView) -> Self {
        SortedRule {
            access: &r.access,
            cdi: &r.cdi,
            devices: &r.devices,
            hits: r.hits,
            major: &r.major,
            minor: &r.minor,
            rule: &r.rule,
            dev_type: &r.dev_type,
        }
    }
}

/// Rules serialised one by one (no copy of the list).
struct SortedRules<'a>(&'a [RuleView]);

impl Serialize for SortedRules<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(SortedRule::from))
    }
}

/// [`ContainerView`] (its statistics flattened, and the devices passed in)
/// with its keys in sorted order.
#[derive(Serialize)]
struct SortedContainer<'a, P: Serialize> {
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_value")]
    cdi: &'a Vec<crate::cdi::apply::CdiSource>,
    cgroup: &'a Option<PathBuf>,
    cgroup_dir: &'a Option<PathBuf>,
    cgroup_id: u64,
    denied: u64,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_value")]
    drift: &'a Option<Drift>,
    events: u64,
    events_dropped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    former_cgroup: &'a Option<PathBuf>,
    layout: Layout,
    link_id: u32,
    link_pin: &'a PathBuf,
    #[serde(serialize_with = "as_value")]
    other_programs: &'a Vec<DeviceProgram>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_value")]
    passed_in: Option<&'a Vec<P>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_value")]
    pod: &'a Option<runtimes::k8s::PodContainer>,
    policy_id: u64,
    program_id: u32,
    rules: SortedRules<'a>,
    state: LinkState,
}

fn as_value<T: Serialize, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    AsValue(v).serialize(s)
}

/// [`OrphanView`] (keys already in order).
#[derive(Serialize)]
struct SortedOrphan<'a> {
    policy_id: u64,
    rules: SortedRules<'a>,
}

/// [`MapView`] with its keys in sorted order.
#[derive(Serialize)]
struct SortedMap<'a> {
    capacity: u32,
    entries: usize,
    map_id: u32,
    pin: &'a PathBuf,
}

/// [`Dump`] with its keys in sorted order.
#[derive(Serialize)]
struct SortedDump<'a, P: Serialize> {
    #[serde(serialize_with = "containers")]
    containers: (&'a [ContainerView], &'a BTreeMap<u64, Vec<P>>),
    foreign_pins: &'a [PathBuf],
    #[serde(serialize_with = "orphans")]
    orphaned: &'a [OrphanView],
    pin_root: &'a PathBuf,
    policy_map: Option<SortedMap<'a>>,
    problems: &'a [String],
    version: u32,
}

fn containers<P: Serialize, S: serde::Serializer>(
    (all, passed): &(&[ContainerView], &BTreeMap<u64, Vec<P>>),
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(all.iter().map(|c| SortedContainer {
        cdi: &c.cdi,
        cgroup: &c.cgroup,
        cgroup_dir: &c.cgroup_dir,
        cgroup_id: c.cgroup_id,
        denied: c.stats.denied,
        drift: &c.drift,
        events: c.stats.events,
        events_dropped: c.stats.events_dropped,
        former_cgroup: &c.former_cgroup,
        layout: c.layout,
        link_id: c.link_id,
        link_pin: &c.link_pin,
        other_programs: &c.other_programs,
        passed_in: passed.get(&c.policy_id),
        pod: &c.pod,
        policy_id: c.policy_id,
        program_id: c.program_id,
        rules: SortedRules(&c.rules),
        state: c.state,
    }))
}

fn orphans<S: serde::Serializer>(all: &&[OrphanView], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(all.iter().map(|o| SortedOrphan {
        policy_id: o.policy_id,
        rules: SortedRules(&o.rules),
    }))
}

/// Writes `ctdev list --json`'s document (pretty-printed, no trailing
/// newline) straight from the typed views, streaming to `out`: `passed`
/// adds each container's devices passed in (`passed_in`, by policy id;
/// absent when none). The bytes are those of the document built through a
/// `serde_json::Value` tree ([`dump_json_via_value`], object keys sorted),
/// which cost most of `list` at 10,000 containers.
pub fn write_dump_json<P: Serialize>(
    dump: &Dump,
    passed: &BTreeMap<u64, Vec<P>>,
    out: &mut Vec<u8>,
) -> serde_json::Result<()> {
    let doc = SortedDump {
        containers: (&dump.containers, passed),
        foreign_pins: &dump.foreign_pins,
        orphaned: &dump.orphaned,
        pin_root: &dump.pin_root,
        policy_map: dump.policy_map.as_ref().map(|m| SortedMap {
            capacity: m.capacity,
            entries: m.entries,
            map_id: m.map_id,
            pin: &m.pin,
        }),
        problems: &dump.problems,
        version: dump.version,
    };
    serde_json::to_writer_pretty(crate::fsio::ShortWrites(out), &doc)
}

/// The same document built through a `serde_json::Value` tree (how `list
/// --json` wrote it before [`write_dump_json`]): the reference the tests
/// compare with.
pub fn dump_json_via_value<P: Serialize>(
    dump: &Dump,
    passed: &BTreeMap<u64, Vec<P>>,
) -> serde_json::Result<String> {
    let mut v = serde_json::to_value(dump)?;
    if let Some(cs) = v["containers"].as_array_mut() {
        for c in cs {
            let id = c["policy_id"].as_u64().unwrap_or_default();
            if let Some(p) = passed.get(&id) {
                c["passed_in"] = serde_json::to_value(p)?;
            }
        }
    }
    serde_json::to_string_pretty(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::attached::Owner;

    fn rule(text: &str, hits: u64, devices: &[&str], cdi: &[&str]) -> RuleView {
        let r = match crate::rule::RuleSpec::parse(text).unwrap() {
            crate::rule::RuleSpec::Numbers(r) => r,
            _ => unreachable!(),
        };
        let mut v = RuleView::of(&r, devices.iter().map(|d| d.to_string()).collect());
        v.hits = hits;
        v.cdi = cdi.iter().map(|d| d.to_string()).collect();
        v
    }

    fn container(id: u64, rules: Vec<RuleView>) -> ContainerView {
        ContainerView {
            policy_id: id,
            cgroup: Some(PathBuf::from(format!("/c{id}"))),
            cgroup_dir: Some(PathBuf::from(format!("/sys/fs/cgroup/c{id}"))),
            cgroup_id: id,
            program_id: 7,
            link_id: 9,
            link_pin: PathBuf::from(format!("/sys/fs/bpf/ctdev/links/{id}")),
            layout: Layout::Shared,
            state: LinkState::Enforcing,
            rules,
            stats: Stats {
                denied: id,
                events: 2,
                events_dropped: 1,
            },
            other_programs: Vec::new(),
            drift: None,
            pod: None,
            former_cgroup: None,
            cdi: Vec::new(),
        }
    }

    /// A dump with every optional part present somewhere.
    fn full_dump() -> (Dump, BTreeMap<u64, Vec<serde_json::Value>>) {
        let mut a = container(
            11,
            vec![
                rule("c 1:3 rwm", 5, &["/dev/null"], &[]),
                rule("c 10:* r", 0, &[], &["vendor.com/class=x"]),
                rule("b *:* m", u64::MAX, &["/dev/sda", "/dev/\"q\""], &[]),
            ],
        );
        a.other_programs = vec![DeviceProgram {
            id: 3,
            name: "sd_devices".into(),
            attached_at: PathBuf::from("/"),
            owner: Owner::Systemd,
        }];
        a.drift = Some(Drift {
            init_pid: Some(42),
            nodes_without_rule: vec![crate::audit::drift::NodeView {
                path: PathBuf::from("/dev/x"),
                device: "c 1:5".into(),
            }],
            rules_without_node: vec!["c 9:9 rw".into()],
            error: None,
        });
        a.pod = Some(
            serde_json::from_value(serde_json::json!({
                "namespace": "ns", "pod": "p", "pod_uid": "u", "container": "c",
                "container_id": "0123456789abcdef", "cgroup": "/k/p", "policy_id": 11
            }))
            .unwrap(),
        );
        a.cdi = vec![crate::cdi::apply::CdiSource {
            name: "vendor.com/class=x".into(),
            file: PathBuf::from("/etc/cdi/x.json"),
            nodes: vec![PathBuf::from("/dev/x")],
            mounts: Vec::new(),
            netdevs: vec!["eth1".into()],
        }];
        let mut b = container(12, Vec::new());
        b.cgroup = None;
        b.cgroup_dir = None;
        b.state = LinkState::Defunct;
        b.layout = Layout::PerContainer;
        b.former_cgroup = Some(PathBuf::from("/gone"));
        let dump = Dump {
            version: 1,
            pin_root: PathBuf::from("/sys/fs/bpf/ctdev"),
            policy_map: Some(MapView {
                pin: PathBuf::from("/sys/fs/bpf/ctdev/CTDEV_POLICY"),
                map_id: 4,
                entries: 3,
                capacity: 65536,
            }),
            containers: vec![a, b, container(13, vec![rule("c 5:1 w", 1, &[], &[])])],
            orphaned: vec![OrphanView {
                policy_id: 99,
                rules: vec![rule("c 4:* rw", 0, &["/dev/tty1"], &[])],
            }],
            foreign_pins: vec![PathBuf::from("/sys/fs/bpf/ctdev/odd")],
            problems: vec!["a \\ problem\n".into()],
        };
        let passed = BTreeMap::from([(
            11,
            vec![serde_json::json!({"host": "/dev/ttyUSB0", "dest": "/dev/ttyUSB0", "by": "cli"})],
        )]);
        (dump, passed)
    }

    fn streamed<P: Serialize>(dump: &Dump, passed: &BTreeMap<u64, Vec<P>>) -> String {
        let mut out = Vec::new();
        write_dump_json(dump, passed, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn streamed_json_is_the_value_tree_json_byte_for_byte() {
        let (dump, passed) = full_dump();
        assert_eq!(
            streamed(&dump, &passed),
            dump_json_via_value(&dump, &passed).unwrap()
        );
        // And with nothing passed in, no map, nothing orphaned.
        let empty: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
        let mut bare = dump.clone();
        bare.policy_map = None;
        bare.orphaned.clear();
        bare.containers.truncate(1);
        assert_eq!(
            streamed(&bare, &empty),
            dump_json_via_value(&bare, &empty).unwrap()
        );
    }

    #[test]
    fn streamed_json_matches_for_odd_names_and_large_numbers() {
        let names = [
            "",
            "\\",
            "\"",
            "\u{0}\u{1f}\u{7f}",
            "é/ü",
            "\u{1F600}",
            "a\tb\r\n",
            "</script>",
        ];
        let nums = [0, 1, u32::MAX as u64, i64::MAX as u64, u64::MAX];
        for (i, n) in names.iter().enumerate() {
            let (mut dump, passed) = full_dump();
            let x = nums[i % nums.len()];
            for c in &mut dump.containers {
                c.cgroup = Some(PathBuf::from(n));
                c.stats.denied = x;
                for r in &mut c.rules {
                    r.devices.push(n.to_string());
                    r.hits = x;
                }
            }
            dump.problems = vec![n.to_string()];
            assert_eq!(
                streamed(&dump, &passed),
                dump_json_via_value(&dump, &passed).unwrap(),
                "{n:?}"
            );
        }
    }
}
