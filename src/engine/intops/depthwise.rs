//! Depthwise and grouped convolution in integers, a direct loop over NCHW codes (no im2col):
//! acc = bias_q + Σ (x − z_x)(w − z_w) over the group's channels and kernel taps in i32
//! (padding taps add nothing), then y = clamp(z_o + M_c · acc) with M_c = s_x · s_w,c / s_o.

use crate::engine::conv::conv_channel;
use crate::engine::im2col::ConvGeom;
use crate::quant::weights::QWeights;
use crate::quant::{FixedMultiplier, QParams};

/// One grouped conv layer prepared for the direct loop.
#[derive(Debug, Clone)]
pub struct GroupConv {
    groups: usize,
    /// Centred weights w − z_w, [out, in/groups, kh, kw].
    w: Vec<i16>,
    /// Per output channel: bias at scale s_x · s_w,c.
    bias: Vec<i32>,
    /// Per output channel: s_x · s_w,c / s_o.
    mult: Vec<FixedMultiplier>,
    out: usize,
    kernel: (usize, usize),
    lo: i32,
    hi: i32,
    /// The qparams of the input this layer expects.
    pub in_q: QParams,
    /// The qparams of the output it produces.
    pub out_q: QParams,
}

impl GroupConv {
    /// Prepares the layer from weights quantized per channel or per tensor (`None` for weights
    /// quantized in groups along the reduction), the float bias, the kernel size, the groups,
    /// the in/out qparams and the integer clamp bounds of the output.
    pub fn new(
        w: &QWeights,
        bias: &[f32],
        kernel: (usize, usize),
        groups: usize,
        (in_q, out_q): (QParams, QParams),
        (lo, hi): (i32, i32),
    ) -> Option<Self> {
        if w.groups() != 1 || bias.len() != w.rows || w.q.len() != w.rows * w.cols {
            return None;
        }
        let mut cw = Vec::with_capacity(w.q.len());
        let mut bq = Vec::with_capacity(w.rows);
        let mut mult = Vec::with_capacity(w.rows);
        for (r, &b) in bias.iter().enumerate() {
            let p = w.param(r, 0);
            cw.extend(
                w.q[r * w.cols..(r + 1) * w.cols]
                    .iter()
                    .map(|&v| (v as i32 - p.zero_point) as i16),
            );
            let acc_scale = in_q.scale as f64 * p.scale as f64;
            bq.push(
                (b as f64 / acc_scale)
                    .round()
                    .clamp(i32::MIN as f64, i32::MAX as f64) as i32,
            );
            mult.push(FixedMultiplier::from_f64(acc_scale / out_q.scale as f64));
        }
        Some(GroupConv {
            groups,
            w: cw,
            bias: bq,
            mult,
            out: w.rows,
            kernel,
            lo,
            hi,
            in_q,
            out_q,
        })
    }

    /// Runs `n` samples of `x` ([n, g.c, g.h, g.w] codes in `in_q`) to [n, out, oh, ow].
    pub fn run(&self, x: &[i8], n: usize, g: &ConvGeom) -> Vec<i8> {
        let (plane, opix) = (g.h * g.w, g.out_pixels());
        let (cg, og) = (g.c / self.groups, self.out / self.groups);
        let mut y = vec![0i8; n * self.out * opix];
        let mut xc = vec![0i16; g.c * plane];
        let mut acc = vec![0i32; opix];
        let z = self.in_q.zero_point;
        for s in 0..n {
            let xs = &x[s * g.c * plane..(s + 1) * g.c * plane];
            xc.iter_mut()
                .zip(xs)
                .for_each(|(c, &v)| *c = (v as i32 - z) as i16);
            for oc in 0..self.out {
                acc.fill(self.bias[oc]);
                let c0 = (oc / og) * cg;
                for icg in 0..cg {
                    let xp = &xc[(c0 + icg) * plane..(c0 + icg + 1) * plane];
                    let wk = &self.w[(oc * cg + icg) * self.kernel.0 * self.kernel.1..];
                    conv_channel(xp, wk, g, &mut acc);
                }
                let m = self.mult[oc];
                let dst = &mut y[(s * self.out + oc) * opix..(s * self.out + oc + 1) * opix];
                for (d, &a) in dst.iter_mut().zip(&acc) {
                    *d = (self.out_q.zero_point + m.apply(a)).clamp(self.lo, self.hi) as i8;
                }
            }
        }
        y
    }
}

/// The plain reference: the conv of the dequantized codes and weights in f64 plus the bias,
/// quantized to `out_q` and clamped to [lo, hi] (a direct loop over every tap).
#[allow(clippy::too_many_arguments)]
pub fn group_conv_reference(
    x: &[i8],
    n: usize,
    g: &ConvGeom,
    w: &QWeights,
    bias: &[f32],
    groups: usize,
    (in_q, out_q): (QParams, QParams),
    (lo, hi): (i32, i32),
) -> Vec<i8> {
    let (kh, kw) = g.kernel;
    let (cg, og) = (g.c / groups, w.rows / groups);
    let wd = w.dequantize();
    let mut y = Vec::with_capacity(n * w.rows * g.out_pixels());
    for s in 0..n {
        for oc in 0..w.rows {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = bias[oc] as f64;
                    for icg in 0..cg {
                        let ic = (oc / og) * cg + icg;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize
                                    - g.pad[0] as isize;
                                let ix = (ox * g.stride.1 + kx * g.dilation.1) as isize
                                    - g.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = in_q.dequantize(
                                    x[((s * g.c + ic) * g.h + iy as usize) * g.w + ix as usize]
                                        as i32,
                                );
                                acc += xv as f64 * wd[((oc * cg + icg) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                    let q = (acc / out_q.scale as f64).round() + out_q.zero_point as f64;
                    y.push(q.clamp(lo as f64, hi as f64) as i8);
                }
            }
        }
    }
    y
}
