//! Ops that move values: Transpose, Concat and Expand.

use super::Limits;
use super::args::{axis, check_out};
use super::broadcast::{broadcast_offsets, broadcast_shape};
use super::index::{Walk, cartesian, strides, take};
use crate::engine::tensor::{Data, Tensor};

/// Permute the axes of `x` (output axis d is input axis perm[d]; reversed when `None`).
pub(super) fn transpose(x: &Tensor, perm: Option<&[usize]>) -> Result<Tensor, String> {
    let r = x.shape.len();
    let perm: Vec<usize> = perm.map_or_else(|| (0..r).rev().collect(), <[usize]>::to_vec);
    let mut seen = vec![false; r];
    if perm.len() != r
        || perm
            .iter()
            .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
    {
        return Err(format!("{perm:?} is not a permutation of {r} axes"));
    }
    let st = strides(&x.shape);
    let walks: Vec<Walk> = perm
        .iter()
        .map(|&p| Walk::along(x.shape[p], st[p]))
        .collect();
    Ok(Tensor {
        shape: perm.iter().map(|&p| x.shape[p]).collect(),
        data: take(&x.data, &cartesian(&walks)),
    })
}

/// Join `parts` (same element type and rank, same dims except `axis`) along `axis`.
pub(super) fn concat(parts: &[&Tensor], ax: i64, limits: &Limits) -> Result<Tensor, String> {
    let first = parts.first().ok_or("no inputs")?;
    let r = first.shape.len();
    let a = axis(ax, r)?;
    let mut shape = first.shape.clone();
    shape[a] = 0;
    for p in parts {
        let same = p.shape.len() == r && (0..r).all(|d| d == a || p.shape[d] == first.shape[d]);
        if !same {
            return Err(format!(
                "cannot join {:?} and {:?} on axis {a}",
                first.shape, p.shape
            ));
        }
        shape[a] = shape[a]
            .checked_add(p.shape[a])
            .ok_or("concat size overflows")?;
    }
    check_out(&shape, limits)?;
    let outer: usize = shape[..a].iter().product();
    let data = match &first.data {
        Data::F32(_) => Data::F32(join(parts, outer, Tensor::as_f32)?),
        Data::I64(_) => Data::I64(join(parts, outer, Tensor::as_i64)?),
        Data::Q { .. } => return Err("quantized input".into()),
    };
    Ok(Tensor { shape, data })
}

/// For each of `outer` blocks, the block of every part in turn.
fn join<T: Copy>(
    parts: &[&Tensor],
    outer: usize,
    get: fn(&Tensor) -> Option<&[T]>,
) -> Result<Vec<T>, String> {
    let slices = parts
        .iter()
        .map(|p| get(p))
        .collect::<Option<Vec<_>>>()
        .ok_or("inputs must have the same element type")?;
    let mut out = Vec::with_capacity(slices.iter().map(|v| v.len()).sum());
    for o in 0..outer {
        for v in &slices {
            // Each part holds outer · (its dim) · inner values.
            let block = v.len() / outer;
            out.extend_from_slice(&v[o * block..(o + 1) * block]);
        }
    }
    Ok(out)
}

/// Broadcast `x` to the broadcast of its shape and `shape` (numpy rules).
pub(super) fn expand(x: &Tensor, shape: &[usize], limits: &Limits) -> Result<Tensor, String> {
    let out = broadcast_shape(&x.shape, shape)?;
    check_out(&out, limits)?;
    let idx = broadcast_offsets(&x.shape, &out)?;
    Ok(Tensor {
        shape: out,
        data: take(&x.data, &idx),
    })
}
