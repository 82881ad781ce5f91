//! Max and average pooling over NCHW batches, generic over the element type so that both
//! engines share one loop.

/// The geometry of one 2-D pooling: input [c, h, w], window, stride, padding
/// (top, left, bottom, right) and the output size they give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window (kh, kw).
    pub kernel: (usize, usize),
    /// Stride (sh, sw).
    pub stride: (usize, usize),
    /// Padding (top, left, bottom, right).
    pub pad: [usize; 4],
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl PoolGeom {
    /// Geometry for an input of shape [c, h, w]. The output size follows ONNX:
    /// ⌊(len + pads − k) / s⌋ + 1, or with `ceil_mode` the ceiling, dropping a last window that
    /// would start in the trailing padding (as ONNX Runtime and PyTorch do). Errors on a zero
    /// window or stride, a window larger than the padded input, or a padding not smaller than
    /// the window (which could leave a window with no input tap).
    pub fn new(
        in_shape: &[usize],
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: [usize; 4],
        ceil_mode: bool,
    ) -> Result<Self, String> {
        let &[c, h, w] = in_shape else {
            return Err(format!("pool input shape {in_shape:?} is not [c, h, w]"));
        };
        if h == 0 || w == 0 {
            return Err(format!("pool input shape {in_shape:?} has an empty plane"));
        }
        let oh = pool_out_len(h, kernel.0, stride.0, (pad[0], pad[2]), ceil_mode)?;
        let ow = pool_out_len(w, kernel.1, stride.1, (pad[1], pad[3]), ceil_mode)?;
        Ok(PoolGeom {
            c,
            h,
            w,
            kernel,
            stride,
            pad,
            oh,
            ow,
        })
    }
}

/// Output length along one axis (see [`PoolGeom::new`]).
fn pool_out_len(
    len: usize,
    k: usize,
    stride: usize,
    (head, tail): (usize, usize),
    ceil_mode: bool,
) -> Result<usize, String> {
    if k == 0 || stride == 0 {
        return Err(format!("window {k} and stride {stride} must be positive"));
    }
    if head >= k || tail >= k {
        return Err(format!(
            "padding ({head}, {tail}) must be smaller than the window {k}"
        ));
    }
    let padded = len
        .checked_add(head)
        .and_then(|v| v.checked_add(tail))
        .ok_or("padded input overflows")?;
    if k > padded {
        return Err(format!(
            "window {k} exceeds the padded input length {padded}"
        ));
    }
    let span = padded - k;
    if !ceil_mode {
        return Ok(span / stride + 1);
    }
    let out = span.div_ceil(stride) + 1;
    // A last window starting in the trailing padding is dropped.
    let last_start = (out - 1).saturating_mul(stride);
    Ok(if last_start >= len + head {
        out - 1
    } else {
        out
    })
}

/// Pools each window of an [n, c, h, w] batch with geometry `g`: `fold` combines the values
/// of the input taps (padding taps are skipped) starting from `init`; `finish(acc, taps,
/// padded_taps)` turns the result into the output value, given the number of input taps and
/// the number of taps inside the padded input (the window clipped to the padded extent, the
/// ONNX Runtime divisor of an average with `count_include_pad`). Every window has at least
/// one input tap. Panics if `x` holds fewer than n · c · h · w values.
pub fn pool_padded<T: Copy, A: Copy>(
    x: &[T],
    n: usize,
    g: &PoolGeom,
    init: A,
    fold: impl Fn(A, T) -> A,
    finish: impl Fn(A, usize, usize) -> T,
) -> Vec<T> {
    let plane = g.h * g.w;
    assert!(x.len() >= n * g.c * plane, "pool input too short");
    let rows = windows(g.oh, g.h, g.kernel.0, g.stride.0, g.pad[0], g.pad[2]);
    let cols = windows(g.ow, g.w, g.kernel.1, g.stride.1, g.pad[1], g.pad[3]);
    let mut out = Vec::with_capacity(n * g.c * g.oh * g.ow);
    if g.kernel == (2, 2) && g.stride == (2, 2) && rows.iter().chain(&cols).all(|w| w.1 - w.0 == 2)
    {
        // The common 2×2/2 window, every window inside (so no padding: window j starts at
        // 2j): the same folds in the same order, over pairs of columns.
        for p in x.chunks(plane.max(1)).take(n * g.c) {
            for &(y0, ..) in &rows {
                let (r0, r1) = (
                    &p[y0 * g.w..(y0 + 1) * g.w],
                    &p[(y0 + 1) * g.w..(y0 + 2) * g.w],
                );
                let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2)).take(g.ow);
                out.extend(pairs.map(|(a, b)| {
                    let acc = fold(fold(init, a[0]), a[1]);
                    finish(fold(fold(acc, b[0]), b[1]), 4, 4)
                }));
            }
        }
        return out;
    }
    for p in x.chunks(plane.max(1)).take(n * g.c) {
        for &(y0, y1, ph) in &rows {
            for &(x0, x1, pw) in &cols {
                let mut acc = init;
                for y in y0..y1 {
                    for &v in &p[y * g.w + x0..y * g.w + x1] {
                        acc = fold(acc, v);
                    }
                }
                out.push(finish(acc, (y1 - y0) * (x1 - x0), ph * pw));
            }
        }
    }
    out
}

