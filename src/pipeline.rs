//! The whole PTQ flow: quantize weights → calibrate activations → choose ranges → evaluate.
//! `qscope eval` and the UI's worker both call [`run`] (or its steps), so their figures agree.

use crate::config::{INPUT_POINT, QuantConfig};
use crate::engine::{Act, IntModel, float};
use crate::error::{Error, Result};
use crate::eval::accuracy::AccuracyCounts;
use crate::eval::report::{InputReport, LayerReport, Report, Timings};
use crate::eval::sqnr::{SqnrAcc, sqnr_db};
use crate::model::{Dataset, Model};
use crate::params::{ActQuant, LayerParams, ModelParams, WeightQuant};
use crate::quant::calib::{Histogram, StrategyParams, choose_range};
use crate::quant::weights::quantize_weights as quantize_matrix;
use crate::quant::{QParams, Strategy};
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Samples per batch in calibration and evaluation (batches run in parallel).
pub const BATCH: usize = 128;

/// A cancel flag shared with a running job; checked between batches.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the job to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// `Err(Cancelled)` if the job was asked to stop.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Streaming histograms of every quantization point over the calibration set.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// The network input (normalized).
    pub input: Histogram,
    /// Each weight layer's (fused) output, in network order.
    pub outputs: Vec<Histogram>,
    /// Calibration samples seen.
    pub samples: usize,
}

/// The model index of the layer whose output is weight layer `i`'s quantization point.
pub fn point_of(model: &Model, i: usize) -> usize {
    if model.relu_follows(i) { i + 1 } else { i }
}

/// Step 1: each weight layer's quantized weights (`None` for layers kept in float).
pub fn quantize_weights(model: &Model, config: &QuantConfig) -> Vec<Option<WeightQuant>> {
    model
        .weight_layers()
        .into_iter()
        .map(|i| {
            let layer = &model.layers[i];
            if config.is_float(&layer.name) {
                return None;
            }
            let settings = config.weight_settings(&layer.name);
            let (w, rows, cols) = layer.op.weight_rows().expect("weight layer");
            Some(WeightQuant {
                settings,
                q: quantize_matrix(w, rows, cols, &settings),
            })
        })
        .collect()
}

/// The model with each quantized layer's weights replaced by their dequantized values.
pub fn with_quantized_weights(model: &Model, weights: &[Option<WeightQuant>]) -> Model {
    let mut m = model.clone();
    for (&i, wq) in model.weight_layers().iter().zip(weights) {
        let Some(wq) = wq else { continue };
        let (w, _) = m.layers[i].op.weight_bias_mut().expect("weight layer");
        w.copy_from_slice(&wq.q.dequantize());
    }
    m
}

/// A batch of samples, normalized for the model.
fn normalized_batch(model: &Model, data: &Dataset, start: usize, end: usize) -> Vec<f32> {
    let mut x = data.samples(start, end).to_vec();
    model.normalize(&mut x);
    x
}

/// Batch ranges covering `n` samples.
fn batches(n: usize) -> Vec<(usize, usize)> {
    (0..n.div_ceil(BATCH))
        .map(|b| (b * BATCH, ((b + 1) * BATCH).min(n)))
        .collect()
}

/// Step 2: runs the calibration set through the model with quantized weights and float
/// activations, collecting one streaming histogram per quantization point.
pub fn calibrate(
    model: &Model,
    weights: &[Option<WeightQuant>],
    data: &Dataset,
    cancel: &Cancel,
) -> Result<Calibration> {
    if data.n == 0 {
        return Err(Error::data(&data.label, "the calibration set is empty"));
    }
    data.check_fits(model.input_len(), &model.input_shape)?;
    let qmodel = with_quantized_weights(model, weights);
    let wl = model.weight_layers();
    let points: Vec<usize> = wl.iter().map(|&i| point_of(model, i)).collect();
    let empty = || (Histogram::new(), vec![Histogram::new(); points.len()]);
    let (input, outputs) = batches(data.n)
        .into_par_iter()
        .map(|(s, e)| -> Result<(Histogram, Vec<Histogram>)> {
            cancel.check()?;
            let x = normalized_batch(model, data, s, e);
            let (mut hin, mut hout) = empty();
            check_finite(model, data, s, &x, "input (normalized)")?;
            hin.add(&x);
            let mut overflow = None;
            float::forward(&qmodel, &x, e - s, |li, out| {
                if overflow.is_none() && out.iter().any(|v| !v.is_finite()) {
                    overflow = Some(li);
                }
                for (p, h) in points.iter().zip(hout.iter_mut()) {
                    if *p == li {
                        h.add(out);
                    }
                }
            });
            if let Some(li) = overflow {
                return Err(float_overflow(model, data, s, &model.layers[li].name));
            }
            Ok((hin, hout))
        })
        .try_reduce(empty, |(mut a, mut ao), (b, bo)| {
            a.merge(&b);
            for (x, y) in ao.iter_mut().zip(&bo) {
                x.merge(y);
            }
            Ok((a, ao))
        })?;
    Ok(Calibration {
        input,
        outputs,
        samples: data.n,
    })
}

