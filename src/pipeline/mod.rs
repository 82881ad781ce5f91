//! The whole PTQ flow: quantize weights → calibrate activations → choose ranges → evaluate.
//! `qscope eval` and the UI's worker both call [`run`] (or its steps), so their figures agree.

use crate::config::QuantConfig;
use crate::error::{Error, Result};
use crate::eval::report::{Report, Timings};
use crate::model::{Dataset, Model};
use crate::params::{ModelParams, WeightQuant};
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

mod batch;
mod calibrate;
mod evaluate;
pub mod layerwise;
mod report;

pub use batch::{batches, check_data, make_batch};
pub use calibrate::{
    Calibration, calibrate, choose_ranges, quantize_weights, with_quantized_weights,
};
pub use evaluate::{Evaluation, evaluate};
use report::build_report;

/// The float and quantized graph outputs of an evaluation, flattened in sample order.
#[derive(Debug, Clone, Default)]
pub struct SavedOutputs {
    /// The float model's first output (empty without float weights).
    pub float: Vec<f32>,
    /// The integer engine's first output.
    pub quant: Vec<f32>,
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
    /// Both engines' outputs, when `config.save_outputs` asked for them.
    pub saved: Option<SavedOutputs>,
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
        let (weights, method_times) = prepare_weights(model, calib, config, cancel)?;
        timings = method_times;
        timings.weights = ms(t);
        cancel.check()?;
        let t = Instant::now();
        let calibration = calibrate(model, config, &weights, calib, cancel)?;
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
    outcome.report.timings_ms = Timings {
        eval: outcome.report.timings_ms.eval,
        ..timings
    };
    outcome.calibration = Some(calibration.clone());
    Ok(outcome)
}

/// Step 1 with the weight methods: quantized weights (nearest, then GPTQ and bias correction
/// layer by layer on `calib` when `config` asks for them) and the time each method took.
fn prepare_weights(
    model: &Model,
    calib: &Dataset,
    config: &QuantConfig,
    cancel: &Cancel,
) -> Result<(Vec<Option<WeightQuant>>, Timings)> {
    let mut weights = quantize_weights(model, config);
    let mut timings = Timings::default();
    if config.weight_rounding != crate::config::WeightRounding::Nearest || config.bias_correction {
        check_data(model, calib)?;
        let lt = layerwise::apply(model, config, &mut weights, calib, cancel)?;
        if config.weight_rounding == crate::config::WeightRounding::Gptq {
            timings.gptq = lt.stats + lt.gptq;
            timings.bias_correction = lt.bias_correction;
        } else {
            timings.bias_correction = lt.stats + lt.bias_correction;
        }
    }
    Ok((weights, timings))
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
    let mut ev = evaluate(
        model,
        config,
        &params,
        eval,
        has_float,
        config.save_outputs,
        cancel,
    )?;
    let saved = ev.saved.take().map(|(f, q)| SavedOutputs {
        float: f.concat(),
        quant: q.concat(),
    });
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
        saved,
    })
}

/// What decides the quantized weights and the calibration histograms: each weight layer's
/// settings and the weight methods.
type WeightKey = (
    Vec<Option<crate::config::WeightSettings>>,
    (bool, bool, crate::config::WeightRounding, bool),
);

/// The weight-side settings of every weight layer and the weight methods: when they are
/// unchanged, quantized weights and calibration histograms can be reused.
fn weight_key(model: &Model, config: &QuantConfig) -> WeightKey {
    // Float-kept layers are part of the key: they decide where the quantization points are.
    let layers = model
        .weight_layers()
        .iter()
        .map(|&i| {
            let name = &model.layers[i].name;
            (!config.is_float(name)).then(|| config.weight_settings(name))
        })
        .collect();
    let methods = (
        config.bias_correction,
        config.cle,
        config.weight_rounding,
        config.gptq_act_order,
    );
    (layers, methods)
}

/// What a [`Session`] keeps between runs: the weight settings it was made for, the quantized
/// weights and the calibration histograms.
struct Cached {
    key: WeightKey,
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
