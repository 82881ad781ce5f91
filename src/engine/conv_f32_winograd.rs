//! The float engine's 3×3 stride-1 conv by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray 2016): each 2×2 block of outputs ("tile") of a channel is Aᵀ·[Σ_c U_c ⊙ V_c]·A, with
//! U_c = G·g_c·Gᵀ the 4×4 transform of a 3×3 kernel and V_c = Bᵀ·d_c·B that of the 4×4 input
//! patch under the tile. So the 36 multiply-adds of a tile per (input, output) channel pair
//! become 16, done as 16 GEMMs (one per transform position ξ) of [o × c]·[c × tiles] on the
//! padded-image kernel's AVX-512 tile with the tiles in the lanes. The transforms are sums of
//! a few terms; the result differs from the direct sum by f32 rounding only.
//!
//! Samples are taken in blocks of about `TILES` tiles so that every GEMM fills its lanes.

use super::clamp_f32::Clamp;
use super::conv_f32::{MR, NR, applies as padded_applies, pack, tile};
use super::im2col::ConvGeom;

/// Tiles per block of samples (at least one sample).
const TILES: usize = 256;

/// Whether [`conv_f32_winograd`] runs geometry `g` with `o` output channels on this CPU: a 3×3
/// kernel at stride 1 without dilation, AVX-512F, enough channels on both sides that the
/// transforms cost less than the multiply-adds they save, and rows of at least 12 tiles (the
/// transforms take 16 tiles of a row per vector: on a 14-pixel output they cost more than the
/// direct kernel, 1.14 against 0.66 ms on `resnet_ts`'s 16-channel 14×14 conv).
pub fn applies(g: &ConvGeom, o: usize) -> bool {
    padded_applies(g)
        && super::conv_f32::applies_any_stride()
        && g.kernel == (3, 3)
        && g.dilation == (1, 1)
        && g.c >= 8
        && o >= 8
        && g.ow >= MIN_OUT_WIDTH
}

/// Whether the float engine should take [`conv_f32_winograd`] where it [`applies`]: on CPUs
/// that run a 512-bit multiply-add as two 256-bit halves (AMD family 19h, Zen 4), where the
/// direct kernel gets half the multiply-adds per cycle and Winograd's 16 for 36 pay for its
/// transforms (the ResNet's 16-channel 28×28 conv on 64 images: 2.07–2.19 ms against 2.66–2.74
/// direct). With full-width 512-bit units (the Intel Xeons timed) the direct kernel is faster
/// (2.1–2.2 against 2.5 ms; the whole ResNet's float engine 23.0 against 24.8 ms per 256).
pub fn pays() -> bool {
    static PAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PAYS.get_or_init(|| half_width_avx512(cpu_id()))
}

/// The CPU's vendor string (CPUID leaf 0) and its family (leaf 1, base plus extended).
fn cpu_id() -> ([u8; 12], u32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let v = __cpuid(0);
        let mut vendor = [0u8; 12];
        for (dst, reg) in vendor.chunks_exact_mut(4).zip([v.ebx, v.edx, v.ecx]) {
            dst.copy_from_slice(&reg.to_le_bytes());
        }
        let eax = __cpuid(1).eax;
        let base = (eax >> 8) & 0xF;
        let family = if base == 0xF {
            base + ((eax >> 20) & 0xFF)
        } else {
            base
        };
        (vendor, family)
    }
    #[cfg(not(target_arch = "x86_64"))]
    ([0; 12], 0)
}

/// AMD family 19h (Zen 3 has no AVX-512, so with AVX-512 this is Zen 4) splits 512-bit
/// multiply-adds in two.
fn half_width_avx512((vendor, family): ([u8; 12], u32)) -> bool {
    &vendor == b"AuthenticAMD" && family == 0x19
}

/// Output width below which the direct kernel is faster.
const MIN_OUT_WIDTH: usize = 24;

