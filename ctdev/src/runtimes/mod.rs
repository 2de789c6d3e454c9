//! Finding containers of real runtimes: their cgroup and init process.
//!
//! One resolver module per runtime; this module holds what they share: the
//! cgroup-tree walk, ID-prefix matching, and turning matches into
//! [`Candidate`]s.
//!
//! Each resolver is a pure function over a directory tree
//! (`scan(root, name)` → `(name, dir)` pairs, built on a per-directory
//! `classify`), so it can be tested on fixture trees of plain directories;
//! [`find`] walks the real cgroup2 mount once for all the runtimes asked for
//! and checks each match with [`CgroupFs::cgroup`].

use std::fs;
use std::path::{Path, PathBuf};

use crate::cgroup::{Cgroup, CgroupFs};
use crate::error::IoError;
use crate::target::RuntimeKind;

pub(crate) mod containerd;
pub(crate) mod crio;
test_support_mod!(discover);
pub(crate) mod docker;
pub mod k8s;
test_support_mod!(lxc);
pub(crate) mod podman;

/// Why a container could not be found.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No container matched.
    #[error("no {what} container matches {name:?} (looked for: {tried})")]
    NotFound {
        /// Runtime(s) searched.
        what: String,
        /// The name or ID prefix.
        name: String,
        /// What was looked for, for the operator.
        tried: String,
    },
    /// Several containers matched.
    #[error("{name:?} is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        /// The name or ID prefix.
        name: String,
        /// The matches, as TARGETs.
        candidates: Vec<String>,
    },
    /// The container's cgroup has no process.
    #[error("cgroup {0} has no process: is the container running?")]
    NoProcess(PathBuf),
    /// Reading /proc or the cgroup tree failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// One container a runtime resolver found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Which runtime.
    pub runtime: RuntimeKind,
    /// Its name or full ID.
    pub name: String,
    /// Its cgroup (the one to attach to).
    pub cgroup: Cgroup,
}

/// What a resolver makes of one directory of the cgroup tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visit<T = String> {
    /// It is a container with this name (or full ID): report it, do not descend.
    Match(T),
    /// Not a match: look at its sub-directories.
    Descend,
    /// Not a match and nothing below can be one (e.g. a conmon scope).
    Prune,
}

/// Finds containers named `name` (a name, or an ID prefix) of `runtime`, or
/// of every runtime when `None`. The cgroup2 tree is walked once; a
/// container's own sub-cgroups are not searched. Several matches are all
/// returned (sorted by runtime, then name); the caller reports ambiguity.
pub fn find(
    fs: &CgroupFs,
    runtime: Option<RuntimeKind>,
    name: &str,
) -> Result<Vec<Candidate>, RuntimeError> {
    let kinds: Vec<RuntimeKind> = match runtime {
        Some(k) => vec![k],
        None => RuntimeKind::ALL.to_vec(),
    };
    let found = walk(fs.mount(), |rel| {
        let mut prune = false;
        for &kind in &kinds {
            match classify(kind, rel, name) {
                Visit::Match(n) => return Visit::Match((kind, n)),
                Visit::Prune => prune = true,
                Visit::Descend => {}
            }
        }
        if prune {
            Visit::Prune
        } else {
            Visit::Descend
        }
    })?;
    let mut candidates = Vec::with_capacity(found.len());
    for ((kind, cname), dir) in found {
        match fs.cgroup(&dir) {
            Ok(cgroup) => candidates.push(Candidate {
                runtime: kind,
                name: cname,
                cgroup,
            }),
            // Removed while we walked, or not a cgroup after all.
            Err(e) => tracing::debug!(
                "skipping {} candidate {}: {e}",
                kind.prefix(),
                dir.display()
            ),
        }
    }
    candidates.sort_by(|a, b| {
        (a.runtime, &a.name, &a.cgroup.dir).cmp(&(b.runtime, &b.name, &b.cgroup.dir))
    });
    Ok(candidates)
}

/// The resolver of `kind` applied to one directory (`rel`: its path relative
/// to the cgroup2 root, ending with its own name).
pub fn classify(kind: RuntimeKind, rel: &Path, name: &str) -> Visit<String> {
    match kind {
        RuntimeKind::Lxc => lxc::classify(rel, name),
        RuntimeKind::Docker => docker::classify(rel, name),
        RuntimeKind::Podman => podman::classify(rel, name),
        RuntimeKind::Containerd => containerd::classify(rel, name),
        RuntimeKind::Crio => crio::classify(rel, name),
    }
}

