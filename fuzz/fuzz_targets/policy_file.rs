//! The daemon's policy file parser never panics on any text, every error
//! names the file, and a policy it accepts can be printed back
//! (`ctdev daemon --check-config`).
#![no_main]

use std::path::Path;

use ctdev::daemon::config::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(Path::new("/fuzz/policy.toml"), text) {
        Ok(policy) => {
            let _ = policy.describe();
        }
        Err(e) => assert!(e.to_string().contains("/fuzz/policy.toml"), "{e}"),
    }
});
