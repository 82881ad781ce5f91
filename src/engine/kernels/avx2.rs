//! AVX2 kernel: exact i8 GEMM through i16 `vpmaddwd`.
//!
//! Scheme (outer-product register tiling, BLIS style):
//! * B is widened to i16 once at pack time and stored in column panels of 16 (or 8 for
//!   a narrow last panel) columns. For each k-pair `p` a panel holds, per column, the
//!   two values `(B[j][2p], B[j][2p+1])`, so one 256-bit vector covers 8 columns × 2 k.
//!   k is padded to even and columns to the panel width with zeros.
//! * Per call, blocks of 12 rows of A are widened into an aligned i16 scratch buffer
//!   (double-buffered: block `b+1` is widened before block `b` is consumed, so the
//!   broadcasts never wait on store forwarding; A's tail bytes are read only inside `a`,
//!   never past its end); each `(A[i][2p], A[i][2p+1])` pair is then
//!   broadcast (`vpbroadcastd`) and `vpmaddwd`-ed against the panel vectors. The i16
//!   products `≤ 2^14` and their pair sums `≤ 2^15` fit in i32 exactly, so the result is
//!   bit-identical to the i32 triple loop for every input, -128 included.
//! * The micro-kernel keeps a 6×16 tile of C in 12 ymm accumulators; a narrow panel
//!   takes 12×8 tiles when k ≤ 32 (conv1-like shapes: the A row stride is then a
//!   compile-time constant, so one base register addresses all 12 rows) and 6×8
//!   otherwise. C is written once per tile, with no horizontal reductions.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One 256-bit vector worth of i16, 32-byte aligned so panel loads never split cache lines.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug)]
struct V32([i16; 16]);

const ZERO: V32 = V32([0; 16]);

/// Rows of A widened per block (each panel is then swept by two 6-row micro-kernels, or
/// one 12-row one).
const ROW_BLOCK: usize = 12;
/// Rows per micro-kernel call.
const MR: usize = 6;

/// One column panel of packed B.
#[derive(Clone, Copy, Debug)]
struct Panel {
    /// First column of B (row of the `n × k` input) in this panel.
    col0: usize,
    /// Valid columns (≤ 16 for wide panels, ≤ 8 for narrow ones).
    ncols: usize,
    /// 16-wide (two vectors per k-pair) or 8-wide (one vector per k-pair).
    wide: bool,
    /// Offset into `Packed::data`, in vectors.
    offset: usize,
}

/// B packed for [`gemm`]: i16 k-pair-interleaved column panels.
#[derive(Clone, Debug)]
pub(super) struct Packed {
    data: Vec<V32>,
    panels: Vec<Panel>,
    /// Number of k-pairs, `ceil(k / 2)`.
    kp: usize,
}

impl Packed {
    /// Bytes held by the packed weights.
    pub(super) fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<V32>()
    }
}

/// Packs `b` (`n × k` row-major, `n, k ≥ 1`). Plain Rust: runs once per layer.
pub(super) fn pack(b: &[i8], n: usize, k: usize) -> Packed {
    let kp = k.div_ceil(2);
    let mut panels = Vec::new();
    let mut col0 = 0;
    let mut offset = 0;
    while col0 < n {
        let rem = n - col0;
        let wide = rem > 8;
        let ncols = rem.min(if wide { 16 } else { 8 });
        panels.push(Panel {
            col0,
            ncols,
            wide,
            offset,
        });
        offset += kp * if wide { 2 } else { 1 };
        col0 += ncols;
    }
    let mut data = vec![ZERO; offset];
    for pl in &panels {
        let vecs_per_p = if pl.wide { 2 } else { 1 };
        for c in 0..pl.ncols {
            let row = &b[(pl.col0 + c) * k..(pl.col0 + c + 1) * k];
            let (v, lane) = (c / 8, 2 * (c % 8));
            for p in 0..kp {
                let dst = &mut data[pl.offset + p * vecs_per_p + v].0;
                dst[lane] = row[2 * p] as i16;
                dst[lane + 1] = row.get(2 * p + 1).map_or(0, |&x| x as i16);
            }
        }
    }
    Packed { data, panels, kp }
}

