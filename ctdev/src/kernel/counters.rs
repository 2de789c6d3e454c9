//! Reading and resetting the counters the kernel program keeps: allowed
//! accesses per entry and denials / denial events / dropped events per
//! container (each container's `CTDEV_COUNTERS`, per CPU), and the hits of
//! large policies' entries (the shared `CTDEV_HITS`). Readers sum the CPUs
//! and subtract the baselines of the last reset.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapType, PerCpuHashMap};
use ctdev_common::{table_items, ContainerStats, PolicyKey, PolicyValue, STATE_LARGE};
use serde::Serialize;

use super::container_maps::{table_ids, ContainerMaps};
use super::pins::PinRoot;
use super::policy_map::{is_missing_key, read_pod, verify_map_pin, PolicyMapError};
use super::sys::{self, SysError};

/// Totals of one container's statistics over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Accesses the container's program denied.
    pub denied: u64,
    /// Denial events written to the ring buffer.
    pub events: u64,
    /// Denial events dropped (rate limit or full ring buffer).
    pub events_dropped: u64,
}

/// The counter maps, opened.
pub struct Counters {
    pins: PinRoot,
    hits: PerCpuHashMap<MapData, PolicyKey, u64>,
    /// Second fd on the shared hits map, for batch reads.
    hits_raw: OwnedFd,
    hits_pin: PathBuf,
}

/// Every entry of a per-CPU hash map, values summed over CPUs by `sum`;
/// `None` when the kernel has no batch ops.
fn batch_per_cpu<K: aya::Pod + Ord, V: aya::Pod, T>(
    fd: BorrowedFd<'_>,
    pin: &Path,
    sum: impl Fn(&mut T, &V),
    init: impl Fn() -> T,
) -> Result<Option<BTreeMap<K, T>>, PolicyMapError> {
    let cpus = aya::util::nr_cpus().map_err(|(path, source)| PolicyMapError::Batch {
        path: PathBuf::from(path),
        source: SysError {
            call: "read possible CPUs",
            what: path.into(),
            source,
        },
    })?;
    let slot = std::mem::size_of::<V>().div_ceil(8) * 8;
    let (ks, vs) = (std::mem::size_of::<K>(), slot * cpus);
    let batch = sys::map_lookup_batch(fd, ks, vs, pin).map_err(|source| PolicyMapError::Batch {
        path: pin.to_path_buf(),
        source,
    })?;
    Ok(batch.map(|sys::BatchEntries { keys, values }| {
        keys.chunks_exact(ks)
            .zip(values.chunks_exact(vs))
            .map(|(k, v)| {
                let mut total = init();
                for cpu in v.chunks_exact(slot) {
                    sum(&mut total, &read_pod::<V>(&cpu[..std::mem::size_of::<V>()]));
                }
                (read_pod::<K>(k), total)
            })
            .collect()
    }))
}

/// Verifies whichever of ctdev's shared map pins `pin` is.
pub fn verify_any(pins: &PinRoot, pin: &Path) -> Result<(), PolicyMapError> {
    let key = std::mem::size_of::<PolicyKey>();
    if pin == pins.policy_map() {
        verify_map_pin(pin, MapType::Hash, key, std::mem::size_of::<PolicyValue>())?;
    } else if pin == pins.hits_map() {
        verify_map_pin(pin, MapType::PerCpuHash, key, 8)?;
    } else if pin == pins.stats_map() {
        verify_map_pin(
            pin,
            MapType::PerCpuHash,
            8,
            std::mem::size_of::<ContainerStats>(),
        )?;
    } else if pin == pins.events_map() {
        verify_map_pin(pin, MapType::RingBuf, 0, 0)?;
    }
    Ok(())
}

