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
    /// Padding (top, left, bottom, right).
    pub pad: [usize; 4],
    /// Dilation (dh, dw): taps of the kernel are this far apart.
    pub dilation: (usize, usize),
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl ConvGeom {
    /// Geometry for an input of shape [c, h, w] with symmetric padding (ph, pw) and no
    /// dilation. Panics if the kernel does not fit; [`ConvGeom::general`] reports it instead.
    pub fn new(
        in_shape: &[usize],
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Self {
        let pad = [padding.0, padding.1, padding.0, padding.1];
        let shape = in_shape.get(..3).unwrap_or(in_shape);
        match ConvGeom::general(shape, kernel, stride, pad, (1, 1)) {
            Ok(g) => g,
            Err(e) => panic!("invalid convolution geometry: {e}"),
        }
    }

    /// Geometry for an input of shape [c, h, w], padding (top, left, bottom, right) and
    /// dilation (dh, dw). Errors on a zero kernel, stride or dilation and on a dilated kernel
    /// larger than the padded input.
    pub fn general(
        in_shape: &[usize],
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: [usize; 4],
        dilation: (usize, usize),
    ) -> Result<Self, String> {
        let &[c, h, w] = in_shape else {
            return Err(format!("conv input shape {in_shape:?} is not [c, h, w]"));
        };
        let oh = conv_out_len(h, kernel.0, stride.0, pad[0] + pad[2], dilation.0)?;
        let ow = conv_out_len(w, kernel.1, stride.1, pad[1] + pad[3], dilation.1)?;
        Ok(ConvGeom {
            c,
            h,
            w,
            kernel,
            stride,
            pad,
            dilation,
            oh,
            ow,
        })
    }

    /// Elements of one im2col row over all channels (c · kh · kw).
    pub fn k(&self) -> usize {
        self.c * self.kernel.0 * self.kernel.1
    }

    /// A 1×1 kernel at stride 1 without padding: each output pixel's patch is its input
    /// pixel's channels, read in place.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == (1, 1) && self.pad == [0; 4]
    }

    /// Output pixels per sample.
    pub fn out_pixels(&self) -> usize {
        self.oh * self.ow
    }

    /// Height and width of the input with its padding on all sides (hp, wp).
    pub fn padded_dims(&self) -> (usize, usize) {
        (
            self.h + self.pad[0] + self.pad[2],
            self.w + self.pad[1] + self.pad[3],
        )
    }
}

/// Output length along one axis: (len + pads − ((k − 1)·d + 1)) / s + 1.
fn conv_out_len(
    len: usize,
    k: usize,
    stride: usize,
    pads: usize,
    dilation: usize,
) -> Result<usize, String> {
    if k == 0 || stride == 0 || dilation == 0 {
        return Err(format!(
            "kernel {k}, stride {stride} and dilation {dilation} must be positive"
        ));
    }
    let extent = (k - 1)
        .checked_mul(dilation)
        .and_then(|e| e.checked_add(1))
        .ok_or("dilated kernel overflows")?;
    let padded = len.checked_add(pads).ok_or("padded input overflows")?;
    if extent > padded {
        return Err(format!(
            "dilated kernel extent {extent} exceeds the padded input length {padded}"
        ));
    }
    Ok((padded - extent) / stride + 1)
}

/// Rows [n · oh · ow, c · kh · kw] of input patches; out-of-image taps get `pad`
/// (0.0 for floats, the input zero point for integers).
pub fn im2col<T: Copy>(x: &[T], n: usize, g: &ConvGeom, pad: T) -> Vec<T> {
    im2col_channels(x, n, g, 0, g.c, pad)
}

/// For each output column, the kernel taps whose input column lies in the image: [lo, hi).
fn tap_ranges(
    out: usize,
    len: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
) -> Vec<(usize, usize)> {
    (0..out)
        .map(|o| {
            let x0 = (o * stride) as isize - pad as isize;
            let d = dil as isize;
            // Smallest k with x0 + k·d >= 0, and the first k with x0 + k·d >= len.
            let lo = if x0 >= 0 {
                0
            } else {
                ((-x0 + d - 1) / d) as usize
            };
            let hi = if x0 >= len as isize {
                0
            } else {
                ((len as isize - x0 + d - 1) / d) as usize
            };
            let (lo, hi) = (lo.min(k), hi.min(k));
            (lo, hi.max(lo))
        })
        .collect()
}

