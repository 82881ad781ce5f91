//! The ops of a model graph: one variant per op kind, attributes typed. Weight-bearing ops
//! (linear, conv) own their float weights; every other op reads its inputs (activations or
//! constants) from the graph's value table.

use ndarray::{Array1, Array2, Array4};

/// Elementwise ops of two inputs, with numpy (ONNX multidirectional) broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b.
    Add,
    /// a − b.
    Sub,
    /// a · b.
    Mul,
    /// a / b (integer division truncates toward zero for i64, as ONNX).
    Div,
    /// a ^ b.
    Pow,
    /// a == b (a boolean as 0/1).
    Equal,
    /// a > b.
    Greater,
    /// a >= b.
    GreaterOrEqual,
    /// a < b.
    Less,
    /// a <= b.
    LessOrEqual,
    /// a && b.
    And,
    /// a || b.
    Or,
}

/// Elementwise ops of one input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    /// √x.
    Sqrt,
    /// erf(x).
    Erf,
    /// 1 / (1 + e^−x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// e^x.
    Exp,
    /// ln(x).
    Log,
    /// −x.
    Neg,
    /// |x|.
    Abs,
    /// 1 / x.
    Reciprocal,
    /// Logical not (booleans as 0/1).
    Not,
    /// max(0, min(1, αx + β)).
    HardSigmoid {
        /// α (ONNX default 0.2).
        alpha: f32,
        /// β (ONNX default 0.5).
        beta: f32,
    },
    /// x · max(0, min(1, x/6 + 1/2)).
    HardSwish,
    /// x · Φ(x) (`tanh` selects the tanh approximation).
    Gelu {
        /// Whether the tanh approximation is used.
        tanh: bool,
    },
    /// x · sigmoid(x).
    Silu,
}

/// Element types a tensor of the graph can declare (inputs, casts, constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float (F16/BF16/F64 are converted to it).
    F32,
    /// Any integer type (stored as i64).
    I64,
    /// Booleans (stored as i64 0/1).
    Bool,
}

