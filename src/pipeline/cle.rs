//! Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): for two weight
//! layers joined by a single-consumer chain of positively homogeneous ops (Relu, max/average
//! pooling, a flatten after a conv), channel i of the first layer's output is scaled by 1/sᵢ
//! and the matching inputs of the second by sᵢ, with sᵢ = √(r1ᵢ / r2ᵢ) = (1/r2ᵢ)·√(r1ᵢ·r2ᵢ)
//! (r = max |w| of the channel), so both ranges become √(r1ᵢ·r2ᵢ). The float function is
//! unchanged because relu(x / s) = relu(x) / s for s > 0. Pairs are swept until the scales
//! settle (a layer in the middle of a chain belongs to two pairs). ReLU6 (Clip) is not
//! crossed: its fixed upper bound would have to change per channel. High-bias absorption
//! follows in `super::high_bias`.

use crate::config::QuantConfig;
use crate::eval::report::ClePairReport;
use crate::model::{Model, Op};

/// Sweeps over all pairs at most this many times.
const MAX_SWEEPS: usize = 200;
/// Sweeping stops when every scale of a sweep is within this of 1.
const SETTLED: f64 = 1e-6;

/// Two weight layers that can be equalized and how the first's output channels map onto the
/// second's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// The first weight node (its output channels are scaled by 1/s).
    pub first: usize,
    /// The second weight node (its matching input channels are scaled by s).
    pub second: usize,
    /// Consecutive input features of the second layer per channel of the first (H·W after a
    /// flatten, else 1).
    pub per_channel: usize,
}

/// Output channels of weight op `op`.
fn out_channels(op: &Op) -> usize {
    op.weight_rows().map_or(0, |(_, rows, _)| rows)
}

/// The weight node that node `first`'s output reaches through a single-consumer chain of ops
/// that commute with a positive per-channel scale, and whether a flatten was crossed.
fn follow_chain(model: &Model, first: usize) -> Option<(usize, bool)> {
    let conv = matches!(model.layers[first].op, Op::Conv2d { .. });
    let mut v = model.layers[first].output;
    let mut flat = false;
    loop {
        if model.outputs.contains(&v) {
            return None;
        }
        let [j] = model.consumers(v)[..] else {
            return None;
        };
        let node = &model.layers[j];
        if node.data_input() != Some(v) {
            return None;
        }
        match &node.op {
            Op::Linear { .. } | Op::Conv2d { .. } => return Some((j, flat)),
            Op::Relu => {}
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::GlobalAvgPool if conv && !flat => {}
            Op::Flatten { axis: 1 } if conv && !flat => flat = true,
            _ => return None,
        }
        v = node.output;
    }
}

/// The pairs of `model` CLE can equalize: both layers quantized (not kept in float).
pub fn find_pairs(model: &Model, config: &QuantConfig) -> Vec<Pair> {
    let quantized = |i: usize| !config.is_float(&model.layers[i].name);
    model
        .weight_layers()
        .into_iter()
        .filter(|&i| quantized(i) && model.layers[i].op.is_gemm())
        .filter_map(|first| {
            let (second, flat) = follow_chain(model, first)?;
            if !quantized(second) {
                return None;
            }
            let c = out_channels(&model.layers[first].op);
            let per_channel = match (&model.layers[second].op, flat) {
                (Op::Conv2d { weight, groups, .. }, false) => {
                    (weight.dim().1 * groups == c).then_some(1)?
                }
                (Op::Linear { weight, .. }, false) => (weight.dim().1 == c).then_some(1)?,
                (Op::Linear { weight, .. }, true) => {
                    let k = weight.dim().1;
                    (c > 0 && k % c == 0).then_some(k / c)?
                }
                _ => return None,
            };
            Some(Pair {
                first,
                second,
                per_channel,
            })
        })
        .collect()
}

/// For each input channel of weight op `op` (channels of `per_channel` consecutive features
/// for a linear layer), the (row, column range) blocks of its `[out, k]` matrix that multiply it.
fn input_blocks(op: &Op, channels: usize, per_channel: usize) -> Vec<Vec<(usize, usize, usize)>> {
    match op {
        Op::Conv2d { weight, groups, .. } => {
            let (o, ci, kh, kw) = weight.dim();
            let og = o / groups;
            (0..channels)
                .map(|i| {
                    let (g, li) = (i / ci, i % ci);
                    (g * og..(g + 1) * og)
                        .map(|r| (r, li * kh * kw, (li + 1) * kh * kw))
                        .collect()
                })
                .collect()
        }
        _ => {
            let rows = out_channels(op);
            (0..channels)
                .map(|i| {
                    (0..rows)
                        .map(|r| (r, i * per_channel, (i + 1) * per_channel))
                        .collect()
                })
                .collect()
        }
    }
}

