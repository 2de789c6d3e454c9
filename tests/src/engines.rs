//! Real Docker and Podman engines for the integration tests.
//!
//! Both engines pick cgroup v1 or v2 by looking at `/sys/fs/cgroup`, which
//! on this host is v1 with cgroup2 at `/sys/fs/cgroup/unified`. So each
//! engine runs inside a private mount namespace where cgroup2 is mounted on
//! `/sys/fs/cgroup` ([`Namespace`]: a long-lived holder process), and every
//! command that talks to the engine enters that same namespace (`nsenter
//! -m`). It is the same hierarchy: the containers' cgroups show up on the
//! host under the cgroup2 mount, where ctdev (run on the host) finds them.
//!
//! Everything is private: data roots, run roots, sockets, pid files, the
//! cgroup parent of the containers (below the test's own parent cgroup), and
//! the image (a busybox-static rootfs tarball imported with `docker import`
//! / `podman import`: there is no image registry here). Drop stops the
//! engine, removes its containers, kills what is left in their cgroups and
//! deletes its directories, also when the test panics. An engine that does
//! not start fails the test loudly.
//!
//! One harness for every test that runs Podman ([`PodmanOptions`]): with
//! runc (default) or crun (through a wrapper preloading the memlock shim),
//! optionally with a private runtime state root passed as
//! `--runtime-flag root=DIR`, and optionally with a private CDI spec
//! directory bind-mounted on `/etc/cdi` in the namespace (tests/tests/cdi.rs).
//! Docker and Podman share their start-up and clean-up (`Private`) and
//! everything but their CLI, `run` and cgroup layout ([`Engine`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::runtimes::{memlock_shim, remove_cgroup_tree, require_tool, OciRuntime};
use crate::{cgroup_mount, unique};

/// The Docker CLI of the `docker.io` package (matches dockerd 20.10; a
/// newer client elsewhere on PATH may not).
pub const DOCKER_CLI: &str = "/usr/bin/docker";

/// Polls `f` every 20 ms for up to `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A private mount namespace with cgroup2 on `/sys/fs/cgroup`, kept alive
/// by a holder process (`sleep`) until drop.
pub struct Namespace {
    holder: Child,
}

impl Namespace {
    /// Starts the holder and waits until the cgroup2 mount is in place.
    pub fn new() -> Self {
        Self::with_binds(&[])
    }

    /// [`Namespace::new`], with each (source, mount point) of `binds`
    /// bind-mounted in the namespace too.
    pub fn with_binds(binds: &[(PathBuf, PathBuf)]) -> Self {
        require_tool("unshare", "util-linux");
        require_tool("nsenter", "util-linux");
        let mut script = String::from("mount -t cgroup2 none /sys/fs/cgroup");
        for (src, at) in binds {
            script += &format!(" && mount --bind '{}' '{}'", src.display(), at.display());
        }
        script += " && exec sleep 1000000";
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the namespace holder (unshare)");
        let pid = holder.id();
        // `exec sleep` runs only after the mount succeeded.
        let ok = poll(Duration::from_secs(10), || {
            if let Ok(Some(_)) = holder.try_wait() {
                return Some(false);
            }
            (fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim() == "sleep")
                .then_some(true)
        });
        if ok != Some(true) {
            let _ = holder.kill();
            let out = holder.wait_with_output().expect("wait for the holder");
            panic!(
                "cannot make a mount namespace with cgroup2 on /sys/fs/cgroup: {}",
                text(&out.stderr)
            );
        }
        Namespace { holder }
    }

