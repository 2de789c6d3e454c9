//! `ctdev check TARGET DEVICE|RULE`: exit 0 allowed, 1 denied, 2 error.

use std::process::ExitCode;

use anyhow::{bail, Result};

use super::{open, rules_from_words, Cli};
use crate::audit::check::check;
use crate::ops::Config;
use crate::target::Target;

// Arguments of `ctdev check`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// One device: a /dev path or `TYPE MAJOR:MINOR`, with the access to
    /// check (default rwm), e.g. `/dev/net/tun rw` or `c 10:200 r`.
    #[arg(required = true, num_args = 1..)]
    pub device: Vec<String>,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let rules = rules_from_words(&args.device)?;
    let [rule] = rules.as_slice() else {
        bail!("check takes one device, got {} rules", rules.len());
    };
    let ctdev = open(config)?;
    let report = check(&ctdev, &args.target, rule)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let name = report.device.name.clone().unwrap_or_default();
        let pod = report
            .pod
            .as_ref()
            .map(|p| format!(" (pod {})", p.name()))
            .unwrap_or_default();
        println!(
            "{} {} {} {}:{} {name} in {}{pod}: {}",
            if report.allowed { "ALLOWED" } else { "DENIED" },
            report.access,
            report.device.dev_type.letter(),
            report.device.major,
            report.device.minor,
            args.target,
            report.explanation
        );
        for r in &report.results {
            println!("  {:<10} {}", r.op, r.error.as_deref().unwrap_or("allowed"));
        }
        for p in &report.programs {
            println!(
                "  program {:<6} {:<14} on {}",
                p.id,
                if p.name.is_empty() {
                    "(unnamed)"
                } else {
                    &p.name
                },
                p.attached_at.display()
            );
        }
    }
    Ok(if report.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
