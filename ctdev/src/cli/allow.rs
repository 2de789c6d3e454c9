//! `ctdev allow TARGET RULE...`

use std::process::ExitCode;

use anyhow::Result;

use super::{open, print_change, rules_from_words, Cli};
use crate::ops::Config;
use crate::target::Target;

// Arguments of `ctdev allow`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// Rules: `TYPE MAJOR:MINOR [ACCESS]` (as one argument or several) or a /dev path.
    #[arg(required = true, num_args = 1..)]
    pub rules: Vec<String>,
    /// Print what would change (text, or --json) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn run(cli: &Cli, mut config: Config, args: &Args) -> Result<ExitCode> {
    config.dry_run = args.dry_run;
    let rules = rules_from_words(&args.rules)?;
    let report = open(config)?.allow(&args.target, &rules)?;
    let verb = if report.dry_run {
        "would allow"
    } else {
        "allowed"
    };
    print_change(cli, verb, &args.target, &report)?;
    Ok(ExitCode::SUCCESS)
}
