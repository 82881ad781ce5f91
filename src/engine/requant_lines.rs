//! The GEMM epilogue through verified f32 lines, on AVX-512: where every column of a block of 16
//! has one, y = clamp(⌊fma(a, m, b(a))⌋ + c, lo, hi) with a = acc + k, its few exceptions
//! patched, which is the fixed-point path's integers over every accumulator the column can
//! produce (each line is checked at build time, step by step, by
//! [`crate::engine::intops::depthwise::line::Line`], as the depthwise kernel's are). Per 16
//! outputs that is 11 vector instructions plus 2 per round of exceptions, where the
//! fixed-point loop takes 19 (counted in the source: one conversion each way and a fused
//! multiply-add instead of two 64-bit products, their rounding and the merge of even and odd
//! lanes). Other blocks keep the fixed-point loop.
//!
//! Fewer where a block allows: one offset for all accumulators (no choice by sign) where every
//! line has one; no clamp and no integer offset c where the bounds are the whole i8 range (the
//! saturating narrowing clamps); and no add of k where every column's line verifies with k
//! folded into its offsets, read on acc itself ([`Line::f32_folded`], at most one exception).

use super::intops::depthwise::line::{Line, Line32, MAX_EXC};
use super::requant_avx512::{Blocks, block};
use crate::quant::FixedMultiplier;
use std::arch::x86_64::*;

/// One block of 16 columns, each with a verified f32 line (lanes past the last column repeat
/// its constants; they are never stored).
#[derive(Debug, Clone)]
pub(super) struct LineBlock {
    konst: [i32; 16],
    m: [f32; 16],
    bp: [f32; 16],
    bn: [f32; 16],
    a0: [i32; 16],
    c: [i32; 16],
    /// Exceptions, one round per index below the block's most: per lane, an accumulator
    /// a = acc + k where the line is wrong and the exact output (`i32::MIN`, which no column
    /// reaches, where a lane has fewer).
    exc: Vec<([i32; 16], [i32; 16])>,
    /// The lines are read on the accumulators themselves (every k above is 0, and no add is
    /// needed).
    fold: bool,
    /// Every lane's line has one offset (b_n = b_p): none is chosen by sign.
    one: bool,
    /// The bounds are narrower than the whole i8 range, or some lane has an integer offset c
    /// (lines of the whole range have none, see `Line::line32`): else the saturating narrowing
    /// alone clamps, and c is not added.
    clamp: bool,
}

/// Per block of 16 columns, its lines when all of them have one.
#[derive(Debug, Clone)]
pub(super) struct LineBlocks {
    blocks: Vec<Option<LineBlock>>,
}

impl LineBlocks {
    /// The lines of the epilogue clamp(zp_r + M_r·(acc + k_r), lo, hi), each checked over the
    /// accumulators `ranges[r]` (before k_r is added), whose sums with k_r must fit i32; `None`
    /// when no block has lines everywhere.
    pub(super) fn new(
        mult: &[FixedMultiplier],
        (konst, zp): (&[i32], &[i32]),
        (lo, hi): (i32, i32),
        ranges: &[(i32, i32)],
    ) -> Option<Self> {
        // Per column, over a = acc + k_r: the folded line (read on acc itself) if it has at
        // most one exception, else (or where a column of its block has none) the plain one,
        // which needs the add of k_r. One check per column where its block folds.
        let range = |r: usize| {
            let (amin, amax) = ranges[r];
            let (a, b) = (amin as i64 + konst[r] as i64, amax as i64 + konst[r] as i64);
            let fits = a >= i32::MIN as i64 && b <= i32::MAX as i64;
            fits.then_some(((zp[r], lo, hi), (a as i32, b as i32)))
        };
        let folded_line = |r: usize| {
            let (q, a) = range(r)?;
            Line::f32_folded(mult[r], q, a, (konst[r], 1))
        };
        // Each line's check is a search per output level: the columns in parallel.
        use rayon::prelude::*;
        let n = mult.len();
        let folded: Vec<_> = (0..n).into_par_iter().map(folded_line).collect();
        let block_folds = |j: usize| {
            folded[16 * j..(16 * j + 16).min(n)]
                .iter()
                .all(Option::is_some)
        };
        let plain: Vec<_> = (0..n)
            .into_par_iter()
            .map(|r| {
                let (q, a) = range(r).filter(|_| !block_folds(r / 16))?;
                Line::f32_only(mult[r], q, a)
            })
            .collect();
        let blocks: Vec<Option<LineBlock>> = (0..n.div_ceil(16))
            .map(|j| {
                let cols: Vec<usize> = (16 * j..(16 * j + 16).min(n)).collect();
                if block_folds(j) {
                    let f: Vec<_> = cols.iter().filter_map(|&r| folded[r]).collect();
                    return Some(LineBlock::of(&f, (&cols, konst), (lo, hi), true));
                }
                let p: Option<Vec<_>> = cols.iter().map(|&r| plain[r]).collect();
                p.map(|p| LineBlock::of(&p, (&cols, konst), (lo, hi), false))
            })
            .collect();
        blocks
            .iter()
            .any(Option::is_some)
            .then_some(LineBlocks { blocks })
    }
}

