//! Loss-aware activation range refinement (`--act-refine`): after the ranges are chosen (and
//! after bias correction), each quantization point's clipping range is replaced by its current
//! range scaled (about zero) by the one of [`factors`] that lowers the [`loss`] of the integer
//! engine against the float model on the calibration set the most. Coordinate descent: one
//! point at a time in network order (graph inputs first, then by producing node), every
//! candidate scored with the points before it already refined, for up to [`SWEEPS`] sweeps
//! (fewer when a sweep changes nothing; a second sweep scales the range the first one chose).
//! Points with a hand-set range are left alone. A candidate is taken only when it scores
//! strictly lower (the first such factor on ties), so the result never scores above the ranges
//! it started from. The parameters carry the refined scales and zero points, so `--params`
//! reproduces the run.

use super::Cancel;
use super::batch::{Kept, fold_batches, fold_batches_while, make_batch};
use crate::config::QuantConfig;
use crate::engine::float::Values;
use crate::engine::int::{IntModel, Kernels};
use crate::error::Result;
use crate::model::{Dataset, Model};
use crate::params::{ActQuant, ModelParams};

/// Sweeps over the points at most.
pub const SWEEPS: usize = 2;

/// The factors each point's chosen range is scaled by (about zero): 0.50, 0.55, …, 1.30.
pub fn factors() -> Vec<f32> {
    (10..=26).map(|k| k as f32 / 20.0).collect()
}

/// What refinement did: the loss before and after, and how many points changed range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refined {
    /// [`loss`] with the ranges it started from.
    pub before: f64,
    /// [`loss`] with the refined ranges.
    pub after: f64,
    /// Points whose range changed.
    pub changed: usize,
}

/// Where a point's quantization sits in the parameters: a point entry or a layer's output.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Point(usize),
    Layer(usize),
}

fn act_mut(p: &mut ModelParams, s: Slot) -> &mut ActQuant {
    match s {
        Slot::Point(k) => &mut p.points[k].act,
        Slot::Layer(k) => p.layers[k].act.as_mut().expect("a slot has an act"),
    }
}

fn slot_name(p: &ModelParams, s: Slot) -> &str {
    match s {
        Slot::Point(k) => &p.points[k].name,
        Slot::Layer(k) => &p.layers[k].name,
    }
}

/// The points to refine in network order (graph inputs first, then by producing node),
/// without the points whose range was set by hand.
fn slots(model: &Model, params: &ModelParams) -> Vec<Slot> {
    let producer = |v| model.layers.iter().position(|l| l.output == v);
    let mut out: Vec<(usize, Slot)> = Vec::new();
    for (k, p) in params.points.iter().enumerate() {
        if p.act.settings.range.is_none() {
            out.push((producer(p.value).map_or(0, |i| i + 1), Slot::Point(k)));
        }
    }
    for (k, l) in params.layers.iter().enumerate() {
        if l.act.as_ref().is_some_and(|a| a.settings.range.is_none()) {
            out.push((l.index + 1, Slot::Layer(k)));
        }
    }
    out.sort_by_key(|&(order, _)| order);
    out.into_iter().map(|(_, s)| s).collect()
}

/// The log-softmax of `x` in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    x.iter().map(|&v| v as f64 - m - s.ln()).collect()
}

/// KL(softmax(f) ‖ softmax(q)) in f64.
pub fn kl_softmax(f: &[f32], q: &[f32]) -> f64 {
    let (lf, lq) = (log_softmax(f), log_softmax(q));
    lf.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// The refinement loss of `params` on `data`: the mean over samples of
/// KL(softmax(float) ‖ softmax(int)) of each sample's first graph output, the float model's
/// outputs `float_out` (flattened in sample order) against the integer engine's.
pub fn loss(
    model: &Model,
    params: &ModelParams,
    data: &Dataset,
    float_out: &[f32],
    lc: (usize, &Cancel),
) -> Result<f64> {
    let int = IntModel::new(model, params, lc.0);
    loss_from(&int, data, float_out, (None, f64::INFINITY), lc.1)
}

/// How far above a bound a partial loss must be before a candidate is given up: a per-sample KL
/// term is below zero only by the rounding of its f64 log-softmax differences (a few ulps of
/// logits of order 10, some 1e-14; an estimate, not a measurement), so the samples not yet run
/// cannot bring a mean this far above the bound back below it.
const GIVE_UP_MARGIN: f64 = 1e-9;

/// [`loss`] of the integer engine `int`, continuing each batch from `prefix` (its value tables
/// before node `start`, made under parameters that agree with `int`'s before that node) instead
/// of from the inputs. A candidate that cannot beat `bound` stops early: once the loss summed
/// over the batches run so far, divided by all the samples, exceeds `bound` (plus
/// [`GIVE_UP_MARGIN`]), that partial figure is returned; the whole loss would be no lower.
fn loss_from(
    int: &IntModel,
    data: &Dataset,
    float_out: &[f32],
    (prefix, bound): (Option<(&[Values], usize)>, f64),
    cancel: &Cancel,
) -> Result<f64> {
    let model = int.model();
    let per = (float_out.len() / data.n.max(1)).max(1);
    let batch = |s: usize, e: usize| -> Result<f64> {
        cancel.check()?;
        let out = match prefix {
            Some((tables, start)) => {
                int.forward_resume_outputs(tables[s / super::BATCH].clone(), start)?
            }
            None => int.forward_outputs(make_batch(model, data, s, e)?)?,
        };
        let q = out[0].to_f32_vec();
        let f = &float_out[s * per..e * per];
        Ok(f.chunks(per)
            .zip(q.chunks(per))
            .map(|(a, b)| kl_softmax(a, b))
            .sum())
    };
    let n = data.n.max(1) as f64;
    let mut total = 0.0;
    fold_batches_while(data.n, batch, |x| {
        total += x;
        total / n <= bound + GIVE_UP_MARGIN
    })?;
    Ok(total / n)
}

/// Bytes of integer-engine state kept per refined point at most (the value tables of every
/// calibration batch before the point's first writer); past it, candidates run from the inputs.
const PREFIX_BYTES: usize = 512 << 20;

/// The node a point's candidates change first, and the calibration batches' value tables
/// before it in `int`, built for `params` (`None`: a graph input, or the tables exceed
/// [`PREFIX_BYTES`]).
fn prefixes<'m>(
    int: &IntModel<'m>,
    params: &ModelParams,
    s: Slot,
    data: &Dataset,
    cancel: &Cancel,
) -> Result<Option<(Vec<Values<'m>>, usize)>> {
    let model = int.model();
    let v = match s {
        Slot::Point(k) => params.points[k].value,
        Slot::Layer(k) => model.point_value(params.layers[k].index),
    };
    let Some(start) = int.first_writer(v) else {
        return Ok(None);
    };
    let mut tables = Kept::new(PREFIX_BYTES);
    let batch = |s: usize, e: usize| -> Result<Values<'m>> {
        cancel.check()?;
        int.forward_prefix(make_batch(model, data, s, e)?, start)
    };
    fold_batches(data.n, batch, |t| {
        let bytes = t.owned_bytes();
        tables.push(t, bytes);
    })?;
    Ok(tables.finish().map(|t| (t, start)))
}

