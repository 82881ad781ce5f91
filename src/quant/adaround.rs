//! AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
//! Quantization"): the scales stay those the weight strategy chose; each weight learns whether
//! it rounds up or down. Per weight a variable V sets the rectified sigmoid
//! h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1) (ζ = 1.1, γ = −0.1) and the soft weight
//! Ŵ = s·(clip(⌊W/s⌋ + z + h(V), qmin, qmax) − z). Adam minimizes, row by row (rows do not
//! interact), the layer's output error on its calibration inputs X plus a regularizer that
//! drives every h(V) to 0 or 1:
//!
//! L = (W − Ŵ)·H·(W − Ŵ)ᵀ / (σ²·m) + λ·Σ (1 − |2h(V) − 1|^β)
//!
//! with H = Σ x·xᵀ (so ‖(W − Ŵ)·X‖² needs no X), m the mean of diag(H) and σ² the mean of the
//! row's squared scales (the error counts in grid steps and input units, whatever the layer's
//! magnitudes). The first [`AdaroundOptions::warmup`] of the iterations run without the
//! regularizer; β then falls linearly from 20 to 2. Finally a weight rounds up when h(V) ≥ ½.

use super::weights::QWeights;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, LinalgScalar};
use rayon::prelude::*;

/// The rectified sigmoid's stretch: ζ.
pub const ZETA: f64 = 1.1;
/// The rectified sigmoid's stretch: γ.
pub const GAMMA: f64 = -0.1;
/// Rows optimized together (one matrix product per iteration); blocks run in parallel.
const BLOCK_ROWS: usize = 32;
/// Iterations between two looks at the stop flag.
const STOP_EVERY: usize = 16;

/// AdaRound's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaroundOptions {
    /// Adam steps (full batch: the gradient is exact, so a few hundred suffice).
    pub iters: usize,
    /// Adam's learning rate on V.
    pub lr: f64,
    /// Weight λ of the rounding regularizer. The reconstruction term is normalized (see the
    /// module doc), so λ is not the paper's 0.01: at 0.01 the h(V) of the bundled models'
    /// large layers stay far from 0 and 1 and the final rounding undoes the optimization.
    pub lambda: f64,
    /// Share of the iterations run without the regularizer (the paper's 20%).
    pub warmup: f64,
    /// β at the end of the warm-up and at the last iteration (20 → 2).
    pub beta: (f64, f64),
}

impl Default for AdaroundOptions {
    fn default() -> Self {
        AdaroundOptions {
            iters: 300,
            lr: 0.1,
            lambda: 1.0,
            warmup: 0.2,
            beta: (20.0, 2.0),
        }
    }
}

impl AdaroundOptions {
    /// The regularizer's β at iteration `t`, or `None` during the warm-up.
    pub fn beta_at(&self, t: usize) -> Option<f64> {
        let warm = (self.warmup * self.iters as f64) as usize;
        if t < warm {
            return None;
        }
        let rel = (t - warm) as f64 / (self.iters - warm).max(1) as f64;
        Some(self.beta.1 + (self.beta.0 - self.beta.1) * (1.0 - rel))
    }
}

/// Why AdaRound could not run on a layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdaroundError {
    /// The Hessian does not match the weight matrix.
    #[error("the input Hessian has {got} entries, a weight matrix of {cols} columns needs {cols}²")]
    Shape {
        /// Entries given.
        got: usize,
        /// Columns of the weight matrix.
        cols: usize,
    },
    /// The input statistics are not finite.
    #[error("the input statistics are not finite")]
    NotFinite,
    /// The stop flag was raised.
    #[error("stopped")]
    Stopped,
}

