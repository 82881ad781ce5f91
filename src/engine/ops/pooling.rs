//! MaxPool and AveragePool over NCHW tensors, on the shared padded pooling loop.

use super::Limits;
use super::args::{check_out, f32s};
use crate::engine::pool::{PoolGeom, max_pool_2x2, pool_padded};
use crate::engine::tensor::Tensor;
use crate::model::op::Op;

/// A pooling's window, stride, padding (top, left, bottom, right) and rounding.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    /// (kh, kw).
    pub kernel: (usize, usize),
    /// (sh, sw).
    pub stride: (usize, usize),
    /// (top, left, bottom, right).
    pub padding: [usize; 4],
    /// Round the output size up.
    pub ceil_mode: bool,
}

/// Runs a MaxPool2d or AvgPool2d op on `x`.
pub(super) fn pool(op: &Op, x: &Tensor, limits: &Limits) -> Result<Tensor, String> {
    match *op {
        Op::MaxPool2d {
            kernel,
            stride,
            padding,
            ceil_mode,
        } => max_pool(
            x,
            &Window {
                kernel,
                stride,
                padding,
                ceil_mode,
            },
            limits,
        ),
        Op::AvgPool2d {
            kernel,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
        } => {
            let w = Window {
                kernel,
                stride,
                padding,
                ceil_mode,
            };
            avg_pool(x, &w, count_include_pad, limits)
        }
        _ => Err("not a pooling op".into()),
    }
}

/// The geometry of pooling `x` (rank 4) and its output shape, checked against the limits.
fn geometry(x: &Tensor, w: &Window, limits: &Limits) -> Result<(PoolGeom, Vec<usize>), String> {
    let &[n, c, h, wd] = x.shape.as_slice() else {
        return Err(format!("input {:?} is not NCHW", x.shape));
    };
    let g = PoolGeom::new(&[c, h, wd], w.kernel, w.stride, w.padding, w.ceil_mode)?;
    let shape = vec![n, c, g.oh, g.ow];
    check_out(&shape, limits)?;
    Ok((g, shape))
}

/// Max over each window (padding never wins). Quantized input is pooled on its codes (the
/// max of codes is the code of the max: dequantizing is increasing) and keeps its qparams.
pub(super) fn max_pool(x: &Tensor, w: &Window, limits: &Limits) -> Result<Tensor, String> {
    if let Some((q, qp)) = x.as_q() {
        let (g, shape) = geometry(x, w, limits)?;
        let y = max_pool_2x2(q, shape[0], &g, i8::max)
            .unwrap_or_else(|| pool_padded(q, shape[0], &g, i8::MIN, i8::max, |m, _, _| m));
        return Ok(Tensor::q(shape, y, qp));
    }
    let v = f32s(x, "the input")?;
    let (g, shape) = geometry(x, w, limits)?;
    let y = max_pool_2x2(v, shape[0], &g, f32::max)
        .unwrap_or_else(|| pool_padded(v, shape[0], &g, f32::NEG_INFINITY, f32::max, |m, _, _| m));
    Ok(Tensor::f32(shape, y))
}

