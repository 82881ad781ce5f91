//! Residual Add/Sub of two quantized tensors with an output point of its own, in integers:
//! y = z_o + round((A·(x₁ − z₁) ± B·(x₂ − z₂)) / 2^k), rounding half away from zero, where
//! A = round(s₁/s_o · 2^k) and B = round(s₂/s_o · 2^k) are the two scale ratios with k
//! fractional bits, k as large as keeps every sum within 2³⁰ (at most [`MAX_FRAC_BITS`]).
//!
//! This is the f64 formula with the ratios rounded to k bits: with ratios near 1, k is 21 and a
//! result differs from the exact one only when that lies within about 10⁻⁴ of a step from a
//! rounding tie. (TFLite's `integer_ops/add.h` reaches the same precision with a left shift of
//! 20 and three fixed-point multipliers; one 32-bit multiply per operand vectorizes, 16 lanes
//! at a time with AVX-512, where its 64-bit multiplies did not beat a table of every pair.)

#[cfg(target_arch = "x86_64")]
use super::{add_avx2, add_avx512};
use crate::engine::ops::broadcast::{broadcast_offsets, broadcast_shape};
use crate::engine::tensor::Tensor;
use crate::quant::QParams;

/// Most fractional bits of the scale ratios.
pub const MAX_FRAC_BITS: u32 = 24;

/// Largest |A·(x₁ − z₁) ± B·(x₂ − z₂)| the choice of k allows when it fits 32 bits.
const SUM_BOUND: f64 = (1u64 << 30) as f64;

/// Elements from which a same-shape Add without the vector kernel builds a table of every code
/// pair (building it costs about as much as 65,536 elements done one by one).
const PAIR_TABLE_MIN: usize = 1 << 18;

/// One Add or Sub of two quantized operands into `out` qparams.
#[derive(Debug, Clone, Copy)]
pub struct QAdd {
    /// A: the first operand's scale ratio with `k` fractional bits.
    pub(super) a: i64,
    /// ±B: the second operand's, negated for a Sub.
    pub(super) b: i64,
    /// Fractional bits of `a` and `b`.
    pub(super) k: u32,
    pub(super) z1: i32,
    pub(super) z2: i32,
    pub(super) zo: i32,
    pub(super) lo: i32,
    pub(super) hi: i32,
}

impl QAdd {
    /// The kernel for x₁ ± x₂ with operands in `q1`, `q2` and the result in `qo`.
    pub fn new(q1: QParams, q2: QParams, qo: QParams, sub: bool) -> Self {
        let so = qo.scale as f64;
        // Ratios past 2³⁰ saturate every nonzero term anyway; the cap keeps A·d within i64.
        let r1 = (q1.scale as f64 / so).min(SUM_BOUND);
        let r2 = (q2.scale as f64 / so).min(SUM_BOUND);
        let d1 = code_distance(q1.zero_point) as f64;
        let d2 = code_distance(q2.zero_point) as f64;
        let room = SUM_BOUND / (r1 * d1 + r2 * d2);
        let k = if room >= 1.0 {
            (room.log2().floor() as u32).min(MAX_FRAC_BITS)
        } else {
            0
        };
        let scaled = |r: f64| (r * (1u64 << k) as f64).round() as i64;
        QAdd {
            a: scaled(r1),
            b: if sub { -scaled(r2) } else { scaled(r2) },
            k,
            z1: q1.zero_point,
            z2: q2.zero_point,
            zo: qo.zero_point,
            lo: qo.qmin(),
            hi: qo.qmax(),
        }
    }

    /// x₁ ± x₂ on one pair of codes.
    #[inline]
    pub fn apply(&self, a: i8, b: i8) -> i8 {
        let s = self.a * (a as i64 - self.z1 as i64) + self.b * (b as i64 - self.z2 as i64);
        let half = (1i64 << self.k) >> 1;
        let m = (s.abs() + half) >> self.k;
        let r = if s < 0 { -m } else { m };
        (self.zo as i64 + r).clamp(self.lo as i64, self.hi as i64) as i8
    }

    /// Whether every sum of two codes fits the 32-bit arithmetic of the vector kernels (with
    /// the ratios of [`QAdd::one_shift`]).
    pub(super) fn fits_i32(&self) -> bool {
        let (a, b, k) = self.one_shift();
        let most = a.abs() * code_distance(self.z1) + b.abs() * code_distance(self.z2);
        most + (1i64 << k) <= i32::MAX as i64
    }

    /// The ratios and their fractional bits with at least one such bit: (2A, ±2B, 1) where k is
    /// 0, the same sums doubled (the rounding shift of the AVX-512 kernel needs k ≥ 1).
    pub(super) fn one_shift(&self) -> (i64, i64, u32) {
        match self.k {
            0 => (2 * self.a, 2 * self.b, 1),
            k => (self.a, self.b, k),
        }
    }

