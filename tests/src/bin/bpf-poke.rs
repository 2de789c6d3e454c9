//! Test helper: tries, from wherever it runs (inside a test container),
//! the bpf and cgroup operations a hostile container would use against
//! ctdev, and prints one line per attempt: `OP ARG: ok` or `OP ARG: errno N`.
//!
//! `bpf-poke obj_get PATH | map_id ID | prog_id ID | link_id ID |
//!  write PATH TEXT | unlink PATH | prog_detach CGROUP_DIR ...` (any number
//! of operations, each with its arguments).

use std::ffi::CString;
use std::os::fd::AsRawFd;

const BPF_PROG_DETACH: i64 = 9;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_MAP_GET_FD_BY_ID: i64 = 14;
const BPF_OBJ_GET: i64 = 7;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;

fn bpf(cmd: i64, attr: &mut [u64; 8]) -> Result<i64, i32> {
    // SAFETY: attr is a zero-initialised 64-byte buffer, a valid prefix of
    // union bpf_attr for every command used here.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 64u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

fn report(op: &str, arg: &str, r: Result<(), i32>) {
    match r {
        Ok(()) => println!("{op} {arg}: ok"),
        Err(e) => println!("{op} {arg}: errno {e}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let op = args[i].as_str();
        let arg = args.get(i + 1).cloned().unwrap_or_default();
        i += 2;
        let r = match op {
            "obj_get" => {
                let path = CString::new(arg.clone()).unwrap_or_default();
                let mut attr = [0u64; 8];
                attr[0] = path.as_ptr() as u64;
                bpf(BPF_OBJ_GET, &mut attr).map(|_| ())
            }
            "map_id" | "prog_id" | "link_id" => {
                let cmd = match op {
                    "map_id" => BPF_MAP_GET_FD_BY_ID,
                    "prog_id" => BPF_PROG_GET_FD_BY_ID,
                    _ => BPF_LINK_GET_FD_BY_ID,
                };
                let mut attr = [0u64; 8];
                attr[0] = arg.parse::<u64>().unwrap_or(0);
                bpf(cmd, &mut attr).map(|_| ())
            }
            "write" => {
                let text = args.get(i).cloned().unwrap_or_default();
                i += 1;
                std::fs::write(&arg, text).map_err(|e| e.raw_os_error().unwrap_or(0))
            }
            "unlink" => std::fs::remove_file(&arg).map_err(|e| e.raw_os_error().unwrap_or(0)),
            "prog_detach" => match std::fs::File::open(&arg) {
                Ok(dir) => {
                    let mut attr = [0u64; 8];
                    // target_fd, attach_bpf_fd = 0, attach_type = BPF_CGROUP_DEVICE (6)
                    attr[0] = dir.as_raw_fd() as u64;
                    attr[1] = 6;
                    bpf(BPF_PROG_DETACH, &mut attr).map(|_| ())
                }
                Err(e) => Err(e.raw_os_error().unwrap_or(0)),
            },
            other => {
                eprintln!("bpf-poke: unknown operation {other}");
                std::process::exit(2);
            }
        };
        report(op, &arg, r);
    }
}
