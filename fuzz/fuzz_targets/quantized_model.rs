//! Quantized model files (§6): read back; what loads is also re-exported, which must not panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qscope::export::is_quantized_model(data);
    if let Ok(q) = qscope::export::load_quantized_bytes("fuzz", data) {
        let _ = qscope::export::quantized_model::quantized_model_bytes(&q.model, &q.params);
    }
});
