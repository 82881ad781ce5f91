//! Mixed precision under a budget (as AIMET's AMP): measure each weight layer's sensitivity at
//! every candidate bit width (that layer alone lowered from the top candidate, output
//! noise-to-signal ratio on the calibration set), walk the greedy front over that table
//! ([`greedy`]), evaluate the front's points for real on the evaluation set, and choose the
//! point a budget asks for. By [`Unit::Channel`] each output channel is a unit of its own
//! (`channels`), and the front is thinned before evaluation. The UI's worker calls [`search`]
//! and [`choose`] the same way `qscope mixed` does.

mod channels;
pub mod greedy;

use super::{Cancel, Session};
use crate::config::QuantConfig;
use crate::error::{Error, Result};
use crate::eval::report::Report;
use crate::quant::weights::mean_bits;
use greedy::{SensitivityTable, exact_within, greedy_front, refine};
use serde::Serialize;

/// What the search varies.
#[derive(Debug, Clone, PartialEq)]
pub struct MixedOptions {
    /// Candidate weight bit widths (any order; the highest is the starting point).
    pub candidates: Vec<u8>,
    /// Evaluate every front point (and the uniform configurations) on the evaluation set.
    pub evaluate: bool,
    /// What gets one bit width: a layer or an output channel (`None`: chosen by the model's
    /// size, [`Unit::auto`]).
    pub unit: Option<Unit>,
}

impl Default for MixedOptions {
    fn default() -> Self {
        MixedOptions {
            candidates: vec![8, 4, 3, 2],
            evaluate: true,
            unit: None,
        }
    }
}

/// Per searched unit: its layer (an index into the searched layers) and, by channel, its
/// output channel.
pub type Units = Vec<(usize, Option<usize>)>;

/// What the search gives one bit width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// A whole weight layer (AIMET's AMP).
    Layer,
    /// One output channel of a weight layer (its row of weights, with its own scale).
    Channel,
}

impl std::str::FromStr for Unit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "layer" => Ok(Unit::Layer),
            "channel" => Ok(Unit::Channel),
            _ => Err(format!("unknown unit '{s}' (expected layer or channel)")),
        }
    }
}

/// Output channels a search by channel measures at most when the unit is left to the model
/// (each is one run per lower candidate).
pub const AUTO_CHANNELS_MAX: usize = 1024;

/// Multiply-adds per sample above which the unit left to the model is a layer (a run per
/// channel would take minutes).
pub const AUTO_MACS_MAX: f64 = 2e6;

impl Unit {
    /// The unit when none is given: a channel when every searched layer can have widths per
    /// channel (`by_channel`), the searched layers have at most [`AUTO_CHANNELS_MAX`] output
    /// channels and a sample costs at most [`AUTO_MACS_MAX`] multiply-adds; else a layer.
    pub fn auto(layers: &[MixedLayer], by_channel: bool, macs_per_sample: f64) -> Unit {
        let channels: usize = layers.iter().map(|l| l.channels).sum();
        if by_channel && channels <= AUTO_CHANNELS_MAX && macs_per_sample <= AUTO_MACS_MAX {
            Unit::Channel
        } else {
            Unit::Layer
        }
    }
}

/// Whether every searched layer can have widths per channel (the `channel_bits` rule: rows
/// quantized apart, not per tensor); the error names the first that cannot.
fn by_channel_possible(config: &QuantConfig, layers: &[MixedLayer]) -> Result<()> {
    let per_tensor = layers.iter().find(|l| {
        config.weight_settings(&l.name).granularity == crate::quant::Granularity::PerTensor
    });
    match per_tensor {
        Some(l) => Err(Error::config(
            "unit",
            format!(
                "channel needs per-channel or group weights; layer '{}' is per-tensor",
                l.name
            ),
        )),
        None => Ok(()),
    }
}

/// One unit per searched layer (a search by layer).
fn layer_units(layers: usize) -> Units {
    (0..layers).map(|l| (l, None)).collect()
}

/// A searched weight layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixedLayer {
    /// Layer name.
    pub name: String,
    /// Weights in the layer.
    pub params: u64,
    /// Output channels (rows of its weight matrix).
    pub channels: usize,
}

