//! The UI's state and how actions and events change it. Nothing here computes figures: a change
//! edits the [`QuantConfig`] and returns an [`Effect::Submit`] with a new generation; the
//! worker's results are stored only when their generation is the latest.

use super::action::Action;
use super::event::Event;
use super::keymap::{Mode, action_for};
use super::ui;
use super::worker::{Computed, Job, SENSITIVITY_BITS, SensitivityCell, WorkerMsg};
use crate::config::{INPUT_POINT, QuantConfig, WeightRounding};
use crate::model::Model;
use crate::params::ModelParams;
use crate::pipeline::mixed::{self, MixedSearch};
use crate::quant::{ClipRange, Granularity};
use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Percentiles that `p`/`P` step through.
pub const PERCENTILES: [f64; 10] = [
    90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 100.0,
];
/// Granularities that `g` cycles through.
pub const GRANULARITIES: [Granularity; 4] = [
    Granularity::PerChannel,
    Granularity::PerTensor,
    Granularity::Group(128),
    Granularity::Group(32),
];
/// Factor of one `[` press.
pub const NARROW: f32 = 0.95;
/// Factor of one `]` press.
pub const WIDEN: f32 = 1.05;

/// One row of the layer list: the entry points (the network input, tensors of graph models),
/// then each weight layer.
#[derive(Debug, Clone, PartialEq)]
pub struct RowInfo {
    /// Layer name (`input` for the network input, the tensor name for other entry points, the
    /// node name for weight layers of graph models).
    pub name: String,
    /// `input`, `tensor`, or the layer's op type (`linear`, `conv2d`; ONNX `Conv`, `Gemm`, …).
    pub op: String,
    /// Weight shape (input: the sample shape), e.g. `256×784`.
    pub shape: String,
    /// Whether the row has weights.
    pub weights: bool,
}

/// The `/` prompt while it is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// What has been typed.
    pub query: String,
    /// The row selected when the prompt opened (Esc goes back to it).
    pub origin: usize,
}

/// Which side the editing keys act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The layer's weights.
    Weights,
    /// The layer's (fused) output activation.
    Activations,
}

/// How per-channel weights are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// One output channel's histogram.
    Channel,
    /// Every channel's extent and range.
    Ranges,
    /// The whole tensor's histogram.
    Tensor,
}

/// What the event loop must do after an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Put this job in the worker's slot.
    Submit(Job),
    /// Write these parameters to this file.
    Export {
        /// Where.
        path: PathBuf,
        /// What.
        params: ModelParams,
    },
}

/// The mixed-precision panel: the search's progress, then its front and the selected point.
#[derive(Debug, Clone, Default)]
pub struct MixedPanel {
    /// The generation of the job searching it.
    pub generation: u64,
    /// Runs done and in all, while searching.
    pub progress: (usize, usize),
    /// The search, once done.
    pub search: Option<Box<MixedSearch>>,
    /// Why the search failed.
    pub failed: Option<String>,
    /// The selected front point.
    pub selected: usize,
    /// What the search gives one width (`None`: chosen by the model's size).
    pub unit: Option<mixed::Unit>,
}

/// A result shown as current (or, once a newer job is out, as the last one).
#[derive(Debug, Clone)]
pub struct Shown {
    /// Its generation.
    pub generation: u64,
    /// What the worker computed.
    pub computed: Computed,
    /// When it arrived.
    pub at: Instant,
    /// From the change (key press) to its arrival.
    pub took: Duration,
}

/// A sensitivity figure with the generation it belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensShown {
    /// Its generation.
    pub generation: u64,
    /// The figure.
    pub cell: SensitivityCell,
}

/// A message in the status line.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The text.
    pub text: String,
    /// Whether it reports an error.
    pub error: bool,
}

