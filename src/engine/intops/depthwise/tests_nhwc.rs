//! The channels-last depthwise kernel against the direct loop over NCHW planes (bit for bit,
//! the layouts moved by index loops) on random layers, clamps and extreme codes.

use super::nhwc::{DepthwiseNhwc, supported};
use super::tests::{Rng, random_weights};
use super::*;
use crate::engine::int::clamp_bounds;
use crate::engine::int::tests::channels_last as to_rows;
use crate::quant::{ClipRange, Scheme};

/// Symmetric per-channel weights of `bits` ([rows, cols]); with `extreme`, ±(2^(bits−1) − 1)
/// alternating (the inputs then −128 and 127 only, see [`check`]).
fn weights(rng: &mut Rng, rows: usize, cols: usize, bits: u8, extreme: bool) -> QWeights {
    let mut w = random_weights(rng, rows, cols, bits, false);
    if extreme {
        let top = ((1i32 << (bits - 1)) - 1) as i8;
        for (i, q) in w.q.iter_mut().enumerate() {
            *q = if i % 2 == 0 { top } else { -top };
        }
    }
    w
}

/// Runs one layer (which must take the kernel) both ways on `n` random samples and compares.
fn check(rng: &mut Rng, c: usize, g: ConvGeom, (bits, extreme): (u8, bool), n: usize) {
    let (kh, kw) = g.kernel;
    let w = weights(rng, c, kh * kw, bits, extreme);
    let any_zero = rng.range(-128, 127) as i32;
    let in_q = QParams {
        scale: 0.01 + (rng.next() % 100) as f32 * 1e-3,
        zero_point: rng.pick(&[-128, 127, 0, -3, 50, any_zero]),
        bits: 8,
        scheme: Scheme::Asymmetric,
    };
    let out_q = QParams {
        scale: 0.02 + (rng.next() % 100) as f32 * 2e-3,
        zero_point: rng.range(-128, 127) as i32,
        ..in_q
    };
    let clamp = rng.pick(&[None, Some((0.0, f32::INFINITY)), Some((0.0, 6.0))]);
    let scale = if extreme { 1e8 } else { 0.01 };
    let bias: Vec<f32> = (0..c)
        .map(|_| rng.range(-300, 300) as f32 * scale)
        .collect();
    let bounds = clamp_bounds(out_q, clamp);
    let planes = GroupConv::new(&w, &bias, (kh, kw), c, (in_q, out_q), bounds).unwrap();
    let fast = DepthwiseNhwc::new(&w, &bias, (kh, kw), (in_q, out_q), clamp)
        .expect("a depthwise layer of 16·k channels and at most 16 taps takes the kernel");
    // Extreme inputs: −128 and 127 only.
    let x: Vec<i8> = (0..n * c * g.h * g.w)
        .map(|i| match extreme {
            true if i % 3 == 0 => -128,
            true => 127,
            false => rng.next() as i8,
        })
        .collect();
    let want = to_rows(&planes.run_direct(&x, n, &g), n, c, g.out_pixels());
    let pad = in_q.zero_point as i8;
    let got = fast.run(&to_rows(&x, n, c, g.h * g.w), n, &g, pad);
    assert_eq!(got, want, "c {c} {g:?} bits {bits} clamp {clamp:?}");
}

#[test]
fn the_channels_last_kernel_equals_the_direct_loop_on_random_depthwise_layers() {
    if !supported() {
        // No AVX-512 VNNI: no layer takes the kernel.
        let w = weights(&mut Rng(1), 16, 9, 8, false);
        let q = QParams::from_range(ClipRange::new(0.0, 1.0), 8, Scheme::Asymmetric);
        assert!(DepthwiseNhwc::new(&w, &[0.0; 16], (3, 3), (q, q), None).is_none());
        return;
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cases = 0;
    while cases < 150 {
        let c = 16 * rng.range(1, 9) as usize;
        let (h, w) = (rng.range(1, 24) as usize, rng.range(1, 40) as usize);
        let kernel = (rng.range(1, 7) as usize, rng.range(1, 7) as usize);
        let stride = (rng.range(1, 3) as usize, rng.range(1, 3) as usize);
        let dilation = (rng.pick(&[1, 1, 2, 3]), rng.pick(&[1, 1, 2]));
        let pad = std::array::from_fn(|_| rng.range(0, 3) as usize);
        let Ok(g) = ConvGeom::general(&[c, h, w], kernel, stride, pad, dilation) else {
            continue;
        };
        let bits = rng.pick(&[8, 8, 4, 6]);
        let n = rng.range(1, 3) as usize;
        check(&mut rng, c, g, (bits, false), n);
        cases += 1;
    }
}

#[test]
fn output_rows_in_pairs_on_kernels_of_up_to_three_rows_equal_the_direct_loop() {
    if !supported() {
        return;
    }
    let mut rng = Rng(7);
    // Stride 1 down the image, kernels of 1 to 3 rows: two output rows on one set of quads.
    // Odd and even output heights (a last row alone), pads that put the fourth quad row below
    // the image, rows wide enough for one row a block of accumulators (then two) and narrow
    // enough for many, strides 1–3 across.
    for kh in 1..=3 {
        for kw in [1, 3] {
            for (c, h, w) in [(16, 5, 9), (32, 6, 4), (144, 7, 56), (48, 2, 3)] {
                let pad = [rng.range(0, 2) as usize, 1, rng.range(0, 2) as usize, 1];
                let across = (rng.range(1, 3) as usize, 1);
                let g = ConvGeom::general(&[c, h, w], (kh, kw), (1, across.0), pad, (1, 1));
                let g = g.expect("a valid geometry");
                check(&mut rng, c, g, (8, false), 2);
            }
        }
    }
    // The extreme codes and biases on pairs.
    let g = ConvGeom::general(&[64, 8, 8], (3, 3), (1, 1), [1, 1, 1, 1], (1, 1)).unwrap();
    check(&mut rng, 64, g, (8, true), 1);
}

#[test]
fn the_channels_last_kernel_keeps_extreme_codes_and_biases_and_many_row_blocks() {
    if !supported() {
        return;
    }
    let mut rng = Rng(42);
    // Weights of ±127 against ±128 codes at the far zero points, biases near the i32 edge.
    for _ in 0..8 {
        let g = ConvGeom::general(&[32, 9, 17], (3, 3), (1, 1), [1, 2, 0, 1], (1, 1)).unwrap();
        check(&mut rng, 32, g, (8, true), 1);
    }
    // MobileNet's shapes: 144 channels over 56 columns, several blocks of output rows.
    for stride in [(1, 1), (2, 2)] {
        let g = ConvGeom::general(&[144, 30, 56], (3, 3), stride, [1, 1, 1, 1], (1, 1)).unwrap();
        check(&mut rng, 144, g, (8, false), 2);
    }
    // Not a multiple of 16 channels, asymmetric weights: the NCHW kernel keeps the layer.
    let w = weights(&mut rng, 24, 9, 8, false);
    let q = QParams::from_range(ClipRange::new(0.0, 1.0), 8, Scheme::Asymmetric);
    assert!(DepthwiseNhwc::new(&w, &[0.0; 24], (3, 3), (q, q), None).is_none());
    let mut asym = weights(&mut rng, 16, 9, 8, false);
    asym.params[3].zero_point = 2;
    assert!(DepthwiseNhwc::new(&asym, &[0.0; 16], (3, 3), (q, q), None).is_none());
}
