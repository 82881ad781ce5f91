//! The float engine's linear layer on AVX-512: y = x · Wᵀ + b for row-major x [rows, k] and the
//! model's own weights W [o, k], with no packing. Both operands run along k, so a tile of
//! 4 rows × 4 outputs keeps 16 vectors of partial dot products (lane i sums the taps
//! t ≡ i mod 16, one fused multiply-add per 16 taps), loads 4 + 4 vectors per 16
//! multiply-adds, and folds its 16 vectors into one at the end in a fixed tree of shuffles.
//! Rows go in blocks of 8, so a tile's weights, read from L2, serve two tiles from L1. Unless
//! the input rows already start on 64-byte boundaries, each block of rows is first copied to
//! rows that do: a 64-byte load that straddles two cache lines costs two, and a tile loads 8
//! vectors for 16 multiply-adds, so with both operands split it waits on loads (256×784×256 on
//! one core: 48 → 57 G multiply-adds/s with the rows aligned).
//! Each output's sum depends only on its row and its weights, never on the tile it fell in,
//! so a batch cut in parts gives the same values as one run.

/// Whether [`linear_f32`] runs on this CPU (AVX-512F, detected once).
pub fn applies() -> bool {
    super::conv_f32::applies_any_stride()
}

/// Rows per tile.
const TR: usize = 4;
/// Outputs per tile.
const TO: usize = 4;

/// y [rows, o] = bias + x [rows, k] · Wᵀ for weights `w` [o, k].
///
/// # Panics
/// Unless [`applies`]`()`, or if the slices do not match `k` and the bias length.
pub fn linear_f32(xs: &[f32], k: usize, w: &[f32], bias: &[f32]) -> Vec<f32> {
    assert!(applies(), "an AVX-512 CPU");
    let o = bias.len();
    assert_eq!(w.len(), o * k, "weights [o, k]");
    assert!(k > 0 && xs.len().is_multiple_of(k), "input [rows, k]");
    let rows = xs.len() / k;
    let mut y = vec![0f32; rows * o];
    if rows == 0 || o == 0 {
        return y;
    }
    let mut sums = [[0f32; TO]; TR];
    let mut block = AlignedRows::new(xs, k);
    // Blocks of RB rows: each TO outputs' weights come from L2 once per block and serve its
    // RB / TR tiles from L1 (the rows of the block stay in L1 too).
    for b0 in (0..rows).step_by(RB) {
        let b1 = (b0 + RB).min(rows);
        let (xb, stride) = block.rows(b0, b1);
        for o0 in (0..o).step_by(TO) {
            let no = TO.min(o - o0);
            let wr = rows_from::<TO>(w, (k, k), o0, no);
            for r0 in (b0..b1).step_by(TR) {
                let nr = TR.min(rows - r0);
                let xr = rows_from::<TR>(xb, (stride, k), r0 - b0, nr);
                // SAFETY: AVX-512F per `applies`; every slice holds k values.
                unsafe { tile(&xr, &wr, &mut sums) };
                for (r, s) in sums.iter().take(nr).enumerate() {
                    let at = (r0 + r) * o + o0;
                    for ((v, &b), &s) in y[at..at + no].iter_mut().zip(&bias[o0..]).zip(s) {
                        *v = b + s;
                    }
                }
            }
        }
    }
    y
}

/// Rows per block: the block's rows and one tile's weights fit L1 for k up to about 1,000.
const RB: usize = 8;

/// The input's rows of `k` values, a block at a time, each row starting on a 64-byte boundary:
/// the input itself when its rows already do, else a copy of the block.
struct AlignedRows<'a> {
    xs: &'a [f32],
    k: usize,
    /// Room for a block of RB rows, `stride` values apart, and 64 bytes to align the first;
    /// empty when the input's rows are aligned.
    buf: Vec<f32>,
    /// Values from one row's start to the next's in `buf` (k rounded up to 16).
    stride: usize,
}

impl<'a> AlignedRows<'a> {
    /// The rows of `xs` (rows of `k`).
    fn new(xs: &'a [f32], k: usize) -> Self {
        let aligned = k.is_multiple_of(16) && (xs.as_ptr() as usize).is_multiple_of(64);
        let stride = k.next_multiple_of(16);
        let buf = if aligned {
            Vec::new()
        } else {
            vec![0f32; RB * stride + 16]
        };
        AlignedRows { xs, k, buf, stride }
    }

    /// Rows `b0 .. b1` (at most RB) as one slice whose rows start `stride` values apart, and
    /// that stride.
    fn rows(&mut self, b0: usize, b1: usize) -> (&[f32], usize) {
        let k = self.k;
        if self.buf.is_empty() {
            return (&self.xs[b0 * k..b1 * k], k);
        }
        let off = self.buf.as_ptr().align_offset(64).min(16);
        let src = self.xs[b0 * k..b1 * k].chunks_exact(k);
        for (dst, src) in self.buf[off..].chunks_mut(self.stride).zip(src) {
            dst[..k].copy_from_slice(src);
        }
        (&self.buf[off..off + (b1 - b0) * self.stride], self.stride)
    }
}

