//! im2col: turns a convolution into a matrix multiply, for both engines.

/// The geometry of one convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel (kh, kw).
    pub kernel: (usize, usize),
    /// Stride (sh, sw).
    pub stride: (usize, usize),
    /// Padding (ph, pw).
    pub padding: (usize, usize),
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl ConvGeom {
    /// Geometry for an input of shape [c, h, w].
    pub fn new(
        in_shape: &[usize],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Self {
        let (c, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
        ConvGeom {
            c,
            h,
            w,
            kernel,
            stride,
            padding,
            oh: (h + 2 * padding.0 - kernel.0) / stride.0 + 1,
            ow: (w + 2 * padding.1 - kernel.1) / stride.1 + 1,
        }
    }

    /// Elements of one im2col row (c · kh · kw).
    pub fn k(&self) -> usize {
        self.c * self.kernel.0 * self.kernel.1
    }

    /// Output pixels per sample.
    pub fn out_pixels(&self) -> usize {
        self.oh * self.ow
    }
}

/// Rows [n · oh · ow, c · kh · kw] of input patches; out-of-image taps get `pad`
/// (0.0 for floats, the input zero point for integers).
pub fn im2col<T: Copy>(x: &[T], n: usize, g: &ConvGeom, pad: T) -> Vec<T> {
    let (kh, kw) = g.kernel;
    let k = g.k();
    let mut out = vec![pad; n * g.out_pixels() * k];
    let plane = g.h * g.w;
    // For each output column, the kernel taps that fall inside the image: kx in [lo, hi).
    let kx_range: Vec<(usize, usize)> = (0..g.ow)
        .map(|ox| {
            let x0 = (ox * g.stride.1) as isize - g.padding.1 as isize;
            let lo = (-x0).max(0) as usize;
            let hi = ((g.w as isize - x0).max(0) as usize).min(kw);
            (lo, hi.max(lo))
        })
        .collect();
    for s in 0..n {
        let xs = &x[s * g.c * plane..(s + 1) * g.c * plane];
        for oy in 0..g.oh {
            for (ox, &(lo, hi)) in kx_range.iter().enumerate() {
                let row = (s * g.out_pixels() + oy * g.ow + ox) * k;
                let dst = &mut out[row..row + k];
                let x0 = (ox * g.stride.1) as isize - g.padding.1 as isize;
                for c in 0..g.c {
                    for ky in 0..kh {
                        let iy = (oy * g.stride.0 + ky) as isize - g.padding.0 as isize;
                        if iy < 0 || iy >= g.h as isize || lo == hi {
                            continue;
                        }
                        let src = c * plane + iy as usize * g.w;
                        let d0 = (c * kh + ky) * kw;
                        let s0 = (x0 + lo as isize) as usize;
                        dst[d0 + lo..d0 + hi].copy_from_slice(&xs[src + s0..src + s0 + (hi - lo)]);
                    }
                }
            }
        }
    }
    out
}

/// [n · pixels, o] rows (one row per output pixel) to NCHW [n, o, pixels].
pub fn nhwc_rows_to_nchw<T: Copy + Default>(y: &[T], n: usize, pixels: usize, o: usize) -> Vec<T> {
    let mut out = vec![T::default(); y.len()];
    for s in 0..n {
        for p in 0..pixels {
            let src = &y[(s * pixels + p) * o..(s * pixels + p + 1) * o];
            for (c, &v) in src.iter().enumerate() {
                out[(s * o + c) * pixels + p] = v;
            }
        }
    }
    out
}

/// Samples per im2col block so that one block's patch matrix stays cache-sized (~4096 rows).
pub fn samples_per_block(g: &ConvGeom) -> usize {
    (4096 / g.out_pixels().max(1)).max(1)
}
