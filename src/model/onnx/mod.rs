//! ONNX import (formats.md §1b): protobuf (parsed by `onnx-rs`) → the model graph, with
//! Identity/Dropout removed, constants folded, weights taken into Conv/Gemm/MatMul nodes,
//! batchnorm folded into the conv before it and MatMul + bias Add fused.

mod attrs;
mod autopad;
mod convert;
mod gelu;
mod passes;
pub mod qdq;
mod static_shapes;
mod tensor;

pub use convert::SUPPORTED;
pub use qdq::{ActQdq, ConstQdq, QType};

use crate::engine::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::{DType, GraphInput, Model, Source, Value, ValueId};
use convert::Pending;
use onnx_rs::ast::{DataType, Dimension, TypeValue, ValueInfo};
use std::collections::HashMap;
use std::path::Path;

/// Opsets of the default domain that qscope reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// A node during import: its name, what it becomes, its inputs and its output.
#[derive(Debug, Clone)]
pub(crate) struct RawNode {
    pub name: String,
    pub op_type: String,
    pub pending: Pending,
    pub inputs: Vec<Option<ValueId>>,
    pub output: ValueId,
}

/// The graph being imported.
#[derive(Default)]
pub(crate) struct Importer {
    pub label: String,
    pub values: Vec<Value>,
    pub by_name: HashMap<String, ValueId>,
    pub consts: HashMap<ValueId, Tensor>,
    pub nodes: Vec<RawNode>,
    pub inputs: Vec<GraphInput>,
    pub outputs: Vec<ValueId>,
    /// What the file's QuantizeLinear/DequantizeLinear nodes said.
    pub qdq: qdq::QdqState,
    /// Weight nodes' weight values by node name, and whether the weight was transposed into
    /// qscope's [out, in] (Gemm with transB = 0, MatMul).
    pub weight_src: HashMap<String, (ValueId, bool)>,
    /// Strip the input normalization nodes that qscope's export writes.
    pub normalize: bool,
    /// Relu nodes put back where a Q/DQ pair starting at 0 stood for them.
    pub restored_relus: usize,
    /// Conv/pool nodes with auto_pad SAME_UPPER (true) or SAME_LOWER (false), by name.
    pub auto_pad: HashMap<String, bool>,
}

/// What a QDQ file fixes: activation pairs by tensor name, and weight layers' integer weights
/// by node name (with whether qscope's [out, in] is the transpose of the file's layout).
#[derive(Debug, Clone, Default)]
pub struct QdqImport {
    /// Activation Q/DQ pairs by tensor name.
    pub acts: HashMap<String, ActQdq>,
    /// Dequantized weights by weight node name.
    pub weights: HashMap<String, (ConstQdq, bool)>,
    /// The qscope parameters file embedded by qscope's own export, if any.
    pub params_json: Option<String>,
}

impl Importer {
    fn value(&mut self, name: &str) -> ValueId {
        if let Some(&v) = self.by_name.get(name) {
            return v;
        }
        let v = self.values.len();
        self.values.push(Value {
            name: name.to_string(),
        });
        self.by_name.insert(name.to_string(), v);
        v
    }

    /// An error about node `i`.
    pub fn node_err(&self, i: usize, msg: impl Into<String>) -> Error {
        let n = &self.nodes[i];
        Error::node(&self.label, &n.name, &n.op_type, msg)
    }
}

/// Loads an ONNX model from a file (external data is read beside it). A QDQ model loads as
/// its float graph (see [`load_onnx_qdq`] for its parameters).
pub fn load_onnx(path: &Path) -> Result<Model> {
    load_onnx_qdq(path).map(|(m, _)| m)
}

/// Loads an ONNX model from a file and, for a QDQ model, what its Q/DQ nodes fix.
pub fn load_onnx_qdq(path: &Path) -> Result<(Model, Option<QdqImport>)> {
    crate::input::check_regular_file(path)?;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and dropped before this returns; a file changed by another
    // process while it loads can give wrong values (as any read would), not memory unsafety
    // in this process's own allocations.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let stem = path
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    // Each initializer's pages are let go once it is decoded, so the file and its decoded
    // copy are not both resident (peak memory near one copy, not two).
    let base = map.as_ptr() as usize;
    let release = |raw: &[u8]| {
        let start = (raw.as_ptr() as usize).wrapping_sub(base);
        if raw.len() >= 1 << 16 && start.checked_add(raw.len()).is_some_and(|e| e <= map.len()) {
            // SAFETY: the map is read-only and file-backed: dropped pages are read again from
            // the file if touched, so no data is lost and every borrow stays valid.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, raw.len())
            };
        }
    };
    load_onnx_inner(
        &path.display().to_string(),
        &stem,
        &map,
        path.parent(),
        &release,
    )
}

