//! High-bias absorption (Nagel et al. 2019, "Data-Free Quantization", §4.1), run after
//! cross-layer equalization: where a pair's first layer feeds the second through a Relu (and
//! ops that commute with subtracting a per-channel constant: max pooling, global average
//! pooling, unpadded average pooling, flatten), a channel whose pre-activation never falls below
//! h > 0 gives h to the second layer: b1 −= h, b2 += W2·h. Then relu(y − h) = relu(y) − h and
//! the second layer adds h back, so the float function is the same wherever y ≥ h, while the
//! activation between the layers loses its constant offset (a smaller range to quantize).
//! Without batch-norm statistics, h is the channel's minimum over the calibration set (so the
//! function is unchanged on every calibration sample), clamped at 0. A second layer that is a
//! padded convolution would see h at its zero padding too, so it takes no absorption.

use super::Cancel;
use super::batch::{batches, make_batch};
use super::cle::Pair;
use crate::error::Result;
use crate::model::{Dataset, Model, Op};

/// Whether `p`'s chain has a Relu and only ops a per-channel shift passes through, and its
/// second layer adds a shifted input channel to every output the same way.
fn absorbable(model: &Model, p: &Pair) -> bool {
    let second_ok = match &model.layers[p.second].op {
        Op::Linear { .. } => true,
        Op::Conv2d { padding, .. } => padding.iter().all(|&x| x == 0),
        _ => false,
    };
    let mut relu = false;
    let mut v = model.layers[p.first].output;
    while let [j] = model.consumers(v)[..] {
        if j == p.second {
            return relu && second_ok;
        }
        match &model.layers[j].op {
            Op::Relu => relu = true,
            Op::MaxPool2d { .. } | Op::GlobalAvgPool | Op::Flatten { .. } => {}
            Op::AvgPool2d { padding, .. } if padding.iter().all(|&x| x == 0) => {}
            _ => return false,
        }
        v = model.layers[j].output;
    }
    false
}

/// The minimum per output channel of weight node `i`'s output `y` (shape `shape`).
fn channel_min(op: &Op, shape: &[usize], y: &[f32], acc: &mut [f32]) {
    let c = acc.len().max(1);
    if matches!(op, Op::Conv2d { .. }) {
        let hw: usize = shape.iter().skip(2).product::<usize>().max(1);
        for (k, plane) in y.chunks(hw).enumerate() {
            let m = plane.iter().copied().fold(f32::INFINITY, f32::min);
            acc[k % c] = acc[k % c].min(m);
        }
    } else {
        for row in y.chunks(c) {
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a = a.min(v));
        }
    }
}

/// Per model node: the minimum per output channel over `data` of the nodes in `firsts`.
fn minima(
    model: &Model,
    firsts: &[usize],
    data: &Dataset,
    limit: usize,
    cancel: &Cancel,
) -> Result<Vec<Option<Vec<f32>>>> {
    let rows = |i: usize| model.layers[i].op.weight_rows().map_or(0, |(_, r, _)| r);
    let mut mins: Vec<Option<Vec<f32>>> = (0..model.layers.len())
        .map(|i| firsts.contains(&i).then(|| vec![f32::INFINITY; rows(i)]))
        .collect();
    for (s, e) in batches(data.n) {
        cancel.check()?;
        let inputs = make_batch(model, data, s, e)?;
        crate::engine::float::forward(model, inputs, limit, |i, y| {
            if let (Some(acc), Some(v)) = (&mut mins[i], y.as_f32()) {
                channel_min(&model.layers[i].op, &y.shape, v, acc);
            }
        })?;
    }
    Ok(mins)
}

/// Absorbs the high biases of `pairs` of `model` (already equalized) measured on `data`;
/// returns the number of channels absorbed per pair.
pub fn absorb(
    model: &mut Model,
    pairs: &[Pair],
    data: &Dataset,
    limit: usize,
    cancel: &Cancel,
) -> Result<Vec<usize>> {
    let ok: Vec<bool> = pairs.iter().map(|p| absorbable(model, p)).collect();
    let firsts: Vec<usize> = pairs
        .iter()
        .zip(&ok)
        .filter(|(_, o)| **o)
        .map(|(p, _)| p.first)
        .collect();
    let mins = minima(model, &firsts, data, limit, cancel)?;
    let mut counts = Vec::with_capacity(pairs.len());
    for (p, &ok) in pairs.iter().zip(&ok) {
        let Some(Some(m)) = mins.get(p.first).filter(|_| ok) else {
            counts.push(0);
            continue;
        };
        let h: Vec<f64> = m
            .iter()
            .map(|&v| {
                if v.is_finite() {
                    v.max(0.0) as f64
                } else {
                    0.0
                }
            })
            .collect();
        counts.push(h.iter().filter(|&&x| x > 0.0).count());
        shift(model, p, &h);
    }
    Ok(counts)
}

/// b1 −= h and b2 += W2·h for pair `p`.
fn shift(model: &mut Model, p: &Pair, h: &[f64]) {
    let (_, b1) = model.layers[p.first]
        .op
        .weight_bias_mut()
        .expect("weight layer");
    b1.iter_mut()
        .zip(h)
        .for_each(|(b, &x)| *b = (*b as f64 - x) as f32);
    let (w2, rows, k2) = model.layers[p.second]
        .op
        .weight_rows()
        .expect("weight layer");
    let taps = k2 / (h.len() / group_count(&model.layers[p.second].op)).max(1);
    let add: Vec<f64> = (0..rows)
        .map(|r| {
            let row = &w2[r * k2..(r + 1) * k2];
            let g = group_of(&model.layers[p.second].op, r, rows);
            let per_group = h.len() / group_count(&model.layers[p.second].op);
            (0..k2)
                .map(|c| row[c] as f64 * h[g * per_group + c / taps.max(1)])
                .sum()
        })
        .collect();
    let (_, b2) = model.layers[p.second]
        .op
        .weight_bias_mut()
        .expect("weight layer");
    b2.iter_mut()
        .zip(&add)
        .for_each(|(b, &a)| *b = (*b as f64 + a) as f32);
}

/// Channel groups of a weight op (1 for a linear layer).
fn group_count(op: &Op) -> usize {
    match op {
        Op::Conv2d { groups, .. } => (*groups).max(1),
        _ => 1,
    }
}

/// The group of output row `r` of `rows`.
fn group_of(op: &Op, r: usize, rows: usize) -> usize {
    r / (rows / group_count(op)).max(1)
}
