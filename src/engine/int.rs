//! The integer-only engine: the input is quantized once, then every weight layer multiplies
//! integers into i32 accumulators, adds an i32 bias and requantizes with a fixed-point
//! multiplier, ReLU is a clamp, pooling works on integers, and only the final output (or a layer
//! kept in float) goes back to f32.

use super::conv::conv_nchw;
use super::embedding::IntEmbedding;
use super::float::{Values, check_size, last_uses, run_node};
use super::intops;
use super::intops::channels_last;
use super::intops::conv_nhwc::NhwcConv;
use super::intops::depthwise::GroupConv;
use super::intops::depthwise::nhwc::DepthwiseNhwc;
use super::kernels::{PackedWeights, gemm_i8};
use super::pool::PoolGeom;
use super::requant::{Requant, split_bias};
use super::tensor::{Data, Tensor};
use crate::error::{Error, Result};
use crate::model::points::{integer_op, scalar_operand};
use crate::model::{BinaryOp, Model, Op, ValueId};
use crate::params::ModelParams;
use crate::quant::weights::QWeights;
use crate::quant::{ClipRange, FixedMultiplier, QParams, Scheme};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// The integer bounds of a clamp at real bounds (a fused Relu: [0, ∞)) in `q`.
pub(crate) fn clamp_bounds(q: QParams, clamp: Option<(f32, f32)>) -> (i32, i32) {
    match clamp {
        None => (q.qmin(), q.qmax()),
        Some((lo, hi)) => {
            let lo = if lo == 0.0 {
                q.zero_point
            } else {
                q.quantize(lo)
            };
            let hi = if hi.is_finite() {
                q.quantize(hi)
            } else {
                q.qmax()
            };
            (q.qmin().max(lo), q.qmax().min(hi))
        }
    }
}

/// The largest constant (elements) an integer kernel quantizes as an operand (per-channel
/// biases and scalars; larger constants keep the node in float).
const CONST_OPERAND_MAX: usize = 1 << 16;

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
    /// Output zero point per row (with the bias of a row whose bias does not fit its accumulator).
    out_zp: Vec<i32>,
    lo: i32,
    hi: i32,
    /// The qparams of the input this layer expects.
    pub in_q: QParams,
    /// The qparams of the output it produces.
    pub out_q: QParams,
}

impl IntGemm {
    /// Prepares the integer layer from quantized weights, the float bias and the in/out qparams;
    /// `clamp` (a fused Relu or ReLU6: real bounds) narrows the output range.
    pub fn new(
        w: &QWeights,
        bias: &[f32],
        in_q: QParams,
        out_q: QParams,
        clamp: Option<(f32, f32)>,
    ) -> Self {
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
        let mut out_off = vec![0i32; out];
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
            (bias_q[r], out_off[r]) = split_bias(bias[r], acc_scale, out_q.scale as f64);
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
        let (lo, hi) = clamp_bounds(out_q, clamp);
        let konst: Vec<i32> = (0..out)
            .map(|r| bias_q[r].saturating_sub(in_q.zero_point.saturating_mul(w_sum[r * groups])))
            .collect();
        let zp: Vec<i32> = out_off.iter().map(|&o| out_q.zero_point + o).collect();
        // With symmetric weights an accumulator is Σ x·w over i8 codes, at most 128·Σ|w_r|: when
        // that and k_r stay inside i32 for every row, the epilogue's add never saturates.
        let fits = w_zp.is_empty()
            && groups == 1
            && (0..out).all(|r| {
                let row = w.q[r * k..(r + 1) * k].iter();
                let abs: i64 = row.map(|&v| (v as i64).abs()).sum();
                128 * abs + (konst[r] as i64).abs() < i32::MAX as i64
            });
        let requant = Requant::new(out_mult.clone(), konst, zp.clone(), lo, hi);
        let requant = if fits {
            requant.sums_fit_i32()
        } else {
            requant
        };
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
            out_zp: zp,
            lo,
            hi,
            in_q,
            out_q,
        }
    }

    /// This GEMM with its epilogue running verified f32 lines where the CPU and the columns
    /// allow (see [`Requant::with_ranges`]): `w` are its weights ([out, k], symmetric). Worth
    /// it where each sample gives many rows (a conv's pixels): checking a column's line costs
    /// tens of microseconds, each row it serves saves a fraction of a nanosecond per column.
    pub fn with_verified_lines(mut self, w: &QWeights) -> Self {
        let k = w.cols;
        // Σ x·w over i8 codes x: at most 127 per positive weight and 128 per negative one
        // above zero, and the other way below.
        let ranges: Vec<(i32, i32)> = (0..self.out)
            .map(|r| {
                let row = &w.q[r * k..(r + 1) * k];
                let (p, n) = row.iter().fold((0i64, 0i64), |(p, n), &v| {
                    (p + (v as i64).max(0), n + (-(v as i64)).max(0))
                });
                let (lo, hi) = (-128 * p - 127 * n, 127 * p + 128 * n);
                (
                    lo.max(i32::MIN as i64) as i32,
                    hi.min(i32::MAX as i64) as i32,
                )
            })
            .collect();
        self.requant = self.requant.with_ranges(&ranges);
        self
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out
    }

    /// The epilogue of a one-group layer (its constants fold in the bias and −z_x·Σw).
    pub fn requant(&self) -> &Requant {
        &self.requant
    }

    /// Whether the weights have nonzero zero points (asymmetric weights).
    pub fn has_weight_zero_points(&self) -> bool {
        !self.w_zp.is_empty()
    }

    /// Runs `m` rows of `k` integers (row-major) to `m × out` integers.
    pub fn run(&self, a: &[i8], m: usize) -> Vec<i8> {
        let out = self.out;
        let mut y = vec![0i8; m * out];
        let mut c = Vec::new();
        if self.groups == 1 {
            self.run_into(a, m, &mut c, &mut y);
            return y;
        }
        c.resize(m * out, 0);
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
            let v = self.out_zp[j % out] as i64 + self.out_mult[j % out].apply_i64(acc);
            y[j] = v.clamp(self.lo as i64, self.hi as i64) as i8;
        }
        y
    }

    /// A one-group layer on `m` rows of `a` into `y` ([m, out]), with `c` as the accumulator
    /// scratch (grown as needed, so a caller running blocks allocates it once).
    pub fn run_into(&self, a: &[i8], m: usize, c: &mut Vec<i32>, y: &mut [i8]) {
        assert_eq!(self.groups, 1, "run_into is for one-group layers");
        let out = self.out;
        if c.len() < m * out {
            c.resize(m * out, 0);
        }
        let c = &mut c[..m * out];
        // Σ(x − z_x)(w − z_w) + bias = Σ x·w + (z_w terms) + (bias − z_x·Σw): the last part is
        // the epilogue's per-row constant.
        gemm_i8(a, m, self.k, &self.packed[0], c);
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
        self.requant.run(c, &mut y[..m * out]);
    }

    /// Whether [`IntGemm::run_into_shifted`] applies: one group, weights without zero points,
    /// packed for the kernel that reads rows shifted to unsigned in place (AVX-512 VNNI).
    pub fn takes_shifted_rows(&self) -> bool {
        self.groups == 1
            && self.w_zp.is_empty()
            && self.packed[0].kernel() == crate::engine::kernels::Kernel::Avx512Vnni
    }

    /// [`IntGemm::run_into`] on rows of `x ^ 0x80` bytes at stride k (patch rows written
    /// shifted, so the GEMM reads them in place), with
    /// [`shifted_row_bytes`](crate::engine::kernels::shifted_row_bytes)`(k)` readable from the
    /// last row's start.
    ///
    /// # Panics
    /// Unless [`IntGemm::takes_shifted_rows`].
    pub fn run_into_shifted(&self, a: &[i8], m: usize, c: &mut Vec<i32>, y: &mut [i8]) {
        self.run_into_runs(a, (m, self.k), (&[0], self.k), c, y);
    }

    /// How [`IntGemm::run_into_runs`] reads its rows (see
    /// [`runs_layout`](crate::engine::kernels::runs_layout)); `None` where it does not apply:
    /// grouped weights, weights with zero points or a kernel that reads no runs.
    pub fn runs_layout(&self) -> Option<crate::engine::kernels::RunsLayout> {
        if self.groups != 1 || !self.w_zp.is_empty() {
            return None;
        }
        crate::engine::kernels::runs_layout(&self.packed[0])
    }

    /// [`IntGemm::run_into`] on `m` rows at stride `lda` whose k values lie in runs
    /// (`offsets.len()` runs of `len` values, as
    /// [`gemm_i8_runs`](crate::engine::kernels::gemm_i8_runs) reads them), in the codes
    /// [`IntGemm::runs_layout`] says.
    ///
    /// # Panics
    /// Unless [`IntGemm::runs_layout`] is `Some`; if the runs do not fit the kernel's
    /// rules.
    pub fn run_into_runs(
        &self,
        a: &[i8],
        (m, lda): (usize, usize),
        runs: (&[usize], usize),
        c: &mut Vec<i32>,
        y: &mut [i8],
    ) {
        let out = self.out;
        if c.len() < m * out {
            c.resize(m * out, 0);
        }
        let c = &mut c[..m * out];
        self.sums_of_runs(a, (m, lda), runs, c);
        self.requant.run(c, &mut y[..m * out]);
    }

    /// The accumulators of [`IntGemm::run_into_runs`] ([m, out] into `c`), without the
    /// epilogue: a caller that runs several such GEMMs into one buffer requantizes them with
    /// one [`Requant::run`](super::requant::Requant::run) of [`IntGemm::requant`].
    ///
    /// # Panics
    /// As [`IntGemm::run_into_runs`]; if `c` does not hold [m, out].
    pub fn sums_of_runs(
        &self,
        a: &[i8],
        (m, lda): (usize, usize),
        runs: (&[usize], usize),
        c: &mut [i32],
    ) {
        assert!(
            self.runs_layout().is_some(),
            "weights for a kernel that reads runs"
        );
        assert_eq!(c.len(), m * self.out, "accumulators of [m, out]");
        let ran = crate::engine::kernels::gemm_i8_runs(a, m, lda, runs, &self.packed[0], c);
        assert!(ran, "the kernel reads runs");
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

/// How a node ran in the integer engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// On integer codes (an integer kernel, or an op that keeps qparams).
    Int,
    /// In f32 on values that were not integers (input plumbing: not an island).
    Float,
    /// In f32 between a dequantize and a quantize: a float island.
    Island,
}