/// Loads an ONNX model from bytes; `dir` is where external data may live (`None`: nowhere).
pub fn load_onnx_bytes(label: &str, name: &str, bytes: &[u8], dir: Option<&Path>) -> Result<Model> {
    load_onnx_bytes_qdq(label, name, bytes, dir).map(|(m, _)| m)
}

/// [`load_onnx_bytes`] that also returns what a QDQ model's Q/DQ nodes fix.
pub fn load_onnx_bytes_qdq(
    label: &str,
    name: &str,
    bytes: &[u8],
    dir: Option<&Path>,
) -> Result<(Model, Option<QdqImport>)> {
    load_onnx_inner(label, name, bytes, dir, &|_| {})
}

/// The loader; `release(raw)` is called with each inline initializer's bytes once decoded.
fn load_onnx_inner(
    label: &str,
    name: &str,
    bytes: &[u8],
    dir: Option<&Path>,
    release: &(dyn Fn(&[u8]) + Sync),
) -> Result<(Model, Option<QdqImport>)> {
    let (sha256, proto) = rayon::join(|| crate::model::sha256_hex(bytes), || onnx_rs::parse(bytes));
    let proto =
        proto.map_err(|e| Error::format(label, format!("not a readable ONNX model: {e}")))?;
    check_opset(label, &proto)?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| Error::format(label, "holds no graph"))?;
    let meta = |k: &str| {
        proto
            .metadata_props
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.to_string())
    };
    let normalization = meta(crate::export::onnx::NORMALIZATION_KEY);
    let mut imp = Importer {
        label: label.to_string(),
        normalize: normalization.is_some(),
        ..Importer::default()
    };
    read_initializers(&mut imp, graph, dir, release)?;
    read_inputs(&mut imp, graph)?;
    read_nodes(&mut imp, &graph.node, &qdq::init_types(graph))?;
    if let Some((node, out)) = imp.qdq.unpaired() {
        return Err(Error::node(
            label,
            node,
            "QuantizeLinear",
            format!(
                "no DequantizeLinear reads its output '{}'",
                crate::error::clip(out, crate::error::NAME_MAX)
            ),
        ));
    }
    read_outputs(&mut imp, graph)?;
    let (layers, consts, values) = passes::run(&mut imp)?;
    let input_shape = imp.inputs[0].shape.iter().map(|d| d.unwrap_or(0)).collect();
    let mut model = Model {
        name: name.to_string(),
        input_shape,
        input_mean: Vec::new(),
        input_std: Vec::new(),
        layers,
        values,
        consts,
        inputs: std::mem::take(&mut imp.inputs),
        outputs: std::mem::take(&mut imp.outputs),
        source_kind: Source::Onnx,
        sha256,
        source: label.to_string(),
        notes: Vec::new(),
    };
    if imp.restored_relus > 0 {
        model.notes.push(format!(
            "{label}: put back {} Relu node(s) that the Q/DQ ranges imply (ONNX Runtime's quantizer removes a Relu whose quantized range starts at 0), so the float graph is the model that was quantized",
            imp.restored_relus
        ));
    }
    if let Some(json) = normalization {
        (model.input_mean, model.input_std) = parse_normalization(label, &json)?;
    }
    autopad::resolve(&mut model, &imp.auto_pad)?;
    // Folding reads full shapes from its own dry runs, so it goes first and shapes are
    // inferred once, on the folded graph.
    static_shapes::fold(&mut model)?;
    crate::engine::float::infer_shapes(&mut model)?;
    let qdq = qdq_import(&imp, &model, meta(crate::export::onnx::PARAMS_KEY));
    Ok((model, qdq))
}

/// The file's opset of the default ONNX domain, which must be one qscope reads.
fn check_opset(label: &str, proto: &onnx_rs::ast::Model<'_>) -> Result<()> {
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| Error::format(label, "declares no opset of the default ONNX domain"))?;
    if !OPSETS.contains(&opset) {
        return Err(Error::format(
            label,
            format!(
                "uses opset {opset}; qscope reads opsets {} to {}",
                OPSETS.start(),
                OPSETS.end()
            ),
        ));
    }
    Ok(())
}

/// The graph's initializers as constants, decoded in parallel; each one's raw bytes are
/// `release`d (the mapped file's pages) once decoded.
fn read_initializers(
    imp: &mut Importer,
    graph: &onnx_rs::ast::Graph<'_>,
    dir: Option<&Path>,
    release: &(dyn Fn(&[u8]) + Sync),
) -> Result<()> {
    use rayon::prelude::*;
    let label = imp.label.as_str();
    let decoded: Vec<Tensor> = graph
        .initializer
        .par_iter()
        .map(|init| {
            let t = tensor::to_tensor(init, dir).map_err(|m| {
                Error::tensor(
                    label,
                    crate::error::clip(init.name(), crate::error::NAME_MAX),
                    m,
                )
            });
            if let Some(raw) = init.as_raw() {
                release(raw);
            }
            t
        })
        .collect::<Result<_>>()?;
    for (init, t) in graph.initializer.iter().zip(decoded) {
        let v = imp.value(init.name());
        imp.consts.insert(v, t);
    }
    Ok(())
}

