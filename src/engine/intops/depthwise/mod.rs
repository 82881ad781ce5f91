//! Depthwise and grouped convolution in integers over NCHW codes (no im2col):
//! acc = bias_q + Σ (x − z_x)(w − z_w) over the group's channels and kernel taps in i32
//! (padding taps add nothing), then y = clamp(z_o + M_c · acc) with M_c = s_x · s_w,c / s_o.
//!
//! Three kernels compute the same integers (every result bit-identical to the direct loop
//! [`GroupConv::run_direct`], which is the old scalar kernel):
//! * `avx512-vnni` (AVX-512 VNNI + VBMI, x86_64): per input channel plane, the rows
//!   are laid out once as u8 quads (x + 128, horizontal taps side by side, padding as the
//!   zero point) over a grid whose pitch makes every output a fixed offset away from its taps;
//!   one `vpdpbusd` per kernel row then serves 16 outputs. See `avx512`.
//! * `portable` (plain Rust, also compiled for AVX2 and chosen at run time): the plane
//!   widened once to centred i16 in stride phases, so that every tap is one contiguous
//!   multiply-add over the output grid. See `portable`.
//! * `direct`: the plain loop, kept as the reference of the two.
//!
//! Both fast kernels requantize through a per-channel f64 line verified at build time
//! against the fixed-point path over every reachable accumulator (see `line`), falling back
//! to the fixed-point path per channel where the check does not hold. The kernels run
//! single-threaded, as the engine's GEMMs do (callers split batches across threads).

#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod line;
#[cfg(target_arch = "x86_64")]
mod line_avx2;
pub mod nhwc;
mod pairs;
mod portable;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_nhwc;

use crate::engine::conv::conv_channel;
use crate::engine::im2col::ConvGeom;
use crate::engine::requant::split_bias;
use crate::quant::weights::QWeights;
use crate::quant::{FixedMultiplier, QParams};
use line::Line;

/// One grouped conv layer prepared for the direct loop.
#[derive(Debug, Clone)]
pub struct GroupConv {
    groups: usize,
    /// Centred weights w − z_w, [out, in/groups, kh, kw].
    w: Vec<i16>,
    /// Per output channel: bias at scale s_x · s_w,c.
    bias: Vec<i32>,
    /// Per output channel: the requantization (multiplier s_x · s_w,c / s_o, zero point, clamp) as a verified f64 line (or not).
    lines: Vec<Line>,
    /// The weights as `vpdpbusd` operands, when they and the input zero point fit in bytes.
    #[cfg(target_arch = "x86_64")]
    quads: Option<Box<avx512::Quads>>,
    out: usize,
    kernel: (usize, usize),
    lo: i32,
    hi: i32,
    /// The qparams of the input this layer expects.
    pub in_q: QParams,
    /// The qparams of the output it produces.
    pub out_q: QParams,
}

