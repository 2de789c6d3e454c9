//! The NRI plugin's policy file (TOML) and the pure decision it makes for a
//! container: unmanaged, managed with these devices and rules, or refused.
//!
//! ```toml
//! state_dir = "/run/ctdev/nri"   # pod map + events (default: $CTDEV_NRI_STATE_DIR, else this)
//! runtime_roots = ["/run/containerd/runc/k8s.io"]  # where runc keeps its state
//!
//! [[container]]
//! name = "loop-builders"          # names the entry in logs and events
//! namespace = "ci-*"              # globs; a missing key matches anything
//! pod = "*"
//! container = "*"
//! labels = { app = "builder" }    # every pair must be present on the pod
//! annotations = {}
//! rules = ["c 1:3 rw"]            # always granted (besides runc's own defaults)
//! devices = ["/dev/fuse"]         # always passed in (node + rule)
//! allow = ["/dev/loop*", "b 7:* rw"]  # what the pod annotation may request
//! ```
//!
//! A pod asks for devices per container with the annotation
//! `devices.ctdev.io/container.<NAME>`: device paths (`/dev/loop-control`,
//! optionally followed by access letters) and rules (`c 10:237 rw`),
//! separated by commas or new lines. A request is granted only when the
//! first entry that selects the container allows it (a path by one of the
//! `allow` globs, a rule by being inside one of the `allow` rules); anything
//! else refuses the container. Nothing is ever widened silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use crate::rule::{Access, DevNumber, Rule, RuleSpec};

/// The pod annotation prefix: `devices.ctdev.io/container.<NAME>`.
pub const ANNOTATION_PREFIX: &str = "devices.ctdev.io/container.";
/// Default runc state root of containerd's CRI namespace.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/containerd/runc/k8s.io";

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read NRI policy file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or unknown keys.
    #[error("NRI policy file {path}: {message}")]
    Syntax {
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value that is not valid.
    #[error("NRI policy file {path}: container[{index}] ({name}): {key}: {message}")]
    Invalid {
        path: PathBuf,
        /// Index of the `[[container]]` entry.
        index: usize,
        name: String,
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    runtime_roots: Vec<PathBuf>,
    #[serde(default)]
    container: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    devices: Vec<PathBuf>,
    #[serde(default)]
    allow: Vec<String>,
}

/// A glob with its text (for messages).
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The glob as written.
    pub text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    fn new(text: &str) -> Result<Self, String> {
        let matcher = Glob::new(text)
            .map_err(|e| format!("bad glob {text:?}: {e}"))?
            .compile_matcher();
        Ok(Self {
            text: text.to_string(),
            matcher,
        })
    }

    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

/// What an entry lets an annotation request.
#[derive(Debug, Clone)]
pub enum Allowance {
    /// Device paths matching a glob (any access).
    Paths(Pattern),
    /// Rules inside this one.
    Rule(Rule),
}

/// One validated `[[container]]` entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    /// Kubernetes namespace glob.
    pub namespace: Option<Pattern>,
    /// Pod name glob.
    pub pod: Option<Pattern>,
    /// Container name glob.
    pub container: Option<Pattern>,
    /// Labels the pod must carry.
    pub labels: BTreeMap<String, String>,
    /// Annotations the pod must carry.
    pub annotations: BTreeMap<String, String>,
    /// Rules always granted.
    pub rules: Vec<Rule>,
    /// Devices always passed in.
    pub devices: Vec<PathBuf>,
    /// What the annotation may request.
    pub allow: Vec<Allowance>,
}

/// The validated policy.
#[derive(Debug, Clone)]
pub struct NriPolicy {
    /// Pod map and events.
    pub state_dir: PathBuf,
    /// runc state roots (to import runc's own rules at start).
    pub runtime_roots: Vec<PathBuf>,
    /// Entries, first match wins.
    pub entries: Vec<Entry>,
}

/// The pod and container an event is about.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
    /// Container name.
    pub container: String,
}

/// A device asked for by a pod annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A device node path (passed in, with a rule for its number).
    Path {
        /// The path on the host (and inside).
        path: PathBuf,
        /// Access letters.
        access: Access,
    },
    /// A rule only (no node is created).
    Rule(Rule),
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Path { path, access } => write!(f, "{} {access}", path.display()),
            Request::Rule(r) => write!(f, "{r}"),
        }
    }
}

