//! ctdev: a cgroup v2 eBPF device-controller manager.
//!
//! One cgroup/dev program instance per container decides from that
//! container's own rule table (an mmapable map; policies over 128 entries
//! use the shared, pinned policy map), so changing a container's device
//! policy is a map write, not a program rebuild. This library holds
//! everything but the command line, which is the `ctdev` binary's own module
//! tree (`src/main.rs`, `src/cli/`) and uses only this crate's public API.
//!
//! Modules by job:
//! - [`rule`], [`presets`]: the policy model and rule syntax;
//! - [`cgroup`], [`target`], [`runtimes`]: finding cgroup2 and the container's cgroup;
//! - [`import`]: a runtime's device rules (OCI config, runc state, LXC config) as ctdev rules;
//! - [`container`]: inside a container: init process, device nodes, netdevs;
//! - [`kernel`]: bpf syscalls, pins, the policy map, program loading, links;
//! - [`plan`]: pure planning of policy changes (never-widen by construction);
//! - [`grants`]: grant records, so `del` and the daemon take back exactly what was given;
//! - [`ops`]: the operations on a container's policy (attach, allow, revoke,
//!   grant, take back, detach) under the pin-root lock (named `controller`
//!   before: it is no cgroup controller);
//! - [`takeover`]: `attach --takeover`, replacing a runtime's device program;
//! - [`set`]: atomic whole-policy replacement;
//! - [`passthrough`]: `add`/`del`, device passthrough like lxc-device;
//! - [`cdi`]: CDI spec files and CDI devices hot-added (`add`/`del`, `cdi list`/`generate`);
//! - [`daemon`]: `ctdev daemon`, the policy file applied to containers and hotplugged devices;
//! - [`audit`]: read-only views for operators: `list` and its views, denial
//!   events, `check`, drift;
//! - `devname`: device names for audit output;
//! - [`probe`]: real kernel verdicts from inside a cgroup;
// Modules that neither the `ctdev` binary nor the tests and the bench use
// are `pub(crate)` (`kernel::sys` and `kernel::raw_program` are public only
// with the feature `test-support`); `unreachable_pub` flags a `pub` item
// nothing outside can reach (CI's clippy `-D warnings` denies it).
#![warn(unreachable_pub)]

pub mod audit;
pub mod cdi;
pub mod cgroup;
pub mod container;
pub mod daemon;
pub(crate) mod devname;
pub mod error;
pub(crate) mod failpoint;
pub mod grants;
pub mod import;
pub mod kernel;
pub mod nri;
pub mod ops;
pub mod passthrough;
pub mod plan;
pub mod plan_props;
pub mod presets;
pub mod probe;
pub mod rule;
pub mod runtimes;
pub mod set;
pub mod takeover;
pub mod target;
pub mod udev;

pub use ops::{Config, Ctdev, Error};
