//! Summary statistics (count, range, mean, std, skewness, kurtosis) that can be computed in one
//! shot from a slice or accumulated batch by batch and merged exactly.

use serde::{Deserialize, Serialize};

/// Summary statistics of a set of values, for reports, the UI and the ACIQ fit.
///
/// Non-finite values are not part of any statistic (they are ignored where values are read).
/// All moments are population moments (divide by `count`, not `count − 1`).
/// An empty set has `count` 0 and every other field 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of values.
    pub count: u64,
    /// Number of values that are exactly zero (+0.0 or −0.0).
    pub zeros: u64,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Skewness m3 / m2^1.5 (0 when the standard deviation is 0).
    pub skewness: f64,
    /// **Excess** kurtosis m4 / m2² − 3: 0 for a Gaussian, 3 for a Laplace, −1.2 for a uniform
    /// (0 when the standard deviation is 0).
    pub kurtosis: f64,
}

impl Stats {
    /// Exact statistics of `values` (two passes in f64); non-finite values are skipped.
    pub fn of(values: &[f32]) -> Stats {
        let mut m = Moments::default();
        let (mut min, mut max, mut zeros) = (f32::INFINITY, f32::NEG_INFINITY, 0u64);
        let mut sum = 0.0f64;
        for &v in values.iter().filter(|v| v.is_finite()) {
            m.n += 1;
            sum += v as f64;
            min = min.min(v);
            max = max.max(v);
            zeros += (v == 0.0) as u64;
        }
        if m.n == 0 {
            return Stats::empty();
        }
        m.mean = sum / m.n as f64;
        for &v in values.iter().filter(|v| v.is_finite()) {
            let d = v as f64 - m.mean;
            let d2 = d * d;
            m.m2 += d2;
            m.m3 += d2 * d;
            m.m4 += d2 * d2;
        }
        m.to_stats(min, max, zeros)
    }

    /// The statistics of no values at all.
    pub fn empty() -> Stats {
        Stats {
            count: 0,
            zeros: 0,
            min: 0.0,
            max: 0.0,
            mean: 0.0,
            std: 0.0,
            skewness: 0.0,
            kurtosis: 0.0,
        }
    }

    /// max(|min|, |max|): the range a symmetric min/max quantizer must cover.
    pub fn abs_max(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }
}

/// Count, mean and central moment sums M2, M3, M4 (Σ(x−mean)^k); combinable exactly in
/// the algebraic sense (Chan et al. / Pébay's pairwise update), so batch order only affects
/// floating-point rounding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Moments {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
}

impl Moments {
    /// The moments of the union of two disjoint sets.
    pub fn combine(a: &Moments, b: &Moments) -> Moments {
        if a.n == 0 {
            return *b;
        }
        if b.n == 0 {
            return *a;
        }
        let (na, nb) = (a.n as f64, b.n as f64);
        let n = na + nb;
        let d = b.mean - a.mean;
        let d_n = d / n;
        let d2 = d * d;
        let mean = a.mean + d * nb / n;
        let m2 = a.m2 + b.m2 + d2 * na * nb / n;
        let m3 =
            a.m3 + b.m3 + d2 * d_n * na * nb * (na - nb) / n + 3.0 * d_n * (na * b.m2 - nb * a.m2);
        let m4 = a.m4
            + b.m4
            + d2 * d_n * d_n * na * nb * (na * na - na * nb + nb * nb) / n
            + 6.0 * d_n * d_n * (na * na * b.m2 + nb * nb * a.m2)
            + 4.0 * d_n * (na * b.m3 - nb * a.m3);
        Moments {
            n: a.n + b.n,
            mean,
            m2,
            m3,
            m4,
        }
    }

    /// Moments of a batch with all values finite: mean first, then central sums (two passes,
    /// 4 accumulator lanes so the loop vectorizes).
    pub fn of_finite(values: &[f32], sum: f64) -> Moments {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected just above.
            return unsafe { of_finite_avx2(values, sum) };
        }
        of_finite_body(values, sum)
    }

    /// Turns the sums into [`Stats`].
    pub fn to_stats(self, min: f32, max: f32, zeros: u64) -> Stats {
        if self.n == 0 {
            return Stats::empty();
        }
        let n = self.n as f64;
        let var = (self.m2 / n).max(0.0);
        let std = var.sqrt();
        // Relative threshold: a variance that is only rounding noise counts as zero.
        let tiny = var <= 1e-24 * (self.mean * self.mean).max(f64::MIN_POSITIVE);
        let (skewness, kurtosis) = if std > 0.0 && !tiny {
            (self.m3 / n / (var * std), self.m4 / n / (var * var) - 3.0)
        } else {
            (0.0, 0.0)
        };
        Stats {
            count: self.n,
            zeros,
            min,
            max,
            mean: self.mean,
            std,
            skewness,
            kurtosis,
        }
    }
}