/// What ctdev does with a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No entry selects it and it asks for nothing: the runtime's program stays.
    Unmanaged,
    /// Put under ctdev at start with these extra devices and rules.
    Managed {
        /// The selecting entry.
        entry: String,
        /// Device nodes to pass in (with rules for them).
        devices: Vec<(PathBuf, Access)>,
        /// Rules to grant.
        rules: Vec<Rule>,
    },
    /// A request the policy does not allow: the container is not created.
    Refused {
        /// The selecting entry, if any.
        entry: Option<String>,
        /// Why, for the operator.
        reason: String,
    },
}

impl NriPolicy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates policy text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, PolicyError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut entries = Vec::with_capacity(raw.container.len());
        for (index, e) in raw.container.into_iter().enumerate() {
            let invalid = |key: &'static str, message: String| PolicyError::Invalid {
                path: path.to_path_buf(),
                index,
                name: e.name.clone(),
                key,
                message,
            };
            let glob = |key: &'static str, v: &Option<String>| {
                v.as_deref()
                    .map(Pattern::new)
                    .transpose()
                    .map_err(|m| invalid(key, m))
            };
            let mut rules = Vec::new();
            for r in &e.rules {
                match RuleSpec::parse(r).map_err(|err| invalid("rules", err.to_string()))? {
                    RuleSpec::Numbers(rule) => rules.push(rule),
                    RuleSpec::Path { .. } => {
                        return Err(invalid(
                            "rules",
                            format!("{r:?}: use `devices` for device paths"),
                        ))
                    }
                }
            }
            for d in &e.devices {
                if !d.is_absolute() {
                    return Err(invalid(
                        "devices",
                        format!("{}: not an absolute path", d.display()),
                    ));
                }
            }
            let mut allow = Vec::new();
            for a in &e.allow {
                if a.starts_with('/') {
                    allow.push(Allowance::Paths(
                        Pattern::new(a).map_err(|m| invalid("allow", m))?,
                    ));
                } else {
                    match RuleSpec::parse(a).map_err(|err| invalid("allow", err.to_string()))? {
                        RuleSpec::Numbers(rule) => allow.push(Allowance::Rule(rule)),
                        RuleSpec::Path { .. } => {
                            return Err(invalid("allow", format!("{a:?}: not a rule nor a path")))
                        }
                    }
                }
            }
            entries.push(Entry {
                namespace: glob("namespace", &e.namespace)?,
                pod: glob("pod", &e.pod)?,
                container: glob("container", &e.container)?,
                name: e.name,
                labels: e.labels,
                annotations: e.annotations,
                rules,
                devices: e.devices,
                allow,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, e) in entries.iter().enumerate() {
            if !seen.insert(e.name.clone()) {
                return Err(PolicyError::Invalid {
                    path: path.to_path_buf(),
                    index,
                    name: e.name.clone(),
                    key: "name",
                    message: "duplicate entry name".into(),
                });
            }
        }
        Ok(Self {
            state_dir: raw
                .state_dir
                .unwrap_or_else(crate::runtimes::k8s::state_dir),
            runtime_roots: if raw.runtime_roots.is_empty() {
                vec![PathBuf::from(DEFAULT_RUNTIME_ROOT)]
            } else {
                raw.runtime_roots
            },
            entries,
        })
    }

    /// The first entry selecting the container.
    pub fn select(&self, info: &PodInfo) -> Option<&Entry> {
        self.entries.iter().find(|e| e.selects(info))
    }

    /// What to do with a container (pure: nothing on the host is looked at).
    pub fn decide(&self, info: &PodInfo) -> Decision {
        let requests = match info
            .annotations
            .get(&format!("{ANNOTATION_PREFIX}{}", info.container))
        {
            None => Ok(Vec::new()),
            Some(text) => parse_annotation(text),
        };
        let entry = self.select(info);
        let who = format!("{}/{}/{}", info.namespace, info.pod, info.container);
        let requests = match requests {
            Ok(r) => r,
            Err(reason) => {
                return Decision::Refused {
                    entry: entry.map(|e| e.name.clone()),
                    reason: format!(
                        "{who}: bad annotation {ANNOTATION_PREFIX}{}: {reason}",
                        info.container
                    ),
                }
            }
        };
        let Some(entry) = entry else {
            if requests.is_empty() {
                return Decision::Unmanaged;
            }
            return Decision::Refused {
                entry: None,
                reason: format!(
                    "{who} requests {}: no policy entry selects namespace {:?}, pod {:?}, container {:?}",
                    list(&requests),
                    info.namespace,
                    info.pod,
                    info.container
                ),
            };
        };
        let denied: Vec<&Request> = requests.iter().filter(|r| !entry.allows(r)).collect();
        if !denied.is_empty() {
            return Decision::Refused {
                entry: Some(entry.name.clone()),
                reason: format!(
                    "{who} requests {}: not allowed by policy entry {:?} (allow: {})",
                    denied
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    entry.name,
                    entry.allow_text()
                ),
            };
        }
        let mut devices: Vec<(PathBuf, Access)> = entry
            .devices
            .iter()
            .map(|d| (d.clone(), Access::ALL))
            .collect();
        let mut rules = entry.rules.clone();
        for r in requests {
            match r {
                Request::Path { path, access } => devices.push((path, access)),
                Request::Rule(rule) => rules.push(rule),
            }
        }
        Decision::Managed {
            entry: entry.name.clone(),
            devices,
            rules,
        }
    }
}