/// Rows [n · oh · ow, cg · kh · kw] of input patches over the channels [c0, c0 + cg) of each
/// sample (for grouped convolutions); `x` holds n samples of `g.c` channels. Out-of-image taps
/// get `pad`. Panics if the channel slice or `x` does not fit the geometry.
pub fn im2col_channels<T: Copy>(
    x: &[T],
    n: usize,
    g: &ConvGeom,
    c0: usize,
    cg: usize,
    pad: T,
) -> Vec<T> {
    let plane = g.h * g.w;
    assert!(
        c0 + cg <= g.c,
        "channels [{c0}, {}) outside {}",
        c0 + cg,
        g.c
    );
    assert!(x.len() >= n * g.c * plane, "im2col input too short");
    let (kh, kw) = g.kernel;
    let (dh, dw) = g.dilation;
    let k = cg * kh * kw;
    let mut out = vec![pad; n * g.out_pixels() * k];
    let rows = tap_ranges(g.oh, g.h, kh, g.stride.0, g.pad[0], dh);
    let cols = tap_ranges(g.ow, g.w, kw, g.stride.1, g.pad[1], dw);
    for s in 0..n {
        let xs = &x[(s * g.c + c0) * plane..(s * g.c + c0 + cg) * plane];
        for (oy, &(ky0, ky1)) in rows.iter().enumerate() {
            if ky0 == ky1 {
                continue;
            }
            let y0 = oy * g.stride.0 + ky0 * dh - g.pad[0];
            for (ox, &(kx0, kx1)) in cols.iter().enumerate() {
                if kx0 == kx1 {
                    continue;
                }
                let row = (s * g.out_pixels() + oy * g.ow + ox) * k;
                let dst = &mut out[row..row + k];
                let x0 = ox * g.stride.1 + kx0 * dw - g.pad[1];
                for c in 0..cg {
                    for (j, ky) in (ky0..ky1).enumerate() {
                        let src = &xs[c * plane + (y0 + j * dh) * g.w..][..g.w];
                        let d = &mut dst[(c * kh + ky) * kw..][..kw];
                        if dw == 1 {
                            d[kx0..kx1].copy_from_slice(&src[x0..x0 + kx1 - kx0]);
                        } else {
                            for (i, kx) in (kx0..kx1).enumerate() {
                                d[kx] = src[x0 + i * dw];
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// One sample's patches as columns: [c · kh · kw, oh · ow], taps in (channel, ky, kx) order,
/// so that weights [o, c · kh · kw] times it is the output [o, oh · ow] in NCHW order. Each
/// output row of an undilated, unit-stride tap is one contiguous copy. Out-of-image taps get
/// `pad`. `x` is one sample [c, h, w].
pub fn im2col_columns<T: Copy>(x: &[T], g: &ConvGeom, pad: T, out: &mut Vec<T>) {
    let (kh, kw) = g.kernel;
    let (dh, dw) = g.dilation;
    let (plane, pixels) = (g.h * g.w, g.out_pixels());
    // Every tap row is written in full below, so a reused buffer needs no clearing.
    out.resize(g.k() * pixels, pad);
    let rows = tap_ranges(g.oh, g.h, kh, g.stride.0, g.pad[0], dh);
    let cols = tap_ranges(g.ow, g.w, kw, g.stride.1, g.pad[1], dw);
    for c in 0..g.c {
        let xc = &x[c * plane..(c + 1) * plane];
        for ky in 0..kh {
            for kx in 0..kw {
                let dst = &mut out[((c * kh + ky) * kw + kx) * pixels..][..pixels];
                if g.stride == (1, 1) && g.dilation == (1, 1) && g.ow == g.w {
                    shifted_plane(xc, g, (ky, kx), pad, dst);
                    continue;
                }
                dst.fill(pad);
                // The output columns whose tap kx lies in the image: a contiguous run.
                let ox0 = cols.iter().position(|&(a, b)| (a..b).contains(&kx));
                let Some(ox0) = ox0 else { continue };
                let ox1 = ox0
                    + cols[ox0..]
                        .iter()
                        .take_while(|&&(a, b)| (a..b).contains(&kx))
                        .count();
                let ix0 = ox0 * g.stride.1 + kx * dw - g.pad[1];
                for (oy, &(a, b)) in rows.iter().enumerate() {
                    if !(a..b).contains(&ky) {
                        continue;
                    }
                    let iy = oy * g.stride.0 + ky * dh - g.pad[0];
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    let d = &mut dst[oy * g.ow + ox0..oy * g.ow + ox1];
                    if g.stride.1 == 1 {
                        d.copy_from_slice(&src[ix0..ix0 + d.len()]);
                    } else {
                        for (v, &s) in d.iter_mut().zip(src[ix0..].iter().step_by(g.stride.1)) {
                            *v = s;
                        }
                    }
                }
            }
        }
    }
}

/// One tap's row of [`im2col_columns`] for a unit-stride, undilated conv whose output rows are
/// as wide as the input's: the tap reads the plane shifted by a fixed offset, so it is one
/// copy, after which the columns that fell off the left or right edge are set to `pad`.
fn shifted_plane<T: Copy>(xc: &[T], g: &ConvGeom, (ky, kx): (usize, usize), pad: T, dst: &mut [T]) {
    let (w, ow) = (g.w as isize, g.ow);
    // Output rows whose input row oy + ky − pad_top lies in the image.
    let oy0 = g.pad[0].saturating_sub(ky).min(g.oh);
    let oy1 = (g.h + g.pad[0]).saturating_sub(ky).min(g.oh).max(oy0);
    let off = (ky as isize - g.pad[0] as isize) * w + kx as isize - g.pad[1] as isize;
    // dst[i] = xc[i + off] for i in the valid rows, clipped to the plane.
    let end = (oy1 * ow) as isize;
    let lo = ((oy0 * ow) as isize).max(-off).min(end) as usize;
    let hi = end.min(xc.len() as isize - off).max(lo as isize) as usize;
    dst[..lo].fill(pad);
    if hi > lo {
        let s0 = (lo as isize + off) as usize;
        dst[lo..hi].copy_from_slice(&xc[s0..s0 + hi - lo]);
    }
    dst[hi..].fill(pad);
    // Columns whose input column ox + kx − pad_left is outside [0, w) read a neighbouring row.
    let left = g.pad[1].saturating_sub(kx).min(ow);
    let right = (g.w + g.pad[1]).saturating_sub(kx).min(ow).max(left);
    // Column by column down the rows (a few columns at most): a fill per row would be a
    // memset call for one or two codes.
    let cols = if oy1 > oy0 {
        (0..left).chain(right..ow)
    } else {
        (0..0).chain(0..0)
    };
    for c in cols {
        for v in dst[oy0 * ow + c..oy1 * ow].iter_mut().step_by(ow) {
            *v = pad;
        }
    }
}

/// `dst` [cols, rows] = the transpose of `src` [rows, cols], in tiles that stay in cache.
pub fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let d = &mut dst[c * rows + r0..c * rows + r1];
                for (r, v) in (r0..r1).zip(d) {
                    *v = src[r * cols + c];
                }
            }
        }
    }
}

/// NCHW samples [n, c, plane] to channels-last [n, plane, c] in `out`.
pub fn nchw_to_nhwc<T: Copy + Default>(
    x: &[T],
    n: usize,
    c: usize,
    plane: usize,
    out: &mut Vec<T>,
) {
    out.clear();
    out.resize(n * c * plane, T::default());
    for (xs, os) in x
        .chunks_exact(c * plane)
        .zip(out.chunks_exact_mut(c * plane))
    {
        transpose(xs, c, plane, os);
    }
}

/// Rows [n · oh · ow, kh · kw · c] of input patches, taps ordered (ky, kx, channel), from
/// channels-last samples `x` ([n, h, w, c]): each kernel row of an undilated window is one
/// contiguous copy of kw · c values. Out-of-image taps get `pad`.
pub fn im2col_nhwc<T: Copy>(x: &[T], n: usize, g: &ConvGeom, pad: T) -> Vec<T> {
    assert!(x.len() >= n * g.c * g.h * g.w, "im2col input too short");
    let (pixels, sample) = (g.out_pixels(), g.h * g.w * g.c);
    let mut out = vec![pad; n * pixels * g.k()];
    for (s, dst) in out.chunks_exact_mut(pixels * g.k()).enumerate() {
        im2col_nhwc_rows(&x[s * sample..(s + 1) * sample], g, pad, 0..pixels, dst);
    }
    out
}

/// The patch rows of output pixels `pixels` (row-major over oh × ow) of one channels-last
/// sample `xs` ([h, w, c]) into `dst` ([pixels.len(), kh · kw · c]), as [`im2col_nhwc`].
/// Codes (one-byte `T`) take a build whose runs move in masked 64-byte vector copies where the
/// CPU has AVX-512BW: a run is a few dozen bytes, for which a `memcpy` call costs more than
/// the copy.
pub fn im2col_nhwc_rows<T: Copy>(
    xs: &[T],
    g: &ConvGeom,
    pad: T,
    pixels: std::ops::Range<usize>,
    dst: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<T>() == 1 && has_avx512bw() {
        // SAFETY: AVX-512BW was detected just above; T is one byte.
        unsafe { nhwc_rows_avx512::<T, false>(xs, g, pad, pixels, dst) };
        return;
    }
    nhwc_rows(xs, g, pad, pixels, dst, |d, s| d.copy_from_slice(s));
}

/// [`im2col_nhwc_rows`] of codes written shifted to unsigned, x ^ 0x80 (padding `pad ^ 0x80`),
/// as [`gemm_i8_shifted`](crate::engine::kernels::gemm_i8_shifted) reads them.
pub fn im2col_nhwc_rows_shifted(
    xs: &[i8],
    g: &ConvGeom,
    pad: i8,
    pixels: std::ops::Range<usize>,
    dst: &mut [i8],
) {
    let pad = pad ^ i8::MIN;
    #[cfg(target_arch = "x86_64")]
    if has_avx512bw() {
        // SAFETY: AVX-512BW was detected just above; i8 is one byte.
        unsafe { nhwc_rows_avx512::<i8, true>(xs, g, pad, pixels, dst) };
        return;
    }
    nhwc_rows(xs, g, pad, pixels, dst, |d, s| {
        d.iter_mut().zip(s).for_each(|(d, &s)| *d = s ^ i8::MIN)
    });
}

/// [`nhwc_rows`] for one-byte `T`, runs moved by [`copy_bytes_avx512`] (their top bits flipped
/// when `FLIP`; a long unflipped run by `copy_from_slice`). `pad` is written as given.
///
/// # Safety
/// The CPU supports AVX-512F and BW; `T` is one byte.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn nhwc_rows_avx512<T: Copy, const FLIP: bool>(
    xs: &[T],
    g: &ConvGeom,
    pad: T,
    pixels: std::ops::Range<usize>,
    dst: &mut [T],
) {
    nhwc_rows(xs, g, pad, pixels, dst, |d: &mut [T], s: &[T]| {
        assert_eq!(d.len(), s.len(), "runs of one length");
        if FLIP || d.len() <= 256 {
            // SAFETY: T is one byte and Copy, so moving its bytes moves its values; both
            // slices hold `len` of them; the features per this fn's contract.
            unsafe { copy_bytes_avx512::<FLIP>(d.as_mut_ptr().cast(), s.as_ptr().cast(), d.len()) }
        } else {
            d.copy_from_slice(s)
        }
    });
}

#[inline(always)]
fn nhwc_rows<T: Copy>(
    xs: &[T],
    g: &ConvGeom,
    pad: T,
    pixels: std::ops::Range<usize>,
    dst: &mut [T],
    copy_run: impl Fn(&mut [T], &[T]),
) {
    let (kh, kw) = g.kernel;
    let (dh, dw) = g.dilation;
    let c = g.c;
    let k = kh * kw * c;
    assert!(xs.len() >= g.h * g.w * c && dst.len() >= pixels.len() * k);
    let rows = tap_ranges(g.oh, g.h, kh, g.stride.0, g.pad[0], dh);
    let cols = tap_ranges(g.ow, g.w, kw, g.stride.1, g.pad[1], dw);
    for (p, dst) in pixels.zip(dst.chunks_exact_mut(k)) {
        let (oy, ox) = (p / g.ow, p % g.ow);
        let ((ky0, ky1), (kx0, kx1)) = (rows[oy], cols[ox]);
        if (ky0, ky1, kx0, kx1) != (0, kh, 0, kw) {
            // A window that reaches past the image: its outside taps are `pad`.
            dst.fill(pad);
        }
        if kx0 == kx1 {
            continue;
        }
        let y0 = (oy * g.stride.0 + ky0 * dh).wrapping_sub(g.pad[0]);
        let x0 = ox * g.stride.1 + kx0 * dw - g.pad[1];
        for (j, ky) in (ky0..ky1).enumerate() {
            let src = &xs[(y0 + j * dh) * g.w * c..][..g.w * c];
            let d = &mut dst[ky * kw * c..][..kw * c];
            if dw == 1 {
                let len = (kx1 - kx0) * c;
                copy_run(&mut d[kx0 * c..kx0 * c + len], &src[x0 * c..x0 * c + len]);
            } else {
                for (i, kx) in (kx0..kx1).enumerate() {
                    let from = (x0 + i * dw) * c;
                    copy_run(&mut d[kx * c..(kx + 1) * c], &src[from..from + c]);
                }
            }
        }
    }
}

/// `dst[i] = src[i] ^ 0x80` (codes shifted to unsigned bytes), in masked 64-byte moves where
/// the CPU has AVX-512BW.
///
/// # Panics
/// If the slices differ in length.
pub fn copy_flipped(dst: &mut [i8], src: &[i8]) {
    assert_eq!(dst.len(), src.len(), "flipped copy of one length");
    #[cfg(target_arch = "x86_64")]
    if has_avx512bw() {
        // SAFETY: AVX-512BW was detected just above; both slices hold `len` bytes and one is
        // borrowed mutably, so they do not overlap.
        unsafe {
            copy_bytes_avx512::<true>(dst.as_mut_ptr().cast(), src.as_ptr().cast(), src.len())
        };
        return;
    }
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s ^ i8::MIN);
}

/// `dst.copy_from_slice(src)` for the short runs of an image row (a few dozen values), in
/// masked 64-byte moves where the CPU has AVX-512BW, otherwise (up to 256 bytes) in
/// unaligned 16-, 8- or 4-byte moves: a `memmove` call costs more than the copy.
///
/// # Panics
/// If the slices differ in length.
pub fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "runs of one length");
    let bytes = std::mem::size_of_val(src);
    #[cfg(target_arch = "x86_64")]
    if has_avx512bw() {
        // SAFETY: AVX-512BW was detected just above; T is Copy, so moving its bytes moves its
        // values; both slices hold `bytes` bytes and one is borrowed mutably (no overlap).
        unsafe { copy_bytes_avx512::<false>(dst.as_mut_ptr().cast(), src.as_ptr().cast(), bytes) };
        return;
    }
    if bytes <= SHORT_BYTES {
        // SAFETY: as above: both slices hold `bytes` bytes and do not overlap.
        unsafe { copy_bytes_overlapping(dst.as_mut_ptr().cast(), src.as_ptr().cast(), bytes) };
        return;
    }
    dst.copy_from_slice(src);
}

