//! A minimal Podman for the CDI tests (the lead unifies it with the
//! engines harness): private storage, runc, the cgroupfs manager, a
//! busybox image imported from a rootfs tarball, and a private CDI spec
//! directory that Podman reads as `/etc/cdi`.
//!
//! Podman 4.3 reads CDI specs only from `/etc/cdi` and `/var/run/cdi` (no
//! flag, no containers.conf key). So Podman runs in a private mount
//! namespace (kept by a holder process; every command enters it with
//! `nsenter -m`) where cgroup2 is mounted on `/sys/fs/cgroup` and the
//! test's spec directory is bind-mounted on `/etc/cdi`. The host's
//! `/etc/cdi` is only created (empty) as the mount point, never written.
//! Drop removes the containers, kills what is left in their cgroups, ends
//! the namespace and deletes the directories, also when a test panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::runtimes::{remove_cgroup_tree, require_tool};
use crate::{cgroup_mount, unique};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A private Podman with a private CDI spec directory.
pub struct PodmanCdi {
    holder: Child,
    /// Everything of this engine lives here.
    pub base: PathBuf,
    /// The CDI spec directory (Podman sees it as `/etc/cdi`).
    pub cdi_dir: PathBuf,
    /// The containers' cgroup parent, inside the hierarchy.
    pub cgroup_parent: PathBuf,
    /// The imported image.
    pub image: String,
}

impl PodmanCdi {
    /// Starts the namespace and imports the busybox image. Containers go
    /// under `parent` (a cgroup directory under the cgroup2 mount).
    pub fn start(parent: &Path) -> PodmanCdi {
        for (tool, pkg) in [
            ("podman", "podman"),
            ("runc", "runc"),
            ("conmon", "conmon"),
            ("nsenter", "util-linux"),
            ("unshare", "util-linux"),
            ("busybox", "busybox-static"),
            ("tar", "tar"),
        ] {
            require_tool(tool, pkg);
        }
        let name = unique("podcdi");
        let base = std::env::temp_dir().join(&name);
        let cdi_dir = base.join("cdi");
        fs::create_dir_all(&cdi_dir).expect("create the CDI spec dir");
        fs::create_dir_all("/etc/cdi").expect("create /etc/cdi (mount point)");
        let script = format!(
            "mount -t cgroup2 none /sys/fs/cgroup && mount --bind '{}' /etc/cdi && exec sleep 1000000",
            cdi_dir.display()
        );
        let holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the namespace holder");
        let rel = parent
            .strip_prefix(cgroup_mount())
            .expect("parent under the cgroup2 mount");
        let mut p = PodmanCdi {
            holder,
            cgroup_parent: Path::new("/").join(rel).join("libpod_parent"),
            image: format!("localhost/{name}:latest"),
            base,
            cdi_dir,
        };
        let pid = p.holder.id();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = p.holder.try_wait() {
                panic!("the namespace holder exited ({st}): mounts failed");
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            assert!(Instant::now() < end, "namespace holder did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let tar = rootfs_tar(&p.base);
        p.ok(&["import", tar.to_str().expect("utf-8"), &p.image.clone()]);
        p
    }

    /// `podman ARGS` with the private roots, inside the namespace.
    pub fn podman(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "--", "podman", "--root"])
            .arg(self.base.join("root"))
            .arg("--runroot")
            .arg(self.base.join("runroot"))
            .arg("--tmpdir")
            .arg(self.base.join("tmp"))
            .args([
                "--cgroup-manager",
                "cgroupfs",
                "--runtime",
                "runc",
                "--events-backend",
                "file",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    /// `podman ARGS`, required to succeed; stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.podman(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed ({}):\n{}\n{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// `podman run -d` of `sleep`, with `extra` options (e.g. `--device
    /// vendor.com/class=name`); the container ID.
    pub fn run(&self, extra: &[&str]) -> String {
        let parent = self.cgroup_parent.display().to_string();
        let mut args = vec![
            "run",
            "-d",
            "--pids-limit=-1",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            "none",
            "--cgroup-parent",
            &parent,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&self.image, "sleep", "100000"]);
        self.ok(&args).trim().to_string()
    }

    /// `sh -c SCRIPT` inside container `id`.
    pub fn sh(&self, id: &str, script: &str) -> Output {
        self.podman(&["exec", id, "sh", "-c", script])
    }

    /// The container's cgroup directory on the host.
    pub fn cgroup_dir(&self, id: &str) -> PathBuf {
        cgroup_mount()
            .join(self.cgroup_parent.strip_prefix("/").expect("absolute"))
            .join(format!("libpod-{id}"))
    }
}

/// A busybox-static rootfs tarball in `dir`.
fn rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        fs::create_dir_all(root.join(d)).expect("rootfs dirs");
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for tool in [
        "sh", "cat", "sleep", "ls", "head", "echo", "stat", "test", "tr", "grep", "mknod",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).expect("symlink");
    }
    let tar = dir.join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    tar
}

impl Drop for PodmanCdi {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-a", "-t", "0"]);
        remove_cgroup_tree(
            &cgroup_mount().join(
                self.cgroup_parent
                    .strip_prefix("/")
                    .unwrap_or(Path::new("")),
            ),
        );
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // Storage is overlay-mounted only inside the (now gone) namespace.
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// A loop device made with `LOOP_CTL_ADD` (no backing file), removed on drop.
pub struct LoopNode {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// N (the minor).
    pub number: u32,
}

const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;

impl LoopNode {
    /// Adds the first free loop number at or above `from`.
    pub fn new(from: u32) -> LoopNode {
        use std::os::fd::AsRawFd;
        let ctl = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .expect("open /dev/loop-control");
        for n in from..from + 4000 {
            // SAFETY: LOOP_CTL_ADD on the loop-control fd with an integer argument.
            let r = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_ADD, n as libc::c_ulong) };
            if r >= 0 {
                let path = PathBuf::from(format!("/dev/loop{n}"));
                let end = Instant::now() + Duration::from_secs(5);
                while !path.exists() {
                    assert!(Instant::now() < end, "{} did not appear", path.display());
                    std::thread::sleep(Duration::from_millis(10));
                }
                return LoopNode { path, number: n };
            }
        }
        panic!("no free loop number from {from}");
    }

    /// The path as text.
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8")
    }
}

impl Drop for LoopNode {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        if let Ok(ctl) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
        {
            // SAFETY: LOOP_CTL_REMOVE on the loop-control fd with an integer argument.
            unsafe {
                libc::ioctl(
                    ctl.as_raw_fd(),
                    LOOP_CTL_REMOVE,
                    self.number as libc::c_ulong,
                )
            };
        }
    }
}