impl Ran {
    /// Whether the node was a float island.
    pub fn island(self) -> bool {
        self == Ran::Island
    }
}

/// The integer kernel of a weight node.
#[derive(Debug)]
enum WeightKernel {
    /// One GEMM per channel group (over im2col patches for a conv).
    Gemm(Vec<IntGemm>),
    /// A grouped or depthwise conv as a direct loop over NCHW planes, and for a depthwise conv
    /// of a multiple of 16 channels on an AVX-512 VNNI CPU, its channels-last kernel.
    Group(GroupConv, Option<Box<DepthwiseNhwc>>),
    /// An ungrouped conv over channels-last patches.
    Nhwc(Box<NhwcConv>),
}

impl WeightKernel {
    /// Whether a conv through this kernel can write channels-last output.
    fn writes_channels_last(&self) -> bool {
        match self {
            WeightKernel::Nhwc(c) => c.writes_channels_last(),
            WeightKernel::Group(_, nhwc) => nhwc.is_some(),
            WeightKernel::Gemm(_) => false,
        }
    }

    /// The qparams of the input the kernel expects.
    fn in_q(&self) -> QParams {
        match self {
            WeightKernel::Gemm(g) => g[0].in_q,
            WeightKernel::Group(c, _) => c.in_q,
            WeightKernel::Nhwc(c) => c.in_q(),
        }
    }

    /// The qparams of the output it produces.
    fn out_q(&self) -> QParams {
        match self {
            WeightKernel::Gemm(g) => g[0].out_q,
            WeightKernel::Group(c, _) => c.out_q,
            WeightKernel::Nhwc(c) => c.out_q(),
        }
    }
}

/// What sees each node's output in a run: node index, value, tensor, how it ran.
type Tap<'a> = &'a mut dyn FnMut(usize, ValueId, &Tensor, Ran);

/// How the integer engine runs one node.
#[derive(Debug, Clone)]
enum Step {
    /// A weight node in integers (one GEMM per channel group) writing its (fused) point.
    Gemm {
        /// The kernel (shared with the builds that reuse it).
        kernel: Arc<WeightKernel>,
        /// The float bias it was built with (the model's or the parameters').
        bias: Arc<[f32]>,
        /// The value it writes (the fused activation's output, if any).
        out: ValueId,
    },
    /// An embedding: int8 rows picked by the integer indices, requantized to its point.
    Embed {
        /// The kernel (shared with the builds that reuse it).
        kernel: Arc<IntEmbedding>,
        /// The value it writes (the fused activation's output, if any).
        out: ValueId,
    },
    /// Any other node: on integers when it keeps qparams and gets integers, else in f32.
    Node,
    /// A fused activation: its weight node already applied it.
    Fused,
}

/// The kernels of an [`IntModel`], which a later build for other parameters of the same model
/// may share ([`IntModel::reusing`]); they hold no reference to the model.
#[derive(Debug, Clone)]
pub struct Kernels(Vec<Step>);

/// A graph prepared for the integer engine: a step per node and the qparams of every point.
#[derive(Debug)]
pub struct IntModel<'m> {
    model: &'m Model,
    steps: Vec<Step>,
    points: HashMap<ValueId, QParams>,
    limit: usize,
    /// Per node: the Softmax it feeds when it is an additive-mask Add that runs inside that
    /// Softmax's float island (as ORT's attention fusion does).
    into_softmax: Vec<Option<usize>>,
    /// Per node: a conv whose kernel writes shape order, every reader of whose output reads
    /// channels-last, so that a channels-last run stores the output so (one transpose here
    /// instead of one in each reader).
    turn_output: Vec<bool>,
    /// Per node: an Add or Sub whose output only a Relu or Clip reads, that clamp's node (run
    /// within the Add in a channels-last run).
    add_clamp: Vec<Option<usize>>,
}

/// [`IntModel::add_clamp`]: each Add or Sub whose output is no graph output and is read by one
/// Relu or Clip alone, and that node.
fn clamps_after_adds(model: &Model, steps: &[Step]) -> Vec<Option<usize>> {
    let node = |i: usize| (&model.layers[i], &steps[i]);
    (0..model.layers.len())
        .map(|i| {
            let (layer, st) = node(i);
            let add = matches!(layer.op, Op::Binary(BinaryOp::Add | BinaryOp::Sub));
            if !add || !matches!(st, Step::Node) || model.outputs.contains(&layer.output) {
                return None;
            }
            let &[j] = model.consumers(layer.output).as_slice() else {
                return None;
            };
            let (reader, reader_step) = node(j);
            (matches!(reader_step, Step::Node) && clamp_of(&reader.op).is_some()).then_some(j)
        })
        .collect()
}

/// Shape-order codes `y` stored channels-last (its buffer recycled), and whether they are (not
/// for anything but 4-D codes).
fn turned(y: Tensor) -> (Tensor, bool) {
    match channels_last::to_channels_last(&y) {
        Some(t) => {
            super::recycle::give(y);
            (t, true)
        }
        None => (y, false),
    }
}

/// [`IntModel::turn_output`] for `steps`: the convs whose kernel writes NCHW planes (grouped
/// and depthwise convs, most one-channel stems) whose output is not a graph output and is read
/// only by convs over channels-last patches and by elementwise ops that run on channels-last
/// codes (Relu, Clip, Add, Sub).
fn turned_outputs(model: &Model, steps: &[Step]) -> Vec<bool> {
    let reads_channels_last = |j: usize| match &steps[j] {
        Step::Gemm { kernel, .. } => {
            matches!(
                **kernel,
                WeightKernel::Nhwc(_) | WeightKernel::Group(_, Some(_))
            ) && matches!(model.layers[j].op, Op::Conv2d { .. })
        }
        // Not the pools: their channels-last loops run over the channels of one pixel, short
        // rows where the convs these are (grouped, one-channel stems) have few channels; the
        // bundled CNN's first MaxPool took 30% longer so than on its NCHW planes.
        Step::Node => matches!(
            model.layers[j].op,
            Op::Relu | Op::Clip { .. } | Op::Binary(BinaryOp::Add | BinaryOp::Sub)
        ),
        _ => false,
    };
    (steps.iter().zip(&model.layers))
        .map(|(st, layer)| match st {
            Step::Gemm { kernel, out, .. }
                if matches!(layer.op, Op::Conv2d { .. })
                    && !kernel.writes_channels_last()
                    && !model.outputs.contains(out) =>
            {
                let readers = model.consumers(*out);
                !readers.is_empty() && readers.into_iter().all(reads_channels_last)
            }
            _ => false,
        })
        .collect()
}