/// Max pooling of `n` planes `x` (codes or reals) over 2×2 windows with stride 2 and no
/// padding (the input's last row and column dropped when odd, as ONNX's floor mode does): per
/// output row, the two input rows' elementwise `max`, then the max of each adjacent pair.
/// `None` for any other geometry. `max` is a generic parameter, not a function pointer, so the
/// loops are compiled for it. The same values as [`pool_padded`] with that `max` (a max is a
/// max in any order; `f32::max` ignores a NaN beside a number as the fold from −∞ does, and
/// four NaN give NaN here and −∞ there, both non-finite), in loops the compiler vectorizes.
pub fn max_pool_2x2<T: Copy + Default, M: Fn(T, T) -> T>(
    x: &[T],
    n: usize,
    g: &PoolGeom,
    max: M,
) -> Option<Vec<T>> {
    let fits = g.kernel == (2, 2)
        && g.stride == (2, 2)
        && g.pad == [0; 4]
        && g.oh == g.h / 2
        && g.ow == g.w / 2;
    if !fits {
        return None;
    }
    assert!(x.len() >= n * g.c * g.h * g.w, "pool input too short");
    let mut out = vec![T::default(); n * g.c * g.oh * g.ow];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU supports AVX-512BW, checked just above.
        unsafe { max_2x2_avx512(x, g, &mut out, max) };
        return Some(out);
    }
    max_2x2(x, g, &mut out, max);
    Some(out)
}

/// [`max_2x2`] compiled for AVX-512BW (bytes and floats alike).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn max_2x2_avx512<T: Copy + Default, M: Fn(T, T) -> T>(
    x: &[T],
    g: &PoolGeom,
    out: &mut [T],
    max: M,
) {
    max_2x2(x, g, out, max);
}

#[inline(always)]
fn max_2x2<T: Copy + Default>(x: &[T], g: &PoolGeom, out: &mut [T], max: impl Fn(T, T) -> T) {
    let (w, ow) = (g.w, g.ow);
    let mut rowmax = vec![T::default(); 2 * ow];
    let planes = x.chunks_exact(g.h * w).zip(out.chunks_exact_mut(g.oh * ow));
    for (p, o) in planes {
        for (oy, orow) in o.chunks_exact_mut(ow).enumerate() {
            let (r0, r1) = (&p[2 * oy * w..][..2 * ow], &p[(2 * oy + 1) * w..][..2 * ow]);
            for ((m, &a), &b) in rowmax.iter_mut().zip(r0).zip(r1) {
                *m = max(a, b);
            }
            for (v, pair) in orow.iter_mut().zip(rowmax.chunks_exact(2)) {
                *v = max(pair[0], pair[1]);
            }
        }
    }
}

/// Per output position along one axis: the input range [lo, hi) of the window and the
/// number of its taps inside the padded input.
pub(crate) fn windows(
    out: usize,
    len: usize,
    k: usize,
    stride: usize,
    head: usize,
    tail: usize,
) -> Vec<(usize, usize, usize)> {
    (0..out)
        .map(|o| {
            // Window [start, start + k) in padded coordinates.
            let start = o * stride;
            let padded_taps = (start + k).min(len + head + tail) - start;
            let lo = start.saturating_sub(head).min(len);
            let hi = (start + k).saturating_sub(head).min(len);
            (lo, hi.max(lo), padded_taps)
        })
        .collect()
}

