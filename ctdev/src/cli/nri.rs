//! `ctdev nri [--socket PATH] [--config FILE] [--state-dir DIR] [--name N] [--index NN] [--once]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{open, Cli};
use crate::nri::policy::NriPolicy;
use crate::nri::{self, NriOptions, DEFAULT_INDEX, DEFAULT_NAME, DEFAULT_POLICY, DEFAULT_SOCKET};
use crate::ops::Config;

// Arguments of `ctdev nri`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The runtime's NRI socket.
    #[arg(long, env = "CTDEV_NRI_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The NRI policy file (TOML; see docs/KUBERNETES.md). It is watched
    /// and reloaded when it changes (a bad file keeps the policy in use).
    #[arg(long, env = "CTDEV_NRI_CONFIG", default_value = DEFAULT_POLICY)]
    pub config: PathBuf,
    /// Pod map and events directory (default: the file's `state_dir`, else
    /// $CTDEV_NRI_STATE_DIR, else /run/ctdev/nri).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Plugin name announced to the runtime.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Plugin index (two digits; NRI calls plugins in index order).
    #[arg(long, default_value = DEFAULT_INDEX)]
    pub index: String,
    /// Seconds between connection attempts when the socket is absent or closed.
    #[arg(long, default_value_t = 1.0)]
    pub reconnect_interval: f64,
    /// Exit when the connection closes instead of connecting again.
    #[arg(long)]
    pub once: bool,
    /// Validate the policy file and exit.
    #[arg(long)]
    pub check_config: bool,
}

pub(super) fn run(_cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let mut policy = NriPolicy::load(&args.config)?;
    if let Some(dir) = &args.state_dir {
        policy.state_dir = dir.clone();
    }
    if args.check_config {
        println!(
            "{}: {} entr{}, state dir {}, runtime roots {}",
            args.config.display(),
            policy.entries.len(),
            if policy.entries.len() == 1 {
                "y"
            } else {
                "ies"
            },
            policy.state_dir.display(),
            policy
                .runtime_roots
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !(args.reconnect_interval.is_finite() && args.reconnect_interval > 0.0) {
        anyhow::bail!(
            "--reconnect-interval must be a number of seconds > 0, got {}",
            args.reconnect_interval
        );
    }
    // The agent outlives its containers: the program stays loaded.
    let ct = open(Config {
        keep_programs: true,
        ..config
    })?;
    let options = NriOptions {
        socket: args.socket.clone(),
        name: args.name.clone(),
        index: args.index.clone(),
        reconnect: (!args.once).then(|| Duration::from_secs_f64(args.reconnect_interval)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let path = args.config.clone();
    let res = rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        tokio::select! {
            res = nri::serve(ct, policy, path, options) => res.map_err(anyhow::Error::from),
            _ = term.recv() => { tracing::info!("SIGTERM: exiting"); Ok(()) }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: exiting"); Ok(()) }
        }
    });
    // The pod map and events queued by the last handlers.
    nri::flush_all();
    res?;
    Ok(ExitCode::SUCCESS)
}