/// One configuration: weight bits per layer (or per channel), its size and (when evaluated) its
/// accuracy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrontPoint {
    /// Weight bits per searched layer, in network order (by channel: the layer's widest).
    pub weight_bits: Vec<u8>,
    /// By channel: each searched layer's bits per output channel (absent by layer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_bits: Option<Vec<Vec<u8>>>,
    /// The bits of each searched unit (layer or channel), as the sensitivity table orders them.
    #[serde(skip)]
    pub unit_bits: Vec<u8>,
    /// Weight storage in bytes: each layer's codes packed at its bit width (rounded up to whole
    /// bytes per layer), float-kept layers at 4 bytes a weight; scales and biases not counted.
    pub size_bytes: u64,
    /// Average weight bits, weighted by parameter count (float-kept layers count 32).
    pub avg_bits: f64,
    /// Output SQNR the sensitivity table predicts, in dB.
    pub predicted_sqnr_db: f64,
    /// Integer-engine top-1 on the evaluation set (null when not evaluated or no labels).
    pub quant_accuracy: Option<f64>,
    /// Agreement with the float model on the evaluation set.
    pub agreement: Option<f64>,
    /// Output SQNR on the evaluation set, in dB.
    pub output_sqnr_db: Option<f64>,
}

impl FrontPoint {
    /// Each searched layer's weight bits as text: its width, or by channel the mean width with
    /// two decimals.
    pub fn layer_bits_text(&self) -> Vec<String> {
        match &self.channel_bits {
            Some(rows) => rows
                .iter()
                .map(|b| format!("{:.2}", mean_bits(b)))
                .collect(),
            None => self.weight_bits.iter().map(u8::to_string).collect(),
        }
    }
}

/// One row of the sensitivity table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensitivityEntry {
    /// Layer name.
    pub layer: String,
    /// Its weight bits (every other layer at the top candidate).
    pub bits: u8,
    /// Output SQNR on the calibration set, in dB.
    pub output_sqnr_db: Option<f64>,
    /// Top-1 on the calibration set.
    pub quant_accuracy: Option<f64>,
}

/// Everything a search found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixedSearch {
    /// Model name.
    pub model: String,
    /// Candidate bit widths, highest first.
    pub candidates: Vec<u8>,
    /// What got one bit width.
    pub unit: Unit,
    /// The searched layers (weight layers not kept in float).
    pub layers: Vec<MixedLayer>,
    /// Weights in float-kept layers.
    pub float_params: u64,
    /// Float top-1 on the evaluation set.
    pub fp32_accuracy: Option<f64>,
    /// The measured sensitivities (calibration set).
    pub sensitivity: Vec<SensitivityEntry>,
    /// The greedy front, largest first.
    pub front: Vec<FrontPoint>,
    /// Every layer at one candidate, highest first (for reference).
    pub uniform: Vec<FrontPoint>,
    /// The sensitivity table the front was walked on (a row per unit).
    #[serde(skip)]
    pub table: SensitivityTable,
    /// Per unit: its layer (an index into `layers`) and, by channel, its output channel.
    #[serde(skip)]
    pub units: Units,
}

/// What a budget asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Average weight bits (weighted by parameter count) at most this.
    Bits(f64),
    /// Weight storage at most this many bytes.
    Bytes(u64),
    /// The smallest point whose accuracy is at most this many points below float.
    MaxDrop(f64),
}

/// `config` with each searched layer's weight bits set (other settings as they were).
pub fn config_with_bits(config: &QuantConfig, layers: &[MixedLayer], bits: &[u8]) -> QuantConfig {
    let mut c = config.clone();
    for (l, &b) in layers.iter().zip(bits) {
        c.layer_mut(&l.name).set_weight_bits(b);
    }
    c
}

