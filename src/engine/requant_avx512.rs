//! The requantization epilogue written out in AVX-512 (F, DQ, BW, VL): the same integer steps as
//! [`super::requant::Requant`]'s reference, 16 accumulators per vector.
//!
//! The i32 accumulators stay in their vector; even and odd lanes are widened in place to two
//! vectors of i64 (a shift pair and a shift), each goes through + k (clamped to i32, the
//! reference's saturating add) and · mantissa (`vpmuldq`, exact, giving ab), then one floor:
//! the doubling high multiply is h = ⌊(ab + 2³⁰)/2³¹⌋ (its nudge below zero, 1 − 2³⁰, and its
//! division toward zero, + 2³¹ − 1 before the shift, add up to the same 2³⁰), and the rounding
//! shift by e > 0 is ⌊(h + 2^(e−1) − [h < 0])/2^e⌋ (h/2^e rounded half away from zero); nested
//! floors of integers merge, so y = ⌊(ab + 2³⁰ + 2^(30+e) − [ab + 2³⁰ < 0]·2³¹) / 2^(31+e)⌋,
//! one add, one masked subtract and one arithmetic shift (for e = 0: ⌊(ab + 2³⁰)/2³¹⌋). Shifts
//! past 31 give 0 for every i32 accumulator (|h| < 2³¹) and run as mantissa 0. The odd results
//! go back into the odd i32 lanes, then + z, clamp, narrow.

use std::arch::x86_64::*;

/// One column's [mantissa, offset, delta, shift] for the one-floor rounding of the module doc,
/// from its mantissa and right shift e (≤ 62): shifts past 31 give 0 (mantissa 0).
pub(super) fn lane_constants(mant: i64, right: i64) -> [i64; 4] {
    let e = right.min(31);
    [
        if right > 31 { 0 } else { mant },
        (1 << 30) + if e > 0 { 1i64 << (30 + e) } else { 0 },
        if right > 0 { 1i64 << 31 } else { 0 },
        31 + e,
    ]
}

/// Per-column constants of one block of 16 columns, even columns then odd ones, as i64.
#[derive(Debug, Clone)]
pub(super) struct Block16 {
    /// k (the constant added to the accumulator), [even 8, odd 8].
    konst: [i64; 16],
    /// The mantissa (low 32 bits used), [even 8, odd 8].
    mant: [i64; 16],
    /// The offset 2^30 + 2^(30+e) (2^30 alone for e = 0).
    cpos: [i64; 16],
    /// What the offset loses where ab + 2^30 < 0: 2^31 (0 for e = 0).
    delta: [i64; 16],
    /// The shift 31 + e.
    shift: [i64; 16],
    /// Output zero point per column, in column order.
    zp: [i32; 16],
}

/// The epilogue's constants laid out for the vector loop, columns padded to blocks of 16.
#[derive(Debug, Clone)]
pub(super) struct Blocks {
    blocks: Vec<Block16>,
}

impl Blocks {
    /// From the per-column constant k, mantissa, right shift e (≤ 62) and zero point.
    pub(super) fn new(konst: &[i32], mant: &[i64], right: &[i64], zp: &[i32]) -> Self {
        let n = konst.len();
        let blocks = (0..n.div_ceil(16))
            .map(|b| {
                // Lane l holds column 2·(l mod 8) + ⌊l / 8⌋ of the block (evens, then odds).
                let col = |lane: usize| Some(16 * b + 2 * (lane % 8) + lane / 8).filter(|&c| c < n);
                let per = |f: &dyn Fn(usize) -> i64| std::array::from_fn(|l| col(l).map_or(0, f));
                let lane = |c: usize| lane_constants(mant[c], right[c]);
                Block16 {
                    konst: per(&|c| konst[c] as i64),
                    mant: per(&|c| lane(c)[0]),
                    cpos: per(&|c| lane(c)[1]),
                    delta: per(&|c| lane(c)[2]),
                    shift: per(&|c| lane(c)[3]),
                    zp: std::array::from_fn(|l| zp.get(16 * b + l).copied().unwrap_or(0)),
                }
            })
            .collect();
        Blocks { blocks }
    }

