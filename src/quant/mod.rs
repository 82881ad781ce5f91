//! Quantization arithmetic: schemes, qparams, fixed-point multipliers, weight quantization and
//! the calibration strategies that choose clipping ranges.

pub mod adaround;
pub mod calib;
pub mod fixed_point;
pub mod gptq;
pub mod qparams;
#[cfg(target_arch = "x86_64")]
mod quantize_simd;
pub mod scheme;
pub mod weights;

pub use fixed_point::FixedMultiplier;
pub use qparams::{ClipRange, QParams};
pub use scheme::{Granularity, Scheme, Strategy};
