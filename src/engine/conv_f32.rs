//! The float engine's stride-1 conv without a patch matrix: each sample is copied once into a
//! zero-padded NCHW image, and output pixel p (counted along rows of the padded width, the
//! pixels past `ow` computed and dropped) of tap k = (c, ky, kx) reads image element
//! p + off_k, off_k = c·hp·wp + ky·dh·wp + kx·dw. So a run of pixels of one tap is one
//! contiguous vector load, and an AVX-512 tile of 8 output channels × 32 pixels is bias plus
//! one fused multiply-add per tap in tap order. Ungrouped convs of stride 1 only; the rest
//! keep im2col and the sgemm.
//!
//! Grouped and depthwise convs (stride 1 or 2 across) read the same padded image: each output
//! row 16 pixels to a vector, four rows at a time, one fused multiply-add per (channel, tap).

use super::clamp_f32::Clamp;
use super::im2col::{ConvGeom, copy_short};
use std::mem::MaybeUninit;

/// Output channels per tile.
pub(super) const MR: usize = 8;
/// Vectors of 16 pixels per tile.
const NV: usize = 2;
/// Pixels per tile.
pub(super) const NR: usize = 16 * NV;

/// Whether this CPU has AVX-512F (detected once): the padded-image kernels' wide tiles, the
/// strided kernel's, Winograd's transforms and the float linear layer's.
pub fn applies_any_stride() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether [`conv_f32_padded`] runs geometry `g` on this CPU: stride 1, and AVX-512F or
/// AVX2 with FMA (the tile of `conv_f32_avx2`).
pub fn applies(g: &ConvGeom) -> bool {
    g.stride == (1, 1) && has_tiles()
}

/// Whether this CPU runs the padded-image kernels at all: AVX-512F, or AVX2 with FMA.
pub fn has_tiles() -> bool {
    applies_any_stride() || super::conv_f32_avx2::supported()
}

/// The ungrouped conv of `n` NCHW samples `xs` with weights `w` ([o, c · kh · kw]) and `bias`:
/// [n, o, oh, ow], each output clamp(bias + Σ_k w_k · x_k), the sum in tap order with fused
/// multiply-adds.
///
/// # Panics
/// Unless [`applies`]`(g)`, or if the slices do not match the geometry.
pub fn conv_f32_padded(
    xs: &[f32],
    n: usize,
    g: &ConvGeom,
    wbc: (&[f32], &[f32], Clamp),
) -> Vec<f32> {
    assert!(applies(g), "a stride-1 conv on an AVX-512 or AVX2 CPU");
    padded_with(xs, n, g, wbc, applies_any_stride())
}