impl LineBlock {
    /// The block of columns `cols` (at most 16) from their `lines` (each with its a₀), the
    /// constants k and the clamp bounds; with `fold`, lines from [`Line::f32_folded`], read on
    /// the accumulators themselves (k = 0 in the lanes, a₀ and the exceptions moved down by k).
    fn of(
        lines: &[(Line32, i32)],
        (cols, konst): (&[usize], &[i32]),
        (lo, hi): (i32, i32),
        fold: bool,
    ) -> Self {
        let lane = |l: usize| l.min(cols.len() - 1);
        let k = |l: usize| if fold { konst[cols[lane(l)]] } else { 0 };
        let most = lines.iter().map(|(l, _)| l.n).max().unwrap_or(0);
        let exc = (0..most).map(|i| {
            let at = |l: usize| {
                let x = &lines[lane(l)].0;
                if l < cols.len() && i < x.n {
                    (x.exc[i] - k(l), x.val[i] as i32)
                } else {
                    (i32::MIN, 0)
                }
            };
            (
                std::array::from_fn(|l| at(l).0),
                std::array::from_fn(|l| at(l).1),
            )
        });
        let whole = (lo, hi) == (i8::MIN as i32, i8::MAX as i32);
        let c: [i32; 16] = std::array::from_fn(|l| lines[lane(l)].0.c);
        let (bp, bn) = (
            std::array::from_fn(|l| lines[lane(l)].0.bp),
            std::array::from_fn(|l| lines[lane(l)].0.bn),
        );
        LineBlock {
            konst: std::array::from_fn(|l| konst[cols[lane(l)]] - k(l)),
            m: std::array::from_fn(|l| lines[lane(l)].0.m),
            one: bp == bn,
            bp,
            bn,
            a0: std::array::from_fn(|l| lines[lane(l)].1.saturating_sub(k(l))),
            clamp: !whole || c.iter().any(|&c| c != 0),
            c,
            exc: exc.collect(),
            fold,
        }
    }
}

#[cfg(test)]
impl LineBlocks {
    /// Blocks whose lines all have one offset.
    pub(super) fn one_offset_blocks(&self) -> usize {
        self.blocks.iter().flatten().filter(|b| b.one).count()
    }

    /// Blocks whose lines are read on the accumulators (k folded into the offsets).
    pub(super) fn folded_blocks(&self) -> usize {
        self.blocks.iter().flatten().filter(|b| b.fold).count()
    }
}

/// Requantizes rows of `out` accumulators in `c` into `y`: blocks with lines through them, the
/// others through the fixed-point loop of `fixed`.
///
/// # Safety
/// The CPU supports AVX-512 F, DQ, BW and VL; `lines` and `fixed` built for `out` columns.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
pub(super) unsafe fn rows(
    (lines, fixed): (&LineBlocks, &Blocks),
    (out, sums_fit): (usize, bool),
    c: &[i32],
    y: &mut [i8],
    (lo, hi): (i32, i32),
) {
    // The variant of `line_block` for a block's flags (see `LineBlock`).
    macro_rules! variants {
        ($lb:expr, $($one:literal $clamp:literal $fold:literal),*) => {
            match ($lb.one, $lb.clamp, $lb.fold) {
                $(($one, $clamp, $fold) => line_block::<$one, $clamp, $fold>,)*
            }
        };
    }
    for (j, lb) in lines.blocks.iter().enumerate() {
        let b = (lo, hi);
        // SAFETY (both calls): as this fn's contract; j indexes a block of `fixed` and of
        // `lines`, built alike.
        match lb {
            None => unsafe { block(fixed, j, (out, sums_fit), c, y, b) },
            Some(lb) => {
                let run = variants!(
                    lb, true true true, true true false, true false true, true false false,
                    false true true, false true false, false false true, false false false
                );
                unsafe { run(lb, (j, out), c, y, b) }
            }
        }
    }
}

