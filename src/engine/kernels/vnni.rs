//! AVX-512 VNNI kernel (`vpdpbusd`).
//!
//! Runs where `is_x86_feature_detected!("avx512vnni")` holds; on other machines the tests
//! exercise the packing layout and the offset correction through the scalar emulation
//! `emulate`.
//!
//! Scheme: `vpdpbusd` multiplies *unsigned* bytes by signed bytes, summing 4 products
//! into each i32 lane without intermediate saturation. A is shifted to unsigned,
//! `a + 128 = a ^ 0x80 ∈ 0..=255`, and the excess removed at the end:
//! `Σ a·b = Σ (a+128)·b − 128·Σ_t b[j][t]`, with the per-column `128·Σ b` computed at
//! pack time. All sums wrap mod 2^32 like the reference, so the result is exact.
//! B is packed in 16-column panels holding, per k-quad, 16 columns × 4 bytes (one zmm);
//! the micro-kernel holds 16 zmm accumulators, a C tile of 8 rows × 2 panels (32 columns) or,
//! when B is one panel wide, 16 rows × 1 panel: `vpdpbusd` has a latency of several cycles and
//! two issue ports, so 8 independent sums (the 8 × 16 tile of before) left it waiting, and
//! with two panels each broadcast A quad feeds two of them. A rows are read as runs of
//! k-quads at fixed offsets from each row's start ([`Runs`]): one run for a plain row, one per
//! kernel row for a conv's patch read in place from a padded image.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One 512-bit vector of bytes, 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
struct V64([i8; 64]);

const ZERO: V64 = V64([0; 64]);

/// Rows per micro-kernel call when B has more than one panel (2 panels × 8 rows = 16
/// accumulators).
const MR: usize = 8;

/// Rows per micro-kernel call when B is one panel (16 columns or fewer): 16 accumulators.
const MR_ONE_PANEL: usize = 16;

/// Rows per block for `n` columns of B.
fn rows_per_block(n: usize) -> usize {
    if n <= 16 { MR_ONE_PANEL } else { MR }
}

/// B packed for [`gemm`]: 16-column panels of k-quads, plus the offset correction.
#[derive(Clone, Debug)]
pub(super) struct Packed {
    /// Panel `q` starts at vector `q * kq`.
    data: Vec<V64>,
    /// `128 · Σ_t B[j][t]` (wrapping) for each column, padded to a multiple of 16.
    corr: Vec<i32>,
    /// Number of k-quads, `ceil(k / 4)`.
    kq: usize,
}

impl Packed {
    /// Bytes held by the packed weights.
    pub(super) fn bytes(&self) -> usize {
        self.data.len() * 64 + self.corr.len() * 4
    }
}

/// Packs `b` (`n × k` row-major, `n, k ≥ 1`).
pub(super) fn pack(b: &[i8], n: usize, k: usize) -> Packed {
    let kq = k.div_ceil(4);
    let npanels = n.div_ceil(16);
    let mut data = vec![ZERO; npanels * kq];
    let mut corr = vec![0i32; npanels * 16];
    for j in 0..n {
        let row = &b[j * k..(j + 1) * k];
        let (panel, lane) = (j / 16, j % 16);
        for (t, &x) in row.iter().enumerate() {
            data[panel * kq + t / 4].0[lane * 4 + t % 4] = x;
        }
        let sum = row.iter().fold(0i32, |s, &x| s.wrapping_add(x as i32));
        corr[j] = sum.wrapping_mul(128);
    }
    Packed { data, corr, kq }
}

/// `m` rows cut into the fewest blocks of at most `mr`, their sizes differing by at most one
/// (28 rows in blocks of 8: four of 7, not 8 + 8 + 8 + 4, whose short block leaves the
/// accumulator chains waiting on `vpdpbusd`'s latency): (first row, rows) per block.
fn row_blocks(m: usize, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let blocks = m.div_ceil(mr);
    let (base, extra) = (m / blocks.max(1), m % blocks.max(1));
    (0..blocks).map(move |b| (b * base + b.min(extra), base + usize::from(b < extra)))
}