/// Calls `$f::<R, 0>($tile)` (runtime A stride) for the listed `R` equal to `$mr`.
macro_rules! seq_dispatch {
    ($f:ident, $mr:expr, $tile:expr, $($r:literal),+) => {
        match $mr {
            $($r => $f::<$r, 0>($tile),)+
            _ => unreachable!(),
        }
    };
}

/// `c = A · Bᵀ` with `B` packed by [`pack`]. Arguments are validated by the caller
/// (`m, n, k ≥ 1`, `lda ≥ k`, `a.len() ≥ (m-1)·lda + k`, `c.len() == m·n`).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemm(
    a: &[i8],
    m: usize,
    lda: usize,
    p: &Packed,
    n: usize,
    k: usize,
    c: &mut [i32],
) {
    debug_assert!(m >= 1 && n >= 1 && k >= 1 && lda >= k);
    debug_assert!(a.len() >= (m - 1) * lda + k && c.len() == m * n);
    // SAFETY: AVX2 per this fn's contract; the caller checked the rows as `Rows::Plain` needs.
    unsafe { gemm_rows(a, m, Rows::Plain { lda }, p, n, k, c) }
}

/// Where a GEMM's rows of A lie in `a`.
#[derive(Clone, Copy, Debug)]
pub(super) enum Rows<'a> {
    /// Row i is `a[i · lda .. i · lda + k]`.
    Plain { lda: usize },
    /// Row i is the concatenation of `a[i · lda + off .. i · lda + off + len]` over `offsets`
    /// (a conv's patch row read in place from a padded channels-last image); `len` is a
    /// multiple of 8.
    Runs {
        lda: usize,
        offsets: &'a [usize],
        len: usize,
    },
}

/// [`gemm`] on rows read in runs (see [`Rows::Runs`]): `offsets.len() · len == k`, `len` a
/// multiple of 8, and every run of every row inside `a`.
///
/// # Panics
/// If the runs do not hold k values, `len` is not a multiple of 8 or a run leaves `a`.
///
/// # Safety
/// The CPU must support AVX2; `m, n, k ≥ 1`, `c.len() == m·n`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gemm_runs(
    a: &[i8],
    m: usize,
    (lda, offsets, len): (usize, &[usize], usize),
    p: &Packed,
    n: usize,
    c: &mut [i32],
) {
    let k = offsets.len() * len;
    assert!(len % 8 == 0 && k >= 1, "runs of whole 8-code chunks");
    let span = offsets.iter().max().map_or(0, |&o| o + len);
    assert!(
        (m - 1) * lda + span <= a.len(),
        "every run inside the image"
    );
    let rows = Rows::Runs { lda, offsets, len };
    // SAFETY: AVX2 per this fn's contract; the runs were checked just above.
    unsafe { gemm_rows(a, m, rows, p, n, k, c) }
}

