//! The requantization of one output channel, y = clamp(z_o + M·acc, lo, hi) with M a
//! [`FixedMultiplier`], as a straight line: y = clamp(⌊acc·m + b(acc)⌋, lo, hi), b taking one
//! of two values by the sign of the gemmlowp intermediate.
//!
//! The fixed-point path rounds twice: s = ⌊(acc·M₀ + 2³⁰) / 2³¹⌋ (SRDHM, half up), then
//! s / 2^r rounded half away from zero. Both collapse into one floor,
//! y − z_o = ⌊(acc·M₀ + 2³⁰ + 2^(30+r) − [s < 0]·2³¹) / 2^(31+r)⌋, a line in acc whose offset
//! drops by 2^−r where s < 0 (i.e. acc < a₀).
//!
//! Each line, evaluated in floating point, is checked at build time against
//! [`FixedMultiplier::apply`] over every accumulator the channel can produce: both are monotone
//! step functions of acc, so they differ exactly on the accumulators between their steps for
//! each output level, which a binary search per level finds. In f64 (52-bit mantissa) there
//! are none in practice; in f32 (what the AVX-512 kernel uses: half the conversions) a few
//! accumulators next to a step may round to the wrong side, and are kept as exceptions
//! (accumulator, exact output) patched after the line. A channel with more exceptions than
//! [`MAX_EXC`] uses f64, and one whose f64 line fails (or whose range is too wide) the exact
//! integer path: either way results are bit-identical to it.

use crate::quant::FixedMultiplier;

/// Most exceptions an f32 line may carry.
pub(crate) const MAX_EXC: usize = 4;

/// One channel's requantization: the exact fixed-point form and, when verified, its lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line {
    /// The fixed-point multiplier (the exact path).
    mult: FixedMultiplier,
    /// Output zero point and clamp bounds.
    zo: i32,
    lo: i32,
    hi: i32,
    /// Slope of the line.
    pub m: f64,
    /// Offset where acc ≥ a0, and where acc < a0.
    pub bp: f64,
    pub bn: f64,
    /// The sign switch of the intermediate.
    pub a0: i32,
    /// The fused line ⌊fma(acc, m, b)⌋ equals the exact path over the channel's range.
    pub fused: bool,
    /// The unfused line ⌊acc·m + b⌋ (two roundings) does.
    pub unfused: bool,
    /// The f32 line with its exceptions, if it has at most [`MAX_EXC`].
    pub f32: Option<Line32>,
}

/// The line in f32: y = clamp(⌊fma(acc, m, b(acc))⌋ + c, lo, hi), except at `exc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Line32 {
    pub m: f32,
    pub bp: f32,
    pub bn: f32,
    /// An integer taken out of the offsets, so that the f32 values stay near 0.
    pub c: i32,
    /// Accumulators where the line is wrong, and their exact outputs (`n` of them).
    pub exc: [i32; MAX_EXC],
    pub val: [i8; MAX_EXC],
    pub n: usize,
    /// A constant folded into the offsets ([`Line::f32_folded`]): the line is evaluated at
    /// a − k, its offsets holding k·m (0 for every other line).
    pub k: i32,
}

impl Line {
    /// The line of `mult` with output zero point `zo` and bounds [lo, hi], verified over the
    /// accumulators [amin, amax] the channel can produce (`None`: unbounded, not verified).
    pub fn new(
        mult: FixedMultiplier,
        (zo, lo, hi): (i32, i32, i32),
        range: Option<(i32, i32)>,
    ) -> Self {
        let (m, bp, bn, a0) = line_params(mult, zo);
        let mut line = Line {
            mult,
            zo,
            lo,
            hi,
            m,
            bp,
            bn,
            a0,
            fused: false,
            unfused: false,
            f32: None,
        };
        if let Some((amin, amax)) = range
            && line.checkable(amin, amax)
        {
            let st = line.steps(amin, amax);
            let fused = line.differs(&st, |a| line.eval_fused(a), 0);
            let unfused = line.differs(&st, |a| line.eval_unfused(a), 0);
            (line.fused, line.unfused) = (fused.is_some(), unfused.is_some());
            if amin.unsigned_abs() < 1 << 24 && amax.unsigned_abs() < 1 << 24 {
                line.f32 = line.line32(&st, (0, MAX_EXC + 1));
            }
        }
        line
    }

