//! `ctdev list [TARGET] [--json]`: the audit dump.

use std::process::ExitCode;

use anyhow::Result;

use super::{open, Cli};
use crate::controller::{Config, Dump, RuleView};
use crate::target::Target;

/// Arguments of `ctdev list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this container (cgroup path, pid:N or id:N).
    pub target: Option<Target>,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let dump = open(config)?.list(args.target.as_ref())?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&dump)?);
    } else {
        print!("{}", render(&dump));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable dump.
pub fn render(dump: &Dump) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(map) = &dump.policy_map {
        let _ = writeln!(
            out,
            "policy map {} (id {}): {}/{} entries",
            map.pin.display(),
            map.map_id,
            map.entries,
            map.capacity
        );
    }
    if dump.containers.is_empty() {
        let _ = writeln!(
            out,
            "no container is under ctdev policy in {}",
            dump.pin_root.display()
        );
    }
    for c in &dump.containers {
        let name = c
            .cgroup
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(cgroup removed)".into());
        let _ = writeln!(
            out,
            "{name}  policy {}  program {}  link {}  {}",
            c.policy_id, c.program_id, c.link_id, c.state
        );
        render_rules(&mut out, &c.rules);
    }
    for o in &dump.orphaned {
        let _ = writeln!(
            out,
            "orphaned entries of policy {} (no link; `ctdev detach id:{}` clears them)",
            o.policy_id, o.policy_id
        );
        render_rules(&mut out, &o.rules);
    }
    for f in &dump.foreign_pins {
        let _ = writeln!(
            out,
            "foreign file in pin root (left alone): {}",
            f.display()
        );
    }
    out
}

fn render_rules(out: &mut String, rules: &[RuleView]) {
    use std::fmt::Write;
    if rules.is_empty() {
        let _ = writeln!(out, "    (no rules: every device denied)");
    }
    for r in rules {
        let _ = writeln!(out, "    {:<16} {}", r.rule, r.devices.join(" "));
    }
}
