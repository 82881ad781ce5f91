//! `qscope eval`: the whole flow, as a table or the JSON report of formats.md §4.

use super::args::EvalArgs;
use super::out::{errln, out, outln};
use super::progress::{spinner, with_spinner};
use super::setup::{Setup, setup};
use super::table::{db, pct, render};
use anyhow::Result;
use qscope::Report;
use qscope::eval::report::LayerReport;
use qscope::export::{atomic::check_writable_dir, dump::dump_activations};
use qscope::pipeline::{Cancel, Outcome, evaluate_params, run};
use std::path::Path;

/// Runs `qscope eval`.
pub fn main(args: &EvalArgs) -> Result<()> {
    check_output_targets(args)?;
    let mut s = setup(&args.common)?;
    s.config.save_outputs = args.save_outputs.is_some();
    let loaded = s.params.is_some();
    let (outcome, cancel) = evaluate(&mut s)?;
    print_report(args, &s, loaded, &outcome.report)?;
    if let (Some(path), Some(saved)) = (&args.save_outputs, &outcome.saved) {
        qscope::export::outputs::save_outputs(path, &s.model, saved, s.eval.n)?;
        errln!("qscope: wrote {} (tensors float, quant)", path.display());
    }
    if let Some(dir) = &args.dump_activations {
        dump_activation_files(dir, &s, &outcome, &cancel)?;
    }
    Ok(())
}

/// Fails early when a folder that `--dump-activations` or `--save-outputs` would write to is
/// not writable.
fn check_output_targets(args: &EvalArgs) -> Result<()> {
    if let Some(dir) = &args.dump_activations {
        check_writable_dir(dir)?;
    }
    if let Some(f) = &args.save_outputs {
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
        check_writable_dir(dir.unwrap_or(std::path::Path::new(".")))?;
    }
    Ok(())
}

