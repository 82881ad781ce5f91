//! The requantization epilogue written out in AVX2: the integer steps of `requant_avx512` (see
//! its module doc for why one add, one masked subtract and one arithmetic shift give the
//! reference's two roundings), 8 accumulators per vector. AVX2 has no saturating i32 add, no
//! 64-bit min/max and no 64-bit arithmetic shift, so: acc + k saturates by the sign rule of
//! two's-complement overflow; `vpmuldq` reads the even columns' i32 in place and the odd ones
//! shifted down (exact products, as on AVX-512); and ⌊t / 2^s⌋ for a negative t is
//! !(⌊!t / 2^s⌋), a logical shift between two complements.

use std::arch::x86_64::*;

/// Per-column constants of one block of 8 columns: even columns (0, 2, 4, 6) in the four i64
/// lanes of the first half, odd ones in the second.
#[derive(Debug, Clone)]
pub(super) struct Block8 {
    /// k (the constant added to the accumulator), in column order.
    konst: [i32; 8],
    /// The mantissa, [even 4, odd 4] (0 where the shift passes 31: the result is then 0).
    mant: [i64; 8],
    /// The offset 2^30 + 2^(30+e) (2^30 alone for e = 0), [even 4, odd 4].
    cpos: [i64; 8],
    /// What the offset loses where ab + 2^30 < 0: 2^31 (0 for e = 0), [even 4, odd 4].
    delta: [i64; 8],
    /// The shift 31 + e, [even 4, odd 4].
    shift: [i64; 8],
    /// Output zero point per column, in column order.
    zp: [i32; 8],
}

/// The epilogue's constants laid out for the AVX2 loop, columns padded to blocks of 8.
#[derive(Debug, Clone)]
pub(super) struct Blocks8 {
    blocks: Vec<Block8>,
}

impl Blocks8 {
    /// From the per-column constant k, mantissa, right shift e (≤ 62) and zero point.
    pub(super) fn new(konst: &[i32], mant: &[i64], right: &[i64], zp: &[i32]) -> Self {
        let n = konst.len();
        let blocks = (0..n.div_ceil(8))
            .map(|b| {
                // i64 lane l holds column 2·(l mod 4) + ⌊l / 4⌋ of the block (evens, then odds).
                let col = |lane: usize| Some(8 * b + 2 * (lane % 4) + lane / 4).filter(|&c| c < n);
                let per = |f: &dyn Fn(usize) -> i64| std::array::from_fn(|l| col(l).map_or(0, f));
                let in_order =
                    |v: &[i32]| std::array::from_fn(|l| v.get(8 * b + l).copied().unwrap_or(0));
                let lane = |c: usize| super::requant_avx512::lane_constants(mant[c], right[c]);
                Block8 {
                    konst: in_order(konst),
                    mant: per(&|c| lane(c)[0]),
                    cpos: per(&|c| lane(c)[1]),
                    delta: per(&|c| lane(c)[2]),
                    shift: per(&|c| lane(c)[3]),
                    zp: in_order(zp),
                }
            })
            .collect();
        Blocks8 { blocks }
    }

    /// A block with column `r`'s constants in every lane (for a channel-major run).
    pub(super) fn broadcast(&self, r: usize) -> Block8 {
        let b = &self.blocks[r / 8];
        let l = r % 8;
        let lane = l / 2 + 4 * (l % 2);
        Block8 {
            konst: [b.konst[l]; 8],
            mant: [b.mant[lane]; 8],
            cpos: [b.cpos[lane]; 8],
            delta: [b.delta[lane]; 8],
            shift: [b.shift[lane]; 8],
            zp: [b.zp[l]; 8],
        }
    }
}

/// A [`Block8`]'s constants in registers.
#[derive(Clone, Copy)]
struct Consts {
    konst: __m256i,
    /// [mantissa, offset, delta, shift] of the even columns, then of the odd ones.
    even: [__m256i; 4],
    odd: [__m256i; 4],
    zp: __m256i,
    lo: __m256i,
    hi: __m256i,
}

impl Consts {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(b: &Block8, (lo, hi): (i32, i32)) -> Self {
        // SAFETY: every array read holds 8 elements of 4 or 8 bytes; o + 4 ≤ 8.
        let ld = |v: &[i64; 8], o: usize| unsafe { _mm256_loadu_si256(v[o..].as_ptr().cast()) };
        let half = |o| {
            [
                ld(&b.mant, o),
                ld(&b.cpos, o),
                ld(&b.delta, o),
                ld(&b.shift, o),
            ]
        };
        Consts {
            // SAFETY: `konst` and `zp` hold 8 i32.
            konst: unsafe { _mm256_loadu_si256(b.konst.as_ptr().cast()) },
            even: half(0),
            odd: half(4),
            zp: unsafe { _mm256_loadu_si256(b.zp.as_ptr().cast()) },
            lo: _mm256_set1_epi32(lo),
            hi: _mm256_set1_epi32(hi),
        }
    }

