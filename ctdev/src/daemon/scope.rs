//! Fail-closed from a container's first instruction: which cgroups get a
//! scope program ([`crate::kernel::scope`]) and with which default policy.
//!
//! A scope is the parent of the cgroups an entry selects, when the selector
//! names that parent literally: `select = { cgroup = "/ci/job-*" }` and
//! `select = { target = "/ci/job-1" }` both give `/ci`. Its default policy is
//! the preset of the entries with that parent when they agree, else nothing
//! (deny every device). Runtime selectors (`docker:*`, names) have no
//! literal parent: their containers are covered from the daemon's attach
//! on, not before. The hierarchy's root is never a scope: a default there
//! would hold every new top-level cgroup on the host.
//!
//! Every child of a scope is covered by the default until the daemon marks
//! it: "own policy" once its own link is attached and verified, "not
//! selected" when no entry selects it. A sibling the policy does not select
//! is therefore held to the default from its creation until the daemon has
//! seen it (normally well under a millisecond of work; longer while the
//! daemon is stopped): give selected containers a parent of their own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::presets::Preset;
use crate::target::Target;

use super::config::{ContainerSelector, Policy};

/// Characters that make a glob component non-literal.
const GLOB_META: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

/// The literal parent (inside the hierarchy) of the cgroups `select` picks,
/// if it has one.
pub(crate) fn selector_parent(select: &ContainerSelector) -> Option<PathBuf> {
    let path = match select {
        ContainerSelector::Cgroup(g) => PathBuf::from(g.glob().glob()),
        ContainerSelector::Target(Target::Cgroup(p)) => p.clone(),
        _ => return None,
    };
    let text = path.to_str()?;
    let (parent, last) = text.rsplit_once('/')?;
    if last.is_empty() || last.contains("**") || parent.contains(GLOB_META) {
        return None;
    }
    let parent = if parent.is_empty() { "/" } else { parent };
    Some(PathBuf::from(parent))
}

/// Scopes the policy asks for (inside paths, under the policy's scope and
/// never the root) with their default preset. Entries sharing a parent with
/// different presets get `Preset::None` there: a default never widens
/// beyond what every entry starts with.
pub(crate) fn wanted_scopes(policy: &Policy) -> BTreeMap<PathBuf, Preset> {
    let mut out: BTreeMap<PathBuf, Preset> = BTreeMap::new();
    for c in &policy.containers {
        let Some(parent) = selector_parent(&c.select) else {
            continue;
        };
        if parent == Path::new("/") || !parent.starts_with(&policy.scope) {
            continue;
        }
        out.entry(parent)
            .and_modify(|p| {
                if *p != c.preset {
                    *p = Preset::None;
                }
            })
            .or_insert(c.preset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use globset::GlobBuilder;

    fn cg(g: &str) -> ContainerSelector {
        ContainerSelector::Cgroup(
            GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .unwrap()
                .compile_matcher(),
        )
    }

    #[test]
    fn parents_of_selectors() {
        assert_eq!(selector_parent(&cg("/ci/job-*")), Some("/ci".into()));
        assert_eq!(selector_parent(&cg("/a/b/*")), Some("/a/b".into()));
        assert_eq!(selector_parent(&cg("/lxc.payload.*")), Some("/".into()));
        assert_eq!(selector_parent(&cg("/a/*/c")), None);
        assert_eq!(selector_parent(&cg("/a/**")), None);
        assert_eq!(
            selector_parent(&ContainerSelector::Target(Target::Cgroup("/x/y".into()))),
            Some("/x".into())
        );
        assert_eq!(
            selector_parent(&ContainerSelector::Target(Target::Name("web".into()))),
            None
        );
    }

    fn policy(entries: &[(&str, Preset)], scope: &str) -> Policy {
        let text = entries
            .iter()
            .enumerate()
            .map(|(i, (g, p))| {
                format!(
                    "[[container]]\nname = \"e{i}\"\nselect = {{ cgroup = \"{g}\" }}\npreset = \"{}\"\n",
                    if *p == Preset::Oci { "oci" } else { "none" }
                )
            })
            .collect::<String>();
        super::super::config::parse(Path::new("p.toml"), &format!("scope = \"{scope}\"\n{text}"))
            .unwrap()
    }

    #[test]
    fn defaults_never_widen_and_the_root_is_never_a_scope() {
        let p = policy(
            &[
                ("/ci/a-*", Preset::Oci),
                ("/ci/b-*", Preset::Oci),
                ("/mixed/x-*", Preset::Oci),
                ("/mixed/y-*", Preset::None),
                ("/top-*", Preset::Oci),
            ],
            "/",
        );
        let s = wanted_scopes(&p);
        assert_eq!(s.get(Path::new("/ci")), Some(&Preset::Oci));
        assert_eq!(s.get(Path::new("/mixed")), Some(&Preset::None));
        assert!(!s.contains_key(Path::new("/")));
        // Outside the policy's scope: not a scope.
        let p = policy(&[("/ci/a-*", Preset::Oci)], "/other");
        assert!(wanted_scopes(&p).is_empty());
    }
}
