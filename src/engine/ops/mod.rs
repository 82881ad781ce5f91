//! Float reference implementations of the graph ops: one function per op on F32/I64 tensors
//! (booleans as I64 0/1), checked so that no input makes them panic. The engines run weight
//! layers (linear, conv) themselves and everything else through [`eval`].

mod args;
pub mod broadcast;
mod create;
mod elementwise;
mod gather;
mod index;
mod layout;
mod matmul;
mod nn;
mod pooling;
mod reduce;
mod shape_ops;
mod slice;
#[cfg(test)]
mod tests;

use crate::engine::tensor::Tensor;
use crate::model::op::Op;
use args::{axes_arg, count, get, len};

/// Limits checked before an op allocates its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most elements any one output may have.
    pub max_elems: usize,
}

/// Runs `op` (any variant except Op::Linear and Op::Conv2d, which the engine runs itself) on its
/// inputs (None = an absent optional ONNX input); returns the output or a one-line reason.
pub fn eval(op: &Op, inputs: &[Option<&Tensor>], limits: &Limits) -> Result<Tensor, String> {
    check_inputs(inputs)
        .and_then(|()| dispatch(op, inputs, limits))
        .map_err(|e| format!("{}: {e}", op.kind()))
}

/// Runs a MaxPool2d on quantized codes as they are (the max of codes is the code of the max),
/// keeping their qparams; `None` for any other op or input.
pub fn max_pool_codes(op: &Op, x: &Tensor, limits: &Limits) -> Option<Result<Tensor, String>> {
    let ok =
        matches!(op, Op::MaxPool2d { .. }) && x.as_q().is_some_and(|(q, _)| q.len() == x.len());
    ok.then(|| pooling::pool(op, x, limits).map_err(|e| format!("{}: {e}", op.kind())))
}

/// Runs a Relu or Clip on real values in the tensor itself (the same values as [`eval`]);
/// false, leaving `x` untouched, for any other op or data.
pub fn eval_in_place(op: &Op, x: &mut Tensor) -> bool {
    nn::clamp_in_place(op, x)
}

/// Every present input is F32 or I64 and holds as many values as its shape says; the product
/// of its nonzero dims fits in usize (so no partial product of its dims overflows).
fn check_inputs(inputs: &[Option<&Tensor>]) -> Result<(), String> {
    for (i, t) in inputs.iter().enumerate() {
        let Some(t) = t else { continue };
        if t.is_quantized() {
            return Err(format!("input {i} is quantized (dequantize it first)"));
        }
        let nonzero: Vec<usize> = t.shape.iter().copied().filter(|&d| d > 0).collect();
        count(&nonzero)?;
        if count(&t.shape)? != len(t) {
            return Err(format!(
                "input {i} has shape {:?} but {} values",
                t.shape,
                len(t)
            ));
        }
    }
    Ok(())
}

/// The op on checked inputs: layers and elementwise math here, shape ops in [`dispatch_shape`].
fn dispatch(op: &Op, inputs: &[Option<&Tensor>], limits: &Limits) -> Result<Tensor, String> {
    let x = || get(inputs, 0);
    let y = || get(inputs, 1);
    match op {
        Op::Linear { .. } | Op::Conv2d { .. } | Op::Embedding { .. } => {
            Err("weight layers are run by the engine".into())
        }
        Op::Relu => nn::relu(x()?),
        Op::Clip { min, max } => nn::clip(x()?, *min, *max),
        Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => pooling::pool(op, x()?, limits),
        Op::GlobalAvgPool => reduce::global_avg_pool(x()?, limits),
        Op::BatchNorm { scale, shift } => nn::batch_norm(x()?, scale, shift),
        Op::Binary(b) => elementwise::binary(*b, x()?, y()?, limits),
        Op::Unary(u) => elementwise::unary(*u, x()?),
        Op::Softmax { axis } => nn::softmax(x()?, *axis),
        Op::LayerNorm { axis, epsilon } => {
            nn::layer_norm(x()?, y()?, args::opt(inputs, 2), *axis, *epsilon)
        }
        Op::ReduceMean { axes, keepdims } => {
            let list = axes_arg(axes, inputs, 1)?;
            reduce::reduce_mean(x()?, list.as_deref(), *keepdims, limits)
        }
        Op::MatMul => matmul::matmul(x()?, y()?, limits),
        Op::Where => elementwise::where_(x()?, y()?, get(inputs, 2)?, limits),
        _ => dispatch_shape(op, inputs, limits),
    }
}

/// The shape, layout and constant-making ops.
fn dispatch_shape(op: &Op, inputs: &[Option<&Tensor>], limits: &Limits) -> Result<Tensor, String> {
    let x = || get(inputs, 0);
    let y = || get(inputs, 1);
    match op {
        Op::Flatten { axis } => shape_ops::flatten(x()?, *axis),
        Op::Reshape { allowzero } => shape_ops::reshape(x()?, y()?, *allowzero, limits),
        Op::Transpose { perm } => layout::transpose(x()?, perm.as_deref()),
        Op::Concat { axis } => {
            let parts = (0..inputs.len())
                .map(|i| get(inputs, i))
                .collect::<Result<Vec<_>, _>>()?;
            layout::concat(&parts, *axis, limits)
        }
        Op::Squeeze { axes } => shape_ops::squeeze(x()?, axes_arg(axes, inputs, 1)?.as_deref()),
        Op::Unsqueeze { axes } => {
            let list = axes_arg(axes, inputs, 1)?.ok_or("no axes given")?;
            shape_ops::unsqueeze(x()?, &list)
        }
        Op::Gather { axis } => gather::gather(x()?, y()?, *axis, limits),
        Op::GatherNd { batch_dims } => gather::gather_nd(x()?, y()?, *batch_dims, limits),
        Op::Slice => slice::slice(inputs),
        Op::Expand => layout::expand(x()?, &shape_ops::shape_input(y()?)?, limits),
        Op::Cast { to } => shape_ops::cast(x()?, *to),
        Op::Shape { start, end } => Ok(shape_ops::shape_of(x()?, *start, *end)),
        Op::Range => create::range(x()?, y()?, get(inputs, 2)?, limits),
        Op::ConstantOfShape { value, dtype } => {
            create::constant_of_shape(shape_ops::shape_input(x()?)?, *value, *dtype, limits)
        }
        Op::Identity => Ok(x()?.clone()),
        _ => Err("not a shape op".into()),
    }
}
