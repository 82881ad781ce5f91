//! Reading tensors out of a safetensors buffer, with dtype conversion and errors that name the file.

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

/// A parsed safetensors buffer plus the label (usually the path) used in error messages.
pub struct TensorFile<'a> {
    label: String,
    st: SafeTensors<'a>,
    metadata: HashMap<String, String>,
}

/// A tensor converted to f32, with its shape.
#[derive(Debug, Clone)]
pub struct F32Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl<'a> TensorFile<'a> {
    /// Parses `bytes` as safetensors; `label` names the file in errors.
    pub fn parse(label: &str, bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < 8 {
            return Err(Error::format(
                label,
                format!(
                    "not a safetensors file: {} bytes, too short for a header",
                    bytes.len()
                ),
            ));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if header_len > (bytes.len() as u64).saturating_sub(8) {
            return Err(Error::format(
                label,
                format!(
                    "not a safetensors file or truncated: header length {header_len} runs past the end of the file ({} bytes)",
                    bytes.len()
                ),
            ));
        }
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::format(label, format!("not a valid safetensors file: {e}")))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(label, format!("not a valid safetensors file: {e}")))?;
        Ok(TensorFile {
            label: label.to_string(),
            st,
            metadata,
        })
    }

    /// The label used in errors (the file name).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A `__metadata__` entry.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// All `__metadata__` entries.
    pub fn all_metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Tensor names in file order.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<(usize, String)> = self
            .st
            .iter()
            .map(|(n, t)| (t.data().as_ptr() as usize, n.to_string()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    /// Dtype and shape of `name`.
    pub fn info(&self, name: &str) -> Result<(Dtype, Vec<usize>)> {
        let t = self.view(name)?;
        Ok((t.dtype(), t.shape().to_vec()))
    }

    /// Raw bytes of `name` (little-endian, row-major).
    pub fn raw(&self, name: &str) -> Result<&'a [u8]> {
        Ok(self.view(name)?.data())
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'a>> {
        self.st
            .tensor(name)
            .map_err(|_| Error::tensor(&self.label, name, "not found in the file"))
    }

    /// A floating-point tensor (F32, F16, BF16 or F64) as f32; non-finite values are an error.
    pub fn float(&self, name: &str) -> Result<F32Tensor> {
        let t = self.view(name)?;
        let data = decode_float(t.dtype(), t.data())
            .ok_or_else(|| self.bad_dtype(name, t.dtype(), "F32, F16 or BF16"))?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(
                &self.label,
                name,
                format!("holds a non-finite value ({}) at index {i}", data[i]),
            ));
        }
        Ok(F32Tensor {
            shape: t.shape().to_vec(),
            data,
        })
    }

    /// An integer tensor of any integer dtype as i64.
    pub fn int(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let t = self.view(name)?;
        let data = decode_int(t.dtype(), t.data())
            .ok_or_else(|| self.bad_dtype(name, t.dtype(), "an integer dtype"))?;
        Ok((t.shape().to_vec(), data))
    }

    fn bad_dtype(&self, name: &str, dtype: Dtype, want: &str) -> Error {
        Error::tensor(
            &self.label,
            name,
            format!("unsupported dtype {dtype:?} (expected {want})"),
        )
    }
}

/// Decodes little-endian floats of `dtype` into f32; `None` for a non-float dtype.
pub fn decode_float(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        _ => return None,
    })
}

/// Decodes little-endian integers of `dtype` into i64; `None` for a non-integer dtype.
pub fn decode_int(dtype: Dtype, bytes: &[u8]) -> Option<Vec<i64>> {
    Some(match dtype {
        Dtype::U8 => bytes.iter().map(|&b| b as i64).collect(),
        Dtype::I8 => bytes.iter().map(|&b| b as i8 as i64).collect(),
        Dtype::I16 => bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        Dtype::U16 => bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        Dtype::U32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::U64 => bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        _ => return None,
    })
}
