//! Loading ctdev's cgroup/dev program: one instance per container.
//!
//! Every instance runs the same instructions; what differs is the two maps
//! of its container (rule table, counters), referenced by the instructions
//! themselves. The object is parsed and relocated once per process and
//! pin root (a [`Template`]); an instance is then one `BPF_PROG_LOAD` of
//! the template's instructions with the container's two map fds patched in,
//! so attaching needs no ELF parsing and no helper call per access. The
//! object is embedded in the binary when `cargo xtask build` built it;
//! otherwise it is read from `--bpf-object` / `CTDEV_BPF_OBJECT`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aya::EbpfLoader;
use ctdev_common::{COUNTERS_MAP, POLICY_MAP, POLICY_MAP_CAPACITY, PROGRAM_NAME, TABLE_MAP};

use super::container_maps::{ContainerMaps, ContainerMapsError};
use super::counters;
use super::pins::PinRoot;
use super::policy_map::PolicyMapError;
use super::sys;

#[cfg(ctdev_embedded_ebpf)]
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(env!("CTDEV_EMBEDDED_EBPF"));
#[cfg(not(ctdev_embedded_ebpf))]
static EMBEDDED: &[u8] = &[];

/// [`ctdev_common::object_hash`] of the embedded object, computed by the
/// build script (`None` without one).
pub(crate) fn embedded_hash() -> Option<u64> {
    #[cfg(ctdev_embedded_ebpf)]
    {
        u64::from_str_radix(env!("CTDEV_EMBEDDED_EBPF_HASH"), 16).ok()
    }
    #[cfg(not(ctdev_embedded_ebpf))]
    {
        None
    }
}

