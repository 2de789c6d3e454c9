//! Command line: raw flags (clap) → validated [`Config`] → one operation →
//! human or JSON output. One module per subcommand.
//!
//! Parsing: options may come anywhere (`revoke T c 1:3 r --missing-ok`,
//! `check T /dev/null r --json`); rule words are plain positional values, so
//! a word starting with `--` is always an option (the empty access is `''`
//! or `-`). Every TARGET argument gets the same help text ([`TARGET_HELP`],
//! [`TARGET_LONG_HELP`]); [`command`] is also what the man pages and shell
//! completions are generated from (`cargo xtask dist`).

mod add;
mod allow;
mod attach;
mod cdi;
mod check;
mod daemon;
mod del;
mod demo;
mod detach;
mod docs;
mod list;
mod monitor;
mod nri;
mod reset_counters;
mod revoke;
mod set;
mod status;
mod style;
mod suggest;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::ops::{ChangeReport, Config, Ctdev};
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
    /// More logging on stderr (-v info, -vv debug; the daemon logs info
    /// without -v); RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Put a cgroup under a default-deny device policy (idempotent).
    Attach(attach::Args),
    /// Allow device access: takes effect at once, no program reload.
    Allow(allow::Args),
    /// Replace the whole rule set atomically: every access sees the old or the new set.
    Set(set::Args),
    /// Remove device access: clears the rule's bits; an entry with none left is deleted.
    Revoke(revoke::Args),
    /// Audit dump: every container under policy and its rules.
    List(list::Args),
    /// Everything about one container: runtime, init pid, device programs on
    /// it and its ancestors, rules with hits, devices passed in, drift, denials.
    #[command(visible_alias = "show")]
    Status(status::Args),
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
    /// CDI devices: list the host's specs, generate one from hotplug selectors.
    Cdi(cdi::Args),
    /// Apply a declarative policy file: containers as they start, devices as
    /// they are plugged (kernel uevents), reconciled after a restart.
    Daemon(daemon::Args),
    /// Run as an NRI plugin of containerd/CRI-O: pods get their devices at
    /// start, under ctdev's policy before their first instruction.
    Nri(nri::Args),
    /// Write man pages and shell completions into a directory (for packaging).
    #[command(hide = true)]
    GenerateDocs(docs::Args),
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
            state_dir: std::env::var_os("CTDEV_STATE_DIR").map(PathBuf::from),
            ..Config::default()
        })
    }
}

/// Exit status of a command that failed (1 is `check`'s "denied").
pub const EXIT_ERROR: u8 = 2;

/// Short help of every TARGET argument.
pub const TARGET_HELP: &str =
    "The container: cgroup path, pid:N, id:N, RUNTIME:NAME or a container name";

/// Long help (`--help`, man pages) of every TARGET argument.
pub const TARGET_LONG_HELP: &str = "The container, one of:
  a cgroup directory under any cgroup2 mount (/sys/fs/cgroup/app, /sys/fs/cgroup/unified/app),
  a path inside the cgroup2 hierarchy as /proc/PID/cgroup shows it (/app, or relative: app/x),
  pid:N      the cgroup of process N,
  id:N       a policy id from `ctdev list` (also after the cgroup was removed),
  lxc:NAME, docker:ID, podman:ID, containerd:ID, crio:ID   a container of that runtime
             (a name, or an ID prefix),
  NAME       a bare word: a cgroup relative to the mount, or a container of any runtime.";

/// The full command-line definition: what `main` parses and what man pages
/// and shell completions are generated from. Each subcommand's arguments
/// are built only when that subcommand is used (`defer`: start-up builds one
/// verb's arguments, not all of them); [`clap::Command::build`] builds them
/// all (docs, tests).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the process's arguments with [`command`] (exits on bad usage).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Parses `args` (with the program name first) with [`command`].
#[cfg(test)]
fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// What clap prints for `--version` (and `-V`).
const VERSION_LINE: &str = concat!("ctdev ", env!("CARGO_PKG_VERSION"), "\n");

/// `ctdev --version` (or `-V`) alone: answered before the command line is
/// built (clap's set-up of the top-level command and its global options
/// is most of what a start costs after exec), with the same line clap
/// prints. Any other argument goes through clap as before.
fn version_only() -> bool {
    let mut args = std::env::args_os().skip(1);
    matches!(
        (args.next(), args.next()),
        (Some(a), None) if a == "--version" || a == "-V"
    )
}

