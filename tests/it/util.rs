//! Helpers shared by the integration tests: tiny models and data sets written as safetensors.

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::collections::HashMap;

/// A tensor to write: name, dtype, shape, little-endian bytes.
#[derive(Debug, Clone)]
pub struct T {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// An F32 tensor.
pub fn f32t(name: &str, shape: &[usize], v: &[f32]) -> T {
    T {
        name: name.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// A U8 tensor.
pub fn u8t(name: &str, shape: &[usize], v: &[u8]) -> T {
    T {
        name: name.into(),
        dtype: Dtype::U8,
        shape: shape.to_vec(),
        bytes: v.to_vec(),
    }
}

/// Serializes tensors (and optional `qscope.spec` metadata) to safetensors bytes.
pub fn safetensors_bytes(tensors: &[T], spec: Option<&str>) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    let meta = spec.map(|s| HashMap::from([("qscope.spec".to_string(), s.to_string())]));
    safetensors::serialize(views, meta).unwrap()
}

/// A deterministic pseudo-random generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Writes bytes to a file in `dir` and returns its path.
pub fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs the qscope binary; returns (exit success, stdout, stderr).
pub fn qscope(args: &[&str]) -> (bool, String, String) {
    qscope_in(std::path::Path::new("."), args)
}

/// Runs the qscope binary in folder `dir`; returns (exit success, stdout, stderr).
pub fn qscope_in(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qscope"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The integer engine's outputs (flattened) of `m` with parameters `p` on `eval`.
pub fn quant_outputs(
    m: &qscope::Model,
    p: qscope::params::ModelParams,
    eval: &qscope::Dataset,
) -> Vec<f32> {
    let config = qscope::QuantConfig {
        save_outputs: true,
        ..qscope::QuantConfig::default()
    };
    qscope::pipeline::evaluate_params(m, p, eval, &config, true, &qscope::pipeline::Cancel::new())
        .unwrap()
        .saved
        .unwrap()
        .quant
}

/// Asserts that only Softmax and LayerNormalization ran as float islands (what a BERT-style
/// encoder keeps in float).
pub fn assert_only_softmax_layernorm_islands(r: &qscope::eval::report::Report) {
    assert!(
        r.float_islands
            .iter()
            .all(|n| n.contains("Softmax") || n.contains("LayerNorm")),
        "{:?}",
        r.float_islands
    );
}

/// Whether `err` is one line that names every one of `names`.
pub fn one_line_naming(err: &str, names: &[&str]) -> bool {
    err.trim().lines().count() == 1 && names.iter().all(|n| err.contains(n))
}

/// A graph node `name` running `op` on `inputs` (all present) into value `output`, shapes
/// left for `infer_shapes`.
pub fn node(
    name: String,
    op: qscope::model::Op,
    inputs: &[qscope::model::ValueId],
    output: qscope::model::ValueId,
) -> qscope::model::Layer {
    qscope::model::Layer {
        name,
        op_type: op.kind().to_string(),
        op,
        inputs: inputs.iter().map(|&v| Some(v)).collect(),
        output,
        in_shape: Vec::new(),
        out_shape: Vec::new(),
    }
}

/// A model of `layers` over `values` and `consts`, with value 0 its one F32 input of one-sample
/// shape `input_shape` (not normalized) and `output` its output.
pub fn graph_model(
    name: &str,
    (layers, values, consts): GraphParts,
    input_shape: Vec<usize>,
    output: qscope::model::ValueId,
) -> qscope::model::Model {
    qscope::model::Model {
        name: name.into(),
        input_shape: input_shape.clone(),
        input_mean: Vec::new(),
        input_std: Vec::new(),
        layers,
        values,
        consts,
        inputs: vec![qscope::model::GraphInput {
            value: 0,
            dtype: qscope::model::DType::F32,
            shape: input_shape.iter().map(|&d| Some(d)).collect(),
        }],
        outputs: vec![output],
        source_kind: qscope::model::Source::Onnx,
        sha256: String::new(),
        source: name.into(),
        notes: Vec::new(),
    }
}

/// A graph's nodes, values and constants.
pub type GraphParts = (
    Vec<qscope::model::Layer>,
    Vec<qscope::model::Value>,
    Vec<(qscope::model::ValueId, qscope::engine::tensor::Tensor)>,
);
