//! Oracles shared by the fuzz targets.

use ctdev::import::{translate, verify, DeviceRuleSpec, RuntimeModel, Semantics};

/// More rules than this are only parsed, not emulated (a runtime's list is
/// a few dozen rules).
pub const MAX_EMULATED: usize = 48;

/// Checks, for each runtime's semantics, that `translate(specs)`, judged by
/// the kernel program's own lookup (`ctdev_common::evaluate`), never
/// allows a request the runtime's model denies and reports every request it
/// denies that the model allows, on the grid of mentioned numbers (plus one
/// unmentioned major and minor), with single-type unique entries.
pub fn check_emulation(specs: &[DeviceRuleSpec]) {
    if specs.len() > MAX_EMULATED {
        return;
    }
    for semantics in [Semantics::Runc, Semantics::Crun, Semantics::Lxc] {
        let Ok(model) = RuntimeModel::new(semantics, specs) else {
            // runc refuses the list: the takeover refuses it too.
            assert!(translate(semantics, specs).is_err());
            continue;
        };
        let tr = translate(semantics, specs).expect("translate accepts what the model accepts");
        if let Err(e) = verify(&model, &tr, &[]) {
            panic!("{semantics}: {e}\nspecs: {specs:?}\nrules: {:?}", tr.rules);
        }
    }
}