    /// The verified f32 line alone (no f64 line checked) and where its offset switches: what
    /// the GEMM epilogue of [`crate::engine::requant`] uses; `None` where [`Line::new`] would
    /// have no f32 line.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn f32_only(
        mult: FixedMultiplier,
        (zo, lo, hi): (i32, i32, i32),
        (amin, amax): (i32, i32),
    ) -> Option<(Line32, i32)> {
        Line::f32_folded(mult, (zo, lo, hi), (amin, amax), (0, MAX_EXC))
    }

    /// [`Line::f32_only`] for a kernel that reads acc = a − k and adds nothing: the offsets
    /// hold k·m, and the line (evaluated at a − k, its exceptions still accumulators a) is
    /// verified over [amin, amax] like any other, with at most `most` exceptions (≤
    /// [`MAX_EXC`]); `None` also where some a − k leaves ±2²⁴ (its conversion to f32 would
    /// round).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn f32_folded(
        mult: FixedMultiplier,
        (zo, lo, hi): (i32, i32, i32),
        (amin, amax): (i32, i32),
        (k, most): (i32, usize),
    ) -> Option<(Line32, i32)> {
        let line = Line::new(mult, (zo, lo, hi), None);
        let small = [amin, amax].iter().all(|&a| {
            let folded = a as i64 - k as i64;
            a.unsigned_abs() < 1 << 24 && folded.unsigned_abs() < 1 << 24
        });
        if !small || !line.checkable(amin, amax) {
            return None;
        }
        let l = line.line32(&line.steps(amin, amax), (k, most.min(MAX_EXC) + 1))?;
        Some((l, line.a0))
    }

    /// The exact fixed-point requantization (the old loop's expression, wrapping as release
    /// builds did).
    #[inline]
    pub fn exact(&self, acc: i32) -> i8 {
        self.zo
            .wrapping_add(self.mult.apply(acc))
            .clamp(self.lo, self.hi) as i8
    }

    /// The offset for `acc`.
    #[inline(always)]
    fn offset(&self, acc: i32) -> f64 {
        if acc < self.a0 { self.bn } else { self.bp }
    }

    /// ⌊fma(acc, m, b)⌋ clamped: what the AVX-512 kernel computes without an f32 line.
    pub fn eval_fused(&self, acc: i32) -> i8 {
        floor_clamp(
            (acc as f64).mul_add(self.m, self.offset(acc)),
            self.lo,
            self.hi,
        )
    }

    /// ⌊acc·m + b⌋ clamped (two roundings): what the portable kernel computes.
    #[inline(always)]
    pub fn eval_unfused(&self, acc: i32) -> i8 {
        floor_clamp(acc as f64 * self.m + self.offset(acc), self.lo, self.hi)
    }

    /// The f32 line `l` without its exceptions.
    fn eval32(&self, l: &Line32, acc: i32) -> i8 {
        let b = if acc < self.a0 { l.bn } else { l.bp };
        let t = ((acc - l.k) as f32).mul_add(l.m, b).floor() as i32;
        (t + l.c).clamp(self.lo, self.hi) as i8
    }

    /// The f32 line with exceptions (what the AVX-512 kernel computes).
    #[cfg(test)]
    pub fn eval_f32(&self, acc: i32) -> Option<i8> {
        let l = self.f32.as_ref()?;
        let e = (0..l.n).find(|&i| l.exc[i] == acc);
        Some(e.map_or_else(|| self.eval32(l, acc), |i| l.val[i]))
    }

    /// The f32 line with the fewest exceptions among the f32 neighbours of the f64 slope and
    /// offsets, if some has at most [`MAX_EXC`]; one offset for every accumulator (b_n = b_p,
    /// which spares the kernels choosing one by sign) when such a line has no more exceptions.
    /// That happens where the clamp's floor is the zero point (a fused ReLU): below a₀ every
    /// output is the floor whichever offset, so only f32 rounding can tell them apart.
    ///
    /// With `k` ≠ 0 the line is the folded one of [`Line::f32_folded`]; only lines with fewer
    /// than `under` exceptions are taken.
    fn line32(&self, st: &Steps, (k, under): (i32, usize)) -> Option<Line32> {
        // Centre the f32 values on the clamp range (no shift for the full i8 range: the
        // kernel then saturates instead of adding c and clamping).
        let c = if (self.lo, self.hi) == (-128, 127) {
            0
        } else {
            (self.lo + self.hi).div_euclid(2)
        };
        let fold = k as f64 * self.m;
        let (m, bp, bn) = (
            self.m as f32,
            (self.bp - c as f64 + fold) as f32,
            (self.bn - c as f64 + fold) as f32,
        );
        let two = self.best_line32((m, bp, bn), (c, k), st, under);
        if bp == bn {
            return two;
        }
        let under = two.map_or(under, |l| l.n + 1);
        let one = self.best_line32((m, bp, bp), (c, k), st, under);
        one.or(two)
    }

    /// The line among the f32 neighbours of (`m`, `bp`, `bn`) (offsets moved together) with
    /// integer offset `c` and folded constant `k`, with the fewest exceptions, if some has
    /// fewer than `under`.
    fn best_line32(
        &self,
        (m, bp, bn): (f32, f32, f32),
        (c, k): (i32, i32),
        st: &Steps,
        under: usize,
    ) -> Option<Line32> {
        let mut best: Option<Line32> = None;
        for (dm, db) in [
            (0, 0),
            (0, 1),
            (0, -1),
            (1, 0),
            (-1, 0),
            (0, 2),
            (0, -2),
            (1, 1),
            (-1, -1),
        ] {
            let mut l = Line32 {
                m: ulps(m, dm),
                bp: ulps(bp, db),
                bn: ulps(bn, db),
                c,
                exc: [0; MAX_EXC],
                val: [0; MAX_EXC],
                n: 0,
                k,
            };
            let Some(cap) = best.map_or(under, |b| b.n).checked_sub(1) else {
                break;
            };
            if l.m < 0.0 || l.bn > l.bp {
                continue;
            }
            let Some(exc) = self.differs(st, |a| self.eval32(&l, a), cap) else {
                continue;
            };
            l.n = exc.len();
            for (i, &a) in exc.iter().enumerate() {
                (l.exc[i], l.val[i]) = (a, self.exact(a));
            }
            best = Some(l);
        }
        best
    }

    /// Whether the check applies: a clamp inside i8, lines that stay inside ±2³⁰ (so the
    /// float-to-int conversions cannot saturate) and an exact path that cannot wrap (so it is
    /// monotone).
    fn checkable(&self, amin: i32, amax: i32) -> bool {
        let inside = |t: f64| t.abs() < 2f64.powi(30);
        let tame = |a: i32| self.mult.apply(a).unsigned_abs() < 1 << 30;
        -128 <= self.lo
            && self.lo <= self.hi
            && self.hi <= 127
            && amin <= amax
            && self.m >= 0.0
            && self.bn <= self.bp
            && [amin, amax].iter().all(|&a| {
                let t = a as f64 * self.m + self.offset(a);
                inside(t) && tame(a)
            })
            && self.zo.unsigned_abs() < 1 << 20
    }

    /// The steps of [`Line::exact`] over [amin, amax].
    fn steps(&self, amin: i32, amax: i32) -> Steps {
        let e = |a: i32| self.exact(a) as i32;
        let (lo, hi) = (e(amin), e(amax));
        let mut near = amin as i64;
        let first = (lo + 1..=hi)
            .map(|q| {
                near = reach(amin, amax, near, |a| e(a) >= q);
                near
            })
            .collect();
        Steps {
            amin,
            amax,
            lo,
            hi,
            first,
        }
    }

    /// The accumulators in [amin, amax] where the monotone `f` differs from [`Line::exact`],
    /// if there are at most `cap`: per output level, those between the first accumulator each
    /// function reaches it at.
    fn differs(&self, st: &Steps, f: impl Fn(i32) -> i8, cap: usize) -> Option<Vec<i32>> {
        let g = |a: i32| f(a) as i32;
        let mut out: Vec<i32> = Vec::new();
        for q in st.lo.min(g(st.amin)) + 1..=st.hi.max(g(st.amax)) {
            let t = st.first(q);
            let u = reach(st.amin, st.amax, t, |a| g(a) >= q);
            let (a, b) = (t.min(u), t.max(u));
            if b - a > cap as i64 {
                return None;
            }
            out.extend((a..b).map(|v| v as i32));
            out.sort_unstable();
            out.dedup();
            if out.len() > cap {
                return None;
            }
        }
        Some(out)
    }
}

