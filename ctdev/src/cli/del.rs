//! `ctdev del TARGET DEVICE [DEST]`

use std::process::ExitCode;

use anyhow::Result;

use super::add::print_report;
use super::{open, Cli};
use crate::ops::Config;
use crate::passthrough;
use crate::target::Target;

/// Arguments of `ctdev del`.
#[derive(Debug, clap::Args)]
pub struct Args {
    pub target: Target,
    /// The host device node, directory, or interface name given to `ctdev add`.
    pub device: String,
    /// Path inside the container (default: DEVICE), or the interface's name there.
    pub dest: Option<String>,
    /// Print what would change (text, or --json) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// CDI record directory (for VENDOR/CLASS=NAME).
    #[command(flatten)]
    pub cdi: super::cdi::CdiFlags,
}

pub(super) fn run(cli: &Cli, mut config: Config, args: &Args) -> Result<ExitCode> {
    config.dry_run = args.dry_run;
    if super::cdi::is_cdi_device(&args.device, args.dry_run)? {
        let name = crate::cdi::QualifiedName::parse(&args.device)?;
        let ct = open(config)?;
        let rec = crate::cdi::apply::del(&ct, &args.target, &name, &args.cdi.cdi_state)?;
        super::cdi::print_record(cli, "deleted", &rec)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ct = open(config)?;
    let req = super::add::request(&args.device, args.dest.as_deref());
    let report = passthrough::del(&ct, &args.target, &req)?;
    print_report(
        cli,
        if report.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        &report,
    )?;
    Ok(ExitCode::SUCCESS)
}
