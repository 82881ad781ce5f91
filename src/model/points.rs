//! Which tensors of a graph are quantization points (architecture.md "Graphs"): each integer
//! weight node's (fused) output, each integer-capable weightless node's output (residual
//! Add/Sub of quantized tensors, Concat, means over H·W, activation MatMuls, lookup-table
//! activations), and each tensor that enters an integer node without already being integers —
//! traced back through ops that keep qparams (Relu, MaxPool, reshapes), so the input is
//! quantized once where the float region ends.

use super::{BinaryOp, DType, Model, Op, UnaryOp, ValueId};
use crate::config::INPUT_POINT;

/// A quantization point that no integer weight node produces.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryPoint {
    /// Its name: `input` for the first graph input, else the tensor name.
    pub name: String,
    /// The value.
    pub value: ValueId,
}

/// The points of a model for a set of float-kept weight nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    /// Per integer weight node (node index): its (fused) output value.
    pub layers: Vec<(usize, ValueId)>,
    /// The other points, in graph order.
    pub entries: Vec<EntryPoint>,
}

/// Whether each value holds reals (not integers, shapes, indices or booleans).
pub fn real_values(model: &Model) -> Vec<bool> {
    let mut real = vec![false; model.values.len()];
    for gi in &model.inputs {
        real[gi.value] = gi.dtype == DType::F32;
    }
    for (v, t) in &model.consts {
        real[*v] = t.as_f32().is_some();
    }
    for l in &model.layers {
        let first = |k: usize| l.inputs.get(k).copied().flatten().is_some_and(|v| real[v]);
        real[l.output] = match &l.op {
            Op::Shape { .. } | Op::Binary(BinaryOp::Equal | BinaryOp::Greater) => false,
            Op::Binary(
                BinaryOp::GreaterOrEqual
                | BinaryOp::Less
                | BinaryOp::LessOrEqual
                | BinaryOp::And
                | BinaryOp::Or,
            )
            | Op::Unary(UnaryOp::Not) => false,
            Op::Cast { to } => *to == DType::F32,
            Op::ConstantOfShape { dtype, .. } => *dtype == DType::F32,
            Op::Linear { .. } | Op::Conv2d { .. } | Op::Embedding { .. } => true,
            Op::Where => first(1),
            _ => first(0),
        };
    }
    real
}

/// The axes a ReduceMean reads from its attribute or its constant second input.
fn reduce_axes(model: &Model, i: usize) -> Option<Vec<i64>> {
    let l = &model.layers[i];
    match &l.op {
        Op::ReduceMean { axes: Some(a), .. } => Some(a.clone()),
        Op::ReduceMean { axes: None, .. } => {
            let v = l.inputs.get(1).copied().flatten()?;
            Some(model.constant(v)?.as_i64()?.to_vec())
        }
        _ => None,
    }
}

/// Whether node `i` is a ReduceMean over exactly the H and W axes of an NCHW tensor.
pub fn is_hw_mean(model: &Model, i: usize) -> bool {
    let l = &model.layers[i];
    if l.in_shape.len() != 3 {
        return false;
    }
    let Some(mut axes) = reduce_axes(model, i) else {
        return false;
    };
    axes.iter_mut()
        .for_each(|a| *a = if *a < 0 { *a + 4 } else { *a });
    axes.sort_unstable();
    axes == [2, 3]
}

/// Whether `op` has an integer kernel when its data inputs arrive as integers.
pub fn integer_op(model: &Model, i: usize) -> bool {
    match &model.layers[i].op {
        Op::Binary(BinaryOp::Add | BinaryOp::Sub)
        | Op::Concat { .. }
        | Op::GlobalAvgPool
        | Op::AvgPool2d { .. }
        | Op::MatMul => true,
        Op::ReduceMean { .. } => is_hw_mean(model, i),
        Op::Binary(BinaryOp::Mul | BinaryOp::Div) => scalar_operand(model, i).is_some(),
        Op::Unary(u) => lut_unary(*u),
        _ => false,
    }
}

/// For a two-input node with one real scalar constant and one other input: the index of the
/// other (data) input. Such a node is elementwise in its data input: a lookup table.
pub fn scalar_operand(model: &Model, i: usize) -> Option<usize> {
    let l = &model.layers[i];
    let [a, b] = l.inputs.as_slice() else {
        return None;
    };
    let scalar = |v: &Option<ValueId>| {
        v.and_then(|v| model.constant(v))
            .is_some_and(|t| t.len() == 1 && t.as_f32().is_some())
    };
    match (scalar(a), scalar(b)) {
        (false, true) => Some(0),
        (true, false) => Some(1),
        _ => None,
    }
}

/// The elementwise ops that run as a 256-entry lookup table.
pub fn lut_unary(u: UnaryOp) -> bool {
    matches!(
        u,
        UnaryOp::Sigmoid
            | UnaryOp::Tanh
            | UnaryOp::HardSigmoid { .. }
            | UnaryOp::HardSwish
            | UnaryOp::Gelu { .. }
            | UnaryOp::Silu
            | UnaryOp::Erf
    )
}

