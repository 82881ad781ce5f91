//! One full re-run (weight quantization + calibration on 1,000 samples + evaluation of both
//! engines on 2,000) on the bundled models: the budget that keeps the UI live
//! (MLP < 150 ms, CNN < 1 s), and the activation-only re-run that reuses histograms.

use criterion::{BenchmarkId, Criterion};
use qscope::pipeline::{Cancel, Session, run};
use qscope::{QuantConfig, Strategy, bundled};
use std::time::Duration;

pub fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("full_rerun");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let (calib, test) = (bundled::calib(), bundled::test());
    for name in bundled::MODEL_NAMES {
        let model = bundled::model(name).unwrap();
        let config = QuantConfig::default();
        g.bench_function(BenchmarkId::new("default_weights", name), |b| {
            b.iter(|| run(&model, &calib, &test, &config, &Cancel::new()).unwrap())
        });
        let mut session = Session::new(model.clone(), calib.clone(), test.clone());
        let configs = [
            QuantConfig {
                act_strategy: Strategy::Kl,
                ..Default::default()
            },
            QuantConfig {
                act_bits: 4,
                ..Default::default()
            },
        ];
        session.run(&configs[0], &Cancel::new()).unwrap();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("activation_change_cached", name), |b| {
            b.iter(|| {
                i += 1;
                session.run(&configs[i % 2], &Cancel::new()).unwrap()
            })
        });
    }
    g.finish();
}
