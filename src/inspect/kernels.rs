//! The inner loops of `inspect`, written over fixed lanes so that they vectorize, and compiled
//! for AVX-512 or AVX2 when the CPU has them (the same arithmetic in every version).

/// Accumulator lanes of every loop here.
const LANES: usize = 8;

/// The scale of symmetric minmax quantization at ±`levels` for a block whose largest magnitude
/// is `amax` (`QParams::from_range` of formats.md §3: 1 for a zero, non-finite or subnormal one).
pub(super) fn scale_for(amax: f32, levels: f64) -> f32 {
    let width = amax as f64;
    let scale = (width / levels) as f32;
    if width.is_finite() && scale >= f32::MIN_POSITIVE {
        scale
    } else {
        1.0
    }
}

/// The integer of x at `scale` with ±`l` levels: round(x / scale) half away from zero, clamped
/// (`QParams::quantize` in f64).
#[inline(always)]
fn q_exact(x: f32, scale: f64, l: f64) -> f64 {
    let v = x as f64 / scale;
    let t = v.trunc();
    let frac = v - t;
    let up = if frac >= 0.5 { 1.0 } else { 0.0 };
    let down = if frac <= -0.5 { 1.0 } else { 0.0 };
    (t + up - down).max(-l).min(l)
}

/// (x − x̂)² for x quantized at `scale` to ±`l` and dequantized to f32 (`QParams::dequantize`:
/// the f64 product rounded to f32).
#[inline(always)]
pub(super) fn sq_err(x: f32, scale: f64, l: f64) -> f64 {
    let e = x as f64 - (scale * q_exact(x, scale, l)) as f32 as f64;
    e * e
}

/// (x − x̂)² as [`sq_err`] gives it, without a division: the candidate c = ⌊|x|·(1/scale) + ½⌋
/// is off by at most one, and one exact comparison of |x| with (c ∓ ½)·scale on each side fixes
/// it ((c ± ½)·scale has at most 33 significant bits: exact in f64).
///
/// Equal to rounding the f64 quotient: a quotient |x|/scale of two f32 that is not exactly
/// k + ½ lies at least 2⁻²⁶ away from it, far beyond the f64 rounding error (2⁻⁴⁶ at 128),
/// so the rounded quotient falls on the same side of every half step.
#[inline(always)]
fn sq_err_fast(x: f32, scale: f64, inv: f64, l: f64) -> f64 {
    let a = (x as f64).abs();
    let c = (a * inv + 0.5).floor();
    let c = if a < (c - 0.5) * scale { c - 1.0 } else { c };
    let c = if a >= (c + 0.5) * scale { c + 1.0 } else { c };
    let e = a - (scale * c.min(l)) as f32 as f64;
    e * e
}

/// Calls `one(lane, v)` for every value of `x`, lane = position mod [`LANES`] (the remainder
/// in lane 0): per-lane accumulators the compiler keeps in vector registers, summed in a fixed
/// order.
#[inline(always)]
fn for_lanes(x: &[f32], mut one: impl FnMut(usize, f32)) {
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for (k, &v) in ch.iter().enumerate() {
            one(k, v);
        }
    }
    for &v in rest {
        one(0, v);
    }
}

