//! A loaded network: a graph of ops over named tensors, built from safetensors + a spec
//! (formats.md §1) or from an ONNX file (§1b).

mod build;
pub mod dataset;
mod npz;
pub mod onnx;
pub mod op;
pub mod points;
pub mod spec;
pub mod tensors;
mod validate;

pub use build::{load_model, load_model_bytes, sha256_hex};
pub use dataset::{Dataset, load_dataset, load_dataset_bytes};
pub use op::{BinaryOp, DType, Op, UnaryOp};
pub use spec::{LayerSpec, Spec};

use crate::engine::tensor::Tensor;

/// Index of a tensor (value) of the graph.
pub type ValueId = usize;

/// A named tensor of the graph.
#[derive(Debug, Clone)]
pub struct Value {
    /// Its name (the ONNX tensor name, or the producing layer's name for spec models).
    pub name: String,
}

/// A graph input: a value fed from the data set.
#[derive(Debug, Clone)]
pub struct GraphInput {
    /// The value it feeds.
    pub value: ValueId,
    /// Element type the graph declares.
    pub dtype: DType,
    /// One sample's shape (without the batch axis); `None` for a dimension the file leaves open.
    pub shape: Vec<Option<usize>>,
}

/// A node of the graph: its name, op, input and output values, and one sample's shapes.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Name used by configs, reports and exports (the ONNX node name).
    pub name: String,
    /// The operation.
    pub op: Op,
    /// The op type reports show: the ONNX op type (`Conv`, `MatMul`, …) or the spec's op.
    pub op_type: String,
    /// Input values in the op's order (`None`: an absent optional input).
    pub inputs: Vec<Option<ValueId>>,
    /// The output value.
    pub output: ValueId,
    /// One sample's shape of the first input (empty when unknown).
    pub in_shape: Vec<usize>,
    /// One sample's shape of the output (empty when unknown).
    pub out_shape: Vec<usize>,
}

impl Layer {
    /// The first input (the data input of every op that has one).
    pub fn data_input(&self) -> Option<ValueId> {
        self.inputs.first().copied().flatten()
    }
}

/// Where a model came from, which decides what exports can write.
#[derive(Debug, Clone)]
pub enum Source {
    /// safetensors + a qscope spec (the spec can be embedded again).
    Spec(Spec),
    /// An ONNX file.
    Onnx,
}

/// A network ready to run: nodes in topological order plus input normalization.
#[derive(Debug, Clone)]
pub struct Model {
    /// Model name (spec `name`, or the file stem).
    pub name: String,
    /// One sample's shape of the first input (open dimensions as 0 until data fixes them).
    pub input_shape: Vec<usize>,
    /// Per-channel mean (one value = all channels).
    pub input_mean: Vec<f32>,
    /// Per-channel std (one value = all channels).
    pub input_std: Vec<f32>,
    /// Nodes in topological order (batchnorm folded, Identity/Dropout removed).
    pub layers: Vec<Layer>,
    /// Every tensor of the graph.
    pub values: Vec<Value>,
    /// Constant values (initializers that are not weights of a linear/conv node).
    pub consts: Vec<(ValueId, Tensor)>,
    /// Graph inputs, the first one normalized by `input_mean`/`input_std`.
    pub inputs: Vec<GraphInput>,
    /// Graph outputs; the first is the one reports compare.
    pub outputs: Vec<ValueId>,
    /// What the model was built from.
    pub source_kind: Source,
    /// sha256 of the weights file, hex.
    pub sha256: String,
    /// Where the weights came from (path or bundled name), for messages.
    pub source: String,
    /// Things the loader assumed and the user should know (e.g. the no-spec fallback).
    pub notes: Vec<String>,
}

/// Ops that fuse into the output of the weight node before them when they are its only
/// consumer: Relu, and Clip with a lower bound of 0 (ReLU6).
fn fusable(op: &Op) -> bool {
    matches!(op, Op::Relu) || matches!(op, Op::Clip { min, .. } if *min == 0.0)
}

