//! Residual Add/Sub of two quantized tensors with an output point of its own, as TFLite's
//! reference `integer_ops/add.h`: both operands are shifted left by 20 bits, scaled by
//! M₁ = s₁ / 2·max(s₁, s₂) and M₂ = s₂ / 2·max(s₁, s₂), summed, and requantized by
//! M_o = 2·max(s₁, s₂) / (2²⁰ · s_o): y = z_o + M_o(M₁(x₁ − z₁)·2²⁰ ± M₂(x₂ − z₂)·2²⁰).

use crate::engine::ops::broadcast::{broadcast_offsets, broadcast_shape};
use crate::engine::requant::Requant;
use crate::engine::tensor::Tensor;
use crate::quant::{FixedMultiplier, QParams};

/// Left shift applied to both operands before their multipliers (TFLite's int8 value).
pub const LEFT_SHIFT: i32 = 20;

/// Elements from which a same-shape Add builds a table of every code pair (building it costs
/// about as much as 65,536 elements done one by one).
const PAIR_TABLE_MIN: usize = 1 << 18;

/// One Add or Sub of two quantized operands into `out` qparams.
#[derive(Debug, Clone, Copy)]
pub struct QAdd {
    m1: FixedMultiplier,
    m2: FixedMultiplier,
    mo: FixedMultiplier,
    z1: i32,
    z2: i32,
    zo: i32,
    lo: i32,
    hi: i32,
    sub: bool,
}

impl QAdd {
    /// The kernel for x₁ ± x₂ with operands in `q1`, `q2` and the result in `qo`.
    pub fn new(q1: QParams, q2: QParams, qo: QParams, sub: bool) -> Self {
        let (s1, s2, so) = (q1.scale as f64, q2.scale as f64, qo.scale as f64);
        let twice_max = 2.0 * s1.max(s2);
        QAdd {
            m1: FixedMultiplier::from_f64(s1 / twice_max),
            m2: FixedMultiplier::from_f64(s2 / twice_max),
            mo: FixedMultiplier::from_f64(twice_max / ((1i64 << LEFT_SHIFT) as f64 * so)),
            z1: q1.zero_point,
            z2: q2.zero_point,
            zo: qo.zero_point,
            lo: qo.qmin(),
            hi: qo.qmax(),
            sub,
        }
    }

    /// x₁ ± x₂ on one pair of codes.
    #[inline]
    pub fn apply(&self, a: i8, b: i8) -> i8 {
        let a = self.m1.apply((a as i32 - self.z1) << LEFT_SHIFT);
        let b = self.m2.apply((b as i32 - self.z2) << LEFT_SHIFT);
        self.finish(a, b)
    }

    #[inline]
    fn finish(&self, a: i32, b: i32) -> i8 {
        let raw = if self.sub { a - b } else { a + b };
        (self.zo + self.mo.apply(raw)).clamp(self.lo, self.hi) as i8
    }

    /// The result for every code pair (index: first code as u8 · 256 + second code as u8):
    /// the raw sums from the per-code tables, then `finish`'s multiply, zero point and clamp as
    /// the requantization epilogue computes them (with k = 0, the same arithmetic) in one pass.
    fn pair_table(&self, t1: &[i32; 256], t2: &[i32; 256]) -> Vec<i8> {
        let raw: Vec<i32> = t1
            .iter()
            .flat_map(|&p| {
                t2.iter()
                    .map(move |&q| if self.sub { p - q } else { p + q })
            })
            .collect();
        let epilogue = Requant::new(vec![self.mo], vec![0], vec![self.zo], self.lo, self.hi);
        let mut table = vec![0i8; raw.len()];
        epilogue.run_column(0, &raw, &mut table);
        table
    }

    /// Each operand's scaled term for all 256 codes (indexed by the code as u8): the first two
    /// multiplies of [`QAdd::apply`] done once per tensor instead of once per element.
    fn tables(&self) -> ([i32; 256], [i32; 256]) {
        let (mut t1, mut t2) = ([0i32; 256], [0i32; 256]);
        for code in -128..=127i32 {
            t1[code as u8 as usize] = self.m1.apply((code - self.z1) << LEFT_SHIFT);
            t2[code as u8 as usize] = self.m2.apply((code - self.z2) << LEFT_SHIFT);
        }
        (t1, t2)
    }
}

