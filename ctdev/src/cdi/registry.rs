//! The CDI devices of a host: every spec file of the spec directories,
//! indexed by qualified name.
//!
//! Rules (those of the reference implementation):
//! - directories are read in order; a later directory has priority over an
//!   earlier one (the defaults `/etc/cdi` then `/var/run/cdi`: generated,
//!   dynamic specs override static ones);
//! - only `*.json`, `*.yaml` and `*.yml` files directly in a directory are
//!   read (no subdirectories), in name order;
//! - a device defined by two files of the *same* directory is a conflict:
//!   neither definition is used and both files are named in the error;
//! - an invalid file is reported by path and does not hide valid files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::name::{Kind, QualifiedName};
use super::spec::{self, ContainerEdits, Format, Spec, SpecError};

/// The default spec directories, lowest priority first.
pub const DEFAULT_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

/// A problem with one spec file (the others are still used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct FileProblem {
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// Why a device cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No spec defines it.
    #[error("CDI device {name} is not defined in {dirs}{problems}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The directories searched.
        dirs: String,
        /// Invalid files, which might have defined it.
        problems: String,
    },
    /// Two files of one directory define it.
    #[error("CDI device {name} is defined by both {} and {} (same directory, same priority): fix one of them", first.display(), second.display())]
    Conflict {
        name: String,
        /// One file.
        first: PathBuf,
        second: PathBuf,
    },
}

/// One usable device.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedDevice {
    /// Its qualified name.
    pub name: QualifiedName,
    /// The file it came from.
    pub file: PathBuf,
    /// The file's `cdiVersion`.
    pub cdi_version: String,
    /// Device-level edits followed by the spec-level ones.
    pub edits: ContainerEdits,
}

/// Where a name was defined.
#[derive(Debug, Clone)]
enum Entry {
    Device(Box<ResolvedDevice>, usize),
    Conflict {
        first: PathBuf,
        second: PathBuf,
        priority: usize,
    },
}

/// Every CDI device found in a list of directories.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    dirs: Vec<PathBuf>,
    entries: BTreeMap<QualifiedName, Entry>,
    /// Files that could not be used, with why.
    pub problems: Vec<FileProblem>,
}

/// The merged edits of `device` of `spec` (device-level first, then the
/// spec-level ones, as the reference implementation orders them).
pub fn merged_edits(spec: &Spec, device: &spec::Device) -> ContainerEdits {
    let mut edits = device.container_edits.clone();
    edits.append(&spec.container_edits);
    edits
}

impl Registry {
    /// Reads every spec file in `dirs` (lowest priority first). A missing
    /// directory is no error.
    pub fn scan<P: AsRef<Path>>(dirs: &[P]) -> Registry {
        let mut reg = Registry {
            dirs: dirs.iter().map(|d| d.as_ref().to_path_buf()).collect(),
            ..Registry::default()
        };
        for (priority, dir) in dirs.iter().enumerate() {
            let dir = dir.as_ref();
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    reg.problems.push(FileProblem {
                        path: dir.to_path_buf(),
                        reason: format!("cannot read directory: {e}"),
                    });
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
                .map(|e| e.path())
                .filter(|p| Format::of(p).is_some())
                .collect();
            files.sort();
            for file in files {
                reg.add_file(&file, priority);
            }
        }
        reg
    }

