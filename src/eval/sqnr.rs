//! Signal-to-quantization-noise ratio, pooled over many batches.

/// Running sums for SQNR = 10·log10(Σx² / Σ(x − x̂)²).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SqnrAcc {
    /// Σ x² of the reference.
    pub signal: f64,
    /// Σ (x − x̂)².
    pub noise: f64,
}

impl SqnrAcc {
    /// Adds a batch: `reference` is x, `approx` is x̂ (same length). Sums in f64 over eight
    /// interleaved lanes (a fixed order, so the result is the same on every run; the lanes let
    /// the additions overlap instead of waiting on one another).
    pub fn add(&mut self, reference: &[f32], approx: &[f32]) {
        debug_assert_eq!(reference.len(), approx.len());
        const L: usize = 8;
        let (mut sig, mut noi) = ([0f64; L], [0f64; L]);
        let (xs, ys) = (reference.chunks_exact(L), approx.chunks_exact(L));
        let (xt, yt) = (xs.remainder(), ys.remainder());
        for (x, y) in xs.zip(ys) {
            for l in 0..L {
                let (a, b) = (x[l] as f64, y[l] as f64);
                sig[l] += a * a;
                noi[l] += (a - b) * (a - b);
            }
        }
        for (l, (&a, &b)) in xt.iter().zip(yt).enumerate() {
            let (a, b) = (a as f64, b as f64);
            sig[l] += a * a;
            noi[l] += (a - b) * (a - b);
        }
        self.signal += sig.iter().sum::<f64>();
        self.noise += noi.iter().sum::<f64>();
    }

    /// Combines two partial sums.
    pub fn merge(&mut self, other: &SqnrAcc) {
        self.signal += other.signal;
        self.noise += other.noise;
    }

    /// The SQNR in dB, `None` when there is no error at all (or no signal).
    pub fn db(&self) -> Option<f64> {
        if self.noise > 0.0 && self.signal > 0.0 {
            Some(10.0 * (self.signal / self.noise).log10())
        } else {
            None
        }
    }
}

/// SQNR in dB of `approx` against `reference`; `None` if they are equal.
pub fn sqnr_db(reference: &[f32], approx: &[f32]) -> Option<f64> {
    let mut acc = SqnrAcc::default();
    acc.add(reference, approx);
    acc.db()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_match_a_direct_loop() {
        let x: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let y: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + (i % 7) as f32 * 1e-3)
            .collect();
        let (mut s, mut n) = (0f64, 0f64);
        for (&a, &b) in x.iter().zip(&y) {
            s += (a as f64).powi(2);
            n += (a as f64 - b as f64).powi(2);
        }
        let mut acc = SqnrAcc::default();
        acc.add(&x, &y);
        assert!((acc.signal - s).abs() <= 1e-12 * s && (acc.noise - n).abs() <= 1e-12 * n);
    }

    #[test]
    fn sqnr_by_hand() {
        // Σx² = 1 + 4 = 5, noise = 0.01 + 0.04 = 0.05 → 10·log10(100) = 20 dB.
        let db = sqnr_db(&[1.0, 2.0], &[1.1, 1.8]).unwrap();
        assert!((db - 20.0).abs() < 1e-4, "{db}");
        assert_eq!(sqnr_db(&[1.0], &[1.0]), None);
        let mut a = SqnrAcc::default();
        a.add(&[1.0], &[1.1]);
        let mut b = SqnrAcc::default();
        b.add(&[2.0], &[1.8]);
        a.merge(&b);
        assert!((a.db().unwrap() - 20.0).abs() < 1e-4);
    }
}
