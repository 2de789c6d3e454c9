//! `cargo xtask build|run|test|bench`: installs what ctdev needs on a fresh
//! machine, builds the eBPF object (nightly, bpfel-unknown-none, bpf-linker)
//! and the userspace binary with the object embedded, then runs, tests or
//! benchmarks it.

mod bench;
mod dist;
mod fuzz;
mod setup;
mod test;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install prerequisites, build the eBPF object and ctdev.
    Build {
        /// Optimised userspace build.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run ctdev as root with ARGS (no ARGS: `ctdev demo`).
    Run {
        /// Optimised userspace build.
        #[arg(long)]
        release: bool,
        /// Arguments for ctdev.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then run the whole test suite (unit + real-kernel integration).
    Test {
        /// Extra arguments for the test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build (release) the Debian package: ctdev, man pages, completions,
    /// the systemd unit, the example policy; into target/dist/deb/. Prints
    /// its size.
    Dist {
        /// Then install it into a clean Debian root (root needed), run
        /// `ctdev demo` there, purge it, and print the transcript.
        #[arg(long)]
        install_test: bool,
    },
    /// Install cargo-fuzz when missing, then run every fuzz target for N seconds.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all of them).
        #[arg(long)]
        target: Option<String>,
    },
    /// Build, then run the takeover differential test against the real
    /// runc and crun with N random device lists from SEED (fuzz-style; CI
    /// runs it for a few minutes with a fresh seed).
    Difftest {
        /// Random lists to try (alternating runc and crun).
        #[arg(long, default_value_t = 200)]
        cases: u64,
        /// Seed of the random lists (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Build (release), then measure and write docs/BENCHMARKS.md.
    Bench {
        #[command(flatten)]
        what: BenchWhat,
    },
    /// The bench itself, in the optimised xtask (re-executed by `bench`).
    #[command(hide = true)]
    BenchRun {
        #[arg(long)]
        ctdev: PathBuf,
        #[command(flatten)]
        what: BenchWhat,
    },
    /// The bench's measuring process (re-executed by `bench`, not for humans).
    #[command(hide = true)]
    BenchProbe(bench::probe::Args),
}

/// What `bench` measures (also passed on to the re-executed `bench-run`).
#[derive(clap::Args, Debug)]
struct BenchWhat {
    /// A few seconds' smoke run (CI), same code paths, fewer iterations.
    #[arg(long)]
    quick: bool,
    /// Run one section alone (cost, update, add, scale, hotplug, churn, nri),
    /// without rewriting docs/BENCHMARKS.md (target/bench-only-SECTION/).
    #[arg(long)]
    only: Option<String>,
    /// With --only: run it this many times in a row.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Build { release } => {
            build(release, Features::Default)?;
        }
        Cmd::Dist { install_test } => {
            if install_test {
                require_root("cargo xtask dist --install-test")?;
            }
            build(true, Features::Default)?;
            let deb = dist::package(dist::Profile::Release)?;
            if install_test {
                dist::install_test(&deb)?;
            }
        }
        Cmd::Fuzz { seconds, target } => {
            fuzz::run(seconds, target.as_deref())?;
        }
        Cmd::Run { release, args } => {
            let ctdev = build(release, Features::Default)?;
            require_root("cargo xtask run")?;
            let args = if args.is_empty() {
                vec!["demo".to_string()]
            } else {
                args
            };
            step(&format!("running {} {}", ctdev.display(), args.join(" ")));
            let status = Command::new(&ctdev).args(&args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { args } => {
            require_root("cargo xtask test")?;
            setup::test_prerequisites()?;
            build(false, Features::Failpoints)?;
            // The package test installs a package of the debug build just
            // made (`cargo xtask dist` makes the release one).
            let dist = test::Dist {
                deb: dist::package(dist::Profile::Debug)?,
                clean_root: dist::clean_root()?,
            };
            test::run(&args, &dist)?;
        }
        Cmd::Difftest { cases, seed } => {
            require_root("cargo xtask difftest")?;
            setup::test_prerequisites()?;
            build(false, Features::Failpoints)?;
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(1)
            });
            step(&format!("difftest: {cases} lists from seed {seed}"));
            test::difftest(cases, seed)?;
        }
        Cmd::Bench { what } => {
            require_root("cargo xtask bench")?;
            setup::test_prerequisites()?;
            let ctdev = build(true, Features::Default)?;
            bench::run(&ctdev, what.quick, what.only.as_deref(), what.repeat)?;
        }
        Cmd::BenchRun { ctdev, what } => {
            bench::run_here(&ctdev, what.quick, what.only.as_deref(), what.repeat)?
        }
        Cmd::BenchProbe(args) => bench::probe::main(&args)?,
    }
    Ok(())
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Prints what the xtask is doing.
pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// Runs a command, failing with its command line if it fails.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let desc = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {desc}"))?;
    if !status.success() {
        bail!("{desc} failed with {status}");
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (BPF programs, cgroups, namespaces); run it as root");
    }
    Ok(())
}

/// Path of the eBPF object `build_ebpf` produces.
pub fn ebpf_object() -> PathBuf {
    root().join("ctdev-ebpf/target/bpfel-unknown-none/release/ctdev-ebpf")
}

fn build_ebpf() -> Result<PathBuf> {
    setup::bpf_toolchain()?;
    step("building the eBPF object (nightly, bpfel-unknown-none, bpf-linker)");
    run_checked(&mut ebpf_cargo())?;
    let obj = ebpf_object();
    if !obj.is_file() {
        bail!("eBPF build succeeded but {} is missing", obj.display());
    }
    Ok(obj)
}

