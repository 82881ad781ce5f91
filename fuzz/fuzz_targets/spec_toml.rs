//! Spec TOML: parsed, then built against the bundled CNN's tensors.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = qscope::model::Spec::parse("spec", text);
    for name in ["mnist-cnn", "mnist-mlp"] {
        let bytes = qscope::bundled::model_bytes(name).expect("bundled");
        let _ = qscope::model::load_model_bytes("fuzz", "m", bytes, Some(("spec", text)));
    }
});
