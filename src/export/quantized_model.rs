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
use crate::model::{Layer, Model, Op, load_model_bytes, sha256_hex};
use crate::params::{LayerParams, ModelParams};
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

/// An F32 tensor of `shape` holding `v`.
fn f32s(shape: Vec<usize>, v: &[f32]) -> Tensor {
    Tensor::f32(shape, v)
}

/// An I32 tensor of `shape` holding `v`.
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

/// The shape of a weight's scale and zero-point tensors: [1], [rows, 1] or [rows, groups].
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
    check_exportable(&label, model, params)?;
    let inq = input_qparams(model, params);
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for lp in &params.layers {
        let in_q = inq.get(&lp.index).copied().flatten();
        tensors.extend(layer_tensors(&label, &model.layers[lp.index], lp, in_q)?);
    }
    let meta = file_metadata(model, params, &mut tensors)?;
    let bytes = st::serialize(&tensors, &meta);
    // Never hand out a file that does not reproduce the parameters.
    let back = load_quantized_bytes(&label, &bytes)?;
    check_same(&label, params, &back.params)?;
    Ok(bytes)
}

/// Checks, before any tensor is made, that `params` would load back on `model` and that every
/// quantized layer's bias fits the i32 accumulator.
fn check_exportable(label: &str, model: &Model, params: &ModelParams) -> Result<()> {
    ParamsFile::from_params(model, params)
        .resolve(label, model, false, WeightInts::FromModel)
        .map_err(|e| {
            Error::format(
                label,
                format!("refusing to write parameters that would not load back: {e}"),
            )
        })?;
    check_int_biases(model, params)
}

/// The tensors of one weight layer as `lp` quantizes it (`in_q`: its input's qparams): the
/// activation qparams, then float weights and bias for a float layer, else the integer weights
/// with their scales and zero points and the I32 bias.
fn layer_tensors(
    label: &str,
    layer: &Layer,
    lp: &LayerParams,
    in_q: Option<QParams>,
) -> Result<BTreeMap<String, Tensor>> {
    let l = &lp.name;
    let (w, rows, _) = layer.op.weight_rows().expect("weight layer");
    // An embedding has no bias and reads integer ids (no input qparams).
    let gemm = layer.op.is_gemm();
    let model_bias = layer
        .op
        .bias()
        .map_or(&[][..], |b| b.as_slice().expect("contiguous"));
    let bias = match &lp.weight {
        Some(wq) => wq.bias_or(model_bias),
        None => model_bias,
    };
    let mut tensors = act_qparams_tensors(lp, in_q);
    let Some(wq) = &lp.weight else {
        tensors.insert(format!("{l}.weight"), f32s(weight_shape(&layer.op), w));
        if gemm {
            tensors.insert(format!("{l}.bias"), f32s(vec![rows], bias));
        }
        return Ok(tensors);
    };
    if lp.act.is_none() || (gemm && in_q.is_none()) {
        return Err(Error::format(
            label,
            format!(
                "layer '{l}' has quantized weights but no input or output qparams; it cannot run in integers"
            ),
        ));
    }
    tensors.extend(quantized_weight_tensors(l, &layer.op, &wq.q));
    if let Some(in_q) = in_q.filter(|_| gemm) {
        let refs = row_ref_scales(&wq.q);
        let ibias: Vec<i32> = (0..rows)
            .map(|r| bias_to_int(bias[r], in_q.scale as f64 * refs[r]))
            .collect();
        tensors.insert(format!("{l}.bias"), i32s(vec![rows], &ibias));
    }
    Ok(tensors)
}

/// The scale and zero-point tensors of layer `lp`'s input (`in_q`) and output activations,
/// where it has them.
fn act_qparams_tensors(lp: &LayerParams, in_q: Option<QParams>) -> BTreeMap<String, Tensor> {
    let l = &lp.name;
    let mut tensors = BTreeMap::new();
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
    tensors
}

/// The integer weight tensors of layer `l` (op `op`, quantized as `q`): I8 `L.weight`, or at 4
/// and 2 bits `L.weight_packed` + `L.weight_shape`; and `L.weight_scale`, `L.weight_zero_point`.
fn quantized_weight_tensors(l: &str, op: &Op, q: &QWeights) -> BTreeMap<String, Tensor> {
    let (_, rows, cols) = op.weight_rows().expect("weight layer");
    let bits = q.bits();
    let shape = weight_shape(op);
    let mut tensors = BTreeMap::new();
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
    tensors
}

