//! `qscope mixed`: mixed precision under a budget — the greedy front as a table, the chosen
//! point as a `--config` TOML file and an SVG of accuracy against size.

use super::args::{Common, MixedArgs};
use super::out::{errln, out, outln};
use super::progress::bar;
use super::setup::setup;
use super::table::{db, pct, render};
use anyhow::{Result, bail};
use qscope::QuantConfig;
use qscope::config::ConfigFile;
use qscope::export::atomic::{check_writable_file, write_bytes_atomic};
use qscope::export::mixed_plot::mixed_svg;
use qscope::pipeline::mixed::{
    Budget, FrontPoint, MixedOptions, MixedSearch, Unit, check_budget, choose_for_budget,
    config_with_point, search,
};
use qscope::pipeline::{Cancel, Session};
use std::path::Path;

/// Refuses an output path without the expected extension or in a folder that cannot be written.
fn check_out(path: &Path, ext: &str, flag: &str) -> Result<()> {
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
    {
        bail!("{flag} {}: give a .{ext} file", path.display());
    }
    check_writable_file(path)?;
    Ok(())
}

fn budget(args: &MixedArgs) -> Budget {
    match (args.budget_bits, args.budget_bytes, args.max_drop) {
        (Some(b), _, _) => Budget::Bits(b),
        (_, Some(n), _) => Budget::Bytes(n),
        (_, _, Some(p)) => Budget::MaxDrop(p),
        // clap requires exactly one of the three.
        _ => Budget::MaxDrop(f64::INFINITY),
    }
}

