//! An ungrouped integer conv over channels-last patches: the input is turned channels-last
//! once, so each kernel row of a patch is one contiguous copy of kw · c codes (NCHW patches copy
//! kw codes per channel), and the GEMM's weights are ordered (ky, kx, channel) to match.
//! Integer sums are the same in any order, so the output equals the NCHW im2col path exactly.

use crate::engine::im2col::{ConvGeom, im2col_columns, im2col_nhwc_rows, im2col_nhwc_rows_shifted};
use crate::engine::int::IntGemm;
use crate::engine::intops::conv_padded::PaddedImage;
use crate::engine::kernels::shifted_row_bytes;
use crate::engine::transpose::transpose_i8;
use crate::quant::QParams;
use crate::quant::weights::QWeights;

/// An ungrouped conv whose weights have one scale per output channel (or per tensor).
#[derive(Debug)]
pub struct NhwcConv {
    gemm: IntGemm,
    /// One input channel and symmetric weights: the weight rows ([out, kh · kw]) for the
    /// direct channel-major loop over the tap planes (no patch rows, no transposes).
    planes: Option<Vec<i8>>,
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
        let gemm = IntGemm::new(&reordered, bias, in_q, out_q, clamp);
        let planes = (c == 1 && !gemm.has_weight_zero_points()).then(|| reordered.q.clone());
        // Every pixel's row goes through the epilogue (a one-channel conv requantizes by
        // column instead).
        let gemm = if planes.is_none() {
            gemm.with_verified_lines(&reordered)
        } else {
            gemm
        };
        Some(NhwcConv { gemm, planes })
    }

    /// The qparams of the input the kernel expects.
    pub fn in_q(&self) -> QParams {
        self.gemm.in_q
    }

    /// The qparams of the output it produces.
    pub fn out_q(&self) -> QParams {
        self.gemm.out_q
    }

    /// Whether [`NhwcConv::run`] can write channels-last output (all but the one-channel
    /// planes path, which requantizes straight into NCHW planes).
    pub fn writes_channels_last(&self) -> bool {
        self.planes.is_none()
    }

    /// Runs `n` samples `x` ([n, g.c, g.h, g.w], stored channels-last when `nhwc.0`) with
    /// out-of-image taps at `pad` (the input zero point): [n, out, g.oh, g.ow], stored
    /// channels-last when `nhwc.1` (which needs [`NhwcConv::writes_channels_last`]). An NCHW
    /// sample is turned channels-last once; then blocks of output pixels go through patch rows,
    /// the GEMM and its epilogue in buffers of cache size that every block reuses, and land in
    /// the output (an NCHW output by one transpose per block).
    ///
    /// # Panics
    /// If `nhwc.1` is asked of the planes path.
    pub fn run(&self, x: &[i8], n: usize, g: &ConvGeom, pad: i8, nhwc: (bool, bool)) -> Vec<i8> {
        let (in_nhwc, out_nhwc) = nhwc;
        assert!(
            !out_nhwc || self.writes_channels_last(),
            "the planes path writes NCHW"
        );
        let (plane, pixels, o, k) = (g.h * g.w, g.out_pixels(), self.gemm.out_channels(), g.k());
        // Every code is written below (all paths fill every plane or row).
        let mut out = crate::engine::recycle::codes(n * o * pixels);
        if pixels == 0 || o == 0 {
            return out;
        }
        let block = (BLOCK_BYTES / k.max(1)).clamp(1, pixels);
        // The VNNI GEMM reads rows already shifted to unsigned, in place.
        let vnni_rows = g.c > 1 && self.gemm.takes_shifted_rows();
        // Patch rows read in place from a padded image (VNNI or AVX2): no patch matrix at all.
        let mut padded = (g.c > 1)
            .then(|| PaddedImage::for_gemm(g, &self.gemm))
            .flatten();
        // Patch rows written shifted to unsigned, read in place by the GEMM (no second copy).
        let shifted = !g.is_pointwise() && vnni_rows;
        let slack = shifted_row_bytes(k) - k;
        // Patch rows only where the padded image does not apply.
        let rows_len = if padded.is_some() {
            0
        } else {
            block * k + slack
        };
        let (mut staged, mut rows) = (Vec::new(), vec![0i8; rows_len]);
        // NCHW output only: each block's rows before their transpose.
        let (mut acc, mut y) = (Vec::new(), vec![0i8; if out_nhwc { 0 } else { block * o }]);
        for (xs, os) in x
            .chunks_exact(g.c * plane)
            .zip(out.chunks_exact_mut(o * pixels))
        {
            if let Some(w) = &self.planes {
                im2col_columns(xs, g, pad, &mut staged);
                self.run_planes(w, &staged, pixels, &mut acc, os);
                continue;
            }
            let src: &[i8] = if g.c == 1 {
                // One channel: the per-tap shifted planes ([k, pixels]: a few wide copies
                // instead of one short copy per kernel row and pixel), transposed per block.
                im2col_columns(xs, g, pad, &mut staged);
                &staged
            } else if in_nhwc {
                xs
            } else {
                staged.resize(xs.len(), 0);
                transpose_i8(xs, (g.c, plane, plane), &mut staged, g.c);
                &staged
            };
            if let Some(p) = &mut padded {
                p.fill(src, g, pad);
                p.run(&self.gemm, g, (&mut acc, &mut y), (os, out_nhwc));
                continue;
            }
            let bufs = (&mut rows[..], &mut acc, &mut y[..]);
            self.run_patch_blocks(src, (g, pad), (os, out_nhwc), (block, shifted), bufs);
        }
        out
    }
}