    /// The result for every code pair (index: first code as u8 · 256 + second code as u8).
    fn pair_table(&self) -> Vec<i8> {
        (0..1usize << 16)
            .map(|i| self.apply((i >> 8) as u8 as i8, i as u8 as i8))
            .collect()
    }
}

/// The largest |code − z| over the signed 8-bit codes.
fn code_distance(z: i32) -> i64 {
    (z as i64 + 128).abs().max((z as i64 - 127).abs())
}

/// A vector kernel of [`QAdd::apply`] on same-shape operands.
#[derive(Clone, Copy)]
pub(super) struct AddKernel {
    /// Elements per step.
    pub lanes: usize,
    /// Whether this CPU runs it.
    pub supported: fn() -> bool,
    /// y[i] = x₁[i] ± x₂[i] for the first `n` (a multiple of `lanes`) elements of `a`, `b`, `y`.
    ///
    /// # Safety
    /// `supported()`; the pointers valid for `n` elements; [`QAdd::fits_i32`] holds.
    pub run: unsafe fn(&QAdd, *const i8, *const i8, *mut i8, usize),
}

/// The vector kernels, widest first.
#[cfg(target_arch = "x86_64")]
const KERNELS: [AddKernel; 2] = [add_avx512::KERNEL, add_avx2::KERNEL];

