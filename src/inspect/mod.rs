//! Per-tensor statistics and int8/int4 weight error of any safetensors file or sharded
//! checkpoint (`qscope inspect`), read through a memory map in one pass per tensor (two for
//! F32 and wider), tensors and row chunks spread over the cores.

mod hist16;
mod kernels;
mod pass;
pub mod shards;
mod wide;

pub use pass::{Done, Figures, analyze};

use crate::error::Result;
use crate::input::{Mapped, map_file};
use crate::model::tensors::TensorFile;
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;

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
    /// The shard file holding the tensor (sharded checkpoints only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// What `inspect` reports about a file.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file (the index of a sharded checkpoint).
    pub file: String,
    /// File size in bytes (all shards together for a sharded checkpoint).
    pub file_bytes: usize,
    /// `__metadata__` keys (values can be long; every shard's for a sharded checkpoint).
    pub metadata_keys: Vec<String>,
    /// One entry per tensor, in file order (shard by shard for a sharded checkpoint).
    pub tensors: Vec<TensorInfo>,
    /// The shard files an index lists, in the order inspected (sharded checkpoints only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<String>,
}

impl TensorInfo {
    /// The entry for tensor `name` with `figures`.
    pub fn new(name: String, dtype: String, shape: Vec<usize>, bytes: usize, f: &Figures) -> Self {
        let st = f.stats.as_ref();
        TensorInfo {
            name,
            dtype,
            shape,
            bytes,
            min: st.map(|s| s.min as f64),
            max: st.map(|s| s.max as f64),
            mean: st.map(|s| s.mean),
            std: st.map(|s| s.std),
            skewness: st.map(|s| s.skewness).filter(|v| v.is_finite()),
            kurtosis: st.map(|s| s.kurtosis).filter(|v| v.is_finite()),
            sqnr_int8_per_tensor_db: f.sqnr[0],
            sqnr_int8_per_channel_db: f.sqnr[1],
            sqnr_int4_per_tensor_db: f.sqnr[2],
            sqnr_int4_per_channel_db: f.sqnr[3],
            shard: None,
        }
    }
}

/// The entries of every tensor of `file` in file order, tensors spread over the cores.
fn tensor_infos(file: &TensorFile, done: Done) -> Result<Vec<TensorInfo>> {
    let names = file.names();
    let parts = names
        .into_iter()
        .map(|n| {
            let (dtype, shape) = file.info(&n)?;
            let raw = file.raw(&n)?;
            Ok((n, dtype, shape, raw))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(parts
        .into_par_iter()
        .map(|(name, dtype, shape, raw)| {
            let f = analyze(dtype, &shape, raw, done);
            TensorInfo::new(name, format!("{dtype:?}"), shape, raw.len(), &f)
        })
        .collect())
}

fn sorted_keys(file: &TensorFile) -> Vec<String> {
    let mut keys: Vec<String> = file.all_metadata().keys().cloned().collect();
    keys.sort();
    keys
}

/// Inspects safetensors `bytes`; `label` names the file in errors.
pub fn inspect_bytes(label: &str, bytes: &[u8]) -> Result<Inspection> {
    let file = TensorFile::parse(label, bytes)?;
    Ok(Inspection {
        file: label.to_string(),
        file_bytes: bytes.len(),
        metadata_keys: sorted_keys(&file),
        tensors: tensor_infos(&file, &|_| {})?,
        shards: Vec::new(),
    })
}

/// A checkpoint opened for inspection: one memory-mapped safetensors file, or every shard an
/// index (`*.safetensors.index.json`, or a folder holding one) lists.
pub struct Checkpoint {
    label: String,
    files: Vec<(String, Mapped)>,
    index: Option<shards::Index>,
}

impl Checkpoint {
    /// Opens `path`: a safetensors file, an index, or a folder with an index or `model.safetensors`.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let label = path.display().to_string();
        let path = if path.is_dir() {
            shards::in_folder(path)?
        } else {
            path.to_path_buf()
        };
        if !shards::is_index(&path) {
            let map = map_file(&path)?;
            let files = vec![(path.display().to_string(), map)];
            return Ok(Checkpoint {
                label,
                files,
                index: None,
            });
        }
        let index = shards::parse(&path, &crate::input::read_text(&path)?)?;
        let files = index
            .shards
            .iter()
            .map(|(name, p)| {
                let m = map_file(p).map_err(|e| index.missing_shard(name, &e))?;
                Ok((p.display().to_string(), m))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Checkpoint {
            label,
            files,
            index: Some(index),
        })
    }

    /// Bytes of all files together.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, m)| m.bytes().len() as u64).sum()
    }

    /// Inspects every tensor; `progress` is told how many bytes each finished chunk held.
    pub fn inspect(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<Inspection> {
        let mut ins = Inspection {
            file: self.label.clone(),
            file_bytes: self.bytes() as usize,
            metadata_keys: Vec::new(),
            tensors: Vec::new(),
            shards: Vec::new(),
        };
        for (k, (label, map)) in self.files.iter().enumerate() {
            let file = TensorFile::parse(label, map.bytes())?;
            let shard = self.index.as_ref().map(|ix| &ix.shards[k].0);
            if let (Some(ix), Some(shard)) = (&self.index, shard) {
                ix.check_shard(shard, &file.names())?;
                ins.shards.push(shard.clone());
            }
            let done = |part: &[u8]| {
                map.release(part);
                progress(part.len() as u64);
            };
            let mut infos = tensor_infos(&file, &done)?;
            infos.iter_mut().for_each(|t| t.shard = shard.cloned());
            ins.tensors.extend(infos);
            ins.metadata_keys.extend(sorted_keys(&file));
        }
        ins.metadata_keys.sort();
        ins.metadata_keys.dedup();
        Ok(ins)
    }
}
