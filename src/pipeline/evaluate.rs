//! Step 4 of the flow: the float model and the integer engine side by side on the evaluation
//! set — accuracy, agreement, output SQNR and cosine, per-layer SQNRs, float islands, integer
//! share of multiply-adds.

use super::Cancel;
use super::batch::fold_batches;
use super::batch::{check_data, make_batch};
use super::float_side::{FloatBatch, FloatCache, Keeper, float_batch, wanted_values};
use super::resume::{BatchPrefix, Checkpoint, first_changed_node};
use crate::config::QuantConfig;
use crate::engine::IntModel;
use crate::engine::float::Values;
use crate::engine::int::Ran;
use crate::engine::tensor::Tensor;
use crate::error::Result;
use crate::eval::accuracy::AccuracyCounts;
use crate::eval::sqnr::SqnrAcc;
use crate::model::{Dataset, Model, Op, ValueId};
use crate::params::{LayerParams, ModelParams};
use crate::quant::QParams;
use std::collections::HashMap;

/// Float and quantized outputs, one vector per batch.
pub type SavedBatches = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// What evaluation measured.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Accuracy and agreement counts.
    pub counts: AccuracyCounts,
    /// Final output SQNR.
    pub output: SqnrAcc,
    /// Σ over samples of the cosine between float and quantized outputs.
    pub cosine_sum: f64,
    /// Samples in `cosine_sum`.
    pub cosine_n: usize,
    /// Per weight layer: accumulated activation SQNR.
    pub act: Vec<SqnrAcc>,
    /// Per weight layer: isolated activation SQNR.
    pub isolated: Vec<SqnrAcc>,
    /// Per node: whether it ran as a float island.
    pub islands: Vec<bool>,
    /// Multiply-adds done in integers and in floats.
    pub macs: (f64, f64),
    /// Graph outputs of the float model and of the integer engine, when asked for.
    pub saved: Option<SavedBatches>,
}

impl Evaluation {
    fn merge(mut self, o: Evaluation) -> Evaluation {
        self.counts.merge(&o.counts);
        self.output.merge(&o.output);
        self.cosine_sum += o.cosine_sum;
        self.cosine_n += o.cosine_n;
        self.act
            .iter_mut()
            .zip(&o.act)
            .for_each(|(a, b)| a.merge(b));
        self.isolated
            .iter_mut()
            .zip(&o.isolated)
            .for_each(|(a, b)| a.merge(b));
        self.islands
            .iter_mut()
            .zip(&o.islands)
            .for_each(|(a, b)| *a |= b);
        self.macs = (self.macs.0 + o.macs.0, self.macs.1 + o.macs.1);
        if let (Some(a), Some(b)) = (&mut self.saved, o.saved) {
            a.0.extend(b.0);
            a.1.extend(b.1);
        }
        self
    }

    /// Mean cosine between float and quantized outputs.
    pub fn output_cosine(&self) -> Option<f64> {
        (self.cosine_n > 0).then(|| self.cosine_sum / self.cosine_n as f64)
    }

    /// Share of multiply-adds done in integers.
    pub fn int_mac_share(&self) -> Option<f64> {
        let total = self.macs.0 + self.macs.1;
        (total > 0.0).then(|| self.macs.0 / total)
    }
}

/// Multiply-adds of node `i` given its inputs' and output's shapes.
pub(super) fn node_macs(model: &Model, i: usize, first_in: &[usize], out: &Tensor) -> f64 {
    let op = &model.layers[i].op;
    let per = match op {
        Op::MatMul => first_in.last().copied().unwrap_or(0),
        _ => op.macs_per_output(),
    };
    (per * out.len()) as f64
}

/// Adds `t` (codes or reals) against the float reference `f` to `acc`: codes straight from
/// their bytes, the same sums as over their dequantized values.
fn add_value(acc: &mut SqnrAcc, f: &[f32], t: &Tensor) {
    match (t.as_q(), t.as_f32()) {
        (Some((codes, qp)), _) => acc.add_codes(f, codes, qp),
        (None, Some(v)) => acc.add(f, v),
        _ => acc.add(f, &t.to_f32_vec()),
    }
}

