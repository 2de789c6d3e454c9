//! The `[nri]` section of the daemon's policy file: with it, `ctdev daemon`
//! also runs the NRI plugin, in the same process (one node agent, not two).
//!
//! ```toml
//! [nri]
//! socket = "/var/run/nri/nri.sock"  # the runtime's NRI socket
//! policy = "nri.toml"               # the NRI policy file; relative to this
//!                                   # file's directory; watched, reloaded
//! state_dir = "/run/ctdev/nri"      # optional: overrides the NRI file's
//! name = "ctdev"                    # plugin name
//! index = "10"                      # plugin index, two digits
//! reconnect_interval = 1.0          # seconds between connection attempts
//! ```
//!
//! Every key has a default (an empty `[nri]` section is enough on a node
//! with the default paths). The section is read when the daemon starts; a
//! SIGHUP reloads the daemon's own entries, while the NRI policy file is
//! watched and reloaded on its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{valid_index, NriOptions, DEFAULT_INDEX, DEFAULT_NAME, DEFAULT_POLICY, DEFAULT_SOCKET};

/// The validated `[nri]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NriSection {
    /// The runtime's NRI socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The NRI policy file (relative: to the daemon's policy file's directory).
    #[serde(default = "default_policy")]
    pub policy: PathBuf,
    /// Pod map and events directory (default: the NRI policy file's).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Plugin name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Plugin index (two digits).
    #[serde(default = "default_index")]
    pub index: String,
    /// Seconds between connection attempts.
    #[serde(default = "default_interval")]
    pub reconnect_interval: f64,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_policy() -> PathBuf {
    PathBuf::from(DEFAULT_POLICY)
}
fn default_name() -> String {
    DEFAULT_NAME.into()
}
fn default_index() -> String {
    DEFAULT_INDEX.into()
}
fn default_interval() -> f64 {
    1.0
}

impl NriSection {
    /// Checks the values; the key and what is wrong with it. A relative
    /// `policy` is made relative to `base` (the policy file's directory).
    pub fn resolve(mut self, base: &Path) -> Result<Self, (&'static str, String)> {
        if !valid_index(&self.index) {
            return Err((
                "nri.index",
                format!("{:?} must be two digits (00-99)", self.index),
            ));
        }
        if !(self.reconnect_interval.is_finite() && self.reconnect_interval > 0.0) {
            return Err((
                "nri.reconnect_interval",
                format!(
                    "must be a number of seconds > 0, got {}",
                    self.reconnect_interval
                ),
            ));
        }
        if self.name.is_empty() {
            return Err(("nri.name", "must not be empty".into()));
        }
        if self.policy.is_relative() {
            self.policy = base.join(&self.policy);
        }
        Ok(self)
    }

    /// How the plugin connects.
    pub fn options(&self) -> NriOptions {
        NriOptions {
            socket: self.socket.clone(),
            name: self.name.clone(),
            index: self.index.clone(),
            reconnect: Some(Duration::from_secs_f64(self.reconnect_interval)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<NriSection, String> {
        #[derive(Deserialize)]
        struct F {
            nri: NriSection,
        }
        toml::from_str::<F>(text)
            .map_err(|e| e.to_string())?
            .nri
            .resolve(Path::new("/etc/ctdev"))
            .map_err(|(k, m)| format!("{k}: {m}"))
    }

    #[test]
    fn defaults_and_relative_policy() {
        let s = section("[nri]\n").unwrap();
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(s.policy, PathBuf::from(DEFAULT_POLICY));
        assert_eq!(s.index, "10");
        let s = section("[nri]\npolicy = \"nri.toml\"\nindex = \"05\"\n").unwrap();
        assert_eq!(s.policy, PathBuf::from("/etc/ctdev/nri.toml"));
        assert_eq!(s.options().index, "05");
    }

    #[test]
    fn bad_values_are_named() {
        assert!(section("[nri]\nindex = \"5\"\n")
            .unwrap_err()
            .starts_with("nri.index"));
        assert!(section("[nri]\nreconnect_interval = 0.0\n")
            .unwrap_err()
            .starts_with("nri.reconnect_interval"));
        assert!(section("[nri]\nsockett = \"/x\"\n")
            .unwrap_err()
            .contains("unknown field"));
    }
}
