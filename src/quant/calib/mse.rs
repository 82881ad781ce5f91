//! The `mse` strategy: the clip that minimizes the expected squared quantization error over
//! the histogram, computed with the real arithmetic of formats.md §3.
//!
//! Each candidate range goes through [`QParams::from_range`]; the error of every histogram
//! cell is then computed exactly for that integer grid (scale, zero point, saturation at
//! qmin/qmax): point cells (a single repeated value, e.g. MNIST's background) by rounding
//! them as `fake_quant` does, interval cells by integrating the squared error of a uniform
//! spread in closed form; exact zeros cost nothing (0 is always representable). Clipped tails
//! are included as they are saturated by the grid.
//!
//! Search: a scale factor `f` of the min/max range over 100 steps in (0, 1], evaluated with a
//! coarser model (neighbouring cells within 1/192 of the data's extent merged into uniform
//! intervals; spikes and isolated values kept exact), then refined with 12 steps around the
//! best with the exact model. Signed data with the asymmetric scheme then refines the lower and
//! the upper end separately (coordinate search, 40 + 12 steps each).

use super::histogram::{Cell, Histogram};
use crate::quant::qparams::{ClipRange, QParams, qmax, qmin};
use crate::quant::scheme::Scheme;

const COARSE: usize = 100;
/// Cells of the model used for the coarse grid.
const COARSE_CELLS: usize = 192;
const FINE: usize = 12;
/// 1.5·2^52: adding and subtracting it rounds an f64 (|x| < 2^51) to an integer.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// The histogram as point masses and uniform intervals, in struct-of-arrays form.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorModel {
    px: Vec<f64>,
    pw: Vec<f64>,
    ia: Vec<f64>,
    ib: Vec<f64>,
    iw: Vec<f64>,
}

#[inline]
fn round_int(x: f64) -> f64 {
    (x + ROUND_MAGIC) - ROUND_MAGIC
}

/// `x` clamped into `[lo, hi]` with plain selects (vectorizes; no NaN handling needed).
#[inline]
fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    let x = if x < lo { lo } else { x };
    if x > hi { hi } else { x }
}

/// ∫ (Q(u) − u)² du from a fixed origin to `t`, where Q rounds to the nearest integer and
/// saturates at `tlo`/`thi` (all in units of the scale).
#[inline]
fn err_integral(t: f64, tlo: f64, thi: f64) -> f64 {
    let c = clamp(t, tlo, thi);
    let n = round_int(c);
    let d = c - n;
    let e = t - c;
    n * (1.0 / 12.0) + (d * d * d + 0.125) * (1.0 / 3.0) + e * e * e * (1.0 / 3.0)
}

impl ErrorModel {
    /// The model of `hist` (exact zeros left out: they are always exactly representable).
    #[cfg(test)]
    pub fn new(hist: &Histogram) -> Self {
        Self::from_cells(&hist.cells(), hist.abs_max() as f64)
    }

    /// The model of `cells`. Intervals narrower than 1e-6·max|x| count as points (this also
    /// keeps the integral's difference well conditioned).
    fn from_cells(cells: &[Cell], abs_max: f64) -> Self {
        let mut m = ErrorModel::default();
        let tiny = 1e-6 * abs_max;
        for c in cells {
            if c.hi - c.lo <= tiny {
                m.px.push(c.mean());
                m.pw.push(c.count);
            } else {
                m.ia.push(c.lo);
                m.ib.push(c.hi);
                m.iw.push(c.count / (c.hi - c.lo));
            }
        }
        m
    }

