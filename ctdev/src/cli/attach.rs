//! `ctdev attach TARGET [--preset oci|none] [--rule RULE]... [--takeover [--import FILE]]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{open, Cli};
use crate::kernel::attached::device_programs;
use crate::ops::{AttachReport, Config, Ctdev};
use crate::presets::Preset;
use crate::rule::parse_rules;
use crate::takeover::{takeover, TakeoverOptions};
use crate::target::Target;

// Arguments of `ctdev attach`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// Starting rules: `oci` (runc's default devices) or `none` (deny all).
    /// With --takeover, used only when there is nothing to import.
    #[arg(long, value_enum, default_value = "oci")]
    pub preset: Preset,
    /// An extra rule, e.g. "c 10:200 rw" or /dev/net/tun (repeatable).
    #[arg(long = "rule", value_name = "RULE")]
    pub rules: Vec<String>,
    /// Replace the runtime's device program on the cgroup by ctdev's,
    /// importing the rules it enforced first.
    #[arg(long)]
    pub takeover: bool,
    /// With --takeover: read the rules from this file (OCI config.json, runc
    /// state.json, or LXC config) instead of finding the runtime's.
    #[arg(long, value_name = "FILE", requires = "takeover")]
    pub import: Option<PathBuf>,
    /// With --takeover: LXC's container path (default /var/lib/lxc).
    #[arg(long, value_name = "DIR", env = "CTDEV_LXCPATH")]
    pub lxcpath: Option<PathBuf>,
    /// With --takeover: a runc/crun state root to search (default /run/runc and /run/crun; repeatable).
    #[arg(long = "runtime-root", value_name = "DIR")]
    pub runtime_roots: Vec<PathBuf>,
    /// Allow the root cgroup or a cgroup holding PID 1 (the host itself).
    #[arg(long)]
    pub force_host: bool,
    /// Print what would change (text, or --json) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn run(cli: &Cli, mut config: Config, args: &Args) -> Result<ExitCode> {
    config.dry_run = args.dry_run;
    config.force_host = args.force_host;
    if args.dry_run && args.takeover {
        anyhow::bail!("--dry-run is not supported with --takeover");
    }
    let rules = parse_rules(&args.rules)?;
    let ctdev = open(config)?;
    if args.takeover {
        let options = TakeoverOptions {
            import: args.import.clone(),
            lxcpath: args.lxcpath.clone(),
            runtime_roots: args.runtime_roots.clone(),
            preset: Some(args.preset),
            container_id: None,
        };
        let report = takeover(&ctdev, &args.target, &options, &rules)?;
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_attach(&report.attach);
            match (&report.started_from_preset, &report.source) {
                (Some(why), _) => eprintln!("ctdev: warning: {why}"),
                (None, Some(source)) => println!(
                    "imported {} rule(s) from {} ({}, read as {})",
                    report.imported.len(),
                    source.display(),
                    report.format,
                    report.semantics
                ),
                (None, None) => {}
            }
            for n in &report.narrowed {
                eprintln!(
                    "ctdev: warning: narrowed: {n} was allowed by the runtime but cannot be \
                     expressed exactly and is now denied"
                );
            }
            for p in &report.detached {
                println!(
                    "detached the runtime's program {} from {} (kept: `ctdev detach` puts it back)",
                    p.id,
                    p.attached_at.display()
                );
            }
            if report.detached.is_empty() {
                println!("no runtime program was attached to the cgroup itself");
            }
            for p in &report.remaining {
                eprintln!(
                    "ctdev: warning: program {} ({}) on {} still decides device access too",
                    p.id,
                    p.display_name(),
                    p.attached_at.display()
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = ctdev.attach(&args.target, args.preset, &rules)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_attach(&report);
    }
    warn_other_programs(&ctdev, &args.target, report.program_id);
    Ok(ExitCode::SUCCESS)
}

fn print_attach(report: &AttachReport) {
    if report.dry_run && !report.already_attached {
        println!(
            "would attach: {} (policy {}) with {} rule(s):",
            report.cgroup_dir.display(),
            report.policy_id,
            report.changed.len()
        );
        for r in &report.changed {
            println!("  {r}");
        }
    } else if report.already_attached {
        println!(
            "already attached with this policy: {} (policy {}, program {}); nothing changed",
            report.cgroup_dir.display(),
            report.policy_id,
            report.program_id
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
}

/// Says so when other device programs also decide for the target: the
/// kernel allows an access only if all of them allow it.
fn warn_other_programs(ctdev: &Ctdev, target: &Target, own: u32) {
    let Ok(Some(cgroup)) = ctdev.resolve(target).map(|r| r.cgroup) else {
        return;
    };
    let Ok(programs) = device_programs(ctdev.cgroups(), &cgroup) else {
        return;
    };
    for p in programs.iter().filter(|p| !p.is_own(own, &cgroup.path)) {
        eprintln!(
            "ctdev: warning: device program {} ({}) on {} also decides for this container; \
             an access needs every program's allow (replace a runtime's program with --takeover)",
            p.id,
            p.display_name(),
            p.attached_at.display()
        );
    }
}
