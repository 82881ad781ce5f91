//! One batch on several threads: the batch is cut along its first axis into one contiguous part
//! per thread, each part runs alone, and the outputs are joined in order. Samples are independent
//! in every graph qscope runs (the pipeline already evaluates batches of 64 on their own), so
//! the joined outputs equal one run on the whole batch value for value.

use super::tensor::{Data, Tensor};
use crate::error::Result;

/// Rows `s..e` of the first axis of `t`.
pub fn rows(t: &Tensor, s: usize, e: usize) -> Tensor {
    let row: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = e - s;
    let (a, b) = (s * row, e * row);
    match &t.data {
        Data::F32(v) => Tensor::f32(shape, v[a..b].to_vec()),
        Data::I64(v) => Tensor::i64(shape, v[a..b].to_vec()),
        Data::Q { data, qp } => Tensor::q(shape, data[a..b].to_vec(), *qp),
    }
}

/// The parts joined along the first axis; `None` when they differ in anything but that axis's
/// length (shape, element type or qparams).
pub fn join_rows(parts: Vec<Tensor>) -> Option<Tensor> {
    let first = parts.first()?;
    let tail = first.shape.get(1..)?.to_vec();
    let mut n = 0;
    for p in &parts {
        if p.shape.get(1..)? != tail.as_slice()
            || std::mem::discriminant(&p.data) != std::mem::discriminant(&first.data)
        {
            return None;
        }
        n += p.shape[0];
    }
    let mut shape = vec![n];
    shape.extend(tail);
    Some(match &first.data {
        Data::F32(_) => Tensor::f32(shape, collect(parts, |d| d.as_f32())?),
        Data::I64(_) => Tensor::i64(shape, collect(parts, |d| d.as_i64())?),
        Data::Q { qp, .. } => {
            let qp = *qp;
            if parts.iter().any(|p| p.as_q().map(|(_, q)| q) != Some(qp)) {
                return None;
            }
            Tensor::q(shape, collect(parts, |d| d.as_q().map(|(v, _)| v))?, qp)
        }
    })
}

/// The concatenated values of each part as picked by `get`.
fn collect<T: Copy>(parts: Vec<Tensor>, get: impl Fn(&Tensor) -> Option<&[T]>) -> Option<Vec<T>> {
    let mut out = Vec::new();
    for p in &parts {
        out.extend_from_slice(get(p)?);
    }
    Some(out)
}

/// Bytes a part's largest activation (one layer's output, in f32) may take: a part runs layer
/// by layer, so its activations should stay in cache. This is 16 samples of MobileNetV2's 64 ×
/// 28 × 28 layers: at batch 256 on 2 threads of the AVX2 machine, parts of 16 samples ran its
/// float engine in 68.7 ms against 86.9 with one part per thread (medians of 6; parts of 8 or
/// 32 were slower). Small activations keep one part per thread: the MLP's float engine was 1.7
/// times slower in parts of 16 (each part streams all the weights).
pub const PART_BYTES: usize = 16 * 64 * 28 * 28 * 4;

/// How many parts [`forward_split`] should cut a batch of `n` samples into for `threads`
/// threads, when a sample's largest activation holds `sample_elems` values: at least one per
/// thread, and enough that a part's largest activation fits in [`PART_BYTES`].
pub fn parts_for(n: usize, threads: usize, sample_elems: usize) -> usize {
    let per_part = (PART_BYTES / (4 * sample_elems).max(1)).max(1);
    threads.max(n.div_ceil(per_part)).min(n.max(1))
}

/// Runs `run` on `inputs` cut into `parts` contiguous parts of the batch (see [`parts_for`]),
/// in parallel on the current rayon pool, and joins the outputs. Each part copies only its own rows (in its own
/// thread); the whole batch is copied once when it runs at once: when the inputs do not share
/// a first axis, or when an output is not batch-major (a part's outputs do not have the part's
/// length first).
pub fn forward_split<F>(inputs: &[Tensor], parts: usize, run: F) -> Result<Vec<Tensor>>
where
    F: Fn(Vec<Tensor>) -> Result<Vec<Tensor>> + Sync,
{
    use rayon::prelude::*;
    let n = match inputs.first().and_then(|t| t.shape.first()) {
        Some(&n) if inputs.iter().all(|t| t.shape.first() == Some(&n)) => n,
        _ => return run(inputs.to_vec()),
    };
    let parts = parts.min(n);
    if parts <= 1 {
        return run(inputs.to_vec());
    }
    let bounds: Vec<(usize, usize)> = (0..parts)
        .map(|p| (p * n / parts, (p + 1) * n / parts))
        .collect();
    let outs = bounds
        .par_iter()
        .map(|&(s, e)| run(inputs.iter().map(|t| rows(t, s, e)).collect()))
        .collect::<Result<Vec<_>>>()?;
    let batch_major = outs.iter().zip(&bounds).all(|(o, &(s, e))| {
        o.iter()
            .all(|t| t.shape.first() == Some(&(e - s)) && !t.shape.is_empty())
    });
    if !batch_major {
        return run(inputs.to_vec());
    }
    let count = outs[0].len();
    let mut per_output: Vec<Vec<Tensor>> = (0..count).map(|_| Vec::new()).collect();
    for o in outs {
        for (k, t) in o.into_iter().enumerate() {
            per_output[k].push(t);
        }
    }
    match per_output
        .into_iter()
        .map(join_rows)
        .collect::<Option<Vec<_>>>()
    {
        Some(joined) => Ok(joined),
        None => run(inputs.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::parts_for;

    #[test]
    fn parts_are_one_per_thread_unless_a_part_outgrows_the_cache_budget() {
        // The MLP's widest layer (784 values): one part per thread.
        assert_eq!(parts_for(256, 2, 784), 2);
        // MobileNetV2's 64 × 28 × 28 layers: parts of 16 samples.
        assert_eq!(parts_for(256, 2, 64 * 28 * 28), 16);
        // The ResNet's 16 × 28 × 28 layers: parts of 64.
        assert_eq!(parts_for(256, 2, 16 * 28 * 28), 4);
        // Never more parts than samples, at least one; unknown shapes: one per thread.
        assert_eq!(parts_for(3, 8, 10), 3);
        assert_eq!(parts_for(0, 2, 10), 1);
        assert_eq!(parts_for(256, 2, 0), 2);
        // A sample larger than the budget: one sample per part.
        assert_eq!(parts_for(5, 2, 1 << 30), 5);
    }
}