/// Row stride (bytes) of the unsigned A scratch block: `k` rounded up to 4.
fn astride(kq: usize) -> usize {
    kq * 4
}

/// Writes `a[start .. start + k] ^ 0x80` (i.e. `a + 128` as u8) into `dst`, padding
/// the k-quad tail with 0x80 (it meets zero-padded B, so any value would do).
fn shift_row(a: &[i8], start: usize, k: usize, dst: &mut [u8]) {
    for (d, &s) in dst.iter_mut().zip(&a[start..start + k]) {
        *d = (s as u8) ^ 0x80;
    }
    dst[k..].fill(0x80);
}

/// `c = A · Bᵀ` with `B` packed by [`pack`]; arguments validated by the caller.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn gemm(
    a: &[i8],
    m: usize,
    lda: usize,
    p: &Packed,
    n: usize,
    k: usize,
    c: &mut [i32],
) {
    let ks = astride(p.kq);
    let mr = rows_per_block(n);
    let mut abuf = vec![0u8; mr * ks];
    for (i0, rows) in row_blocks(m, mr) {
        for r in 0..rows {
            shift_row(a, (i0 + r) * lda, k, &mut abuf[r * ks..(r + 1) * ks]);
        }
        // SAFETY: AVX-512F/VNNI per this fn's contract; `abuf` holds `rows` rows of
        // `ks = 4·kq` bytes, read as one run.
        let runs = Runs::whole(p.kq);
        unsafe { gemm_rows(abuf.as_ptr(), ks, rows, &runs, p, n, &mut c[i0 * n..]) };
    }
}

/// Where the `4·kq` bytes of a shifted A row lie: `offsets.len()` runs of `quads` k-quads each,
/// run `j` at byte `offsets[j]` from the row's start (k order: run 0's bytes, then run 1's, …).
/// A row in one piece is one run at offset 0; a conv's patch row read in place from a padded
/// channels-last image is one run per kernel row.
#[derive(Clone, Copy, Debug)]
pub(super) struct Runs<'a> {
    /// Byte offset of each run from the row's start.
    pub offsets: &'a [usize],
    /// k-quads per run.
    pub quads: usize,
}

impl Runs<'static> {
    /// One run of `kq` quads at offset 0.
    pub(super) fn whole(kq: usize) -> Self {
        Runs {
            offsets: &[0],
            quads: kq,
        }
    }
}

impl Runs<'_> {
    /// Bytes readable from a row's start that the runs need.
    fn span(&self) -> usize {
        self.offsets.iter().max().map_or(0, |&o| o + 4 * self.quads)
    }
}

/// [`gemm`] on rows already shifted to unsigned (`a` holds `x ^ 0x80` bytes, row stride `lda`),
/// each row's k-quads laid out as `runs` says (the bytes of a run past `k` meet zero-padded B
/// and may hold anything). The kernel reads the rows in place: no copy of A.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 VNNI.
///
/// # Panics
/// If the runs do not hold `kq` quads, or `a` is shorter than `(m − 1)·lda` plus their span.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn gemm_shifted(
    a: &[i8],
    m: usize,
    lda: usize,
    runs: &Runs,
    p: &Packed,
    n: usize,
    c: &mut [i32],
) {
    assert_eq!(
        runs.offsets.len() * runs.quads,
        p.kq,
        "runs hold every k-quad"
    );
    assert!(
        m == 0 || a.len() >= (m - 1) * lda + runs.span(),
        "shifted rows too short"
    );
    // SAFETY: AVX-512F/VNNI per this fn's contract; the m rows have their runs readable at
    // stride lda (asserted length).
    unsafe { gemm_rows(a.as_ptr().cast(), lda, m, runs, p, n, c) };
}

