//! Crash-test failpoints: `failpoint!("attach.after_link_create")` marks a
//! step of an operation. In a build with the `failpoints` feature (only
//! `cargo xtask test` builds one), the process sends itself `SIGKILL` at the
//! step named by the `CTDEV_FAILPOINT` environment variable, so tests can
//! check what a crash at exactly that point leaves behind
//! (`CTDEV_FAILPOINT=<step>=stop` stops it there with `SIGSTOP` instead). Without the
//! feature the macro expands to nothing.
//!
//! Every step name is listed in [`STEPS`] (and in docs/DESIGN.md); the
//! crash tests go through all of them.

/// Every failpoint, in the order the operations reach them.
#[cfg(any(test, feature = "failpoints"))]
pub(crate) const STEPS: &[&str] = &[
    "attach.after_lock",
    "attach.after_load",
    "attach.after_rules",
    "attach.after_link_create",
    "attach.after_pin",
    "map.apply.after_first_write",
    "set.after_write",
    "set.after_publish",
    "allow.after_write",
    "revoke.after_write",
    "revoke.after_counters",
    "detach.after_unpin",
    "detach.after_link_detach",
    "detach.after_entries",
    "detach.after_counters",
    "takeover.after_attach",
    "takeover.after_keep",
    "takeover.after_detach_runtime",
    "add.after_nodes",
    "add.after_rules",
    "node.after_tmp_node",
    "del.after_revoke",
    "del.after_nodes",
    "add.netdev.after_move",
    "del.netdev.after_move",
    "daemon.attach.after_attach",
    "daemon.add.after_device",
    "shared.after_stub",
    "shared.after_write",
    "shared.after_link",
    "shared.after_pin",
];

/// Kills the process with `SIGKILL` when `CTDEV_FAILPOINT` names `step`
/// (compiled only with the `failpoints` feature).
#[doc(hidden)]
#[macro_export]
macro_rules! failpoint {
    ($step:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($step);
    };
}

/// The step `CTDEV_FAILPOINT` names, read once.
#[cfg(feature = "failpoints")]
fn armed() -> Option<&'static str> {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("CTDEV_FAILPOINT").ok())
        .as_deref()
}

/// Reached `step`: dies at once if it is the armed one.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(step: &'static str) {
    debug_assert!(STEPS.contains(&step), "failpoint {step} is not in STEPS");
    let Some(armed) = armed() else { return };
    // `STEP` kills; `STEP=stop` stops the process (SIGSTOP) so a test can
    // change the world (kill the container, remove the cgroup) and SIGCONT it.
    let (name, stop) = match armed.split_once('=') {
        Some((name, "stop")) => (name, true),
        _ => (armed, false),
    };
    if name != step {
        return;
    }
    let signal = if stop { libc::SIGSTOP } else { libc::SIGKILL };
    eprintln!("ctdev: failpoint {step}: signal {signal}");
    // SAFETY: raise(2) has no memory-safety preconditions; SIGKILL does not
    // return, SIGSTOP returns once the process is continued.
    unsafe {
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::STEPS;

    #[test]
    fn step_names_are_unique_and_dotted() {
        let mut seen = std::collections::BTreeSet::new();
        for s in STEPS {
            assert!(s.contains('.') && !s.contains(' '), "{s}");
            assert!(seen.insert(s), "duplicate failpoint {s}");
        }
    }

    #[test]
    fn every_step_is_used_in_the_source() {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut text = String::new();
        let mut dirs = vec![std::path::PathBuf::from(src)];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("failpoint.rs") {
                    text.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        for s in STEPS {
            assert!(
                text.contains(&format!("failpoint!(\"{s}\")")),
                "failpoint {s} is listed but not placed"
            );
        }
    }
}
