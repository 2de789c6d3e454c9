//! A device program that is not ctdev's, attached the way runc and crun
//! attach theirs (`BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI`): it denies one
//! device and allows everything else; detached on drop.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use ctdev::kernel::raw_program::{deny_char, RawProgram};

/// A foreign device program attached to one cgroup.
pub struct ForeignProgram {
    raw: RawProgram,
    /// Kernel program id.
    pub id: u32,
}

impl ForeignProgram {
    /// Loads a program named `foreign_dev` denying `c major:minor` (every
    /// access) and allowing all else, and attaches it to `cgroup_dir`.
    pub fn deny_char(cgroup_dir: &Path, major: u32, minor: u32) -> Self {
        let raw = RawProgram::attach(cgroup_dir, "foreign_dev", &deny_char(major, minor))
            .expect("load and attach the foreign program");
        ForeignProgram { id: raw.id, raw }
    }

    /// Pins the program at `path` (to plant it where ctdev expects its own).
    pub fn pin(&self, path: &Path) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut attr = [0u64; 3];
        attr[0] = c.as_ptr() as u64;
        attr[1] = self.raw.fd().as_raw_fd() as u64;
        // SAFETY: a BPF_OBJ_PIN attr (pathname, bpf_fd) of the size passed.
        let r = unsafe { libc::syscall(libc::SYS_bpf, 6, attr.as_mut_ptr(), 24u32) };
        assert!(
            r == 0,
            "BPF_OBJ_PIN of the foreign program: {}",
            std::io::Error::last_os_error()
        );
    }
}
