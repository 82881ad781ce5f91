//! The portable kernel's multiply-adds on AVX2, two taps per `vpmaddwd`: taps whose reads in
//! the centred phase planes start one i16 apart (kernel columns kx and kx + 1 at stride 1, kx
//! and kx + 2 at stride 2) form a pair, and a 16-value load at the first start holds, in each
//! i32 lane, the two codes that the pair multiplies for one even output point; the load one
//! further on holds those of the odd points. A tap with no partner pairs with weight 0. Sixteen
//! output points of a 3×3 kernel take 5 pairs: 10 loads, 10 multiply-adds, 10 adds, and the
//! sums are written once. The i32 sums wrap like the portable loop's, so the accumulators are
//! identical.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Two taps: where the first reads in the planes (`plane · plen + offset`; the second reads
/// one further on) and their weights as one i32 of two i16 (first in the low half).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pair {
    at: usize,
    w: i32,
}

/// The pairs of one output channel's taps (`taps`: plane and offset per weight, `w` the
/// weights, zeros skipped), each tap in exactly one pair.
pub(super) fn pairs(taps: &[(usize, usize)], w: &[i16], plen: usize) -> Vec<Pair> {
    let mut at: Vec<(usize, i16)> = taps
        .iter()
        .zip(w)
        .filter(|(_, wt)| **wt != 0)
        .map(|(&(p, off), &wt)| (p * plen + off, wt))
        .collect();
    at.sort_unstable();
    let pack = |a: i16, b: i16| (a as u16 as u32 | (b as u16 as u32) << 16) as i32;
    let mut out = Vec::with_capacity(at.len());
    let mut i = 0;
    while i < at.len() {
        let (pos, wt) = at[i];
        match at.get(i + 1) {
            Some(&(next, w2)) if next == pos + 1 => {
                out.push(Pair {
                    at: pos,
                    w: pack(wt, w2),
                });
                i += 2;
            }
            _ => {
                out.push(Pair {
                    at: pos,
                    w: pack(wt, 0),
                });
                i += 1;
            }
        }
    }
    out
}

/// `acc[j] = bias + Σ_pairs (w₁ · planes[at + j] + w₂ · planes[at + 1 + j])` for every j,
/// 16 points at a time, with wrapping i32 sums.
///
/// # Panics
/// If `acc.len()` is not a multiple of 16 or a pair would read past `planes` (each reads
/// `planes[at .. at + acc.len() + 1]`).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn accumulate(planes: &[i16], pairs: &[Pair], bias: i32, acc: &mut [i32]) {
    assert!(acc.len().is_multiple_of(16), "whole chunks of 16 points");
    let far = pairs.iter().map(|p| p.at).max().unwrap_or(0) + acc.len() + 1;
    assert!(far <= planes.len(), "pairs read inside the planes");
    let base = planes.as_ptr();
    let b = _mm256_set1_epi32(bias);
    for (j0, out) in (0..).step_by(16).zip(acc.chunks_exact_mut(16)) {
        let (mut even, mut odd) = (b, b);
        for p in pairs {
            let w = _mm256_set1_epi32(p.w);
            // SAFETY: at + j0 + 17 ≤ at + acc.len() + 1 ≤ planes.len() (asserted above), so
            // both 16-value loads lie inside `planes`.
            let (x0, x1) = unsafe {
                let src = base.add(p.at + j0);
                (
                    _mm256_loadu_si256(src.cast()),
                    _mm256_loadu_si256(src.add(1).cast()),
                )
            };
            even = _mm256_add_epi32(even, _mm256_madd_epi16(x0, w));
            odd = _mm256_add_epi32(odd, _mm256_madd_epi16(x1, w));
        }
        // Lanes: even holds points 0, 2, …, 14 and odd 1, 3, …, 15; the unpacks give points
        // 0–3 | 8–11 and 4–7 | 12–15, and the lane permutes 0–7 and 8–15.
        let lo = _mm256_unpacklo_epi32(even, odd);
        let hi = _mm256_unpackhi_epi32(even, odd);
        // SAFETY: `out` holds 16 i32.
        unsafe {
            let dst = out.as_mut_ptr();
            _mm256_storeu_si256(dst.cast(), _mm256_permute2x128_si256(lo, hi, 0x20));
            _mm256_storeu_si256(dst.add(8).cast(), _mm256_permute2x128_si256(lo, hi, 0x31));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_taps_pair_and_the_rest_pair_with_zero() {
        // A 3×3 kernel at stride 1 in one plane of pitch 10: rows at offsets 0, 10, 20.
        let taps: Vec<(usize, usize)> = (0..3)
            .flat_map(|ky| (0..3).map(move |kx| (0, ky * 10 + kx)))
            .collect();
        let w: Vec<i16> = vec![1, 2, 3, 0, 5, 6, -7, 8, 9];
        let got = pairs(&taps, &w, 100);
        let pack = |a: i16, b: i16| (a as u16 as u32 | (b as u16 as u32) << 16) as i32;
        let want = [
            (0, pack(1, 2)),
            (2, pack(3, 0)),
            (11, pack(5, 6)),
            (20, pack(-7, 8)),
            (22, pack(9, 0)),
        ];
        let want: Vec<Pair> = want.iter().map(|&(at, w)| Pair { at, w }).collect();
        assert_eq!(got, want);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn accumulate_equals_the_tap_loop() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut s = 12345u32;
        let mut next = || {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (s >> 8) as i32
        };
        let plen = 70;
        let planes: Vec<i16> = (0..4 * plen + 16)
            .map(|_| (next() % 511 - 255) as i16)
            .collect();
        // Taps over two planes, some adjacent, with extreme weights.
        let taps = [
            (0, 0),
            (0, 1),
            (0, 5),
            (1, 3),
            (1, 4),
            (1, 6),
            (2, 9),
            (3, 0),
        ];
        let w: Vec<i16> = vec![i16::MIN, i16::MAX, -3, 127, -128, 0, 77, -1];
        let points = 48;
        let mut acc = vec![0i32; points];
        let pw = pairs(&taps, &w, plen);
        // SAFETY: AVX2 was detected above.
        unsafe { accumulate(&planes, &pw, -5, &mut acc) };
        for (j, &a) in acc.iter().enumerate() {
            let want = taps.iter().zip(&w).fold(-5i32, |s, (&(p, off), &wt)| {
                s.wrapping_add(wt as i32 * planes[p * plen + off + j] as i32)
            });
            assert_eq!(a, want, "point {j}");
        }
    }
}
