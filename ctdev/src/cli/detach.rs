//! `ctdev detach TARGET`

use std::process::ExitCode;

use anyhow::Result;

use super::{open, Cli};
use crate::controller::Config;
use crate::target::Target;

/// Arguments of `ctdev detach`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// cgroup path, pid:N, or id:N (for a container whose cgroup is gone).
    pub target: Target,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let report = open(config)?.detach(&args.target)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "detached: {} (policy {}, {} rule(s) removed)",
            args.target, report.policy_id, report.entries_removed
        );
    }
    Ok(ExitCode::SUCCESS)
}
