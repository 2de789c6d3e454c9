//! A device program that is not ctdev's, attached the way runc and crun
//! attach theirs (`BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI`): it denies one
//! device and allows everything else; detached on drop.

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
        ctdev::kernel::sys::obj_pin(self.raw.fd(), path)
            .unwrap_or_else(|e| panic!("pinning the foreign program: {e}"));
    }
}
