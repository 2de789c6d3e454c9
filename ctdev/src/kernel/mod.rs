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
pub mod raw_program;
pub mod scope;
pub mod sys;
