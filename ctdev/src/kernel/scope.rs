//! The scope program: fail-closed for a container from its first
//! instruction, before the container's own program is attached.
//!
//! One instance per container depth is loaded from the same object as the
//! container program (`ctdev_scope`, with `CTDEV_LEVEL` = the depth of the
//! containers it serves) and pinned at `<root>/scope-programs/level-N`. It
//! is linked (multi mode, like a container's link) to the *scope*: the
//! parent cgroup of the containers a daemon policy selects, pinned at
//! `<root>/scope-links/<scope cgroup id>`.
//!
//! For a task in a child of the scope it allows only what the scope's
//! default policy (`CTDEV_SCOPE_POLICY`, keyed like the policy map with the
//! scope's cgroup id) allows, unless the child is marked in
//! `CTDEV_SCOPE_DEFER`: then it allows and the child's own program alone
//! decides. The kernel runs every program from the task's cgroup to the
//! root and all must allow, so the scope program only ever narrows:
//!
//! - before the child's own program is attached: the default policy;
//! - while both are attached and the child is not marked yet: both (the
//!   narrower wins);
//! - once marked ([`mark`] after the child's link is attached and verified):
//!   the child's own policy, exactly (the mark is removed before that link
//!   is detached, see [`super::attachment::detach`]).
//!
//! ```text
//! <root>/CTDEV_SCOPE_POLICY        default entries per scope
//! <root>/CTDEV_SCOPE_DEFER         child cgroup id -> own policy / not selected
//! <root>/scope-programs/level-N    scope program instance for containers at depth N
//! <root>/scope-links/<scope id>    link of the scope program to the scope cgroup
//! ```

use std::collections::BTreeMap;
use std::fs::DirBuilder;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError, MapType};
use aya::programs::CgroupDevice;
use aya::EbpfLoader;
use ctdev_common::{
    LEVEL_GLOBAL, POLICY_MAP, POLICY_MAP_CAPACITY, SCOPE_DEFER_MAP, SCOPE_POLICY_MAP,
    SCOPE_PROGRAM_NAME,
};

use super::counters;
use super::loader::{ProgramError, ProgramObject};
use super::pins::PinRoot;
use super::policy_map::{self, is_missing_key, Change, PolicyMap, PolicyMapError};
use super::sys::{self, SysError, BPF_CGROUP_DEVICE, BPF_LINK_TYPE_CGROUP};
use crate::cgroup::Cgroup;
use crate::error::IoError;
use crate::rule::Rule;

pub use ctdev_common::{DEFER_NOT_SELECTED, DEFER_OWN_POLICY};

