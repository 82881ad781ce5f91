//! Quantization written as ONNX QuantizeLinear/DequantizeLinear: a Q/DQ pair per activation
//! point, integer weights behind a DequantizeLinear (per tensor, per output channel on `axis`,
//! per group with `block_size`), biases as INT32 at s_in·s_w.

use super::proto::{AttrValue, OTensor};
use super::writer::Writer;
use crate::error::{Error, Result};
use crate::model::Layer;
use crate::params::WeightQuant;
use crate::quant::{Granularity, QParams, Scheme};
use onnx_rs::ast::DataType;

/// Export choices for the Q/DQ file.
#[derive(Debug, Clone, Copy, Default)]
pub struct QdqOptions {
    /// Store weights of 4 bits or fewer as native INT4 (else INT8 holding the narrower values).
    pub native_int4: bool,
    /// Write activations of a width Q/DQ cannot say (not 8 or 4) as 8-bit Q/DQ followed by a
    /// Clip to the narrower range (else refuse).
    pub qdq_clip: bool,
}

/// How a weight op lays out its weight initializer.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// Conv [out, in/groups, kh, kw]; output channels on axis 0.
    Conv([usize; 4]),
    /// Gemm with transB = 1: [out, in]; output channels on axis 0.
    Gemm,
    /// MatMul: [in, out]; output channels on axis 1.
    MatMul,
}

/// The ONNX element type, zero point and (for `--qdq-clip`) the real bounds of an activation
/// point's integers. Asymmetric points use the unsigned type (zero point + 2^(B−1)).
/// An activation's ONNX type, zero point in that type, and the Clip bounds of `--qdq-clip`.
type ActType = (DataType, i32, Option<(f32, f32)>);

fn act_type(t: &str, q: QParams, opts: QdqOptions) -> Result<ActType> {
    let unsigned = q.scheme == Scheme::Asymmetric;
    let shift = if unsigned { 1 << (q.bits - 1) } else { 0 };
    let clip = |w: u8| {
        (q.bits < w)
            .then(|| q.representable())
            .map(|r| (r.lo, r.hi))
    };
    match q.bits {
        8 => Ok((
            if unsigned {
                DataType::Uint8
            } else {
                DataType::Int8
            },
            q.zero_point + shift,
            None,
        )),
        4 => Ok((
            if unsigned {
                DataType::Uint4
            } else {
                DataType::Int4
            },
            q.zero_point + shift,
            None,
        )),
        _ if opts.qdq_clip => {
            let shift8 = if unsigned { 128 } else { 0 };
            let dt = if unsigned {
                DataType::Uint8
            } else {
                DataType::Int8
            };
            Ok((dt, q.zero_point + shift8, clip(8)))
        }
        b => Err(Error::format(
            "--out",
            format!(
                "tensor '{t}': {b}-bit activations cannot be said in QuantizeLinear (8 or 4 bits); pass --qdq-clip to write them as 8-bit Q/DQ clipped to the {b}-bit range"
            ),
        )),
    }
}

/// Writes a Q/DQ pair after value `v` with `q`; readers of `v` read the DequantizeLinear's
/// output, named `out` when given (a graph output keeps its name).
pub fn point(
    w: &mut Writer,
    v: usize,
    q: QParams,
    opts: QdqOptions,
    out: Option<String>,
) -> Result<()> {
    let t = w.model.values[v].name.clone();
    let (dt, zp, clip) = act_type(&t, q, opts)?;
    let scale = w.init(OTensor::f32(&format!("{t}_scale"), &[], &[q.scale]));
    let zero = w.init(OTensor::small_int(
        &format!("{t}_zero_point"),
        &[],
        dt,
        &[zp],
    ));
    let quantized = w.fresh(&format!("{t}_quantized"));
    let input = w.read(v);
    w.node(
        &format!("{t}_QuantizeLinear"),
        "QuantizeLinear",
        vec![input, scale.clone(), zero.clone()],
        vec![quantized.clone()],
        vec![],
    );
    let out = out.unwrap_or_else(|| w.fresh(&format!("{t}_dequantized")));
    let dq_out = match clip {
        Some(_) => w.fresh(&format!("{t}_dequantized_wide")),
        None => out.clone(),
    };
    w.node(
        &format!("{t}_DequantizeLinear"),
        "DequantizeLinear",
        vec![quantized, scale, zero],
        vec![dq_out.clone()],
        vec![],
    );
    if let Some((lo, hi)) = clip {
        let lo = w.init(OTensor::f32(&format!("{t}_clip_min"), &[], &[lo]));
        let hi = w.init(OTensor::f32(&format!("{t}_clip_max"), &[], &[hi]));
        w.node(
            &format!("{t}_Clip"),
            "Clip",
            vec![dq_out, lo, hi],
            vec![out.clone()],
            vec![],
        );
    }
    w.redirect(v, out);
    Ok(())
}