/// The error for a float model whose activations overflow f32 on a batch starting at `start`.
fn float_overflow(model: &Model, data: &Dataset, start: usize, at: &str) -> Error {
    Error::data(
        &data.label,
        format!(
            "model '{}' overflows f32 (inf or NaN) at '{at}' in the batch from sample {start}: weights or inputs are too large; no accuracy can be reported",
            model.name
        ),
    )
}

/// Checks a batch of values for infinities and NaN (normalization of huge inputs, overflow).
fn check_finite(model: &Model, data: &Dataset, start: usize, x: &[f32], at: &str) -> Result<()> {
    if x.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(float_overflow(model, data, start, at))
    }
}

/// The activation quantization of point `name` from its histogram.
fn act_quant(config: &QuantConfig, name: &str, hist: &Histogram) -> ActQuant {
    let settings = config.act_settings(name);
    let range = match settings.range {
        Some(r) => r,
        None => choose_range(
            hist,
            settings.strategy,
            &StrategyParams {
                bits: settings.bits,
                scheme: settings.scheme,
                percentile: settings.percentile,
            },
        ),
    };
    ActQuant {
        settings,
        range,
        qparams: QParams::from_range(range, settings.bits, settings.scheme),
    }
}

/// Step 3: chooses every activation range from the histograms and assembles the parameters.
pub fn choose_ranges(
    model: &Model,
    config: &QuantConfig,
    weights: &[Option<WeightQuant>],
    calib: &Calibration,
) -> ModelParams {
    let wl = model.weight_layers();
    let layers = wl
        .iter()
        .zip(weights)
        .zip(&calib.outputs)
        .map(|((&i, wq), hist)| {
            let name = &model.layers[i].name;
            LayerParams {
                name: name.clone(),
                index: i,
                weight: wq.clone(),
                act: Some(act_quant(config, name, hist)),
            }
        })
        .collect();
    ModelParams {
        input: act_quant(config, INPUT_POINT, &calib.input),
        layers,
    }
}

/// What evaluation measured.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Accuracy and agreement counts.
    pub counts: AccuracyCounts,
    /// Final output SQNR.
    pub output: SqnrAcc,
    /// Per weight layer: accumulated activation SQNR.
    pub act: Vec<SqnrAcc>,
    /// Per weight layer: isolated activation SQNR.
    pub isolated: Vec<SqnrAcc>,
}

impl Evaluation {
    fn merge(mut self, o: Evaluation) -> Evaluation {
        self.counts.merge(&o.counts);
        self.output.merge(&o.output);
        for (a, b) in self.act.iter_mut().zip(&o.act) {
            a.merge(b);
        }
        for (a, b) in self.isolated.iter_mut().zip(&o.isolated) {
            a.merge(b);
        }
        self
    }
}

