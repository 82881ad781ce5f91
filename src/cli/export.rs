//! `qscope export --out FILE`: the chosen parameters (.json/.toml, formats.md §5) or a quantized
//! model (.safetensors, §6). The target is checked before any work; the write is atomic.

use super::args::ExportArgs;
use super::out::{errln, outln};
use super::progress::{spinner, with_spinner};
use super::setup::{Setup, setup};
use super::table::pct;
use anyhow::Result;
use qscope::export::onnx::QdqOptions;
use qscope::export::{
    ExportKind, check_export_target, save_params, save_qdq_model, save_quantized_model,
    save_trt_cache,
};
use qscope::model::Model;
use qscope::params::ModelParams;
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
    let (params, s) = params_and_their_model(s)?;
    let job = Job {
        args,
        s: &s,
        params: &params,
        layers: params.layers.len(),
        float: float_layers_note(&params),
    };
    match kind {
        ExportKind::Json | ExportKind::Toml => write_params(&job),
        ExportKind::Onnx => write_qdq_onnx(&job),
        ExportKind::TrtCache => write_trt_cache(&job),
        ExportKind::Safetensors => write_quantized_model(&job),
    }
}

/// What one export writes, and the figures its message reports.
struct Job<'a> {
    /// The command line.
    args: &'a ExportArgs,
    /// The setup, whose model the parameters refer to.
    s: &'a Setup,
    /// The parameters to export.
    params: &'a ModelParams,
    /// How many weight layers the parameters cover.
    layers: usize,
    /// ", float: NAMES" for the layers left in float, or empty.
    float: String,
}

/// The parameters to export (loaded, or calibrated now) and the setup with the model they
/// refer to.
fn params_and_their_model(mut s: Setup) -> Result<(ModelParams, Setup)> {
    let (params, smoothed) = match s.params.take() {
        Some(p) => (p, None),
        None => calibrate(&s)?,
    };
    // A SmoothQuant run's parameters refer to its smoothed copy of the model (a --params file's
    // migrations are applied to `s.model` already).
    let s = Setup {
        model: smoothed.unwrap_or(s.model),
        params: None,
        ..s
    };
    Ok((params, s))
}

/// Calibrates and evaluates under a spinner, reports the accuracy figures on stderr, and
/// returns the parameters with the SmoothQuant copy of the model (if any).
fn calibrate(s: &Setup) -> Result<(ModelParams, Option<Model>)> {
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
    Ok((outcome.params, outcome.smoothed))
}

/// ", float: NAMES" for the layers `params` leave in float, or empty when there are none.
fn float_layers_note(params: &ModelParams) -> String {
    let float: Vec<&str> = params
        .layers
        .iter()
        .filter(|l| l.weight.is_none())
        .map(|l| l.name.as_str())
        .collect();
    if float.is_empty() {
        String::new()
    } else {
        format!(", float: {}", float.join(", "))
    }
}

/// Writes the parameters file (.json or .toml) and says so.
fn write_params(job: &Job) -> Result<()> {
    let (args, model) = (job.args, &job.s.model);
    save_params(&args.out, model, job.params)?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    outln!(
        "wrote {}: parameters of {} (sha256 {}…), input + {} weight layers{}, {} bytes",
        args.out.display(),
        model.name,
        &model.sha256[..12.min(model.sha256.len())],
        job.layers,
        job.float,
        bytes(size)
    )?;
    Ok(())
}

/// Writes the QDQ ONNX model and says so.
fn write_qdq_onnx(job: &Job) -> Result<()> {
    let (args, model) = (job.args, &job.s.model);
    let opts = QdqOptions {
        native_int4: args.native_int4,
        qdq_clip: args.qdq_clip,
    };
    let size = save_qdq_model(&args.out, model, job.params, opts)?;
    outln!(
        "wrote {}: {} as QDQ ONNX (opset 21; {} weight layers{}), {} bytes",
        args.out.display(),
        model.name,
        job.layers,
        job.float,
        bytes(size)
    )?;
    Ok(())
}

/// Writes the TensorRT calibration cache and says so.
fn write_trt_cache(job: &Job) -> Result<()> {
    let (args, model) = (job.args, &job.s.model);
    let n = save_trt_cache(&args.out, model, job.params, &args.trt_header)?;
    outln!(
        "wrote {}: TensorRT calibration cache of {} ({n} tensors, header {})",
        args.out.display(),
        model.name,
        args.trt_header
    )?;
    Ok(())
}

/// Writes the quantized .safetensors model and says so, with its size against the input's.
fn write_quantized_model(job: &Job) -> Result<()> {
    let (args, s) = (job.args, job.s);
    let size = save_quantized_model(&args.out, &s.model, job.params)?;
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
        "wrote {}: quantized {} ({} weight layers{}), {} bytes{against}",
        args.out.display(),
        s.model.name,
        job.layers,
        job.float,
        bytes(size)
    )?;
    Ok(())
}
