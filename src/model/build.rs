//! Building a [`Model`] from safetensors bytes and a spec: names, shapes, batchnorm folding.

use super::spec::{LayerSpec, Spec};
use super::tensors::TensorFile;
use super::{Layer, Model, Op};
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
    let layers = build_layers(&file, &spec)?;
    super::validate::check_layers(label, &spec, &layers)?;
    Ok(Model {
        name: spec
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string()),
        input_shape: spec.input_shape.clone(),
        input_mean: spec.input_mean.clone().unwrap_or_default(),
        input_std: spec.input_std.clone().unwrap_or_default(),
        layers,
        spec,
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

/// Turns the spec's layers into [`Layer`]s, checking every tensor and shape.
fn build_layers(file: &TensorFile, spec: &Spec) -> Result<Vec<Layer>> {
    let label = file.label();
    let mut shape = spec.input_shape.clone();
    let mut layers: Vec<Layer> = Vec::new();
    for (pos, ls) in spec.layers.iter().enumerate() {
        let name = layer_name(ls, pos);
        let in_shape = shape.clone();
        let bad = |msg: String| Error::spec(label, format!("layer '{name}' ({}): {msg}", ls.op));
        let op = match ls.op.as_str() {
            "linear" => {
                let wname = ls
                    .weight
                    .as_deref()
                    .ok_or_else(|| bad("needs `weight`".into()))?;
                let w = file.float(wname)?;
                if w.shape.len() != 2 {
                    return Err(Error::tensor(
                        label,
                        wname,
                        format!(
                            "has shape {}, a linear weight must be [out, in]",
                            shape_str(&w.shape)
                        ),
                    ));
                }
                let (out, inp) = (w.shape[0], w.shape[1]);
                if shape.len() != 1 || shape[0] != inp {
                    return Err(Error::tensor(
                        label,
                        wname,
                        format!(
                            "shape {} does not fit the layer's input {} (a linear layer needs [{inp}]; add a flatten?)",
                            shape_str(&w.shape),
                            shape_str(&shape)
                        ),
                    ));
                }
                let bias = load_bias(file, ls.bias.as_deref(), out)?;
                shape = vec![out];
                Op::Linear {
                    weight: Array2::from_shape_vec((out, inp), w.data).expect("checked shape"),
                    bias,
                }
            }
            "conv2d" => {
                let wname = ls
                    .weight
                    .as_deref()
                    .ok_or_else(|| bad("needs `weight`".into()))?;
                let w = file.float(wname)?;
                if w.shape.len() != 4 {
                    return Err(Error::tensor(
                        label,
                        wname,
                        format!(
                            "has shape {}, a conv2d weight must be [out, in, kh, kw]",
                            shape_str(&w.shape)
                        ),
                    ));
                }
                let (o, i, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
                if shape.len() != 3 || shape[0] != i {
                    return Err(Error::tensor(
                        label,
                        wname,
                        format!(
                            "shape {} does not fit the layer's input {} (conv2d needs [{i}, H, W])",
                            shape_str(&w.shape),
                            shape_str(&shape)
                        ),
                    ));
                }
                let stride = ls.stride.map_or((1, 1), |p| p.hw());
                let padding = ls.padding.map_or((0, 0), |p| p.hw());
                if stride.0 == 0 || stride.1 == 0 {
                    return Err(bad("stride must be > 0".into()));
                }
                let (h, wd) = (shape[1] + 2 * padding.0, shape[2] + 2 * padding.1);
                if h < kh || wd < kw {
                    return Err(Error::tensor(
                        label,
                        wname,
                        format!("kernel {kh}x{kw} is larger than the padded input {h}x{wd}"),
                    ));
                }
                let bias = load_bias(file, ls.bias.as_deref(), o)?;
                shape = vec![o, (h - kh) / stride.0 + 1, (wd - kw) / stride.1 + 1];
                Op::Conv2d {
                    weight: Array4::from_shape_vec((o, i, kh, kw), w.data).expect("checked shape"),
                    bias,
                    stride,
                    padding,
                }
            }
            "batchnorm2d" => {
                fold_batchnorm(file, ls, &name, layers.last_mut())?;
                continue;
            }
            "relu" => Op::Relu,
            "flatten" => {
                shape = vec![shape.iter().product()];
                Op::Flatten
            }
            "maxpool2d" | "avgpool2d" => {
                let kernel = ls.kernel.ok_or_else(|| bad("needs `kernel`".into()))?.hw();
                let stride = ls.stride.map_or(kernel, |p| p.hw());
                if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
                    return Err(bad("kernel and stride must be > 0".into()));
                }
                if shape.len() != 3 || shape[1] < kernel.0 || shape[2] < kernel.1 {
                    return Err(bad(format!(
                        "input {} does not fit a {}x{} window",
                        shape_str(&shape),
                        kernel.0,
                        kernel.1
                    )));
                }
                shape = vec![
                    shape[0],
                    (shape[1] - kernel.0) / stride.0 + 1,
                    (shape[2] - kernel.1) / stride.1 + 1,
                ];
                if ls.op == "maxpool2d" {
                    Op::MaxPool2d { kernel, stride }
                } else {
                    Op::AvgPool2d { kernel, stride }
                }
            }
            other => return Err(bad(format!("unknown op '{other}'"))),
        };
        layers.push(Layer {
            name,
            op,
            in_shape,
            out_shape: shape.clone(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for l in layers.iter().filter(|l| l.op.has_weights()) {
        if !seen.insert(l.name.as_str()) {
            return Err(Error::spec(
                label,
                format!("two weight layers are named '{}'", l.name),
            ));
        }
    }
    if !layers.iter().any(|l| l.op.has_weights()) {
        return Err(Error::spec(
            label,
            "the model has no linear or conv2d layer",
        ));
    }
    Ok(layers)
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
