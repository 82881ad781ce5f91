//! The quantized model file (formats.md §6): integer weights (4 and 2 bits packed), scales and
//! zero points, I32 biases, input and output activation parameters, and in `__metadata__` the
//! spec, the parameters and a compressed-tensors `quantization_config`; and reading it back into
//! a [`Model`] (dequantized weights) plus [`ModelParams`] (the stored integers, not
//! re-quantized) so that the integer engine gives the same outputs bit for bit.
//!
//! Notes on the layout:
//! - `L.bias` is at scale s_in · s_w(row); with group granularity s_w(row) is the largest group
//!   scale of the row (the accumulator's reference scale, as the integer engine uses it).
//! - The embedded spec names every layer explicitly and points a weight layer at `L.weight` and
//!   `L.bias`; a packed layer's `L.weight` is stored as `L.weight_packed` + `L.weight_shape`.
//!   Batchnorm is already folded into the weights, so the spec has no batchnorm layers.

use super::packing::{is_packed, pack, unpack, words_per_row};
use super::params_file::{ParamsFile, Syntax, WeightInts};
use super::st::{self, Tensor};
use crate::error::{Error, Result};
use crate::model::spec::{LayerSpec, Pair, Spec};
use crate::model::tensors::TensorFile;
use crate::model::{Model, Op, load_model_bytes, sha256_hex};
use crate::params::ModelParams;
use crate::quant::weights::QWeights;
use crate::quant::{Granularity, QParams, Scheme};
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};

/// Metadata key of the embedded spec (as in float model files, formats.md §1).
pub const SPEC_KEY: &str = "qscope.spec";
/// Metadata key of the embedded parameters (§5 JSON).
pub const PARAMS_KEY: &str = "qscope.params";
/// Metadata key of the compressed-tensors configuration.
pub const QUANT_CONFIG_KEY: &str = "quantization_config";

fn f32s(shape: Vec<usize>, v: &[f32]) -> Tensor {
    Tensor::f32(shape, v)
}

fn i32s(shape: Vec<usize>, v: &[i32]) -> Tensor {
    Tensor::i32(shape, v)
}

/// The qparams of the activation entering each weight layer (by model index), as the integer
/// engine chains them.
pub fn input_qparams(model: &Model, params: &ModelParams) -> HashMap<usize, Option<QParams>> {
    crate::engine::int::input_qparams(model, params)
}

/// The accumulator's reference weight scale of each row: the largest scale of its blocks.
pub(crate) fn row_ref_scales(q: &QWeights) -> Vec<f64> {
    (0..q.rows)
        .map(|r| {
            (0..q.groups())
                .map(|g| q.param(r, g).scale as f64)
                .fold(0.0f64, f64::max)
        })
        .collect()
}

/// Checks that a stored weight's shape is `[out, in]` or `[out, in, kh, kw]` with no 0-sized
/// dimension and a size that fits in memory arithmetic.
fn check_weight_dims(label: &str, name: &str, shape: &[usize]) -> Result<()> {
    let size = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if !matches!(shape.len(), 2 | 4)
        || shape.contains(&0)
        || size.is_none_or(|s| s > isize::MAX as usize / 4)
    {
        return Err(Error::tensor(
            label,
            name,
            format!(
                "has shape {shape:?}; a weight is [out, in] or [out, in, kh, kw] with no 0-sized dimension"
            ),
        ));
    }
    Ok(())
}

