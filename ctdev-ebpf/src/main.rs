//! ctdev's cgroup/dev program.
//!
//! One program instance is loaded per container, with the container's policy
//! id baked in as a load-time constant; all instances share the pinned policy
//! map. A cgroup program also runs for tasks in descendant cgroups, so a task
//! in a nested sub-cgroup of the container is judged by the same policy.
#![no_std]
#![no_main]

use aya_ebpf::{btf_maps::HashMap, macros::btf_map, macros::cgroup_device, programs::DeviceContext, Global};
use ctdev_common::{evaluate, PolicyKey, PolicyValue, POLICY_MAP_CAPACITY};

/// The policy id of this instance; overridden at load time by ctdev.
#[no_mangle]
static CTDEV_POLICY_ID: Global<u64> = Global::new(0);

/// BPF_F_NO_PREALLOC: memory grows with the rules actually stored.
const NO_PREALLOC: usize = 1;

/// Allow entries of every container, keyed by (policy id, type, major, minor).
#[btf_map]
static CTDEV_POLICY: HashMap<PolicyKey, PolicyValue, { POLICY_MAP_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

#[cgroup_device]
pub fn ctdev_device(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_cgroup_dev_ctx for the program's lifetime.
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let requested = dev.access_type >> 16;
    let policy_id = CTDEV_POLICY_ID.load();
    let verdict = evaluate(policy_id, dev_type, dev.major, dev.minor, requested, |key| {
        // SAFETY: the value is copied out immediately; no reference is kept.
        unsafe { CTDEV_POLICY.get(key) }.map(|v| v.access)
    });
    #[cfg(feature = "log")]
    aya_log_ebpf::debug!(
        &ctx,
        "ctdev policy {} type {} {}:{} access {} -> {}",
        policy_id,
        dev_type,
        dev.major,
        dev.minor,
        requested,
        verdict.allowed as u32
    );
    verdict.allowed as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
