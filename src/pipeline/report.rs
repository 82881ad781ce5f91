//! The report of a run (formats.md §4) from the parameters and what evaluation measured.

use super::evaluate::Evaluation;
use crate::config::QuantConfig;
use crate::eval::report::{InputReport, LayerReport, PointReport, Report, Timings};
use crate::eval::sqnr::sqnr_db;
use crate::model::Model;
use crate::params::{ActQuant, LayerParams, ModelParams};
use crate::quant::Strategy;

/// One weight layer's row of the report.
fn layer_report(
    model: &Model,
    lp: &LayerParams,
    ev: &Evaluation,
    j: usize,
    has_float: bool,
) -> LayerReport {
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
        op: layer.op_type.clone(),
        weight_bits: ws.map(|s| s.bits),
        channel_bits_mean: lp
            .weight
            .as_ref()
            .and_then(|w| w.q.row_bits())
            .map(|b| crate::quant::weights::mean_bits(&b)),
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
}

/// A weightless integer node's row: its output point, null weight fields.
fn weightless_report(model: &Model, i: usize, a: &ActQuant) -> LayerReport {
    let l = &model.layers[i];
    LayerReport {
        name: l.name.clone(),
        op: l.op_type.clone(),
        weight_bits: None,
        channel_bits_mean: None,
        act_bits: Some(a.settings.bits),
        weight_strategy: None,
        act_strategy: Some(a.settings.strategy.to_string()),
        granularity: None,
        weight_scheme: None,
        act_scheme: Some(a.settings.scheme.to_string()),
        weight_sqnr_db: None,
        act_sqnr_db: None,
        act_sqnr_isolated_db: None,
        act_range: Some([a.range.lo, a.range.hi]),
        float: false,
    }
}

fn input_report(a: &ActQuant) -> InputReport {
    InputReport {
        act_bits: a.settings.bits,
        act_strategy: a.settings.strategy.to_string(),
        act_range: [a.range.lo, a.range.hi],
    }
}

/// Builds the report of one evaluation.
pub(super) fn build_report(
    model: &Model,
    config: &QuantConfig,
    params: &ModelParams,
    ev: &Evaluation,
    eval_samples: usize,
    has_float: bool,
    timings_ms: Timings,
) -> Report {
    let (layers, points) = layer_and_point_reports(model, params, ev, has_float);
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
        input: params.input().map(input_report),
        points,
        output_cosine: if has_float { ev.output_cosine() } else { None },
        float_islands: model
            .layers
            .iter()
            .zip(&ev.islands)
            .filter(|(_, island)| **island)
            .map(|(l, _)| l.name.clone())
            .collect(),
        int_mac_share: ev.int_mac_share(),
        // Parameters say which methods they were made with (loaded ones too); older files
        // without them at least say their SmoothQuant strength.
        methods: params
            .methods
            .clone()
            .unwrap_or_else(|| crate::eval::report::Methods {
                smoothquant: config
                    .smoothquant
                    .or(params.smoothquant.first().map(|e| e.alpha)),
                ..crate::eval::report::Methods::of(config)
            }),
        cle_pairs: Vec::new(),
        smoothquant: Vec::new(),
        smoothquant_skipped: Vec::new(),
        timings_ms,
        kernel: crate::engine::kernels::kernel_name().to_string(),
    }
}

/// The report's layers (weight layers and weightless integer nodes, in topological order)
/// and its other quantization points (neither the input nor an integer node's output).
fn layer_and_point_reports(
    model: &Model,
    params: &ModelParams,
    ev: &Evaluation,
    has_float: bool,
) -> (Vec<LayerReport>, Vec<PointReport>) {
    let mut rows: Vec<(usize, LayerReport)> = params
        .layers
        .iter()
        .enumerate()
        .map(|(j, lp)| (lp.index, layer_report(model, lp, ev, j, has_float)))
        .collect();
    // Weightless integer nodes (a residual Add, a pool, a lookup table, …) are layers too, in
    // topological order with null weight fields; their point is their output.
    let integer_node = |v: crate::model::ValueId| {
        model
            .layers
            .iter()
            .position(|l| l.output == v)
            .filter(|&i| {
                !model.layers[i].op.has_weights() && !ev.islands.get(i).copied().unwrap_or(true)
            })
    };
    for p in &params.points {
        if let Some(i) = integer_node(p.value) {
            rows.push((i, weightless_report(model, i, &p.act)));
        }
    }
    rows.sort_by_key(|(i, _)| *i);
    let layers = rows.into_iter().map(|(_, r)| r).collect();
    let points = params
        .points
        .iter()
        .filter(|p| p.name != crate::config::INPUT_POINT && integer_node(p.value).is_none())
        .map(|p| {
            let r = input_report(&p.act);
            PointReport {
                name: p.name.clone(),
                act_bits: r.act_bits,
                act_strategy: r.act_strategy,
                act_range: r.act_range,
            }
        })
        .collect();
    (layers, points)
}
