//! SmoothQuant (Xiao et al. 2022): activation outliers migrate into the weights. For a tensor X
//! that only linear layers read as their data input (one group of consumers, e.g. Q/K/V after
//! one LayerNorm), with a = max |X_j| per channel over the calibration set (float pass) and
//! w = max |W_ij| over every consumer's column j, s_j = a_j^α / w_j^(1−α); X's producer is
//! divided by s and every consumer's input column j multiplied by s_j, so the float function
//! stays the same.
//!
//! Producers that can absorb 1/s:
//! - a LayerNormalization over the last axis: its scale and bias are divided by s. When the
//!   tensor has readers other than the consumers (BERT's residual Add), those keep the original
//!   node and the consumers read a copy of it named `<node>.smoothquant`;
//! - a linear layer, directly or through a Relu (relu(x/s) = relu(x)/s for s > 0), whose output
//!   nothing else reads: its output rows and bias are divided by s.
//!
//! Any other producer (a graph input, GELU, an attention MatMul, a conv) cannot absorb it: those
//! linear layers are skipped and reported. Convolutions are not smoothed.
//!
//! What was done is recorded as [`SmoothEntry`]s (per producer: the consumers and the scales)
//! that [`replay`] applies again to the loaded model (the parameters file's `smoothquant`).

use super::Cancel;
use super::batch::{batches, make_batch};
use crate::config::QuantConfig;
use crate::engine::float::forward;
use crate::engine::tensor::Tensor;
use crate::error::{Error, Result};
use crate::eval::report::SmoothReport;
use crate::model::{Dataset, Layer, Model, Op, Value, ValueId};
use crate::params::SmoothEntry;
use rayon::prelude::*;

/// Scales are kept within [1/`S_LIMIT`, `S_LIMIT`].
pub const S_LIMIT: f64 = 1e4;
/// Name suffix of the LayerNormalization copies and of the new scale/bias constants.
pub const SUFFIX: &str = ".smoothquant";

/// A tensor whose readers can be smoothed together and the node that absorbs 1/s.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The node that absorbs 1/s (LayerNormalization or linear).
    pub producer: usize,
    /// The tensor the consumers read (the producer's output, or the Relu's after it).
    pub value: ValueId,
    /// The linear layers reading `value`, in graph order.
    pub consumers: Vec<usize>,
}

/// What [`smooth`] did: the smoothed copy, the record, the report and the skipped layers.
#[derive(Debug, Clone)]
pub struct Smoothed {
    /// The model with every migration applied.
    pub model: Model,
    /// The migrations, in the order they were applied.
    pub entries: Vec<SmoothEntry>,
    /// Per migration: the layers, the producer and the activation spread before and after.
    pub report: Vec<SmoothReport>,
    /// Quantized linear layers whose input no producer could absorb the scales into.
    pub skipped: Vec<String>,
}

/// Input channels of a linear layer.
fn in_features(op: &Op) -> Option<usize> {
    match op {
        Op::Linear { weight, .. } => Some(weight.dim().1),
        _ => None,
    }
}

/// The LayerNormalization `p`'s constant scale and (optional) bias when it normalizes only the
/// last axis, with `c` channels.
fn ln_params(model: &Model, p: usize, c: usize) -> Option<(ValueId, Option<ValueId>)> {
    let l = &model.layers[p];
    let Op::LayerNorm { axis, .. } = l.op else {
        return None;
    };
    let rank = l.in_shape.len() as i64 + 1;
    if !(axis == -1 || (!l.in_shape.is_empty() && axis == rank - 1)) {
        return None;
    }
    let g = l.inputs.get(1).copied().flatten()?;
    let gt = model.constant(g)?;
    if gt.shape != [c] || gt.as_f32().is_none() {
        return None;
    }
    let b = l.inputs.get(2).copied().flatten();
    if let Some(b) = b {
        let bt = model.constant(b)?;
        if bt.shape != [c] || bt.as_f32().is_none() {
            return None;
        }
    }
    Some((g, b))
}

/// Whether `v` is read only by the nodes in `readers` and is not a graph output.
fn only_read_by(model: &Model, v: ValueId, readers: &[usize]) -> bool {
    !model.outputs.contains(&v) && model.consumers(v).iter().all(|j| readers.contains(j))
}

