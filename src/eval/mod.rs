//! Measuring a quantized model against the float one: accuracy, agreement, SQNR, sensitivity.

pub mod accuracy;
pub mod layer_view;
pub mod report;
pub mod sensitivity;
pub mod sqnr;
