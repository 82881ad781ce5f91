//! `qscope plot`: a layer's weight and activation histograms with the clipping ranges marked.

use super::out::{outln};
use super::args::PlotArgs;
use super::progress::spinner;
use super::setup::setup;
use anyhow::{Result, bail};
use qscope::config::INPUT_POINT;
use qscope::export::atomic::{check_writable_dir, check_writable_file};
use qscope::export::plot::{check_plot_path, layer_plot, write_plot};
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
            let c = calibrate(&s.model, &weights, &s.calib, &cancel)?;
            (p, c)
        }
        None => {
            let weights = quantize_weights(&s.model, &s.config);
            let c = calibrate(&s.model, &weights, &s.calib, &cancel)?;
            (choose_ranges(&s.model, &s.config, &weights, &c), c)
        }
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let targets: Vec<(String, std::path::PathBuf)> = match &args.layer {
        Some(l) => vec![(l.clone(), args.out.clone())],
        None => names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    args.out
                        .join(format!("{}.{}", n.replace(['/', '\\'], "_"), args.format)),
                )
            })
            .collect(),
    };
    for (name, path) in targets {
        let plot = layer_plot(
            &s.model,
            &params,
            &calibration,
            &name,
            s.has_float,
            args.log,
        )?;
        write_plot(&path, &plot)?;
        outln!("wrote {}", path.display())?;
    }
    Ok(())
}
