//! Steps 1–3 of the flow: quantize weights, calibrate activations (streaming histograms per
//! quantization point), choose ranges.

use super::Cancel;
use super::batch::{batches, check_data, make_batch};
use crate::config::QuantConfig;
use crate::engine::float;
use crate::engine::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::points::Points;
use crate::model::{Dataset, Model, ValueId};
use crate::params::{ActQuant, LayerParams, ModelParams, PointParams, WeightQuant};
use crate::quant::QParams;
use crate::quant::calib::{Histogram, StrategyParams, choose_range};
use crate::quant::weights::quantize_weights_rows as quantize_matrix;
use rayon::prelude::*;

/// Streaming histograms of every quantization point over the calibration set.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// The points the histograms belong to.
    pub points: Points,
    /// One histogram per entry point (`points.entries`).
    pub entries: Vec<Histogram>,
    /// Each weight layer's (fused) output, in network order (float-kept layers too).
    pub outputs: Vec<Histogram>,
    /// Calibration samples seen.
    pub samples: usize,
}

impl Calibration {
    /// The histogram of the entry point named `name` (`input`, or a tensor name).
    pub fn entry(&self, name: &str) -> Option<&Histogram> {
        self.points
            .entries
            .iter()
            .position(|e| e.name == name)
            .map(|k| &self.entries[k])
    }
}

/// Step 1: each weight layer's quantized weights (`None` for layers kept in float).
pub fn quantize_weights(model: &Model, config: &QuantConfig) -> Vec<Option<WeightQuant>> {
    model
        .weight_layers()
        .into_iter()
        .map(|i| {
            let layer = &model.layers[i];
            if config.is_float(&layer.name) {
                return None;
            }
            let settings = config.weight_settings(&layer.name);
            let (w, rows, cols) = layer.op.weight_rows().expect("weight layer");
            Some(WeightQuant::new(
                settings,
                quantize_matrix(w, rows, cols, &settings, config.channel_bits(&layer.name)),
            ))
        })
        .collect()
}

/// The model with each quantized layer's weights replaced by their dequantized values (and its
/// bias by the replacement bias, when a method made one).
pub fn with_quantized_weights(model: &Model, weights: &[Option<WeightQuant>]) -> Model {
    let mut m = model.clone();
    for (&i, wq) in model.weight_layers().iter().zip(weights) {
        let Some(wq) = wq else { continue };
        let op = &mut m.layers[i].op;
        op.weights_mut()
            .expect("weight layer")
            .copy_from_slice(&wq.q.dequantize());
        if let (Some(nb), Some((_, b))) = (&wq.bias, op.weight_bias_mut()) {
            b.copy_from_slice(nb);
        }
    }
    m
}

/// Step 2: runs the calibration set through the model with quantized weights and float
/// activations, collecting one streaming histogram per quantization point.
pub fn calibrate(
    model: &Model,
    config: &QuantConfig,
    weights: &[Option<WeightQuant>],
    data: &Dataset,
    cancel: &Cancel,
) -> Result<Calibration> {
    Ok(calibrate_from(model, config, weights, data, None, cancel)?.0)
}

/// Bytes of float values a [`CalibCheckpoint`] keeps at most.
pub const CALIB_CHECKPOINT_BYTES: usize = 256 << 20;

/// A calibration's float run over the calibration set just before node `cut` (when > 0): a
/// later calibration whose weights differ only from there on runs only from there, and keeps
/// the histograms of the points written before.
#[derive(Debug, Clone)]
pub struct CalibCheckpoint {
    /// Nodes `0..cut` are kept as run (0: nothing kept).
    pub cut: usize,
    /// Per calibration batch, in order, the values live at the cut.
    pub batches: Vec<Vec<(ValueId, Tensor)>>,
}

/// An earlier calibration, for [`calibrate_from`]: its histograms, its checkpoint and the
/// quantized weights it ran with.
pub type Earlier<'a> = (
    &'a Calibration,
    &'a CalibCheckpoint,
    &'a [Option<WeightQuant>],
);

