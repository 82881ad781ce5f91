//! Max and average pooling over NCHW batches, generic over the element type so that both
//! engines share one loop.

/// Pools each `kernel` window (with `stride`) of an [n, c, h, w] batch: `fold` combines values
/// starting from `init`, `finish(acc, count)` turns the result into the output value.
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
    let (c, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
    let oh = (h - kernel.0) / stride.0 + 1;
    let ow = (w - kernel.1) / stride.1 + 1;
    let count = kernel.0 * kernel.1;
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in x.chunks(h * w).take(n * c) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = init;
                for ky in 0..kernel.0 {
                    let row = (oy * stride.0 + ky) * w + ox * stride.1;
                    for &v in &plane[row..row + kernel.1] {
                        acc = fold(acc, v);
                    }
                }
                out.push(finish(acc, count));
            }
        }
    }
    out
}