/// [`Moments::of_finite`] with AVX2 enabled: the same operations per lane, so the same sums.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn of_finite_avx2(values: &[f32], sum: f64) -> Moments {
    of_finite_body(values, sum)
}

#[inline(always)]
fn of_finite_body(values: &[f32], sum: f64) -> Moments {
    let n = values.len();
    if n == 0 {
        return Moments::default();
    }
    let mean = sum / n as f64;
    let (mut s2, mut s3, mut s4) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    let chunks = values.chunks_exact(4);
    let rest = chunks.remainder();
    for ch in chunks {
        for k in 0..4 {
            let d = ch[k] as f64 - mean;
            let d2 = d * d;
            s2[k] += d2;
            s3[k] += d2 * d;
            s4[k] += d2 * d2;
        }
    }
    for &v in rest {
        let d = v as f64 - mean;
        let d2 = d * d;
        s2[0] += d2;
        s3[0] += d2 * d;
        s4[0] += d2 * d2;
    }
    Moments {
        n: n as u64,
        mean,
        m2: s2.iter().sum(),
        m3: s3.iter().sum(),
        m4: s4.iter().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct f64 reference: population moments computed from the definition.
    fn reference(v: &[f64]) -> (f64, f64, f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let m = |k: i32| v.iter().map(|x| (x - mean).powi(k)).sum::<f64>() / n;
        let var = m(2);
        (
            mean,
            var.sqrt(),
            m(3) / var.powf(1.5),
            m(4) / (var * var) - 3.0,
        )
    }

    #[test]
    fn of_matches_the_definition() {
        let v: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 * 0.013).powi(2) - 3.0)
            .collect();
        let s = Stats::of(&v);
        let (mean, std, skew, kurt) = reference(&v.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert_eq!(s.count, 1000);
        assert!((s.mean - mean).abs() < 1e-12);
        assert!((s.std - std).abs() < 1e-12);
        assert!(
            (s.skewness - skew).abs() < 1e-9,
            "{} vs {}",
            s.skewness,
            skew
        );
        assert!((s.kurtosis - kurt).abs() < 1e-9);
        assert_eq!(s.min, v.iter().cloned().fold(f32::INFINITY, f32::min));
    }

    #[test]
    fn combine_equals_all_at_once() {
        let v: Vec<f32> = (0..777)
            .map(|i| ((i as f32) * 0.7).sin() * 5.0 + 100.0)
            .collect();
        let mut acc = Moments::default();
        for part in v.chunks(100) {
            let sum = part.iter().map(|&x| x as f64).sum();
            acc = Moments::combine(&acc, &Moments::of_finite(part, sum));
        }
        let one = Moments::of_finite(&v, v.iter().map(|&x| x as f64).sum());
        assert_eq!(acc.n, one.n);
        assert!((acc.mean - one.mean).abs() < 1e-12);
        assert!((acc.m2 - one.m2).abs() < 1e-9 * one.m2);
        assert!((acc.m3 - one.m3).abs() < 1e-7 * one.m2.powf(1.5));
        assert!((acc.m4 - one.m4).abs() < 1e-9 * one.m4);
    }

    #[test]
    fn constant_and_empty_have_no_nan() {
        let s = Stats::of(&[2.5; 10]);
        assert_eq!((s.std, s.skewness, s.kurtosis), (0.0, 0.0, 0.0));
        assert_eq!(s.mean, 2.5);
        let e = Stats::of(&[]);
        assert_eq!(e.count, 0);
        assert!(!e.mean.is_nan());
        let z = Stats::of(&[0.0, -0.0, f32::NAN]);
        assert_eq!((z.count, z.zeros), (2, 2));
        // Laplace-like data has excess kurtosis near 3, a uniform near -1.2.
        let u: Vec<f32> = (0..10000).map(|i| i as f32 / 10000.0).collect();
        assert!((Stats::of(&u).kurtosis + 1.2).abs() < 0.01);
    }
}
