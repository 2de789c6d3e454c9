//! Loading one instance of ctdev's cgroup/dev program for a container.
//!
//! Each instance carries its container's policy id as a load-time constant
//! and shares the pinned policy map with all other instances. The object is
//! embedded in the binary when `cargo xtask build` built it; otherwise it is
//! read from `--bpf-object` / `CTDEV_BPF_OBJECT`.

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use aya::maps::MapData;
use aya::programs::CgroupDevice;
use aya::{Ebpf, EbpfLoader};
use ctdev_common::{POLICY_ID_GLOBAL, POLICY_MAP, POLICY_MAP_CAPACITY, PROGRAM_NAME};

use super::counters;
use super::pins::PinRoot;
use super::policy_map::PolicyMapError;

#[cfg(ctdev_embedded_ebpf)]
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(env!("CTDEV_EMBEDDED_EBPF"));
#[cfg(not(ctdev_embedded_ebpf))]
static EMBEDDED: &[u8] = &[];

/// Why the program could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// No object is embedded and none was given.
    #[error("this ctdev binary has no embedded eBPF object: build it with `cargo xtask build`, or pass --bpf-object / CTDEV_BPF_OBJECT")]
    NoObject,
    /// The object file could not be read.
    #[error("cannot read eBPF object {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// aya refused the object or the kernel refused the program or a map.
    #[error("loading the ctdev program for policy {policy_id}: {source}")]
    Load {
        /// The container's policy id.
        policy_id: u64,
        /// aya's error (verifier log included where the kernel gave one).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The object lacks the program or map ctdev expects.
    #[error("eBPF object has no {0}: was it built from this ctdev's ctdev-ebpf?")]
    Missing(&'static str),
    /// The pinned policy map is not the one this object expects.
    #[error(transparent)]
    PolicyMap(#[from] PolicyMapError),
}

/// The eBPF object to load: embedded or read from a file.
#[derive(Debug, Clone)]
pub struct ProgramObject {
    bytes: Cow<'static, [u8]>,
}

impl ProgramObject {
    /// The object from `path`, or the embedded one.
    pub fn new(path: Option<&Path>) -> Result<Self, ProgramError> {
        match path {
            Some(p) => std::fs::read(p)
                .map(|b| Self {
                    bytes: Cow::Owned(b),
                })
                .map_err(|source| ProgramError::Read {
                    path: p.to_path_buf(),
                    source,
                }),
            None if EMBEDDED.is_empty() => Err(ProgramError::NoObject),
            None => Ok(Self {
                bytes: Cow::Borrowed(EMBEDDED),
            }),
        }
    }

    /// Whether this binary carries the object.
    pub fn embedded() -> bool {
        !EMBEDDED.is_empty()
    }

    /// Loads one program instance for `policy_id`, opening (or creating and
    /// pinning) the shared policy map. The program is loaded, not attached.
    pub fn load_instance(&self, policy_id: u64, pins: &PinRoot) -> Result<Instance, ProgramError> {
        // Pins that exist must be ctdev's maps; aya would reuse any object found there.
        for (_, pin) in pins.map_pins() {
            if pin.exists() {
                counters::verify_any(pins, &pin)?;
            }
        }
        let load_err = |e: Box<dyn std::error::Error + Send + Sync>| ProgramError::Load {
            policy_id,
            source: e,
        };
        let mut loader = EbpfLoader::new();
        loader
            // The program uses no CO-RE relocations, so the kernel's BTF
            // (5+ MiB parsed on every load: most of an attach's time) is not
            // needed; the object's own BTF, which describes the maps, is
            // still loaded.
            .btf(None)
            .override_global(POLICY_ID_GLOBAL, &policy_id, true)
            .map_max_entries(POLICY_MAP, POLICY_MAP_CAPACITY);
        let map_pins = pins.map_pins();
        for (name, pin) in &map_pins {
            loader.map_pin_path(name, pin.as_path());
        }
        let mut ebpf = loader
            .load(&self.bytes)
            .map_err(|e| load_err(Box::new(e)))?;
        let prog: &mut CgroupDevice = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(ProgramError::Missing("cgroup/dev program ctdev_device"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| load_err(Box::new(e)))?;
        prog.load().map_err(|e| load_err(Box::new(e)))?;
        Ok(Instance { ebpf })
    }
}

/// A loaded (not yet attached) program instance.
pub struct Instance {
    ebpf: Ebpf,
}

impl Instance {
    /// The program's fd, for attaching.
    pub fn prog_fd(&self) -> Result<BorrowedFd<'_>, ProgramError> {
        let prog: &CgroupDevice = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(ProgramError::Missing("cgroup/dev program ctdev_device"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| ProgramError::Load {
                policy_id: 0,
                source: Box::new(e),
            })?;
        let fd = prog.fd().map_err(|e| ProgramError::Load {
            policy_id: 0,
            source: Box::new(e),
        })?;
        Ok(fd.as_fd())
    }

    /// The policy map this instance uses (the pinned one).
    pub fn policy_map_data(&self) -> Option<&MapData> {
        match self.ebpf.map(POLICY_MAP)? {
            aya::maps::Map::HashMap(data) => Some(data),
            _ => None,
        }
    }
}
