//! The f32 reference engine: interprets the model graph on a batch, node by node. Linear and
//! conv nodes run the AVX-512 kernels of [`super::linear_f32`], [`super::conv_f32`] and
//! [`super::conv_f32_strided`] where the CPU has them, else ndarray's matrix multiply (over
//! im2col columns for convs); the rest runs the plain op implementations of [`super::ops`].
//! A value is freed after its last reader.

use super::clamp_f32::Clamp;
use super::conv::group_conv_f32;
use super::im2col::ConvGeom;
use super::im2col::im2col_columns;
use super::ops::{Limits, eval};
use super::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::{DType, Layer, Model, Op, ValueId};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Default bound on one sample's share of any tensor a node makes: 1 GiB of f32.
pub const DEFAULT_MAX_SAMPLE_ELEMS: usize = 1 << 28;

/// The geometry of conv (or pool) node input `x` ([n, c, h, w]).
pub fn conv_geom(
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: [usize; 4],
    dilation: (usize, usize),
) -> std::result::Result<ConvGeom, String> {
    let [_, c, h, w] = x.shape[..] else {
        return Err(format!("expects an [N, C, H, W] input, got {:?}", x.shape));
    };
    ConvGeom::general(&[c, h, w], kernel, stride, padding, dilation)
}

/// A conv's kernel, stride, padding, dilation and groups, as [`checked_conv_geom`] needs them.
pub struct ConvParams {
    /// (out, in / groups, kh, kw).
    pub dims: (usize, usize, usize, usize),
    /// (sh, sw).
    pub stride: (usize, usize),
    /// Padding (top, left, bottom, right).
    pub padding: [usize; 4],
    /// (dh, dw).
    pub dilation: (usize, usize),
    /// Channel groups.
    pub groups: usize,
}

/// The [`ConvParams`] of a conv node's fields.
pub fn op_geom(
    weight: &ndarray::Array4<f32>,
    stride: &(usize, usize),
    padding: &[usize; 4],
    dilation: &(usize, usize),
    groups: usize,
) -> ConvParams {
    ConvParams {
        dims: weight.dim(),
        stride: *stride,
        padding: *padding,
        dilation: *dilation,
        groups,
    }
}

/// The geometry of a conv on input `x`, checked: channels that fit the weight, and output and
/// patch matrix within the per-sample limit (shared by both engines).
pub fn checked_conv_geom(
    p: &ConvParams,
    x: &Tensor,
    limit: usize,
) -> std::result::Result<ConvGeom, String> {
    let (o, ci, kh, kw) = p.dims;
    let g = conv_geom(x, (kh, kw), p.stride, p.padding, p.dilation)?;
    if g.c != ci * p.groups {
        return Err(format!(
            "expects {} input channels, got {}",
            ci * p.groups,
            g.c
        ));
    }
    check_size((o * g.out_pixels()).max(g.out_pixels() * g.k()), limit)?;
    Ok(g)
}

/// Checks that a node's output of `per_sample` elements per sample stays within the limit.
pub fn check_size(per_sample: usize, limit: usize) -> std::result::Result<(), String> {
    if per_sample > limit {
        return Err(format!(
            "makes a tensor of {per_sample} elements per sample ({} MiB), above the limit of {} MiB (raise it with --max-tensor-mib)",
            (per_sample * 4) >> 20,
            (limit * 4) >> 20
        ));
    }
    Ok(())
}

/// Runs a linear, conv or embedding node on f32 input `x` (an embedding's: its indices).
pub fn run_weight_op(op: &Op, x: &Tensor, limit: usize) -> std::result::Result<Tensor, String> {
    run_weight_op_then(op, x, limit, Clamp::NONE)
}