/// [`add_value`] of a layer's output in the run into `act` and of its isolated output into
/// `alone`, both against `f`: one pass over `f` when both are codes of its length.
fn add_pair(
    act: &mut SqnrAcc,
    alone: &mut SqnrAcc,
    f: &[f32],
    run: Option<&Tensor>,
    iso: Option<&Tensor>,
) {
    if let (Some(r), Some(a)) = (run, iso)
        && let (Some(rq), Some(aq)) = (r.as_q(), a.as_q())
        && rq.0.len() == f.len()
        && aq.0.len() == f.len()
    {
        return act.add_codes_pair(alone, f, [rq, aq]);
    }
    if let Some(r) = run {
        add_value(act, f, r);
    }
    if let Some(a) = iso {
        add_value(alone, f, a);
    }
}

/// Cosine between two flattened samples (1 when both are zero).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// Where the float side of an evaluation comes from.
pub enum FloatSide<'a> {
    /// Run the float model on every batch; keep nothing.
    Run,
    /// Use the cache when it covers the evaluation set; otherwise run the float model and fill
    /// the cache (within [`FLOAT_CACHE_BYTES`](super::float_side::FLOAT_CACHE_BYTES)).
    Cached(&'a mut Option<FloatCache>),
}

/// Step 4: runs the float model and the integer engine on `data` and compares them.
/// With `has_float == false` (no float weights) only the integer side is measured; `save`
/// keeps both outputs.
pub fn evaluate(
    model: &Model,
    config: &QuantConfig,
    params: &ModelParams,
    data: &Dataset,
    has_float: bool,
    save: bool,
    cancel: &Cancel,
) -> Result<Evaluation> {
    let opts = (has_float, save);
    evaluate_with(model, config, params, data, opts, FloatSide::Run, cancel)
}

/// [`evaluate`] with the float side taken from (or kept in) `side`; `(has_float, save)` as
/// there. Batches are summed in order, so the figures are the same on every run.
pub fn evaluate_with(
    model: &Model,
    config: &QuantConfig,
    params: &ModelParams,
    data: &Dataset,
    (has_float, save): (bool, bool),
    side: FloatSide,
    cancel: &Cancel,
) -> Result<Evaluation> {
    let limit = config.max_sample_elems();
    check_eval_inputs(model, params, data, limit)?;
    let int = engine_for(model, params, limit, &side);
    let wanted = wanted_values(model);
    let zero = || Evaluation::empty(model, save);
    let slot = match side {
        FloatSide::Cached(slot) if has_float => Some(slot),
        _ => None,
    };
    let plan = CachePlan::new(model, &int, (params, limit), slot.as_deref(), data.n);
    let keeper = Keeper::default();
    let (mut total, mut kept, mut prefixes) = (zero(), Vec::new(), Vec::new());
    fold_batches(
        data.n,
        |s, e| {
            cancel.check()?;
            let inputs = make_batch(model, data, s, e)?;
            let own = match (has_float, plan.reuse) {
                (true, None) => Some(float_batch(model, data, s, inputs.clone(), &wanted, limit)?),
                (false, _) => {
                    super::calibrate::check_finite(model, data, s, &inputs)?;
                    None
                }
                (true, Some(_)) => None,
            };
            let fb = own
                .as_ref()
                .or(plan.reuse.map(|c| &c.batches[s / super::BATCH]));
            let mut ev = zero();
            let cuts = BatchCuts {
                from: plan.from.map(|c| (c.cut, &c.batches[s / super::BATCH])),
                take: plan.take,
                writers: &plan.writers,
            };
            let run = (&int, &plan.skip[..]);
            let prefix = eval_batch(
                model,
                params,
                run,
                data,
                (s, e),
                (inputs, cuts),
                fb,
                &mut ev,
            )?;
            Ok((ev, own.filter(|b| plan.filling && keeper.admit(b)), prefix))
        },
        |(ev, keep, prefix)| {
            total = std::mem::take(&mut total).merge(ev);
            kept.push(keep);
            prefixes.push(prefix);
        },
    )?;
    let CachePlan {
        known,
        filling,
        in_qs,
        take,
        ..
    } = plan;
    for (j, acc) in known.into_iter().enumerate() {
        if let Some(acc) = acc {
            total.isolated[j] = acc;
        }
    }
    if let Some(slot) = slot {
        let kept = filling.then(|| keeper.finish(data.n, kept));
        let resume = Resume {
            in_qs,
            params,
            limit,
            take,
            prefixes,
            kernels: int.kernels(),
        };
        keep_in_session(slot, kept, &total, resume);
    }
    Ok(total)
}

