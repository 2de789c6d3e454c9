//! CDI (Container Device Interface) devices, hot-added into running
//! containers.
//!
//! - [`name`]: `vendor.com/class=name` syntax;
//! - [`spec`]: one spec file (JSON or YAML, versions 0.1.0 to 1.1.0), pure
//!   parsing and validation;
//! - [`registry`]: the spec directories, their precedence, duplicates and
//!   invalid files;
//! - [`apply`]: a device's edits planned for a running container, applied
//!   and recorded (`ctdev add`), undone (`ctdev del`);
//! - [`generate`]: a spec for host devices picked with hotplug selectors;
//! - [`daemon`]: the daemon's `devices = [{ cdi = ... }]`, kept in sync.

pub mod apply;
pub(crate) mod daemon;
pub mod generate;
pub(crate) mod name;
pub mod registry;
pub mod spec;

pub use name::QualifiedName;
pub use registry::{Registry, DEFAULT_DIRS};
