//! Elementwise ops as 256-entry lookup tables from input to output qparams: entry c is the
//! float op (the reference engine's own) on s_x·(c − z_x), quantized to the output point, so
//! the kernel equals fake quantization exactly by construction. Concat's requantization of an
//! input to the output's qparams is the same table with the identity.

use crate::engine::ops::{Limits, eval};
use crate::engine::tensor::Tensor;
use crate::model::Op;
use crate::quant::QParams;

/// A table from the 256 codes of `qi` to codes of `qo`.
#[derive(Debug, Clone)]
pub struct Lut {
    table: [i8; 256],
    /// The output qparams.
    pub qo: QParams,
}

impl Lut {
    /// The table of `op` (an elementwise op of one input; `None`: the identity) from `qi` to
    /// `qo`, computed with the float reference op.
    pub fn new(op: Option<&Op>, qi: QParams, qo: QParams) -> Result<Self, String> {
        match op {
            Some(op) => Self::from_fn(|x| eval(op, &[Some(x)], &Limits { max_elems: 256 }), qi, qo),
            None => Self::from_fn(|x| Ok(x.clone()), qi, qo),
        }
    }

    /// The table of an elementwise function `f` of real tensors (the float reference of a node
    /// with its constant operands bound) from `qi` to `qo`.
    pub fn from_fn(
        f: impl Fn(&Tensor) -> Result<Tensor, String>,
        qi: QParams,
        qo: QParams,
    ) -> Result<Self, String> {
        let x = Tensor::f32(vec![256], (-128..=127).map(|c| qi.dequantize(c)).collect());
        let y = f(&x)?;
        if y.len() != 256 {
            return Err("is not elementwise".into());
        }
        let mut table = [0i8; 256];
        qo.quantize_into(y.as_f32().ok_or("did not return reals")?, &mut table);
        Ok(Lut { table, qo })
    }

    /// The code of `c`.
    #[inline]
    pub fn get(&self, c: i8) -> i8 {
        self.table[(c as i32 + 128) as usize]
    }

    /// The table applied to a quantized tensor.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor, String> {
        let (q, _) = x.as_q().ok_or("expects quantized input")?;
        Ok(Tensor::q(
            x.shape.clone(),
            q.iter().map(|&c| self.get(c)).collect(),
            self.qo,
        ))
    }
}

/// The plain reference of one code: dequantize, the float op, quantize.
pub fn lut_reference(op: &Op, c: i8, qi: QParams, qo: QParams) -> i8 {
    let x = Tensor::f32(vec![1], vec![qi.dequantize(c as i32)]);
    let y = eval(op, &[Some(&x)], &Limits { max_elems: 1 }).expect("elementwise");
    qo.quantize(y.as_f32().expect("reals")[0]) as i8
}

/// Concat of quantized tensors (and real constants) into `qo`: each input requantized by its
/// table (skipped when its qparams already are `qo`), then joined as codes.
pub fn concat(op: &Op, ins: &[Option<&Tensor>], qo: QParams) -> Result<Tensor, String> {
    let mut codes = Vec::with_capacity(ins.len());
    for t in ins {
        let t = t.ok_or("has an absent input")?;
        let q = match t.as_q() {
            Some((_, qp)) if qp == qo => t.clone(),
            Some((_, qp)) => Lut::new(None, qp, qo)?.apply(t)?,
            None if t.as_f32().is_some() => t.quantize(qo),
            None => return Err("joins a non-real input".into()),
        };
        let (c, _) = q.as_q().expect("quantized");
        codes.push(Tensor::f32(
            q.shape.clone(),
            c.iter().map(|&v| v as f32).collect(),
        ));
    }
    let refs: Vec<Option<&Tensor>> = codes.iter().map(Some).collect();
    let y = eval(
        op,
        &refs,
        &Limits {
            max_elems: usize::MAX,
        },
    )?;
    let data = y.as_f32().ok_or("did not return codes")?;
    Ok(Tensor::q(
        y.shape.clone(),
        data.iter().map(|&v| v as i8).collect(),
        qo,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnaryOp;
    use crate::quant::{ClipRange, Scheme};

    #[test]
    fn tables_equal_fake_quant_on_every_code() {
        let qi = QParams::from_range(ClipRange::new(-6.0, 5.0), 8, Scheme::Asymmetric);
        let qo = QParams::from_range(ClipRange::new(-1.0, 5.0), 8, Scheme::Asymmetric);
        for u in [
            UnaryOp::Sigmoid,
            UnaryOp::Tanh,
            UnaryOp::HardSwish,
            UnaryOp::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
            UnaryOp::Gelu { tanh: false },
            UnaryOp::Gelu { tanh: true },
            UnaryOp::Silu,
            UnaryOp::Erf,
        ] {
            let op = Op::Unary(u);
            let lut = Lut::new(Some(&op), qi, qo).unwrap();
            for c in -128..=127i8 {
                assert_eq!(lut.get(c), lut_reference(&op, c, qi, qo), "{u:?} {c}");
            }
        }
    }

    #[test]
    fn concat_requantizes_each_input_to_the_output() {
        let q1 = QParams::from_range(ClipRange::new(-1.0, 1.0), 8, Scheme::Asymmetric);
        let qo = QParams::from_range(ClipRange::new(-2.0, 3.0), 8, Scheme::Asymmetric);
        let a = Tensor::q(vec![1, 2, 2], vec![-128, -1, 0, 127], q1);
        let b = Tensor::q(vec![1, 1, 2], vec![5, -7], qo);
        let c = Tensor::f32(vec![1, 1, 2], vec![0.5, -3.0]);
        let op = Op::Concat { axis: 1 };
        let y = concat(&op, &[Some(&a), Some(&b), Some(&c)], qo).unwrap();
        assert_eq!(y.shape, vec![1, 4, 2]);
        let (q, _) = y.as_q().unwrap();
        for (k, &v) in [-128i8, -1, 0, 127].iter().enumerate() {
            assert_eq!(q[k] as i32, qo.quantize(q1.dequantize(v as i32)));
        }
        assert_eq!(&q[4..6], &[5, -7]);
        assert_eq!(q[6] as i32, qo.quantize(0.5));
        assert_eq!(q[7] as i32, qo.qmin());
    }
}
