//! `ctdev monitor [TARGET] [--json] [--count N]`: denial events, live.
//!
//! It waits for the event maps when nothing is attached yet, follows the
//! new maps when they are recreated (the last `detach` removes them, the
//! next `attach` makes new ones at the same pins), and ends cleanly (exit
//! 0) when its output pipe is closed.

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

// Arguments of `ctdev monitor`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(help = super::TARGET_HELP, long_help = super::TARGET_LONG_HELP, value_name = "TARGET")]
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

/// Identity of the pinned event ring: a map recreated after the last
/// detach and a new attach is pinned at the same path with a new inode.
fn ring_identity(ctdev: &Ctdev) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(ctdev.pins().events_map())
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Whether an output error is a closed pipe (`ctdev monitor | head`):
/// the reader is gone, so monitoring ends cleanly.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn watch(
    ctdev: &Ctdev,
    sys_dev: std::path::PathBuf,
    only: Option<u64>,
    count: Option<u64>,
    json: bool,
    since: Option<u64>,
) -> Result<ExitCode> {
    let mut state = Watch {
        enricher: Enricher::new(ctdev.cgroups(), sys_dev),
        seen: 0,
        only,
        count,
        json,
        since,
        skipped: 0,
        skipped_said: false,
    };
    eprintln!(
        "ctdev monitor: watching denials in {} (Ctrl-C to stop)",
        ctdev.pins().root().display()
    );
    let mut waiting_said = false;
    let mut open_failures = 0u32;
    loop {
        // Wait for the maps: nothing attached yet, or all detached.
        let Some(identity) = ring_identity(ctdev) else {
            if !waiting_said {
                // Status lines never end the monitor (stderr may be closed).
                let _ = writeln!(
                    std::io::stderr(),
                    "ctdev monitor: no container is attached yet; waiting for the first attach"
                );
                waiting_said = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        };
        waiting_said = false;
        let ring = match open_ring(ctdev.pins()) {
            Ok(r) => {
                open_failures = 0;
                r
            }
            // Being created or replaced right now: look again shortly; a
            // ring that stays unopenable is an error.
            Err(e) => {
                open_failures += 1;
                if open_failures > 50 {
                    return Err(
                        anyhow::Error::new(e).context("cannot open the denial event ring buffer")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match state.follow(ctdev, ring, identity).await {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "ctdev monitor: the event maps were removed or recreated (detach / attach); following the new ones"
                );
            }
            Err(e) if closed_pipe(&e) => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e),
        }
    }
}

struct Watch<'a> {
    enricher: Enricher<'a>,
    seen: u64,
    only: Option<u64>,
    count: Option<u64>,
    json: bool,
    /// Denials older than this (CLOCK_MONOTONIC ns) are skipped (no --replay).
    since: Option<u64>,
    skipped: u64,
    skipped_said: bool,
}

impl Watch<'_> {
    /// Prints the denials of one ring buffer; `Ok(None)` when its pin was
    /// removed or replaced (the caller re-opens), `Ok(Some(code))` to stop.
    async fn follow(
        &mut self,
        ctdev: &Ctdev,
        ring: aya::maps::RingBuf<aya::maps::MapData>,
        identity: (u64, u64),
    ) -> Result<Option<ExitCode>> {
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd
        // holds it, and never swaps it for another.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("cannot poll the event ring buffer: {e}"))?;
        let mut dropped = drop_totals(ctdev);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let stdout = std::io::stdout();
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("polling the event ring buffer")?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        let Some(event) = decode(&item) else { continue };
                        if self.only.is_some_and(|o| o != event.policy_id) {
                            continue;
                        }
                        if self.since.is_some_and(|t| event.ktime_ns < t) {
                            self.skipped += 1;
                            continue;
                        }
                        let view = self.enricher.denial(&event);
                        let mut out = stdout.lock();
                        if self.json {
                            writeln!(out, "{}", serde_json::to_string(&view)?)?;
                        } else {
                            writeln!(out, "{}", render_denial(&view))?;
                        }
                        out.flush()?;
                        self.seen += 1;
                        if self.count.is_some_and(|c| self.seen >= c) {
                            return Ok(Some(ExitCode::SUCCESS));
                        }
                    }
                    guard.clear_ready();
                    if self.skipped > 0 && !self.skipped_said {
                        let _ = writeln!(
                            std::io::stderr(),
                            "ctdev monitor: skipped {} denial(s) buffered before monitor started (--replay shows them)",
                            self.skipped
                        );
                        self.skipped_said = true;
                    }
                }
                _ = ticker.tick() => {
                    if ring_identity(ctdev) != Some(identity) {
                        return Ok(None);
                    }
                    // Drops are reported, never silently lost.
                    let now = drop_totals(ctdev);
                    for (id, total) in &now {
                        let before = dropped.get(id).copied().unwrap_or(0);
                        if *total > before && self.only.is_none_or(|o| o == *id) {
                            let view = DroppedView {
                                kind: "dropped",
                                policy_id: *id,
                                container: self.enricher.cgroup_path(*id),
                                dropped: total - before,
                                total: *total,
                                pod: self.enricher.pod(*id),
                            };
                            let mut out = stdout.lock();
                            if self.json {
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
                _ = tokio::signal::ctrl_c() => return Ok(Some(ExitCode::SUCCESS)),
            }
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
