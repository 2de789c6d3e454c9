//! Types and decision logic shared by the ctdev kernel program (`ctdev-ebpf`)
//! and userspace (`ctdev`).
//!
//! Everything the kernel and userspace must agree on lives here: the policy
//! map's key and value layout, the access and device-type bits (the kernel's
//! `BPF_DEVCG_*` values), the wildcard encoding, and [`evaluate`], the one
//! implementation of the lookup order. The kernel program calls [`evaluate`]
//! with a closure over the BPF map; userspace calls it over an in-memory copy
//! of the policy to explain and test verdicts, so the two cannot drift apart.
#![no_std]

/// Access bit: create a device node (`BPF_DEVCG_ACC_MKNOD`).
pub const ACCESS_MKNOD: u32 = 1;
/// Access bit: open for reading (`BPF_DEVCG_ACC_READ`).
pub const ACCESS_READ: u32 = 2;
/// Access bit: open for writing (`BPF_DEVCG_ACC_WRITE`).
pub const ACCESS_WRITE: u32 = 4;
/// All access bits (`rwm`).
pub const ACCESS_ALL: u32 = ACCESS_MKNOD | ACCESS_READ | ACCESS_WRITE;

/// Device type of a block device (`BPF_DEVCG_DEV_BLOCK`).
pub const DEV_BLOCK: u32 = 1;
/// Device type of a character device (`BPF_DEVCG_DEV_CHAR`).
pub const DEV_CHAR: u32 = 2;

/// Major or minor number meaning "any". Real numbers never reach it: the
/// kernel's majors are 12 bits and minors 20 bits wide.
pub const WILDCARD: u32 = u32::MAX;

/// Name of the shared policy map, in the object file and as its pin name.
pub const POLICY_MAP: &str = "CTDEV_POLICY";
/// Name of the load-time constant holding the cgroup depth a program
/// instance serves (the policy id is the task's ancestor at that depth).
pub const LEVEL_GLOBAL: &str = "CTDEV_LEVEL";
/// Name of the cgroup/dev program in the object file.
pub const PROGRAM_NAME: &str = "ctdev_device";
/// Capacity of the policy map (entries across all containers).
pub const POLICY_MAP_CAPACITY: u32 = 65_536;

/// Name of the per-CPU hit counters: allowed accesses per policy entry.
pub const HITS_MAP: &str = "CTDEV_HITS";
/// Name of the per-CPU per-container statistics (denials, events, drops).
pub const STATS_MAP: &str = "CTDEV_STATS";
/// Name of the ring buffer of denial events.
pub const EVENTS_MAP: &str = "CTDEV_EVENTS";
/// Size of the denial-event ring buffer in bytes (a power of two, pages).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Capacity of the per-container statistics map.
pub const STATS_MAP_CAPACITY: u32 = 16_384;
/// Rate limit of denial events: at most this many per container, per CPU,
/// per second. Denials beyond it are counted in [`ContainerStats::dropped`].
pub const EVENTS_PER_SECOND_PER_CPU: u64 = 64;
/// `matched_kind` of a [`DenyEvent`] when no policy entry matched.
pub const NO_MATCH: u32 = 4;

// ---- the scope program (fail-closed before a container's own policy) -------

/// Name of the scope program in the object file: attached to the parent of
/// the containers a daemon policy selects, it applies that parent's default
/// policy to every child cgroup that has no policy of its own yet.
pub const SCOPE_PROGRAM_NAME: &str = "ctdev_scope";
/// Name of the scope programs' default policies: keyed like [`POLICY_MAP`],
/// with the scope (parent) cgroup's id as the policy id.
pub const SCOPE_POLICY_MAP: &str = "CTDEV_SCOPE_POLICY";
/// Capacity of [`SCOPE_POLICY_MAP`].
pub const SCOPE_POLICY_CAPACITY: u32 = 4_096;
/// Name of the map of child cgroups a scope program defers for (cgroup id →
/// [`DEFER_OWN_POLICY`] or [`DEFER_NOT_SELECTED`]).
pub const SCOPE_DEFER_MAP: &str = "CTDEV_SCOPE_DEFER";
/// Capacity of [`SCOPE_DEFER_MAP`].
pub const SCOPE_DEFER_CAPACITY: u32 = 65_536;
/// The child has its own ctdev policy attached (written only after its link
/// is attached and verified, removed before that link is detached).
pub const DEFER_OWN_POLICY: u32 = 1;
/// The daemon found the child is not selected by any entry.
pub const DEFER_NOT_SELECTED: u32 = 2;

