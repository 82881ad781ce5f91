//! The quantization configuration: global defaults plus per-layer overrides, and the `--config`
//! file (formats.md §3) that the command line layers its flags on.

use crate::error::{Error, Result};
use crate::model::{Model, spec::toml_error_one_line};
use crate::quant::scheme::{check_bits, check_percentile};
use crate::quant::{ClipRange, Granularity, Scheme, Strategy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the network-input quantization point in `[layers.NAME]` tables and reports.
pub const INPUT_POINT: &str = "input";

/// How the whole model is quantized (the `config` object of the `eval --json` report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantConfig {
    /// Weight bit width, 2..=8.
    pub weight_bits: u8,
    /// Activation bit width, 2..=8 (every quantization point).
    pub act_bits: u8,
    /// How weight ranges are chosen.
    pub weight_strategy: Strategy,
    /// How activation ranges are chosen.
    pub act_strategy: Strategy,
    /// Weight granularity.
    pub granularity: Granularity,
    /// Weight scheme.
    pub weight_scheme: Scheme,
    /// Activation scheme.
    pub act_scheme: Scheme,
    /// The `percentile` strategy's P.
    pub percentile: f64,
    /// Weight layers left in float.
    pub keep_float: Vec<String>,
    /// Per-layer overrides by layer name (`input` for the network input, or a tensor name
    /// for a point of a graph model).
    pub layers: BTreeMap<String, LayerOverride>,
    /// Largest tensor a node may make, per sample, in MiB of f32 (refused above it).
    pub max_tensor_mib: u64,
    /// Empirical bias correction after weight quantization (`--bias-correction`).
    pub bias_correction: bool,
    /// Loss-aware refinement of the activation ranges on the calibration set, after bias
    /// correction (`--act-refine`; see `pipeline::act_refine`).
    pub act_refine: bool,
    /// Cross-layer equalization of the float weights before quantization (`--cle`).
    pub cle: bool,
    /// SmoothQuant's migration strength α, 0..=1 (`--smoothquant`); `None` = off.
    pub smoothquant: Option<f32>,
    /// How weights are rounded onto their grid (`--weight-rounding`).
    pub weight_rounding: WeightRounding,
    /// GPTQ visits columns in order of decreasing Hessian diagonal (`--gptq-act-order`).
    pub gptq_act_order: bool,
    /// Keep the float and quantized outputs of the evaluation (`eval --save-outputs`).
    #[serde(skip)]
    pub save_outputs: bool,
}

/// How weights are rounded onto the grid their scales define (the scales are chosen first, by
/// the weight strategy; only the rounding differs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightRounding {
    /// Round to nearest (half away from zero).
    #[default]
    Nearest,
    /// GPTQ (Frantar et al. 2022): column by column with error feedback through the inverse
    /// Hessian of the layer's calibration inputs.
    Gptq,
    /// AdaRound (Nagel et al. 2020): up or down per weight, learned on the layer's output error
    /// over its calibration inputs.
    Adaround,
}

impl WeightRounding {
    /// The name used by flags, config files and reports.
    pub fn name(self) -> &'static str {
        match self {
            WeightRounding::Nearest => "nearest",
            WeightRounding::Gptq => "gptq",
            WeightRounding::Adaround => "adaround",
        }
    }
}

impl std::fmt::Display for WeightRounding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightRounding {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nearest" => Ok(WeightRounding::Nearest),
            "gptq" => Ok(WeightRounding::Gptq),
            "adaround" => Ok(WeightRounding::Adaround),
            _ => Err(format!(
                "unknown weight rounding '{s}' (expected nearest, gptq or adaround)"
            )),
        }
    }
}

/// Per-layer settings that differ from the global ones (unset = global).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerOverride {
    /// Weight bit width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_bits: Option<u8>,
    /// Weight bit width per output channel (one per channel, in order; in place of
    /// `weight_bits`): what `qscope mixed --unit channel` chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_bits: Option<Vec<u8>>,
    /// Activation bit width of this layer's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_bits: Option<u8>,
    /// Weight strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_strategy: Option<Strategy>,
    /// Activation strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_strategy: Option<Strategy>,
    /// Weight granularity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<Granularity>,
    /// Weight scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_scheme: Option<Scheme>,
    /// Activation scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_scheme: Option<Scheme>,
    /// Percentile for this layer's percentile strategies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// A hand-set activation range (strategy `manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_range: Option<[f32; 2]>,
    /// A hand-set factor on the weight strategy's ranges (strategy `manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_clip: Option<f32>,
}

