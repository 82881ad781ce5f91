//! MatMul of two quantized activations (attention's Q·Kᵀ and softmax·V): i8 × i8 → i32 with
//! both zero points corrected, acc = Σ_k (a − z_a)(b − z_b), batched with numpy broadcasting of
//! the leading axes, then y = clamp(z_o + M · acc) with M = s_a · s_b / s_o.

use crate::engine::ops::broadcast::{broadcast_offsets, broadcast_shape};
use crate::engine::tensor::Tensor;
use crate::quant::{FixedMultiplier, QParams};

/// A · B of quantized tensors of rank ≥ 2 ([…, m, k] · […, k, n]) into `qo`.
pub fn matmul(a: &Tensor, b: &Tensor, qo: QParams) -> Result<Tensor, String> {
    let ((qa, pa), (qb, pb)) = match (a.as_q(), b.as_q()) {
        (Some(x), Some(y)) => (x, y),
        _ => return Err("expects two quantized operands".into()),
    };
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(format!(
            "expects rank ≥ 2, got {:?} and {:?}",
            a.shape, b.shape
        ));
    }
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return Err(format!(
            "shapes {:?} and {:?} do not multiply",
            a.shape, b.shape
        ));
    }
    let batch = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    let oa = broadcast_offsets(&a.shape[..ra - 2], &batch)?;
    let ob = broadcast_offsets(&b.shape[..rb - 2], &batch)?;
    let mult = FixedMultiplier::from_f64(pa.scale as f64 * pb.scale as f64 / qo.scale as f64);
    let (lo, hi) = (qo.qmin(), qo.qmax());
    let mut y = Vec::with_capacity(oa.len() * m * n);
    let mut bt = vec![0i16; k * n];
    let mut acc = vec![0i32; n];
    for (&ia, &ib) in oa.iter().zip(&ob) {
        let am = &qa[ia * m * k..(ia + 1) * m * k];
        let bm = &qb[ib * k * n..(ib + 1) * k * n];
        bt.iter_mut()
            .zip(bm)
            .for_each(|(t, &v)| *t = (v as i32 - pb.zero_point) as i16);
        for row in am.chunks_exact(k.max(1)).take(m) {
            acc.fill(0);
            for (kk, &av) in row.iter().enumerate() {
                let av = av as i32 - pa.zero_point;
                for (c, &bv) in acc.iter_mut().zip(&bt[kk * n..(kk + 1) * n]) {
                    *c += av * bv as i32;
                }
            }
            y.extend(
                acc.iter()
                    .map(|&c| (qo.zero_point + mult.apply(c)).clamp(lo, hi) as i8),
            );
        }
        if k == 0 {
            y.extend(std::iter::repeat_n(
                qo.zero_point.clamp(lo, hi) as i8,
                m * n,
            ));
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(Tensor::q(shape, y, qo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::{Limits, eval};
    use crate::model::Op;
    use crate::quant::{ClipRange, Scheme};

    #[test]
    fn batched_broadcast_matmul_is_within_one_step_of_fake_quant() {
        let pa = QParams::from_range(ClipRange::new(-2.0, 3.0), 8, Scheme::Asymmetric);
        let pb = QParams::from_range(ClipRange::new(0.0, 1.0), 8, Scheme::Asymmetric);
        let qo = QParams::from_range(ClipRange::new(-20.0, 30.0), 8, Scheme::Asymmetric);
        let a: Vec<i8> = (0..2 * 3 * 4 * 5)
            .map(|i| ((i * 41) % 256) as u8 as i8)
            .collect();
        let b: Vec<i8> = (0..3 * 5 * 6)
            .map(|i| ((i * 29 + 7) % 256) as u8 as i8)
            .collect();
        let ta = Tensor::q(vec![2, 3, 4, 5], a, pa);
        let tb = Tensor::q(vec![3, 5, 6], b, pb);
        let y = matmul(&ta, &tb, qo).unwrap();
        assert_eq!(y.shape, vec![2, 3, 4, 6]);
        let (fa, fb) = (ta.clone().dequantized(), tb.clone().dequantized());
        let lim = Limits { max_elems: 1 << 20 };
        let want = eval(&Op::MatMul, &[Some(&fa), Some(&fb)], &lim)
            .unwrap()
            .quantize(qo);
        let (g, w) = (y.as_q().unwrap().0, want.as_q().unwrap().0);
        assert!(
            g.iter()
                .zip(w)
                .all(|(x, y)| (*x as i32 - *y as i32).abs() <= 1)
        );
        let exact = g.iter().zip(w).filter(|(x, y)| x == y).count();
        assert!(exact * 100 >= g.len() * 95, "{exact} of {}", g.len());
        assert!(matmul(&ta, &ta, qo).is_err());
    }
}