/// For each node, the Softmax it feeds when it is an Add whose only reader is a Softmax.
fn softmax_adds(model: &Model) -> Vec<Option<usize>> {
    let mut v = vec![None; model.layers.len()];
    for (j, l) in model.layers.iter().enumerate() {
        if !matches!(l.op, Op::Softmax { .. }) {
            continue;
        }
        let Some(p) = l
            .data_input()
            .and_then(|d| model.layers.iter().position(|m| m.output == d))
        else {
            continue;
        };
        let out = model.layers[p].output;
        if matches!(model.layers[p].op, Op::Binary(BinaryOp::Add))
            && model.consumers(out) == [j]
            && !model.outputs.contains(&out)
        {
            v[p] = Some(j);
        }
    }
    v
}

/// The real bounds of node `j` when it is a fused Relu/ReLU6.
fn fused_clamp(model: &Model, j: usize) -> (f32, f32) {
    clamp_of(&model.layers[j].op).unwrap_or((0.0, f32::INFINITY))
}

/// The real bounds of a Relu or Clip.
fn clamp_of(op: &Op) -> Option<(f32, f32)> {
    match *op {
        Op::Relu => Some((0.0, f32::INFINITY)),
        Op::Clip { min, max } => Some((min, max)),
        _ => None,
    }
}

/// The codes [lo, hi] (lo ≤ hi) a clamp to the real `bounds` keeps of codes in `qp` (ReLU: from
/// the zero point), as the integer engine's Relu and Clip on codes apply it.
fn code_bounds(qp: QParams, bounds: (f32, f32)) -> (i8, i8) {
    let (lo, hi) = clamp_bounds(qp, Some(bounds));
    let (lo, hi) = (lo.clamp(-128, 127) as i8, hi.clamp(-128, 127) as i8);
    (lo, hi.max(lo))
}

/// The rows [r0, r1) of quantized weights (a conv group's output channels).
fn rows_of(w: &QWeights, r0: usize, r1: usize) -> QWeights {
    let per_row = w.params.len() / w.rows.max(1);
    let (params, ranges) = if w.params.len() == 1 {
        (w.params.clone(), w.ranges.clone())
    } else {
        (
            w.params[r0 * per_row..r1 * per_row].to_vec(),
            w.ranges[r0 * per_row..r1 * per_row].to_vec(),
        )
    };
    QWeights {
        rows: r1 - r0,
        cols: w.cols,
        q: w.q[r0 * w.cols..r1 * w.cols].to_vec(),
        granularity: w.granularity,
        params,
        ranges,
    }
}

impl<'m> IntModel<'m> {
    /// Prepares the integer engine for `model` with `params`; tensors may hold `limit` elements
    /// per sample.
    pub fn new(model: &'m Model, params: &ModelParams, limit: usize) -> Self {
        Self::build(model, params, limit, None)
    }

    /// [`IntModel::new`] that takes each weight node's kernel from `base` (the kernels of a
    /// build for the same model with `base_params`) where that node's weights, bias and input
    /// and output qparams are those `base` was built from, and builds the others: a candidate
    /// that changes one layer or one point costs the kernels it changes, not a whole build.
    pub fn reusing(
        model: &'m Model,
        params: &ModelParams,
        limit: usize,
        base: (&Kernels, &ModelParams),
    ) -> Self {
        Self::build(model, params, limit, Some(base))
    }

    /// Its kernels (shared, not copied), for [`IntModel::reusing`].
    pub fn kernels(&self) -> Kernels {
        Kernels(self.steps.clone())
    }

    /// [`IntModel::new`] and [`IntModel::reusing`].
    fn build(
        model: &'m Model,
        params: &ModelParams,
        limit: usize,
        base: Option<(&Kernels, &ModelParams)>,
    ) -> Self {
        let points = point_qparams(model, params);
        let mut steps: Vec<Step> = model.layers.iter().map(|_| Step::Node).collect();
        for lp in &params.layers {
            let (i, layer) = (lp.index, &model.layers[lp.index]);
            let fused = model.fused_activation(i);
            let in_q = match layer.op.is_embedding() {
                true => None,
                false => layer
                    .data_input()
                    .and_then(|d| Self::source_q(model, &points, d)),
            };
            let step = match base.and_then(|b| Self::same_step(model, b, lp, in_q)) {
                Some(step) => step,
                None => match Self::weight_step(model, lp, in_q) {
                    Some(step) => step,
                    None => continue,
                },
            };
            steps[i] = step;
            if let Some(j) = fused {
                steps[j] = Step::Fused;
            }
        }
        IntModel {
            model,
            turn_output: turned_outputs(model, &steps),
            add_clamp: clamps_after_adds(model, &steps),
            steps,
            points,
            limit,
            into_softmax: softmax_adds(model),
        }
    }

    /// The step `base` built for `lp`'s node when it was built from the same weights, bias and
    /// output qparams as `lp` and (for a GEMM) the input qparams `in_q`.
    fn same_step(
        model: &Model,
        (base, base_params): (&Kernels, &ModelParams),
        lp: &crate::params::LayerParams,
        in_q: Option<QParams>,
    ) -> Option<Step> {
        let old = base_params.layers.iter().find(|l| l.index == lp.index)?;
        let out_q = |l: &crate::params::LayerParams| l.act.as_ref().map(|a| a.qparams);
        if old.weight != lp.weight || out_q(old) != out_q(lp) {
            return None;
        }
        let step = base.0.get(lp.index)?;
        match step {
            // The bias compared too: the base may have been built for a model whose float
            // biases differ (SmoothQuant's) where the parameters keep the model's.
            Step::Gemm { kernel, bias, .. }
                if Some(kernel.in_q()) == in_q && Some(&bias[..]) == Self::bias_of(model, lp) =>
            {
                Some(step.clone())
            }
            Step::Embed { .. } if in_q.is_none() => Some(step.clone()),
            _ => None,
        }
    }

    /// The integer step of weight layer `lp` (input qparams `in_q`, `None` for an embedding),
    /// or `None` when it has no weights, output qparams or (but for an embedding) input qparams.
    fn weight_step(
        model: &Model,
        lp: &crate::params::LayerParams,
        in_q: Option<QParams>,
    ) -> Option<Step> {
        let (i, layer) = (lp.index, &model.layers[lp.index]);
        let (wq, act) = (lp.weight.as_ref()?, lp.act.as_ref()?);
        let fused = model.fused_activation(i);
        let clamp = fused.map(|j| fused_clamp(model, j));
        if layer.op.is_embedding() {
            let bounds = clamp_bounds(act.qparams, clamp);
            return Some(Step::Embed {
                kernel: Arc::new(IntEmbedding::new(&wq.q, act.qparams, bounds)),
                out: model.point_value(i),
            });
        }
        let bias: Arc<[f32]> = Self::bias_of(model, lp)?.into();
        let groups = layer.op.channel_groups();
        let kernel = Self::weight_kernel(layer, &wq.q, &bias, groups, (in_q?, act.qparams), clamp);
        Some(Step::Gemm {
            kernel: Arc::new(kernel),
            bias,
            out: model.point_value(i),
        })
    }

    /// The float bias weight layer `lp` runs with: its parameters' when a method set one, else
    /// the model's (`None` without integer weights).
    fn bias_of<'a>(model: &'a Model, lp: &'a crate::params::LayerParams) -> Option<&'a [f32]> {
        let model_bias = model.layers[lp.index].op.bias()?;
        let model_bias = model_bias.as_slice().expect("contiguous bias");
        Some(lp.weight.as_ref()?.bias_or(model_bias))
    }

    /// The kernel of a weight node: a direct loop for a grouped conv whose weights have one
    /// scale per channel, else one GEMM per channel group.
    fn weight_kernel(
        layer: &crate::model::Layer,
        w: &QWeights,
        bias: &[f32],
        groups: usize,
        qs: (QParams, QParams),
        clamp: Option<(f32, f32)>,
    ) -> WeightKernel {
        if let Op::Conv2d {
            weight,
            stride,
            padding,
            dilation,
            ..
        } = &layer.op
        {
            let (_, c, kh, kw) = weight.dim();
            let bounds = clamp_bounds(qs.1, clamp);
            if groups > 1 {
                if let Some(k) = GroupConv::new(w, bias, (kh, kw), groups, qs, bounds) {
                    let depthwise = c == 1 && w.rows == groups;
                    let nhwc = depthwise
                        .then(|| DepthwiseNhwc::new(w, bias, (kh, kw), qs, clamp))
                        .flatten();
                    return WeightKernel::Group(k, nhwc.map(Box::new));
                }
            } else if c == 1
                && let Ok(g) = crate::engine::im2col::ConvGeom::general(
                    &layer.in_shape,
                    (kh, kw),
                    *stride,
                    *padding,
                    *dilation,
                )
                && let Some(k) = GroupConv::new(w, bias, (kh, kw), 1, qs, bounds)
                && k.runs_vnni(&g)
            {
                // One input channel: the direct kernel's `vpdpbusd` over quads of taps beats
                // both patch rows of a few bytes and the channel-major tap loop.
                return WeightKernel::Group(k, None);
            } else if let Some(c) = NhwcConv::new(w, bias, (c, kh, kw), qs, clamp) {
                return WeightKernel::Nhwc(Box::new(c));
            }
        }
        let og = w.rows / groups;
        WeightKernel::Gemm(
            (0..groups)
                .map(|g| {
                    let wg = rows_of(w, g * og, (g + 1) * og);
                    IntGemm::new(&wg, &bias[g * og..(g + 1) * og], qs.0, qs.1, clamp)
                })
                .collect(),
        )
    }

