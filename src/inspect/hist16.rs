//! BF16 and F16 tensors in one pass: a 65536-bin count of the raw bit patterns gives the range,
//! the moments and the per-tensor SQNR exactly (each distinct value's error times its count);
//! the per-channel SQNR is summed row by row while the row is in cache.

use super::kernels::{abs_max, noise2, scale_for, sq_err};
use super::pass::{BLOCK, Done, Figures, Layout, db};
use crate::quant::calib::stats::Moments;
use rayon::prelude::*;
use std::sync::OnceLock;

/// The two 16-bit float formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// bfloat16: the top half of an f32.
    BF16,
    /// IEEE half precision.
    F16,
}

/// Every F16 bit pattern as f32 (built once with `half`).
fn f16_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    })
}

impl Half {
    /// The value of bit pattern `b`.
    fn value(self, b: u16) -> f32 {
        match self {
            Half::BF16 => f32::from_bits((b as u32) << 16),
            Half::F16 => f16_table()[b as usize],
        }
    }
}

type Hist = Box<[u64; 65536]>;

/// One worker's share: bit-pattern counts and the per-channel noise at int8 and int4.
struct Acc {
    hist: Hist,
    noise_c: [f64; 2],
    buf: Vec<f32>,
}

fn bits(c: &[u8]) -> u16 {
    u16::from_le_bytes([c[0], c[1]])
}

impl Acc {
    fn new() -> Acc {
        Acc {
            hist: vec![0u64; 65536]
                .into_boxed_slice()
                .try_into()
                .expect("65536"),
            noise_c: [0.0; 2],
            buf: Vec::with_capacity(BLOCK),
        }
    }

    fn merge(mut self, o: Acc) -> Acc {
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += b;
        }
        self.noise_c[0] += o.noise_c[0];
        self.noise_c[1] += o.noise_c[1];
        self
    }

    /// Counts `bytes`, converting them into `buf` when `decode`.
    fn count(&mut self, kind: Half, bytes: &[u8], decode: bool) {
        bytes
            .chunks_exact(2)
            .for_each(|c| self.hist[bits(c) as usize] += 1);
        if decode {
            self.decode(kind, bytes);
        }
    }

    /// Converts `bytes` into `buf` (BF16 by a shift, which vectorizes; F16 by table).
    fn decode(&mut self, kind: Half, bytes: &[u8]) {
        self.buf.resize(bytes.len() / 2, 0.0);
        let pairs = self.buf.iter_mut().zip(bytes.chunks_exact(2));
        match kind {
            Half::BF16 => pairs.for_each(|(o, c)| *o = f32::from_bits((bits(c) as u32) << 16)),
            Half::F16 => {
                let t = f16_table();
                pairs.for_each(|(o, c)| *o = t[bits(c) as usize])
            }
        }
    }

    /// One output channel: counts, then its own int8/int4 error (blocks of a long row twice).
    fn row(&mut self, kind: Half, bytes: &[u8]) {
        let blocks = bytes.chunks(2 * BLOCK);
        if bytes.len() <= 2 * BLOCK {
            self.count(kind, bytes, true);
            let amax = abs_max(&self.buf);
            self.add_noise(amax);
            return;
        }
        let mut amax = 0.0f32;
        for b in blocks.clone() {
            self.count(kind, b, true);
            amax = amax.max(abs_max(&self.buf));
        }
        for b in blocks {
            self.decode(kind, b);
            self.add_noise(amax);
        }
    }

    fn add_noise(&mut self, amax: f32) {
        let n = noise2(
            &self.buf,
            (scale_for(amax, 127.0), 127.0),
            (scale_for(amax, 7.0), 7.0),
        );
        self.noise_c[0] += n[0];
        self.noise_c[1] += n[1];
    }
}

/// Figures of a BF16/F16 tensor from its raw bytes, chunks spread over the cores.
pub(super) fn analyze(kind: Half, raw: &[u8], lay: &Layout, done: Done) -> Figures {
    let acc = lay
        .chunks(2)
        .into_par_iter()
        .fold(Acc::new, |mut acc, chunk| {
            let bytes = &raw[2 * chunk.start..2 * chunk.end];
            for s in lay.segments(chunk.clone()) {
                let seg = &raw[2 * s.start..2 * s.end];
                if lay.per_channel {
                    acc.row(kind, seg);
                } else {
                    acc.count(kind, seg, false);
                }
            }
            done(bytes);
            acc
        })
        .reduce_with(Acc::merge);
    match acc {
        Some(acc) => finish(kind, &acc, lay),
        None => Figures::none(),
    }
}

/// Statistics and SQNR from the merged counts.
fn finish(kind: Half, acc: &Acc, lay: &Layout) -> Figures {
    let used = || {
        (0..=u16::MAX)
            .filter(|&b| acc.hist[b as usize] > 0)
            .map(|b| (kind.value(b), acc.hist[b as usize] as f64))
    };
    let finite = used().all(|(v, _)| v.is_finite());
    let (mut n, mut zeros, mut sum) = (0u64, 0u64, 0.0f64);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for (v, c) in used().filter(|(v, _)| v.is_finite()) {
        n += c as u64;
        zeros += if v == 0.0 { c as u64 } else { 0 };
        sum += c * v as f64;
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if n == 0 {
        return Figures::none();
    }
    let mean = sum / n as f64;
    let mut m = Moments {
        n,
        mean,
        ..Moments::default()
    };
    let amax = lo.abs().max(hi.abs());
    let (s8, s4) = (scale_for(amax, 127.0) as f64, scale_for(amax, 7.0) as f64);
    let (mut signal, mut noise8, mut noise4) = (0.0f64, 0.0f64, 0.0f64);
    for (v, c) in used().filter(|(v, _)| v.is_finite()) {
        let d = v as f64 - mean;
        let d2 = d * d;
        m.m2 += c * d2;
        m.m3 += c * d2 * d;
        m.m4 += c * d2 * d2;
        signal += c * (v as f64) * (v as f64);
        noise8 += c * sq_err(v, s8, 127.0);
        noise4 += c * sq_err(v, s4, 7.0);
    }
    let stats = m.to_stats(lo, hi, zeros);
    let sqnr = if lay.weight && finite {
        let pc = |noise: f64| {
            if lay.per_channel {
                db(signal, noise)
            } else {
                None
            }
        };
        [
            db(signal, noise8),
            pc(acc.noise_c[0]),
            db(signal, noise4),
            pc(acc.noise_c[1]),
        ]
    } else {
        [None; 4]
    };
    Figures {
        stats: Some(stats),
        sqnr,
    }
}
