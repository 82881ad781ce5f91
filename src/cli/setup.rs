//! Turning flags and a config file into a loaded model, data sets and a quantization config.

use super::args::Common;
use super::out::errln;
use anyhow::{Context, Result, bail};
use qscope::config::ConfigFile;
use qscope::model::{load_dataset, load_model};
use qscope::{Dataset, Model, QuantConfig, bundled};
use std::path::PathBuf;

/// Everything a command needs to run the pipeline.
pub struct Setup {
    /// The model (with a --params file's SmoothQuant migrations applied).
    pub model: Model,
    /// Calibration data (first --calib-samples).
    pub calib: Dataset,
    /// Evaluation data.
    pub eval: Dataset,
    /// The resolved quantization config.
    pub config: QuantConfig,
    /// Parameters loaded with --params, or those of a quantized model file (used instead of
    /// calibrating).
    pub params: Option<qscope::params::ModelParams>,
    /// Whether the model has float weights (false for a quantized model file: float-side
    /// figures are then null).
    pub has_float: bool,
    /// Where `params` came from when not calibrated: a --params file, a quantized model file or
    /// a QDQ model's Q/DQ nodes.
    pub params_origin: Option<String>,
    /// Size in bytes of the model file (or bundled model).
    pub model_file_bytes: u64,
}

/// The quantization options that were given on the command line or in the config file (they
/// have no effect when parameters are loaded instead of calibrated).
fn quant_options_given(c: &Common, file: &ConfigFile) -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! given {
        ($($f:ident => $flag:literal),*) => {$(if c.$f.is_some() || file.$f.is_some() { v.push($flag); })*};
    }
    given!(weight_bits => "--weight-bits", act_bits => "--act-bits", weight_strategy => "--weight-strategy",
        act_strategy => "--act-strategy", percentile => "--percentile", granularity => "--granularity",
        weight_scheme => "--weight-scheme", act_scheme => "--act-scheme", keep_float => "--keep-float",
        weight_rounding => "--weight-rounding");
    for (on, flag) in [
        (
            c.bias_correction || file.bias_correction.is_some(),
            "--bias-correction",
        ),
        (c.act_refine || file.act_refine.is_some(), "--act-refine"),
        (c.cle || file.cle.is_some(), "--cle"),
        (
            c.smoothquant.is_some() || file.smoothquant.is_some(),
            "--smoothquant",
        ),
        (
            c.gptq_act_order || file.gptq_act_order.is_some(),
            "--gptq-act-order",
        ),
    ] {
        if on {
            v.push(flag);
        }
    }
    if !file.layers.is_empty() {
        v.push("[layers.NAME] tables");
    }
    v
}

/// A model argument loaded: float weights, or a quantized model file (§6) with its parameters.
pub enum LoadedModel {
    /// Float weights.
    Float(Model),
    /// A quantized model file.
    Quantized(qscope::export::QuantizedModel),
    /// A QDQ ONNX file: its float graph and the parameters its Q/DQ nodes fix.
    Qdq(Model, qscope::export::Resolved),
}

/// Loads a model argument of either kind; also returns the file's size in bytes.
pub fn load_any_model(name: &str, spec: Option<&PathBuf>) -> Result<(LoadedModel, u64)> {
    if let Some(b) = bundled::model_bytes(name)
        && !std::path::Path::new(name).exists()
    {
        return Ok((
            LoadedModel::Float(load_model_arg(name, spec)?),
            b.len() as u64,
        ));
    }
    let path = std::path::Path::new(name);
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        if let Some(p) = spec {
            bail!(
                "--spec {}: an ONNX model carries its own graph",
                p.display()
            );
        }
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let (model, qdq) = qscope::model::onnx::load_onnx_qdq(path)?;
        return Ok(match qdq {
            Some(q) => {
                let label = path.display().to_string();
                let r = qscope::export::qdq_import::qdq_params(&label, &model, &q)?;
                (LoadedModel::Qdq(model, r), size)
            }
            None => (LoadedModel::Float(model), size),
        });
    }
    let bytes = qscope::input::read_bytes(path)?;
    if qscope::export::is_quantized_model(&bytes) {
        if spec.is_some() {
            bail!("--spec: the quantized model '{name}' carries its own spec");
        }
        let q = qscope::export::load_quantized_bytes(&path.display().to_string(), &bytes)?;
        return Ok((LoadedModel::Quantized(q), bytes.len() as u64));
    }
    Ok((
        LoadedModel::Float(load_model_arg(name, spec)?),
        bytes.len() as u64,
    ))
}

/// Loads the model named by a flag or config value: a bundled name or a path.
pub fn load_model_arg(name: &str, spec: Option<&PathBuf>) -> Result<Model> {
    if bundled::MODEL_NAMES.contains(&name) && !std::path::Path::new(name).exists() {
        if spec.is_some() {
            bail!("--spec: the bundled model '{name}' carries its own spec");
        }
        return Ok(bundled::model(name)?);
    }
    Ok(load_model(
        std::path::Path::new(name),
        spec.map(PathBuf::as_path),
    )?)
}

fn load_data(
    path: Option<&PathBuf>,
    model: &Model,
    which: &str,
    bundled: fn() -> Dataset,
) -> Result<Dataset> {
    let data = match path {
        Some(p) => load_dataset(p)?,
        None if model.input_len() == 784 => bundled(),
        None => bail!(
            "--{which}: model '{}' takes {} inputs per sample, so the bundled MNIST set does not fit; give --{which} FILE",
            model.name,
            model.input_len()
        ),
    };
    qscope::pipeline::check_data(model, &data)?;
    Ok(data)
}