/// Why the program could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// No object is embedded and none was given.
    #[error("this ctdev binary has no embedded eBPF object: build it with `cargo xtask build`, or pass --bpf-object / CTDEV_BPF_OBJECT")]
    NoObject,
    /// The object file could not be read.
    #[error("eBPF object: {0}")]
    Read(#[from] crate::error::IoError),
    /// The file given as the object is not an eBPF object (checked before
    /// anything is touched).
    #[error("{path} is not an eBPF object ctdev can load: {message}")]
    NotAnObject {
        /// The file given (`--bpf-object`, `CTDEV_BPF_OBJECT`).
        path: PathBuf,
        /// What the ELF/BPF parser said.
        message: String,
    },
    /// aya refused the object or the kernel refused the program or a map.
    #[error("loading the ctdev program: {source}")]
    Load {
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
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The pinned policy map is not the one this object expects.
    #[error(transparent)]
    PolicyMap(#[from] PolicyMapError),
    /// The container's own maps could not be made or opened.
    #[error(transparent)]
    ContainerMaps(#[from] ContainerMapsError),
}

/// The eBPF object to load: embedded or read from a file.
#[derive(Debug, Clone)]
pub struct ProgramObject {
    bytes: Cow<'static, [u8]>,
}

/// Placeholder map fds the template's instructions carry until an
/// instance patches in its container's maps (never real fds: far above
/// any fd limit in use).
const TABLE_PLACEHOLDER: i32 = 0x3ead_0001;
const COUNTERS_PLACEHOLDER: i32 = 0x3ead_0002;
/// Stands for the maps only other programs of the object use (the scope
/// program's maps and its load-time constant): `ctdev_device` never refers
/// to them, and if it did the kernel would refuse the load (no such fd).
const UNUSED_PLACEHOLDER: i32 = 0x3ead_0003;
/// `BPF_LD | BPF_DW | BPF_IMM`: the first half of a 64-bit immediate load.
const LD_IMM64: u8 = 0x18;
/// `BPF_PSEUDO_MAP_FD` in the source register of an `LD_IMM64`.
const PSEUDO_MAP_FD: u8 = 1;

/// The object, relocated against one pin root's shared maps: ready to be
/// instantiated for a container with a single `BPF_PROG_LOAD`.
#[derive(Debug)]
pub struct Template {
    insns: Vec<super::raw_program::Insn>,
    license: CString,
    /// Ids of the shared maps it was relocated against (to notice new pins).
    map_ids: Vec<u32>,
    /// The shared maps, held open while the template lives.
    _shared: Vec<OwnedFd>,
}

/// The template of the last pin root used in this process.
static TEMPLATE: Mutex<Option<(PathBuf, Arc<Template>)>> = Mutex::new(None);

impl ProgramObject {
    /// The object from `path`, or the embedded one.
    pub fn new(path: Option<&Path>) -> Result<Self, ProgramError> {
        match path {
            Some(p) => {
                let bytes = std::fs::read(p)
                    .map_err(|source| crate::error::IoError::new("read", p, source))?;
                // Parsed once here, so a file that is no eBPF object is
                // refused before a pin root or lock is made.
                aya_obj::Object::parse(&bytes).map_err(|e| ProgramError::NotAnObject {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?;
                Ok(Self {
                    bytes: Cow::Owned(bytes),
                })
            }
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

    /// Whether this is the object the binary carries (the same bytes for
    /// the whole process).
    pub fn is_embedded(&self) -> bool {
        matches!(self.bytes, Cow::Borrowed(_))
    }

    /// Whether this binary carries the object.
    pub fn embedded() -> bool {
        !EMBEDDED.is_empty()
    }

    /// The program instance of the container `policy_id`: creates and
    /// pins its table and counters when it has none, and loads the
    /// template with them. The shared maps are created and pinned on first
    /// use. Attaching it is then one link.
    pub fn program_for_container(
        &self,
        policy_id: u64,
        pins: &PinRoot,
    ) -> Result<ContainerProgram, ProgramError> {
        let template = self.template(pins)?;
        let (maps, created) = match ContainerMaps::open(pins, policy_id)? {
            Some(m) => (m, false),
            None => (ContainerMaps::create(pins, policy_id)?, true),
        };
        let Some((table, counters)) = maps.fds() else {
            return Err(ProgramError::Missing(
                "per-container maps (this container is on the shared program)",
            ));
        };
        let loaded = template.instance(table, counters).and_then(|fd| {
            let id = sys::prog_id(fd.as_fd(), &pins.table(policy_id)).map_err(|e| {
                ProgramError::Load {
                    source: Box::new(e),
                }
            })?;
            Ok((fd, id))
        });
        let (fd, id) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                // The kernel refused the program: maps made for it alone
                // are not left pinned for nobody.
                if created {
                    if let Err(unpin) = ContainerMaps::unpin(pins, policy_id) {
                        tracing::warn!(policy_id, "cannot unpin the maps of a failed load: {unpin}");
                    }
                }
                return Err(e);
            }
        };
        Ok(ContainerProgram {
            fd,
            id,
            pin: pins.table(policy_id),
        })
    }

    /// The relocated template for `pins`: cached per process, rebuilt when
    /// the shared map pins changed (an earlier root was removed and made again).
    pub fn template(&self, pins: &PinRoot) -> Result<Arc<Template>, ProgramError> {
        // Pins that exist must be ctdev's maps; aya would reuse any object found there.
        let mut ids = Vec::new();
        let mut all = true;
        for (_, pin) in pins.map_pins() {
            if pin.exists() {
                counters::verify_any(pins, &pin)?;
                match aya::maps::MapInfo::from_pin(&pin) {
                    Ok(info) => ids.push(info.id()),
                    Err(_) => all = false,
                }
            } else {
                all = false;
            }
        }
        let mut cache = TEMPLATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((root, t)) = cache.as_ref() {
            if all && root == pins.root() && t.map_ids == ids {
                return Ok(t.clone());
            }
        }
        if !all {
            self.create_shared_maps(pins)?;
        }
        let t = Arc::new(self.relocate(pins)?);
        *cache = Some((pins.root().to_path_buf(), t.clone()));
        Ok(t)
    }

    /// Creates (and pins) whichever shared maps are missing, through aya.
    fn create_shared_maps(&self, pins: &PinRoot) -> Result<(), ProgramError> {
        let load_err =
            |e: Box<dyn std::error::Error + Send + Sync>| ProgramError::Load { source: e };
        let mut loader = EbpfLoader::new();
        loader
            .btf(None)
            .map_max_entries(POLICY_MAP, POLICY_MAP_CAPACITY);
        let map_pins = pins.map_pins();
        for (name, map_pin) in &map_pins {
            loader.map_pin_path(name, map_pin.as_path());
        }
        // Creates the missing pinned maps (and two throw-away container maps).
        loader
            .load(&self.bytes)
            .map_err(|e| load_err(Box::new(e)))?;
        Ok(())
    }

    /// Parses the object and relocates it against the pinned shared maps,
    /// with placeholders for the container's own two.
    fn relocate(&self, pins: &PinRoot) -> Result<Template, ProgramError> {
        self.relocate_program(
            pins,
            PROGRAM_NAME,
            &[
                (TABLE_MAP, TABLE_PLACEHOLDER),
                (COUNTERS_MAP, COUNTERS_PLACEHOLDER),
            ],
        )
    }

    /// Parses the object and relocates the program `program` against the
    /// pinned shared maps; the maps named in `own` get the given fds
    /// (placeholders or real fds the caller keeps open), any other map the
    /// program does not use an unusable placeholder.
    pub(crate) fn relocate_program(
        &self,
        pins: &PinRoot,
        program: &'static str,
        own: &[(&str, i32)],
    ) -> Result<Template, ProgramError> {
        let load_err =
            |e: Box<dyn std::error::Error + Send + Sync>| ProgramError::Load { source: e };
        let mut obj = aya_obj::Object::parse(&self.bytes).map_err(|e| load_err(Box::new(e)))?;
        let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
        let mut shared = Vec::new();
        let mut map_ids = Vec::new();
        let mut fds = Vec::new();
        for (name, _) in &maps {
            let fd = match own.iter().find(|(n, _)| n == name) {
                Some((_, fd)) => *fd,
                None => {
                    let Some(pin) = pins
                        .map_pins()
                        .into_iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, p)| p)
                    else {
                        fds.push(UNUSED_PLACEHOLDER);
                        continue;
                    };
                    let fd = sys::obj_get(&pin).map_err(|e| load_err(Box::new(e)))?;
                    let raw = fd.as_raw_fd();
                    shared.push(fd);
                    raw
                }
            };
            fds.push(fd);
        }
        for (_, pin) in pins.map_pins() {
            if let Ok(info) = aya::maps::MapInfo::from_pin(&pin) {
                map_ids.push(info.id());
            }
        }
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(
            maps.iter()
                .zip(&fds)
                .map(|((name, map), fd)| (name.as_str(), *fd, map)),
            &text_sections,
        )
        .map_err(|e| load_err(Box::new(e)))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| load_err(Box::new(e)))?;
        let program = obj.programs.get(program).ok_or(ProgramError::Missing(
            "cgroup/dev program (ctdev_device or ctdev_shared)",
        ))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or(ProgramError::Missing(
                "cgroup/dev program (ctdev_device or ctdev_shared)",
            ))?;
        let insns = function
            .instructions
            .iter()
            .map(|i| super::raw_program::Insn {
                code: i.code,
                regs: (i.src_reg() << 4) | i.dst_reg(),
                off: i.off,
                imm: i.imm,
            })
            .collect();
        Ok(Template {
            insns,
            license: obj.license.clone(),
            map_ids,
            _shared: shared,
        })
    }
}

impl Template {
    /// The relocated instructions and the object's license.
    pub(crate) fn parts(&self) -> (&[super::raw_program::Insn], &std::ffi::CStr) {
        (&self.insns, &self.license)
    }

    /// Loads one instance with the container's maps patched in.
    pub fn instance(
        &self,
        table: BorrowedFd<'_>,
        counters: BorrowedFd<'_>,
    ) -> Result<OwnedFd, ProgramError> {
        let mut insns = self.insns.clone();
        for insn in insns.iter_mut() {
            if insn.code == LD_IMM64 && insn.regs >> 4 == PSEUDO_MAP_FD {
                if insn.imm == TABLE_PLACEHOLDER {
                    insn.imm = table.as_raw_fd();
                } else if insn.imm == COUNTERS_PLACEHOLDER {
                    insn.imm = counters.as_raw_fd();
                }
            }
        }
        super::raw_program::load_device_program(PROGRAM_NAME, &insns, &self.license).map_err(|e| {
            ProgramError::Load {
                source: Box::new(e),
            }
        })
    }
}

/// Removes the pinned program instances of earlier ctdev versions (one per
/// cgroup depth; links hold what is still attached). A pin that is not
/// ctdev's program is left alone and reported.
pub(crate) fn remove_program_pins(pins: &PinRoot) -> Result<(), ProgramError> {
    let Ok(entries) = std::fs::read_dir(pins.programs_dir()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let pin = entry.path();
        let ours = sys::obj_get(&pin)
            .and_then(|fd| sys::prog_id_and_name(fd.as_fd(), &pin.display().to_string()))
            .is_ok_and(|(_, name)| name == PROGRAM_NAME);
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

/// A container's program instance, loaded (not pinned: its link keeps it).
#[derive(Debug)]
pub struct ContainerProgram {
    fd: OwnedFd,
    /// Kernel program id.
    pub id: u32,
    /// The container's table pin.
    pub pin: PathBuf,
}

impl ContainerProgram {
    /// The program's fd, for attaching.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
