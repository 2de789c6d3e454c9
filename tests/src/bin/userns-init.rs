//! Test helper: becomes the init of a user-namespaced test container.
//!
//! `userns-init CGROUP_DIR ROOT OUTSIDE_BASE` forks; the child joins
//! CGROUP_DIR (while still host root), unshares a user namespace and waits;
//! the parent writes `0 OUTSIDE_BASE 65536` to the child's uid_map and
//! gid_map (no newuidmap/subuid needed as root); the child then becomes
//! root inside, chroots into ROOT and execs `/bin/busybox sleep`. The parent
//! waits for it and exits with its status.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;

use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{
    chdir, chroot, fork, pipe, setgroups, setresgid, setresuid, ForkResult, Gid, Uid,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, cgroup, root, base] = &args[..] else {
        eprintln!("usage: userns-init CGROUP_DIR ROOT OUTSIDE_BASE");
        std::process::exit(2);
    };
    let (ready_r, ready_w) = pipe().expect("pipe");
    let (go_r, go_w) = pipe().expect("pipe");
    // SAFETY: this helper is single-threaded; the child only makes syscalls and execs.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop((ready_r, go_w));
            fs::write(format!("{cgroup}/cgroup.procs"), "0").expect("join cgroup");
            unshare(CloneFlags::CLONE_NEWUSER).expect("unshare(CLONE_NEWUSER)");
            fs::File::from(ready_w).write_all(b"r").expect("notify");
            let mut b = [0u8; 1];
            fs::File::from(go_r)
                .read_exact(&mut b)
                .expect("wait for maps");
            setgroups(&[]).expect("setgroups");
            setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).expect("setresgid");
            setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).expect("setresuid");
            chroot(root.as_str()).expect("chroot");
            chdir("/").expect("chdir");
            let err = std::process::Command::new("/bin/busybox")
                .args(["sleep", "1000000"])
                .exec();
            panic!("exec busybox: {err}");
        }
        ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let mut b = [0u8; 1];
            fs::File::from(ready_r)
                .read_exact(&mut b)
                .expect("child ready");
            // ROOT/proc is the proc of our pid namespace (host /proc is not).
            let map = format!("0 {base} 65536\n");
            fs::write(format!("{root}/proc/{child}/uid_map"), &map).expect("write uid_map");
            fs::write(format!("{root}/proc/{child}/gid_map"), &map).expect("write gid_map");
            fs::File::from(go_w).write_all(b"g").expect("go");
            let code = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, c)) => c,
                _ => 1,
            };
            std::process::exit(code);
        }
    }
}
