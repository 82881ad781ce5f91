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

/// acc += one input channel plane `xp` ([g.h, g.w]) convolved with the kernel `wk`
/// ([kh, kw]) at the geometry's stride, dilation and padding (padding taps add nothing); `acc`
/// is one output plane [g.oh, g.ow]. The direct loop of grouped and depthwise convs, shared
/// by both engines (f32 in f32, centred i16 codes in i32).
pub fn conv_channel<T, A>(xp: &[T], wk: &[T], g: &ConvGeom, acc: &mut [A])
where
    T: Copy + Default + PartialEq + Into<A>,
    A: Copy + std::ops::Mul<Output = A> + std::ops::AddAssign,
{
    let (kh, kw) = g.kernel;
    let (sh, sw) = g.stride;
    let (dh, dw) = g.dilation;
    for ky in 0..kh {
        for kx in 0..kw {
            let wt = wk[ky * kw + kx];
            if wt == T::default() {
                continue;
            }
            let wv: A = wt.into();
            let (ox0, ox1) = valid_range(g.ow, g.w, sw, kx * dw, g.pad[1]);
            if ox0 >= ox1 {
                continue;
            }
            let ix0 = ox0 * sw + kx * dw - g.pad[1];
            for oy in 0..g.oh {
                let iy = (oy * sh + ky * dh) as isize - g.pad[0] as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let row = &xp[iy as usize * g.w..(iy as usize + 1) * g.w];
                let a = &mut acc[oy * g.ow + ox0..oy * g.ow + ox1];
                if sw == 1 {
                    for (o, &v) in a.iter_mut().zip(&row[ix0..]) {
                        *o += wv * v.into();
                    }
                } else {
                    for (o, &v) in a.iter_mut().zip(row[ix0..].iter().step_by(sw)) {
                        *o += wv * v.into();
                    }
                }
            }
        }
    }
}

/// The output columns [lo, hi) whose input column o·s + off − pad lies in [0, len).
fn valid_range(out: usize, len: usize, s: usize, off: usize, pad: usize) -> (usize, usize) {
    let lo = if pad > off {
        (pad - off).div_ceil(s)
    } else {
        0
    };
    let hi = if len + pad > off {
        (len + pad - off).div_ceil(s)
    } else {
        0
    };
    (lo.min(out), hi.min(out))
}

/// A grouped conv of `n` f32 samples ([n, g.c, g.h, g.w]) with weights [out, c/groups, kh, kw]
/// and a bias, as direct loops (no im2col): [n, out, oh, ow].
pub fn group_conv_f32(
    x: &[f32],
    n: usize,
    g: &ConvGeom,
    (w, bias, clamp): (&[f32], &[f32], super::clamp_f32::Clamp),
    groups: usize,
) -> Vec<f32> {
    let (plane, opix, out) = (g.h * g.w, g.out_pixels(), bias.len());
    let (cg, og) = (g.c / groups, out / groups.max(1));
    let taps = g.kernel.0 * g.kernel.1;
    let mut y = vec![0f32; n * out * opix];
    for s in 0..n {
        for oc in 0..out {
            let acc = &mut y[(s * out + oc) * opix..(s * out + oc + 1) * opix];
            acc.fill(bias[oc]);
            let c0 = (oc / og) * cg;
            for icg in 0..cg {
                let xp = &x[(s * g.c + c0 + icg) * plane..][..plane];
                conv_channel(xp, &w[(oc * cg + icg) * taps..][..taps], g, acc);
            }
        }
        clamp.apply(&mut y[s * out * opix..(s + 1) * out * opix]);
    }
    y
}
