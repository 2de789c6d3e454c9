//! The CDI spec parser never panics on any bytes (JSON or YAML); a spec it
//! accepts survives a JSON round trip unchanged, plans for a running
//! container without panicking, and every accepted device name parses as
//! a qualified name.
#![no_main]

use ctdev::cdi::apply::plan;
use ctdev::cdi::registry::merged_edits;
use ctdev::cdi::spec::{parse, Format};
use ctdev::cdi::QualifiedName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (format, body) = match data.split_first() {
        Some((b, rest)) if b & 1 == 1 => (Format::Yaml, rest),
        Some((_, rest)) => (Format::Json, rest),
        None => return,
    };
    let Ok(spec) = parse(body, format) else {
        return;
    };
    let text = serde_json::to_vec(&spec).expect("an accepted spec serializes");
    let again = parse(&text, Format::Json).expect("an accepted spec parses back");
    assert_eq!(again, spec);
    for d in &spec.devices {
        let name = QualifiedName::parse(&format!("{}={}", spec.kind, d.name))
            .expect("accepted kind and name form a qualified name");
        let edits = merged_edits(&spec, d);
        let _ = plan(&name, &edits, false);
        let _ = plan(&name, &edits, true);
    }
});
