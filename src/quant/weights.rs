//! Weight quantization: one clipping range and one set of qparams per tensor, output channel or
//! group, and the integer weights they give.

use super::calib::{Histogram, StrategyParams, choose_range};
use super::{ClipRange, Granularity, QParams, Strategy};
use crate::config::WeightSettings;
use rayon::prelude::*;

/// A weight matrix [rows = output channels, cols = in·kh·kw] in integers with its qparams.
#[derive(Debug, Clone, PartialEq)]
pub struct QWeights {
    /// Output channels.
    pub rows: usize,
    /// Elements per output channel.
    pub cols: usize,
    /// Integer weights, row-major (any bit width stored in i8).
    pub q: Vec<i8>,
    /// Granularity of `params`.
    pub granularity: Granularity,
    /// One entry per block: 1 (per tensor), rows (per channel) or rows × groups (row-major).
    pub params: Vec<QParams>,
    /// The clipping range each block's params came from.
    pub ranges: Vec<ClipRange>,
}

/// Number of groups per row for `granularity` over rows of `cols` elements.
pub fn groups_per_row(granularity: Granularity, cols: usize) -> usize {
    match granularity {
        Granularity::Group(n) => cols.div_ceil(n),
        _ => 1,
    }
}

/// Number of blocks (scale/zero-point pairs) for a [rows, cols] tensor.
pub fn block_count(granularity: Granularity, rows: usize, cols: usize) -> usize {
    match granularity {
        Granularity::PerTensor => 1,
        Granularity::PerChannel => rows,
        Granularity::Group(_) => rows * groups_per_row(granularity, cols),
    }
}

impl QWeights {
    /// Columns covered by one group (cols for per-tensor and per-channel).
    pub fn group_size(&self) -> usize {
        match self.granularity {
            Granularity::Group(n) => n.min(self.cols),
            _ => self.cols,
        }
    }

    /// Groups per row (1 unless grouped).
    pub fn groups(&self) -> usize {
        groups_per_row(self.granularity, self.cols)
    }

    /// The qparams that apply to row `r`, group `g`.
    pub fn param(&self, r: usize, g: usize) -> &QParams {
        match self.granularity {
            Granularity::PerTensor => &self.params[0],
            Granularity::PerChannel => &self.params[r],
            Granularity::Group(_) => &self.params[r * self.groups() + g],
        }
    }

    /// Bit width: the widest block's (blocks differ only with bits per output channel).
    pub fn bits(&self) -> u8 {
        self.params.iter().map(|p| p.bits).max().unwrap_or(8)
    }

    /// The bit width of each output channel when they differ (bits per channel), else `None`.
    pub fn row_bits(&self) -> Option<Vec<u8>> {
        if self.params.iter().all(|p| p.bits == self.params[0].bits) {
            return None;
        }
        Some((0..self.rows).map(|r| self.param(r, 0).bits).collect())
    }

    /// The blocks (indices into `params`) of output channel `r`: its groups, or the one
    /// per-tensor block.
    pub fn row_blocks(&self, r: usize) -> std::ops::Range<usize> {
        match self.granularity {
            Granularity::PerTensor => 0..1,
            _ => r * self.groups()..(r + 1) * self.groups(),
        }
    }

    /// The real weights these integers stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        let gs = self.group_size();
        let mut out = vec![0.0; self.q.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                let i = r * self.cols + c;
                out[i] = self.param(r, c / gs).dequantize(self.q[i] as i32);
            }
        }
        out
    }
}

/// The range a weight block gets under `s` (strategy, then the hand-set factor).
fn block_range(values: &[f32], s: &WeightSettings) -> ClipRange {
    let base = match s.strategy {
        Strategy::MinMax | Strategy::Manual => {
            let (lo, hi) = values
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            if lo > hi {
                ClipRange::new(0.0, 0.0)
            } else {
                ClipRange::new(lo, hi)
            }
        }
        strategy => choose_range(
            &Histogram::from_values(values),
            strategy,
            &StrategyParams {
                bits: s.bits,
                scheme: s.scheme,
                percentile: s.percentile,
            },
        ),
    };
    match s.clip {
        Some(f) => base.scaled(f),
        None => base,
    }
}

