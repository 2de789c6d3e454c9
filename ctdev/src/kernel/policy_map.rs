//! The shared, pinned policy map: typed access, validation of the pin, and
//! all-or-nothing batches of changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{HashMap, Map, MapData, MapError, MapType};
use ctdev_common::{PolicyKey, PolicyValue};

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
        /// The operation.
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

/// The pinned policy map, opened for reading and writing.
pub struct PolicyMap {
    path: PathBuf,
    capacity: u32,
    id: u32,
    map: HashMap<MapData, PolicyKey, PolicyValue>,
    /// A second fd on the map, for batch reads (aya does not expose its own).
    raw: OwnedFd,
}

/// One planned change to an entry: the value to set, or removal.
pub type Change = (PolicyKey, Option<u32>);

impl PolicyMap {
    /// Opens the map pinned at `path`.
    pub fn open(path: &Path) -> Result<Self, PolicyMapError> {
        if !path.exists() {
            return Err(PolicyMapError::Missing {
                path: path.to_path_buf(),
            });
        }
        let info = verify_pin(path)?;
        let op = |op, source| PolicyMapError::Op {
            path: path.to_path_buf(),
            op,
            source,
        };
        let data = MapData::from_pin(path).map_err(|e| op("open", e))?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(|e| op("open", e))?;
        let raw = sys::obj_get(path).map_err(|e| PolicyMapError::Foreign {
            path: path.to_path_buf(),
            found: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            capacity: info.max_entries(),
            id: info.id(),
            map,
            raw,
        })
    }

    /// The pin path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Kernel map id (for `bpftool map dump id N`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Every entry, sorted by key.
    pub fn entries(&self) -> Result<BTreeMap<PolicyKey, u32>, PolicyMapError> {
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

    /// The entries of one container.
    pub fn entries_of(&self, policy_id: u64) -> Result<BTreeMap<PolicyKey, u32>, PolicyMapError> {
        let mut all = self.entries()?;
        all.retain(|k, _| k.policy_id == policy_id);
        Ok(all)
    }

    /// The access bits stored under `key`, if any.
    pub fn get(&self, key: &PolicyKey) -> Result<Option<u32>, PolicyMapError> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v.access)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(PolicyMapError::Op {
                path: self.path.clone(),
                op: "lookup",
                source: e,
            }),
        }
    }

    /// Applies `changes` in order. If one fails, the ones already applied
    /// are put back as they were and the first error is returned: the map
    /// ends either fully changed or unchanged.
    pub fn apply(&mut self, changes: &[Change]) -> Result<(), PolicyMapError> {
        let mut undo: Vec<Change> = Vec::with_capacity(changes.len());
        for &(key, value) in changes {
            let before = match self.get(&key) {
                Ok(b) => b,
                Err(e) => {
                    self.rollback(&undo);
                    return Err(e);
                }
            };
            if before == value {
                continue;
            }
            if let Err(e) = self.set(key, value) {
                self.rollback(&undo);
                return Err(e);
            }
            undo.push((key, before));
            if undo.len() == 1 && changes.len() > 1 {
                crate::failpoint!("map.apply.after_first_write");
            }
        }
        Ok(())
    }

    fn rollback(&mut self, undo: &[Change]) {
        for &(key, value) in undo.iter().rev() {
            if let Err(e) = self.set(key, value) {
                tracing::error!("rollback of policy entry {key:?} failed: {e}");
            }
        }
    }

    fn set(&mut self, key: PolicyKey, value: Option<u32>) -> Result<(), PolicyMapError> {
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
                    capacity: self.capacity,
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