impl LayerOverride {
    /// Sets one weight width for the whole layer (dropping any widths per channel).
    pub fn set_weight_bits(&mut self, bits: u8) {
        self.weight_bits = Some(bits);
        self.channel_bits = None;
    }

    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == LayerOverride::default()
    }
}

/// The resolved weight settings of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightSettings {
    /// Bit width.
    pub bits: u8,
    /// Scheme.
    pub scheme: Scheme,
    /// Granularity.
    pub granularity: Granularity,
    /// Strategy that chooses the base ranges.
    pub strategy: Strategy,
    /// Percentile for `percentile`.
    pub percentile: f64,
    /// Hand-set factor on the base ranges (`None` = as chosen).
    pub clip: Option<f32>,
}

/// The resolved activation settings of one quantization point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActSettings {
    /// Bit width.
    pub bits: u8,
    /// Scheme.
    pub scheme: Scheme,
    /// Strategy (`Manual` when a range is set by hand).
    pub strategy: Strategy,
    /// Percentile for `percentile`.
    pub percentile: f64,
    /// The hand-set range, if any.
    pub range: Option<ClipRange>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            weight_bits: 8,
            act_bits: 8,
            weight_strategy: Strategy::MinMax,
            act_strategy: Strategy::MinMax,
            granularity: Granularity::PerChannel,
            weight_scheme: Scheme::Symmetric,
            act_scheme: Scheme::Asymmetric,
            percentile: 99.99,
            keep_float: Vec::new(),
            layers: BTreeMap::new(),
            max_tensor_mib: 1024,
            bias_correction: false,
            act_refine: false,
            cle: false,
            smoothquant: None,
            weight_rounding: WeightRounding::Nearest,
            gptq_act_order: false,
            save_outputs: false,
        }
    }
}

impl QuantConfig {
    /// The override table of `name` (empty if none).
    pub fn layer(&self, name: &str) -> LayerOverride {
        self.layers.get(name).cloned().unwrap_or_default()
    }

    /// Mutable override table of `name`, created if missing.
    pub fn layer_mut(&mut self, name: &str) -> &mut LayerOverride {
        self.layers.entry(name.to_string()).or_default()
    }

    /// Drops override tables that override nothing.
    pub fn prune(&mut self) {
        self.layers.retain(|_, o| !o.is_empty());
    }

    /// The per-sample element limit of any tensor a node makes.
    pub fn max_sample_elems(&self) -> usize {
        usize::try_from(self.max_tensor_mib.saturating_mul(1 << 20) / 4).unwrap_or(usize::MAX)
    }

    /// Whether a method changes weights or biases beyond rounding to nearest (bias correction,
    /// CLE, GPTQ, AdaRound): exported parameters then carry the integer weights and biases.
    pub fn changes_weights(&self) -> bool {
        self.bias_correction
            || self.cle
            || self.smoothquant.is_some()
            || self.weight_rounding != WeightRounding::Nearest
    }

    /// Whether weight layer `name` stays in float.
    pub fn is_float(&self, name: &str) -> bool {
        self.keep_float.iter().any(|n| n == name)
    }

    /// The weight bit width of each output channel of layer `name`, when it has them.
    pub fn channel_bits(&self, name: &str) -> Option<&[u8]> {
        self.layers.get(name)?.channel_bits.as_deref()
    }

    /// The weight settings of layer `name` (with bits per channel: the widest channel's).
    pub fn weight_settings(&self, name: &str) -> WeightSettings {
        let o = self.layer(name);
        let widest = o
            .channel_bits
            .as_ref()
            .and_then(|b| b.iter().copied().max());
        WeightSettings {
            bits: widest.or(o.weight_bits).unwrap_or(self.weight_bits),
            scheme: o.weight_scheme.unwrap_or(self.weight_scheme),
            granularity: o.granularity.unwrap_or(self.granularity),
            strategy: o.weight_strategy.unwrap_or(self.weight_strategy),
            percentile: o.percentile.unwrap_or(self.percentile),
            clip: o.weight_clip,
        }
    }

    /// The activation settings of quantization point `name` (a weight layer's output, or `input`).
    pub fn act_settings(&self, name: &str) -> ActSettings {
        let o = self.layer(name);
        let range = o.act_range.map(|[lo, hi]| ClipRange::new(lo, hi));
        ActSettings {
            bits: o.act_bits.unwrap_or(self.act_bits),
            scheme: o.act_scheme.unwrap_or(self.act_scheme),
            strategy: if range.is_some() {
                Strategy::Manual
            } else {
                o.act_strategy.unwrap_or(self.act_strategy)
            },
            percentile: o.percentile.unwrap_or(self.percentile),
            range,
        }
    }

