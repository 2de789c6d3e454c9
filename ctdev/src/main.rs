//! The `ctdev` command: the command line over the ctdev library. Its module
//! tree (`cli/`: flags → validated config → one library call → text or
//! JSON, one file per verb) belongs to this binary and uses only the
//! library's public API.

// The library's modules at this crate's root, so the CLI names them by the
// same paths as the library does (`crate::ops`, `crate::rule`, ...).
use ctdev::{
    audit, cdi, cgroup, container, daemon, grants, kernel, nri, ops, passthrough, presets, probe,
    rule, runtimes, takeover, target, udev,
};

#[cfg_attr(not(target_env = "musl"), allow(dead_code))]
mod alloc;
mod cli;

/// See alloc.rs: on musl the binary allocates through dlmalloc, large
/// blocks through mappings of their own.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: alloc::Allocator = alloc::Allocator;

fn main() -> std::process::ExitCode {
    #[cfg(target_env = "musl")]
    // SAFETY: called first, while this process has one thread: registers
    // fork handlers that take and release the allocator's lock, so a child
    // forked while another thread allocates finds it unlocked.
    unsafe {
        dlmalloc::enable_alloc_after_fork();
    }
    cli::main()
}
