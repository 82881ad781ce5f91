//! Minimal `.npz` reader: a zip of `.npy` arrays (little-endian numeric dtypes, C order).

use super::dataset::RawTensor;
use crate::error::{Error, Result};
use safetensors::Dtype;
use std::collections::HashMap;
use std::io::Read;

/// The most an npz data set may inflate to, over all its arrays (checked against the sizes the
/// archive declares before anything is inflated, and enforced while inflating).
pub const MAX_NPZ_BYTES: u64 = 2 << 30;

/// Reads every array of an npz archive by name (without the `.npy` suffix).
pub(super) fn read_npz(label: &str, bytes: &[u8]) -> Result<HashMap<String, RawTensor>> {
    let bad = |msg: String| Error::format(label, msg);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a valid npz (zip) archive: {e}")))?;
    let mut declared_total = 0u64;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| bad(format!("npz entry {i}: {e}")))?;
        declared_total = declared_total.saturating_add(entry.size());
    }
    if declared_total > MAX_NPZ_BYTES {
        return Err(bad(format!(
            "the npz archive declares {declared_total} bytes of arrays, more than the {MAX_NPZ_BYTES} bytes a data set may inflate to"
        )));
    }
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("npz entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("npz entry {i}: {e}")))?
            .trim_end_matches(".npy")
            .to_string();
        let declared = entry.size();
        // Never trust the declared size while inflating: read at most one byte more.
        let mut data = Vec::with_capacity(declared.min(1 << 26) as usize);
        entry
            .take(declared.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("npz entry '{name}': {e}")))?;
        if data.len() as u64 != declared {
            return Err(bad(format!(
                "npz entry '{name}' inflates to {}{} bytes, not the {declared} it declares",
                if data.len() as u64 > declared {
                    "more than "
                } else {
                    ""
                },
                data.len()
            )));
        }
        let t = parse_npy(&data).map_err(|m| bad(format!("npz array '{name}': {m}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

fn parse_npy(data: &[u8]) -> std::result::Result<RawTensor, String> {
    if data.len() < 10 || &data[..6] != b"\x93NUMPY" {
        return Err("not a .npy array".into());
    }
    let (header_len, start) = match data[6] {
        1 => (u16::from_le_bytes([data[8], data[9]]) as usize, 10),
        2 | 3 if data.len() >= 12 => (
            u32::from_le_bytes(data[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = data
        .get(start..start + header_len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "non-UTF-8 .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        Some(
            header[i + key.len() + 2..]
                .trim_start()
                .trim_start_matches(':')
                .trim_start(),
        )
    };
    let descr = field("descr").ok_or("no 'descr' in .npy header")?;
    let descr = descr
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or("");
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = field("shape").ok_or("no 'shape' in .npy header")?;
    let inner = shape_text
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("");
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape '{shape_text}'"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let dtype = match descr {
        "<f4" => Dtype::F32,
        "<f8" => Dtype::F64,
        "<f2" => Dtype::F16,
        "|u1" | "<u1" => Dtype::U8,
        "|i1" | "<i1" => Dtype::I8,
        "<i2" => Dtype::I16,
        "<i4" => Dtype::I32,
        "<i8" => Dtype::I64,
        "<u2" => Dtype::U16,
        "<u4" => Dtype::U32,
        "<u8" => Dtype::U64,
        d => return Err(format!("unsupported dtype '{d}'")),
    };
    let body = &data[start + header_len..];
    let want = shape
        .iter()
        .try_fold(dtype.bitsize() / 8, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    if body.len() < want {
        return Err(format!(
            "truncated: {} bytes of data, shape needs {want}",
            body.len()
        ));
    }
    Ok(RawTensor {
        dtype,
        shape,
        bytes: body[..want].to_vec(),
    })
}
