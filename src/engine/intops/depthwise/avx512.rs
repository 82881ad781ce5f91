//! The AVX-512 kernel (F, BW, VL, VNNI `vpdpbusd`, VBMI `vpermt2b`/`vpermb`).
//!
//! Per input channel plane, every grid point (see [`Grid`]) of every row phase gets one u8
//! quad per 4 kernel columns: the padded input at columns sw·κ + kx·dw, kx = 4q..4q+4, as
//! x + 128 (padding: z_x + 128), built with one byte permute per 16 points straight from the
//! input rows. Output grid point j then takes, per kernel row ky and quad q, the quad at
//! j + ⌊ky·dh / sh⌋·pg of row phase (ky·dh) mod sh: 16 consecutive outputs are one load and
//! one `vpdpbusd` against the broadcast 4 weights (a 3×3 kernel: 3 per 16 outputs). The +128
//! comes out as (128 + z_x)·Σw folded into the bias: Σ w(x − z_x) = Σ w(x + 128) −
//! (128 + z_x)·Σ w, exactly, wrapping like the direct loop. The grid pitch is rounded up to
//! whole cache lines where that wastes little, so that the loads are aligned.
//!
//! Requantization, 64 outputs at a time: the channel's verified f32 line (fma, a round-down
//! conversion, its exceptions patched), else its f64 line, else the fixed-point path; packed
//! to i8 with saturation, clamped, and one byte permute puts the valid points (ox < ow) in
//! output order for a single store.

use super::line::{Line, Line32};
use super::{Grid, GroupConv};
use crate::engine::im2col::ConvGeom;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Whether this CPU runs the kernel (detected once).
pub(super) fn supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vbmi")
    })
}

/// The weights as `vpdpbusd` operands.
#[derive(Debug, Clone)]
pub(super) struct Quads {
    /// [out, in/groups, kh, nq] words of 4 signed bytes (kernel columns 4q..4q+4, 0 past kw).
    w: Vec<i32>,
    /// Per output channel: bias − (128 + z_x)·Σ w (wrapping).
    acc0: Vec<i32>,
    /// Quads per kernel row, ⌈kw / 4⌉.
    nq: usize,
    kernel: (usize, usize),
    /// The input zero point (in i8 range).
    z: i8,
}

impl Quads {
    /// Packs centred weights `cw` ([out, in/groups, kh, kw]) with biases `bias` for input zero
    /// point `z`, if every weight fits in i8 and `z` does.
    pub(super) fn new(
        cw: &[i16],
        bias: &[i32],
        out: usize,
        kernel: (usize, usize),
        z: i32,
    ) -> Option<Self> {
        let (kh, kw) = kernel;
        let z = i8::try_from(z).ok()?;
        if out == 0 || kh * kw == 0 || !cw.len().is_multiple_of(out * kh * kw) {
            return None;
        }
        let w8: Vec<i8> = cw
            .iter()
            .map(|&v| i8::try_from(v).ok())
            .collect::<Option<_>>()?;
        let nq = kw.div_ceil(4);
        let mut w = Vec::with_capacity(w8.len() / kw * nq);
        for row in w8.chunks_exact(kw) {
            for q in 0..nq {
                let b: [u8; 4] = std::array::from_fn(|t| *row.get(4 * q + t).unwrap_or(&0) as u8);
                w.push(i32::from_le_bytes(b));
            }
        }
        let cols = cw.len() / out;
        let off = 128 + z as i32;
        let acc0 = (0..out)
            .map(|oc| {
                let sum = cw[oc * cols..(oc + 1) * cols]
                    .iter()
                    .fold(0i32, |s, &v| s.wrapping_add(v as i32));
                bias[oc].wrapping_sub(off.wrapping_mul(sum))
            })
            .collect();
        Some(Quads {
            w,
            acc0,
            nq,
            kernel,
            z,
        })
    }

    /// Whether geometry `g` suits the kernel: one 64-byte load must cover the input bytes of
    /// 16 grid points (sw·15 + (kw − 1)·dw < 64).
    pub(super) fn fits(&self, g: &ConvGeom) -> bool {
        g.oh > 0
            && g.ow > 0
            && g.kernel == self.kernel
            && g.stride.1 * 15 + (self.kernel.1 - 1) * g.dilation.1 < 64
    }
}

