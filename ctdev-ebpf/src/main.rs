//! ctdev's cgroup/dev program.
//!
//! One program instance per container: the same instructions, loaded once
//! per container with its own two small maps (`CTDEV_TABLE`, the
//! container's rule table; `CTDEV_COUNTERS`, its per-CPU counters). Both are
//! single-element arrays, so the verifier inlines their lookups: deciding
//! an access costs no helper call, only reading one bucket of the
//! container's small hash table per match kind (see
//! `ctdev_common::table_lookup`). A policy larger than
//! the table (`TABLE_CAP` entries) lives in the shared hash map
//! `CTDEV_POLICY` instead, keyed by (policy id, device, generation).
//!
//! The table has two generations and a publication word (`state`): the
//! program reads the word, decides from that generation, and re-reads the
//! word; a change means a writer may have rewritten what it read, so it
//! decides again. Every decision is made entirely from one published rule
//! set, which is what makes whole-policy swaps (`ctdev set`) atomic.
//!
//! Besides deciding, it counts: allowed accesses per table entry
//! (`CTDEV_COUNTERS`; `CTDEV_HITS` for large policies), denials per
//! container, and it reports each denial in the `CTDEV_EVENTS` ring buffer,
//! rate-limited per container and CPU so a looping container cannot flood
//! the host; what the limit drops is counted, never silently lost.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated as gen},
    macros::{btf_map, cgroup_device},
    programs::DeviceContext,
    Global,
};
#[allow(deprecated)]
use aya_ebpf::btf_maps::{CgroupStorage, PerCpuCgroupStorage};
use ctdev_common::{
    allows, evaluate, table_find, table_lookup, ContainerCounters, ContainerTable, DenyEvent, MatchKind,
    PolicyKey, PolicyValue, SharedTable, EVENTS_PER_SECOND_PER_CPU, EVENTS_RING_BYTES, FOUND, NO_MATCH,
    POLICY_MAP_CAPACITY, READ_ATTEMPTS, SCOPE_DEFER_CAPACITY, SCOPE_POLICY_CAPACITY, STATE_LARGE,
    STATE_WRITTEN, TABLE_CAP,
};

/// Bench only (`cargo xtask bench`, "What the fast path costs"): the
/// object built with `CTDEV_EBPF_STEP=N` returns 1 after step N of the
/// shared program's allowed path, so that the kernel's run time of each
/// step can be measured ([`step`]). Unset (every build users run): 0, and
/// every `step(..)` test is a constant `false` the compiler removes.
const STEP: u32 = match option_env!("CTDEV_EBPF_STEP") {
    Some(s) => parse_step(s.as_bytes()),
    None => 0,
};

/// The fast-path steps [`STEP`] can stop after (the xtask names them).
mod steps {
    /// Nothing read but the access: the program is allow-all.
    pub const RETURN: u32 = 1;
    /// + the storage helper (`bpf_get_local_storage` of the table).
    pub const STORAGE: u32 = 2;
    /// + the table's state word.
    pub const STATE: u32 = 3;
    /// + the exact entry's probe (an allowing entry returns 1, uncounted).
    pub const PROBE: u32 = 4;
    /// + the counters' helper, nothing incremented.
    pub const COUNTER_PTR: u32 = 5;
    /// Only a per-CPU hit counter (the helper and the increment), no table:
    /// the shared program.
    pub const COUNTER_ONLY: u32 = 6;
    /// Only a per-CPU hit counter, no table: the per-container program
    /// (an inlined per-CPU array lookup, no helper call).
    pub const PC_COUNTER_ONLY: u32 = 7;
}

/// Whether the bench build stops at `at` (always false for users' builds).
#[inline(always)]
const fn step(at: u32) -> bool {
    STEP == at
}

const fn parse_step(s: &[u8]) -> u32 {
    match s {
        [d @ b'0'..=b'9'] => (*d - b'0') as u32,
        _ => panic!("CTDEV_EBPF_STEP must be one digit"),
    }
}

