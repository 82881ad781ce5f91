//! A convolution over NCHW batches as GEMMs over im2col patches, one per channel group, shared
//! by both engines (the element types and the GEMM are the caller's).

use super::im2col::{ConvGeom, im2col_channels, samples_per_block};

/// Runs a conv of `groups` groups with `out_ch` output channels on `n` samples of `x`
/// ([n, g.c, g.h, g.w]); `gemm(group, cols, rows)` multiplies `rows` patch rows of
/// `g.c / groups · kh · kw` values by that group's weights and returns `rows × out_ch/groups`
/// values. Returns [n, out_ch, oh, ow].
pub fn conv_nchw<T: Copy, U: Copy + Default>(
    x: &[T],
    n: usize,
    g: &ConvGeom,
    groups: usize,
    out_ch: usize,
    pad: T,
    mut gemm: impl FnMut(usize, &[T], usize) -> Vec<U>,
) -> Vec<U> {
    let in_len = g.c * g.h * g.w;
    let pixels = g.out_pixels();
    let (cg, og) = (g.c / groups, out_ch / groups);
    let mut out = vec![U::default(); n * out_ch * pixels];
    let block = samples_per_block(g);
    for s0 in (0..n).step_by(block) {
        let bn = block.min(n - s0);
        let xs = &x[s0 * in_len..(s0 + bn) * in_len];
        for gi in 0..groups {
            let cols = im2col_channels(xs, bn, g, gi * cg, cg, pad);
            let y = gemm(gi, &cols, bn * pixels);
            for s in 0..bn {
                for p in 0..pixels {
                    let row = &y[(s * pixels + p) * og..(s * pixels + p + 1) * og];
                    for (c, &v) in row.iter().enumerate() {
                        out[((s0 + s) * out_ch + gi * og + c) * pixels + p] = v;
                    }
                }
            }
        }
    }
    out
}