    /// A block with column `r`'s constants in every lane (for a channel-major run).
    pub(super) fn broadcast(&self, r: usize) -> Block16 {
        let b = &self.blocks[r / 16];
        let l = r % 16;
        let lane = l / 2 + 8 * (l % 2);
        Block16 {
            konst: [b.konst[lane]; 16],
            mant: [b.mant[lane]; 16],
            cpos: [b.cpos[lane]; 16],
            delta: [b.delta[lane]; 16],
            shift: [b.shift[lane]; 16],
            zp: [b.zp[l]; 16],
        }
    }
}

/// Requantizes rows of `out` accumulators in `c` into `y` (as many rows as both hold): block of
/// 16 columns by block, its constants loaded into registers once for all the rows.
///
/// # Safety
/// The CPU supports AVX-512 F, DQ, BW and VL; `blocks` built for `out` columns.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
pub(super) unsafe fn rows(
    blocks: &Blocks,
    (out, sums_fit): (usize, bool),
    c: &[i32],
    y: &mut [i8],
    lohi: (i32, i32),
) {
    for j in 0..blocks.blocks.len() {
        // SAFETY: as this fn's contract; j indexes a block.
        unsafe { block(blocks, j, (out, sums_fit), c, y, lohi) };
    }
}

/// [`rows`] for the block of columns 16j .. 16j + 16 only.
///
/// # Safety
/// As [`rows`]; `j` indexes a block of `blocks`.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
pub(super) unsafe fn block(
    blocks: &Blocks,
    j: usize,
    (out, sums_fit): (usize, bool),
    c: &[i32],
    y: &mut [i8],
    lohi: (i32, i32),
) {
    let bounds = (_mm512_set1_epi32(lohi.0), _mm512_set1_epi32(lohi.1));
    let n_rows = (c.len() / out.max(1)).min(y.len() / out.max(1));
    let b = &blocks.blocks[j];
    let n = (out - 16 * j).min(16);
    let m: u16 = if n == 16 { !0 } else { (1 << n) - 1 };
    let k = Consts::load(b);
    for r in 0..n_rows {
        let at = r * out + 16 * j;
        // SAFETY: the mask covers columns 16j .. 16j + n < out of row r < n_rows, which
        // both c and y hold.
        unsafe {
            let a = _mm512_maskz_loadu_epi32(m, c.as_ptr().add(at));
            let q = if sums_fit {
                k.requant16_fitting(a, bounds)
            } else {
                k.requant16(a, bounds)
            };
            _mm_mask_storeu_epi8(y.as_mut_ptr().add(at), m, _mm512_cvtepi32_epi8(q));
        }
    }
}

/// A [`Block16`]'s constants in registers: even halves, odd halves, zero points.
#[derive(Clone, Copy)]
struct Consts {
    even: [__m512i; 5],
    odd: [__m512i; 5],
    /// k as i32 in column order (for sums known to fit i32).
    konst: __m512i,
    zp: __m512i,
}

impl Consts {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(b: &Block16) -> Self {
        let half = |o: usize| {
            // SAFETY: each array holds 16 i64; o + 8 ≤ 16.
            let ld = |v: &[i64; 16]| unsafe { _mm512_loadu_si512(v[o..].as_ptr().cast()) };
            [
                ld(&b.konst),
                ld(&b.mant),
                ld(&b.cpos),
                ld(&b.delta),
                ld(&b.shift),
            ]
        };
        let (even, odd) = (half(0), half(8));
        // Even k in the low halves, odd k in the high halves: column order as i32.
        let konst = _mm512_mask_blend_epi32(0xAAAA, even[0], _mm512_slli_epi64::<32>(odd[0]));
        Consts {
            even,
            odd,
            konst,
            // SAFETY: `zp` holds 16 i32.
            zp: unsafe { _mm512_loadu_si512(b.zp.as_ptr().cast()) },
        }
    }