/// Resolves flags over the config file over defaults, and loads everything.
pub fn setup(c: &Common) -> Result<Setup> {
    let file = match &c.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let mut config = flags_over_file(c, &file);
    let model_name = c
        .model
        .clone()
        .or(file.model.clone())
        .unwrap_or_else(|| "mnist-mlp".into());
    let spec = c.spec.clone().or(file.spec.clone());
    config.validate(None)?;
    let (loaded, model_file_bytes) = load_any_model(&model_name, spec.as_ref())
        .with_context(|| format!("loading model '{model_name}'"))?;
    let (mut model, mut params, mut origin, has_float) = match loaded {
        LoadedModel::Float(m) => (m, None, None, true),
        LoadedModel::Quantized(q) => {
            if c.params.is_some() {
                bail!("--params: the quantized model '{model_name}' carries its own parameters");
            }
            let origin = "stored in the quantized model".to_string();
            (q.model, Some(q.params), Some(origin), false)
        }
        LoadedModel::Qdq(m, r) => {
            for note in &r.notes {
                errln!("qscope: warning: {note}");
            }
            let origin = format!("read from the Q/DQ nodes of {model_name}");
            (m, Some(r.params), Some(origin), true)
        }
    };
    override_normalization(c, &mut model)?;
    if let Some(m) = c.max_tensor_mib {
        config.max_tensor_mib = m;
    }
    for note in &model.notes {
        errln!("qscope: note: {note}");
    }
    if let Some(p) = &c.params {
        let mut r = qscope::export::load_params_with_notes(p, &model, c.force)?;
        // The parameters of a SmoothQuant run refer to the model with its migrations applied.
        if let Some(m) = r.smoothed.take() {
            model = *m;
        }
        for note in &r.notes {
            errln!("qscope: warning: {note}");
        }
        params = Some(r.params);
        origin = Some(format!("loaded from {}", p.display()));
    }
    if let Some(p) = &params {
        config = config_of_params(c, &file, p, (origin.as_deref(), config.max_tensor_mib));
    }
    config.validate(Some(&model))?;
    let (calib, eval) = load_sets(c, &file, &model)?;
    Ok(Setup {
        model,
        calib,
        eval,
        config,
        params,
        has_float,
        params_origin: origin,
        model_file_bytes,
    })
}

/// The defaults, then the config file's settings, then the flags': flags win over the file,
/// being one more layer of the same overrides.
fn flags_over_file(c: &Common, file: &ConfigFile) -> QuantConfig {
    let mut config = QuantConfig::default();
    file.apply_to(&mut config);
    ConfigFile {
        weight_bits: c.weight_bits,
        act_bits: c.act_bits,
        weight_strategy: c.weight_strategy,
        act_strategy: c.act_strategy,
        percentile: c.percentile,
        granularity: c.granularity,
        weight_scheme: c.weight_scheme,
        act_scheme: c.act_scheme,
        keep_float: c.keep_float.clone(),
        bias_correction: c.bias_correction.then_some(true),
        act_refine: c.act_refine.then_some(true),
        cle: c.cle.then_some(true),
        smoothquant: c.smoothquant,
        weight_rounding: c.weight_rounding,
        gptq_act_order: c.gptq_act_order.then_some(true),
        ..Default::default()
    }
    .apply_to(&mut config);
    config
}

/// `--input-mean`/`--input-std` on an ONNX model (a spec model's spec sets them): positive
/// finite deviations and finite means.
fn override_normalization(c: &Common, model: &mut Model) -> Result<()> {
    if c.input_mean.is_none() && c.input_std.is_none() {
        return Ok(());
    }
    if !model.is_onnx() {
        bail!(
            "--input-mean/--input-std: the model's spec sets its normalization (input_mean, input_std)"
        );
    }
    model.input_mean = c.input_mean.clone().unwrap_or_default();
    model.input_std = c.input_std.clone().unwrap_or_default();
    if let Some(v) = model.input_std.iter().find(|v| !v.is_normal() || **v < 0.0) {
        bail!("--input-std: {v} is not a positive finite number");
    }
    if let Some(v) = model.input_mean.iter().find(|v| !v.is_finite()) {
        bail!("--input-mean: {v} is not finite");
    }
    Ok(())
}

/// The config that loaded (or stored) parameters `p` stand for, keeping `max_tensor_mib`; a
/// note names the quantization options given that they make moot (`origin`: where the
/// parameters came from).
fn config_of_params(
    c: &Common,
    file: &ConfigFile,
    p: &qscope::params::ModelParams,
    (origin, max_tensor_mib): (Option<&str>, u64),
) -> QuantConfig {
    let ignored = quant_options_given(c, file);
    if !ignored.is_empty() {
        errln!(
            "qscope: note: {} ignored: the parameters are {}, not calibrated",
            ignored.join(", "),
            origin.unwrap_or("loaded")
        );
    }
    let mut config = qscope::export::config_from_params(p);
    config.max_tensor_mib = max_tensor_mib;
    config
}

/// The calibration set (cut to `--calib-samples`) and the evaluation set, whose labels must
/// fit the model's outputs.
fn load_sets(c: &Common, file: &ConfigFile, model: &Model) -> Result<(Dataset, Dataset)> {
    let mut calib = load_data(
        c.calib.as_ref().or(file.calib.as_ref()),
        model,
        "calib",
        bundled::calib,
    )?;
    if let Some(n) = c.calib_samples.or(file.calib_samples) {
        if n == 0 {
            bail!("--calib-samples: 0 leaves an empty calibration set");
        }
        calib = calib.take(n);
    }
    let eval = load_data(
        c.eval_set.as_ref().or(file.eval.as_ref()),
        model,
        "eval",
        bundled::test,
    )?;
    eval.check_labels(model.output_len())?;
    Ok((calib, eval))
}