impl Evaluation {
    /// Nothing measured yet on `model`'s weight layers and nodes (with an empty store of
    /// outputs when `save`).
    fn empty(model: &Model, save: bool) -> Self {
        let layers = model.weight_layers().len();
        Evaluation {
            act: vec![SqnrAcc::default(); layers],
            isolated: vec![SqnrAcc::default(); layers],
            islands: vec![false; model.layers.len()],
            saved: save.then(Default::default),
            ..Default::default()
        }
    }
}

/// The integer engine for `params`: built from the kernels of a session's last evaluation when
/// `side` holds one (the layers a change leaves alone keep theirs), else from scratch.
fn engine_for<'m>(
    model: &'m Model,
    params: &ModelParams,
    limit: usize,
    side: &FloatSide,
) -> IntModel<'m> {
    let last = match side {
        FloatSide::Cached(slot) => slot.as_ref().and_then(|c| c.checkpoint.as_ref()),
        _ => None,
    };
    match last {
        Some(cp) => IntModel::reusing(model, params, limit, (&cp.kernels, &cp.params)),
        None => IntModel::new(model, params, limit),
    }
}

/// The checks before an evaluation: the data fits the model (and its labels its outputs),
/// every sample's tensors stay within `limit` elements, and integer biases fit their layers.
fn check_eval_inputs(
    model: &Model,
    params: &ModelParams,
    data: &Dataset,
    limit: usize,
) -> Result<()> {
    check_data(model, data)?;
    super::batch::check_tensor_sizes(model, limit)?;
    if model.output_len() > 0 {
        data.check_labels(model.output_len())?;
    }
    crate::export::quantized_model::check_int_biases(model, params)
}

/// What the next evaluation of a session may resume from.
struct Resume<'p> {
    /// Each weight layer's input qparams (`None` where the plan does not track them).
    in_qs: Option<Vec<Option<QParams>>>,
    params: &'p ModelParams,
    limit: usize,
    /// The node before which each batch's integer run was kept (0: none).
    take: usize,
    /// Per batch, the integer engine's values at `take`.
    prefixes: Vec<Option<BatchPrefix>>,
    /// The integer engine's kernels.
    kernels: crate::engine::int::Kernels,
}

/// What a session keeps of an evaluation in its float-side cache `slot`: the float batches
/// `kept` when this run filled it, then each weight layer's isolated SQNR (`total`'s) by its
/// input qparams, and the integer prefixes the next run may resume from.
fn keep_in_session(
    slot: &mut Option<FloatCache>,
    kept: Option<Option<FloatCache>>,
    total: &Evaluation,
    r: Resume,
) {
    if let Some(kept) = kept {
        *slot = kept;
    }
    if let (Some(c), Some(in_qs)) = (slot, r.in_qs) {
        c.isolated = in_qs
            .into_iter()
            .zip(total.isolated.iter().copied())
            .collect();
        c.checkpoint = Some(Checkpoint::new(
            (r.params.clone(), r.kernels),
            r.limit,
            r.take,
            r.prefixes,
        ));
    }
}

