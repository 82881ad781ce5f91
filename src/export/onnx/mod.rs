//! ONNX export: the model graph as an ONNX file, in float or with the chosen quantization as
//! QuantizeLinear/DequantizeLinear (QDQ) nodes that ONNX Runtime, TensorRT and NPU compilers
//! read (formats.md §6b). Opset 21; node and tensor names are the model's.

pub mod embed;
pub mod proto;
pub mod qdq;
pub mod writer;

pub use qdq::QdqOptions;

use crate::engine::int::{input_qparams, point_qparams, source_q};
use crate::error::Result;
use crate::model::{Model, Op};
use crate::params::ModelParams;
use onnx_rs::ast::DataType;
use proto::OIo;
use qdq::Layout;
use std::collections::HashMap;
use writer::Writer;

/// Metadata key holding the qscope parameters file (formats.md §5) the Q/DQ nodes came from,
/// so that qscope reads back bit widths, strategies and ranges that Q/DQ cannot say.
pub const PARAMS_KEY: &str = "qscope.params";
/// Metadata key holding the input normalization written as the graph's first nodes
/// (JSON `{"mean": [..], "std": [..]}`).
pub const NORMALIZATION_KEY: &str = "qscope.input_normalization";
/// Name prefix of the nodes that normalize the input.
pub const NORMALIZE_NODE: &str = "qscope_normalize";

/// The ONNX bytes of `model`: float, or with `params` as Q/DQ.
pub fn onnx_model_bytes(
    model: &Model,
    params: Option<&ModelParams>,
    opts: QdqOptions,
) -> Result<Vec<u8>> {
    Ok(onnx_graph(model, params, opts)?.0.encode())
}

/// The ONNX graph of `model` (float, or with `params` as Q/DQ) and the names of its float
/// weight-layer initializers.
pub fn onnx_graph(
    model: &Model,
    params: Option<&ModelParams>,
    opts: QdqOptions,
) -> Result<(proto::OGraph, Vec<String>)> {
    let mut w = Writer::new(model);
    w.constants();
    w.inputs();
    normalization(&mut w);
    let (points, in_qs) = match params {
        Some(p) => (point_qparams(model, p), input_qparams(model, p)),
        None => (HashMap::new(), HashMap::new()),
    };
    for gi in &model.inputs {
        if let Some(q) = points.get(&gi.value) {
            qdq::point(&mut w, gi.value, *q, opts, None)?;
        }
    }
    for (i, l) in model.layers.iter().enumerate() {
        let v = l.output;
        let q = points.get(&v).copied().or_else(|| {
            // A Q/DQ with the same qparams after an op that keeps them (MaxPool, Reshape, …)
            // is lossless and lets a runtime keep the tensor in integers.
            (l.op.keeps_qparams() && !points.is_empty())
                .then(|| source_q(model, &points, v))
                .flatten()
        });
        let is_output = model.outputs.contains(&v);
        let out = match (q.is_some(), is_output) {
            (true, true) => w.fresh(&format!("{}_float", model.values[v].name)),
            _ => model.values[v].name.clone(),
        };
        if l.op.has_weights() {
            let lp = params.and_then(|p| p.by_index(i));
            let wq = lp.and_then(|lp| lp.weight.as_ref());
            let in_q = in_qs.get(&i).copied().flatten();
            weight_op(&mut w, i, &out, wq, in_q, opts)?;
        } else {
            w.plain_op(l, &out)?;
        }
        w.redirect(v, out);
        if let Some(q) = q {
            let keep = is_output.then(|| model.values[v].name.clone());
            qdq::point(&mut w, v, q, opts, keep)?;
        }
    }
    for &o in &model.outputs {
        w.g.outputs.push(OIo {
            name: model.values[o].name.clone(),
            dtype: DataType::Float,
            dims: None,
        });
    }
    if let Some(p) = params {
        let mut file = crate::export::ParamsFile::from_params(model, p);
        // The graph written is the model SmoothQuant changed: nothing to re-apply on reading.
        file.smoothquant.clear();
        w.g.metadata.push((PARAMS_KEY.into(), file.to_json()));
    }
    Ok((w.g, w.weight_inits))
}

