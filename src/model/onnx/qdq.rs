//! Reading QuantizeLinear/DequantizeLinear (QDQ) models: each Q/DQ pair on an activation is
//! dropped from the graph and its scale and zero point kept for that tensor; each
//! DequantizeLinear of an integer initializer (weights, INT32 biases) becomes the float
//! constant it computes, its integers and qparams kept. What remains is the float graph.

use super::Importer;
use super::attrs::Attrs;
use crate::engine::tensor::Tensor;
use crate::model::ValueId;
use onnx_rs::ast::{DataType, Node};
use std::collections::HashMap;

/// The integer type of a Q/DQ tensor: bits and whether it is unsigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QType {
    /// 8 or 4 (32 for INT32 biases).
    pub bits: u8,
    /// UINT8/UINT4.
    pub unsigned: bool,
}

impl QType {
    fn of(dt: DataType) -> Option<QType> {
        let t = |bits, unsigned| Some(QType { bits, unsigned });
        match dt {
            DataType::Int8 => t(8, false),
            DataType::Uint8 => t(8, true),
            DataType::Int4 => t(4, false),
            DataType::Uint4 => t(4, true),
            DataType::Int32 => t(32, false),
            _ => None,
        }
    }

    /// The type's integer range.
    pub fn range(self) -> (i64, i64) {
        if self.unsigned {
            (0, (1i64 << self.bits) - 1)
        } else {
            (-(1i64 << (self.bits - 1)), (1i64 << (self.bits - 1)) - 1)
        }
    }

    /// What to subtract to turn the type's integers into qscope's signed ones.
    pub fn offset(self) -> i64 {
        if self.unsigned {
            1i64 << (self.bits - 1)
        } else {
            0
        }
    }
}

/// An activation's Q/DQ pair.
#[derive(Debug, Clone)]
pub struct ActQdq {
    /// The QuantizeLinear node's name.
    pub node: String,
    /// Scale.
    pub scale: f32,
    /// Zero point in the file's type.
    pub zero_point: i64,
    /// The file's integer type.
    pub qtype: QType,
}

/// A DequantizeLinear of an integer initializer.
#[derive(Debug, Clone)]
pub struct ConstQdq {
    /// The DequantizeLinear node's name.
    pub node: String,
    /// The integers, in the initializer's layout.
    pub ints: Vec<i64>,
    /// The initializer's dims.
    pub dims: Vec<usize>,
    /// Scales (one, one per slice along `axis`, or one per block).
    pub scale: Vec<f32>,
    /// The scale tensor's dims.
    pub scale_dims: Vec<usize>,
    /// Zero points (same layout as `scale`), in the file's type.
    pub zero_point: Vec<i64>,
    /// The quantized axis (normalized to ≥ 0).
    pub axis: usize,
    /// Block size along `axis` (0: not blocked).
    pub block: usize,
    /// The file's integer type.
    pub qtype: QType,
}

/// What the Q/DQ nodes of a file said.
#[derive(Debug, Clone, Default)]
pub struct QdqState {
    /// QuantizeLinear outputs: name → (input, pair, whether a DequantizeLinear read it).
    pub pending: HashMap<String, (ValueId, ActQdq, bool)>,
    /// Activation pairs by the quantized tensor's value.
    pub acts: HashMap<ValueId, ActQdq>,
    /// Dequantized initializers by the DequantizeLinear's output value.
    pub consts: HashMap<ValueId, ConstQdq>,
}

impl QdqState {
    /// Whether the file had any Q/DQ node.
    pub fn any(&self) -> bool {
        !self.acts.is_empty() || !self.consts.is_empty() || !self.pending.is_empty()
    }

    /// A QuantizeLinear whose output no DequantizeLinear reads: (its node, its output).
    pub fn unpaired(&self) -> Option<(&str, &str)> {
        self.pending
            .iter()
            .find(|(_, (_, _, read))| !read)
            .map(|(out, (_, q, _))| (q.node.as_str(), out.as_str()))
    }
}

/// A constant input of a Q/DQ node as (dims, floats or ints).
fn const_input(imp: &Importer, node: &Node<'_>, k: usize) -> Option<Tensor> {
    let name = node.input.get(k).filter(|n| !n.is_empty())?;
    imp.by_name
        .get(*name)
        .and_then(|v| imp.consts.get(v))
        .cloned()
}

