//! Building a [`Model`] from safetensors bytes and a spec: names, shapes, batchnorm folding.

use super::spec::{LayerSpec, Spec};
use super::tensors::TensorFile;
use super::{BinaryOp, DType, GraphInput, Layer, Model, Op, Source, Value, ValueId};
use crate::error::{Error, Result};
use ndarray::{Array1, Array2, Array4};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Metadata key under which a safetensors file may embed its spec.
pub const SPEC_KEY: &str = "qscope.spec";

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads a model from a safetensors file and an optional spec file.
pub fn load_model(path: &Path, spec_path: Option<&Path>) -> Result<Model> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        if let Some(p) = spec_path {
            return Err(Error::spec(
                p.display().to_string(),
                "an ONNX model carries its own graph; --spec is for safetensors models",
            ));
        }
        return super::onnx::load_onnx(path);
    }
    let bytes = crate::input::read_bytes(path)?;
    let spec = match spec_path {
        Some(p) => {
            let text = crate::input::read_text(p)?;
            Some((p.display().to_string(), text))
        }
        None => None,
    };
    let label = path.display().to_string();
    let stem = path
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let spec_ref = spec.as_ref().map(|(l, t)| (l.as_str(), t.as_str()));
    load_model_bytes(&label, &stem, &bytes, spec_ref)
}

/// Loads a model from safetensors `bytes`; `spec` is (label, TOML text) or `None` to use the
/// embedded spec or the `nn.Sequential` fallback. `default_name` is used when the spec has none.
pub fn load_model_bytes(
    label: &str,
    default_name: &str,
    bytes: &[u8],
    spec: Option<(&str, &str)>,
) -> Result<Model> {
    let file = TensorFile::parse(label, bytes)?;
    let mut notes = Vec::new();
    let spec = match spec {
        Some((spec_label, text)) => Spec::parse(spec_label, text)?,
        None => match file.metadata(SPEC_KEY) {
            Some(text) => Spec::parse(&format!("{label} (embedded {SPEC_KEY})"), text)?,
            None => {
                let spec = sequential_fallback(&file)?;
                notes.push(format!(
                    "{label}: no spec given or embedded; assumed an nn.Sequential MLP of {} linear layers with relu between them",
                    spec.layers.iter().filter(|l| l.op == "linear").count()
                ));
                spec
            }
        },
    };
    super::validate::check_spec(&file, &spec)?;
    let g = build_graph(&file, &spec)?;
    super::validate::check_layers(label, &spec, &g.layers)?;
    let output = g.layers.last().map_or(0, |l| l.output);
    Ok(Model {
        name: spec
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string()),
        input_shape: spec.input_shape.clone(),
        input_mean: spec.input_mean.clone().unwrap_or_default(),
        input_std: spec.input_std.clone().unwrap_or_default(),
        layers: g.layers,
        values: g.values,
        consts: Vec::new(),
        inputs: vec![GraphInput {
            value: 0,
            dtype: DType::F32,
            shape: spec.input_shape.iter().map(|&d| Some(d)).collect(),
        }],
        outputs: vec![output],
        source_kind: Source::Spec(spec),
        sha256: sha256_hex(bytes),
        source: label.to_string(),
        notes,
    })
}

/// The spec assumed for a file of `N.weight`/`N.bias` rank-2 pairs and no spec.
fn sequential_fallback(file: &TensorFile) -> Result<Spec> {
    let mut prefixes: Vec<(u64, String)> = Vec::new();
    for name in file.names() {
        let Some(prefix) = name.strip_suffix(".weight") else {
            continue;
        };
        if let Ok(n) = prefix.parse::<u64>() {
            prefixes.push((n, prefix.to_string()));
        }
    }
    prefixes.sort();
    if prefixes.is_empty() {
        return Err(Error::spec(
            file.label(),
            "no spec given (--spec) or embedded (qscope.spec), and the tensors are not an nn.Sequential of Linear layers (N.weight)",
        ));
    }
    let mut layers = Vec::new();
    let mut input = None;
    for (i, (_, prefix)) in prefixes.iter().enumerate() {
        let wname = format!("{prefix}.weight");
        let (_, shape) = file.info(&wname)?;
        if shape.len() != 2 {
            return Err(Error::tensor(
                file.label(),
                &wname,
                format!(
                    "has shape {shape:?}; without a spec only rank-2 Linear weights can be assumed"
                ),
            ));
        }
        input.get_or_insert(shape[1]);
        if i > 0 {
            layers.push(LayerSpec {
                op: "relu".into(),
                ..Default::default()
            });
        }
        let bias = format!("{prefix}.bias");
        layers.push(LayerSpec {
            op: "linear".into(),
            weight: Some(wname),
            bias: file.contains(&bias).then_some(bias),
            ..Default::default()
        });
    }
    Ok(Spec {
        name: None,
        input_shape: vec![input.unwrap_or(1)],
        input_mean: None,
        input_std: None,
        layers,
    })
}

fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

/// The graph a spec describes: nodes, values and the per-sample shape of each value.
struct SpecGraph {
    layers: Vec<Layer>,
    values: Vec<Value>,
    shapes: Vec<Vec<usize>>,
    /// Layer name → the value it produces (a folded batchnorm names its conv's output).
    by_name: std::collections::HashMap<String, ValueId>,
}

impl SpecGraph {
    fn new(input_shape: &[usize]) -> Self {
        let mut by_name = std::collections::HashMap::new();
        by_name.insert(crate::config::INPUT_POINT.to_string(), 0);
        SpecGraph {
            layers: Vec::new(),
            values: vec![Value {
                name: crate::config::INPUT_POINT.to_string(),
            }],
            shapes: vec![input_shape.to_vec()],
            by_name,
        }
    }

    /// The values a layer reads: its `inputs`, or the previous layer's output.
    fn inputs_of(&self, ls: &LayerSpec, label: &str, name: &str) -> Result<Vec<ValueId>> {
        match &ls.inputs {
            None => Ok(vec![self.values.len() - 1]),
            Some(list) if list.is_empty() => Err(Error::spec(
                label,
                format!("layer '{name}': `inputs` is empty"),
            )),
            Some(list) => list
                .iter()
                .map(|n| {
                    self.by_name.get(n).copied().ok_or_else(|| {
                        Error::spec(
                            label,
                            format!(
                                "layer '{name}': input '{}' is not an earlier layer (or 'input')",
                                crate::error::clip(n, crate::error::NAME_MAX)
                            ),
                        )
                    })
                })
                .collect(),
        }
    }
}

/// Turns the spec's layers into a graph, checking every tensor and shape.
fn build_graph(file: &TensorFile, spec: &Spec) -> Result<SpecGraph> {
    let label = file.label();
    let mut g = SpecGraph::new(&spec.input_shape);
    for (pos, ls) in spec.layers.iter().enumerate() {
        let name = layer_name(ls, pos);
        let inputs = g.inputs_of(ls, label, &name)?;
        let shape = g.shapes[inputs[0]].clone();
        let bad = |msg: String| Error::spec(label, format!("layer '{name}' ({}): {msg}", ls.op));
        if ls.op == "batchnorm2d" {
            let prev = g
                .layers
                .last_mut()
                .filter(|p| p.output == inputs[0] && inputs.len() == 1);
            fold_batchnorm(file, ls, &name, prev)?;
            g.by_name.insert(name, inputs[0]);
            continue;
        }
        let in_shapes: Vec<Vec<usize>> = inputs.iter().map(|&v| g.shapes[v].clone()).collect();
        let (op, out_shape) = spec_op(file, ls, &in_shapes, &bad)?;
        if inputs.len() > 1 && !matches!(op, Op::Binary(_) | Op::Concat { .. }) {
            return Err(bad("only `add` and `concat` take several inputs".into()));
        }
        let output = g.values.len();
        g.values.push(Value { name: name.clone() });
        g.shapes.push(out_shape.clone());
        if g.by_name.insert(name.clone(), output).is_some() && op.has_weights() {
            return Err(Error::spec(label, format!("two layers are named '{name}'")));
        }
        g.layers.push(Layer {
            name,
            op_type: ls.op.clone(),
            op,
            inputs: inputs.into_iter().map(Some).collect(),
            output,
            in_shape: shape,
            out_shape,
        });
    }
    if !g.layers.iter().any(|l| l.op.has_weights()) {
        return Err(Error::spec(
            label,
            "the model has no linear or conv2d layer",
        ));
    }
    Ok(g)
}