/// `config` with point `p`'s weight bits: per layer, or per output channel when it has them.
pub fn config_with_point(
    config: &QuantConfig,
    layers: &[MixedLayer],
    p: &FrontPoint,
) -> QuantConfig {
    let mut c = config_with_bits(config, layers, &p.weight_bits);
    if let Some(rows) = &p.channel_bits {
        for (l, b) in layers.iter().zip(rows) {
            let o = c.layer_mut(&l.name);
            // A layer whose channels all have one width is a layer at that width.
            if b.iter().any(|&x| x != b[0]) {
                o.channel_bits = Some(b.clone());
                o.weight_bits = None;
            }
        }
    }
    c
}

fn nsr_of(r: &Report) -> f64 {
    r.output_sqnr_db.map_or(0.0, |db| 10f64.powf(-db / 10.0))
}

impl MixedSearch {
    /// Weights in all weight layers (searched and float-kept).
    pub fn total_params(&self) -> u64 {
        self.layers.iter().map(|l| l.params).sum::<u64>() + self.float_params
    }

    /// A point for per-unit `unit_bits` (not yet evaluated).
    fn point(&self, unit_bits: Vec<u8>, nsr: f64) -> FrontPoint {
        let mut rows: Vec<Vec<u8>> = vec![Vec::new(); self.layers.len()];
        let mut layer_bits = vec![0u64; self.layers.len()];
        for (&(l, row), &b) in self.units.iter().zip(&unit_bits) {
            let layer = &self.layers[l];
            // A channel holds one row of its layer's weights.
            let weights = match row {
                Some(_) => layer.params / layer.channels.max(1) as u64,
                None => layer.params,
            };
            layer_bits[l] += weights * b as u64;
            rows[l].push(b);
        }
        let bits = rows
            .iter()
            .map(|r| r.iter().copied().max().unwrap_or(8))
            .collect();
        let channel_bits = (self.unit == Unit::Channel).then_some(rows);
        let packed: u64 = layer_bits.iter().map(|b| b.div_ceil(8)).sum();
        let size_bits: u64 = layer_bits.iter().sum::<u64>() + 32 * self.float_params;
        FrontPoint {
            weight_bits: bits,
            channel_bits,
            unit_bits,
            size_bytes: packed + 4 * self.float_params,
            avg_bits: size_bits as f64 / self.total_params().max(1) as f64,
            predicted_sqnr_db: -10.0 * nsr.max(f64::MIN_POSITIVE).log10(),
            quant_accuracy: None,
            agreement: None,
            output_sqnr_db: None,
        }
    }
}

/// The layers a search varies: weight layers not kept in float, with their weight counts; and
/// the weights of the float-kept ones.
fn searched_layers(model: &crate::model::Model, config: &QuantConfig) -> (Vec<MixedLayer>, u64) {
    let mut layers = Vec::new();
    let mut float = 0;
    for i in model.weight_layers() {
        let l = &model.layers[i];
        let (_, rows, cols) = l.op.weight_rows().expect("weight layer");
        let params = (rows * cols) as u64;
        if config.is_float(&l.name) {
            float += params;
        } else {
            layers.push(MixedLayer {
                name: l.name.clone(),
                params,
                channels: rows,
            });
        }
    }
    (layers, float)
}

/// The sensitivity table: with every searched layer at the top candidate, then each layer alone
/// at each lower candidate, the output noise-to-signal ratio on the calibration set (so the
/// evaluation set only judges the result). `tick` follows the runs.
fn measure(
    session: &Session,
    config: &QuantConfig,
    layers: &[MixedLayer],
    candidates: &[u8],
    cancel: &Cancel,
    tick: &mut dyn FnMut(usize),
) -> Result<(SensitivityTable, Vec<SensitivityEntry>)> {
    let (nl, nc) = (layers.len(), candidates.len());
    let mut sens = Session::new(
        session.model.clone(),
        session.calib.clone(),
        session.calib.clone(),
    );
    let top = vec![candidates[0]; nl];
    let base = sens
        .run(&config_with_bits(config, layers, &top), cancel)?
        .report;
    tick(1);
    let mut nsr = vec![vec![nsr_of(&base); nc]; nl];
    let mut entries = Vec::new();
    for l in 0..nl {
        for k in 1..nc {
            let mut bits = top.clone();
            bits[l] = candidates[k];
            let r = sens
                .run(&config_with_bits(config, layers, &bits), cancel)?
                .report;
            tick(1);
            // Fewer bits are never predicted better (a lower measurement is noise).
            nsr[l][k] = nsr_of(&r).max(nsr[l][k - 1]);
            entries.push(SensitivityEntry {
                layer: layers[l].name.clone(),
                bits: candidates[k],
                output_sqnr_db: r.output_sqnr_db,
                quant_accuracy: r.quant_accuracy,
            });
        }
    }
    let table = SensitivityTable {
        candidates: candidates.to_vec(),
        params: layers.iter().map(|l| l.params).collect(),
        nsr,
        base_nsr: nsr_of(&base),
    };
    Ok((table, entries))
}

