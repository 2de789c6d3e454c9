//! Built-in starting policies for `ctdev attach --preset`.

use crate::rule::{Access, DevNumber, DeviceType, Rule};

/// A named set of rules a container starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The OCI/runc default device set.
    Oci,
    /// Nothing: every device denied until allowed.
    None,
}

impl Preset {
    /// The name as on the command line and in policy files (`oci`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Oci => "oci",
            Preset::None => "none",
        }
    }

    /// The rules of this preset.
    pub fn rules(self) -> Vec<Rule> {
        match self {
            Preset::None => Vec::new(),
            Preset::Oci => oci_defaults(),
        }
    }
}

/// The devices every OCI container gets (runc's `AllowedDevices`): mknod of
/// any node, and rwm on null, zero, full, random, urandom, tty, console,
/// ptmx and the pty slaves (`c 136:*`).
fn oci_defaults() -> Vec<Rule> {
    let rwm = Access::ALL;
    let m = Access::parse("m").unwrap_or(Access::ALL);
    let any = |dev_type| Rule {
        dev_type,
        major: DevNumber::Any,
        minor: DevNumber::Any,
        access: m,
    };
    vec![
        any(DeviceType::Char),
        any(DeviceType::Block),
        Rule::device(DeviceType::Char, 1, 3, rwm), // /dev/null
        Rule::device(DeviceType::Char, 1, 5, rwm), // /dev/zero
        Rule::device(DeviceType::Char, 1, 7, rwm), // /dev/full
        Rule::device(DeviceType::Char, 1, 8, rwm), // /dev/random
        Rule::device(DeviceType::Char, 1, 9, rwm), // /dev/urandom
        Rule::device(DeviceType::Char, 5, 0, rwm), // /dev/tty
        Rule::device(DeviceType::Char, 5, 1, rwm), // /dev/console
        Rule::device(DeviceType::Char, 5, 2, rwm), // /dev/ptmx
        Rule {
            dev_type: DeviceType::Char,
            major: DevNumber::Exact(136),
            minor: DevNumber::Any,
            access: rwm,
        }, // /dev/pts/*
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_preset_matches_runc_defaults() {
        let text: Vec<String> = Preset::Oci.rules().iter().map(|r| r.to_string()).collect();
        for want in [
            "c *:* m",
            "b *:* m",
            "c 1:3 rwm",
            "c 1:9 rwm",
            "c 5:2 rwm",
            "c 136:* rwm",
        ] {
            assert!(text.iter().any(|t| t == want), "missing {want} in {text:?}");
        }
        assert!(Preset::None.rules().is_empty());
    }
}
