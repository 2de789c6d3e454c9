//! `ctdev attach TARGET [--preset oci|none] [--rule RULE]...`

use std::process::ExitCode;

use anyhow::Result;

use super::{open, Cli};
use crate::controller::Config;
use crate::presets::Preset;
use crate::rule::parse_rules;
use crate::target::Target;

/// Arguments of `ctdev attach`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// cgroup path (absolute, or inside the cgroup2 hierarchy), or pid:N.
    pub target: Target,
    /// Starting rules: `oci` (runc's default devices) or `none` (deny all).
    #[arg(long, value_enum, default_value = "oci")]
    pub preset: Preset,
    /// An extra rule, e.g. "c 10:200 rw" or /dev/net/tun (repeatable).
    #[arg(long = "rule", value_name = "RULE")]
    pub rules: Vec<String>,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let rules = parse_rules(&args.rules)?;
    let report = open(config)?.attach(&args.target, args.preset, &rules)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.already_attached {
        println!(
            "already attached: {} (policy {}, program {}); {} rule(s) added",
            report.cgroup_dir.display(),
            report.policy_id,
            report.program_id,
            report.changed.len()
        );
    } else {
        println!(
            "attached: {} (policy {}, program {}, link {}) with {} rule(s)",
            report.cgroup_dir.display(),
            report.policy_id,
            report.program_id,
            report.link_pin.display(),
            report.changed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
