//! `ctdev detach TARGET`

use std::process::ExitCode;

use anyhow::Result;

use super::{open, Cli};
use crate::ops::Config;
use crate::target::Target;

// Arguments of `ctdev detach`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// Print what would change (text, or --json) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn run(cli: &Cli, mut config: Config, args: &Args) -> Result<ExitCode> {
    config.dry_run = args.dry_run;
    let dry_run = config.dry_run;
    let report = open(config)?.detach(&args.target)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} (policy {}, {} rule(s) removed)",
            if dry_run { "would detach" } else { "detached" },
            args.target,
            report.policy_id,
            report.entries_removed
        );
    }
    Ok(ExitCode::SUCCESS)
}
