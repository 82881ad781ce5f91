//! The depthwise kernel (the integer engine's grouped-conv kernel, `GroupConv`) on the
//! MobileNetV2-style fixture's depthwise layers at batch 256, beside the dense int8 GEMM at
//! 256×784×256 and the plain direct loop (`GroupConv::run_direct`, the old kernel), in the same
//! run. Throughput is in elements = multiply-adds, so criterion's elem/s are comparable: issue
//! 8 asks the depthwise rate to reach at least half the GEMM's. The benchmark names carry the
//! kernel `GroupConv::run` picked on this CPU. On AVX-512 VNNI the channels-last kernel
//! (`DepthwiseNhwc`, what a channels-last run uses) runs beside the planar kernel with the two
//! transposes a channels-last run needed around it before.
//!
//! `cargo bench --bench qscope -- depthwise`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use qscope::config::WeightSettings;
use qscope::engine::im2col::ConvGeom;
use qscope::engine::intops::depthwise::GroupConv;
use qscope::engine::intops::depthwise::nhwc::DepthwiseNhwc;
use qscope::engine::kernels::{PackedWeights, gemm_i8, kernel_name};
use qscope::engine::transpose::transpose_i8;
use qscope::model::{Op, load_model};
use qscope::quant::weights::quantize_weights;
use qscope::{ClipRange, Granularity, QParams, Scheme, Strategy};

/// Batch size of the comparison.
const BATCH: usize = 256;

/// The dense GEMM the depthwise kernel is held against: m × k × n.
const GEMM: (usize, usize, usize) = (256, 784, 256);

/// Deterministic pseudo-random i8 data covering the full range.
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

/// One depthwise layer ready to run: its kernel, geometry, a batch of input codes and its
/// multiply-adds per batch.
struct Layer {
    name: String,
    conv: GroupConv,
    /// The channels-last kernel, where this CPU runs it.
    nhwc: Option<DepthwiseNhwc>,
    geom: ConvGeom,
    x: Vec<i8>,
    macs: u64,
}

/// The layers' input qparams (a ReLU6's range).
fn input_q() -> QParams {
    QParams::from_range(ClipRange::new(0.0, 6.0), 8, Scheme::Asymmetric)
}

/// The fixture's depthwise convs (groups = input channels, one input channel per group) with
/// per-channel int8 weights and a batch of random input codes.
fn depthwise_layers() -> Vec<Layer> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx/mobilenetv2_ts.onnx");
    let model = load_model(&path, None).expect("the MobileNetV2 fixture loads");
    let settings = WeightSettings {
        bits: 8,
        scheme: Scheme::Symmetric,
        granularity: Granularity::PerChannel,
        strategy: Strategy::MinMax,
        percentile: 99.99,
        clip: None,
    };
    // Outputs in a ReLU6's range too.
    let (in_q, out_q) = (input_q(), input_q());
    let mut layers = Vec::new();
    for (i, l) in model.layers.iter().enumerate() {
        let Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
            dilation,
            groups,
        } = &l.op
        else {
            continue;
        };
        let (o, ci, kh, kw) = weight.dim();
        if *groups <= 1 || ci != 1 {
            continue;
        }
        let (w, rows, cols) = l.op.weight_rows().expect("a conv has weights");
        let wq = quantize_weights(w, rows, cols, &settings);
        let bias = bias.as_slice().expect("contiguous bias");
        let bounds = (out_q.qmin(), out_q.qmax());
        let conv = GroupConv::new(&wq, bias, (kh, kw), *groups, (in_q, out_q), bounds)
            .expect("per-channel weights");
        let nhwc = DepthwiseNhwc::new(&wq, bias, (kh, kw), (in_q, out_q), None);
        let geom = ConvGeom::general(&l.in_shape, (kh, kw), *stride, *padding, *dilation)
            .expect("the fixture's geometry");
        let macs = (BATCH * o * geom.out_pixels() * ci * kh * kw) as u64;
        layers.push(Layer {
            name: format!(
                "{}_{}x{}x{}_s{}",
                i, l.in_shape[0], geom.h, geom.w, stride.0
            ),
            x: data(BATCH * geom.c * geom.h * geom.w, i as u64),
            conv,
            nhwc,
            geom,
            macs,
        });
    }
    assert!(!layers.is_empty(), "the fixture has depthwise convs");
    layers
}

