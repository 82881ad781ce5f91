//! Model safetensors (+ spec): embedded spec or nn.Sequential fallback, or, when the first byte
//! is odd, an external spec (the text up to the first NUL) followed by the safetensors bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let spec;
    let bytes = match data.split_first() {
        Some((&flag, rest)) if flag & 1 == 1 => {
            let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            spec = String::from_utf8_lossy(&rest[..cut]).into_owned();
            let st = rest.get(cut + 1..).unwrap_or(&[]);
            let _ = qscope::model::load_model_bytes("fuzz", "m", st, Some(("spec", &spec)));
            return;
        }
        Some((_, rest)) => rest,
        None => data,
    };
    let _ = qscope::model::load_model_bytes("fuzz", "m", bytes, None);
});