    /// The holder's pid.
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// `program` run inside the namespace (`nsenter -t PID -m`). Its working
    /// directory is `/`: pass absolute paths.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid().to_string())
            .args(["-m", "--"])
            .arg(program);
        cmd
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Writes a busybox-static rootfs tarball (`/bin/busybox` and its applets as
/// symlinks, empty `/dev`, `/proc`, `/sys`, `/tmp`, `/etc`) to `dir/rootfs.tar`.
pub fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    require_tool("busybox", "busybox-static");
    require_tool("tar", "tar");
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        fs::create_dir_all(root.join(d)).expect("create rootfs dirs");
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for tool in [
        "sh", "cat", "sleep", "ls", "mknod", "head", "echo", "rm", "stat", "test", "wc", "[", "tr",
        "grep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool))
            .expect("busybox symlink");
    }
    let tar = dir.join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    tar
}

/// What the shared scenarios need from an engine. Everything but the CLI,
/// `run` and the cgroup layout is written once, here.
pub trait Engine {
    /// `docker` or `podman` (the TARGET prefix and the policy's runtime).
    fn kind(&self) -> &'static str;
    /// The engine's CLI with `args`, inside its namespace.
    fn cli(&self, args: &[&str]) -> Output;
    /// Starts a container running `sleep`; returns its full ID.
    fn run(&self, name: &str) -> String;
    /// The container's cgroup directory on the host.
    fn cgroup_dir(&self, id: &str) -> PathBuf;
    /// The `format` `attach --takeover` reports for the engine's rules
    /// (`runc-state` from runc's state.json, `oci` from crun's bundle).
    fn rule_format(&self) -> &'static str {
        "runc-state"
    }
    /// The CLI with `args`, required to succeed; returns stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.kind(),
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }
    /// Runs `cmd` inside the container (`docker exec` / `podman exec`).
    fn exec(&self, id: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", id];
        args.extend_from_slice(cmd);
        self.cli(&args)
    }
    /// `sh -c SCRIPT` inside the container.
    fn sh(&self, id: &str, script: &str) -> Output {
        self.exec(id, &["sh", "-c", script])
    }
    /// Restarts the container (stop, then start: a new cgroup).
    fn restart(&self, id: &str) {
        self.ok(&["restart", "-t", "0", id]);
    }
    /// `docker:ID` / `podman:ID`.
    fn target(&self, id: &str) -> String {
        format!("{}:{id}", self.kind())
    }
    /// The container's init pid (host pid namespace).
    fn init_pid(&self, id: &str) -> i32 {
        let out = self.ok(&["inspect", "--format", "{{.State.Pid}}", id]);
        out.trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or_else(|| panic!("no pid for container {id}: {out:?}"))
    }
}

/// One container of a private engine in a fresh [`crate::TestEnv`]: where
/// every engine test starts. Fields drop in order: the engine stops before
/// the environment is cleaned up.
pub struct OneContainer<E: Engine> {
    /// The engine, started inside the environment's cgroup parent.
    pub engine: E,
    /// The test's environment.
    pub env: crate::TestEnv,
    /// The container's full ID.
    pub id: String,
    /// The container's name.
    pub name: String,
}

impl<E: Engine> OneContainer<E> {
    /// A [`crate::TestEnv`] named `label`, the engine `start` makes inside
    /// its cgroup parent, and one container run by it.
    pub fn start(label: &str, start: impl FnOnce(&Path) -> E) -> Self {
        let env = crate::TestEnv::new(label);
        let engine = start(&inside(&env.cgroup_parent));
        let name = unique("c");
        let id = engine.run(&name);
        OneContainer {
            engine,
            env,
            id,
            name,
        }
    }

    /// `attach --takeover` finds the runtime's state file in `root` (which
    /// the runtime-root discovery lists) and reports it as its source.
    /// Returns the report.
    pub fn takeover_reads_state_in(&self, root: &Path) -> serde_json::Value {
        let state = root.join(&self.id).join("state.json");
        assert!(state.is_file(), "{}", state.display());
        let roots = ctdev::runtimes::discover::runc_state_roots();
        assert!(roots.iter().any(|r| r == root), "{roots:?}");
        let target = self.engine.target(&self.id);
        let out = self.env.ok(&["--json", "attach", &target, "--takeover"]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["source"], state.to_str().unwrap(), "{report}");
        report
    }
}

/// The engine tests every engine runs, one `#[test]` per row
/// `NAME("label") => SCENARIO;` (or `=> SCENARIO(restarts N);` for
/// [`daemon_takes_over_hotplugs_and_survives_restart`]): a fresh
/// [`OneContainer`] of the engine `START` makes, then the shared scenario of
/// this module on it.
#[macro_export]
macro_rules! engine_tests {
    ($start:expr; $($test:ident($label:literal) => $scenario:ident $((restarts $n:expr))?;)+) => {$(
        #[test]
        fn $test() {
            let one = $crate::engines::OneContainer::start($label, $start);
            $crate::engines::$scenario(&one.env, &one.engine, &one.id $(, &one.name, $n)?);
        }
    )+};
}

