//! The `qscope eval --json` report (formats.md §4).

use crate::config::QuantConfig;
use serde::{Deserialize, Serialize};

/// One run's results: accuracy of both engines, agreement and per-layer error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// This crate's version.
    pub qscope_version: String,
    /// Model name.
    pub model: String,
    /// The configuration that was run.
    pub config: QuantConfig,
    /// Calibration samples used (0 when parameters were loaded instead).
    pub calib_samples: usize,
    /// Evaluation samples.
    pub eval_samples: usize,
    /// Float top-1 (null without labels or float weights).
    pub fp32_accuracy: Option<f64>,
    /// Integer-engine top-1 (null without labels).
    pub quant_accuracy: Option<f64>,
    /// Share of samples where both engines predict the same class (null without float weights).
    pub agreement: Option<f64>,
    /// SQNR of the integer engine's final output against the float model's.
    pub output_sqnr_db: Option<f64>,
    /// The weight layers, in network order.
    pub layers: Vec<LayerReport>,
    /// The network input's quantization (null when the first graph input is not a point).
    pub input: Option<InputReport>,
    /// Other quantization points that no weight layer produces (graph models), by tensor name.
    #[serde(default)]
    pub points: Vec<PointReport>,
    /// Mean over samples of the cosine between the float and the quantized output.
    #[serde(default)]
    pub output_cosine: Option<f64>,
    /// Nodes that ran in float between a dequantize and a quantize.
    #[serde(default)]
    pub float_islands: Vec<String>,
    /// Share of multiply-adds done in integers.
    #[serde(default)]
    pub int_mac_share: Option<f64>,
    /// The accuracy methods this run used (bias correction, CLE, weight rounding).
    #[serde(default)]
    pub methods: Methods,
    /// Cross-layer equalization: per equalized pair, the per-channel range spread before and
    /// after (empty without `cle`, and when parameters were loaded).
    #[serde(default)]
    pub cle_pairs: Vec<ClePairReport>,
    /// SmoothQuant: per smoothed group of linear layers, the producer the scales were folded
    /// into and the per-channel activation spread before and after (empty without
    /// `smoothquant`, and when parameters were loaded).
    #[serde(default)]
    pub smoothquant: Vec<SmoothReport>,
    /// SmoothQuant: quantized linear layers whose input no producer could absorb the scales
    /// into (a graph input, GELU, an attention MatMul, …), left as they were.
    #[serde(default)]
    pub smoothquant_skipped: Vec<String>,
    /// Wall-clock time of each stage.
    pub timings_ms: Timings,
    /// The int8 matrix kernel that ran ("avx2", "portable", ...).
    pub kernel: String,
}

/// Per weight layer: settings and error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// `linear` or `conv2d`.
    pub op: String,
    /// Weight bits (null when kept in float; with bits per channel, the widest channel's).
    pub weight_bits: Option<u8>,
    /// With bits per output channel: their mean (absent otherwise) (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_bits_mean: Option<f64>,
    /// Output activation bits (null when kept in float).
    pub act_bits: Option<u8>,
    /// Weight strategy (`manual` when a hand-set factor applies).
    pub weight_strategy: Option<String>,
    /// Activation strategy.
    pub act_strategy: Option<String>,
    /// Weight granularity.
    pub granularity: Option<String>,
    /// Weight scheme.
    pub weight_scheme: Option<String>,
    /// Activation scheme.
    pub act_scheme: Option<String>,
    /// SQNR of the dequantized weights against the float weights.
    pub weight_sqnr_db: Option<f64>,
    /// SQNR of the integer engine's output at this layer (error accumulated from earlier layers).
    pub act_sqnr_db: Option<f64>,
    /// SQNR of this layer alone in integers, fed the float model's input.
    pub act_sqnr_isolated_db: Option<f64>,
    /// Clipping range of the (fused) output.
    pub act_range: Option<[f32; 2]>,
    /// Whether the layer stays in float.
    pub float: bool,
}

