//! `ctdev daemon --check-config [--show-matches]`: the policy file
//! validated and resolved, without changing anything.
//!
//! Besides the resolved policy it says which configured device paths do not
//! exist on this host now (a missing /dev/dri), and with `--show-matches`
//! which running containers each entry selects and what the daemon would
//! change there (attach, rules to allow, devices to pass in).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::config::{self, ContainerPolicy, Policy};
use super::reconcile::State;
use super::DaemonError;
use crate::audit::view::ContainerView;
use crate::ops::{Ctdev, LinkState};
use crate::rule::{Rule, RuleSpec};

/// What `--check-config` prints (the policy, warnings, and with
/// `show_matches` the containers each entry selects).
pub fn check_config(
    ct: &Ctdev,
    path: &Path,
    show_matches: bool,
    state_dir: Option<&Path>,
) -> Result<String, DaemonError> {
    let mut policy = config::load(path)?;
    policy.normalize(ct.cgroups().mount());
    let scope = ct
        .cgroups()
        .cgroup(&policy.scope)
        .map_err(|source| DaemonError::Scope {
            scope: policy.scope.clone(),
            file: policy.path.clone(),
            source,
        })?;
    let mut out = policy.describe();
    for w in missing_devices(&policy) {
        let _ = writeln!(out, "warning: {w}");
    }
    if show_matches {
        let state_dir = state_dir
            .map(Path::to_path_buf)
            .or_else(|| policy.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(super::DEFAULT_STATE_DIR));
        out.push_str(&matches(ct, &policy, &scope.dir, &state_dir));
    }
    Ok(out)
}

/// Configured device paths (rules given as paths, static devices) that do
/// not resolve on this host now.
fn missing_devices(policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for c in &policy.containers {
        for r in &c.rules {
            if let RuleSpec::Path { path, .. } = r {
                if let Err(e) = r.resolve() {
                    out.push(format!(
                        "container {:?}: rule {}: {e} (skipped until it exists)",
                        c.name,
                        path.display()
                    ));
                }
            }
        }
        for d in &c.devices {
            if !d.path.exists() {
                out.push(format!(
                    "container {:?}: device {} does not exist on this host now (passed in once it does)",
                    c.name,
                    d.path.display()
                ));
            }
        }
    }
    out
}