/// The producer that can absorb 1/s for the linear layers `consumers` reading `v`.
fn absorber(model: &Model, v: ValueId, consumers: &[usize], c: usize) -> Option<usize> {
    let p = model.producer(v)?;
    match &model.layers[p].op {
        Op::LayerNorm { .. } => ln_params(model, p, c).map(|_| p),
        Op::Linear { weight, .. } if weight.dim().0 == c => {
            only_read_by(model, v, consumers).then_some(p)
        }
        Op::Relu if only_read_by(model, v, consumers) => {
            let x = model.layers[p].data_input()?;
            let q = model.producer(x)?;
            let fits =
                matches!(&model.layers[q].op, Op::Linear { weight, .. } if weight.dim().0 == c);
            (fits && only_read_by(model, x, &[p])).then_some(q)
        }
        _ => None,
    }
}

/// The groups SmoothQuant can smooth and the quantized linear layers it cannot.
pub fn find_groups(model: &Model, config: &QuantConfig) -> (Vec<Group>, Vec<usize>) {
    let quantized = |i: usize| !config.is_float(&model.layers[i].name);
    let mut groups: Vec<Group> = Vec::new();
    let mut skipped = Vec::new();
    for i in model.weight_layers() {
        let (Some(c), Some(v)) = (
            in_features(&model.layers[i].op),
            model.layers[i].data_input(),
        ) else {
            continue;
        };
        if groups.iter().any(|g| g.value == v) || skipped.contains(&i) {
            continue;
        }
        let consumers: Vec<usize> = model
            .consumers(v)
            .into_iter()
            .filter(|&j| {
                model.layers[j].data_input() == Some(v)
                    && in_features(&model.layers[j].op) == Some(c)
            })
            .collect();
        if !consumers.iter().any(|&j| quantized(j)) {
            continue;
        }
        match absorber(model, v, &consumers, c) {
            Some(producer) => groups.push(Group {
                producer,
                value: v,
                consumers,
            }),
            None => skipped.extend(consumers.into_iter().filter(|&j| quantized(j))),
        }
    }
    skipped.sort_unstable();
    (groups, skipped)
}

/// Per group, max |x| per channel (last axis) of its tensor over `data`, in the float model.
pub fn act_max(
    model: &Model,
    groups: &[Group],
    data: &Dataset,
    limit: usize,
    cancel: &Cancel,
) -> Result<Vec<Vec<f64>>> {
    // Which node's output each group reads: (node, group).
    let taps: Vec<(usize, usize)> = groups
        .iter()
        .enumerate()
        .filter_map(|(g, gr)| model.producer(gr.value).map(|n| (n, g)))
        .collect();
    let widths: Vec<usize> = groups
        .iter()
        .map(|g| in_features(&model.layers[g.consumers[0]].op).unwrap_or(0))
        .collect();
    let empty: Vec<Vec<f64>> = widths.iter().map(|&c| vec![0.0; c]).collect();
    let parts = batches(data.n)
        .par_iter()
        .map(|&(s, e)| -> Result<Vec<Vec<f64>>> {
            cancel.check()?;
            let inputs = make_batch(model, data, s, e)?;
            let mut m = empty.clone();
            let mut bad = None;
            forward(model, inputs, limit, |i, t: &Tensor| {
                for &(_, g) in taps.iter().filter(|(n, _)| *n == i) {
                    let c = widths[g].max(1);
                    let xs = t.as_f32().unwrap_or(&[]);
                    if t.shape.last() != Some(&c) {
                        bad = Some(g);
                        continue;
                    }
                    for row in xs.chunks(c) {
                        for (a, &x) in m[g].iter_mut().zip(row) {
                            *a = a.max((x as f64).abs());
                        }
                    }
                }
            })?;
            if let Some(g) = bad {
                let l = &model.layers[groups[g].producer];
                return Err(Error::node(
                    &model.source,
                    &l.name,
                    l.op.kind(),
                    "SmoothQuant: the output's last axis is not the consumers' input width",
                ));
            }
            Ok(m)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts.into_iter().fold(empty, |mut acc, p| {
        for (a, b) in acc.iter_mut().zip(p) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x = x.max(y));
        }
        acc
    }))
}

