//! Per-tensor statistics and int8/int4 weight error of any safetensors file (`qscope inspect`).

use crate::config::WeightSettings;
use crate::error::Result;
use crate::eval::sqnr::sqnr_db;
use crate::model::tensors::{TensorFile, decode_float, decode_int};
use crate::quant::calib::Stats;
use crate::quant::weights::quantize_weights;
use crate::quant::{Granularity, Scheme, Strategy};
use serde::Serialize;

/// What `inspect` reports about one tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dtype as safetensors names it.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub bytes: usize,
    /// Smallest value (null for an empty or non-numeric tensor).
    pub min: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
    /// Mean.
    pub mean: Option<f64>,
    /// Standard deviation.
    pub std: Option<f64>,
    /// Skewness.
    pub skewness: Option<f64>,
    /// Kurtosis (excess: 0 for a Gaussian).
    pub kurtosis: Option<f64>,
    /// Weight SQNR at int8, per tensor (float tensors of rank ≥ 1 only).
    pub sqnr_int8_per_tensor_db: Option<f64>,
    /// Weight SQNR at int8, per output channel (rank ≥ 2).
    pub sqnr_int8_per_channel_db: Option<f64>,
    /// Weight SQNR at int4, per tensor.
    pub sqnr_int4_per_tensor_db: Option<f64>,
    /// Weight SQNR at int4, per output channel (rank ≥ 2).
    pub sqnr_int4_per_channel_db: Option<f64>,
}

/// What `inspect` reports about a file.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file.
    pub file: String,
    /// File size in bytes.
    pub file_bytes: usize,
    /// `__metadata__` keys (values can be long).
    pub metadata_keys: Vec<String>,
    /// One entry per tensor, in file order.
    pub tensors: Vec<TensorInfo>,
}

fn sqnr_at(values: &[f32], shape: &[usize], bits: u8, granularity: Granularity) -> Option<f64> {
    let rows = if granularity == Granularity::PerTensor {
        1
    } else {
        *shape.first()?
    };
    if rows == 0 || values.is_empty() {
        return None;
    }
    let cols = values.len() / rows;
    let settings = WeightSettings {
        bits,
        scheme: Scheme::Symmetric,
        granularity,
        strategy: Strategy::MinMax,
        percentile: 99.99,
        clip: None,
    };
    let q = quantize_weights(values, rows, cols, &settings);
    sqnr_db(values, &q.dequantize())
}

/// Inspects safetensors `bytes`; `label` names the file in errors.
pub fn inspect_bytes(label: &str, bytes: &[u8]) -> Result<Inspection> {
    let file = TensorFile::parse(label, bytes)?;
    let mut tensors = Vec::new();
    for name in file.names() {
        let (dtype, shape) = file.info(&name)?;
        let raw = file.raw(&name)?;
        let (values, is_float) = match decode_float(dtype, raw) {
            Some(v) => (Some(v), true),
            None => (
                decode_int(dtype, raw).map(|v| v.into_iter().map(|x| x as f32).collect()),
                false,
            ),
        };
        let stats = values
            .as_ref()
            .filter(|v| !v.is_empty())
            .map(|v| Stats::of(v));
        let finite = values
            .as_ref()
            .is_some_and(|v| v.iter().all(|x| x.is_finite()));
        let weight = (is_float && finite && !shape.is_empty())
            .then_some(values.as_deref())
            .flatten();
        let sq = |bits, g| weight.and_then(|v| sqnr_at(v, &shape, bits, g));
        let per_channel = |bits| {
            if shape.len() >= 2 {
                sq(bits, Granularity::PerChannel)
            } else {
                None
            }
        };
        tensors.push(TensorInfo {
            dtype: format!("{dtype:?}"),
            bytes: raw.len(),
            min: stats.as_ref().map(|s| s.min as f64),
            max: stats.as_ref().map(|s| s.max as f64),
            mean: stats.as_ref().map(|s| s.mean),
            std: stats.as_ref().map(|s| s.std),
            skewness: stats.as_ref().map(|s| s.skewness).filter(|v| v.is_finite()),
            kurtosis: stats.as_ref().map(|s| s.kurtosis).filter(|v| v.is_finite()),
            sqnr_int8_per_tensor_db: sq(8, Granularity::PerTensor),
            sqnr_int8_per_channel_db: per_channel(8),
            sqnr_int4_per_tensor_db: sq(4, Granularity::PerTensor),
            sqnr_int4_per_channel_db: per_channel(4),
            name,
            shape,
        });
    }
    let mut metadata_keys: Vec<String> = file.all_metadata().keys().cloned().collect();
    metadata_keys.sort();
    Ok(Inspection {
        file: label.to_string(),
        file_bytes: bytes.len(),
        metadata_keys,
        tensors,
    })
}
