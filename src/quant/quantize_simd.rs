//! Real → code quantization of a slice in f32 SIMD, equal to the f64 rule of formats.md §3
//! (round half away from zero of x / scale, plus the zero point, clamped) for every input.
//!
//! The f64 division costs more than the int8 GEMM it feeds (an MLP's first layer spent as long
//! quantizing its input as multiplying it). Here a candidate comes from |x| · (1/scale) in f32,
//! within one step of the true rounding, and two exact tests settle it: k + 1 when
//! (k + ½)·s ≤ |x|, k − 1 when (k − ½)·s > |x|, each the sign of one fused multiply-add (a
//! single rounding keeps the sign of the exact value, and k ± ½ is exact below 2²²). The
//! candidate is capped at 2²¹, far past any 8-bit code and zero point, so a larger quotient
//! still clamps to the same end. The sign goes back on after rounding (half away from zero is
//! odd), NaN gives the zero point as the f64 rule does, ±∞ the clamp bounds.
//!
//! Scales outside [2⁻⁶⁰, 2⁶⁰] (never produced by a calibrated range in practice) take the f64
//! loop: near the subnormals the fused tests could round a tiny difference to zero.

use std::arch::x86_64::*;

/// Cap on the rounded quotient: every code, zero point and clamp bound is far inside it.
const CAP: f32 = (1 << 21) as f32;

/// Whether the fast loops handle this scale, zero point and these bounds exactly (see the
/// module doc): codes of i8, a zero point far inside [`CAP`].
fn suits(scale: f32, zp: i32, lo: i32, hi: i32) -> bool {
    (2f32.powi(-60)..=2f32.powi(60)).contains(&scale)
        && zp.abs() < 1 << 17
        && i8::MIN as i32 <= lo
        && hi <= i8::MAX as i32
}

/// Quantizes `x` into `out` with the fastest exact loop this CPU has; false (nothing written)
/// when none applies, and the caller runs the f64 loop.
pub(super) fn quantize_fast(
    x: &[f32],
    out: &mut [i8],
    scale: f32,
    zp: i32,
    (lo, hi): (i32, i32),
) -> bool {
    if !suits(scale, zp, lo, hi) {
        return false;
    }
    let n = x.len().min(out.len());
    let (x, out) = (&x[..n], &mut out[..n]);
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the CPU features were checked just above.
        unsafe { quantize_avx512(x, out, scale, zp, (lo, hi)) };
        true
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU features were checked just above.
        unsafe { quantize_avx2(x, out, scale, zp, (lo, hi)) };
        true
    } else {
        false
    }
}

/// 16 lanes at a time; the tail through a masked load and store.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_avx512(x: &[f32], out: &mut [i8], scale: f32, zp: i32, (lo, hi): (i32, i32)) {
    let s = _mm512_set1_ps(scale);
    let inv = _mm512_set1_ps(1.0 / scale);
    let cap = _mm512_set1_ps(CAP);
    let half = _mm512_set1_ps(0.5);
    let zero = _mm512_setzero_ps();
    let one = _mm512_set1_epi32(1);
    let (zpv, lov, hiv) = (
        _mm512_set1_epi32(zp),
        _mm512_set1_epi32(lo),
        _mm512_set1_epi32(hi),
    );
    let abs_mask = _mm512_set1_epi32(i32::MAX);
    let lanes = |v: __m512| -> __m128i {
        let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
        let t = _mm512_min_ps(_mm512_mul_ps(a, inv), cap);
        let k = _mm512_cvtps_epi32(t);
        let kf = _mm512_cvtepi32_ps(k);
        let na = _mm512_sub_ps(zero, a);
        let up = _mm512_fmadd_ps(_mm512_add_ps(kf, half), s, na);
        let down = _mm512_fmadd_ps(_mm512_sub_ps(kf, half), s, na);
        let k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(up, zero), k, one);
        let k = _mm512_mask_sub_epi32(k, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(down, zero), k, one);
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, zero);
        let k = _mm512_mask_sub_epi32(k, neg, _mm512_setzero_si512(), k);
        // NaN: code 0 before the zero point, as the f64 rule gives.
        let k = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), k);
        let q = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(k, zpv), lov), hiv);
        _mm512_cvtepi32_epi8(q)
    };
    let mut chunks = x.chunks_exact(16);
    let mut i = 0;
    for c in chunks.by_ref() {
        // SAFETY: `c` holds 16 f32 and `out[i..i + 16]` 16 bytes (out is as long as x).
        unsafe {
            let q = lanes(_mm512_loadu_ps(c.as_ptr()));
            _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), q);
        }
        i += 16;
    }
    let rest = chunks.remainder().len();
    if rest > 0 {
        let m = (1u16 << rest) - 1;
        // SAFETY: the masks cover the `rest` elements left in x and in out.
        unsafe {
            let q = lanes(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)));
            _mm_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, q);
        }
    }
}

