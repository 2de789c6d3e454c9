//! A minimal test "container" made with the kernel's own primitives: an init
//! process in new mount, pid and net namespaces (optionally a user
//! namespace), chrooted into a scratch root with busybox, its own `/proc` and
//! a private tmpfs `/dev`, living alone in its own cgroup (so it is the
//! oldest process there, as a runtime's init would be).
//!
//! [`TestContainer::exec`] runs busybox commands inside the container's
//! namespaces, root and cgroup, so the container's device policy applies.
//! Drop kills everything and removes the root, also when a test panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::TestEnv;

/// Where busybox-static lives on the host.
const BUSYBOX: &str = "/usr/bin/busybox";

/// The `userns-init` helper binary built with this crate.
fn userns_helper() -> String {
    crate::built_binary(
        "userns-init",
        "build with `cargo build -p ctdev-tests --bins`",
    )
    .display()
    .to_string()
}

/// A running test container.
pub struct TestContainer {
    /// Host directory used as the container's root (its `/dev` is a tmpfs
    /// visible only inside: look through [`TestContainer::host_path`]).
    pub root: PathBuf,
    /// The container's cgroup directory.
    pub cgroup: PathBuf,
    /// PID of the container's init (in the host pid namespace).
    pub pid: i32,
    /// Whether it has its own user namespace.
    pub userns: bool,
    wrapper: Child,
}

