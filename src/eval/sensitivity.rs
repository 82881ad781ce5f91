//! Per-layer sensitivity: accuracy and agreement when one weight layer alone is at a given bit
//! width and every other layer is as configured.

use crate::config::QuantConfig;
use crate::error::Result;
use crate::model::{Dataset, Model};

use crate::pipeline::{Cancel, Session};
use serde::{Deserialize, Serialize};

/// Which bit width a sensitivity sweep changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The layer's weight bits.
    Weights,
    /// The layer's output activation bits.
    Activations,
    /// Both.
    Both,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "weights" => Ok(Target::Weights),
            "activations" => Ok(Target::Activations),
            "both" => Ok(Target::Both),
            _ => Err(format!(
                "unknown target '{s}' (expected weights, activations or both)"
            )),
        }
    }
}

/// One (layer, bits) measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityRow {
    /// Layer name.
    pub layer: String,
    /// The bit width this layer was set to.
    pub bits: u8,
    /// Integer-engine top-1 (null without labels).
    pub quant_accuracy: Option<f64>,
    /// Agreement with the float model.
    pub agreement: Option<f64>,
    /// Final output SQNR.
    pub output_sqnr_db: Option<f64>,
}

impl SensitivityRow {
    /// The row for `layer` at `bits` from that run's report.
    fn of(layer: &str, bits: u8, r: &crate::eval::report::Report) -> Self {
        SensitivityRow {
            layer: layer.to_string(),
            bits,
            quant_accuracy: r.quant_accuracy,
            agreement: r.agreement,
            output_sqnr_db: r.output_sqnr_db,
        }
    }
}

/// A whole sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// Model name.
    pub model: String,
    /// What was changed.
    pub target: Target,
    /// The bit widths tried.
    pub bits: Vec<u8>,
    /// Float top-1 for reference.
    pub fp32_accuracy: Option<f64>,
    /// Integer top-1 with the configuration as given.
    pub baseline_accuracy: Option<f64>,
    /// One row per (layer, bits), layers in network order.
    pub rows: Vec<SensitivityRow>,
}

/// `config` with layer `name` alone at `bits` for `target` (and taken out of keep_float).
pub fn with_layer_bits(config: &QuantConfig, name: &str, bits: u8, target: Target) -> QuantConfig {
    let mut c = config.clone();
    c.keep_float.retain(|n| n != name);
    let o = c.layer_mut(name);
    if matches!(target, Target::Weights | Target::Both) {
        o.set_weight_bits(bits);
    }
    if matches!(target, Target::Activations | Target::Both) {
        o.act_bits = Some(bits);
    }
    c
}

/// The sweep both entry points share: checks `bits`, runs the baseline, then one run per
/// (layer `j`, bits) through `run_one(j, bits)` (`None` = the configuration as given).
fn sweep(
    model_name: String,
    layers: &[String],
    bits: &[u8],
    target: Target,
    mut run_one: impl FnMut(Option<(usize, u8)>) -> Result<crate::eval::report::Report>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Sensitivity> {
    for &b in bits {
        crate::quant::scheme::check_bits("bits", b)?;
    }
    let base = run_one(None)?;
    let total = layers.len() * bits.len();
    let mut rows = Vec::with_capacity(total);
    for (j, name) in layers.iter().enumerate() {
        for &b in bits {
            rows.push(SensitivityRow::of(name, b, &run_one(Some((j, b)))?));
            progress(rows.len(), total);
        }
    }
    Ok(Sensitivity {
        model: model_name,
        target,
        bits: bits.to_vec(),
        fp32_accuracy: base.fp32_accuracy,
        baseline_accuracy: base.quant_accuracy,
        rows,
    })
}

/// Runs the sweep on `session`'s model and data; `progress(done, total)` is called after each run.
pub fn sensitivity(
    session: &mut Session,
    config: &QuantConfig,
    bits: &[u8],
    target: Target,
    cancel: &Cancel,
    progress: impl FnMut(usize, usize),
) -> Result<Sensitivity> {
    let model = &session.model;
    let names: Vec<String> = model
        .weight_layers()
        .iter()
        .map(|&i| model.layers[i].name.clone())
        .collect();
    let model_name = model.name.clone();
    let run_one = |which: Option<(usize, u8)>| {
        let c = match which {
            None => config.clone(),
            Some((j, b)) => with_layer_bits(config, &names[j], b, target),
        };
        Ok(session.run(&c, cancel)?.report)
    };
    sweep(model_name, &names, bits, target, run_one, progress)
}

/// `params` with weight layer `j` alone at `bits` for `target`: its weights re-quantized from
/// the model's weights with its settings at `bits` (settings from `config` for a float layer),
/// its output activation re-quantized from its stored range at `bits`.
pub fn params_with_layer_bits(
    model: &Model,
    params: &crate::params::ModelParams,
    config: &QuantConfig,
    j: usize,
    bits: u8,
    target: Target,
) -> Result<crate::params::ModelParams> {
    let mut p = params.clone();
    let lp = &mut p.layers[j];
    if matches!(target, Target::Weights | Target::Both) {
        if lp.act.is_none() {
            return Err(crate::Error::config(
                format!("layers.{}", lp.name),
                "the parameters have no output qparams for this float layer, so it cannot be quantized",
            ));
        }
        let mut s = lp
            .weight
            .as_ref()
            .map_or_else(|| config.weight_settings(&lp.name), |w| w.settings);
        s.bits = bits;
        let (w, rows, cols) = model.layers[lp.index]
            .op
            .weight_rows()
            .expect("weight layer");
        lp.weight = Some(crate::params::WeightQuant {
            settings: s,
            q: crate::quant::weights::quantize_weights(w, rows, cols, &s),
            bias: None,
        });
    }
    if matches!(target, Target::Activations | Target::Both)
        && let Some(a) = &mut lp.act
    {
        a.settings.bits = bits;
        a.qparams = crate::quant::QParams::from_range(a.range, bits, a.settings.scheme);
    }
    Ok(p)
}

/// The sweep over ready-made parameters (a `--params` file or a quantized model) instead of
/// calibrating: see [`params_with_layer_bits`] for what one row changes. With `has_float ==
/// false` the weights re-quantized are the dequantized ones.
#[allow(clippy::too_many_arguments)]
pub fn sensitivity_params(
    model: &Model,
    params: &crate::params::ModelParams,
    eval: &Dataset,
    config: &QuantConfig,
    has_float: bool,
    bits: &[u8],
    target: Target,
    cancel: &Cancel,
    progress: impl FnMut(usize, usize),
) -> Result<Sensitivity> {
    use crate::pipeline::evaluate_params;
    let names: Vec<String> = params.layers.iter().map(|l| l.name.clone()).collect();
    let run_one = |which: Option<(usize, u8)>| {
        let p = match which {
            None => params.clone(),
            Some((j, b)) => params_with_layer_bits(model, params, config, j, b, target)?,
        };
        Ok(evaluate_params(model, p, eval, config, has_float, cancel)?.report)
    };
    sweep(model.name.clone(), &names, bits, target, run_one, progress)
}
