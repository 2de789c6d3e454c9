//! `verdict-prober CGROUP_DIR STOP_FILE PATH...`: joins the cgroup, then
//! loops on `access(PATH, R_OK)` over the paths until STOP_FILE exists, and
//! prints one JSON object: how many times each verdict vector was seen (bit
//! i set: PATH i allowed). Used by the atomic-swap test.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() >= 3,
        "usage: verdict-prober CGROUP_DIR STOP_FILE PATH..."
    );
    std::fs::write(Path::new(&args[0]).join("cgroup.procs"), "0").expect("join cgroup");
    let stop = Path::new(&args[1]).to_path_buf();
    let paths: Vec<CString> = args[2..]
        .iter()
        .map(|p| CString::new(Path::new(p).as_os_str().as_bytes()).expect("path"))
        .collect();
    println!("ready");
    let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
    let mut n = 0u64;
    loop {
        let mut mask = 0u32;
        for (i, p) in paths.iter().enumerate() {
            // SAFETY: p is a valid NUL-terminated path.
            if unsafe { libc::access(p.as_ptr(), libc::R_OK) } == 0 {
                mask |= 1 << i;
            }
        }
        *seen.entry(mask).or_insert(0) += 1;
        n += 1;
        if n.is_multiple_of(64) && stop.exists() {
            break;
        }
    }
    let body: Vec<String> = seen.iter().map(|(m, c)| format!("\"{m}\": {c}")).collect();
    println!("{{{}}}", body.join(", "));
}
