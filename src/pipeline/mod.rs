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
pub const BATCH: usize = 64;

/// Where a long method reports its steps: one short line each ("gptq fc1 (1/3)").
pub type ProgressFn = Arc<dyn Fn(&str) + Send + Sync>;

/// A running job's controls: a cancel flag shared with it (checked between batches and
/// layers), and an optional sink for the progress of the layer-by-layer methods.
#[derive(Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Cancel {
    /// A flag that is not set, without a progress sink.
    pub fn new() -> Self {
        Self::default()
    }
    /// The same controls, reporting progress to `f`.
    pub fn with_progress(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }
    /// Reports one step of a long method (nothing without a sink).
    pub fn progress(&self, msg: &str) {
        if let Some(f) = &self.progress {
            f(msg);
        }
    }
    /// Asks the job to stop.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
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

pub mod act_refine;
mod batch;
pub mod bench;
pub mod bias_correction;
pub mod bias_passes;
mod calibrate;
pub mod cle;
mod evaluate;
pub mod float_side;
pub mod high_bias;
pub mod layerwise;
pub mod mixed;
mod report;
pub mod resume;
pub mod smoothquant;

pub use batch::{batches, check_data, make_batch};
pub use calibrate::{
    Calibration, calibrate, choose_ranges, quantize_weights, with_quantized_weights,
};
pub use evaluate::{Evaluation, FloatSide, evaluate, evaluate_with};
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
    /// The model the parameters refer to when SmoothQuant changed it (`None`: the input model).
    pub smoothed: Option<Model>,
}

impl Outcome {
    /// The model the parameters refer to: the SmoothQuant copy, else `model` (the one run on).
    pub fn model_or<'a>(&'a self, model: &'a Model) -> &'a Model {
        self.smoothed.as_ref().unwrap_or(model)
    }
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
    run_cached(
        model,
        calib,
        eval,
        config,
        &mut None,
        FloatSide::Run,
        cancel,
    )
}

/// The flow, reusing `cache` (quantized weights and histograms) when it was made for the same
/// weight settings and refilling it otherwise.
fn run_cached(
    model: &Model,
    calib: &Dataset,
    eval: &Dataset,
    config: &QuantConfig,
    cache: &mut Option<Cached>,
    floats: FloatSide,
    cancel: &Cancel,
) -> Result<Outcome> {
    config.validate(Some(model))?;
    let key = weight_key(model, config);
    let mut timings = refresh_weights(model, (calib, config), key, cache, cancel)?;
    // The float model's means and outputs on the calibration set: measured once per weight
    // settings, for bias correction and activation refinement both.
    let t = Instant::now();
    let c = cache.as_mut().expect("filled above");
    if (config.bias_correction || config.act_refine) && c.float_ref.is_none() {
        let work = c.prepared.work(model);
        check_data(work, calib)?;
        let limit = config.max_sample_elems();
        c.float_ref = Some(bias_correction::FloatReference::of(
            work, calib, limit, cancel,
        )?);
    }
    let float_ref_ms = ms(t);
    let c = cache.as_ref().expect("filled above");
    // With CLE or SmoothQuant the flow runs on the changed model (the same float function):
    // its float activations are what the quantization points and per-layer figures refer to.
    let p = &c.prepared;
    let work = p.work(model);
    let t = Instant::now();
    let mut params = choose_ranges(work, config, &p.weights, &c.calibration);
    timings.calibration += ms(t);
    let mut calibration = None;
    if config.bias_correction {
        let t = Instant::now();
        let float = c.float_ref.as_ref().expect("measured above");
        let (bp, cal) = bias_correction::apply(work, config, params, calib, float, cancel)?;
        (params, calibration) = (bp, cal);
        timings.bias_correction = ms(t) + float_ref_ms;
    }
    if config.act_refine {
        let t = Instant::now();
        let float = &c.float_ref.as_ref().expect("measured above").output;
        act_refine::refine(work, config, &mut params, calib, float, cancel)?;
        timings.act_refine = ms(t)
            + if config.bias_correction {
                0.0
            } else {
                float_ref_ms
            };
    }
    if let Some(sq) = &p.smoothed {
        params.smoothquant = sq.entries.clone();
    }
    params.methods = Some(crate::eval::report::Methods::of(config));
    let mut outcome = evaluate_params_with(work, params, eval, config, (true, floats), cancel)?;
    outcome.report.calib_samples = c.calibration.samples;
    outcome.report.cle_pairs = p.cle_pairs.clone();
    if let Some(sq) = &p.smoothed {
        outcome.report.smoothquant = sq.report.clone();
        outcome.report.smoothquant_skipped = sq.skipped.clone();
        outcome.smoothed = Some(sq.model.clone());
    }
    outcome.report.timings_ms = Timings {
        eval: outcome.report.timings_ms.eval,
        ..timings
    };
    outcome.calibration = Some(calibration.unwrap_or_else(|| c.calibration.clone()));
    Ok(outcome)
}

