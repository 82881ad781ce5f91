//! `qscope sensitivity`: per weight layer, accuracy with that layer alone at each bit width.

use super::args::SensitivityArgs;
use super::out::{errln, out, outln};
use super::progress::bar;
use super::setup::setup;
use super::table::{db, pct, render};
use anyhow::Result;
use qscope::eval::sensitivity::{sensitivity, sensitivity_params};
use qscope::pipeline::{Cancel, Session};

/// Runs `qscope sensitivity`.
pub fn main(args: &SensitivityArgs) -> Result<()> {
    let s = setup(&args.common)?;
    let layers = s.model.weight_layers().len();
    let pb = bar((layers * args.bits.len()) as u64, "sensitivity");
    let progress = |done: usize, _| {
        if let Some(pb) = &pb {
            pb.set_position(done as u64);
        }
    };
    let cancel = Cancel::new();
    let result = match &s.params {
        Some(p) => {
            errln!(
                "qscope: note: parameters are loaded, not calibrated: each row re-quantizes that layer's {} weights with its settings, and its output from its stored range",
                if s.has_float { "float" } else { "dequantized" }
            );
            sensitivity_params(
                &s.model,
                p,
                &s.eval,
                &s.config,
                s.has_float,
                &args.bits,
                args.target,
                &cancel,
                progress,
            )?
        }
        None => {
            let mut session = Session::new(s.model, s.calib, s.eval);
            sensitivity(
                &mut session,
                &s.config,
                &args.bits,
                args.target,
                &cancel,
                progress,
            )?
        }
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?)?;
        return Ok(());
    }
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
        .map(|r| {
            vec![
                r.layer.clone(),
                r.bits.to_string(),
                pct(r.quant_accuracy),
                match (r.quant_accuracy, result.baseline_accuracy) {
                    (Some(a), Some(b)) => format!("{:+.2}", (a - b) * 100.0),
                    _ => "-".into(),
                },
                pct(r.agreement),
                db(r.output_sqnr_db),
            ]
        })
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
