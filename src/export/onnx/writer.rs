//! The model graph written back as ONNX nodes: one function per op kind, names kept. What is
//! written is the graph qscope runs (batchnorm folded, MatMul + bias fused, GELU merged), which
//! computes what the imported file computes.

use super::proto::{AttrValue, OGraph, OIo, ONode, OTensor};
use crate::engine::tensor::Data;
use crate::error::Result;
use crate::model::{BinaryOp, DType, Layer, Model, Op, UnaryOp, ValueId};
use onnx_rs::ast::DataType;
use std::collections::HashSet;

/// A graph being written: the ONNX graph so far and, per model value, the tensor name that its
/// readers read (a Q/DQ pair or the input normalization renames it).
pub struct Writer<'m> {
    /// The model being written.
    pub model: &'m Model,
    /// The ONNX graph so far.
    pub g: OGraph,
    /// Names of the float weight and bias initializers of weight layers (what a quantized
    /// model file stores itself, so its embedded graph leaves them out).
    pub weight_inits: Vec<String>,
    read: Vec<String>,
    taken: HashSet<String>,
    node_names: HashSet<String>,
}

/// `base`, or `base_2`, `base_3`, … : the first name not in `taken`, which it joins (node and
/// tensor names are separate namespaces in ONNX, so each has its own set).
fn unique(taken: &mut HashSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut k = 1;
    while taken.contains(&name) {
        k += 1;
        name = format!("{base}_{k}");
    }
    taken.insert(name.clone());
    name
}

/// Ints as an attribute.
fn ints(v: impl IntoIterator<Item = usize>) -> AttrValue {
    AttrValue::Ints(v.into_iter().map(|x| x as i64).collect())
}

/// ONNX pads [top, left, bottom, right] from qscope's [t, l, b, r] (the same order).
fn pads(p: [usize; 4]) -> AttrValue {
    ints(p)
}

impl<'m> Writer<'m> {
    /// A writer for `model`, with every tensor name of the model reserved.
    pub fn new(model: &'m Model) -> Self {
        let read: Vec<String> = model.values.iter().map(|v| v.name.clone()).collect();
        let taken = read.iter().cloned().collect();
        Writer {
            model,
            g: OGraph {
                name: model.name.clone(),
                ..Default::default()
            },
            weight_inits: Vec::new(),
            read,
            taken,
            node_names: HashSet::new(),
        }
    }

