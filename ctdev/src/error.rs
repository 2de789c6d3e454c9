//! The one I/O error the modules share.
//!
//! Each module keeps its own `thiserror` enum for what can go wrong in its
//! job; a filesystem operation that failed is the same everywhere (what was
//! done, to which path, the OS's error), so those enums carry an [`IoError`]
//! instead of each spelling out an `Io { op, path, source }` variant.

use std::io;
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
}