fn list(requests: &[Request]) -> String {
    requests
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Entry {
    /// Whether this entry selects the container.
    pub fn selects(&self, info: &PodInfo) -> bool {
        let glob = |p: &Option<Pattern>, s: &str| p.as_ref().is_none_or(|p| p.matches(s));
        glob(&self.namespace, &info.namespace)
            && glob(&self.pod, &info.pod)
            && glob(&self.container, &info.container)
            && self
                .labels
                .iter()
                .all(|(k, v)| info.labels.get(k) == Some(v))
            && self
                .annotations
                .iter()
                .all(|(k, v)| info.annotations.get(k) == Some(v))
    }

    /// Whether the entry lets the annotation ask for `request`.
    pub fn allows(&self, request: &Request) -> bool {
        self.allow.iter().any(|a| match (a, request) {
            (Allowance::Paths(p), Request::Path { path, .. }) => {
                path.to_str().is_some_and(|s| p.matches(s))
            }
            (Allowance::Rule(outer), Request::Rule(inner)) => rule_within(inner, outer),
            _ => false,
        })
    }

    fn allow_text(&self) -> String {
        if self.allow.is_empty() {
            return "nothing".into();
        }
        self.allow
            .iter()
            .map(|a| match a {
                Allowance::Paths(p) => p.text.clone(),
                Allowance::Rule(r) => r.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether every access `inner` grants is also granted by `outer`.
pub fn rule_within(inner: &Rule, outer: &Rule) -> bool {
    let num = |i: DevNumber, o: DevNumber| o == DevNumber::Any || i == o;
    inner.dev_type == outer.dev_type
        && num(inner.major, outer.major)
        && num(inner.minor, outer.minor)
        && inner.access.difference(outer.access).is_empty()
}

/// Parses the annotation's value: paths and rules, separated by commas or
/// new lines.
pub fn parse_annotation(text: &str) -> Result<Vec<Request>, String> {
    let mut out = Vec::new();
    for item in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match RuleSpec::parse(item).map_err(|e| format!("{item:?}: {e}"))? {
            RuleSpec::Numbers(rule) => out.push(Request::Rule(rule)),
            RuleSpec::Path { path, access } => {
                if path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                    || !path.starts_with("/dev")
                {
                    return Err(format!("{item:?}: device paths must be under /dev"));
                }
                out.push(Request::Path { path, access });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::DeviceType;

    const FILE: &str = r#"
        state_dir = "/tmp/x"
        [[container]]
        name = "loops"
        namespace = "ci-*"
        labels = { app = "builder" }
        rules = ["c 1:3 rw"]
        allow = ["/dev/loop*", "b 7:* rw"]

        [[container]]
        name = "plain"
        namespace = "default"
    "#;

    fn policy() -> NriPolicy {
        NriPolicy::parse(Path::new("p.toml"), FILE).unwrap()
    }

    fn info(ns: &str, ann: Option<&str>, app: &str) -> PodInfo {
        let mut i = PodInfo {
            namespace: ns.into(),
            pod: "p1".into(),
            container: "work".into(),
            ..Default::default()
        };
        i.labels.insert("app".into(), app.into());
        if let Some(a) = ann {
            i.annotations
                .insert(format!("{ANNOTATION_PREFIX}work"), a.into());
        }
        i
    }

    #[test]
    fn parses_and_defaults() {
        let p = policy();
        assert_eq!(p.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(p.runtime_roots, [PathBuf::from(DEFAULT_RUNTIME_ROOT)]);
        assert_eq!(p.entries.len(), 2);
    }

    #[test]
    fn rejects_bad_files() {
        let bad = |t: &str| {
            NriPolicy::parse(Path::new("p.toml"), t)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("bogus = 1").contains("bogus"));
        assert!(bad("[[container]]\nname='a'\nrules=['q 1:2']").contains("container[0] (a): rules"));
        assert!(bad("[[container]]\nname='a'\nrules=['/dev/null']").contains("use `devices`"));
        assert!(bad("[[container]]\nname='a'\ndevices=['dev/null']").contains("absolute"));
        assert!(bad("[[container]]\nname='a'\nnamespace='['").contains("bad glob"));
        assert!(bad("[[container]]\nname='a'\n[[container]]\nname='a'").contains("duplicate"));
    }

    #[test]
    fn decisions() {
        let p = policy();
        assert_eq!(p.decide(&info("other", None, "x")), Decision::Unmanaged);
        match p.decide(&info("ci-1", Some("/dev/loop-control, b 7:3 r"), "builder")) {
            Decision::Managed {
                entry,
                devices,
                rules,
            } => {
                assert_eq!(entry, "loops");
                assert_eq!(devices, [(PathBuf::from("/dev/loop-control"), Access::ALL)]);
                assert_eq!(rules.len(), 2);
                assert_eq!(rules[1].dev_type, DeviceType::Block);
            }
            d => panic!("{d:?}"),
        }
        // Outside what the namespace may ask for: refused, never widened.
        match p.decide(&info("ci-1", Some("/dev/sda"), "builder")) {
            Decision::Refused { entry, reason } => {
                assert_eq!(entry.as_deref(), Some("loops"));
                assert!(reason.contains("/dev/sda"), "{reason}");
                assert!(reason.contains("/dev/loop*"), "{reason}");
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            p.decide(&info("ci-1", Some("b 7:3 rwm"), "builder")),
            Decision::Refused { .. }
        ));
        // A namespace whose entry allows nothing, and one with no entry.
        assert!(matches!(
            p.decide(&info("default", Some("/dev/loop0"), "x")),
            Decision::Refused { .. }
        ));
        match p.decide(&info("kube-system", Some("/dev/loop0"), "x")) {
            Decision::Refused {
                entry: None,
                reason,
            } => {
                assert!(reason.contains("no policy entry"), "{reason}")
            }
            d => panic!("{d:?}"),
        }
        // Labels select: same namespace, other app → no entry.
        assert!(matches!(
            p.decide(&info("ci-1", Some("/dev/loop0"), "web")),
            Decision::Refused { entry: None, .. }
        ));
    }

    #[test]
    fn annotations() {
        assert_eq!(
            parse_annotation("/dev/loop0 r\n c 10:237 rw ,")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_annotation("/etc/passwd").is_err());
        assert!(parse_annotation("/dev/../etc/shadow").is_err());
        assert!(parse_annotation("x 1:2").is_err());
        assert!(parse_annotation("").unwrap().is_empty());
    }

    #[test]
    fn rule_containment() {
        let r = |s: &str| match RuleSpec::parse(s).unwrap() {
            RuleSpec::Numbers(r) => r,
            _ => unreachable!(),
        };
        assert!(rule_within(&r("b 7:3 r"), &r("b 7:* rw")));
        assert!(!rule_within(&r("b 7:* r"), &r("b 7:3 rw")));
        assert!(!rule_within(&r("c 7:3 r"), &r("b 7:* rw")));
        assert!(!rule_within(&r("b 7:3 rm"), &r("b 7:* rw")));
    }
}
