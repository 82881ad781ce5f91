//! Weight methods that work layer by layer, in topological order, on the calibration inputs each
//! weight layer sees in the quantized-weight network (earlier layers already rounded and
//! corrected, activations in float): GPTQ and AdaRound rounding. Bias correction
//! (`super::bias_correction`) reuses the input statistics.

use super::Cancel;
use super::batch::{Kept, fold_batches, make_batch};
use crate::config::{QuantConfig, WeightRounding};
use crate::engine::float::{Values, checked_conv_geom, op_geom, run_range};
use crate::engine::im2col::im2col_channels;
use crate::engine::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::{Dataset, Model, Op, ValueId};
use crate::params::WeightQuant;
use crate::quant::adaround::{AdaroundError, AdaroundOptions, adaround_rows};
use crate::quant::gptq::gptq_rows;
use crate::quant::weights::QWeights;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use std::sync::Mutex;

/// A weight layer's inputs over the calibration set, per channel group, as the patches its
/// matrix multiplies (a linear layer's input rows, a conv's im2col rows, padding included).
#[derive(Debug, Clone, PartialEq)]
pub struct InputStats {
    /// Patch length (in / groups · kh · kw).
    pub k: usize,
    /// Patches seen per group.
    pub count: usize,
    /// Per group: Σ x (length k).
    pub sum: Vec<Vec<f64>>,
    /// Per group: Σ x·xᵀ (k×k, row-major), when asked for.
    pub xxt: Option<Vec<Vec<f64>>>,
}

impl InputStats {
    pub(super) fn new(k: usize, groups: usize, second: bool) -> Self {
        InputStats {
            k,
            count: 0,
            sum: vec![vec![0.0; k]; groups],
            xxt: second.then(|| vec![vec![0.0; k * k]; groups]),
        }
    }

    /// The mean patch of group `g`.
    pub fn mean(&self, g: usize) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.sum[g].iter().map(|s| s / n).collect()
    }

    /// Adds the statistics of other patches `o` (of the same layer).
    pub(super) fn merge(&mut self, o: &InputStats) {
        self.count += o.count;
        for (a, b) in self.sum.iter_mut().zip(&o.sum) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        if let (Some(a), Some(b)) = (&mut self.xxt, &o.xxt) {
            for (a, b) in a.iter_mut().zip(b) {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            }
        }
    }

    /// Adds `rows` patches of group `g` (row-major, k each).
    fn add(&mut self, g: usize, patches: &[f32]) {
        let k = self.k;
        let rows = patches.len() / k.max(1);
        for row in patches.chunks(k.max(1)) {
            let sum = self.sum[g].iter_mut();
            sum.zip(row).for_each(|(s, &v)| *s += v as f64);
        }
        if let Some(h) = &mut self.xxt {
            let x: Vec<f64> = patches.iter().map(|&v| v as f64).collect();
            let xv = ArrayView2::from_shape((rows, k), &x).expect("patch matrix");
            let mut hv = ArrayViewMut2::from_shape((k, k), &mut h[g]).expect("k×k");
            general_mat_mul(1.0, &xv.t(), &xv, 1.0, &mut hv);
        }
    }
}

/// Adds one batch's input `x` of weight node `op` to `stats`.
pub(super) fn add_batch(
    op: &Op,
    x: &Tensor,
    limit: usize,
    stats: &mut InputStats,
) -> Result<(), String> {
    let xs = x.as_f32().ok_or("expects real-valued input")?;
    match op {
        Op::Conv2d {
            weight,
            stride,
            padding,
            dilation,
            groups,
            ..
        } => {
            let g = checked_conv_geom(
                &op_geom(weight, stride, padding, dilation, *groups),
                x,
                limit,
            )?;
            let n = x.shape[0];
            let cg = g.c / groups;
            // Sums alone take the patches a sample at a time (the same rows in the same order,
            // without the batch's patch matrix); Σ x·xᵀ takes the batch's in one product.
            let sample = (g.c * g.h * g.w).max(1);
            let per = if stats.xxt.is_some() { n } else { 1 };
            for gi in 0..*groups {
                for part in xs[..n * sample].chunks(per.max(1) * sample) {
                    let rows = part.len() / sample;
                    stats.add(gi, &im2col_channels(part, rows, &g, gi * cg, cg, 0.0));
                }
            }
            stats.count += n * g.out_pixels();
        }
        _ => {
            if x.shape.last() != Some(&stats.k) {
                return Err(format!(
                    "expects a last axis of {}, got shape {:?}",
                    stats.k, x.shape
                ));
            }
            stats.add(0, xs);
            stats.count += xs.len() / stats.k.max(1);
        }
    }
    Ok(())
}

