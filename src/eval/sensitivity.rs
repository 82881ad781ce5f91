//! Per-layer sensitivity: accuracy and agreement when one weight layer alone is at a given bit
//! width and every other layer is as configured.

use crate::config::QuantConfig;
use crate::error::Result;

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
        o.weight_bits = Some(bits);
    }
    if matches!(target, Target::Activations | Target::Both) {
        o.act_bits = Some(bits);
    }
    c
}

/// Runs the sweep on `session`'s model and data; `progress(done, total)` is called after each run.
pub fn sensitivity(
    session: &mut Session,
    config: &QuantConfig,
    bits: &[u8],
    target: Target,
    cancel: &Cancel,
    mut progress: impl FnMut(usize, usize),
) -> Result<Sensitivity> {
    for &b in bits {
        crate::quant::scheme::check_bits("bits", b)?;
    }
    let base = session.run(config, cancel)?.report;
    let model = &session.model;
    let names: Vec<String> = model
        .weight_layers()
        .iter()
        .map(|&i| model.layers[i].name.clone())
        .collect();
    let model_name = model.name.clone();
    let total = names.len() * bits.len();
    let mut rows = Vec::with_capacity(total);
    for name in &names {
        for &b in bits {
            let r = session
                .run(&with_layer_bits(config, name, b, target), cancel)?
                .report;
            rows.push(SensitivityRow {
                layer: name.to_string(),
                bits: b,
                quant_accuracy: r.quant_accuracy,
                agreement: r.agreement,
                output_sqnr_db: r.output_sqnr_db,
            });
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