/// The cargo command that builds the eBPF object.
fn ebpf_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("ctdev-ebpf"))
        .args(["+nightly", "build", "--release", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none"])
        // The host's flags must not leak into the BPF build; BTF needs debug info.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\u{1f}-Clink-arg=--btf",
        );
    cmd
}

/// Where [`build_ebpf_step`] puts its objects.
pub fn ebpf_steps_dir() -> PathBuf {
    root().join("target/ebpf-steps")
}

/// Builds the bench-only object that returns 1 after fast-path step
/// `number` (`CTDEV_EBPF_STEP`, see ctdev-ebpf's `STEP`) into
/// [`ebpf_steps_dir`]`/NAME.o`, in a target directory of its own so that
/// the real object is never rebuilt with it.
pub fn build_ebpf_step(name: &str, number: u32) -> Result<PathBuf> {
    let dir = ebpf_steps_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let target = dir.join("target");
    run_checked(
        ebpf_cargo()
            .env("CARGO_TARGET_DIR", &target)
            .env("CTDEV_EBPF_STEP", number.to_string()),
    )?;
    let built = target.join("bpfel-unknown-none/release/ctdev-ebpf");
    let obj = dir.join(format!("{name}.o"));
    std::fs::copy(&built, &obj)
        .with_context(|| format!("copy {} to {}", built.display(), obj.display()))?;
    Ok(obj)
}

/// Environment every userspace cargo call gets, so the object stays embedded
/// and cargo does not rebuild between build and test.
pub fn userspace_env(cmd: &mut Command) -> &mut Command {
    cmd.current_dir(root())
        .env("CTDEV_EBPF_OBJECT", ebpf_object())
}

/// Which cargo features the userspace build gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// What users run.
    Default,
    /// Crash-test failpoints in ctdev (`cargo xtask test` only).
    Failpoints,
}

impl Features {
    /// The cargo arguments for these features.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Features::Default => &[],
            Features::Failpoints => &["--features", "ctdev/failpoints"],
        }
    }
}

/// Links the release `ctdev` binary statically for musl
/// (`x86_64-unknown-linux-musl`, static-pie: position independent, so ASLR
/// stays), with whole-program optimisation (the `release-lto` profile),
/// and puts it where the release build's binary was
/// (`target/release/ctdev`). Process start-up is most of a short command's
/// time (`ctdev add`, `ctdev --version`). A dynamic binary first has ld.so
/// map and relocate its libraries; a static glibc one still identifies the
/// CPU and its caches at every start (dozens of CPUID instructions, each a
/// trap to the hypervisor on a VM: 61 % of a static glibc `ctdev`'s own
/// CPU samples on an Intel VM, a quarter on an AMD one) and reads
/// /proc/self/maps for the main thread's stack guard. musl does neither:
/// `--version` 0.85 → 0.20 ms of CPU. musl's allocator maps and unmaps
/// memory on most frees, so the binary allocates through dlmalloc on musl,
/// large blocks through mappings of their own (ctdev/src/alloc.rs).
/// Measured in docs/DESIGN.md ("Process start: musl with dlmalloc", #12). `crt-static` goes to the final link of this one binary only
/// (`cargo rustc -- …`): as a workspace-wide flag it would also reach the
/// proc-macro crates, which cannot be static. Debug and test builds stay
/// dynamic glibc builds.
///
/// Relative relocations are packed (`-z pack-relative-relocs`, DT_RELR,
/// which musl ≥ 1.2.4 applies): the start-up code relocates `.data.rel.ro`
/// and the GOT from a bitmap instead of walking `Elf64_Rela` entries. Fat
/// LTO shrinks what is relocated (284 → 169 KB of `.data.rel.ro`) and the
/// code. A non-PIE link would save another 0.2 ms on an `add`+`del` pair
/// and is not done: it gives up ASLR for the image of a tool that runs as
/// root.
fn link_static(features: Features) -> Result<()> {
    setup::musl_target()?;
    step("linking the release ctdev binary statically (musl, static-pie, LTO)");
    let mut cmd = Command::new("cargo");
    userspace_env(&mut cmd)
        .args([
            "rustc",
            "--profile",
            "release-lto",
            "--target",
            setup::SHIPPED_TARGET,
            "-p",
            "ctdev",
            "--bin",
            "ctdev",
        ])
        .args(features.args())
        .args([
            "--",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "link-arg=-Wl,-z,pack-relative-relocs",
        ]);
    run_checked(&mut cmd)?;
    // Replaced by rename, never rewritten in place: a running ctdev (a
    // daemon from an earlier build) keeps its own file.
    let built = root()
        .join("target")
        .join(setup::SHIPPED_TARGET)
        .join("release-lto/ctdev");
    let release = root().join("target/release/ctdev");
    let tmp = root().join("target/release/.ctdev.static");
    std::fs::copy(&built, &tmp)
        .with_context(|| format!("copy {} to {}", built.display(), tmp.display()))?;
    std::fs::rename(&tmp, &release)
        .with_context(|| format!("rename {} to {}", tmp.display(), release.display()))?;
    Ok(())
}

/// Builds everything; returns the ctdev binary.
fn build(release: bool, features: Features) -> Result<PathBuf> {
    build_ebpf()?;
    // ctdev's NRI plugin is generated from NRI's api.proto (a package's
    // file); the tests' CRI client needs protoc.
    setup::build_prerequisites()?;
    step(&format!(
        "building ctdev ({})",
        if release { "release" } else { "debug" }
    ));
    let mut cmd = Command::new("cargo");
    userspace_env(&mut cmd)
        .args(["build", "--workspace", "--bins", "--tests"])
        .args(features.args());
    if release {
        cmd.arg("--release");
    }
    run_checked(&mut cmd)?;
    if release {
        link_static(features)?;
    }
    let bin = root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("ctdev");
    Ok(bin)
}
