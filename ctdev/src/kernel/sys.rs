//! The few `bpf(2)` commands aya 0.14 does not expose for cgroup device
//! programs: creating, pinning, opening and force-detaching a bpf link, link
//! info, and querying the programs attached to a cgroup.
//!
//! Every wrapper returns a [`SysError`] naming the command and the object it
//! worked on, so an operator can tell which step failed.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `BPF_CGROUP_DEVICE` attach type.
pub const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_QUERY_EFFECTIVE`: include programs inherited from ancestors.
pub const BPF_F_QUERY_EFFECTIVE: u32 = 1;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Compile-time checks that a hand-written kernel struct has the kernel's
/// layout: its size, and each field's offset. `like G: [a, b]`: fields at
/// the offsets of the same-named fields of `G`, from aya-obj's bindings
/// generated from the kernel's uapi headers ([`aya_obj::generated`]);
/// `f @ N`: a field inside an anonymous union there, at the offset given by
/// `include/uapi/linux/bpf.h`. A mismatch fails the build.
macro_rules! assert_abi {
    ($t:ty, size $size:expr,
        like $gen:ty: [$($same:ident),* $(,)?]
        $(, $field:ident @ $off:expr)* $(,)?) => {
        const _: () = {
            assert!(::std::mem::size_of::<$t>() == $size);
            $(assert!(
                ::std::mem::offset_of!($t, $same) == ::std::mem::offset_of!($gen, $same)
            );)*
            $(assert!(::std::mem::offset_of!($t, $field) == $off);)*
        };
    };
}
pub(crate) use assert_abi;

/// A `bpf_attr` prefix: never larger than the kernel's `union bpf_attr`
/// (the kernel then checks that the bytes past it are zero).
macro_rules! assert_attr {
    ($t:ty) => {
        const _: () = assert!(
            ::std::mem::size_of::<$t>() <= ::std::mem::size_of::<::aya_obj::generated::bpf_attr>()
        );
    };
}
pub(crate) use assert_attr;

use aya_obj::generated as uapi;
use std::mem::offset_of;

/// A failed `bpf(2)` command, with the object it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("bpf({call}) on {what} failed: {source}")]
pub struct SysError {
    /// The bpf command, e.g. `BPF_LINK_CREATE`.
    pub call: &'static str,
    /// What it was applied to (a pin path, a cgroup, a link id).
    pub what: String,
    /// The kernel's error.
    #[source]
    pub source: io::Error,
}

impl SysError {
    fn new(call: &'static str, what: impl Into<String>, source: io::Error) -> Self {
        Self {
            call,
            what: what.into(),
            source,
        }
    }

    /// The errno the kernel returned, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Issues one bpf command with `attr` (a `#[repr(C)]` prefix of `union bpf_attr`).
///
/// # Safety
///
/// - `T` must be laid out as the prefix of `union bpf_attr` that `cmd`
///   reads (the structs here assert their size and field offsets at
///   compile time), with every byte the kernel reads initialised (padding
///   fields spelled out and zeroed).
/// - Every pointer `attr` carries as a `u64` (a path, a buffer, an id
///   array) must point to memory that stays valid, and writable where the
///   kernel writes, for the whole call, at least as large as the length
///   field that goes with it says (`info_len`, `prog_cnt`, `count`, ...).
/// - Every file descriptor in `attr` must be open for the whole call.
pub(crate) unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised, writable #[repr(C)] struct whose
    // size we pass, so the kernel reads and writes at most that many bytes of
    // it; what it reaches through pointers inside is the caller's contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Issues a bpf command that returns a new file descriptor (only those:
/// the result is adopted as an owned fd).
///
/// # Safety
///
/// As for [`bpf`]; besides, `cmd` must be a command whose non-negative
/// result is a new file descriptor (`BPF_MAP_CREATE`, `BPF_PROG_LOAD`,
/// `BPF_OBJ_GET`, `BPF_LINK_CREATE`, `BPF_*_GET_FD_BY_ID`), which the
/// returned [`OwnedFd`] then owns.
pub(crate) unsafe fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: the caller upholds `bpf`'s contract and names a command that
    // returns a new fd.
    unsafe { bpf(cmd, attr) }.map(|ret| {
        // SAFETY: `cmd` returned a new file descriptor that nobody else owns.
        unsafe { OwnedFd::from_raw_fd(ret as i32) }
    })
}