/// Why a scope program could not be loaded, attached or configured.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// Loading or pinning the program failed.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// A scope map could not be used.
    #[error(transparent)]
    Map(#[from] PolicyMapError),
    /// A bpf syscall failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// Something that is not ctdev's is pinned where a scope pin should be.
    #[error("{path} is not ctdev's scope {what}; refusing to touch it")]
    Foreign {
        path: PathBuf,
        /// What was expected there.
        what: &'static str,
    },
    /// The kernel attached the link somewhere else than asked.
    #[error("scope link for {cgroup} reports cgroup id {got}, expected {want}; detached it again")]
    WrongCgroup {
        /// The scope cgroup.
        cgroup: PathBuf,
        /// What the kernel reported.
        got: u64,
        /// The scope's id.
        want: u64,
    },
    /// A pin directory or pin could not be made or removed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Pin of the scope default policies.
pub fn policy_pin(pins: &PinRoot) -> PathBuf {
    pins.root().join(SCOPE_POLICY_MAP)
}

/// Pin of the defer marks.
pub fn defer_pin(pins: &PinRoot) -> PathBuf {
    pins.root().join(SCOPE_DEFER_MAP)
}

/// Directory of the scope program instances.
pub fn programs_dir(pins: &PinRoot) -> PathBuf {
    pins.root().join("scope-programs")
}

/// Directory of the scope link pins.
pub fn links_dir(pins: &PinRoot) -> PathBuf {
    pins.root().join("scope-links")
}

/// Link pin of the scope whose cgroup id is `scope_id`.
pub fn link_pin(pins: &PinRoot, scope_id: u64) -> PathBuf {
    links_dir(pins).join(scope_id.to_string())
}

fn make_dirs(pins: &PinRoot) -> Result<(), ScopeError> {
    let mut b = DirBuilder::new();
    b.recursive(true).mode(0o700);
    for d in [programs_dir(pins), links_dir(pins)] {
        b.create(&d).map_err(IoError::at("create directory", &d))?;
    }
    Ok(())
}

fn verify_defer_pin(path: &Path) -> Result<aya::maps::MapInfo, PolicyMapError> {
    policy_map::verify_map_pin(path, MapType::Hash, 8, 4)
}

/// A pinned scope program instance.
#[derive(Debug)]
pub struct ScopeProgram {
    fd: OwnedFd,
    /// Kernel program id.
    pub id: u32,
    /// Where it is pinned.
    pub pin: PathBuf,
}

impl ScopeProgram {
    /// The program's fd, for attaching.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The scope program instance serving containers at depth `level` (the
/// pinned one when it is ctdev's and uses the current scope maps, else a
/// new one; the scope maps are created and pinned on first use).
pub fn program_for_level(
    object: &ProgramObject,
    level: u32,
    pins: &PinRoot,
) -> Result<ScopeProgram, ScopeError> {
    make_dirs(pins)?;
    for (_, pin) in pins.map_pins() {
        if pin.exists() {
            counters::verify_any(pins, &pin)?;
        }
    }
    if policy_pin(pins).exists() {
        policy_map::verify_pin(&policy_pin(pins))?;
    }
    if defer_pin(pins).exists() {
        verify_defer_pin(&defer_pin(pins))?;
    }
    let pin = programs_dir(pins).join(format!("level-{level}"));
    if std::fs::symlink_metadata(&pin).is_ok() {
        match open_pinned(&pin, pins)? {
            Some(p) => return Ok(p),
            None => {
                tracing::info!(pin = %pin.display(), "replacing a stale scope program pin");
                std::fs::remove_file(&pin).map_err(IoError::at("remove", &pin))?;
            }
        }
    }
    let load_err = |e: Box<dyn std::error::Error + Send + Sync>| {
        ScopeError::Program(ProgramError::Load { source: e })
    };
    let mut loader = EbpfLoader::new();
    loader
        .btf(None)
        .override_global(LEVEL_GLOBAL, &level, true)
        .map_max_entries(POLICY_MAP, POLICY_MAP_CAPACITY);
    let mut map_pins: Vec<(&str, PathBuf)> = pins.map_pins().into_iter().collect();
    map_pins.push((SCOPE_POLICY_MAP, policy_pin(pins)));
    map_pins.push((SCOPE_DEFER_MAP, defer_pin(pins)));
    for (name, p) in &map_pins {
        loader.map_pin_path(name, p.as_path());
    }
    let mut ebpf = loader
        .load(object.bytes())
        .map_err(|e| load_err(Box::new(e)))?;
    let prog: &mut CgroupDevice = ebpf
        .program_mut(SCOPE_PROGRAM_NAME)
        .ok_or(ScopeError::Program(ProgramError::Missing(
            "cgroup/dev program ctdev_scope",
        )))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| load_err(Box::new(e)))?;
    prog.load().map_err(|e| load_err(Box::new(e)))?;
    prog.pin(&pin).map_err(|e| {
        ScopeError::Program(ProgramError::Pin {
            path: pin.clone(),
            source: Box::new(e),
        })
    })?;
    open_pinned(&pin, pins)?.ok_or_else(|| ScopeError::Foreign {
        path: pin.clone(),
        what: "program",
    })
}

/// Opens the scope program at `pin`: `None` when it is ctdev's but uses
/// other (older) scope maps.
fn open_pinned(pin: &Path, pins: &PinRoot) -> Result<Option<ScopeProgram>, ScopeError> {
    let foreign = || ScopeError::Foreign {
        path: pin.to_path_buf(),
        what: "program",
    };
    let info = aya::programs::ProgramInfo::from_pin(pin).map_err(|_| foreign())?;
    if info.name_as_str() != Some(SCOPE_PROGRAM_NAME) {
        return Err(foreign());
    }
    let used: Vec<u32> = info.map_ids().ok().flatten().unwrap_or_default();
    let current = [policy_pin(pins), defer_pin(pins)]
        .iter()
        .map(|p| aya::maps::MapInfo::from_pin(p).map(|m| m.id()))
        .collect::<Result<Vec<u32>, _>>();
    match current {
        Ok(ids) if ids.iter().all(|id| used.contains(id)) => {}
        _ => return Ok(None),
    }
    let fd = sys::obj_get(pin).map_err(|_| foreign())?;
    Ok(Some(ScopeProgram {
        fd,
        id: info.id(),
        pin: pin.to_path_buf(),
    }))
}

/// What [`attach`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeAttach {
    /// The scope was already linked to this program.
    Unchanged,
    /// A new link was made (and an older one, if any, replaced after it).
    Linked,
}