/// The element type of the matrix product H·(W − Ŵ)ᵀ (f32 in the pipeline, f64 in checks).
pub trait Real: LinalgScalar + Send + Sync {
    /// From f64 (rounded).
    fn of(x: f64) -> Self;
    /// To f64.
    fn get(self) -> f64;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn get(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn get(self) -> f64 {
        self
    }
}

/// H / m (m the mean of its diagonal, 1 when that is 0) in `T`, n×n.
#[derive(Debug, Clone)]
pub struct Hessian<T> {
    h: Array2<T>,
}

impl<T: Real> Hessian<T> {
    /// The normalized Hessian of a layer with `n` inputs from Σ x·xᵀ (row-major n×n).
    pub fn new(h: &[f64], n: usize) -> Result<Self, AdaroundError> {
        if h.len() != n * n {
            return Err(AdaroundError::Shape {
                got: h.len(),
                cols: n,
            });
        }
        if h.iter().any(|v| !v.is_finite()) {
            return Err(AdaroundError::NotFinite);
        }
        let m = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n.max(1) as f64;
        let m = if m > 0.0 { m } else { 1.0 };
        let h = Array2::from_shape_fn((n, n), |(i, j)| T::of(h[i * n + j] / m));
        Ok(Hessian { h })
    }
}

/// h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1) and dh/dV (0 where clipped).
pub fn rectified_sigmoid(v: f64) -> (f64, f64) {
    let s = 1.0 / (1.0 + (-v).exp());
    let raw = s * (ZETA - GAMMA) + GAMMA;
    if raw <= 0.0 {
        (0.0, 0.0)
    } else if raw >= 1.0 {
        (1.0, 0.0)
    } else {
        (raw, s * (1.0 - s) * (ZETA - GAMMA))
    }
}

/// The V with h(V) = `frac` (0 ≤ frac < 1).
fn inverse_rectified_sigmoid(frac: f64) -> f64 {
    let p = (frac - GAMMA) / (ZETA - GAMMA);
    (p / (1.0 - p)).ln()
}

/// Some rows of a layer on their grid: per weight its float value, step, zero point, integer
/// bounds and ⌊w/s⌋ + z; per row 1/σ (σ² the mean of the row's squared steps).
#[derive(Debug, Clone)]
pub struct Block {
    n: usize,
    w: Vec<f64>,
    s: Vec<f64>,
    z: Vec<f64>,
    lo: Vec<f64>,
    hi: Vec<f64>,
    base: Vec<f64>,
    frac: Vec<f64>,
    inv_sigma: Vec<f64>,
}

impl Block {
    /// Rows `rows` of the float matrix `w` ([qw.rows, qw.cols]) on the grid of `qw`.
    pub fn new(w: &[f32], qw: &QWeights, rows: std::ops::Range<usize>) -> Self {
        let (n, gs) = (qw.cols, qw.group_size());
        let len = rows.len() * n;
        let mut b = Block {
            n,
            w: Vec::with_capacity(len),
            s: Vec::with_capacity(len),
            z: Vec::with_capacity(len),
            lo: Vec::with_capacity(len),
            hi: Vec::with_capacity(len),
            base: Vec::with_capacity(len),
            frac: Vec::with_capacity(len),
            inv_sigma: Vec::with_capacity(rows.len()),
        };
        for r in rows {
            let mut s2 = 0.0;
            for c in 0..n {
                let p = qw.param(r, c / gs);
                let (wv, s) = (w[r * n + c] as f64, p.scale as f64);
                let x = (wv / s).clamp(-1e9, 1e9);
                let fl = x.floor();
                b.w.push(wv);
                b.s.push(s);
                b.z.push(p.zero_point as f64);
                b.lo.push(p.qmin() as f64);
                b.hi.push(p.qmax() as f64);
                b.base.push(fl + p.zero_point as f64);
                b.frac.push(x - fl);
                s2 += s * s;
            }
            b.inv_sigma.push((n.max(1) as f64 / s2).sqrt());
        }
        b
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.inv_sigma.len()
    }

    /// The V that make h(V) the fractional part of w/s (the soft weights start at W).
    pub fn initial_v(&self) -> Vec<f64> {
        self.frac
            .iter()
            .map(|&f| inverse_rectified_sigmoid(f))
            .collect()
    }

    /// The integers V rounds to: up where h(V) ≥ ½ (V ≥ 0), clamped to the grid.
    pub fn ints(&self, v: &[f64]) -> Vec<i8> {
        (0..v.len())
            .map(|i| {
                let up = if v[i] >= 0.0 { 1.0 } else { 0.0 };
                (self.base[i] + up).clamp(self.lo[i], self.hi[i]) as i8
            })
            .collect()
    }

