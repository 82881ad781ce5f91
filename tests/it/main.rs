//! Integration tests: one binary, one module per area.

mod bad_input;
mod engine;
mod export;
mod figures;
mod graph;
mod loading;
mod onnx;
#[cfg(feature = "tui")]
mod tui;
mod util;
