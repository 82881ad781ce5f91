//! Signal-to-quantization-noise ratio, pooled over many batches.

use crate::quant::QParams;

/// Running sums for SQNR = 10·log10(Σx² / Σ(x − x̂)²).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SqnrAcc {
    /// Σ x² of the reference.
    pub signal: f64,
    /// Σ (x − x̂)².
    pub noise: f64,
}

impl SqnrAcc {
    /// Adds a batch: `reference` is x, `approx` is x̂ (same length). Sums in f64 over eight
    /// interleaved lanes (a fixed order, so the result is the same on every run; the lanes let
    /// the additions overlap instead of waiting on one another).
    pub fn add(&mut self, reference: &[f32], approx: &[f32]) {
        debug_assert_eq!(reference.len(), approx.len());
        let (sig, noi) = real_lanes(reference, approx);
        self.signal += sig.iter().sum::<f64>();
        self.noise += noi.iter().sum::<f64>();
    }

    /// Adds a batch whose x̂ are integer `codes` in `qp`: the same sums as [`SqnrAcc::add`] on
    /// the codes dequantized to f32 ([`QParams::dequantize`], computed here in the loop, on
    /// AVX-512 where the CPU has it), without materializing them.
    pub fn add_codes(&mut self, reference: &[f32], codes: &[i8], qp: QParams) {
        debug_assert_eq!(reference.len(), codes.len());
        let (sig, [noi]) = lanes_of_codes(reference, [(codes, qp)]);
        self.signal += sig.iter().sum::<f64>();
        self.noise += noi.iter().sum::<f64>();
    }

    /// [`SqnrAcc::add_codes`] of two approximations of one reference (a layer's output in the
    /// whole run and alone) into `self` and `other`, reading the reference once; the same sums
    /// as two separate calls.
    pub fn add_codes_pair(&mut self, other: &mut SqnrAcc, reference: &[f32], codes: [Codes; 2]) {
        debug_assert!(codes.iter().all(|c| c.0.len() == reference.len()));
        let (sig, [n0, n1]) = lanes_of_codes(reference, codes);
        let sig = sig.iter().sum::<f64>();
        self.signal += sig;
        other.signal += sig;
        self.noise += n0.iter().sum::<f64>();
        other.noise += n1.iter().sum::<f64>();
    }

    /// Combines two partial sums.
    pub fn merge(&mut self, other: &SqnrAcc) {
        self.signal += other.signal;
        self.noise += other.noise;
    }

    /// The SQNR in dB, `None` when there is no error at all (or no signal).
    pub fn db(&self) -> Option<f64> {
        if self.noise > 0.0 && self.signal > 0.0 {
            Some(10.0 * (self.signal / self.noise).log10())
        } else {
            None
        }
    }
}

/// [`code_lanes`] on the widest build this CPU runs.
fn lanes_of_codes<const N: usize>(reference: &[f32], codes: [Codes; N]) -> LanesN<N> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        return unsafe { code_lanes_avx512(reference, codes) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { code_lanes_avx2(reference, codes) };
    }
    code_lanes(reference, codes)
}

/// Lanes of f64 sums, as [`SqnrAcc::add`] keeps them.
type Lanes = ([f64; 8], [f64; 8]);

/// The lane sums of x² and (x − x̂)², eight interleaved lanes.
fn real_lanes(reference: &[f32], approx: &[f32]) -> Lanes {
    const L: usize = 8;
    let (mut sig, mut noi) = ([0f64; L], [0f64; L]);
    let (xs, ys) = (reference.chunks_exact(L), approx.chunks_exact(L));
    let (xt, yt) = (xs.remainder(), ys.remainder());
    for (x, y) in xs.zip(ys) {
        for l in 0..L {
            let (a, b) = (x[l] as f64, y[l] as f64);
            sig[l] += a * a;
            noi[l] += (a - b) * (a - b);
        }
    }
    for (l, (&a, &b)) in xt.iter().zip(yt).enumerate() {
        let (a, b) = (a as f64, b as f64);
        sig[l] += a * a;
        noi[l] += (a - b) * (a - b);
    }
    (sig, noi)
}