/// The data (non-constant) inputs of node `i`; `None` when the node cannot run in integers
/// given which values are already quantized: every data input must be real and at least one
/// quantized (Add/Sub: every one), and every constant input real.
fn integer_inputs(
    model: &Model,
    i: usize,
    quantized: &[bool],
    real: &[bool],
) -> Option<Vec<ValueId>> {
    let l = &model.layers[i];
    if !integer_op(model, i) {
        return None;
    }
    let ins: Vec<ValueId> = match l.op {
        // Only the data input: axes and bounds are attributes or constants.
        Op::ReduceMean { .. } => vec![l.data_input()?],
        _ => l.inputs.iter().flatten().copied().collect(),
    };
    let (data, consts): (Vec<ValueId>, Vec<ValueId>) =
        ins.into_iter().partition(|&v| model.constant(v).is_none());
    let strict = matches!(l.op, Op::Binary(_));
    // A LayerNormalization output that meets a quantized tensor at a residual Add is quantized
    // there (an entry point) rather than the Add running in float. Without SmoothQuant a
    // linear layer reading it has usually made it a point already; with SmoothQuant's copy of
    // the LayerNorm for its linear layers, this keeps the residual branch quantized as before.
    let ln_output = |v: ValueId| {
        model
            .layers
            .iter()
            .any(|p| p.output == v && matches!(p.op, Op::LayerNorm { .. }))
    };
    let ok = !data.is_empty()
        && data.iter().all(|&v| real[v])
        && consts.iter().all(|&v| real[v])
        && if strict {
            data.iter().any(|&v| quantized[v]) && data.iter().all(|&v| quantized[v] || ln_output(v))
        } else {
            data.iter().any(|&v| quantized[v])
        }
        && !(matches!(l.op, Op::MatMul) && data.len() != 2);
    ok.then_some(data)
}

impl Points {
    /// Finds the points; `is_float(name)` says whether a weight node stays in float.
    pub fn find(model: &Model, is_float: impl Fn(&str) -> bool) -> Points {
        let real = real_values(model);
        let mut quantized = vec![false; model.values.len()];
        let mut layers = Vec::new();
        let mut entries: Vec<EntryPoint> = Vec::new();
        for (i, l) in model.layers.iter().enumerate() {
            if l.op.has_weights() && !is_float(&l.name) {
                // An embedding's input is its integer indices, not a point.
                if let Some(d) = l.data_input().filter(|_| l.op.is_gemm()) {
                    Self::require(model, d, &mut quantized, &mut entries);
                }
                let p = model.point_value(i);
                quantized[l.output] = true;
                quantized[p] = true;
                layers.push((i, p));
            } else if let Some(data) = integer_inputs(model, i, &quantized, &real) {
                for d in data {
                    Self::require(model, d, &mut quantized, &mut entries);
                }
                quantized[l.output] = true;
                Self::push_entry(model, l.output, &mut entries);
            } else if l.op.keeps_qparams()
                && let Some(d) = l.data_input()
            {
                quantized[l.output] = quantized[d];
            }
        }
        Points { layers, entries }
    }

    /// Makes value `d` (read by an integer node) quantized: traced back through qparam-keeping
    /// ops to where the float region ends, which becomes an entry point.
    fn require(model: &Model, d: ValueId, quantized: &mut [bool], entries: &mut Vec<EntryPoint>) {
        if quantized[d] {
            return;
        }
        let producer = |v: ValueId| model.layers.iter().position(|l| l.output == v);
        let mut chain = vec![d];
        let mut v = d;
        while let Some(p) = producer(v) {
            let pl = &model.layers[p];
            let single =
                pl.inputs.iter().flatten().count() == 1 || matches!(pl.op, Op::Reshape { .. });
            // A weight node's fused activation is its output point: stop there.
            let fused = pl.data_input().and_then(producer).is_some_and(|w| {
                model.layers[w].op.has_weights() && model.fused_activation(w) == Some(p)
            });
            match pl.data_input() {
                Some(src)
                    if pl.op.keeps_qparams()
                        && !fused
                        && single
                        && model.constant(src).is_none() =>
                {
                    if quantized[src] {
                        break;
                    }
                    chain.push(src);
                    v = src;
                }
                _ => break,
            }
        }
        let origin = *chain.last().expect("non-empty");
        chain.iter().for_each(|&c| quantized[c] = true);
        Self::push_entry(model, origin, entries);
    }

    /// Adds an entry point at `v` unless there is one.
    fn push_entry(model: &Model, v: ValueId, entries: &mut Vec<EntryPoint>) {
        if !entries.iter().any(|e| e.value == v) {
            entries.push(EntryPoint {
                name: Self::entry_name(model, v),
                value: v,
            });
        }
    }

    /// A point's name: `input` for the first graph input, else its tensor name.
    pub fn entry_name(model: &Model, v: ValueId) -> String {
        if model.inputs.first().is_some_and(|g| g.value == v) {
            INPUT_POINT.to_string()
        } else {
            model.values[v].name.clone()
        }
    }

    /// Every point value: entries first, then layer outputs.
    pub fn values(&self) -> Vec<ValueId> {
        self.entries
            .iter()
            .map(|e| e.value)
            .chain(self.layers.iter().map(|l| l.1))
            .collect()
    }
}
