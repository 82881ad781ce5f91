//! The two engines: the f32 reference and the integer-only engine, plus the kernels they share.

pub mod clamp_f32;
pub mod conv;
pub mod conv_f32;
pub mod conv_f32_avx2;
pub mod conv_f32_strided;
pub mod conv_f32_winograd;
pub mod embedding;
pub mod float;
pub mod im2col;
pub mod in_place;
pub mod int;
pub mod intops;
pub mod kernels;
pub mod linear_f32;
pub mod ops;
pub mod pool;
pub mod recycle;
pub mod requant;
#[cfg(target_arch = "x86_64")]
mod requant_avx2;
#[cfg(target_arch = "x86_64")]
mod requant_avx512;
#[cfg(target_arch = "x86_64")]
mod requant_lines;
pub mod split;
pub mod tensor;
pub mod transpose;

pub use float::argmax;
pub use int::IntModel;