/// One 16-point chunk of a grid row: where its input bytes start in the row, which of them
/// to load, and per quad the byte permute (64 = padding).
struct Chunk {
    base: usize,
    load: u64,
    idx: Vec<[u8; 64]>,
}

/// Everything the kernel needs for one geometry.
struct Layout {
    grid: Grid,
    /// Input plane width and height.
    w: usize,
    h: usize,
    /// i32 words per quad buffer (one per input channel of the group, row phase and quad).
    hlen: usize,
    chunks: Vec<Chunk>,
    /// The grid rows holding input rows, in grid order: (word offset of the grid row in the
    /// first quad buffer of its row phase, byte offset of the input row in the plane).
    rows: Vec<(usize, usize)>,
    /// Per row phase followed by padding rows: (phase, word offset of the first of them).
    repairs: Vec<(usize, usize)>,
    /// Per block of 4 output vectors (64 grid points): where in the plane its first valid
    /// (ox < ow) point goes, and the byte permute taking the valid points of the packed block
    /// (see [`pack4`]) to the front, in order.
    blocks: Vec<(usize, [u8; 64])>,
    /// Per tap [in/groups, kh, nq]: its quad buffer and grid offset, as one word offset.
    taps: Vec<usize>,
}

impl Layout {
    fn new(q: &Quads, g: &ConvGeom, cg: usize) -> Self {
        // A pitch of whole cache lines keeps every quad load aligned, worth a few wasted
        // points per row (up to 1/8).
        let mut grid = Grid::new(g);
        let pg16 = grid.pg.next_multiple_of(16);
        if pg16 * 8 <= grid.pg * 9 {
            grid.pg = pg16;
        }
        let (kh, kw) = q.kernel;
        let nv = grid.points().div_ceil(16);
        let max_off = (0..kh).map(|ky| grid.row_tap(ky).1).max().unwrap_or(0);
        let hlen = ((grid.rg * grid.pg).max(max_off + nv.next_multiple_of(4) * 16) + 16)
            .next_multiple_of(16);
        let chunks = (0..grid.pg.div_ceil(16))
            .map(|k| chunk(&grid, g.w, kw, q.nq, k))
            .collect();
        let blocks = blocks(&grid, nv.div_ceil(4));
        let (rows, repairs) = rows(&grid, (g.h, g.w), hlen, q.nq);
        let mut taps = Vec::with_capacity(cg * kh * q.nq);
        for icg in 0..cg {
            for ky in 0..kh {
                let (phase, off) = grid.row_tap(ky);
                for qq in 0..q.nq {
                    taps.push(((icg * grid.sh + phase) * q.nq + qq) * hlen + off);
                }
            }
        }
        Layout {
            grid,
            w: g.w,
            h: g.h,
            hlen,
            chunks,
            rows,
            repairs,
            blocks,
            taps,
        }
    }
}

/// The `n` blocks of 64 grid points: where each one's valid points go and the byte permute
/// gathering them (see [`Layout`]).
fn blocks(grid: &Grid, n: usize) -> Vec<(usize, [u8; 64])> {
    let mut at = 0usize;
    let blocks = (0..n)
        .map(|blk| {
            let mut idx = [0u8; 64];
            let first = at;
            for j in 64 * blk..64 * (blk + 1) {
                if j < grid.points() && j % grid.pg < grid.ow {
                    // Point j is lane j % 16 of vector (j / 16) % 4, packed at this byte.
                    let (u, e) = ((j / 16) % 4, j % 16);
                    idx[at - first] = (16 * (e / 4) + 4 * u + e % 4) as u8;
                    at += 1;
                }
            }
            (first, idx)
        })
        .collect();
    assert_eq!(at, grid.oh * grid.ow, "one valid point per output");
    blocks
}

