//! `ctdev reset-counters [TARGET]`

use std::process::ExitCode;

use anyhow::Result;

use super::{open, Cli};
use crate::ops::Config;
use crate::target::Target;

// Arguments of `ctdev reset-counters`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Option<Target>,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let ids = open(config)?.reset_counters(args.target.as_ref())?;
    if cli.json {
        println!("{}", serde_json::json!({ "reset": ids }));
    } else {
        println!("counters reset for {} container(s)", ids.len());
    }
    Ok(ExitCode::SUCCESS)
}
