//! The float engine's activation clamp (ReLU, ReLU6, Clip) as one type, so a conv can apply it
//! to each sample's output while that output is still in cache instead of in a pass of its own.

use crate::model::Op;

/// Clamps reals to [lo, hi]; NaN passes through (ONNX Relu/Clip). [`Clamp::NONE`] is the
/// identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    lo: f32,
    hi: f32,
}

impl Clamp {
    /// The identity: nothing is clamped.
    pub const NONE: Clamp = Clamp {
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };

    /// Relu: [0, ∞).
    pub const RELU: Clamp = Clamp {
        lo: 0.0,
        hi: f32::INFINITY,
    };

    /// Clip to [lo, hi]; `None` when lo > hi (ONNX defines that case otherwise). A NaN bound
    /// bounds nothing (no comparison with it holds), in the scalar and the vector code alike.
    pub fn clip(lo: f32, hi: f32) -> Option<Clamp> {
        let inverted = lo > hi;
        (!inverted).then_some(Clamp { lo, hi })
    }

    /// The clamp an elementwise activation node computes: Relu → [`Clamp::RELU`], Clip →
    /// [`Clamp::clip`] (`None` for other ops).
    pub fn of(op: &Op) -> Option<Clamp> {
        match *op {
            Op::Relu => Some(Clamp::RELU),
            Op::Clip { min, max } => Clamp::clip(min, max),
            _ => None,
        }
    }

    /// The bounds (lo, hi): vector code clamps with min(hi, max(lo, x)), bound first, which
    /// keeps NaN and −0.0 as [`Clamp::one`] does; [`Clamp::NONE`] gives (−∞, ∞).
    pub fn bounds(self) -> (f32, f32) {
        (self.lo, self.hi)
    }

    /// One real clamped (NaN and −0.0 above a bound of 0 pass through).
    #[inline(always)]
    pub fn one(self, t: f32) -> f32 {
        if t < self.lo {
            self.lo
        } else if t > self.hi {
            self.hi
        } else {
            t
        }
    }

    /// Clamps `v` in place (nothing to do for [`Clamp::NONE`]).
    pub fn apply(self, v: &mut [f32]) {
        if self == Clamp::NONE {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected.
            return unsafe { self.apply_avx2(v) };
        }
        v.iter_mut().for_each(|t| *t = self.one(*t));
    }

    /// [`Clamp::apply`], 8 lanes at a time: min(hi, max(lo, x)) with the bound as the first
    /// operand, so a NaN or equal `x` (the second operand) comes out unchanged, as in
    /// [`Clamp::one`].
    ///
    /// # Safety
    /// AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_avx2(self, v: &mut [f32]) {
        use std::arch::x86_64::*;
        let (lo, hi) = (_mm256_set1_ps(self.lo), _mm256_set1_ps(self.hi));
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            unsafe {
                let x = _mm256_loadu_ps(c.as_ptr());
                let y = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
                _mm256_storeu_ps(c.as_mut_ptr(), y);
            }
        }
        chunks
            .into_remainder()
            .iter_mut()
            .for_each(|t| *t = self.one(*t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ONNX definitions written out: Relu max(0, x), Clip min(max(x, lo), hi), NaN kept.
    fn relu(x: f32) -> f32 {
        if x.is_nan() { x } else { x.max(0.0) }
    }

    #[test]
    fn clamps_match_relu_and_clip_over_edges_and_lengths() {
        let edges = [
            -7.5,
            -0.0,
            0.0,
            1e-30,
            5.999,
            6.0,
            6.001,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let relu6 = Clamp::of(&Op::Clip { min: 0.0, max: 6.0 }).unwrap();
        let r = Clamp::of(&Op::Relu).unwrap();
        // Lengths around the vector width, so both the lanes and the tail run.
        for len in [0, 1, 7, 8, 9, 31, 100] {
            let v: Vec<f32> = (0..len).map(|i| edges[i % edges.len()]).collect();
            let (mut a, mut b) = (v.clone(), v.clone());
            relu6.apply(&mut a);
            r.apply(&mut b);
            for ((x, y), z) in v.iter().zip(&a).zip(&b) {
                let want6 = x.clamp(0.0, 6.0);
                // −0.0 may come out as either zero; NaN must stay NaN.
                let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
                assert!(same(*y, want6), "relu6({x}) = {y}");
                assert!(same(*z, relu(*x)), "relu({x}) = {z}");
            }
        }
        let mut v = edges.to_vec();
        Clamp::NONE.apply(&mut v);
        assert!(
            v.iter()
                .zip(&edges)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert_eq!(Clamp::of(&Op::Clip { min: 2.0, max: 1.0 }), None);
        // A NaN bound bounds nothing, on the vector lanes and the tail alike (a file may hold
        // one: ONNX's Clip compares with it, and every comparison is false).
        let upper = Clamp::clip(f32::NAN, 1.0).expect("not inverted");
        let v: Vec<f32> = (0..19).map(|i| edges[i % edges.len()]).collect();
        let mut got = v.clone();
        upper.apply(&mut got);
        for (x, y) in v.iter().zip(&got) {
            let want = if *x > 1.0 { 1.0 } else { *x };
            assert!(
                want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()),
                "{x}: {y}"
            );
        }
        let mut same = v.clone();
        Clamp::clip(f32::NAN, f32::NAN)
            .expect("not inverted")
            .apply(&mut same);
        assert!(same.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
