//! Raw `BPF_PROG_LOAD` of cgroup device programs: ctdev's own per-container
//! instances ([`load_device_program`], from the relocated template), and
//! programs that are not ctdev's, built from raw instructions and attached
//! the way runc, crun and LXC attach theirs (`BPF_PROG_ATTACH` with
//! `BPF_F_ALLOW_MULTI`): the tests use those to stand in for a runtime's
//! program, the benchmarks for the allow-all floor.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::sys::{self, SysError, BPF_CGROUP_DEVICE};
use aya_obj::generated as uapi;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low nibble) and source register (high nibble).
    pub regs: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    /// `r0 = imm; exit` as two instructions: a program returning `imm`.
    pub fn ret(imm: i32) -> [Insn; 2] {
        [
            Insn {
                code: 0xb7,
                regs: 0,
                off: 0,
                imm,
            }, // BPF_ALU64|BPF_MOV|BPF_K
            Insn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0,
            }, // BPF_JMP|BPF_EXIT
        ]
    }

    /// `rD = *(u32 *)(r1 + off)`: a field of `bpf_cgroup_dev_ctx`.
    pub fn load_ctx(dst: u8, off: i16) -> Insn {
        Insn {
            code: 0x61,
            regs: 0x10 | dst,
            off,
            imm: 0,
        }
    }

    /// `if rD != imm goto +off`.
    pub fn jne(dst: u8, imm: i32, off: i16) -> Insn {
        Insn {
            code: 0x55,
            regs: dst,
            off,
            imm,
        }
    }

    /// `rD &= imm`.
    pub fn and(dst: u8, imm: i32) -> Insn {
        Insn {
            code: 0x57,
            regs: dst,
            off: 0,
            imm,
        }
    }
}

/// A program denying every access to char device `major:minor` and
/// allowing everything else.
pub fn deny_char(major: u32, minor: u32) -> Vec<Insn> {
    let mut p = vec![
        Insn::load_ctx(2, 0),          // r2 = access_type
        Insn::and(2, 0xffff),          // r2 = device type
        Insn::jne(2, 2, 6),            // not char: allow
        Insn::load_ctx(2, 4),          // r2 = major
        Insn::jne(2, major as i32, 4), // other major: allow
        Insn::load_ctx(2, 8),          // r2 = minor
        Insn::jne(2, minor as i32, 2), // other minor: allow
    ];
    p.extend(Insn::ret(0));
    p.extend(Insn::ret(1));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}
sys::assert_attr!(ProgLoadAttr);
sys::assert_abi! {
    ProgLoadAttr, size 136,
    like uapi::bpf_attr__bindgen_ty_4: [
        prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
        prog_flags, prog_name, prog_ifindex, expected_attach_type,
    ]
}

/// Loads `insns` as a cgroup device program named `name` (at most 15
/// bytes). The verifier log is only asked for when the first try fails.
pub fn load_device_program(
    name: &str,
    insns: &[Insn],
    license: &std::ffi::CStr,
) -> Result<OwnedFd, SysError> {
    load_program(
        BPF_PROG_TYPE_CGROUP_DEVICE,
        BPF_CGROUP_DEVICE,
        name,
        insns,
        license,
    )
}

/// Loads `insns` as a program of type `prog_type` for `expected_attach_type`
/// ([`load_device_program`] for cgroup device programs).
pub fn load_program(
    prog_type: u32,
    expected_attach_type: u32,
    name: &str,
    insns: &[Insn],
    license: &std::ffi::CStr,
) -> Result<OwnedFd, SysError> {
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let attr = |log: &mut Vec<u8>| ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name,
        expected_attach_type,
        ..Default::default()
    };
    let mut none = Vec::new();
    // SAFETY: `attr` is the BPF_PROG_LOAD prefix; `insns` and `license`
    // point into borrowed slices alive for the call, `log_buf` is null with
    // size 0; BPF_PROG_LOAD returns a new program fd.
    match unsafe { sys::bpf_fd(BPF_PROG_LOAD, &mut attr(&mut none)) } {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut log = vec![0u8; 1 << 20];
            // SAFETY: as above, with `log_buf` pointing to `log`, live and
            // writable for `log_size` bytes.
            let again = unsafe { sys::bpf_fd(BPF_PROG_LOAD, &mut attr(&mut log)) };
            let verifier = String::from_utf8_lossy(&log);
            let tail: String = verifier
                .trim_end_matches('\0')
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Err(SysError {
                call: "BPF_PROG_LOAD",
                what: name.to_string(),
                source: std::io::Error::new(
                    first.kind(),
                    format!("{}: {tail}", again.err().unwrap_or(first)),
                ),
            })
        }
    }
}

/// A raw device program attached to one cgroup; detached on drop.
#[derive(Debug)]
pub struct RawProgram {
    prog: OwnedFd,
    cgroup: OwnedFd,
    cgroup_dir: PathBuf,
    /// Kernel program id.
    pub id: u32,
}

impl RawProgram {
    /// Loads `insns` as a cgroup device program named `name` (at most 15
    /// bytes) and attaches it to `cgroup_dir` in multi mode.
    pub fn attach(cgroup_dir: &Path, name: &str, insns: &[Insn]) -> Result<Self, SysError> {
        let prog = load_device_program(name, insns, c"GPL")?;
        let cgroup: OwnedFd = std::fs::File::open(cgroup_dir)
            .map_err(|source| SysError {
                call: "open",
                what: cgroup_dir.display().to_string(),
                source,
            })?
            .into();
        sys::prog_attach_device(cgroup.as_fd(), prog.as_fd(), BPF_F_ALLOW_MULTI, cgroup_dir)?;
        let id = sys::prog_id(prog.as_fd(), cgroup_dir)?;
        Ok(Self {
            prog,
            cgroup,
            cgroup_dir: cgroup_dir.to_path_buf(),
            id,
        })
    }

    /// The program's fd (e.g. to pin it somewhere).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

impl Drop for RawProgram {
    fn drop(&mut self) {
        let _ = sys::prog_detach_device(self.cgroup.as_fd(), self.prog.as_fd(), &self.cgroup_dir);
    }
}
