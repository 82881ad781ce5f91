//! Integer means: GlobalAveragePool, AveragePool and ReduceMean over H·W of NCHW codes.
//! Σ(x − z_x) over the window in i32, then one fixed-point multiplier s_x / (n · s_o) applied
//! to the exact product (the division by n folded in, rounded once, half away from zero).

use crate::engine::pool::{PoolGeom, pool_padded};
use crate::engine::tensor::Tensor;
use crate::quant::{FixedMultiplier, QParams};

/// The requantization of window sums: per tap count n, s_x / (n · s_o).
#[derive(Debug, Clone)]
pub struct MeanRequant {
    mult: Vec<FixedMultiplier>,
    zo: i32,
    lo: i32,
    hi: i32,
}

impl MeanRequant {
    /// For windows of up to `max_taps` taps, from `qi` to `qo`.
    pub fn new(qi: QParams, qo: QParams, max_taps: usize) -> Self {
        let ratio = qi.scale as f64 / qo.scale as f64;
        MeanRequant {
            mult: (0..=max_taps)
                .map(|n| FixedMultiplier::from_f64(ratio / n.max(1) as f64))
                .collect(),
            zo: qo.zero_point,
            lo: qo.qmin(),
            hi: qo.qmax(),
        }
    }

    /// The output code of a window of `n` taps whose centred sum is `sum`.
    #[inline]
    pub fn apply(&self, sum: i64, n: usize) -> i8 {
        let m = self.mult[n.min(self.mult.len() - 1)];
        (self.zo as i64 + m.apply_i64(sum)).clamp(self.lo as i64, self.hi as i64) as i8
    }
}

/// Mean over the trailing `plane` values of each of `rows` rows (GlobalAveragePool, ReduceMean
/// over H·W).
pub fn plane_mean(x: &[i8], plane: usize, qi: QParams, qo: QParams) -> Vec<i8> {
    let rq = MeanRequant::new(qi, qo, plane);
    let z = qi.zero_point as i64;
    x.chunks(plane.max(1))
        .map(|p| rq.apply(p.iter().map(|&v| v as i64 - z).sum(), plane))
        .collect()
}

/// GlobalAveragePool (or ReduceMean over axes 2, 3 with keepdims) of an [N, C, H, W] quantized
/// tensor into `qo`; `keep` keeps the reduced axes as 1.
pub fn global_mean(x: &Tensor, qo: QParams, keep: bool) -> Result<Tensor, String> {
    let (q, qi) = x.as_q().ok_or("expects quantized input")?;
    let &[n, c, h, w] = x.shape.as_slice() else {
        return Err(format!("expects an [N, C, H, W] input, got {:?}", x.shape));
    };
    if h * w == 0 {
        return Err("has an empty plane".into());
    }
    let y = plane_mean(q, h * w, qi, qo);
    let shape = if keep { vec![n, c, 1, 1] } else { vec![n, c] };
    Ok(Tensor::q(shape, y, qo))
}

/// AveragePool of an [N, C, H, W] quantized tensor with geometry `g` into `qo`.
pub fn avg_pool(
    x: &Tensor,
    g: &PoolGeom,
    count_include_pad: bool,
    qo: QParams,
) -> Result<Tensor, String> {
    let (q, qi) = x.as_q().ok_or("expects quantized input")?;
    let n = x.shape.first().copied().unwrap_or(0);
    if q.len() < n * g.c * g.h * g.w {
        return Err(format!("input {:?} does not fit the pool", x.shape));
    }
    let rq = MeanRequant::new(qi, qo, g.kernel.0 * g.kernel.1);
    let z = qi.zero_point as i64;
    // Padded taps count as real zeros: they add nothing to Σ(x − z_x).
    let y = pool_padded(
        q,
        n,
        g,
        0i64,
        |a, v| a + v as i64 - z,
        |s, taps, padded| rq.apply(s, if count_include_pad { padded } else { taps }),
    );
    Ok(Tensor::q(vec![n, g.c, g.oh, g.ow], y, qo))
}

/// The plain reference of one window: the f64 mean of the dequantized codes, quantized to `qo`.
pub fn mean_reference(codes: &[i8], n: usize, qi: QParams, qo: QParams) -> i8 {
    let s: f64 = codes.iter().map(|&v| qi.dequantize(v as i32) as f64).sum();
    let q = (s / n as f64 / qo.scale as f64).round() + qo.zero_point as f64;
    q.clamp(qo.qmin() as f64, qo.qmax() as f64) as i8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::{Limits, eval};
    use crate::model::Op;
    use crate::quant::{ClipRange, Scheme};

    fn qp(lo: f32, hi: f32) -> QParams {
        QParams::from_range(ClipRange::new(lo, hi), 8, Scheme::Asymmetric)
    }

    /// The float op on the dequantized input, quantized to `qo` (fake quantization).
    fn fake_quant(op: &Op, x: &Tensor, qo: QParams) -> Vec<i8> {
        let lim = Limits { max_elems: 1 << 20 };
        let y = eval(op, &[Some(&x.clone().dequantized())], &lim).unwrap();
        y.quantize(qo).as_q().unwrap().0.to_vec()
    }

    fn close(got: &Tensor, want: &[i8]) {
        let (g, _) = got.as_q().unwrap();
        assert_eq!(g.len(), want.len());
        for (a, b) in g.iter().zip(want) {
            assert!((*a as i32 - *b as i32).abs() <= 1, "{a} vs {b}");
        }
    }

    #[test]
    fn global_and_window_means_match_fake_quant() {
        let (qi, qo) = (qp(-1.0, 5.0), qp(0.0, 3.0));
        let codes: Vec<i8> = (0..2 * 3 * 5 * 6)
            .map(|i| ((i * 37) % 256) as u8 as i8)
            .collect();
        let x = Tensor::q(vec![2, 3, 5, 6], codes.clone(), qi);
        close(
            &global_mean(&x, qo, true).unwrap(),
            &fake_quant(&Op::GlobalAvgPool, &x, qo),
        );
        for (pad, include) in [([0; 4], false), ([1, 1, 1, 1], true), ([1, 0, 1, 1], false)] {
            let op = Op::AvgPool2d {
                kernel: (3, 2),
                stride: (2, 2),
                padding: pad,
                ceil_mode: true,
                count_include_pad: include,
            };
            let g = PoolGeom::new(&[3, 5, 6], (3, 2), (2, 2), pad, true).unwrap();
            close(
                &avg_pool(&x, &g, include, qo).unwrap(),
                &fake_quant(&op, &x, qo),
            );
        }
        let plane = &codes[..30];
        let want = mean_reference(plane, 30, qi, qo);
        assert_eq!(plane_mean(plane, 30, qi, qo)[0], want);
        assert!(global_mean(&Tensor::q(vec![2, 3], vec![0; 6], qi), qo, true).is_err());
    }
}
