//! Calibration and evaluation data sets (formats.md §2): safetensors or npz with `inputs` and `labels`.

use super::npz;
use super::tensors::{TensorFile, decode_float, decode_int};
use crate::engine::tensor::{Data, Tensor};
use crate::error::{Error, Result};
use safetensors::Dtype;
use std::path::Path;

/// Samples (raw, before the model's normalization) and optional labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where the data came from, for messages.
    pub label: String,
    /// Row-major samples, `n · sample_len` values.
    pub inputs: Vec<f32>,
    /// Number of samples.
    pub n: usize,
    /// Elements per sample.
    pub sample_len: usize,
    /// Class labels, one per sample.
    pub labels: Option<Vec<i64>>,
    /// The file's other tensors ([N, ...]), for graph inputs named after them.
    pub named: Vec<(String, Tensor)>,
}

/// A tensor read from either container, before conversion.
pub(super) struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Loads a data set from a `.safetensors` or `.npz` file.
pub fn load_dataset(path: &Path) -> Result<Dataset> {
    let bytes = crate::input::read_bytes(path)?;
    load_dataset_bytes(&path.display().to_string(), &bytes)
}

/// Loads a data set from bytes (npz if they start like a zip archive, else safetensors).
pub fn load_dataset_bytes(label: &str, bytes: &[u8]) -> Result<Dataset> {
    let mut rest: Vec<(String, RawTensor)> = Vec::new();
    let (inputs, labels) = if bytes.starts_with(b"PK") {
        let mut arrays = npz::read_npz(label, bytes)?;
        let inputs = arrays.remove("inputs").or_else(|| arrays.remove("images"));
        let labels = arrays.remove("labels");
        rest.extend(arrays);
        (inputs, labels)
    } else {
        let file = TensorFile::parse(label, bytes)?;
        let get = |name: &str| -> Result<Option<RawTensor>> {
            if !file.contains(name) {
                return Ok(None);
            }
            let (dtype, shape) = file.info(name)?;
            Ok(Some(RawTensor {
                dtype,
                shape,
                bytes: file.raw(name)?.to_vec(),
            }))
        };
        let inputs = match get("inputs")? {
            Some(t) => Some(t),
            None => get("images")?,
        };
        for name in file.names() {
            if !["inputs", "images", "labels"].contains(&name.as_str()) {
                let t = get(&name)?.expect("listed");
                rest.push((name, t));
            }
        }
        (inputs, get("labels")?)
    };
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    let named = named_tensors(label, rest)?;
    let inputs = match (inputs, named.first()) {
        (Some(t), _) => t,
        (None, Some((_, t))) => RawTensor {
            dtype: Dtype::F32,
            shape: vec![t.shape[0], 0],
            bytes: Vec::new(),
        },
        (None, None) => {
            return Err(Error::data(
                label,
                "holds no 'inputs' (or 'images') tensor, nor one named after a graph input",
            ));
        }
    };
    let mut ds = from_raw(label, inputs, labels)?;
    if let Some((name, t)) = named.iter().find(|(_, t)| t.shape[0] != ds.n) {
        return Err(Error::tensor(
            label,
            name,
            format!("has {} samples where the data set has {}", t.shape[0], ds.n),
        ));
    }
    ds.named = named;
    Ok(ds)
}

/// Every other tensor of a data file, for graph inputs named after it: floats as F32,
/// integers as I64.
fn named_tensors(label: &str, raw: Vec<(String, RawTensor)>) -> Result<Vec<(String, Tensor)>> {
    raw.into_iter()
        .map(|(name, t)| {
            if t.shape.is_empty() {
                return Err(Error::tensor(
                    label,
                    &name,
                    "is a scalar; expected [N, ...]",
                ));
            }
            let tensor = if let Some(v) = decode_int(t.dtype, &t.bytes) {
                Tensor::i64(t.shape, v)
            } else if let Some(v) = decode_float(t.dtype, &t.bytes) {
                Tensor::f32(t.shape, v)
            } else {
                return Err(Error::tensor(
                    label,
                    &name,
                    format!("has unsupported dtype {:?}", t.dtype),
                ));
            };
            Ok((name, tensor))
        })
        .collect()
}

