//! The plugin's files, written off the container's start path: the pod
//! map (`pods.json`) and the event log (`events.jsonl`).
//!
//! A container's start changes the map in memory and queues its event; a
//! writer thread writes both while the reply goes to the runtime. The map only names containers (the plugin's Synchronize
//! records every container again after a restart), so nothing the start
//! must guarantee waits for it. What still holds:
//! - crash-safe: the map is replaced atomically (temp file + rename); a
//!   crash loses at most the last changes, which Synchronize puts back;
//! - in order: the map is written before the events queued with or after
//!   the change, so an `attached` line in `events.jsonl` means `pods.json`
//!   names the container;
//! - never lost on a clean exit: [`Journal::flush`] writes what is queued
//!   in the caller's thread; dropping the journal flushes, and
//!   [`flush_all`] flushes every journal of the process (the CLI calls it
//!   before exiting).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use crate::runtimes::k8s::PodMap;

/// What is queued for the writer.
#[derive(Default)]
struct Pending {
    /// The map changed since it was last written.
    dirty: bool,
    /// Event lines (JSON, no newline), in order.
    events: Vec<String>,
    /// The journal is being dropped: the writer ends.
    stop: bool,
}

struct Inner {
    dir: PathBuf,
    map: Mutex<PodMap>,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held while writing: writes never overlap or reorder.
    io: Mutex<()>,
}

/// Every live journal of the process, for [`flush_all`].
static JOURNALS: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pod map and event log of a state directory.
pub(crate) struct Journal {
    inner: Arc<Inner>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Journal {
    /// A journal over `dir` starting from `map`, with its writer thread
    /// (without one, if the thread cannot start: every change is then
    /// written at once, in the caller's thread).
    pub(crate) fn new(dir: PathBuf, map: PodMap) -> Journal {
        let inner = Arc::new(Inner {
            dir,
            map: Mutex::new(map),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            io: Mutex::new(()),
        });
        let writer = std::thread::Builder::new()
            .name("ctdev-nri-journal".into())
            .spawn({
                let inner = inner.clone();
                move || writer(&inner)
            })
            .map_err(|e| tracing::warn!("no journal thread, writing in place: {e}"))
            .ok();
        let mut all = lock(&JOURNALS);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&inner));
        drop(all);
        Journal { inner, writer }
    }

    /// The directory written to.
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Reads the map (in memory: what the last change left).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&PodMap) -> T) -> T {
        f(&lock(&self.inner.map))
    }

    /// Changes the map in memory; the writer saves it.
    pub(crate) fn change<T>(&self, f: impl FnOnce(&mut PodMap) -> T) -> T {
        let out = f(&mut lock(&self.inner.map));
        self.queue(|p| p.dirty = true);
        out
    }

    /// Queues an event line; the writer appends it.
    pub(crate) fn event(&self, line: String) {
        self.queue(|p| p.events.push(line));
    }

    fn queue(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut lock(&self.inner.pending));
        if self.writer.is_some() {
            self.inner.wake.notify_one();
        } else {
            self.inner.write_pending();
        }
    }

    /// Writes what is queued now, in the caller's thread.
    pub(crate) fn flush(&self) {
        self.inner.write_pending();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        lock(&self.inner.pending).stop = true;
        self.inner.wake.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.inner.write_pending();
    }
}

/// Writes what every journal of the process has queued (before a clean
/// exit that does not drop them).
pub fn flush_all() {
    let all: Vec<Arc<Inner>> = lock(&JOURNALS).iter().filter_map(Weak::upgrade).collect();
    for inner in all {
        inner.write_pending();
    }
}

/// The writer thread: waits for changes, writes them.
fn writer(inner: &Inner) {
    loop {
        {
            let mut p = lock(&inner.pending);
            while !p.dirty && p.events.is_empty() && !p.stop {
                p = inner.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.stop {
                return;
            }
        }
        inner.write_pending();
    }
}

impl Inner {
    /// Takes what is queued and writes it: the map first, then the events.
    fn write_pending(&self) {
        let _io = lock(&self.io);
        let (dirty, events) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.dirty), std::mem::take(&mut p.events))
        };
        if dirty {
            let map = lock(&self.map).clone();
            if let Err(e) = map.save(&self.dir) {
                tracing::warn!("cannot save the pod map: {e}");
            }
        }
        if !events.is_empty() {
            let path = self.dir.join("events.jsonl");
            let mut text = events.join("\n");
            text.push('\n');
            let res = std::fs::create_dir_all(&self.dir).and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?
                    .write_all(text.as_bytes())
            });
            if let Err(e) = res {
                tracing::warn!("cannot write {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtimes::k8s::tests::rec as record;
    use crate::runtimes::k8s::PodContainer;

    fn rec(id: &str) -> PodContainer {
        record("p", id, id)
    }

    #[test]
    fn changes_reach_the_files_in_order_and_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let j = Journal::new(t.path().to_path_buf(), PodMap::default());
        for i in 0..50 {
            j.change(|m| m.upsert(rec(&format!("c{i}"))));
            j.event(format!("{{\"n\":{i}}}"));
        }
        j.change(|m| m.remove("c0"));
        drop(j);
        let map = PodMap::load(t.path()).unwrap();
        assert_eq!(map.containers.len(), 49);
        assert!(map.find("ns/p/c0").is_err());
        let events = std::fs::read_to_string(t.path().join("events.jsonl")).unwrap();
        let n: Vec<&str> = events.lines().collect();
        assert_eq!(n.len(), 50);
        assert_eq!(n[0], "{\"n\":0}");
        assert_eq!(n[49], "{\"n\":49}");
    }

    #[test]
    fn flush_writes_at_once() {
        let t = tempfile::tempdir().unwrap();
        let j = Journal::new(t.path().to_path_buf(), PodMap::default());
        j.change(|m| m.upsert(rec("a")));
        j.event("{}".into());
        flush_all();
        assert_eq!(PodMap::load(t.path()).unwrap().containers.len(), 1);
        assert_eq!(
            std::fs::read_to_string(t.path().join("events.jsonl")).unwrap(),
            "{}\n"
        );
        assert_eq!(j.read(|m| m.containers.len()), 1);
        assert_eq!(j.dir(), t.path());
    }
}