impl NhwcConv {
    /// One sample's output `os` in blocks of `block` output pixels through patch rows read from
    /// `src` (the sample channels-last, or a one-channel conv's tap planes; written `shifted` to
    /// unsigned for the VNNI GEMM where it reads them so): each block's GEMM writes its [m, o]
    /// rows in place when `out_nhwc`, else into `y` and one transpose into the NCHW planes.
    fn run_patch_blocks(
        &self,
        src: &[i8],
        (g, pad): (&ConvGeom, i8),
        (os, out_nhwc): (&mut [i8], bool),
        (block, shifted): (usize, bool),
        (rows, acc, y): (&mut [i8], &mut Vec<i32>, &mut [i8]),
    ) {
        let (pixels, o, k) = (g.out_pixels(), self.gemm.out_channels(), g.k());
        let slack = shifted_row_bytes(k) - k;
        for p0 in (0..pixels).step_by(block) {
            let p1 = (p0 + block).min(pixels);
            let m = p1 - p0;
            // Channels-last output rows are the GEMM's own [m, o] rows.
            let dst = if out_nhwc {
                &mut os[p0 * o..p1 * o]
            } else {
                &mut y[..m * o]
            };
            if shifted {
                im2col_nhwc_rows_shifted(src, g, pad, p0..p1, rows);
                self.gemm
                    .run_into_shifted(&rows[..m * k + slack], m, acc, dst);
            } else {
                let a: &[i8] = if g.c == 1 {
                    columns_to_rows(src, pixels, p0..p1, rows);
                    &rows[..m * k]
                } else if g.is_pointwise() {
                    &src[p0 * k..p1 * k]
                } else {
                    im2col_nhwc_rows(src, g, pad, p0..p1, rows);
                    &rows[..m * k]
                };
                self.gemm.run_into(a, m, acc, dst);
            }
            if !out_nhwc {
                // [m, o] rows to the o planes of the NCHW output, at pixel p0.
                transpose_i8(y, (m, o, o), &mut os[p0..], pixels);
            }
        }
    }

    /// One sample of a one-channel conv: each output channel's accumulators are the sum over
    /// taps of weight × tap plane (`taps`: [k, pixels]), requantized straight into its NCHW
    /// plane of `out`. The input zero point is folded into the epilogue's constants.
    fn run_planes(&self, w: &[i8], taps: &[i8], pixels: usize, acc: &mut Vec<i32>, out: &mut [i8]) {
        let k = taps.len() / pixels;
        acc.resize(pixels, 0);
        for (r, (wr, dst)) in w
            .chunks_exact(k)
            .zip(out.chunks_exact_mut(pixels))
            .enumerate()
        {
            tap_sums(wr, taps, acc);
            self.gemm.requant().run_column(r, acc, dst);
        }
    }
}

/// acc = Σ_t w[t] · taps[t] (i32 sums of i8 products over planes of acc.len() codes), on the
/// widest vector unit this CPU has.
fn tap_sums(w: &[i8], taps: &[i8], acc: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the CPU supports AVX-512F and BW, checked just above.
        return unsafe { tap_sums_avx512(w, taps, acc) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { tap_sums_avx2(w, taps, acc) };
    }
    tap_sums_body(w, taps, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn tap_sums_avx512(w: &[i8], taps: &[i8], acc: &mut [i32]) {
    tap_sums_body(w, taps, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tap_sums_avx2(w: &[i8], taps: &[i8], acc: &mut [i32]) {
    tap_sums_body(w, taps, acc);
}

#[inline(always)]
fn tap_sums_body(w: &[i8], taps: &[i8], acc: &mut [i32]) {
    acc.fill(0);
    for (&wt, plane) in w.iter().zip(taps.chunks_exact(acc.len())) {
        let wt = wt as i32;
        for (a, &x) in acc.iter_mut().zip(plane) {
            *a += wt * x as i32;
        }
    }
}

/// Bytes of patch rows per block: with the block's accumulators and outputs, well inside L2.
const BLOCK_BYTES: usize = 48 << 10;

/// Columns `cols` of the row-major matrix `src` ([k, width]) as rows ([cols.len(), k]) in `dst`.
fn columns_to_rows(src: &[i8], width: usize, cols: std::ops::Range<usize>, dst: &mut [i8]) {
    let k = src.len() / width;
    for (t, srow) in src.chunks_exact(width).enumerate() {
        for (j, &v) in srow[cols.clone()].iter().enumerate() {
            dst[j * k + t] = v;
        }
    }
}
