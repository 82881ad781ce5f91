//! The portable kernel: each input channel plane is widened once to centred i16 codes
//! (x − z_x, padding 0) split into stride phases (rows ≡ φ mod sh, columns ≡ ψ mod sw), each
//! phase a [rg, pg] grid. Every tap (ky, kx) is then one contiguous multiply-add of a phase
//! plane, shifted by a constant, over the whole output grid of the plane, which LLVM
//! vectorizes (i16 × i16 → i32, wrapping like the direct loop). The accumulators are then
//! requantized through the channel's verified line (or the fixed-point path). The same code is
//! compiled for AVX2 and picked at run time; there the multiply-adds take two taps per
//! `vpmaddwd` ([`super::pairs`]) and the f32 line runs 8 accumulators per vector
//! ([`super::line_avx2`]).

use super::{Grid, GroupConv};
use crate::engine::im2col::ConvGeom;

/// Whether the portable kernel takes geometry `g` (any geometry with a non-empty output).
pub(super) fn fits(g: &ConvGeom) -> bool {
    g.oh > 0 && g.ow > 0
}

/// The name of the variant [`run`] uses on this CPU.
pub(super) fn name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        return "avx2";
    }
    "portable"
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Runs `conv` on `n` samples of `x` ([n, g.c, g.h, g.w]) to [n, out, oh, ow].
pub(super) fn run(conv: &GroupConv, x: &[i8], n: usize, g: &ConvGeom) -> Vec<i8> {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { run_avx2(conv, x, n, g) };
    }
    body::<false>(conv, x, n, g)
}

/// [`body`] compiled for AVX2, its multiply-adds two taps at a time ([`super::pairs`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(conv: &GroupConv, x: &[i8], n: usize, g: &ConvGeom) -> Vec<i8> {
    body::<true>(conv, x, n, g)
}

/// Where each weight's tap reads: (phase plane within the group, offset into it), in weight
/// order [in/groups, kh, kw].
fn taps(conv: &GroupConv, grid: &Grid, cg: usize) -> Vec<(usize, usize)> {
    let (kh, kw) = conv.kernel;
    let phases = grid.sh * grid.sw;
    let mut t = Vec::with_capacity(cg * kh * kw);
    for icg in 0..cg {
        for ky in 0..kh {
            let (py, oy) = grid.row_tap(ky);
            for kx in 0..kw {
                let dx = kx * grid.dw;
                t.push((
                    icg * phases + py * grid.sw + dx % grid.sw,
                    oy + dx / grid.sw,
                ));
            }
        }
    }
    t
}

/// The kernel (see the module docs); `PAIRS`: the multiply-adds by [`super::pairs`] (only
/// where the CPU has AVX2).
#[inline(always)]
fn body<const PAIRS: bool>(conv: &GroupConv, x: &[i8], n: usize, g: &ConvGeom) -> Vec<i8> {
    let grid = Grid::new(g);
    let (plane, opix) = (g.h * g.w, g.out_pixels());
    let (cg, og) = (g.c / conv.groups, conv.out / conv.groups);
    let phases = grid.sh * grid.sw;
    // Taps read up to pg past the last grid row a valid output uses.
    let plen = (grid.rg + 1) * grid.pg;
    let points = grid.points();
    let taps = taps(conv, &grid, cg);
    let ntaps = taps.len();
    // The pairs kernel computes whole chunks of 16 points (one more chunk: its requantization
    // reads 16 from each row's start) and reads one value past them.
    let chunked = if PAIRS {
        points.next_multiple_of(16) + 16
    } else {
        points
    };
    let mut planes = vec![0i16; cg * phases * plen + (chunked - points) + 1];
    let mut acc = vec![0i32; chunked];
    // Each output channel's pairs of taps (none without the pairs kernel).
    let pair_channels = if PAIRS { conv.out } else { 0 };
    let pairs: Vec<_> = (0..pair_channels)
        .map(|oc| super::pairs::pairs(&taps, &conv.w[oc * ntaps..][..ntaps], plen))
        .collect();
    let mut y = vec![0i8; n * conv.out * opix];
    let z = conv.in_q.zero_point;
    for s in 0..n {
        for gi in 0..conv.groups {
            for icg in 0..cg {
                let src = &x[(s * g.c + gi * cg + icg) * plane..][..plane];
                let dst = &mut planes[icg * phases * plen..][..phases * plen];
                fill_phases(src, g, &grid, z, dst, plen);
            }
            for oc in gi * og..(gi + 1) * og {
                #[cfg(target_arch = "x86_64")]
                if PAIRS {
                    // SAFETY: `PAIRS` is only set by `run_avx2`, on a CPU with AVX2; `acc`
                    // holds whole chunks and `planes` the values the last one reads past.
                    unsafe {
                        super::pairs::accumulate(&planes, &pairs[oc], conv.bias[oc], &mut acc)
                    };
                    let out = &mut y[(s * conv.out + oc) * opix..][..opix];
                    let line = &conv.lines[oc];
                    match &line.f32 {
                        Some(l) if super::line_avx2::supported() => {
                            let dims = (grid.pg, grid.oh, grid.ow);
                            let (l, bounds) = ((l, line.a0), (conv.lo, conv.hi));
                            // SAFETY: AVX2 and FMA were detected; `acc` holds 16 values past
                            // the last point.
                            unsafe { super::line_avx2::rows(l, bounds, &acc, dims, out) };
                        }
                        _ => requant(conv, oc, &acc, &grid, out),
                    }
                    continue;
                }
                acc.fill(conv.bias[oc]);
                let wk = &conv.w[oc * ntaps..][..ntaps];
                for (&wt, &(p, off)) in wk.iter().zip(&taps) {
                    if wt != 0 {
                        mac(&mut acc, &planes[p * plen + off..][..points], wt);
                    }
                }
                let out = &mut y[(s * conv.out + oc) * opix..][..opix];
                requant(conv, oc, &acc, &grid, out);
            }
        }
    }
    y
}

