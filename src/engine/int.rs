//! The integer-only engine: the input is quantized once, then every weight layer multiplies
//! integers into i32 accumulators, adds an i32 bias and requantizes with a fixed-point
//! multiplier, ReLU is a clamp, pooling works on integers, and only the final output (or a layer
//! kept in float) goes back to f32.

use super::im2col::{ConvGeom, im2col, nhwc_rows_to_nchw, samples_per_block};
use super::kernels::{PackedWeights, gemm_i8};
use super::pool::pool;
use super::requant::Requant;
use crate::model::{Layer, Model, Op};
use crate::params::ModelParams;
use crate::quant::weights::QWeights;
use crate::quant::{FixedMultiplier, QParams};

/// A batch of activations between two steps: integers with their qparams, or floats.
#[derive(Debug, Clone)]
pub enum Act {
    /// Quantized values and the qparams they are in.
    Int {
        /// Integer values (any bit width, stored in i8).
        data: Vec<i8>,
        /// Their scale and zero point.
        qp: QParams,
    },
    /// Real values (after a layer kept in float, or the final output).
    Float(Vec<f32>),
}

impl Act {
    /// The real values this batch stands for.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Act::Int { data, qp } => data.iter().map(|&q| qp.dequantize(q as i32)).collect(),
            Act::Float(v) => v.clone(),
        }
    }

    /// Quantizes real values with `qp`.
    pub fn quantize(x: &[f32], qp: QParams) -> Act {
        let mut data = vec![0i8; x.len()];
        qp.quantize_into(x, &mut data);
        Act::Int { data, qp }
    }
}

/// Fraction bits of the wide accumulator that sums rescaled group partial sums.
const GROUP_FRAC: i32 = 16;

/// A weight layer in integers: y = clamp(z_out + M · (Σ (x − z_x)(w − z_w) + bias)).
#[derive(Debug)]
pub struct IntGemm {
    out: usize,
    k: usize,
    group_size: usize,
    groups: usize,
    packed: Vec<PackedWeights>,
    /// Weight zero points per (row, group); empty when all are 0.
    w_zp: Vec<i32>,
    /// Σ w per (row, group).
    w_sum: Vec<i32>,
    /// Per (row, group): 2^GROUP_FRAC · s_w(row, group) / s_w_ref(row), when there are several
    /// groups (partial sums are rescaled into a wide accumulator with GROUP_FRAC fraction bits).
    group_mult: Vec<FixedMultiplier>,
    /// Bias at scale s_in · s_w_ref(row).
    bias: Vec<i32>,
    /// Per row: s_in · s_w_ref(row) / s_out (divided by 2^GROUP_FRAC with several groups).
    out_mult: Vec<FixedMultiplier>,
    /// The one-group epilogue: out_mult with k_r = bias_r − z_x·Σw_r.
    requant: Requant,
    in_zp: i32,
    out_zp: i32,
    lo: i32,
    hi: i32,
    /// The qparams of the input this layer expects.
    pub in_q: QParams,
    /// The qparams of the output it produces.
    pub out_q: QParams,
}

