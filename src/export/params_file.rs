//! The exported parameters file (formats.md §5): serde structs, JSON and TOML text, and the
//! checks that turn a file back into [`ModelParams`] for a model.
//!
//! Every f32 (scales, ranges) is written as the f64 of its exact value, so that it reads back to
//! the same f32 bit for bit in JSON and in TOML, whatever parser another tool uses.
//!
//! Extensions to formats.md §5 (all optional when reading):
//! - a weight's `range`: one `[lo, hi]` per block, the clipping range each scale came from;
//! - a weight with a hand-set factor on its strategy's ranges has `"strategy": "manual"`,
//!   `clip` (the factor) and `base_strategy` (the strategy the factor applies to);
//! - a layer kept in float keeps its `activation` when the integer engine quantizes that layer's
//!   output (it does whenever it has calibrated qparams for it, so that an integer layer after it
//!   gets integer input); `activation: null` then means "stays float";
//! - a weight's `weights_int`: the integer weights row-major `[out, in·kh·kw]`, written when a
//!   method chose them (GPTQ, CLE: quantizing the model's float weights would not give them
//!   back) and used instead of quantizing the model's weights;
//! - a weight's `bias`: the float bias `[out]` the integer layer uses instead of the model's,
//!   written when a method changed it (bias correction, CLE);
//! - `smoothquant`: the SmoothQuant migrations the parameters were made on, in order, each
//!   `{producer, consumers, alpha, scales}` (see `pipeline::smoothquant`): the parameters refer
//!   to the model with these applied, which a reader re-applies before resolving the rest
//!   (`export::load_params_with_notes`). Files embedded in an exported graph leave it out: the
//!   graph already carries the change.

use crate::config::{ActSettings, WeightSettings};
use crate::error::{Error, Result};
use crate::model::{Layer, Model};
use crate::params::{ActQuant, LayerParams, ModelParams, PointParams, WeightQuant};
use crate::quant::qparams::{qmax, qmin};
use crate::quant::scheme::{MAX_BITS, MIN_BITS};
use crate::quant::weights::{QWeights, block_count, groups_per_row};
use crate::quant::{ClipRange, Granularity, QParams, Scheme, Strategy};
use serde::{Deserialize, Serialize};

/// The `format` value this version writes and reads.
pub const FORMAT: &str = "qscope-params/1";
/// The `format` of graph (ONNX) models: points by tensor name.
pub const FORMAT_V2: &str = "qscope-params/2";
/// The prefix of every `format` value.
const FORMAT_PREFIX: &str = "qscope-params/";
/// Percentile assumed when a file gives none.
const DEFAULT_PERCENTILE: f64 = 99.99;

/// A whole parameters file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamsFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// The model the parameters were made for.
    pub model: ModelId,
    /// The network input's quantization (absent when the first graph input is not a point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<ActEntry>,
    /// Other points, by tensor name (`qscope-params/2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<PointEntry>,
    /// One entry per weight layer, in network order.
    pub layers: Vec<LayerEntry>,
    /// SmoothQuant migrations, in the order they were applied (extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smoothquant: Vec<SmoothFileEntry>,
    /// The accuracy methods the parameters were made with, as the report's `methods`
    /// (extension; absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<crate::eval::report::Methods>,
}

/// One SmoothQuant migration (extension): `consumers`' input channels were multiplied by
/// `scales` and `producer` divided by them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmoothFileEntry {
    /// The LayerNormalization or linear node that absorbed 1/s.
    pub producer: String,
    /// The linear layers whose input channels were scaled.
    pub consumers: Vec<String>,
    /// The migration strength.
    pub alpha: f64,
    /// One scale per channel (f32 values).
    pub scales: Vec<f64>,
}

impl SmoothFileEntry {
    fn of(e: &crate::params::SmoothEntry) -> Self {
        SmoothFileEntry {
            producer: e.producer.clone(),
            consumers: e.consumers.clone(),
            alpha: e.alpha as f64,
            scales: e.scales.iter().map(|&v| v as f64).collect(),
        }
    }

    /// The entry as parameters; `key` names it in errors.
    fn to_entry(&self, label: &str, key: &str) -> Result<crate::params::SmoothEntry> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(bad(label, &format!("{key}.alpha"), "must be within 0..=1"));
        }
        let scales: Vec<f32> = self.scales.iter().map(|&v| v as f32).collect();
        if let Some(v) = scales.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(bad(
                label,
                &format!("{key}.scales"),
                format!("{v} is not a positive finite f32"),
            ));
        }
        Ok(crate::params::SmoothEntry {
            producer: self.producer.clone(),
            consumers: self.consumers.clone(),
            alpha: self.alpha as f32,
            scales,
        })
    }
}

/// A quantization point of a graph that no weight layer produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointEntry {
    /// The tensor name.
    pub name: String,
    /// Its quantization.
    #[serde(flatten)]
    pub act: ActEntry,
}

/// Which model a file was made for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelId {
    /// Model name.
    pub name: String,
    /// sha256 of the weights file, hex.
    pub sha256: String,
}

/// One activation quantization point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActEntry {
    /// Bit width, 2..=8.
    pub bits: i64,
    /// `symmetric` or `asymmetric`.
    pub scheme: String,
    /// How the range was chosen (`manual`: set by hand, used as given).
    pub strategy: String,
    /// The percentile strategy's P (null for other strategies).
    #[serde(default)]
    pub percentile: Option<f64>,
    /// The clipping range.
    pub range: [f64; 2],
    /// Scale.
    pub scale: f64,
    /// Zero point.
    pub zero_point: i64,
}