/// The kernel id of the program behind `prog`.
pub fn prog_id(prog: BorrowedFd<'_>, what: &Path) -> Result<u32, SysError> {
    prog_id_and_name(prog, &what.display().to_string()).map(|(id, _)| id)
}

/// Where `id` and `name` (`BPF_OBJ_NAME_LEN` bytes) sit in `struct bpf_prog_info`.
const PROG_INFO_ID: usize = offset_of!(uapi::bpf_prog_info, id);
const PROG_INFO_NAME: usize = offset_of!(uapi::bpf_prog_info, name);
const PROG_INFO_NAME_LEN: usize = 16;
const _: () = assert!(PROG_INFO_NAME + PROG_INFO_NAME_LEN <= 256);

/// The kernel id and the name (empty when it has none) of the program
/// behind `prog`: one `BPF_OBJ_GET_INFO_BY_FD`. (aya's `ProgramInfo` would
/// first run its feature probes, a dozen program and BTF loads, to learn
/// whether the kernel names programs; every kernel ctdev runs on does.)
pub fn prog_id_and_name(prog: BorrowedFd<'_>, what: &str) -> Result<(u32, String), SysError> {
    let mut info = [0u8; 256];
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the BPF_OBJ_GET_INFO_BY_FD prefix; `info` is a live,
    // writable buffer of `info_len` bytes; `prog` is open (borrowed).
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }
        .map_err(|e| SysError::new("BPF_OBJ_GET_INFO_BY_FD", what, e))?;
    let mut id = [0u8; 4];
    id.copy_from_slice(&info[PROG_INFO_ID..PROG_INFO_ID + 4]);
    let name = &info[PROG_INFO_NAME..PROG_INFO_NAME + PROG_INFO_NAME_LEN];
    let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok((
        u32::from_ne_bytes(id),
        String::from_utf8_lossy(&name[..len]).into_owned(),
    ))
}

/// The kernel id, the name and the ids of the maps the program behind
/// `prog` uses: one `BPF_OBJ_GET_INFO_BY_FD` (a second when it uses more
/// maps than the first call had room for).
pub fn prog_id_name_maps(
    prog: BorrowedFd<'_>,
    what: &str,
) -> Result<(u32, String, Vec<u32>), SysError> {
    let mut ids = vec![0u32; 16];
    loop {
        // SAFETY: `bpf_prog_info` is plain integers and arrays of them; all
        // zeroes is a valid value (what the kernel expects in unused fields).
        let mut info: uapi::bpf_prog_info = unsafe { std::mem::zeroed() };
        info.nr_map_ids = ids.len() as u32;
        info.map_ids = ids.as_mut_ptr() as u64;
        let mut attr = InfoAttr {
            bpf_fd: prog.as_raw_fd() as u32,
            info_len: std::mem::size_of::<uapi::bpf_prog_info>() as u32,
            info: std::ptr::addr_of_mut!(info) as u64,
        };
        // SAFETY: `attr` is the BPF_OBJ_GET_INFO_BY_FD prefix; `info` is a
        // live, writable `bpf_prog_info` of `info_len` bytes whose `map_ids`
        // points to a live buffer of `nr_map_ids` u32s; `prog` is open.
        unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }
            .map_err(|e| SysError::new("BPF_OBJ_GET_INFO_BY_FD", what, e))?;
        let used = info.nr_map_ids as usize;
        if used > ids.len() {
            ids = vec![0u32; used];
            continue;
        }
        ids.truncate(used);
        let name: Vec<u8> = info
            .name
            .iter()
            .map(|c| *c as u8)
            .take_while(|b| *b != 0)
            .collect();
        return Ok((info.id, String::from_utf8_lossy(&name).into_owned(), ids));
    }
}

/// The name of the program with kernel id `id` (empty when it has none):
/// two bpf() calls (`BPF_PROG_GET_FD_BY_ID`, `BPF_OBJ_GET_INFO_BY_FD`),
/// whatever the number of programs loaded on the system.
pub fn prog_name_by_id(id: u32) -> Result<String, SysError> {
    let prog = prog_fd_by_id(id)?;
    prog_id_and_name(prog.as_fd(), &format!("program {id}")).map(|(_, name)| name)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}
