//! Auditing device access: denial events from the kernel (`events`), the
//! real verdict for one access from inside a container (`check`), and the
//! difference between a container's /dev and its policy (`drift`).

pub mod check;
pub mod drift;
pub mod events;
pub(crate) mod list;
pub(crate) mod names;
pub mod view;