impl Counters {
    /// Opens the counter maps; `None` when they are not pinned (nothing attached yet).
    pub fn open(pins: &PinRoot) -> Result<Option<Self>, PolicyMapError> {
        let hits_pin = pins.hits_map();
        if !hits_pin.exists() {
            return Ok(None);
        }
        // One BPF_OBJ_GET and one BPF_OBJ_GET_INFO_BY_FD (inside
        // `MapData::from_fd`): the type and the key and value sizes are
        // checked from that info (as `verify_any` would, which opens the
        // pin again), the batch-read fd is a duplicate.
        let foreign = |found: String| PolicyMapError::Foreign {
            path: hits_pin.clone(),
            found,
        };
        let fd = sys::obj_get(&hits_pin).map_err(|e| foreign(e.to_string()))?;
        let hits_raw = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| foreign(e.to_string()))?;
        let data = MapData::from_fd(fd).map_err(|e| foreign(e.to_string()))?;
        let hits = match Map::from_map_data(data).map_err(|e| foreign(e.to_string()))? {
            Map::PerCpuHashMap(data) => data,
            other => {
                let kind = format!("{other:?}");
                let kind = kind.split(['(', ' ', '{']).next().unwrap_or("another");
                return Err(foreign(format!("a {kind} map, expected a PerCpuHash map")));
            }
        };
        let hits = PerCpuHashMap::try_from(Map::PerCpuHashMap(hits)).map_err(|e| {
            foreign(match verify_any(pins, &hits_pin) {
                Err(PolicyMapError::Foreign { found, .. }) => found,
                _ => e.to_string(),
            })
        })?;
        Ok(Some(Self {
            pins: pins.clone(),
            hits,
            hits_raw,
            hits_pin,
        }))
    }

    fn ids(&self) -> Result<Vec<u64>, PolicyMapError> {
        table_ids(&self.pins).map_err(|e| PolicyMapError::Batch {
            path: self.pins.tables_dir(),
            source: SysError {
                call: "read directory",
                what: self.pins.tables_dir().display().to_string(),
                source: e,
            },
        })
    }

    /// Allowed accesses per policy entry, summed over CPUs.
    pub fn hits(&self) -> Result<BTreeMap<PolicyKey, u64>, PolicyMapError> {
        let mut out = self.large_hits()?;
        for id in self.ids()? {
            let Some(maps) = ContainerMaps::open(&self.pins, id)? else {
                continue;
            };
            let snap = maps.snapshot();
            if snap.large() {
                continue;
            }
            let totals = maps.counters()?.hits;
            for (key, _, hit, base) in table_items(&snap.table, id) {
                let total = totals[hit as usize % totals.len()];
                out.insert(key, total.saturating_sub(base));
            }
        }
        Ok(out)
    }

    /// The hits of large-policy entries (the shared hit map), summed over
    /// CPUs: no container's own table is read.
    pub fn large_hits(&self) -> Result<BTreeMap<PolicyKey, u64>, PolicyMapError> {
        Ok(
            match batch_per_cpu::<PolicyKey, u64, u64>(
                self.hits_raw.as_fd(),
                &self.hits_pin,
                |t, v| *t += v,
                || 0,
            )? {
                Some(all) => all,
                None => {
                    let mut out = BTreeMap::new();
                    for item in self.hits.iter() {
                        let (key, per_cpu) = item.map_err(|e| PolicyMapError::Op {
                            path: self.hits_pin.clone(),
                            op: "iterate",
                            source: e,
                        })?;
                        out.insert(key, per_cpu.iter().sum());
                    }
                    out
                }
            },
        )
    }

    /// Statistics of every container, summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<u64, Stats>, PolicyMapError> {
        let mut out = BTreeMap::new();
        for id in self.ids()? {
            let Some(maps) = ContainerMaps::open(&self.pins, id)? else {
                continue;
            };
            out.insert(id, stats_of(&maps)?);
        }
        Ok(out)
    }

    /// Forgets the counters of `policy_id`: its statistics and the hits of
    /// its entries start again from zero (after `reset-counters`, or when an
    /// earlier container had its id).
    pub fn reset(&mut self, policy_id: u64) -> Result<(), PolicyMapError> {
        // Only the shared hit map holds keys to forget (a small policy's
        // hits live in its own table, rebased below); reading every
        // container's table here made each detach O(containers).
        let keys: Vec<PolicyKey> = self
            .large_hits()?
            .into_keys()
            .filter(|k| k.policy_id == policy_id)
            .collect();
        self.forget_hits(&keys)?;
        if let Some(maps) = ContainerMaps::open(&self.pins, policy_id)? {
            let c = maps.counters()?;
            maps.set_stats_base([c.stats.denied, c.stats.events, c.stats.dropped]);
            let snap = maps.snapshot();
            if snap.state & STATE_LARGE == 0 {
                let mut items: Vec<_> = table_items(&snap.table, policy_id)
                    .map(|(k, a, hit, _)| (k, a, hit, c.hits[hit as usize % c.hits.len()]))
                    .collect();
                if let Some(table) = ctdev_common::build_table(&mut items) {
                    maps.write_next(&table);
                    maps.publish(false)?;
                }
            }
        }
        Ok(())
    }

    /// Forgets the hit counters of large-policy entries that were removed.
    pub fn forget_hits(&mut self, keys: &[PolicyKey]) -> Result<(), PolicyMapError> {
        for key in keys {
            match self.hits.remove(key) {
                Ok(()) => {}
                Err(e) if is_missing_key(&e) => {}
                Err(e) => {
                    return Err(PolicyMapError::Op {
                        path: self.hits_pin.clone(),
                        op: "delete",
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }
}

/// One container's statistics since its last reset.
pub fn stats_of(maps: &ContainerMaps) -> Result<Stats, PolicyMapError> {
    let c = maps.counters()?;
    let [denied, events, dropped] = maps.stats_base();
    Ok(Stats {
        denied: c.stats.denied.saturating_sub(denied),
        events: c.stats.events.saturating_sub(events),
        events_dropped: c.stats.dropped.saturating_sub(dropped),
    })
}
