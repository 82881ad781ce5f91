//! A graph model's structure inside a quantized model file (formats.md §6): the model written
//! as ONNX without its weights, base64 in a metadata key, its larger constants stored as
//! tensors of the file; and the model read back from them.

use super::proto::OTensor;
use super::{QdqOptions, onnx_graph};
use crate::error::{Error, Result};
use crate::export::st;
use crate::model::Model;
use crate::model::tensors::TensorFile;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use onnx_rs::ast::DataType;

/// Metadata key of the embedded ONNX graph (base64 of a ModelProto without weights).
pub const GRAPH_KEY: &str = "qscope.onnx";
/// Prefix of the tensors that hold the graph's larger constants.
pub const CONST_PREFIX: &str = "onnx_const.";
/// Constants with more elements than this are stored as tensors, not inside the graph.
const INLINE_MAX: usize = 64;

/// The base64 graph of `model` without its weight-layer initializers, and its larger
/// constants as file tensors (`onnx_const.NAME`).
pub fn embed(model: &Model) -> Result<(String, Vec<(String, st::Tensor)>)> {
    let (mut g, weights) = onnx_graph(model, None, QdqOptions::default())?;
    g.inits.retain(|t| !weights.contains(&t.name));
    let mut tensors = Vec::new();
    let mut kept = Vec::new();
    for t in std::mem::take(&mut g.inits) {
        let n: usize = t.dims.iter().product::<i64>().max(0) as usize;
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let stored = match t.dtype {
            DataType::Float if n > INLINE_MAX => Some(st::Tensor::f32(shape, &le_f32(&t.raw))),
            DataType::Int64 if n > INLINE_MAX => Some(st::Tensor::i64(shape, &le_i64(&t.raw))),
            _ => None,
        };
        match stored {
            Some(s) => tensors.push((format!("{CONST_PREFIX}{}", t.name), s)),
            None => kept.push(t),
        }
    }
    g.inits = kept;
    Ok((STANDARD.encode(g.encode()), tensors))
}

fn le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn le_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// The model of a quantized model file with an embedded graph: the graph decoded, its
/// constants taken from the file, each weight layer given zero weights of the stored shape
/// (`shapes`: layer name → [out, in…]; the caller puts the real weights in).
pub fn model_from_embedding(
    label: &str,
    name: &str,
    file: &TensorFile,
    b64: &str,
    shapes: &std::collections::HashMap<String, Vec<usize>>,
) -> Result<Model> {
    let bad = |m: String| Error::format(label, format!("embedded graph '{GRAPH_KEY}': {m}"));
    let bytes = STANDARD
        .decode(b64.trim())
        .map_err(|e| bad(e.to_string()))?;
    let mut proto = onnx_rs::parse(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut owned: Vec<OTensor> = Vec::new();
    for n in file.names() {
        let Some(init) = n.strip_prefix(CONST_PREFIX) else {
            continue;
        };
        let (dtype, shape) = file.info(&n)?;
        owned.push(match dtype {
            safetensors::Dtype::F32 => OTensor::f32(init, &shape, &file.float(&n)?.data),
            _ => OTensor::i64(init, &shape, &file.int(&n)?.1),
        });
    }
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| bad("holds no graph".into()))?;
    // In name order, not the map's (which differs on every load): the initializers, and so the
    // model's values, come out in the same order every time, as does the first error.
    let mut layers: Vec<_> = shapes.iter().collect();
    layers.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (layer, shape) in layers {
        let node = graph
            .node
            .iter()
            .find(|n| n.name == layer.as_str())
            .ok_or_else(|| bad(format!("has no node '{layer}'")))?;
        let (Some(&rows), Some(cols)) = (
            shape.first(),
            shape[1.min(shape.len())..]
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d)),
        ) else {
            return Err(bad(format!("weight of '{layer}' has shape {shape:?}")));
        };
        if rows
            .checked_mul(cols)
            .is_none_or(|n| n > isize::MAX as usize / 4)
        {
            return Err(bad(format!("weight of '{layer}' has shape {shape:?}")));
        }
        if node.op_type.as_str() == "Gather" {
            // An embedding: the table is the Gather's data input; no bias.
            let t = node.input.first().copied().unwrap_or_default();
            owned.push(OTensor::f32(t, shape, &vec![0.0; rows * cols]));
            continue;
        }
        let (w_dims, bias) = match node.op_type.as_str() {
            "MatMul" => {
                let add = graph
                    .node
                    .iter()
                    .find(|n| n.name == format!("{layer}_bias_add"))
                    .ok_or_else(|| bad(format!("has no bias Add for '{layer}'")))?;
                (vec![cols, rows], add.input.get(1).copied())
            }
            _ => (shape.clone(), node.input.get(2).copied()),
        };
        let w = node
            .input
            .get(1)
            .copied()
            .ok_or_else(|| bad(format!("'{layer}' reads no weight")))?;
        owned.push(OTensor::f32(w, &w_dims, &vec![0.0; rows * cols]));
        if let Some(b) = bias.filter(|b| !b.is_empty()) {
            owned.push(OTensor::f32(b, &[rows], &vec![0.0; rows]));
        }
    }
    graph.initializer.extend(owned.iter().map(OTensor::proto));
    let full = onnx_rs::encode(&proto);
    crate::model::onnx::load_onnx_bytes(label, name, &full, None)
}
