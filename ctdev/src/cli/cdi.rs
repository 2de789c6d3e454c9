//! `ctdev cdi list` and `ctdev cdi generate`; the CDI flags shared with
//! `ctdev add`/`del` (`--cdi-dir`, `--cdi-state`, `--skip-unsupported`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Cli;
use crate::cdi::apply::{CdiRecord, DEFAULT_STATE_DIR};
use crate::cdi::{generate, Registry, DEFAULT_DIRS};
use crate::daemon::selector::{DeviceSelector, HexId};
use crate::ops::Config;

/// CDI flags of `add`/`del`.
#[derive(Debug, Clone, clap::Args)]
pub struct CdiFlags {
    /// CDI spec directory, lowest priority first (repeatable; default
    /// /etc/cdi then /var/run/cdi, the later winning).
    #[arg(long = "cdi-dir", value_name = "DIR")]
    pub cdi_dirs: Vec<PathBuf>,
    /// Where ctdev records what a CDI add did (for `del`).
    #[arg(long, env = "CTDEV_CDI_STATE", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub cdi_state: PathBuf,
}

impl CdiFlags {
    /// The spec directories to read.
    pub fn dirs(&self) -> Vec<PathBuf> {
        if self.cdi_dirs.is_empty() {
            DEFAULT_DIRS.iter().map(PathBuf::from).collect()
        } else {
            self.cdi_dirs.clone()
        }
    }
}

// Arguments of `ctdev cdi`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: CdiCommand,
}

/// `ctdev cdi` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CdiCommand {
    /// The CDI devices defined on this host: name, nodes, mounts, file.
    List {
        /// Spec directories.
        #[command(flatten)]
        flags: CdiFlags,
    },
    /// Write a CDI spec for host devices picked with hotplug selectors.
    Generate(GenerateArgs),
}

/// Arguments of `ctdev cdi generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The kind, VENDOR/CLASS (e.g. example.com/serial).
    #[arg(long)]
    pub kind: String,
    /// SUBSYSTEM (block, tty, ...).
    #[arg(long)]
    pub subsystem: Option<String>,
    /// ID_VENDOR_ID (4 hex digits).
    #[arg(long)]
    pub id_vendor_id: Option<String>,
    /// ID_MODEL_ID (4 hex digits).
    #[arg(long)]
    pub id_model_id: Option<String>,
    /// ID_SERIAL_SHORT.
    #[arg(long)]
    pub serial: Option<String>,
    /// DEVNAME glob without /dev/ (`ttyUSB*`, `loop[3-4]`).
    #[arg(long)]
    pub devname: Option<String>,
    /// One CDI device NAME holding every matched node (default: one device per node, named after it).
    #[arg(long, value_name = "NAME")]
    pub all_as: Option<String>,
    /// cgroup access of the nodes (default: rwm).
    #[arg(long)]
    pub access: Option<String>,
    /// Write the spec here (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Write YAML instead of JSON.
    #[arg(long)]
    pub yaml: bool,
}

#[derive(Serialize)]
struct ListEntry<'a> {
    name: String,
    file: &'a std::path::Path,
    cdi_version: &'a str,
    nodes: Vec<String>,
    mounts: Vec<String>,
    unsupported_on_running: Vec<String>,
}

pub(super) fn run(cli: &Cli, _config: Config, args: &Args) -> Result<ExitCode> {
    match &args.command {
        CdiCommand::List { flags } => list(cli, flags),
        CdiCommand::Generate(g) => gen(g),
    }
}

