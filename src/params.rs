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

impl ActQuant {
    /// The same point with its range scaled about zero by `factor` and the qparams of that range
    /// at its bits and scheme.
    pub fn scaled(&self, factor: f32) -> Self {
        let range = self.range.scaled(factor);
        let qparams = QParams::from_range(range, self.settings.bits, self.settings.scheme);
        ActQuant {
            settings: self.settings,
            range,
            qparams,
        }
    }
}

/// A weight layer's quantized weights and the settings they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightQuant {
    /// The settings that chose the ranges.
    pub settings: WeightSettings,
    /// Integer weights and qparams.
    pub q: QWeights,
    /// The float bias the integer layer uses instead of the model's, when a method changed it
    /// (bias correction, cross-layer equalization); `None` = the model's bias.
    pub bias: Option<Vec<f32>>,
}

impl WeightQuant {
    /// Quantized weights that use the model's bias.
    pub fn new(settings: WeightSettings, q: QWeights) -> Self {
        WeightQuant {
            settings,
            q,
            bias: None,
        }
    }

    /// The float bias of this layer: the replacement if there is one, else `model_bias`.
    pub fn bias_or<'a>(&'a self, model_bias: &'a [f32]) -> &'a [f32] {
        self.bias.as_deref().unwrap_or(model_bias)
    }
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

/// A quantization point that no integer weight node produces: a graph input, or a tensor from
/// a float region that enters an integer node.
#[derive(Debug, Clone, PartialEq)]
pub struct PointParams {
    /// `input` for the first graph input, else the tensor name.
    pub name: String,
    /// The value in the model graph.
    pub value: crate::model::ValueId,
    /// Its quantization.
    pub act: ActQuant,
}

/// Parameters of every quantization point of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    /// Points that no integer weight node produces (the network input first, when it is one).
    pub points: Vec<PointParams>,
    /// One entry per weight layer, in network order.
    pub layers: Vec<LayerParams>,
    /// SmoothQuant migrations the parameters were made on (the model they refer to is the
    /// loaded model with these applied, in order; empty without SmoothQuant).
    pub smoothquant: Vec<SmoothEntry>,
    /// The accuracy methods the parameters were made with (`None`: not known, e.g. a file
    /// written before they were recorded).
    pub methods: Option<crate::eval::report::Methods>,
}

impl ModelParams {
    /// The network input's quantization, when the first graph input is a point.
    pub fn input(&self) -> Option<&ActQuant> {
        self.point(crate::config::INPUT_POINT)
    }

    /// The point named `name` (not a layer's output).
    pub fn point(&self, name: &str) -> Option<&ActQuant> {
        self.points.iter().find(|p| p.name == name).map(|p| &p.act)
    }

    /// The entry of the weight layer at model index `index`.
    pub fn by_index(&self, index: usize) -> Option<&LayerParams> {
        self.layers.iter().find(|l| l.index == index)
    }

    /// The entry of the weight layer named `name`.
    pub fn by_name(&self, name: &str) -> Option<&LayerParams> {
        self.layers.iter().find(|l| l.name == name)
    }
}

/// One SmoothQuant migration (formats.md §5 extension `smoothquant`): the input channels of
/// `consumers` (linear layers that all read one tensor) were multiplied by `scales` and the
/// tensor's producer divided by them — a LayerNormalization's scale and bias (on a copy of the
/// node when the tensor has other readers too) or a linear layer's output rows and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothEntry {
    /// The producer node (LayerNormalization or linear layer).
    pub producer: String,
    /// The linear layers whose input channels were scaled.
    pub consumers: Vec<String>,
    /// The migration strength α the scales came from.
    pub alpha: f32,
    /// One scale per channel (s_j > 0).
    pub scales: Vec<f32>,
}
