//! The AVX2 + FMA tile of the float engine's stride-1 padded-image conv (`conv_f32`), for CPUs
//! without AVX-512: the same sums in the same tap order, on 8-float vectors. A tile is 6 output
//! channels (weights packed 6 per tap) × 16 pixels: 12 accumulators, 2 image loads and 6
//! weight broadcasts per tap, 15 of AVX2's 16 registers (12 sums are enough to keep both fused
//! multiply-add pipes busy through their latency; 4 × 24 pixels needs all 16 and spills).

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
/// bias[r] + Σ_t w[t][r] · img[off_t + lane] in tap order, one fused multiply-add per tap.
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
    (w, bias): (&[f32], &[f32; 8]),
    out: *mut f32,
    (rows, lanes, ld): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
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
        let row = out.wrapping_add(r * ld);
        if lanes == NR {
            // Plain stores: AMD's masked stores are microcoded and cost as much as a tap.
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
    _: (&[f32], &[f32; 8]),
    _: *mut f32,
    _: (usize, usize, usize),
) {
    unreachable!("supported() is false off x86-64")
}