/// Depthwise layers (all together and one by one) and the dense GEMM, in MACs per second.
pub fn depthwise(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("depthwise_vs_gemm[{}]", kernel_name()));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let layers = depthwise_layers();

    let (m, k, n) = GEMM;
    let a = data(m * k, 1);
    let w = PackedWeights::new(&data(n * k, 2), n, k);
    let mut out = vec![0i32; m * n];
    g.throughput(Throughput::Elements((m * k * n) as u64));
    g.bench_function(BenchmarkId::new("gemm_i8", format!("{m}x{k}x{n}")), |b| {
        b.iter(|| gemm_i8(black_box(&a), m, k, &w, &mut out))
    });

    let kernel = layers[0].conv.kernel_name(&layers[0].geom);
    let fast = format!("depthwise[{kernel}]");
    g.throughput(Throughput::Elements(layers.iter().map(|l| l.macs).sum()));
    g.bench_function(BenchmarkId::new(&fast, "mobilenetv2_all_b256"), |b| {
        b.iter(|| {
            for l in &layers {
                black_box(l.conv.run(black_box(&l.x), BATCH, &l.geom));
            }
        })
    });
    g.bench_function(
        BenchmarkId::new("depthwise[direct]", "mobilenetv2_all_b256"),
        |b| {
            b.iter(|| {
                for l in &layers {
                    black_box(l.conv.run_direct(black_box(&l.x), BATCH, &l.geom));
                }
            })
        },
    );
    channels_last(&mut g, &layers);
    for l in &layers {
        g.throughput(Throughput::Elements(l.macs));
        let name = format!("depthwise[{}]", l.conv.kernel_name(&l.geom));
        g.bench_function(BenchmarkId::new(name, &l.name), |b| {
            b.iter(|| l.conv.run(black_box(&l.x), BATCH, &l.geom))
        });
    }
    g.finish();
}

/// All layers on channels-last codes: the channels-last kernel, and the planar kernel between
/// the two transposes (per sample, [h·w, c] to [c, h·w] and back) it needs there.
fn channels_last(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    layers: &[Layer],
) {
    if layers.iter().any(|l| l.nhwc.is_none()) {
        return;
    }
    // Taps outside the image read the input zero point, as in a run.
    let pad = input_q().zero_point as i8;
    g.throughput(Throughput::Elements(layers.iter().map(|l| l.macs).sum()));
    g.bench_function(
        BenchmarkId::new("depthwise[channels-last]", "mobilenetv2_all_b256"),
        |b| {
            b.iter(|| {
                for l in layers {
                    let k = l.nhwc.as_ref().expect("checked above");
                    black_box(k.run(black_box(&l.x), BATCH, &l.geom, pad));
                }
            })
        },
    );
    // The layout buffers are made once, as a run's recycled buffers are.
    let mut planes: Vec<Vec<i8>> = layers.iter().map(|l| vec![0i8; l.x.len()]).collect();
    let mut rows: Vec<Vec<i8>> = (layers.iter())
        .map(|l| vec![0i8; BATCH * l.geom.c * l.geom.out_pixels()])
        .collect();
    g.bench_function(
        BenchmarkId::new("depthwise[planes+transposes]", "mobilenetv2_all_b256"),
        |b| {
            b.iter(|| {
                for ((l, planes), rows) in layers.iter().zip(&mut planes).zip(&mut rows) {
                    let (c, p, q) = (l.geom.c, l.geom.h * l.geom.w, l.geom.out_pixels());
                    for (src, dst) in l.x.chunks_exact(c * p).zip(planes.chunks_exact_mut(c * p)) {
                        transpose_i8(src, (p, c, c), dst, p);
                    }
                    let y = l.conv.run(black_box(planes), BATCH, &l.geom);
                    for (src, dst) in y.chunks_exact(c * q).zip(rows.chunks_exact_mut(c * q)) {
                        transpose_i8(src, (c, q, q), dst, c);
                    }
                    black_box(&rows);
                }
            })
        },
    );
}