/// The whole UI state.
#[derive(Debug)]
pub struct App {
    /// Model name.
    pub model: String,
    /// Calibration samples.
    pub calib_samples: usize,
    /// Evaluation samples.
    pub eval_samples: usize,
    /// The rows of the layer list.
    pub rows: Vec<RowInfo>,
    /// The configuration being explored (what the next job runs, what export describes).
    pub config: QuantConfig,
    /// Earlier configs, the one before the last change on top.
    pub undo: Vec<QuantConfig>,
    /// Selected row.
    pub selected: usize,
    /// First visible row of the layer list.
    pub offset: usize,
    /// Side the editing keys act on.
    pub focus: Side,
    /// Log-scale counts.
    pub log_scale: bool,
    /// Help overlay shown.
    pub help: bool,
    /// The `/` prompt, while it is open.
    pub search: Option<Search>,
    /// The last accepted search (what `n`/`N` look for).
    pub last_search: Option<String>,
    /// How per-channel weights are shown.
    pub weight_mode: WeightMode,
    /// Selected output channel of the weights.
    pub channel: usize,
    /// The latest generation sent to the worker.
    pub generation: u64,
    /// When the latest change (or re-run) was sent.
    pub sent_at: Option<Instant>,
    /// The latest job only redraws the shown result at a new size.
    pub view_only: bool,
    /// The last result of the latest-or-earlier generation.
    pub shown: Option<Shown>,
    /// The error of the latest generation, if it failed.
    pub failed: Option<String>,
    /// Per weight layer, per [`SENSITIVITY_BITS`]: the last figure received.
    pub sens: Vec<[Option<SensShown>; 2]>,
    /// The status line's message.
    pub status: Option<Status>,
    /// The mixed-precision panel, while it is open.
    pub mixed: Option<MixedPanel>,
    /// The running job's last progress line (a method's step), until its result arrives.
    pub progress: Option<String>,
    /// Where `x` writes.
    pub export_path: PathBuf,
    /// Export as soon as the current result arrives.
    pub export_pending: bool,
    /// Loaded parameters with the config they give and the file they came from.
    pub seed: Option<(QuantConfig, ModelParams, String)>,
    /// Terminal size (columns, rows).
    pub size: (u16, u16),
    /// Leave the loop.
    pub quit: bool,
}