/// Quantizes the weights and calibrates again unless `cache` holds the results for `key`; the
/// calibration resumes from the first layer whose weights changed when the model (no CLE or
/// SmoothQuant, which change it) and the methods are the same. Returns the steps' timings
/// (none when the cache was kept).
fn refresh_weights(
    model: &Model,
    (calib, config): (&Dataset, &QuantConfig),
    key: WeightKey,
    cache: &mut Option<Cached>,
    cancel: &Cancel,
) -> Result<Timings> {
    if matches!(cache, Some(c) if c.key == key) {
        return Ok(Timings::default());
    }
    let t = Instant::now();
    let prepared = prepare_weights(model, calib, config, cancel)?;
    let mut timings = prepared.timings;
    timings.weights = ms(t);
    cancel.check()?;
    let t = Instant::now();
    let work = prepared.work(model);
    // The same model (no CLE or SmoothQuant, which change it) and methods: the calibration
    // runs only from the first layer whose weights changed.
    let same_model = !config.cle && config.smoothquant.is_none();
    let prev = cache
        .as_ref()
        .filter(|c| same_model && c.key.1 == key.1)
        .map(|c| (&c.calibration, &c.calib_checkpoint, &c.prepared.weights[..]));
    let weights = &prepared.weights;
    let (calibration, calib_checkpoint) =
        calibrate::calibrate_from(work, config, weights, calib, prev, cancel)?;
    timings.calibration = ms(t);
    *cache = Some(Cached {
        key,
        calibration,
        calib_checkpoint,
        prepared,
        float_ref: None,
    });
    Ok(timings)
}

/// The weights step's results: the SmoothQuant copy, the equalized model (with CLE), the
/// quantized weights, the methods' reports and timings.
struct Prepared {
    smoothed: Option<smoothquant::Smoothed>,
    equalized: Option<Model>,
    weights: Vec<Option<WeightQuant>>,
    cle_pairs: Vec<crate::eval::report::ClePairReport>,
    timings: Timings,
}

impl Prepared {
    /// The model the rest of the flow runs on: equalized, else smoothed, else `model`.
    fn work<'a>(&'a self, model: &'a Model) -> &'a Model {
        self.equalized
            .as_ref()
            .or(self.smoothed.as_ref().map(|s| &s.model))
            .unwrap_or(model)
    }
}

/// Step 1 with the weight methods, in this order: SmoothQuant on a copy of the model (its
/// statistics from a float pass over `calib`), CLE on the result, quantized weights (nearest,
/// then GPTQ or AdaRound layer by layer on `calib` when `config` asks for it), and
/// the biases CLE changed recorded in the weights (exports write them; the
/// SmoothQuant changes are replayed from the parameters' `smoothquant` instead).
fn prepare_weights(
    model: &Model,
    calib: &Dataset,
    config: &QuantConfig,
    cancel: &Cancel,
) -> Result<Prepared> {
    let mut timings = Timings::default();
    let smoothed = match config.smoothquant {
        Some(alpha) => {
            let t = Instant::now();
            check_data(model, calib)?;
            let s = smoothquant::smooth(model, calib, config, alpha, cancel)?;
            timings.smoothquant = ms(t);
            Some(s)
        }
        None => None,
    };
    let base = smoothed.as_ref().map_or(model, |s| &s.model);
    let (equalized, cle_pairs) = if config.cle {
        let t = Instant::now();
        let (m, reports) = cle::equalize_and_absorb(base, config, calib, cancel)?;
        timings.cle = ms(t);
        (Some(m), reports)
    } else {
        (None, Vec::new())
    };
    let work = equalized.as_ref().unwrap_or(base);
    let mut weights = quantize_weights(work, config);
    if equalized.is_some() {
        for (&i, wq) in work.weight_layers().iter().zip(&mut weights) {
            let (Some(wq), Some(b)) = (wq, work.layers[i].op.bias()) else {
                continue;
            };
            if base.layers[i].op.bias() != Some(b) {
                wq.bias = Some(b.to_vec());
            }
        }
    }
    if config.weight_rounding != crate::config::WeightRounding::Nearest {
        check_data(work, calib)?;
        let lt = layerwise::apply(work, config, &mut weights, calib, cancel)?;
        match config.weight_rounding {
            crate::config::WeightRounding::Gptq => timings.gptq = lt.stats + lt.gptq,
            crate::config::WeightRounding::Adaround => timings.adaround = lt.stats + lt.adaround,
            crate::config::WeightRounding::Nearest => {}
        }
    }
    Ok(Prepared {
        smoothed,
        equalized,
        weights,
        cle_pairs,
        timings,
    })
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
    let side = (has_float, FloatSide::Run);
    evaluate_params_with(model, params, eval, config, side, cancel)
}