/// What one evaluation takes from a session's float-side cache and what it will keep.
struct CachePlan<'c> {
    /// The cache's float side, when it covers the evaluation set.
    reuse: Option<&'c FloatCache>,
    /// Whether this evaluation fills the cache (a session's, not covering the set yet).
    filling: bool,
    /// Each weight layer's input qparams (a session only: it keeps isolated sums).
    in_qs: Option<Vec<Option<QParams>>>,
    /// Per weight layer: its isolated SQNR sums when the cache still holds them.
    known: Vec<Option<SqnrAcc>>,
    /// Per weight layer: whether its isolated run is skipped (`known` has it).
    skip: Vec<bool>,
    /// Per weight layer: the node that writes its quantization point.
    writers: Vec<Option<usize>>,
    /// The checkpoint the integer runs resume from, if any.
    from: Option<&'c Checkpoint>,
    /// Keep the run before this node for the next evaluation (0: nothing).
    take: usize,
}

impl<'c> CachePlan<'c> {
    /// The plan for evaluating `params` on `n` samples with the cache in `slot` (`None`: no
    /// session).
    fn new(
        model: &Model,
        int: &IntModel,
        (params, limit): (&ModelParams, usize),
        slot: Option<&'c Option<FloatCache>>,
        n: usize,
    ) -> Self {
        let reuse = slot.and_then(Option::as_ref).filter(|c| c.samples == n);
        let in_qs = slot.is_some().then(|| layer_input_qparams(model, params));
        let wl = model.weight_layers();
        let known = match (reuse, &in_qs) {
            (Some(c), Some(in_qs)) => known_isolated(c, params, in_qs),
            _ => vec![None; wl.len()],
        };
        let skip: Vec<bool> = known.iter().map(Option::is_some).collect();
        let writers: Vec<Option<usize>> = wl
            .iter()
            .map(|&i| int.first_writer(model.point_value(i)))
            .collect();
        let (from, take) = reuse.map_or((None, 0), |c| {
            resume_plan(model, int, (params, limit), c, (&writers, &skip))
        });
        CachePlan {
            reuse,
            filling: slot.is_some() && reuse.is_none(),
            in_qs,
            known,
            skip,
            writers,
            from,
            take,
        }
    }
}

/// Where this evaluation's integer runs start and which cut it keeps for the next one, given
/// the cache `c` of the float side: it resumes from the cache's checkpoint when every node
/// before the checkpoint's cut computes what it did then and every weight layer whose point
/// those nodes write keeps its isolated sums (`writers`, `skip`); it keeps the cut at the first
/// node this evaluation's change touches (the next change is likely there again).
fn resume_plan<'c>(
    model: &Model,
    int: &IntModel,
    (params, limit): (&ModelParams, usize),
    c: &'c FloatCache,
    (writers, skip): (&[Option<usize>], &[bool]),
) -> (Option<&'c Checkpoint>, usize) {
    let Some(prev) = &c.checkpoint else {
        return (None, 0);
    };
    let n = model.layers.len();
    let changed = if prev.limit == limit {
        first_changed_node(model, &prev.params, params)
    } else {
        0
    };
    let cut = int.cut_at_or_before(changed.min(n));
    let known_before = |cut: usize| {
        let before = |w: &Option<usize>| w.is_some_and(|w| w < cut);
        writers.iter().zip(skip).all(|(w, &k)| k || !before(w))
    };
    let from = (prev.cut > 0 && prev.cut <= cut && known_before(prev.cut)).then_some(prev);
    let take = if changed >= n { prev.cut } else { cut };
    (from, take)
}

/// Per weight layer, the isolated sums `cache` holds from the last evaluation when the layer's
/// parameters (weights, bias, output point) and its input's qparams (`in_qs`) are the same:
/// that layer is not run alone again.
fn known_isolated(
    cache: &FloatCache,
    params: &ModelParams,
    in_qs: &[Option<QParams>],
) -> Vec<Option<SqnrAcc>> {
    let last = cache.checkpoint.as_ref().map(|k| &k.params.layers);
    let held = |j: usize, (lp, q): (&LayerParams, &Option<QParams>)| {
        let (held_q, acc) = cache.isolated.get(j)?;
        (last?.get(j)? == lp && held_q == q).then_some(*acc)
    };
    params
        .layers
        .iter()
        .zip(in_qs)
        .enumerate()
        .map(|(j, l)| held(j, l))
        .collect()
}