/// The parameters as the file embeds them: those of `params`, less what the file's model and
/// tensors already hold.
fn embedded_params_file(model: &Model, params: &ModelParams) -> ParamsFile {
    let mut pf = ParamsFile::from_params(model, params);
    // The embedded graph or spec is the model SmoothQuant changed: nothing to re-apply.
    pf.smoothquant.clear();
    // The integer weights are the file's tensors: the embedded parameters need not repeat them.
    for w in pf.layers.iter_mut().filter_map(|l| l.weight.as_mut()) {
        w.weights_int = None;
    }
    pf
}

/// The file's `__metadata__`: the spec (or, for a model without one, the embedded graph, whose
/// constants are added to `tensors`), the parameters, the compressed-tensors configuration and
/// the version.
fn file_metadata(
    model: &Model,
    params: &ModelParams,
    tensors: &mut BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, String>> {
    let pf = embedded_params_file(model, params);
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
    Ok(meta)
}

/// Checks that `b`, read back from a written file, has the qparams and integers of `a`.
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
    let structure = embedded_structure(label, &file)?;
    let loading = Loading::new(label, &file)?;
    // Pass 1: a float model of the right shapes (quantized layers get zero weights for now).
    let stored = loading.read_layer_tensors(&structure)?;
    let mut model = loading.build_model(&structure, &stored)?;
    // The parameters, from the stored integers.
    let params = loading.stored_params(&model, &stored.ints)?;
    // Pass 2: tensors agree with the parameters; dequantized weights and float biases.
    loading.apply_stored_integers(&mut model, &params, &stored.int_bias)?;
    model.notes.push(format!("{label}: a quantized model (no float weights): the integer engine runs from the stored integers, float-side figures are null"));
    Ok(QuantizedModel {
        model,
        params,
        file_sha256: sha256_hex(bytes),
    })
}

/// What describes a quantized model's layers in its `__metadata__`.
enum Structure<'f> {
    /// The embedded spec (`SPEC_KEY`).
    Spec(Spec),
    /// The embedded graph in base64 (`GRAPH_KEY`), for a model that has no spec.
    Graph(&'f str),
}

/// The structure `file` embeds: its spec if it has one (even when it also has a graph), else its
/// graph; a file with neither is refused.
fn embedded_structure<'f>(label: &str, file: &'f TensorFile) -> Result<Structure<'f>> {
    let graph_key = super::onnx::embed::GRAPH_KEY;
    match (file.metadata(SPEC_KEY), file.metadata(graph_key)) {
        (Some(text), _) => Ok(Structure::Spec(Spec::parse(
            &format!("{label} (embedded {SPEC_KEY})"),
            text,
        )?)),
        (None, Some(b64)) => Ok(Structure::Graph(b64)),
        (None, None) => Err(Error::format(
            label,
            format!(
                "a quantized model needs its spec in __metadata__ '{SPEC_KEY}' (or its graph in '{graph_key}')"
            ),
        )),
    }
}

/// The tensors pass 1 reads from a quantized model file.
#[derive(Default)]
struct StoredTensors {
    /// Float weights and biases by tensor name, to build the model from: the stored ones of
    /// float layers, zeros of the right shapes for quantized layers.
    float: BTreeMap<String, Tensor>,
    /// The integer weights of each quantized layer, by layer name.
    ints: HashMap<String, Vec<i8>>,
    /// The integer biases of each quantized layer that stores one, by layer name.
    int_bias: HashMap<String, Vec<i32>>,
}

/// A quantized model file being read, with its embedded parameters.
struct Loading<'a> {
    /// Names the file in errors.
    label: &'a str,
    /// The file's tensors and metadata.
    file: &'a TensorFile<'a>,
    /// The embedded parameters (§5 JSON); bits and schemes are not in the tensors.
    pf: ParamsFile,
    /// Names the embedded parameters in errors.
    params_label: String,
}

impl<'a> Loading<'a> {
    /// Parses the parameters embedded in `file`, which a quantized model needs.
    fn new(label: &'a str, file: &'a TensorFile<'a>) -> Result<Self> {
        let params_text = file
            .metadata(PARAMS_KEY)
            .ok_or_else(|| Error::format(label, format!("a quantized model needs its parameters in __metadata__ '{PARAMS_KEY}' (bits and schemes are not in the tensors)")))?;
        let params_label = format!("{label} (embedded {PARAMS_KEY})");
        let pf = ParamsFile::parse(&params_label, params_text, Syntax::Json)?;
        Ok(Loading {
            label,
            file,
            pf,
            params_label,
        })
    }

