//! `ctdev revoke TARGET RULE...`

use std::process::ExitCode;

use anyhow::Result;

use super::{open, print_revoke, rules_from_words, Cli};
use crate::controller::Config;
use crate::target::Target;

/// Arguments of `ctdev revoke`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// cgroup path, pid:N, or id:N.
    pub target: Target,
    /// Rules to take away; their access bits are cleared (no ACCESS: all of them).
    #[arg(required = true, num_args = 1..)]
    pub rules: Vec<String>,
    /// A rule with no entry is reported as already revoked instead of an
    /// error (to finish a revoke that was interrupted part-way).
    #[arg(long)]
    pub missing_ok: bool,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let rules = rules_from_words(&args.rules)?;
    let report = open(config)?.revoke(&args.target, &rules, args.missing_ok)?;
    print_revoke(cli, &args.target, &rules, &report)?;
    Ok(ExitCode::SUCCESS)
}