/// The qparams each weight layer's input is quantized with under `params`, in layer order.
fn layer_input_qparams(model: &Model, params: &ModelParams) -> Vec<Option<QParams>> {
    let in_qs = crate::engine::int::input_qparams(model, params);
    let of = |l: &LayerParams| in_qs.get(&l.index).copied().flatten();
    params.layers.iter().map(of).collect()
}

/// Where one batch's integer run starts and where it stops to leave a checkpoint.
struct BatchCuts<'a> {
    /// Resume at this node from this batch's prefix (`None`: run from the inputs).
    from: Option<(usize, &'a BatchPrefix)>,
    /// Keep the run before this node (0: keep nothing).
    take: usize,
    /// Per weight layer: the node that writes its quantization point.
    writers: &'a [Option<usize>],
}

/// What the integer run's taps collect on one batch besides the [`Evaluation`] sums.
struct Taps<'a> {
    model: &'a Model,
    int: &'a IntModel<'a>,
    params: &'a ModelParams,
    /// The float side's values (empty without float weights).
    float_vals: &'a HashMap<ValueId, Tensor>,
    has_float: bool,
    /// (point value, weight-layer position) of every weight layer.
    point_to_layer: Vec<(ValueId, usize)>,
    /// Shapes of the values computed so far (a MatMul's reduction length is its first input's
    /// last axis).
    shapes: HashMap<ValueId, Vec<usize>>,
    /// Each layer's output in the run, compared with its float value after the run together
    /// with its isolated output (both against the same float tensor, read once).
    in_run: Vec<Option<Tensor>>,
}

impl Taps<'_> {
    /// After the run: each weight layer's output in the run and alone, against its float value
    /// (one pass over it), except the layers whose sums came with a resumed prefix (`kept`);
    /// layers marked in `skip` are not run alone (their isolated sums are known).
    fn compare_layers(&mut self, ev: &mut Evaluation, skip: &[bool], kept: impl Fn(usize) -> bool) {
        let (model, int) = (self.model, self.int);
        for (j, &i) in model.weight_layers().iter().enumerate() {
            if kept(j) {
                continue;
            }
            let x = model.layers[i]
                .data_input()
                .and_then(|d| self.float_vals.get(&d));
            let want = self
                .float_vals
                .get(&model.point_value(i))
                .and_then(|t| t.as_f32());
            let Some(want) = want else { continue };
            let run = self.in_run[j].take();
            // A layer fed straight by a graph input quantized with the layer's own input
            // qparams gives the same codes alone as in the whole run.
            let computed;
            let alone = match &run {
                _ if skip[j] => None,
                Some(t) if int.isolated_is_in_run(i) => Some(t),
                _ => {
                    computed = x.and_then(|x| int.run_isolated_codes(i, x));
                    computed.as_ref()
                }
            };
            let (act, iso) = (&mut ev.act[j], &mut ev.isolated[j]);
            add_pair(act, iso, want, run.as_ref(), alone);
        }
    }

    /// Node `i` wrote `t` to value `v`, having run as `ran`.
    fn see(&mut self, ev: &mut Evaluation, i: usize, v: ValueId, t: &Tensor, ran: Ran) {
        let model = self.model;
        ev.islands[i] |= ran.island();
        let first_in = model.layers[i]
            .data_input()
            .and_then(|d| self.shapes.get(&d));
        let macs = node_macs(model, i, first_in.map_or(&[][..], |s| s), t);
        if self.int.is_gemm(i) || ran == Ran::Int {
            ev.macs.0 += macs
        } else {
            ev.macs.1 += macs
        }
        self.shapes.insert(model.layers[i].output, t.shape.clone());
        self.shapes.insert(v, t.shape.clone());
        if !self.has_float {
            return;
        }
        for &(pv, j) in &self.point_to_layer {
            let integer = self.params.layers[j].weight.is_some();
            if pv == v
                && integer
                && let Some(f) = self.float_vals.get(&v).and_then(|f| f.as_f32())
            {
                if f.len() == t.len() {
                    self.in_run[j] = Some(t.clone());
                } else {
                    add_value(&mut ev.act[j], f, t);
                }
            }
        }
    }
}

