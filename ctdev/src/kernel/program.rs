//! Loading ctdev's cgroup/dev program: one pinned instance per cgroup depth.
//!
//! Each instance carries the depth it serves as a load-time constant (the
//! program takes the task's ancestor at that depth as the policy id) and
//! shares the pinned maps with all other instances. The object is
//! embedded in the binary when `cargo xtask build` built it; otherwise it is
//! read from `--bpf-object` / `CTDEV_BPF_OBJECT`.

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::programs::CgroupDevice;
use aya::EbpfLoader;
use ctdev_common::{LEVEL_GLOBAL, POLICY_MAP, POLICY_MAP_CAPACITY, PROGRAM_NAME};

use super::counters;
use super::pins::PinRoot;
use super::policy_map::PolicyMapError;
use super::sys;

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
    #[error("loading the ctdev program for cgroup depth {level}: {source}")]
    Load {
        /// The cgroup depth the instance serves.
        level: u32,
        /// aya's error (verifier log included where the kernel gave one).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The object lacks the program or map ctdev expects.
    #[error("eBPF object has no {0}: was it built from this ctdev's ctdev-ebpf?")]
    Missing(&'static str),
    /// Something that is not ctdev's program is pinned where its program should be.
    #[error("{path} is not a ctdev program; refusing to use or touch it")]
    Foreign {
        /// The pin path.
        path: PathBuf,
    },
    /// Pinning (or replacing) the program failed.
    #[error("cannot pin the ctdev program at {path}: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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

    /// The object's bytes (the scope program, [`super::scope`], is loaded
    /// from the same object).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether this binary carries the object.
    pub fn embedded() -> bool {
        !EMBEDDED.is_empty()
    }

    /// The program instance serving containers at cgroup depth `level`:
    /// the pinned one when it is ctdev's and uses the current shared maps,
    /// otherwise a new one, loaded (creating and pinning the shared maps on
    /// first use) and pinned at `programs/level-N`. Attaching a container
    /// then only needs a link to it: no program load per container.
    pub fn program_for_level(
        &self,
        level: u32,
        pins: &PinRoot,
    ) -> Result<LevelProgram, ProgramError> {
        // Pins that exist must be ctdev's maps; aya would reuse any object found there.
        for (_, pin) in pins.map_pins() {
            if pin.exists() {
                counters::verify_any(pins, &pin)?;
            }
        }
        let pin = pins.program(level);
        if std::fs::symlink_metadata(&pin).is_ok() {
            match open_pinned(&pin, pins)? {
                Some(program) => return Ok(program),
                None => {
                    // An earlier ctdev's instance (other maps): containers
                    // linked to it keep it alive; new ones get a fresh one.
                    tracing::info!(pin = %pin.display(), "replacing a stale program pin");
                    std::fs::remove_file(&pin).map_err(|source| ProgramError::Pin {
                        path: pin.clone(),
                        source: Box::new(source),
                    })?;
                }
            }
        }
        let load_err =
            |e: Box<dyn std::error::Error + Send + Sync>| ProgramError::Load { level, source: e };
        let mut loader = EbpfLoader::new();
        loader
            // The program uses no CO-RE relocations: no kernel BTF needed.
            .btf(None)
            .override_global(LEVEL_GLOBAL, &level, true)
            .map_max_entries(POLICY_MAP, POLICY_MAP_CAPACITY);
        let map_pins = pins.map_pins();
        for (name, map_pin) in &map_pins {
            loader.map_pin_path(name, map_pin.as_path());
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
        prog.pin(&pin).map_err(|e| ProgramError::Pin {
            path: pin.clone(),
            source: Box::new(e),
        })?;
        // The pin keeps the program; this process only needs an fd.
        open_pinned(&pin, pins)?.ok_or_else(|| ProgramError::Foreign { path: pin.clone() })
    }
}

/// Removes the pinned program instances (after the last container is gone;
/// links hold what is still attached). A pin that is not ctdev's program is
/// left alone and reported.
pub fn remove_program_pins(pins: &PinRoot) -> Result<(), ProgramError> {
    let Ok(entries) = std::fs::read_dir(pins.programs_dir()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let pin = entry.path();
        let ours = aya::programs::ProgramInfo::from_pin(&pin)
            .ok()
            .is_some_and(|i| i.name_as_str() == Some(PROGRAM_NAME));
        if !ours {
            return Err(ProgramError::Foreign { path: pin });
        }
        std::fs::remove_file(&pin).map_err(|source| ProgramError::Pin {
            path: pin.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

/// A pinned program instance serving one cgroup depth.
#[derive(Debug)]
pub struct LevelProgram {
    fd: OwnedFd,
    /// Kernel program id.
    pub id: u32,
    /// Where it is pinned.
    pub pin: PathBuf,
}

impl LevelProgram {
    /// The program's fd, for attaching.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens the program pinned at `pin`: `Some` if it is ctdev's and uses the
/// current shared maps, `None` if it is ctdev's but stale, an error if it
/// is not ctdev's (never touched).
fn open_pinned(pin: &Path, pins: &PinRoot) -> Result<Option<LevelProgram>, ProgramError> {
    let foreign = || ProgramError::Foreign {
        path: pin.to_path_buf(),
    };
    let info = aya::programs::ProgramInfo::from_pin(pin).map_err(|_| foreign())?;
    if info.name_as_str() != Some(PROGRAM_NAME) {
        return Err(foreign());
    }
    let used: Vec<u32> = info.map_ids().ok().flatten().unwrap_or_default();
    let current = pins
        .map_pins()
        .iter()
        .map(|(_, p)| aya::maps::MapInfo::from_pin(p).map(|m| m.id()))
        .collect::<Result<Vec<u32>, _>>();
    match current {
        Ok(ids) if ids.iter().all(|id| used.contains(id)) => {}
        _ => return Ok(None),
    }
    let fd = sys::obj_get(pin).map_err(|_| foreign())?;
    Ok(Some(LevelProgram {
        fd,
        id: info.id(),
        pin: pin.to_path_buf(),
    }))
}
