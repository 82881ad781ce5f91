//! `qscope eval`: the whole flow, as a table or the JSON report of formats.md §4.

use super::args::EvalArgs;
use super::out::{errln, out, outln};
use super::progress::{spinner, with_spinner};
use super::setup::setup;
use super::table::{db, pct, render};
use anyhow::Result;
use qscope::Report;
use qscope::export::{atomic::check_writable_dir, dump::dump_activations};
use qscope::pipeline::{Cancel, evaluate_params, run};

/// Runs `qscope eval`.
pub fn main(args: &EvalArgs) -> Result<()> {
    if let Some(dir) = &args.dump_activations {
        check_writable_dir(dir)?;
    }
    if let Some(f) = &args.save_outputs {
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
        check_writable_dir(dir.unwrap_or(std::path::Path::new(".")))?;
    }
    let mut s = setup(&args.common)?;
    s.config.save_outputs = args.save_outputs.is_some();
    let loaded = s.params.is_some();
    let pb = spinner(if loaded {
        "evaluating"
    } else {
        "calibrating and evaluating"
    });
    let cancel = with_spinner(Cancel::new(), pb.as_ref());
    let outcome = match s.params {
        Some(params) => {
            evaluate_params(&s.model, params, &s.eval, &s.config, s.has_float, &cancel)?
        }
        None => run(&s.model, &s.calib, &s.eval, &s.config, &cancel)?,
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&outcome.report)?)?;
    } else {
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
        out!("{}", human(&outcome.report))?;
    }
    if let (Some(path), Some(saved)) = (&args.save_outputs, &outcome.saved) {
        qscope::export::outputs::save_outputs(path, &s.model, saved, s.eval.n)?;
        errln!("qscope: wrote {} (tensors float, quant)", path.display());
    }
    if let Some(dir) = &args.dump_activations {
        let (written, skipped) = dump_activations(
            dir,
            outcome.model_or(&s.model),
            &outcome.params,
            &s.calib,
            &cancel,
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
    }
    Ok(())
}

/// The report as a human-readable summary and per-layer table.
pub fn human(r: &Report) -> String {
    let c = &r.config;
    let mut out = format!(
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
    );
    let delta = match (r.fp32_accuracy, r.quant_accuracy) {
        (Some(f), Some(q)) => format!(" ({:+.2} points)", (q - f) * 100.0),
        _ => String::new(),
    };
    out += &format!(
        "float top-1 {}   int top-1 {}{}   agreement {}   output SQNR {} dB\n\n",
        pct(r.fp32_accuracy),
        pct(r.quant_accuracy),
        delta,
        pct(r.agreement),
        db(r.output_sqnr_db)
    );
    let opt = |v: Option<u8>| v.map_or("float".into(), |b| b.to_string());
    let point_row = |name: &str, bits: u8, strategy: &str, range: [f32; 2]| -> Vec<String> {
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
    };
    let mut rows = Vec::new();
    if let Some(i) = &r.input {
        rows.push(point_row("input", i.act_bits, &i.act_strategy, i.act_range));
    }
    for p in &r.points {
        rows.push(point_row(&p.name, p.act_bits, &p.act_strategy, p.act_range));
    }
    for l in &r.layers {
        // A weightless integer node (Add, pool, lookup table) has no weights, not float ones.
        let wbits = match l.channel_bits_mean {
            _ if l.weight_bits.is_none() && !l.float => "-".into(),
            // Bits per channel: their mean, and the widest.
            Some(m) => format!("{m:.2}≤{}", opt(l.weight_bits)),
            None => opt(l.weight_bits),
        };
        rows.push(vec![
            l.name.clone(),
            l.op.clone(),
            wbits,
            opt(l.act_bits),
            l.weight_strategy.clone().unwrap_or("-".into()),
            l.act_strategy.clone().unwrap_or("-".into()),
            db(l.weight_sqnr_db),
            db(l.act_sqnr_db),
            db(l.act_sqnr_isolated_db),
            l.act_range
                .map_or("-".into(), |[a, b]| format!("[{a:.3}, {b:.3}]")),
        ]);
    }
    out += &render(
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
    );
    let t = r.timings_ms;
    out += &format!(
        "\nSQNR in dB; 'A SQNR' accumulates error from earlier layers, 'iso' is the layer alone.\ntimings: weights {:.1} ms · calibration {:.1} ms · eval {:.1} ms\n",
        t.weights, t.calibration, t.eval
    );
    out += &methods_lines(r);
    out
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
