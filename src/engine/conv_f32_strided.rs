//! The float engine's ungrouped conv at any stride, read in place from the zero-padded image of
//! [`super::conv_f32`]: output channels in the vector lanes instead of pixels, so strided
//! pixels cost nothing. A tile of 8 output pixels × 32 output channels is the bias plus, per
//! tap k = (c, ky, kx), one broadcast image element per pixel (at the pixel's first element
//! plus off_k) times the 32 weights of that tap: one fused multiply-add per pixel, vector and
//! tap, in tap order. The tile is stored transposed (four 8 × 8 register transposes), 8
//! pixels into each of its 32 output planes. A conv of at most 16 output channels takes a tile
//! of 16 pixels × 16 channels instead (half the 32-channel tile's multiply-adds would fall on
//! padded channels): the same sums in the same order. Without AVX-512, an AVX2 + FMA tile
//! computes the same sums in four passes of 4 pixels × 16 channels (8 accumulators).

use super::clamp_f32::Clamp;
use super::conv_f32::{applies_any_stride, fill_padded, pack, tap_offsets};
use super::im2col::ConvGeom;

/// Output pixels per tile.
const PR: usize = 8;
/// Output channels per tile (two vectors).
const OC: usize = 32;
/// A conv of at most 16 output channels on AVX-512: one vector of channels and 16 pixels per
/// tile (the 32-channel tile would leave half its multiply-adds on padded channels).
const NARROW: usize = 16;

/// A tile kernel of `P` pixels: its image, pixel starts, tap offsets, (weights, bias, clamp),
/// and where it writes (transposed: channel j's `P` values at p[j · ld]).
type TileFn<const P: usize> =
    unsafe fn(&[f32], &[usize; P], &[usize], (&[f32], &[f32], Clamp), (*mut f32, usize));

/// The ungrouped conv of `n` NCHW samples `xs` at any stride, as [`super::conv_f32`]'s
/// `conv_f32_padded` computes it: each output clamp(bias + Σ_k w_k · x_k), the sum in tap order.
///
/// # Panics
/// Unless [`applies`]`()`, or if the slices do not match the geometry.
pub fn conv_f32_strided(
    xs: &[f32],
    n: usize,
    g: &ConvGeom,
    wbc: (&[f32], &[f32], Clamp),
) -> Vec<f32> {
    assert!(applies(), "an AVX-512 or AVX2 CPU");
    strided_with(xs, n, g, wbc, applies_any_stride())
}

/// Whether [`conv_f32_strided`] runs on this CPU: AVX-512F, or AVX2 with FMA.
pub fn applies() -> bool {
    super::conv_f32::has_tiles()
}

/// [`conv_f32_strided`] on the AVX-512 tile (`wide`) or the AVX2 one, which must be supported.
pub(super) fn strided_with(
    xs: &[f32],
    n: usize,
    g: &ConvGeom,
    (w, bias, clamp): (&[f32], &[f32], Clamp),
    wide: bool,
) -> Vec<f32> {
    let (kh, kw) = g.kernel;
    let (hp, wp) = g.padded_dims();
    let (o, k, pixels) = (bias.len(), g.c * kh * kw, g.out_pixels());
    assert_eq!(w.len(), o * k, "weights [o, c·kh·kw]");
    assert_eq!(xs.len(), n * g.c * g.h * g.w, "input [n, c, h, w]");
    // Not zeroed first: every tile's pixels of every plane are written (see the end).
    let len = n * o * pixels;
    let mut y = Vec::<f32>::with_capacity(len);
    if pixels == 0 || o == 0 {
        return y;
    }
    let offsets = tap_offsets(g.c, g);
    // Each output pixel's first element in the padded image.
    let starts: Vec<usize> = (0..pixels)
        .map(|p| (p / g.ow) * g.stride.0 * wp + (p % g.ow) * g.stride.1)
        .collect();
    // Pixel starts rise with the pixel, so the last pixel's last tap is the furthest read.
    let furthest = starts[pixels - 1] + offsets.iter().max().copied().unwrap_or(0);
    assert!(
        furthest < g.c * hp * wp,
        "every tap inside the padded image"
    );
    let narrow = wide && o <= NARROW;
    let oc = if narrow { NARROW } else { OC };
    let packed = pack(w, (o, k), oc);
    let padded_bias: Vec<f32> = (0..o.div_ceil(oc) * oc)
        .map(|r| bias.get(r).copied().unwrap_or(0.0))
        .collect();
    // Without padding (a 1×1 conv) the taps read the sample where it is.
    let unpadded = (hp, wp) == (g.h, g.w);
    let mut img = vec![0f32; if unpadded { 0 } else { g.c * hp * wp }];
    let geometry = (&starts[..], &offsets[..], (o, k));
    let weights = (&packed[..], &padded_bias[..], clamp);
    for (x1, ys) in xs
        .chunks_exact(g.c * g.h * g.w)
        .zip(y.spare_capacity_mut()[..len].chunks_exact_mut(o * pixels))
    {
        let img: &[f32] = if unpadded {
            x1
        } else {
            fill_padded(&mut img, x1, g);
            &img
        };
        // SAFETY: `narrow` and `wide` need AVX-512F, the AVX2 tile AVX2 + FMA, per `applies`
        // and the caller; every pixel's start plus any tap offset is at most `furthest`,
        // inside the image (asserted above); the weights are packed in blocks of `oc`.
        unsafe {
            if narrow {
                sample_tiles::<NARROW, NARROW>(img, ys, geometry, weights, tile16)
            } else if wide {
                sample_tiles::<OC, PR>(img, ys, geometry, weights, tile)
            } else {
                sample_tiles::<OC, PR>(img, ys, geometry, weights, tile_avx2)
            }
        };
    }
    // SAFETY: `sample_tiles` wrote each plane's pixels 0 .. pixels of every sample.
    unsafe { y.set_len(len) };
    y
}