/// BPF_F_NO_PREALLOC: memory grows with the rules actually stored.
const NO_PREALLOC: usize = 1;
/// BPF_F_MMAPABLE: userspace writes the table through a shared mapping.
const MMAPABLE: usize = 1 << 10;
const NS_PER_SEC: u64 = 1_000_000_000;

/// This container's rule table (replaced by the container's own map at load).
#[btf_map]
static CTDEV_TABLE: Array<ContainerTable, 1, MMAPABLE> = Array::new();

/// This container's per-CPU counters (replaced by the container's own map at load).
#[btf_map]
static CTDEV_COUNTERS: PerCpuArray<ContainerCounters, 1> = PerCpuArray::new();

/// Entries of large policies (more than `TABLE_CAP`), keyed by
/// (policy id, type, major, minor, generation).
#[btf_map]
static CTDEV_POLICY: HashMap<PolicyKey, PolicyValue, { POLICY_MAP_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

/// Allowed accesses per entry of large policies, per CPU.
#[btf_map]
static CTDEV_HITS: PerCpuHashMap<PolicyKey, u64, { POLICY_MAP_CAPACITY as usize }, NO_PREALLOC> =
    PerCpuHashMap::new();

/// Denial events for `ctdev monitor`.
#[btf_map]
static CTDEV_EVENTS: RingBuf<DenyEvent, { EVENTS_RING_BYTES as usize }> = RingBuf::new();

/// The large-policy lookup (shared hash map, generation in the key), in
/// the shape of [`table_lookup`]: `(FOUND | bits, 0, kind)` or `(0, 0, NO_MATCH)`.
#[inline(always)]
fn large_lookup(policy_id: u64, generation: u32, dev_type: u32, major: u32, minor: u32) -> (u32, u32, u32) {
    let verdict = evaluate(policy_id, dev_type, major, minor, 0, |key| {
        let mut k = *key;
        k._pad = generation;
        // SAFETY: the value is copied out immediately; no reference is kept.
        unsafe { CTDEV_POLICY.get(&k) }.map(|v| v.access)
    });
    match verdict.matched {
        Some((kind, bits)) => (FOUND | bits, 0, kind as u32),
        None => (0, 0, NO_MATCH),
    }
}

#[cgroup_device]
pub fn ctdev_device(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_cgroup_dev_ctx for the program's lifetime.
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let requested = dev.access_type >> 16;
    if step(steps::PC_COUNTER_ONLY) {
        if let Some(counters) = CTDEV_COUNTERS.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array; migration is disabled.
            unsafe { (*counters).hits[0] += 1 };
        }
        return 1;
    }
    let Some(table) = CTDEV_TABLE.get(0) else {
        return 0;
    };
    let policy_id = table.policy_id;
    // What decided, as plain integers the verifier sees as unknown values
    // (never as constants it would have to tell apart): the entry's bits
    // with FOUND, its hit counter, its MatchKind; and the state it came from.
    let mut found = (0, 0, NO_MATCH);
    let mut state = 0;
    let mut stable = false;
    let mut attempt = 0;
    while attempt < READ_ATTEMPTS {
        // SAFETY: an aligned u32 inside the map value; volatile so that the
        // two reads of the publication word are real loads around the search.
        let before = unsafe { core::ptr::read_volatile(&table.state) };
        found = if before & STATE_LARGE != 0 {
            large_lookup(policy_id, before & 1, dev_type, dev.major, dev.minor)
        } else {
            table_lookup(&table.tables[(before & 1) as usize], dev_type, dev.major, dev.minor)
        };
        // SAFETY: as above.
        let after = unsafe { core::ptr::read_volatile(&table.state) };
        if before == after {
            state = before;
            stable = true;
            break;
        }
        attempt += 1;
    }
    let Some(counters) = CTDEV_COUNTERS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot of a per-CPU array; the program runs with migration disabled.
    let counters = unsafe { &mut *counters };
    #[cfg(feature = "log")]
    aya_log_ebpf::debug!(
        &ctx,
        "ctdev policy {} type {} {}:{} access {} -> {}",
        policy_id,
        dev_type,
        dev.major,
        dev.minor,
        requested,
        (stable && allows(found.0, requested)) as u32
    );
    conclude(counters, policy_id, state, stable, found, dev_type, dev.major, dev.minor, requested)
}

