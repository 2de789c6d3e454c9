//! The `ctdev` command: a thin wrapper over [`ctdev::cli::run`].

fn main() -> std::process::ExitCode {
    ctdev::cli::main()
}