/// Scales, the scale tensor's dims, zero points and the integer type of a Q/DQ node.
type ScaleZp = (Vec<f32>, Vec<usize>, Vec<i64>, QType);

/// The scale and zero point inputs of a Q/DQ node, checked: scales finite and > 0, zero points
/// inside the type, the same number of each. The type comes from the zero point (else
/// `output_dtype`, else UINT8 as ONNX says).
fn scale_zp(imp: &Importer, node: &Node<'_>, zp_type: Option<DataType>) -> Result<ScaleZp, String> {
    let s = const_input(imp, node, 1).ok_or("its scale must be a constant")?;
    let scale = s
        .as_f32()
        .ok_or("its scale must be a float tensor")?
        .to_vec();
    if let Some(bad) = scale.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(format!("has scale {bad}; a scale must be finite and > 0"));
    }
    let qtype = zp_type.map_or(
        Ok(QType {
            bits: 8,
            unsigned: true,
        }),
        |dt| {
            QType::of(dt).ok_or(format!(
                "has integer type {dt:?}; qscope reads INT8, UINT8, INT4, UINT4 (INT32 for biases)"
            ))
        },
    )?;
    let zp = match const_input(imp, node, 2) {
        Some(z) => match &z.data {
            crate::engine::tensor::Data::I64(v) => v.clone(),
            _ => return Err("its zero point must be an integer tensor".into()),
        },
        None => vec![0; scale.len()],
    };
    if zp.len() != scale.len() {
        return Err(format!(
            "has {} scales but {} zero points",
            scale.len(),
            zp.len()
        ));
    }
    let (lo, hi) = qtype.range();
    if let Some(z) = zp.iter().find(|z| !(lo..=hi).contains(*z)) {
        return Err(format!(
            "has zero point {z}, outside its type's range {lo}..={hi}"
        ));
    }
    Ok((scale, s.shape.clone(), zp, qtype))
}

/// The element type of input `k` (an initializer) or the `output_dtype` attribute.
fn zp_dtype(init_types: &HashMap<String, DataType>, node: &Node<'_>, k: usize) -> Option<DataType> {
    node.input
        .get(k)
        .and_then(|n| init_types.get(*n).copied())
        .or_else(|| match Attrs::of(node).int("output_dtype", 0) {
            0 => None,
            c => DataType::try_from(c as i32).ok(),
        })
}

/// Reads one QuantizeLinear or DequantizeLinear node.
pub(crate) fn read(
    imp: &mut Importer,
    node: &Node<'_>,
    name: &str,
    init_types: &HashMap<String, DataType>,
) -> Result<(), String> {
    let op = node.op_type.as_str();
    let x = node
        .input
        .first()
        .filter(|n| !n.is_empty())
        .ok_or("has no input")?;
    let out = node.output[0];
    if op == "QuantizeLinear" {
        let &xv = imp.by_name.get(*x).ok_or(format!(
            "input '{}' is produced by no earlier node",
            crate::error::clip(x, crate::error::NAME_MAX)
        ))?;
        let (scale, _, zp, qtype) = scale_zp(imp, node, zp_dtype(init_types, node, 2))?;
        if scale.len() != 1 && !imp.consts.contains_key(&xv) {
            return Err(format!(
                "has {} scales; qscope reads activations quantized per tensor",
                scale.len()
            ));
        }
        let pair = ActQdq {
            node: name.to_string(),
            scale: scale[0],
            zero_point: zp[0],
            qtype,
        };
        imp.qdq.pending.insert(out.to_string(), (xv, pair, false));
        return Ok(());
    }
    if let Some((xv, q, _)) = imp.qdq.pending.get(*x).cloned() {
        imp.qdq.pending.get_mut(*x).expect("present").2 = true;
        let (scale, _, zp, qtype) = scale_zp(
            imp,
            node,
            zp_dtype(init_types, node, 2).or(Some(q.qtype_dt())),
        )?;
        if scale != [q.scale] || zp != [q.zero_point] || qtype != q.qtype {
            return Err(format!(
                "dequantizes with scale {:?}, zero point {:?} what QuantizeLinear '{}' quantized with scale {}, zero point {}",
                scale, zp, q.node, q.scale, q.zero_point
            ));
        }
        if let Some(t) = imp.consts.get(&xv) {
            // A Q/DQ pair on a constant: the constant as the pair leaves it.
            let t =
                fake_quant_const(t, &q).ok_or("quantizes a constant that is not a float tensor")?;
            let v = imp.value(out);
            imp.consts.insert(v, t);
            return Ok(());
        }
        imp.qdq.acts.entry(xv).or_insert(q);
        imp.by_name.insert(out.to_string(), xv);
        return Ok(());
    }
    let xv = imp.by_name.get(*x).copied();
    let Some(t) = xv.and_then(|v| imp.consts.get(&v)).cloned() else {
        return Err(format!(
            "dequantizes '{}', which is neither an initializer nor the output of a QuantizeLinear",
            crate::error::clip(x, crate::error::NAME_MAX)
        ));
    };
    let dt = init_types.get(*x).copied().unwrap_or(DataType::Undefined);
    let qtype = QType::of(dt).ok_or(format!("dequantizes an initializer of type {dt:?}"))?;
    let ints = match t.data {
        crate::engine::tensor::Data::I64(v) => v,
        _ => return Err("dequantizes a float initializer".into()),
    };
    let (lo, hi) = qtype.range();
    if ints.iter().any(|v| !(lo..=hi).contains(v)) {
        return Err(format!("its initializer holds values outside {lo}..={hi}"));
    }
    let (scale, scale_dims, zp, zqtype) =
        scale_zp(imp, node, zp_dtype(init_types, node, 2).or(Some(dt)))?;
    if zqtype != qtype {
        return Err("its zero point's type differs from the initializer's".into());
    }
    let c = layout(node, &t.shape, ints, scale, scale_dims, zp, qtype, name)?;
    let floats = dequantize(&c);
    let v = imp.value(out);
    imp.consts.insert(v, Tensor::f32(c.dims.clone(), floats));
    imp.qdq.consts.insert(v, c);
    Ok(())
}

