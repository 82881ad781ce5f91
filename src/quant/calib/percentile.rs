//! The `percentile` strategy: symmetric → the P-th percentile of |x| as ±a; asymmetric → the
//! (100−P)-th and P-th percentiles of x (formats.md §3).
//!
//! Percentiles are read from the histogram's cells: exact zeros and single-valued bins are
//! point masses at their exact value, other bins spread uniformly around their exact mean, so
//! the result is within one bin width of the sorted-values percentile.

use super::histogram::{Cell, Histogram};
use crate::quant::qparams::ClipRange;
use crate::quant::scheme::Scheme;

/// The clipping range for percentile `p` (in (0, 100]; clamped into [0, 100]).
pub fn range(hist: &Histogram, scheme: Scheme, p: f64) -> ClipRange {
    let q = if p.is_finite() {
        (p / 100.0).clamp(0.0, 1.0)
    } else {
        1.0
    };
    match scheme {
        Scheme::Symmetric => {
            let a = quantile_abs(hist, q) as f32;
            ClipRange::new(-a, a)
        }
        Scheme::Asymmetric => {
            let (lo, hi) = (quantile(hist, 1.0 - q), quantile(hist, q));
            ClipRange::new(lo as f32, hi as f32)
        }
    }
}

/// The `q`-quantile (0..=1) of the values: the x below which a fraction `q` of them lies
/// (`q = 0` → min, `q = 1` → max). 0 for an empty histogram.
pub fn quantile(hist: &Histogram, q: f64) -> f64 {
    let mut cells = hist.cells();
    insert_zeros(&mut cells, hist.zeros());
    walk(&cells, q, hist.min() as f64, hist.max() as f64)
}

/// The `q`-quantile (0..=1) of |x|. 0 for an empty histogram.
pub fn quantile_abs(hist: &Histogram, q: f64) -> f64 {
    let mut cells: Vec<Cell> = hist
        .cells()
        .into_iter()
        .map(|c| {
            if c.hi <= 0.0 {
                Cell {
                    lo: -c.hi,
                    hi: -c.lo,
                    count: c.count,
                }
            } else {
                c
            }
        })
        .collect();
    cells.sort_by(|a, b| a.mean().total_cmp(&b.mean()));
    insert_zeros(&mut cells, hist.zeros());
    walk(&cells, q, 0.0, hist.abs_max() as f64)
}

/// Inserts the exact zeros as a point cell in order.
fn insert_zeros(cells: &mut Vec<Cell>, zeros: u64) {
    if zeros == 0 {
        return;
    }
    let at = cells.partition_point(|c| c.mean() < 0.0);
    cells.insert(
        at,
        Cell {
            lo: 0.0,
            hi: 0.0,
            count: zeros as f64,
        },
    );
}

/// Walks the sorted cells to the rank q·N, interpolating inside an interval cell.
fn walk(cells: &[Cell], q: f64, min: f64, max: f64) -> f64 {
    let total: f64 = cells.iter().map(|c| c.count).sum();
    if total <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return max;
    }
    let target = q * total;
    let mut cum = 0.0;
    for c in cells {
        if cum + c.count >= target {
            let f = ((target - cum) / c.count).clamp(0.0, 1.0);
            return (c.lo + f * (c.hi - c.lo)).clamp(min, max);
        }
        cum += c.count;
    }
    max
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Checks a histogram quantile against sorting: within one bin width of the values that
    /// bracket the rank.
    fn check(sorted: &[f32], q: f64, got: f64, w: f64, what: &str) {
        let pos = q * (sorted.len() - 1) as f64;
        let i0 = (pos.floor() as usize).saturating_sub(1);
        let i1 = (pos.ceil() as usize + 1).min(sorted.len() - 1);
        let (a, b) = (sorted[i0] as f64 - w, sorted[i1] as f64 + w);
        assert!(
            got >= a && got <= b,
            "{what} q={q}: {got} not in [{a}, {b}]"
        );
    }

    #[test]
    fn matches_sorting() {
        let mut r = Rng::new(1);
        let sets: Vec<(&str, Vec<f32>)> = vec![
            ("normal", (0..20_000).map(|_| r.normal() as f32).collect()),
            ("mnist", mnist_like(20_000, 2)),
            ("relu", post_relu(20_000, 3)),
            ("heavy", heavy(20_000, 4)),
        ];
        for (name, v) in &sets {
            let h = Histogram::from_values(v);
            let (_, w) = h.bin_edges();
            let mut s = v.clone();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mut abs: Vec<f32> = v.iter().map(|x| x.abs()).collect();
            abs.sort_by(|a, b| a.partial_cmp(b).unwrap());
            for q in [
                0.0, 0.001, 0.01, 0.1, 0.5, 0.79, 0.81, 0.9, 0.99, 0.999, 0.9999, 1.0,
            ] {
                check(&s, q, quantile(&h, q), w, name);
                check(&abs, q, quantile_abs(&h, q), w, &format!("{name} |x|"));
            }
            // The strategy: symmetric ±a, asymmetric both tails.
            let p = 99.9;
            let sym = range(&h, Scheme::Symmetric, p);
            check(&abs, 0.999, sym.hi as f64, w, name);
            assert_eq!(sym.lo, -sym.hi);
            let asym = range(&h, Scheme::Asymmetric, p);
            check(&s, 0.001, asym.lo as f64, w, name);
            check(&s, 0.999, asym.hi as f64, w, name);
        }
    }

    #[test]
    fn p100_is_minmax_and_spikes_are_exact() {
        let v = mnist_like(10_000, 5);
        let h = Histogram::from_values(&v);
        let r = range(&h, Scheme::Asymmetric, 100.0);
        assert_eq!((r.lo, r.hi), (h.min(), h.max()));
        // The 50th percentile sits inside the 80% background spike: exactly its value.
        assert_eq!(quantile(&h, 0.5) as f32, mnist_bg());
        let z = Histogram::from_values(&post_relu(10_000, 6));
        assert_eq!(quantile(&z, 0.5), 0.0);
    }
}
