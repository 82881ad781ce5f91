//! Float engine vs integer engine on whole bundled models at batch 256, one thread each
//! (the pipeline splits batches across threads the same way for both).

use criterion::{BenchmarkId, Criterion, Throughput};
use qscope::engine::{IntModel, float};
use qscope::pipeline::{Cancel, run};
use qscope::{QuantConfig, bundled};
use std::hint::black_box;
use std::time::Duration;

/// Batch size of the comparison.
const BATCH: usize = 256;

pub fn engines(c: &mut Criterion) {
    let mut g = c.benchmark_group("engines_batch256");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(BATCH as u64));
    for name in bundled::MODEL_NAMES {
        let model = bundled::model(name).unwrap();
        let test = bundled::test();
        let out = run(
            &model,
            &bundled::calib(),
            &test.take(16),
            &QuantConfig::default(),
            &Cancel::new(),
        )
        .unwrap();
        let int = IntModel::new(&model, &out.params, usize::MAX);
        let mut x = test.samples(0, BATCH).to_vec();
        model.normalize(&mut x);
        g.bench_function(BenchmarkId::new("float", name), |b| {
            b.iter(|| float::forward_flat(&model, black_box(&x), BATCH).unwrap())
        });
        g.bench_function(BenchmarkId::new("int", name), |b| {
            b.iter(|| int.forward_flat(black_box(&x), BATCH).unwrap())
        });
    }
    g.finish();
}
