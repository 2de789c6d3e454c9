//! Real containers of real runtimes (LXC, runc) for the integration tests.
//!
//! Every container has a unique name ([`crate::unique`]), lives in private
//! temp directories (LXC's lxcpath, runc's bundle and state root), and is
//! stopped and destroyed on drop, also when the test panics. A missing tool
//! fails the test with a message naming it: these tests never skip.
//!
//! This host mounts cgroup2 at `/sys/fs/cgroup/unified` beside v1
//! controllers, and LXC and runc pick v1 or v2 by looking at
//! `/sys/fs/cgroup`. So every runtime command that creates or joins cgroups
//! runs in a private mount namespace with cgroup2 mounted on
//! `/sys/fs/cgroup` ([`in_cgroup2_ns`]). That is the same hierarchy, so the
//! containers' cgroups show up on the host under the cgroup2 mount.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{cgroup_mount, unique};

/// The wrapper script: a private mount namespace with cgroup2 on `/sys/fs/cgroup`.
const CGROUP2_NS: &str = r#"mount -t cgroup2 none /sys/fs/cgroup && exec "$@""#;

/// `args` run inside a private mount namespace where `/sys/fs/cgroup` is
/// cgroup2 (`unshare -m --propagation private sh -c 'mount … && exec "$@"'`).
pub fn in_cgroup2_ns<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    require_tool("unshare", "util-linux");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        CGROUP2_NS,
        "sh",
    ])
    .args(args);
    cmd
}

/// Fails the test unless `tool` is on PATH (never skips).
#[track_caller]
pub fn require_tool(tool: &str, package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(d.join(tool))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    });
    assert!(
        found,
        "{tool} is not installed (Debian package {package}): these tests need it and do not skip"
    );
}

/// Runs `cmd`, panicking with its output unless it succeeds.
#[track_caller]
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills every process in `dir` and its sub-cgroups and removes them
/// (children first). Quietly does nothing when `dir` is gone.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let gone = crate::engines::poll(Duration::from_secs(2), || {
        (fs::remove_dir(dir).is_ok() || !dir.exists()).then_some(())
    });
    if gone.is_none() {
        eprintln!("warning: could not remove cgroup {}", dir.display());
    }
}

/// The cgroup2 path (`0::/…`) of a process, from `/proc/PID/cgroup`.
pub fn cgroup_path_of(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    ctdev::cgroup::unified_path_from_proc_cgroup(&text)
}

/// A running busybox LXC container in a private lxcpath.
///
/// Its config is the busybox template's, with no network
/// (`lxc.net.0.type = empty`), no AppArmor, and the distribution's
/// `common.conf` included, so LXC applies its usual cgroup2 device rules
/// (`deny a`, `c *:* m`, `b *:* m`, the standard char devices). LXC 5 puts
/// the container in `lxc.payload.NAME` (init in it, `lxc-attach`ed
/// processes in `lxc.payload.NAME/.lxc`) and attaches its own
/// `cgroup_device` program there (legacy `BPF_PROG_ATTACH` with
/// `BPF_F_ALLOW_MULTI`, an unnamed GPL program compiled from the allow list).
pub struct LxcContainer {
    /// Container name (unique).
    pub name: String,
    /// The private lxcpath (`-P`).
    pub lxcpath: PathBuf,
    payload: Option<PathBuf>,
    init: i32,
}