/// [`conv_f32_padded`] on the AVX-512 tile (`wide`) or the AVX2 one, which must be supported.
fn padded_with(
    xs: &[f32],
    n: usize,
    g: &ConvGeom,
    (w, bias, clamp): (&[f32], &[f32], Clamp),
    wide: bool,
) -> Vec<f32> {
    let ((kh, kw), c) = (g.kernel, g.c);
    let (hp, wp) = g.padded_dims();
    let (o, k, pixels) = (bias.len(), c * kh * kw, g.out_pixels());
    assert_eq!(w.len(), o * k, "weights [o, c·kh·kw]");
    assert_eq!(xs.len(), n * c * g.h * g.w, "input [n, c, h, w]");
    // Not zeroed first: the tiles (and the copies out of `tile_out`) write every element, so a
    // memset would only add a pass over memory.
    let len = n * o * pixels;
    let mut y = Vec::<f32>::with_capacity(len);
    if pixels == 0 || o == 0 {
        return y;
    }
    let offsets = tap_offsets(c, g);
    // Output channels per tile: the AVX2 tile takes fewer (its registers hold fewer sums).
    let mr = if wide { MR } else { super::conv_f32_avx2::MR };
    let step = if wide { NR } else { super::conv_f32_avx2::NR };
    let packed = pack(w, (o, k), mr);
    // Pixels along padded rows up to the last output pixel; a tile may read NR past them.
    let virt = (g.oh - 1) * wp + g.ow;
    let sample = c * g.h * g.w;
    let mut img = vec![0f32; c * hp * wp + NR];
    // Rows as wide as the output (no horizontal padding, as a 1×1 conv): the tiles write the
    // output planes directly (reading the sample in place instead of its copy was slower).
    let direct = wp == g.ow;
    let mut tile_out = vec![MaybeUninit::new(0f32); if direct { 0 } else { mr * virt }];
    let outs = &mut y.spare_capacity_mut()[..len];
    for (x1, ys) in xs
        .chunks_exact(sample)
        .zip(outs.chunks_exact_mut(o * pixels))
    {
        fill_padded(&mut img, x1, g);
        for (ob, wk) in packed.chunks_exact(mr * k).enumerate() {
            let rows = mr.min(o - ob * mr);
            let mut b = [0f32; MR];
            b[..rows].copy_from_slice(&bias[ob * mr..ob * mr + rows]);
            let (dst, stride) = if direct {
                (&mut ys[ob * mr * pixels..], pixels)
            } else {
                (&mut tile_out[..], virt)
            };
            assert!(dst.len() >= (rows - 1) * stride + virt, "tile rows inside");
            for p0 in (0..virt).step_by(step) {
                let lanes = step.min(virt - p0);
                let (x, out) = (img[p0..].as_ptr(), dst[p0..].as_mut_ptr().cast::<f32>());
                // SAFETY: AVX-512F or AVX2 + FMA per `applies` (the caller's `wide`); every
                // tap reads img[p0 + off .. p0 + off + step], inside the image plus its NR ≥
                // step slack since p0 < virt and virt − 1 + off is a padded-image element;
                // `wk` holds mr weights per tap;
                // the tile writes `rows` rows of `lanes` values at `stride` inside `dst`
                // (asserted above).
                unsafe {
                    if wide {
                        tile(x, &offsets, (wk, &b, clamp), out, (rows, lanes, stride))
                    } else {
                        super::conv_f32_avx2::tile(
                            x,
                            &offsets,
                            (wk, &b, clamp),
                            out,
                            (rows, lanes, stride),
                        )
                    }
                };
            }
            if direct {
                continue;
            }
            // Each output row's ow pixels, dropping the columns past them.
            for (r, vrow) in tile_out.chunks_exact(virt).take(rows).enumerate() {
                let plane = &mut ys[(ob * mr + r) * pixels..(ob * mr + r + 1) * pixels];
                for (oy, dst) in plane.chunks_exact_mut(g.ow).enumerate() {
                    copy_short(dst, &vrow[oy * wp..oy * wp + g.ow]);
                }
            }
        }
    }
    // SAFETY: for every sample and block of output channels, the tiles wrote each of the
    // block's rows over pixels 0 .. virt (steps of `step`, the last one's lanes masked): with
    // `direct` that is every output pixel in place, otherwise `tile_out`, whose ow columns of
    // each of the oh rows were then copied into the output plane. So all `len` are written.
    unsafe { y.set_len(len) };
    y
}

/// Whether [`group_conv_f32_padded`] runs geometry `g` on this CPU: AVX-512F (or AVX2 with
/// FMA) and a horizontal stride of 1 or 2.
pub fn group_applies(g: &ConvGeom) -> bool {
    has_tiles() && matches!(g.stride.1, 1 | 2)
}

