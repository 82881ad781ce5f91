//! The import passes, in order: Identity/Dropout removal, Clip bounds from constants,
//! constant folding, weights into Conv/Gemm/MatMul, batchnorm folding, MatMul + bias fusion,
//! erf-GELU fusion, dead-node removal.

use super::convert::{Pending, pads4};
use super::{Importer, RawNode};
use crate::engine::ops::{Limits, eval};
use crate::engine::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::{BinaryOp, Layer, Op, Value, ValueId};
use ndarray::{Array1, Array2, Array4};

/// Runs every pass; returns the nodes, the constants still read, and the values.
/// What the passes leave: nodes, the constants they read, and the value table.
type Imported = (Vec<Layer>, Vec<(ValueId, Tensor)>, Vec<Value>);

pub(super) fn run(imp: &mut Importer) -> Result<Imported> {
    remove_identities(imp);
    fold_constants(imp)?;
    take_weights(imp)?;
    fuse_bias_adds(imp);
    super::gelu::fuse_gelu(imp);
    imp.restored_relus = super::qdq::restore_relus(imp);
    remove_dead(imp);
    let layers = imp
        .nodes
        .iter()
        .map(|n| {
            let Pending::Op(op) = &n.pending else {
                unreachable!("every node was finished by take_weights")
            };
            Layer {
                name: n.name.clone(),
                op_type: n.op_type.clone(),
                op: op.clone(),
                inputs: n.inputs.clone(),
                output: n.output,
                in_shape: Vec::new(),
                out_shape: Vec::new(),
            }
        })
        .collect::<Vec<_>>();
    let mut used: Vec<ValueId> = layers
        .iter()
        .flat_map(|l| l.inputs.iter().flatten().copied())
        .collect();
    used.extend(&imp.outputs);
    if let Some(&v) = imp.outputs.iter().find(|v| imp.consts.contains_key(v)) {
        return Err(Error::format(
            &imp.label,
            format!("graph output '{}' is a constant", imp.values[v].name),
        ));
    }
    let used: std::collections::HashSet<ValueId> = used.into_iter().collect();
    let mut consts: Vec<(ValueId, Tensor)> = std::mem::take(&mut imp.consts)
        .into_iter()
        .filter(|(v, _)| used.contains(v))
        .collect();
    consts.sort_by_key(|(v, _)| *v);
    Ok((layers, consts, imp.values.clone()))
}

/// Replaces every use of value `from` by `to` (in node inputs and graph outputs).
fn rename(imp: &mut Importer, from: ValueId, to: ValueId) {
    for n in &mut imp.nodes {
        for v in n.inputs.iter_mut().flatten() {
            if *v == from {
                *v = to;
            }
        }
    }
    for v in &mut imp.outputs {
        if *v == from {
            *v = to;
        }
    }
}

fn remove_identities(imp: &mut Importer) {
    let mut i = 0;
    while i < imp.nodes.len() {
        if matches!(imp.nodes[i].pending, Pending::Identity) {
            let n = imp.nodes.remove(i);
            if let Some(src) = n.inputs.first().copied().flatten() {
                if imp.outputs.contains(&n.output) && !imp.consts.contains_key(&src) {
                    // Keep a graph output's name: make it a copy instead.
                    imp.nodes.insert(
                        i,
                        RawNode {
                            pending: Pending::Op(Op::Identity),
                            ..n
                        },
                    );
                    i += 1;
                    continue;
                }
                rename(imp, n.output, src);
            }
            continue;
        }
        i += 1;
    }
}

/// Evaluates every node whose inputs are all constants, and Clip bounds given as constants.
fn fold_constants(imp: &mut Importer) -> Result<()> {
    let limits = Limits { max_elems: 1 << 28 };
    let mut i = 0;
    while i < imp.nodes.len() {
        clip_bounds(imp, i)?;
        let n = &imp.nodes[i];
        let all_const = !n.inputs.is_empty()
            && n.inputs
                .iter()
                .flatten()
                .all(|v| imp.consts.contains_key(v));
        if let (Pending::Op(op), true) = (&n.pending, all_const)
            && !op.has_weights()
        {
            let ins: Vec<Option<&Tensor>> = n
                .inputs
                .iter()
                .map(|v| v.map(|v| &imp.consts[&v]))
                .collect();
            let t = eval(op, &ins, &limits).map_err(|m| imp.node_err(i, m))?;
            let out = n.output;
            if !imp.outputs.contains(&out) {
                imp.consts.insert(out, t);
                imp.nodes.remove(i);
                continue;
            }
        }
        i += 1;
    }
    Ok(())
}