/// The cgroups under `scope_dir` each entry selects (first match wins; a
/// selected cgroup's sub-cgroups are its own), and what would change.
fn matches(ct: &Ctdev, policy: &Policy, scope_dir: &Path, state_dir: &Path) -> String {
    let mut out = String::new();
    let views: BTreeMap<u64, ContainerView> = ct
        .list(None)
        .map(|d| d.containers.into_iter().map(|c| (c.policy_id, c)).collect())
        .unwrap_or_default();
    let state = State::load(&state_dir.join("state.json")).unwrap_or_default();
    let mut selected: Vec<(usize, PathBuf)> = Vec::new();
    for dir in cgroup_dirs(scope_dir) {
        if selected
            .iter()
            .any(|(_, m)| dir != *m && dir.starts_with(m))
        {
            continue;
        }
        let inside = Path::new("/").join(dir.strip_prefix(ct.cgroups().mount()).unwrap_or(&dir));
        if let Some(i) = policy
            .containers
            .iter()
            .position(|c| c.select.matches(&inside))
        {
            selected.push((i, dir));
        }
    }
    for (i, c) in policy.containers.iter().enumerate() {
        let dirs: Vec<&PathBuf> = selected
            .iter()
            .filter(|(e, _)| *e == i)
            .map(|(_, d)| d)
            .collect();
        if dirs.is_empty() {
            let _ = writeln!(out, "container {:?} selects no running container", c.name);
        }
        for dir in dirs {
            let Ok(cg) = ct.cgroups().cgroup(dir) else {
                continue;
            };
            let label = crate::runtimes::runtime_label(&cg.path)
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "container {:?} selects {}{label}",
                c.name,
                cg.path.display()
            );
            let given = state
                .containers
                .get(&cg.id)
                .map(|o| o.devices.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            for line in changes(c, views.get(&cg.id), &given) {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// What applying entry `c` would change on a container (`view`: its ctdev
/// policy, `None` when not under policy; `given`: destinations the daemon
/// already passed in). Pure.
pub fn changes(c: &ContainerPolicy, view: Option<&ContainerView>, given: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let rules: Vec<Rule> = c.rules.iter().filter_map(|r| r.resolve().ok()).collect();
    match view {
        None => out.push(format!(
            "would attach it with preset {} (not under ctdev policy now)",
            c.preset.name()
        )),
        Some(v) if v.state != LinkState::Enforcing => {
            out.push(format!(
                "under policy but {}: would attach it again",
                v.state
            ));
        }
        Some(_) => {}
    }
    let covered = |r: &Rule| {
        view.is_some_and(|v| {
            v.rules.iter().any(|e| {
                e.dev_type == r.dev_type
                    && e.major == r.major
                    && e.minor == r.minor
                    && e.access.union(r.access) == e.access
            })
        })
    };
    let missing: Vec<String> = rules
        .iter()
        .filter(|r| !covered(r))
        .map(|r| r.to_string())
        .collect();
    if missing.is_empty() {
        if !rules.is_empty() {
            out.push("rules: all allowed already".into());
        }
    } else {
        out.push(format!("would allow: {}", missing.join(", ")));
    }
    for d in &c.devices {
        let dest = d.dest.as_ref().unwrap_or(&d.path).display().to_string();
        if given.contains(&dest) {
            out.push(format!("device {}: passed in already", d.path.display()));
        } else if d.path.exists() {
            out.push(format!("would pass in {} as {dest}", d.path.display()));
        } else {
            out.push(format!(
                "device {}: missing on the host, nothing to pass in",
                d.path.display()
            ));
        }
    }
    if !c.hotplug.is_empty() {
        out.push(format!(
            "{} hotplug rule(s): devices matching them are passed in while present",
            c.hotplug.len()
        ));
    }
    out
}

/// Every cgroup directory under `root` (itself included), sorted so a
/// parent comes before its children.
fn cgroup_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out.push(dir);
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::view::RuleView;
    use crate::kernel::counters::Stats;

    fn entry(text: &str) -> ContainerPolicy {
        let policy = config::parse(Path::new("p.toml"), text).unwrap();
        policy.containers[0].clone()
    }

    fn view(rules: &[&str]) -> ContainerView {
        ContainerView {
            policy_id: 1,
            cgroup: None,
            cgroup_dir: None,
            cgroup_id: 1,
            program_id: 1,
            link_id: 1,
            link_pin: PathBuf::new(),
            layout: crate::audit::view::Layout::PerContainer,
            state: LinkState::Enforcing,
            pod: None,
            former_cgroup: None,
            cdi: vec![],
            rules: crate::rule::parse_rules(rules)
                .unwrap()
                .into_iter()
                .map(|r| RuleView::of(&r, vec![]))
                .collect(),
            stats: Stats::default(),
            other_programs: vec![],
            drift: None,
        }
    }

    const ENTRY: &str = r#"
[[container]]
name = "web"
select = { target = "lxc:web" }
preset = "none"
rules = ["c 10:200 rw", "c 1:3 r"]
devices = [{ path = "/dev/null", dest = "/dev/mynull" }, { path = "/dev/ctdev-no-such" }]
"#;

    #[test]
    fn says_what_would_change() {
        let c = entry(ENTRY);
        let fresh = changes(&c, None, &[]);
        assert_eq!(
            fresh,
            [
                "would attach it with preset none (not under ctdev policy now)",
                "would allow: c 10:200 rw, c 1:3 r",
                "would pass in /dev/null as /dev/mynull",
                "device /dev/ctdev-no-such: missing on the host, nothing to pass in",
            ]
        );
        let v = view(&["c 10:200 rwm", "c 1:3 w"]);
        let partly = changes(&c, Some(&v), &["/dev/mynull".to_string()]);
        assert_eq!(
            partly,
            [
                "would allow: c 1:3 r",
                "device /dev/null: passed in already",
                "device /dev/ctdev-no-such: missing on the host, nothing to pass in",
            ]
        );
    }

    #[test]
    fn warns_about_missing_device_paths() {
        let policy = config::parse(Path::new("p.toml"), ENTRY).unwrap();
        let w = missing_devices(&policy);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("/dev/ctdev-no-such"), "{w:?}");
    }
}
