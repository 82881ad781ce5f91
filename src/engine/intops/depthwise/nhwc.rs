//! A depthwise conv (one input channel per group, one output channel per group) on
//! channels-last codes, in and out, with AVX-512 VNNI: no NCHW planes, so a MobileNet's
//! depthwise layers need no transpose before or after them.
//!
//! Channels sit in the vector lanes. Per output row, every padded input column gets, per group
//! of four kernel rows, one u8 quad per channel: the column's codes in those four rows, as
//! x + 128 (read straight from the sample, with the zero point for taps outside it). That is
//! one `vpdpbusd` operand for 16 channels, built for 64 channels at once by one dword permute
//! per row and two rounds of unpacks ([`quad_row`]). Output pixel `ox` then sums, per quad
//! group and kernel column kx, the quads of column sw·ox + kx·dw against that column's weight
//! quads: a 3×3 kernel is three `vpdpbusd` per 16 outputs, each column's quads serving the kw
//! outputs that read it.
//!
//! Where input rows are one apart (stride and dilation 1 down the image) and the kernel has at
//! most 3 rows, one set of quads, built from input rows oy..oy + 4, serves output rows oy and
//! oy + 1: the second against the same weights moved down one byte (`w_next`). That halves
//! the quads built and loaded per output (a 3 × 3 layer of MobileNetV2's ran 24–30% faster).
//!
//! The accumulators are the GEMM's, Σ x·w over i8 codes (the +128 is removed by starting each
//! channel at −128·Σw, padding taps hold the zero point), so the layer's [`IntGemm`] epilogue
//! requantizes them row by row with its verified lines, the same codes as the NCHW kernels.

use crate::engine::im2col::ConvGeom;
use crate::engine::int::IntGemm;
use crate::engine::intops::conv_padded::ACC_BYTES;
use crate::quant::QParams;
use crate::quant::weights::QWeights;
use std::sync::OnceLock;

/// Kernel taps per output a layer may have: quad groups ⌈kh / 4⌉ times kw (a 7 × 7 kernel is
/// 14); larger kernels keep the NCHW kernel.
const MAX_TAPS: usize = 16;

/// A depthwise conv's weights and epilogue for the channels-last kernel.
#[derive(Debug)]
pub struct DepthwiseNhwc {
    /// The epilogue (per-channel constants and verified lines over Σ x·w; its packed GEMM
    /// weights are not used), made on the first run: made with the layer, verifying the lines
    /// of MobileNetV2's five depthwise layers took its `IntModel::new` from 31 to 41–46 ms (one
    /// thread, mean of 10 builds), which a model built only for tapped (NCHW) runs, as
    /// evaluation's, never needs.
    gemm: OnceLock<IntGemm>,
    /// What the epilogue is made from.
    layer: Box<Layer>,
    /// [groups, kw, c] words of 4 signed bytes: kernel rows 4q..4q + 4 of column kx (0 past kh).
    w: Vec<i32>,
    /// For kernels of at most 3 rows, [kw, c] words whose byte j holds kernel row j − 1 (byte 0
    /// holds 0): the weights of the next output row on the same quads, when rows are one apart
    /// (stride and dilation 1 down the image).
    w_next: Option<Vec<i32>>,
    /// Per channel: −128 · Σ w (wrapping), the start of its sums of (x + 128)·w.
    init: Vec<i32>,
    /// Channels (a multiple of 16).
    c: usize,
    kernel: (usize, usize),
}

/// A layer's weights, float bias, in/out qparams and clamp.
#[derive(Debug)]
struct Layer {
    w: QWeights,
    bias: Vec<f32>,
    qs: (QParams, QParams),
    clamp: Option<(f32, f32)>,
}

