//! The compute side of the UI: a dedicated thread with one job slot.
//!
//! The UI puts a [`Job`] (the whole config plus a generation number); a newer job replaces a
//! pending one and cancels the running one. Each job runs under `catch_unwind`, so a panic
//! becomes a [`WorkerMsg::Failed`] and the UI stays up. Results come back as owned data through
//! the UI's one event channel, tagged with their generation.

use super::event::Event;
use crate::Report;
use crate::config::QuantConfig;
use crate::error::Error;
use crate::eval::layer_view::{LayerView, layer_views};
use crate::eval::sensitivity::{Target, with_layer_bits};
use crate::model::{Dataset, Model};
use crate::params::ModelParams;
use crate::pipeline::mixed::{self, MixedOptions, MixedSearch};
use crate::pipeline::{Cancel, Outcome, Session, evaluate_params};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The bit widths of the per-layer sensitivity (int4 first: it is the informative one).
pub const SENSITIVITY_BITS: [u8; 2] = [4, 8];

/// One request to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Increases with every job the UI sends; results carry it back.
    pub generation: u64,
    /// The whole quantization config.
    pub config: QuantConfig,
    /// Histogram bins to draw (the width of a histogram panel).
    pub bins: usize,
    /// Run again even if `config` is the one last run.
    pub rerun: bool,
    /// Loaded parameters to evaluate instead of calibrating (only with the config they give).
    pub seed: Option<ModelParams>,
    /// Also search the mixed-precision front for `config` (instead of the sensitivity cells).
    pub mixed: bool,
    /// What the mixed search gives one width (`None`: chosen by the model's size).
    pub mixed_unit: Option<mixed::Unit>,
}

/// What one run produced, ready to show.
#[derive(Debug, Clone)]
pub struct Computed {
    /// The report (the `eval --json` figures).
    pub report: Report,
    /// The parameters evaluated (what `x` exports).
    pub params: ModelParams,
    /// Per row of the layer list (the input first, then each weight layer): what to draw.
    pub views: Vec<LayerView>,
    /// Whether the parameters were loaded (`--params`) rather than calibrated.
    pub loaded: bool,
    /// Time the worker spent on this job.
    pub compute: Duration,
    /// The histogram bins the views were made with.
    pub bins: usize,
}

/// Accuracy of the model with one weight layer at one bit width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensitivityCell {
    /// Index among the weight layers.
    pub layer: usize,
    /// The layer's weight bits.
    pub bits: u8,
    /// Integer-engine top-1.
    pub accuracy: Option<f64>,
    /// Agreement with the float model.
    pub agreement: Option<f64>,
}

/// A report from the worker.
#[derive(Debug, Clone)]
pub enum WorkerMsg {
    /// The main result of a job.
    Done {
        /// The job's generation.
        generation: u64,
        /// The result.
        result: Box<Computed>,
    },
    /// A job failed (an error, or a panic caught in the worker).
    Failed {
        /// The job's generation.
        generation: u64,
        /// One line saying what went wrong.
        msg: String,
    },
    /// A step of a long method of the running job ("gptq fc1 (1/3)").
    Progress {
        /// The job's generation.
        generation: u64,
        /// What it is doing.
        text: String,
    },
    /// Progress of a mixed-precision search: runs done of total.
    MixedProgress {
        /// The job's generation.
        generation: u64,
        /// Runs done.
        done: usize,
        /// Runs in all.
        total: usize,
    },
    /// The mixed-precision front (or why the search failed).
    Mixed {
        /// The job's generation.
        generation: u64,
        /// The search, or one line saying what went wrong.
        result: Result<Box<MixedSearch>, String>,
    },
    /// One sensitivity figure, after the main result.
    Sensitivity {
        /// The job's generation.
        generation: u64,
        /// The figure.
        cell: SensitivityCell,
    },
}