    /// 16 accumulators (columns in order) to their clamped output codes as i32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn requant16(&self, acc: __m512i, (lo, hi): (__m512i, __m512i)) -> __m512i {
        let even = _mm512_srai_epi64::<32>(_mm512_slli_epi64::<32>(acc));
        let odd = _mm512_srai_epi64::<32>(acc);
        self.finish(steps64(even, &self.even), steps64(odd, &self.odd), (lo, hi))
    }

    /// [`Consts::requant16`] for accumulators whose acc + k fits i32: a plain 32-bit add, and
    /// `vpmuldq` reads each 64-bit lane's low i32 (even columns) or, shifted down, its high one
    /// (odd columns), so neither half is widened or clamped first.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn requant16_fitting(&self, acc: __m512i, (lo, hi): (__m512i, __m512i)) -> __m512i {
        let a = _mm512_add_epi32(acc, self.konst);
        let qe = rounded(_mm512_mul_epi32(a, self.even[1]), &self.even);
        let qo = rounded(
            _mm512_mul_epi32(_mm512_srli_epi64::<32>(a), self.odd[1]),
            &self.odd,
        );
        self.finish(qe, qo, (lo, hi))
    }

    /// The even results (low halves of `qe`'s i64 lanes) and odd ones (of `qo`) back in column
    /// order as i32, plus the zero points, clamped to the output bounds.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn finish(&self, qe: __m512i, qo: __m512i, (lo, hi): (__m512i, __m512i)) -> __m512i {
        let q = _mm512_mask_blend_epi32(0xAAAA, qe, _mm512_slli_epi64::<32>(qo));
        _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, self.zp), lo), hi)
    }
}

/// The i64 half of the steps for 8 lanes: accumulators `a` (sign-extended) and that half's
/// constants [k, mantissa, offset, delta, shift].
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn steps64(a: __m512i, c: &[__m512i; 5]) -> __m512i {
    let a = _mm512_add_epi64(a, c[0]);
    let a = _mm512_min_epi64(
        _mm512_max_epi64(a, _mm512_set1_epi64(i32::MIN as i64)),
        _mm512_set1_epi64(i32::MAX as i64),
    );
    rounded(_mm512_mul_epi32(a, c[1]), c)
}

/// The one floor of both rounding steps (see the module doc) on the products `ab`, with the
/// half's [offset, delta, shift] from `c`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn rounded(ab: __m512i, [_, _, cpos, delta, shift]: &[__m512i; 5]) -> __m512i {
    let below = _mm512_cmplt_epi64_mask(ab, _mm512_set1_epi64(-(1 << 30)));
    let t = _mm512_add_epi64(ab, *cpos);
    let t = _mm512_mask_sub_epi64(t, below, t, *delta);
    _mm512_srav_epi64(t, *shift)
}

/// Requantizes accumulators of a single column (constants `b` from [`Blocks::broadcast`]).
///
/// # Safety
/// The CPU supports AVX-512 F, DQ, BW and VL.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
pub(super) unsafe fn column(b: &Block16, c: &[i32], y: &mut [i8], lohi: (i32, i32)) {
    let bounds = (_mm512_set1_epi32(lohi.0), _mm512_set1_epi32(lohi.1));
    let consts = Consts::load(b);
    let n = c.len().min(y.len());
    for i in (0..n).step_by(16) {
        let k = (n - i).min(16);
        let m: u16 = if k == 16 { !0 } else { (1 << k) - 1 };
        // SAFETY: the mask covers elements i .. i + k ≤ n of c and y.
        unsafe {
            let a = _mm512_maskz_loadu_epi32(m, c.as_ptr().add(i));
            let q = consts.requant16(a, bounds);
            _mm_mask_storeu_epi8(y.as_mut_ptr().add(i), m, _mm512_cvtepi32_epi8(q));
        }
    }
}
