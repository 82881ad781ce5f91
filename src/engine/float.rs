//! The f32 reference engine: runs a [`Model`] on a batch, layer by layer, with ndarray's matrix
//! multiply for linear and (im2col) convolution layers.

use super::im2col::{ConvGeom, im2col, nhwc_rows_to_nchw, samples_per_block};
use crate::model::{Layer, Model, Op};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Runs one layer on a batch of `n` samples (`x` holds n · in_len values); returns n · out_len.
pub fn run_layer(layer: &Layer, x: &[f32], n: usize) -> Vec<f32> {
    match &layer.op {
        Op::Linear { weight, bias } => {
            let (out, inp) = weight.dim();
            let mut y = vec![0.0f32; n * out];
            for row in y.chunks_mut(out) {
                row.copy_from_slice(bias.as_slice().expect("contiguous bias"));
            }
            let xv = ArrayView2::from_shape((n, inp), x).expect("input size");
            let mut yv = ArrayViewMut2::from_shape((n, out), &mut y).expect("output size");
            general_mat_mul(1.0, &xv, &weight.t(), 1.0, &mut yv);
            y
        }
        Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => {
            let (o, _, kh, kw) = weight.dim();
            let geom = ConvGeom::new(&layer.in_shape, (kh, kw), *stride, *padding);
            let (k, pixels) = (geom.k(), geom.out_pixels());
            let in_len = layer.in_shape.iter().product::<usize>();
            let w2 = ArrayView2::from_shape((o, k), weight.as_slice().expect("contiguous weight"))
                .expect("weight size");
            let bias = bias.as_slice().expect("contiguous bias");
            let mut out = Vec::with_capacity(n * o * pixels);
            let block = samples_per_block(&geom);
            let mut y = Vec::new();
            for s0 in (0..n).step_by(block) {
                let bn = block.min(n - s0);
                let cols = im2col(&x[s0 * in_len..(s0 + bn) * in_len], bn, &geom, 0.0f32);
                let rows = bn * pixels;
                y.clear();
                y.extend(std::iter::repeat_n(bias, rows).flatten());
                let cv = ArrayView2::from_shape((rows, k), &cols).expect("im2col size");
                let mut yv = ArrayViewMut2::from_shape((rows, o), &mut y).expect("output size");
                general_mat_mul(1.0, &cv, &w2.t(), 1.0, &mut yv);
                out.extend(nhwc_rows_to_nchw(&y, bn, pixels, o));
            }
            out
        }
        Op::Relu => x.iter().map(|&v| v.max(0.0)).collect(),
        Op::Flatten => x.to_vec(),
        Op::MaxPool2d { kernel, stride } => super::pool::pool(
            x,
            n,
            &layer.in_shape,
            *kernel,
            *stride,
            f32::NEG_INFINITY,
            f32::max,
            |m, _| m,
        ),
        Op::AvgPool2d { kernel, stride } => super::pool::pool(
            x,
            n,
            &layer.in_shape,
            *kernel,
            *stride,
            0.0f32,
            |a, b| a + b,
            |s, cnt| s / cnt as f32,
        ),
    }
}

/// Runs the whole model on `n` normalized samples; `tap(i, out)` sees every layer's output.
pub fn forward(model: &Model, x: &[f32], n: usize, mut tap: impl FnMut(usize, &[f32])) -> Vec<f32> {
    let mut cur = x.to_vec();
    for (i, layer) in model.layers.iter().enumerate() {
        cur = run_layer(layer, &cur, n);
        tap(i, &cur);
    }
    cur
}

/// The index of the largest value, the lowest index on ties (as numpy and PyTorch).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for i in 1..v.len() {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, Array4};

    #[test]
    fn argmax_takes_the_lowest_index_on_ties() {
        assert_eq!(argmax(&[1, 3, 3, 2]), 1);
        assert_eq!(argmax(&[0.0f32, 0.0]), 0);
    }

    #[test]
    fn linear_matches_a_hand_computation() {
        let layer = Layer {
            name: "fc".into(),
            op: Op::Linear {
                weight: Array2::from_shape_vec((2, 3), vec![1., 2., 3., -1., 0., 1.]).unwrap(),
                bias: Array1::from(vec![0.5, -0.5]),
            },
            in_shape: vec![3],
            out_shape: vec![2],
        };
        let y = run_layer(&layer, &[1., 1., 1., 0., 1., 2.], 2);
        assert_eq!(y, vec![6.5, -0.5, 8.5, 1.5]);
    }

    #[test]
    fn conv_matches_a_direct_loop() {
        // 2 samples, 2 input channels 5x4, 3 output channels 3x3 kernel, stride (2,1), padding (1,2).
        let (n, c, h, w, o, kh, kw) = (2, 2, 5, 4, 3, 3, 3);
        let (sh, sw, ph, pw) = (2, 1, 1, 2);
        let wt: Vec<f32> = (0..o * c * kh * kw)
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        let x: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 5) % 13) as f32 - 6.0)
            .collect();
        let bias = vec![0.25, -1.0, 2.0];
        let oh = (h + 2 * ph - kh) / sh + 1;
        let ow = (w + 2 * pw - kw) / sw + 1;
        let layer = Layer {
            name: "c".into(),
            op: Op::Conv2d {
                weight: Array4::from_shape_vec((o, c, kh, kw), wt.clone()).unwrap(),
                bias: Array1::from(bias.clone()),
                stride: (sh, sw),
                padding: (ph, pw),
            },
            in_shape: vec![c, h, w],
            out_shape: vec![o, oh, ow],
        };
        let y = run_layer(&layer, &x, n);
        for s in 0..n {
            for oc in 0..o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[oc] as f64;
                        for ic in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * sh + ky) as isize - ph as isize;
                                    let ix = (ox * sw + kx) as isize - pw as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((s * c + ic) * h + iy as usize) * w + ix as usize];
                                    acc += (xv * wt[((oc * c + ic) * kh + ky) * kw + kx]) as f64;
                                }
                            }
                        }
                        let got = y[((s * o + oc) * oh + oy) * ow + ox];
                        assert!((got as f64 - acc).abs() < 1e-3, "{got} vs {acc}");
                    }
                }
            }
        }
    }
}