/// [`run_weight_op`], then `clamp` on the output (a conv applies it to each sample's output
/// while it is in cache; other ops in a pass of their own).
pub fn run_weight_op_then(
    op: &Op,
    x: &Tensor,
    limit: usize,
    clamp: Clamp,
) -> std::result::Result<Tensor, String> {
    let mut y = weight_op(op, x, limit, clamp)?;
    if !matches!(op, Op::Conv2d { .. })
        && let super::tensor::Data::F32(v) = &mut y.data
    {
        clamp.apply(v);
    }
    Ok(y)
}

/// [`run_weight_op_then`] before the clamp of non-conv ops.
fn weight_op(
    op: &Op,
    x: &Tensor,
    limit: usize,
    clamp: Clamp,
) -> std::result::Result<Tensor, String> {
    if let Op::Embedding { table } = op {
        return super::embedding::lookup_f32(table, x, limit);
    }
    let xs = x.as_f32().ok_or("expects real-valued input")?;
    let n = x.shape.first().copied().unwrap_or(1).max(1);
    match op {
        Op::Linear { weight, bias } => {
            let (out, inp) = weight.dim();
            if x.shape.last() != Some(&inp) {
                return Err(format!(
                    "expects a last axis of {inp}, got shape {:?}",
                    x.shape
                ));
            }
            let rows = xs.len() / inp;
            check_size(rows / n * out, limit)?;
            let mut shape = x.shape.clone();
            *shape.last_mut().expect("rank ≥ 1") = out;
            if inp > 0 && super::linear_f32::applies() {
                let w = weight.as_slice().expect("contiguous weight");
                let b = bias.as_slice().expect("contiguous bias");
                return Ok(Tensor::f32(
                    shape,
                    super::linear_f32::linear_f32(xs, inp, w, b),
                ));
            }
            let mut y: Vec<f32> = std::iter::repeat_n(bias.as_slice().expect("contiguous"), rows)
                .flatten()
                .copied()
                .collect();
            let xv = ArrayView2::from_shape((rows, inp), xs).expect("input size");
            let mut yv = ArrayViewMut2::from_shape((rows, out), &mut y).expect("output size");
            general_mat_mul(1.0, &xv, &weight.t(), 1.0, &mut yv);
            Ok(Tensor::f32(shape, y))
        }
        Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
            dilation,
            groups,
        } => {
            let g = checked_conv_geom(
                &op_geom(weight, stride, padding, dilation, *groups),
                x,
                limit,
            )?;
            Ok(conv2d(xs, n, &g, (weight, bias, clamp), *groups))
        }
        _ => Err("is not a weight op".into()),
    }
}

/// An ungrouped or grouped conv of `n` NCHW samples `xs` with geometry `g` (checked), then
/// `clamp` on each sample's output, on the fastest kernel this CPU runs for it: [n, o, oh, ow].
fn conv2d(
    xs: &[f32],
    n: usize,
    g: &ConvGeom,
    (weight, bias, clamp): (&ndarray::Array4<f32>, &ndarray::Array1<f32>, Clamp),
    groups: usize,
) -> Tensor {
    let (o, ci, kh, kw) = weight.dim();
    let bias = bias.as_slice().expect("contiguous bias");
    let wts = weight.as_slice().expect("contiguous");
    let k = ci * kh * kw;
    // Ungrouped: pixels in the lanes at stride 1, unless the output channels fill whole tiles
    // of the channels-in-lanes kernel and the taps are enough to pay for transposing its output
    // (it then wastes no lanes on padded columns). That exception is AVX-512's only: the AVX2
    // strided tile (four passes of 8 sums) was not timed against the padded one at stride 1.
    // A 3×3 kernel over enough channels takes Winograd's transforms (16 multiply-adds for 36)
    // on CPUs where they pay (`conv_f32_winograd::pays`: 512-bit multiply-adds in two halves).
    let y = if groups > 1 && super::conv_f32::group_applies(g) {
        super::conv_f32::group_conv_f32_padded(xs, n, g, (wts, bias, clamp), groups)
    } else if groups > 1 {
        group_conv_f32(xs, n, g, (wts, bias, clamp), groups)
    } else if super::conv_f32::applies(g)
        && (o % 32 != 0 || k < 128 || !super::conv_f32::applies_any_stride())
    {
        if super::conv_f32_winograd::applies(g, o) && super::conv_f32_winograd::pays() {
            super::conv_f32_winograd::conv_f32_winograd(xs, n, g, (wts, bias, clamp))
        } else {
            super::conv_f32::conv_f32_padded(xs, n, g, (wts, bias, clamp))
        }
    } else if super::conv_f32_strided::applies() {
        super::conv_f32_strided::conv_f32_strided(xs, n, g, (wts, bias, clamp))
    } else {
        let w = ArrayView2::from_shape((o, k), wts).expect("weights");
        let mut y = conv_columns(xs, n, g, w, bias);
        clamp.apply(&mut y);
        y
    };
    Tensor::f32(vec![n, o, g.oh, g.ow], y)
}