    /// Total (count-weighted) squared error of quantizing the modelled values with `q`.
    pub fn sq_error(&self, q: &QParams) -> f64 {
        let s = q.scale as f64;
        let inv = 1.0 / s;
        let zp = q.zero_point as f64;
        let tlo = qmin(q.bits, q.scheme) as f64 - zp;
        let thi = qmax(q.bits) as f64 - zp;
        let mut acc = [0.0f64; 4];
        let pc = self.px.chunks_exact(4);
        let wc = self.pw.chunks_exact(4);
        let (pr, wr) = (pc.remainder(), wc.remainder());
        for (xs, ws) in pc.zip(wc) {
            for k in 0..4 {
                let t = xs[k] * inv;
                let d = t - round_int(clamp(t, tlo, thi));
                acc[k] += ws[k] * d * d;
            }
        }
        for (x, w) in pr.iter().zip(wr) {
            let t = x * inv;
            let d = t - round_int(clamp(t, tlo, thi));
            acc[0] += w * d * d;
        }
        // Intervals: count/(width) · ∫ err over [a, b]; the integral is in scale units, so the
        // density is scaled by `inv` and the result by s² (done once at the end): s·E.
        let mut acc2 = [0.0f64; 4];
        let n = self.ia.len();
        let (ia, ib, iw) = (&self.ia[..n], &self.ib[..n], &self.iw[..n]);
        let mut k = 0;
        while k + 4 <= n {
            for l in 0..4 {
                let e = err_integral(ib[k + l] * inv, tlo, thi)
                    - err_integral(ia[k + l] * inv, tlo, thi);
                acc2[l] += iw[k + l] * e;
            }
            k += 4;
        }
        while k < n {
            let e = err_integral(ib[k] * inv, tlo, thi) - err_integral(ia[k] * inv, tlo, thi);
            acc2[0] += iw[k] * e;
            k += 1;
        }
        (acc.iter().sum::<f64>()) * s * s + acc2.iter().sum::<f64>() * s * s * s
    }

    /// A cheaper model of `cells` (sorted) for the coarse search: neighbouring cells within
    /// one of COARSE_CELLS equal slices of the data's extent become one uniform interval over
    /// their own extent with their total count; heavy cells (≥ `heavy` values: spikes) and
    /// isolated cells (sparse tails, outliers) stay exact.
    fn coarse(cells: &[Cell], abs_max: f64, heavy: f64) -> ErrorModel {
        let (Some(first), Some(last)) = (cells.first(), cells.last()) else {
            return ErrorModel::default();
        };
        let width = (last.hi - first.lo) / COARSE_CELLS as f64;
        let mut out: Vec<Cell> = Vec::with_capacity(2 * COARSE_CELLS);
        let mut run: Option<Cell> = None;
        for c in cells {
            if c.count >= heavy {
                out.extend(run.take());
                out.push(*c);
                continue;
            }
            run = match run {
                Some(r) if c.hi - r.lo <= width => Some(Cell {
                    lo: r.lo,
                    hi: c.hi,
                    count: r.count + c.count,
                }),
                other => {
                    out.extend(other);
                    Some(*c)
                }
            };
        }
        out.extend(run);
        Self::from_cells(&out, abs_max)
    }

    /// Error of the range `[lo, hi]`.
    fn eval(&self, lo: f64, hi: f64, bits: u8, scheme: Scheme) -> f64 {
        let q = QParams::from_range(ClipRange::new(lo as f32, hi as f32), bits, scheme);
        self.sq_error(&q)
    }
}

/// Minimizes over x in (0, 1]: a grid of `n` steps with the cheap model `coarse`, then the
/// exact model `fine` at the best grid point and FINE steps around it. Ties keep the larger x
/// (clip less when it costs nothing).
fn search(n: usize, coarse: impl Fn(f64) -> f64, fine: impl Fn(f64) -> f64) -> f64 {
    let mut best = (1.0, coarse(1.0));
    for k in (1..n).rev() {
        let x = k as f64 / n as f64;
        let e = coarse(x);
        if e < best.1 {
            best = (x, e);
        }
    }
    let c = best.0;
    let mut best = (c, fine(c));
    let step = 1.0 / n as f64;
    for k in (1..FINE).rev() {
        let x = c - step + 2.0 * step * k as f64 / FINE as f64;
        if x <= 0.0 || x > 1.0 || x == c {
            continue;
        }
        let e = fine(x);
        if e < best.1 {
            best = (x, e);
        }
    }
    best.0
}