/// The input normalization as the graph's first nodes: (x − mean) · (1/std) per channel, as
/// qscope computes it, so the file takes the raw data qscope takes.
fn normalization(w: &mut Writer) {
    let model = w.model;
    let (Some((mean, inv)), Some(gi)) = (model.normalization(), model.inputs.first()) else {
        return;
    };
    let channels = mean.len();
    let dims: Vec<usize> = if model.input_shape.len() == 3 {
        vec![channels, 1, 1]
    } else {
        vec![1]
    };
    let x = w.read(gi.value);
    let m = w.init(proto::OTensor::f32(
        &format!("{NORMALIZE_NODE}_mean"),
        &dims,
        &mean,
    ));
    let s = w.init(proto::OTensor::f32(
        &format!("{NORMALIZE_NODE}_inv_std"),
        &dims,
        &inv,
    ));
    let centered = w.fresh(&format!("{x}_centered"));
    let normalized = w.fresh(&format!("{x}_normalized"));
    w.node(
        &format!("{NORMALIZE_NODE}_sub"),
        "Sub",
        vec![x, m],
        vec![centered.clone()],
        vec![],
    );
    w.node(
        &format!("{NORMALIZE_NODE}_mul"),
        "Mul",
        vec![centered, s],
        vec![normalized.clone()],
        vec![],
    );
    w.redirect(gi.value, normalized);
    let json = serde_json::json!({ "mean": model.input_mean, "std": model.input_std });
    w.g.metadata
        .push((NORMALIZATION_KEY.into(), json.to_string()));
}

/// Writes weight layer `i` (Conv, Gemm, MatMul + Add over a rank > 2 input, or the Gather of an
/// embedding) to output `out`.
fn weight_op(
    w: &mut Writer,
    i: usize,
    out: &str,
    wq: Option<&crate::params::WeightQuant>,
    in_q: Option<crate::quant::QParams>,
    opts: QdqOptions,
) -> Result<()> {
    let l = &w.model.layers[i];
    let x = w.read(l.data_input().expect("a weight op has an input"));
    let name = l.name.clone();
    match &l.op {
        Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
            dilation,
            groups,
        } => {
            let (o, ci, kh, kw) = weight.dim();
            let wb = (
                weight.as_slice().expect("standard layout"),
                bias.as_slice().expect("contiguous"),
            );
            let (wn, bn) = qdq::weights(w, l, Layout::Conv([o, ci, kh, kw]), wb, wq, in_q, opts)?;
            let ints = |v: &[usize]| proto::AttrValue::Ints(v.iter().map(|&x| x as i64).collect());
            w.node(
                &name,
                "Conv",
                vec![x, wn, bn],
                vec![out.to_string()],
                vec![
                    ("kernel_shape", ints(&[kh, kw])),
                    ("strides", ints(&[stride.0, stride.1])),
                    ("pads", ints(padding)),
                    ("dilations", ints(&[dilation.0, dilation.1])),
                    ("group", proto::AttrValue::Int(*groups as i64)),
                ],
            );
        }
        Op::Linear { weight, bias } => {
            let wb = (
                weight.as_slice().expect("standard layout"),
                bias.as_slice().expect("contiguous"),
            );
            if l.in_shape.len() <= 1 {
                let (wn, bn) = qdq::weights(w, l, Layout::Gemm, wb, wq, in_q, opts)?;
                w.node(
                    &name,
                    "Gemm",
                    vec![x, wn, bn],
                    vec![out.to_string()],
                    vec![("transB", proto::AttrValue::Int(1))],
                );
            } else {
                let (wn, bn) = qdq::weights(w, l, Layout::MatMul, wb, wq, in_q, opts)?;
                let product = w.fresh(&format!("{name}_product"));
                w.node(&name, "MatMul", vec![x, wn], vec![product.clone()], vec![]);
                w.node(
                    &format!("{name}_bias_add"),
                    "Add",
                    vec![product, bn],
                    vec![out.to_string()],
                    vec![],
                );
            }
        }
        Op::Embedding { table } => {
            let tn = qdq::table(w, l, table, wq, opts)?;
            w.node(
                &name,
                "Gather",
                vec![tn, x],
                vec![out.to_string()],
                vec![("axis", proto::AttrValue::Int(0))],
            );
        }
        _ => unreachable!("only conv, linear and embedding hold weights"),
    }
    Ok(())
}
