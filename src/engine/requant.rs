//! The integer engine's epilogue: y = clamp(z_out + M_r · (acc + k_r)) for every row of a GEMM
//! result, with per-column fixed-point multipliers. The same integers three ways, chosen at run
//! time: the plain loop, the AVX2 intrinsics of `requant_avx2` and the AVX-512 ones of
//! `requant_avx512`; [`Requant::reference`] is the direct loop they are tested against.

use crate::quant::FixedMultiplier;

/// One layer's epilogue: per output column a multiplier M_r and a constant k_r, plus the output
/// zero point and clamp bounds. Built once per layer; the per-column arrays the fast loop reads
/// are derived here, not on every call.
#[derive(Debug, Clone)]
pub struct Requant {
    mult: Vec<FixedMultiplier>,
    konst: Vec<i32>,
    /// Mantissas widened to i64, and right shifts (valid when `small`).
    mant: Vec<i64>,
    right: Vec<i64>,
    /// Every multiplier is below 1 (no left shift): the branch-free form applies.
    small: bool,
    /// Output zero point per column (the layer's, plus the bias of a column whose bias does not
    /// fit its accumulator: see [`split_bias`]).
    zp: Vec<i32>,
    lo: i32,
    hi: i32,
    /// acc + k never leaves i32 for the accumulators this epilogue is given (the caller's
    /// bound, [`Requant::sums_fit_i32`]): the saturating add is a plain one.
    sums_fit: bool,
    /// The constants as this CPU's explicit vector loop reads them (when `small`).
    #[cfg(target_arch = "x86_64")]
    fast: Option<Fast>,
    /// Verified f32 lines for the AVX-512 loop (see [`Requant::with_ranges`]).
    #[cfg(target_arch = "x86_64")]
    lines: Option<super::requant_lines::LineBlocks>,
}

/// The explicit vector loop a [`Requant`] runs, chosen for the CPU when it is built, with its
/// constants laid out for it.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
enum Fast {
    /// AVX-512 F, DQ, BW and VL (detected).
    Avx512(super::requant_avx512::Blocks),
    /// AVX2 (detected).
    Avx2(super::requant_avx2::Blocks8),
}

#[cfg(target_arch = "x86_64")]
impl Fast {
    /// The widest loop this CPU runs, for these per-column constants; `None` without AVX2.
    fn for_cpu(konst: &[i32], mant: &[i64], right: &[i64], zp: &[i32]) -> Option<Fast> {
        if has_avx512() {
            let b = super::requant_avx512::Blocks::new(konst, mant, right, zp);
            return Some(Fast::Avx512(b));
        }
        has_avx2().then(|| Fast::Avx2(super::requant_avx2::Blocks8::new(konst, mant, right, zp)))
    }
}

/// A layer's bias as (accumulator units, output steps): `bias / acc_scale` rounded when it fits
/// in i32, else 0 and the bias rounded to output steps, added to that column's zero point.
/// It does not fit when the input's range is nearly empty (a scale of 1e-14 puts an ordinary
/// bias past 2³¹ steps): the saturated i32 would lose the bias and give a wrong output, while
/// adding it at the output keeps the result within one step of the real sum.
pub fn split_bias(bias: f32, acc_scale: f64, out_scale: f64) -> (i32, i32) {
    let steps = (bias as f64 / acc_scale).round();
    if steps.abs() <= i32::MAX as f64 {
        return (steps as i32, 0);
    }
    (0, (bias as f64 / out_scale).round().clamp(-1e6, 1e6) as i32)
}

impl Requant {
    /// The epilogue y = clamp(zp_r + M_r · (acc + k_r), lo, hi).
    pub fn new(
        mult: Vec<FixedMultiplier>,
        konst: Vec<i32>,
        zp: Vec<i32>,
        lo: i32,
        hi: i32,
    ) -> Self {
        assert_eq!(mult.len(), konst.len(), "one constant per multiplier");
        assert_eq!(mult.len(), zp.len(), "one zero point per multiplier");
        let mant: Vec<i64> = mult.iter().map(|m| m.mantissa as i64).collect();
        let right: Vec<i64> = mult.iter().map(|m| (-m.shift).min(62) as i64).collect();
        let small = mult.iter().all(|m| m.shift <= 0);
        Requant {
            #[cfg(target_arch = "x86_64")]
            fast: small
                .then(|| Fast::for_cpu(&konst, &mant, &right, &zp))
                .flatten(),
            #[cfg(target_arch = "x86_64")]
            lines: None,
            mant,
            right,
            small,
            mult,
            konst,
            zp,
            lo,
            hi,
            sums_fit: false,
        }
    }