/// Runs the whole search on `session` with `config`'s settings (strategies, methods, activation
/// bits) and each searched layer's weight bits varied over `opts.candidates`. The sensitivity
/// runs use the calibration set; the front is evaluated on `session.eval`. `progress(done,
/// total)` follows the runs; `cancel` stops between runs (and between batches).
pub fn search(
    session: &mut Session,
    config: &QuantConfig,
    opts: &MixedOptions,
    cancel: &Cancel,
    mut progress: impl FnMut(usize, usize),
) -> Result<MixedSearch> {
    config.validate(Some(&session.model))?;
    let candidates = sorted_candidates(&opts.candidates)?;
    let (layers, float_params) = searched_layers(&session.model, config);
    if layers.is_empty() {
        return Err(Error::config(
            "keep_float",
            "every weight layer is kept in float: nothing to search",
        ));
    }
    let by_channel = by_channel_possible(config, &layers);
    let unit = match opts.unit {
        Some(Unit::Channel) => by_channel.map(|_| Unit::Channel)?,
        Some(Unit::Layer) => Unit::Layer,
        None => {
            let one = super::make_batch(&session.model, &session.calib, 0, 1)?;
            let macs = super::bench::macs_per_sample(&session.model, one)?;
            Unit::auto(&layers, by_channel.is_ok(), macs)
        }
    };
    let (nl, nc) = (layers.len(), candidates.len());
    // The front has at most one point per step, plus the top (by channel: thinned).
    let evaluated = |nu: usize| 1 + (nu * (nc - 1)).min(FRONT_POINTS_MAX) + nc;
    let mut total = match unit {
        Unit::Layer => 1 + nl * (nc - 1),
        Unit::Channel => nc + nl * (nc - 1),
    };
    if opts.evaluate {
        let nu = layers.iter().map(|l| l.channels).sum();
        total += evaluated(if unit == Unit::Layer { nl } else { nu });
    }
    let mut done = 0;
    let mut tick = |n: usize| {
        done += n;
        progress(done, total)
    };
    let ((table, units), sensitivity) = match unit {
        Unit::Layer => {
            let (t, e) = measure(session, config, &layers, &candidates, cancel, &mut tick)?;
            ((t, layer_units(nl)), e)
        }
        Unit::Channel => (
            channels::measure(session, config, &layers, &candidates, cancel, &mut tick)?,
            Vec::new(),
        ),
    };
    let greedy = thinned(greedy_front(&table)?);
    let mut result = MixedSearch {
        model: session.model.name.clone(),
        candidates: candidates.clone(),
        unit,
        layers,
        float_params,
        fp32_accuracy: None,
        sensitivity,
        front: Vec::new(),
        uniform: Vec::new(),
        table: table.clone(),
        units,
    };
    let bits_of = |c: &[usize]| c.iter().map(|&k| candidates[k]).collect::<Vec<u8>>();
    result.front = greedy
        .iter()
        .map(|g| result.point(bits_of(&g.choice), g.nsr))
        .collect();
    let nu = result.units.len();
    result.uniform = (0..nc)
        .map(|k| result.point(vec![candidates[k]; nu], table.predict(&vec![k; nu])))
        .collect();
    if opts.evaluate {
        total = done + result.front.len() + result.uniform.len();
        evaluate_points(session, config, &mut result, cancel, &mut |n, _| {
            progress(done + n, total)
        })?;
    }
    Ok(result)
}

