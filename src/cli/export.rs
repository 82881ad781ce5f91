//! `qscope export --out FILE`: the chosen parameters (.json/.toml, formats.md §5) or a quantized
//! model (.safetensors, §6). The target is checked before any work; the write is atomic.

use super::args::ExportArgs;
use super::out::{errln, outln};
use super::progress::{spinner, with_spinner};
use super::setup::setup;
use super::table::pct;
use anyhow::Result;
use qscope::export::onnx::QdqOptions;
use qscope::export::{
    ExportKind, check_export_target, save_params, save_qdq_model, save_quantized_model,
    save_trt_cache,
};
use qscope::pipeline::{Cancel, run};

/// `n` with thousands separators.
pub fn bytes(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs `qscope export`.
pub fn main(args: &ExportArgs) -> Result<()> {
    let kind = check_export_target(&args.out)?;
    let s = setup(&args.common)?;
    let (params, smoothed) = match s.params {
        Some(p) => (p, None),
        None => {
            let pb = spinner("calibrating and evaluating");
            let cancel = with_spinner(Cancel::new(), pb.as_ref());
            let outcome = run(&s.model, &s.calib, &s.eval, &s.config, &cancel)?;
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            let r = &outcome.report;
            errln!(
                "qscope: {}: float top-1 {} · int top-1 {} · agreement {}",
                r.model,
                pct(r.fp32_accuracy),
                pct(r.quant_accuracy),
                pct(r.agreement)
            );
            (outcome.params, outcome.smoothed)
        }
    };
    // A SmoothQuant run's parameters refer to its smoothed copy of the model (a --params file's
    // migrations are applied to `s.model` already).
    let s = super::setup::Setup {
        model: smoothed.unwrap_or(s.model),
        params: None,
        ..s
    };
    let out = args.out.display();
    let layers = params.layers.len();
    let float: Vec<&str> = params
        .layers
        .iter()
        .filter(|l| l.weight.is_none())
        .map(|l| l.name.as_str())
        .collect();
    let float = if float.is_empty() {
        String::new()
    } else {
        format!(", float: {}", float.join(", "))
    };
    match kind {
        ExportKind::Json | ExportKind::Toml => {
            save_params(&args.out, &s.model, &params)?;
            let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
            outln!(
                "wrote {out}: parameters of {} (sha256 {}…), input + {layers} weight layers{float}, {} bytes",
                s.model.name,
                &s.model.sha256[..12.min(s.model.sha256.len())],
                bytes(size)
            )?;
        }
        ExportKind::Onnx => {
            let opts = QdqOptions {
                native_int4: args.native_int4,
                qdq_clip: args.qdq_clip,
            };
            let size = save_qdq_model(&args.out, &s.model, &params, opts)?;
            outln!(
                "wrote {out}: {} as QDQ ONNX (opset 21; {layers} weight layers{float}), {} bytes",
                s.model.name,
                bytes(size)
            )?;
        }
        ExportKind::TrtCache => {
            let n = save_trt_cache(&args.out, &s.model, &params, &args.trt_header)?;
            outln!(
                "wrote {out}: TensorRT calibration cache of {} ({n} tensors, header {})",
                s.model.name,
                args.trt_header
            )?;
        }
        ExportKind::Safetensors => {
            let size = save_quantized_model(&args.out, &s.model, &params)?;
            let against = if s.has_float {
                format!(
                    ", {:.1}% of the float file ({} bytes, {:.1}x smaller)",
                    100.0 * size as f64 / s.model_file_bytes as f64,
                    bytes(s.model_file_bytes),
                    s.model_file_bytes as f64 / size as f64
                )
            } else {
                format!(
                    " (re-exported from a quantized model of {} bytes)",
                    bytes(s.model_file_bytes)
                )
            };
            outln!(
                "wrote {out}: quantized {} ({layers} weight layers{float}), {} bytes{against}",
                s.model.name,
                bytes(size)
            )?;
        }
    }
    Ok(())
}