/// Evaluates `s`'s loaded parameters (taking them out of `s`), or calibrates and evaluates,
/// under a spinner; also returns the cancel token for later work.
fn evaluate(s: &mut Setup) -> Result<(Outcome, Cancel)> {
    let params = s.params.take();
    let pb = spinner(if params.is_some() {
        "evaluating"
    } else {
        "calibrating and evaluating"
    });
    let cancel = with_spinner(Cancel::new(), pb.as_ref());
    let outcome = match params {
        Some(params) => {
            evaluate_params(&s.model, params, &s.eval, &s.config, s.has_float, &cancel)?
        }
        None => run(&s.model, &s.calib, &s.eval, &s.config, &cancel)?,
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok((outcome, cancel))
}

/// Prints the report on stdout: as JSON, or as the human summary (after a note on where
/// `loaded` parameters came from).
fn print_report(args: &EvalArgs, s: &Setup, loaded: bool, report: &Report) -> Result<()> {
    if args.json {
        outln!("{}", serde_json::to_string_pretty(report)?)?;
        return Ok(());
    }
    if loaded {
        outln!(
            "parameters: {} (not calibrated){}",
            s.params_origin.as_deref().unwrap_or("loaded"),
            if s.has_float {
                ""
            } else {
                "  ·  no float weights: float-side figures are null"
            }
        )?;
    }
    out!("{}", human(report))?;
    Ok(())
}

/// Writes the calibration set's integer activations into `dir`, reporting each file and the
/// points left out on stderr.
fn dump_activation_files(dir: &Path, s: &Setup, outcome: &Outcome, cancel: &Cancel) -> Result<()> {
    let (written, skipped) = dump_activations(
        dir,
        outcome.model_or(&s.model),
        &outcome.params,
        &s.calib,
        cancel,
    )?;
    for d in &written {
        errln!(
            "qscope: wrote {}: I8 {:?}, scale {:e}, zero point {} ({} bits {})",
            d.path.display(),
            d.shape,
            d.qparams.scale,
            d.qparams.zero_point,
            d.qparams.bits,
            d.qparams.scheme
        );
    }
    if !skipped.is_empty() {
        errln!(
            "qscope: note: not dumped (output stays float): {}",
            skipped.join(", ")
        );
    }
    Ok(())
}

/// The report as a human-readable summary and per-layer table.
pub fn human(r: &Report) -> String {
    let mut out = config_header(r);
    out += &accuracy_line(r);
    out += &layer_table(r);
    out += &legend_and_timings(r);
    out += &methods_lines(r);
    out
}

/// The model, sample counts and kernel line, then the quantization config line.
fn config_header(r: &Report) -> String {
    let c = &r.config;
    format!(
        "model {}  ·  calib {}  ·  eval {}  ·  kernel {}\nconfig: W{} {} {} {}  ·  A{} {} {}{}\n\n",
        r.model,
        r.calib_samples,
        r.eval_samples,
        r.kernel,
        c.weight_bits,
        c.weight_scheme,
        c.granularity,
        c.weight_strategy,
        c.act_bits,
        c.act_scheme,
        c.act_strategy,
        if c.keep_float.is_empty() {
            String::new()
        } else {
            format!("  ·  float: {}", c.keep_float.join(","))
        },
    )
}

/// Float and integer top-1 (with their difference when both are known), agreement and SQNR.
fn accuracy_line(r: &Report) -> String {
    let delta = match (r.fp32_accuracy, r.quant_accuracy) {
        (Some(f), Some(q)) => format!(" ({:+.2} points)", (q - f) * 100.0),
        _ => String::new(),
    };
    format!(
        "float top-1 {}   int top-1 {}{}   agreement {}   output SQNR {} dB\n\n",
        pct(r.fp32_accuracy),
        pct(r.quant_accuracy),
        delta,
        pct(r.agreement),
        db(r.output_sqnr_db)
    )
}

/// The per-layer table: the input and other quantization points first, then the layers.
fn layer_table(r: &Report) -> String {
    let mut rows = Vec::new();
    if let Some(i) = &r.input {
        rows.push(point_row("input", i.act_bits, &i.act_strategy, i.act_range));
    }
    for p in &r.points {
        rows.push(point_row(&p.name, p.act_bits, &p.act_strategy, p.act_range));
    }
    rows.extend(r.layers.iter().map(layer_row));
    render(
        &[
            "layer",
            "op",
            "W bits",
            "A bits",
            "W strategy",
            "A strategy",
            "W SQNR",
            "A SQNR",
            "A SQNR iso",
            "act range",
        ],
        &rows,
    )
}

/// A table row for a quantization point that is not a layer: only its activation columns.
fn point_row(name: &str, bits: u8, strategy: &str, range: [f32; 2]) -> Vec<String> {
    vec![
        name.into(),
        "-".into(),
        "-".into(),
        bits.to_string(),
        "-".into(),
        strategy.into(),
        "-".into(),
        "-".into(),
        "-".into(),
        format!("[{:.3}, {:.3}]", range[0], range[1]),
    ]
}

/// A table row for a layer.
fn layer_row(l: &LayerReport) -> Vec<String> {
    vec![
        l.name.clone(),
        l.op.clone(),
        weight_bits_cell(l),
        bits_or_float(l.act_bits),
        l.weight_strategy.clone().unwrap_or("-".into()),
        l.act_strategy.clone().unwrap_or("-".into()),
        db(l.weight_sqnr_db),
        db(l.act_sqnr_db),
        db(l.act_sqnr_isolated_db),
        l.act_range
            .map_or("-".into(), |[a, b]| format!("[{a:.3}, {b:.3}]")),
    ]
}

/// A layer's "W bits" cell.
fn weight_bits_cell(l: &LayerReport) -> String {
    match l.channel_bits_mean {
        // A weightless integer node (Add, pool, lookup table) has no weights, not float ones.
        _ if l.weight_bits.is_none() && !l.float => "-".into(),
        // Bits per channel: their mean, and the widest.
        Some(m) => format!("{m:.2}≤{}", bits_or_float(l.weight_bits)),
        None => bits_or_float(l.weight_bits),
    }
}

/// A bit width, or "float" for none.
fn bits_or_float(v: Option<u8>) -> String {
    v.map_or("float".into(), |b| b.to_string())
}

/// The SQNR legend and the weights / calibration / eval timings line.
fn legend_and_timings(r: &Report) -> String {
    let t = r.timings_ms;
    format!(
        "\nSQNR in dB; 'A SQNR' accumulates error from earlier layers, 'iso' is the layer alone.\ntimings: weights {:.1} ms · calibration {:.1} ms · eval {:.1} ms\n",
        t.weights, t.calibration, t.eval
    )
}

/// The accuracy methods that ran, with their times and the CLE spreads (empty when none ran).
fn methods_lines(r: &Report) -> String {
    let (m, t) = (&r.methods, r.timings_ms);
    let mut used = Vec::new();
    if m.cle {
        used.push(format!("cle {:.1} ms", t.cle));
    }
    if m.weight_rounding == "gptq" {
        let order = if m.gptq_act_order { " (act-order)" } else { "" };
        used.push(format!("gptq{order} {:.1} ms", t.gptq));
    }
    if m.weight_rounding == "adaround" {
        used.push(format!("adaround {:.1} ms", t.adaround));
    }
    if m.bias_correction {
        used.push(format!("bias correction {:.1} ms", t.bias_correction));
    }
    if m.act_refine {
        used.push(format!("act refine {:.1} ms", t.act_refine));
    }
    if used.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "methods: {}
",
        used.join(" · ")
    );
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
    for p in &r.cle_pairs {
        out += &format!(
            "  cle {} → {}: range spread out {} → {}, in {} → {}\n",
            p.first,
            p.second,
            f(p.out_spread_before),
            f(p.out_spread_after),
            f(p.in_spread_before),
            f(p.in_spread_after)
        );
    }
    out
}
