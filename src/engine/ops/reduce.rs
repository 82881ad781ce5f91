//! Reductions: ReduceMean and GlobalAveragePool (means accumulated in f64).

use super::Limits;
use super::args::{axes, check_out, f32s};
use super::index::{Walk, cartesian, strides};
use crate::engine::tensor::Tensor;

/// Mean of `x` over `list` (all axes when `None` or empty), keeping reduced axes as 1 if
/// `keepdims`. An empty reduction gives NaN.
pub(super) fn reduce_mean(
    x: &Tensor,
    list: Option<&[i64]>,
    keepdims: bool,
    limits: &Limits,
) -> Result<Tensor, String> {
    let v = f32s(x, "the input")?;
    let r = x.shape.len();
    let red = match list {
        Some(l) if !l.is_empty() => axes(l, r)?,
        _ => (0..r).collect(),
    };
    let kept: Vec<usize> = (0..r)
        .map(|d| if red.contains(&d) { 1 } else { x.shape[d] })
        .collect();
    // Output offset of each input element: strides of the kept shape, 0 on reduced axes.
    let ost = strides(&kept);
    let walks: Vec<Walk> = (0..r)
        .map(|d| Walk::along(x.shape[d], if red.contains(&d) { 0 } else { ost[d] }))
        .collect();
    // An empty input can still give a large (all-NaN) output.
    let out_len = check_out(&kept, limits)?;
    let mut sums = vec![0f64; out_len];
    for (&o, &t) in cartesian(&walks).iter().zip(v) {
        sums[o] += t as f64;
    }
    let n: usize = red.iter().map(|&d| x.shape[d]).product();
    let data = sums.iter().map(|&s| (s / n as f64) as f32).collect();
    let shape = if keepdims {
        kept
    } else {
        (0..r)
            .filter(|d| !red.contains(d))
            .map(|d| x.shape[d])
            .collect()
    };
    Ok(Tensor::f32(shape, data))
}

/// Mean over the spatial axes (2..) of an [N, C, …] tensor, keeping them as 1.
pub(super) fn global_avg_pool(x: &Tensor, limits: &Limits) -> Result<Tensor, String> {
    let v = f32s(x, "the input")?;
    if x.shape.len() < 3 {
        return Err(format!("input {:?} has no spatial axes", x.shape));
    }
    let plane: usize = x.shape[2..].iter().product();
    let mut shape = x.shape[..2].to_vec();
    shape.resize(x.shape.len(), 1);
    let planes = check_out(&shape, limits)?;
    let data = (0..planes)
        .map(|p| {
            let s: f64 = v[p * plane..(p + 1) * plane]
                .iter()
                .map(|&t| t as f64)
                .sum();
            (s / plane as f64) as f32
        })
        .collect();
    Ok(Tensor::f32(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Limits = Limits { max_elems: 1 << 20 };

    #[test]
    fn reduce_mean_matches_direct_loops() {
        // [2, 3, 4] with values i; mean over axes [0, 2] (given as [0, -1]).
        let x = Tensor::f32(vec![2, 3, 4], (0..24).map(|i| i as f32).collect());
        let y = reduce_mean(&x, Some(&[0, -1]), true, &BIG).unwrap();
        assert_eq!(y.shape, vec![1, 3, 1]);
        for j in 0..3 {
            let mut s = 0.0;
            for i in 0..2 {
                for k in 0..4 {
                    s += (i * 12 + j * 4 + k) as f64;
                }
            }
            assert_eq!(y.as_f32().unwrap()[j], (s / 8.0) as f32);
        }
        let y = reduce_mean(&x, Some(&[1]), false, &BIG).unwrap();
        assert_eq!(y.shape, vec![2, 4]);
        assert_eq!(y.as_f32().unwrap()[5], (13.0 + 17.0 + 21.0) / 3.0);
        let y = reduce_mean(&x, None, false, &BIG).unwrap();
        assert_eq!(
            (y.shape.clone(), y.as_f32().unwrap().to_vec()),
            (vec![], vec![11.5])
        );
        assert!(reduce_mean(&x, Some(&[3]), true, &BIG).is_err());
        assert!(reduce_mean(&x, Some(&[1, -2]), true, &BIG).is_err());
    }

    #[test]
    fn global_avg_pool_means_each_plane() {
        let x = Tensor::f32(
            vec![1, 2, 2, 2],
            vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 0.0, 5.0],
        );
        let y = global_avg_pool(&x, &BIG).unwrap();
        assert_eq!(
            (y.shape.clone(), y.as_f32().unwrap().to_vec()),
            (vec![1, 2, 1, 1], vec![2.5, 1.0])
        );
        assert!(global_avg_pool(&Tensor::f32(vec![2, 2], vec![0.0; 4]), &BIG).is_err());
    }
}
