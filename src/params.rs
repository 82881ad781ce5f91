//! The complete set of quantization parameters of a model: what calibration produces, what the
//! integer engine is built from, and what export writes (formats.md §5).

use crate::config::{ActSettings, WeightSettings};
use crate::quant::weights::QWeights;
use crate::quant::{ClipRange, QParams};

/// One activation quantization point: how its range was chosen, the range and the qparams.
#[derive(Debug, Clone, PartialEq)]
pub struct ActQuant {
    /// The settings that chose the range.
    pub settings: ActSettings,
    /// The clipping range.
    pub range: ClipRange,
    /// Scale and zero point.
    pub qparams: QParams,
}

/// A weight layer's quantized weights and the settings they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightQuant {
    /// The settings that chose the ranges.
    pub settings: WeightSettings,
    /// Integer weights and qparams.
    pub q: QWeights,
}

/// One weight layer's parameters (`weight` is `None` for a layer kept in float).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerParams {
    /// Layer name.
    pub name: String,
    /// Index into `Model::layers`.
    pub index: usize,
    /// Quantized weights, or `None` when the layer stays float.
    pub weight: Option<WeightQuant>,
    /// The layer's (fused) output quantization, or `None` when it stays float.
    pub act: Option<ActQuant>,
}

/// Parameters of every quantization point of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    /// The network input's quantization.
    pub input: ActQuant,
    /// One entry per weight layer, in network order.
    pub layers: Vec<LayerParams>,
}

impl ModelParams {
    /// The entry of the weight layer at model index `index`.
    pub fn by_index(&self, index: usize) -> Option<&LayerParams> {
        self.layers.iter().find(|l| l.index == index)
    }

    /// The entry of the weight layer named `name`.
    pub fn by_name(&self, name: &str) -> Option<&LayerParams> {
        self.layers.iter().find(|l| l.name == name)
    }
}
