//! The residual Add's arithmetic ([`QAdd::apply`]) on 16 pairs of codes at a time with
//! AVX-512: sign-extend, one 32-bit multiply per operand with the zero points folded into one
//! constant, round half away from zero by the ratios' fractional bits with one arithmetic shift
//! (below), add the output zero point, clamp (by the narrowing's saturation alone when the
//! bounds are the whole i8 range), narrow.
//!
//! With s = A·(x₁ − z₁) ± B·(x₂ − z₂) and h = 2^(k−1), [`QAdd::apply`]'s sign(s)·⌊(|s| + h) /
//! 2^k⌋ is ⌊(s + h − [s < 0]) / 2^k⌋ for k ≥ 1: for s < 0 both are −⌊(−s + h) / 2^k⌋, as
//! 2^k − h = h. [s < 0] is −(s >> 31). For k = 0 the kernel runs A and B doubled with k = 1,
//! which gives s itself. The products wrap in 32 bits, but their sum is s, which fits.

use super::add::{AddKernel, QAdd};

/// The kernel with its lane count, for CPUs with AVX-512BW ([`super::add`] runs it).
#[cfg(target_arch = "x86_64")]
pub(super) const KERNEL: AddKernel = AddKernel {
    lanes: 16,
    supported: crate::engine::im2col::has_avx512bw,
    run: add16,
};

/// The kernel on the first `n` (a multiple of 16) elements (see [`AddKernel::run`]).
///
/// # Safety
/// AVX-512BW present; `a`, `b` and `y` valid for `n` elements; [`QAdd::fits_i32`] holds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn add16(k: &QAdd, a: *const i8, b: *const i8, y: *mut i8, n: usize) {
    use std::arch::x86_64::*;
    let (ka, kb, kk) = k.one_shift();
    let (ma, mb) = (_mm512_set1_epi32(ka as i32), _mm512_set1_epi32(kb as i32));
    // A·x₁ + B·x₂ + konst = s, the zero points' terms in konst (all wrapping).
    let konst = (ka * k.z1 as i64 + kb * k.z2 as i64).wrapping_neg() as i32;
    let konst = _mm512_set1_epi32(konst);
    let half = _mm512_set1_epi32(1 << (kk - 1));
    let shift = _mm_cvtsi32_si128(kk as i32);
    let zo = _mm512_set1_epi32(k.zo);
    let (lo, hi) = (_mm512_set1_epi32(k.lo), _mm512_set1_epi32(k.hi));
    let whole = (k.lo, k.hi) == (i8::MIN as i32, i8::MAX as i32);
    for i in (0..n).step_by(16) {
        // SAFETY (all loads and stores): i + 16 ≤ n, within every slice by the contract.
        let (u, v) = unsafe {
            (
                _mm512_cvtepi8_epi32(_mm_loadu_si128(a.add(i).cast())),
                _mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(i).cast())),
            )
        };
        let s = _mm512_add_epi32(
            _mm512_add_epi32(_mm512_mullo_epi32(u, ma), _mm512_mullo_epi32(v, mb)),
            konst,
        );
        // ⌊(s + h − [s < 0]) / 2^k⌋.
        let t = _mm512_add_epi32(_mm512_add_epi32(s, _mm512_srai_epi32::<31>(s)), half);
        let r = _mm512_add_epi32(_mm512_sra_epi32(t, shift), zo);
        let out = if whole {
            r
        } else {
            _mm512_min_epi32(_mm512_max_epi32(r, lo), hi)
        };
        unsafe { _mm_storeu_si128(y.add(i).cast(), _mm512_cvtsepi32_epi8(out)) };
    }
}