impl DepthwiseNhwc {
    /// The kernel for a depthwise conv of `c` channels (`w`: [c, kh · kw], one scale per
    /// channel or per tensor, symmetric), or `None` where it does not apply: other weights or
    /// groups, a channel count that is not a multiple of 16, or a CPU without AVX-512 VNNI.
    pub fn new(
        w: &QWeights,
        bias: &[f32],
        (kh, kw): (usize, usize),
        qs: (QParams, QParams),
        clamp: Option<(f32, f32)>,
    ) -> Option<Self> {
        let c = w.rows;
        if !supported()
            || c == 0
            || !c.is_multiple_of(16)
            || kh * kw == 0
            || kh.div_ceil(4) * kw > MAX_TAPS
            || w.cols != kh * kw
            || w.groups() != 1
            || (0..c).any(|r| w.param(r, 0).zero_point != 0)
        {
            return None;
        }
        let layer = Layer {
            w: w.clone(),
            bias: bias.to_vec(),
            qs,
            clamp,
        };
        Some(DepthwiseNhwc {
            gemm: OnceLock::new(),
            layer: Box::new(layer),
            w: weight_quads(&w.q, c, (kh, kw), 0),
            w_next: (kh <= 3).then(|| weight_quads(&w.q, c, (kh, kw), 1)),
            init: (w.q.chunks_exact(kh * kw))
                .map(|r| {
                    let sum = r.iter().fold(0i32, |s, &v| s.wrapping_add(v as i32));
                    sum.wrapping_mul(-128)
                })
                .collect(),
            c,
            kernel: (kh, kw),
        })
    }

    /// The layer's epilogue, made on first use.
    fn epilogue(&self) -> &IntGemm {
        self.gemm.get_or_init(|| {
            let Layer { w, bias, qs, clamp } = &*self.layer;
            IntGemm::new(w, bias, qs.0, qs.1, *clamp).with_verified_lines(w)
        })
    }

