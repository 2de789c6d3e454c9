//! `ctdev list [TARGET] [--json]`: the audit dump.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::status::PassedIn;
use super::style::{colour_on, paint, table, Paint};
use super::{open, Cli};
use crate::audit::view::{write_dump_json, ContainerView, Dump, RuleView};
use crate::cdi::apply::CdiSource;
use crate::cdi::apply::{annotate, DEFAULT_STATE_DIR};
use crate::kernel::attached::DeviceProgram;
use crate::ops::{Config, LinkState};
use crate::runtimes::k8s::PodContainer;
use crate::target::Target;

// Arguments of `ctdev list`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Option<Target>,
    /// Also compare each container's /dev with its policy: nodes no rule
    /// allows, and rules for devices with no node.
    #[arg(long)]
    pub drift: bool,
    /// Where `ctdev add TARGET vendor/class=name` records CDI devices (to
    /// name the CDI device each rule and node came from).
    #[arg(long, env = "CTDEV_CDI_STATE", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub cdi_state: PathBuf,
    /// The daemon's state directory, read to show the devices the daemon
    /// passed in and the udev name each was selected by.
    #[arg(
        long,
        env = "CTDEV_STATE_DIR",
        value_name = "DIR",
        default_value = "/run/ctdev"
    )]
    pub state_dir: PathBuf,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let ctdev = open(config)?;
    let mut dump = ctdev.list(args.target.as_ref())?;
    annotate(&mut dump, &args.cdi_state);
    if args.drift {
        for c in &mut dump.containers {
            if let Some(dir) = &c.cgroup_dir {
                c.drift = Some(ctdev.drift(c.policy_id, dir));
            }
        }
    }
    // Devices passed in (by the daemon, with the udev name each was
    // selected by, and by `ctdev add`), per container.
    // Each record store is read once for the command: the daemon's state
    // file, and the names in the grants directory (a container without a
    // ledger file has nothing passed in by `ctdev add`).
    let daemon = super::status::daemon_state(&args.state_dir);
    let ledgers = ctdev::fsio::file_names(ctdev.grants().dir());
    let passed: BTreeMap<u64, Vec<PassedIn>> = dump
        .containers
        .iter()
        .map(|c| {
            let mut all = match &daemon {
                Some(state) => super::status::passed_in_by_daemon(state, c.policy_id),
                None => Vec::new(),
            };
            if ledgers.contains(&crate::grants::Store::file_name(c.policy_id)) {
                all.extend(super::status::passed_in_by_cli(&ctdev, c.policy_id));
            }
            (c.policy_id, all)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if cli.json {
        // Serialized from the typed views (the same bytes as through a
        // `serde_json::Value` tree, without building one) into memory
        // first: a serialization error (a path that is not UTF-8) prints
        // nothing rather than half a document.
        use std::io::Write;
        let mut doc = Vec::with_capacity(1 << 16);
        write_dump_json(&dump, &passed, &mut doc)?;
        doc.push(b'\n');
        let mut out = std::io::stdout().lock();
        out.write_all(&doc)?;
        out.flush()?;
    } else {
        print!(
            "{}",
            render_with(&dump, colour_on(&std::io::stdout()), &passed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable dump, without colour.
pub fn render(dump: &Dump) -> String {
    render_styled(dump, false)
}

/// The human-readable dump; `colour` paints states and problems.
pub fn render_styled(dump: &Dump, colour: bool) -> String {
    render_with(dump, colour, &BTreeMap::new())
}

/// [`render_styled`] plus, under each container, the devices passed in
/// (`passed`, by policy id): where, from which host node (and the udev
/// name it was selected by), by whom.
fn render_with(dump: &Dump, colour: bool, passed: &BTreeMap<u64, Vec<PassedIn>>) -> String {
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
        out.push_str(&render_container(c, colour));
        for d in passed.get(&c.policy_id).into_iter().flatten() {
            let _ = writeln!(out, "    passed in: {}", super::status::passed_in_line(d));
        }
    }
    for o in &dump.orphaned {
        let _ = writeln!(
            out,
            "{} of policy {} (no link; `ctdev detach id:{}` clears them)",
            paint(colour, Paint::Yellow, "orphaned entries"),
            o.policy_id,
            o.policy_id
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
        let _ = writeln!(out, "{}: {p}", paint(colour, Paint::Red, "problem"));
    }
    out
}

/// One container: a heading line, its rules as a table, the other device
/// programs that also decide for it, and drift.
pub(super) fn render_container(c: &ContainerView, colour: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let name = match (&c.cgroup, &c.former_cgroup) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(was)) => format!("{} (cgroup removed)", was.display()),
        (None, None) => format!("(cgroup removed; was policy id {})", c.policy_id),
    };
    let state = match c.state {
        LinkState::Enforcing => paint(colour, Paint::Green, c.state.as_str()),
        other => paint(colour, Paint::Yellow, other.as_str()),
    };
    let _ = writeln!(
        out,
        "{}  {state}  policy {}  program {}  link {}  denied {} (events {}, dropped {})",
        paint(colour, Paint::Bold, &name),
        c.policy_id,
        c.program_id,
        c.link_id,
        c.stats.denied,
        c.stats.events,
        c.stats.events_dropped
    );
    if c.state == LinkState::Defunct {
        let _ = writeln!(
            out,
            "    its cgroup is gone; `ctdev detach id:{}` removes the pin and entries",
            c.policy_id
        );
    }
    if let Some(p) = &c.pod {
        let _ = writeln!(out, "    pod {}", pod_name(p));
    }
    render_rules(&mut out, &c.rules);
    for d in &c.cdi {
        let _ = writeln!(out, "    {}", cdi_line(d));
    }
    for line in other_program_lines(&c.other_programs) {
        let _ = writeln!(out, "    {}", paint(colour, Paint::Yellow, &line));
    }
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
        if d.error.is_none() && d.nodes_without_rule.is_empty() && d.rules_without_node.is_empty() {
            let _ = writeln!(out, "    drift: none");
        }
    }
    out
}

/// One line per other device program deciding for a container.
pub(super) fn other_program_lines(programs: &[DeviceProgram]) -> Vec<String> {
    programs
        .iter()
        .map(|p| {
            format!(
                "also decides: program {} {} (owner {}) on {}: an access needs its allow too",
                p.id,
                if p.name.is_empty() {
                    "(unnamed)"
                } else {
                    &p.name
                },
                p.owner.as_str(),
                p.attached_at.display()
            )
        })
        .collect()
}

/// `namespace/pod/container (container id 0123456789ab)`.
pub(super) fn pod_name(p: &PodContainer) -> String {
    format!(
        "{}/{}/{} (container {})",
        p.namespace,
        p.pod,
        p.container,
        p.container_id.get(..12).unwrap_or(&p.container_id)
    )
}

/// One line per CDI device added to a container: what it gave.
fn cdi_line(d: &CdiSource) -> String {
    let mut parts = Vec::new();
    let paths = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !d.nodes.is_empty() {
        parts.push(format!("nodes {}", paths(&d.nodes)));
    }
    if !d.mounts.is_empty() {
        parts.push(format!("mounts {}", paths(&d.mounts)));
    }
    if !d.netdevs.is_empty() {
        parts.push(format!("interfaces {}", d.netdevs.join(" ")));
    }
    if parts.is_empty() {
        parts.push("nothing".into());
    }
    format!(
        "cdi {} (from {}): {}",
        d.name,
        d.file.display(),
        parts.join("; ")
    )
}

fn render_rules(out: &mut String, rules: &[RuleView]) {
    if rules.is_empty() {
        out.push_str("    (no rules: every device denied)\n");
        return;
    }
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                r.rule.clone(),
                format!("hits {}", r.hits),
                r.devices.join(" "),
                if r.cdi.is_empty() {
                    String::new()
                } else {
                    format!("cdi {}", r.cdi.join(" "))
                },
            ]
        })
        .collect();
    for line in table(&rows, "    ") {
        out.push_str(&line);
        out.push('\n');
    }
}