/// Whether `dev` is a device node inside the container and opens O_RDWR.
pub fn opens_in(engine: &dyn Engine, id: &str, dev: &str) -> bool {
    let o = engine.exec(
        id,
        &[
            "/bin/sh",
            "-c",
            &format!("[ -c {dev} -o -b {dev} ] && exec 3<>{dev} && echo opened"),
        ],
    );
    text(&o.stdout).contains("opened")
}

/// Why an open inside failed (its stderr), or `None` if it opened.
pub fn open_error_in(engine: &dyn Engine, id: &str, dev: &str) -> Option<String> {
    let o = engine.exec(
        id,
        &["/bin/sh", "-c", &format!("exec 3<>{dev} && echo opened")],
    );
    if text(&o.stdout).contains("opened") {
        None
    } else {
        Some(text(&o.stderr))
    }
}

// ---- what every engine has ---------------------------------------------------

/// The start-up and clean-up every engine shares: a namespace, a private
/// base directory, the containers' cgroup parent (below the test's own
/// parent) and the name of the busybox image. Drop (after the engine's own
/// Drop stopped it) removes the cgroup tree, kills leftover processes that
/// name the base directory (a containerd shim, a conmon) and deletes it;
/// mounts live in the namespace and go with it.
struct Private {
    ns: Namespace,
    base: PathBuf,
    cgroup_parent: PathBuf,
    image: String,
}

impl Private {
    /// `kind` names the base directory and image; containers go under
    /// `parent/leaf` (`parent` a cgroup path inside the hierarchy);
    /// `binds` are (directory under the base, mount point) pairs
    /// bind-mounted in the namespace.
    fn new(kind: &str, parent: &Path, leaf: &str, binds: &[(&str, &str)]) -> Private {
        let name = unique(kind);
        let base = std::env::temp_dir().join(&name);
        fs::create_dir(&base).expect("create the engine's base dir");
        let binds: Vec<(PathBuf, PathBuf)> = binds
            .iter()
            .map(|(dir, at)| {
                let src = base.join(dir);
                fs::create_dir_all(&src).expect("create a bind source");
                (src, PathBuf::from(at))
            })
            .collect();
        Private {
            ns: Namespace::with_binds(&binds),
            cgroup_parent: Path::new("/")
                .join(parent.strip_prefix("/").unwrap_or(parent))
                .join(leaf),
            image: format!("localhost/{name}:latest"),
            base,
        }
    }

    /// Imports the busybox rootfs as the image with the engine's CLI.
    fn import_image(&self, engine: &dyn Engine) {
        let tar = busybox_rootfs_tar(&self.base);
        engine.ok(&["import", tar.to_str().expect("utf-8 path"), &self.image]);
    }