/// [`calibrate`], resumed from `prev` (an earlier calibration of the same model and points, its
/// checkpoint and the weights it ran with) when the weights of every layer before the
/// checkpoint's cut are the same;
/// returns the histograms (the same as a full calibration's) and the checkpoint to keep, cut
/// at the first layer whose weights differ from `prev`'s.
pub fn calibrate_from(
    model: &Model,
    config: &QuantConfig,
    weights: &[Option<WeightQuant>],
    data: &Dataset,
    prev: Option<Earlier>,
    cancel: &Cancel,
) -> Result<(Calibration, CalibCheckpoint)> {
    if data.n == 0 {
        return Err(Error::data(&data.label, "the calibration set is empty"));
    }
    check_data(model, data)?;
    super::batch::check_tensor_sizes(model, config.max_sample_elems())?;
    let qmodel = with_quantized_weights(model, weights);
    let points = Points::find(model, |n| config.is_float(n));
    let prev = prev
        .filter(|(c, _, w)| c.points == points && c.samples == data.n && w.len() == weights.len());
    let (from, take) = calib_cuts(model, weights, prev.map(|(_, k, w)| (k, w)));
    let entry_values: Vec<ValueId> = points.entries.iter().map(|e| e.value).collect();
    let layer_values: Vec<ValueId> = model
        .weight_layers()
        .iter()
        .map(|&i| model.point_value(i))
        .collect();
    let limit = config.max_sample_elems();
    let empty = || {
        (
            vec![Histogram::new(); entry_values.len()],
            vec![Histogram::new(); layer_values.len()],
        )
    };
    let kept = std::sync::Mutex::new(vec![None; batches(data.n).len()]);
    let (mut entries, mut outputs) = batches(data.n)
        .into_par_iter()
        .enumerate()
        .map(|(b, (s, e))| -> Result<(Vec<Histogram>, Vec<Histogram>)> {
            cancel.check()?;
            let run = BatchRun {
                model,
                qmodel: &qmodel,
                data,
                values: (&entry_values, &layer_values),
                limit,
            };
            let from = from.map(|k| (k.cut, &k.batches[b][..]));
            let (hists, keep) = run.batch((s, e), from, take, empty())?;
            if let Some(keep) = keep {
                kept.lock().expect("no panics while held")[b] = Some(keep);
            }
            Ok(hists)
        })
        .try_reduce(empty, |(mut a, mut ao), (b, bo)| {
            a.iter_mut().zip(&b).for_each(|(x, y)| x.merge(y));
            ao.iter_mut().zip(&bo).for_each(|(x, y)| x.merge(y));
            Ok((a, ao))
        })?;
    if let (Some(k), Some((pc, _, _))) = (from, prev) {
        let values = (&entry_values[..], &layer_values[..]);
        keep_prefix_histograms(model, k.cut, (&mut entries, &mut outputs), values, pc);
    }
    let kept = kept.into_inner().expect("no panics while held");
    let checkpoint = calib_checkpoint(take, kept);
    let calibration = Calibration {
        points,
        entries,
        outputs,
        samples: data.n,
    };
    Ok((calibration, checkpoint))
}

/// One calibration batch's run: the model, the same with quantized weights, the data, the
/// entry and layer point values observed, the element limit.
struct BatchRun<'a> {
    model: &'a Model,
    qmodel: &'a Model,
    data: &'a Dataset,
    values: (&'a [ValueId], &'a [ValueId]),
    limit: usize,
}

/// A batch's (entry, layer-point) histograms, and its values live at the kept cut.
type BatchHists = (
    (Vec<Histogram>, Vec<Histogram>),
    Option<Vec<(ValueId, Tensor)>>,
);