/// One weight tensor's quantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightEntry {
    /// Bit width, 2..=8.
    pub bits: i64,
    /// `symmetric` or `asymmetric`.
    pub scheme: String,
    /// `per-tensor`, `per-channel` or `group:N`.
    pub granularity: String,
    /// How the ranges were chosen.
    pub strategy: String,
    /// With `strategy = "manual"`: the strategy whose ranges `clip` scales (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_strategy: Option<String>,
    /// With `strategy = "manual"`: the hand-set factor on the ranges (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
    /// The percentile strategy's P (null for other strategies).
    #[serde(default)]
    pub percentile: Option<f64>,
    /// One clipping range per block (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Vec<[f64; 2]>>,
    /// The bit width of each output channel when they differ (`bits` is then the widest);
    /// absent when every channel has `bits` (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_bits: Option<Vec<i64>>,
    /// One scale per tensor, output channel, or output channel × group (row-major).
    pub scale: Vec<f64>,
    /// One zero point per block.
    pub zero_point: Vec<i64>,
    /// The integer weights, row-major `[out, in·kh·kw]`, when a method chose them (GPTQ, CLE):
    /// used instead of quantizing the model's float weights (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_int: Option<Vec<i64>>,
    /// The float bias `[out]` the integer layer uses instead of the model's, when a method
    /// changed it (bias correction, CLE) (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<Vec<f64>>,
}

/// One weight layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// Layer name.
    pub name: String,
    /// Its weights' quantization (null: kept in float).
    #[serde(default)]
    pub weight: Option<WeightEntry>,
    /// Its (fused) output's quantization (null: not quantized).
    #[serde(default)]
    pub activation: Option<ActEntry>,
}

/// The text syntax of a parameters file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `.json`
    Json,
    /// `.toml`
    Toml,
}

impl Syntax {
    /// The syntax named by `path`'s extension.
    pub fn of_path(path: &std::path::Path) -> Option<Syntax> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(Syntax::Json),
            "toml" => Some(Syntax::Toml),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// From parameters to a file

/// An activation point's quantization as a file entry.
fn act_entry(a: &ActQuant) -> ActEntry {
    let s = a.settings;
    ActEntry {
        bits: a.qparams.bits as i64,
        scheme: a.qparams.scheme.name().into(),
        strategy: s.strategy.name().into(),
        percentile: (s.strategy == Strategy::Percentile).then_some(s.percentile),
        range: [a.range.lo as f64, a.range.hi as f64],
        scale: a.qparams.scale as f64,
        zero_point: a.qparams.zero_point as i64,
    }
}

/// The integers of `w` when quantizing the model's float weights `model_w` with its qparams
/// would not give them back (a method chose them), else `None`.
fn chosen_ints(w: &WeightQuant, model_w: &[f32]) -> Option<Vec<i64>> {
    let q = &w.q;
    let gs = q.group_size();
    let same = model_w.len() == q.q.len()
        && (0..q.q.len())
            .all(|k| q.param(k / q.cols, (k % q.cols) / gs).quantize(model_w[k]) == q.q[k] as i32);
    (!same).then(|| q.q.iter().map(|&v| v as i64).collect())
}

/// A weight's quantization as a file entry; `model_w`, the model's float weights, tell whether
/// the integers must be written too.
fn weight_entry(w: &WeightQuant, model_w: &[f32]) -> WeightEntry {
    let s = w.settings;
    let manual = s.clip.is_some() || s.strategy == Strategy::Manual;
    let base = if s.strategy == Strategy::Manual {
        Strategy::MinMax
    } else {
        s.strategy
    };
    WeightEntry {
        bits: w.q.bits() as i64,
        scheme: w.q.params[0].scheme.name().into(),
        granularity: w.q.granularity.to_string(),
        strategy: if manual {
            "manual".into()
        } else {
            s.strategy.name().into()
        },
        base_strategy: s.clip.map(|_| base.name().into()),
        clip: s.clip.map(|c| c as f64),
        percentile: (base == Strategy::Percentile).then_some(s.percentile),
        range: Some(
            w.q.ranges
                .iter()
                .map(|r| [r.lo as f64, r.hi as f64])
                .collect(),
        ),
        channel_bits: w
            .q
            .row_bits()
            .map(|b| b.into_iter().map(i64::from).collect()),
        scale: w.q.params.iter().map(|p| p.scale as f64).collect(),
        zero_point: w.q.params.iter().map(|p| p.zero_point as i64).collect(),
        weights_int: chosen_ints(w, model_w),
        bias: w
            .bias
            .as_ref()
            .map(|b| b.iter().map(|&v| v as f64).collect()),
    }
}

impl ParamsFile {
    /// The file tree of `params` for `model`.
    pub fn from_params(model: &Model, params: &ModelParams) -> ParamsFile {
        ParamsFile {
            format: if model.is_onnx() { FORMAT_V2 } else { FORMAT }.into(),
            model: ModelId {
                name: model.name.clone(),
                sha256: model.sha256.clone(),
            },
            input: params.input().map(act_entry),
            points: params
                .points
                .iter()
                .filter(|p| p.name != crate::config::INPUT_POINT)
                .map(|p| PointEntry {
                    name: p.name.clone(),
                    act: act_entry(&p.act),
                })
                .collect(),
            layers: params
                .layers
                .iter()
                .map(|l| LayerEntry {
                    name: l.name.clone(),
                    weight: l.weight.as_ref().map(|w| {
                        let model_w = model.layers[l.index]
                            .op
                            .weight_rows()
                            .map_or(&[][..], |r| r.0);
                        weight_entry(w, model_w)
                    }),
                    activation: l.act.as_ref().map(act_entry),
                })
                .collect(),
            smoothquant: params.smoothquant.iter().map(SmoothFileEntry::of).collect(),
            methods: params.methods.clone(),
        }
    }

    /// The file's SmoothQuant migrations, checked; `label` names the file in errors.
    pub fn smooth_entries(&self, label: &str) -> Result<Vec<crate::params::SmoothEntry>> {
        self.smoothquant
            .iter()
            .enumerate()
            .map(|(k, e)| e.to_entry(label, &format!("smoothquant[{k}]")))
            .collect()
    }

