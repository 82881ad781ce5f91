//! What a [`super::Session`] keeps of its last integer run so that the next evaluation resumes
//! from the first node a change touches: an activation change on one layer then re-runs the
//! integer engine from that layer on, not from the input.
//!
//! A checkpoint is taken at the node where the last change began to matter (a user trying
//! settings on one layer changes that layer again). It holds, per batch, the integer values
//! live at that node and what the evaluation had summed over the nodes before it, so a resumed
//! evaluation reports exactly what a full one does.

use crate::engine::int::Kernels;
use crate::engine::tensor::Tensor;
use crate::eval::sqnr::SqnrAcc;
use crate::model::{Model, ValueId};
use crate::params::ModelParams;

/// Bytes of integer values a checkpoint keeps at most; a cut whose live values need more is not
/// kept (the next evaluation runs from the input).
pub const CHECKPOINT_BYTES: usize = 256 << 20;

/// One batch of an integer run just before the checkpoint's cut.
#[derive(Debug, Clone)]
pub struct BatchPrefix {
    /// The values live at the cut (owned entries of the run's value table).
    pub values: Vec<(ValueId, Tensor)>,
    /// Multiply-adds of the nodes before the cut (integer, float), summed in node order.
    pub macs: (f64, f64),
    /// Per node: whether it ran as a float island (only nodes before the cut are set).
    pub islands: Vec<bool>,
    /// Activation SQNR sums on this batch of each weight layer (by weight-layer position) whose
    /// quantization point a node before the cut writes.
    pub act: Vec<(usize, SqnrAcc)>,
}

impl BatchPrefix {
    fn bytes(&self) -> usize {
        self.values.iter().map(|(_, t)| t.bytes()).sum()
    }
}

/// The last evaluation's parameters and, when `cut > 0`, its integer run before node `cut`.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The parameters of the evaluation it was taken in (the float cache's isolated sums were
    /// computed for them too).
    pub params: ModelParams,
    /// Elements per sample the run allowed.
    pub limit: usize,
    /// Nodes `0..cut` are kept as run (0: nothing kept).
    pub cut: usize,
    /// One per batch of the evaluation set, in order (empty when `cut == 0`).
    pub batches: Vec<BatchPrefix>,
    /// The integer engine's kernels for `params`, which the next evaluation's build shares
    /// where its layers are unchanged.
    pub kernels: Kernels,
}

impl Checkpoint {
    /// A checkpoint of `batches` at `cut`, or of the parameters alone when the batches are
    /// missing or hold more than [`CHECKPOINT_BYTES`].
    pub fn new(
        (params, kernels): (ModelParams, Kernels),
        limit: usize,
        cut: usize,
        batches: Vec<Option<BatchPrefix>>,
    ) -> Self {
        let batches: Option<Vec<BatchPrefix>> = batches.into_iter().collect();
        let batches = batches
            .filter(|b| {
                cut > 0 && b.iter().map(BatchPrefix::bytes).sum::<usize>() <= CHECKPOINT_BYTES
            })
            .unwrap_or_default();
        let cut = if batches.is_empty() { 0 } else { cut };
        Checkpoint {
            params,
            limit,
            cut,
            batches,
            kernels,
        }
    }
}

/// The first node whose integer computation can differ between parameters `a` and `b`
/// (`model.layers.len()` when none does): the earliest weight layer whose parameters differ, and
/// the earliest writer of a quantization point whose qparams differ (0 for a graph input).
pub fn first_changed_node(model: &Model, a: &ModelParams, b: &ModelParams) -> usize {
    let n = model.layers.len();
    if a.smoothquant != b.smoothquant || a.layers.len() != b.layers.len() {
        return 0;
    }
    let mut cut = n;
    for (x, y) in a.layers.iter().zip(&b.layers) {
        if x.index != y.index {
            return 0;
        }
        if x.weight != y.weight || x.act != y.act {
            cut = cut.min(x.index);
        }
    }
    let (qa, qb) = (
        crate::engine::int::point_qparams(model, a),
        crate::engine::int::point_qparams(model, b),
    );
    for v in qa.keys().chain(qb.keys()) {
        if qa.get(v) != qb.get(v) {
            cut = cut.min(first_writer(model, *v));
        }
    }
    cut
}

/// The earliest node that can write value `v`: the node it is the output of, or a weight layer
/// whose fused quantization point it is; 0 for a graph input or a value nothing writes.
fn first_writer(model: &Model, v: ValueId) -> usize {
    let output = model.producer(v);
    let fused = model
        .weight_layers()
        .into_iter()
        .filter(|&i| model.point_value(i) == v)
        .min();
    match (output, fused) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 0,
    }
}