/// Step 4: runs the float model and the integer engine on `data` and compares them.
/// With `has_float == false` (no float weights) only the integer side is measured.
pub fn evaluate(
    model: &Model,
    params: &ModelParams,
    data: &Dataset,
    has_float: bool,
    cancel: &Cancel,
) -> Result<Evaluation> {
    data.check_fits(model.input_len(), &model.input_shape)?;
    data.check_labels(model.output_len())?;
    crate::export::quantized_model::check_int_biases(model, params)?;
    let int = IntModel::new(model, params);
    let wl = model.weight_layers();
    let classes = model.output_len();
    let zero = || Evaluation {
        act: vec![SqnrAcc::default(); wl.len()],
        isolated: vec![SqnrAcc::default(); wl.len()],
        ..Default::default()
    };
    batches(data.n)
        .into_par_iter()
        .map(|(s, e)| -> Result<Evaluation> {
            cancel.check()?;
            let n = e - s;
            let x = normalized_batch(model, data, s, e);
            let mut ev = zero();
            let mut float_outs: Vec<Vec<f32>> = Vec::new();
            check_finite(model, data, s, &x, "input (normalized)")?;
            let float_logits = has_float
                .then(|| float::forward(model, &x, n, |_, out| float_outs.push(out.to_vec())));
            if let Some(li) = float_outs
                .iter()
                .position(|o| o.iter().any(|v| !v.is_finite()))
            {
                return Err(float_overflow(model, data, s, &model.layers[li].name));
            }
            let quant_logits = int.forward(&x, n, |li, act: &Act| {
                if !has_float {
                    return;
                }
                for (j, &i) in wl.iter().enumerate() {
                    if point_of(model, i) == li
                        && params.by_index(i).is_some_and(|p| p.weight.is_some())
                    {
                        ev.act[j].add(&float_outs[li], &act.to_f32());
                    }
                }
            });
            if has_float {
                for (j, &i) in wl.iter().enumerate() {
                    if i == 0 {
                        // Fed the quantized network input, the first layer alone is exactly what
                        // the whole engine ran: isolated and accumulated coincide.
                        ev.isolated[j] = ev.act[j];
                        continue;
                    }
                    if let Some(y) = int.run_layer_isolated(i, &float_outs[i - 1], n) {
                        ev.isolated[j].add(&float_outs[point_of(model, i)], &y);
                    }
                }
            }
            let labels = data.labels.as_ref().map(|l| &l[s..e]);
            ev.counts
                .add(float_logits.as_deref(), &quant_logits, classes, labels);
            if let Some(f) = &float_logits {
                ev.output.add(f, &quant_logits);
            }
            Ok(ev)
        })
        .try_reduce(zero, |a, b| Ok(a.merge(b)))
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The report (what `eval --json` prints).
    pub report: Report,
    /// The parameters that were evaluated (what export writes).
    pub params: ModelParams,
    /// The calibration histograms (`None` when parameters were loaded, not calibrated).
    pub calibration: Option<Calibration>,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The whole flow on `model`: quantize weights, calibrate on `calib`, evaluate on `eval`.
pub fn run(
    model: &Model,
    calib: &Dataset,
    eval: &Dataset,
    config: &QuantConfig,
    cancel: &Cancel,
) -> Result<Outcome> {
    run_cached(model, calib, eval, config, &mut None, cancel)
}

/// The flow, reusing `cache` (quantized weights and histograms) when it was made for the same
/// weight settings and refilling it otherwise.
fn run_cached(
    model: &Model,
    calib: &Dataset,
    eval: &Dataset,
    config: &QuantConfig,
    cache: &mut Option<Cached>,
    cancel: &Cancel,
) -> Result<Outcome> {
    config.validate(Some(model))?;
    let key = weight_key(model, config);
    let mut timings = Timings::default();
    if !matches!(cache, Some(c) if c.key == key) {
        let t = Instant::now();
        let weights = quantize_weights(model, config);
        timings.weights = ms(t);
        cancel.check()?;
        let t = Instant::now();
        let calibration = calibrate(model, &weights, calib, cancel)?;
        timings.calibration = ms(t);
        *cache = Some(Cached {
            key,
            weights,
            calibration,
        });
    }
    let Cached {
        weights,
        calibration,
        ..
    } = cache.as_ref().expect("filled above");
    let t = Instant::now();
    let params = choose_ranges(model, config, weights, calibration);
    timings.calibration += ms(t);
    let mut outcome = evaluate_params(model, params, eval, config, true, cancel)?;
    outcome.report.calib_samples = calibration.samples;
    outcome.report.timings_ms.weights = timings.weights;
    outcome.report.timings_ms.calibration = timings.calibration;
    outcome.calibration = Some(calibration.clone());
    Ok(outcome)
}

/// Evaluates ready-made parameters (from calibration or a `--params` file) and builds the report.
pub fn evaluate_params(
    model: &Model,
    params: ModelParams,
    eval: &Dataset,
    config: &QuantConfig,
    has_float: bool,
    cancel: &Cancel,
) -> Result<Outcome> {
    let t = Instant::now();
    let ev = evaluate(model, &params, eval, has_float, cancel)?;
    let t_eval = ms(t);
    let report = build_report(
        model,
        config,
        &params,
        &ev,
        eval.n,
        has_float,
        Timings {
            eval: t_eval,
            ..Default::default()
        },
    );
    Ok(Outcome {
        report,
        params,
        calibration: None,
    })
}

fn build_report(
    model: &Model,
    config: &QuantConfig,
    params: &ModelParams,
    ev: &Evaluation,
    eval_samples: usize,
    has_float: bool,
    timings_ms: Timings,
) -> Report {
    let layers = params
        .layers
        .iter()
        .enumerate()
        .map(|(j, lp)| {
            let layer = &model.layers[lp.index];
            let float = lp.weight.is_none();
            let weight_sqnr_db = match (&lp.weight, has_float) {
                (Some(wq), true) => sqnr_db(
                    layer.op.weight_rows().expect("weight layer").0,
                    &wq.q.dequantize(),
                ),
                _ => None,
            };
            let ws = lp.weight.as_ref().map(|w| w.settings);
            let act = lp.act.as_ref().filter(|_| !float);
            LayerReport {
                name: lp.name.clone(),
                op: layer.op.kind().to_string(),
                weight_bits: ws.map(|s| s.bits),
                act_bits: act.map(|a| a.settings.bits),
                weight_strategy: ws.map(|s| {
                    if s.clip.is_some() {
                        Strategy::Manual
                    } else {
                        s.strategy
                    }
                    .to_string()
                }),
                act_strategy: act.map(|a| a.settings.strategy.to_string()),
                granularity: ws.map(|s| s.granularity.to_string()),
                weight_scheme: ws.map(|s| s.scheme.to_string()),
                act_scheme: act.map(|a| a.settings.scheme.to_string()),
                weight_sqnr_db,
                act_sqnr_db: if float { None } else { ev.act[j].db() },
                act_sqnr_isolated_db: if float { None } else { ev.isolated[j].db() },
                act_range: act.map(|a| [a.range.lo, a.range.hi]),
                float,
            }
        })
        .collect();
    Report {
        qscope_version: env!("CARGO_PKG_VERSION").to_string(),
        model: model.name.clone(),
        config: config.clone(),
        calib_samples: 0,
        eval_samples,
        fp32_accuracy: if has_float {
            ev.counts.float_accuracy()
        } else {
            None
        },
        quant_accuracy: ev.counts.quant_accuracy(),
        agreement: if has_float {
            ev.counts.agreement()
        } else {
            None
        },
        output_sqnr_db: ev.output.db(),
        layers,
        input: InputReport {
            act_bits: params.input.settings.bits,
            act_strategy: params.input.settings.strategy.to_string(),
            act_range: [params.input.range.lo, params.input.range.hi],
        },
        timings_ms,
        kernel: crate::engine::kernels::kernel_name().to_string(),
    }
}

/// The weight-side settings of every weight layer: when they are unchanged, quantized weights
/// and calibration histograms can be reused.
fn weight_key(model: &Model, config: &QuantConfig) -> Vec<Option<crate::config::WeightSettings>> {
    model
        .weight_layers()
        .iter()
        .map(|&i| {
            let name = &model.layers[i].name;
            (!config.is_float(name)).then(|| config.weight_settings(name))
        })
        .collect()
}

/// What a [`Session`] keeps between runs: the weight settings it was made for, the quantized
/// weights and the calibration histograms.
struct Cached {
    key: Vec<Option<crate::config::WeightSettings>>,
    weights: Vec<Option<WeightQuant>>,
    calibration: Calibration,
}

/// A model with its data sets that re-runs configurations, reusing the quantized weights and
/// calibration histograms while the weight settings stay the same (the UI's worker uses it).
pub struct Session {
    /// The model.
    pub model: Model,
    /// Calibration data.
    pub calib: Dataset,
    /// Evaluation data.
    pub eval: Dataset,
    cache: Option<Cached>,
}

impl Session {
    /// A session with nothing cached yet.
    pub fn new(model: Model, calib: Dataset, eval: Dataset) -> Self {
        Session {
            model,
            calib,
            eval,
            cache: None,
        }
    }

    /// Runs `config`, recalibrating only if its weight settings differ from the last run's.
    pub fn run(&mut self, config: &QuantConfig, cancel: &Cancel) -> Result<Outcome> {
        run_cached(
            &self.model,
            &self.calib,
            &self.eval,
            config,
            &mut self.cache,
            cancel,
        )
    }
}
