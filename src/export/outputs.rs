//! `eval --save-outputs FILE.safetensors`: the float model's and the integer engine's outputs
//! (tensors `float` and `quant`, shaped [N, …one sample's output]) for users' own metrics.

use super::atomic;
use super::st::{self, Tensor};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::pipeline::SavedOutputs;
use std::collections::BTreeMap;
use std::path::Path;

/// Writes `saved` (outputs of `n` samples) atomically to `path`.
pub fn save_outputs(path: &Path, model: &Model, saved: &SavedOutputs, n: usize) -> Result<()> {
    let per = saved.quant.len().checked_div(n).unwrap_or(0);
    let out_shape: Vec<usize> = model
        .layers
        .iter()
        .find(|l| l.output == model.outputs[0])
        .map(|l| l.out_shape.clone())
        .filter(|s| s.iter().product::<usize>() == per)
        .unwrap_or_else(|| vec![per]);
    let mut shape = vec![n];
    shape.extend(out_shape);
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "quant".to_string(),
        Tensor::f32(shape.clone(), &saved.quant),
    );
    if !saved.float.is_empty() {
        if saved.float.len() != saved.quant.len() {
            return Err(Error::format(
                path.display().to_string(),
                "the float and quantized outputs differ in size",
            ));
        }
        tensors.insert("float".to_string(), Tensor::f32(shape, &saved.float));
    }
    let meta = BTreeMap::from([
        ("qscope.model".to_string(), model.name.clone()),
        (
            "qscope.output".to_string(),
            model.values[model.outputs[0]].name.clone(),
        ),
    ]);
    atomic::write_bytes_atomic(path, &st::serialize(&tensors, &meta))
}