/// A grouped (or depthwise) conv of `n` NCHW samples with weights [o, c / groups, kh, kw] and
/// `bias`: [n, o, oh, ow]. Each output row is computed 16 pixels to a vector, bias plus one
/// fused multiply-add per (input channel of the group, tap), read from a zero-padded copy of
/// the sample (a horizontal stride of 2 takes the even lanes of two loads).
///
/// # Panics
/// Unless [`group_applies`]`(g)`, or if the slices do not match the geometry.
pub fn group_conv_f32_padded(
    xs: &[f32],
    n: usize,
    g: &ConvGeom,
    (w, bias, clamp): (&[f32], &[f32], Clamp),
    groups: usize,
) -> Vec<f32> {
    assert!(
        group_applies(g),
        "stride 1 or 2 across, on an AVX-512 or AVX2 CPU"
    );
    group_with(xs, n, g, (w, bias, clamp), groups, applies_any_stride())
}

/// [`group_conv_f32_padded`] on the AVX-512 rows (`wide`) or the AVX2 ones, which must be
/// supported.
fn group_with(
    xs: &[f32],
    n: usize,
    g: &ConvGeom,
    (w, bias, clamp): (&[f32], &[f32], Clamp),
    groups: usize,
    wide: bool,
) -> Vec<f32> {
    let (out, pixels) = (bias.len(), g.out_pixels());
    let (cg, og) = (g.c / groups.max(1), out / groups.max(1));
    let (hp, wp) = g.padded_dims();
    assert_eq!(
        w.len(),
        out * cg * g.kernel.0 * g.kernel.1,
        "weights [o, c/groups, kh, kw]"
    );
    assert_eq!(xs.len(), n * g.c * g.h * g.w, "input [n, c, h, w]");
    // Not zeroed first: each output plane is written whole by its channel's rows.
    let len = n * out * pixels;
    let mut y = Vec::<f32>::with_capacity(len);
    if pixels == 0 || og == 0 {
        return y;
    }
    let mut img = vec![0f32; g.c * hp * wp + NR];
    let offsets = tap_offsets(cg, g);
    for (x1, ys) in xs
        .chunks_exact(g.c * g.h * g.w)
        .zip(y.spare_capacity_mut()[..len].chunks_exact_mut(out * pixels))
    {
        fill_padded(&mut img, x1, g);
        for (oc, plane) in ys.chunks_exact_mut(pixels).enumerate() {
            let first = (oc / og) * cg * hp * wp;
            let taps = &w[oc * cg * g.kernel.0 * g.kernel.1..][..cg * g.kernel.0 * g.kernel.1];
            // SAFETY: AVX-512F or AVX2 + FMA per `group_applies` (the caller's `wide`); the
            // image holds the group's channels from `first`, every read of a row lies inside
            // the padded image plus its NR slack, and `plane` is one output plane.
            let tw = (&offsets[..], taps, bias[oc], clamp);
            let img = &img[first..];
            unsafe {
                if wide {
                    channel_rows(img, (hp, wp), g, tw, plane)
                } else {
                    super::conv_f32_avx2::channel_rows(img, (hp, wp), g, tw, plane)
                }
            };
        }
    }
    // SAFETY: every plane of every sample went through `channel_rows`, which writes each of
    // its oh rows over all ow pixels (vectors of 16, the last one masked).
    unsafe { y.set_len(len) };
    y
}