/// An ungrouped conv of `n` NCHW samples as [o, k] × [k, columns] products whose output comes
/// out in NCHW order. Samples with few output pixels are taken several at a time (their
/// columns side by side), so that each product is wide enough for the weights' packing to pay.
fn conv_columns(xs: &[f32], n: usize, g: &ConvGeom, w: ArrayView2<f32>, bias: &[f32]) -> Vec<f32> {
    let (o, k) = w.dim();
    let (pixels, sample) = (g.out_pixels(), g.c * g.h * g.w);
    let mut y = vec![0f32; n * o * pixels];
    if pixels == 0 || o == 0 {
        return y;
    }
    let block = (MIN_COLUMNS / pixels).clamp(1, n);
    let (mut cols, mut one, mut out) = (Vec::new(), Vec::new(), Vec::new());
    if block == 1 {
        // Wide enough alone: each sample's product writes its output in place.
        for (x1, ys) in xs.chunks_exact(sample).zip(y.chunks_exact_mut(o * pixels)) {
            im2col_columns(x1, g, 0.0, &mut cols);
            biased_product(w, &cols, bias, ys);
        }
        return y;
    }
    for s0 in (0..n).step_by(block) {
        let bn = block.min(n - s0);
        let width = bn * pixels;
        cols.resize(k * width, 0.0);
        for s in 0..bn {
            let x1 = &xs[(s0 + s) * sample..(s0 + s + 1) * sample];
            im2col_columns(x1, g, 0.0, &mut one);
            for (dst, src) in cols.chunks_exact_mut(width).zip(one.chunks_exact(pixels)) {
                dst[s * pixels..(s + 1) * pixels].copy_from_slice(src);
            }
        }
        out.resize(o * width, 0.0);
        biased_product(w, &cols[..k * width], bias, &mut out[..o * width]);
        // [o, bn · pixels] to the samples' [o, pixels] planes.
        for s in 0..bn {
            let ys = &mut y[(s0 + s) * o * pixels..(s0 + s + 1) * o * pixels];
            for (dst, src) in ys.chunks_exact_mut(pixels).zip(out.chunks_exact(width)) {
                dst.copy_from_slice(&src[s * pixels..(s + 1) * pixels]);
            }
        }
    }
    y
}

/// out = bias (per row) + w [o, k] × cols [k, out.len() / o].
fn biased_product(w: ArrayView2<f32>, cols: &[f32], bias: &[f32], out: &mut [f32]) {
    let (o, k) = w.dim();
    let width = out.len() / o;
    for (row, &b) in out.chunks_exact_mut(width).zip(bias) {
        row.fill(b);
    }
    let cv = ArrayView2::from_shape((k, width), cols).expect("im2col size");
    let mut yv = ArrayViewMut2::from_shape((o, width), out).expect("output size");
    general_mat_mul(1.0, &w, &cv, 1.0, &mut yv);
}

/// Columns below which a float conv takes several samples per product.
const MIN_COLUMNS: usize = 512;

