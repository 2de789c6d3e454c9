//! `ctdev revoke TARGET RULE...`

use std::process::ExitCode;

use anyhow::Result;

use super::{open, print_change, rules_from_words, Cli};
use crate::ops::Config;
use crate::target::Target;

// Arguments of `ctdev revoke`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// Rules to take away; their access bits are cleared (no ACCESS: all of them).
    #[arg(required = true, num_args = 1..)]
    pub rules: Vec<String>,
    /// A rule with no entry is reported as already revoked instead of an
    /// error (to finish a revoke that was interrupted part-way).
    #[arg(long)]
    pub missing_ok: bool,
    /// Print what would change (text, or --json) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn run(cli: &Cli, mut config: Config, args: &Args) -> Result<ExitCode> {
    config.dry_run = args.dry_run;
    let rules = rules_from_words(&args.rules)?;
    let report = open(config)?.revoke(&args.target, &rules, args.missing_ok)?;
    if cli.json {
        return print_change(cli, "revoked", &args.target, &report).map(|_| ExitCode::SUCCESS);
    }
    let target = &args.target;
    let would = if report.dry_run { "would be " } else { "" };
    for line in &report.changed {
        if line.starts_with("revoked ") {
            // `revoked w from b 7:*; left: r`: exactly what was done.
            println!("{target}: {would}{line}");
        } else if let Some(key) = line.strip_prefix('-') {
            println!("{target}: {would}removed the entry {key} (no broader entry applies instead)");
        } else {
            println!("{target}: {would}set {line}");
        }
    }
    for line in &report.unchanged {
        println!("unchanged {target}: {line} (nothing of it to revoke)");
    }
    for rule in &report.skipped {
        println!("skipped {target}: {rule} (no entry; --missing-ok)");
    }
    for note in &report.notes {
        eprintln!("ctdev: note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}
