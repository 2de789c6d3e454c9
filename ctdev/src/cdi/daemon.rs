//! The daemon's CDI devices (`devices = [{ cdi = "vendor.com/class=name" }]`):
//! brought to what the policy names each time the daemon syncs a
//! container's devices (at start, on reconcile, on SIGHUP).
//!
//! The daemon keeps its own record directory (`STATE_DIR/cdi`), so devices
//! added by hand with `ctdev add` are never taken back by the daemon. A
//! device is added with `--skip-unsupported` semantics (what a running
//! container cannot take is logged as skipped). A device whose merged
//! edits changed since it was added (its spec file changed) is taken back
//! and added again; one whose spec disappeared is taken back; one the
//! policy no longer names is taken back.

use std::path::{Path, PathBuf};

use super::apply::{self, CdiOptions};
use super::name::QualifiedName;
use super::registry::Registry;
use crate::ops::Ctdev;
use crate::target::Target;

/// What [`sync`] did to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncAction {
    /// Added.
    Added(String),
    /// Taken back (no longer named, or its spec is gone).
    Removed(String),
    /// Its spec changed: taken back and added again.
    Replaced(String),
    /// Something failed (logged).
    Failed(String, String),
}

/// What to do, from the records and the registry (pure).
pub(crate) fn plan_sync(
    wanted: &[QualifiedName],
    recorded: &[(String, Option<super::spec::ContainerEdits>)],
    registry: &Registry,
) -> (Vec<String>, Vec<QualifiedName>) {
    let mut remove = Vec::new();
    let mut add = Vec::new();
    for (name, edits) in recorded {
        let still = wanted.iter().find(|w| w.to_string() == *name);
        let current = still.and_then(|w| registry.get(w).ok());
        match (still, current) {
            (Some(w), Some(dev)) => {
                if edits.as_ref() != Some(&dev.edits) {
                    remove.push(name.clone());
                    add.push(w.clone());
                }
            }
            _ => remove.push(name.clone()),
        }
    }
    for w in wanted {
        let ws = w.to_string();
        if !recorded.iter().any(|(n, _)| *n == ws) && !add.contains(w) {
            add.push(w.clone());
        }
    }
    (remove, add)
}

/// Brings the CDI devices of the container `target` (policy `policy_id`)
/// to `wanted`; logs every change and failure.
pub(crate) fn sync(
    ct: &Ctdev,
    target: &Target,
    policy_id: u64,
    wanted: &[QualifiedName],
    dirs: &[PathBuf],
    state_dir: &Path,
) -> Vec<SyncAction> {
    let records = apply::records(state_dir, policy_id);
    if wanted.is_empty() && records.is_empty() {
        return Vec::new();
    }
    let registry = Registry::scan(dirs);
    let recorded: Vec<(String, Option<super::spec::ContainerEdits>)> = records
        .iter()
        .map(|r| (r.name.clone(), r.edits.clone()))
        .collect();
    let (remove, add) = plan_sync(wanted, &recorded, &registry);
    let mut done = Vec::new();
    for name in &remove {
        let Ok(q) = QualifiedName::parse(name) else {
            continue;
        };
        match apply::del(ct, target, &q, state_dir) {
            Ok(_) => {
                tracing::info!(target = %target, device = %name, "CDI device taken back");
                done.push(SyncAction::Removed(name.clone()));
            }
            Err(e) => {
                tracing::error!(target = %target, device = %name, "cannot take CDI device back: {e}");
                done.push(SyncAction::Failed(name.clone(), e.to_string()));
            }
        }
    }
    let opts = CdiOptions {
        dirs: dirs.to_vec(),
        skip_unsupported: true,
        state_dir: state_dir.to_path_buf(),
    };
    for q in &add {
        let name = q.to_string();
        match apply::add(ct, target, q, &opts) {
            Ok(rec) => {
                for s in &rec.skipped {
                    tracing::warn!(target = %target, device = %name, "CDI edit skipped: {s}");
                }
                tracing::info!(target = %target, device = %name, nodes = rec.nodes.len(), mounts = rec.mounts.len(), "CDI device added");
                if remove.contains(&name) {
                    done.push(SyncAction::Replaced(name));
                } else {
                    done.push(SyncAction::Added(name));
                }
            }
            Err(e) => {
                tracing::error!(target = %target, device = %name, "cannot add CDI device: {e}");
                done.push(SyncAction::Failed(name, e.to_string()));
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::spec::{parse, Format};

    #[test]
    fn sync_plan() {
        let spec = parse(
            br#"{"cdiVersion":"0.3.0","kind":"v.com/c","devices":[{"name":"a","containerEdits":{"deviceNodes":[{"path":"/dev/a"}]}},{"name":"b","containerEdits":{"deviceNodes":[{"path":"/dev/b"}]}}]}"#,
            Format::Json,
        )
        .unwrap();
        let mut reg = Registry::default();
        reg.add_spec(Path::new("/etc/cdi/x.json"), &spec, 0);
        let q = |s: &str| QualifiedName::parse(s).unwrap();
        let edits_a = reg.get(&q("v.com/c=a")).unwrap().edits.clone();
        // a recorded with its current edits: kept; b wanted: added; c
        // recorded but no longer wanted: removed.
        let (remove, add) = plan_sync(
            &[q("v.com/c=a"), q("v.com/c=b")],
            &[
                ("v.com/c=a".into(), Some(edits_a.clone())),
                ("v.com/c=c".into(), None),
            ],
            &reg,
        );
        assert_eq!(remove, ["v.com/c=c"]);
        assert_eq!(add, [q("v.com/c=b")]);
        // a's spec changed: replaced.
        let mut old = edits_a;
        old.env.push("X=1".into());
        let (remove, add) = plan_sync(&[q("v.com/c=a")], &[("v.com/c=a".into(), Some(old))], &reg);
        assert_eq!((remove.len(), add.len()), (1, 1));
        // a's spec is gone: taken back, not re-added.
        let (remove, add) = plan_sync(&[q("v.com/c=z")], &[("v.com/c=z".into(), None)], &reg);
        assert_eq!(remove, ["v.com/c=z"]);
        assert!(add.is_empty());
    }
}
