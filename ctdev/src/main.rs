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

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
