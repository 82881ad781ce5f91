//! An owned ONNX graph that export builds node by node, encoded to protobuf by `onnx-rs`
//! (whose AST borrows every string, so the graph is built owned and borrowed at the end).

use onnx_rs::ast::{
    self as ox, AttributeType, DataType, Dimension, TensorShape, TensorShapeDimension,
    TensorTypeProto, TypeProto, TypeValue,
};

/// The opset of the default domain that export writes (QuantizeLinear `block_size`, INT4).
pub const OPSET: i64 = 21;
/// The IR version that goes with opset 21.
pub const IR_VERSION: i64 = 10;

/// A tensor written as raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct OTensor {
    /// Tensor name.
    pub name: String,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// Element type.
    pub dtype: DataType,
    /// Raw bytes (4-bit types packed two per byte, low nibble first).
    pub raw: Vec<u8>,
}

impl OTensor {
    /// An f32 tensor.
    pub fn f32(name: &str, dims: &[usize], v: &[f32]) -> Self {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self::new(name, dims, DataType::Float, raw)
    }

    /// An i64 tensor.
    pub fn i64(name: &str, dims: &[usize], v: &[i64]) -> Self {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self::new(name, dims, DataType::Int64, raw)
    }

    /// An i32 tensor.
    pub fn i32(name: &str, dims: &[usize], v: &[i32]) -> Self {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self::new(name, dims, DataType::Int32, raw)
    }

    /// A boolean tensor from 0/1 values.
    pub fn bool(name: &str, dims: &[usize], v: &[i64]) -> Self {
        let raw = v.iter().map(|&x| u8::from(x != 0)).collect();
        Self::new(name, dims, DataType::Bool, raw)
    }

    /// An 8- or 4-bit integer tensor of type `dtype` (Int8, Uint8, Int4, Uint4) from values
    /// already in that type's range.
    pub fn small_int(name: &str, dims: &[usize], dtype: DataType, v: &[i32]) -> Self {
        let raw = match dtype {
            DataType::Int4 | DataType::Uint4 => v
                .chunks(2)
                .map(|p| (p[0] as u8 & 0x0f) | ((p.get(1).copied().unwrap_or(0) as u8 & 0x0f) << 4))
                .collect(),
            _ => v.iter().map(|&x| x as u8).collect(),
        };
        Self::new(name, dims, dtype, raw)
    }

    fn new(name: &str, dims: &[usize], dtype: DataType, raw: Vec<u8>) -> Self {
        OTensor {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            dtype,
            raw,
        }
    }

    /// The tensor as onnx-rs's TensorProto (borrowing the bytes).
    pub fn proto(&self) -> ox::TensorProto<'_> {
        ox::TensorProto::from_raw(&self.name, self.dims.clone(), self.dtype, &self.raw)
    }
}

/// An attribute value.
#[derive(Debug, Clone)]
pub enum AttrValue {
    /// An integer.
    Int(i64),
    /// Integers.
    Ints(Vec<i64>),
    /// A float.
    Float(f32),
    /// A string.
    Str(String),
    /// A tensor.
    Tensor(OTensor),
}

/// A node.
#[derive(Debug, Clone)]
pub struct ONode {
    /// Node name.
    pub name: String,
    /// Op type of the default domain.
    pub op: String,
    /// Input tensor names ("" for an absent optional input).
    pub inputs: Vec<String>,
    /// Output tensor names.
    pub outputs: Vec<String>,
    /// Attributes.
    pub attrs: Vec<(String, AttrValue)>,
}

/// A graph input or output: name, element type and dims (`None`: a named batch dimension).
#[derive(Debug, Clone)]
pub struct OIo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Dimensions; `None` is symbolic.
    pub dims: Option<Vec<Option<i64>>>,
}

/// A whole model being written.
#[derive(Debug, Clone, Default)]
pub struct OGraph {
    /// Graph name.
    pub name: String,
    /// Nodes in topological order.
    pub nodes: Vec<ONode>,
    /// Initializers.
    pub inits: Vec<OTensor>,
    /// Graph inputs.
    pub inputs: Vec<OIo>,
    /// Graph outputs.
    pub outputs: Vec<OIo>,
    /// Model metadata (key, value).
    pub metadata: Vec<(String, String)>,
}

fn attr<'a>(name: &'a str, v: &'a AttrValue) -> ox::Attribute<'a> {
    let mut a = ox::Attribute {
        name,
        ..Default::default()
    };
    match v {
        AttrValue::Int(i) => {
            a.r#type = AttributeType::Int;
            a.i = *i;
        }
        AttrValue::Ints(v) => {
            a.r#type = AttributeType::Ints;
            a.ints = v.clone();
        }
        AttrValue::Float(f) => {
            a.r#type = AttributeType::Float;
            a.f = *f;
        }
        AttrValue::Str(s) => {
            a.r#type = AttributeType::String;
            a.s = s.as_bytes();
        }
        AttrValue::Tensor(t) => {
            a.r#type = AttributeType::Tensor;
            a.t = Some(t.proto());
        }
    }
    a
}

fn value_info(io: &OIo) -> ox::ValueInfo<'_> {
    let shape = io.dims.as_ref().map(|dims| TensorShape {
        dim: dims
            .iter()
            .map(|d| TensorShapeDimension {
                value: match d {
                    Some(v) => Dimension::Value(*v),
                    None => Dimension::Param("batch"),
                },
                denotation: "",
            })
            .collect(),
    });
    ox::ValueInfo {
        name: &io.name,
        r#type: Some(TypeProto {
            value: Some(TypeValue::Tensor(TensorTypeProto {
                elem_type: io.dtype,
                shape,
            })),
            denotation: "",
        }),
        ..Default::default()
    }
}

impl OGraph {
    /// The ModelProto bytes.
    pub fn encode(&self) -> Vec<u8> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| ox::Node {
                input: n.inputs.iter().map(String::as_str).collect(),
                output: n.outputs.iter().map(String::as_str).collect(),
                name: &n.name,
                op_type: ox::OpType::from(n.op.as_str()),
                attribute: n.attrs.iter().map(|(k, v)| attr(k, v)).collect(),
                ..Default::default()
            })
            .collect();
        let graph = ox::Graph {
            node: nodes,
            name: &self.name,
            initializer: self.inits.iter().map(OTensor::proto).collect(),
            input: self.inputs.iter().map(value_info).collect(),
            output: self.outputs.iter().map(value_info).collect(),
            ..Default::default()
        };
        let model = ox::Model {
            ir_version: IR_VERSION,
            opset_import: vec![ox::OperatorSetId {
                domain: "",
                version: OPSET,
            }],
            producer_name: "qscope",
            producer_version: env!("CARGO_PKG_VERSION"),
            graph: Some(graph),
            metadata_props: self
                .metadata
                .iter()
                .map(|(k, v)| ox::StringStringEntry { key: k, value: v })
                .collect(),
            ..Default::default()
        };
        onnx_rs::encode(&model)
    }
}