    /// The names of the weight layers to read: the spec's linear and conv2d layers (a quantized
    /// model's spec names every layer), or with a graph the embedded parameters' layers.
    fn weight_layer_names(&self, structure: &Structure) -> Result<Vec<String>> {
        match structure {
            Structure::Spec(spec) => spec
                .layers
                .iter()
                .filter(|l| l.op == "linear" || l.op == "conv2d")
                .map(|ls| {
                    ls.name.clone().ok_or_else(|| {
                        Error::spec(self.label, "a quantized model's spec names every layer")
                    })
                })
                .collect(),
            Structure::Graph(_) => Ok(self.pf.layers.iter().map(|l| l.name.clone()).collect()),
        }
    }

    /// Pass 1: the tensors of every weight layer, in the order of its names; a layer with a
    /// `weight_scale` tensor is a quantized one.
    fn read_layer_tensors(&self, structure: &Structure) -> Result<StoredTensors> {
        let mut stored = StoredTensors::default();
        for name in self.weight_layer_names(structure)? {
            if self.file.contains(&format!("{name}.weight_scale")) {
                self.read_quantized_layer(&name, &mut stored)?;
            } else {
                self.read_float_layer(&name, &mut stored)?;
            }
        }
        Ok(stored)
    }

    /// Reads float layer `name`'s weight and, if stored, its bias into `stored`.
    fn read_float_layer(&self, name: &str, stored: &mut StoredTensors) -> Result<()> {
        let (wname, bname) = (format!("{name}.weight"), format!("{name}.bias"));
        let w = self.file.float(&wname)?;
        stored.float.insert(wname, f32s(w.shape, &w.data));
        if self.file.contains(&bname) {
            let b = self.file.float(&bname)?;
            stored.float.insert(bname, f32s(b.shape, &b.data));
        }
        Ok(())
    }

    /// Reads quantized layer `name`'s integer weights and (unless it has none, as an embedding)
    /// integer bias into `stored`, with float zeros of their shapes.
    fn read_quantized_layer(&self, name: &str, stored: &mut StoredTensors) -> Result<()> {
        let bits = self.weight_bits(name)?;
        let (shape, q) = if self.file.contains(&format!("{name}.weight_packed")) {
            self.read_packed_weight(name, bits)?
        } else {
            self.read_i8_weight(name)?
        };
        stored.ints.insert(name.to_string(), q);
        let (rows, n) = (shape[0], shape.iter().product::<usize>());
        stored
            .float
            .insert(format!("{name}.weight"), f32s(shape, &vec![0.0; n]));
        let bname = format!("{name}.bias");
        if !self.file.contains(&bname) {
            return Ok(()); // an embedding (checked against the graph in pass 2)
        }
        let b = self.read_int_bias(&bname, rows)?;
        stored.int_bias.insert(name.to_string(), b);
        stored
            .float
            .insert(bname, f32s(vec![rows], &vec![0.0; rows]));
        Ok(())
    }

