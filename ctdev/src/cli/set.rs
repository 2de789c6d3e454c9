//! `ctdev set TARGET RULE... [--rules-file FILE]`: replaces the target's
//! whole rule set atomically.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{open, rules_from_words, Cli};
use crate::ops::Config;
use crate::target::Target;

// Arguments of `ctdev set`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// The new rules: `TYPE MAJOR:MINOR [ACCESS]` (as one argument or several) or a /dev path.
    #[arg(num_args = 0.., allow_hyphen_values = true)]
    pub rules: Vec<String>,
    /// Read rules from FILE, one a line (`#` starts a comment), after those given as arguments.
    #[arg(long, value_name = "FILE")]
    pub rules_file: Option<PathBuf>,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let mut words = args.rules.clone();
    if let Some(file) = &args.rules_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read rules file {}", file.display()))?;
        words.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    let rules = rules_from_words(&words)?;
    let report = open(config)?.set_rules(&args.target, &rules)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let target = &args.target;
    for line in &report.added {
        println!("set {target}: +{line}");
    }
    for line in &report.removed {
        println!("set {target}: -{line}");
    }
    for g in &report.grants_superseded {
        println!("set {target}: superseded grant {g} (its rule bits are the set's now; `del` takes back its nodes only)");
    }
    println!(
        "set {target}: {} rule(s) now ({} added, {} removed, {} unchanged)",
        report.added.len() + report.unchanged.len(),
        report.added.len(),
        report.removed.len(),
        report.unchanged.len()
    );
    Ok(ExitCode::SUCCESS)
}
