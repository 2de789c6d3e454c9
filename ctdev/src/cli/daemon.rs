//! `ctdev daemon [--config FILE] [--check-config] [--state-dir DIR] [--ready-file FILE]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{open, Cli};
use crate::controller::Config;
use crate::daemon::{self, config::DEFAULT_CONFIG, Options};

/// Arguments of `ctdev daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML; see contrib/policy.example.toml).
    #[arg(long, env = "CTDEV_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Validate the policy file, print the resolved policy and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Where the daemon keeps its state file and private device nodes
    /// (default: the file's `state_dir`, else /run/ctdev).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Write `ready` to FILE once the first reconciliation is done (for
    /// service managers, tests and the benchmark; "ctdev daemon: ready" is
    /// printed on stderr too).
    #[arg(long, value_name = "FILE", hide = true)]
    pub ready_file: Option<PathBuf>,
}

pub(super) fn run(_cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let ct = open(config)?;
    if args.check_config {
        print!("{}", daemon::check_config(&ct, &args.config)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut opts = Options::new(args.config.clone());
    opts.state_dir = args.state_dir.clone();
    opts.ready_file = args.ready_file.clone();
    daemon::run(ct, opts)?;
    Ok(ExitCode::SUCCESS)
}