fn list(cli: &Cli, flags: &CdiFlags) -> Result<ExitCode> {
    let reg = Registry::scan(&flags.dirs());
    let entries: Vec<ListEntry> = reg
        .devices()
        .map(|d| {
            let e = &d.edits;
            let unsupported = crate::cdi::apply::plan(&d.name, e, true)
                .map(|p| p.skipped)
                .unwrap_or_default();
            ListEntry {
                name: d.name.to_string(),
                file: &d.file,
                cdi_version: &d.cdi_version,
                nodes: e
                    .device_nodes
                    .iter()
                    .map(|n| {
                        if n.host() == n.path {
                            n.path.clone()
                        } else {
                            format!("{} (host {})", n.path, n.host())
                        }
                    })
                    .collect(),
                mounts: e
                    .mounts
                    .iter()
                    .map(|m| {
                        format!(
                            "{} <- {} [{}]",
                            m.container_path,
                            m.host_path,
                            m.options.join(",")
                        )
                    })
                    .collect(),
                unsupported_on_running: unsupported,
            }
        })
        .collect();
    let conflicts: Vec<String> = reg.conflicts().iter().map(|c| c.to_string()).collect();
    if cli.json {
        let out = serde_json::json!({
            "devices": entries,
            "invalid_files": reg.problems,
            "conflicts": conflicts,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for e in &entries {
            println!(
                "{}  ({}, cdiVersion {})",
                e.name,
                e.file.display(),
                e.cdi_version
            );
            for n in &e.nodes {
                println!("  node  {n}");
            }
            for m in &e.mounts {
                println!("  mount {m}");
            }
            for u in &e.unsupported_on_running {
                println!("  not on running containers: {u}");
            }
        }
        for p in &reg.problems {
            eprintln!("ctdev: warning: invalid CDI spec {p}");
        }
        for c in &conflicts {
            eprintln!("ctdev: warning: {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn gen(g: &GenerateArgs) -> Result<ExitCode> {
    let hex = |v: &Option<String>, flag: &str| -> Result<Option<HexId>> {
        v.as_deref()
            .map(|s| {
                HexId::parse(s).with_context(|| format!("--{flag} {s:?}: expected 4 hex digits"))
            })
            .transpose()
    };
    let devname = g
        .devname
        .as_deref()
        .map(|d| {
            globset::GlobBuilder::new(d.strip_prefix("/dev/").unwrap_or(d))
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
                .with_context(|| format!("--devname {d:?}"))
        })
        .transpose()?;
    let selector = DeviceSelector {
        subsystem: g.subsystem.clone(),
        id_vendor_id: hex(&g.id_vendor_id, "id-vendor-id")?,
        id_model_id: hex(&g.id_model_id, "id-model-id")?,
        id_serial_short: g.serial.clone(),
        devname,
        devname_text: g.devname.clone(),
        ..Default::default()
    };
    let devices = generate::scan(
        std::path::Path::new("/sys"),
        std::path::Path::new("/run/udev/data"),
    );
    let spec = generate::generate(
        &g.kind,
        &selector,
        &devices,
        g.all_as.as_deref(),
        g.access.as_deref(),
    )?;
    let text = if g.yaml {
        serde_norway::to_string(&spec)?
    } else {
        serde_json::to_string_pretty(&spec)? + "\n"
    };
    match &g.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what a CDI add/del did.
pub(super) fn print_record(cli: &Cli, verb: &str, rec: &CdiRecord) -> Result<()> {
    for w in &rec.warnings {
        eprintln!("ctdev: warning: {w}");
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(rec)?);
        return Ok(());
    }
    let t = &rec.target;
    for n in &rec.nodes {
        println!(
            "{verb} {t}: {} node {} -> {} {}:{}, mode {:04o}, owner {}:{} ({})",
            rec.name,
            n.dest.display(),
            n.dev_type,
            n.major,
            n.minor,
            n.mode,
            n.uid,
            n.gid,
            n.action
        );
    }
    for m in &rec.mounts {
        println!(
            "{verb} {t}: {} mount {} <- {}{}",
            rec.name,
            m.dest.display(),
            m.source.display(),
            if m.read_only { " (ro)" } else { "" }
        );
    }
    for n in &rec.netdevs {
        println!(
            "{verb} {t}: {} interface {} as {}",
            rec.name, n.host_name, n.container_name
        );
    }
    for s in &rec.skipped {
        println!("skipped {t}: {} {s}", rec.name);
    }
    Ok(())
}

/// Whether `add`/`del`'s DEVICE is a CDI name (`vendor.com/class=name`); a
/// CDI name with `--dry-run` is refused, as the CDI path has no dry run.
pub(super) fn is_cdi_device(device: &str, dry_run: bool) -> Result<bool> {
    let cdi = crate::cdi::QualifiedName::looks_like(device);
    if cdi && dry_run {
        anyhow::bail!("--dry-run is not supported for CDI devices ({device}): nothing was changed");
    }
    Ok(cdi)
}
