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
//! - `import`: a runtime's device rules (OCI config, runc state, LXC config) as ctdev rules;
//! - [`container`]: inside a container: init process, device nodes, netdevs;
//! - [`kernel`]: bpf syscalls, pins, the policy map, program loading, links;
//! - `plan`: pure planning of policy changes (never-widen by construction);
//! - [`grants`]: grant records, so `del` and the daemon take back exactly what was given;
//! - [`ops`]: the operations on a container's policy (attach, allow, revoke,
//!   grant, take back, detach) under the pin-root lock (named `controller`
//!   before: it is no cgroup controller);
//! - [`takeover`]: `attach --takeover`, replacing a runtime's device program;
//! - `set`: atomic whole-policy replacement;
//! - [`passthrough`]: `add`/`del`, device passthrough like lxc-device;
//! - [`cdi`]: CDI spec files and CDI devices hot-added (`add`/`del`, `cdi list`/`generate`);
//! - [`daemon`]: `ctdev daemon`, the policy file applied to containers and hotplugged devices;
//! - [`audit`]: read-only views for operators: `list` and its views, denial
//!   events, `check`, drift;
//! - `devname`: device names for audit output;
//! - [`probe`]: real kernel verdicts from inside a cgroup;
//! - [`error`]: the shared `IoError { op, path, source }`;
//! - [`nri`], [`udev`]: the NRI plugin; udev names of devices.
// The public API is what a program driving ctdev needs (the `ctdev` binary
// is one; docs/DESIGN.md "Public API" lists it). The rest is `pub(crate)`;
// the modules the integration tests, the bench and the fuzz targets drive
// directly are public only with the feature `test-support`.
// `unreachable_pub` flags a `pub` item nothing outside can reach (CI's
// clippy `-D warnings` denies it).
#![warn(unreachable_pub)]

/// Declares module `$name`: `pub` with the feature `test-support` (the
/// integration tests, the bench and the fuzz targets drive it directly),
/// else `pub(crate)`, where its `pub` items need not be reachable or used.
macro_rules! test_support_mod {
    ($name:ident) => {
        #[cfg(feature = "test-support")]
        pub mod $name;
        #[cfg(not(feature = "test-support"))]
        #[allow(unreachable_pub, dead_code, unused_imports)]
        pub(crate) mod $name;
    };
}

pub mod audit;
pub mod cdi;
pub mod cgroup;
pub mod container;
pub mod daemon;
pub(crate) mod devname;
pub mod error;
pub(crate) mod failpoint;
pub mod fsio;
pub mod grants;
test_support_mod!(import);
pub mod kernel;
pub mod nri;
pub mod ops;
pub mod passthrough;
test_support_mod!(plan);
test_support_mod!(plan_props);
pub mod presets;
pub mod probe;
pub mod rule;
pub mod runtimes;
pub(crate) mod set;
pub mod takeover;
pub mod target;
pub mod udev;

pub use ops::{Config, Ctdev, Error};
pub use presets::Preset;
pub use rule::Rule;
pub use target::Target;