/// Clip's min/max inputs (opset ≥ 11) become attributes when they are constants.
fn clip_bounds(imp: &mut Importer, i: usize) -> Result<()> {
    let n = &imp.nodes[i];
    if !matches!(n.pending, Pending::Op(Op::Clip { .. })) || n.inputs.len() <= 1 {
        return Ok(());
    }
    let bound = |k: usize, default: f32| -> std::result::Result<f32, String> {
        match n.inputs.get(k).copied().flatten() {
            None => Ok(default),
            Some(v) => match imp.consts.get(&v) {
                Some(t) if t.len() == 1 => Ok(t.to_f32_vec()[0]),
                _ => Err("Clip bounds must be constant scalars".into()),
            },
        }
    };
    let min = bound(1, f32::NEG_INFINITY).map_err(|m| imp.node_err(i, m))?;
    let max = bound(2, f32::INFINITY).map_err(|m| imp.node_err(i, m))?;
    let n = &mut imp.nodes[i];
    n.pending = Pending::Op(Op::Clip { min, max });
    n.inputs.truncate(1);
    Ok(())
}

fn constant_f32(imp: &Importer, v: Option<ValueId>) -> Option<(Vec<usize>, Vec<f32>)> {
    let t = imp.consts.get(&v?)?;
    Some((t.shape.clone(), t.as_f32()?.to_vec()))
}

/// Takes constant `v` out of the table when node `i` is its only reader (a weight moves into
/// the node without a copy); else copies it.
fn take_constant_f32(
    imp: &mut Importer,
    i: usize,
    v: Option<ValueId>,
) -> Option<(Vec<usize>, Vec<f32>)> {
    let v = v?;
    let readers = imp
        .nodes
        .iter()
        .filter(|n| n.inputs.contains(&Some(v)))
        .count();
    if readers == 1 && imp.nodes[i].inputs.contains(&Some(v)) && !imp.outputs.contains(&v) {
        if imp.consts.get(&v).is_some_and(|t| t.as_f32().is_some()) {
            let t = imp.consts.remove(&v).expect("present");
            if let crate::engine::tensor::Data::F32(d) = t.data {
                return Some((t.shape, d));
            }
        }
        return None;
    }
    constant_f32(imp, Some(v))
}