/// [`gemm`] over rows laid out as `rows` says.
///
/// # Safety
/// AVX2; `m, n, k ≥ 1`, `c.len() == m·n`; for `Rows::Plain`, `lda ≥ k` and
/// `a.len() ≥ (m−1)·lda + k`; for `Rows::Runs`, every run of every row inside `a`.
#[target_feature(enable = "avx2")]
unsafe fn gemm_rows(
    a: &[i8],
    m: usize,
    rows_at: Rows,
    p: &Packed,
    n: usize,
    k: usize,
    c: &mut [i32],
) {
    // Row stride of the widened scratch block, in vectors; covers all kp pairs.
    let kv = k.div_ceil(16);
    // Two widened blocks: the next one is widened before the current one is consumed, so
    // the micro-kernel's broadcast loads hit committed L1 lines instead of waiting on
    // store-to-load forwarding of the just-written vectors.
    let mut bufs = vec![ZERO; 2 * ROW_BLOCK * kv];
    let (mut abuf, mut next) = bufs.split_at_mut(ROW_BLOCK * kv);
    widen(a, rows_at, (0, ROW_BLOCK.min(m)), k, abuf);
    let kp = p.kp;
    let mut i0 = 0;
    while i0 < m {
        let rows = ROW_BLOCK.min(m - i0);
        if i0 + rows < m {
            widen(
                a,
                rows_at,
                (i0 + rows, ROW_BLOCK.min(m - i0 - rows)),
                k,
                next,
            );
        }
        for pl in &p.panels {
            let mut r = 0;
            while r < rows {
                // Narrow panels of short rows (k ≤ 32) take all 12 rows at once with a
                // compile-time A stride; everything else goes 6 rows at a time.
                let full12 = !pl.wide && kv <= 2 && rows - r == ROW_BLOCK;
                let mr = if full12 { ROW_BLOCK } else { MR.min(rows - r) };
                let coff = (i0 + r) * n + pl.col0;
                // In bounds: the tile's last element is
                // (i0+r+mr-1)·n + col0 + ncols - 1 < m·n = c.len().
                debug_assert!(coff + (mr - 1) * n + pl.ncols <= c.len());
                let tile = Tile {
                    a: abuf[r * kv..].as_ptr(),
                    astride: kv * 8,
                    b: p.data[pl.offset..].as_ptr(),
                    kp,
                    c: c[coff..].as_mut_ptr(),
                    ldc: n,
                    ncols: pl.ncols,
                };
                // SAFETY: AVX2 is enabled (this fn's contract); `tile` points into
                // `abuf` (mr rows of kv ≥ kp/8 vectors each), into `p.data` (kp or 2·kp
                // vectors from `offset`, as laid out by `pack`) and into `c` (checked above).
                unsafe {
                    match (pl.wide, full12, kv) {
                        (false, true, 1) => kern8::<12, 8>(&tile),
                        (false, true, _) => kern8::<12, 16>(&tile),
                        (false, false, _) => seq_dispatch!(kern8, mr, &tile, 1, 2, 3, 4, 5, 6),
                        (true, _, _) => seq_dispatch!(kern16, mr, &tile, 1, 2, 3, 4, 5, 6),
                    }
                }
                r += mr;
            }
        }
        std::mem::swap(&mut abuf, &mut next);
        i0 += rows;
    }
}

/// Widens rows `i0 .. i0 + rows` of A, laid out as `at` says, into `dst` (see [`widen_block`]).
#[target_feature(enable = "avx2")]
fn widen(a: &[i8], at: Rows, (i0, rows): (usize, usize), k: usize, dst: &mut [V32]) {
    match at {
        Rows::Plain { lda } => widen_block(a, i0, rows, lda, k, dst),
        Rows::Runs { lda, offsets, len } => widen_runs(a, (i0, rows), (lda, offsets, len), dst),
    }
}