// ---- the shared program --------------------------------------------------------
//
// One program for every container, loaded and verified once: the container's
// policy and counters are its cgroup local storage (allocated zero-filled by
// the kernel when the program is attached to the container's cgroup, freed
// with the cgroup). Userspace replaces the whole table in one map update
// (the kernel swaps the buffer), so one read of the state word decides from
// one published policy. A storage userspace never wrote (no STATE_WRITTEN)
// denies everything.

/// Each container's [`SharedTable`] (userspace creates the map with a
/// `u64` key, the cgroup id, and relocates this program against it).
#[allow(deprecated)]
#[btf_map]
static CTDEV_STORAGE: CgroupStorage<SharedTable> = CgroupStorage::new();

/// Each container's per-CPU counters.
#[allow(deprecated)]
#[btf_map]
static CTDEV_STORAGE_CNT: PerCpuCgroupStorage<ContainerCounters> = PerCpuCgroupStorage::new();

#[cgroup_device]
pub fn ctdev_shared(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_cgroup_dev_ctx for the program's lifetime.
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let requested = dev.access_type >> 16;
    if step(steps::RETURN) {
        return 1;
    }
    if step(steps::COUNTER_ONLY) {
        #[allow(deprecated)]
        let counters = CTDEV_STORAGE_CNT.get_ptr_mut();
        if !counters.is_null() {
            // SAFETY: this CPU's slot of the per-CPU storage; migration is disabled.
            unsafe { (*counters).hits[0] += 1 };
        }
        return 1;
    }
    #[allow(deprecated)]
    let table = CTDEV_STORAGE.get_ptr_mut();
    if table.is_null() {
        return 0;
    }
    if step(steps::STORAGE) {
        return 1;
    }
    // SAFETY: the helper returns the attached cgroup's storage, valid for
    // this run (a concurrent update swaps in a new buffer; this one is
    // freed only after an RCU grace period).
    let table: &SharedTable = unsafe { &*table };
    // The fast path: a written table whose exact entry for the device
    // allows the access (the first probe of `table_lookup`, which decides
    // alone when it finds an entry). Only then the counters; no spills, no
    // denial bookkeeping on this path: it is most accesses of a container,
    // and each instruction and helper call of it shows in the check cost.
    // Everything else (no exact entry, an exact entry that denies,
    // unwritten storage, large policies) decides in `shared_slow`, from
    // the same buffer, exactly as before.
    let state = table.state;
    if step(steps::STATE) && state & STATE_WRITTEN != 0 {
        return 1;
    }
    if state & (STATE_WRITTEN | STATE_LARGE) == STATE_WRITTEN {
        let exact = MatchKind::Exact.key(0, dev_type, dev.major, dev.minor);
        if let Some((bits, hit)) = table_find(&table.table, &exact) {
            if allows(FOUND | bits, requested) {
                if step(steps::PROBE) {
                    return 1;
                }
                #[allow(deprecated)]
                let counters = CTDEV_STORAGE_CNT.get_ptr_mut();
                if counters.is_null() {
                    return 0;
                }
                if step(steps::COUNTER_PTR) {
                    return 1;
                }
                // SAFETY: this CPU's slot of the per-CPU storage; migration is disabled.
                let counters = unsafe { &mut *counters };
                counters.hits[(hit as usize) & (TABLE_CAP - 1)] += 1;
                return 1;
            }
        }
    }
    shared_slow(table, dev_type, dev.major, dev.minor, requested)
}