/// The grid rows holding input rows of a plane [h, w] with quad buffers of `hlen` words,
/// `nq` per row phase (see [`Layout`]), and per row phase followed by padding rows, (phase,
/// word offset of the first of them).
fn rows(grid: &Grid, (h, w): (usize, usize), hlen: usize, nq: usize) -> RowPlan {
    let input_row = |phase: usize, rho: usize| {
        (grid.sh * rho + phase)
            .checked_sub(grid.pt)
            .filter(|&r| r < h)
    };
    let mut rows = Vec::new();
    for rho in 0..grid.rg {
        for phase in 0..grid.sh {
            if let Some(r) = input_row(phase, rho) {
                rows.push((phase * nq * hlen + rho * grid.pg, r * w));
            }
        }
    }
    let repairs = (0..grid.sh)
        .filter_map(|phase| {
            let last = (0..grid.rg)
                .rev()
                .find(|&rho| input_row(phase, rho).is_some())?;
            (last + 1 < grid.rg).then_some((phase, (last + 1) * grid.pg))
        })
        .collect();
    (rows, repairs)
}

/// Where the input rows go among the quads, and where padding rows need restoring.
type RowPlan = (Vec<(usize, usize)>, Vec<(usize, usize)>);

/// Chunk `k` (grid points 16k..16k+16) of a grid row of input width `w`.
fn chunk(grid: &Grid, w: usize, kw: usize, nq: usize, k: usize) -> Chunk {
    let first = (grid.sw * 16 * k) as isize - grid.pl as isize;
    let base = first.clamp(0, w as isize) as usize;
    let count = (w - base).min(64);
    let load = if count == 64 { !0 } else { (1u64 << count) - 1 };
    let idx = (0..nq)
        .map(|q| {
            std::array::from_fn(|b| {
                let (l, kx) = (b / 4, 4 * q + b % 4);
                let c = (grid.sw * (16 * k + l) + kx * grid.dw) as isize - grid.pl as isize;
                if kx < kw && (0..w as isize).contains(&c) {
                    let i = c as usize - base;
                    debug_assert!(i < 64, "the load covers the chunk");
                    i as u8
                } else {
                    64
                }
            })
        })
        .collect();
    Chunk { base, load, idx }
}

/// Runs `conv` (packed as `q`) on `n` samples of `x` ([n, g.c, g.h, g.w]) to
/// [n, out, oh, ow].
///
/// # Safety
/// The CPU must support the features [`supported`] checks, `q.fits(g)` must hold and `x` must
/// hold at least n·c·h·w codes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub(super) unsafe fn run(conv: &GroupConv, q: &Quads, x: &[i8], n: usize, g: &ConvGeom) -> Vec<i8> {
    let (cg, og) = (g.c / conv.groups, conv.out / conv.groups);
    let lay = Layout::new(q, g, cg);
    let (plane, opix) = (g.h * g.w, g.out_pixels());
    let pad = i32::from_le_bytes([(q.z as u8) ^ 0x80; 4]);
    let gsize = lay.grid.sh * q.nq * lay.hlen;
    let hsize = cg * gsize;
    let mut hvec = vec![pad; hsize + 16];
    // Quad buffers start on a cache line (hlen is a multiple of 16 words).
    let start = hvec.as_ptr().align_offset(64).min(16);
    let hbuf = &mut hvec[start..start + hsize];
    let total = n * conv.out * opix;
    // 64 bytes of slack: each block of output vectors is stored whole, valid lanes first.
    let mut y = crate::engine::recycle::codes(total + 64);
    let out = y.as_mut_ptr();
    for s in 0..n {
        for gi in 0..conv.groups {
            for icg in 0..cg {
                let src = &x[(s * g.c + gi * cg + icg) * plane..][..plane];
                build_quads(&lay, q, src, &mut hbuf[icg * gsize..][..gsize]);
            }
            let at = (s * conv.out + gi * og) * opix;
            // SAFETY: CPU features per this fn's contract; the og planes from `at` and 64 bytes
            // past them lie in y (at + og·opix ≤ total), and `group_out` writes their bytes
            // in full (what it stores past a plane is overwritten by the next one or cut off).
            unsafe { group_out(conv, q, &lay, hbuf, gi * og..(gi + 1) * og, out.add(at)) };
        }
    }
    y.truncate(total);
    y
}

