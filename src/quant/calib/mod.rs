//! TEMPORARY STUB (replaced by the real module).
pub mod histogram;
pub use histogram::{Histogram, Stats};
use crate::quant::{ClipRange, Scheme, Strategy};

/// Settings a strategy needs besides the histogram.
#[derive(Debug, Clone, Copy)]
pub struct StrategyParams {
    /// Bit width.
    pub bits: u8,
    /// Scheme.
    pub scheme: Scheme,
    /// Percentile.
    pub percentile: f64,
}

/// The clipping range `strategy` chooses.
pub fn choose_range(hist: &Histogram, _strategy: Strategy, _p: &StrategyParams) -> ClipRange {
    ClipRange::new(hist.min(), hist.max())
}
