//! Config TOML: parsed, applied over the defaults and validated against the bundled MLP.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static MODEL: LazyLock<qscope::Model> =
    LazyLock::new(|| qscope::bundled::model("mnist-mlp").expect("bundled"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = qscope::config::ConfigFile::parse("config", text) {
        let mut c = qscope::QuantConfig::default();
        file.apply_to(&mut c);
        if c.validate(Some(&MODEL)).is_ok() {
            let _ = qscope::pipeline::quantize_weights(&MODEL, &c);
        }
    }
});