assert_attr!(LinkCreateAttr);
assert_abi! {
    LinkCreateAttr, size 48,
    like uapi::bpf_attr__bindgen_ty_14: [
        attach_type, flags,
    ],
    prog_fd @ 0,
    target_fd @ 4,
}

/// Attaches `prog` to the cgroup `cgroup` through a new bpf link.
///
/// A cgroup link is always attached in multi mode: other programs on the
/// cgroup (the runtime's) stay attached and are all consulted.
pub fn link_create_cgroup_device(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    cgroup_desc: &Path,
) -> Result<OwnedFd, SysError> {
    link_create_cgroup(prog, cgroup, BPF_CGROUP_DEVICE, cgroup_desc)
}

/// Attaches `prog` to the cgroup `cgroup` for `attach_type` through a new
/// bpf link (multi mode).
pub fn link_create_cgroup(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    cgroup_desc: &Path,
) -> Result<OwnedFd, SysError> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_LINK_CREATE prefix (no pointers); both fds
    // are borrowed, so open; BPF_LINK_CREATE returns a new link fd.
    unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
        .map_err(|e| SysError::new("BPF_LINK_CREATE", cgroup_desc.display().to_string(), e))
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}
assert_attr!(ObjAttr);
assert_abi! {
    ObjAttr, size 24,
    like uapi::bpf_attr__bindgen_ty_5: [
        pathname, bpf_fd, file_flags, path_fd,
    ]
}

/// Pins a bpf object (here: a link) at `path` on bpffs. The pin is created
/// with mode 0600 by the kernel; it fails if `path` exists.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<(), SysError> {
    let what = || path.display().to_string();
    let cpath = c_path(path).map_err(|e| SysError::new("BPF_OBJ_PIN", what(), e))?;
    let mut attr = ObjAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_OBJ_* prefix; `pathname` points into
    // `cpath`, a NUL-terminated string alive until the call returns; `fd`
    // is borrowed, so open.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr) }
        .map(|_| ())
        .map_err(|e| SysError::new("BPF_OBJ_PIN", what(), e))
}

/// Whether `fd` is a bpf link, from the name of its anonymous inode
/// (`/proc/self/fd/N` reads `anon_inode:bpf-link`): one `readlink`, which
/// unlike `BPF_OBJ_GET_INFO_BY_FD` on a cgroup link takes no cgroup lock.
/// `None` when `/proc` cannot tell.
pub fn fd_is_bpf_link(fd: BorrowedFd<'_>) -> Option<bool> {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    Some(target.as_os_str() == "anon_inode:bpf-link")
}

/// Opens the bpf object pinned at `path`.
pub fn obj_get(path: &Path) -> Result<OwnedFd, SysError> {
    let what = || path.display().to_string();
    let cpath = c_path(path).map_err(|e| SysError::new("BPF_OBJ_GET", what(), e))?;
    let mut attr = ObjAttr {
        pathname: cpath.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_OBJ_* prefix; `pathname` points into
    // `cpath`, alive until the call returns; BPF_OBJ_GET returns a new fd.
    unsafe { bpf_fd(BPF_OBJ_GET, &mut attr) }.map_err(|e| SysError::new("BPF_OBJ_GET", what(), e))
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
    _pad: u32,
}
assert_attr!(LinkDetachAttr);
assert_abi! {
    LinkDetachAttr, size 8,
    like uapi::bpf_attr__bindgen_ty_16: [
        link_fd,
    ]
}

/// Detaches a link from its cgroup now, even if other holders keep its fd open.
pub fn link_detach(link: BorrowedFd<'_>, what: &Path) -> Result<(), SysError> {
    let mut attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_LINK_DETACH prefix (no pointers); `link` is
    // borrowed, so open.
    unsafe { bpf(BPF_LINK_DETACH, &mut attr) }
        .map(|_| ())
        .map_err(|e| SysError::new("BPF_LINK_DETACH", what.display().to_string(), e))
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}
assert_attr!(InfoAttr);
assert_abi! {
    InfoAttr, size 16,
    like uapi::bpf_attr__bindgen_ty_9: [
        bpf_fd, info_len, info,
    ]
}

/// `struct bpf_link_info` up to and including the cgroup member of its union.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _pad2: u32,
    _rest: [u64; 4],
}
/// Where `bpf_link_info`'s union (its `cgroup` member among them) starts.
const LINK_INFO_UNION: usize = offset_of!(uapi::bpf_link_info, __bindgen_anon_1);
assert_abi! {
    RawLinkInfo, size 64,
    like uapi::bpf_link_info: [id, prog_id],
    link_type @ offset_of!(uapi::bpf_link_info, type_),
    cgroup_id @ LINK_INFO_UNION
        + offset_of!(uapi::bpf_link_info__bindgen_ty_1__bindgen_ty_3, cgroup_id),
    attach_type @ LINK_INFO_UNION
        + offset_of!(uapi::bpf_link_info__bindgen_ty_1__bindgen_ty_3, attach_type),
}