/// One spec layer's op and its output shape, from the shapes of its inputs.
fn spec_op(
    file: &TensorFile,
    ls: &LayerSpec,
    in_shapes: &[Vec<usize>],
    bad: &dyn Fn(String) -> Error,
) -> Result<(Op, Vec<usize>)> {
    let shape = &in_shapes[0];
    Ok(match ls.op.as_str() {
        "linear" => spec_linear(file, ls, shape, bad)?,
        "conv2d" => spec_conv(file, ls, shape, bad)?,
        "relu" => (Op::Relu, shape.clone()),
        "flatten" => (Op::Flatten { axis: 1 }, vec![shape.iter().product()]),
        "add" => {
            if in_shapes.len() != 2 || in_shapes[1] != *shape {
                return Err(bad(format!(
                    "needs two inputs of the same shape, got {in_shapes:?}"
                )));
            }
            (Op::Binary(BinaryOp::Add), shape.clone())
        }
        "concat" => {
            let rest_equal = in_shapes
                .iter()
                .all(|s| s.len() == shape.len() && s[1..] == shape[1..]);
            if shape.is_empty() || !rest_equal {
                return Err(bad(format!(
                    "inputs {in_shapes:?} differ outside the channel axis"
                )));
            }
            let mut out = shape.clone();
            out[0] = in_shapes.iter().map(|s| s[0]).sum();
            (Op::Concat { axis: 1 }, out)
        }
        "maxpool2d" | "avgpool2d" => spec_pool(ls, shape, bad)?,
        other => {
            return Err(bad(format!(
                "unknown op '{}' (ops: linear, conv2d, relu, maxpool2d, avgpool2d, flatten, batchnorm2d, add, concat)",
                crate::error::clip(other, crate::error::NAME_MAX)
            )));
        }
    })
}

/// A spec layer's `weight` tensor, which must have `rank` dimensions (`what` says which).
fn spec_weight<'a>(
    file: &TensorFile,
    ls: &'a LayerSpec,
    rank: usize,
    what: &str,
    bad: &dyn Fn(String) -> Error,
) -> Result<(&'a str, super::tensors::F32Tensor)> {
    let wname = ls
        .weight
        .as_deref()
        .ok_or_else(|| bad("needs `weight`".into()))?;
    let w = file.float(wname)?;
    if w.shape.len() != rank {
        return Err(Error::tensor(
            file.label(),
            wname,
            format!("has shape {}, {what}", shape_str(&w.shape)),
        ));
    }
    Ok((wname, w))
}

fn spec_linear(
    file: &TensorFile,
    ls: &LayerSpec,
    shape: &[usize],
    bad: &dyn Fn(String) -> Error,
) -> Result<(Op, Vec<usize>)> {
    let label = file.label();
    let (wname, w) = spec_weight(file, ls, 2, "a linear weight must be [out, in]", bad)?;
    let (out, inp) = (w.shape[0], w.shape[1]);
    if shape.len() != 1 || shape[0] != inp {
        return Err(Error::tensor(
            label,
            wname,
            format!(
                "shape {} does not fit the layer's input {} (a linear layer needs [{inp}]; add a flatten?)",
                shape_str(&w.shape),
                shape_str(shape)
            ),
        ));
    }
    let bias = load_bias(file, ls.bias.as_deref(), out)?;
    let weight = Array2::from_shape_vec((out, inp), w.data).expect("checked shape");
    Ok((Op::Linear { weight, bias }, vec![out]))
}

