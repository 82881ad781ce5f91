//! The channels-last depthwise kernel against the direct loop over NCHW planes (bit for bit,
//! the layouts moved by index loops) on random layers, clamps and extreme codes.

use super::nhwc::{DepthwiseNhwc, supported};
use super::*;
use crate::engine::int::clamp_bounds;
use crate::quant::{ClipRange, Granularity, Scheme};

/// A xorshift stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in lo..=hi.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.next() as usize % v.len()]
    }
}

/// [n, c, p] planes as [n, p, c] rows, by index.
fn to_rows(x: &[i8], n: usize, c: usize, p: usize) -> Vec<i8> {
    let mut y = vec![0; x.len()];
    for s in 0..n {
        for ch in 0..c {
            for i in 0..p {
                y[(s * p + i) * c + ch] = x[(s * c + ch) * p + i];
            }
        }
    }
    y
}

/// Symmetric per-channel weights of `bits` ([rows, cols]).
fn weights(rng: &mut Rng, rows: usize, cols: usize, bits: u8, extreme: bool) -> QWeights {
    let top = (1i64 << (bits - 1)) - 1;
    QWeights {
        rows,
        cols,
        q: (0..rows * cols)
            .map(|i| match extreme {
                true if i % 2 == 0 => top as i8,
                true => -top as i8,
                false => rng.range(-top, top) as i8,
            })
            .collect(),
        granularity: Granularity::PerChannel,
        ranges: vec![ClipRange::new(-1.0, 1.0); rows],
        params: (0..rows)
            .map(|_| QParams {
                scale: 0.002 + (rng.next() % 1000) as f32 * 1e-5,
                zero_point: 0,
                bits,
                scheme: Scheme::Symmetric,
            })
            .collect(),
    }
}

/// Runs one layer both ways on `n` random samples and compares; false when the geometry does
/// not fit.
fn check(rng: &mut Rng, c: usize, g: ConvGeom, (bits, extreme): (u8, bool), n: usize) -> bool {
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
    let Some(fast) = DepthwiseNhwc::new(&w, &bias, (kh, kw), (in_q, out_q), clamp) else {
        return false;
    };
    let x: Vec<i8> = (0..n * c * g.h * g.w).map(|_| rng.next() as i8).collect();
    let want = to_rows(&planes.run_direct(&x, n, &g), n, c, g.out_pixels());
    let pad = in_q.zero_point as i8;
    let got = fast.run(&to_rows(&x, n, c, g.h * g.w), n, &g, pad);
    assert_eq!(got, want, "c {c} {g:?} bits {bits} clamp {clamp:?}");
    true
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
        cases += usize::from(check(&mut rng, c, g, (bits, false), n));
    }
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
        assert!(check(&mut rng, 32, g, (8, true), 1));
    }
    // MobileNet's shapes: 144 channels over 56 columns, several blocks of output rows.
    for stride in [(1, 1), (2, 2)] {
        let g = ConvGeom::general(&[144, 30, 56], (3, 3), stride, [1, 1, 1, 1], (1, 1)).unwrap();
        assert!(check(&mut rng, 144, g, (8, false), 2));
    }
    // Not a multiple of 16 channels, asymmetric weights: the NCHW kernel keeps the layer.
    let w = weights(&mut rng, 24, 9, 8, false);
    let q = QParams::from_range(ClipRange::new(0.0, 1.0), 8, Scheme::Asymmetric);
    assert!(DepthwiseNhwc::new(&w, &[0.0; 24], (3, 3), (q, q), None).is_none());
    let mut asym = weights(&mut rng, 16, 9, 8, false);
    asym.params[3].zero_point = 2;
    assert!(DepthwiseNhwc::new(&asym, &[0.0; 16], (3, 3), (q, q), None).is_none());
}
