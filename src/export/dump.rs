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
use super::st;
use crate::engine::IntModel;
use crate::engine::tensor::Tensor;
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

/// One quantization point to dump.
struct Point {
    /// `input` or a weight layer's name (the file's stem).
    name: String,
    /// The value whose integers are dumped.
    value: ValueId,
    /// What the file holds, for its metadata.
    what: &'static str,
}

/// One point's integers in one batch: the codes, their qparams and the batch's shape.
type PointInts = (Vec<i8>, QParams, Vec<usize>);

/// Per batch: the input integers and each point's integers (None where the output stayed float).
type BatchInts = Vec<Option<PointInts>>;

/// What every phase of a dump reads: the folder, the model with its parameters and the data.
struct Dump<'a> {
    dir: &'a Path,
    model: &'a Model,
    params: &'a ModelParams,
    data: &'a Dataset,
}

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
    let dump = Dump {
        dir,
        model,
        params,
        data,
    };
    let int = IntModel::new(model, params, usize::MAX);
    let points = dump.points();
    let per_batch: Vec<BatchInts> = batches(data.n)
        .into_par_iter()
        .map(|range| -> Result<BatchInts> {
            cancel.check()?;
            dump.batch_ints(&int, &points, range)
        })
        .collect::<Result<_>>()?;
    dump.write_points(&points, &per_batch)
}

impl Dump<'_> {
    /// Every point to dump: the entries, then each weight layer's output.
    fn points(&self) -> Vec<Point> {
        let mut points: Vec<Point> = self
            .params
            .points
            .iter()
            .map(|p| Point {
                name: p.name.clone(),
                value: p.value,
                what: "the point's tensor, quantized",
            })
            .collect();
        for l in &self.params.layers {
            let p = self.model.point_value(l.index);
            let what = if p != self.model.layers[l.index].output {
                "the layer's output after the fused relu"
            } else {
                "the layer's output"
            };
            points.push(Point {
                name: l.name.clone(),
                value: p,
                what,
            });
        }
        points
    }

    /// Runs samples `start..end` through the integer engine and keeps each point's integers.
    fn batch_ints(
        &self,
        int: &IntModel,
        points: &[Point],
        (start, end): (usize, usize),
    ) -> Result<BatchInts> {
        let inputs = make_batch(self.model, self.data, start, end)?;
        let mut outs: BatchInts = vec![None; points.len()];
        self.quantize_inputs(points, &inputs, &mut outs);
        int.forward(inputs, |_, v, t, _| {
            for (k, p) in points.iter().enumerate() {
                if p.value == v
                    && let Some((d, q)) = t.as_q()
                {
                    outs[k] = Some((d.to_vec(), q, t.shape.clone()));
                }
            }
        })?;
        Ok(outs)
    }

    /// Fills in the points on float graph inputs: the input quantized with its point's qparams.
    fn quantize_inputs(&self, points: &[Point], inputs: &[Tensor], outs: &mut BatchInts) {
        for (gi, t) in self.model.inputs.iter().zip(inputs) {
            for (k, point) in points.iter().enumerate() {
                if point.value == gi.value && t.as_f32().is_some() {
                    let q = self
                        .params
                        .points
                        .iter()
                        .find(|p| p.value == point.value)
                        .map(|p| p.act.qparams);
                    if let Some(q) = q {
                        let tq = t.quantize(q);
                        outs[k] = tq.as_q().map(|(d, q)| (d.to_vec(), q, tq.shape.clone()));
                    }
                }
            }
        }
    }

    /// Writes each point's file, in point order; a point without integers is skipped.
    fn write_points(
        &self,
        points: &[Point],
        per_batch: &[BatchInts],
    ) -> Result<(Vec<Dumped>, Vec<String>)> {
        let mut written = Vec::new();
        let mut skipped = Vec::new();
        for (k, point) in points.iter().enumerate() {
            let Some((q, shape)) = first_layout(per_batch, k) else {
                skipped.push(point.name.to_string());
                continue;
            };
            let ints = gathered_ints(per_batch, k);
            written.push(self.write_point(point, ints, &shape, q)?);
        }
        Ok((written, skipped))
    }

    /// Writes `point`'s file: its integers `[N, ...sample_shape]`, scale, zero point, metadata.
    fn write_point(
        &self,
        point: &Point,
        ints: Vec<i8>,
        sample_shape: &[usize],
        q: QParams,
    ) -> Result<Dumped> {
        let mut shape = vec![self.data.n];
        shape.extend_from_slice(sample_shape);
        let tensors = BTreeMap::from([
            (
                "activations".to_string(),
                st::Tensor::i8(shape.clone(), &ints),
            ),
            ("scale".to_string(), st::Tensor::f32(vec![1], &[q.scale])),
            (
                "zero_point".to_string(),
                st::Tensor::i32(vec![1], &[q.zero_point]),
            ),
        ]);
        let name = &point.name;
        let path = self
            .dir
            .join(format!("{}.safetensors", name.replace(['/', '\\'], "_")));
        let bytes = st::serialize(&tensors, &self.metadata(name, q, point.what));
        atomic::write_bytes_atomic(&path, &bytes)?;
        Ok(Dumped {
            point: name.to_string(),
            path,
            shape,
            qparams: q,
        })
    }

    /// The file's `__metadata__`: the point, what it holds, its width and scheme, the model
    /// and the data.
    fn metadata(&self, point: &str, q: QParams, what: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("qscope.point".to_string(), point.to_string()),
            ("qscope.what".to_string(), what.to_string()),
            ("qscope.bits".to_string(), q.bits.to_string()),
            ("qscope.scheme".to_string(), q.scheme.to_string()),
            ("qscope.model".to_string(), self.model.name.clone()),
            ("qscope.model_sha256".to_string(), self.model.sha256.clone()),
            ("qscope.data".to_string(), self.data.label.clone()),
            (
                "qscope.source".to_string(),
                "qscope integer engine (IntModel) taps on the calibration set, in sample order; real value = scale * (q - zero_point)".to_string(),
            ),
        ])
    }
}

/// Point `k`'s qparams and per-sample shape, from the first batch (None: no integers there).
fn first_layout(per_batch: &[BatchInts], k: usize) -> Option<(QParams, Vec<usize>)> {
    per_batch
        .first()
        .and_then(|o| o[k].as_ref().map(|(_, q, s)| (*q, s[1..].to_vec())))
}

/// Point `k`'s integers over all batches, in sample order (a batch without them adds none).
fn gathered_ints(per_batch: &[BatchInts], k: usize) -> Vec<i8> {
    per_batch
        .iter()
        .flat_map(|o| o[k].as_ref().map(|(d, _, _)| d.clone()).unwrap_or_default())
        .collect()
}
