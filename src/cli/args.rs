//! Command-line arguments (formats.md §3).

use clap::{Args, Parser, Subcommand};
use qscope::eval::sensitivity::Target;
use qscope::{Granularity, Scheme, Strategy};
use std::path::PathBuf;

/// A workbench for post-training quantization: clipping strategies, calibration, an
/// integer-only engine and a terminal UI. Without a subcommand it opens the UI.
#[derive(Debug, Parser)]
#[command(name = "qscope", version, about)]
pub struct Cli {
    /// What to do (default: the terminal UI).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Model and quantization options for the default UI.
    #[command(flatten)]
    pub common: Common,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The interactive explorer.
    Tui(TuiArgs),
    /// Quantize weights, calibrate activations, run the integer engine, report accuracy.
    Eval(EvalArgs),
    /// Per weight layer: accuracy with that layer alone at each of --bits.
    Sensitivity(SensitivityArgs),
    /// Per-tensor statistics and int8/int4 weight error of any safetensors file.
    Inspect(InspectArgs),
    /// Write the chosen parameters (.json, .toml), a quantized model (.safetensors), a QDQ ONNX
    /// model (.onnx) or a TensorRT calibration cache (.cache).
    Export(ExportArgs),
    /// Weight and activation histograms of a layer with the clipping ranges marked (.svg, .png).
    Plot(PlotArgs),
    /// Throughput of the float and the integer engine on one batch (samples/s, GMAC/s).
    Bench(BenchArgs),
    /// Mixed precision under a budget: weight bits per layer or per channel from a greedy Pareto front.
    Mixed(MixedArgs),
}

/// `qscope mixed (--budget-bits B | --budget-bytes N | --max-drop PTS) [--out FILE.toml]
/// [--plot FILE.svg] [--json]`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("budget").required(true).multiple(false)
    .args(["budget_bits", "budget_bytes", "max_drop"])))]
pub struct MixedArgs {
    /// Model and quantization options (the searched layers' weight bits are varied).
    #[command(flatten)]
    pub common: Common,
    /// Average weight bits, weighted by parameter count.
    #[arg(long, value_name = "B")]
    pub budget_bits: Option<f64>,
    /// Weight storage in bytes (codes packed at their bit width).
    #[arg(long, value_name = "N")]
    pub budget_bytes: Option<u64>,
    /// Largest accuracy drop from float, in percentage points (the smallest point that meets it).
    #[arg(long, value_name = "PTS")]
    pub max_drop: Option<f64>,
    /// Candidate weight bit widths per layer.
    #[arg(long, value_delimiter = ',', default_value = "8,4,3,2")]
    pub candidates: Vec<u8>,
    /// What gets one bit width: `layer` or `channel` (an output channel: a row of weights with
    /// its own scale) [default: channel for models of at most 1,024 searched channels and
    /// 2 MMAC a sample, else layer].
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<qscope::pipeline::mixed::Unit>,
    /// Write the chosen configuration as a --config TOML file.
    #[arg(long, value_name = "FILE.toml")]
    pub out: Option<PathBuf>,
    /// Draw accuracy against size (the front, the chosen point, uniform configurations).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// The front and the chosen point as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `qscope bench [--batch N] [--threads N] [--runs N] [--json]`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model and quantization options (the batch comes from --eval, its first N samples).
    #[command(flatten)]
    pub common: Common,
    /// Samples per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Threads of the engines (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed runs after three warm-up runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by the commands that load a model and quantize it.
#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// Model: `mnist-mlp`, `mnist-cnn`, `mnist-resnet` (bundled) or a .safetensors or .onnx path
    /// [default: mnist-mlp].
    #[arg(long, global = true)]
    pub model: Option<String>,
    /// Spec TOML (otherwise the spec embedded in the model file).
    #[arg(long, global = true)]
    pub spec: Option<PathBuf>,
    /// Calibration set (.safetensors or .npz) [default: bundled MNIST, 1,000 digits].
    #[arg(long, global = true)]
    pub calib: Option<PathBuf>,
    /// Evaluation set (.safetensors or .npz) [default: bundled MNIST, 2,000 digits].
    #[arg(long = "eval", global = true)]
    pub eval_set: Option<PathBuf>,
    /// Use only the first N calibration samples.
    #[arg(long, global = true)]
    pub calib_samples: Option<usize>,
    /// Weight bits, 2..=8 [default: 8].
    #[arg(long, global = true)]
    pub weight_bits: Option<u8>,
    /// Activation bits, 2..=8, for every quantization point [default: 8].
    #[arg(long, global = true)]
    pub act_bits: Option<u8>,
    /// minmax, percentile, kl, mse or aciq [default: minmax].
    #[arg(long, global = true)]
    pub weight_strategy: Option<Strategy>,
    /// minmax, percentile, kl, mse or aciq [default: minmax].
    #[arg(long, global = true)]
    pub act_strategy: Option<Strategy>,
    /// Percentile P for the percentile strategy, in (0, 100] [default: 99.99].
    #[arg(long, global = true)]
    pub percentile: Option<f64>,
    /// per-tensor, per-channel or group:N (weights) [default: per-channel].
    #[arg(long, global = true)]
    pub granularity: Option<Granularity>,
    /// symmetric or asymmetric [default: symmetric].
    #[arg(long, global = true)]
    pub weight_scheme: Option<Scheme>,
    /// symmetric or asymmetric [default: asymmetric].
    #[arg(long, global = true)]
    pub act_scheme: Option<Scheme>,
    /// Empirical bias correction: shift each output channel's bias by the mean error the
    /// quantized weights make on the calibration set, layer by layer.
    #[arg(long, global = true)]
    pub bias_correction: bool,
    /// Refine each activation range (the chosen range × 0.50..1.30) by the calibration set's
    /// KL divergence of the integer engine's outputs from the float model's, point by point.
    #[arg(long, global = true)]
    pub act_refine: bool,
    /// Cross-layer equalization of consecutive conv/linear pairs through ReLU before weight
    /// quantization.
    #[arg(long, global = true)]
    pub cle: bool,
    /// SmoothQuant with migration strength ALPHA (0..=1, usually 0.5): move activation
    /// outliers of linear layers fed by a LayerNorm or a linear layer (through Relu) into
    /// their weights, folded into that producer.
    #[arg(long, global = true, value_name = "ALPHA")]
    pub smoothquant: Option<f32>,
    /// nearest, gptq or adaround: how weights are rounded onto their grid [default: nearest].
    #[arg(long, global = true)]
    pub weight_rounding: Option<qscope::config::WeightRounding>,
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal (act-order).
    #[arg(long, global = true)]
    pub gptq_act_order: bool,
    /// Leave these weight layers in float (comma-separated names).
    #[arg(long, global = true, value_delimiter = ',')]
    pub keep_float: Option<Vec<String>>,
    /// TOML file with any of these options and [layers.NAME] overrides.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Exported parameters to use instead of calibrating.
    #[arg(long, global = true)]
    pub params: Option<PathBuf>,
    /// Use parameters made for another model anyway.
    #[arg(long, global = true)]
    pub force: bool,
    /// Per-channel mean subtracted from image inputs of ONNX models (comma list; one = all).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub input_mean: Option<Vec<f32>>,
    /// Per-channel std the inputs of ONNX models are divided by (comma list; one = all).
    #[arg(long, global = true, value_delimiter = ',')]
    pub input_std: Option<Vec<f32>>,
    /// Largest tensor a node may make, per sample, in MiB (default 1024).
    #[arg(long, global = true, value_name = "MIB")]
    pub max_tensor_mib: Option<u64>,
}