/// Widens rows `i0 .. i0 + rows` read in runs (`offsets`, `len` a multiple of 8, all inside
/// `a`: checked by [`gemm_runs`]) into `dst`, 16 codes at a time (then 8), run j of a row at
/// i16 j · len.
#[target_feature(enable = "avx2")]
fn widen_runs(
    a: &[i8],
    (i0, rows): (usize, usize),
    (lda, offsets, len): (usize, &[usize], usize),
    dst: &mut [V32],
) {
    let kv = dst.len() / ROW_BLOCK;
    let out = dst.as_mut_ptr().cast::<i16>();
    for r in 0..rows {
        let row = (i0 + r) * lda;
        for (j, &off) in offsets.iter().enumerate() {
            let src = &a[row + off..row + off + len];
            let d = r * 16 * kv + j * len;
            // 16 codes per step, then the 8 left over.
            let wide = src.chunks_exact(16);
            let tail = wide.remainder();
            for (ch, bytes) in wide.enumerate() {
                // SAFETY: `bytes` holds 16 codes; the 16 i16 land at d + 16ch, and j·len +
                // 16ch + 16 ≤ k ≤ 16kv, inside row r of `dst`.
                unsafe {
                    let x = _mm_loadu_si128(bytes.as_ptr().cast());
                    _mm256_storeu_si256(out.add(d + 16 * ch).cast(), _mm256_cvtepi8_epi16(x));
                }
            }
            if !tail.is_empty() {
                // SAFETY: `tail` holds 8 codes (len is a multiple of 8); they land at the end
                // of the run, inside row r of `dst` as above.
                unsafe {
                    let x = _mm_loadl_epi64(tail.as_ptr().cast());
                    let at = out.add(d + len - 8);
                    _mm_storeu_si128(at.cast(), _mm_cvtepi8_epi16(x));
                }
            }
        }
    }
}

/// Widens rows `i0 .. i0 + rows` of A into `dst` (row stride `kv = dst.len() / ROW_BLOCK`
/// vectors of 16 i16). Bytes of a row's last vector past `k` may hold whatever follows in
/// `a` (they only meet zero-padded B); nothing at or past `a.len()` is read.
#[target_feature(enable = "avx2")]
fn widen_block(a: &[i8], i0: usize, rows: usize, lda: usize, k: usize, dst: &mut [V32]) {
    let kv = dst.len() / ROW_BLOCK;
    if (i0 + rows - 1) * lda + 16 * kv <= a.len() {
        // Common case: every 16-byte chunk of every row lies inside `a`.
        let src = a.as_ptr();
        let out = dst.as_mut_ptr();
        for r in 0..rows {
            for ch in 0..kv {
                // SAFETY: `(i0+r)·lda + 16ch + 16 ≤ (i0+rows-1)·lda + 16kv ≤ a.len()`;
                // `r·kv + ch < ROW_BLOCK·kv = dst.len()` and `V32` is 32-byte aligned.
                unsafe {
                    let x = _mm_loadu_si128(src.add((i0 + r) * lda + 16 * ch).cast());
                    _mm256_store_si256(out.add(r * kv + ch).cast(), _mm256_cvtepi8_epi16(x));
                }
            }
        }
    } else {
        for r in 0..rows {
            widen_row(a, (i0 + r) * lda, k, &mut dst[r * kv..(r + 1) * kv]);
        }
    }
}

/// Widens `a[start .. start + k]` into `dst` (16 i16 per vector), reading whole 16-byte
/// chunks where they lie inside `a` and copying the tail otherwise.
#[target_feature(enable = "avx2")]
fn widen_row(a: &[i8], start: usize, k: usize, dst: &mut [V32]) {
    for (ch, d) in dst.iter_mut().enumerate() {
        let off = start + 16 * ch;
        let x = if off + 16 <= a.len() {
            // SAFETY: the 16 bytes `a[off .. off + 16]` are inside `a`.
            unsafe { _mm_loadu_si128(a.as_ptr().add(off).cast()) }
        } else {
            let mut tmp = [0i8; 16];
            let len = 16.min(k - 16 * ch);
            tmp[..len].copy_from_slice(&a[off..off + len]);
            // SAFETY: `tmp` is 16 bytes.
            unsafe { _mm_loadu_si128(tmp.as_ptr().cast()) }
        };
        // SAFETY: `d` is a 32-byte aligned, 32-byte `V32`.
        unsafe { _mm256_store_si256((d as *mut V32).cast(), _mm256_cvtepi8_epi16(x)) };
    }
}

/// Pointers for one micro-kernel call.
struct Tile {
    /// Row 0 of the widened A block; row `r` starts `r * astride` i32 pairs later.
    a: *const V32,
    /// Row stride of the A block in i16-pairs (i32 units).
    astride: usize,
    /// Panel start.
    b: *const V32,
    /// k-pairs to accumulate.
    kp: usize,
    /// Top-left of the C tile; row stride `ldc`.
    c: *mut i32,
    ldc: usize,
    /// Valid columns of the tile.
    ncols: usize,
}