/// One output plane of a grouped conv: rows of `g.ow` pixels, 16 per vector, from the padded
/// image `img` (the group's channels, each [hp, wp]) with weights `taps` ([cg, kh, kw]),
/// clamped as they are stored.
///
/// # Safety
/// AVX-512F; `img` holds the group's planes plus NR floats past the last.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn channel_rows(
    img: &[f32],
    (hp, wp): (usize, usize),
    g: &ConvGeom,
    (offsets, taps, bias, clamp): (&[usize], &[f32], f32, Clamp),
    plane: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    assert_eq!(plane.len(), g.oh * g.ow, "one output plane");
    let (lo, hi) = clamp.bounds();
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let (sh, sw) = g.stride;
    let cg = taps.len() / (g.kernel.0 * g.kernel.1);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    assert!(
        img.len() >= cg * hp * wp + NR,
        "the group's planes and the slack"
    );
    // RB output rows at a time: independent sums, so the multiply-adds overlap instead of
    // waiting on one another. Past the last row, the last row is computed again (not stored).
    const RB: usize = 4;
    for oy0 in (0..g.oh).step_by(RB) {
        let nr = RB.min(g.oh - oy0);
        let rows: [usize; RB] = std::array::from_fn(|r| (oy0 + r.min(nr - 1)) * sh * wp);
        for ox0 in (0..g.ow).step_by(16) {
            let lanes = (g.ow - ox0).min(16);
            let mut acc = [_mm512_set1_ps(bias); RB];
            for (&off, &wt) in offsets.iter().zip(taps) {
                let wv = _mm512_set1_ps(wt);
                for (a, &row) in acc.iter_mut().zip(&rows) {
                    let at = row + ox0 * sw + off;
                    // SAFETY: a tap reads a row of the group's planes ((oy·sh + ky·dh) < hp)
                    // from column ox0·sw + kx·dw < wp, so `at` + 32 ≤ cg·hp·wp + NR (asserted
                    // above).
                    let v = unsafe {
                        let p = img.as_ptr().add(at);
                        if sw == 1 {
                            _mm512_loadu_ps(p)
                        } else {
                            let hi = _mm512_loadu_ps(p.add(16));
                            _mm512_permutex2var_ps(_mm512_loadu_ps(p), even, hi)
                        }
                    };
                    *a = _mm512_fmadd_ps(wv, v, *a);
                }
            }
            let m: u16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
            for (r, a) in acc.iter().enumerate().take(nr) {
                let at = (oy0 + r) * g.ow + ox0;
                let a = _mm512_min_ps(hi, _mm512_max_ps(lo, *a));
                // SAFETY: lanes ox0 .. ox0 + lanes ≤ ow of output row oy0 + r < oh, masked.
                unsafe { _mm512_mask_storeu_ps(plane.as_mut_ptr().add(at).cast(), m, a) };
            }
        }
    }
}

/// Not built off x86-64: [`group_applies`] is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn channel_rows(
    _: &[f32],
    _: (usize, usize),
    _: &ConvGeom,
    _: (&[usize], &[f32], f32, Clamp),
    _: &mut [MaybeUninit<f32>],
) {
    unreachable!("group_applies() is false off x86-64")
}

/// Each tap's element offset in a padded image ([c, hp, wp]) from its output pixel's first
/// element, in the weights' (channel, ky, kx) order, over `c` channels.
pub(super) fn tap_offsets(c: usize, g: &ConvGeom) -> Vec<usize> {
    let ((kh, kw), (dh, dw)) = (g.kernel, g.dilation);
    let (hp, wp) = g.padded_dims();
    (0..c)
        .flat_map(|ch| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (ch, ky, kx))))
        .map(|(ch, ky, kx)| ch * hp * wp + ky * dh * wp + kx * dw)
        .collect()
}

/// Copies sample `x1` ([c, h, w]) into the interior of the padded image `img` ([c, hp, wp],
/// then slack), row by row; the border is never written, so it stays zero from the image's
/// creation.
pub(super) fn fill_padded(img: &mut [f32], x1: &[f32], g: &ConvGeom) {
    let (hp, wp) = g.padded_dims();
    if hp == g.h && wp == g.w {
        img[..x1.len()].copy_from_slice(x1);
        return;
    }
    for (ch, plane) in x1.chunks_exact(g.h * g.w).enumerate() {
        for (r, row) in plane.chunks_exact(g.w).enumerate() {
            let at = ch * hp * wp + (r + g.pad[0]) * wp + g.pad[1];
            copy_short(&mut img[at..at + g.w], row);
        }
    }
}

