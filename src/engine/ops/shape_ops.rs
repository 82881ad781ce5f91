//! Ops that change only the shape (Reshape, Flatten, Squeeze, Unsqueeze) or read it (Shape),
//! and Cast.

use super::Limits;
use super::args::{axes, check_out, count, dims, i64s, len};
use crate::engine::tensor::{Data, Tensor};
use crate::model::op::DType;

/// `x` with the same data under `shape`, which must hold as many elements.
fn with_shape(x: &Tensor, shape: Vec<usize>) -> Result<Tensor, String> {
    let n = count(&shape)?;
    if n != len(x) {
        return Err(format!(
            "cannot view {:?} ({} elements) as {shape:?} ({n})",
            x.shape,
            len(x)
        ));
    }
    Ok(Tensor {
        shape,
        data: x.data.clone(),
    })
}

/// Reshape to the dims of `spec` (I64): 0 copies the input dim at that position (unless
/// `allowzero`), one −1 is inferred.
pub(super) fn reshape(
    x: &Tensor,
    spec: &Tensor,
    allowzero: bool,
    limits: &Limits,
) -> Result<Tensor, String> {
    let want = i64s(spec, "the shape")?;
    if allowzero && want.contains(&0) && want.contains(&-1) {
        return Err(format!("shape {want:?} has both 0 and -1 with allowzero"));
    }
    let mut infer = None;
    let mut shape = Vec::with_capacity(want.len());
    for (i, &d) in want.iter().enumerate() {
        shape.push(match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            -1 => return Err(format!("shape {want:?} has more than one -1")),
            0 if !allowzero => *x
                .shape
                .get(i)
                .ok_or_else(|| format!("shape {want:?} copies dim {i} of {:?}", x.shape))?,
            d => usize::try_from(d).map_err(|_| format!("invalid dim {d} in {want:?}"))?,
        });
    }
    if let Some(i) = infer {
        let known = count(&shape)?;
        let total = len(x);
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot infer the -1 of {want:?} for {:?}", x.shape));
        }
        shape[i] = total / known;
    }
    check_out(&shape, limits)?;
    with_shape(x, shape)
}

/// Flatten to [d0·…·d(axis−1), d(axis)·…]; `axis` in [−rank, rank].
pub(super) fn flatten(x: &Tensor, ax: i64) -> Result<Tensor, String> {
    let r = x.shape.len() as i64;
    if ax < -r || ax > r {
        return Err(format!("axis {ax} is out of range for rank {r}"));
    }
    let a = (if ax < 0 { ax + r } else { ax }) as usize;
    let shape = vec![count(&x.shape[..a])?, count(&x.shape[a..])?];
    with_shape(x, shape)
}

/// Drop the listed axes (each of size 1), or all axes of size 1 when `list` is `None` or
/// empty (an empty axes input counts as absent, as in ONNX Runtime).
pub(super) fn squeeze(x: &Tensor, list: Option<&[i64]>) -> Result<Tensor, String> {
    let drop = match list {
        Some(l) if !l.is_empty() => axes(l, x.shape.len())?,
        _ => (0..x.shape.len()).filter(|&d| x.shape[d] == 1).collect(),
    };
    if let Some(&d) = drop.iter().find(|&&d| x.shape[d] != 1) {
        return Err(format!("axis {d} of {:?} is not 1", x.shape));
    }
    let shape = (0..x.shape.len())
        .filter(|d| !drop.contains(d))
        .map(|d| x.shape[d])
        .collect();
    with_shape(x, shape)
}

/// Insert axes of size 1 at `list` (axes of the output).
pub(super) fn unsqueeze(x: &Tensor, list: &[i64]) -> Result<Tensor, String> {
    let rank = x.shape.len() + list.len();
    let new = axes(list, rank)?;
    let mut rest = x.shape.iter();
    let shape = (0..rank)
        .map(|d| {
            if new.contains(&d) {
                1
            } else {
                rest.next().copied().unwrap_or(1)
            }
        })
        .collect();
    with_shape(x, shape)
}

/// The dims [start, end) of the shape of `x` as a 1-D I64 tensor (negative bounds count from
/// the end; both are clamped to [0, rank]).
pub(super) fn shape_of(x: &Tensor, start: i64, end: Option<i64>) -> Tensor {
    let r = x.shape.len() as i64;
    let clamp = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
    let (s, e) = (clamp(start), clamp(end.unwrap_or(r)));
    let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
    Tensor::i64(vec![dims.len()], dims)
}

/// Convert to `to`: I64→F32 exactly as `as`, F32→I64 truncating toward zero (saturating; NaN
/// gives 0), to Bool as 0/1 (nonzero, NaN included, is 1).
pub(super) fn cast(x: &Tensor, to: DType) -> Result<Tensor, String> {
    let data = match (&x.data, to) {
        (Data::F32(v), DType::F32) => Data::F32(v.clone()),
        (Data::I64(v), DType::F32) => Data::F32(v.iter().map(|&t| t as f32).collect()),
        (Data::F32(v), DType::I64) => Data::I64(v.iter().map(|&t| t as i64).collect()),
        (Data::I64(v), DType::I64) => Data::I64(v.clone()),
        (Data::F32(v), DType::Bool) => Data::I64(v.iter().map(|&t| (t != 0.0) as i64).collect()),
        (Data::I64(v), DType::Bool) => Data::I64(v.iter().map(|&t| (t != 0) as i64).collect()),
        (Data::Q { .. }, _) => return Err("quantized input".into()),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}

/// A shape tensor's values as dims (used by Expand and ConstantOfShape).
pub(super) fn shape_input(t: &Tensor) -> Result<Vec<usize>, String> {
    if t.shape.len() > 1 {
        return Err(format!("the shape input must be 1-D, is {:?}", t.shape));
    }
    dims(i64s(t, "the shape")?)
}
