//! `ctdev del TARGET DEVICE [DEST]`

use std::process::ExitCode;

use anyhow::Result;

use super::{open, Cli};
use crate::ops::Config;
use crate::passthrough;
use crate::target::Target;

// Arguments of `ctdev del`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// The host device node, directory, or interface name given to `ctdev add`.
    pub device: String,
    /// Path inside the container (default: DEVICE), or the interface's name there.
    pub dest: Option<String>,
    /// Also remove the device's udev names made by `add --links` (DEST
    /// then defaults to the node's own path, as for `add --links`).
    #[arg(long)]
    pub links: bool,
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
    let dest = match (&args.dest, args.links) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => std::fs::canonicalize(&args.device)
            .ok()
            .map(|p| p.display().to_string()),
        (None, false) => None,
    };
    let req = super::add::request(&args.device, dest.as_deref());
    let report = passthrough::del(&ct, &args.target, &req)?;
    // The links go after the node (they point at nothing then).
    let links = if args.links && !report.dry_run {
        super::add::udev_links(&ct, &report, &args.device, false)?
    } else {
        Vec::new()
    };
    super::add::print_report_links(
        cli,
        if report.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        &report,
        &links,
    )?;
    Ok(ExitCode::SUCCESS)
}
