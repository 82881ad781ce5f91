//! Network layers without weights of their own: Relu, Clip, BatchNorm (folded), Softmax and
//! LayerNorm.

use super::args::{axis, f32s};
use crate::engine::clamp_f32::Clamp;
use crate::engine::tensor::{Data, Tensor};

/// max(x, 0) (NaN stays NaN); I64 too.
pub(super) fn relu(x: &Tensor) -> Result<Tensor, String> {
    let data = match &x.data {
        Data::F32(v) => Data::F32(clamped(v, Clamp::RELU)),
        Data::I64(v) => Data::I64(v.iter().map(|&t| t.max(0)).collect()),
        Data::Q { .. } => return Err("quantized input".into()),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}

/// A copy of `v` clamped (NaN and −0 pass through).
fn clamped(v: &[f32], c: Clamp) -> Vec<f32> {
    let mut v = v.to_vec();
    c.apply(&mut v);
    v
}

/// Relu or Clip (lo ≤ hi) applied to real values in place, exactly as [`relu`] and [`clip`];
/// false (nothing done) for other ops or data.
pub(super) fn clamp_in_place(op: &crate::model::Op, x: &mut Tensor) -> bool {
    let (Data::F32(v), Some(c)) = (&mut x.data, Clamp::of(op)) else {
        return false;
    };
    c.apply(v);
    true
}

/// min(max(x, lo), hi) (NaN stays NaN); for I64 the bounds round inward.
pub(super) fn clip(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor, String> {
    let Some(c) = Clamp::clip(lo, hi) else {
        // ONNX: all outputs are `max` then; keep that.
        return clip(x, hi, hi);
    };
    let data = match &x.data {
        Data::F32(v) => Data::F32(clamped(v, c)),
        Data::I64(v) => {
            let (l, h) = (lo.ceil() as i64, hi.floor() as i64);
            Data::I64(v.iter().map(|&t| t.max(l).min(h)).collect())
        }
        Data::Q { .. } => return Err("quantized input".into()),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}

/// y = x · scale[c] + shift[c] with c the index along axis 1.
pub(super) fn batch_norm(x: &Tensor, scale: &[f32], shift: &[f32]) -> Result<Tensor, String> {
    let v = f32s(x, "the input")?;
    let c = *x.shape.get(1).ok_or("the input has no channel axis")?;
    if scale.len() != c || shift.len() != c {
        return Err(format!(
            "{} channels, {} scales, {} shifts",
            c,
            scale.len(),
            shift.len()
        ));
    }
    let inner: usize = x.shape[2..].iter().product();
    let mut out = Vec::with_capacity(v.len());
    for (i, chunk) in v.chunks(inner.max(1)).enumerate() {
        let ch = i % c.max(1);
        out.extend(chunk.iter().map(|&t| t * scale[ch] + shift[ch]));
    }
    Ok(Tensor::f32(x.shape.clone(), out))
}

/// (outer, len, inner) of `shape` around axis `a`.
fn around(shape: &[usize], a: usize) -> (usize, usize, usize) {
    let outer = shape[..a].iter().product();
    (outer, shape[a], shape[a + 1..].iter().product())
}

/// Softmax along one axis, computed stably (the max is subtracted; in f32).
pub(super) fn softmax(x: &Tensor, ax: i64) -> Result<Tensor, String> {
    let v = f32s(x, "the input")?;
    let a = axis(ax, x.shape.len())?;
    let (outer, len, inner) = around(&x.shape, a);
    let mut out = vec![0f32; v.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            let m = (0..len).map(|k| v[at(k)]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for k in 0..len {
                let e = (v[at(k)] - m).exp();
                out[at(k)] = e;
                sum += e;
            }
            for k in 0..len {
                out[at(k)] /= sum;
            }
        }
    }
    Ok(Tensor::f32(x.shape.clone(), out))
}

/// LayerNorm over the axes [axis, rank): (x − mean) / √(var + ε) · scale + bias, with mean and
/// population variance accumulated in f64; scale and bias hold one value per normalized
/// element (their shapes are not checked beyond that count).
pub(super) fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    ax: i64,
    eps: f32,
) -> Result<Tensor, String> {
    let v = f32s(x, "the input")?;
    let a = axis(ax, x.shape.len())?;
    let len: usize = x.shape[a..].iter().product();
    let g = f32s(scale, "the scale")?;
    let b = bias.map(|t| f32s(t, "the bias")).transpose()?;
    if g.len() != len || b.is_some_and(|b| b.len() != len) {
        return Err(format!(
            "scale/bias do not match the normalized shape {:?}",
            &x.shape[a..]
        ));
    }
    let mut out = Vec::with_capacity(v.len());
    for row in v.chunks(len.max(1)) {
        let mean = row.iter().map(|&t| t as f64).sum::<f64>() / len as f64;
        let var = row.iter().map(|&t| (t as f64 - mean).powi(2)).sum::<f64>() / len as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        out.extend(row.iter().enumerate().map(|(k, &t)| {
            let y = ((t as f64 - mean) * inv) as f32 * g[k];
            b.map_or(y, |b| y + b[k])
        }));
    }
    Ok(Tensor::f32(x.shape.clone(), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() <= tol, "{x} vs {y}");
        }
    }

    #[test]
    fn softmax_matches_f64_on_every_axis() {
        let vals: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.9 - 3.0).collect();
        let x = Tensor::f32(vec![2, 3, 4], vals.clone());
        for ax in [0i64, 1, 2, -1] {
            let y = softmax(&x, ax).unwrap();
            let a = if ax < 0 { 2 } else { ax as usize };
            let st = [12, 4, 1];
            let mut want = vec![0f64; 24];
            for (i, w) in want.iter_mut().enumerate() {
                let pos = (i / st[a]) % x.shape[a];
                let base = i - pos * st[a];
                let den: f64 = (0..x.shape[a])
                    .map(|k| (vals[base + k * st[a]] as f64).exp())
                    .sum();
                *w = (vals[i] as f64).exp() / den;
            }
            close(y.as_f32().unwrap(), &want, 1e-6);
        }
        // Large inputs do not overflow.
        let y = softmax(&Tensor::f32(vec![2], vec![1000.0, 1000.0]), 0).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[0.5, 0.5]);
        assert!(softmax(&x, 3).is_err());
    }

    #[test]
    fn layer_norm_matches_f64() {
        let vals: Vec<f32> = (0..12).map(|i| (i * i) as f32 * 0.3 - 2.0).collect();
        let x = Tensor::f32(vec![2, 2, 3], vals.clone());
        let g = Tensor::f32(vec![2, 3], vec![1.0, 2.0, 0.5, -1.0, 1.5, 1.0]);
        let b = Tensor::f32(vec![2, 3], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        let y = layer_norm(&x, &g, Some(&b), 1, 1e-5).unwrap();
        let mut want = Vec::new();
        for row in vals.chunks(6) {
            let m = row.iter().map(|&t| t as f64).sum::<f64>() / 6.0;
            let var = row.iter().map(|&t| (t as f64 - m).powi(2)).sum::<f64>() / 6.0;
            for (k, &t) in row.iter().enumerate() {
                let gk = g.as_f32().unwrap()[k] as f64;
                let bk = b.as_f32().unwrap()[k] as f64;
                want.push((t as f64 - m) / (var + 1e-5).sqrt() * gk + bk);
            }
        }
        close(y.as_f32().unwrap(), &want, 1e-5);
        let g1 = Tensor::f32(vec![3], vec![1.0; 3]);
        assert!(layer_norm(&x, &g1, None, 1, 1e-5).is_err());
        assert!(layer_norm(&x, &g1, None, -1, 1e-5).is_ok());
    }

    #[test]
    fn in_place_relu_and_clip_give_the_same_values() {
        use crate::model::Op;
        let vals = vec![
            -2.5,
            -0.0,
            0.0,
            1.5,
            7.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let x = Tensor::f32(vec![2, 4], vals);
        for op in [
            Op::Relu,
            Op::Clip { min: 0.0, max: 6.0 },
            Op::Clip {
                min: -1.0,
                max: 1.0,
            },
        ] {
            let want = match op {
                Op::Relu => relu(&x).unwrap(),
                Op::Clip { min, max } => clip(&x, min, max).unwrap(),
                _ => unreachable!(),
            };
            let mut y = x.clone();
            assert!(clamp_in_place(&op, &mut y));
            let bits = |t: &Tensor| {
                t.as_f32()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&y), bits(&want), "{op:?}");
        }
        // Reversed bounds and other ops are left to `eval`.
        let mut y = x.clone();
        assert!(!clamp_in_place(&Op::Clip { min: 2.0, max: 1.0 }, &mut y));
        assert!(!clamp_in_place(&Op::GlobalAvgPool, &mut y));
        assert_eq!(y.shape, x.shape);
    }

    #[test]
    fn relu_clip_batch_norm() {
        let x = Tensor::f32(vec![1, 2, 2], vec![-1.0, 2.0, 7.0, f32::NAN]);
        let y = clip(&x, 0.0, 6.0).unwrap();
        let v = y.as_f32().unwrap();
        assert_eq!(&v[..3], &[0.0, 2.0, 6.0]);
        assert!(v[3].is_nan());
        assert_eq!(relu(&x).unwrap().as_f32().unwrap()[..3], [0.0, 2.0, 7.0]);
        let xi = Tensor::i64(vec![3], vec![-5, 3, 9]);
        assert_eq!(clip(&xi, -1.5, 6.5).unwrap().as_i64().unwrap(), &[-1, 3, 6]);
        let y = batch_norm(&x, &[2.0, -1.0], &[1.0, 0.5]).unwrap();
        assert_eq!(y.as_f32().unwrap()[..3], [-1.0, 5.0, -6.5]);
        assert!(batch_norm(&x, &[1.0], &[0.0]).is_err());
    }
}
