//! Test helper: opens device nodes in a tight loop from its first
//! instruction, and reports how often each open succeeded.
//!
//! `first-open MILLIS PATH...`: for MILLIS milliseconds, opens (read-only,
//! non-blocking) and closes every PATH in turn, then prints one line per
//! path: `PATH ok N denied N other N` (denied: EPERM, the device
//! controller's answer). The test starts it already inside the cgroup under
//! test (it joins before exec), so the first open is its first device access.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let millis: u64 = args
        .next()
        .and_then(|a| a.to_str()?.parse().ok())
        .unwrap_or(100);
    let paths: Vec<CString> = args
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let mut counts = vec![[0u64; 3]; paths.len()];
    let deadline = Instant::now() + Duration::from_millis(millis);
    while Instant::now() < deadline {
        for (p, c) in paths.iter().zip(counts.iter_mut()) {
            // SAFETY: open/close on a valid NUL-terminated path.
            let fd = unsafe {
                libc::open(
                    p.as_ptr(),
                    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: fd was just opened by this process.
                unsafe { libc::close(fd) };
                c[0] += 1;
            } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                c[1] += 1;
            } else {
                c[2] += 1;
            }
        }
    }
    for (p, c) in paths.iter().zip(counts.iter()) {
        println!(
            "{} ok {} denied {} other {}",
            p.to_string_lossy(),
            c[0],
            c[1],
            c[2]
        );
    }
}