/// The mean of bit widths per channel (0 for none).
pub fn mean_bits(bits: &[u8]) -> f64 {
    bits.iter().map(|&b| b as f64).sum::<f64>() / bits.len().max(1) as f64
}

/// Quantizes a row-major [rows, cols] weight matrix under `s`.
pub fn quantize_weights(w: &[f32], rows: usize, cols: usize, s: &WeightSettings) -> QWeights {
    quantize_weights_rows(w, rows, cols, s, None)
}

/// [`quantize_weights`] with a bit width per output channel (`row_bits[r]` for row r, in place
/// of `s.bits`): each row's ranges are chosen and its integers rounded at its own width.
/// Per-tensor weights share one range, so they ignore `row_bits` (the configuration refuses
/// that combination).
pub fn quantize_weights_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    s: &WeightSettings,
    row_bits: Option<&[u8]>,
) -> QWeights {
    assert_eq!(w.len(), rows * cols, "weight matrix size");
    let row_bits = row_bits.filter(|_| s.granularity != Granularity::PerTensor);
    if let Some(b) = row_bits {
        assert_eq!(b.len(), rows, "one bit width per row");
    }
    let at = |r: usize| WeightSettings {
        bits: row_bits.map_or(s.bits, |b| b[r]),
        ..*s
    };
    let groups = groups_per_row(s.granularity, cols);
    let gs = match s.granularity {
        Granularity::Group(n) => n.min(cols),
        _ => cols,
    };
    let ranges: Vec<ClipRange> = match s.granularity {
        Granularity::PerTensor => vec![block_range(w, s)],
        Granularity::PerChannel => w
            .par_chunks(cols)
            .enumerate()
            .map(|(r, row)| block_range(row, &at(r)))
            .collect(),
        Granularity::Group(_) => (0..rows * groups)
            .into_par_iter()
            .map(|b| {
                let (r, g) = (b / groups, b % groups);
                let start = r * cols + g * gs;
                let end = r * cols + ((g + 1) * gs).min(cols);
                block_range(&w[start..end], &at(r))
            })
            .collect(),
    };
    let params: Vec<QParams> = ranges
        .iter()
        .enumerate()
        .map(|(b, &r)| QParams::from_range(r, at(b / groups).bits, s.scheme))
        .collect();
    let mut qw = QWeights {
        rows,
        cols,
        q: vec![0; w.len()],
        granularity: s.granularity,
        params,
        ranges,
    };
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            qw.q[i] = qw.param(r, c / gs).quantize(w[i]) as i8;
        }
    }
    qw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Scheme;

    fn settings(bits: u8, granularity: Granularity, scheme: Scheme) -> WeightSettings {
        WeightSettings {
            bits,
            scheme,
            granularity,
            strategy: Strategy::MinMax,
            percentile: 99.99,
            clip: None,
        }
    }

    #[test]
    fn per_channel_int4_by_hand() {
        // Row 0: amax 0.875 → scale 0.125; row 1: all zero → scale 1, all q = 0.
        let w = [0.875, -0.4375, 0.0625, 0.0, 0.0, 0.0];
        let q = quantize_weights(
            &w,
            2,
            3,
            &settings(4, Granularity::PerChannel, Scheme::Symmetric),
        );
        assert_eq!(q.q, vec![7, -4, 1, 0, 0, 0]); // -3.5 → -4, 0.5 → 1 (half away from zero)
        assert_eq!(q.params[0].scale, 0.125);
        assert_eq!(q.params[1].scale, 1.0);
        assert!(q.dequantize().iter().all(|v| v.is_finite()));
    }

    /// Symmetric min/max codes of `v` at `bits` in f64 (formats.md §3 written out): scale
    /// max|v| / (2^(bits−1) − 1), stored as f32, codes x / scale rounded half away from zero,
    /// clamped.
    fn symmetric_f64(v: &[f32], bits: u8) -> (f64, Vec<i8>) {
        let qmax = ((1i32 << (bits - 1)) - 1) as f64;
        let amax = v.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
        let scale = if amax > 0.0 { amax / qmax } else { 1.0 };
        let stored = scale as f32 as f64;
        let q = v
            .iter()
            .map(|&x| {
                let t = x as f64 / stored;
                let r = t.signum() * (t.abs() + 0.5).floor();
                r.clamp(-qmax - 1.0, qmax) as i8
            })
            .collect();
        (scale, q)
    }

    #[test]
    fn bits_per_row_quantize_each_row_or_group_at_its_own_width() {
        let (rows, cols) = (5, 12);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173 * (1 + i / cols) as f32)
            .collect();
        let row_bits = [2u8, 8, 3, 4, 2];
        for g in [Granularity::PerChannel, Granularity::Group(5)] {
            let s = settings(8, g, Scheme::Symmetric);
            let q = quantize_weights_rows(&w, rows, cols, &s, Some(&row_bits));
            let gs = q.group_size();
            for r in 0..rows {
                for start in (0..cols).step_by(gs) {
                    let end = (start + gs).min(cols);
                    let (scale, codes) =
                        symmetric_f64(&w[r * cols + start..r * cols + end], row_bits[r]);
                    let p = q.param(r, start / gs);
                    assert_eq!(p.bits, row_bits[r], "{g} row {r}");
                    assert!(
                        (p.scale as f64 - scale).abs() <= 1e-6 * scale,
                        "{g} row {r}"
                    );
                    assert_eq!(
                        &q.q[r * cols + start..r * cols + end],
                        &codes[..],
                        "{g} row {r}"
                    );
                }
            }
            assert_eq!(q.bits(), 8);
            assert_eq!(q.row_bits().as_deref(), Some(&row_bits[..]));
        }
        // One width for every row: the same as no widths, and no widths reported.
        let s = settings(3, Granularity::PerChannel, Scheme::Symmetric);
        let same = quantize_weights_rows(&w, rows, cols, &s, Some(&[3; 5]));
        assert_eq!(same, quantize_weights(&w, rows, cols, &s));
        assert_eq!(same.row_bits(), None);
    }

    #[test]
    fn groups_split_each_row_and_the_last_may_be_short() {
        let w: Vec<f32> = (0..10).map(|i| i as f32 - 4.0).collect(); // 2 rows × 5
        let q = quantize_weights(
            &w,
            2,
            5,
            &settings(8, Granularity::Group(2), Scheme::Symmetric),
        );
        assert_eq!(q.groups(), 3);
        assert_eq!(q.params.len(), 6);
        // Row 0 group 0 holds [-4, -3]: amax 4; row 1 group 2 holds [5]: amax 5.
        assert!((q.param(0, 0).scale - 4.0 / 127.0).abs() < 1e-7);
        assert!((q.param(1, 2).scale - 5.0 / 127.0).abs() < 1e-7);
        for (a, b) in q.dequantize().iter().zip(&w) {
            assert!((a - b).abs() <= 5.0 / 127.0 / 2.0 + 1e-6);
        }
    }

    #[test]
    fn per_tensor_shares_one_scale_and_asymmetric_uses_the_full_range() {
        let w = [-1.0, 0.5, 2.0, 3.0];
        let q = quantize_weights(
            &w,
            2,
            2,
            &settings(8, Granularity::PerTensor, Scheme::Asymmetric),
        );
        assert_eq!(q.params.len(), 1);
        assert_eq!(q.q[0] as i32, -128);
        assert_eq!(q.q[3] as i32, 127);
    }
}
