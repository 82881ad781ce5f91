//! Shape plumbing folded to constants where the data fixes it: a Shape node whose dims do not
//! include the batch axis (the sequence length of a [batch, 16] input, say), a Gather of
//! non-batch dims from a Shape node, and then every node whose inputs have all become constant
//! (the Range/Unsqueeze/Concat/Expand chains that build position ids and masks).

use crate::engine::ops::{Limits, eval};
use crate::engine::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::{Model, Op, ValueId};

/// Every value's full shape in a dry run of `n` samples (zeros; ids 0, masks 1), `None` where
/// unknown; `None` when an input dimension is open.
fn full_shapes(model: &Model, n: usize) -> Result<Option<Vec<Option<Vec<usize>>>>> {
    let Some(mut inputs) = crate::engine::float::zero_sample(model) else {
        return Ok(None);
    };
    for t in &mut inputs {
        t.shape[0] = n;
        *t = match &t.data {
            crate::engine::tensor::Data::F32(v) => Tensor::f32(t.shape.clone(), v.repeat(n)),
            crate::engine::tensor::Data::I64(v) => Tensor::i64(t.shape.clone(), v.repeat(n)),
            _ => return Ok(None),
        };
    }
    let mut s = vec![None; model.values.len()];
    for (gi, t) in model.inputs.iter().zip(&inputs) {
        s[gi.value] = Some(t.shape.clone());
    }
    let mut outs = Vec::with_capacity(model.layers.len());
    crate::engine::float::forward(
        model,
        inputs,
        crate::engine::float::DEFAULT_MAX_SAMPLE_ELEMS,
        |_, t| outs.push(t.shape.clone()),
    )?;
    for (l, shape) in model.layers.iter().zip(outs) {
        s[l.output] = Some(shape);
    }
    Ok(Some(s))
}

/// The dims of `x` from `start` to `end` that are the same at batch 1 and batch 2 (`None`
/// where they differ: the batch axis, or anything it reaches).
fn static_dims(
    shapes: &Shapes,
    x: ValueId,
    start: i64,
    end: Option<i64>,
) -> Option<Vec<Option<usize>>> {
    let (a, b) = (shapes.0[x].as_ref()?, shapes.1[x].as_ref()?);
    if a.len() != b.len() {
        return None;
    }
    let r = a.len() as i64;
    let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (norm(start), norm(end.unwrap_or(r)));
    Some(
        (s..e.max(s))
            .map(|k| (a[k] == b[k]).then_some(a[k]))
            .collect(),
    )
}

/// What node `i` folds to, if it can.
/// Full shapes at batch 1 and at batch 2.
type Shapes = (Vec<Option<Vec<usize>>>, Vec<Option<Vec<usize>>>);

fn fold_one(model: &Model, shapes: &Shapes, i: usize) -> Result<Option<Tensor>> {
    match fold_shape(model, shapes, i) {
        Some(t) => Ok(Some(t)),
        None => fold_constant(model, i),
    }
}

/// A Shape node, or a Gather from one, whose dims the data fixes.
fn fold_shape(model: &Model, shapes: &Shapes, i: usize) -> Option<Tensor> {
    let l = &model.layers[i];
    let x = l.data_input();
    match (&l.op, x) {
        (Op::Shape { start, end }, Some(x)) => static_dims(shapes, x, *start, *end)?
            .iter()
            .map(|d| d.map(|d| d as i64))
            .collect::<Option<Vec<i64>>>()
            .map(|v| Tensor::i64(vec![v.len()], v)),
        (Op::Gather { axis: 0 }, Some(x)) => {
            let p = model.layers.iter().position(|m| m.output == x)?;
            let (Op::Shape { start, end }, Some(src)) =
                (&model.layers[p].op, model.layers[p].data_input())
            else {
                return None;
            };
            let idx = model.constant(l.inputs.get(1).copied().flatten()?)?;
            let dims = static_dims(shapes, src, *start, *end)?;
            let n = dims.len() as i64;
            let ix = idx.as_i64()?;
            let picked: Option<Vec<i64>> = ix
                .iter()
                .map(|&k| {
                    let k = if k < 0 { k + n } else { k };
                    dims.get(usize::try_from(k).ok()?)
                        .copied()
                        .flatten()
                        .map(|d| d as i64)
                })
                .collect();
            picked.map(|v| Tensor::i64(idx.shape.clone(), v))
        }
        _ => None,
    }
}

/// A node whose inputs are all constants, evaluated.
fn fold_constant(model: &Model, i: usize) -> Result<Option<Tensor>> {
    let l = &model.layers[i];
    let err = |m: String| Error::node(&model.source, &l.name, &l.op_type, m);
    if let Op::Embedding { table } = &l.op {
        // An embedding at ids that became constant (position ids) is a constant.
        let Some(ids) = l.data_input().and_then(|v| model.constant(v)) else {
            return Ok(None);
        };
        return crate::engine::embedding::lookup_f32(table, ids, usize::MAX)
            .map(Some)
            .map_err(err);
    }
    if l.op.has_weights() || l.inputs.is_empty() {
        return Ok(None);
    }
    let ins: Option<Vec<Option<&Tensor>>> = l
        .inputs
        .iter()
        .map(|v| match v {
            None => Some(None),
            Some(v) => model.constant(*v).map(Some),
        })
        .collect();
    let Some(ins) = ins else { return Ok(None) };
    eval(&l.op, &ins, &Limits { max_elems: 1 << 28 })
        .map(Some)
        .map_err(err)
}

/// Folds what the data's fixed sizes make constant; returns how many nodes went.
pub fn fold(model: &mut Model) -> Result<usize> {
    if !model
        .layers
        .iter()
        .any(|l| matches!(l.op, Op::Shape { .. }))
    {
        return Ok(0);
    }
    let (Some(a), Some(b)) = (full_shapes(model, 1)?, full_shapes(model, 2)?) else {
        return Ok(0);
    };
    let shapes = (a, b);
    let mut removed = 0;
    let mut i = 0;
    while i < model.layers.len() {
        let out = model.layers[i].output;
        if model.outputs.contains(&out) {
            i += 1;
            continue;
        }
        match fold_one(model, &shapes, i)? {
            Some(t) => {
                model.consts.push((out, t));
                model.layers.remove(i);
                removed += 1;
            }
            None => i += 1,
        }
    }
    if removed > 0 {
        removed += remove_dead(model);
        let read: std::collections::HashSet<ValueId> = model
            .layers
            .iter()
            .flat_map(|l| l.inputs.iter().flatten().copied())
            .collect();
        model.consts.retain(|(v, _)| read.contains(v));
        model.consts.sort_by_key(|(v, _)| *v);
    }
    Ok(removed)
}

/// Removes nodes whose output nothing reads (a Shape whose Gather was folded); returns how many.
fn remove_dead(model: &mut Model) -> usize {
    let mut removed = 0;
    for i in (0..model.layers.len()).rev() {
        let out = model.layers[i].output;
        let read = model.outputs.contains(&out)
            || model.layers.iter().any(|l| l.inputs.contains(&Some(out)));
        if !read {
            model.layers.remove(i);
            removed += 1;
        }
    }
    removed
}
