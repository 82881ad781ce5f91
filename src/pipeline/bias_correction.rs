//! Empirical bias correction (Nagel et al. 2019) on the network as it is deployed: after the
//! activation ranges are chosen, each integer weight layer's bias is set, layer by layer in
//! order, so that its mean output per channel over the calibration set equals the float
//! model's. The inputs it averages are those the integer engine feeds the layer (weights,
//! activations and earlier corrections all quantized), so the correction removes the mean
//! error of everything upstream, not only of the layer's own weights.

use super::batch::{fold_batches, make_batch};
pub use super::bias_passes::Score;
use super::bias_passes::{PassData, Tables, pass};
use super::{Calibration, Cancel, calibrate, choose_ranges};
use crate::config::QuantConfig;
use crate::engine::int::IntModel;
use crate::error::Result;
use crate::model::{Dataset, Model, Op};
use crate::params::ModelParams;

/// What bias correction compares with, from one float pass over the calibration set: per
/// model node, the mean output per channel of the linear and conv layers (`None` elsewhere),
/// and the first graph output (flattened in sample order).
pub struct FloatReference {
    /// Mean output per output channel, by node index.
    pub means: Vec<Option<Vec<f64>>>,
    /// The first graph output over the data set.
    pub output: Vec<f32>,
}

impl FloatReference {
    /// The float model's reference over `data` (batches summed in order: the same on every
    /// run).
    pub fn of(model: &Model, data: &Dataset, limit: usize, cancel: &Cancel) -> Result<Self> {
        let empty = || -> Vec<Option<(Vec<f64>, usize)>> {
            let rows = |op: &Op| op.weight_rows().map(|(_, r, _)| (vec![0.0; r], 0));
            let gemm = |op: &Op| rows(op).filter(|_| op.is_gemm());
            model.layers.iter().map(|l| gemm(&l.op)).collect()
        };
        let batch = |s: usize, e: usize| -> Result<_> {
            cancel.check()?;
            let inputs = make_batch(model, data, s, e)?;
            let mut sums = empty();
            let out = crate::engine::float::forward(model, inputs, limit, |i, y| {
                if let (Some((acc, n)), Some(v)) = (&mut sums[i], y.as_f32()) {
                    *n += v.len() / acc.len().max(1);
                    for_each_channel(&model.layers[i].op, &y.shape, v, acc.len(), |c, xs| {
                        acc[c] += xs.iter().map(|&x| x as f64).sum::<f64>()
                    });
                }
            })?;
            Ok((sums, out[0].to_f32_vec()))
        };
        let (mut total, mut output) = (empty(), Vec::new());
        fold_batches(data.n, batch, |(part, out)| {
            output.extend(out);
            for (t, p) in total.iter_mut().zip(part) {
                if let (Some((a, n)), Some((b, m))) = (t, p) {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    *n += m;
                }
            }
        })?;
        let means = total
            .into_iter()
            .map(|t| t.map(|(s, n)| s.iter().map(|x| x / n.max(1) as f64).collect()))
            .collect();
        Ok(FloatReference { means, output })
    }
}

/// Calls `f(channel, values)` over a weight op's output `v` (shape `shape`, `c` channels):
/// whole planes of a conv (channel axis 1), single values of a linear layer (last axis).
pub fn for_each_channel(
    op: &Op,
    shape: &[usize],
    v: &[f32],
    c: usize,
    mut f: impl FnMut(usize, &[f32]),
) {
    if c == 0 {
        return;
    }
    if matches!(op, Op::Conv2d { .. }) {
        let hw: usize = shape.iter().skip(2).product();
        for (k, plane) in v.chunks(hw.max(1)).enumerate() {
            f(k % c, plane);
        }
    } else {
        for (k, x) in v.iter().enumerate() {
            f(k % c, std::slice::from_ref(x));
        }
    }
}

/// Empirical bias correction (Nagel et al. 2019): the bias that makes the quantized layer's
/// mean output per channel equal the float model's, `E[y_float] − Ŵ·E[x̂]`, where `deq` is Ŵ
/// ([rows, k]), `float_means` the float model's mean output per channel and `means` the mean
/// input patch per channel group in the quantized-weight network.
pub fn corrected_bias(deq: &[f32], float_means: &[f64], means: &[Vec<f64>]) -> Vec<f32> {
    let rows = float_means.len();
    let k = deq.len() / rows.max(1);
    let per_group = rows / means.len().max(1);
    (0..rows)
        .map(|r| {
            let m = &means[r / per_group.max(1)];
            let q: f64 = (0..k).map(|c| deq[r * k + c] as f64 * m[c]).sum();
            (float_means[r] - q) as f32
        })
        .collect()
}

