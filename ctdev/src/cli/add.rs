//! `ctdev add TARGET DEVICE [DEST] [--access rwm] [--mode MODE] [--uid U --gid G]`

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{open, Cli};
use crate::container::nodes::NodeAction;
use crate::ops::Config;
use crate::passthrough::{self, AddOptions, PassRequest, PassthroughReport};
use crate::rule::Access;
use crate::target::Target;

// Arguments of `ctdev add`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
    pub target: Target,
    /// A host device node (/dev/net/tun), a directory of nodes (/dev/dri),
    /// a network interface name (eth1), or a CDI device (vendor.com/class=name).
    pub device: String,
    /// Path inside the container (default: DEVICE), or the interface's new name.
    pub dest: Option<String>,
    /// Access to allow on the device: letters from rwm.
    #[arg(long, default_value = "rwm")]
    pub access: String,
    /// Permission bits of the node in the container, octal (default: the host node's).
    #[arg(long)]
    pub mode: Option<String>,
    /// Owner uid of the node (default: the container's root, mapped through its user namespace).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Owner gid of the node (default: the container's root group, mapped).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Also make the device's udev names (its DEVLINKS in /run/udev/data:
    /// /dev/serial/by-id/…) as symlinks to it in the container; DEST then
    /// defaults to the node's own path (a udev symlink DEVICE resolved).
    #[arg(long)]
    pub links: bool,
    /// Print what would change (text, or --json) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// For a CDI device: apply the edits a running container can take and
    /// list the others (env, hooks, ...) as skipped instead of refusing.
    #[arg(long)]
    pub skip_unsupported: bool,
    /// CDI spec directories and record directory (for VENDOR/CLASS=NAME).
    #[command(flatten)]
    pub cdi: super::cdi::CdiFlags,
}

