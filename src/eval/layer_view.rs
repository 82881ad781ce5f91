//! What a person looks at for one layer after a run: the weight and activation histograms
//! rebinned for drawing, the clipping range on each, how many values it clips, per-layer
//! statistics and per-channel weight ranges. Pure functions of a run's parameters and
//! calibration histograms; the terminal UI (and anything else that draws) only renders them.

use crate::model::Model;
use crate::params::{ModelParams, WeightQuant};
use crate::pipeline::Calibration;
use crate::quant::calib::{Histogram, Stats};
use crate::quant::{ClipRange, Granularity, QParams};

/// A histogram ready to draw: counts in equal bins over `[lo, hi]`, the clipping range on it and
/// what that range clips.
#[derive(Debug, Clone, PartialEq)]
pub struct HistView {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Counts per bin (`bins` of them).
    pub counts: Vec<f64>,
    /// The interval the integers represent (what is drawn as the clipping range); `None` when
    /// the values shown do not share one range (a per-channel tensor seen whole).
    pub clip: Option<ClipRange>,
    /// First and last bin inside `clip` (bins outside are the clipped part).
    pub clip_bins: Option<(usize, usize)>,
    /// Values that fall outside the representable interval by more than half a step.
    pub clipped: u64,
    /// Values in the histogram.
    pub total: u64,
    /// Statistics of the values.
    pub stats: Stats,
}

impl HistView {
    /// The share of values clipped, in [0, 1].
    pub fn clipped_share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.clipped as f64 / self.total as f64
        }
    }

    /// The largest bin count.
    pub fn max_count(&self) -> f64 {
        self.counts.iter().copied().fold(0.0, f64::max)
    }
}

/// One output channel's weights: their extent and the clipping range applied to them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelRange {
    /// Smallest weight of the channel.
    pub min: f32,
    /// Largest weight of the channel.
    pub max: f32,
    /// The representable interval (for groups: the envelope of the groups' intervals).
    pub clip: ClipRange,
    /// Weights of the channel clipped.
    pub clipped: u64,
}

/// A weight layer's weights as seen whole and per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightView {
    /// Granularity the weights were quantized with.
    pub granularity: Granularity,
    /// Output channels.
    pub rows: usize,
    /// Elements per output channel.
    pub cols: usize,
    /// The whole tensor (with its range when per-tensor).
    pub tensor: HistView,
    /// One histogram per output channel (empty when per-tensor).
    pub channels: Vec<HistView>,
    /// Per output channel: extent, range and clipped count.
    pub ranges: Vec<ChannelRange>,
}

/// Everything drawn for one quantization point: the network input or a weight layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerView {
    /// Layer name (`input` for the network input).
    pub name: String,
    /// The weights (`None` for the input and for layers kept in float).
    pub weight: Option<WeightView>,
    /// The (fused) output activation over the calibration set (`None` when kept in float or when
    /// no calibration ran, e.g. with loaded parameters).
    pub act: Option<HistView>,
}

/// The interval `qp` represents (drawn), and the wider interval beyond which a value is clipped
/// (further than half a step outside; nearer values only round to the end level).
pub fn clip_limits(qp: &QParams) -> (ClipRange, ClipRange) {
    let shown = qp.representable();
    let half = qp.scale * 0.5;
    (shown, ClipRange::new(shown.lo - half, shown.hi + half))
}

/// The bin index of `x` among `bins` equal bins over `[lo, hi]`, clamped to the ends.
fn bin_of(x: f64, lo: f64, hi: f64, bins: usize) -> usize {
    if bins == 0 || hi <= lo {
        return 0;
    }
    let i = ((x - lo) / (hi - lo) * bins as f64).floor();
    (i.max(0.0) as usize).min(bins - 1)
}