/// The conv of `n` NCHW samples `xs` with weights `w` ([o, c, 3, 3]) and `bias`, its outputs
/// clamped by `clamp`: [n, o, oh, ow].
///
/// # Panics
/// Unless [`applies`]`(g, o)`, or if the slices do not match the geometry.
pub fn conv_f32_winograd(
    xs: &[f32],
    n: usize,
    g: &ConvGeom,
    (w, bias, clamp): (&[f32], &[f32], Clamp),
) -> Vec<f32> {
    let (o, c) = (bias.len(), g.c);
    assert!(applies(g, o), "a 3×3 stride-1 conv on an AVX-512 CPU");
    assert_eq!(w.len(), o * c * 9, "weights [o, c, 3, 3]");
    assert_eq!(xs.len(), n * c * g.h * g.w, "input [n, c, h, w]");
    // Not zeroed first: the output transform writes every output (see the end).
    let len = n * o * g.out_pixels();
    let mut y = Vec::<f32>::with_capacity(len);
    if g.out_pixels() == 0 || n == 0 {
        return y;
    }
    let tiles = Tiles::of(g);
    let sb = TILES.div_ceil(tiles.per_sample()).clamp(1, n);
    // Row stride of V and M: a block's tiles rounded up to whole kernel tiles.
    let stride = (sb * tiles.per_sample()).next_multiple_of(NR);
    let u = weight_transform(w, (o, c));
    let packed: Vec<Vec<f32>> = u.iter().map(|ux| pack(ux, (o, c), MR)).collect();
    let mut img = vec![0f32; c * tiles.hi * tiles.wi + 64];
    let mut v = vec![0f32; 16 * c * stride + NR];
    let om = o.next_multiple_of(MR);
    let mut m = vec![0f32; 16 * om * stride + NR];
    let sample = c * g.h * g.w;
    for s0 in (0..n).step_by(sb) {
        let bn = sb.min(n - s0);
        for s in 0..bn {
            let x1 = &xs[(s0 + s) * sample..(s0 + s + 1) * sample];
            tiles.fill(&mut img, x1, g);
            // SAFETY: AVX-512F per `applies`.
            unsafe { input_transform(&img, &tiles, (c, stride, s * tiles.per_sample()), &mut v) };
        }
        let used = bn * tiles.per_sample();
        products(&packed, &v, &mut m, (c, o, stride), used);
        let ys = &mut y.spare_capacity_mut()[s0 * o * g.out_pixels()..][..bn * o * g.out_pixels()];
        // SAFETY: AVX-512F per `applies`.
        unsafe { output_transform(&m, (&tiles, g), (o, om, stride), (bias, clamp), ys) };
    }
    // SAFETY: the blocks of samples cover 0 .. n, and the output transform writes every output
    // of each of its samples' planes (all th·2 ≥ oh rows, all tw·2 ≥ ow columns, masked).
    unsafe { y.set_len(len) };
    y
}

/// The 16 GEMMs M_ξ = U_ξ · V_ξ over the first `used` tiles: `packed` holds each U_ξ ([o, c])
/// in the tile kernel's blocks of MR output channels, `v` the 16 blocks [c][stride] of V, `m`
/// receives the 16 blocks [o rounded up to MR][stride] of M.
fn products(
    packed: &[Vec<f32>],
    v: &[f32],
    m: &mut [f32],
    (c, o, stride): (usize, usize, usize),
    used: usize,
) {
    let om = o.next_multiple_of(MR);
    let offsets: Vec<usize> = (0..c).map(|ch| ch * stride).collect();
    assert!(v.len() >= 16 * c * stride + NR && m.len() >= 16 * om * stride && used <= stride);
    for (x, px) in packed.iter().enumerate() {
        let vx = &v[x * c * stride..];
        let mx = &mut m[x * om * stride..(x + 1) * om * stride];
        for (ob, wk) in px.chunks_exact(MR * c).enumerate() {
            let rows = MR.min(o - ob * MR);
            for p0 in (0..used).step_by(NR) {
                let lanes = NR.min(used - p0);
                // SAFETY: AVX-512F per `applies` (the only caller's precondition); tap ch reads
                // vx[ch·stride + p0 .. + NR], inside V's x-th block plus its NR slack (p0 + NR ≤
                // stride + NR, asserted); `wk` holds MR weights per channel; the tile writes
                // `rows` rows of `lanes` values at stride `stride` from row ob·MR, inside M's
                // x-th block.
                unsafe {
                    tile(
                        vx[p0..].as_ptr(),
                        &offsets,
                        (wk, &[0.0; MR], Clamp::NONE),
                        mx[ob * MR * stride + p0..].as_mut_ptr(),
                        (rows, lanes, stride),
                    )
                };
            }
        }
    }
}