/// Codes with their qparams: one approximation x̂ of the reference.
type Codes<'a> = (&'a [i8], QParams);

/// Lanes of Σx² and, per approximation, of Σ(x − x̂)².
type LanesN<const N: usize> = ([f64; 8], [[f64; 8]; N]);

/// [`code_lanes`] in AVX-512 intrinsics, 16 values per step as two vectors of eight f64
/// lanes: lane l of each vector is lane l of the plain loop, with the same operations (a product
/// then a sum, no fused multiply-add), so the sums are bit-identical. A code is dequantized as
/// one f32 product scale · (c − z): the f64 product of `QParams::dequantize` is exact (a 24-bit
/// scale times a code of at most 10 bits), so its rounding to f32 is this product's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn code_lanes_avx512<const N: usize>(reference: &[f32], codes: [Codes; N]) -> LanesN<N> {
    use std::arch::x86_64::*;
    const L: usize = 8;
    let n = codes.iter().fold(reference.len(), |n, c| n.min(c.0.len()));
    let body = n / (2 * L) * (2 * L);
    let scale = codes.map(|(_, q)| _mm512_set1_ps(q.scale));
    let zp = codes.map(|(_, q)| _mm512_set1_epi32(q.zero_point));
    let mut sig = _mm512_setzero_pd();
    let mut noi = [_mm512_setzero_pd(); N];
    for i in (0..body).step_by(2 * L) {
        // SAFETY: i + 16 ≤ body ≤ the length of every slice.
        let x = unsafe { _mm512_loadu_ps(reference.as_ptr().add(i)) };
        let halves = |v: __m512| {
            let hi = _mm512_castsi512_ps(_mm512_shuffle_i64x2::<0b11_10_11_10>(
                _mm512_castps_si512(v),
                _mm512_castps_si512(v),
            ));
            (
                _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
                _mm512_cvtps_pd(_mm512_castps512_ps256(hi)),
            )
        };
        let (a0, a1) = halves(x);
        sig = _mm512_add_pd(sig, _mm512_mul_pd(a0, a0));
        sig = _mm512_add_pd(sig, _mm512_mul_pd(a1, a1));
        for t in 0..N {
            // SAFETY: as above.
            let c = unsafe { _mm_loadu_si128(codes[t].0.as_ptr().add(i).cast()) };
            let q = _mm512_sub_epi32(_mm512_cvtepi8_epi32(c), zp[t]);
            let (b0, b1) = halves(_mm512_mul_ps(scale[t], _mm512_cvtepi32_ps(q)));
            let (d0, d1) = (_mm512_sub_pd(a0, b0), _mm512_sub_pd(a1, b1));
            noi[t] = _mm512_add_pd(noi[t], _mm512_mul_pd(d0, d0));
            noi[t] = _mm512_add_pd(noi[t], _mm512_mul_pd(d1, d1));
        }
    }
    let mut out: LanesN<N> = ([0f64; L], [[0f64; L]; N]);
    // SAFETY: every array holds 8 f64.
    unsafe {
        _mm512_storeu_pd(out.0.as_mut_ptr(), sig);
        for (o, v) in out.1.iter_mut().zip(noi) {
            _mm512_storeu_pd(o.as_mut_ptr(), v);
        }
    }
    // body is a multiple of 8: the tail continues each lane where the vectors left it.
    add_code_lanes(
        &mut out,
        &reference[body..n],
        codes.map(|(c, q)| (&c[body..n], q)),
    );
    out
}