/// Bias correction as a run applies it: the biases of `params` corrected; then, if any
/// correction was kept, the activation histograms measured again with the corrected biases
/// (they shift the activations the ranges were chosen on), the ranges chosen again and the
/// biases corrected once more for those ranges. The second result is kept when it scores at
/// least as well on `data` as the first (then with its histograms), so the result never scores
/// below `params`. `float` is the float model's reference on `data`.
pub fn apply(
    model: &Model,
    config: &QuantConfig,
    mut params: ModelParams,
    data: &Dataset,
    float: &FloatReference,
    cancel: &Cancel,
) -> Result<(ModelParams, Option<Calibration>)> {
    let (first, kept) = correct_biases(model, config, &mut params, data, float, cancel)?;
    if kept == 0 {
        // Measuring again would give the same histograms and ranges.
        return Ok((params, None));
    }
    let weights: Vec<_> = params.layers.iter().map(|l| l.weight.clone()).collect();
    let calibration = calibrate(model, config, &weights, data, cancel)?;
    let mut again = choose_ranges(model, config, &weights, &calibration);
    let (second, _) = correct_biases(model, config, &mut again, data, float, cancel)?;
    Ok(if second >= first {
        (again, Some(calibration))
    } else {
        (params, None)
    })
}

/// Corrects the biases of `params`' integer linear and conv layers of `model` on `data`, layer
/// by layer in network order (each layer measured with the corrections before it in place),
/// against the float model's `float` reference. A layer's correction is kept only when the
/// integer engine's [`Score`] on `data` does not get worse with it. The new biases go to each
/// layer's `weight.bias`, where exports find them. Returns the final score and how many
/// corrections were kept.
pub fn correct_biases(
    model: &Model,
    config: &QuantConfig,
    params: &mut ModelParams,
    data: &Dataset,
    float: &FloatReference,
    cancel: &Cancel,
) -> Result<(Score, usize)> {
    let pd = PassData {
        data,
        float_out: &float.output,
        limit: config.max_sample_elems(),
        cancel,
    };
    let todo: Vec<usize> = (0..params.layers.len())
        .filter(|&j| {
            let l = &params.layers[j];
            // An embedding has no bias to correct.
            l.weight.is_some() && l.act.is_some() && model.layers[l.index].op.is_gemm()
        })
        .collect();
    let nodes: Vec<usize> = todo.iter().map(|&j| params.layers[j].index).collect();
    let node = |t: usize| nodes.get(t).copied();
    // Each candidate changes one layer's bias: its build takes the other kernels from the
    // engine of the parameters kept so far, and its pass starts from that engine's tables.
    let mut int = IntModel::new(model, params, pd.limit);
    let first = pass((&int, params), &Tables::inputs(), node(0), true, &pd)?;
    let (mut means, mut score, mut tables) = (first.means, first.score, first.tables);
    let mut kept = 0;
    for (t, (&j, &i)) in todo.iter().zip(&nodes).enumerate() {
        let name = &model.layers[i].name;
        cancel.progress(&format!(
            "bias correction {name} ({}/{})",
            t + 1,
            todo.len()
        ));
        let mut cand = params.clone();
        let wq = cand.layers[j].weight.as_mut().expect("checked above");
        let fm = float.means[i]
            .as_deref()
            .expect("a weight layer's float means");
        wq.bias = Some(corrected_bias(&wq.q.dequantize(), fm, &means));
        let next = node(t + 1);
        let cand_int = IntModel::reusing(model, &cand, pd.limit, (&int.kernels(), params));
        let p = pass((&cand_int, &cand), &tables, next, true, &pd)?;
        if p.score >= score {
            (*params, means, score, tables) = (cand, p.means, p.score, p.tables);
            int = cand_int;
            kept += 1;
        } else if next.is_some() {
            let p = pass((&int, params), &tables, next, false, &pd)?;
            (means, tables) = (p.means, p.tables);
        }
    }
    Ok((score, kept))
}