    /// Runs `n` channels-last samples `x` ([n, h, w, c] codes in the input qparams) with
    /// out-of-image taps at `pad` (the input zero point): [n, oh, ow, c] codes.
    ///
    /// # Panics
    /// If `g` is not this layer's geometry or `x` is shorter than `n` samples.
    pub fn run(&self, x: &[i8], n: usize, g: &ConvGeom, pad: i8) -> Vec<i8> {
        let c = self.c;
        assert!(
            g.c == c && g.kernel == self.kernel,
            "another layer's geometry"
        );
        assert!(
            x.len() >= n * g.h * g.w * c,
            "input shorter than [n, h, w, c]"
        );
        let (opix, (_, wp)) = (g.out_pixels(), g.padded_dims());
        // Every code is written below: each block's rows are requantized whole.
        let mut out = crate::engine::recycle::codes(n * opix * c);
        if opix == 0 {
            return out;
        }
        let groups = self.kernel.0.div_ceil(4);
        let mut quads = vec![0u8; groups * wp * c * 4];
        // Output rows in pairs on one set of quads (see `w_next`).
        let pair = self.w_next.is_some() && g.stride.0 == 1 && g.dilation.0 == 1;
        let block = (ACC_BYTES / (g.ow * c * 4)).clamp(1, g.oh);
        // Pairs need two rows a block (a wide row's 16 KB are then exceeded).
        let block = if pair {
            (block & !1).max(2).min(g.oh)
        } else {
            block
        };
        let mut acc = vec![0i32; block * g.ow * c];
        // The rows of taps above and below the image.
        let pad_row = vec![pad; g.w * c];
        for (xs, os) in x
            .chunks_exact(g.h * g.w * c)
            .zip(out.chunks_exact_mut(opix * c))
        {
            let sample = Sample {
                xs,
                pad_row: &pad_row,
                pad,
            };
            for oy0 in (0..g.oh).step_by(block) {
                let rows = block.min(g.oh - oy0);
                let mut r = 0;
                while r < rows {
                    let two = pair && r + 1 < rows;
                    let (acc_row, next) = acc[r * g.ow * c..].split_at_mut(g.ow * c);
                    let next = two.then(|| &mut next[..g.ow * c]);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX-512 F/BW/VNNI were detected when `self` was built; `next`
                    // only where the rows are one apart and the kernel has at most 3 rows.
                    unsafe {
                        self.output_row(&sample, g, oy0 + r, &mut quads, (acc_row, next))
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("built only where AVX-512 VNNI runs {acc_row:?} {next:?}");
                    r += 1 + usize::from(two);
                }
                let (a, y) = (&acc[..rows * g.ow * c], &mut os[oy0 * g.ow * c..]);
                self.epilogue().requant().run(a, &mut y[..rows * g.ow * c]);
            }
        }
        out
    }

    /// The accumulators of output row `oy` ([ow, c]) from `sample`, with `quads` as the row's
    /// quad scratch ([groups, wp, c] quads); with `next`, also those of row oy + 1 from the same
    /// quads (built from input rows oy..oy + 4, the fourth meeting only `w_next`).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI; `next` only with `w_next`, stride and
    /// dilation 1 down the image.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn output_row(
        &self,
        sample: &Sample,
        g: &ConvGeom,
        oy: usize,
        quads: &mut [u8],
        (acc, mut next): (&mut [i32], Option<&mut [i32]>),
    ) {
        let (c, (kh, kw)) = (self.c, self.kernel);
        let wp = g.padded_dims().1;
        let groups = kh.div_ceil(4);
        for q in 0..groups {
            // Kernel rows past kh meet zero weights: any row serves (but with `next`, the row
            // after the kernel's is the next output row's last).
            let rows: [&[i8]; 4] = std::array::from_fn(|j| {
                let ky = if next.is_some() {
                    j
                } else {
                    (4 * q + j).min(kh - 1)
                };
                sample.row(g, oy * g.stride.0 + ky * g.dilation.0)
            });
            let dst = &mut quads[q * wp * c * 4..(q + 1) * wp * c * 4];
            let border = (g.pad[1] * c * 4, g.pad[3] * c * 4);
            // SAFETY: AVX-512 per this fn's contract.
            unsafe { quad_row(rows, c, (sample.pad, border), dst) };
        }
        // Byte offset of each tap's quads from its output's first column, in weight order.
        let mut taps = [0usize; MAX_TAPS];
        for (t, at) in taps.iter_mut().take(groups * kw).enumerate() {
            let (q, kx) = (t / kw, t % kw);
            *at = (q * wp * c + kx * g.dilation.1 * c) * 4;
        }
        let rows = Rows {
            quads,
            step: g.stride.1 * c * 4,
            ow: g.ow,
        };
        for cb in (0..c).step_by(16) {
            // SAFETY: AVX-512 per this fn's contract; the weights and `init` hold channels
            // cb..cb + 16 (c is a multiple of 16), the quads of column sw·ox + kx·dw < wp lie in
            // `quads`, and `acc` holds ow rows of c.
            unsafe {
                // The weights in registers: a loop that reads them per output ran MobileNetV2
                // 12% slower (11.4-11.7 against 10.3-10.5 ms per 128, one thread, min of 40).
                macro_rules! taps {
                    ($($n:literal)*) => {
                        match (groups * kw, &mut next) {
                            $(($n, None) => {
                                self.channel_block::<$n, false>(&rows, &taps, cb, (acc, &mut []))
                            })*
                            $(($n, Some(next)) => {
                                self.channel_block::<$n, true>(&rows, &taps, cb, (acc, next))
                            })*
                            (n, _) => unreachable!("{n} taps, at most MAX_TAPS"),
                        }
                    };
                }
                taps!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            }
        }
    }

