//! The portable kernel's requantization on AVX2 + FMA: a channel's verified f32 line (see
//! [`super::line`]) on 8 accumulators per vector, as the AVX-512 kernel evaluates it:
//! ⌊fma(acc, m, b(acc))⌋ + c, the exceptions patched, saturated to i8 and clamped to [lo, hi].
//! Bit-identical to the fixed-point path wherever the line was verified.

use super::line::Line32;
use crate::engine::im2col::copy_short;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Whether this CPU has AVX2 and FMA (detected once).
pub(super) fn supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// The line's constants, broadcast.
struct Lanes<'a> {
    m: __m256,
    bp: __m256,
    bn: __m256,
    a0: __m256i,
    c: __m256i,
    line: &'a Line32,
}

/// Eight accumulators through the line (before the saturation and the clamp).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn line8(acc: __m256i, k: &Lanes) -> __m256i {
    // acc < a0 takes the offset bn.
    let below = _mm256_castsi256_ps(_mm256_cmpgt_epi32(k.a0, acc));
    let b = _mm256_blendv_ps(k.bp, k.bn, below);
    let t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), k.m, b);
    let mut y = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_floor_ps(t)), k.c);
    let l = k.line;
    for i in 0..l.n {
        let hit = _mm256_cmpeq_epi32(acc, _mm256_set1_epi32(l.exc[i]));
        y = _mm256_blendv_epi8(y, _mm256_set1_epi32(l.val[i] as i32), hit);
    }
    y
}

/// Requantizes output rows of the accumulator grid: row oy's `ow` values start at
/// `acc[oy · pg]` and land at `out[oy · ow]`, through line `l` (with switch point `a0`) and the
/// clamp [lo, hi].
///
/// # Panics
/// If `acc` does not hold a whole chunk of 16 from every row's start past its last value
/// (`(oh − 1)·pg + ⌈ow/16⌉·16 ≤ acc.len()`), or `out` is not `oh · ow` codes.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`supported`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows(
    (l, a0): (&Line32, i32),
    (lo, hi): (i32, i32),
    acc: &[i32],
    (pg, oh, ow): (usize, usize, usize),
    out: &mut [i8],
) {
    if oh == 0 || ow == 0 {
        return;
    }
    assert!(
        (oh - 1) * pg + ow.next_multiple_of(16) <= acc.len(),
        "whole chunks of acc"
    );
    assert_eq!(out.len(), oh * ow, "one output plane");
    let k = Lanes {
        m: _mm256_set1_ps(l.m),
        bp: _mm256_set1_ps(l.bp),
        bn: _mm256_set1_ps(l.bn),
        a0: _mm256_set1_epi32(a0),
        c: _mm256_set1_epi32(l.c),
        line: l,
    };
    let (vlo, vhi) = (_mm_set1_epi8(lo as i8), _mm_set1_epi8(hi as i8));
    for (oy, dst) in out.chunks_exact_mut(ow).enumerate() {
        for j in (0..ow).step_by(16) {
            // SAFETY: oy·pg + j + 16 ≤ (oh−1)·pg + ⌈ow/16⌉·16 ≤ acc.len() (asserted).
            let (a, b) = unsafe {
                let src = acc.as_ptr().add(oy * pg + j);
                (
                    _mm256_loadu_si256(src.cast()),
                    _mm256_loadu_si256(src.add(8).cast()),
                )
            };
            // Points 0–3, 8–11 | 4–7, 12–15 as i16; the permute puts them in order.
            let p = _mm256_packs_epi32(line8(a, &k), line8(b, &k));
            let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(p);
            let y = _mm_packs_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
            let y = _mm_min_epi8(_mm_max_epi8(y, vlo), vhi);
            let mut codes = [0i8; 16];
            // SAFETY: `codes` holds 16 bytes.
            unsafe { _mm_storeu_si128(codes.as_mut_ptr().cast(), y) };
            let n = (ow - j).min(16);
            copy_short(&mut dst[j..j + n], &codes[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::intops::depthwise::line::random_lines;

    #[test]
    fn rows_equal_the_fixed_point_path_wherever_an_f32_line_exists() {
        if !supported() {
            return;
        }
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            s >> 33
        };
        let (mut lines, mut exceptions) = (0, 0);
        for (i, t) in random_lines(80).iter().enumerate() {
            let (line, (lo, hi), (amin, amax)) = (&t.line, t.clamp, t.range);
            let Some(l) = line.f32 else { continue };
            lines += 1;
            exceptions += l.n;
            // A grid of 5 rows of 37 points (pitch 40) holding the line's exceptions, both
            // ends of the range, and random accumulators in it.
            let (pg, oh, ow) = (40, 5, 37);
            let width = (amax as i64 - amin as i64 + 1) as u64;
            let mut acc: Vec<i32> = (0..oh * pg + 16)
                .map(|_| amin + (next() % width) as i32)
                .collect();
            acc[..l.n].copy_from_slice(&l.exc[..l.n]);
            (acc[50], acc[51]) = (amin, amax);
            let mut out = vec![0i8; oh * ow];
            // SAFETY: AVX2 and FMA were detected above.
            unsafe { rows((&l, line.a0), (lo, hi), &acc, (pg, oh, ow), &mut out) };
            for oy in 0..oh {
                for ox in 0..ow {
                    let a = acc[oy * pg + ox];
                    assert_eq!(out[oy * ow + ox], line.exact(a), "line {i} acc {a}");
                }
            }
        }
        assert!(lines >= 60, "only {lines} f32 lines");
        assert!(exceptions >= 1, "no line with exceptions was tried");
    }
}