impl BatchRun<'_> {
    /// Runs samples `s..e` into the empty histograms `hists`: from the inputs, or from the node
    /// and values `from` of a checkpoint; keeps the values live at node `take` (when > 0).
    fn batch(
        &self,
        (s, e): (usize, usize),
        from: Option<(usize, &[(ValueId, Tensor)])>,
        take: usize,
        (mut hin, mut hout): (Vec<Histogram>, Vec<Histogram>),
    ) -> Result<BatchHists> {
        let (model, (entry_values, layer_values)) = (self.model, self.values);
        let (start, mut vals) = match from {
            Some((cut, values)) => (cut, float::Values::with_owned(self.qmodel, values)),
            None => {
                let inputs = make_batch(model, self.data, s, e)?;
                check_finite(model, self.data, s, &inputs)?;
                for (gi, t) in model.inputs.iter().zip(&inputs) {
                    observe(gi.value, t, entry_values, &mut hin);
                }
                (0, float::Values::new(self.qmodel, inputs))
            }
        };
        let mut overflow = None;
        let mut tap = |li: usize, out: &Tensor| {
            note_overflow(&mut overflow, li, out);
            let v = model.layers[li].output;
            observe(v, out, entry_values, &mut hin);
            observe(v, out, layer_values, &mut hout);
        };
        let (take, n) = (take.max(start), model.layers.len());
        float::run_range(self.qmodel, &mut vals, start..take, self.limit, &mut tap)?;
        let keep = (take > 0).then(|| vals.owned_values());
        float::run_range(self.qmodel, &mut vals, take..n, self.limit, &mut tap)?;
        if let Some(li) = overflow {
            return Err(float_overflow(model, self.data, s, &model.layers[li].name));
        }
        Ok(((hin, hout), keep))
    }
}

/// The histograms of the points written before node `cut` (and of graph inputs) taken from
/// `prev`: a run resumed at `cut` saw the same values there, and did not observe them.
fn keep_prefix_histograms(
    model: &Model,
    cut: usize,
    (entries, outputs): (&mut [Histogram], &mut [Histogram]),
    (entry_values, layer_values): (&[ValueId], &[ValueId]),
    prev: &Calibration,
) {
    let before = |v: ValueId| model.producer(v).is_none_or(|w| w < cut);
    let pairs = [
        (entries, entry_values, &prev.entries),
        (outputs, layer_values, &prev.outputs),
    ];
    for (hists, values, old) in pairs {
        for ((h, &v), o) in hists.iter_mut().zip(values).zip(old) {
            if before(v) {
                h.clone_from(o);
            }
        }
    }
}

/// The checkpoint a calibration resumes from (`prev`'s, when every layer before its cut has
/// the same weights as `prev` ran with) and the cut it keeps: the first weight layer whose
/// weights differ (`prev`'s own cut when none does; 0 without `prev`).
fn calib_cuts<'a>(
    model: &Model,
    weights: &[Option<WeightQuant>],
    prev: Option<(&'a CalibCheckpoint, &[Option<WeightQuant>])>,
) -> (Option<&'a CalibCheckpoint>, usize) {
    let Some((prev, prev_weights)) = prev else {
        return (None, 0);
    };
    let wl = model.weight_layers();
    let changed = wl
        .iter()
        .zip(weights.iter().zip(prev_weights))
        .find(|(_, (a, b))| a != b)
        .map(|(&i, _)| i);
    let from = (prev.cut > 0 && changed.is_none_or(|c| prev.cut <= c)).then_some(prev);
    (from, changed.unwrap_or(prev.cut))
}

/// The checkpoint of a calibration cut at `cut`, keeping the batches' values unless one is
/// missing or they hold more than [`CALIB_CHECKPOINT_BYTES`].
fn calib_checkpoint(cut: usize, kept: Vec<Option<Vec<(ValueId, Tensor)>>>) -> CalibCheckpoint {
    let batches: Option<Vec<_>> = kept.into_iter().collect();
    let bytes = |b: &Vec<Vec<(ValueId, Tensor)>>| -> usize {
        b.iter().flatten().map(|(_, t)| t.bytes()).sum()
    };
    let batches = batches
        .filter(|b| cut > 0 && bytes(b) <= CALIB_CHECKPOINT_BYTES)
        .unwrap_or_default();
    CalibCheckpoint {
        cut: if batches.is_empty() { 0 } else { cut },
        batches,
    }
}

/// The error for a float model whose activations overflow f32 on a batch starting at `start`.
pub(super) fn float_overflow(model: &Model, data: &Dataset, start: usize, at: &str) -> Error {
    Error::data(
        &data.label,
        format!(
            "model '{}' overflows f32 (inf or NaN) at '{at}' in the batch from sample {start}: weights or inputs are too large; no accuracy can be reported",
            model.name
        ),
    )
}

/// Records the first node whose real-valued output holds an infinity or NaN.
pub(super) fn note_overflow(first: &mut Option<usize>, node: usize, out: &Tensor) {
    if first.is_none() && out.as_f32().is_some_and(|v| !all_finite(v)) {
        *first = Some(node);
    }
}

