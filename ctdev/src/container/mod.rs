//! Inside a container: its init process (pidfd), device nodes in its root,
//! and network interfaces in its netns.
//!
//! Everything here works on file descriptors obtained from the container's
//! init process (`/proc/<pid>/root`, `/proc/<pid>/ns/net`), never on host
//! paths that the container could redirect. [`process`] pins the init with a
//! pidfd so a PID that dies and is reused mid-operation is detected;
//! [`nodes`] resolves every path with `openat2(RESOLVE_IN_ROOT)`;
//! [`links`] makes udev's symlinks the same way; [`netdev`] moves
//! interfaces with rtnetlink.

pub(crate) mod links;
pub(crate) mod mounts;
pub(crate) mod netdev;
pub mod nodes;
pub(crate) mod process;

pub use process::InitProcess;