/// The tile grid of a geometry: `th × tw` tiles of 2×2 outputs, read from a zero-padded image
/// of `hi × wi` = (2·th + 2) × (2·tw + 2) per channel (the padded input, extended by a row or a
/// column of zeros when the output is odd).
struct Tiles {
    th: usize,
    tw: usize,
    hi: usize,
    wi: usize,
}

impl Tiles {
    fn of(g: &ConvGeom) -> Self {
        let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
        Tiles {
            th,
            tw,
            hi: 2 * th + 2,
            wi: 2 * tw + 2,
        }
    }

    fn per_sample(&self) -> usize {
        self.th * self.tw
    }

    /// Writes sample `x1` ([c, h, w]) into `img` ([c, hi, wi]) at the geometry's padding; the
    /// border, never written, stays zero.
    fn fill(&self, img: &mut [f32], x1: &[f32], g: &ConvGeom) {
        for (ch, plane) in x1.chunks_exact(g.h * g.w).enumerate() {
            for (r, row) in plane.chunks_exact(g.w).enumerate() {
                let at = (ch * self.hi + r + g.pad[0]) * self.wi + g.pad[1];
                super::im2col::copy_short(&mut img[at..at + g.w], row);
            }
        }
    }
}

/// U = G·g·Gᵀ of every 3×3 kernel g ([o, c, 3, 3]), as 16 matrices [o, c] (one per position
/// ξ = 4·i + j of the 4×4 transform).
fn weight_transform(w: &[f32], (o, c): (usize, usize)) -> Vec<Vec<f32>> {
    // G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
    let gm = |v: [f32; 3]| {
        [
            v[0],
            0.5 * (v[0] + v[1] + v[2]),
            0.5 * (v[0] - v[1] + v[2]),
            v[2],
        ]
    };
    let mut u = vec![vec![0f32; o * c]; 16];
    for (oc, k) in w.chunks_exact(9).enumerate() {
        // G·g (4×3), column by column, then (G·g)·Gᵀ row by row.
        let cols: [[f32; 4]; 3] = std::array::from_fn(|j| gm([k[j], k[3 + j], k[6 + j]]));
        for i in 0..4 {
            let row = gm([cols[0][i], cols[1][i], cols[2][i]]);
            for (j, &val) in row.iter().enumerate() {
                u[4 * i + j][oc] = val;
            }
        }
    }
    u
}

/// A mask of the first `n` (≤ 16) lanes.
fn lanes(n: usize) -> u16 {
    if n >= 16 { !0 } else { (1u16 << n) - 1 }
}

/// V = Bᵀ·d·B of every tile of one sample's image `img` ([c, hi, wi] plus 64 floats of slack),
/// into the 16 blocks of `v` ([16][c][stride]), columns `first ..` (this sample's tiles,
/// row-major). Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]. Sixteen tiles
/// of a tile row per vector: each input row's even and odd columns from two pairs of loads, all
/// 16 values of V in registers.
///
/// # Safety
/// AVX-512F; `v` holds the 16 blocks with `first + t.per_sample() ≤ stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_transform(
    img: &[f32],
    t: &Tiles,
    (c, stride, first): (usize, usize, usize),
    v: &mut [f32],
) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    assert!(img.len() >= c * t.hi * t.wi + 64, "the image and its slack");
    assert!(v.len() >= 16 * c * stride && first + t.per_sample() <= stride);
    for ch in 0..c {
        for ty in 0..t.th {
            for tx0 in (0..t.tw).step_by(16) {
                let m = lanes(t.tw - tx0);
                // d·B of the four rows: b[i][k].
                let b: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                    let at = (ch * t.hi + 2 * ty + i) * t.wi + 2 * tx0;
                    // SAFETY: at + 34 ≤ the image's end + 64 slack (2·tx0 < wi).
                    let ld = |o: usize| unsafe { _mm512_loadu_ps(img.as_ptr().add(at + o)) };
                    let (a, bb, a2, b2) = (ld(0), ld(16), ld(2), ld(18));
                    let (e0, o0) = (
                        _mm512_permutex2var_ps(a, even, bb),
                        _mm512_permutex2var_ps(a, odd, bb),
                    );
                    let (e1, o1) = (
                        _mm512_permutex2var_ps(a2, even, b2),
                        _mm512_permutex2var_ps(a2, odd, b2),
                    );
                    [
                        _mm512_sub_ps(e0, e1),
                        _mm512_add_ps(o0, e1),
                        _mm512_sub_ps(e1, o0),
                        _mm512_sub_ps(o0, o1),
                    ]
                });
                let at = first + ty * t.tw + tx0;
                let [b0, b1, b2, b3] = b;
                for (k, (((&d0, &d1), &d2), &d3)) in
                    b0.iter().zip(&b1).zip(&b2).zip(&b3).enumerate()
                {
                    let rows = [
                        _mm512_sub_ps(d0, d2),
                        _mm512_add_ps(d1, d2),
                        _mm512_sub_ps(d2, d1),
                        _mm512_sub_ps(d1, d3),
                    ];
                    for (a, r) in rows.into_iter().enumerate() {
                        let to = ((4 * a + k) * c + ch) * stride + at;
                        // SAFETY: lanes up to tw − tx0 of a row of block 4a + k (asserted).
                        unsafe { _mm512_mask_storeu_ps(v.as_mut_ptr().add(to), m, r) };
                    }
                }
            }
        }
    }
}

