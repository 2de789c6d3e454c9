//! Kernel plumbing: the bpf syscalls aya lacks, pins in bpffs, the policy
//! map, program loading, and per-container attachments (links).

pub mod attachment;
pub mod container_maps;
pub mod counters;
pub mod pins;
pub mod policy_map;
pub mod program;
pub mod programs;
pub mod raw_program;
pub mod scope;
pub mod sys;
