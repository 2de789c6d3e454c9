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
/// Name of the per-container table map (one `BPF_MAP_TYPE_ARRAY` with a
/// single [`ContainerTable`] element, created per container and pinned at
/// `<root>/tables/<policy id>`).
pub const TABLE_MAP: &str = "CTDEV_TABLE";
/// Name of the per-container counters (one `BPF_MAP_TYPE_PERCPU_ARRAY`
/// element of [`ContainerCounters`], pinned at `<root>/counters/<policy id>`).
pub const COUNTERS_MAP: &str = "CTDEV_COUNTERS";
/// Name of the load-time constant holding the cgroup depth of the
/// containers a scope program instance serves (its scope's children).
pub const LEVEL_GLOBAL: &str = "CTDEV_LEVEL";
/// Name of the cgroup/dev program in the object file.
pub const PROGRAM_NAME: &str = "ctdev_device";
/// Capacity of the policy map (entries across all containers).
pub const POLICY_MAP_CAPACITY: u32 = 65_536;

/// Name of the per-CPU hit counters: allowed accesses per policy entry.
pub const HITS_MAP: &str = "CTDEV_HITS";
/// Name of the per-CPU per-container statistics of earlier ctdev versions
/// (kept so their pins are recognised and removed).
pub const STATS_MAP: &str = "CTDEV_STATS";
/// Name of the ring buffer of denial events.
pub const EVENTS_MAP: &str = "CTDEV_EVENTS";
/// Size of the denial-event ring buffer in bytes (a power of two, pages).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Capacity of the per-container statistics map of earlier ctdev versions.
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
    /// Accesses denied because the table kept changing under the program
    /// ([`READ_ATTEMPTS`] reads in a row saw a new generation).
    pub unstable: u64,
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

/// Entries a container's in-map table holds; a larger policy lives in the
/// shared hash map ([`POLICY_MAP`]) instead ("large mode"). A power of two.
pub const TABLE_CAP: usize = 128;
/// Buckets of a table generation (a power of two).
pub const BUCKETS: usize = 64;
/// Slots per bucket: a lookup reads at most this many entries.
pub const WAYS: usize = 4;
/// Slots of a table generation: `BUCKETS × WAYS`, twice [`TABLE_CAP`] so
/// that a seed placing every entry in its bucket is quickly found.
pub const SLOTS: usize = BUCKETS * WAYS;
/// Seeds [`build_table`] tries before it gives up (then the policy goes to
/// the shared hash map, like a policy over [`TABLE_CAP`] entries).
pub const MAX_SEEDS: u64 = 8192;
/// Bit of [`ContainerTable::state`]: the policy lives in the shared hash
/// map, under the generation in bit 0 (the key's `_pad` field).
pub const STATE_LARGE: u32 = 1 << 31;
/// How often the program re-reads a table that changed under it before it
/// gives up and denies (counted in [`ContainerStats::unstable`]).
pub const READ_ATTEMPTS: usize = 2;

/// One slot of a container's table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TableEntry {
    /// `major << 32 | minor` as the key stores them ([`WILDCARD`] for any).
    pub key: u64,
    /// [`DEV_BLOCK`] or [`DEV_CHAR`]; 0 marks an empty slot (a bucket is
    /// filled from its first slot, so an empty slot ends the bucket).
    pub dev_type: u16,
    /// Allowed access bits (0: a deny entry).
    pub access: u16,
    /// Index of this entry's hit counter in [`ContainerCounters::hits`]
    /// (stable for the entry's life, so counts survive table rewrites).
    pub hit: u32,
    /// The counter's total when the entry was created: hits = total − base.
    pub base: u64,
}

/// One generation of a container's rule table: a hash table with
/// [`BUCKETS`] buckets of [`WAYS`] slots, no overflow. Userspace picks a
/// `seed` under which every entry fits in its bucket ([`bucket_of`]), so
/// a lookup reads one bucket: no loop, no search, a few compares, and a
/// program the verifier walks in a few thousand instructions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// Hash seed of this generation.
    pub seed: u64,
    /// Entries stored.
    pub count: u32,
    /// Match kinds no entry of this table has, one bit per [`MatchKind`]
    /// (`1 << kind`): [`table_lookup`] skips their probes. Set by
    /// [`build_table`]; zero (a table written before this field existed,
    /// or by hand) probes every kind, as before.
    pub absent: u32,
    /// The slots, bucket after bucket.
    pub entries: [TableEntry; SLOTS],
}

