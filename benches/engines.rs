//! Float engine vs integer engine on whole bundled models at batch 256, the batch cut into one
//! part per thread of the default pool (as `qscope bench` runs it; ORT is timed with 2 threads).

use criterion::{BenchmarkId, Criterion, Throughput};
use qscope::engine::split::forward_split;
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
        let input = vec![float::input_tensor(&model, &x, BATCH)];
        let parts = rayon::current_num_threads();
        g.bench_function(BenchmarkId::new("float", name), |b| {
            b.iter(|| {
                forward_split(black_box(&input), parts, |t| {
                    float::forward(&model, t, usize::MAX, |_, _| {})
                })
                .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("int", name), |b| {
            b.iter(|| forward_split(black_box(&input), parts, |t| int.forward_outputs(t)).unwrap())
        });
    }
    g.finish();
}
