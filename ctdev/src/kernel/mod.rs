//! Kernel plumbing: the bpf syscalls aya lacks, pins in bpffs, the policy
//! map, program loading (`loader`, formerly `program`), per-container
//! attachments (links), and which device programs decide for a cgroup
//! (`attached`, formerly `programs`).

pub mod attached;
pub(crate) mod attachment;
test_support_mod!(container_maps);
pub mod counters;
test_support_mod!(loader);
pub mod pins;
test_support_mod!(policy_map);
test_support_mod!(raw_program);
test_support_mod!(scope);
test_support_mod!(shared);
test_support_mod!(sys);
