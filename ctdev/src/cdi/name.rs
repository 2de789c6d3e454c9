//! Qualified CDI device names: `vendor.com/class=name`.
//!
//! The rules are the CDI spec's: the kind (`vendor/class`) has a vendor
//! prefix that is a DNS-like name and a class of at most 63 characters;
//! vendor and class start with a letter, end with a letter or digit and
//! hold letters, digits, `-`, `_` and `.` between; a device name starts and
//! ends with a letter or digit and may also hold `:` between.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// Why a name is not a valid CDI name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CDI name {text:?}: {reason}")]
pub struct NameError {
    /// The text as given.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

fn err(text: &str, reason: impl Into<String>) -> NameError {
    NameError {
        text: text.into(),
        reason: reason.into(),
    }
}

/// A device kind, `vendor.com/class`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind {
    /// The vendor prefix (`vendor.com`).
    pub vendor: String,
    /// The device class (`gpu`).
    pub class: String,
}

impl Kind {
    /// Parses and checks `vendor/class`.
    pub fn parse(text: &str) -> Result<Kind, NameError> {
        let (vendor, class) = text
            .split_once('/')
            .ok_or_else(|| err(text, "a kind is VENDOR/CLASS (e.g. vendor.com/gpu)"))?;
        check_vendor(vendor).map_err(|r| err(text, format!("vendor {vendor:?}: {r}")))?;
        check_class(class).map_err(|r| err(text, format!("class {class:?}: {r}")))?;
        Ok(Kind {
            vendor: vendor.into(),
            class: class.into(),
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vendor, self.class)
    }
}

/// A fully qualified device name, `vendor.com/class=name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    /// Vendor and class.
    pub kind: Kind,
    /// The device's name within its kind.
    pub name: String,
}

impl QualifiedName {
    /// Parses and checks `vendor/class=name`.
    pub fn parse(text: &str) -> Result<QualifiedName, NameError> {
        let (kind, name) = text
            .split_once('=')
            .ok_or_else(|| err(text, "expected VENDOR/CLASS=NAME (e.g. vendor.com/gpu=0)"))?;
        let kind = Kind::parse(kind).map_err(|e| err(text, e.reason))?;
        check_device_name(name).map_err(|r| err(text, format!("device name {name:?}: {r}")))?;
        Ok(QualifiedName {
            kind,
            name: name.into(),
        })
    }

    /// Whether `text` looks like a CDI name (has `/` before `=`) rather
    /// than a host path or an interface name; it may still be invalid.
    pub fn looks_like(text: &str) -> bool {
        !text.starts_with('/')
            && text
                .split_once('=')
                .is_some_and(|(kind, _)| kind.contains('/'))
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind, self.name)
    }
}

impl FromStr for QualifiedName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QualifiedName::parse(s)
    }
}

impl Serialize for QualifiedName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Letters, digits and `extra` between a valid first and last character.
fn check_chars(
    text: &str,
    first_ok: fn(char) -> bool,
    first_what: &str,
    extra: &[char],
) -> Result<(), String> {
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return Err("is empty".into());
    };
    if !first_ok(first) {
        return Err(format!("must start with {first_what}, not {first:?}"));
    }
    if let Some(last) = text.chars().last() {
        if !last.is_ascii_alphanumeric() {
            return Err(format!("must end with a letter or digit, not {last:?}"));
        }
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(c))
    {
        return Err(format!("character {bad:?} is not allowed"));
    }
    Ok(())
}

fn check_vendor(vendor: &str) -> Result<(), String> {
    if vendor.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    check_chars(
        vendor,
        |c| c.is_ascii_alphabetic(),
        "a letter",
        &['-', '_', '.'],
    )?;
    if vendor.contains("..") {
        return Err("has an empty DNS label".into());
    }
    Ok(())
}

fn check_class(class: &str) -> Result<(), String> {
    if class.len() > 63 {
        return Err("is longer than 63 characters".into());
    }
    check_chars(
        class,
        |c| c.is_ascii_alphabetic(),
        "a letter",
        &['-', '_', '.'],
    )
}

/// Checks a device name (the part after `=`).
pub(crate) fn check_device_name(name: &str) -> Result<(), String> {
    check_chars(
        name,
        |c| c.is_ascii_alphanumeric(),
        "a letter or digit",
        &['-', '_', '.', ':'],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for ok in [
            "vendor.com/class=name",
            "nvidia.com/gpu=0",
            "foo.bar.baz/foo-bar123.B_az=all",
            "example.com/net=eth:1",
            "a/b=c",
        ] {
            let n = QualifiedName::parse(ok).unwrap();
            assert_eq!(n.to_string(), ok);
            assert!(QualifiedName::looks_like(ok));
        }
    }

    #[test]
    fn bad_names() {
        for bad in [
            "vendor.com/class",
            "vendor.com=name",
            "vendor.com/class/x=name",
            "/class=name",
            "vendor.com/=name",
            "vendor.com/class=",
            "1vendor.com/class=name",
            "vendor.com/1class=name",
            "vendor.com-/class=name",
            "vendor.com/class-=name",
            "vendor.com/class=-name",
            "vendor.com/class=name-",
            "vendor.com/class=na me",
            "vendor..com/class=name",
            "vendor.com/class=na/me",
        ] {
            assert!(QualifiedName::parse(bad).is_err(), "{bad}");
        }
        let long = format!("v.com/{}=x", "c".repeat(64));
        assert!(QualifiedName::parse(&long).is_err());
    }

    #[test]
    fn paths_and_interfaces_do_not_look_like_names() {
        for other in ["/dev/null", "/dev/x=y/z", "eth0", "a=b"] {
            assert!(!QualifiedName::looks_like(other), "{other}");
        }
    }
}
