//! `ctdev daemon [--config FILE] [--check-config [--show-matches]] [--state-dir DIR] [--pidfile FILE]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{open, Cli};
use crate::daemon::{self, config::DEFAULT_CONFIG, Options};
use crate::nri::{self, policy::NriPolicy, section::NriSection};
use crate::ops::Config;

// Arguments of `ctdev daemon`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML; see /etc/ctdev/policy.example.toml). With an
    /// `[nri]` section the daemon also runs the NRI plugin (docs/KUBERNETES.md).
    #[arg(long, env = "CTDEV_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Validate the policy file, print the resolved policy (and warnings
    /// about configured device paths missing on this host) and exit.
    #[arg(long)]
    pub check_config: bool,
    /// With --check-config: also list the running containers each entry
    /// selects and what the daemon would change there. Changes nothing.
    #[arg(long, requires = "check_config")]
    pub show_matches: bool,
    /// Where the daemon keeps its state file and private device nodes
    /// (default: the file's `state_dir`, else /run/ctdev).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Write the daemon's pid to FILE (removed on exit), for
    /// `kill -HUP $(cat FILE)` to reload without hitting other ctdev processes.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Write `ready` to FILE once the first reconciliation is done (for
    /// service managers, tests and the benchmark; "ctdev daemon: ready" is
    /// printed on stderr too, and READY=1 sent to $NOTIFY_SOCKET).
    #[arg(long, value_name = "FILE", hide = true)]
    pub ready_file: Option<PathBuf>,
}

/// The `[nri]` section of the policy file, if it has one (a file that does
/// not load is left to the daemon, which reports it).
fn nri_section(path: &Path) -> Result<Option<NriSection>> {
    match daemon::config::load(path) {
        Ok(p) => Ok(p.nri),
        Err(_) => Ok(None),
    }
}

/// Starts the NRI plugin of an `[nri]` section on its own thread. A bad
/// NRI policy file stops the daemon from starting, with the file's error.
fn spawn_nri(config: Config, section: NriSection) -> Result<std::thread::JoinHandle<()>> {
    let mut policy = NriPolicy::load(&section.policy)?;
    if let Some(dir) = &section.state_dir {
        policy.state_dir = dir.clone();
    }
    // The agent outlives its containers: the program stays loaded.
    let ct = open(Config {
        keep_programs: true,
        ..config
    })?;
    let options = section.options();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the NRI plugin's async runtime")?;
    std::thread::Builder::new()
        .name("ctdev-nri".into())
        .spawn(move || {
            if let Err(e) = rt.block_on(nri::serve(ct, policy, section.policy, options)) {
                tracing::error!("the NRI plugin stopped: {e}");
            }
        })
        .context("cannot start the NRI plugin's thread")
}

/// Removes the pidfile however the daemon ends.
struct Pidfile(PathBuf);

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn run(_cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let nri_config = config.clone();
    let ct = open(config)?;
    if args.check_config {
        print!(
            "{}",
            daemon::check::check_config(
                &ct,
                &args.config,
                args.show_matches,
                args.state_dir.as_deref()
            )?
        );
        if let Some(section) = nri_section(&args.config)? {
            let policy = NriPolicy::load(&section.policy)?;
            println!(
                "nri policy file {}: {} entr{}",
                section.policy.display(),
                policy.entries.len(),
                if policy.entries.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // One node agent: with an `[nri]` section the NRI plugin runs in this
    // process too (its own thread and ctdev handle; the pin-root lock
    // orders its changes with the daemon's).
    let _nri = match nri_section(&args.config)? {
        Some(section) => Some(spawn_nri(nri_config, section)?),
        None => None,
    };
    let _pidfile = match &args.pidfile {
        Some(path) => {
            std::fs::write(path, format!("{}\n", std::process::id()))
                .with_context(|| format!("cannot write pidfile {}", path.display()))?;
            Some(Pidfile(path.clone()))
        }
        None => None,
    };
    let mut opts = Options::new(args.config.clone());
    opts.state_dir = args.state_dir.clone();
    opts.ready_file = args.ready_file.clone();
    let res = daemon::run(ct, opts);
    // The NRI plugin's thread is not joined: what its journal queued is
    // written now.
    nri::flush_all();
    res?;
    Ok(ExitCode::SUCCESS)
}
