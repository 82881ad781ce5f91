//! The calibration set's activations as integers, one safetensors file per quantization point,
//! so a person can check them against another engine.
//!
//! The integers are the integer engine's own ([`IntModel::forward`]'s taps): the network input
//! quantized with its qparams, and each weight layer's (fused) output as the engine computed it
//! in integers from the integer input before it, not float activations quantized afterwards.
//! Each file holds `activations` I8 `[N, ...]` (sample order of the data set), `scale` F32 `[1]`
//! and `zero_point` I32 `[1]` (real value = scale · (q − zero_point)), and in `__metadata__` the
//! point, its bit width and scheme, and the model.

use super::atomic;
use super::st::{self, Tensor};
use crate::engine::IntModel;
use crate::error::Result;
use crate::model::{Dataset, Model, ValueId};
use crate::params::ModelParams;
use crate::pipeline::{Cancel, batches, make_batch};
use crate::quant::QParams;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One file written.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// The quantization point (`input` or a weight layer's name).
    pub point: String,
    /// The file.
    pub path: PathBuf,
    /// Shape of `activations` ([N, ...]).
    pub shape: Vec<usize>,
    /// Their scale and zero point.
    pub qparams: QParams,
}

/// Per batch: the input integers and each point's integers (None where the output stayed float).
type BatchInts = Vec<Option<(Vec<i8>, QParams, Vec<usize>)>>;

/// Runs `data` through the integer engine and writes one file per quantization point into `dir`
/// (which must exist): `input.safetensors` and `<layer>.safetensors`. A layer whose output stays
/// float is skipped (listed in the second value).
pub fn dump_activations(
    dir: &Path,
    model: &Model,
    params: &ModelParams,
    data: &Dataset,
    cancel: &Cancel,
) -> Result<(Vec<Dumped>, Vec<String>)> {
    atomic::check_writable_dir(dir)?;
    let int = IntModel::new(model, params, usize::MAX);
    // (name, value, what) of every point: entries, then layer outputs.
    let mut points: Vec<(String, ValueId, &str)> = params
        .points
        .iter()
        .map(|p| (p.name.clone(), p.value, "the point's tensor, quantized"))
        .collect();
    for l in &params.layers {
        let p = model.point_value(l.index);
        let what = if p != model.layers[l.index].output {
            "the layer's output after the fused relu"
        } else {
            "the layer's output"
        };
        points.push((l.name.clone(), p, what));
    }
    let per_batch: Vec<BatchInts> = batches(data.n)
        .into_par_iter()
        .map(|(s, e)| -> Result<BatchInts> {
            cancel.check()?;
            let inputs = make_batch(model, data, s, e)?;
            let mut outs: BatchInts = vec![None; points.len()];
            for (gi, t) in model.inputs.iter().zip(&inputs) {
                for (k, (_, v, _)) in points.iter().enumerate() {
                    if *v == gi.value && t.as_f32().is_some() {
                        let q = params
                            .points
                            .iter()
                            .find(|p| p.value == *v)
                            .map(|p| p.act.qparams);
                        if let Some(q) = q {
                            let tq = t.quantize(q);
                            outs[k] = tq.as_q().map(|(d, q)| (d.to_vec(), q, tq.shape.clone()));
                        }
                    }
                }
            }
            int.forward(inputs, |_, v, t, _| {
                for (k, (_, p, _)) in points.iter().enumerate() {
                    if *p == v
                        && let Some((d, q)) = t.as_q()
                    {
                        outs[k] = Some((d.to_vec(), q, t.shape.clone()));
                    }
                }
            })?;
            Ok(outs)
        })
        .collect::<Result<_>>()?;
    let meta = |point: &str, q: QParams, what: &str| -> BTreeMap<String, String> {
        BTreeMap::from([
            ("qscope.point".to_string(), point.to_string()),
            ("qscope.what".to_string(), what.to_string()),
            ("qscope.bits".to_string(), q.bits.to_string()),
            ("qscope.scheme".to_string(), q.scheme.to_string()),
            ("qscope.model".to_string(), model.name.clone()),
            ("qscope.model_sha256".to_string(), model.sha256.clone()),
            ("qscope.data".to_string(), data.label.clone()),
            (
                "qscope.source".to_string(),
                "qscope integer engine (IntModel) taps on the calibration set, in sample order; real value = scale * (q - zero_point)".to_string(),
            ),
        ])
    };
    let write = |point: &str,
                 ints: Vec<i8>,
                 sample_shape: &[usize],
                 q: QParams,
                 what: &str|
     -> Result<Dumped> {
        let mut shape = vec![data.n];
        shape.extend_from_slice(sample_shape);
        let tensors = BTreeMap::from([
            ("activations".to_string(), Tensor::i8(shape.clone(), &ints)),
            ("scale".to_string(), Tensor::f32(vec![1], &[q.scale])),
            (
                "zero_point".to_string(),
                Tensor::i32(vec![1], &[q.zero_point]),
            ),
        ]);
        let path = dir.join(format!("{}.safetensors", point.replace(['/', '\\'], "_")));
        let bytes = st::serialize(&tensors, &meta(point, q, what));
        atomic::write_bytes_atomic(&path, &bytes)?;
        Ok(Dumped {
            point: point.to_string(),
            path,
            shape,
            qparams: q,
        })
    };
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    for (k, (name, _, what)) in points.iter().enumerate() {
        let Some((q, shape)) = per_batch
            .first()
            .and_then(|o| o[k].as_ref().map(|(_, q, s)| (*q, s[1..].to_vec())))
        else {
            skipped.push(name.to_string());
            continue;
        };
        let ints: Vec<i8> = per_batch
            .iter()
            .flat_map(|o| o[k].as_ref().map(|(d, _, _)| d.clone()).unwrap_or_default())
            .collect();
        written.push(write(name, ints, &shape, q, what)?);
    }
    Ok((written, skipped))
}
