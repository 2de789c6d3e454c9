//! Kernel plumbing: the bpf syscalls aya lacks, pins in bpffs, the policy
//! map, program loading (`loader`, formerly `program`), per-container
//! attachments (links), and which device programs decide for a cgroup
//! (`attached`, formerly `programs`).

pub mod attached;
pub mod attachment;
pub mod container_maps;
pub mod counters;
pub mod loader;
pub mod pins;
pub mod policy_map;
#[cfg(feature = "test-support")]
pub mod raw_program;
// Public only for the tests and the bench (feature `test-support`), whose
// test program builders are used nowhere else.
#[cfg(not(feature = "test-support"))]
#[allow(unreachable_pub, dead_code)]
pub(crate) mod raw_program;
pub mod scope;
pub mod shared;
#[cfg(feature = "test-support")]
pub mod sys;
#[cfg(not(feature = "test-support"))]
#[allow(unreachable_pub)]
pub(crate) mod sys;