/// `BPF_LINK_TYPE_CGROUP`.
pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// What the kernel says about a cgroup link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// `BPF_LINK_TYPE_*`.
    pub link_type: u32,
    /// Kernel link id.
    pub id: u32,
    /// Id of the program the link holds; 0 once the link was detached.
    pub prog_id: u32,
    /// The cgroup it is attached to; 0 once detached or the cgroup is gone.
    pub cgroup_id: u64,
    /// `BPF_CGROUP_*` attach type.
    pub attach_type: u32,
}

impl LinkInfo {
    /// Whether the link still attaches a program to the cgroup `policy_id`.
    /// A link goes defunct when its cgroup is removed.
    pub fn is_live_for(&self, policy_id: u64) -> bool {
        self.prog_id != 0 && self.cgroup_id == policy_id
    }
}

/// Reads link info from a link fd.
pub fn link_info(link: BorrowedFd<'_>, what: &Path) -> Result<LinkInfo, SysError> {
    let mut raw = RawLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<RawLinkInfo>() as u32,
        info: &mut raw as *mut RawLinkInfo as u64,
    };
    // SAFETY: `attr` is the BPF_OBJ_GET_INFO_BY_FD prefix; `info` points to
    // `raw`, a live, writable `RawLinkInfo` of `info_len` bytes; `link` is
    // borrowed, so open.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }
        .map_err(|e| SysError::new("BPF_OBJ_GET_INFO_BY_FD", what.display().to_string(), e))?;
    Ok(LinkInfo {
        link_type: raw.link_type,
        id: raw.id,
        prog_id: raw.prog_id,
        cgroup_id: raw.cgroup_id,
        attach_type: raw.attach_type,
    })
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}
assert_attr!(QueryAttr);
assert_abi! {
    QueryAttr, size 64,
    like uapi::bpf_attr__bindgen_ty_10: [
        attach_type, query_flags, attach_flags, prog_ids, prog_attach_flags, link_ids,
        link_attach_flags, revision,
    ],
    target_fd @ 0,
    prog_cnt @ 24,
}

/// Ids of the cgroup device programs attached to `cgroup` (with
/// `effective`, also those inherited from its ancestors: the set that decides).
pub fn query_device_programs(
    cgroup: BorrowedFd<'_>,
    effective: bool,
    what: &Path,
) -> Result<Vec<u32>, SysError> {
    // The kernel allows at most 64 programs per cgroup; effective lists are
    // bounded by depth × 64, so grow on ENOSPC.
    let mut cap = 64usize;
    loop {
        let mut ids = vec![0u32; cap];
        let mut attr = QueryAttr {
            target_fd: cgroup.as_fd().as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            query_flags: if effective { BPF_F_QUERY_EFFECTIVE } else { 0 },
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: cap as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the BPF_PROG_QUERY prefix; `prog_ids` points to
        // `ids`, live and writable for `prog_cnt` u32s; the other id arrays
        // are null (not asked for); `cgroup` is borrowed, so open.
        match unsafe { bpf(BPF_PROG_QUERY, &mut attr) } {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && cap < 1 << 16 => cap *= 4,
            Err(e) => {
                return Err(SysError::new(
                    "BPF_PROG_QUERY",
                    what.display().to_string(),
                    e,
                ))
            }
        }
    }
}

const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
    _pad: u32,
}
assert_attr!(GetFdByIdAttr);
assert_abi! {
    GetFdByIdAttr, size 16,
    like uapi::bpf_attr__bindgen_ty_8: [
        next_id, open_flags,
    ],
    id @ 0,
}