/// Bytes of float values [`Prefix`] keeps at most; past it, the next layer's runs start from
/// the inputs.
const PREFIX_BYTES: usize = 256 << 20;

/// The calibration batches' float values just before node `at` (owned copies, in batch order),
/// where the next layer's statistics continue from; `None` when they would exceed
/// [`PREFIX_BYTES`] (runs then start from the inputs).
pub struct Prefix {
    at: usize,
    /// Per batch; a run takes its batch's values out (each is read once).
    batches: Option<Vec<Mutex<OwnedValues>>>,
}

/// One batch's owned float values, by value id.
type OwnedValues = Vec<(ValueId, Tensor)>;

impl Prefix {
    /// The start of a run: the inputs.
    pub fn inputs() -> Self {
        Prefix {
            at: 0,
            batches: None,
        }
    }
}

/// The input statistics of weight node `i` of `model` over `data` (Σ x·xᵀ when `second`), with
/// the nodes before `i` run from `from` (made by a model that computes the same before
/// `from.at`, whose values it takes); and the values just before node `i`, for the next layer.
pub fn input_stats(
    model: &Model,
    i: usize,
    data: &Dataset,
    (second, limit): (bool, usize),
    from: Prefix,
    cancel: &Cancel,
) -> Result<(InputStats, Prefix)> {
    let layer = &model.layers[i];
    let (_, _, k) = layer.op.weight_rows().expect("weight layer");
    let groups = layer.op.channel_groups();
    let target = layer.data_input().expect("a weight node has an input");
    let node_err = |m: String| Error::node(&model.source, &layer.name, layer.op.kind(), m);
    // Batches are summed in order, so that the sums (and the biases and roundings made from
    // them) are the same bit for bit on every run.
    let batch = |s: usize, e: usize| -> Result<_> {
        cancel.check()?;
        let (mut vals, start) = match &from.batches {
            Some(b) => {
                let owned = std::mem::take(&mut *b[s / super::BATCH].lock().expect("not poisoned"));
                (Values::from_owned(model, owned), from.at)
            }
            None => {
                let inputs = make_batch(model, data, s, e)?;
                super::calibrate::check_finite(model, data, s, &inputs)?;
                (Values::new(model, inputs), 0)
            }
        };
        run_range(model, &mut vals, start..i, limit, &mut |_, _| {})?;
        let x = vals
            .get(target)
            .ok_or_else(|| node_err("its input was not computed".into()))?;
        if x.as_f32().is_some_and(|v| v.iter().any(|x| !x.is_finite())) {
            let name = &layer.name;
            return Err(super::calibrate::float_overflow(model, data, s, name));
        }
        let mut st = InputStats::new(k, groups, second);
        add_batch(&layer.op, x, limit, &mut st).map_err(node_err)?;
        Ok((st, vals.into_owned_values()))
    };
    let (mut total, mut kept) = (InputStats::new(k, groups, second), Kept::new(PREFIX_BYTES));
    fold_batches(data.n, batch, |(st, vals)| {
        total.merge(&st);
        let bytes = vals.iter().map(|(_, t)| t.bytes()).sum();
        kept.push(vals, bytes);
    })?;
    let batches = (kept.finish()).map(|b| b.into_iter().map(Mutex::new).collect());
    Ok((total, Prefix { at: i, batches }))
}

/// Time spent in each layer-by-layer method, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayerwiseTimes {
    /// Collecting input statistics (forward passes).
    pub stats: f64,
    /// GPTQ rounding.
    pub gptq: f64,
    /// AdaRound rounding.
    pub adaround: f64,
}

/// Rounds rows `rows` of `qw` (float `w` of layer `name`) on their Hessian `h` with the
/// method `config.weight_rounding`.
fn round_rows(
    config: &QuantConfig,
    name: &str,
    (w, h): (&[f32], &[f64]),
    qw: &mut QWeights,
    rows: std::ops::Range<usize>,
    cancel: &Cancel,
) -> Result<()> {
    let bad = |m: String| Error::config(format!("layers.{name}"), m);
    match config.weight_rounding {
        WeightRounding::Gptq => {
            gptq_rows(w, h, qw, rows, config.gptq_act_order).map_err(|e| bad(e.to_string()))
        }
        WeightRounding::Adaround => {
            let stop = || cancel.is_cancelled();
            adaround_rows(w, h, qw, rows, &AdaroundOptions::default(), &stop).map_err(|e| match e {
                AdaroundError::Stopped => Error::Cancelled,
                e => bad(e.to_string()),
            })
        }
        WeightRounding::Nearest => Ok(()),
    }
}

