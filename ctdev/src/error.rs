//! The one I/O error the modules share.
//!
//! Each module keeps its own `thiserror` enum for what can go wrong in its
//! job; a filesystem operation that failed is the same everywhere (what was
//! done, to which path, the OS's error), so those enums carry an [`IoError`]
//! instead of each spelling out an `Io { op, path, source }` variant.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A filesystem operation that failed: what was done, on which path, and
/// the OS's error. Shown as `OP PATH: ERROR` (`stat /sys/fs/cgroup/x: No
/// such file or directory`).
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct IoError {
    /// What was being done (`open`, `read`, `list`, `remove`, …).
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The OS's error.
    #[source]
    pub source: io::Error,
}

impl IoError {
    /// The error of `op` on `path`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }

    /// A `map_err` argument: `fs::read(p).map_err(IoError::at("read", p))`.
    pub fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IoError + 'a {
        move |source| IoError::new(op, path, source)
    }

    /// The OS error's kind (`NotFound`, …).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// Writes `bytes` to `path` atomically: its directory made when missing, a
/// temporary file (`PATH.tmp`) written, then renamed over `path`. No fsync
/// (the callers' files describe state that does not outlive a reboot, and
/// the rename is atomic for every crash of the process).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(IoError::at("create directory", dir))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp).map_err(IoError::at("create", &tmp))?;
    f.write_all(bytes).map_err(IoError::at("write", &tmp))?;
    fs::rename(&tmp, path).map_err(IoError::at("rename", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_operation_and_the_path() {
        let e = std::fs::read("/nonexistent/ctdev-x")
            .map_err(IoError::at("read", Path::new("/nonexistent/ctdev-x")))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string().starts_with("read /nonexistent/ctdev-x: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn writes_atomically_and_names_the_failing_step() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("a/b/state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!t.path().join("a/b/state.json.tmp").exists());
        // A directory where the file should be: the rename is named.
        let dir = t.path().join("dir");
        std::fs::create_dir_all(dir.join("x")).unwrap();
        let e = write_atomic(&dir, b"x").unwrap_err();
        assert_eq!(e.op, "rename", "{e}");
    }
}
