//! Integration tests: one binary, one module per area.

mod act_refine;
mod adaround;
mod bad_input;
mod bench_cmd;
mod bias_passes;
mod campaign;
mod channel_bits;
mod engine;
mod export;
mod figures;
mod float_in_place;
mod gather_int8;
mod graph;
mod inspect;
mod lenet_kl;
mod loading;
mod methods;
mod mixed;
mod onnx;
mod qdq;
mod random_graphs;
mod refused;
mod session;
mod smoke_fuzz;
mod smoothquant;
#[cfg(feature = "tui")]
mod tui;
mod util;