/// A float constant quantized and dequantized as ONNX does it (round half to even, saturate).
fn fake_quant_const(t: &Tensor, q: &ActQdq) -> Option<Tensor> {
    let (lo, hi) = q.qtype.range();
    let v = t
        .as_f32()?
        .iter()
        .map(|&x| {
            let r = (x / q.scale).round_ties_even() as i64 + q.zero_point;
            (r.clamp(lo, hi) - q.zero_point) as f32 * q.scale
        })
        .collect();
    Some(Tensor::f32(t.shape.clone(), v))
}

/// ONNX Runtime's quantizer drops a Relu after a Conv/Gemm/MatMul/Add whose Q/DQ pair starts
/// at 0 (the quantization clamps there). Removing the pair would leave the float graph without
/// it, so after the other passes a Relu is put back where such a pair sits on the output of a
/// weight op, a MatMul or an Add: the tensor keeps its name and the pair, the op's output is
/// renamed. Returns how many were put back.
pub(crate) fn restore_relus(imp: &mut Importer) -> usize {
    let mut zero: Vec<ValueId> = imp
        .qdq
        .acts
        .iter()
        .filter(|(_, q)| q.zero_point == q.qtype.range().0)
        .map(|(v, _)| *v)
        .collect();
    zero.sort_unstable();
    let mut n = 0;
    for xv in zero {
        let Some(p) = imp.nodes.iter().position(|m| m.output == xv) else {
            continue;
        };
        let fusing = matches!(
            &imp.nodes[p].pending,
            super::convert::Pending::Op(
                crate::model::Op::Conv2d { .. }
                    | crate::model::Op::Linear { .. }
                    | crate::model::Op::MatMul
                    | crate::model::Op::Binary(crate::model::BinaryOp::Add)
            )
        );
        let has_relu = imp.nodes.iter().any(|m| {
            m.inputs.first() == Some(&Some(xv))
                && matches!(
                    m.pending,
                    super::convert::Pending::Op(crate::model::Op::Relu)
                )
        });
        if !fusing || has_relu {
            continue;
        }
        let name = imp.values[xv].name.clone();
        let pre = format!("{name}_before_relu");
        imp.values[xv].name = pre.clone();
        imp.by_name.insert(pre, xv);
        imp.by_name.remove(&name);
        let relu = imp.value(&name);
        for m in imp.nodes.iter_mut() {
            m.inputs
                .iter_mut()
                .filter(|i| **i == Some(xv))
                .for_each(|i| *i = Some(relu));
        }
        imp.outputs
            .iter_mut()
            .filter(|o| **o == xv)
            .for_each(|o| *o = relu);
        imp.nodes.insert(
            p + 1,
            super::RawNode {
                name: format!("{name}_Relu"),
                op_type: "Relu".into(),
                pending: super::convert::Pending::Op(crate::model::Op::Relu),
                inputs: vec![Some(xv)],
                output: relu,
            },
        );
        let q = imp.qdq.acts.remove(&xv).expect("listed");
        imp.qdq.acts.insert(relu, q);
        n += 1;
    }
    n
}

