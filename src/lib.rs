//! qscope: a workbench for post-training quantization.
//!
//! The flow: load a [`Model`] and calibration data, quantize weights, calibrate activations with
//! streaming histograms and a clipping [`Strategy`], run the integer-only engine and compare it
//! with the float model ([`pipeline::run`] → [`Report`]). The terminal UI lives behind the
//! default `tui` feature; everything else has no UI types.

pub mod bundled;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod export;
pub mod input;
pub mod inspect;
pub mod model;
pub mod params;
pub mod params_config;
pub mod pipeline;
pub mod process;
pub mod quant;
#[cfg(feature = "tui")]
pub mod tui;

pub use config::{LayerOverride, QuantConfig};
pub use error::{Error, Result};
pub use eval::report::Report;
pub use model::{Dataset, Model};
pub use quant::{ClipRange, Granularity, QParams, Scheme, Strategy};
