//! The `kl` strategy: TensorRT-style entropy calibration (formats.md §3).
//!
//! The histogram of |x| (signed data, `2^(B−1)` levels) or of x (one-sided data, min ≥ 0,
//! `2^B` levels with the asymmetric scheme, `2^(B−1)` with the symmetric one, whose grid has
//! only `2^(B−1) − 1` positive levels) over `[0, max|x|]`, with at most [`KL_BINS`] bins, is
//! searched for the threshold bin `i` (from `max(128, levels)` to the last bin) whose
//! clipped-and-quantized distribution is closest to the original:
//!
//! * P: the bins below `i`, with the tail beyond folded into bin `i−1`;
//! * Q: the bins below `i` *without* the tail, merged into `levels` groups (bin `j` goes to
//!   group `⌊j·levels/i⌋`), each group's mass spread evenly over the bins where P is non-zero
//!   (as MXNet/TVM's reference implementation);
//! * the threshold with the least KL(P‖Q) wins; a threshold where P has mass that Q cannot
//!   represent (infinite divergence) never wins.
//!
//! Spikes: exact zeros are not in the histogram's bins, so they are left out of the
//! divergence (they are exactly representable by every candidate grid and must not dominate
//! it). Other spikes — a bin dominated by a single value repeated in at least 1% of the
//! values, such as MNIST's background −0.4242 or a ReLU(bias) constant — are atoms of their own
//! while below the threshold, with Q equal to P there (one value quantizes to one value; TensorRT's even
//! spreading over the level's bins would charge ~p·ln(2) for merely sharing a level with a
//! neighbour, which makes plain KL prefer a threshold just above the spike and clip the whole
//! signal). Beyond the threshold they are clipped mass like any other.
//!
//! Each divergence costs O(levels) thanks to prefix sums of counts, non-zero bins and
//! `c·ln c`. When `candidates × levels` exceeds a budget of 128k (only at 7–8 bits on a
//! histogram of more than ~640 one-sided or ~1150 signed |x| bins: streamed activations, not
//! per-channel weights), the thresholds are searched with a stride and then refined bin by bin
//! around the three best strided ones.
//!
//! Bins: the |x| grid is the histogram's own power-of-two grid folded at 0 and, if it would
//! exceed [`KL_BINS`], coarsened by a power of two. With the default 2048 histogram bins it has
//! 1023–2048 bins for one-sided data and at least 511 for signed data (|x| covers about half
//! of a symmetric signed range); fewer than TensorRT's fixed 2048, so signed thresholds are
//! a little coarser.

use super::histogram::Histogram;
use crate::quant::qparams::ClipRange;
use crate::quant::scheme::Scheme;
use std::sync::OnceLock;

/// Largest number of bins of the |x| histogram.
pub const KL_BINS: usize = 2048;
/// First candidate threshold bin (TensorRT's 128), or the level count if larger.
pub const START_BIN: usize = 128;
/// Budget of (candidate, level) evaluations before the search uses a stride.
const BUDGET: usize = 128 * 1024;
/// How many of the best strided candidates are refined bin by bin.
const REFINE: usize = 3;
const LN_TABLE: usize = 4096;

fn ln_table() -> &'static [f64] {
    static T: OnceLock<Vec<f64>> = OnceLock::new();
    // ln(0) is stored as 0: it is only ever multiplied by a zero count.
    T.get_or_init(|| {
        (0..LN_TABLE)
            .map(|i| if i == 0 { 0.0 } else { (i as f64).ln() })
            .collect()
    })
}

/// The clipping range KL calibration chooses.
pub fn range(hist: &Histogram, bits: u8, scheme: Scheme) -> ClipRange {
    let (min, max) = (hist.min(), hist.max());
    let amax = hist.abs_max();
    if hist.count() == 0 || amax == 0.0 {
        return ClipRange::new(0.0, 0.0);
    }
    let one_sided = min >= 0.0;
    let levels = levels(bits, scheme, one_sided);
    let (h, spikes, width) = abs_histogram(hist);
    let i = optimal_bins_with_spikes(&h, &spikes, levels, START_BIN);
    let t = ((i as f64 * width) as f32).min(amax);
    if one_sided {
        ClipRange::new(min.min(t), t)
    } else {
        ClipRange::new(min.max(-t), max.min(t))
    }
}

/// The number of groups the kept bins merge into: the grid's levels over `[0, t]`. One-sided
/// data on the asymmetric grid uses all `2^B` levels; a symmetric grid has `2^(B−1)` values
/// (0 and `2^(B−1) − 1` positive levels) on either side, as TensorRT's signed calibration.
pub fn levels(bits: u8, scheme: Scheme, one_sided: bool) -> usize {
    if one_sided && scheme == Scheme::Asymmetric {
        1usize << bits
    } else {
        1usize << (bits - 1)
    }
}

