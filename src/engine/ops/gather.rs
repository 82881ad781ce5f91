//! Gather and GatherND: take entries of the data at integer indices (negative ones count from
//! the end).

use super::Limits;
use super::args::{axis, check_out, count, i64s};
use super::index::{strides, take};
use crate::engine::tensor::Tensor;

/// An index into an axis of length `dim`, negative counting from the end.
fn wrap(i: i64, dim: usize) -> Result<usize, String> {
    let d = dim as i64;
    let j = if i < 0 { i + d } else { i };
    if j < 0 || j >= d {
        return Err(format!("index {i} is out of range for a dim of {dim}"));
    }
    Ok(j as usize)
}

/// Gather(data, indices) along `axis`: shape data[..axis] ++ indices ++ data[axis+1..].
pub(super) fn gather(x: &Tensor, ind: &Tensor, ax: i64, limits: &Limits) -> Result<Tensor, String> {
    let idx = i64s(ind, "the indices")?;
    let a = axis(ax, x.shape.len())?;
    let dim = x.shape[a];
    let mut shape = x.shape[..a].to_vec();
    shape.extend(&ind.shape);
    shape.extend(&x.shape[a + 1..]);
    check_out(&shape, limits)?;
    let cols = idx
        .iter()
        .map(|&i| wrap(i, dim))
        .collect::<Result<Vec<_>, _>>()?;
    let outer = count(&x.shape[..a])?;
    let inner = count(&x.shape[a + 1..])?;
    let mut offsets = Vec::with_capacity(outer * cols.len() * inner);
    for o in 0..outer {
        for &c in &cols {
            let base = (o * dim + c) * inner;
            offsets.extend(base..base + inner);
        }
    }
    Ok(Tensor {
        shape,
        data: take(&x.data, &offsets),
    })
}