    /// The bits the embedded parameters give quantized layer `name`'s weights.
    fn weight_bits(&self, name: &str) -> Result<i64> {
        self.pf
            .layers
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.weight.as_ref())
            .map(|w| w.bits)
            .ok_or_else(|| {
                Error::format(
                    &self.params_label,
                    format!(
                        "layer '{name}' has a weight_scale tensor but no quantized weight entry"
                    ),
                )
            })
    }

    /// The shape and unpacked integers of packed weight `name.weight_packed` at `bits` (the
    /// parameters' bits, which must be 4 or 2).
    fn read_packed_weight(&self, name: &str, bits: i64) -> Result<(Vec<usize>, Vec<i8>)> {
        let label = self.label;
        let shape = self.packed_weight_shape(name)?;
        let pname = format!("{name}.weight_packed");
        let bits = u8::try_from(bits)
            .ok()
            .filter(|&b| is_packed(b))
            .ok_or_else(|| {
                Error::tensor(
                    label,
                    &pname,
                    format!("packed weights need 4 or 2 bits, the parameters say {bits}"),
                )
            })?;
        let (dtype, pshape) = self.file.info(&pname)?;
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
        let (_, words) = self.file.int(&pname)?;
        let words: Vec<i32> = words.into_iter().map(|w| w as i32).collect();
        Ok((shape, unpack(&words, rows, cols, bits)))
    }

    /// The weight shape a packed layer `name` stores in `name.weight_shape`, checked.
    fn packed_weight_shape(&self, name: &str) -> Result<Vec<usize>> {
        let sname = format!("{name}.weight_shape");
        let (_, dims) = self.file.int(&sname)?;
        let shape: Vec<usize> = dims
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect();
        if dims.iter().any(|&d| d <= 0) {
            return Err(Error::tensor(
                self.label,
                &sname,
                format!("{dims:?} is not a weight shape"),
            ));
        }
        check_weight_dims(self.label, &sname, &shape)?;
        Ok(shape)
    }

    /// The shape and integers of unpacked weight `name.weight`, which must be I8.
    fn read_i8_weight(&self, name: &str) -> Result<(Vec<usize>, Vec<i8>)> {
        let wname = format!("{name}.weight");
        let (dtype, shape) = self.file.info(&wname)?;
        if dtype != Dtype::I8 {
            return Err(Error::tensor(
                self.label,
                &wname,
                format!("is {dtype:?}; a quantized weight is I8 (or packed I32)"),
            ));
        }
        check_weight_dims(self.label, &wname, &shape)?;
        let q = self.file.raw(&wname)?.iter().map(|&b| b as i8).collect();
        Ok((shape, q))
    }

    /// The integer bias `bname` of a quantized layer with `rows` outputs, which must be I32.
    fn read_int_bias(&self, bname: &str, rows: usize) -> Result<Vec<i32>> {
        let (bdtype, bshape) = self.file.info(bname)?;
        if bdtype != Dtype::I32 || bshape != [rows] {
            return Err(Error::tensor(
                self.label,
                bname,
                format!("is {bdtype:?} {bshape:?}, expected I32 [{rows}]"),
            ));
        }
        let (_, b) = self.file.int(bname)?;
        Ok(b.into_iter().map(|v| v as i32).collect())
    }

    /// The model `structure` describes over the tensors of pass 1 (float layers with their
    /// stored weights, quantized ones with zeros), with the sha256 of the float weights the
    /// parameters were made for.
    fn build_model(&self, structure: &Structure, stored: &StoredTensors) -> Result<Model> {
        let mut model = match structure {
            Structure::Spec(spec) => self.model_from_spec(spec, &stored.float)?,
            Structure::Graph(b64) => self.model_from_graph(b64, stored)?,
        };
        model.sha256 = self.pf.model.sha256.clone();
        Ok(model)
    }

    /// The model of the embedded `spec` with the weights `float`.
    fn model_from_spec(&self, spec: &Spec, float: &BTreeMap<String, Tensor>) -> Result<Model> {
        let label = self.label;
        let spec_text = spec.to_toml();
        let shell = st::serialize(float, &BTreeMap::new());
        let name = spec.name.clone().unwrap_or_else(|| "model".into());
        load_model_bytes(
            label,
            &name,
            &shell,
            Some((&format!("{label} (embedded {SPEC_KEY})"), &spec_text)),
        )
    }

    /// The model of the embedded graph `b64` (base64) with the shapes and float weights of
    /// pass 1.
    fn model_from_graph(&self, b64: &str, stored: &StoredTensors) -> Result<Model> {
        let shapes = stored
            .float
            .iter()
            .filter_map(|(k, t)| Some((k.strip_suffix(".weight")?.to_string(), t.shape.clone())))
            .collect();
        let mut m = super::onnx::embed::model_from_embedding(
            self.label,
            &self.pf.model.name,
            self.file,
            b64,
            &shapes,
        )?;
        fill_float_layers(self.label, &mut m, stored)?;
        Ok(m)
    }

    /// The parameters of `model`, with the stored integer weights `ints` (not re-quantized).
    fn stored_params(&self, model: &Model, ints: &HashMap<String, Vec<i8>>) -> Result<ModelParams> {
        let get = |n: &str| ints.get(n).cloned();
        Ok(self
            .pf
            .resolve(&self.params_label, model, false, WeightInts::Stored(&get))?
            .params)
    }

    /// Pass 2: checks that the tensors agree with `params`, and puts into `model` the
    /// dequantized weights and the float biases that the integer biases `int_bias` stand for.
    fn apply_stored_integers(
        &self,
        model: &mut Model,
        params: &ModelParams,
        int_bias: &HashMap<String, Vec<i32>>,
    ) -> Result<()> {
        let inq = input_qparams(model, params);
        for lp in &params.layers {
            let l = &lp.name;
            let in_q = inq.get(&lp.index).copied().flatten();
            self.check_act_qparams(l, "input", in_q)?;
            self.check_act_qparams(l, "output", lp.act.as_ref().map(|a| a.qparams))?;
            let Some(wq) = &lp.weight else { continue };
            let q = &wq.q;
            self.check_weight_qparams(l, q)?;
            let op = &mut model.layers[lp.index].op;
            let ib = int_bias.get(l.as_str());
            if !op.is_gemm() {
                if ib.is_some() {
                    return Err(Error::tensor(
                        self.label,
                        format!("{l}.bias"),
                        "is stored for an embedding, which has no bias",
                    ));
                }
                op.weights_mut()
                    .expect("weight layer")
                    .copy_from_slice(&q.dequantize());
                continue;
            }
            let fb = self.float_bias(l, q, in_q, ib)?;
            let (w, b) = op.weight_bias_mut().expect("weight layer");
            w.copy_from_slice(&q.dequantize());
            b.copy_from_slice(&fb);
        }
        Ok(())
    }

    /// Checks layer `l`'s stored `what` ("input" or "output") scale and zero point against `q`,
    /// the qparams the parameters give it.
    fn check_act_qparams(&self, l: &str, what: &str, q: Option<QParams>) -> Result<()> {
        let label = self.label;
        let (sname, zname) = (
            format!("{l}.{what}_scale"),
            format!("{l}.{what}_zero_point"),
        );
        if !self.file.contains(&sname) {
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
        let s = self.file.float(&sname)?.data;
        let (_, z) = self.file.int(&zname)?;
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
    }

    /// Checks layer `l`'s stored weight scales and zero points against `q`.
    fn check_weight_qparams(&self, l: &str, q: &QWeights) -> Result<()> {
        let sname = format!("{l}.weight_scale");
        let s = self.file.float(&sname)?;
        let (zshape, z) = self.file.int(&format!("{l}.weight_zero_point"))?;
        let ok = s.shape == scale_shape(q)
            && zshape == s.shape
            && s.data.iter().zip(&q.params).all(|(a, p)| *a == p.scale)
            && z.iter()
                .zip(&q.params)
                .all(|(a, p)| *a == p.zero_point as i64);
        if !ok {
            return Err(Error::tensor(
                self.label,
                &sname,
                format!(
                    "scales or zero points (shape {:?}) disagree with {PARAMS_KEY}",
                    s.shape
                ),
            ));
        }
        Ok(())
    }

    /// The float biases that integer layer `l`'s stored I32 biases `ib` stand for at scale
    /// s_in · s_w(row), `in_q` being its input's qparams; both must be there.
    fn float_bias(
        &self,
        l: &str,
        q: &QWeights,
        in_q: Option<QParams>,
        ib: Option<&Vec<i32>>,
    ) -> Result<Vec<f32>> {
        let label = self.label;
        let in_q = in_q.ok_or_else(|| {
            Error::tensor(
                label,
                format!("{l}.input_scale"),
                "an integer layer needs its input's qparams",
            )
        })?;
        let refs = row_ref_scales(q);
        let ib = ib.ok_or_else(|| {
            Error::tensor(
                label,
                format!("{l}.bias"),
                "is missing: an integer layer stores its bias",
            )
        })?;
        ib.iter()
            .enumerate()
            .map(|(r, &b)| {
                int_to_bias(b, in_q.scale as f64 * refs[r]).ok_or_else(|| {
                    Error::tensor(
                        label,
                        format!("{l}.bias"),
                        format!("integer bias {b} of channel {r} is too large to reproduce"),
                    )
                })
            })
            .collect()
    }
}

/// Puts the stored weights of the float layers into `m`, a model built from an embedded graph
/// (quantized layers are filled in pass 2); a tensor that does not fit its node is refused.
fn fill_float_layers(label: &str, m: &mut Model, stored: &StoredTensors) -> Result<()> {
    for (i, l) in m.layers.iter_mut().enumerate() {
        let Some(w) = stored.float.get(&format!("{}.weight", l.name)) else {
            continue;
        };
        if stored.ints.contains_key(&l.name) {
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
        let Some(b) = stored.float.get(&format!("{}.bias", l.name)) else {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every i32 bias survives the trip to a float bias and back, at several accumulator scales.
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