/// Parses arguments, runs the command, prints errors; the process exit code.
pub fn main() -> ExitCode {
    if version_only() {
        use std::io::Write;
        return match std::io::stdout().write_all(VERSION_LINE.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(EXIT_ERROR),
        };
    }
    let cli = parse();
    if !matches!(
        cli.command,
        Command::Daemon(_) | Command::Nri(_) | Command::Monitor(_)
    ) {
        // `ctdev list | head` ends quietly like other tools, instead of a
        // panic on EPIPE. The daemon and the NRI plugin keep ignoring
        // SIGPIPE, and so does `monitor`: a closed stderr must not end it
        // and a closed stdout ends it with exit 0 (it handles EPIPE).
        // SAFETY: restoring a signal's default disposition at start-up,
        // before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The daemon logs every change it makes: info by default.
    // `-v` is info and `-vv` debug for every command; the daemon logs info
    // by default (so `ctdev daemon -v` is info too, as the help says).
    let daemon = matches!(cli.command, Command::Daemon(_) | Command::Nri(_));
    init_logging(if daemon {
        cli.verbose.max(1)
    } else {
        cli.verbose
    });
    if daemon {
        lock_memory();
    }
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ctdev: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if let Some(hint) = suggest::hint(&cli, &err) {
                eprintln!("  {hint}");
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Keeps the daemon's and the NRI plugin's memory resident:
/// `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`. A page they have
/// touched is never paged out again, so an event handled after a quiet
/// minute does not wait for its code to be read back from disk (hosts
/// that reclaim cold memory: memory pressure, DAMON pageout). `MCL_ONFAULT`
/// locks pages as they are used: nothing is read in ahead, and the
/// resident set stays what the process touches. Not inherited by the
/// processes they start. A failure (no `CAP_IPC_LOCK`, `RLIMIT_MEMLOCK`)
/// is a warning: the lock is about latency, never about enforcement.
fn lock_memory() {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    let flags = MlockAllFlags::MCL_CURRENT
        | MlockAllFlags::MCL_FUTURE
        | MlockAllFlags::from_bits_retain(libc::MCL_ONFAULT);
    if let Err(err) = mlockall(flags) {
        tracing::warn!(
            "cannot lock this process's memory (mlockall): {err}; pages it has not used \
             for a while may have to be read back from disk when an event needs them"
        );
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => tracing::level_filters::LevelFilter::WARN,
        1 => tracing::level_filters::LevelFilter::INFO,
        _ => tracing::level_filters::LevelFilter::DEBUG,
    };
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(style::colour_on(&std::io::stderr()));
    // RUST_LOG's directives need an EnvFilter; without it a plain level
    // does the same as `EnvFilter::new(level)` without parsing directives
    // at every start.
    let _ = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => fmt.with_env_filter(filter).try_init(),
        Err(_) => fmt.with_max_level(level).try_init(),
    };
}

/// Runs one parsed command line.
pub fn run(cli: &Cli) -> Result<ExitCode> {
    if let Command::GenerateDocs(a) = &cli.command {
        // Needs no privilege and touches no kernel state.
        return docs::run(a);
    }
    let config = cli.config()?;
    require_capabilities()?;
    match &cli.command {
        Command::Attach(a) => attach::run(cli, config, a),
        Command::Allow(a) => allow::run(cli, config, a),
        Command::Set(a) => set::run(cli, config, a),
        Command::Revoke(a) => revoke::run(cli, config, a),
        Command::List(a) => list::run(cli, config, a),
        Command::Status(a) => status::run(cli, config, a),
        Command::Detach(a) => detach::run(cli, config, a),
        Command::Monitor(a) => monitor::run(cli, config, a),
        Command::Check(a) => check::run(cli, config, a),
        Command::ResetCounters(a) => reset_counters::run(cli, config, a),
        Command::Demo(a) => demo::run(cli, config, a),
        Command::Add(a) => add::run(cli, config, a),
        Command::Del(a) => del::run(cli, config, a),
        Command::Daemon(a) => daemon::run(cli, config, a),
        Command::Cdi(a) => cdi::run(cli, config, a),
        Command::Nri(a) => nri::run(cli, config, a),
        Command::GenerateDocs(a) => docs::run(a),
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
    let eff = effective_capabilities()?;
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

/// The effective capability set of this process (`capget(2)`, version 3:
/// two 32-bit words). One syscall, where reading `CapEff` from
/// `/proc/self/status` made the kernel format the whole status file
/// (~30 µs of every command's start).
fn effective_capabilities() -> Result<u64> {
    /// `_LINUX_CAPABILITY_VERSION_3`.
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a version-3 header (pid 0: this process) and a
    // buffer of the two data words that version writes; both live for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::addr_of_mut!(header),
            data.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error())
            .context("capget: cannot read this process's capabilities");
    }
    Ok(u64::from(data[1].effective) << 32 | u64::from(data[0].effective))
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

/// Prints the result of `allow`.
fn print_change(cli: &Cli, verb: &str, target: &Target, report: &ChangeReport) -> Result<()> {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for line in &report.changed {
        println!("{verb} {target}: {line}");
    }
    for line in &report.unchanged {
        println!("unchanged {target}: {line} (already allowed)");
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
        command().debug_assert();
    }

    #[test]
    fn the_early_version_line_is_clap_s() {
        assert_eq!(VERSION_LINE, command().render_version());
    }

    #[test]
    fn capabilities_are_read() {
        // Whatever the test runs with: the call itself works.
        effective_capabilities().unwrap();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        try_parse_from(std::iter::once("ctdev").chain(args.iter().copied()))
    }

    #[test]
    fn options_after_rule_words_are_options() {
        let cli = parse(&["revoke", "web", "c", "1:3", "r", "--missing-ok"]).unwrap();
        let Command::Revoke(a) = &cli.command else {
            panic!("{cli:?}")
        };
        assert!(a.missing_ok);
        assert_eq!(a.rules, ["c", "1:3", "r"]);
        let cli = parse(&["revoke", "--missing-ok", "web", "c 1:3 r", "--json"]).unwrap();
        assert!(cli.json);
        let cli = parse(&["check", "pid:4", "/dev/null", "r", "--json"]).unwrap();
        let Command::Check(a) = &cli.command else {
            panic!("{cli:?}")
        };
        assert!(cli.json);
        assert_eq!(a.device, ["/dev/null", "r"]);
        let cli = parse(&["allow", "web", "c", "1:3", "rw", "--json", "b", "8:*", "r"]).unwrap();
        let Command::Allow(a) = &cli.command else {
            panic!("{cli:?}")
        };
        assert!(cli.json);
        assert_eq!(group_rule_words(&a.rules), ["c 1:3 rw", "b 8:* r"]);
        let cli = parse(&[
            "attach", "web", "--rule", "c 1:3 rw", "--json", "--preset", "none",
        ]);
        assert!(cli.unwrap().json);
    }

    #[test]
    fn empty_access_words_stay_rule_words() {
        for empty in ["-", "''", ""] {
            let cli = parse(&["revoke", "web", "c", "1:3", empty]).unwrap();
            let Command::Revoke(a) = &cli.command else {
                panic!("{cli:?}")
            };
            assert_eq!(rules_from_words(&a.rules).unwrap().len(), 1, "{empty:?}");
        }
    }

    #[test]
    fn unknown_options_are_errors_not_rules() {
        let err = parse(&["revoke", "web", "c", "1:3", "r", "--missing-okay"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn every_target_has_the_same_help() {
        let mut cmd = command();
        cmd.build();
        let mut seen = 0;
        for sub in cmd.get_subcommands() {
            if let Some(t) = sub.get_arguments().find(|a| a.get_id() == "target") {
                assert_eq!(
                    t.get_help().map(|h| h.to_string()).as_deref(),
                    Some(TARGET_HELP),
                    "{}",
                    sub.get_name()
                );
                seen += 1;
            }
        }
        assert!(seen >= 10, "{seen}");
        // Built late (`defer`), an argument struct's doc comment would
        // replace the subcommand's own summary.
        for sub in cmd.get_subcommands() {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(
                !about.is_empty()
                    && !about.starts_with("Arguments of")
                    && !about.starts_with("Flags of"),
                "{}: {about:?}",
                sub.get_name()
            );
        }
        assert!(parse(&["show", "web"]).is_ok(), "status has the alias show");
    }
}
