//! The `aciq` strategy (Banner et al., "ACIQ: Analytical Clipping for Integer Quantization"):
//! fit a Laplace or a Gaussian to the data and choose the clip α that minimizes the analytic
//! expected squared error: clipping term (tail integrals from statrs's `Laplace`/`Normal`
//! cdf/sf/pdf) plus rounding term Δ²/12 with the real step Δ of the scheme.
//!
//! * Signed data: a Laplace (b = mean |x − μ|) or a Gaussian (σ) centred at the mean μ; the
//!   family with the higher likelihood wins. Symmetric scheme: the range ±α
//!   (Δ = α/(2^(B−1)−1)); asymmetric: `[μ−α, μ+α]` clamped to the data and widened to include 0
//!   as `from_range` does (Δ = width/(2^B−1)).
//! * One-sided data (min ≥ 0, e.g. post-ReLU): the positive part is fitted with the half
//!   families (exponential, b = mean; half-normal, σ² = mean x²) and clipped at `[0, α]`
//!   (asymmetric: 2^B levels, Δ = α/(2^B−1); symmetric: Δ = α/(2^(B−1)−1)).
//! * Spikes: exact zeros cost nothing (always representable) and are left out of the fit.
//!   Any other heavy single value (a histogram bin dominated by one value repeated in at least
//!   1% of the values, e.g. MNIST's background −0.4242 or a ReLU(bias) constant) is also left
//!   out of the fit and its error is computed exactly with `fake_quant` for each candidate α.
//!   Without this, the fitted scale collapses onto the spike and the clip cuts off the real
//!   signal.
//!
//! The minimum over α is found numerically (grid over (0, α_max], then golden-section
//! refinement), not from a table; the paper's table is reproduced by the tests. The result is
//! clamped to `[min, max]` of the data.

use super::histogram::{Cell, Histogram};
use crate::quant::qparams::{ClipRange, QParams};
use crate::quant::scheme::Scheme;
use statrs::distribution::{Continuous, ContinuousCDF, Laplace, Normal};

/// The fitted family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Laplace (signed data) or exponential (one-sided data).
    Laplace,
    /// Gaussian (signed data) or half-normal (one-sided data).
    Gaussian,
}

/// A fitted distribution: `scale` is b for Laplace, σ for Gaussian; `one_sided` means the
/// half distribution on [0, ∞) (then `mu` is 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// The family with the higher likelihood.
    pub family: Family,
    /// Location (the mean of the fitted values; 0 for one-sided fits).
    pub mu: f64,
    /// b (Laplace/exponential) or σ (Gaussian/half-normal); > 0.
    pub scale: f64,
    /// True for a half distribution on [0, ∞).
    pub one_sided: bool,
}

impl Fit {
    /// E[(X − x)²; X > x]: the squared error of clipping the upper tail at x. A scale that
    /// is not > 0 is treated as a point mass at `mu`.
    pub fn upper_tail(&self, x: f64) -> f64 {
        let s = self.scale;
        if s.is_nan() || s <= 0.0 {
            return (self.mu - x).max(0.0).powi(2);
        }
        let std_normal = Normal::new(0.0, 1.0).expect("valid");
        match (self.family, self.one_sided) {
            (Family::Laplace, false) => {
                let l = Laplace::new(self.mu, s).expect("scale > 0");
                let d = x - self.mu;
                if d >= 0.0 {
                    2.0 * s * s * l.sf(x)
                } else {
                    2.0 * s * s + d * d - 2.0 * s * s * l.cdf(x)
                }
            }
            (Family::Gaussian, false) => {
                let z = (x - self.mu) / s;
                s * s * ((1.0 + z * z) * std_normal.sf(z) - z * std_normal.pdf(z))
            }
            (Family::Laplace, true) if x >= 0.0 => {
                // Exponential(b): P(X > x) = e^{−x/b} = 2·sf of Laplace(0, b), and
                // E[(X−x)²; X>x] = P(X>x)·2b² (memoryless).
                let l = Laplace::new(0.0, s).expect("scale > 0");
                2.0 * l.sf(x) * 2.0 * s * s
            }
            (Family::Gaussian, true) if x >= 0.0 => {
                let z = x / s;
                2.0 * s * s * ((1.0 + z * z) * std_normal.sf(z) - z * std_normal.pdf(z))
            }
            // x < 0 on a half distribution: the whole E[(X − x)²] = E[X²] − 2x·E[X] + x².
            (Family::Laplace, true) => 2.0 * s * s - 2.0 * x * s + x * x,
            (Family::Gaussian, true) => {
                s * s - 2.0 * x * s * (2.0 / std::f64::consts::PI).sqrt() + x * x
            }
        }
    }

