//! `ctdev status TARGET` (alias `show`): one container on one screen.
//!
//! Everything ctdev can tell about one container, whether or not it is
//! under ctdev policy: its runtime and init process, every device program
//! deciding for it (on its cgroup and on every ancestor: ctdev's, the
//! runtime's, systemd's), its rules with hit counts, the devices passed in
//! and by whom (from the records that exist, see [`passed_in`]), drift
//! between its /dev and its policy, and its denial counters.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::style::{colour_on, paint, table, Paint};
use super::{list, open, Cli};
use crate::audit::drift::Drift;
use crate::audit::view::ContainerView;
use crate::daemon::reconcile::State;
use crate::kernel::attached::{device_programs, DeviceProgram};
use crate::ops::{Config, Ctdev, Error as ControllerError, LinkState};
use crate::target::Target;

// Arguments of `ctdev status`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// Skip the comparison of the container's /dev with its policy.
    #[arg(long)]
    pub no_drift: bool,
    /// The daemon's state directory, read to say which devices the daemon
    /// passed in (default /run/ctdev).
    #[arg(long, value_name = "DIR", default_value = "/run/ctdev")]
    pub state_dir: PathBuf,
    /// Where `ctdev add TARGET vendor/class=name` records CDI devices.
    #[arg(long, env = "CTDEV_CDI_STATE", default_value = crate::cdi::apply::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub cdi_state: PathBuf,
}

/// The status of one container (`ctdev status --json`, format version 1).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Format version of this JSON document.
    pub version: u32,
    /// The TARGET as given.
    pub target: String,
    /// Policy id (the cgroup id).
    pub policy_id: u64,
    /// cgroup path inside the hierarchy (`null` once the cgroup is gone).
    pub cgroup: Option<PathBuf>,
    /// cgroup directory.
    pub cgroup_dir: Option<PathBuf>,
    /// The container as `RUNTIME:NAME` when the cgroup follows a runtime's
    /// naming (`lxc:web`, `docker:3f2a9c0e1d2b`), else `null`.
    pub runtime: Option<String>,
    /// The oldest process in the cgroup (the container's init).
    pub init_pid: Option<i32>,
    /// Whether ctdev enforces a policy here.
    pub under_policy: bool,
    /// ctdev's view (`state`, `rules` with hits, denial counters, other
    /// programs), as in `ctdev list --json`; `null` when not under policy.
    pub policy: Option<ContainerView>,
    /// Every device program deciding for this cgroup, from the cgroup up to
    /// the root: the kernel allows an access only if all of them allow it.
    pub programs: Vec<DeviceProgram>,
    /// Devices passed into the container, with who passed them.
    pub passed_in: Vec<PassedIn>,
    /// The container's /dev compared with its policy (`null` with
    /// `--no-drift` or when not under policy).
    pub drift: Option<Drift>,
}

/// A device passed into the container.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PassedIn {
    /// Host node or interface name.
    pub host: String,
    /// Where it is in the container.
    pub dest: String,
    /// Who passed it: `daemon` (with its policy entry).
    pub by: String,
    /// udev's name of the device when it was selected (`/dev/serial/by-id/…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udev_name: Option<String>,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let ctdev = open(config)?;
    let status = gather(&ctdev, args)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, colour_on(&std::io::stdout())));
    }
    Ok(ExitCode::SUCCESS)
}