/// Lays out one input channel plane `src` ([h, w]) as quads in `dst` (its sh·nq quad buffers
/// of `hlen` words). Each grid row is stored whole, chunks of 16 points in reverse so that a
/// last chunk spilling into the next grid row is overwritten by that row's first chunk; grid
/// rows of padding keep the padding they were allocated with, restored after the last row.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn build_quads(lay: &Layout, q: &Quads, src: &[i8], dst: &mut [i32]) {
    let grid = &lay.grid;
    assert!(src.len() >= lay.h * lay.w && dst.len() >= grid.sh * q.nq * lay.hlen);
    // Codes x become x + 128 = x ^ 0x80 as u8, the padding z_x + 128.
    let flip = _mm512_set1_epi8(i8::MIN);
    let pad = _mm512_xor_si512(_mm512_set1_epi8(q.z), flip);
    let (src, dst) = (src.as_ptr(), dst.as_mut_ptr());
    for (k, ch) in lay.chunks.iter().enumerate().rev() {
        for (qq, idx) in ch.idx.iter().enumerate() {
            // SAFETY: `idx` is 64 bytes.
            let iv = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
            for &(row_at, x_at) in &lay.rows {
                // SAFETY: the load mask covers bytes base .. min(base + 64, w) of input row
                // x_at / w < h, all inside `src` (base ≤ w, asserted length). The store covers
                // words rho·pg + 16k .. + 16 ≤ rg·pg + 16 ≤ hlen of quad buffer (phase, qq),
                // row_at being phase·nq·hlen + rho·pg.
                unsafe {
                    let v = _mm512_maskz_loadu_epi8(ch.load, src.add(x_at + ch.base));
                    let quads = _mm512_permutex2var_epi8(_mm512_xor_si512(v, flip), iv, pad);
                    let at = row_at + qq * lay.hlen + 16 * k;
                    _mm512_storeu_si512(dst.add(at).cast(), quads);
                }
            }
        }
    }
    for &(phase, at) in &lay.repairs {
        for qq in 0..q.nq {
            // SAFETY: `at` + 16 ≤ rg·pg + 16 ≤ hlen words of this quad buffer.
            unsafe {
                _mm512_storeu_si512(dst.add((phase * q.nq + qq) * lay.hlen + at).cast(), pad)
            };
        }
    }
}

/// What one output plane needs: its group's quads, taps and weights, the line, and where
/// its bytes go.
struct Plane<'a> {
    lay: &'a Layout,
    /// The group's quad buffers.
    hb: *const i32,
    /// The channel's weight quads, one per tap.
    wts: &'a [i32],
    acc0: __m512i,
    line: &'a Line,
    /// Clamp bounds (inside i8 wherever a line is used), per byte.
    lo: __m512i,
    hi: __m512i,
}

/// The planes of output channels `ocs` (one group) from the group's quads in `hbuf`, each
/// oh·ow bytes, one after the other from `out`.
///
/// # Safety
/// AVX-512 features as [`run`]; `out` valid for ocs.len()·oh·ow + 64 bytes (those past the
/// planes may be overwritten); `hbuf` the group's quad buffers as laid out by `lay`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn group_out(
    conv: &GroupConv,
    q: &Quads,
    lay: &Layout,
    hbuf: &[i32],
    ocs: std::ops::Range<usize>,
    out: *mut i8,
) {
    let ntaps = lay.taps.len();
    let max_read = lay.taps.iter().max().copied().unwrap_or(0) + lay.blocks.len() * 64;
    assert!(max_read <= hbuf.len(), "quad buffers cover every read");
    let opix = lay.grid.oh * lay.grid.ow;
    for (i, oc) in ocs.enumerate() {
        let line = &conv.lines[oc];
        let p = Plane {
            lay,
            hb: hbuf.as_ptr(),
            wts: &q.w[oc * ntaps..][..ntaps],
            acc0: _mm512_set1_epi32(q.acc0[oc]),
            line,
            lo: _mm512_set1_epi8(conv.lo as i8),
            hi: _mm512_set1_epi8(conv.hi as i8),
        };
        // SAFETY (all five): as this fn's contract, plane i at out + i·opix; every read of
        // `hb` lies below max_read.
        let dst = unsafe { out.add(i * opix) };
        match &line.f32 {
            Some(l) => {
                let neg = line.a0 != i32::MIN && l.bp != l.bn;
                let clamp = (conv.lo, conv.hi) != (-128, 127) || l.c != 0;
                match (neg, clamp) {
                    (true, true) => unsafe { plane32::<true, true>(&p, l, dst) },
                    (true, false) => unsafe { plane32::<true, false>(&p, l, dst) },
                    (false, true) => unsafe { plane32::<false, true>(&p, l, dst) },
                    (false, false) => unsafe { plane32::<false, false>(&p, l, dst) },
                }
            }
            None => unsafe { plane_slow(&p, dst) },
        }
    }
}

