//! The LXC config importer never panics on any text, errors name the file
//! and line, and the rules it imports are turned into ctdev entries that
//! give exactly LXC's verdicts.
#![no_main]

use std::path::Path;

use ctdev::import::parse_lxc_config;
use ctdev_fuzz::check_emulation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_lxc_config(text, Path::new("/fuzz/config")) {
        Ok(specs) => check_emulation(&specs),
        Err(e) => assert!(e.to_string().contains("/fuzz/config"), "{e}"),
    }
});