/// One operation of the network. Axes are ONNX axes of batch-major tensors (negative counts
/// from the end); the first data input comes first in the node's inputs.
#[derive(Debug, Clone)]
pub enum Op {
    /// y = x W^T + b over the last axis of x; W is [out, in].
    Linear {
        /// Weights [out, in].
        weight: Array2<f32>,
        /// Bias `[out]`.
        bias: Array1<f32>,
    },
    /// 2-D convolution over NCHW activations; W is [out, in / groups, kh, kw].
    Conv2d {
        /// Weights [out, in / groups, kh, kw].
        weight: Array4<f32>,
        /// Bias `[out]`.
        bias: Array1<f32>,
        /// (sh, sw).
        stride: (usize, usize),
        /// Padding (top, left, bottom, right).
        padding: [usize; 4],
        /// (dh, dw).
        dilation: (usize, usize),
        /// Channel groups (= in channels for a depthwise conv).
        groups: usize,
    },
    /// An embedding lookup: ONNX Gather(axis 0) of a constant [rows, dim] table at the integer
    /// indices of the node's only input (a graph tensor); the output is `indices.shape ++ [dim]`.
    /// A weight node: the table is quantized per row (one scale per token).
    Embedding {
        /// The table [rows, dim].
        table: Array2<f32>,
    },
    /// max(x, 0).
    Relu,
    /// min(max(x, min), max); ReLU6 is Clip(0, 6).
    Clip {
        /// Lower bound (−∞ when absent).
        min: f32,
        /// Upper bound (+∞ when absent).
        max: f32,
    },
    /// Max over windows of an NCHW tensor (padding never wins).
    MaxPool2d {
        /// (kh, kw).
        kernel: (usize, usize),
        /// (sh, sw).
        stride: (usize, usize),
        /// Padding (top, left, bottom, right).
        padding: [usize; 4],
        /// Output size rounds up instead of down.
        ceil_mode: bool,
    },
    /// Mean over windows of an NCHW tensor.
    AvgPool2d {
        /// (kh, kw).
        kernel: (usize, usize),
        /// (sh, sw).
        stride: (usize, usize),
        /// Padding (top, left, bottom, right).
        padding: [usize; 4],
        /// Output size rounds up instead of down.
        ceil_mode: bool,
        /// Padded taps count in the divisor.
        count_include_pad: bool,
    },
    /// Mean over H·W of an NCHW tensor, keeping [N, C, 1, 1].
    GlobalAvgPool,
    /// [d0, …, d(axis−1), …] → [d0·…·d(axis−1), rest]; the spec's `flatten` is axis 1.
    Flatten {
        /// The first axis that goes into the second dimension.
        axis: i64,
    },
    /// An unfolded batch normalization: `y = x · scale[c] + shift[c]` along axis 1.
    BatchNorm {
        /// Per-channel factor γ / √(var + ε).
        scale: Vec<f32>,
        /// Per-channel offset β − mean · scale.
        shift: Vec<f32>,
    },
    /// Elementwise op of two inputs, broadcast.
    Binary(BinaryOp),
    /// Elementwise op of one input.
    Unary(UnaryOp),
    /// Softmax along `axis`.
    Softmax {
        /// The axis.
        axis: i64,
    },
    /// Layer normalization over the axes from `axis` on; inputs x, scale, optional bias.
    LayerNorm {
        /// First normalized axis.
        axis: i64,
        /// ε.
        epsilon: f32,
    },
    /// Mean over `axes` (all when `None`; from a second input at opset 18 when present).
    ReduceMean {
        /// The axes, if given as an attribute.
        axes: Option<Vec<i64>>,
        /// Whether reduced axes stay as 1.
        keepdims: bool,
    },
    /// Matrix product of two tensors (numpy matmul: batched, broadcast).
    MatMul,
    /// Reshape to the shape given by the second input (0 copies, −1 infers).
    Reshape {
        /// A 0 in the shape means 0, not "copy".
        allowzero: bool,
    },
    /// Permute axes (reverse when `None`).
    Transpose {
        /// The permutation.
        perm: Option<Vec<usize>>,
    },
    /// Join inputs along `axis`.
    Concat {
        /// The axis.
        axis: i64,
    },
    /// Drop axes of size 1 (all of them when no axes are given; axes from an input at opset 13).
    Squeeze {
        /// The axes, if given as an attribute.
        axes: Option<Vec<i64>>,
    },
    /// Insert axes of size 1 (axes from an input at opset 13).
    Unsqueeze {
        /// The axes, if given as an attribute.
        axes: Option<Vec<i64>>,
    },
    /// Take entries of input 0 along `axis` at the indices of input 1.
    Gather {
        /// The axis.
        axis: i64,
    },
    /// ONNX GatherND.
    GatherNd {
        /// Leading batch dimensions shared by data and indices.
        batch_dims: usize,
    },
    /// ONNX Slice: inputs data, starts, ends, optional axes and steps.
    Slice,
    /// Broadcast input 0 to the shape of input 1.
    Expand,
    /// Convert to another element type.
    Cast {
        /// The target type.
        to: DType,
    },
    /// The shape of input 0 as integers, dims [start, end).
    Shape {
        /// First dimension.
        start: i64,
        /// End dimension (exclusive; `None` = rank).
        end: Option<i64>,
    },
    /// ONNX Range(start, limit, delta).
    Range,
    /// A tensor of the shape in input 0 filled with `value`.
    ConstantOfShape {
        /// The fill value (real).
        value: f32,
        /// Its type.
        dtype: DType,
    },
    /// Where(cond, a, b), broadcast.
    Where,
    /// A copy (Identity, Dropout at inference).
    Identity,
}

