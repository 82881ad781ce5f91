//! F32, F64 and integer tensors in two passes over their bytes: range, count and sum first,
//! then the central moments and the SQNR sums (the tensor's scale needs its range; each row's
//! own scale is taken while the row is in cache).

use super::kernels::{Scan, abs_max, central, noise2, scale_for, scan};
use super::pass::{BLOCK, Done, Figures, Layout, db};
use crate::model::tensors::decode_int;
use crate::quant::calib::stats::Moments;
use rayon::prelude::*;
use safetensors::Dtype;

/// Whether [`analyze`] reads `dtype` (F32, F64 and the integer dtypes).
pub(super) fn supported(dtype: Dtype) -> bool {
    dtype == Dtype::F32 || dtype == Dtype::F64 || decode_int(dtype, &[]).is_some()
}

/// Appends `bytes` of `dtype` to `out` as f32 (as `decode_float` / `decode_int` convert them).
fn decode(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Dtype::F64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32),
        ),
        d => out.extend(
            decode_int(d, bytes)
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as f32),
        ),
    }
}

/// Second-pass sums: Σd², Σd³, Σd⁴, Σx², then the int8/int4 noise per tensor and per channel.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    c: [f64; 4],
    noise_t: [f64; 2],
    noise_c: [f64; 2],
}

impl Sums {
    fn merge(mut self, o: Sums) -> Sums {
        (0..4).for_each(|k| self.c[k] += o.c[k]);
        (0..2).for_each(|k| {
            self.noise_t[k] += o.noise_t[k];
            self.noise_c[k] += o.noise_c[k];
        });
        self
    }
}

/// What the second pass needs from the first.
struct Plan<'a> {
    dtype: Dtype,
    esize: usize,
    mean: f64,
    /// Per-tensor (scale, levels) at int8 and int4 when SQNR figures are taken.
    tensor: Option<[(f32, f64); 2]>,
    lay: &'a Layout,
}

/// Figures of an F32/F64/integer tensor from its raw bytes, chunks spread over the cores.
pub(super) fn analyze(dtype: Dtype, raw: &[u8], lay: &Layout, done: Done) -> Figures {
    let esize = dtype.bitsize() / 8;
    let chunks = lay.chunks(esize);
    let first = chunks
        .par_iter()
        .map_init(Vec::new, |buf, ch| {
            let bytes = &raw[esize * ch.start..esize * ch.end];
            bytes.chunks(esize * BLOCK).fold(Scan::empty(), |acc, b| {
                decode(dtype, b, buf);
                acc.merge(scan(buf))
            })
        })
        .reduce(Scan::empty, Scan::merge);
    if first.n == 0 {
        chunks
            .iter()
            .for_each(|ch| done(&raw[esize * ch.start..esize * ch.end]));
        return Figures::none();
    }
    let finite = first.n as usize == lay.n;
    let amax = first.min.abs().max(first.max.abs());
    let plan = Plan {
        dtype,
        esize,
        mean: first.sum / first.n as f64,
        tensor: (lay.weight && finite)
            .then(|| [(scale_for(amax, 127.0), 127.0), (scale_for(amax, 7.0), 7.0)]),
        lay,
    };
    let sums = chunks
        .par_iter()
        .map_init(Vec::new, |buf, ch| {
            let mut s = Sums::default();
            for seg in lay.segments(ch.clone()) {
                plan.segment(&raw[esize * seg.start..esize * seg.end], buf, &mut s);
            }
            done(&raw[esize * ch.start..esize * ch.end]);
            s
        })
        .reduce(Sums::default, Sums::merge);
    finish(&first, &plan, &sums)
}

impl Plan<'_> {
    /// Second-pass sums of one segment (an output channel when per-channel).
    fn segment(&self, bytes: &[u8], buf: &mut Vec<f32>, s: &mut Sums) {
        let blocks = bytes.chunks(self.esize * BLOCK);
        let mut amax = 0.0f32;
        for b in blocks.clone() {
            decode(self.dtype, b, buf);
            let c = central(buf, self.mean);
            (0..4).for_each(|k| s.c[k] += c[k]);
            if let Some([a, b]) = self.tensor {
                let n = noise2(buf, a, b);
                s.noise_t[0] += n[0];
                s.noise_t[1] += n[1];
                amax = amax.max(abs_max(buf));
            }
        }
        if self.tensor.is_none() || !self.lay.per_channel {
            return;
        }
        let row = [(scale_for(amax, 127.0), 127.0), (scale_for(amax, 7.0), 7.0)];
        let one_block = bytes.len() <= self.esize * BLOCK;
        for b in blocks {
            if !one_block {
                decode(self.dtype, b, buf);
            }
            let n = noise2(buf, row[0], row[1]);
            s.noise_c[0] += n[0];
            s.noise_c[1] += n[1];
        }
    }
}

/// Statistics and SQNR from both passes.
fn finish(first: &Scan, plan: &Plan, s: &Sums) -> Figures {
    let m = Moments {
        n: first.n,
        mean: plan.mean,
        m2: s.c[0],
        m3: s.c[1],
        m4: s.c[2],
    };
    let signal = s.c[3];
    let sqnr = match plan.tensor {
        Some(_) => {
            let pc = |k: usize| {
                if plan.lay.per_channel {
                    db(signal, s.noise_c[k])
                } else {
                    None
                }
            };
            [
                db(signal, s.noise_t[0]),
                pc(0),
                db(signal, s.noise_t[1]),
                pc(1),
            ]
        }
        None => [None; 4],
    };
    Figures {
        stats: Some(m.to_stats(first.min, first.max, first.zeros)),
        sqnr,
    }
}