/// Counts of the non-zero |x| over `[0, nb·width)` in `nb ≤ KL_BINS` bins, the part of each
/// bin's count that is spikes (single repeated values, see `Histogram::spikes`), and the
/// bin width.
pub(crate) fn abs_histogram(hist: &Histogram) -> (Vec<u64>, Vec<u64>, f64) {
    let folded = |g: i64| if g >= 0 { g } else { -g - 1 };
    let Some(pmax) = hist.raw_bins().map(|(g, _)| folded(g)).max() else {
        return (Vec::new(), Vec::new(), 1.0);
    };
    let mut s = 0u32;
    while (pmax >> s) as usize >= KL_BINS {
        s += 1;
    }
    let nb = (pmax >> s) as usize + 1;
    let mut h = vec![0u64; nb];
    for (g, c) in hist.raw_bins() {
        h[(folded(g) >> s) as usize] += c;
    }
    let mut sp = vec![0u64; nb];
    for (j, excess) in hist.spikes() {
        sp[(folded(hist.global_index(j)) >> s) as usize] += excess.floor() as u64;
    }
    (h, sp, 2f64.powi(hist.exp() + s as i32))
}

/// Prefix sums that make each divergence O(levels): `c` over all counts, the others over the
/// ordinary (non-spike) counts.
struct Prefix {
    h: Vec<u64>,
    c: Vec<u64>,
    co: Vec<u64>,
    nz: Vec<u32>,
    hl: Vec<f64>,
}

impl Prefix {
    fn new(h: &[u64], spikes: &[u64], table: &[f64]) -> Self {
        let nb = h.len();
        let mut p = Prefix {
            h: vec![0; nb],
            c: vec![0; nb + 1],
            co: vec![0; nb + 1],
            nz: vec![0; nb + 1],
            hl: vec![0.0; nb + 1],
        };
        for (j, &hj) in h.iter().enumerate() {
            let x = hj - spikes.get(j).copied().unwrap_or(0).min(hj);
            p.h[j] = x;
            p.c[j + 1] = p.c[j] + hj;
            p.co[j + 1] = p.co[j] + x;
            p.nz[j + 1] = p.nz[j] + (x > 0) as u32;
            p.hl[j + 1] = p.hl[j] + x_ln_x(x, table);
        }
        p
    }
}

/// ln(x) for a count, from a table for small counts.
#[inline]
fn ln_count(x: u64, table: &[f64]) -> f64 {
    match table.get(x as usize) {
        Some(&l) => l,
        None => (x as f64).ln(),
    }
}

/// x·ln(x) (0 for x = 0).
#[inline]
fn x_ln_x(x: u64, table: &[f64]) -> f64 {
    if x == 0 {
        0.0
    } else {
        x as f64 * ln_count(x, table)
    }
}

/// KL(P‖Q) for keeping the first `i` bins (None when infinite).
///
/// Spikes below the threshold are atoms of their own with q = p (a single value quantizes to a
/// single value: no information lost), so they add nothing but their mass to both sides;
/// spikes beyond the threshold are part of the folded tail like any other value.
fn divergence(pre: &Prefix, i: usize, levels: usize, table: &[f64]) -> Option<f64> {
    let nb = pre.h.len();
    let n_total = pre.c[nb];
    let kept = pre.c[i];
    if kept == 0 {
        return None;
    }
    let tail = n_total - kept;
    let last = i - 1;
    let p_last = pre.h[last] + tail;
    // Group k holds bins [ceil(k·i/L), ceil((k+1)·i/L)); L is a power of two: shift, no div.
    let shift = levels.trailing_zeros();
    let round_up = levels - 1;
    // The last group first (it decides whether the divergence is finite): it also receives
    // the folded tail in P, while Q spreads only the kept mass, over the bins where P is
    // non-zero (the last bin included when the tail lands there).
    let b_last = ((levels - 1) * i + round_up) >> shift;
    let lk = pre.co[i] - pre.co[b_last];
    if lk == 0 && tail > 0 {
        return None;
    }
    let nz = (pre.nz[i] - pre.nz[b_last]) as u64 + (pre.h[last] == 0 && tail > 0) as u64;
    let mut term_q = 0.0;
    if lk > 0 {
        term_q += (lk + tail) as f64 * (ln_count(lk, table) - ln_count(nz, table));
    }
    // The other groups: branch-free (an empty group adds 0·(0 − 0)), two accumulators.
    let (co, nzs) = (&pre.co[..=i], &pre.nz[..=i]);
    let group = |b0: usize, b1: usize| -> f64 {
        let lk = co[b1] - co[b0];
        let nz = (nzs[b1] - nzs[b0]) as u64;
        lk as i64 as f64 * (ln_count(lk, table) - ln_count(nz, table))
    };
    let (mut q0, mut q1) = (0.0, 0.0);
    let mut b0 = 0usize;
    let groups = levels - 1;
    let mut k = 0;
    while k + 2 <= groups {
        let b1 = ((k + 1) * i + round_up) >> shift;
        let b2 = ((k + 2) * i + round_up) >> shift;
        q0 += group(b0, b1);
        q1 += group(b1, b2);
        b0 = b2;
        k += 2;
    }
    if k < groups {
        q0 += group(b0, ((k + 1) * i + round_up) >> shift);
    }
    term_q += q0 + q1;
    let term_p = pre.hl[last] + x_ln_x(p_last, table);
    Some((term_p - term_q) / n_total as f64 + (kept as f64 / n_total as f64).ln())
}

