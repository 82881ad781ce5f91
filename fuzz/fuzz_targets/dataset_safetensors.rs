//! Data sets in safetensors: loaded, then checked against a model's input and classes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"PK") {
        return; // the npz target's
    }
    if let Ok(d) = qscope::model::load_dataset_bytes("data", data) {
        let _ = d.check_fits(4, &[4]);
        let _ = d.check_labels(10);
        let _ = d.take(3);
    }
});