impl Model {
    /// The most values any node's output holds for one sample (0 when no shape is known).
    pub fn largest_sample_elems(&self) -> usize {
        let elems = |l: &Layer| {
            l.out_shape.iter().product::<usize>() * usize::from(!l.out_shape.is_empty())
        };
        self.layers.iter().map(elems).max().unwrap_or(0)
    }

    /// The spec a spec model was built from.
    pub fn spec(&self) -> Option<&Spec> {
        match &self.source_kind {
            Source::Spec(s) => Some(s),
            Source::Onnx => None,
        }
    }

    /// Whether the model came from an ONNX file.
    pub fn is_onnx(&self) -> bool {
        matches!(self.source_kind, Source::Onnx)
    }

    /// Indices of the layers that hold weights, in network order.
    pub fn weight_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.layers[i].op.has_weights())
            .collect()
    }

    /// The node whose output is value `v` (`None` for a graph input or a constant).
    pub fn producer(&self, v: ValueId) -> Option<usize> {
        self.layers.iter().position(|l| l.output == v)
    }

    /// The nodes that read value `v`.
    pub fn consumers(&self, v: ValueId) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.layers[i].inputs.contains(&Some(v)))
            .collect()
    }

    /// The Relu/ReLU6 node fused into node `i`'s output: the only consumer of that output,
    /// when the output is not also a graph output.
    pub fn fused_activation(&self, i: usize) -> Option<usize> {
        let out = self.layers[i].output;
        if self.outputs.contains(&out) {
            return None;
        }
        match self.consumers(out).as_slice() {
            [j] if fusable(&self.layers[*j].op) => Some(*j),
            _ => None,
        }
    }

    /// Whether a Relu (or ReLU6) fuses into node `i`'s output.
    pub fn relu_follows(&self, i: usize) -> bool {
        self.fused_activation(i).is_some()
    }

    /// The value holding node `i`'s (fused) output.
    pub fn point_value(&self, i: usize) -> ValueId {
        let j = self.fused_activation(i).unwrap_or(i);
        self.layers[j].output
    }

    /// The index of a weight layer by name.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers
            .iter()
            .position(|l| l.name == name && l.op.has_weights())
    }

    /// The value named `name`.
    pub fn value_index(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name)
    }

    /// The constant held by value `v`, if it is one.
    pub fn constant(&self, v: ValueId) -> Option<&Tensor> {
        self.consts.iter().find(|(id, _)| *id == v).map(|(_, t)| t)
    }

    /// Number of elements of one input sample (of the first input).
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of elements of one output sample (of the first output), 0 when unknown.
    pub fn output_len(&self) -> usize {
        let out = self.outputs[0];
        self.layers
            .iter()
            .find(|l| l.output == out)
            .map_or(self.input_len(), |l| l.out_shape.iter().product())
    }

    /// The input normalization per channel of the first input: (channels' mean, 1/std), one
    /// entry per channel ([C, H, W] inputs) or one for all; `None` when there is none.
    pub fn normalization(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        if self.input_mean.is_empty() && self.input_std.is_empty() {
            return None;
        }
        let channels = if self.input_shape.len() == 3 {
            self.input_shape[0].max(1)
        } else {
            1
        };
        let pick = |v: &[f32], c: usize, default: f32| match v.len() {
            0 => default,
            1 => v[0],
            _ => v[c.min(v.len() - 1)],
        };
        let mean = (0..channels)
            .map(|c| pick(&self.input_mean, c, 0.0))
            .collect();
        let inv = (0..channels)
            .map(|c| 1.0 / pick(&self.input_std, c, 1.0))
            .collect();
        Some((mean, inv))
    }

    /// Applies the input normalization in place to a batch of raw samples of the first input.
    pub fn normalize(&self, batch: &mut [f32]) {
        let Some((mean, inv)) = self.normalization() else {
            return;
        };
        let len = self.input_len().max(1);
        let plane = (len / mean.len()).max(1);
        for sample in batch.chunks_mut(len) {
            for (c, chunk) in sample.chunks_mut(plane).enumerate() {
                let (m, k) = (mean[c.min(mean.len() - 1)], inv[c.min(inv.len() - 1)]);
                for x in chunk {
                    *x = (*x - m) * k;
                }
            }
        }
    }
}