fn shape_str(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

impl App {
    /// A UI over `model` with `config`; `seed` is loaded parameters and where they came from
    /// ("loaded from FILE", "read from the Q/DQ nodes of FILE", …).
    pub fn new(
        model: &Model,
        calib_samples: usize,
        eval_samples: usize,
        config: QuantConfig,
        seed: Option<(ModelParams, String)>,
    ) -> App {
        let mut rows: Vec<RowInfo> = crate::eval::layer_view::entry_rows(model)
            .into_iter()
            .map(|name| RowInfo {
                op: if name == INPUT_POINT {
                    "input"
                } else {
                    "tensor"
                }
                .into(),
                shape: if name == INPUT_POINT {
                    shape_str(&model.input_shape)
                } else {
                    String::new()
                },
                name,
                weights: false,
            })
            .collect();
        for i in model.weight_layers() {
            let l = &model.layers[i];
            let shape = match &l.op {
                crate::model::Op::Linear { weight, .. } => shape_str(weight.shape()),
                crate::model::Op::Conv2d { weight, .. } => shape_str(weight.shape()),
                _ => String::new(),
            };
            rows.push(RowInfo {
                name: l.name.clone(),
                op: l.op_type.clone(),
                shape,
                weights: true,
            });
        }
        let (config, seed) = match seed {
            Some((params, label)) => {
                let c = params.to_config(&config);
                (c.clone(), Some((c, params, label)))
            }
            None => (config, None),
        };
        let layers = rows.iter().filter(|r| r.weights).count();
        let first_weight = rows.iter().position(|r| r.weights).unwrap_or(0);
        App {
            model: model.name.clone(),
            calib_samples,
            eval_samples,
            rows,
            config,
            undo: Vec::new(),
            selected: first_weight,
            offset: 0,
            focus: Side::Weights,
            log_scale: false,
            help: false,
            search: None,
            last_search: None,
            weight_mode: WeightMode::Channel,
            channel: 0,
            generation: 0,
            sent_at: None,
            view_only: false,
            shown: None,
            failed: None,
            sens: vec![[None; 2]; layers],
            status: None,
            mixed: None,
            progress: None,
            export_path: PathBuf::from(format!("{}.params.json", model.name)),
            export_pending: false,
            seed,
            size: (120, 40),
            quit: false,
        }
    }

    /// The first job.
    pub fn start(&mut self) -> Vec<Effect> {
        vec![self.submit(false)]
    }

    /// The selected row's name.
    pub fn selected_name(&self) -> &str {
        &self.rows[self.selected].name
    }

    /// The index among the weight layers (of `sens`, of the report's layers) of row `i`.
    pub fn weight_index(&self, i: usize) -> Option<usize> {
        let row = self.rows.get(i)?;
        row.weights
            .then(|| self.rows[..i].iter().filter(|r| r.weights).count())
    }

    /// Which keys are live: the `/` prompt's while it is open.
    pub fn key_mode(&self) -> Mode {
        if self.search.is_some() {
            Mode::Search
        } else if self.mixed.is_some() {
            Mode::Mixed
        } else {
            Mode::List
        }
    }

    /// Whether the shown result is the latest generation's.
    pub fn is_current(&self) -> bool {
        self.shown
            .as_ref()
            .is_some_and(|s| s.generation == self.generation)
    }

    /// Whether a job is out whose result has not arrived.
    pub fn is_running(&self) -> bool {
        !self.is_current() && self.failed.is_none()
    }

    /// Whether the current result evaluates loaded parameters.
    pub fn loaded_label(&self) -> Option<&str> {
        match (&self.seed, &self.shown) {
            (Some((c, _, label)), Some(s)) if s.computed.loaded && *c == self.config => Some(label),
            _ => None,
        }
    }

    /// Histogram bins that fit the current layout.
    pub fn bins(&self) -> usize {
        ui::layout(ui::full(self.size), self.rows.len())
            .map_or(64, |a| a.weights.width.saturating_sub(2).max(8) as usize)
    }

    fn submit(&mut self, rerun: bool) -> Effect {
        self.submit_job(rerun, None)
    }

    /// A new job for the current config; `mixed` (the search's unit, `None` inside: chosen by
    /// the model's size) also asks for the mixed-precision front.
    fn submit_job(&mut self, rerun: bool, mixed: Option<Option<mixed::Unit>>) -> Effect {
        self.generation += 1;
        self.sent_at = Some(Instant::now());
        self.view_only = false;
        self.failed = None;
        let seed = self
            .seed
            .as_ref()
            .filter(|(c, _, _)| *c == self.config)
            .map(|(_, p, _)| p.clone());
        Effect::Submit(Job {
            generation: self.generation,
            config: self.config.clone(),
            bins: self.bins(),
            rerun,
            seed,
            mixed: mixed.is_some(),
            mixed_unit: mixed.flatten(),
        })
    }

    /// Makes `c` the config (the old one goes on the undo stack), says `msg` and runs it.
    fn change_to(&mut self, c: QuantConfig, msg: String) -> Vec<Effect> {
        self.undo.push(std::mem::replace(&mut self.config, c));
        self.say(msg);
        vec![self.submit(false)]
    }

    pub fn say(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: false,
        });
    }

    fn error(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: true,
        });
    }

    /// Reacts to one event.
    pub fn handle(&mut self, ev: Event) -> Vec<Effect> {
        match ev {
            Event::Key(k) => match action_for(&k, self.key_mode()) {
                Some(a) => self.update(a),
                None => Vec::new(),
            },
            Event::Mouse(m) => self.mouse(m),
            Event::Resize(w, h) => self.resize(w, h),
            Event::Tick => Vec::new(),
            Event::Worker(msg) => self.worker(msg),
            Event::Exported { path, result } => {
                self.exported(&path, result);
                Vec::new()
            }
        }
    }

    /// The terminal changed size: keep the layout, and ask for histograms of the new width.
    pub fn resize(&mut self, w: u16, h: u16) -> Vec<Effect> {
        self.size = (w, h);
        self.keep_visible();
        match &self.shown {
            // A running job's result is checked when it arrives.
            Some(s) if self.is_current() && s.computed.bins != self.bins() => self.redraw_job(),
            _ => Vec::new(),
        }
    }

    /// A job for histograms of the current width. With nothing else pending only the drawing
    /// changes: the figures keep the time they were computed at and how long their run took.
    fn redraw_job(&mut self) -> Vec<Effect> {
        let redraw_only = self.shown.as_ref().is_some_and(|s| {
            s.generation == self.generation && s.computed.report.config == self.config
        });
        let sent_at = self.sent_at;
        let e = self.submit(false);
        self.view_only = redraw_only;
        self.sent_at = sent_at;
        vec![e]
    }

    fn mouse(&mut self, m: MouseEvent) -> Vec<Effect> {
        match m.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                match ui::row_at(
                    ui::full(self.size),
                    self.rows.len(),
                    self.offset,
                    m.column,
                    m.row,
                ) {
                    Some(i) => self.update(Action::Select(i)),
                    None => Vec::new(),
                }
            }
            MouseEventKind::ScrollDown => self.update(Action::SelectNext),
            MouseEventKind::ScrollUp => self.update(Action::SelectPrev),
            _ => Vec::new(),
        }
    }

    fn worker(&mut self, msg: WorkerMsg) -> Vec<Effect> {
        match msg {
            WorkerMsg::Done { generation, result } => {
                if generation != self.generation {
                    return Vec::new(); // outdated: never shown as current
                }
                self.progress = None;
                let (at, took) = match (&self.shown, self.view_only) {
                    (Some(prev), true) => (prev.at, prev.took),
                    _ => (
                        Instant::now(),
                        self.sent_at.map_or(result.compute, |t| t.elapsed()),
                    ),
                };
                self.shown = Some(Shown {
                    generation,
                    computed: *result,
                    at,
                    took,
                });
                self.failed = None;
                if self.export_pending {
                    self.export_pending = false;
                    return self.export();
                }
                if self
                    .shown
                    .as_ref()
                    .is_some_and(|s| s.computed.bins != self.bins())
                {
                    // The terminal changed size while this was computed: redraw the histograms.
                    return self.redraw_job();
                }
            }
            WorkerMsg::Failed { generation, msg } => {
                if generation == self.generation {
                    self.progress = None;
                    self.error(format!("run failed: {msg}"));
                    self.failed = Some(msg);
                    self.export_pending = false;
                }
            }
            WorkerMsg::Progress { generation, text } => {
                if generation == self.generation {
                    self.progress = Some(text);
                }
            }
            WorkerMsg::MixedProgress {
                generation,
                done,
                total,
            } => {
                if let Some(m) = self.mixed.as_mut().filter(|m| m.generation == generation) {
                    m.progress = (done, total);
                }
            }
            WorkerMsg::Mixed { generation, result } => {
                if let Some(m) = self.mixed.as_mut().filter(|m| m.generation == generation) {
                    match result {
                        Ok(search) => m.search = Some(search),
                        Err(e) => m.failed = Some(e),
                    }
                }
            }
            WorkerMsg::Sensitivity { generation, cell } => {
                if generation == self.generation
                    && let Some(slots) = self.sens.get_mut(cell.layer)
                    && let Some(k) = SENSITIVITY_BITS.iter().position(|&b| b == cell.bits)
                {
                    slots[k] = Some(SensShown { generation, cell });
                }
            }
        }
        Vec::new()
    }

    /// What the event loop reports after writing an export.
    pub fn exported(&mut self, path: &std::path::Path, result: Result<(), String>) {
        match result {
            Ok(()) => self.say(format!("exported to {}", path.display())),
            Err(e) => self.error(format!("export failed: {e}")),
        }
    }

    fn export(&mut self) -> Vec<Effect> {
        match &self.shown {
            Some(s) if s.generation == self.generation => vec![Effect::Export {
                path: self.export_path.clone(),
                params: s.computed.params.clone(),
            }],
            _ if self.failed.is_some() => {
                self.error("nothing to export: the last run failed");
                Vec::new()
            }
            _ => {
                self.export_pending = true;
                self.say(format!(
                    "exporting to {} when the run finishes…",
                    self.export_path.display()
                ));
                Vec::new()
            }
        }
    }

    fn keep_visible(&mut self) {
        let Some(a) = ui::layout(ui::full(self.size), self.rows.len()) else {
            return;
        };
        let visible = ui::table_rows(a.table);
        self.offset = ui::scroll(self.offset, self.selected, visible, self.rows.len());
    }

    fn select(&mut self, i: usize) {
        if i < self.rows.len() && i != self.selected {
            self.selected = i;
            self.channel = 0;
        }
        self.keep_visible();
    }

    /// Applies one action.
    pub fn update(&mut self, action: Action) -> Vec<Effect> {
        if self.help && !matches!(action, Action::Quit) {
            self.help = false;
            return Vec::new();
        }
        if self.mixed.is_some() && !matches!(action, Action::Quit) {
            return self.mixed_action(action);
        }
        match action {
            Action::SelectPrev => self.select(self.selected.saturating_sub(1)),
            Action::SelectNext => self.select((self.selected + 1).min(self.rows.len() - 1)),
            Action::Select(i) => self.select(i),
            Action::ToggleFocus => {
                self.focus = match self.focus {
                    Side::Weights => Side::Activations,
                    Side::Activations => Side::Weights,
                }
            }
            Action::ToggleLog => self.log_scale = !self.log_scale,
            Action::ToggleHelp => self.help = true,
            Action::Close => {}
            Action::Quit => self.quit = true,
            Action::SearchOpen
            | Action::SearchType(_)
            | Action::SearchBackspace
            | Action::SearchAccept
            | Action::SearchCancel
            | Action::SearchNext
            | Action::SearchPrev => self.search_action(action),
            Action::PrevChannel => self.channel = self.channel.saturating_sub(1),
            Action::NextChannel => {
                if self.channel + 1 < self.channels() {
                    self.channel += 1;
                }
            }
            Action::CycleWeightView => {
                self.weight_mode = match self.weight_mode {
                    WeightMode::Channel => WeightMode::Ranges,
                    WeightMode::Ranges => WeightMode::Tensor,
                    WeightMode::Tensor => WeightMode::Channel,
                }
            }
            Action::Undo => {
                return match self.undo.pop() {
                    Some(c) => {
                        self.config = c;
                        self.say("undone");
                        vec![self.submit(false)]
                    }
                    None => {
                        self.error("nothing to undo");
                        Vec::new()
                    }
                };
            }
            Action::Rerun => {
                self.say("re-running");
                return vec![self.submit(true)];
            }
            Action::Export => return self.export(),
            Action::ToggleBiasCorrection
            | Action::ToggleCle
            | Action::CycleRounding
            | Action::ToggleSmoothQuant
            | Action::ToggleActRefine => return self.method(action),
            Action::MixedOpen => return self.open_mixed(None),
            Action::MixedApply => {}
            edit => return self.edit(edit),
        }
        Vec::new()
    }

    /// Output channels of the selected layer's weights (0 without weights).
    pub fn channels(&self) -> usize {
        self.shown
            .as_ref()
            .and_then(|s| s.computed.views.get(self.selected))
            .and_then(|v| v.weight.as_ref())
            .map_or(0, |w| w.rows)
    }

    /// The clipping range currently used for the selected point's activations, if the shown
    /// result was made with the settings the config has now.
    fn current_act_range(&self, name: &str) -> Option<ClipRange> {
        let s = self.shown.as_ref()?;
        let a = match s.computed.params.point(name) {
            Some(a) => Some(a),
            None => s.computed.params.by_name(name)?.act.as_ref(),
        }?;
        (a.settings == self.config.act_settings(name)).then_some(a.range)
    }

    /// Opens the mixed-precision panel and sends the job that searches its front (by `unit`).
    fn open_mixed(&mut self, unit: Option<mixed::Unit>) -> Vec<Effect> {
        let effect = self.submit_job(false, Some(unit));
        self.mixed = Some(MixedPanel {
            generation: self.generation,
            unit,
            ..Default::default()
        });
        let by = match unit {
            None => "the unit chosen by the model's size",
            Some(mixed::Unit::Layer) => "bits per layer",
            Some(mixed::Unit::Channel) => "bits per channel",
        };
        self.say(format!(
            "searching the mixed-precision front, {by} (U: unit · Esc closes)"
        ));
        vec![effect]
    }

    /// A key while the mixed-precision panel is open.
    fn mixed_action(&mut self, action: Action) -> Vec<Effect> {
        let Some(m) = self.mixed.as_mut() else {
            return Vec::new();
        };
        let points = m.search.as_ref().map_or(0, |s| s.front.len());
        match action {
            Action::SelectPrev => m.selected = m.selected.saturating_sub(1),
            Action::SelectNext => m.selected = (m.selected + 1).min(points.saturating_sub(1)),
            Action::Close => self.mixed = None,
            Action::MixedUnit => {
                // auto → layer → channel → auto, searched again.
                let next = match m.unit {
                    None => Some(mixed::Unit::Layer),
                    Some(mixed::Unit::Layer) => Some(mixed::Unit::Channel),
                    Some(mixed::Unit::Channel) => None,
                };
                return self.open_mixed(next);
            }
            Action::MixedApply => {
                let Some((s, p)) = m
                    .search
                    .as_ref()
                    .and_then(|s| Some((s, s.front.get(m.selected)?)))
                else {
                    self.error("no front point to apply yet");
                    return Vec::new();
                };
                let c = mixed::config_with_point(&self.config, &s.layers, p);
                let msg = format!(
                    "applied {:.3} average weight bits ({} bytes)",
                    p.avg_bits, p.size_bytes
                );
                self.mixed = None;
                return self.change_to(c, msg);
            }
            _ => {}
        }
        Vec::new()
    }

    /// A change of the accuracy methods (global settings): pushed on the undo stack and run.
    fn method(&mut self, action: Action) -> Vec<Effect> {
        let mut c = self.config.clone();
        let on = |b: bool| if b { "on" } else { "off" };
        let msg = match action {
            Action::ToggleBiasCorrection => {
                c.bias_correction = !c.bias_correction;
                format!("bias correction {}", on(c.bias_correction))
            }
            Action::ToggleCle => {
                c.cle = !c.cle;
                format!("cross-layer equalization {}", on(c.cle))
            }
            Action::CycleRounding => {
                c.weight_rounding = next_rounding(c.weight_rounding);
                format!("weight rounding {}", c.weight_rounding)
            }
            Action::ToggleActRefine => {
                c.act_refine = !c.act_refine;
                format!("activation range refinement {}", on(c.act_refine))
            }
            _ => {
                c.smoothquant = match c.smoothquant {
                    Some(_) => None,
                    None => Some(0.5),
                };
                format!("SmoothQuant {}", on(c.smoothquant.is_some()))
            }
        };
        // Bias correction and refinement start from the cached histograms.
        let redo = match action {
            Action::ToggleBiasCorrection | Action::ToggleActRefine => {
                "re-running from the histograms"
            }
            _ => "re-running weights and calibration",
        };
        self.change_to(c, format!("{msg} ({redo})"))
    }

    /// A change to the config: on success it is pushed on the undo stack and run.
    fn edit(&mut self, action: Action) -> Vec<Effect> {
        let name = self.selected_name().to_string();
        let mut c = self.config.clone();
        match self.apply_edit(&mut c, &name, action) {
            Ok(msg) => {
                tidy(&mut c);
                if c == self.config {
                    self.say(format!("{msg} (no change)"));
                    return Vec::new();
                }
                self.change_to(c, msg)
            }
            Err(msg) => {
                self.error(msg);
                Vec::new()
            }
        }
    }
}