/// Per input channel, max |w| over the rows of every consumer.
pub fn weight_max(model: &Model, consumers: &[usize]) -> Vec<f64> {
    let mut m: Vec<f64> = Vec::new();
    for &j in consumers {
        let Some((w, _, k)) = model.layers[j].op.weight_rows() else {
            continue;
        };
        m.resize(k, 0.0);
        for row in w.chunks(k) {
            for (a, &x) in m.iter_mut().zip(row) {
                *a = a.max((x as f64).abs());
            }
        }
    }
    m
}

/// s_j = a_j^α / w_j^(1−α), 1 where either is zero or not finite, kept within
/// [1/[`S_LIMIT`], [`S_LIMIT`]].
pub fn scales(a: &[f64], w: &[f64], alpha: f64) -> Vec<f32> {
    a.iter()
        .zip(w)
        .map(|(&a, &w)| {
            let s = a.powf(alpha) / w.powf(1.0 - alpha);
            if a > 0.0 && w > 0.0 && s.is_finite() {
                s.clamp(1.0 / S_LIMIT, S_LIMIT) as f32
            } else {
                1.0
            }
        })
        .collect()
}

/// A copy of `model` with SmoothQuant at strength `alpha` on every group that has an absorbing
/// producer; statistics from a float pass over `calib`.
pub fn smooth(
    model: &Model,
    calib: &Dataset,
    config: &QuantConfig,
    alpha: f32,
    cancel: &Cancel,
) -> Result<Smoothed> {
    let (groups, skipped) = find_groups(model, config);
    let amax = act_max(model, &groups, calib, config.max_sample_elems(), cancel)?;
    let mut m = model.clone();
    let mut entries = Vec::new();
    let mut report = Vec::new();
    for (g, a) in groups.iter().zip(&amax) {
        let w = weight_max(model, &g.consumers);
        let s = scales(a, &w, alpha as f64);
        let name = |i: usize| model.layers[i].name.clone();
        let entry = SmoothEntry {
            producer: name(g.producer),
            consumers: g.consumers.iter().map(|&i| name(i)).collect(),
            alpha,
            scales: s.clone(),
        };
        let kind = apply(&mut m, &entry).map_err(|e| Error::format(&model.source, e))?;
        let after: Vec<f64> = a.iter().zip(&s).map(|(&x, &s)| x / s as f64).collect();
        report.push(SmoothReport {
            layers: entry.consumers.clone(),
            folded_into: entry.producer.clone(),
            kind: kind.into(),
            act_spread_before: super::cle::spread(a),
            act_spread_after: super::cle::spread(&after),
        });
        entries.push(entry);
    }
    Ok(Smoothed {
        model: m,
        entries,
        report,
        skipped: skipped
            .into_iter()
            .map(|i| model.layers[i].name.clone())
            .collect(),
    })
}

/// `model` with `entries` applied in order (what a parameters file's `smoothquant` records);
/// `label` names the file in errors.
pub fn replay(model: &Model, entries: &[SmoothEntry], label: &str) -> Result<Model> {
    let mut m = model.clone();
    for (k, e) in entries.iter().enumerate() {
        apply(&mut m, e).map_err(|msg| Error::format(label, format!("smoothquant[{k}]: {msg}")))?;
    }
    Ok(m)
}