impl Default for Table {
    fn default() -> Self {
        Self {
            seed: 0,
            count: 0,
            absent: 0,
            entries: [TableEntry::default(); SLOTS],
        }
    }
}

/// A container's policy as its program reads it: two generations of the
/// table and the word that says which one is live.
///
/// Writers (userspace, under the pin-root lock) fill the table that is
/// not live, then publish it by storing `state + 1` (one aligned 4-byte
/// store). The program reads `state`, decides from that generation, and
/// reads `state` again: if it changed, a writer may have rewritten the
/// table under it, so it decides again (at most [`READ_ATTEMPTS`] times).
/// Every decision is thus made entirely from one published generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerTable {
    /// Publication counter: bit 0 is the live generation, [`STATE_LARGE`]
    /// says the policy lives in the shared hash map.
    pub state: u32,
    /// Always zero.
    pub _pad: u32,
    /// The container's policy id (its cgroup id).
    pub policy_id: u64,
    /// Userspace only: counter totals at the last counter reset
    /// (denied, events, dropped).
    pub stats_base: [u64; 3],
    /// Userspace only: reserved, zero.
    pub _reserved: [u64; 3],
    /// The two generations.
    pub tables: [Table; 2],
}

/// Per-container, per-CPU counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerCounters {
    /// Allowed accesses per table entry (indexed by [`TableEntry::hit`]).
    pub hits: [u64; TABLE_CAP],
    /// Denials and events.
    pub stats: ContainerStats,
}

impl ContainerCounters {
    /// All counters zero.
    pub const ZERO: ContainerCounters = ContainerCounters {
        hits: [0; TABLE_CAP],
        stats: ContainerStats {
            denied: 0,
            events: 0,
            dropped: 0,
            window_start_ns: 0,
            window_events: 0,
            unstable: 0,
        },
    };

    /// Adds one CPU's counters (the rate-limit window is per CPU: not summed).
    pub fn add(&mut self, cpu: &ContainerCounters) {
        for (t, h) in self.hits.iter_mut().zip(cpu.hits.iter()) {
            *t += h;
        }
        self.stats.denied += cpu.stats.denied;
        self.stats.events += cpu.stats.events;
        self.stats.dropped += cpu.stats.dropped;
        self.stats.unstable += cpu.stats.unstable;
    }
}

// ---- the shared program (one verified program, state in cgroup storage) ----

/// Name of the shared cgroup/dev program in the object file: loaded and
/// verified once per pin root and ctdev build, attached to every container,
/// reading the container's [`SharedTable`] from cgroup local storage.
pub const SHARED_PROGRAM_NAME: &str = "ctdev_shared";
/// Name of the cgroup storage map (`BPF_MAP_TYPE_CGROUP_STORAGE`, keyed by
/// the cgroup id, a `u64`) holding each container's [`SharedTable`].
pub const STORAGE_MAP: &str = "CTDEV_STORAGE";
/// Name of the per-CPU cgroup storage map holding each container's
/// [`ContainerCounters`].
pub const STORAGE_COUNTERS_MAP: &str = "CTDEV_STORAGE_CNT";
/// Bit of [`SharedTable::state`]: userspace wrote this storage. The kernel
/// allocates a container's storage zero-filled at attach, so a storage
/// without it has no policy yet: the shared program denies everything.
pub const STATE_WRITTEN: u32 = 1 << 30;

