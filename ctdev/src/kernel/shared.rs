//! The shared device program: ONE `ctdev_shared` program per pin root and
//! ctdev build, loaded and verified once, pinned, and attached to every
//! container's cgroup. Each container's policy and counters live in cgroup
//! local storage (`BPF_MAP_TYPE_CGROUP_STORAGE` holding a
//! [`SharedTable`], `BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE` holding
//! [`ContainerCounters`]), keyed by the cgroup id (a `u64` key, so one
//! storage per cgroup whatever the attach type).
//!
//! Layout under the pin root: `shared-<object hash>/` holds `program`,
//! `storage`, `counters`, `stub` and `links/<policy id>`. The directory is
//! named after a hash of the eBPF object, so an upgraded ctdev with another
//! layout never mixes its program with an older one's maps.
//!
//! Kernel facts this relies on (kernel/bpf/local_storage.c, cgroup.c):
//! - a cgroup's storage is allocated zero-filled when the first program
//!   using the map is attached to it, found again by later attaches, and
//!   freed only with the cgroup (not at detach);
//! - userspace can update it only once it exists (ENOENT before); an
//!   update allocates a new buffer, copies the value and swaps the pointer,
//!   so a program run sees the old value or the new one, never a mix;
//! - storage elements cannot be deleted.
//!
//! Attach sequence (no window in which the container runs with an empty
//! policy, and no spurious EPERM while a runtime's program is still
//! attached): (1) attach the `stub` (a `cgroup/sock_create` program that
//! only references the storage map and allows every socket) through a
//! link held by this process: the kernel allocates the container's
//! storage; (2) write the container's table; (3) attach the shared device
//! program through a link, which finds the storage already written;
//! (4) pin the link; (5) close the stub's link (the kernel detaches it).
//! A crash anywhere closes the stub link (the kernel detaches it with the
//! process's fds); before (3) nothing of ctdev decides devices, after it
//! the written policy does. A storage that was never written (someone
//! attaches the pinned program by hand, or a future path skips (2))
//! denies every access.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use ctdev_common::{
    build_table, table_items, ContainerCounters, PolicyKey, SharedTable, TableItem,
    SHARED_PROGRAM_NAME, STATE_WRITTEN, STORAGE_COUNTERS_MAP, STORAGE_MAP, TABLE_CAP,
};

use super::container_maps::create_map_with;
use super::loader::{ProgramError, ProgramObject};
use super::pins::PinRoot;
use super::raw_program::{load_device_program, load_program, Insn};
use super::sys::{self, SysError};
use crate::cgroup::Cgroup;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_TYPE_CGROUP_STORAGE: u32 = 19;
const BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: u32 = 21;
const BPF_PROG_TYPE_CGROUP_SOCK: u32 = 9;
/// `BPF_CGROUP_INET_SOCK_CREATE`: the stub's attach type.
const BPF_CGROUP_INET_SOCK_CREATE: u32 = 2;
/// `BPF_LD | BPF_DW | BPF_IMM` with `BPF_PSEUDO_MAP_FD`.
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// Why the shared program could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// A bpf syscall failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// Loading or relocating the program failed.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// A pin under the shared directory is not what ctdev put there.
    #[error("{path} is not ctdev's shared program ({found}); refusing to use it")]
    Foreign {
        /// The pin path.
        path: PathBuf,
        /// What was found.
        found: String,
    },
    /// A file operation on the pin directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The policy does not fit a container table (large policies keep the
    /// per-container program for now).
    #[error("policy {policy_id} has {entries} entries; the shared program's table holds {cap}")]
    TooLarge {
        /// The container.
        policy_id: u64,
        /// Entries asked for.
        entries: usize,
        /// [`TABLE_CAP`].
        cap: usize,
    },
    /// The program pin no longer goes with the storage maps opened before
    /// it (the shared program was unpinned and loaded again in between).
    #[error("{path} does not use the storage maps opened beside it (map ids {want:?}; the program uses {found:?}): the shared program was replaced meanwhile; nothing was attached, run the command again")]
    Replaced {
        /// The program pin.
        path: PathBuf,
        /// The storage maps' ids.
        want: Vec<u32>,
        /// The ids of the maps the pinned program uses.
        found: Vec<u32>,
    },
    /// The cgroup directory is another cgroup than the one resolved.
    #[error("{cgroup} is cgroup id {got} now, not {want}: it was removed and created again; nothing was attached")]
    WrongCgroup {
        /// The cgroup directory.
        cgroup: PathBuf,
        /// The id of the cgroup opened.
        got: u64,
        /// The id computed.
        want: u64,
    },
    /// The cgroup already has the kernel's maximum of device programs.
    #[error("{cgroup} already has {max} device programs attached, the kernel's limit per cgroup (BPF_CGROUP_MAX_PROGS): detach one (see `bpftool cgroup show {cgroup}`); nothing was attached or pinned")]
    TooManyPrograms {
        /// The cgroup directory.
        cgroup: PathBuf,
        /// The kernel's limit.
        max: u32,
    },
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}
sys::assert_attr!(ElemAttr);
const _: () = {
    assert!(std::mem::size_of::<ElemAttr>() == 32);
    assert!(std::mem::offset_of!(ElemAttr, key) == 8);
    assert!(std::mem::offset_of!(ElemAttr, value) == 16);
    assert!(std::mem::offset_of!(ElemAttr, flags) == 24);
};