/// Weights [o, k] as blocks of `block` output channels, tap by tap: [o / block][k][block], zero
/// rows past o.
pub(super) fn pack(w: &[f32], (o, k): (usize, usize), block: usize) -> Vec<f32> {
    let mut p = vec![0f32; o.div_ceil(block) * k * block];
    for (r, row) in w.chunks_exact(k).enumerate() {
        let (ob, lane) = (r / block, r % block);
        for (t, &v) in row.iter().enumerate() {
            p[(ob * k + t) * block + lane] = v;
        }
    }
    p
}

/// One tile: rows r < `rows` of `out` (stride `ld`), lanes < `lanes`, get
/// clamp(bias[r] + Σ_t w[t][r] · img[off_t + lane]) with the sum in tap order.
///
/// # Safety
/// AVX-512F; img[off + 0 .. off + NR] readable for every offset; `w` holds MR values per offset;
/// `out` writable for `rows` rows of `lanes` values at stride `ld`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile(
    img: *const f32,
    offsets: &[usize],
    (w, bias, clamp): (&[f32], &[f32; MR], Clamp),
    out: *mut f32,
    (rows, lanes, ld): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
    let (lo, hi) = clamp.bounds();
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for (a, &b) in acc.iter_mut().zip(bias) {
        *a = [_mm512_set1_ps(b); NV];
    }
    for (&off, wt) in offsets.iter().zip(w.chunks_exact(MR)) {
        // SAFETY: per this fn's contract.
        let x: [__m512; NV] =
            std::array::from_fn(|v| unsafe { _mm512_loadu_ps(img.add(off + 16 * v)) });
        for (a, &wv) in acc.iter_mut().zip(wt) {
            let wv = _mm512_set1_ps(wv);
            for (a, &x) in a.iter_mut().zip(&x) {
                *a = _mm512_fmadd_ps(wv, x, *a);
            }
        }
    }
    let mask = |from: usize| -> u16 {
        let n = lanes.saturating_sub(from).min(16);
        if n == 16 { !0 } else { (1u16 << n) - 1 }
    };
    for (r, a) in acc.iter().enumerate().take(rows) {
        // SAFETY: row r < rows, lanes ≤ NR masked, per this fn's contract.
        for (v, &a) in a.iter().enumerate() {
            let a = _mm512_min_ps(hi, _mm512_max_ps(lo, a));
            unsafe { _mm512_mask_storeu_ps(out.wrapping_add(r * ld + 16 * v), mask(16 * v), a) };
        }
    }
}

