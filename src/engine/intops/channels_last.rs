//! The integer engine's channels-last mode ([`IntModel::forward_outputs`]): a conv leaves its
//! output channels-last in memory ([n, h, w, c] codes under the [n, c, h, w] shape), the next
//! conv reads it so with no transposes, and elementwise ops (Relu, Clip, a residual Add or Sub
//! of two values of one shape) keep it so. Every other reader gets an NCHW copy, as do the
//! graph outputs, so nothing outside the engine sees the order.
//!
//! [`IntModel::forward_outputs`]: crate::engine::int::IntModel::forward_outputs

use crate::engine::intops::mean::MeanRequant;
use crate::engine::pool::{PoolGeom, windows};
use crate::engine::tensor::{Data, Tensor};
use crate::engine::transpose::transpose_i8;
use crate::model::{BinaryOp, Op};
use crate::quant::QParams;

/// `t` (an [n, c, …] tensor stored channels-last: [n, …, c]) stored in its shape's order.
pub fn to_nchw(t: &Tensor) -> Tensor {
    let (n, c) = match t.shape.as_slice() {
        [n, c, _, ..] => (*n, *c),
        _ => return t.clone(),
    };
    let sample = t.len() / n.max(1);
    let plane = sample / c.max(1);
    if c <= 1 || plane <= 1 {
        return t.clone();
    }
    let data = match &t.data {
        Data::Q { data, qp } => {
            let mut y = crate::engine::recycle::codes(data.len());
            for (src, dst) in data.chunks_exact(sample).zip(y.chunks_exact_mut(sample)) {
                transpose_i8(src, (plane, c, c), dst, plane);
            }
            Data::Q { data: y, qp: *qp }
        }
        Data::F32(v) => Data::F32(transposed(v, (sample, plane, c))),
        Data::I64(v) => Data::I64(transposed(v, (sample, plane, c))),
    };
    Tensor {
        shape: t.shape.clone(),
        data,
    }
}

/// Codes `t` ([n, c, h, w] in shape order) stored channels-last ([n, h, w, c]) in a recycled
/// buffer, the inverse of [`to_nchw`]; `None` for anything but 4-D codes.
pub fn to_channels_last(t: &Tensor) -> Option<Tensor> {
    let (&[n, c, h, w], Data::Q { data, qp }) = (t.shape.as_slice(), &t.data) else {
        return None;
    };
    let (plane, sample) = (h * w, c * h * w);
    if data.len() != n * sample || sample == 0 {
        return None;
    }
    let mut y = crate::engine::recycle::codes(data.len());
    for (src, dst) in data.chunks_exact(sample).zip(y.chunks_exact_mut(sample)) {
        transpose_i8(src, (c, plane, plane), dst, c);
    }
    Some(Tensor::q(t.shape.clone(), y, *qp))
}

/// Samples of `sample` values, each [plane, c], as [c, plane].
fn transposed<T: Copy + Default>(v: &[T], (sample, plane, c): (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::default(); v.len()];
    for (src, dst) in v.chunks_exact(sample).zip(y.chunks_exact_mut(sample)) {
        for (p, row) in src.chunks_exact(c).enumerate() {
            for (ch, &x) in row.iter().enumerate() {
                dst[ch * plane + p] = x;
            }
        }
    }
    y
}

/// Whether `op` on `ins` computes each output value from the input values at the same index
/// alone, so it runs on channels-last inputs as they are and its output is channels-last: Relu
/// and Clip, and Add or Sub of two inputs of one 4-D shape (no broadcasting).
pub fn keeps_channels_last(op: &Op, ins: &[Option<&Tensor>]) -> bool {
    let arity = match op {
        Op::Relu | Op::Clip { .. } => 1,
        Op::Binary(BinaryOp::Add | BinaryOp::Sub) => 2,
        _ => return false,
    };
    let Some(Some(first)) = ins.first() else {
        return false;
    };
    ins.len() == arity
        && first.shape.len() == 4
        && ins
            .iter()
            .all(|t| t.is_some_and(|t| t.shape == first.shape))
}

/// MaxPool over window geometry `g` of channels-last codes `x` ([n, c, h, w] stored [n, h, w,
/// c]), channels-last out ([n, c, oh, ow] stored [n, oh, ow, c]): each output pixel's row the
/// elementwise max of the rows of its window's in-image pixels (padding takes no part, as in
/// the NCHW kernel; every window holds at least one such pixel, see [`PoolGeom::new`]).
pub fn max_pool(x: &Tensor, g: &PoolGeom) -> Result<Tensor, String> {
    let (q, qp) = x.as_q().ok_or("expects quantized input")?;
    let n = x.shape.first().copied().unwrap_or(0);
    let (c, sample) = (g.c, g.c * g.h * g.w);
    if q.len() != n * sample {
        return Err(format!("input {:?} does not fit the pool", x.shape));
    }
    let rows = windows(g.oh, g.h, g.kernel.0, g.stride.0, g.pad[0], g.pad[2]);
    let cols = windows(g.ow, g.w, g.kernel.1, g.stride.1, g.pad[1], g.pad[3]);
    let mut y = vec![i8::MIN; n * c * g.oh * g.ow];
    if y.is_empty() {
        return Ok(Tensor::q(vec![n, c, g.oh, g.ow], y, qp));
    }
    let mut out_rows = y.chunks_exact_mut(c.max(1));
    for image in q.chunks_exact(sample.max(1)) {
        for &(y0, y1, _) in &rows {
            for (&(x0, x1, _), dst) in cols.iter().zip(&mut out_rows) {
                for iy in y0..y1 {
                    let run = &image[(iy * g.w + x0) * c..(iy * g.w + x1) * c];
                    for src in run.chunks_exact(c) {
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = (*d).max(v));
                    }
                }
            }
        }
    }
    Ok(Tensor::q(vec![n, c, g.oh, g.ow], y, qp))
}

