//! The float engine's nodes that write their output into an input they read last instead of
//! a new tensor, the values those of the op: a Relu or Clip into its sole input (ReLU6-heavy
//! graphs stop copying every activation), an Add, Sub or Mul of two same-shape real tensors
//! into either operand (a ResNet's residual sum costs one pass and no allocation).

use super::float::Values;
use super::tensor::{Data, Tensor};
use crate::model::{BinaryOp, Layer, Op};

/// Runs node `i` (`layer`) in place when it can: the input it writes into leaves `vals` and
/// its buffer comes back as the output. `None` (the table as it was) otherwise: see
/// `clamp` and `binary` below; `last` is each value's last reader, `limit` the elements per
/// sample an output may hold.
pub fn run(
    layer: &Layer,
    vals: &mut Values,
    last: &[usize],
    i: usize,
    limit: usize,
) -> Option<Tensor> {
    clamp(layer, vals, last, i).or_else(|| binary(layer, vals, last, i, limit))
}

/// A Relu or Clip whose sole input `vals` owns and node `i` reads last.
fn clamp(layer: &Layer, vals: &mut Values, last: &[usize], i: usize) -> Option<Tensor> {
    if !matches!(layer.op, Op::Relu | Op::Clip { .. }) {
        return None;
    }
    let mut x = vals.take_last_sole(layer, last, i)?;
    if super::ops::eval_in_place(&layer.op, &mut x) {
        return Some(x);
    }
    vals.set(layer.inputs[0].expect("sole input"), x);
    None
}

/// An Add, Sub or Mul of two different values of one shape, both real, one of them owned by
/// `vals` and read last by node `i`, when the output stays within `limit` per sample.
fn binary(
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