/// One sample's output planes `ys` ([o, pixels]) by tiles of `C` channels × `P` pixels of
/// `tile`: a whole tile straight into its planes, a partial one (the last pixels, or fewer
/// than `C` channels left) through a scratch tile. Past the last pixel a tile computes the
/// last one again and does not store it.
///
/// # Safety
/// `tile` runs on this CPU; `starts` (one per output pixel, rising) plus every offset index
/// `img`; `packed` holds the weights in blocks of `C` channels of `k` taps, `bias` whole
/// blocks of `C`; `C · P ≤ 256`.
unsafe fn sample_tiles<const C: usize, const P: usize>(
    img: &[f32],
    ys: &mut [std::mem::MaybeUninit<f32>],
    (starts, offsets, (o, k)): (&[usize], &[usize], (usize, usize)),
    (packed, bias, clamp): (&[f32], &[f32], Clamp),
    tile: TileFn<P>,
) {
    let pixels = starts.len();
    let mut scratch = [0f32; 256];
    let scratch = &mut scratch[..C * P];
    for (ob, wk) in packed.chunks_exact(C * k).enumerate() {
        let rows = C.min(o - ob * C);
        let b = &bias[ob * C..(ob + 1) * C];
        for p0 in (0..pixels).step_by(P) {
            let np = P.min(pixels - p0);
            let at: [usize; P] = std::array::from_fn(|r| starts[p0 + r.min(np - 1)]);
            // A whole tile goes straight to its C planes, P pixels per plane.
            let whole = np == P && rows == C;
            let dst = if whole {
                (ys[ob * C * pixels + p0..].as_mut_ptr().cast(), pixels)
            } else {
                (scratch.as_mut_ptr(), P)
            };
            // SAFETY: per this fn's contract for the image, weights and bias; a whole tile
            // writes pixels p0 .. p0 + P of planes ob·C .. ob·C + C, inside `ys`, and a partial
            // one the C planes of P values of `scratch`.
            unsafe { tile(img, &at, offsets, (wk, b, clamp), dst) };
            if whole {
                continue;
            }
            let planes = ys.chunks_exact_mut(pixels).skip(ob * C).take(rows);
            for (plane, part) in planes.zip(scratch.chunks_exact(P)) {
                for (d, &s) in plane[p0..p0 + np].iter_mut().zip(&part[..np]) {
                    d.write(s);
                }
            }
        }
    }
}