/// `m` unsigned A rows (`ks` bytes apart, each laid out as `runs`) times every 16-column panel
/// of `p`, in blocks of [`rows_per_block`]`(n)` rows ([`row_blocks`]), two panels per kernel
/// call while two remain, into the C rows starting at `c` (row stride `n`). One call runs every
/// block, so the set-up of the kernels' row and panel offsets is made once per call: made per
/// block, it held about a fifth of this function's samples on a 16 → 64-channel 1×1 conv
/// (`perf annotate`), and running every block in one call took MobileNetV2's integer run from
/// 10.31 to 9.56 ms per 128 (one thread, min over 300 alternated runs).
///
/// # Safety
/// AVX-512F + VNNI; `a` valid for the rows as described; `runs` hold `p.kq` quads.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn gemm_rows(
    a: *const u8,
    ks: usize,
    m: usize,
    runs: &Runs,
    p: &Packed,
    n: usize,
    c: &mut [i32],
) {
    let kq = p.kq;
    for (i0, rows) in row_blocks(m, rows_per_block(n)) {
        let (a, c) = (a.wrapping_add(i0 * ks), &mut c[i0 * n..]);
        let mut q = 0;
        while 16 * q < n {
            let col0 = 16 * q;
            let two = n - col0 > 16;
            let ncols = (if two { 32 } else { 16 }).min(n - col0);
            assert!(col0 + (rows - 1) * n + ncols <= c.len());
            let tile = Tile {
                a,
                ks,
                runs: *runs,
                b: p.data[q * kq..].as_ptr(),
                kq,
                corr: p.corr[16 * q..].as_ptr(),
                c: c[col0..].as_mut_ptr(),
                ldc: n,
                ncols,
            };
            // SAFETY: per this fn's contract for A (row i0 < m); panels `q` (and `q + 1` when
            // two) hold `kq` vectors each, `corr` 16 values per panel from `16q`, and the C tile
            // lies inside `c` (asserted above).
            unsafe {
                if two {
                    kernel_rows_2(rows, &tile)
                } else {
                    kernel_rows_1(rows, &tile)
                }
            };
            q += if two { 2 } else { 1 };
        }
    }
}

/// [`kernel`] over one panel for `rows` ≤ 16 rows.
///
/// # Safety
/// As [`kernel`].
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel_rows_1(rows: usize, t: &Tile) {
    // SAFETY: per this fn's contract.
    unsafe {
        match rows {
            16 => kernel::<16, 1>(t),
            15 => kernel::<15, 1>(t),
            14 => kernel::<14, 1>(t),
            13 => kernel::<13, 1>(t),
            12 => kernel::<12, 1>(t),
            11 => kernel::<11, 1>(t),
            10 => kernel::<10, 1>(t),
            9 => kernel::<9, 1>(t),
            8 => kernel::<8, 1>(t),
            7 => kernel::<7, 1>(t),
            6 => kernel::<6, 1>(t),
            5 => kernel::<5, 1>(t),
            4 => kernel::<4, 1>(t),
            3 => kernel::<3, 1>(t),
            2 => kernel::<2, 1>(t),
            _ => kernel::<1, 1>(t),
        }
    }
}

/// [`kernel`] over two panels for `rows` ≤ 8 rows.
///
/// # Safety
/// As [`kernel`].
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel_rows_2(rows: usize, t: &Tile) {
    // SAFETY: per this fn's contract.
    unsafe {
        match rows {
            8 => kernel::<8, 2>(t),
            7 => kernel::<7, 2>(t),
            6 => kernel::<6, 2>(t),
            5 => kernel::<5, 2>(t),
            4 => kernel::<4, 2>(t),
            3 => kernel::<3, 2>(t),
            2 => kernel::<2, 2>(t),
            _ => kernel::<1, 2>(t),
        }
    }
}

/// Pointers for one micro-kernel call.
struct Tile<'a> {
    /// Unsigned A block, row stride `ks` bytes, each row's quads laid out as `runs`.
    a: *const u8,
    ks: usize,
    runs: Runs<'a>,
    /// First panel's start (one vector per k-quad of the runs); the next panel `kq` vectors on.
    b: *const V64,
    kq: usize,
    /// 16 correction values per panel.
    corr: *const i32,
    /// Top-left of the C tile, row stride `ldc`, `ncols ≤ 16 · P` valid columns.
    c: *mut i32,
    ldc: usize,
    ncols: usize,
}