/// Walks the directory tree under `root` (not following symlinks), asking
/// `classify` about every directory below it with its path relative to
/// `root`. Returns the matches with their directories (under `root`), in
/// walk order. Only an unreadable `root` is an error; sub-directories that
/// vanish or cannot be read are skipped.
///
/// A directory to descend into is read only when it has subdirectories:
/// its link count (one `statx` relative to the open parent) is 2 plus its
/// subdirectories on cgroup2 (kernfs), as on ext4 and tmpfs, so a count
/// of exactly 2 means none (a file system that does not count, such as
/// btrfs, says 1: such a directory is read). Reading one costs five
/// system calls, and most cgroups of a host are leaves.
pub fn walk<T, F>(root: &Path, mut classify: F) -> Result<Vec<(T, PathBuf)>, RuntimeError>
where
    F: FnMut(&Path) -> Visit<T>,
{
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(source) if rel.as_os_str().is_empty() => {
                return Err(IoError::new("read directory", dir, source).into())
            }
            Err(e) => {
                tracing::debug!("skipping {}: {e}", dir.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let child = rel.join(entry.file_name());
            match classify(&child) {
                Visit::Match(m) => found.push((m, root.join(&child))),
                Visit::Descend => {
                    // `DirEntry::metadata` stats the name in the open
                    // directory, without following a symlink.
                    let leaf = entry
                        .metadata()
                        .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) == 2);
                    if !leaf {
                        stack.push(child);
                    }
                }
                Visit::Prune => {}
            }
        }
    }
    Ok(found)
}

/// The directory's own name, if it is valid UTF-8 (cgroup names of the
/// runtimes always are).
pub(crate) fn dir_name(rel: &Path) -> Option<&str> {
    rel.file_name()?.to_str()
}

/// The parent directory's name (`None` at the top level).
pub(crate) fn parent_name(rel: &Path) -> Option<&str> {
    rel.parent()?.file_name()?.to_str()
}

/// Whether `s` is a full container ID: 64 lowercase hex digits.
pub fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether the full ID `id` starts with `prefix` (at least one hex digit,
/// compared case-insensitively).
pub fn id_matches(id: &str, prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= id.len()
        && is_full_id(id)
        && id.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The frame of the ID-prefix resolvers: a directory `<kind>-<id>.scope`
/// (systemd driver) whose ID starts with `prefix` is a match; any other
/// directory (its own name given) is left to `cgroupfs`.
pub(crate) fn classify_id(
    rel: &Path,
    prefix: &str,
    kind: &str,
    cgroupfs: impl FnOnce(&str) -> Visit,
) -> Visit {
    let Some(dir) = dir_name(rel) else {
        return Visit::Descend;
    };
    match scope_id(dir, kind, prefix) {
        Some(id) => Visit::Match(id.to_string()),
        None => cgroupfs(dir),
    }
}

/// A cgroupfs-driver directory named by a full ID alone (`docker/<id>`,
/// `pod<uid>/<id>`): a match when the ID starts with `prefix`; otherwise
/// another container, whose sub-cgroups are its own (pruned).
pub(crate) fn full_id_dir(dir: &str, prefix: &str) -> Visit {
    if id_matches(dir, prefix) {
        Visit::Match(dir.to_string())
    } else {
        Visit::Prune
    }
}

/// A cgroupfs-driver directory `<kind>-<id>` (`crio-<id>`, `libpod-<id>`)
/// where the runtime puts them (`in_place`): a match when the ID starts
/// with `prefix`.
pub(crate) fn kind_id_dir(dir: &str, kind: &str, prefix: &str, in_place: bool) -> Visit {
    match dir.strip_prefix(kind).and_then(|d| d.strip_prefix('-')) {
        Some(id) if in_place && id_matches(id, prefix) => Visit::Match(id.to_string()),
        _ => Visit::Descend,
    }
}

/// Matches `<kind>-<id>.scope` (systemd driver) against an ID prefix:
/// `Some(id)` when the name has that form and the ID starts with `prefix`.
pub(crate) fn scope_id<'a>(name: &'a str, kind: &str, prefix: &str) -> Option<&'a str> {
    let id = name
        .strip_prefix(kind)?
        .strip_prefix('-')?
        .strip_suffix(".scope")?;
    id_matches(id, prefix).then_some(id)
}

