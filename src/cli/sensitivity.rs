//! `qscope sensitivity`: per weight layer, accuracy with that layer alone at each bit width.

use super::args::SensitivityArgs;
use super::out::{errln, out, outln};
use super::progress::bar;
use super::setup::{Setup, setup};
use super::table::{db, pct, render};
use anyhow::Result;
use qscope::eval::sensitivity::{Sensitivity, SensitivityRow, sensitivity, sensitivity_params};
use qscope::params::ModelParams;
use qscope::pipeline::{Cancel, Session};

/// Runs `qscope sensitivity`.
pub fn main(args: &SensitivityArgs) -> Result<()> {
    let s = setup(&args.common)?;
    let result = sweep_with_progress(args, s)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?)?;
        return Ok(());
    }
    print_table(&result)
}

/// Runs the sweep over `s`'s loaded parameters or by calibrating, under a progress bar.
fn sweep_with_progress(args: &SensitivityArgs, s: Setup) -> Result<Sensitivity> {
    let layers = s.model.weight_layers().len();
    let pb = bar((layers * args.bits.len()) as u64, "sensitivity");
    let progress = |done: usize, _: usize| {
        if let Some(pb) = &pb {
            pb.set_position(done as u64);
        }
    };
    let cancel = Cancel::new();
    let result = match &s.params {
        Some(p) => sweep_loaded_params(args, &s, p, &cancel, progress)?,
        None => sweep_calibrating(args, s, &cancel, progress)?,
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(result)
}

/// The sweep over loaded `params`, after a note on stderr of what each row then means.
fn sweep_loaded_params(
    args: &SensitivityArgs,
    s: &Setup,
    params: &ModelParams,
    cancel: &Cancel,
    progress: impl FnMut(usize, usize),
) -> Result<Sensitivity> {
    errln!(
        "qscope: note: parameters are loaded, not calibrated: each row re-quantizes that layer's {} weights with its settings, and its output from its stored range",
        if s.has_float { "float" } else { "dequantized" }
    );
    Ok(sensitivity_params(
        &s.model,
        params,
        &s.eval,
        &s.config,
        s.has_float,
        &args.bits,
        args.target,
        cancel,
        progress,
    )?)
}

/// The sweep calibrating each configuration on `s`'s data.
fn sweep_calibrating(
    args: &SensitivityArgs,
    s: Setup,
    cancel: &Cancel,
    progress: impl FnMut(usize, usize),
) -> Result<Sensitivity> {
    let mut session = Session::new(s.model, s.calib, s.eval);
    Ok(sensitivity(
        &mut session,
        &s.config,
        &args.bits,
        args.target,
        cancel,
        progress,
    )?)
}

/// Prints the summary line and the per-layer, per-bits table on stdout.
fn print_table(result: &Sensitivity) -> Result<()> {
    outln!(
        "model {}  ·  target {:?}  ·  float top-1 {}  ·  as configured {}\n",
        result.model,
        result.target,
        pct(result.fp32_accuracy),
        pct(result.baseline_accuracy)
    )?;
    let rows: Vec<Vec<String>> = result
        .rows
        .iter()
        .map(|r| table_row(r, result.baseline_accuracy))
        .collect();
    out!(
        "{}",
        render(
            &[
                "layer",
                "bits",
                "int top-1",
                "Δ points",
                "agreement",
                "output SQNR dB"
            ],
            &rows
        )
    )?;
    Ok(())
}

/// A table row: the layer, its bits, and the figures with the change from `baseline`.
fn table_row(r: &SensitivityRow, baseline: Option<f64>) -> Vec<String> {
    vec![
        r.layer.clone(),
        r.bits.to_string(),
        pct(r.quant_accuracy),
        match (r.quant_accuracy, baseline) {
            (Some(a), Some(b)) => format!("{:+.2}", (a - b) * 100.0),
            _ => "-".into(),
        },
        pct(r.agreement),
        db(r.output_sqnr_db),
    ]
}
