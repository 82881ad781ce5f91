//! Exporting and loading quantization parameters (formats.md §5) and quantized models (§6),
//! histogram plots of a layer, and the calibration activations as integers.
//! Every write goes to a temporary file in the target folder and is renamed into place.

pub mod atomic;
pub mod dump;
pub mod mixed_plot;
pub mod onnx;
pub mod outputs;
pub mod packing;
pub mod params_file;
pub mod plot;
pub mod qdq_import;
pub mod quantized_model;
pub mod st;
pub mod trt_cache;

pub use params_file::{FORMAT, ParamsFile, Resolved, Syntax};
pub use quantized_model::{QuantizedModel, is_quantized_model, load_quantized_bytes};

use crate::config::QuantConfig;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::params::ModelParams;
use crate::quant::Strategy;
use params_file::WeightInts;
use std::path::Path;

/// What a target path's extension asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// Parameters as JSON (§5).
    Json,
    /// Parameters as TOML (§5).
    Toml,
    /// A quantized model (§6).
    Safetensors,
    /// An ONNX model with the quantization as QuantizeLinear/DequantizeLinear (§6b).
    Onnx,
    /// A TensorRT calibration cache (§6c).
    TrtCache,
}

impl ExportKind {
    /// The kind named by `path`'s extension, or an error that lists the ones that exist.
    pub fn of_path(path: &Path) -> Result<ExportKind> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json") => Ok(ExportKind::Json),
            Some("toml") => Ok(ExportKind::Toml),
            Some("safetensors") => Ok(ExportKind::Safetensors),
            Some("onnx") => Ok(ExportKind::Onnx),
            Some("cache") => Ok(ExportKind::TrtCache),
            _ => Err(Error::format(
                path.display().to_string(),
                "unknown export type: give a .json or .toml file (parameters), a .safetensors file (quantized model), a .onnx file (QDQ model) or a .cache file (TensorRT calibration cache)",
            )),
        }
    }
}

/// Checks, before any work, that `path` can be exported to: a known extension and a folder that
/// exists and can be written.
pub fn check_export_target(path: &Path) -> Result<ExportKind> {
    let kind = ExportKind::of_path(path)?;
    atomic::check_writable_file(path)?;
    Ok(kind)
}

/// The parameters file of `params`, checked: a file that would not load back is never written.
fn checked_file(path: &Path, model: &Model, params: &ModelParams) -> Result<ParamsFile> {
    let pf = ParamsFile::from_params(model, params);
    pf.resolve(
        &path.display().to_string(),
        model,
        false,
        WeightInts::FromModel,
    )
    .map_err(|e| {
        Error::format(
            path.display().to_string(),
            format!("refusing to write parameters that would not load back: {e}"),
        )
    })?;
    Ok(pf)
}

/// Writes `params` of `model` by the extension of `path`: `.json` or `.toml` the parameters
/// (§5), `.safetensors` a quantized model (§6). The write is atomic.
pub fn save_params(path: &Path, model: &Model, params: &ModelParams) -> Result<()> {
    match check_export_target(path)? {
        ExportKind::Json => atomic::write_bytes_atomic(
            path,
            checked_file(path, model, params)?.to_json().as_bytes(),
        ),
        ExportKind::Toml => atomic::write_bytes_atomic(
            path,
            checked_file(path, model, params)?.to_toml().as_bytes(),
        ),
        ExportKind::Safetensors => save_quantized_model(path, model, params).map(|_| ()),
        ExportKind::Onnx => {
            save_qdq_model(path, model, params, onnx::QdqOptions::default()).map(|_| ())
        }
        ExportKind::TrtCache => {
            save_trt_cache(path, model, params, trt_cache::DEFAULT_HEADER).map(|_| ())
        }
    }
}