/// Links `program` to the scope cgroup and pins the link. An existing live
/// link to the same program is kept; a link to another (stale) program is
/// replaced only after the new one is attached, so the scope is never
/// uncovered.
pub fn attach(
    program: &ScopeProgram,
    scope: &Cgroup,
    pins: &PinRoot,
) -> Result<ScopeAttach, ScopeError> {
    make_dirs(pins)?;
    let pin = link_pin(pins, scope.id);
    let old = open_link(&pin)?;
    if let Some((_, info)) = &old {
        if info.prog_id == program.id && info.cgroup_id == scope.id {
            return Ok(ScopeAttach::Unchanged);
        }
    }
    let cgroup_fd = scope.open().map_err(|e| SysError {
        call: "BPF_LINK_CREATE",
        what: scope.dir.display().to_string(),
        source: io::Error::other(e.to_string()),
    })?;
    let link = sys::link_create_cgroup_device(program.fd(), cgroup_fd.as_fd(), &scope.dir)?;
    let info = sys::link_info(link.as_fd(), &scope.dir)?;
    if info.cgroup_id != scope.id {
        return Err(ScopeError::WrongCgroup {
            cgroup: scope.dir.clone(),
            got: info.cgroup_id,
            want: scope.id,
        });
    }
    if let Some((old_fd, old_info)) = old {
        if old_info.prog_id != 0 {
            let _ = sys::link_detach(old_fd.as_fd(), &pin);
        }
        remove_pin(&pin)?;
    }
    sys::obj_pin(link.as_fd(), &pin)?;
    Ok(ScopeAttach::Linked)
}

fn open_link(pin: &Path) -> Result<Option<(OwnedFd, sys::LinkInfo)>, ScopeError> {
    if std::fs::symlink_metadata(pin).is_err() {
        return Ok(None);
    }
    let foreign = || ScopeError::Foreign {
        path: pin.to_path_buf(),
        what: "link",
    };
    let fd = sys::obj_get(pin).map_err(|_| foreign())?;
    let info = sys::link_info(fd.as_fd(), pin).map_err(|_| foreign())?;
    if info.link_type != BPF_LINK_TYPE_CGROUP || info.attach_type != BPF_CGROUP_DEVICE {
        return Err(foreign());
    }
    Ok(Some((fd, info)))
}

fn remove_pin(pin: &Path) -> Result<(), ScopeError> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IoError::new("remove", pin, source).into()),
    }
}