    /// Checks every value, and that every named layer exists in `model`.
    pub fn validate(&self, model: Option<&Model>) -> Result<()> {
        check_bits("weight_bits", self.weight_bits)?;
        check_bits("act_bits", self.act_bits)?;
        check_percentile("percentile", self.percentile)?;
        check_granularity("granularity", self.granularity)?;
        if let Some(a) = self.smoothquant
            && !(0.0..=1.0).contains(&a)
        {
            return Err(Error::config(
                "smoothquant",
                format!("{a} must be within 0..=1 (the migration strength α)"),
            ));
        }
        if self.max_tensor_mib == 0 {
            return Err(Error::config("max_tensor_mib", "must be > 0"));
        }
        for (name, o) in &self.layers {
            let key = |k: &str| format!("layers.{name}.{k}");
            if let Some(b) = o.weight_bits {
                check_bits(&key("weight_bits"), b)?;
            }
            if let Some(b) = o.act_bits {
                check_bits(&key("act_bits"), b)?;
            }
            if let Some(bits) = &o.channel_bits {
                self.check_channel_bits(name, bits, model)?;
            }
            if let Some(p) = o.percentile {
                check_percentile(&key("percentile"), p)?;
            }
            if let Some(g) = o.granularity {
                check_granularity(&key("granularity"), g)?;
            }
            if let Some([lo, hi]) = o.act_range
                && !(lo.is_finite() && hi.is_finite() && lo <= hi)
            {
                return Err(Error::config(
                    key("act_range"),
                    format!("[{lo}, {hi}] is not a finite range with lo <= hi"),
                ));
            }
            if let Some(c) = o.weight_clip
                && !(c.is_finite() && c > 0.0)
            {
                return Err(Error::config(
                    key("weight_clip"),
                    format!("{c} must be finite and > 0"),
                ));
            }
            if let Some(m) = model
                && name != INPUT_POINT
                && m.layer_index(name).is_none()
                && m.value_index(name).is_none()
            {
                return Err(unknown_layer(&format!("layers.{name}"), name, m));
            }
        }
        if let Some(m) = model {
            for name in &self.keep_float {
                if m.layer_index(name).is_none() {
                    return Err(unknown_layer("keep_float", name, m));
                }
            }
        }
        Ok(())
    }
}

