//! Batches of a data set as the graph's input tensors.

use super::BATCH;
use crate::engine::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::{DType, Dataset, Model};

/// Batch ranges covering `n` samples.
pub fn batches(n: usize) -> Vec<(usize, usize)> {
    (0..n.div_ceil(BATCH))
        .map(|b| (b * BATCH, ((b + 1) * BATCH).min(n)))
        .collect()
}

/// Runs `map(start, end)` on the batches of `n` samples, a few in parallel at a time, and
/// hands the results to `fold` in batch order, so that sums made from them are the same bit
/// for bit on every run. Stops at the first error.
pub fn fold_batches<T: Send>(
    n: usize,
    map: impl Fn(usize, usize) -> Result<T> + Sync,
    mut fold: impl FnMut(T),
) -> Result<()> {
    fold_batches_while(n, map, |t| {
        fold(t);
        true
    })
    .map(|_| ())
}

/// [`fold_batches`] that stops after the few batches in flight when `fold` returns `false`
/// (the batches after them are never run); returns whether every batch was folded.
pub fn fold_batches_while<T: Send>(
    n: usize,
    map: impl Fn(usize, usize) -> Result<T> + Sync,
    mut fold: impl FnMut(T) -> bool,
) -> Result<bool> {
    use rayon::prelude::*;
    for chunk in batches(n).chunks(2 * rayon::current_num_threads().max(1)) {
        let parts = chunk
            .par_iter()
            .map(|&(s, e)| map(s, e))
            .collect::<Result<Vec<_>>>()?;
        let mut go = true;
        for part in parts {
            go &= fold(part);
        }
        if !go {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Per-batch results kept in batch order while their bytes stay within a budget: once the
/// total passes it, everything kept is freed and nothing more is kept, so what a run holds for
/// the next one stays within the budget (plus the batches in flight).
pub struct Kept<T> {
    budget: usize,
    bytes: usize,
    items: Option<Vec<T>>,
}

impl<T> Kept<T> {
    /// Nothing kept yet, at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Kept {
            budget,
            bytes: 0,
            items: Some(Vec::new()),
        }
    }

    /// Keeps `item` of `bytes` bytes, unless the budget is (or now gets) exceeded.
    pub fn push(&mut self, item: T, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes);
        match &mut self.items {
            Some(_) if self.bytes > self.budget => self.items = None,
            Some(v) => v.push(item),
            None => {}
        }
    }

    /// Every item pushed, in order, or `None` when they came to more than the budget.
    pub fn finish(self) -> Option<Vec<T>> {
        self.items
    }
}

/// Samples `start..end` as one tensor per graph input: a tensor named after the input, or
/// (for the first input) the data set's `inputs`, normalized with the model's mean and std.
pub fn make_batch(model: &Model, data: &Dataset, start: usize, end: usize) -> Result<Vec<Tensor>> {
    let n = end - start;
    model
        .inputs
        .iter()
        .enumerate()
        .map(|(k, gi)| {
            let name = &model.values[gi.value].name;
            if let Some(t) = data.named_rows(name, start, end) {
                return Ok(match (gi.dtype, t.as_f32()) {
                    (DType::F32, None) => Tensor::f32(t.shape.clone(), t.to_f32_vec()),
                    (DType::I64 | DType::Bool, Some(v)) => {
                        Tensor::i64(t.shape.clone(), v.iter().map(|&x| x as i64).collect())
                    }
                    _ => t,
                });
            }
            if k > 0 || data.sample_len == 0 {
                return Err(Error::data(
                    &data.label,
                    format!(
                        "holds no tensor '{}' for the model's graph input of that name",
                        crate::error::clip(name, crate::error::NAME_MAX)
                    ),
                ));
            }
            let mut x = data.samples(start, end).to_vec();
            model.normalize(&mut x);
            let mut shape = vec![n];
            shape.extend(&model.input_shape);
            Ok(Tensor::f32(shape, x))
        })
        .collect()
}