/// Scope ids with a link pinned under this pin root.
pub fn linked_scopes(pins: &PinRoot) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(links_dir(pins)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Unlinks the scope program from scope `scope_id` and removes its default
/// policy. A link that is gone already is fine.
pub fn detach(pins: &PinRoot, scope_id: u64) -> Result<(), ScopeError> {
    let pin = link_pin(pins, scope_id);
    if let Some((fd, info)) = open_link(&pin)? {
        if info.prog_id != 0 {
            if let Err(e) = sys::link_detach(fd.as_fd(), &pin) {
                if e.errno() != Some(libc::ENOLINK) {
                    return Err(e.into());
                }
            }
        }
        remove_pin(&pin)?;
    }
    set_default(pins, scope_id, &[])
}

/// Sets the default policy of scope `scope_id` to exactly `rules` (none:
/// deny every device).
pub fn set_default(pins: &PinRoot, scope_id: u64, rules: &[Rule]) -> Result<(), ScopeError> {
    let path = policy_pin(pins);
    if !path.exists() {
        if rules.is_empty() {
            return Ok(());
        }
        return Err(PolicyMapError::Missing { path }.into());
    }
    let mut map = PolicyMap::open(&path)?;
    let before = map.plain_entries_of(scope_id)?;
    let want: BTreeMap<_, u32> = rules
        .iter()
        .flat_map(|r| r.keys(scope_id).map(move |k| (k, r.access.bits())))
        .collect();
    let mut changes: Vec<Change> = want.iter().map(|(k, v)| (*k, Some(*v))).collect();
    changes.extend(
        before
            .keys()
            .filter(|k| !want.contains_key(k))
            .map(|k| (*k, None)),
    );
    map.apply_plain(&changes)?;
    Ok(())
}

/// The defer marks, opened.
pub struct DeferMarks {
    path: PathBuf,
    map: HashMap<MapData, u64, u32>,
}

impl DeferMarks {
    /// Opens the pinned marks; `None` when no scope program was ever set up
    /// in this pin root (nothing to mark).
    pub fn open(pins: &PinRoot) -> Result<Option<Self>, ScopeError> {
        let path = defer_pin(pins);
        if !path.exists() {
            return Ok(None);
        }
        verify_defer_pin(&path)?;
        let op = |source| PolicyMapError::Op {
            path: path.clone(),
            op: "open",
            source,
        };
        let data = MapData::from_pin(&path).map_err(op)?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(op)?;
        Ok(Some(Self { path, map }))
    }

    fn err(&self, op: &'static str) -> impl FnOnce(MapError) -> ScopeError + '_ {
        move |source| {
            ScopeError::Map(PolicyMapError::Op {
                path: self.path.clone(),
                op,
                source,
            })
        }
    }

    /// Marks child cgroup `id` (`DEFER_OWN_POLICY` or `DEFER_NOT_SELECTED`).
    pub fn mark(&mut self, id: u64, kind: u32) -> Result<(), ScopeError> {
        if self.get(id)? == Some(kind) {
            return Ok(());
        }
        self.map.insert(id, kind, 0).map_err(self.err("update"))
    }

    /// Removes the mark of `id` (none is fine).
    pub fn unmark(&mut self, id: u64) -> Result<(), ScopeError> {
        match self.map.remove(&id) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(self.err("delete")(e)),
        }
    }

    /// The mark of `id`.
    pub fn get(&self, id: u64) -> Result<Option<u32>, ScopeError> {
        match self.map.get(&id, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(self.err("lookup")(e)),
        }
    }

    /// Every mark.
    pub fn all(&self) -> Result<BTreeMap<u64, u32>, ScopeError> {
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(self.err("iterate"))?;
            out.insert(k, v);
        }
        Ok(out)
    }
}

/// Marks `policy_id` as having its own policy, if scope marks exist in this
/// pin root (called once its link is attached and verified).
pub fn mark_own_policy(pins: &PinRoot, policy_id: u64) -> Result<(), ScopeError> {
    match DeferMarks::open(pins)? {
        Some(mut m) => m.mark(policy_id, DEFER_OWN_POLICY),
        None => Ok(()),
    }
}

/// Removes the mark of `policy_id`, if any (called before its link is
/// detached: the scope's default covers it again from then on).
pub fn unmark(pins: &PinRoot, policy_id: u64) -> Result<(), ScopeError> {
    match DeferMarks::open(pins)? {
        Some(mut m) => m.unmark(policy_id),
        None => Ok(()),
    }
}