/// The number of bins `i` to keep (the threshold is `i` bin widths) for the counts `h` merged
/// into `levels` quantized bins; candidates from `max(start, levels)` to `h.len()`.
/// `levels` must be a power of two (it is 2^(B−1) or 2^B).
pub fn optimal_bins(h: &[u64], levels: usize, start: usize) -> usize {
    optimal_bins_with_spikes(h, &[], levels, start)
}

/// As [`optimal_bins`], where `spikes[j]` of the count `h[j]` are single repeated values
/// (treated as exactly representable while below the threshold).
pub fn optimal_bins_with_spikes(h: &[u64], spikes: &[u64], levels: usize, start: usize) -> usize {
    assert!(
        levels.is_power_of_two(),
        "levels {levels} is not a power of two"
    );
    let nb = h.len();
    let first = start.max(levels).max(1);
    if nb <= first {
        return nb;
    }
    let table = ln_table();
    let pre = Prefix::new(h, spikes, table);
    if pre.c[nb] == 0 {
        return nb;
    }
    let candidates = nb - first + 1;
    let stride = (candidates * levels).div_ceil(BUDGET).max(1);
    let mut best = (
        nb,
        divergence(&pre, nb, levels, table).unwrap_or(f64::INFINITY),
    );
    let consider = |i: usize, best: &mut (usize, f64)| {
        if let Some(d) = divergence(&pre, i, levels, table) {
            // Ties keep the larger threshold (clip less when it costs nothing).
            if d < best.1 || (d == best.1 && i > best.0) {
                *best = (i, d);
            }
        }
    };
    if stride == 1 {
        for i in first..nb {
            consider(i, &mut best);
        }
        return best.0;
    }
    // Strided pass, keeping the REFINE best; then every bin within a stride of each.
    let mut top: Vec<(usize, f64)> = vec![best];
    for i in (first..nb).step_by(stride) {
        if let Some(d) = divergence(&pre, i, levels, table) {
            top.push((i, d));
            top.sort_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
            top.truncate(REFINE);
        }
    }
    for &(c, _) in &top {
        for i in c.saturating_sub(stride - 1).max(first)..=(c + stride - 1).min(nb) {
            consider(i, &mut best);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// Straightforward reference: build P and Q atom by atom (ordinary bins, then spike atoms),
    /// normalize, sum p·ln(p/q).
    fn reference_divergence(h: &[u64], sp: &[u64], i: usize, levels: usize) -> f64 {
        let h: Vec<f64> = h.iter().map(|&x| x as f64).collect();
        let spk: Vec<f64> = (0..h.len())
            .map(|j| sp.get(j).copied().unwrap_or(0) as f64)
            .collect();
        let ord: Vec<f64> = (0..h.len()).map(|j| h[j] - spk[j]).collect();
        // P over ordinary bins: tail (everything at or beyond i, spikes included) folded in.
        let mut p: Vec<f64> = ord[..i].to_vec();
        p[i - 1] += h[i..].iter().sum::<f64>();
        let (mut mass, mut nzc) = (vec![0.0; levels], vec![0usize; levels]);
        for j in 0..i {
            mass[j * levels / i] += ord[j];
            nzc[j * levels / i] += (p[j] > 0.0) as usize;
        }
        let mut q = vec![0.0; i];
        for j in 0..i {
            if p[j] > 0.0 {
                q[j] = mass[j * levels / i] / nzc[j * levels / i] as f64;
            }
        }
        // Spike atoms below the threshold: p = q.
        p.extend_from_slice(&spk[..i]);
        q.extend_from_slice(&spk[..i]);
        let (sp_, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
        let mut d = 0.0;
        for j in 0..p.len() {
            if p[j] > 0.0 {
                if q[j] == 0.0 {
                    return f64::INFINITY;
                }
                d += p[j] / sp_ * ((p[j] / sp_) / (q[j] / sq)).ln();
            }
        }
        d
    }

    fn reference_best(h: &[u64], sp: &[u64], levels: usize, start: usize) -> usize {
        let mut best = (h.len(), reference_divergence(h, sp, h.len(), levels));
        for i in (start.max(levels)..h.len()).rev() {
            let d = reference_divergence(h, sp, i, levels);
            if d < best.1 {
                best = (i, d);
            }
        }
        best.0
    }

    #[test]
    fn divergence_matches_reference() {
        let mut r = Rng::new(1);
        for trial in 0..40 {
            let nb = 40 + r.below(200) as usize;
            let h: Vec<u64> = (0..nb)
                .map(|j| {
                    if r.uniform() < 0.2 {
                        0
                    } else {
                        ((1000.0 * (-(j as f64) / 30.0).exp()) * r.uniform()) as u64
                    }
                })
                .collect();
            // Half of the trials carry spikes (on top of a bin's count, or a whole bin).
            let mut sp = vec![0u64; nb];
            if trial % 2 == 1 {
                for _ in 0..3 {
                    let j = r.below(nb as u64) as usize;
                    sp[j] = r.below(2000) + 500;
                }
            }
            let h: Vec<u64> = h.iter().zip(&sp).map(|(a, b)| a + b).collect();
            let table = ln_table();
            let pre = Prefix::new(&h, &sp, table);
            for levels in [4usize, 8, 16] {
                for i in levels..=nb {
                    let a = divergence(&pre, i, levels, table).unwrap_or(f64::INFINITY);
                    let b = reference_divergence(&h, &sp, i, levels);
                    assert!(
                        a == b || (a - b).abs() < 1e-9 * (1.0 + b.abs()),
                        "trial {trial} levels {levels} i {i}: {a} vs {b}"
                    );
                }
                assert_eq!(
                    optimal_bins_with_spikes(&h, &sp, levels, 16),
                    reference_best(&h, &sp, levels, 16),
                    "trial {trial} levels {levels}"
                );
            }
        }
    }

    /// pytorch-quantization's `_compute_amax_entropy` as written (stride 1): `bins[0]` (the
    /// zero spike) replaced by `bins[1]`; for each candidate `i` from `start`, bin `j` joins
    /// group `digitize(j, linspace(0, i, L + 1)) − 1`, empty bins leave their group; Q spreads a
    /// group's mass evenly over its non-empty bins (the tail not included), P folds the tail
    /// into bin `i − 1`; both normalized, KL = Σ p·ln(p/q), infinite where q = 0 < p; the
    /// LAST minimum wins. Returns (chosen i, all divergences by i).
    fn tensorrt_choice(calib_hist: &[u64], levels: usize, start: usize) -> (usize, Vec<f64>) {
        let mut bins: Vec<f64> = calib_hist.iter().map(|&c| c as f64).collect();
        bins[0] = bins[1];
        let mut div = vec![f64::INFINITY; bins.len() + 1];
        for i in start..=bins.len() {
            let edges: Vec<f64> = (0..=levels)
                .map(|k| k as f64 * i as f64 / levels as f64)
                .collect();
            let group = |j: usize| edges.iter().filter(|&&e| e <= j as f64).count() - 1;
            let (mut mass, mut nonempty) = (vec![0.0; levels], vec![0.0; levels]);
            for j in 0..i {
                if bins[j] > 0.0 {
                    mass[group(j)] += bins[j];
                    nonempty[group(j)] += 1.0;
                }
            }
            let q: Vec<f64> = (0..i)
                .map(|j| match bins[j] > 0.0 {
                    true => mass[group(j)] / nonempty[group(j)],
                    false => 0.0,
                })
                .collect();
            let mut p = bins[..i].to_vec();
            p[i - 1] += bins[i..].iter().sum::<f64>();
            let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
            let mut d = 0.0;
            for j in 0..i {
                if p[j] > 0.0 {
                    d += match q[j] > 0.0 {
                        true => p[j] / sp * ((p[j] / sp) / (q[j] / sq)).ln(),
                        false => f64::INFINITY,
                    };
                }
            }
            div[i] = d;
        }
        let best = (start..=bins.len())
            .rev()
            .min_by(|&a, &b| div[a].total_cmp(&div[b]))
            .unwrap();
        (best, div)
    }

    #[test]
    fn zero_spike_choice_matches_tensorrt_definition() {
        // 2048 bins of |x| of post-ReLU-like data: a zero spike of 30-90% of the values in
        // bin 0, a smooth non-zero density with its own count in bin 0 equal to bin 1's (so
        // TensorRT's bins[0] = bins[1] is exactly "leave the zeros out", as qscope does),
        // empty bins inside and at the far tail. qscope's search must choose the threshold
        // of TensorRT's definition, or one whose divergence ties it (within rounding).
        let mut r = Rng::new(12);
        for trial in 0..6 {
            let nb = KL_BINS;
            let scale = 80.0 + 400.0 * r.uniform();
            let mut h: Vec<u64> = (0..nb)
                .map(|j| {
                    let x = j as f64 / scale;
                    let dens = 4000.0 * (-x).exp() * (1.0 + 0.3 * (x * 3.0).sin());
                    match r.uniform() < 0.05 {
                        true => 0,
                        false => (dens * (0.5 + r.uniform())) as u64,
                    }
                })
                .collect();
            h[0] = h[1];
            let total: u64 = h.iter().sum();
            let zeros = (total as f64 * (0.3 + 0.6 * r.uniform())) as u64;
            let mut calib_hist = h.clone();
            calib_hist[0] += zeros;
            for levels in [8usize, 16] {
                let (want, div) = tensorrt_choice(&calib_hist, levels, START_BIN);
                let got = optimal_bins(&h, levels, START_BIN);
                assert!(
                    got == want || (div[got] - div[want]).abs() <= 1e-12 * div[want],
                    "trial {trial} levels {levels}: qscope {got} ({}) vs TensorRT {want} ({})",
                    div[got],
                    div[want]
                );
            }
        }
    }

    #[test]
    fn strided_search_is_close_to_exhaustive() {
        // Full-size histograms where the stride kicks in (up to 8-bit one-sided: 256 levels),
        // and a per-channel weight histogram (stride 2-3).
        let mut r = Rng::new(2);
        let sets: Vec<(Vec<f32>, usize)> = vec![
            (
                (0..200_000)
                    .map(|_| (r.normal().abs() * 1.3) as f32)
                    .collect(),
                256,
            ),
            ((0..200_000).map(|_| r.laplace(0.3) as f32).collect(), 128),
            (post_relu(200_000, 3), 256),
            (heavy(100_000, 4), 128),
            ((0..784).map(|_| (r.normal() * 0.05) as f32).collect(), 128),
        ];
        for (k, (v, levels)) in sets.iter().enumerate() {
            let (h, sp, _) = abs_histogram(&Histogram::from_values(v));
            let fast = optimal_bins_with_spikes(&h, &sp, *levels, START_BIN);
            let exact = reference_best(&h, &sp, *levels, START_BIN);
            let d_fast = reference_divergence(&h, &sp, fast, *levels);
            let d_exact = reference_divergence(&h, &sp, exact, *levels);
            assert!(
                d_fast <= d_exact * 1.05 + 1e-6,
                "set {k}: {fast}: {d_fast} vs {exact}: {d_exact}"
            );
        }
    }

    #[test]
    fn gaussian_threshold_is_plausible() {
        // Published TensorRT-style 8-bit thresholds for Gaussian data sit around 3-5 sigma;
        // 4 bits clip far more.
        let mut r = Rng::new(3);
        let v: Vec<f32> = (0..500_000).map(|_| r.normal() as f32).collect();
        let h = Histogram::from_values(&v);
        let t8 = range(&h, 8, Scheme::Symmetric).hi;
        let t4 = range(&h, 4, Scheme::Symmetric).hi;
        assert!((2.5..5.5).contains(&t8), "8-bit threshold {t8}");
        assert!(t4 < t8 && t4 > 1.0, "4-bit threshold {t4}");
    }

    #[test]
    fn exact_zeros_do_not_drive_the_threshold() {
        // Adding any number of exact zeros to post-ReLU data leaves the threshold unchanged.
        let mut r = Rng::new(4);
        let pos: Vec<f32> = (0..50_000).map(|_| (r.normal().abs()) as f32).collect();
        let base = range(&Histogram::from_values(&pos), 8, Scheme::Asymmetric);
        let mut with_zeros = pos.clone();
        with_zeros.extend(std::iter::repeat_n(0.0, 500_000));
        let spiky = range(&Histogram::from_values(&with_zeros), 8, Scheme::Asymmetric);
        assert_eq!(base.hi, spiky.hi);
    }
}
