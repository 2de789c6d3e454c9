//! `ctdev monitor [TARGET] [--json] [--count N]`: denial events, live.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;

use super::{open, Cli};
use crate::audit::events::{decode, open_ring, render_denial, DroppedView, Enricher};
use crate::kernel::counters::Counters;
use crate::ops::{Config, Ctdev};
use crate::target::Target;

/// Arguments of `ctdev monitor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this container (events of others are consumed but not shown).
    pub target: Option<Target>,
    /// Stop after this many denials.
    #[arg(long)]
    pub count: Option<u64>,
    /// Also show denials still buffered from before monitor started (by
    /// default they are skipped, and their number is said on stderr).
    #[arg(long)]
    pub replay: bool,
}

pub(super) fn run(cli: &Cli, config: Config, args: &Args) -> Result<ExitCode> {
    let sys_dev = config.sys_dev.clone();
    let ctdev = open(config)?;
    let only = match &args.target {
        Some(t) => Some(ctdev.resolve(t)?.policy_id),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let since = (!args.replay).then(monotonic_now_ns);
    runtime.block_on(watch(&ctdev, sys_dev, only, args.count, cli.json, since))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the events' `ktime_ns`.
fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

async fn watch(
    ctdev: &Ctdev,
    sys_dev: std::path::PathBuf,
    only: Option<u64>,
    count: Option<u64>,
    json: bool,
    since: Option<u64>,
) -> Result<ExitCode> {
    let ring =
        open_ring(ctdev.pins()).context("no denial events to watch: attach a container first")?;
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd
    // holds it, and never swaps it for another.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("cannot poll the event ring buffer: {e}"))?;
    let mut enricher = Enricher::new(ctdev.cgroups(), sys_dev);
    let mut dropped = drop_totals(ctdev);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut seen = 0u64;
    let mut skipped = 0u64;
    let mut skipped_said = false;
    let stdout = std::io::stdout();
    eprintln!(
        "ctdev monitor: watching denials in {} (Ctrl-C to stop)",
        ctdev.pins().root().display()
    );
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the event ring buffer")?;
                while let Some(item) = guard.get_inner_mut().next() {
                    let Some(event) = decode(&item) else { continue };
                    if only.is_some_and(|o| o != event.policy_id) {
                        continue;
                    }
                    if since.is_some_and(|t| event.ktime_ns < t) {
                        skipped += 1;
                        continue;
                    }
                    let view = enricher.denial(&event);
                    let mut out = stdout.lock();
                    if json {
                        writeln!(out, "{}", serde_json::to_string(&view)?)?;
                    } else {
                        writeln!(out, "{}", render_denial(&view))?;
                    }
                    out.flush()?;
                    seen += 1;
                    if count.is_some_and(|c| seen >= c) {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                guard.clear_ready();
                if skipped > 0 && !skipped_said {
                    eprintln!("ctdev monitor: skipped {skipped} denial(s) buffered before monitor started (--replay shows them)");
                    skipped_said = true;
                }
            }
            _ = ticker.tick() => {
                // Drops are reported, never silently lost.
                let now = drop_totals(ctdev);
                for (id, total) in &now {
                    let before = dropped.get(id).copied().unwrap_or(0);
                    if *total > before && only.is_none_or(|o| o == *id) {
                        let view = DroppedView {
                            kind: "dropped",
                            policy_id: *id,
                            container: enricher.cgroup_path(*id),
                            dropped: total - before,
                            total: *total,
                            pod: enricher.pod(*id),
                        };
                        let mut out = stdout.lock();
                        if json {
                            writeln!(out, "{}", serde_json::to_string(&view)?)?;
                        } else {
                            writeln!(out, "dropped {} denial event(s) of {}{} (rate limit), {} in total",
                                view.dropped,
                                view.container.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("policy {id}")),
                                view.pod.as_ref().map(|p| format!(" (pod {})", p.name())).unwrap_or_default(),
                                view.total)?;
                        }
                        out.flush()?;
                    }
                }
                dropped = now;
            }
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn drop_totals(ctdev: &Ctdev) -> BTreeMap<u64, u64> {
    Counters::open(ctdev.pins())
        .ok()
        .flatten()
        .and_then(|c| c.stats().ok())
        .map(|s| {
            s.into_iter()
                .map(|(id, st)| (id, st.events_dropped))
                .collect()
        })
        .unwrap_or_default()
}
