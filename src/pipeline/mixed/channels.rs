//! The sensitivity table by output channel (`qscope mixed --unit channel`): with every searched
//! layer at the top candidate and its activation ranges, each output channel alone is lowered to
//! each lower candidate (its row of weights and its scale taken from the run with the whole
//! layer at that width), and the output noise-to-signal ratio against the float model is
//! measured on the first calibration samples. The integer engine runs the nodes before the
//! channel's layer once per layer and only the rest once per channel and candidate.

use super::greedy::SensitivityTable;
use super::{MixedLayer, Units, config_with_bits};
use crate::config::QuantConfig;
use crate::engine::IntModel;
use crate::error::{Error, Result};
use crate::model::{Dataset, Model};
use crate::params::ModelParams;
use crate::pipeline::{Cancel, Session, make_batch};
use crate::quant::weights::QWeights;
use rayon::prelude::*;

/// Calibration samples a channel's noise is measured on, at most.
pub const CHANNEL_SAMPLES: usize = 512;

/// Σ (q − f)² / Σ f² over two outputs of the same length.
fn nsr(q: &[f32], f: &[f32], signal: f64) -> f64 {
    let e: f64 = q.iter().zip(f).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    e / signal.max(f64::MIN_POSITIVE)
}

/// The quantized weights of each searched layer in `params` (in `layers` order).
fn layer_weights(params: &ModelParams, layers: &[MixedLayer]) -> Result<Vec<QWeights>> {
    layers
        .iter()
        .map(|l| {
            let w = params.by_name(&l.name).and_then(|p| p.weight.as_ref());
            w.map(|w| w.q.clone()).ok_or_else(|| {
                Error::config(
                    "mixed",
                    format!("layer '{}' has no integer weights", l.name),
                )
            })
        })
        .collect()
}

/// `q` with output channel `r` (its integers, scales and ranges) taken from `from`.
fn with_row(q: &mut QWeights, from: &QWeights, r: usize) {
    let cols = q.cols;
    q.q[r * cols..(r + 1) * cols].copy_from_slice(&from.q[r * cols..(r + 1) * cols]);
    let per_row = q.params.len() / q.rows.max(1);
    let blocks = r * per_row..(r + 1) * per_row;
    q.params[blocks.clone()].copy_from_slice(&from.params[blocks.clone()]);
    q.ranges[blocks.clone()].copy_from_slice(&from.ranges[blocks]);
}

/// The table by channel: a row per (layer, channel) unit, in layer then channel order. `tick`
/// follows the runs (one per layer and lower candidate).
pub(super) fn measure(
    session: &mut Session,
    config: &QuantConfig,
    layers: &[MixedLayer],
    candidates: &[u8],
    cancel: &Cancel,
    tick: &mut dyn FnMut(usize),
) -> Result<(SensitivityTable, Units)> {
    let (nl, nc) = (layers.len(), candidates.len());
    let mut runs = Vec::with_capacity(nc);
    for &b in candidates {
        let out = session.run(&config_with_bits(config, layers, &vec![b; nl]), cancel)?;
        tick(1);
        runs.push(out);
    }
    let model: &Model = runs[0].model_or(&session.model);
    let base = &runs[0].params;
    let lowered: Vec<Vec<QWeights>> = runs
        .iter()
        .map(|o| layer_weights(&o.params, layers))
        .collect::<Result<_>>()?;
    let calib: &Dataset = &session.calib;
    let n = calib.n.min(CHANNEL_SAMPLES);
    let batch = || make_batch(model, calib, 0, n);
    let float = crate::engine::float::forward(model, batch()?, usize::MAX, |_, _| {})?;
    let float = float[0].to_f32_vec();
    let signal: f64 = float.iter().map(|&v| (v as f64).powi(2)).sum();
    let top = IntModel::new(model, base, usize::MAX);
    let base_nsr = nsr(
        &top.forward(batch()?, |_, _, _, _| {})?[0].to_f32_vec(),
        &float,
        signal,
    );
    let mut table = SensitivityTable {
        candidates: candidates.to_vec(),
        ..Default::default()
    };
    table.base_nsr = base_nsr;
    let mut units = Vec::new();
    for (l, layer) in layers.iter().enumerate() {
        cancel.check()?;
        let li = params_index(base, &layer.name)?;
        let node = base.layers[li].index;
        let start = top.cut_at_or_before(node);
        let prefix = top.forward_prefix(batch()?, start)?;
        let rows = layer.channels;
        let cells: Vec<(usize, usize)> = (0..rows)
            .flat_map(|r| (1..nc).map(move |k| (r, k)))
            .collect();
        let measured: Vec<f64> = cells
            .par_iter()
            .map(|&(r, k)| -> Result<f64> {
                cancel.check()?;
                let mut p = base.clone();
                let w = p.layers[li].weight.as_mut().expect("searched layer");
                with_row(&mut w.q, &lowered[k][l], r);
                let int = IntModel::new(model, &p, usize::MAX);
                let y = int.forward_resume(prefix.clone(), start, |_, _, _, _| {})?;
                Ok(nsr(&y[0].to_f32_vec(), &float, signal))
            })
            .collect::<Result<_>>()?;
        for r in 0..rows {
            // Fewer bits are never predicted better (a lower measurement is noise).
            let mut row = vec![base_nsr; nc];
            for k in 1..nc {
                row[k] = measured[r * (nc - 1) + k - 1].max(row[k - 1]);
            }
            table.nsr.push(row);
            table.params.push(layer.params / rows as u64);
            units.push((l, Some(r)));
        }
        tick(nc - 1);
    }
    Ok((table, units))
}

/// The position of layer `name` in `params.layers`.
fn params_index(params: &ModelParams, name: &str) -> Result<usize> {
    params
        .layers
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| Error::config("mixed", format!("no parameters for layer '{name}'")))
}
