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
    /// Also compare each container's /dev with its policy: nodes no rule
    /// allows, and rules for devices with no node.
    #[arg(long)]
    pub drift: bool,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let ctdev = open(config)?;
    let mut dump = ctdev.list(args.target.as_ref())?;
    if args.drift {
        for c in &mut dump.containers {
            if let Some(dir) = &c.cgroup_dir {
                c.drift = Some(ctdev.drift(c.policy_id, dir));
            }
        }
    }
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
            "{name}  policy {}  program {}  link {}  {}  denied {} (events {}, dropped {})",
            c.policy_id,
            c.program_id,
            c.link_id,
            c.state,
            c.stats.denied,
            c.stats.events,
            c.stats.events_dropped
        );
        render_rules(&mut out, &c.rules);
        if let Some(d) = &c.drift {
            if let Some(e) = &d.error {
                let _ = writeln!(out, "    drift: {e}");
            }
            for n in &d.nodes_without_rule {
                let _ = writeln!(
                    out,
                    "    drift: node {} ({}) has no rule allowing it",
                    n.path.display(),
                    n.device
                );
            }
            for r in &d.rules_without_node {
                let _ = writeln!(
                    out,
                    "    drift: rule `{r}` allows a device with no node in /dev"
                );
            }
            if d.error.is_none()
                && d.nodes_without_rule.is_empty()
                && d.rules_without_node.is_empty()
            {
                let _ = writeln!(out, "    drift: none");
            }
        }
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
    for p in &dump.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    out
}

fn render_rules(out: &mut String, rules: &[RuleView]) {
    use std::fmt::Write;
    if rules.is_empty() {
        let _ = writeln!(out, "    (no rules: every device denied)");
    }
    for r in rules {
        let _ = writeln!(
            out,
            "    {:<16} hits {:<8} {}",
            r.rule,
            r.hits,
            r.devices.join(" ")
        );
    }
}