/// Writes `model` with `params` as a QDQ ONNX file (§6b); returns its size in bytes. Parameters
/// that Q/DQ cannot say are refused before anything is written.
pub fn save_qdq_model(
    path: &Path,
    model: &Model,
    params: &ModelParams,
    opts: onnx::QdqOptions,
) -> Result<u64> {
    atomic::check_writable_file(path)?;
    // A bias that a method replaced (bias correction, CLE) goes out as the model's bias.
    let with_bias;
    let model = if params
        .layers
        .iter()
        .any(|l| l.weight.as_ref().is_some_and(|w| w.bias.is_some()))
    {
        with_bias = model_with_param_biases(model, params);
        &with_bias
    } else {
        model
    };
    let bytes = onnx::onnx_model_bytes(model, Some(params), opts)
        .map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
    atomic::write_bytes_atomic(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// A copy of `model` whose quantized layers carry the biases `params` replaced.
pub fn model_with_param_biases(model: &Model, params: &ModelParams) -> Model {
    let mut m = model.clone();
    for lp in &params.layers {
        if let Some(nb) = lp.weight.as_ref().and_then(|w| w.bias.as_ref())
            && let Some((_, b)) = m.layers[lp.index].op.weight_bias_mut()
        {
            b.copy_from_slice(nb);
        }
    }
    m
}

/// Writes the TensorRT calibration cache of `params` (§6c) with `header`; returns the number
/// of tensors written.
pub fn save_trt_cache(
    path: &Path,
    model: &Model,
    params: &ModelParams,
    header: &str,
) -> Result<usize> {
    atomic::check_writable_file(path)?;
    if header.is_empty() || header.contains(['\n', '\r']) {
        return Err(Error::config("--trt-header", "must be one non-empty line"));
    }
    let text = trt_cache::cache_text(model, params, header);
    atomic::write_bytes_atomic(path, text.as_bytes())?;
    Ok(text.lines().count() - 1)
}

/// Writes the quantized model file (§6) of `model` with `params`; returns its size in bytes.
pub fn save_quantized_model(path: &Path, model: &Model, params: &ModelParams) -> Result<u64> {
    atomic::check_writable_file(path)?;
    let bytes = quantized_model::quantized_model_bytes(model, params)?;
    atomic::write_bytes_atomic(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// Reads a quantized model file (§6).
pub fn load_quantized_model(path: &Path) -> Result<QuantizedModel> {
    let bytes = crate::input::read_bytes(path)?;
    load_quantized_bytes(&path.display().to_string(), &bytes)
}

/// Parses a parameters file's text (JSON or TOML by the extension, else by its first character).
pub fn parse_params_file(path: &Path) -> Result<ParamsFile> {
    let label = path.display().to_string();
    let text = crate::input::read_text(path)?;
    let syntax = Syntax::of_path(path).unwrap_or(if text.trim_start().starts_with('{') {
        Syntax::Json
    } else {
        Syntax::Toml
    });
    ParamsFile::parse(&label, &text, syntax)
}

/// Loads parameters for `model` from a JSON or TOML file; a file made for another model is
/// refused unless `force`. The notes say what differs when `force` let a mismatch through.
/// A file with SmoothQuant migrations is resolved against `model` with them re-applied: that
/// model is the result's `smoothed`.
pub fn load_params_with_notes(path: &Path, model: &Model, force: bool) -> Result<Resolved> {
    let pf = parse_params_file(path)?;
    let label = path.display().to_string();
    let entries = pf.smooth_entries(&label)?;
    let smoothed = if entries.is_empty() {
        None
    } else {
        Some(crate::pipeline::smoothquant::replay(
            model, &entries, &label,
        )?)
    };
    let mut r = pf.resolve(
        &label,
        smoothed.as_ref().unwrap_or(model),
        force,
        WeightInts::FromModel,
    )?;
    r.smoothed = smoothed.map(Box::new);
    Ok(r)
}

/// Loads parameters for `model` from a JSON or TOML file; a file made for another model is
/// refused unless `force`. (A file with SmoothQuant migrations refers to the model
/// [`load_params_with_notes`] returns with them.)
pub fn load_params(path: &Path, model: &Model, force: bool) -> Result<ModelParams> {
    load_params_with_notes(path, model, force).map(|r| r.params)
}

/// The configuration that `params` express: globals from the input point and the first
/// quantized layer, per-layer overrides where a layer differs, float layers in `keep_float`.
/// (For reports and the UI when parameters were loaded rather than calibrated.)
pub fn config_from_params(params: &ModelParams) -> QuantConfig {
    let mut c = QuantConfig::default();
    let first = params
        .points
        .first()
        .map(|p| &p.act)
        .or_else(|| params.layers.iter().find_map(|l| l.act.as_ref()));
    if let Some(first) = first {
        let input = first.settings;
        c.act_bits = input.bits;
        c.act_scheme = input.scheme;
        c.act_strategy = if input.strategy == Strategy::Manual {
            c.act_strategy
        } else {
            input.strategy
        };
        c.percentile = input.percentile;
    }
    if let Some(w) = params.layers.iter().find_map(|l| l.weight.as_ref()) {
        c.weight_bits = w.settings.bits;
        c.weight_scheme = w.settings.scheme;
        c.granularity = w.settings.granularity;
        c.weight_strategy = if w.settings.strategy == Strategy::Manual {
            c.weight_strategy
        } else {
            w.settings.strategy
        };
    }
    params.to_config(&c)
}
