//! The integer engine's channels-last mode ([`IntModel::forward_outputs`]): a conv leaves its
//! output channels-last in memory ([n, h, w, c] codes under the [n, c, h, w] shape), the next
//! conv reads it so with no transposes, and elementwise ops (Relu, Clip, a residual Add or Sub
//! of two values of one shape) keep it so. Every other reader gets an NCHW copy, as do the
//! graph outputs, so nothing outside the engine sees the order.
//!
//! [`IntModel::forward_outputs`]: crate::engine::int::IntModel::forward_outputs

use crate::engine::tensor::{Data, Tensor};
use crate::engine::transpose::transpose_i8;
use crate::model::{BinaryOp, Op};

/// `t` (an [n, c, …] tensor stored channels-last: [n, …, c]) stored in its shape's order.
pub fn to_nchw(t: &Tensor) -> Tensor {
    let (n, c) = match t.shape.as_slice() {
        [n, c, _, ..] => (*n, *c),
        _ => return t.clone(),
    };
    let sample = t.len() / n.max(1);
    let plane = sample / c.max(1);
    if c <= 1 || plane <= 1 {
        return t.clone();
    }
    let data = match &t.data {
        Data::Q { data, qp } => {
            let mut y = vec![0i8; data.len()];
            for (src, dst) in data.chunks_exact(sample).zip(y.chunks_exact_mut(sample)) {
                transpose_i8(src, (plane, c, c), dst, plane);
            }
            Data::Q { data: y, qp: *qp }
        }
        Data::F32(v) => Data::F32(transposed(v, (sample, plane, c))),
        Data::I64(v) => Data::I64(transposed(v, (sample, plane, c))),
    };
    Tensor {
        shape: t.shape.clone(),
        data,
    }
}

/// Samples of `sample` values, each [plane, c], as [c, plane].
fn transposed<T: Copy + Default>(v: &[T], (sample, plane, c): (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::default(); v.len()];
    for (src, dst) in v.chunks_exact(sample).zip(y.chunks_exact_mut(sample)) {
        for (p, row) in src.chunks_exact(c).enumerate() {
            for (ch, &x) in row.iter().enumerate() {
                dst[ch * plane + p] = x;
            }
        }
    }
    y
}

/// Whether `op` on `ins` computes each output value from the input values at the same index
/// alone, so it runs on channels-last inputs as they are and its output is channels-last: Relu
/// and Clip, and Add or Sub of two inputs of one 4-D shape (no broadcasting).
pub fn keeps_channels_last(op: &Op, ins: &[Option<&Tensor>]) -> bool {
    let arity = match op {
        Op::Relu | Op::Clip { .. } => 1,
        Op::Binary(BinaryOp::Add | BinaryOp::Sub) => 2,
        _ => return false,
    };
    let Some(Some(first)) = ins.first() else {
        return false;
    };
    ins.len() == arity
        && first.shape.len() == 4
        && ins
            .iter()
            .all(|t| t.is_some_and(|t| t.shape == first.shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QParams, Scheme};

    #[test]
    fn channels_last_values_come_back_in_shape_order() {
        // [2, 3, 2, 2] stored [2, 2, 2, 3]: value (s, ch, p) at (s·4 + p)·3 + ch.
        let (n, c, p) = (2, 3, 4);
        let nchw = |s: usize, ch: usize, i: usize| (s * 100 + ch * 10 + i) as i64;
        let mut stored = vec![0i64; n * c * p];
        for s in 0..n {
            for ch in 0..c {
                for i in 0..p {
                    stored[(s * p + i) * c + ch] = nchw(s, ch, i);
                }
            }
        }
        let want: Vec<i64> = (0..n * c * p)
            .map(|j| nchw(j / 12, j / 4 % 3, j % 4))
            .collect();
        let t = Tensor::i64(vec![n, c, 2, 2], stored.clone());
        assert_eq!(to_nchw(&t).data, Data::I64(want.clone()));
        let f = Tensor::f32(vec![n, c, 2, 2], stored.iter().map(|&v| v as f32).collect());
        let wf: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_eq!(to_nchw(&f).data, Data::F32(wf));
        let qp = QParams {
            scale: 0.5,
            zero_point: 3,
            bits: 8,
            scheme: Scheme::Asymmetric,
        };
        let q = Tensor::q(
            vec![n, c, 2, 2],
            stored.iter().map(|&v| v as i8).collect(),
            qp,
        );
        let wq: Vec<i8> = want.iter().map(|&v| v as i8).collect();
        assert_eq!(to_nchw(&q).data, Data::Q { data: wq, qp });
    }

    #[test]
    fn only_elementwise_ops_on_one_shape_keep_the_order() {
        let a = Tensor::f32(vec![1, 2, 2, 2], vec![0.0; 8]);
        let b = Tensor::f32(vec![1, 2, 1, 1], vec![0.0; 2]);
        let add = Op::Binary(BinaryOp::Add);
        assert!(keeps_channels_last(&add, &[Some(&a), Some(&a)]));
        assert!(!keeps_channels_last(&add, &[Some(&a), Some(&b)]));
        assert!(keeps_channels_last(&Op::Relu, &[Some(&a)]));
        assert!(!keeps_channels_last(&Op::Relu, &[Some(&b), Some(&b)]));
        assert!(!keeps_channels_last(
            &Op::Binary(BinaryOp::Mul),
            &[Some(&a), Some(&a)]
        ));
        let flat = Tensor::f32(vec![2, 4], vec![0.0; 8]);
        assert!(!keeps_channels_last(&Op::Relu, &[Some(&flat)]));
    }
}