/// x₁ ± x₂ of two quantized tensors (numpy broadcasting) into `qo`.
pub fn add(x1: &Tensor, x2: &Tensor, qo: QParams, sub: bool) -> Result<Tensor, String> {
    let ((a, q1), (b, q2)) = match (x1.as_q(), x2.as_q()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("expects two quantized operands".into()),
    };
    let k = QAdd::new(q1, q2, qo, sub);
    let (t1, t2) = k.tables();
    let apply = |u: i8, v: i8| k.finish(t1[u as u8 as usize], t2[v as u8 as usize]);
    if x1.shape == x2.shape {
        if a.len() >= PAIR_TABLE_MIN {
            // One table of all 65,536 code pairs: a single load per element.
            let table = k.pair_table(&t1, &t2);
            let y = a
                .iter()
                .zip(b)
                .map(|(&u, &v)| table[(u as u8 as usize) << 8 | v as u8 as usize])
                .collect();
            return Ok(Tensor::q(x1.shape.clone(), y, qo));
        }
        let y = a.iter().zip(b).map(|(&u, &v)| apply(u, v)).collect();
        return Ok(Tensor::q(x1.shape.clone(), y, qo));
    }
    let shape = broadcast_shape(&x1.shape, &x2.shape)?;
    // One operand a single value (a normalization's mean): a table of the other's 256 codes.
    if a.len() == 1 || b.len() == 1 {
        let (table, x): ([i8; 256], _) = if b.len() == 1 {
            (std::array::from_fn(|i| apply(i as u8 as i8, b[0])), a)
        } else {
            (std::array::from_fn(|i| apply(a[0], i as u8 as i8)), b)
        };
        let y = x.iter().map(|&c| table[c as u8 as usize]).collect();
        return Ok(Tensor::q(shape, y, qo));
    }
    let oa = broadcast_offsets(&x1.shape, &shape)?;
    let ob = broadcast_offsets(&x2.shape, &shape)?;
    let y = oa
        .iter()
        .zip(&ob)
        .map(|(&i, &j)| apply(a[i], b[j]))
        .collect();
    Ok(Tensor::q(shape, y, qo))
}