/// The weight rounding after `r` in the UI's cycle.
pub fn next_rounding(r: WeightRounding) -> WeightRounding {
    match r {
        WeightRounding::Nearest => WeightRounding::Gptq,
        WeightRounding::Gptq => WeightRounding::Adaround,
        WeightRounding::Adaround => WeightRounding::Nearest,
    }
}

/// How messages name a row without weights: the network input, or a tensor point.
pub fn point_what(name: &str) -> String {
    if name == INPUT_POINT {
        "the network input".into()
    } else {
        format!("the tensor {name}")
    }
}

/// Drops per-layer values that equal the global ones (so the mark shows real differences and
/// a config file holds only them), then empty tables.
pub fn tidy(c: &mut QuantConfig) {
    let g = c.clone();
    for o in c.layers.values_mut() {
        macro_rules! same {
            ($($f:ident),*) => {$(if o.$f == Some(g.$f) { o.$f = None; })*};
        }
        same!(
            weight_bits,
            act_bits,
            granularity,
            weight_scheme,
            act_scheme,
            percentile
        );
        if o.weight_strategy == Some(g.weight_strategy) {
            o.weight_strategy = None;
        }
        if o.act_strategy == Some(g.act_strategy) {
            o.act_strategy = None;
        }
        if o.weight_clip == Some(1.0) {
            o.weight_clip = None;
        }
    }
    c.prune();
}

mod edit;
mod search;
#[cfg(test)]
mod tests;