/// The weight (and bias) initializers of weight layer `l`, as floats or, with `wq`, integers
/// behind DequantizeLinear; the bias is INT32 at s_in·s_w when the input's qparams `in_q` are
/// known. Returns the names the op reads.
pub fn weights(
    w: &mut Writer,
    l: &Layer,
    layout: Layout,
    (weight, bias): (&[f32], &[f32]),
    wq: Option<&WeightQuant>,
    in_q: Option<QParams>,
    opts: QdqOptions,
) -> Result<(String, String)> {
    let name = &l.name;
    let Some(wq) = wq else {
        let (dims, data) = float_layout(layout, weight, bias.len());
        let wn = w.init(OTensor::f32(&format!("{name}_weight"), &dims, &data));
        let bn = w.init(OTensor::f32(&format!("{name}_bias"), &[bias.len()], bias));
        w.weight_inits.extend([wn.clone(), bn.clone()]);
        return Ok((wn, bn));
    };
    let wout = quantized_weight(w, name, layout, &wq.q, opts)?;
    let Some(in_q) = in_q else {
        let bn = w.init(OTensor::f32(&format!("{name}_bias"), &[bias.len()], bias));
        return Ok((wout, bn));
    };
    let (bq, bs) = int_bias(&wq.q, bias, in_q);
    let bn = w.init(OTensor::i32(
        &format!("{name}_bias_quantized"),
        &[bq.len()],
        &bq,
    ));
    let bsn = w.init(OTensor::f32(
        &format!("{name}_bias_scale"),
        &[bs.len()],
        &bs,
    ));
    let bout = w.fresh(&format!("{name}_bias_dequantized"));
    w.node(
        &format!("{name}_bias_DequantizeLinear"),
        "DequantizeLinear",
        vec![bn, bsn],
        vec![bout.clone()],
        vec![("axis", AttrValue::Int(0))],
    );
    Ok((wout, bout))
}

/// The integers of `q` in `layout` behind a DequantizeLinear; returns its output name.
fn quantized_weight(
    w: &mut Writer,
    name: &str,
    layout: Layout,
    q: &crate::quant::weights::QWeights,
    opts: QdqOptions,
) -> Result<String> {
    let dt = if opts.native_int4 && q.bits() <= 4 {
        DataType::Int4
    } else {
        DataType::Int8
    };
    let (dims, ints, blocks) = weight_blocks(name, layout, q)?;
    let Blocks {
        dims: sdims,
        scales,
        zero_points: zps,
        attrs,
    } = blocks;
    let wn = w.init(OTensor::small_int(
        &format!("{name}_weight_quantized"),
        &dims,
        dt,
        &ints,
    ));
    let sn = w.init(OTensor::f32(
        &format!("{name}_weight_scale"),
        &sdims,
        &scales,
    ));
    let zn = w.init(OTensor::small_int(
        &format!("{name}_weight_zero_point"),
        &sdims,
        dt,
        &zps,
    ));
    let wout = w.fresh(&format!("{name}_weight_dequantized"));
    w.node(
        &format!("{name}_weight_DequantizeLinear"),
        "DequantizeLinear",
        vec![wn, sn, zn],
        vec![wout.clone()],
        attrs,
    );
    Ok(wout)
}

/// The table of embedding `l` ([rows, dim], rows on axis 0), as floats or, with `wq`, integers
/// behind a DequantizeLinear (one scale per row on axis 0 when per channel). Returns the name
/// the Gather reads.
pub fn table(
    w: &mut Writer,
    l: &Layer,
    table: &ndarray::Array2<f32>,
    wq: Option<&WeightQuant>,
    opts: QdqOptions,
) -> Result<String> {
    let Some(wq) = wq else {
        let (r, c) = table.dim();
        let data = table.as_slice().expect("standard layout");
        let wn = w.init(OTensor::f32(&format!("{}_weight", l.name), &[r, c], data));
        w.weight_inits.push(wn.clone());
        return Ok(wn);
    };
    quantized_weight(w, &l.name, Layout::Gemm, &wq.q, opts)
}

/// The bias in integers at the accumulator scale s_in·s_w (per row; a grouped row uses its
/// largest group scale), as the quantized model file stores it, and those scales.
fn int_bias(
    q: &crate::quant::weights::QWeights,
    bias: &[f32],
    in_q: QParams,
) -> (Vec<i32>, Vec<f32>) {
    use crate::export::quantized_model::{bias_to_int, row_ref_scales};
    row_ref_scales(q)
        .iter()
        .zip(bias)
        .map(|(&s_w, &b)| {
            let acc = in_q.scale as f64 * s_w;
            (bias_to_int(b, acc), acc as f32)
        })
        .unzip()
}

