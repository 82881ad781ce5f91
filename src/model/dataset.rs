//! Calibration and evaluation data sets (formats.md §2): safetensors or npz with `inputs` and `labels`.

use super::npz;
use super::tensors::{TensorFile, decode_float, decode_int};
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
    let (inputs, labels) = if bytes.starts_with(b"PK") {
        let mut arrays = npz::read_npz(label, bytes)?;
        let inputs = arrays
            .remove("inputs")
            .or_else(|| arrays.remove("images"))
            .ok_or_else(|| Error::data(label, "holds no 'inputs' (or 'images') array"))?;
        (inputs, arrays.remove("labels"))
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
            Some(t) => t,
            None => get("images")?
                .ok_or_else(|| Error::data(label, "holds no 'inputs' (or 'images') tensor"))?,
        };
        (inputs, get("labels")?)
    };
    from_raw(label, inputs, labels)
}

fn from_raw(label: &str, inputs: RawTensor, labels: Option<RawTensor>) -> Result<Dataset> {
    let n = *inputs
        .shape
        .first()
        .ok_or_else(|| Error::tensor(label, "inputs", "is a scalar; expected [N, ...]"))?;
    if n == 0 {
        return Err(Error::data(label, "holds no samples (inputs has N = 0)"));
    }
    let sample_len = inputs.shape[1..]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&l| l > 0)
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
        }
    }

    /// Samples `start..end` as a slice.
    pub fn samples(&self, start: usize, end: usize) -> &[f32] {
        &self.inputs[start * self.sample_len..end * self.sample_len]
    }
}
