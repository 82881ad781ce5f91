//! `qscope inspect` throughput: `cargo bench --bench inspect`.
//!
//! Generates a ~220 MB Llama-shaped BF16 checkpoint (the `make_llama_bf16` example, smaller
//! dimensions) in a temporary folder, then times memory-mapping and inspecting it whole, with
//! criterion's throughput in bytes per second (page cache warm after the first run).

#[allow(dead_code)]
#[path = "../examples/make_llama_bf16.rs"]
mod make_llama_bf16;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use make_llama_bf16::Dims;
use qscope::inspect::Checkpoint;
use std::time::Duration;

fn inspect(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("llama-small.safetensors");
    let dims = Dims {
        hidden: 1024,
        intermediate: 2816,
        layers: 6,
        vocab: 16000,
    };
    let bytes = make_llama_bf16::write(&path, dims).expect("write the checkpoint");
    let mut g = c.benchmark_group("inspect");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("bf16_llama_220MB", |b| {
        b.iter(|| {
            let ck = Checkpoint::open(&path).expect("open");
            ck.inspect(&|_| {}).expect("inspect").tensors.len()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = inspect
}
criterion_main!(benches);