    /// The qparams integers arrive in at value `v`: its point's, or those of the point it
    /// passes through qparam-keeping ops from.
    fn source_q(
        model: &Model,
        points: &HashMap<ValueId, QParams>,
        mut v: ValueId,
    ) -> Option<QParams> {
        loop {
            if let Some(q) = points.get(&v) {
                return Some(*q);
            }
            let p = model.layers.iter().position(|l| l.output == v)?;
            let l = &model.layers[p];
            if !l.op.keeps_qparams() {
                return None;
            }
            v = l.data_input()?;
        }
    }

    /// The model it runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Whether node `i` runs as an integer weight node (linear, conv or embedding).
    pub fn is_gemm(&self, i: usize) -> bool {
        matches!(self.steps[i], Step::Gemm { .. } | Step::Embed { .. })
    }

    /// Runs a batch (one tensor per graph input, the first normalized); `tap(i, v, t, ran)`
    /// sees each node's output value and tensor (a weight node's fused point) and how the node
    /// ran. Returns the graph outputs as reals.
    pub fn forward(
        &self,
        inputs: Vec<Tensor>,
        tap: impl FnMut(usize, ValueId, &Tensor, Ran),
    ) -> Result<Vec<Tensor>> {
        let vals = self.forward_prefix(inputs, 0)?;
        self.forward_resume(vals, 0, tap)
    }

