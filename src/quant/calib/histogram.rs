//! Streaming histogram with fixed memory, exact merge and exact summary statistics.
//!
//! # Design
//!
//! * Bins are anchored at 0 and have a power-of-two width `w = 2^e`: bin `g` (a global index)
//!   holds the values in `[g·w, (g+1)·w)`. The histogram stores a window of `nbins`
//!   consecutive global bins starting at the bin of the smallest non-zero value.
//! * When data arrives outside the window, `e` grows (pairs of adjacent bins merge, which is
//!   exact because the grids are nested) until the whole non-zero range fits.
//!   `e` is always the smallest exponent for which the non-zero range `[nz_min, nz_max]` fits in
//!   `nbins` bins, but never finer than `2^(⌊log2 max|x|⌋ − 40)` (so constant data gets a valid
//!   grid). Both bounds depend only on the final min/max, so the bin counts do not depend on
//!   how the values were split into batches or in what order partial histograms were merged:
//!   streaming `add`, one-shot `from_values` and `merge` give **identical counts**.
//! * Exact zeros (+0.0 and −0.0) are counted apart and never sit in a bin, so the zero spike of
//!   post-ReLU data never mixes with small positive values.
//! * Each bin also keeps the sum and the sum of squares of the values' offsets inside the bin,
//!   so strategies know each bin's exact mean and its spread: a bin whose values are all one
//!   exact value (such as MNIST's background −0.4242) is a point mass at that exact value, and
//!   a bin of two values is known exactly. Strategies model every other bin as uniform over
//!   the interval around its mean that matches its spread.
//! * Spikes (for KL and ACIQ): a bin whose count exceeds the mean of its ±4 neighbours by at
//!   least 1% of all values and is at least 4× that mean holds a single repeated value (a
//!   ReLU(bias) constant, an input background) on top of the local density.
//! * Exact count, min, max and central moments (mean, std, skewness, kurtosis) are tracked
//!   independently of the bins.
//!
//! # Resolution
//!
//! With `n` bins, the bin width is less than `2·(nz_max − nz_min)/(n − 2)`: the non-zero data
//! range always spans more than `(n−2)/2` bins (1023 of the default 2048), unless that range is
//! narrower than `2^−40·max|x|`. Memory is `3·n` words whatever the number of values.

use super::stats::{Moments, Stats};
use crate::quant::qparams::ClipRange;
use serde::{Deserialize, Serialize};

/// Default number of bins (as TensorRT's entropy calibrator).
pub const DEFAULT_BINS: usize = 2048;
/// Values binned per block (zeros dropped, then bins located, then counted).
const BLOCK: usize = 1024;
/// Smallest number of bins a histogram may have; `with_bins` raises smaller requests to this.
pub const MIN_BINS: usize = 8;
/// The finest bin width is 2^(⌊log2 max|x|⌋ − REL_EXP).
const REL_EXP: i32 = 40;
/// Half-width (in bin widths) below which a bin's values are treated as one exact value.
const POINT_HALF_WIDTH: f64 = 1e-3;
/// A bin whose excess over its neighbours holds at least this fraction of all values is a
/// spike (see `Histogram::spikes`).
const SPIKE_FRACTION: f64 = 0.01;
/// Neighbours on each side that define a bin's expected count in spike detection.
const SPIKE_NEIGHBOURS: usize = 4;

/// Streaming histogram with fixed memory (default 2048 bins) that also tracks the exact count,
/// min, max, the count of exact zeros and the moments needed for mean, std, skewness and
/// kurtosis. See the module documentation for the binning scheme and its guaranteed resolution.
///
/// Non-finite values (NaN, ±inf) are ignored and counted in [`Histogram::nonfinite`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Histogram {
    nbins: usize,
    /// Bin width is 2^exp (meaningful once a non-zero value was added).
    exp: i32,
    /// Global index of `counts[0]`.
    offset: i64,
    /// Count per bin.
    counts: Vec<u64>,
    /// Per bin: Σ u where u = x/w − g ∈ [0, 1) is the value's position inside its bin.
    sum_u: Vec<f64>,
    /// Per bin: Σ u².
    sum_u2: Vec<f64>,
    nonzero: u64,
    zeros: u64,
    nonfinite: u64,
    min: f32,
    max: f32,
    nz_min: f32,
    nz_max: f32,
    moments: Moments,
}

/// One non-empty bin modelled as `count` values spread uniformly over `[lo, hi]`, the interval
/// centred on the bin's exact mean whose width matches the bin's spread (clipped to the bin and
/// to the data's range). `lo == hi` means a point mass (all values equal, up to rounding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cell {
    pub lo: f64,
    pub hi: f64,
    pub count: f64,
}

impl Cell {
    /// The cell's mean (its centre).
    pub fn mean(&self) -> f64 {
        0.5 * (self.lo + self.hi)
    }
    /// True when the cell is a point mass.
    pub fn is_point(&self) -> bool {
        self.lo == self.hi
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Result of the first pass over a batch.
struct Scan {
    nonfinite: u64,
    zeros: u64,
    min: f32,
    max: f32,
    nz_min: f32,
    nz_max: f32,
    sum: f64,
}

/// The first pass over a batch: [`scan_body`] compiled for AVX2 where the CPU has it (the same
/// operations per lane, so the same results, four times wider).
fn scan(values: &[f32]) -> Scan {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        return unsafe { scan_avx2(values) };
    }
    scan_body(values)
}

/// [`scan_body`] with AVX2 enabled.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2(values: &[f32]) -> Scan {
    scan_body(values)
}