/// GatherND(data, indices) with `b` leading batch dims shared by both: each row of the last
/// axis of indices (m ≤ rank − b entries) picks a slice of the data of its batch.
pub(super) fn gather_nd(
    x: &Tensor,
    ind: &Tensor,
    b: usize,
    limits: &Limits,
) -> Result<Tensor, String> {
    let idx = i64s(ind, "the indices")?;
    let (r, q) = (x.shape.len(), ind.shape.len());
    if q == 0 || r == 0 || b >= q.min(r) {
        return Err(format!("ranks {r}, {q} do not allow {b} batch dims"));
    }
    if x.shape[..b] != ind.shape[..b] {
        return Err(format!(
            "batch dims of {:?} and {:?} differ",
            x.shape, ind.shape
        ));
    }
    let m = ind.shape[q - 1];
    if m == 0 || m > r - b {
        return Err(format!(
            "index rows of {m} for data of rank {r} with {b} batch dims"
        ));
    }
    let mut shape = ind.shape[..q - 1].to_vec();
    shape.extend(&x.shape[b + m..]);
    check_out(&shape, limits)?;
    let batches = count(&x.shape[..b])?;
    let per_batch = count(&x.shape[b..])?;
    let slice = count(&x.shape[b + m..])?;
    let st = strides(&x.shape[b..]);
    let rows_per_batch = count(&ind.shape[b..q - 1])?.max(1);
    let mut offsets = Vec::with_capacity(count(&shape)?);
    for (row, tuple) in idx.chunks(m).enumerate() {
        let batch = row / rows_per_batch;
        debug_assert!(batch < batches);
        let mut base = batch * per_batch;
        for (k, &i) in tuple.iter().enumerate() {
            base += wrap(i, x.shape[b + k])? * st[k];
        }
        offsets.extend(base..base + slice);
    }
    Ok(Tensor {
        shape,
        data: take(&x.data, &offsets),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Limits = Limits { max_elems: 1 << 20 };

    #[test]
    fn gather_spec_examples() {
        // axis 0: data [[1,1.2],[2.3,3.4],[4.5,5.7]], indices [[0,1],[1,2]].
        let x = Tensor::f32(vec![3, 2], vec![1.0, 1.2, 2.3, 3.4, 4.5, 5.7]);
        let i = Tensor::i64(vec![2, 2], vec![0, 1, 1, 2]);
        let y = gather(&x, &i, 0, &BIG).unwrap();
        assert_eq!(y.shape, vec![2, 2, 2]);
        assert_eq!(
            y.as_f32().unwrap(),
            &[1.0, 1.2, 2.3, 3.4, 2.3, 3.4, 4.5, 5.7]
        );
        // axis 1: data [[1,1.2,1.9],[2.3,3.4,3.9],[4.5,5.7,5.9]], indices [[0,2]].
        let x = Tensor::f32(
            vec![3, 3],
            vec![1.0, 1.2, 1.9, 2.3, 3.4, 3.9, 4.5, 5.7, 5.9],
        );
        let i = Tensor::i64(vec![1, 2], vec![0, 2]);
        let y = gather(&x, &i, 1, &BIG).unwrap();
        assert_eq!(y.shape, vec![3, 1, 2]);
        assert_eq!(y.as_f32().unwrap(), &[1.0, 1.9, 2.3, 3.9, 4.5, 5.9]);
        // negative indices, scalar index, I64 data, negative axis.
        let x = Tensor::i64(vec![2, 3], vec![0, 1, 2, 3, 4, 5]);
        let i = Tensor::i64(vec![], vec![-1]);
        let y = gather(&x, &i, -1, &BIG).unwrap();
        assert_eq!(
            (y.shape.clone(), y.as_i64().unwrap().to_vec()),
            (vec![2], vec![2, 5])
        );
        let bad = Tensor::i64(vec![1], vec![3]);
        assert!(gather(&x, &bad, 1, &BIG).is_err());
        assert!(gather(&x, &bad, 2, &BIG).is_err());
    }

    #[test]
    fn gather_nd_spec_examples() {
        let t = |s: Vec<usize>, v: Vec<i64>| Tensor::i64(s, v);
        // Example 1: [[0,1],[2,3]], indices [[0,0],[1,1]] → [0,3].
        let x = t(vec![2, 2], vec![0, 1, 2, 3]);
        let y = gather_nd(&x, &t(vec![2, 2], vec![0, 0, 1, 1]), 0, &BIG).unwrap();
        assert_eq!(
            (y.shape.clone(), y.as_i64().unwrap().to_vec()),
            (vec![2], vec![0, 3])
        );
        // Example 2: indices [[1],[0]] → [[2,3],[0,1]].
        let y = gather_nd(&x, &t(vec![2, 1], vec![1, 0]), 0, &BIG).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[2, 3, 0, 1]);
        // Example 3: data [[[0,1],[2,3]],[[4,5],[6,7]]], indices [[0,1],[1,0]] → [[2,3],[4,5]].
        let x = t(vec![2, 2, 2], (0..8).collect());
        let y = gather_nd(&x, &t(vec![2, 2], vec![0, 1, 1, 0]), 0, &BIG).unwrap();
        assert_eq!(
            (y.shape.clone(), y.as_i64().unwrap().to_vec()),
            (vec![2, 2], vec![2, 3, 4, 5])
        );
        // Example 4: indices [[[0,1]],[[1,0]]] → [[[2,3]],[[4,5]]].
        let y = gather_nd(&x, &t(vec![2, 1, 2], vec![0, 1, 1, 0]), 0, &BIG).unwrap();
        assert_eq!(y.shape, vec![2, 1, 2]);
        // Example 5: batch_dims 1, indices [[1],[0]] → [[2,3],[4,5]].
        let y = gather_nd(&x, &t(vec![2, 1], vec![1, 0]), 1, &BIG).unwrap();
        assert_eq!(
            (y.shape.clone(), y.as_i64().unwrap().to_vec()),
            (vec![2, 2], vec![2, 3, 4, 5])
        );
        // Negative index and errors.
        let y = gather_nd(&x, &t(vec![1, 3], vec![-1, -1, -1]), 0, &BIG).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[7]);
        assert!(gather_nd(&x, &t(vec![1, 4], vec![0; 4]), 0, &BIG).is_err());
        assert!(gather_nd(&x, &t(vec![1, 1], vec![2]), 0, &BIG).is_err());
        assert!(gather_nd(&x, &t(vec![2], vec![0, 0]), 1, &BIG).is_err());
    }
}
