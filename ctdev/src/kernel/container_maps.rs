//! A container's own maps: its rule table (`CTDEV_TABLE`, one mmapable
//! array element holding two generations of a sorted table and the word
//! that publishes one of them) and its per-CPU counters (`CTDEV_COUNTERS`).
//! Both are created at attach and pinned at `<root>/tables/<policy id>` and
//! `<root>/counters/<policy id>`; the container's program instance uses
//! them, and userspace writes the table through a shared mapping.
//!
//! Writers hold the pin-root lock. A write fills the generation that is not
//! live and then publishes it with one aligned 4-byte store of the state
//! word (see `ctdev_common::ContainerTable`): the program decides every
//! access from one published generation, old or new, never a mix.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use aya::maps::{Map, MapData, PerCpuArray};
use ctdev_common::{
    ContainerCounters, ContainerTable, SharedTable, Table, STATE_LARGE, STATE_WRITTEN,
};

use super::pins::PinRoot;
use super::shared::SharedProgram;
use super::sys::{self, SysError};
use aya_obj::generated as uapi;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    /// The rest of `union bpf_attr` for this command, zero (u32s: no padding).
    _rest: [u32; 16],
}
sys::assert_attr!(MapCreateAttr);
sys::assert_abi! {
    MapCreateAttr, size 108,
    like uapi::bpf_attr__bindgen_ty_1: [
        map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node,
        map_name,
    ]
}

fn create_map(ty: u32, value_size: usize, flags: u32, name: &str) -> Result<OwnedFd, SysError> {
    create_map_with(ty, 4, value_size, 1, flags, name)
}