/// The integer bias the integer engine derives from a float bias (same arithmetic).
pub(crate) fn bias_to_int(bias: f32, acc_scale: f64) -> i32 {
    (bias as f64 / acc_scale)
        .round()
        .clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

/// Checks that every quantized layer's bias fits the i32 accumulator at scale s_in · s_w: the
/// one rule for evaluation and export (a bias that does not fit is refused, never clamped).
pub fn check_int_biases(model: &Model, params: &ModelParams) -> Result<()> {
    let inq = input_qparams(model, params);
    for lp in &params.layers {
        let (Some(wq), Some(Some(in_q))) = (&lp.weight, inq.get(&lp.index)) else {
            continue;
        };
        let Some(bias) = model.layers[lp.index].op.bias() else {
            continue;
        };
        let bias = wq.bias_or(bias.as_slice().expect("contiguous bias"));
        for (r, (&b, s_w)) in bias.iter().zip(row_ref_scales(&wq.q)).enumerate() {
            let acc = in_q.scale as f64 * s_w;
            if !(acc.is_finite() && acc > 0.0) {
                continue; // invalid scales are refused where the parameters are checked
            }
            let v = (b as f64 / acc).round();
            if v.is_nan() || v.abs() > i32::MAX as f64 {
                return Err(Error::config(
                    format!("layers.{}", lp.name),
                    format!(
                        "bias {b:e} of channel {r} does not fit the i32 accumulator at scale s_in*s_w = {acc:e} ({v:e} > 2^31-1); widen the layer's input or weight range, or keep it in float (--keep-float {})",
                        lp.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A float bias that the integer engine turns back into `b` (None if no f32 does).
fn int_to_bias(b: i32, acc_scale: f64) -> Option<f32> {
    let v = (b as f64 * acc_scale) as f32;
    (bias_to_int(v, acc_scale) == b).then_some(v)
}

/// The spec of the model as it is (batchnorm folded, every layer named, tensors `L.weight`).
pub fn spec_of(model: &Model) -> Spec {
    let opt = |v: &Vec<f32>| (!v.is_empty()).then(|| v.clone());
    let layers = model
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut s = LayerSpec {
                name: Some(l.name.clone()),
                op: l.op_type.clone(),
                ..Default::default()
            };
            let prev = model.layers[..i].last().map_or(0, |p| p.output);
            if l.data_input() != Some(prev) || l.inputs.len() > 1 {
                s.inputs = Some(
                    l.inputs
                        .iter()
                        .flatten()
                        .map(|&v| model.values[v].name.clone())
                        .collect(),
                );
            }
            match &l.op {
                Op::Linear { .. } => {
                    s.weight = Some(format!("{}.weight", l.name));
                    s.bias = Some(format!("{}.bias", l.name));
                }
                Op::Conv2d {
                    stride,
                    padding,
                    dilation,
                    groups,
                    ..
                } => {
                    s.weight = Some(format!("{}.weight", l.name));
                    s.bias = Some(format!("{}.bias", l.name));
                    s.stride = Some(Pair::Two([stride.0, stride.1]));
                    s.padding = Some(Pair::Two([padding[0], padding[1]]));
                    s.dilation =
                        (*dilation != (1, 1)).then_some(Pair::Two([dilation.0, dilation.1]));
                    s.groups = (*groups != 1).then_some(*groups);
                }
                Op::MaxPool2d { kernel, stride, .. } | Op::AvgPool2d { kernel, stride, .. } => {
                    s.kernel = Some(Pair::Two([kernel.0, kernel.1]));
                    s.stride = Some(Pair::Two([stride.0, stride.1]));
                }
                _ => s.op = l.op_type.clone(),
            }
            s
        })
        .collect();
    Spec {
        name: Some(model.name.clone()),
        input_shape: model.input_shape.clone(),
        input_mean: opt(&model.input_mean),
        input_std: opt(&model.input_std),
        layers,
    }
}

/// The full shape of a weight layer's tensor ([out, in] or [out, in, kh, kw]).
fn weight_shape(op: &Op) -> Vec<usize> {
    match op {
        Op::Linear { weight, .. } => weight.shape().to_vec(),
        Op::Conv2d { weight, .. } => weight.shape().to_vec(),
        Op::Embedding { table } => table.shape().to_vec(),
        _ => Vec::new(),
    }
}

fn scale_shape(q: &QWeights) -> Vec<usize> {
    match q.granularity {
        Granularity::PerTensor => vec![1],
        Granularity::PerChannel => vec![q.rows, 1],
        Granularity::Group(_) => vec![q.rows, q.groups()],
    }
}

/// The compressed-tensors `quantization_config` of `params`: one config group per distinct
/// (weights, input activations) setting, targets by layer name, float layers in `ignore`.
fn quantization_config(model: &Model, params: &ModelParams) -> serde_json::Value {
    use serde_json::{Value, json};
    let inq = input_qparams(model, params);
    let mut groups: Vec<(Value, Vec<String>)> = Vec::new();
    let mut ignore = Vec::new();
    let mut any_packed = false;
    for lp in &params.layers {
        let Some(wq) = &lp.weight else {
            ignore.push(lp.name.clone());
            continue;
        };
        let bits = wq.q.bits();
        any_packed |= is_packed(bits);
        let (strategy, group_size) = match wq.q.granularity {
            Granularity::PerTensor => ("tensor", Value::Null),
            Granularity::PerChannel => ("channel", Value::Null),
            Granularity::Group(n) => ("group", json!(n)),
        };
        let weights = json!({
            "num_bits": bits, "type": "int", "symmetric": wq.q.params[0].scheme == Scheme::Symmetric,
            "strategy": strategy, "group_size": group_size, "dynamic": false, "actorder": null,
        });
        let input = inq.get(&lp.index).copied().flatten().map_or(Value::Null, |q| {
            json!({"num_bits": q.bits, "type": "int", "symmetric": q.scheme == Scheme::Symmetric,
                   "strategy": "tensor", "group_size": null, "dynamic": false})
        });
        let cfg = json!({
            "format": if is_packed(bits) { "pack-quantized" } else { "int-quantized" },
            "weights": weights, "input_activations": input, "output_activations": null,
        });
        match groups.iter_mut().find(|(c, _)| *c == cfg) {
            Some((_, t)) => t.push(lp.name.clone()),
            None => groups.push((cfg, vec![lp.name.clone()])),
        }
    }
    let config_groups: serde_json::Map<String, Value> = groups
        .into_iter()
        .enumerate()
        .map(|(i, (mut cfg, targets))| {
            cfg["targets"] = json!(targets);
            (format!("group_{i}"), cfg)
        })
        .collect();
    json!({
        "quant_method": "compressed-tensors",
        "format": if any_packed { "pack-quantized" } else { "int-quantized" },
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
    })
}

/// The bytes of the quantized model file of `model` with `params`. The result is read back and
/// checked to reproduce `params` exactly before it is returned.
pub fn quantized_model_bytes(model: &Model, params: &ModelParams) -> Result<Vec<u8>> {
    let label = format!("quantized {}", model.name);
    ParamsFile::from_params(model, params)
        .resolve(&label, model, false, WeightInts::FromModel)
        .map_err(|e| {
            Error::format(
                &label,
                format!("refusing to write parameters that would not load back: {e}"),
            )
        })?;
    check_int_biases(model, params)?;
    let inq = input_qparams(model, params);
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for lp in &params.layers {
        let layer = &model.layers[lp.index];
        let l = &lp.name;
        let (w, rows, cols) = layer.op.weight_rows().expect("weight layer");
        // An embedding has no bias and reads integer ids (no input qparams).
        let gemm = layer.op.is_gemm();
        let model_bias = layer
            .op
            .bias()
            .map_or(&[][..], |b| b.as_slice().expect("contiguous"));
        let bias = match &lp.weight {
            Some(wq) => wq.bias_or(model_bias).to_vec(),
            None => model_bias.to_vec(),
        };
        let in_q = inq.get(&lp.index).copied().flatten();
        if let Some(q) = in_q {
            tensors.insert(format!("{l}.input_scale"), f32s(vec![1], &[q.scale]));
            tensors.insert(
                format!("{l}.input_zero_point"),
                i32s(vec![1], &[q.zero_point]),
            );
        }
        if let Some(a) = &lp.act {
            tensors.insert(
                format!("{l}.output_scale"),
                f32s(vec![1], &[a.qparams.scale]),
            );
            tensors.insert(
                format!("{l}.output_zero_point"),
                i32s(vec![1], &[a.qparams.zero_point]),
            );
        }
        let Some(wq) = &lp.weight else {
            tensors.insert(format!("{l}.weight"), f32s(weight_shape(&layer.op), w));
            if gemm {
                tensors.insert(format!("{l}.bias"), f32s(vec![rows], &bias));
            }
            continue;
        };
        if lp.act.is_none() || (gemm && in_q.is_none()) {
            return Err(Error::format(
                &label,
                format!(
                    "layer '{l}' has quantized weights but no input or output qparams; it cannot run in integers"
                ),
            ));
        };
        let q = &wq.q;
        let bits = q.bits();
        let shape = weight_shape(&layer.op);
        if is_packed(bits) {
            tensors.insert(
                format!("{l}.weight_packed"),
                i32s(
                    vec![rows, words_per_row(bits, cols)],
                    &pack(&q.q, rows, cols, bits),
                ),
            );
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            tensors.insert(
                format!("{l}.weight_shape"),
                Tensor::i64(vec![shape.len()], &dims),
            );
        } else {
            tensors.insert(format!("{l}.weight"), Tensor::i8(shape, &q.q));
        }
        let scales: Vec<f32> = q.params.iter().map(|p| p.scale).collect();
        let zps: Vec<i32> = q.params.iter().map(|p| p.zero_point).collect();
        tensors.insert(format!("{l}.weight_scale"), f32s(scale_shape(q), &scales));
        tensors.insert(format!("{l}.weight_zero_point"), i32s(scale_shape(q), &zps));
        let Some(in_q) = in_q.filter(|_| gemm) else {
            continue;
        };
        let refs = row_ref_scales(q);
        let ibias: Vec<i32> = (0..rows)
            .map(|r| bias_to_int(bias[r], in_q.scale as f64 * refs[r]))
            .collect();
        tensors.insert(format!("{l}.bias"), i32s(vec![rows], &ibias));
    }
    let mut pf = ParamsFile::from_params(model, params);
    // The embedded graph or spec is the model SmoothQuant changed: nothing to re-apply.
    pf.smoothquant.clear();
    // The integer weights are the file's tensors: the embedded parameters need not repeat them.
    for w in pf.layers.iter_mut().filter_map(|l| l.weight.as_mut()) {
        w.weights_int = None;
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    if model.spec().is_some() {
        meta.insert(SPEC_KEY.to_string(), spec_of(model).to_toml());
    } else {
        let (graph, consts) = super::onnx::embed::embed(model)?;
        meta.insert(super::onnx::embed::GRAPH_KEY.to_string(), graph);
        tensors.extend(consts);
    }
    meta.insert(PARAMS_KEY.to_string(), pf.to_json());
    meta.insert(
        QUANT_CONFIG_KEY.to_string(),
        quantization_config(model, params).to_string(),
    );
    meta.insert(
        "qscope.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    let bytes = st::serialize(&tensors, &meta);
    // Never hand out a file that does not reproduce the parameters.
    let back = load_quantized_bytes(&label, &bytes)?;
    check_same(&label, params, &back.params)?;
    Ok(bytes)
}

fn check_same(label: &str, a: &ModelParams, b: &ModelParams) -> Result<()> {
    let qp = |p: &ModelParams| {
        p.points
            .iter()
            .map(|e| (e.name.clone(), e.act.qparams))
            .collect::<Vec<_>>()
    };
    let same = qp(a) == qp(b)
        && a.layers.len() == b.layers.len()
        && a.layers.iter().zip(&b.layers).all(|(x, y)| {
            x.index == y.index
                && x.act.as_ref().map(|q| q.qparams) == y.act.as_ref().map(|q| q.qparams)
                && match (&x.weight, &y.weight) {
                    (Some(p), Some(q)) => p.q.q == q.q.q && p.q.params == q.q.params,
                    (None, None) => true,
                    _ => false,
                }
        });
    if same {
        Ok(())
    } else {
        Err(Error::format(
            label,
            "the written file does not read back to the same parameters (a bug; nothing was written)",
        ))
    }
}

/// Whether safetensors `bytes` hold a quantized model (§6) rather than float weights.
pub fn is_quantized_model(bytes: &[u8]) -> bool {
    match TensorFile::parse("", bytes) {
        Ok(f) => {
            f.metadata(PARAMS_KEY).is_some()
                || f.names().iter().any(|n| n.ends_with(".weight_scale"))
        }
        Err(_) => false,
    }
}

/// A quantized model read back: the model with dequantized weights, and its parameters.
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    /// The model; quantized layers hold their dequantized weights (there are no float weights).
    /// Its `sha256` is that of the float weights the parameters were made for (as in the
    /// embedded parameters), so parameters exported from it load on the float model.
    pub model: Model,
    /// sha256 of the quantized file itself.
    pub file_sha256: String,
    /// The stored parameters, integers as stored.
    pub params: ModelParams,
}

/// Reads a quantized model file; `label` names it in errors.
pub fn load_quantized_bytes(label: &str, bytes: &[u8]) -> Result<QuantizedModel> {
    let file = TensorFile::parse(label, bytes)?;
    let spec_key = SPEC_KEY;
    let graph = file.metadata(super::onnx::embed::GRAPH_KEY);
    let spec = match (file.metadata(spec_key), graph) {
        (Some(text), _) => Some(Spec::parse(
            &format!("{label} (embedded {spec_key})"),
            text,
        )?),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(Error::format(
                label,
                format!(
                    "a quantized model needs its spec in __metadata__ '{spec_key}' (or its graph in '{}')",
                    super::onnx::embed::GRAPH_KEY
                ),
            ));
        }
    };
    let params_text = file
        .metadata(PARAMS_KEY)
        .ok_or_else(|| Error::format(label, format!("a quantized model needs its parameters in __metadata__ '{PARAMS_KEY}' (bits and schemes are not in the tensors)")))?;
    let params_label = format!("{label} (embedded {PARAMS_KEY})");
    let pf = ParamsFile::parse(&params_label, params_text, Syntax::Json)?;
    let entry = |name: &str| pf.layers.iter().find(|e| e.name == name);

    // Pass 1: a float model of the right shapes (quantized layers get zero weights for now).
    let mut ints: HashMap<String, Vec<i8>> = HashMap::new();
    let mut float: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut int_bias: HashMap<String, Vec<i32>> = HashMap::new();
    let names: Vec<String> = match &spec {
        Some(spec) => spec
            .layers
            .iter()
            .filter(|l| l.op == "linear" || l.op == "conv2d")
            .map(|ls| {
                ls.name
                    .clone()
                    .ok_or_else(|| Error::spec(label, "a quantized model's spec names every layer"))
            })
            .collect::<Result<_>>()?,
        None => pf.layers.iter().map(|l| l.name.clone()).collect(),
    };
    for name in names {
        let wname = format!("{name}.weight");
        let bname = format!("{name}.bias");
        if !file.contains(&format!("{name}.weight_scale")) {
            let w = file.float(&wname)?;
            float.insert(wname.clone(), f32s(w.shape, &w.data));
            if file.contains(&bname) {
                let b = file.float(&bname)?;
                float.insert(bname, f32s(b.shape, &b.data));
            }
            continue;
        }
        let bits = entry(&name)
            .and_then(|e| e.weight.as_ref())
            .map(|w| w.bits)
            .ok_or_else(|| {
                Error::format(
                    &params_label,
                    format!(
                        "layer '{name}' has a weight_scale tensor but no quantized weight entry"
                    ),
                )
            })?;
        let (shape, q) = if file.contains(&format!("{name}.weight_packed")) {
            let sname = format!("{name}.weight_shape");
            let (_, dims) = file.int(&sname)?;
            let shape: Vec<usize> = dims
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(0))
                .collect();
            if dims.iter().any(|&d| d <= 0) {
                return Err(Error::tensor(
                    label,
                    &sname,
                    format!("{dims:?} is not a weight shape"),
                ));
            }
            check_weight_dims(label, &sname, &shape)?;
            let bits = u8::try_from(bits)
                .ok()
                .filter(|&b| is_packed(b))
                .ok_or_else(|| {
                    Error::tensor(
                        label,
                        format!("{name}.weight_packed"),
                        format!("packed weights need 4 or 2 bits, the parameters say {bits}"),
                    )
                })?;
            let pname = format!("{name}.weight_packed");
            let (dtype, pshape) = file.info(&pname)?;
            let (rows, cols) = (shape[0], shape[1..].iter().product::<usize>());
            let want = vec![rows, words_per_row(bits, cols)];
            if dtype != Dtype::I32 || pshape != want {
                return Err(Error::tensor(
                    label,
                    &pname,
                    format!(
                        "is {dtype:?} {pshape:?}, expected I32 {want:?} for shape {shape:?} at {bits} bits"
                    ),
                ));
            }
            let (_, words) = file.int(&pname)?;
            let words: Vec<i32> = words.into_iter().map(|w| w as i32).collect();
            (shape, unpack(&words, rows, cols, bits))
        } else {
            let (dtype, shape) = file.info(&wname)?;
            if dtype != Dtype::I8 {
                return Err(Error::tensor(
                    label,
                    &wname,
                    format!("is {dtype:?}; a quantized weight is I8 (or packed I32)"),
                ));
            }
            check_weight_dims(label, &wname, &shape)?;
            (shape, file.raw(&wname)?.iter().map(|&b| b as i8).collect())
        };
        ints.insert(name.clone(), q);
        let n: usize = shape.iter().product();
        float.insert(wname, f32s(shape.clone(), &vec![0.0; n]));
        if !file.contains(&bname) {
            continue; // an embedding (checked against the graph in pass 2)
        }
        let (bdtype, bshape) = file.info(&bname)?;
        if bdtype != Dtype::I32 || bshape != [shape[0]] {
            return Err(Error::tensor(
                label,
                &bname,
                format!("is {bdtype:?} {bshape:?}, expected I32 [{}]", shape[0]),
            ));
        }
        let (_, b) = file.int(&bname)?;
        int_bias.insert(name.clone(), b.into_iter().map(|v| v as i32).collect());
        float.insert(bname, f32s(vec![shape[0]], &vec![0.0; shape[0]]));
    }
    let mut model = match (&spec, graph) {
        (Some(spec), _) => {
            let spec_text = spec.to_toml();
            let shell = st::serialize(&float, &BTreeMap::new());
            let name = spec.name.clone().unwrap_or_else(|| "model".into());
            load_model_bytes(
                label,
                &name,
                &shell,
                Some((&format!("{label} (embedded {spec_key})"), &spec_text)),
            )?
        }
        (None, graph) => {
            let shapes = float
                .iter()
                .filter_map(|(k, t)| {
                    Some((k.strip_suffix(".weight")?.to_string(), t.shape.clone()))
                })
                .collect();
            let b64 = graph.expect("checked above");
            let mut m = super::onnx::embed::model_from_embedding(
                label,
                &pf.model.name,
                &file,
                b64,
                &shapes,
            )?;
            // Float layers: their stored weights (quantized ones are filled in below).
            for (i, l) in m.layers.iter_mut().enumerate() {
                let Some(w) = float.get(&format!("{}.weight", l.name)) else {
                    continue;
                };
                if ints.contains_key(&l.name) {
                    continue;
                }
                if let Op::Embedding { table } = &mut l.op {
                    if table.len() != w.len_f32() {
                        return Err(Error::tensor(
                            label,
                            format!("{}.weight", l.name),
                            "does not fit the embedded graph's node",
                        ));
                    }
                    let t = table.as_slice_mut().expect("standard layout");
                    t.copy_from_slice(&w.to_f32());
                    continue;
                }
                let Some(b) = float.get(&format!("{}.bias", l.name)) else {
                    continue;
                };
                let (dw, db) = l.op.weight_bias_mut().ok_or_else(|| {
                    Error::format(label, format!("node {i} '{}' holds no weights", l.name))
                })?;
                if dw.len() != w.len_f32() || db.len() != b.len_f32() {
                    return Err(Error::tensor(
                        label,
                        format!("{}.weight", l.name),
                        "does not fit the embedded graph's node",
                    ));
                }
                dw.copy_from_slice(&w.to_f32());
                db.copy_from_slice(&b.to_f32());
            }
            m
        }
    };
    model.sha256 = pf.model.sha256.clone();

    // The parameters, from the stored integers.
    let get = |n: &str| ints.get(n).cloned();
    let params = pf
        .resolve(&params_label, &model, false, WeightInts::Stored(&get))?
        .params;

    // Pass 2: tensors agree with the parameters; dequantized weights and float biases.
    let inq = input_qparams(&model, &params);
    for lp in &params.layers {
        let l = &lp.name;
        let check_q = |what: &str, q: Option<QParams>| -> Result<()> {
            let (sname, zname) = (
                format!("{l}.{what}_scale"),
                format!("{l}.{what}_zero_point"),
            );
            if !file.contains(&sname) {
                return match q {
                    None => Ok(()),
                    Some(_) => Err(Error::tensor(
                        label,
                        &sname,
                        format!(
                            "is missing (and {zname}): {PARAMS_KEY} gives layer '{l}' {what} qparams, a quantized model stores them as tensors"
                        ),
                    )),
                };
            }
            let s = file.float(&sname)?.data;
            let (_, z) = file.int(&zname)?;
            match q {
                Some(q) if s == [q.scale] && z == [q.zero_point as i64] => Ok(()),
                _ => Err(Error::tensor(
                    label,
                    &sname,
                    format!(
                        "{s:?} / zero point {z:?} disagree with {PARAMS_KEY} ({:?})",
                        q.map(|q| (q.scale, q.zero_point))
                    ),
                )),
            }
        };
        check_q("input", inq.get(&lp.index).copied().flatten())?;
        check_q("output", lp.act.as_ref().map(|a| a.qparams))?;
        let Some(wq) = &lp.weight else { continue };
        let q = &wq.q;
        let sname = format!("{l}.weight_scale");
        let s = file.float(&sname)?;
        let (zshape, z) = file.int(&format!("{l}.weight_zero_point"))?;
        let ok = s.shape == scale_shape(q)
            && zshape == s.shape
            && s.data.iter().zip(&q.params).all(|(a, p)| *a == p.scale)
            && z.iter()
                .zip(&q.params)
                .all(|(a, p)| *a == p.zero_point as i64);
        if !ok {
            return Err(Error::tensor(
                label,
                &sname,
                format!(
                    "scales or zero points (shape {:?}) disagree with {PARAMS_KEY}",
                    s.shape
                ),
            ));
        }
        let op = &mut model.layers[lp.index].op;
        if !op.is_gemm() {
            if int_bias.contains_key(l.as_str()) {
                return Err(Error::tensor(
                    label,
                    format!("{l}.bias"),
                    "is stored for an embedding, which has no bias",
                ));
            }
            op.weights_mut()
                .expect("weight layer")
                .copy_from_slice(&q.dequantize());
            continue;
        }
        let in_q = inq.get(&lp.index).copied().flatten().ok_or_else(|| {
            Error::tensor(
                label,
                format!("{l}.input_scale"),
                "an integer layer needs its input's qparams",
            )
        })?;
        let refs = row_ref_scales(q);
        let ib = int_bias.get(l.as_str()).ok_or_else(|| {
            Error::tensor(
                label,
                format!("{l}.bias"),
                "is missing: an integer layer stores its bias",
            )
        })?;
        let mut fb = Vec::with_capacity(ib.len());
        for (r, &b) in ib.iter().enumerate() {
            fb.push(int_to_bias(b, in_q.scale as f64 * refs[r]).ok_or_else(|| {
                Error::tensor(
                    label,
                    format!("{l}.bias"),
                    format!("integer bias {b} of channel {r} is too large to reproduce"),
                )
            })?);
        }
        let (w, b) = model.layers[lp.index]
            .op
            .weight_bias_mut()
            .expect("weight layer");
        w.copy_from_slice(&q.dequantize());
        b.copy_from_slice(&fb);
    }
    model.notes.push(format!("{label}: a quantized model (no float weights): the integer engine runs from the stored integers, float-side figures are null"));
    Ok(QuantizedModel {
        model,
        params,
        file_sha256: sha256_hex(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_biases_come_back_exactly() {
        for &acc in &[1e-5f64, 3.7e-4, 0.02, 1.0, 1.3e-7] {
            for &b in &[0i32, 1, -1, 12345, -987654, 4_000_000, -8_000_000] {
                let v = int_to_bias(b, acc).expect("representable");
                assert_eq!(bias_to_int(v, acc), b);
            }
        }
    }
}
