//! Calibration costs: streaming histogram insertion, and each strategy's range choice on a full
//! 2048-bin histogram and on 400 weight channels of 784 values (per-channel weights).

use criterion::{BenchmarkId, Criterion, Throughput};
use qscope::quant::calib::{Histogram, StrategyParams, choose_range};
use qscope::{Scheme, Strategy};
use std::hint::black_box;
use std::time::Duration;

/// Half-normal-ish post-ReLU values with 60% exact zeros, from a fixed seed.
fn relu_like(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            if u < 0.6 {
                0.0
            } else {
                (-(1.0 - u).ln() * 1.5) as f32
            }
        })
        .collect()
}

pub fn calibration(c: &mut Criterion) {
    let mut g = c.benchmark_group("calibration");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let values = relu_like(1_000_000);
    g.throughput(Throughput::Elements(values.len() as u64));
    g.bench_function("histogram_add_1M", |b| {
        b.iter(|| {
            let mut h = Histogram::new();
            for chunk in values.chunks(784 * 32) {
                h.add(black_box(chunk));
            }
            h
        })
    });
    let hist = Histogram::from_values(&values);
    let weights: Vec<f32> = relu_like(400 * 784)
        .iter()
        .enumerate()
        .map(|(i, v)| if i % 2 == 0 { *v } else { -*v })
        .collect();
    g.throughput(Throughput::Elements(1));
    for strategy in Strategy::CHOOSABLE {
        for bits in [4u8, 8] {
            let p = StrategyParams {
                bits,
                scheme: Scheme::Asymmetric,
                percentile: 99.99,
            };
            g.bench_function(
                BenchmarkId::new(format!("choose_range_2048bins_{strategy}"), bits),
                |b| b.iter(|| choose_range(black_box(&hist), strategy, &p)),
            );
        }
        let p = StrategyParams {
            bits: 8,
            scheme: Scheme::Symmetric,
            percentile: 99.99,
        };
        g.bench_function(
            BenchmarkId::new("weights_400x784_per_channel", strategy),
            |b| {
                b.iter(|| {
                    weights
                        .chunks(784)
                        .map(|ch| choose_range(&Histogram::from_values(ch), strategy, &p))
                        .collect::<Vec<_>>()
                })
            },
        );
    }
    g.finish();
}
