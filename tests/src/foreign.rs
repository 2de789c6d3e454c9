//! A device program that is not ctdev's, attached the way runc and crun
//! attach theirs (`BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI`): it denies one
//! device and allows everything else. Hand-assembled, loaded with raw
//! `bpf(2)` calls, detached on drop.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

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

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: attr is a valid #[repr(C)] bpf_attr prefix of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A foreign device program attached to one cgroup.
pub struct ForeignProgram {
    prog: OwnedFd,
    cgroup: OwnedFd,
    /// Kernel program id.
    pub id: u32,
}

impl ForeignProgram {
    /// Loads a program denying `c major:minor` (every access) and allowing
    /// all else, and attaches it to `cgroup_dir` in multi mode.
    pub fn deny_char(cgroup_dir: &Path, major: u32, minor: u32) -> Self {
        // r2 = ctx->major; if r2 != major goto allow; r2 = ctx->minor;
        // if r2 != minor goto allow; deny: r0 = 0; exit; allow: r0 = 1; exit
        // (ctx->access_type's low 16 bits are the type; 2 = char)
        let insns = [
            Insn {
                code: 0x61,
                regs: 0x12,
                off: 0,
                imm: 0,
            }, // r2 = *(u32 *)(r1 + 0)
            Insn {
                code: 0x57,
                regs: 0x02,
                off: 0,
                imm: 0xffff,
            }, // r2 &= 0xffff
            Insn {
                code: 0x55,
                regs: 0x02,
                off: 6,
                imm: 2,
            }, // if r2 != 2 goto allow
            Insn {
                code: 0x61,
                regs: 0x12,
                off: 4,
                imm: 0,
            }, // r2 = *(u32 *)(r1 + 4)
            Insn {
                code: 0x55,
                regs: 0x02,
                off: 4,
                imm: major as i32,
            },
            Insn {
                code: 0x61,
                regs: 0x12,
                off: 8,
                imm: 0,
            }, // r2 = *(u32 *)(r1 + 8)
            Insn {
                code: 0x55,
                regs: 0x02,
                off: 2,
                imm: minor as i32,
            },
            Insn {
                code: 0xb7,
                regs: 0x00,
                off: 0,
                imm: 0,
            }, // r0 = 0
            Insn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0,
            }, // exit
            Insn {
                code: 0xb7,
                regs: 0x00,
                off: 0,
                imm: 1,
            }, // allow: r0 = 1
            Insn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0,
            }, // exit
        ];
        let license = CString::new("GPL").unwrap();
        let mut name = [0u8; 16];
        name[..11].copy_from_slice(b"foreign_dev");
        let mut log = vec![0u8; 4096];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_LOAD of the foreign program failed: {e}\n{}",
                String::from_utf8_lossy(&log)
            )
        });
        // SAFETY: BPF_PROG_LOAD returned a new fd we own.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let cgroup: OwnedFd = std::fs::File::open(cgroup_dir).expect("open cgroup").into();
        let mut attach = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: BPF_F_ALLOW_MULTI,
            ..Default::default()
        };
        bpf(BPF_PROG_ATTACH, &mut attach).expect("BPF_PROG_ATTACH of the foreign program");
        // bpf_prog_info starts with `type`, then `id`.
        let mut info = [0u32; 64];
        let mut info_attr = [0u64; 2];
        info_attr[0] = prog.as_raw_fd() as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
        info_attr[1] = info.as_mut_ptr() as u64;
        bpf(15, &mut info_attr).expect("BPF_OBJ_GET_INFO_BY_FD of the foreign program");
        let id = info[1];
        ForeignProgram { prog, cgroup, id }
    }
}

impl ForeignProgram {
    /// Pins the program at `path` (to plant it where ctdev expects its own).
    pub fn pin(&self, path: &Path) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut attr = [0u64; 3];
        attr[0] = c.as_ptr() as u64;
        attr[1] = self.prog.as_raw_fd() as u64;
        bpf(6, &mut attr).expect("BPF_OBJ_PIN of the foreign program");
    }
}

impl Drop for ForeignProgram {
    fn drop(&mut self) {
        let mut attr = AttachAttr {
            target_fd: self.cgroup.as_raw_fd() as u32,
            attach_bpf_fd: self.prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        let _ = bpf(BPF_PROG_DETACH, &mut attr);
    }
}