/// Block `blk`'s 4 output vectors (grid points 64·blk ..): acc0 + Σ over taps of `vpdpbusd`
/// (the taps' word offsets and broadcast weights, or all the plane's when `N` = 0).
///
/// # Safety
/// AVX-512 VNNI; the quad buffers hold every word up to the largest tap + 64·(blk + 1).
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn mac4<const N: usize>(
    p: &Plane,
    taps: &[usize; N],
    wts: &[__m512i; N],
    blk: usize,
) -> [__m512i; 4] {
    let mut a = [p.acc0; 4];
    let tap = |a: &mut [__m512i; 4], t: usize, wv: __m512i| {
        // SAFETY: per this fn's contract.
        unsafe {
            let h = p.hb.add(t + 64 * blk);
            for (u, a) in a.iter_mut().enumerate() {
                *a = _mm512_dpbusd_epi32(*a, _mm512_loadu_si512(h.add(16 * u).cast()), wv);
            }
        }
    };
    if N == 0 {
        for (&t, &w) in p.lay.taps.iter().zip(p.wts) {
            tap(&mut a, t, _mm512_set1_epi32(w));
        }
    } else {
        for (&t, &wv) in taps.iter().zip(wts) {
            tap(&mut a, t, wv);
        }
    }
    a
}

/// 4 vectors of i32 to 64 bytes saturated to i8, in the order of the packing instructions:
/// per 128-bit lane L, values 4L..4L+4 of each vector in turn.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn pack4(y: [__m512i; 4]) -> __m512i {
    _mm512_packs_epi16(
        _mm512_packs_epi32(y[0], y[1]),
        _mm512_packs_epi32(y[2], y[3]),
    )
}

/// Stores the valid points of block `blk` (packed bytes `y`, clamped to [lo, hi] if CLAMP) in
/// their place in the plane `out`.
///
/// # Safety
/// AVX-512 VBMI; `out` valid for oh·ow + 64 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn store_block<const CLAMP: bool>(p: &Plane, blk: usize, y: __m512i, out: *mut i8) {
    let (at, idx) = &p.lay.blocks[blk];
    let y = if CLAMP {
        _mm512_min_epi8(_mm512_max_epi8(y, p.lo), p.hi)
    } else {
        y
    };
    // SAFETY: `idx` is 64 bytes; `at` ≤ oh·ow, so 64 bytes fit.
    unsafe {
        let idx = _mm512_loadu_si512(idx.as_ptr().cast());
        _mm512_storeu_si512(out.add(*at).cast(), _mm512_permutexvar_epi8(idx, y));
    }
}

/// An f32 line, broadcast.
struct Lanes32<'a> {
    m: __m512,
    bp: __m512,
    bn: __m512,
    a0: __m512i,
    c: __m512i,
    line: &'a Line32,
}

/// Requantizes 16 accumulators through the f32 line: ⌊fma(acc, m, b)⌋ (+ c if CLAMP), the
/// exceptions patched; NEG: b switches at a0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn requant32<const NEG: bool, const CLAMP: bool>(acc: __m512i, k: &Lanes32) -> __m512i {
    const RD: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    let b = if NEG {
        _mm512_mask_blend_ps(_mm512_cmplt_epi32_mask(acc, k.a0), k.bp, k.bn)
    } else {
        k.bp
    };
    let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), k.m, b);
    let mut y = _mm512_cvt_roundps_epi32::<RD>(t);
    if CLAMP {
        y = _mm512_add_epi32(y, k.c);
    }
    let l = k.line;
    for i in 0..l.n {
        let hit = _mm512_cmpeq_epi32_mask(acc, _mm512_set1_epi32(l.exc[i]));
        y = _mm512_mask_mov_epi32(y, hit, _mm512_set1_epi32(l.val[i] as i32));
    }
    y
}