/// A container's policy as the shared program reads it from cgroup local
/// storage. Userspace replaces the whole value in one `BPF_MAP_UPDATE_ELEM`
/// (the kernel copies it into a new buffer and swaps the pointer; a running
/// program keeps reading the buffer it got), so one table generation is
/// enough: every decision sees the old value or the new one, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SharedTable {
    /// [`STATE_WRITTEN`] once written; [`STATE_LARGE`] when the policy
    /// lives in the shared hash map under the generation in bit 0.
    pub state: u32,
    /// Always zero.
    pub _pad: u32,
    /// The container's policy id (its cgroup id).
    pub policy_id: u64,
    /// Userspace only: counter totals at the last counter reset
    /// (denied, events, dropped).
    pub stats_base: [u64; 3],
    /// Userspace only: reserved, zero.
    pub _reserved: [u64; 3],
    /// The rule table (meaningless in large mode).
    pub table: Table,
}

/// A stable 64-bit FNV-1a hash of an eBPF object: names the shared
/// program's pin directory (`shared-<hash>`). `const` so that ctdev's build
/// script hashes the embedded object once, at build time, with this very
/// function (hashing its ~170 KB at run time cost ~0.3 ms per process).
pub const fn object_hash(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut i = 0;
    while i < bytes.len() {
        h = (h ^ bytes[i] as u64).wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// The packed device numbers a table entry stores.
#[inline(always)]
pub const fn pack(major: u32, minor: u32) -> u64 {
    ((major as u64) << 32) | minor as u64
}

/// The bucket of `(dev_type, key)` under `seed` (multiply-shift hashing:
/// the top bits of one 64-bit product).
#[inline(always)]
pub const fn bucket_of(seed: u64, dev_type: u32, key: u64) -> usize {
    let x = (key ^ ((dev_type as u64) << 58) ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 58) as usize & (BUCKETS - 1)
}

/// Finds the entry stored under `key` in `table`: its access bits and
/// hit-counter index. This is the lookup [`evaluate`] runs over a
/// container's table, in the kernel and in tests. It reads one bucket,
/// stopping at the first empty slot.
#[inline(always)]
pub fn table_find(table: &Table, key: &PolicyKey) -> Option<(u32, u32)> {
    let want = pack(key.major, key.minor);
    let first = bucket_of(table.seed, key.dev_type, want) * WAYS;
    let mut way = 0;
    while way < WAYS {
        let e = &table.entries[(first + way) & (SLOTS - 1)];
        if e.dev_type == 0 {
            return None;
        }
        if e.key == want && e.dev_type as u32 == key.dev_type {
            // SAFETY: plain reads of fields of a valid reference. Volatile
            // keeps the reads here, on each probe's own path, so the
            // compiler cannot merge the paths into one that carries a
            // pointer with a different offset per probe (which the BPF
            // verifier would have to walk separately).
            let (access, hit) = unsafe {
                (
                    core::ptr::read_volatile(&e.access),
                    core::ptr::read_volatile(&e.hit),
                )
            };
            return Some((access as u32, hit & (TABLE_CAP as u32 - 1)));
        }
        way += 1;
    }
    None
}

/// Set in the first value [`table_lookup`] returns when an entry matched.
pub const FOUND: u32 = 1 << 16;

/// [`evaluate`]'s lookup order over a container's table, in the shape the
/// kernel program wants: `(FOUND | bits, hit index, MatchKind as u32)` of
/// the first entry found, or `(0, 0, NO_MATCH)`. [`allows`] then gives the
/// verdict. The result is plain integers loaded from the table, so the
/// verifier does not tell the paths that found an entry apart and walks
/// what follows once; the unit tests hold it to [`evaluate`].
///
/// Kinds in [`Table::absent`] are not probed: for real device numbers (no
/// [`WILDCARD`] among them) a probe of one kind can only find an entry of
/// that kind, so skipping a kind the table has no entry of changes no
/// verdict. Numbers equal to [`WILDCARD`] (never from the kernel) probe
/// every kind, so the result is [`evaluate`]'s for every input.
#[inline(always)]
pub fn table_lookup(table: &Table, dev_type: u32, major: u32, minor: u32) -> (u32, u32, u32) {
    // The exact probe first, unconditionally: the allowed path of a
    // device rule reads nothing else (the absent kinds' word included).
    let [first, rest @ ..] = LOOKUP_ORDER;
    if let Some((bits, hit)) = table_find(table, &first.key(0, dev_type, major, minor)) {
        return (FOUND | bits, hit, first as u32);
    }
    let absent = if major == WILDCARD || minor == WILDCARD {
        0
    } else {
        table.absent
    };
    for kind in rest {
        if absent & (1 << kind as u32) != 0 {
            continue;
        }
        if let Some((bits, hit)) = table_find(table, &kind.key(0, dev_type, major, minor)) {
            return (FOUND | bits, hit, kind as u32);
        }
    }
    (0, 0, NO_MATCH)
}

/// The verdict on a `requested` access from [`table_lookup`]'s first
/// value: an entry matched and holds every requested bit.
#[inline(always)]
pub const fn allows(found: u32, requested: u32) -> bool {
    found & FOUND != 0 && requested & !(found & (FOUND - 1)) == 0
}

/// One entry to put in a table: key (its policy id is ignored), access
/// bits, hit-counter index, counter base.
pub type TableItem = (PolicyKey, u32, u32, u64);

/// The [`MatchKind`] of a stored key: which probe of [`table_lookup`]
/// finds it (for real device numbers).
#[inline(always)]
pub const fn kind_of(major: u32, minor: u32) -> MatchKind {
    match (major == WILDCARD, minor == WILDCARD) {
        (false, false) => MatchKind::Exact,
        (false, true) => MatchKind::AnyMinor,
        (true, false) => MatchKind::AnyMajor,
        (true, true) => MatchKind::Any,
    }
}

/// Builds a table from `items` in any order (sorts them in place). `None`
/// when there are more than [`TABLE_CAP`] items, a key's type is neither
/// block nor char, access bits do not fit, or no seed among the first
/// [`MAX_SEEDS`] fits every item in its bucket (practically never at
/// [`TABLE_CAP`] items: each seed fits 128 items with a few percent odds);
/// duplicate keys must not be passed. The same items give the same table.
pub fn build_table(items: &mut [TableItem]) -> Option<Table> {
    if items.len() > TABLE_CAP {
        return None;
    }
    for (key, access, _, _) in items.iter() {
        if !matches!(key.dev_type, DEV_BLOCK | DEV_CHAR) || *access > u16::MAX as u32 {
            return None;
        }
    }
    items.sort_unstable_by_key(|it| (it.0.dev_type, pack(it.0.major, it.0.minor)));
    let present = items.iter().fold(0u32, |m, it| {
        m | 1 << kind_of(it.0.major, it.0.minor) as u32
    });
    'seeds: for attempt in 0..MAX_SEEDS {
        let seed = attempt.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let mut table = Table {
            seed,
            count: items.len() as u32,
            absent: !present & 0xf,
            ..Table::default()
        };
        let mut fill = [0usize; BUCKETS];
        for (key, access, hit, base) in items.iter() {
            let k = pack(key.major, key.minor);
            let b = bucket_of(seed, key.dev_type, k);
            if fill[b] == WAYS {
                continue 'seeds;
            }
            table.entries[b * WAYS + fill[b]] = TableEntry {
                key: k,
                dev_type: key.dev_type as u16,
                access: *access as u16,
                hit: *hit,
                base: *base,
            };
            fill[b] += 1;
        }
        return Some(table);
    }
    None
}

/// The [`Table::absent`] mask of the entries `table` holds: the match kinds
/// no entry has (as [`build_table`] computes it).
fn absent_of(table: &Table) -> u32 {
    let present = table
        .entries
        .iter()
        .filter(|e| e.dev_type != 0)
        .fold(0u32, |m, e| {
            m | 1 << kind_of((e.key >> 32) as u32, e.key as u32) as u32
        });
    !present & 0xf
}

/// The slot holding `key` in `table` ([`table_find`]'s probe).
fn slot_of(table: &Table, key: &PolicyKey) -> Option<usize> {
    let want = pack(key.major, key.minor);
    let first = bucket_of(table.seed, key.dev_type, want) * WAYS;
    (first..first + WAYS)
        .take_while(|i| table.entries[*i].dev_type != 0)
        .find(|i| {
            let e = &table.entries[*i];
            e.key == want && e.dev_type as u32 == key.dev_type
        })
}

/// Whether `table` is a table [`build_table`] could have made for its own
/// entries under its seed (the order of entries within a bucket aside):
/// every entry of a valid type in the bucket of its seed, each bucket
/// filled from its first slot, no key twice, hit indices below
/// [`TABLE_CAP`] and used once, `count` the number of entries and `absent`
/// their missing kinds. Tables that are not are rebuilt, never edited in
/// place ([`table_update`], [`table_remove`], [`table_insert`]).
pub fn table_well_formed(table: &Table) -> bool {
    let mut count = 0usize;
    let mut hits = [false; TABLE_CAP];
    for bucket in 0..BUCKETS {
        let mut ended = false;
        for way in 0..WAYS {
            let e = &table.entries[bucket * WAYS + way];
            if e.dev_type == 0 {
                ended = true;
                continue;
            }
            if ended
                || !matches!(e.dev_type as u32, DEV_BLOCK | DEV_CHAR)
                || bucket_of(table.seed, e.dev_type as u32, e.key) != bucket
                || e.hit as usize >= TABLE_CAP
                || hits[e.hit as usize]
            {
                return false;
            }
            hits[e.hit as usize] = true;
            for other in &table.entries[bucket * WAYS..bucket * WAYS + way] {
                if other.key == e.key && other.dev_type == e.dev_type {
                    return false;
                }
            }
            count += 1;
        }
    }
    count == table.count as usize && table.absent == absent_of(table)
}

/// Sets the access bits of the entry stored under `key` (its hit index and
/// base stay). `false`, with nothing changed, when there is no such entry
/// or the bits do not fit.
pub fn table_update(table: &mut Table, key: &PolicyKey, access: u32) -> bool {
    match slot_of(table, key) {
        Some(i) if access <= u16::MAX as u32 => {
            table.entries[i].access = access as u16;
            true
        }
        _ => false,
    }
}

/// Removes the entry stored under `key`: the later entries of its bucket
/// move up one slot (a bucket stays filled from its first slot). `false`,
/// with nothing changed, when there is no such entry.
pub fn table_remove(table: &mut Table, key: &PolicyKey) -> bool {
    let Some(i) = slot_of(table, key) else {
        return false;
    };
    let end = i - i % WAYS + WAYS;
    table.entries.copy_within(i + 1..end, i);
    table.entries[end - 1] = TableEntry::default();
    table.count -= 1;
    table.absent = absent_of(table);
    true
}

/// Adds `item` (key, access bits, hit index, counter base) to the first
/// free slot of its bucket under the table's seed. `false`, with nothing
/// changed, when the bucket is full, the table holds [`TABLE_CAP`]
/// entries, the key is there already, or the item is one
/// [`build_table`] refuses (then the caller rebuilds with another seed).
pub fn table_insert(table: &mut Table, item: &TableItem) -> bool {
    let (key, access, hit, base) = *item;
    if table.count as usize >= TABLE_CAP
        || !matches!(key.dev_type, DEV_BLOCK | DEV_CHAR)
        || access > u16::MAX as u32
        || slot_of(table, &key).is_some()
    {
        return false;
    }
    let k = pack(key.major, key.minor);
    let first = bucket_of(table.seed, key.dev_type, k) * WAYS;
    let Some(i) = (first..first + WAYS).find(|i| table.entries[*i].dev_type == 0) else {
        return false;
    };
    table.entries[i] = TableEntry {
        key: k,
        dev_type: key.dev_type as u16,
        access: access as u16,
        hit,
        base,
    };
    table.count += 1;
    table.absent &= !(1 << kind_of(key.major, key.minor) as u32);
    true
}

/// The entries of a table, with their key fields restored.
pub fn table_items(table: &Table, policy_id: u64) -> impl Iterator<Item = TableItem> + '_ {
    table
        .entries
        .iter()
        .filter(|e| e.dev_type != 0)
        .map(move |e| {
            let key = PolicyKey::new(
                policy_id,
                e.dev_type as u32,
                (e.key >> 32) as u32,
                e.key as u32,
            );
            (key, e.access as u32, e.hit, e.base)
        })
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, integer fields only, no implicit padding.
    unsafe impl aya::Pod for super::ContainerCounters {}
    // SAFETY: `#[repr(C)]`, only integer fields, explicit padding: every bit
    // pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::PolicyKey {}
    // SAFETY: `#[repr(C)]` around a single u32.
    unsafe impl aya::Pod for super::PolicyValue {}
    // SAFETY: `#[repr(C)]`, u64 then u32 then u8 fields, 80 bytes, no padding.
    unsafe impl aya::Pod for super::DenyEvent {}
    // SAFETY: `#[repr(C)]`, only u64 fields.
    unsafe impl aya::Pod for super::ContainerStats {}
    // SAFETY: `#[repr(C)]`, integer fields and arrays of integer-only
    // structs with explicit padding fields: no implicit padding.
    unsafe impl aya::Pod for super::SharedTable {}
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
    fn shared_table_fits_cgroup_storage() {
        // 64-byte header and one 6,160-byte table: one 8 KiB kmalloc
        // buffer per container (cgroup storage allows up to ~64 KiB).
        assert_eq!(core::mem::size_of::<SharedTable>(), 6224);
        assert_eq!(core::mem::size_of::<ContainerCounters>(), 1072);
    }

    #[test]
    fn event_and_stats_layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<DenyEvent>(), 80);
        assert_eq!(core::mem::size_of::<ContainerStats>(), 48);
    }

    fn tabled(p: &BTreeMap<PolicyKey, u32>) -> Table {
        let mut items: std::vec::Vec<TableItem> = p
            .iter()
            .enumerate()
            .map(|(i, (k, a))| (*k, *a, i as u32, 0))
            .collect();
        build_table(&mut items).unwrap()
    }

    /// A small deterministic generator: `next(n)` is in `0..n`.
    fn xorshift(mut seed: u64) -> impl FnMut(u32) -> u32 {
        move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as u32
        }
    }

    /// The table lookup gives the verdicts of the map lookup, for every
    /// device and request, over many pseudo-random policies.
    #[test]
    fn table_search_decides_as_the_map() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let pick = |x: u32| if x == 0 { WILDCARD } else { x - 1 };
        for _ in 0..400 {
            let n = next(TABLE_CAP as u32 + 1) as usize;
            let mut p = BTreeMap::new();
            for _ in 0..n * 2 {
                if p.len() >= n {
                    break;
                }
                let t = 1 + next(2);
                p.insert(PolicyKey::new(7, t, pick(next(6)), pick(next(6))), next(8));
            }
            let table = tabled(&p);
            let back: BTreeMap<PolicyKey, u32> =
                table_items(&table, 7).map(|(k, a, _, _)| (k, a)).collect();
            assert_eq!(back, p);
            // The same table without its absent kinds (as written before
            // the field existed) probes every kind: same verdicts.
            let unmasked = Table { absent: 0, ..table };
            // Real numbers, and WILDCARD (never from the kernel, where a
            // probe could find an entry of another kind).
            let numbers = || (0..6).chain([WILDCARD]);
            for t in [0, DEV_BLOCK, DEV_CHAR, 3] {
                for ma in numbers() {
                    for mi in numbers() {
                        for req in 0..8 {
                            let want = decide(&p, t, ma, mi, req);
                            let got =
                                evaluate(7, t, ma, mi, req, |k| table_find(&table, k).map(|f| f.0));
                            assert_eq!(got, want, "{t} {ma}:{mi} {req} {p:?}");
                            let (v, hit, kind) = table_lookup(&table, t, ma, mi);
                            assert_eq!(table_lookup(&unmasked, t, ma, mi), (v, hit, kind));
                            assert_eq!(allows(v, req), want.allowed);
                            match want.matched {
                                Some((k, bits)) => {
                                    assert_eq!((kind, v & !FOUND), (k as u32, bits))
                                }
                                None => assert_eq!((v, kind), (0, NO_MATCH)),
                            }
                        }
                    }
                }
            }
        }
    }

    /// A full table (TABLE_CAP random entries, wildcards included) always
    /// finds a seed, and every entry is found again with its hit index.
    #[test]
    fn full_tables_always_fit() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut keys = std::collections::BTreeSet::new();
            while keys.len() < TABLE_CAP {
                let r = next();
                let major = if r % 9 == 0 {
                    WILDCARD
                } else {
                    (r >> 8) as u32 % 300
                };
                let minor = if r % 7 == 0 {
                    WILDCARD
                } else {
                    (r >> 24) as u32 % 300
                };
                keys.insert(PolicyKey::new(1, 1 + (r >> 40) as u32 % 2, major, minor));
            }
            let mut items: std::vec::Vec<TableItem> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (*k, (i % 8) as u32, i as u32, 0))
                .collect();
            let t = build_table(&mut items).expect("a seed fits 128 entries");
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(table_find(&t, k), Some(((i % 8) as u32, i as u32)));
            }
        }
    }

    /// Tables edited in place (update, remove, insert under the same seed)
    /// hold the same items as tables rebuilt from scratch, stay well
    /// formed, and decide every request as the map does.
    #[test]
    fn edited_tables_decide_as_rebuilt_ones() {
        let mut next = xorshift(0x1234_5678_9abc_def1u64);
        let pick = |x: u32| if x == 0 { WILDCARD } else { x - 1 };
        let mut inserted = 0;
        let mut full = 0;
        for _ in 0..200 {
            // Items as the policy map keeps them: key → (access, hit, base).
            let mut items: BTreeMap<PolicyKey, (u32, u32, u64)> = BTreeMap::new();
            let mut table = build_table(&mut []).unwrap();
            assert!(table_well_formed(&table));
            for step in 0..300u64 {
                let key = PolicyKey::new(7, 1 + next(2), pick(next(12)), pick(next(12)));
                let access = next(8);
                match next(3) {
                    0 => {
                        assert_eq!(table_remove(&mut table, &key), items.remove(&key).is_some());
                    }
                    1 if items.contains_key(&key) => {
                        assert!(table_update(&mut table, &key, access));
                        items.get_mut(&key).unwrap().0 = access;
                    }
                    _ if items.contains_key(&key) => {
                        assert!(!table_insert(&mut table, &(key, access, 0, 0)));
                    }
                    _ => {
                        let mut used = [false; TABLE_CAP];
                        for (_, hit, _) in items.values() {
                            used[*hit as usize] = true;
                        }
                        let Some(hit) = (0..TABLE_CAP).find(|i| !used[*i]) else {
                            assert!(!table_insert(&mut table, &(key, access, 0, step)));
                            continue;
                        };
                        let item = (key, access, hit as u32, step);
                        if table_insert(&mut table, &item) {
                            inserted += 1;
                        } else {
                            // Its bucket is full: rebuilt, as the policy map does.
                            full += 1;
                            let mut all: std::vec::Vec<TableItem> = items
                                .iter()
                                .map(|(k, (a, h, b))| (*k, *a, *h, *b))
                                .chain([item])
                                .collect();
                            table = build_table(&mut all).unwrap();
                        }
                        items.insert(key, (access, hit as u32, step));
                    }
                }
                assert!(table_well_formed(&table), "{table:?}");
                let back: BTreeMap<PolicyKey, (u32, u32, u64)> = table_items(&table, 7)
                    .map(|(k, a, h, b)| (k, (a, h, b)))
                    .collect();
                assert_eq!(back, items);
                // After every step (not only at the end of a round): the
                // key touched and a few others decide as the map does.
                let p: BTreeMap<PolicyKey, u32> = items.iter().map(|(k, v)| (*k, v.0)).collect();
                let mut asks = std::vec![(key.dev_type, key.major, key.minor)];
                for _ in 0..4 {
                    asks.push((1 + next(2), pick(next(12)), pick(next(12))));
                }
                for (t, ma, mi) in asks {
                    let got = table_lookup(&table, t, ma, mi);
                    for req in 0..8 {
                        assert_eq!(
                            allows(got.0, req),
                            decide(&p, t, ma, mi, req).allowed,
                            "step {step}: {t} {ma}:{mi} req {req}"
                        );
                    }
                }
            }
            let mut all: std::vec::Vec<TableItem> = items
                .iter()
                .map(|(k, (a, h, b))| (*k, *a, *h, *b))
                .collect();
            let rebuilt = build_table(&mut all).unwrap();
            assert_eq!(rebuilt.absent, table.absent);
            assert_eq!(rebuilt.count, table.count);
            let p: BTreeMap<PolicyKey, u32> = items.iter().map(|(k, v)| (*k, v.0)).collect();
            let numbers = || (0..11).chain([WILDCARD]);
            for t in [DEV_BLOCK, DEV_CHAR] {
                for ma in numbers() {
                    for mi in numbers() {
                        let want = table_lookup(&rebuilt, t, ma, mi);
                        assert_eq!(table_lookup(&table, t, ma, mi), want);
                        for req in 0..8 {
                            assert_eq!(allows(want.0, req), decide(&p, t, ma, mi, req).allowed);
                        }
                    }
                }
            }
        }
        assert!(
            inserted > 1000 && full > 0,
            "{inserted} inserted, {full} rebuilt"
        );
    }

    #[test]
    fn malformed_tables_are_not_edited() {
        let key = |mi| PolicyKey::new(1, DEV_CHAR, 1, mi);
        let mut items: std::vec::Vec<TableItem> =
            (0..10).map(|i| (key(i), ACCESS_READ, i, 0)).collect();
        let good = build_table(&mut items).unwrap();
        assert!(table_well_formed(&good));
        // Written before `absent` existed.
        assert!(!table_well_formed(&Table { absent: 0, ..good }));
        assert!(!table_well_formed(&Table::default()));
        assert!(!table_well_formed(&Table { count: 9, ..good }));
        // Another seed: entries outside their buckets.
        assert!(!table_well_formed(&Table {
            seed: good.seed ^ 1,
            ..good
        }));
        // A hit index used twice.
        let mut twice = good;
        let slots: std::vec::Vec<usize> = (0..SLOTS)
            .filter(|i| good.entries[*i].dev_type != 0)
            .collect();
        twice.entries[slots[1]].hit = good.entries[slots[0]].hit;
        assert!(!table_well_formed(&twice));
        // A hit index past the counters.
        let mut past = good;
        past.entries[slots[0]].hit = TABLE_CAP as u32;
        assert!(!table_well_formed(&past));
        // Not a device type.
        let mut odd = good;
        odd.entries[slots[0]].dev_type = 3;
        assert!(!table_well_formed(&odd));
        // A hole in a bucket.
        let mut holed = good;
        let i = slots[0];
        holed.entries.copy_within(i..i + 1, i - i % WAYS + WAYS - 1);
        if i % WAYS != WAYS - 1 {
            holed.entries[i] = TableEntry::default();
            assert!(!table_well_formed(&holed));
        }
    }

    #[test]
    fn absent_kinds_are_the_kinds_without_entries() {
        let key = |ma, mi| (PolicyKey::new(1, DEV_CHAR, ma, mi), ACCESS_READ, 0, 0);
        let absent = |items: &mut [TableItem]| build_table(items).unwrap().absent;
        assert_eq!(absent(&mut []), 0b1111);
        assert_eq!(absent(&mut [key(1, 3)]), 0b1110);
        assert_eq!(absent(&mut [key(1, WILDCARD)]), 0b1101);
        assert_eq!(absent(&mut [key(WILDCARD, 3)]), 0b1011);
        assert_eq!(absent(&mut [key(WILDCARD, WILDCARD), key(1, 3)]), 0b0110);
        assert_eq!(Table::default().absent, 0);
    }

    #[test]
    fn table_refuses_more_than_its_capacity() {
        let mut items: std::vec::Vec<TableItem> = (0..=TABLE_CAP as u32)
            .map(|i| (PolicyKey::new(1, DEV_CHAR, 1, i), 1, 0, 0))
            .collect();
        assert!(build_table(&mut items).is_none());
        items.pop();
        let t = build_table(&mut items).unwrap();
        assert_eq!(t.count as usize, TABLE_CAP);
        assert_eq!(
            table_find(&t, &PolicyKey::new(1, DEV_CHAR, 1, 127))
                .unwrap()
                .0,
            1
        );
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
