//! A conv whose patch rows the AVX-512 VNNI or the AVX2 GEMM reads in place from a padded
//! channels-last image, with no patch matrix: output pixel (oy, ox) reads padded pixel
//! (oy·sh + ky·dh, ox·sw + kx·dw), so its patch row is `kh` runs of `kw · c` contiguous codes
//! (one run per kernel row; with a horizontal dilation, `kh · kw` runs of `c` codes), at offsets
//! that are the same for every pixel. The image is written once per sample, with its border at
//! the input zero point: shifted to unsigned (x ^ 0x80, the VNNI operand) or as it is (AVX2).
//! Integer sums do not depend on the order, so the output equals the patch-row path exactly.

use crate::engine::im2col::{ConvGeom, copy_flipped};
use crate::engine::int::IntGemm;
use crate::engine::kernels::RunsLayout;
use crate::engine::transpose::transpose_i8;

/// Bytes of accumulators per block of output rows (here and in the channels-last depthwise
/// kernel): half of L1, so that the epilogue reads them from there. 64 KB, in L2, ran
/// MobileNetV2 5–12% slower on Zen 4 (one thread, min of 40, alternated rounds).
pub(crate) const ACC_BYTES: usize = 16 << 10;

/// What a padded image's border was written for: its code, the padding and the image's
/// [h, w, c].
type Border = (i8, [usize; 4], (usize, usize, usize));

/// The padded image of one sample and the runs each patch row reads from it.
#[derive(Debug, Default)]
pub struct PaddedImage {
    /// [hp, wp, c] shifted codes.
    buf: Vec<i8>,
    /// Byte offsets of a patch row's runs from its first code.
    offsets: Vec<usize>,
    /// Codes per run.
    len: usize,
    /// Codes stored as x ^ 0x80.
    shifted: bool,
    /// The border's code, the padding and the image's [h, w, c], once a fill has written them.
    border: Option<Border>,
}

impl PaddedImage {
    /// The layout for geometry `g` and the GEMM `gemm` (which must read runs), or `None`
    /// when a run would not be whole chunks of the GEMM's granule (it reads 4 or 8 codes at a
    /// time, so a chunk may not straddle two runs).
    pub fn for_gemm(g: &ConvGeom, gemm: &IntGemm) -> Option<Self> {
        Self::for_geometry(g, gemm.runs_layout()?)
    }

    /// The layout for geometry `g` and a kernel's way of reading runs; `None` where the runs
    /// cannot be whole chunks.
    pub fn for_geometry(g: &ConvGeom, how: RunsLayout) -> Option<Self> {
        let RunsLayout { shifted, granule } = how;
        let ((kh, kw), (dh, dw), c) = (g.kernel, g.dilation, g.c);
        let row = g.padded_dims().1 * c;
        let (offsets, len) = if dw == 1 && (kw * c) % granule == 0 {
            ((0..kh).map(|ky| ky * dh * row).collect(), kw * c)
        } else if c % granule == 0 {
            let taps = (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky, kx)));
            (
                taps.map(|(ky, kx)| ky * dh * row + kx * dw * c).collect(),
                c,
            )
        } else {
            return None;
        };
        Some(PaddedImage {
            buf: Vec::new(),
            offsets,
            len,
            shifted,
            border: None,
        })
    }

    /// Writes channels-last sample `xs` ([h, w, c]) into the padded image (shifted to unsigned
    /// where the GEMM reads such codes), with the border at `pad` (the input zero point). The
    /// border is written once: the next sample of the same geometry and pad rewrites only the
    /// image's rows.
    pub fn fill(&mut self, xs: &[i8], g: &ConvGeom, pad: i8) {
        let (c, (hp, wp)) = (g.c, g.padded_dims());
        let (row, run) = (wp * c, g.w * c);
        let shifted = self.shifted;
        let pad = if shifted { pad ^ i8::MIN } else { pad };
        let (top, left) = (g.pad[0] * row, g.pad[1] * c);
        let key = (pad, g.pad, (g.h, g.w, c));
        if self.border != Some(key) {
            self.buf.clear();
            self.buf.resize(hp * row, pad);
            self.border = Some(key);
        }
        for (y, src) in xs.chunks_exact(run).take(g.h).enumerate() {
            let at = top + y * row + left;
            let dst = &mut self.buf[at..at + run];
            if shifted {
                copy_flipped(dst, src);
            } else {
                dst.copy_from_slice(src);
            }
        }
    }

    /// Runs `gemm` (the one the layout was made for) over the image into `out`, one sample's
    /// output: NCHW ([o, oh · ow]), or channels-last ([oh · ow, o]) when `nhwc`, in blocks of
    /// output rows whose accumulators `acc` and codes `y` are reused: one GEMM per output row,
    /// or one per block when the rows of the block are evenly spaced in the image (stride 1 and
    /// an image as wide as the output, as a 1×1 conv), and one epilogue per block. A channels-last block is written in
    /// place, an NCHW one through `y` and one transpose.
    pub fn run(
        &self,
        gemm: &IntGemm,
        g: &ConvGeom,
        (acc, y): (&mut Vec<i32>, &mut Vec<i8>),
        (out, nhwc): (&mut [i8], bool),
    ) {
        let (c, wp, o) = (g.c, g.padded_dims().1, gemm.out_channels());
        let (sh, sw) = g.stride;
        let runs = (&self.offsets[..], self.len);
        let block = (ACC_BYTES / (g.ow * o * 4).max(1)).clamp(1, g.oh.max(1));
        for oy0 in (0..g.oh).step_by(block) {
            let nr = block.min(g.oh - oy0);
            let pixels = nr * g.ow;
            let dst = if nhwc {
                &mut out[oy0 * g.ow * o..][..pixels * o]
            } else {
                y.resize(pixels * o, 0);
                &mut y[..]
            };
            if g.stride == (1, 1) && wp == g.ow {
                gemm.run_into_runs(&self.buf[oy0 * wp * c..], (pixels, c), runs, acc, dst);
            } else {
                // One GEMM per output row into the block's accumulators, one epilogue for all.
                if acc.len() < pixels * o {
                    acc.resize(pixels * o, 0);
                }
                let acc = &mut acc[..pixels * o];
                for (r, ar) in acc.chunks_exact_mut(g.ow * o).enumerate() {
                    let a = &self.buf[(oy0 + r) * sh * wp * c..];
                    gemm.sums_of_runs(a, (g.ow, sw * c), runs, ar);
                }
                gemm.requant().run(acc, dst);
            }
            if !nhwc {
                transpose_i8(y, (pixels, o, o), &mut out[oy0 * g.ow..], g.oh * g.ow);
            }
        }
    }
}