/// y = x₁ ± x₂ for same-length `a`, `b` and `y`, exactly as [`QAdd::apply`], by the widest
/// vector kernel this CPU runs; false (and `y` untouched) when it runs none or the sums could
/// leave 32 bits.
fn same_shape_simd(k: &QAdd, a: &[i8], b: &[i8], y: &mut [i8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = KERNELS.iter().find(|s| (s.supported)()) {
        return same_shape_with(kernel, k, a, b, y);
    }
    false
}

/// [`same_shape_simd`] by `kernel`, which this CPU must run: whole steps by the kernel, the
/// tail one by one.
fn same_shape_with(kernel: &AddKernel, k: &QAdd, a: &[i8], b: &[i8], y: &mut [i8]) -> bool {
    assert!(
        a.len() == y.len() && b.len() == y.len(),
        "operands of one length"
    );
    assert!((kernel.supported)(), "a kernel this CPU runs");
    if !k.fits_i32() {
        return false;
    }
    let whole = y.len() / kernel.lanes * kernel.lanes;
    // SAFETY: the CPU runs the kernel (asserted); it reads and writes `whole` ≤ len elements
    // of each slice, and `fits_i32` bounds every 32-bit sum.
    unsafe { (kernel.run)(k, a.as_ptr(), b.as_ptr(), y.as_mut_ptr(), whole) };
    for ((o, &u), &v) in y[whole..].iter_mut().zip(&a[whole..]).zip(&b[whole..]) {
        *o = k.apply(u, v);
    }
    true
}

/// x₁ ± x₂ of two quantized tensors (numpy broadcasting) into `qo`.
pub fn add(x1: &Tensor, x2: &Tensor, qo: QParams, sub: bool) -> Result<Tensor, String> {
    add_within(x1, x2, (qo, None), sub)
}

/// [`add`] with its result clamped to the codes [lo, hi] (lo ≤ hi) when `bounds` has them (a
/// Relu or Clip on the sum, which keeps its qparams): the same codes as that clamp after the
/// Add, as clamping to [A, B] then to [lo, hi] is clamping to [A, B] each clamped to [lo, hi].
pub fn add_within(
    x1: &Tensor,
    x2: &Tensor,
    (qo, bounds): (QParams, Option<(i32, i32)>),
    sub: bool,
) -> Result<Tensor, String> {
    let ((a, q1), (b, q2)) = match (x1.as_q(), x2.as_q()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("expects two quantized operands".into()),
    };
    let mut k = QAdd::new(q1, q2, qo, sub);
    if let Some((lo, hi)) = bounds {
        (k.lo, k.hi) = (k.lo.clamp(lo, hi), k.hi.clamp(lo, hi));
    }
    let apply = |u: i8, v: i8| k.apply(u, v);
    if x1.shape == x2.shape {
        // Every code is written below.
        let mut y = crate::engine::recycle::codes(a.len());
        if !same_shape_simd(&k, a, b, &mut y) {
            if a.len() >= PAIR_TABLE_MIN {
                // One table of all 65,536 code pairs: a single load per element.
                let table = k.pair_table();
                for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
                    *o = table[(u as u8 as usize) << 8 | v as u8 as usize];
                }
            } else {
                for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
                    *o = apply(u, v);
                }
            }
        }
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
    fn vector_kernel_tails_and_extreme_ratios_match_the_scalar_arithmetic() {
        // Lengths past a multiple of 16 (the vector kernel's tail), and scale ratios from tiny
        // to beyond 32 bits (the scalar i64 path), each element against `apply` and f64.
        let wide = QParams::from_range(
            crate::quant::ClipRange::new(-1e6, 1e6),
            8,
            Scheme::Asymmetric,
        );
        let tiny = qp(-1e-6, 1e-6);
        let cases = [
            (qp(-1.0, 3.0), qp(0.0, 6.0), qp(-1.0, 9.0)),
            (wide, qp(-1.0, 1.0), tiny),
            (tiny, tiny, wide),
            (qp(-2.0, 2.0), wide, qp(-4.0, 4.0)),
        ];
        for (q1, q2, qo) in cases {
            let k = QAdd::new(q1, q2, qo, true);
            for n in [1, 15, 16, 17, 1000, 4099] {
                let xa: Vec<i8> = (0..n).map(|i| (i * 37 + 5) as u8 as i8).collect();
                let xb: Vec<i8> = (0..n).map(|i| (i * 101 + 77) as u8 as i8).collect();
                let y = add(
                    &Tensor::q(vec![n], xa.clone(), q1),
                    &Tensor::q(vec![n], xb.clone(), q2),
                    qo,
                    true,
                )
                .unwrap();
                for ((&u, &v), &got) in xa.iter().zip(&xb).zip(y.as_q().unwrap().0) {
                    assert_eq!(got, k.apply(u, v), "n {n}: {u} − {v}");
                    let want = add_reference(u, q1, v, q2, qo, true) as i32;
                    assert!((got as i32 - want).abs() <= 1, "n {n}: {u} − {v}");
                }
                // Every vector kernel this CPU runs (the widest is taken above).
                #[cfg(target_arch = "x86_64")]
                for kernel in KERNELS.iter().filter(|s| (s.supported)()) {
                    let mut y2 = vec![0i8; n];
                    if same_shape_with(kernel, &k, &xa, &xb, &mut y2) {
                        let want: Vec<i8> =
                            xa.iter().zip(&xb).map(|(&u, &v)| k.apply(u, v)).collect();
                        assert_eq!(y2, want, "{} lanes, n {n}", kernel.lanes);
                    }
                }
            }
        }
    }

    #[test]
    fn vector_kernels_equal_apply_on_every_code_pair() {
        // All 65,536 pairs through each vector kernel this CPU runs, against `apply`: Add and
        // Sub, zero points at both ends, ratios with many fractional bits and with none (k = 0),
        // ratios whose sums fall on rounding ties, a clamp inside the range (a fused ReLU) and
        // the whole range.
        let (xa, xb): (Vec<i8>, Vec<i8>) = (0..1usize << 16)
            .map(|i| ((i >> 8) as u8 as i8, i as u8 as i8))
            .unzip();
        let mut kernels = vec![
            QAdd::new(qp(-1.0, 3.0), qp(0.0, 6.0), qp(-1.0, 9.0), false),
            QAdd::new(qp(-1.0, 3.0), qp(0.0, 6.0), qp(-1.0, 9.0), true),
            QAdd::new(qp(0.0, 0.5), qp(-7.0, 0.0), qp(-0.2, 0.3), false),
        ];
        let manual = |a, b, k, (z1, z2, zo), (lo, hi)| QAdd {
            a,
            b,
            k,
            z1,
            z2,
            zo,
            lo,
            hi,
        };
        kernels.push(manual(3, -5, 0, (-128, 127, 0), (-128, 127)));
        kernels.push(manual(7, 2, 0, (100, -90, -128), (-128, 127)));
        kernels.push(manual(1 << 20, 3 << 19, 21, (0, -128, 40), (40, 127)));
        kernels.push(manual(12_345, -54_321, 17, (-5, 9, -3), (-50, 60)));
        // Ratios of few bits: exact ties on both sides of zero, none clamped away.
        kernels.push(manual(1 << 20, -(3 << 19), 21, (3, -7, 0), (-128, 127)));
        kernels.push(manual(4, -6, 3, (0, 0, 5), (-100, 100)));
        let mut ran = 0;
        for k in &kernels {
            let want: Vec<i8> = xa.iter().zip(&xb).map(|(&u, &v)| k.apply(u, v)).collect();
            #[cfg(target_arch = "x86_64")]
            for kernel in KERNELS.iter().filter(|s| (s.supported)()) {
                let mut y = vec![0i8; want.len()];
                if same_shape_with(kernel, k, &xa, &xb, &mut y) {
                    ran += 1;
                    let bad = y.iter().zip(&want).position(|(a, b)| a != b);
                    assert_eq!(bad, None, "{} lanes, {k:?}", kernel.lanes);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if crate::engine::im2col::has_avx512bw() {
            assert!(ran >= kernels.len(), "every case fits the AVX-512 kernel");
        }
        let _ = ran;
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