impl ActQdq {
    fn qtype_dt(&self) -> DataType {
        match (self.qtype.bits, self.qtype.unsigned) {
            (8, true) => DataType::Uint8,
            (8, false) => DataType::Int8,
            (4, true) => DataType::Uint4,
            _ => DataType::Int4,
        }
    }
}

/// Checks a DequantizeLinear's axis and block size against the initializer and the scale.
#[allow(clippy::too_many_arguments)]
fn layout(
    node: &Node<'_>,
    dims: &[usize],
    ints: Vec<i64>,
    scale: Vec<f32>,
    scale_dims: Vec<usize>,
    zero_point: Vec<i64>,
    qtype: QType,
    name: &str,
) -> Result<ConstQdq, String> {
    let a = Attrs::of(node);
    let rank = dims.len() as i64;
    let axis = a.int("axis", 1);
    let ax = if axis < 0 { axis + rank } else { axis };
    let block = a.int("block_size", 0);
    if block < 0 {
        return Err(format!("has block_size {block}"));
    }
    let per_tensor = scale.len() == 1 && scale_dims.iter().all(|&d| d == 1);
    if !per_tensor && !(0..rank).contains(&ax) {
        return Err(format!("has axis {axis}, outside its {rank}-D initializer"));
    }
    let ax = ax.max(0) as usize;
    if block > 0 {
        let b = block as usize;
        let mut want = dims.to_vec();
        want[ax] = dims[ax].div_ceil(b);
        if !dims[ax].is_multiple_of(b) {
            return Err(format!(
                "has block_size {b}, which does not divide axis {ax} of size {}",
                dims[ax]
            ));
        }
        if scale_dims != want {
            return Err(format!(
                "has scale of shape {scale_dims:?}; block_size {b} on axis {ax} of {dims:?} needs {want:?}"
            ));
        }
    } else if !per_tensor && (scale_dims.len() != 1 || scale_dims[0] != dims[ax]) {
        return Err(format!(
            "has {} scales for axis {ax} of size {} (shape {dims:?})",
            scale.len(),
            dims[ax]
        ));
    }
    Ok(ConstQdq {
        node: name.to_string(),
        ints,
        dims: dims.to_vec(),
        scale,
        scale_dims,
        zero_point,
        axis: ax,
        block: block as usize,
        qtype,
    })
}

/// The index into a [`ConstQdq`]'s scales of element `flat` of its initializer.
pub fn scale_index(c: &ConstQdq, flat: usize) -> usize {
    if c.scale.len() == 1 {
        return 0;
    }
    if c.block == 0 {
        let inner: usize = c.dims[c.axis + 1..].iter().product();
        return flat / inner % c.dims[c.axis];
    }
    // Blocked: the scale has the initializer's shape with axis shrunk by the block size.
    let mut rem = flat;
    let mut idx = 0;
    let mut stride = 1;
    let mut coords = vec![0; c.dims.len()];
    for d in (0..c.dims.len()).rev() {
        coords[d] = rem % c.dims[d];
        rem /= c.dims[d];
    }
    for d in (0..c.dims.len()).rev() {
        let k = if d == c.axis {
            coords[d] / c.block
        } else {
            coords[d]
        };
        idx += k * stride;
        stride *= c.scale_dims[d];
    }
    idx
}

/// (q − z) · s in f32, as DequantizeLinear computes it.
fn dequantize(c: &ConstQdq) -> Vec<f32> {
    c.ints
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let k = scale_index(c, i);
            (q - c.zero_point[k]) as f32 * c.scale[k]
        })
        .collect()
}

/// Element types of the graph's initializers by name (Q/DQ reads them to tell INT8 from
/// UINT8).
pub(crate) fn init_types(graph: &onnx_rs::ast::Graph<'_>) -> HashMap<String, DataType> {
    graph
        .initializer
        .iter()
        .map(|t| (t.name().to_string(), t.data_type()))
        .collect()
}