/// Longest copy [`copy_short`] makes by its own moves on a CPU without AVX-512BW.
const SHORT_BYTES: usize = 256;

/// Copies `len` bytes from `src` to `dst` in unaligned moves of 16 bytes (8 or 4 when shorter),
/// the last move ending at `len` and overlapping the one before it.
///
/// # Safety
/// `src` readable and `dst` writable for `len` bytes, not overlapping.
#[inline]
unsafe fn copy_bytes_overlapping(dst: *mut u8, src: *const u8, len: usize) {
    use std::ptr::{read_unaligned, write_unaligned};
    /// Moves the N bytes at offset `at`.
    ///
    /// # Safety
    /// `at + N ≤ len` (this fn's contract covers the rest).
    unsafe fn mov<const N: usize>(dst: *mut u8, src: *const u8, at: usize) {
        // SAFETY: per the caller, bytes at .. at + N lie inside both buffers.
        unsafe {
            write_unaligned(
                dst.add(at).cast::<[u8; N]>(),
                read_unaligned(src.add(at).cast()),
            )
        }
    }
    // SAFETY (whole body): every move covers bytes inside 0 .. len.
    unsafe {
        if len >= 16 {
            let mut i = 0;
            while i + 16 < len {
                mov::<16>(dst, src, i);
                i += 16;
            }
            mov::<16>(dst, src, len - 16);
        } else if len >= 8 {
            mov::<8>(dst, src, 0);
            mov::<8>(dst, src, len - 8);
        } else if len >= 4 {
            mov::<4>(dst, src, 0);
            mov::<4>(dst, src, len - 4);
        } else {
            for i in 0..len {
                mov::<1>(dst, src, i);
            }
        }
    }
}