/// What a worker runs for each job; it reports through `emit`.
pub trait Engine: Send + 'static {
    /// Runs `job`, stopping early when `cancel` is set.
    fn run(&mut self, job: &Job, cancel: &Cancel, emit: &mut dyn FnMut(WorkerMsg));
}

#[derive(Default)]
struct Slot {
    pending: Option<Job>,
    running: Option<Cancel>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
}

/// The handle the UI keeps: submit jobs; dropping it stops the thread.
pub struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Slot> {
    shared.slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// One line from a panic payload (plus where, when the panic hook recorded it).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    match super::terminal::take_panic_location() {
        Some(loc) => format!("{msg} (at {loc})"),
        None => msg,
    }
}

impl Worker {
    /// Starts the worker thread; its reports go to `tx` as [`Event::Worker`].
    pub fn spawn<E: Engine>(mut engine: E, tx: Sender<Event>) -> std::io::Result<Worker> {
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("qscope-worker".into())
            .spawn(move || {
                loop {
                    let (job, cancel) = {
                        let mut slot = lock(&sh);
                        while slot.pending.is_none() && !slot.shutdown {
                            slot = sh.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                        }
                        if slot.shutdown {
                            return;
                        }
                        let job = slot.pending.take().expect("checked above");
                        let (tx, generation) = (tx.clone(), job.generation);
                        let cancel = Cancel::new().with_progress(Arc::new(move |m: &str| {
                            let text = m.to_string();
                            let _ =
                                tx.send(Event::Worker(WorkerMsg::Progress { generation, text }));
                        }));
                        slot.running = Some(cancel.clone());
                        (job, cancel)
                    };
                    let mut emit = |m: WorkerMsg| {
                        let _ = tx.send(Event::Worker(m));
                    };
                    let r = catch_unwind(AssertUnwindSafe(|| engine.run(&job, &cancel, &mut emit)));
                    if let Err(payload) = r {
                        emit(WorkerMsg::Failed {
                            generation: job.generation,
                            msg: format!(
                                "the worker panicked: {}",
                                panic_message(payload.as_ref())
                            ),
                        });
                    }
                    lock(&sh).running = None;
                }
            })?;
        Ok(Worker {
            shared,
            thread: Some(thread),
        })
    }

    /// Puts `job` in the slot, replacing a pending one and cancelling the running one.
    pub fn submit(&self, job: Job) {
        let mut slot = lock(&self.shared);
        slot.pending = Some(job);
        if let Some(c) = &slot.running {
            c.cancel();
        }
        self.shared.wake.notify_one();
    }

    /// Stops the thread (after the current batch) without waiting for it.
    pub fn shutdown(&mut self) {
        let mut slot = lock(&self.shared);
        slot.shutdown = true;
        slot.pending = None;
        if let Some(c) = &slot.running {
            c.cancel();
        }
        self.shared.wake.notify_one();
    }