/// A float weight [rows, cols] in the op's layout: dims and data.
fn float_layout(layout: Layout, w: &[f32], rows: usize) -> (Vec<usize>, Vec<f32>) {
    let cols = w.len() / rows.max(1);
    match layout {
        Layout::Conv(d) => (d.to_vec(), w.to_vec()),
        Layout::Gemm => (vec![rows, cols], w.to_vec()),
        Layout::MatMul => (vec![cols, rows], transpose(w, rows, cols)),
    }
}

fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| v[r * cols + c]))
        .collect()
}

/// The scale/zero-point tensors of quantized weights and the DequantizeLinear attributes
/// that read them.
struct Blocks {
    /// Dims of the scale and zero-point tensors (none for one per tensor).
    dims: Vec<usize>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    attrs: Vec<(&'static str, AttrValue)>,
}

/// Weight dims and integers in the op's layout, and their scale/zero-point blocks.
fn weight_blocks(
    name: &str,
    layout: Layout,
    q: &crate::quant::weights::QWeights,
) -> Result<(Vec<usize>, Vec<i32>, Blocks)> {
    let (rows, cols) = (q.rows, q.cols);
    let ints: Vec<i32> = q.q.iter().map(|&v| v as i32).collect();
    let (dims, ints) = match layout {
        Layout::Conv(d) => (d.to_vec(), ints),
        Layout::Gemm => (vec![rows, cols], ints),
        Layout::MatMul => (vec![cols, rows], transpose(&ints, rows, cols)),
    };
    let out_axis = if matches!(layout, Layout::MatMul) {
        1
    } else {
        0
    };
    let blocks = match q.granularity {
        Granularity::PerTensor => Blocks {
            dims: vec![],
            scales: vec![q.params[0].scale],
            zero_points: vec![q.params[0].zero_point],
            attrs: vec![],
        },
        Granularity::PerChannel => Blocks {
            dims: vec![rows],
            scales: q.params.iter().map(|p| p.scale).collect(),
            zero_points: q.params.iter().map(|p| p.zero_point).collect(),
            attrs: vec![("axis", AttrValue::Int(out_axis))],
        },
        Granularity::Group(n) => group_blocks(name, layout, q, n)?,
    };
    Ok((dims, ints, blocks))
}

/// The blocks of weights quantized in groups of `n` along a row, for a blocked
/// DequantizeLinear: whole blocks of the op's reduction axis (for a conv, of whole kernels).
fn group_blocks(
    name: &str,
    layout: Layout,
    q: &crate::quant::weights::QWeights,
    n: usize,
) -> Result<Blocks> {
    let (rows, cols) = (q.rows, q.cols);
    let reduce = match layout {
        Layout::Conv([_, i, kh, kw]) => i * kh * kw,
        _ => cols,
    };
    if !reduce.is_multiple_of(n) {
        return Err(Error::format(
            "--out",
            format!(
                "layer '{name}': groups of {n} do not divide its {reduce} inputs, and a blocked DequantizeLinear needs whole blocks (choose a group size that divides {reduce})"
            ),
        ));
    }
    let g = q.groups();
    let (dims, order, axis, block): (Vec<usize>, Vec<(usize, usize)>, i64, usize) = match layout {
        Layout::Gemm => (vec![rows, g], grid(rows, g, false), 1, n),
        Layout::MatMul => (vec![g, rows], grid(rows, g, true), 0, n),
        Layout::Conv([o, i, kh, kw]) => {
            let khw = kh * kw;
            if !n.is_multiple_of(khw) {
                return Err(Error::format(
                    "--out",
                    format!(
                        "layer '{name}': groups of {n} weights do not cover whole {kh}×{kw} kernels, which a blocked DequantizeLinear of a conv weight needs (use a group size that is a multiple of {khw})"
                    ),
                ));
            }
            let b = n / khw;
            let order = (0..o)
                .flat_map(|r| {
                    (0..i.div_ceil(b)).flat_map(move |k| std::iter::repeat_n((r, k), khw))
                })
                .collect();
            (vec![o, i.div_ceil(b), kh, kw], order, 1, b)
        }
    };
    Ok(Blocks {
        dims,
        scales: order.iter().map(|&(r, k)| q.param(r, k).scale).collect(),
        zero_points: order
            .iter()
            .map(|&(r, k)| q.param(r, k).zero_point)
            .collect(),
        attrs: vec![
            ("axis", AttrValue::Int(axis)),
            ("block_size", AttrValue::Int(block as i64)),
        ],
    })
}

/// (row, group) pairs in row-major order of a [rows, groups] grid, or of [groups, rows] when
/// `transposed`.
fn grid(rows: usize, groups: usize, transposed: bool) -> Vec<(usize, usize)> {
    if transposed {
        (0..groups)
            .flat_map(|k| (0..rows).map(move |r| (r, k)))
            .collect()
    } else {
        (0..rows)
            .flat_map(|r| (0..groups).map(move |k| (r, k)))
            .collect()
    }
}