    /// The containers' cgroup parent on the host.
    fn cgroup_parent_dir(&self) -> PathBuf {
        cgroup_mount().join(self.cgroup_parent.strip_prefix("/").expect("absolute"))
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.cgroup_parent_dir());
        kill_namespace_users(&self.base);
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Kills processes left running from `base` (a containerd shim or conmon
/// whose command line names it).
fn kill_namespace_users(base: &Path) {
    let needle = base.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = text(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && pid != std::process::id() as i32 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

// ---- Docker -----------------------------------------------------------------

/// A private dockerd (with its own containerd and runc) in a cgroup2
/// namespace. Containers land in `<cgroup_parent>/docker/<id>`.
pub struct Docker {
    daemon: Option<Child>,
    p: Private,
}

impl Docker {
    /// Starts dockerd with containers under `parent` (a cgroup path inside
    /// the hierarchy, e.g. the test's own parent cgroup) and imports the
    /// busybox image.
    pub fn start(parent: &Path) -> Docker {
        require_tool("dockerd", "docker.io");
        assert!(
            Path::new(DOCKER_CLI).is_file(),
            "{DOCKER_CLI} is missing (Debian package docker.io)"
        );
        let mut d = Docker {
            daemon: None,
            p: Private::new("docker", parent, "docker", &[]),
        };
        let log = fs::File::create(d.p.base.join("dockerd.log")).expect("dockerd log");
        let mut cmd = d.p.ns.command("dockerd");
        let dockerd = cmd
            .arg("--data-root")
            .arg(d.p.base.join("data"))
            .arg("--exec-root")
            .arg(d.exec_root())
            .arg("-H")
            .arg(format!("unix://{}", d.socket().display()))
            .arg("--pidfile")
            .arg(d.p.base.join("docker.pid"))
            .arg("--cgroup-parent")
            .arg(&d.p.cgroup_parent)
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ]);
        d.daemon = Some(crate::spawn_logged(dockerd, log, "dockerd"));
        let up = poll(Duration::from_secs(60), || {
            if let Some(Ok(Some(_))) = d.daemon.as_mut().map(|c| c.try_wait()) {
                return Some(false);
            }
            d.cli(&["version"]).status.success().then_some(true)
        });
        assert_eq!(
            up,
            Some(true),
            "dockerd did not start; log:\n{}",
            fs::read_to_string(d.p.base.join("dockerd.log")).unwrap_or_default()
        );
        d.p.import_image(&d);
        d
    }

    /// dockerd's `--exec-root`.
    pub fn exec_root(&self) -> PathBuf {
        self.p.base.join("exec")
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.p.base.join("docker.sock")
    }

    /// Where Docker's runc keeps the container's state.
    pub fn runc_root(&self) -> PathBuf {
        self.exec_root().join("runtime-runc/moby")
    }
}

impl Engine for Docker {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.p
            .ns
            .command(DOCKER_CLI)
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    fn run(&self, name: &str) -> String {
        let out = self.ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            &self.p.image,
            "sleep",
            "100000",
        ]);
        out.trim().to_string()
    }

    fn cgroup_dir(&self, id: &str) -> PathBuf {
        self.p.cgroup_parent_dir().join(id)
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let ids = text(&self.cli(&["ps", "-aq"]).stdout);
            for id in ids.split_whitespace() {
                let _ = self.cli(&["rm", "-f", id]);
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let stopped = poll(Duration::from_secs(20), || {
                child.try_wait().ok().flatten().map(|_| ())
            });
            if stopped.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // `p` cleans up after this.
    }
}

// ---- Podman -----------------------------------------------------------------

/// How a [`Podman`] is set up beyond the defaults (runc, the runtime's own
/// state root, no CDI directory).
#[derive(Debug, Clone, Copy)]
pub struct PodmanOptions {
    /// The OCI runtime conmon runs (crun through a wrapper that preloads
    /// the memlock shim, see [`memlock_shim`]).
    pub runtime: OciRuntime,
    /// A private runtime state root, given as `--runtime-flag root=DIR`
    /// (conmon passes it on as `--runtime-arg --root=DIR`). Podman 4.3's
    /// exit command drops runtime flags, so `podman restart` fails with it
    /// ("container already exists"): only for tests that do not restart.
    pub runtime_root: bool,
    /// A private CDI spec directory ([`Podman::cdi_dir`]) that Podman reads
    /// as `/etc/cdi` (Podman 4.3 reads specs only from `/etc/cdi` and
    /// `/var/run/cdi`; the host's `/etc/cdi` is only created, empty, as the
    /// mount point, never written).
    pub cdi: bool,
}

impl Default for PodmanOptions {
    fn default() -> Self {
        PodmanOptions {
            runtime: OciRuntime::Runc,
            runtime_root: false,
            cdi: false,
        }
    }
}

/// Private Podman storage in a cgroup2 namespace (cgroupfs manager, file
/// events). Containers land in `<cgroup_parent>/libpod-<id>`.
pub struct Podman {
    options: PodmanOptions,
    /// The runtime binary given to `--runtime`.
    runtime: PathBuf,
    p: Private,
}

impl Podman {
    /// Private storage with runc, containers under `parent` (a cgroup path
    /// inside the hierarchy), the busybox image imported.
    pub fn start(parent: &Path) -> Podman {
        Self::start_with(parent, PodmanOptions::default())
    }