/// Pools each `kernel` window (with `stride`) of an [n, c, h, w] batch: `fold` combines values
/// starting from `init`, `finish(acc, count)` turns the result into the output value.
/// Panics if the window does not fit; [`pool_padded`] is the general form.
#[allow(clippy::too_many_arguments)]
pub fn pool<T: Copy, A: Copy>(
    x: &[T],
    n: usize,
    in_shape: &[usize],
    kernel: (usize, usize),
    stride: (usize, usize),
    init: A,
    fold: impl Fn(A, T) -> A,
    finish: impl Fn(A, usize) -> T,
) -> Vec<T> {
    let shape = in_shape.get(..3).unwrap_or(in_shape);
    let g = match PoolGeom::new(shape, kernel, stride, [0; 4], false) {
        Ok(g) => g,
        Err(e) => panic!("invalid pool geometry: {e}"),
    };
    pool_padded(x, n, &g, init, fold, |acc, taps, _| finish(acc, taps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_max_pool_on_i8_and_the_old_wrapper() {
        // 1×3×3 of i8, window 2, stride 2, padding (1, 1, 0, 0), ceil: 2×2 output.
        let x: Vec<i8> = vec![-5, 1, 2, 3, -4, 6, 7, 8, -9];
        let g = PoolGeom::new(&[1, 3, 3], (2, 2), (2, 2), [1, 1, 0, 0], true).unwrap();
        assert_eq!((g.oh, g.ow), (2, 2));
        let y = pool_padded(&x, 1, &g, i8::MIN, i8::max, |m, _, _| m);
        assert_eq!(y, vec![-5, 2, 7, 8]);
        let counts = pool_padded(&x, 1, &g, 0i8, |a, _| a, |_, t, p| (t * 10 + p) as i8);
        assert_eq!(counts, vec![14, 24, 24, 44]);
        let old = pool(
            &x,
            1,
            &[1, 3, 3],
            (2, 2),
            (1, 1),
            0i32,
            |a, v| a + v as i32,
            |s, k| (s / k as i32) as i8,
        );
        assert_eq!(old, vec![-1, 1, 3, 0]);
    }

    #[test]
    fn the_two_by_two_code_kernel_matches_direct_loops() {
        for (n, c, h, w) in [(2, 3, 28, 28), (1, 2, 5, 7), (3, 1, 10, 130), (1, 1, 3, 2)] {
            let x: Vec<i8> = (0..n * c * h * w)
                .map(|i| ((i * 7919 + 13) % 256) as u8 as i8)
                .collect();
            let g = PoolGeom::new(&[c, h, w], (2, 2), (2, 2), [0; 4], false).unwrap();
            let got = max_pool_2x2(&x, n, &g, i8::max).expect("a 2×2/2 window");
            let mut want = Vec::new();
            for p in 0..n * c {
                for oy in 0..h / 2 {
                    for ox in 0..w / 2 {
                        let at = |dy, dx| x[(p * h + 2 * oy + dy) * w + 2 * ox + dx];
                        want.push(at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1)));
                    }
                }
            }
            assert_eq!(got, want, "{n}x{c}x{h}x{w}");
        }
        let padded = PoolGeom::new(&[1, 4, 4], (2, 2), (2, 2), [1, 1, 0, 0], false).unwrap();
        assert!(max_pool_2x2(&[0i8; 16], 1, &padded, i8::max).is_none());
        let ceil = PoolGeom::new(&[1, 5, 5], (2, 2), (2, 2), [0; 4], true).unwrap();
        assert!(max_pool_2x2(&[0i8; 25], 1, &ceil, i8::max).is_none());
    }

    #[test]
    fn two_by_two_windows_match_direct_loops() {
        // Even and odd sizes (the last row/column of an odd input is dropped without ceil).
        for (c, h, w) in [(2, 6, 8), (3, 5, 7)] {
            let x: Vec<f32> = (0..c * h * w)
                .map(|i| ((i * 37) % 19) as f32 - 9.0)
                .collect();
            let g = PoolGeom::new(&[c, h, w], (2, 2), (2, 2), [0; 4], false).unwrap();
            let max = pool_padded(&x, 1, &g, f32::MIN, f32::max, |m, _, _| m);
            let avg = pool_padded(
                &x,
                1,
                &g,
                0.0,
                |a, v| a + v,
                |s, t, p| s / (t * 10 + p) as f32,
            );
            let mut want = (Vec::new(), Vec::new());
            for ch in 0..c {
                for oy in 0..h / 2 {
                    for ox in 0..w / 2 {
                        let at = |dy, dx| x[(ch * h + 2 * oy + dy) * w + 2 * ox + dx];
                        let v = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                        want.0.push(v.iter().copied().fold(f32::MIN, f32::max));
                        want.1.push(v.iter().sum::<f32>() / 44.0);
                    }
                }
            }
            assert_eq!((max, avg), want, "{c}x{h}x{w}");
        }
    }
}
