//! Numpy (ONNX multidirectional) broadcasting: the common shape of two tensors and, for each
//! element of a broadcast result, the offset of the input element it reads.

use super::index::{Walk, cartesian, strides};

/// The broadcast of two shapes: aligned at the last axis, each pair of dims must be equal or
/// one of them 1 (a missing leading dim counts as 1).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i + s.len() >= rank {
            s[i + s.len() - rank]
        } else {
            1
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        })
        .collect()
}

/// For each element of `out_shape` (row-major), the offset of the element of a tensor of
/// `in_shape` that broadcasts to it. Errors if `in_shape` does not broadcast to `out_shape`.
pub fn broadcast_offsets(in_shape: &[usize], out_shape: &[usize]) -> Result<Vec<usize>, String> {
    let bad = || format!("shape {in_shape:?} does not broadcast to {out_shape:?}");
    let lead = out_shape
        .len()
        .checked_sub(in_shape.len())
        .ok_or_else(bad)?;
    let st = strides(in_shape);
    let walks = out_shape
        .iter()
        .enumerate()
        .map(
            |(d, &n)| match d.checked_sub(lead).map(|i| (in_shape[i], st[i])) {
                None | Some((1, _)) => Ok(Walk::along(n, 0)),
                Some((m, s)) if m == n => Ok(Walk::along(n, s)),
                Some(_) => Err(bad()),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    Ok(cartesian(&walks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_broadcast_like_numpy() {
        assert_eq!(broadcast_shape(&[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert_eq!(broadcast_shape(&[4, 1], &[2, 1, 3]).unwrap(), vec![2, 4, 3]);
        assert_eq!(broadcast_shape(&[], &[5]).unwrap(), vec![5]);
        assert_eq!(broadcast_shape(&[0], &[1]).unwrap(), vec![0]);
        assert_eq!(
            broadcast_shape(&[3, 1, 5], &[1, 4, 1]).unwrap(),
            vec![3, 4, 5]
        );
        assert!(broadcast_shape(&[2, 3], &[3, 2]).is_err());
        assert!(broadcast_shape(&[0], &[2]).is_err());
    }

    #[test]
    fn offsets_follow_the_broadcast_index() {
        // [2,1,3] and [4,1] to [2,4,3]: compare with a direct index computation.
        let out = [2, 4, 3];
        let oa = broadcast_offsets(&[2, 1, 3], &out).unwrap();
        let ob = broadcast_offsets(&[4, 1], &out).unwrap();
        let mut i = 0;
        for n in 0..2 {
            for r in 0..4 {
                for c in 0..3 {
                    assert_eq!(oa[i], n * 3 + c);
                    assert_eq!(ob[i], r);
                    i += 1;
                }
            }
        }
        assert_eq!(broadcast_offsets(&[], &[2, 2]).unwrap(), vec![0; 4]);
        assert!(broadcast_offsets(&[3], &[2]).is_err());
        assert!(broadcast_offsets(&[1, 2], &[2]).is_err());
    }
}
