//! Scale and zero point from a clipping range, and the rounding/clamping rules of formats.md §3.

use super::scheme::Scheme;
use serde::{Deserialize, Serialize};

/// A clipping range `[lo, hi]` chosen by a strategy (lo ≤ hi).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipRange {
    /// Lower end.
    pub lo: f32,
    /// Upper end.
    pub hi: f32,
}

impl ClipRange {
    /// A range from its two ends.
    pub fn new(lo: f32, hi: f32) -> Self {
        ClipRange { lo, hi }
    }

    /// The range scaled about zero by `factor` (used to narrow or widen it by hand).
    pub fn scaled(self, factor: f32) -> Self {
        ClipRange::new(self.lo * factor, self.hi * factor)
    }
}

/// The affine map between reals and B-bit signed integers: x ≈ scale · (q − zero_point).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// Real value of one integer step (> 0).
    pub scale: f32,
    /// The integer that represents real 0.
    pub zero_point: i32,
    /// Bit width, 2..=8.
    pub bits: u8,
    /// Symmetric or asymmetric.
    pub scheme: Scheme,
}

/// Rounds half away from zero (the rule of formats.md §3).
pub fn round_half_away(x: f64) -> f64 {
    x.round()
}

/// [`quantize_core`] over a slice.
#[inline]
fn quantize_slice(x: &[f32], out: &mut [i8], scale: f32, zp: i32, lo: i32, hi: i32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_core(v, scale, zp, lo, hi) as i8;
    }
}

/// round_half_away(x / scale) + zp clamped to [lo, hi], written so that it vectorizes
/// (truncate, then compare the exact remainder with ±0.5: the same result as `f64::round`).
#[inline(always)]
fn quantize_core(x: f32, scale: f32, zp: i32, lo: i32, hi: i32) -> i32 {
    let v = (x as f64 / scale as f64).clamp(-1e9, 1e9);
    let t = v as i64;
    let frac = v - t as f64;
    let r = t + i64::from(frac >= 0.5) - i64::from(frac <= -0.5);
    (r + zp as i64).clamp(lo as i64, hi as i64) as i32
}

/// The f32 scale `width / levels`; 1 for a zero or non-finite width, and for a width so narrow
/// that its scale is not a normal f32 (it would round to 0, a division by zero, or keep only a
/// few bits): such a range is zero to the integer grid.
fn scale_of(width: f64, levels: f64) -> f32 {
    let scale = (width / levels) as f32;
    if width.is_finite() && scale >= f32::MIN_POSITIVE {
        scale
    } else {
        1.0
    }
}

impl QParams {
    /// Scale and zero point for `range` at `bits` with `scheme`, exactly as formats.md §3 says.
    pub fn from_range(range: ClipRange, bits: u8, scheme: Scheme) -> Self {
        let (lo, hi) = (range.lo as f64, range.hi as f64);
        match scheme {
            Scheme::Symmetric => {
                let amax = lo.abs().max(hi.abs());
                let levels = ((1i64 << (bits - 1)) - 1) as f64;
                QParams {
                    scale: scale_of(amax, levels),
                    zero_point: 0,
                    bits,
                    scheme,
                }
            }
            Scheme::Asymmetric => {
                let lo = lo.min(0.0);
                let hi = hi.max(0.0);
                let levels = ((1i64 << bits) - 1) as f64;
                let width = hi - lo;
                let scale = scale_of(width, levels);
                let qmin = -(1i64 << (bits - 1)) as f64;
                let zp = round_half_away(qmin - lo / scale as f64);
                let zp = zp.clamp(qmin, (1i64 << (bits - 1)) as f64 - 1.0) as i32;
                QParams {
                    scale,
                    zero_point: zp,
                    bits,
                    scheme,
                }
            }
        }
    }

    /// Smallest integer this bit width and scheme may hold.
    pub fn qmin(&self) -> i32 {
        qmin(self.bits, self.scheme)
    }

    /// Largest integer this bit width may hold.
    pub fn qmax(&self) -> i32 {
        qmax(self.bits)
    }

    /// The integer for `x`: round(x / scale) + zero_point, clamped to [qmin, qmax].
    #[inline]
    pub fn quantize(&self, x: f32) -> i32 {
        quantize_core(x, self.scale, self.zero_point, self.qmin(), self.qmax())
    }