/// Refuses a model whose known one-sample tensors (node outputs, conv patch matrices) exceed
/// `limit` elements, with the figure.
pub fn check_tensor_sizes(model: &Model, limit: usize) -> Result<()> {
    for l in &model.layers {
        let out: usize = l.out_shape.iter().product();
        let patches = match &l.op {
            crate::model::Op::Conv2d { weight, .. } => {
                let (_, ci, kh, kw) = weight.dim();
                out / weight.dim().0.max(1) * ci * kh * kw
            }
            _ => 0,
        };
        if let Err(m) = crate::engine::float::check_size(out.max(patches), limit) {
            return Err(Error::node(&model.source, &l.name, &l.op_type, m));
        }
    }
    Ok(())
}

/// Checks that the data set feeds every graph input (by name, or `inputs` of the right size).
pub fn check_data(model: &Model, data: &Dataset) -> Result<()> {
    if data.n == 0 {
        return Err(Error::data(&data.label, "holds no samples"));
    }
    for (k, gi) in model.inputs.iter().enumerate() {
        let name = &model.values[gi.value].name;
        if let Some((_, t)) = data.named.iter().find(|(n, _)| n == name) {
            let want: Vec<Option<usize>> = gi.shape.clone();
            let got = &t.shape[1..];
            let fits = want.len() == got.len()
                && want.iter().zip(got).all(|(w, g)| w.is_none_or(|w| w == *g));
            if !fits {
                return Err(Error::tensor(
                    &data.label,
                    name,
                    format!(
                        "has samples of shape {got:?}; the graph input needs {want:?} (None: any)"
                    ),
                ));
            }
            continue;
        }
        if k > 0 || data.sample_len == 0 {
            return Err(Error::data(
                &data.label,
                format!(
                    "holds no tensor '{}' for the model's graph input of that name",
                    crate::error::clip(name, crate::error::NAME_MAX)
                ),
            ));
        }
        if gi.dtype != DType::F32 {
            return Err(Error::data(
                &data.label,
                format!(
                    "'inputs' are real values but graph input '{}' takes integers: name the tensor after the input",
                    crate::error::clip(name, crate::error::NAME_MAX)
                ),
            ));
        }
        data.check_fits(model.input_len(), &model.input_shape)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_fold_that_says_stop_runs_no_batch_after_those_in_flight() {
        let n = 10 * BATCH + 3;
        let in_flight = 2 * rayon::current_num_threads().max(1);
        let ran = AtomicUsize::new(0);
        let map = |s: usize, e: usize| -> Result<(usize, usize)> {
            ran.fetch_add(1, Ordering::Relaxed);
            Ok((s, e))
        };
        // Every batch, in order, when the fold never says stop.
        let mut seen = Vec::new();
        let all = fold_batches_while(n, map, |b| {
            seen.push(b);
            true
        });
        assert!(all.unwrap());
        assert_eq!(seen, batches(n));
        assert_eq!(ran.swap(0, Ordering::Relaxed), 11);
        // Stop at the second batch: its chunk is folded to its end, nothing after it runs.
        let mut seen = Vec::new();
        let all = fold_batches_while(n, map, |b| {
            seen.push(b);
            seen.len() < 2
        });
        assert!(!all.unwrap());
        let chunk = in_flight.clamp(2, 11);
        assert_eq!(seen, batches(n)[..chunk].to_vec());
        assert_eq!(ran.load(Ordering::Relaxed), chunk);
    }

    #[test]
    fn kept_items_are_all_within_the_budget_or_none() {
        let mut k = Kept::new(10);
        [(1, 4), (2, 6)].into_iter().for_each(|(i, b)| k.push(i, b));
        assert_eq!(k.finish(), Some(vec![1, 2]), "10 bytes fit a budget of 10");
        let mut k = Kept::new(10);
        [(1, 4), (2, 7), (3, 0)]
            .into_iter()
            .for_each(|(i, b)| k.push(i, b));
        assert_eq!(
            k.finish(),
            None,
            "11 bytes do not, nor does anything after them"
        );
    }
}