    /// Stops the thread and waits for it.
    pub fn join(mut self) {
        self.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The real engine: the pipeline's [`Session`] for the main runs (its cache stays warm while
/// weight settings are unchanged), a second session for the sensitivity runs.
pub struct SessionEngine {
    main: Session,
    sens: Session,
    last: Option<(QuantConfig, Outcome, bool)>,
    sens_cache: Option<(QuantConfig, Vec<SensitivityCell>)>,
}

impl SessionEngine {
    /// An engine over `model` with its data sets (cloned once for the sensitivity session).
    pub fn new(model: Model, calib: Dataset, eval: Dataset) -> Self {
        let sens = Session::new(model.clone(), calib.clone(), eval.clone());
        SessionEngine {
            main: Session::new(model, calib, eval),
            sens,
            last: None,
            sens_cache: None,
        }
    }

    fn main_run(&mut self, job: &Job, cancel: &Cancel) -> crate::Result<()> {
        let same = matches!(&self.last, Some((c, _, _)) if *c == job.config);
        if same && !job.rerun {
            return Ok(());
        }
        let (outcome, loaded) = match &job.seed {
            Some(p) => {
                let m = &self.main;
                (
                    evaluate_params(&m.model, p.clone(), &m.eval, &job.config, true, cancel)?,
                    true,
                )
            }
            None => (self.main.run(&job.config, cancel)?, false),
        };
        self.last = Some((job.config.clone(), outcome, loaded));
        Ok(())
    }

    /// The mixed-precision search on the second session, with progress.
    fn mixed(&mut self, job: &Job, cancel: &Cancel, emit: &mut dyn FnMut(WorkerMsg)) {
        let generation = job.generation;
        let opts = MixedOptions {
            unit: job.mixed_unit,
            ..MixedOptions::default()
        };
        let result = mixed::search(&mut self.sens, &job.config, &opts, cancel, |done, total| {
            emit(WorkerMsg::MixedProgress {
                generation,
                done,
                total,
            })
        });
        let result = match result {
            Err(Error::Cancelled) => return,
            r => r.map(Box::new).map_err(|e| e.to_string()),
        };
        emit(WorkerMsg::Mixed { generation, result });
    }

    fn sensitivity(&mut self, job: &Job, cancel: &Cancel, emit: &mut dyn FnMut(WorkerMsg)) {
        let Some((config, outcome, _)) = &self.last else {
            return;
        };
        if !matches!(&self.sens_cache, Some((c, _)) if c == config) {
            self.sens_cache = Some((config.clone(), Vec::new()));
        }
        let model = &self.main.model;
        let names: Vec<String> = model
            .weight_layers()
            .iter()
            .map(|&i| model.layers[i].name.clone())
            .collect();
        for bits in SENSITIVITY_BITS {
            for (layer, name) in names.iter().enumerate() {
                if cancel.is_cancelled() {
                    return;
                }
                let cache = &mut self.sens_cache.as_mut().expect("set above").1;
                let cell = match cache.iter().find(|c| c.layer == layer && c.bits == bits) {
                    Some(c) => *c,
                    None => {
                        let (accuracy, agreement) = if !config.is_float(name)
                            && config.channel_bits(name).is_none()
                            && config.weight_settings(name).bits == bits
                        {
                            (outcome.report.quant_accuracy, outcome.report.agreement)
                        } else {
                            match self.sens.run(
                                &with_layer_bits(config, name, bits, Target::Weights),
                                cancel,
                            ) {
                                Ok(o) => (o.report.quant_accuracy, o.report.agreement),
                                Err(_) => return,
                            }
                        };
                        let c = SensitivityCell {
                            layer,
                            bits,
                            accuracy,
                            agreement,
                        };
                        cache.push(c);
                        c
                    }
                };
                emit(WorkerMsg::Sensitivity {
                    generation: job.generation,
                    cell,
                });
            }
        }
    }
}

impl Engine for SessionEngine {
    fn run(&mut self, job: &Job, cancel: &Cancel, emit: &mut dyn FnMut(WorkerMsg)) {
        let t = Instant::now();
        match self.main_run(job, cancel) {
            Ok(()) => {}
            Err(Error::Cancelled) => return,
            Err(e) => {
                emit(WorkerMsg::Failed {
                    generation: job.generation,
                    msg: e.to_string(),
                });
                return;
            }
        }
        let (_, outcome, loaded) = self.last.as_ref().expect("main_run filled it");
        let views = layer_views(
            outcome.model_or(&self.main.model),
            &outcome.params,
            outcome.calibration.as_ref(),
            job.bins,
        );
        emit(WorkerMsg::Done {
            generation: job.generation,
            result: Box::new(Computed {
                report: outcome.report.clone(),
                params: outcome.params.clone(),
                views,
                loaded: *loaded,
                compute: t.elapsed(),
                bins: job.bins,
            }),
        });
        if job.mixed {
            self.mixed(job, cancel, emit);
        } else {
            self.sensitivity(job, cancel, emit);
        }
    }
}
