//! Command line: raw flags (clap) → validated [`Config`] → one operation →
//! human or JSON output. One module per subcommand.

mod add;
mod allow;
mod attach;
mod check;
mod daemon;
mod del;
mod demo;
mod detach;
mod list;
mod monitor;
mod nri;
mod reset_counters;
mod revoke;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::controller::{ChangeReport, Config, Ctdev};
use crate::rule::{parse_rules, Rule};
use crate::target::Target;

/// ctdev: per-container device policy for cgroup v2, as map writes.
#[derive(Debug, Parser)]
#[command(name = "ctdev", version, about, long_about = None)]
pub struct Cli {
    /// bpffs directory holding ctdev's pins (the policy map and one link per container).
    #[arg(long, global = true, env = "CTDEV_PIN_ROOT", default_value = crate::kernel::pins::DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// cgroup2 mount point (default: found in /proc/self/mountinfo).
    #[arg(long, global = true, env = "CTDEV_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// eBPF object to load instead of the one embedded at build time.
    #[arg(long, global = true, env = "CTDEV_BPF_OBJECT")]
    pub bpf_object: Option<PathBuf>,
    /// Seconds to wait for another ctdev that is changing the same pin root.
    #[arg(
        long,
        global = true,
        env = "CTDEV_LOCK_TIMEOUT",
        default_value_t = 10.0
    )]
    pub lock_timeout: f64,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v info, -vv debug); RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put a cgroup under a default-deny device policy (idempotent).
    Attach(attach::Args),
    /// Allow device access: takes effect at once, no program reload.
    Allow(allow::Args),
    /// Remove device access: clears the rule's bits; an entry with none left is deleted.
    Revoke(revoke::Args),
    /// Audit dump: every container under policy and its rules.
    List(list::Args),
    /// Stop enforcing on a cgroup and remove its pins and rules.
    Detach(detach::Args),
    /// Stream denied device accesses as they happen (JSON lines with --json).
    Monitor(monitor::Args),
    /// The kernel's real verdict for one access from inside a container, explained.
    /// Exit status: 0 allowed, 1 denied, 2 error.
    Check(check::Args),
    /// Set hit and denial counters back to zero.
    ResetCounters(reset_counters::Args),
    /// Show ctdev working on a scratch cgroup, then clean up.
    Demo(demo::Args),
    /// Pass a host device (node, directory of nodes, or network interface) into a container.
    Add(add::Args),
    /// Take a device passed with `add` away from a container again.
    Del(del::Args),
    /// Apply a declarative policy file: containers as they start, devices as
    /// they are plugged (kernel uevents), reconciled after a restart.
    Daemon(daemon::Args),
    /// Run as an NRI plugin of containerd/CRI-O: pods get their devices at
    /// start, under ctdev's policy before their first instruction.
    Nri(nri::Args),
}

impl Cli {
    /// The validated configuration the flags describe.
    pub fn config(&self) -> Result<Config> {
        if !(self.lock_timeout.is_finite() && self.lock_timeout >= 0.0) {
            anyhow::bail!(
                "--lock-timeout must be a number of seconds >= 0, got {}",
                self.lock_timeout
            );
        }
        if !self.pin_root.is_absolute() {
            anyhow::bail!(
                "--pin-root must be an absolute path, got {}",
                self.pin_root.display()
            );
        }
        Ok(Config {
            pin_root: self.pin_root.clone(),
            cgroup_mount: self.cgroup_root.clone(),
            bpf_object: self.bpf_object.clone(),
            lock_timeout: Duration::from_secs_f64(self.lock_timeout),
            ..Config::default()
        })
    }
}

/// Exit status of a command that failed (1 is `check`'s "denied").
pub const EXIT_ERROR: u8 = 2;