    /// The file as JSON: objects indented, arrays of numbers on one line.
    pub fn to_json(&self) -> String {
        let pretty =
            serde_json::to_string_pretty(self).expect("a parameters file always serializes");
        let mut out = compact_arrays(&pretty);
        out.push('\n');
        out
    }

    /// The file as TOML (the same tree; a null is an absent key).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a parameters file always serializes")
    }

    /// The file in `syntax`.
    pub fn to_text(&self, syntax: Syntax) -> String {
        match syntax {
            Syntax::Json => self.to_json(),
            Syntax::Toml => self.to_toml(),
        }
    }
}

/// The end of a JSON string literal starting at `b[i] == b'"'` (index after the closing quote).
fn string_end(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Pretty JSON with every array that holds no object put on one line (`[1, 2, [3, 4]]`).
fn compact_arrays(pretty: &str) -> String {
    let b = pretty.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let e = string_end(b, i);
                out.extend_from_slice(&b[i..e]);
                i = e;
            }
            b'[' => {
                // Find the matching bracket; give up on collapsing if an object is inside.
                let (mut j, mut depth, mut flat) = (i, 0usize, true);
                while j < b.len() {
                    match b[j] {
                        b'"' => {
                            j = string_end(b, j);
                            continue;
                        }
                        b'{' => flat = false,
                        b'[' => depth += 1,
                        b']' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if !flat || j >= b.len() {
                    out.push(b'[');
                    i += 1;
                    continue;
                }
                let mut k = i;
                while k <= j {
                    match b[k] {
                        b'"' => {
                            let e = string_end(b, k);
                            out.extend_from_slice(&b[k..e]);
                            k = e;
                            continue;
                        }
                        b' ' | b'\n' | b'\r' | b'\t' => {}
                        b',' => out.extend_from_slice(b", "),
                        c => out.push(c),
                    }
                    k += 1;
                }
                i = j + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("only ASCII was removed")
}

// ---------------------------------------------------------------------------------------------
// From text to a file tree

/// A format error in file `label` at `key`.
fn bad(label: &str, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::format(label, format!("{key}: {msg}"))
}

/// Checks the `format` value before the rest of the tree is read, so an old file gets a
/// message about versions rather than about some field.
fn check_format(label: &str, format: Option<&str>) -> Result<()> {
    match format {
        Some(FORMAT) | Some(FORMAT_V2) => Ok(()),
        Some(f) => match f
            .strip_prefix(FORMAT_PREFIX)
            .and_then(|v| v.parse::<u32>().ok())
        {
            Some(v) => {
                let age = if v < 1 { "an older" } else { "a newer" };
                Err(bad(
                    label,
                    "format",
                    format!(
                        "'{f}' is {age} version of the parameters format; this qscope reads {FORMAT} and {FORMAT_V2} (re-export the parameters with this version)"
                    ),
                ))
            }
            None => Err(bad(
                label,
                "format",
                format!("'{f}' is not a qscope parameters format (expected {FORMAT})"),
            )),
        },
        None => Err(bad(
            label,
            "format",
            format!("missing (expected \"{FORMAT}\"); is this a qscope parameters file?"),
        )),
    }
}

impl ParamsFile {
    /// Parses `text` in `syntax`; `label` names the file in errors (a syntax error keeps its line).
    pub fn parse(label: &str, text: &str, syntax: Syntax) -> Result<ParamsFile> {
        match syntax {
            Syntax::Json => {
                let v: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| Error::format(label, format!("not valid JSON: {e}")))?;
                if !v.is_object() {
                    return Err(Error::format(
                        label,
                        "not a parameters file: the JSON is not an object",
                    ));
                }
                check_format(label, v.get("format").and_then(|f| f.as_str()))?;
                serde_json::from_str(text).map_err(|e| Error::format(label, e.to_string()))
            }
            Syntax::Toml => {
                let one_line = |e: toml::de::Error| {
                    Error::format(label, crate::model::spec::toml_error_one_line(&e, text))
                };
                let v: toml::Table = toml::from_str(text).map_err(one_line)?;
                check_format(label, v.get("format").and_then(|f| f.as_str()))?;
                toml::from_str(text).map_err(one_line)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks and conversion to ModelParams

/// A bit width checked to be within `MIN_BITS..=MAX_BITS`.
fn check_bits(label: &str, key: &str, bits: i64) -> Result<u8> {
    if (MIN_BITS as i64..=MAX_BITS as i64).contains(&bits) {
        Ok(bits as u8)
    } else {
        Err(bad(
            label,
            key,
            format!("{bits} bits is outside {MIN_BITS}..={MAX_BITS}"),
        ))
    }
}

/// A named value (scheme, strategy, granularity) parsed; its error is reported at `key`.
fn parse_named<T: std::str::FromStr<Err = String>>(label: &str, key: &str, s: &str) -> Result<T> {
    s.parse().map_err(|e: String| bad(label, key, e))
}

/// A scale checked to be finite and > 0, also as an f32.
fn check_scale(label: &str, key: &str, scale: f64) -> Result<f32> {
    let s = scale as f32;
    if s.is_finite() && s > 0.0 {
        Ok(s)
    } else {
        let why = if scale.is_finite() && scale > 0.0 {
            " as an f32"
        } else {
            ""
        };
        Err(bad(
            label,
            key,
            format!("scale {scale} must be finite and > 0{why}"),
        ))
    }
}

/// A zero point checked: 0 for a symmetric scheme, and within the integers of `bits` and `scheme`.
fn check_zero_point(label: &str, key: &str, zp: i64, bits: u8, scheme: Scheme) -> Result<i32> {
    let (lo, hi) = (qmin(bits, scheme) as i64, qmax(bits) as i64);
    if scheme == Scheme::Symmetric && zp != 0 {
        return Err(bad(
            label,
            key,
            format!("zero point {zp} must be 0 for a symmetric scheme"),
        ));
    }
    if zp < lo || zp > hi {
        return Err(bad(
            label,
            key,
            format!("zero point {zp} is outside [{lo}, {hi}] for {bits} bits {scheme}"),
        ));
    }
    Ok(zp as i32)
}

/// A clipping range checked: finite as f32s, with lo <= hi.
fn check_range(label: &str, key: &str, r: [f64; 2]) -> Result<ClipRange> {
    let (lo, hi) = (r[0] as f32, r[1] as f32);
    if lo.is_finite() && hi.is_finite() && lo <= hi {
        Ok(ClipRange::new(lo, hi))
    } else {
        Err(bad(
            label,
            key,
            format!("[{}, {}] is not a finite range with lo <= hi", r[0], r[1]),
        ))
    }
}

/// A percentile checked to be in (0, 100]; none gives `DEFAULT_PERCENTILE`.
fn check_percentile(label: &str, key: &str, p: Option<f64>) -> Result<f64> {
    match p {
        None => Ok(DEFAULT_PERCENTILE),
        Some(p) if p > 0.0 && p <= 100.0 => Ok(p),
        Some(p) => Err(bad(
            label,
            key,
            format!("percentile {p} is outside (0, 100]"),
        )),
    }
}

/// An activation entry checked and converted (`key` names it in errors).
fn act_quant(label: &str, key: &str, e: &ActEntry) -> Result<ActQuant> {
    let bits = check_bits(label, &format!("{key}.bits"), e.bits)?;
    let scheme: Scheme = parse_named(label, &format!("{key}.scheme"), &e.scheme)?;
    let strategy: Strategy = parse_named(label, &format!("{key}.strategy"), &e.strategy)?;
    let percentile = check_percentile(label, &format!("{key}.percentile"), e.percentile)?;
    let range = check_range(label, &format!("{key}.range"), e.range)?;
    let scale = check_scale(label, &format!("{key}.scale"), e.scale)?;
    let zero_point = check_zero_point(
        label,
        &format!("{key}.zero_point"),
        e.zero_point,
        bits,
        scheme,
    )?;
    Ok(ActQuant {
        settings: ActSettings {
            bits,
            scheme,
            strategy,
            percentile,
            range: (strategy == Strategy::Manual).then_some(range),
        },
        range,
        qparams: QParams {
            scale,
            zero_point,
            bits,
            scheme,
        },
    })
}

/// A weight entry checked against a [rows, cols] weight matrix: settings, qparams and ranges.
fn weight_parts(
    label: &str,
    key: &str,
    e: &WeightEntry,
    layer: &str,
    rows: usize,
    cols: usize,
) -> Result<(WeightSettings, Vec<QParams>, Vec<ClipRange>)> {
    let settings = weight_settings(label, key, e)?;
    let granularity = settings.granularity;
    let row_bits = channel_bits(label, key, e, settings.bits, (granularity, rows))?;
    let n = block_count(granularity, rows, cols);
    let shape = format!("layer '{layer}' [{rows}, {cols}] at {granularity} needs {n}");
    check_block_counts(label, key, e, n, &shape)?;
    let (params, ranges) = block_qparams(label, key, e, &settings, row_bits.as_deref(), cols)?;
    Ok((settings, params, ranges))
}

/// A weight entry's settings checked in file order (bits, scheme, granularity, strategy,
/// base strategy, clip, percentile); a manual strategy with a base strategy becomes the base.
fn weight_settings(label: &str, key: &str, e: &WeightEntry) -> Result<WeightSettings> {
    let bits = check_bits(label, &format!("{key}.bits"), e.bits)?;
    let scheme: Scheme = parse_named(label, &format!("{key}.scheme"), &e.scheme)?;
    let granularity: Granularity =
        parse_named(label, &format!("{key}.granularity"), &e.granularity)?;
    let strategy: Strategy = parse_named(label, &format!("{key}.strategy"), &e.strategy)?;
    let base: Option<Strategy> = match &e.base_strategy {
        Some(b) => Some(parse_named(label, &format!("{key}.base_strategy"), b)?),
        None => None,
    };
    let clip = check_clip(label, key, e.clip)?;
    let percentile = check_percentile(label, &format!("{key}.percentile"), e.percentile)?;
    Ok(WeightSettings {
        bits,
        scheme,
        granularity,
        strategy: match (strategy, base) {
            (Strategy::Manual, Some(b)) => b,
            (s, _) => s,
        },
        percentile,
        clip,
    })
}

/// A weight entry's hand-set `clip` factor checked: finite and > 0, also as an f32.
fn check_clip(label: &str, key: &str, clip: Option<f64>) -> Result<Option<f32>> {
    match clip {
        Some(c) if c.is_finite() && c > 0.0 && (c as f32).is_finite() => Ok(Some(c as f32)),
        Some(c) => Err(bad(
            label,
            &format!("{key}.clip"),
            format!("{c} must be finite and > 0"),
        )),
        None => Ok(None),
    }
}

/// Checks that a weight entry's `scale`, `zero_point` and (when given) `range` each have one
/// value per block: `n`, which `shape` explains in the error.
fn check_block_counts(
    label: &str,
    key: &str,
    e: &WeightEntry,
    n: usize,
    shape: &str,
) -> Result<()> {
    if e.scale.len() != n {
        return Err(bad(
            label,
            &format!("{key}.scale"),
            format!("has {} values; {shape}", e.scale.len()),
        ));
    }
    if e.zero_point.len() != n {
        return Err(bad(
            label,
            &format!("{key}.zero_point"),
            format!("has {} values; {shape}", e.zero_point.len()),
        ));
    }
    if let Some(r) = &e.range
        && r.len() != n
    {
        return Err(bad(
            label,
            &format!("{key}.range"),
            format!("has {} values; {shape}", r.len()),
        ));
    }
    Ok(())
}

/// The qparams and clipping range of every block of a weight entry whose counts were checked,
/// block by block: each block's bits are its output channel's (`row_bits`) or `settings.bits`,
/// and a block without a stored range gets its qparams' representable range.
fn block_qparams(
    label: &str,
    key: &str,
    e: &WeightEntry,
    settings: &WeightSettings,
    row_bits: Option<&[u8]>,
    cols: usize,
) -> Result<(Vec<QParams>, Vec<ClipRange>)> {
    let (granularity, scheme) = (settings.granularity, settings.scheme);
    // `check_block_counts` made the scale count the block count.
    let n = e.scale.len();
    let mut params = Vec::with_capacity(n);
    let mut ranges = Vec::with_capacity(n);
    for b in 0..n {
        let bits = row_bits.map_or(settings.bits, |rb| {
            rb[b / groups_per_row(granularity, cols)]
        });
        let scale = check_scale(label, &format!("{key}.scale[{b}]"), e.scale[b])?;
        let zero_point = check_zero_point(
            label,
            &format!("{key}.zero_point[{b}]"),
            e.zero_point[b],
            bits,
            scheme,
        )?;
        let p = QParams {
            scale,
            zero_point,
            bits,
            scheme,
        };
        ranges.push(match &e.range {
            Some(r) => check_range(label, &format!("{key}.range[{b}]"), r[b])?,
            None => p.representable(),
        });
        params.push(p);
    }
    Ok((params, ranges))
}

/// A weight entry's `channel_bits` checked: one width per output channel, each in range, the
/// widest equal to `bits`, and not on per-tensor weights.
fn channel_bits(
    label: &str,
    key: &str,
    e: &WeightEntry,
    bits: u8,
    (granularity, rows): (Granularity, usize),
) -> Result<Option<Vec<u8>>> {
    let Some(v) = &e.channel_bits else {
        return Ok(None);
    };
    let key = format!("{key}.channel_bits");
    if granularity == Granularity::PerTensor {
        return Err(bad(label, &key, "is given for per-tensor weights"));
    }
    if v.len() != rows {
        return Err(bad(
            label,
            &key,
            format!(
                "has {} values; the layer has {rows} output channels",
                v.len()
            ),
        ));
    }
    let widths = v
        .iter()
        .enumerate()
        .map(|(r, &b)| check_bits(label, &format!("{key}[{r}]"), b))
        .collect::<Result<Vec<u8>>>()?;
    if widths.iter().max() != Some(&bits) {
        return Err(bad(
            label,
            &key,
            format!("the widest channel must have `bits` ({bits})"),
        ));
    }
    Ok(Some(widths))
}

/// A weight entry's `weights_int` checked against the qparams of `q` (count and range).
fn file_ints(label: &str, key: &str, v: &[i64], q: &QWeights) -> Result<Vec<i8>> {
    if v.len() != q.rows * q.cols {
        return Err(bad(
            label,
            key,
            format!(
                "has {} values; the layer [{}, {}] needs {}",
                v.len(),
                q.rows,
                q.cols,
                q.rows * q.cols
            ),
        ));
    }
    let gs = q.group_size();
    v.iter()
        .enumerate()
        .map(|(k, &x)| {
            let p = q.param(k / q.cols, (k % q.cols) / gs);
            if x < p.qmin() as i64 || x > p.qmax() as i64 {
                Err(bad(
                    label,
                    key,
                    format!(
                        "integer {x} at index {k} is outside [{}, {}]",
                        p.qmin(),
                        p.qmax()
                    ),
                ))
            } else {
                Ok(x as i8)
            }
        })
        .collect()
}

/// A weight entry's replacement `bias`, checked: one finite f32 per output channel.
fn stored_bias(label: &str, key: &str, e: &WeightEntry, rows: usize) -> Result<Option<Vec<f32>>> {
    let Some(b) = &e.bias else { return Ok(None) };
    if b.len() != rows {
        return Err(bad(
            label,
            key,
            format!(
                "has {} values; the layer has {rows} output channels",
                b.len()
            ),
        ));
    }
    b.iter()
        .enumerate()
        .map(|(r, &v)| {
            let f = v as f32;
            if f.is_finite() {
                Ok(f)
            } else {
                Err(bad(
                    label,
                    key,
                    format!("{v} at channel {r} is not a finite f32"),
                ))
            }
        })
        .collect::<Result<Vec<f32>>>()
        .map(Some)
}

/// Where the integer weights come from when a file is turned into parameters.
pub enum WeightInts<'a> {
    /// A parameters file: its `weights_int` where a layer has them, else the model's float
    /// weights quantized with the stored qparams.
    FromModel,
    /// Use these integers, by layer name (a quantized model file).
    Stored(&'a dyn Fn(&str) -> Option<Vec<i8>>),
}

/// A file checked against a model: its parameters, and notes on what differs (with `force`).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The parameters.
    pub params: ModelParams,
    /// What differs between the file's model and this one (empty when they match).
    pub notes: Vec<String>,
    /// The model the parameters refer to when the file's SmoothQuant migrations changed it
    /// (set by `export::load_params_with_notes`; `None`: the model given).
    pub smoothed: Option<Box<Model>>,
}

/// The first 12 characters of a hex digest, for notes.
fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// The file's layer names beside the model's weight layers, for matching them.
struct LayerNames<'a> {
    /// The model's weight layers (node indices), in network order.
    wl: Vec<usize>,
    /// Their names.
    model: Vec<&'a str>,
    /// The file's layer names, in file order.
    file: Vec<&'a str>,
}

/// How a file's layer entries were matched to the model's weight layers.
struct LayerMatch {
    /// The model's weight layers (node indices), in network order.
    wl: Vec<usize>,
    /// For each of them, the index of its entry in the file's `layers`.
    mapping: Vec<usize>,
    /// What differs between the file's model and this one (empty when they match).
    notes: Vec<String>,
}

/// A model weight layer with its weight matrix, row-major `[rows, cols]`.
struct WeightLayer<'a> {
    /// The layer.
    layer: &'a Layer,
    /// Its float weights.
    w: &'a [f32],
    /// Output channels.
    rows: usize,
    /// Values per output channel.
    cols: usize,
}

impl<'a> LayerNames<'a> {
    /// The names of `pf`'s layer entries and of `model`'s weight layers.
    fn of(pf: &'a ParamsFile, model: &'a Model) -> LayerNames<'a> {
        let wl = model.weight_layers();
        let model_names = wl.iter().map(|&i| model.layers[i].name.as_str()).collect();
        let file = pf.layers.iter().map(|l| l.name.as_str()).collect();
        LayerNames {
            wl,
            model: model_names,
            file,
        }
    }

    /// The file entry of each model weight layer, when every one has an entry by name.
    fn by_name(&self) -> Option<Vec<usize>> {
        self.model
            .iter()
            .map(|n| self.file.iter().position(|f| f == n))
            .collect()
    }

    /// A note on how the file's layer names differ from the model's (`None`: the same names in
    /// the same order); `found_by_name`: every model weight layer has an entry by name.
    fn differences(&self, found_by_name: bool) -> Option<String> {
        let (file_names, model_names) = (&self.file, &self.model);
        let names_differ =
            !found_by_name || file_names.len() != model_names.len() || file_names != model_names;
        if !names_differ {
            return None;
        }
        let missing: Vec<&str> = model_names
            .iter()
            .copied()
            .filter(|n| !file_names.contains(n))
            .collect();
        let extra: Vec<&str> = file_names
            .iter()
            .copied()
            .filter(|n| !model_names.contains(n))
            .collect();
        let mut what = format!(
            "the file's layers are [{}], the model's are [{}]",
            file_names.join(", "),
            model_names.join(", ")
        );
        if !missing.is_empty() {
            what += &format!(" (no entry for: {})", missing.join(", "));
        }
        if !extra.is_empty() {
            what += &format!(" (not in the model: {})", extra.join(", "));
        }
        Some(what)
    }

    /// The error for a layer of the model with no entry, or an entry for no layer of the model
    /// (`None`: every name is on both sides).
    fn missing_or_unknown(&self, label: &str, model_name: &str) -> Option<Error> {
        let (file_names, model_names) = (&self.file, &self.model);
        if let Some(m) = model_names.iter().find(|n| !file_names.contains(n)) {
            return Some(bad(
                label,
                "layers",
                format!(
                    "no entry for weight layer '{m}' of model '{model_name}' (the file has: {})",
                    file_names.join(", ")
                ),
            ));
        }
        if let Some((j, f)) = file_names
            .iter()
            .enumerate()
            .find(|(_, f)| !model_names.contains(f))
        {
            return Some(bad(
                label,
                &format!("layers[{j}].name"),
                format!(
                    "model '{model_name}' has no weight layer '{f}' (it has: {})",
                    model_names.join(", ")
                ),
            ));
        }
        None
    }

    /// The file entry of each model weight layer: `by_name` when every layer was found by name,
    /// else by position when the counts agree (said in `notes`), else an error.
    fn mapping(
        &self,
        label: &str,
        model_name: &str,
        by_name: Option<Vec<usize>>,
        notes: &mut Vec<String>,
    ) -> Result<Vec<usize>> {
        let (file_names, model_names) = (&self.file, &self.model);
        match by_name {
            Some(m) => Ok(m),
            None if file_names.len() == model_names.len() => {
                notes.push("layers were matched by position".into());
                Ok((0..model_names.len()).collect())
            }
            None => {
                let m = model_names
                    .iter()
                    .find(|n| !file_names.contains(n))
                    .expect("some name is missing");
                Err(bad(
                    label,
                    "layers",
                    format!(
                        "no entry for weight layer '{m}' of model '{model_name}' (the file has: {}), and the counts differ so layers cannot be matched by position",
                        file_names.join(", ")
                    ),
                ))
            }
        }
    }
}

/// The refusal of a file made for another model (`notes` say how it differs); the hint says
/// whether `--force` can load it (`matchable`: the layers match by name or by position).
fn another_model(label: &str, notes: &[String], matchable: bool) -> Error {
    let hint = if matchable {
        "use --force to load it anyway"
    } else {
        "--force cannot help: the layers match neither by name nor by position"
    };
    Error::format(
        label,
        format!("made for another model: {}; {hint}", notes.join("; ")),
    )
}

impl ParamsFile {
    /// Checks every field and builds the parameters for `model`. A file made for another model
    /// (sha256 or layer names differ) is refused unless `force`; then layers are matched by name,
    /// or by position when the names differ but the counts agree, and `notes` say what differs.
    pub fn resolve(
        &self,
        label: &str,
        model: &Model,
        force: bool,
        ints: WeightInts,
    ) -> Result<Resolved> {
        check_format(label, Some(&self.format))?;
        let points = self.resolve_points(label, model)?;
        let m = self.match_layers(label, model, force)?;
        let layers = (0..m.wl.len())
            .map(|li| self.resolve_layer(label, model, &m, li, &ints))
            .collect::<Result<Vec<LayerParams>>>()?;
        let mut notes = m.notes;
        if force && !notes.is_empty() {
            notes.insert(
                0,
                format!("{label}: loaded with --force although it was made for another model"),
            );
        }
        let params = ModelParams {
            points,
            layers,
            smoothquant: self.smooth_entries(label)?,
            methods: self.methods.clone(),
        };
        check_layer_inputs(label, model, &params)?;
        Ok(Resolved {
            params,
            notes,
            smoothed: None,
        })
    }

    /// The `input` and `points` entries checked and placed on `model`'s values, in that order.
    fn resolve_points(&self, label: &str, model: &Model) -> Result<Vec<PointParams>> {
        let mut points = Vec::new();
        if let Some(a) = &self.input {
            let value = model.inputs.first().map_or(0, |g| g.value);
            points.push(PointParams {
                name: crate::config::INPUT_POINT.to_string(),
                value,
                act: act_quant(label, "input", a)?,
            });
        }
        for (k, p) in self.points.iter().enumerate() {
            let value = model.value_index(&p.name).ok_or_else(|| {
                bad(
                    label,
                    &format!("points[{k}].name"),
                    format!(
                        "the model has no tensor '{}'",
                        crate::error::clip(&p.name, crate::error::NAME_MAX)
                    ),
                )
            })?;
            points.push(PointParams {
                name: p.name.clone(),
                value,
                act: act_quant(label, &format!("points[{k}]"), &p.act)?,
            });
        }
        Ok(points)
    }

    /// The note that the file was made for weights with another sha256.
    fn sha_note(&self, model: &Model) -> String {
        format!(
            "the parameters were made for model '{}' with weights sha256 {}…, this model '{}' has {}…",
            self.model.name,
            short(&self.model.sha256),
            model.name,
            short(&model.sha256)
        )
    }

    /// Matches the file's layer entries to `model`'s weight layers, noting what differs. A file
    /// made for another model is refused unless `force`; then layers are matched by name, or by
    /// position when the names differ but the counts agree.
    fn match_layers(&self, label: &str, model: &Model, force: bool) -> Result<LayerMatch> {
        let names = LayerNames::of(self, model);
        let mut notes = Vec::new();
        let sha_differs = !self.model.sha256.eq_ignore_ascii_case(&model.sha256);
        if sha_differs {
            notes.push(self.sha_note(model));
        }
        let by_name = names.by_name();
        if let Some(what) = names.differences(by_name.is_some()) {
            notes.push(what);
        }
        if !notes.is_empty() && !force {
            // The same weights with a layer missing or unknown is a bad file, not another model.
            if !sha_differs && let Some(e) = names.missing_or_unknown(label, &model.name) {
                return Err(e);
            }
            let matchable = by_name.is_some() || names.file.len() == names.model.len();
            return Err(another_model(label, &notes, matchable));
        }
        let mapping = names.mapping(label, &model.name, by_name, &mut notes)?;
        Ok(LayerMatch {
            wl: names.wl,
            mapping,
            notes,
        })
    }

    /// The parameters of the `li`-th model weight layer from its matched entry: its weight, its
    /// output's activation, and the check that an integer layer gets the scales it needs.
    fn resolve_layer(
        &self,
        label: &str,
        model: &Model,
        m: &LayerMatch,
        li: usize,
        ints: &WeightInts,
    ) -> Result<LayerParams> {
        let (i, j) = (m.wl[li], m.mapping[li]);
        let e = &self.layers[j];
        let key = format!("layers[{j}]");
        let layer = &model.layers[i];
        let (w, rows, cols) = layer.op.weight_rows().expect("weight layer");
        let site = WeightLayer {
            layer,
            w,
            rows,
            cols,
        };
        let weight = match &e.weight {
            None => None,
            Some(we) => {
                let wkey = format!("{key}.weight");
                Some(resolve_weight(label, &wkey, we, &site, ints)?)
            }
        };
        let act = match &e.activation {
            Some(a) => Some(act_quant(label, &format!("{key}.activation"), a)?),
            None => None,
        };
        if act.is_none() {
            self.check_float_output(label, model, m, li)?;
        }
        Ok(LayerParams {
            name: layer.name.clone(),
            index: i,
            weight,
            act,
        })
    }

    /// Checks that the `li`-th model weight layer, whose output stays float (`activation`
    /// null), neither has quantized weights nor feeds a quantized next layer.
    fn check_float_output(
        &self,
        label: &str,
        model: &Model,
        m: &LayerMatch,
        li: usize,
    ) -> Result<()> {
        let (i, j) = (m.wl[li], m.mapping[li]);
        let key = format!("layers[{j}]");
        let layer = &model.layers[i];
        if self.layers[j].weight.is_some() {
            return Err(bad(
                label,
                &format!("{key}.activation"),
                format!(
                    "is null, but layer '{}' has quantized weights: an integer layer needs its output's scale and zero point",
                    layer.name
                ),
            ));
        }
        // An integer layer after this one that reads this one's output needs integer input
        // (in a graph the next weight layer may read another tensor: `check_layer_inputs`
        // covers every layer's input).
        if let Some(&next) = m.mapping.get(li + 1)
            && self.layers[next].weight.is_some()
            && m.wl.get(li + 1).is_some_and(|&ni| feeds(model, i, ni))
        {
            return Err(bad(
                label,
                &format!("{key}.activation"),
                format!(
                    "is null, but the next layer '{}' is quantized and needs its input's scale and zero point (layer '{}''s output)",
                    self.layers[next].name, layer.name
                ),
            ));
        }
        Ok(())
    }
}

/// A layer's weight entry (`key` names it) checked and turned into its quantized weights:
/// settings, qparams and ranges, the replacement bias, and the integers from `ints`.
fn resolve_weight(
    label: &str,
    key: &str,
    we: &WeightEntry,
    site: &WeightLayer,
    ints: &WeightInts,
) -> Result<WeightQuant> {
    let (layer, rows, cols) = (site.layer, site.rows, site.cols);
    let (settings, params, ranges) = weight_parts(label, key, we, &layer.name, rows, cols)?;
    let mut q = QWeights {
        rows,
        cols,
        q: vec![0; rows * cols],
        granularity: settings.granularity,
        params,
        ranges,
    };
    let bias = stored_bias(label, &format!("{key}.bias"), we, rows)?;
    if bias.is_some() && !layer.op.is_gemm() {
        return Err(bad(
            label,
            &format!("{key}.bias"),
            format!("layer '{}' is an embedding, which has no bias", layer.name),
        ));
    }
    match ints {
        WeightInts::FromModel if we.weights_int.is_some() => {
            let v = we.weights_int.as_deref().unwrap_or_default();
            q.q = file_ints(label, &format!("{key}.weights_int"), v, &q)?;
        }
        WeightInts::FromModel => quantize_model_weights(site.w, &mut q),
        WeightInts::Stored(get) => {
            let stored = get(&layer.name).ok_or_else(|| {
                bad(
                    label,
                    key,
                    format!("no integer weights stored for layer '{}'", layer.name),
                )
            })?;
            q.q = checked_stored_ints(label, key, &layer.name, stored, &q)?;
        }
    }
    Ok(WeightQuant { settings, q, bias })
}

/// Fills `q`'s integers by quantizing the model's float weights `w` with `q`'s qparams.
fn quantize_model_weights(w: &[f32], q: &mut QWeights) {
    let (rows, cols) = (q.rows, q.cols);
    let gs = q.group_size();
    for r in 0..rows {
        for c in 0..cols {
            let k = r * cols + c;
            q.q[k] = q.param(r, c / gs).quantize(w[k]) as i8;
        }
    }
}

/// The integers stored for layer `layer` (a quantized model file) checked against the qparams
/// of `q`: one per weight, each in its block's range.
fn checked_stored_ints(
    label: &str,
    key: &str,
    layer: &str,
    stored: Vec<i8>,
    q: &QWeights,
) -> Result<Vec<i8>> {
    let (rows, cols) = (q.rows, q.cols);
    if stored.len() != rows * cols {
        return Err(bad(
            label,
            key,
            format!(
                "{} integer weights stored, layer '{layer}' needs {}",
                stored.len(),
                rows * cols
            ),
        ));
    }
    let gs = q.group_size();
    for (k, &v) in stored.iter().enumerate() {
        let p = q.param(k / cols, (k % cols) / gs);
        if (v as i32) < p.qmin() || (v as i32) > p.qmax() {
            return Err(bad(
                label,
                key,
                format!(
                    "stored integer {v} at index {k} is outside [{}, {}]",
                    p.qmin(),
                    p.qmax()
                ),
            ));
        }
    }
    Ok(stored)
}

/// Checks that every quantized layer that reads float data (every one but an embedding) gets
/// its input's scale and zero point from a point or a layer before it.
fn check_layer_inputs(label: &str, model: &Model, params: &ModelParams) -> Result<()> {
    let inq = crate::engine::int::input_qparams(model, params);
    if let Some(lp) = params.layers.iter().find(|lp| {
        // An embedding reads integer indices: it has no input qparams.
        lp.weight.is_some()
            && model.layers[lp.index].op.is_gemm()
            && inq.get(&lp.index).copied().flatten().is_none()
    }) {
        return Err(bad(
            label,
            "input",
            format!(
                "layer '{}' is quantized but nothing gives the scale and zero point of its input (missing `input` or `points`?)",
                lp.name
            ),
        ));
    }
    Ok(())
}

/// Whether node `to`'s data input is node `from`'s (fused) output, directly or through ops
/// that keep quantization parameters (Relu, MaxPool, reshapes).
fn feeds(model: &Model, from: usize, to: usize) -> bool {
    let targets = [model.layers[from].output, model.point_value(from)];
    let mut v = model.layers[to].data_input();
    while let Some(val) = v {
        if targets.contains(&val) {
            return true;
        }
        match model.layers.iter().find(|l| l.output == val) {
            Some(p) if p.op.keeps_qparams() => v = p.data_input(),
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_objects_indented_and_number_arrays_on_one_line() {
        let v = serde_json::json!({"a": [1, 2.5], "b": [{"c": [[0.0, 1.0], [2.0, 3.0]], "s": "x [1,\n 2] {"}], "d": null, "e": []});
        let s = compact_arrays(&serde_json::to_string_pretty(&v).unwrap());
        assert!(s.contains("\"a\": [1, 2.5],"), "{s}");
        assert!(s.contains("\"c\": [[0.0, 1.0], [2.0, 3.0]],"), "{s}");
        assert!(s.contains("\"b\": [\n    {"), "{s}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn versions_are_named() {
        let e = check_format("p.json", Some("qscope-params/0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("qscope-params/0") && e.contains(FORMAT) && e.contains("older"),
            "{e}"
        );
        assert!(check_format("p.json", Some("qscope-params/2")).is_ok());
        let e = check_format("p.json", Some("qscope-params/3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("newer"), "{e}");
        assert!(
            check_format("p.json", None)
                .unwrap_err()
                .to_string()
                .contains("format")
        );
    }

    #[test]
    fn f32_values_survive_json_and_toml_exactly() {
        let xs: Vec<f32> = vec![
            0.003_921_568_6,
            1.0 / 3.0,
            1e-30,
            3.402_823e38,
            0.0236,
            7.0e-8,
            f32::MIN_POSITIVE,
        ];
        #[derive(Serialize, Deserialize)]
        struct T {
            v: Vec<f64>,
        }
        let t = T {
            v: xs.iter().map(|&x| x as f64).collect(),
        };
        let j: T = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        let m: T = toml::from_str(&toml::to_string(&t).unwrap()).unwrap();
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!((j.v[i] as f32).to_bits(), x.to_bits());
            assert_eq!((m.v[i] as f32).to_bits(), x.to_bits());
        }
    }
}
