//! `RuleSpec::parse` never panics, and a parsed rule prints as text that
//! parses back to the same rule (the form `ctdev list` shows and the LXC
//! config uses).
#![no_main]

use ctdev::rule::{RuleError, RuleSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RuleSpec::parse(text) {
        Ok(RuleSpec::Numbers(rule)) => {
            let shown = rule.to_string();
            assert_eq!(
                RuleSpec::parse(&shown),
                Ok(RuleSpec::Numbers(rule)),
                "{text:?} -> {shown:?} does not round-trip"
            );
            // Keys stay within what the kernel can hold or are wildcards.
            for k in rule.keys(7) {
                assert!(k.major == u32::MAX || k.major <= ctdev::rule::MAX_MAJOR);
                assert!(k.minor == u32::MAX || k.minor <= ctdev::rule::MAX_MINOR);
                assert_eq!(k.policy_id, 7);
            }
        }
        Ok(RuleSpec::Path { path, access }) => {
            // The path is one whitespace-free word starting with '/'.
            assert!(path.is_absolute(), "{text:?}");
            let again = format!("{} {}", path.display(), access);
            assert_eq!(
                RuleSpec::parse(&again),
                Ok(RuleSpec::Path { path, access }),
                "{text:?} -> {again:?}"
            );
        }
        Err(e) => {
            // Every error names the rule (or says it is empty).
            let msg = e.to_string();
            if e != RuleError::Empty {
                assert!(msg.contains("rule"), "{msg}");
            }
        }
    }
});