    /// The value table just before node `stop` runs: the graph inputs quantized as
    /// [`IntModel::forward`] does, and nodes `0..stop` run (values freed after their last
    /// reader). [`IntModel::forward_resume`] of any plan of the same graph whose nodes before
    /// `stop` compute the same continues it.
    pub fn forward_prefix(&self, inputs: Vec<Tensor>, stop: usize) -> Result<Values<'m>> {
        let model = self.model;
        let inputs = inputs
            .into_iter()
            .zip(&model.inputs)
            .map(|(t, gi)| match self.points.get(&gi.value) {
                Some(q) if t.as_f32().is_some() => t.quantize(*q),
                _ => t,
            })
            .collect();
        let mut vals = Values::new(model, inputs);
        self.run_nodes(&mut vals, 0..stop, Some(&mut |_, _, _, _| {}))?;
        Ok(vals)
    }

    /// [`IntModel::forward`] when only the graph outputs are wanted, as a runtime runs a
    /// model: the same outputs, computed in channels-last mode (see
    /// [`channels_last`](super::intops::channels_last): no transposes between convs).
    pub fn forward_outputs(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let mut vals = self.forward_prefix(inputs, 0)?;
        self.run_nodes(&mut vals, 0..self.model.layers.len(), None)?;
        self.outputs(vals)
    }

    /// Runs nodes `start..` on `vals` (from [`IntModel::forward_prefix`] with `stop = start`)
    /// and returns the graph outputs as reals; `tap` sees each node's output.
    pub fn forward_resume(
        &self,
        mut vals: Values<'m>,
        start: usize,
        mut tap: impl FnMut(usize, ValueId, &Tensor, Ran),
    ) -> Result<Vec<Tensor>> {
        self.run_nodes(&mut vals, start..self.model.layers.len(), Some(&mut tap))?;
        self.outputs(vals)
    }

    /// [`IntModel::forward_resume`] when only the graph outputs are wanted: nodes `start..` run
    /// on `vals` in channels-last mode, as in [`IntModel::forward_outputs`] (the same outputs;
    /// the table's values are in shape order, as every tapped run leaves them).
    pub fn forward_resume_outputs(
        &self,
        mut vals: Values<'m>,
        start: usize,
    ) -> Result<Vec<Tensor>> {
        self.run_nodes(&mut vals, start..self.model.layers.len(), None)?;
        self.outputs(vals)
    }

    /// The graph outputs of a finished run, as reals.
    fn outputs(&self, mut vals: Values<'m>) -> Result<Vec<Tensor>> {
        let model = self.model;
        model
            .outputs
            .iter()
            .map(|&v| {
                let t = vals.take(v).or_else(|| vals.get(v).cloned());
                t.map(Tensor::dequantized)
                    .ok_or_else(|| Error::format(&model.source, "a graph output was not computed"))
            })
            .collect()
    }

    /// Runs `nodes` (a range of node indices in order) on `vals`, from
    /// [`IntModel::forward_prefix`] with `stop = nodes.start` or from an earlier `run_range`
    /// ending there; `tap` sees each node's output. [`IntModel::forward_resume`] continues it
    /// from `nodes.end`. A range must not separate a mask Add from the Softmax it feeds (see
    /// [`IntModel::cut_at_or_before`]).
    pub fn run_range(
        &self,
        vals: &mut Values<'m>,
        nodes: std::ops::Range<usize>,
        tap: &mut dyn FnMut(usize, ValueId, &Tensor, Ran),
    ) -> Result<()> {
        self.run_nodes(vals, nodes, Some(tap))
    }

    /// The latest node index at or before `cut` where a run may be split into
    /// [`IntModel::run_range`] calls: no mask Add before it feeds a Softmax at or after it (the
    /// Softmax's island mark is carried within one call).
    pub fn cut_at_or_before(&self, mut cut: usize) -> usize {
        while let Some(i) = self
            .into_softmax
            .iter()
            .enumerate()
            .find_map(|(i, j)| j.filter(|&j| i < cut && cut <= j).map(|_| i))
        {
            cut = i;
        }
        cut
    }

    /// The first node that writes value `v` (a weight node writing its fused point, or the
    /// node whose output it is).
    pub fn first_writer(&self, v: ValueId) -> Option<usize> {
        self.steps.iter().enumerate().find_map(|(i, st)| {
            let out = match st {
                Step::Gemm { out, .. } | Step::Embed { out, .. } => *out,
                Step::Node => self.model.layers[i].output,
                Step::Fused => return None,
            };
            (out == v).then_some(i)
        })
    }

    /// Runs `nodes` in order on `vals`; `tap` sees each node's output. Without a tap the run is
    /// in channels-last mode (see [`channels_last`](super::intops::channels_last)): `nodes`
    /// must then be the whole graph, and the values left in `vals` are in shape order again.
    fn run_nodes(
        &self,
        vals: &mut Values<'m>,
        nodes: std::ops::Range<usize>,
        mut tap: Option<Tap<'_>>,
    ) -> Result<()> {
        let model = self.model;
        let last = last_uses(model);
        let mut island_at = vec![false; model.layers.len()];
        // Per value: stored channels-last (only ever set without a tap).
        let mut nhwc = vec![false; model.values.len()];
        // Per node: run within an earlier one (a clamp within its Add).
        let mut done = vec![false; model.layers.len()];
        for i in nodes {
            let layer = &model.layers[i];
            let err = |m: String| Error::node(&model.source, &layer.name, layer.op.kind(), m);
            if matches!(self.steps[i], Step::Fused) {
                continue;
            }
            if done[i] {
                vals.free_after_into(model, &last, i, super::recycle::give);
                continue;
            }
            let ins = vals.inputs_of(layer).map_err(err)?;
            let stored: Vec<bool> = (layer.inputs.iter())
                .map(|v| v.is_some_and(|v| nhwc[v]))
                .collect();
            let (out, y, ran, y_nhwc) = self
                .run_step(i, &ins, &stored, tap.is_none())
                .map_err(err)?;
            let y = match self.points.get(&out) {
                Some(q) if !y.is_quantized() && y.as_f32().is_some() => y.quantize(*q),
                _ => y,
            };
            // A mask Add that dequantized its input belongs to the Softmax island it feeds.
            let ran = match (ran, self.into_softmax[i]) {
                (Ran::Island, Some(j)) => {
                    island_at[j] = true;
                    Ran::Float
                }
                _ if island_at[i] => Ran::Island,
                _ => ran,
            };
            if let Some(tap) = tap.as_mut() {
                tap(i, out, &y, ran);
            }
            if let (Step::Node, Some(j)) = (&self.steps[i], self.add_clamp[i])
                && out == model.layers[j].output
            {
                done[j] = true;
            }
            nhwc[out] = y_nhwc;
            vals.set(out, y);
            vals.free_after_into(model, &last, i, super::recycle::give);
        }
        // What is left (the graph outputs) goes back to shape order.
        for (v, _) in nhwc.iter().enumerate().filter(|(_, c)| **c) {
            if let Some(t) = vals.take(v) {
                vals.set(v, channels_last::to_nchw(&t));
            }
        }
        Ok(())
    }

    /// Runs node `i` (not a fused one) on `ins` (`stored[k]`: input k is stored channels-last);
    /// returns the value it writes, its output, how it ran and whether the output is stored
    /// channels-last (only when `channels_last` allows it).
    fn run_step(
        &self,
        i: usize,
        ins: &[Option<&Tensor>],
        stored: &[bool],
        channels_last: bool,
    ) -> std::result::Result<(ValueId, Tensor, Ran, bool), String> {
        let layer = &self.model.layers[i];
        let x = || ins.first().copied().flatten().ok_or("no input");
        if matches!(self.steps[i], Step::Node)
            && stored.first() == Some(&true)
            && let Some(y) = self.pool_channels_last(i, x()?)
        {
            let (y, y_nhwc) = y?;
            return Ok((layer.output, y, Ran::Int, y_nhwc));
        }
        Ok(match &self.steps[i] {
            Step::Fused => return Err("is fused into its weight node".into()),
            Step::Gemm { kernel, out, .. } => {
                let layouts = (stored.first() == Some(&true), channels_last);
                let (y, y_nhwc) = self.run_gemm(&layer.op, kernel, x()?, layouts)?;
                let (y, y_nhwc) = if channels_last && !y_nhwc && self.turn_output[i] {
                    turned(y)
                } else {
                    (y, y_nhwc)
                };
                (*out, y, Ran::Int, y_nhwc)
            }
            Step::Embed { kernel, out } => (*out, kernel.run(x()?, self.limit)?, Ran::Int, false),
            Step::Node
                if stored.iter().all(|&s| s)
                    && channels_last::keeps_channels_last(&layer.op, ins) =>
            {
                if let Some((j, y)) = self.add_clamped(i, ins) {
                    // The clamp node's output, written here: the run skips that node.
                    return Ok((self.model.layers[j].output, y?, Ran::Int, true));
                }
                let (y, ran) = self.run_other(i, ins)?;
                (layer.output, y, ran, true)
            }
            Step::Node => {
                // Channels-last inputs of any other op are read in shape order.
                let owned: Vec<Option<Cow<Tensor>>> = (ins.iter().zip(stored))
                    .map(|(t, &s)| match t {
                        Some(t) if s => Some(Cow::Owned(channels_last::to_nchw(t))),
                        t => t.map(Cow::Borrowed),
                    })
                    .collect();
                let refs: Vec<Option<&Tensor>> = owned.iter().map(|t| t.as_deref()).collect();
                let (y, ran) = self.run_other(i, &refs)?;
                for t in owned.into_iter().flatten() {
                    if let Cow::Owned(t) = t {
                        super::recycle::give(t);
                    }
                }
                (layer.output, y, ran, false)
            }
        })
    }

    /// Node `i` when it is a pool the integer engine runs on channels-last codes `x`: a MaxPool
    /// (channels-last out) or a global mean whose output is a point ([n, c] out, in shape
    /// order); the same codes as the NCHW kernels [`IntModel::run_other`] takes. `None` for any
    /// other node or input.
    fn pool_channels_last(
        &self,
        i: usize,
        x: &Tensor,
    ) -> Option<std::result::Result<(Tensor, bool), String>> {
        let layer = &self.model.layers[i];
        let &[_, c, h, w] = x.shape.as_slice() else {
            return None;
        };
        x.as_q().filter(|(q, _)| q.len() == x.len())?;
        match &layer.op {
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
                ceil_mode,
            } => {
                let g = PoolGeom::new(&[c, h, w], *kernel, *stride, *padding, *ceil_mode);
                Some(
                    g.and_then(|g| channels_last::max_pool(x, &g))
                        .map(|y| (y, true)),
                )
            }
            Op::GlobalAvgPool | Op::ReduceMean { .. } if integer_op(self.model, i) => {
                let qo = *self.points.get(&layer.output)?;
                let keep = !matches!(
                    layer.op,
                    Op::ReduceMean {
                        keepdims: false,
                        ..
                    }
                );
                Some(channels_last::global_mean(x, qo, keep).map(|y| (y, false)))
            }
            _ => None,
        }
    }

    /// Node `i` when it is an Add or Sub of two integer operands `ins` that
    /// [`IntModel::add_clamp`] pairs with the Relu or Clip `j` reading it: that clamp's node and
    /// its output, the sum clamped in the Add's own kernel (the same codes as the Add, then the
    /// clamp on codes of [`IntModel::run_other`]). `None` where the Add would not run in
    /// integers.
    fn add_clamped(
        &self,
        i: usize,
        ins: &[Option<&Tensor>],
    ) -> Option<(usize, std::result::Result<Tensor, String>)> {
        let (layer, j) = (&self.model.layers[i], self.add_clamp[i]?);
        let qo = *self.points.get(&layer.output)?;
        let (x1, x2) = (ins.first().copied()??, ins.get(1).copied()??);
        if !integer_op(self.model, i) || x1.as_q().is_none() || x2.as_q().is_none() {
            return None;
        }
        let (lo, hi) = code_bounds(qo, clamp_of(&self.model.layers[j].op)?);
        let sub = matches!(layer.op, Op::Binary(BinaryOp::Sub));
        let y = intops::add::add_within(x1, x2, (qo, Some((lo as i32, hi as i32))), sub);
        Some((j, y))
    }

    /// Runs a one-input model on `n` normalized samples; returns its first output as reals.
    pub fn forward_flat(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let input = super::float::input_tensor(self.model, x, n);
        Ok(self.forward_outputs(vec![input])?[0].to_f32_vec())
    }

    /// A node that is not an integer weight node: on integers when its op keeps qparams and
    /// its data input is quantized, or when it has an integer kernel, its output is a point
    /// and its inputs arrive as integers; else in f32 (an island when any input was quantized).
    fn run_other(
        &self,
        i: usize,
        ins: &[Option<&Tensor>],
    ) -> std::result::Result<(Tensor, Ran), String> {
        let layer = &self.model.layers[i];
        // Shape reads no values: it is plumbing, not an island.
        let quantized =
            !matches!(layer.op, Op::Shape { .. }) && ins.iter().flatten().any(|t| t.is_quantized());
        if let (true, Some(Some(x))) = (layer.op.keeps_qparams(), ins.first())
            && let Some((q, qp)) = x.as_q()
        {
            return Ok((self.pass_through(i, ins, q, qp)?, Ran::Int));
        }
        if let Some(&qo) = self.points.get(&layer.output)
            && quantized
            && integer_op(self.model, i)
            && let Some(y) = self.run_int(i, ins, qo)?
        {
            return Ok((y, Ran::Int));
        }
        // Quantized inputs dequantized; real ones borrowed as they are.
        let owned: Vec<Option<std::borrow::Cow<Tensor>>> = ins
            .iter()
            .map(|t| {
                t.map(|t| {
                    if t.is_quantized() {
                        std::borrow::Cow::Owned(Tensor::f32(t.shape.clone(), t.to_f32_vec()))
                    } else {
                        std::borrow::Cow::Borrowed(t)
                    }
                })
            })
            .collect();
        let refs: Vec<Option<&Tensor>> = owned.iter().map(|t| t.as_deref()).collect();
        let y = run_node(layer, &refs, self.limit)?;
        Ok((y, if quantized { Ran::Island } else { Ran::Float }))
    }

    /// Runs node `i`'s integer kernel into `qo`; `None` when its inputs do not allow it (a
    /// data input that is not integers: the node then runs as a float island).
    fn run_int(
        &self,
        i: usize,
        ins: &[Option<&Tensor>],
        qo: QParams,
    ) -> std::result::Result<Option<Tensor>, String> {
        let layer = &self.model.layers[i];
        let Some(x) = ins.first().copied().flatten() else {
            return Ok(None);
        };
        let y = match &layer.op {
            Op::Binary(BinaryOp::Mul | BinaryOp::Div) => {
                let Some(k) = scalar_operand(self.model, i) else {
                    return Ok(None);
                };
                let Some((_, qi)) = ins.get(k).copied().flatten().and_then(|t| t.as_q()) else {
                    return Ok(None);
                };
                let f = |t: &Tensor| {
                    let mut args = ins.to_vec();
                    args[k] = Some(t);
                    run_node(layer, &args, self.limit)
                };
                intops::lut::Lut::from_fn(f, qi, qo)?.apply(ins[k].expect("checked"))?
            }
            Op::Binary(b @ (BinaryOp::Add | BinaryOp::Sub)) => {
                let y = ins.get(1).copied().flatten().ok_or("has no second input")?;
                let (Some(a), Some(c)) = (self.operand(x, qo), self.operand(y, qo)) else {
                    return Ok(None);
                };
                intops::add::add(&a, &c, qo, *b == BinaryOp::Sub)?
            }
            Op::Concat { .. } => {
                let data_q = layer.inputs.iter().zip(ins).all(|(v, t)| {
                    t.is_none_or(|t| {
                        t.is_quantized() || v.and_then(|v| self.model.constant(v)).is_some()
                    })
                });
                if !data_q {
                    return Ok(None);
                }
                intops::lut::concat(&layer.op, ins, qo)?
            }
            Op::MatMul => match ins.get(1).copied().flatten() {
                Some(b)
                    if x.is_quantized()
                        && b.is_quantized()
                        && x.shape.len() >= 2
                        && b.shape.len() >= 2 =>
                {
                    intops::matmul::matmul(x, b, qo)?
                }
                _ => return Ok(None),
            },
            _ if !x.is_quantized() => return Ok(None),
            Op::Unary(_) => {
                let (_, qi) = x.as_q().expect("quantized");
                intops::lut::Lut::new(Some(&layer.op), qi, qo)?.apply(x)?
            }
            Op::GlobalAvgPool => intops::mean::global_mean(x, qo, true)?,
            Op::ReduceMean { keepdims, .. } => intops::mean::global_mean(x, qo, *keepdims)?,
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
                ceil_mode,
                count_include_pad,
            } => {
                let [_, c, h, w] = x.shape[..] else {
                    return Err(format!("expects an [N, C, H, W] input, got {:?}", x.shape));
                };
                let g = PoolGeom::new(&[c, h, w], *kernel, *stride, *padding, *ceil_mode)?;
                intops::mean::avg_pool(x, &g, *count_include_pad, qo)?
            }
            _ => return Ok(None),
        };
        Ok(Some(y))
    }

    /// An operand of an integer kernel: a quantized tensor as it is, a real constant quantized
    /// with its own min/max range at the output's bit width; `None` for a real activation.
    fn operand<'t>(&self, t: &'t Tensor, qo: QParams) -> Option<std::borrow::Cow<'t, Tensor>> {
        if t.is_quantized() {
            return Some(std::borrow::Cow::Borrowed(t));
        }
        let v = t.as_f32()?;
        if t.len() > CONST_OPERAND_MAX {
            return None;
        }
        let lo = v.iter().copied().fold(0.0f32, f32::min);
        let hi = v.iter().copied().fold(0.0f32, f32::max);
        let q = QParams::from_range(ClipRange::new(lo, hi), qo.bits, Scheme::Asymmetric);
        Some(std::borrow::Cow::Owned(t.quantize(q)))
    }

    /// Runs a qparam-keeping op on integer codes (exact: it only moves, selects or clamps them).
    fn pass_through(
        &self,
        i: usize,
        ins: &[Option<&Tensor>],
        q: &[i8],
        qp: QParams,
    ) -> std::result::Result<Tensor, String> {
        let layer = &self.model.layers[i];
        let x = ins[0].expect("checked");
        if let Some(b) = clamp_of(&layer.op) {
            let y = intops::clamp::clamp_codes(q, code_bounds(qp, b));
            return Ok(Tensor::q(x.shape.clone(), y, qp));
        }
        let limits = super::float::batch_limits(ins, self.limit);
        if let Some(y) = super::ops::max_pool_codes(&layer.op, x, &limits) {
            return y;
        }
        let codes = Tensor::f32(x.shape.clone(), q.iter().map(|&v| v as f32).collect());
        let mut refs: Vec<Option<&Tensor>> = ins.to_vec();
        refs[0] = Some(&codes);
        let y = run_node(layer, &refs, self.limit)?;
        let data = match &y.data {
            Data::F32(v) => v.iter().map(|&c| c as i8).collect(),
            _ => return Err("did not return real values".into()),
        };
        Ok(Tensor::q(y.shape, data, qp))
    }

    /// A linear or conv node on integer input `x` (stored channels-last when `nhwc.0`), and
    /// whether its output is stored channels-last (only where `nhwc.1` allows it: a conv whose
    /// kernel can write it).
    fn run_gemm(
        &self,
        op: &Op,
        kernel: &WeightKernel,
        x: &Tensor,
        (in_nhwc, may_nhwc): (bool, bool),
    ) -> std::result::Result<(Tensor, bool), String> {
        let in_q = kernel.in_q();
        let reads_channels_last = match kernel {
            WeightKernel::Nhwc(_) => matches!(op, Op::Conv2d { .. }),
            // A depthwise conv reads channels-last codes as they are, and writes them so.
            WeightKernel::Group(_, Some(_)) => may_nhwc,
            _ => false,
        };
        if in_nhwc && !reads_channels_last {
            // Read in shape order from a copy, whose buffer then goes back to the recycled ones.
            let nchw = channels_last::to_nchw(x);
            let y = self.run_gemm(op, kernel, &nchw, (false, may_nhwc));
            super::recycle::give(nchw);
            return y;
        }
        let requantized;
        let x = match x.as_q() {
            Some((_, qp)) if qp == in_q => x,
            _ => {
                requantized = x.quantize(in_q);
                &requantized
            }
        };
        match op {
            Op::Linear { weight, .. } => {
                let (data, _) = x.as_q().expect("quantized above");
                let n = x.shape.first().copied().unwrap_or(1).max(1);
                let (out, k) = weight.dim();
                if x.shape.last() != Some(&k) {
                    return Err(format!(
                        "expects a last axis of {k}, got shape {:?}",
                        x.shape
                    ));
                }
                let rows = data.len() / k;
                check_size(rows / n * out, self.limit)?;
                let mut shape = x.shape.clone();
                *shape.last_mut().expect("rank ≥ 1") = out;
                let WeightKernel::Gemm(gemms) = kernel else {
                    return Err("has no GEMM kernel".into());
                };
                let gemm = gemms.first().ok_or("has no GEMM kernel")?;
                Ok((
                    Tensor::q(shape, gemm.run(data, rows), kernel.out_q()),
                    false,
                ))
            }
            Op::Conv2d { .. } => self.run_conv(op, kernel, x, (in_nhwc, may_nhwc)),
            _ => Err("is not a weight op".into()),
        }
    }

    /// [`IntModel::run_gemm`] for a conv `op` on codes `x` in its kernel's input qparams (stored
    /// channels-last when `nhwc.0`, which the kernel must read): its output, and whether that
    /// is stored channels-last (only where `nhwc.1` allows it).
    fn run_conv(
        &self,
        op: &Op,
        kernel: &WeightKernel,
        x: &Tensor,
        (in_nhwc, may_nhwc): (bool, bool),
    ) -> std::result::Result<(Tensor, bool), String> {
        let Op::Conv2d {
            weight,
            stride,
            padding,
            dilation,
            groups,
            ..
        } = op
        else {
            return Err("is not a conv".into());
        };
        let (data, in_q) = x.as_q().ok_or("expects codes")?;
        let n = x.shape.first().copied().unwrap_or(1).max(1);
        let o = weight.dim().0;
        let p = super::float::op_geom(weight, stride, padding, dilation, *groups);
        let g = super::float::checked_conv_geom(&p, x, self.limit)?;
        let pad = in_q.zero_point.clamp(-128, 127) as i8;
        let shape = vec![n, o, g.oh, g.ow];
        let q = |y: Vec<i8>| Tensor::q(shape.clone(), y, kernel.out_q());
        Ok(match kernel {
            WeightKernel::Nhwc(c) => {
                let out_nhwc = may_nhwc && c.writes_channels_last();
                (q(c.run(data, n, &g, pad, (in_nhwc, out_nhwc))), out_nhwc)
            }
            WeightKernel::Group(_, Some(d)) if in_nhwc => (q(d.run(data, n, &g, pad)), true),
            WeightKernel::Group(c, _) => (q(c.run(data, n, &g)), false),
            WeightKernel::Gemm(gemms) => {
                let y = conv_nchw(data, n, &g, *groups, o, pad, |gi, cols, rows| {
                    gemms[gi].run(cols, rows)
                });
                (q(y), false)
            }
        })
    }

    /// Whether weight node `i` run alone ([`IntModel::run_isolated`] on the float value of its
    /// input) computes exactly what it computes in [`IntModel::forward`]: its input is a graph
    /// input, which the whole run quantizes with the node's own input qparams.
    pub fn isolated_is_in_run(&self, i: usize) -> bool {
        let Step::Gemm { kernel, .. } = &self.steps[i] else {
            return false;
        };
        let Some(v) = self.model.layers[i].data_input() else {
            return false;
        };
        self.model.inputs.iter().any(|g| g.value == v)
            && self.points.get(&v) == Some(&kernel.in_q())
    }

    /// Runs weight node `i` alone on real input `x` (quantized with its input qparams); returns
    /// its real-valued (fused) output, or `None` if it is not an integer node.
    pub fn run_isolated(&self, i: usize, x: &Tensor) -> Option<Tensor> {
        self.run_isolated_codes(i, x).map(Tensor::dequantized)
    }

    /// [`IntModel::run_isolated`] before the final dequantization: the output codes (or reals,
    /// for a node whose output is real).
    pub fn run_isolated_codes(&self, i: usize, x: &Tensor) -> Option<Tensor> {
        if let Step::Embed { kernel, .. } = &self.steps[i] {
            // Its input is the indices: nothing to quantize.
            return kernel.run(x, self.limit).ok();
        }
        let Step::Gemm { kernel, .. } = &self.steps[i] else {
            return None;
        };
        let q = x.quantize(kernel.in_q());
        let op = &self.model.layers[i].op;
        self.run_gemm(op, kernel, &q, (false, false))
            .ok()
            .map(|(y, _)| y)
    }
}