impl Op {
    /// The op's name as in a spec (`linear`, `conv2d`, …) or the ONNX op type for the others.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "linear",
            Op::Conv2d { .. } => "conv2d",
            Op::Embedding { .. } => "Gather",
            Op::Relu => "relu",
            Op::Clip { .. } => "Clip",
            Op::MaxPool2d { .. } => "maxpool2d",
            Op::AvgPool2d { .. } => "avgpool2d",
            Op::GlobalAvgPool => "GlobalAveragePool",
            Op::Flatten { .. } => "flatten",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::Binary(b) => match b {
                BinaryOp::Add => "Add",
                BinaryOp::Sub => "Sub",
                BinaryOp::Mul => "Mul",
                BinaryOp::Div => "Div",
                BinaryOp::Pow => "Pow",
                BinaryOp::Equal => "Equal",
                BinaryOp::Greater => "Greater",
                BinaryOp::GreaterOrEqual => "GreaterOrEqual",
                BinaryOp::Less => "Less",
                BinaryOp::LessOrEqual => "LessOrEqual",
                BinaryOp::And => "And",
                BinaryOp::Or => "Or",
            },
            Op::Unary(u) => match u {
                UnaryOp::Sqrt => "Sqrt",
                UnaryOp::Erf => "Erf",
                UnaryOp::Sigmoid => "Sigmoid",
                UnaryOp::Tanh => "Tanh",
                UnaryOp::Exp => "Exp",
                UnaryOp::Log => "Log",
                UnaryOp::Neg => "Neg",
                UnaryOp::Abs => "Abs",
                UnaryOp::Reciprocal => "Reciprocal",
                UnaryOp::Not => "Not",
                UnaryOp::HardSigmoid { .. } => "HardSigmoid",
                UnaryOp::HardSwish => "HardSwish",
                UnaryOp::Gelu { .. } => "Gelu",
                UnaryOp::Silu => "Silu",
            },
            Op::Softmax { .. } => "Softmax",
            Op::LayerNorm { .. } => "LayerNormalization",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::MatMul => "MatMul",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Concat { .. } => "Concat",
            Op::Squeeze { .. } => "Squeeze",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Gather { .. } => "Gather",
            Op::GatherNd { .. } => "GatherND",
            Op::Slice => "Slice",
            Op::Expand => "Expand",
            Op::Cast { .. } => "Cast",
            Op::Shape { .. } => "Shape",
            Op::Range => "Range",
            Op::ConstantOfShape { .. } => "ConstantOfShape",
            Op::Where => "Where",
            Op::Identity => "Identity",
        }
    }

    /// Whether the op holds weights (and so gets quantized).
    pub fn has_weights(&self) -> bool {
        matches!(
            self,
            Op::Linear { .. } | Op::Conv2d { .. } | Op::Embedding { .. }
        )
    }

    /// Whether the op multiplies its input by its weights (linear, conv): a weight row is an
    /// output channel with a bias, and the input is a real activation.
    pub fn is_gemm(&self) -> bool {
        matches!(self, Op::Linear { .. } | Op::Conv2d { .. })
    }

    /// Channel groups of the op's weights: a conv's `groups`, else 1.
    pub fn channel_groups(&self) -> usize {
        match self {
            Op::Conv2d { groups, .. } => (*groups).max(1),
            _ => 1,
        }
    }

    /// Whether the op is an embedding lookup (weights read by integer indices).
    pub fn is_embedding(&self) -> bool {
        matches!(self, Op::Embedding { .. })
    }

    /// Multiply-adds per output element (weight ops: the reduction length), else 0.
    pub fn macs_per_output(&self) -> usize {
        match self {
            Op::Linear { weight, .. } => weight.dim().1,
            Op::Conv2d { weight, .. } => {
                let (_, i, kh, kw) = weight.dim();
                i * kh * kw
            }
            _ => 0,
        }
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
            Op::Embedding { table } => {
                let (r, d) = table.dim();
                Some((table.as_slice()?, r, d))
            }
            _ => None,
        }
    }

    /// The weights as a mutable row-major slice, for every weight op (an embedding included).
    pub fn weights_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            Op::Linear { weight, .. } => weight.as_slice_mut(),
            Op::Conv2d { weight, .. } => weight.as_slice_mut(),
            Op::Embedding { table } => table.as_slice_mut(),
            _ => None,
        }
    }

    /// The weights as a mutable row-major slice and the bias, for linear and conv layers (an
    /// embedding has no bias: see `weights_mut`).
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

    /// Whether the op only moves, selects or clamps quantized values without changing them (so
    /// an integer tensor passes through it in the same qparams; Clip clamps at the quantized
    /// bounds).
    pub fn keeps_qparams(&self) -> bool {
        matches!(
            self,
            Op::Relu
                | Op::Clip { .. }
                | Op::MaxPool2d { .. }
                | Op::Flatten { .. }
                | Op::Reshape { .. }
                | Op::Transpose { .. }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. }
                | Op::Identity
        )
    }
}