#[inline(always)]
fn scan_body(values: &[f32]) -> Scan {
    const L: usize = 8;
    let mut mn = [f32::INFINITY; L];
    let mut mx = [f32::NEG_INFINITY; L];
    let mut nzmn = [f32::INFINITY; L];
    let mut nzmx = [f32::NEG_INFINITY; L];
    let mut sum = [0.0f64; L];
    let mut zeros = [0u32; L];
    let mut bad = [0u32; L];
    let mut zeros_total = 0u64;
    let mut bad_total = 0u64;
    // Chunks of at most 2^20 lanes-rows keep the u32 lane counters from overflowing.
    for block in values.chunks(L << 20) {
        let chunks = block.chunks_exact(L);
        let rest = chunks.remainder();
        // Branch-free on purpose (selects, no short-circuit): zeros and non-zeros interleave
        // unpredictably in activations.
        let mut step = |k: usize, v: f32| {
            bad[k] += (!v.is_finite()) as u32;
            mn[k] = if v < mn[k] { v } else { mn[k] };
            mx[k] = if v > mx[k] { v } else { mx[k] };
            let z = v == 0.0;
            zeros[k] += z as u32;
            let lo = if z { f32::INFINITY } else { v };
            let hi = if z { f32::NEG_INFINITY } else { v };
            nzmn[k] = if lo < nzmn[k] { lo } else { nzmn[k] };
            nzmx[k] = if hi > nzmx[k] { hi } else { nzmx[k] };
            sum[k] += v as f64;
        };
        for ch in chunks {
            for (k, &v) in ch.iter().enumerate() {
                step(k, v);
            }
        }
        for &v in rest {
            step(0, v);
        }
        zeros_total += zeros.iter().map(|&z| z as u64).sum::<u64>();
        bad_total += bad.iter().map(|&z| z as u64).sum::<u64>();
        zeros = [0; L];
        bad = [0; L];
    }
    let fold_min = |a: [f32; L]| a.iter().cloned().fold(f32::INFINITY, f32::min);
    let fold_max = |a: [f32; L]| a.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    Scan {
        nonfinite: bad_total,
        zeros: zeros_total,
        min: fold_min(mn),
        max: fold_max(mx),
        nz_min: fold_min(nzmn),
        nz_max: fold_max(nzmx),
        sum: sum.iter().sum(),
    }
}

/// Copies the non-zero values of `block` (at most [`BLOCK`]) to the front of `kept`, in order;
/// returns how many. AVX-512 compresses 16 at a time where the CPU has it.
fn drop_zeros(block: &[f32], kept: &mut [f32; BLOCK + 16]) -> usize {
    assert!(block.len() <= BLOCK, "one block at a time");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected just above; the block fits `kept` with 16 slots spare.
        return unsafe { drop_zeros_avx512(block, kept) };
    }
    keep_nonzero(block, kept, 0)
}

/// Appends the non-zero values of `xs` to `kept` after its first `m`, branch-free; returns the
/// new count.
fn keep_nonzero(xs: &[f32], kept: &mut [f32], mut m: usize) -> usize {
    for &x in xs {
        kept[m] = x;
        m += (x != 0.0) as usize;
    }
    m
}

/// [`drop_zeros`] with AVX-512: each 16 values compressed by their non-zero mask and stored
/// whole at the end of what is kept so far (the next store overwrites the spare lanes).
///
/// # Safety
/// The CPU must support AVX-512F; `block.len() ≤ BLOCK`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn drop_zeros_avx512(block: &[f32], kept: &mut [f32; BLOCK + 16]) -> usize {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    let mut m = 0;
    let chunks = block.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds 16 values; m + 16 ≤ block.len() ≤ BLOCK < kept.len() − 15.
        unsafe {
            let v = _mm512_loadu_ps(c.as_ptr());
            let nz = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v, zero);
            _mm512_storeu_ps(kept.as_mut_ptr().add(m), _mm512_maskz_compress_ps(nz, v));
            m += nz.count_ones() as usize;
        }
    }
    keep_nonzero(rest, kept, m)
}

/// Each value's bin (window index, from global bin `off`) and position u ∈ [0, 1) inside it,
/// with bins `1/inv_w` wide: [`locate_body`] compiled for AVX2 where the CPU has it (the same
/// operations per value).
fn locate(values: &[f32], inv_w: f64, off: i64, bins: &mut [usize], pos: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        return unsafe { locate_avx2(values, inv_w, off, bins, pos) };
    }
    locate_body(values, inv_w, off, bins, pos)
}

/// [`locate_body`] with AVX2 enabled.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn locate_avx2(values: &[f32], inv_w: f64, off: i64, bins: &mut [usize], pos: &mut [f64]) {
    locate_body(values, inv_w, off, bins, pos)
}