/// The oldest process (earliest start time) in `cgroup_dir` and its
/// sub-cgroups: a container's init. `None` if the cgroup has no process.
pub fn oldest_process(cgroup_dir: &Path) -> Result<Option<i32>, RuntimeError> {
    use std::os::unix::fs::MetadataExt;
    let mut best: Option<(u64, i32)> = None;
    // A cgroup is stat'ed AFTER its `cgroup.procs` is read: a link count
    // of exactly 2 then says it has no sub-cgroups (see [`walk`]) and it
    // is not listed. In that order a process that moved from it into a
    // sub-cgroup (systemd's PID 1 into init.scope) is seen in one or the
    // other: it can only move into a sub-cgroup that exists already, and
    // cgroup2 directories are never renamed.
    let may_have_children = |dir: &Path| !fs::symlink_metadata(dir).is_ok_and(|m| m.nlink() == 2);
    let mut stack = vec![cgroup_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let procs = dir.join("cgroup.procs");
        let text = match crate::fsio::read_small(&procs) {
            Ok(t) => t,
            // A sub-cgroup removed while we walk, or a threaded cgroup.
            Err(e) if dir != cgroup_dir => {
                tracing::debug!("skipping {}: {e}", procs.display());
                continue;
            }
            Err(source) => return Err(IoError::new("read", procs, source).into()),
        };
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if let Some(start) = start_time(pid) {
                if best.is_none_or(|(s, p)| (start, pid) < (s, p)) {
                    best = Some((start, pid));
                }
            }
        }
        if !may_have_children(&dir) {
            continue;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    Ok(best.map(|(_, pid)| pid))
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    use std::io::Read;
    // One `read` into a buffer larger than any stat line: the file is one
    // record that procfs hands out whole, so a read that does not fill the
    // buffer got all of it (`read_small` reads again to see the end: one
    // syscall more per process of the container, and a heap buffer).
    let mut buf = [0u8; 2048];
    let mut file = fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = loop {
        match file.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => break other.ok()?,
        }
    };
    let owned;
    let stat = if n < buf.len() {
        std::str::from_utf8(&buf[..n]).ok()?
    } else {
        owned = crate::fsio::read_small(format!("/proc/{pid}/stat")).ok()?;
        owned.as_str()
    };
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `RUNTIME:NAME` of a cgroup path (`/lxc.payload.web` → `lxc:web`) from
/// the runtimes' cgroup naming, for display.
pub fn runtime_label(path: &std::path::Path) -> Option<String> {
    label(path.strip_prefix("/").unwrap_or(path))
}

/// `RUNTIME:NAME` of a container cgroup directory (`rel`: relative to the
/// cgroup2 root), from the runtimes' naming conventions.
pub fn label(rel: &Path) -> Option<String> {
    let dir = rel.file_name()?.to_str()?;
    let parent = rel
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str());
    let short = |id: &str| id.chars().take(12).collect::<String>();
    let hex = |id: &str| id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let scoped = |prefix: &str| {
        dir.strip_prefix(prefix)
            .map(|r| r.strip_suffix(".scope").unwrap_or(r))
            .filter(|id| hex(id))
    };
    if let Some(name) = dir.strip_prefix(lxc::PAYLOAD_PREFIX) {
        return Some(format!("lxc:{name}"));
    }
    if let Some(id) = scoped("docker-") {
        return Some(format!("docker:{}", short(id)));
    }
    if parent == Some("docker") && hex(dir) {
        return Some(format!("docker:{}", short(dir)));
    }
    if let Some(id) = scoped("libpod-") {
        return Some(format!("podman:{}", short(id)));
    }
    if let Some(id) = scoped("cri-containerd-") {
        return Some(format!("containerd:{}", short(id)));
    }
    if let Some(id) = scoped("crio-") {
        return Some(format!("crio:{}", short(id)));
    }
    None
}

/// Fixture trees of plain directories for the resolvers' unit tests.
#[cfg(test)]
pub(crate) mod fixture {
    use super::{RuntimeError, Visit};
    use std::path::{Path, PathBuf};

