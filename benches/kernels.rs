//! int8 GEMM kernels vs the reference triple loop vs f32 sgemm (ndarray/matrixmultiply) vs the
//! float engine's linear layer (`f32_linear`, AVX-512, weights read unpacked) on the engine's
//! layer shapes. Throughput is reported in elements = multiply-adds.
//!
//! The residual Add (`int_add`: the engine's kernel; `int_add_scalar`: `QAdd::apply` in a
//! loop; `f32_add`: the float sum) runs on the bundled ResNet's first block, 64 images of
//! 16×28×28; throughput in elements.
//!
//! The per-layer SQNR sums on the same tensor: `sqnr_codes_pair` (a layer's output in the run
//! and alone, both as codes, against one float reference: what an evaluation does per layer)
//! and `sqnr_reals` (the same sums over one approximation already in f32).
//!
//! The float engine's 3×3 stride-1 conv on the ResNet's first block (64 images of 16×28×28, 16
//! outputs, pad 1): `f32_conv3x3_winograd` (F(2×2, 3×3), what the engine runs there) beside
//! `f32_conv3x3_direct` (the padded-image kernel it replaced); throughput in multiply-adds of
//! the direct conv.
//!
//! `cargo bench --bench qscope -- kernels`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use qscope::engine::clamp_f32::Clamp;
use qscope::engine::kernels::{PackedWeights, gemm_i8, gemm_i8_reference, kernel_name};

/// (name, m, k, n). The conv shapes use 16 images instead of 256 (m = 16·784, 16·196).
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("mlp_784x256", 256, 784, 256),
    ("mlp_256x128", 256, 256, 128),
    ("mlp_128x10", 256, 128, 10),
    ("conv1_k25_n8", 16 * 784, 25, 8),
    ("conv2_k200_n16", 16 * 196, 200, 16),
    ("cnn_fc_784x64", 256, 784, 64),
    ("cnn_fc_64x10", 256, 64, 10),
];

/// Deterministic pseudo-random i8 data covering the full range (-128 included).
fn data(len: usize, seed: u64) -> Vec<i8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as i8
        })
        .collect()
}

pub fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("kernels[{}]", kernel_name()));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for &(name, m, k, n) in SHAPES {
        let a = data(m * k, 1);
        let b = data(n * k, 2);
        g.throughput(Throughput::Elements((m * k * n) as u64));

        let w = PackedWeights::new(&b, n, k);
        let mut out = vec![0i32; m * n];
        g.bench_function(BenchmarkId::new("gemm_i8", name), |bch| {
            bch.iter(|| gemm_i8(black_box(&a), m, k, &w, &mut out))
        });

        g.bench_function(BenchmarkId::new("reference", name), |bch| {
            bch.iter(|| gemm_i8_reference(black_box(&a), m, k, &b, n, k, &mut out))
        });

        // Same shapes in f32: C = A · Bᵀ through matrixmultiply's sgemm, written into a
        // preallocated C like the int8 kernels (`a.dot(&b.t())` plus an allocation).
        let af = Array2::from_shape_fn((m, k), |(i, t)| a[i * k + t] as f32);
        let bf = Array2::from_shape_fn((n, k), |(j, t)| b[j * k + t] as f32);
        let mut cf = Array2::<f32>::zeros((m, n));
        g.bench_function(BenchmarkId::new("f32_sgemm", name), |bch| {
            bch.iter(|| {
                ndarray::linalg::general_mat_mul(1.0, black_box(&af), &bf.t(), 0.0, &mut cf)
            })
        });
        if qscope::engine::linear_f32::applies() {
            let (xs, ws) = (af.as_slice().unwrap(), bf.as_slice().unwrap());
            let bias = vec![0f32; n];
            g.bench_function(BenchmarkId::new("f32_linear", name), |bch| {
                bch.iter(|| qscope::engine::linear_f32::linear_f32(black_box(xs), k, ws, &bias))
            });
        }
    }
    residual_add(&mut g);
    conv3x3_f32(&mut g);
    g.finish();
}

