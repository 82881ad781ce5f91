//! `qscope bench`: the float and the integer engine's throughput on one batch, measured as a
//! user measures a runtime (three warm-up runs, then the median of several), with the multiply-adds
//! one sample costs so that rates compare across models.

use crate::engine::float;
use crate::engine::int::IntModel;
use crate::engine::split::forward_split;
use crate::engine::tensor::Tensor;
use crate::error::Result;
use crate::model::Model;
use crate::params::ModelParams;
use std::collections::HashMap;
use std::time::Instant;

/// Times of each engine on one batch.
#[derive(Debug, Clone)]
pub struct BenchTimes {
    /// Samples in the batch.
    pub batch: usize,
    /// Multiply-adds of one sample (weight layers and activation × activation MatMuls).
    pub macs_per_sample: f64,
    /// Float engine, ms per batch, one entry per timed run.
    pub float_ms: Vec<f64>,
    /// Integer engine, ms per batch, one entry per timed run.
    pub int_ms: Vec<f64>,
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

impl BenchTimes {
    /// Samples per second of a median time in ms.
    pub fn samples_per_s(&self, ms: f64) -> f64 {
        self.batch as f64 / (ms / 1e3)
    }

    /// Billions of multiply-adds per second of a median time in ms.
    pub fn gmacs(&self, ms: f64) -> f64 {
        self.macs_per_sample * self.batch as f64 / (ms / 1e3) / 1e9
    }
}

/// Multiply-adds of one sample of `inputs` (a batch): a float run with every node counted.
pub fn macs_per_sample(model: &Model, inputs: Vec<Tensor>) -> Result<f64> {
    let n = inputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(1)
        .max(1);
    let mut shapes: HashMap<usize, Vec<usize>> = model
        .inputs
        .iter()
        .zip(&inputs)
        .map(|(g, t)| (g.value, t.shape.clone()))
        .collect();
    for (v, t) in &model.consts {
        shapes.insert(*v, t.shape.clone());
    }
    let mut total = 0.0;
    float::forward(model, inputs, float::DEFAULT_MAX_SAMPLE_ELEMS, |i, t| {
        let l = &model.layers[i];
        let first = l
            .data_input()
            .and_then(|v| shapes.get(&v))
            .cloned()
            .unwrap_or_default();
        total += super::evaluate::node_macs(model, i, &first, t);
        shapes.insert(l.output, t.shape.clone());
    })?;
    Ok(total / n as f64)
}

/// Untimed runs before the timed ones (as the ORT reference script does): the first runs
/// fault in pages and wake the thread pool.
const WARM_UP_RUNS: usize = 3;

/// The least time spent warming up each engine. A new pool's threads can share one core for
/// tens of milliseconds before the scheduler moves one away (seen on a 2-core VM: the MLP at
/// 2 threads ran at 1-thread speed for its first ~30 ms), so a few runs are not enough.
const WARM_UP_TIME: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs each engine at least `WARM_UP_RUNS` times and for `WARM_UP_TIME` to warm up, then
/// `runs` times, on `inputs` split over the threads of the current rayon pool.
pub fn bench(
    model: &Model,
    params: &ModelParams,
    inputs: Vec<Tensor>,
    runs: usize,
) -> Result<BenchTimes> {
    let batch = inputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(0);
    let macs_per_sample = macs_per_sample(model, inputs.clone())?;
    let limit = float::DEFAULT_MAX_SAMPLE_ELEMS;
    let int = IntModel::new(model, params, limit);
    let time = |f: &dyn Fn() -> Result<()>| -> Result<Vec<f64>> {
        let start = Instant::now();
        let mut warm = 0;
        while warm < WARM_UP_RUNS || start.elapsed() < WARM_UP_TIME {
            f()?;
            warm += 1;
        }
        (0..runs.max(1))
            .map(|_| {
                let t = Instant::now();
                f()?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            })
            .collect()
    };
    // The batch is cut into at least one part per thread of the current pool, of cache size
    // (see `engine::split`).
    let threads = rayon::current_num_threads();
    let parts = crate::engine::split::parts_for(batch, threads, model.largest_sample_elems());
    let float_ms = time(&|| {
        // Outputs only, as a runtime runs a model: activations fused into their convs.
        forward_split(&inputs, parts, |x| float::forward_outputs(model, x, limit)).map(|_| ())
    })?;
    let int_ms = time(&|| forward_split(&inputs, parts, |x| int.forward_outputs(x)).map(|_| ()))?;
    Ok(BenchTimes {
        batch,
        macs_per_sample,
        float_ms,
        int_ms,
    })
}