/// Applies one migration in place; returns how it was folded (`layernorm`, `layernorm-copy`
/// or `linear`).
pub fn apply(model: &mut Model, e: &SmoothEntry) -> std::result::Result<&'static str, String> {
    let clip = |n: &str| crate::error::clip(n, crate::error::NAME_MAX);
    let p = model
        .layers
        .iter()
        .position(|l| l.name == e.producer)
        .ok_or_else(|| format!("the model has no node '{}'", clip(&e.producer)))?;
    let c = e.scales.len();
    if let Some(bad) = e.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(format!("scale {bad} is not a positive finite number"));
    }
    let mut consumers = Vec::new();
    for name in &e.consumers {
        let j = model
            .layer_index(name)
            .ok_or_else(|| format!("the model has no weight layer '{}'", clip(name)))?;
        consumers.push(j);
    }
    let v = consumers
        .first()
        .and_then(|&j| model.layers[j].data_input())
        .ok_or("names no consumers")?;
    let same = consumers.iter().all(|&j| {
        model.layers[j].data_input() == Some(v) && in_features(&model.layers[j].op) == Some(c)
    });
    if !same || absorber(model, v, &consumers, c) != Some(p) {
        return Err(format!(
            "'{}' and its consumers are not a group SmoothQuant can fold into it",
            clip(&e.producer)
        ));
    }
    for &j in &consumers {
        let (w, _) = model.layers[j].op.weight_bias_mut().expect("linear");
        for row in w.chunks_mut(c) {
            row.iter_mut().zip(&e.scales).for_each(|(x, s)| *x *= s);
        }
    }
    if let Some((w, b)) = model.layers[p].op.weight_bias_mut() {
        let k = w.len() / c;
        for (j, s) in e.scales.iter().enumerate() {
            w[j * k..(j + 1) * k].iter_mut().for_each(|x| *x /= s);
            b[j] /= s;
        }
        return Ok("linear");
    }
    Ok(fold_layernorm(model, p, v, &consumers, &e.scales))
}

/// A new constant: `t` under a fresh name made from value `of`'s.
fn add_const(model: &mut Model, of: ValueId, t: Tensor) -> ValueId {
    let name = fresh_name(model, &model.values[of].name);
    model.values.push(Value { name });
    let id = model.values.len() - 1;
    model.consts.push((id, t));
    id
}

/// `base` + [`SUFFIX`], made unique among the model's values and nodes.
fn fresh_name(model: &Model, base: &str) -> String {
    let taken = |n: &str| {
        model.values.iter().any(|v| v.name == n) || model.layers.iter().any(|l| l.name == n)
    };
    let mut name = format!("{base}{SUFFIX}");
    let mut k = 1;
    while taken(&name) {
        name = format!("{base}{SUFFIX}_{k}");
        k += 1;
    }
    name
}

/// Divides LayerNormalization `p`'s scale and bias by `s` (on new constants), on the node
/// itself when only `consumers` read its output `v`, else on a copy that they read instead.
fn fold_layernorm(
    model: &mut Model,
    p: usize,
    v: ValueId,
    consumers: &[usize],
    s: &[f32],
) -> &'static str {
    let c = s.len();
    let (g, b) = ln_params(model, p, c).expect("checked by absorber");
    let divided = |model: &Model, id: ValueId| {
        let x = model
            .constant(id)
            .and_then(Tensor::as_f32)
            .expect("checked");
        let y: Vec<f32> = x.iter().zip(s).map(|(x, s)| x / s).collect();
        Tensor::f32(vec![c], y)
    };
    let gt = divided(model, g);
    let g2 = add_const(model, g, gt);
    let b2 = b.map(|b| {
        let bt = divided(model, b);
        add_const(model, b, bt)
    });
    let mut inputs = model.layers[p].inputs.clone();
    inputs[1] = Some(g2);
    if let Some(b2) = b2 {
        inputs[2] = Some(b2);
    }
    if only_read_by(model, v, consumers) {
        model.layers[p].inputs = inputs;
        model
            .consts
            .retain(|(id, _)| model.layers.iter().any(|l| l.inputs.contains(&Some(*id))));
        return "layernorm";
    }
    let name = fresh_name(model, &model.layers[p].name);
    let out_name = fresh_name(model, &model.values[v].name);
    model.values.push(Value { name: out_name });
    let output = model.values.len() - 1;
    let copy = Layer {
        name,
        inputs,
        output,
        ..model.layers[p].clone()
    };
    model.layers.insert(p + 1, copy);
    for l in &mut model.layers {
        if reads_as_linear(l, v) {
            l.inputs[0] = Some(output);
        }
    }
    "layernorm-copy"
}

/// Whether `l` is a linear layer reading `v` as its data input.
fn reads_as_linear(l: &Layer, v: ValueId) -> bool {
    matches!(l.op, Op::Linear { .. }) && l.data_input() == Some(v)
}
