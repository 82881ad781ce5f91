//! The residual Add's arithmetic ([`QAdd::apply`]) on 8 pairs of codes at a time with AVX2 (for
//! CPUs without AVX-512): the steps of `add_avx512` (sign-extend, subtract the zero points, one
//! 32-bit multiply per operand, round half away from zero by the ratios' fractional bits, add
//! the output zero point, clamp), with the sign restored by a mask instead of a masked subtract.

use super::add::{AddKernel, QAdd};

/// The kernel with its lane count, for CPUs with AVX2 ([`super::add`] runs it).
#[cfg(target_arch = "x86_64")]
pub(super) const KERNEL: AddKernel = AddKernel {
    lanes: 8,
    supported: || std::arch::is_x86_feature_detected!("avx2"),
    run: add8,
};

/// The kernel on the first `n` (a multiple of 8) elements (see [`AddKernel::run`]).
///
/// # Safety
/// AVX2 present; `a`, `b` and `y` valid for `n` elements; [`QAdd::fits_i32`] holds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add8(k: &QAdd, a: *const i8, b: *const i8, y: *mut i8, n: usize) {
    use std::arch::x86_64::*;
    let (ma, mb) = (_mm256_set1_epi32(k.a as i32), _mm256_set1_epi32(k.b as i32));
    let (z1, z2) = (_mm256_set1_epi32(k.z1), _mm256_set1_epi32(k.z2));
    let half = _mm256_set1_epi32(((1i64 << k.k) >> 1) as i32);
    let shift = _mm_cvtsi32_si128(k.k as i32);
    let zo = _mm256_set1_epi32(k.zo);
    let (lo, hi) = (_mm256_set1_epi32(k.lo), _mm256_set1_epi32(k.hi));
    let zero = _mm256_setzero_si256();
    for i in (0..n).step_by(8) {
        // SAFETY (all loads and stores): i + 8 ≤ n, within every slice by the contract.
        let (u, v) = unsafe {
            (
                _mm256_cvtepi8_epi32(_mm_loadl_epi64(a.add(i).cast())),
                _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.add(i).cast())),
            )
        };
        let s = _mm256_add_epi32(
            _mm256_mullo_epi32(_mm256_sub_epi32(u, z1), ma),
            _mm256_mullo_epi32(_mm256_sub_epi32(v, z2), mb),
        );
        let neg = _mm256_cmpgt_epi32(zero, s);
        let m = _mm256_srl_epi32(_mm256_add_epi32(_mm256_abs_epi32(s), half), shift);
        // −m where s < 0: (m ^ −1) − (−1).
        let r = _mm256_sub_epi32(_mm256_xor_si256(m, neg), neg);
        let out = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(r, zo), lo), hi);
        let bytes = crate::engine::requant_avx2::narrow8(out);
        // SAFETY: i + 8 ≤ n, within `y` by the contract.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), y.add(i).cast(), 8) };
    }
}