/// [`evaluate_params`] with the float side from `side` (a session's cache).
fn evaluate_params_with(
    model: &Model,
    params: ModelParams,
    eval: &Dataset,
    config: &QuantConfig,
    (has_float, side): (bool, FloatSide),
    cancel: &Cancel,
) -> Result<Outcome> {
    let t = Instant::now();
    let opts = (has_float, config.save_outputs);
    let mut ev = evaluate_with(model, config, &params, eval, opts, side, cancel)?;
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
        smoothed: None,
    })
}

/// What decides the quantized weights and the calibration histograms: each weight layer's
/// settings and the weight methods.
type WeightKey = (
    Vec<Option<(crate::config::WeightSettings, Option<Vec<u8>>)>>,
    (bool, crate::config::WeightRounding, bool, Option<u32>),
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
            let bits = config.channel_bits(name).map(<[u8]>::to_vec);
            (!config.is_float(name)).then(|| (config.weight_settings(name), bits))
        })
        .collect();
    let methods = (
        config.cle,
        config.weight_rounding,
        config.gptq_act_order,
        config.smoothquant.map(f32::to_bits),
    );
    (layers, methods)
}

/// What a [`Session`] keeps between runs: the weight settings it was made for, the quantized
/// weights and the calibration histograms.
struct Cached {
    key: WeightKey,
    calibration: Calibration,
    /// The calibration's float run before the first layer its change touched.
    calib_checkpoint: calibrate::CalibCheckpoint,
    prepared: Prepared,
    /// The float model on the calibration set, once bias correction or refinement asked.
    float_ref: Option<bias_correction::FloatReference>,
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
    /// The float model's results on `eval` and the model changes they were made for (CLE,
    /// SmoothQuant α): they depend on no other setting.
    floats: Option<(FloatKey, Option<float_side::FloatCache>)>,
}

/// The settings that change the float model a session evaluates: CLE, SmoothQuant's α and,
/// with either, which layers stay float (they are left out of both).
type FloatKey = (bool, Option<u32>, Vec<bool>);

fn float_key(model: &Model, config: &QuantConfig) -> FloatKey {
    let changes = config.cle || config.smoothquant.is_some();
    let kept = model
        .layers
        .iter()
        .map(|l| changes && config.is_float(&l.name))
        .collect();
    (config.cle, config.smoothquant.map(f32::to_bits), kept)
}

impl Session {
    /// A session with nothing cached yet.
    pub fn new(model: Model, calib: Dataset, eval: Dataset) -> Self {
        Session {
            model,
            calib,
            eval,
            cache: None,
            floats: None,
        }
    }

    /// The node the next evaluation can resume its integer run from (0: from the input): where
    /// the last change began to matter, while the run before it is kept.
    pub fn resume_node(&self) -> usize {
        match &self.floats {
            Some((_, Some(c))) => c.checkpoint.as_ref().map_or(0, |k| k.cut),
            _ => 0,
        }
    }

    /// The node the next calibration can resume its float run from (0: from the input): the
    /// first layer whose weights the last weight change touched, while that run is kept.
    pub fn calibration_resume_node(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.calib_checkpoint.cut)
    }

    /// Whether the float model's results on the evaluation set are kept from an earlier run.
    pub fn float_cached(&self) -> bool {
        matches!(&self.floats, Some((_, Some(_))))
    }

    /// Runs `config`, recalibrating only if its weight settings differ from the last run's.
    /// The float model's results on the evaluation set are measured once per CLE/SmoothQuant
    /// setting and kept while they fit [`float_side::FLOAT_CACHE_BYTES`].
    pub fn run(&mut self, config: &QuantConfig, cancel: &Cancel) -> Result<Outcome> {
        let key = float_key(&self.model, config);
        if !matches!(&self.floats, Some((k, _)) if *k == key) {
            self.floats = Some((key, None));
        }
        let slot = &mut self.floats.as_mut().expect("set above").1;
        run_cached(
            &self.model,
            &self.calib,
            &self.eval,
            config,
            &mut self.cache,
            FloatSide::Cached(slot),
            cancel,
        )
    }
}
