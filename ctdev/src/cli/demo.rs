//! `ctdev demo`: a short, self-contained tour on a scratch cgroup and a
//! scratch pin root: a denied open, allow, allowed, revoke, the dump, cleanup.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{list, open, Cli};
use crate::ops::{Config, Ctdev};
use crate::presets::Preset;
use crate::probe::{probe, ProbeOp};
use crate::rule::{parse_rules, Rule};
use crate::target::Target;

// Arguments of `ctdev demo`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device node the demo opens from inside the scratch cgroup.
    #[arg(long, default_value = "/dev/zero")]
    pub device: PathBuf,
}

/// Removes the scratch cgroup and pins however the demo ends.
struct Scratch<'a> {
    ctdev: &'a Ctdev,
    cgroup: PathBuf,
    target: Target,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = self.ctdev.detach(&self.target);
        let _ = std::fs::remove_dir(&self.cgroup);
        self.ctdev.pins().remove_if_empty();
    }
}

fn show(step: &str, dir: &Path, device: &Path) -> Result<bool> {
    let verdict = probe(dir, &ProbeOp::read(device))?;
    let text = match verdict {
        Ok(()) => "allowed".to_string(),
        Err(e) => format!("denied ({e})"),
    };
    println!("  {step:<44} open({}) -> {text}", device.display());
    Ok(verdict.is_ok())
}

pub(super) fn run(cli: &Cli, mut config: Config, args: &Args) -> Result<ExitCode> {
    if cli.json {
        anyhow::bail!(
            "demo is a guided tour for people and has no JSON output; \
             script the steps instead (attach, allow, check, revoke, detach with --json)"
        );
    }
    let tag = format!("ctdev-demo-{}", std::process::id());
    // A scratch pin root unless the operator chose one: the demo never
    // touches real policy.
    if cli.pin_root == Path::new(crate::kernel::pins::DEFAULT_PIN_ROOT) {
        config.pin_root = PathBuf::from(crate::kernel::pins::BPFFS_MOUNT).join(&tag);
    }
    let ctdev = open(config)?;
    let cgroup = ctdev.cgroups().mount().join(&tag);
    std::fs::create_dir(&cgroup)
        .with_context(|| format!("creating scratch cgroup {}", cgroup.display()))?;
    let target = Target::Cgroup(cgroup.clone());
    let scratch = Scratch {
        ctdev: &ctdev,
        cgroup: cgroup.clone(),
        target: target.clone(),
    };
    let rule: Rule = parse_rules(&[args.device.display().to_string()])?[0];

    println!(
        "scratch cgroup {} (pins in {})",
        cgroup.display(),
        ctdev.pins().root().display()
    );
    let before = show("before ctdev:", &cgroup, &args.device)?;
    let report = ctdev.attach(&target, Preset::None, &[])?;
    println!(
        "$ ctdev attach {} --preset none   (program {})",
        cgroup.display(),
        report.program_id
    );
    let denied = !show("default deny:", &cgroup, &args.device)?;
    ctdev.allow(&target, &[rule])?;
    println!("$ ctdev allow {} {}", cgroup.display(), rule);
    let allowed = show("after allow (one map write):", &cgroup, &args.device)?;
    println!("$ ctdev list {}", cgroup.display());
    print!("{}", list::render(&ctdev.list(Some(&target))?));
    ctdev.revoke(&target, &[rule], false)?;
    println!("$ ctdev revoke {} {}", cgroup.display(), rule);
    let revoked = !show("after revoke:", &cgroup, &args.device)?;
    drop(scratch);
    println!("cleaned up: scratch cgroup and pins removed");
    if before && denied && allowed && revoked {
        println!("demo OK");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("demo FAILED: the kernel's verdicts were not the expected ones");
        Ok(ExitCode::FAILURE)
    }
}
