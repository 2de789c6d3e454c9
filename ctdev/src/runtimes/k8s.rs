//! Kubernetes pods (`k8s:NAMESPACE/POD[/CONTAINER]`), found through the pod
//! map that `ctdev nri` keeps: nothing in a cgroup path names a pod, so the
//! plugin, which sees every pod and container through NRI, writes down
//! which cgroup is which.
//!
//! The map is `STATE_DIR/pods.json` (default `/run/ctdev/nri`, or
//! `CTDEV_NRI_STATE_DIR`), replaced atomically on every change:
//!
//! ```json
//! {"version": 1, "containers": [
//!   {"namespace": "ci", "pod": "build-1", "pod_uid": "…", "container": "work",
//!    "container_id": "<64 hex>", "cgroup": "/kubepods/…/<id>",
//!    "policy_id": 1234, "entry": "loops"}
//! ]}
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;
use crate::error::IoError;

/// Default directory of the pod map.
pub const DEFAULT_STATE_DIR: &str = "/run/ctdev/nri";
/// The pod map's file name.
pub const POD_MAP: &str = "pods.json";

/// One container of a pod, as the plugin saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodContainer {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    #[serde(default)]
    pub pod_uid: String,
    /// Container name.
    pub container: String,
    /// Container ID (the runtime's).
    pub container_id: String,
    /// cgroup path inside the hierarchy.
    pub cgroup: PathBuf,
    /// ctdev policy id (0 when not under policy).
    #[serde(default)]
    pub policy_id: u64,
    /// The NRI policy entry that selected it.
    #[serde(default)]
    pub entry: String,
}

impl PodContainer {
    /// `namespace/pod/container`.
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// The pod map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMap {
    /// Format version (1).
    pub version: u32,
    /// Known containers.
    pub containers: Vec<PodContainer>,
}

impl PodMap {
    /// Reads the map in `dir`; a missing file is an empty map.
    pub fn load(dir: &Path) -> Result<PodMap, RuntimeError> {
        let path = dir.join(POD_MAP);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PodMap::default()),
            Err(source) => return Err(IoError::new("read", path, source).into()),
        };
        serde_json::from_str(&text).map_err(|e| {
            IoError::new(
                "parse",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
            .into()
        })
    }

    /// Writes the map to `dir` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(dir).map_err(IoError::at("create directory", dir))?;
        let tmp = dir.join(format!(".{POD_MAP}.tmp"));
        let mut map = self.clone();
        map.version = 1;
        let text = serde_json::to_vec_pretty(&map)
            .map_err(|e| IoError::new("serialize", &tmp, std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(IoError::at("create", &tmp))?;
        // No fsync: the map only names containers, and the plugin's
        // Synchronize records every container again after a crash; a lost
        // or empty file costs nothing but that (it sat on every start).
        f.write_all(&text).map_err(IoError::at("write", &tmp))?;
        let path = dir.join(POD_MAP);
        Ok(std::fs::rename(&tmp, &path).map_err(IoError::at("rename", &path))?)
    }

    /// Adds or replaces the record of a container (by container ID).
    pub fn upsert(&mut self, c: PodContainer) {
        self.containers.retain(|o| o.container_id != c.container_id);
        self.containers.push(c);
        self.containers.sort_by(|a, b| {
            (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
        });
    }

    /// Removes the record of a container ID; the removed record.
    pub fn remove(&mut self, container_id: &str) -> Option<PodContainer> {
        let i = self
            .containers
            .iter()
            .position(|c| c.container_id == container_id)?;
        Some(self.containers.remove(i))
    }

    /// The record whose cgroup path is `cgroup`.
    pub fn by_cgroup(&self, cgroup: &Path) -> Option<&PodContainer> {
        self.containers.iter().find(|c| c.cgroup == cgroup)
    }

    /// The containers `namespace/pod[/container]` names. A pod with one
    /// container needs no container name.
    pub fn find(&self, spec: &str) -> Result<&PodContainer, RuntimeError> {
        let not_found = || RuntimeError::NotFound {
            what: "k8s".into(),
            name: spec.into(),
            tried: "the pod map of `ctdev nri` (pods.json in its state dir)".into(),
        };
        let mut parts = spec.splitn(3, '/');
        let (Some(ns), Some(pod)) = (parts.next(), parts.next()) else {
            return Err(not_found());
        };
        let container = parts.next();
        let found: Vec<&PodContainer> = self
            .containers
            .iter()
            .filter(|c| {
                c.namespace == ns && c.pod == pod && container.is_none_or(|n| c.container == n)
            })
            .collect();
        match found.as_slice() {
            [] => Err(not_found()),
            [one] => Ok(one),
            many => Err(RuntimeError::Ambiguous {
                name: spec.into(),
                candidates: many.iter().map(|c| format!("k8s:{}", c.name())).collect(),
            }),
        }
    }
}

/// The pod map's directory: `CTDEV_NRI_STATE_DIR`, else the default.
pub fn state_dir() -> PathBuf {
    std::env::var_os("CTDEV_NRI_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pod map record in namespace `ns` (unit tests).
    pub(crate) fn rec(pod: &str, c: &str, id: &str) -> PodContainer {
        PodContainer {
            namespace: "ns".into(),
            pod: pod.into(),
            pod_uid: String::new(),
            container: c.into(),
            container_id: id.into(),
            cgroup: PathBuf::from(format!("/k/{id}")),
            policy_id: 0,
            entry: String::new(),
        }
    }

    #[test]
    fn find_and_roundtrip() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(PodMap::load(t.path()).unwrap(), PodMap::default());
        let mut m = PodMap::default();
        m.upsert(rec("a", "x", "1"));
        m.upsert(rec("b", "x", "2"));
        m.upsert(rec("b", "y", "3"));
        m.upsert(rec("a", "x", "1"));
        assert_eq!(m.containers.len(), 3);
        m.save(t.path()).unwrap();
        let back = PodMap::load(t.path()).unwrap();
        assert_eq!(back.version, 1);
        assert_eq!(back.find("ns/a").unwrap().container_id, "1");
        assert_eq!(back.find("ns/b/y").unwrap().container_id, "3");
        assert!(matches!(
            back.find("ns/b"),
            Err(RuntimeError::Ambiguous { .. })
        ));
        assert!(matches!(
            back.find("ns/c"),
            Err(RuntimeError::NotFound { .. })
        ));
        assert!(matches!(
            back.find("ns"),
            Err(RuntimeError::NotFound { .. })
        ));
        assert_eq!(back.by_cgroup(Path::new("/k/2")).unwrap().pod, "b");
        let mut m = back;
        assert!(m.remove("2").is_some());
        assert!(m.remove("2").is_none());
    }
}