/// Per channel, the sum of the codes of channels-last `sample` ([pixels, c], c = sums.len())
/// into `sums`: in i32 lanes (16 to a vector, not 8 of i64) over pieces of `piece` pixels,
/// |Σ| ≤ 128 · piece fitting i32 while piece < 2^24, each piece's sums then added in i64.
fn channel_sums(sample: &[i8], piece: usize, sums: &mut [i64], part: &mut [i32]) {
    let c = sums.len().max(1);
    sums.fill(0);
    for piece in sample.chunks(c * piece) {
        part.fill(0);
        for row in piece.chunks_exact(c) {
            part.iter_mut().zip(row).for_each(|(s, &v)| *s += v as i32);
        }
        sums.iter_mut()
            .zip(&*part)
            .for_each(|(s, &p)| *s += p as i64);
    }
}

/// GlobalAveragePool (or ReduceMean over H and W) of channels-last codes `x` into `qo`, with
/// the NCHW kernel's centred sums and requantization
/// ([`plane_mean`](crate::engine::intops::mean::plane_mean)); its [n, c(, 1, 1)] output is in
/// shape order (one pixel per channel).
pub fn global_mean(x: &Tensor, qo: QParams, keep: bool) -> Result<Tensor, String> {
    let (q, qi) = x.as_q().ok_or("expects quantized input")?;
    let &[n, c, h, w] = x.shape.as_slice() else {
        return Err(format!("expects an [N, C, H, W] input, got {:?}", x.shape));
    };
    let plane = h * w;
    if plane == 0 || q.len() != n * c * plane {
        return Err("has an empty plane".into());
    }
    let rq = MeanRequant::new(qi, qo, plane);
    let z = qi.zero_point as i64;
    let mut y = Vec::with_capacity(n * c);
    let (mut sums, mut part) = (vec![0i64; c], vec![0i32; c]);
    for sample in q.chunks_exact(c * plane) {
        channel_sums(sample, 1 << 23, &mut sums, &mut part);
        y.extend(sums.iter().map(|&s| rq.apply(s - z * plane as i64, plane)));
    }
    let shape = if keep { vec![n, c, 1, 1] } else { vec![n, c] };
    Ok(Tensor::q(shape, y, qo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QParams, Scheme};

    #[test]
    fn channels_last_values_come_back_in_shape_order() {
        // [2, 3, 2, 2] stored [2, 2, 2, 3]: value (s, ch, p) at (s·4 + p)·3 + ch.
        let (n, c, p) = (2, 3, 4);
        let nchw = |s: usize, ch: usize, i: usize| (s * 100 + ch * 10 + i) as i64;
        let mut stored = vec![0i64; n * c * p];
        for s in 0..n {
            for ch in 0..c {
                for i in 0..p {
                    stored[(s * p + i) * c + ch] = nchw(s, ch, i);
                }
            }
        }
        let want: Vec<i64> = (0..n * c * p)
            .map(|j| nchw(j / 12, j / 4 % 3, j % 4))
            .collect();
        let t = Tensor::i64(vec![n, c, 2, 2], stored.clone());
        assert_eq!(to_nchw(&t).data, Data::I64(want.clone()));
        let f = Tensor::f32(vec![n, c, 2, 2], stored.iter().map(|&v| v as f32).collect());
        let wf: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_eq!(to_nchw(&f).data, Data::F32(wf));
        let qp = QParams {
            scale: 0.5,
            zero_point: 3,
            bits: 8,
            scheme: Scheme::Asymmetric,
        };
        let q = Tensor::q(
            vec![n, c, 2, 2],
            stored.iter().map(|&v| v as i8).collect(),
            qp,
        );
        let wq: Vec<i8> = want.iter().map(|&v| v as i8).collect();
        assert_eq!(
            to_nchw(&q).data,
            Data::Q {
                data: wq.clone(),
                qp
            }
        );
        // And back: shape-order codes stored channels-last are the stored codes above.
        let back = to_channels_last(&Tensor::q(vec![n, c, 2, 2], wq, qp)).unwrap();
        let stored_q: Vec<i8> = stored.iter().map(|&v| v as i8).collect();
        assert_eq!(back.data, Data::Q { data: stored_q, qp });
        assert_eq!(back.shape, vec![n, c, 2, 2]);
        assert!(to_channels_last(&f).is_none(), "reals are not turned");
    }

    #[test]
    fn channels_last_max_pool_is_the_max_over_each_windows_image_pixels() {
        // Against a brute-force loop over padded coordinates: odd sizes, padding on each side,
        // ceil mode, overlapping and strided windows.
        let qp = QParams {
            scale: 0.1,
            zero_point: -5,
            bits: 8,
            scheme: Scheme::Asymmetric,
        };
        for (c, h, w, k, st, pad, ceil) in [
            (3, 7, 9, (2, 2), (2, 2), [0, 0, 0, 0], false),
            (5, 7, 9, (3, 3), (2, 2), [1, 1, 1, 1], true),
            (4, 6, 5, (3, 2), (1, 2), [2, 0, 1, 1], false),
            (1, 5, 5, (2, 2), (2, 2), [0, 0, 0, 0], true),
        ] {
            let g = PoolGeom::new(&[c, h, w], k, st, pad, ceil).unwrap();
            let n = 2;
            let x: Vec<i8> = (0..n * c * h * w)
                .map(|i| ((i * 89 + 7) % 256) as u8 as i8)
                .collect();
            let y = max_pool(&Tensor::q(vec![n, c, h, w], x.clone(), qp), &g).unwrap();
            let (got, _) = y.as_q().unwrap();
            for s in 0..n {
                for (oy, ox, ch) in (0..g.oh)
                    .flat_map(|a| (0..g.ow).flat_map(move |b| (0..c).map(move |ch| (a, b, ch))))
                {
                    let mut want = i8::MIN;
                    for (ky, kx) in (0..k.0).flat_map(|a| (0..k.1).map(move |b| (a, b))) {
                        let (py, px) = (oy * st.0 + ky, ox * st.1 + kx);
                        let (Some(iy), Some(ix)) = (py.checked_sub(pad[0]), px.checked_sub(pad[1]))
                        else {
                            continue;
                        };
                        if iy < h && ix < w {
                            want = want.max(x[((s * h + iy) * w + ix) * c + ch]);
                        }
                    }
                    let at = ((s * g.oh + oy) * g.ow + ox) * c + ch;
                    assert_eq!(got[at], want, "c {c} {h}x{w} k {k:?} at {s},{oy},{ox},{ch}");
                }
            }
        }
    }

    #[test]
    fn channel_sums_in_pieces_are_the_i64_sums() {
        let (c, pixels) = (5, 23);
        let x: Vec<i8> = (0..c * pixels).map(|i| (i * 97 + 5) as u8 as i8).collect();
        let want: Vec<i64> = (0..c)
            .map(|ch| (0..pixels).map(|p| x[p * c + ch] as i64).sum())
            .collect();
        for piece in [1, 2, 7, 23, 100] {
            let (mut sums, mut part) = (vec![9i64; c], vec![3i32; c]);
            channel_sums(&x, piece, &mut sums, &mut part);
            assert_eq!(sums, want, "pieces of {piece}");
        }
    }

    #[test]
    fn channels_last_global_mean_is_the_nchw_mean() {
        let qi = QParams {
            scale: 0.07,
            zero_point: 17,
            bits: 8,
            scheme: Scheme::Asymmetric,
        };
        let qo = QParams {
            scale: 0.05,
            zero_point: -9,
            bits: 8,
            scheme: Scheme::Asymmetric,
        };
        let (n, c, h, w) = (3, 6, 5, 7);
        let stored: Vec<i8> = (0..n * c * h * w)
            .map(|i| (i * 61 + 3) as u8 as i8)
            .collect();
        let t = Tensor::q(vec![n, c, h, w], stored, qi);
        let want = crate::engine::intops::mean::global_mean(&to_nchw(&t), qo, true).unwrap();
        assert_eq!(global_mean(&t, qo, true).unwrap(), want);
    }

    #[test]
    fn only_elementwise_ops_on_one_shape_keep_the_order() {
        let a = Tensor::f32(vec![1, 2, 2, 2], vec![0.0; 8]);
        let b = Tensor::f32(vec![1, 2, 1, 1], vec![0.0; 2]);
        let add = Op::Binary(BinaryOp::Add);
        assert!(keeps_channels_last(&add, &[Some(&a), Some(&a)]));
        assert!(!keeps_channels_last(&add, &[Some(&a), Some(&b)]));
        assert!(keeps_channels_last(&Op::Relu, &[Some(&a)]));
        assert!(!keeps_channels_last(&Op::Relu, &[Some(&b), Some(&b)]));
        assert!(!keeps_channels_last(
            &Op::Binary(BinaryOp::Mul),
            &[Some(&a), Some(&a)]
        ));
        let flat = Tensor::f32(vec![2, 4], vec![0.0; 8]);
        assert!(!keeps_channels_last(&Op::Relu, &[Some(&flat)]));
    }
}