fn elem(
    cmd: libc::c_long,
    call: &'static str,
    map: BorrowedFd<'_>,
    key: Option<&u64>,
    value: *mut u8,
    what: &Path,
) -> Result<bool, SysError> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.map(|k| k as *const u64 as u64).unwrap_or(0),
        value: value as u64,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_MAP_*_ELEM prefix; `key` points to a live
    // u64 (the maps' key size) or is null (first key); `value` points to a
    // live buffer of the map's value size (per-CPU: rounded size times the
    // possible CPUs) for lookups and updates, or to a u64 for next-key;
    // `map` is borrowed, so open.
    match unsafe { sys::bpf(cmd, &mut attr) } {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(source) => Err(SysError {
            call,
            what: what.display().to_string(),
            source,
        }),
    }
}

fn possible_cpus() -> Result<usize, SharedError> {
    aya::util::nr_cpus().map_err(|(what, source)| SharedError::Io {
        op: "reading",
        path: PathBuf::from(what),
        source,
    })
}

/// The shared program and its two storage maps, opened.
#[derive(Debug)]
pub struct SharedProgram {
    dir: PathBuf,
    /// The program and its kernel id (the same for every container),
    /// opened and checked on first use: reading and writing policies needs
    /// only the storage maps (two bpf() calls fewer per command).
    prog: std::sync::OnceLock<(OwnedFd, u32)>,
    stub: std::sync::OnceLock<OwnedFd>,
    storage: OwnedFd,
    counters: OwnedFd,
    /// Kernel ids of `storage` and `counters`: the program and the stub,
    /// opened later from their pins, must use these very maps.
    map_ids: (u32, u32),
    cpus: usize,
}

/// A container attached to the shared program.
#[derive(Debug)]
pub struct SharedLink {
    /// The link pin.
    pub pin: PathBuf,
    /// The program id (the shared program's).
    pub prog_id: u32,
    /// Whether the container was attached already (only its table was written).
    pub already_attached: bool,
}

impl SharedProgram {
    /// The pin directory of `object`'s shared program under `pins`.
    pub fn dir_for(object: &ProgramObject, pins: &PinRoot) -> PathBuf {
        // The embedded object's hash is computed at build time: hashing its
        // ~170 KB took ~0.3 ms of every attach (the NRI plugin's starts).
        // An object read from a file (`--bpf-object`) is read again by
        // every attach; the hash of the last one is kept with its bytes
        // (comparing them is ~20 times faster than hashing them again).
        static FILE_HASH: std::sync::Mutex<Option<(Vec<u8>, u64)>> =
            std::sync::Mutex::new(None);
        let embedded = object.is_embedded().then(super::loader::embedded_hash).flatten();
        let hash = if let Some(hash) = embedded {
            hash
        } else {
            let mut last = FILE_HASH.lock().unwrap_or_else(|p| p.into_inner());
            match &*last {
                Some((bytes, hash)) if bytes.as_slice() == object.bytes() => *hash,
                _ => {
                    let hash = ctdev_common::object_hash(object.bytes());
                    *last = Some((object.bytes().to_vec(), hash));
                    hash
                }
            }
        };
        dir_named(pins, hash)
    }

    /// Opens the pinned shared program, or loads, verifies and pins it
    /// (and creates its storage maps) when this pin root has none for this
    /// object yet. The caller holds the pin-root lock.
    pub fn open_or_load(object: &ProgramObject, pins: &PinRoot) -> Result<Self, SharedError> {
        let dir = Self::dir_for(object, pins);
        if dir.join("program").exists() {
            return Self::open(&dir);
        }
        Self::load(object, pins, &dir)
    }