/// The network input's quantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputReport {
    /// Bits.
    pub act_bits: u8,
    /// Strategy.
    pub act_strategy: String,
    /// Clipping range.
    pub act_range: [f32; 2],
}

/// A quantization point that no weight layer produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointReport {
    /// Tensor name.
    pub name: String,
    /// Bits.
    pub act_bits: u8,
    /// Strategy.
    pub act_strategy: String,
    /// Clipping range.
    pub act_range: [f32; 2],
}

/// The accuracy methods of a run (the `methods` object of the report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Methods {
    /// Empirical bias correction.
    pub bias_correction: bool,
    /// Loss-aware activation range refinement.
    #[serde(default)]
    pub act_refine: bool,
    /// Cross-layer equalization.
    pub cle: bool,
    /// `nearest`, `gptq` or `adaround`.
    pub weight_rounding: String,
    /// GPTQ's act-order.
    pub gptq_act_order: bool,
    /// SmoothQuant's migration strength α (null: off).
    #[serde(default)]
    pub smoothquant: Option<f32>,
}

impl Methods {
    /// The methods `config` asks for.
    pub fn of(config: &QuantConfig) -> Self {
        Methods {
            bias_correction: config.bias_correction,
            act_refine: config.act_refine,
            cle: config.cle,
            weight_rounding: config.weight_rounding.name().into(),
            gptq_act_order: config.gptq_act_order,
            smoothquant: config.smoothquant,
        }
    }
}

/// One pair of layers that cross-layer equalization rescaled: the spread (largest / smallest
/// nonzero per-channel range, max |w|) of the first layer's output channels and of the second
/// layer's input channels, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClePairReport {
    /// The first layer (its output channels are scaled by 1/s).
    pub first: String,
    /// The second layer (its matching input channels are scaled by s).
    pub second: String,
    /// Spread of the first layer's per-output-channel ranges before equalization.
    pub out_spread_before: Option<f64>,
    /// The same after.
    pub out_spread_after: Option<f64>,
    /// Spread of the second layer's per-input-channel ranges before equalization.
    pub in_spread_before: Option<f64>,
    /// The same after.
    pub in_spread_after: Option<f64>,
    /// Channels whose high bias was absorbed into the second layer (after equalization).
    #[serde(default)]
    pub absorbed_channels: usize,
}

/// One group of linear layers SmoothQuant smoothed: the spread (largest / smallest nonzero
/// per-channel max |x| over the calibration set) of their input before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmoothReport {
    /// The linear layers reading the smoothed tensor (their input channels scaled by s).
    pub layers: Vec<String>,
    /// The node that absorbed 1/s.
    pub folded_into: String,
    /// `layernorm` (its scale and bias), `layernorm-copy` (a copy of it that only these layers
    /// read: the tensor has other readers) or `linear` (its output rows and bias).
    pub kind: String,
    /// Spread of the input's per-channel max |x| before.
    pub act_spread_before: Option<f64>,
    /// The same after.
    pub act_spread_after: Option<f64>,
}

/// Stage timings in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Weight quantization (the methods below included).
    pub weights: f64,
    /// Cross-layer equalization (part of `weights`).
    #[serde(default)]
    pub cle: f64,
    /// SmoothQuant, its statistics pass included (part of `weights`).
    #[serde(default)]
    pub smoothquant: f64,
    /// GPTQ rounding, its statistics pass included (part of `weights`).
    #[serde(default)]
    pub gptq: f64,
    /// AdaRound rounding, its statistics pass included (part of `weights`).
    #[serde(default)]
    pub adaround: f64,
    /// Bias correction, its statistics pass included without GPTQ or AdaRound (part of
    /// `weights`).
    #[serde(default)]
    pub bias_correction: f64,
    /// Activation range refinement.
    #[serde(default)]
    pub act_refine: f64,
    /// Calibration (histograms and range choice).
    pub calibration: f64,
    /// Evaluation of both engines.
    pub eval: f64,
}