fn from_raw(label: &str, inputs: RawTensor, labels: Option<RawTensor>) -> Result<Dataset> {
    let n = *inputs
        .shape
        .first()
        .ok_or_else(|| Error::tensor(label, "inputs", "is a scalar; expected [N, ...]"))?;
    if n == 0 {
        return Err(Error::data(label, "holds no samples (inputs has N = 0)"));
    }
    // A data set of named graph inputs only has an empty placeholder for `inputs`.
    let placeholder = inputs.shape.len() == 2 && inputs.shape[1] == 0 && inputs.bytes.is_empty();
    let sample_len = inputs.shape[1..]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&l| l > 0 || placeholder)
        .ok_or_else(|| {
            Error::tensor(
                label,
                "inputs",
                format!(
                    "has shape {:?}; a sample needs at least one element",
                    inputs.shape
                ),
            )
        })?;
    let values = match inputs.dtype {
        Dtype::U8 => inputs.bytes.iter().map(|&b| b as f32 / 255.0).collect(),
        d => decode_float(d, &inputs.bytes).ok_or_else(|| {
            Error::tensor(
                label,
                "inputs",
                format!("unsupported dtype {d:?} (expected F32, F16, BF16 or U8)"),
            )
        })?,
    };
    let values: Vec<f32> = values;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(
            label,
            "inputs",
            format!(
                "holds a non-finite value ({}) in sample {}",
                values[i],
                i / sample_len.max(1)
            ),
        ));
    }
    let labels = match labels {
        None => None,
        Some(t) => {
            let v = decode_int(t.dtype, &t.bytes).ok_or_else(|| {
                Error::tensor(
                    label,
                    "labels",
                    format!(
                        "unsupported dtype {:?} (expected an integer dtype)",
                        t.dtype
                    ),
                )
            })?;
            if t.shape != [n] {
                return Err(Error::tensor(
                    label,
                    "labels",
                    format!("has shape {:?}, expected [{n}] (one per sample)", t.shape),
                ));
            }
            Some(v)
        }
    };
    Ok(Dataset {
        label: label.to_string(),
        inputs: values,
        n,
        sample_len,
        labels,
        named: Vec::new(),
    })
}

impl Dataset {
    /// Checks that every sample has `input_len` elements.
    pub fn check_fits(&self, input_len: usize, input_shape: &[usize]) -> Result<()> {
        if self.sample_len != input_len {
            return Err(Error::data(
                &self.label,
                format!(
                    "samples have {} elements but the model's input_shape {:?} needs {}",
                    self.sample_len, input_shape, input_len
                ),
            ));
        }
        Ok(())
    }

    /// Checks that every label names one of the model's `classes` outputs (0..classes).
    pub fn check_labels(&self, classes: usize) -> Result<()> {
        let Some(labels) = &self.labels else {
            return Ok(());
        };
        let outside = |&l: &i64| l < 0 || l as u64 >= classes as u64;
        let Some(first) = labels.iter().position(outside) else {
            return Ok(());
        };
        let count = labels.iter().filter(|l| outside(l)).count();
        let max = labels.iter().copied().max().unwrap_or(0);
        Err(Error::tensor(
            &self.label,
            "labels",
            format!(
                "{count} of {} labels lie outside the model's {classes} output classes 0..={} (e.g. {} at sample {first}; largest label {max})",
                labels.len(),
                classes.saturating_sub(1),
                labels[first]
            ),
        ))
    }

    /// The first `n` samples (all if `n` is larger).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.n);
        Dataset {
            label: self.label.clone(),
            inputs: self.inputs[..n * self.sample_len].to_vec(),
            n,
            sample_len: self.sample_len,
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
            named: self
                .named
                .iter()
                .map(|(name, t)| (name.clone(), rows(t, 0, n)))
                .collect(),
        }
    }

    /// The named tensor `name`'s samples `start..end`.
    pub fn named_rows(&self, name: &str, start: usize, end: usize) -> Option<Tensor> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| rows(t, start, end))
    }

    /// Samples `start..end` as a slice.
    pub fn samples(&self, start: usize, end: usize) -> &[f32] {
        &self.inputs[start * self.sample_len..end * self.sample_len]
    }
}

/// Rows `start..end` of a batch-major tensor.
fn rows(t: &Tensor, start: usize, end: usize) -> Tensor {
    let per: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = end - start;
    match &t.data {
        Data::F32(v) => Tensor::f32(shape, v[start * per..end * per].to_vec()),
        Data::I64(v) => Tensor::i64(shape, v[start * per..end * per].to_vec()),
        Data::Q { data, qp } => Tensor::q(shape, data[start * per..end * per].to_vec(), *qp),
    }
}