    /// 8 accumulators (columns in order) to their clamped output codes as i32; `fits`: acc + k
    /// is known to stay inside i32 (a plain add).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn requant8(&self, acc: __m256i, fits: bool) -> __m256i {
        let a = if fits {
            _mm256_add_epi32(acc, self.konst)
        } else {
            saturating_add(acc, self.konst)
        };
        let qe = rounded(_mm256_mul_epi32(a, self.even[0]), &self.even);
        let qo = rounded(
            _mm256_mul_epi32(_mm256_srli_epi64::<32>(a), self.odd[0]),
            &self.odd,
        );
        let q = _mm256_blend_epi32::<0b1010_1010>(qe, _mm256_slli_epi64::<32>(qo));
        _mm256_min_epi32(
            _mm256_max_epi32(_mm256_add_epi32(q, self.zp), self.lo),
            self.hi,
        )
    }
}

/// a + b on i32 lanes, saturated to i32's ends where it overflows (both operands of one sign
/// and the sum of the other).
#[inline]
#[target_feature(enable = "avx2")]
fn saturating_add(a: __m256i, b: __m256i) -> __m256i {
    let s = _mm256_add_epi32(a, b);
    let overflow = _mm256_and_si256(_mm256_xor_si256(a, s), _mm256_xor_si256(b, s));
    let end = _mm256_xor_si256(_mm256_srai_epi32::<31>(a), _mm256_set1_epi32(i32::MAX));
    _mm256_blendv_epi8(s, end, _mm256_srai_epi32::<31>(overflow))
}

/// The one floor of both rounding steps on the products `ab`, with the half's
/// [_, offset, delta, shift] from `c`.
#[inline]
#[target_feature(enable = "avx2")]
fn rounded(ab: __m256i, [_, cpos, delta, shift]: &[__m256i; 4]) -> __m256i {
    let below = _mm256_cmpgt_epi64(_mm256_set1_epi64x(-(1 << 30)), ab);
    let t = _mm256_sub_epi64(_mm256_add_epi64(ab, *cpos), _mm256_and_si256(*delta, below));
    let neg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), t);
    _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(t, neg), *shift), neg)
}

/// The low byte of each i32 lane of `q` (codes already clamped to i8), in order.
#[inline]
#[target_feature(enable = "avx2")]
pub(in crate::engine) fn narrow8(q: __m256i) -> [u8; 8] {
    let pick = _mm256_setr_epi8(
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let b = _mm256_shuffle_epi8(q, pick);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
    (_mm_cvtsi128_si64(_mm256_castsi256_si128(b)) as u64).to_le_bytes()
}

/// Loads `n ≤ 8` i32 from `src` into the low lanes of a vector (zeros above).
#[inline]
#[target_feature(enable = "avx2")]
fn load_low(src: &[i32], n: usize) -> __m256i {
    if n == 8 {
        // SAFETY: `src` holds at least 8 i32 (callers pass n ≤ src.len()).
        return unsafe { _mm256_loadu_si256(src.as_ptr().cast()) };
    }
    let mut v = [0i32; 8];
    v[..n].copy_from_slice(&src[..n]);
    // SAFETY: `v` holds 8 i32.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// Stores the low `n ≤ 8` codes of `q` to `dst`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_low(q: __m256i, dst: &mut [i8], n: usize) {
    let b = narrow8(q);
    if n == 8 {
        // One 8-byte store instead of eight byte stores.
        dst[..8].copy_from_slice(&b.map(|v| v as i8));
        return;
    }
    for (d, &s) in dst[..n].iter_mut().zip(&b) {
        *d = s as i8;
    }
}

/// Requantizes rows of `out` accumulators in `c` into `y` (as many rows as both hold): block
/// of 8 columns by block, its constants in registers once for all the rows. `fits`: every
/// acc + k stays inside i32.
///
/// # Safety
/// The CPU supports AVX2; `blocks` built for `out` columns.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn rows(
    blocks: &Blocks8,
    (out, fits): (usize, bool),
    c: &[i32],
    y: &mut [i8],
    lohi: (i32, i32),
) {
    let n_rows = (c.len() / out.max(1)).min(y.len() / out.max(1));
    for (j, b) in blocks.blocks.iter().enumerate() {
        let n = (out - 8 * j).min(8);
        let k = Consts::load(b, lohi);
        for r in 0..n_rows {
            let at = r * out + 8 * j;
            let q = k.requant8(load_low(&c[at..], n), fits);
            store_low(q, &mut y[at..], n);
        }
    }
}

/// Requantizes accumulators of a single column (constants `b` from [`Blocks8::broadcast`]).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn column(b: &Block8, c: &[i32], y: &mut [i8], lohi: (i32, i32)) {
    let k = Consts::load(b, lohi);
    let n = c.len().min(y.len());
    for i in (0..n).step_by(8) {
        let m = (n - i).min(8);
        let q = k.requant8(load_low(&c[i..], m), false);
        store_low(q, &mut y[i..], m);
    }
}