/// The span to draw: the data's extent and the clipping range, never empty.
fn span(min: f32, max: f32, clip: Option<ClipRange>) -> (f64, f64) {
    let (mut lo, mut hi) = (min as f64, max as f64);
    if let Some(c) = clip {
        lo = lo.min(c.lo as f64);
        hi = hi.max(c.hi as f64);
    }
    if !(lo.is_finite() && hi.is_finite()) {
        return (-0.5, 0.5);
    }
    if hi <= lo {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

fn finish(hist: &Histogram, clip: Option<ClipRange>, clipped: u64, bins: usize) -> HistView {
    let (lo, hi) = span(hist.min(), hist.max(), clip);
    HistView {
        lo,
        hi,
        counts: hist.rebin(bins, lo, hi),
        clip,
        clip_bins: clip.map(|c| {
            (
                bin_of(c.lo as f64, lo, hi, bins),
                bin_of(c.hi as f64, lo, hi, bins),
            )
        }),
        clipped,
        total: hist.count(),
        stats: hist.stats(),
    }
}

/// A calibration histogram with the activation quantization `qp` on it.
pub fn activation_view(hist: &Histogram, qp: &QParams, bins: usize) -> HistView {
    let (shown, counted) = clip_limits(qp);
    finish(hist, Some(shown), hist.count_outside(counted), bins)
}

/// Clipped count of `values` (one output channel) where element `c` uses `params[c / group]`.
fn clipped_in_row(values: &[f32], params: &[QParams], group: usize) -> u64 {
    values
        .iter()
        .enumerate()
        .filter(|&(c, &v)| {
            let (_, counted) = clip_limits(&params[(c / group).min(params.len() - 1)]);
            v < counted.lo || v > counted.hi
        })
        .count() as u64
}

/// The envelope of several intervals.
fn envelope(ranges: impl Iterator<Item = ClipRange>) -> ClipRange {
    let (lo, hi) = ranges.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| {
        (lo.min(r.lo), hi.max(r.hi))
    });
    if lo > hi {
        ClipRange::new(0.0, 0.0)
    } else {
        ClipRange::new(lo, hi)
    }
}

/// A weight matrix `[rows, cols]` (row-major, float) with its quantization `wq`.
pub fn weight_view(
    w: &[f32],
    rows: usize,
    cols: usize,
    wq: &WeightQuant,
    bins: usize,
) -> WeightView {
    let q = &wq.q;
    let groups = q.groups();
    let gs = q.group_size().max(1);
    let row_params = |r: usize| -> Vec<QParams> { (0..groups).map(|g| *q.param(r, g)).collect() };
    let mut ranges = Vec::with_capacity(rows);
    let mut channels = Vec::new();
    let mut clipped_total = 0;
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let params = row_params(r);
        let clipped = clipped_in_row(row, &params, gs);
        clipped_total += clipped;
        let clip = envelope(params.iter().map(|p| clip_limits(p).0));
        let hist = Histogram::from_values(row);
        ranges.push(ChannelRange {
            min: hist.min(),
            max: hist.max(),
            clip,
            clipped,
        });
        if q.granularity != Granularity::PerTensor {
            channels.push(finish(&hist, Some(clip), clipped, bins));
        }
    }
    let tensor_clip =
        (q.granularity == Granularity::PerTensor).then(|| clip_limits(&q.params[0]).0);
    WeightView {
        granularity: q.granularity,
        rows,
        cols,
        tensor: finish(&Histogram::from_values(w), tensor_clip, clipped_total, bins),
        channels,
        ranges,
    }
}

