//! "Did you mean": when a command fails on a container name that matches
//! nothing, the running containers (and top-level cgroups) whose names are
//! close to it.

use std::path::Path;

use super::{Cli, Command};
use crate::cgroup::CgroupFs;
use crate::runtimes;
use crate::target::{RuntimeKind, Target};

/// A hint line for a failed command, when its TARGET names no container.
pub(super) fn hint(cli: &Cli, _err: &anyhow::Error) -> Option<String> {
    let target = target_of(&cli.command)?;
    let (kind, name) = match target {
        Target::Runtime(kind, name) => (Some(*kind), name.as_str()),
        Target::Name(name) => (None, name.as_str()),
        _ => return None,
    };
    let fs = CgroupFs::new(cli.cgroup_root.as_deref()).ok()?;
    // Only when the name really matches nothing (not for other failures).
    if !runtimes::find(&fs, kind, name).ok()?.is_empty()
        || (kind.is_none() && fs.cgroup(Path::new(name)).is_ok())
    {
        return None;
    }
    let labels = labels_under(fs.mount(), kind);
    let close = closest(name, &labels);
    (!close.is_empty()).then(|| format!("did you mean: {}?", close.join(", ")))
}

/// The TARGET of a parsed command line, if it has one.
fn target_of(command: &Command) -> Option<&Target> {
    match command {
        Command::Attach(a) => Some(&a.target),
        Command::Allow(a) => Some(&a.target),
        Command::Revoke(a) => Some(&a.target),
        Command::Set(a) => Some(&a.target),
        Command::List(a) => a.target.as_ref(),
        Command::Status(a) => Some(&a.target),
        Command::Detach(a) => Some(&a.target),
        Command::Monitor(a) => a.target.as_ref(),
        Command::Check(a) => Some(&a.target),
        Command::ResetCounters(a) => a.target.as_ref(),
        Command::Add(a) => Some(&a.target),
        Command::Del(a) => Some(&a.target),
        Command::Demo(_)
        | Command::Daemon(_)
        | Command::Cdi(_)
        | Command::Nri(_)
        | Command::GenerateDocs(_) => None,
    }
}

/// Every container (as `RUNTIME:NAME`, of `only` or of any runtime) and,
/// for any runtime, every top-level cgroup, under `mount`.
fn labels_under(mount: &Path, only: Option<RuntimeKind>) -> Vec<String> {
    let found = runtimes::walk(mount, |rel| match runtimes::label(rel) {
        Some(l) => runtimes::Visit::Match(l),
        None if rel.components().count() >= 4 => runtimes::Visit::Prune,
        None => runtimes::Visit::Descend,
    })
    .unwrap_or_default();
    let mut labels: Vec<String> = found
        .into_iter()
        .map(|(l, _)| l)
        .filter(|l| match only {
            Some(k) => l.starts_with(&format!("{}:", k.prefix())),
            None => true,
        })
        .collect();
    if only.is_none() {
        if let Ok(entries) = std::fs::read_dir(mount) {
            labels.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    labels.sort();
    labels.dedup();
    labels
}

/// The labels close to `name` (edit distance, or a shared prefix), best
/// first, at most three.
pub(crate) fn closest(name: &str, labels: &[String]) -> Vec<String> {
    let mut scored: Vec<(f64, &String)> = labels
        .iter()
        .filter_map(|l| {
            let bare = l.split_once(':').map_or(l.as_str(), |(_, n)| n);
            let score = strsim::jaro_winkler(name, bare).max(strsim::jaro_winkler(name, l));
            (score >= 0.8 || strsim::levenshtein(name, bare) <= 2).then_some((score, l))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().take(3).map(|(_, l)| l.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtimes::label;

    #[test]
    fn labels_follow_runtime_layouts() {
        let id = "3f2a9c0e1d2b3f2a9c0e1d2b3f2a9c0e1d2b3f2a9c0e1d2b3f2a9c0e1d2b3f2a";
        assert_eq!(
            label(Path::new("lxc.payload.web")).as_deref(),
            Some("lxc:web")
        );
        assert_eq!(
            label(&Path::new("system.slice").join(format!("docker-{id}.scope"))).as_deref(),
            Some("docker:3f2a9c0e1d2b")
        );
        assert_eq!(
            label(&Path::new("docker").join(id)).as_deref(),
            Some("docker:3f2a9c0e1d2b")
        );
        assert_eq!(
            label(&Path::new("libpod_parent").join(format!("libpod-{id}"))).as_deref(),
            Some("podman:3f2a9c0e1d2b")
        );
        assert_eq!(label(Path::new("libpod-conmon-xyz.scope")), None);
        assert_eq!(label(Path::new("init.scope")), None);
    }

    #[test]
    fn suggests_close_names_only() {
        let labels: Vec<String> = ["lxc:web1", "lxc:database", "docker:3f2a9c0e1d2b", "app"]
            .map(String::from)
            .to_vec();
        assert_eq!(closest("webl", &labels), ["lxc:web1"]);
        assert_eq!(closest("databse", &labels), ["lxc:database"]);
        assert_eq!(closest("apq", &labels), ["app"]);
        assert!(closest("zzzzzzzz", &labels).is_empty());
    }
}
