//! A loaded network: layers with float weights and known shapes, built from safetensors + a spec.

mod build;
pub mod dataset;
mod npz;
pub mod spec;
pub mod tensors;
mod validate;

pub use build::{load_model, load_model_bytes, sha256_hex};
pub use dataset::{Dataset, load_dataset, load_dataset_bytes};
pub use spec::{LayerSpec, Spec};

use ndarray::{Array1, Array2, Array4};

/// One operation of the network.
#[derive(Debug, Clone)]
pub enum Op {
    /// y = x W^T + b; W is [out, in].
    Linear {
        /// Weights [out, in].
        weight: Array2<f32>,
        /// Bias [out].
        bias: Array1<f32>,
    },
    /// 2-D convolution over NCHW activations; W is [out, in, kh, kw].
    Conv2d {
        /// Weights [out, in, kh, kw].
        weight: Array4<f32>,
        /// Bias [out].
        bias: Array1<f32>,
        /// (sh, sw).
        stride: (usize, usize),
        /// (ph, pw).
        padding: (usize, usize),
    },
    /// max(x, 0).
    Relu,
    /// Max over windows.
    MaxPool2d {
        /// (kh, kw).
        kernel: (usize, usize),
        /// (sh, sw).
        stride: (usize, usize),
    },
    /// Mean over windows.
    AvgPool2d {
        /// (kh, kw).
        kernel: (usize, usize),
        /// (sh, sw).
        stride: (usize, usize),
    },
    /// [C, H, W] → [C·H·W].
    Flatten,
}

impl Op {
    /// The op's name as in a spec.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "linear",
            Op::Conv2d { .. } => "conv2d",
            Op::Relu => "relu",
            Op::MaxPool2d { .. } => "maxpool2d",
            Op::AvgPool2d { .. } => "avgpool2d",
            Op::Flatten => "flatten",
        }
    }

    /// Whether the op holds weights (and so gets quantized).
    pub fn has_weights(&self) -> bool {
        matches!(self, Op::Linear { .. } | Op::Conv2d { .. })
    }

    /// The weight tensor as a row-major [out, in·kh·kw] slice, if any.
    pub fn weight_rows(&self) -> Option<(&[f32], usize, usize)> {
        match self {
            Op::Linear { weight, .. } => {
                let (o, i) = weight.dim();
                Some((weight.as_slice()?, o, i))
            }
            Op::Conv2d { weight, .. } => {
                let (o, i, kh, kw) = weight.dim();
                Some((weight.as_slice()?, o, i * kh * kw))
            }
            _ => None,
        }
    }

    /// The weights as a mutable row-major slice and the bias, for layers that have them.
    pub fn weight_bias_mut(&mut self) -> Option<(&mut [f32], &mut [f32])> {
        let (w, b) = match self {
            Op::Linear { weight, bias } => (weight.as_slice_mut(), bias.as_slice_mut()),
            Op::Conv2d { weight, bias, .. } => (weight.as_slice_mut(), bias.as_slice_mut()),
            _ => return None,
        };
        Some((w.expect("standard layout"), b.expect("contiguous bias")))
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Array1<f32>> {
        match self {
            Op::Linear { bias, .. } | Op::Conv2d { bias, .. } => Some(bias),
            _ => None,
        }
    }
}

/// A layer: its name, op and the shapes of one sample in and out.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Name used by configs, reports and exports.
    pub name: String,
    /// The operation.
    pub op: Op,
    /// One sample's input shape.
    pub in_shape: Vec<usize>,
    /// One sample's output shape.
    pub out_shape: Vec<usize>,
}

/// A network ready to run: layers in order plus input normalization.
#[derive(Debug, Clone)]
pub struct Model {
    /// Model name (spec `name`, or the file stem).
    pub name: String,
    /// One sample's input shape.
    pub input_shape: Vec<usize>,
    /// Per-channel mean (one value = all channels).
    pub input_mean: Vec<f32>,
    /// Per-channel std (one value = all channels).
    pub input_std: Vec<f32>,
    /// Layers in order (batchnorm already folded).
    pub layers: Vec<Layer>,
    /// The spec the model was built from (to embed in exports).
    pub spec: Spec,
    /// sha256 of the weights file, hex.
    pub sha256: String,
    /// Where the weights came from (path or bundled name), for messages.
    pub source: String,
    /// Things the loader assumed and the user should know (e.g. the no-spec fallback).
    pub notes: Vec<String>,
}

impl Model {
    /// Indices of the layers that hold weights, in network order.
    pub fn weight_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.layers[i].op.has_weights())
            .collect()
    }

    /// Whether a ReLU directly follows layer `i` (and so fuses into its output).
    pub fn relu_follows(&self, i: usize) -> bool {
        matches!(self.layers.get(i + 1).map(|l| &l.op), Some(Op::Relu))
    }

    /// The index of a weight layer by name.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.name == name && l.op.has_weights())
    }

    /// Number of elements of one input sample.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of elements of one output sample.
    pub fn output_len(&self) -> usize {
        self.layers
            .last()
            .map_or(self.input_len(), |l| l.out_shape.iter().product())
    }

    /// Applies the input normalization in place to a batch of raw samples.
    pub fn normalize(&self, batch: &mut [f32]) {
        let len = self.input_len();
        let channels = if self.input_shape.len() == 3 {
            self.input_shape[0]
        } else {
            1
        };
        let plane = len / channels;
        let pick = |v: &[f32], c: usize, default: f32| match v.len() {
            0 => default,
            1 => v[0],
            _ => v[c.min(v.len() - 1)],
        };
        for sample in batch.chunks_mut(len) {
            for (c, chunk) in sample.chunks_mut(plane).enumerate() {
                let mean = pick(&self.input_mean, c, 0.0);
                let inv = 1.0 / pick(&self.input_std, c, 1.0);
                for x in chunk {
                    *x = (*x - mean) * inv;
                }
            }
        }
    }
}