impl IntGemm {
    /// Prepares the integer layer from quantized weights, the float bias and the in/out qparams;
    /// `relu` clamps the output at the zero point.
    pub fn new(w: &QWeights, bias: &[f32], in_q: QParams, out_q: QParams, relu: bool) -> Self {
        let (out, k) = (w.rows, w.cols);
        let groups = w.groups();
        let gs = w.group_size();
        let mut packed = Vec::with_capacity(groups);
        for g in 0..groups {
            let (c0, c1) = (g * gs, ((g + 1) * gs).min(k));
            let mut b = Vec::with_capacity(out * (c1 - c0));
            for r in 0..out {
                b.extend_from_slice(&w.q[r * k + c0..r * k + c1]);
            }
            packed.push(PackedWeights::new(&b, out, c1 - c0));
        }
        let mut w_zp = vec![0i32; out * groups];
        let mut w_sum = vec![0i32; out * groups];
        let mut group_mult = Vec::new();
        let mut bias_q = vec![0i32; out];
        let mut out_mult = vec![FixedMultiplier::from_f64(0.0); out];
        for r in 0..out {
            let s_ref = (0..groups)
                .map(|g| w.param(r, g).scale as f64)
                .fold(0.0f64, f64::max);
            for g in 0..groups {
                let p = w.param(r, g);
                w_zp[r * groups + g] = p.zero_point;
                let (c0, c1) = (g * gs, ((g + 1) * gs).min(k));
                w_sum[r * groups + g] = w.q[r * k + c0..r * k + c1].iter().map(|&v| v as i32).sum();
                if groups > 1 {
                    let ratio = p.scale as f64 / s_ref * (1i64 << GROUP_FRAC) as f64;
                    group_mult.push(FixedMultiplier::from_f64(ratio));
                }
            }
            let acc_scale = in_q.scale as f64 * s_ref;
            bias_q[r] = (bias[r] as f64 / acc_scale)
                .round()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32;
            let frac = if groups > 1 {
                (1i64 << GROUP_FRAC) as f64
            } else {
                1.0
            };
            out_mult[r] = FixedMultiplier::from_f64(acc_scale / out_q.scale as f64 / frac);
        }
        if w_zp.iter().all(|&z| z == 0) {
            w_zp.clear();
        }
        let lo = if relu {
            out_q.qmin().max(out_q.zero_point)
        } else {
            out_q.qmin()
        };
        let konst: Vec<i32> = (0..out)
            .map(|r| bias_q[r].saturating_sub(in_q.zero_point.saturating_mul(w_sum[r * groups])))
            .collect();
        let requant = Requant::new(out_mult.clone(), konst, out_q.zero_point, lo, out_q.qmax());
        IntGemm {
            requant,
            out,
            k,
            group_size: gs,
            groups,
            packed,
            w_zp,
            w_sum,
            group_mult,
            bias: bias_q,
            out_mult,
            in_zp: in_q.zero_point,
            out_zp: out_q.zero_point,
            lo,
            hi: out_q.qmax(),
            in_q,
            out_q,
        }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out
    }

    /// Runs `m` rows of `k` integers (row-major) to `m × out` integers.
    pub fn run(&self, a: &[i8], m: usize) -> Vec<i8> {
        let out = self.out;
        let mut y = vec![0i8; m * out];
        let mut c = vec![0i32; m * out];
        if self.groups == 1 {
            // Σ(x − z_x)(w − z_w) + bias = Σ x·w + (z_w terms) + (bias − z_x·Σw): the last part is
            // the epilogue's per-row constant.
            gemm_i8(a, m, self.k, &self.packed[0], &mut c);
            if !self.w_zp.is_empty() {
                let k = self.k as i32;
                for (i, crow) in c.chunks_exact_mut(out).enumerate() {
                    let xsum = self.row_sum(a, i, 0);
                    for (r, v) in crow.iter_mut().enumerate() {
                        let zw = self.w_zp[r];
                        *v += -zw * xsum + k * self.in_zp * zw;
                    }
                }
            }
            self.requant.run(&c, &mut y);
            return y;
        }
        // Several groups: each partial sum is rescaled to the row's reference scale in a wide
        // accumulator with GROUP_FRAC fraction bits, then requantized once.
        let mut wide: Vec<i64> = (0..m * out)
            .map(|j| (self.bias[j % out] as i64) << GROUP_FRAC)
            .collect();
        for g in 0..self.groups {
            gemm_i8(
                &a[g * self.group_size..],
                m,
                self.k,
                &self.packed[g],
                &mut c,
            );
            for i in 0..m {
                let xsum = self.row_sum(a, i, g);
                for r in 0..out {
                    let v = self.corrected(c[i * out + r], r, g, xsum);
                    wide[i * out + r] += self.group_mult[r * self.groups + g].apply_i64(v as i64);
                }
            }
        }
        for (j, &acc) in wide.iter().enumerate() {
            let v = self.out_zp as i64 + self.out_mult[j % out].apply_i64(acc);
            y[j] = v.clamp(self.lo as i64, self.hi as i64) as i8;
        }
        y
    }

