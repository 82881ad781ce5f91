//! ONNX Slice: per axis a start, end and step, negative values counting from the end, bounds
//! clamped as the spec says (so INT64_MAX / INT64_MIN mean "to the end"), negative steps.

use super::args::{axes, get, i64s, opt};
use super::index::{Walk, cartesian, strides, take};
use crate::engine::tensor::Tensor;

/// The indices along one axis of length `dim` read by (start, end, step).
fn axis_range(dim: usize, start: i64, end: i64, step: i64) -> Result<Walk, String> {
    if step == 0 {
        return Err("slice step 0".into());
    }
    let (d, step) = (dim as i128, step as i128);
    let wrap = |v: i64| if v < 0 { v as i128 + d } else { v as i128 };
    let (s, e) = (wrap(start), wrap(end));
    let (s, e) = if step > 0 {
        (s.max(0).min(d), e.max(0).min(d))
    } else {
        (s.max(0).min(d - 1), e.max(-1).min(d - 1))
    };
    let span = if step > 0 { e - s } else { s - e };
    let n = if span <= 0 {
        0
    } else {
        (span + step.abs() - 1) / step.abs()
    };
    // Every index s + i·step for i < n lies in [0, dim), so these casts are exact.
    Ok(Walk {
        first: if n > 0 { s as usize } else { 0 },
        step: step.clamp(-(d.max(1)), d.max(1)) as isize,
        len: n as usize,
    })
}

/// Slice(data, starts, ends, axes?, steps?).
pub(super) fn slice(inputs: &[Option<&Tensor>]) -> Result<Tensor, String> {
    let x = get(inputs, 0)?;
    let starts = i64s(get(inputs, 1)?, "starts")?;
    let ends = i64s(get(inputs, 2)?, "ends")?;
    let n = starts.len();
    let axis_list: Vec<i64> = match opt(inputs, 3) {
        Some(t) => i64s(t, "axes")?.to_vec(),
        None => (0..n as i64).collect(),
    };
    let steps: Vec<i64> = match opt(inputs, 4) {
        Some(t) => i64s(t, "steps")?.to_vec(),
        None => vec![1; n],
    };
    if ends.len() != n || axis_list.len() != n || steps.len() != n {
        return Err("starts, ends, axes and steps must have the same length".into());
    }
    let r = x.shape.len();
    axes(&axis_list, r)?; // range and repetition check
    let st = strides(&x.shape);
    let mut walks: Vec<Walk> = (0..r).map(|d| Walk::along(x.shape[d], st[d])).collect();
    for i in 0..n {
        let a = super::args::axis(axis_list[i], r)?;
        let w = axis_range(x.shape[a], starts[i], ends[i], steps[i])?;
        walks[a] = Walk {
            first: w.first * st[a],
            step: w.step * st[a] as isize,
            len: w.len,
        };
    }
    Ok(Tensor {
        shape: walks.iter().map(|w| w.len).collect(),
        data: take(&x.data, &cartesian(&walks)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(x: &Tensor, s: &[i64], e: &[i64], a: Option<&[i64]>, st: Option<&[i64]>) -> Tensor {
        let t = |v: &[i64]| Tensor::i64(vec![v.len()], v.to_vec());
        let (s, e) = (t(s), t(e));
        let (a, st) = (a.map(t), st.map(t));
        slice(&[Some(x), Some(&s), Some(&e), a.as_ref(), st.as_ref()]).unwrap()
    }

    #[test]
    fn spec_examples() {
        let x = Tensor::f32(vec![2, 4], (1..=8).map(|v| v as f32).collect());
        // slice: starts [1,0], ends [2,3], steps [1,2] → [[5, 7]].
        let y = run(&x, &[1, 0], &[2, 3], Some(&[0, 1]), Some(&[1, 2]));
        assert_eq!(
            (y.shape.clone(), y.as_f32().unwrap().to_vec()),
            (vec![1, 2], vec![5.0, 7.0])
        );
        // starts [0,1], ends [-1,1000] → [[2,3,4]].
        let y = run(&x, &[0, 1], &[-1, 1000], None, None);
        assert_eq!(
            (y.shape.clone(), y.as_f32().unwrap().to_vec()),
            (vec![1, 3], vec![2.0, 3.0, 4.0])
        );
    }

    #[test]
    fn negative_steps_and_extreme_bounds() {
        let x = Tensor::i64(vec![2, 5], (0..10).collect());
        // Reverse axis 1 entirely: start INT64_MAX, end INT64_MIN, step −1.
        let y = run(&x, &[i64::MAX], &[i64::MIN], Some(&[-1]), Some(&[-1]));
        assert_eq!(y.as_i64().unwrap(), &[4, 3, 2, 1, 0, 9, 8, 7, 6, 5]);
        // Step −2 from the last element down to (excluding) index 0.
        let y = run(&x, &[-1], &[0], Some(&[1]), Some(&[-2]));
        assert_eq!(
            (y.shape.clone(), y.as_i64().unwrap().to_vec()),
            (vec![2, 2], vec![4, 2, 9, 7])
        );
        // Reverse axis 0 with step −1 and end −(dim+1) (clamped to −1, i.e. through index 0).
        let y = run(&x, &[1], &[-3], Some(&[0]), Some(&[-1]));
        assert_eq!(y.as_i64().unwrap(), &[5, 6, 7, 8, 9, 0, 1, 2, 3, 4]);
        // Empty when start is past end for the step direction.
        let y = run(&x, &[3], &[1], Some(&[1]), None);
        assert_eq!(y.shape, vec![2, 0]);
        // A direct numpy-style reference for every start/end/step combination on length 5.
        for s in -7..7 {
            for e in -7..7 {
                for st in [-3, -2, -1, 1, 2, 3] {
                    let w = axis_range(5, s, e, st).unwrap();
                    let got: Vec<usize> = (0..w.len)
                        .map(|i| (w.first as isize + i as isize * w.step) as usize)
                        .collect();
                    assert_eq!(got, reference(5, s, e, st), "{s}:{e}:{st}");
                }
            }
        }
    }

    /// A loop over the ONNX clamping rules for a list of length n (which differ from Python's
    /// only for a negative step with a start before the beginning: ONNX clamps it to 0).
    fn reference(n: i64, s: i64, e: i64, st: i64) -> Vec<usize> {
        let adj = |v: i64, lo: i64, hi: i64| {
            let v = if v < 0 { v + n } else { v };
            v.max(lo).min(hi)
        };
        let (s, e) = if st > 0 {
            (adj(s, 0, n), adj(e, 0, n))
        } else {
            (adj(s, 0, n - 1), adj(e, -1, n - 1))
        };
        let mut out = Vec::new();
        let mut i = s;
        while (st > 0 && i < e) || (st < 0 && i > e) {
            out.push(i as usize);
            i += st;
        }
        out
    }

    #[test]
    fn bad_slices_are_errors() {
        let x = Tensor::f32(vec![3], vec![0.0; 3]);
        let t = |v: &[i64]| Tensor::i64(vec![v.len()], v.to_vec());
        let (s, e, z) = (t(&[0]), t(&[2]), t(&[0]));
        assert!(slice(&[Some(&x), Some(&s), Some(&e), None, Some(&z)]).is_err());
        let ax = t(&[1]);
        assert!(slice(&[Some(&x), Some(&s), Some(&e), Some(&ax)]).is_err());
        let e2 = t(&[2, 3]);
        assert!(slice(&[Some(&x), Some(&s), Some(&e2)]).is_err());
    }
}