/// The rest of `ctdev_shared`'s decisions. Inlined: as a BPF subprogram
/// (`#[inline(never)]`) the allowed path cost the same but a denial cost
/// the call, +15–20 ns.
#[inline(always)]
fn shared_slow(table: &SharedTable, dev_type: u32, major: u32, minor: u32, requested: u32) -> i32 {
    #[allow(deprecated)]
    let counters = CTDEV_STORAGE_CNT.get_ptr_mut();
    if counters.is_null() {
        return 0;
    }
    // SAFETY: this CPU's slot of the per-CPU storage; migration is disabled.
    let counters = unsafe { &mut *counters };
    let state = table.state;
    let policy_id = table.policy_id;
    let mut stable = true;
    let found = if state & STATE_WRITTEN == 0 {
        (0, 0, NO_MATCH)
    } else if state & STATE_LARGE != 0 {
        let found = large_lookup(policy_id, state & 1, dev_type, major, minor);
        // Large policies live in the shared hash map, where a whole-policy
        // swap deletes the old generation after publishing the new one:
        // re-read the (possibly new) storage and deny if it moved on.
        #[allow(deprecated)]
        let now = CTDEV_STORAGE.get_ptr_mut();
        // SAFETY: as above.
        if now.is_null() || unsafe { core::ptr::read_volatile(&(*now).state) } != state {
            stable = false;
        }
        found
    } else {
        table_lookup(&table.table, dev_type, major, minor)
    };
    conclude(counters, policy_id, state, stable, found, dev_type, major, minor, requested)
}

/// The end of every decision (both programs): an allowed access counts a
/// hit on the entry that allowed it; anything else (denied, or a policy
/// that moved on while it was read) is counted and reported as a denial.
/// One call site per program: the verifier walks the report once per
/// distinct state.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conclude(
    counters: &mut ContainerCounters,
    policy_id: u64,
    state: u32,
    stable: bool,
    found: (u32, u32, u32),
    dev_type: u32,
    major: u32,
    minor: u32,
    requested: u32,
) -> i32 {
    let (value, hit, kind) = found;
    if stable && allows(value, requested) {
        if state & STATE_LARGE != 0 {
            let kind = match kind {
                0 => MatchKind::Exact,
                1 => MatchKind::AnyMinor,
                2 => MatchKind::AnyMajor,
                _ => MatchKind::Any,
            };
            count_large_hit(&kind.key(policy_id, dev_type, major, minor));
        } else {
            counters.hits[(hit as usize) & (TABLE_CAP - 1)] += 1;
        }
        return 1;
    }
    let (kind, bits) = if stable {
        (kind, value & (FOUND - 1))
    } else {
        counters.stats.unstable += 1;
        (NO_MATCH, 0)
    };
    report_denial(counters, policy_id, dev_type, major, minor, requested, kind, bits);
    0
}

#[inline(always)]
fn count_large_hit(key: &PolicyKey) {
    match CTDEV_HITS.get_ptr_mut(key) {
        // SAFETY: per-CPU slot of this CPU; the program runs with migration disabled.
        Some(hits) => unsafe { *hits += 1 },
        None => {
            let _ = CTDEV_HITS.insert(key, 1u64, 0);
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn report_denial(
    counters: &mut ContainerCounters,
    policy_id: u64,
    dev_type: u32,
    major: u32,
    minor: u32,
    access: u32,
    kind: u32,
    bits: u32,
) {
    let stats = &mut counters.stats;
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
    // The event is written in place in the ring buffer: no copy on the
    // stack, no memset (whose byte loop the verifier would walk per path).
    let Some(mut entry) = CTDEV_EVENTS.reserve(0) else {
        stats.dropped += 1;
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, writable DenyEvent in the ring
    // buffer; every field is written before the entry is submitted.
    unsafe {
        (*event).policy_id = policy_id;
        (*event).cgroup_id = gen::bpf_get_current_cgroup_id();
        (*event).ktime_ns = now;
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).dev_type = dev_type;
        (*event).major = major;
        (*event).minor = minor;
        (*event).access = access;
        (*event).matched_kind = kind;
        (*event).matched_access = bits;
        // The helper zero-fills the buffer when it fails.
        gen::bpf_get_current_comm(core::ptr::addr_of_mut!((*event).comm).cast(), 16);
    }
    entry.submit(0);
    stats.events += 1;
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

/// The cgroup depth of the containers a scope program instance serves (the
/// scope's children); set at load time by ctdev. Only the scope program
/// reads it.
#[no_mangle]
static CTDEV_LEVEL: Global<u32> = Global::new(0);

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