impl TestContainer {
    /// Starts a container in a new cgroup `name` under the env's parent.
    /// With `userns`, root inside is uid/gid 100000 outside (`0 100000 65536`).
    pub fn start(env: &TestEnv, name: &str, userns: bool) -> Self {
        let cgroup = env.cgroup(name);
        let root = env.scratch.join(format!("{name}-root"));
        for d in ["bin", "dev", "proc", "etc", "tmp"] {
            fs::create_dir_all(root.join(d)).expect("create container root dirs");
        }
        // busybox is bind-mounted (in the container's own mount namespace)
        // over an empty file, never copied: a copy is open for writing
        // while other test threads fork, and a child holding that fd until
        // its exec makes the init's exec fail with ETXTBSY (exit 126).
        fs::File::create(root.join("bin/busybox")).expect("create the busybox mount point");
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("symlink sh");
        // The init joins the cgroup itself (it must be alone there), mounts
        // its /proc and a private /dev; with a user namespace, a helper
        // (`userns-init`) does the join, the unshare and the id maps (only
        // the namespaced child joins the cgroup), after the mounts were made
        // so they stay usable for device nodes.
        let script = if userns {
            format!(
                "set -e; mount --bind {BUSYBOX} \"$2/bin/busybox\"; \
                 mount -t proc proc \"$2/proc\"; \
                 mount -t tmpfs -o mode=755 ctdev-test-dev \"$2/dev\"; \
                 exec {} \"$1\" \"$2\" 100000",
                userns_helper()
            )
        } else {
            format!(
                "set -e; echo 0 > \"$1/cgroup.procs\"; \
                 mount --bind {BUSYBOX} \"$2/bin/busybox\"; \
                 mount -t proc proc \"$2/proc\"; \
                 mount -t tmpfs -o mode=755 ctdev-test-dev \"$2/dev\"; \
                 exec chroot \"$2\" /bin/busybox sleep 1000000"
            )
        };
        // When Drop kills the init (cgroup.kill: SIGKILL), util-linux 2.38's
        // `unshare --fork` prints "sigprocmask unblock failed: Invalid
        // argument" and exits 1: it tries to re-raise its child's fatal
        // signal on itself, and `signal(SIGKILL, SIG_DFL)` fails with
        // EINVAL. Harmless; the bench's hotplug and churn sections show it.
        let wrapper = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--net",
                "--fork",
                "--propagation",
                "private",
                "--",
            ])
            .args(["/bin/sh", "-c", &script, "sh"])
            .arg(&cgroup)
            .arg(&root)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare (util-linux)");
        let mut c = TestContainer {
            root,
            cgroup,
            pid: 0,
            userns,
            wrapper,
        };
        c.pid = c.wait_for_init();
        c
    }

    /// Waits until the init is alone in the cgroup, chrooted and (with
    /// userns) mapped; returns its PID. Panics (fails the test) after 10 s.
    fn wait_for_init(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.wrapper.try_wait() {
                panic!("test container exited early: {status}");
            }
            let procs = fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
            if let [pid] = pids[..] {
                let root_ok = fs::read_link(format!("/proc/{pid}/root"))
                    .map(|r| r == self.root)
                    .unwrap_or(false);
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default();
                let mapped = !self.userns || map.split_whitespace().nth(1) == Some("100000");
                if root_ok && comm.trim() == "busybox" && mapped {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "test container init did not start in {} (procs: {procs:?})",
                self.cgroup.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `/bin/busybox ARGS...` inside the container: its cgroup, its
    /// namespaces (user too, when it has one), its root and cwd.
    pub fn exec(&self, args: &[&str]) -> Output {
        let user = if self.userns { "-U" } else { "" };
        let script = format!(
            "echo $$ > \"$1/cgroup.procs\" && shift && exec nsenter -t {} -m -p -n {user} --root --wd -- /bin/busybox \"$@\"",
            self.pid
        );
        Command::new("/bin/sh")
            .args(["-c", &script, "sh"])
            .arg(&self.cgroup)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs a busybox `sh -c SCRIPT` inside the container.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Opens `path` read-write inside the container (`: <> path`): `Ok` if
    /// it opened, `Err(stderr)` otherwise (EPERM shows as "Operation not permitted").
    pub fn open_rw(&self, path: &str) -> Result<(), String> {
        let o = self.sh(&format!(": <> '{path}'"));
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// The host path of `inside` as the container sees it (through
    /// `/proc/<pid>/root`, so the private /dev is visible).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(inside.trim_start_matches('/'))
    }

    /// `ls -lnR` of directories inside the container (space-separated),
    /// for before/after checks.
    pub fn listing(&self, dirs: &str) -> String {
        let mut args = vec!["ls", "-lnR"];
        args.extend(dirs.split_whitespace());
        let o = self.exec(&args);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `pid:N` target of the init.
    pub fn target(&self) -> String {
        format!("pid:{}", self.pid)
    }

    /// [`TestContainer::start`] without a user namespace, then attached by
    /// ctdev with no rule at all (`attach --preset none`).
    pub fn attached(env: &TestEnv, name: &str) -> Self {
        let c = Self::start(env, name, false);
        env.ok(&["attach", c.cgroup_str(), "--preset", "none"]);
        c
    }

    /// Makes the char node `major:minor` at `path` in the container behind
    /// ctdev's back (from the host); whether an open of it inside is then
    /// refused by the device policy (EPERM).
    pub fn new_node_denied(&self, path: &str, major: u32, minor: u32) -> bool {
        crate::mknod(&self.host_path(path), major, minor);
        crate::denied(&self.open_rw(path))
    }

    /// The cgroup as a target path.
    pub fn cgroup_str(&self) -> &str {
        self.cgroup.to_str().expect("utf-8 cgroup path")
    }
}

/// Kills every process of `cgroup` (and waits until it is empty).
fn kill_cgroup(cgroup: &Path) {
    let _ = fs::write(cgroup.join("cgroup.kill"), "1");
    for _ in 0..300 {
        let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        kill_cgroup(&self.cgroup);
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
        // The private mounts died with the mount namespace; the root is a
        // plain directory again.
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_dir(&self.cgroup);
    }
}

/// A loop device on a small file, detached on drop.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    file: PathBuf,
}

impl LoopDevice {
    /// `losetup -f --show` on a new 64 KiB file in the env's scratch dir.
    pub fn new(env: &TestEnv, name: &str) -> Self {
        let file = env.scratch.join(format!("{name}.img"));
        fs::write(&file, vec![0u8; 64 * 1024]).expect("write loop backing file");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "losetup -f failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice {
            path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            file,
        }
    }

    /// The device path as a string.
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 loop path")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        let _ = fs::remove_file(&self.file);
    }
}

/// A veth pair made with `ip link` (test setup only), deleted on drop.
pub struct Veth {
    /// The end that is passed into containers.
    pub name: String,
    /// The peer that stays on the host.
    pub peer: String,
}

impl Veth {
    /// Creates a veth pair with short unique names (IFNAMSIZ is 16).
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::SeqCst)
        );
        let v = Veth {
            name: format!("ctva{tag}"),
            peer: format!("ctvb{tag}"),
        };
        let st = Command::new("ip")
            .args([
                "link", "add", &v.name, "type", "veth", "peer", "name", &v.peer,
            ])
            .status()
            .expect("run ip link add");
        assert!(st.success(), "ip link add veth {} failed", v.name);
        v
    }
}

impl Default for Veth {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting the host peer removes both ends wherever the other is.
        let _ = Command::new("ip")
            .args(["link", "del", &self.peer])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