/// Turns Conv/Gemm/MatMul/BatchNormalization into finished ops.
fn take_weights(imp: &mut Importer) -> Result<()> {
    let mut i = 0;
    while i < imp.nodes.len() {
        let pending = imp.nodes[i].pending.clone();
        let op = match pending {
            Pending::Op(Op::Gather { axis }) => {
                if let Some(op) = embedding(imp, i, axis) {
                    imp.nodes[i].pending = Pending::Op(op);
                }
                i += 1;
                continue;
            }
            Pending::Op(_) => {
                i += 1;
                continue;
            }
            Pending::Conv {
                kernel,
                strides,
                pads,
                dilations,
                group,
            } => conv(imp, i, kernel, &strides, &pads, &dilations, group)
                .map_err(|m| imp.node_err(i, m))?,
            Pending::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => gemm(imp, i, alpha, beta, trans_a, trans_b).map_err(|m| imp.node_err(i, m))?,
            Pending::MatMul => matmul(imp, i),
            Pending::BatchNorm { eps } => {
                if batchnorm(imp, i, eps).map_err(|m| imp.node_err(i, m))? {
                    continue; // folded and removed
                }
                i += 1;
                continue;
            }
            Pending::Identity => unreachable!("removed before"),
        };
        imp.nodes[i].pending = Pending::Op(op);
        i += 1;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn conv(
    imp: &mut Importer,
    i: usize,
    kernel: Option<Vec<i64>>,
    strides: &[i64],
    pads: &[i64],
    dilations: &[i64],
    group: i64,
) -> std::result::Result<Op, String> {
    let wv = imp.nodes[i].inputs.get(1).copied().flatten();
    if let Some(v) = wv {
        imp.weight_src.insert(imp.nodes[i].name.clone(), (v, false));
    }
    let (shape, w) =
        take_constant_f32(imp, i, wv).ok_or("the weight must be a constant float tensor")?;
    let n = &imp.nodes[i];
    let [o, ci, kh, kw] = shape[..] else {
        return Err(format!(
            "weight shape {shape:?} is not [out, in/groups, kh, kw] (2-D convs only)"
        ));
    };
    if kernel.is_some_and(|k| k != [kh as i64, kw as i64]) {
        return Err("kernel_shape disagrees with the weight".into());
    }
    let bias = match n.inputs.get(2).copied().flatten() {
        None => vec![0.0; o],
        Some(v) => {
            constant_f32(imp, Some(v))
                .filter(|(s, _)| s == &[o])
                .ok_or("the bias must be a constant [out]")?
                .1
        }
    };
    let groups = usize::try_from(group)
        .ok()
        .filter(|&g| g > 0 && o % g == 0)
        .ok_or(format!("group {group} must divide the {o} output channels"))?;
    let p = |v: &[i64], what: &str| match v {
        [a, b] if *a > 0 && *b > 0 => Ok((*a as usize, *b as usize)),
        _ => Err(format!("{what} {v:?} must be two positive values")),
    };
    if o == 0 || ci == 0 || kh == 0 || kw == 0 {
        return Err(format!("weight shape {shape:?} has a zero dimension"));
    }
    let weight = Array4::from_shape_vec((o, ci, kh, kw), w).map_err(|e| e.to_string())?;
    imp.nodes[i].inputs.truncate(1);
    Ok(Op::Conv2d {
        weight,
        bias: Array1::from(bias),
        stride: p(strides, "strides")?,
        padding: pads4(pads)?,
        dilation: p(dilations, "dilations")?,
        groups,
    })
}

fn gemm(
    imp: &mut Importer,
    i: usize,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
) -> std::result::Result<Op, String> {
    if trans_a {
        return Err("transA = 1 is not supported".into());
    }
    let bv = imp.nodes[i].inputs.get(1).copied().flatten();
    if let Some(v) = bv.filter(|_| alpha == 1.0) {
        imp.weight_src
            .insert(imp.nodes[i].name.clone(), (v, !trans_b));
    }
    let (shape, b) = take_constant_f32(imp, i, bv).ok_or("B must be a constant float matrix")?;
    let n = &imp.nodes[i];
    let [r, c] = shape[..] else {
        return Err(format!("B has shape {shape:?}, not a matrix"));
    };
    let b = Array2::from_shape_vec((r, c), b).map_err(|e| e.to_string())?;
    let mut weight = if trans_b {
        b
    } else {
        b.t().as_standard_layout().into_owned()
    };
    if alpha != 1.0 {
        weight.mapv_inplace(|w| w * alpha);
    }
    let out = weight.dim().0;
    let bias = match n.inputs.get(2).copied().flatten() {
        None => vec![0.0; out],
        Some(v) => {
            let (s, c) = constant_f32(imp, Some(v)).ok_or("C must be a constant")?;
            match c.len() {
                1 => vec![c[0] * beta; out],
                l if l == out && s.iter().rev().skip(1).all(|&d| d == 1) => {
                    c.iter().map(|x| x * beta).collect()
                }
                _ => return Err(format!("C of shape {s:?} is not a bias of {out}")),
            }
        }
    };
    if weight.is_empty() {
        return Err(format!("B has shape {shape:?} with a zero dimension"));
    }
    imp.nodes[i].inputs.truncate(1);
    Ok(Op::Linear {
        weight,
        bias: Array1::from(bias),
    })
}

/// A Gather along axis 0 of a constant float matrix at indices that are not constant becomes
/// an embedding (a weight node whose only input is the indices); `None` leaves it a Gather.
fn embedding(imp: &mut Importer, i: usize, axis: i64) -> Option<Op> {
    let n = &imp.nodes[i];
    let (tv, iv) = match n.inputs[..] {
        [Some(t), Some(x)] => (t, x),
        _ => return None,
    };
    let is_table = imp.consts.get(&tv).is_some_and(|t| {
        t.as_f32().is_some() && t.shape.len() == 2 && t.shape.iter().all(|&d| d > 0)
    });
    if !is_table || !(axis == 0 || axis == -2) || imp.consts.contains_key(&iv) {
        return None;
    }
    imp.weight_src.insert(n.name.clone(), (tv, false));
    let (shape, t) = take_constant_f32(imp, i, Some(tv))?;
    let table = Array2::from_shape_vec((shape[0], shape[1]), t).expect("checked shape");
    imp.nodes[i].inputs = vec![Some(iv)];
    Some(Op::Embedding { table })
}

fn matmul(imp: &mut Importer, i: usize) -> Op {
    let n = &imp.nodes[i];
    let a_const = n
        .inputs
        .first()
        .copied()
        .flatten()
        .is_some_and(|v| imp.consts.contains_key(&v));
    let bv = n.inputs.get(1).copied().flatten();
    let is_matrix = bv.and_then(|v| imp.consts.get(&v)).is_some_and(|t| {
        t.as_f32().is_some() && t.shape.len() == 2 && t.shape.iter().all(|&d| d > 0)
    });
    if !is_matrix || a_const {
        return Op::MatMul;
    }
    if let Some(v) = bv {
        imp.weight_src.insert(imp.nodes[i].name.clone(), (v, true));
    }
    match take_constant_f32(imp, i, bv) {
        Some((shape, b)) => {
            let b = Array2::from_shape_vec((shape[0], shape[1]), b).expect("checked shape");
            imp.nodes[i].inputs.truncate(1);
            Op::Linear {
                weight: b.t().as_standard_layout().into_owned(),
                bias: Array1::zeros(shape[1]),
            }
        }
        _ => Op::MatMul,
    }
}

/// Folds a BatchNormalization into the conv that is its input's only producer and whose output
/// nothing else reads (returns true: the node is gone); else makes it an affine op.
fn batchnorm(imp: &mut Importer, i: usize, eps: f32) -> std::result::Result<bool, String> {
    let n = &imp.nodes[i];
    let get = |k: usize| constant_f32(imp, n.inputs.get(k).copied().flatten()).map(|(_, v)| v);
    let (Some(gamma), Some(beta), Some(mean), Some(var)) = (get(1), get(2), get(3), get(4)) else {
        return Err("scale, B, mean and var must be constants".into());
    };
    let c = gamma.len();
    if [beta.len(), mean.len(), var.len()].iter().any(|&l| l != c) {
        return Err("scale, B, mean and var differ in length".into());
    }
    let scale: Vec<f32> = (0..c).map(|k| gamma[k] / (var[k] + eps).sqrt()).collect();
    let shift: Vec<f32> = (0..c).map(|k| beta[k] - mean[k] * scale[k]).collect();
    if scale.iter().chain(&shift).any(|x| !x.is_finite()) {
        return Err("folding gives non-finite values (a negative variance or ε?)".into());
    }
    let input = n.inputs[0].ok_or("has no input")?;
    let output = n.output;
    let single_reader = imp
        .nodes
        .iter()
        .filter(|m| m.inputs.contains(&Some(input)))
        .count()
        == 1
        && !imp.outputs.contains(&input);
    let producer = imp.nodes[..i].iter().position(|m| m.output == input);
    if let Some(p) = producer.filter(|_| single_reader)
        && let Pending::Op(Op::Conv2d { weight, bias, .. }) = &mut imp.nodes[p].pending
        && weight.dim().0 == c
    {
        let row = weight.len() / c;
        let w = weight.as_slice_mut().expect("standard layout");

        for k in 0..c {
            w[k * row..(k + 1) * row]
                .iter_mut()
                .for_each(|x| *x *= scale[k]);
            bias[k] = bias[k] * scale[k] + shift[k];
        }
        // The folded weights are no longer the integers a Q/DQ file stored.
        let conv_name = imp.nodes[p].name.clone();
        imp.weight_src.remove(&conv_name);
        imp.nodes.remove(i);
        rename(imp, output, input);
        return Ok(true);
    }
    imp.nodes[i].inputs.truncate(1);
    imp.nodes[i].pending = Pending::Op(Op::BatchNorm { scale, shift });
    Ok(false)
}

/// Add(linear(x), c) with a constant bias vector c becomes the linear node's bias, when the
/// linear node's output has no other reader.
fn fuse_bias_adds(imp: &mut Importer) {
    let mut i = 0;
    while i < imp.nodes.len() {
        let n = &imp.nodes[i];
        if !matches!(n.pending, Pending::Op(Op::Binary(BinaryOp::Add))) || n.inputs.len() != 2 {
            i += 1;
            continue;
        }
        let (a, b) = (n.inputs[0], n.inputs[1]);
        let (x, c) = if b.is_some_and(|v| imp.consts.contains_key(&v)) {
            (a, b)
        } else {
            (b, a)
        };
        let (Some(x), Some(c)) = (x, c) else {
            i += 1;
            continue;
        };
        let producer = imp.nodes[..i].iter().position(|m| m.output == x);
        let readers = imp
            .nodes
            .iter()
            .filter(|m| m.inputs.contains(&Some(x)))
            .count();
        let cvec = imp
            .consts
            .get(&c)
            .and_then(|t| t.as_f32().map(|d| (t.shape.clone(), d.to_vec())));
        let fused = match (producer, cvec) {
            (Some(p), Some((shape, cv))) if readers == 1 && !imp.outputs.contains(&x) => {
                match &mut imp.nodes[p].pending {
                    Pending::Op(Op::Linear { bias, .. })
                        if shape.len() == 1 && cv.len() == bias.len() =>
                    {
                        bias.iter_mut().zip(&cv).for_each(|(b, c)| *b += c);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if fused {
            let out = imp.nodes[i].output;
            let p = producer.expect("fused");
            imp.nodes[p].output = out;
            imp.nodes.remove(i);
            continue;
        }
        i += 1;
    }
}

/// Drops nodes whose output reaches no graph output.
fn remove_dead(imp: &mut Importer) {
    let mut live: std::collections::HashSet<ValueId> = imp.outputs.iter().copied().collect();
    let mut keep = vec![false; imp.nodes.len()];
    for (k, n) in imp.nodes.iter().enumerate().rev() {
        if live.contains(&n.output) {
            keep[k] = true;
            live.extend(n.inputs.iter().flatten());
        }
    }
    let mut k = 0;
    imp.nodes.retain(|_| {
        k += 1;
        keep[k - 1]
    });
}
