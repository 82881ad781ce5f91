//! `qscope plot`: a layer's weight and activation histograms with the clipping ranges marked.

use super::args::PlotArgs;
use super::out::outln;
use super::progress::spinner;
use super::setup::setup;
use anyhow::{Result, bail};
use qscope::config::INPUT_POINT;
use qscope::export::atomic::{check_writable_dir, check_writable_file, write_files_atomic};
use qscope::export::plot::{check_plot_path, layer_plot, plot_bytes, write_plot};
use qscope::params::WeightQuant;
use qscope::pipeline::{Cancel, calibrate, choose_ranges, quantize_weights};

/// Runs `qscope plot`.
pub fn main(args: &PlotArgs) -> Result<()> {
    if args.all {
        check_writable_dir(&args.out)?;
    } else {
        check_plot_path(&args.out)?;
        check_writable_file(&args.out)?;
    }
    let s = setup(&args.common)?;
    let names: Vec<String> = std::iter::once(INPUT_POINT.to_string())
        .chain(
            s.model
                .weight_layers()
                .iter()
                .map(|&i| s.model.layers[i].name.clone()),
        )
        .collect();
    if let Some(l) = &args.layer
        && !names.contains(l)
    {
        bail!(
            "--layer: model '{}' has no weight layer '{l}' (it has: {})",
            s.model.name,
            names.join(", ")
        );
    }
    let cancel = Cancel::new();
    let pb = spinner("calibrating");
    let (params, calibration) = match s.params {
        Some(p) => {
            let weights: Vec<Option<WeightQuant>> =
                p.layers.iter().map(|l| l.weight.clone()).collect();
            let c = calibrate(&s.model, &s.config, &weights, &s.calib, &cancel)?;
            (p, c)
        }
        None if s.config.cle || s.config.smoothquant.is_some() => bail!(
            "plot: --cle and --smoothquant change the float model the histograms are drawn against; plot without them"
        ),
        None if s.config.changes_weights() => {
            // GPTQ, AdaRound, bias correction: the run's own weights, biases and ranges.
            let o = qscope::pipeline::run(&s.model, &s.calib, &s.eval, &s.config, &cancel)?;
            let c = o
                .calibration
                .expect("a calibrated run keeps its histograms");
            (o.params, c)
        }
        None => {
            let weights = quantize_weights(&s.model, &s.config);
            let c = calibrate(&s.model, &s.config, &weights, &s.calib, &cancel)?;
            (choose_ranges(&s.model, &s.config, &weights, &c), c)
        }
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let draw =
        |name: &str| layer_plot(&s.model, &params, &calibration, name, s.has_float, args.log);
    if let Some(l) = &args.layer {
        write_plot(&args.out, &draw(l)?)?;
        outln!("wrote {}", args.out.display())?;
        return Ok(());
    }
    // --all: every picture or none (they are written into a temporary folder and moved).
    let files: Vec<String> = names
        .iter()
        .map(|n| format!("{}.{}", n.replace(['/', '\\'], "_"), args.format))
        .collect();
    let written = write_files_atomic(&args.out, &files, |i, w| {
        let bytes = plot_bytes(&args.out.join(&files[i]), &draw(&names[i])?)?;
        w.write_all(&bytes).map_err(|source| qscope::Error::Io {
            path: args.out.join(&files[i]),
            source,
        })
    })?;
    for path in written {
        outln!("wrote {}", path.display())?;
    }
    Ok(())
}