/// Parses arguments, runs the command, prints errors; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs every change it makes: info by default.
    init_logging(
        cli.verbose + u8::from(matches!(cli.command, Command::Daemon(_) | Command::Nri(_))),
    );
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ctdev: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs one parsed command line.
pub fn run(cli: &Cli) -> Result<ExitCode> {
    let config = cli.config()?;
    require_capabilities()?;
    match &cli.command {
        Command::Attach(a) => attach::run(cli, config, a),
        Command::Allow(a) => allow::run(cli, config, a),
        Command::Revoke(a) => revoke::run(cli, config, a),
        Command::List(a) => list::run(cli, config, a),
        Command::Detach(a) => detach::run(cli, config, a),
        Command::Monitor(a) => monitor::run(cli, config, a),
        Command::Check(a) => check::run(cli, config, a),
        Command::ResetCounters(a) => reset_counters::run(cli, config, a),
        Command::Demo(a) => demo::run(cli, config, a),
        Command::Add(a) => add::run(cli, config, a),
        Command::Del(a) => del::run(cli, config, a),
        Command::Daemon(a) => daemon::run(cli, config, a),
        Command::Nri(a) => nri::run(cli, config, a),
    }
}

/// Capabilities every command needs: bpf objects (`CAP_BPF`, and
/// `CAP_SYS_ADMIN` for cgroup programs, pins and other programs' ids) and
/// `CAP_NET_ADMIN` (cgroup program types).
const REQUIRED_CAPS: [(u32, &str); 3] = [
    (21, "CAP_SYS_ADMIN"),
    (39, "CAP_BPF"),
    (12, "CAP_NET_ADMIN"),
];

/// Fails with a clear message when the process lacks a capability it needs
/// (not root, or root with capabilities dropped), before anything is touched.
fn require_capabilities() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("cannot read /proc/self/status to check capabilities")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff in /proc/self/status")?;
    let missing: Vec<&str> = REQUIRED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        anyhow::bail!(
            "ctdev must run as root with {}: missing {} (uid {euid}, effective capabilities {eff:#x})",
            REQUIRED_CAPS.map(|c| c.1).join(", "),
            missing.join(", ")
        );
    }
    Ok(())
}

/// Opens the library for one command.
fn open(config: Config) -> Result<Ctdev> {
    Ctdev::new(config).context("cannot start")
}

/// Groups words into rules: a rule starts at a type letter (`a`, `b`, `c`)
/// or a path, so `c 10:200 rw b 8:* r` and `"c 10:200 rw" "b 8:* r"` both
/// give two rules. An empty word is the empty access `''`.
pub fn group_rule_words(words: &[String]) -> Vec<String> {
    let mut rules: Vec<String> = Vec::new();
    for word in words {
        let tokens: Vec<&str> = if word.trim().is_empty() {
            vec!["''"]
        } else {
            word.split_whitespace().collect()
        };
        for tok in tokens {
            let starts_rule = matches!(tok, "a" | "b" | "c") || tok.starts_with('/');
            match rules.last_mut() {
                Some(last) if !starts_rule => {
                    last.push(' ');
                    last.push_str(tok);
                }
                // A first word that is no type starts a rule anyway, so the
                // parser names the bad field.
                _ => rules.push(tok.to_string()),
            }
        }
    }
    rules
}

/// Parses rule words given on the command line.
pub(crate) fn rules_from_words(words: &[String]) -> Result<Vec<Rule>> {
    Ok(parse_rules(&group_rule_words(words))?)
}

/// Prints the result of allow/revoke.
fn print_change(cli: &Cli, verb: &str, target: &Target, report: &ChangeReport) -> Result<()> {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for line in &report.changed {
        println!("{verb} {target}: {line}");
    }
    for line in &report.unchanged {
        println!("unchanged {target}: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn groups_rule_words() {
        assert_eq!(
            group_rule_words(&words(&["c", "10:200", "rw", "b", "8:*", "r"])),
            ["c 10:200 rw", "b 8:* r"]
        );
        assert_eq!(
            group_rule_words(&words(&["c 10:200 rw", "/dev/null", "r"])),
            ["c 10:200 rw", "/dev/null r"]
        );
        assert_eq!(group_rule_words(&words(&["c", "1:3", ""])), ["c 1:3 ''"]);
        assert_eq!(group_rule_words(&words(&["q", "1:3", "r"])), ["q 1:3 r"]);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