/// [`code_lanes`] in AVX2 intrinsics, 8 values per step as two vectors of four f64 lanes
/// (lanes 0–3 and 4–7 of the plain loop), with the operations of [`code_lanes_avx512`]: the
/// sums are bit-identical to the plain loop's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn code_lanes_avx2<const N: usize>(reference: &[f32], codes: [Codes; N]) -> LanesN<N> {
    use std::arch::x86_64::*;
    const L: usize = 8;
    let n = codes.iter().fold(reference.len(), |n, c| n.min(c.0.len()));
    let body = n / L * L;
    let scale = codes.map(|(_, q)| _mm256_set1_ps(q.scale));
    let zp = codes.map(|(_, q)| _mm256_set1_epi32(q.zero_point));
    let halves = |v: __m256| {
        (
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        )
    };
    let square_into = |acc: &mut [__m256d; 2], (d0, d1): (__m256d, __m256d)| {
        acc[0] = _mm256_add_pd(acc[0], _mm256_mul_pd(d0, d0));
        acc[1] = _mm256_add_pd(acc[1], _mm256_mul_pd(d1, d1));
    };
    let mut sig = [_mm256_setzero_pd(); 2];
    let mut noi = [[_mm256_setzero_pd(); 2]; N];
    for i in (0..body).step_by(L) {
        // SAFETY: i + 8 ≤ body ≤ the length of every slice.
        let (a0, a1) = halves(unsafe { _mm256_loadu_ps(reference.as_ptr().add(i)) });
        square_into(&mut sig, (a0, a1));
        for t in 0..N {
            // SAFETY: as above (8 codes).
            let c = unsafe { _mm_loadl_epi64(codes[t].0.as_ptr().add(i).cast()) };
            let q = _mm256_sub_epi32(_mm256_cvtepi8_epi32(c), zp[t]);
            let (b0, b1) = halves(_mm256_mul_ps(scale[t], _mm256_cvtepi32_ps(q)));
            square_into(&mut noi[t], (_mm256_sub_pd(a0, b0), _mm256_sub_pd(a1, b1)));
        }
    }
    let mut out: LanesN<N> = ([0f64; L], [[0f64; L]; N]);
    // SAFETY: every array holds 8 f64, written 4 at a time.
    unsafe {
        _mm256_storeu_pd(out.0.as_mut_ptr(), sig[0]);
        _mm256_storeu_pd(out.0.as_mut_ptr().add(4), sig[1]);
        for (o, v) in out.1.iter_mut().zip(noi) {
            _mm256_storeu_pd(o.as_mut_ptr(), v[0]);
            _mm256_storeu_pd(o.as_mut_ptr().add(4), v[1]);
        }
    }
    // body is a multiple of 8: the tail continues each lane where the vectors left it.
    add_code_lanes(
        &mut out,
        &reference[body..n],
        codes.map(|(c, q)| (&c[body..n], q)),
    );
    out
}

/// The lane sums of x² and, per approximation, of (x − x̂)² with x̂ its dequantized codes, in
/// [`SqnrAcc::add`]'s order.
#[inline(always)]
fn code_lanes<const N: usize>(reference: &[f32], codes: [Codes; N]) -> LanesN<N> {
    let mut out: LanesN<N> = ([0f64; 8], [[0f64; 8]; N]);
    add_code_lanes(&mut out, reference, codes);
    out
}

/// Adds value i of `reference` and `codes` to lane i mod 8 of `out`, in order.
#[inline(always)]
fn add_code_lanes<const N: usize>(out: &mut LanesN<N>, reference: &[f32], codes: [Codes; N]) {
    let n = codes.iter().fold(reference.len(), |n, c| n.min(c.0.len()));
    for (i, &x) in reference[..n].iter().enumerate() {
        let (a, l) = (x as f64, i % 8);
        out.0[l] += a * a;
        for (o, (c, q)) in out.1.iter_mut().zip(codes) {
            let d = a - q.dequantize(c[i] as i32) as f64;
            o[l] += d * d;
        }
    }
}

