//! MatMul of two tensors with numpy semantics: the last two axes multiply, the leading ones
//! broadcast; a 1-D left operand is a row, a 1-D right operand a column (the added axis is
//! removed from the result).

use super::Limits;
use super::args::{check_out, f32s};
use super::broadcast::{broadcast_offsets, broadcast_shape};
use crate::engine::tensor::Tensor;
use ndarray::{ArrayView2, ArrayViewMut2, linalg::general_mat_mul};

/// The matrix product of `a` and `b` (F32), f32 arithmetic.
pub(super) fn matmul(a: &Tensor, b: &Tensor, limits: &Limits) -> Result<Tensor, String> {
    let (x, y) = (f32s(a, "input 0")?, f32s(b, "input 1")?);
    if a.shape.is_empty() || b.shape.is_empty() {
        return Err("MatMul of a scalar".into());
    }
    // Promote 1-D operands to matrices.
    let mut sa = a.shape.clone();
    if sa.len() == 1 {
        sa.insert(0, 1);
    }
    let mut sb = b.shape.clone();
    if sb.len() == 1 {
        sb.push(1);
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != k2 {
        return Err(format!("cannot multiply {:?} by {:?}", a.shape, b.shape));
    }
    let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let batch = broadcast_shape(ba, bb)?;
    let mut shape = batch.clone();
    if a.shape.len() > 1 {
        shape.push(m);
    }
    if b.shape.len() > 1 {
        shape.push(n);
    }
    check_out(&shape, limits)?;
    let (ia, ib) = (
        broadcast_offsets(ba, &batch)?,
        broadcast_offsets(bb, &batch)?,
    );
    let mut out = vec![0f32; ia.len() * m * n];
    for (bi, (&i, &j)) in ia.iter().zip(&ib).enumerate() {
        let av = ArrayView2::from_shape((m, k), &x[i * m * k..(i + 1) * m * k]);
        let bv = ArrayView2::from_shape((k, n), &y[j * k * n..(j + 1) * k * n]);
        let cv = ArrayViewMut2::from_shape((m, n), &mut out[bi * m * n..(bi + 1) * m * n]);
        match (av, bv, cv) {
            (Ok(av), Ok(bv), Ok(mut cv)) => general_mat_mul(1.0, &av, &bv, 0.0, &mut cv),
            _ => return Err("matrix views do not fit".into()),
        }
    }
    Ok(Tensor::f32(shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Limits = Limits { max_elems: 1 << 20 };

    fn t(shape: Vec<usize>) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::f32(
            shape,
            (0..n)
                .map(|i| ((i * 7 + 3) % 13) as f32 * 0.25 - 1.5)
                .collect(),
        )
    }

    /// f64 reference over fully expanded 3-D operands [batch, m, k] · [batch, k, n].
    fn reference(
        a: &[f32],
        b: &[f32],
        batch: &[(usize, usize)],
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f64> {
        let mut out = Vec::new();
        for &(i, j) in batch {
            for r in 0..m {
                for c in 0..n {
                    let s: f64 = (0..k)
                        .map(|p| a[i * m * k + r * k + p] as f64 * b[j * k * n + p * n + c] as f64)
                        .sum();
                    out.push(s);
                }
            }
        }
        out
    }

    fn check(got: &Tensor, want: &[f64]) {
        let g = got.as_f32().unwrap();
        assert_eq!(g.len(), want.len());
        for (x, y) in g.iter().zip(want) {
            assert!((*x as f64 - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn batched_and_broadcast() {
        // [2,1,3,4] · [3,4,5] → [2,3,3,5]; batch (i of a, j of b) in output order.
        let (a, b) = (t(vec![2, 1, 3, 4]), t(vec![3, 4, 5]));
        let y = matmul(&a, &b, &BIG).unwrap();
        assert_eq!(y.shape, vec![2, 3, 3, 5]);
        let pairs: Vec<_> = (0..2).flat_map(|i| (0..3).map(move |j| (i, j))).collect();
        check(
            &y,
            &reference(a.as_f32().unwrap(), b.as_f32().unwrap(), &pairs, 3, 4, 5),
        );
    }

    #[test]
    fn one_dimensional_operands() {
        let (v, m) = (t(vec![4]), t(vec![2, 4, 3]));
        let y = matmul(&v, &m, &BIG).unwrap();
        assert_eq!(y.shape, vec![2, 3]);
        check(
            &y,
            &reference(
                v.as_f32().unwrap(),
                m.as_f32().unwrap(),
                &[(0, 0), (0, 1)],
                1,
                4,
                3,
            ),
        );
        let m2 = t(vec![3, 4]);
        let y = matmul(&m2, &v, &BIG).unwrap();
        assert_eq!(y.shape, vec![3]);
        check(
            &y,
            &reference(
                m2.as_f32().unwrap(),
                v.as_f32().unwrap(),
                &[(0, 0)],
                3,
                4,
                1,
            ),
        );
        let y = matmul(&v, &v, &BIG).unwrap();
        assert_eq!(y.shape, Vec::<usize>::new());
        check(
            &y,
            &reference(v.as_f32().unwrap(), v.as_f32().unwrap(), &[(0, 0)], 1, 4, 1),
        );
        assert!(matmul(&m2, &m2, &BIG).is_err());
        assert!(matmul(&t(vec![2, 3, 4]), &t(vec![3, 4, 2]), &BIG).is_err());
        let e = matmul(
            &t(vec![300, 1]),
            &t(vec![1, 300]),
            &Limits { max_elems: 1000 },
        );
        assert_eq!(
            e.unwrap_err(),
            "output of 90000 elements exceeds the limit of 1000"
        );
    }
}