/// 8 lanes at a time (AVX2 + FMA); the tail by the same steps on a padded copy.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(x: &[f32], out: &mut [i8], scale: f32, zp: i32, (lo, hi): (i32, i32)) {
    let s = _mm256_set1_ps(scale);
    let inv = _mm256_set1_ps(1.0 / scale);
    let cap = _mm256_set1_ps(CAP);
    let half = _mm256_set1_ps(0.5);
    let zero = _mm256_setzero_ps();
    let (zpv, lov, hiv) = (
        _mm256_set1_epi32(zp),
        _mm256_set1_epi32(lo),
        _mm256_set1_epi32(hi),
    );
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let lanes = |v: __m256| -> [i32; 8] {
        let a = _mm256_and_ps(v, abs_mask);
        // min(NaN, cap) is cap: a NaN lane stays finite until it is zeroed below.
        let t = _mm256_min_ps(_mm256_mul_ps(a, inv), cap);
        let k = _mm256_cvtps_epi32(t);
        let kf = _mm256_cvtepi32_ps(k);
        let na = _mm256_sub_ps(zero, a);
        let up = _mm256_fmadd_ps(_mm256_add_ps(kf, half), s, na);
        let down = _mm256_fmadd_ps(_mm256_sub_ps(kf, half), s, na);
        // A true compare is all ones (−1): subtracting it adds one.
        let k = _mm256_sub_epi32(
            k,
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(up, zero)),
        );
        let k = _mm256_add_epi32(
            k,
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(down, zero)),
        );
        let neg = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(v, zero));
        let k = _mm256_blendv_epi8(k, _mm256_sub_epi32(_mm256_setzero_si256(), k), neg);
        let k = _mm256_and_si256(k, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(v, v)));
        let q = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(k, zpv), lov), hiv);
        let mut r = [0i32; 8];
        // SAFETY: `r` holds 8 i32.
        unsafe { _mm256_storeu_si256(r.as_mut_ptr().cast(), q) };
        r
    };
    let mut chunks = x.chunks_exact(8);
    let mut outs = out.chunks_exact_mut(8);
    for (c, o) in chunks.by_ref().zip(outs.by_ref()) {
        // SAFETY: `c` holds 8 f32.
        let q = lanes(unsafe { _mm256_loadu_ps(c.as_ptr()) });
        o.iter_mut().zip(q).for_each(|(o, q)| *o = q as i8);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut pad = [0f32; 8];
        pad[..rest.len()].copy_from_slice(rest);
        // SAFETY: `pad` holds 8 f32.
        let q = lanes(unsafe { _mm256_loadu_ps(pad.as_ptr()) });
        outs.into_remainder()
            .iter_mut()
            .zip(q)
            .for_each(|(o, q)| *o = q as i8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 rule, written directly.
    fn reference(x: f32, scale: f32, zp: i32, lo: i32, hi: i32) -> i8 {
        let v = x as f64 / scale as f64;
        let r = if v.is_nan() {
            0.0
        } else {
            v.clamp(-1e12, 1e12).round()
        };
        (r as i64 + zp as i64).clamp(lo as i64, hi as i64) as i8
    }

    /// Values around every half step of `scale` (the exact half, its f32 neighbours), random
    /// reals, huge and special values.
    fn hard_inputs(scale: f32, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut xs = vec![
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-45,
        ];
        for k in -300..300 {
            let h = (k as f32 + 0.5) * scale;
            xs.extend([
                h,
                f32::from_bits(h.to_bits() + 1),
                f32::from_bits(h.to_bits() - 1),
            ]);
            xs.push(k as f32 * scale);
        }
        for _ in 0..20_000 {
            let u = (next() >> 40) as f32 / (1u64 << 24) as f32;
            xs.push((u - 0.5) * 400.0 * scale);
            xs.push(f32::from_bits(next() as u32));
        }
        xs
    }

    #[test]
    fn simd_quantization_equals_the_f64_rule_on_hard_inputs() {
        let cases = [
            (0.023_529_412f32, -128, -128, 127),
            (0.1, 0, -127, 127),
            (1.0 / 3.0, 5, -8, 7),
            (7.25e-9, -3, -128, 127),
            (3.1e7, 0, -2, 1),
            (0.7, 100, -128, 127),
        ];
        for (i, &(scale, zp, lo, hi)) in cases.iter().enumerate() {
            let xs = hard_inputs(scale, 0x9E37 + i as u64);
            // Odd lengths exercise the tails of both loops.
            for len in [xs.len(), xs.len() - 5, 13, 3] {
                let xs = &xs[..len];
                let mut got = vec![0i8; len];
                assert!(quantize_fast(xs, &mut got, scale, zp, (lo, hi)) || !has_simd());
                if !has_simd() {
                    continue;
                }
                for (x, g) in xs.iter().zip(&got) {
                    assert_eq!(
                        *g,
                        reference(*x, scale, zp, lo, hi),
                        "x {x:e} scale {scale}"
                    );
                }
                #[allow(unused_unsafe)]
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    let mut got2 = vec![0i8; len];
                    // SAFETY: the CPU features were checked just above.
                    unsafe { quantize_avx2(xs, &mut got2, scale, zp, (lo, hi)) };
                    assert_eq!(got2, got, "the AVX2 loop, scale {scale}");
                }
            }
        }
    }

    fn has_simd() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            || is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    #[test]
    fn extreme_scales_are_left_to_the_f64_loop() {
        let mut out = [0i8; 4];
        assert!(!quantize_fast(&[1.0; 4], &mut out, 1e-30, 0, (-128, 127)));
        assert!(!quantize_fast(&[1.0; 4], &mut out, 1e30, 0, (-128, 127)));
        assert_eq!(out, [0; 4], "nothing written");
    }
}