/// Key of one policy entry: which container, which device (possibly wildcarded).
///
/// The policy id is the cgroup id (inode number on cgroup2) of the cgroup the
/// container's program instance is attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Container policy id (the attached cgroup's id).
    pub policy_id: u64,
    /// [`DEV_BLOCK`] or [`DEV_CHAR`].
    pub dev_type: u32,
    /// Major number or [`WILDCARD`].
    pub major: u32,
    /// Minor number or [`WILDCARD`].
    pub minor: u32,
    /// Explicit padding, always zero, so the key has no uninitialised bytes.
    pub _pad: u32,
}

impl PolicyKey {
    /// Builds a key with zeroed padding.
    #[inline(always)]
    pub const fn new(policy_id: u64, dev_type: u32, major: u32, minor: u32) -> Self {
        Self {
            policy_id,
            dev_type,
            major,
            minor,
            _pad: 0,
        }
    }
}

/// Value of one policy entry: the access bits it allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// Bitwise OR of `ACCESS_*`; zero is a valid "deny" entry that narrows a wildcard.
    pub access: u32,
}

/// One denied device access, as the kernel program reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyEvent {
    /// Policy id of the container whose program denied it.
    pub policy_id: u64,
    /// cgroup id of the task (the container's cgroup or a sub-cgroup).
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` at the denial (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Real uid of the task (in the initial user namespace).
    pub uid: u32,
    /// Real gid of the task.
    pub gid: u32,
    /// [`DEV_BLOCK`] or [`DEV_CHAR`].
    pub dev_type: u32,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Requested `ACCESS_*` bits.
    pub access: u32,
    /// [`MatchKind`] of the entry that denied it, or [`NO_MATCH`].
    pub matched_kind: u32,
    /// Access bits of that entry (0 when none matched).
    pub matched_access: u32,
    /// The task's command name (`comm`), NUL-padded: the process may be
    /// gone by the time userspace reads the event.
    pub comm: [u8; 16],
}

/// Per-container, per-CPU statistics kept by the kernel program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ContainerStats {
    /// Accesses denied.
    pub denied: u64,
    /// Denial events written to the ring buffer.
    pub events: u64,
    /// Denial events not written (rate limit or full ring buffer).
    pub dropped: u64,
    /// Start of the current rate-limit window (ns, monotonic).
    pub window_start_ns: u64,
    /// Events emitted in the current window.
    pub window_events: u64,
}

/// Which of the four lookups decided a verdict, most specific first.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchKind {
    /// `(major, minor)`
    Exact = 0,
    /// `(major, *)`
    AnyMinor = 1,
    /// `(*, minor)`
    AnyMajor = 2,
    /// `(*, *)`
    Any = 3,
}

/// The lookup order: most specific first. The first entry found decides.
pub const LOOKUP_ORDER: [MatchKind; 4] = [
    MatchKind::Exact,
    MatchKind::AnyMinor,
    MatchKind::AnyMajor,
    MatchKind::Any,
];

impl MatchKind {
    /// The key to look up for this step of the lookup order.
    #[inline(always)]
    pub const fn key(self, policy_id: u64, dev_type: u32, major: u32, minor: u32) -> PolicyKey {
        match self {
            MatchKind::Exact => PolicyKey::new(policy_id, dev_type, major, minor),
            MatchKind::AnyMinor => PolicyKey::new(policy_id, dev_type, major, WILDCARD),
            MatchKind::AnyMajor => PolicyKey::new(policy_id, dev_type, WILDCARD, minor),
            MatchKind::Any => PolicyKey::new(policy_id, dev_type, WILDCARD, WILDCARD),
        }
    }
}

/// Outcome of evaluating one access request against a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether every requested bit is allowed.
    pub allowed: bool,
    /// The entry that decided, with its access bits; `None` means no entry (deny).
    pub matched: Option<(MatchKind, u32)>,
}

/// Decides one access request: the first entry found in [`LOOKUP_ORDER`]
/// decides, and it allows the request only if every requested bit is among
/// its bits (an empty request is allowed by any entry, as `access(F_OK)`
/// needs). No entry: deny.
///
/// `lookup` returns the access bits stored under a key, if any.
#[inline(always)]
pub fn evaluate<F>(
    policy_id: u64,
    dev_type: u32,
    major: u32,
    minor: u32,
    requested: u32,
    mut lookup: F,
) -> Verdict
where
    F: FnMut(&PolicyKey) -> Option<u32>,
{
    for kind in LOOKUP_ORDER {
        let key = kind.key(policy_id, dev_type, major, minor);
        if let Some(bits) = lookup(&key) {
            return Verdict {
                allowed: requested & !bits == 0,
                matched: Some((kind, bits)),
            };
        }
    }
    Verdict {
        allowed: false,
        matched: None,
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, only integer fields, explicit padding: every bit
    // pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::PolicyKey {}
    // SAFETY: `#[repr(C)]` around a single u32.
    unsafe impl aya::Pod for super::PolicyValue {}
    // SAFETY: `#[repr(C)]`, u64 then u32 then u8 fields, 80 bytes, no padding.
    unsafe impl aya::Pod for super::DenyEvent {}
    // SAFETY: `#[repr(C)]`, only u64 fields.
    unsafe impl aya::Pod for super::ContainerStats {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::BTreeMap;

    fn policy(entries: &[(u32, u32, u32, u32)]) -> BTreeMap<PolicyKey, u32> {
        entries
            .iter()
            .map(|&(t, ma, mi, a)| (PolicyKey::new(7, t, ma, mi), a))
            .collect()
    }

    fn decide(p: &BTreeMap<PolicyKey, u32>, t: u32, ma: u32, mi: u32, req: u32) -> Verdict {
        evaluate(7, t, ma, mi, req, |k| p.get(k).copied())
    }

    #[test]
    fn key_layout_is_24_bytes_without_implicit_padding() {
        assert_eq!(core::mem::size_of::<PolicyKey>(), 24);
        assert_eq!(core::mem::align_of::<PolicyKey>(), 8);
        assert_eq!(core::mem::size_of::<PolicyValue>(), 4);
    }

    #[test]
    fn event_and_stats_layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<DenyEvent>(), 80);
        assert_eq!(core::mem::size_of::<ContainerStats>(), 40);
    }

    #[test]
    fn no_entry_denies() {
        let p = policy(&[]);
        assert!(!decide(&p, DEV_CHAR, 1, 3, ACCESS_READ).allowed);
        assert_eq!(decide(&p, DEV_CHAR, 1, 3, ACCESS_READ).matched, None);
    }

    #[test]
    fn lookup_order_is_most_specific_first() {
        let p = policy(&[
            (DEV_CHAR, 10, 200, ACCESS_READ),
            (DEV_CHAR, 10, WILDCARD, ACCESS_WRITE),
            (DEV_CHAR, WILDCARD, 200, ACCESS_MKNOD),
            (DEV_CHAR, WILDCARD, WILDCARD, ACCESS_ALL),
        ]);
        assert_eq!(
            decide(&p, DEV_CHAR, 10, 200, 0).matched,
            Some((MatchKind::Exact, ACCESS_READ))
        );
        assert_eq!(
            decide(&p, DEV_CHAR, 10, 1, 0).matched,
            Some((MatchKind::AnyMinor, ACCESS_WRITE))
        );
        assert_eq!(
            decide(&p, DEV_CHAR, 11, 200, 0).matched,
            Some((MatchKind::AnyMajor, ACCESS_MKNOD))
        );
        assert_eq!(
            decide(&p, DEV_CHAR, 11, 1, 0).matched,
            Some((MatchKind::Any, ACCESS_ALL))
        );
    }

    #[test]
    fn specific_entry_with_fewer_bits_narrows_wildcard() {
        let p = policy(&[
            (DEV_CHAR, WILDCARD, WILDCARD, ACCESS_ALL),
            (DEV_CHAR, 10, 200, 0),
        ]);
        assert!(!decide(&p, DEV_CHAR, 10, 200, ACCESS_READ).allowed);
        assert!(decide(&p, DEV_CHAR, 10, 201, ACCESS_READ).allowed);
    }

    #[test]
    fn every_requested_bit_must_be_allowed() {
        let p = policy(&[(DEV_CHAR, 1, 3, ACCESS_READ)]);
        assert!(decide(&p, DEV_CHAR, 1, 3, ACCESS_READ).allowed);
        assert!(!decide(&p, DEV_CHAR, 1, 3, ACCESS_WRITE).allowed);
        assert!(!decide(&p, DEV_CHAR, 1, 3, ACCESS_READ | ACCESS_WRITE).allowed);
        assert!(!decide(&p, DEV_CHAR, 1, 3, ACCESS_MKNOD).allowed);
    }

    #[test]
    fn empty_request_is_allowed_by_any_entry_only() {
        // access(path, F_OK) reaches the program with no access bits (runc#2796).
        let p = policy(&[(DEV_CHAR, 1, 3, ACCESS_READ)]);
        assert!(decide(&p, DEV_CHAR, 1, 3, 0).allowed);
        assert!(!decide(&p, DEV_CHAR, 1, 5, 0).allowed);
    }

    #[test]
    fn types_and_policies_do_not_mix() {
        let p = policy(&[(DEV_BLOCK, WILDCARD, WILDCARD, ACCESS_ALL)]);
        assert!(!decide(&p, DEV_CHAR, 1, 3, ACCESS_READ).allowed);
        assert!(decide(&p, DEV_BLOCK, 8, 0, ACCESS_READ).allowed);
        let other = evaluate(8, DEV_BLOCK, 8, 0, ACCESS_READ, |k| p.get(k).copied());
        assert!(!other.allowed);
    }
}