/// R×16 micro-kernel on a wide panel. `AS` is the A row stride in i32 pairs when known at
/// compile time (one base pointer with constant displacements), or 0 to use `t.astride`.
///
/// # Safety
/// AVX2 available; `t.a` valid for `R` rows of `t.kp` i32 pairs at stride `t.astride`
/// (which `AS` must equal when non-zero), `t.b` for `2·t.kp` vectors, `t.c` for `R` rows
/// of `t.ncols ≤ 16` i32 at stride `t.ldc`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn kern16<const R: usize, const AS: usize>(t: &Tile) {
    debug_assert!(AS == 0 || AS == t.astride);
    let astride = if AS == 0 { t.astride } else { AS };
    let mut acc0 = [_mm256_setzero_si256(); R];
    let mut acc1 = [_mm256_setzero_si256(); R];
    let a = t.a.cast::<i32>();
    let b = t.b.cast::<__m256i>();
    for p in 0..t.kp {
        // SAFETY: p < kp, so vectors 2p and 2p+1 are inside the panel; the A pair of
        // row r is at r·astride + p < R·astride (per the contract).
        unsafe {
            let b0 = _mm256_load_si256(b.add(2 * p));
            let b1 = _mm256_load_si256(b.add(2 * p + 1));
            for r in 0..R {
                let x = _mm256_set1_epi32(a.add(r * astride + p).read());
                acc0[r] = _mm256_add_epi32(acc0[r], _mm256_madd_epi16(x, b0));
                acc1[r] = _mm256_add_epi32(acc1[r], _mm256_madd_epi16(x, b1));
            }
        }
    }
    for r in 0..R {
        // SAFETY: row r of the C tile holds `ncols` writable i32 (contract).
        unsafe {
            let dst = t.c.add(r * t.ldc);
            if t.ncols == 16 {
                _mm256_storeu_si256(dst.cast(), acc0[r]);
                _mm256_storeu_si256(dst.add(8).cast(), acc1[r]);
            } else {
                let mut tmp = [0i32; 16];
                _mm256_storeu_si256(tmp.as_mut_ptr().cast(), acc0[r]);
                _mm256_storeu_si256(tmp.as_mut_ptr().add(8).cast(), acc1[r]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, t.ncols);
            }
        }
    }
}

/// R×8 micro-kernel on a narrow panel (`AS` as in [`kern16`]).
///
/// # Safety
/// As [`kern16`], with `t.b` valid for `t.kp` vectors and `t.ncols ≤ 8`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn kern8<const R: usize, const AS: usize>(t: &Tile) {
    debug_assert!(AS == 0 || AS == t.astride);
    let astride = if AS == 0 { t.astride } else { AS };
    let mut acc = [_mm256_setzero_si256(); R];
    let a = t.a.cast::<i32>();
    let b = t.b.cast::<__m256i>();
    for p in 0..t.kp {
        // SAFETY: as in `kern16`, with one vector per k-pair.
        unsafe {
            let b0 = _mm256_load_si256(b.add(p));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32(a.add(r * astride + p).read());
                *acc_r = _mm256_add_epi32(*acc_r, _mm256_madd_epi16(x, b0));
            }
        }
    }
    for (r, v) in acc.iter().enumerate() {
        // SAFETY: row r of the C tile holds `ncols` writable i32 (contract).
        unsafe {
            let dst = t.c.add(r * t.ldc);
            if t.ncols == 8 {
                _mm256_storeu_si256(dst.cast(), *v);
            } else {
                let mut tmp = [0i32; 8];
                _mm256_storeu_si256(tmp.as_mut_ptr().cast(), *v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, t.ncols);
            }
        }
    }
}