/// The graph inputs that are not initializers (older exporters list those as inputs too); at
/// least one.
fn read_inputs(imp: &mut Importer, graph: &onnx_rs::ast::Graph<'_>) -> Result<()> {
    for vi in &graph.input {
        if imp.by_name.contains_key(vi.name) {
            continue; // an initializer listed as an input (older exporters)
        }
        let gi = graph_input(&imp.label, vi)?;
        let v = imp.value(vi.name);
        imp.inputs.push(GraphInput { value: v, ..gi });
    }
    if imp.inputs.is_empty() {
        return Err(Error::format(
            &imp.label,
            "the graph has no input that is not an initializer",
        ));
    }
    Ok(())
}

/// The graph outputs, each produced by some node; at least one.
fn read_outputs(imp: &mut Importer, graph: &onnx_rs::ast::Graph<'_>) -> Result<()> {
    for vo in &graph.output {
        let v = *imp.by_name.get(vo.name).ok_or_else(|| {
            Error::format(
                &imp.label,
                format!(
                    "graph output '{}' is produced by no node",
                    crate::error::clip(vo.name, crate::error::NAME_MAX)
                ),
            )
        })?;
        imp.outputs.push(v);
        // A Q/DQ pair at a graph output: the tensor takes the output's name.
        if imp.values[v].name != vo.name {
            imp.values[v].name = vo.name.to_string();
            imp.by_name.insert(vo.name.to_string(), v);
        }
    }
    if imp.outputs.is_empty() {
        return Err(Error::format(&imp.label, "the graph has no output"));
    }
    Ok(())
}

/// What the file's Q/DQ nodes fixed, by the names of `model` (none without Q/DQ nodes): the
/// activation pairs, each weight layer's dequantized weights, and qscope's embedded
/// parameters file `params_json`.
fn qdq_import(imp: &Importer, model: &Model, params_json: Option<String>) -> Option<QdqImport> {
    imp.qdq.any().then(|| QdqImport {
        acts: imp
            .qdq
            .acts
            .iter()
            .map(|(v, a)| (model.values[*v].name.clone(), a.clone()))
            .collect(),
        weights: model
            .layers
            .iter()
            .filter(|l| l.op.has_weights())
            .filter_map(|l| {
                let (wv, t) = imp.weight_src.get(&l.name)?;
                Some((l.name.clone(), (imp.qdq.consts.get(wv)?.clone(), *t)))
            })
            .collect(),
        params_json,
    })
}

/// The input normalization that qscope's export wrote into the metadata.
fn parse_normalization(label: &str, json: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    #[derive(serde::Deserialize)]
    struct Norm {
        mean: Vec<f32>,
        std: Vec<f32>,
    }
    let n: Norm = serde_json::from_str(json).map_err(|e| {
        Error::format(
            label,
            format!("metadata '{}': {e}", crate::export::onnx::NORMALIZATION_KEY),
        )
    })?;
    if n.std.iter().any(|v| !v.is_normal() || *v < 0.0) || n.mean.iter().any(|v| !v.is_finite()) {
        return Err(Error::format(
            label,
            format!(
                "metadata '{}': std must be positive and finite, mean finite",
                crate::export::onnx::NORMALIZATION_KEY
            ),
        ));
    }
    Ok((n.mean, n.std))
}

/// A graph input's element type and per-sample shape (the first dimension is the batch).
fn graph_input(label: &str, vi: &ValueInfo<'_>) -> Result<GraphInput> {
    let bad = |m: String| {
        Error::tensor(
            label,
            crate::error::clip(vi.name, crate::error::NAME_MAX),
            m,
        )
    };
    let Some(TypeValue::Tensor(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("graph input is not a tensor".into()));
    };
    let dtype = match tt.elem_type {
        DataType::Float | DataType::Float16 | DataType::Double | DataType::Bfloat16 => DType::F32,
        DataType::Int64 | DataType::Int32 | DataType::Int8 | DataType::Uint8 | DataType::Int16 => {
            DType::I64
        }
        DataType::Bool => DType::Bool,
        other => return Err(bad(format!("graph input has element type {other:?}"))),
    };
    let dims: Vec<Option<usize>> = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Dimension::Value(v) if v > 0 => Some(v as usize),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if dims.is_empty() {
        return Err(bad(
            "graph input has no shape (qscope needs at least the batch axis)".into(),
        ));
    }
    Ok(GraphInput {
        value: 0,
        dtype,
        shape: dims[1..].to_vec(),
    })
}