/// The qparams of the activation entering each weight layer that has parameters (by model
/// index), as the integer engine chains them (`None`: its input arrives in float).
pub fn input_qparams(model: &Model, params: &ModelParams) -> HashMap<usize, Option<QParams>> {
    let points = point_qparams(model, params);
    params
        .layers
        .iter()
        .map(|lp| {
            let q = model.layers[lp.index]
                .data_input()
                .and_then(|d| IntModel::source_q(model, &points, d));
            (lp.index, q)
        })
        .collect()
}

/// The qparams integers arrive in at value `v` (its point's, or those of the point it passes
/// through qparam-keeping ops from), given every point's qparams.
pub(crate) fn source_q(
    model: &Model,
    points: &HashMap<ValueId, QParams>,
    v: ValueId,
) -> Option<QParams> {
    IntModel::source_q(model, points, v)
}

/// The qparams of every point value: entry points and each layer's (fused) output.
pub(crate) fn point_qparams(model: &Model, params: &ModelParams) -> HashMap<ValueId, QParams> {
    let entries = params.points.iter().map(|e| (e.value, e.act.qparams));
    let layers = params.layers.iter().filter_map(|lp| {
        lp.act
            .as_ref()
            .map(|a| (model.point_value(lp.index), a.qparams))
    });
    entries.chain(layers).collect()
}