    /// Channels cb..cb + 16 of one output row, `T` taps with the weights in registers; with
    /// `TWO`, also of the next output row into `next`, on the same quads (each tap's quads
    /// loaded once for both rows) against `w_next`.
    ///
    /// # Safety
    /// As [`DepthwiseNhwc::output_row`]'s body; `TWO` only with `w_next` (one group of kernel
    /// rows).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn channel_block<const T: usize, const TWO: bool>(
        &self,
        rows: &Rows,
        taps: &[usize; MAX_TAPS],
        cb: usize,
        (acc, next): (&mut [i32], &mut [i32]),
    ) {
        use std::arch::x86_64::*;
        let c = self.c;
        let w_next = match TWO {
            true => self.w_next.as_deref().expect("weights of the next row"),
            false => &self.w,
        };
        // SAFETY: per this fn's contract.
        unsafe {
            let init = _mm512_loadu_si512(self.init.as_ptr().add(cb).cast());
            let load = |w: &[i32], t: usize| _mm512_loadu_si512(w.as_ptr().add(t * c + cb).cast());
            let w: [__m512i; T] = std::array::from_fn(|t| load(&self.w, t));
            let wn: [__m512i; T] = std::array::from_fn(|t| match TWO {
                true => load(w_next, t),
                false => _mm512_setzero_si512(),
            });
            let base = rows.quads.as_ptr().add(cb * 4);
            for ox in 0..rows.ow {
                let col = base.add(ox * rows.step);
                let (mut s, mut sn) = (init, init);
                for t in 0..T {
                    let v = _mm512_loadu_si512(col.add(taps[t]).cast());
                    s = _mm512_dpbusd_epi32(s, v, w[t]);
                    if TWO {
                        sn = _mm512_dpbusd_epi32(sn, v, wn[t]);
                    }
                }
                _mm512_storeu_si512(acc.as_mut_ptr().add(ox * c + cb).cast(), s);
                if TWO {
                    _mm512_storeu_si512(next.as_mut_ptr().add(ox * c + cb).cast(), sn);
                }
            }
        }
    }
}

/// One output row's quads ([groups, wp, c] quads of 4 bytes) and how far apart its outputs'
/// first columns are.
struct Rows<'a> {
    quads: &'a [u8],
    /// Bytes from one output's first column to the next one's (sw columns).
    step: usize,
    ow: usize,
}

/// One channels-last sample ([h, w, c] codes) and what its out-of-image taps read.
struct Sample<'a> {
    xs: &'a [i8],
    /// A row of `w · c` codes at the input zero point.
    pad_row: &'a [i8],
    /// The input zero point.
    pad: i8,
}

impl Sample<'_> {
    /// Row `y` of the padded image without its side borders (`w · c` codes): a sample row, or
    /// the zero point's row above and below the image.
    fn row(&self, g: &ConvGeom, y: usize) -> &[i8] {
        let len = g.w * g.c;
        match y.checked_sub(g.pad[0]) {
            Some(r) if r < g.h => &self.xs[r * len..(r + 1) * len],
            _ => self.pad_row,
        }
    }
}

/// Whether this CPU runs the kernel: the VNNI GEMM's CPU, with AVX-512BW for the byte unpacks.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::engine::kernels::Kernel::Avx512Vnni.is_supported()
        && crate::engine::im2col::has_avx512bw();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The weights `q` ([c, kh · kw] row-major) as [groups, kw, c] words: the word of group q,
/// column kx and channel ch holds in byte j the weight at kx of kernel row 4q + j − `shift` (0
/// outside the kernel); `shift` 1 needs kh ≤ 3.
fn weight_quads(q: &[i8], c: usize, (kh, kw): (usize, usize), shift: usize) -> Vec<i32> {
    let groups = kh.div_ceil(4);
    let mut w = vec![0i32; groups * kw * c];
    for g in 0..groups {
        for kx in 0..kw {
            for ch in 0..c {
                let b: [u8; 4] = std::array::from_fn(|j| {
                    let ky = (4 * g + j).wrapping_sub(shift);
                    if ky < kh {
                        q[ch * kh * kw + ky * kw + kx] as u8
                    } else {
                        0
                    }
                });
                w[(g * kw + kx) * c + ch] = i32::from_le_bytes(b);
            }
        }
    }
    w
}