/// The plain reference: dequantize both codes, add or subtract in f64, quantize to `qo`.
pub fn add_reference(a: i8, q1: QParams, b: i8, q2: QParams, qo: QParams, sub: bool) -> i8 {
    let u = q1.scale as f64 * (a as i32 - q1.zero_point) as f64;
    let v = q2.scale as f64 * (b as i32 - q2.zero_point) as f64;
    let r = if sub { u - v } else { u + v };
    let q = (r / qo.scale as f64).round() + qo.zero_point as f64;
    q.clamp(qo.qmin() as f64, qo.qmax() as f64) as i8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{ClipRange, Scheme};

    fn qp(lo: f32, hi: f32) -> QParams {
        QParams::from_range(ClipRange::new(lo, hi), 8, Scheme::Asymmetric)
    }

    #[test]
    fn add_and_sub_are_within_one_step_of_the_f64_reference() {
        let cases = [
            (qp(-1.0, 3.0), qp(0.0, 6.0), qp(-1.0, 9.0)),
            (qp(-0.01, 0.02), qp(-50.0, 40.0), qp(-60.0, 60.0)),
            (qp(0.0, 1.0), qp(0.0, 1.0), qp(0.0, 2.0)),
            (qp(-3.0, 3.0), qp(-0.5, 0.7), qp(-0.1, 0.1)),
        ];
        for (q1, q2, qo) in cases {
            for sub in [false, true] {
                let k = QAdd::new(q1, q2, qo, sub);
                let mut exact = 0;
                for a in -128..=127i32 {
                    for b in -128..=127i32 {
                        let got = k.apply(a as i8, b as i8) as i32;
                        let want = add_reference(a as i8, q1, b as i8, q2, qo, sub) as i32;
                        assert!((got - want).abs() <= 1, "{a} {b}: {got} vs {want}");
                        exact += usize::from(got == want);
                    }
                }
                assert!(exact * 100 >= 256 * 256 * 99, "only {exact} exact");
                // The tensor kernel (per-code tables) on all 65,536 pairs, against the f64
                // reference as well.
                // Four copies: long enough for the pair-table path too.
                let n = 4 * 65536;
                let xa: Vec<i8> = (0..n).map(|i| (i / 256) as u8 as i8).collect();
                let xb: Vec<i8> = (0..n).map(|i| (i % 256) as u8 as i8).collect();
                let (ta, tb) = (
                    Tensor::q(vec![n], xa.clone(), q1),
                    Tensor::q(vec![n], xb.clone(), q2),
                );
                let short = add(
                    &Tensor::q(vec![65536], xa[..65536].to_vec(), q1),
                    &Tensor::q(vec![65536], xb[..65536].to_vec(), q2),
                    qo,
                    sub,
                )
                .unwrap();
                assert_eq!(short.as_q().unwrap().0.len(), 65536);
                let y = add(&ta, &tb, qo, sub).unwrap();
                let (yq, _) = y.as_q().unwrap();
                assert_eq!(&yq[..65536], short.as_q().unwrap().0, "both paths");
                for ((&u, &v), &got) in xa.iter().zip(&xb).zip(yq) {
                    assert_eq!(got, k.apply(u, v));
                    let want = add_reference(u, q1, v, q2, qo, sub);
                    assert!((got as i32 - want as i32).abs() <= 1);
                }
            }
        }
    }

    #[test]
    fn broadcasts_a_per_channel_operand() {
        let (q1, q2, qo) = (qp(-1.0, 1.0), qp(0.0, 2.0), qp(-1.0, 3.0));
        let x: Vec<i8> = (0..24).map(|i| (i * 11 - 120) as i8).collect();
        let c: Vec<i8> = vec![-100, 0, 90];
        let t1 = Tensor::q(vec![2, 3, 2, 2], x.clone(), q1);
        let t2 = Tensor::q(vec![3, 1, 1], c.clone(), q2);
        let y = add(&t1, &t2, qo, false).unwrap();
        assert_eq!(y.shape, vec![2, 3, 2, 2]);
        let (yq, _) = y.as_q().unwrap();
        for (i, &v) in yq.iter().enumerate() {
            let ch = (i / 4) % 3;
            assert_eq!(v, QAdd::new(q1, q2, qo, false).apply(x[i], c[ch]));
        }
        assert!(add(&t1, &Tensor::q(vec![3], vec![0, 0, 0], q2), qo, false).is_err());
        assert!(add(&t1, &Tensor::f32(vec![1], vec![0.0]), qo, false).is_err());
    }

    #[test]
    fn a_single_value_operand_on_either_side_is_within_one_step_of_f64() {
        // The table path (a normalization's x − mean, or mean − x): every code of the tensor.
        let (q1, q2, qo) = (qp(-0.2, 1.0), qp(-3.0, 3.0), qp(-2.5, 2.5));
        let x: Vec<i8> = (-128..=127).collect();
        let t = Tensor::q(vec![1, 1, 16, 16], x.clone(), q1);
        let m = Tensor::q(vec![1, 1, 1, 1], vec![37], q2);
        for sub in [false, true] {
            let right = add(&t, &m, qo, sub).unwrap();
            let left = add(&m, &t, qo, sub).unwrap();
            assert_eq!((&right.shape, &left.shape), (&t.shape, &t.shape));
            let (r, l) = (right.as_q().unwrap().0, left.as_q().unwrap().0);
            for (i, &c) in x.iter().enumerate() {
                let want = add_reference(c, q1, 37, q2, qo, sub) as i32;
                assert!((r[i] as i32 - want).abs() <= 1, "x ± m, code {c}");
                let want = add_reference(37, q2, c, q1, qo, sub) as i32;
                assert!((l[i] as i32 - want).abs() <= 1, "m ± x, code {c}");
            }
        }
    }
}