/// The names of the points before the weight layers that the UI lists (those of a run with
/// nothing kept in float): the network input for spec models, tensors for graphs.
pub fn entry_rows(model: &Model) -> Vec<String> {
    crate::model::points::Points::find(model, |_| false)
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// The views of every quantization point of a run: the network input first, then each weight
/// layer in network order (`params.layers` order). `bins` is the number of bins to draw.
pub fn layer_views(
    model: &Model,
    params: &ModelParams,
    calibration: Option<&Calibration>,
    bins: usize,
) -> Vec<LayerView> {
    let bins = bins.max(1);
    let mut out = Vec::with_capacity(params.layers.len() + 1);
    for e in entry_rows(model) {
        let act = match (calibration.and_then(|c| c.entry(&e)), params.point(&e)) {
            (Some(h), Some(a)) => Some(activation_view(h, &a.qparams, bins)),
            _ => None,
        };
        out.push(LayerView {
            name: e,
            weight: None,
            act,
        });
    }
    for (j, lp) in params.layers.iter().enumerate() {
        let weight = lp.weight.as_ref().and_then(|wq| {
            let (w, rows, cols) = model.layers.get(lp.index)?.op.weight_rows()?;
            Some(weight_view(w, rows, cols, wq, bins))
        });
        let act = match (&lp.act, calibration.and_then(|c| c.outputs.get(j))) {
            (Some(a), Some(h)) if lp.weight.is_some() => Some(activation_view(h, &a.qparams, bins)),
            _ => None,
        };
        out.push(LayerView {
            name: lp.name.clone(),
            weight,
            act,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WeightSettings;
    use crate::quant::weights::quantize_weights;
    use crate::quant::{Scheme, Strategy};

    fn settings(granularity: Granularity, clip: Option<f32>) -> WeightSettings {
        WeightSettings {
            bits: 4,
            scheme: Scheme::Symmetric,
            granularity,
            strategy: Strategy::MinMax,
            percentile: 99.99,
            clip,
        }
    }

    #[test]
    fn minmax_clips_nothing_and_a_narrowed_range_clips_the_tails() {
        // Row 0: amax 0.7 (scale 0.1); row 1: amax 1.4 (scale 0.2).
        let w = [0.7, -0.35, 0.05, 1.4, -1.0, 0.0];
        let wq = WeightQuant {
            settings: settings(Granularity::PerChannel, None),
            q: quantize_weights(&w, 2, 3, &settings(Granularity::PerChannel, None)),
            bias: None,
        };
        let v = weight_view(&w, 2, 3, &wq, 10);
        assert_eq!(v.ranges.iter().map(|r| r.clipped).sum::<u64>(), 0);
        assert_eq!(v.channels.len(), 2);
        assert!(v.tensor.clip.is_none());
        assert!(
            (v.ranges[1].clip.hi - 1.4).abs() < 1e-5 && (v.ranges[1].clip.lo + 1.4).abs() < 1e-5
        );

        // Half the range: row 0 keeps ±0.35 (step 0.05), so 0.7 is clipped and -0.35 is not;
        // row 1 keeps ±0.7, so 1.4 and -1.0 are clipped.
        let s = settings(Granularity::PerChannel, Some(0.5));
        let wq = WeightQuant {
            settings: s,
            q: quantize_weights(&w, 2, 3, &s),
            bias: None,
        };
        let v = weight_view(&w, 2, 3, &wq, 10);
        assert_eq!(v.ranges[0].clipped, 1);
        assert_eq!(v.ranges[1].clipped, 2);
        assert_eq!(v.tensor.clipped, 3);
        let (a, b) = v.channels[1].clip_bins.unwrap();
        assert!(a <= b && b < 10);
    }

    #[test]
    fn per_tensor_shows_one_range_on_the_whole_tensor() {
        let w = [0.5, -0.25, 1.0, -1.0];
        let s = settings(Granularity::PerTensor, None);
        let wq = WeightQuant {
            settings: s,
            q: quantize_weights(&w, 2, 2, &s),
            bias: None,
        };
        let v = weight_view(&w, 2, 2, &wq, 8);
        assert!(v.channels.is_empty());
        let c = v.tensor.clip.unwrap();
        assert!((c.lo + 1.0).abs() < 1e-5 && (c.hi - 1.0).abs() < 1e-5);
        assert_eq!(v.tensor.counts.len(), 8);
        assert_eq!(v.tensor.clip_bins, Some((0, 7)));
    }

    #[test]
    fn bins_are_clamped_and_spans_never_empty() {
        assert_eq!(bin_of(-5.0, 0.0, 1.0, 10), 0);
        assert_eq!(bin_of(5.0, 0.0, 1.0, 10), 9);
        assert_eq!(bin_of(0.55, 0.0, 1.0, 10), 5);
        assert_eq!(span(1.0, 1.0, None), (0.5, 1.5));
        assert_eq!(span(0.0, 1.0, Some(ClipRange::new(-2.0, 0.5))), (-2.0, 1.0));
    }
}