#[inline(always)]
fn locate_body(values: &[f32], inv_w: f64, off: i64, bins: &mut [usize], pos: &mut [f64]) {
    // floor(t) without a libm call or a saturating conversion: adding 1.5·2^52 rounds t to an
    // integer held in the low mantissa bits (|t| < 2^42 here: the grid is never finer than
    // 2^-40·max|x|), then one step down when rounding went up.
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    let magic_bits = MAGIC.to_bits() as i64;
    for ((&x, b), p) in values.iter().zip(bins).zip(pos) {
        let t = x as f64 * inv_w;
        let y = t + MAGIC;
        let rf = y - MAGIC;
        let up = (rf > t) as i64;
        let g = (y.to_bits() as i64 - magic_bits) - up;
        *p = t - (rf - up as f64);
        *b = (g - off) as usize;
    }
}

/// ⌊log2 x⌋ for a positive, finite, normal f64.
fn floor_log2(x: f64) -> i32 {
    ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

/// 2^e as f64 (exact for the exponents used here).
fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// ⌊x / 2^e⌋ as an integer.
fn bin_of(x: f32, e: i32) -> i64 {
    (x as f64 * pow2(-e)).floor() as i64
}

/// Moves a bin (global index `g` at exponent `e`) to exponent `e + s` (s ≥ 0): returns the new
/// global index and the transformed (Σu, Σu²).
fn coarsen(g: i64, s: i32, c: f64, su: f64, su2: f64) -> (i64, f64, f64) {
    if s == 0 {
        return (g, su, su2);
    }
    let (g2, r) = if s < 100 {
        let g2 = (g as i128) >> s;
        (g2 as i64, (g as i128 - (g2 << s)) as f64)
    } else {
        let g2 = if g < 0 { -1 } else { 0 };
        (g2, g as f64 - g2 as f64 * pow2(s))
    };
    let k = pow2(-s);
    (
        g2,
        (su + c * r) * k,
        (su2 + 2.0 * r * su + c * r * r) * k * k,
    )
}

impl Histogram {
    /// An empty histogram with the default 2048 bins.
    pub fn new() -> Self {
        Self::with_bins(DEFAULT_BINS)
    }

    /// An empty histogram with `bins` bins (at least [`MIN_BINS`]).
    pub fn with_bins(bins: usize) -> Self {
        let n = bins.max(MIN_BINS);
        Histogram {
            nbins: n,
            exp: 0,
            offset: 0,
            counts: vec![0; n],
            sum_u: vec![0.0; n],
            sum_u2: vec![0.0; n],
            nonzero: 0,
            zeros: 0,
            nonfinite: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            nz_min: f32::INFINITY,
            nz_max: f32::NEG_INFINITY,
            moments: Moments::default(),
        }
    }

    /// The histogram of `values` in one shot (for weights); identical to `new()` + `add`.
    pub fn from_values(values: &[f32]) -> Self {
        let mut h = Self::new();
        h.add(values);
        h
    }

    /// Adds a batch of values (streaming: the bin width grows as the range grows).
    pub fn add(&mut self, values: &[f32]) {
        if values.is_empty() {
            return;
        }
        let s = scan(values);
        if s.nonfinite > 0 {
            let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
            self.nonfinite += s.nonfinite;
            self.add(&finite);
            return;
        }
        let n_batch = values.len() as u64;
        let nz_batch = n_batch - s.zeros;
        if nz_batch > 0 {
            let lo = self.nz_min.min(s.nz_min);
            let hi = self.nz_max.max(s.nz_max);
            let lb = if self.nonzero > 0 { self.exp } else { i32::MIN };
            self.fit(lo, hi, lb);
            self.nz_min = lo;
            self.nz_max = hi;
            self.bin_batch(values);
        }
        self.nonzero += nz_batch;
        self.zeros += s.zeros;
        self.min = self.min.min(s.min);
        self.max = self.max.max(s.max);
        self.moments = Moments::combine(&self.moments, &Moments::of_finite(values, s.sum));
    }

    /// The hot loop: every non-zero value's bin. Zeros (counted apart) are dropped first,
    /// branch-free, a block at a time, so post-ReLU data does not chain updates of one slot;
    /// the non-zero values reach their bins in their original order.
    fn bin_batch(&mut self, values: &[f32]) {
        // 16 slots of slack: the vector compaction stores whole vectors.
        let mut kept = [0f32; BLOCK + 16];
        let mut at = ([0usize; BLOCK], [0f64; BLOCK]);
        for block in values.chunks(BLOCK) {
            let m = drop_zeros(block, &mut kept);
            self.bin_nonzero(&kept[..m], &mut at);
        }
    }

    /// Adds non-zero values (at most a block; all inside the window) to their bins: their bins
    /// and in-bin positions first (a loop that vectorizes), then the counts and sums.
    fn bin_nonzero(&mut self, values: &[f32], (bins, pos): &mut ([usize; BLOCK], [f64; BLOCK])) {
        let m = values.len().min(BLOCK);
        locate(values, pow2(-self.exp), self.offset, bins, pos);
        let (counts, su, su2) = (&mut self.counts, &mut self.sum_u, &mut self.sum_u2);
        for (&j, &u) in bins[..m].iter().zip(&pos[..m]) {
            counts[j] += 1;
            su[j] += u;
            su2[j] += u * u;
        }
    }

    /// True when `[lo, hi]` fits in the window at exponent `e`.
    fn fits(&self, lo: f32, hi: f32, e: i32) -> bool {
        bin_of(hi, e) - bin_of(lo, e) < self.nbins as i64
    }

    /// Chooses the exponent and window for the non-zero range `[lo, hi]` (never finer than
    /// `lb`) and moves the existing bins there.
    fn fit(&mut self, lo: f32, hi: f32, lb: i32) {
        let amax = (lo.abs().max(hi.abs())) as f64;
        let lb = lb.max(floor_log2(amax) - REL_EXP);
        let span = hi as f64 - lo as f64;
        let guess = if span > 0.0 {
            floor_log2(span / (self.nbins - 2) as f64) - 1
        } else {
            lb
        };
        let mut e = guess.max(lb);
        while !self.fits(lo, hi, e) {
            e += 1;
        }
        while e > lb && self.fits(lo, hi, e - 1) {
            e -= 1;
        }
        let off = bin_of(lo, e);
        if self.nonzero == 0 {
            self.exp = e;
            self.offset = off;
        } else if e != self.exp || off != self.offset {
            self.regrid(e, off);
        }
    }

    /// Re-bins the stored counts at exponent `e` (≥ current) with window start `off`.
    fn regrid(&mut self, e: i32, off: i64) {
        let n = self.nbins;
        let mut counts = vec![0u64; n];
        let mut su = vec![0.0f64; n];
        let mut su2 = vec![0.0f64; n];
        let s = e - self.exp;
        debug_assert!(s >= 0);
        for j in 0..n {
            let c = self.counts[j];
            if c == 0 {
                continue;
            }
            let (g, a, b) = coarsen(
                self.offset + j as i64,
                s,
                c as f64,
                self.sum_u[j],
                self.sum_u2[j],
            );
            let k = (g - off) as usize;
            debug_assert!(k < n);
            let k = k.min(n - 1);
            counts[k] += c;
            su[k] += a;
            su2[k] += b;
        }
        self.exp = e;
        self.offset = off;
        self.counts = counts;
        self.sum_u = su;
        self.sum_u2 = su2;
    }

    /// Adds everything `other` has seen (for rayon fold/reduce over batches). Counts, min, max
    /// and zeros are exact; the result's bins are the same as if all values had been added to
    /// one histogram. Histograms with different bin counts may be merged (the result keeps
    /// `self`'s).
    pub fn merge(&mut self, other: &Histogram) {
        if other.count() == 0 && other.nonfinite == 0 {
            return;
        }
        if other.nonzero > 0 {
            let lo = self.nz_min.min(other.nz_min);
            let hi = self.nz_max.max(other.nz_max);
            let lb = if self.nonzero > 0 {
                self.exp.max(other.exp)
            } else {
                other.exp
            };
            self.fit(lo, hi, lb);
            self.nz_min = lo;
            self.nz_max = hi;
            let s = self.exp - other.exp;
            for j in 0..other.nbins {
                let c = other.counts[j];
                if c == 0 {
                    continue;
                }
                let (g, a, b) = coarsen(
                    other.offset + j as i64,
                    s,
                    c as f64,
                    other.sum_u[j],
                    other.sum_u2[j],
                );
                let k = ((g - self.offset) as usize).min(self.nbins - 1);
                self.counts[k] += c;
                self.sum_u[k] += a;
                self.sum_u2[k] += b;
            }
        }
        self.nonzero += other.nonzero;
        self.zeros += other.zeros;
        self.nonfinite += other.nonfinite;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.moments = Moments::combine(&self.moments, &other.moments);
    }

    /// Number of (finite) values seen.
    pub fn count(&self) -> u64 {
        self.nonzero + self.zeros
    }

    /// Number of values that were exactly zero (kept outside the bins).
    pub fn zeros(&self) -> u64 {
        self.zeros
    }

    /// Number of non-finite values that were ignored.
    pub fn nonfinite(&self) -> u64 {
        self.nonfinite
    }

    /// Smallest value seen (0 for an empty histogram).
    pub fn min(&self) -> f32 {
        if self.count() == 0 { 0.0 } else { self.min }
    }

    /// Largest value seen (0 for an empty histogram).
    pub fn max(&self) -> f32 {
        if self.count() == 0 { 0.0 } else { self.max }
    }

    /// max(|min|, |max|).
    pub fn abs_max(&self) -> f32 {
        self.min().abs().max(self.max().abs())
    }

    /// Exact summary statistics of everything seen (kurtosis is the excess kurtosis).
    pub fn stats(&self) -> Stats {
        self.moments.to_stats(self.min(), self.max(), self.zeros)
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.nbins
    }

    /// Counts of the non-zero values per bin (exact zeros are not in any bin; see
    /// [`Histogram::zeros`]). Bin `j` covers `[lo + j·width, lo + (j+1)·width)` with
    /// `(lo, width) = bin_edges()`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// `(lo, bin width)` of the bins returned by [`Histogram::counts`]; `(0, 1)` while no
    /// non-zero value was seen. The width is a power of two.
    pub fn bin_edges(&self) -> (f64, f64) {
        if self.nonzero == 0 {
            return (0.0, 1.0);
        }
        let w = pow2(self.exp);
        (self.offset as f64 * w, w)
    }

    /// Exact mean of the values in bin `j` (None for an empty bin).
    pub fn bin_mean(&self, j: usize) -> Option<f64> {
        let c = *self.counts.get(j).filter(|_| j < self.nbins)?;
        if c == 0 {
            return None;
        }
        let (lo, w) = self.bin_edges();
        Some(lo + (j as f64 + self.sum_u[j] / c as f64) * w)
    }

    /// Bin `j` (non-empty) as a modelled cell; `(lo0, w) = bin_edges()`. Also returns the
    /// within-bin standard deviation (in value units).
    fn cell_of(&self, j: usize, lo0: f64, w: f64) -> (Cell, f64) {
        let (dmin, dmax) = (self.nz_min as f64, self.nz_max as f64);
        let cf = self.counts[j] as f64;
        let um = (self.sum_u[j] / cf).clamp(0.0, 1.0);
        let var = (self.sum_u2[j] / cf - um * um).max(0.0);
        let edge = lo0 + j as f64 * w;
        let mean = (edge + um * w).clamp(dmin, dmax);
        let sd = var.sqrt();
        let mut hh = (3.0f64.sqrt() * sd).min(um).min(1.0 - um);
        if hh < POINT_HALF_WIDTH {
            hh = 0.0;
        }
        let hh = (hh * w).min(mean - dmin).min(dmax - mean).max(0.0);
        (
            Cell {
                lo: mean - hh,
                hi: mean + hh,
                count: cf,
            },
            sd * w,
        )
    }

    /// Appends bin `j` (non-empty) to `out` as cells: one cell, or its two exact values for a
    /// bin holding exactly two different values (mean ± std recovers them).
    fn push_cells(&self, j: usize, lo0: f64, w: f64, out: &mut Vec<Cell>) {
        let (cell, sd) = self.cell_of(j, lo0, w);
        if self.counts[j] == 2 && !cell.is_point() {
            let m = cell.mean();
            let (dmin, dmax) = (self.nz_min as f64, self.nz_max as f64);
            for x in [(m - sd).max(dmin), (m + sd).min(dmax)] {
                out.push(Cell {
                    lo: x,
                    hi: x,
                    count: 1.0,
                });
            }
        } else {
            out.push(cell);
        }
    }

    /// The non-empty bins as modelled cells, in ascending order (zeros excluded).
    pub(crate) fn cells(&self) -> Vec<Cell> {
        if self.nonzero == 0 {
            return Vec::new();
        }
        let (lo0, w) = self.bin_edges();
        let mut out = Vec::with_capacity(self.nbins.min(self.nonzero as usize));
        for j in 0..self.nbins {
            if self.counts[j] > 0 {
                self.push_cells(j, lo0, w, &mut out);
            }
        }
        out
    }

    /// Smallest excess count of a bin that strategies treat as a spike: 1% of all values
    /// (zeros included), at least 2.
    pub(crate) fn spike_min(&self) -> f64 {
        (SPIKE_FRACTION * self.count() as f64).max(2.0)
    }

    /// The spikes: bins dominated by a single repeated value (MNIST's background, a ReLU(bias)
    /// constant), as (bin index j, excess count). A bin is a spike when its count exceeds the
    /// mean count of its neighbours (±4 bins) by at least [`Histogram::spike_min`] and is at
    /// least 4× that mean; the excess is the count minus the neighbours' mean (the part of the
    /// bin that the surrounding density does not explain). Exact zeros are never here.
    pub(crate) fn spikes(&self) -> Vec<(usize, f64)> {
        if self.nonzero == 0 {
            return Vec::new();
        }
        let min = self.spike_min();
        let n = self.nbins;
        let c = &self.counts[..n];
        let mut out = Vec::new();
        for j in 0..n {
            let cj = c[j] as f64;
            if cj < min {
                continue;
            }
            let (a, b) = (
                j.saturating_sub(SPIKE_NEIGHBOURS),
                (j + SPIKE_NEIGHBOURS).min(n - 1),
            );
            let around: u64 = c[a..=b].iter().sum::<u64>() - c[j];
            let reference = around as f64 / (b - a) as f64;
            let excess = cj - reference;
            if excess >= min && cj >= 4.0 * reference {
                out.push((j, excess));
            }
        }
        out
    }

    /// Splits the cells into the ordinary part and the spikes (as point cells at the bin's
    /// exact mean, with their excess count), each spike with its global bin index.
    pub(crate) fn split_spikes(&self) -> (Vec<Cell>, Vec<(i64, Cell)>) {
        let spikes = self.spikes();
        if spikes.is_empty() {
            return (self.cells(), Vec::new());
        }
        let (lo0, w) = self.bin_edges();
        let mut ordinary = Vec::new();
        let mut out = Vec::new();
        let mut k = 0;
        for j in (0..self.nbins).filter(|&j| self.counts[j] > 0) {
            let cell = self.cell_of(j, lo0, w).0;
            if k < spikes.len() && spikes[k].0 == j {
                let excess = spikes[k].1;
                k += 1;
                let m = cell.mean();
                out.push((
                    self.offset + j as i64,
                    Cell {
                        lo: m,
                        hi: m,
                        count: excess,
                    },
                ));
                if cell.count - excess > 0.0 {
                    ordinary.push(Cell {
                        count: cell.count - excess,
                        ..cell
                    });
                }
            } else {
                self.push_cells(j, lo0, w, &mut ordinary);
            }
        }
        (ordinary, out)
    }

    /// The raw bins as (global index, count) pairs at exponent `exp()` (for KL).
    pub(crate) fn raw_bins(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        let off = self.offset;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(move |(j, &c)| (off + j as i64, c))
    }

    /// The global index (bin `g` covers `[g·w, (g+1)·w)`) of stored bin `j`.
    pub(crate) fn global_index(&self, j: usize) -> i64 {
        self.offset + j as i64
    }

    /// log2 of the bin width.
    pub(crate) fn exp(&self) -> i32 {
        self.exp
    }

    /// Number of observed values outside `range` (what a clip to `range` would saturate),
    /// for the UI's "clipped: N (x%)". Exact when `range` covers `[min, max]` or when its ends
    /// fall between bins; otherwise the bins cut by an end contribute in proportion to the
    /// part outside (within one bin's count of the truth).
    pub fn count_outside(&self, range: ClipRange) -> u64 {
        if self.count() == 0 {
            return 0;
        }
        let (lo, hi) = (range.lo as f64, range.hi as f64);
        if lo <= self.min as f64 && hi >= self.max as f64 {
            return 0;
        }
        let mut out = 0.0;
        if 0.0 < lo || 0.0 > hi {
            out += self.zeros as f64;
        }
        for c in self.cells() {
            out += c.count * (frac_below(&c, lo) + frac_above(&c, hi));
        }
        (out.round() as u64).min(self.count())
    }

    /// The counts re-binned into `n` equal bins over `[lo, hi]` (for drawing); values outside
    /// `[lo, hi]` are left out, exact zeros go to the bin holding 0. Each bin's values are
    /// spread as modelled (a point for a single repeated value, else uniform around its mean).
    pub fn rebin(&self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        let mut out = vec![0.0; n];
        if n == 0 || hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            return out;
        }
        let w = (hi - lo) / n as f64;
        let idx = |x: f64| (((x - lo) / w).floor().max(0.0) as usize).min(n - 1);
        let put_point = |x: f64, c: f64, out: &mut Vec<f64>| {
            if x >= lo && x <= hi {
                out[idx(x)] += c;
            }
        };
        if self.zeros > 0 {
            put_point(0.0, self.zeros as f64, &mut out);
        }
        for c in self.cells() {
            if c.is_point() {
                put_point(c.lo, c.count, &mut out);
                continue;
            }
            let (a, b) = (c.lo.max(lo), c.hi.min(hi));
            if b < a {
                continue;
            }
            let dens = c.count / (c.hi - c.lo);
            let (ia, ib) = (idx(a), idx(b));
            for (k, slot) in out.iter_mut().enumerate().take(ib + 1).skip(ia) {
                let l = (lo + k as f64 * w).max(a);
                let r = (lo + (k + 1) as f64 * w).min(b);
                if r > l {
                    *slot += dens * (r - l);
                }
            }
        }
        out
    }
}

