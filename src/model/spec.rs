//! The model spec (formats.md §1): a TOML description of how the tensors form a network.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// A whole spec file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Model name shown in reports.
    #[serde(default)]
    pub name: Option<String>,
    /// One sample's shape, without the batch axis.
    pub input_shape: Vec<usize>,
    /// Per-channel (or single) mean subtracted from the data.
    #[serde(default)]
    pub input_mean: Option<Vec<f32>>,
    /// Per-channel (or single) standard deviation the data is divided by.
    #[serde(default)]
    pub input_std: Option<Vec<f32>>,
    /// The layers in order.
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
}

/// An integer or an `[a, b]` pair (stride, padding, kernel).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Pair {
    /// The same value for both axes.
    One(usize),
    /// Height and width.
    Two([usize; 2]),
}

impl Pair {
    /// The (height, width) values.
    pub fn hw(self) -> (usize, usize) {
        match self {
            Pair::One(v) => (v, v),
            Pair::Two([a, b]) => (a, b),
        }
    }
}

/// One `[[layers]]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Layer name (defaults per formats.md §1 "Layer names").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The operation.
    pub op: String,
    /// Weight tensor name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    /// Bias tensor name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
    /// Convolution or pooling stride.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Pair>,
    /// Convolution zero padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<Pair>,
    /// Pooling window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Pair>,
    /// Batchnorm running mean tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_mean: Option<String>,
    /// Batchnorm running variance tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_var: Option<String>,
    /// Batchnorm epsilon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    /// The layers (or `input`) this one reads; default: the previous layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// Convolution channel groups (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
    /// Convolution dilation (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dilation: Option<Pair>,
}

/// The ops a spec may use.
pub const OPS: [&str; 9] = [
    "linear",
    "conv2d",
    "relu",
    "maxpool2d",
    "avgpool2d",
    "flatten",
    "batchnorm2d",
    "add",
    "concat",
];

impl Spec {
    /// Parses spec TOML; `label` names its source in errors (a TOML error keeps its line).
    pub fn parse(label: &str, text: &str) -> Result<Spec> {
        let spec: Spec =
            toml::from_str(text).map_err(|e| Error::spec(label, toml_error_one_line(&e, text)))?;
        for (i, l) in spec.layers.iter().enumerate() {
            if !OPS.contains(&l.op.as_str()) {
                return Err(Error::spec(
                    label,
                    format!(
                        "layer {i}: unknown op '{}' (ops that exist: {})",
                        l.op,
                        OPS.join(", ")
                    ),
                ));
            }
        }
        if spec.input_shape.is_empty() || spec.input_shape.contains(&0) {
            return Err(Error::spec(
                label,
                format!(
                    "input_shape {:?} must be non-empty with no zero",
                    spec.input_shape
                ),
            ));
        }
        Ok(spec)
    }

    /// The spec as TOML text (to embed in exported files).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a spec always serializes")
    }
}

/// A TOML error as one line that keeps its line and column.
pub fn toml_error_one_line(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("TOML error at line {line}: {msg}")
        }
        None => format!("TOML error: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_op_of_the_contract() {
        let text = r#"
name = "x"
input_shape = [1, 28, 28]
input_mean = [0.1307]
input_std = [0.3081]
[[layers]]
op = "conv2d"
weight = "features.0.weight"
stride = [1, 1]
padding = 2
[[layers]]
op = "batchnorm2d"
weight = "features.1.weight"
bias = "features.1.bias"
running_mean = "features.1.running_mean"
running_var = "features.1.running_var"
eps = 1e-5
[[layers]]
op = "maxpool2d"
kernel = 2
"#;
        let s = Spec::parse("t.toml", text).unwrap();
        assert_eq!(s.layers.len(), 3);
        assert_eq!(s.layers[0].padding.unwrap().hw(), (2, 2));
        assert_eq!(s.layers[0].stride.unwrap().hw(), (1, 1));
        let again = Spec::parse("again", &s.to_toml()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn unknown_op_names_it_and_the_known_ops() {
        let e = Spec::parse("m.toml", "input_shape = [4]\n[[layers]]\nop = \"gelu\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.toml") && e.contains("'gelu'") && e.contains("conv2d"),
            "{e}"
        );
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let e = Spec::parse("m.toml", "input_shape = [4]\n\nname = = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
