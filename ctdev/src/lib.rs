//! ctdev: a cgroup v2 eBPF device-controller manager.
//!
//! One cgroup/dev program per container looks up a shared, pinned allow map,
//! so changing a container's device policy is a map write, not a program
//! rebuild. This library holds everything; `main.rs` is a thin CLI over
//! [`cli::run`].
//!
//! Modules by job:
//! - [`rule`], [`presets`]: the policy model and rule syntax;
//! - [`cgroup`], [`target`], [`runtimes`]: finding cgroup2 and the container's cgroup;
//! - [`import`]: a runtime's device rules (OCI config, runc state, LXC config) as ctdev rules;
//! - [`container`]: inside a container: init process, device nodes, netdevs;
//! - [`kernel`]: bpf syscalls, pins, the policy map, program loading, links;
//! - [`plan`]: pure planning of policy changes (never-widen by construction);
//! - [`grants`]: grant records, so `del` and the daemon take back exactly what was given;
//! - [`controller`]: the operations (attach, allow, revoke, list, detach);
//! - [`takeover`]: `attach --takeover`, replacing a runtime's device program;
//! - [`set`]: atomic whole-policy replacement;
//! - [`passthrough`]: `add`/`del`, device passthrough like lxc-device;
//! - [`cdi`]: CDI spec files and CDI devices hot-added (`add`/`del`, `cdi list`/`generate`);
//! - [`daemon`]: `ctdev daemon`, the policy file applied to containers and hotplugged devices;
//! - [`audit`]: denial events, `check`, drift;
//! - [`devname`]: device names for audit output;
//! - [`probe`]: real kernel verdicts from inside a cgroup;
//! - [`cli`]: flags → validated config → operation → output.
#![deny(missing_docs)]

pub mod audit;
pub mod cdi;
pub mod cgroup;
pub mod cli;
pub mod container;
pub mod controller;
pub mod daemon;
pub mod devname;
pub mod failpoint;
pub mod grants;
pub mod import;
pub mod kernel;
pub mod nri;
pub mod passthrough;
pub mod plan;
#[cfg(test)]
mod plan_props;
pub mod presets;
pub mod probe;
pub mod rule;
pub mod runtimes;
pub mod set;
pub mod takeover;
pub mod target;
pub mod udev;

pub use controller::{Config, Ctdev, Error};
