//! Real runc and crun containers with N device rules in their config.json
//! (`linux.resources.devices`): the runtime compiles them into its linear
//! cgroup/dev program and attaches it to the container's cgroup.
//!
//! Both runtimes pick cgroup v1 or v2 by looking at /sys/fs/cgroup, so every
//! call runs in a private mount namespace with cgroup2 mounted there (the
//! same hierarchy the host has at its cgroup2 mount). crun 1.8 aborts when
//! raising RLIMIT_MEMLOCK fails (root here lacks CAP_SYS_RESOURCE); a tiny
//! LD_PRELOAD shim, compiled at run time with `cc`, makes that call succeed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Which runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Crun,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        }
    }
}

/// `unshare -m --propagation private sh -c 'mount -t cgroup2 none /sys/fs/cgroup && exec "$@"' sh CMD…`
pub fn in_cgroup2_ns(cmd: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"")
        .arg("sh")
        .args(cmd);
    c
}

/// Runs a runtime command. Its stderr goes to `log`, not a pipe: a detached
/// container inherits the runtime's stdio and would hold a pipe open forever.
fn checked(mut cmd: Command, what: &str, log: &Path) -> Result<()> {
    let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        let err = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{what} failed ({status}): {}", err.trim());
    }
    Ok(())
}

/// Shared state: a read-only busybox rootfs, state dirs, the crun shim.
pub struct Oci {
    pub dir: PathBuf,
    pub shim: Option<PathBuf>,
    /// Why crun cannot be measured, when it cannot.
    pub shim_error: Option<String>,
}

const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
/* crun raises RLIMIT_MEMLOCK (8) before loading its program; root without
   CAP_SYS_RESOURCE gets EPERM and crun aborts. Pretend it worked. */
int setrlimit(int resource, const void *rlim) {
    if (resource == 8) return 0;
    int (*real)(int, const void *) = (int (*)(int, const void *))dlsym(RTLD_NEXT, "setrlimit");
    return real(resource, rlim);
}
"#;

impl Oci {
    /// Prepares `dir` (which the caller removes): rootfs with busybox, shim.
    pub fn prepare(dir: &Path) -> Result<Oci> {
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .context("copy /bin/busybox (busybox-static) into the rootfs")?;
        let src = dir.join("memlock-shim.c");
        std::fs::write(&src, SHIM_C)?;
        let so = dir.join("memlock-shim.so");
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-ldl")
            .output();
        let (shim, shim_error) = match built {
            Ok(o) if o.status.success() => (Some(so), None),
            Ok(o) => (
                None,
                Some(format!(
                    "cc could not build the setrlimit shim: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
            ),
            Err(e) => (None, Some(format!("no C compiler (cc) for the shim: {e}"))),
        };
        Ok(Oci {
            dir: dir.to_path_buf(),
            shim,
            shim_error,
        })
    }

    fn runtime_cmd(&self, rt: Runtime, args: &[&str]) -> Result<Command> {
        let state = self.dir.join(format!("{}-state", rt.name()));
        let state = state.to_string_lossy().into_owned();
        let mut argv = vec![rt.name(), "--root", &state];
        argv.extend_from_slice(args);
        let mut cmd = in_cgroup2_ns(&argv);
        if rt == Runtime::Crun {
            let shim = self
                .shim
                .as_ref()
                .with_context(|| self.shim_error.clone().unwrap_or_default())?;
            cmd.env("LD_PRELOAD", shim);
        }
        Ok(cmd)
    }

    /// Starts a container whose config allows `devices` (on top of default
    /// deny) in cgroup `cgroup_path` (a path inside the hierarchy).
    pub fn start(
        &self,
        rt: Runtime,
        id: &str,
        cgroup_path: &str,
        devices: &[Value],
    ) -> Result<Container<'_>> {
        let bundle = self.dir.join(format!("bundle-{id}"));
        std::fs::create_dir_all(&bundle)?;
        let mut rules = vec![json!({"allow": false, "access": "rwm"})];
        rules.extend_from_slice(devices);
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/busybox", "sleep", "1000000"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": self.dir.join("rootfs"), "readonly": true},
            "hostname": id,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
            ],
            "linux": {
                "cgroupsPath": cgroup_path,
                "resources": {"devices": rules},
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                    {"type": "mount"}, {"type": "network"}
                ]
            }
        });
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)?;
        let b = bundle.to_string_lossy().into_owned();
        let cmd = self.runtime_cmd(rt, &["run", "-d", "--bundle", &b, id])?;
        let container = Container {
            oci: self,
            rt,
            id: id.to_string(),
            bundle,
        };
        checked(
            cmd,
            &format!("{} run {id}", rt.name()),
            &self.dir.join("run.log"),
        )?;
        Ok(container)
    }
}

/// A running container; deleted (`delete -f`) on drop.
pub struct Container<'a> {
    oci: &'a Oci,
    rt: Runtime,
    id: String,
    bundle: PathBuf,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Ok(cmd) = self.oci.runtime_cmd(self.rt, &["delete", "-f", &self.id]) {
            let _ = checked(cmd, "delete", &self.oci.dir.join("delete.log"));
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// An OCI device rule `c MAJOR:MINOR rwm`.
pub fn char_rule(major: u32, minor: u32) -> Value {
    json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"})
}

/// First line of `PROGRAM --version`.
pub fn version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}
