//! ctdev's cgroup/dev program.
//!
//! One program instance per cgroup *depth* is loaded (and pinned), with that
//! depth baked in as a load-time constant; all instances share the pinned
//! maps. A container's policy id is its cgroup id, and a program attached to
//! a container's cgroup runs only for tasks in that cgroup or below it, so
//! the task's ancestor at the container's depth is the container's cgroup:
//! `bpf_get_current_ancestor_cgroup_id(depth)` gives the policy id, for
//! tasks in nested sub-cgroups too. Attaching another container at the same
//! depth reuses the same program: attaching is a link, not a program load.
//!
//! Besides deciding, it counts: allowed accesses per matched policy entry
//! (`CTDEV_HITS`), denials per container (`CTDEV_STATS`), and it reports each
//! denial in the `CTDEV_EVENTS` ring buffer, rate-limited per container and
//! CPU so a looping container cannot flood the host; what the limit drops is
//! counted, never silently lost.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuHashMap, RingBuf},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated as gen},
    macros::{btf_map, cgroup_device},
    programs::DeviceContext,
    Global,
};
use ctdev_common::{
    evaluate, ContainerStats, DenyEvent, PolicyKey, PolicyValue, EVENTS_PER_SECOND_PER_CPU,
    EVENTS_RING_BYTES, NO_MATCH, POLICY_MAP_CAPACITY, SCOPE_DEFER_CAPACITY,
    SCOPE_POLICY_CAPACITY, STATS_MAP_CAPACITY,
};

/// The cgroup depth (root = 0) of the containers this instance serves;
/// overridden at load time by ctdev.
#[no_mangle]
static CTDEV_LEVEL: Global<u32> = Global::new(0);