/// Block `j` (columns 16j .. 16j + 16 of `out`) of every row through its lines; with `ONE`,
/// every lane's line has one offset (b_n = b_p) and none is chosen by sign; without `CLAMP`,
/// the bounds are the whole i8 range, every lane's integer offset c is 0 and the saturating
/// narrowing alone clamps; with `FOLD`, every k is 0 and is not added.
///
/// # Safety
/// The CPU supports AVX-512 F, DQ, BW and VL; `lb` built for block j of `out` columns.
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
unsafe fn line_block<const ONE: bool, const CLAMP: bool, const FOLD: bool>(
    lb: &LineBlock,
    (j, out): (usize, usize),
    c: &[i32],
    y: &mut [i8],
    (lo, hi): (i32, i32),
) {
    let n_rows = (c.len() / out.max(1)).min(y.len() / out.max(1));
    let (vlo, vhi) = (_mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
    let n = (out - 16 * j).min(16);
    let mask: u16 = if n == 16 { !0 } else { (1 << n) - 1 };
    let full = n == 16;
    let (konst, a0, cc) = (ld(&lb.konst), ld(&lb.a0), ld(&lb.c));
    let (m, bp, bn) = (ldf(&lb.m), ldf(&lb.bp), ldf(&lb.bn));
    // In registers, not a Vec (a vector type's alignment makes that an aligned allocation
    // on every call).
    let zero = _mm512_setzero_si512();
    let mut exc = [(zero, zero); MAX_EXC];
    for (x, (e, v)) in exc.iter_mut().zip(&lb.exc) {
        *x = (ld(e), ld(v));
    }
    let exc = &exc[..lb.exc.len()];
    for r in 0..n_rows {
        let at = r * out + 16 * j;
        // SAFETY: the mask covers columns 16j .. 16j + n < out of row r < n_rows, which
        // both c and y hold.
        unsafe {
            // Whole blocks load and store without a mask (a masked byte store costs several
            // times a plain one on Zen 4).
            let acc = if full {
                _mm512_loadu_si512(c.as_ptr().add(at).cast())
            } else {
                _mm512_maskz_loadu_epi32(mask, c.as_ptr().add(at))
            };
            let a = if FOLD {
                acc
            } else {
                _mm512_add_epi32(acc, konst)
            };
            let b = if ONE {
                bp
            } else {
                _mm512_mask_blend_ps(_mm512_cmplt_epi32_mask(a, a0), bp, bn)
            };
            let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), m, b);
            const RD: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
            let mut q = _mm512_cvt_roundps_epi32::<RD>(t);
            if CLAMP {
                q = _mm512_add_epi32(q, cc);
            }
            for &(e, v) in exc {
                q = _mm512_mask_mov_epi32(q, _mm512_cmpeq_epi32_mask(a, e), v);
            }
            let q = if CLAMP {
                _mm512_min_epi32(_mm512_max_epi32(q, vlo), vhi)
            } else {
                q
            };
            let q = _mm512_cvtsepi32_epi8(q);
            if full {
                _mm_storeu_si128(y.as_mut_ptr().add(at).cast(), q);
            } else {
                _mm_mask_storeu_epi8(y.as_mut_ptr().add(at), mask, q);
            }
        }
    }
}

/// 16 lanes of i32 in a vector (a function, not a closure, so that it has this file's target
/// features).
#[inline]
#[target_feature(enable = "avx512f")]
fn ld(v: &[i32; 16]) -> __m512i {
    // SAFETY: the array holds 16 i32.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

/// 16 lanes of f32 in a vector.
#[inline]
#[target_feature(enable = "avx512f")]
fn ldf(v: &[f32; 16]) -> __m512 {
    // SAFETY: the array holds 16 f32.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
}