    /// This epilogue, told that every accumulator it will be given keeps acc + k_r inside i32
    /// (the caller bounds its sums, e.g. 128·Σ|w_r| + |k_r| < 2³¹ for a GEMM of i8 codes). Then
    /// the saturating add never saturates, and the vector loop skips its clamp and its widening.
    pub fn sums_fit_i32(mut self) -> Self {
        self.sums_fit = true;
        self
    }

    /// This epilogue, told that column r's accumulators lie in `ranges[r]` (and that acc + k_r
    /// fits i32 there): where the CPU runs the AVX-512 loop, each block of 16 columns whose
    /// every column has a verified f32 line (the fixed-point path's integers over that range,
    /// [`super::requant_lines`]) goes through the lines, the same outputs for fewer operations.
    pub fn with_ranges(mut self, ranges: &[(i32, i32)]) -> Self {
        assert_eq!(ranges.len(), self.mult.len(), "one range per column");
        #[cfg(target_arch = "x86_64")]
        if self.sums_fit && matches!(self.fast, Some(Fast::Avx512(_))) {
            let kz = (&self.konst[..], &self.zp[..]);
            self.lines =
                super::requant_lines::LineBlocks::new(&self.mult, kz, (self.lo, self.hi), ranges);
        }
        self
    }

    /// Requantizes `c` (rows of as many accumulators as there are multipliers) into `y`.
    pub fn run(&self, c: &[i32], y: &mut [i8]) {
        if !self.small {
            return self.reference(c, y);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(fast) = &self.fast {
            let (shape, bounds) = ((self.mult.len(), self.sums_fit), (self.lo, self.hi));
            // SAFETY: `Fast::for_cpu` chose the variant this CPU supports.
            unsafe {
                match (fast, &self.lines) {
                    (Fast::Avx512(b), Some(l)) => {
                        super::requant_lines::rows((l, b), shape, c, y, bounds)
                    }
                    (Fast::Avx512(b), None) => super::requant_avx512::rows(b, shape, c, y, bounds),
                    (Fast::Avx2(b), _) => super::requant_avx2::rows(b, shape, c, y, bounds),
                }
            }
            return;
        }
        self.body(c, y);
    }

    /// The AVX2 loop whatever wider unit the CPU has (for tests on AVX-512 machines): `None`
    /// without AVX2 or when the multipliers are not all below 1.
    #[cfg(all(test, target_arch = "x86_64"))]
    fn run_avx2(&self, c: &[i32], y: &mut [i8], column: Option<usize>) -> Option<()> {
        let (k, m, r, z) = (&self.konst, &self.mant, &self.right, &self.zp);
        let b =
            &(self.small && has_avx2()).then(|| super::requant_avx2::Blocks8::new(k, m, r, z))?;
        let out = self.mult.len();
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe {
            match column {
                None => {
                    super::requant_avx2::rows(b, (out, self.sums_fit), c, y, (self.lo, self.hi))
                }
                Some(r) => super::requant_avx2::column(&b.broadcast(r), c, y, (self.lo, self.hi)),
            }
        }
        Some(())
    }

    /// The obvious loop with [`FixedMultiplier::apply`]: what the fast versions must equal.
    pub fn reference(&self, c: &[i32], y: &mut [i8]) {
        let out = self.mult.len();
        for (crow, yrow) in c.chunks_exact(out).zip(y.chunks_exact_mut(out)) {
            for r in 0..out {
                yrow[r] = self.exact(r, crow[r]);
            }
        }
    }

    /// Column `r`'s accumulator `acc` through the fixed-point path.
    #[inline]
    fn exact(&self, r: usize, acc: i32) -> i8 {
        let v = self.zp[r] + self.mult[r].apply(acc.saturating_add(self.konst[r]));
        v.clamp(self.lo, self.hi) as i8
    }

    /// SRDHM then a rounding right shift, in branch-free i64 arithmetic (multipliers < 1).
    #[inline(always)]
    fn body(&self, c: &[i32], y: &mut [i8]) {
        let out = self.mult.len();
        let (mant, right, konst) = (&self.mant[..out], &self.right[..out], &self.konst[..out]);
        let zp = &self.zp[..out];
        for (crow, yrow) in c.chunks_exact(out).zip(y.chunks_exact_mut(out)) {
            for r in 0..out {
                yrow[r] = self.one(crow[r], (konst[r], zp[r]), mant[r], right[r]);
            }
        }
    }

    /// Requantizes `c`, accumulators of column `r` only (a channel-major block), into `y`.
    pub fn run_column(&self, r: usize, c: &[i32], y: &mut [i8]) {
        if !self.small {
            for (&v, o) in c.iter().zip(y) {
                *o = self.exact(r, v);
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(fast) = &self.fast {
            let bounds = (self.lo, self.hi);
            // SAFETY: `Fast::for_cpu` chose the variant this CPU supports.
            unsafe {
                match fast {
                    Fast::Avx512(b) => super::requant_avx512::column(&b.broadcast(r), c, y, bounds),
                    Fast::Avx2(b) => super::requant_avx2::column(&b.broadcast(r), c, y, bounds),
                }
            }
            return;
        }
        self.column(r, c, y);
    }

    #[inline(always)]
    fn column(&self, r: usize, c: &[i32], y: &mut [i8]) {
        let (k, m, e) = ((self.konst[r], self.zp[r]), self.mant[r], self.right[r]);
        for (&v, o) in c.iter().zip(y) {
            *o = self.one(v, k, m, e);
        }
    }

    /// One accumulator: clamp(z_r + SRDHM(acc + k, mantissa) >> e rounded), multiplier < 1.
    #[inline(always)]
    fn one(&self, acc: i32, (konst, zp): (i32, i32), mant: i64, e: i64) -> i8 {
        let acc = (acc as i64 + konst as i64).clamp(i32::MIN as i64, i32::MAX as i64);
        // saturating_rounding_doubling_high_mul (the i32::MIN² case cannot occur: mantissa ≥ 2^30)
        let ab = acc * mant;
        let nudge = if ab >= 0 {
            1i64 << 30
        } else {
            1 - (1i64 << 30)
        };
        let x = ab + nudge;
        let high = (x + ((x >> 63) & ((1i64 << 31) - 1))) >> 31; // x / 2^31 toward zero
        // rounding_divide_by_pot
        let mask = (1i64 << e) - 1;
        let rem = high & mask;
        let threshold = (mask >> 1) + i64::from(high < 0);
        let q = (high >> e) + i64::from(rem > threshold);
        (zp as i64 + q).clamp(self.lo as i64, self.hi as i64) as i8
    }
}

/// Whether this CPU runs the explicit AVX2 epilogue (detected once).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// Whether this CPU runs the explicit AVX-512 epilogue (detected once).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epilogue through verified f32 lines equals the fixed-point reference on every
    /// accumulator of each column's declared range: 40 columns (two blocks of lines and a
    /// ragged third), multipliers from 2⁻¹⁶ to 0.9 with rounding ties among them, constants
    /// and zero points per column, the full i8 range and a ReLU6-like clamp.
    #[test]
    fn line_epilogue_equals_the_fixed_point_path_over_every_accumulator() {
        let out: usize = 40;
        let mult: Vec<FixedMultiplier> = (0..out)
            .map(|r| {
                let m = match r % 5 {
                    0 => 2f64.powi(-(r as i32 % 16) - 1),
                    1 => 0.9 / (r + 1) as f64,
                    2 => 3.0 * 2f64.powi(-9),
                    3 => 0.0123 * (1.0 + r as f64 / 7.0),
                    _ => 2f64.powi(-16) * 1.37,
                };
                FixedMultiplier::from_f64(m)
            })
            .collect();
        let konst: Vec<i32> = (0..out).map(|r| (r as i32 * 977) % 3001 - 1500).collect();
        let zp: Vec<i32> = (0..out).map(|r| (r as i32 * 37) % 200 - 100).collect();
        let ranges: Vec<(i32, i32)> = (0..out)
            .map(|r| (-(3000 + 97 * r as i32), 2500 + 131 * r as i32))
            .collect();
        let widest = ranges
            .iter()
            .map(|&(a, b)| (b - a + 1) as usize)
            .max()
            .unwrap();
        // The last two clamps' floor is every column's zero point (a fused ReLU): lines of one
        // offset, which the kernel takes without choosing one by sign. Clamps of the whole i8
        // range are the narrowing's saturation alone.
        let (relu, relu_u8) = (vec![-20; out], vec![-128; out]);
        for (zp, lo, hi) in [
            (&zp, -128, 127),
            (&zp, -40, 90),
            (&relu, -20, 127),
            (&relu_u8, -128, 127),
        ] {
            let rq = Requant::new(mult.clone(), konst.clone(), zp.clone(), lo, hi)
                .sums_fit_i32()
                .with_ranges(&ranges);
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                let lines = rq.lines.as_ref().expect("verified lines for these columns");
                let one = lines.one_offset_blocks();
                assert_eq!(
                    one > 0,
                    zp[0] == lo,
                    "{one} blocks of one offset, clamp [{lo}, {hi}]"
                );
                // Constants up to ±1500 fold into the offsets of most blocks.
                let folded = lines.folded_blocks();
                assert!(
                    folded > 0,
                    "no block folds its constants, clamp [{lo}, {hi}]"
                );
            }
            // Row i holds, in column r, the i-th accumulator of r's range (its last repeated).
            let c: Vec<i32> = (0..widest)
                .flat_map(|i| ranges.iter().map(move |&(a, b)| (a + i as i32).min(b)))
                .collect();
            let (mut want, mut got) = (vec![0i8; c.len()], vec![0i8; c.len()]);
            rq.reference(&c, &mut want);
            rq.run(&c, &mut got);
            let off = want.iter().zip(&got).position(|(a, b)| a != b);
            assert_eq!(off, None, "clamp [{lo}, {hi}]: first difference at {off:?}");
        }
    }

    /// Multipliers of few mantissa bits put many accumulators exactly on a rounding tie, of the
    /// doubling high multiply or of the right shift: every one of them must round as the
    /// reference does.
    #[test]
    fn fast_epilogue_rounds_ties_as_the_reference() {
        let ms = [
            0.5,
            0.25,
            0.75,
            2f64.powi(-5),
            3.0 * 2f64.powi(-7),
            2f64.powi(-12),
            // Shifts of 31 bits (results of ±1 only near the ends of i32) and past 31 (0).
            0.99 * 2f64.powi(-31),
            0.6 * 2f64.powi(-31),
            2f64.powi(-40),
        ];
        let mult: Vec<FixedMultiplier> = ms.iter().map(|&m| FixedMultiplier::from_f64(m)).collect();
        let out = mult.len();
        // Small accumulators (ties of small multipliers) and a sweep of the whole i32 range.
        let accs: Vec<i32> = (-6000..6000)
            .chain((i32::MIN..=i32::MAX).step_by(1 << 19))
            .chain([i32::MIN + 1, i32::MAX, (3 << 29) - 1, -(3 << 29) + 1])
            .collect();
        let c: Vec<i32> = accs.iter().flat_map(|&a| vec![a; out]).collect();
        for konst in [0, 1, -7] {
            let rq = Requant::new(mult.clone(), vec![konst; out], vec![0; out], -128, 127);
            let (mut want, mut got) = (vec![0i8; c.len()], vec![0i8; c.len()]);
            rq.reference(&c, &mut want);
            rq.run(&c, &mut got);
            assert_eq!(got, want, "konst {konst}");
            rq.body(&c, &mut got);
            assert_eq!(got, want, "portable body, konst {konst}");
            #[cfg(target_arch = "x86_64")]
            if rq.run_avx2(&c, &mut got, None).is_some() {
                assert_eq!(got, want, "AVX2 rows, konst {konst}");
            }
            // Told that the sums fit i32 (they do, but for the ends of the sweep): the add
            // without saturation and the product of the unwidened lanes give the same codes.
            {
                let fit: Vec<i32> = c
                    .iter()
                    .copied()
                    .filter(|a| a.checked_add(konst).is_some())
                    .collect();
                let (mut want, mut got) = (vec![0i8; fit.len()], vec![0i8; fit.len()]);
                let fitting = rq.clone().sums_fit_i32();
                fitting.reference(&fit, &mut want);
                fitting.run(&fit, &mut got);
                assert_eq!(got, want, "sums known to fit i32, konst {konst}");
                #[cfg(target_arch = "x86_64")]
                if fitting.run_avx2(&fit, &mut got, None).is_some() {
                    assert_eq!(got, want, "AVX2, sums known to fit i32, konst {konst}");
                }
            }
            for r in 0..out {
                let mut y = vec![0i8; accs.len()];
                rq.run_column(r, &accs, &mut y);
                let w: Vec<i8> = want.iter().skip(r).step_by(out).copied().collect();
                assert_eq!(y, w, "column {r}");
                #[cfg(target_arch = "x86_64")]
                if rq.run_avx2(&accs, &mut y, Some(r)).is_some() {
                    assert_eq!(y, w, "AVX2 column {r}");
                }
            }
        }
    }

    #[test]
    fn fast_epilogue_equals_the_reference() {
        let mut s = 0x1234_5678u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for out in [1usize, 3, 8, 10, 17, 64] {
            let rows = 9;
            let mult: Vec<FixedMultiplier> = (0..out)
                .map(|_| FixedMultiplier::from_f64(10f64.powf(-((next() % 700) as f64) / 100.0)))
                .collect();
            let konst: Vec<i32> = (0..out)
                .map(|_| (next() % 200_001) as i32 - 100_000)
                .collect();
            let mut c: Vec<i32> = (0..rows * out)
                .map(|_| (next() % 4_000_001) as i32 - 2_000_000)
                .collect();
            c[0] = i32::MAX;
            let len = c.len();
            c[1 % len] = i32::MIN;
            for (zp, lo, hi) in [(-128, -128, 127), (3, 3, 127), (0, -7, 7)] {
                let rq = Requant::new(mult.clone(), konst.clone(), vec![zp; out], lo, hi);
                let mut want = vec![0i8; c.len()];
                let mut got = vec![0i8; c.len()];
                rq.reference(&c, &mut want);
                rq.run(&c, &mut got);
                assert_eq!(got, want, "out {out} zp {zp}");
                rq.body(&c, &mut got);
                assert_eq!(got, want, "portable body, out {out}");
                #[cfg(target_arch = "x86_64")]
                if rq.run_avx2(&c, &mut got, None).is_some() {
                    assert_eq!(got, want, "AVX2 rows, out {out} zp {zp}");
                }
                // Per-column constants through the path for sums that fit i32 (the two extreme
                // accumulators put back in range).
                {
                    let mut fit = c.clone();
                    fit[..2.min(len)].fill(0);
                    let (mut want, mut got) = (vec![0i8; len], vec![0i8; len]);
                    rq.reference(&fit, &mut want);
                    rq.clone().sums_fit_i32().run(&fit, &mut got);
                    assert_eq!(got, want, "sums known to fit i32, out {out} zp {zp}");
                    #[cfg(target_arch = "x86_64")]
                    if rq
                        .clone()
                        .sums_fit_i32()
                        .run_avx2(&fit, &mut got, None)
                        .is_some()
                    {
                        assert_eq!(got, want, "AVX2, sums known to fit i32, out {out} zp {zp}");
                    }
                }
                // Column by column on channel-major accumulators.
                for r in 0..out {
                    let col: Vec<i32> = c.iter().skip(r).step_by(out).copied().collect();
                    let mut y = vec![0i8; col.len()];
                    rq.run_column(r, &col, &mut y);
                    let w: Vec<i8> = want.iter().skip(r).step_by(out).copied().collect();
                    assert_eq!(y, w, "column {r}, out {out}");
                    rq.column(r, &col, &mut y);
                    assert_eq!(y, w, "portable column {r}, out {out}");
                    #[cfg(target_arch = "x86_64")]
                    if rq.run_avx2(&col, &mut y, Some(r)).is_some() {
                        assert_eq!(y, w, "AVX2 column {r}, out {out}");
                    }
                }
            }
        }
    }
}
