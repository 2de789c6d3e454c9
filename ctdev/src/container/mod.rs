//! Inside a container: its init process (pidfd), device nodes in its root,
//! and network interfaces in its netns. Filled in by issue #3's work.