/// Candidate widths checked, highest first, without repeats; at least two.
fn sorted_candidates(given: &[u8]) -> Result<Vec<u8>> {
    let mut candidates = given.to_vec();
    for &b in &candidates {
        crate::quant::scheme::check_bits("candidates", b)?;
    }
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    candidates.dedup();
    if candidates.len() < 2 {
        return Err(Error::config(
            "candidates",
            "give at least two distinct bit widths",
        ));
    }
    Ok(candidates)
}

/// Front points evaluated at most: a search by channel takes a step per channel and candidate,
/// so its front is thinned to about this many points, evenly in size.
pub const FRONT_POINTS_MAX: usize = 64;

/// `front` thinned to about [`FRONT_POINTS_MAX`] points evenly spaced in size (the first and
/// the last kept).
fn thinned(front: Vec<greedy::GreedyPoint>) -> Vec<greedy::GreedyPoint> {
    if front.len() <= FRONT_POINTS_MAX {
        return front;
    }
    let (hi, lo) = (front[0].size_bits, front[front.len() - 1].size_bits);
    let step = (hi - lo) / (FRONT_POINTS_MAX as u64 - 1).max(1);
    let last = front.len() - 1;
    let mut next = hi;
    let mut kept = Vec::new();
    for (i, g) in front.into_iter().enumerate() {
        if g.size_bits <= next || i == last {
            next = g.size_bits.saturating_sub(step);
            kept.push(g);
        }
    }
    kept
}

/// Evaluates every front and uniform point on `session.eval` (configurations already measured
/// are taken from the first run).
pub fn evaluate_points(
    session: &mut Session,
    config: &QuantConfig,
    result: &mut MixedSearch,
    cancel: &Cancel,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let mut seen: Vec<(Vec<u8>, Report)> = Vec::new();
    let total = result.front.len() + result.uniform.len();
    let layers = result.layers.clone();
    let points = result.front.iter_mut().chain(result.uniform.iter_mut());
    for (n, p) in points.enumerate() {
        let r = match seen.iter().find(|(b, _)| *b == p.unit_bits) {
            Some((_, r)) => r.clone(),
            None => {
                let c = config_with_point(config, &layers, p);
                let r = session.run(&c, cancel)?.report;
                seen.push((p.unit_bits.clone(), r.clone()));
                r
            }
        };
        p.quant_accuracy = r.quant_accuracy;
        p.agreement = r.agreement;
        p.output_sqnr_db = r.output_sqnr_db;
        result.fp32_accuracy = r.fp32_accuracy;
        progress(n + 1, total);
    }
    Ok(())
}

/// Refuses, before any run, a budget no configuration can meet (below every searched layer at
/// the lowest candidate) or a bad value.
pub fn check_budget(
    model: &crate::model::Model,
    config: &QuantConfig,
    candidates: &[u8],
    budget: Budget,
) -> Result<()> {
    if let Budget::MaxDrop(pts) = budget {
        if !(pts.is_finite() && pts >= 0.0) {
            return Err(Error::config("max_drop", format!("{pts} must be ≥ 0")));
        }
        return Ok(());
    }
    let (layers, float_params) = searched_layers(model, config);
    let low = candidates.iter().copied().min().unwrap_or(8);
    let units = layer_units(layers.len());
    let mut s = MixedSearch {
        model: model.name.clone(),
        candidates: vec![low],
        unit: Unit::Layer,
        layers,
        float_params,
        fp32_accuracy: None,
        sensitivity: Vec::new(),
        front: Vec::new(),
        uniform: Vec::new(),
        table: SensitivityTable::default(),
        units,
    };
    s.front = vec![s.point(vec![low; s.layers.len()], 0.0)];
    choose(&s, budget).map(|_| ())
}

