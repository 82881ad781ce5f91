//! Checks a model must pass at load, so that nothing downstream (float engine, weight
//! quantization, requantization, batchnorm folding, export) meets a value it cannot handle:
//! input normalization that divides by zero or is not finite, zero-sized weight dimensions,
//! window and padding sizes that overflow shape arithmetic, and batchnorm folding that produces
//! non-finite weights. Called once, from [`super::load_model_bytes`].

use super::spec::{LayerSpec, Spec};
use super::tensors::TensorFile;
use super::{Layer, Op};
use crate::error::{Error, Result};

/// Largest stride, padding or window side a spec may give (beyond any real model; keeps the
/// shape arithmetic far from overflow).
pub const MAX_WINDOW: usize = 1 << 20;
/// Largest side of an input dimension.
pub const MAX_INPUT_DIM: usize = 1 << 24;

/// Checks the spec against the file before any layer is built.
pub fn check_spec(file: &TensorFile, spec: &Spec) -> Result<()> {
    let label = file.label();
    check_input(label, spec)?;
    for (pos, ls) in spec.layers.iter().enumerate() {
        check_layer_spec(file, ls, pos)?;
    }
    Ok(())
}

/// `input_shape` within bounds, and `input_mean`/`input_std` finite, usable and one value or
/// one per channel.
fn check_input(label: &str, spec: &Spec) -> Result<()> {
    let bad = |msg: String| Error::spec(label, msg);
    if let Some(d) = spec.input_shape.iter().find(|&&d| d > MAX_INPUT_DIM) {
        return Err(bad(format!(
            "input_shape {:?}: dimension {d} is larger than {MAX_INPUT_DIM}",
            spec.input_shape
        )));
    }
    let channels = if spec.input_shape.len() == 3 {
        spec.input_shape[0]
    } else {
        1
    };
    for (key, values) in [
        ("input_mean", &spec.input_mean),
        ("input_std", &spec.input_std),
    ] {
        let Some(v) = values else { continue };
        if v.len() > 1 && v.len() != channels {
            return Err(bad(format!(
                "{key} has {} values, the input has {channels} channel(s): give one value for all or one per channel",
                v.len()
            )));
        }
        for (c, &x) in v.iter().enumerate() {
            if !x.is_finite() {
                return Err(bad(format!("{key}[{c}] is {x}; it must be finite")));
            }
            if key == "input_std" && x.abs() < f32::MIN_POSITIVE {
                return Err(bad(format!(
                    "input_std[{c}] is {x:e}; dividing by zero or a subnormal std gives infinities"
                )));
            }
        }
    }
    Ok(())
}

/// One layer's numbers within bounds and the tensors it names free of zero-sized dimensions.
fn check_layer_spec(file: &TensorFile, ls: &LayerSpec, pos: usize) -> Result<()> {
    let label = file.label();
    let what = ls.name.clone().unwrap_or_else(|| format!("{}{pos}", ls.op));
    let bad = |msg: String| Error::spec(label, format!("layer '{what}' ({}): {msg}", ls.op));
    for (key, p) in [
        ("stride", ls.stride),
        ("padding", ls.padding),
        ("kernel", ls.kernel),
    ] {
        if let Some(p) = p {
            let (a, b) = p.hw();
            if a.max(b) > MAX_WINDOW {
                return Err(bad(format!(
                    "{key} {} is larger than {MAX_WINDOW}",
                    a.max(b)
                )));
            }
        }
    }
    if let Some(eps) = ls.eps
        && !(eps.is_finite() && eps >= 0.0)
    {
        return Err(bad(format!("eps is {eps}; it must be finite and >= 0")));
    }
    let tensors = [&ls.weight, &ls.bias, &ls.running_mean, &ls.running_var];
    for name in tensors.into_iter().flatten() {
        // A missing tensor is reported by the builder, with what the layer needed.
        let Ok((_, shape)) = file.info(name) else {
            continue;
        };
        if shape.contains(&0) {
            return Err(Error::tensor(
                label,
                name,
                format!(
                    "has shape {shape:?}: a 0-sized dimension (layer '{what}' would have no outputs, inputs or channels)"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the built layers: every weight and bias finite (batchnorm folding with a zero or
/// negative variance, or huge values, can make them infinite or NaN).
pub fn check_layers(label: &str, spec: &Spec, layers: &[Layer]) -> Result<()> {
    for l in layers {
        let (w, b) = match &l.op {
            Op::Linear { weight, bias } => (weight.as_slice(), bias.as_slice()),
            Op::Conv2d { weight, bias, .. } => (weight.as_slice(), bias.as_slice()),
            _ => continue,
        };
        let (w, b) = (w.unwrap_or_default(), b.unwrap_or_default());
        let bad_w = w.iter().position(|v| !v.is_finite());
        let bad_b = b.iter().position(|v| !v.is_finite());
        if bad_w.is_none() && bad_b.is_none() {
            continue;
        }
        let rows = b.len().max(1);
        let channel = bad_w.map_or_else(|| bad_b.unwrap_or(0), |i| i / (w.len() / rows).max(1));
        let folded = folded_batchnorm(spec, &l.name);
        return Err(Error::spec(
            label,
            match folded {
                Some(bn) => format!(
                    "layer '{}': folding batchnorm '{bn}' into it gives a non-finite {} in channel {channel} (running_var + eps <= 0, or values too large)",
                    l.name,
                    if bad_w.is_some() { "weight" } else { "bias" }
                ),
                None => format!(
                    "layer '{}': a non-finite weight or bias in channel {channel}",
                    l.name
                ),
            },
        ));
    }
    Ok(())
}

/// The name of the batchnorm layer folded into weight layer `name`, if any.
fn folded_batchnorm(spec: &Spec, name: &str) -> Option<String> {
    use super::build::layer_name;
    let pos = spec
        .layers
        .iter()
        .enumerate()
        .position(|(p, ls)| ls.op != "batchnorm2d" && layer_name(ls, p) == name)?;
    let next = spec.layers.get(pos + 1)?;
    (next.op == "batchnorm2d").then(|| layer_name(next, pos + 1))
}