    /// Soft weight i: its error (w − ŵ) in units of its row's σ, and dŵ/dh in those units
    /// (0 where the grid's bounds clip it).
    fn soft(&self, i: usize, h: f64) -> (f64, f64) {
        let inv = self.inv_sigma[i / self.n];
        let q = self.base[i] + h;
        let qc = q.clamp(self.lo[i], self.hi[i]);
        let d = (self.w[i] - self.s[i] * (qc - self.z[i])) * inv;
        let live = q >= self.lo[i] && q <= self.hi[i];
        (d, if live { self.s[i] * inv } else { 0.0 })
    }
}

/// Scratch matrices for [`objective`] over a block.
#[derive(Debug, Clone)]
pub struct Scratch<T> {
    d: Array2<T>,
    g: Array2<T>,
}

impl<T: Real> Scratch<T> {
    /// Room for `block`.
    pub fn new(block: &Block) -> Self {
        let shape = (block.rows(), block.n);
        Scratch {
            d: Array2::zeros(shape),
            g: Array2::zeros(shape),
        }
    }
}

/// AdaRound's loss over `block` at `v`, the regularizer included when `reg` = (λ, β) is given;
/// its gradient in V goes to `grad` when asked for.
pub fn objective<T: Real>(
    block: &Block,
    hess: &Hessian<T>,
    v: &[f64],
    reg: Option<(f64, f64)>,
    scratch: &mut Scratch<T>,
    grad: Option<&mut [f64]>,
) -> f64 {
    let hv: Vec<(f64, f64)> = v.iter().map(|&x| rectified_sigmoid(x)).collect();
    let mut dq = vec![0.0; v.len()];
    for (i, (d, &(h, _))) in scratch.d.iter_mut().zip(&hv).enumerate() {
        let (e, de) = block.soft(i, h);
        *d = T::of(e);
        dq[i] = de;
    }
    let hm: ArrayView2<T> = hess.h.view();
    general_mat_mul(T::one(), &scratch.d, &hm, T::zero(), &mut scratch.g);
    let mut loss = 0.0;
    let (d, g) = (scratch.d.as_slice().unwrap(), scratch.g.as_slice().unwrap());
    for (x, y) in d.iter().zip(g) {
        loss += x.get() * y.get();
    }
    if let Some((lambda, beta)) = reg {
        loss += lambda
            * hv.iter()
                .map(|&(h, _)| 1.0 - (2.0 * h - 1.0).abs().powf(beta))
                .sum::<f64>();
    }
    let Some(grad) = grad else { return loss };
    for (i, gr) in grad.iter_mut().enumerate() {
        let (h, dh) = hv[i];
        // d(eᵀHe)/dh = 2·(H·e)·de/dh, and de/dh = −dŵ/dh.
        let mut dl = -2.0 * g[i].get() * dq[i];
        if let Some((lambda, beta)) = reg
            && dh != 0.0
        {
            // d(1 − |u|^β)/dh = −2β·|u|^(β−1)·sign(u), u = 2h − 1.
            let u = 2.0 * h - 1.0;
            let a = u.abs();
            if a > 0.0 {
                dl -= lambda * 2.0 * beta * ((beta - 1.0) * a.ln()).exp() * u.signum();
            }
        }
        *gr = dl * dh;
    }
    loss
}

/// Adam on V over `block`; `stop` is asked every few iterations. Returns the final V.
pub fn optimize<T: Real>(
    block: &Block,
    hess: &Hessian<T>,
    opts: &AdaroundOptions,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<f64>, AdaroundError> {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;
    let mut v = block.initial_v();
    let (mut m1, mut m2, mut g) = (vec![0.0; v.len()], vec![0.0; v.len()], vec![0.0; v.len()]);
    let mut scratch = Scratch::new(block);
    for t in 0..opts.iters {
        if t % STOP_EVERY == 0 && stop() {
            return Err(AdaroundError::Stopped);
        }
        let reg = opts.beta_at(t).map(|b| (opts.lambda, b));
        objective(block, hess, &v, reg, &mut scratch, Some(&mut g));
        let c1 = 1.0 - B1.powi(t as i32 + 1);
        let c2 = 1.0 - B2.powi(t as i32 + 1);
        for i in 0..v.len() {
            m1[i] = B1 * m1[i] + (1.0 - B1) * g[i];
            m2[i] = B2 * m2[i] + (1.0 - B2) * g[i] * g[i];
            v[i] -= opts.lr * (m1[i] / c1) / ((m2[i] / c2).sqrt() + EPS);
        }
    }
    Ok(v)
}

/// AdaRound over rows `rows` of `qw` (a conv group shares one H): `w` is the float matrix
/// `[qw.rows, qw.cols]`, `h` = Σ x·xᵀ of the layer's inputs (n×n, n = qw.cols, any positive
/// scale), and the integers of those rows in `qw.q` are replaced. Blocks of rows run in
/// parallel; the product H·(W − Ŵ)ᵀ is in f32.
pub fn adaround_rows(
    w: &[f32],
    h: &[f64],
    qw: &mut QWeights,
    rows: std::ops::Range<usize>,
    opts: &AdaroundOptions,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<(), AdaroundError> {
    let n = qw.cols;
    let hess = Hessian::<f32>::new(h, n)?;
    let starts: Vec<usize> = rows.clone().step_by(BLOCK_ROWS).collect();
    let params: &QWeights = qw;
    let ints = starts
        .par_iter()
        .map(|&r0| {
            let block = Block::new(w, params, r0..(r0 + BLOCK_ROWS).min(rows.end));
            let v = optimize(&block, &hess, opts, stop)?;
            Ok(block.ints(&v))
        })
        .collect::<Result<Vec<_>, AdaroundError>>()?;
    for (&r0, q) in starts.iter().zip(ints) {
        qw.q[r0 * n..r0 * n + q.len()].copy_from_slice(&q);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rectified_sigmoid_inverts_and_clips() {
        for f in [0.0, 0.25, 0.5, 0.999] {
            let (h, dh) = rectified_sigmoid(inverse_rectified_sigmoid(f));
            assert!((h - f).abs() < 1e-12, "{f}");
            assert!(f == 0.0 || dh > 0.0);
        }
        assert_eq!(rectified_sigmoid(-20.0), (0.0, 0.0));
        assert_eq!(rectified_sigmoid(20.0), (1.0, 0.0));
        assert!((rectified_sigmoid(0.0).0 - 0.5).abs() < 1e-15);
    }

    #[test]
    fn beta_schedule_warms_up_then_falls_from_20_to_2() {
        let o = AdaroundOptions {
            iters: 100,
            ..Default::default()
        };
        assert_eq!(o.beta_at(19), None);
        assert_eq!(o.beta_at(20), Some(20.0));
        assert_eq!(o.beta_at(60), Some(11.0));
        assert_eq!(o.beta_at(100), Some(2.0));
    }
}