fn spec_conv(
    file: &TensorFile,
    ls: &LayerSpec,
    shape: &[usize],
    bad: &dyn Fn(String) -> Error,
) -> Result<(Op, Vec<usize>)> {
    let label = file.label();
    let (wname, w) = spec_weight(
        file,
        ls,
        4,
        "a conv2d weight must be [out, in, kh, kw]",
        bad,
    )?;
    let (o, i, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let groups = ls.groups.unwrap_or(1);
    if groups == 0 || o % groups != 0 {
        return Err(bad(format!(
            "groups {groups} must divide the {o} output channels"
        )));
    }
    if shape.len() != 3 || shape[0] != i * groups {
        return Err(Error::tensor(
            label,
            wname,
            format!(
                "shape {} does not fit the layer's input {} (conv2d needs [{}, H, W])",
                shape_str(&w.shape),
                shape_str(shape),
                i * groups
            ),
        ));
    }
    let stride = ls.stride.map_or((1, 1), |p| p.hw());
    let (ph, pw) = ls.padding.map_or((0, 0), |p| p.hw());
    let dilation = ls.dilation.map_or((1, 1), |p| p.hw());
    if stride.0 == 0 || stride.1 == 0 || dilation.0 == 0 || dilation.1 == 0 {
        return Err(bad("stride and dilation must be > 0".into()));
    }
    let (h, wd) = (shape[1] + 2 * ph, shape[2] + 2 * pw);
    let (ekh, ekw) = ((kh - 1) * dilation.0 + 1, (kw - 1) * dilation.1 + 1);
    if kh == 0 || kw == 0 || h < ekh || wd < ekw {
        return Err(Error::tensor(
            label,
            wname,
            format!("kernel {kh}x{kw} is larger than the padded input {h}x{wd}"),
        ));
    }
    let bias = load_bias(file, ls.bias.as_deref(), o)?;
    let out = vec![o, (h - ekh) / stride.0 + 1, (wd - ekw) / stride.1 + 1];
    let op = Op::Conv2d {
        weight: Array4::from_shape_vec((o, i, kh, kw), w.data).expect("checked shape"),
        bias,
        stride,
        padding: [ph, pw, ph, pw],
        dilation,
        groups,
    };
    Ok((op, out))
}

fn spec_pool(
    ls: &LayerSpec,
    shape: &[usize],
    bad: &dyn Fn(String) -> Error,
) -> Result<(Op, Vec<usize>)> {
    let kernel = ls.kernel.ok_or_else(|| bad("needs `kernel`".into()))?.hw();
    let stride = ls.stride.map_or(kernel, |p| p.hw());
    if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
        return Err(bad("kernel and stride must be > 0".into()));
    }
    if shape.len() != 3 || shape[1] < kernel.0 || shape[2] < kernel.1 {
        return Err(bad(format!(
            "input {} does not fit a {}x{} window",
            shape_str(shape),
            kernel.0,
            kernel.1
        )));
    }
    let out = vec![
        shape[0],
        (shape[1] - kernel.0) / stride.0 + 1,
        (shape[2] - kernel.1) / stride.1 + 1,
    ];
    let padding = [0; 4];
    let op = if ls.op == "maxpool2d" {
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
            ceil_mode: false,
        }
    } else {
        Op::AvgPool2d {
            kernel,
            stride,
            padding,
            ceil_mode: false,
            count_include_pad: true,
        }
    };
    Ok((op, out))
}

/// The name rule of formats.md §1.
pub(super) fn layer_name(ls: &LayerSpec, pos: usize) -> String {
    if let Some(n) = &ls.name {
        return n.clone();
    }
    match &ls.weight {
        Some(w) => w.strip_suffix(".weight").unwrap_or(w).to_string(),
        None => format!("{}{pos}", ls.op),
    }
}

fn load_bias(file: &TensorFile, name: Option<&str>, out: usize) -> Result<Array1<f32>> {
    let Some(name) = name else {
        return Ok(Array1::zeros(out));
    };
    let b = file.float(name)?;
    if b.shape != [out] {
        return Err(Error::tensor(
            file.label(),
            name,
            format!("has shape {}, the layer needs [{out}]", shape_str(&b.shape)),
        ));
    }
    Ok(Array1::from(b.data))
}

/// Folds y = γ (x − μ)/√(σ² + ε) + β into the conv (or linear) layer before it.
fn fold_batchnorm(
    file: &TensorFile,
    ls: &LayerSpec,
    name: &str,
    prev: Option<&mut Layer>,
) -> Result<()> {
    let label = file.label();
    let Some(prev) = prev.filter(|p| p.op.has_weights()) else {
        return Err(Error::spec(
            label,
            format!("batchnorm2d '{name}' must follow a conv2d or linear layer to be folded"),
        ));
    };
    let channels = prev.out_shape[0];
    let get = |key: &str, t: &Option<String>, default: f32| -> Result<Vec<f32>> {
        match t {
            Some(t) => {
                let v = file.float(t)?;
                if v.shape != [channels] {
                    return Err(Error::tensor(
                        label,
                        t,
                        format!(
                            "has shape {}, batchnorm '{name}' needs [{channels}]",
                            shape_str(&v.shape)
                        ),
                    ));
                }
                Ok(v.data)
            }
            None if key == "running_mean" || key == "running_var" => Err(Error::spec(
                label,
                format!("batchnorm2d '{name}' needs `{key}`"),
            )),
            None => Ok(vec![default; channels]),
        }
    };
    let gamma = get("weight", &ls.weight, 1.0)?;
    let beta = get("bias", &ls.bias, 0.0)?;
    let mean = get("running_mean", &ls.running_mean, 0.0)?;
    let var = get("running_var", &ls.running_var, 1.0)?;
    let eps = ls.eps.unwrap_or(1e-5);
    let (weight_rows, bias) = prev.op.weight_bias_mut().expect("filtered above");
    let row = weight_rows.len() / channels;
    for c in 0..channels {
        let k = gamma[c] / (var[c] + eps).sqrt();
        for w in &mut weight_rows[c * row..(c + 1) * row] {
            *w *= k;
        }
        bias[c] = (bias[c] - mean[c]) * k + beta[c];
    }
    Ok(())
}