/// Not built off x86-64: [`applies`] is false there.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn tile(
    _: *const f32,
    _: &[usize],
    _: (&[f32], &[f32; MR], Clamp),
    _: *mut f32,
    _: (usize, usize, usize),
) {
    unreachable!("applies() is false off x86-64")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The conv in f64 straight from its definition, and Σ|w·x| + |b| per output (the scale
    /// of f32 rounding in any summation order).
    fn reference(
        xs: &[f32],
        (n, groups): (usize, usize),
        g: &ConvGeom,
        w: &[f32],
        bias: &[f32],
    ) -> Vec<(f64, f64)> {
        let ((kh, kw), (dh, dw), (sh, sw), c) = (g.kernel, g.dilation, g.stride, g.c);
        let (cg, og) = (c / groups, bias.len() / groups);
        let mut out = Vec::new();
        for s in 0..n {
            for (o, &b) in bias.iter().enumerate() {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let (mut sum, mut mag) = (b as f64, (b as f64).abs());
                        for icg in 0..cg {
                            let ch = o / og * cg + icg;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let y = (oy * sh + ky * dh) as isize - g.pad[0] as isize;
                                    let x = (ox * sw + kx * dw) as isize - g.pad[1] as isize;
                                    if y < 0 || x < 0 || y >= g.h as isize || x >= g.w as isize {
                                        continue;
                                    }
                                    let at = ((s * c + ch) * g.h + y as usize) * g.w + x as usize;
                                    let (v, wt) = (xs[at], w[((o * cg + icg) * kh + ky) * kw + kx]);
                                    sum += v as f64 * wt as f64;
                                    mag += (v as f64 * wt as f64).abs();
                                }
                            }
                        }
                        out.push((sum, mag));
                    }
                }
            }
        }
        out
    }

    /// Clip(−0.5, 1.5): both bounds inside the outputs' range.
    pub(in crate::engine) fn clip() -> Clamp {
        Clamp::clip(-0.5, 1.5).expect("lo ≤ hi")
    }

    /// Runs `conv` (input, weights, bias, clamp) on smooth inputs with large and small values,
    /// unclamped and clamped by [`clip`], and holds every output to the f64 definition (then
    /// clamped) within f32 rounding in any summation order (a clamp only brings values closer).
    fn check(
        g: &ConvGeom,
        (n, o, groups): (usize, usize, usize),
        conv: impl Fn(&[f32], &[f32], &[f32], Clamp) -> Vec<f32>,
    ) {
        check_clamped(g, (n, o, groups), Clamp::NONE, &conv);
        check_clamped(g, (n, o, groups), clip(), &conv);
    }

    /// [`check`] with one clamp.
    fn check_clamped(
        g: &ConvGeom,
        (n, o, groups): (usize, usize, usize),
        clamp: Clamp,
        conv: impl Fn(&[f32], &[f32], &[f32], Clamp) -> Vec<f32>,
    ) {
        let (c, taps) = (g.c, g.kernel.0 * g.kernel.1);
        let cg = c / groups;
        let wave = |i: usize, f: f32| ((i as f32 * f).sin() * 1.7).powi(3);
        let xs: Vec<f32> = (0..n * c * g.h * g.w).map(|i| wave(i, 0.37)).collect();
        let wt: Vec<f32> = (0..o * cg * taps).map(|i| wave(i, 0.91)).collect();
        let bias: Vec<f32> = (0..o).map(|i| i as f32 * 0.25 - 1.0).collect();
        let got = conv(&xs, &wt, &bias, clamp);
        let want = reference(&xs, (n, groups), g, &wt, &bias);
        assert_eq!(got.len(), want.len(), "c {c} o {o} groups {groups}");
        let (lo, hi) = clamp.bounds();
        let mut clamped = 0;
        for (i, (&y, &(r, mag))) in got.iter().zip(&want).enumerate() {
            let r = r.clamp(lo as f64, hi as f64);
            clamped += usize::from(y == lo || y == hi);
            let tol = 2.0 * f32::EPSILON as f64 * (cg * taps + 1) as f64 * mag + 1e-30;
            let at = format!("c {c} o {o} groups {groups} at {i}: {y} vs {r}");
            assert!((y as f64 - r).abs() <= tol, "{at}");
        }
        // The clip bounds cut both tails of these outputs.
        assert_eq!(
            clamped > 0,
            clamp != Clamp::NONE,
            "c {c} o {o} groups {groups}"
        );
    }

    /// Each tile this CPU has: `true` the AVX-512 one, `false` the AVX2 one (none: the engine
    /// keeps the im2col path and the plain loops).
    fn tiles() -> Vec<bool> {
        let avx2 = crate::engine::conv_f32_avx2::supported();
        [(true, applies_any_stride()), (false, avx2)]
            .into_iter()
            .filter_map(|(wide, ok)| ok.then_some(wide))
            .collect()
    }

    #[test]
    fn stride_one_convs_match_the_f64_definition() {
        // Output channels past a multiple of 8, pixel counts past a multiple of 32, asymmetric
        // padding, dilations, 1×1, a kernel as large as the padded image.
        for (c, o, (kh, kw), pad, dil, (h, w)) in [
            (3, 5, (3, 3), [1, 1, 1, 1], (1, 1), (7, 9)),
            (16, 16, (3, 3), [1, 1, 1, 1], (1, 1), (28, 28)),
            (2, 9, (3, 2), [0, 2, 1, 0], (2, 1), (7, 9)),
            (4, 3, (2, 3), [2, 0, 0, 1], (1, 3), (8, 11)),
            (8, 17, (1, 1), [0, 0, 0, 0], (1, 1), (5, 6)),
            (1, 2, (5, 5), [0, 0, 0, 0], (1, 1), (5, 5)),
            // Rows as wide as the output (the tiles write the output planes directly).
            (5, 13, (3, 1), [1, 0, 1, 0], (1, 1), (9, 20)),
            (24, 40, (1, 1), [0, 0, 0, 0], (1, 1), (16, 16)),
        ] {
            let n = 2;
            let g = ConvGeom::general(&[c, h, w], (kh, kw), (1, 1), pad, dil).unwrap();
            for wide in tiles() {
                check(&g, (n, o, 1), |xs, wt, bias, clamp| {
                    padded_with(xs, n, &g, (wt, bias, clamp), wide)
                });
            }
        }
    }

    #[test]
    fn grouped_and_depthwise_convs_match_the_f64_definition() {
        // Depthwise at strides 1 and 2 (across and down), rows past a multiple of 4 and of 16
        // pixels (row ends through each of the 8-, 4-, 2- and 1-float stores of both halves),
        // two channels per group, a dilation, asymmetric padding.
        for (c, o, groups, (kh, kw), stride, pad, dil, (h, w)) in [
            (8, 8, 8, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), (7, 9)),
            (6, 6, 6, (3, 3), (2, 2), [1, 1, 1, 1], (1, 1), (19, 37)),
            (4, 8, 2, (3, 2), (1, 2), [0, 2, 1, 0], (2, 1), (9, 21)),
            (3, 6, 3, (5, 5), (2, 1), [2, 2, 2, 2], (1, 2), (11, 18)),
            // Row ends of 7 (4 + 2 + 1 lanes) and 16 + 5 pixels.
            (4, 4, 4, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), (5, 7)),
            (2, 2, 2, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), (3, 21)),
        ] {
            let n = 2;
            let g = ConvGeom::general(&[c, h, w], (kh, kw), stride, pad, dil).unwrap();
            for wide in tiles() {
                check(&g, (n, o, groups), |xs, wt, bias, clamp| {
                    group_with(xs, n, &g, (wt, bias, clamp), groups, wide)
                });
            }
        }
    }

    #[test]
    fn strided_convs_match_the_f64_definition() {
        // The channels-in-lanes kernel: strides 2 and 3 and mixed, output channels past a
        // multiple of 32, pixels past a multiple of 8, dilation, asymmetric padding, a 1×1
        // downsample and a 3×3 without padding (both read the sample in place), and a
        // stride-1 conv (it takes any stride).
        for (c, o, (kh, kw), stride, pad, dil, (h, w)) in [
            (16, 32, (3, 3), (2, 2), [1, 1, 1, 1], (1, 1), (28, 28)),
            (3, 37, (3, 3), (2, 2), [1, 0, 2, 1], (1, 1), (9, 11)),
            (4, 5, (1, 1), (2, 2), [0, 0, 0, 0], (1, 1), (7, 9)),
            (3, 16, (3, 3), (2, 2), [0, 0, 0, 0], (1, 1), (9, 10)),
            (2, 9, (3, 2), (3, 1), [0, 2, 1, 0], (2, 1), (13, 9)),
            (5, 33, (2, 3), (1, 2), [2, 0, 0, 1], (1, 3), (8, 17)),
            (6, 8, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), (5, 6)),
        ] {
            let n = 2;
            let g = ConvGeom::general(&[c, h, w], (kh, kw), stride, pad, dil).unwrap();
            for wide in tiles() {
                check(&g, (n, o, 1), |xs, wt, bias, clamp| {
                    crate::engine::conv_f32_strided::strided_with(
                        xs,
                        n,
                        &g,
                        (wt, bias, clamp),
                        wide,
                    )
                });
            }
        }
    }
}