/// Reads the nodes in file order, checking that every input was produced before.
fn read_nodes(
    imp: &mut Importer,
    nodes: &[onnx_rs::ast::Node<'_>],
    init_types: &HashMap<String, DataType>,
) -> Result<()> {
    let label = imp.label.clone();
    let mut names: HashMap<String, usize> = HashMap::new();
    for node in nodes {
        let op_type = node.op_type.as_str().to_string();
        let name = unique_node_name(&mut names, node, &op_type);
        let err = |m: String| Error::node(&label, &name, &op_type, m);
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(err(format!(
                "is in domain '{}', which qscope does not read",
                crate::error::clip(node.domain, crate::error::NAME_MAX)
            )));
        }
        let out_name = node
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| err("has no output".into()))?;
        if imp.by_name.contains_key(*out_name) {
            return Err(err(format!(
                "output '{}' is produced twice",
                crate::error::clip(out_name, crate::error::NAME_MAX)
            )));
        }
        if op_type == "QuantizeLinear" || op_type == "DequantizeLinear" {
            qdq::read(imp, node, &name, init_types).map_err(err)?;
            continue;
        }
        if imp.normalize
            && name.starts_with(crate::export::onnx::NORMALIZE_NODE)
            && (op_type == "Sub" || op_type == "Mul")
            && let Some(&x) = node.input.first().and_then(|i| imp.by_name.get(*i))
        {
            imp.by_name.insert(out_name.to_string(), x);
            continue;
        }
        if op_type == "Constant" {
            let t = constant_value(node).map_err(err)?;
            let v = imp.value(out_name);
            imp.consts.insert(v, t);
            continue;
        }
        let pending = convert::convert(node).map_err(err)?;
        if let Some(upper) = convert::auto_pad(&attrs::Attrs::of(node)).map_err(err)? {
            imp.auto_pad.insert(name.clone(), upper);
        }
        let inputs = node_inputs(imp, node).map_err(err)?;
        let output = imp.value(out_name);
        imp.nodes.push(RawNode {
            name,
            op_type,
            pending,
            inputs,
            output,
        });
    }
    Ok(())
}

/// The node's name, or its first output's (its op type without either), made unique by
/// `#2`, `#3`, … in `names` (counts per name so far).
fn unique_node_name(
    names: &mut HashMap<String, usize>,
    node: &onnx_rs::ast::Node<'_>,
    op_type: &str,
) -> String {
    let base = if !node.name.is_empty() {
        node.name.to_string()
    } else {
        node.output
            .first()
            .map_or_else(|| op_type.to_string(), |o| o.to_string())
    };
    let count = names.entry(base.clone()).or_insert(0);
    *count += 1;
    if *count == 1 {
        base
    } else {
        format!("{base}#{count}")
    }
}

/// The tensor of a Constant node: its `value`, `value_float`, `value_int` or `value_ints`.
fn constant_value(node: &onnx_rs::ast::Node<'_>) -> std::result::Result<Tensor, String> {
    let a = attrs::Attrs::of(node);
    Ok(match a.tensor("value") {
        Some(t) => tensor::to_tensor(t, None)?,
        None if a.has("value_float") => Tensor::f32(vec![], vec![a.float("value_float", 0.0)]),
        None if a.has("value_int") => Tensor::i64(vec![], vec![a.int("value_int", 0)]),
        None if a.has("value_ints") => {
            let v = a.ints("value_ints").unwrap_or_default();
            Tensor::i64(vec![v.len()], v)
        }
        None => {
            return Err("Constant without a value, value_float, value_int or value_ints".into());
        }
    })
}

/// The values a node reads (`None` for an empty name; trailing ones dropped), each produced
/// by an earlier node, an initializer or a graph input, and never a QuantizeLinear's output
/// directly.
fn node_inputs(
    imp: &Importer,
    node: &onnx_rs::ast::Node<'_>,
) -> std::result::Result<Vec<Option<ValueId>>, String> {
    let mut inputs = Vec::with_capacity(node.input.len());
    for inp in &node.input {
        if inp.is_empty() {
            inputs.push(None);
            continue;
        }
        if let Some((_, q, _)) = imp.qdq.pending.get(*inp) {
            return Err(format!(
                "reads the output of QuantizeLinear '{}' directly; qscope reads Q/DQ pairs (a DequantizeLinear after each QuantizeLinear)",
                q.node
            ));
        }
        let v = *imp.by_name.get(*inp).ok_or_else(|| {
            format!(
                "input '{}' is produced by no earlier node (a cycle, or a dangling name)",
                crate::error::clip(inp, crate::error::NAME_MAX)
            )
        })?;
        inputs.push(Some(v));
    }
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    Ok(inputs)
}
