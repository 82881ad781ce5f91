//! Index maps: ops that only move values (transpose, slice, broadcast, gather) compute, for
//! each output element, the offset of the input element it copies, then take those.

use crate::engine::tensor::Data;

/// Row-major strides of `shape`.
pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        out[d] = out[d + 1] * shape[d + 1];
    }
    out
}

/// The input offsets one output axis reads: `first + i · step` for i < `len` (all ≥ 0).
#[derive(Debug, Clone, Copy)]
pub(super) struct Walk {
    /// Offset of the first entry.
    pub first: usize,
    /// Offset change per entry (negative for reversed slices, 0 for broadcast axes).
    pub step: isize,
    /// Entries.
    pub len: usize,
}

impl Walk {
    /// `len` entries `i · step` (step ≥ 0).
    pub fn along(len: usize, step: usize) -> Self {
        Walk {
            first: 0,
            step: step as isize,
            len,
        }
    }
}

/// All sums `w0(i0) + w1(i1) + …` in row-major order of (i0, i1, …): the input offsets of an
/// output whose axis d reads `walks[d]`. Nothing is allocated for an empty output, however
/// long the other axes.
pub(super) fn cartesian(walks: &[Walk]) -> Vec<usize> {
    let total = walks.iter().try_fold(1usize, |n, w| n.checked_mul(w.len));
    if total == Some(0) {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(total.unwrap_or(0));
    out.push(0);
    for w in walks {
        let prev = std::mem::take(&mut out);
        out.reserve(prev.len() * w.len);
        for &p in &prev {
            out.extend((0..w.len).map(|i| p + (w.first as isize + i as isize * w.step) as usize));
        }
    }
    out
}

/// The values of `data` at `idx` (every index in range), same element type. Q data is
/// dequantized by the caller, so it never gets here; it is taken like the others.
pub(super) fn take(data: &Data, idx: &[usize]) -> Data {
    match data {
        Data::F32(v) => Data::F32(idx.iter().map(|&i| v[i]).collect()),
        Data::I64(v) => Data::I64(idx.iter().map(|&i| v[i]).collect()),
        Data::Q { data, qp } => Data::Q {
            data: idx.iter().map(|&i| data[i]).collect(),
            qp: *qp,
        },
    }
}