    /// Quantizes a slice into i8 storage (the same arithmetic as [`QParams::quantize`]).
    pub fn quantize_into(&self, x: &[f32], out: &mut [i8]) {
        let (scale, zp, lo, hi) = (self.scale, self.zero_point, self.qmin(), self.qmax());
        #[cfg(target_arch = "x86_64")]
        if super::quantize_simd::quantize_fast(x, out, scale, zp, (lo, hi)) {
            return;
        }
        quantize_slice(x, out, scale, zp, lo, hi);
    }

    /// The real value of integer `q`.
    pub fn dequantize(&self, q: i32) -> f32 {
        (self.scale as f64 * (q - self.zero_point) as f64) as f32
    }

    /// `x` quantized and dequantized again (fake quantization).
    pub fn fake_quant(&self, x: f32) -> f32 {
        self.dequantize(self.quantize(x))
    }

    /// The real interval that the integers can represent.
    pub fn representable(&self) -> ClipRange {
        ClipRange::new(self.dequantize(self.qmin()), self.dequantize(self.qmax()))
    }

    /// Checks a loaded scale and zero point; `key` names their place in the error.
    pub fn validate(&self, key: &str) -> crate::Result<()> {
        crate::quant::scheme::check_bits(&format!("{key}.bits"), self.bits)?;
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(crate::Error::config(
                format!("{key}.scale"),
                format!("scale {} must be finite and > 0", self.scale),
            ));
        }
        if self.zero_point < self.qmin() || self.zero_point > self.qmax() {
            return Err(crate::Error::config(
                format!("{key}.zero_point"),
                format!(
                    "zero point {} is outside [{}, {}] for {} bits",
                    self.zero_point,
                    self.qmin(),
                    self.qmax(),
                    self.bits
                ),
            ));
        }
        if self.scheme == Scheme::Symmetric && self.zero_point != 0 {
            return Err(crate::Error::config(
                format!("{key}.zero_point"),
                "a symmetric scheme needs zero point 0",
            ));
        }
        Ok(())
    }
}

/// Smallest integer of a `bits`-bit signed value under `scheme`.
pub fn qmin(bits: u8, scheme: Scheme) -> i32 {
    match scheme {
        Scheme::Symmetric => -((1i32 << (bits - 1)) - 1),
        Scheme::Asymmetric => -(1i32 << (bits - 1)),
    }
}