/// Which kernel runs a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// The plain scalar loop.
    Direct,
    /// Centred i16 phase planes, autovectorized.
    Portable,
    /// u8 quads and `vpdpbusd`.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    /// Short name of the kernel.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Portable => portable::name(),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => "avx512-vnni",
        }
    }
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
        let mut zo = Vec::with_capacity(w.rows);
        for (r, &b) in bias.iter().enumerate() {
            let p = w.param(r, 0);
            cw.extend(
                w.q[r * w.cols..(r + 1) * w.cols]
                    .iter()
                    .map(|&v| (v as i32 - p.zero_point) as i16),
            );
            let acc_scale = in_q.scale as f64 * p.scale as f64;
            let (b_q, off) = split_bias(b, acc_scale, out_q.scale as f64);
            bq.push(b_q);
            zo.push(out_q.zero_point + off);
            mult.push(FixedMultiplier::from_f64(acc_scale / out_q.scale as f64));
        }
        let z = in_q.zero_point;
        let lines = (0..w.rows)
            .map(|r| {
                let range = acc_range(&cw[r * w.cols..(r + 1) * w.cols], bq[r], z);
                Line::new(mult[r], (zo[r], lo, hi), range)
            })
            .collect();
        Some(GroupConv {
            groups,
            #[cfg(target_arch = "x86_64")]
            quads: avx512::Quads::new(&cw, &bq, w.rows, kernel, z).map(Box::new),
            w: cw,
            bias: bq,
            lines,
            out: w.rows,
            kernel,
            lo,
            hi,
            in_q,
            out_q,
        })
    }

    /// Runs `n` samples of `x` ([n, g.c, g.h, g.w] codes in `in_q`) to [n, out, oh, ow], with
    /// the fastest kernel this CPU and layer allow ([`GroupConv::kernel_name`]).
    pub fn run(&self, x: &[i8], n: usize, g: &ConvGeom) -> Vec<i8> {
        self.run_path(self.path(g), x, n, g)
    }

    /// The kernel [`GroupConv::run`] uses on this CPU for geometry `g`: `"avx512-vnni"`,
    /// `"avx2"`, `"portable"` (both the autovectorized loop) or `"direct"`.
    pub fn kernel_name(&self, g: &ConvGeom) -> &'static str {
        self.path(g).name()
    }

    /// Whether [`GroupConv::run`] takes the `vpdpbusd` kernel for `g` on this CPU.
    pub(crate) fn runs_vnni(&self, g: &ConvGeom) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.path(g) == Path::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = g;
            false
        }
    }

    /// The fastest kernel for `g` on this CPU.
    pub(crate) fn path(&self, g: &ConvGeom) -> Path {
        #[cfg(target_arch = "x86_64")]
        if let Some(q) = &self.quads
            && avx512::supported()
            && q.fits(g)
        {
            return Path::Avx512;
        }
        if portable::fits(g) {
            Path::Portable
        } else {
            Path::Direct
        }
    }

    /// Runs with a given kernel (tests and benches compare them).
    ///
    /// # Panics
    /// If `path` cannot run this layer or geometry on this CPU (see [`GroupConv::path`]).
    pub(crate) fn run_path(&self, path: Path, x: &[i8], n: usize, g: &ConvGeom) -> Vec<i8> {
        assert!(
            x.len() >= n * g.c * g.h * g.w,
            "input shorter than [n, c, h, w]"
        );
        match path {
            Path::Direct => self.run_direct(x, n, g),
            Path::Portable => portable::run(self, x, n, g),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => {
                let q = self.quads.as_ref().expect("weights that fit in bytes");
                assert!(
                    avx512::supported() && q.fits(g),
                    "AVX-512 kernel unavailable"
                );
                // SAFETY: the CPU features were detected just above.
                unsafe { avx512::run(self, q, x, n, g) }
            }
        }
    }

    /// The plain loop: one output plane at a time, every tap a shifted multiply-add over the
    /// plane, then the fixed-point requantization. The reference of the fast kernels.
    pub fn run_direct(&self, x: &[i8], n: usize, g: &ConvGeom) -> Vec<i8> {
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
                // The exact fixed-point path (with the channel's own zero point).
                let line = &self.lines[oc];
                let dst = &mut y[(s * self.out + oc) * opix..(s * self.out + oc + 1) * opix];
                for (d, &a) in dst.iter_mut().zip(&acc) {
                    *d = line.exact(a);
                }
            }
        }
        y
    }
}

/// The accumulators one output channel can reach, bias + Σ w·(x − z) over input codes in
/// [−128, 127] and padding (x − z = 0), if they fit in i32 (else sums may wrap: no range).
fn acc_range(w: &[i16], bias: i32, z: i32) -> Option<(i32, i32)> {
    if z.unsigned_abs() > 1 << 14 {
        return None;
    }
    let (xlo, xhi) = ((-128 - z) as i64, (127 - z) as i64);
    let (mut lo, mut hi) = (bias as i64, bias as i64);
    for &wt in w {
        let (a, b) = (wt as i64 * xlo, wt as i64 * xhi);
        lo += a.min(b).min(0);
        hi += a.max(b).max(0);
    }
    let fits = |v: i64| (i32::MIN as i64..=i32::MAX as i64).contains(&v);
    (fits(lo) && fits(hi)).then_some((lo as i32, hi as i32))
}

/// The output grid both fast kernels compute over: the padded input split into `sh` row
/// phases (rows r ≡ φ mod sh), each `rg` rows of pitch `pg` = ⌈padded width / sw⌉, so that
/// output (oy, ox) sits at grid index j = oy·pg + ox and its tap (ky, kx) at row phase
/// (ky·dh) mod sh, index j + ⌊ky·dh / sh⌋·pg in padded column sw·ox + kx·dw. Grid columns
/// ox ≥ ow are computed and dropped.
#[derive(Debug, Clone, Copy)]
struct Grid {
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
    /// Row pitch and rows per row phase.
    pg: usize,
    rg: usize,
    oh: usize,
    ow: usize,
}

impl Grid {
    fn new(g: &ConvGeom) -> Self {
        let (hp, wp) = g.padded_dims();
        Grid {
            sh: g.stride.0,
            sw: g.stride.1,
            dh: g.dilation.0,
            dw: g.dilation.1,
            pt: g.pad[0],
            pl: g.pad[1],
            pg: wp.div_ceil(g.stride.1),
            rg: hp.div_ceil(g.stride.0),
            oh: g.oh,
            ow: g.ow,
        }
    }

    /// Grid points computed per output plane.
    fn points(&self) -> usize {
        self.oh * self.pg
    }

    /// Row phase and grid offset of kernel row `ky`.
    fn row_tap(&self, ky: usize) -> (usize, usize) {
        let dy = ky * self.dh;
        (dy % self.sh, dy / self.sh * self.pg)
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
