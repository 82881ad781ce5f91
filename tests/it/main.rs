//! Integration tests: one binary, one module per area.

mod adaround;
mod bad_input;
mod bench_cmd;
mod campaign;
mod engine;
mod export;
mod figures;
mod graph;
mod loading;
mod methods;
mod onnx;
mod qdq;
mod random_graphs;
mod refused;
mod smoke_fuzz;
#[cfg(feature = "tui")]
mod tui;
mod util;
