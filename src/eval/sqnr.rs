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
    /// Adds a batch: `reference` is x, `approx` is x̂ (same length).
    pub fn add(&mut self, reference: &[f32], approx: &[f32]) {
        debug_assert_eq!(reference.len(), approx.len());
        for (&x, &y) in reference.iter().zip(approx) {
            let (x, y) = (x as f64, y as f64);
            self.signal += x * x;
            self.noise += (x - y) * (x - y);
        }
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
