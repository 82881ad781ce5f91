//! The float model's side of an evaluation, batch by batch: its graph outputs and the float
//! values the per-layer comparisons need. It depends on no quantization setting, so a
//! [`super::Session`] measures it once and keeps it while it fits a memory budget.

use super::calibrate::{check_finite, float_overflow, note_overflow};
use crate::engine::float;
use crate::engine::tensor::Tensor;
use crate::error::Result;
use crate::eval::sqnr::SqnrAcc;
use crate::model::{Dataset, Model, ValueId};
use crate::quant::QParams;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Bytes of float results a session keeps at most; a model and evaluation set that need more
/// run the float model again on every evaluation.
pub const FLOAT_CACHE_BYTES: usize = 768 << 20;

/// The float model on one batch.
#[derive(Debug, Clone)]
pub struct FloatBatch {
    /// Graph outputs.
    pub outputs: Vec<Tensor>,
    /// Each weight layer's input and quantization-point value, by value id.
    pub values: HashMap<ValueId, Tensor>,
}

impl FloatBatch {
    fn bytes(&self) -> usize {
        let elems: usize = self.outputs.iter().map(Tensor::len).sum::<usize>()
            + self.values.values().map(Tensor::len).sum::<usize>();
        elems * 4
    }
}

/// The values the per-layer comparisons read: each weight layer's input and quantization point.
pub fn wanted_values(model: &Model) -> Vec<ValueId> {
    let mut wanted = Vec::new();
    for &i in &model.weight_layers() {
        wanted.push(model.point_value(i));
        wanted.extend(model.layers[i].data_input());
    }
    wanted
}

/// Runs the float model on one batch (`inputs`, the samples from `start`), keeping the
/// `wanted` values; errors name the node where f32 overflows.
pub fn float_batch(
    model: &Model,
    data: &Dataset,
    start: usize,
    inputs: Vec<Tensor>,
    wanted: &[ValueId],
    limit: usize,
) -> Result<FloatBatch> {
    check_finite(model, data, start, &inputs)?;
    let mut values: HashMap<ValueId, Tensor> = model
        .inputs
        .iter()
        .zip(&inputs)
        .filter(|(gi, _)| wanted.contains(&gi.value))
        .map(|(gi, t)| (gi.value, t.clone()))
        .collect();
    let mut overflow = None;
    let outputs = float::forward(model, inputs, limit, |i, t| {
        note_overflow(&mut overflow, i, t);
        let v = model.layers[i].output;
        if wanted.contains(&v) {
            values.insert(v, t.clone());
        }
    })?;
    if let Some(i) = overflow {
        return Err(float_overflow(model, data, start, &model.layers[i].name));
    }
    Ok(FloatBatch { outputs, values })
}

/// The float side of every batch of one evaluation set, in batch order.
#[derive(Debug, Clone, Default)]
pub struct FloatCache {
    /// Samples covered.
    pub samples: usize,
    /// One entry per batch of [`super::batches`].
    pub batches: Vec<FloatBatch>,
    /// Per weight layer: the qparams its input was quantized with and its isolated SQNR sums
    /// in the last evaluation on this float side; with that evaluation's parameters (in
    /// `checkpoint`), a layer whose parameters and input qparams are unchanged is not run alone
    /// again.
    pub isolated: Vec<(Option<QParams>, SqnrAcc)>,
    /// The last evaluation's parameters and its integer run before the node its change began
    /// at, to resume the next evaluation from there.
    pub checkpoint: Option<super::resume::Checkpoint>,
}

/// Collects batches while their total stays within [`FLOAT_CACHE_BYTES`]; past it, keeps
/// nothing (so the memory a session holds stays bounded).
#[derive(Default)]
pub(super) struct Keeper {
    bytes: AtomicUsize,
    over: AtomicBool,
}

impl Keeper {
    /// Whether `b` may be kept (false once the budget is exceeded).
    pub(super) fn admit(&self, b: &FloatBatch) -> bool {
        let total = self.bytes.fetch_add(b.bytes(), Ordering::Relaxed) + b.bytes();
        if total > FLOAT_CACHE_BYTES {
            self.over.store(true, Ordering::Relaxed);
        }
        !self.over.load(Ordering::Relaxed)
    }

    /// The cache of `samples` samples from the kept batches, unless the budget was exceeded or
    /// a batch is missing.
    pub(super) fn finish(
        self,
        samples: usize,
        kept: Vec<Option<FloatBatch>>,
    ) -> Option<FloatCache> {
        if self.over.into_inner() {
            return None;
        }
        let batches = kept.into_iter().collect::<Option<Vec<_>>>()?;
        Some(FloatCache {
            samples,
            batches,
            isolated: Vec::new(),
            checkpoint: None,
        })
    }
}