    /// What a resolver finds: (full ID, cgroup directory) pairs.
    pub(crate) type Found = Result<Vec<(String, PathBuf)>, RuntimeError>;

    /// What the resolver's `classify` finds under `root` for IDs starting
    /// with `prefix`.
    pub(crate) fn scan(root: &Path, prefix: &str, classify: fn(&Path, &str) -> Visit) -> Found {
        super::walk(root, |rel| classify(rel, prefix))
    }

    /// A temp dir holding the given directories (relative, `/`-separated).
    pub(crate) fn tree(dirs: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        // A file beside the directories must be ignored by the walk.
        std::fs::write(t.path().join("cgroup.procs"), "").unwrap();
        t
    }

    /// Matches as sorted `name:relative/dir` strings.
    pub(crate) fn names(t: &tempfile::TempDir, found: Found) -> Vec<String> {
        let mut v: Vec<String> = found
            .unwrap()
            .into_iter()
            .map(|(n, d)| format!("{n}:{}", d.strip_prefix(t.path()).unwrap().display()))
            .collect();
        v.sort();
        v
    }

    /// Asserts, for each `(prefix, expected)`, what `classify` finds in a
    /// tree of `dirs`; `expected` lists `id:relative/dir` (see [`hit`]).
    pub(crate) fn expect(
        classify: fn(&Path, &str) -> Visit,
        dirs: &[String],
        cases: &[(&str, Vec<String>)],
    ) {
        let t = tree(&dirs.iter().map(String::as_str).collect::<Vec<_>>());
        for (prefix, want) in cases {
            let mut want = want.clone();
            want.sort();
            let found = names(&t, scan(t.path(), prefix, classify));
            assert_eq!(found, want, "prefix {prefix:?} in {dirs:?}");
        }
    }

    /// Asserts that `classify` finds nothing in a tree of `dirs` for any of
    /// `prefixes`.
    pub(crate) fn nothing(classify: fn(&Path, &str) -> Visit, dirs: &[String], prefixes: &[&str]) {
        let none: Vec<_> = prefixes.iter().map(|p| (*p, Vec::new())).collect();
        expect(classify, dirs, &none);
    }

    /// A match as [`names`] shows it: `id:relative/dir`.
    pub(crate) fn hit(id: &str, dir: &str) -> String {
        format!("{id}:{dir}")
    }

    /// A fake 64-hex-digit ID starting with `start`.
    pub(crate) fn id(start: &str) -> String {
        format!("{start}{}", "0".repeat(64 - start.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_known() {
        assert!(start_time(std::process::id() as i32).is_some());
        assert!(start_time(i32::MAX).is_none());
    }

    #[test]
    fn id_prefixes() {
        let id = fixture::id("3f2a");
        assert!(id_matches(&id, "3"));
        assert!(id_matches(&id, "3F2A"));
        assert!(id_matches(&id, &id));
        assert!(!id_matches(&id, ""));
        assert!(!id_matches(&id, "3f2b"));
        assert!(!id_matches(&id, &format!("{id}0")));
        assert!(!id_matches("3f2a", "3f"), "not a full id");
        assert!(!is_full_id(&id.to_uppercase().replace('0', "A")));
    }

    #[test]
    fn scope_names() {
        let id = fixture::id("ab");
        let scope = format!("docker-{id}.scope");
        assert_eq!(scope_id(&scope, "docker", "a"), Some(id.as_str()));
        assert_eq!(scope_id(&scope, "docker", "b"), None);
        assert_eq!(scope_id(&scope, "libpod", "a"), None);
        assert_eq!(scope_id(&format!("docker-{id}"), "docker", "a"), None);
    }

    #[test]
    fn unreadable_root_is_an_error() {
        let err = walk::<String, _>(Path::new("/nonexistent-ctdev-root"), |_| Visit::Descend)
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-ctdev-root"), "{err}");
    }

    #[test]
    fn find_on_the_real_hierarchy() {
        // Nothing named like this exists: an empty result, not an error.
        let fs = CgroupFs::discover().expect("cgroup2 mounted");
        assert!(find(&fs, None, "ctdev-no-such-container")
            .unwrap()
            .is_empty());
        assert!(find(&fs, Some(RuntimeKind::Docker), "ffffffffffff")
            .unwrap()
            .is_empty());
    }
}
