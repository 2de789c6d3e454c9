//! Random sequences of attach / allow / revoke / set / add / del / daemon
//! take-back / detach through the pure planner and the grant records, with
//! a model of the container's files (`ctdev::plan_props`). Oracle, after
//! every step: revoke, del and take-back never widen any access; allow and
//! add never narrow; add then del is the identity on entries and files; a
//! grant made before `set` takes back no entry; a directory or file that
//! was there before any add is never removed; taking every grant back
//! restores the files.
#![no_main]

use ctdev::plan_props::{sequence, Bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // About four choices per step; long inputs are cut at 64 steps.
    let steps = (data.len() / 4).min(64);
    let mut src = Bytes::new(data);
    sequence(&mut src, steps);
});
