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
use super::batch::{fold_batches, make_batch};
use super::bias_correction::for_each_channel;
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

/// Per model node: the minimum per output channel over `data` of the nodes in `firsts`.
fn minima(
    model: &Model,
    firsts: &[usize],
    data: &Dataset,
    limit: usize,
    cancel: &Cancel,
) -> Result<Vec<Option<Vec<f32>>>> {
    let empty = || -> Vec<Option<Vec<f32>>> {
        let rows = |i: usize| model.layers[i].op.weight_rows().map_or(0, |(_, r, _)| r);
        (0..model.layers.len())
            .map(|i| firsts.contains(&i).then(|| vec![f32::INFINITY; rows(i)]))
            .collect()
    };
    let batch = |s: usize, e: usize| -> Result<_> {
        cancel.check()?;
        let inputs = make_batch(model, data, s, e)?;
        let mut mins = empty();
        crate::engine::float::forward(model, inputs, limit, |i, y| {
            if let (Some(acc), Some(v)) = (&mut mins[i], y.as_f32()) {
                for_each_channel(&model.layers[i].op, &y.shape, v, acc.len(), |c, xs| {
                    acc[c] = xs.iter().copied().fold(acc[c], f32::min)
                });
            }
        })?;
        Ok(mins)
    };
    let mut total = empty();
    fold_batches(data.n, batch, |part| {
        for (t, p) in total.iter_mut().zip(part) {
            if let (Some(a), Some(b)) = (t, p) {
                a.iter_mut().zip(b).for_each(|(x, y)| *x = x.min(y));
            }
        }
    })?;
    Ok(total)
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
    let firsts: Vec<usize> = pairs
        .iter()
        .filter(|p| absorbable(model, p))
        .map(|p| p.first)
        .collect();
    if firsts.is_empty() {
        return Ok(vec![0; pairs.len()]);
    }
    let mins = minima(model, &firsts, data, limit, cancel)?;
    let mut counts = Vec::with_capacity(pairs.len());
    for p in pairs {
        // Only the first layers of absorbable pairs have minima (a layer starts one pair).
        let Some(m) = &mins[p.first] else {
            counts.push(0);
            continue;
        };
        let floor = |v: f32| {
            if v.is_finite() {
                v.max(0.0) as f64
            } else {
                0.0
            }
        };
        let h: Vec<f64> = m.iter().map(|&v| floor(v)).collect();
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
    let op = &model.layers[p.second].op;
    let (w2, rows, k2) = op.weight_rows().expect("weight layer");
    let groups = op.channel_groups();
    // A row of group g reads that group's channels, `taps` columns each (kernel taps, or the
    // features a channel flattens to).
    let per_group = h.len() / groups;
    let taps = (k2 / per_group.max(1)).max(1);
    let add: Vec<f64> = (0..rows)
        .map(|r| {
            let hg = &h[r / (rows / groups).max(1) * per_group..];
            let row = &w2[r * k2..(r + 1) * k2];
            row.iter()
                .enumerate()
                .map(|(c, &w)| w as f64 * hg[c / taps])
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
