//! The measuring process: `xtask bench-probe …` (hidden subcommand). It
//! joins a cgroup by writing its pid to `cgroup.procs`, then either times
//! open()+close() of a device node in per-thread CPU time (`cost`), or loops
//! on access(2) and prints the monotonic time of every verdict change
//! (`watch`). The timed loops make only syscalls: no allocation, no I/O.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Arguments of the hidden `bench-probe` subcommand.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// ns per open()+close() of PATH from inside CGROUP; one JSON line.
    Cost {
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        iters: u64,
        #[arg(long)]
        rounds: usize,
    },
    /// Loops on access(PATH, R_OK) inside CGROUP; prints `ready STATE`, then
    /// `STATE NS` (CLOCK_MONOTONIC) whenever the verdict changes.
    Watch {
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        path: PathBuf,
    },
}

/// What `bench-probe cost` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostOutput {
    /// errno of the first open (0: allowed).
    pub errno: i32,
    /// ns per open()+close(), one per round.
    pub ns_per_op: Vec<f64>,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("NUL in {}", p.display()))
}

/// Nanoseconds of `clock`.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; the clocks used always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn join(cgroup: &Path) -> Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), "0")
        .with_context(|| format!("cannot join cgroup {}", cgroup.display()))
}

/// Runs the subcommand (in the re-executed xtask).
pub fn main(args: &Args) -> Result<()> {
    match &args.mode {
        Mode::Cost {
            cgroup,
            path,
            iters,
            rounds,
        } => {
            let path = cstring(path)?;
            join(cgroup)?;
            let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
            let open_close = || -> i32 {
                // SAFETY: path is a valid NUL-terminated string; the fd is ours.
                unsafe {
                    let fd = libc::open(path.as_ptr(), flags);
                    if fd < 0 {
                        return errno();
                    }
                    libc::close(fd);
                }
                0
            };
            let first = open_close();
            // Warm-up: caches, branch predictors, dentry.
            for _ in 0..(*iters / 10).max(100) {
                open_close();
            }
            let mut out = Vec::with_capacity(*rounds);
            for _ in 0..*rounds {
                let t0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
                for _ in 0..*iters {
                    std::hint::black_box(open_close());
                }
                let t1 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
                out.push((t1 - t0) as f64 / *iters as f64);
            }
            let line = serde_json::to_string(&CostOutput {
                errno: first,
                ns_per_op: out,
            })?;
            println!("{line}");
        }
        Mode::Watch { cgroup, path } => {
            let path = cstring(path)?;
            join(cgroup)?;
            let allowed = || -> bool {
                // SAFETY: path is a valid NUL-terminated string.
                unsafe { libc::access(path.as_ptr(), libc::R_OK) == 0 }
            };
            let mut state = allowed();
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "ready {}", u8::from(state))?;
            stdout.flush()?;
            loop {
                let now = allowed();
                if now != state {
                    let t = clock_ns(libc::CLOCK_MONOTONIC);
                    state = now;
                    // A closed pipe (the bench is done) ends the probe.
                    if writeln!(stdout, "{} {t}", u8::from(state)).is_err()
                        || stdout.flush().is_err()
                    {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the xtask binary to re-execute")
}

/// The command line of a cost probe (also printed in the report).
pub fn cost_command(cgroup: &Path, path: &Path, iters: u64, rounds: usize) -> Result<Command> {
    let mut cmd = Command::new(exe()?);
    cmd.arg("bench-probe")
        .arg("cost")
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--path")
        .arg(path)
        .args([
            "--iters",
            &iters.to_string(),
            "--rounds",
            &rounds.to_string(),
        ]);
    Ok(cmd)
}

/// Runs a cost probe in `cgroup` and returns its rounds.
pub fn cost(cgroup: &Path, path: &Path, iters: u64, rounds: usize) -> Result<CostOutput> {
    let out = cost_command(cgroup, path, iters, rounds)?
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the cost probe")?;
    if !out.status.success() {
        bail!("cost probe in {} failed ({})", cgroup.display(), out.status);
    }
    serde_json::from_slice(&out.stdout).context("cannot parse the cost probe's output")
}

/// A running `watch` probe; killed and reaped on drop.
pub struct Watcher {
    child: Child,
    lines: BufReader<ChildStdout>,
    /// Verdict when the watcher started.
    pub initial: bool,
}

impl Watcher {
    /// Starts a watcher on `path` inside `cgroup`.
    pub fn start(cgroup: &Path, path: &Path) -> Result<Self> {
        let mut child = Command::new(exe()?)
            .arg("bench-probe")
            .arg("watch")
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--path")
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the watch probe")?;
        let stdout = child.stdout.take().context("watch probe has no stdout")?;
        let mut w = Watcher {
            child,
            lines: BufReader::new(stdout),
            initial: false,
        };
        let line = w.line()?;
        w.initial = match line.trim() {
            "ready 1" => true,
            "ready 0" => false,
            other => bail!("watch probe: unexpected {other:?}"),
        };
        Ok(w)
    }

    fn line(&mut self) -> Result<String> {
        if self.lines.buffer().is_empty() {
            let mut pfd = libc::pollfd {
                fd: self.lines.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is one valid pollfd for a pipe we own.
            if unsafe { libc::poll(&mut pfd, 1, 10_000) } == 0 {
                bail!("watch probe: no verdict change within 10 s");
            }
        }
        let mut line = String::new();
        if self.lines.read_line(&mut line)? == 0 {
            bail!("watch probe ended early");
        }
        Ok(line)
    }

    /// Waits for the next verdict change; returns (allowed, CLOCK_MONOTONIC ns).
    pub fn next_change(&mut self) -> Result<(bool, u64)> {
        let line = self.line()?;
        let mut words = line.split_whitespace();
        let state = words.next() == Some("1");
        let t = words
            .next()
            .and_then(|w| w.parse().ok())
            .with_context(|| format!("watch probe: bad line {line:?}"))?;
        Ok((state, t))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
