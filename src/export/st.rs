//! A deterministic safetensors writer: the same tensors and metadata always give the same bytes
//! (sorted metadata, tensors ordered by dtype size then name so each one stays aligned), so an
//! export can be compared and hashed. Files are read with the `safetensors` crate as usual.

use safetensors::Dtype;
use std::collections::BTreeMap;

/// A tensor to write: dtype, shape and little-endian bytes.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major little-endian bytes.
    pub data: Vec<u8>,
}

impl Tensor {
    /// F32 values.
    pub fn f32(shape: Vec<usize>, v: &[f32]) -> Tensor {
        Tensor {
            dtype: Dtype::F32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    /// I32 values.
    pub fn i32(shape: Vec<usize>, v: &[i32]) -> Tensor {
        Tensor {
            dtype: Dtype::I32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    /// I64 values.
    pub fn i64(shape: Vec<usize>, v: &[i64]) -> Tensor {
        Tensor {
            dtype: Dtype::I64,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    /// The values of an F32 tensor (empty for another dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        if self.dtype != Dtype::F32 {
            return Vec::new();
        }
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Number of f32 values (bytes / 4).
    pub fn len_f32(&self) -> usize {
        self.data.len() / 4
    }

    /// I8 values.
    pub fn i8(shape: Vec<usize>, v: &[i8]) -> Tensor {
        Tensor {
            dtype: Dtype::I8,
            shape,
            data: v.iter().map(|&x| x as u8).collect(),
        }
    }
}

/// The safetensors bytes of `tensors` with `metadata` in `__metadata__`.
pub fn serialize(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut order: Vec<(&String, &Tensor)> = tensors.iter().collect();
    order.sort_by(|a, b| {
        b.1.dtype
            .bitsize()
            .cmp(&a.1.dtype.bitsize())
            .then(a.0.cmp(b.0))
    });
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("strings"),
        );
    }
    let mut offset = 0usize;
    for (name, t) in &order {
        header.insert(
            (*name).clone(),
            serde_json::json!({"dtype": format!("{:?}", t.dtype), "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    let mut h = serde_json::to_string(&header)
        .expect("a header always serializes")
        .into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, t) in order {
        out.extend_from_slice(&t.data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tensors::TensorFile;

    #[test]
    fn reads_back_with_the_safetensors_crate() {
        let mut t = BTreeMap::new();
        t.insert("b".to_string(), Tensor::i8(vec![3], &[1, -2, 3]));
        t.insert("a".to_string(), Tensor::f32(vec![2, 1], &[0.5, -1.0]));
        t.insert("c".to_string(), Tensor::i64(vec![1], &[7]));
        let meta = BTreeMap::from([("k".to_string(), "v \"quoted\"".to_string())]);
        let bytes = serialize(&t, &meta);
        assert_eq!(bytes, serialize(&t, &meta));
        let f = TensorFile::parse("t", &bytes).unwrap();
        assert_eq!(f.float("a").unwrap().data, vec![0.5, -1.0]);
        assert_eq!(f.int("b").unwrap().1, vec![1, -2, 3]);
        assert_eq!(f.int("c").unwrap().1, vec![7]);
        assert_eq!(f.metadata("k"), Some("v \"quoted\""));
    }
}
