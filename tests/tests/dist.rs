//! The Debian package (`cargo xtask dist`): installed with dpkg into a copy
//! of a clean debootstrap'd Debian root (no Rust toolchain there), `ctdev
//! demo` run from /usr/bin in that root, man pages and completions where the
//! shells look, then purged: nothing of it left, nothing left enforcing.
//!
//! `cargo xtask test` passes the package (`CTDEV_DEB`) and the clean root
//! (`CTDEV_CLEAN_ROOT`); the install transcript and the package size are
//! written to target/dist/install-transcript.txt.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ctdev_tests::*;

/// A copy of the clean root, removed on drop (its mounts live in private
/// mount namespaces of the commands, so none outlives them).
struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: run the package test through `cargo xtask test`")
    }))
}

/// Runs `script` with sh inside the root (chroot), in a private mount
/// namespace with /proc, /sys (cgroup2 and bpffs as on the host) and /dev.
fn in_root(root: &Path, script: &str) -> Run {
    let setup = "set -e; r=\"$1\"; shift; \
        mount -t proc proc \"$r/proc\"; \
        mount --rbind /sys \"$r/sys\"; \
        mount --rbind /dev \"$r/dev\"; \
        exec chroot \"$r\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh -c \"$1\"";
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", setup, "sh"])
        .arg(root)
        .arg(script)
        .output()
        .expect("run unshare/chroot")
        .into()
}

#[track_caller]
fn ok_in(root: &Path, script: &str, transcript: &mut String) -> String {
    let r = in_root(root, script);
    transcript.push_str(&format!("# {script}\n{}{}", r.stdout, r.stderr));
    assert_eq!(r.code, 0, "{script}: {r:?}");
    r.stdout
}

#[test]
fn package_installs_into_a_clean_root_runs_and_purges_clean() {
    let deb = env_path("CTDEV_DEB");
    let clean = env_path("CTDEV_CLEAN_ROOT");
    let root = Root(std::env::temp_dir().join(unique("dist-root")));
    let status = Command::new("cp")
        .arg("-a")
        .arg(&clean)
        .arg(&root.0)
        .status()
        .unwrap();
    assert!(status.success(), "copying the clean root");
    fs::copy(&deb, root.0.join("tmp/ctdev.deb")).unwrap();
    let size = fs::metadata(&deb).unwrap().len();
    let mut t = format!(
        "package {} ({size} bytes, {:.2} MiB)\n",
        deb.display(),
        size as f64 / 1048576.0
    );

    // A clean Debian root: no Rust toolchain on PATH, no ctdev.
    let r = in_root(
        &root.0,
        "command -v cargo || command -v rustc || command -v ctdev",
    );
    assert_ne!(r.code, 0, "the clean root has a toolchain or ctdev: {r:?}");

    ok_in(&root.0, "dpkg -i /tmp/ctdev.deb", &mut t);
    let files = ok_in(&root.0, "dpkg -L ctdev", &mut t);
    for path in [
        "/usr/bin/ctdev",
        "/usr/share/man/man1/ctdev.1.gz",
        "/usr/share/man/man1/ctdev-attach.1.gz",
        "/usr/share/man/man1/ctdev-status.1.gz",
        "/usr/share/man/man1/ctdev-daemon.1.gz",
        "/usr/share/bash-completion/completions/ctdev",
        "/usr/share/zsh/vendor-completions/_ctdev",
        "/usr/share/fish/vendor_completions.d/ctdev.fish",
        "/etc/ctdev/policy.example.toml",
        "/usr/share/doc/ctdev/README.md",
    ] {
        assert!(files.lines().any(|l| l == path), "{path} not in:\n{files}");
        assert!(root.0.join(&path[1..]).exists(), "{path} not installed");
    }
    let unit = files
        .lines()
        .find(|l| l.ends_with("/systemd/system/ctdev.service"))
        .unwrap_or_else(|| panic!("no unit in:\n{files}"));
    let unit_text = fs::read_to_string(root.0.join(&unit[1..])).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/bin/ctdev daemon") && unit_text.contains("Type=notify"),
        "{unit_text}"
    );
    let conffiles = ok_in(&root.0, "cat /var/lib/dpkg/info/ctdev.conffiles", &mut t);
    assert!(
        conffiles.contains("/etc/ctdev/policy.example.toml"),
        "{conffiles}"
    );
    // Installing enforces nothing: the unit is neither enabled nor started.
    assert!(
        !root
            .0
            .join("etc/systemd/system/multi-user.target.wants/ctdev.service")
            .exists(),
        "the package enabled the unit"
    );
    // Every man page opens as a man page; the bash completion registers.
    let man = ok_in(
        &root.0,
        "for f in /usr/share/man/man1/ctdev*.1.gz; do gzip -dc $f | head -1; done",
        &mut t,
    );
    assert!(
        man.lines()
            .all(|l| l.starts_with(".ie") || l.starts_with(".TH")),
        "{man}"
    );
    assert!(man.lines().count() >= 12, "{man}");
    let comp = ok_in(
        &root.0,
        "bash -c '. /usr/share/bash-completion/completions/ctdev && complete -p ctdev'",
        &mut t,
    );
    assert!(comp.contains("ctdev"), "{comp}");

    // The installed binary, from /usr/bin of the clean root.
    let v = ok_in(&root.0, "ctdev --version", &mut t);
    assert!(v.starts_with("ctdev "), "{v}");
    let demo = ok_in(&root.0, "ctdev demo", &mut t);
    assert!(demo.contains("demo OK"), "{demo}");
    let scratch = demo
        .lines()
        .find_map(|l| l.strip_prefix("scratch cgroup "))
        .and_then(|l| l.split_whitespace().next())
        .expect("demo names its scratch cgroup")
        .to_string();
    assert!(!Path::new(&scratch).exists(), "demo left {scratch}");
    let pins = demo
        .lines()
        .find_map(|l| {
            l.split_once("(pins in ")
                .map(|(_, p)| p.trim_end_matches(')'))
        })
        .expect("demo names its pin root")
        .to_string();
    assert!(!Path::new(&pins).exists(), "demo left its pins {pins}");

    // Purge: no file of the package left, /etc/ctdev gone, nothing enforcing.
    ok_in(&root.0, "dpkg --purge ctdev", &mut t);
    for path in files.lines().filter(|l| l.starts_with('/') && l.len() > 1) {
        let p = root.0.join(&path[1..]);
        assert!(!p.is_file() && !p.is_symlink(), "{path} left after purge");
    }
    assert!(
        !root.0.join("etc/ctdev").exists(),
        "/etc/ctdev left after purge"
    );
    let r = in_root(&root.0, "command -v ctdev");
    assert_ne!(r.code, 0, "ctdev still on PATH: {r:?}");

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dist/install-transcript.txt");
    let _ = fs::create_dir_all(out.parent().unwrap());
    fs::write(&out, &t).unwrap();
    eprintln!("{t}");
}