pub(super) fn run(cli: &Cli, mut config: Config, args: &Args) -> Result<ExitCode> {
    config.dry_run = args.dry_run;
    if super::cdi::is_cdi_device(&args.device, args.dry_run)? {
        return add_cdi(cli, config, args);
    }
    let access = Access::parse(&args.access).with_context(|| {
        format!(
            "invalid --access {:?}: expected letters from \"rwm\", each once",
            args.access
        )
    })?;
    if access.is_empty() {
        anyhow::bail!("--access must grant something (to take access away, use `ctdev del`)");
    }
    let mode = args
        .mode
        .as_deref()
        .map(passthrough::parse_mode)
        .transpose()?;
    let opts = AddOptions {
        access,
        mode,
        uid: args.uid,
        gid: args.gid,
        ..AddOptions::default()
    };
    let ct = open(config)?;
    // With --links the node lands at its own name (`/dev/ttyUSB0` for
    // DEVICE `/dev/serial/by-id/…`) and udev's names point at it.
    let dest = match (&args.dest, args.links) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => Some(
            std::fs::canonicalize(&args.device)
                .with_context(|| format!("resolving {}", args.device))?
                .display()
                .to_string(),
        ),
        (None, false) => None,
    };
    let req = request(&args.device, dest.as_deref());
    let report = passthrough::add(&ct, &args.target, &req, &opts)?;
    let links = if args.links && !report.dry_run {
        udev_links(&ct, &report, &args.device, true)?
    } else {
        Vec::new()
    };
    print_report_links(
        cli,
        if report.dry_run { "would add" } else { "added" },
        &report,
        &links,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// DEVICE and DEST as words (CDI names are handled before): a leading `/`
/// names a host path (a node or a directory of nodes), anything else a
/// network interface; DEST defaults to DEVICE.
pub(super) fn request(device: &str, dest: Option<&str>) -> PassRequest {
    let dest = dest.unwrap_or(device);
    if device.starts_with('/') {
        PassRequest::Node {
            host: device.into(),
            dest: dest.into(),
        }
    } else {
        PassRequest::Interface {
            host: device.into(),
            name: dest.into(),
        }
    }
}

/// Makes (or removes) the udev names of DEVICE in the container, pointing
/// at the node `report` made (or removed).
pub(super) fn udev_links(
    ct: &crate::ops::Ctdev,
    report: &PassthroughReport,
    device: &str,
    make: bool,
) -> Result<Vec<crate::udev::LinkReport>> {
    let [node] = report.nodes.as_slice() else {
        anyhow::bail!("--links takes one device node, not a directory or an interface");
    };
    let links: Vec<String> = crate::udev::links_of_node(
        std::path::Path::new(device),
        std::path::Path::new(crate::udev::UDEV_DATA),
    )
    .into_iter()
    .filter(|l| std::path::Path::new(l) != node.dest)
    .collect();
    Ok(crate::udev::sync_links(
        ct.cgroups(),
        &report.cgroup_dir,
        &node.dest,
        &links,
        make,
    )?)
}

/// [`print_report`] plus the udev links (text lines; `links` in --json).
pub(super) fn print_report_links(
    cli: &Cli,
    verb: &str,
    report: &PassthroughReport,
    links: &[crate::udev::LinkReport],
) -> Result<()> {
    if links.is_empty() {
        return print_report(cli, verb, report);
    }
    if cli.json {
        let mut v = serde_json::to_value(report)?;
        v["links"] = serde_json::to_value(links)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_report(cli, verb, report)?;
    for l in links {
        println!("  link {} -> {} ({:?})", l.link, l.dest.display(), l.action);
    }
    Ok(())
}

/// `ctdev add TARGET VENDOR/CLASS=NAME`.
fn add_cdi(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let name = crate::cdi::QualifiedName::parse(&args.device)?;
    if args.dest.is_some()
        || args.mode.is_some()
        || args.uid.is_some()
        || args.gid.is_some()
        || args.access != "rwm"
    {
        anyhow::bail!("DEST, --access, --mode, --uid and --gid do not apply to a CDI device: its spec says them");
    }
    let opts = crate::cdi::apply::CdiOptions {
        dirs: args.cdi.dirs(),
        skip_unsupported: args.skip_unsupported,
        state_dir: args.cdi.cdi_state.clone(),
    };
    let ct = open(config)?;
    let rec = crate::cdi::apply::add(&ct, &args.target, &name, &opts)?;
    super::cdi::print_record(cli, "added", &rec)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints an add/del report: warnings on stderr, the rest on stdout.
pub(super) fn print_report(cli: &Cli, verb: &str, report: &PassthroughReport) -> Result<()> {
    for w in &report.warnings {
        eprintln!("ctdev: warning: {w}");
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let target = &report.target;
    if let Some(i) = &report.interface {
        if i.action == "moved-in" {
            println!(
                "{verb} {target}: interface {} moved into the container (pid {}) as {}",
                i.host_name, report.init_pid, i.container_name
            );
        } else {
            println!(
                "{verb} {target}: interface {} moved out of the container (pid {}) as {}",
                i.container_name, report.init_pid, i.host_name
            );
        }
    }
    for n in &report.nodes {
        let via = n
            .resolved
            .as_ref()
            .map(|r| format!(" (symlink to {})", r.display()))
            .unwrap_or_default();
        let action = serde_json::to_value(n.action)?;
        // "added …: node … unchanged" would contradict itself.
        let verb = if matches!(n.action, NodeAction::Unchanged | NodeAction::Absent) {
            "unchanged"
        } else {
            verb
        };
        println!(
            "{verb} {target}: node {} {}: {}{via} -> {}, mode {:04o}, owner {}:{}",
            n.dest.display(),
            action.as_str().unwrap_or_default(),
            n.device.display(),
            n.node.device(),
            n.node.mode,
            n.node.uid,
            n.node.gid
        );
    }
    for d in &report.dirs {
        let what = if verb.contains("del") {
            "removed"
        } else {
            "created"
        };
        println!("{verb} {target}: directory {} {what}", d.display());
    }
    if report.rules_only {
        println!("{verb} {target}: rules only (no container root: no node touched)");
    }
    for r in &report.rules_changed {
        if let Some(key) = r.strip_prefix('-') {
            println!("{verb} {target}: rule {key} removed");
        } else if r.starts_with("revoked ") {
            println!("{verb} {target}: {r}");
        } else {
            println!("{verb} {target}: rule {r}");
        }
    }
    for r in &report.rules_unchanged {
        println!("unchanged {target}: rule {r}");
    }
    Ok(())
}