/// Whether this CPU has AVX-512BW (detected once; the integer engine's byte kernels ask here).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512bw() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bw"))
}

/// Copies `len` bytes from `src` to `dst` in masked 64-byte moves, each byte with its top bit
/// flipped (x ^ 0x80) when `FLIP`.
///
/// # Safety
/// AVX-512BW; `src` readable and `dst` writable for `len` bytes, not overlapping.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn copy_bytes_avx512<const FLIP: bool>(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::*;
    let flip = _mm512_set1_epi8(if FLIP { i8::MIN } else { 0 });
    let mut i = 0;
    while i < len {
        let n = (len - i).min(64);
        let m: u64 = if n == 64 { !0 } else { (1u64 << n) - 1 };
        // SAFETY: the mask covers bytes i .. i + n ≤ len of both, per this fn's contract.
        unsafe {
            let v = _mm512_maskz_loadu_epi8(m, src.add(i).cast());
            let v = if FLIP { _mm512_xor_si512(v, flip) } else { v };
            _mm512_mask_storeu_epi8(dst.add(i).cast(), m, v);
        }
        i += 64;
    }
}

/// Samples per im2col block so that one block's patch matrix stays cache-sized (~4096 rows).
pub fn samples_per_block(g: &ConvGeom) -> usize {
    (4096 / g.out_pixels().max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_moves_copy_every_length_and_nothing_past_it() {
        let src: Vec<u8> = (0..=SHORT_BYTES).map(|i| (i * 7 + 1) as u8).collect();
        for len in 0..=SHORT_BYTES {
            let mut dst = vec![0u8; SHORT_BYTES + 8];
            // SAFETY: both buffers hold at least `len` bytes and are distinct.
            unsafe { copy_bytes_overlapping(dst.as_mut_ptr(), src.as_ptr(), len) };
            assert_eq!(&dst[..len], &src[..len], "length {len}");
            assert!(
                dst[len..].iter().all(|&b| b == 0),
                "wrote past length {len}"
            );
        }
        let mut f = [0f32; 29];
        let g: Vec<f32> = (0..29).map(|i| i as f32 * 0.5).collect();
        copy_short(&mut f, &g);
        assert_eq!(f.as_slice(), g.as_slice());
    }

    #[test]
    fn general_geometry_and_errors() {
        let g = ConvGeom::general(&[3, 5, 6], (3, 2), (2, 1), [1, 0, 2, 3], (2, 3)).unwrap();
        // h: 5 + 3 − 5 = 3 → 3/2 + 1 = 2; w: 6 + 3 − 4 = 5 → 6.
        assert_eq!((g.oh, g.ow, g.pad), (2, 6, [1, 0, 2, 3]));
        assert!(ConvGeom::general(&[3, 5, 6], (3, 2), (0, 1), [0; 4], (1, 1)).is_err());
        assert!(ConvGeom::general(&[3, 5, 6], (3, 2), (1, 1), [0; 4], (0, 1)).is_err());
        assert!(ConvGeom::general(&[3, 5, 6], (3, 2), (1, 1), [0; 4], (3, 1)).is_err());
        assert!(ConvGeom::general(&[3, 5], (3, 2), (1, 1), [0; 4], (1, 1)).is_err());
        let old = ConvGeom::new(&[2, 4, 4], (3, 3), (1, 1), (1, 1));
        assert_eq!(
            (old.oh, old.ow, old.pad, old.dilation),
            (4, 4, [1, 1, 1, 1], (1, 1))
        );
    }

    /// Kernel, stride, padding (top, left, bottom, right) and dilation.
    type Geometry = ((usize, usize), (usize, usize), [usize; 4], (usize, usize));

    /// Geometries the layouts are checked on: strides, dilations, asymmetric and wide padding.
    const GEOMETRIES: [Geometry; 11] = [
        ((3, 2), (2, 1), [1, 0, 2, 3], (2, 3)),
        ((2, 3), (1, 2), [0, 2, 1, 0], (1, 1)),
        ((3, 3), (1, 1), [1, 1, 1, 1], (1, 1)),
        ((1, 1), (3, 3), [2, 2, 2, 2], (1, 1)),
        ((3, 3), (1, 1), [2, 1, 0, 2], (1, 2)),
        ((3, 3), (1, 1), [2, 2, 0, 0], (1, 1)),
        ((3, 3), (1, 1), [4, 0, 4, 2], (1, 1)),
        ((3, 3), (2, 2), [2, 1, 0, 2], (1, 2)),
        ((5, 3), (1, 1), [0, 2, 4, 0], (1, 1)),
        ((1, 1), (1, 1), [0, 0, 0, 0], (1, 1)),
        // Taller than the image with its padding: some taps read no image row at all.
        ((5, 3), (1, 1), [4, 1, 0, 1], (1, 1)),
    ];

    /// The patch of output pixel (s, oy, ox) by direct indexing of NCHW `x`: for each tap in
    /// `order` (channel-major (c, ky, kx) or channels-last (ky, kx, c)) over channels
    /// `c0..c1`, the input value or -1 outside the image.
    fn patch(
        x: &[i32],
        g: &ConvGeom,
        (s, oy, ox): (usize, usize, usize),
        c0: usize,
        c1: usize,
        last: bool,
    ) -> Vec<i32> {
        let at = |ch: usize, ky: usize, kx: usize| {
            let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize - g.pad[0] as isize;
            let ix = (ox * g.stride.1 + kx * g.dilation.1) as isize - g.pad[1] as isize;
            let inside = (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix);
            if inside {
                x[((s * g.c + ch) * g.h + iy as usize) * g.w + ix as usize]
            } else {
                -1
            }
        };
        let taps = (0..g.kernel.0).flat_map(|ky| (0..g.kernel.1).map(move |kx| (ky, kx)));
        if last {
            taps.flat_map(|(ky, kx)| (c0..c1).map(move |ch| (ch, ky, kx)))
                .map(|(ch, ky, kx)| at(ch, ky, kx))
                .collect()
        } else {
            (c0..c1)
                .flat_map(|ch| taps.clone().map(move |(ky, kx)| (ch, ky, kx)))
                .map(|(ch, ky, kx)| at(ch, ky, kx))
                .collect()
        }
    }

    /// Every output pixel's [`patch`], in (sample, oy, ox) order.
    fn reference_rows(
        x: &[i32],
        n: usize,
        g: &ConvGeom,
        c0: usize,
        c1: usize,
        last: bool,
    ) -> Vec<Vec<i32>> {
        let mut rows = Vec::new();
        for s in 0..n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    rows.push(patch(x, g, (s, oy, ox), c0, c1, last));
                }
            }
        }
        rows
    }

    /// The geometries of [`GEOMETRIES`] that fit a [c, h, w] input.
    fn geometries(c: usize, h: usize, w: usize) -> impl Iterator<Item = ConvGeom> {
        GEOMETRIES
            .into_iter()
            .filter_map(move |(k, s, p, d)| ConvGeom::general(&[c, h, w], k, s, p, d).ok())
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn byte_runs_copy_exactly() {
        // Every length of the vector path (and past it), at odd offsets; bytes around the run
        // stay untouched.
        if !std::arch::is_x86_feature_detected!("avx512bw") {
            return;
        }
        let src: Vec<i8> = (0..400).map(|i| (i * 37 % 256) as u8 as i8).collect();
        for len in 0..300 {
            let mut dst = vec![5i8; 400];
            // SAFETY: AVX-512BW was checked; both ranges hold `len` bytes.
            unsafe {
                copy_bytes_avx512::<false>(
                    dst[3..].as_mut_ptr().cast(),
                    src[7..].as_ptr().cast(),
                    len,
                )
            };
            assert_eq!(&dst[3..3 + len], &src[7..7 + len], "length {len}");
            assert!(
                dst[..3].iter().chain(&dst[3 + len..]).all(|&v| v == 5),
                "length {len}"
            );
        }
    }

    #[test]
    fn im2col_columns_matches_direct_indexing() {
        for (c, h, w) in [(3, 5, 7), (2, 1, 1), (1, 2, 1), (1, 2, 3)] {
            let x: Vec<i32> = (0..(c * h * w) as i32).collect();
            for g in geometries(c, h, w) {
                let want = reference_rows(&x, 1, &g, 0, c, false);
                // A reused buffer holding other values must come out the same.
                let mut got = vec![7; g.k() * g.out_pixels()];
                im2col_columns(&x, &g, -1, &mut got);
                for (p, row) in want.iter().enumerate() {
                    for (t, &v) in row.iter().enumerate() {
                        assert_eq!(got[t * g.out_pixels() + p], v, "{g:?} {c}x{h}x{w}");
                    }
                }
            }
        }
    }

    #[test]
    fn im2col_nhwc_matches_direct_indexing() {
        let (c, h, w, n) = (3, 5, 7, 2);
        // Channels-last input: value = its NCHW index, so the check reads it back by (ch, iy, ix).
        let nchw: Vec<i32> = (0..(n * c * h * w) as i32).collect();
        let mut x = Vec::new();
        nchw_to_nhwc(&nchw, n, c, h * w, &mut x);
        for g in geometries(c, h, w) {
            let want = reference_rows(&nchw, n, &g, 0, c, true).concat();
            assert_eq!(im2col_nhwc(&x, n, &g, -1), want, "{g:?}");
            // Rows of pixel blocks of sample 1, into a dirty buffer, give the same rows.
            let (pixels, k) = (g.out_pixels(), g.k());
            let x1 = &x[c * h * w..];
            for block in [1, 3, pixels] {
                let mut got = Vec::new();
                for p0 in (0..pixels).step_by(block) {
                    let mut dst = vec![77; block * k];
                    let p1 = (p0 + block).min(pixels);
                    im2col_nhwc_rows(x1, &g, -1, p0..p1, &mut dst);
                    got.extend_from_slice(&dst[..(p1 - p0) * k]);
                }
                assert_eq!(got, want[pixels * k..], "{g:?} blocks of {block}");
            }
        }
    }

    #[test]
    fn shifted_patch_rows_are_the_rows_with_the_top_bit_flipped() {
        for c in [1, 6, 40] {
            let (h, w) = (5, 7);
            let x: Vec<i8> = (0..c * h * w).map(|v| (v * 37 % 256) as u8 as i8).collect();
            for g in geometries(c, h, w) {
                let (pixels, k) = (g.out_pixels(), g.k());
                let mut want = vec![0i8; pixels * k];
                im2col_nhwc_rows(&x, &g, -3, 0..pixels, &mut want);
                let mut got = vec![0i8; pixels * k];
                im2col_nhwc_rows_shifted(&x, &g, -3, 0..pixels, &mut got);
                let flipped: Vec<i8> = want.iter().map(|&v| v ^ i8::MIN).collect();
                assert_eq!(got, flipped, "{g:?}, {c} channels");
            }
        }
    }

    #[test]
    fn im2col_nhwc_rows_of_codes_equal_the_generic_rows() {
        // Codes take the vector-copy build: the same rows as the i32 build on the same values,
        // for channel counts whose runs are shorter and longer than one vector.
        for c in [1, 6, 40] {
            let (h, w) = (5, 7);
            let x32: Vec<i32> = (0..(c * h * w) as i32).map(|v| v % 251 - 125).collect();
            let x8: Vec<i8> = x32.iter().map(|&v| v as i8).collect();
            for g in geometries(c, h, w) {
                let (pixels, k) = (g.out_pixels(), g.k());
                let mut want = vec![77i32; pixels * k];
                im2col_nhwc_rows(&x32, &g, -1, 0..pixels, &mut want);
                let mut got = vec![77i8; pixels * k];
                im2col_nhwc_rows(&x8, &g, -1, 0..pixels, &mut got);
                let got: Vec<i32> = got.iter().map(|&v| v as i32).collect();
                assert_eq!(got, want, "{g:?}, {c} channels");
            }
        }
    }

    #[test]
    fn im2col_channels_matches_direct_indexing() {
        let (c, h, w, n) = (4, 5, 7, 2);
        let x: Vec<i32> = (0..(n * c * h * w) as i32).collect();
        for g in geometries(c, h, w) {
            let (c0, cg) = (1, 2);
            let want = reference_rows(&x, n, &g, c0, c0 + cg, false).concat();
            assert_eq!(im2col_channels(&x, n, &g, c0, cg, -1), want, "{g:?}");
            // All channels: `im2col` is the full slice.
            assert_eq!(
                im2col(&x, n, &g, -1),
                reference_rows(&x, n, &g, 0, c, false).concat()
            );
        }
    }
}