    /// Opens the shared program pinned in `dir`: its storage maps, checked
    /// now; the program itself is opened and checked when first needed
    /// ([`SharedProgram::prog_id`], attach).
    pub fn open(dir: &Path) -> Result<Self, SharedError> {
        // Each map pin is opened once; its type and sizes are checked on
        // that fd (one BPF_OBJ_GET and one BPF_OBJ_GET_INFO_BY_FD each).
        let open_map = |name: &str, ty: u32, size: usize| -> Result<(OwnedFd, u32), SharedError> {
            let pin = dir.join(name);
            let foreign = |found: String| SharedError::Foreign {
                path: pin.clone(),
                found,
            };
            let fd = sys::obj_get(&pin).map_err(|e| foreign(e.to_string()))?;
            let info = sys::map_info(fd.as_fd(), &pin).map_err(|e| foreign(e.to_string()))?;
            if info.map_type != ty || info.value_size as usize != size || info.key_size != 8 {
                return Err(foreign(format!(
                    "map type {} with {}-byte values",
                    info.map_type, info.value_size
                )));
            }
            Ok((fd, info.id))
        };
        let (storage, storage_id) = open_map(
            "storage",
            BPF_MAP_TYPE_CGROUP_STORAGE,
            std::mem::size_of::<SharedTable>(),
        )?;
        let (counters, counters_id) = open_map(
            "counters",
            BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
            std::mem::size_of::<ContainerCounters>(),
        )?;
        Ok(Self {
            prog: std::sync::OnceLock::new(),
            // Opened by the first attach (reading and writing policies
            // never needs it).
            stub: std::sync::OnceLock::new(),
            storage,
            counters,
            map_ids: (storage_id, counters_id),
            dir: dir.to_path_buf(),
            cpus: possible_cpus()?,
        })
    }

    /// The program pinned as `program` and its id, opened on first use and
    /// refused when it is not ctdev's shared program using the storage
    /// maps this handle opened (the pins were replaced since: a program
    /// reading other maps than the ones written here would judge with
    /// tables nobody wrote).
    fn program(&self) -> Result<(BorrowedFd<'_>, u32), SharedError> {
        if let Some((fd, id)) = self.prog.get() {
            return Ok((fd.as_fd(), *id));
        }
        let program = self.dir.join("program");
        let prog = sys::obj_get(&program)?;
        let (prog_id, name, maps) =
            sys::prog_id_name_maps(prog.as_fd(), &program.display().to_string()).map_err(
                |e| SharedError::Foreign {
                    path: program.clone(),
                    found: e.to_string(),
                },
            )?;
        if name != SHARED_PROGRAM_NAME {
            return Err(SharedError::Foreign {
                path: program,
                found: format!("program {name:?}"),
            });
        }
        self.check_maps(&program, &maps, &[self.map_ids.0, self.map_ids.1])?;
        let (fd, id) = self.prog.get_or_init(|| (prog, prog_id));
        Ok((fd.as_fd(), *id))
    }

    /// Refuses a program pinned at `pin` whose maps (`maps`) lack one of
    /// `want`, the storage maps this handle opened.
    fn check_maps(&self, pin: &Path, maps: &[u32], want: &[u32]) -> Result<(), SharedError> {
        if want.iter().all(|id| maps.contains(id)) {
            return Ok(());
        }
        Err(SharedError::Replaced {
            path: pin.to_path_buf(),
            want: want.to_vec(),
            found: maps.to_vec(),
        })
    }

    /// Kernel id of the shared program (the same for every container).
    pub fn prog_id(&self) -> Result<u32, SharedError> {
        Ok(self.program()?.1)
    }

