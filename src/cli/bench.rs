//! `qscope bench`: engine throughput on one batch of the evaluation set.

use super::args::BenchArgs;
use super::out::{errln, outln};
use super::setup::setup;
use anyhow::{Context, Result, bail};
use qscope::pipeline::bench::{bench, median};
use qscope::pipeline::{Cancel, make_batch, run};

/// Runs `qscope bench`.
pub fn main(args: &BenchArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch: 0 samples is nothing to time");
    }
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    if threads == 0 {
        bail!("--threads: 0 threads cannot run anything");
    }
    let s = setup(&args.common)?;
    let batch = args.batch.min(s.eval.n);
    if batch < args.batch {
        errln!(
            "qscope: note: the evaluation set has {} samples; timing batches of {batch}",
            s.eval.n
        );
    }
    let (params, smoothed) = match s.params {
        Some(p) => (p, None),
        None => {
            let o = run(
                &s.model,
                &s.calib,
                &s.eval.take(1),
                &s.config,
                &Cancel::new(),
            )?;
            (o.params, o.smoothed)
        }
    };
    // A SmoothQuant run's parameters refer to its smoothed copy of the model.
    let s = super::setup::Setup {
        model: smoothed.unwrap_or(s.model),
        params: None,
        ..s
    };
    let inputs = make_batch(&s.model, &s.eval, 0, batch)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting the engine threads")?;
    let t = pool.install(|| bench(&s.model, &params, inputs, args.runs))?;
    let (f, i) = (median(&t.float_ms), median(&t.int_ms));
    let kernel = qscope::engine::kernels::kernel_name();
    if args.json {
        let j = serde_json::json!({
            "model": s.model.name,
            "batch": batch,
            "threads": threads,
            "runs": args.runs.max(1),
            "kernel": kernel,
            "macs_per_sample": t.macs_per_sample,
            "float_ms": f,
            "int_ms": i,
            "float_samples_per_s": t.samples_per_s(f),
            "int_samples_per_s": t.samples_per_s(i),
            "float_gmacs": t.gmacs(f),
            "int_gmacs": t.gmacs(i),
        });
        outln!("{}", serde_json::to_string_pretty(&j)?)?;
    } else {
        outln!(
            "{} · batch {batch} · {threads} threads · kernel {kernel} · {:.2} MMAC/sample · median of {}",
            s.model.name,
            t.macs_per_sample / 1e6,
            args.runs.max(1)
        )?;
        outln!(
            "float  {f:9.2} ms/batch  {:10.0} samples/s  {:7.2} GMAC/s",
            t.samples_per_s(f),
            t.gmacs(f)
        )?;
        outln!(
            "int    {i:9.2} ms/batch  {:10.0} samples/s  {:7.2} GMAC/s  ({:.2}x float)",
            t.samples_per_s(i),
            t.gmacs(i),
            f / i
        )?;
    }
    Ok(())
}