    /// A tensor name not used yet, from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        unique(&mut self.taken, base)
    }

    /// The name readers of value `v` read.
    pub fn read(&self, v: ValueId) -> String {
        self.read[v].clone()
    }

    /// Makes readers of `v` read `name` from now on.
    pub fn redirect(&mut self, v: ValueId, name: String) {
        self.read[v] = name;
    }

    /// Adds an initializer (its name made unique) and returns its name.
    pub fn init(&mut self, mut t: OTensor) -> String {
        t.name = self.fresh(&t.name);
        let name = t.name.clone();
        self.g.inits.push(t);
        name
    }

    /// Adds a node.
    pub fn node(
        &mut self,
        name: &str,
        op: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attrs: Vec<(&str, AttrValue)>,
    ) {
        let name = unique(&mut self.node_names, name);
        self.g.nodes.push(ONode {
            name,
            op: op.to_string(),
            inputs,
            outputs,
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
    }

    /// The model's constants as initializers under their own names (booleans where an op
    /// reads them as conditions).
    pub fn constants(&mut self) {
        let model = self.model;
        let as_bool: HashSet<ValueId> = model
            .layers
            .iter()
            .flat_map(|l| match &l.op {
                Op::Where => l.inputs.first().copied().flatten().into_iter().collect(),
                Op::Binary(BinaryOp::And | BinaryOp::Or) | Op::Unary(UnaryOp::Not) => {
                    l.inputs.iter().flatten().copied().collect::<Vec<_>>()
                }
                _ => Vec::new(),
            })
            .collect();
        for (v, t) in &model.consts {
            let name = &model.values[*v].name;
            let o = match &t.data {
                Data::F32(d) => OTensor::f32(name, &t.shape, d),
                Data::I64(d) if as_bool.contains(v) => OTensor::bool(name, &t.shape, d),
                Data::I64(d) => OTensor::i64(name, &t.shape, d),
                Data::Q { .. } => {
                    let d = t.clone().dequantized();
                    OTensor::f32(name, &d.shape, d.as_f32().unwrap_or(&[]))
                }
            };
            self.g.inits.push(o);
        }
    }

    /// Declares the graph inputs (batch axis symbolic).
    pub fn inputs(&mut self) {
        for gi in &self.model.inputs {
            let mut dims = vec![None];
            dims.extend(gi.shape.iter().map(|d| d.map(|x| x as i64)));
            self.g.inputs.push(OIo {
                name: self.model.values[gi.value].name.clone(),
                dtype: match gi.dtype {
                    DType::F32 => DataType::Float,
                    DType::I64 => DataType::Int64,
                    DType::Bool => DataType::Bool,
                },
                dims: Some(dims),
            });
        }
    }

    /// The input names of layer `l`'s inputs from `from` on.
    fn inputs_of(&self, l: &Layer, from: usize) -> Vec<String> {
        l.inputs[from.min(l.inputs.len())..]
            .iter()
            .map(|v| v.map_or(String::new(), |v| self.read(v)))
            .collect()
    }

    /// Writes a weightless layer `l` with output tensor `out`.
    pub fn plain_op(&mut self, l: &Layer, out: &str) -> Result<()> {
        let x = self.inputs_of(l, 0);
        let o = vec![out.to_string()];
        let name = l.name.as_str();
        match &l.op {
            Op::Clip { min, max } => {
                let lo = self.bound(name, "min", *min);
                let hi = self.bound(name, "max", *max);
                self.node(name, "Clip", vec![x[0].clone(), lo, hi], o, vec![]);
            }
            Op::BatchNorm { scale, shift } => self.affine(l, scale, shift, out),
            Op::Unary(u) => return self.unary(l, *u, x, out),
            // Axes as a second input (opset 13 and on).
            Op::ReduceMean { axes, .. } | Op::Squeeze { axes } | Op::Unsqueeze { axes } => {
                let mut inputs = x;
                if let Some(a) = axes {
                    inputs.truncate(1);
                    inputs.push(self.init(OTensor::i64(&format!("{name}_axes"), &[a.len()], a)));
                }
                let attrs = match &l.op {
                    Op::ReduceMean { keepdims, .. } => {
                        vec![("keepdims", AttrValue::Int(*keepdims as i64))]
                    }
                    _ => vec![],
                };
                self.node(name, l.op.kind(), inputs, o, attrs);
            }
            op => {
                let (kind, attrs) = node_attrs(op);
                self.node(name, kind, x, o, attrs);
            }
        }
        Ok(())
    }

    /// A Clip bound as a scalar initializer ("" for an infinite one).
    fn bound(&mut self, node: &str, which: &str, v: f32) -> String {
        if v.is_finite() {
            self.init(OTensor::f32(&format!("{node}_{which}"), &[], &[v]))
        } else {
            String::new()
        }
    }

    /// An unfolded batchnorm as Mul and Add of per-channel constants along axis 1.
    fn affine(&mut self, l: &Layer, scale: &[f32], shift: &[f32], out: &str) {
        let x = self.read(l.data_input().expect("batchnorm has an input"));
        let rank = l.in_shape.len().max(1);
        let mut dims = vec![scale.len()];
        dims.extend(std::iter::repeat_n(1, rank - 1));
        let s = self.init(OTensor::f32(&format!("{}_scale", l.name), &dims, scale));
        let b = self.init(OTensor::f32(&format!("{}_shift", l.name), &dims, shift));
        let mid = self.fresh(&format!("{}_scaled", l.name));
        self.node(
            &format!("{}_mul", l.name),
            "Mul",
            vec![x, s],
            vec![mid.clone()],
            vec![],
        );
        self.node(&l.name, "Add", vec![mid, b], vec![out.to_string()], vec![]);
    }

    /// A unary op; SiLU becomes Sigmoid and Mul.
    fn unary(&mut self, l: &Layer, u: UnaryOp, x: Vec<String>, out: &str) -> Result<()> {
        let o = vec![out.to_string()];
        let attrs = match u {
            UnaryOp::HardSigmoid { alpha, beta } => {
                vec![
                    ("alpha", AttrValue::Float(alpha)),
                    ("beta", AttrValue::Float(beta)),
                ]
            }
            UnaryOp::Gelu { tanh } => vec![(
                "approximate",
                AttrValue::Str(if tanh { "tanh" } else { "none" }.into()),
            )],
            UnaryOp::Silu => {
                let s = self.fresh(&format!("{}_sigmoid", l.name));
                self.node(
                    &format!("{}_sigmoid", l.name),
                    "Sigmoid",
                    x.clone(),
                    vec![s.clone()],
                    vec![],
                );
                self.node(&l.name, "Mul", vec![x[0].clone(), s], o, vec![]);
                return Ok(());
            }
            _ => vec![],
        };
        self.node(&l.name, l.op.kind(), x, o, attrs);
        Ok(())
    }
}

/// kernel_shape, strides, pads and ceil_mode of a 2-D pool.
fn pool_attrs(
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: [usize; 4],
    ceil_mode: bool,
) -> Vec<(&'static str, AttrValue)> {
    vec![
        ("kernel_shape", ints([kernel.0, kernel.1])),
        ("strides", ints([stride.0, stride.1])),
        ("pads", pads(padding)),
        ("ceil_mode", AttrValue::Int(ceil_mode as i64)),
    ]
}

/// The ONNX TensorProto.DataType code of a cast target.
fn dtype_code(d: DType) -> i64 {
    match d {
        DType::F32 => 1,
        DType::I64 => 7,
        DType::Bool => 9,
    }
}

/// The ONNX op type and attributes of an op written as one node on its own inputs (every op
/// but the weight ops and those [`Writer::plain_op`] writes apart).
fn node_attrs(op: &Op) -> (&'static str, Vec<(&'static str, AttrValue)>) {
    let int = AttrValue::Int;
    match op {
        Op::Relu => ("Relu", vec![]),
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
            ceil_mode,
        } => (
            "MaxPool",
            pool_attrs(*kernel, *stride, *padding, *ceil_mode),
        ),
        Op::AvgPool2d {
            kernel,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
        } => {
            let mut a = pool_attrs(*kernel, *stride, *padding, *ceil_mode);
            a.push(("count_include_pad", int(*count_include_pad as i64)));
            ("AveragePool", a)
        }
        Op::GlobalAvgPool => ("GlobalAveragePool", vec![]),
        Op::Flatten { axis } => ("Flatten", vec![("axis", int(*axis))]),
        Op::Binary(_) => (op.kind(), vec![]),
        Op::Softmax { axis } => ("Softmax", vec![("axis", int(*axis))]),
        Op::LayerNorm { axis, epsilon } => (
            "LayerNormalization",
            vec![
                ("axis", int(*axis)),
                ("epsilon", AttrValue::Float(*epsilon)),
            ],
        ),
        Op::MatMul => ("MatMul", vec![]),
        Op::Reshape { allowzero } => ("Reshape", vec![("allowzero", int(*allowzero as i64))]),
        Op::Transpose { perm } => (
            "Transpose",
            perm.as_ref()
                .map_or(vec![], |p| vec![("perm", ints(p.iter().copied()))]),
        ),
        Op::Concat { axis } => ("Concat", vec![("axis", int(*axis))]),
        Op::Gather { axis } => ("Gather", vec![("axis", int(*axis))]),
        Op::GatherNd { batch_dims } => ("GatherND", vec![("batch_dims", int(*batch_dims as i64))]),
        Op::Slice => ("Slice", vec![]),
        Op::Expand => ("Expand", vec![]),
        Op::Cast { to } => ("Cast", vec![("to", int(dtype_code(*to)))]),
        Op::Shape { start, end } => {
            let mut a = vec![("start", int(*start))];
            a.extend(end.map(|e| ("end", int(e))));
            ("Shape", a)
        }
        Op::Range => ("Range", vec![]),
        Op::ConstantOfShape { value, dtype } => {
            let t = match dtype {
                DType::F32 => OTensor::f32("value", &[1], &[*value]),
                DType::I64 => OTensor::i64("value", &[1], &[*value as i64]),
                DType::Bool => OTensor::bool("value", &[1], &[*value as i64]),
            };
            ("ConstantOfShape", vec![("value", AttrValue::Tensor(t))])
        }
        Op::Where => ("Where", vec![]),
        Op::Identity => ("Identity", vec![]),
        Op::Clip { .. }
        | Op::BatchNorm { .. }
        | Op::Unary(_)
        | Op::ReduceMean { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. } => unreachable!("written apart by plain_op"),
        Op::Linear { .. } | Op::Conv2d { .. } | Op::Embedding { .. } => {
            unreachable!("weight ops are written apart")
        }
    }
}