/// Runs one node on its inputs (constants included) in f32.
pub fn run_node(
    layer: &Layer,
    inputs: &[Option<&Tensor>],
    limit: usize,
) -> std::result::Result<Tensor, String> {
    run_node_then(layer, inputs, limit, Clamp::NONE)
}

/// [`run_node`] with `clamp` fused into a weight op's output (none given to other ops).
fn run_node_then(
    layer: &Layer,
    inputs: &[Option<&Tensor>],
    limit: usize,
    clamp: Clamp,
) -> std::result::Result<Tensor, String> {
    if layer.op.has_weights() {
        let x = inputs.first().copied().flatten().ok_or("has no input")?;
        return run_weight_op_then(&layer.op, x, limit, clamp);
    }
    debug_assert_eq!(clamp, Clamp::NONE, "a clamp is fused only into weight ops");
    eval(&layer.op, inputs, &batch_limits(inputs, limit))
}

/// The output limits of a node on a batch: `limit` elements per sample of its first input.
pub fn batch_limits(inputs: &[Option<&Tensor>], limit: usize) -> Limits {
    let n = inputs
        .first()
        .copied()
        .flatten()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(1)
        .max(1);
    Limits {
        max_elems: limit.saturating_mul(n),
    }
}

/// For each value, the index of the last node that reads it (`usize::MAX`: a graph output or
/// never read).
pub fn last_uses(model: &Model) -> Vec<usize> {
    let mut last = vec![0usize; model.values.len()];
    for (i, l) in model.layers.iter().enumerate() {
        for v in l.inputs.iter().flatten() {
            last[*v] = i;
        }
    }
    for &v in &model.outputs {
        last[v] = usize::MAX;
    }
    last
}

/// The value table of one run: constants borrowed from the model, activations owned.
#[derive(Clone)]
pub struct Values<'m> {
    slots: Vec<Option<std::borrow::Cow<'m, Tensor>>>,
}

impl<'m> Values<'m> {
    /// A table holding the model's constants and the graph inputs.
    pub fn new(model: &'m Model, inputs: Vec<Tensor>) -> Self {
        let mut slots: Vec<Option<std::borrow::Cow<'m, Tensor>>> = vec![None; model.values.len()];
        for (v, t) in &model.consts {
            slots[*v] = Some(std::borrow::Cow::Borrowed(t));
        }
        for (gi, t) in model.inputs.iter().zip(inputs) {
            slots[gi.value] = Some(std::borrow::Cow::Owned(t));
        }
        Values { slots }
    }

    /// Bytes held by owned values (borrowed constants are not counted).
    pub fn owned_bytes(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter_map(|c| match c {
                std::borrow::Cow::Owned(t) => Some(t.bytes()),
                std::borrow::Cow::Borrowed(_) => None,
            })
            .sum()
    }

    /// Copies of the owned values (activations and graph inputs, not constants), by value id.
    pub fn owned_values(&self) -> Vec<(ValueId, Tensor)> {
        let owned = |(v, c): (usize, &Option<std::borrow::Cow<'m, Tensor>>)| match c {
            Some(std::borrow::Cow::Owned(t)) => Some((v, t.clone())),
            _ => None,
        };
        self.slots.iter().enumerate().filter_map(owned).collect()
    }

    /// The owned values (activations and graph inputs, not constants), by value id, moved out
    /// of the table.
    pub fn into_owned_values(self) -> Vec<(ValueId, Tensor)> {
        let owned = |(v, c): (usize, Option<std::borrow::Cow<'m, Tensor>>)| match c {
            Some(std::borrow::Cow::Owned(t)) => Some((v, t)),
            _ => None,
        };
        self.slots
            .into_iter()
            .enumerate()
            .filter_map(owned)
            .collect()
    }

    /// A table holding the model's constants and copies of `owned` (from
    /// [`Values::owned_values`] of a table of the same model).
    pub fn with_owned(model: &'m Model, owned: &[(ValueId, Tensor)]) -> Self {
        Values::from_owned(model, owned.to_vec())
    }

