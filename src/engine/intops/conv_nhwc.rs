//! An ungrouped integer conv over channels-last patches: the input is turned channels-last
//! once, so each kernel row of a patch is one contiguous copy of kw · c codes (NCHW patches copy
//! kw codes per channel), and the GEMM's weights are ordered (ky, kx, channel) to match.
//! Integer sums are the same in any order, so the output equals the NCHW im2col path exactly.

use crate::engine::im2col::{
    ConvGeom, im2col_columns, im2col_nhwc, nchw_to_nhwc, samples_per_block, transpose,
};
use crate::engine::int::IntGemm;
use crate::quant::QParams;
use crate::quant::weights::QWeights;

/// An ungrouped conv whose weights have one scale per output channel (or per tensor).
#[derive(Debug)]
pub struct NhwcConv {
    gemm: IntGemm,
}

impl NhwcConv {
    /// The kernel for weights `w` ([out, c · kh · kw] in (c, ky, kx) order); `None` when the
    /// weights are quantized in groups along a row (reordering columns would mix the groups).
    pub fn new(
        w: &QWeights,
        bias: &[f32],
        (c, kh, kw): (usize, usize, usize),
        (in_q, out_q): (QParams, QParams),
        clamp: Option<(f32, f32)>,
    ) -> Option<Self> {
        if w.groups() != 1 || w.cols != c * kh * kw {
            return None;
        }
        let mut reordered = w.clone();
        for (dst, src) in reordered
            .q
            .chunks_exact_mut(w.cols)
            .zip(w.q.chunks_exact(w.cols))
        {
            for ch in 0..c {
                for t in 0..kh * kw {
                    dst[t * c + ch] = src[ch * kh * kw + t];
                }
            }
        }
        Some(NhwcConv {
            gemm: IntGemm::new(&reordered, bias, in_q, out_q, clamp),
        })
    }

    /// The qparams of the input the kernel expects.
    pub fn in_q(&self) -> QParams {
        self.gemm.in_q
    }

    /// The qparams of the output it produces.
    pub fn out_q(&self) -> QParams {
        self.gemm.out_q
    }

    /// Runs `n` NCHW samples `x` ([n, g.c, g.h, g.w]) with out-of-image taps at `pad` (the
    /// input zero point): [n, out, g.oh, g.ow].
    pub fn run(&self, x: &[i8], n: usize, g: &ConvGeom, pad: i8) -> Vec<i8> {
        let (plane, pixels, o) = (g.h * g.w, g.out_pixels(), self.gemm.out_channels());
        let mut out = vec![0i8; n * o * pixels];
        let mut scratch = (Vec::new(), Vec::new());
        let block = samples_per_block(g);
        for s0 in (0..n).step_by(block) {
            let bn = block.min(n - s0);
            let xs = &x[s0 * g.c * plane..(s0 + bn) * g.c * plane];
            let y = self
                .gemm
                .run(patches(xs, bn, g, pad, &mut scratch), bn * pixels);
            let dst = &mut out[s0 * o * pixels..(s0 + bn) * o * pixels];
            for (ys, ds) in y
                .chunks_exact(pixels * o)
                .zip(dst.chunks_exact_mut(o * pixels))
            {
                transpose(ys, pixels, o, ds);
            }
        }
        out
    }
}

/// The patch rows [bn · pixels, kh · kw · c] of `bn` NCHW samples, built in `scratch`: a
/// staging buffer (the channels-last input, or one sample's tap planes) and the rows.
fn patches<'s>(
    xs: &[i8],
    bn: usize,
    g: &ConvGeom,
    pad: i8,
    (staged, rows): &'s mut (Vec<i8>, Vec<i8>),
) -> &'s [i8] {
    let (plane, pixels, k) = (g.h * g.w, g.out_pixels(), g.k());
    if g.c == 1 {
        // One channel: the rows are the transpose of the per-tap shifted planes (a few wide
        // copies instead of one short copy per kernel row and pixel).
        rows.resize(bn * pixels * k, 0);
        for (x1, dst) in xs
            .chunks_exact(plane)
            .zip(rows.chunks_exact_mut(pixels * k))
        {
            im2col_columns(x1, g, pad, staged);
            transpose(staged, k, pixels, dst);
        }
        return rows;
    }
    nchw_to_nhwc(xs, bn, g.c, plane, staged);
    if g.kernel == (1, 1) && g.stride == (1, 1) && g.pad == [0; 4] {
        // A 1×1 conv's patches are the channels-last input itself.
        return staged;
    }
    *rows = im2col_nhwc(staged, bn, g, pad);
    rows
}
