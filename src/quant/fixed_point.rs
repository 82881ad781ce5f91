//! Fixed-point requantization (the gemmlowp/TFLite scheme): a real multiplier as an i32
//! mantissa and a power-of-two shift, applied with integer arithmetic only.

use serde::{Deserialize, Serialize};

/// A positive real multiplier M ≈ mantissa · 2^(shift − 31), mantissa in [2^30, 2^31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedMultiplier {
    /// Q31 mantissa (0 for M = 0).
    pub mantissa: i32,
    /// Power-of-two exponent: positive shifts left, negative shifts right.
    pub shift: i32,
}

impl FixedMultiplier {
    /// The closest fixed-point representation of `m` (m ≥ 0, finite).
    pub fn from_f64(m: f64) -> Self {
        if !(m > 0.0 && m.is_finite()) {
            return FixedMultiplier {
                mantissa: 0,
                shift: 0,
            };
        }
        // m = frac · 2^exp with frac in [0.5, 1)
        let mut exp = m.log2().floor() as i32 + 1;
        let mut frac = m / 2f64.powi(exp);
        if frac >= 1.0 {
            frac /= 2.0;
            exp += 1;
        } else if frac < 0.5 {
            frac *= 2.0;
            exp -= 1;
        }
        let mut mantissa = (frac * (1i64 << 31) as f64).round() as i64;
        if mantissa == 1i64 << 31 {
            mantissa /= 2;
            exp += 1;
        }
        if exp < -62 {
            return FixedMultiplier {
                mantissa: 0,
                shift: 0,
            };
        }
        FixedMultiplier {
            mantissa: mantissa as i32,
            shift: exp,
        }
    }

    /// The real value this multiplier stands for.
    pub fn to_f64(self) -> f64 {
        self.mantissa as f64 * 2f64.powi(self.shift - 31)
    }

    /// x · M with round-half-away-from-zero, saturating to i32, integers only.
    #[inline]
    pub fn apply(self, x: i32) -> i32 {
        // Past 32 the i64 shift could overflow; any nonzero i32 saturates by then anyway.
        let left = self.shift.clamp(0, 32);
        let right = (-self.shift).max(0);
        let shifted = (x as i64) << left;
        let shifted = shifted.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(shifted, self.mantissa),
            right,
        )
    }
}

impl FixedMultiplier {
    /// x · M for a wide accumulator, rounded half away from zero (no intermediate rounding).
    #[inline]
    pub fn apply_i64(self, x: i64) -> i64 {
        let prod = x as i128 * self.mantissa as i128;
        let right = 31 - self.shift;
        if right <= 0 {
            return (prod << (-right).min(64)).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        }
        if right >= 126 {
            return 0;
        }
        let half = 1i128 << (right - 1);
        let q = if prod >= 0 {
            (prod + half) >> right
        } else {
            -((-prod + half) >> right)
        };
        q.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

/// (a · b · 2) / 2^32 rounded to nearest, saturating the one overflow case (gemmlowp's SRDHM).
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 {
        1i64 << 30
    } else {
        1 - (1i64 << 30)
    };
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// x / 2^exponent rounded half away from zero (gemmlowp's RoundingDivideByPOT).
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    if exponent <= 0 {
        return x;
    }
    if exponent >= 32 {
        return 0;
    }
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: round(x · M) half away from zero in f64.
    fn reference(x: i32, m: f64) -> f64 {
        (x as f64 * m).round()
    }

    #[test]
    fn rounding_divide_by_pot_by_hand() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3); // 2.5 → 3
        assert_eq!(rounding_divide_by_pot(-5, 1), -3); // -2.5 → -3
        assert_eq!(rounding_divide_by_pot(7, 2), 2); // 1.75 → 2
        assert_eq!(rounding_divide_by_pot(-6, 2), -2); // -1.5 → -2
        assert_eq!(rounding_divide_by_pot(-5, 2), -1); // -1.25 → -1
    }

    #[test]
    fn apply_saturates_on_huge_multipliers() {
        // Found by fuzz/onnx_model: a mutated ONNX with a huge scale ratio shifted past 63.
        for m in [2f64.powi(40), 2f64.powi(70), 1e300] {
            let f = FixedMultiplier::from_f64(m);
            assert_eq!(f.apply(0), 0);
            // Saturated before the mantissa multiply, as for any shift past 31.
            assert!(f.apply(1) >= 1 << 30);
            assert!(f.apply(-1) <= -(1 << 30));
            assert!(f.apply(i32::MIN) <= -(1 << 30));
        }
    }

    #[test]
    fn apply_i64_rounds_half_away_from_zero() {
        let half = FixedMultiplier::from_f64(0.5);
        assert_eq!(half.apply_i64(5), 3);
        assert_eq!(half.apply_i64(-5), -3);
        assert_eq!(half.apply_i64(4), 2);
        let f = FixedMultiplier::from_f64(3.0e-5);
        let x = 1i64 << 40;
        assert!((f.apply_i64(x) as f64 - x as f64 * 3.0e-5).abs() <= 1.0);
    }

    #[test]
    fn mantissa_and_shift_represent_the_multiplier() {
        for m in [1e-9, 3.3e-5, 0.00123, 0.25, 0.5, 0.7, 1.0, 1.5, 37.25] {
            let f = FixedMultiplier::from_f64(m);
            assert!(f.mantissa >= 1 << 30, "{m}: {f:?}");
            assert!((f.to_f64() - m).abs() / m < 1e-9, "{m}: {f:?}");
        }
        assert_eq!(FixedMultiplier::from_f64(0.0).mantissa, 0);
    }

    #[test]
    fn apply_matches_f64_rounding_within_one() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut exact = 0;
        for _ in 0..20000 {
            let m = 10f64.powf(-((next() % 600) as f64) / 100.0); // 1e-6 ..= 1
            let x = (next() % 2_000_001) as i32 - 1_000_000;
            let f = FixedMultiplier::from_f64(m);
            let got = f.apply(x) as f64;
            let want = reference(x, m);
            assert!((got - want).abs() <= 1.0, "x {x} m {m}: {got} vs {want}");
            exact += usize::from(got == want);
        }
        // gemmlowp rounds twice (the high multiply, then the shift), so a product just below
        // a half can round up: e.g. 690284 · 0.48978 = 338086.48 gives 338087. That is the
        // scheme's known behaviour; it stays within one and is exact almost always.
        assert!(exact > 19000, "only {exact} of 20000 exact");
    }
}
