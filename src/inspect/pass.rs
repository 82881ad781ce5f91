//! One tensor's figures from its raw bytes: how the bytes are cut into rows and chunks, and
//! which pass (16-bit histogram or two passes over wider values) computes them.

use super::{hist16, wide};
use crate::quant::calib::Stats;
use safetensors::Dtype;
use std::ops::Range;

/// Elements a row is processed in at most (longer rows are walked block by block).
pub(super) const BLOCK: usize = 16 * 1024;
/// Bytes a parallel chunk holds at least (whole rows).
const CHUNK_BYTES: usize = 1 << 20;

/// Called with the bytes of every chunk once its figures are taken (progress, page release).
pub type Done<'a> = &'a (dyn Fn(&[u8]) + Sync);

/// What `inspect` computes for one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Statistics of the finite values (`None` when there are none to read).
    pub stats: Option<Stats>,
    /// SQNR in dB: int8 per tensor, int8 per channel, int4 per tensor, int4 per channel.
    pub sqnr: [Option<f64>; 4],
}

impl Figures {
    /// No figures (a non-numeric dtype).
    pub fn none() -> Figures {
        Figures {
            stats: None,
            sqnr: [None; 4],
        }
    }
}

/// How a tensor's elements are cut into segments: rows of the output-channel axis when
/// per-channel figures apply, otherwise blocks of [`BLOCK`] elements (the last may be short).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    /// Elements.
    pub n: usize,
    /// Elements per segment.
    pub seg: usize,
    /// Whether segments are output channels (rank ≥ 2 with rows).
    pub per_channel: bool,
    /// Whether the tensor gets SQNR figures at all (a float tensor of rank ≥ 1).
    pub weight: bool,
}

impl Layout {
    /// The layout of a tensor of `shape`; `is_float` says whether it can have SQNR figures.
    pub fn of(shape: &[usize], is_float: bool) -> Layout {
        let n: usize = shape.iter().product();
        let per_channel = is_float && shape.len() >= 2 && shape[0] > 0 && n > 0;
        let seg = if per_channel { n / shape[0] } else { BLOCK };
        Layout {
            n,
            seg,
            per_channel,
            weight: is_float && !shape.is_empty(),
        }
    }

    /// Element ranges of the parallel chunks: whole segments, about [`CHUNK_BYTES`] each.
    pub fn chunks(&self, elem_bytes: usize) -> Vec<Range<usize>> {
        let per = (CHUNK_BYTES / (self.seg * elem_bytes).max(1)).max(1) * self.seg;
        (0..self.n)
            .step_by(per.max(1))
            .map(|s| s..(s + per).min(self.n))
            .collect()
    }

    /// Element ranges of the segments inside `chunk`.
    pub fn segments(&self, chunk: Range<usize>) -> impl Iterator<Item = Range<usize>> {
        let seg = self.seg.max(1);
        (chunk.start..chunk.end)
            .step_by(seg)
            .map(move |s| s..(s + seg).min(chunk.end))
    }
}

/// SQNR in dB from Σx² and Σ(x − x̂)² (`None` without noise or signal, as `SqnrAcc::db`).
pub(super) fn db(signal: f64, noise: f64) -> Option<f64> {
    (noise > 0.0 && signal > 0.0).then(|| 10.0 * (signal / noise).log10())
}

/// The figures of one tensor of `dtype` and `shape` whose little-endian data is `raw`.
pub fn analyze(dtype: Dtype, shape: &[usize], raw: &[u8], done: Done) -> Figures {
    let is_float = matches!(dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16);
    let lay = Layout::of(shape, is_float);
    let figures = match dtype {
        Dtype::BF16 => hist16::analyze(hist16::Half::BF16, raw, &lay, done),
        Dtype::F16 => hist16::analyze(hist16::Half::F16, raw, &lay, done),
        d if wide::supported(d) => wide::analyze(d, raw, &lay, done),
        _ => {
            done(raw);
            Figures::none()
        }
    };
    if lay.n == 0 { Figures::none() } else { figures }
}
