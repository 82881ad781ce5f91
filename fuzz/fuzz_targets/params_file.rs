//! Parameters JSON/TOML (§5): parsed as both syntaxes, then resolved against the bundled MLP.
#![no_main]
use libfuzzer_sys::fuzz_target;
use qscope::export::params_file::WeightInts;
use qscope::export::{ParamsFile, Syntax};
use std::sync::LazyLock;

static MODEL: LazyLock<qscope::Model> =
    LazyLock::new(|| qscope::bundled::model("mnist-mlp").expect("bundled"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for syntax in [Syntax::Json, Syntax::Toml] {
        if let Ok(pf) = ParamsFile::parse("params", text, syntax) {
            for force in [false, true] {
                let _ = pf.resolve("params", &MODEL, force, WeightInts::FromModel);
            }
        }
    }
});
