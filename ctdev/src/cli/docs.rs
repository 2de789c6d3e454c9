//! `ctdev generate-docs DIR` (hidden): man pages for `ctdev` and every
//! subcommand and bash/zsh/fish completions, from the one clap definition
//! ([`super::command`]). `cargo xtask dist` runs it on the built binary
//! (the CLI lives in the binary, so the xtask cannot link it) and packages
//! what it writes: `DIR/man/*.1` (uncompressed) and `DIR/completions/*`.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap_complete::Shell;

// Flags of `ctdev generate-docs`. (No doc comment: under `defer` it would replace the subcommand's about.)
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write `man/` and `completions/` into.
    pub out: PathBuf,
}

/// Writes the man pages and completions under `args.out`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let man = args.out.join("man");
    let comp = args.out.join("completions");
    for dir in [&man, &comp] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cmd = super::command();
    let mut pages = vec![("ctdev".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("ctdev-{}", sub.get_name());
        let version = cmd.get_version().unwrap_or_default().to_string();
        pages.push((name.clone(), sub.clone().name(name).version(version)));
    }
    for (name, page) in pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .section("1")
            .manual("ctdev manual")
            .render(&mut text)?;
        let path = man.join(format!("{name}.1"));
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    for (shell, file) in [
        (Shell::Bash, "ctdev.bash"),
        (Shell::Zsh, "_ctdev"),
        (Shell::Fish, "ctdev.fish"),
    ] {
        let path = comp.join(file);
        let mut f =
            fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        clap_complete::generate(shell, &mut super::command(), "ctdev", &mut f);
    }
    Ok(ExitCode::SUCCESS)
}