    /// [`Podman::start`] set up as `options` say.
    pub fn start_with(parent: &Path, options: PodmanOptions) -> Podman {
        require_tool("podman", "podman");
        require_tool("conmon", "conmon");
        require_tool(options.runtime.binary(), options.runtime.binary());
        let binds: &[(&str, &str)] = if options.cdi {
            fs::create_dir_all("/etc/cdi").expect("create /etc/cdi (mount point)");
            &[("cdi", "/etc/cdi")]
        } else {
            &[]
        };
        let p = Private::new("podman", parent, "libpod_parent", binds);
        let runtime = match options.runtime {
            OciRuntime::Runc => PathBuf::from("runc"),
            OciRuntime::Crun => {
                // Named `crun` so that Podman treats it as crun.
                let bin = p.base.join("bin");
                fs::create_dir_all(&bin).expect("create the wrapper dir");
                let wrapper = bin.join("crun");
                fs::write(
                    &wrapper,
                    format!(
                        "#!/bin/sh\nLD_PRELOAD='{}' exec '{}' \"$@\"\n",
                        memlock_shim().display(),
                        tool_path("crun").display()
                    ),
                )
                .expect("write the crun wrapper");
                fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
                    .expect("make the crun wrapper executable");
                wrapper
            }
        };
        let pod = Podman {
            options,
            runtime,
            p,
        };
        pod.p.import_image(&pod);
        pod
    }

    /// The private CDI spec directory (Podman sees it as `/etc/cdi`).
    pub fn cdi_dir(&self) -> PathBuf {
        assert!(self.options.cdi, "Podman started without a CDI directory");
        self.p.base.join("cdi")
    }

    /// The private runtime state root (with `runtime_root`).
    pub fn runtime_root(&self) -> PathBuf {
        assert!(
            self.options.runtime_root,
            "Podman started without a runtime root"
        );
        self.p.base.join("oci-root")
    }

    /// `podman run -d` of `sleep` named `name` with `extra` options (e.g.
    /// `--device vendor.com/class=name`); the container ID.
    pub fn run_with(&self, name: &str, extra: &[&str]) -> String {
        let parent = self.p.cgroup_parent.display().to_string();
        let mut args = vec![
            "run",
            "-d",
            // No pids controller in cgroup2 here; raising rlimits needs
            // CAP_SYS_RESOURCE, which root lacks on this host.
            "--pids-limit=-1",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            "none",
            "--cgroup-parent",
            &parent,
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&self.p.image, "sleep", "100000"]);
        self.ok(&args).trim().to_string()
    }
}

