//! Widgets drawn from owned view data: histograms with clipping marks, the per-channel range
//! plot and the help overlay.

pub mod help;
pub mod histogram;
pub mod ranges;