/// `R` rows × `P` panels (16·P columns): `vpdpbusd` over k-quads, then subtract the correction.
///
/// # Safety
/// AVX-512F + VNNI available; `t.a` valid for `R` rows at stride `t.ks`, each with its runs
/// readable; `t.b` for `P` panels of one vector per quad of the runs, `kq` apart; `t.corr` for
/// 16·P i32; `t.c` for `R` rows of `t.ncols` i32 at stride `t.ldc`.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn kernel<const R: usize, const P: usize>(t: &Tile) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    let mut b = t.b;
    for &off in t.runs.offsets {
        let a = t.a.wrapping_add(off);
        for q in 0..t.runs.quads {
            // SAFETY: one vector per quad of the runs in each of the P panels (`kq` apart);
            // row r < R has bytes off + 4q .. off + 4q + 4 readable, per this fn's contract.
            unsafe {
                let bv: [__m512i; P] =
                    std::array::from_fn(|p| _mm512_load_si512(b.add(p * t.kq).cast()));
                b = b.add(1);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let x =
                        _mm512_set1_epi32(a.add(r * t.ks + 4 * q).cast::<i32>().read_unaligned());
                    for (acc_rp, bp) in acc_r.iter_mut().zip(&bv) {
                        *acc_rp = _mm512_dpbusd_epi32(*acc_rp, x, *bp);
                    }
                }
            }
        }
    }
    // SAFETY: 16 correction values per panel; row r < R of C holds `ncols` i32 from `t.c`.
    unsafe {
        for p in 0..P {
            let cols = t.ncols.saturating_sub(16 * p).min(16);
            let mask: __mmask16 = if cols == 16 { !0 } else { (1u16 << cols) - 1 };
            let cv = _mm512_loadu_si512(t.corr.add(16 * p).cast());
            for (r, acc_r) in acc.iter().enumerate() {
                let dst = t.c.add(r * t.ldc + 16 * p);
                let v = _mm512_sub_epi32(acc_r[p], cv);
                // A whole panel stores without a mask (a masked store costs more on Zen 4).
                if cols == 16 {
                    _mm512_storeu_si512(dst.cast(), v);
                } else {
                    _mm512_mask_storeu_epi32(dst.cast(), mask, v);
                }
            }
        }
    }
}

/// Scalar emulation of [`gemm`] on the same packed layout and unsigned-shift
/// correction (what `vpdpbusd` computes lane by lane). Lets the layout be tested on
/// machines without AVX-512 VNNI.
#[cfg(test)]
pub(super) fn emulate(
    a: &[i8],
    m: usize,
    lda: usize,
    p: &Packed,
    n: usize,
    k: usize,
    c: &mut [i32],
) {
    let kq = p.kq;
    let ks = astride(kq);
    let mut arow = vec![0u8; ks];
    for i in 0..m {
        shift_row(a, i * lda, k, &mut arow);
        for j in 0..n {
            let (q, lane) = (j / 16, j % 16);
            let mut acc = 0i32;
            for t in 0..kq {
                let bv = &p.data[q * kq + t].0[lane * 4..lane * 4 + 4];
                for u in 0..4 {
                    acc = acc.wrapping_add(arow[4 * t + u] as i32 * bv[u] as i32);
                }
            }
            c[i * n + j] = acc.wrapping_sub(p.corr[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MR, MR_ONE_PANEL, row_blocks};

    #[test]
    fn row_blocks_cover_the_rows_in_the_fewest_even_blocks() {
        for (m, mr) in (0..=100).flat_map(|m| [(m, MR), (m, MR_ONE_PANEL)]) {
            let blocks: Vec<(usize, usize)> = row_blocks(m, mr).collect();
            assert_eq!(blocks.len(), m.div_ceil(mr), "m {m}");
            let mut next = 0;
            for &(start, rows) in &blocks {
                assert_eq!(start, next, "m {m}: contiguous");
                assert!((1..=mr).contains(&rows), "m {m}: {rows} rows");
                next += rows;
            }
            assert_eq!(next, m);
            let sizes = blocks.iter().map(|b| b.1);
            let (lo, hi) = (sizes.clone().min(), sizes.max());
            assert!(hi.zip(lo).is_none_or(|(h, l)| h - l <= 1), "m {m}: uneven");
        }
    }
}