    /// The stub program (see [`Self::attach`]), opened on first use and
    /// refused, as the program is, when it does not use this handle's
    /// storage map (it would give the container another map's storage).
    fn stub(&self) -> Result<BorrowedFd<'_>, SharedError> {
        if let Some(fd) = self.stub.get() {
            return Ok(fd.as_fd());
        }
        let pin = self.dir.join("stub");
        let fd = sys::obj_get(&pin)?;
        let (_, _, maps) = sys::prog_id_name_maps(fd.as_fd(), &pin.display().to_string())?;
        self.check_maps(&pin, &maps, &[self.map_ids.0])?;
        Ok(self.stub.get_or_init(|| fd).as_fd())
    }

    fn load(object: &ProgramObject, pins: &PinRoot, dir: &Path) -> Result<Self, SharedError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| SharedError::Io { op, path, source }
        };
        // The shared hash maps, ring buffer and hit counters (created and
        // pinned on first use, as for the per-container programs).
        object.template(pins)?;
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        std::fs::create_dir_all(pins.links_dir()).map_err(io("creating", &pins.links_dir()))?;
        let storage = create_map_with(
            BPF_MAP_TYPE_CGROUP_STORAGE,
            8,
            std::mem::size_of::<SharedTable>(),
            0,
            0,
            "ctdev_storage",
        )?;
        let counters = create_map_with(
            BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
            8,
            std::mem::size_of::<ContainerCounters>(),
            0,
            0,
            "ctdev_st_cnt",
        )?;
        let template = object.relocate_program(
            pins,
            SHARED_PROGRAM_NAME,
            &[
                (STORAGE_MAP, storage.as_raw_fd()),
                (STORAGE_COUNTERS_MAP, counters.as_raw_fd()),
            ],
        )?;
        let (insns, license) = template.parts();
        let prog = load_device_program(SHARED_PROGRAM_NAME, insns, license)?;
        let stub = load_program(
            BPF_PROG_TYPE_CGROUP_SOCK,
            BPF_CGROUP_INET_SOCK_CREATE,
            "ctdev_st_stub",
            &stub_insns(storage.as_raw_fd()),
            c"GPL",
        )?;
        // The program pin goes last: its presence says the set is complete.
        for (fd, name) in [
            (storage.as_fd(), "storage"),
            (counters.as_fd(), "counters"),
            (stub.as_fd(), "stub"),
            (prog.as_fd(), "program"),
        ] {
            let pin = dir.join(name);
            match std::fs::remove_file(&pin) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing", &pin)(e))
                }
                _ => {}
            }
            sys::obj_pin(fd, &pin)?;
        }
        let prog_id = sys::prog_id(prog.as_fd(), &dir.join("program"))?;
        let map_ids = (
            sys::map_info(storage.as_fd(), &dir.join("storage"))?.id,
            sys::map_info(counters.as_fd(), &dir.join("counters"))?.id,
        );
        tracing::info!(prog_id, dir = %dir.display(), "loaded and pinned the shared device program");
        Ok(Self {
            dir: dir.to_path_buf(),
            prog: std::sync::OnceLock::from((prog, prog_id)),
            stub: std::sync::OnceLock::from(stub),
            storage,
            counters,
            map_ids,
            cpus: possible_cpus()?,
        })
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The link pin of `policy_id`: in the pin root's `links/`, beside the
    /// per-container programs' links, so `list`, `detach` and takeover find
    /// every container the same way.
    pub fn link_pin(&self, policy_id: u64) -> PathBuf {
        PinRoot::new(self.dir.parent().unwrap_or(&self.dir)).link(policy_id)
    }

    /// The table holding `entries` (keys of any policy id) for `policy_id`,
    /// written and ready to store. Hit counters are numbered in key order;
    /// `totals` (the container's current per-entry totals) become their bases.
    pub fn table_for(
        policy_id: u64,
        entries: &BTreeMap<PolicyKey, u32>,
        totals: Option<&[u64; TABLE_CAP]>,
    ) -> Result<SharedTable, SharedError> {
        let too_large = || SharedError::TooLarge {
            policy_id,
            entries: entries.len(),
            cap: TABLE_CAP,
        };
        if entries.len() > TABLE_CAP {
            return Err(too_large());
        }
        let mut items: Vec<TableItem> = entries
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let base = totals.map(|t| t[i]).unwrap_or(0);
                (*k, *v, i as u32, base)
            })
            .collect();
        let table = build_table(&mut items).ok_or_else(too_large)?;
        Ok(SharedTable {
            state: STATE_WRITTEN,
            policy_id,
            table,
            ..SharedTable::default()
        })
    }

    /// Replaces the whole stored value of `policy_id` (one update: the
    /// program sees the old value or this one). `Ok(false)`: the cgroup has
    /// no storage (nothing of this program was ever attached to it).
    pub fn write(&self, policy_id: u64, table: &SharedTable) -> Result<bool, SharedError> {
        let mut value = *table;
        Ok(elem(
            BPF_MAP_UPDATE_ELEM,
            "BPF_MAP_UPDATE_ELEM",
            self.storage.as_fd(),
            Some(&policy_id),
            std::ptr::addr_of_mut!(value).cast(),
            &self.dir.join("storage"),
        )?)
    }

    /// The stored value of `policy_id`, if the cgroup has storage.
    pub fn read(&self, policy_id: u64) -> Result<Option<SharedTable>, SharedError> {
        let mut value = SharedTable::default();
        Ok(self.read_into(policy_id, &mut value)?.then_some(value))
    }

    /// [`SharedProgram::read`] into `value` (a caller reading many
    /// containers reuses one buffer); `false`: no storage for `policy_id`.
    pub fn read_into(&self, policy_id: u64, value: &mut SharedTable) -> Result<bool, SharedError> {
        Ok(elem(
            BPF_MAP_LOOKUP_ELEM,
            "BPF_MAP_LOOKUP_ELEM",
            self.storage.as_fd(),
            Some(&policy_id),
            std::ptr::from_mut(value).cast(),
            &self.dir.join("storage"),
        )?)
    }

    /// The stored value of `policy_id` if userspace has written a policy
    /// into it (`STATE_WRITTEN`): a storage the kernel allocated and
    /// nobody wrote, or one cleared at detach, is `None`.
    pub fn read_written(&self, policy_id: u64) -> Result<Option<SharedTable>, SharedError> {
        Ok(self
            .read(policy_id)?
            .filter(|t| t.state & STATE_WRITTEN != 0))
    }

    /// The policy of `policy_id` as entries (`None`: no written storage).
    pub fn entries_of(
        &self,
        policy_id: u64,
    ) -> Result<Option<BTreeMap<PolicyKey, u32>>, SharedError> {
        Ok(self.read_written(policy_id)?.map(|t| {
                table_items(&t.table, policy_id)
                    .map(|(k, a, _, _)| (k, a))
                    .collect()
            }))
    }

    /// The counters of `policy_id` summed over CPUs (`None`: no storage).
    pub fn counters(&self, policy_id: u64) -> Result<Option<ContainerCounters>, SharedError> {
        // The kernel copies one value per possible CPU, each rounded up to
        // 8 bytes: exactly an array of ContainerCounters (all u64, repr(C)).
        let mut buf = vec![ContainerCounters::ZERO; self.cpus];
        let found = elem(
            BPF_MAP_LOOKUP_ELEM,
            "BPF_MAP_LOOKUP_ELEM",
            self.counters.as_fd(),
            Some(&policy_id),
            buf.as_mut_ptr().cast(),
            &self.dir.join("counters"),
        )?;
        if !found {
            return Ok(None);
        }
        let mut total = ContainerCounters::ZERO;
        for cpu in &buf {
            total.add(cpu);
        }
        Ok(Some(total))
    }

    fn zero_counters(&self, policy_id: u64) -> Result<(), SharedError> {
        let mut buf = vec![ContainerCounters::ZERO; self.cpus];
        elem(
            BPF_MAP_UPDATE_ELEM,
            "BPF_MAP_UPDATE_ELEM",
            self.counters.as_fd(),
            Some(&policy_id),
            buf.as_mut_ptr().cast(),
            &self.dir.join("counters"),
        )?;
        Ok(())
    }

    /// Every cgroup id with storage in this program's map (a typed query of
    /// the map's keys: no listing of the programs on the system).
    pub fn storage_ids(&self) -> Result<Vec<u64>, SharedError> {
        let mut ids = Vec::new();
        let mut key: Option<u64> = None;
        loop {
            let mut next = 0u64;
            let found = elem(
                BPF_MAP_GET_NEXT_KEY,
                "BPF_MAP_GET_NEXT_KEY",
                self.storage.as_fd(),
                key.as_ref(),
                std::ptr::addr_of_mut!(next).cast(),
                &self.dir.join("storage"),
            )?;
            if !found {
                break;
            }
            ids.push(next);
            key = Some(next);
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The containers this program serves (written storage and a link
    /// pin), with their tables: one lookup per container.
    pub fn attached(&self) -> Result<Vec<(u64, SharedTable)>, SharedError> {
        let mut out = Vec::new();
        for id in self.storage_ids()? {
            if let Some(t) = self.read(id)? {
                if t.state & STATE_WRITTEN != 0 && self.link_pin(id).exists() {
                    out.push((id, t));
                }
            }
        }
        Ok(out)
    }

    /// Every cgroup id with a written storage, linked or not: a storage
    /// whose link pin is gone (removed by hand, or an attach killed before
    /// the pin) still holds a policy nothing enforces, which `list` reports
    /// as orphaned, as it does a per-container table without a link pin.
    pub fn written_ids(&self) -> Result<Vec<u64>, SharedError> {
        let mut out = Vec::new();
        for id in self.storage_ids()? {
            if self.read_written(id)?.is_some() {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The ids of [`Self::attached`].
    pub fn attached_ids(&self) -> Result<Vec<u64>, SharedError> {
        Ok(self.attached()?.into_iter().map(|(id, _)| id).collect())
    }

    /// Attaches the shared program to `cgroup` with the policy `table`
    /// (see the module's attach sequence). On a cgroup this program is
    /// attached to already, only the table is written.
    pub fn attach(
        &self,
        cgroup: &Cgroup,
        pins: &PinRoot,
        table: &SharedTable,
    ) -> Result<SharedLink, SharedError> {
        let id = cgroup.id;
        let (prog, prog_id) = self.program()?;
        let mut table = *table;
        table.policy_id = id;
        table.state |= STATE_WRITTEN;
        let pin = self.link_pin(id);
        if let Ok(link) = sys::obj_get(&pin) {
            let info = sys::link_info(link.as_fd(), &pin)?;
            if info.prog_id == prog_id && info.cgroup_id == id {
                self.write(id, &table)?;
                return Ok(SharedLink {
                    pin,
                    prog_id,
                    already_attached: true,
                });
            }
            // A defunct link (its cgroup was removed and the id reused), or
            // another program's: unpinned first, as `detach` does.
            let _ = std::fs::remove_file(&pin);
            let _ = sys::link_detach(link.as_fd(), &pin);
        }
        let (cgroup_fd, opened_id) = cgroup.open_with_id().map_err(|e| SysError {
            call: "BPF_LINK_CREATE",
            what: cgroup.dir.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        // The links go on the cgroup this fd is: checked here, before
        // anything is attached (reading the link's info afterwards waits
        // for the kernel's cgroup_mutex).
        if opened_id != id {
            return Err(SharedError::WrongCgroup {
                cgroup: cgroup.dir.clone(),
                got: opened_id,
                want: id,
            });
        }
        // (1) The stub makes the kernel allocate the container's storage.
        let stub = sys::link_create_cgroup(
            self.stub()?,
            cgroup_fd.as_fd(),
            BPF_CGROUP_INET_SOCK_CREATE,
            &cgroup.dir,
        )?;
        crate::failpoint!("shared.after_stub");
        // Counters left by an earlier attach to this cgroup start from zero.
        if self.counters(id)?.is_some() {
            self.zero_counters(id)?;
        }
        // (2) The policy, before any program of ours decides.
        self.write(id, &table)?;
        crate::failpoint!("shared.after_write");
        // (3) The shared program, finding its storage written.
        let link =
            match sys::link_create_cgroup_device(prog, cgroup_fd.as_fd(), &cgroup.dir)
            {
                Ok(link) => link,
                Err(e) => {
                    // Nothing of ours decides: the written storage goes too,
                    // so no policy without a link is left behind.
                    if let Err(clear) = self.write(id, &SharedTable::default()) {
                        tracing::warn!(cgroup = %cgroup.dir.display(), "cannot clear the storage: {clear}");
                    }
                    return Err(match e.errno() {
                        Some(libc::E2BIG) => SharedError::TooManyPrograms {
                            cgroup: cgroup.dir.clone(),
                            max: 64,
                        },
                        _ => e.into(),
                    });
                }
            };
        crate::failpoint!("shared.after_link");
        crate::failpoint!("attach.after_link_create");
        // (4) Pinned: it outlives this process.
        sys::obj_pin(link.as_fd(), &pin)?;
        crate::failpoint!("shared.after_pin");
        crate::failpoint!("attach.after_pin");
        // (5) The stub goes (closing its only link detaches it).
        drop(stub);
        // A scope program above may now leave the decision to this one.
        if let Err(e) = super::scope::mark_own_policy(pins, id) {
            tracing::warn!(cgroup = %cgroup.dir.display(), "scope default stays in force: {e}");
        }
        Ok(SharedLink {
            pin,
            prog_id,
            already_attached: false,
        })
    }

    /// Detaches the shared program from the container `policy_id` and
    /// clears its storage (so a later attach starts from nothing). A scope
    /// program above covers the container again first. `Ok(false)`: it was
    /// not attached.
    pub fn detach(&self, pins: &PinRoot, policy_id: u64) -> Result<bool, SharedError> {
        let pin = self.link_pin(policy_id);
        let Ok(link) = sys::obj_get(&pin) else {
            return Ok(false);
        };
        if let Err(e) = super::scope::unmark(pins, policy_id) {
            tracing::warn!(policy_id, "cannot remove the scope mark: {e}");
        }
        // The pin first: a pin ctdev leaves stands for an attached link
        // (`attachment::pinned`); killed before the detach, closing this
        // process's fd, the link's last reference, detaches it.
        std::fs::remove_file(&pin).map_err(|source| SharedError::Io {
            op: "removing",
            path: pin.clone(),
            source,
        })?;
        if let Err(e) = sys::link_detach(link.as_fd(), &pin) {
            if e.errno() != Some(libc::ENOLINK) {
                return Err(e.into());
            }
        }
        // Storage outlives the detach (the kernel frees it with the cgroup).
        self.write(policy_id, &SharedTable::default())?;
        Ok(true)
    }

    /// The program's fd (tests attach it by hand to check the zero storage).
    pub fn fd(&self) -> Result<BorrowedFd<'_>, SharedError> {
        Ok(self.program()?.0)
    }
}

/// The identity of a program pin (device and inode of the pin file): a
/// program unpinned and loaded again at the same path gets a new inode, so
/// a cached open of the old one is never used for it.
fn pin_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.join("program"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// One cached open: the pin directory, the program pin's identity when it
/// was opened, and the open program.
type Opened = (PathBuf, (u64, u64), std::sync::Arc<SharedProgram>);

/// Shared programs opened by this process, by pin directory.
static OPENED: std::sync::Mutex<Vec<Opened>> = std::sync::Mutex::new(Vec::new());

/// The shared program pinned in `dir`, opened once per process while its
/// program pin stays the same file (one stat per call after the first
/// open, instead of six bpf() calls); `None` when nothing is pinned there.
fn opened(dir: &Path) -> Result<Option<std::sync::Arc<SharedProgram>>, SharedError> {
    let Some(identity) = pin_identity(dir) else {
        // Unpinned: the cached open (which keeps the program and its maps
        // alive in the kernel) goes too.
        forget_opened(|d| d == dir);
        return Ok(None);
    };
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, p)) = opened.iter().find(|(d, i, _)| d == dir && *i == identity) {
        return Ok(Some(p.clone()));
    }
    opened.retain(|(d, _, _)| d != dir);
    let p = std::sync::Arc::new(SharedProgram::open(dir)?);
    opened.push((dir.to_path_buf(), identity, p.clone()));
    Ok(Some(p))
}

/// Drops the cached opens whose pin directory `gone` says is gone.
fn forget_opened(gone: impl Fn(&Path) -> bool) {
    OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(d, _, _)| !gone(d));
}

impl SharedProgram {
    /// Whether `object`'s shared program is pinned under `pins` (then
    /// [`SharedProgram::cached`] opens it, loads nothing): one stat, and
    /// the cached open checked or made.
    pub fn pinned(object: &ProgramObject, pins: &PinRoot) -> Result<bool, SharedError> {
        Ok(opened(&Self::dir_for(object, pins))?.is_some())
    }

    /// [`SharedProgram::open_or_load`] through the per-process cache: a
    /// caller attaching many containers (the library, the daemon, the NRI
    /// plugin) opens the pinned program once. The caller holds the
    /// pin-root lock.
    pub fn cached(
        object: &ProgramObject,
        pins: &PinRoot,
    ) -> Result<std::sync::Arc<Self>, SharedError> {
        let dir = Self::dir_for(object, pins);
        if let Some(p) = opened(&dir)? {
            return Ok(p);
        }
        let p = std::sync::Arc::new(Self::load(object, pins, &dir)?);
        if let Some(identity) = pin_identity(&dir) {
            let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
            opened.retain(|(d, _, _)| *d != dir);
            opened.push((dir, identity, p.clone()));
        }
        Ok(p)
    }
}

/// Every shared program pinned under `pins` (one per ctdev build that used
/// this pin root), opened once per process.
pub fn all(pins: &PinRoot) -> Result<Vec<std::sync::Arc<SharedProgram>>, SharedError> {
    let mut dirs = Vec::new();
    match std::fs::read_dir(pins.root()) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_str().is_some_and(|n| n.starts_with("shared-")) {
                    dirs.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            forget_opened(|d| d.starts_with(pins.root()));
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(SharedError::Io {
                op: "reading",
                path: pins.root().to_path_buf(),
                source,
            })
        }
    }
    dirs.sort();
    // Programs of this root no longer pinned are not kept open.
    forget_opened(|d| d.parent() == Some(pins.root()) && dirs.binary_search_by(|x| x.as_path().cmp(d)).is_err());
    let mut out = Vec::new();
    for dir in dirs {
        if let Some(p) = opened(&dir)? {
            out.push(p);
        }
    }
    Ok(out)
}

/// The pin directory of the shared program of the object with this hash.
fn dir_named(pins: &PinRoot, hash: u64) -> PathBuf {
    pins.root().join(format!("shared-{hash:016x}"))
}

/// The shared program whose storage holds `policy_id`'s written policy.
pub fn find_for(
    pins: &PinRoot,
    policy_id: u64,
) -> Result<Option<std::sync::Arc<SharedProgram>>, SharedError> {
    Ok(find_written(pins, policy_id)?.map(|(p, _)| p))
}

/// [`find_for`] with the stored value it found (one lookup: callers that
/// read the policy next use this copy).
pub fn find_written(
    pins: &PinRoot,
    policy_id: u64,
) -> Result<Option<(std::sync::Arc<SharedProgram>, SharedTable)>, SharedError> {
    // This build's own program first (its directory name is known without
    // reading the object): where every container attached by this build
    // is, found without listing the pin root. Then every shared program.
    if let Some(hash) = super::loader::embedded_hash() {
        if let Some(p) = opened(&dir_named(pins, hash))? {
            if let Some(t) = p.read_written(policy_id)? {
                return Ok(Some((p, t)));
            }
        }
    }
    for p in all(pins)? {
        if let Some(t) = p.read_written(policy_id)? {
            return Ok(Some((p, t)));
        }
    }
    Ok(None)
}

/// Clears `policy_id`'s storage in every shared program (after its detach).
pub fn clear(pins: &PinRoot, policy_id: u64) -> Result<(), SharedError> {
    for p in all(pins)? {
        p.write(policy_id, &SharedTable::default())?;
    }
    Ok(())
}

/// The containers on any shared program under `pins`.
pub fn attached_ids(pins: &PinRoot) -> Result<Vec<u64>, SharedError> {
    let mut ids = Vec::new();
    for p in all(pins)? {
        ids.extend(p.attached_ids()?);
    }
    Ok(ids)
}

/// The policy ids with a written storage in any shared program under
/// `pins` (see [`SharedProgram::written_ids`]).
pub fn written_ids(pins: &PinRoot) -> Result<Vec<u64>, SharedError> {
    let mut ids = Vec::new();
    for p in all(pins)? {
        ids.extend(p.written_ids()?);
    }
    Ok(ids)
}

/// Removes the shared programs' pins (when no container uses them any more).
pub fn remove_pins(pins: &PinRoot) -> Result<(), SharedError> {
    let Ok(entries) = std::fs::read_dir(pins.root()) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if !e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("shared-"))
        {
            continue;
        }
        let dir = e.path();
        for name in ["program", "stub", "counters", "storage"] {
            let pin = dir.join(name);
            match std::fs::remove_file(&pin) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(SharedError::Io {
                        op: "removing",
                        path: pin,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        std::fs::remove_dir(&dir).map_err(|source| SharedError::Io {
            op: "removing",
            path: dir.clone(),
            source,
        })?;
    }
    OPENED.lock().unwrap_or_else(|p| p.into_inner()).clear();
    Ok(())
}

/// The stub: `r1 = &storage map; r0 = 1; exit`. Referencing the map is
/// enough for the kernel to give the cgroup a storage at attach; returning
/// 1 lets every socket be created, so it changes nothing for the container.
fn stub_insns(storage_fd: i32) -> Vec<Insn> {
    let mut insns = vec![
        Insn {
            code: LD_IMM64,
            regs: (PSEUDO_MAP_FD << 4) | 1,
            off: 0,
            imm: storage_fd,
        },
        Insn {
            code: 0,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    insns.extend(Insn::ret(1));
    insns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_hash_is_stable_and_distinguishes() {
        use ctdev_common::object_hash;
        assert_eq!(object_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(object_hash(b"a"), object_hash(b"b"));
        // The build script's hash of the embedded object is the one the
        // object's bytes give at run time (so both name the same pins).
        if let Some(built) = super::super::loader::embedded_hash() {
            let object = ProgramObject::new(None).expect("embedded object");
            assert_eq!(built, object_hash(object.bytes()));
        }
    }

    #[test]
    fn table_for_marks_written_and_refuses_too_many() {
        let mut e = BTreeMap::new();
        e.insert(PolicyKey::new(0, ctdev_common::DEV_CHAR, 1, 3), 6);
        let t = SharedProgram::table_for(7, &e, None).expect("fits");
        assert_eq!(t.state & STATE_WRITTEN, STATE_WRITTEN);
        assert_eq!(t.policy_id, 7);
        let big: BTreeMap<_, _> = (0..=TABLE_CAP as u32)
            .map(|i| (PolicyKey::new(0, ctdev_common::DEV_CHAR, 1, i), 6))
            .collect();
        assert!(matches!(
            SharedProgram::table_for(7, &big, None),
            Err(SharedError::TooLarge { .. })
        ));
    }
}