/// `qscope tui`.
#[derive(Debug, Args)]
pub struct TuiArgs {
    /// Model and quantization options.
    #[command(flatten)]
    pub common: Common,
    /// Where the `x` key writes (.json, .toml or .safetensors) [default: MODEL.params.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `qscope eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model and quantization options.
    #[command(flatten)]
    pub common: Common,
    /// One JSON object on stdout (formats.md §4).
    #[arg(long)]
    pub json: bool,
    /// Write the calibration set's activations as integers (I8 safetensors with scale and zero
    /// point, one file per quantization point) into this existing folder.
    #[arg(long, value_name = "DIR")]
    pub dump_activations: Option<PathBuf>,
    /// Write the float and the quantized outputs (tensors `float`, `quant`) to this safetensors.
    #[arg(long, value_name = "FILE")]
    pub save_outputs: Option<PathBuf>,
}

/// `qscope export --out FILE`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model and quantization options.
    #[command(flatten)]
    pub common: Common,
    /// .json or .toml: the parameters (formats.md §5); .safetensors: a quantized model (§6);
    /// .onnx: a QDQ ONNX model (§6b); .cache: a TensorRT calibration cache (§6c).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// .onnx: store weights of 4 bits or fewer as native INT4 (else INT8 holding them).
    #[arg(long)]
    pub native_int4: bool,
    /// .onnx: write activations of 2, 3, 5, 6 or 7 bits as 8-bit Q/DQ clipped to their range
    /// (Q/DQ itself says only 8 and 4 bits).
    #[arg(long)]
    pub qdq_clip: bool,
    /// .cache: the header line (TensorRT skips a cache whose header it deems incompatible).
    #[arg(long, value_name = "LINE", default_value = qscope::export::trt_cache::DEFAULT_HEADER)]
    pub trt_header: String,
}

/// `qscope plot --layer NAME --out FILE` or `qscope plot --all --out DIR`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Model and quantization options.
    #[command(flatten)]
    pub common: Common,
    /// The weight layer to draw (or `input`).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub layer: Option<String>,
    /// One file per weight layer (and the input) into the folder --out.
    #[arg(long)]
    pub all: bool,
    /// The picture (.svg or .png), or with --all an existing folder.
    #[arg(long, value_name = "FILE|DIR")]
    pub out: PathBuf,
    /// With --all: svg or png.
    #[arg(long, default_value = "svg", value_parser = ["svg", "png"])]
    pub format: String,
    /// Log-scaled counts (a ReLU output's spike at zero otherwise dwarfs the rest).
    #[arg(long)]
    pub log: bool,
}

/// `qscope sensitivity`.
#[derive(Debug, Args)]
pub struct SensitivityArgs {
    /// Model and quantization options.
    #[command(flatten)]
    pub common: Common,
    /// Bit widths to try per layer.
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    pub bits: Vec<u8>,
    /// weights, activations or both.
    #[arg(long, default_value = "weights")]
    pub target: Target,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `qscope inspect FILE` (a safetensors file, a `*.safetensors.index.json` of shards, or a folder with one).
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A safetensors file, a sharded checkpoint's index (or its folder), or a bundled model name.
    pub file: String,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