/// `BPF_MAP_CREATE` of a map of type `ty` (the shared program's cgroup
/// storage maps use it too: 8-byte key, no entries of their own).
pub(crate) fn create_map_with(
    ty: u32,
    key_size: u32,
    value_size: usize,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> Result<OwnedFd, SysError> {
    let mut map_name = [0u8; 16];
    map_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let mut attr = MapCreateAttr {
        map_type: ty,
        key_size,
        value_size: value_size as u32,
        max_entries,
        map_flags: flags,
        map_name,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_MAP_CREATE prefix (no pointers, no fds);
    // BPF_MAP_CREATE returns a new map fd.
    unsafe { sys::bpf_fd(BPF_MAP_CREATE, &mut attr) }.map_err(|source| SysError {
        call: "BPF_MAP_CREATE",
        what: name.to_string(),
        source,
    })
}

/// A one-element array map (4-byte key, `value_size`-byte value) that is
/// not ctdev's: the tests plant one where ctdev expects its own.
#[cfg(feature = "test-support")]
pub fn create_foreign_array(value_size: usize, name: &str) -> Result<OwnedFd, SysError> {
    create_map(BPF_MAP_TYPE_ARRAY, value_size, 0, name)
}

/// Why a container's maps could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ContainerMapsError {
    /// A bpf syscall failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// Mapping the table failed.
    #[error("cannot map the rule table {path}: {source}")]
    Mmap {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pin is not a ctdev container table.
    #[error("{path} is not a ctdev container table ({found}); refusing to use it")]
    Foreign {
        path: PathBuf,
        /// What was found.
        found: String,
    },
    /// The container's cgroup storage (shared program) could not be used.
    #[error(transparent)]
    Storage(Box<super::shared::SharedError>),
    /// The counters could not be read.
    #[error("counters {path}: {source}")]
    Counters {
        path: PathBuf,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// The shared mapping of a container's table.
struct Mapping {
    ptr: NonNull<ContainerTable>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; access goes through atomics
// for the state word and is serialised by the pin-root lock for writes.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A consistent copy of a container's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The state word it was published under.
    pub state: u32,
    /// The live generation's table (meaningless when `large`).
    pub table: Table,
}

impl Snapshot {
    /// Whether the policy lives in the shared hash map.
    pub fn large(&self) -> bool {
        self.state & STATE_LARGE != 0
    }

    /// The live generation (0 or 1).
    pub fn generation(&self) -> u32 {
        self.state & 1
    }
}

/// A container's own table and counters (the per-container program's maps), opened.
struct ArrayMaps {
    /// The container's policy id.
    pub policy_id: u64,
    table_fd: OwnedFd,
    counters_fd: OwnedFd,
    counters: PerCpuArray<MapData, ContainerCounters>,
    map: Mapping,
    table_pin: PathBuf,
}

impl std::fmt::Debug for ArrayMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrayMaps")
            .field("policy_id", &self.policy_id)
            .field("table_pin", &self.table_pin)
            .finish()
    }
}

fn map_len() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    std::mem::size_of::<ContainerTable>().div_ceil(page) * page
}

fn mmap_table(fd: BorrowedFd<'_>, pin: &Path) -> Result<Mapping, ContainerMapsError> {
    let len = map_len();
    // SAFETY: a new shared mapping of the map's value area; the kernel
    // checks the length and the map's BPF_F_MMAPABLE flag.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(ContainerMapsError::Mmap {
            path: pin.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(Mapping {
        ptr: NonNull::new(ptr.cast()).ok_or_else(|| ContainerMapsError::Mmap {
            path: pin.to_path_buf(),
            source: std::io::Error::other("mmap returned NULL"),
        })?,
        len,
    })
}

fn open_counters(
    fd: OwnedFd,
    pin: &Path,
) -> Result<PerCpuArray<MapData, ContainerCounters>, ContainerMapsError> {
    let err = |source| ContainerMapsError::Counters {
        path: pin.to_path_buf(),
        source,
    };
    let data = MapData::from_fd(fd).map_err(err)?;
    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(err)
}

fn check_pin(
    pin: &Path,
    ty: aya::maps::MapType,
    value_size: usize,
) -> Result<(), ContainerMapsError> {
    let foreign = |found: String| ContainerMapsError::Foreign {
        path: pin.to_path_buf(),
        found,
    };
    let info = aya::maps::MapInfo::from_pin(pin).map_err(|e| foreign(e.to_string()))?;
    let found = info.map_type().map_err(|e| foreign(e.to_string()))?;
    if found != ty || info.value_size() as usize != value_size || info.max_entries() != 1 {
        return Err(foreign(format!(
            "{found:?} with {}-byte values and {} entries",
            info.value_size(),
            info.max_entries()
        )));
    }
    Ok(())
}

impl ArrayMaps {
    /// Creates and pins the maps of `policy_id` (an empty, small policy).
    /// Whatever was pinned for that id before is replaced.
    fn create(pins: &PinRoot, policy_id: u64) -> Result<Self, ContainerMapsError> {
        let table_fd = create_map(
            BPF_MAP_TYPE_ARRAY,
            std::mem::size_of::<ContainerTable>(),
            BPF_F_MMAPABLE,
            "ctdev_table",
        )?;
        let counters_fd = create_map(
            BPF_MAP_TYPE_PERCPU_ARRAY,
            std::mem::size_of::<ContainerCounters>(),
            0,
            "ctdev_counters",
        )?;
        let table_pin = pins.table(policy_id);
        let map = mmap_table(table_fd.as_fd(), &table_pin)?;
        // SAFETY: the mapping covers one ContainerTable, zeroed by the kernel;
        // nothing else knows the map yet.
        unsafe { (*map.ptr.as_ptr()).policy_id = policy_id };
        for (fd, pin) in [
            (table_fd.as_fd(), &table_pin),
            (counters_fd.as_fd(), &pins.counters(policy_id)),
        ] {
            let _ = std::fs::remove_file(pin);
            sys::obj_pin(fd, pin)?;
        }
        let counters = open_counters(
            counters_fd.try_clone().map_err(|e| SysError {
                call: "dup",
                what: "ctdev_counters".into(),
                source: e,
            })?,
            &pins.counters(policy_id),
        )?;
        Ok(Self {
            policy_id,
            table_fd,
            counters_fd,
            counters,
            map,
            table_pin,
        })
    }

    /// Opens the pinned maps of `policy_id`; `None` when there are none.
    fn open(pins: &PinRoot, policy_id: u64) -> Result<Option<Self>, ContainerMapsError> {
        let table_pin = pins.table(policy_id);
        let counters_pin = pins.counters(policy_id);
        if std::fs::symlink_metadata(&table_pin).is_err() {
            return Ok(None);
        }
        check_pin(
            &table_pin,
            aya::maps::MapType::Array,
            std::mem::size_of::<ContainerTable>(),
        )?;
        check_pin(
            &counters_pin,
            aya::maps::MapType::PerCpuArray,
            std::mem::size_of::<ContainerCounters>(),
        )?;
        let table_fd = sys::obj_get(&table_pin)?;
        let counters_fd = sys::obj_get(&counters_pin)?;
        let map = mmap_table(table_fd.as_fd(), &table_pin)?;
        let counters = open_counters(
            counters_fd.try_clone().map_err(|e| SysError {
                call: "dup",
                what: counters_pin.display().to_string(),
                source: e,
            })?,
            &counters_pin,
        )?;
        Ok(Some(Self {
            policy_id,
            table_fd,
            counters_fd,
            counters,
            map,
            table_pin,
        }))
    }

    /// Removes the pins of `policy_id` (the maps live on while a program
    /// still uses them).
    fn unpin(pins: &PinRoot, policy_id: u64) -> std::io::Result<()> {
        for pin in [pins.table(policy_id), pins.counters(policy_id)] {
            match std::fs::remove_file(&pin) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The table map's fd (for loading the program instance).
    fn table_fd(&self) -> BorrowedFd<'_> {
        self.table_fd.as_fd()
    }

    /// The counters map's fd (for loading the program instance).
    fn counters_fd(&self) -> BorrowedFd<'_> {
        self.counters_fd.as_fd()
    }

    fn state_word(&self) -> &AtomicU32 {
        // SAFETY: `state` is the first, 8-aligned u32 of the mapped value;
        // AtomicU32 has u32's layout. The mapping lives as long as self.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.map.ptr.as_ptr()).state)) }
    }

    /// A consistent copy of the live table (retries while a writer publishes).
    fn snapshot(&self) -> Snapshot {
        loop {
            let state = self.state_word().load(Ordering::Acquire);
            // SAFETY: reading plain integers from the mapping; a concurrent
            // writer can only touch the other generation, and a publish in
            // between is detected by re-reading the state word below.
            let table = unsafe {
                std::ptr::read_volatile(std::ptr::addr_of!(
                    (*self.map.ptr.as_ptr()).tables[(state & 1) as usize]
                ))
            };
            fence(Ordering::Acquire);
            if self.state_word().load(Ordering::Relaxed) == state {
                return Snapshot { state, table };
            }
        }
    }

    /// Counter baselines (denied, events, dropped) at the last reset.
    fn stats_base(&self) -> [u64; 3] {
        // SAFETY: plain integers in the mapping, written only under the lock.
        unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*self.map.ptr.as_ptr()).stats_base)) }
    }

    /// Sets the counter baselines (caller holds the pin-root lock).
    fn set_stats_base(&self, base: [u64; 3]) {
        // SAFETY: as above; only userspace reads these fields.
        unsafe {
            std::ptr::write_volatile(
                std::ptr::addr_of_mut!((*self.map.ptr.as_ptr()).stats_base),
                base,
            )
        }
    }

    /// Writes `table` into the generation that is not live. Nothing the
    /// program reads changes until [`ContainerMaps::publish`].
    fn write_next(&self, table: &Table) {
        let next = (self.state_word().load(Ordering::Acquire) & 1) ^ 1;
        // SAFETY: the generation that is not live is read by no decision
        // that will be kept (readers of an older publication re-check the
        // state word); writers are serialised by the pin-root lock.
        unsafe {
            std::ptr::write_volatile(
                std::ptr::addr_of_mut!((*self.map.ptr.as_ptr()).tables[next as usize]),
                *table,
            )
        };
    }

    /// Publishes the generation that is not live, in table mode (`large`
    /// false) or hash mode: one store of the state word. Returns the new state.
    fn publish(&self, large: bool) -> u32 {
        let old = self.state_word().load(Ordering::Acquire);
        let counter = (old & !STATE_LARGE).wrapping_add(1) & !STATE_LARGE;
        let new = counter | if large { STATE_LARGE } else { 0 };
        self.state_word().store(new, Ordering::Release);
        new
    }

    /// Per-CPU counters summed over CPUs.
    fn counters(&self) -> Result<ContainerCounters, ContainerMapsError> {
        let values = self
            .counters
            .get(&0, 0)
            .map_err(|source| ContainerMapsError::Counters {
                path: self.table_pin.clone(),
                source,
            })?;
        let mut total = ContainerCounters::ZERO;
        for cpu in values.iter() {
            total.add(cpu);
        }
        Ok(total)
    }
}