impl QuantConfig {
    /// `layers.NAME.channel_bits`: widths in range, one per output channel of the layer (when
    /// the model is known), rows quantized apart (not per tensor). GPTQ and AdaRound round each
    /// row within its own block's qparams, so they take the widths as they are.
    fn check_channel_bits(&self, name: &str, bits: &[u8], model: Option<&Model>) -> Result<()> {
        let key = format!("layers.{name}.channel_bits");
        for &b in bits {
            check_bits(&key, b)?;
        }
        if bits.is_empty() {
            return Err(Error::config(
                key,
                "is empty; give one bit width per output channel",
            ));
        }
        if self.weight_settings(name).granularity == Granularity::PerTensor {
            return Err(Error::config(
                key,
                "needs per-channel or group weights (a per-tensor scale has one bit width)",
            ));
        }
        let rows = model
            .and_then(|m| m.layer_index(name))
            .and_then(|i| model?.layers[i].op.weight_rows().map(|(_, r, _)| r));
        match rows {
            Some(r) if r != bits.len() => Err(Error::config(
                key,
                format!(
                    "has {} values; layer '{name}' has {r} output channels",
                    bits.len()
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn check_granularity(key: &str, g: Granularity) -> Result<()> {
    match g {
        Granularity::Group(0) => Err(Error::config(key, "group size must be > 0")),
        _ => Ok(()),
    }
}

fn unknown_layer(key: &str, name: &str, m: &Model) -> Error {
    let wl = m.weight_layers();
    let names: Vec<&str> = wl
        .iter()
        .take(12)
        .map(|&i| m.layers[i].name.as_str())
        .collect();
    let more = if wl.len() > 12 {
        format!(", … {} more", wl.len() - 12)
    } else {
        String::new()
    };
    Error::config(
        key,
        format!(
            "model '{}' has no weight layer '{}' (it has: {}{more})",
            m.name,
            crate::error::clip(name, crate::error::NAME_MAX),
            names.join(", ")
        ),
    )
}

/// A `--config` file: the long flags with `_` for `-`, plus `[layers.NAME]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Model path or bundled name.
    pub model: Option<String>,
    /// Spec path.
    pub spec: Option<PathBuf>,
    /// Calibration set path.
    pub calib: Option<PathBuf>,
    /// Evaluation set path.
    pub eval: Option<PathBuf>,
    /// Use the first N calibration samples.
    pub calib_samples: Option<usize>,
    /// See [`QuantConfig::weight_bits`].
    pub weight_bits: Option<u8>,
    /// See [`QuantConfig::act_bits`].
    pub act_bits: Option<u8>,
    /// See [`QuantConfig::weight_strategy`].
    pub weight_strategy: Option<Strategy>,
    /// See [`QuantConfig::act_strategy`].
    pub act_strategy: Option<Strategy>,
    /// See [`QuantConfig::percentile`].
    pub percentile: Option<f64>,
    /// See [`QuantConfig::granularity`].
    pub granularity: Option<Granularity>,
    /// See [`QuantConfig::weight_scheme`].
    pub weight_scheme: Option<Scheme>,
    /// See [`QuantConfig::act_scheme`].
    pub act_scheme: Option<Scheme>,
    /// See [`QuantConfig::keep_float`].
    pub keep_float: Option<Vec<String>>,
    /// See [`QuantConfig::bias_correction`].
    pub bias_correction: Option<bool>,
    /// See [`QuantConfig::act_refine`].
    pub act_refine: Option<bool>,
    /// See [`QuantConfig::cle`].
    pub cle: Option<bool>,
    /// See [`QuantConfig::smoothquant`].
    pub smoothquant: Option<f32>,
    /// See [`QuantConfig::weight_rounding`].
    pub weight_rounding: Option<WeightRounding>,
    /// See [`QuantConfig::gptq_act_order`].
    pub gptq_act_order: Option<bool>,
    /// Per-layer overrides.
    #[serde(default)]
    pub layers: BTreeMap<String, LayerOverride>,
}

impl ConfigFile {
    /// Parses config TOML; `label` names the file in errors (syntax errors keep their line).
    pub fn parse(label: &str, text: &str) -> Result<ConfigFile> {
        toml::from_str(text).map_err(|e| Error::format(label, toml_error_one_line(&e, text)))
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = crate::input::read_text(path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The file's quantization settings applied over `base`.
    pub fn apply_to(&self, base: &mut QuantConfig) {
        macro_rules! set {
            ($($f:ident),*) => {$(if let Some(v) = self.$f.clone() { base.$f = v; })*};
        }
        set!(
            weight_bits,
            act_bits,
            weight_strategy,
            act_strategy,
            percentile,
            granularity,
            weight_scheme,
            act_scheme,
            keep_float,
            bias_correction,
            act_refine,
            cle,
            weight_rounding,
            gptq_act_order
        );
        if self.smoothquant.is_some() {
            base.smoothquant = self.smoothquant;
        }
        for (k, v) in &self.layers {
            base.layers.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_resolve_over_globals() {
        let file = ConfigFile::parse(
            "c.toml",
            "act_bits = 4\n[layers.fc1]\nweight_bits = 4\nact_range = [0.0, 2.0]\n",
        )
        .unwrap();
        let mut c = QuantConfig::default();
        file.apply_to(&mut c);
        c.validate(None).unwrap();
        assert_eq!(c.weight_settings("fc1").bits, 4);
        assert_eq!(c.weight_settings("fc2").bits, 8);
        assert_eq!(c.act_settings("fc2").bits, 4);
        assert_eq!(c.act_settings("fc1").strategy, Strategy::Manual);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = QuantConfig {
            weight_bits: 9,
            ..Default::default()
        };
        assert!(
            c.validate(None)
                .unwrap_err()
                .to_string()
                .starts_with("weight_bits")
        );
        c.weight_bits = 8;
        c.layer_mut("fc2").act_bits = Some(1);
        assert!(
            c.validate(None)
                .unwrap_err()
                .to_string()
                .starts_with("layers.fc2.act_bits")
        );
        c.layers.clear();
        c.percentile = 0.0;
        assert!(
            c.validate(None)
                .unwrap_err()
                .to_string()
                .starts_with("percentile")
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_refused() {
        let e = ConfigFile::parse("c.toml", "weight_bitz = 4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("weight_bitz"), "{e}");
        let e = ConfigFile::parse("c.toml", "\nact_bits = = 4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