    /// [`Values::with_owned`] that moves `owned` in (from [`Values::into_owned_values`]).
    pub fn from_owned(model: &'m Model, owned: Vec<(ValueId, Tensor)>) -> Self {
        let mut vals = Values::new(model, Vec::new());
        for (v, t) in owned {
            vals.set(v, t);
        }
        vals
    }

    /// The tensor of value `v`, if it is set.
    pub fn get(&self, v: ValueId) -> Option<&Tensor> {
        self.slots[v].as_deref()
    }

    /// Sets value `v`.
    pub fn set(&mut self, v: ValueId, t: Tensor) {
        self.slots[v] = Some(std::borrow::Cow::Owned(t));
    }

    /// Takes value `v` out of the table.
    pub fn take(&mut self, v: ValueId) -> Option<Tensor> {
        self.slots[v].take().map(|c| c.into_owned())
    }

    /// Takes the one input of a one-input node `layer` (node `i`) out of the table when `i`
    /// is its last reader and the table owns it (not a constant).
    pub fn take_last_sole(&mut self, layer: &Layer, last: &[usize], i: usize) -> Option<Tensor> {
        let [Some(v)] = layer.inputs[..] else {
            return None;
        };
        self.take_read_last(v, last, i)
    }

    /// Takes value `v` out of the table when node `i` is its last reader and the table owns
    /// it (not a constant).
    pub fn take_read_last(&mut self, v: ValueId, last: &[usize], i: usize) -> Option<Tensor> {
        match &self.slots[v] {
            Some(std::borrow::Cow::Owned(_)) if last[v] == i => self.take(v),
            _ => None,
        }
    }

    /// The inputs of node `layer`; an error names the first missing one.
    pub fn inputs_of(&self, layer: &Layer) -> std::result::Result<Vec<Option<&Tensor>>, String> {
        layer
            .inputs
            .iter()
            .map(|v| match v {
                None => Ok(None),
                Some(v) => self
                    .get(*v)
                    .map(Some)
                    .ok_or_else(|| format!("input {v} was not computed")),
            })
            .collect()
    }

    /// Frees the values whose last reader was node `i` (constants and outputs stay).
    pub fn free_after(&mut self, model: &Model, last: &[usize], i: usize) {
        self.free_after_into(model, last, i, drop);
    }

    /// [`Values::free_after`], handing each freed value to `keep` (which may recycle its
    /// buffer) instead of dropping it.
    pub fn free_after_into(
        &mut self,
        model: &Model,
        last: &[usize],
        i: usize,
        mut keep: impl FnMut(Tensor),
    ) {
        for v in model.layers[i].inputs.iter().flatten() {
            if last[*v] == i
                && let Some(std::borrow::Cow::Owned(t)) =
                    self.slots[*v].take_if(|s| matches!(s, std::borrow::Cow::Owned(_)))
            {
                keep(t);
            }
        }
    }
}

/// Runs the model on a batch (one tensor per graph input, batch-major, the first normalized);
/// `tap(i, out)` sees every node's output. Returns the graph outputs.
pub fn forward(
    model: &Model,
    inputs: Vec<Tensor>,
    limit: usize,
    mut tap: impl FnMut(usize, &Tensor),
) -> Result<Vec<Tensor>> {
    let mut vals = Values::new(model, inputs);
    run_range(model, &mut vals, 0..model.layers.len(), limit, &mut tap)?;
    outputs(model, vals)
}

/// Runs nodes `nodes` (in order) on `vals`, which holds every value they read that an earlier
/// node wrote (a table from [`Values::new`] for nodes from 0, or one left by a run that
/// stopped at `nodes.start`); `tap(i, out)` sees each node's output.
pub fn run_range(
    model: &Model,
    vals: &mut Values,
    nodes: std::ops::Range<usize>,
    limit: usize,
    tap: &mut dyn FnMut(usize, &Tensor),
) -> Result<()> {
    run_nodes(model, vals, nodes, limit, Some(tap))
}

