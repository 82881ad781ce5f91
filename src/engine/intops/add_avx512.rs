//! The residual Add's arithmetic ([`QAdd::apply`]) on 16 pairs of codes at a time with
//! AVX-512: sign-extend, subtract the zero points, one 32-bit multiply per operand, round half
//! away from zero by the ratios' fractional bits, add the output zero point, clamp, narrow.

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
    let (ma, mb) = (_mm512_set1_epi32(k.a as i32), _mm512_set1_epi32(k.b as i32));
    let (z1, z2) = (_mm512_set1_epi32(k.z1), _mm512_set1_epi32(k.z2));
    let half = _mm512_set1_epi32(((1i64 << k.k) >> 1) as i32);
    let shift = _mm_cvtsi32_si128(k.k as i32);
    let zo = _mm512_set1_epi32(k.zo);
    let (lo, hi) = (_mm512_set1_epi32(k.lo), _mm512_set1_epi32(k.hi));
    let zero = _mm512_setzero_si512();
    for i in (0..n).step_by(16) {
        // SAFETY (all loads and stores): i + 16 ≤ n, within every slice by the contract.
        let (u, v) = unsafe {
            (
                _mm512_cvtepi8_epi32(_mm_loadu_si128(a.add(i).cast())),
                _mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(i).cast())),
            )
        };
        let s = _mm512_add_epi32(
            _mm512_mullo_epi32(_mm512_sub_epi32(u, z1), ma),
            _mm512_mullo_epi32(_mm512_sub_epi32(v, z2), mb),
        );
        let neg = _mm512_cmplt_epi32_mask(s, zero);
        let m = _mm512_srl_epi32(_mm512_add_epi32(_mm512_abs_epi32(s), half), shift);
        let r = _mm512_mask_sub_epi32(m, neg, zero, m);
        let out = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(r, zo), lo), hi);
        unsafe { _mm_storeu_si128(y.add(i).cast(), _mm512_cvtepi32_epi8(out)) };
    }
}
