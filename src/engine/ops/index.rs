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

/// All sums `lists[0][i0] + lists[1][i1] + …` in row-major order of (i0, i1, …): the input
/// offsets of an output whose axis d reads the input offsets `lists[d]`.
pub(super) fn cartesian(lists: &[Vec<usize>]) -> Vec<usize> {
    let total: usize = lists.iter().map(Vec::len).product();
    if total == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(total);
    out.push(0);
    for list in lists {
        let prev = std::mem::take(&mut out);
        out.reserve(prev.len() * list.len());
        for &p in &prev {
            out.extend(list.iter().map(|&v| p + v));
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