/// Runs the model on a batch as [`forward`] does but without observing any node's output, so
/// a linear or conv node whose output only a Relu/Clip right after it reads is run with that
/// clamp fused (a conv clamps each sample's output while it is in cache), and the Relu/Clip
/// node is skipped. The outputs are the same, bit for bit.
pub fn forward_outputs(model: &Model, inputs: Vec<Tensor>, limit: usize) -> Result<Vec<Tensor>> {
    let mut vals = Values::new(model, inputs);
    run_nodes(model, &mut vals, 0..model.layers.len(), limit, None)?;
    outputs(model, vals)
}

/// What sees each node's output: its index and the tensor.
type Tap<'a> = &'a mut dyn FnMut(usize, &Tensor);

/// [`run_range`]; without a tap, with the fusions of [`forward_outputs`].
fn run_nodes(
    model: &Model,
    vals: &mut Values,
    nodes: std::ops::Range<usize>,
    limit: usize,
    mut tap: Option<Tap>,
) -> Result<()> {
    let last = last_uses(model);
    let observed = tap.is_some();
    let mut i = nodes.start;
    while i < nodes.end {
        let layer = &model.layers[i];
        let mut see = |i: usize, y: &Tensor| tap.as_mut().map_or((), |t| t(i, y));
        // A Relu/Clip into its input, an Add/Sub/Mul into the operand it reads last.
        if let Some(y) = super::in_place::run(layer, vals, &last, i, limit) {
            see(i, &y);
            vals.set(layer.output, y);
            vals.free_after(model, &last, i);
            i += 1;
            continue;
        }
        let fused = (!observed)
            .then(|| fusable_clamp(model, &last, i, nodes.end))
            .flatten();
        let ins = vals
            .inputs_of(layer)
            .map_err(|m| Error::node(&model.source, &layer.name, layer.op.kind(), m))?;
        let clamp = fused.map_or(Clamp::NONE, |(c, _)| c);
        let y = run_node_then(layer, &ins, limit, clamp)
            .map_err(|m| Error::node(&model.source, &layer.name, layer.op.kind(), m))?;
        see(i, &y);
        let next = fused.map_or(i, |(_, j)| j);
        vals.set(model.layers[next].output, y);
        vals.free_after(model, &last, i);
        i = next + 1;
    }
    Ok(())
}

/// The clamp of node `i + 1` when node `i` is a linear or conv layer whose output only that
/// Relu/Clip node reads (not a graph output) and both lie before `end`.
fn fusable_clamp(model: &Model, last: &[usize], i: usize, end: usize) -> Option<(Clamp, usize)> {
    let (layer, next) = (&model.layers[i], model.layers.get(i + 1)?);
    let weighted = matches!(layer.op, Op::Conv2d { .. } | Op::Linear { .. });
    let sole = next.inputs[..] == [Some(layer.output)] && last[layer.output] == i + 1;
    if !weighted || !sole || i + 1 >= end {
        return None;
    }
    Clamp::of(&next.op).map(|c| (c, i + 1))
}

/// The graph outputs of a finished run's table.
pub fn outputs(model: &Model, mut vals: Values) -> Result<Vec<Tensor>> {
    model
        .outputs
        .iter()
        .map(|&v| {
            vals.take(v)
                .or_else(|| vals.get(v).cloned())
                .ok_or_else(|| Error::format(&model.source, "a graph output was not computed"))
        })
        .collect()
}

/// The first graph input of `n` samples of `x` (already normalized) as a batch tensor.
pub fn input_tensor(model: &Model, x: &[f32], n: usize) -> Tensor {
    let mut shape = vec![n];
    shape.extend(&model.input_shape);
    Tensor::f32(shape, x.to_vec())
}