/// SQNR in dB of `approx` against `reference`; `None` if they are equal.
pub fn sqnr_db(reference: &[f32], approx: &[f32]) -> Option<f64> {
    let mut acc = SqnrAcc::default();
    acc.add(reference, approx);
    acc.db()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_match_a_direct_loop() {
        let x: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let y: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + (i % 7) as f32 * 1e-3)
            .collect();
        let (mut s, mut n) = (0f64, 0f64);
        for (&a, &b) in x.iter().zip(&y) {
            s += (a as f64).powi(2);
            n += (a as f64 - b as f64).powi(2);
        }
        let mut acc = SqnrAcc::default();
        acc.add(&x, &y);
        assert!((acc.signal - s).abs() <= 1e-12 * s && (acc.noise - n).abs() <= 1e-12 * n);
    }

    #[test]
    fn code_sums_equal_the_sums_over_dequantized_codes() {
        // Every code, with references around their values; an odd length for the tail.
        let range = crate::quant::ClipRange::new(-0.7, 2.3);
        let qp = QParams::from_range(range, 8, crate::quant::Scheme::Asymmetric);
        let codes: Vec<i8> = (0..1001).map(|i| (i * 97 % 256) as u8 as i8).collect();
        let x: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, &c)| qp.dequantize(c as i32) + ((i % 11) as f32 - 5.0) * 1e-3)
            .collect();
        let (mut s, mut n) = (0f64, 0f64);
        for (&a, &c) in x.iter().zip(&codes) {
            let b = qp.dequantize(c as i32) as f64;
            s += (a as f64).powi(2);
            n += (a as f64 - b).powi(2);
        }
        let mut acc = SqnrAcc::default();
        acc.add_codes(&x, &codes, qp);
        assert!((acc.signal - s).abs() <= 1e-12 * s && (acc.noise - n).abs() <= 1e-12 * n);
        let deq: Vec<f32> = codes.iter().map(|&c| qp.dequantize(c as i32)).collect();
        let mut same = SqnrAcc::default();
        same.add(&x, &deq);
        assert_eq!(
            acc, same,
            "bit for bit the sums over the dequantized values"
        );
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_code_lanes_are_the_plain_lanes_bit_for_bit() {
        let range = crate::quant::ClipRange::new(-1.3, 0.4);
        let qp = QParams::from_range(range, 8, crate::quant::Scheme::Asymmetric);
        let qp2 = QParams::from_range(range, 4, crate::quant::Scheme::Symmetric);
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        for len in [0, 5, 8, 15, 16, 17, 31, 40, 1003] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.027)
                .collect();
            let c: Vec<i8> = (0..len).map(|i| (i * 31 % 256) as u8 as i8).collect();
            let codes = [(&c[..], qp), (&c[..], qp2)];
            let want = code_lanes(&x, codes);
            if avx512 {
                // SAFETY: AVX-512F was checked above.
                assert_eq!(
                    unsafe { code_lanes_avx512(&x, codes) },
                    want,
                    "AVX-512, {len}"
                );
            }
            if avx2 {
                // SAFETY: AVX2 was checked above.
                assert_eq!(unsafe { code_lanes_avx2(&x, codes) }, want, "AVX2, {len}");
            }
        }
    }

    #[test]
    fn sqnr_by_hand() {
        // Σx² = 1 + 4 = 5, noise = 0.01 + 0.04 = 0.05 → 10·log10(100) = 20 dB.
        let db = sqnr_db(&[1.0, 2.0], &[1.1, 1.8]).unwrap();
        assert!((db - 20.0).abs() < 1e-4, "{db}");
        assert_eq!(sqnr_db(&[1.0], &[1.0]), None);
        let mut a = SqnrAcc::default();
        a.add(&[1.0], &[1.1]);
        let mut b = SqnrAcc::default();
        b.add(&[2.0], &[1.8]);
        a.merge(&b);
        assert!((a.db().unwrap() - 20.0).abs() < 1e-4);
    }
}