    /// Σ x over row `i`'s group `g` (only needed when weights have zero points).
    fn row_sum(&self, a: &[i8], i: usize, g: usize) -> i32 {
        if self.w_zp.is_empty() {
            return 0;
        }
        let c0 = i * self.k + g * self.group_size;
        a[c0..c0 + self.packed[g].k()]
            .iter()
            .map(|&v| v as i32)
            .sum()
    }

    /// Σ (x − z_x)(w − z_w) from the raw Σ x·w of row r, group g.
    #[inline]
    fn corrected(&self, raw: i32, r: usize, g: usize, xsum: i32) -> i32 {
        let rg = r * self.groups + g;
        let mut v = raw - self.in_zp * self.w_sum[rg];
        if !self.w_zp.is_empty() {
            let zw = self.w_zp[rg];
            v += -zw * xsum + self.packed[g].k() as i32 * self.in_zp * zw;
        }
        v
    }
}

/// One step of the integer engine.
#[derive(Debug)]
enum Step {
    /// A linear (conv = None) or conv layer in integers.
    Gemm {
        gemm: IntGemm,
        conv: Option<ConvGeom>,
    },
    /// A weight layer kept in float: dequantize in, run in f32, quantize out (if `out_q`).
    Float {
        layer: Layer,
        relu: bool,
        out_q: Option<QParams>,
    },
    /// A layer without weights (relu, pooling, flatten), on integers or floats.
    Plain { layer: Layer },
}

/// A model prepared for the integer engine.
#[derive(Debug)]
pub struct IntModel {
    input_q: QParams,
    /// (index of the last model layer the step covers, first layer index, step).
    steps: Vec<(usize, usize, Step)>,
}

impl IntModel {
    /// Prepares the integer engine for `model` with `params` (weights, input and output qparams).
    pub fn new(model: &Model, params: &ModelParams) -> Self {
        let mut steps = Vec::new();
        let mut cur_q = Some(params.input.qparams);
        let mut i = 0;
        while i < model.layers.len() {
            let layer = &model.layers[i];
            let relu = model.relu_follows(i);
            let last = if relu && layer.op.has_weights() {
                i + 1
            } else {
                i
            };
            let step = match params.by_index(i) {
                Some(lp) if layer.op.has_weights() => {
                    let out_q = lp.act.as_ref().map(|a| a.qparams);
                    match (&lp.weight, cur_q, out_q) {
                        (Some(wq), Some(in_q), Some(out_q)) => {
                            let bias = layer.op.bias().expect("weight layer has a bias").to_vec();
                            let conv = match &layer.op {
                                Op::Conv2d {
                                    weight,
                                    stride,
                                    padding,
                                    ..
                                } => {
                                    let (_, _, kh, kw) = weight.dim();
                                    Some(ConvGeom::new(
                                        &layer.in_shape,
                                        (kh, kw),
                                        *stride,
                                        *padding,
                                    ))
                                }
                                _ => None,
                            };
                            Step::Gemm {
                                gemm: IntGemm::new(&wq.q, &bias, in_q, out_q, relu),
                                conv,
                            }
                        }
                        _ => Step::Float {
                            layer: layer.clone(),
                            relu,
                            out_q,
                        },
                    }
                }
                _ => Step::Plain {
                    layer: layer.clone(),
                },
            };
            cur_q = match &step {
                Step::Gemm { gemm, .. } => Some(gemm.out_q),
                Step::Float { out_q, .. } => *out_q,
                Step::Plain { .. } => cur_q,
            };
            steps.push((last, i, step));
            i = last + 1;
        }
        IntModel {
            input_q: params.input.qparams,
            steps,
        }
    }

    /// The qparams of the network input.
    pub fn input_qparams(&self) -> QParams {
        self.input_q
    }