#[cfg(test)]
#[path = "int_reuse_tests.rs"]
mod reuse_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::im2col::ConvGeom;
    use crate::engine::intops::conv_padded::PaddedImage;
    use crate::engine::kernels::RunsLayout;

    /// How the AVX-512 VNNI kernel reads runs.
    const VNNI_RUNS: RunsLayout = RunsLayout {
        shifted: true,
        granule: 4,
    };
    use crate::engine::intops::depthwise::group_conv_reference;
    use crate::quant::Granularity;
    use crate::quant::weights::QWeights;

    /// Per-channel symmetric weights [o, k] from a deterministic pattern.
    fn weights(o: usize, k: usize, seed: usize) -> QWeights {
        let w: Vec<f32> = (0..o * k)
            .map(|i| (((i * 7 + seed) % 23) as f32 - 11.0) * 0.05 * (1 + i / k % 3) as f32)
            .collect();
        let s = crate::config::WeightSettings {
            bits: 8,
            scheme: Scheme::Symmetric,
            granularity: Granularity::PerChannel,
            strategy: crate::quant::Strategy::MinMax,
            percentile: 99.99,
            clip: None,
        };
        crate::quant::weights::quantize_weights(&w, o, k, &s)
    }

    #[test]
    fn a_bias_past_the_accumulator_range_lands_at_the_output() {
        // An input range of ~1e-12 makes s_in · s_w so small that an ordinary bias is past 2³¹
        // accumulator steps: the output must still be the bias (within one step of f64), not
        // the saturated i32's nothing. Both the one-group and the grouped (group rescaling)
        // paths, and the depthwise kernel.
        let in_q = QParams::from_range(ClipRange::new(-1e-12, 1e-12), 8, Scheme::Symmetric);
        let out_q = QParams::from_range(ClipRange::new(-0.15, 0.15), 8, Scheme::Symmetric);
        let bias = [-0.056f32, 0.1, 0.0];
        let want: Vec<i32> = bias
            .iter()
            .map(|&b| (b as f64 / out_q.scale as f64).round() as i32)
            .collect();
        for granularity in [Granularity::PerChannel, Granularity::Group(4)] {
            let w: Vec<f32> = (0..3 * 8).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
            let s = crate::config::WeightSettings {
                bits: 8,
                scheme: Scheme::Symmetric,
                granularity,
                strategy: crate::quant::Strategy::MinMax,
                percentile: 99.99,
                clip: None,
            };
            let wq = crate::quant::weights::quantize_weights(&w, 3, 8, &s);
            let gemm = IntGemm::new(&wq, &bias, in_q, out_q, None);
            let x = [0i8, 5, -3, 0, 0, 1, 0, 0];
            let y: Vec<i32> = gemm.run(&x, 1).iter().map(|&v| v as i32).collect();
            for (g, w) in y.iter().zip(&want) {
                assert!((g - w).abs() <= 1, "{granularity:?}: {y:?} vs {want:?}");
            }
        }
        let wq = weights(3, 9, 1);
        let bounds = (out_q.qmin(), out_q.qmax());
        let dw = GroupConv::new(&wq, &bias, (3, 3), 3, (in_q, out_q), bounds).unwrap();
        let g = ConvGeom::general(&[3, 4, 4], (3, 3), (1, 1), [1; 4], (1, 1)).unwrap();
        let y = dw.run(&[1i8; 3 * 16], 1, &g);
        for (c, plane) in y.chunks(16).enumerate() {
            assert!(
                plane.iter().all(|&v| (v as i32 - want[c]).abs() <= 1),
                "{c}: {plane:?}"
            );
        }
    }

    #[test]
    fn group_conv_equals_the_im2col_gemm_path_and_the_f64_reference() {
        let in_q = QParams::from_range(ClipRange::new(-1.0, 2.0), 8, Scheme::Asymmetric);
        let out_q = QParams::from_range(ClipRange::new(-3.0, 4.0), 8, Scheme::Asymmetric);
        for (c, o, groups, stride, pad, dil) in [
            (6, 6, 6, (1, 1), [1, 1, 1, 1], (1, 1)),
            (6, 12, 6, (2, 2), [1, 0, 2, 1], (1, 1)),
            (8, 4, 2, (1, 2), [0, 2, 1, 0], (2, 1)),
        ] {
            let (n, h, w, kh, kw) = (2, 7, 9, 3, 3);
            let g = ConvGeom::general(&[c, h, w], (kh, kw), stride, pad, dil).unwrap();
            let wq = weights(o, c / groups * kh * kw, c + o);
            let bias: Vec<f32> = (0..o).map(|i| i as f32 * 0.1 - 0.3).collect();
            let x: Vec<i8> = (0..n * c * h * w)
                .map(|i| ((i * 53) % 256) as u8 as i8)
                .collect();
            for clamp in [None, Some((0.0, 6.0))] {
                let bounds = clamp_bounds(out_q, clamp);
                let dw =
                    GroupConv::new(&wq, &bias, (kh, kw), groups, (in_q, out_q), bounds).unwrap();
                let got = dw.run(&x, n, &g);
                let og = o / groups;
                let gemms: Vec<IntGemm> = (0..groups)
                    .map(|gi| {
                        let wg = rows_of(&wq, gi * og, (gi + 1) * og);
                        IntGemm::new(&wg, &bias[gi * og..(gi + 1) * og], in_q, out_q, clamp)
                    })
                    .collect();
                let pad_code = in_q.zero_point as i8;
                let want = conv_nchw(&x, n, &g, groups, o, pad_code, |gi, cols, rows| {
                    gemms[gi].run(cols, rows)
                });
                assert_eq!(got, want, "groups {groups} clamp {clamp:?}");
                let r = group_conv_reference(&x, n, &g, &wq, &bias, groups, (in_q, out_q), bounds);
                let off = got.iter().zip(&r).filter(|(a, b)| a != b).count();
                assert!(
                    got.iter()
                        .zip(&r)
                        .all(|(a, b)| (*a as i32 - *b as i32).abs() <= 1)
                );
                assert!(off * 100 <= got.len(), "{off} of {} off by one", got.len());
            }
        }
    }

    /// [n, c, p] codes as [n, p, c], by direct indexing.
    pub(crate) fn channels_last(x: &[i8], n: usize, c: usize, p: usize) -> Vec<i8> {
        let mut y = vec![0; x.len()];
        for s in 0..n {
            for ch in 0..c {
                for i in 0..p {
                    y[(s * p + i) * c + ch] = x[(s * c + ch) * p + i];
                }
            }
        }
        y
    }

    #[test]
    fn channels_last_conv_equals_the_nchw_im2col_path_and_the_f64_reference() {
        let in_q = QParams::from_range(ClipRange::new(-1.0, 2.0), 8, Scheme::Asymmetric);
        let out_q = QParams::from_range(ClipRange::new(-3.0, 4.0), 8, Scheme::Asymmetric);
        // Then: one channel strided (the tap-plane loop), and patch rows of several blocks per
        // sample (k · pixels past the block size). Those from (8, 4, …) on read their patch
        // rows in place from a padded image where the CPU has AVX-512 VNNI: strided rows, a
        // vertical and a horizontal dilation (a run per tap), a 1×1, blocks of output rows,
        // strided 1×1s.
        for (c, o, (kh, kw), stride, pad, dil, (h, w)) in [
            (1, 5, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), (7, 9)),
            (6, 12, (3, 3), (2, 2), [1, 0, 2, 1], (1, 1), (7, 9)),
            (5, 7, (1, 1), (1, 1), [0, 0, 0, 0], (1, 1), (7, 9)),
            (1, 6, (5, 5), (2, 2), [2, 2, 2, 2], (1, 1), (11, 10)),
            (8, 4, (3, 2), (1, 2), [0, 2, 1, 0], (2, 1), (7, 9)),
            (64, 8, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), (12, 13)),
            (8, 16, (3, 3), (1, 1), [0, 1, 2, 1], (1, 3), (9, 14)),
            (12, 8, (1, 1), (1, 1), [0, 0, 0, 0], (1, 1), (7, 9)),
            (16, 16, (3, 3), (2, 2), [1, 1, 1, 1], (1, 1), (13, 14)),
            (4, 64, (3, 3), (1, 1), [1, 1, 1, 1], (1, 1), (20, 28)),
            // Strided 1×1s (a downsampling shortcut), strides unequal in the second.
            (16, 8, (1, 1), (2, 2), [0, 0, 0, 0], (1, 1), (7, 9)),
            (8, 32, (1, 1), (2, 3), [0, 0, 0, 0], (1, 1), (13, 14)),
        ] {
            let n = 3;
            let g = ConvGeom::general(&[c, h, w], (kh, kw), stride, pad, dil).unwrap();
            assert_eq!(
                PaddedImage::for_geometry(&g, VNNI_RUNS).is_some(),
                c % 4 == 0,
                "c {c}"
            );
            let wq = weights(o, c * kh * kw, c + o);
            let bias: Vec<f32> = (0..o).map(|i| i as f32 * 0.1 - 0.3).collect();
            let x: Vec<i8> = (0..n * c * h * w)
                .map(|i| ((i * 53) % 256) as u8 as i8)
                .collect();
            for clamp in [None, Some((0.0, 6.0))] {
                let pad_code = in_q.zero_point as i8;
                let conv = NhwcConv::new(&wq, &bias, (c, kh, kw), (in_q, out_q), clamp).unwrap();
                let got = conv.run(&x, n, &g, pad_code, (false, false));
                let gemm = IntGemm::new(&wq, &bias, in_q, out_q, clamp);
                let want = conv_nchw(&x, n, &g, 1, o, pad_code, |_, cols, rows| {
                    gemm.run(cols, rows)
                });
                assert_eq!(got, want, "c {c} kernel {kh}x{kw} clamp {clamp:?}");
                // Channels-last in and out: the same codes, moved by direct index loops.
                let x_nhwc = channels_last(&x, n, c, h * w);
                let outs = if conv.writes_channels_last() {
                    vec![(false, true), (true, true), (true, false)]
                } else {
                    vec![(true, false)]
                };
                for (i, o_nhwc) in outs {
                    let xin = if i { &x_nhwc } else { &x };
                    let y = conv.run(xin, n, &g, pad_code, (i, o_nhwc));
                    let want = if o_nhwc {
                        channels_last(&want, n, o, g.oh * g.ow)
                    } else {
                        want.clone()
                    };
                    assert_eq!(y, want, "c {c} {kh}x{kw} channels-last in {i} out {o_nhwc}");
                }
                let bounds = clamp_bounds(out_q, clamp);
                let r = group_conv_reference(&x, n, &g, &wq, &bias, 1, (in_q, out_q), bounds);
                assert!(
                    got.iter()
                        .zip(&r)
                        .all(|(a, b)| (*a as i32 - *b as i32).abs() <= 1)
                );
                // A one-channel conv runs on the direct kernel where it has `vpdpbusd`: the
                // same codes as the im2col GEMM path.
                if c == 1 {
                    let direct =
                        GroupConv::new(&wq, &bias, (kh, kw), 1, (in_q, out_q), bounds).unwrap();
                    assert_eq!(direct.run(&x, n, &g), want, "direct, kernel {kh}x{kw}");
                }
            }
        }
    }

    /// The bundled CNN and ResNet and the MobileNetV2 fixture: every kind of conv the engine
    /// runs (one-channel stems, 1×1, strided, depthwise) and residual Adds.
    pub(crate) fn conv_models() -> [Model; 3] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        [
            crate::bundled::model("mnist-cnn").unwrap(),
            crate::bundled::model("mnist-resnet").unwrap(),
            crate::model::load_model(&dir.join("tests/fixtures/onnx/mobilenetv2_ts.onnx"), None)
                .unwrap(),
        ]
    }

    #[test]
    fn only_convs_writing_planes_for_channels_last_readers_turn_their_output() {
        // The CNN's one-channel conv is read by a MaxPool, which runs on NCHW planes: it does
        // not turn. The ResNet's one-channel stem writes NCHW planes (on any CPU) and is read by
        // a conv and a residual Add: it turns. MobileNetV2's stem (read by a 1x1 conv and an Add)
        // turns, and so do its five depthwise convs (each read by its project conv) where they
        // run on NCHW planes: not where the channels-last depthwise kernel runs them (AVX-512
        // VNNI), as convs that write channels-last themselves never turn.
        use crate::pipeline::{Cancel, run};
        let models = conv_models();
        let (calib, test) = (
            crate::bundled::calib().take(8),
            crate::bundled::test().take(2),
        );
        let depthwise_planes = if crate::engine::intops::depthwise::nhwc::supported() {
            0
        } else {
            5
        };
        for (model, want_turned) in models.iter().zip([0, 1, 1 + depthwise_planes]) {
            let out = run(model, &calib, &test, &Default::default(), &Cancel::new()).unwrap();
            let int = IntModel::new(model, &out.params, usize::MAX);
            let turned: Vec<usize> = (0..model.layers.len())
                .filter(|&i| int.turn_output[i])
                .collect();
            assert_eq!(turned.len(), want_turned, "{}: {turned:?}", model.name);
            // The ResNet's three residual Adds each feed one Relu alone, which then runs within
            // the Add (MobileNetV2's Adds feed convs).
            let clamped = int.add_clamp.iter().flatten().count();
            let want_clamped = if model.name == "mnist-resnet" { 3 } else { 0 };
            assert_eq!(
                clamped, want_clamped,
                "{}: Adds with their clamp",
                model.name
            );
            for &i in &turned {
                let layer = &model.layers[i];
                let Op::Conv2d { weight, groups, .. } = &layer.op else {
                    panic!("{}: node {i} is not a conv", model.name);
                };
                assert!(
                    *groups > 1 || weight.dim().1 == 1,
                    "{}: {}",
                    model.name,
                    layer.name
                );
                let Step::Gemm { kernel, .. } = &int.steps[i] else {
                    panic!("{}: node {i} is no weight node", model.name);
                };
                assert!(!kernel.writes_channels_last(), "{}", layer.name);
            }
        }
    }
}