    /// Reads one file at `priority`.
    fn add_file(&mut self, path: &Path, priority: usize) {
        let Some(format) = Format::of(path) else {
            return;
        };
        let parsed = fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| spec::parse(&bytes, format).map_err(|e: SpecError| e.to_string()));
        match parsed {
            Ok(spec) => self.add_spec(path, &spec, priority),
            Err(reason) => {
                tracing::warn!(file = %path.display(), "invalid CDI spec: {reason}");
                self.problems.push(FileProblem {
                    path: path.to_path_buf(),
                    reason,
                });
            }
        }
    }

    /// Adds a validated spec read from `path` at `priority`.
    pub fn add_spec(&mut self, path: &Path, spec: &Spec, priority: usize) {
        let Ok(kind) = Kind::parse(&spec.kind) else {
            return;
        };
        for d in &spec.devices {
            let name = QualifiedName {
                kind: kind.clone(),
                name: d.name.clone(),
            };
            let device = ResolvedDevice {
                name: name.clone(),
                file: path.to_path_buf(),
                cdi_version: spec.cdi_version.clone(),
                edits: merged_edits(spec, d),
            };
            let next = match self.entries.remove(&name) {
                None => Entry::Device(Box::new(device), priority),
                Some(old) => {
                    let (old_priority, old_file) = match &old {
                        Entry::Device(d, p) => (*p, d.file.clone()),
                        Entry::Conflict {
                            priority, first, ..
                        } => (*priority, first.clone()),
                    };
                    if priority > old_priority {
                        Entry::Device(Box::new(device), priority)
                    } else if priority == old_priority {
                        Entry::Conflict {
                            first: old_file,
                            second: path.to_path_buf(),
                            priority,
                        }
                    } else {
                        old
                    }
                }
            };
            self.entries.insert(name, next);
        }
    }

    /// The device called `name`.
    pub fn get(&self, name: &QualifiedName) -> Result<&ResolvedDevice, LookupError> {
        match self.entries.get(name) {
            Some(Entry::Device(d, _)) => Ok(d),
            Some(Entry::Conflict { first, second, .. }) => Err(LookupError::Conflict {
                name: name.to_string(),
                first: first.clone(),
                second: second.clone(),
            }),
            None => Err(LookupError::NotFound {
                name: name.to_string(),
                dirs: self
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                problems: if self.problems.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (invalid spec files: {})",
                        self.problems
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                },
            }),
        }
    }

    /// Every usable device, by name.
    pub fn devices(&self) -> impl Iterator<Item = &ResolvedDevice> {
        self.entries.values().filter_map(|e| match e {
            Entry::Device(d, _) => Some(&**d),
            Entry::Conflict { .. } => None,
        })
    }

    /// Every conflicting name, as errors.
    pub fn conflicts(&self) -> Vec<LookupError> {
        self.entries
            .iter()
            .filter_map(|(name, e)| match e {
                Entry::Conflict { first, second, .. } => Some(LookupError::Conflict {
                    name: name.to_string(),
                    first: first.clone(),
                    second: second.clone(),
                }),
                Entry::Device(..) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_file(dir: &Path, file: &str, kind: &str, devices: &[(&str, &str)]) {
        let devs: Vec<String> = devices
            .iter()
            .map(|(n, p)| {
                format!(r#"{{"name":"{n}","containerEdits":{{"deviceNodes":[{{"path":"{p}"}}]}}}}"#)
            })
            .collect();
        let text = format!(
            r#"{{"cdiVersion":"0.3.0","kind":"{kind}","devices":[{}],"containerEdits":{{"env":["S=1"]}}}}"#,
            devs.join(",")
        );
        fs::write(dir.join(file), text).unwrap();
    }

    fn q(s: &str) -> QualifiedName {
        QualifiedName::parse(s).unwrap()
    }

    #[test]
    fn later_directory_wins_same_directory_conflicts() {
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("etc");
        let run = tmp.path().join("run");
        fs::create_dir_all(&etc).unwrap();
        fs::create_dir_all(&run).unwrap();
        spec_file(
            &etc,
            "a.json",
            "v.com/c",
            &[("x", "/dev/a"), ("y", "/dev/a")],
        );
        spec_file(&run, "b.json", "v.com/c", &[("x", "/dev/b")]);
        spec_file(&etc, "c.json", "v.com/c", &[("y", "/dev/c")]);
        fs::write(etc.join("bad.yaml"), "cdiVersion: [").unwrap();
        fs::write(etc.join("notes.txt"), "ignored").unwrap();
        let reg = Registry::scan(&[&etc, &run, &tmp.path().join("missing")]);
        // /run's x overrides /etc's.
        let x = reg.get(&q("v.com/c=x")).unwrap();
        assert_eq!(x.file, run.join("b.json"));
        assert_eq!(x.edits.device_nodes[0].path, "/dev/b");
        // Device edits then spec edits.
        assert_eq!(x.edits.env, ["S=1"]);
        // y twice in /etc: a conflict naming both files.
        match reg.get(&q("v.com/c=y")) {
            Err(LookupError::Conflict { first, second, .. }) => {
                assert_eq!((first, second), (etc.join("a.json"), etc.join("c.json")))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reg.conflicts().len(), 1);
        // The invalid file is reported and hides nothing.
        assert_eq!(reg.problems.len(), 1);
        assert_eq!(reg.problems[0].path, etc.join("bad.yaml"));
        let err = reg.get(&q("v.com/c=z")).unwrap_err().to_string();
        assert!(err.contains("bad.yaml"), "{err}");
        assert_eq!(reg.devices().count(), 1);
    }

    #[test]
    fn a_conflict_is_lifted_by_a_higher_priority_definition() {
        let tmp = tempfile::tempdir().unwrap();
        let (etc, run) = (tmp.path().join("e"), tmp.path().join("r"));
        fs::create_dir_all(&etc).unwrap();
        fs::create_dir_all(&run).unwrap();
        spec_file(&etc, "a.json", "v.com/c", &[("y", "/dev/a")]);
        spec_file(&etc, "b.json", "v.com/c", &[("y", "/dev/b")]);
        spec_file(&run, "c.yaml", "v.com/c", &[("y", "/dev/c")]);
        let reg = Registry::scan(&[&etc, &run]);
        assert_eq!(reg.get(&q("v.com/c=y")).unwrap().file, run.join("c.yaml"));
    }
}