/// Applies GPTQ or AdaRound (when `config.weight_rounding` says so) to `weights` of `model`,
/// layer by layer: each layer's statistics come from `model` with the layers before it already
/// replaced by their final quantized weights and biases. `weights` holds the nearest-rounded weights (their scales stay).
pub fn apply(
    model: &Model,
    config: &QuantConfig,
    weights: &mut [Option<WeightQuant>],
    data: &Dataset,
    cancel: &Cancel,
) -> Result<LayerwiseTimes> {
    let rounding = config.weight_rounding;
    let second = rounding != WeightRounding::Nearest;
    let mut times = LayerwiseTimes::default();
    if !second {
        return Ok(times);
    }
    let limit = config.max_sample_elems();
    let mut work = model.clone();
    let total = weights.iter().filter(|w| w.is_some()).count();
    let mut done = 0;
    let mut prefix = Prefix::inputs();
    for (&i, wq) in model.weight_layers().iter().zip(weights.iter_mut()) {
        let Some(wq) = wq else { continue };
        if !model.layers[i].op.is_gemm() {
            // An embedding's rows are read, not multiplied: it keeps nearest rounding.
            continue;
        }
        cancel.check()?;
        done += 1;
        let what = format!("{rounding} {} ({done}/{total})", model.layers[i].name);
        cancel.progress(&what);
        let t = std::time::Instant::now();
        let (stats, next) = input_stats(&work, i, data, (second, limit), prefix, cancel)?;
        // The values before node i do not depend on its weights: the next layer continues
        // from them with the rounded ones.
        prefix = next;
        times.stats += super::ms(t);
        let layer = &model.layers[i];
        let (w, rows, _) = layer.op.weight_rows().expect("weight layer");
        let groups = stats.sum.len();
        if let Some(h) = &stats.xxt {
            let t = std::time::Instant::now();
            let og = rows / groups;
            for (g, hg) in h.iter().enumerate() {
                let rows = g * og..(g + 1) * og;
                round_rows(config, &layer.name, (w, hg), &mut wq.q, rows, cancel)?;
            }
            match rounding {
                WeightRounding::Adaround => times.adaround += super::ms(t),
                _ => times.gptq += super::ms(t),
            }
        }
        let deq = wq.q.dequantize();
        let (ww, wb) = work.layers[i].op.weight_bias_mut().expect("weight layer");
        ww.copy_from_slice(&deq);
        if let Some(nb) = &wq.bias {
            wb.copy_from_slice(nb);
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::batches;

    #[test]
    fn statistics_continued_from_the_layer_before_equal_a_whole_runs() {
        // Each weight layer of the CNN, the ResNet (residual branches, a strided shortcut) and
        // MobileNetV2 (depthwise layers), its statistics taken from the values the layer
        // before it left: the sums and Σ x·xᵀ of its input as a whole tapped float run gives
        // it, bit for bit.
        let models = crate::engine::int::tests::conv_models();
        let data = crate::bundled::calib().take(70);
        let cancel = Cancel::new();
        for model in &models {
            let mut from = Prefix::inputs();
            for i in model.weight_layers() {
                let (got, next) =
                    input_stats(model, i, &data, (true, usize::MAX), from, &cancel).unwrap();
                assert_eq!(next.at, i);
                assert!(next.batches.is_some(), "{}: node {i} kept", model.name);
                from = next;
                let layer = &model.layers[i];
                let v = layer.data_input().unwrap();
                let (_, _, k) = layer.op.weight_rows().unwrap();
                let mut want = InputStats::new(k, layer.op.channel_groups(), true);
                for (s, e) in batches(data.n) {
                    let inputs = make_batch(model, &data, s, e).unwrap();
                    let mut x = model
                        .inputs
                        .iter()
                        .position(|g| g.value == v)
                        .map(|k| inputs[k].clone());
                    crate::engine::float::forward(model, inputs, usize::MAX, |j, t| {
                        if model.layers[j].output == v {
                            x = Some(t.clone());
                        }
                    })
                    .unwrap();
                    let mut st = InputStats::new(k, layer.op.channel_groups(), true);
                    add_batch(&layer.op, &x.unwrap(), usize::MAX, &mut st).unwrap();
                    want.merge(&st);
                }
                assert_eq!(got, want, "{}: {}", model.name, layer.name);
            }
        }
    }
}