/// Adds one batch's graph outputs to `ev`: top-1 counts against `labels` and the float
/// outputs `fv` (when there is a float side), output SQNR and cosine, and the saved outputs.
fn add_outputs(
    ev: &mut Evaluation,
    fv: Option<Vec<f32>>,
    qv: Vec<f32>,
    (n, labels): (usize, Option<&[i64]>),
) {
    let classes = qv.len().checked_div(n).unwrap_or(0);
    ev.counts.add(fv.as_deref(), &qv, classes, labels);
    if let Some(f) = &fv {
        ev.output.add(f, &qv);
        for (a, b) in f.chunks(classes.max(1)).zip(qv.chunks(classes.max(1))) {
            ev.cosine_sum += cosine(a, b);
            ev.cosine_n += 1;
        }
    }
    if let Some(saved) = &mut ev.saved {
        saved.0.push(fv.unwrap_or_default());
        saved.1.push(qv);
    }
}

/// One batch of [`evaluate`]: the integer engine on `inputs` (or resumed as `cuts` says),
/// compared with the float side `fb` (`None` without float weights); weight layers marked in
/// `skip` are not run alone (their isolated sums are known). Returns the run before
/// `cuts.take` when that is set.
#[allow(clippy::too_many_arguments)]
fn eval_batch(
    model: &Model,
    params: &ModelParams,
    (int, skip): (&IntModel, &[bool]),
    data: &Dataset,
    (s, e): (usize, usize),
    (inputs, cuts): (Vec<Tensor>, BatchCuts),
    fb: Option<&FloatBatch>,
    ev: &mut Evaluation,
) -> Result<Option<BatchPrefix>> {
    let n = e - s;
    let wl = model.weight_layers();
    let has_float = fb.is_some();
    let empty = HashMap::new();
    let float_vals = fb.map_or(&empty, |b| &b.values);
    let float_out = fb.map(|b| &b.outputs);
    let mut taps = Taps {
        model,
        int,
        params,
        float_vals,
        has_float,
        point_to_layer: wl
            .iter()
            .enumerate()
            .map(|(j, &i)| (model.point_value(i), j))
            .collect(),
        shapes: HashMap::new(),
        in_run: vec![None; wl.len()],
    };
    let (start, mut vals) = match cuts.from {
        Some((cut, p)) => {
            ev.macs = p.macs;
            ev.islands.clone_from(&p.islands);
            for (j, acc) in &p.act {
                ev.act[*j] = *acc;
            }
            let live = p.values.iter().map(|(v, t)| (*v, t.shape.clone()));
            taps.shapes.extend(live);
            (cut, Values::with_owned(model, &p.values))
        }
        None => {
            let graph_in = model.inputs.iter().zip(&inputs);
            taps.shapes
                .extend(graph_in.map(|(gi, t)| (gi.value, t.shape.clone())));
            (0, int.forward_prefix(inputs, 0)?)
        }
    };
    let take = cuts.take.max(start);
    int.run_range(&mut vals, start..take, &mut |i, v, t, r| {
        taps.see(ev, i, v, t, r)
    })?;
    let at_cut = (take > 0).then(|| (vals.owned_values(), ev.macs, ev.islands.clone()));
    let quant_out = int.forward_resume(vals, take, |i, v, t, r| taps.see(ev, i, v, t, r))?;
    let before = |j: usize, cut: usize| cuts.writers[j].is_some_and(|w| w < cut);
    if has_float {
        taps.compare_layers(ev, skip, |j| before(j, start));
    }
    let labels = data.labels.as_ref().map(|l| &l[s..e]);
    let fv = float_out.as_ref().map(|f| f[0].to_f32_vec());
    add_outputs(ev, fv, quant_out[0].to_f32_vec(), (n, labels));
    Ok(at_cut.map(|(values, macs, islands)| BatchPrefix {
        values,
        macs,
        islands,
        act: (0..wl.len())
            .filter(|&j| before(j, take))
            .map(|j| (j, ev.act[j]))
            .collect(),
    }))
}