/// A container's table and counters: its own maps (the per-container
/// program) or its cgroup local storage (the shared program,
/// [`super::shared`]).
pub struct ContainerMaps {
    /// The container's policy id.
    pub policy_id: u64,
    inner: Inner,
}

enum Inner {
    Array(ArrayMaps),
    Storage {
        shared: std::sync::Arc<SharedProgram>,
        /// The stored value as read at open (or as last written through
        /// this handle): the table part changes only through ctdev's own
        /// writes, under the pin-root lock the caller holds, so one lookup
        /// serves the snapshot, the baselines and the next publish.
        stored: Box<std::cell::Cell<SharedTable>>,
        /// The table [`ContainerMaps::write_next`] staged for the publish.
        pending: std::cell::Cell<Option<Box<Table>>>,
    },
}

impl std::fmt::Debug for ContainerMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Array(a) => format!("{a:?}"),
            Inner::Storage { shared, .. } => format!("storage in {}", shared.dir().display()),
        };
        f.debug_struct("ContainerMaps")
            .field("policy_id", &self.policy_id)
            .field("maps", &kind)
            .finish()
    }
}

/// The state bits a shared-program publish keeps as flags (the rest
/// counts publishes; bit 0 is the large-mode generation).
const FLAG_BITS: u32 = STATE_LARGE | STATE_WRITTEN;