/// One quad row: for every column x' of the padded image's width and channel ch, the codes
/// of the four `rows` (each `w · c` codes, w = columns inside the image) at x' − left, channel
/// ch, plus 128, at `dst[(x'·c + ch)·4 + j]`, j = 0..4; columns of the side borders (`border`:
/// bytes of quads left and right) hold `pad` + 128 (c a multiple of 16).
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quad_row(
    rows: [&[i8]; 4],
    c: usize,
    (pad, border): (i8, (usize, usize)),
    dst: &mut [u8],
) {
    use std::arch::x86_64::*;
    let len = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == len) && len.is_multiple_of(c));
    assert_eq!(
        border.0 + 4 * len + border.1,
        dst.len(),
        "quads of the padded width"
    );
    let (left, rest) = dst.split_at_mut(border.0);
    let (inner, right) = rest.split_at_mut(4 * len);
    left.fill(pad as u8 ^ 0x80);
    right.fill(pad as u8 ^ 0x80);
    // Dword 4L + k of a permuted row is dword 4k + L: after the unpacks, which work within
    // 128-bit lanes, quad vector k holds channels 16k..16k + 16 in order.
    let perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let flip = _mm512_set1_epi8(i8::MIN);
    let src = rows.map(|r| r.as_ptr());
    let out = inner.as_mut_ptr();
    for x in 0..len / c {
        let mut ch = 0;
        // SAFETY: x·c + ch + 64 ≤ len bytes of each row (c is a multiple of 16 and ch + 64 ≤
        // c, or ch + 16 ≤ c below), and `inner` holds 4·len bytes.
        unsafe {
            while ch + 64 <= c {
                let at = x * c + ch;
                let r: [__m512i; 4] = std::array::from_fn(|j| {
                    let v = _mm512_loadu_si512(src[j].add(at).cast());
                    _mm512_permutexvar_epi32(perm, _mm512_xor_si512(v, flip))
                });
                let (lo01, hi01) = (
                    _mm512_unpacklo_epi8(r[0], r[1]),
                    _mm512_unpackhi_epi8(r[0], r[1]),
                );
                let (lo23, hi23) = (
                    _mm512_unpacklo_epi8(r[2], r[3]),
                    _mm512_unpackhi_epi8(r[2], r[3]),
                );
                let d = out.add(at * 4);
                _mm512_storeu_si512(d.cast(), _mm512_unpacklo_epi16(lo01, lo23));
                _mm512_storeu_si512(d.add(64).cast(), _mm512_unpackhi_epi16(lo01, lo23));
                _mm512_storeu_si512(d.add(128).cast(), _mm512_unpacklo_epi16(hi01, hi23));
                _mm512_storeu_si512(d.add(192).cast(), _mm512_unpackhi_epi16(hi01, hi23));
                ch += 64;
            }
            // The 16 to 48 channels left: 16 at a time in SSE registers. (One loop of masked
            // 64-channel loads storing only the quad vectors it filled ran MobileNetV2 12%
            // slower: 11.0-11.6 against 10.2-10.6 ms per 128, one thread, min of 40.)
            while ch < c {
                let at = x * c + ch;
                let r: [__m128i; 4] = std::array::from_fn(|j| {
                    let v = _mm_loadu_si128(src[j].add(at).cast());
                    _mm_xor_si128(v, _mm512_castsi512_si128(flip))
                });
                let (lo01, hi01) = (_mm_unpacklo_epi8(r[0], r[1]), _mm_unpackhi_epi8(r[0], r[1]));
                let (lo23, hi23) = (_mm_unpacklo_epi8(r[2], r[3]), _mm_unpackhi_epi8(r[2], r[3]));
                let d = out.add(at * 4);
                _mm_storeu_si128(d.cast(), _mm_unpacklo_epi16(lo01, lo23));
                _mm_storeu_si128(d.add(16).cast(), _mm_unpackhi_epi16(lo01, lo23));
                _mm_storeu_si128(d.add(32).cast(), _mm_unpacklo_epi16(hi01, hi23));
                _mm_storeu_si128(d.add(48).cast(), _mm_unpackhi_epi16(hi01, hi23));
                ch += 16;
            }
        }
    }
}
