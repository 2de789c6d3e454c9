//! Test helper: tries, from wherever it runs (inside a test container),
//! the bpf and cgroup operations a hostile container would use against
//! ctdev, and prints one line per attempt: `OP ARG: ok` or `OP ARG: errno N`.
//!
//! `bpf-poke obj_get PATH | map_id ID | prog_id ID | link_id ID |
//!  write PATH TEXT | unlink PATH | prog_detach CGROUP_DIR ...` (any number
//! of operations, each with its arguments).

use std::os::fd::AsFd;
use std::path::Path;

use ctdev::kernel::sys::{self, SysError};

/// The errno of a failed bpf command (0 when it was no kernel error).
fn errno<T>(r: Result<T, SysError>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.errno().unwrap_or(0))
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
            "obj_get" => errno(sys::obj_get(Path::new(&arg))),
            "map_id" | "prog_id" | "link_id" => {
                let id = arg.parse::<u32>().unwrap_or(0);
                errno(match op {
                    "map_id" => sys::map_fd_by_id(id),
                    "prog_id" => sys::prog_fd_by_id(id),
                    _ => sys::link_fd_by_id(id),
                })
            }
            "write" => {
                let text = args.get(i).cloned().unwrap_or_default();
                i += 1;
                std::fs::write(&arg, text).map_err(|e| e.raw_os_error().unwrap_or(0))
            }
            "unlink" => std::fs::remove_file(&arg).map_err(|e| e.raw_os_error().unwrap_or(0)),
            "prog_detach" => match std::fs::File::open(&arg) {
                Ok(dir) => errno(sys::prog_detach_device_unnamed(
                    dir.as_fd(),
                    Path::new(&arg),
                )),
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