/// Collects the status of `args.target`.
fn gather(ctdev: &Ctdev, args: &Args) -> Result<Status> {
    let resolved = ctdev.resolve(&args.target)?;
    let policy = match ctdev.list(Some(&args.target)) {
        Ok(mut dump) => {
            crate::cdi::apply::annotate(&mut dump, &args.cdi_state);
            dump.containers
                .into_iter()
                .find(|c| c.policy_id == resolved.policy_id)
        }
        Err(ControllerError::NotUnderPolicy { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let cgroup = resolved.cgroup.clone();
    let programs = match &cgroup {
        Some(c) => device_programs(ctdev.cgroups(), c)?,
        None => Vec::new(),
    };
    let init_pid = cgroup
        .as_ref()
        .and_then(|c| crate::runtimes::oldest_process(&c.dir).ok().flatten());
    let runtime = cgroup
        .as_ref()
        .and_then(|c| crate::runtimes::runtime_label(&c.path));
    let drift = match (&policy, &cgroup) {
        (Some(p), Some(c)) if !args.no_drift => Some(ctdev.drift(p.policy_id, &c.dir)),
        _ => None,
    };
    Ok(Status {
        version: 1,
        target: args.target.to_string(),
        policy_id: resolved.policy_id,
        cgroup: cgroup.as_ref().map(|c| c.path.clone()),
        cgroup_dir: cgroup.as_ref().map(|c| c.dir.clone()),
        runtime,
        init_pid,
        under_policy: policy.is_some(),
        passed_in: {
            let mut all = passed_in(&args.state_dir, resolved.policy_id);
            let cdi = policy
                .as_ref()
                .map(|p| passed_in_by_cdi(&p.cdi))
                .unwrap_or_default();
            // A CDI add's nodes go through `ctdev add` too: name them once,
            // by their CDI device.
            all.extend(
                passed_in_by_cli(ctdev, resolved.policy_id)
                    .into_iter()
                    .filter(|c| !cdi.iter().any(|d| d.dest == c.dest)),
            );
            all.extend(cdi);
            all
        },
        policy,
        programs,
        drift,
    })
}

/// Devices passed into container `policy_id`, from every record that says
/// who passed them. Today: the daemon's state file (`STATE_DIR/state.json`,
/// see docs/DESIGN.md). Extension point: records of `ctdev add` (a grants
/// ledger) and CDI injections are read here too once they exist, each with
/// its own `by`.
pub fn passed_in(state_dir: &Path, policy_id: u64) -> Vec<PassedIn> {
    match daemon_state(state_dir) {
        Some(state) => passed_in_by_daemon(&state, policy_id),
        None => Vec::new(),
    }
}

/// The daemon's state file under `state_dir`, if there is a readable one
/// (read once per command: `list` asks about every container).
pub(super) fn daemon_state(state_dir: &Path) -> Option<State> {
    State::load(&state_dir.join("state.json")).ok()
}

/// The devices the daemon's `state` says it passed into `policy_id`.
pub(super) fn passed_in_by_daemon(state: &State, policy_id: u64) -> Vec<PassedIn> {
    let Some(owned) = state.containers.get(&policy_id) else {
        return Vec::new();
    };
    owned
        .devices
        .values()
        .map(|d| PassedIn {
            host: d.host.clone(),
            dest: d.dest.clone(),
            by: format!("daemon (entry {})", owned.entry),
            udev_name: d.udev_name.clone(),
        })
        .collect()
}

/// `from HOST` or `from HOST (UDEV NAME)`.
fn from_text(d: &PassedIn) -> String {
    match &d.udev_name {
        Some(n) => format!("from {} ({n})", d.host),
        None => format!("from {}", d.host),
    }
}

/// One passed-in device as `ctdev list` shows it under its container.
pub(super) fn passed_in_line(d: &PassedIn) -> String {
    format!("{} {} by {}", d.dest, from_text(d), d.by)
}

/// Devices and interfaces `ctdev add` passed in (the grant records).
pub(super) fn passed_in_by_cli(ctdev: &Ctdev, policy_id: u64) -> Vec<PassedIn> {
    let Ok(ledger) = ctdev.grants().load(policy_id) else {
        return Vec::new();
    };
    ledger
        .grants
        .iter()
        .filter(|g| g.owner == crate::grants::Owner::Cli && !g.pending)
        .filter_map(|g| match &g.subject {
            crate::grants::Subject::Device { device, dest } => Some(PassedIn {
                host: device.clone(),
                dest: dest.clone(),
                by: "cli (ctdev add)".into(),
                udev_name: None,
            }),
            crate::grants::Subject::Interface { host, inside } => Some(PassedIn {
                host: host.clone(),
                dest: inside.clone(),
                by: "cli (ctdev add)".into(),
                udev_name: None,
            }),
            crate::grants::Subject::Rule { .. } => None,
        })
        .collect()
}

/// What CDI devices added by `ctdev add TARGET vendor/class=name` gave.
fn passed_in_by_cdi(cdi: &[crate::cdi::apply::CdiSource]) -> Vec<PassedIn> {
    let mut out = Vec::new();
    for d in cdi {
        let by = format!("cdi {} ({})", d.name, d.file.display());
        for p in d.nodes.iter().chain(&d.mounts) {
            out.push(PassedIn {
                host: d.name.clone(),
                dest: p.display().to_string(),
                by: by.clone(),
                udev_name: None,
            });
        }
        for n in &d.netdevs {
            out.push(PassedIn {
                host: d.name.clone(),
                dest: n.clone(),
                by: by.clone(),
                udev_name: None,
            });
        }
    }
    out
}

/// The status as text.
pub fn render(s: &Status, colour: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut head: Vec<Vec<String>> = Vec::new();
    let mut row = |k: &str, v: String| head.push(vec![k.to_string(), v]);
    row(
        "cgroup:",
        match (&s.cgroup, &s.cgroup_dir) {
            (Some(p), Some(d)) => format!("{} ({})", p.display(), d.display()),
            _ => "(removed)".to_string(),
        },
    );
    row("policy id:", s.policy_id.to_string());
    row(
        "runtime:",
        s.runtime
            .clone()
            .unwrap_or_else(|| "(not recognised)".into()),
    );
    row(
        "init pid:",
        s.init_pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "(no process)".into()),
    );
    let state = match &s.policy {
        Some(p) if p.state == LinkState::Enforcing => paint(colour, Paint::Green, "enforcing"),
        Some(p) => paint(colour, Paint::Yellow, p.state.as_str()),
        None => paint(colour, Paint::Yellow, "not under ctdev policy"),
    };
    let _ = writeln!(out, "{}", paint(colour, Paint::Bold, &s.target));
    for line in table(&head, "  ") {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "  ctdev:      {state}");
    if let Some(p) = &s.policy {
        let _ = writeln!(
            out,
            "  denials:    {} (events {}, dropped {}; `ctdev monitor {}` shows them live)",
            p.stats.denied, p.stats.events, p.stats.events_dropped, s.target
        );
        let _ = writeln!(out, "rules (program {}, link {}):", p.program_id, p.link_id);
        let mut view = p.clone();
        view.other_programs.clear();
        view.drift = None;
        // The rules table of `list`, without its heading line.
        let text = list::render_container(&view, false);
        for line in text.lines().skip(1) {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out, "device programs deciding for it (all must allow):");
    if s.programs.is_empty() {
        let _ = writeln!(
            out,
            "    none: cgroup2 denies no device here (a cgroup v1 devices controller may still)"
        );
    }
    let rows: Vec<Vec<String>> = s
        .programs
        .iter()
        .map(|p| {
            vec![
                format!("program {}", p.id),
                if p.name.is_empty() {
                    "(unnamed)".into()
                } else {
                    p.name.clone()
                },
                p.owner.as_str().to_string(),
                format!("on {}", p.attached_at.display()),
            ]
        })
        .collect();
    for line in table(&rows, "    ") {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "devices passed in:");
    if s.passed_in.is_empty() {
        let _ = writeln!(out, "    none recorded");
    }
    let rows: Vec<Vec<String>> = s
        .passed_in
        .iter()
        .map(|d| vec![d.dest.clone(), from_text(d), format!("by {}", d.by)])
        .collect();
    for line in table(&rows, "    ") {
        let _ = writeln!(out, "{line}");
    }
    if let Some(d) = &s.drift {
        let mut lines = Vec::new();
        if let Some(e) = &d.error {
            lines.push(e.clone());
        }
        for n in &d.nodes_without_rule {
            lines.push(format!(
                "node {} ({}) has no rule allowing it",
                n.path.display(),
                n.device
            ));
        }
        for r in &d.rules_without_node {
            lines.push(format!("rule `{r}` allows a device with no node in /dev"));
        }
        if lines.is_empty() {
            let _ = writeln!(out, "drift: none");
        } else {
            let _ = writeln!(out, "drift:");
            for l in lines {
                let _ = writeln!(out, "    {}", paint(colour, Paint::Yellow, &l));
            }
        }
    }
    out
}