#[inline(always)]
fn noise_body(x: &[f32], scale: f32, l: f64) -> f64 {
    let (s, inv) = (scale as f64, 1.0 / scale as f64);
    let mut acc = [0.0f64; LANES];
    for_lanes(x, |k, v| acc[k] += sq_err_fast(v, s, inv, l));
    let mut total = 0.0;
    for a in acc {
        total += a;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
unsafe fn noise_avx512(x: &[f32], scale: f32, l: f64) -> f64 {
    noise_body(x, scale, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn noise_avx2(x: &[f32], scale: f32, l: f64) -> f64 {
    noise_body(x, scale, l)
}

/// Σ(x − x̂)² over `x` for symmetric quantization at `scale` with ±`l` levels.
pub(super) fn noise(x: &[f32], scale: f32, l: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has these features, checked just above.
            return unsafe { noise_avx512(x, scale, l) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { noise_avx2(x, scale, l) };
        }
    }
    noise_body(x, scale, l)
}

/// [`noise`] for two quantizers at once, each given as (scale, levels).
pub(super) fn noise2(x: &[f32], a: (f32, f64), b: (f32, f64)) -> [f64; 2] {
    [noise(x, a.0, a.1), noise(x, b.0, b.1)]
}

/// Largest |x| over `x` (NaN ignored, as `f32::max` does; 0 for an empty slice).
pub(super) fn abs_max(x: &[f32]) -> f32 {
    let mut m = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for k in 0..LANES {
            m[k] = m[k].max(ch[k].abs());
        }
    }
    for &v in rest {
        m[0] = m[0].max(v.abs());
    }
    m.iter().fold(0.0f32, |a, &b| a.max(b))
}

/// First-pass figures of a block: finite count, min and max of the finite values, their sum.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scan {
    /// Finite values.
    pub n: u64,
    /// Values that are exactly zero.
    pub zeros: u64,
    /// Smallest finite value (+inf when none).
    pub min: f32,
    /// Largest finite value (−inf when none).
    pub max: f32,
    /// Σx over the finite values.
    pub sum: f64,
}

impl Scan {
    /// Nothing seen.
    pub fn empty() -> Scan {
        Scan {
            n: 0,
            zeros: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }

    /// Both parts together.
    pub fn merge(self, o: Scan) -> Scan {
        Scan {
            n: self.n + o.n,
            zeros: self.zeros + o.zeros,
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            sum: self.sum + o.sum,
        }
    }
}

/// [`Scan`] of `x`.
pub(super) fn scan(x: &[f32]) -> Scan {
    let (mut n, mut zeros, mut sum) = ([0u64; LANES], [0u64; LANES], [0.0f64; LANES]);
    let (mut lo, mut hi) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    let one = |k: usize, v: f32| {
        let ok = v.is_finite();
        n[k] += ok as u64;
        zeros[k] += (v == 0.0) as u64;
        sum[k] += if ok { v as f64 } else { 0.0 };
        lo[k] = lo[k].min(if ok { v } else { f32::INFINITY });
        hi[k] = hi[k].max(if ok { v } else { f32::NEG_INFINITY });
    };
    for_lanes(x, one);
    Scan {
        n: n.iter().sum(),
        zeros: zeros.iter().sum(),
        min: lo.iter().fold(f32::INFINITY, |a, &b| a.min(b)),
        max: hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
        sum: sum.iter().sum(),
    }
}

/// Σ(x−mean)², Σ(x−mean)³, Σ(x−mean)⁴ and Σx² over the finite values of `x`.
pub(super) fn central(x: &[f32], mean: f64) -> [f64; 4] {
    let mut s = [[0.0f64; LANES]; 4];
    let one = |k: usize, v: f32| {
        let ok = v.is_finite();
        let x = if ok { v as f64 } else { mean };
        let d = x - mean;
        let d2 = d * d;
        s[0][k] += d2;
        s[1][k] += d2 * d;
        s[2][k] += d2 * d2;
        s[3][k] += if ok { x * x } else { 0.0 };
    };
    for_lanes(x, one);
    s.map(|lanes| lanes.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sq_err_rounds_half_away_and_clamps() {
        // scale 0.125 at int4: 0.3125 = 2.5 steps → 3 → 0.375, error 0.0625.
        assert_eq!(sq_err(0.3125, 0.125, 7.0), 0.0625 * 0.0625);
        assert_eq!(sq_err(-0.3125, 0.125, 7.0), 0.0625 * 0.0625);
        // 2.0 clamps to 7 steps = 0.875.
        assert_eq!(sq_err(2.0, 0.125, 7.0), (2.0f64 - 0.875).powi(2));
        assert_eq!(scale_for(0.0, 127.0), 1.0);
        assert_eq!(scale_for(f32::INFINITY, 127.0), 1.0);
        assert_eq!(scale_for(0.875, 7.0), 0.125);
    }

    #[test]
    fn the_division_free_error_equals_the_f64_quotient_rule() {
        // Exact half steps, their f32 neighbours, clamped values and random ones.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for &(amax, l) in &[
            (1.984375f32, 127.0),
            (0.875, 7.0),
            (3.1e-3, 127.0),
            (1.0, 7.0),
        ] {
            let scale = scale_for(amax, l);
            let (s, inv) = (scale as f64, 1.0 / scale as f64);
            for i in -300i32..=300 {
                let half = (i as f64 + 0.5) * s;
                for x in [
                    half as f32,
                    (half as f32).next_up(),
                    (half as f32).next_down(),
                ] {
                    assert_eq!(
                        sq_err_fast(x, s, inv, l),
                        sq_err(x, s, l),
                        "x {x} scale {s}"
                    );
                }
            }
            for _ in 0..20_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let x = ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amax * 1.2;
                assert_eq!(
                    sq_err_fast(x, s, inv, l),
                    sq_err(x, s, l),
                    "x {x} scale {s}"
                );
            }
        }
    }
}