/// Mean over each window: over its input taps, or with `count_include_pad` over its taps inside
/// the padded input (ONNX Runtime's divisor when a ceil-mode window overhangs the padding).
pub(super) fn avg_pool(
    x: &Tensor,
    w: &Window,
    count_include_pad: bool,
    limits: &Limits,
) -> Result<Tensor, String> {
    let v = f32s(x, "the input")?;
    let (g, shape) = geometry(x, w, limits)?;
    let y = pool_padded(
        v,
        shape[0],
        &g,
        0f32,
        |a, t| a + t,
        |s, taps, padded| s / (if count_include_pad { padded } else { taps }) as f32,
    );
    Ok(Tensor::f32(shape, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Limits = Limits { max_elems: 1 << 20 };

    /// Direct loops over padded coordinates: returns (max, sum, taps, padded taps) per window,
    /// using the ONNX Runtime rules written independently of `pool_padded`.
    fn reference(
        x: &[f32],
        h: usize,
        wd: usize,
        w: &Window,
        oh: usize,
        ow: usize,
    ) -> Vec<(f32, f32, usize, usize)> {
        let (pt, pl, pb, pr) = (
            w.padding[0] as i64,
            w.padding[1] as i64,
            w.padding[2] as i64,
            w.padding[3] as i64,
        );
        let mut out = Vec::new();
        for oy in 0..oh as i64 {
            for ox in 0..ow as i64 {
                let (mut m, mut s, mut taps, mut padded) = (f32::NEG_INFINITY, 0f32, 0, 0);
                for ky in 0..w.kernel.0 as i64 {
                    for kx in 0..w.kernel.1 as i64 {
                        let iy = oy * w.stride.0 as i64 + ky - pt;
                        let ix = ox * w.stride.1 as i64 + kx - pl;
                        if iy < h as i64 + pb && ix < wd as i64 + pr {
                            padded += 1;
                        }
                        if (0..h as i64).contains(&iy) && (0..wd as i64).contains(&ix) {
                            let t = x[iy as usize * wd + ix as usize];
                            m = m.max(t);
                            s += t;
                            taps += 1;
                        }
                    }
                }
                out.push((m, s, taps, padded));
            }
        }
        out
    }

    #[test]
    fn pools_match_direct_loops_with_asymmetric_padding_and_ceil_mode() {
        let (h, wd) = (5, 6);
        let vals: Vec<f32> = (0..h * wd).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
        let x = Tensor::f32(vec![1, 1, h, wd], vals.clone());
        for (kernel, stride, padding, ceil_mode) in [
            ((3, 3), (2, 2), [1, 0, 2, 1], true),
            ((2, 3), (2, 3), [0, 1, 1, 2], true),
            ((3, 2), (1, 2), [2, 1, 0, 0], false),
            ((2, 2), (2, 2), [1, 1, 1, 1], true),
            // The 2×2 fast paths (reals and codes), odd height dropped.
            ((2, 2), (2, 2), [0, 0, 0, 0], false),
        ] {
            let w = Window {
                kernel,
                stride,
                padding,
                ceil_mode,
            };
            let mx = max_pool(&x, &w, &BIG).unwrap();
            let (oh, ow) = (mx.shape[2], mx.shape[3]);
            // The same values as codes: pooled on the codes, qparams kept.
            let qp = crate::quant::QParams {
                scale: 0.25,
                zero_point: 3,
                bits: 8,
                scheme: crate::quant::Scheme::Asymmetric,
            };
            let codes = vals.iter().map(|&v| v as i8).collect();
            let mq = max_pool(&Tensor::q(x.shape.clone(), codes, qp), &w, &BIG).unwrap();
            assert_eq!(
                (mq.shape.clone(), mq.as_q().unwrap().1),
                (mx.shape.clone(), qp)
            );
            let r = reference(&vals, h, wd, &w, oh, ow);
            let avg_in = avg_pool(&x, &w, false, &BIG).unwrap();
            let avg_pad = avg_pool(&x, &w, true, &BIG).unwrap();
            for (i, &(m, s, taps, padded)) in r.iter().enumerate() {
                assert!(taps > 0);
                assert_eq!(mx.as_f32().unwrap()[i], m);
                assert_eq!(mq.as_q().unwrap().0[i], m as i8);
                assert_eq!(avg_in.as_f32().unwrap()[i], s / taps as f32);
                assert_eq!(avg_pad.as_f32().unwrap()[i], s / padded as f32);
            }
        }
    }

    #[test]
    fn ceil_mode_output_sizes() {
        let x = Tensor::f32(vec![1, 1, 5, 5], vec![1.0; 25]);
        // 5 + 1 + 1 − 2 = 5 → ⌈5/2⌉ + 1 = 4, but the 4th window would start at padded 6 ≥ 5 + 1:
        // dropped (PyTorch and ONNX give 3).
        let w = Window {
            kernel: (2, 2),
            stride: (2, 2),
            padding: [1, 1, 1, 1],
            ceil_mode: true,
        };
        assert_eq!(max_pool(&x, &w, &BIG).unwrap().shape, vec![1, 1, 3, 3]);
        // ONNX spec example: 4x4 input, kernel 3, stride 2, ceil → 2x2 of [11, 12, 15, 16].
        let x = Tensor::f32(vec![1, 1, 4, 4], (1..=16).map(|v| v as f32).collect());
        let w = Window {
            kernel: (3, 3),
            stride: (2, 2),
            padding: [0; 4],
            ceil_mode: true,
        };
        let y = max_pool(&x, &w, &BIG).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[11.0, 12.0, 15.0, 16.0]);
        // Same with AveragePool, ceil: [6, 7.5, 12, 13.5].
        let y = avg_pool(&x, &w, false, &BIG).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[6.0, 7.5, 12.0, 13.5]);
        let w = Window {
            kernel: (3, 3),
            stride: (2, 2),
            padding: [0; 4],
            ceil_mode: false,
        };
        assert_eq!(max_pool(&x, &w, &BIG).unwrap().as_f32().unwrap(), &[11.0]);
        let small = Limits { max_elems: 3 };
        assert!(max_pool(&x, &w, &small).is_ok());
        let w = Window {
            kernel: (1, 1),
            stride: (1, 1),
            padding: [0; 4],
            ceil_mode: false,
        };
        assert!(
            max_pool(&x, &w, &small)
                .unwrap_err()
                .contains("16 elements")
        );
        let w = Window {
            kernel: (2, 2),
            stride: (1, 1),
            padding: [2, 0, 0, 0],
            ceil_mode: false,
        };
        assert!(max_pool(&x, &w, &BIG).is_err());
    }
}
