//! Device names for rules, from `/sys/dev/{char,block}/MAJOR:MINOR/uevent`.

use std::fs;
use std::path::Path;

use crate::rule::{DevNumber, DeviceType};

/// `/dev/...` names of the devices a rule covers that exist on this host.
/// Exact numbers give at most one name; `MAJOR:*` lists every existing
/// minor; a wildcard major lists nothing (it stands for every device).
pub(crate) fn device_names(
    sys_dev: &Path,
    dev_type: DeviceType,
    major: DevNumber,
    minor: DevNumber,
) -> Vec<String> {
    let sub = match dev_type {
        DeviceType::Block => "block",
        DeviceType::Char => "char",
        DeviceType::All => return Vec::new(),
    };
    let dir = sys_dev.join(sub);
    match (major, minor) {
        (DevNumber::Exact(ma), DevNumber::Exact(mi)) => name_of(&dir.join(format!("{ma}:{mi}")))
            .into_iter()
            .collect(),
        (DevNumber::Exact(ma), DevNumber::Any) => {
            let prefix = format!("{ma}:");
            let mut names: Vec<String> = fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .filter_map(|e| name_of(&e.path()))
                .collect();
            names.sort();
            names
        }
        _ => Vec::new(),
    }
}

fn name_of(dev_dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dev_dir.join("uevent")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| format!("/dev/{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (sub, num, name) in [
            ("char", "1:3", "null"),
            ("char", "1:5", "zero"),
            ("block", "7:0", "loop0"),
        ] {
            let d = t.path().join(sub).join(num);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("uevent"), format!("MAJOR=1\nDEVNAME={name}\n")).unwrap();
        }
        t
    }

    #[test]
    fn resolves_exact_and_minor_wildcards() {
        let t = fixture();
        let p = t.path();
        assert_eq!(
            device_names(
                p,
                DeviceType::Char,
                DevNumber::Exact(1),
                DevNumber::Exact(3)
            ),
            ["/dev/null"]
        );
        assert_eq!(
            device_names(p, DeviceType::Char, DevNumber::Exact(1), DevNumber::Any),
            ["/dev/null", "/dev/zero"]
        );
        assert_eq!(
            device_names(
                p,
                DeviceType::Block,
                DevNumber::Exact(7),
                DevNumber::Exact(0)
            ),
            ["/dev/loop0"]
        );
        assert!(device_names(p, DeviceType::Char, DevNumber::Any, DevNumber::Any).is_empty());
        assert!(device_names(
            p,
            DeviceType::Char,
            DevNumber::Exact(9),
            DevNumber::Exact(9)
        )
        .is_empty());
    }

    #[test]
    fn real_sysfs_knows_dev_null() {
        assert_eq!(
            device_names(
                Path::new("/sys/dev"),
                DeviceType::Char,
                DevNumber::Exact(1),
                DevNumber::Exact(3)
            ),
            ["/dev/null"]
        );
    }
}