/// The range with the least expected squared error for `bits` and `scheme`.
pub fn range(hist: &Histogram, bits: u8, scheme: Scheme) -> ClipRange {
    let (min, max) = (hist.min() as f64, hist.max() as f64);
    if hist.count() == 0 || (min == 0.0 && max == 0.0) {
        return ClipRange::new(0.0, 0.0);
    }
    let cells = hist.cells();
    let m = ErrorModel::from_cells(&cells, hist.abs_max() as f64);
    let mc = ErrorModel::coarse(&cells, hist.abs_max() as f64, hist.spike_min());
    let ev = |model: &ErrorModel, lo: f64, hi: f64| model.eval(lo, hi, bits, scheme);
    match scheme {
        Scheme::Symmetric => {
            let a = hist.abs_max() as f64;
            let f = search(
                COARSE,
                |f| ev(&mc, -a * f, a * f),
                |f| ev(&m, -a * f, a * f),
            );
            ClipRange::new((-a * f) as f32, (a * f) as f32)
        }
        Scheme::Asymmetric if min >= 0.0 => {
            let f = search(COARSE, |f| ev(&mc, 0.0, max * f), |f| ev(&m, 0.0, max * f));
            ClipRange::new(hist.min(), (max * f) as f32)
        }
        Scheme::Asymmetric if max <= 0.0 => {
            let f = search(COARSE, |f| ev(&mc, min * f, 0.0), |f| ev(&m, min * f, 0.0));
            ClipRange::new((min * f) as f32, hist.max())
        }
        Scheme::Asymmetric => {
            let f = search(
                COARSE,
                |f| ev(&mc, min * f, max * f),
                |f| ev(&m, min * f, max * f),
            );
            // Coordinate search: the lower end, then the upper end, each over (0, 1] of the
            // data's own side.
            let n = 40;
            let a = search(
                n,
                |x| ev(&mc, min * x, max * f),
                |x| ev(&m, min * x, max * f),
            );
            let b = search(
                n,
                |x| ev(&mc, min * a, max * x),
                |x| ev(&m, min * a, max * x),
            );
            ClipRange::new((min * a) as f32, (max * b) as f32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn model_error_matches_true_error() {
        // The model's error for a given range is the real quantization error of the values
        // (up to the within-bin spread), for smooth and spiky data.
        let mut r = Rng::new(1);
        let normal: Vec<f32> = (0..50_000).map(|_| r.normal() as f32).collect();
        for (name, v) in [
            ("normal", normal),
            ("mnist", mnist_like(50_000, 2)),
            ("relu", post_relu(50_000, 3)),
        ] {
            let h = Histogram::from_values(&v);
            let m = ErrorModel::new(&h);
            for bits in [2u8, 4, 8] {
                for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                    for f in [0.1f32, 0.37, 0.8, 1.0] {
                        let rg = ClipRange::new(h.min() * f, h.max() * f);
                        let q = QParams::from_range(rg, bits, scheme);
                        let model = m.sq_error(&q) / v.len() as f64;
                        let truth = true_mse(&v, rg, bits, scheme);
                        assert!(
                            (model - truth).abs() <= 0.03 * truth + 1e-12,
                            "{name} {bits} {scheme} f={f}: model {model:e} truth {truth:e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn close_to_brute_force_optimum() {
        let mut r = Rng::new(4);
        let sets: Vec<(&str, Vec<f32>)> = vec![
            ("gauss", (0..8000).map(|_| r.normal() as f32).collect()),
            (
                "laplace",
                (0..8000).map(|_| r.laplace(0.3) as f32 + 0.1).collect(),
            ),
            ("relu", post_relu(8000, 5)),
            ("mnist", mnist_like(8000, 6)),
            ("heavy", heavy(8000, 7)),
        ];
        for (name, v) in &sets {
            let h = Histogram::from_values(v);
            for bits in [2u8, 3, 4, 6, 8] {
                for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                    let chosen = range(&h, bits, scheme);
                    let e = true_mse(v, chosen, bits, scheme);
                    let (br, best) = brute_best(v, bits, scheme);
                    assert!(
                        e <= best * 1.05,
                        "{name} {bits} {scheme}: {chosen:?} mse {e:e} vs brute {br:?} {best:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn uniform_data_is_not_clipped_much() {
        // For a uniform distribution the optimum clips almost nothing.
        let v: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0 - 0.3).collect();
        let h = Histogram::from_values(&v);
        let r = range(&h, 8, Scheme::Asymmetric);
        assert!(r.hi > 0.69 && r.lo < -0.29, "{r:?}");
    }
}
