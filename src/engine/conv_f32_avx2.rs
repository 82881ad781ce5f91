//! The AVX2 + FMA tile of the float engine's stride-1 padded-image conv (`conv_f32`), for CPUs
//! without AVX-512: the same sums in the same tap order, on 8-float vectors. A tile is 6 output
//! channels (weights packed 6 per tap) × 16 pixels: 12 accumulators, 2 image loads and 6
//! weight broadcasts per tap, 15 of AVX2's 16 registers (12 sums are enough to keep both fused
//! multiply-add pipes busy through their latency; 4 × 24 pixels needs all 16 and spills).

use super::clamp_f32::Clamp;

/// Output channels per tile (the weights' packing block).
pub(super) const MR: usize = 6;
/// Vectors of 8 pixels per tile.
const NV: usize = 2;
/// Pixels per tile.
pub(super) const NR: usize = 8 * NV;

/// Whether this CPU runs the AVX2 tile (AVX2 and FMA; detected once).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One tile: rows r < `rows` (≤ MR) of `out` (stride `ld`), lanes < `lanes` (≤ NR), get
/// clamp(bias[r] + Σ_t w[t][r] · img[off_t + lane]), one fused multiply-add per tap in order.
///
/// # Safety
/// AVX2 and FMA; img[off .. off + NR] readable for every offset; `w` holds MR values per
/// offset; `out` writable for `rows` rows of `lanes` values at stride `ld`.
/// (`bias` holds the driver's 8 values; the first MR are read.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile(
    img: *const f32,
    offsets: &[usize],
    (w, bias, clamp): (&[f32], &[f32; 8], Clamp),
    out: *mut f32,
    (rows, lanes, ld): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
    let (lo, hi) = clamp.bounds();
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    for (a, &b) in acc.iter_mut().zip(bias) {
        *a = [_mm256_set1_ps(b); NV];
    }
    for (&off, wt) in offsets.iter().zip(w.chunks_exact(MR)) {
        // SAFETY: per this fn's contract (NR floats readable from every offset).
        let x: [__m256; NV] =
            std::array::from_fn(|v| unsafe { _mm256_loadu_ps(img.add(off + 8 * v)) });
        for (a, &wv) in acc.iter_mut().zip(wt) {
            let wv = _mm256_set1_ps(wv);
            for (a, &x) in a.iter_mut().zip(&x) {
                *a = _mm256_fmadd_ps(wv, x, *a);
            }
        }
    }
    for (r, a) in acc.iter().enumerate().take(rows) {
        // A loop, not a closure: a closure would not inherit this fn's target features (a
        // call per vector).
        let mut a = *a;
        for v in &mut a {
            *v = _mm256_min_ps(hi, _mm256_max_ps(lo, *v));
        }
        let row = out.wrapping_add(r * ld);
        if lanes == NR {
            // Plain stores: AMD's masked stores are microcoded (with them the tile ran at 23
            // against 28–29 G multiply-adds/s on the bench's 3×3 conv).
            for (v, &a) in a.iter().enumerate() {
                // SAFETY: row r < rows holds NR = lanes writable values, per the contract.
                unsafe { _mm256_storeu_ps(row.add(8 * v), a) };
            }
            continue;
        }
        let mut part = [0f32; NR];
        for (v, &a) in a.iter().enumerate() {
            // SAFETY: `part` holds NR floats.
            unsafe { _mm256_storeu_ps(part.as_mut_ptr().add(8 * v), a) };
        }
        // SAFETY: row r < rows holds `lanes` writable values, per the contract.
        unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), row, lanes) };
    }
}

/// Not built off x86-64: [`supported`] is false there.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn tile(
    _: *const f32,
    _: &[usize],
    _: (&[f32], &[f32; 8], Clamp),
    _: *mut f32,
    _: (usize, usize, usize),
) {
    unreachable!("supported() is false off x86-64")
}