/// Per-channel ranges (max |w|) of the first layer's output rows and the second's input blocks.
fn ranges(model: &Model, p: &Pair) -> (Vec<f64>, Vec<f64>) {
    let (w1, c, k1) = model.layers[p.first]
        .op
        .weight_rows()
        .expect("weight layer");
    let (w2, _, k2) = model.layers[p.second]
        .op
        .weight_rows()
        .expect("weight layer");
    let amax = |s: &[f32]| s.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    let r1 = w1.chunks(k1).map(amax).collect();
    let r2 = input_blocks(&model.layers[p.second].op, c, p.per_channel)
        .iter()
        .map(|blocks| {
            blocks.iter().fold(0.0f64, |m, &(r, a, b)| {
                m.max(amax(&w2[r * k2 + a..r * k2 + b]))
            })
        })
        .collect();
    (r1, r2)
}

/// Largest over smallest nonzero range (`None` when all are zero).
pub fn spread(r: &[f64]) -> Option<f64> {
    let max = r.iter().copied().fold(0.0, f64::max);
    let min = r
        .iter()
        .copied()
        .filter(|&v| v > 0.0)
        .fold(f64::INFINITY, f64::min);
    (max > 0.0).then(|| max / min)
}

/// Equalizes one pair in place; returns the largest |sᵢ − 1|.
fn equalize_pair(model: &mut Model, p: &Pair) -> f64 {
    let (r1, r2) = ranges(model, p);
    let s: Vec<f64> = r1
        .iter()
        .zip(&r2)
        .map(|(&a, &b)| {
            if a > 0.0 && b > 0.0 {
                (a / b).sqrt()
            } else {
                1.0
            }
        })
        .collect();
    let blocks = input_blocks(&model.layers[p.second].op, s.len(), p.per_channel);
    let (w1, b1) = model.layers[p.first]
        .op
        .weight_bias_mut()
        .expect("weight layer");
    let k1 = w1.len() / s.len().max(1);
    for (i, &si) in s.iter().enumerate() {
        w1[i * k1..(i + 1) * k1]
            .iter_mut()
            .for_each(|w| *w = (*w as f64 / si) as f32);
        b1[i] = (b1[i] as f64 / si) as f32;
    }
    let rows2 = out_channels(&model.layers[p.second].op).max(1);
    let (w2, _) = model.layers[p.second]
        .op
        .weight_bias_mut()
        .expect("weight layer");
    let k2 = w2.len() / rows2;
    for (i, &si) in s.iter().enumerate() {
        for &(r, a, b) in &blocks[i] {
            w2[r * k2 + a..r * k2 + b]
                .iter_mut()
                .for_each(|w| *w = (*w as f64 * si) as f32);
        }
    }
    s.iter().fold(0.0, |m, &v| m.max((v - 1.0).abs()))
}

/// CLE as a run applies it: a copy of `model` with every pair equalized and then its high
/// biases absorbed (measured on `data`), and per pair the range spreads and absorbed channels.
pub fn equalize_and_absorb(
    model: &Model,
    config: &QuantConfig,
    data: &crate::model::Dataset,
    cancel: &super::Cancel,
) -> crate::error::Result<(Model, Vec<ClePairReport>)> {
    let pairs = find_pairs(model, config);
    let (mut m, mut reports) = equalize_pairs(model, &pairs);
    let limit = config.max_sample_elems();
    let absorbed = super::high_bias::absorb(&mut m, &pairs, data, limit, cancel)?;
    for (r, n) in reports.iter_mut().zip(absorbed) {
        r.absorbed_channels = n;
    }
    Ok((m, reports))
}

/// A copy of `model` with every pair equalized, and per pair the range spreads before and after.
pub fn equalize(model: &Model, config: &QuantConfig) -> (Model, Vec<ClePairReport>) {
    equalize_pairs(model, &find_pairs(model, config))
}

/// A copy of `model` with `pairs` equalized, and per pair the range spreads before and after.
fn equalize_pairs(model: &Model, pairs: &[Pair]) -> (Model, Vec<ClePairReport>) {
    let before: Vec<(Vec<f64>, Vec<f64>)> = pairs.iter().map(|p| ranges(model, p)).collect();
    let mut m = model.clone();
    for _ in 0..MAX_SWEEPS {
        let change = pairs
            .iter()
            .fold(0.0f64, |c, p| c.max(equalize_pair(&mut m, p)));
        if change < SETTLED {
            break;
        }
    }
    let reports = pairs
        .iter()
        .zip(&before)
        .map(|(p, (r1, r2))| {
            let (a1, a2) = ranges(&m, p);
            ClePairReport {
                first: model.layers[p.first].name.clone(),
                second: model.layers[p.second].name.clone(),
                out_spread_before: spread(r1),
                out_spread_after: spread(&a1),
                in_spread_before: spread(r2),
                in_spread_after: spread(&a2),
                absorbed_channels: 0,
            }
        })
        .collect();
    (m, reports)
}