/// [`tile`] for at most 16 output channels: 16 pixels × one vector of 16 channels (16
/// accumulators, one weight load and 16 image broadcasts per tap), stored transposed.
///
/// # Safety
/// As [`tile`], with 16 pixels and 16 channels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile16(
    img: &[f32],
    at: &[usize; 16],
    offsets: &[usize],
    (w, b, clamp): (&[f32], &[f32], Clamp),
    (p, ld): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    // SAFETY (loads below): b holds 16 floats, w 16 per tap, per this fn's contract.
    let mut acc = [unsafe { _mm512_loadu_ps(b.as_ptr()) }; 16];
    let base = img.as_ptr();
    for (t, &off) in offsets.iter().enumerate() {
        // SAFETY: tap t's 16 weights and every pixel's element, per this fn's contract.
        unsafe {
            let w0 = _mm512_loadu_ps(w.as_ptr().add(t * 16));
            for (a, &px) in acc.iter_mut().zip(at) {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*base.add(px + off)), w0, *a);
            }
        }
    }
    let (lo, hi) = clamp.bounds();
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    for (px, pixel_half) in acc.chunks_exact(8).enumerate() {
        for half in 0..2 {
            let rows: [__m256; 8] = std::array::from_fn(|r| half_of(pixel_half[r], half));
            for (j, col) in transpose8(rows).into_iter().enumerate() {
                let col = _mm256_min_ps(hi, _mm256_max_ps(lo, col));
                // SAFETY: channel 8·half + j < 16, pixels 8·px .. 8·px + 8 < 16, per this
                // fn's contract.
                unsafe { _mm256_storeu_ps(p.add((8 * half + j) * ld + 8 * px), col) };
            }
        }
    }
}

/// The low (`half` 0) or high 8 lanes of `v`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn half_of(v: std::arch::x86_64::__m512, half: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let wide = _mm512_castps_pd(v);
    if half == 0 {
        _mm256_castpd_ps(_mm512_castpd512_pd256(wide))
    } else {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(wide))
    }
}

/// One tile, written transposed to `(p, ld)`: p[j · ld + r] = clamp(b[j] + Σ_t w[t][j] ·
/// img[at[r] + off_t]), the sum in tap order.
///
/// # Safety
/// AVX-512F; every at[r] + off_t indexes `img`; `w` holds OC values per offset, `b` OC values;
/// p[j · ld .. j · ld + PR] writable for every j < OC.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(
    img: &[f32],
    at: &[usize; PR],
    offsets: &[usize],
    (w, b, clamp): (&[f32], &[f32], Clamp),
    (p, ld): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    // SAFETY (loads below): b holds OC floats, w holds OC per tap, per this fn's contract.
    let bias = unsafe {
        [
            _mm512_loadu_ps(b.as_ptr()),
            _mm512_loadu_ps(b.as_ptr().add(16)),
        ]
    };
    let mut acc = [bias; PR];
    let base = img.as_ptr();
    for (t, &off) in offsets.iter().enumerate() {
        // SAFETY: tap t's OC weights and every pixel's element, per this fn's contract.
        unsafe {
            let wt = w.as_ptr().add(t * OC);
            let (w0, w1) = (_mm512_loadu_ps(wt), _mm512_loadu_ps(wt.add(16)));
            for (a, &p) in acc.iter_mut().zip(at) {
                let x = _mm512_set1_ps(*base.add(p + off));
                a[0] = _mm512_fmadd_ps(x, w0, a[0]);
                a[1] = _mm512_fmadd_ps(x, w1, a[1]);
            }
        }
    }
    // SAFETY: per this fn's contract.
    unsafe { store_transposed(&acc, clamp, p, ld) };
}

/// Channel j of the tile (lane j mod 16 of vector j / 16 of every row) as 8 consecutive
/// values at p[j · ld], clamped: four 8 × 8 transposes. (The clamp is applied here, on the
/// transposed columns: clamping the accumulators in the tile made the compiler keep them in
/// memory through the whole tap loop.)
///
/// # Safety
/// AVX-512F; p[j · ld .. j · ld + PR] writable for every j < OC.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(
    acc: &[[std::arch::x86_64::__m512; 2]; PR],
    clamp: Clamp,
    p: *mut f32,
    ld: usize,
) {
    use std::arch::x86_64::*;
    let (lo, hi) = clamp.bounds();
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let by_vector: [[__m512; PR]; 2] = std::array::from_fn(|v| std::array::from_fn(|r| acc[r][v]));
    for (v, vecs) in by_vector.iter().enumerate() {
        for half in 0..2 {
            let rows: [__m256; PR] = std::array::from_fn(|r| half_of(vecs[r], half));
            for (j, col) in transpose8(rows).into_iter().enumerate() {
                let ch = 16 * v + 8 * half + j;
                let col = _mm256_min_ps(hi, _mm256_max_ps(lo, col));
                // SAFETY: channel ch < OC, per this fn's contract.
                unsafe { _mm256_storeu_ps(p.add(ch * ld), col) };
            }
        }
    }
}

