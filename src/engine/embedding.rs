//! Embedding lookups (an ONNX Gather along axis 0 of a constant table at integer indices): the
//! f32 version, and the integer one that picks rows of int8 codes and requantizes each from its
//! row's scale to the output point's qparams with a fixed-point multiplier.

use super::float::check_size;
use super::tensor::{Data, Tensor};
use crate::quant::weights::QWeights;
use crate::quant::{FixedMultiplier, QParams};
use ndarray::Array2;

/// The table rows at the indices of `ind` (negative ones count from the end); an error names an
/// index out of range or indices that are not integers.
pub fn row_indices(ind: &Tensor, rows: usize) -> Result<Vec<usize>, String> {
    let idx: Vec<i64> = match &ind.data {
        Data::I64(v) => v.clone(),
        // Reals that hold integers (a Cast-less float id input) are accepted as such.
        Data::F32(v) if v.iter().all(|x| x.fract() == 0.0) => v.iter().map(|&x| x as i64).collect(),
        _ => return Err("expects integer indices".into()),
    };
    idx.iter()
        .map(|&i| {
            let j = if i < 0 { i + rows as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < rows)
                .ok_or_else(|| format!("index {i} is out of range for a table of {rows} rows"))
        })
        .collect()
}

/// The output shape of a lookup: the indices' shape ++ [dim].
fn out_shape(ind: &Tensor, dim: usize) -> Vec<usize> {
    let mut s = ind.shape.clone();
    s.push(dim);
    s
}

/// The f32 lookup: table rows at `ind`, shape `indices ++ [dim]`; `limit` bounds the elements per
/// sample.
pub fn lookup_f32(table: &Array2<f32>, ind: &Tensor, limit: usize) -> Result<Tensor, String> {
    let (rows, dim) = table.dim();
    let idx = row_indices(ind, rows)?;
    let n = ind.shape.first().copied().unwrap_or(1).max(1);
    check_size(idx.len() / n * dim, limit)?;
    let t = table.as_slice().ok_or("table not in standard layout")?;
    let mut y = Vec::with_capacity(idx.len() * dim);
    for r in idx {
        y.extend_from_slice(&t[r * dim..(r + 1) * dim]);
    }
    Ok(Tensor::f32(out_shape(ind, dim), y))
}

/// An embedding in integers: y = clamp(z_o + M_(r,g) · (q − z_(r,g))) with
/// M_(r,g) = s_(r,g) / s_o per row (and group) of the quantized table.
#[derive(Debug)]
pub struct IntEmbedding {
    rows: usize,
    dim: usize,
    group_size: usize,
    groups: usize,
    /// The table's integer codes, row-major.
    q: Vec<i8>,
    /// Per (row, group): the weight zero point.
    zp: Vec<i32>,
    /// Per (row, group): s_(r,g) / s_o.
    mult: Vec<FixedMultiplier>,
    /// The output qparams.
    pub out_q: QParams,
    /// Integer clamp bounds (the output range, narrowed by a fused Relu/ReLU6).
    bounds: (i32, i32),
}

impl IntEmbedding {
    /// Prepares the lookup from the quantized table, the output point's qparams and the integer
    /// bounds its codes are clamped to (qmin..qmax, or a fused Relu's).
    pub fn new(w: &QWeights, out_q: QParams, bounds: (i32, i32)) -> Self {
        let (groups, gs) = (w.groups(), w.group_size());
        let mut zp = Vec::with_capacity(w.rows * groups);
        let mut mult = Vec::with_capacity(w.rows * groups);
        for r in 0..w.rows {
            for g in 0..groups {
                let p = w.param(r, g);
                zp.push(p.zero_point);
                mult.push(FixedMultiplier::from_f64(
                    p.scale as f64 / out_q.scale as f64,
                ));
            }
        }
        IntEmbedding {
            rows: w.rows,
            dim: w.cols,
            group_size: gs.max(1),
            groups,
            q: w.q.clone(),
            zp,
            mult,
            out_q,
            bounds,
        }
    }

    /// Looks up the rows at `ind` and requantizes them to the output qparams.
    pub fn run(&self, ind: &Tensor, limit: usize) -> Result<Tensor, String> {
        let idx = row_indices(ind, self.rows)?;
        let n = ind.shape.first().copied().unwrap_or(1).max(1);
        check_size(idx.len() / n * self.dim, limit)?;
        let (lo, hi) = self.bounds;
        let zo = self.out_q.zero_point;
        let mut y = Vec::with_capacity(idx.len() * self.dim);
        for r in idx {
            let row = &self.q[r * self.dim..(r + 1) * self.dim];
            for (c, &v) in row.iter().enumerate() {
                let k = r * self.groups + c / self.group_size;
                // One rounding (the two of the i32 form are coarse for codes this small).
                let m = self.mult[k].apply_i64((v as i32 - self.zp[k]) as i64);
                y.push((zo as i64 + m).clamp(lo as i64, hi as i64) as i8);
            }
        }
        Ok(Tensor::q(out_shape(ind, self.dim), y, self.out_q))
    }
}