/// Runs a one-input model on `n` normalized samples; returns its first output, flattened.
pub fn forward_flat(model: &Model, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let out = forward(
        model,
        vec![input_tensor(model, x, n)],
        usize::MAX,
        |_, _| {},
    )?;
    Ok(out[0].to_f32_vec())
}

/// A batch of one sample of zeros (ids 0, mask 1) for every graph input, when every
/// dimension is known.
pub(crate) fn zero_sample(model: &Model) -> Option<Vec<Tensor>> {
    model
        .inputs
        .iter()
        .map(|gi| {
            let dims: Option<Vec<usize>> = gi.shape.iter().copied().collect();
            let mut shape = vec![1];
            shape.extend(dims?);
            let len = shape.iter().product();
            Some(match gi.dtype {
                DType::F32 => Tensor::f32(shape, vec![0.0; len]),
                _ => Tensor::i64(shape, vec![1; len]),
            })
        })
        .collect()
}

/// Fills every node's one-sample input and output shapes by running one sample of zeros
/// (nothing to do when an input dimension is left open by the file).
pub fn infer_shapes(model: &mut Model) -> Result<()> {
    let Some(inputs) = zero_sample(model) else {
        return Ok(());
    };
    let mut shapes = vec![Vec::new(); model.values.len()];
    for (gi, t) in model.inputs.iter().zip(&inputs) {
        shapes[gi.value] = t.shape.clone();
    }
    for (v, t) in &model.consts {
        shapes[*v] = t.shape.clone();
    }
    let mut outs = Vec::with_capacity(model.layers.len());
    forward(model, inputs, DEFAULT_MAX_SAMPLE_ELEMS, |_, t| {
        outs.push(t.shape.clone())
    })?;
    let strip = |s: &[usize]| {
        if s.first() == Some(&1) {
            s[1..].to_vec()
        } else {
            s.to_vec()
        }
    };
    for (i, shape) in outs.into_iter().enumerate() {
        shapes[model.layers[i].output] = shape;
    }
    for l in &mut model.layers {
        l.in_shape = l.data_input().map_or(Vec::new(), |v| strip(&shapes[v]));
        l.out_shape = strip(&shapes[l.output]);
    }
    Ok(())
}