/// The assignment of least predicted noise within a bits or bytes budget ([`exact_within`]).
fn exact_for(search: &MixedSearch, budget: Budget) -> Option<Vec<usize>> {
    let (params, cands) = (&search.table.params, &search.candidates);
    let bits = |l: usize, k: usize| params[l] * cands[k] as u64;
    match budget {
        Budget::Bits(b) => {
            let all = (b * search.total_params() as f64 + 1e-9).floor() as u64;
            let max = all.checked_sub(32 * search.float_params)?;
            exact_within(&search.table, bits, max)
        }
        Budget::Bytes(n) => {
            let max = n.checked_sub(4 * search.float_params)?;
            exact_within(&search.table, |l, k| bits(l, k).div_ceil(8), max)
        }
        Budget::MaxDrop(_) => None,
    }
}

/// Whether `p` is within a size budget (always true for a max-drop budget).
fn within(p: &FrontPoint, budget: Budget) -> bool {
    match budget {
        Budget::Bits(b) => p.avg_bits <= b + 1e-9,
        Budget::Bytes(n) => p.size_bytes <= n,
        Budget::MaxDrop(_) => true,
    }
}

/// The point a size budget asks for, after using the room between two front points: the
/// configuration [`refine`] finds from the best front point within the budget is evaluated (when
/// the front was) and inserted into the front; then [`choose`]. Returns an index into
/// `search.front`.
pub fn choose_for_budget(
    session: &mut Session,
    config: &QuantConfig,
    search: &mut MixedSearch,
    budget: Budget,
    cancel: &Cancel,
) -> Result<usize> {
    if !matches!(budget, Budget::MaxDrop(_)) {
        let cands = search.candidates.clone();
        let bits_of = |c: &[usize]| c.iter().map(|&k| cands[k]).collect::<Vec<u8>>();
        let table = &search.table;
        // By channel the front was thinned: the whole walk has the points between.
        let greedy: Vec<greedy::GreedyPoint> = match search.unit {
            Unit::Channel => greedy_front(table)?,
            Unit::Layer => search
                .front
                .iter()
                .map(|p| {
                    let choice: Vec<usize> = p
                        .unit_bits
                        .iter()
                        .map(|b| cands.iter().position(|c| c == b).unwrap_or(0))
                        .collect();
                    greedy::GreedyPoint {
                        size_bits: table.size_bits(&choice),
                        nsr: table.predict(&choice),
                        choice,
                    }
                })
                .collect(),
        };
        let fits = |c: &[usize]| within(&search.point(bits_of(c), 0.0), budget);
        let best_front = greedy
            .iter()
            .filter(|g| fits(&g.choice))
            .map(|g| g.nsr)
            .fold(f64::INFINITY, f64::min);
        let better = exact_for(search, budget)
            .or_else(|| refine(table, &greedy, fits))
            .filter(|c| table.predict(c) < best_front && !greedy.iter().any(|g| g.choice == *c))
            .or_else(|| {
                // By channel: the best point of the whole walk, when thinning left it out.
                let best = greedy
                    .iter()
                    .filter(|g| fits(&g.choice))
                    .min_by(|a, b| a.nsr.total_cmp(&b.nsr))?;
                let on_front = |p: &FrontPoint| p.unit_bits == bits_of(&best.choice);
                (!search.front.iter().any(on_front)).then(|| best.choice.clone())
            });
        if let Some(c) = better {
            let mut p = search.point(bits_of(&c), table.predict(&c));
            if search.front[0].quant_accuracy.is_some() {
                let cfg = config_with_point(config, &search.layers, &p);
                let r = session.run(&cfg, cancel)?.report;
                p.quant_accuracy = r.quant_accuracy;
                p.agreement = r.agreement;
                p.output_sqnr_db = r.output_sqnr_db;
            }
            let at = search
                .front
                .iter()
                .position(|q| q.avg_bits < p.avg_bits)
                .unwrap_or(search.front.len());
            search.front.insert(at, p);
        }
    }
    choose(search, budget)
}