/// One output plane of a grouped conv on AVX2 + FMA: the sums of `conv_f32`'s AVX-512
/// `channel_rows` (bias, then one fused multiply-add per (channel of the group, tap) in order),
/// 4 output rows × 16 pixels at a time (8 accumulators); a horizontal stride of 2 takes the even
/// lanes of two loads per vector.
///
/// # Safety
/// AVX2 and FMA; `img` holds the group's planes ([cg, hp, wp]) plus 32 floats past the last.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn channel_rows(
    img: &[f32],
    (hp, wp): (usize, usize),
    g: &super::im2col::ConvGeom,
    (offsets, taps, bias, clamp): (&[usize], &[f32], f32, Clamp),
    plane: &mut [std::mem::MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (lo, hi) = clamp.bounds();
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    const RB: usize = 4;
    const PX: usize = 16;
    let (sh, sw) = g.stride;
    let cg = taps.len() / (g.kernel.0 * g.kernel.1);
    assert!(
        img.len() >= cg * hp * wp + 32,
        "the group's planes and the slack"
    );
    assert!(sw == 1 || sw == 2, "a horizontal stride of 1 or 2");
    let load = |p: *const f32| -> __m256 {
        // SAFETY: callers pass a tap's element inside the planes; 8 (stride 1) or 16 (stride 2)
        // floats from it lie inside the planes plus their slack.
        unsafe {
            if sw == 1 {
                return _mm256_loadu_ps(p);
            }
            let (lo, hi) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            // [lo0 lo2 hi0 hi2 lo4 lo6 hi4 hi6] → [lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6]
            let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                even,
            )))
        }
    };
    for oy0 in (0..g.oh).step_by(RB) {
        let nr = RB.min(g.oh - oy0);
        // Past the last row, the last row again (computed, not stored).
        let rows: [usize; RB] = std::array::from_fn(|r| (oy0 + r.min(nr - 1)) * sh * wp);
        for ox0 in (0..g.ow).step_by(PX) {
            let lanes = (g.ow - ox0).min(PX);
            let mut acc = [[_mm256_set1_ps(bias); 2]; RB];
            for (&off, &wt) in offsets.iter().zip(taps) {
                let wv = _mm256_set1_ps(wt);
                for (a, &row) in acc.iter_mut().zip(&rows) {
                    // A tap reads row oy·sh + ky·dh < hp of a plane from column ox0·sw + kx·dw
                    // < wp: at most 32 floats past it stay inside the planes plus the slack.
                    let p = img[row + ox0 * sw + off..].as_ptr();
                    a[0] = _mm256_fmadd_ps(wv, load(p), a[0]);
                    a[1] = _mm256_fmadd_ps(wv, load(p.wrapping_add(8 * sw)), a[1]);
                }
            }
            for (r, a) in acc.iter().enumerate().take(nr) {
                let dst = &mut plane[(oy0 + r) * g.ow + ox0..][..lanes];
                let (first, second) = (lanes.min(8), lanes.saturating_sub(8));
                let mut a = *a;
                for v in &mut a {
                    *v = _mm256_min_ps(hi, _mm256_max_ps(lo, *v));
                }
                // SAFETY: AVX2; the two stores write `first` + `second` = dst.len() floats.
                unsafe {
                    store_first(dst.as_mut_ptr().cast(), a[0], first);
                    store_first(dst.as_mut_ptr().add(first).cast(), a[1], second);
                }
            }
        }
    }
}

/// Stores the first `n` (≤ 8) lanes of `v` at `p`, in 4-, 2- and 1-float steps below 8 (a
/// short copy through memory costs a call per row end).
///
/// # Safety
/// AVX2; `p` .. `p + n` writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_first(p: *mut f32, v: std::arch::x86_64::__m256, n: usize) {
    use std::arch::x86_64::*;
    debug_assert!(n <= 8);
    // SAFETY (every store): it writes inside p .. p + n, per the contract.
    unsafe {
        if n == 8 {
            return _mm256_storeu_ps(p, v);
        }
        let (mut at, mut q) = (0, _mm256_castps256_ps128(v));
        if n & 4 != 0 {
            _mm_storeu_ps(p, q);
            (at, q) = (4, _mm256_extractf128_ps::<1>(v));
        }
        if n & 2 != 0 {
            _mm_storeu_si64(p.add(at).cast(), _mm_castps_si128(q));
            (at, q) = (at + 2, _mm_movehl_ps(q, q));
        }
        if n & 1 != 0 {
            _mm_store_ss(p.add(at), q);
        }
    }
}

/// Not built off x86-64: [`supported`] is false there.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn channel_rows(
    _: &[f32],
    _: (usize, usize),
    _: &super::im2col::ConvGeom,
    _: (&[usize], &[f32], f32, Clamp),
    _: &mut [std::mem::MaybeUninit<f32>],
) {
    unreachable!("supported() is false off x86-64")
}