impl ContainerMaps {
    /// Creates and pins the per-container maps of `policy_id` (an empty,
    /// small policy). Whatever was pinned for that id before is replaced.
    pub fn create(pins: &PinRoot, policy_id: u64) -> Result<Self, ContainerMapsError> {
        Ok(Self {
            policy_id,
            inner: Inner::Array(ArrayMaps::create(pins, policy_id)?),
        })
    }

    /// Opens the maps of `policy_id`: its own pinned maps, else its written
    /// cgroup storage of a shared program; `None` when there are neither.
    pub fn open(pins: &PinRoot, policy_id: u64) -> Result<Option<Self>, ContainerMapsError> {
        Self::open_hinted(pins, policy_id, None)
    }

    /// [`ContainerMaps::open`] trying first `hint`, the shared program in
    /// whose storage this policy was found before (one lookup, where
    /// finding it lists the pin root and checks every shared program's
    /// pin): used when its storage still holds a written policy of
    /// `policy_id`, else the search runs as without a hint.
    pub(crate) fn open_hinted(
        pins: &PinRoot,
        policy_id: u64,
        hint: Option<&std::sync::Arc<SharedProgram>>,
    ) -> Result<Option<Self>, ContainerMapsError> {
        if let Some(a) = ArrayMaps::open(pins, policy_id)? {
            return Ok(Some(Self {
                policy_id,
                inner: Inner::Array(a),
            }));
        }
        let hinted = match hint {
            Some(p) => p
                .read_written(policy_id)
                .map_err(storage_err)?
                .map(|t| (p.clone(), t)),
            None => None,
        };
        let shared = match hinted {
            Some(found) => Some(found),
            None => super::shared::find_written(pins, policy_id).map_err(storage_err)?,
        };
        Ok(shared.map(|(shared, stored)| Self {
            policy_id,
            inner: Inner::Storage {
                shared,
                stored: Box::new(std::cell::Cell::new(stored)),
                pending: std::cell::Cell::new(None),
            },
        }))
    }

    /// The shared program whose storage holds this policy (`None` for
    /// per-container maps).
    pub(crate) fn shared(&self) -> Option<&std::sync::Arc<SharedProgram>> {
        match &self.inner {
            Inner::Array(_) => None,
            Inner::Storage { shared, .. } => Some(shared),
        }
    }

    /// Removes the pins of `policy_id` and clears its shared-program storage
    /// (which outlives a detach) so nothing of its policy is left.
    pub fn unpin(pins: &PinRoot, policy_id: u64) -> std::io::Result<()> {
        ArrayMaps::unpin(pins, policy_id)?;
        super::shared::clear(pins, policy_id).map_err(std::io::Error::other)
    }