/// The residual Add's kernels beside the float sum on one tensor.
fn residual_add(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>) {
    use qscope::engine::intops::add::{QAdd, add};
    use qscope::engine::tensor::Tensor;
    use qscope::quant::{ClipRange, QParams, Scheme};
    let shape = vec![64, 16, 28, 28];
    let len: usize = shape.iter().product();
    let qp = |lo, hi| QParams::from_range(ClipRange::new(lo, hi), 8, Scheme::Asymmetric);
    let (q1, q2, qo) = (qp(-1.5, 4.0), qp(0.0, 6.0), qp(0.0, 9.0));
    let (a, b) = (data(len, 3), data(len, 4));
    let (ta, tb) = (
        Tensor::q(shape.clone(), a.clone(), q1),
        Tensor::q(shape, b.clone(), q2),
    );
    g.throughput(Throughput::Elements(len as u64));
    let name = "resnet_block_64x16x28x28";
    g.bench_function(BenchmarkId::new("int_add", name), |bch| {
        bch.iter(|| add(black_box(&ta), &tb, qo, false).unwrap())
    });
    let k = QAdd::new(q1, q2, qo, false);
    g.bench_function(BenchmarkId::new("int_add_scalar", name), |bch| {
        bch.iter(|| {
            let y: Vec<i8> = a.iter().zip(&b).map(|(&u, &v)| k.apply(u, v)).collect();
            y
        })
    });
    let (fa, fb): (Vec<f32>, Vec<f32>) = a
        .iter()
        .zip(&b)
        .map(|(&u, &v)| (u as f32, v as f32))
        .unzip();
    g.bench_function(BenchmarkId::new("f32_add", name), |bch| {
        bch.iter(|| {
            let y: Vec<f32> = black_box(&fa).iter().zip(&fb).map(|(u, v)| u + v).collect();
            y
        })
    });
    sqnr_sums(g, name, (&fa, &fb), (&a, &b), (q1, q2));
}

/// The SQNR rows on the residual Add's tensors: `x` as the float reference.
fn sqnr_sums(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    name: &str,
    (x, y): (&[f32], &[f32]),
    (a, b): (&[i8], &[i8]),
    (q1, q2): (qscope::quant::QParams, qscope::quant::QParams),
) {
    use qscope::eval::sqnr::SqnrAcc;
    g.bench_function(BenchmarkId::new("sqnr_codes_pair", name), |bch| {
        bch.iter(|| {
            let (mut run, mut alone) = (SqnrAcc::default(), SqnrAcc::default());
            run.add_codes_pair(&mut alone, black_box(x), [(a, q1), (b, q2)]);
            (run, alone)
        })
    });
    g.bench_function(BenchmarkId::new("sqnr_reals", name), |bch| {
        bch.iter(|| {
            let mut acc = SqnrAcc::default();
            acc.add(black_box(x), y);
            acc
        })
    });
}

/// The 3×3 conv rows (AVX-512 only: the engine takes neither kernel elsewhere).
fn conv3x3_f32(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>) {
    use qscope::engine::conv_f32::conv_f32_padded;
    use qscope::engine::conv_f32_winograd::{applies, conv_f32_winograd};
    use qscope::engine::im2col::ConvGeom;
    let (n, c, o) = (64, 16, 16);
    let geom = ConvGeom::new(&[c, 28, 28], (3, 3), (1, 1), (1, 1));
    if !qscope::engine::conv_f32::applies(&geom) {
        return;
    }
    let xs: Vec<f32> = data(n * c * 28 * 28, 5)
        .iter()
        .map(|&v| v as f32 / 64.0)
        .collect();
    let w: Vec<f32> = data(o * c * 9, 6)
        .iter()
        .map(|&v| v as f32 / 512.0)
        .collect();
    let bias = vec![0.1f32; o];
    g.throughput(Throughput::Elements((n * o * 28 * 28 * c * 9) as u64));
    let name = "resnet_block_64x16x28x28";
    if applies(&geom, o) {
        g.bench_function(BenchmarkId::new("f32_conv3x3_winograd", name), |bch| {
            bch.iter(|| conv_f32_winograd(black_box(&xs), n, &geom, (&w, &bias, Clamp::NONE)))
        });
    }
    g.bench_function(BenchmarkId::new("f32_conv3x3_direct", name), |bch| {
        bch.iter(|| conv_f32_padded(black_box(&xs), n, &geom, (&w, &bias, Clamp::NONE)))
    });
}