/// Fraction of a cell strictly below `x`.
pub(crate) fn frac_below(c: &Cell, x: f64) -> f64 {
    if c.is_point() {
        return if c.lo < x { 1.0 } else { 0.0 };
    }
    ((x - c.lo) / (c.hi - c.lo)).clamp(0.0, 1.0)
}

/// Fraction of a cell strictly above `x`.
pub(crate) fn frac_above(c: &Cell, x: f64) -> f64 {
    if c.is_point() {
        return if c.lo > x { 1.0 } else { 0.0 };
    }
    ((c.hi - x) / (c.hi - c.lo)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn drop_zeros_keeps_the_non_zero_values_in_order() {
        // Against a direct filter, on lengths around the vector width and block size, with
        // +0.0 and −0.0 dropped and subnormals kept.
        for len in [0, 1, 15, 16, 17, 100, BLOCK - 1, BLOCK] {
            let block: Vec<f32> = (0..len)
                .map(|i| match i % 7 {
                    0 | 3 => 0.0,
                    5 => -0.0,
                    6 => 1e-42,
                    _ => i as f32 - 50.0,
                })
                .collect();
            let mut kept = [f32::NAN; BLOCK + 16];
            let m = drop_zeros(&block, &mut kept);
            let want: Vec<f32> = block.iter().copied().filter(|&x| x != 0.0).collect();
            assert_eq!(&kept[..m], &want[..], "len {len}");
        }
    }

    fn sample(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|i| match i % 5 {
                0 => 0.0,
                1 => -0.4242,
                _ => (r.normal() * 1.5 + 0.3) as f32,
            })
            .collect()
    }

    fn assert_same_bins(a: &Histogram, b: &Histogram) {
        assert_eq!(a.count(), b.count());
        assert_eq!(a.zeros(), b.zeros());
        assert_eq!(a.bin_edges(), b.bin_edges());
        assert_eq!(a.counts(), b.counts());
        assert_eq!((a.min(), a.max()), (b.min(), b.max()));
        for j in 0..a.bins() {
            match (a.bin_mean(j), b.bin_mean(j)) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9 * (1.0 + x.abs()), "bin {j}"),
                (None, None) => {}
                _ => panic!("bin {j} differs"),
            }
        }
    }

    #[test]
    fn streaming_equals_one_shot_and_reference_moments() {
        let v = sample(50_000, 1);
        let one = Histogram::from_values(&v);
        let mut st = Histogram::new();
        // Batches that grow the range step by step (small values first, the widest last).
        let mut sorted_by_mag = v.clone();
        sorted_by_mag.sort_by(|a, b| a.abs().partial_cmp(&b.abs()).unwrap());
        for part in sorted_by_mag.chunks(7_001) {
            st.add(part);
        }
        assert_same_bins(&one, &st);
        assert_eq!(one.count(), 50_000);
        assert_eq!(one.counts().iter().sum::<u64>() + one.zeros(), 50_000);
        // Moments against a direct f64 reference.
        let x: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let m = |k: i32| x.iter().map(|v| (v - mean).powi(k)).sum::<f64>() / n;
        for s in [one.stats(), st.stats()] {
            assert!((s.mean - mean).abs() < 1e-10);
            assert!((s.std - m(2).sqrt()).abs() < 1e-10);
            assert!((s.skewness - m(3) / m(2).powf(1.5)).abs() < 1e-9);
            assert!((s.kurtosis - (m(4) / (m(2) * m(2)) - 3.0)).abs() < 1e-9);
            assert_eq!(s.min, v.iter().cloned().fold(f32::INFINITY, f32::min));
            assert_eq!(s.max, v.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
            assert_eq!(s.zeros, 10_000);
        }
        // The bins really hold the values: each bin's count is the brute-force count.
        let (lo, w) = one.bin_edges();
        for (j, &c) in one.counts().iter().enumerate() {
            let (a, b) = (lo + j as f64 * w, lo + (j + 1) as f64 * w);
            let brute = x.iter().filter(|&&v| v != 0.0 && v >= a && v < b).count() as u64;
            assert_eq!(c, brute, "bin {j}");
        }
    }

    #[test]
    fn merge_is_exact_in_any_order() {
        let v = sample(30_000, 2);
        let all = Histogram::from_values(&v);
        let parts: Vec<Histogram> = v.chunks(4_000).map(Histogram::from_values).collect();
        let mut fwd = Histogram::new();
        for p in &parts {
            fwd.merge(p);
        }
        let mut rev = Histogram::new();
        for p in parts.iter().rev() {
            rev.merge(p);
        }
        // Tree-shaped reduce, as rayon does.
        let tree = parts
            .chunks(2)
            .map(|c| {
                let mut h = c[0].clone();
                if let Some(o) = c.get(1) {
                    h.merge(o);
                }
                h
            })
            .reduce(|mut a, b| {
                a.merge(&b);
                a
            })
            .unwrap();
        for h in [&fwd, &rev, &tree] {
            assert_same_bins(&all, h);
            assert!((h.stats().std - all.stats().std).abs() < 1e-12);
            assert!((h.stats().kurtosis - all.stats().kurtosis).abs() < 1e-9);
        }
        // Merging an empty histogram changes nothing.
        let mut e = all.clone();
        e.merge(&Histogram::new());
        assert_same_bins(&all, &e);
        // Histograms with another bin count merge without losing a value.
        let mut mixed = Histogram::from_values(&v[..10_000]);
        let mut small = Histogram::with_bins(64);
        small.add(&v[10_000..]);
        mixed.merge(&small);
        assert_eq!(mixed.count(), all.count());
        assert_eq!(mixed.zeros(), all.zeros());
        assert_eq!(
            mixed.counts().iter().sum::<u64>(),
            all.counts().iter().sum::<u64>()
        );
        assert_eq!((mixed.min(), mixed.max()), (all.min(), all.max()));
    }

    #[test]
    fn spikes_inside_continuous_data_are_found() {
        // post-ReLU: the constants 0.35 (4%), 0.9 (3%) and 1.7 (2%) share their bins with
        // half-normal values; exact zeros are never spikes.
        let v = post_relu(200_000, 8);
        let h = Histogram::from_values(&v);
        let (_, spikes) = h.split_spikes();
        assert_eq!(spikes.len(), 3, "{spikes:?}");
        for ((_, c), (x, frac)) in spikes
            .iter()
            .zip([(0.35f32, 0.04), (0.9, 0.03), (1.7, 0.02)])
        {
            let truth = v.iter().filter(|&&y| y == x).count() as f64;
            assert!((c.lo - x as f64).abs() < 1e-4, "{c:?} vs {x}");
            assert!(
                (c.count - truth).abs() < 0.03 * truth,
                "{c:?}: {truth} ({frac})"
            );
        }
        // MNIST-like: the background; smooth data: none.
        let m = Histogram::from_values(&mnist_like(50_000, 9));
        let (_, s) = m.split_spikes();
        assert!(
            s.iter()
                .any(|(_, c)| c.lo as f32 == mnist_bg() && c.count >= 39_000.0)
        );
        let mut r = Rng::new(10);
        let n: Vec<f32> = (0..200_000).map(|_| r.normal() as f32).collect();
        assert!(Histogram::from_values(&n).spikes().is_empty());
    }

    #[test]
    fn bin_width_resolution_is_as_documented() {
        let mut r = Rng::new(3);
        for _ in 0..50 {
            let lo = r.uniform() * 20.0 - 10.0;
            let hi = lo + r.uniform().powi(3) * 10.0 + 1e-3;
            let v: Vec<f32> = (0..1000)
                .map(|_| (lo + r.uniform() * (hi - lo)) as f32)
                .collect();
            let h = Histogram::from_values(&v);
            let (nzmin, nzmax) = (h.nz_min as f64, h.nz_max as f64);
            let (_, w) = h.bin_edges();
            assert!(w < 2.0 * (nzmax - nzmin) / (DEFAULT_BINS - 2) as f64);
            let used = h.counts().iter().rposition(|&c| c > 0).unwrap() + 1;
            assert!(used > (DEFAULT_BINS - 2) / 2, "{used} bins used");
        }
    }

    #[test]
    fn count_outside_matches_brute_force() {
        let v = sample(20_000, 4);
        let h = Histogram::from_values(&v);
        let (_, w) = h.bin_edges();
        let mut r = Rng::new(5);
        for _ in 0..200 {
            let a = (r.normal() * 2.0) as f32;
            let b = a + (r.uniform() * 4.0) as f32;
            let range = ClipRange::new(a, b);
            let brute = v.iter().filter(|&&x| x < a || x > b).count() as i64;
            // Tolerance: the values within one bin width of either end.
            let near = v
                .iter()
                .filter(|&&x| {
                    x != 0.0
                        && ((x as f64 - a as f64).abs() <= w || (x as f64 - b as f64).abs() <= w)
                })
                .count() as i64;
            let got = h.count_outside(range) as i64;
            assert!(
                (got - brute).abs() <= near,
                "{a}..{b}: {got} vs {brute} (near {near})"
            );
        }
        let full = ClipRange::new(h.min(), h.max());
        assert_eq!(h.count_outside(full), 0);
        assert_eq!(
            h.count_outside(ClipRange::new(h.max() + 1.0, h.max() + 2.0)),
            20_000
        );
        // The zero spike is counted exactly.
        assert_eq!(
            h.count_outside(ClipRange::new(1e-3, 100.0)),
            v.iter().filter(|&&x| x < 1e-3).count() as u64
        );
    }

    #[test]
    fn memory_is_fixed() {
        let mut h = Histogram::new();
        let mut r = Rng::new(6);
        let before = (h.counts.len(), h.sum_u.len(), h.sum_u2.len());
        let mut batch = vec![0.0f32; 10_000];
        let mut scale = 1e-3;
        for _ in 0..100 {
            for x in batch.iter_mut() {
                *x = (r.normal() * scale) as f32;
            }
            scale *= 1.1;
            h.add(&batch);
        }
        assert_eq!(h.count(), 1_000_000);
        assert_eq!(before, (h.counts.len(), h.sum_u.len(), h.sum_u2.len()));
        assert_eq!(h.counts().len(), DEFAULT_BINS);
    }

    #[test]
    fn spikes_are_points_and_edge_cases_are_valid() {
        let mut v = vec![-0.4242f32; 800];
        v.extend((1..=200).map(|i| i as f32 * 0.014));
        let h = Histogram::from_values(&v);
        let spike = h
            .cells()
            .into_iter()
            .find(|c| c.count >= 800.0)
            .expect("spike cell");
        assert!(spike.is_point());
        assert!((spike.lo - (-0.4242f32) as f64).abs() < 1e-12);
        // Constant, all-zero, empty and non-finite input.
        let c = Histogram::from_values(&[3.5; 100]);
        assert_eq!((c.min(), c.max(), c.count()), (3.5, 3.5, 100));
        assert!(c.bin_edges().1 > 0.0);
        assert_eq!(c.counts().iter().sum::<u64>(), 100);
        let z = Histogram::from_values(&[0.0; 10]);
        assert_eq!((z.zeros(), z.count(), z.min(), z.max()), (10, 10, 0.0, 0.0));
        let e = Histogram::new();
        assert_eq!((e.count(), e.min(), e.max()), (0, 0.0, 0.0));
        let n = Histogram::from_values(&[1.0, f32::NAN, f32::INFINITY, -2.0]);
        assert_eq!(
            (n.count(), n.nonfinite(), n.min(), n.max()),
            (2, 2, -2.0, 1.0)
        );
        // Data far from zero gets a fine grid around it, not one anchored at 0.
        let far: Vec<f32> = (0..1000).map(|i| 1000.0 + i as f32 * 1e-3).collect();
        let f = Histogram::from_values(&far);
        assert!(f.bin_edges().1 < 1e-3);
    }

    #[test]
    fn rebin_preserves_mass_in_range() {
        let v = sample(10_000, 7);
        let h = Histogram::from_values(&v);
        let r = h.rebin(64, h.min() as f64, h.max() as f64);
        assert!((r.iter().sum::<f64>() - 10_000.0).abs() < 1e-6);
        // Against a brute-force 64-bin histogram, up to the bins' resolution.
        let (lo, hi) = (h.min() as f64, h.max() as f64);
        let w = (hi - lo) / 64.0;
        let mut brute = [0.0; 64];
        for &x in &v {
            brute[(((x as f64 - lo) / w) as usize).min(63)] += 1.0;
        }
        for k in 0..64 {
            assert!((r[k] - brute[k]).abs() <= 0.05 * brute[k] + 20.0, "bin {k}");
        }
        let narrow = h.rebin(10, 0.5, 1.0);
        let inside = v.iter().filter(|&&x| (0.5..=1.0).contains(&x)).count() as f64;
        assert!((narrow.iter().sum::<f64>() - inside).abs() < 0.02 * inside + 5.0);
    }
}