    /// Runs `n` normalized samples; `tap(last_layer_index, act)` sees each step's output.
    /// Returns the real-valued output (dequantized at the very end).
    pub fn forward(&self, x: &[f32], n: usize, mut tap: impl FnMut(usize, &Act)) -> Vec<f32> {
        let mut act = Act::quantize(x, self.input_q);
        for (last, _, step) in &self.steps {
            act = run_step(step, act, n);
            tap(*last, &act);
        }
        act.to_f32()
    }

    /// Runs the weight layer at model index `layer` alone on its real-valued input `x`
    /// (quantized with the layer's input qparams); returns its real-valued (fused) output.
    /// `None` if the layer is not an integer layer.
    pub fn run_layer_isolated(&self, layer: usize, x: &[f32], n: usize) -> Option<Vec<f32>> {
        let (_, _, step) = self.steps.iter().find(|(_, first, _)| *first == layer)?;
        let Step::Gemm { gemm, .. } = step else {
            return None;
        };
        Some(run_step(step, Act::quantize(x, gemm.in_q), n).to_f32())
    }
}

fn run_step(step: &Step, act: Act, n: usize) -> Act {
    match step {
        Step::Gemm { gemm, conv } => {
            let Act::Int { data, .. } = act else {
                unreachable!("an integer layer always gets integer input")
            };
            match conv {
                None => Act::Int {
                    data: gemm.run(&data, n),
                    qp: gemm.out_q,
                },
                Some(g) => {
                    let in_len = g.c * g.h * g.w;
                    let block = samples_per_block(g);
                    let mut out = Vec::with_capacity(n * gemm.out_channels() * g.out_pixels());
                    for s0 in (0..n).step_by(block) {
                        let bn = block.min(n - s0);
                        let cols = im2col(
                            &data[s0 * in_len..(s0 + bn) * in_len],
                            bn,
                            g,
                            gemm.in_zp as i8,
                        );
                        let y = gemm.run(&cols, bn * g.out_pixels());
                        out.extend(nhwc_rows_to_nchw(
                            &y,
                            bn,
                            g.out_pixels(),
                            gemm.out_channels(),
                        ));
                    }
                    Act::Int {
                        data: out,
                        qp: gemm.out_q,
                    }
                }
            }
        }
        Step::Float { layer, relu, out_q } => {
            let mut y = super::float::run_layer(layer, &act.to_f32(), n);
            if *relu {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            match out_q {
                Some(q) => Act::quantize(&y, *q),
                None => Act::Float(y),
            }
        }
        Step::Plain { layer } => match act {
            Act::Float(x) => Act::Float(super::float::run_layer(layer, &x, n)),
            Act::Int { data, qp } => Act::Int {
                data: plain_int(layer, &data, n, qp),
                qp,
            },
        },
    }
}

/// A layer without weights on integers: the qparams pass through unchanged.
fn plain_int(layer: &Layer, x: &[i8], n: usize, qp: QParams) -> Vec<i8> {
    match &layer.op {
        Op::Relu => {
            let z = qp.zero_point.clamp(-128, 127) as i8;
            x.iter().map(|&v| v.max(z)).collect()
        }
        Op::Flatten => x.to_vec(),
        Op::MaxPool2d { kernel, stride } => pool(
            x,
            n,
            &layer.in_shape,
            *kernel,
            *stride,
            i8::MIN,
            i8::max,
            |m, _| m,
        ),
        Op::AvgPool2d { kernel, stride } => pool(
            x,
            n,
            &layer.in_shape,
            *kernel,
            *stride,
            0i32,
            |s, v| s + v as i32,
            // Σq / count rounded half away from zero (same zero point in and out).
            |s, cnt| {
                let c = cnt as i32;
                let r = if s >= 0 {
                    (s + c / 2) / c
                } else {
                    (s - c / 2) / c
                };
                r.clamp(-128, 127) as i8
            },
        ),
        Op::Linear { .. } | Op::Conv2d { .. } => {
            unreachable!("weight layers are Gemm or Float steps")
        }
    }
}