/// The plane through the f32 line `l`: NEG with the offset switch at a0, CLAMP with the
/// integer c and the clamp to [lo, hi] (else c = 0 and the clamp is the i8 saturation).
///
/// # Safety
/// As [`group_out`], for one plane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn plane32<const NEG: bool, const CLAMP: bool>(p: &Plane, l: &Line32, out: *mut i8) {
    let k = Lanes32 {
        m: _mm512_set1_ps(l.m),
        bp: _mm512_set1_ps(l.bp),
        bn: _mm512_set1_ps(l.bn),
        a0: _mm512_set1_epi32(p.line.a0),
        c: _mm512_set1_epi32(l.c),
        line: l,
    };
    // A 3×3 depthwise kernel: three taps held in registers (the loop unrolls).
    let taps3: Option<[usize; 3]> = p.lay.taps.as_slice().try_into().ok();
    let wts3: Option<[i32; 3]> = p.wts.try_into().ok();
    let wv3 = wts3.map(|w| w.map(|w| _mm512_set1_epi32(w)));
    for blk in 0..p.lay.blocks.len() {
        // SAFETY: as this fn's contract.
        unsafe {
            let [a0, a1, a2, a3] = match (&taps3, &wv3) {
                (Some(t), Some(w)) => mac4(p, t, w, blk),
                _ => mac4::<0>(p, &[], &[], blk),
            };
            let y = [
                requant32::<NEG, CLAMP>(a0, &k),
                requant32::<NEG, CLAMP>(a1, &k),
                requant32::<NEG, CLAMP>(a2, &k),
                requant32::<NEG, CLAMP>(a3, &k),
            ];
            store_block::<CLAMP>(p, blk, pack4(y), out);
        }
    }
}

/// The plane through the f64 line (fused) or, without one, the fixed-point path.
///
/// # Safety
/// As [`group_out`], for one plane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn plane_slow(p: &Plane, out: *mut i8) {
    for blk in 0..p.lay.blocks.len() {
        // SAFETY: as this fn's contract.
        unsafe {
            let acc = mac4::<0>(p, &[], &[], blk);
            let mut y = [_mm512_setzero_si512(); 4];
            for (y, &a) in y.iter_mut().zip(&acc) {
                *y = if p.line.fused {
                    requant64(a, p.line)
                } else {
                    requant_exact(a, p.line)
                };
            }
            store_block::<true>(p, blk, pack4(y), out);
        }
    }
}

/// ⌊fma(acc, m, b)⌋ in f64 (clamped by the caller).
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn requant64(acc: __m512i, line: &Line) -> __m512i {
    const RD: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    let (m, bp, bn) = (
        _mm512_set1_pd(line.m),
        _mm512_set1_pd(line.bp),
        _mm512_set1_pd(line.bn),
    );
    let neg = _mm512_cmplt_epi32_mask(acc, _mm512_set1_epi32(line.a0));
    let blo = _mm512_mask_blend_pd(neg as u8, bp, bn);
    let bhi = _mm512_mask_blend_pd((neg >> 8) as u8, bp, bn);
    let dlo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(acc));
    let dhi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(acc));
    let ilo = _mm512_cvt_roundpd_epi32::<RD>(_mm512_fmadd_pd(dlo, m, blo));
    let ihi = _mm512_cvt_roundpd_epi32::<RD>(_mm512_fmadd_pd(dhi, m, bhi));
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ilo), ihi)
}

/// Requantizes 16 accumulators through the fixed-point path (a channel without a line).
#[target_feature(enable = "avx512f")]
fn requant_exact(acc: __m512i, line: &Line) -> __m512i {
    let mut a = [0i32; 16];
    // SAFETY: `a` holds 16 i32.
    unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), acc) };
    let b: [i32; 16] = std::array::from_fn(|i| line.exact(a[i]) as i32);
    // SAFETY: `b` holds 16 i32.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}