/// Opens the program with kernel id `id`.
pub fn prog_fd_by_id(id: u32) -> Result<OwnedFd, SysError> {
    fd_by_id(
        BPF_PROG_GET_FD_BY_ID,
        "BPF_PROG_GET_FD_BY_ID",
        "program",
        id,
    )
}

/// Opens the map with kernel id `id`.
#[cfg(feature = "test-support")]
pub fn map_fd_by_id(id: u32) -> Result<OwnedFd, SysError> {
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    fd_by_id(BPF_MAP_GET_FD_BY_ID, "BPF_MAP_GET_FD_BY_ID", "map", id)
}

/// Opens the link with kernel id `id`.
#[cfg(feature = "test-support")]
pub fn link_fd_by_id(id: u32) -> Result<OwnedFd, SysError> {
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    fd_by_id(BPF_LINK_GET_FD_BY_ID, "BPF_LINK_GET_FD_BY_ID", "link", id)
}

/// One of the `BPF_*_GET_FD_BY_ID` commands (`cmd`, named `call`) for the
/// object of kind `kind` with kernel id `id`.
fn fd_by_id(
    cmd: libc::c_long,
    call: &'static str,
    kind: &str,
    id: u32,
) -> Result<OwnedFd, SysError> {
    let mut attr = GetFdByIdAttr {
        id,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_*_GET_FD_BY_ID prefix (no pointers, no
    // fds); every BPF_*_GET_FD_BY_ID command returns a new fd.
    unsafe { bpf_fd(cmd, &mut attr) }.map_err(|e| SysError::new(call, format!("{kind} {id}"), e))
}

#[repr(C)]
#[derive(Default)]
struct ProgDetachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    _pad: u32,
}
assert_attr!(ProgDetachAttr);
assert_abi! {
    ProgDetachAttr, size 24,
    like uapi::bpf_attr__bindgen_ty_6: [
        attach_bpf_fd, attach_type, attach_flags, replace_bpf_fd,
    ],
    target_fd @ 0,
}

/// Detaches, without naming a program, the one program attached to
/// `cgroup` without `BPF_F_ALLOW_MULTI` (the legacy form, no program fd):
/// what a hostile process would try; ctdev never does.
#[cfg(feature = "test-support")]
pub fn prog_detach_device_unnamed(cgroup: BorrowedFd<'_>, what: &Path) -> Result<(), SysError> {
    prog_attach_cmd(BPF_PROG_DETACH, cgroup, None, 0, what)
}

/// Detaches a program that was attached to `cgroup` with `BPF_PROG_ATTACH`
/// (as runc, crun and LXC attach theirs). Programs held by a bpf link can
/// only be removed through their link and fail here.
pub fn prog_detach_device(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    what: &Path,
) -> Result<(), SysError> {
    prog_attach_cmd(BPF_PROG_DETACH, cgroup, Some(prog), 0, what)
}

/// `BPF_PROG_ATTACH` or `BPF_PROG_DETACH` (`cmd`) of the device program
/// `prog` (none: the legacy detach of the one non-multi program) on
/// `cgroup`, with `flags`.
fn prog_attach_cmd(
    cmd: libc::c_long,
    cgroup: BorrowedFd<'_>,
    prog: Option<BorrowedFd<'_>>,
    flags: u32,
    what: &Path,
) -> Result<(), SysError> {
    let call = if cmd == BPF_PROG_ATTACH {
        "BPF_PROG_ATTACH"
    } else {
        "BPF_PROG_DETACH"
    };
    let mut attr = ProgDetachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.map_or(0, |p| p.as_raw_fd() as u32),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: flags,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_ATTACH/DETACH prefix (no pointers);
    // the fds are borrowed, so open (a zero program fd names none).
    unsafe { bpf(cmd, &mut attr) }
        .map(|_| ())
        .map_err(|e| SysError::new(call, what.display().to_string(), e))
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
assert_attr!(BatchAttr);
assert_abi! {
    BatchAttr, size 56,
    like uapi::bpf_attr__bindgen_ty_3: [
        in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags,
    ]
}

/// Raw entries of a map read in batches: `keys` and `values` hold
/// `count × key_size` and `count × value_size` bytes, in the same order.
#[derive(Debug, Default)]
pub struct BatchEntries {
    /// Concatenated keys.
    pub keys: Vec<u8>,
    /// Concatenated values.
    pub values: Vec<u8>,
}

/// Reads every entry of a hash map with `BPF_MAP_LOOKUP_BATCH`, thousands of
/// entries per syscall (one get-next-key plus one lookup per entry made a
/// full scan cost two syscalls an entry). Returns raw key and value bytes,
/// `value_size` each (per-CPU maps: the 8-byte-rounded size times the number
/// of possible CPUs). `Ok(None)`: the kernel has no batch ops for this map;
/// iterate instead.
pub fn map_lookup_batch(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    what: &Path,
) -> Result<Option<BatchEntries>, SysError> {
    const CHUNK: usize = 4096;
    let mut keys = Vec::new();
    let mut values = Vec::new();
    // The hash map's batch token is a bucket index (u32); 8 bytes leave room.
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    loop {
        let mut kbuf = vec![0u8; key_size * CHUNK];
        let mut vbuf = vec![0u8; value_size * CHUNK];
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: kbuf.as_mut_ptr() as u64,
            values: vbuf.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the BPF_MAP_*_BATCH prefix; the tokens point to
        // 8-byte buffers (a hash map's token is 4 bytes), `keys` and `values`
        // to live, writable buffers of `count` keys and values of the sizes
        // the caller gave for this map; `map` is borrowed, so open.
        let result = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let filled = attr.count as usize;
        keys.extend_from_slice(&kbuf[..filled * key_size]);
        values.extend_from_slice(&vbuf[..filled * value_size]);
        match result {
            Ok(_) => {
                token_in = token_out;
                first = false;
            }
            // ENOENT: that was the last batch.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(Some(BatchEntries { keys, values }))
            }
            Err(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                    ) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(SysError::new(
                    "BPF_MAP_LOOKUP_BATCH",
                    what.display().to_string(),
                    e,
                ))
            }
        }
    }
}

