//! Weight methods that work layer by layer, in topological order, on the calibration inputs each
//! weight layer sees in the quantized-weight network (earlier layers already rounded and
//! corrected, activations in float): GPTQ and AdaRound rounding. Bias correction
//! (`super::bias_correction`) reuses the input statistics.

use super::Cancel;
use super::batch::{fold_batches, make_batch};
use crate::config::{QuantConfig, WeightRounding};
use crate::engine::float::{Values, checked_conv_geom, last_uses, op_geom, run_node};
use crate::engine::im2col::im2col_channels;
use crate::engine::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::{Dataset, Model, Op};
use crate::params::WeightQuant;
use crate::quant::adaround::{AdaroundError, AdaroundOptions, adaround_rows};
use crate::quant::gptq::gptq_rows;
use crate::quant::weights::QWeights;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

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

/// Runs the nodes before weight node `i` on a batch and returns node `i`'s data input.
fn forward_until(model: &Model, inputs: Vec<Tensor>, i: usize, limit: usize) -> Result<Tensor> {
    let target = model.layers[i]
        .data_input()
        .expect("a weight node has an input");
    let last = last_uses(model);
    let mut vals = Values::new(model, inputs);
    for (j, layer) in model.layers[..i].iter().enumerate() {
        if vals.get(target).is_some() {
            break;
        }
        let node_err = |m| Error::node(&model.source, &layer.name, layer.op.kind(), m);
        let y =
            run_node(layer, &vals.inputs_of(layer).map_err(node_err)?, limit).map_err(node_err)?;
        vals.set(layer.output, y);
        vals.free_after(model, &last, j);
    }
    vals.take(target)
        .ok_or_else(|| Error::format(&model.source, "a weight node's input was not computed"))
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
            let per = if stats.xxt.is_some() { n } else { 1 };
            let chunk = per * g.c * g.h * g.w;
            for gi in 0..*groups {
                for part in xs[..n * g.c * g.h * g.w].chunks(chunk.max(1)) {
                    let rows = part.len() / (g.c * g.h * g.w).max(1);
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

/// The input statistics of weight node `i` of `model` over `data` (Σ x·xᵀ when `second`).
pub fn input_stats(
    model: &Model,
    i: usize,
    data: &Dataset,
    second: bool,
    limit: usize,
    cancel: &Cancel,
) -> Result<InputStats> {
    let layer = &model.layers[i];
    let (_, _, k) = layer.op.weight_rows().expect("weight layer");
    let groups = layer.op.channel_groups();
    let mut total = InputStats::new(k, groups, second);
    // Batches are summed in order, so that the sums (and the biases and roundings made from
    // them) are the same bit for bit on every run.
    let batch = |s: usize, e: usize| -> Result<InputStats> {
        cancel.check()?;
        let inputs = make_batch(model, data, s, e)?;
        super::calibrate::check_finite(model, data, s, &inputs)?;
        let x = forward_until(model, inputs, i, limit)?;
        if x.as_f32().is_some_and(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(super::calibrate::float_overflow(
                model,
                data,
                s,
                &layer.name,
            ));
        }
        let mut st = InputStats::new(k, groups, second);
        add_batch(&layer.op, &x, limit, &mut st)
            .map_err(|m| Error::node(&model.source, &layer.name, layer.op.kind(), m))?;
        Ok(st)
    };
    fold_batches(data.n, batch, |st| total.merge(&st))?;
    Ok(total)
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
        let stats = input_stats(&work, i, data, second, limit, cancel)?;
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
