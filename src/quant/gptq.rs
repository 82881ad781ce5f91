//! GPTQ rounding (Frantar et al. 2022): the scales stay those the weight strategy chose; only
//! the rounding changes. Columns are rounded one at a time and each column's rounding error is
//! spread over the columns not yet rounded through the upper Cholesky factor of the inverse
//! Hessian H⁻¹ (H = 2·X·Xᵀ of the layer's calibration inputs), which minimizes ‖W·X − Ŵ·X‖².

use super::QParams;
use super::weights::QWeights;
use rayon::prelude::*;

/// Damping added to H's diagonal, as a fraction of the mean diagonal (GPTQ's 1%).
pub const DAMP: f64 = 0.01;

/// Why GPTQ could not run on a layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GptqError {
    /// The Hessian does not match the weight matrix.
    #[error("the Hessian has {got} entries, a weight matrix of {cols} columns needs {cols}²")]
    Shape {
        /// Entries given.
        got: usize,
        /// Columns of the weight matrix.
        cols: usize,
    },
    /// The damped Hessian is not positive definite (non-finite inputs).
    #[error("the damped Hessian is not positive definite (pivot {pivot} of column {col})")]
    NotPositiveDefinite {
        /// The offending column (after any act-order permutation).
        col: usize,
        /// The pivot found there.
        pivot: f64,
    },
}

/// Lower Cholesky factor L of the row-major n×n matrix `a` (a = L·Lᵀ).
fn cholesky_lower(a: &[f64], n: usize) -> Result<Vec<f64>, GptqError> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let d = a[j * n + j] - (0..j).map(|k| l[j * n + k] * l[j * n + k]).sum::<f64>();
        if !(d.is_finite() && d > 0.0) {
            return Err(GptqError::NotPositiveDefinite { col: j, pivot: d });
        }
        let d = d.sqrt();
        l[j * n + j] = d;
        let (done, rest) = l.split_at_mut((j + 1) * n);
        let lj = &done[j * n..j * n + j];
        rest.par_chunks_mut(n).enumerate().for_each(|(o, li)| {
            let i = j + 1 + o;
            let s: f64 = li[..j].iter().zip(lj).map(|(x, y)| x * y).sum();
            li[j] = (a[i * n + j] - s) / d;
        });
    }
    Ok(l)
}

/// The upper triangular U with H⁻¹ = Uᵀ·U, for symmetric positive definite `h` (n×n).
///
/// With J the reversal permutation, J·H·J = L̃·L̃ᵀ gives H = V·Vᵀ with V = J·L̃·J upper
/// triangular, so H⁻¹ = V⁻ᵀ·V⁻¹ and U = V⁻¹ (upper, positive diagonal: the unique factor).
pub fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f64>, GptqError> {
    let rev: Vec<f64> = (0..n * n)
        .map(|k| h[(n - 1 - k / n) * n + (n - 1 - k % n)])
        .collect();
    let lt = cholesky_lower(&rev, n)?;
    let v = |i: usize, j: usize| lt[(n - 1 - i) * n + (n - 1 - j)];
    // U = V⁻¹, column by column: V·u_j = e_j (back substitution; u_j is zero below row j).
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            let mut u = vec![0.0; j + 1];
            u[j] = 1.0 / v(j, j);
            for i in (0..j).rev() {
                let s: f64 = (i + 1..=j).map(|k| v(i, k) * u[k]).sum();
                u[i] = -s / v(i, i);
            }
            u
        })
        .collect();
    let mut out = vec![0.0; n * n];
    for (j, u) in cols.iter().enumerate() {
        for (i, &x) in u.iter().enumerate() {
            out[i * n + j] = x;
        }
    }
    Ok(out)
}

/// The integer nearest to `w` on `p`'s grid (half away from zero), in f64.
fn quantize_f64(p: &QParams, w: f64) -> i32 {
    let v = (w / p.scale as f64).clamp(-1e9, 1e9).round() as i64;
    (v + p.zero_point as i64).clamp(p.qmin() as i64, p.qmax() as i64) as i32
}

/// The order GPTQ visits columns in: as stored, or by decreasing H diagonal (act-order; ties
/// keep their order).
pub fn column_order(h: &[f64], n: usize, act_order: bool) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    if act_order {
        perm.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
    }
    perm
}

/// GPTQ over rows `rows` of `qw` (a conv group shares one H): `w` is the float matrix
/// `[qw.rows, qw.cols]`, `h` the n×n Hessian (n = qw.cols, any positive scale), and the
/// integers of those rows in `qw.q` are replaced. Columns never seen (H diagonal 0) get
/// diagonal 1, as GPTQ does; damping is [`DAMP`] of the mean diagonal.
pub fn gptq_rows(
    w: &[f32],
    h: &[f64],
    qw: &mut QWeights,
    rows: std::ops::Range<usize>,
    act_order: bool,
) -> Result<(), GptqError> {
    let n = qw.cols;
    if h.len() != n * n {
        return Err(GptqError::Shape {
            got: h.len(),
            cols: n,
        });
    }
    let mut h = h.to_vec();
    for i in 0..n {
        if h[i * n + i] == 0.0 {
            h[i * n + i] = 1.0;
        }
    }
    let perm = column_order(&h, n, act_order);
    let mut hp: Vec<f64> = (0..n * n)
        .map(|k| h[perm[k / n] * n + perm[k % n]])
        .collect();
    let damp = DAMP * (0..n).map(|i| hp[i * n + i]).sum::<f64>() / n.max(1) as f64;
    for i in 0..n {
        hp[i * n + i] += damp;
    }
    let u = inverse_cholesky_upper(&hp, n)?;
    let gs = qw.group_size();
    let params: &QWeights = qw;
    let new_rows: Vec<Vec<i8>> = rows
        .clone()
        .into_par_iter()
        .map(|r| {
            let mut wr: Vec<f64> = perm.iter().map(|&c| w[r * n + c] as f64).collect();
            let mut q = vec![0i8; n];
            for i in 0..n {
                let p = params.param(r, perm[i] / gs);
                let qi = quantize_f64(p, wr[i]);
                q[perm[i]] = qi as i8;
                let deq = p.scale as f64 * (qi - p.zero_point) as f64;
                let err = (wr[i] - deq) / u[i * n + i];
                let ui = &u[i * n..(i + 1) * n];
                for (x, &uij) in wr[i + 1..].iter_mut().zip(&ui[i + 1..]) {
                    *x -= err * uij;
                }
            }
            q
        })
        .collect();
    for (r, q) in rows.zip(new_rows) {
        qw.q[r * n..(r + 1) * n].copy_from_slice(&q);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_cholesky_upper_by_hand() {
        // H = [[4, 2], [2, 3]]: H⁻¹ = [[3, -2], [-2, 4]] / 8 = Uᵀ·U.
        let u = inverse_cholesky_upper(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert_eq!(u[2], 0.0);
        let uu = |i: usize, j: usize| (0..2).map(|k| u[k * 2 + i] * u[k * 2 + j]).sum::<f64>();
        for (i, j, want) in [(0, 0, 3.0 / 8.0), (0, 1, -0.25), (1, 1, 0.5)] {
            assert!((uu(i, j) - want).abs() < 1e-12, "{i},{j}");
        }
        assert!(u[0] > 0.0 && u[3] > 0.0);
        assert!(matches!(
            inverse_cholesky_upper(&[1.0, 2.0, 2.0, 1.0], 2),
            Err(GptqError::NotPositiveDefinite { .. })
        ));
    }
}