/// Writes plane `src` ([h, w] codes) centred by `z` into its `sh·sw` phase planes of `plen`
/// in `dst` (padding positions are never written: they stay 0).
#[inline(always)]
fn fill_phases(src: &[i8], g: &ConvGeom, grid: &Grid, z: i32, dst: &mut [i16], plen: usize) {
    let sw = grid.sw;
    // Per column phase psi: the first column c0 landing in it, and its grid column.
    let cols: Vec<(usize, usize, usize)> = (0..sw)
        .map(|psi| {
            let c0 = (psi + sw - grid.pl % sw) % sw;
            (psi, c0, (c0 + grid.pl) / sw)
        })
        .filter(|&(_, c0, _)| c0 < g.w)
        .collect();
    let (mut phase, mut rho) = (grid.pt % grid.sh, grid.pt / grid.sh);
    for row in src.chunks_exact(g.w) {
        for &(psi, c0, k0) in &cols {
            let at = (phase * sw + psi) * plen + rho * grid.pg;
            let d = &mut dst[at + k0..at + grid.pg];
            if sw == 1 {
                for (o, &v) in d.iter_mut().zip(&row[c0..]) {
                    *o = (v as i32 - z) as i16;
                }
            } else if sw == 2 {
                // Pairs, then the odd last column: a loop LLVM vectorizes.
                let r = &row[c0..];
                let pairs = r.chunks_exact(2);
                let last = pairs.remainder().first().copied();
                let n = pairs.len();
                for (o, p) in d.iter_mut().zip(pairs) {
                    *o = (p[0] as i32 - z) as i16;
                }
                if let (Some(v), Some(o)) = (last, d.get_mut(n)) {
                    *o = (v as i32 - z) as i16;
                }
            } else {
                for (o, &v) in d.iter_mut().zip(row[c0..].iter().step_by(sw)) {
                    *o = (v as i32 - z) as i16;
                }
            }
        }
        phase += 1;
        if phase == grid.sh {
            (phase, rho) = (0, rho + 1);
        }
    }
}

/// acc += wt · src, wrapping as the direct loop does.
#[inline(always)]
fn mac(acc: &mut [i32], src: &[i16], wt: i16) {
    let w = i32::from(wt);
    for (a, &v) in acc.iter_mut().zip(src) {
        *a = a.wrapping_add(w * i32::from(v));
    }
}

/// Requantizes output channel `oc`'s grid accumulators into its plane `out` ([oh, ow]).
#[inline(always)]
fn requant(conv: &GroupConv, oc: usize, acc: &[i32], grid: &Grid, out: &mut [i8]) {
    let line = &conv.lines[oc];
    for oy in 0..grid.oh {
        let dst = &mut out[oy * grid.ow..(oy + 1) * grid.ow];
        let src = &acc[oy * grid.pg..oy * grid.pg + grid.ow];
        if line.unfused {
            for (d, &a) in dst.iter_mut().zip(src) {
                *d = line.eval_unfused(a);
            }
        } else {
            for (d, &a) in dst.iter_mut().zip(src) {
                *d = line.exact(a);
            }
        }
    }
}
