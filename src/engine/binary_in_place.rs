//! The float engine's Add, Sub and Mul of two same-shape real tensors written into the input
//! that the node reads last, instead of a new tensor: a ResNet's residual sum then costs one
//! pass over the two operands and no allocation. The values are those of the op (the same
//! one f32 operation per element).

use super::float::Values;
use super::tensor::{Data, Tensor};
use crate::model::{BinaryOp, Layer, Op};

/// Runs node `i` (`layer`) in place when it is an Add, Sub or Mul of two different values of
/// one shape, both real, one of them owned by `vals` and read last by this node (per `last`);
/// that input leaves the table and its buffer comes back as the output. `None` (the table as
/// it was) otherwise, or when the output would pass `limit` elements per sample.
pub fn run(
    layer: &Layer,
    vals: &mut Values,
    last: &[usize],
    i: usize,
    limit: usize,
) -> Option<Tensor> {
    let Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul)) = layer.op else {
        return None;
    };
    let [Some(a), Some(b)] = layer.inputs[..] else {
        return None;
    };
    if a == b || !same_real_shape(vals.get(a)?, vals.get(b)?, limit) {
        return None;
    }
    // Into a (y = a ∘ b) or else into b (y = a ∘ b with the sides kept).
    let (mut y, other, into_left) = match vals.take_read_last(a, last, i) {
        Some(t) => (t, b, true),
        None => (vals.take_read_last(b, last, i)?, a, false),
    };
    let (Data::F32(ys), Some(Data::F32(xs))) = (&mut y.data, vals.get(other).map(|t| &t.data))
    else {
        unreachable!("both inputs were checked to be real");
    };
    match op {
        BinaryOp::Add => apply(ys, xs, into_left, |p, q| p + q),
        BinaryOp::Sub => apply(ys, xs, into_left, |p, q| p - q),
        _ => apply(ys, xs, into_left, |p, q| p * q),
    }
    Some(y)
}

/// ys = f(ys, xs) elementwise when the output took the left operand's buffer, else
/// ys = f(xs, ys) (a loop compiled per op, so it vectorizes).
fn apply(ys: &mut [f32], xs: &[f32], into_left: bool, f: impl Fn(f32, f32) -> f32) {
    if into_left {
        ys.iter_mut().zip(xs).for_each(|(p, &q)| *p = f(*p, q));
    } else {
        ys.iter_mut().zip(xs).for_each(|(q, &p)| *q = f(p, *q));
    }
}

/// Both real (F32), of one shape, within `limit` elements per sample (of the first axis).
fn same_real_shape(a: &Tensor, b: &Tensor, limit: usize) -> bool {
    let real = |t: &Tensor| matches!(t.data, Data::F32(_));
    let n = a.shape.first().copied().unwrap_or(1).max(1);
    let within = a.len() <= limit.saturating_mul(n);
    real(a) && real(b) && a.shape == b.shape && within
}