/// Largest integer of a `bits`-bit signed value.
pub fn qmax(bits: u8) -> i32 {
    (1i32 << (bits - 1)) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_int8_and_int4_by_hand() {
        let q = QParams::from_range(ClipRange::new(-0.5, 1.27), 8, Scheme::Symmetric);
        assert!((q.scale - 0.01).abs() < 1e-7);
        assert_eq!(q.zero_point, 0);
        assert_eq!((q.qmin(), q.qmax()), (-127, 127));
        assert_eq!(q.quantize(1.27), 127);
        assert_eq!(q.quantize(-5.0), -127);
        assert_eq!(q.quantize(0.005), 1); // half away from zero
        assert_eq!(q.quantize(-0.005), -1);
        // amax 0.875 at 4 bits: scale 0.125 exactly, so halves are exact halves.
        let q4 = QParams::from_range(ClipRange::new(-0.875, 0.3), 4, Scheme::Symmetric);
        assert_eq!(q4.scale, 0.125);
        assert_eq!((q4.qmin(), q4.qmax()), (-7, 7));
        assert_eq!(q4.quantize(0.3125), 3); // 2.5 rounds to 3
        assert_eq!(q4.quantize(-0.3125), -3);
        assert_eq!(q4.quantize(5.0), 7);
    }

    #[test]
    fn a_range_too_narrow_for_an_f32_scale_counts_as_zero() {
        // 1e-44 / 127 underflows f32 to 0 (quantizing would divide by zero): scale 1, as for
        // a zero range. The found case: a Sigmoid of very negative scores, calibrated in f32.
        for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
            for hi in [1e-44f32, 1.4e-43, 1e-37] {
                let q = QParams::from_range(ClipRange::new(0.0, hi), 8, scheme);
                assert_eq!(q.scale, 1.0, "{scheme:?} {hi}");
                assert!(q.validate("q").is_ok());
                assert_eq!(q.quantize(hi), q.zero_point);
            }
            // A narrow range whose scale is still a normal f32 keeps it.
            let q = QParams::from_range(ClipRange::new(-1e-30, 1e-30), 8, scheme);
            assert!(q.scale >= f32::MIN_POSITIVE && q.scale < 1e-31, "{q:?}");
        }
    }

    #[test]
    fn asymmetric_by_hand() {
        // [0, 2.55] at 8 bits: scale 0.01, zero point round(-128 - 0) = -128.
        let q = QParams::from_range(ClipRange::new(0.0, 2.55), 8, Scheme::Asymmetric);
        assert!((q.scale - 0.01).abs() < 1e-7);
        assert_eq!(q.zero_point, -128);
        assert_eq!(q.quantize(0.0), -128);
        assert_eq!(q.quantize(2.55), 127);
        // [1, 2] is widened to [0, 2]: scale 2/15 at 4 bits, zero point -8.
        let q4 = QParams::from_range(ClipRange::new(1.0, 2.0), 4, Scheme::Asymmetric);
        assert!((q4.scale as f64 - 2.0 / 15.0).abs() < 1e-7);
        assert_eq!(q4.zero_point, -8);
        // [-1, 3] at 8 bits: scale 4/255, zp = round(-128 + 63.75) = -64.
        let q = QParams::from_range(ClipRange::new(-1.0, 3.0), 8, Scheme::Asymmetric);
        assert_eq!(q.zero_point, -64);
        assert_eq!(q.quantize(0.0), -64);
    }

    #[test]
    fn fast_rounding_equals_f64_round_half_away() {
        let q = QParams::from_range(ClipRange::new(-3.0, 5.0), 8, Scheme::Asymmetric);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let xs: Vec<f32> = (0..100_000)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if i % 3 == 0 {
                    // exact halves of the step
                    ((state % 2001) as f32 - 1000.0) * 0.5 * q.scale
                } else {
                    (state >> 40) as f32 / (1u64 << 24) as f32 * 10.0 - 5.0
                }
            })
            .collect();
        let mut fast = vec![0i8; xs.len()];
        q.quantize_into(&xs, &mut fast);
        for (x, f) in xs.iter().zip(&fast) {
            let want = ((*x as f64 / q.scale as f64).round() as i64 + q.zero_point as i64)
                .clamp(q.qmin() as i64, q.qmax() as i64);
            assert_eq!(*f as i64, want, "x {x}");
        }
    }

    #[test]
    fn zero_range_gives_scale_one() {
        for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
            let q = QParams::from_range(ClipRange::new(0.0, 0.0), 8, scheme);
            assert_eq!(q.scale, 1.0);
            assert_eq!(q.dequantize(q.quantize(0.0)), 0.0);
        }
    }

    #[test]
    fn quantization_error_is_at_most_half_a_step_inside_the_range() {
        for bits in 2..=8 {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric] {
                let q = QParams::from_range(ClipRange::new(-0.8, 1.9), bits, scheme);
                let r = q.representable();
                for i in 0..=1000 {
                    let x = r.lo + (r.hi - r.lo) * i as f32 / 1000.0;
                    let err = (q.fake_quant(x) - x).abs();
                    assert!(
                        err <= q.scale * 0.5 + 1e-6,
                        "bits {bits} {scheme}: x {x} err {err}"
                    );
                    assert!((q.qmin()..=q.qmax()).contains(&q.quantize(x)));
                }
            }
        }
    }

    #[test]
    fn validate_rejects_bad_params() {
        let mut q = QParams::from_range(ClipRange::new(0.0, 1.0), 8, Scheme::Asymmetric);
        assert!(q.validate("x").is_ok());
        q.scale = 0.0;
        assert!(q.validate("x").unwrap_err().to_string().contains("x.scale"));
        q.scale = f32::NAN;
        assert!(q.validate("x").is_err());
        q.scale = 0.1;
        q.zero_point = 200;
        assert!(
            q.validate("x")
                .unwrap_err()
                .to_string()
                .contains("x.zero_point")
        );
    }
}