/// The steps of a monotone function onto levels over [amin, amax]: its values at the ends
/// and the first accumulator reaching each level in between.
struct Steps {
    amin: i32,
    amax: i32,
    lo: i32,
    hi: i32,
    /// first[k]: the first accumulator whose value is ≥ lo + 1 + k.
    first: Vec<i64>,
}

impl Steps {
    /// The first accumulator reaching level q (amax + 1 if none does).
    fn first(&self, q: i32) -> i64 {
        if q <= self.lo {
            self.amin as i64
        } else if q > self.hi {
            self.amax as i64 + 1
        } else {
            self.first[(q - self.lo - 1) as usize]
        }
    }
}

/// The first a in [amin, amax] with `p(a)` (p monotone false → true), or amax + 1, searched
/// outwards from the guess `near`.
fn reach(amin: i32, amax: i32, near: i64, p: impl Fn(i32) -> bool) -> i64 {
    let (min, end) = (amin as i64, amax as i64 + 1);
    let holds = |a: i64| a < end && p(a as i32);
    let near = near.clamp(min, end);
    // Bracket the answer in (lo, hi]: p fails at lo (or lo < min), holds at hi (or hi = end).
    let (mut lo, mut hi);
    if holds(near) {
        hi = near;
        let mut step = 1;
        lo = near - 1;
        while lo >= min && holds(lo) {
            hi = lo;
            lo -= step;
            step *= 2;
        }
    } else {
        lo = near;
        let mut step = 1;
        hi = (near + 1).min(end);
        while hi < end && !holds(hi) {
            lo = hi;
            hi = (hi + step).min(end);
            step *= 2;
        }
    }
    lo = lo.max(min - 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if holds(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// `x` moved by `n` units in the last place.
fn ulps(x: f32, n: i32) -> f32 {
    let mut y = x;
    for _ in 0..n.unsigned_abs() {
        y = if n > 0 { y.next_up() } else { y.next_down() };
    }
    y
}

/// ⌊t⌋ clamped to [lo, hi] (lo ≤ hi in i8), exactly: t is first clamped to [lo, hi + ½]
/// (the same for integer bounds), then truncated and corrected downwards. Branch-free, so
/// that loops over it vectorize.
#[inline(always)]
fn floor_clamp(t: f64, lo: i32, hi: i32) -> i8 {
    let c = t.max(lo as f64).min(hi as f64 + 0.5);
    // SAFETY: c is finite and lies in [i32::MIN, i32::MAX + ½) whatever lo and hi (max and
    // min return the bound for a NaN t), so its truncation fits in i32.
    let i: i32 = unsafe { c.to_int_unchecked() };
    (i - i32::from(c < i as f64)) as i8
}

/// Slope, offsets (acc ≥ a0, acc < a0) and a0 of the line of `mult` (see the module docs).
fn line_params(mult: FixedMultiplier, zo: i32) -> (f64, f64, f64, i32) {
    let (mant, shift) = (mult.mantissa as i64, mult.shift);
    let half = zo as f64 + 0.5;
    if mant <= 0 || shift <= -32 {
        // Nothing survives the multiply or the shift: y = z_o.
        return (0.0, half, half, i32::MIN);
    }
    if shift >= 0 {
        // A left shift (saturating, which the check catches) and no rounding shift.
        let m = mant as f64 * 2f64.powi(shift.min(32) - 31);
        return (m, half, half, i32::MIN);
    }
    let r = -shift;
    let m = mant as f64 * 2f64.powi(-31 - r);
    let bp = half + 2f64.powi(-r - 1);
    let a0 = -((1i64 << 30) / mant);
    (m, bp, bp - 2f64.powi(-r), a0 as i32)
}

/// A test line with its clamp and the accumulators it was verified over.
#[cfg(test)]
pub(super) struct TestLine {
    pub line: Line,
    pub clamp: (i32, i32),
    pub range: (i32, i32),
}

/// `n` lines of random multipliers (10⁰ down to 10⁻⁵, every 7th tripled), output zero points and
/// clamps (every 3rd clamped at the zero point), each verified over a range of accumulators
/// that spans about ±300 output steps (a fixed seed: the same lines on every run).
#[cfg(test)]
pub(super) fn random_lines(n: usize) -> Vec<TestLine> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|i| {
            let m =
                10f64.powf(-((next() % 500) as f64) / 100.0) * if i % 7 == 0 { 3.0 } else { 1.0 };
            let zo = (next() % 256) as i32 - 128;
            let clamp = if i % 3 == 0 {
                (zo.max(-128), 127)
            } else {
                (-128, 127)
            };
            let span = ((300.0 / m) as i64).clamp(10, 200_000) as i32;
            let range = (-span, span + (next() % 1000) as i32);
            let line = Line::new(
                FixedMultiplier::from_f64(m),
                (zo, clamp.0, clamp.1),
                Some(range),
            );
            TestLine { line, clamp, range }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines verified over wide ranges equal the exact path everywhere, checked by brute force.
    #[test]
    fn verified_lines_equal_the_fixed_point_path_by_brute_force() {
        let (mut verified, mut f32s) = (0, 0);
        for (i, t) in random_lines(60).iter().enumerate() {
            let line = &t.line;
            verified += usize::from(line.fused && line.unfused);
            f32s += usize::from(line.f32.is_some());
            for a in t.range.0..=t.range.1 {
                let want = line.exact(a);
                if let Some(got) = line.eval_f32(a) {
                    assert_eq!(got, want, "f32: line {i} acc {a}");
                }
                if line.fused {
                    assert_eq!(line.eval_fused(a), want, "line {i} acc {a}");
                }
                if line.unfused {
                    assert_eq!(line.eval_unfused(a), want, "line {i} acc {a}");
                }
            }
        }
        assert!(verified >= 58, "only {verified} of 60 lines verified");
        assert!(f32s >= 50, "only {f32s} of 60 f32 lines");
    }

    /// A line clamped at its zero point (a fused ReLU) takes one offset for every accumulator
    /// and still equals the exact path everywhere (brute force); a line of the full i8 range
    /// keeps its two offsets, since below a₀ the second one is what the exact path computes.
    #[test]
    fn a_line_clamped_at_its_zero_point_has_one_offset() {
        let (mut one, mut clamped) = (0, 0);
        for (i, t) in random_lines(60).iter().enumerate() {
            let Some(l) = t.line.f32 else { continue };
            let at_zero_point = t.clamp.0 == t.line.zo && t.line.bp != t.line.bn;
            if !at_zero_point {
                let full = t.clamp == (-128, 127) && t.line.bp != t.line.bn;
                let wide = t.line.a0 > t.range.0 + 1000;
                assert!(
                    !(full && wide) || l.bp != l.bn,
                    "line {i}: two offsets kept"
                );
                continue;
            }
            clamped += 1;
            one += usize::from(l.bp == l.bn);
            for a in t.range.0..=t.range.1 {
                assert_eq!(
                    t.line.eval_f32(a),
                    Some(t.line.exact(a)),
                    "line {i} acc {a}"
                );
            }
        }
        assert!(
            clamped >= 10 && one == clamped,
            "{one} of {clamped} with one offset"
        );
    }

    #[test]
    fn zero_and_huge_multipliers_keep_a_valid_line_or_the_exact_path() {
        for m in [0.0, 1e-12, 0.75, 1.0, 5.0, 1e9] {
            let mult = FixedMultiplier::from_f64(m);
            let line = Line::new(mult, (3, -128, 127), Some((-70_000, 70_000)));
            for a in (-70_000..=70_000).step_by(7) {
                if line.fused {
                    assert_eq!(line.eval_fused(a), line.exact(a), "m {m} acc {a}");
                }
                if line.unfused {
                    assert_eq!(line.eval_unfused(a), line.exact(a), "m {m} acc {a}");
                }
                if let Some(got) = line.eval_f32(a) {
                    assert_eq!(got, line.exact(a), "f32: m {m} acc {a}");
                }
            }
        }
    }
}