/// The front point `budget` asks for (an index into `search.front`). Bits and bytes: among the
/// points within the budget, the one with the best predicted SQNR (calibration set; ties: the
/// smaller).
/// Max drop: the smallest point within that many points of float (needs evaluated points).
pub fn choose(search: &MixedSearch, budget: Budget) -> Result<usize> {
    let front = &search.front;
    let smallest = front
        .last()
        .ok_or_else(|| Error::config("front", "empty"))?;
    let fits: Vec<usize> = match budget {
        Budget::Bits(b) => {
            if !(b.is_finite() && b > 0.0) {
                return Err(Error::config("budget_bits", format!("{b} must be > 0")));
            }
            if !within(smallest, budget) {
                return Err(Error::config(
                    "budget_bits",
                    format!(
                        "{b} is below the smallest configuration, {:.3} average bits (every searched layer at {})",
                        smallest.avg_bits,
                        search.candidates.last().copied().unwrap_or(0)
                    ),
                ));
            }
            (0..front.len())
                .filter(|&i| within(&front[i], budget))
                .collect()
        }
        Budget::Bytes(n) => {
            if smallest.size_bytes > n {
                return Err(Error::config(
                    "budget_bytes",
                    format!(
                        "{n} is below the smallest configuration, {} bytes",
                        smallest.size_bytes
                    ),
                ));
            }
            (0..front.len())
                .filter(|&i| within(&front[i], budget))
                .collect()
        }
        Budget::MaxDrop(pts) => return choose_max_drop(search, pts),
    };
    // Chosen by the prediction from the calibration set, never by the evaluation set's
    // accuracy (that would select on the test data). `fits` is in decreasing size: max_by
    // keeps the last of equals, i.e. the smaller.
    let best = fits.iter().copied().max_by(|&a, &b| {
        let pred = |i: usize| front[i].predicted_sqnr_db;
        pred(a).total_cmp(&pred(b))
    });
    Ok(best.expect("fits is not empty"))
}

/// The smallest evaluated front point within `pts` points of float.
fn choose_max_drop(search: &MixedSearch, pts: f64) -> Result<usize> {
    if !(pts.is_finite() && pts >= 0.0) {
        return Err(Error::config("max_drop", format!("{pts} must be ≥ 0")));
    }
    let Some(fp) = search.fp32_accuracy else {
        return Err(Error::config(
            "max_drop",
            "needs evaluated points with labels and float weights",
        ));
    };
    let front = &search.front;
    (0..front.len())
        .rev()
        .find(|&i| {
            front[i]
                .quant_accuracy
                .is_some_and(|a| (fp - a) * 100.0 <= pts + 1e-9)
        })
        .ok_or_else(|| {
            let best = front
                .iter()
                .filter_map(|p| p.quant_accuracy)
                .fold(f64::NEG_INFINITY, f64::max);
            Error::config(
                "max_drop",
                format!(
                    "no configuration is within {pts} points of float ({:.2}%); the best drops {:.2} points",
                    fp * 100.0,
                    (fp - best) * 100.0
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_ends_and_spaces_the_rest_evenly_in_size() {
        // A front of 1,000 points whose sizes fall unevenly (steps of 1 to 9 bits).
        let mut size = 100_000u64;
        let front: Vec<greedy::GreedyPoint> = (0..1000)
            .map(|i| {
                let g = greedy::GreedyPoint {
                    choice: vec![i],
                    size_bits: size,
                    nsr: i as f64,
                };
                size -= 1 + (i as u64 * 7) % 9;
                g
            })
            .collect();
        let (hi, lo) = (front[0].size_bits, front[999].size_bits);
        let step = (hi - lo) / (FRONT_POINTS_MAX as u64 - 1);
        let kept = thinned(front.clone());
        assert_eq!(kept[0], front[0]);
        assert_eq!(kept.last(), front.last());
        assert!(kept.len() <= FRONT_POINTS_MAX + 1, "{} points", kept.len());
        assert!(kept.len() >= FRONT_POINTS_MAX - 1, "{} points", kept.len());
        // Each kept point is the first at least a step below the one before (the last aside),
        // and every kept point is a point of the front.
        for w in kept.windows(2) {
            assert!(front.contains(&w[1]));
            let gap = w[0].size_bits - w[1].size_bits;
            if w[1] != front[999] {
                assert!(gap >= step, "gap {gap} < {step}");
                assert!(gap < step + 9, "gap {gap}: a point in between was skipped");
            }
        }
        // A short front is kept whole.
        assert_eq!(thinned(front[..10].to_vec()), front[..10].to_vec());
    }
}
