//! Every container's policy entries behind one typed view: validation of
//! the pins, reads, all-or-nothing batches of changes and atomic whole-set
//! replacement.
//!
//! Where entries live: a container with at most `TABLE_CAP` entries keeps
//! them in its own table map (see [`super::container_maps`]); a larger
//! policy lives in the shared hash map `CTDEV_POLICY`, its keys carrying
//! the live generation in their `_pad` field. Callers see neither: keys in
//! and out of this API always have `_pad` 0.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError, MapType};
use ctdev_common::{
    build_table, table_find, table_insert, table_items, table_remove, table_update,
    table_well_formed, PolicyKey, PolicyValue, TableItem, TABLE_CAP,
};

use super::container_maps::{ContainerMaps, ContainerMapsError, Snapshot};
use super::pins::PinRoot;
use super::shared::SharedProgram;
use super::sys;

/// Why the policy map could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyMapError {
    /// The pin does not exist.
    #[error("policy map {path} is not pinned: nothing is under ctdev policy in this pin root")]
    Missing {
        /// The pin path.
        path: PathBuf,
    },
    /// The pin exists but is not ctdev's policy map.
    #[error(
        "{path} is not ctdev's policy map ({found}); refusing to use it (remove it if it is stale)"
    )]
    Foreign {
        /// The pin path.
        path: PathBuf,
        /// What was found there.
        found: String,
    },
    /// A map operation failed.
    #[error("policy map {path}: {op} failed: {source}")]
    Op {
        /// The pin path.
        path: PathBuf,
        op: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// A batch read of the map failed.
    #[error("policy map {path}: {source}")]
    Batch {
        /// The pin path.
        path: PathBuf,
        /// The syscall error.
        #[source]
        source: sys::SysError,
    },
    /// A container's own maps could not be used.
    #[error(transparent)]
    Container(#[from] Box<ContainerMapsError>),
    /// The map has no room for more entries.
    #[error("policy map {path} is full ({capacity} entries): revoke unused rules or detach stale containers")]
    Full {
        /// The pin path.
        path: PathBuf,
        /// Its capacity.
        capacity: u32,
    },
}

/// Checks that the object pinned at `path` is a hash map with ctdev's key
/// and value sizes.
pub fn verify_pin(path: &Path) -> Result<aya::maps::MapInfo, PolicyMapError> {
    verify_map_pin(
        path,
        MapType::Hash,
        std::mem::size_of::<PolicyKey>(),
        std::mem::size_of::<PolicyValue>(),
    )
}

/// Checks that the object pinned at `path` is a map of type `want` with the
/// given key and value sizes: aya would reuse whatever object is pinned there.
pub fn verify_map_pin(
    path: &Path,
    want: MapType,
    key_size: usize,
    value_size: usize,
) -> Result<aya::maps::MapInfo, PolicyMapError> {
    let foreign = |found: String| PolicyMapError::Foreign {
        path: path.to_path_buf(),
        found,
    };
    let info = aya::maps::MapInfo::from_pin(path).map_err(|e| foreign(e.to_string()))?;
    let ty = info.map_type().map_err(|e| foreign(e.to_string()))?;
    let (k, v) = (info.key_size() as usize, info.value_size() as usize);
    if ty != want || k != key_size || v != value_size {
        return Err(foreign(format!(
            "{ty:?} with {k}-byte keys and {v}-byte values, expected {want:?} with {key_size} and {value_size}"
        )));
    }
    Ok(info)
}

/// Copies a plain-old-data value out of a byte slice of its exact size.
pub(crate) fn read_pod<T: aya::Pod>(bytes: &[u8]) -> T {
    debug_assert_eq!(bytes.len(), std::mem::size_of::<T>());
    // SAFETY: T is Pod (every bit pattern valid), `bytes` holds
    // size_of::<T>() bytes (chunks_exact), read_unaligned copes with alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// Whether a map error means "no such key" (aya reports a delete of a
/// missing key as a raw ENOENT, a lookup as `KeyNotFound`).
pub fn is_missing_key(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

impl From<ContainerMapsError> for PolicyMapError {
    fn from(e: ContainerMapsError) -> Self {
        PolicyMapError::Container(Box::new(e))
    }
}

/// The policy of all containers, opened for reading and writing.
pub struct PolicyMap {
    path: PathBuf,
    pins: PinRoot,
    /// Kernel id and capacity, read when first asked for (one bpf() call).
    info: std::cell::OnceCell<(u32, u32)>,
    map: HashMap<MapData, PolicyKey, PolicyValue>,
    /// A second fd on the map, for batch reads (aya does not expose its own).
    raw: OwnedFd,
    /// Entries read per container since the last write.
    cache: RefCell<BTreeMap<u64, BTreeMap<PolicyKey, u32>>>,
    /// The shared program each container's policy was found in (tried
    /// first by the next read of that container, see
    /// [`ContainerMaps::open_hinted`]).
    found_in: RefCell<BTreeMap<u64, std::sync::Arc<SharedProgram>>>,
}

/// Every container's policy and counters, read in one pass
/// ([`PolicyMap::read_all`]).
#[derive(Debug, Default)]
pub struct AllPolicies {
    /// Every entry of every container (and orphaned entries), sorted.
    pub entries: BTreeMap<PolicyKey, u32>,
    /// Allowed accesses per entry since its creation or the last reset.
    pub hits: BTreeMap<PolicyKey, u64>,
    /// Statistics per container (policy id).
    pub stats: BTreeMap<u64, super::counters::Stats>,
}

impl AllPolicies {
    /// Adds one container from its live table (published under `state`),
    /// counter totals and counter baselines; a large policy's generation
    /// goes to `large` (its entries are in the shared hash map). Borrowed,
    /// never moved: a table is 6 KB, and `list` of 10,000 containers copied
    /// each several times.
    fn add(
        &mut self,
        id: u64,
        state: u32,
        table: &ctdev_common::Table,
        totals: Option<&ctdev_common::ContainerCounters>,
        base: [u64; 3],
        large: &mut BTreeMap<u64, u32>,
    ) {
        let totals = totals.unwrap_or(&ctdev_common::ContainerCounters::ZERO);
        self.stats.insert(
            id,
            super::counters::Stats {
                denied: totals.stats.denied.saturating_sub(base[0]),
                events: totals.stats.events.saturating_sub(base[1]),
                events_dropped: totals.stats.dropped.saturating_sub(base[2]),
            },
        );
        if state & ctdev_common::STATE_LARGE != 0 {
            large.insert(id, state & 1);
            return;
        }
        for (key, access, hit, hit_base) in table_items(table, id) {
            self.entries.insert(key, access);
            let total = totals.hits[hit as usize % totals.hits.len()];
            self.hits.insert(key, total.saturating_sub(hit_base));
        }
    }
}

/// One planned change to an entry: the value to set, or removal.
pub type Change = (PolicyKey, Option<u32>);

/// What [`PolicyMap::edit`] made of a container's table.
enum Edit {
    /// The changes change nothing.
    Unchanged,
    /// The table with the changes made.
    Table(Box<ctdev_common::Table>),
    /// Not editable in place: built again from its entries.
    Rebuild,
}

/// Hit counter totals per table slot (`ContainerCounters::hits`).
type Totals = [u64; TABLE_CAP];

/// `table` with `changes` (in order: the last change of a key wins) made
/// in place, as [`build_items`] would assign them: a remaining entry keeps
/// its hit counter and base, a new one takes the lowest hit index no
/// remaining entry uses, based at that counter's total (`totals`, read
/// only when an entry is new). [`Edit::Rebuild`] when the table is not one
/// `build_table` could have made (`table_well_formed`), a new entry's
/// bucket is full under the table's seed, or the result would not fit a
/// table. Pure but for `totals`.
fn edit_table<E>(
    table: &ctdev_common::Table,
    changes: &[Change],
    totals: impl FnOnce() -> Result<Totals, E>,
) -> Result<Edit, E> {
    if !table_well_formed(table) {
        return Ok(Edit::Rebuild);
    }
    let mut net: BTreeMap<PolicyKey, Option<u32>> = BTreeMap::new();
    for (key, value) in changes {
        net.insert(*key, *value);
    }
    let mut table = *table;
    let mut changed = false;
    // Removals first: their hit indices are free for the new entries.
    for (key, value) in &net {
        if value.is_none() && table_remove(&mut table, key) {
            changed = true;
        }
    }
    let mut added: Vec<(PolicyKey, u32)> = Vec::new();
    for (key, value) in &net {
        let Some(access) = *value else { continue };
        match table_find(&table, key) {
            Some((now, _)) if now == access => {}
            Some(_) => {
                if !table_update(&mut table, key, access) {
                    return Ok(Edit::Rebuild);
                }
                changed = true;
            }
            None => added.push((*key, access)),
        }
    }
    if !added.is_empty() {
        if table.count as usize + added.len() > TABLE_CAP {
            return Ok(Edit::Rebuild);
        }
        let totals = totals()?;
        let mut used = [false; TABLE_CAP];
        for e in table.entries.iter().filter(|e| e.dev_type != 0) {
            used[e.hit as usize % TABLE_CAP] = true;
        }
        let mut free = (0..TABLE_CAP).filter(|i| !used[*i]);
        for (key, access) in added {
            let Some(hit) = free.next() else {
                return Ok(Edit::Rebuild);
            };
            if !table_insert(&mut table, &(key, access, hit as u32, totals[hit])) {
                return Ok(Edit::Rebuild);
            }
        }
        changed = true;
    }
    Ok(if changed {
        Edit::Table(Box::new(table))
    } else {
        Edit::Unchanged
    })
}

/// The items a table built from scratch holds for the entries `next`:
/// an entry `kept` from the table before keeps its hit index and base; a
/// new one takes the lowest hit index no kept entry of `next` uses, based
/// at that counter's total (`totals`, read only when an entry is new).
fn build_items<E>(
    kept: &BTreeMap<PolicyKey, (u32, u64)>,
    next: &BTreeMap<PolicyKey, u32>,
    totals: impl FnOnce() -> Result<Totals, E>,
) -> Result<Vec<TableItem>, E> {
    let mut used = [false; TABLE_CAP];
    for k in next.keys() {
        if let Some((hit, _)) = kept.get(k) {
            used[*hit as usize % TABLE_CAP] = true;
        }
    }
    let totals = if next.keys().any(|k| !kept.contains_key(k)) {
        Some(totals()?)
    } else {
        None
    };
    let mut free = (0..TABLE_CAP).filter(|i| !used[*i]);
    let mut items: Vec<TableItem> = Vec::with_capacity(next.len());
    for (k, v) in next {
        let (hit, base) = match kept.get(k) {
            Some(x) => *x,
            None => {
                let hit = free.next().unwrap_or(0);
                (hit as u32, totals.map(|t| t[hit]).unwrap_or(0))
            }
        };
        items.push((*k, *v, hit, base));
    }
    Ok(items)
}

/// What a container's policy is now.
struct Current {
    maps: Option<ContainerMaps>,
    snapshot: Option<Snapshot>,
    entries: BTreeMap<PolicyKey, u32>,
}

impl Current {
    fn large_generation(&self) -> Option<u32> {
        self.snapshot.filter(|s| s.large()).map(|s| s.generation())
    }
}

fn canonical(mut key: PolicyKey) -> PolicyKey {
    key._pad = 0;
    key
}

impl PolicyMap {
    /// Opens the map pinned at `path` (the pin root is its directory), in
    /// two bpf() calls (`BPF_OBJ_GET`, `BPF_OBJ_GET_INFO_BY_FD`): the type
    /// and the key and value sizes are checked from that one info query
    /// (aya refuses another map type or size), the batch-read fd is a
    /// duplicate of the same fd, and the id and capacity are read only when
    /// asked for. Commands open it once and pass it down.
    pub fn open(path: &Path) -> Result<Self, PolicyMapError> {
        if !path.exists() {
            return Err(PolicyMapError::Missing {
                path: path.to_path_buf(),
            });
        }
        let foreign = |found: String| PolicyMapError::Foreign {
            path: path.to_path_buf(),
            found,
        };
        let data = MapData::from_pin(path).map_err(|e| foreign(e.to_string()))?;
        let raw = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| foreign(e.to_string()))?;
        let map = match Map::from_map_data(data).map_err(|e| foreign(e.to_string()))? {
            Map::HashMap(data) => data,
            other => {
                let kind = format!("{other:?}");
                let kind = kind.split(['(', ' ', '{']).next().unwrap_or("another");
                return Err(foreign(format!("a {kind} map, expected a Hash map")));
            }
        };
        // Other key or value sizes: say which (the pin's info is read again
        // on this error path only).
        let map = HashMap::try_from(Map::HashMap(map)).map_err(|e| {
            foreign(match verify_pin(path) {
                Err(PolicyMapError::Foreign { found, .. }) => found,
                _ => e.to_string(),
            })
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            pins: PinRoot::new(path.parent().unwrap_or(Path::new("/"))),
            info: std::cell::OnceCell::new(),
            map,
            raw,
            cache: RefCell::new(BTreeMap::new()),
            found_in: RefCell::new(BTreeMap::new()),
        })
    }

    /// Kernel id and capacity (read once, on first use).
    fn id_and_capacity(&self) -> (u32, u32) {
        *self.info.get_or_init(|| match self.map.map().info() {
            Ok(info) => (info.id(), info.max_entries()),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "cannot read the policy map's info: {e}");
                (0, 0)
            }
        })
    }

    /// The pin path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Maximum number of entries of large policies (more than
    /// `TABLE_CAP` entries) across all containers.
    pub fn capacity(&self) -> u32 {
        self.id_and_capacity().1
    }

    /// Kernel map id (for `bpftool map dump id N`).
    pub fn id(&self) -> u32 {
        self.id_and_capacity().0
    }

    /// Every raw entry of the shared hash map (keys with their generation).
    fn hash_entries(&self) -> Result<BTreeMap<PolicyKey, u32>, PolicyMapError> {
        // Mostly empty (every policy fits its table): one
        // BPF_MAP_GET_NEXT_KEY says so, where a batch read walks every
        // bucket of the map under its bucket locks.
        match self.map.keys().next() {
            None => return Ok(BTreeMap::new()),
            Some(Err(e)) if is_missing_key(&e) => return Ok(BTreeMap::new()),
            _ => {}
        }
        let (ks, vs) = (
            std::mem::size_of::<PolicyKey>(),
            std::mem::size_of::<PolicyValue>(),
        );
        let batch = sys::map_lookup_batch(self.raw.as_fd(), ks, vs, &self.path).map_err(|e| {
            PolicyMapError::Batch {
                path: self.path.clone(),
                source: e,
            }
        })?;
        if let Some(sys::BatchEntries { keys, values }) = batch {
            return Ok(keys
                .chunks_exact(ks)
                .zip(values.chunks_exact(vs))
                .map(|(k, v)| (read_pod::<PolicyKey>(k), read_pod::<PolicyValue>(v).access))
                .collect());
        }
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(|e| PolicyMapError::Op {
                path: self.path.clone(),
                op: "iterate",
                source: e,
            })?;
            out.insert(k, v.access);
        }
        Ok(out)
    }

    /// Every entry of every container, sorted by key.
    pub fn entries(&self) -> Result<BTreeMap<PolicyKey, u32>, PolicyMapError> {
        let hash = self.hash_entries()?;
        let ids = super::container_maps::table_ids(&self.pins).map_err(|e| self.io_err(e))?;
        let mut out = BTreeMap::new();
        let mut large = BTreeMap::new();
        for id in &ids {
            let Some(maps) = ContainerMaps::open(&self.pins, *id)? else {
                continue;
            };
            let snap = maps.snapshot();
            if snap.large() {
                large.insert(*id, snap.generation());
            } else {
                out.extend(table_items(&snap.table, *id).map(|(k, a, _, _)| (k, a)));
            }
        }
        for (key, access) in hash {
            match large.get(&key.policy_id) {
                Some(generation) if *generation == key._pad => {
                    out.insert(canonical(key), access);
                }
                Some(_) => {}
                // Entries of no table: left by a crash (reported as orphans).
                None if !ids.contains(&key.policy_id) => {
                    out.insert(canonical(key), access);
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// Every container's policy with its counters, in one pass (for
    /// `list`): each per-container table is mapped once, each cgroup
    /// storage of a shared program is read with one lookup of its table
    /// and one of its counters, and the shared hash map is read once (one
    /// batch). `large_hits` are the hit counts of large-policy entries
    /// (the shared hit map). The entries are those of
    /// [`PolicyMap::entries`]; the hits and statistics those of
    /// `Counters::hits` and `Counters::stats`.
    pub fn read_all(
        &self,
        large_hits: &BTreeMap<PolicyKey, u64>,
    ) -> Result<AllPolicies, PolicyMapError> {
        let hash = self.hash_entries()?;
        let mut all = AllPolicies::default();
        let mut large: BTreeMap<u64, u32> = BTreeMap::new();
        // Containers with their own program: their own maps (these win
        // over a shared storage of the same id, as in `ContainerMaps::open`).
        let array_ids =
            super::container_maps::array_ids(&self.pins).map_err(|e| self.io_err(e))?;
        for id in &array_ids {
            let Some(maps) = ContainerMaps::open(&self.pins, *id)? else {
                continue;
            };
            let snap = maps.snapshot();
            let totals = maps.counters()?;
            all.add(
                *id,
                snap.state,
                &snap.table,
                Some(&totals),
                maps.stats_base(),
                &mut large,
            );
        }
        // Containers on a shared program: one table lookup and one counters
        // lookup each (the first program whose storage is written wins, as
        // in `shared::find_for`).
        let shared = super::shared::all(&self.pins)
            .map_err(|e| PolicyMapError::from(ContainerMapsError::Storage(Box::new(e))))?;
        let storage = |e| PolicyMapError::from(ContainerMapsError::Storage(Box::new(e)));
        // One buffer for every container's storage, read in place.
        let mut t = Box::<ctdev_common::SharedTable>::default();
        for p in shared {
            for id in p.storage_ids().map_err(storage)? {
                if all.stats.contains_key(&id) {
                    continue;
                }
                if !p.read_into(id, &mut t).map_err(storage)? {
                    continue;
                }
                if t.state & ctdev_common::STATE_WRITTEN == 0 {
                    continue;
                }
                let totals = p.counters(id).map_err(storage)?;
                all.add(id, t.state, &t.table, totals.as_ref(), t.stats_base, &mut large);
            }
        }
        for (key, access) in hash {
            let canon = canonical(key);
            match large.get(&key.policy_id) {
                Some(generation) if *generation == key._pad => {
                    all.entries.insert(canon, access);
                    all.hits
                        .insert(canon, large_hits.get(&canon).copied().unwrap_or(0));
                }
                Some(_) => {}
                // Entries of no table: left by a crash (reported as orphans).
                None if !all.stats.contains_key(&key.policy_id) => {
                    all.entries.insert(canon, access);
                    all.hits
                        .insert(canon, large_hits.get(&canon).copied().unwrap_or(0));
                }
                None => {}
            }
        }
        Ok(all)
    }

    fn io_err(&self, e: std::io::Error) -> PolicyMapError {
        PolicyMapError::Batch {
            path: self.pins.tables_dir(),
            source: sys::SysError {
                call: "read directory",
                what: self.pins.tables_dir().display().to_string(),
                source: e,
            },
        }
    }

    /// Opens one container's maps and copies its live table (the storage's
    /// value comes from one lookup, made now: never an earlier read).
    fn open_now(
        &self,
        policy_id: u64,
    ) -> Result<(Option<ContainerMaps>, Option<Snapshot>), PolicyMapError> {
        let hint = self.found_in.borrow().get(&policy_id).cloned();
        let maps = ContainerMaps::open_hinted(&self.pins, policy_id, hint.as_ref())?;
        match maps.as_ref().and_then(ContainerMaps::shared) {
            Some(p) => self.found_in.borrow_mut().insert(policy_id, p.clone()),
            None => self.found_in.borrow_mut().remove(&policy_id),
        };
        let snapshot = maps.as_ref().map(ContainerMaps::snapshot);
        Ok((maps, snapshot))
    }

    /// Reads one container's policy as it is now.
    fn current(&self, policy_id: u64) -> Result<Current, PolicyMapError> {
        let (maps, snapshot) = self.open_now(policy_id)?;
        self.decode(policy_id, maps, snapshot)
    }

    /// [`Self::current`] from what [`Self::open_now`] read.
    fn decode(
        &self,
        policy_id: u64,
        maps: Option<ContainerMaps>,
        snapshot: Option<Snapshot>,
    ) -> Result<Current, PolicyMapError> {
        let entries = match snapshot {
            Some(s) if !s.large() => table_items(&s.table, policy_id)
                .map(|(k, a, _, _)| (k, a))
                .collect(),
            Some(s) => self
                .hash_entries()?
                .into_iter()
                .filter(|(k, _)| k.policy_id == policy_id && k._pad == s.generation())
                .map(|(k, a)| (canonical(k), a))
                .collect(),
            None => self
                .hash_entries()?
                .into_iter()
                .filter(|(k, _)| k.policy_id == policy_id)
                .map(|(k, a)| (canonical(k), a))
                .collect(),
        };
        Ok(Current {
            maps,
            snapshot,
            entries,
        })
    }

    /// The entries of one container.
    pub fn entries_of(&self, policy_id: u64) -> Result<BTreeMap<PolicyKey, u32>, PolicyMapError> {
        if let Some(e) = self.cache.borrow().get(&policy_id) {
            return Ok(e.clone());
        }
        let entries = self.current(policy_id)?.entries;
        self.cache.borrow_mut().insert(policy_id, entries.clone());
        Ok(entries)
    }

    /// The access bits stored under `key`, if any.
    pub fn get(&self, key: &PolicyKey) -> Result<Option<u32>, PolicyMapError> {
        Ok(self
            .entries_of(key.policy_id)?
            .get(&canonical(*key))
            .copied())
    }

    /// Applies `changes` in order. If one fails, the containers already
    /// changed are put back as they were and the first error is returned:
    /// the policy ends either fully changed or unchanged. Each container's
    /// part is published at once when its entries fit its table.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), PolicyMapError> {
        let mut order: Vec<u64> = Vec::new();
        let mut by_id: BTreeMap<u64, Vec<Change>> = BTreeMap::new();
        for &(key, value) in changes {
            if !by_id.contains_key(&key.policy_id) {
                order.push(key.policy_id);
            }
            by_id
                .entry(key.policy_id)
                .or_default()
                .push((canonical(key), value));
        }
        self.cache.borrow_mut().clear();
        let several = order.len() > 1;
        let mut done: Vec<(u64, BTreeMap<PolicyKey, u32>)> = Vec::new();
        for id in order {
            // Any error of a container's part (opening, reading, editing,
            // writing) puts back the containers already changed.
            match self.apply_one(id, &by_id[&id], several) {
                Ok(None) => continue,
                Ok(Some(prev)) => done.push((id, prev)),
                Err(e) => {
                    for (id, prev) in done.iter().rev() {
                        let restore = self
                            .current(*id)
                            .and_then(|cur| self.write(*id, cur, prev, false));
                        if let Err(r) = restore {
                            tracing::error!("rollback of policy {id} failed: {r}");
                        }
                    }
                    return Err(e);
                }
            }
            if done.len() == 1 && changes.len() > 1 {
                crate::failpoint!("map.apply.after_first_write");
            }
        }
        Ok(())
    }

    /// [`Self::apply`]'s part for container `id`: `None` when nothing
    /// changed, else what to put back if a later container's part fails
    /// (empty unless `several`: an apply to one container has nothing to
    /// roll back).
    fn apply_one(
        &mut self,
        id: u64,
        changes: &[Change],
        several: bool,
    ) -> Result<Option<BTreeMap<PolicyKey, u32>>, PolicyMapError> {
        let (maps, snapshot) = self.open_now(id)?;
        // A table edited in place when it can be (the usual `allow` or
        // `revoke` of a few entries): no decoding, no seed search.
        if let (Some(m), Some(s)) = (&maps, &snapshot) {
            if !s.large() {
                match self.edit(m, s, changes)? {
                    Edit::Unchanged => return Ok(None),
                    Edit::Table(table) => {
                        self.publish_table(id, m, &table)?;
                        return Ok(Some(match several {
                            true => table_items(&s.table, id).map(|(k, a, _, _)| (k, a)).collect(),
                            false => BTreeMap::new(),
                        }));
                    }
                    Edit::Rebuild => {}
                }
            }
        }
        let current = self.decode(id, maps, snapshot)?;
        let mut next = current.entries.clone();
        for (key, value) in changes {
            match value {
                Some(v) => next.insert(*key, *v),
                None => next.remove(key),
            };
        }
        if next == current.entries {
            return Ok(None);
        }
        let prev = match several {
            true => current.entries.clone(),
            false => BTreeMap::new(),
        };
        self.write(id, current, &next, false)?;
        Ok(Some(prev))
    }

    /// `snapshot`'s table with `changes` (in order: the last change of a
    /// key wins) made in place, as [`Self::build`] would make them: a
    /// remaining entry keeps its hit counter and base, a new one takes the
    /// lowest hit index no remaining entry uses, based at that counter's
    /// total. [`Edit::Rebuild`] when the table is not one `build_table`
    /// could have made (`table_well_formed`), a new entry's bucket is full
    /// under the table's seed, or the result would not fit a table; the
    /// caller then builds it from scratch. Only the table read now (in the
    /// same lookup) is edited, never a copy kept from an earlier call.
    fn edit(
        &self,
        maps: &ContainerMaps,
        snapshot: &Snapshot,
        changes: &[Change],
    ) -> Result<Edit, PolicyMapError> {
        edit_table(&snapshot.table, changes, || Ok(maps.counters()?.hits))
    }

    /// Publishes a table [`Self::edit`] made from `maps` (opened by the
    /// same call), as [`Self::write`] publishes a rebuilt one.
    fn publish_table(
        &mut self,
        policy_id: u64,
        maps: &ContainerMaps,
        table: &ctdev_common::Table,
    ) -> Result<(), PolicyMapError> {
        maps.write_next(table);
        crate::failpoint!("set.after_write");
        maps.publish(false)?;
        crate::failpoint!("set.after_publish");
        if table.count == 0 && !self.pins.link(policy_id).exists() {
            self.forget(policy_id)?;
        }
        Ok(())
    }

    /// Replaces the whole policy of `policy_id` with `entries` so that
    /// every access is judged entirely by the old or entirely by the new
    /// set: the new set is written beside the live one and published with
    /// one store. A crash before the publish leaves the old set, after it
    /// the new one.
    pub fn set_entries(
        &mut self,
        policy_id: u64,
        entries: &BTreeMap<PolicyKey, u32>,
    ) -> Result<(), PolicyMapError> {
        self.cache.borrow_mut().clear();
        let next: BTreeMap<PolicyKey, u32> = entries
            .iter()
            .map(|(k, v)| {
                let mut k = canonical(*k);
                k.policy_id = policy_id;
                (k, *v)
            })
            .collect();
        let (maps, snapshot) = self.open_now(policy_id)?;
        if let (Some(m), Some(s)) = (&maps, &snapshot) {
            if !s.large() && next.len() <= TABLE_CAP {
                // The new set as changes to the live table, edited in
                // place when it can be: still published in one store or
                // one update, as a rebuilt table is.
                let changes: Vec<Change> = table_items(&s.table, policy_id)
                    .filter(|(k, _, _, _)| !next.contains_key(k))
                    .map(|(k, _, _, _)| (k, None))
                    .chain(next.iter().map(|(k, v)| (*k, Some(*v))))
                    .collect();
                if let Edit::Table(table) = self.edit(m, s, &changes)? {
                    return self.publish_table(policy_id, m, &table);
                }
            }
        }
        let current = self.decode(policy_id, maps, snapshot)?;
        self.write(policy_id, current, &next, true)
    }

    /// Removes every trace of `policy_id`: its table and counters pins and
    /// its entries in the shared map (after its program was detached).
    pub fn forget(&mut self, policy_id: u64) -> Result<(), PolicyMapError> {
        self.cache.borrow_mut().clear();
        let stale: Vec<PolicyKey> = self
            .hash_entries()?
            .into_keys()
            .filter(|k| k.policy_id == policy_id)
            .collect();
        for key in stale {
            self.set_raw(key, None)?;
        }
        ContainerMaps::unpin(&self.pins, policy_id).map_err(|e| self.io_err(e))
    }

    /// Writes `next` as the policy of `policy_id` (which is `current` now).
    fn write(
        &mut self,
        policy_id: u64,
        current: Current,
        next: &BTreeMap<PolicyKey, u32>,
        atomic: bool,
    ) -> Result<(), PolicyMapError> {
        let old_large = current.large_generation();
        let Current {
            maps,
            snapshot,
            entries: before,
        } = current;
        let maps = match maps {
            Some(m) => m,
            None => ContainerMaps::create(&self.pins, policy_id)?,
        };
        let maps = &maps;
        let live = snapshot.map(|s| s.generation()).unwrap_or(0);
        if next.len() <= TABLE_CAP {
            let table = self.build(maps, snapshot, next)?;
            maps.write_next(&table);
            crate::failpoint!("set.after_write");
            maps.publish(false)?;
            crate::failpoint!("set.after_publish");
            if let Some(generation) = old_large {
                self.drop_generation(policy_id, generation)?;
            }
        } else if let (Some(generation), false) = (old_large, atomic) {
            // A large policy changed in place, entry by entry.
            let mut changes: Vec<Change> = Vec::new();
            for (k, v) in next {
                if before.get(k) != Some(v) {
                    changes.push((*k, Some(*v)));
                }
            }
            for k in before.keys() {
                if !next.contains_key(k) {
                    changes.push((*k, None));
                }
            }
            self.apply_raw(&changes, generation)?;
        } else {
            // A new large generation beside the live one, then publish.
            let generation = live ^ 1;
            self.drop_generation(policy_id, generation)?;
            let changes: Vec<Change> = next.iter().map(|(k, v)| (*k, Some(*v))).collect();
            if let Err(e) = self.apply_raw(&changes, generation) {
                let _ = self.drop_generation(policy_id, generation);
                return Err(e);
            }
            crate::failpoint!("set.after_write");
            maps.publish(true)?;
            crate::failpoint!("set.after_publish");
            if let Some(old) = old_large {
                self.drop_generation(policy_id, old)?;
            }
        }
        if next.is_empty() && !self.pins.link(policy_id).exists() {
            self.forget(policy_id)?;
        }
        Ok(())
    }

    /// The table for `next`, keeping each remaining entry's hit counter.
    fn build(
        &self,
        maps: &ContainerMaps,
        snapshot: Option<Snapshot>,
        next: &BTreeMap<PolicyKey, u32>,
    ) -> Result<ctdev_common::Table, PolicyMapError> {
        let kept: BTreeMap<PolicyKey, (u32, u64)> = match snapshot {
            Some(s) if !s.large() => table_items(&s.table, maps.policy_id)
                .map(|(k, _, hit, base)| (k, (hit, base)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let mut items = build_items(&kept, next, || -> Result<Totals, PolicyMapError> {
            Ok(maps.counters()?.hits)
        })?;
        build_table(&mut items).ok_or_else(|| PolicyMapError::Foreign {
            path: self.pins.table(maps.policy_id),
            found: "an entry that is neither block nor char, or access bits above 16 bits".into(),
        })
    }

    /// Deletes the shared-map entries of one generation of `policy_id`.
    fn drop_generation(&mut self, policy_id: u64, generation: u32) -> Result<(), PolicyMapError> {
        let stale: Vec<PolicyKey> = self
            .hash_entries()?
            .into_keys()
            .filter(|k| k.policy_id == policy_id && k._pad == generation)
            .collect();
        for key in stale {
            self.set_raw(key, None)?;
        }
        Ok(())
    }

    /// Entries of `policy_id` in a plain hash map of this layout (the scope
    /// programs' default policies): no per-container table, no generation.
    pub fn plain_entries_of(
        &self,
        policy_id: u64,
    ) -> Result<BTreeMap<PolicyKey, u32>, PolicyMapError> {
        Ok(self
            .hash_entries()?
            .into_iter()
            .filter(|(k, _)| k.policy_id == policy_id)
            .collect())
    }

    /// Applies changes to a plain hash map of this layout (see
    /// [`Self::plain_entries_of`]), all or nothing.
    pub fn apply_plain(&mut self, changes: &[Change]) -> Result<(), PolicyMapError> {
        self.apply_raw(changes, 0)
    }

    /// Applies changes to the shared map under `generation`, putting back
    /// what was applied when one fails.
    fn apply_raw(&mut self, changes: &[Change], generation: u32) -> Result<(), PolicyMapError> {
        let mut undo: Vec<Change> = Vec::with_capacity(changes.len());
        for &(key, value) in changes {
            let mut key = key;
            key._pad = generation;
            let before = match self.map.get(&key, 0) {
                Ok(v) => Some(v.access),
                Err(e) if is_missing_key(&e) => None,
                Err(e) => {
                    self.rollback(&undo);
                    return Err(PolicyMapError::Op {
                        path: self.path.clone(),
                        op: "lookup",
                        source: e,
                    });
                }
            };
            if before == value {
                continue;
            }
            if let Err(e) = self.set_raw(key, value) {
                self.rollback(&undo);
                return Err(e);
            }
            undo.push((key, before));
        }
        Ok(())
    }

    fn rollback(&mut self, undo: &[Change]) {
        for &(key, value) in undo.iter().rev() {
            if let Err(e) = self.set_raw(key, value) {
                tracing::error!("rollback of policy entry {key:?} failed: {e}");
            }
        }
    }

    fn set_raw(&mut self, key: PolicyKey, value: Option<u32>) -> Result<(), PolicyMapError> {
        let result = match value {
            Some(access) => self.map.insert(key, PolicyValue { access }, 0),
            None => match self.map.remove(&key) {
                Err(e) if is_missing_key(&e) => Ok(()),
                other => other,
            },
        };
        result.map_err(|e| match &e {
            MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                PolicyMapError::Full {
                    path: self.path.clone(),
                    capacity: self.capacity(),
                }
            }
            _ => PolicyMapError::Op {
                path: self.path.clone(),
                op: if value.is_some() { "update" } else { "delete" },
                source: e,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan_props::{Rng, Source};
    use ctdev_common::{table_lookup, WILDCARD};

    fn sorted(mut items: Vec<TableItem>) -> Vec<TableItem> {
        items.sort_by_key(|i| i.0);
        items
    }

    /// Review 10a: over whole batches (several keys, a key changed twice
    /// with the last change winning, a removal and a re-add of one key in
    /// one batch), a table edited in place holds exactly the items a table
    /// built from scratch holds — keys, access, hit index and base — stays
    /// well formed and decides every request it is asked as that table
    /// does; a batch that changes nothing leaves the entries as they were.
    #[test]
    fn edited_batches_hold_what_a_rebuilt_table_holds() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: u64| rng.below(n);
        let pick = |x: u64| if x == 0 { WILDCARD } else { (x - 1) as u32 };
        let key = |next: &mut dyn FnMut(u64) -> u64| {
            PolicyKey::new(7, 1 + next(2) as u32, pick(next(12)), pick(next(12)))
        };
        let (mut edited, mut unchanged, mut rebuilt) = (0, 0, 0);
        for _ in 0..3000 {
            let mut before: BTreeMap<PolicyKey, u32> = BTreeMap::new();
            for _ in 0..next(70) {
                before.insert(key(&mut next), next(8) as u32);
            }
            let t0: Totals = std::array::from_fn(|_| next(1 << 40));
            let mut items = build_items(&BTreeMap::new(), &before, || Ok::<_, ()>(t0)).unwrap();
            let table = build_table(&mut items).expect("a table");
            let known: Vec<PolicyKey> = before.keys().copied().collect();
            let mut changes: Vec<Change> = Vec::new();
            for _ in 0..1 + next(10) {
                let k = if !known.is_empty() && next(2) == 0 {
                    known[next(known.len() as u64) as usize]
                } else {
                    key(&mut next)
                };
                match next(4) {
                    0 => changes.push((k, None)),
                    // Removed and added again in the same batch.
                    1 => changes.extend([(k, None), (k, Some(next(8) as u32))]),
                    _ => changes.push((k, Some(next(8) as u32))),
                }
            }
            let mut after = before.clone();
            for (k, v) in &changes {
                match v {
                    Some(a) => after.insert(*k, *a),
                    None => after.remove(k),
                };
            }
            let totals: Totals = std::array::from_fn(|_| next(1 << 40));
            let kept: BTreeMap<PolicyKey, (u32, u64)> = table_items(&table, 7)
                .map(|(k, _, hit, base)| (k, (hit, base)))
                .collect();
            let want = sorted(build_items(&kept, &after, || Ok::<_, ()>(totals)).unwrap());
            match edit_table(&table, &changes, || Ok::<_, ()>(totals)).unwrap() {
                Edit::Table(t) => {
                    edited += 1;
                    assert!(table_well_formed(&t));
                    assert_eq!(sorted(table_items(&t, 7).collect()), want, "{changes:?}");
                    let from_scratch = build_table(&mut want.clone()).expect("a table");
                    let mut asks: Vec<(u32, u32, u32)> = changes
                        .iter()
                        .map(|(k, _)| (k.dev_type, k.major, k.minor))
                        .collect();
                    for _ in 0..8 {
                        asks.push((1 + next(2) as u32, pick(next(12)), pick(next(12))));
                    }
                    for (ty, ma, mi) in asks {
                        assert_eq!(
                            table_lookup(&t, ty, ma, mi),
                            table_lookup(&from_scratch, ty, ma, mi),
                            "{ty} {ma}:{mi} after {changes:?}"
                        );
                    }
                }
                Edit::Unchanged => {
                    unchanged += 1;
                    assert_eq!(after, before, "{changes:?}");
                }
                Edit::Rebuild => rebuilt += 1,
            }
        }
        // Each outcome was seen (a batch that fits is edited in place).
        assert!(
            edited > 2000 && unchanged > 10 && rebuilt > 0,
            "edited {edited}, unchanged {unchanged}, rebuilt {rebuilt}"
        );
    }
}