/// Rows `first .. first + count` of the row-major matrix `m` (rows `stride` values apart, `k`
/// values each), as N slices: past the last one, the last one again (computed by the tile,
/// not stored).
fn rows_from<const N: usize>(
    m: &[f32],
    (stride, k): (usize, usize),
    first: usize,
    count: usize,
) -> [&[f32]; N] {
    std::array::from_fn(|r| {
        let at = (first + r.min(count - 1)) * stride;
        &m[at..at + k]
    })
}

/// out[r][j] = Σ_t x[r][t] · w[j][t] over the k values of every slice: 16 partial sums per
/// (r, j) by lane, then folded.
///
/// # Safety
/// AVX-512F; every slice of `x` and `w` holds as many values as `x[0]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(x: &[&[f32]; TR], w: &[&[f32]; TO], out: &mut [[f32; TO]; TR]) {
    use std::arch::x86_64::*;
    let k = x[0].len();
    // acc[j * TR + r] holds the partial sums of row r, output j.
    let mut acc = [_mm512_setzero_ps(); TR * TO];
    let step = |acc: &mut [__m512; TR * TO], xv: [__m512; TR], wv: [__m512; TO]| {
        for (j, wj) in wv.iter().enumerate() {
            for (r, xr) in xv.iter().enumerate() {
                acc[j * TR + r] = _mm512_fmadd_ps(*xr, *wj, acc[j * TR + r]);
            }
        }
    };
    let full = k / 16 * 16;
    for t in (0..full).step_by(16) {
        // SAFETY: t + 16 ≤ k, inside every slice.
        let (xv, wv) = unsafe {
            (
                x.map(|s| _mm512_loadu_ps(s.as_ptr().add(t))),
                w.map(|s| _mm512_loadu_ps(s.as_ptr().add(t))),
            )
        };
        step(&mut acc, xv, wv);
    }
    if full < k {
        let m: __mmask16 = (1u32 << (k - full)) as u16 - 1;
        // SAFETY: the mask reads only the k − full values left in every slice.
        let (xv, wv) = unsafe {
            (
                x.map(|s| _mm512_maskz_loadu_ps(m, s.as_ptr().add(full))),
                w.map(|s| _mm512_maskz_loadu_ps(m, s.as_ptr().add(full))),
            )
        };
        step(&mut acc, xv, wv);
    }
    let sums = fold16(&acc);
    // SAFETY: `out` is TR × TO = 16 contiguous floats.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr().cast(), sums) };
}

/// Lane L of the result is the sum of the 16 lanes of v[(L % 4) · 4 + L / 4]: with
/// v[j · TR + r] for row r and output j, lane r · TO + j holds (r, j).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fold16(v: &[std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Halves, then quarters (of 128 bits) of pairs; then pairs and single lanes inside them.
    let h: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    let q: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (h[2 * i], h[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    let p: [__m512; 2] = std::array::from_fn(|i| {
        let (a, b) = (q[2 * i], q[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    });
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(p[0], p[1]),
        _mm512_shuffle_ps::<0xDD>(p[0], p[1]),
    )
}

/// Not built off x86-64: [`applies`] is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: &[&[f32]; TR], _: &[&[f32]; TO], _: &mut [[f32; TO]; TR]) {
    unreachable!("applies() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = b + Σ w·x in f64, a direct loop.
    fn reference(xs: &[f32], k: usize, w: &[f32], bias: &[f32]) -> Vec<f64> {
        let o = bias.len();
        xs.chunks_exact(k)
            .flat_map(|x| {
                (0..o).map(move |j| {
                    bias[j] as f64
                        + x.iter()
                            .zip(&w[j * k..(j + 1) * k])
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
            })
            .collect()
    }

    #[test]
    fn matches_f64_on_tails_of_rows_outputs_and_taps() {
        if !applies() {
            return;
        }
        let val = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5;
        // Rows past a multiple of 4 and of the 8-row block, outputs past a multiple of 4, taps
        // past a multiple of 16, single ones.
        for (rows, k, o) in [
            (13, 37, 45),
            (8, 1, 1),
            (3, 64, 32),
            (17, 100, 7),
            (1, 16, 6),
            (9, 48, 5),
        ] {
            let xs: Vec<f32> = (0..rows * k).map(val).collect();
            let w: Vec<f32> = (0..o * k).map(|i| val(i + 11)).collect();
            let b: Vec<f32> = (0..o).map(|i| val(i + 5)).collect();
            let got = linear_f32(&xs, k, &w, &b);
            let want = reference(&xs, k, &w, &b);
            assert_eq!(got.len(), want.len());
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - r).abs() < 1e-4,
                    "rows {rows} k {k} o {o}: y[{i}] = {g}, want {r}"
                );
            }
            // Every alignment of the input: rows on 64-byte boundaries (read in place when k is
            // a multiple of 16) and off them (copied a block at a time) give the same values.
            let mut shifted = vec![0f32; xs.len() + 16];
            for at in 0..16 {
                shifted[at..at + xs.len()].copy_from_slice(&xs);
                let moved = linear_f32(&shifted[at..at + xs.len()], k, &w, &b);
                assert_eq!(moved, got, "rows {rows} k {k} o {o}, input {at} floats on");
            }
            // A row's outputs do not depend on the rows around it.
            let last = &xs[(rows - 1) * k..];
            assert_eq!(linear_f32(last, k, &w, &b), got[(rows - 1) * o..]);
        }
    }
}
