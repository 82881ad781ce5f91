//! Access to an op's inputs with their checks: presence, element type, axes, sizes.

use super::Limits;
use crate::engine::tensor::{Data, Tensor};

/// Input `i`, which must be present.
pub(super) fn get<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, String> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("input {i} is missing"))
}

/// Input `i` if present.
pub(super) fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// The real values of `t`, or an error naming `what`.
pub(super) fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32], String> {
    t.as_f32().ok_or_else(|| format!("{what} must be F32"))
}

/// The integer values of `t`, or an error naming `what`.
pub(super) fn i64s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [i64], String> {
    t.as_i64().ok_or_else(|| format!("{what} must be I64"))
}

/// An ONNX axis (negative counts from the end) of a tensor of rank `rank`, as an index.
pub(super) fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// Distinct axes of a tensor of rank `rank`, sorted.
pub(super) fn axes(list: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = list
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("repeated axis in {list:?}"));
    }
    Ok(out)
}

/// Axes from the attribute if given, else from input `i` (I64) if present, else `None`.
pub(super) fn axes_arg(
    attr: &Option<Vec<i64>>,
    inputs: &[Option<&Tensor>],
    i: usize,
) -> Result<Option<Vec<i64>>, String> {
    match (attr, opt(inputs, i)) {
        (Some(a), _) => Ok(Some(a.clone())),
        (None, Some(t)) => Ok(Some(i64s(t, "axes")?.to_vec())),
        (None, None) => Ok(None),
    }
}

/// Dims from the values of a shape tensor (all non-negative).
pub(super) fn dims(values: &[i64]) -> Result<Vec<usize>, String> {
    values
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d} in {values:?}")))
        .collect()
}

/// Elements of `shape`, or an error if it overflows.
pub(super) fn count(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} has too many elements"))
}

/// Elements of an output of `shape`, checked against the limits before it is allocated.
pub(super) fn check_out(shape: &[usize], limits: &Limits) -> Result<usize, String> {
    let n = count(shape)?;
    if n > limits.max_elems {
        return Err(format!(
            "output of {n} elements exceeds the limit of {}",
            limits.max_elems
        ));
    }
    Ok(n)
}

/// The single value of a scalar (or one-element) tensor, as f64 if real or i64 if integer.
pub(super) fn scalar(t: &Tensor, what: &str) -> Result<Scalar, String> {
    match (t.as_f32(), t.as_i64()) {
        (Some(&[v]), _) => Ok(Scalar::F32(v)),
        (_, Some(&[v])) => Ok(Scalar::I64(v)),
        _ => Err(format!(
            "{what} must hold one value, has shape {:?}",
            t.shape
        )),
    }
}

/// A scalar input value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scalar {
    /// A real.
    F32(f32),
    /// An integer.
    I64(i64),
}

/// Number of values `t` holds (equal to its shape's count once `eval` has checked it).
pub(super) fn len(t: &Tensor) -> usize {
    match &t.data {
        Data::F32(v) => v.len(),
        Data::I64(v) => v.len(),
        Data::Q { data, .. } => data.len(),
    }
}