/// Refines the activation ranges of `params` (for `model`) on the calibration set `data`, as
/// the module doc says; `float` is the float model's first output on `data` (sample order).
pub fn refine(
    model: &Model,
    config: &QuantConfig,
    params: &mut ModelParams,
    data: &Dataset,
    float: &[f32],
    cancel: &Cancel,
) -> Result<Refined> {
    let lc = (config.max_sample_elems(), cancel);
    let slots = slots(model, params);
    let chosen: Vec<ActQuant> = slots.iter().map(|&s| act_mut(params, s).clone()).collect();
    let grid = factors();
    let before = loss(model, params, data, float, lc)?;
    let mut best = before;
    // The kernels of the parameters as they stand, and those parameters.
    let mut last: Option<(Kernels, ModelParams)> = None;
    for _ in 0..SWEEPS {
        let mut moved = false;
        for (t, &s) in slots.iter().enumerate() {
            let name = slot_name(params, s).to_string();
            cancel.progress(&format!("act refine {name} ({}/{})", t + 1, slots.len()));
            let base = act_mut(params, s).clone();
            let current = base.qparams;
            // Every candidate changes this point alone: its builds take the other kernels
            // from this one, which takes its own from the last point's.
            let base_int = match &last {
                Some((k, p)) => IntModel::reusing(model, params, lc.0, (k, p)),
                None => IntModel::new(model, params, lc.0),
            };
            let kernels = base_int.kernels();
            let pre = prefixes(&base_int, params, s, data, cancel)?;
            let pre = pre.as_ref().map(|(t, start)| (t.as_slice(), *start));
            let mut pick = None;
            for &f in &grid {
                let a = base.scaled(f);
                if a.qparams == current {
                    continue;
                }
                let mut cand = params.clone();
                *act_mut(&mut cand, s) = a.clone();
                let int = IntModel::reusing(model, &cand, lc.0, (&kernels, params));
                let l = loss_from(&int, data, float, (pre, best), cancel)?;
                if l < best {
                    (best, pick) = (l, Some((a, int.kernels())));
                }
            }
            let kept = match pick {
                Some((a, picked)) => {
                    *act_mut(params, s) = a;
                    moved = true;
                    picked
                }
                None => kernels,
            };
            last = Some((kept, params.clone()));
        }
        if !moved {
            break;
        }
    }
    let changed = (slots.iter().zip(&chosen))
        .filter(|&(&s, c)| act_mut(params, s).qparams != c.qparams)
        .count();
    Ok(Refined {
        before,
        after: best,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Cancel, run};

    #[test]
    fn a_candidate_given_up_early_is_one_the_whole_loss_would_reject() {
        // The CNN at W4A4 on 300 samples (5 batches, so a bound can stop a pass after the
        // batches in flight): against bounds below, at and above the whole loss, the figure
        // returned is below a bound exactly when the whole loss is, and is the whole loss
        // whenever it is below.
        let model = crate::bundled::model("mnist-cnn").unwrap();
        let data = crate::bundled::calib().take(300);
        let config = QuantConfig {
            weight_bits: 4,
            act_bits: 4,
            ..Default::default()
        };
        let params = run(&model, &data, &data, &config, &Cancel::new())
            .unwrap()
            .params;
        let int = IntModel::new(&model, &params, usize::MAX);
        let batch = make_batch(&model, &data, 0, data.n).unwrap();
        let float = crate::engine::float::forward_outputs(&model, batch, usize::MAX).unwrap();
        let float = float[0].to_f32_vec();
        let cancel = Cancel::new();
        let whole = loss_from(&int, &data, &float, (None, f64::INFINITY), &cancel).unwrap();
        assert!(whole > 0.0);
        let mut stopped = 0;
        for k in [0.01, 0.2, 0.5, 0.9, 0.999, 1.0, 1.001, 2.0] {
            let bound = whole * k;
            let got = loss_from(&int, &data, &float, (None, bound), &cancel).unwrap();
            assert_eq!(
                got < bound,
                whole < bound,
                "bound {bound}: {got} vs {whole}"
            );
            if got != whole {
                stopped += 1;
                assert!(
                    got > bound && got < whole,
                    "bound {bound}: {got} vs {whole}"
                );
            }
        }
        assert!(stopped > 0, "no bound stopped a pass early");
    }
}