/// The index of the largest value, the lowest index on ties (as numpy and PyTorch).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for i in 1..v.len() {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, Array4};

    #[test]
    fn argmax_takes_the_lowest_index_on_ties() {
        assert_eq!(argmax(&[1, 3, 3, 2]), 1);
        assert_eq!(argmax(&[0.0f32, 0.0]), 0);
    }

    #[test]
    fn outputs_only_fuse_each_conv_relu_pair_and_give_the_same_bits() {
        let mut model = crate::bundled::model("mnist-cnn").unwrap();
        let pairs = |m: &Model| -> Vec<usize> {
            let (last, n) = (last_uses(m), m.layers.len());
            (0..n)
                .filter(|&i| fusable_clamp(m, &last, i, n).is_some())
                .collect()
        };
        let convs: Vec<usize> = (0..model.layers.len())
            .filter(|&i| matches!(model.layers[i].op, Op::Conv2d { .. }))
            .collect();
        let fused = pairs(&model);
        assert!(
            convs.iter().all(|c| fused.contains(c)),
            "{fused:?} ⊇ {convs:?}"
        );
        let x: Vec<f32> = (0..3 * 784)
            .map(|i| ((i * 37 % 101) as f32 - 40.0) / 25.0)
            .collect();
        let run = |m: &Model| {
            let tapped = forward(m, vec![input_tensor(m, &x, 3)], usize::MAX, |_, _| {});
            let fast = forward_outputs(m, vec![input_tensor(m, &x, 3)], usize::MAX);
            let bits = |t: &[Tensor]| -> Vec<u32> {
                t.iter()
                    .flat_map(|t| t.to_f32_vec())
                    .map(f32::to_bits)
                    .collect()
            };
            assert_eq!(bits(&tapped.unwrap()), bits(&fast.unwrap()));
        };
        run(&model);
        // A conv output that is also a graph output is kept as it is: no fusion there.
        let first = model.layers[convs[0]].output;
        model.outputs.push(first);
        assert!(!pairs(&model).contains(&convs[0]));
        run(&model);
    }

    #[test]
    fn linear_matches_a_hand_computation() {
        let op = Op::Linear {
            weight: Array2::from_shape_vec((2, 3), vec![1., 2., 3., -1., 0., 1.]).unwrap(),
            bias: Array1::from(vec![0.5, -0.5]),
        };
        let x = Tensor::f32(vec![2, 3], vec![1., 1., 1., 0., 1., 2.]);
        let y = run_weight_op(&op, &x, usize::MAX).unwrap();
        assert_eq!(y.shape, vec![2, 2]);
        assert_eq!(y.as_f32().unwrap(), &[6.5, -0.5, 8.5, 1.5]);
    }

    /// A direct loop over a grouped, dilated, strided conv with asymmetric padding, in f64.
    #[allow(clippy::too_many_arguments)]
    fn direct_conv(
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f32],
        (o, kh, kw): (usize, usize, usize),
        bias: &[f32],
        (sh, sw): (usize, usize),
        pad: [usize; 4],
        (dh, dw): (usize, usize),
        groups: usize,
    ) -> (Vec<f64>, usize, usize) {
        let oh = (h + pad[0] + pad[2] - (kh - 1) * dh - 1) / sh + 1;
        let ow = (w + pad[1] + pad[3] - (kw - 1) * dw - 1) / sw + 1;
        let (cg, og) = (c / groups, o / groups);
        let mut y = vec![0.0f64; n * o * oh * ow];
        for s in 0..n {
            for oc in 0..o {
                let gi = oc / og;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[oc] as f64;
                        for icg in 0..cg {
                            let ic = gi * cg + icg;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * sh + ky * dh) as isize - pad[0] as isize;
                                    let ix = (ox * sw + kx * dw) as isize - pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((s * c + ic) * h + iy as usize) * w + ix as usize];
                                    let wv = wt[((oc * cg + icg) * kh + ky) * kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((s * o + oc) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        (y, oh, ow)
    }

    #[test]
    fn grouped_dilated_conv_matches_a_direct_loop() {
        for &(groups, o) in &[(1usize, 3usize), (2, 4), (4, 4)] {
            let (n, c, h, w, kh, kw) = (2, 4, 7, 6, 3, 2);
            let (stride, pad, dil) = ((2, 1), [1, 2, 0, 1], (2, 1));
            let wt: Vec<f32> = (0..o * (c / groups) * kh * kw)
                .map(|i| ((i * 7) % 11) as f32 - 5.0)
                .collect();
            let x: Vec<f32> = (0..n * c * h * w)
                .map(|i| ((i * 5) % 13) as f32 - 6.0)
                .collect();
            let bias: Vec<f32> = (0..o).map(|i| i as f32 * 0.5 - 1.0).collect();
            let op = Op::Conv2d {
                weight: Array4::from_shape_vec((o, c / groups, kh, kw), wt.clone()).unwrap(),
                bias: Array1::from(bias.clone()),
                stride,
                padding: pad,
                dilation: dil,
                groups,
            };
            let y =
                run_weight_op(&op, &Tensor::f32(vec![n, c, h, w], x.clone()), usize::MAX).unwrap();
            let (want, oh, ow) = direct_conv(
                &x,
                (n, c, h, w),
                &wt,
                (o, kh, kw),
                &bias,
                stride,
                pad,
                dil,
                groups,
            );
            assert_eq!(y.shape, vec![n, o, oh, ow]);
            for (a, b) in y.as_f32().unwrap().iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-3, "groups {groups}: {a} vs {b}");
            }
        }
    }
}
