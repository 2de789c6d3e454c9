//! The OCI config.json and runc state.json importers never panic on any
//! text, errors name the file, and the rules they import are turned into
//! ctdev entries that give exactly the runtime's verdicts.
#![no_main]

use std::path::Path;

use ctdev::import::{parse_oci_config, parse_runc_state};
use ctdev_fuzz::check_emulation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/config.json");
    for parsed in [parse_oci_config(text, path), parse_runc_state(text, path)] {
        match parsed {
            Ok(specs) => check_emulation(&specs),
            Err(e) => assert!(e.to_string().contains("/fuzz/config.json"), "{e}"),
        }
    }
});