/// Y = Aᵀ·M·A + bias of every tile, from the 16 blocks of `m` ([16][om][stride] plus NR floats
/// of slack), into the block's NCHW output `ys`, dropping outputs past the edge.
/// Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]. Sixteen tiles per vector; each output row's even and
/// odd columns are interleaved by two permutes into 32 consecutive outputs.
///
/// # Safety
/// AVX-512F; `m` as described for the block's samples.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_transform(
    m: &[f32],
    (t, g): (&Tiles, &ConvGeom),
    (o, om, stride): (usize, usize, usize),
    (bias, clamp): (&[f32], Clamp),
    ys: &mut [std::mem::MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (cl, ch) = clamp.bounds();
    let (cl, ch) = (_mm512_set1_ps(cl), _mm512_set1_ps(ch));
    // Not a closure: it would not inherit this fn's target features (a call per vector).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn clamped(v: __m512, (cl, ch): (__m512, __m512)) -> __m512 {
        _mm512_min_ps(ch, _mm512_max_ps(cl, v))
    }
    let pixels = g.out_pixels();
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    let samples = ys.len() / (o * pixels).max(1);
    assert!(m.len() >= 16 * om * stride + NR && samples * t.per_sample() <= stride);
    for (s, ysample) in ys.chunks_exact_mut(o * pixels).enumerate() {
        for (oc, plane) in ysample.chunks_exact_mut(pixels).enumerate() {
            let bv = _mm512_set1_ps(bias[oc]);
            for ty in 0..t.th {
                for tx0 in (0..t.tw).step_by(16) {
                    let at = s * t.per_sample() + ty * t.tw + tx0;
                    // SAFETY: row x of block oc from `at`: 16 floats inside m plus its slack.
                    let mr = |x: usize| unsafe {
                        _mm512_loadu_ps(m.as_ptr().add((x * om + oc) * stride + at))
                    };
                    // Aᵀ·M, rows 0 and 1: (m_j + m_4+j + m_8+j, m_4+j − m_8+j − m_12+j).
                    let am: [(__m512, __m512); 4] = std::array::from_fn(|j| {
                        let (m1, m2) = (mr(4 + j), mr(8 + j));
                        (
                            _mm512_add_ps(_mm512_add_ps(mr(j), m1), m2),
                            _mm512_sub_ps(_mm512_sub_ps(m1, m2), mr(12 + j)),
                        )
                    });
                    let (r0, r1) = (am.map(|r| r.0), am.map(|r| r.1));
                    for (i, r) in [r0, r1].into_iter().enumerate() {
                        let oy = 2 * ty + i;
                        if oy >= g.oh {
                            continue;
                        }
                        // Columns 0 and 1 of output row i, plus the bias.
                        let ye = _mm512_add_ps(_mm512_add_ps(r[0], r[1]), _mm512_add_ps(r[2], bv));
                        let yo = _mm512_add_ps(_mm512_sub_ps(r[1], r[2]), _mm512_sub_ps(bv, r[3]));
                        let n = g.ow - 2 * tx0;
                        let to = oy * g.ow + 2 * tx0;
                        // SAFETY: n ≤ ow − 2·tx0 outputs of row oy, masked.
                        unsafe {
                            let p = plane.as_mut_ptr().add(to).cast::<f32>();
                            let q = clamped(_mm512_permutex2var_ps(ye, lo, yo), (cl, ch));
                            _mm512_mask_storeu_ps(p, lanes(n), q);
                            if n > 16 {
                                let q = clamped(_mm512_permutex2var_ps(ye, hi, yo), (cl, ch));
                                _mm512_mask_storeu_ps(p.add(16), lanes(n - 16), q);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Not built off x86-64: [`applies`] is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn input_transform(_: &[f32], _: &Tiles, _: (usize, usize, usize), _: &mut [f32]) {
    unreachable!("applies() is false off x86-64")
}

/// Not built off x86-64: [`applies`] is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn output_transform(
    _: &[f32],
    _: (&Tiles, &ConvGeom),
    _: (usize, usize, usize),
    _: (&[f32], Clamp),
    _: &mut [std::mem::MaybeUninit<f32>],
) {
    unreachable!("applies() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conv in f64 from its definition, and Σ|w·x| + |b| per output.
    fn reference(xs: &[f32], n: usize, g: &ConvGeom, w: &[f32], bias: &[f32]) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for s in 0..n {
            for (oc, &b) in bias.iter().enumerate() {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let (mut acc, mut mag) = (b as f64, (b as f64).abs());
                        for ch in 0..g.c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy + ky) as isize - g.pad[0] as isize;
                                    let ix = (ox + kx) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = xs
                                        [((s * g.c + ch) * g.h + iy as usize) * g.w + ix as usize]
                                        as f64;
                                    let wv = w[((oc * g.c + ch) * 3 + ky) * 3 + kx] as f64;
                                    acc += wv * xv;
                                    mag += (wv * xv).abs();
                                }
                            }
                        }
                        out.push((acc, mag));
                    }
                }
            }
        }
        out
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed * 97)
                    >> 8;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn only_zen_4_counts_as_half_width() {
        assert!(half_width_avx512((*b"AuthenticAMD", 0x19)));
        assert!(!half_width_avx512((*b"AuthenticAMD", 0x1A)));
        assert!(!half_width_avx512((*b"AuthenticAMD", 0x17)));
        assert!(!half_width_avx512((*b"GenuineIntel", 0x6)));
    }

    #[test]
    fn winograd_matches_the_direct_conv_in_f64() {
        // (n, c, h, w, pad (t, l, b, r), o): odd and even outputs, rows of one and two vectors
        // of tiles, one sample and blocks past TILES, pads of 0 and 1 and uneven, output
        // channels past a multiple of MR.
        type Case = (usize, usize, usize, usize, [usize; 4], usize);
        let cases: &[Case] = &[
            (3, 16, 28, 28, [1; 4], 16),
            (2, 8, 27, 25, [1; 4], 8),
            (12, 16, 24, 24, [1; 4], 20),
            (1, 9, 5, 26, [0; 4], 11),
            (2, 12, 9, 34, [1, 0, 0, 1], 8),
            (2, 32, 30, 40, [1; 4], 32),
        ];
        if !crate::engine::conv_f32::applies_any_stride() {
            return; // No AVX-512 here: the engine does not take this path.
        }
        for &(n, c, h, w, pad, o) in cases {
            let g = ConvGeom::general(&[c, h, w], (3, 3), (1, 1), pad, (1, 1)).unwrap();
            assert!(
                applies(&g, o),
                "{n}×{c}×{h}×{w} pad {pad:?} o {o} takes this path"
            );
            let xs = data(n * c * h * w, 1);
            let wt = data(o * c * 9, 2);
            let bias = data(o, 3);
            let want = reference(&xs, n, &g, &wt, &bias);
            // Unclamped, and clamped as a following Clip(−0.5, 1.5) would be (a clamp only
            // brings values closer, so the tolerance holds).
            for clamp in [Clamp::NONE, crate::engine::conv_f32::tests::clip()] {
                let got = conv_f32_winograd(&xs, n, &g, (&wt, &bias, clamp));
                assert_eq!(got.len(), want.len());
                let (lo, hi) = clamp.bounds();
                for (i, (&y, &(r, mag))) in got.iter().zip(&want).enumerate() {
                    let (r, tol) = (r.clamp(lo as f64, hi as f64), 1e-5 * mag + 1e-6);
                    assert!(
                        (y as f64 - r).abs() <= tol,
                        "{n}×{c}×{h}×{w} pad {pad:?} o {o} {clamp:?}: output {i}: {y} vs {r}"
                    );
                }
                let cut = got.iter().filter(|&&y| y == lo || y == hi).count();
                assert_eq!(cut > 0, clamp != Clamp::NONE, "the clip cuts the outputs");
            }
        }
    }
}
