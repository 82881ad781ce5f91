//! The `minmax` strategy: the observed minimum and maximum.

use super::histogram::Histogram;
use crate::quant::qparams::ClipRange;

/// `[min, max]` of the observed values (a symmetric scheme turns it into ±max|x| in
/// `QParams::from_range`). `[0, 0]` for an empty histogram.
pub fn range(hist: &Histogram) -> ClipRange {
    ClipRange::new(hist.min(), hist.max())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn is_the_exact_min_and_max() {
        let v = heavy(10_000, 1);
        let h = Histogram::from_values(&v);
        let r = range(&h);
        assert_eq!(r.lo, v.iter().cloned().fold(f32::INFINITY, f32::min));
        assert_eq!(r.hi, v.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(h.count_outside(r), 0);
        assert_eq!(range(&Histogram::new()), ClipRange::new(0.0, 0.0));
    }
}