const BPF_PROG_ATTACH: libc::c_long = 8;

/// The cgroup-level attach flags of the device programs attached to
/// `cgroup` itself (`BPF_F_ALLOW_MULTI` when runc, crun or LXC attached
/// theirs), as `BPF_PROG_QUERY` reports them.
pub fn device_attach_flags(cgroup: BorrowedFd<'_>, what: &Path) -> Result<u32, SysError> {
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_QUERY prefix with every id array null
    // (only the count and flags come back); `cgroup` is borrowed, so open.
    unsafe { bpf(BPF_PROG_QUERY, &mut attr) }
        .map(|_| attr.attach_flags)
        .map_err(|e| SysError::new("BPF_PROG_QUERY", what.display().to_string(), e))
}

/// Attaches `prog` to `cgroup` with legacy `BPF_PROG_ATTACH` and `flags`
/// (how runc, crun and LXC attach theirs: re-attaching a kept runtime
/// program restores it exactly).
pub fn prog_attach_device(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    flags: u32,
    what: &Path,
) -> Result<(), SysError> {
    prog_attach_cmd(BPF_PROG_ATTACH, cgroup, Some(prog), flags, what)
}

/// What one `BPF_OBJ_GET_INFO_BY_FD` says about a map (the fields ctdev
/// checks before it uses a pinned map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapInfoLite {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Kernel map id.
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The type, id and sizes of the map behind `map`: one
/// `BPF_OBJ_GET_INFO_BY_FD` on an fd the caller already holds (aya's
/// `MapInfo::from_pin` opens the pin again for it).
pub fn map_info(map: BorrowedFd<'_>, what: &Path) -> Result<MapInfoLite, SysError> {
    // SAFETY: `bpf_map_info` is plain integers and arrays of them; all
    // zeroes is a valid value (what the kernel expects in unused fields).
    let mut info: uapi::bpf_map_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: map.as_raw_fd() as u32,
        info_len: std::mem::size_of::<uapi::bpf_map_info>() as u32,
        info: std::ptr::addr_of_mut!(info) as u64,
    };
    // SAFETY: `attr` is the BPF_OBJ_GET_INFO_BY_FD prefix; `info` is a live,
    // writable `bpf_map_info` of `info_len` bytes; `map` is open (borrowed).
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }
        .map_err(|e| SysError::new("BPF_OBJ_GET_INFO_BY_FD", what.display().to_string(), e))?;
    Ok(MapInfoLite {
        map_type: info.type_,
        id: info.id,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
    })
}
