//! ONNX initializers and constants → [`Tensor`]s: every float type to f32, every integer and
//! boolean type to i64, data inline or in an external file beside the model.

use crate::engine::tensor::Tensor;
use half::{bf16, f16};
use onnx_rs::ast::{DataLocation, DataType, TensorProto};
use std::path::Path;

/// Converts an ONNX tensor; `dir` is the model's folder for external data (`None`: refuse it).
pub fn to_tensor(t: &TensorProto<'_>, dir: Option<&Path>) -> Result<Tensor, String> {
    let dims: Vec<usize> = t
        .dims()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("has a negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("has a shape whose size overflows")?;
    let external;
    let raw: Option<&[u8]> = if t.data_location() == DataLocation::External {
        external = read_external(t, dir)?;
        Some(&external)
    } else {
        t.as_raw()
    };
    let tensor = match t.data_type() {
        DataType::Float | DataType::Float16 | DataType::Bfloat16 | DataType::Double => {
            Tensor::f32(dims, floats(t, raw, n)?)
        }
        DataType::Int64
        | DataType::Int32
        | DataType::Int16
        | DataType::Int8
        | DataType::Uint8
        | DataType::Uint16
        | DataType::Uint32
        | DataType::Bool => Tensor::i64(dims, ints(t, raw, n)?),
        DataType::Int4 | DataType::Uint4 => Tensor::i64(dims, nibbles(t, raw, n)?),
        other => {
            return Err(format!(
                "has element type {other:?}, which qscope does not read"
            ));
        }
    };
    Ok(tensor)
}

/// INT4/UINT4 values, packed two per byte with the first in the low nibble.
fn nibbles(t: &TensorProto<'_>, raw: Option<&[u8]>, n: usize) -> Result<Vec<i64>, String> {
    let bytes: Vec<u8> = match raw {
        Some(b) => b.to_vec(),
        None => t
            .as_i32()
            .map(|c| c.iter().map(|&x| x as u8).collect())
            .unwrap_or_default(),
    };
    check_len(bytes.len(), n.div_ceil(2))?;
    let signed = t.data_type() == DataType::Int4;
    Ok((0..n)
        .map(|i| {
            let nib = (bytes[i / 2] >> (4 * (i % 2))) & 0x0f;
            if signed && nib >= 8 {
                nib as i64 - 16
            } else {
                nib as i64
            }
        })
        .collect())
}

/// Bytes per element of an ONNX type stored raw.
fn width(dt: DataType) -> usize {
    match dt {
        DataType::Double | DataType::Int64 | DataType::Uint64 => 8,
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        _ => 1,
    }
}

fn check_len(got: usize, n: usize) -> Result<(), String> {
    if got != n {
        return Err(format!("holds {got} values where its shape needs {n}"));
    }
    Ok(())
}

fn floats(t: &TensorProto<'_>, raw: Option<&[u8]>, n: usize) -> Result<Vec<f32>, String> {
    let dt = t.data_type();
    let v: Vec<f32> = match raw {
        Some(b) => {
            check_len(b.len(), n * width(dt))?;
            match dt {
                DataType::Float => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                DataType::Double => b
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                DataType::Float16 => b
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                _ => b
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            }
        }
        None => match dt {
            DataType::Float => t.as_f32().map(|c| c.to_vec()).unwrap_or_default(),
            DataType::Double => t
                .as_f64()
                .map(|c| c.iter().map(|&x| x as f32).collect())
                .unwrap_or_default(),
            DataType::Float16 => t
                .as_i32()
                .map(|c| {
                    c.iter()
                        .map(|&x| f16::from_bits(x as u16).to_f32())
                        .collect()
                })
                .unwrap_or_default(),
            _ => t
                .as_i32()
                .map(|c| {
                    c.iter()
                        .map(|&x| bf16::from_bits(x as u16).to_f32())
                        .collect()
                })
                .unwrap_or_default(),
        },
    };
    check_len(v.len(), n)?;
    Ok(v)
}

fn ints(t: &TensorProto<'_>, raw: Option<&[u8]>, n: usize) -> Result<Vec<i64>, String> {
    let dt = t.data_type();
    let v: Vec<i64> = match raw {
        Some(b) => {
            check_len(b.len(), n * width(dt))?;
            match dt {
                DataType::Int64 => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                DataType::Int32 => b
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
                DataType::Uint32 => b
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
                DataType::Int16 => b
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
                DataType::Uint16 => b
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
                DataType::Int8 => b.iter().map(|&x| x as i8 as i64).collect(),
                DataType::Bool => b.iter().map(|&x| (x != 0) as i64).collect(),
                _ => b.iter().map(|&x| x as i64).collect(),
            }
        }
        None => match dt {
            DataType::Int64 => t.as_i64().map(|c| c.to_vec()).unwrap_or_default(),
            DataType::Uint32 => t
                .as_u64()
                .map(|c| c.iter().map(|&x| x as i64).collect())
                .unwrap_or_default(),
            _ => t
                .as_i32()
                .map(|c| c.iter().map(|&x| x as i64).collect())
                .unwrap_or_default(),
        },
    };
    check_len(v.len(), n)?;
    Ok(v)
}

/// The bytes of an externally stored tensor, read from the file its `location` names beside
/// the model (never outside that folder).
fn read_external(t: &TensorProto<'_>, dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let dir =
        dir.ok_or("keeps its data in an external file, which a model given as bytes cannot have")?;
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for e in t.external_data() {
        match e.key {
            "location" => location = Some(e.value),
            "offset" => {
                offset = e.value.parse().map_err(|_| {
                    format!(
                        "has a bad external offset '{}'",
                        crate::error::clip(e.value, crate::error::NAME_MAX)
                    )
                })?
            }
            "length" => {
                length = Some(e.value.parse::<u64>().map_err(|_| {
                    format!(
                        "has a bad external length '{}'",
                        crate::error::clip(e.value, crate::error::NAME_MAX)
                    )
                })?)
            }
            _ => {}
        }
    }
    let location = location.ok_or("is external but names no location")?;
    let rel = Path::new(location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "names external data '{}' outside the model's folder",
            crate::error::clip(location, crate::error::NAME_MAX)
        ));
    }
    let path = dir.join(rel);
    let file =
        std::fs::File::open(&path).map_err(|e| format!("external data {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("external data {}: {e}", path.display()))?
        .len();
    let want = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(want).is_none_or(|end| end > size) {
        return Err(format!(
            "external data {}: bytes {offset}..+{want} lie past its end ({size} bytes)",
            path.display()
        ));
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("external data {}: {e}", path.display()))?;
    let mut buf = vec![0u8; want as usize];
    f.read_exact(&mut buf)
        .map_err(|e| format!("external data {}: {e}", path.display()))?;
    Ok(buf)
}
