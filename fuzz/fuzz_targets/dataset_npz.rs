//! Data sets in npz (a zip of .npy arrays); the input is read as a zip whatever it starts with.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if !bytes.starts_with(b"PK") {
        bytes.splice(0..0, *b"PK");
    }
    if let Ok(d) = qscope::model::load_dataset_bytes("data.npz", &bytes) {
        let _ = d.check_fits(4, &[4]);
        let _ = d.check_labels(10);
    }
});
