//! Scratch cgroups: created under the bench's own parent cgroup, and on drop
//! emptied (cgroup.kill) and removed, children first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A cgroup the bench created; removed with everything below it on drop.
pub struct ScratchCgroup {
    pub dir: PathBuf,
}

impl ScratchCgroup {
    pub fn create(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir(&dir).with_context(|| format!("mkdir cgroup {}", dir.display()))?;
        Ok(ScratchCgroup { dir })
    }

    /// A child cgroup, removed with its parent (or on its own drop).
    pub fn child(&self, name: &str) -> Result<ScratchCgroup> {
        ScratchCgroup::create(self.dir.join(name))
    }
}

/// Kills what runs in `dir` and below, then removes the cgroups bottom-up.
pub fn remove_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    // Killed processes leave the cgroup asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        remove_tree(&self.dir);
    }
}
