//! Reading and resetting the counters the kernel program keeps: allowed
//! accesses per policy entry (`CTDEV_HITS`) and denials / denial events /
//! dropped events per container (`CTDEV_STATS`). Both are per-CPU maps;
//! readers sum the CPUs.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError, MapType, PerCpuHashMap};
use ctdev_common::{ContainerStats, PolicyKey, PolicyValue};
use serde::Serialize;

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

/// The two counter maps, opened.
pub struct Counters {
    hits: PerCpuHashMap<MapData, PolicyKey, u64>,
    stats: PerCpuHashMap<MapData, u64, ContainerStats>,
    /// Second fds on the two maps, for batch reads.
    hits_raw: OwnedFd,
    stats_raw: OwnedFd,
    hits_pin: PathBuf,
    stats_pin: PathBuf,
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

fn op_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(MapError) -> PolicyMapError + 'a {
    move |source| PolicyMapError::Op {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Verifies whichever of ctdev's map pins `pin` is.
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
        let (hits_pin, stats_pin) = (pins.hits_map(), pins.stats_map());
        if !hits_pin.exists() || !stats_pin.exists() {
            return Ok(None);
        }
        verify_any(pins, &hits_pin)?;
        verify_any(pins, &stats_pin)?;
        let hits = MapData::from_pin(&hits_pin).map_err(op_err(&hits_pin, "open"))?;
        let hits =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(hits)).map_err(op_err(&hits_pin, "open"))?;
        let stats = MapData::from_pin(&stats_pin).map_err(op_err(&stats_pin, "open"))?;
        let stats = PerCpuHashMap::try_from(Map::PerCpuHashMap(stats))
            .map_err(op_err(&stats_pin, "open"))?;
        let raw = |pin: &Path| {
            sys::obj_get(pin).map_err(|e| PolicyMapError::Foreign {
                path: pin.to_path_buf(),
                found: e.to_string(),
            })
        };
        Ok(Some(Self {
            hits,
            stats,
            hits_raw: raw(&hits_pin)?,
            stats_raw: raw(&stats_pin)?,
            hits_pin,
            stats_pin,
        }))
    }

    /// Allowed accesses per policy entry, summed over CPUs.
    pub fn hits(&self) -> Result<BTreeMap<PolicyKey, u64>, PolicyMapError> {
        if let Some(all) = batch_per_cpu::<PolicyKey, u64, u64>(
            self.hits_raw.as_fd(),
            &self.hits_pin,
            |t, v| *t += v,
            || 0,
        )? {
            return Ok(all);
        }
        let mut out = BTreeMap::new();
        for item in self.hits.iter() {
            let (key, per_cpu) = item.map_err(|e| PolicyMapError::Op {
                path: "CTDEV_HITS".into(),
                op: "iterate",
                source: e,
            })?;
            out.insert(key, per_cpu.iter().sum());
        }
        Ok(out)
    }

    /// Statistics of every container that has any, summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<u64, Stats>, PolicyMapError> {
        let add = |t: &mut Stats, s: &ContainerStats| {
            t.denied += s.denied;
            t.events += s.events;
            t.events_dropped += s.dropped;
        };
        if let Some(all) =
            batch_per_cpu(self.stats_raw.as_fd(), &self.stats_pin, add, Stats::default)?
        {
            return Ok(all);
        }
        let mut out = BTreeMap::new();
        for item in self.stats.iter() {
            let (id, per_cpu) = item.map_err(|e| PolicyMapError::Op {
                path: "CTDEV_STATS".into(),
                op: "iterate",
                source: e,
            })?;
            let mut total = Stats::default();
            for s in per_cpu.iter() {
                total.denied += s.denied;
                total.events += s.events;
                total.events_dropped += s.dropped;
            }
            out.insert(id, total);
        }
        Ok(out)
    }

    /// Forgets the counters of `policy_id`: its statistics and the hits of
    /// its entries (after detach, or on `reset-counters`).
    pub fn reset(&mut self, policy_id: u64) -> Result<(), PolicyMapError> {
        let keys: Vec<PolicyKey> = self
            .hits()?
            .into_keys()
            .filter(|k| k.policy_id == policy_id)
            .collect();
        self.forget_hits(&keys)?;
        match self.stats.remove(&policy_id) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(PolicyMapError::Op {
                path: "CTDEV_STATS".into(),
                op: "delete",
                source: e,
            }),
        }
    }

    /// Forgets the hit counters of entries that were removed.
    pub fn forget_hits(&mut self, keys: &[PolicyKey]) -> Result<(), PolicyMapError> {
        for key in keys {
            match self.hits.remove(key) {
                Ok(()) => {}
                Err(e) if is_missing_key(&e) => {}
                Err(e) => {
                    return Err(PolicyMapError::Op {
                        path: "CTDEV_HITS".into(),
                        op: "delete",
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }
}