/// BPF_F_NO_PREALLOC: memory grows with the rules actually stored.
const NO_PREALLOC: usize = 1;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Allow entries of every container, keyed by (policy id, type, major, minor).
#[btf_map]
static CTDEV_POLICY: HashMap<PolicyKey, PolicyValue, { POLICY_MAP_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

/// Allowed accesses per policy entry, per CPU.
#[btf_map]
static CTDEV_HITS: PerCpuHashMap<PolicyKey, u64, { POLICY_MAP_CAPACITY as usize }, NO_PREALLOC> =
    PerCpuHashMap::new();

/// Denials and event accounting per container, per CPU.
#[btf_map]
static CTDEV_STATS: PerCpuHashMap<u64, ContainerStats, { STATS_MAP_CAPACITY as usize }, NO_PREALLOC> =
    PerCpuHashMap::new();

/// Denial events for `ctdev monitor`.
#[btf_map]
static CTDEV_EVENTS: RingBuf<DenyEvent, { EVENTS_RING_BYTES as usize }> = RingBuf::new();

#[cgroup_device]
pub fn ctdev_device(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_cgroup_dev_ctx for the program's lifetime.
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let requested = dev.access_type >> 16;
    // The container's cgroup: the task's ancestor at the container's depth
    // (0 if the task sits higher, which cannot happen for a task governed by
    // a program attached at that depth; no entry has id 0: deny).
    // SAFETY: helper call with a plain integer argument.
    let policy_id = unsafe { gen::bpf_get_current_ancestor_cgroup_id(CTDEV_LEVEL.load() as i32) };
    let verdict = evaluate(policy_id, dev_type, dev.major, dev.minor, requested, |key| {
        // SAFETY: the value is copied out immediately; no reference is kept.
        unsafe { CTDEV_POLICY.get(key) }.map(|v| v.access)
    });
    #[cfg(feature = "log")]
    aya_log_ebpf::debug!(
        &ctx,
        "ctdev policy {} type {} {}:{} access {} -> {}",
        policy_id,
        dev_type,
        dev.major,
        dev.minor,
        requested,
        verdict.allowed as u32
    );
    match verdict.matched {
        Some((kind, _)) if verdict.allowed => {
            count_hit(&kind.key(policy_id, dev_type, dev.major, dev.minor));
            1
        }
        matched => {
            let (kind, bits) = match matched {
                Some((k, b)) => (k as u32, b),
                None => (NO_MATCH, 0),
            };
            report_denial(policy_id, dev_type, dev.major, dev.minor, requested, kind, bits);
            0
        }
    }
}

#[inline(always)]
fn count_hit(key: &PolicyKey) {
    match CTDEV_HITS.get_ptr_mut(key) {
        // SAFETY: per-CPU slot of this CPU; the program runs with migration disabled.
        Some(hits) => unsafe { *hits += 1 },
        None => {
            let _ = CTDEV_HITS.insert(key, 1u64, 0);
        }
    }
}

#[inline(always)]
fn report_denial(policy_id: u64, dev_type: u32, major: u32, minor: u32, access: u32, kind: u32, bits: u32) {
    let stats = match CTDEV_STATS.get_ptr_mut(policy_id) {
        Some(s) => s,
        None => {
            let _ = CTDEV_STATS.insert(policy_id, ContainerStats::default(), 0);
            match CTDEV_STATS.get_ptr_mut(policy_id) {
                Some(s) => s,
                None => return,
            }
        }
    };
    // SAFETY: per-CPU slot of this CPU; the program runs with migration disabled.
    let stats = unsafe { &mut *stats };
    stats.denied += 1;
    // SAFETY: helper calls with no pointer arguments.
    let now = unsafe { gen::bpf_ktime_get_ns() };
    if now.wrapping_sub(stats.window_start_ns) >= NS_PER_SEC {
        stats.window_start_ns = now;
        stats.window_events = 0;
    }
    if stats.window_events >= EVENTS_PER_SECOND_PER_CPU {
        stats.dropped += 1;
        return;
    }
    stats.window_events += 1;
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let event = DenyEvent {
        policy_id,
        // SAFETY: helper call with no arguments.
        cgroup_id: unsafe { gen::bpf_get_current_cgroup_id() },
        ktime_ns: now,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        dev_type,
        major,
        minor,
        access,
        matched_kind: kind,
        matched_access: bits,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if CTDEV_EVENTS.output(&event, 0).is_ok() {
        stats.events += 1;
    } else {
        stats.dropped += 1;
    }
}

// ---- the scope program --------------------------------------------------------
//
// Attached (as a link, so in multi mode) to the parent cgroup of the
// containers a daemon policy selects. The kernel runs every device program
// from the task's cgroup up to the root and all must allow, so this program
// can only narrow. It covers a container from the moment its cgroup exists:
// for a task whose container (the child of the scope at CTDEV_LEVEL) has no
// policy of its own yet it applies the scope's default policy; once the
// container's own program is attached and verified the daemon marks the
// container in CTDEV_SCOPE_DEFER and this program allows, leaving the
// decision to the container's program alone (so it never narrows a
// container's own policy). The mark goes before the container's link does.

/// Default policies of managed scopes: keyed like CTDEV_POLICY, with the
/// scope cgroup's id as the policy id.
#[btf_map]
static CTDEV_SCOPE_POLICY: HashMap<PolicyKey, PolicyValue, { SCOPE_POLICY_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

/// Child cgroups a scope program defers for (their own policy is attached,
/// or they are not selected), by cgroup id.
#[btf_map]
static CTDEV_SCOPE_DEFER: HashMap<u64, u32, { SCOPE_DEFER_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

#[cgroup_device]
pub fn ctdev_scope(ctx: DeviceContext) -> i32 {
    // Here CTDEV_LEVEL is the depth of the containers (the scope's children).
    let level = CTDEV_LEVEL.load() as i32;
    // SAFETY: helper call with a plain integer argument.
    let container = unsafe { gen::bpf_get_current_ancestor_cgroup_id(level) };
    // A task in the scope cgroup itself: not a container.
    if container == 0 {
        return 1;
    }
    // SAFETY: only presence is read; no reference is kept.
    if unsafe { CTDEV_SCOPE_DEFER.get(&container) }.is_some() {
        return 1;
    }
    // SAFETY: the kernel passes a valid bpf_cgroup_dev_ctx for the program's lifetime.
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let requested = dev.access_type >> 16;
    // SAFETY: helper call with a plain integer argument.
    let scope = unsafe { gen::bpf_get_current_ancestor_cgroup_id(level - 1) };
    let verdict = evaluate(scope, dev_type, dev.major, dev.minor, requested, |key| {
        // SAFETY: the value is copied out immediately; no reference is kept.
        unsafe { CTDEV_SCOPE_POLICY.get(key) }.map(|v| v.access)
    });
    verdict.allowed as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
