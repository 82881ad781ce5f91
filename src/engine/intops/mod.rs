//! Integer kernels of the weightless ops (residual adds, means, concat, depthwise conv, lookup
//! tables, activation matmuls), each on quantized codes with a plain reference beside it.

pub mod add;
mod add_avx2;
mod add_avx512;
pub mod channels_last;
pub mod clamp;
pub mod conv_nhwc;
pub mod conv_padded;
pub mod depthwise;
pub mod lut;
pub mod matmul;
pub mod mean;