impl Engine for Podman {
    fn kind(&self) -> &'static str {
        "podman"
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.p.ns.command("podman");
        cmd.arg("--root")
            .arg(self.p.base.join("root"))
            .arg("--runroot")
            .arg(self.p.base.join("runroot"))
            .arg("--tmpdir")
            .arg(self.p.base.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--runtime")
            .arg(&self.runtime);
        if self.options.runtime_root {
            cmd.arg("--runtime-flag")
                .arg(format!("root={}", self.p.base.join("oci-root").display()));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    fn run(&self, name: &str) -> String {
        self.run_with(name, &[])
    }

    fn cgroup_dir(&self, id: &str) -> PathBuf {
        self.p.cgroup_parent_dir().join(format!("libpod-{id}"))
    }

    fn rule_format(&self) -> &'static str {
        match self.options.runtime {
            OciRuntime::Runc => "runc-state",
            OciRuntime::Crun => "oci",
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cli(&["rm", "-f", "-a", "-t", "0"]);
        // `p` cleans up after this.
    }
}

/// The absolute path of `tool` on PATH.
fn tool_path(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH"))
}

// ---- scenarios shared by tests/tests/docker.rs and podman.rs ---------------

/// The cgroup path of `dir` inside the hierarchy (`/a/b`).
pub fn inside(dir: &Path) -> PathBuf {
    Path::new("/").join(
        dir.strip_prefix(cgroup_mount())
            .expect("a directory under the cgroup2 mount"),
    )
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).expect("ctdev prints JSON")
}

/// The `list --json` entry of the container whose cgroup is `dir`.
pub fn listed(env: &crate::TestEnv, dir: &Path) -> Option<serde_json::Value> {
    env.list_json()["containers"]
        .as_array()?
        .iter()
        .find(|c| c["cgroup_dir"].as_str() == dir.to_str())
        .cloned()
}

/// `ctdev attach ENGINE:ID --takeover` without flags imports the engine's
/// rules from runc's state, detaches the engine's program, and keeps the
/// default devices working; `ctdev add` of a char device, a block device and
/// a directory of nodes work inside, and `ctdev del` takes them away.
pub fn takeover_add_del(env: &crate::TestEnv, engine: &dyn Engine, id: &str) {
    use crate::daemon::HotLoop;
    let target = engine.target(id);
    let cg = engine.cgroup_dir(id);
    assert!(cg.is_dir(), "the container's cgroup {}", cg.display());
    assert!(
        opens_in(engine, id, "/dev/null"),
        "the engine allows /dev/null"
    );
    let before = listed(env, &cg);
    assert!(before.is_none(), "not under policy yet");

    let report = json(&env.ok(&["--json", "attach", &target, "--takeover"]));
    assert_eq!(report["format"], engine.rule_format(), "{report}");
    assert_eq!(report["detached"].as_array().unwrap().len(), 1, "{report}");
    let imported: Vec<&str> = report["imported"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for rule in ["c 1:3 rwm", "c 1:5 rwm", "c 136:* rwm"] {
        assert!(imported.contains(&rule), "{rule} in {imported:?}");
    }
    let view = listed(env, &cg).expect("under policy");
    assert_eq!(view["other_programs"], serde_json::json!([]), "{view}");
    assert_eq!(env.list_json()["problems"], serde_json::json!([]));
    for dev in ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"] {
        assert!(
            opens_in(engine, id, dev),
            "{dev} still opens after takeover"
        );
    }

    // A char device.
    env.ok(&["add", &target, "/dev/loop-control"]);
    assert!(
        opens_in(engine, id, "/dev/loop-control"),
        "added char device"
    );

    // A program attached to the cgroup again (what a runtime re-applying
    // its devices does): `ctdev list` reports it under problems, `ctdev
    // check` names it as the one denying, and `attach --takeover` again
    // removes it, keeping what was added.
    let foreign = crate::foreign::ForeignProgram::deny_char(&cg, 10, 237);
    assert!(
        !opens_in(engine, id, "/dev/loop-control"),
        "denied by the new program"
    );
    let problems = env.list_json()["problems"].to_string();
    assert!(
        problems.contains(&format!("device program {}", foreign.id)),
        "{problems}"
    );
    let r = env.ctdev(&["check", &target, "/dev/loop-control", "rw"]);
    assert_eq!(r.code, 1, "check says denied: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&foreign.id.to_string()), "{}", r.stdout);
    env.ok(&["attach", &target, "--takeover"]);
    assert!(
        opens_in(engine, id, "/dev/loop-control"),
        "taken over again"
    );
    assert_eq!(env.list_json()["problems"], serde_json::json!([]));
    drop(foreign);
    env.ok(&["del", &target, "/dev/loop-control"]);
    assert!(!opens_in(engine, id, "/dev/loop-control"), "gone after del");

    // A block device (a loop device made with LOOP_CTL_ADD).
    let lo = HotLoop::add(HotLoop::pick());
    let host = format!("/dev/{}", lo.name());
    poll(Duration::from_secs(5), || {
        Path::new(&host).exists().then_some(())
    })
    .unwrap_or_else(|| panic!("{host} did not appear"));
    assert!(!opens_in(engine, id, &host));
    env.ok(&["add", &target, &host]);
    assert!(opens_in(engine, id, &host), "added block device {host}");
    env.ok(&["del", &target, &host]);
    assert!(!opens_in(engine, id, &host), "block device gone after del");

    // A directory of nodes.
    let dir = env.scratch.join("devdir");
    fs::create_dir_all(&dir).expect("create node dir");
    let lc = env.node("devdir/lc", crate::DeviceType::Char, 10, 237);
    assert!(lc.exists());
    env.ok(&["add", &target, dir.to_str().unwrap(), "/dev/extra"]);
    assert!(
        opens_in(engine, id, "/dev/extra/lc"),
        "node of the added directory"
    );
    env.ok(&["del", &target, dir.to_str().unwrap(), "/dev/extra"]);
    assert!(
        !opens_in(engine, id, "/dev/extra/lc"),
        "directory gone after del"
    );
    assert!(
        opens_in(engine, id, "/dev/null"),
        "the engine's rules keep working throughout"
    );
}

/// What a restart does to a manual takeover: the container gets a new
/// cgroup with the engine's own program again; `ctdev list` shows the old
/// policy as defunct, and the new cgroup is not under policy (check fails
/// and names it).
pub fn restart_loses_a_manual_takeover(env: &crate::TestEnv, engine: &dyn Engine, id: &str) {
    let target = engine.target(id);
    env.ok(&["attach", &target, "--takeover"]);
    env.ok(&["add", &target, "/dev/loop-control"]);
    assert!(opens_in(engine, id, "/dev/loop-control"));
    let old_id = listed(env, &engine.cgroup_dir(id)).expect("attached")["policy_id"]
        .as_u64()
        .unwrap();
    engine.restart(id);
    let dump = env.list_json();
    let old = dump["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["policy_id"].as_u64() == Some(old_id))
        .cloned()
        .expect("the old policy is still listed");
    assert_eq!(old["state"], "defunct", "{old}");
    let r = env.ctdev(&["check", &target, "/dev/loop-control"]);
    assert_ne!(r.code, 0, "the restarted container is not under policy");
    assert!(
        !opens_in(engine, id, "/dev/loop-control"),
        "the engine's program decides again after a restart"
    );
    assert!(opens_in(engine, id, "/dev/null"));
}

/// Whether the container `id` is under policy with no other program on its
/// own cgroup (the daemon took over), and `dev` opens inside.
fn taken_over_and_opens(env: &crate::TestEnv, engine: &dyn Engine, id: &str, dev: &str) -> bool {
    let cg = engine.cgroup_dir(id);
    let Some(view) = listed(env, &cg) else {
        return false;
    };
    let own = inside(&cg);
    let foreign_here = view["other_programs"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["attached_at"].as_str() == own.to_str()));
    !foreign_here && view["state"] == "enforcing" && opens_in(engine, id, dev)
}

/// The daemon with `{ runtime = ENGINE, name = NAME }` (the engine's
/// container name, not the ID), a static device and a
/// hotplug rule: it takes over the engine's program (import), passes the
/// static device and a hotplugged loop device in, takes over again when a
/// program is attached to the cgroup again, and after the engine restarts
/// the container (new cgroup, same ID) puts everything back, `restarts`
/// times. Returns the timings of each restart (printed too; they include
/// the polling, a `docker exec` per check: upper bounds).
pub fn daemon_takes_over_hotplugs_and_survives_restart(
    env: &crate::TestEnv,
    engine: &dyn Engine,
    id: &str,
    name: &str,
    restarts: usize,
) -> Vec<RestartTiming> {
    use crate::daemon::{wait_until, DaemonProc, HotLoop};
    use crate::foreign::ForeignProgram;
    let index = HotLoop::pick();
    let cfg = env.scratch.join("policy.toml");
    fs::write(
        &cfg,
        format!(
            "scope = \"{}\"\nresync_interval = 0\n\
             [[container]]\nname = \"eng\"\nselect = {{ runtime = \"{}\", name = \"{name}\" }}\n\
             devices = [{{ path = \"/dev/loop-control\" }}]\n\
             [[container.hotplug]]\nsubsystem = \"block\"\ndevname = \"loop{index}\"\n",
            inside(&env.cgroup_parent).display(),
            engine.kind()
        ),
    )
    .expect("write policy file");
    // Another container at the same depth stays under policy, so the
    // program instance for that depth stays loaded across the restart (as
    // on a host with other containers): the restart measures the takeover,
    // not a program load.
    let keep = env.cgroup("keep/c");
    env.ok(&["attach", keep.to_str().expect("utf-8 path")]);
    let mut daemon = DaemonProc::start(env, &cfg);
    wait_until(
        Duration::from_secs(10),
        "the daemon to take over and pass /dev/loop-control in",
        || taken_over_and_opens(env, engine, id, "/dev/loop-control").then_some(()),
    );
    assert!(
        opens_in(engine, id, "/dev/null"),
        "the engine's rules were imported"
    );
    assert_eq!(env.list_json()["problems"], serde_json::json!([]));

    let lo = HotLoop::add(index);
    let dest = format!("/dev/{}", lo.name());
    wait_until(
        Duration::from_secs(10),
        "the hotplugged loop device inside",
        || opens_in(engine, id, &dest).then_some(()),
    );

    // A program attached to the managed cgroup again (as a runtime does when
    // it re-applies its devices): it denies what the daemon gave, `ctdev
    // list` shows it, and the daemon takes over again.
    let cg = engine.cgroup_dir(id);
    let foreign = ForeignProgram::deny_char(&cg, 10, 237);
    let start = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the daemon to take over again",
        || taken_over_and_opens(env, engine, id, "/dev/loop-control").then_some(()),
    );
    eprintln!(
        "{}: foreign program on a managed cgroup -> taken over again: {:?}",
        engine.kind(),
        start.elapsed()
    );
    drop(foreign);

    // Restarts: each a new cgroup with the engine's own program.
    let mut times = Vec::new();
    for round in 0..restarts {
        let old = listed(env, &engine.cgroup_dir(id)).expect("attached")["policy_id"].clone();
        let start = Instant::now();
        engine.restart(id);
        let returned = start.elapsed();
        wait_until(
            Duration::from_secs(15),
            "the restarted container to be taken over with its devices",
            || {
                if start.elapsed() > Duration::from_secs(14) {
                    // About to time out: show what the daemon did.
                    eprintln!("daemon log:\n{}", daemon.log_text());
                }
                let view = listed(env, &engine.cgroup_dir(id))?;
                (view["policy_id"] != old
                    && taken_over_and_opens(env, engine, id, "/dev/loop-control")
                    && opens_in(engine, id, &dest))
                .then_some(())
            },
        );
        let took = start.elapsed();
        eprintln!(
            "{}: restart {round}: command returned after {returned:?}, taken over again with its devices after {took:?}",
            engine.kind()
        );
        times.push(RestartTiming { returned, took });
    }
    assert!(opens_in(engine, id, "/dev/null"));
    drop(lo);
    let log = daemon.kill();
    assert!(log.contains("took over"), "{log}");
    // Shown with --nocapture or when the test fails.
    for line in log.lines() {
        eprintln!("daemon: {line}");
    }
    let mut took: Vec<Duration> = times.iter().map(|t| t.took).collect();
    took.sort();
    if let (Some(median), Some(max)) = (took.get(took.len() / 2), took.last()) {
        eprintln!(
            "{}: restart -> taken over again, {} runs: median {median:?}, max {max:?}",
            engine.kind(),
            took.len()
        );
    }
    times
}

/// One restart measured by [`daemon_takes_over_hotplugs_and_survives_restart`].
#[derive(Debug, Clone, Copy)]
pub struct RestartTiming {
    /// From issuing `restart` until the command returned.
    pub returned: Duration,
    /// From issuing `restart` until the container was under policy again,
    /// taken over, with both devices opening inside.
    pub took: Duration,
}

/// `takeover = "replace"` with `preset = "none"`: the engine's program is
/// replaced and none of its rules are kept, so only what the entry gives
/// opens inside.
pub fn daemon_replace_keeps_only_the_policy(env: &crate::TestEnv, engine: &dyn Engine, id: &str) {
    use crate::daemon::{wait_until, DaemonProc};
    assert!(opens_in(engine, id, "/dev/null"));
    let cfg = env.scratch.join("policy.toml");
    fs::write(
        &cfg,
        format!(
            "scope = \"{}\"\nresync_interval = 0\n\
             [[container]]\nname = \"eng\"\nselect = {{ runtime = \"{}\", name = \"{id}\" }}\n\
             preset = \"none\"\ntakeover = \"replace\"\n\
             devices = [{{ path = \"/dev/loop-control\" }}]\n",
            inside(&env.cgroup_parent).display(),
            engine.kind()
        ),
    )
    .expect("write policy file");
    let mut daemon = DaemonProc::start(env, &cfg);
    wait_until(
        Duration::from_secs(10),
        "the daemon to replace the engine's program",
        || taken_over_and_opens(env, engine, id, "/dev/loop-control").then_some(()),
    );
    let err = open_error_in(engine, id, "/dev/null").expect("/dev/null is denied now");
    assert!(err.contains("Operation not permitted"), "{err}");
    let log = daemon.kill();
    assert!(log.contains("replaced"), "{log}");
}
