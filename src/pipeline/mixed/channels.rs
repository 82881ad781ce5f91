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
use crate::eval::sqnr::SqnrAcc;
use crate::params::ModelParams;
use crate::pipeline::{Cancel, Session, make_batch};
use crate::quant::weights::QWeights;
use rayon::prelude::*;

/// Calibration samples a channel's noise is measured on, at most.
pub const CHANNEL_SAMPLES: usize = 512;

/// Σ (q − f)² / Σ f² of an output `q` against the float output `f`.
fn nsr(f: &[f32], q: &[f32]) -> f64 {
    let mut acc = SqnrAcc::default();
    acc.add(f, q);
    acc.noise / acc.signal.max(f64::MIN_POSITIVE)
}

/// `q` with output channel `r` (its integers, scales and ranges) taken from `from`.
fn with_row(q: &mut QWeights, from: &QWeights, r: usize) {
    let cols = q.cols;
    q.q[r * cols..(r + 1) * cols].copy_from_slice(&from.q[r * cols..(r + 1) * cols]);
    let blocks = q.row_blocks(r);
    q.params[blocks.clone()].copy_from_slice(&from.params[blocks.clone()]);
    q.ranges[blocks.clone()].copy_from_slice(&from.ranges[blocks]);
}

/// The integer weights of layer `li` of `params` (a searched layer has them).
fn weights_of(params: &ModelParams, li: usize) -> Result<&QWeights> {
    let lp = &params.layers[li];
    lp.weight.as_ref().map(|w| &w.q).ok_or_else(|| {
        Error::config(
            "mixed",
            format!("layer '{}' has no integer weights", lp.name),
        )
    })
}

/// The table by channel: a row per (layer, channel) unit, in layer then channel order. `tick`
/// follows the runs (one per candidate, then one per layer and lower candidate).
pub(super) fn measure(
    session: &mut Session,
    config: &QuantConfig,
    layers: &[MixedLayer],
    candidates: &[u8],
    cancel: &Cancel,
    tick: &mut dyn FnMut(usize),
) -> Result<(SensitivityTable, Units)> {
    let (nl, nc) = (layers.len(), candidates.len());
    // Every searched layer at each candidate: the rows a channel takes when lowered.
    let mut runs = Vec::with_capacity(nc);
    for &b in candidates {
        let out = session.run(&config_with_bits(config, layers, &vec![b; nl]), cancel)?;
        tick(1);
        runs.push(out);
    }
    let model = runs[0].model_or(&session.model);
    let base = &runs[0].params;
    let inputs = make_batch(
        model,
        &session.calib,
        0,
        session.calib.n.min(CHANNEL_SAMPLES),
    )?;
    let float = crate::engine::float::forward_outputs(model, inputs.clone(), usize::MAX)?;
    let float = float[0].to_f32_vec();
    let top = IntModel::new(model, base, usize::MAX);
    let kernels = top.kernels();
    let base_nsr = nsr(
        &float,
        &top.forward_outputs(inputs.clone())?[0].to_f32_vec(),
    );
    let mut table = SensitivityTable {
        candidates: candidates.to_vec(),
        base_nsr,
        ..Default::default()
    };
    let mut units = Vec::new();
    for (l, layer) in layers.iter().enumerate() {
        cancel.check()?;
        let li = base
            .layers
            .iter()
            .position(|p| p.name == layer.name)
            .ok_or_else(|| {
                Error::config("mixed", format!("no parameters for layer '{}'", layer.name))
            })?;
        let lowered: Vec<&QWeights> = runs
            .iter()
            .map(|o| weights_of(&o.params, li))
            .collect::<Result<_>>()?;
        let start = top.cut_at_or_before(base.layers[li].index);
        let prefix = top.forward_prefix(inputs.clone(), start)?;
        let rows = layer.channels;
        let cells: Vec<(usize, usize)> = (0..rows)
            .flat_map(|r| (1..nc).map(move |k| (r, k)))
            .collect();
        let measured: Vec<f64> = cells
            .par_iter()
            .map(|&(r, k)| -> Result<f64> {
                cancel.check()?;
                let mut p = base.clone();
                let w = p.layers[li].weight.as_mut().expect("checked by weights_of");
                with_row(&mut w.q, lowered[k], r);
                // One layer's kernel changes: the others are `top`'s.
                let int = IntModel::reusing(model, &p, usize::MAX, (&kernels, base));
                let y = int.forward_resume_outputs(prefix.clone(), start)?;
                Ok(nsr(&float, &y[0].to_f32_vec()))
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