impl LxcContainer {
    /// Creates (`lxc-create -t busybox`) and starts (`lxc-start -d`) a container.
    pub fn start(name: &str) -> LxcContainer {
        for tool in [
            "lxc-create",
            "lxc-start",
            "lxc-stop",
            "lxc-destroy",
            "lxc-attach",
            "lxc-info",
        ] {
            require_tool(tool, "lxc");
        }
        require_tool("busybox", "busybox-static");
        let name = unique(name);
        let lxcpath = std::env::temp_dir().join(format!("{name}-lxcpath"));
        fs::create_dir(&lxcpath).expect("create lxcpath");
        // From here on, drop cleans up whatever exists.
        let mut c = LxcContainer {
            name,
            lxcpath,
            payload: None,
            init: 0,
        };
        run_ok(
            Command::new("lxc-create")
                .arg("-P")
                .arg(&c.lxcpath)
                .args(["-n", &c.name, "-t", "busybox"]),
            "lxc-create",
        );
        let config = c.config_path();
        let text = fs::read_to_string(&config).expect("read LXC config");
        let mut edited: String = text
            .lines()
            .filter(|l| {
                let key = l.trim_start();
                !key.starts_with("lxc.net.") && !key.starts_with("lxc.apparmor.")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        edited.push_str("lxc.net.0.type = empty\n");
        edited.push_str("lxc.include = /usr/share/lxc/config/common.conf\n");
        fs::write(&config, edited).expect("write LXC config");

        let log = c.lxcpath.join(format!("{}.log", c.name));
        let mut start = in_cgroup2_ns(&["lxc-start"]);
        start
            .arg("-P")
            .arg(&c.lxcpath)
            .args(["-n", &c.name, "-d", "-l", "DEBUG", "-o"])
            .arg(&log);
        run_ok(&mut start, "lxc-start");
        let pid = crate::engines::poll(Duration::from_secs(10), || c.lxc_info_pid());
        let Some(pid) = pid else {
            panic!(
                "LXC container {} did not start; log:\n{}",
                c.name,
                fs::read_to_string(&log).unwrap_or_default()
            );
        };
        c.init = pid;
        let path = cgroup_path_of(pid).expect("cgroup of the container's init");
        c.payload = Some(cgroup_mount().join(path.trim_start_matches('/')));
        c
    }

    /// The container's config file.
    pub fn config_path(&self) -> PathBuf {
        self.lxcpath.join(&self.name).join("config")
    }

    /// The payload cgroup directory on the host (`…/lxc.payload.NAME`),
    /// found from the init's `/proc/PID/cgroup`.
    pub fn payload_cgroup(&self) -> &Path {
        self.payload.as_deref().expect("container started")
    }

    /// The container's init pid (host pid namespace), as `lxc-info` gave it.
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    fn lxc_info_pid(&self) -> Option<i32> {
        let out = Command::new("lxc-info")
            .arg("-P")
            .arg(&self.lxcpath)
            .args(["-n", &self.name, "-p", "-H"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// Runs `cmd` inside the container (`lxc-attach`); the process joins
    /// the container's cgroup (LXC 5: `lxc.payload.NAME/.lxc`), so the
    /// container's device programs judge it.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("lxc-attach")
            .arg("-P")
            .arg(&self.lxcpath)
            .args(["-n", &self.name, "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run lxc-attach")
    }
}

impl Drop for LxcContainer {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(
            Command::new("lxc-stop")
                .arg("-P")
                .arg(&self.lxcpath)
                .args(["-n", &self.name, "-k"]),
        );
        quiet(
            Command::new("lxc-destroy")
                .arg("-P")
                .arg(&self.lxcpath)
                .args(["-n", &self.name, "-f"]),
        );
        if let Some(p) = &self.payload {
            remove_cgroup_tree(p);
        }
        remove_cgroup_tree(&cgroup_mount().join(format!("lxc.monitor.{}", self.name)));
        let _ = fs::remove_dir_all(&self.lxcpath);
    }
}

/// A 64-hex-digit container ID, unique to this test run.
pub fn hex_id(seed: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    (0..4)
        .map(|i| {
            let mut h = state.build_hasher();
            h.write(seed.as_bytes());
            h.write_u32(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// A running runc container: busybox-static rootfs, `sleep 1000`.
///
/// Its cgroup is `/<unique>/docker/<64-hex id>` under the cgroup2 mount:
/// Docker's cgroupfs layout below a unique parent, so the resolvers can be
/// tested on a real container cgroup and the test can remove it all.
///
/// runc 1.1 attaches one unnamed `cgroup_device` program to that cgroup
/// (legacy `BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI`, `bpftool cgroup
/// show` lists it as `cgroup_device multi`), compiled from its emulated
/// rule list: the config's rules followed by runc's default devices.
pub struct RuncContainer {
    /// runc container id (unique).
    pub id: String,
    /// The OCI runtime running it.
    pub runtime: OciRuntime,
    /// The 64-hex-digit id used as the cgroup leaf (`…/docker/<hex_id>`).
    pub hex_id: String,
    base: PathBuf,
    parent_cgroup: PathBuf,
    init: i32,
}

/// An OCI runtime the harness can run containers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciRuntime {
    /// runc 1.1.
    Runc,
    /// crun 1.8 (with the memlock shim, see [`memlock_shim`]).
    Crun,
}

impl OciRuntime {
    /// The binary.
    pub fn binary(self) -> &'static str {
        match self {
            OciRuntime::Runc => "runc",
            OciRuntime::Crun => "crun",
        }
    }

    /// A command running the runtime in the cgroup2 namespace.
    fn command(self) -> Command {
        let mut cmd = in_cgroup2_ns(&[self.binary()]);
        if self == OciRuntime::Crun {
            cmd.env("LD_PRELOAD", memlock_shim());
        }
        cmd
    }
}

/// A tiny LD_PRELOAD library making `setrlimit(RLIMIT_MEMLOCK, …)` succeed:
/// crun 1.8.1 aborts when raising it fails, and root lacks
/// CAP_SYS_RESOURCE here (kernels ≥ 5.11 do not need the limit). Built once
/// per test process with the system C compiler.
pub fn memlock_shim() -> PathBuf {
    static SHIM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        require_tool("cc", "gcc");
        let dir = std::env::temp_dir().join(unique("memlock-shim"));
        fs::create_dir_all(&dir).expect("create shim dir");
        let src = dir.join("shim.c");
        fs::write(
            &src,
            "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <sys/resource.h>\n\
             int setrlimit(__rlimit_resource_t r, const struct rlimit *l) {\n\
             if (r == RLIMIT_MEMLOCK) return 0;\n\
             int (*real)(__rlimit_resource_t, const struct rlimit *) = \
             (int (*)(__rlimit_resource_t, const struct rlimit *))dlsym(RTLD_NEXT, \"setrlimit\");\n\
             return real(r, l);\n}\n",
        )
        .expect("write shim source");
        let so = dir.join("memlock-shim.so");
        run_ok(
            Command::new("cc")
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&so)
                .arg(&src)
                .arg("-ldl"),
            "build the memlock shim",
        );
        so
    })
    .clone()
}

impl RuncContainer {
    /// Builds a bundle and runs it detached (`runc run -d`) with the given
    /// OCI `linux.resources.devices` rules (runc's defaults when `None`).
    pub fn start(name: &str, devices_json: Option<serde_json::Value>) -> RuncContainer {
        Self::try_start(OciRuntime::Runc, name, devices_json).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`RuncContainer::start`] with runc or crun; `Err` with the
    /// runtime's message when it refuses to run the container.
    pub fn try_start(
        runtime: OciRuntime,
        name: &str,
        devices_json: Option<serde_json::Value>,
    ) -> Result<RuncContainer, String> {
        require_tool(runtime.binary(), runtime.binary());
        require_tool("busybox", "busybox-static");
        let id = unique(name);
        let base = std::env::temp_dir().join(format!("{id}-runc"));
        fs::create_dir(&base).expect("create runc dir");
        let mut c = RuncContainer {
            runtime,
            hex_id: hex_id(&id),
            parent_cgroup: cgroup_mount().join(&id),
            id,
            base,
            init: 0,
        };
        let rootfs = c.bundle().join("rootfs");
        for d in ["bin", "tmp", "proc", "dev", "sys"] {
            fs::create_dir_all(rootfs.join(d)).expect("create rootfs dirs");
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
        for tool in ["sh", "cat", "sleep", "ls", "mknod", "head", "echo", "rm"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool))
                .expect("busybox symlink");
        }
        run_ok(
            Command::new("runc").arg("spec").current_dir(c.bundle()),
            "runc spec",
        );
        let config_path = c.config_path();
        let mut config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&config_path).expect("read config.json"))
                .expect("config.json is JSON");
        config["process"]["args"] = serde_json::json!(["sleep", "1000"]);
        config["process"]["terminal"] = false.into();
        config["root"]["readonly"] = false.into();
        // Docker grants CAP_MKNOD by default; `runc spec` does not. The
        // tests make device nodes inside to probe the device programs.
        if let Some(caps) = config["process"]["capabilities"].as_object_mut() {
            for set in caps.values_mut() {
                if let Some(list) = set.as_array_mut() {
                    list.push("CAP_MKNOD".into());
                }
            }
        }
        config["linux"]["cgroupsPath"] = format!("/{}/docker/{}", c.id, c.hex_id).into();
        if let Some(devices) = devices_json {
            config["linux"]["resources"]["devices"] = devices;
        }
        fs::write(
            &config_path,
            serde_json::to_string_pretty(&config).expect("serialize config.json"),
        )
        .expect("write config.json");

        // Detached: its stdio must not be our pipes (we would wait for the
        // container to exit), so they go to files.
        let log = |n: &str| fs::File::create(c.base.join(n)).expect("create log file");
        let status = runtime
            .command()
            .arg("--root")
            .arg(c.state_root())
            .args(["run", "-d", "--bundle"])
            .arg(c.bundle())
            .arg(&c.id)
            .stdin(Stdio::null())
            .stdout(log("run.out"))
            .stderr(log("run.err"))
            .status()
            .expect("run the OCI runtime");
        if !status.success() {
            return Err(format!(
                "{} run failed ({status}): {}",
                runtime.binary(),
                fs::read_to_string(c.base.join("run.err")).unwrap_or_default()
            ));
        }
        let (file, key) = match runtime {
            OciRuntime::Runc => (c.state_json_path(), "init_process_pid"),
            OciRuntime::Crun => (c.state_root().join(&c.id).join("status"), "pid"),
        };
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&file).expect("read the runtime's state"))
                .expect("the runtime's state is JSON");
        c.init = state[key]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .expect("init pid in the runtime's state");
        Ok(c)
    }

    /// The container's root directory on the host (files made there show
    /// inside).
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }

    fn bundle(&self) -> PathBuf {
        self.base.join("bundle")
    }

    /// The bundle's `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.bundle().join("config.json")
    }

    /// runc's state root (`runc --root`) for this container.
    pub fn state_root(&self) -> PathBuf {
        self.base.join("state")
    }

    /// runc's state file for this container (`<root>/<id>/state.json`).
    pub fn state_json_path(&self) -> PathBuf {
        self.state_root().join(&self.id).join("state.json")
    }

    /// The container's cgroup directory on the host.
    pub fn cgroup_dir(&self) -> PathBuf {
        self.parent_cgroup.join("docker").join(&self.hex_id)
    }

    /// The container's init pid (host pid namespace), from state.json.
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// Runs `cmd` inside the container (`runc exec`, in the cgroup2 namespace
    /// wrapper: runc joins the container's cgroup by its `/sys/fs/cgroup` path).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.runtime
            .command()
            .arg("--root")
            .arg(self.state_root())
            .arg("exec")
            .arg(&self.id)
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run runc exec")
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let root = self.state_root();
        let _ = self
            .runtime
            .command()
            .arg("--root")
            .arg(&root)
            .args(["kill", &self.id, "KILL"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self
            .runtime
            .command()
            .arg("--root")
            .arg(&root)
            .args(["delete", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_cgroup_tree(&self.parent_cgroup);
        let _ = fs::remove_dir_all(&self.base);
    }
}