    /// E[(x − X)²; X < x]: the squared error of clipping the lower tail at x.
    pub fn lower_tail(&self, x: f64) -> f64 {
        if self.one_sided {
            return 0.0;
        }
        // Symmetric about μ: reflect.
        self.upper_tail(2.0 * self.mu - x)
    }
}

/// The clip α/scale that minimizes `2·tail(α) + (2α/levels)²/12` for a zero-mean symmetric
/// `family` with scale 1: the ACIQ formula with `levels` quantization steps over `[−α, α]`
/// (the paper uses `levels = 2^M`).
pub fn optimal_alpha(family: Family, levels: f64) -> f64 {
    let fit = Fit {
        family,
        mu: 0.0,
        scale: 1.0,
        one_sided: false,
    };
    let f = |a: f64| 2.0 * fit.upper_tail(a) + (2.0 * a / levels).powi(2) / 12.0;
    minimize(f, 1e-3, 40.0).0
}

/// Grid of 256 points over [lo, hi] then golden-section refinement around the best.
fn minimize(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> (f64, f64) {
    const N: usize = 256;
    let step = (hi - lo) / N as f64;
    let mut best = (hi, f(hi));
    for k in (0..N).rev() {
        let x = lo + step * k as f64;
        let e = f(x);
        if e < best.1 {
            best = (x, e);
        }
    }
    let (mut a, mut b) = ((best.0 - step).max(lo), (best.0 + step).min(hi));
    let g = 0.5 * (5f64.sqrt() - 1.0);
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    let x = 0.5 * (a + b);
    let e = f(x);
    if e < best.1 { (x, e) } else { best }
}

/// Splits the histogram into fitted ("continuous") cells and spikes.
fn split(hist: &Histogram, one_sided: bool) -> (Vec<Cell>, Vec<Cell>) {
    let (mut cont, spikes) = hist.split_spikes();
    let spikes: Vec<Cell> = spikes.into_iter().map(|(_, c)| c).collect();
    // Exact zeros: left out when they are a spike (they cost nothing) or the data is one-sided
    // (the fit is to the positive part); otherwise they are ordinary values at 0.
    let z = hist.zeros() as f64;
    if z > 0.0 && !one_sided && z < hist.spike_min() {
        let at = cont.partition_point(|c| c.mean() < 0.0);
        cont.insert(
            at,
            Cell {
                lo: 0.0,
                hi: 0.0,
                count: z,
            },
        );
    }
    (cont, spikes)
}

/// Fits both families to `cells` and keeps the more likely one (None without spread).
pub(crate) fn fit(cells: &[Cell], one_sided: bool) -> Option<Fit> {
    let n: f64 = cells.iter().map(|c| c.count).sum();
    if n <= 0.0 {
        return None;
    }
    // Cells are uniform on [lo, hi]: mean (lo+hi)/2, variance (hi−lo)²/12.
    let ex2 = |c: &Cell| c.mean().powi(2) + (c.hi - c.lo).powi(2) / 12.0;
    let (mu, var, b) = if one_sided {
        let mean = cells.iter().map(|c| c.count * c.mean()).sum::<f64>() / n;
        let m2 = cells.iter().map(|c| c.count * ex2(c)).sum::<f64>() / n;
        (0.0, m2, mean)
    } else {
        let mu = cells.iter().map(|c| c.count * c.mean()).sum::<f64>() / n;
        let var = (cells.iter().map(|c| c.count * ex2(c)).sum::<f64>() / n - mu * mu).max(0.0);
        let mad = cells
            .iter()
            .map(|c| {
                let e = if c.hi <= mu || c.lo >= mu {
                    (c.mean() - mu).abs()
                } else {
                    ((c.hi - mu).powi(2) + (mu - c.lo).powi(2)) / (2.0 * (c.hi - c.lo))
                };
                c.count * e
            })
            .sum::<f64>()
            / n;
        (mu, var, mad)
    };
    let sigma = var.sqrt();
    let scale_floor = 1e-12 * (mu.abs() + sigma + b);
    if !(sigma > scale_floor && b > scale_floor) {
        return None;
    }
    // Average log-likelihood per value of each family (at its fitted parameters).
    let (ll_laplace, ll_gauss) = if one_sided {
        (
            -b.ln() - 1.0,
            0.5 * (2.0 / std::f64::consts::PI).ln() - sigma.ln() - 0.5,
        )
    } else {
        (
            -(2.0 * b).ln() - 1.0,
            -0.5 * (std::f64::consts::TAU * var).ln() - 0.5,
        )
    };
    let (family, scale) = if ll_laplace >= ll_gauss {
        (Family::Laplace, b)
    } else {
        (Family::Gaussian, sigma)
    };
    Some(Fit {
        family,
        mu,
        scale,
        one_sided,
    })
}

/// The clipping range ACIQ chooses.
pub fn range(hist: &Histogram, bits: u8, scheme: Scheme) -> ClipRange {
    let (min, max) = (hist.min() as f64, hist.max() as f64);
    let minmax = ClipRange::new(hist.min(), hist.max());
    if hist.count() == 0 || (min == 0.0 && max == 0.0) {
        return ClipRange::new(0.0, 0.0);
    }
    let one_sided = min >= 0.0;
    let (cont, spikes) = split(hist, one_sided);
    let Some(fit) = fit(&cont, one_sided) else {
        return minmax;
    };
    let n_cont: f64 = cont.iter().map(|c| c.count).sum();
    let amax = hist.abs_max() as f64;
    let make = |alpha: f64| -> ClipRange {
        match (one_sided, scheme) {
            (true, _) => ClipRange::new(0.0, alpha as f32),
            (false, Scheme::Symmetric) => ClipRange::new(-alpha as f32, alpha as f32),
            (false, Scheme::Asymmetric) => ClipRange::new(
                (fit.mu - alpha).max(min) as f32,
                (fit.mu + alpha).min(max) as f32,
            ),
        }
    };
    let cost = |alpha: f64| -> f64 {
        let q = QParams::from_range(make(alpha), bits, scheme);
        let rep = q.representable();
        let step = q.scale as f64;
        let cont_err =
            fit.upper_tail(rep.hi as f64) + fit.lower_tail(rep.lo as f64) + step * step / 12.0;
        let spike_err: f64 = spikes
            .iter()
            .map(|s| {
                let x = s.lo as f32;
                s.count * (q.fake_quant(x) as f64 - x as f64).powi(2)
            })
            .sum();
        n_cont * cont_err + spike_err
    };
    let alpha_max = match (one_sided, scheme) {
        (true, _) => max,
        (false, Scheme::Symmetric) => amax,
        (false, Scheme::Asymmetric) => (fit.mu - min).max(max - fit.mu),
    };
    if alpha_max.is_nan() || alpha_max <= 0.0 {
        return minmax;
    }
    let (alpha, _) = minimize(cost, alpha_max * 1e-3, alpha_max);
    make(alpha)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn reproduces_the_paper_table() {
        // Banner et al., α/b (Laplace) and α/σ (Gaussian) for 2..=8 bits, 2^M levels.
        let laplace = [2.83, 3.89, 5.03, 6.20, 7.41, 8.64, 9.89];
        let gauss = [1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92];
        for (k, m) in (2..=8).enumerate() {
            let levels = (1u32 << m) as f64;
            let a = optimal_alpha(Family::Laplace, levels);
            assert!((a - laplace[k]).abs() < 0.01, "laplace {m} bits: {a}");
            let g = optimal_alpha(Family::Gaussian, levels);
            assert!((g - gauss[k]).abs() < 0.01, "gauss {m} bits: {g}");
        }
    }

    #[test]
    fn tails_match_numeric_integration() {
        for fit in [
            Fit {
                family: Family::Laplace,
                mu: 0.3,
                scale: 0.7,
                one_sided: false,
            },
            Fit {
                family: Family::Gaussian,
                mu: -0.2,
                scale: 1.3,
                one_sided: false,
            },
            Fit {
                family: Family::Laplace,
                mu: 0.0,
                scale: 0.7,
                one_sided: true,
            },
            Fit {
                family: Family::Gaussian,
                mu: 0.0,
                scale: 1.3,
                one_sided: true,
            },
        ] {
            let pdf = |x: f64| -> f64 {
                let s = fit.scale;
                match (fit.family, fit.one_sided) {
                    (Family::Laplace, false) => (-(x - fit.mu).abs() / s).exp() / (2.0 * s),
                    (Family::Gaussian, false) => {
                        (-(x - fit.mu).powi(2) / (2.0 * s * s)).exp()
                            / (s * (std::f64::consts::TAU).sqrt())
                    }
                    (Family::Laplace, true) if x >= 0.0 => (-x / s).exp() / s,
                    (Family::Gaussian, true) if x >= 0.0 => {
                        2.0 * (-x * x / (2.0 * s * s)).exp() / (s * (std::f64::consts::TAU).sqrt())
                    }
                    _ => 0.0,
                }
            };
            for x in [-2.0, -0.5, 0.0, 0.4, 1.0, 3.0] {
                // Trapezoid rule on a fine grid.
                let (a, b, n) = (-40.0, 40.0, 400_000);
                let h = (b - a) / n as f64;
                let (mut up, mut lo) = (0.0, 0.0);
                for i in 0..=n {
                    let t = a + h * i as f64;
                    let w = if i == 0 || i == n { 0.5 } else { 1.0 } * h * pdf(t);
                    if t > x {
                        up += w * (t - x).powi(2);
                    }
                    if t < x {
                        lo += w * (x - t).powi(2);
                    }
                }
                assert!(
                    (fit.upper_tail(x) - up).abs() < 1e-4 * (1.0 + up),
                    "{fit:?} x={x}"
                );
                if !fit.one_sided {
                    assert!(
                        (fit.lower_tail(x) - lo).abs() < 1e-4 * (1.0 + lo),
                        "{fit:?} x={x}"
                    );
                }
            }
        }
    }

    #[test]
    fn fits_pick_the_right_family_and_clip() {
        let mut r = Rng::new(1);
        let lap: Vec<f32> = (0..200_000).map(|_| r.laplace(0.5) as f32).collect();
        let gau: Vec<f32> = (0..200_000).map(|_| r.normal() as f32 * 0.5).collect();
        for (name, v, fam, sc) in [
            ("laplace", &lap, Family::Laplace, 0.5),
            ("gauss", &gau, Family::Gaussian, 0.5),
        ] {
            let h = Histogram::from_values(v);
            let (cont, _) = split(&h, false);
            let f = fit(&cont, false).unwrap();
            assert_eq!(f.family, fam, "{name}");
            assert!((f.scale - sc).abs() < 0.01, "{name}: {f:?}");
            // Asymmetric 4 bits: 15 steps over 2α; compare α/scale with the optimum for
            // that many levels (a numeric minimization independent of the histogram).
            let rg = range(&h, 4, Scheme::Asymmetric);
            let alpha = (rg.hi - rg.lo) as f64 / 2.0 / sc;
            let want = optimal_alpha(fam, 15.0);
            assert!(
                (alpha - want).abs() < 0.05 * want,
                "{name}: {alpha} vs {want}"
            );
        }
        // One-sided: an exponential positive part is fitted by the half family, clipped at
        // the optimum of the Laplace with twice the levels over [−α, α].
        let exp: Vec<f32> = (0..200_000)
            .map(|i| {
                if i % 2 == 0 {
                    0.0
                } else {
                    r.laplace(0.4).abs() as f32
                }
            })
            .collect();
        let h = Histogram::from_values(&exp);
        let rg = range(&h, 4, Scheme::Asymmetric);
        assert_eq!(rg.lo, 0.0);
        let want = optimal_alpha(Family::Laplace, 30.0) * 0.4;
        assert!(
            (rg.hi as f64 - want).abs() < 0.05 * want,
            "{rg:?} vs {want}"
        );
    }
}