/// [`tile`] on AVX2 + FMA: four passes of 4 pixels × 16 channels (8 accumulators, 2 weight
/// loads and 4 image broadcasts per tap), the tile kept in memory, then stored transposed.
///
/// # Safety
/// As [`tile`], with AVX2 and FMA instead of AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    img: &[f32],
    at: &[usize; PR],
    offsets: &[usize],
    (w, b, clamp): (&[f32], &[f32], Clamp),
    (p, ld): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    const PX: usize = 4;
    let (lo, hi) = clamp.bounds();
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    // [channel vector of 8][pixel]
    let mut tile = [[_mm256_setzero_ps(); PR]; OC / 8];
    let base = img.as_ptr();
    for (p0, c0) in [(0, 0), (0, 16), (PX, 0), (PX, 16)] {
        // SAFETY: b holds OC floats (contract).
        let bias = unsafe {
            [
                _mm256_loadu_ps(b.as_ptr().add(c0)),
                _mm256_loadu_ps(b.as_ptr().add(c0 + 8)),
            ]
        };
        let mut acc = [bias; PX];
        for (t, &off) in offsets.iter().enumerate() {
            // SAFETY: tap t's OC weights and every pixel's element, per this fn's contract.
            unsafe {
                let wt = w.as_ptr().add(t * OC + c0);
                let (w0, w1) = (_mm256_loadu_ps(wt), _mm256_loadu_ps(wt.add(8)));
                for (a, &px) in acc.iter_mut().zip(&at[p0..p0 + PX]) {
                    let x = _mm256_set1_ps(*base.add(px + off));
                    a[0] = _mm256_fmadd_ps(x, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(x, w1, a[1]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            tile[c0 / 8][p0 + r] = _mm256_min_ps(hi, _mm256_max_ps(lo, a[0]));
            tile[c0 / 8 + 1][p0 + r] = _mm256_min_ps(hi, _mm256_max_ps(lo, a[1]));
        }
    }
    for (v, &rows) in tile.iter().enumerate() {
        for (j, col) in transpose8(rows).into_iter().enumerate() {
            // SAFETY: channel 8v + j < OC, per this fn's contract.
            unsafe { _mm256_storeu_ps(p.add((8 * v + j) * ld), col) };
        }
    }
}

/// The 8 × 8 transpose of `r` (element i of result j is element j of r[i]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let lo = |a, b| _mm256_unpacklo_ps(a, b);
    let hi = |a, b| _mm256_unpackhi_ps(a, b);
    let t = [
        lo(r[0], r[1]),
        hi(r[0], r[1]),
        lo(r[2], r[3]),
        hi(r[2], r[3]),
        lo(r[4], r[5]),
        hi(r[4], r[5]),
        lo(r[6], r[7]),
        hi(r[6], r[7]),
    ];
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    std::array::from_fn(|j| {
        let (a, b) = (u[j % 4], u[4 + j % 4]);
        if j < 4 {
            _mm256_permute2f128_ps::<0x20>(a, b)
        } else {
            _mm256_permute2f128_ps::<0x31>(a, b)
        }
    })
}

/// Not built off x86-64: [`applies`] is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(
    _: &[f32],
    _: &[usize; PR],
    _: &[usize],
    _: (&[f32], &[f32], Clamp),
    _: (*mut f32, usize),
) {
    unreachable!("applies() is false off x86-64")
}

/// Not built off x86-64: [`applies`] is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile16(
    _: &[f32],
    _: &[usize; 16],
    _: &[usize],
    _: (&[f32], &[f32], Clamp),
    _: (*mut f32, usize),
) {
    unreachable!("applies() is false off x86-64")
}

/// Not built off x86-64: [`applies`] is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx2(
    _: &[f32],
    _: &[usize; PR],
    _: &[usize],
    _: (&[f32], &[f32], Clamp),
    _: (*mut f32, usize),
) {
    unreachable!("applies() is false off x86-64")
}