/// Checks a batch's real-valued inputs (after normalization) for infinities and NaN.
pub(super) fn check_finite(
    model: &Model,
    data: &Dataset,
    start: usize,
    inputs: &[Tensor],
) -> Result<()> {
    let bad = inputs
        .iter()
        .any(|t| t.as_f32().is_some_and(|v| !all_finite(v)));
    if bad {
        return Err(float_overflow(model, data, start, "input (normalized)"));
    }
    Ok(())
}

/// Whether every value is finite: branch-free over blocks of 256 (a loop that vectorizes, since
/// every node's output of every batch passes through here), stopping at the first bad block.
fn all_finite(v: &[f32]) -> bool {
    // An exponent of all ones is an infinity or a NaN.
    const EXP: u32 = 0x7f80_0000;
    v.chunks(256).all(|c| {
        c.iter()
            .fold(0u32, |bad, x| bad | u32::from(x.to_bits() & EXP == EXP))
            == 0
    })
}

/// Adds `t` to the histogram of each listed value it is.
fn observe(
    v: ValueId,
    t: &crate::engine::tensor::Tensor,
    values: &[ValueId],
    hists: &mut [Histogram],
) {
    for (k, _) in values.iter().enumerate().filter(|(_, w)| **w == v) {
        if let Some(x) = t.as_f32() {
            hists[k].add(x);
        }
    }
}

/// The activation quantization of point `name` from its histogram.
pub(super) fn act_quant(config: &QuantConfig, name: &str, hist: &Histogram) -> ActQuant {
    let settings = config.act_settings(name);
    let range = match settings.range {
        Some(r) => r,
        None => choose_range(
            hist,
            settings.strategy,
            &StrategyParams {
                bits: settings.bits,
                scheme: settings.scheme,
                percentile: settings.percentile,
            },
        ),
    };
    ActQuant {
        settings,
        range,
        qparams: QParams::from_range(range, settings.bits, settings.scheme),
    }
}

/// Step 3: chooses every activation range from the histograms and assembles the parameters.
/// A float-kept layer whose output is a point (an integer layer follows) keeps it as its
/// `act`, named after the layer.
pub fn choose_ranges(
    model: &Model,
    config: &QuantConfig,
    weights: &[Option<WeightQuant>],
    calib: &Calibration,
) -> ModelParams {
    let wl = model.weight_layers();
    let mut points: Vec<PointParams> = calib
        .points
        .entries
        .iter()
        .zip(&calib.entries)
        .map(|(e, h)| PointParams {
            name: e.name.clone(),
            value: e.value,
            act: act_quant(config, &e.name, h),
        })
        .collect();
    let quantized: Vec<ValueId> = calib.points.layers.iter().map(|l| l.1).collect();
    let layers = wl
        .iter()
        .zip(weights)
        .zip(&calib.outputs)
        .map(|((&i, wq), hist)| {
            let name = &model.layers[i].name;
            let pv = model.point_value(i);
            let act = if quantized.contains(&pv) {
                Some(act_quant(config, name, hist))
            } else if let Some(k) = points.iter().position(|p| p.value == pv) {
                points.remove(k);
                Some(act_quant(config, name, hist))
            } else {
                None
            };
            LayerParams {
                name: name.clone(),
                index: i,
                weight: wq.clone(),
                act,
            }
        })
        .collect();
    ModelParams {
        points,
        layers,
        smoothquant: Vec::new(),
        methods: None,
    }
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    #[test]
    fn all_finite_matches_a_direct_check_wherever_the_bad_value_sits() {
        let normal = [0.0, -0.0, 1.0, -3.4e38, f32::MAX, f32::MIN_POSITIVE, 1e-45];
        let base: Vec<f32> = (0..700).map(|i| normal[i % normal.len()]).collect();
        assert!(all_finite(&base) && all_finite(&[]));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
            for at in [0, 1, 255, 256, 257, 699] {
                let mut v = base.clone();
                v[at] = bad;
                assert_eq!(
                    all_finite(&v),
                    v.iter().all(|x| x.is_finite()),
                    "{bad} at {at}"
                );
                assert!(!all_finite(&v));
            }
        }
    }
}