/// Runs `qscope mixed`.
pub fn main(args: &MixedArgs) -> Result<()> {
    if let Some(p) = &args.out {
        check_out(p, "toml", "--out")?;
    }
    if let Some(p) = &args.plot {
        check_out(p, "svg", "--plot")?;
    }
    let s = setup(&args.common)?;
    if s.params.is_some() {
        bail!(
            "mixed: the search calibrates every configuration, so it needs a float model and no --params"
        );
    }
    let config = s.config.clone();
    check_budget(&s.model, &config, &args.candidates, budget(args))?;
    let mut session = Session::new(s.model, s.calib, s.eval);
    let opts = MixedOptions {
        candidates: args.candidates.clone(),
        evaluate: true,
        unit: args.unit,
    };
    let pb = bar(0, "mixed precision");
    let t = std::time::Instant::now();
    let result = search(&mut session, &config, &opts, &Cancel::new(), |d, n| {
        if let Some(pb) = &pb {
            pb.set_length(n as u64);
            pb.set_position(d as u64);
        }
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let mut result = result;
    let chosen = choose_for_budget(
        &mut session,
        &config,
        &mut result,
        budget(args),
        &Cancel::new(),
    )?;
    let secs = t.elapsed().as_secs_f64();
    if args.json {
        let json = serde_json::json!({
            "model": result.model,
            "candidates": result.candidates,
            "unit": result.unit,
            "layers": result.layers,
            "float_params": result.float_params,
            "fp32_accuracy": result.fp32_accuracy,
            "sensitivity": result.sensitivity,
            "front": result.front,
            "uniform": result.uniform,
            "chosen": chosen,
            "chosen_point": result.front[chosen],
            "seconds": secs,
        });
        outln!("{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        out!("{}", human(&result, chosen, secs))?;
    }
    if let Some(p) = &args.out {
        let c = config_with_point(&config, &result.layers, &result.front[chosen]);
        let text = config_toml(&args.common, &c, &result, &result.front[chosen])?;
        write_bytes_atomic(p, text.as_bytes())?;
        errln!("qscope: wrote {}", p.display());
    }
    if let Some(p) = &args.plot {
        write_bytes_atomic(p, mixed_svg(&result, chosen)?.as_bytes())?;
        errln!("qscope: wrote {}", p.display());
    }
    Ok(())
}

/// The chosen configuration as a `--config` file: the model and data options as given, every
/// global setting, and `[layers.NAME] weight_bits` (or `channel_bits`) and `act_bits` per
/// searched layer.
fn config_toml(
    c: &Common,
    config: &QuantConfig,
    result: &MixedSearch,
    chosen: &FrontPoint,
) -> Result<String> {
    let file = match &c.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let mut layers = config.layers.clone();
    for l in &result.layers {
        layers.entry(l.name.clone()).or_default().act_bits =
            Some(config.act_settings(&l.name).bits);
    }
    let out = ConfigFile {
        model: c.model.clone().or(file.model).or(Some("mnist-mlp".into())),
        spec: c.spec.clone().or(file.spec),
        calib: c.calib.clone().or(file.calib),
        eval: c.eval_set.clone().or(file.eval),
        calib_samples: c.calib_samples.or(file.calib_samples),
        weight_bits: Some(config.weight_bits),
        act_bits: Some(config.act_bits),
        weight_strategy: Some(config.weight_strategy),
        act_strategy: Some(config.act_strategy),
        percentile: Some(config.percentile),
        granularity: Some(config.granularity),
        weight_scheme: Some(config.weight_scheme),
        act_scheme: Some(config.act_scheme),
        keep_float: (!config.keep_float.is_empty()).then(|| config.keep_float.clone()),
        bias_correction: Some(config.bias_correction),
        act_refine: Some(config.act_refine),
        cle: Some(config.cle),
        weight_rounding: Some(config.weight_rounding),
        gptq_act_order: Some(config.gptq_act_order),
        smoothquant: config.smoothquant,
        layers,
    };
    let body = toml::to_string(&out)?;
    Ok(format!(
        "# qscope mixed: model {}, {:.3} average weight bits, {} bytes, int top-1 {}\n{body}",
        result.model,
        chosen.avg_bits,
        chosen.size_bytes,
        pct(chosen.quant_accuracy)
    ))
}

/// One table row of a point.
fn row(tag: &str, p: &FrontPoint) -> Vec<String> {
    let mut r = vec![
        tag.to_string(),
        p.size_bytes.to_string(),
        format!("{:.3}", p.avg_bits),
        pct(p.quant_accuracy),
        pct(p.agreement),
        db(p.output_sqnr_db),
        db(Some(p.predicted_sqnr_db)),
    ];
    r.extend(p.layer_bits_text());
    r
}

/// The front and the uniform configurations as a table, the chosen point marked.
fn human(r: &MixedSearch, chosen: usize, secs: f64) -> String {
    let mut header = vec![
        "point",
        "size bytes",
        "avg W bits",
        "int top-1",
        "agreement",
        "SQNR dB",
        "pred. SQNR",
    ];
    header.extend(r.layers.iter().map(|l| l.name.as_str()));
    let mut rows: Vec<Vec<String>> = r
        .front
        .iter()
        .enumerate()
        .map(|(i, p)| row(&format!("{}{i}", if i == chosen { "*" } else { " " }), p))
        .collect();
    rows.extend(r.uniform.iter().map(|p| row("uniform", p)));
    let c = &r.front[chosen];
    let bits: Vec<String> = r
        .layers
        .iter()
        .zip(c.layer_bits_text())
        .map(|(l, b)| format!("{}={b}", l.name))
        .collect();
    let unit = match r.unit {
        Unit::Layer => "bits per layer",
        Unit::Channel => "bits per output channel (layer columns: their mean)",
    };
    format!(
        "model {}  ·  float top-1 {}  ·  candidates {:?}  ·  {unit}  ·  {:.1} s\n\n{}\nchosen: point {chosen} ({}): {:.3} average bits, {} bytes, int top-1 {}\n",
        r.model,
        pct(r.fp32_accuracy),
        r.candidates,
        secs,
        render(&header, &rows),
        bits.join(" "),
        c.avg_bits,
        c.size_bytes,
        pct(c.quant_accuracy)
    )
}
