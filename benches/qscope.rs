//! qscope's criterion benches: `cargo bench --bench qscope [-- FILTER]`.
//! Groups: kernels (int8 GEMM vs reference vs f32 sgemm), calibration (histograms and
//! strategies), engines (float vs integer engine at batch 256), full_rerun (the UI's re-run
//! budget), depthwise_vs_gemm (the depthwise kernel on the MobileNetV2 fixture beside the
//! dense int8 GEMM).

mod calibration;
mod depthwise;
mod engines;
mod kernels;
mod pipeline;

use criterion::criterion_group;

criterion_group! {
    name = benches;
    // No HTML plots: plotters here is built with ab_glyph text, which has no system fonts.
    config = criterion::Criterion::default().without_plots();
    targets = kernels::kernels, calibration::calibration, engines::engines, pipeline::pipeline,
        depthwise::depthwise
}
// criterion_main!, after the allocator setting the binary makes (so the benches time what it runs).
fn main() {
    qscope::process::keep_freed_memory();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
