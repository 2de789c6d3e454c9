//! A real LXC container (busybox template, no network, private lxcpath),
//! started in a private mount namespace with cgroup2 at /sys/fs/cgroup so
//! LXC uses the unified hierarchy; stopped and destroyed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::oci::in_cgroup2_ns;

pub struct Lxc {
    pub lxcpath: PathBuf,
    pub name: String,
    started: bool,
}

fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lxc {
    /// lxc-create + lxc-start + lxc-wait RUNNING.
    pub fn start(dir: &Path, name: &str) -> Result<Lxc> {
        let lxcpath = dir.join("lxc");
        std::fs::create_dir_all(&lxcpath)?;
        let cfg = dir.join("lxc.conf");
        std::fs::write(&cfg, "lxc.net.0.type = empty\n")?;
        let mut lxc = Lxc {
            lxcpath,
            name: name.to_string(),
            started: false,
        };
        let p = lxc.lxcpath.to_string_lossy().into_owned();
        let mut create = Command::new("lxc-create");
        create
            .args(["-P", &p, "-n", name, "-t", "busybox", "-f"])
            .arg(&cfg);
        run(create, "lxc-create -t busybox")?;
        lxc.started = true;
        run(
            in_cgroup2_ns(&["lxc-start", "-P", &p, "-n", name, "-d"]),
            "lxc-start",
        )?;
        let mut wait = Command::new("lxc-wait");
        wait.args(["-P", &p, "-n", name, "-s", "RUNNING", "-t", "20"]);
        run(wait, "lxc-wait RUNNING")?;
        Ok(lxc)
    }

    /// `lxc-device -P PATH -n NAME VERB DEVICE`.
    pub fn device(&self, verb: &str, device: &Path) -> Command {
        let mut c = Command::new("lxc-device");
        c.arg("-P")
            .arg(&self.lxcpath)
            .args(["-n", &self.name, verb])
            .arg(device);
        c
    }

    /// The container's init pid.
    pub fn init_pid(&self) -> Result<i32> {
        let mut c = Command::new("lxc-info");
        c.arg("-P")
            .arg(&self.lxcpath)
            .args(["-n", &self.name, "-p", "-H"]);
        let out = run(c, "lxc-info -p")?;
        out.trim()
            .parse()
            .with_context(|| format!("lxc-info -p printed {out:?}"))
    }
}

impl Drop for Lxc {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        let p = self.lxcpath.to_string_lossy().into_owned();
        let _ = run(
            in_cgroup2_ns(&["lxc-stop", "-P", &p, "-n", &self.name, "-k"]),
            "lxc-stop",
        );
        let mut d = Command::new("lxc-destroy");
        d.args(["-P", &p, "-n", &self.name, "-f"]);
        let _ = run(d, "lxc-destroy");
    }
}
