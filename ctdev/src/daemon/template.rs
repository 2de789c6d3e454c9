//! `dest` templates of hotplug rules: a path with `{KEY}` placeholders
//! filled from the device's udev properties (`/dev/serial/{ID_SERIAL}`,
//! `/dev/{DEVNAME}`, `/dev/by-path/{ID_PATH}`). `{devname}` is DEVNAME
//! without `/dev/` (the historical spelling, also `{DEVNAME}`).
//!
//! Pure: parsing checks the placeholders, rendering only substitutes. The
//! rendered path is checked like any destination before a node is made
//! (absolute, no `.`/`..` components), so a property value cannot climb out
//! of the directory the template names.

use std::fmt;

use super::devices::DeviceInfo;

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`, or a `}` without its `{`.
    #[error("unbalanced braces in {0:?}")]
    Unbalanced(String),
    /// A placeholder that is not a udev property name.
    #[error("{{{0}}} is not a udev property name (A-Z, 0-9, _) or {{devname}}")]
    BadKey(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Key(String),
}

/// A parsed `dest` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestTemplate {
    text: String,
    parts: Vec<Part>,
}

/// The default: the device's own name under `/dev`.
pub(crate) const DEFAULT_DEST: &str = "/dev/{devname}";

impl DestTemplate {
    /// Parses `text`; every `{KEY}` must be a property name or `devname`.
    pub fn parse(text: &str) -> Result<DestTemplate, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(TemplateError::Unbalanced(text.to_string()))
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Text(rest[..i].to_string()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find(['}', '{'])
                        .filter(|e| after.as_bytes()[*e] == b'}')
                        .ok_or_else(|| TemplateError::Unbalanced(text.to_string()))?;
                    let key = &after[..end];
                    let ok = key == "devname"
                        || (!key.is_empty()
                            && key.bytes().all(|b| {
                                b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
                            }));
                    if !ok {
                        return Err(TemplateError::BadKey(key.to_string()));
                    }
                    parts.push(Part::Key(key.to_string()));
                    rest = &after[end + 1..];
                }
            }
        }
        Ok(DestTemplate {
            text: text.to_string(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The keys it uses.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Key(k) => Some(k.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The template with every placeholder replaced by `value(key)`;
    /// `None` when a key has no value (the device lacks that property).
    pub fn render_with<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Key(k) => {
                    let v = value(k)?;
                    if v.is_empty() || v.contains('\0') {
                        return None;
                    }
                    out.push_str(v);
                }
            }
        }
        Some(out)
    }

    /// The destination of `dev`: `{devname}` and `{DEVNAME}` are DEVNAME
    /// without `/dev/`, any other key the property of that name.
    pub fn render(&self, dev: &DeviceInfo) -> Option<String> {
        self.render_with(|k| match k {
            "devname" | "DEVNAME" => dev.devname(),
            _ => dev.prop(k).map(String::as_str),
        })
    }

    /// Whether it is the default `/dev/{devname}`.
    pub fn is_default(&self) -> bool {
        self.text == DEFAULT_DEST
    }
}

impl Default for DestTemplate {
    fn default() -> Self {
        DestTemplate {
            text: DEFAULT_DEST.to_string(),
            parts: vec![Part::Text("/dev/".into()), Part::Key("devname".into())],
        }
    }
}

impl fmt::Display for DestTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dev(pairs: &[(&str, &str)]) -> DeviceInfo {
        let props: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DeviceInfo {
            devpath: props.get("DEVPATH").cloned().unwrap_or_default(),
            props,
            ..Default::default()
        }
    }

    #[test]
    fn renders_udev_properties() {
        let d = dev(&[
            ("DEVNAME", "/dev/ttyUSB0"),
            ("ID_SERIAL", "FTDI_FT232R_A10K"),
            ("ID_PATH", "pci-0000:00:14.0-usb-0:2:1.0"),
        ]);
        let t = DestTemplate::parse("/dev/serial/{ID_SERIAL}").unwrap();
        assert_eq!(t.render(&d).unwrap(), "/dev/serial/FTDI_FT232R_A10K");
        let t = DestTemplate::parse("/dev/{DEVNAME}").unwrap();
        assert_eq!(t.render(&d).unwrap(), "/dev/ttyUSB0");
        assert_eq!(DestTemplate::default().render(&d).unwrap(), "/dev/ttyUSB0");
        let t = DestTemplate::parse("/dev/by-path/{ID_PATH}-{devname}").unwrap();
        assert_eq!(
            t.render(&d).unwrap(),
            "/dev/by-path/pci-0000:00:14.0-usb-0:2:1.0-ttyUSB0"
        );
        assert_eq!(t.keys().collect::<Vec<_>>(), ["ID_PATH", "devname"]);
        let t = DestTemplate::parse("/dev/x/{ID_MODEL}").unwrap();
        assert_eq!(t.render(&d), None, "a missing property renders nothing");
        assert_eq!(
            DestTemplate::parse("/dev/fixed")
                .unwrap()
                .render(&d)
                .unwrap(),
            "/dev/fixed"
        );
    }

    #[test]
    fn refuses_bad_placeholders() {
        for bad in [
            "/dev/{",
            "/dev/}",
            "/dev/{a{b}}",
            "/dev/{}",
            "/dev/{id_serial}",
            "/dev/{A B}",
        ] {
            assert!(DestTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(DestTemplate::parse("/dev/{devname}").unwrap().is_default());
    }

    #[test]
    fn text_without_braces_renders_to_itself() {
        for s in ["", "/dev/x", "/dev/a b/c:d", "relative"] {
            assert_eq!(
                DestTemplate::parse(s)
                    .unwrap()
                    .render_with(|_| None)
                    .as_deref(),
                Some(s)
            );
        }
    }
}
