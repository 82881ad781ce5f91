//! Turning flags and a config file into a loaded model, data sets and a quantization config.

use super::args::Common;
use anyhow::{Context, Result, bail};
use qscope::config::ConfigFile;
use qscope::model::{load_dataset, load_model};
use qscope::{Dataset, Model, QuantConfig, bundled};
use std::path::PathBuf;

/// Everything a command needs to run the pipeline.
pub struct Setup {
    /// The model.
    pub model: Model,
    /// Calibration data (first --calib-samples).
    pub calib: Dataset,
    /// Evaluation data.
    pub eval: Dataset,
    /// The resolved quantization config.
    pub config: QuantConfig,
    /// Parameters loaded with --params (used instead of calibrating).
    pub params: Option<qscope::params::ModelParams>,
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
    data.check_fits(model.input_len(), &model.input_shape)?;
    Ok(data)
}

/// Resolves flags over the config file over defaults, and loads everything.
pub fn setup(c: &Common) -> Result<Setup> {
    let file = match &c.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let mut config = QuantConfig::default();
    file.apply_to(&mut config);
    macro_rules! flag {
        ($($f:ident),*) => {$(if let Some(v) = c.$f.clone() { config.$f = v; })*};
    }
    flag!(
        weight_bits,
        act_bits,
        weight_strategy,
        act_strategy,
        percentile,
        granularity,
        weight_scheme,
        act_scheme,
        keep_float
    );
    let model_name = c
        .model
        .clone()
        .or(file.model.clone())
        .unwrap_or_else(|| "mnist-mlp".into());
    let spec = c.spec.clone().or(file.spec.clone());
    config.validate(None)?;
    let model = load_model_arg(&model_name, spec.as_ref())
        .with_context(|| format!("loading model '{model_name}'"))?;
    for note in &model.notes {
        eprintln!("qscope: note: {note}");
    }
    config.validate(Some(&model))?;
    let mut calib = load_data(
        c.calib.as_ref().or(file.calib.as_ref()),
        &model,
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
        &model,
        "eval",
        bundled::test,
    )?;
    let params = match &c.params {
        Some(p) => Some(qscope::export::load_params(p, &model, c.force)?),
        None => None,
    };
    Ok(Setup {
        model,
        calib,
        eval,
        config,
        params,
    })
}
