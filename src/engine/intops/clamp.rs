//! A clamp of quantized codes (a Relu or Clip that keeps its input's qparams: the bounds are
//! codes), into a recycled buffer, 64 codes per instruction where the CPU has AVX-512BW (32
//! with AVX2; the x86-64 baseline SSE2 has no signed byte max and took three logic ops per 16).

/// `x` with every code clamped to [lo, hi] (`lo ≤ hi`).
pub fn clamp_codes(x: &[i8], (lo, hi): (i8, i8)) -> Vec<i8> {
    assert!(lo <= hi, "clamp bounds {lo} > {hi}");
    // Every code is written below.
    let mut y = crate::engine::recycle::codes(x.len());
    #[cfg(target_arch = "x86_64")]
    if crate::engine::im2col::has_avx512bw() {
        // SAFETY: the CPU supports AVX-512F and BW (BW implies F), detected above.
        unsafe { clamp_avx512(x, (lo, hi), &mut y) };
        return y;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, detected just above.
        unsafe { clamp_avx2(x, (lo, hi), &mut y) };
        return y;
    }
    clamp_body(x, (lo, hi), &mut y);
    y
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn clamp_avx512(x: &[i8], bounds: (i8, i8), y: &mut [i8]) {
    clamp_body(x, bounds, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn clamp_avx2(x: &[i8], bounds: (i8, i8), y: &mut [i8]) {
    clamp_body(x, bounds, y);
}

/// The loop each variant compiles with its own instructions.
#[inline(always)]
fn clamp_body(x: &[i8], (lo, hi): (i8, i8), y: &mut [i8]) {
    for (d, &v) in y.iter_mut().zip(x) {
        *d = v.max(lo).min(hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_clamped_as_one_by_one() {
        // Every length to past two vectors, bounds at the ends of the range and inside it.
        let x: Vec<i8> = (0..200).map(|i| (i * 73 + 11) as u8 as i8).collect();
        for (lo, hi) in [(-128, 127), (-128, 5), (0, 127), (-3, -3), (-20, 90)] {
            for n in 0..x.len() {
                let want: Vec<i8> = x[..n].iter().map(|&v| v.clamp(lo, hi)).collect();
                assert_eq!(clamp_codes(&x[..n], (lo, hi)), want, "[{lo}, {hi}] n {n}");
            }
        }
    }
}