    /// The table and counters map fds (for loading a per-container program
    /// instance); `None` for a container on the shared program.
    pub fn fds(&self) -> Option<(BorrowedFd<'_>, BorrowedFd<'_>)> {
        match &self.inner {
            Inner::Array(a) => Some((a.table_fd(), a.counters_fd())),
            Inner::Storage { .. } => None,
        }
    }

    /// A consistent copy of the live table.
    pub fn snapshot(&self) -> Snapshot {
        match &self.inner {
            Inner::Array(a) => a.snapshot(),
            Inner::Storage { stored, .. } => {
                let t = stored.get();
                Snapshot {
                    state: t.state,
                    table: t.table,
                }
            }
        }
    }

    /// Counter baselines (denied, events, dropped) at the last reset.
    pub fn stats_base(&self) -> [u64; 3] {
        match &self.inner {
            Inner::Array(a) => a.stats_base(),
            Inner::Storage { stored, .. } => stored.get().stats_base,
        }
    }

    /// Sets the counter baselines (caller holds the pin-root lock).
    pub fn set_stats_base(&self, base: [u64; 3]) {
        match &self.inner {
            Inner::Array(a) => a.set_stats_base(base),
            Inner::Storage { shared, stored, .. } => {
                let mut t = stored.get();
                if t.state & STATE_WRITTEN == 0 {
                    return;
                }
                t.stats_base = base;
                match shared.write(self.policy_id, &t) {
                    Ok(_) => stored.set(t),
                    Err(e) => {
                        tracing::warn!(policy_id = self.policy_id, "cannot reset counters: {e}")
                    }
                }
            }
        }
    }

    /// Writes `table` into the generation that is not live (per-container
    /// maps), or stages it for the publish (storage). Nothing the program
    /// reads changes until [`ContainerMaps::publish`].
    pub fn write_next(&self, table: &Table) {
        match &self.inner {
            Inner::Array(a) => a.write_next(table),
            Inner::Storage { pending, .. } => pending.set(Some(Box::new(*table))),
        }
    }

    /// Publishes what [`ContainerMaps::write_next`] wrote, in table mode
    /// (`large` false) or hash mode: one store of the state word, or one
    /// whole-value update of the storage. Returns the new state.
    pub fn publish(&self, large: bool) -> Result<u32, ContainerMapsError> {
        match &self.inner {
            Inner::Array(a) => Ok(a.publish(large)),
            Inner::Storage {
                shared,
                stored,
                pending,
            } => {
                let mut t = stored.get();
                if let Some(table) = pending.take() {
                    t.table = *table;
                }
                let counter = (t.state & !FLAG_BITS).wrapping_add(1) & !FLAG_BITS;
                t.state = counter | STATE_WRITTEN | if large { STATE_LARGE } else { 0 };
                t.policy_id = self.policy_id;
                shared.write(self.policy_id, &t).map_err(storage_err)?;
                stored.set(t);
                Ok(t.state)
            }
        }
    }

    /// Per-CPU counters summed over CPUs.
    pub fn counters(&self) -> Result<ContainerCounters, ContainerMapsError> {
        match &self.inner {
            Inner::Array(a) => a.counters(),
            Inner::Storage { shared, .. } => Ok(shared
                .counters(self.policy_id)
                .map_err(storage_err)?
                .unwrap_or(ContainerCounters {
                    hits: [0; ctdev_common::TABLE_CAP],
                    stats: Default::default(),
                })),
        }
    }
}

fn storage_err(e: super::shared::SharedError) -> ContainerMapsError {
    ContainerMapsError::Storage(Box::new(e))
}

/// Policy ids that have a table pin, or a written shared-program storage
/// (with or without its link pin, as a table pin is: a policy without a
/// link is reported as orphaned).
pub fn table_ids(pins: &PinRoot) -> std::io::Result<Vec<u64>> {
    let mut ids = array_ids(pins)?;
    ids.extend(super::shared::written_ids(pins).map_err(std::io::Error::other)?);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

pub(crate) fn array_ids(pins: &PinRoot) -> std::io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    match std::fs::read_dir(pins.tables_dir()) {
        Ok(entries) => {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                    ids.push(id);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    ids.sort_unstable();
    Ok(ids)
}
